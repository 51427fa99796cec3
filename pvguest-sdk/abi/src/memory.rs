//! `memory_op(cmd, arg)`: reservation and memory-map queries.

use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Returns the number of frames the domain owns now.
pub const CURRENT_RESERVATION: u64 = 3;
/// Returns the most frames the domain may own.
pub const MAXIMUM_RESERVATION: u64 = 4;
/// Fills a [`MemoryMap`]'s buffer with the domain's pseudo-physical map.
pub const MEMORY_MAP: u64 = 9;

/// `arg` of the reservation queries: must be `DOMID_SELF` (by value).
/// `MEMORY_MAP` argument: on entry `nr_entries` is the buffer capacity, on
/// return the number written.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MemoryMap {
    /// Capacity in, count out.
    pub nr_entries: u32,
    /// Padding.
    pub pad: u32,
    /// Guest address of an array of [`MemRange`].
    pub buffer: u64,
}

/// One entry of the pseudo-physical memory map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MemRange {
    /// First pseudo-physical byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`RAM`].
    pub kind: u32,
    /// Padding.
    pub pad: u32,
}

/// [`MemRange::kind`]: ordinary RAM.
pub const RAM: u32 = 1;

const _: () = {
    assert!(size_of::<MemoryMap>() == 16);
    assert!(size_of::<MemRange>() == 24);
};
