//! The hardware layer: everything that touches the CPU or devices directly.
//! It is exercised by the QEMU scenarios; the logic it feeds lives in the
//! host-tested library (`ringfence_kernel`).

pub mod boot;
pub mod cpu;
pub mod descriptors;
pub mod entry;
pub mod ioapic;
pub mod leakcheck;
pub mod mm;
pub mod pci;
pub mod phys;
pub mod pvh;
pub mod rtc;
pub mod serial;
pub mod timer;

/// I/O port of QEMU's `isa-debug-exit` device (`iobase=0xf4,iosize=4`).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Value written for "everything went as the manifest expected": QEMU exits
/// with `(0x10 << 1) | 1 = 33`.
pub const EXIT_SUCCESS: u32 = 0x10;
/// Value written for any failure: QEMU exits with `(0x11 << 1) | 1 = 35`.
pub const EXIT_FAILURE: u32 = 0x11;

/// Ends the QEMU run with `code`; halts if no debug-exit device is present.
pub fn qemu_exit(code: u32) -> ! {
    cpu::outl(DEBUG_EXIT_PORT, code);
    cpu::halt_forever()
}
