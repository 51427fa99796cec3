//! The entry area: the only hypervisor memory a guest can see.
//!
//! # Layout
//! The linker script gathers these pages contiguously between
//! `__entry_start` and `__entry_end`; they are aliased page for page at
//! [`ENTRY_AREA_BASE`] (PML4 slot 511) in every view. The hypervisor view
//! maps one more page right after them, the *private page*, which no guest
//! view maps:
//!
//! | pages | contents | hypervisor view | guest view |
//! |---|---|---|---|
//! | GDT, IDT, TSS | descriptor tables | read-write | read-only |
//! | text | vector stubs, `entry_common`, `syscall_entry`, exits | read-exec | read-exec |
//! | stacks | entry stack (TSS.RSP0), IST1-3 stacks, syscall scratch | read-write | read-write |
//! | private page ([`ENTRY_PRIVATE`]) | where the entry text jumps after its CR3 switch | read-only | not mapped |
//!
//! The alias keeps relative distances, so RIP-relative references inside
//! the area work at the alias address. Everything else in the hypervisor is
//! reached only after `entry_common` has loaded the hypervisor's CR3.
//!
//! # What a guest can read, and why nothing in it is a physical address
//! Ring 1 can read every supervisor page its tables map, so every byte of
//! the first four rows above is guest-readable. None of it may tell a
//! guest where the hypervisor lives in physical memory:
//!
//! - The hypervisor's CR3 is kept in the `IA32_KERNEL_GS_BASE` MSR
//!   ([`cpu::msr::KERNEL_GS_BASE`](super::cpu::msr::KERNEL_GS_BASE)), which
//!   only ring 0 can read (`rdmsr`, and `swapgs`, which the hypervisor never
//!   executes). The MSR survives every guest action: guests cannot write
//!   MSRs, and loading `gs` or `set_segment_base` changes only GS_BASE.
//! - The identity-linked handlers (`hv_guest_entry`, `hv_ring0_entry`) are
//!   reached with `jmpq *` through the private page, after the CR3 switch:
//!   the entry text holds only a RIP-relative displacement to it, which
//!   says how far the private page is from the text (both alias
//!   addresses), not where anything is.
//! - Descriptor tables hold alias addresses only (stub addresses in the
//!   IDT, the TSS base in the GDT, RSP0/IST in the TSS) and guest values
//!   (the syscall gate, TSS.RSP1), which are the running guest's own.
//! - The entry text holds no absolute address at all: every operand is
//!   RIP-relative or a constant (selectors, vector numbers, an MSR number).
//! - Stacks hold only guest frames: the entry stack the frame of the
//!   current entry or exit (always the running domain's own, see below),
//!   the syscall scratch slot is cleared after use, and the hypervisor
//!   moves to its private stack before running any Rust code.
//!
//! What stays guest-readable, because the CPU needs it before the CR3
//! switch: the alias addresses themselves (fixed by the ABI, so they
//! reveal nothing), the selectors, and the code of the trampolines.
//! The boot-time leak check (`arch::leakcheck`) proves that no value in
//! the area lies in the hypervisor image's physical range.
//!
//! One case leaves hypervisor values behind: an NMI or #MC taken in ring 0
//! (IST2/IST3) runs `rust_ring0_trap` on that IST stack, so the interrupted
//! hypervisor registers and Rust return addresses stay there after it
//! returns. #MC (and #DF on IST1) end the run; an NMI from ring 0 is a host
//! event guests cannot cause.
//!
//! # Entry
//! Every vector has a 16-byte stub that pushes a dummy error code if the CPU
//! did not, then the vector number, and jumps to `entry_common`. That pushes
//! the 15 general-purpose registers, completing a [`TrapFrame`] at the top of
//! the entry stack. From ring 1 or 3 it loads the hypervisor's CR3 from the
//! MSR and jumps through the private page to `hv_guest_entry` (or
//! `hv_guest_entry_smap`, see below), which saves the guest FPU/SSE state to
//! the current vCPU (`fxsave64`) before any Rust code can touch an XMM
//! register, moves to the private hypervisor stack and calls
//! `rust_guest_trap`, which never returns. From ring 0 (an interrupt while
//! idle, or a hypervisor fault) it does the same switch, keeping the old
//! CR3 in r12, and calls `rust_ring0_trap` on the current stack.
//!
//! # Exit
//! `exit_to_guest(cr3, frame, fx)` restores FPU/SSE state, switches to the
//! entry stack where the caller placed the (sanitised) frame, loads the
//! guest's CR3, pops the registers and `iretq`s. The frame written there is
//! always the incoming domain's own, and it covers exactly the bytes the last
//! entry wrote, so nothing of another domain or of the hypervisor is left in
//! guest-visible memory.
//!
//! # SMEP, SMAP, UMIP
//! [`init`] enables what CPUID offers. SMEP and UMIP stay on in every ring:
//! no guest kernel executes its user pages or needs `sgdt`/`sidt`/`str`.
//! SMAP applies to rings 0-2, so left on it would fault every access a
//! ring-1 guest kernel makes to its own processes' (U=1) pages, such as
//! copying system-call arguments, and ring 1 has no `stac`. As Xen does for
//! its ring-1 (32-bit PV) guests, SMAP is therefore on only while the
//! hypervisor runs: with SMAP offered, the private page sends guest entries
//! to `hv_guest_entry_smap` (sets CR4.SMAP, then `clac`, since an interrupt
//! gate keeps the guest's RFLAGS.AC) and exits go through
//! `exit_to_guest_smap` (clears CR4.SMAP). Without SMAP neither variant
//! runs, so `-cpu qemu64` pays nothing. An NMI inside the last instructions
//! of an exit runs with SMAP off; nothing else in ring 0 does. The
//! hypervisor's own view maps no user page at all ([`super::mm`] checks it
//! at boot), and the entry text under a guest CR3 touches only the entry
//! area (supervisor pages), so SMAP never fires in correct operation: it is
//! there to turn a future mistake into a fault.

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use pvguest_abi::layout::ENTRY_AREA_BASE;

/// Registers saved on every entry (defined in the host-tested library).
pub type TrapFrame = ringfence_kernel::regs::Regs;

/// The FXSAVE area (defined in the host-tested library).
pub use ringfence_kernel::regs::FxArea;

/// A cell for data the CPU and the entry code share. Accessed only by the
/// single hypervisor CPU with interrupts disabled.
#[repr(transparent)]
pub struct EntryCell<T>(UnsafeCell<T>);

// SAFETY: one CPU, and the hypervisor runs with interrupts disabled, so no two
// accesses are ever concurrent.
unsafe impl<T> Sync for EntryCell<T> {}

impl<T> EntryCell<T> {
    pub const fn new(v: T) -> Self {
        EntryCell(UnsafeCell::new(v))
    }
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

#[repr(C, align(4096))]
pub struct PageAligned<T>(pub T);

/// The GDT (see [`super::descriptors`] for its contents).
#[link_section = ".entry.gdt"]
pub static GDT: EntryCell<PageAligned<[u64; 16]>> = EntryCell::new(PageAligned([0; 16]));

/// The IDT: 256 gates of 16 bytes, exactly one page.
#[link_section = ".entry.idt"]
pub static IDT: EntryCell<PageAligned<[u128; 256]>> = EntryCell::new(PageAligned([0; 256]));

/// The TSS.
#[link_section = ".entry.tss"]
pub static TSS: EntryCell<PageAligned<[u8; 104]>> = EntryCell::new(PageAligned([0; 104]));

/// Bytes of the entry stack (TSS.RSP0) and of the IST1 stack.
pub const ENTRY_STACK_SIZE: usize = 8192;

/// The entry stacks: the entry stack proper (TSS.RSP0) and one IST stack
/// each for #DF (IST1), NMI (IST2) and #MC (IST3), so none of those can
/// land on a stack another of them is using.
#[repr(C, align(4096))]
pub struct EntryStacks {
    pub entry: [u8; ENTRY_STACK_SIZE],
    pub ist1: [u8; ENTRY_STACK_SIZE],
    pub ist2: [u8; ENTRY_STACK_SIZE],
    pub ist3: [u8; ENTRY_STACK_SIZE],
}

/// The entry stacks.
#[link_section = ".entry.stacks"]
pub static STACKS: EntryCell<EntryStacks> = EntryCell::new(EntryStacks {
    entry: [0; ENTRY_STACK_SIZE],
    ist1: [0; ENTRY_STACK_SIZE],
    ist2: [0; ENTRY_STACK_SIZE],
    ist3: [0; ENTRY_STACK_SIZE],
});

/// The private page: mapped read-only right after the entry area's alias
/// in the hypervisor view only (see [`super::descriptors`]). `entry_common`
/// jumps through its first two words once it runs on the hypervisor's CR3.
pub static ENTRY_PRIVATE: EntryCell<PageAligned<[u64; 512]>> = EntryCell::new(PageAligned([0; 512]));

/// Word of [`ENTRY_PRIVATE`] holding the handler for entries from ring 1/3.
const PRIVATE_GUEST_ENTRY: usize = 0;
/// Word of [`ENTRY_PRIVATE`] holding the handler for entries from ring 0.
const PRIVATE_RING0_ENTRY: usize = 1;

/// Alias address of `ring0_return` (set by [`init`]).
#[no_mangle]
pub static ring0_return_alias: AtomicU64 = AtomicU64::new(0);

/// Alias address of the exit trampoline in use (set by [`init`]).
static EXIT_TRAMPOLINE: AtomicU64 = AtomicU64::new(0);

/// Publishes the hypervisor's CR3 to the entry code and chooses its
/// handlers: the SMAP-toggling entry and exit if `smap` (CR4.SMAP is then
/// set). Call before the IDT is loaded.
///
/// # Safety
/// 1. `hv_cr3` is the hypervisor's PML4, below 4 GiB (the entry code loads
///    the low half of the MSR).
/// 2. `smap` only if CR4.SMAP is already set (the SMAP variants use `clac`).
pub unsafe fn init(hv_cr3: u64, smap: bool) {
    assert!(hv_cr3 < 1 << 32 && hv_cr3.is_multiple_of(4096), "hypervisor CR3 must be a page below 4 GiB");
    ring0_return_alias.store(alias(&raw const ring0_return), Relaxed);
    let (entry, exit) = if smap {
        (&raw const hv_guest_entry_smap, &raw const exit_to_guest_smap)
    } else {
        (&raw const hv_guest_entry, &raw const exit_to_guest)
    };
    EXIT_TRAMPOLINE.store(alias(exit), Relaxed);
    // SAFETY: boot-time, one CPU, interrupts off: no entry can read the
    // page yet. KERNEL_GS_BASE exists on every x86_64 CPU and has no use
    // here but this one (see `cpu::msr::KERNEL_GS_BASE`).
    unsafe {
        let p = &mut (*ENTRY_PRIVATE.get()).0;
        p[PRIVATE_GUEST_ENTRY] = entry as u64;
        p[PRIVATE_RING0_ENTRY] = &raw const hv_ring0_entry as u64;
        super::cpu::wrmsr(super::cpu::msr::KERNEL_GS_BASE, hv_cr3);
    }
}

/// Physical address of the current vCPU's FXSAVE area; `hv_guest_entry`
/// saves the guest's FPU/SSE state there.
#[no_mangle]
pub static current_fx: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __entry_start: u8;
    static __entry_text: u8;
    static __entry_stacks: u8;
    static __entry_end: u8;
    static entry_stubs: u8;
    static exit_to_guest: u8;
    static exit_to_guest_smap: u8;
    static syscall_entry: u8;
    static ring0_return: u8;
    static hv_guest_entry: u8;
    static hv_guest_entry_smap: u8;
    static hv_ring0_entry: u8;
}

/// Physical bounds of the entry region's parts.
#[derive(Clone, Copy, Debug)]
pub struct EntryRegion {
    pub start: u64,
    pub text: u64,
    pub stacks: u64,
    pub end: u64,
}

/// The entry region as linked.
pub fn region() -> EntryRegion {
    EntryRegion {
        start: &raw const __entry_start as u64,
        text: &raw const __entry_text as u64,
        stacks: &raw const __entry_stacks as u64,
        end: &raw const __entry_end as u64,
    }
}

/// The alias (guest-visible) address of a physical address in the region.
pub fn alias<T>(p: *const T) -> u64 {
    p as u64 - region().start + ENTRY_AREA_BASE
}

/// Alias address of vector `v`'s stub.
pub fn stub_alias(v: u8) -> u64 {
    alias(&raw const entry_stubs) + 16 * u64::from(v)
}

/// Alias address of the `syscall` entry (for LSTAR).
pub fn syscall_entry_alias() -> u64 {
    alias(&raw const syscall_entry)
}

/// Alias address of the top of the entry stack (TSS.RSP0).
pub fn entry_stack_top() -> u64 {
    let s = STACKS.get();
    // SAFETY: only addresses are computed; nothing is dereferenced.
    alias(unsafe { &raw const (*s).entry }) + ENTRY_STACK_SIZE as u64
}

/// Alias addresses of the tops of the IST1..IST3 stacks.
pub fn ist_tops() -> [u64; 3] {
    let s = STACKS.get();
    // SAFETY: only addresses are computed; nothing is dereferenced.
    unsafe {
        [
            alias(&raw const (*s).ist1) + ENTRY_STACK_SIZE as u64,
            alias(&raw const (*s).ist2) + ENTRY_STACK_SIZE as u64,
            alias(&raw const (*s).ist3) + ENTRY_STACK_SIZE as u64,
        ]
    }
}

/// Where an exit places the frame: the top 176 bytes of the entry stack.
pub fn exit_frame_slot() -> u64 {
    entry_stack_top() - core::mem::size_of::<TrapFrame>() as u64
}

/// Qwords in a [`TrapFrame`] (176 bytes: asserted in `regs`).
const FRAME_QWORDS: usize = core::mem::size_of::<TrapFrame>() / 8;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == FRAME_QWORDS * 8);

/// Copies one trap frame with a single `rep movsq` in place (`memcpy`
/// would be a call around the same instruction, and this copy is on
/// every full trip twice: in from the entry stack, out to the exit slot).
///
/// # Safety
/// 1. `src` is valid for reads and `dst` for writes of one [`TrapFrame`].
/// 2. The two do not overlap.
#[inline(always)]
pub unsafe fn copy_frame(dst: *mut TrapFrame, src: *const TrapFrame) {
    // SAFETY: the caller's points 1-2; the direction flag is clear in the
    // hypervisor (`entry_common` clears it before any Rust code runs, and
    // nothing here sets it), so the copy runs forwards over exactly
    // FRAME_QWORDS words.
    unsafe {
        core::arch::asm!("rep movsq",
             inout("rcx") FRAME_QWORDS => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
}

/// Leaves the hypervisor for a guest.
///
/// # Safety
/// 1. `cr3` is a validated guest root whose slot 511 maps the entry area.
/// 2. `frame` has been sanitised: `cs`/`ss` are guest selectors (ring 1 or 3)
///    and `rip`/`rsp` are canonical.
/// 3. No lock is held and nothing on the hypervisor stack is still needed.
#[inline(always)] // on every full trip through the hypervisor
pub unsafe fn enter_guest(cr3: u64, frame: &TrapFrame, fx: *const FxArea) -> ! {
    let slot = exit_frame_slot() as *mut TrapFrame;
    // SAFETY: the slot lies in the entry stack, mapped read-write in the
    // hypervisor's view at its alias; nothing else uses it while the
    // hypervisor runs.
    unsafe { copy_frame(slot, frame) };
    // SAFETY: `EXIT_TRAMPOLINE` is the alias of `exit_to_guest` or
    // `exit_to_guest_smap` (set by `init`, which boot runs before any
    // guest), mapped executable in both views. Its contract is the
    // caller's (points 1-3).
    unsafe {
        let f: extern "C" fn(u64, u64, u64) -> ! = core::mem::transmute(EXIT_TRAMPOLINE.load(Relaxed) as usize);
        f(cr3, slot as u64, fx as u64)
    }
}

/// Leaves the hypervisor with the frame that is already in the exit slot
/// (the fast paths change it in place).
///
/// # Safety
/// As for [`enter_guest`], for the frame at [`exit_frame_slot`].
#[inline] // on every trip through the hypervisor
pub unsafe fn enter_guest_in_place(cr3: u64, fx: *const FxArea) -> ! {
    // SAFETY: the caller's contract; the frame is already in the slot.
    unsafe {
        let f: extern "C" fn(u64, u64, u64) -> ! = core::mem::transmute(EXIT_TRAMPOLINE.load(Relaxed) as usize);
        f(cr3, exit_frame_slot(), fx as u64)
    }
}

global_asm!(
    r#"
    /* Pops the fifteen general registers pushed by entry_common, drops the
       vector and error code, and returns from the interrupt. */
    .macro POP_GPRS_IRETQ
    popq %rax
    popq %rbx
    popq %rcx
    popq %rdx
    popq %rsi
    popq %rdi
    popq %rbp
    popq %r8
    popq %r9
    popq %r10
    popq %r11
    popq %r12
    popq %r13
    popq %r14
    popq %r15
    addq $16, %rsp
    iretq
    .endm

    .section .entry.text, "ax"
    /* Padding is int3 (0xcc), not multi-byte NOPs: their bytes (such as
       0f 1f 40 00) read as addresses inside the image to the leak check. */
    .balign 16, 0xcc
    .global entry_stubs
entry_stubs:
    .set vec, 0
    .rept 256
    .balign 16, 0xcc
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp entry_common
    .set vec, vec + 1
    .endr

    .balign 16, 0xcc
entry_common:
    /* A guest may enter with DF set; the hypervisor's string copies
       (rep movsb in memcpy/memset) assume DF clear. */
    cld
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rbx
    pushq %rax
    testb $3, 144(%rsp)
    jz 1f
    /* The hypervisor's CR3 comes from an MSR only ring 0 can read (rdmsr
       zero-extends eax; the PML4 lies below 4 GiB), and the handler's
       address from the private page, mapped only once that CR3 is loaded:
       this text holds neither. */
    movl ${kgsbase}, %ecx
    rdmsr
    movq %rax, %cr3
    jmpq *__entry_private+{guest_slot}(%rip)
1:
    /* From ring 0. The CR3 may still be a guest's (a fault in this entry
       text before or after its CR3 switch): switch to the hypervisor's
       view here, before leaving the entry area, so nothing outside it is
       ever fetched through a guest's page tables. r12 keeps the old CR3
       (hv_ring0_entry restores it; r12 was saved above and is popped
       last). */
    movq %cr3, %r12
    movl ${kgsbase}, %ecx
    rdmsr
    movq %rax, %cr3
    jmpq *__entry_private+{ring0_slot}(%rip)

    /* `syscall` from ring 3 (or 1): the CPU leaves rsp on the guest stack
       and interrupts off (FMASK). Switch to the entry stack through a
       scratch slot, build the frame a ring-3 interrupt would have, and
       join entry_common with vector 0x101 (SYSCALL_VECTOR). */
    .balign 16, 0xcc
    .global syscall_entry
syscall_entry:
    movq %rsp, syscall_scratch(%rip)
    leaq {stacks}+{stack_size}(%rip), %rsp
    pushq ${user_ss}
    pushq syscall_scratch(%rip)
    /* The scratch slot is guest-visible: do not leave this domain's
       stack pointer there for the next one. */
    movq $0, syscall_scratch(%rip)
    pushq %r11
    pushq ${user_cs}
    pushq %rcx
    pushq $0
    pushq $0x101
    jmp entry_common

    .balign 16, 0xcc
    .global ring0_return
ring0_return:
    movq %r12, %cr3
    POP_GPRS_IRETQ

    /* With SMAP: guests run with CR4.SMAP clear (see the module docs). */
    .balign 16, 0xcc
    .global exit_to_guest_smap
exit_to_guest_smap:
    movq %cr4, %rax
    btrq ${smap_bit}, %rax
    movq %rax, %cr4
    .global exit_to_guest
exit_to_guest:
    fxrstor64 (%rdx)
    movq %rsi, %rsp
    movq %rdi, %cr3
    POP_GPRS_IRETQ

    .text
    /* With SMAP: the hypervisor runs with CR4.SMAP set and RFLAGS.AC
       clear (an interrupt gate keeps the guest's AC). Falls through. */
    .balign 16
    .global hv_guest_entry_smap
hv_guest_entry_smap:
    movq %cr4, %rax
    btsq ${smap_bit}, %rax
    movq %rax, %cr4
    clac
    .global hv_guest_entry
hv_guest_entry:
    movq current_fx(%rip), %rax
    fxsave64 (%rax)
    movq %rsp, %rdi
    leaq hv_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    call rust_guest_trap
    ud2

    .balign 16
    .global hv_ring0_entry
hv_ring0_entry:
    movq %rsp, %rdi
    movq %rsp, %rbx
    andq $-16, %rsp
    call rust_ring0_trap
    movq %rbx, %rsp
    /* Restoring the interrupted CR3 (r12) may bring back a guest's view, in
       which this identity-linked text is guest memory: finish in the entry
       text, reached at its alias. */
    movq ring0_return_alias(%rip), %rax
    jmpq *%rax

    .section .entry.scratch, "aw"
    .balign 8
syscall_scratch:
    .quad 0
    "#,
    stacks = sym STACKS,
    stack_size = const ENTRY_STACK_SIZE,
    user_ss = const pvguest_abi::selectors::GUEST_USER_SS,
    user_cs = const pvguest_abi::selectors::GUEST_USER_CS,
    kgsbase = const super::cpu::msr::KERNEL_GS_BASE,
    guest_slot = const PRIVATE_GUEST_ENTRY * 8,
    ring0_slot = const PRIVATE_RING0_ENTRY * 8,
    smap_bit = const super::cpu::cr4::SMAP_BIT,
    options(att_syntax)
);
