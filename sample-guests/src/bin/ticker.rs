//! `ticker`: counts while other domains run, so its ticks interleave in
//! time with theirs through preemption (each line says when it ran); also
//! checks its SSE state.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use pvguest_sdk::{println, sched, StartInfo};

pvguest_sdk::entry!(main);

fn main(si: &'static StartInfo) {
    println!("ticker (domain {}) starting", si.domid);
    for tick in 1..=4u64 {
        let bad = pvguest_sdk::diag::sse_clobber_check(0x7777_0000_0000 * tick, 3_000_000);
        let at = pvguest_sdk::time::now_ns() / 1000;
        println!("tick {tick}: sse registers intact: {} (at {at} us)", bad == 0);
        if bad != 0 {
            sched::crash();
        }
    }
    println!("ticker done");
}
