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
