//! `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp`, `strlen` and a no-op
//! `rust_eh_personality` for freestanding images.
//!
//! The precompiled `core` for the host target calls these C symbols; a
//! freestanding image (the hypervisor, every guest kernel) links this crate
//! instead of a libc. Only image crates may depend on it: in a host binary it
//! would clash with libc and std.
//!
//! The copies use `rep movsq`/`rep stosq` for whole 8-byte words and
//! `rep movsb`/`rep stosb` for the tail, in inline assembly rather than Rust
//! loops, because the optimiser turns a byte loop into a call to `memcpy`
//! itself, which here would recurse forever. Words rather than bytes
//! because every iteration of a `rep` string instruction is one step for
//! the CPU's microcode and, under QEMU TCG `-icount`, one instruction: a
//! 176-byte trap frame copied by bytes cost 176 of them on every trip
//! through the hypervisor, by words 22 (+650 instructions per trip on the
//! slow trap paths, measured with `cargo xtask bench`).
#![no_std]

use core::arch::asm;

/// # Safety
/// 1. `dst` and `src` are valid for `n` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes; the
    // direction flag is clear per the SysV ABI, so the copy runs forwards:
    // `n / 8` words, then the `n % 8` bytes after them (rdi and rsi carry on
    // from where the word copy ended). A forward copy never reads a byte it
    // wrote when `dst` lies below `src` (see `memmove`), words or bytes.
    unsafe {
        asm!("rep movsq", "mov ecx, {tail:e}", "rep movsb",
             tail = in(reg) n & 7,
             inout("rcx") n / 8 => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// 1. `dst` and `src` are valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: a forward copy never reads a byte it wrote.
        // SAFETY: as for `memcpy`; the caller guarantees validity.
        unsafe { memcpy(dst, src, n) }
    } else {
        // `dst` lies inside `[src, src + n)`: copy backwards, last byte first.
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes;
        // with DF set `rep movsb` walks down from the last byte, and DF is
        // cleared again before returning, as the ABI requires.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _,
                 inout("rdi") dst.wrapping_add(n).wrapping_sub(1) => _,
                 inout("rsi") src.wrapping_add(n).wrapping_sub(1) => _,
                 options(nostack));
        }
        dst
    }
}

/// # Safety
/// 1. `dst` is valid for `n` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // The byte repeated in all eight bytes of a word.
    let word = u64::from(c as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees `dst` is valid for `n` bytes: `n / 8`
    // words, then the `n % 8` bytes after them (rdi carries on; the low
    // byte of rax is the byte itself).
    unsafe {
        asm!("rep stosq", "mov ecx, {tail:e}", "rep stosb",
             tail = in(reg) n & 7,
             inout("rcx") n / 8 => _, inout("rdi") dst => _, in("rax") word,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// 1. `a` and `b` are valid for `n` bytes of reads.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees both ranges are readable.
        let (x, y) = unsafe { (a.add(i).read(), b.add(i).read()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// 1. `a` and `b` are valid for `n` bytes of reads.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// 1. `s` points to a NUL-terminated byte string.
#[no_mangle]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller guarantees a terminating NUL, so every byte up to it
    // is readable.
    while unsafe { s.add(n).read() } != 0 {
        n += 1;
    }
    n
}

/// The precompiled `core` was built with unwinding; images abort on panic,
/// so the personality routine is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// The precompiled `alloc` was built with unwinding, so its cleanup paths
/// name `_Unwind_Resume`; images abort on panic, so no unwind ever starts
/// and this is never called. If it were, spinning here keeps the domain
/// from running on in a half-unwound state (the hypervisor's scheduler
/// still preempts it).
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
