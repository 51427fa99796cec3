//! `pinger`: a latency-sensitive domain. It sleeps, wakes on a timer every
//! `period_ms`, does a little work, and measures how late each wake-up was
//! (from the timer deadline to running again). Run it warped and unwarped
//! next to CPU hogs to see what borrowed virtual time buys.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::abi::event::VIRQ_TIMER;
use pvguest_sdk::{event, println, time, timer, StartInfo};

use pvguest_sdk::cmdline::arg;

pvguest_sdk::entry!(main);

static FIRED: AtomicU64 = AtomicU64::new(0);

fn main(si: &'static StartInfo) {
    let rounds = arg(si.cmdline(), "rounds").unwrap_or(40);
    let period = arg(si.cmdline(), "period_ms").unwrap_or(7) * 1_000_000;
    event::init();
    event::bind_virq(VIRQ_TIMER, |_| {
        FIRED.fetch_add(1, Ordering::SeqCst);
    })
    .expect("bind VIRQ_TIMER");
    event::enable();
    let (mut total, mut worst) = (0u64, 0u64);
    for k in 1..=rounds {
        let deadline = time::now_ns() + period;
        timer::set_oneshot(deadline).expect("arm");
        while FIRED.load(Ordering::SeqCst) < k {
            event::block();
        }
        let late = time::now_ns().saturating_sub(deadline);
        total += late;
        worst = worst.max(late);
        // A little work per wake-up.
        for _ in 0..20_000 {
            core::hint::spin_loop();
        }
    }
    println!("pinger: {rounds} wake-ups, mean latency {} us, worst {} us", total / rounds / 1000, worst / 1000);
    println!("pinger: mean_ns={} worst_ns={worst}", total / rounds);
}
