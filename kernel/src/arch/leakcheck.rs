//! Boot-time proof that the guest-visible entry area names no hypervisor
//! physical address.
//!
//! Every guest maps the entry area (see [`super::entry`]) and can read all
//! of it from ring 1. [`check`] runs once the area is fully initialised
//! (descriptor tables written, the hypervisor's own values published) and
//! scans its bytes, read through the hypervisor's identity view of the very
//! frames the guests map:
//!
//! - every 8-byte window, aligned or not: a hit is a value in
//!   `[__image_start, __image_end)`, the hypervisor's physical image (it is
//!   identity-linked, so every hypervisor address is one), less the range of
//!   the large tables filled at boot (`[__tables_start, __tables_end)`: the
//!   frame table and the domain table, megabytes of plain data that no
//!   entry code refers to). A range test is a chance test: every small
//!   integer in the range reads as an address, so the megabytes of tables
//!   made ordinary entry code and the TSS trip it (`05 8f 8f 00 00 00 00
//!   00`, an `add eax, imm32` followed by zeros, read 0x8f8f05). This catches a
//!   stored pointer or CR3 and a `movabsq $imm64`.
//! - every 4-byte window, aligned or not: a hit is a value equal to one of
//!   the addresses that matter most (the PML4, the handlers and trap entry
//!   points, the stack top, the private page and the hypervisor's entry
//!   tables, the image bounds). This catches a `movl $sym, %eax` or
//!   `pushq $sym`. A 4-byte *range* test would not do: ordinary code and
//!   packed descriptors form such windows by chance (`25 a2 2f 00`, the
//!   ModRM byte and disp32 of a RIP-relative `lea`, reads 0x2fa225; the
//!   NOP `0f 1f 40 00` reads 0x401f0f), while an exact match of a 32-bit
//!   value by chance is negligible.
//!
//! Any hit fails the boot, naming the offset and the value.
//!
//! # Not vacuous
//! Before it trusts a clean result, [`check`] scans planted copies of the
//! leaks this area used to have and requires every one to be caught: the
//! hypervisor CR3 stored as an aligned qword (the old `hv_cr3_entry`), the
//! assembled `movabsq $hv_guest_entry, %rax` / `movabsq $hv_ring0_entry,
//! %rax` of the old `entry_common`, and a `movl $hv_guest_entry, %eax`
//! (4-byte form). It also requires the scanned range to be the whole area,
//! text page included. The log line says how many plants were caught, and
//! the `cpu-*` QEMU scenarios assert it.

use super::entry;
use core::arch::global_asm;

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static __tables_start: u8;
    static __tables_end: u8;
    static __text_start: u8;
    static hv_pml4: u8;
    static hv_guest_entry: u8;
    static hv_guest_entry_smap: u8;
    static hv_ring0_entry: u8;
    static hv_stack_top: u8;
    static leakcheck_plant_text: u8;
    static leakcheck_plant_text_end: u8;
}

/// The addresses the 4-byte scan looks for.
fn key_addresses() -> [u64; 13] {
    [
        &raw const __image_start as u64,
        &raw const __image_end as u64,
        &raw const __text_start as u64,
        &raw const hv_pml4 as u64,
        &raw const hv_guest_entry as u64,
        &raw const hv_guest_entry_smap as u64,
        &raw const hv_ring0_entry as u64,
        &raw const hv_stack_top as u64,
        // The Rust handlers by their own items: declared here as statics,
        // a whole-program (LTO) build would see a function and a data
        // symbol of one name and link neither.
        crate::platform::rust_guest_trap as *const () as u64,
        crate::platform::rust_ring0_trap as *const () as u64,
        entry::ENTRY_PRIVATE.get() as u64,
        super::descriptors::hv_entry_pdpt(),
        entry::current_fx.as_ptr() as u64,
    ]
}

// The old entry code's absolute jumps, assembled into hypervisor-only
// rodata (never executed, never guest-visible): the scanner must flag them.
global_asm!(
    r#"
    .section .rodata.leakcheck_plant, "a"
    .global leakcheck_plant_text
leakcheck_plant_text:
    movabsq $hv_guest_entry, %rax
    jmpq *%rax
    movabsq $hv_ring0_entry, %rax
    jmpq *%rax
    movl $hv_guest_entry, %eax
    .global leakcheck_plant_text_end
leakcheck_plant_text_end:
    "#,
    options(att_syntax)
);

/// A window that holds a hypervisor physical address.
#[derive(Clone, Copy, Debug)]
struct Hit {
    offset: usize,
    value: u64,
}

/// First 8-byte window (any alignment) of `bytes` whose little-endian value
/// lies in one of `ranges`.
fn find_qword(bytes: &[u8], ranges: &[(u64, u64)]) -> Option<Hit> {
    bytes.windows(8).enumerate().find_map(|(offset, w)| {
        let value = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        ranges.iter().any(|r| value >= r.0 && value < r.1).then_some(Hit { offset, value })
    })
}

/// First 4-byte window (any alignment) of `bytes` whose little-endian value
/// is one of `keys`.
fn find_dword(bytes: &[u8], keys: &[u64]) -> Option<Hit> {
    bytes.windows(4).enumerate().find_map(|(offset, w)| {
        let value = u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        keys.contains(&value).then_some(Hit { offset, value })
    })
}

/// Scans the guest-visible entry area; panics (failing the boot) if it
/// holds a hypervisor physical address or if the scanner misses a planted
/// leak. Returns the number of bytes scanned and of plants caught.
pub fn check(hv_cr3: u64) -> (usize, usize) {
    let image = (&raw const __image_start as u64, &raw const __image_end as u64);
    assert!(image.0 < image.1 && image.1 <= 1 << 32, "image not identity-linked below 4 GiB");
    let keys = key_addresses();
    assert!(keys.iter().all(|&k| k >= image.0 && k <= image.1), "key addresses lie in the image");
    let tables = (&raw const __tables_start as u64, &raw const __tables_end as u64);
    assert!(image.0 <= tables.0 && tables.0 <= tables.1 && tables.1 <= image.1, "tables lie in the image");
    // (The tables start where .bss ends, so the hypervisor stack's top, one
    // past .bss, is their first address: the ranges keep it.)
    assert!(keys.iter().all(|&k| k <= tables.0 || k >= tables.1), "no key address lies in the tables");
    let guarded = [(image.0, tables.0 + 1), (tables.1, image.1)];

    // Plants: each must be caught, or a clean scan proves nothing.
    let mut rodata_page = [0u8; 64];
    rodata_page[8..16].copy_from_slice(&hv_cr3.to_le_bytes());
    let text_start = &raw const leakcheck_plant_text;
    let text_len = &raw const leakcheck_plant_text_end as usize - text_start as usize;
    // SAFETY: the plant is `text_len` bytes of hypervisor rodata between
    // two labels of the block above; it is never written.
    let text = unsafe { core::slice::from_raw_parts(text_start, text_len) };
    assert_eq!(text_len, 29, "entry leak check: plant layout");
    let movabs_guest = &text[..10];
    let movabs_ring0 = &text[12..22];
    let movl = &text[text_len - 5..];
    let plants: [(&str, bool); 4] = [
        ("stored CR3 qword", find_qword(&rodata_page, &guarded).is_some_and(|h| h.offset == 8 && h.value == hv_cr3)),
        ("movabsq $hv_guest_entry", find_qword(movabs_guest, &guarded).is_some()),
        ("movabsq $hv_ring0_entry", find_qword(movabs_ring0, &guarded).is_some()),
        ("movl $hv_guest_entry", find_dword(movl, &keys).is_some()),
    ];
    for (what, caught) in plants {
        assert!(caught, "entry leak check: the scanner missed a planted {what}");
    }

    // The area itself, through the identity view of the frames guests map.
    let r = entry::region();
    assert!(r.start < r.text && r.text < r.stacks && r.stacks < r.end, "entry region layout");
    // SAFETY: [start, end) is the linked entry region, identity-mapped and
    // readable in the hypervisor's view; nothing writes it during the scan
    // (one CPU, interrupts off, no guest running yet).
    let area = unsafe { core::slice::from_raw_parts(r.start as *const u8, (r.end - r.start) as usize) };
    let hit = find_qword(area, &guarded).or_else(|| find_dword(area, &keys));
    if let Some(h) = hit {
        panic!(
            "entry leak check: guest-visible entry area offset {:#x} (alias {:#x}) holds hypervisor physical address {:#x}",
            h.offset,
            pvguest_abi::layout::ENTRY_AREA_BASE + h.offset as u64,
            h.value
        );
    }
    (area.len(), plants.len())
}
