//! Shared-memory layouts (R1, R2, R12): headers, slot arrays and the
//! capacity arithmetic.
//!
//! A ring region is `[header | padding up to the slot alignment | slot array]`.
//! The header is 256 bytes: each direction's index pair has its own 128-byte
//! aligned pair of cache lines. The slot array holds a power-of-two
//! number of slots. Both sides derive the capacity from the *length they
//! mapped*, with [`ring_capacity`] or [`stream_capacity`], never from a value
//! in shared memory, so a peer cannot make the other side index outside its
//! mapping.
//!
//! The header structs below are the layout's documentation and the source of
//! the index offsets; no Rust reference to them is ever formed over shared
//! memory (the endpoints access each index word through its own
//! `&AtomicU32`, R6).

#[cfg(not(loom))]
use core::mem::offset_of;
use core::mem::{align_of, size_of};

#[cfg(not(loom))]
use crate::sync::AtomicU32;

/// A cache line on every x86_64 part we run on.
pub const CACHE_LINE: usize = 64;

/// Distance between the two index lines of a header: two cache lines,
/// not one, because x86's adjacent-line prefetcher fetches 128-byte aligned
/// pairs of lines, so indices 64 bytes apart would still bounce between the
/// two cores together (measured: up to 40% slower at small batches).
pub const INDEX_SPACING: usize = 2 * CACHE_LINE;

/// Size of both headers ([`RingHeader`], [`StreamHeader`]): two index
/// lines, each padded to [`INDEX_SPACING`].
pub const HEADER_SIZE: usize = 2 * INDEX_SPACING;

/// The largest slot count: indices are free-running `u32`, so two of them
/// may differ by at most 2^31 for the wrapping comparisons to be unambiguous.
pub const MAX_CAPACITY: u32 = 1 << 31;

/// Header of a request/response ring (R1, R2): like Xen's `struct
/// *_sring`, but the request and response directions sit on separate cache
/// lines.
///
/// | offset | field       | written by | read by |
/// |--------|-------------|------------|---------|
/// | 0      | `req_prod`  | front      | back    |
/// | 4      | `req_event` | back       | front   |
/// | 128    | `rsp_prod`  | back       | front   |
/// | 132    | `rsp_event` | front      | back    |
///
/// The rest of the header is padding, zeroed by the front at
/// initialisation and otherwise never accessed.
#[cfg(not(loom))]
#[repr(C, align(64))]
pub struct RingHeader {
    /// Requests published by the front (free-running).
    pub req_prod: AtomicU32,
    /// The back wants a notification once `req_prod` passes this value.
    pub req_event: AtomicU32,
    _pad0: [u8; INDEX_SPACING - 8],
    /// Responses published by the back (free-running).
    pub rsp_prod: AtomicU32,
    /// The front wants a notification once `rsp_prod` passes this value.
    pub rsp_event: AtomicU32,
    _pad1: [u8; INDEX_SPACING - 8],
}

/// Header of a one-way stream ring (R12): like Xen's `xencons_interface`
/// for one direction, plus event indices for both sides. Each cache line
/// has a single writer.
///
/// | offset | field        | written by | read by  |
/// |--------|--------------|------------|----------|
/// | 0      | `prod`       | producer   | consumer |
/// | 4      | `cons_event` | producer   | consumer |
/// | 128    | `cons`       | consumer   | producer |
/// | 132    | `prod_event` | consumer   | producer |
#[cfg(not(loom))]
#[repr(C, align(64))]
pub struct StreamHeader {
    /// Elements published by the producer (free-running).
    pub prod: AtomicU32,
    /// The producer wants a notification once `cons` passes this value
    /// (it is waiting for space).
    pub cons_event: AtomicU32,
    _pad0: [u8; INDEX_SPACING - 8],
    /// Elements released by the consumer (free-running).
    pub cons: AtomicU32,
    /// The consumer wants a notification once `prod` passes this value.
    pub prod_event: AtomicU32,
    _pad1: [u8; INDEX_SPACING - 8],
}

/// Byte offsets of the index words. Under loom the header types do not
/// exist (loom atomics are not plain words), so the offsets are spelled out
/// and the non-loom build checks them against the structs.
pub(crate) mod off {
    pub const REQ_PROD: usize = 0;
    pub const REQ_EVENT: usize = 4;
    pub const RSP_PROD: usize = super::INDEX_SPACING;
    pub const RSP_EVENT: usize = super::INDEX_SPACING + 4;
    pub const PROD: usize = 0;
    pub const CONS_EVENT: usize = 4;
    pub const CONS: usize = super::INDEX_SPACING;
    pub const PROD_EVENT: usize = super::INDEX_SPACING + 4;
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<RingHeader>() == HEADER_SIZE);
    assert!(align_of::<RingHeader>() == CACHE_LINE);
    assert!(offset_of!(RingHeader, req_prod) == off::REQ_PROD);
    assert!(offset_of!(RingHeader, req_event) == off::REQ_EVENT);
    assert!(offset_of!(RingHeader, rsp_prod) == off::RSP_PROD);
    assert!(offset_of!(RingHeader, rsp_event) == off::RSP_EVENT);
    assert!(off::RSP_PROD == INDEX_SPACING && off::CONS == INDEX_SPACING);
    assert!(size_of::<StreamHeader>() == HEADER_SIZE);
    assert!(align_of::<StreamHeader>() == CACHE_LINE);
    assert!(offset_of!(StreamHeader, prod) == off::PROD);
    assert!(offset_of!(StreamHeader, cons_event) == off::CONS_EVENT);
    assert!(offset_of!(StreamHeader, cons) == off::CONS);
    assert!(offset_of!(StreamHeader, prod_event) == off::PROD_EVENT);
    assert!(size_of::<AtomicU32>() == 4 && align_of::<AtomicU32>() == 4);
};

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

const fn round_up(x: usize, align: usize) -> usize {
    x.div_ceil(align) * align
}

/// R14: a zero-sized slot type does not compile. The check runs when a
/// generic caller is instantiated (monomorphised) for `T`, so the error is
/// reported by `cargo build` (not `cargo check`) at the caller's type.
#[inline(always)]
pub(crate) const fn assert_slot_type<T>() {
    const {
        assert!(size_of::<T>() != 0, "ring slot types must not be zero-sized (R14)");
    }
}

/// Where the pieces of a region go, for one slot type and one length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of slot 0 from the start of the region.
    pub slots_offset: usize,
    /// Distance between two slots in bytes.
    pub stride: usize,
    /// Number of slots: a power of two, at most [`MAX_CAPACITY`].
    pub capacity: u32,
    /// Alignment the start of the region must have.
    pub align: usize,
}

impl Layout {
    /// The layout for slots of `size`/`align` in `bytes` bytes, or `None` if
    /// not even one slot fits. Never panics: a zero `size` (R14), an `align`
    /// that is not a power of two, or a slot too large to address also give
    /// `None`.
    pub const fn new(size: usize, align: usize, bytes: usize) -> Option<Layout> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let Some(stride) = size.checked_next_multiple_of(align) else {
            return None;
        };
        let Some(slots_offset) = HEADER_SIZE.checked_next_multiple_of(align) else {
            return None;
        };
        match slots_offset.checked_add(stride) {
            Some(first_slot_end) if first_slot_end <= bytes => {}
            _ => return None,
        }
        let fit = (bytes - slots_offset) / stride;
        // Largest power of two <= fit (fit >= 1 here).
        let mut capacity = 1usize << (usize::BITS - 1 - fit.leading_zeros());
        if capacity > MAX_CAPACITY as usize {
            capacity = MAX_CAPACITY as usize;
        }
        Some(Layout { slots_offset, stride, capacity: capacity as u32, align: max(align, CACHE_LINE) })
    }

    /// The layout of a request/response ring of `Req`/`Rsp` in `bytes`.
    ///
    /// A zero-sized `Req` or `Rsp` does not compile (R14):
    /// ```compile_fail,E0080
    /// let _ = ring_protocol::Layout::ring::<u64, [u8; 0]>(4096);
    /// ```
    pub const fn ring<Req, Rsp>(bytes: usize) -> Option<Layout> {
        assert_slot_type::<Req>();
        assert_slot_type::<Rsp>();
        Layout::new(max(size_of::<Req>(), size_of::<Rsp>()), max(align_of::<Req>(), align_of::<Rsp>()), bytes)
    }

    /// The layout of a one-way stream ring of `T` in `bytes`.
    ///
    /// A zero-sized `T` does not compile (R14):
    /// ```compile_fail,E0080
    /// let _ = ring_protocol::Layout::stream::<()>(4096);
    /// ```
    pub const fn stream<T>(bytes: usize) -> Option<Layout> {
        assert_slot_type::<T>();
        Layout::new(size_of::<T>(), align_of::<T>(), bytes)
    }

    /// Bytes used: header, padding and slots (the region may be longer).
    pub const fn bytes(&self) -> usize {
        self.slots_offset + self.capacity as usize * self.stride
    }
}

/// Slots of a `Req`/`Rsp` ring that fit in `bytes` (Xen's `__RING_SIZE`):
/// the largest power of two that fits after the header, or 0 if none does.
///
/// ```
/// use ring_protocol::{ring_capacity, Completion, Descriptor, PAGE_SIZE};
/// // 24-byte slots: (4096 - 256) / 24 = 160, rounded down to 128.
/// assert_eq!(ring_capacity::<Descriptor, Completion>(PAGE_SIZE), 128);
/// ```
///
/// Zero-sized slot types do not compile (R14), in a const context too:
/// ```compile_fail,E0080
/// const CAP: u32 = ring_protocol::ring_capacity::<[u64; 0], u64>(4096);
/// ```
pub const fn ring_capacity<Req, Rsp>(bytes: usize) -> u32 {
    match Layout::ring::<Req, Rsp>(bytes) {
        Some(l) => l.capacity,
        None => 0,
    }
}

/// Bytes a `Req`/`Rsp` ring with `capacity` slots needs (header included).
/// `capacity` should be a power of two; round the result up to whole pages
/// when allocating shared memory.
///
/// Zero-sized slot types do not compile (R14):
/// ```compile_fail,E0080
/// let _ = ring_protocol::ring_bytes::<(), ()>(8);
/// ```
pub const fn ring_bytes<Req, Rsp>(capacity: u32) -> usize {
    assert_slot_type::<Req>();
    assert_slot_type::<Rsp>();
    let size = max(size_of::<Req>(), size_of::<Rsp>());
    let align = max(align_of::<Req>(), align_of::<Rsp>());
    round_up(HEADER_SIZE, align) + capacity as usize * round_up(size, align)
}

/// Elements of a one-way `T` stream that fit in `bytes`, or 0.
pub const fn stream_capacity<T>(bytes: usize) -> u32 {
    match Layout::stream::<T>(bytes) {
        Some(l) => l.capacity,
        None => 0,
    }
}

/// Bytes a one-way `T` stream with `capacity` elements needs.
/// Zero-sized `T` does not compile (R14).
pub const fn stream_bytes<T>(capacity: u32) -> usize {
    assert_slot_type::<T>();
    round_up(HEADER_SIZE, align_of::<T>()) + capacity as usize * size_of::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Line([u8; 64]);

    #[test]
    fn r1_page_capacities() {
        assert_eq!(ring_capacity::<u64, u64>(4096), 256);
        assert_eq!(ring_capacity::<[u8; 24], u64>(4096), 128);
        // 64-byte slots: 60 fit after the header, 32 is the power of two.
        assert_eq!(ring_capacity::<Line, Line>(4096), 32);
        assert_eq!(stream_capacity::<u8>(4096), 2048);
        assert_eq!(ring_capacity::<u64, u64>(HEADER_SIZE), 0);
        assert_eq!(ring_capacity::<u64, u64>(HEADER_SIZE + 8), 1);
    }

    #[test]
    fn r1_multi_page_ring_of_1024_lines() {
        let bytes = ring_bytes::<Line, Line>(1024);
        assert_eq!(bytes, HEADER_SIZE + 64 * 1024);
        assert_eq!(ring_capacity::<Line, Line>(bytes), 1024);
        assert_eq!(ring_capacity::<Line, Line>(bytes - 1), 512);
        let pages = bytes.div_ceil(4096) * 4096;
        assert_eq!(ring_capacity::<Line, Line>(pages), 1024);
    }

    #[test]
    fn r1_slot_stride_and_alignment() {
        // Req of 12 bytes (align 4) and Rsp of 8 bytes (align 8): 16-byte slots.
        let l = Layout::ring::<[u32; 3], u64>(4096).unwrap();
        assert_eq!(l.stride, 16);
        assert_eq!(l.slots_offset, HEADER_SIZE);
        let l = Layout::ring::<Line, u8>(4096).unwrap();
        assert_eq!((l.stride, l.slots_offset, l.align), (64, HEADER_SIZE, 64));
    }

    #[test]
    fn r14_layout_new_refuses_bad_slot_shapes_without_panicking() {
        assert_eq!(Layout::new(0, 1, 4096), None, "zero-sized slots");
        assert_eq!(Layout::new(0, 8, usize::MAX), None);
        assert_eq!(Layout::new(8, 0, 4096), None, "alignment 0");
        assert_eq!(Layout::new(8, 3, 4096), None, "alignment not a power of two");
        assert_eq!(Layout::new(usize::MAX, 8, usize::MAX), None, "stride overflows");
        assert_eq!(Layout::new(8, 1 << (usize::BITS - 1), usize::MAX), None, "offset + stride overflows");
        assert_eq!(Layout::new(usize::MAX - HEADER_SIZE, 1, usize::MAX).map(|l| l.capacity), Some(1));
        assert_eq!(Layout::new(8, 8, 4096).map(|l| l.capacity), Some(256));
    }

    #[test]
    fn r1_capacity_is_capped() {
        let l = Layout::new(1, 1, usize::MAX).unwrap();
        assert_eq!(l.capacity, MAX_CAPACITY);
    }
}
