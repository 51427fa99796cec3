//! Sparse images and copy-on-write overlays: open (validation), read and
//! write planning, commit, discard, flush, and the host-side format and
//! read helpers. The format and its invariants are in the crate docs.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::header::{get32, Header, ENTRIES_PER_SECTOR, MAX_INDEX};
use crate::{
    push_extent, BaseRef, Device, Error, Extent, Kind, PhysExtent, Region, BLOCK_BYTES, BLOCK_SECTORS, MAX_CHAIN_DEPTH,
    MAX_DISCARD_SECTORS, MAX_REQUEST_SECTORS, SECTOR_BYTES,
};

/// Map entry bit: the block reads as zeros.
const ZERO: u32 = 1 << 31;
/// Map entry bits: physical block index + 1, or 0.
const INDEX: u32 = !ZERO;

/// A preparation step of a write: it fills sectors of a newly allocated (or
/// discarded) block that the write itself does not cover. Steps touch only
/// sectors disjoint from the write's data extents, at most 7 sectors each;
/// all must complete (in any order, together with the data I/O) before
/// [`Image::commit_write`]. [`Image::prepare`] performs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prep {
    /// Write zeros to these device sectors.
    Zero(PhysExtent),
    /// Copy `nsect` device sectors from `from` to `to` (copy-up from the base).
    Copy {
        /// The first source sector (in a base's region).
        from: u64,
        /// The first destination sector (in the image's region).
        to: u64,
        /// How many sectors.
        nsect: u64,
    },
}

/// A block reserved by a plan and published by its commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Alloc {
    vblock: u64,
    /// Physical block index + 1.
    index: u32,
    /// Newly taken from the free blocks (an abort returns it).
    fresh: bool,
}

/// The translation of one write: where the caller's data goes, and what must
/// be done first. Consumed by [`Image::commit_write`] (after the data I/O and
/// the preparation completed) or [`Image::abort_write`] (after a failure).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a plan reserves blocks until it is committed or aborted"]
pub struct WritePlan {
    vlba: u64,
    nsect: u64,
    data: Vec<PhysExtent>,
    prep: Vec<Prep>,
    allocs: Vec<Alloc>,
    /// The region of the disk that made the plan.
    owner: Region,
}

impl WritePlan {
    pub(crate) fn direct(owner: Region, vlba: u64, nsect: u64, data: Vec<PhysExtent>) -> Self {
        Self { vlba, nsect, data, prep: Vec::new(), allocs: Vec::new(), owner }
    }

    /// The request's first virtual sector.
    pub fn vlba(&self) -> u64 {
        self.vlba
    }

    /// The request's length in sectors.
    pub fn nsect(&self) -> u64 {
        self.nsect
    }

    /// Where the caller's data goes, in order: the extents' lengths add up
    /// to the request.
    pub fn data(&self) -> &[PhysExtent] {
        &self.data
    }

    /// What must be done before the commit (see [`Prep`]).
    pub fn prep(&self) -> &[Prep] {
        &self.prep
    }

    pub(crate) fn owner(&self) -> Region {
        self.owner
    }
}

/// What an overlay reads unallocated blocks from.
#[derive(Debug)]
enum Base {
    Raw(Region),
    Image(Box<Image>),
}

impl Base {
    fn sectors(&self) -> u64 {
        match self {
            Base::Raw(r) => r.sectors,
            Base::Image(i) => i.virtual_sectors(),
        }
    }

    /// Plans `nsect` base sectors from `vlba`; past the base's end reads zeros.
    fn plan_into(&self, vlba: u64, nsect: u64, out: &mut Vec<Extent>) -> Result<(), Error> {
        let inside = self.sectors().saturating_sub(vlba).min(nsect);
        if inside > 0 {
            match self {
                Base::Raw(r) => push_extent(out, Some(r), Extent::Phys(r.extent(vlba, inside)?)),
                Base::Image(i) => i.plan_range(vlba, inside, out)?,
            }
        }
        if nsect > inside {
            push_extent(out, None, Extent::Zero { nsect: nsect - inside });
        }
        Ok(())
    }
}

/// An open sparse image or overlay.
#[derive(Debug)]
pub struct Image {
    region: Region,
    header: Header,
    /// Committed entries, one per virtual block (invariant 3).
    map: Vec<u32>,
    /// Bit `i` set: physical block index `i + 1` is named by the map or by
    /// a pending allocation.
    used: Vec<u64>,
    /// Virtual block → index of allocations planned but not committed.
    pending: BTreeMap<u64, u32>,
    /// Map sectors changed since the last flush.
    dirty: BTreeSet<u64>,
    /// Where the allocator's scan starts (word of `used`).
    hint: usize,
    base: Option<Base>,
    writable: bool,
}

/// Opens the image in `region` for reading and writing, validating it as
/// hostile input (the crate docs list the checks in order).
pub fn open<D: Device>(dev: &mut D, region: Region) -> Result<Image, Error> {
    Image::open_chain(dev, region, true, &mut Vec::new())
}

/// Opens the image in `region` read-only (as a base, or for inspection):
/// it never writes the device.
pub fn open_read_only<D: Device>(dev: &mut D, region: Region) -> Result<Image, Error> {
    Image::open_chain(dev, region, false, &mut Vec::new())
}

/// Formats a sparse image of `virtual_sectors` in `region` (host tool).
pub fn format_sparse<D: Device>(dev: &mut D, region: Region, virtual_sectors: u64) -> Result<(), Error> {
    format(dev, region, Kind::Sparse, virtual_sectors, None)
}

/// Formats an overlay of `virtual_sectors` on `base` in `region` (host
/// tool). The base is validated as `open` would (an image base is opened).
pub fn format_overlay<D: Device>(
    dev: &mut D,
    region: Region,
    base: BaseRef,
    virtual_sectors: u64,
) -> Result<(), Error> {
    format(dev, region, Kind::Overlay, virtual_sectors, Some(base))
}

/// Reads `buf.len() / 512` virtual sectors from `vlba` of the image in
/// `region`, opened read-only (host-side evidence checks).
pub fn read_virtual<D: Device>(dev: &mut D, region: Region, vlba: u64, buf: &mut [u8]) -> Result<(), Error> {
    let image = open_read_only(dev, region)?;
    image.read_blocking(dev, vlba, buf)
}

fn format<D: Device>(
    dev: &mut D,
    region: Region,
    kind: Kind,
    virtual_sectors: u64,
    base: Option<BaseRef>,
) -> Result<(), Error> {
    if !region.on_device(dev.sectors()) {
        return Err(Error::RegionOutsideDevice);
    }
    let header = Header::layout(kind, region.sectors, virtual_sectors, base)?;
    let mut chain = Vec::from([region]);
    if let Some(base) = base {
        open_base(dev, base, &mut chain)?;
    }
    // Zeroed map, flush, then the header (invariant 1): a crash mid-format
    // leaves no valid header rather than a header over a stale map.
    let zeros = [0u8; BLOCK_BYTES];
    let mut s = 0;
    while s < header.map_sectors {
        let n = (header.map_sectors - s).min(BLOCK_SECTORS);
        let e = region.extent(header.map_lba + s, n)?;
        dev.write(e.lba, &zeros[..n as usize * SECTOR_BYTES])?;
        s += n;
    }
    dev.flush()?;
    dev.write(region.extent(0, 1)?.lba, &header.encode())?;
    dev.flush()?;
    Ok(())
}

/// Checks `base` may lie below the images in `chain` (step 5).
fn check_base(device_sectors: u64, base: BaseRef, chain: &[Region]) -> Result<(), Error> {
    let r = base.region();
    if !r.on_device(device_sectors) {
        return Err(Error::BaseOutsideDevice);
    }
    if chain.iter().any(|above| above.overlaps(&r)) {
        return Err(Error::BaseOverlaps);
    }
    if chain.len() >= MAX_CHAIN_DEPTH {
        return Err(Error::ChainTooDeep);
    }
    Ok(())
}

/// Validates and opens `base` below the images in `chain` (steps 5 and 7).
fn open_base<D: Device>(dev: &mut D, base: BaseRef, chain: &mut Vec<Region>) -> Result<Base, Error> {
    check_base(dev.sectors(), base, chain)?;
    load_base(dev, base, chain)
}

/// Opens a base `check_base` accepted (step 7).
fn load_base<D: Device>(dev: &mut D, base: BaseRef, chain: &mut Vec<Region>) -> Result<Base, Error> {
    match base {
        BaseRef::Raw(r) => Ok(Base::Raw(r)),
        BaseRef::Image(r) => Ok(Base::Image(Box::new(Image::open_chain(dev, r, false, chain)?))),
    }
}

impl Image {
    fn open_chain<D: Device>(
        dev: &mut D,
        region: Region,
        writable: bool,
        chain: &mut Vec<Region>,
    ) -> Result<Self, Error> {
        // 1. The region.
        if !region.on_device(dev.sectors()) {
            return Err(Error::RegionOutsideDevice);
        }
        // 2–4. The header.
        let mut sector = [0u8; SECTOR_BYTES];
        dev.read(region.extent(0, 1)?.lba, &mut sector)?;
        let header = Header::decode(&sector, region)?;
        // 5. The base's fields (its contents come last).
        chain.push(region);
        if let Some(b) = header.base {
            check_base(dev.sectors(), b, chain)?;
        }
        // 6. The map.
        let vblocks = header.vblocks() as usize;
        let mut map = Vec::new();
        map.try_reserve_exact(vblocks).map_err(|_| Error::OutOfMemory)?;
        let mut used = Vec::new();
        let words = (header.data_blocks as usize).div_ceil(64);
        used.try_reserve_exact(words).map_err(|_| Error::OutOfMemory)?;
        used.resize(words, 0u64);
        let mut buf = [0u8; BLOCK_BYTES];
        let mut s = 0;
        while s < header.map_sectors {
            let n = (header.map_sectors - s).min(BLOCK_SECTORS);
            let e = region.extent(header.map_lba + s, n)?;
            let bytes = &mut buf[..n as usize * SECTOR_BYTES];
            dev.read(e.lba, bytes)?;
            for (i, w) in bytes.chunks_exact(4).enumerate() {
                let position = s * ENTRIES_PER_SECTOR + i as u64;
                let entry = get32(w, 0);
                if position >= vblocks as u64 {
                    if entry != 0 {
                        return Err(Error::BadMapPadding { position });
                    }
                    continue;
                }
                let index = entry & INDEX;
                if u64::from(index) > header.data_blocks {
                    return Err(Error::BadMapEntry { vblock: position, entry });
                }
                if index != 0 {
                    let bit = index as usize - 1;
                    if used[bit / 64] & (1 << (bit % 64)) != 0 {
                        return Err(Error::DuplicateBlock { vblock: position, index });
                    }
                    used[bit / 64] |= 1 << (bit % 64);
                }
                map.push(entry);
            }
            s += n;
        }
        // 7. The base.
        let base = match header.base {
            None => None,
            Some(b) => Some(load_base(dev, b, chain)?),
        };
        chain.pop();
        Ok(Self {
            region,
            header,
            map,
            used,
            pending: BTreeMap::new(),
            dirty: BTreeSet::new(),
            hint: 0,
            base,
            writable,
        })
    }

    /// The virtual disk's size in sectors.
    pub fn virtual_sectors(&self) -> u64 {
        self.header.virtual_sectors
    }

    /// The image's region on the device.
    pub fn region(&self) -> Region {
        self.region
    }

    /// Sparse or overlay.
    pub fn kind(&self) -> Kind {
        self.header.kind
    }

    /// What the overlay's base is (None for a sparse image).
    pub fn base(&self) -> Option<BaseRef> {
        self.header.base
    }

    /// Physical blocks in the data area.
    pub fn data_blocks(&self) -> u64 {
        self.header.data_blocks
    }

    /// Physical blocks named by committed entries or pending plans.
    pub fn allocated_blocks(&self) -> u64 {
        self.used.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether metadata awaits a flush.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    fn check_request(&self, vlba: u64, nsect: u64, max: u64) -> Result<(), Error> {
        if nsect > max {
            return Err(Error::TooLong { nsect });
        }
        match vlba.checked_add(nsect) {
            Some(end) if end <= self.header.virtual_sectors => Ok(()),
            _ => Err(Error::OutOfRange { vlba, nsect }),
        }
    }

    /// The device sectors `s..e` of physical block `index` (1-based).
    fn block_extent(&self, index: u32, s: u64, e: u64) -> Result<PhysExtent, Error> {
        let rel = self.header.data_lba + (u64::from(index) - 1) * BLOCK_SECTORS + s;
        self.region.extent(rel, e - s)
    }

    /// Translates a read of `nsect` (at most [`MAX_REQUEST_SECTORS`]) virtual
    /// sectors from `vlba` into pieces, in order. Committed writes are
    /// visible, flushed or not; pending ones are not.
    pub fn plan_read(&self, vlba: u64, nsect: u64) -> Result<Vec<Extent>, Error> {
        self.check_request(vlba, nsect, MAX_REQUEST_SECTORS)?;
        let mut out = Vec::new();
        self.plan_range(vlba, nsect, &mut out)?;
        Ok(out)
    }

    /// Plans a range already checked against the virtual size.
    fn plan_range(&self, vlba: u64, nsect: u64, out: &mut Vec<Extent>) -> Result<(), Error> {
        let end = vlba + nsect;
        let mut v = vlba;
        while v < end {
            let b = v / BLOCK_SECTORS;
            let s = v % BLOCK_SECTORS;
            let e = BLOCK_SECTORS.min(s + (end - v));
            let entry = self.map[b as usize];
            if entry & ZERO != 0 {
                push_extent(out, None, Extent::Zero { nsect: e - s });
            } else if entry & INDEX != 0 {
                push_extent(out, Some(&self.region), Extent::Phys(self.block_extent(entry & INDEX, s, e)?));
            } else if let Some(base) = &self.base {
                base.plan_into(b * BLOCK_SECTORS + s, e - s, out)?;
            } else {
                push_extent(out, None, Extent::Zero { nsect: e - s });
            }
            v += e - s;
        }
        Ok(())
    }

    /// Translates a write of `nsect` (at most [`MAX_REQUEST_SECTORS`]) virtual
    /// sectors at `vlba`: reserves a physical block for each block that has
    /// none (or was discarded), with the preparation of its uncovered sectors.
    /// Fails, reserving nothing, if a block has an allocation in flight
    /// ([`Error::Busy`]) or the data area is full.
    pub fn plan_write(&mut self, vlba: u64, nsect: u64) -> Result<WritePlan, Error> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        self.check_request(vlba, nsect, MAX_REQUEST_SECTORS)?;
        let end = vlba + nsect;
        if nsect > 0 {
            let last = (end - 1) / BLOCK_SECTORS;
            if let Some((&vblock, _)) = self.pending.range(vlba / BLOCK_SECTORS..=last).next() {
                return Err(Error::Busy { vblock });
            }
        }
        let mut plan = WritePlan::direct(self.region, vlba, nsect, Vec::new());
        match self.plan_write_blocks(&mut plan, end) {
            Ok(()) => Ok(plan),
            Err(e) => {
                self.release(&plan.allocs);
                Err(e)
            }
        }
    }

    fn plan_write_blocks(&mut self, plan: &mut WritePlan, end: u64) -> Result<(), Error> {
        let mut v = plan.vlba;
        while v < end {
            let b = v / BLOCK_SECTORS;
            let s = v % BLOCK_SECTORS;
            let e = BLOCK_SECTORS.min(s + (end - v));
            let entry = self.map[b as usize];
            let index = entry & INDEX;
            let index = if index != 0 && entry & ZERO == 0 {
                index
            } else {
                let fresh = index == 0;
                let index = if fresh { self.allocate()? } else { index };
                plan.allocs.push(Alloc { vblock: b, index, fresh });
                self.pending.insert(b, index);
                // Invariant 4: the rest of the block, from the base or zeros.
                let copy_up = entry & ZERO == 0 && self.base.is_some();
                for (a, c) in [(0, s), (e, BLOCK_SECTORS)] {
                    if a == c {
                        continue;
                    }
                    let dst = self.block_extent(index, a, c)?;
                    match (&self.base, copy_up) {
                        (Some(base), true) => {
                            let mut src = Vec::new();
                            base.plan_into(b * BLOCK_SECTORS + a, c - a, &mut src)?;
                            let mut to = dst.lba;
                            for piece in src {
                                plan.prep.push(match piece {
                                    Extent::Phys(p) => Prep::Copy { from: p.lba, to, nsect: p.nsect },
                                    Extent::Zero { nsect } => Prep::Zero(PhysExtent { lba: to, nsect }),
                                });
                                to += piece.nsect();
                            }
                        }
                        _ => plan.prep.push(Prep::Zero(dst)),
                    }
                }
                index
            };
            let d = self.block_extent(index, s, e)?;
            match plan.data.last_mut() {
                Some(last) if last.lba + last.nsect == d.lba => last.nsect += d.nsect,
                _ => plan.data.push(d),
            }
            v += e - s;
        }
        Ok(())
    }

    /// Takes a free physical block (first free from the hint).
    fn allocate(&mut self) -> Result<u32, Error> {
        let words = self.used.len();
        for k in 0..words {
            let w = (self.hint + k) % words;
            let free = !self.used[w];
            if free != 0 {
                let bit = w * 64 + free.trailing_zeros() as usize;
                if bit as u64 >= self.header.data_blocks {
                    continue;
                }
                self.used[w] |= 1 << (bit % 64);
                self.hint = w;
                // bit < data_blocks <= MAX_INDEX, so the index fits.
                return Ok(bit as u32 + 1);
            }
        }
        Err(Error::NoSpace)
    }

    fn release(&mut self, allocs: &[Alloc]) {
        for a in allocs {
            self.pending.remove(&a.vblock);
            if a.fresh {
                let bit = a.index as usize - 1;
                self.used[bit / 64] &= !(1 << (bit % 64));
            }
        }
    }

    fn check_owner(&self, plan: &WritePlan) -> Result<(), Error> {
        let ours =
            plan.owner == self.region && plan.allocs.iter().all(|a| self.pending.get(&a.vblock) == Some(&a.index));
        if ours {
            Ok(())
        } else {
            Err(Error::ForeignPlan)
        }
    }

    /// Publishes a write whose data I/O and preparation have completed: its
    /// new blocks become visible to reads and their map sectors dirty
    /// (durable at the next [`Image::flush`]).
    pub fn commit_write(&mut self, plan: WritePlan) -> Result<(), Error> {
        self.check_owner(&plan)?;
        for a in &plan.allocs {
            self.pending.remove(&a.vblock);
            self.map[a.vblock as usize] = a.index;
            self.dirty.insert(a.vblock / ENTRIES_PER_SECTOR);
        }
        Ok(())
    }

    /// Gives back a write that failed or was cancelled: its reserved blocks
    /// are free again, nothing changes for reads.
    pub fn abort_write(&mut self, plan: WritePlan) -> Result<(), Error> {
        self.check_owner(&plan)?;
        self.release(&plan.allocs);
        Ok(())
    }

    /// Performs a plan's preparation steps through `dev` with a 4 KiB bounce
    /// buffer (synchronously; the caller may instead issue them itself).
    pub fn prepare<D: Device>(&self, dev: &mut D, plan: &WritePlan) -> Result<(), Error> {
        let mut bounce = [0u8; BLOCK_BYTES];
        for step in &plan.prep {
            match *step {
                Prep::Zero(e) => {
                    let bytes = prep_bytes(e.nsect)?;
                    bounce[..bytes].fill(0);
                    dev.write(e.lba, &bounce[..bytes])?;
                }
                Prep::Copy { from, to, nsect } => {
                    let bytes = prep_bytes(nsect)?;
                    dev.read(from, &mut bounce[..bytes])?;
                    dev.write(to, &bounce[..bytes])?;
                }
            }
        }
        Ok(())
    }

    /// Discards `nsect` (at most [`MAX_DISCARD_SECTORS`]) sectors from
    /// `vlba`: every whole block in the range reads as zeros afterwards;
    /// partial blocks are unchanged (advisory; see the crate docs).
    pub fn discard(&mut self, vlba: u64, nsect: u64) -> Result<(), Error> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        self.check_request(vlba, nsect, MAX_DISCARD_SECTORS)?;
        let first = vlba.div_ceil(BLOCK_SECTORS);
        let end = (vlba + nsect) / BLOCK_SECTORS;
        if first >= end {
            return Ok(());
        }
        if let Some((&vblock, _)) = self.pending.range(first..end).next() {
            return Err(Error::Busy { vblock });
        }
        for b in first..end {
            let entry = self.map[b as usize];
            // A sparse block without data already reads as zeros.
            let new = if entry & INDEX == 0 && self.base.is_none() { entry } else { entry | ZERO };
            if new != entry {
                self.map[b as usize] = new;
                self.dirty.insert(b / ENTRIES_PER_SECTOR);
            }
        }
        Ok(())
    }

    /// Makes every committed write and discard durable (FLUSH, and after a
    /// write-through write): device flush (data) → dirty map sectors →
    /// device flush (invariant 2). On failure the map stays dirty and the
    /// next flush writes it again.
    pub fn flush<D: Device>(&mut self, dev: &mut D) -> Result<(), Error> {
        dev.flush()?;
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut sector = [0u8; SECTOR_BYTES];
        for &s in &self.dirty {
            let first = (s * ENTRIES_PER_SECTOR) as usize;
            let entries = self.map.get(first..).unwrap_or(&[]);
            sector.fill(0);
            for (w, entry) in sector.chunks_exact_mut(4).zip(entries) {
                w.copy_from_slice(&entry.to_le_bytes());
            }
            dev.write(self.region.extent(self.header.map_lba + s, 1)?.lba, &sector)?;
        }
        dev.flush()?;
        self.dirty.clear();
        Ok(())
    }

    /// Reads `buf.len() / 512` virtual sectors from `vlba` through `dev`,
    /// any length (host tools, tests, simple guests).
    pub fn read_blocking<D: Device>(&self, dev: &mut D, vlba: u64, buf: &mut [u8]) -> Result<(), Error> {
        if !buf.len().is_multiple_of(SECTOR_BYTES) {
            return Err(Error::BadBuffer);
        }
        let total = (buf.len() / SECTOR_BYTES) as u64;
        self.check_request(vlba, total, u64::MAX)?;
        for (i, chunk) in buf.chunks_mut(MAX_REQUEST_SECTORS as usize * SECTOR_BYTES).enumerate() {
            let v = vlba + i as u64 * MAX_REQUEST_SECTORS;
            let mut at = 0;
            for piece in self.plan_read(v, (chunk.len() / SECTOR_BYTES) as u64)? {
                let bytes = bytes_of(piece.nsect())?;
                match piece {
                    Extent::Phys(p) => dev.read(p.lba, &mut chunk[at..at + bytes])?,
                    Extent::Zero { .. } => chunk[at..at + bytes].fill(0),
                }
                at += bytes;
            }
        }
        Ok(())
    }

    /// Writes `data` (whole sectors, any length) at `vlba` through `dev`:
    /// plan, prepare, data, commit, per request-sized chunk. Not
    /// write-through: durable after [`Image::flush`].
    pub fn write_blocking<D: Device>(&mut self, dev: &mut D, vlba: u64, data: &[u8]) -> Result<(), Error> {
        if !data.len().is_multiple_of(SECTOR_BYTES) {
            return Err(Error::BadBuffer);
        }
        let total = (data.len() / SECTOR_BYTES) as u64;
        self.check_request(vlba, total, u64::MAX)?;
        for (i, chunk) in data.chunks(MAX_REQUEST_SECTORS as usize * SECTOR_BYTES).enumerate() {
            let v = vlba + i as u64 * MAX_REQUEST_SECTORS;
            let plan = self.plan_write(v, (chunk.len() / SECTOR_BYTES) as u64)?;
            match self.execute(dev, &plan, chunk) {
                Ok(()) => self.commit_write(plan)?,
                Err(e) => {
                    self.abort_write(plan)?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn execute<D: Device>(&self, dev: &mut D, plan: &WritePlan, data: &[u8]) -> Result<(), Error> {
        self.prepare(dev, plan)?;
        let mut at = 0;
        for e in plan.data() {
            let bytes = bytes_of(e.nsect)?;
            dev.write(e.lba, &data[at..at + bytes])?;
            at += bytes;
        }
        Ok(())
    }

    /// Every region of the chain below this image (for tests and tools).
    pub fn base_regions(&self) -> Vec<Region> {
        let mut out = Vec::new();
        let mut base = self.base.as_ref();
        while let Some(b) = base {
            match b {
                Base::Raw(r) => {
                    out.push(*r);
                    base = None;
                }
                Base::Image(i) => {
                    out.push(i.region);
                    base = i.base.as_ref();
                }
            }
        }
        out
    }
}

/// Bytes of a preparation step: within one block (plans never make more).
fn prep_bytes(nsect: u64) -> Result<usize, Error> {
    if nsect > BLOCK_SECTORS {
        return Err(Error::TooLong { nsect });
    }
    Ok(nsect as usize * SECTOR_BYTES)
}

/// Bytes of `nsect` sectors of one request at most (plans never make more).
fn bytes_of(nsect: u64) -> Result<usize, Error> {
    if nsect > MAX_REQUEST_SECTORS {
        return Err(Error::TooLong { nsect });
    }
    Ok(nsect as usize * SECTOR_BYTES)
}

const _: () = assert!(MAX_INDEX == INDEX as u64);
