//! Virtual slots for foreign mappings: page-sized kernel addresses whose
//! page-table entries exist and are not present, where a backend maps a
//! peer's grants ([`crate::grant::map`]). A block backend maps up to 11
//! pages per request, many requests at a time, for several domains, so it
//! needs far more such addresses than the tail of the boot tables offers
//! (that tail is the device-memory window, [`crate::mmio::window`]).
//!
//! # Layout and ownership
//! The window is [`L1S`] level-1 tables' worth of slots ([`SLOTS`] pages),
//! starting at the first 2 MiB boundary past the domain's memory and the
//! device-memory window, in the boot page directory. Its level-1 tables are
//! fresh pages of the domain, made read-only, pinned and linked with
//! validated updates when the window is first used ([`alloc()`]); the
//! hypervisor writes their entries when a grant is mapped and clears them
//! on unmap. Slots are handed out in runs of consecutive addresses and
//! given back with [`free`]; the allocator is a bitmap behind a lock, so
//! event handlers may not call it while `main` holds it (the SDK never
//! does). A freed slot must be unmapped first: the allocator cannot check
//! that, and a mapping left behind would be found by the next user's
//! `map` (the hypervisor refuses to map over a present entry).
//!
//! [`set_machine`] records the machine address mapped at a slot, so that
//! DMA code can translate a slot's address ([`machine_of`]) the way it
//! translates the domain's own memory.

use crate::mm::{self, Pte};
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_abi::Errno;

/// Level-1 tables in the window.
pub const L1S: usize = 8;
/// Slots (pages) in the window.
pub const SLOTS: usize = L1S * 512;

struct Window {
    /// First address (0: not made yet).
    base: u64,
    /// One bit per slot: set while handed out.
    used: [u64; SLOTS / 64],
    /// Slots not handed out.
    free: usize,
}

static WINDOW: spin::Mutex<Window> = spin::Mutex::new(Window { base: 0, used: [0; SLOTS / 64], free: SLOTS });

/// Machine frame mapped at each slot (0: none recorded), and the window's
/// first address (0: not made): outside the lock, so that DMA code
/// translating addresses ([`machine_of`], once per buffer a device is
/// given) takes no lock. Written only by the slot's holder (set when it
/// maps, cleared by [`alloc()`] and [`free`]).
static MACHINE: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static BASE: AtomicU64 = AtomicU64::new(0);

/// The window's first address and size in pages, once made.
pub fn window() -> Option<(u64, usize)> {
    let w = WINDOW.lock();
    (w.base != 0).then_some((w.base, SLOTS))
}

/// Makes the window's tables: each a fresh page, read-only, pinned as a
/// level-1 table and linked into the boot page directory.
fn make(w: &mut Window) -> Result<(), Errno> {
    let si = crate::start_info();
    let base = si.virt_base + si.nr_pages.div_ceil(512) * 512 * 4096;
    // The boot page directories follow the PML4 and the PDPT, one per GiB.
    let root_pfn = mm::pfn_of_va(si.pt_base).ok_or(Errno::EINVAL)?;
    for k in 0..L1S as u64 {
        let va = base + k * 512 * 4096;
        let gib = (va - si.virt_base) >> 30;
        let nr_pts = si.nr_pages.div_ceil(512);
        if gib >= nr_pts.div_ceil(512).max(1) {
            // Past the boot page directories: the domain is too large for
            // the window (more than a GiB less 8 MiB).
            return Err(Errno::ENOMEM);
        }
        let pd = mm::mfn_of_pfn(root_pfn + 2 + gib);
        let l1 = mm::alloc_page().ok_or(Errno::ENOMEM)?;
        mm::make_readonly(l1)?;
        mm::pin(1, l1.mfn)?;
        let slot = ((va >> 21) & 511) as usize;
        mm::mmu_update(&[mm::pte_update(pd, slot, Pte::new(l1.mfn, Pte::WRITABLE))]).map_err(|(_, e)| e)?;
    }
    w.base = base;
    BASE.store(base, Ordering::Release);
    Ok(())
}

/// `n` consecutive free slots (1 to 512): their first address. Makes the
/// window on first use. `ENOMEM` when no run of `n` is free, `EINVAL` for
/// a bad `n`.
pub fn alloc(n: usize) -> Result<u64, Errno> {
    if n == 0 || n > 512 {
        return Err(Errno::EINVAL);
    }
    let mut w = WINDOW.lock();
    if w.base == 0 {
        make(&mut w)?;
    }
    // Whole words at a time where they are full (the common case of a
    // busy window), bit by bit inside the others.
    let mut run = 0;
    let mut i = 0;
    while i < SLOTS {
        let word = w.used[i / 64];
        if i % 64 == 0 && word == u64::MAX {
            run = 0;
            i += 64;
            continue;
        }
        if i % 64 == 0 && word == 0 && run + 64 < n {
            run += 64;
            i += 64;
            continue;
        }
        if word & (1 << (i % 64)) != 0 {
            run = 0;
            i += 1;
            continue;
        }
        run += 1;
        if run == n {
            let first = i + 1 - n;
            for (j, m) in MACHINE.iter().enumerate().take(i + 1).skip(first) {
                w.used[j / 64] |= 1 << (j % 64);
                m.store(0, Ordering::Relaxed);
            }
            w.free -= n;
            return Ok(w.base + first as u64 * 4096);
        }
        i += 1;
    }
    Err(Errno::ENOMEM)
}

/// Slots not handed out (all of them before the window is made).
pub fn available() -> usize {
    let w = WINDOW.lock();
    if w.base == 0 {
        SLOTS
    } else {
        w.free
    }
}

fn index(w: &Window, va: u64) -> Option<usize> {
    let i = va.checked_sub(w.base)? / 4096;
    (w.base != 0 && (i as usize) < SLOTS && va.is_multiple_of(4096)).then_some(i as usize)
}

/// Gives back `n` slots from `va` (what [`alloc()`] handed out, unmapped).
/// Addresses outside the window are ignored.
pub fn free(va: u64, n: usize) {
    let mut w = WINDOW.lock();
    let Some(first) = index(&w, va) else { return };
    for (j, m) in MACHINE.iter().enumerate().skip(first).take(n) {
        if w.used[j / 64] & (1 << (j % 64)) != 0 {
            w.free += 1;
        }
        w.used[j / 64] &= !(1 << (j % 64));
        m.store(0, Ordering::Relaxed);
    }
}

/// Records that the frame at machine address `ma` is mapped at slot `va`
/// (for [`machine_of`]); `0` forgets it.
pub fn set_machine(va: u64, ma: u64) {
    if let Some(i) = slot_of(va) {
        MACHINE[i].store(ma / 4096, Ordering::Release);
    }
}

/// The slot index of page-aligned `va`, without the lock.
fn slot_of(va: u64) -> Option<usize> {
    let base = BASE.load(Ordering::Acquire);
    let i = va.checked_sub(base)? / 4096;
    (base != 0 && (i as usize) < SLOTS && va.is_multiple_of(4096)).then_some(i as usize)
}

/// The machine address of `va` if it lies in a slot with a recorded frame.
pub fn machine_of(va: u64) -> Option<u64> {
    let mfn = MACHINE[slot_of(va & !4095)?].load(Ordering::Acquire);
    (mfn != 0).then_some(mfn * 4096 + (va & 4095))
}
