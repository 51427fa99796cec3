//! [`SharedMem`]: a region of memory shared with another domain.
//!
//! Invariants of a `SharedMem<'a>` (established by [`SharedMem::new`]):
//! - the region `[base, base + len)` stays mapped, readable and writable
//!   for `'a`;
//! - the peer may write any byte of it at any time: no Rust reference to
//!   non-atomic data is ever formed over it (R6). Index words are accessed
//!   only as `AtomicU32`; slots and padding only with volatile reads and
//!   writes of whole values;
//! - `base` is aligned to [`CACHE_LINE`] and `len >= HEADER_SIZE`.
//!
//! This module holds all pointer arithmetic on the region; the endpoints ask
//! it for index words by offset and for slot addresses by masked index, and
//! the offsets it accepts are bounded by the layout computed from `len`.

use core::marker::PhantomData;
use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::NonNull;

use crate::layout::{Layout, CACHE_LINE, HEADER_SIZE, INDEX_SPACING};
use crate::sync::AtomicU32;
use crate::Pod;

/// Why a region cannot hold a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The pointer was null.
    Null,
    /// The region does not start on a cache line (or on the slot alignment,
    /// if that is larger).
    Misaligned {
        /// Alignment required.
        required: usize,
    },
    /// Not even the header and one slot fit.
    TooSmall {
        /// Bytes in the region.
        len: usize,
    },
    /// `split_at` was asked for a split that is not on a cache line or not
    /// inside the region.
    BadSplit,
}

impl core::error::Error for LayoutError {}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::Null => write!(f, "null ring pointer"),
            LayoutError::Misaligned { required } => {
                write!(f, "ring memory not aligned to {required} bytes")
            }
            LayoutError::TooSmall { len } => write!(f, "{len} bytes cannot hold a ring"),
            LayoutError::BadSplit => write!(f, "split point not on a cache line inside the region"),
        }
    }
}

/// A region of memory shared with a peer domain, for one ring.
///
/// Get one per mapping of the ring's pages with [`SharedMem::new`], then
/// turn it into an endpoint ([`Front::init`](crate::Front::init),
/// [`Back::attach`](crate::Back::attach), the stream constructors). A
/// `SharedMem` is not `Clone`: each endpoint owns its view.
pub struct SharedMem<'a> {
    base: NonNull<u8>,
    len: usize,
    #[cfg(loom)]
    shadow: Option<&'a crate::sync::LoomShadow>,
    _region: PhantomData<&'a ()>,
}

// SAFETY: a SharedMem is a view of memory that is by contract (SharedMem::new)
// concurrently accessible by another party; every access through it is
// atomic or volatile, so moving the view to another thread adds nothing the
// peer cannot already do.
unsafe impl Send for SharedMem<'_> {}

impl<'a> SharedMem<'a> {
    /// A view of `len` bytes at `ptr`, shared with a peer.
    ///
    /// # Safety
    /// For all of `'a`:
    /// 1. `[ptr, ptr + len)` is one allocation or mapping, valid for reads
    ///    and writes, and stays mapped (the hypervisor does not unmap or
    ///    revoke the grant while an endpoint built on it exists).
    /// 2. In this address space, the region is accessed only through
    ///    endpoints built from `SharedMem`s (at most one per role: one front
    ///    and one back, or one producer and one consumer), never through a
    ///    Rust reference. What the *peer domain* does with it is irrelevant:
    ///    it may write anything at any time, and nothing here relies on it
    ///    not doing so.
    ///
    /// # Errors
    /// [`LayoutError`] if `ptr` is null, not 64-byte aligned, or `len` is
    /// smaller than the header.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Result<Self, LayoutError> {
        let base = NonNull::new(ptr).ok_or(LayoutError::Null)?;
        if !(base.as_ptr() as usize).is_multiple_of(CACHE_LINE) {
            return Err(LayoutError::Misaligned { required: CACHE_LINE });
        }
        if len < HEADER_SIZE {
            return Err(LayoutError::TooSmall { len });
        }
        Ok(SharedMem {
            base,
            len,
            #[cfg(loom)]
            shadow: None,
            _region: PhantomData,
        })
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: it holds at least a header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Split into `[0, mid)` and `[mid, len)`, for pages that carry two
    /// rings (e.g. a console's two directions, see
    /// [`ByteChannel`](crate::ByteChannel)).
    ///
    /// # Errors
    /// [`LayoutError::BadSplit`] if `mid` is not a multiple of 64 or leaves
    /// either half shorter than a header.
    pub fn split_at(self, mid: usize) -> Result<(SharedMem<'a>, SharedMem<'a>), LayoutError> {
        #[cfg(loom)]
        assert!(self.shadow.is_none(), "loom shadows cover one ring only");
        if !mid.is_multiple_of(CACHE_LINE) || mid < HEADER_SIZE || self.len - HEADER_SIZE < mid {
            return Err(LayoutError::BadSplit);
        }
        // SAFETY: mid <= len - HEADER_SIZE, so base + mid is inside the region
        // and the result is non-null.
        let second = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(mid)) };
        let a = SharedMem {
            base: self.base,
            len: mid,
            #[cfg(loom)]
            shadow: None,
            _region: PhantomData,
        };
        let b = SharedMem {
            base: second,
            len: self.len - mid,
            #[cfg(loom)]
            shadow: None,
            _region: PhantomData,
        };
        Ok((a, b))
    }

    /// Attach the loom stand-ins for the index words and slots (loom builds
    /// only; every `SharedMem` over the same ring needs the same shadow).
    #[cfg(loom)]
    pub fn with_loom_shadow(mut self, shadow: &'a crate::sync::LoomShadow) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// Check that the region can hold `layout` and return the address of
    /// slot 0.
    pub(crate) fn check(&self, layout: Option<Layout>) -> Result<(Layout, NonNull<u8>), LayoutError> {
        let layout = layout.ok_or(LayoutError::TooSmall { len: self.len })?;
        if !(self.base.as_ptr() as usize).is_multiple_of(layout.align) {
            return Err(LayoutError::Misaligned { required: layout.align });
        }
        debug_assert!(layout.bytes() <= self.len);
        // SAFETY: layout.bytes() <= len (Layout::new only fits slots into
        // `len`), so slots_offset is inside the region.
        let slots = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(layout.slots_offset)) };
        Ok((layout, slots))
    }

    /// The index word at header offset `offset` (one of `layout::off`).
    #[inline(always)]
    pub(crate) fn index(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= HEADER_SIZE);
        #[cfg(loom)]
        {
            self.shadow.expect("loom builds need SharedMem::with_loom_shadow").index(offset)
        }
        #[cfg(not(loom))]
        // SAFETY: offset + 4 <= HEADER_SIZE <= len, base is 64-byte aligned
        // and offset a multiple of 4, so the word is in bounds and aligned;
        // it stays valid for 'a (SharedMem::new, 1). In this address space
        // these words are only accessed atomically (R6), except by the
        // initialising front before it publishes the region, which
        // happens-before any other access.
        unsafe {
            AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>())
        }
    }

    /// The R8/R9 store-load fence.
    #[inline(always)]
    pub(crate) fn full_fence(&self) {
        #[cfg(loom)]
        self.shadow.expect("loom shadow").full_fence();
        #[cfg(not(loom))]
        crate::sync::full_fence();
    }

    /// Zero `[from, len)` with volatile writes, skipping nothing: used by the
    /// initialising side before it hands the region to the peer, so that no
    /// stale bytes of ours leak through padding or unused slots.
    pub(crate) fn zero_from(&self, from: usize) {
        let mut at = from;
        while at < self.len {
            // SAFETY: at < len: in bounds of the region, valid for writes
            // (SharedMem::new, 1); a volatile byte write forms no reference.
            unsafe { self.base.as_ptr().add(at).write_volatile(0) };
            at += 1;
        }
    }

    /// Zero the header padding: every header byte except the index words.
    pub(crate) fn zero_header_padding(&self) {
        for line in [0, INDEX_SPACING] {
            for at in line + 8..line + INDEX_SPACING {
                // SAFETY: at < HEADER_SIZE <= len, in bounds and writable;
                // padding bytes are never accessed atomically.
                unsafe { self.base.as_ptr().add(at).write_volatile(0) };
            }
        }
    }

    /// Loom bookkeeping before reading slot `slot`.
    #[inline(always)]
    pub(crate) fn note_slot_read(&self, slot: usize) {
        #[cfg(loom)]
        self.shadow.expect("loom shadow").cells[slot].with(|_| ());
        #[cfg(not(loom))]
        let _ = slot;
    }

    /// Loom bookkeeping before writing slot `slot`.
    #[inline(always)]
    pub(crate) fn note_slot_write(&self, slot: usize) {
        #[cfg(loom)]
        self.shadow.expect("loom shadow").cells[slot].with_mut(|_| ());
        #[cfg(not(loom))]
        let _ = slot;
    }
}

/// The slot array of a region, typed by what one slot holds.
///
/// Invariant: `base` points at slot 0 of a region checked by
/// [`SharedMem::check`] for a layout with `mask + 1` slots of `stride`
/// bytes, each aligned for every type read or written through it.
#[derive(Clone, Copy)]
pub(crate) struct Slots {
    base: NonNull<u8>,
    stride: usize,
    mask: u32,
}

impl Slots {
    pub(crate) fn new(base: NonNull<u8>, layout: &Layout) -> Self {
        Slots { base, stride: layout.stride, mask: layout.capacity - 1 }
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// Copy slot `idx & mask` out of shared memory with one volatile copy
    /// of the whole value (R6).
    ///
    /// `T` must be one of the types the layout was computed for (size <=
    /// stride, alignment <= the layout's).
    #[inline(always)]
    pub(crate) fn read<T: Pod>(&self, mem: &SharedMem<'_>, idx: u32) -> T {
        let slot = (idx & self.mask) as usize;
        mem.note_slot_read(slot);
        debug_assert!(core::mem::size_of::<T>() <= self.stride);
        // SAFETY: slot <= mask, so the slot lies inside the checked layout;
        // it is aligned for T (struct invariant).
        unsafe { volatile_read(self.base.as_ptr().add(slot * self.stride).cast::<T>()) }
    }

    /// Write `value` into slot `idx & mask` with one volatile write.
    #[inline(always)]
    pub(crate) fn write<T: Pod>(&self, mem: &SharedMem<'_>, idx: u32, value: T) {
        let slot = (idx & self.mask) as usize;
        mem.note_slot_write(slot);
        debug_assert!(core::mem::size_of::<T>() <= self.stride);
        // SAFETY: as in `read`.
        unsafe { volatile_write(self.base.as_ptr().add(slot * self.stride).cast::<T>(), value) }
    }
}

/// Copy a `T` in `C`-sized volatile pieces from `src` into a local value.
///
/// # Safety
/// 1. `src` is valid for reads of `size_of::<T>()` bytes and aligned for `C`.
/// 2. `size_of::<T>()` is a multiple of `size_of::<C>()`.
#[inline(always)]
unsafe fn read_pieces<T: Pod, C: Copy>(src: *const T) -> T {
    let mut out = MaybeUninit::<T>::uninit();
    let (src, dst) = (src.cast::<C>(), out.as_mut_ptr().cast::<C>());
    for k in 0..size_of::<T>() / size_of::<C>() {
        // SAFETY: piece k lies inside both values (2) and is aligned for C
        // (1; `out` is aligned for T, whose alignment is at least C's where
        // this is called); each source byte is read exactly once.
        unsafe { dst.add(k).write(src.add(k).read_volatile()) };
    }
    // SAFETY: every byte of `out` was written, and T: Pod accepts any bytes.
    unsafe { out.assume_init() }
}

/// Copy `value` in `C`-sized volatile pieces to `dst`.
///
/// # Safety
/// 1. `dst` is valid for writes of `size_of::<T>()` bytes and aligned for `C`.
/// 2. `size_of::<T>()` is a multiple of `size_of::<C>()`.
#[inline(always)]
unsafe fn write_pieces<T: Pod, C: Copy>(dst: *mut T, value: T) {
    let (src, dst) = ((&raw const value).cast::<C>(), dst.cast::<C>());
    for k in 0..size_of::<T>() / size_of::<C>() {
        // SAFETY: piece k lies inside both values (2), aligned for C (1; the
        // local is aligned for T). T: Pod has no padding, so every byte read
        // from `value` is initialised and no stale byte of ours reaches the
        // peer.
        unsafe { dst.add(k).write_volatile(src.add(k).read()) };
    }
}

/// One volatile copy of a whole `T` out of shared memory (R6), in the
/// widest pieces its alignment allows: 16 bytes (SSE2) for cache-line
/// descriptors instead of one scalar load per field. Each byte is read
/// exactly once, and the compiler may neither re-read nor elide any piece.
///
/// # Safety
/// `src` is valid for reads of a `T` and aligned for `T`.
#[inline(always)]
pub(crate) unsafe fn volatile_read<T: Pod>(src: *const T) -> T {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if align_of::<T>() >= 16 {
        // SAFETY: `src` is valid and aligned for T (caller), so for the
        // 16-byte piece; T's size is a multiple of its alignment, hence of 16.
        return unsafe { read_pieces::<T, core::arch::x86_64::__m128i>(src) };
    }
    // SAFETY: `src` is valid and aligned for T (caller); each arm's piece is
    // no wider than T's alignment, and T's size is a multiple of it.
    unsafe {
        match align_of::<T>() {
            1 => read_pieces::<T, u8>(src),
            2 => read_pieces::<T, u16>(src),
            4 => read_pieces::<T, u32>(src),
            _ => read_pieces::<T, u64>(src),
        }
    }
}

/// One volatile copy of `value` into shared memory, as [`volatile_read`].
///
/// # Safety
/// `dst` is valid for writes of a `T` and aligned for `T`.
#[inline(always)]
pub(crate) unsafe fn volatile_write<T: Pod>(dst: *mut T, value: T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if align_of::<T>() >= 16 {
        // SAFETY: as in volatile_read.
        return unsafe { write_pieces::<T, core::arch::x86_64::__m128i>(dst, value) };
    }
    // SAFETY: as in volatile_read.
    unsafe {
        match align_of::<T>() {
            1 => write_pieces::<T, u8>(dst, value),
            2 => write_pieces::<T, u16>(dst, value),
            4 => write_pieces::<T, u32>(dst, value),
            _ => write_pieces::<T, u64>(dst, value),
        }
    }
}
