//! [`Pod`]: types that may cross a ring.
//!
//! The peer writes slots with whatever bytes it likes, and we write our own
//! values into memory the peer reads. So a slot type must (1) accept every
//! bit pattern, or reading a hostile slot would be undefined behaviour, and
//! (2) have no padding, or writing a value would copy uninitialised bytes —
//! stale stack contents, possibly secrets — to another domain. This is
//! bytemuck's `Pod` reasoning, hand-written to keep the crate dependency-free.

/// Plain old data: any bit pattern is a valid value and there is no padding.
///
/// Implemented for the fixed-width integers and arrays of `Pod`. Implement
/// it for your own `#[repr(C)]` descriptor structs with an `unsafe impl`
/// and a `// SAFETY:` comment that checks the list below (a const
/// assertion that `size_of` equals the sum of the field sizes proves the
/// absence of padding).
///
/// # Safety
/// Implementing `Pod` for `T` promises:
/// 1. every bit pattern of `size_of::<T>()` bytes is a valid `T` (so no
///    `bool`, `char`, enums, references, `NonZero*`, or fields with their
///    own validity invariants);
/// 2. `T` has no padding bytes anywhere (between fields or at the end), so
///    every byte of a `T` value is initialised;
/// 3. `T` is not zero-sized (every ring and stream constructor also
///    refuses zero-sized slot types at compile time, R14);
/// 4. `T` means the same in both domains: no pointers or references (the
///    peer's addresses mean nothing here) and a `#[repr(C)]` or
///    `#[repr(transparent)]` layout (not `repr(Rust)`, which may differ
///    between two builds).
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! pod_ints {
    ($($t:ty),*) => {$(
        // SAFETY: fixed-width integers accept every bit pattern, have no
        // padding, are non-zero-sized and mean the same in every domain.
        unsafe impl Pod for $t {}
    )*};
}
pod_ints!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128);

// SAFETY: an array of N > 0 Pod elements is Pod: elements are laid out
// back to back with no padding (size is a multiple of align). N = 0 is
// zero-sized: every generic layout function refuses it at compile time
// (R14, `layout::assert_slot_type`) and `Layout::new` returns `None`.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}
