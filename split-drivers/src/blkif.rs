//! The block protocol: Xen's `io/blkif.h` requests and responses over a
//! `ring-protocol` request/response ring, with the back's validation and
//! the front's shadow table.
//!
//! # Wire layout
//! [`Request`] (112 bytes) and [`Response`] (16 bytes) are Xen's x86-64
//! `blkif_request` / `blkif_response`, byte for byte, with every implicit
//! padding byte made an explicit `_pad` field (zerocopy's derives refuse
//! padding, so nothing of ours leaks through a slot). A [`DiscardRequest`]
//! is the same 112 bytes viewed as Xen's `blkif_request_discard`: byte 1 is
//! `flag` instead of `nr_segments`, and `nr_sectors` (a `u64` at offset 24)
//! overlays the first segment. Sizes and offsets are const-asserted below.
//! An [`IndirectRequest`] is the same 112 bytes viewed as Xen's
//! `blkif_request_indirect`: a read or write whose up to
//! [`MAX_INDIRECT_SEGMENTS`] segments are listed in a page the front
//! granted (`indirect_grefs[0]`), so that one request carries 128 KiB.
//! One page of ring holds 32 requests ([`RING_SLOTS`]), as in Xen.
//!
//! Operations keep Xen's numbers ([`op`]). One Ringfence extension:
//! [`op::WRITE_FUA`] (`0x81`), a write whose response means "on stable
//! media" (Linux's `REQ_FUA`; Xen only has barriers and cache flushes).
//! Extensions have bit 7 set, far from Xen's 0..=6, so a Xen backend
//! answers it as an unknown operation rather than silently doing a
//! plain write, and a front sends it only when the back advertises
//! `feature-fua` ([`Features::fua`]).
//!
//! # Who writes what
//! - The **front** writes every field of a [`Request`] (built with
//!   [`Request::rw`] / [`Request::discard`], stamped with an id by
//!   [`Inflight::submit`]). `_pad` fields are zero. `handle` is the
//!   virtual device number and is not interpreted here.
//! - The **back** writes every field of a [`Response`]
//!   ([`Valid::response`] / [`Response::to_invalid`]): `id` and
//!   `operation` echo the request, `status` is one of [`Status`].
//!
//! # Where validation happens
//! Both peers are hostile to each other. The ring copies each slot once
//! (ring-protocol R6), so neither side can see a field change after it was
//! checked (XSA-155). Then:
//! - the back turns a request into something it acts on **only** through
//!   [`validate`], which returns a [`Valid`] (no other constructor). An
//!   invalid request is answered with [`BadRequest::status`] and never
//!   executed; its id is just echoed.
//! - the front turns a response into a finished request **only** through
//!   [`Inflight::complete`], which checks the id against its shadow table
//!   and the operation and status against what it recorded (Linux's
//!   XSA-396 hardening of xen-blkfront: the front keeps its own copy of
//!   every request and trusts nothing the back wrote).
//!
//! # Check order of [`validate`]
//! Each check has its own [`BadRequest`] variant; the first failure wins:
//! 1. the operation is known ([`BadRequest::UnknownOp`]);
//! 2. the back advertised it ([`BadRequest::NotSupported`], answered
//!    [`Status::NotSupported`]);
//! 3. discard: the flags are known ([`BadRequest::BadDiscardFlags`]) and a
//!    secure discard was advertised ([`BadRequest::NotSupported`]); then
//!    `sector_number + nr_sectors` neither overflows nor passes the end of
//!    the disk ([`BadRequest::BeyondDisk`]). Nothing else is read.
//! 4. other operations: the segment count is `1..=11` for reads and
//!    writes, `0..=11` for barriers and flushes ([`BadRequest::NoSegments`],
//!    [`BadRequest::TooManySegments`]);
//! 5. for each segment in order: `last_sect <= 7`
//!    ([`BadRequest::SegmentBeyondPage`]), then `first_sect <= last_sect`
//!    ([`BadRequest::SegmentReversed`]);
//! 6. if there is data, `sector_number + total` (total at most 88 sectors)
//!    neither overflows nor passes the end of the disk
//!    ([`BadRequest::BeyondDisk`]). A flush or barrier without data names
//!    no sectors, and `sector_number` is ignored.
//!
//! Segments past `nr_segments` are never read.
//!
//! An [`op::INDIRECT`] request (when advertised) is refused by [`validate`]
//! with [`BadRequest::Indirect`]; [`validate_indirect`] checks its header
//! (the operation it carries, the segment count), the back copies the
//! segments out of the indirect page once, and [`IndirectHeader::validate`]
//! runs checks 5 and 6 on that copy. The response to an indirect request
//! names the operation it carries (`indirect_op`), not [`op::INDIRECT`],
//! as Linux's blkback answers and its blkfront checks.
//!
//! # Grants (the front's rule G1)
//! A [`Completed`] (or [`Abandoned`]) lists the grant references of the
//! request's pages. The front must end the back's access to each of them
//! before it reuses or frees the page, and before it trusts the data of a
//! read. If ending access fails because the back still has the grant mapped
//! (a buggy or hostile back that answered before unmapping, or a back that
//! died with mappings), the gref **and its page** are quarantined: not
//! reused, not freed, not read as the result of the request, until the
//! hypervisor reports the unmap; and the back is treated as broken
//! (disconnect). This is Linux's `gnttab_try_end_foreign_access` rule from
//! XSA-396: otherwise the back could write into a page the front has since
//! given to someone else.
//!
//! Any [`BadResponse`] means the back broke the protocol: the front should
//! poison the ring and disconnect. [`Inflight::complete`] leaves the table
//! exactly as it was on every error, so no other request is affected and
//! [`Inflight::abandon_next`] still releases exactly the requests in flight.

use core::mem::{offset_of, size_of};

use ring_protocol::zerocopy::{self, FromBytes, Immutable, IntoBytes, KnownLayout};
use ring_protocol::{IdError, IdTable};

/// Segments in one request (Xen's `BLKIF_MAX_SEGMENTS_PER_REQUEST`).
pub const MAX_SEGMENTS: usize = 11;

/// Segments an indirect request carries at most here (128 KiB; the
/// `feature-max-indirect-segments` a back of ours advertises). They all
/// fit in the first indirect page (512 per page), so only
/// `indirect_grefs[0]` is ever read.
pub const MAX_INDIRECT_SEGMENTS: usize = 32;

/// Segments of one [`Valid`] request at most: direct or indirect.
pub const MAX_VALID_SEGMENTS: usize = MAX_INDIRECT_SEGMENTS;
/// Bytes per sector: the unit of `sector_number`, `first_sect`, `last_sect`
/// and `nr_sectors`, whatever the disk's own sector size.
pub const SECTOR: usize = 512;
/// Bytes in a granted page.
pub const PAGE_SIZE: usize = ring_protocol::PAGE_SIZE;
/// Sectors in a page (`last_sect` is at most `SECTORS_PER_PAGE - 1`).
pub const SECTORS_PER_PAGE: u8 = (PAGE_SIZE / SECTOR) as u8;
/// Requests in a one-page block ring (32, as Xen's `BLK_RING_SIZE`).
pub const RING_SLOTS: usize = ring_protocol::ring_capacity::<Request, Response>(PAGE_SIZE) as usize;

/// Operation codes (`Request::operation`), Xen's numbers plus one
/// Ringfence extension.
pub mod op {
    /// Read sectors into the segments' pages.
    pub const READ: u8 = 0;
    /// Write the segments' pages to sectors.
    pub const WRITE: u8 = 1;
    /// A write ordered after every earlier request and durable before it
    /// completes (`feature-barrier`). May carry no data.
    pub const WRITE_BARRIER: u8 = 2;
    /// Flush the disk's write cache (`feature-flush-cache`); with data, a
    /// write that follows the flush. May carry no data.
    pub const FLUSH_DISKCACHE: u8 = 3;
    /// Discard `nr_sectors` sectors ([`DiscardRequest`](super::DiscardRequest),
    /// `feature-discard`).
    pub const DISCARD: u8 = 5;
    /// A read or write whose segments are in a granted page
    /// ([`IndirectRequest`](super::IndirectRequest),
    /// `feature-max-indirect-segments`).
    pub const INDIRECT: u8 = 6;
    /// **Ringfence extension** (not in Xen): a write that completes only
    /// once on stable media (FUA, write-through), without flushing
    /// anything else (`feature-fua`). Bit 7 marks extensions.
    pub const WRITE_FUA: u8 = 0x81;
}

/// `DiscardRequest::flag` bit: the discarded data must be unrecoverable
/// (`discard-secure`).
pub const DISCARD_SECURE: u8 = 1;

/// One page of a read or write: sectors `first_sect..=last_sect` of the page
/// granted as `gref` (Xen's `blkif_request_segment`, padded explicitly).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct Segment {
    /// Grant reference of the data page.
    pub gref: u32,
    /// First sector of the page (inclusive), `0..=7`.
    pub first_sect: u8,
    /// Last sector of the page (inclusive), `first_sect..=7`.
    pub last_sect: u8,
    /// Zero.
    pub _pad: u16,
}

/// A block request, written by the front (Xen's x86-64 `blkif_request`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct Request {
    /// One of [`op`].
    pub operation: u8,
    /// Segments used (`seg[..nr_segments]`); for a discard, the flags
    /// (see [`DiscardRequest`]).
    pub nr_segments: u8,
    /// Virtual device number (not interpreted by this crate).
    pub handle: u16,
    /// Zero (Xen's implicit padding, explicit here).
    pub _pad: u32,
    /// Chosen by the front's [`Inflight`], echoed in the response.
    pub id: u64,
    /// First disk sector (512-byte units).
    pub sector_number: u64,
    /// The data pages.
    pub seg: [Segment; MAX_SEGMENTS],
}

/// The same 112 bytes as a [`Request`] when `operation` is
/// [`op::DISCARD`] (Xen's `blkif_request_discard`, extended to the slot
/// size). Convert with [`Request::as_discard`] / [`DiscardRequest::into_request`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct DiscardRequest {
    /// [`op::DISCARD`].
    pub operation: u8,
    /// 0 or [`DISCARD_SECURE`].
    pub flag: u8,
    /// Virtual device number.
    pub handle: u16,
    /// Zero.
    pub _pad: u32,
    /// Chosen by the front, echoed in the response.
    pub id: u64,
    /// First sector to discard.
    pub sector_number: u64,
    /// Sectors to discard.
    pub nr_sectors: u64,
    /// Zero: the rest of the slot.
    pub _reserved: [u8; 80],
}

/// The same 112 bytes as a [`Request`] when `operation` is
/// [`op::INDIRECT`] (Xen's x86-64 `blkif_request_indirect`, padded
/// explicitly): a read or write of `nr_segments` [`Segment`]s listed, 8
/// bytes each, from byte 0 of the page granted as `indirect_grefs[0]`.
/// Convert with [`Request::as_indirect`] / [`IndirectRequest::into_request`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct IndirectRequest {
    /// [`op::INDIRECT`].
    pub operation: u8,
    /// [`op::READ`], [`op::WRITE`] or [`op::WRITE_FUA`].
    pub indirect_op: u8,
    /// Segments in the indirect page(s).
    pub nr_segments: u16,
    /// Zero.
    pub _pad: u32,
    /// Chosen by the front, echoed in the response.
    pub id: u64,
    /// First disk sector.
    pub sector_number: u64,
    /// Virtual device number.
    pub handle: u16,
    /// Zero.
    pub _pad2: u16,
    /// Grant references of the pages holding the segments.
    pub indirect_grefs: [u32; 8],
    /// Zero: the rest of the slot.
    pub _reserved: [u8; 52],
}

/// A block response, written by the back (Xen's `blkif_response`, padded
/// explicitly: `id` 0, `operation` 8, `status` 10, 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The request's operation.
    pub operation: u8,
    /// Zero.
    pub _pad0: u8,
    /// One of [`Status`]'s codes.
    pub status: i16,
    /// Zero.
    pub _pad1: u32,
}

const _: () = {
    assert!(size_of::<Segment>() == 8);
    assert!(offset_of!(Segment, gref) == 0);
    assert!(offset_of!(Segment, first_sect) == 4);
    assert!(offset_of!(Segment, last_sect) == 5);
    assert!(offset_of!(Segment, _pad) == 6);

    assert!(size_of::<Request>() == 112);
    assert!(offset_of!(Request, operation) == 0);
    assert!(offset_of!(Request, nr_segments) == 1);
    assert!(offset_of!(Request, handle) == 2);
    assert!(offset_of!(Request, _pad) == 4);
    assert!(offset_of!(Request, id) == 8);
    assert!(offset_of!(Request, sector_number) == 16);
    assert!(offset_of!(Request, seg) == 24);

    assert!(size_of::<DiscardRequest>() == size_of::<Request>());
    assert!(offset_of!(DiscardRequest, flag) == 1);
    assert!(offset_of!(DiscardRequest, handle) == 2);
    assert!(offset_of!(DiscardRequest, id) == 8);
    assert!(offset_of!(DiscardRequest, sector_number) == 16);
    assert!(offset_of!(DiscardRequest, nr_sectors) == 24);

    assert!(size_of::<IndirectRequest>() == size_of::<Request>());
    assert!(offset_of!(IndirectRequest, indirect_op) == 1);
    assert!(offset_of!(IndirectRequest, nr_segments) == 2);
    assert!(offset_of!(IndirectRequest, id) == 8);
    assert!(offset_of!(IndirectRequest, sector_number) == 16);
    assert!(offset_of!(IndirectRequest, handle) == 24);
    assert!(offset_of!(IndirectRequest, indirect_grefs) == 28);

    assert!(size_of::<Response>() == 16);
    assert!(offset_of!(Response, id) == 0);
    assert!(offset_of!(Response, operation) == 8);
    assert!(offset_of!(Response, status) == 10);
    assert!(offset_of!(Response, _pad1) == 12);

    assert!(RING_SLOTS == 32);
    assert!(SECTORS_PER_PAGE == 8);
};

/// A known operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`op::READ`].
    Read,
    /// [`op::WRITE`].
    Write,
    /// [`op::WRITE_BARRIER`].
    WriteBarrier,
    /// [`op::FLUSH_DISKCACHE`].
    Flush,
    /// [`op::DISCARD`].
    Discard,
    /// [`op::WRITE_FUA`] (Ringfence extension).
    WriteFua,
}

impl Op {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Op::Read => op::READ,
            Op::Write => op::WRITE,
            Op::WriteBarrier => op::WRITE_BARRIER,
            Op::Flush => op::FLUSH_DISKCACHE,
            Op::Discard => op::DISCARD,
            Op::WriteFua => op::WRITE_FUA,
        }
    }

    /// The operation a wire code names, if any.
    pub const fn from_code(code: u8) -> Option<Op> {
        Some(match code {
            op::READ => Op::Read,
            op::WRITE => Op::Write,
            op::WRITE_BARRIER => Op::WriteBarrier,
            op::FLUSH_DISKCACHE => Op::Flush,
            op::DISCARD => Op::Discard,
            op::WRITE_FUA => Op::WriteFua,
            _ => return None,
        })
    }

    /// Whether the request may carry no segments (barriers and flushes).
    pub const fn data_optional(self) -> bool {
        matches!(self, Op::WriteBarrier | Op::Flush)
    }

    /// Whether the back reads the segments' pages (they are granted
    /// read-only) rather than writing them.
    pub const fn to_disk(self) -> bool {
        matches!(self, Op::Write | Op::WriteBarrier | Op::Flush | Op::WriteFua)
    }
}

/// A response status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `BLKIF_RSP_OKAY` (0).
    Okay,
    /// `BLKIF_RSP_ERROR` (-1).
    Error,
    /// `BLKIF_RSP_EOPNOTSUPP` (-2): the back does not do this operation.
    NotSupported,
}

impl Status {
    /// `BLKIF_RSP_OKAY`.
    pub const OKAY: i16 = 0;
    /// `BLKIF_RSP_ERROR`.
    pub const ERROR: i16 = -1;
    /// `BLKIF_RSP_EOPNOTSUPP`.
    pub const NOTSUPP: i16 = -2;

    /// The wire code.
    pub const fn code(self) -> i16 {
        match self {
            Status::Okay => Self::OKAY,
            Status::Error => Self::ERROR,
            Status::NotSupported => Self::NOTSUPP,
        }
    }

    /// The status a wire code names, if any (there are exactly three).
    pub const fn from_code(code: i16) -> Option<Status> {
        Some(match code {
            Self::OKAY => Status::Okay,
            Self::ERROR => Status::Error,
            Self::NOTSUPP => Status::NotSupported,
            _ => return None,
        })
    }
}

/// What a back advertises in the store (and what its [`validate`] accepts
/// beyond reads and writes). Store keys: `feature-barrier`,
/// `feature-flush-cache`, `feature-discard`, `discard-secure`, and the
/// Ringfence `feature-fua`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// [`op::WRITE_BARRIER`].
    pub barrier: bool,
    /// [`op::FLUSH_DISKCACHE`].
    pub flush: bool,
    /// [`op::DISCARD`].
    pub discard: bool,
    /// [`DISCARD_SECURE`] (only with `discard`).
    pub secure_discard: bool,
    /// [`op::WRITE_FUA`].
    pub fua: bool,
    /// [`op::INDIRECT`] with up to [`MAX_INDIRECT_SEGMENTS`] segments
    /// (`feature-max-indirect-segments`).
    pub indirect: bool,
}

impl Features {
    /// Everything.
    pub const ALL: Features =
        Features { barrier: true, flush: true, discard: true, secure_discard: true, fua: true, indirect: true };

    /// Whether `op` is advertised (reads and writes always are).
    pub const fn supports(&self, op: Op) -> bool {
        match op {
            Op::Read | Op::Write => true,
            Op::WriteBarrier => self.barrier,
            Op::Flush => self.flush,
            Op::Discard => self.discard,
            Op::WriteFua => self.fua,
        }
    }
}

impl Request {
    /// Build a read, write, barrier, flush or FUA write of the page pieces
    /// `pieces` starting at disk sector `sector`, with id 0 (the id is
    /// [`Inflight::submit`]'s). Pieces are checked in order; see
    /// [`BuildError`] for the rules. Discards are built with
    /// [`Request::discard`].
    ///
    /// # Errors
    /// The first rule a piece (or the list) breaks.
    pub fn rw(op: Op, handle: u16, sector: u64, pieces: &[Piece]) -> Result<Request, BuildError> {
        if op == Op::Discard {
            return Err(BuildError::Discard);
        }
        if pieces.is_empty() && !op.data_optional() {
            return Err(BuildError::NoPieces);
        }
        if pieces.len() > MAX_SEGMENTS {
            return Err(BuildError::TooManyPieces { pieces: pieces.len() });
        }
        let mut req = Request {
            operation: op.code(),
            nr_segments: pieces.len() as u8,
            handle,
            sector_number: sector,
            ..Request::default()
        };
        let mut total: u64 = 0;
        for (index, (piece, seg)) in pieces.iter().zip(req.seg.iter_mut()).enumerate() {
            *seg = piece.segment(index)?;
            total += u64::from(seg.last_sect - seg.first_sect) + 1;
        }
        if sector.checked_add(total).is_none() {
            return Err(BuildError::SectorOverflow);
        }
        Ok(req)
    }

    /// Build a discard of `nr_sectors` sectors from `sector`, with id 0.
    pub fn discard(handle: u16, sector: u64, nr_sectors: u64, secure: bool) -> Request {
        DiscardRequest {
            operation: op::DISCARD,
            flag: if secure { DISCARD_SECURE } else { 0 },
            handle,
            _pad: 0,
            id: 0,
            sector_number: sector,
            nr_sectors,
            _reserved: [0; 80],
        }
        .into_request()
    }

    /// Build an indirect read, write or FUA write of `nr_segments`
    /// segments (1 to [`MAX_INDIRECT_SEGMENTS`]) listed in the page granted
    /// as `indirect_gref` (the front writes them there, 8 bytes each, as
    /// [`Segment`]s built with [`Piece::segment`]), from disk sector
    /// `sector`, with id 0.
    ///
    /// # Errors
    /// [`BuildError::NotIndirect`] for another operation,
    /// [`BuildError::NoPieces`] / [`BuildError::TooManyPieces`] for the count.
    pub fn indirect(
        op: Op,
        handle: u16,
        sector: u64,
        nr_segments: usize,
        indirect_gref: u32,
    ) -> Result<Request, BuildError> {
        if !matches!(op, Op::Read | Op::Write | Op::WriteFua) {
            return Err(BuildError::NotIndirect);
        }
        if nr_segments == 0 {
            return Err(BuildError::NoPieces);
        }
        if nr_segments > MAX_INDIRECT_SEGMENTS {
            return Err(BuildError::TooManyPieces { pieces: nr_segments });
        }
        let mut grefs = [0u32; 8];
        grefs[0] = indirect_gref;
        Ok(IndirectRequest {
            operation: op::INDIRECT,
            indirect_op: op.code(),
            nr_segments: nr_segments as u16,
            _pad: 0,
            id: 0,
            sector_number: sector,
            handle,
            _pad2: 0,
            indirect_grefs: grefs,
            _reserved: [0; 52],
        }
        .into_request())
    }

    /// These bytes viewed as an indirect request (meaningful when
    /// `operation` is [`op::INDIRECT`]).
    pub fn as_indirect(&self) -> IndirectRequest {
        zerocopy::transmute!(*self)
    }

    /// These bytes viewed as a discard (meaningful when `operation` is
    /// [`op::DISCARD`]).
    pub fn as_discard(&self) -> DiscardRequest {
        zerocopy::transmute!(*self)
    }
}

impl DiscardRequest {
    /// These bytes as a [`Request`] slot.
    pub fn into_request(self) -> Request {
        zerocopy::transmute!(self)
    }
}

impl IndirectRequest {
    /// These bytes as a [`Request`] slot.
    pub fn into_request(self) -> Request {
        zerocopy::transmute!(self)
    }
}

impl Response {
    /// The back's answer to a request it refused (or did not finish):
    /// `id` and `operation` echoed from the (untrusted) request bytes.
    pub fn to_invalid(req: &Request, status: Status) -> Response {
        // An indirect request is answered with the operation it carries
        // (as Linux's blkback does, and its blkfront checks).
        let operation = if req.operation == op::INDIRECT { req.as_indirect().indirect_op } else { req.operation };
        Response { id: req.id, operation, status: status.code(), ..Response::default() }
    }
}

// ---------------------------------------------------------------------------
// Frontend: building requests.

/// A piece of a data buffer: `len` bytes at byte `offset` of the page
/// granted as `gref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Grant reference of the page.
    pub gref: u32,
    /// Byte offset in the page.
    pub offset: u32,
    /// Bytes.
    pub len: u32,
}

impl Piece {
    /// The piece as segment number `index` of a request (what
    /// [`Request::rw`] writes in the slot, and an indirect request's front
    /// writes in its indirect page).
    ///
    /// # Errors
    /// The rule the piece breaks.
    pub fn segment(&self, index: usize) -> Result<Segment, BuildError> {
        let (offset, len) = (self.offset as usize, self.len as usize);
        if len == 0 {
            return Err(BuildError::Empty { index });
        }
        if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
            return Err(BuildError::Unaligned { index });
        }
        if offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(BuildError::BeyondPage { index });
        }
        let first = offset / SECTOR;
        let last = first + len / SECTOR - 1;
        Ok(Segment { gref: self.gref, first_sect: first as u8, last_sect: last as u8, _pad: 0 })
    }
}

/// Why [`Request::rw`] refused a buffer. Checked in this order: the
/// operation, the piece count, then each piece (length, alignment, page
/// bounds), then the sector range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// Discards carry no pieces: use [`Request::discard`].
    Discard,
    /// A read or write needs at least one piece.
    NoPieces,
    /// More than [`MAX_SEGMENTS`] pieces (split the buffer).
    TooManyPieces {
        /// Pieces given.
        pieces: usize,
    },
    /// Piece `index` is empty.
    Empty {
        /// Which piece.
        index: usize,
    },
    /// Piece `index`'s offset or length is not a multiple of [`SECTOR`].
    Unaligned {
        /// Which piece.
        index: usize,
    },
    /// Piece `index` passes the end of its page.
    BeyondPage {
        /// Which piece.
        index: usize,
    },
    /// `sector` plus the request's sectors overflows.
    SectorOverflow,
    /// [`Pieces::new`]: the buffer is empty.
    EmptyBuffer,
    /// [`Pieces::new`]: its offset or length is not a multiple of
    /// [`SECTOR`], or the offset is not inside the first page.
    BufferUnaligned,
    /// [`Request::indirect`] of an operation other than a read, a write or
    /// a FUA write.
    NotIndirect,
    /// [`Pieces::new`]: the buffer needs more pages than grants given.
    NotEnoughPages {
        /// Pages the buffer spans.
        needed: usize,
        /// Grants given.
        given: usize,
    },
}

/// A buffer cut into page [`Piece`]s, and into requests of at most
/// [`MAX_SEGMENTS`] pieces each ([`Pieces::next_request`]).
///
/// The buffer is `len` bytes starting `offset` bytes into the first of
/// the pages granted as `grefs`, continuing at the start of each next
/// page (a guest buffer that is contiguous in its virtual memory).
///
/// ```
/// use split_drivers::blkif::{Op, Piece, Pieces};
///
/// // 12 KiB from 1 KiB into page 10, over pages 10, 11, 12 and 13.
/// let mut p = Pieces::new(1024, 12 * 1024, &[10, 11, 12, 13])?;
/// assert_eq!(p.next(), Some(Piece { gref: 10, offset: 1024, len: 3072 }));
/// assert_eq!(p.next(), Some(Piece { gref: 11, offset: 0, len: 4096 }));
/// // The rest (page 12 whole, 1 KiB of page 13) as one request at sector 64.
/// let mut sector = 64;
/// let req = p.next_request(Op::Write, 0, &mut sector).expect("one more")?;
/// assert_eq!((req.nr_segments, req.sector_number, sector), (2, 64, 74));
/// assert!(p.next_request(Op::Write, 0, &mut sector).is_none());
/// # Ok::<(), split_drivers::blkif::BuildError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Pieces<'a> {
    grefs: core::slice::Iter<'a, u32>,
    offset: usize,
    left: usize,
}

impl<'a> Pieces<'a> {
    /// Cut the buffer; checks, in order: not empty, sector-aligned offset
    /// (inside the first page) and length, enough grants.
    ///
    /// # Errors
    /// [`BuildError::EmptyBuffer`], [`BuildError::BufferUnaligned`],
    /// [`BuildError::NotEnoughPages`].
    pub fn new(offset: usize, len: usize, grefs: &'a [u32]) -> Result<Pieces<'a>, BuildError> {
        if len == 0 {
            return Err(BuildError::EmptyBuffer);
        }
        if offset >= PAGE_SIZE || !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
            return Err(BuildError::BufferUnaligned);
        }
        let needed = offset.checked_add(len).map_or(usize::MAX, |end| end.div_ceil(PAGE_SIZE));
        if needed > grefs.len() {
            return Err(BuildError::NotEnoughPages { needed, given: grefs.len() });
        }
        Ok(Pieces { grefs: grefs[..needed].iter(), offset, left: len })
    }

    /// Build the next request of up to [`MAX_SEGMENTS`] pieces at
    /// `*sector` (id 0, for [`Inflight::submit`]), and advance `*sector`
    /// past it; `None` once the buffer is used up.
    ///
    /// # Errors
    /// `Some(Err(_))` from [`Request::rw`] (a discard, or sectors that
    /// overflow); those pieces are consumed.
    pub fn next_request(&mut self, op: Op, handle: u16, sector: &mut u64) -> Option<Result<Request, BuildError>> {
        let mut buf = [Piece { gref: 0, offset: 0, len: 0 }; MAX_SEGMENTS];
        let mut n = 0;
        for slot in &mut buf {
            let Some(piece) = self.next() else { break };
            *slot = piece;
            n += 1;
        }
        if n == 0 {
            return None;
        }
        let req = match Request::rw(op, handle, *sector, &buf[..n]) {
            Ok(req) => req,
            Err(e) => return Some(Err(e)),
        };
        let sectors: u64 = buf[..n].iter().map(|p| u64::from(p.len) / SECTOR as u64).sum();
        *sector += sectors; // cannot overflow: `rw` checked it
        Some(Ok(req))
    }
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.left == 0 {
            return None;
        }
        let gref = *self.grefs.next()?;
        let len = self.left.min(PAGE_SIZE - self.offset);
        // Both below PAGE_SIZE + 1.
        let piece = Piece { gref, offset: self.offset as u32, len: len as u32 };
        self.left -= len;
        self.offset = 0;
        Some(piece)
    }
}

// ---------------------------------------------------------------------------
// Backend: validation.

/// Why [`validate`] refused a request, one variant per check (see the
/// [module docs](self#check-order-of-validate) for the order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// Check 1: `operation` is not one of [`op`].
    UnknownOp {
        /// The code received.
        operation: u8,
    },
    /// Check 2 (and 3 for secure discards): the back did not advertise it.
    NotSupported {
        /// The operation.
        op: Op,
    },
    /// Check 3: discard flags other than [`DISCARD_SECURE`].
    BadDiscardFlags {
        /// The flags received.
        flag: u8,
    },
    /// Check 4: a read or write without segments.
    NoSegments,
    /// Check 4: more than [`MAX_SEGMENTS`] segments.
    TooManySegments {
        /// The count received.
        nr_segments: u8,
    },
    /// Check 5: a segment's `last_sect` is past the page.
    SegmentBeyondPage {
        /// Which segment.
        index: u8,
        /// Its `last_sect`.
        last_sect: u8,
    },
    /// Check 5: a segment's `first_sect > last_sect`.
    SegmentReversed {
        /// Which segment.
        index: u8,
        /// Its `first_sect`.
        first_sect: u8,
        /// Its `last_sect`.
        last_sect: u8,
    },
    /// [`validate`] of an [`op::INDIRECT`] request (advertised): its
    /// segments are in a page; check it with [`validate_indirect`].
    Indirect,
    /// [`validate_indirect`]: `indirect_op` is not a read, write or FUA
    /// write.
    BadIndirectOp {
        /// The code received.
        indirect_op: u8,
    },
    /// [`validate_indirect`]: more than [`MAX_INDIRECT_SEGMENTS`]
    /// segments, or [`IndirectHeader::validate`] given fewer than the
    /// header names.
    TooManyIndirectSegments {
        /// The count received.
        nr_segments: u16,
    },
    /// Checks 3 and 6: the sectors pass the end of the disk (or their end
    /// overflows a `u64`).
    BeyondDisk {
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u64,
        /// Sectors on the disk.
        disk_sectors: u64,
    },
}

impl BadRequest {
    /// The status to answer the request with.
    pub const fn status(&self) -> Status {
        match self {
            BadRequest::NotSupported { .. } => Status::NotSupported,
            _ => Status::Error,
        }
    }
}

/// A segment of a [`Valid`] request: in bounds of its page and of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidSegment {
    gref: u32,
    first_sect: u8,
    last_sect: u8,
    sector: u64,
}

impl ValidSegment {
    /// Grant reference of the page (still an allegation to the grant
    /// table: mapping it may fail).
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// Byte offset of the data in the page (`< PAGE_SIZE`, a multiple of
    /// [`SECTOR`]).
    pub fn offset(&self) -> usize {
        usize::from(self.first_sect) * SECTOR
    }

    /// Bytes of data (`1..=PAGE_SIZE`, a multiple of [`SECTOR`];
    /// `offset() + len() <= PAGE_SIZE`).
    pub fn len(&self) -> usize {
        usize::from(self.sectors()) * SECTOR
    }

    /// Never true: a segment holds at least one sector.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `offset()..offset() + len()`.
    pub fn range(&self) -> core::ops::Range<usize> {
        self.offset()..self.offset() + self.len()
    }

    /// Sectors of data (`1..=8`).
    pub fn sectors(&self) -> u8 {
        self.last_sect - self.first_sect + 1
    }

    /// The disk sector of the segment's first byte.
    pub fn sector(&self) -> u64 {
        self.sector
    }
}

/// A request that passed [`validate`]: the only way to get one. Every
/// segment lies in its page, and every sector named lies on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Valid {
    op: Op,
    id: u64,
    handle: u16,
    sector: u64,
    sectors: u64,
    secure: bool,
    nr: u8,
    /// The `operation` byte of the response (the request's, or for an
    /// indirect request the one it carries).
    wire_op: u8,
    segs: [ValidSegment; MAX_VALID_SEGMENTS],
}

impl Valid {
    /// The operation.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The front's id (opaque to the back, echoed in the response).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The virtual device number the front named.
    pub fn handle(&self) -> u16 {
        self.handle
    }

    /// First disk sector (0 for a flush or barrier without data).
    pub fn sector(&self) -> u64 {
        self.sector
    }

    /// Sectors named: the segments' total, or a discard's `nr_sectors`
    /// (`sector() + sectors() <= disk_sectors`).
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether a discard must be secure.
    pub fn secure_discard(&self) -> bool {
        self.secure
    }

    /// The data pages, in disk order (empty for discards and for flushes
    /// or barriers without data).
    pub fn segments(&self) -> &[ValidSegment] {
        &self.segs[..usize::from(self.nr)]
    }

    /// The response to this request.
    pub fn response(&self, status: Status) -> Response {
        Response { id: self.id, operation: self.wire_op, status: status.code(), ..Response::default() }
    }
}

/// Check a request copied out of the ring against a disk of `disk_sectors`
/// sectors and the features the back advertised: the one place a
/// front's request becomes trusted (check order in the
/// [module docs](self#check-order-of-validate)).
///
/// # Errors
/// The first check that fails; answer with [`BadRequest::status`].
pub fn validate(req: &Request, disk_sectors: u64, features: &Features) -> Result<Valid, BadRequest> {
    if req.operation == op::INDIRECT && features.indirect {
        return Err(BadRequest::Indirect);
    }
    // 1, 2.
    let op = Op::from_code(req.operation).ok_or(BadRequest::UnknownOp { operation: req.operation })?;
    if !features.supports(op) {
        return Err(BadRequest::NotSupported { op });
    }
    let mut valid = Valid {
        op,
        id: req.id,
        handle: req.handle,
        sector: 0,
        sectors: 0,
        secure: false,
        nr: 0,
        wire_op: req.operation,
        segs: [ValidSegment { gref: 0, first_sect: 0, last_sect: 0, sector: 0 }; MAX_VALID_SEGMENTS],
    };
    // 3.
    if op == Op::Discard {
        let d = req.as_discard();
        if d.flag & !DISCARD_SECURE != 0 {
            return Err(BadRequest::BadDiscardFlags { flag: d.flag });
        }
        let secure = d.flag & DISCARD_SECURE != 0;
        if secure && !features.secure_discard {
            return Err(BadRequest::NotSupported { op });
        }
        in_disk(d.sector_number, d.nr_sectors, disk_sectors)?;
        valid.sector = d.sector_number;
        valid.sectors = d.nr_sectors;
        valid.secure = secure;
        return Ok(valid);
    }
    // 4.
    let nr = req.nr_segments;
    if nr == 0 && !op.data_optional() {
        return Err(BadRequest::NoSegments);
    }
    if usize::from(nr) > MAX_SEGMENTS {
        return Err(BadRequest::TooManySegments { nr_segments: nr });
    }
    // 5, 6.
    check_segments(&mut valid, &req.seg[..usize::from(nr)], req.sector_number, disk_sectors)?;
    Ok(valid)
}

fn in_disk(sector: u64, sectors: u64, disk_sectors: u64) -> Result<(), BadRequest> {
    match sector.checked_add(sectors) {
        Some(end) if end <= disk_sectors => Ok(()),
        _ => Err(BadRequest::BeyondDisk { sector, sectors, disk_sectors }),
    }
}

/// Checks 5 and 6 of `segs` (at most [`MAX_VALID_SEGMENTS`]) from sector
/// `sector_number`, filling `valid`'s segments, sector and count.
fn check_segments(
    valid: &mut Valid,
    segs: &[Segment],
    sector_number: u64,
    disk_sectors: u64,
) -> Result<(), BadRequest> {
    // Totals fit easily: at most 32 * 8 sectors.
    let mut total: u64 = 0;
    for (index, (seg, out)) in segs.iter().zip(valid.segs.iter_mut()).enumerate() {
        let index = index as u8;
        let (first_sect, last_sect) = (seg.first_sect, seg.last_sect);
        if last_sect >= SECTORS_PER_PAGE {
            return Err(BadRequest::SegmentBeyondPage { index, last_sect });
        }
        if first_sect > last_sect {
            return Err(BadRequest::SegmentReversed { index, first_sect, last_sect });
        }
        // `sector` is filled in once the whole range is known to fit.
        *out = ValidSegment { gref: seg.gref, first_sect, last_sect, sector: total };
        total += u64::from(last_sect - first_sect) + 1;
    }
    let nr = segs.len().min(MAX_VALID_SEGMENTS);
    if nr > 0 {
        in_disk(sector_number, total, disk_sectors)?;
        valid.sector = sector_number;
        valid.sectors = total;
        for out in &mut valid.segs[..nr] {
            // In range: sector_number + total does not overflow.
            out.sector += sector_number;
        }
    }
    valid.nr = nr as u8;
    Ok(())
}

/// The header of an [`op::INDIRECT`] request, checked by
/// [`validate_indirect`]: the back maps [`IndirectHeader::segments_gref`],
/// copies [`IndirectHeader::nr_segments`] [`Segment`]s out of it once, and
/// checks them with [`IndirectHeader::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndirectHeader {
    op: Op,
    id: u64,
    handle: u16,
    sector: u64,
    nr: u16,
    gref: u32,
}

/// Checks an [`op::INDIRECT`] request's header against the features the
/// back advertised, in order: indirect requests are advertised
/// ([`BadRequest::UnknownOp`] otherwise, as for a back that never heard
/// of them); `indirect_op` is a read, write or FUA write
/// ([`BadRequest::BadIndirectOp`]) and advertised
/// ([`BadRequest::NotSupported`]); `nr_segments` is `1..=`
/// [`MAX_INDIRECT_SEGMENTS`] ([`BadRequest::NoSegments`],
/// [`BadRequest::TooManyIndirectSegments`]). Only `indirect_grefs[0]` is
/// read (all the segments fit in one page).
///
/// # Errors
/// The first check that fails; answer with [`BadRequest::status`].
pub fn validate_indirect(req: &Request, features: &Features) -> Result<IndirectHeader, BadRequest> {
    if req.operation != op::INDIRECT || !features.indirect {
        return Err(BadRequest::UnknownOp { operation: req.operation });
    }
    let r = req.as_indirect();
    let op = match Op::from_code(r.indirect_op) {
        Some(op @ (Op::Read | Op::Write | Op::WriteFua)) => op,
        _ => return Err(BadRequest::BadIndirectOp { indirect_op: r.indirect_op }),
    };
    if !features.supports(op) {
        return Err(BadRequest::NotSupported { op });
    }
    if r.nr_segments == 0 {
        return Err(BadRequest::NoSegments);
    }
    if usize::from(r.nr_segments) > MAX_INDIRECT_SEGMENTS {
        return Err(BadRequest::TooManyIndirectSegments { nr_segments: r.nr_segments });
    }
    Ok(IndirectHeader {
        op,
        id: r.id,
        handle: r.handle,
        sector: r.sector_number,
        nr: r.nr_segments,
        gref: r.indirect_grefs[0],
    })
}

impl IndirectHeader {
    /// The grant of the page holding the segments (an allegation: mapping
    /// it may fail).
    pub fn segments_gref(&self) -> u32 {
        self.gref
    }

    /// Segments to copy out of that page (from byte 0, 8 bytes each).
    pub fn nr_segments(&self) -> usize {
        usize::from(self.nr)
    }

    /// The front's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Checks 5 and 6 of the segments copied out of the indirect page
    /// (`segs`, at least [`IndirectHeader::nr_segments`]; only that many
    /// are read), as for a direct request.
    ///
    /// # Errors
    /// [`BadRequest::TooManyIndirectSegments`] if `segs` is short, else the
    /// first segment check that fails.
    pub fn validate(&self, segs: &[Segment], disk_sectors: u64) -> Result<Valid, BadRequest> {
        let segs =
            segs.get(..self.nr_segments()).ok_or(BadRequest::TooManyIndirectSegments { nr_segments: self.nr })?;
        let mut valid = Valid {
            op: self.op,
            id: self.id,
            handle: self.handle,
            sector: 0,
            sectors: 0,
            secure: false,
            nr: 0,
            // Answered with the operation it carries, as Linux does.
            wire_op: self.op.code(),
            segs: [ValidSegment { gref: 0, first_sect: 0, last_sect: 0, sector: 0 }; MAX_VALID_SEGMENTS],
        };
        check_segments(&mut valid, segs, self.sector, disk_sectors)?;
        Ok(valid)
    }

    /// The answer to the request refused after its header was checked (its
    /// indirect page did not map, say).
    pub fn response(&self, status: Status) -> Response {
        Response { id: self.id, operation: self.op.code(), status: status.code(), ..Response::default() }
    }
}

// ---------------------------------------------------------------------------
// Frontend: the shadow table.

/// Grant references of one request's pages (up to [`MAX_SEGMENTS`]; for
/// an indirect request, its indirect page: the front tracks the data
/// pages it listed there itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grants {
    refs: [u32; MAX_SEGMENTS],
    len: u8,
}

impl Grants {
    /// The references, in segment order.
    pub fn as_slice(&self) -> &[u32] {
        &self.refs[..usize::from(self.len)]
    }
}

/// What the front saved about a request in flight: its own copy, never
/// re-read from the ring.
#[derive(Clone, Copy, Debug)]
struct Shadow {
    op: Op,
    /// The `operation` byte the response must carry.
    wire: u8,
    grants: Grants,
}

/// A request the back answered, checked: end access to [`Completed::grants`]
/// before reusing the pages or trusting a read's data (rule G1 in the
/// [module docs](self#grants-the-fronts-rule-g1)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The request's id.
    pub id: u64,
    /// The operation, from the front's own record.
    pub op: Op,
    /// The back's verdict. [`Status::NotSupported`] for a barrier, flush,
    /// discard or FUA write means the back no longer does it: stop sending
    /// that operation (as blkfront drops the feature).
    pub status: Status,
    /// The request's grants, from the front's own record.
    pub grants: Grants,
}

/// A request still in flight when the connection went away
/// ([`Inflight::abandon_next`]): never answered; end access to its grants
/// (rule G1) and fail or requeue it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abandoned {
    /// The request's id.
    pub id: u64,
    /// The operation.
    pub op: Op,
    /// The request's grants.
    pub grants: Grants,
}

/// Why [`Inflight::submit`] refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// All `N` ids are in flight: wait for a completion.
    Full,
    /// Not a request the builders make: unknown operation or more than
    /// [`MAX_SEGMENTS`] segments.
    Malformed,
}

/// Why [`Inflight::complete`] refused a response, in check order. Each
/// means the back broke the protocol; the table is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadResponse {
    /// The id was never issued by this table: its index is not one of
    /// ours (possible only when `N` is not a power of two; otherwise a
    /// forged id is [`BadResponse::NotInFlight`]).
    UnknownId {
        /// The id received.
        id: u64,
    },
    /// The id is not in flight: a duplicate completion, or a stale id of an
    /// earlier use of the slot.
    NotInFlight {
        /// The id received.
        id: u64,
    },
    /// The operation differs from the request's.
    OperationMismatch {
        /// The id.
        id: u64,
        /// The request's operation.
        expected: u8,
        /// The response's.
        got: u8,
    },
    /// The status is not one of the three.
    BadStatus {
        /// The id.
        id: u64,
        /// The status received.
        status: i16,
    },
}

/// The front's shadow table: up to `N` requests in flight (use
/// [`RING_SLOTS`] for a one-page ring), each with the front's own copy of
/// its operation and grants.
///
/// Ids come from ring-protocol's [`IdTable`] (an index and a generation
/// that never wraps, so no id is issued twice), XORed with a per-table
/// `salt` (from [`Inflight::with_salt`]; give each connection a random one)
/// so that ids on the wire are not the table's indices. A response's id is
/// never used to index memory without the table's check.
///
/// Work per call is O(1), but for [`Inflight::abandon_next`] (teardown),
/// which scans at most `N` entries.
pub struct Inflight<const N: usize> {
    table: IdTable<Shadow, N>,
    salt: u64,
    /// The (salted) id in flight at each table index, for teardown
    /// ([`Inflight::abandon_next`]): set and cleared in O(1).
    live: [Option<u64>; N],
}

impl<const N: usize> Default for Inflight<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Inflight<N> {
    /// An empty table whose ids are the raw [`IdTable`] ids (salt 0).
    pub fn new() -> Self {
        Self::with_salt(0)
    }

    /// An empty table whose ids are XORed with `salt`.
    pub fn with_salt(salt: u64) -> Self {
        Inflight { table: IdTable::new(), salt, live: [None; N] }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.table.in_flight()
    }

    /// Whether no id is free.
    pub fn is_full(&self) -> bool {
        self.table.is_full()
    }

    /// Record `req` (built by [`Request::rw`] or [`Request::discard`]) and
    /// return it with a fresh id, ready for the ring.
    ///
    /// # Errors
    /// [`SubmitError`]; nothing is recorded.
    pub fn submit(&mut self, mut req: Request) -> Result<Request, SubmitError> {
        let mut grants = Grants { refs: [0; MAX_SEGMENTS], len: 0 };
        let op = if req.operation == op::INDIRECT {
            let r = req.as_indirect();
            let op = Op::from_code(r.indirect_op)
                .filter(|op| matches!(op, Op::Read | Op::Write | Op::WriteFua))
                .ok_or(SubmitError::Malformed)?;
            if r.nr_segments == 0 || usize::from(r.nr_segments) > MAX_INDIRECT_SEGMENTS {
                return Err(SubmitError::Malformed);
            }
            grants.refs[0] = r.indirect_grefs[0];
            grants.len = 1;
            op
        } else {
            Op::from_code(req.operation).ok_or(SubmitError::Malformed)?
        };
        if op != Op::Discard && req.operation != op::INDIRECT {
            let nr = usize::from(req.nr_segments);
            let segs = req.seg.get(..nr).ok_or(SubmitError::Malformed)?;
            for (dst, seg) in grants.refs.iter_mut().zip(segs) {
                *dst = seg.gref;
            }
            grants.len = req.nr_segments;
        }
        // The answer names the operation itself, also for an indirect
        // request (Linux's convention).
        let wire = op.code();
        let raw = self.table.insert(Shadow { op, wire, grants }).map_err(|_| SubmitError::Full)?;
        req.id = raw ^ self.salt;
        if let Some(slot) = IdTable::<Shadow, N>::index_of(raw).and_then(|k| self.live.get_mut(k)) {
            *slot = Some(req.id);
        }
        Ok(req)
    }

    /// Check a response copied out of the ring and finish its request.
    /// Checks, in order: the id is in flight, the operation is the
    /// request's, the status is known.
    ///
    /// # Errors
    /// [`BadResponse`]; the table is unchanged.
    pub fn complete(&mut self, rsp: Response) -> Result<Completed, BadResponse> {
        let id = rsp.id;
        let raw = id ^ self.salt;
        let Some(shadow) = self.table.get(raw).copied() else {
            // Not in flight. `complete` on such an id changes nothing and
            // tells the two cases apart.
            return Err(match self.table.complete(raw) {
                Err(IdError::Unknown) => BadResponse::UnknownId { id },
                _ => BadResponse::NotInFlight { id },
            });
        };
        if rsp.operation != shadow.wire {
            return Err(BadResponse::OperationMismatch { id, expected: shadow.wire, got: rsp.operation });
        }
        let status = Status::from_code(rsp.status).ok_or(BadResponse::BadStatus { id, status: rsp.status })?;
        // In flight (checked above), so this succeeds; map a failure anyway.
        self.table.complete(raw).map_err(|_| BadResponse::NotInFlight { id })?;
        if let Some(slot) = IdTable::<Shadow, N>::index_of(raw).and_then(|k| self.live.get_mut(k)) {
            *slot = None;
        }
        Ok(Completed { id, op: shadow.op, status, grants: shadow.grants })
    }

    /// Take one request still in flight, for teardown (the ring is gone or
    /// the back broke the protocol): `None` once the table is empty. Call
    /// until `None` and end access to each one's grants (rule G1).
    pub fn abandon_next(&mut self) -> Option<Abandoned> {
        let id = self.live.iter_mut().find_map(Option::take)?;
        let shadow = self.table.complete(id ^ self.salt).ok()?;
        Some(Abandoned { id, op: shadow.op, grants: shadow.grants })
    }
}

error_impls! {
    BuildError => "cannot build block request",
    SubmitError => "cannot submit block request",
    BadRequest => "invalid block request",
    BadResponse => "invalid block response",
}

pub mod stream;

#[cfg(test)]
mod tests;
