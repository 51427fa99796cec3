//! Scheduler hypercalls: yield, block, shut down.

use crate::hypercall::call_readonly;
use pvguest_abi::{hypercall, sched_op, shutdown_reason};

/// Why the domain shuts down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// Finished normally.
    Poweroff,
    /// Asks for a restart.
    Reboot,
    /// Crashed.
    Crash,
}

/// Gives the rest of the time slice to another domain.
pub fn yield_now() {
    call_readonly(hypercall::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]);
}

/// Sleeps until an event arrives for this domain.
pub fn block() {
    call_readonly(hypercall::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]);
}

/// Ends the domain.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let r = match reason {
        ShutdownReason::Poweroff => shutdown_reason::POWEROFF,
        ShutdownReason::Reboot => shutdown_reason::REBOOT,
        ShutdownReason::Crash => shutdown_reason::CRASH,
    };
    call_readonly(hypercall::SCHED_OP, [sched_op::SHUTDOWN, r, 0, 0, 0]);
    // The hypervisor never returns from a valid shutdown.
    loop {
        core::hint::spin_loop();
    }
}

/// Ends the domain normally.
pub fn poweroff() -> ! {
    shutdown(ShutdownReason::Poweroff)
}

/// Ends the domain as crashed.
pub fn crash() -> ! {
    shutdown(ShutdownReason::Crash)
}

/// Sets the kernel stack used for traps and events from ring 3 and for the
/// direct system-call gate (`stack_switch`). `top` must be 16-byte aligned.
pub fn stack_switch(top: u64) -> Result<(), pvguest_abi::Errno> {
    let ss = u64::from(pvguest_abi::selectors::GUEST_KERNEL_SS);
    pvguest_abi::Errno::decode(call_readonly(hypercall::STACK_SWITCH, [ss, top, 0, 0, 0])).map(|_| ())
}

/// Waits until one of `ports` is pending or system time reaches
/// `deadline_ns` (0: no deadline). With no ports it sleeps until the
/// deadline ([`sleep_until`]).
pub fn poll(ports: &[u32], deadline_ns: u64) -> Result<(), pvguest_abi::Errno> {
    let arg = sched_op::SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        pad: 0,
        timeout: deadline_ns,
    };
    pvguest_abi::Errno::decode(call_readonly(
        hypercall::SCHED_OP,
        [sched_op::POLL, &arg as *const sched_op::SchedPoll as u64, 0, 0, 0],
    ))
    .map(|_| ())
}

/// Sleeps until system time reaches `deadline_ns` (a poll of no ports:
/// the domain's events stay pending, and are delivered when it returns).
pub fn sleep_until(deadline_ns: u64) {
    while crate::time::now_ns() < deadline_ns {
        if poll(&[], deadline_ns).is_err() {
            return;
        }
    }
}
