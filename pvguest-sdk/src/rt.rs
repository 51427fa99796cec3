//! Runtime: `_start`, the start info, and the panic handler.
//!
//! `_start` receives the start-info address in `rsi` (see
//! [`pvguest_abi::start_info`]), aligns the stack and calls `rt_start`,
//! which copies the start info into SDK memory once, checks its magic, and
//! calls the guest's `main` (declared with [`crate::entry!`]).

use crate::sched;
use core::arch::global_asm;
use pvguest_abi::StartInfo;

static START_INFO: spin::Once<StartInfo> = spin::Once::new();

/// The start info the hypervisor gave this domain.
pub fn start_info() -> &'static StartInfo {
    START_INFO.get().expect("start info is set before main runs")
}

global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    mov rdi, rsi
    and rsp, -16
    xor ebp, ebp
    call {start}
    ud2
    "#,
    start = sym rt_start,
);

extern "Rust" {
    fn __pvguest_main(si: &'static StartInfo);
}

extern "C" fn rt_start(si: *const StartInfo) -> ! {
    // SAFETY: the hypervisor passes the address of the start-info page,
    // mapped read-write in our memory and fully initialised; we copy it once.
    let copy = unsafe { si.read_volatile() };
    let si = START_INFO.call_once(|| copy);
    if !si.magic_ok() {
        crate::println!("pvguest-sdk: bad start-info magic: not started by a compatible hypervisor");
        sched::crash();
    }
    crate::shared::publish(si);
    // Every port starts masked, so an event that comes before its handler
    // is set stays pending instead of being consumed with nobody to run.
    crate::event::mask_all();
    // The SDK's event upcall is registered before `main`, so every part of
    // the SDK that waits for a port (the store link, the block front, the
    // virtio drivers) has its events delivered whether or not the guest
    // calls `event::init` itself. Events stay masked until enabled. (A
    // guest without it had `block` return at once for ever once an event
    // was pending: the hypervisor delivers no upcall without a callback.)
    crate::event::init();
    // SAFETY: `__pvguest_main` is defined by the `entry!` macro with exactly
    // this signature; a guest without it fails to link.
    unsafe { __pvguest_main(si) };
    sched::poweroff()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("PANIC: {info}");
    sched::crash()
}
