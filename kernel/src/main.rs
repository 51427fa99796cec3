//! The Ringfence hypervisor image (ring 0).
#![no_std]
#![no_main]

extern crate freestanding;

mod arch;

use core::fmt::Write;

#[no_mangle]
extern "C" fn kmain(start_info_paddr: u32) -> ! {
    arch::serial::init();
    let _ = writeln!(arch::serial::Serial, "ringfence: hello {start_info_paddr:#x}");
    arch::qemu_exit(arch::EXIT_SUCCESS)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(arch::serial::Serial, "ringfence: PANIC: {info}");
    arch::qemu_exit(arch::EXIT_FAILURE)
}
