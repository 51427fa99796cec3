//! `iso-latency`: the latency-sensitive domain of the isolation experiment
//! (`cargo xtask test isolation-seed`, `cargo xtask bench`); run it warped.
//!
//! It sleeps on a one-shot timer every `period_us` (default 7000) and
//! measures each wake-up's latency: the system time at which its event
//! handler runs (the first instruction it executes after the wake) minus
//! the deadline it armed. After each wake-up it does a little work
//! (`work` rounds of arithmetic, default 2000). Wake-ups whose deadline
//! lies in `[start_ms, end_ms)` of system time count (defaults 100, 1100);
//! it stops at `end_ms`. The default period is longer than the
//! hypervisor's unwarp requirement (5 ms between warps): a domain that
//! wakes sooner after its last unwarp is not warped at that wake, and the
//! experiment would measure that rule instead of isolation.
//!
//! Prints, then powers off:
//! ```text
//! iso-latency: wakeups=<n> mean_ns=<mean> worst_ns=<worst>
//! ```
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::abi::event::VIRQ_TIMER;
use pvguest_sdk::{event, println, time, timer, StartInfo};

use pvguest_sdk::cmdline::arg_or as arg;

pvguest_sdk::entry!(main);

static FIRED: AtomicU64 = AtomicU64::new(0);
/// System time at which the last timer event's handler ran.
static WOKE_AT: AtomicU64 = AtomicU64::new(0);

fn burn(rounds: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..rounds {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    core::hint::black_box(x)
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let start = arg(cmd, "start_ms", 100) * 1_000_000;
    let end = arg(cmd, "end_ms", 1100) * 1_000_000;
    let period = arg(cmd, "period_us", 7000).max(1) * 1000;
    let work = arg(cmd, "work", 2000);
    event::init();
    event::bind_virq(VIRQ_TIMER, |_| {
        WOKE_AT.store(time::now_ns(), Ordering::SeqCst);
        FIRED.fetch_add(1, Ordering::SeqCst);
    })
    .expect("bind VIRQ_TIMER");
    event::enable();
    let (mut n, mut total, mut worst) = (0u64, 0u64, 0u64);
    loop {
        let deadline = time::now_ns() + period;
        if deadline >= end {
            break;
        }
        let fired = FIRED.load(Ordering::SeqCst);
        timer::set_oneshot(deadline).expect("arm");
        while FIRED.load(Ordering::SeqCst) == fired {
            event::block();
        }
        let late = WOKE_AT.load(Ordering::SeqCst).saturating_sub(deadline);
        if deadline >= start {
            n += 1;
            total += late;
            worst = worst.max(late);
        }
        burn(work);
    }
    println!("iso-latency: wakeups={n} mean_ns={} worst_ns={worst}", total / n.max(1));
}
