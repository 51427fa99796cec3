//! The network protocol: Xen's `io/netif.h` transmit and receive rings
//! over `ring-protocol` request/response rings, with the back's frame
//! assembly and validation and the front's shadow tables.
//!
//! A network connection has two rings, one page each:
//! - the **tx** ring carries frames the guest sends: the front posts
//!   [`TxRequest`]s naming granted pages that hold the frame, the back
//!   copies the frame out and answers every request with a [`TxResponse`];
//! - the **rx** ring carries frames for the guest: the front posts empty
//!   granted pages as [`RxRequest`]s, the back copies a frame into one or
//!   more of them and answers each with an [`RxResponse`] giving the
//!   length it wrote.
//!
//! # Wire layout
//! Byte for byte Xen's x86-64 layout (little-endian), sizes and offsets
//! const-asserted below:
//!
//! | type | bytes | fields (offset) |
//! |------|-------|-----------------|
//! | [`TxRequest`]  | 12 | `gref` 0, `offset` 4, `flags` 6, `id` 8, `size` 10 |
//! | [`TxResponse`] | 4  | `id` 0, `status` 2 |
//! | [`RxRequest`]  | 8  | `id` 0, `_pad` 2, `gref` 4 |
//! | [`RxResponse`] | 8  | `id` 0, `offset` 2, `flags` 4, `status` 6 |
//!
//! None of them has implicit padding (zerocopy's derives refuse it). A
//! one-page ring holds 256 slots each way ([`TX_RING_SLOTS`],
//! [`RX_RING_SLOTS`]), as Xen's `NET_TX_RING_SIZE` / `NET_RX_RING_SIZE`.
//!
//! A frame sent on the tx ring takes one request per page piece, chained
//! with [`tx_flags::MORE_DATA`]: the **first** request's `size` is the
//! length of the whole frame, each following request's `size` the length
//! of its own piece, so the first piece is `size` minus the others (Xen's
//! rule). The first piece holds at least the Ethernet header
//! ([`ETH_HLEN`] bytes, Linux netback's rule). On the rx ring every
//! response's `status` is the length of its own piece, chained with
//! [`rx_flags::MORE_DATA`]; a negative `status` is an error.
//!
//! # Limits
//! - [`MAX_SLOTS_PER_FRAME`] = 18: slots one frame may take on either ring
//!   (Xen's `XEN_NETIF_NR_SLOTS_MIN`, which every Xen back accepts). A
//!   frame of [`MAX_FRAME_LEN`] bytes needs at most 2 pages when it is
//!   contiguous; 18 leaves room for a front that gathers a frame from
//!   scattered pieces, and bounds the state one frame costs the back.
//! - [`MAX_FRAME_LEN`] = 1522 bytes: an Ethernet frame with one 802.1Q tag
//!   (14 header + 4 tag + 1500 payload), without the FCS, which neither
//!   side sends. [`MIN_FRAME_LEN`] = [`ETH_HLEN`] = 14: a frame holds at
//!   least its Ethernet header. Short frames are not padded to 60 bytes
//!   here; that is the NIC's business.
//! - No extra-info slots: Ringfence backs advertise no `feature-gso-*`
//!   (nor `feature-multicast-control`), so a front never has a reason to
//!   set [`tx_flags::EXTRA_INFO`]. The back refuses a request that sets it
//!   ([`BadTxRequest::ExtraInfo`]) and reads the next slot as an ordinary
//!   request; the front refuses [`rx_flags::EXTRA_INFO`] and
//!   [`rx_flags::GSO_PREFIX`] as unknown flags.
//!
//! # Who writes what
//! - The **front** writes every field of [`TxRequest`] (built by
//!   [`TxInflight::submit_frame`]) and of [`RxRequest`] (built by
//!   [`RxInflight::post`]). The ids are the front's; the back only echoes
//!   them.
//! - The **back** writes every field of [`TxResponse`]
//!   ([`ValidTxFrame::responses`], [`TxRefused::responses`]) and of
//!   [`RxResponse`] ([`RxPlacement::response`], [`RxPlacement::failed`]).
//! - `RxRequest::_pad` is written by nobody in particular: a Linux netfront
//!   leaves there the `offset` of the response that last used the slot.
//!   Our front writes zero; the back never reads it.
//!
//! # Where validation happens
//! Both peers are hostile to each other. The ring copies each slot once
//! (ring-protocol R6), so nothing can change after it was checked
//! (XSA-155). Then:
//! - **back, tx**: a [`TxRequest`] becomes part of a frame the back sends
//!   on only through [`TxAssembler::push`], which returns a
//!   [`ValidTxFrame`] (no other constructor) or a [`TxRefused`] naming the
//!   first check that failed and the ids to answer. Check order in
//!   [`TxAssembler::push`]'s docs.
//! - **back, rx**: an [`RxRequest`] has nothing to check that this crate
//!   can check: its `id` is opaque and echoed, and its `gref` is an
//!   allegation to the grant table, checked by the grant copy that fills
//!   it (a failed copy is answered with [`RxPlacement::failed`]). The back
//!   reads a posted request only through [`RxWriter::place`], which never
//!   reads `_pad`. The back's own frame length is checked by
//!   [`RxWriter::new`].
//! - **front**: a response becomes a finished request only through
//!   [`TxInflight::complete`] / [`RxInflight::complete`], which check the
//!   id against the front's shadow table and every other field against
//!   what the front recorded and the protocol's limits (the hardening
//!   Linux's netfront got against malicious backends in 2021, "don't trust
//!   the backend response data blindly": the front keeps its own copy of
//!   every request, reads each response once, and trusts nothing the back
//!   wrote). Both leave their table exactly as it was on every error.
//!
//! # Ids
//! Wire ids are 16 bits. Both front tables take them from ring-protocol's
//! [`IdTable`], whose ids are `generation << b | index` with
//! `b = ceil(log2 N)` (its documented format): the wire id is the low 16
//! bits, XORed with a per-connection salt. With `N` = 256 that is 8 bits
//! of index and the low 8 bits of the generation, so a duplicate answer is
//! always caught ([`BadResponse::NotInFlight`]), and a replay of an
//! earlier use of the same index is caught unless exactly a multiple of
//! 256 uses have passed since. A replay that slips through names a request
//! that is in flight, which a hostile back could answer anyway: it gains
//! nothing. The table keeps the full id of each index in flight; a wire id
//! is never used to index memory without that check.
//!
//! # Grants (the front's rule G1)
//! Every completed, dropped or abandoned request gives back its grant
//! reference. The front must end the back's access to it before it reuses
//! the page, and for rx before it reads the frame; a grant the back still
//! has mapped is quarantined with its page and the back treated as broken
//! (as in [`blkif`](crate::blkif#grants-the-fronts-rule-g1)).
//!
//! Any [`BadResponse`] means the back broke the protocol: poison the ring
//! and disconnect, then release every buffer with
//! [`TxInflight::abandon_next`] / [`RxInflight::abandon_next`].
//!
//! # Example: a frame through both rings
//! ```
//! use split_drivers::netif::{
//!     RxFlags, RxInflight, RxStep, RxWriter, TxAssembler, TxFlags, TxInflight, TxPiece, TxStatus, TxStep,
//!     RX_RING_SLOTS, TX_RING_SLOTS,
//! };
//!
//! // Front: a 1000-byte frame, 600 bytes at the end of page 7, 400 at the start of page 8.
//! let mut tx = TxInflight::<TX_RING_SLOTS>::with_salt(0x5eed);
//! let pieces = [TxPiece { gref: 7, offset: 3496, len: 600 }, TxPiece { gref: 8, offset: 0, len: 400 }];
//! let reqs = tx.submit_frame(&pieces, TxFlags::default())?;
//! assert_eq!((reqs.as_slice()[0].size, reqs.as_slice()[1].size), (1000, 400));
//!
//! // Back: each request copied out of the ring goes to the assembler.
//! let mut asm = TxAssembler::new();
//! assert!(matches!(asm.push(&reqs.as_slice()[0]), TxStep::NeedMore));
//! let TxStep::Frame(frame) = asm.push(&reqs.as_slice()[1]) else { panic!("valid") };
//! assert_eq!(frame.len(), 1000);
//! assert_eq!(frame.slots()[0].range(), 3496..4096);
//! // ... grant-copy the pieces out, hand the frame to the bridge, then answer:
//! for rsp in frame.responses(TxStatus::Okay) {
//!     let done = tx.complete(rsp)?; // front: checked against its own record
//!     assert_eq!(done.status, TxStatus::Okay);
//! }
//! assert!(tx.complete(frame.responses(TxStatus::Okay).next().unwrap()).is_err()); // twice: refused
//!
//! // Rx: the front posts page 9, the back writes a 60-byte frame into it.
//! let mut rx = RxInflight::<RX_RING_SLOTS>::with_salt(0xcafe);
//! let posted = rx.post(9)?;
//! let mut writer = RxWriter::new(60, 0, RxFlags::default())?;
//! let place = writer.place(&posted).expect("one slot");
//! assert_eq!((place.gref(), place.range()), (9, 0..60));
//! // ... grant-copy the frame into `place.gref()` at `place.range()`, then:
//! let RxStep::Frame(got) = rx.complete(place.response())? else { panic!("a whole frame") };
//! assert_eq!((got.len(), got.chunks()[0].gref), (60, 9));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::mem::{offset_of, size_of};

use ring_protocol::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use ring_protocol::{IdError, IdTable};

/// Bytes in a granted page.
pub const PAGE_SIZE: usize = ring_protocol::PAGE_SIZE;
/// Bytes of an Ethernet header (destination, source, ethertype).
pub const ETH_HLEN: usize = 14;
/// The shortest frame either side accepts: an Ethernet header.
pub const MIN_FRAME_LEN: usize = ETH_HLEN;
/// The longest frame either side accepts: 1522 bytes, an Ethernet frame
/// with one VLAN tag and a 1500-byte payload, without the FCS.
pub const MAX_FRAME_LEN: usize = 1522;
/// Ring slots one frame may take, on either ring (Xen's
/// `XEN_NETIF_NR_SLOTS_MIN`).
pub const MAX_SLOTS_PER_FRAME: usize = 18;
/// Slots in a one-page tx ring (256, as Xen's `NET_TX_RING_SIZE`).
pub const TX_RING_SLOTS: usize = ring_protocol::ring_capacity::<TxRequest, TxResponse>(PAGE_SIZE) as usize;
/// Slots in a one-page rx ring (256, as Xen's `NET_RX_RING_SIZE`).
pub const RX_RING_SLOTS: usize = ring_protocol::ring_capacity::<RxRequest, RxResponse>(PAGE_SIZE) as usize;

/// [`TxRequest::flags`] bits (Xen's `NETTXF_*`).
pub mod tx_flags {
    /// The L4 checksum is not computed yet (`NETTXF_csum_blank`): the back
    /// (or the NIC) fills it in.
    pub const CSUM_BLANK: u16 = 1 << 0;
    /// The data was validated (`NETTXF_data_validated`): no need to check
    /// the checksum.
    pub const DATA_VALIDATED: u16 = 1 << 1;
    /// Another request of the same frame follows (`NETTXF_more_data`).
    pub const MORE_DATA: u16 = 1 << 2;
    /// An extra-info slot follows (`NETTXF_extra_info`): refused here.
    pub const EXTRA_INFO: u16 = 1 << 3;
    /// Every bit Xen defines.
    pub const KNOWN: u16 = CSUM_BLANK | DATA_VALIDATED | MORE_DATA | EXTRA_INFO;
}

/// [`RxResponse::flags`] bits (Xen's `NETRXF_*`).
pub mod rx_flags {
    /// The data was validated (`NETRXF_data_validated`).
    pub const DATA_VALIDATED: u16 = 1 << 0;
    /// The L4 checksum is not computed yet (`NETRXF_csum_blank`).
    pub const CSUM_BLANK: u16 = 1 << 1;
    /// Another response of the same frame follows (`NETRXF_more_data`).
    pub const MORE_DATA: u16 = 1 << 2;
    /// An extra-info slot follows (`NETRXF_extra_info`): not negotiated,
    /// refused by the front.
    pub const EXTRA_INFO: u16 = 1 << 3;
    /// A GSO prefix slot (`NETRXF_gso_prefix`): not negotiated, refused.
    pub const GSO_PREFIX: u16 = 1 << 4;
    /// The bits the front accepts.
    pub const KNOWN: u16 = DATA_VALIDATED | CSUM_BLANK | MORE_DATA;
}

/// One page piece of a frame the front sends, written by the front
/// (Xen's `netif_tx_request`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct TxRequest {
    /// Grant reference of the page holding the piece.
    pub gref: u32,
    /// Byte offset of the piece in the page.
    pub offset: u16,
    /// [`tx_flags`].
    pub flags: u16,
    /// Chosen by the front's [`TxInflight`], echoed in the response.
    pub id: u16,
    /// First request of a frame: the frame's length; the others: their
    /// piece's length.
    pub size: u16,
}

/// The back's answer to one [`TxRequest`] (Xen's `netif_tx_response`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct TxResponse {
    /// The request's id.
    pub id: u16,
    /// One of [`TxStatus`]'s codes.
    pub status: i16,
}

/// An empty page the front posts for a frame (Xen's `netif_rx_request`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct RxRequest {
    /// Chosen by the front's [`RxInflight`], echoed in the response.
    pub id: u16,
    /// Written zero by our front, never read by the back (see the
    /// [module docs](self#who-writes-what)).
    pub _pad: u16,
    /// Grant reference of the page, granted writable to the back.
    pub gref: u32,
}

/// The back's answer to one [`RxRequest`] (Xen's `netif_rx_response`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct RxResponse {
    /// The request's id.
    pub id: u16,
    /// Byte offset of the data in the page.
    pub offset: u16,
    /// [`rx_flags`].
    pub flags: u16,
    /// `> 0`: bytes written at `offset`; `< 0`: one of [`RxStatus`]'s
    /// error codes.
    pub status: i16,
}

const _: () = {
    assert!(size_of::<TxRequest>() == 12);
    assert!(offset_of!(TxRequest, gref) == 0);
    assert!(offset_of!(TxRequest, offset) == 4);
    assert!(offset_of!(TxRequest, flags) == 6);
    assert!(offset_of!(TxRequest, id) == 8);
    assert!(offset_of!(TxRequest, size) == 10);

    assert!(size_of::<TxResponse>() == 4);
    assert!(offset_of!(TxResponse, id) == 0);
    assert!(offset_of!(TxResponse, status) == 2);

    assert!(size_of::<RxRequest>() == 8);
    assert!(offset_of!(RxRequest, id) == 0);
    assert!(offset_of!(RxRequest, _pad) == 2);
    assert!(offset_of!(RxRequest, gref) == 4);

    assert!(size_of::<RxResponse>() == 8);
    assert!(offset_of!(RxResponse, id) == 0);
    assert!(offset_of!(RxResponse, offset) == 2);
    assert!(offset_of!(RxResponse, flags) == 4);
    assert!(offset_of!(RxResponse, status) == 6);

    assert!(TX_RING_SLOTS == 256);
    assert!(RX_RING_SLOTS == 256);
    // Every piece length and offset fits the 16-bit wire fields and the
    // i16 status (a frame is shorter than a page, a piece at most a page).
    assert!(MAX_FRAME_LEN <= PAGE_SIZE);
    assert!(PAGE_SIZE <= i16::MAX as usize);
    assert!(MIN_FRAME_LEN <= MAX_FRAME_LEN);
    // A maximal frame fits in the slot limit from any offset.
    assert!(MAX_FRAME_LEN.div_ceil(PAGE_SIZE) < MAX_SLOTS_PER_FRAME);
    assert!(MAX_SLOTS_PER_FRAME <= u8::MAX as usize);
};

/// A tx response status (Xen's `NETIF_RSP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxStatus {
    /// `NETIF_RSP_OKAY` (0): the frame was sent on.
    Okay,
    /// `NETIF_RSP_ERROR` (-1): the request was invalid, or the copy failed.
    Error,
    /// `NETIF_RSP_DROPPED` (-2): a valid frame the back dropped (no room,
    /// link down).
    Dropped,
    /// `NETIF_RSP_NULL` (1): Xen's answer to an extra-info slot. We send
    /// none, so our front refuses it ([`BadResponse::UnexpectedNull`]).
    Null,
}

impl TxStatus {
    /// `NETIF_RSP_OKAY`.
    pub const OKAY: i16 = 0;
    /// `NETIF_RSP_ERROR`.
    pub const ERROR: i16 = -1;
    /// `NETIF_RSP_DROPPED`.
    pub const DROPPED: i16 = -2;
    /// `NETIF_RSP_NULL`.
    pub const NULL: i16 = 1;

    /// The wire code.
    pub const fn code(self) -> i16 {
        match self {
            TxStatus::Okay => Self::OKAY,
            TxStatus::Error => Self::ERROR,
            TxStatus::Dropped => Self::DROPPED,
            TxStatus::Null => Self::NULL,
        }
    }

    /// The status a wire code names, if any (there are exactly four).
    pub const fn from_code(code: i16) -> Option<TxStatus> {
        Some(match code {
            Self::OKAY => TxStatus::Okay,
            Self::ERROR => TxStatus::Error,
            Self::DROPPED => TxStatus::Dropped,
            Self::NULL => TxStatus::Null,
            _ => return None,
        })
    }
}

/// An rx error status: the back filled no data into the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RxStatus {
    /// `NETIF_RSP_ERROR` (-1): the copy into the buffer failed.
    Error,
    /// `NETIF_RSP_DROPPED` (-2): the frame was dropped.
    Dropped,
}

impl RxStatus {
    /// The wire code (negative).
    pub const fn code(self) -> i16 {
        match self {
            RxStatus::Error => TxStatus::ERROR,
            RxStatus::Dropped => TxStatus::DROPPED,
        }
    }

    /// The error status a wire code names, if any.
    pub const fn from_code(code: i16) -> Option<RxStatus> {
        Some(match code {
            TxStatus::ERROR => RxStatus::Error,
            TxStatus::DROPPED => RxStatus::Dropped,
            _ => return None,
        })
    }
}

/// The checksum flags of a tx frame (from its first request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TxFlags {
    /// [`tx_flags::CSUM_BLANK`].
    pub csum_blank: bool,
    /// [`tx_flags::DATA_VALIDATED`].
    pub data_validated: bool,
}

impl TxFlags {
    fn bits(self) -> u16 {
        (if self.csum_blank { tx_flags::CSUM_BLANK } else { 0 })
            | (if self.data_validated { tx_flags::DATA_VALIDATED } else { 0 })
    }

    fn from_bits(bits: u16) -> TxFlags {
        TxFlags { csum_blank: bits & tx_flags::CSUM_BLANK != 0, data_validated: bits & tx_flags::DATA_VALIDATED != 0 }
    }
}

/// The checksum flags of an rx frame (on its first response).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RxFlags {
    /// [`rx_flags::CSUM_BLANK`].
    pub csum_blank: bool,
    /// [`rx_flags::DATA_VALIDATED`].
    pub data_validated: bool,
}

impl RxFlags {
    fn bits(self) -> u16 {
        (if self.csum_blank { rx_flags::CSUM_BLANK } else { 0 })
            | (if self.data_validated { rx_flags::DATA_VALIDATED } else { 0 })
    }

    fn from_bits(bits: u16) -> RxFlags {
        RxFlags { csum_blank: bits & rx_flags::CSUM_BLANK != 0, data_validated: bits & rx_flags::DATA_VALIDATED != 0 }
    }
}

/// Up to [`MAX_SLOTS_PER_FRAME`] values, one per slot of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerSlot<T> {
    items: [T; MAX_SLOTS_PER_FRAME],
    len: u8,
}

impl<T: Copy + Default> PerSlot<T> {
    fn new() -> Self {
        PerSlot { items: [T::default(); MAX_SLOTS_PER_FRAME], len: 0 }
    }

    /// Append; `false` (and nothing stored) when full.
    fn push(&mut self, item: T) -> bool {
        match self.items.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    fn pop(&mut self) -> Option<T> {
        let item = *self.as_slice().last()?;
        self.len -= 1;
        Some(item)
    }
}

impl<T> PerSlot<T> {
    /// The values, in slot order.
    pub fn as_slice(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }

    /// How many.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `offset..offset + len` if it lies in a page.
fn in_page(offset: usize, len: usize) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= PAGE_SIZE)
}

// ---------------------------------------------------------------------------
// Backend, tx: frame assembly and validation.

/// Why [`TxAssembler::push`] refused a frame: the first check that failed
/// (order in [`TxAssembler::push`]). Every variant is answered with
/// [`TxStatus::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadTxRequest {
    /// Check 1: a flag bit Xen does not define.
    UnknownFlags {
        /// The slot of the frame (0 is the first request).
        slot: u8,
        /// The flags received.
        flags: u16,
    },
    /// Check 2: [`tx_flags::EXTRA_INFO`] (not negotiated).
    ExtraInfo {
        /// The slot.
        slot: u8,
    },
    /// Check 3: `size` is zero.
    EmptySlot {
        /// The slot.
        slot: u8,
    },
    /// Check 4 (first slot): the frame is shorter than [`MIN_FRAME_LEN`].
    FrameTooShort {
        /// The first request's `size`.
        len: u16,
    },
    /// Check 4 (first slot): the frame is longer than [`MAX_FRAME_LEN`].
    FrameTooLong {
        /// The first request's `size`.
        len: u16,
    },
    /// Check 5: the piece passes the end of its page (for the first slot:
    /// its offset is past the page, or, at the end, its own piece passes
    /// the end).
    BeyondPage {
        /// The slot.
        slot: u8,
        /// Its offset.
        offset: u16,
        /// Its piece's length.
        len: u16,
    },
    /// Check 6: the following slots' sizes add up to more than the frame
    /// (the first request's `size`).
    ChunksExceedFrame {
        /// The frame's length.
        frame_len: u16,
        /// The following slots' sizes so far.
        chunks: u32,
    },
    /// Check 7: [`tx_flags::MORE_DATA`] on the
    /// [`MAX_SLOTS_PER_FRAME`]-th slot: the front never ended the chain
    /// within the limit.
    TooManySlots,
    /// End check 8: the first slot's own piece (the frame less the other
    /// pieces) is shorter than an Ethernet header.
    HeaderNotInFirstSlot {
        /// The first slot's piece length.
        first_len: u16,
    },
}

impl BadTxRequest {
    /// The status to answer each of the frame's requests with.
    pub const fn status(&self) -> TxStatus {
        TxStatus::Error
    }
}

/// One page piece of a [`ValidTxFrame`]: `offset + len <= PAGE_SIZE`,
/// `len >= 1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValidTxSlot {
    gref: u32,
    offset: u16,
    len: u16,
}

impl ValidTxSlot {
    /// Grant reference of the page (still an allegation to the grant
    /// table: the copy may fail, then answer [`TxStatus::Error`]).
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// Byte offset in the page.
    pub fn offset(&self) -> usize {
        usize::from(self.offset)
    }

    /// Bytes (`>= 1`; `offset() + len() <= PAGE_SIZE`).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a piece holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `offset()..offset() + len()`, inside the page.
    pub fn range(&self) -> core::ops::Range<usize> {
        self.offset()..self.offset() + self.len()
    }
}

/// A frame that passed [`TxAssembler::push`]: the only way to get one.
/// Its pieces lie in their pages and add up to [`ValidTxFrame::len`]
/// (`MIN_FRAME_LEN..=MAX_FRAME_LEN`), the first holding the Ethernet
/// header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidTxFrame {
    slots: PerSlot<ValidTxSlot>,
    ids: PerSlot<u16>,
    len: u16,
    flags: TxFlags,
}

impl ValidTxFrame {
    /// The pieces, in frame order (`1..=MAX_SLOTS_PER_FRAME`).
    pub fn slots(&self) -> &[ValidTxSlot] {
        self.slots.as_slice()
    }

    /// The frame's length: the sum of the pieces.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a frame holds at least an Ethernet header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The checksum flags (of the first request).
    pub fn flags(&self) -> TxFlags {
        self.flags
    }

    /// The front's ids, one per slot, to answer.
    pub fn ids(&self) -> &[u16] {
        self.ids.as_slice()
    }

    /// The responses to the frame's requests, one per slot, all with
    /// `status` ([`TxStatus::Okay`], or [`TxStatus::Dropped`] /
    /// [`TxStatus::Error`] if the back could not send it on).
    pub fn responses(&self, status: TxStatus) -> impl Iterator<Item = TxResponse> + '_ {
        let status = status.code();
        self.ids().iter().map(move |&id| TxResponse { id, status })
    }
}

/// A refused frame: the first check that failed, and every request the
/// back took for it, to be answered with [`TxStatus::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRefused {
    error: BadTxRequest,
    ids: PerSlot<u16>,
}

impl TxRefused {
    /// Why.
    pub fn error(&self) -> BadTxRequest {
        self.error
    }

    /// The ids of every request taken for the frame (`1..=MAX_SLOTS_PER_FRAME`).
    pub fn ids(&self) -> &[u16] {
        self.ids.as_slice()
    }

    /// One [`TxStatus::Error`] response per id.
    pub fn responses(&self) -> impl Iterator<Item = TxResponse> + '_ {
        let status = self.error.status().code();
        self.ids().iter().map(move |&id| TxResponse { id, status })
    }
}

/// What [`TxAssembler::push`] made of one more request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStep {
    /// The frame goes on: take the next request off the ring and push it
    /// (its id is held for the frame's answer).
    NeedMore,
    /// A whole, valid frame.
    Frame(ValidTxFrame),
    /// A whole, refused frame.
    Refused(TxRefused),
}

/// The back's tx frame assembler: takes the requests copied out of the tx
/// ring one at a time and turns each chain into a [`ValidTxFrame`] or a
/// [`TxRefused`].
///
/// Every request pushed is named, exactly once, in the `ids` of the
/// [`TxStep::Frame`] or [`TxStep::Refused`] that ends its chain, so the
/// back answers every request it took with exactly one response (Xen's
/// rule; otherwise the front leaks the id and the grant). A chain ends
/// at a request without [`tx_flags::MORE_DATA`], or at the
/// [`MAX_SLOTS_PER_FRAME`]-th request whatever its flags
/// ([`BadTxRequest::TooManySlots`]): the request after that starts a new
/// frame. A Xen back treats that case as fatal and disconnects the front;
/// a back may do the same on [`TooManySlots`](BadTxRequest::TooManySlots).
///
/// Memory is fixed (one frame's slots and ids); work per push is constant.
/// It never panics.
#[derive(Clone, Debug)]
pub struct TxAssembler {
    slots: PerSlot<ValidTxSlot>,
    ids: PerSlot<u16>,
    /// The first request's size (the frame's length).
    frame_len: u16,
    flags: TxFlags,
    /// Sum of the following slots' sizes.
    chunks: u32,
    /// First failure of this frame, if any: the rest of the chain is only
    /// taken (its ids held), not checked.
    error: Option<BadTxRequest>,
}

impl Default for TxAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl TxAssembler {
    /// No frame in progress.
    pub fn new() -> Self {
        TxAssembler {
            slots: PerSlot::new(),
            ids: PerSlot::new(),
            frame_len: 0,
            flags: TxFlags::default(),
            chunks: 0,
            error: None,
        }
    }

    /// Whether no frame is in progress (the last push ended a chain).
    pub fn is_idle(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids taken for the frame in progress (for teardown: they have no
    /// answer yet).
    pub fn pending_ids(&self) -> &[u16] {
        self.ids.as_slice()
    }

    /// Take one request copied out of the ring: the one place a front's tx
    /// request becomes trusted.
    ///
    /// Checks, per request in slot order, the first failure winning (later
    /// requests of a failed chain are taken but not checked):
    /// 1. `flags` has only [`tx_flags::KNOWN`] bits ([`BadTxRequest::UnknownFlags`]);
    /// 2. not [`tx_flags::EXTRA_INFO`] ([`BadTxRequest::ExtraInfo`]);
    /// 3. `size > 0` ([`BadTxRequest::EmptySlot`]);
    /// 4. first slot: `MIN_FRAME_LEN <= size <= MAX_FRAME_LEN`
    ///    ([`BadTxRequest::FrameTooShort`], [`BadTxRequest::FrameTooLong`]);
    /// 5. first slot: `offset < PAGE_SIZE`; following slots:
    ///    `offset + size <= PAGE_SIZE` ([`BadTxRequest::BeyondPage`]);
    /// 6. following slots: their sizes add up to at most the frame's
    ///    length ([`BadTxRequest::ChunksExceedFrame`]);
    /// 7. no [`tx_flags::MORE_DATA`] on the [`MAX_SLOTS_PER_FRAME`]-th
    ///    slot ([`BadTxRequest::TooManySlots`]).
    ///
    /// Then, at the end of a chain whose requests all passed:
    ///
    /// 8. the first slot's own piece, the frame's length less the others,
    ///    holds at least [`ETH_HLEN`] bytes
    ///    ([`BadTxRequest::HeaderNotInFirstSlot`]) and lies in its page
    ///    ([`BadTxRequest::BeyondPage`] with `slot` 0).
    ///
    /// Only the first request's checksum flags count.
    pub fn push(&mut self, req: &TxRequest) -> TxStep {
        let slot = self.ids.len();
        // There is room: a chain ends (and the assembler resets) at its
        // MAX_SLOTS_PER_FRAME-th request at the latest.
        let _ = self.ids.push(req.id);
        let more = req.flags & tx_flags::MORE_DATA != 0;
        if self.error.is_none() {
            if let Err(e) = self.check(slot, req) {
                self.error = Some(e);
            }
        }
        let at_limit = self.ids.len() >= MAX_SLOTS_PER_FRAME;
        if more && !at_limit {
            return TxStep::NeedMore;
        }
        if more && self.error.is_none() {
            self.error = Some(BadTxRequest::TooManySlots);
        }
        if self.error.is_none() {
            if let Err(e) = self.finish_first_slot() {
                self.error = Some(e);
            }
        }
        let ids = self.ids;
        let step = match self.error {
            Some(error) => TxStep::Refused(TxRefused { error, ids }),
            None => TxStep::Frame(ValidTxFrame { slots: self.slots, ids, len: self.frame_len, flags: self.flags }),
        };
        *self = TxAssembler::new();
        step
    }

    /// Checks 1 to 6 of request `slot` of the frame; records its piece.
    fn check(&mut self, slot: usize, req: &TxRequest) -> Result<(), BadTxRequest> {
        // slot < MAX_SLOTS_PER_FRAME <= u8::MAX.
        let slot_u8 = slot as u8;
        if req.flags & !tx_flags::KNOWN != 0 {
            return Err(BadTxRequest::UnknownFlags { slot: slot_u8, flags: req.flags });
        }
        if req.flags & tx_flags::EXTRA_INFO != 0 {
            return Err(BadTxRequest::ExtraInfo { slot: slot_u8 });
        }
        if req.size == 0 {
            return Err(BadTxRequest::EmptySlot { slot: slot_u8 });
        }
        let (offset, size) = (usize::from(req.offset), usize::from(req.size));
        if slot == 0 {
            if size < MIN_FRAME_LEN {
                return Err(BadTxRequest::FrameTooShort { len: req.size });
            }
            if size > MAX_FRAME_LEN {
                return Err(BadTxRequest::FrameTooLong { len: req.size });
            }
            if offset >= PAGE_SIZE {
                return Err(BadTxRequest::BeyondPage { slot: 0, offset: req.offset, len: req.size });
            }
            self.frame_len = req.size;
            self.flags = TxFlags::from_bits(req.flags);
            // The length is fixed at the end of the chain.
            let _ = self.slots.push(ValidTxSlot { gref: req.gref, offset: req.offset, len: 0 });
            return Ok(());
        }
        if !in_page(offset, size) {
            return Err(BadTxRequest::BeyondPage { slot: slot_u8, offset: req.offset, len: req.size });
        }
        self.chunks += u32::from(req.size);
        if self.chunks > u32::from(self.frame_len) {
            return Err(BadTxRequest::ChunksExceedFrame { frame_len: self.frame_len, chunks: self.chunks });
        }
        let _ = self.slots.push(ValidTxSlot { gref: req.gref, offset: req.offset, len: req.size });
        Ok(())
    }

    /// Check 8: size the first slot's piece.
    fn finish_first_slot(&mut self) -> Result<(), BadTxRequest> {
        // chunks <= frame_len (check 6), so this fits a u16.
        let first_len = (u32::from(self.frame_len) - self.chunks.min(u32::from(self.frame_len))) as u16;
        if usize::from(first_len) < ETH_HLEN {
            return Err(BadTxRequest::HeaderNotInFirstSlot { first_len });
        }
        let first = self.slots.items[0];
        if !in_page(usize::from(first.offset), usize::from(first_len)) {
            return Err(BadTxRequest::BeyondPage { slot: 0, offset: first.offset, len: first_len });
        }
        self.slots.items[0].len = first_len;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Backend, rx: placing a frame into posted buffers.

/// Why [`RxWriter::new`] refused a frame (the back's own data, checked
/// before it touches the ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxFrameError {
    /// Shorter than [`MIN_FRAME_LEN`].
    TooShort {
        /// The length given.
        len: usize,
    },
    /// Longer than [`MAX_FRAME_LEN`].
    TooLong {
        /// The length given.
        len: usize,
    },
    /// The first offset is not inside a page.
    OffsetBeyondPage {
        /// The offset given.
        offset: usize,
    },
}

/// Where one slot of an rx frame goes: `len` bytes of the frame at
/// `offset` of the page granted as `gref`, and the response that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxPlacement {
    id: u16,
    gref: u32,
    offset: u16,
    len: u16,
    flags: u16,
    frame_offset: usize,
}

impl RxPlacement {
    /// Grant reference of the front's page (an allegation to the grant
    /// table: if the copy fails, answer with [`RxPlacement::failed`]).
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// Bytes of the page to fill: `offset..offset + len`, inside the page.
    pub fn range(&self) -> core::ops::Range<usize> {
        usize::from(self.offset)..usize::from(self.offset) + usize::from(self.len)
    }

    /// Bytes of the frame that go there.
    pub fn frame_range(&self) -> core::ops::Range<usize> {
        self.frame_offset..self.frame_offset + usize::from(self.len)
    }

    /// Whether more slots of the frame follow.
    pub fn more_data(&self) -> bool {
        self.flags & rx_flags::MORE_DATA != 0
    }

    /// The response once the bytes are copied.
    pub fn response(&self) -> RxResponse {
        // len <= PAGE_SIZE <= i16::MAX (const-asserted).
        RxResponse { id: self.id, offset: self.offset, flags: self.flags, status: self.len as i16 }
    }

    /// The response when the copy failed (or the frame is dropped): the
    /// error status, the chain's flags kept so the front still finds the
    /// frame's end.
    pub fn failed(&self, status: RxStatus) -> RxResponse {
        RxResponse { id: self.id, offset: 0, flags: self.flags & rx_flags::MORE_DATA, status: status.code() }
    }
}

/// The back's rx placement of one frame into the front's posted buffers,
/// one [`RxRequest`] per slot.
///
/// The frame starts at `first_offset` of the first buffer (0 usually; 2
/// aligns the IP header) and continues at offset 0 of each next buffer.
/// Check [`RxWriter::slots`] against the requests posted before popping
/// any: a frame that does not fit is dropped before it takes a buffer (as
/// Xen's netback waits for `xenvif_rx_ring_slots_available`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxWriter {
    len: usize,
    done: usize,
    offset: usize,
    flags: RxFlags,
    placed: usize,
    slots: usize,
}

impl RxWriter {
    /// Plan a frame of `len` bytes starting `first_offset` bytes into the
    /// first buffer.
    ///
    /// # Errors
    /// [`RxFrameError`]: the length is outside
    /// `MIN_FRAME_LEN..=MAX_FRAME_LEN`, or the offset is not in a page.
    pub fn new(len: usize, first_offset: usize, flags: RxFlags) -> Result<RxWriter, RxFrameError> {
        if len < MIN_FRAME_LEN {
            return Err(RxFrameError::TooShort { len });
        }
        if len > MAX_FRAME_LEN {
            return Err(RxFrameError::TooLong { len });
        }
        if first_offset >= PAGE_SIZE {
            return Err(RxFrameError::OffsetBeyondPage { offset: first_offset });
        }
        // At most 2 <= MAX_SLOTS_PER_FRAME (const-asserted).
        let slots = (first_offset + len).div_ceil(PAGE_SIZE);
        Ok(RxWriter { len, done: 0, offset: first_offset, flags, placed: 0, slots })
    }

    /// Requests the frame takes in all (`1..=MAX_SLOTS_PER_FRAME`).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Requests it still needs.
    pub fn remaining_slots(&self) -> usize {
        self.slots - self.placed
    }

    /// Place the next piece of the frame into the buffer `req` posts (an
    /// allegation: its id is echoed, its gref goes to the grant copy, its
    /// `_pad` is not read); `None`, and `req` not used, once the whole
    /// frame is placed.
    pub fn place(&mut self, req: &RxRequest) -> Option<RxPlacement> {
        if self.done >= self.len {
            return None;
        }
        let len = (self.len - self.done).min(PAGE_SIZE - self.offset);
        let last = self.done + len == self.len;
        let mut flags = if self.placed == 0 { self.flags.bits() } else { 0 };
        if !last {
            flags |= rx_flags::MORE_DATA;
        }
        let placement = RxPlacement {
            id: req.id,
            gref: req.gref,
            // Both below PAGE_SIZE + 1 <= u16::MAX.
            offset: self.offset as u16,
            len: len as u16,
            flags,
            frame_offset: self.done,
        };
        self.done += len;
        self.offset = 0;
        self.placed += 1;
        Some(placement)
    }
}

// ---------------------------------------------------------------------------
// Frontend: 16-bit wire ids over an IdTable.

/// The front's ids: an [`IdTable`] whose ids go on the wire as 16 bits
/// (see the [module docs](self#ids)).
struct WireIds<T, const N: usize> {
    table: IdTable<T, N>,
    /// The full id of each index while it is in flight.
    issued: [u64; N],
    salt: u16,
}

/// Why a wire id names nothing in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WireIdError {
    Unknown,
    NotInFlight,
}

impl<T, const N: usize> WireIds<T, N> {
    /// Index bits of an [`IdTable`] id (its documented format).
    const INDEX_BITS: u32 = if N <= 1 { 0 } else { usize::BITS - (N - 1).leading_zeros() };
    const INDEX_MASK: u16 = {
        assert!(N <= 1 << 15, "16-bit wire ids need at least one generation bit");
        ((1u32 << Self::INDEX_BITS) - 1) as u16
    };

    fn new(salt: u16) -> Self {
        WireIds { table: IdTable::new(), issued: [0; N], salt }
    }

    fn free(&self) -> usize {
        N - self.table.in_flight() - self.table.retired()
    }

    fn insert(&mut self, value: T) -> Result<u16, T> {
        let full = self.table.insert(value)?;
        let index = usize::from(full as u16 & Self::INDEX_MASK);
        if let Some(slot) = self.issued.get_mut(index) {
            *slot = full;
        }
        Ok(full as u16 ^ self.salt)
    }

    /// The full id `wire` names, if it is in flight.
    fn lookup(&self, wire: u16) -> Result<u64, WireIdError> {
        let raw = wire ^ self.salt;
        let full = *self.issued.get(usize::from(raw & Self::INDEX_MASK)).ok_or(WireIdError::Unknown)?;
        if full as u16 != raw || self.table.get(full).is_none() {
            return Err(WireIdError::NotInFlight);
        }
        Ok(full)
    }

    fn get(&self, wire: u16) -> Result<&T, WireIdError> {
        let full = self.lookup(wire)?;
        self.table.get(full).ok_or(WireIdError::NotInFlight)
    }

    fn complete(&mut self, wire: u16) -> Result<T, WireIdError> {
        let full = self.lookup(wire)?;
        self.table.complete(full).map_err(|e| match e {
            IdError::Unknown => WireIdError::Unknown,
            IdError::NotInFlight => WireIdError::NotInFlight,
        })
    }

    /// Take any one value in flight, with its wire id. Work: at most `N`.
    fn take_any(&mut self) -> Option<(u16, T)> {
        if self.table.in_flight() == 0 {
            return None;
        }
        let full = *self.issued.iter().find(|&&full| self.table.get(full).is_some())?;
        let value = self.table.complete(full).ok()?;
        Some((full as u16 ^ self.salt, value))
    }
}

/// Why a front table refused a response, in check order. Each means the
/// back broke the protocol; the table is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadResponse {
    /// The id's index is not one of the table's (possible only when `N` is
    /// not a power of two).
    UnknownId {
        /// The id received.
        id: u16,
    },
    /// The id is not in flight: a duplicate answer, or a stale id of an
    /// earlier use of its index.
    NotInFlight {
        /// The id received.
        id: u16,
    },
    /// Tx: the status is not one of the four.
    BadTxStatus {
        /// The id.
        id: u16,
        /// The status received.
        status: i16,
    },
    /// Tx: [`TxStatus::Null`], which answers an extra-info slot; we send
    /// none.
    UnexpectedNull {
        /// The id.
        id: u16,
    },
    /// Rx: a flag bit outside [`rx_flags::KNOWN`] (including the
    /// unnegotiated extra-info and GSO-prefix bits).
    UnknownRxFlags {
        /// The id.
        id: u16,
        /// The flags received.
        flags: u16,
    },
    /// Rx: a negative status other than [`RxStatus`]'s, or 0 (a slot
    /// without data).
    BadRxStatus {
        /// The id.
        id: u16,
        /// The status received.
        status: i16,
    },
    /// Rx: the offset is not inside the page.
    OffsetBeyondPage {
        /// The id.
        id: u16,
        /// The offset received.
        offset: u16,
    },
    /// Rx: `offset + length` passes the end of the posted page.
    LengthBeyondPage {
        /// The id.
        id: u16,
        /// The offset received.
        offset: u16,
        /// The length (status) received.
        len: u16,
    },
    /// Rx: the frame so far is longer than [`MAX_FRAME_LEN`].
    FrameTooLong {
        /// The id of the response that made it so.
        id: u16,
        /// The frame's length with this response.
        len: usize,
    },
    /// Rx: [`rx_flags::MORE_DATA`] on the frame's
    /// [`MAX_SLOTS_PER_FRAME`]-th response.
    ChainTooLong {
        /// The id.
        id: u16,
    },
    /// Rx: a frame (with no error status) ended shorter than
    /// [`MIN_FRAME_LEN`].
    FrameTooShort {
        /// The id of its last response.
        id: u16,
        /// The frame's length.
        len: usize,
    },
}

/// Why a front table refused to issue requests; nothing is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Not enough free ids for the frame (or buffer): wait for completions.
    Full,
    /// [`TxInflight::submit_frame`]: no pieces, or more than
    /// [`MAX_SLOTS_PER_FRAME`].
    BadPieceCount {
        /// Pieces given.
        pieces: usize,
    },
    /// Piece `index` is empty or passes the end of its page.
    BadPiece {
        /// Which piece.
        index: usize,
    },
    /// The first piece is shorter than an Ethernet header (the back
    /// requires the header in the first slot).
    HeaderNotInFirstPiece,
    /// The pieces add up to less than [`MIN_FRAME_LEN`] or more than
    /// [`MAX_FRAME_LEN`].
    BadFrameLength {
        /// Their sum.
        len: usize,
    },
}

// ---------------------------------------------------------------------------
// Frontend, tx.

/// A piece of a frame to send: `len` bytes at `offset` of the page
/// granted (read-only) as `gref`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxPiece {
    /// Grant reference of the page.
    pub gref: u32,
    /// Byte offset in the page.
    pub offset: u16,
    /// Bytes.
    pub len: u16,
}

/// What the tx front saved about one request in flight.
#[derive(Clone, Copy, Debug)]
struct TxShadow {
    gref: u32,
}

/// A tx request the back answered, checked: end access to `gref`
/// (rule G1) before reusing its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxCompleted {
    /// The request's id.
    pub id: u16,
    /// The page's grant, from the front's own record.
    pub gref: u32,
    /// The back's verdict: [`TxStatus::Okay`], [`TxStatus::Error`] or
    /// [`TxStatus::Dropped`] (never [`TxStatus::Null`]).
    pub status: TxStatus,
}

/// The tx front's shadow table: up to `N` requests in flight (use
/// [`TX_RING_SLOTS`] for a one-page ring), each with the grant of its
/// page. Ids as in the [module docs](self#ids). Work per call is bounded
/// by [`MAX_SLOTS_PER_FRAME`] (submit) or `N` (abandon).
pub struct TxInflight<const N: usize> {
    ids: WireIds<TxShadow, N>,
}

impl<const N: usize> Default for TxInflight<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> TxInflight<N> {
    /// An empty table (salt 0).
    pub fn new() -> Self {
        Self::with_salt(0)
    }

    /// An empty table whose wire ids are XORed with `salt` (give each
    /// connection a random one).
    pub fn with_salt(salt: u16) -> Self {
        TxInflight { ids: WireIds::new(salt) }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.ids.table.in_flight()
    }

    /// Ids free: a frame of `n` pieces needs `n`.
    pub fn free(&self) -> usize {
        self.ids.free()
    }

    /// Record a frame made of `pieces` (in frame order) and return its
    /// requests, ready for the ring: one per piece, the first with the
    /// frame's length as `size` and `flags`, all but the last with
    /// [`tx_flags::MORE_DATA`]. All or nothing.
    ///
    /// # Errors
    /// [`SubmitError`], checked in this order: piece count, each piece
    /// (non-empty, in its page), the first piece holds an Ethernet header,
    /// the frame's length, free ids. Nothing is recorded.
    pub fn submit_frame(&mut self, pieces: &[TxPiece], flags: TxFlags) -> Result<PerSlot<TxRequest>, SubmitError> {
        if pieces.is_empty() || pieces.len() > MAX_SLOTS_PER_FRAME {
            return Err(SubmitError::BadPieceCount { pieces: pieces.len() });
        }
        let mut len = 0usize;
        for (index, p) in pieces.iter().enumerate() {
            if p.len == 0 || !in_page(usize::from(p.offset), usize::from(p.len)) {
                return Err(SubmitError::BadPiece { index });
            }
            len += usize::from(p.len);
        }
        if usize::from(pieces[0].len) < ETH_HLEN {
            return Err(SubmitError::HeaderNotInFirstPiece);
        }
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
            return Err(SubmitError::BadFrameLength { len });
        }
        if self.free() < pieces.len() {
            return Err(SubmitError::Full);
        }
        let mut reqs: PerSlot<TxRequest> = PerSlot::new();
        for (index, p) in pieces.iter().enumerate() {
            let more = if index + 1 < pieces.len() { tx_flags::MORE_DATA } else { 0 };
            let (size, bits) = if index == 0 {
                // len <= MAX_FRAME_LEN < u16::MAX.
                (len as u16, flags.bits())
            } else {
                (p.len, 0)
            };
            // Room was checked above; a failure here would leave earlier
            // pieces recorded, so undo them.
            let id = match self.ids.insert(TxShadow { gref: p.gref }) {
                Ok(id) => id,
                Err(_) => {
                    for r in reqs.as_slice() {
                        let _ = self.ids.complete(r.id);
                    }
                    return Err(SubmitError::Full);
                }
            };
            let _ = reqs.push(TxRequest { gref: p.gref, offset: p.offset, flags: bits | more, id, size });
        }
        Ok(reqs)
    }

    /// Check a response copied out of the ring and finish its request.
    /// Checks, in order: the id is in flight, the status is one of the
    /// four, it is not [`TxStatus::Null`].
    ///
    /// # Errors
    /// [`BadResponse`]; the table is unchanged.
    pub fn complete(&mut self, rsp: TxResponse) -> Result<TxCompleted, BadResponse> {
        let id = rsp.id;
        self.ids.get(id).map_err(|e| id_error(e, id))?;
        let status = TxStatus::from_code(rsp.status).ok_or(BadResponse::BadTxStatus { id, status: rsp.status })?;
        if status == TxStatus::Null {
            return Err(BadResponse::UnexpectedNull { id });
        }
        let shadow = self.ids.complete(id).map_err(|e| id_error(e, id))?;
        Ok(TxCompleted { id, gref: shadow.gref, status })
    }

    /// Take one request still in flight, for teardown: `(id, gref)`, or
    /// `None` once the table is empty. End access to each gref (rule G1).
    pub fn abandon_next(&mut self) -> Option<(u16, u32)> {
        self.ids.take_any().map(|(id, s)| (id, s.gref))
    }
}

fn id_error(e: WireIdError, id: u16) -> BadResponse {
    match e {
        WireIdError::Unknown => BadResponse::UnknownId { id },
        WireIdError::NotInFlight => BadResponse::NotInFlight { id },
    }
}

// ---------------------------------------------------------------------------
// Frontend, rx.

/// What the rx front saved about one posted buffer.
#[derive(Clone, Copy, Debug)]
struct RxShadow {
    gref: u32,
}

/// One piece of a received frame: `len` bytes at `offset` of the page
/// granted as `gref` (`offset + len <= PAGE_SIZE`, `len >= 1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxChunk {
    /// The buffer's grant, from the front's own record.
    pub gref: u32,
    /// Byte offset of the data in the page.
    pub offset: u16,
    /// Bytes of data.
    pub len: u16,
}

impl RxChunk {
    /// `offset..offset + len`, inside the page.
    pub fn range(&self) -> core::ops::Range<usize> {
        usize::from(self.offset)..usize::from(self.offset) + usize::from(self.len)
    }
}

/// A whole received frame, checked: its chunks lie in their pages and add
/// up to `MIN_FRAME_LEN..=MAX_FRAME_LEN` bytes. End access to every
/// chunk's gref (rule G1) before reading the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxFrame {
    chunks: PerSlot<RxChunk>,
    len: u16,
    flags: RxFlags,
}

impl RxFrame {
    /// The pieces, in frame order.
    pub fn chunks(&self) -> &[RxChunk] {
        self.chunks.as_slice()
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The checksum flags (of the first response).
    pub fn flags(&self) -> RxFlags {
        self.flags
    }
}

/// A received frame with an error status in one of its responses: no
/// data to read; end access to `grefs` (rule G1) and post them again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxDropped {
    /// The buffers of the frame's responses.
    pub grefs: PerSlot<u32>,
    /// The first error status.
    pub status: RxStatus,
}

/// What one good rx response completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxStep {
    /// A slot of a frame that goes on: its buffer is held until the frame
    /// ends.
    More,
    /// The last slot of a good frame.
    Frame(RxFrame),
    /// The last slot of a frame one of whose responses had an error status.
    Dropped(RxDropped),
}

/// The frame being received: responses accepted so far, their buffers
/// already out of the id table.
#[derive(Clone, Copy, Debug)]
struct Partial {
    chunks: PerSlot<RxChunk>,
    len: usize,
    flags: RxFlags,
    error: Option<RxStatus>,
}

impl Partial {
    fn new() -> Self {
        Partial { chunks: PerSlot::new(), len: 0, flags: RxFlags::default(), error: None }
    }
}

/// The rx front's shadow table: up to `N` posted buffers (use
/// [`RX_RING_SLOTS`] for a one-page ring), and the frame being received.
/// Ids as in the [module docs](self#ids). Work per call is constant, or
/// bounded by `N` (abandon).
pub struct RxInflight<const N: usize> {
    ids: WireIds<RxShadow, N>,
    partial: Partial,
}

impl<const N: usize> Default for RxInflight<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RxInflight<N> {
    /// An empty table (salt 0).
    pub fn new() -> Self {
        Self::with_salt(0)
    }

    /// An empty table whose wire ids are XORed with `salt`.
    pub fn with_salt(salt: u16) -> Self {
        RxInflight { ids: WireIds::new(salt), partial: Partial::new() }
    }

    /// Buffers posted and not answered.
    pub fn posted(&self) -> usize {
        self.ids.table.in_flight()
    }

    /// Buffers answered as part of a frame that has not ended yet.
    pub fn held(&self) -> usize {
        self.partial.chunks.len()
    }

    /// Post the whole page granted (writable) as `gref`: the request for
    /// the ring.
    ///
    /// # Errors
    /// [`SubmitError::Full`]: all `N` ids are in use.
    pub fn post(&mut self, gref: u32) -> Result<RxRequest, SubmitError> {
        let id = self.ids.insert(RxShadow { gref }).map_err(|_| SubmitError::Full)?;
        Ok(RxRequest { id, _pad: 0, gref })
    }

    /// Check a response copied out of the ring against the posted buffer
    /// and the frame so far. Checks, in order:
    /// 1. the id is posted ([`BadResponse::UnknownId`], [`BadResponse::NotInFlight`]);
    /// 2. the flags are known ([`BadResponse::UnknownRxFlags`]);
    /// 3. the status is a length `> 0` or one of [`RxStatus`]
    ///    ([`BadResponse::BadRxStatus`]);
    /// 4. with data: `offset < PAGE_SIZE`, `offset + len <= PAGE_SIZE`
    ///    ([`BadResponse::OffsetBeyondPage`], [`BadResponse::LengthBeyondPage`]),
    ///    and the frame so far is at most [`MAX_FRAME_LEN`]
    ///    ([`BadResponse::FrameTooLong`]);
    /// 5. no [`rx_flags::MORE_DATA`] on the frame's
    ///    [`MAX_SLOTS_PER_FRAME`]-th response ([`BadResponse::ChainTooLong`]);
    /// 6. at the end of a frame without an error status: at least
    ///    [`MIN_FRAME_LEN`] bytes ([`BadResponse::FrameTooShort`]).
    ///
    /// An error status ends nothing: the chain's flags still say where the
    /// frame ends, and then the whole frame is [`RxStep::Dropped`].
    ///
    /// # Errors
    /// [`BadResponse`]; the table and the frame so far are unchanged.
    pub fn complete(&mut self, rsp: RxResponse) -> Result<RxStep, BadResponse> {
        let id = rsp.id;
        let shadow = *self.ids.get(id).map_err(|e| id_error(e, id))?;
        if rsp.flags & !rx_flags::KNOWN != 0 {
            return Err(BadResponse::UnknownRxFlags { id, flags: rsp.flags });
        }
        let mut next = self.partial;
        let first = next.chunks.is_empty();
        if rsp.status > 0 {
            // status in 1..=i16::MAX.
            let len = rsp.status as u16;
            if usize::from(rsp.offset) >= PAGE_SIZE {
                return Err(BadResponse::OffsetBeyondPage { id, offset: rsp.offset });
            }
            if !in_page(usize::from(rsp.offset), usize::from(len)) {
                return Err(BadResponse::LengthBeyondPage { id, offset: rsp.offset, len });
            }
            next.len += usize::from(len);
            if next.len > MAX_FRAME_LEN {
                return Err(BadResponse::FrameTooLong { id, len: next.len });
            }
            let _ = next.chunks.push(RxChunk { gref: shadow.gref, offset: rsp.offset, len });
        } else {
            let status = RxStatus::from_code(rsp.status).ok_or(BadResponse::BadRxStatus { id, status: rsp.status })?;
            next.error = next.error.or(Some(status));
            // The buffer is held with the frame, without data.
            let _ = next.chunks.push(RxChunk { gref: shadow.gref, offset: 0, len: 0 });
        }
        if first {
            next.flags = RxFlags::from_bits(rsp.flags);
        }
        let more = rsp.flags & rx_flags::MORE_DATA != 0;
        if more && next.chunks.len() >= MAX_SLOTS_PER_FRAME {
            return Err(BadResponse::ChainTooLong { id });
        }
        if !more && next.error.is_none() && next.len < MIN_FRAME_LEN {
            return Err(BadResponse::FrameTooShort { id, len: next.len });
        }
        // Every check passed: commit.
        self.ids.complete(id).map_err(|e| id_error(e, id))?;
        if more {
            self.partial = next;
            return Ok(RxStep::More);
        }
        self.partial = Partial::new();
        Ok(match next.error {
            Some(status) => {
                let mut grefs = PerSlot::new();
                for c in next.chunks.as_slice() {
                    let _ = grefs.push(c.gref);
                }
                RxStep::Dropped(RxDropped { grefs, status })
            }
            // len in MIN_FRAME_LEN..=MAX_FRAME_LEN.
            None => RxStep::Frame(RxFrame { chunks: next.chunks, len: next.len as u16, flags: next.flags }),
        })
    }

    /// Take one buffer still posted, or held by a frame that did not end,
    /// for teardown: its gref, or `None` once none is left. End access to
    /// each (rule G1).
    pub fn abandon_next(&mut self) -> Option<u32> {
        if let Some(chunk) = self.partial.chunks.pop() {
            return Some(chunk.gref);
        }
        self.partial = Partial::new();
        self.ids.take_any().map(|(_, s)| s.gref)
    }
}

error_impls! {
    BadTxRequest => "invalid net tx request",
    RxFrameError => "cannot place rx frame",
    BadResponse => "invalid net response",
    SubmitError => "cannot submit net request",
}

#[cfg(test)]
mod tests;
