//! Thin wrappers over privileged instructions. Each is a single instruction
//! whose only effect is the one named; callers are ring-0 code only.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O has no memory effects; the hypervisor owns the legacy
    // devices it touches (UART, PIT, PIC, debug-exit, PCI configuration).
    unsafe { asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes a double word to an I/O port.
pub fn outl(port: u16, val: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags)) }
}

/// Writes a word to an I/O port.
pub fn outw(port: u16, val: u16) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") val, options(nomem, nostack, preserves_flags)) }
}

/// Reads a word from an I/O port.
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as for `outb`.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads a double word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `outb`.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3.
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR0.
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads a model-specific register.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the hypervisor reads only architectural MSRs it knows exist.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// 1. `msr` exists and `val` is valid for it.
/// 2. The write does not break an invariant the hypervisor relies on
///    (paging, the syscall entry, segment bases it uses).
pub unsafe fn wrmsr(msr: u32, val: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") val as u32, in("edx") (val >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// MSR numbers the hypervisor uses.
pub mod msr {
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const FMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    /// IA32_KERNEL_GS_BASE: holds the hypervisor's CR3 for the entry code
    /// (see [`crate::arch::entry`]). The hypervisor never executes `swapgs`
    /// and guests cannot (it is CPL 0 only), so the MSR has no other use;
    /// it must never carry a guest value (a guest "kernel GS base", Xen's
    /// `SEGBASE_GS_USER`, would have to be kept in vCPU state instead).
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// CR4 bits.
pub mod cr4 {
    /// User-mode instruction prevention: `sgdt`, `sidt`, `sldt`, `smsw` and
    /// `str` fault (#GP) outside ring 0.
    pub const UMIP: u64 = 1 << 11;
    /// Supervisor-mode execution prevention: rings 0-2 cannot fetch
    /// instructions from user (U=1) pages.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention: rings 0-2 cannot read or write
    /// user (U=1) pages unless RFLAGS.AC is set.
    pub const SMAP: u64 = 1 << 21;
    /// Bit number of [`SMAP`] (for `bts`/`btr` in the entry code).
    pub const SMAP_BIT: u32 = 21;
}

/// The protection features CPUID reports (leaf 7, sub-leaf 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protections {
    /// EBX bit 7.
    pub smep: bool,
    /// EBX bit 20.
    pub smap: bool,
    /// ECX bit 2.
    pub umip: bool,
}

impl Protections {
    /// Asks the CPU which of SMEP, SMAP and UMIP it offers.
    pub fn probe() -> Protections {
        use core::arch::x86_64::{__cpuid, __cpuid_count};
        if __cpuid(0).eax < 7 {
            return Protections::default();
        }
        let l7 = __cpuid_count(7, 0);
        Protections { smep: l7.ebx & (1 << 7) != 0, smap: l7.ebx & (1 << 20) != 0, umip: l7.ecx & (1 << 2) != 0 }
    }
}

/// Writes CR4.
///
/// # Safety
/// 1. Every bit set is supported by this CPU (reserved bits #GP).
/// 2. The change keeps paging and SSE as the hypervisor set them up.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc has no side effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Halts until the next interrupt, with interrupts enabled only for the halt.
pub fn idle_halt() {
    // SAFETY: `sti; hlt` enables interrupts for exactly one halt (sti's
    // shadow covers hlt); an interrupt handler runs on this stack and
    // returns here, where interrupts are disabled again. The handler may
    // clobber caller-saved registers, so they are declared clobbered.
    unsafe { asm!("sti", "hlt", "cli", clobber_abi("C"), options(nostack)) }
}

/// Stops the CPU for good (interrupts off).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// The current frame pointer.
pub fn frame_pointer() -> u64 {
    let v: u64;
    // SAFETY: reads a register.
    unsafe { asm!("mov {}, rbp", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

extern "C" {
    static hv_stack_bottom: u8;
    static hv_stack_top: u8;
}

/// Bounds of the hypervisor's private stack.
pub fn hv_stack_bounds() -> (u64, u64) {
    (&raw const hv_stack_bottom as u64, &raw const hv_stack_top as u64)
}

/// Reads the data selectors (ds, es, fs, gs).
pub fn data_selectors() -> [u16; 4] {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs",
             out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, options(nomem, nostack, preserves_flags));
    }
    [ds, es, fs, gs]
}

/// Loads data selectors (ds, es, fs, gs) that a guest left, so the next
/// domain does not inherit another's. Loading fs/gs resets their bases:
/// write the base MSRs afterwards.
///
/// # Safety
/// 1. Each selector is null or a data segment of the hypervisor's GDT (the
///    values come from the CPU when the guest ran, so they are).
pub unsafe fn load_data_selectors(s: [u16; 4]) {
    // SAFETY: guaranteed by the caller; loading a flat data segment in
    // ring 0 has no effect on hypervisor addressing (64-bit mode ignores
    // ds/es bases; the hypervisor never uses fs/gs).
    unsafe {
        asm!("mov ds, {0:x}", "mov es, {1:x}", "mov fs, {2:x}", "mov gs, {3:x}",
             in(reg) s[0], in(reg) s[1], in(reg) s[2], in(reg) s[3], options(nostack, preserves_flags));
    }
}
