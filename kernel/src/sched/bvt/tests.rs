use super::*;

const US: Ns = 1_000;
const MS: Ns = 1_000_000;
const SEC: Ns = 1_000_000_000;

#[test]
fn yield_hands_the_cpu_to_another_domain_for_a_bounded_slice() {
    let mut s = Bvt::<4>::new(5 * MS);
    s.add(0, Params::weighted(100), 0).unwrap();
    // Alone: yielding changes nothing.
    assert_eq!(s.pick_yielding(0, 0), Pick { next: Some(0), run_for_ns: None });
    s.add(1, Params::weighted(100), 0).unwrap();
    // Domain 1 is ahead by 1 ms; domain 0 yields.
    s.account(1, MS);
    let p = s.pick_yielding(MS, 0);
    assert_eq!(p.next, Some(1), "the other domain runs");
    assert_eq!(s.avt(0), s.avt(1), "the yielder gives up its lead");
    assert_eq!(p.run_for_ns, Some(5 * MS), "the other gets a full allowance, not a sliver");
    assert!(s.is_runnable(0));
    // Yielding in a loop does not keep the yielder's virtual time low.
    for k in 0..10 {
        s.account(1, p.run_for_ns.unwrap());
        let q = s.pick_yielding(MS * (k + 2), 0);
        assert!(q.run_for_ns.unwrap() >= 5 * MS, "slice {:?} collapsed", q.run_for_ns);
    }
    // A yield from a blocked or unknown slot is an ordinary pick.
    s.block(0, MS);
    assert_eq!(s.pick_yielding(MS, 0).next, Some(1));
    assert_eq!(s.pick_yielding(MS, 9).next, Some(1));
}

// ----- discrete-event simulator -------------------------------------

/// What a simulated domain does.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// Always runnable.
    Hog,
    /// Blocked at first; becomes runnable at `first + k * period` with
    /// `burst` ns of work (queued if the last burst is not done yet) and
    /// blocks when out of work.
    Periodic { first: Ns, period: Ns, burst: Ns },
    /// Runnable at first with `burst` ns of work; when it is done, sleeps
    /// `sleep` ns, then wakes with `burst` more.
    Sleeper { burst: Ns, sleep: Ns },
}

#[derive(Debug)]
struct Dom {
    load: Load,
    work: Ns,
    next_wake: Option<Ns>,
    woke_at: Option<Ns>,
    cpu: Ns,
    runnable_ns: Ns,
    latencies: Vec<Ns>,
    /// CPU time run while warped since the last wake, and its maximum.
    warped_cpu: Ns,
    max_warped_cpu: Ns,
}

impl Dom {
    fn mean_latency(&self) -> f64 {
        self.latencies.iter().sum::<Ns>() as f64 / self.latencies.len().max(1) as f64
    }
    fn max_latency(&self) -> Ns {
        self.latencies.iter().copied().max().unwrap_or(0)
    }
}

/// One CPU driven exactly as the hypervisor drives it: at every event,
/// account the running domain, apply blocks and wakes, pick, and arm a
/// one-shot timer for `run_for_ns`.
struct Sim<const N: usize> {
    bvt: Bvt<N>,
    doms: Vec<Option<Dom>>,
    now: Ns,
    current: Option<usize>,
    deadline: Option<Ns>,
    run_start: Ns,
    /// Completed runs: (slot, length).
    runs: Vec<(usize, Ns)>,
    /// Times at which a different domain was dispatched.
    switches: Vec<Ns>,
    last_svt: Vt,
}

impl<const N: usize> Sim<N> {
    fn new(ctx: Ns) -> Self {
        Self {
            bvt: Bvt::new(ctx),
            doms: (0..N).map(|_| None).collect(),
            now: 0,
            current: None,
            deadline: None,
            run_start: 0,
            runs: Vec::new(),
            switches: Vec::new(),
            last_svt: 0,
        }
    }

    fn add(&mut self, slot: usize, p: Params, load: Load) {
        self.bvt.add(slot, p, self.now).unwrap();
        let mut d = Dom {
            load,
            work: 0,
            next_wake: None,
            woke_at: None,
            cpu: 0,
            runnable_ns: 0,
            latencies: Vec::new(),
            warped_cpu: 0,
            max_warped_cpu: 0,
        };
        match load {
            Load::Hog => {}
            Load::Periodic { first, .. } => {
                assert!(self.bvt.block(slot, self.now));
                d.next_wake = Some(first.max(self.now));
            }
            Load::Sleeper { burst, .. } => d.work = burst,
        }
        self.doms[slot] = Some(d);
        self.resched();
    }

    fn dom(&self, slot: usize) -> &Dom {
        self.doms[slot].as_ref().unwrap()
    }

    fn resched(&mut self) {
        let p = self.bvt.pick(self.now, self.current);
        if let Some(n) = p.next {
            assert!(self.bvt.is_runnable(n), "picked a domain that cannot run");
        } else {
            assert_eq!(self.bvt.runnable_count(), 0, "idled with work to do");
        }
        if p.next != self.current {
            if let Some(c) = self.current {
                self.runs.push((c, self.now - self.run_start));
            }
            if p.next.is_some() {
                self.switches.push(self.now);
            }
            self.run_start = self.now;
            if let Some(n) = p.next {
                if let Some(w) = self.doms[n].as_mut().unwrap().woke_at.take() {
                    let lat = self.now - w;
                    self.doms[n].as_mut().unwrap().latencies.push(lat);
                }
            }
        }
        self.current = p.next;
        self.deadline = p.run_for_ns.map(|r| {
            assert!(r >= 1);
            self.now.saturating_add(r)
        });
    }

    fn run_until(&mut self, end: Ns) {
        while self.now < end {
            // Next event.
            let mut t = end;
            if let Some(d) = self.deadline {
                t = t.min(d);
            }
            if let Some(c) = self.current {
                let d = self.dom(c);
                if !matches!(d.load, Load::Hog) {
                    t = t.min(self.now + d.work);
                }
            }
            for d in self.doms.iter().flatten() {
                if let Some(w) = d.next_wake {
                    t = t.min(w);
                }
            }
            let ran = t - self.now;
            // Hardware entry: charge the running domain.
            if let Some(c) = self.current {
                let warped = self.bvt.is_warped(c);
                self.bvt.account(c, ran);
                let d = self.doms[c].as_mut().unwrap();
                d.cpu += ran;
                if warped {
                    d.warped_cpu += ran;
                    d.max_warped_cpu = d.max_warped_cpu.max(d.warped_cpu);
                }
                if !matches!(d.load, Load::Hog) {
                    d.work -= ran;
                }
            }
            for (i, d) in self.doms.iter_mut().enumerate() {
                if let Some(d) = d {
                    if self.bvt.is_runnable(i) {
                        d.runnable_ns += ran;
                    }
                }
            }
            self.now = t;
            // Blocks.
            if let Some(c) = self.current {
                let now = self.now;
                let d = self.doms[c].as_mut().unwrap();
                if !matches!(d.load, Load::Hog) && d.work == 0 {
                    if let Load::Sleeper { sleep, .. } = d.load {
                        d.next_wake = Some(now + sleep);
                    }
                    assert!(self.bvt.block(c, now));
                }
            }
            // Wakes.
            for i in 0..N {
                let now = self.now;
                let Some(d) = self.doms[i].as_mut() else { continue };
                let Some(w) = d.next_wake.filter(|&w| w <= now) else { continue };
                match d.load {
                    Load::Hog => unreachable!(),
                    Load::Periodic { period, burst, .. } => {
                        d.work += burst;
                        d.next_wake = Some(w + period);
                    }
                    Load::Sleeper { burst, .. } => {
                        d.work = burst;
                        d.next_wake = None;
                    }
                }
                if self.bvt.wake(i, now) {
                    d.woke_at = Some(now);
                    d.warped_cpu = 0;
                }
            }
            let svt = self.bvt.svt();
            assert!(svt >= self.last_svt, "SVT went backwards");
            self.last_svt = svt;
            self.resched();
        }
    }

    fn share(&self, slot: usize) -> f64 {
        self.dom(slot).cpu as f64 / self.now as f64
    }
}

fn assert_near(what: &str, got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "{what}: got {got:.5}, want {want:.5} ± {tol}");
}

// ----- proportional share -------------------------------------------

#[test]
fn bvt_weights_1_2_4_get_proportional_shares() {
    for scale in [1, 100, 2_500] {
        let mut sim: Sim<3> = Sim::new(DEFAULT_CTX_ALLOWANCE_NS);
        for (slot, w) in [1, 2, 4].into_iter().enumerate() {
            sim.add(slot, Params::weighted(w * scale), Load::Hog);
        }
        sim.run_until(10 * SEC);
        let shares: Vec<f64> = (0..3).map(|i| sim.share(i)).collect();
        println!(
            "weights {}:{}:{} over 10 s: shares {:.4} {:.4} {:.4} (want {:.4} {:.4} {:.4}), {} switches",
            scale,
            2 * scale,
            4 * scale,
            shares[0],
            shares[1],
            shares[2],
            1.0 / 7.0,
            2.0 / 7.0,
            4.0 / 7.0,
            sim.switches.len()
        );
        for (i, k) in [1.0, 2.0, 4.0].into_iter().enumerate() {
            let want = k / 7.0;
            // ±1% of the expected share (relative), tighter than asked.
            assert_near("share", shares[i], want, 0.01 * want);
        }
    }
}

// ----- warp gives latency -------------------------------------------

fn latency_run(warp: bool) -> (f64, Ns, f64) {
    let mut sim: Sim<4> = Sim::new(5 * MS);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(100), Load::Hog);
    let p = if warp { Params::warped(100, 10 * MS, 2 * MS, 5 * MS) } else { Params::weighted(100) };
    // Wakes every 7.3 ms (out of step with the hogs) for 0.5 ms of work.
    sim.add(2, p, Load::Periodic { first: 3 * MS + 123 * US, period: 7_300 * US, burst: 500 * US });
    sim.run_until(10 * SEC);
    let d = sim.dom(2);
    assert!(d.latencies.len() > 1_300, "too few wakes: {}", d.latencies.len());
    (d.mean_latency(), d.max_latency(), sim.share(2))
}

#[test]
fn bvt_warp_lowers_wakeup_latency() {
    let (plain_mean, plain_max, plain_share) = latency_run(false);
    let (warp_mean, warp_max, warp_share) = latency_run(true);
    println!(
        "wake-to-dispatch latency with 2 hogs, C = 5 ms: unwarped mean {:.1} µs max {:.1} µs; \
         warped mean {:.1} µs max {:.1} µs; CPU share {:.4} / {:.4}",
        plain_mean / 1e3,
        plain_max as f64 / 1e3,
        warp_mean / 1e3,
        warp_max as f64 / 1e3,
        plain_share,
        warp_share
    );
    assert!(warp_mean < plain_mean / 2.0, "warp did not help: {warp_mean} vs {plain_mean}");
    assert!(warp_max < plain_max);
    // Unwarped, the allowance bounds the wait: at most C (plus nothing).
    assert!(plain_max <= 5 * MS);
    // Both got the CPU they asked for (0.5 ms every 7.3 ms).
    assert_near("interactive share", plain_share, 0.5 / 7.3, 0.001);
    assert_near("interactive share", warp_share, 0.5 / 7.3, 0.001);
}

// ----- no starvation ------------------------------------------------

#[test]
fn bvt_hog_cannot_starve_equal_weight() {
    // A hog and a domain that works 20 ms and sleeps 20 ms.
    let mut sim: Sim<2> = Sim::new(5 * MS);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(100), Load::Sleeper { burst: 20 * MS, sleep: 20 * MS });
    sim.run_until(10 * SEC);
    let s = sim.dom(1);
    let when_runnable = s.cpu as f64 / s.runnable_ns as f64;
    println!(
        "hog vs sleeper (20 ms on/20 ms off): sleeper gets {:.4} of the CPU while runnable, \
         {:.4} overall; hog {:.4}",
        when_runnable,
        sim.share(1),
        sim.share(0)
    );
    assert!(when_runnable >= 0.49, "sleeper starved: {when_runnable}");
    assert!(sim.share(0) >= 0.49, "hog starved: {}", sim.share(0));

    // Two hogs: 50% each.
    let mut sim: Sim<2> = Sim::new(5 * MS);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(100), Load::Hog);
    sim.run_until(10 * SEC);
    println!("two equal hogs: {:.4} / {:.4}", sim.share(0), sim.share(1));
    assert_near("hog 0", sim.share(0), 0.5, 0.01);
    assert_near("hog 1", sim.share(1), 0.5, 0.01);

    // Two hogs and the sleeper: the hogs split what is left evenly, the
    // sleeper gets at least a third while runnable.
    let mut sim: Sim<3> = Sim::new(5 * MS);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(100), Load::Hog);
    sim.add(2, Params::weighted(100), Load::Sleeper { burst: 20 * MS, sleep: 20 * MS });
    sim.run_until(10 * SEC);
    let s = sim.dom(2);
    let when_runnable = s.cpu as f64 / s.runnable_ns as f64;
    println!(
        "two hogs + sleeper: hogs {:.4} / {:.4}, sleeper {:.4} overall, {:.4} while runnable",
        sim.share(0),
        sim.share(1),
        sim.share(2),
        when_runnable
    );
    assert!(when_runnable >= 1.0 / 3.0 - 0.01);
    assert_near("hog 0 vs hog 1", sim.share(0) - sim.share(1), 0.0, 0.01);
}

// ----- context-switch allowance -------------------------------------

#[test]
fn bvt_ctx_allowance_bounds_switching() {
    let c = 5 * MS;
    let mut sim: Sim<2> = Sim::new(c);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(100), Load::Hog);
    sim.run_until(10 * SEC);
    for sec in 0..10 {
        let n = sim.switches.iter().filter(|&&t| t >= sec * SEC && t < (sec + 1) * SEC).count();
        assert!(n as u64 <= SEC / c + 1, "second {sec}: {n} switches");
    }
    let per_sec = sim.switches.len() as f64 / 10.0;
    // The first run ends when the first domain is C ahead; every later
    // one starts C behind and ends C ahead: 2C.
    let (first, rest) = sim.runs.split_first().unwrap();
    assert_eq!(first.1, c);
    for &(_, len) in rest {
        assert_eq!(len, 2 * c, "run of {len} ns");
    }
    println!(
        "two equal hogs, C = 5 ms: {per_sec:.1} switches/s (bound {}), first run {} ms, then {} ms each",
        SEC / c + 1,
        first.1 / MS,
        rest[0].1 / MS
    );

    // Unequal weights 1:3 still bounded, and runs are at least C.
    let mut sim: Sim<2> = Sim::new(c);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(300), Load::Hog);
    sim.run_until(10 * SEC);
    assert!((sim.switches.len() as u64) <= 10 * (SEC / c + 1));
    assert!(sim.runs.iter().all(|&(_, len)| len >= c));
    assert_near("1:3", sim.share(1), 0.75, 0.0075);
}

// ----- sleeping ---------------------------------------------------

#[test]
fn bvt_sleepers_bank_no_credit() {
    let mut sim: Sim<3> = Sim::new(5 * MS);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(100), Load::Hog);
    // Slot 2 sleeps for 1 s, then wants the CPU for good.
    sim.add(2, Params::weighted(100), Load::Periodic { first: SEC, period: 100 * SEC, burst: 100 * SEC });
    let avt_before = sim.bvt.avt(2).unwrap();
    sim.run_until(SEC - 1);
    assert_eq!(sim.bvt.avt(2).unwrap(), avt_before, "a blocked domain aged");
    assert!(sim.bvt.svt() > avt_before + 400 * MS as u128 * 100);
    let cpu_before: Vec<Ns> = (0..3).map(|i| sim.dom(i).cpu).collect();
    sim.run_until(SEC);
    assert_eq!(sim.bvt.avt(2).unwrap(), sim.bvt.svt(), "woke below SVT");
    sim.run_until(SEC + 300 * MS);
    let got: Vec<f64> = (0..3).map(|i| (sim.dom(i).cpu - cpu_before[i]) as f64 / (300 * MS) as f64).collect();
    let longest = sim.runs.iter().filter(|r| r.0 == 2).map(|r| r.1).max().unwrap_or(0);
    println!(
        "after sleeping 1 s: shares over the next 300 ms {:.3} {:.3} {:.3}; sleeper's longest run {} ms",
        got[0],
        got[1],
        got[2],
        longest / MS
    );
    assert!(got[2] < 0.45, "the sleeper monopolised the CPU: {}", got[2]);
    assert!(got[2] > 0.25, "the sleeper was starved: {}", got[2]);
    assert!(longest <= 2 * 5 * MS);

    // Without blocking, a late joiner starts at SVT too.
    let mut sim: Sim<2> = Sim::new(5 * MS);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.run_until(SEC);
    assert_eq!(sim.dom(0).cpu, SEC);
    sim.add(1, Params::weighted(100), Load::Hog);
    sim.run_until(2 * SEC);
    assert_near("late joiner", (sim.dom(1).cpu) as f64 / SEC as f64, 0.5, 0.01);
}

// ----- warp limit and unwarp requirement ----------------------------

#[test]
fn bvt_warp_limit_and_unwarp_requirement() {
    let mut s: Bvt<2> = Bvt::new(5 * MS);
    s.add(0, Params::weighted(100), 0).unwrap();
    s.add(1, Params::warped(100, 50 * MS, 3 * MS, 20 * MS), 0).unwrap();
    assert!(!s.is_warped(1), "add does not warp");
    assert!(s.block(1, 0));
    s.account(0, 10 * MS);
    assert!(s.wake(1, 10 * MS));
    assert!(s.is_warped(1));
    assert_eq!(s.evt(1).unwrap(), s.avt(1).unwrap() as i128 - to_virtual(50 * MS, 100) as i128);
    // Dispatched at once, but only for L.
    let p = s.pick(10 * MS, Some(0));
    assert_eq!(p, Pick { next: Some(1), run_for_ns: Some(3 * MS) });
    s.account(1, MS);
    let p = s.pick(11 * MS, Some(1));
    assert_eq!(p, Pick { next: Some(1), run_for_ns: Some(2 * MS) });
    // L runs out (the run overshoots by 0.5 ms): unwarped.
    s.account(1, 2 * MS + 500 * US);
    assert!(!s.is_warped(1));
    assert_eq!(s.evt(1).unwrap(), s.avt(1).unwrap() as i128);
    let p = s.pick(13_500_000, Some(1));
    // Now it competes at its AVT: level with slot 0 plus what it ran.
    assert_eq!(p.next, Some(1));
    // Unwarped at 13 ms (13.5 ms minus the overshoot). Block and wake
    // before 13 + U = 33 ms: no warp.
    assert!(s.block(1, 14 * MS));
    assert!(s.wake(1, 32 * MS));
    assert!(!s.is_warped(1), "warped before U passed");
    assert!(s.block(1, 32 * MS));
    assert!(s.wake(1, 33 * MS));
    assert!(s.is_warped(1), "U passed, warp expected");
    // A block unwarps, and U counts from then.
    assert!(s.block(1, 40 * MS));
    assert!(s.wake(1, 59 * MS));
    assert!(!s.is_warped(1));
    assert!(s.block(1, 59 * MS));
    assert!(s.wake(1, 60 * MS));
    assert!(s.is_warped(1));
    // Waking a runnable domain does nothing.
    assert!(!s.wake(1, 61 * MS));

    // L = 0: no limit; U = 0: every wake warps.
    let mut s: Bvt<2> = Bvt::new(5 * MS);
    s.add(0, Params::weighted(100), 0).unwrap();
    s.add(1, Params::warped(100, 50 * MS, 0, 0), 0).unwrap();
    s.block(1, 0);
    s.wake(1, 0);
    s.account(1, 10 * SEC);
    assert!(s.is_warped(1));
    s.block(1, 10 * SEC);
    s.wake(1, 10 * SEC);
    assert!(s.is_warped(1));

    // In the simulator: a warped domain that wants 10 ms at each wake
    // preempts immediately but gets at most L warped; the hogs still get
    // their shares.
    let mut sim: Sim<3> = Sim::new(5 * MS);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(100), Load::Hog);
    sim.add(
        2,
        Params::warped(100, 20 * MS, 2 * MS, 30 * MS),
        Load::Periodic { first: 7 * MS, period: 50 * MS, burst: 10 * MS },
    );
    sim.run_until(5 * SEC);
    let d = sim.dom(2);
    println!(
        "warped 10 ms bursts every 50 ms, L = 2 ms: {} wakes, latency max {} ns, longest warped run {} µs, share {:.4}",
        d.latencies.len(),
        d.max_latency(),
        d.max_warped_cpu / US,
        sim.share(2)
    );
    assert_eq!(d.max_latency(), 0);
    assert_eq!(d.max_warped_cpu, 2 * MS, "warped for longer than L");
    assert_near("hog 0 vs hog 1", sim.share(0) - sim.share(1), 0.0, 0.01);
    assert_near("warped share", sim.share(2), 0.2, 0.002);
}

// ----- hostile inputs ---------------------------------------------

#[test]
fn bvt_hostile_inputs() {
    let mut s: Bvt<4> = Bvt::new(0);
    assert_eq!(s.ctx_allowance_ns(), MIN_CTX_ALLOWANCE_NS);
    assert_eq!(s.add(0, Params::weighted(0), 0), Err(BvtError::BadWeight));
    assert_eq!(s.add(0, Params::weighted(MAX_WEIGHT + 1), 0), Err(BvtError::BadWeight));
    assert_eq!(s.add(0, Params::weighted(u32::MAX), 0), Err(BvtError::BadWeight));
    assert_eq!(s.add(4, Params::weighted(1), 0), Err(BvtError::BadSlot));
    assert_eq!(s.add(usize::MAX, Params::weighted(1), 0), Err(BvtError::BadSlot));
    assert_eq!(s.pick(0, None), Pick::IDLE);
    assert_eq!(s.pick(0, Some(3)), Pick::IDLE);
    assert_eq!(s.pick(0, Some(usize::MAX)), Pick::IDLE);
    for slot in [0, 3, 4, usize::MAX] {
        assert!(!s.block(slot, 0));
        assert!(!s.wake(slot, 0));
        assert!(!s.remove(slot));
        s.account(slot, u64::MAX);
        assert!(!s.is_runnable(slot));
        assert!(!s.contains(slot));
        assert_eq!(s.avt(slot), None);
        assert_eq!(s.evt(slot), None);
        assert_eq!(s.params(slot), None);
        assert_eq!(
            s.set_params(slot, Params::weighted(1)),
            Err(if slot < 4 { BvtError::NoSuchDomain } else { BvtError::BadSlot })
        );
    }
    s.add(0, Params::warped(1, u64::MAX, u64::MAX, u64::MAX), u64::MAX).unwrap();
    assert_eq!(s.add(0, Params::weighted(1), 0), Err(BvtError::SlotInUse));
    s.add(1, Params::weighted(MAX_WEIGHT), 0).unwrap();
    assert_eq!(s.set_params(1, Params::weighted(0)), Err(BvtError::BadWeight));
    // Huge runs neither overflow nor panic: AVT saturates REL_MAX ahead of
    // the base (unreachable in practice: one charge of 5 days at weight 1,
    // while the hypervisor charges at every trip).
    for _ in 0..10 {
        s.account(0, u64::MAX);
    }
    assert_eq!(s.avt(0), Some(REL_MAX as u128));
    s.slots[0].as_mut().unwrap().avt = REL_MAX - 1;
    s.account(0, u64::MAX);
    assert_eq!(s.avt(0), Some(REL_MAX as u128));
    s.block(0, 5);
    s.wake(0, 0); // time going backwards
    let p = s.pick(0, Some(0));
    assert_eq!(p.next, Some(1));
    assert!(p.run_for_ns.is_some_and(|r| r >= 1));
    s.slots[1].as_mut().unwrap().avt = REL_MAX;
    s.account(1, u64::MAX);
    assert_eq!(s.avt(1), Some(REL_MAX as u128));
    // SVT reached the rebase point: the base moved, absolute times did not.
    assert_eq!((s.base, s.svt), (REL_MAX as u128, 0));
    // Both saturated: still a sane answer.
    let p = s.pick(u64::MAX, Some(1));
    assert!(p.next.is_some() && p.run_for_ns.is_some_and(|r| r >= 1));
    // A huge allowance.
    s.set_ctx_allowance(u64::MAX);
    let p = s.pick(u64::MAX, p.next);
    assert!(p.next.is_some() && p.run_for_ns.is_some_and(|r| r >= 1));
    // A year at weight 1, an hour at a time, loses nothing across the
    // rebases it causes (one every 64 hours).
    let mut s: Bvt<1> = Bvt::new(DEFAULT_CTX_ALLOWANCE_NS);
    s.add(0, Params::weighted(1), 0).unwrap();
    for _ in 0..365 * 24 {
        s.account(0, 3600 * SEC);
    }
    assert_eq!(s.avt(0), Some(365 * 24 * 3600 * SEC as u128 * 10_000));
    assert!(s.base > 0 && s.svt < REBASE_AT);
    // A scheduler with no room at all.
    let mut z: Bvt<0> = Bvt::new(MS);
    assert_eq!(z.add(0, Params::weighted(1), 0), Err(BvtError::BadSlot));
    assert_eq!(z.pick(0, Some(0)), Pick::IDLE);
}

#[test]
fn bvt_charge_is_exact_across_slices() {
    // 1 ms charged in 1 ns slices equals 1 ms charged at once.
    let mut a: Bvt<2> = Bvt::new(MS);
    a.add(0, Params::weighted(7), 0).unwrap();
    a.add(1, Params::weighted(7), 0).unwrap();
    for _ in 0..1_000 {
        a.account(0, 1_000);
    }
    a.account(1, MS);
    assert_eq!(a.avt(0), a.avt(1));
    assert_eq!(a.avt(0), Some(MS as u128 * 10_000 / 7));
}

#[test]
fn bvt_set_params_changes_share() {
    let mut sim: Sim<2> = Sim::new(5 * MS);
    sim.add(0, Params::weighted(100), Load::Hog);
    sim.add(1, Params::weighted(100), Load::Hog);
    sim.run_until(SEC);
    sim.bvt.set_params(1, Params::weighted(300)).unwrap();
    let before = sim.dom(1).cpu;
    sim.run_until(11 * SEC);
    assert_near("reweighted", (sim.dom(1).cpu - before) as f64 / (10 * SEC) as f64, 0.75, 0.0075);
}

// ----- randomized ---------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn check_invariants<const N: usize>(s: &Bvt<N>, last_svt: &mut Vt) {
    let svt = s.svt();
    assert!(svt >= *last_svt, "SVT went backwards: {} -> {}", *last_svt, svt);
    *last_svt = svt;
    // The run-queue heaps hold exactly the runnable entities, and SVT is
    // their least AVT (a linear scan, against the heaps).
    assert_eq!(s.runnable_count(), (0..N).filter(|&i| s.is_runnable(i)).count());
    if let Some(min) = (0..N).filter(|&i| s.is_runnable(i)).filter_map(|i| s.avt(i)).min() {
        assert_eq!(svt, svt.max(min));
    }
    s.by_evt.check();
    s.by_avt.check();
    // The running entity is runnable and outside the heaps; every other
    // runnable entity is in both.
    if let Some(r) = s.running {
        assert!(s.is_runnable(r), "running entity {r} not runnable");
        assert!(!s.by_evt.contains(r) && !s.by_avt.contains(r), "running entity {r} queued");
    }
    for i in (0..N).filter(|&i| s.is_runnable(i) && s.running != Some(i)) {
        assert!(s.by_evt.contains(i) && s.by_avt.contains(i), "runnable entity {i} not queued");
    }
    for i in 0..N {
        if s.is_runnable(i) {
            assert!(s.avt(i).unwrap() >= svt, "runnable AVT below SVT");
        }
        if let Some(a) = s.avt(i) {
            assert!(a as i128 - s.base as i128 <= i128::from(REL_MAX));
        }
    }
}

fn check_pick<const N: usize>(s: &Bvt<N>, cur: Option<usize>, p: Pick) {
    let runnable: Vec<usize> = (0..N).filter(|&i| s.is_runnable(i)).collect();
    let Some(n) = p.next else {
        assert!(runnable.is_empty(), "idle with runnable domains");
        assert_eq!(p.run_for_ns, None);
        return;
    };
    assert!(n < N && s.is_runnable(n), "picked {n}, not runnable");
    match p.run_for_ns {
        None => assert_eq!(runnable.len(), 1),
        Some(r) => assert!(runnable.len() >= 2 && r >= 1),
    }
    // The slice is the chosen domain's own (a pick that keeps the running
    // domain reuses the competitor it compared with: the same answer).
    assert_eq!(p.run_for_ns, s.run_for(n), "the slice of {n} is not run_for({n})");
    let min = runnable.iter().map(|&i| s.evt(i).unwrap()).min().unwrap();
    let cur = cur.filter(|&c| s.is_runnable(c));
    if Some(n) == cur {
        let min_other = runnable.iter().filter(|&&i| i != n).map(|&i| s.evt(i).unwrap()).min();
        if let Some(mo) = min_other {
            assert!(s.evt(n).unwrap() < mo.saturating_add(s.ctx_virtual(n)), "kept past allowance");
        }
    } else {
        assert_eq!(s.evt(n).unwrap(), min, "switched to a non-minimal EVT");
        if let Some(c) = cur {
            assert!(
                s.evt(c).unwrap() >= s.evt(n).unwrap().saturating_add(s.ctx_virtual(c)),
                "switched within allowance"
            );
        }
    }
}

#[test]
fn bvt_randomized_operations_keep_invariants() {
    const N: usize = 6;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..60 {
        let ctx = match rng.below(4) {
            0 => rng.next(),
            1 => 0,
            _ => rng.below(10 * MS),
        };
        let mut s: Bvt<N> = Bvt::new(ctx);
        let mut now: Ns = if round % 7 == 0 { u64::MAX - rng.below(SEC) } else { 0 };
        let mut cur: Option<usize> = None;
        let mut last_svt: Vt = 0;
        for _ in 0..3_000 {
            now = match rng.below(20) {
                0 => now.saturating_sub(rng.below(MS)), // a clock going backwards
                1 => now.saturating_add(rng.next()),
                _ => now.saturating_add(rng.below(3 * MS)),
            };
            let slot = rng.below(N as u64 + 2) as usize;
            match rng.below(8) {
                0 => {
                    let weight = match rng.below(5) {
                        0 => rng.below(MAX_WEIGHT as u64 + 3) as u32,
                        1 => rng.next() as u32,
                        _ => 1 + rng.below(400) as u32,
                    };
                    let p = Params {
                        weight,
                        warp_ns: if rng.below(3) == 0 { rng.next() } else { rng.below(20 * MS) },
                        warp_limit_ns: rng.below(10 * MS),
                        unwarp_ns: rng.below(20 * MS),
                    };
                    let occupied = s.contains(slot);
                    let r = s.add(slot, p, now);
                    let expect = if !p.is_valid() {
                        Err(BvtError::BadWeight)
                    } else if slot >= N {
                        Err(BvtError::BadSlot)
                    } else if occupied {
                        Err(BvtError::SlotInUse)
                    } else {
                        Ok(())
                    };
                    assert_eq!(r, expect);
                }
                1 => {
                    if rng.below(4) == 0 {
                        let was = s.contains(slot);
                        assert_eq!(s.remove(slot), was);
                    }
                }
                2 => {
                    let was = s.is_runnable(slot);
                    assert_eq!(s.block(slot, now), was);
                    assert!(!s.is_runnable(slot));
                }
                3 => {
                    let was = s.contains(slot) && !s.is_runnable(slot);
                    assert_eq!(s.wake(slot, now), was);
                    if was {
                        assert_eq!(s.avt(slot).unwrap(), s.avt(slot).unwrap().max(s.svt()));
                    }
                }
                4 => {
                    let ran = if rng.below(50) == 0 { u64::MAX } else { rng.below(20 * MS) };
                    let target = if rng.below(2) == 0 { cur.unwrap_or(slot) } else { slot };
                    s.account(target, ran);
                }
                5 => {
                    if rng.below(4) == 0 {
                        let _ = s.set_params(slot, Params::weighted(rng.below(MAX_WEIGHT as u64 + 2) as u32));
                    }
                }
                _ => {
                    let asked = if rng.below(10) == 0 { Some(slot) } else { cur };
                    let p = s.pick(now, asked);
                    check_pick(&s, asked, p);
                    cur = p.next;
                }
            }
            check_invariants(&s, &mut last_svt);
        }
    }
}

#[test]
fn bvt_randomized_simulation_keeps_shares() {
    // Random mixes of hogs and interactive domains, driven through the
    // simulator (which checks SVT and pick validity at every event):
    // hogs of equal weight always get equal CPU.
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    for _ in 0..12 {
        let mut sim: Sim<5> = Sim::new(MS + rng.below(5 * MS));
        let hog_w = 1 + rng.below(1_000) as u32;
        sim.add(0, Params::weighted(hog_w), Load::Hog);
        sim.add(1, Params::weighted(hog_w), Load::Hog);
        for slot in 2..5 {
            let w = 1 + rng.below(1_000) as u32;
            let p = if rng.below(2) == 0 {
                Params::warped(w, rng.below(20 * MS), rng.below(5 * MS), rng.below(20 * MS))
            } else {
                Params::weighted(w)
            };
            let load = if rng.below(2) == 0 {
                Load::Periodic {
                    first: rng.below(50 * MS),
                    period: 1 + rng.below(50 * MS),
                    burst: 1 + rng.below(5 * MS),
                }
            } else {
                Load::Sleeper { burst: 1 + rng.below(20 * MS), sleep: 1 + rng.below(50 * MS) }
            };
            sim.add(slot, p, load);
        }
        sim.run_until(3 * SEC);
        let total: Ns = (0..5).map(|i| sim.dom(i).cpu).sum();
        assert_eq!(total, 3 * SEC, "the CPU idled with hogs runnable");
        let (a, b) = (sim.dom(0).cpu as f64, sim.dom(1).cpu as f64);
        assert!((a - b).abs() / (a + b) < 0.02, "equal hogs diverged: {a} vs {b}");
    }
}

#[test]
fn bvt_rebase_changes_no_decision() {
    // Twin schedulers fed the same operations; one moves its base at
    // random moments. Every answer agrees, and so does every AVT that can
    // matter (a blocked domain behind SVT wakes at SVT either way).
    const N: usize = 5;
    let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
    for _ in 0..40 {
        let mut a: Bvt<N> = Bvt::new(rng.below(10 * MS));
        let mut b = a.clone();
        let mut now: Ns = 0;
        let mut cur = None;
        for _ in 0..2_000 {
            now += rng.below(3 * MS);
            let slot = rng.below(N as u64) as usize;
            match rng.below(6) {
                0 => {
                    let p = random_params(&mut rng);
                    assert_eq!(a.add(slot, p, now), b.add(slot, p, now));
                }
                1 => assert_eq!(a.block(slot, now), b.block(slot, now)),
                2 => assert_eq!(a.wake(slot, now), b.wake(slot, now)),
                3 => {
                    let ran = rng.below(20 * MS);
                    let t = cur.unwrap_or(slot);
                    a.account(t, ran);
                    b.account(t, ran);
                }
                4 => {
                    let pa = a.pick_yielding(now, slot);
                    assert_eq!(pa, b.pick_yielding(now, slot));
                    cur = pa.next;
                }
                _ => {
                    let pa = a.pick(now, cur);
                    assert_eq!(pa, b.pick(now, cur));
                    cur = pa.next;
                }
            }
            if rng.below(10) == 0 {
                b.rebase();
                b.by_evt.check();
                b.by_avt.check();
            }
            assert_eq!(a.svt(), b.svt());
            for i in 0..N {
                assert_eq!(a.is_runnable(i), b.is_runnable(i));
                let (x, y) = (a.avt(i).map(|v| v.max(a.svt())), b.avt(i).map(|v| v.max(b.svt())));
                assert_eq!(x, y, "AVT of slot {i}");
                if a.is_runnable(i) {
                    assert_eq!(a.evt(i), b.evt(i), "EVT of slot {i}");
                }
            }
        }
    }
}

/// Random BVT parameters for the randomized tests: any weight, warp,
/// warp limit and unwarp requirement.
fn random_params(rng: &mut XorShift) -> Params {
    Params::warped(1 + rng.below(500) as u32, rng.below(20 * MS), rng.below(10 * MS), rng.below(20 * MS))
}

/// Twin schedulers agree on every slot: runnable or not, AVT and EVT.
fn same_entities<const N: usize>(a: &Bvt<N>, b: &Bvt<N>) {
    for i in 0..N {
        assert_eq!(a.is_runnable(i), b.is_runnable(i));
        assert_eq!(a.avt(i), b.avt(i), "AVT of slot {i}");
        assert_eq!(a.evt(i), b.evt(i), "EVT of slot {i}");
    }
}

#[test]
fn bvt_running_outside_the_heaps_changes_no_decision() {
    // Twin schedulers fed the same operations (including picks for a
    // `current` that is not the one last picked, and remove/add of the
    // running slot); after every step one of them puts its running entity
    // back in the heaps, as if none were kept apart. Every answer, AVT and
    // EVT agrees: keeping the running entity out of the heaps is only a
    // matter of where it is stored.
    const N: usize = 6;
    let mut rng = XorShift(0x0BAD_5EED_1234_4321);
    for _ in 0..40 {
        let mut a: Bvt<N> = Bvt::new(rng.below(10 * MS));
        let mut b = a.clone();
        let mut now: Ns = 0;
        let mut cur = None;
        let mut last_svt = 0;
        for _ in 0..2_000 {
            now += rng.below(3 * MS);
            let slot = rng.below(N as u64) as usize;
            match rng.below(8) {
                0 => {
                    let p = random_params(&mut rng);
                    assert_eq!(a.add(slot, p, now), b.add(slot, p, now));
                }
                1 => assert_eq!(a.block(slot, now), b.block(slot, now)),
                2 => assert_eq!(a.wake(slot, now), b.wake(slot, now)),
                3 => {
                    let ran = rng.below(20 * MS);
                    let t = cur.unwrap_or(slot);
                    a.account(t, ran);
                    b.account(t, ran);
                }
                4 => {
                    let pa = a.pick_yielding(now, slot);
                    assert_eq!(pa, b.pick_yielding(now, slot));
                    cur = pa.next;
                }
                5 => assert_eq!(a.remove(slot), b.remove(slot)),
                6 => {
                    // A pick for some other `current` than the last pick's.
                    let c = (rng.below(2) == 0).then_some(slot);
                    let pa = a.pick(now, c);
                    assert_eq!(pa, b.pick(now, c));
                    check_pick(&a, c, pa);
                    cur = pa.next;
                }
                _ => {
                    let pa = a.pick(now, cur);
                    assert_eq!(pa, b.pick(now, cur));
                    check_pick(&a, cur, pa);
                    cur = pa.next;
                }
            }
            if let Some(r) = b.running.take() {
                b.reindex(r);
            }
            b.by_evt.check();
            b.by_avt.check();
            check_invariants(&a, &mut last_svt);
            assert_eq!(a.svt(), b.svt());
            assert_eq!(a.runnable_count(), b.runnable_count());
            same_entities(&a, &b);
        }
    }
}

#[test]
fn bvt_a_switch_moves_one_entity_in_and_one_out_of_the_heaps() {
    let mut s: Bvt<4> = Bvt::new(MS);
    for i in 0..3 {
        s.add(i, Params::default(), 0).unwrap();
    }
    let p = s.pick(0, None);
    let first = p.next.unwrap();
    assert_eq!(s.running, Some(first));
    assert_eq!(s.by_evt.len(), 2);
    // Charging the running domain touches no heap.
    s.account(first, 10 * MS);
    assert!(!s.by_evt.contains(first) && !s.by_avt.contains(first));
    let p = s.pick(10 * MS, Some(first));
    let second = p.next.unwrap();
    assert_ne!(second, first, "ran past its allowance");
    assert_eq!(s.running, Some(second));
    assert!(s.by_evt.contains(first) && s.by_avt.contains(first));
    assert_eq!(s.runnable_count(), 3);
    // Blocking the running domain leaves nothing running.
    s.block(second, 10 * MS);
    assert_eq!(s.running, None);
    assert_eq!(s.runnable_count(), 2);
}

#[test]
fn bvt_charging_a_blocked_domain_changes_nothing_else() {
    // Twin schedulers fed the same random operations; `b` re-indexes the
    // charged slot and rescans SVT after every `account`, as `account`
    // does for a runnable domain (and did for every domain). `account`
    // skips both for a blocked one: every answer and every AVT, EVT and
    // SVT agrees, and the heaps and invariants hold.
    const N: usize = 5;
    let mut rng = XorShift(0x7F4A_7C15_9E37_79B9);
    for _ in 0..40 {
        let mut a: Bvt<N> = Bvt::new(rng.below(10 * MS));
        let mut b = a.clone();
        let mut now: Ns = 0;
        let mut cur = None;
        let mut last_svt = 0;
        for _ in 0..2_000 {
            now += rng.below(3 * MS);
            let slot = rng.below(N as u64 + 1) as usize;
            match rng.below(7) {
                0 => {
                    let p = random_params(&mut rng);
                    assert_eq!(a.add(slot, p, now), b.add(slot, p, now));
                }
                1 => assert_eq!(a.block(slot, now), b.block(slot, now)),
                2 => assert_eq!(a.wake(slot, now), b.wake(slot, now)),
                3 | 4 => {
                    let ran = if rng.below(50) == 0 { u64::MAX } else { rng.below(20 * MS) };
                    let t = if rng.below(2) == 0 { cur.unwrap_or(slot) } else { slot };
                    a.account(t, ran);
                    b.account(t, ran);
                    if t < N {
                        b.reindex(t);
                    }
                    b.update_svt();
                }
                5 => {
                    let pa = a.pick_yielding(now, slot);
                    assert_eq!(pa, b.pick_yielding(now, slot));
                    cur = pa.next;
                }
                _ => {
                    let pa = a.pick(now, cur);
                    assert_eq!(pa, b.pick(now, cur));
                    check_pick(&a, cur, pa);
                    cur = pa.next;
                }
            }
            a.by_evt.check();
            a.by_avt.check();
            check_invariants(&a, &mut last_svt);
            assert_eq!(a.svt(), b.svt());
            assert_eq!(a.running, b.running);
            same_entities(&a, &b);
        }
    }
}
