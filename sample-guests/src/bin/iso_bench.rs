//! `iso-bench`: a benchmark domain of the isolation experiment (the seed's
//! "benchmark domains degraded only a few % next to a fork bomb and a disk
//! hog", reproduced by `cargo xtask test isolation-seed` and
//! `cargo xtask bench`).
//!
//! It runs a fixed, deterministic mix of CPU work and hypercalls in a loop,
//! and counts the iterations it completes inside a fixed window of system
//! time. One iteration is:
//! - `work` rounds of integer arithmetic (an LCG; default 2000);
//! - two `xen_version` queries (version and features) and one `vcpu_op`
//!   run-state query (the SDK has no safe `memory_op` wrapper, so the
//!   "locked" query is the run-state read, which also copies to guest
//!   memory);
//! - one validated page-table update of its own: odd iterations flip an
//!   entry of a pinned L1 of its own with `mmu_update`, even ones flip the
//!   linear mapping of one of its own pages (writable / read-only) with
//!   `update_va_mapping`;
//! - every `sleep_every`-th iteration (default 512, a few ms of CPU), a
//!   one-shot timer sleep of `sleep_us` (default 100 us).
//!
//! The loop runs from boot (warm-up, not counted) until system time
//! `end_ms`; iterations that complete in `[start_ms, end_ms)` count.
//! Options (`key=value` on the command line): `start_ms` (default 100),
//! `end_ms` (default 1100), `work`, `sleep_every`, `sleep_us`.
//!
//! Prints, then powers off:
//! ```text
//! iso-bench: iterations=<n> window_ms=<end-start> cpu_ns=<ns run in the window> sleeps=<n>
//! ```
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::abi::event::VIRQ_TIMER;
use pvguest_sdk::abi::vcpu::runstate;
use pvguest_sdk::mm::{self, AddressSpace, Pte};
use pvguest_sdk::{event, println, time, timer, version, StartInfo};

use pvguest_sdk::cmdline::arg_or as arg;

pvguest_sdk::entry!(main);

static FIRED: AtomicU64 = AtomicU64::new(0);

/// Integer arithmetic (not `pause`, which QEMU turns into an exit).
fn burn(rounds: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..rounds {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    }
    core::hint::black_box(x)
}

fn running_ns() -> u64 {
    time::runstate().time[runstate::RUNNING as usize]
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let start = arg(cmd, "start_ms", 100) * 1_000_000;
    let end = arg(cmd, "end_ms", 1100) * 1_000_000;
    let work = arg(cmd, "work", 2000);
    let sleep_every = arg(cmd, "sleep_every", 512).max(1);
    let sleep_ns = arg(cmd, "sleep_us", 100) * 1000;

    event::init();
    event::bind_virq(VIRQ_TIMER, |_| {
        FIRED.fetch_add(1, Ordering::SeqCst);
    })
    .expect("bind VIRQ_TIMER");
    event::enable();

    // A pinned tree of its own with one mapped page, for mmu_update, and a
    // page of its linear map, for update_va_mapping.
    let mut space = AddressSpace::new_sharing_kernel().expect("address space");
    let target = mm::alloc_page().expect("page");
    space.map(0x40_0000, target, Pte::USER).expect("map");
    space.pin().expect("pin");
    let l1 = space.l1_for(0x40_0000).expect("l1");
    let own = mm::alloc_page().expect("page");

    let (mut iterations, mut sleeps, mut k) = (0u64, 0u64, 0u64);
    let mut cpu0 = None;
    loop {
        let now = time::now_ns();
        if now >= end {
            break;
        }
        if cpu0.is_none() && now >= start {
            cpu0 = Some(running_ns());
        }
        k += 1;
        burn(work);
        core::hint::black_box(version::abi_version());
        core::hint::black_box(version::features());
        core::hint::black_box(time::runstate());
        if k % 2 == 1 {
            let flags = if k % 4 == 1 { Pte::USER | Pte::WRITABLE | Pte::NO_EXECUTE } else { Pte::USER };
            mm::mmu_update(&[mm::pte_update(l1.mfn, 0, Pte::new(target.mfn, flags))]).expect("mmu_update");
        } else {
            let flags = if k % 4 == 0 { Pte::NO_EXECUTE } else { Pte::WRITABLE | Pte::NO_EXECUTE };
            mm::update_va_mapping(own.va(), Pte::new(own.mfn, flags)).expect("update_va_mapping");
        }
        if k % sleep_every == 0 {
            let fired = FIRED.load(Ordering::SeqCst);
            timer::set_oneshot(time::now_ns() + sleep_ns).expect("arm");
            while FIRED.load(Ordering::SeqCst) == fired {
                event::block();
            }
            if time::now_ns() >= start {
                sleeps += 1;
            }
        }
        let done = time::now_ns();
        if done >= start && done < end {
            iterations += 1;
        }
    }
    let cpu = running_ns() - cpu0.unwrap_or_else(running_ns);
    println!("iso-bench: iterations={iterations} window_ms={} cpu_ns={cpu} sleeps={sleeps}", (end - start) / 1_000_000);
}
