//! One-shot timers in real time (system time) and in virtual time (time
//! this domain has run). They fire `VIRQ_TIMER` and `VIRQ_VTIMER`; bind
//! those with [`crate::event::bind_virq`].
//!
//! ```ignore
//! use pvguest_sdk::{event, timer, time, abi::event::VIRQ_TIMER};
//! event::bind_virq(VIRQ_TIMER, |_| { /* tick */ })?;
//! timer::set_oneshot(time::now_ns() + 10_000_000)?; // in 10 ms
//! ```

use pvguest_abi::vcpu::{
    SingleshotTimer, SET_SINGLESHOT_TIMER, SET_VIRTUAL_TIMER, STOP_SINGLESHOT_TIMER, STOP_VIRTUAL_TIMER,
};
use pvguest_abi::{hypercall, Errno};

fn vcpu_op(cmd: u64, arg: u64) -> Result<u64, Errno> {
    // SAFETY: the timer commands only read their argument.
    Errno::decode(unsafe { crate::hypercall::raw(hypercall::VCPU_OP, [cmd, 0, arg, 0, 0]) })
}

/// Arms the real-time one-shot timer for system time `deadline_ns`
/// (replacing any earlier one). A past deadline fires at once.
pub fn set_oneshot(deadline_ns: u64) -> Result<(), Errno> {
    let t = SingleshotTimer { timeout_abs_ns: deadline_ns, flags: 0, pad: 0 };
    vcpu_op(SET_SINGLESHOT_TIMER, &t as *const SingleshotTimer as u64).map(|_| ())
}

/// Cancels the real-time timer.
pub fn cancel_oneshot() {
    let _ = vcpu_op(STOP_SINGLESHOT_TIMER, 0);
}

/// Arms the virtual-time alarm: fires when this domain has run for
/// `deadline_vns` nanoseconds in total.
pub fn set_virtual(deadline_vns: u64) -> Result<(), Errno> {
    let t = SingleshotTimer { timeout_abs_ns: deadline_vns, flags: 0, pad: 0 };
    vcpu_op(SET_VIRTUAL_TIMER, &t as *const SingleshotTimer as u64).map(|_| ())
}

/// Cancels the virtual-time alarm.
pub fn cancel_virtual() {
    let _ = vcpu_op(STOP_VIRTUAL_TIMER, 0);
}
