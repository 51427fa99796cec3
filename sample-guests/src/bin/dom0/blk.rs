//! dom0's disk: the virtio-blk function brought up with the SDK's
//! interrupt-driven driver ([`pvguest_sdk::virtio::blk`], the
//! `virtio-drivers` crate's `VirtIOBlk` waiting on the device's INTx line
//! as an event), and what dom0 proves with it.
//!
//! - [`prove`] (`devices` mode): reads the region xtask filled with the
//!   pattern of `disk_pattern::dom0::READ` and checks
//!   every byte against the `disk-pattern` crate (the same definition
//!   xtask used); writes `disk_pattern::dom0::WRITE`,
//!   flushes, and only then prints `blk: wrote N sectors at LBA x (seed
//!   s), flushed`: the line xtask checks the image file against.
//! - [`bench`] (`blkbench` mode): 64 KiB sequential reads and writes, a
//!   memory copy of the same bytes beside them (so the host's speed
//!   cancels in the ratio), and single 4 KiB reads timed by the TSC
//!   (instructions under `-icount shift=0`).
//! - [`storm`] (`storm` mode): a device interrupt storm: a read whose
//!   handler EOIs without reading the ISR, so the level line fires again
//!   at every EOI, for a fixed time; then the device is quieted and must
//!   still work.
//!
//! Buffers: the data buffers are [`IoBuffer`]s from the DMA pool, which
//! the device reads and writes in place (zero copy); each is lent to the
//! device only inside one driver call (see the driver's module docs).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::event::Port;
use pvguest_sdk::pci::Bdf;
use pvguest_sdk::virtio::blk::{self, BlkError, Disk, IoBuffer, Memory, Op, Submission, SECTOR};
use pvguest_sdk::{irq, println, time};

/// Where the disk is (xtask's `DISK_PCI_SLOT`).
pub const DISK: Bdf = Bdf::new(0, 2, 0);
/// The region xtask fills before the run (`disk_pattern::dom0::READ`).
const READ_LBA: u64 = disk_pattern::dom0::READ.lba;
const READ_SECTORS: u64 = disk_pattern::dom0::READ.sectors;
const READ_SEED: u64 = disk_pattern::dom0::READ.seed;
/// The region dom0 writes (`disk_pattern::dom0::WRITE`).
const WRITE_LBA: u64 = disk_pattern::dom0::WRITE.lba;
const WRITE_SECTORS: u64 = disk_pattern::dom0::WRITE.sectors;
const WRITE_SEED: u64 = disk_pattern::dom0::WRITE.seed;

/// Bytes per request (64 KiB, the benchmark's unit too).
const CHUNK: usize = 64 * 1024;

/// Brings the disk up and prints what it is.
pub fn open() -> Result<Disk, BlkError> {
    let disk = Disk::open(DISK)?;
    println!(
        "blk: virtio-blk at {}: {} sectors ({} MiB){}, GSI {}, port {}",
        disk.bdf(),
        disk.capacity(),
        (disk.capacity() * SECTOR as u64) >> 20,
        if disk.readonly() { ", read-only" } else { "" },
        disk.gsi(),
        disk.port().0
    );
    Ok(disk)
}

/// Reads xtask's pattern and checks every byte, writes dom0's and flushes.
pub fn prove(disk: &mut Disk) -> Result<(), BlkError> {
    let mut buf = IoBuffer::new(CHUNK)?;
    let per = (CHUNK / SECTOR) as u64;
    let irq0 = blk::interrupts();
    let mut lba = READ_LBA;
    while lba < READ_LBA + READ_SECTORS {
        let n = per.min(READ_LBA + READ_SECTORS - lba);
        let bytes = &mut buf.as_mut_slice()[..n as usize * SECTOR];
        disk.read(lba, bytes)?;
        let offset = lba * SECTOR as u64;
        if let Some((i, want, got)) = disk_pattern::first_mismatch(bytes, READ_SEED, offset) {
            println!(
                "blk: MISMATCH at LBA {} byte {} (image offset {}): want {want:#04x}, found {got:#04x}",
                lba + i as u64 / SECTOR as u64,
                i % SECTOR,
                offset + i as u64
            );
            return Err(BlkError::Device(pvguest_sdk::virtio::virtio_drivers::Error::IoError));
        }
        lba += n;
    }
    println!(
        "blk: read {READ_SECTORS} sectors at LBA {READ_LBA}: every byte is the pattern of seed {READ_SEED:#x} ({} bytes)",
        READ_SECTORS * SECTOR as u64
    );
    let mut lba = WRITE_LBA;
    while lba < WRITE_LBA + WRITE_SECTORS {
        let n = per.min(WRITE_LBA + WRITE_SECTORS - lba);
        let bytes = &mut buf.as_mut_slice()[..n as usize * SECTOR];
        disk_pattern::fill_words(bytes, WRITE_SEED, lba * SECTOR as u64);
        disk.write(lba, bytes)?;
        lba += n;
    }
    disk.flush()?;
    println!("blk: wrote {WRITE_SECTORS} sectors at LBA {WRITE_LBA} (seed {WRITE_SEED:#x}), flushed");
    // Read back through the device: what it acknowledged it also returns.
    let mut lba = WRITE_LBA;
    while lba < WRITE_LBA + WRITE_SECTORS {
        let n = per.min(WRITE_LBA + WRITE_SECTORS - lba);
        let bytes = &mut buf.as_mut_slice()[..n as usize * SECTOR];
        bytes.fill(0);
        disk.read(lba, bytes)?;
        if disk_pattern::first_mismatch(bytes, WRITE_SEED, lba * SECTOR as u64).is_some() {
            println!("blk: MISMATCH reading back LBA {lba}");
            return Err(BlkError::Device(pvguest_sdk::virtio::virtio_drivers::Error::IoError));
        }
        lba += n;
    }
    println!("blk: read back {WRITE_SECTORS} sectors at LBA {WRITE_LBA}: as written");
    // Requests past the end and of bad lengths never reach the device.
    let cap = disk.capacity();
    match disk.read(cap - 1, &mut buf.as_mut_slice()[..2 * SECTOR]) {
        Err(e @ BlkError::OutOfRange { .. }) => println!("blk: a read past the end refused before the device: {e}"),
        other => println!("blk: a read past the end: {other:?} WRONG"),
    }
    match disk.read(0, &mut buf.as_mut_slice()[..100]) {
        Err(e @ BlkError::BadRequest { .. }) => println!("blk: a read of 100 bytes refused before the device: {e}"),
        other => println!("blk: a read of 100 bytes: {other:?} WRONG"),
    }
    println!("blk: {} device interrupt(s) for these requests (each: ISR read, then EOI)", blk::interrupts() - irq0);
    Ok(())
}

/// Makes the disk raise its line once, through the driver: `chan` (mapped
/// and bound by the caller) is lent to a [`Disk`] for one read of sector
/// 0, and given back. Returns the device interrupts that came.
pub fn provoke(chan: irq::IrqChannel) -> (irq::IrqChannel, Result<u64, BlkError>) {
    let port = chan.port();
    let irq0 = blk::interrupts();
    let mut disk = match Disk::open_with_channel(DISK, chan) {
        Ok(d) => d,
        Err(e) => panic!("blk: bring-up on port {}: {e}", port.0),
    };
    // From the pool: a stack buffer could straddle two discontiguous
    // frames and need the bounce area, which a small pool lacks.
    let r = IoBuffer::new(SECTOR)
        .and_then(|mut sector| disk.read(0, sector.as_mut_slice()))
        .map(|()| blk::interrupts() - irq0);
    (disk.into_channel(), r)
}

/// `blkbench`: sequential 64 KiB reads and writes of `mib=` MiB (8 by
/// default), a memory copy of as many bytes, and `reads4k=` (256) single
/// 4 KiB reads. Prints one `blkbench:` line per figure for xtask.
pub fn bench(disk: &mut Disk, cmdline: &str) -> Result<(), BlkError> {
    bench_at(disk, cmdline, 0, "")
}

/// Requests in flight at most in a pipelined pass.
const MAX_QD: usize = 32;

/// `count` requests of `len` bytes, `op` at the sectors `lba_of(i)` gives,
/// with up to `qd` in flight (the driver's asynchronous submissions, each
/// with its own pool buffer from `bufs`, which come back with their
/// completions).
fn pipelined(
    disk: &mut Disk,
    bufs: &mut [Option<IoBuffer>; MAX_QD],
    op: Op,
    count: u64,
    len: usize,
    qd: usize,
    mut lba_of: impl FnMut(u64) -> u64,
) -> Result<(), BlkError> {
    let (mut next, mut finished) = (0u64, 0u64);
    let mut in_flight = 0usize;
    while finished < count {
        while next < count && in_flight < qd {
            let Some(k) = bufs.iter().position(Option::is_some) else { break };
            let buf = bufs[k].take().expect("found above");
            let s = Submission { op, lba: lba_of(next), mem: Memory::Buffer(buf), range: 0..len, cookie: k as u64 };
            match disk.submit(s) {
                Ok(_) => {
                    next += 1;
                    in_flight += 1;
                }
                Err((BlkError::Busy, s)) => {
                    if let Memory::Buffer(b) = s.mem {
                        bufs[k] = Some(b);
                    }
                    break;
                }
                Err((e, _)) => return Err(e),
            }
        }
        disk.kick();
        let mut any = false;
        while let Some(c) = disk.next_completion() {
            any = true;
            c.result?;
            if let Memory::Buffer(b) = c.mem {
                bufs[c.cookie as usize % MAX_QD] = Some(b);
            }
            in_flight -= 1;
            finished += 1;
        }
        if !any {
            disk.wait()?;
        }
    }
    Ok(())
}

/// [`bench`] on the disk from sector `base`, its lines' names prefixed
/// with `prefix` (the split-disk benchmark's dom0-native half); with
/// `rand4k=N`, also `N` 4 KiB reads at pseudo-random places of the region;
/// with `qd=Q` (1 to 32; 1 by default), the sequential and random passes
/// keep `Q` requests in flight.
pub fn bench_at(disk: &mut Disk, cmdline: &str, base: u64, prefix: &'static str) -> Result<(), BlkError> {
    let mut b = Bench::new(cmdline, base, prefix)?;
    b.sequential(disk, None)?;
    b.single(disk)?;
    b.random(disk, None)?;
    println!("blkbench: done ({} device interrupts)", blk::interrupts());
    Ok(())
}

/// The benchmark's passes over one region, with their buffers (the
/// split-disk benchmark runs them in rounds, between the domU's:
/// `serve`'s `rounds=`).
pub struct Bench {
    bufs: [Option<IoBuffer>; MAX_QD],
    base: u64,
    prefix: &'static str,
    bytes: u64,
    qd: usize,
    reads: u64,
    rand: u64,
    /// The random pass's generator, carried across rounds.
    x: u64,
}

impl Bench {
    /// `mib=`, `qd=`, `reads4k=`, `rand4k=` from the command line; the
    /// buffers from the DMA pool.
    pub fn new(cmdline: &str, base: u64, prefix: &'static str) -> Result<Bench, BlkError> {
        let qd = (arg(cmdline, "qd").unwrap_or(1) as usize).clamp(1, MAX_QD);
        let mut bufs: [Option<IoBuffer>; MAX_QD] = core::array::from_fn(|_| None);
        for b in bufs.iter_mut().take(qd.max(2)) {
            let mut buf = IoBuffer::new(CHUNK)?;
            disk_pattern::fill_words(buf.as_mut_slice(), 1, 0);
            *b = Some(buf);
        }
        Ok(Bench {
            bufs,
            base,
            prefix,
            bytes: arg(cmdline, "mib").unwrap_or(8) << 20,
            qd,
            reads: arg(cmdline, "reads4k").unwrap_or(256),
            rand: arg(cmdline, "rand4k").unwrap_or(0),
            x: 0x9e37_79b9_7f4a_7c15,
        })
    }

    fn report(&self, what: &str, t0: (u64, u64), round: Option<u64>) {
        let (ns, tsc) = (time::now_ns() - t0.0, time::tsc() - t0.1);
        let r = round.map(|r| alloc::format!(" round={r}")).unwrap_or_default();
        println!("blkbench: {}{what} bytes={} ns={ns} tsc={tsc} qd={}{r}", self.prefix, self.bytes, self.qd);
    }

    /// 64 KiB sequential writes (then a flush), then reads of the region.
    /// Writes first, so the reads read what was written (not holes).
    pub fn sequential(&mut self, disk: &mut Disk, round: Option<u64>) -> Result<(), BlkError> {
        let chunks = self.bytes / CHUNK as u64;
        let (per, base, qd) = ((CHUNK / SECTOR) as u64, self.base, self.qd);
        let t0 = start();
        pipelined(disk, &mut self.bufs, Op::Write, chunks, CHUNK, qd, |c| base + c * per)?;
        disk.flush()?;
        self.report("seq_write", t0, round);
        let t0 = start();
        pipelined(disk, &mut self.bufs, Op::Read, chunks, CHUNK, qd, |c| base + c * per)?;
        self.report("seq_read", t0, round);
        Ok(())
    }

    /// A memory copy of as many bytes as a sequential pass, and `reads4k=`
    /// single 4 KiB reads (the best one's TSC: instructions under icount).
    pub fn single(&mut self, disk: &mut Disk) -> Result<(), BlkError> {
        let chunks = self.bytes / CHUNK as u64;
        let (mut a, mut b) = match (self.bufs[0].take(), self.bufs[1].take()) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(BlkError::Busy),
        };
        disk_pattern::fill_words(a.as_mut_slice(), 1, 0);
        let t0 = start();
        for _ in 0..chunks {
            b.as_mut_slice().copy_from_slice(a.as_slice());
            core::hint::black_box(b.as_slice());
        }
        self.report("memcpy", t0, None);
        let mut best = u64::MAX;
        let t0 = start();
        let run0 = time::virtual_ns();
        let r: Result<(), BlkError> = (0..self.reads).try_for_each(|i| {
            let t = time::tsc();
            disk.read(self.base + i * 8, &mut b.as_mut_slice()[..4096])?;
            best = best.min(time::tsc() - t);
            Ok(())
        });
        let (ns, tsc) = (time::now_ns() - t0.0, time::tsc() - t0.1);
        // The time this domain ran (not the waits for the device): under
        // icount, the instructions of the requests, its own and the
        // hypervisor's on its behalf.
        let run = time::virtual_ns() - run0;
        self.bufs[0] = Some(a);
        self.bufs[1] = Some(b);
        r?;
        println!("blkbench: {}read_4k count={} ns={ns} tsc={tsc} min_tsc={best} run_ns={run}", self.prefix, self.reads);
        Ok(())
    }

    /// `rand4k=` 4 KiB reads at pseudo-random places of the region.
    pub fn random(&mut self, disk: &mut Disk, round: Option<u64>) -> Result<(), BlkError> {
        if self.rand == 0 {
            return Ok(());
        }
        let (blocks, base, qd) = (self.bytes / 4096, self.base, self.qd);
        let mut x = self.x;
        let t0 = start();
        let run0 = time::virtual_ns();
        pipelined(disk, &mut self.bufs, Op::Read, self.rand, 4096, qd, |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base + (x % blocks) * 8
        })?;
        self.x = x;
        let (ns, tsc, run) = (time::now_ns() - t0.0, time::tsc() - t0.1, time::virtual_ns() - run0);
        let r = round.map(|r| alloc::format!(" round={r}")).unwrap_or_default();
        println!("blkbench: {}randread_4k count={} ns={ns} tsc={tsc} run_ns={run} qd={qd}{r}", self.prefix, self.rand);
        Ok(())
    }
}

fn start() -> (u64, u64) {
    (time::now_ns(), time::tsc())
}

/// Interrupts the storm handler took, and when it must stop.
static STORM: AtomicU64 = AtomicU64::new(0);
static STORM_END_NS: AtomicU64 = AtomicU64::new(0);
static STORM_DONE: AtomicBool = AtomicBool::new(false);
static STORM_PIRQ: AtomicU64 = AtomicU64::new(0);

/// The storm's handler: counts and EOIs without acking the device (its
/// ISR stays set, the level line stays up, and the EOI unmasks it: it
/// fires again at once), until the time is up.
fn storm_handler(_port: Port) {
    STORM.fetch_add(1, Ordering::SeqCst);
    if time::now_ns() >= STORM_END_NS.load(Ordering::SeqCst) {
        STORM_DONE.store(true, Ordering::SeqCst);
        return;
    }
    let _ = irq::eoi(irq::Pirq(STORM_PIRQ.load(Ordering::SeqCst) as u32));
}

/// `storm`: `storm_ms=` (1500) of an interrupt storm from the disk, then
/// the disk quieted and checked with a normal read.
pub fn storm(disk: &mut Disk, cmdline: &str) -> Result<(), BlkError> {
    let ms = arg(cmdline, "storm_ms").unwrap_or(1500);
    let mut buf = IoBuffer::new(SECTOR)?;
    let sector = buf.as_mut_slice();
    disk.read(READ_LBA, sector)?;
    STORM_PIRQ.store(u64::from(disk.pirq().0), Ordering::SeqCst);
    let t0 = time::now_ns();
    let v0 = time::virtual_ns();
    STORM_END_NS.store(t0 + ms * 1_000_000, Ordering::SeqCst);
    println!("storm: {ms} ms of a device interrupt storm (handler EOIs without reading the ISR)");
    disk.read_with_handler(READ_LBA, sector, storm_handler, || STORM_DONE.load(Ordering::SeqCst))?;
    let (real, virt) = (time::now_ns() - t0, time::virtual_ns() - v0);
    let n = STORM.load(Ordering::SeqCst);
    println!(
        "storm: interrupts={n} in {} ms of real time, dom0 ran {} ms of it ({} per ms run)",
        real / 1_000_000,
        virt / 1_000_000,
        n * 1_000_000 / virt.max(1)
    );
    let irq0 = blk::interrupts();
    sector.fill(0);
    disk.read(READ_LBA, sector)?;
    let ok = disk_pattern::first_mismatch(sector, READ_SEED, READ_LBA * SECTOR as u64).is_none();
    println!(
        "storm: device quiet again: a read after the storm took {} interrupt(s), pattern {}",
        blk::interrupts() - irq0,
        if ok { "intact" } else { "WRONG" }
    );
    Ok(())
}
