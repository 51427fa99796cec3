//! `hostile`: the hostile antagonist of the isolation experiment
//! (`cargo xtask test isolation-seed`, `cargo xtask bench`): it tries to
//! take more than its share of the CPU through the hypervisor, by making
//! the hypervisor do long work on its behalf. Until system time `end_ms`
//! (default 1100) it repeats a round of three storms, then reports and
//! powers off:
//! - page-table storm: `pt_calls` (default 4) back-to-back hypercalls, each
//!   a batch as large as the ABI allows (`MAX_BATCH` = 512 requests),
//!   alternating `mmuext_op` batches of pin/unpin of eight full L1 tables
//!   it owns (each operation validates or devalidates 512 entries) and
//!   `mmu_update` batches rewriting all 512 entries of a ninth, pinned L1;
//! - console flood: `floods` (default 1) `console_io` writes of the maximum
//!   length (4096 bytes) of control bytes (0x00..0x1f) with a newline every
//!   64 bytes (the hypervisor escapes each control byte as four characters
//!   and prefixes each line with the domain name);
//! - timer storm: `timers` (default 64) one-shot timers, each armed 1 ns
//!   ahead and blocked on until it fires.
//!
//! The experiment's plan was a *multicall* storm: multicalls of 64 entries,
//! each a nested `mmuext_op`/`mmu_update` batch. The SDK has no safe
//! `multicall` wrapper and this guest forbids `unsafe`, so it issues the
//! same page-table work as top-level batches instead (which the hypervisor
//! can preempt between requests, unlike nested ones); see the report of
//! the isolation-seed branch for the SDK addition that would allow it.
//!
//! Waits 50 ms (its console allowance, spent on the floods, refills), then
//! prints and powers off:
//! ```text
//! hostile: rounds=<n> pt_calls=<n> pt_ops=<n> pt_errors=<n> floods=<n> console_bytes=<n> timers_armed=<n> timers_fired=<n> cpu_ns=<n>
//! ```
//! (`cpu_ns`: the CPU time the hypervisor charged it since boot.)
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::abi::event::VIRQ_TIMER;
use pvguest_sdk::abi::mmu::{ext, MmuUpdate, MmuextOp, MAX_BATCH};
use pvguest_sdk::mm::{self, AddressSpace, Page, Pte};
use pvguest_sdk::{console, event, println, time, timer, StartInfo};

use pvguest_sdk::cmdline::arg_or as arg;

pvguest_sdk::entry!(main);

static FIRED: AtomicU64 = AtomicU64::new(0);

/// L1 tables pinned and unpinned by the `mmuext_op` storm.
const TABLES: usize = 8;
/// Data frames the tables' entries map (read-only).
const DATA: usize = 8;
const BATCH: usize = MAX_BATCH as usize;
/// User address of the first table's 2 MiB region.
const BASE: u64 = 0x40_0000;
const FLOOD: usize = pvguest_sdk::abi::console_io::MAX_WRITE as usize;

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let end = arg(cmd, "end_ms", 1100) * 1_000_000;
    let pt_calls = arg(cmd, "pt_calls", 4);
    let floods = arg(cmd, "floods", 1);
    let timers = arg(cmd, "timers", 64);

    event::init();
    event::bind_virq(VIRQ_TIMER, |_| {
        FIRED.fetch_add(1, Ordering::SeqCst);
    })
    .expect("bind VIRQ_TIMER");
    event::enable();

    // TABLES + 1 full L1 tables, written while they are ordinary pages of an
    // unpinned tree, then made read-only so they can be pinned.
    let data: [Page; DATA] = core::array::from_fn(|_| mm::alloc_page().expect("data page"));
    let mut space = AddressSpace::new_sharing_kernel().expect("address space");
    let mut l1s = [data[0]; TABLES + 1];
    for (t, l1) in l1s.iter_mut().enumerate() {
        let region = BASE + (t as u64) * 0x20_0000;
        for i in 0..512 {
            space.map(region + i * 4096, data[i as usize % DATA], Pte::USER).expect("map");
        }
        *l1 = space.l1_for(region).expect("l1");
        mm::make_readonly(*l1).expect("make the table read-only");
    }
    let fixed = l1s[TABLES];
    mm::pin(1, fixed.mfn).expect("pin the mmu_update table");
    let ops: [MmuextOp; BATCH] = core::array::from_fn(|i| {
        let t = l1s[i % TABLES];
        let cmd = if i % (2 * TABLES) < TABLES { ext::PIN_L1_TABLE } else { ext::UNPIN_TABLE };
        MmuextOp { cmd, pad: 0, arg1: t.mfn, arg2: 0 }
    });
    let mut reqs = [MmuUpdate::default(); BATCH];

    let mut flood = [0u8; FLOOD];
    for (i, b) in flood.iter_mut().enumerate() {
        *b = if i % 64 == 63 { b'\n' } else { (i % 32) as u8 };
    }

    let (mut rounds, mut pt_hypercalls, mut pt_ops, mut pt_errors) = (0u64, 0u64, 0u64, 0u64);
    let (mut console_floods, mut console_bytes, mut armed) = (0u64, 0u64, 0u64);
    'storms: while time::now_ns() < end {
        rounds += 1;
        for c in 0..pt_calls {
            if time::now_ns() >= end {
                break 'storms;
            }
            let r = if c % 2 == 0 {
                mm::mmuext(&ops)
            } else {
                for (i, q) in reqs.iter_mut().enumerate() {
                    let frame = data[(i + pt_hypercalls as usize) % DATA];
                    *q = mm::pte_update(fixed.mfn, i, Pte::new(frame.mfn, Pte::USER));
                }
                mm::mmu_update(&reqs)
            };
            pt_hypercalls += 1;
            match r {
                Ok(()) => pt_ops += BATCH as u64,
                Err((done, _)) => {
                    pt_ops += done as u64;
                    pt_errors += 1;
                }
            }
        }
        for _ in 0..floods {
            if time::now_ns() >= end {
                break 'storms;
            }
            if let Ok(n) = console::write(&flood) {
                console_bytes += n as u64;
            }
            console_floods += 1;
        }
        for _ in 0..timers {
            if time::now_ns() >= end {
                break 'storms;
            }
            let fired = FIRED.load(Ordering::SeqCst);
            timer::set_oneshot(time::now_ns() + 1).expect("arm");
            armed += 1;
            while FIRED.load(Ordering::SeqCst) == fired {
                event::block();
            }
        }
    }
    // The floods spent this domain's console allowance (the hypervisor
    // rate-limits each domain and drops the excess): wait for enough of it
    // to come back that the summary line is not dropped too.
    let resume = time::now_ns() + 50_000_000;
    let fired = FIRED.load(Ordering::SeqCst);
    timer::set_oneshot(resume).expect("arm");
    while FIRED.load(Ordering::SeqCst) == fired && time::now_ns() < resume {
        event::block();
    }
    println!(
        "hostile: rounds={rounds} pt_calls={pt_hypercalls} pt_ops={pt_ops} pt_errors={pt_errors} \
         floods={console_floods} console_bytes={console_bytes} timers_armed={armed} timers_fired={} cpu_ns={}",
        FIRED.load(Ordering::SeqCst),
        time::virtual_ns()
    );
}
