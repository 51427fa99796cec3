//! Trap handlers: CPU exceptions bounced by the hypervisor, and the common
//! register frame of every entry into the guest kernel (traps, events,
//! system calls).
//!
//! ```ignore
//! use pvguest_sdk::trap::{self, Resolution, TrapContext, Vector};
//!
//! fn on_breakpoint(ctx: &mut TrapContext) -> Resolution {
//!     pvguest_sdk::println!("breakpoint at {:#x}", ctx.rip);
//!     Resolution::Resume // int3 already points rip past itself
//! }
//!
//! trap::install();
//! trap::set_handler(Vector::Breakpoint, on_breakpoint);
//! ```
//!
//! # How an entry works
//! The hypervisor writes a [`pvguest_abi::trap::BounceFrame`] on the kernel
//! stack and jumps to the SDK's entry stub, which pushes the general
//! registers (completing a [`TrapContext`]), saves the FPU/SSE state, and
//! calls the Rust dispatcher. A handler may change the context (for
//! instance, `rip` to skip an instruction, or everything to switch to
//! another saved context); the stub restores what is there and returns with
//! `iretq` (the direct-return path: no hypercall).

use crate::{println, sched};
use core::arch::global_asm;
use core::sync::atomic::{AtomicUsize, Ordering};
use pvguest_abi::trap::{TrapInfo, SYSCALL_GATE_VECTOR};
use pvguest_abi::{hypercall, Errno};

/// Registers at the time of the entry, and the bounce frame above them.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct TrapContext {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// Exception vector, `UPCALL_VECTOR`, `SYSCALL_VECTOR` or 0x80.
    pub vector: u32,
    /// Event mask before the entry.
    pub saved_upcall_mask: u32,
    /// CPU error code.
    pub error: u64,
    /// Faulting address of a page fault.
    pub cr2: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<TrapContext>() == 15 * 8 + 64);

impl TrapContext {
    /// The ring the entry came from (1 = guest kernel, 3 = application).
    pub fn ring(&self) -> u8 {
        (self.cs & 3) as u8
    }
}

/// CPU exception vectors a guest may handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Vector {
    DivideError = 0,
    Debug = 1,
    Breakpoint = 3,
    Overflow = 4,
    BoundRange = 5,
    InvalidOpcode = 6,
    DeviceNotAvailable = 7,
    InvalidTss = 10,
    SegmentNotPresent = 11,
    StackFault = 12,
    GeneralProtection = 13,
    PageFault = 14,
    X87 = 16,
    AlignmentCheck = 17,
    Simd = 19,
}

/// What to do after a handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Return to the (possibly modified) context.
    Resume,
    /// Crash the domain (the SDK prints the context first).
    Crash,
}

/// A trap handler.
pub type Handler = fn(&mut TrapContext) -> Resolution;

static HANDLERS: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];

/// Registers `handler` for `vector`. Takes effect once [`install`] ran.
pub fn set_handler(vector: Vector, handler: Handler) {
    HANDLERS[vector as usize].store(handler as usize, Ordering::Release);
}

extern "C" {
    fn pvguest_trap_entry();
}

/// Registers the SDK's entry stub for every exception a guest may handle.
/// Vectors without a handler print the context and crash the domain.
pub fn install() {
    INSTALLED.store(1, Ordering::Release);
    apply().expect("the SDK's trap table is valid");
}

static INSTALLED: AtomicUsize = AtomicUsize::new(0);
static SYSCALL_GATE: AtomicUsize = AtomicUsize::new(0);
static SYSCALL_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Builds and installs the trap table from what is registered.
fn apply() -> Result<(), Errno> {
    let mut table = [TrapInfo::default(); 34];
    let mut n = 0;
    if INSTALLED.load(Ordering::Acquire) != 0 {
        for v in 0..20u8 {
            if matches!(v, 2 | 8 | 9 | 15 | 18) {
                continue;
            }
            table[n] = TrapInfo { vector: v, flags: 0, cs: 0, pad: 0, address: pvguest_trap_entry as *const () as u64 };
            n += 1;
        }
    }
    let gate = SYSCALL_GATE.load(Ordering::Acquire);
    if gate != 0 {
        table[n] = TrapInfo { vector: SYSCALL_GATE_VECTOR, flags: 3, cs: 0, pad: 0, address: gate as u64 };
        n += 1;
    }
    set_trap_table(&table[..=n])
}

/// Installs a raw trap table (terminated by an entry with address 0).
pub fn set_trap_table(table: &[TrapInfo]) -> Result<(), Errno> {
    if table.last().is_none_or(|t| t.address != 0) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the hypervisor only reads the table.
    Errno::decode(unsafe { crate::hypercall::raw(hypercall::SET_TRAP_TABLE, [table.as_ptr() as u64, 0, 0, 0, 0]) })
        .map(|_| ())
}

/// A system-call handler: gets the application's registers (number and
/// arguments by the guest kernel's own convention) and may change them.
pub type SyscallHandler = fn(&mut TrapContext);

/// Routes ring-3 system calls to `handler`, both through the direct
/// `int 0x80` gate (no hypervisor on the path) and through the `syscall`
/// instruction (bounced by the hypervisor). Needs a kernel stack for traps
/// from ring 3 ([`crate::sched::stack_switch`]).
pub fn set_syscall_handler(handler: SyscallHandler) -> Result<(), Errno> {
    SYSCALL_HANDLER.store(handler as usize, Ordering::Release);
    SYSCALL_GATE.store(pvguest_syscall_gate_entry as *const () as usize, Ordering::Release);
    apply()?;
    let cb = pvguest_syscall_bounce_entry as *const () as u64;
    // SAFETY: set_callbacks only reads its arguments.
    let r =
        unsafe { crate::hypercall::raw(hypercall::SET_CALLBACKS, [crate::event::event_entry_address(), 0, cb, 0, 0]) };
    Errno::decode(r).map(|_| ())
}

extern "C" {
    fn pvguest_syscall_gate_entry();
    fn pvguest_syscall_bounce_entry();
}

#[no_mangle]
extern "C" fn pvguest_syscall_dispatch(ctx: *mut TrapContext) {
    // SAFETY: the entry stub passes the context it just built.
    let ctx = unsafe { &mut *ctx };
    let h = SYSCALL_HANDLER.load(Ordering::Acquire);
    if h == 0 {
        print_context("system call with no handler", ctx);
        sched::crash();
    }
    // SAFETY: only `set_syscall_handler` stores non-zero values, and it
    // stores `SyscallHandler` function pointers.
    let f: SyscallHandler = unsafe { core::mem::transmute::<usize, SyscallHandler>(h) };
    f(ctx);
}

/// Mnemonic of an exception vector.
pub fn mnemonic(v: u32) -> &'static str {
    const M: [&str; 20] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#09", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
        "#MF", "#AC", "#MC", "#XM",
    ];
    M.get(v as usize).copied().unwrap_or("?")
}

/// Prints a context (for crash reports).
pub fn print_context(what: &str, c: &TrapContext) {
    println!(
        "{what}: {} in ring {} at rip {:#x}, error {:#x}, cr2 {:#x}, rsp {:#x}",
        mnemonic(c.vector),
        c.ring(),
        c.rip,
        c.error,
        c.cr2,
        c.rsp
    );
}

#[no_mangle]
extern "C" fn pvguest_trap_dispatch(ctx: *mut TrapContext) {
    // SAFETY: the entry stub passes the context it just built on this
    // stack; nothing else refers to it while the handler runs.
    let ctx = unsafe { &mut *ctx };
    let h = HANDLERS.get(ctx.vector as usize).map_or(0, |h| h.load(Ordering::Acquire));
    let res = if h == 0 {
        print_context("unhandled trap", ctx);
        Resolution::Crash
    } else {
        // SAFETY: only `set_handler` stores non-zero values, and it stores
        // `Handler` function pointers.
        let f: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
        f(ctx)
    };
    if res == Resolution::Crash {
        sched::crash();
    }
}

// The entry stubs. Each saves the general registers and the FPU/SSE state
// (handlers are ordinary Rust, which uses SSE), calls the dispatcher, and
// returns with iretq. The event entry, on every event, saves only the
// caller-saved registers (see it below).
global_asm!(
    r#"
    .macro PVGUEST_SAVE
    cld
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    mov rbx, rsp
    sub rsp, 512
    and rsp, -16
    fxsave64 [rsp]
    mov rdi, rbx
    .endm

    .macro PVGUEST_RESTORE
    fxrstor64 [rsp]
    mov rsp, rbx
    pop rax
    pop rbx
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop rbp
    pop r8
    pop r9
    pop r10
    pop r11
    pop r12
    pop r13
    pop r14
    pop r15
    add rsp, 24
    iretq
    .endm

    .text
    .global pvguest_trap_entry
    .balign 16
pvguest_trap_entry:
    PVGUEST_SAVE
    call pvguest_trap_dispatch
    PVGUEST_RESTORE

    /* The event upcall saves only what its Rust callee may change: the
       caller-saved registers (the System V ABI has the callee keep rbx,
       rbp and r12-r15) and the FPU/SSE state; rbp, saved first, holds the
       stack pointer across the call. The callee gets the bounce frame,
       not a TrapContext: it reads only the saved event mask. */
    .global pvguest_event_entry
    .balign 16
pvguest_event_entry:
    cld
    push r11
    push r10
    push r9
    push r8
    push rdi
    push rsi
    push rdx
    push rcx
    push rax
    push rbp
    mov rbp, rsp
    sub rsp, 512
    and rsp, -16
    fxsave64 [rsp]
    lea rdi, [rbp + 80]
    call pvguest_event_upcall
    fxrstor64 [rsp]
    mov rsp, rbp
    pop rbp
    pop rax
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop r8
    pop r9
    pop r10
    pop r11
    add rsp, 24
    iretq

    .global pvguest_syscall_gate_entry
    .balign 16
pvguest_syscall_gate_entry:
    push 0
    push 0
    push 0x80
    PVGUEST_SAVE
    call pvguest_syscall_dispatch
    PVGUEST_RESTORE

    .global pvguest_syscall_bounce_entry
    .balign 16
pvguest_syscall_bounce_entry:
    PVGUEST_SAVE
    call pvguest_syscall_dispatch
    PVGUEST_RESTORE
    "#
);
