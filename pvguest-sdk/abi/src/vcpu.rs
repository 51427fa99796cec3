//! `vcpu_op(cmd, vcpu, arg)`: per-vCPU timers and run-state. Only vCPU 0
//! exists; any other number is `-EINVAL`.

use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Copy the run-state ([`RunstateInfo`]) to `arg`.
pub const GET_RUNSTATE_INFO: u64 = 4;
/// Arm the real-time one-shot timer: `arg` points to [`SingleshotTimer`].
pub const SET_SINGLESHOT_TIMER: u64 = 8;
/// Cancel the real-time one-shot timer.
pub const STOP_SINGLESHOT_TIMER: u64 = 9;
/// Ringfence: arm the virtual-time alarm; `arg` points to a
/// [`SingleshotTimer`] whose deadline is in the domain's virtual time (ns it
/// has run). Fires `VIRQ_VTIMER`.
pub const SET_VIRTUAL_TIMER: u64 = 64;
/// Ringfence: cancel the virtual-time alarm.
pub const STOP_VIRTUAL_TIMER: u64 = 65;

/// [`SingleshotTimer::flags`]: fail with `-ETIME` (62) if the deadline has
/// already passed, instead of firing at once.
pub const SSHOT_FUTURE: u32 = 1;

/// Error returned for a deadline in the past with [`SSHOT_FUTURE`].
pub const ETIME: i64 = -62;

/// Argument of the timer commands (Xen's `vcpu_set_singleshot_timer`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SingleshotTimer {
    /// Absolute deadline in ns (system time, or virtual time for
    /// [`SET_VIRTUAL_TIMER`]).
    pub timeout_abs_ns: u64,
    /// `SSHOT_*` flags.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// Run states (index into [`RunstateInfo::time`]).
pub mod runstate {
    /// Running on a CPU.
    pub const RUNNING: u32 = 0;
    /// Runnable, waiting for a CPU.
    pub const RUNNABLE: u32 = 1;
    /// Blocked on an event.
    pub const BLOCKED: u32 = 2;
    /// Not running for another reason.
    pub const OFFLINE: u32 = 3;
}

/// Run-state accounting (Xen's `vcpu_runstate_info`). `time[RUNNING]` is the
/// domain's virtual time.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RunstateInfo {
    /// Current state.
    pub state: u32,
    /// Padding.
    pub pad: u32,
    /// System time at which `state` was entered.
    pub state_entry_time: u64,
    /// Total ns spent in each state.
    pub time: [u64; 4],
}

const _: () = {
    assert!(size_of::<SingleshotTimer>() == 16);
    assert!(size_of::<RunstateInfo>() == 48);
};
