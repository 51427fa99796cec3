//! `timers`: clocks and alarms. Shows the wall clock, runs a periodic timer,
//! arms a real-time alarm and a virtual-time alarm (which, next to a CPU
//! hog, fires later in real time than in virtual time), and shows that a
//! timer event that fires while events are masked is held, not lost.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::abi::event::{VIRQ_TIMER, VIRQ_VTIMER};
use pvguest_sdk::time::{self, DateTime};
use pvguest_sdk::{event, println, timer, StartInfo};

pvguest_sdk::entry!(main);

static TICKS: AtomicU64 = AtomicU64::new(0);
static LAST_TICK_AT: AtomicU64 = AtomicU64::new(0);
static VALARMS: AtomicU64 = AtomicU64::new(0);

fn on_timer(_: event::Port) {
    LAST_TICK_AT.store(time::now_ns(), Ordering::SeqCst);
    TICKS.fetch_add(1, Ordering::SeqCst);
}

fn on_vtimer(_: event::Port) {
    VALARMS.fetch_add(1, Ordering::SeqCst);
}

/// Blocks until the tick counter passes `n`.
fn wait_ticks(n: u64) {
    while TICKS.load(Ordering::SeqCst) < n {
        event::block();
    }
}

fn main(_si: &'static StartInfo) {
    let (secs, _) = time::wallclock();
    println!("wall clock: {} ({} s since the epoch)", DateTime::from_unix(secs), secs);

    event::init();
    event::bind_virq(VIRQ_TIMER, on_timer).expect("bind VIRQ_TIMER");
    event::bind_virq(VIRQ_VTIMER, on_vtimer).expect("bind VIRQ_VTIMER");
    event::enable();

    // A periodic timer, re-armed from its deadline (not from when it ran),
    // so lateness does not accumulate.
    const PERIOD: u64 = 10_000_000;
    const ROUNDS: u64 = 10;
    let start = time::now_ns();
    let (mut early, mut worst_late) = (0u32, 0u64);
    for k in 1..=ROUNDS {
        let deadline = start + k * PERIOD;
        timer::set_oneshot(deadline).expect("arm");
        wait_ticks(k);
        let at = LAST_TICK_AT.load(Ordering::SeqCst);
        if at < deadline {
            early += 1;
        }
        worst_late = worst_late.max(at.saturating_sub(deadline));
    }
    let total = time::now_ns() - start;
    println!(
        "periodic: {ROUNDS} ticks of 10 ms in {}.{:03} ms, early {early}, worst lateness {} us",
        total / 1_000_000,
        total / 1000 % 1000,
        worst_late / 1000
    );

    // A real-time alarm 30 ms from now.
    let t0 = time::now_ns();
    let n = TICKS.load(Ordering::SeqCst);
    timer::set_oneshot(t0 + 30_000_000).expect("arm");
    wait_ticks(n + 1);
    let fired = LAST_TICK_AT.load(Ordering::SeqCst) - t0;
    println!("real-time alarm: asked for 30 ms, fired after {} us (not early: {})", fired / 1000, fired >= 30_000_000);

    // A virtual-time alarm 20 ms of run time from now, while we burn CPU.
    let v0 = time::virtual_ns();
    let r0 = time::now_ns();
    timer::set_virtual(v0 + 20_000_000).expect("arm virtual");
    let mut spins = 0u64;
    while VALARMS.load(Ordering::SeqCst) == 0 {
        spins = spins.wrapping_add(1);
        core::hint::spin_loop();
    }
    let (v, r) = (time::virtual_ns() - v0, time::now_ns() - r0);
    println!(
        "virtual-time alarm: fired after {} us of virtual time and {} us of real time (virtual not early: {})",
        v / 1000,
        r / 1000,
        v >= 20_000_000
    );

    // Masked: the event must be held, then delivered by unmasking. The
    // masked window (50 ms) is far longer than the timer (2 ms), so that a
    // late timer on a busy host (TCG time runs unevenly) still fires in it.
    let n = TICKS.load(Ordering::SeqCst);
    event::disable();
    let t0 = time::now_ns();
    timer::set_oneshot(t0 + 2_000_000).expect("arm");
    while time::now_ns() < t0 + 50_000_000 {
        core::hint::spin_loop();
    }
    let held = TICKS.load(Ordering::SeqCst) == n;
    event::enable();
    let delivered = TICKS.load(Ordering::SeqCst) == n + 1;
    println!("masked timer event: held while masked: {held}, delivered on unmask: {delivered}");
    println!("timers done ({spins} spins)");
}
