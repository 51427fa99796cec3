//! Guest page-table management under validation (Xen direct paging).
//!
//! Page-table frames are read-only to the guest; every change goes through
//! `mmu_update`, `mmuext_op` or `update_va_mapping`, which check that the
//! guest maps only frames it owns and that no frame is both a page table and
//! writable.

use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `MmuUpdate::ptr` low bits: a normal page-table entry update.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;

/// One `mmu_update` request (Xen's `mmu_update`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the entry, with the command in bits 0-1.
    pub ptr: u64,
    /// The new entry.
    pub val: u64,
}

/// `mmuext_op` commands (Xen's `MMUEXT_*`).
pub mod ext {
    /// Validate a frame as a level-1 table and pin it.
    pub const PIN_L1_TABLE: u32 = 0;
    /// Validate and pin a level-2 table.
    pub const PIN_L2_TABLE: u32 = 1;
    /// Validate and pin a level-3 table.
    pub const PIN_L3_TABLE: u32 = 2;
    /// Validate and pin a level-4 table.
    pub const PIN_L4_TABLE: u32 = 3;
    /// Unpin a table.
    pub const UNPIN_TABLE: u32 = 4;
    /// Switch to a level-4 table (`arg1` = its mfn).
    pub const NEW_BASEPTR: u32 = 5;
    /// Flush this CPU's TLB.
    pub const TLB_FLUSH_LOCAL: u32 = 6;
    /// Invalidate one page (`arg1` = linear address).
    pub const INVLPG_LOCAL: u32 = 7;
}

/// One `mmuext_op` request (Xen's `mmuext_op`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MmuextOp {
    /// One of [`ext`].
    pub cmd: u32,
    /// Padding.
    pub pad: u32,
    /// Machine frame number or linear address.
    pub arg1: u64,
    /// Unused by the commands above.
    pub arg2: u64,
}

/// `update_va_mapping` flags.
pub mod uvmf {
    /// No flush.
    pub const NONE: u64 = 0;
    /// Flush the whole TLB.
    pub const TLB_FLUSH: u64 = 1;
    /// Invalidate the updated page.
    pub const INVLPG: u64 = 2;
}

/// Most requests processed in one `mmu_update` or `mmuext_op` call.
pub const MAX_BATCH: u64 = 512;

const _: () = {
    assert!(size_of::<MmuUpdate>() == 16);
    assert!(size_of::<MmuextOp>() == 24);
};
