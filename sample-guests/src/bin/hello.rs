//! `hello`: greets, shows what the hypervisor told it, checks that its
//! SSE state survives preemption, and powers off.
//!
//! With `linger` it then waits until it is destroyed instead (a domain
//! for the toolstack to pause, list and destroy); `quiet` skips the
//! greeting and the rounds (the toolstack's churn). With `t0=NS` (the
//! system time its create began, which a timed churn passes), its first
//! line says how long ago that was: the benchmark's create-to-first-line.
//! With `echo` it answers each line typed at its console (dom0's shell
//! attached to it: `console DOM`) with `echo: LINE`, until `bye`. With
//! `ticks=MS` it prints `tick N` every MS milliseconds until destroyed.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use pvguest_sdk::{abi::features, console, println, sched, version, StartInfo};

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
    if let Some(ms) = arg(si.cmdline(), "ticks") {
        let mut next = pvguest_sdk::time::now_ns();
        for n in 1u64.. {
            println!("tick {n}");
            next += ms.max(1) * 1_000_000;
            sched::sleep_until(next);
        }
    }
    if has("echo") {
        echo();
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

/// Echoes console input a line at a time until `bye` (a line longer than
/// the buffer is answered in pieces).
fn echo() {
    println!("echo: ready; type a line, `bye` ends");
    let mut line = [0u8; 128];
    let mut len = 0;
    loop {
        if !console::wait_input(0) {
            continue;
        }
        let mut buf = [0u8; 64];
        let n = match console::read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                println!("echo: console input: {e}");
                return;
            }
        };
        for &b in &buf[..n] {
            if b != b'\n' && len < line.len() {
                line[len] = b;
                len += 1;
                continue;
            }
            let text = core::str::from_utf8(&line[..len]).unwrap_or("(not UTF-8)");
            if text.trim() == "bye" {
                println!("echo: bye");
                return;
            }
            println!("echo: {text}");
            len = 0;
            if b != b'\n' {
                line[0] = b;
                len = 1;
            }
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
        // The time says when it ran, whatever path its line takes out.
        let at = pvguest_sdk::time::now_ns() / 1000;
        println!("hello round {round}/{rounds}: sse registers intact: {} (at {at} us)", bad == 0);
        if bad != 0 {
            println!("{bad} XMM registers were clobbered across preemption");
            sched::crash();
        }
    }
    println!("goodbye");
}
