//! `hello`: greets, shows what the hypervisor told it, checks that its
//! SSE state survives preemption, and powers off.
//!
//! With `linger` it then waits until it is destroyed instead (a domain
//! for the toolstack to pause, list and destroy); `quiet` skips the
//! greeting and the rounds (the toolstack's churn). With `t0=NS` (the
//! system time its create began, which a timed churn passes), its first
//! line says how long ago that was: the benchmark's create-to-first-line.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use pvguest_sdk::{abi::features, println, sched, version, StartInfo};

use pvguest_sdk::cmdline::arg;

pvguest_sdk::entry!(main);

fn main(si: &'static StartInfo) {
    if let Some(t0) = arg(si.cmdline(), "t0") {
        println!("first line: {} ns after its create began", pvguest_sdk::time::now_ns().saturating_sub(t0));
    }
    let has = |w: &str| si.cmdline().split(' ').any(|x| x == w);
    if !has("quiet") {
        greet(si);
    }
    if has("linger") {
        if !has("quiet") {
            println!("lingering until destroyed");
        }
        // No event source is bound: it sleeps until the toolstack ends it.
        loop {
            sched::block();
        }
    }
}

fn greet(si: &'static StartInfo) {
    let (major, minor) = version::abi_version();
    println!("Hello from {} (domain {}), ring 1, ABI {major}.{minor}", si.name(), si.domid);
    println!(
        "start info: {} pages, page tables at {:#x} ({} frames), first free pfn {}, cmdline '{}'",
        si.nr_pages,
        si.pt_base,
        si.nr_pt_frames,
        si.first_free_pfn,
        si.cmdline()
    );
    let f = version::features();
    println!(
        "features: fpu-preserved={} isolated-entry={}",
        f & features::FPU_PRESERVED != 0,
        f & features::ISOLATED_ENTRY != 0
    );
    let rounds = arg(si.cmdline(), "rounds").unwrap_or(4);
    for round in 1..=rounds {
        let bad = pvguest_sdk::diag::sse_clobber_check(0x1111_0000_0000 * round, 3_000_000);
        println!("hello round {round}/{rounds}: sse registers intact: {}", bad == 0);
        if bad != 0 {
            println!("{bad} XMM registers were clobbered across preemption");
            sched::crash();
        }
    }
    println!("goodbye");
}
