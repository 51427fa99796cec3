//! The hypervisor's own view, hardened after boot.
//!
//! The boot stub identity-maps the first 4 GiB with 2 MiB pages, all
//! read-write-execute. [`harden`] replaces the 2 MiB pages that hold the
//! hypervisor image with 4 KiB pages carrying real permissions:
//!
//! | range | mapping |
//! |---|---|
//! | `.text` | read + execute |
//! | boot stub, `.rodata` | read-only, no execute |
//! | `.data`, `.bss`, entry region, the rest of the first 16 MiB | read-write, no execute |
//! | the page below the hypervisor stack | not mapped (guard) |
//! | everything above (domains' RAM, the heap, MMIO) | read-write, no execute (2 MiB pages); the IOAPIC's and local APIC's 2 MiB pages uncached |
//!
//! With CR0.WP set these hold for ring 0 too, so a stray write to code or
//! constants faults, data never executes, and a stack overflow becomes a
//! double fault on the IST1 stack, which the fault reporter prints.
//!
//! # No user pages
//! No entry of any table of the hypervisor view has the U bit: the
//! hypervisor reads guest memory through this identity map (the software
//! page walk of `guest_mem` gives it machine addresses), never through a
//! guest mapping, so SMAP and SMEP can never fire in this view. [`harden`]
//! walks the whole view and fails the boot if that ever stops being true.

use super::cpu;
use core::arch::asm;
use ringfence_kernel::mm::paging::{Pte, PteFlags};

extern "C" {
    static hv_pd: u8;
    static hv_stack_guard: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __data_start: u8;
    static __image_end: u8;
}

/// Number of 2 MiB regions (from physical 0) that get 4 KiB mappings.
const REGIONS: usize = 8;
/// Entries of the boot stub's identity page directories (4 GiB).
const IDENTITY_PDES: usize = 2048;

#[repr(C, align(4096))]
struct Pt([u64; 512]);

static PTS: super::entry::EntryCell<[Pt; REGIONS]> = super::entry::EntryCell::new([const { Pt([0; 512]) }; REGIONS]);

/// Splits the image's 2 MiB pages into 4 KiB pages with permissions.
pub fn harden() {
    let text = (&raw const __text_start as u64, &raw const __text_end as u64);
    let data_start = &raw const __data_start as u64;
    let guard = &raw const hv_stack_guard as u64;
    let end = &raw const __image_end as u64;
    assert!(end <= (REGIONS as u64) << 21, "hypervisor image larger than the hardened range");
    let pts = PTS.get();
    for r in 0..REGIONS {
        for i in 0..512u64 {
            let pa = ((r as u64) << 21) + i * 4096;
            let flags = if pa == guard {
                PteFlags::empty()
            } else if pa >= text.0 && pa < text.1 {
                PteFlags::PRESENT
            } else if pa >= 0x10_0000 && pa < data_start {
                PteFlags::PRESENT | PteFlags::NO_EXECUTE
            } else {
                PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE
            };
            // SAFETY: boot-time, one CPU, interrupts off; these tables are
            // not yet referenced by any page directory.
            unsafe { (*pts)[r].0[i as usize] = if flags.is_empty() { 0 } else { Pte::new(pa >> 12, flags).0 } };
        }
    }
    let pd = &raw const hv_pd as *mut u64;
    for r in 0..REGIONS {
        // SAFETY: entry `r` of the first page directory maps [2r, 2r+2) MiB;
        // the new table maps the same frames (minus the guard page, which
        // nothing uses), so every live access keeps working.
        unsafe {
            let pt = &raw const (*pts)[r] as u64;
            pd.add(r).write_volatile(Pte::new(pt >> 12, PteFlags::PRESENT | PteFlags::WRITABLE).0);
        }
    }
    // The rest of the identity map (the boot stub's 2 MiB pages up to 4 GiB:
    // guests' memory, the heap, MMIO) is data to the hypervisor: never
    // executed.
    // The 2 MiB pages of the IOAPIC (0xFEC00000) and the local APIC
    // (0xFEE00000) are device registers: uncached.
    let uncached = [super::ioapic::BASE >> 21, 0xfee0_0000 >> 21];
    for r in REGIONS..IDENTITY_PDES {
        let cache =
            if uncached.contains(&(r as u64)) { (PteFlags::NO_CACHE | PteFlags::WRITE_THROUGH).bits() } else { 0 };
        // SAFETY: `hv_pd` is the boot stub's 4 contiguous page directories
        // (2048 entries, 4 GiB of 2 MiB pages); entries past the hardened
        // regions map no hypervisor code, NX changes no data access, and
        // only the APICs' pages (device registers) become uncached.
        unsafe {
            let e = pd.add(r).read_volatile();
            pd.add(r).write_volatile(e | PteFlags::NO_EXECUTE.bits() | cache);
        }
    }
    // SAFETY: reloading CR3 flushes the old 2 MiB translations; the code
    // and stack in use stay mapped.
    unsafe { asm!("mov cr3, {0}", in(reg) cpu::read_cr3(), options(nostack, preserves_flags)) };
    let tables = assert_no_user(cpu::read_cr3() & !0xfff, 4);
    crate::log!("hypervisor view: no user (U=1) entry in its {tables} page tables");
}

/// Walks the table at `pa` (level 4 = PML4) and everything below it; panics
/// at the first entry with the U bit. Returns the number of tables walked.
fn assert_no_user(pa: u64, level: u32) -> usize {
    let mut tables = 1;
    for i in 0..512u64 {
        // SAFETY: `pa` is a page-table page of the live hypervisor view, in
        // identity-mapped RAM below 4 GiB; reading it has no effect.
        let e = unsafe { ((pa + 8 * i) as *const u64).read_volatile() };
        let pte = Pte(e);
        if !pte.present() {
            continue;
        }
        assert!(!pte.user(), "hypervisor view: level-{level} table {pa:#x} entry {i} is a user mapping ({e:#x})");
        if level > 1 && !pte.huge() {
            tables += assert_no_user(pte.mfn() << 12, level - 1);
        }
    }
    tables
}
