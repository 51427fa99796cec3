//! Clocks: system time, virtual time and wall-clock time.
//!
//! - [`now_ns`]: nanoseconds since the hypervisor booted (system time),
//!   computed from the TSC with the scale the hypervisor publishes.
//! - [`virtual_ns`]: nanoseconds this domain has actually run.
//! - [`wallclock`]: the time of day (from the host's real-time clock).
//!
//! ```ignore
//! let t0 = pvguest_sdk::time::now_ns();
//! let (secs, _) = pvguest_sdk::time::wallclock();
//! ```

use core::arch::asm;
use pvguest_abi::vcpu::{RunstateInfo, GET_RUNSTATE_INFO};

/// The time-stamp counter (under QEMU `-icount shift=0`, instructions
/// executed): for path-length measurements.
pub fn tsc() -> u64 {
    rdtsc()
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc is allowed in ring 1 (CR4.TSD is clear) and only reads.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// System time: nanoseconds since the hypervisor booted.
pub fn now_ns() -> u64 {
    let t = crate::shared::time_info();
    let delta = rdtsc().wrapping_sub(t.tsc_timestamp);
    let d = if t.tsc_shift >= 0 { delta << t.tsc_shift } else { delta >> -t.tsc_shift };
    t.system_time + ((u128::from(d) * u128::from(t.tsc_to_system_mul)) >> 32) as u64
}

/// The run-state record (time spent running, runnable, blocked).
pub fn runstate() -> RunstateInfo {
    let mut r = RunstateInfo::default();
    // SAFETY: `r` is a writable local of exactly the size the hypervisor
    // writes; nothing else aliases it.
    let rc = unsafe {
        crate::hypercall::raw(
            pvguest_abi::hypercall::VCPU_OP,
            [GET_RUNSTATE_INFO, 0, &mut r as *mut RunstateInfo as u64, 0, 0],
        )
    };
    debug_assert_eq!(rc, 0);
    r
}

/// Virtual time: nanoseconds this domain has run.
pub fn virtual_ns() -> u64 {
    runstate().time[pvguest_abi::vcpu::runstate::RUNNING as usize]
}

/// Wall-clock time now, as (seconds, nanoseconds) since the Unix epoch.
pub fn wallclock() -> (u64, u32) {
    let (sec, nsec) = crate::shared::wallclock();
    let total = u128::from(sec) * 1_000_000_000 + u128::from(nsec) + u128::from(now_ns());
    ((total / 1_000_000_000) as u64, (total % 1_000_000_000) as u32)
}

/// A UTC calendar date and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl DateTime {
    /// The UTC date and time for seconds since the epoch.
    pub fn from_unix(secs: u64) -> DateTime {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
        }
    }
}

impl core::fmt::Display for DateTime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}
