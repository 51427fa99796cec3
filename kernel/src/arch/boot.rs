//! The 32-bit PVH entry: from QEMU's `-kernel` hand-off to Rust in long mode.
//!
//! QEMU finds `pvh_start32` through the PVH ELF note (type 18, name "Xen")
//! and enters it in 32-bit protected mode with paging off and `ebx` holding
//! the physical address of the `hvm_start_info` block.
//!
//! The stub zeroes `.bss`, builds an identity map of the first 4 GiB with
//! 2 MiB pages (these tables stay the hypervisor's own view), enables PAE,
//! long mode, NX and write protection, and enables SSE (CR0.MP, CR4.OSFXSR,
//! CR4.OSXMMEXCPT) before any Rust code runs: the precompiled `core` uses SSE
//! even for integer formatting. It then calls `kmain(start_info_paddr)` on
//! the boot stack, which later serves as the hypervisor's private stack.

use core::arch::global_asm;

/// Size of the hypervisor's private stack (the boot stack).
pub const HV_STACK_SIZE: usize = 64 * 1024;

global_asm!(
    r#"
    .section .note.pvh, "a"
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4

    .section .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx

    /* Zero .bss (the boot page tables and stack live there). */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd

    /* PML4[0] -> PDPT; PDPT[0..4] -> PD0..PD3; PDn: 2 MiB identity pages. */
    mov eax, offset hv_pdpt
    or eax, 0x3
    mov [hv_pml4], eax
    mov ecx, 0
1:
    mov eax, ecx
    shl eax, 12
    add eax, offset hv_pd
    or eax, 0x3
    mov [hv_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 1b

    mov ecx, 0
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [hv_pd + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov [hv_pd + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 2048
    jne 2b

    /* CR4: PAE | OSFXSR | OSXMMEXCPT. */
    mov eax, cr4
    or eax, (1 << 5) | (1 << 9) | (1 << 10)
    mov cr4, eax

    mov eax, offset hv_pml4
    mov cr3, eax

    /* EFER: LME | NXE. */
    mov ecx, 0xC0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)
    wrmsr

    /* CR0: PG | WP | NE | MP | PE; clear EM and TS. */
    mov eax, cr0
    and eax, ~((1 << 2) | (1 << 3))
    or eax, (1 << 31) | (1 << 16) | (1 << 5) | (1 << 1) | 1
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    mov eax, offset boot_long_mode
    push 0x08
    push eax
    retf

    .code64
boot_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset hv_stack_top
    xor ebp, ebp
    mov edi, esi
    call kmain
3:
    hlt
    jmp 3b

    .section .boot.data, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_ptr:
    .word 23
    .long boot_gdt

    .section .bss.hv_tables, "aw", @nobits
    .balign 4096
    .global hv_pml4
hv_pml4:
    .skip 4096
    .global hv_pdpt
hv_pdpt:
    .skip 4096
    .global hv_pd
hv_pd:
    .skip 4096 * 4
    /* Unmapped once the hypervisor has its own 4 KiB mappings (see
       arch::mm::harden), so a stack overflow faults into the #DF report
       instead of overwriting the page directories. */
    .global hv_stack_guard
hv_stack_guard:
    .skip 4096
    .global hv_stack_bottom
hv_stack_bottom:
    .skip {stack}
    .global hv_stack_top
hv_stack_top:
    "#,
    stack = const HV_STACK_SIZE,
);
