//! Borrowed-virtual-time (BVT) scheduling, as pure logic.
//!
//! This is the CPU scheduler of Duda & Cheriton, "Borrowed-Virtual-Time (BVT)
//! scheduling: supporting latency-sensitive threads in a general-purpose
//! scheduler" (SOSP '99), the one early Xen used. It owns no clock and no
//! timer: the hypervisor tells it how long a domain ran and when things
//! happen, and it answers which domain to run next and for how long. All of
//! it is host-tested with a discrete-event simulator (see the tests at the
//! bottom of this file).
//!
//! # Terms
//!
//! Each domain (an *entity*, kept in a numbered slot) has [`Params`]:
//! a weight `w` (1..=[`MAX_WEIGHT`]), a warp `W`, a warp limit `L` and an
//! unwarp requirement `U`.
//!
//! - **Virtual time** is real time scaled by weight: running `t` real ns
//!   advances a domain's clock by `t * K / w` virtual ns, where
//!   `K` = [`VT_SCALE`] = [`MAX_WEIGHT`]. A domain of the greatest weight
//!   ages one virtual ns per real ns; one of weight 1 ages `K` times faster.
//!   Nothing is rounded away: the remainder of each division is carried to the
//!   next charge, so a domain's virtual time is exact however the hypervisor
//!   slices its runs.
//! - **AVT** (actual virtual time, `A`): the virtual time a domain has consumed.
//!   It only grows while the domain runs (see [`Bvt::account`]); a blocked
//!   domain's AVT stands still.
//! - **EVT** (effective virtual time, `E`): `E = A - (warped ? W_v : 0)`, where
//!   `W_v` is the warp in virtual time. The scheduler always prefers the
//!   runnable domain with the smallest EVT.
//! - **SVT** (scheduler virtual time): the smallest AVT among runnable domains
//!   (kept when nothing is runnable). It never decreases.
//!
//! Because every runnable domain's AVT advances at `K / w` per real ns of CPU
//! and the scheduler keeps their EVTs within a bounded distance of each other,
//! domains that stay runnable get CPU in proportion to their weights.
//!
//! # Units of the parameters
//!
//! The context-switch allowance `C` and the warp `W` are given in real ns and
//! converted to virtual time with the weight of the domain they apply to:
//! `C_v = C * K / w_current`, `W_v = W * K / w_self`. So `C` is the real time
//! the running domain may run past the point where another domain became more
//! deserving, and `W` is how much real run time of its own a warped domain
//! may borrow ahead of its fair share. `L` (real run time while warped) and
//! `U` (real time, running or not, since the last unwarp) are plain real time.
//! For a wake to preempt at once, the warp must cover the allowance:
//! `W_v > C_v(current) + (E_current - SVT)`. The running domain is never
//! `C_v` or more ahead of SVT, so with equal weights (and no other warped
//! domain) `W >= 2C` always suffices.
//!
//! # The rules
//!
//! 1. **Charging.** [`Bvt::account`] adds `ran * K / w` to the AVT of the
//!    domain that ran (and the run to its warped-run total, see 5).
//! 2. **Choosing.** [`Bvt::pick`] runs the runnable domain with the smallest
//!    EVT, except that the running domain `c` keeps the CPU while
//!    `E_c < E_o + C_v(c)`, where `o` is the best other runnable domain. It
//!    is preempted once `E_c` reaches `E_o + C_v(c)`. This bounds switching:
//!    a domain changes places with an equal one only after running `C` past
//!    it. With two equal CPU-bound domains the first run lasts `C` and every
//!    later one `2C` (from `C` behind the other to `C` ahead of it), so they
//!    switch `1 / 2C` times a second. Ties in EVT go to the running domain,
//!    then to the most recently woken (Xen queues a woken domain at the head
//!    of its run queue; a domain woken to SVT ties with the one that defines
//!    SVT and should go first), then to the lowest slot.
//! 3. **Preemption timer.** Alongside the choice, `pick` returns
//!    `run_for_ns`: the real time the chosen domain `n` may run before rule 2
//!    preempts it, `(E_o + C_v(n) - E_n) * w_n / K` (rounded up, counting the
//!    carried remainder), shortened to the rest of its warp limit if it is
//!    warped. If `n` is the only runnable domain it is `None`: run until
//!    something else happens. The hypervisor programs a one-shot timer with
//!    it; there is no periodic tick.
//! 4. **Waking.** A domain that wakes gets `A = max(A, SVT)`. A domain that
//!    slept has used no CPU, so its AVT lags; without the clamp it would wake
//!    with a large credit and monopolise the CPU until it caught up, starving
//!    everyone. Clamping to SVT puts it level with the most deserving runnable
//!    domain: sleepers are not punished, but they bank no credit either. A
//!    newly [added](Bvt::add) domain starts at `A = SVT` for the same reason.
//! 5. **Warping.** A domain with `W > 0` asks to be warped each time it
//!    wakes. It is warped at that wake if at least `U` real ns have passed
//!    since it was last unwarped (or it never was). While warped, its EVT is
//!    `W_v` lower, so it preempts a CPU-bound domain at once (when `W > C` in
//!    virtual terms) instead of waiting up to `C`: low dispatch latency,
//!    borrowed against its future share (its AVT still grows, so the borrowed
//!    time is paid back). It is unwarped when it blocks, or when it has run
//!    `L` real ns warped since it warped (`L = 0`: no limit). A request made
//!    while `U` has not passed is dropped (the domain runs unwarped until its
//!    next wake). Warp changes priority, never long-term share: a domain
//!    that stays warped is just `W_v` ahead, forever, of where it would be.
//! 6. **Idle.** If nothing is runnable, `pick` returns no domain; the
//!    hypervisor halts the CPU until an interrupt or a timer.
//!
//! # Invariants (checked by the randomized test)
//!
//! - `pick` returns only slots that are live and runnable, and `None` exactly
//!   when none are.
//! - SVT never decreases, and every runnable domain has `A >= SVT`.
//! - A switch away from a runnable `current` happens only when
//!   `E_current >= E_next + C_v(current)`; a switch to another domain always
//!   picks one of minimal EVT.
//! - `run_for_ns` is `None` exactly when one domain is runnable, and at least
//!   1 ns otherwise (the timer is never programmed for "now").
//! - No input panics or overflows: every product saturates, and bad
//!   weights are refused (see "Representation").
//!
//! # Representation
//!
//! The scheduler runs on every trip through the hypervisor, so its hot
//! paths stay in 64-bit arithmetic: each entity keeps its AVT as a `u64`
//! *relative to a base* ([`Bvt::svt`] and friends add the base back and
//! answer in absolute `u128`/`i128`). When SVT passes 2^61 the base moves
//! up to SVT and every relative AVT, and every key in the run-queue heaps,
//! drops by the same amount (O(N), in place: a common shift keeps the heap
//! order, so nothing is re-sorted). With weight 1 virtual time runs 10^4
//! times faster than real time, so that happens at most every 2.6 days of
//! CPU. Runnable domains have `A >= SVT`, so their AVTs move exactly; a
//! blocked domain behind SVT is floored at the new base, which changes
//! nothing, since it wakes at `max(A, SVT)`. A relative AVT saturates at
//! 2^62, and the warp and allowance in virtual time are capped at 2^60, so
//! an EVT (`A - W_v`) and every sum of one with an allowance fit in `i64`.
//! The heap keys are packed integers: EVT, then the wake stamp (48 bits,
//! most recent first), then the slot (16 bits), so the tie rules are one
//! integer comparison.
//!
//! # Worked example
//!
//! `C` = 5 ms. Domain A has weight 5 000 (1 real ms = 2 virtual ms), B has
//! weight 2 500 (1 real ms = 4 virtual ms), so `C_v(A)` = 10 virtual ms and
//! `C_v(B)` = 20 virtual ms. I is an interactive domain of weight 2 500 with
//! a 10 ms warp (`W_v` = 40 virtual ms) and a 1 ms warp limit.
//!
//! | real time | event | AVT A / B (virtual ms) | decision |
//! |---|---|---|---|
//! | 0 | both added | 0 / 0 | tie: A; B is level, so A runs `C` = 5 ms |
//! | 5 ms | timer | 10 / 0 | `E_A` = 0 + 10: switch; B runs (10 + 20 − 0) / 4 = 7.5 ms |
//! | 12.5 ms | timer | 10 / 30 | switch; A runs (30 + 10 − 10) / 2 = 15 ms |
//! | 27.5 ms | timer | 40 / 30 | switch; B runs 7.5 ms again, and so on: A gets 2/3 |
//! | 30 ms | I wakes | 40 / 40 | `A_I` = SVT = 40, `E_I` = 0: preempts B; runs 1 ms (its `L`) |
//!
//! Without the warp, I would have EVT 40; B (EVT 40) would keep the CPU for
//! its allowance, 5 ms more, and I would wait. The same in code:
//!
//! ```
//! use ringfence_kernel::sched::bvt::{Bvt, Params};
//! const MS: u64 = 1_000_000;
//! let mut s: Bvt<4> = Bvt::new(5 * MS);
//! s.add(0, Params::weighted(5_000), 0).unwrap(); // A
//! s.add(1, Params::weighted(2_500), 0).unwrap(); // B
//! s.add(2, Params::warped(2_500, 10 * MS, MS, 0), 0).unwrap(); // I
//! s.block(2, 0); // I waits for its first event
//!
//! let p = s.pick(0, None);
//! assert_eq!((p.next, p.run_for_ns), (Some(0), Some(5 * MS)));
//! s.account(0, 5 * MS);
//! let p = s.pick(5 * MS, Some(0));
//! assert_eq!((p.next, p.run_for_ns), (Some(1), Some(7_500_000)));
//! s.account(1, 7_500_000);
//! let p = s.pick(12_500_000, Some(1));
//! assert_eq!((p.next, p.run_for_ns), (Some(0), Some(15 * MS)));
//! s.account(0, 15 * MS);
//! let p = s.pick(27_500_000, Some(0));
//! assert_eq!((p.next, p.run_for_ns), (Some(1), Some(7_500_000)));
//!
//! // At 30 ms an event wakes I: account B's run, wake, pick.
//! s.account(1, 2_500_000);
//! s.wake(2, 30 * MS);
//! assert_eq!(s.avt(2), Some(40_000_000)); // = SVT: 40 virtual ms
//! let p = s.pick(30 * MS, Some(1));
//! assert_eq!((p.next, p.run_for_ns), (Some(2), Some(MS)));
//! ```
//!
//! # Driving it (the hypervisor's side)
//!
//! At every entry to the hypervisor that may change what runs (timer
//! interrupt, event delivery, block/yield hypercalls, domain creation or
//! death), with `now` the system time in ns:
//!
//! 1. `account(current, now - dispatched_at)` for the domain that was running
//!    (so its AVT and warp limit are up to date), then `dispatched_at = now`;
//! 2. apply what happened: `block` (the domain blocked), `wake` (an event
//!    arrived for a blocked domain), `add`, `remove`;
//! 3. `pick(now, current)` and switch to `next` (or halt if `None`);
//! 4. if `run_for_ns` is `Some(t)`, program the one-shot (LAPIC TSC-deadline
//!    or one-shot count) timer to fire at `now + t`; if `None`, cancel it.
//!    When it fires, go to 1.
//!
//! Calling `account` + `pick` more often than needed is harmless: the
//! decision and the remaining time come out the same. So a yield hypercall
//! is just `account` + `pick`: under BVT it gives the CPU away only if
//! another domain is due by rule 2; a domain with nothing to do should
//! block instead.
//!
//! A warp limit that expires inside [`Bvt::account`] is dated by the next call
//! that carries `now` (normally the `pick` that follows): the unwarp instant
//! is that `now` minus the part of the run that went past `L`.

use super::heap::IndexedHeap;

/// Real time in nanoseconds.
pub type Ns = u64;

/// Virtual time in virtual nanoseconds (see [`VT_SCALE`]).
pub type Vt = u128;

/// Smallest accepted weight.
pub const MIN_WEIGHT: u32 = 1;

/// Greatest accepted weight.
pub const MAX_WEIGHT: u32 = 10_000;

/// A suggested weight for ordinary domains (the manifest's default).
pub const DEFAULT_WEIGHT: u32 = 100;

/// `K`: running `t` real ns advances AVT by `t * K / weight` virtual ns.
///
/// Equal to [`MAX_WEIGHT`], so virtual time is real time at the greatest
/// weight and a virtual ns is never coarser than a real ns.
pub const VT_SCALE: u64 = MAX_WEIGHT as u64;

/// The context-switch allowance `C` the hypervisor should use unless told
/// otherwise: 5 ms, as in Xen's BVT.
pub const DEFAULT_CTX_ALLOWANCE_NS: Ns = 5_000_000;

/// Allowances below this (10 µs, Xen's `CTX_MIN`) are raised to it, so the
/// preemption timer is never programmed a few ns ahead.
pub const MIN_CTX_ALLOWANCE_NS: Ns = 10_000;

/// A relative AVT saturates here (2^62 virtual ns; see "Representation"
/// in the module docs), leaving `i64` room for every EVT sum and
/// difference. SVT moves the base before any runnable domain gets near it.
pub const REL_MAX: i64 = 1 << 62;

/// SVT (relative) at which the base moves up to it.
const REBASE_AT: i64 = 1 << 61;

/// Cap of `W_v` and `C_v` (2^60 virtual ns: 1.3 days of real time at weight 1).
const VIRTUAL_PARAM_MAX: u64 = 1 << 60;

/// Wake stamps are kept in 48 bits of the EVT key (2.8 * 10^14 wakes);
/// later ones tie with each other.
const WOKE_MAX: u64 = (1 << 48) - 1;

/// A domain's scheduling parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Share of the CPU, relative to other domains' weights
    /// ([`MIN_WEIGHT`]..=[`MAX_WEIGHT`]).
    pub weight: u32,
    /// Warp `W`: real run time (at this domain's own weight) that the domain
    /// may borrow ahead of its fair share while warped. 0: never warp.
    pub warp_ns: Ns,
    /// Warp limit `L`: real run time after which a warped domain is unwarped.
    /// 0: no limit.
    pub warp_limit_ns: Ns,
    /// Unwarp requirement `U`: real time that must pass after an unwarp
    /// before the domain may warp again. 0: may warp at every wake.
    pub unwarp_ns: Ns,
}

impl Params {
    /// A domain of this weight that never warps.
    pub const fn weighted(weight: u32) -> Self {
        Self { weight, warp_ns: 0, warp_limit_ns: 0, unwarp_ns: 0 }
    }

    /// A latency-sensitive domain: warp `W`, limit `L`, unwarp requirement
    /// `U` (all in real ns).
    pub const fn warped(weight: u32, warp_ns: Ns, warp_limit_ns: Ns, unwarp_ns: Ns) -> Self {
        Self { weight, warp_ns, warp_limit_ns, unwarp_ns }
    }

    /// Whether the weight is in range.
    pub const fn is_valid(&self) -> bool {
        self.weight >= MIN_WEIGHT && self.weight <= MAX_WEIGHT
    }
}

impl Default for Params {
    fn default() -> Self {
        Self::weighted(DEFAULT_WEIGHT)
    }
}

/// Why [`Bvt::add`] or [`Bvt::set_params`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BvtError {
    /// Weight 0 or above [`MAX_WEIGHT`].
    BadWeight,
    /// Slot number not below the capacity `N`.
    BadSlot,
    /// `add` on a slot that already holds a domain.
    SlotInUse,
    /// `set_params` on an empty slot.
    NoSuchDomain,
}

/// The scheduler's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The domain to run, or `None`: nothing is runnable, halt.
    pub next: Option<usize>,
    /// Real time after which `pick` should be asked again (program a one-shot
    /// timer for it); `None`: no other domain is runnable, no timer needed.
    pub run_for_ns: Option<Ns>,
}

impl Pick {
    /// Nothing to run.
    pub const IDLE: Self = Self { next: None, run_for_ns: None };
}

#[derive(Clone, Copy, Debug)]
struct Entity {
    params: Params,
    /// Actual virtual time, relative to the scheduler's base (negative
    /// only for a blocked domain behind SVT at a rebase).
    avt: i64,
    /// `W_v` (capped at [`VIRTUAL_PARAM_MAX`]).
    warp_v: u64,
    /// `C_v` (capped at [`VIRTUAL_PARAM_MAX`]).
    ctx_v: u64,
    /// `ran * K` not yet turned into AVT; always `< weight`.
    rem: u64,
    runnable: bool,
    warped: bool,
    /// Real run time since the current warp began.
    warped_run_ns: Ns,
    /// The scheduler's wake counter at this domain's last wake (0: never
    /// woken). Ties in EVT go to the most recently woken.
    woke: u64,
    /// When it was last unwarped (`None`: never warped, or not yet known).
    last_unwarp: Option<Ns>,
    /// Set by `account` when the warp limit ran out: how far the run went
    /// past it. Turned into `last_unwarp` by the next call carrying `now`.
    unwarp_overshoot: Option<Ns>,
}

impl Entity {
    #[inline]
    fn weight(&self) -> u64 {
        u64::from(self.params.weight)
    }

    /// Caches `W_v` and `C_v` for the current weight and allowance.
    fn cache_virtual(&mut self, ctx_allowance_ns: Ns) {
        self.warp_v = to_virtual(self.params.warp_ns, self.weight()).min(VIRTUAL_PARAM_MAX);
        self.ctx_v = to_virtual(ctx_allowance_ns, self.weight()).min(VIRTUAL_PARAM_MAX);
    }

    /// EVT relative to the base: in `[-2^62 - 2^60, 2^62]`.
    #[inline]
    fn evt(&self) -> i64 {
        let warp = if self.warped { self.warp_v } else { 0 };
        self.avt - warp as i64
    }

    /// The `by_evt` key: EVT, then the most recently woken, then the slot.
    #[inline]
    fn evt_key(&self, slot: usize) -> u128 {
        let evt = (self.evt() as u64) ^ (1 << 63);
        (u128::from(evt) << 64) | (u128::from(WOKE_MAX - self.woke.min(WOKE_MAX)) << 16) | slot as u128
    }

    #[inline]
    fn charge(&mut self, ran: Ns) {
        let w = self.weight();
        // ran * K + rem = (q * w + r) * K + rem  =>  AVT += q * K + (r * K + rem) / w.
        // r < w <= 10^4 and rem < w, so r * K + rem < 10^8 + 10^4.
        let (q, r) = (ran / w, ran % w);
        let t = r * VT_SCALE + self.rem;
        let inc = q.saturating_mul(VT_SCALE).saturating_add(t / w);
        self.rem = t % w;
        self.avt = self.avt.saturating_add(i64::try_from(inc).unwrap_or(i64::MAX)).min(REL_MAX);
        if self.warped {
            self.warped_run_ns = self.warped_run_ns.saturating_add(ran);
            let limit = self.params.warp_limit_ns;
            if limit != 0 && self.warped_run_ns >= limit {
                self.warped = false;
                self.unwarp_overshoot = Some(self.warped_run_ns - limit);
            }
        }
    }

    /// Real ns of running after which AVT has grown by at least `d` virtual ns.
    #[inline]
    fn real_for(&self, d: u64) -> Ns {
        let w = self.weight();
        // In `u64` whenever `d * w` fits (the 128-bit division is a
        // library call); the same quotient either way.
        match d.checked_mul(w) {
            Some(n) => n.saturating_sub(self.rem).div_ceil(VT_SCALE),
            None => {
                let need = u128::from(d) * u128::from(w) - u128::from(self.rem);
                Ns::try_from(need.div_ceil(u128::from(VT_SCALE))).unwrap_or(Ns::MAX)
            }
        }
    }

    fn unwarp(&mut self, now: Ns) {
        if self.warped {
            self.warped = false;
            self.last_unwarp = Some(now);
        }
    }
}

/// `ns * K / weight`, in virtual ns (weight is never 0 in a live entity).
/// In `u64` whenever the product fits (any `ns` below 1.8 * 10^15, about
/// 21 days): the same quotient without a 128-bit division.
fn to_virtual(ns: Ns, weight: u64) -> u64 {
    let w = weight.max(1);
    match ns.checked_mul(VT_SCALE) {
        Some(p) => p / w,
        None => u64::try_from(u128::from(ns) * u128::from(VT_SCALE) / u128::from(w)).unwrap_or(u64::MAX),
    }
}

/// A BVT run queue for one CPU with room for `N` domains, numbered by slot
/// `0..N` (the hypervisor's domain-table index).
///
/// No decision scans the domains: the runnable ones sit in two
/// [`IndexedHeap`]s, one by EVT (with the tie rule in the key) and one by
/// AVT (for SVT), re-keyed whenever an entity changes, so every operation
/// is O(log N). The one exception is the *running* entity (see
/// [`Bvt::pick`]): it is kept out of both heaps and compared with their
/// roots, so charging it (every trip) touches no heap, and a switch costs
/// one removal and one insertion.
#[derive(Clone, Debug)]
pub struct Bvt<const N: usize> {
    slots: [Option<Entity>; N],
    /// One past the highest slot ever used.
    used: usize,
    /// The runnable entities by `(EVT, most recently woken first, slot)`,
    /// packed ([`Entity::evt_key`]): the root is the pick.
    by_evt: IndexedHeap<u128, N>,
    /// The runnable entities by relative AVT: the root is SVT's candidate.
    by_avt: IndexedHeap<i64, N>,
    /// The runnable entity the last `pick` chose, kept out of `by_evt` and
    /// `by_avt` (`None`: every runnable entity is in them). It is only a
    /// cache of where the entity is stored: every decision considers it
    /// beside the heaps' roots, so what `pick` answers does not depend on
    /// it.
    running: Option<usize>,
    /// Slots whose warp limit ran out in `account`, for `observe` to date
    /// (if it ever fills, `observe` looks at every slot once).
    overshoots: heapless::Vec<usize, N>,
    overshoots_lost: bool,
    ctx_allowance_ns: Ns,
    /// SVT, relative to `base`.
    svt: i64,
    /// What relative virtual times are relative to.
    base: Vt,
    /// Latest `now` seen.
    clock: Ns,
    /// Counts wakes.
    wakes: u64,
}

impl<const N: usize> Bvt<N> {
    /// An empty scheduler with context-switch allowance `C` (raised to at
    /// least [`MIN_CTX_ALLOWANCE_NS`]).
    pub const fn new(ctx_allowance_ns: Ns) -> Self {
        assert!(N <= 1 << 16, "slots are kept in 16 bits of the EVT key");
        Self {
            slots: [None; N],
            used: 0,
            by_evt: IndexedHeap::new(0),
            by_avt: IndexedHeap::new(0),
            running: None,
            overshoots: heapless::Vec::new(),
            overshoots_lost: false,
            ctx_allowance_ns: clamp_allowance(ctx_allowance_ns),
            svt: 0,
            base: 0,
            clock: 0,
            wakes: 0,
        }
    }

    /// The context-switch allowance `C` in real ns.
    pub const fn ctx_allowance_ns(&self) -> Ns {
        self.ctx_allowance_ns
    }

    /// Changes `C` (raised to at least [`MIN_CTX_ALLOWANCE_NS`]); takes effect
    /// at the next `pick`.
    pub fn set_ctx_allowance(&mut self, ns: Ns) {
        self.ctx_allowance_ns = clamp_allowance(ns);
        let c = self.ctx_allowance_ns;
        self.live_mut().iter_mut().flatten().for_each(|e| e.cache_virtual(c));
    }

    /// Adds a domain in `slot`, runnable, with `AVT = SVT` and not warped.
    pub fn add(&mut self, slot: usize, p: Params, now: Ns) -> Result<(), BvtError> {
        if !p.is_valid() {
            return Err(BvtError::BadWeight);
        }
        self.observe(now);
        let svt = self.svt;
        let cell = self.slots.get_mut(slot).ok_or(BvtError::BadSlot)?;
        if cell.is_some() {
            return Err(BvtError::SlotInUse);
        }
        let mut e = Entity {
            params: p,
            avt: svt,
            warp_v: 0,
            ctx_v: 0,
            rem: 0,
            runnable: true,
            warped: false,
            warped_run_ns: 0,
            woke: 0,
            last_unwarp: None,
            unwarp_overshoot: None,
        };
        e.cache_virtual(self.ctx_allowance_ns);
        *cell = Some(e);
        self.used = self.used.max(slot + 1);
        self.reindex(slot);
        self.update_svt();
        Ok(())
    }

    /// The slots that may hold a domain (`..used`).
    fn live_mut(&mut self) -> &mut [Option<Entity>] {
        &mut self.slots[..self.used]
    }

    /// Removes the domain in `slot`; returns whether there was one.
    pub fn remove(&mut self, slot: usize) -> bool {
        let removed = self.slots.get_mut(slot).and_then(Option::take).is_some();
        self.reindex(slot);
        self.update_svt();
        removed
    }

    /// Changes a domain's parameters (a toolstack's "adjust domain"). Its AVT
    /// is kept; if the new warp is 0 it is unwarped.
    pub fn set_params(&mut self, slot: usize, p: Params) -> Result<(), BvtError> {
        if !p.is_valid() {
            return Err(BvtError::BadWeight);
        }
        let (clock, c) = (self.clock, self.ctx_allowance_ns);
        let e = self.slots.get_mut(slot).ok_or(BvtError::BadSlot)?.as_mut().ok_or(BvtError::NoSuchDomain)?;
        if p.weight != e.params.weight {
            e.rem = 0;
        }
        e.params = p;
        e.cache_virtual(c);
        if p.warp_ns == 0 {
            e.unwarp(clock);
        }
        self.reindex(slot);
        Ok(())
    }

    /// The domain in `slot` blocks: it leaves the run queue (and unwarps).
    /// Returns whether it was runnable; a no-op otherwise.
    #[inline(always)]
    pub fn block(&mut self, slot: usize, now: Ns) -> bool {
        self.observe(now);
        let Some(e) = self.entity_mut(slot) else { return false };
        if !e.runnable {
            return false;
        }
        e.runnable = false;
        e.unwarp(now);
        self.reindex(slot);
        self.update_svt();
        true
    }

    /// The domain in `slot` wakes: `AVT = max(AVT, SVT)`, and it warps if it
    /// asks to and the unwarp requirement has passed. Returns whether it was
    /// blocked; a no-op (no re-warp) if it was already runnable or is absent.
    #[inline(always)]
    pub fn wake(&mut self, slot: usize, now: Ns) -> bool {
        self.observe(now);
        let svt = self.svt;
        let stamp = self.wakes.saturating_add(1);
        let Some(e) = self.entity_mut(slot) else { return false };
        if e.runnable {
            return false;
        }
        e.runnable = true;
        e.woke = stamp;
        if e.avt < svt {
            e.avt = svt;
            e.rem = 0;
        }
        let rested = match e.last_unwarp {
            None => true,
            Some(t) => now.saturating_sub(t) >= e.params.unwarp_ns,
        };
        if e.params.warp_ns != 0 && rested {
            e.warped = true;
            e.warped_run_ns = 0;
        }
        self.wakes = stamp;
        self.reindex(slot);
        self.update_svt();
        true
    }

    /// Charges `ran_ns` of real CPU time to the domain in `slot` (the one that
    /// was running). Call it at every hypervisor entry and before every
    /// `pick`. A no-op for an empty slot.
    #[inline(always)]
    pub fn account(&mut self, slot: usize, ran_ns: Ns) {
        if let Some(e) = self.entity_mut(slot) {
            e.charge(ran_ns);
            let runnable = e.runnable;
            if e.unwarp_overshoot.is_some() && self.overshoots.push(slot).is_err() {
                self.overshoots_lost = true;
            }
            // A blocked domain (charged for the trip it blocked in) is in
            // no heap and not running, and SVT is over runnable domains
            // only: re-indexing it and rescanning SVT would change nothing.
            if runnable {
                self.reindex(slot);
                self.update_svt();
            }
        }
    }

    /// Chooses the domain to run at `now`; `current` is the one that was
    /// running (if it has blocked or gone, it is simply not a candidate).
    #[inline(always)]
    pub fn pick(&mut self, now: Ns, current: Option<usize>) -> Pick {
        self.observe(now);
        let cur = current.filter(|&c| self.is_runnable(c));
        let next = match cur {
            Some(c) => match self.best(Some(c)) {
                None => {
                    self.set_running(c);
                    return Pick { next: Some(c), run_for_ns: None };
                }
                Some((o, evt_o)) => {
                    if self.evt_rel(c) < evt_o.saturating_add(self.ctx_rel(c)) {
                        // `c` keeps the CPU: its competitor is `o`, the
                        // one `run_for(c)` would look up again.
                        self.set_running(c);
                        return Pick { next: Some(c), run_for_ns: self.run_for_against(c, evt_o) };
                    }
                    o
                }
            },
            None => match self.best(None) {
                None => return Pick::IDLE,
                Some((n, _)) => n,
            },
        };
        self.set_running(next);
        Pick { next: Some(next), run_for_ns: self.run_for(next) }
    }

    /// `current` gives up the CPU (a yield): the runnable domain of least EVT
    /// other than it runs. The yielder gives up any lead it had: its AVT is
    /// raised to the chosen domain's (never lowered), so it neither preempts
    /// that domain at once nor, by yielding in a loop, keeps a low virtual
    /// time that would make every other domain's slice collapse. It stays
    /// runnable and counts as a competitor for the chosen domain's slice.
    /// With no other runnable domain, `current` goes on as [`Bvt::pick`]
    /// would decide.
    #[inline(always)]
    pub fn pick_yielding(&mut self, now: Ns, current: usize) -> Pick {
        if !self.is_runnable(current) {
            return self.pick(now, None);
        }
        self.observe(now);
        match self.best(Some(current)) {
            Some((n, _)) => {
                let other = self.entity(n).map_or(0, |e| e.avt);
                // Usually the yielder is ahead already (it just ran): then
                // nothing changes and nothing is re-indexed.
                if let Some(e) = self.entity_mut(current).filter(|e| e.avt < other) {
                    e.avt = other;
                    self.reindex(current);
                    self.update_svt();
                }
                self.set_running(n);
                Pick { next: Some(n), run_for_ns: self.run_for(n) }
            }
            None => self.pick(now, Some(current)),
        }
    }

    /// Whether `slot` holds a runnable domain.
    #[inline]
    pub fn is_runnable(&self, slot: usize) -> bool {
        self.entity(slot).is_some_and(|e| e.runnable)
    }

    /// Whether `slot` holds a domain.
    pub fn contains(&self, slot: usize) -> bool {
        self.entity(slot).is_some()
    }

    /// Whether the domain in `slot` is warped now.
    pub fn is_warped(&self, slot: usize) -> bool {
        self.entity(slot).is_some_and(|e| e.warped)
    }

    /// The parameters of the domain in `slot`.
    pub fn params(&self, slot: usize) -> Option<Params> {
        self.entity(slot).map(|e| e.params)
    }

    /// Actual virtual time of the domain in `slot`.
    pub fn avt(&self, slot: usize) -> Option<Vt> {
        // Never below 0: a relative AVT is negative only after the base
        // passed it, by less than the base.
        self.entity(slot).map(|e| (self.base as i128 + i128::from(e.avt)) as Vt)
    }

    /// Effective virtual time of the domain in `slot` (negative while a warp
    /// exceeds its AVT).
    pub fn evt(&self, slot: usize) -> Option<i128> {
        self.entity(slot).map(|e| self.base as i128 + i128::from(e.evt()))
    }

    /// Scheduler virtual time: the least AVT of the runnable domains (the last
    /// such value while none is runnable). Never decreases.
    pub fn svt(&self) -> Vt {
        self.base + self.svt as Vt
    }

    /// `C_v` of the domain in `slot` (0 for an empty slot).
    #[cfg(test)]
    fn ctx_virtual(&self, slot: usize) -> i128 {
        i128::from(self.ctx_rel(slot))
    }

    /// How many domains are runnable.
    pub fn runnable_count(&self) -> usize {
        self.by_evt.len() + usize::from(self.running.is_some())
    }

    /// Makes `slot` (runnable, just picked) the running entity: it leaves
    /// the heaps, and the one that ran before goes back in with its keys.
    /// A no-op when it is the running one already (the common case: the
    /// running domain keeps the CPU).
    #[inline(always)]
    fn set_running(&mut self, slot: usize) {
        if self.running == Some(slot) {
            return;
        }
        let back = self.running.replace(slot).and_then(|o| {
            let e = self.entity(o).filter(|e| e.runnable)?;
            Some((o, e.evt_key(o), e.avt))
        });
        match back {
            // The one that ran goes back in where `slot` leaves (one
            // re-keying per heap, not a removal and an insertion).
            Some((old, key, avt)) => {
                self.by_evt.replace(slot, old, key);
                self.by_avt.replace(slot, old, avt);
            }
            // It blocked or went (it is in neither heap).
            None => {
                self.by_evt.remove(slot);
                self.by_avt.remove(slot);
            }
        }
    }

    /// Puts `slot` in the run-queue heaps with its current keys if it is
    /// runnable, takes it out otherwise. Called after every change to an
    /// entity's AVT, warp, wake stamp, parameters or runnability. The
    /// running entity stays out of the heaps while it is runnable (its
    /// keys are computed when they are compared); once it is not, it is
    /// not running either.
    #[inline(always)]
    fn reindex(&mut self, slot: usize) {
        if self.running == Some(slot) {
            if self.is_runnable(slot) {
                return;
            }
            self.running = None;
        }
        match self.entity(slot).filter(|e| e.runnable).map(|e| (e.evt_key(slot), e.avt)) {
            Some((key, avt)) => {
                self.by_evt.set(slot, key);
                self.by_avt.set(slot, avt);
            }
            None => {
                self.by_evt.remove(slot);
                self.by_avt.remove(slot);
            }
        }
    }

    #[inline]
    fn entity(&self, slot: usize) -> Option<&Entity> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    #[inline]
    fn entity_mut(&mut self, slot: usize) -> Option<&mut Entity> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// Relative EVT of the domain in `slot` (`i64::MAX` for an empty slot).
    #[inline]
    fn evt_rel(&self, slot: usize) -> i64 {
        self.entity(slot).map_or(i64::MAX, Entity::evt)
    }

    /// `C_v` for the domain in `slot`.
    #[inline]
    fn ctx_rel(&self, slot: usize) -> i64 {
        self.entity(slot).map_or(0, |e| e.ctx_v as i64)
    }

    /// The runnable domain of least EVT other than `exclude` (ties: the most
    /// recently woken, then the lowest slot), with its relative EVT.
    #[inline]
    fn best(&self, exclude: Option<usize>) -> Option<(usize, i64)> {
        let queued = match exclude {
            Some(x) => self.by_evt.peek_excluding(x),
            None => self.by_evt.peek(),
        };
        let running =
            self.running.filter(|&r| Some(r) != exclude).and_then(|r| self.entity(r).map(|e| (e.evt_key(r), r)));
        let top = match (queued, running) {
            (Some(q), Some(r)) => Some(q.min(r)),
            (q, r) => q.or(r),
        };
        top.map(|(key, i)| (i, ((key >> 64) as u64 ^ (1 << 63)) as i64))
    }

    /// Real time until rule 2 would preempt `n` (or its warp limit runs
    /// out); `None` if no other domain is runnable.
    #[inline(always)]
    pub fn run_for(&self, n: usize) -> Option<Ns> {
        let (_, evt_o) = self.best(Some(n))?;
        self.run_for_against(n, evt_o)
    }

    /// [`Bvt::run_for`] of `n` given `evt_o`, the relative EVT of the best
    /// runnable domain other than `n` (`best(Some(n))`).
    #[inline(always)]
    fn run_for_against(&self, n: usize, evt_o: i64) -> Option<Ns> {
        let e = self.entity(n)?;
        // Preempted once E_n >= E_o + C_v(n): E_n must grow by d.
        let d = evt_o.saturating_add(e.ctx_v as i64).saturating_sub(e.evt()).max(1);
        let mut ns = e.real_for(d as u64);
        if e.warped && e.params.warp_limit_ns != 0 {
            ns = ns.min(e.params.warp_limit_ns.saturating_sub(e.warped_run_ns));
        }
        Some(ns.max(1))
    }

    /// Notes the time and dates warp-limit expiries that `account` found.
    #[inline(always)]
    fn observe(&mut self, now: Ns) {
        self.clock = self.clock.max(now);
        let date = |e: &mut Entity| {
            if let Some(over) = e.unwarp_overshoot.take() {
                e.last_unwarp = Some(now.saturating_sub(over));
            }
        };
        if core::mem::take(&mut self.overshoots_lost) {
            self.live_mut().iter_mut().flatten().for_each(date);
        } else {
            for i in 0..self.overshoots.len() {
                let slot = self.overshoots[i];
                if let Some(e) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                    date(e);
                }
            }
        }
        self.overshoots.clear();
    }

    #[inline(always)]
    fn update_svt(&mut self) {
        let queued = self.by_avt.peek().map(|(a, _)| a);
        let running = self.running.and_then(|r| self.entity(r)).map(|e| e.avt);
        let least = match (queued, running) {
            (Some(q), Some(r)) => Some(q.min(r)),
            (q, r) => q.or(r),
        };
        if let Some(min) = least {
            self.svt = self.svt.max(min);
            if self.svt >= REBASE_AT {
                self.rebase();
            }
        }
    }

    /// Moves the base up to SVT (see "Representation" in the module docs):
    /// O(N), and no heap is re-sorted.
    fn rebase(&mut self) {
        let b = self.svt;
        self.base += b as Vt;
        self.svt = 0;
        // Only a blocked domain 2^62 behind SVT is floored (it wakes at SVT
        // whatever its AVT).
        self.live_mut().iter_mut().flatten().for_each(|e| e.avt = (e.avt - b).max(-REL_MAX));
        // Every runnable AVT is >= b, and every runnable EVT >= b - 2^60,
        // so its biased form (EVT + 2^63) is > b: both shifts are exact and
        // keep the order.
        self.by_avt.shift_keys(|k| k - b);
        self.by_evt.shift_keys(|k| k - ((b as u128) << 64));
    }
}

const fn clamp_allowance(ns: Ns) -> Ns {
    if ns < MIN_CTX_ALLOWANCE_NS {
        MIN_CTX_ALLOWANCE_NS
    } else {
        ns
    }
}

#[cfg(test)]
mod tests;
