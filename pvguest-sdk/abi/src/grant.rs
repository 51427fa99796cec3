//! Grant tables, version 1 (Xen's `grant_table.h`: `GNTTABOP_*`,
//! `grant_entry_v1`, `GTF_*`, `GNTMAP_*`, `GNTST_*`, with Xen's numbers and
//! x86_64 layouts).
//!
//! A domain (the *granter*) lets another (the *grantee*) use one of its
//! frames by filling an entry of its grant table, an array of
//! [`GrantEntryV1`] in frames it owns and maps writable (set up with
//! [`SETUP_TABLE`]). The grantee names the entry by the granter's domain id
//! and the entry's index, the *grant reference*, and maps it
//! ([`MAP_GRANT_REF`]) or copies to or from it ([`COPY`]).
//!
//! # Who writes which field of an entry
//! - The granter writes `domid` and `frame`, then (after a write barrier)
//!   `flags` with the type [`gtf::PERMIT_ACCESS`] and optionally
//!   [`gtf::READONLY`]: this *grants* the frame to `domid`.
//! - The hypervisor writes only [`gtf::READING`] and [`gtf::WRITING`] in
//!   `flags`, with atomic operations, while the grant is in use (mapped or
//!   being copied); it never writes the other fields.
//! - The granter ends access by a compare-exchange of `flags` from a value
//!   without `READING`/`WRITING` to 0. If either bit is set, the grant is in
//!   use and the exchange fails: the granter must wait for the grantee to
//!   unmap. (A granter that overwrites an in-use entry anyway changes
//!   nothing for existing mappings, and every later use of the entry is
//!   refused until the last one goes; see the hypervisor's `grant` module.)
//!
//! # Operations
//! `grant_table_op(cmd, ptr to an array of the command's struct, count)`
//! ([`crate::hypercall::GRANT_TABLE_OP`]). Each element has an out field
//! `status`, one of [`gntst`]. Implemented: [`MAP_GRANT_REF`],
//! [`UNMAP_GRANT_REF`], [`SETUP_TABLE`], [`COPY`], [`QUERY_SIZE`], and the
//! Ringfence extension [`SET_UNMAP_NOTIFY`]. Xen's `dump_table` (3),
//! `transfer` (4), `unmap_and_replace` (7) and the version-2 operations (8
//! and up) are not offered.
//!
//! In version 1 on a paravirtualized guest, `frame` is a machine frame
//! number (Ringfence guests use machine frames throughout).

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Map a grant into the caller's address space: [`MapGrantRef`] array.
pub const MAP_GRANT_REF: u64 = 0;
/// Remove mappings made by [`MAP_GRANT_REF`]: [`UnmapGrantRef`] array. The
/// TLB is flushed before the call returns.
pub const UNMAP_GRANT_REF: u64 = 1;
/// Grow the caller's grant table and learn its frames: [`SetupTable`].
pub const SETUP_TABLE: u64 = 2;
/// Hypervisor copies between grants and own frames: [`GnttabCopy`] array.
pub const COPY: u64 = 5;
/// Current and maximum size of a grant table: [`QuerySize`].
pub const QUERY_SIZE: u64 = 6;
/// Ringfence extension (outside Xen's numbers): when a mapping goes away,
/// clear a byte of the granted page and/or notify an event channel
/// ([`SetUnmapNotify`]; Linux's gntdev offers the same to user space).
pub const SET_UNMAP_NOTIFY: u64 = 64;

/// A grant reference: an index into a granter's table (Xen's
/// `grant_ref_t`).
pub type GrantRef = u32;
/// A mapping handle returned by [`MAP_GRANT_REF`] (Xen's
/// `grant_handle_t`).
pub type GrantHandle = u32;

/// One version-1 grant entry (Xen's `grant_entry_v1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// [`gtf`] type and flags: the granter's, except `READING`/`WRITING`,
    /// which are the hypervisor's.
    pub flags: u16,
    /// The domain granted access (the granter's).
    pub domid: u16,
    /// The machine frame granted (the granter's).
    pub frame: u32,
}

impl GrantEntryV1 {
    /// The entry from its 8 bytes as one little-endian word (how the
    /// hypervisor reads it: one load).
    pub const fn from_word(w: u64) -> GrantEntryV1 {
        GrantEntryV1 { flags: w as u16, domid: (w >> 16) as u16, frame: (w >> 32) as u32 }
    }

    /// The entry as one little-endian word.
    pub const fn to_word(self) -> u64 {
        self.flags as u64 | (self.domid as u64) << 16 | (self.frame as u64) << 32
    }
}

/// Grant reference the domain builder fills for the console page (Xen's
/// `GNTTAB_RESERVED_CONSOLE`): read-write to the store's domain, which may
/// take the console over (`domctl` `CONSOLE_TAKEOVER`); until then the
/// hypervisor drains it.
pub const GNTTAB_RESERVED_CONSOLE: u32 = 0;
/// Grant reference the domain builder fills for the store page (Xen's
/// `GNTTAB_RESERVED_XENSTORE`): read-write to the store's domain. See
/// [`crate::start_info::StoreInfo`].
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;
/// References `0..NR_RESERVED_ENTRIES` are the builder's: a guest's own
/// grants start above them (Xen's `GNTTAB_NR_RESERVED_ENTRIES`).
pub const NR_RESERVED_ENTRIES: u32 = 8;

/// Entries in one 4 KiB grant-table frame.
pub const ENTRIES_PER_FRAME: u32 = 4096 / size_of::<GrantEntryV1>() as u32;

/// `GrantEntryV1::flags` (Xen's `GTF_*`).
pub mod gtf {
    /// Type: the entry grants nothing.
    pub const INVALID: u16 = 0;
    /// Type: `domid` may map and access `frame`.
    pub const PERMIT_ACCESS: u16 = 1;
    /// Type: `domid` may transfer a frame to the granter (not offered).
    pub const ACCEPT_TRANSFER: u16 = 2;
    /// Type: transitive grant (version 2 only; refused).
    pub const TRANSITIVE: u16 = 3;
    /// The type bits.
    pub const TYPE_MASK: u16 = 3;
    /// `domid` may only read (granter).
    pub const READONLY: u16 = 1 << 2;
    /// In use for reading, or for writing (hypervisor).
    pub const READING: u16 = 1 << 3;
    /// In use for writing (hypervisor).
    pub const WRITING: u16 = 1 << 4;
    /// x86 cache attribute (ignored).
    pub const PWT: u16 = 1 << 5;
    /// x86 cache attribute (ignored).
    pub const PCD: u16 = 1 << 6;
    /// x86 cache attribute (ignored).
    pub const PAT: u16 = 1 << 7;
    /// Sub-page grant (version 2 only; refused).
    pub const SUB_PAGE: u16 = 1 << 8;
}

/// `MapGrantRef::flags` (Xen's `GNTMAP_*`).
pub mod gntmap {
    /// Give a device address (`dev_bus_addr`): the frame's machine address.
    pub const DEVICE_MAP: u32 = 1 << 0;
    /// Map for the CPU at `host_addr`.
    pub const HOST_MAP: u32 = 1 << 1;
    /// Map read-only.
    pub const READONLY: u32 = 1 << 2;
    /// The host mapping is usable by ring 3 too (U bit).
    pub const APPLICATION_MAP: u32 = 1 << 3;
    /// `host_addr` is the machine address of the PTE to write, not a
    /// virtual address.
    pub const CONTAINS_PTE: u32 = 1 << 4;
    /// Accepted and ignored (Xen: the map may fail without logging).
    pub const CAN_FAIL: u32 = 1 << 5;
    /// Every flag the hypervisor knows.
    pub const ALL: u32 = DEVICE_MAP | HOST_MAP | READONLY | APPLICATION_MAP | CONTAINS_PTE | CAN_FAIL;
}

/// `GnttabCopy::flags` (Xen's `GNTCOPY_*`).
pub mod gntcopy {
    /// `source` names a grant (else a frame of the caller).
    pub const SOURCE_GREF: u16 = 1 << 0;
    /// `dest` names a grant (else a frame of the caller).
    pub const DEST_GREF: u16 = 1 << 1;
    /// Accepted and ignored.
    pub const CAN_FAIL: u16 = 1 << 2;
    /// Every flag the hypervisor knows.
    pub const ALL: u16 = SOURCE_GREF | DEST_GREF | CAN_FAIL;
}

/// `SetUnmapNotify::action` (Linux gntdev's `UNMAP_NOTIFY_*`).
pub mod notify {
    /// Clear the byte at `offset` of the granted page.
    pub const CLEAR_BYTE: u16 = 1;
    /// Send an event on the caller's `port`.
    pub const SEND_EVENT: u16 = 2;
}

/// Per-element status codes (Xen's `GNTST_*`; all errors are negative).
pub mod gntst {
    /// Done.
    pub const OKAY: i16 = 0;
    /// Any other error (bad flags, an entry that changes under the
    /// hypervisor, ...).
    pub const GENERAL_ERROR: i16 = -1;
    /// The domain id names no live domain, or one the operation may not
    /// name.
    pub const BAD_DOMAIN: i16 = -2;
    /// The reference is out of range or its entry grants nothing
    /// appropriate.
    pub const BAD_GNTREF: i16 = -3;
    /// The mapping handle names no mapping of the caller.
    pub const BAD_HANDLE: i16 = -4;
    /// `host_addr` cannot be mapped, or does not match the mapping.
    pub const BAD_VIRT_ADDR: i16 = -5;
    /// `dev_bus_addr` does not match the mapping.
    pub const BAD_DEV_ADDR: i16 = -6;
    /// Out of space in an I/O MMU (unused: no IOMMU).
    pub const NO_DEVICE_SPACE: i16 = -7;
    /// The grant does not allow this access (read-only, another grantee).
    pub const PERMISSION_DENIED: i16 = -8;
    /// The frame is not one the operation may use (not the owner's, a page
    /// table as a write target).
    pub const BAD_PAGE: i16 = -9;
    /// A copy's offset and length leave the page.
    pub const BAD_COPY_ARG: i16 = -10;
    /// Transfer address too big (unused).
    pub const ADDRESS_TOO_BIG: i16 = -11;
    /// Not done; try again.
    pub const EAGAIN: i16 = -12;
    /// A quota or the hypervisor's memory is exhausted (grant frames,
    /// maptrack entries, mappings of one frame).
    pub const NO_SPACE: i16 = -13;
}

/// [`SETUP_TABLE`] argument (Xen's `gnttab_setup_table`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SetupTable {
    /// The domain (`DOMID_SELF`; another only for the privileged domain).
    pub dom: u16,
    /// Padding.
    pub pad0: u16,
    /// Frames wanted: the table grows to at least this many, and this many
    /// frame numbers are written to `frame_list`.
    pub nr_frames: u32,
    /// Out: one of [`gntst`].
    pub status: i16,
    /// Padding.
    pub pad1: u16,
    /// Padding.
    pub pad2: u32,
    /// Guest address of an array of `nr_frames` u64 machine frame numbers
    /// (Xen's `XEN_GUEST_HANDLE(ulong)`), written by the hypervisor.
    pub frame_list: u64,
}

/// [`QUERY_SIZE`] argument (Xen's `gnttab_query_size`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QuerySize {
    /// The domain (`DOMID_SELF`; another only for the privileged domain).
    pub dom: u16,
    /// Padding.
    pub pad0: u16,
    /// Out: frames in the table now.
    pub nr_frames: u32,
    /// Out: the domain's quota of grant frames.
    pub max_nr_frames: u32,
    /// Out: one of [`gntst`].
    pub status: i16,
    /// Padding.
    pub pad1: u16,
}

/// One [`MAP_GRANT_REF`] element (Xen's `gnttab_map_grant_ref`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MapGrantRef {
    /// Where to map: a virtual address of the caller, or with
    /// [`gntmap::CONTAINS_PTE`] the machine address of a level-1 entry.
    pub host_addr: u64,
    /// [`gntmap`] flags.
    pub flags: u32,
    /// The reference in `dom`'s table.
    pub gref: GrantRef,
    /// The granter.
    pub dom: u16,
    /// Out: one of [`gntst`].
    pub status: i16,
    /// Out: the handle to unmap with.
    pub handle: GrantHandle,
    /// Out: the frame's machine address (Ringfence fills it for every
    /// mapping; without an IOMMU it is also the device address).
    pub dev_bus_addr: u64,
}

/// One [`UNMAP_GRANT_REF`] element (Xen's `gnttab_unmap_grant_ref`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct UnmapGrantRef {
    /// The mapping's `host_addr` (must match when it has a host mapping).
    pub host_addr: u64,
    /// The mapping's `dev_bus_addr`, or 0.
    pub dev_bus_addr: u64,
    /// The handle [`MAP_GRANT_REF`] returned.
    pub handle: GrantHandle,
    /// Out: one of [`gntst`].
    pub status: i16,
    /// Padding.
    pub pad: u16,
}

/// One side of a [`GnttabCopy`] (Xen's anonymous `source`/`dest` struct, its
/// union `u { grant_ref_t ref; xen_pfn_t gmfn; }` laid out as one u64).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CopyPtr {
    /// The union: a grant reference in the low 32 bits (with the side's
    /// `*_GREF` flag; the high bits are then ignored), else a machine frame
    /// number of the caller.
    pub u: u64,
    /// The granter (with `*_GREF`), else `DOMID_SELF` or the caller.
    pub domid: u16,
    /// Byte offset in the page.
    pub offset: u16,
    /// Padding.
    pub pad: u32,
}

impl CopyPtr {
    /// The union read as a grant reference.
    pub const fn gref(&self) -> GrantRef {
        self.u as u32
    }
}

/// One [`COPY`] element (Xen's `gnttab_copy`; not named `Copy`, which
/// would shadow the trait).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabCopy {
    /// Where to read.
    pub source: CopyPtr,
    /// Where to write.
    pub dest: CopyPtr,
    /// Bytes to copy: `offset + len` stays within the page on each side.
    pub len: u16,
    /// [`gntcopy`] flags.
    pub flags: u16,
    /// Out: one of [`gntst`].
    pub status: i16,
    /// Padding.
    pub pad: u16,
}

/// One [`SET_UNMAP_NOTIFY`] element (Ringfence).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SetUnmapNotify {
    /// A mapping of the caller.
    pub handle: GrantHandle,
    /// With [`notify::CLEAR_BYTE`]: the byte of the granted page to clear
    /// (the mapping must be writable).
    pub offset: u16,
    /// [`notify`] bits; 0 cancels.
    pub action: u16,
    /// With [`notify::SEND_EVENT`]: the caller's port to send on.
    pub port: u32,
    /// Out: one of [`gntst`].
    pub status: i16,
    /// Padding.
    pub pad: u16,
}

const _: () = {
    assert!(size_of::<GrantEntryV1>() == 8);
    assert!(offset_of!(GrantEntryV1, domid) == 2);
    assert!(offset_of!(GrantEntryV1, frame) == 4);
    assert!(ENTRIES_PER_FRAME == 512);
    assert!(size_of::<SetupTable>() == 24);
    assert!(offset_of!(SetupTable, nr_frames) == 4);
    assert!(offset_of!(SetupTable, status) == 8);
    assert!(offset_of!(SetupTable, frame_list) == 16);
    assert!(size_of::<QuerySize>() == 16);
    assert!(offset_of!(QuerySize, max_nr_frames) == 8);
    assert!(offset_of!(QuerySize, status) == 12);
    assert!(size_of::<MapGrantRef>() == 32);
    assert!(offset_of!(MapGrantRef, flags) == 8);
    assert!(offset_of!(MapGrantRef, gref) == 12);
    assert!(offset_of!(MapGrantRef, dom) == 16);
    assert!(offset_of!(MapGrantRef, status) == 18);
    assert!(offset_of!(MapGrantRef, handle) == 20);
    assert!(offset_of!(MapGrantRef, dev_bus_addr) == 24);
    assert!(size_of::<UnmapGrantRef>() == 24);
    assert!(offset_of!(UnmapGrantRef, handle) == 16);
    assert!(offset_of!(UnmapGrantRef, status) == 20);
    assert!(size_of::<CopyPtr>() == 16);
    assert!(offset_of!(CopyPtr, domid) == 8);
    assert!(offset_of!(CopyPtr, offset) == 10);
    assert!(size_of::<GnttabCopy>() == 40);
    assert!(offset_of!(GnttabCopy, dest) == 16);
    assert!(offset_of!(GnttabCopy, len) == 32);
    assert!(offset_of!(GnttabCopy, flags) == 34);
    assert!(offset_of!(GnttabCopy, status) == 36);
    assert!(size_of::<SetUnmapNotify>() == 16);
    assert!(offset_of!(SetUnmapNotify, port) == 8);
    assert!(offset_of!(SetUnmapNotify, status) == 12);
};

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn entry_word_matches_the_byte_layout() {
        let e = GrantEntryV1 { flags: gtf::PERMIT_ACCESS | gtf::READONLY, domid: 7, frame: 0x1234_5678 };
        assert_eq!(e.to_word().to_le_bytes(), e.as_bytes());
        assert_eq!(GrantEntryV1::from_word(e.to_word()), e);
    }

    #[test]
    fn copy_union_reads_the_reference_from_the_low_half() {
        let mut p = CopyPtr::default();
        p.as_mut_bytes()[..4].copy_from_slice(&42u32.to_le_bytes());
        p.as_mut_bytes()[4..8].copy_from_slice(&[0xff; 4]);
        assert_eq!(p.gref(), 42);
    }
}
