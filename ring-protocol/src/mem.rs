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
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes};

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
    /// A byte copy ([`SharedMem::read_bytes`], [`SharedMem::write_bytes`])
    /// reaches past the region's end.
    OutOfRange {
        /// First byte of the copy.
        at: usize,
        /// Bytes asked for.
        len: usize,
    },
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
            LayoutError::OutOfRange { at, len } => write!(f, "copy of {len} bytes at {at} passes the region's end"),
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
        // mid <= len - HEADER_SIZE: base + mid is inside the region, hence
        // not null.
        let second = NonNull::new(self.addr(mid)).ok_or(LayoutError::BadSplit)?;
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

    /// Check that the region can hold `layout` (computed from [`len`](Self::len)):
    /// the start is aligned for the slots. After this, [`Slots::new`] may
    /// be built from the layout for this region.
    pub(crate) fn check(&self, layout: Option<Layout>) -> Result<Layout, LayoutError> {
        let layout = layout.ok_or(LayoutError::TooSmall { len: self.len })?;
        if !(self.base.as_ptr() as usize).is_multiple_of(layout.align) {
            return Err(LayoutError::Misaligned { required: layout.align });
        }
        // Layout::new only fits slots into the length it was given.
        debug_assert!(layout.bytes() <= self.len);
        Ok(layout)
    }

    /// The address of byte `at` of the region. Pointer arithmetic only
    /// (wrapping, so safe); every access through it is one of the
    /// `unsafe` blocks below.
    #[inline(always)]
    fn addr(&self, at: usize) -> *mut u8 {
        self.base.as_ptr().wrapping_add(at)
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
            AtomicU32::from_ptr(self.addr(offset).cast::<u32>())
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
        for at in from..self.len {
            self.zero_byte(at);
        }
    }

    /// Zero the header padding: every header byte except the index words.
    pub(crate) fn zero_header_padding(&self) {
        for line in [0, INDEX_SPACING] {
            for at in line + 8..line + INDEX_SPACING {
                self.zero_byte(at);
            }
        }
    }

    /// Zero byte `at < len` with one volatile write (bounds-checked: this
    /// is initialisation, not the hot path).
    fn zero_byte(&self, at: usize) {
        assert!(at < self.len, "zeroing outside the region");
        // SAFETY: at < len: in bounds of the region and valid for writes
        // (SharedMem::new, 1); a volatile byte write forms no reference
        // (R6). The bytes zeroed are padding and slots, never accessed
        // atomically.
        unsafe { self.addr(at).write_volatile(0) };
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

/// A piece of a slot copy: a type the CPU moves in one access. Slots are
/// copied in the widest piece their alignment allows (R6, design notes):
/// 16-byte SSE2 moves for cache-line descriptors instead of one scalar load
/// per field. zerocopy's traits turn pieces into bytes and back without
/// `unsafe`.
trait Piece: FromBytes + IntoBytes + Immutable + Copy {}

impl Piece for u8 {}
impl Piece for u16 {}
impl Piece for u32 {}
impl Piece for u64 {}
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
impl Piece for core::arch::x86_64::__m128i {}

impl SharedMem<'_> {
    /// Copy region bytes `[at, at + dst.len())` into `dst` (our own
    /// memory) with volatile reads of `C`-sized pieces: each shared byte is
    /// read exactly once and the compiler may neither re-read nor elide a
    /// piece (R6). A tail shorter than `C` (none for slot types, whose size
    /// is a multiple of their alignment) goes byte by byte.
    ///
    /// # Safety
    /// 1. `[at, at + dst.len())` lies inside the region.
    /// 2. `base + at` is aligned for `C`.
    #[inline(always)]
    unsafe fn read_pieces<C: Piece>(&self, at: usize, dst: &mut [u8]) {
        debug_assert!(at.checked_add(dst.len()).is_some_and(|end| end <= self.len));
        let mut pieces = dst.chunks_exact_mut(size_of::<C>());
        let mut done = 0;
        for out in &mut pieces {
            let src = self.addr(at + done).cast::<C>();
            // SAFETY: `src` lies inside the region with room for a `C` (1:
            // done + size_of C <= dst.len()), is aligned for `C` (2, and
            // `done` is a multiple of size_of C, itself a multiple of its
            // alignment), and is valid for reads (SharedMem::new, 1). A
            // volatile read of a FromBytes type into a local forms no
            // reference into shared memory and accepts any bytes.
            let piece = unsafe { src.read_volatile() };
            out.copy_from_slice(piece.as_bytes());
            done += size_of::<C>();
        }
        for out in pieces.into_remainder() {
            let src = self.addr(at + done);
            // SAFETY: as above, for one byte (always aligned).
            *out = unsafe { src.read_volatile() };
            done += 1;
        }
    }

    /// Copy `src` (our own memory) to region bytes `[at, at + src.len())`
    /// with volatile writes of `C`-sized pieces, each byte written once.
    ///
    /// # Safety
    /// As [`read_pieces`](Self::read_pieces), for writes.
    #[inline(always)]
    unsafe fn write_pieces<C: Piece>(&self, at: usize, src: &[u8]) {
        debug_assert!(at.checked_add(src.len()).is_some_and(|end| end <= self.len));
        let mut pieces = src.chunks_exact(size_of::<C>());
        let mut done = 0;
        for bytes in &mut pieces {
            let mut piece = C::new_zeroed();
            piece.as_mut_bytes().copy_from_slice(bytes);
            let dst = self.addr(at + done).cast::<C>();
            // SAFETY: as in read_pieces (1, 2; valid for writes by
            // SharedMem::new, 1); a volatile write forms no reference.
            unsafe { dst.write_volatile(piece) };
            done += size_of::<C>();
        }
        for &byte in pieces.remainder() {
            let dst = self.addr(at + done);
            // SAFETY: as above, for one byte.
            unsafe { dst.write_volatile(byte) };
            done += 1;
        }
    }

    /// One volatile copy of region bytes `[at, at + dst.len())` into `dst`,
    /// in the widest pieces that `align` (a power of two) allows.
    ///
    /// # Safety
    /// 1. `[at, at + dst.len())` lies inside the region.
    /// 2. `base + at` is aligned to `align`.
    #[inline(always)]
    unsafe fn copy_in(&self, at: usize, dst: &mut [u8], align: usize) {
        // SAFETY: the caller's 1 and 2, and each piece is no more aligned
        // than `align` (16-byte pieces only if `align >= 16`).
        unsafe {
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            if align >= 16 {
                return self.read_pieces::<core::arch::x86_64::__m128i>(at, dst);
            }
            match align {
                1 => self.read_pieces::<u8>(at, dst),
                2 => self.read_pieces::<u16>(at, dst),
                4 => self.read_pieces::<u32>(at, dst),
                _ => self.read_pieces::<u64>(at, dst),
            }
        }
    }

    /// One volatile copy of `src` to region bytes `[at, at + src.len())`,
    /// as [`copy_in`](Self::copy_in).
    ///
    /// # Safety
    /// As [`copy_in`](Self::copy_in), for writes.
    #[inline(always)]
    unsafe fn copy_out(&self, at: usize, src: &[u8], align: usize) {
        // SAFETY: as in copy_in.
        unsafe {
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            if align >= 16 {
                return self.write_pieces::<core::arch::x86_64::__m128i>(at, src);
            }
            match align {
                1 => self.write_pieces::<u8>(at, src),
                2 => self.write_pieces::<u16>(at, src),
                4 => self.write_pieces::<u32>(at, src),
                _ => self.write_pieces::<u64>(at, src),
            }
        }
    }
}

impl SharedMem<'_> {
    /// The widest piece alignment (up to 16) that region byte `at` has.
    fn align_at(&self, at: usize) -> usize {
        1usize << (self.addr(at) as usize | 16).trailing_zeros()
    }

    /// Copies region bytes `[at, at + dst.len())` into `dst` (our own
    /// memory): one volatile read of each shared byte, in the widest pieces
    /// the address allows (the R6 copy, for bulk data such as a bounce
    /// page a peer may be writing). Whatever the peer does meanwhile, `dst`
    /// gets some bytes, never undefined behaviour.
    ///
    /// # Errors
    /// [`LayoutError::OutOfRange`] if the range passes the region's end.
    pub fn read_bytes(&self, at: usize, dst: &mut [u8]) -> Result<(), LayoutError> {
        if at.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return Err(LayoutError::OutOfRange { at, len: dst.len() });
        }
        // SAFETY: the range lies inside the region (checked above) and
        // `align_at` is the alignment of its start.
        unsafe { self.copy_in(at, dst, self.align_at(at)) };
        Ok(())
    }

    /// Copies `src` (our own memory) to region bytes `[at, at +
    /// src.len())` with volatile writes, as [`SharedMem::read_bytes`].
    ///
    /// # Errors
    /// [`LayoutError::OutOfRange`] if the range passes the region's end.
    pub fn write_bytes(&self, at: usize, src: &[u8]) -> Result<(), LayoutError> {
        if at.checked_add(src.len()).is_none_or(|end| end > self.len) {
            return Err(LayoutError::OutOfRange { at, len: src.len() });
        }
        // SAFETY: as in `read_bytes`, for writes.
        unsafe { self.copy_out(at, src, self.align_at(at)) };
        Ok(())
    }
}

/// The slot array of a region, typed by what one slot holds.
///
/// Invariant: built by [`Slots::new`] from a layout that
/// [`SharedMem::check`] accepted for the region it is used with (each
/// endpoint uses its `Slots` only with its own `SharedMem`): `mask + 1`
/// slots of `stride` bytes from byte `offset`, all inside the region, each
/// aligned for every type read or written through it. Offsets, not
/// pointers: a `Slots` is plain integers, so the endpoints holding one are
/// `Send` without an `unsafe impl` of their own.
#[derive(Clone, Copy)]
pub(crate) struct Slots {
    offset: usize,
    stride: usize,
    mask: u32,
}

impl Slots {
    pub(crate) fn new(layout: &Layout) -> Self {
        Slots { offset: layout.slots_offset, stride: layout.stride, mask: layout.capacity - 1 }
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// Byte offset in the region of slot `idx & mask`.
    #[inline(always)]
    fn at(&self, idx: u32) -> usize {
        self.offset + (idx & self.mask) as usize * self.stride
    }

    /// Copy slot `idx & mask` out of shared memory with one volatile copy
    /// of the whole value into a local (R6); the peer's bytes are only ever
    /// seen through that copy.
    ///
    /// `T` must be one of the types the layout was computed for (size <=
    /// stride, alignment <= the layout's).
    #[inline(always)]
    pub(crate) fn read<T: Pod>(&self, mem: &SharedMem<'_>, idx: u32) -> T {
        mem.note_slot_read((idx & self.mask) as usize);
        debug_assert!(size_of::<T>() <= self.stride);
        let mut value = T::new_zeroed();
        // SAFETY: the slot lies inside the region and is aligned for T
        // (struct invariant: masked index, checked layout, T one of its
        // types), so [at, at + size_of T) is inside the region and aligned
        // to align_of T.
        unsafe { mem.copy_in(self.at(idx), value.as_mut_bytes(), align_of::<T>()) };
        value
    }

    /// Write `value` into slot `idx & mask` with one volatile copy. `T` has
    /// no padding (`IntoBytes`), so every byte written is initialised and
    /// no stale byte of ours reaches the peer.
    #[inline(always)]
    pub(crate) fn write<T: Pod>(&self, mem: &SharedMem<'_>, idx: u32, value: T) {
        mem.note_slot_write((idx & self.mask) as usize);
        debug_assert!(size_of::<T>() <= self.stride);
        // SAFETY: as in `read`.
        unsafe { mem.copy_out(self.at(idx), value.as_bytes(), align_of::<T>()) };
    }
}
