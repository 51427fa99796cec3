//! CPU accounting: who pays for each nanosecond.
//!
//! # The rule
//! Every nanosecond of the CPU belongs to exactly one domain, or to nobody
//! while the CPU is idle. The [`Meter`] keeps one mark, the time up to which
//! the CPU's time has been charged; each charge hands the whole interval
//! since the mark to one domain's BVT account and moves the mark. So time
//! is never charged twice and never lost: the intervals partition the
//! timeline.
//!
//! The hypervisor charges at these points (see `kernel/src/hv/mod.rs`):
//! 1. **Entry.** The interval since the domain was entered (its own run,
//!    the entry path and any fast-path hypercalls) goes to the running
//!    domain.
//! 2. **After the trap's work.** The hypercall (every path: multicall
//!    entries, continuations, page-table validation), the bounce or the
//!    exception, and the event work it triggered go to the domain that
//!    trapped. Timers then fire against the time after that work.
//! 3. **Work for another domain.** A timer interrupt armed for another
//!    domain's deadline, that domain's timer events, and console output
//!    drained from a domain's ring go to that domain, not to whoever
//!    happened to be running.
//! 4. **Before every pick.** Whatever is left goes to the domain that was
//!    running and the meter is settled, so the scheduler decides on exact
//!    accounts; from the pick on,
//!    the time belongs to the chosen domain (its exit path is charged at its
//!    next entry).
//! 5. **Idle.** Time spent halted belongs to nobody ([`Meter::skip`]).
#![allow(clippy::module_name_repetitions)]

use crate::sched::bvt::{Bvt, Ns};

/// The charge point: the time up to which the CPU has been accounted.
///
/// Charges to the same domain in a row are added up and handed to the
/// scheduler in one [`Bvt::account`] call (each call rescans SVT), when the
/// payer changes or at [`Meter::settle`], which the hypervisor calls before
/// every pick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meter {
    mark: Ns,
    /// Charged to this slot but not yet handed to the scheduler.
    pending: Option<(usize, Ns)>,
}

impl Meter {
    /// A meter whose time before `now` belongs to nobody.
    pub const fn new(now: Ns) -> Self {
        Meter { mark: now, pending: None }
    }

    /// The time up to which the CPU has been accounted.
    pub const fn mark(&self) -> Ns {
        self.mark
    }

    /// Charges everything since the mark to the domain in `slot` and moves
    /// the mark to `now`; returns the ns charged. A clock that went
    /// backwards charges nothing and keeps the mark.
    #[inline(always)] // on every trip through the hypervisor
    pub fn charge<const N: usize>(&mut self, bvt: &mut Bvt<N>, slot: usize, now: Ns) -> Ns {
        let ran = now.saturating_sub(self.mark);
        self.mark = self.mark.max(now);
        match &mut self.pending {
            Some((s, ns)) if *s == slot => *ns = ns.saturating_add(ran),
            _ => {
                self.settle(bvt);
                self.pending = Some((slot, ran));
            }
        }
        ran
    }

    /// Whether everything up to `now` is charged to `slot` already (the
    /// mark is at `now` and the pending charge is `slot`'s): then
    /// [`Meter::charge`] of `slot` at `now` would change nothing, and a
    /// caller on a hot path may skip it.
    #[inline(always)]
    pub fn charged_to(&self, slot: usize, now: Ns) -> bool {
        self.mark == now && matches!(self.pending, Some((s, _)) if s == slot)
    }

    /// Hands what has been charged to the scheduler.
    #[inline(always)] // on every trip through the hypervisor
    pub fn settle<const N: usize>(&mut self, bvt: &mut Bvt<N>) {
        if let Some((slot, ns)) = self.pending.take() {
            bvt.account(slot, ns);
        }
    }

    /// Moves the mark to `now` charging nobody (the CPU was idle).
    pub fn skip(&mut self, now: Ns) {
        self.mark = self.mark.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::bvt::{Params, DEFAULT_WEIGHT, VT_SCALE};

    fn two() -> Bvt<2> {
        let mut b = Bvt::new(5_000_000);
        b.add(0, Params::weighted(DEFAULT_WEIGHT), 0).unwrap();
        b.add(1, Params::weighted(DEFAULT_WEIGHT), 0).unwrap();
        b
    }

    fn avt_ns(b: &Bvt<2>, slot: usize) -> u128 {
        b.avt(slot).unwrap() * u128::from(DEFAULT_WEIGHT) / u128::from(VT_SCALE)
    }

    #[test]
    fn intervals_partition_the_timeline() {
        let mut b = two();
        let mut m = Meter::new(100);
        assert_eq!(m.charge(&mut b, 0, 400), 300);
        assert_eq!(m.charge(&mut b, 1, 450), 50);
        m.skip(1_000);
        assert_eq!(m.charge(&mut b, 0, 1_200), 200);
        m.settle(&mut b);
        assert_eq!(avt_ns(&b, 0), 500);
        assert_eq!(avt_ns(&b, 1), 50);
    }

    #[test]
    fn a_clock_going_backwards_charges_nothing() {
        let mut b = two();
        let mut m = Meter::new(1_000);
        assert_eq!(m.charge(&mut b, 0, 900), 0);
        assert_eq!(m.mark(), 1_000);
        assert_eq!(m.charge(&mut b, 0, 1_100), 100);
        m.settle(&mut b);
        assert_eq!(avt_ns(&b, 0), 100);
    }

    #[test]
    fn a_charge_already_made_is_seen() {
        let mut b = two();
        let mut m = Meter::new(100);
        assert!(!m.charged_to(0, 100), "nothing pending");
        m.charge(&mut b, 0, 400);
        assert!(m.charged_to(0, 400));
        assert!(!m.charged_to(1, 400), "pending for another slot");
        assert!(!m.charged_to(0, 401), "time since the mark");
        let before = m;
        assert_eq!(m.charge(&mut b, 0, 400), 0);
        assert_eq!(m, before, "the charge it stands for changes nothing");
    }

    #[test]
    fn nothing_is_lost_between_payers() {
        let mut b = two();
        let mut m = Meter::new(0);
        for t in 1..=100 {
            m.charge(&mut b, (t % 3 == 0) as usize, t * 10);
        }
        m.settle(&mut b);
        assert_eq!(avt_ns(&b, 0) + avt_ns(&b, 1), 1_000, "every ns went to someone");
        assert_eq!(avt_ns(&b, 1), 33 * 10);
    }
}
