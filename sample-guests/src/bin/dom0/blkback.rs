//! The block backend (blkback): serves one domU's virtual disk from dom0's
//! real disk over a blkif ring ([`split_drivers::blkif`]) in a page the
//! front granted, zero-copy: the front's data pages are mapped
//! ([`MappedPages`]) and the virtio disk DMAs straight into or out of them
//! by the machine addresses the grant map returned.
//!
//! # Where validation happens
//! Every request is copied out of the ring once (ring-protocol R6) and
//! goes through [`blkif::validate`] against the virtual disk's size and
//! the features advertised; an invalid one is answered with its status and
//! never executed. Only then are its grants mapped: a bad gref makes the
//! map fail (the hypervisor checks it), which answers `BLKIF_RSP_ERROR`.
//! Sectors are translated to the real disk by the image layer
//! ([`disk_images::VirtualDisk`]: a raw slice, a sparse image or an
//! overlay), which checks every physical extent against its region in one
//! place, so no request ever reaches a sector outside the domU's region
//! (and an overlay never writes its base).
//!
//! # Two paths
//! - **Asynchronous** (a raw slice's reads, writes and flushes whose data
//!   is one run of the mapped pages, which is what every well-behaved
//!   front sends): the request becomes one device request, scatter-gather
//!   over the mapped pages ([`Submission`] owning the [`MappedPages`]), up
//!   to [`MAX_PENDING`] of them in flight per backend, answered in
//!   whatever order the device completes them ([`BlkBack::complete`]).
//!   A `WRITE_FUA` is answered after a device flush that follows its
//!   write.
//! - **Synchronous** (an image's requests, discards, and data whose
//!   segments leave holes in the pages): one request at a time, waiting
//!   for the device in place. An image's allocation (a new block's
//!   preparation, the data, the commit) must not interleave with another
//!   request to the same block, so images stay on this path.
//!
//! # Persistent grants
//! When the front offers `feature-persistent` (it grants a pool of pages
//! once and uses them for nothing but this disk's data), each grant a
//! request names is mapped the first time it is seen and kept
//! ([`GrantCache`], at most [`MAX_PERSISTENT`] per front, and never while
//! fewer than 1984 foreign-mapping slots are left for everyone's
//! per-request maps): a request's pages are then lent from the cache as a
//! [`GrantSet`] and come back with its completion, with no map or unmap
//! per request. A grant that does not map read-write, one already lent to
//! another request in flight, or a full cache sends the request down the
//! per-request path ([`MappedPages`], mapped read-only for a disk write).
//! The cache is unmapped when the backend closes; what is lent then is
//! unmapped when its completion comes ([`orphan`]).
//!
//! # Who owns what
//! A request's mapped pages belong to its device submission until the
//! completion hands them back; per-request maps are unmapped before the
//! response is pushed (the front ends its grants on the answer). The pending table
//! ([`Pending`]) is the only record of an accepted request: each entry is
//! answered exactly once, by its completion. Completions are routed back
//! by cookie: this backend's `serial` (never reused) and the entry.
//!
//! # Work per call
//! [`BlkBack::serve`] takes at most [`BATCH`] requests, then returns, so
//! one busy front cannot keep dom0 from its other connections, and leaves
//! requests on the ring while its pending table or the disk is full.
//!
//! # Sharing the disk's queue
//! Each backend may hold its [`Share`] of the disk's request slots and
//! descriptors. A request is taken only while the backend's share has room
//! for the largest one ([`DESCRIPTORS_PER_REQUEST`]), and is then charged
//! the descriptors its chain really holds, as [`Disk::submit`] reports them
//! (a 64 KiB request on the front's machine-contiguous pool holds 3: the
//! header, one run, the status), until its completion gives them back. So
//! a front's 32 requests of 64 KiB all fit a 256-descriptor share, where
//! charging each the worst case (18) would hold 14 of them at the disk.
//! The counters [`Stats::accept_tsc`] and [`Stats::complete_tsc`] say what
//! taking and answering requests costs (instructions under icount).
//!
//! # Durability
//! A write is answered once the device completed it; `FLUSH_DISKCACHE`
//! and `WRITE_FUA` are answered only after a device flush (for an image:
//! device flush, then the allocation map, then another device flush)
//! completed, so an acknowledged flush or FUA write is on the disk, and so
//! is the metadata that finds it.

use alloc::boxed::Box;
use alloc::vec::Vec;
use disk_images::{Device, Extent, IoError, VirtualDisk};
use pvguest_sdk::channel::{BackChannel, ChannelError};
use pvguest_sdk::grant::{GrantSet, MappedGrant, MappedPages};
use pvguest_sdk::virtio::blk::{self as vblk, BlkError, Completion, Disk, Memory, Submission, SECTOR};
use pvguest_sdk::{println, vmap};
use ring_protocol::RingError;
use split_drivers::blkif::{self, BadRequest, Features, Op, Request, Response, Segment, Status, Valid};

/// Requests one [`BlkBack::serve`] call takes at most.
pub const BATCH: usize = 32;
/// Requests of one backend in flight at the device at most.
pub const MAX_PENDING: usize = 32;
// The pending entries in use are one bit each of a `u32`.
const _: () = assert!(MAX_PENDING <= 32);
/// A front's grants one backend keeps mapped at most (persistent grants).
pub const MAX_PERSISTENT: usize = 1024;
/// Foreign-mapping slots left free for everyone's per-request maps (every
/// request slot of the disk mapping a 32-page request at once): no backend
/// caches a mapping when fewer remain.
const VMAP_RESERVE: usize = vblk::SUBMISSION_SLOTS * blkif::MAX_VALID_SEGMENTS;

/// Grants of one [`Block`] of a [`GrantCache`] (consecutive references
/// from a multiple of it).
const BLOCK: usize = 64;
/// Blocks one backend's cache holds at most (`MAX_PERSISTENT / BLOCK`).
const MAX_BLOCKS: usize = MAX_PERSISTENT / BLOCK;

/// Mappings of grants `base..base + 64`, at consecutive addresses from
/// `va` (grant `base + i` at `va + i * 4096`): a front's consecutive grants
/// (a pool granted in order) are then a backend's consecutive addresses,
/// and a request's pages one span for the device (a few long runs instead
/// of one descriptor per page).
struct Block {
    base: u32,
    va: u64,
    /// Bit `i`: grant `base + i` is mapped (here or lent).
    mapped: u64,
    maps: [Option<MappedGrant>; BLOCK],
}

/// A backend's persistent mappings of one front, in [`Block`]s (at most
/// [`MAX_BLOCKS`], so a front with scattered grant references cannot make
/// it reserve more than [`MAX_PERSISTENT`] slots). Each mapping is either
/// here (`Some`) or lent to a request in flight (`None` with its bit set,
/// until its completion puts it back). The block's slots that hold no
/// mapping are the cache's; a mapping owns its own slot.
struct GrantCache {
    blocks: Vec<Block>,
    /// The block found last: a request's grants are consecutive, so the
    /// next look-up is almost always in it (looked at first, then the
    /// others in order).
    last: usize,
}

/// What [`GrantCache::take`] found.
enum Take {
    Got(MappedGrant),
    /// Mapped, but lent to another request in flight.
    Lent,
    /// Not mapped: the slot it would go at, if its block exists or could
    /// be made.
    Absent(Option<u64>),
}

impl GrantCache {
    fn new() -> Box<GrantCache> {
        Box::new(GrantCache { blocks: Vec::new(), last: 0 })
    }

    /// The block of grants from `base`: the last one found first.
    fn block(&mut self, base: u32) -> Option<&mut Block> {
        if self.blocks.get(self.last).is_none_or(|b| b.base != base) {
            self.last = self.blocks.iter().position(|b| b.base == base)?;
        }
        self.blocks.get_mut(self.last)
    }

    fn take(&mut self, gref: u32) -> Take {
        let base = gref & !(BLOCK as u32 - 1);
        let i = (gref - base) as usize;
        if let Some(b) = self.block(base) {
            if b.mapped & (1 << i) == 0 {
                return Take::Absent(Some(b.va + i as u64 * 4096));
            }
            return match b.maps[i].take() {
                Some(m) => Take::Got(m),
                None => Take::Lent,
            };
        }
        if self.blocks.len() >= MAX_BLOCKS || pvguest_sdk::vmap::available() < VMAP_RESERVE + BLOCK {
            return Take::Absent(None);
        }
        let Ok(va) = pvguest_sdk::vmap::alloc(BLOCK) else { return Take::Absent(None) };
        if self.blocks.try_reserve(1).is_err() {
            pvguest_sdk::vmap::free(va, BLOCK);
            return Take::Absent(None);
        }
        self.blocks.push(Block { base, va, mapped: 0, maps: [const { None }; BLOCK] });
        self.last = self.blocks.len() - 1;
        Take::Absent(Some(va + i as u64 * 4096))
    }

    /// Records that grant `gref` is now mapped (at the slot `take` named)
    /// and lent.
    fn mapped(&mut self, gref: u32) {
        let base = gref & !(BLOCK as u32 - 1);
        if let Some(b) = self.block(base) {
            b.mapped |= 1 << (gref - base);
        }
    }

    /// Takes back a lent mapping; one the cache has no lent entry for is
    /// given back to the caller.
    fn put_back(&mut self, m: MappedGrant) -> Option<MappedGrant> {
        let base = m.gref() & !(BLOCK as u32 - 1);
        let i = (m.gref() - base) as usize;
        match self.block(base) {
            Some(b) if b.mapped & (1 << i) != 0 && b.maps[i].is_none() && m.va() == b.va + i as u64 * 4096 => {
                b.maps[i] = Some(m);
                None
            }
            _ => Some(m),
        }
    }

    /// Unmaps what is here and gives back the slots holding nothing; what
    /// is lent gives its own slot back when it is unmapped ([`orphan`]).
    fn close(self) {
        for b in self.blocks {
            for (i, m) in b.maps.into_iter().enumerate() {
                match m {
                    Some(m) => {
                        let _ = m.unmap();
                    }
                    None if b.mapped & (1 << i) == 0 => pvguest_sdk::vmap::free(b.va + i as u64 * 4096, 1),
                    None => {}
                }
            }
        }
    }
}

/// An accepted request in flight: what its response needs (its id and
/// wire operation, kept from the validated request), its operation, and
/// whether its data is done and a flush follows (`WRITE_FUA`).
#[derive(Clone, Copy, Debug)]
struct Pending {
    id: u64,
    wire_op: u8,
    op: Op,
    flushing: bool,
    /// Descriptors its chain holds at the disk, as [`Disk::submit`]
    /// reported them (a 16-page request on the front's machine-contiguous
    /// pool holds 3; charging the worst case, 18, kept 13 of a front's 32
    /// requests at the disk); 0 until it is submitted.
    descriptors: usize,
}

impl Pending {
    fn of(v: &Valid, flushing: bool) -> Pending {
        let wire_op = v.response(Status::Okay).operation;
        Pending { id: v.id(), wire_op, op: v.op(), flushing, descriptors: 0 }
    }

    fn response(&self, status: Status) -> Response {
        Response { id: self.id, operation: self.wire_op, status: status.code(), ..Response::default() }
    }
}

/// Descriptors a request may take at the disk at most: its header, its
/// status, and a run per page. A backend takes a request only with room
/// for this many within its share ([`BlkBack::can_take`]), and is then
/// charged what the request really holds ([`Pending::descriptors`]).
const DESCRIPTORS_PER_REQUEST: usize = blkif::MAX_VALID_SEGMENTS + 2;

/// What one backend may have at the disk at once.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub requests: usize,
    pub descriptors: usize,
}

impl Share {
    /// An even share among `connected` backends (at least one request's
    /// worth each).
    pub fn of(connected: usize) -> Share {
        let n = connected.max(1);
        Share {
            requests: (vblk::SUBMISSION_SLOTS / n).max(1),
            descriptors: (vblk::QUEUE_SIZE / n).max(DESCRIPTORS_PER_REQUEST),
        }
    }
}

/// Serials of backends, for completion cookies (never reused, so a late
/// completion of a closed backend finds no one).
static SERIAL: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);

/// The backend serial a completion's cookie names.
pub fn serial_of(cookie: u64) -> u32 {
    (cookie >> 32) as u32
}

/// Gives back what a completion holds when its backend is gone (closed
/// before the device answered): the mapped pages are unmapped.
pub fn orphan(c: Completion) {
    match c.mem {
        Memory::Grants(pages) => {
            let _ = pages.unmap();
        }
        Memory::Set(mut set) => {
            while let Some(g) = set.pop() {
                let _ = g.unmap();
            }
        }
        _ => {}
    }
}

/// The real disk as the image layer's metadata device (its reads and
/// writes through dom0's own buffers).
pub struct Dev<'a>(pub &'a mut Disk);

fn io(e: BlkError) -> IoError {
    match e {
        BlkError::OutOfRange { .. } => IoError::OutOfRange,
        BlkError::BadRequest { .. } => IoError::BadLength,
        _ => IoError::Failed,
    }
}

impl Device for Dev<'_> {
    fn sectors(&self) -> u64 {
        self.0.capacity()
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read(lba, buf).map_err(io)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.0.write(lba, buf).map_err(io)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.0.flush().map_err(io)
    }
}

/// Counters of one backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub sectors: u64,
    /// Requests answered with an error because they were invalid.
    pub invalid: u64,
    /// Requests that failed at the grant map or the device.
    pub failed: u64,
    /// [`BlkBack::serve`] calls that took requests, and notifications
    /// sent to the front (requests per call and responses per
    /// notification say how well the batching works).
    pub batches: u64,
    pub notifies: u64,
    /// Most requests in flight at the device at once.
    pub max_in_flight: u64,
    /// TSC ticks spent taking requests (pop, validate, map or lease,
    /// submit) and answering completions (give back, push): instructions
    /// under `-icount shift=0`, over `reads + writes + flushes` requests.
    pub accept_tsc: u64,
    pub complete_tsc: u64,
}

/// Whether a request's data is one run of its pages: every segment but
/// the first starts its page, every one but the last ends it.
fn one_run(v: &Valid) -> bool {
    let segs = v.segments();
    !segs.is_empty()
        && segs
            .iter()
            .enumerate()
            .all(|(i, s)| (i == 0 || s.offset() == 0) && (i + 1 == segs.len() || s.range().end == blkif::PAGE_SIZE))
}

/// One domU's virtual disk, connected.
pub struct BlkBack {
    pub domid: u16,
    ring: BackChannel<Request, Response>,
    /// The slot the ring is mapped at.
    va: u64,
    vdisk: VirtualDisk,
    features: Features,
    pub stats: Stats,
    serial: u32,
    pending: [Option<Pending>; MAX_PENDING],
    /// Bit `k`: `pending[k]` holds a request (kept with it by
    /// [`BlkBack::set_entry`], so a free entry is found without a scan).
    used: u32,
    in_flight: usize,
    /// Responses pushed but not yet published.
    unpublished: bool,
    /// Both sides offered `feature-persistent`: the front's data pages are
    /// granted once, and stay mapped here ([`BlkBack::lease`]).
    persistent: bool,
    /// Persistent mappings, cached or lent.
    cache: Box<GrantCache>,
    /// Descriptors charged to the requests in flight.
    descriptors: usize,
    /// Empty sets for the next leases (no allocation per request): boxed,
    /// as the driver takes them.
    #[allow(clippy::vec_box)]
    spare_sets: Vec<Box<GrantSet>>,
}

/// Why a backend stopped.
#[derive(Clone, Copy, Debug)]
pub enum BackError {
    /// Connecting to the front's ring.
    Connect(ChannelError),
    /// No free slot to map the ring.
    NoSlot,
    /// The front broke the ring protocol: the connection is dead.
    Ring(RingError),
    /// No room for a response in a slot the request just left (the ring
    /// says the front lied about its indices).
    NoRoom,
}

impl core::fmt::Display for BackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BackError::Connect(e) => write!(f, "connecting to the front's ring: {e:?}"),
            BackError::NoSlot => write!(f, "no free slot to map the ring"),
            BackError::Ring(e) => write!(f, "the front broke the ring protocol: {e}"),
            BackError::NoRoom => write!(f, "no room for a response"),
        }
    }
}

impl BlkBack {
    /// The features every backend advertises.
    pub const FEATURES: Features =
        Features { barrier: false, flush: true, discard: true, secure_discard: false, fua: true, indirect: true };

    /// Connects to `domid`'s ring (`gref`, `port` from the store). On
    /// failure the virtual disk comes back with the error.
    /// `persistent`: the front offered persistent grants.
    pub fn connect(
        domid: u16,
        gref: u32,
        port: u32,
        vdisk: VirtualDisk,
        persistent: bool,
    ) -> Result<BlkBack, (BackError, VirtualDisk)> {
        let Ok(va) = vmap::alloc(1) else { return Err((BackError::NoSlot, vdisk)) };
        match BackChannel::connect(domid, gref, port, va) {
            Ok(ring) => Ok(BlkBack {
                domid,
                ring,
                va,
                vdisk,
                features: Self::FEATURES,
                stats: Stats::default(),
                serial: SERIAL.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
                pending: [None; MAX_PENDING],
                used: 0,
                in_flight: 0,
                unpublished: false,
                persistent,
                cache: GrantCache::new(),
                descriptors: 0,
                spare_sets: Vec::new(),
            }),
            Err(e) => {
                vmap::free(va, 1);
                Err((BackError::Connect(e), vdisk))
            }
        }
    }

    /// Ends the connection: the ring is unmapped and its port closed; the
    /// virtual disk comes back (flush it).
    pub fn close(self) -> VirtualDisk {
        let BlkBack { ring, va, vdisk, cache, .. } = self;
        // Mappings still lent to requests come back with their
        // completions, which find no backend and unmap them ([`orphan`]).
        cache.close();
        if ring.close().is_ok() {
            vmap::free(va, 1);
        }
        vdisk
    }

    /// The local event port of the ring.
    pub fn port(&self) -> pvguest_sdk::event::Port {
        self.ring.port()
    }

    /// This backend's serial (the high half of its completions' cookies).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Takes up to [`BATCH`] requests: the asynchronous ones go to the
    /// device (answered by [`BlkBack::complete`]), the others are answered
    /// here. Returns how many it took.
    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether [`BlkBack::serve`] would take a request now: within its
    /// share, with room at the disk for the largest one.
    pub fn can_take(&self, disk: &Disk, share: Share) -> bool {
        self.in_flight < share.requests.clamp(1, MAX_PENDING)
            && self.descriptors + DESCRIPTORS_PER_REQUEST <= share.descriptors.max(DESCRIPTORS_PER_REQUEST)
            && disk.has_room(blkif::MAX_VALID_SEGMENTS)
    }

    /// `share`: what this backend may have at the disk at once (its share
    /// of the disk's slots and descriptors, so that every connected front
    /// gets some).
    pub fn serve(&mut self, disk: &mut Disk, share: Share) -> Result<usize, BackError> {
        let mut done = 0;
        while done < BATCH && self.can_take(disk, share) {
            let t0 = pvguest_sdk::time::tsc();
            let Some(req) = self.ring.ring.pop_request().map_err(BackError::Ring)? else { break };
            if let Some(rsp) = self.accept(&req, disk) {
                self.respond(rsp)?;
            }
            self.stats.accept_tsc += pvguest_sdk::time::tsc() - t0;
            done += 1;
        }
        if done > 0 {
            self.stats.batches += 1;
            self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight as u64);
        }
        self.publish()?;
        Ok(done)
    }

    /// Makes the responses pushed so far visible, notifying the front if
    /// it asked.
    pub fn publish(&mut self) -> Result<(), BackError> {
        if self.unpublished {
            self.unpublished = false;
            if self.ring.ring.push_and_check_notify().map_err(BackError::Ring)? {
                self.stats.notifies += 1;
                let _ = self.ring.notify();
            }
        }
        Ok(())
    }

    /// Validates a request and either submits it (`None`: answered at its
    /// completion) or answers it now.
    fn accept(&mut self, req: &Request, disk: &mut Disk) -> Option<Response> {
        let checked = if req.operation == blkif::op::INDIRECT {
            self.indirect(req)
        } else {
            blkif::validate(req, self.vdisk.virtual_sectors(), &self.features)
        };
        // By reference: a `Valid` is half a KiB, moved only if need be.
        let v = match &checked {
            Ok(v) => v,
            Err(bad) => {
                self.stats.invalid += 1;
                if self.stats.invalid <= 4 {
                    println!("blkback: dom{}: request {} refused: {bad:?}", self.domid, req.id);
                }
                return Some(Response::to_invalid(req, bad.status()));
            }
        };
        if matches!(self.vdisk, VirtualDisk::Raw(_)) {
            match v.op() {
                Op::Read | Op::Write | Op::WriteFua if one_run(v) => return self.submit_data(v, disk),
                Op::Flush => {
                    self.stats.flushes += 1;
                    return self.submit_flush(None, Pending::of(v, true), disk);
                }
                _ => {}
            }
        }
        Some(self.answer(v, disk))
    }

    /// Checks an indirect request: its header, then its segments, copied
    /// once out of its indirect page (through the persistent cache, or
    /// mapped read-only for the copy). A page that does not map is an
    /// error answer, counted as invalid.
    fn indirect(&mut self, req: &Request) -> Result<Valid, BadRequest> {
        let h = blkif::validate_indirect(req, &self.features)?;
        let mut bytes = [0u8; blkif::MAX_INDIRECT_SEGMENTS * 8];
        let bytes = &mut bytes[..h.nr_segments() * 8];
        let copied = match self.lease(&[h.segments_gref()]) {
            Some(mut set) => {
                let ok = set.pop().is_some_and(|m| {
                    let ok = m.read(0, bytes);
                    self.keep(m);
                    ok
                });
                // The (now empty) set goes back to the spares.
                self.give_back(Memory::Set(set));
                ok
            }
            None => match MappedPages::map(self.domid, &[h.segments_gref()], true) {
                Ok(page) => {
                    let ok = page.read(0, bytes);
                    ok & page.unmap().is_ok()
                }
                Err(_) => false,
            },
        };
        if !copied {
            // The grant is the front's allegation; reported like a bad segment.
            return Err(BadRequest::NoSegments);
        }
        let mut segs = [Segment::default(); blkif::MAX_INDIRECT_SEGMENTS];
        for (seg, b) in segs.iter_mut().zip(bytes.chunks_exact(8)) {
            *seg = Segment {
                gref: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                first_sect: b[4],
                last_sect: b[5],
                _pad: 0,
            };
        }
        h.validate(&segs[..h.nr_segments()], self.vdisk.virtual_sectors())
    }

    /// A free pending entry's index.
    fn free_entry(&self) -> Option<usize> {
        let k = (!self.used).trailing_zeros() as usize;
        (k < MAX_PENDING).then_some(k)
    }

    /// Puts `p` in pending entry `k` (which must exist), keeping the mask
    /// of used entries with it; what the entry held.
    fn set_entry(&mut self, k: usize, p: Option<Pending>) -> Option<Pending> {
        let bit = 1u32 << k;
        if p.is_some() {
            self.used |= bit;
        } else {
            self.used &= !bit;
        }
        core::mem::replace(&mut self.pending[k], p)
    }

    /// Maps a raw slice request's pages and submits its data as one
    /// device request.
    fn submit_data(&mut self, v: &Valid, disk: &mut Disk) -> Option<Response> {
        let Some(k) = self.free_entry() else { return Some(v.response(Status::Error)) };
        let segs = v.segments();
        let mut grefs = [0u32; blkif::MAX_VALID_SEGMENTS];
        for (g, s) in grefs.iter_mut().zip(segs) {
            *g = s.gref();
        }
        let to_disk = v.op().to_disk();
        // The slice's one extent, checked against its region (no list).
        let mapped = match &self.vdisk {
            VirtualDisk::Raw(r) => r.map(v.sector(), v.sectors()).ok(),
            VirtualDisk::Image(_) => None,
        };
        let Some(p) = mapped.filter(|p| p.nsect == v.sectors()) else {
            self.stats.failed += 1;
            return Some(v.response(Status::Error));
        };
        let lba = p.lba;
        let mem = match self.lease(&grefs[..segs.len()]) {
            Some(set) => Memory::Set(set),
            None => match MappedPages::map(self.domid, &grefs[..segs.len()], to_disk) {
                Ok(pages) => Memory::Grants(Box::new(pages)),
                Err(_) => {
                    self.stats.failed += 1;
                    return Some(v.response(Status::Error));
                }
            },
        };
        let (first, last) = (segs[0], segs[segs.len() - 1]);
        let range = first.offset()..(segs.len() - 1) * blkif::PAGE_SIZE + last.range().end;
        let op = if to_disk { vblk::Op::Write } else { vblk::Op::Read };
        let s = Submission { op, lba, mem, range, cookie: self.cookie(k) };
        match disk.submit(s) {
            Ok(descriptors) => {
                let p = Pending { descriptors, ..Pending::of(v, false) };
                self.descriptors += descriptors;
                self.set_entry(k, Some(p));
                self.in_flight += 1;
                self.stats.sectors += v.sectors();
                if to_disk {
                    self.stats.writes += 1;
                } else {
                    self.stats.reads += 1;
                }
                None
            }
            Err((e, s)) => {
                self.give_back(s.mem);
                self.stats.failed += 1;
                println!("blkback: dom{}: request {} not submitted: {e}", self.domid, v.id());
                Some(v.response(Status::Error))
            }
        }
    }

    /// Submits a device flush for `p` (a `FLUSH_DISKCACHE`, new: `entry`
    /// `None`; or a `WRITE_FUA` whose data is done, in its entry). With no
    /// room for it at the device, flushes in place and answers.
    fn submit_flush(&mut self, entry: Option<usize>, p: Pending, disk: &mut Disk) -> Option<Response> {
        let Some(k) = entry.or_else(|| self.free_entry()) else { return Some(p.response(Status::Error)) };
        let s = Submission { op: vblk::Op::Flush, lba: 0, mem: Memory::None, range: 0..0, cookie: self.cookie(k) };
        match disk.submit(s) {
            Ok(descriptors) => {
                // A `WRITE_FUA`'s data chain is done: its entry now holds
                // the flush's descriptors instead.
                match self.set_entry(k, Some(Pending { descriptors, ..p })) {
                    None => self.in_flight += 1,
                    Some(old) => self.descriptors -= old.descriptors,
                }
                self.descriptors += descriptors;
                None
            }
            Err(_) => {
                if let Some(old) = self.set_entry(k, None) {
                    self.in_flight -= 1;
                    self.descriptors -= old.descriptors;
                }
                let ok = disk.flush().is_ok();
                Some(p.response(if ok { Status::Okay } else { Status::Error }))
            }
        }
    }

    /// The persistent mappings of `grefs`, lent as one set: cached ones,
    /// or new ones while the limits allow. `None` (nothing lent) without
    /// persistent grants, past the limits, or if a grant does not map
    /// read-write: the request then maps its pages for itself.
    fn lease(&mut self, grefs: &[u32]) -> Option<Box<GrantSet>> {
        if !self.persistent {
            return None;
        }
        let mut set = self.spare_sets.pop().unwrap_or_default();
        for &g in grefs {
            let m = match self.cache.take(g) {
                Take::Got(m) => Some(m),
                Take::Lent | Take::Absent(None) => None,
                Take::Absent(Some(va)) => {
                    let m = MappedGrant::map_at(self.domid, g, va).ok();
                    if m.is_some() {
                        self.cache.mapped(g);
                    }
                    m
                }
            };
            match m.map(|m| set.push(m)) {
                Some(Ok(())) => {}
                Some(Err(m)) => {
                    self.give_back(Memory::Set(set));
                    self.keep(m);
                    return None;
                }
                None => {
                    self.give_back(Memory::Set(set));
                    return None;
                }
            }
        }
        Some(set)
    }

    /// Puts a lent persistent mapping back (one the cache does not know as
    /// lent is unmapped).
    fn keep(&mut self, m: MappedGrant) {
        if let Some(m) = self.cache.put_back(m) {
            let _ = m.unmap();
        }
    }

    /// Takes back a request's memory once the device is done with it: a
    /// lent set goes back to the cache, per-request maps are unmapped
    /// (before the answer: the front ends its grants on it). Whether the
    /// unmaps succeeded.
    fn give_back(&mut self, mem: Memory) -> bool {
        match mem {
            Memory::Grants(pages) => pages.unmap().is_ok(),
            Memory::Set(mut set) => {
                while let Some(m) = set.pop() {
                    self.keep(m);
                }
                // One more than the requests: an indirect request's
                // segment page is leased while every entry holds a set.
                if self.spare_sets.len() <= MAX_PENDING {
                    self.spare_sets.push(set);
                }
                true
            }
            _ => true,
        }
    }

    fn cookie(&self, k: usize) -> u64 {
        (u64::from(self.serial) << 32) | k as u64
    }

    /// Answers the request a completion of this backend's finished (a
    /// `WRITE_FUA`'s data first goes on to its flush).
    pub fn complete(&mut self, c: Completion, disk: &mut Disk) -> Result<(), BackError> {
        let t0 = pvguest_sdk::time::tsc();
        let r = self.complete_inner(c, disk);
        self.stats.complete_tsc += pvguest_sdk::time::tsc() - t0;
        r
    }

    fn complete_inner(&mut self, c: Completion, disk: &mut Disk) -> Result<(), BackError> {
        let k = (c.cookie & 0xffff_ffff) as usize;
        let ok = c.result.is_ok() & self.give_back(c.mem);
        let Some(p) = self.pending.get(k).copied().flatten() else { return Ok(()) };
        if ok && p.op == Op::WriteFua && !p.flushing {
            self.stats.flushes += 1;
            // The entry stays: the flush's completion answers it.
            return match self.submit_flush(Some(k), Pending { flushing: true, ..p }, disk) {
                None => Ok(()),
                Some(rsp) => self.respond(rsp),
            };
        }
        self.set_entry(k, None);
        self.in_flight -= 1;
        self.descriptors -= p.descriptors;
        if !ok {
            self.stats.failed += 1;
        }
        self.respond(p.response(if ok { Status::Okay } else { Status::Error }))
    }

    fn respond(&mut self, rsp: Response) -> Result<(), BackError> {
        // A slot is free: the request answered left one.
        self.ring.ring.try_push(rsp).map_err(|_| BackError::NoRoom)?;
        self.unpublished = true;
        Ok(())
    }

    /// Whether requests are waiting (arming the front's notification when
    /// not: `false` means an event comes with the next one).
    pub fn pending(&mut self) -> Result<bool, BackError> {
        self.ring.ring.final_check_for_requests().map_err(BackError::Ring)
    }

    /// Answers a valid request in place (the synchronous path).
    fn answer(&mut self, v: &Valid, disk: &mut Disk) -> Response {
        let v = *v;
        let status = match v.op() {
            Op::Read | Op::Write | Op::WriteFua => self.transfer(&v, disk),
            Op::Flush => {
                self.stats.flushes += 1;
                if self.vdisk.flush(&mut Dev(disk)).is_ok() {
                    Status::Okay
                } else {
                    Status::Error
                }
            }
            Op::Discard => {
                if self.vdisk.discard(v.sector(), v.sectors()).is_ok() {
                    Status::Okay
                } else {
                    Status::Error
                }
            }
            // Not advertised: validate refused it already.
            Op::WriteBarrier => Status::NotSupported,
        };
        if status == Status::Error {
            self.stats.failed += 1;
        }
        v.response(status)
    }

    /// Maps the request's pages and moves the data between them and the
    /// real disk, one device request per run of machine-contiguous pages.
    fn transfer(&mut self, v: &Valid, disk: &mut Disk) -> Status {
        let segs = v.segments();
        let mut grefs = [0u32; blkif::MAX_VALID_SEGMENTS];
        for (g, s) in grefs.iter_mut().zip(segs) {
            *g = s.gref();
        }
        let to_disk = v.op().to_disk();
        let Ok(mut pages) = MappedPages::map(self.domid, &grefs[..segs.len()], to_disk) else {
            return Status::Error;
        };
        let mut ok = true;
        let mut k = 0;
        while k < segs.len() && ok {
            // A run: segments that continue each other on the disk and in
            // machine memory (whole pages between them).
            let mut end = k;
            while end + 1 < segs.len()
                && segs[end].range().end == blkif::PAGE_SIZE
                && segs[end + 1].offset() == 0
                && pages.machine_addr(end + 1) == pages.machine_addr(end).map(|m| m + blkif::PAGE_SIZE as u64)
            {
                end += 1;
            }
            let start = k * blkif::PAGE_SIZE + segs[k].offset();
            let stop = end * blkif::PAGE_SIZE + segs[end].range().end;
            let n = ((stop - start) / SECTOR) as u64;
            ok = if to_disk {
                self.write_run(disk, &mut pages, segs[k].sector(), start, stop)
            } else {
                self.read_run(disk, &mut pages, segs[k].sector(), start, stop)
            };
            self.stats.sectors += n;
            k = end + 1;
        }
        // The device is done with the pages whatever happened: give them
        // back before answering (the front ends its grants on the answer).
        if pages.unmap().is_err() {
            ok = false;
        }
        if ok && v.op() == Op::WriteFua {
            self.stats.flushes += 1;
            ok = self.vdisk.flush(&mut Dev(disk)).is_ok();
        }
        if to_disk {
            self.stats.writes += 1;
        } else {
            self.stats.reads += 1;
        }
        if ok {
            Status::Okay
        } else {
            Status::Error
        }
    }

    /// Reads virtual sectors from `vsector` into bytes `start..stop` of
    /// `pages`: each extent the image names goes from the device straight
    /// into the pages; unwritten ones are zero-filled.
    fn read_run(&mut self, disk: &mut Disk, pages: &mut MappedPages, vsector: u64, start: usize, stop: usize) -> bool {
        let Ok(extents) = self.vdisk.plan_read(vsector, ((stop - start) / SECTOR) as u64) else { return false };
        let mut at = start;
        for e in extents {
            let end = at + e.nsect() as usize * SECTOR;
            let ok = match e {
                Extent::Phys(p) => pages.dma_buffer(at, end).is_some_and(|buf| disk.read(p.lba, buf).is_ok()),
                Extent::Zero { .. } => pages.zero(at, end),
            };
            if !ok {
                return false;
            }
            at = end;
        }
        at == stop
    }

    /// Writes bytes `start..stop` of `pages` at virtual sector `vsector`:
    /// the image's preparation first (a new block's other sectors), then
    /// the data from the pages straight to the device, then the commit
    /// that makes the image point at it (durable at the next flush).
    fn write_run(&mut self, disk: &mut Disk, pages: &mut MappedPages, vsector: u64, start: usize, stop: usize) -> bool {
        let Ok(plan) = self.vdisk.plan_write(vsector, ((stop - start) / SECTOR) as u64) else { return false };
        let mut ok = self.vdisk.prepare(&mut Dev(disk), &plan).is_ok();
        let mut at = start;
        for p in plan.data() {
            let end = at + p.nsect as usize * SECTOR;
            ok = ok && pages.dma_buffer(at, end).is_some_and(|buf| disk.write(p.lba, buf).is_ok());
            at = end;
        }
        ok &= at == stop;
        if ok {
            self.vdisk.commit_write(plan).is_ok()
        } else {
            let _ = self.vdisk.abort_write(plan);
            false
        }
    }
}
