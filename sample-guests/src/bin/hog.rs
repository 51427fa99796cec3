//! `hog`: burns CPU for `seconds` of real time (`mode=spin`, the default),
//! or alternates `burst_ms` of CPU with `sleep_ms` of sleep (`mode=burst`),
//! then reports how much CPU it got: `running` against `runnable`
//! (waiting for the CPU) from its run-state accounting.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use pvguest_sdk::abi::event::VIRQ_TIMER;
use pvguest_sdk::abi::vcpu::runstate;
use pvguest_sdk::{event, println, time, timer, StartInfo};

use pvguest_sdk::cmdline::arg;

pvguest_sdk::entry!(main);

/// Burns CPU with plain arithmetic (not `pause`, which QEMU's emulator
/// turns into an expensive exit).
fn burn(rounds: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..rounds {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    core::hint::black_box(x)
}

fn spin_for_run_ns(ns: u64) {
    let v0 = time::virtual_ns();
    while time::virtual_ns() - v0 < ns {
        burn(10_000);
    }
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let burst = cmd.split(' ').any(|w| w == "mode=burst");
    let millis = arg(cmd, "millis").unwrap_or(1000);
    let end = time::now_ns() + millis * 1_000_000;
    let r0 = time::runstate();
    let mut bursts = 0u64;
    if burst {
        let burst_ns = arg(cmd, "burst_ms").unwrap_or(20) * 1_000_000;
        let sleep_ns = arg(cmd, "sleep_ms").unwrap_or(20) * 1_000_000;
        event::init();
        event::bind_virq(VIRQ_TIMER, |_| {}).expect("bind VIRQ_TIMER");
        event::enable();
        while time::now_ns() < end {
            spin_for_run_ns(burst_ns);
            bursts += 1;
            let wake = time::now_ns() + sleep_ns;
            timer::set_oneshot(wake).expect("arm");
            while time::now_ns() < wake {
                event::block();
            }
        }
    } else {
        while time::now_ns() < end {
            burn(10_000);
        }
    }
    let r = time::runstate();
    let running = r.time[runstate::RUNNING as usize] - r0.time[runstate::RUNNING as usize];
    let runnable = r.time[runstate::RUNNABLE as usize] - r0.time[runstate::RUNNABLE as usize];
    let blocked = r.time[runstate::BLOCKED as usize] - r0.time[runstate::BLOCKED as usize];
    let share = running * 10_000 / (running + runnable).max(1);
    println!(
        "hog: ran {} ms, waited {} ms, blocked {} ms; share while runnable {}.{:02}%{}",
        running / 1_000_000,
        runnable / 1_000_000,
        blocked / 1_000_000,
        share / 100,
        share % 100,
        if burst { " (bursts)" } else { "" }
    );
    println!("hog: cpu_ns={running} wait_ns={runnable} bursts={bursts}");
}
