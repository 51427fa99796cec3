//! The IOAPIC's register window: `IOREGSEL` at `0xFEC00000` selects a
//! register, `IOWIN` at `0xFEC00010` moves its data.
//!
//! # Ownership
//! The hypervisor owns the IOAPIC. q35 puts it at `0xFEC00000` (the
//! firmware's MADT says the same; the hypervisor parses no ACPI tables,
//! so the address is fixed here). The page is reached through the
//! hypervisor's identity map, whose 2 MiB page there is uncached
//! (`arch::mm::harden`); no guest maps it (guests map only their own
//! frames, and the PCI filter keeps BARs off it). This module is the only
//! code that touches the window, and it holds [`WINDOW`] from the select
//! to the data access (one CPU with interrupts off today, so it is never
//! contended; it keeps the two steps together with SMP). Which entries
//! are masked, and when, is `ringfence_kernel::irq`'s policy.
//!
//! # Interrupts taken while halted
//! A device vector that arrives while the CPU halts in ring 0 is not
//! acknowledged by the ring-0 handler: it is recorded in [`TAKEN`] and the
//! trap loop collects it after the halt (`Machine::take_irq`), masks its
//! line, and only then EOIs the local APIC (so a level-triggered line
//! cannot fire again in between).

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};
use ringfence_kernel::irq::{gsi_of_vector, vector_of, IoapicRegs, MAX_GSIS};
use spin::Mutex;

/// Physical (and identity-mapped) address of the register window.
pub const BASE: u64 = 0xfec0_0000;
const IOREGSEL: u64 = BASE;
const IOWIN: u64 = BASE + 0x10;

/// Held from the register select to the data access.
static WINDOW: Mutex<()> = Mutex::new(());

/// Device vectors taken in ring 0 and not yet collected (bit `g`: GSI `g`).
static TAKEN: AtomicU32 = AtomicU32::new(0);

/// The IOAPIC.
pub struct Ioapic;

impl IoapicRegs for Ioapic {
    fn read(&mut self, index: u8) -> u32 {
        let _w = WINDOW.lock();
        // SAFETY: the IOAPIC window is identity-mapped (uncached) in the
        // hypervisor view; these two registers are its whole interface and
        // nothing else accesses them while the lock is held.
        unsafe {
            (IOREGSEL as *mut u32).write_volatile(u32::from(index));
            (IOWIN as *const u32).read_volatile()
        }
    }

    fn write(&mut self, index: u8, value: u32) {
        let _w = WINDOW.lock();
        // SAFETY: as for `read`.
        unsafe {
            (IOREGSEL as *mut u32).write_volatile(u32::from(index));
            (IOWIN as *mut u32).write_volatile(value);
        }
    }
}

/// The ring-0 handler took device vector `vector` (not acknowledged).
/// Returns false if it is not a line's vector.
pub fn taken_in_ring0(vector: u8) -> bool {
    match gsi_of_vector(u64::from(vector)) {
        Some(g) => {
            TAKEN.fetch_or(1 << g, Relaxed);
            true
        }
        None => false,
    }
}

/// One vector recorded by [`taken_in_ring0`], removed from the record.
pub fn take() -> Option<u8> {
    let t = TAKEN.load(Relaxed);
    if t == 0 {
        return None;
    }
    let g = t.trailing_zeros();
    TAKEN.fetch_and(!(1 << g), Relaxed);
    (g < MAX_GSIS).then(|| vector_of(g))
}
