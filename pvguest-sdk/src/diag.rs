//! Self-checks of the platform, used by the sample guests and the tests.

use core::arch::asm;

/// Loads all sixteen XMM registers with values derived from `seed`, spins
/// for `spins` iterations (long enough to be preempted by other domains that
/// use the same registers), yielding to the hypervisor with a `sched_op`
/// hypercall every 2^20 iterations, and checks that every register still
/// holds its value. Returns the number of registers that changed (0 means
/// the hypervisor preserved this domain's SSE state across interrupts,
/// hypercalls and domain switches).
pub fn sse_clobber_check(seed: u64, spins: u64) -> u32 {
    let mut out = [[0u64; 2]; 16];
    // SAFETY: the asm only writes the XMM registers and rax/rdi, which it
    // declares clobbered, and the 256-byte `out` buffer through its pointer;
    // the yield hypercall preserves every other register.
    unsafe {
        asm!(
            "movq xmm0, {s}", "punpcklqdq xmm0, xmm0", "add {s}, 1",
            "movq xmm1, {s}", "punpcklqdq xmm1, xmm1", "add {s}, 1",
            "movq xmm2, {s}", "punpcklqdq xmm2, xmm2", "add {s}, 1",
            "movq xmm3, {s}", "punpcklqdq xmm3, xmm3", "add {s}, 1",
            "movq xmm4, {s}", "punpcklqdq xmm4, xmm4", "add {s}, 1",
            "movq xmm5, {s}", "punpcklqdq xmm5, xmm5", "add {s}, 1",
            "movq xmm6, {s}", "punpcklqdq xmm6, xmm6", "add {s}, 1",
            "movq xmm7, {s}", "punpcklqdq xmm7, xmm7", "add {s}, 1",
            "movq xmm8, {s}", "punpcklqdq xmm8, xmm8", "add {s}, 1",
            "movq xmm9, {s}", "punpcklqdq xmm9, xmm9", "add {s}, 1",
            "movq xmm10, {s}", "punpcklqdq xmm10, xmm10", "add {s}, 1",
            "movq xmm11, {s}", "punpcklqdq xmm11, xmm11", "add {s}, 1",
            "movq xmm12, {s}", "punpcklqdq xmm12, xmm12", "add {s}, 1",
            "movq xmm13, {s}", "punpcklqdq xmm13, xmm13", "add {s}, 1",
            "movq xmm14, {s}", "punpcklqdq xmm14, xmm14", "add {s}, 1",
            "movq xmm15, {s}", "punpcklqdq xmm15, xmm15",
            "2:",
            "test {n:e}, 0xfffff",
            "jnz 3f",
            "mov eax, {sched_op}",
            "xor edi, edi", // SCHEDOP_yield
            "int 0x82",
            "3:",
            "sub {n}, 1",
            "jnz 2b",
            "movdqu [{o}], xmm0",
            "movdqu [{o} + 16], xmm1",
            "movdqu [{o} + 32], xmm2",
            "movdqu [{o} + 48], xmm3",
            "movdqu [{o} + 64], xmm4",
            "movdqu [{o} + 80], xmm5",
            "movdqu [{o} + 96], xmm6",
            "movdqu [{o} + 112], xmm7",
            "movdqu [{o} + 128], xmm8",
            "movdqu [{o} + 144], xmm9",
            "movdqu [{o} + 160], xmm10",
            "movdqu [{o} + 176], xmm11",
            "movdqu [{o} + 192], xmm12",
            "movdqu [{o} + 208], xmm13",
            "movdqu [{o} + 224], xmm14",
            "movdqu [{o} + 240], xmm15",
            s = inout(reg) seed => _,
            n = inout(reg) spins.max(1) => _,
            o = in(reg) out.as_mut_ptr(),
            sched_op = const pvguest_abi::hypercall::SCHED_OP,
            out("rax") _, out("rdi") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        );
    }
    let mut bad = 0;
    for (i, r) in out.iter().enumerate() {
        let want = seed.wrapping_add(i as u64);
        if r[0] != want || r[1] != want {
            bad += 1;
        }
    }
    bad
}

/// Reads the 8 bytes at guest virtual address `va` with a plain load, for
/// tests that must make this domain take a page fault. If `va` is mapped the
/// value is returned; if not, the CPU faults in this domain.
pub fn touch(va: u64) -> u64 {
    let v: u64;
    // SAFETY: a read has no effect on Rust-visible memory; if `va` is not
    // mapped the CPU raises #PF in this domain, which is the point.
    unsafe { asm!("mov {v}, [{a}]", a = in(reg) va, v = out(reg) v, options(nostack, readonly)) };
    v
}

/// Executes `ud2` (invalid opcode).
pub fn undefined_instruction() -> ! {
    // SAFETY: ud2 only raises #UD.
    unsafe { asm!("ud2", options(noreturn, nostack)) }
}

/// Divides with the `div` instruction, so a zero divisor raises #DE in this
/// domain instead of a Rust panic.
pub fn divide(a: u64, b: u64) -> u64 {
    let q: u64;
    // SAFETY: `div` only reads rdx:rax and the divisor; a zero divisor
    // raises #DE, which is the point.
    unsafe {
        asm!("div {b}", b = in(reg) b, inout("rax") a => q, inout("rdx") 0u64 => _,
             options(nostack, nomem));
    }
    q
}
