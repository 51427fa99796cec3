//! `blklog`: a domU that keeps an append-only log on its virtual disk,
//! through the SDK's [`BlockDevice`] (discovery in the store, the blkif
//! handshake, then blkback in dom0).
//!
//! The log: sector 0 holds a superblock (`RFLOG001`, the record count and
//! the seed); record `i` is sector `1 + i`, filled with the disk pattern of
//! the seed ([`disk_pattern`], keyed by the byte's offset on the virtual
//! disk, so a record read from the wrong place fails). An append writes the
//! records, flushes, then writes the superblock write-through (FUA): data
//! before the metadata that counts it, so after a crash the log holds at
//! least every record the last acknowledged superblock counts.
//!
//! Command line:
//! - `mode=append records=N seed=S`: checks the disk holds no log (a fresh
//!   slice reads as zeros: it sees no other domain's data), appends `N`
//!   records, reads them back, prints `blklog: appended N records (seed
//!   0x..), flushed` and ends; with `hold`, it then waits for ever instead
//!   (the durability scenario kills the machine on that line).
//! - `mode=verify records=N seed=S`: reads the superblock and every record
//!   back and checks them (after a reboot).
//! - `mode=overlay records=N seed=S template=T`: the disk is a
//!   copy-on-write overlay on a template filled with the pattern of `T`
//!   (keyed by the virtual offset): checks it reads the template, appends
//!   its own log over the first sectors, and checks that the rest still
//!   reads as the template.
//! - `mode=bench mib=M qd=Q rand4k=N reads4k=R`: the split-disk
//!   benchmark's domU half: 64 KiB sequential writes (then a flush) and
//!   reads of `M` MiB, `Q` requests in flight, twice: through the copying
//!   calls (`copy_seq_*`) and zero-copy ([`IoBuf`]s of the device's pool);
//!   `N` random 4 KiB reads into zero-copy pages, `Q` in flight; `R` single
//!   4 KiB reads (the path length of one request). Each pass checks what
//!   it read. Lines `blkbench: domu_<what> ...` as dom0's `blkbench`
//!   prints them. The pool needs `Q * 16 + 16` pages (`pool=`).
//! - `mode=batch`: reads and writes through `run` with many requests in
//!   flight (random 4 KiB reads over the disk, checked against what it
//!   wrote).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec;
use pvguest_sdk::blkfront::{BlockDevice, Io, IoBuf, SECTOR};
use pvguest_sdk::check::Checks;
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::store::Store;
use pvguest_sdk::{heap, println, sched, StartInfo};

pvguest_sdk::entry!(main);

const MAGIC: &[u8; 8] = b"RFLOG001";

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    heap::init(arg(cmd, "heap").unwrap_or(64)).expect("heap");
    let name = si.name();
    let mut c = Checks::new();
    let mut store = match Store::open() {
        Ok(s) => s,
        Err(e) => {
            println!("blklog: no store: {e:?}");
            sched::crash();
        }
    };
    if cmd.split(' ').any(|w| w == "mode=victim") {
        victim(&mut c, &mut store);
        c.verdict(name);
        return;
    }
    let pool = arg(cmd, "pool").unwrap_or(pvguest_sdk::blkfront::DEFAULT_POOL_PAGES as u64) as usize;
    let mut disk = match BlockDevice::open_with(&mut store, 0, pool) {
        Ok(d) => d,
        Err(e) => {
            println!("blklog: no disk: {e:?}");
            sched::crash();
        }
    };
    let info = disk.info();
    println!(
        "blklog: disk of {} sectors ({} KiB), flush {}, fua {}, discard {}",
        info.sectors,
        info.sectors / 2,
        info.features.flush,
        info.features.fua,
        info.features.discard
    );
    let records = arg(cmd, "records").unwrap_or(64);
    let seed = arg(cmd, "seed").unwrap_or(0x5eed);
    let mode = cmd.split(' ').find_map(|w| w.strip_prefix("mode=")).unwrap_or("append");
    match mode {
        "append" => append(&mut c, &mut disk, records, seed, cmd.split(' ').any(|w| w == "hold")),
        "verify" => verify(&mut c, &mut disk, records, seed),
        "batch" => batch(&mut c, &mut disk, seed),
        "bench" => bench(&mut c, &mut disk, cmd),
        "overlay" => overlay(&mut c, &mut disk, records, seed, arg(cmd, "template").unwrap_or(0)),
        other => c.holds(name, format_args!("a known mode (got `{other}`)"), false),
    }
    c.verdict(name);
}

fn record(seed: u64, i: u64) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    disk_pattern::fill(&mut s, seed, (1 + i) * SECTOR as u64);
    s
}

fn superblock(records: u64, seed: u64) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    s[..8].copy_from_slice(MAGIC);
    s[8..16].copy_from_slice(&records.to_le_bytes());
    s[16..24].copy_from_slice(&seed.to_le_bytes());
    s
}

fn append(c: &mut Checks, disk: &mut BlockDevice, records: u64, seed: u64, hold: bool) {
    let who = "blklog";
    // A fresh slice: no log, and nothing of anyone else's.
    let mut head = vec![0u8; 64 * SECTOR];
    let fresh = disk.read(0, &mut head).is_ok() && head.iter().all(|&b| b == 0);
    c.holds(who, format_args!("its disk starts empty (64 sectors of zeros: no other domain's data)"), fresh);
    let mut data = vec![0u8; records as usize * SECTOR];
    for (i, s) in data.chunks_mut(SECTOR).enumerate() {
        s.copy_from_slice(&record(seed, i as u64));
    }
    // Data, flush, then the superblock write-through.
    let wrote = disk.write(1, &data).and_then(|()| disk.flush());
    c.holds(who, format_args!("{records} records written and flushed"), wrote.is_ok());
    let sb = disk.write_fua(0, &superblock(records, seed));
    c.holds(who, format_args!("superblock written through (FUA)"), sb.is_ok());
    let mut back = vec![0u8; data.len()];
    let same = disk.read(1, &mut back).is_ok() && back == data;
    c.holds(who, format_args!("the records read back intact"), same);
    if c.wrong() == 0 {
        println!("blklog: appended {records} records (seed {seed:#x}), flushed");
    }
    if hold {
        // Waiting to be killed: the durability scenario cuts power here.
        loop {
            sched::block();
        }
    }
}

fn verify(c: &mut Checks, disk: &mut BlockDevice, records: u64, seed: u64) {
    let who = "blklog";
    let mut sb = [0u8; SECTOR];
    let read = disk.read(0, &mut sb).is_ok();
    c.holds(who, format_args!("superblock read"), read);
    c.holds(who, format_args!("superblock holds {records} records of seed {seed:#x}"), sb == superblock(records, seed));
    let mut data = vec![0u8; records as usize * SECTOR];
    let ok = disk.read(1, &mut data).is_ok();
    let bad = data.chunks(SECTOR).enumerate().filter(|(i, s)| *s != record(seed, *i as u64)).count();
    c.holds(who, format_args!("all {records} records intact after the reboot ({bad} bad)"), ok && bad == 0);
    if c.wrong() == 0 {
        println!("blklog: verified {records} records (seed {seed:#x})");
    }
}

/// Many requests in flight: 64 writes of 4 KiB, then 256 random 4 KiB
/// reads checked, in batches of 32.
fn batch(c: &mut Checks, disk: &mut BlockDevice, seed: u64) {
    let who = "blklog";
    let blocks = (disk.sectors() / 8).min(64);
    let mut bufs = vec![[0u8; 4096]; blocks as usize];
    for (b, buf) in bufs.iter_mut().enumerate() {
        disk_pattern::fill(buf, seed, b as u64 * 4096);
    }
    let mut ios: alloc::vec::Vec<Io<'_>> =
        bufs.iter().enumerate().map(|(b, buf)| Io::Write { sector: b as u64 * 8, buf, fua: false }).collect();
    let wrote = disk.run(&mut ios);
    drop(ios);
    c.holds(who, format_args!("{blocks} writes of 4 KiB in flight together"), wrote.is_ok());
    let mut x = seed | 1;
    let mut bad = 0;
    let mut reads = vec![[0u8; 4096]; 32];
    for _ in 0..8 {
        let mut which = [0u64; 32];
        for w in which.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x % blocks;
        }
        let mut ios: alloc::vec::Vec<Io<'_>> =
            reads.iter_mut().zip(which).map(|(buf, b)| Io::Read { sector: b * 8, buf }).collect();
        if disk.run(&mut ios).is_err() {
            bad += 32;
        }
        drop(ios);
        for (buf, b) in reads.iter().zip(which) {
            if buf != &bufs[b as usize] {
                bad += 1;
            }
        }
    }
    c.holds(who, format_args!("256 random 4 KiB reads, 32 in flight at a time, all intact ({bad} bad)"), bad == 0);
}

fn overlay(c: &mut Checks, disk: &mut BlockDevice, records: u64, seed: u64, template: u64) {
    let who = "blklog";
    let span = (records + 1 + 64).min(disk.sectors());
    let mut before = vec![0u8; span as usize * SECTOR];
    let read = disk.read(0, &mut before).is_ok();
    let bad = disk_pattern::first_mismatch(&before, template, 0);
    c.holds(
        who,
        format_args!("its disk reads as the template ({span} sectors, first mismatch {bad:?})"),
        read && bad.is_none(),
    );
    let mut data = vec![0u8; records as usize * SECTOR];
    for (i, s) in data.chunks_mut(SECTOR).enumerate() {
        s.copy_from_slice(&record(seed, i as u64));
    }
    let wrote =
        disk.write(1, &data).and_then(|()| disk.flush()).and_then(|()| disk.write_fua(0, &superblock(records, seed)));
    c.holds(who, format_args!("{records} records and the superblock written over the template"), wrote.is_ok());
    let mut after = vec![0u8; span as usize * SECTOR];
    let read = disk.read(0, &mut after).is_ok();
    let tail = (records as usize + 1) * SECTOR;
    let own = after[SECTOR..tail] == data[..] && after[..SECTOR] == superblock(records, seed);
    let rest = disk_pattern::first_mismatch(&after[tail..], template, tail as u64).is_none();
    c.holds(
        who,
        format_args!("its writes read back, and the sectors it never wrote still read as the template"),
        read && own && rest,
    );
    if c.wrong() == 0 {
        println!("blklog: overlay holds {records} records (seed {seed:#x}) over template {template:#x}");
    }
}

/// Against a hostile backend: the first read works, the backend's
/// duplicate answer is a protocol error, and every later call fails at
/// once.
fn victim(c: &mut Checks, store: &mut Store) {
    let who = "blklog";
    let mut disk = match BlockDevice::open(store, 0) {
        Ok(d) => d,
        Err(e) => {
            c.holds(who, format_args!("connected to the (hostile) backend ({e:?})"), false);
            return;
        }
    };
    let mut s = [0u8; SECTOR];
    let first = disk.read(0, &mut s);
    c.holds(who, format_args!("the first read is answered ({first:?})"), first.is_ok());
    let second = disk.read(0, &mut s);
    let protocol = Err(pvguest_sdk::blkfront::BlkError::Protocol);
    c.holds(
        who,
        format_args!("an answer with an id never issued is a protocol error ({second:?})"),
        second == protocol,
    );
    let third = disk.flush();
    c.holds(
        who,
        format_args!("later calls fail at once ({third:?})"),
        third == Err(pvguest_sdk::blkfront::BlkError::Protocol),
    );
    if c.wrong() == 0 {
        println!("blklog: the hostile backend's lie was caught; the domain goes on");
    }
}

fn bench(c: &mut Checks, disk: &mut BlockDevice, cmd: &str) {
    use pvguest_sdk::time;
    let who = "blklog";
    let bytes = arg(cmd, "mib").unwrap_or(8) << 20;
    let qd = arg(cmd, "qd").unwrap_or(32) as usize;
    const CHUNK: usize = 64 * 1024;
    let chunks = (bytes / CHUNK as u64) as usize;
    let start = || (time::now_ns(), time::tsc());
    let report = |what: &str, t0: (u64, u64), n: u64| {
        println!("blkbench: domu_{what} bytes={n} ns={} tsc={}", time::now_ns() - t0.0, time::tsc() - t0.1);
    };
    let per = (CHUNK / SECTOR) as u64;
    let mut ok = true;

    // Copying calls: the caller's buffers, copied through the pool.
    let mut bufs = vec![vec![0u8; CHUNK]; qd];
    for (k, b) in bufs.iter_mut().enumerate() {
        disk_pattern::fill_words(b, 1, (k * CHUNK) as u64);
    }
    let t0 = start();
    for first in (0..chunks).step_by(qd) {
        let n = qd.min(chunks - first);
        let mut ios: alloc::vec::Vec<Io<'_>> = bufs[..n]
            .iter()
            .enumerate()
            .map(|(k, b)| Io::Write { sector: (first + k) as u64 * per, buf: b, fua: false })
            .collect();
        ok &= disk.run(&mut ios).is_ok();
    }
    ok &= disk.flush().is_ok();
    report("copy_seq_write", t0, bytes);
    let t0 = start();
    for first in (0..chunks).step_by(qd) {
        let n = qd.min(chunks - first);
        let mut ios: alloc::vec::Vec<Io<'_>> = bufs[..n]
            .iter_mut()
            .enumerate()
            .map(|(k, b)| Io::Read { sector: (first + k) as u64 * per, buf: b })
            .collect();
        ok &= disk.run(&mut ios).is_ok();
    }
    report("copy_seq_read", t0, bytes);
    // What the last batch read is what was written there.
    let last = (chunks - 1) / qd * qd;
    let intact = bufs[..chunks - last].iter().enumerate().all(|(k, b)| {
        let mut want = vec![0u8; CHUNK];
        disk_pattern::fill_words(&mut want, 1, (k * CHUNK) as u64);
        *b == want
    });
    c.holds(who, format_args!("the copying reads return what was written"), intact);
    drop(bufs);

    // Zero-copy: buffers of the device's pool, which the backend's device
    // reads and writes directly.
    let mut zbufs: alloc::vec::Vec<IoBuf> = alloc::vec::Vec::new();
    for k in 0..qd {
        match disk.alloc_buf(CHUNK / 4096) {
            Ok(mut b) => {
                let mut pattern = vec![0u8; CHUNK];
                disk_pattern::fill_words(&mut pattern, 2, (k * CHUNK) as u64);
                b.write(0, &pattern);
                zbufs.push(b);
            }
            Err(e) => {
                c.holds(who, format_args!("zero-copy buffer {k} ({e:?}: raise pool=)"), false);
                return;
            }
        }
    }
    let t0 = start();
    for first in (0..chunks).step_by(qd) {
        let n = qd.min(chunks - first);
        let mut ios: alloc::vec::Vec<Io<'_>> = zbufs[..n]
            .iter()
            .enumerate()
            .map(|(k, b)| Io::WriteFrom { sector: (first + k) as u64 * per, buf: b, fua: false })
            .collect();
        ok &= disk.run(&mut ios).is_ok();
    }
    ok &= disk.flush().is_ok();
    report("seq_write", t0, bytes);
    for b in zbufs.iter_mut() {
        b.write(0, &[0u8; 4096]);
    }
    let t0 = start();
    for first in (0..chunks).step_by(qd) {
        let n = qd.min(chunks - first);
        let mut ios: alloc::vec::Vec<Io<'_>> = zbufs[..n]
            .iter_mut()
            .enumerate()
            .map(|(k, b)| Io::ReadInto { sector: (first + k) as u64 * per, buf: b })
            .collect();
        ok &= disk.run(&mut ios).is_ok();
    }
    report("seq_read", t0, bytes);
    let intact = zbufs[..chunks - last].iter().enumerate().all(|(k, b)| {
        let (mut got, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        b.read(0, &mut got);
        disk_pattern::fill_words(&mut want, 2, (k * CHUNK) as u64);
        got == want
    });
    c.holds(who, format_args!("the zero-copy reads return what was written"), intact);
    println!("blklog: front after the sequential passes: {:?}", disk.stats());
    c.holds(who, format_args!("{} MiB written and read twice, {qd} requests in flight", bytes >> 20), ok);
    for b in zbufs.drain(..) {
        disk.free_buf(b);
    }

    let reads = arg(cmd, "reads4k").unwrap_or(256);
    let mut one = [0u8; 4096];
    let (mut best, t0) = (u64::MAX, start());
    for i in 0..reads {
        let t = time::tsc();
        ok &= disk.read(i * 8, &mut one).is_ok();
        best = best.min(time::tsc() - t);
    }
    println!(
        "blkbench: domu_read_4k count={reads} ns={} tsc={} min_tsc={best}",
        time::now_ns() - t0.0,
        time::tsc() - t0.1
    );
    let rand = arg(cmd, "rand4k").unwrap_or(1024);
    let blocks = bytes / 4096;
    let mut pages: alloc::vec::Vec<IoBuf> = (0..qd).filter_map(|_| disk.alloc_buf(1).ok()).collect();
    ok &= pages.len() == qd;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let t0 = start();
    let mut done = 0;
    while done < rand {
        let n = (qd as u64).min(rand - done) as usize;
        let mut ios: alloc::vec::Vec<Io<'_>> = pages[..n]
            .iter_mut()
            .map(|p| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Io::ReadInto { sector: (x % blocks) * 8, buf: p }
            })
            .collect();
        ok &= disk.run(&mut ios).is_ok();
        done += n as u64;
    }
    println!("blkbench: domu_randread_4k count={rand} ns={} tsc={}", time::now_ns() - t0.0, time::tsc() - t0.1);
    c.holds(who, format_args!("every benchmark request succeeded"), ok);
    println!("blkbench: done");
}
