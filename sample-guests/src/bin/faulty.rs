//! `faulty`: a guest kernel with a bug. It faults in its own kernel as the
//! command line says (`fault=panic|pagefault|ud2|divide`; `fault=block`
//! instead blocks forever; `fault=flood` writes 40 lines of 100 bytes
//! (4 KB, more than its console ring holds) as fast as it can and crashes
//! at once), and must crash only itself. After `fault=flood` every line
//! must still come out, before the report of its end.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use pvguest_sdk::{println, StartInfo};

pvguest_sdk::entry!(main);

fn main(si: &'static StartInfo) {
    let how = si.cmdline().split(' ').find_map(|w| w.strip_prefix("fault=")).unwrap_or("panic");
    println!("faulty: about to fault ({how})");
    match how {
        "panic" => {
            let v: [u32; 2] = [1, 2];
            let i = si.nr_pages as usize; // far beyond the array
            println!("index {} is {}", i, v[i]);
        }
        "pagefault" => {
            // Follow a "pointer" the kernel stored as an integer: the SDK
            // keeps unsafe out of guest code, so use the slice API on an
            // address that our own page tables do not map.
            let end = si.virt_base + si.nr_pages * 4096;
            pvguest_sdk::diag::touch(end);
        }
        "ud2" => pvguest_sdk::diag::undefined_instruction(),
        "divide" => {
            let zero = si.nr_pages / (si.nr_pages + 1); // 0, unknown to the compiler
            println!("{}", pvguest_sdk::diag::divide(1, zero));
        }
        "flood" => {
            for n in 1..=40 {
                println!("flood line {n:2} of 40 {:.<75}", "");
            }
            pvguest_sdk::sched::crash();
        }
        "block" => {
            // Not a fault: wait for an event that can never come. The
            // hypervisor must notice that nothing can wake this domain.
            pvguest_sdk::sched::block();
        }
        other => println!("unknown fault kind '{other}'"),
    }
    println!("faulty: still alive, which is wrong");
}
