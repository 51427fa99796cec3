//! Typed guest addresses: what a hypercall argument *claims* to point at.
//!
//! A register that a guest passes as a pointer is an allegation, not a
//! fact: [`GuestPtr<T>`] and [`GuestSlice<T>`] keep it typed from the
//! register decode to the one guest-memory accessor ([`Env::copy_from_guest`]
//! / [`Env::copy_to_guest`], which validates the mapping on every access),
//! and the bytes are decoded only through the ABI crate's structures, whose
//! layouts derive `zerocopy`'s byte-view traits and carry size and offset
//! assertions. No hypercall handler names a byte offset of its own: a field
//! is reached with [`GuestPtr::field`] and `core::mem::offset_of!` on the
//! ABI type.
//!
//! Every read copies the guest's bytes once into a value of our own, so
//! the guest changing them afterwards has no effect; every write is one
//! copy out.

use super::Env;
use core::marker::PhantomData;
use pvguest_abi::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A guest address that is claimed to hold a `T`.
pub struct GuestPtr<T> {
    addr: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for GuestPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for GuestPtr<T> {}

impl<T> core::fmt::Debug for GuestPtr<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestPtr({:#x})", self.addr)
    }
}

impl<T: FromBytes + IntoBytes + Immutable> GuestPtr<T> {
    /// The claim that `addr` holds a `T`.
    pub const fn new(addr: u64) -> Self {
        GuestPtr { addr, _t: PhantomData }
    }

    /// The guest address.
    pub const fn addr(self) -> u64 {
        self.addr
    }

    /// Whether the guest passed 0 (an absent optional pointer).
    pub const fn is_null(self) -> bool {
        self.addr == 0
    }

    /// Copies the `T` out of guest memory (`EFAULT` if any byte of it is
    /// not readable by the guest).
    pub fn read<E: Env + ?Sized>(self, env: &mut E) -> Result<T, Errno> {
        let mut v = T::new_zeroed();
        env.copy_from_guest(self.addr, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Copies `v` into guest memory (`EFAULT` if any byte of it is not
    /// writable by the guest).
    pub fn write<E: Env + ?Sized>(self, env: &mut E, v: &T) -> Result<(), Errno> {
        env.copy_to_guest(self.addr, v.as_bytes())
    }

    /// The field of `T` at byte `offset`, of type `U`: pass
    /// `core::mem::offset_of!(T, field)`. An offset that does not leave room
    /// for a `U` inside a `T` is a hypervisor bug (it panics in debug builds)
    /// and yields a null pointer, which the accessor refuses.
    pub fn field<U: FromBytes + IntoBytes + Immutable>(self, offset: usize) -> GuestPtr<U> {
        let fits = offset.checked_add(size_of::<U>()).is_some_and(|end| end <= size_of::<T>());
        debug_assert!(fits, "field at {offset} of {} bytes outside a {}-byte struct", size_of::<U>(), size_of::<T>());
        match self.addr.checked_add(offset as u64) {
            Some(a) if fits => GuestPtr::new(a),
            _ => GuestPtr::new(0),
        }
    }
}

/// A guest array that is claimed to hold `len` values of `T`.
pub struct GuestSlice<T> {
    base: u64,
    len: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for GuestSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for GuestSlice<T> {}

impl<T> core::fmt::Debug for GuestSlice<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestSlice({:#x}, {})", self.base, self.len)
    }
}

impl<T: FromBytes + IntoBytes + Immutable> GuestSlice<T> {
    /// The claim that `len` values of `T` start at `base`. Bounding `len`
    /// is the caller's, before any access.
    pub const fn new(base: u64, len: u64) -> Self {
        GuestSlice { base, len, _t: PhantomData }
    }

    /// The number of elements claimed.
    pub const fn len(self) -> u64 {
        self.len
    }

    /// Whether no element is claimed.
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }

    /// Element `i` (`EFAULT` if its address overflows; `i` need not be
    /// below [`GuestSlice::len`], so a batch can name where it continues).
    pub fn at(self, i: u64) -> Result<GuestPtr<T>, Errno> {
        i.checked_mul(size_of::<T>() as u64)
            .and_then(|o| self.base.checked_add(o))
            .map(GuestPtr::new)
            .ok_or(Errno::EFAULT)
    }

    /// The elements from `from` on, as a slice that continues there.
    pub fn from(self, from: u64) -> Result<GuestSlice<T>, Errno> {
        Ok(GuestSlice::new(self.at(from)?.addr(), self.len.saturating_sub(from)))
    }

    /// Copies `out.len()` elements starting at element `from` (one copy for
    /// all of them; `EFAULT` if any byte is unreadable or the range's
    /// address overflows).
    pub fn read_into<E: Env + ?Sized>(self, env: &mut E, from: u64, out: &mut [T]) -> Result<(), Errno> {
        let start = self.at(from)?;
        start.addr().checked_add(size_of_val(out) as u64).ok_or(Errno::EFAULT)?;
        env.copy_from_guest(start.addr(), out.as_mut_bytes())
    }
}
