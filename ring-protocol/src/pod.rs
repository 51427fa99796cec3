//! [`Pod`]: types that may cross a ring.
//!
//! The peer writes slots with whatever bytes it likes, and we write our own
//! values into memory the peer reads. So a slot type must (1) accept every
//! bit pattern, or reading a hostile slot would be undefined behaviour, and
//! (2) have no padding, or writing a value would copy uninitialised bytes —
//! stale stack contents, possibly secrets — to another domain.
//!
//! Both are zerocopy's traits, checked by its derives at compile time: (1)
//! is [`FromBytes`], (2) is [`IntoBytes`] (which also requires a
//! `#[repr(C)]`, `#[repr(transparent)]` or `#[repr(packed)]` layout, so both
//! domains agree on it). [`Immutable`] (no interior mutability) lets a value
//! be viewed as bytes through a shared reference, [`KnownLayout`] is what
//! zerocopy needs for its other conversions. `Pod` is the name this crate
//! uses for all of them together; nobody implements it by hand.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Plain old data: any bit pattern is a valid value and there is no padding.
///
/// A safe marker: every type with zerocopy's [`FromBytes`], [`IntoBytes`],
/// [`Immutable`] and [`KnownLayout`] (and `Copy + Send + Sync + 'static`)
/// is `Pod` by the blanket impl. That covers the fixed-width integers,
/// arrays of `Pod`, zerocopy's byte-order types (`zerocopy::byteorder`),
/// and your own `#[repr(C)]` descriptor structs once they derive the four
/// traits: the derives refuse fields that do not accept every bit pattern
/// (`bool`, `char`, enums, references, `NonZero*`) and structs with padding
/// bytes. No `unsafe` is written anywhere.
///
/// ```
/// use ring_protocol::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
///
/// #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy)]
/// #[zerocopy(crate = "ring_protocol::zerocopy")] // not needed if you depend on zerocopy yourself
/// #[repr(C)]
/// struct BlkReq {
///     id: u64,
///     sector: u64,
///     gref: u32,
///     nr_sectors: u16,
///     op: u8,
///     flags: u8,
/// }
///
/// fn assert_pod<T: ring_protocol::Pod>() {}
/// assert_pod::<BlkReq>();
/// ```
///
/// Padding is refused at compile time (here 4 bytes after `status`):
///
/// ```compile_fail,E0277
/// use ring_protocol::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
///
/// #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy)]
/// #[zerocopy(crate = "ring_protocol::zerocopy")]
/// #[repr(C)]
/// struct Padded {
///     status: u32,
///     id: u64,
/// }
/// ```
///
/// So is a field that does not accept every bit pattern:
///
/// ```compile_fail,E0277
/// use ring_protocol::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
///
/// #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy)]
/// #[zerocopy(crate = "ring_protocol::zerocopy")]
/// #[repr(C)]
/// struct Flagged {
///     id: u64,
///     done: [bool; 8],
/// }
/// ```
///
/// And a struct without the derives is not a slot type:
///
/// ```compile_fail,E0277
/// # use ring_protocol::*;
/// # #[repr(C, align(4096))] struct Page([u8; 4096]);
/// # let mut page = Page([0; 4096]);
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Req { id: u64 }
///
/// // SAFETY: `page` outlives the endpoint and is only used through it.
/// let mem = unsafe { SharedMem::new(page.0.as_mut_ptr(), 4096) }?;
/// let front = Front::<Req, Completion>::init(mem)?; // error[E0277]: `Req: Pod` is not satisfied
/// # Ok::<(), LayoutError>(())
/// ```
///
/// What the derives cannot check, and a slot type must still respect:
/// - it is not zero-sized: every ring and stream constructor refuses
///   zero-sized slot types at compile time (R14);
/// - it means the same in both domains: fixed-width integers rather than
///   `usize`/`isize` (whose width is the build's), and no addresses (the
///   peer's mean nothing here; zerocopy has no `FromBytes` for pointers or
///   references).
pub trait Pod: FromBytes + IntoBytes + Immutable + KnownLayout + Copy + Send + Sync + 'static {}

impl<T> Pod for T where T: FromBytes + IntoBytes + Immutable + KnownLayout + Copy + Send + Sync + 'static {}
