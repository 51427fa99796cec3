//! `forkbomb`: the fork-bomb antagonist of the isolation experiment
//! (`cargo xtask test isolation-seed`, `cargo xtask bench`).
//!
//! Its guest kernel spawns ring-3 processes without end until system time
//! `end_ms` (default 1100), then reports and powers off. Every process, in
//! its own address space:
//! - loops `iters` times (default 32): a `getpid` through the direct
//!   `int 0x80` gate, a write of 16 words spread over its stack page, a
//!   `fork` request, and every 8th round a `getpid` through the bounced
//!   `syscall` instruction;
//! - then asks the kernel its fate: every 4th process dies by touching
//!   address 0 (a page fault bounced by the hypervisor; the kernel kills
//!   it), the others exit.
//!
//! The kernel spawns one process for every run: a new one (a fresh,
//! validated and pinned page-table tree, code and stack pages: about ten
//! hypercalls and six zeroed frames) until its memory runs out; from then
//! on it reaps the oldest process and spawns the next one in the reaped
//! process's address space (the SDK's frame allocator never frees frames,
//! so a reaped process's frames are recycled this way). `fork` requests
//! are counted (each process makes `iters` of them, so demand always
//! outruns what one CPU can spawn). `cpu_ns` is the CPU time the
//! hypervisor charged it since boot. Options: `end_ms`, `iters`, `heap`
//! (pages of kernel heap for the process table, default 40).
//!
//! Prints, then powers off:
//! ```text
//! forkbomb: out of memory after <n> processes (<errno>); reaping and respawning
//! forkbomb: spawned=<n> new=<n> recycled=<n> exited=<n> killed=<n> forks=<n> syscalls=<n> cpu_ns=<n>
//! ```
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::process::{self, Exit, Process};
use pvguest_sdk::trap::TrapContext;
use pvguest_sdk::{heap, println, time, user_program, StartInfo};

use pvguest_sdk::cmdline::arg_or as arg;

pvguest_sdk::entry!(main);

/// This kernel's system calls: number in rax.
const SYS_EXIT: u64 = 0;
const SYS_GETPID: u64 = 2;
const SYS_FORK: u64 = 3;
const SYS_FATE: u64 = 4;
const SYS_ITERS: u64 = 5;

static PID: AtomicU64 = AtomicU64::new(0);
static FORKS: AtomicU64 = AtomicU64::new(0);
static SYSCALLS: AtomicU64 = AtomicU64::new(0);
/// Rounds each process runs (it asks with `SYS_ITERS`).
static ITERS: AtomicU64 = AtomicU64::new(32);

fn syscall(ctx: &mut TrapContext) {
    SYSCALLS.fetch_add(1, Ordering::Relaxed);
    match ctx.rax {
        SYS_EXIT => process::exit_current(ctx.rdi),
        SYS_GETPID => ctx.rax = PID.load(Ordering::Relaxed),
        SYS_FORK => {
            FORKS.fetch_add(1, Ordering::Relaxed);
            ctx.rax = 0;
        }
        SYS_FATE => ctx.rax = u64::from(PID.load(Ordering::Relaxed).is_multiple_of(4)),
        SYS_ITERS => ctx.rax = ITERS.load(Ordering::Relaxed),
        _ => ctx.rax = u64::MAX,
    }
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let end = arg(cmd, "end_ms", 1100) * 1_000_000;
    ITERS.store(arg(cmd, "iters", 32).max(1), Ordering::Relaxed);
    heap::init(arg(cmd, "heap", 40)).expect("heap");
    process::init(syscall).expect("ring-3 support");
    let code = user_program!(
        forkbomb_child,
        r#"
        mov eax, 5
        int 0x80
        mov r12, rax
    2:  mov eax, 2
        int 0x80
        mov rbx, rax
        lea rdi, [rsp - 4000]
        mov ecx, 16
    3:  mov [rdi], rbx
        add rdi, 256
        dec ecx
        jnz 3b
        mov eax, 3
        int 0x80
        test r12, 7
        jnz 4f
        mov eax, 2
        syscall
    4:  dec r12
        jnz 2b
        mov eax, 4
        int 0x80
        test rax, rax
        jnz 5f
        xor edi, edi
        xor eax, eax
        int 0x80
        ud2
    5:  xor eax, eax
        mov rax, [rax]
        ud2
        "#
    );
    let mut table: Vec<Process> = Vec::new();
    let (mut spawned, mut recycled, mut exited, mut killed) = (0u64, 0u64, 0u64, 0u64);
    let mut oom = false;
    let mut victim = 0usize;
    while time::now_ns() < end {
        // Spawn: a new process while memory lasts, else reap the oldest
        // and spawn in its place.
        let slot = if oom {
            recycled += 1;
            let s = victim;
            victim = (victim + 1) % table.len();
            s
        } else {
            let loaded = if table.len() == table.capacity() && table.try_reserve(1).is_err() {
                Err(pvguest_sdk::Errno::ENOMEM)
            } else {
                Process::load(code)
            };
            match loaded {
                Ok(p) => {
                    table.push(p);
                    table.len() - 1
                }
                Err(e) => {
                    oom = true;
                    println!("forkbomb: out of memory after {} processes ({e}); reaping and respawning", table.len());
                    if table.is_empty() {
                        println!("forkbomb: could not spawn a single process");
                        break;
                    }
                    continue;
                }
            }
        };
        spawned += 1;
        PID.store(spawned, Ordering::Relaxed);
        match table[slot].run() {
            Exit::Exited(_) => exited += 1,
            Exit::Killed(_) => killed += 1,
        }
    }
    println!(
        "forkbomb: spawned={spawned} new={} recycled={recycled} exited={exited} killed={killed} forks={} syscalls={} cpu_ns={}",
        table.len(),
        FORKS.load(Ordering::Relaxed),
        SYSCALLS.load(Ordering::Relaxed),
        time::virtual_ns()
    );
}
