//! Ring-3 processes: load a program into its own address space, run it,
//! and get back control when it exits or is killed.
//!
//! ```ignore
//! use pvguest_sdk::process::{self, Process, Exit};
//! use pvguest_sdk::trap::TrapContext;
//!
//! fn syscall(ctx: &mut TrapContext) {
//!     match ctx.rax {
//!         0 => process::exit_current(ctx.rdi),           // exit(code): never returns
//!         _ => ctx.rax = u64::MAX,                        // unknown call
//!     }
//! }
//!
//! process::init(syscall)?;                                // kernel stack, gates, traps
//! let mut p = Process::load(pvguest_sdk::user_program!(my_app))?;
//! match p.run() { Exit::Exited(code) => ..., Exit::Killed(ctx) => ... }
//! ```
//!
//! # The model
//! - Each process has its own page-table tree ([`crate::mm::AddressSpace`])
//!   sharing the kernel half (supervisor pages, U=0) with the boot tables;
//!   its code and stack are user pages (U=1). The CPU keeps the app out of
//!   the kernel; no hypervisor is involved in that.
//! - System calls arrive through the direct `int 0x80` gate (ring 3 to ring 1
//!   with no hypervisor on the path) or the `syscall` instruction (bounced
//!   by the hypervisor), both at the handler given to [`init`].
//! - A fault in ring 3 is bounced to the guest kernel; the SDK kills the
//!   process and [`Process::run`] returns [`Exit::Killed`] with the context.
//! - One process runs at a time; `run` switches to its tree and back.

use crate::mm::{self, AddressSpace, Pte};
use crate::trap::{self, Resolution, TrapContext, Vector};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_abi::selectors::{GUEST_USER_CS, GUEST_USER_SS};
use pvguest_abi::Errno;

/// Where a program's code is mapped.
pub const USER_CODE: u64 = 0x40_0000;
/// Top of a process's stack (one page below it is mapped).
pub const USER_STACK_TOP: u64 = 0x60_0000;
/// Largest program (bytes).
pub const MAX_PROGRAM: usize = 4 * 4096;

/// How a process ended.
#[derive(Clone, Copy, Debug)]
pub enum Exit {
    /// It called exit with this code.
    Exited(u64),
    /// It faulted; the context of the fault.
    Killed(TrapContext),
}

/// Size of the kernel stack ring 3 enters on.
const KSTACK: usize = 32 * 1024;

#[repr(C, align(16))]
struct KernelStack([u8; KSTACK]);

static mut KERNEL_STACK: KernelStack = KernelStack([0; KSTACK]);

/// Saved kernel `rsp` of the `run` call in progress (0 = none).
static RUN_RSP: AtomicU64 = AtomicU64::new(0);
/// Bytes of code mapped for the running process (its user code window).
static RUN_CODE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Set by `kill` so `run` knows the process was killed.
static KILLED: spin::Mutex<Option<TrapContext>> = spin::Mutex::new(None);

/// Sets up ring-3 support: a kernel stack for entries from ring 3, the trap
/// handlers that kill a faulting process, and `handler` for system calls.
pub fn init(handler: trap::SyscallHandler) -> Result<(), Errno> {
    let top = (&raw const KERNEL_STACK) as u64 + KSTACK as u64;
    crate::sched::stack_switch(top & !15)?;
    for v in [
        Vector::DivideError,
        Vector::Debug,
        Vector::Breakpoint,
        Vector::Overflow,
        Vector::BoundRange,
        Vector::InvalidOpcode,
        Vector::DeviceNotAvailable,
        Vector::InvalidTss,
        Vector::SegmentNotPresent,
        Vector::StackFault,
        Vector::GeneralProtection,
        Vector::PageFault,
        Vector::X87,
        Vector::AlignmentCheck,
        Vector::Simd,
    ] {
        trap::set_handler(v, kill_on_user_fault);
    }
    trap::install();
    trap::set_syscall_handler(handler)
}

/// Trap handler: a fault in ring 3 kills the process; a fault in the
/// guest kernel itself is reported and crashes the domain.
fn kill_on_user_fault(ctx: &mut TrapContext) -> Resolution {
    if ctx.ring() == 3 && RUN_RSP.load(Ordering::SeqCst) != 0 {
        *KILLED.lock() = Some(*ctx);
        leave(u64::MAX)
    }
    trap::print_context("guest kernel fault", ctx);
    Resolution::Crash
}

/// Ends the running process with `code` (call from the system-call
/// handler). Does not return: `run` returns `Exit::Exited(code)`.
pub fn exit_current(code: u64) -> ! {
    leave(code)
}

fn leave(code: u64) -> ! {
    let rsp = RUN_RSP.swap(0, Ordering::SeqCst);
    assert!(rsp != 0, "no process is running");
    mm::activate_kernel().expect("the boot page tables are always valid");
    // SAFETY: `rsp` is the stack pointer `pvguest_enter_user` saved in the
    // `run` call that is still active below us on the boot stack; resuming
    // it abandons only the trap frames above, which belong to the process.
    unsafe { pvguest_resume_kernel(rsp, code) }
}

/// Whether user memory `[va, va + len)` lies inside the process's mapped
/// user pages (code or stack).
pub fn user_range_ok(va: u64, len: u64) -> bool {
    let Some(end) = va.checked_add(len) else { return false };
    (va >= USER_CODE && end <= USER_CODE + MAX_PROGRAM as u64) || (va >= USER_STACK_TOP - 4096 && end <= USER_STACK_TOP)
}

/// Copies `len` bytes of the running process's memory at `va` into `buf`
/// (for system calls). Fails with `EFAULT` outside its user pages.
pub fn copy_from_user(va: u64, buf: &mut [u8]) -> Result<(), Errno> {
    if !user_range_ok(va, buf.len() as u64) {
        return Err(Errno::EFAULT);
    }
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: the range was checked to lie in the process's mapped user
        // pages, which are mapped in the current (process) address space;
        // the process cannot run while we copy (one CPU, we are in its
        // system call).
        *b = unsafe { ((va + i as u64) as *const u8).read_volatile() };
    }
    Ok(())
}

/// A loaded program.
pub struct Process {
    space: AddressSpace,
    /// Bytes of code pages mapped at [`USER_CODE`].
    code_bytes: u64,
}

impl Process {
    /// Loads `code` (position-independent machine code, entered at its first
    /// byte) into a fresh address space with a one-page stack.
    pub fn load(code: &[u8]) -> Result<Process, Errno> {
        if code.is_empty() || code.len() > MAX_PROGRAM {
            return Err(Errno::E2BIG);
        }
        let mut space = AddressSpace::new_sharing_kernel()?;
        for (i, chunk) in code.chunks(4096).enumerate() {
            let page = mm::alloc_page().ok_or(Errno::ENOMEM)?;
            // SAFETY: a fresh page, mapped writable at its linear address
            // and not yet mapped anywhere else.
            unsafe { core::ptr::copy_nonoverlapping(chunk.as_ptr(), page.va() as *mut u8, chunk.len()) };
            space.map(USER_CODE + 4096 * i as u64, page, Pte::USER)?;
        }
        let stack = mm::alloc_page().ok_or(Errno::ENOMEM)?;
        space.map(USER_STACK_TOP - 4096, stack, Pte::USER | Pte::WRITABLE | Pte::NO_EXECUTE)?;
        space.pin()?;
        Ok(Process { space, code_bytes: code.len().div_ceil(4096) as u64 * 4096 })
    }

    /// Runs the process in ring 3 until it exits or is killed.
    pub fn run(&mut self) -> Exit {
        if let Err(e) = self.space.activate() {
            return Exit::Killed(TrapContext { rax: e.to_ret() as u64, ..TrapContext::default() });
        }
        *KILLED.lock() = None;
        RUN_CODE_BYTES.store(self.code_bytes, Ordering::SeqCst);
        let frame = [USER_CODE, u64::from(GUEST_USER_CS), 0x202, USER_STACK_TOP - 16, u64::from(GUEST_USER_SS)];
        // SAFETY: `frame` is a valid ring-3 iretq frame into this process's
        // user code and stack, mapped in the address space just activated.
        // `pvguest_enter_user` saves our callee-saved registers and returns
        // here only through `pvguest_resume_kernel` (exit or kill), like a
        // normal call returning a value.
        let code = unsafe { pvguest_enter_user(&RUN_RSP as *const AtomicU64 as *mut u64, frame.as_ptr()) };
        match KILLED.lock().take() {
            Some(ctx) => Exit::Killed(ctx),
            None => Exit::Exited(code),
        }
    }
}

extern "C" {
    /// Saves the callee-saved registers and the FPU/SSE state on the stack
    /// and its `rsp` in `*save`, loads a clean FPU/SSE state, then `iretq`s
    /// with the five-word frame at `frame` (general registers zeroed).
    /// "Returns" when `pvguest_resume_kernel` is called with the saved
    /// `rsp`.
    fn pvguest_enter_user(save: *mut u64, frame: *const u64) -> u64;
    /// Resumes the `pvguest_enter_user` call whose saved `rsp` is `rsp`
    /// (restoring the kernel's FPU/SSE state), making it return `code`.
    fn pvguest_resume_kernel(rsp: u64, code: u64) -> !;
}

global_asm!(
    r#"
    .text
    .global pvguest_enter_user
    .balign 16
pvguest_enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    /* Keep the kernel's FPU/SSE state (its MXCSR and x87 control word are
       callee-saved) and give the process a clean one, so neither sees the
       other's registers. */
    mov rax, rsp
    sub rsp, 528
    and rsp, -16
    fxsave64 [rsp]
    mov [rsp + 512], rax
    mov [rdi], rsp
    fxrstor64 [rip + pvguest_clean_fpu]
    push qword ptr [rsi + 32]
    push qword ptr [rsi + 24]
    push qword ptr [rsi + 16]
    push qword ptr [rsi + 8]
    push qword ptr [rsi]
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor esi, esi
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    iretq

    .global pvguest_resume_kernel
    .balign 16
pvguest_resume_kernel:
    cld
    mov rsp, rdi
    fxrstor64 [rsp]
    mov rsp, [rsp + 512]
    mov rax, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

    /* FXSAVE image of a fresh FPU: FCW 0x37f, MXCSR 0x1f80, all else 0. */
    .section .rodata.pvguest_clean_fpu, "a"
    .balign 16
pvguest_clean_fpu:
    .short 0x037f
    .zero 22
    .long 0x1f80
    .zero 484
    "#
);

/// Declares a ring-3 program written in assembly and evaluates to its
/// machine code as a `&'static [u8]`. The code must be position-independent
/// (RIP-relative data) and is entered at its first instruction.
///
/// ```ignore
/// let code: &[u8] = pvguest_sdk::user_program!(hello_app, r#"
///     lea rdi, [rip + 2f]
///     mov esi, 5
///     mov eax, 1          // write(msg, 5) in this guest kernel's ABI
///     int 0x80
///     xor edi, edi
///     xor eax, eax        // exit(0)
///     int 0x80
/// 2:  .ascii "hello"
/// "#);
/// ```
/// Use numeric local labels from 2 up (`1:` and `0:` read as binary
/// literals in Intel syntax).
#[macro_export]
macro_rules! user_program {
    ($name:ident, $asm:literal) => {{
        #[allow(non_snake_case)]
        mod $name {
            ::core::arch::global_asm!(
                concat!(".pushsection .rodata.user.", stringify!($name), ", \"a\"\n"),
                concat!(".global __user_", stringify!($name), "_start\n"),
                concat!("__user_", stringify!($name), "_start:\n"),
                $asm,
                concat!("\n.global __user_", stringify!($name), "_end\n"),
                concat!("__user_", stringify!($name), "_end:\n"),
                ".popsection\n",
            );
        }
        extern "C" {
            #[link_name = concat!("__user_", stringify!($name), "_start")]
            static START: u8;
            #[link_name = concat!("__user_", stringify!($name), "_end")]
            static END: u8;
        }
        // SAFETY: the two labels delimit the program just emitted into
        // this image's read-only data.
        unsafe { $crate::process::__program(&raw const START, &raw const END) }
    }};
}

/// Turns the labels `user_program!` emits into a slice.
///
/// # Safety
/// 1. `start..end` is a byte range of this image's read-only data that is
///    never written (the macro guarantees this for its own labels).
#[doc(hidden)]
pub unsafe fn __program(start: *const u8, end: *const u8) -> &'static [u8] {
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: `user_program!` passes the two labels it placed around the
    // program in read-only data of this image, so `[start, end)` is a valid,
    // immutable byte range for the image's whole life.
    unsafe { core::slice::from_raw_parts(start, len) }
}
