//! The guest virtual address-space contract.
//!
//! ```text
//! 0x0000_0000_0000_0000 ..           guest applications (ring 3, U=1), the guest's to use
//! 0xffff_8000_0000_0000 ..           GUEST_KERNEL_BASE: the domain's memory, pfn 0 first,
//!                                    mapped linearly (va = base + pfn * 4096) at boot
//! 0xffff_ff80_0000_0000 .. 2^64      ENTRY_AREA_BASE: PML4 slot 511, owned by the
//!                                    hypervisor: GDT, IDT, TSS (read-only), entry
//!                                    trampoline (read-only), entry stacks
//! ```
//! The hypervisor itself is not mapped in any guest view. A guest pointer that
//! falls in the entry area, is non-canonical or is unmapped is refused with
//! `EFAULT`.

/// Size of a page and of a frame.
pub const PAGE_SIZE: u64 = 4096;

/// Where the hypervisor maps pfn 0 of every domain at boot. Guest kernel
/// images are linked at or above this address.
pub const GUEST_KERNEL_BASE: u64 = 0xffff_8000_0000_0000;

/// First address of the hypervisor's entry area (PML4 slot 511).
pub const ENTRY_AREA_BASE: u64 = 0xffff_ff80_0000_0000;

/// The PML4 slot reserved for the entry area in every guest view.
pub const ENTRY_AREA_PML4_SLOT: usize = 511;

/// Whether `va` is canonical for 48-bit virtual addresses.
pub const fn is_canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

/// Whether the guest may name `va` at all (canonical and outside the entry
/// area). Being nameable says nothing about being mapped.
pub const fn is_guest_va(va: u64) -> bool {
    is_canonical(va) && va < ENTRY_AREA_BASE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_edges() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0xffff_7fff_ffff_ffff));
        assert!(is_canonical(GUEST_KERNEL_BASE));
        assert!(is_canonical(u64::MAX));
    }

    #[test]
    fn entry_area_is_not_guest_space() {
        assert!(is_guest_va(GUEST_KERNEL_BASE));
        assert!(is_guest_va(ENTRY_AREA_BASE - 1));
        assert!(!is_guest_va(ENTRY_AREA_BASE));
        assert!(!is_guest_va(u64::MAX));
        assert_eq!((ENTRY_AREA_BASE >> 39) & 511, ENTRY_AREA_PML4_SLOT as u64);
    }
}
