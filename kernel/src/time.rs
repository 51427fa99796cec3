//! Time: TSC scaling and wall-clock conversion.
//!
//! System time is nanoseconds since boot, computed by guests from the TSC
//! with the scale the hypervisor publishes in shared info (`tsc_to_system_mul`
//! and `tsc_shift`, Xen's formula):
//!
//! ```text
//! delta = tsc - tsc_timestamp
//! delta = shift >= 0 ? delta << shift : delta >> -shift
//! ns    = system_time + (delta * mul) >> 32        (128-bit product)
//! ```
//! The hypervisor uses the same function, so guest and hypervisor agree on
//! every deadline.

/// A TSC-to-nanoseconds scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscScale {
    /// 32.32 fixed-point multiplier (fraction part only).
    pub mul: u32,
    /// Pre-shift of the TSC delta.
    pub shift: i8,
}

impl TscScale {
    /// The scale for a TSC running at `hz` (clamped to at least 1 Hz).
    pub fn from_hz(hz: u64) -> TscScale {
        const NS: u64 = 1_000_000_000;
        let mut tps = hz.max(1);
        let mut shift: i8 = 0;
        while tps > NS * 2 {
            tps >>= 1;
            shift -= 1;
        }
        while tps <= NS {
            tps <<= 1;
            shift += 1;
        }
        // NS / tps < 1, as a 0.32 fraction.
        let mul = ((u128::from(NS) << 32) / u128::from(tps)) as u32;
        TscScale { mul, shift }
    }

    /// Nanoseconds for a TSC delta.
    pub fn to_ns(&self, delta: u64) -> u64 {
        let d = if self.shift >= 0 { delta << self.shift } else { delta >> -self.shift };
        ((u128::from(d) * u128::from(self.mul)) >> 32) as u64
    }

    /// TSC ticks for `ns` (inverse of [`TscScale::to_ns`], rounded up).
    pub fn to_ticks(&self, ns: u64) -> u64 {
        let d = ((u128::from(ns) << 32).div_ceil(u128::from(self.mul.max(1)))).min(u128::from(u64::MAX)) as u64;
        if self.shift >= 0 {
            d >> self.shift
        } else {
            d.checked_shl((-self.shift) as u32).unwrap_or(u64::MAX)
        }
    }
}

/// Seconds since the Unix epoch for a UTC calendar date and time
/// (proleptic Gregorian). Out-of-range fields are clamped, never a panic.
pub fn unix_seconds(year: u32, month: u32, day: u32, h: u32, m: u32, s: u32) -> u64 {
    // Howard Hinnant's days_from_civil.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month.clamp(1, 12)) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day.clamp(1, 31)) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(h.min(23)) * 3600 + i64::from(m.min(59)) * 60 + i64::from(s.min(59));
    secs.max(0) as u64
}

/// Decodes a CMOS RTC register: BCD unless `binary`.
pub const fn rtc_field(v: u8, binary: bool) -> u32 {
    if binary {
        v as u32
    } else {
        ((v >> 4) as u32) * 10 + (v & 0xf) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_matches_frequency() {
        for hz in [1_000_000u64, 999_999_999, 1_000_000_000, 2_606_000_000, 3_999_999_999, 10_000_000_000] {
            let s = TscScale::from_hz(hz);
            let ns = s.to_ns(hz);
            assert!((999_999_000..=1_000_000_001).contains(&ns), "hz {hz}: one second is {ns} ns");
            let ticks = s.to_ticks(1_000_000);
            let back = s.to_ns(ticks);
            assert!(back >= 1_000_000 && back <= 1_000_000 + 1 + 1_000_000_000 / hz, "hz {hz}: {back}");
        }
    }

    #[test]
    fn scale_survives_extremes() {
        let s = TscScale::from_hz(0);
        let _ = s.to_ns(u64::MAX);
        let _ = s.to_ticks(u64::MAX);
        let s = TscScale::from_hz(u64::MAX);
        let _ = s.to_ns(u64::MAX);
        let _ = s.to_ticks(u64::MAX);
    }

    #[test]
    fn epoch_conversion() {
        assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(unix_seconds(2000, 3, 1, 0, 0, 0), 951_868_800);
        assert_eq!(unix_seconds(2026, 11, 22, 2, 30, 5), 1_795_314_605);
        assert_eq!(rtc_field(0x59, false), 59);
        assert_eq!(rtc_field(59, true), 59);
    }
}
