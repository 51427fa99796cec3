//! Virtual-disk images for dom0's block backend: raw slices, sparse images
//! and copy-on-write overlays on a read-only base.
//!
//! dom0 owns the real (virtio-blk) disk and serves each domU one virtual
//! disk. The backend DMAs the real device straight into the domU's granted
//! pages, so this crate never moves guest data on the fast path: it
//! *translates*. A read becomes a list of [`Extent`]s (read these physical
//! sectors into the next part of the buffer, or zero-fill the next part); a
//! write becomes a [`WritePlan`]: the physical extents the caller's data goes
//! to, plus small preparation steps ([`Prep`]: zero-fill or copy-up of the
//! part of a newly allocated block that the write does not cover). Only the
//! metadata path (open, preparation through a bounce buffer, flush) does I/O
//! itself, through the small synchronous [`Device`] trait.
//!
//! # The backend's protocol
//!
//! One WRITE, one FLUSH and one READ as blkback serves them (the device here
//! is RAM; in dom0 the data extents are DMA'd straight from and into the
//! domU's granted pages):
//!
//! ```
//! use disk_images::{format_sparse, open, Device, Extent, IoError, Region};
//! # struct Ram(Vec<u8>);
//! # impl Device for Ram {
//! #     fn sectors(&self) -> u64 { (self.0.len() / 512) as u64 }
//! #     fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
//! #         let at = lba as usize * 512;
//! #         buf.copy_from_slice(self.0.get(at..at + buf.len()).ok_or(IoError::OutOfRange)?);
//! #         Ok(())
//! #     }
//! #     fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
//! #         let at = lba as usize * 512;
//! #         self.0.get_mut(at..at + buf.len()).ok_or(IoError::OutOfRange)?.copy_from_slice(buf);
//! #         Ok(())
//! #     }
//! #     fn flush(&mut self) -> Result<(), IoError> { Ok(()) }
//! # }
//! let mut dev = Ram(vec![0xAA; 512 * 256]);
//! let region = Region::new(64, 8 + 16 * 8);
//! format_sparse(&mut dev, region, 128)?; // the host tool (xtask)
//! let mut img = open(&mut dev, region)?; // dom0, when the domU connects
//!
//! // WRITE of 2 sectors at virtual sector 19: block 2 (sectors 16..24) is new.
//! let plan = img.plan_write(19, 2)?;
//! assert_eq!(plan.prep().len(), 2); // zero-fill 16..19 and 21..24 first
//! img.prepare(&mut dev, &plan)?;
//! for e in plan.data() {
//!     dev.write(e.lba, &[7; 1024])?; // the data I/O (DMA from the grant)
//! }
//! img.commit_write(plan)?; // visible to reads from now on
//! img.flush(&mut dev)?; // FLUSH (or write-through): durable from now on
//!
//! // READ of 8 sectors at 16.
//! let mut got = Vec::new();
//! for e in img.plan_read(16, 8)? {
//!     match e {
//!         Extent::Phys(p) => {
//!             let mut buf = vec![0; p.nsect as usize * 512];
//!             dev.read(p.lba, &mut buf)?; // the data I/O (DMA into the grant)
//!             got.extend(buf);
//!         }
//!         Extent::Zero { nsect } => got.extend(vec![0; nsect as usize * 512]),
//!     }
//! }
//! assert!(got[..3 * 512].iter().all(|&b| b == 0));
//! assert!(got[3 * 512..5 * 512].iter().all(|&b| b == 7));
//! assert!(got[5 * 512..].iter().all(|&b| b == 0));
//! # Ok::<(), disk_images::Error>(())
//! ```
//!
//! # Kinds of virtual disk
//!
//! - **Raw slice** ([`RawSlice`]): `region.lba + N` is virtual sector `N`;
//!   no metadata.
//! - **Sparse image** ([`Kind::Sparse`]): lives in a region of the real disk;
//!   a 4 KiB block ([`BLOCK_SECTORS`] = 8 sectors, the page size: one blkif
//!   segment at most, one allocation per page the guest writes) is allocated
//!   on its first write; unwritten blocks read as zeros.
//! - **Copy-on-write overlay** ([`Kind::Overlay`]): like a sparse image, but
//!   an unallocated block reads from a read-only base ([`BaseRef`]: a raw
//!   slice or another image's region, opened read-only). Several overlays
//!   may share one base; none ever writes it.
//!
//! # On-disk layout of an image (sparse and overlay)
//!
//! All integers little-endian. Sector numbers in the header are *relative to
//! the image's region*, except the base's, which are absolute on the device.
//!
//! ```text
//! region sector 0           header (one 512-byte sector, below)
//! region sectors 1..1+M     allocation map: M = ceil(vblocks * 4 / 512)
//! region sectors D..        data area: data_blocks blocks of 8 sectors,
//!                           D = round_up(1 + M, 8), data_blocks =
//!                           min((region_sectors - D) / 8, 2^31 - 1)
//! ```
//!
//! Header (sector 0 of the region):
//!
//! | offset | size | field                                            |
//! |-------:|-----:|--------------------------------------------------|
//! |      0 |    8 | magic `RFIMAGE\x1a` ([`MAGIC`])                  |
//! |      8 |    4 | version, 1 ([`VERSION`])                         |
//! |     12 |    4 | kind: 1 sparse, 2 overlay                        |
//! |     16 |    8 | virtual_sectors (> 0)                            |
//! |     24 |    8 | region_sectors (must equal the region opened)   |
//! |     32 |    4 | block_sectors, 8                                 |
//! |     36 |    4 | reserved, 0                                      |
//! |     40 |    8 | map_lba, 1                                       |
//! |     48 |    8 | map_sectors, M                                   |
//! |     56 |    8 | data_lba, D                                      |
//! |     64 |    8 | data_blocks                                      |
//! |     72 |    4 | base kind: 0 none (sparse), 1 raw slice, 2 image |
//! |     76 |    4 | reserved, 0                                      |
//! |     80 |    8 | base lba (absolute; 0 without a base)            |
//! |     88 |    8 | base sectors (0 without a base)                  |
//! |     96 |  408 | reserved, 0                                      |
//! |    504 |    8 | checksum: FNV-1a 64 of bytes 0..504              |
//!
//! The geometry fields (map_lba, map_sectors, data_lba, data_blocks) are
//! redundant: they are a function of region_sectors and virtual_sectors, and
//! [`open`] recomputes them and requires equality, so a hostile header can
//! only name a layout this crate would have chosen itself.
//!
//! Allocation map: one `u32` per virtual block `b` at byte `4 * b` of the
//! map (128 per sector; entries past the last virtual block are 0):
//!
//! - bits 0..31, `index`: 0 = no physical block, else physical block
//!   `index - 1` of the data area, at region sector `D + 8 * (index - 1)`;
//! - bit 31, `ZERO`: the block reads as zeros (it was discarded).
//!
//! | index | ZERO | reads as                              | written how               |
//! |------:|-----:|---------------------------------------|---------------------------|
//! |     0 |    0 | zeros (sparse), the base (overlay)    | allocate; zero-fill/copy-up the rest |
//! |     0 |    1 | zeros                                 | allocate; zero-fill the rest |
//! |     p |    0 | physical block p                      | in place, no preparation  |
//! |     p |    1 | zeros                                 | in place; zero-fill the rest |
//!
//! The map has no checksum: it is updated sector by sector, and a checksum
//! over it could not survive a crash between two sector writes. Instead
//! every entry is validated as hostile input (below). A 512-byte sector
//! write is assumed atomic (not torn), the usual assumption of block
//! devices; nothing else is assumed about write order before a flush.
//!
//! # Invariants: who writes which metadata when
//!
//! 1. **The header is written once**, by [`format_sparse`] /
//!    [`format_overlay`], after the zeroed map and a device flush, and
//!    followed by a flush. It is never rewritten: nothing in it changes at
//!    run time (the allocation frontier is derived from the map at open).
//! 2. **Map sectors are written only by [`Image::flush`]**, which does:
//!    device flush (every committed write's data and preparation is now
//!    durable) → write each dirty map sector → device flush. So a durable map
//!    entry only ever points at durable data: *data before the metadata that
//!    points at it*.
//! 3. **The in-memory map holds committed entries only.** [`Image::plan_write`]
//!    reserves new physical blocks (allocation bitmap + a pending table) but
//!    changes no entry; [`Image::commit_write`], called after the data I/O
//!    *and* the preparation completed, sets the entries and marks their map
//!    sectors dirty. So a flush that runs while a write is in flight never
//!    publishes a block whose content is not on the device yet, and reads
//!    (which use the in-memory map) see a newly allocated block from the
//!    moment it is committed, before any flush. A block with an allocation
//!    in flight cannot be planned again until it is committed or aborted
//!    ([`Error::Busy`]): the backend queues that request.
//! 4. **Every block is whole before it is published**: a new (or discarded)
//!    block's sectors that the write does not cover are zero-filled or
//!    copied up from the base in the same plan, so a reused physical block
//!    never shows a previous owner's bytes.
//! 5. **A physical block never changes owner.** Committed blocks are never
//!    deallocated (discard sets `ZERO`, keeps the block). Blocks that no
//!    durable entry names (aborted plans, allocations lost in a crash) are
//!    free: open rebuilds the allocation bitmap from the map alone.
//! 6. **Every physical extent is made in one place**, [`Region::extent`],
//!    which checks it lies inside its region (the image's, or a base's);
//!    [`open`] checks each region lies on the device and that no base
//!    region of the chain overlaps the writable image's region, so the base
//!    is never written *by this image*. That no other disk serves a base
//!    region writable is the toolstack's rule (this crate sees one disk at a
//!    time): [`Image::base_regions`] lists what a disk reads, to check it.
//!
//! The whole map is held in memory (4 bytes per 4 KiB virtual block: 1 MiB
//! per 1 GiB of virtual disk), reserved fallibly at open.
//!
//! Consequence (tested by `crash_*` with a device whose write cache loses any
//! subset of unflushed writes, in any order): after a crash the image opens;
//! every write acknowledged by a completed flush reads back; a sector written
//! since the last completed flush reads as one of the values it held since
//! then (old or new), never another block's bytes.
//!
//! # What `open` validates, in order
//!
//! 1. the region lies on the device and holds the header sector;
//! 2. magic, then version, then checksum;
//! 3. kind, block size, reserved fields (all reserved bytes are zero);
//! 4. region_sectors equals the region given; virtual_sectors in range;
//!    geometry equals the recomputed layout (which fits in the region);
//! 5. base fields: none for sparse; for an overlay a non-empty base region
//!    on the device that overlaps neither this image nor any image above it
//!    in the chain; chain depth at most [`MAX_CHAIN_DEPTH`];
//! 6. the map: every entry's index at most data_blocks, no physical block
//!    named twice, padding entries zero (memory for the map is reserved
//!    fallibly: [`Error::OutOfMemory`], never an abort);
//! 7. for an image base, the base itself, recursively, read-only.
//!
//! Work: open is linear in the map size; every other call is bounded by the
//! request ([`MAX_REQUEST_SECTORS`], [`MAX_DISCARD_SECTORS`]), except the
//! allocator's bitmap scan (linear in data_blocks / 64 at worst) and flush
//! (linear in the dirty map sectors, at most the map).
//!
//! # Discard
//!
//! [`Image::discard`] is advisory: every *whole* block in the range reads as
//! zeros afterwards (sets `ZERO`); partial blocks are left unchanged. No
//! space is reclaimed (invariant 5); a later write reuses the block in place.
//! Like a write, a discard is durable after the next flush.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod disk;
mod header;
mod image;
#[cfg(test)]
mod tests;

pub use disk::{RawSlice, VirtualDisk};
pub use header::{Kind, MAGIC, VERSION};
pub use image::{format_overlay, format_sparse, open, open_read_only, read_virtual, Image, Prep, WritePlan};

/// Bytes in a sector.
pub const SECTOR_BYTES: usize = 512;
/// Sectors in an allocation block (4 KiB, the page size).
pub const BLOCK_SECTORS: u64 = 8;
/// Bytes in an allocation block.
pub const BLOCK_BYTES: usize = 4096;
/// The longest read or write request: an indirect blkif request's 32
/// segments × 8 sectors.
pub const MAX_REQUEST_SECTORS: u64 = 256;
/// The longest discard one call accepts (1 MiB); the backend splits longer ones.
pub const MAX_DISCARD_SECTORS: u64 = 2048;
/// The most images in an overlay chain (the top image included).
pub const MAX_CHAIN_DEPTH: usize = 8;

/// A run of sectors on the real device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// The first sector (absolute on the device).
    pub lba: u64,
    /// How many sectors.
    pub sectors: u64,
}

impl Region {
    /// A region of `sectors` sectors from `lba`.
    pub const fn new(lba: u64, sectors: u64) -> Self {
        Self { lba, sectors }
    }

    /// Whether the region is non-empty and lies within a device of
    /// `device_sectors` sectors.
    pub fn on_device(&self, device_sectors: u64) -> bool {
        self.sectors > 0 && self.lba.checked_add(self.sectors).is_some_and(|end| end <= device_sectors)
    }

    /// Whether the two regions share a sector.
    pub fn overlaps(&self, other: &Region) -> bool {
        let end = |r: &Region| r.lba.saturating_add(r.sectors);
        self.sectors > 0 && other.sectors > 0 && self.lba < end(other) && other.lba < end(self)
    }

    /// Whether `e` lies inside the region.
    pub fn contains(&self, e: &PhysExtent) -> bool {
        e.lba >= self.lba && e.lba.checked_add(e.nsect).is_some_and(|end| end <= self.lba.saturating_add(self.sectors))
    }

    /// The extent of `nsect` sectors at `rel` sectors into the region.
    ///
    /// This is the one place a physical extent is made (invariant 6): it
    /// fails with [`Error::ExtentOutsideRegion`] unless the whole extent lies
    /// inside the region, so no translation bug or hostile map can reach
    /// outside it.
    pub fn extent(&self, rel: u64, nsect: u64) -> Result<PhysExtent, Error> {
        match rel.checked_add(nsect) {
            Some(end) if end <= self.sectors => match self.lba.checked_add(rel) {
                Some(lba) => Ok(PhysExtent { lba, nsect }),
                None => Err(Error::ExtentOutsideRegion),
            },
            _ => Err(Error::ExtentOutsideRegion),
        }
    }
}

/// Sectors on the real device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysExtent {
    /// The first sector (absolute on the device).
    pub lba: u64,
    /// How many sectors.
    pub nsect: u64,
}

/// One piece of a read, in order: the pieces' lengths add up to the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Read these device sectors into the next part of the buffer (the
    /// image's own data, a raw slice, or a base's data).
    Phys(PhysExtent),
    /// Zero-fill the next `nsect` sectors of the buffer.
    Zero {
        /// How many sectors.
        nsect: u64,
    },
}

impl Extent {
    /// How many sectors of the request this piece covers.
    pub fn nsect(&self) -> u64 {
        match self {
            Extent::Phys(p) => p.nsect,
            Extent::Zero { nsect } => *nsect,
        }
    }
}

/// What a base of an overlay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseRef {
    /// A raw slice: base virtual sector N is `region.lba + N`.
    Raw(Region),
    /// An image (sparse or overlay) stored in this region, opened read-only.
    Image(Region),
}

impl BaseRef {
    /// The base's region on the device.
    pub fn region(&self) -> Region {
        match self {
            BaseRef::Raw(r) | BaseRef::Image(r) => *r,
        }
    }
}

/// A device error, reported by a [`Device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The request reached past the end of the device.
    OutOfRange,
    /// The buffer is not a whole number of sectors.
    BadLength,
    /// The device failed the request.
    Failed,
}

/// The synchronous device of the metadata path (open, preparation, flush,
/// host tools). Buffers are whole sectors.
pub trait Device {
    /// The device's size in sectors.
    fn sectors(&self) -> u64;
    /// Reads `buf.len() / 512` sectors from `lba`.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Writes `buf.len() / 512` sectors at `lba` (possibly into a volatile
    /// cache: durable only after [`Device::flush`]).
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), IoError>;
}

/// Why an operation failed. Open's variants follow its check order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The device failed.
    Io(IoError),
    /// Memory for the map could not be reserved.
    OutOfMemory,
    /// The request reaches past the virtual disk's end.
    OutOfRange {
        /// The request's first virtual sector.
        vlba: u64,
        /// The request's length.
        nsect: u64,
    },
    /// The request is longer than [`MAX_REQUEST_SECTORS`] (or, for a
    /// discard, [`MAX_DISCARD_SECTORS`]).
    TooLong {
        /// The request's length.
        nsect: u64,
    },
    /// A buffer is not a whole number of sectors.
    BadBuffer,
    /// The image was opened read-only (a base).
    ReadOnly,
    /// A block of the request has an allocation in flight; retry after its
    /// write is committed or aborted.
    Busy {
        /// The virtual block.
        vblock: u64,
    },
    /// The data area is full.
    NoSpace,
    /// The plan was not made by this disk, or was already committed.
    ForeignPlan,
    /// Internal invariant: an extent would leave its region (never expected;
    /// the check of invariant 6).
    ExtentOutsideRegion,
    /// The region is empty or does not lie on the device.
    RegionOutsideDevice,
    /// The region cannot hold the image's header, map and layout.
    RegionTooSmall,
    /// Not an image: the magic is wrong.
    BadMagic,
    /// An image of an unknown version.
    UnsupportedVersion(u32),
    /// The header's checksum does not match.
    BadChecksum,
    /// An unknown kind.
    BadKind(u32),
    /// A block size other than [`BLOCK_SECTORS`].
    BadBlockSize(u32),
    /// A reserved header field is not zero.
    NonZeroReserved,
    /// The header's region size differs from the region opened.
    RegionMismatch {
        /// What the header says.
        header: u64,
        /// What the caller gave.
        given: u64,
    },
    /// virtual_sectors is 0 or too large for the map's encoding.
    BadVirtualSize(u64),
    /// A geometry field differs from the recomputed layout.
    BadLayout(&'static str),
    /// The base fields are inconsistent with the kind.
    BadBase,
    /// The base region does not lie on the device.
    BaseOutsideDevice,
    /// The base region overlaps an image above it in the chain.
    BaseOverlaps,
    /// The overlay chain is longer than [`MAX_CHAIN_DEPTH`].
    ChainTooDeep,
    /// A map entry names a block past the data area.
    BadMapEntry {
        /// The virtual block.
        vblock: u64,
        /// The raw entry.
        entry: u32,
    },
    /// Two map entries name the same physical block.
    DuplicateBlock {
        /// The second virtual block naming it.
        vblock: u64,
        /// The physical block's index.
        index: u32,
    },
    /// A map entry past the last virtual block is not zero.
    BadMapPadding {
        /// The entry's position in the map.
        position: u64,
    },
}

impl From<IoError> for Error {
    fn from(e: IoError) -> Self {
        Error::Io(e)
    }
}

/// Appends `e` to a read plan, merging it into the previous piece when both
/// are zeros, or both physical, contiguous, and inside `region` (so a merged
/// extent is still inside one checked region).
pub(crate) fn push_extent(out: &mut alloc::vec::Vec<Extent>, region: Option<&Region>, e: Extent) {
    if let Some(last) = out.last_mut() {
        match (last, &e) {
            (Extent::Zero { nsect }, Extent::Zero { nsect: n }) => {
                *nsect += n;
                return;
            }
            (Extent::Phys(a), Extent::Phys(b)) => {
                if let Some(r) = region {
                    if a.lba + a.nsect == b.lba && r.contains(a) && r.contains(b) {
                        a.nsect += b.nsect;
                        return;
                    }
                }
            }
            _ => {}
        }
    }
    out.push(e);
}
