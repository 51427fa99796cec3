//! The block front: a domU's virtual disk, served by dom0's blkback over a
//! blkif ring ([`crate::blkif`]) in a page this domain grants, with an
//! event channel. [`BlockDevice`] is what guest code uses: safe blocking
//! calls ([`BlockDevice::read`], [`BlockDevice::write`],
//! [`BlockDevice::flush`], [`BlockDevice::write_fua`],
//! [`BlockDevice::discard`]) and a batched one ([`BlockDevice::run`]) that
//! keeps up to a ring's worth of requests in flight and completes them in
//! any order. For bulk data, [`IoBuf`]s lent from the device's pool
//! ([`BlockDevice::alloc_buf`], [`Io::ReadInto`], [`Io::WriteFrom`]) skip
//! the copy: the backend's device reads and writes their pages directly.
//!
//! # Streaming
//! A batch ends when its last request is answered, so between batches the
//! queue drains. To keep it full, stream instead: [`BlockDevice::start`]
//! puts one [`StreamOp`] on the ring (its [`IoBuf`] travels with it),
//! [`BlockDevice::kick`] tells the backend about everything started, and
//! [`BlockDevice::next_done`] (never sleeps) or [`BlockDevice::wait_done`]
//! (sleeps until an answer) hands back each finished request as a
//! [`Done`], with its buffer, in whatever order the backend answered. A
//! start the ring, the shadow table or the indirect pages have no room for
//! is [`BlkError::Busy`], with the operation handed back: collect a
//! [`Done`] and start it again. A [`StreamOp::Flush`] waits for every
//! request before it (`Busy` until they are answered) and holds back every
//! one after it until it is answered (the bookkeeping is
//! [`blkif::stream::Book`], host-tested with its rules S1 to S3). The
//! batched calls refuse to run (`Busy`) while streamed requests are in
//! flight.
//!
//! ```ignore
//! use pvguest_sdk::blkfront::{BlkError, StreamOp};
//! // Read 1024 blocks of 64 KiB, 32 in flight all the time.
//! let mut free: Vec<IoBuf> = (0..32).map(|_| disk.alloc_buf(16)).collect::<Result<_, _>>()?;
//! let (mut next, mut done) = (0u64, 0u64);
//! while done < 1024 {
//!     while next < 1024 {
//!         let Some(buf) = free.pop() else { break };
//!         match disk.start(StreamOp::Read { sector: next * 128, buf }, next) {
//!             Ok(()) => next += 1,
//!             Err((BlkError::Busy, op)) => { free.extend(op.into_buf()); break; }
//!             Err((e, _)) => return Err(e),
//!         }
//!     }
//!     disk.kick()?;                              // one notification for all
//!     let d = disk.wait_done()?.expect("requests are in flight");
//!     d.result?;                                 // block `d.tag` is in `d.buf`
//!     free.extend(d.buf);
//!     done += 1;
//! }
//! ```
//!
//! ```ignore
//! use pvguest_sdk::blkfront::BlockDevice;
//! let mut disk = BlockDevice::open(&mut store, 0)?;   // the first vbd
//! let mut sector = [0u8; 512];
//! disk.read(0, &mut sector)?;
//! disk.write(1, &sector)?;
//! disk.flush()?;                                       // now durable
//!
//! // Zero-copy: 16 pages of the pool, read into directly.
//! let mut buf = disk.alloc_buf(16)?;
//! disk.run(&mut [Io::ReadInto { sector: 128, buf: &mut buf }])?;
//! let mut head = [0u8; 16];
//! buf.read(0, &mut head);                              // a volatile copy
//! disk.free_buf(buf);
//! ```
//!
//! # Who owns what
//! - The ring page and a pool of I/O pages are this domain's, each granted
//!   once, read-write, to the backend domain for the device's life
//!   (persistent grants: no grant-table work per request). The pages are
//!   used for nothing but this device's data: a write copies the caller's
//!   bytes in before the request is published, a read copies them out
//!   after its response. The caller's buffers are never granted, so the
//!   backend sees nothing of this domain but what it is asked to write,
//!   and a backend that keeps writing into a pool page after answering
//!   changes only that page (the XSA-396 concern: a grant page reused for
//!   other data). Copies in and out of the pool are single volatile copies
//!   ([`ring_protocol::SharedMem::read_bytes`]). The front offers
//!   `feature-persistent`, so the backend may keep the pages mapped.
//! - An [`IoBuf`] is pool pages taken off the free list and lent to the
//!   caller until [`BlockDevice::free_buf`]: its requests name its own
//!   pages, and nothing is copied. The same rule holds: the pages carry
//!   only that buffer's data, and the caller reaches them only through
//!   volatile copies ([`IoBuf::read`], [`IoBuf::write`]), never through a
//!   reference the backend could change under it. A buffer of another
//!   device is refused ([`BlkError::BadLength`]).
//! - Requests are built by [`blkif::Request::rw`] and stamped by the
//!   shadow table [`blkif::Inflight`], the only place a response becomes a
//!   finished request: an unknown or duplicate id, an operation that does
//!   not match or a status that is not one of the three marks the device
//!   broken ([`BlkError::Protocol`]), and every later call fails with it.
//! - A flush is issued only once every earlier request has completed, so
//!   an acknowledged flush covers every write acknowledged before it.

use crate::blkif::stream::Book;
use crate::blkif::{self, Inflight, Op, Piece, Request, Response, Status, RING_SLOTS};
use crate::channel::{ChannelError, FrontChannel};
use crate::event::Port;
use crate::grant::{self, GrantError, GrantedPage, PoolError};
use crate::store::{Store, StoreError};
use alloc::format;
use alloc::vec::Vec;
use ring_protocol::{RingError, SharedMem};

/// Bytes per sector.
pub const SECTOR: usize = blkif::SECTOR;

/// Pages one request carries at most: 11 in the ring slot, or 32 listed
/// in an indirect page when the backend offers those.
fn max_pages(indirect: bool) -> usize {
    if indirect {
        blkif::MAX_INDIRECT_SEGMENTS
    } else {
        blkif::MAX_SEGMENTS
    }
}

/// Pool pages a device takes unless told otherwise ([`BlockDevice::attach`]):
/// 64 KiB in flight.
pub const DEFAULT_POOL_PAGES: usize = 16;

/// How often a front waiting for responses checks that its backend is
/// still there (ns).
pub const IDLE_CHECK_NS: u64 = 50_000_000;

/// What the backend says of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in sectors of [`SECTOR`] bytes.
    pub sectors: u64,
    /// The disk refuses writes.
    pub readonly: bool,
    /// Operations the backend offers beyond reads and writes.
    pub features: blkif::Features,
}

/// Why a block call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// The buffer is not a whole number of sectors, or empty.
    BadLength,
    /// The range passes the end of the disk.
    OutOfRange,
    /// The disk is read-only.
    ReadOnly,
    /// The backend does not offer the operation.
    NotSupported,
    /// The backend answered the request with an error.
    Io,
    /// The backend broke the protocol (ring indices or a response): the
    /// device is unusable from now on.
    Protocol,
    /// Setting up the ring, its grant or its event channel.
    Channel(ChannelError),
    /// Granting the I/O pages.
    Grant(GrantError),
    /// No memory for the pool.
    NoMemory,
    /// Discovery or the handshake in the store.
    Store(crate::store::StoreError),
    /// The backend did not connect, or went away.
    NotConnected,
    /// No room to start a streamed request now (the ring or the indirect
    /// pages are full, or a flush waits for or holds back requests), or a
    /// batch while streamed requests are in flight: collect a [`Done`]
    /// first ([`BlockDevice::wait_done`]).
    Busy,
}

/// One request of a stream ([`BlockDevice::start`]): the buffer is lent
/// to the request and comes back in its [`Done`]. One request each: a
/// buffer of at most 32 pages when the backend offers indirect requests,
/// else 11.
#[derive(Debug)]
pub enum StreamOp {
    /// Read sectors from `sector` into the whole of `buf` (zero-copy).
    Read { sector: u64, buf: IoBuf },
    /// Write the whole of `buf` at `sector` (zero-copy; `fua`: durable
    /// when answered).
    Write { sector: u64, buf: IoBuf, fua: bool },
    /// Make every write answered before it durable: starts only once every
    /// earlier request is answered, and nothing starts until it is.
    Flush,
}

impl StreamOp {
    /// The buffer it carries, if any (to take it back from a refused
    /// start).
    pub fn into_buf(self) -> Option<IoBuf> {
        match self {
            StreamOp::Read { buf, .. } | StreamOp::Write { buf, .. } => Some(buf),
            StreamOp::Flush => None,
        }
    }
}

/// A finished streamed request: the tag it was started with, its buffer
/// back (`None` for a flush), and the backend's answer. The data of a read
/// is in the buffer only if `result` is `Ok`.
#[derive(Debug)]
pub struct Done {
    pub tag: u64,
    pub buf: Option<IoBuf>,
    pub result: Result<(), BlkError>,
}

/// What the book holds of a streamed request: its buffer, and its
/// indirect page if it has one.
type Streamed = (Option<IoBuf>, Option<u16>);

/// One operation of a batch ([`BlockDevice::run`]).
pub enum Io<'a> {
    /// Read sectors from `sector` into `buf`.
    Read { sector: u64, buf: &'a mut [u8] },
    /// Write `buf` at `sector` (`fua`: durable when answered).
    Write { sector: u64, buf: &'a [u8], fua: bool },
    /// Make every write completed before it durable (waits for everything
    /// before it in the batch).
    Flush,
    /// The backend may forget `sectors` sectors from `sector` (they read as
    /// zeros or as before).
    Discard { sector: u64, sectors: u64 },
    /// Read sectors from `sector` into the whole of `buf`, zero-copy: the
    /// backend's device writes the buffer's pages directly.
    ReadInto { sector: u64, buf: &'a mut IoBuf },
    /// Write the whole of `buf` at `sector`, zero-copy (`fua`: durable
    /// when answered).
    WriteFrom { sector: u64, buf: &'a IoBuf, fua: bool },
}

/// Pages of a device's pool lent to the caller for zero-copy I/O
/// ([`BlockDevice::alloc_buf`], [`Io::ReadInto`], [`Io::WriteFrom`]): the
/// backend reads and writes them directly, so no copy is made on this
/// side. They stay granted to the backend, which may write them at any
/// time (a hostile one, after answering too): the bytes are reached only
/// through single volatile copies ([`IoBuf::read`], [`IoBuf::write`]),
/// never through references, and the pages hold nothing but this buffer's
/// data. Page `k` is bytes `k * 4096..` of the buffer. Give it back with
/// [`BlockDevice::free_buf`]: a buffer dropped instead keeps its pages
/// out of the pool for the device's life.
#[derive(Debug)]
pub struct IoBuf {
    /// The device it belongs to ([`BlockDevice`]'s `id`).
    device: u64,
    pages: Vec<u16>,
    vas: Vec<u64>,
    grefs: Vec<u32>,
}

impl IoBuf {
    /// Its length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.pages.len() * blkif::PAGE_SIZE
    }

    /// Whether it has no pages (never: [`BlockDevice::alloc_buf`] refuses).
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    fn page(&self, k: usize) -> SharedMem<'_> {
        // SAFETY: pool page `k` of this buffer: ours, mapped read-write at
        // its linear address for the domain's life (the SDK's allocator
        // never frees), granted to the backend, used for this buffer only;
        // the borrow of `self` bounds the view, and `SharedMem` only makes
        // volatile copies.
        unsafe { SharedMem::new(self.vas[k] as *mut u8, blkif::PAGE_SIZE) }.expect("a page is a valid region")
    }

    /// Copies bytes from `at` into `out` (panics past the end).
    pub fn read(&self, at: usize, out: &mut [u8]) {
        assert!(at.checked_add(out.len()).is_some_and(|e| e <= self.len()), "IoBuf read past its end");
        let mut done = 0;
        while done < out.len() {
            let (k, off) = ((at + done) / blkif::PAGE_SIZE, (at + done) % blkif::PAGE_SIZE);
            let n = (blkif::PAGE_SIZE - off).min(out.len() - done);
            let _ = self.page(k).read_bytes(off, &mut out[done..done + n]);
            done += n;
        }
    }

    /// Copies `data` into the buffer at `at` (panics past the end).
    pub fn write(&mut self, at: usize, data: &[u8]) {
        assert!(at.checked_add(data.len()).is_some_and(|e| e <= self.len()), "IoBuf write past its end");
        let mut done = 0;
        while done < data.len() {
            let (k, off) = ((at + done) / blkif::PAGE_SIZE, (at + done) % blkif::PAGE_SIZE);
            let n = (blkif::PAGE_SIZE - off).min(data.len() - done);
            let _ = self.page(k).write_bytes(off, &data[done..done + n]);
            done += n;
        }
    }
}

/// A request in flight: which operation of the batch, which sectors of it,
/// and which pool pages carry them.
struct Pending {
    id: u64,
    io: usize,
    /// Byte offset in the operation's buffer.
    offset: usize,
    bytes: usize,
    pages: [u16; blkif::MAX_VALID_SEGMENTS],
    nr_pages: usize,
    /// The indirect page listing its segments, if it is indirect.
    ind: Option<u16>,
}

/// Counters of a [`BlockDevice`] (how well batching works: requests per
/// notification, responses per wait).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontStats {
    /// Requests put on the ring.
    pub requests: u64,
    /// Notifications sent to the backend.
    pub notifies: u64,
    /// Times the front slept waiting for responses.
    pub waits: u64,
}

/// A connected virtual disk (see the module docs).
pub struct BlockDevice {
    /// Tells this device's [`IoBuf`]s from another's.
    id: u64,
    /// Pages for indirect requests' segment lists (one per request in
    /// flight; none if the backend offers no indirect requests), granted
    /// once like the pool, and the free ones.
    ind_pages: Vec<GrantedPage>,
    ind_free: Vec<u16>,
    stats: FrontStats,
    ring: FrontChannel<Request, Response>,
    inflight: Inflight<{ RING_SLOTS }>,
    pool: Vec<GrantedPage>,
    free: Vec<u16>,
    info: DiskInfo,
    handle: u16,
    broken: bool,
    /// Streamed requests in flight ([`BlockDevice::start`]).
    stream: Book<Streamed, { RING_SLOTS }>,
    /// Requests pushed since the last publish.
    unkicked: bool,
    /// The batch's list of requests in flight, kept between calls (no
    /// allocation per call).
    batch: Vec<Pending>,
}

fn wake(_: Port) {}

impl BlockDevice {
    /// Sets up the front's half for backend domain `backend`: the ring page
    /// and `pool_pages` I/O pages, all granted to it, and an event port it
    /// may bind. Returns the device and the (ring gref, port) pair to
    /// publish; the device is usable once the backend has connected (the
    /// handshake in [`BlockDevice::open`] waits for that).
    pub fn attach(backend: u16, handle: u16, info: DiskInfo, pool_pages: usize) -> Result<BlockDevice, BlkError> {
        let table = grant::shared().map_err(BlkError::Grant)?;
        let mut table = table.lock();
        let ring = FrontChannel::offer(backend, &mut table).map_err(BlkError::Channel)?;
        ring.on_event(wake).map_err(|e| BlkError::Channel(ChannelError::Event(e)))?;
        let n = pool_pages.clamp(1, usize::from(u16::MAX));
        let pool = grant::granted_pages(&mut table, backend, n, false)?;
        let free = (0..n as u16).rev().collect();
        // One indirect page per request of more than 11 pages the pool can
        // have in flight at once.
        let ind_pages = if info.features.indirect {
            grant::granted_pages(&mut table, backend, (n / (blkif::MAX_SEGMENTS + 1)).clamp(1, RING_SLOTS), false)?
        } else {
            Vec::new()
        };
        let ind_free = (0..ind_pages.len() as u16).rev().collect();
        let salt = crate::time::tsc() ^ (u64::from(handle) << 48);
        Ok(BlockDevice {
            id: salt ^ u64::from(ring.gref()),
            ind_pages,
            ind_free,
            stats: FrontStats::default(),
            ring,
            inflight: Inflight::with_salt(salt),
            pool,
            free,
            info,
            handle,
            broken: false,
            stream: Book::new(),
            unkicked: false,
            batch: Vec::new(),
        })
    }

    /// The ring's grant reference, for the store.
    pub fn ring_ref(&self) -> u32 {
        self.ring.gref()
    }

    /// The event port, for the store.
    pub fn port(&self) -> Port {
        self.ring.port()
    }

    /// The device's counters.
    pub fn stats(&self) -> FrontStats {
        self.stats
    }

    /// Lends `pages` pages of the pool as a zero-copy buffer (zeroed).
    /// The pool keeps fewer pages for the copying calls, which need at
    /// least one: [`BlkError::NoMemory`] if that would not be left.
    pub fn alloc_buf(&mut self, pages: usize) -> Result<IoBuf, BlkError> {
        if pages == 0 || pages >= self.free.len() {
            return Err(BlkError::NoMemory);
        }
        let mut buf = IoBuf { device: self.id, pages: Vec::new(), vas: Vec::new(), grefs: Vec::new() };
        buf.pages.try_reserve_exact(pages).map_err(|_| BlkError::NoMemory)?;
        buf.vas.try_reserve_exact(pages).map_err(|_| BlkError::NoMemory)?;
        buf.grefs.try_reserve_exact(pages).map_err(|_| BlkError::NoMemory)?;
        for _ in 0..pages {
            let k = self.free.pop().ok_or(BlkError::NoMemory)?;
            let p = &self.pool[usize::from(k)];
            buf.pages.push(k);
            buf.vas.push(p.page.va());
            buf.grefs.push(p.gref);
        }
        let zero = [0u8; 256];
        for at in (0..buf.len()).step_by(zero.len()) {
            buf.write(at, &zero);
        }
        Ok(buf)
    }

    /// Gives a buffer's pages back to the pool.
    pub fn free_buf(&mut self, buf: IoBuf) {
        if buf.device == self.id {
            self.free.extend(buf.pages.iter().rev());
        }
    }

    /// What the backend said of the disk.
    pub fn info(&self) -> DiskInfo {
        self.info
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.info.sectors
    }

    /// Reads whole sectors from `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.run(&mut [Io::Read { sector, buf }])
    }

    /// Writes `buf` (whole sectors) at `sector`; durable after a flush.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.run(&mut [Io::Write { sector, buf, fua: false }])
    }

    /// Writes `buf` at `sector`, durable when this returns (the backend's
    /// write-through: `feature-fua`).
    pub fn write_fua(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.run(&mut [Io::Write { sector, buf, fua: true }])
    }

    /// Makes every write completed so far durable.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.run(&mut [Io::Flush])
    }

    /// Tells the backend it may forget `sectors` sectors from `sector`.
    pub fn discard(&mut self, sector: u64, sectors: u64) -> Result<(), BlkError> {
        self.run(&mut [Io::Discard { sector, sectors }])
    }

    /// Checks `io` against the disk before anything is sent.
    fn check(&self, io: &Io<'_>) -> Result<(), BlkError> {
        let (sector, len, write) = match io {
            Io::Read { sector, buf } => (*sector, buf.len(), false),
            Io::Write { sector, buf, fua } => {
                if *fua && !self.info.features.fua {
                    return Err(BlkError::NotSupported);
                }
                (*sector, buf.len(), true)
            }
            Io::ReadInto { sector, buf } if buf.device == self.id => (*sector, buf.len(), false),
            Io::WriteFrom { sector, buf, fua } if buf.device == self.id => {
                if *fua && !self.info.features.fua {
                    return Err(BlkError::NotSupported);
                }
                (*sector, buf.len(), true)
            }
            // Another device's buffer: its grants are not this backend's.
            Io::ReadInto { .. } | Io::WriteFrom { .. } => return Err(BlkError::BadLength),
            Io::Flush => return if self.info.features.flush { Ok(()) } else { Err(BlkError::NotSupported) },
            Io::Discard { sector, sectors } => {
                if !self.info.features.discard {
                    return Err(BlkError::NotSupported);
                }
                return match sector.checked_add(*sectors) {
                    Some(end) if end <= self.info.sectors && *sectors > 0 => Ok(()),
                    _ => Err(BlkError::OutOfRange),
                };
            }
        };
        if len == 0 || !len.is_multiple_of(SECTOR) {
            return Err(BlkError::BadLength);
        }
        if write && self.info.readonly {
            return Err(BlkError::ReadOnly);
        }
        match sector.checked_add((len / SECTOR) as u64) {
            Some(end) if end <= self.info.sectors => Ok(()),
            _ => Err(BlkError::OutOfRange),
        }
    }

    /// Runs a batch: as many requests in flight as the ring, the shadow
    /// table and the pool allow, completed in any order, each operation
    /// split into requests of up to 11 pages. Returns when every operation
    /// is done; the first error, if any (the others still ran). A `Flush`
    /// waits for everything before it. Nothing is sent if any operation is
    /// malformed.
    pub fn run(&mut self, ios: &mut [Io<'_>]) -> Result<(), BlkError> {
        if self.broken {
            return Err(BlkError::Protocol);
        }
        if !self.stream.is_empty() {
            return Err(BlkError::Busy);
        }
        for io in ios.iter() {
            self.check(io)?;
        }
        let mut pending = core::mem::take(&mut self.batch);
        pending.clear();
        pending.try_reserve_exact(RING_SLOTS).map_err(|_| BlkError::NoMemory)?;
        let result = self.run_batch(ios, &mut pending);
        self.batch = pending;
        result
    }

    fn run_batch(&mut self, ios: &mut [Io<'_>], pending: &mut Vec<Pending>) -> Result<(), BlkError> {
        let mut result = Ok(());
        let (mut next, mut offset) = (0usize, 0usize);
        loop {
            // Submit what fits.
            while next < ios.len() && !self.inflight.is_full() && pending.len() < RING_SLOTS {
                if matches!(ios[next], Io::Flush) && !pending.is_empty() {
                    break;
                }
                match self.submit(&ios[next], next, offset)? {
                    Some((p, done)) => {
                        pending.push(p);
                        offset = if done { 0 } else { offset + pending.last().map_or(0, |p| p.bytes) };
                        if done {
                            next += 1;
                        }
                    }
                    None => break, // the pool is empty: wait for pages
                }
            }
            if self.ring.ring.push_and_check_notify().map_err(|e| self.fail(e))? {
                self.stats.notifies += 1;
                let _ = self.ring.notify();
            }
            if pending.is_empty() && next == ios.len() {
                return result;
            }
            // Reap what has come back, or sleep until something does.
            let mut reaped = 0;
            while let Some(rsp) = self.ring.ring.pop_response().map_err(|e| self.fail(e))? {
                let done = self.inflight.complete(rsp).map_err(|_| {
                    self.broken = true;
                    BlkError::Protocol
                })?;
                reaped += 1;
                let Some(i) = pending.iter().position(|p| p.id == done.id) else {
                    self.broken = true;
                    return Err(BlkError::Protocol);
                };
                let p = pending.swap_remove(i);
                let status = match done.status {
                    Status::Okay => Ok(()),
                    Status::Error => Err(BlkError::Io),
                    Status::NotSupported => Err(BlkError::NotSupported),
                };
                if let (Ok(()), Io::Read { buf, .. }) = (&status, &mut ios[p.io]) {
                    self.copy_out(&p, &mut buf[p.offset..p.offset + p.bytes]);
                }
                // Back in reverse, so the next request pops them in
                // ascending order: consecutive pages, which the backend
                // hands its device as one run.
                for &k in p.pages[..p.nr_pages].iter().rev() {
                    self.free.push(k);
                }
                if let Some(k) = p.ind {
                    self.ind_free.push(k);
                }
                if result.is_ok() {
                    result = status;
                }
            }
            if reaped == 0 {
                self.wait()?;
            }
        }
    }

    /// Sleeps until the ring has responses. A backend that went away (its
    /// domain died: our port is no longer connected) never answers, so the
    /// wait wakes every [`IDLE_CHECK_NS`] to look, and then fails with
    /// [`BlkError::NotConnected`] (the device is unusable from then on).
    fn wait(&mut self) -> Result<(), BlkError> {
        let port = self.ring.port();
        loop {
            // Clear, check, poll: an answer after the check still ends the
            // poll (it sets the bit again); one before it is seen by it.
            crate::event::clear_pending(port);
            match self.ring.ring.final_check_for_responses() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.fail(e)),
            }
            self.stats.waits += 1;
            let deadline = crate::time::now_ns() + IDLE_CHECK_NS;
            let _ = crate::sched::poll(&[port.0], deadline);
            // Only a poll that ran out asks whether the backend is still
            // there (a hypercall): an answer ends the poll early, and the
            // check above finds it.
            if crate::time::now_ns() >= deadline && !self.ring.connected() {
                self.broken = true;
                return Err(BlkError::NotConnected);
            }
        }
    }

    /// Starts one streamed request (see "Streaming" in the module docs),
    /// tagged `tag` for its [`Done`]: on the ring, but not yet told to the
    /// backend ([`BlockDevice::kick`], or [`BlockDevice::wait_done`],
    /// which kicks). Checked like a batch's operation first; a refused
    /// start hands the operation (and its buffer) back, with
    /// [`BlkError::Busy`] when it only has to wait for an answer.
    // The operation comes back whole on refusal: it owns the caller's buffer.
    #[allow(clippy::result_large_err)]
    pub fn start(&mut self, op: StreamOp, tag: u64) -> Result<(), (BlkError, StreamOp)> {
        if self.broken {
            return Err((BlkError::Protocol, op));
        }
        let (kind, sector, buf, fua) = match op {
            StreamOp::Read { sector, buf } => (Op::Read, sector, Some(buf), false),
            StreamOp::Write { sector, buf, fua } => {
                (if fua { Op::WriteFua } else { Op::Write }, sector, Some(buf), fua)
            }
            StreamOp::Flush => (Op::Flush, 0, None, false),
        };
        let back = |buf: Option<IoBuf>| match (kind, buf) {
            (Op::Read, Some(buf)) => StreamOp::Read { sector, buf },
            (_, Some(buf)) => StreamOp::Write { sector, buf, fua },
            (_, None) => StreamOp::Flush,
        };
        let mut buf = buf;
        let checked = match buf.as_mut() {
            Some(b) if kind == Op::Read => self.check(&Io::ReadInto { sector, buf: b }),
            Some(b) => self.check(&Io::WriteFrom { sector, buf: b, fua }),
            None => self.check(&Io::Flush),
        };
        let pages = buf.as_ref().map_or(0, |b| b.pages.len());
        let room = if pages > max_pages(self.info.features.indirect) {
            Err(BlkError::BadLength)
        } else if self.stream.admit(kind == Op::Flush).is_err()
            || self.inflight.is_full()
            || (pages > blkif::MAX_SEGMENTS && self.ind_free.is_empty())
        {
            Err(BlkError::Busy)
        } else {
            Ok(())
        };
        if let Err(e) = checked.and(room) {
            return Err((e, back(buf)));
        }
        let grefs = buf.as_ref().map_or(&[][..], |b| &b.grefs[..]);
        // A request that fits the ring slot builds its list of pieces in
        // the slot's size (the common case: less to fill per request).
        let built = if pages <= blkif::MAX_SEGMENTS {
            self.build(kind, sector, &whole_pages::<{ blkif::MAX_SEGMENTS }>(grefs)[..pages])
        } else {
            self.build(kind, sector, &whole_pages::<{ blkif::MAX_VALID_SEGMENTS }>(grefs)[..pages])
        };
        let (req, ind) = match built {
            Ok(r) => r,
            Err(e) => return Err((e, back(buf))),
        };
        let id = match self.push(req) {
            Ok(id) => id,
            Err(e) => {
                if let Some(k) = ind {
                    self.ind_free.push(k);
                }
                return Err((e, back(buf)));
            }
        };
        self.unkicked = true;
        if let Err((_, (buf, _))) = self.stream.insert(id, tag, (buf, ind), kind == Op::Flush) {
            // Cannot happen: admitted above. On the ring and untracked, its
            // answer would be unknown: the device is done.
            self.broken = true;
            return Err((BlkError::Protocol, back(buf)));
        }
        Ok(())
    }

    /// Tells the backend about every request started since the last kick
    /// (one notification, and only if it asked for one).
    pub fn kick(&mut self) -> Result<(), BlkError> {
        if self.broken {
            return Err(BlkError::Protocol);
        }
        if core::mem::take(&mut self.unkicked) && self.ring.ring.push_and_check_notify().map_err(|e| self.fail(e))? {
            self.stats.notifies += 1;
            let _ = self.ring.notify();
        }
        Ok(())
    }

    /// Streamed requests started and not yet handed back.
    pub fn streaming(&self) -> usize {
        self.stream.len()
    }

    /// The next answered streamed request, if one has been answered
    /// (never sleeps). An answer that is not for a streamed request in
    /// flight, or that does not match it, is [`BlkError::Protocol`]: the
    /// device is broken, and the buffers still in flight stay lent to it.
    pub fn next_done(&mut self) -> Result<Option<Done>, BlkError> {
        if self.broken {
            return Err(BlkError::Protocol);
        }
        let Some(rsp) = self.ring.ring.pop_response().map_err(|e| self.fail(e))? else { return Ok(None) };
        let Ok(done) = self.inflight.complete(rsp) else {
            self.broken = true;
            return Err(BlkError::Protocol);
        };
        let Some(e) = self.stream.finish(done.id) else {
            self.broken = true;
            return Err(BlkError::Protocol);
        };
        let (buf, ind) = e.held;
        if let Some(k) = ind {
            self.ind_free.push(k);
        }
        let result = match done.status {
            Status::Okay => Ok(()),
            Status::Error => Err(BlkError::Io),
            Status::NotSupported => Err(BlkError::NotSupported),
        };
        Ok(Some(Done { tag: e.tag, buf, result }))
    }

    /// Kicks, then the next answered streamed request, sleeping until
    /// there is one; `None` if none is in flight.
    pub fn wait_done(&mut self) -> Result<Option<Done>, BlkError> {
        if self.broken {
            return Err(BlkError::Protocol);
        }
        if self.stream.is_empty() {
            return Ok(None);
        }
        self.kick()?;
        loop {
            if let Some(d) = self.next_done()? {
                return Ok(Some(d));
            }
            self.wait()?;
        }
    }

    fn fail(&mut self, _: RingError) -> BlkError {
        self.broken = true;
        BlkError::Protocol
    }

    /// Builds and pushes the next request of `io` from byte `offset`;
    /// `None` when the pool has no page for it. `done`: it was the last.
    fn submit(&mut self, io: &Io<'_>, index: usize, offset: usize) -> Result<Option<(Pending, bool)>, BlkError> {
        let (op, sector, len) = match io {
            Io::ReadInto { sector, buf } => return self.submit_direct(Op::Read, *sector, buf, index, offset),
            Io::WriteFrom { sector, buf, fua } => {
                return self.submit_direct(if *fua { Op::WriteFua } else { Op::Write }, *sector, buf, index, offset)
            }
            Io::Read { sector, buf } => (Op::Read, *sector, buf.len()),
            Io::Write { sector, buf, fua } => (if *fua { Op::WriteFua } else { Op::Write }, *sector, buf.len()),
            Io::Flush | Io::Discard { .. } => {
                let req = match io {
                    Io::Discard { sector, sectors } => Request::discard(self.handle, *sector, *sectors, false),
                    _ => Request::rw(Op::Flush, self.handle, 0, &[]).map_err(|_| BlkError::BadLength)?,
                };
                let id = self.push(req)?;
                let p = Pending {
                    id,
                    io: index,
                    offset: 0,
                    bytes: 0,
                    pages: [0; blkif::MAX_VALID_SEGMENTS],
                    nr_pages: 0,
                    ind: None,
                };
                return Ok(Some((p, true)));
            }
        };
        let left = (len - offset) as u64 / SECTOR as u64;
        let most = self.most_pages() as u64 * 8;
        let sectors = left.min(most).min(self.free.len() as u64 * 8);
        if sectors == 0 {
            return Ok(None);
        }
        let bytes = sectors as usize * SECTOR;
        let nr_pages = bytes.div_ceil(blkif::PAGE_SIZE);
        let mut p =
            Pending { id: 0, io: index, offset, bytes, pages: [0; blkif::MAX_VALID_SEGMENTS], nr_pages, ind: None };
        let mut pieces = [Piece { gref: 0, offset: 0, len: 0 }; blkif::MAX_VALID_SEGMENTS];
        // `sectors` fits the free pages, so every pop below succeeds.
        for (k, (slot, piece)) in p.pages.iter_mut().zip(pieces.iter_mut()).take(nr_pages).enumerate() {
            let page = self.free.pop().ok_or(BlkError::NoMemory)?;
            *slot = page;
            let len = (bytes - k * blkif::PAGE_SIZE).min(blkif::PAGE_SIZE);
            *piece = Piece { gref: self.pool[usize::from(page)].gref, offset: 0, len: len as u32 };
            if let Io::Write { buf, .. } = io {
                let from = offset + k * blkif::PAGE_SIZE;
                let _ = self.shared(page).write_bytes(0, &buf[from..from + len]);
            }
        }
        let pushed = self.build(op, sector + (offset / SECTOR) as u64, &pieces[..nr_pages]).and_then(|(r, ind)| {
            p.ind = ind;
            self.push(r).inspect_err(|_| {
                if let Some(k) = ind {
                    self.ind_free.push(k);
                }
            })
        });
        match pushed {
            Ok(id) => {
                p.id = id;
                Ok(Some((p, offset + bytes == len)))
            }
            Err(e) => {
                for &k in p.pages[..nr_pages].iter().rev() {
                    self.free.push(k);
                }
                Err(e)
            }
        }
    }

    /// [`BlockDevice::submit`] for a zero-copy buffer: the request names
    /// the buffer's own pages, and no pool page is taken.
    fn submit_direct(
        &mut self,
        op: Op,
        sector: u64,
        buf: &IoBuf,
        index: usize,
        offset: usize,
    ) -> Result<Option<(Pending, bool)>, BlkError> {
        let len = buf.len();
        let bytes = (len - offset).min(self.most_pages() * blkif::PAGE_SIZE);
        let first = offset / blkif::PAGE_SIZE;
        let nr_pages = bytes / blkif::PAGE_SIZE;
        let mut pieces = [Piece { gref: 0, offset: 0, len: 0 }; blkif::MAX_VALID_SEGMENTS];
        for (piece, &gref) in pieces.iter_mut().zip(&buf.grefs[first..first + nr_pages]) {
            *piece = Piece { gref, offset: 0, len: blkif::PAGE_SIZE as u32 };
        }
        let (req, ind) = self.build(op, sector + (offset / SECTOR) as u64, &pieces[..nr_pages])?;
        let id = self.push(req).inspect_err(|_| {
            if let Some(k) = ind {
                self.ind_free.push(k);
            }
        })?;
        let p = Pending { id, io: index, offset, bytes, pages: [0; blkif::MAX_VALID_SEGMENTS], nr_pages: 0, ind };
        Ok(Some((p, offset + bytes == len)))
    }

    /// Pages the next request may carry: 32 while an indirect page is
    /// free, else 11.
    fn most_pages(&self) -> usize {
        max_pages(self.info.features.indirect && !self.ind_free.is_empty())
    }

    /// The request for `pieces` from `sector`: in the slot for up to 11,
    /// else an indirect one whose segments go in a free indirect page
    /// (returned with it, to free at the answer).
    fn build(&mut self, op: Op, sector: u64, pieces: &[Piece]) -> Result<(Request, Option<u16>), BlkError> {
        if pieces.len() <= blkif::MAX_SEGMENTS {
            return Ok((Request::rw(op, self.handle, sector, pieces).map_err(|_| BlkError::BadLength)?, None));
        }
        let k = self.ind_free.pop().ok_or(BlkError::NoMemory)?;
        let page = &self.ind_pages[usize::from(k)];
        let mut list = [0u8; blkif::MAX_INDIRECT_SEGMENTS * 8];
        let built = pieces.iter().enumerate().try_for_each(|(i, piece)| {
            let seg = piece.segment(i)?;
            list[i * 8..i * 8 + 4].copy_from_slice(&seg.gref.to_le_bytes());
            list[i * 8 + 4] = seg.first_sect;
            list[i * 8 + 5] = seg.last_sect;
            Ok::<(), blkif::BuildError>(())
        });
        let req = built.and_then(|()| Request::indirect(op, self.handle, sector, pieces.len(), page.gref));
        let Ok(req) = req else {
            self.ind_free.push(k);
            return Err(BlkError::BadLength);
        };
        let _ = page.shared().write_bytes(0, &list[..pieces.len() * 8]);
        Ok((req, Some(k)))
    }

    /// Stamps `req` with an id and puts it on the ring (published by the
    /// caller's `push_and_check_notify`).
    fn push(&mut self, req: Request) -> Result<u64, BlkError> {
        let req = self.inflight.submit(req).map_err(|_| BlkError::NoMemory)?;
        let id = req.id;
        self.stats.requests += 1;
        if self.ring.ring.try_push(req).is_err() {
            // Cannot happen with fewer requests in flight than slots; undo
            // nothing the backend could see, but never lose track.
            self.broken = true;
            return Err(BlkError::Protocol);
        }
        Ok(id)
    }

    /// Pool page `k` as shared memory.
    fn shared(&self, k: u16) -> SharedMem<'_> {
        self.pool[usize::from(k)].shared()
    }

    /// Copies a completed read's bytes out of its pool pages.
    fn copy_out(&self, p: &Pending, out: &mut [u8]) {
        for (k, chunk) in out.chunks_mut(blkif::PAGE_SIZE).enumerate() {
            let _ = self.shared(p.pages[k]).read_bytes(0, chunk);
        }
    }
}

/// Whole-page pieces of the pages granted as `grefs` (the first `N`; the
/// rest of the list is empty pieces).
fn whole_pages<const N: usize>(grefs: &[u32]) -> [Piece; N] {
    let mut pieces = [Piece { gref: 0, offset: 0, len: 0 }; N];
    for (piece, &gref) in pieces.iter_mut().zip(grefs) {
        *piece = Piece { gref, offset: 0, len: blkif::PAGE_SIZE as u32 };
    }
    pieces
}

/// Store keys of a virtual disk, as Xen's blkif names them.
mod key {
    pub const BACKEND: &str = "backend";
    pub const BACKEND_ID: &str = "backend-id";
    pub const RING_REF: &str = "ring-ref";
    pub const EVENT_CHANNEL: &str = "event-channel";
    pub const SECTORS: &str = "sectors";
    pub const INFO: &str = "info";
    pub const FLUSH: &str = "feature-flush-cache";
    pub const FUA: &str = "feature-fua";
    pub const DISCARD: &str = "feature-discard";
    pub const PERSISTENT: &str = "feature-persistent";
    pub const MAX_INDIRECT: &str = "feature-max-indirect-segments";
}

/// `info` bit: the disk is read-only (Xen's `VDISK_READONLY`).
const VDISK_READONLY: u64 = 4;

impl BlockDevice {
    /// Finds this domain's virtual disk number `index` (in vdev order) in
    /// the store, connects to its backend through the blkif handshake
    /// ([`crate::xenbus_state::Frontend`]) and returns it connected, with
    /// [`DEFAULT_POOL_PAGES`] I/O pages.
    pub fn open(store: &mut Store, index: usize) -> Result<BlockDevice, BlkError> {
        Self::open_with(store, index, DEFAULT_POOL_PAGES)
    }

    /// [`BlockDevice::open`] with `pool_pages` I/O pages (more pages, more
    /// requests in flight).
    pub fn open_with(store: &mut Store, index: usize, pool_pages: usize) -> Result<BlockDevice, BlkError> {
        let home = store.home();
        let mut vdevs: Vec<u16> =
            store.directory(&format!("{home}/device/vbd"))?.iter().filter_map(|v| v.parse().ok()).collect();
        vdevs.sort_unstable();
        let vdev = *vdevs.get(index).ok_or(BlkError::NotConnected)?;
        let dir = format!("{home}/device/vbd/{vdev}");
        let back = store.read_string(&format!("{dir}/{}", key::BACKEND))?;
        let back_id = u16::try_from(store.read_u64(&format!("{dir}/{}", key::BACKEND_ID))?)
            .map_err(|_| BlkError::Store(StoreError::BadValue))?;
        let published = crate::xenbus::connect_front(
            store,
            &dir,
            &back,
            |store| {
                let info = Self::read_info(store, &back)?;
                let d = BlockDevice::attach(back_id, vdev, info, pool_pages)?;
                let tx = store.transaction_start()?;
                store.write_tx(tx, &format!("{dir}/{}", key::RING_REF), format!("{}", d.ring_ref()).as_bytes())?;
                store.write_tx(tx, &format!("{dir}/{}", key::EVENT_CHANNEL), format!("{}", d.port().0).as_bytes())?;
                // The pool pages are granted once and used for nothing
                // else: the backend may keep them mapped.
                store.write_tx(tx, &format!("{dir}/{}", key::PERSISTENT), b"1")?;
                store.transaction_end(tx, true)?;
                Ok(d)
            },
            |store, d: &mut BlockDevice| {
                d.info = Self::read_info(store, &back)?;
                Ok::<(), BlkError>(())
            },
        )?;
        published.ok_or(BlkError::NotConnected)
    }

    /// The disk details the backend wrote before `InitWait`.
    fn read_info(store: &mut Store, back: &str) -> Result<DiskInfo, BlkError> {
        let sectors = store.read_u64(&format!("{back}/{}", key::SECTORS))?;
        let info = store.read_u64(&format!("{back}/{}", key::INFO)).unwrap_or(0);
        let mut flag = |k: &str| store.read_u64(&format!("{back}/{k}")).is_ok_and(|v| v == 1);
        let features = blkif::Features {
            flush: flag(key::FLUSH),
            fua: flag(key::FUA),
            discard: flag(key::DISCARD),
            ..blkif::Features::default()
        };
        let indirect = store
            .read_u64(&format!("{back}/{}", key::MAX_INDIRECT))
            .is_ok_and(|n| n >= blkif::MAX_INDIRECT_SEGMENTS as u64);
        let features = blkif::Features { indirect, ..features };
        Ok(DiskInfo { sectors, readonly: info & VDISK_READONLY != 0, features })
    }
}

impl From<PoolError> for BlkError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::NoMemory => BlkError::NoMemory,
            PoolError::Grant(g) => BlkError::Grant(g),
        }
    }
}

impl From<StoreError> for BlkError {
    fn from(e: StoreError) -> Self {
        BlkError::Store(e)
    }
}
