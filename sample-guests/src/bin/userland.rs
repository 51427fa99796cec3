//! `userland`: a guest kernel with ring-3 processes. It runs three apps,
//! each in its own address space:
//! - `hello` makes system calls through the direct `int 0x80` gate (ring 3
//!   straight into this kernel, no hypervisor) and through `syscall`
//!   (bounced by the hypervisor), then exits;
//! - `snoop` tries to read this kernel's memory and is killed;
//! - `backwards` sets the direction flag before its system calls (the
//!   kernel's handlers must not inherit it);
//! - `priv` tries `cli` and is killed.
//!
//! The kernel carries on after each, and uses the heap to keep a log.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use pvguest_sdk::process::{self, Exit, Process};
use pvguest_sdk::trap::{mnemonic, TrapContext};
use pvguest_sdk::{heap, println, user_program, StartInfo};

pvguest_sdk::entry!(main);

/// This kernel's system-call ABI: number in rax, arguments in rdi, rsi.
const SYS_EXIT: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_GETPID: u64 = 2;

static PID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn syscall(ctx: &mut TrapContext) {
    let via = if ctx.vector == 0x80 { "int 0x80" } else { "syscall" };
    match ctx.rax {
        SYS_EXIT => process::exit_current(ctx.rdi),
        SYS_WRITE => {
            let mut buf = [0u8; 128];
            let len = (ctx.rsi as usize).min(buf.len());
            ctx.rax = match process::copy_from_user(ctx.rdi, &mut buf[..len]) {
                Ok(()) => {
                    let text = core::str::from_utf8(&buf[..len]).unwrap_or("<not utf-8>");
                    println!("app {} says ({via}): {text}", PID.load(core::sync::atomic::Ordering::Relaxed));
                    len as u64
                }
                Err(e) => e.to_ret() as u64,
            };
        }
        SYS_GETPID => ctx.rax = PID.load(core::sync::atomic::Ordering::Relaxed),
        _ => ctx.rax = u64::MAX,
    }
}

fn main(_si: &'static StartInfo) {
    heap::init(16).expect("heap");
    process::init(syscall).expect("ring-3 support");
    let apps: [(&str, &[u8]); 4] = [
        (
            "hello",
            user_program!(
                hello,
                r#"
                lea rdi, [rip + 2f]
                mov esi, 24
                mov eax, 1
                int 0x80
                lea rdi, [rip + 3f]
                mov esi, 30
                mov eax, 1
                syscall
                mov edi, 7
                xor eax, eax
                int 0x80
                ud2
            2:  .ascii "hello from ring 3 (gate)"
            3:  .ascii "hello again via syscall insn.."
            "#
            ),
        ),
        (
            "snoop",
            user_program!(
                snoop,
                r#"
                lea rdi, [rip + 2f]
                mov esi, 33
                mov eax, 1
                int 0x80
                movabs rax, 0xffff800000000000
                mov rax, [rax]
                xor edi, edi
                xor eax, eax
                int 0x80
            2:  .ascii "reading the kernel's memory now.."
            "#
            ),
        ),
        (
            "backwards",
            user_program!(
                backwards,
                r#"
                std
                lea rdi, [rip + 2f]
                mov esi, 32
                mov eax, 1
                int 0x80
                lea rdi, [rip + 2f]
                mov esi, 32
                mov eax, 1
                syscall
                mov edi, 3
                xor eax, eax
                int 0x80
            2:  .ascii "written with the direction flag"
                .ascii "."
            "#
            ),
        ),
        (
            "priv",
            user_program!(
                privileged,
                r#"
                cli
                xor edi, edi
                xor eax, eax
                int 0x80
            "#
            ),
        ),
    ];
    let mut log: Vec<(&str, Exit)> = Vec::new();
    for (pid, (name, code)) in apps.iter().enumerate() {
        PID.store(pid as u64 + 1, core::sync::atomic::Ordering::Relaxed);
        let mut p = match Process::load(code) {
            Ok(p) => p,
            Err(e) => {
                println!("cannot load {name}: {e}");
                continue;
            }
        };
        let exit = p.run();
        match exit {
            Exit::Exited(code) => println!("process {} ({name}) exited with code {code}", pid + 1),
            Exit::Killed(ctx) => println!(
                "process {} ({name}) killed: {} in ring {} at rip {:#x}, cr2 {:#x}",
                pid + 1,
                mnemonic(ctx.vector),
                ctx.ring(),
                ctx.rip,
                ctx.cr2
            ),
        }
        log.push((name, exit));
    }
    let killed = log.iter().filter(|(_, e)| matches!(e, Exit::Killed(_))).count();
    println!("userland done: {} processes, {killed} killed, kernel still running", log.len());
}
