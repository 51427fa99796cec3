//! x86-64 page-table entries (4-level paging, 4 KiB pages).

use crate::mm::frames::Mfn;
use bitflags::bitflags;

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;

/// Entries per table.
pub const ENTRIES: usize = 512;

bitflags! {
    /// Page-table entry flags.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PteFlags: u64 {
        /// Present.
        const PRESENT = 1 << 0;
        /// Writable.
        const WRITABLE = 1 << 1;
        /// Accessible from ring 3.
        const USER = 1 << 2;
        /// Write-through.
        const WRITE_THROUGH = 1 << 3;
        /// Cache disable.
        const NO_CACHE = 1 << 4;
        /// Accessed (set by the CPU).
        const ACCESSED = 1 << 5;
        /// Dirty (set by the CPU).
        const DIRTY = 1 << 6;
        /// Large page (in a PD or PDPT entry).
        const HUGE = 1 << 7;
        /// Global.
        const GLOBAL = 1 << 8;
        /// No execute.
        const NO_EXECUTE = 1 << 63;
    }
}

/// Mask of the frame-address bits (12..=51).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// One page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pte(pub u64);

impl Pte {
    /// An entry mapping `mfn` with `flags`.
    pub const fn new(mfn: Mfn, flags: PteFlags) -> Pte {
        Pte(((mfn << 12) & ADDR_MASK) | flags.bits())
    }
    /// The flags (unknown bits dropped).
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0)
    }
    /// The frame the entry points to.
    pub const fn mfn(self) -> Mfn {
        (self.0 & ADDR_MASK) >> 12
    }
    /// P bit.
    pub const fn present(self) -> bool {
        self.0 & PteFlags::PRESENT.bits() != 0
    }
    /// R/W bit.
    pub const fn writable(self) -> bool {
        self.0 & PteFlags::WRITABLE.bits() != 0
    }
    /// U/S bit.
    pub const fn user(self) -> bool {
        self.0 & PteFlags::USER.bits() != 0
    }
    /// PS bit.
    pub const fn huge(self) -> bool {
        self.0 & PteFlags::HUGE.bits() != 0
    }
}

/// Index of `va` in the table of `level` (4 = PML4 .. 1 = PT).
pub const fn table_index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip() {
        let e = Pte::new(0x12345, PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE);
        assert_eq!(e.mfn(), 0x12345);
        assert!(e.present() && e.writable() && !e.user() && !e.huge());
        assert_eq!(e.0 >> 63, 1);
        // Frame numbers beyond 52 physical bits are cut, never spill into flags.
        assert_eq!(Pte::new(u64::MAX, PteFlags::empty()).0 & !ADDR_MASK, 0);
    }

    #[test]
    fn indices() {
        let va = 0xffff_8000_0020_3000u64;
        assert_eq!(table_index(va, 4), 256);
        assert_eq!(table_index(va, 3), 0);
        assert_eq!(table_index(va, 2), 1);
        assert_eq!(table_index(va, 1), 3);
    }
}
