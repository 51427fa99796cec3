//! The raw hypercall gate.
//!
//! `int 0x82` with the number in `rax` and arguments in `rdi`, `rsi`, `rdx`,
//! `r10`, `r8`; the result comes back in `rax` (see [`pvguest_abi`]). The
//! typed modules ([`crate::console`], [`crate::sched`], [`crate::version`])
//! are the normal way in; this raw form exists for new hypercalls and for
//! tests that pass deliberately bad arguments.

use core::arch::asm;

/// Performs hypercall `nr` and returns the raw `rax`.
///
/// # Safety
/// 1. Any pointer argument must be valid for what hypercall `nr` does with
///    it: the hypervisor checks that a pointer is mapped in this domain, but
///    a hypercall that writes through a pointer can still break Rust's
///    aliasing rules if the pointer is to memory the guest is using.
pub unsafe fn raw(nr: u64, args: [u64; 5]) -> i64 {
    let ret: i64;
    // SAFETY: `int 0x82` enters the hypervisor, which preserves every
    // register except rax and the argument registers (declared clobbered)
    // and returns to the next instruction; memory effects are the caller's
    // responsibility (see above).
    unsafe {
        asm!(
            "int 0x82",
            inlateout("rax") nr as i64 => ret,
            // A preempted batch comes back with its continuation arguments
            // in these registers (see the ABI): they are clobbered.
            inlateout("rdi") args[0] => _,
            inlateout("rsi") args[1] => _,
            inlateout("rdx") args[2] => _,
            inlateout("r10") args[3] => _,
            inlateout("r8") args[4] => _,
            options(nostack),
        );
    }
    ret
}

/// A hypercall whose arguments carry no pointers the hypervisor writes
/// through: safe to call with any values.
pub(crate) fn call_readonly(nr: u64, args: [u64; 5]) -> i64 {
    // SAFETY: callers in this crate use this only for hypercalls that never
    // write guest memory, so no Rust invariant can be broken.
    unsafe { raw(nr, args) }
}
