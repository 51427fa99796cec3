//! `spy`: a hostile guest kernel. Each run makes one attempt, chosen by
//! `attempt=NAME` on the command line, to break out of its domain. Every
//! attempt must be contained: the hypervisor crashes this domain and reports
//! why, while the others carry on. `attempt=hypercalls` instead passes bad
//! arguments to every hypercall and prints the error codes it gets back,
//! then powers off.
//!
//! This guest needs `unsafe`: executing privileged instructions is the
//! whole point.
#![no_std]
#![no_main]

use core::arch::asm;
use pvguest_sdk::abi::layout::ENTRY_AREA_BASE;
use pvguest_sdk::abi::{console_io, hypercall as nr, sched_op, Errno, NULL_TRAP_VECTOR};
use pvguest_sdk::{hypercall, println, StartInfo};

pvguest_sdk::entry!(main);

/// Physical (and hypervisor-virtual) address of the hypervisor image.
const HV_IMAGE: u64 = 0x10_0000;

/// Every attempt this guest knows, and what it tries.
const ATTEMPTS: &[(&str, &str)] = &[
    ("read-hv", "read hypervisor memory at its own address (0x100000)"),
    ("write-hv", "write hypervisor memory at 0x100000"),
    ("write-idt", "write the IDT through its read-only entry-area alias"),
    ("write-gdt", "write the GDT through its read-only entry-area alias"),
    ("load-ring0-selector", "load the hypervisor data selector 0x10 into ds"),
    ("far-jump-ring0", "far-jump to the hypervisor code selector 0x08"),
    ("iret-ring0", "iretq to ring 0 with a forged frame"),
    ("cli", "disable interrupts"),
    ("hlt", "halt the CPU"),
    ("mov-cr3", "load CR3"),
    ("wrmsr", "write the LSTAR MSR"),
    ("rdmsr", "read the APIC base MSR"),
    ("lgdt", "load a GDT"),
    ("lidt", "load an IDT"),
    ("in", "read the serial port 0x3f8"),
    ("out", "write QEMU's debug-exit port 0xf4"),
    ("int-timer", "raise the hypervisor timer vector 0xf0 with int"),
    ("int-pagefault", "forge a page fault with int 14"),
    ("syscall", "use the syscall instruction from ring 1 (only ring 3 may)"),
    ("sgdt", "read the GDT register (faults where the CPU has UMIP)"),
    ("sidt", "read the IDT register (faults where the CPU has UMIP)"),
    ("canonical-hole", "trap from the last bytes below the canonical hole (non-canonical return address)"),
    ("canonical-hole-hypercall", "hypercall (shutdown: poweroff) from the last bytes below the canonical hole"),
    ("direction-flag", "enter the hypervisor with DF set (must be harmless)"),
    ("hypercalls", "pass bad pointers, lengths and numbers to hypercalls"),
];

fn main(si: &'static StartInfo) {
    let attempt = si.cmdline().split(' ').find_map(|w| w.strip_prefix("attempt=")).unwrap_or("");
    let Some((_, what)) = ATTEMPTS.iter().find(|(n, _)| *n == attempt) else {
        println!("spy: unknown attempt '{attempt}'; known attempts:");
        for (n, w) in ATTEMPTS {
            println!("  {n}: {w}");
        }
        pvguest_sdk::sched::crash();
    };
    println!("spy: attempting {attempt}: {what}");
    // SAFETY: none of this is safe; each attempt must fault in this domain
    // (or, for `hypercalls`, be refused with an error code).
    unsafe {
        match attempt {
            "read-hv" => {
                let v = (HV_IMAGE as *const u64).read_volatile();
                println!("spy: read {v:#x} from the hypervisor!");
            }
            "write-hv" => (HV_IMAGE as *mut u64).write_volatile(0xbad),
            "write-idt" => ((ENTRY_AREA_BASE + 0x1000) as *mut u64).write_volatile(0),
            "write-gdt" => (ENTRY_AREA_BASE as *mut u64).add(1).write_volatile(0),
            "load-ring0-selector" => asm!("mov ds, {0:x}", in(reg) 0x10u64),
            "far-jump-ring0" => asm!("push 0x08", "lea rax, [rip + 2f]", "push rax", "retfq", "2:", out("rax") _),
            "iret-ring0" => asm!(
                "mov rax, rsp",
                "push 0x10", "push rax", "pushfq", "push 0x08",
                "lea rax, [rip + 2f]", "push rax", "iretq", "2:",
                out("rax") _,
            ),
            "cli" => asm!("cli"),
            "hlt" => asm!("hlt"),
            "mov-cr3" => asm!("mov cr3, {0}", in(reg) 0u64),
            "wrmsr" => asm!("wrmsr", in("ecx") 0xc000_0082u32, in("eax") 0u32, in("edx") 0u32),
            "rdmsr" => asm!("rdmsr", in("ecx") 0x1bu32, out("eax") _, out("edx") _),
            "lgdt" => asm!("lgdt [{0}]", in(reg) &[0u64; 2]),
            "lidt" => asm!("lidt [{0}]", in(reg) &[0u64; 2]),
            "in" => asm!("in al, dx", in("dx") 0x3f8u16, out("al") _),
            "out" => asm!("out dx, eax", in("dx") 0xf4u16, in("eax") 0x10u32),
            "int-timer" => asm!("int 0xf0"),
            "int-pagefault" => asm!("int 14"),
            "syscall" => asm!("syscall", out("rcx") _, out("r11") _),
            "sgdt" | "sidt" => {
                let mut d = [0u8; 10];
                if attempt == "sgdt" {
                    asm!("sgdt [{0}]", in(reg) d.as_mut_ptr(), options(nostack));
                } else {
                    asm!("sidt [{0}]", in(reg) d.as_mut_ptr(), options(nostack));
                }
                let base = u64::from_le_bytes([d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9]]);
                println!("spy: {attempt} read base {base:#x} limit {:#x} (no UMIP)", u16::from_le_bytes([d[0], d[1]]));
            }
            "hypercalls" => {
                bad_hypercalls();
                pvguest_sdk::sched::poweroff();
            }
            "canonical-hole" => canonical_hole(NULL_TRAP_VECTOR),
            // If the hypercall ran, the domain would power off instead of
            // crashing.
            "canonical-hole-hypercall" => canonical_hole(pvguest_sdk::abi::HYPERCALL_VECTOR),
            "direction-flag" => {
                // DF set across a hypercall and across preemption: the
                // hypervisor must clear it for itself and give it back.
                let msg = b"written with DF set";
                asm!("std");
                let r =
                    hypercall::raw(nr::CONSOLE_IO, [console_io::WRITE, msg.len() as u64, msg.as_ptr() as u64, 0, 0]);
                // Long enough to be preempted with DF set (plain arithmetic:
                // `pause` is slow under QEMU's emulator).
                let mut x = 1u64;
                for _ in 0..5_000_000u64 {
                    x = core::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                let flags: u64;
                asm!("pushfq", "pop {0}", "cld", out(reg) flags);
                println!();
                println!(
                    "spy: console write with DF set returned {r}, DF still set afterwards: {}",
                    flags & 0x400 != 0
                );
                println!("spy: the hypervisor survived DF");
                pvguest_sdk::sched::poweroff();
            }
            _ => {}
        }
    }
    println!("spy: attempt {attempt} was NOT stopped");
}

/// Maps a page just below the canonical hole and executes `int vector` in
/// its last two bytes, so the CPU pushes the non-canonical return address
/// 0x0000_8000_0000_0000. `iretq` to it would fault in ring 0; the
/// hypervisor must refuse to return there (crashing only this domain), and
/// must not carry out the hypercall (`rax`/`rdi`/`rsi` ask for a poweroff).
fn canonical_hole(vector: u8) {
    use pvguest_sdk::mm::{self, AddressSpace, Pte};
    let mut space = AddressSpace::new_sharing_kernel().expect("address space");
    let page = mm::alloc_page().expect("page");
    // SAFETY: a fresh page of ours, mapped writable in the linear map.
    unsafe { ((page.va() + 0xffe) as *mut [u8; 2]).write_volatile([0xcd, vector]) };
    space.map(0x7fff_ffff_f000, page, Pte(0)).expect("map below the hole");
    space.activate().expect("activate");
    println!("spy: jumping to 0x7ffffffffffe (int {vector:#x} in the last two canonical bytes)");
    // SAFETY: not safe on purpose: the trap's return address is
    // non-canonical.
    unsafe {
        asm!(
            "mov rcx, 0x7ffffffffffe", "jmp rcx",
            in("rax") nr::SCHED_OP, in("rdi") sched_op::SHUTDOWN, in("rsi") pvguest_sdk::abi::shutdown_reason::POWEROFF,
            out("rcx") _,
        )
    };
}

/// Each bad call must come back with the documented error, never crash the
/// hypervisor, and never write anything.
fn bad_hypercalls() {
    let msg = b"spy";
    // A trap table whose only entry points into the entry area, a poll
    // argument naming an unbound port, a timer argument with bad flags.
    let bad_trap = [
        pvguest_sdk::abi::trap::TrapInfo { vector: 14, flags: 0, cs: 0, pad: 0, address: ENTRY_AREA_BASE },
        Default::default(),
    ];
    let ports = [77u32];
    let poll = sched_op::SchedPoll { ports: ports.as_ptr() as u64, nr_ports: 1, pad: 0, timeout: 0 };
    let timer = pvguest_sdk::abi::vcpu::SingleshotTimer { timeout_abs_ns: 1, flags: 0x80, pad: 0 };
    let kernel_ss = u64::from(pvguest_sdk::abi::selectors::GUEST_KERNEL_SS);
    let cases: &[(&str, u64, [u64; 5], Errno)] = &[
        (
            "set_trap_table with a handler in the entry area",
            nr::SET_TRAP_TABLE,
            [bad_trap.as_ptr() as u64, 0, 0, 0, 0],
            Errno::EINVAL,
        ),
        ("set_trap_table from hypervisor memory", nr::SET_TRAP_TABLE, [HV_IMAGE, 0, 0, 0, 0], Errno::EFAULT),
        ("set_callbacks into the entry area", nr::SET_CALLBACKS, [ENTRY_AREA_BASE + 0x4000, 0, 0, 0, 0], Errno::EINVAL),
        (
            "stack_switch to the hypervisor's selector",
            nr::STACK_SWITCH,
            [0x10, 0xffff_8000_0001_0000, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "stack_switch to a non-canonical stack",
            nr::STACK_SWITCH,
            [kernel_ss, 0x0000_9000_0000_0000, 0, 0, 0],
            Errno::EINVAL,
        ),
        ("set_segment_base non-canonical", nr::SET_SEGMENT_BASE, [0, 0x0000_8000_0000_0000, 0, 0, 0], Errno::EINVAL),
        (
            "vcpu_op for vCPU 1",
            nr::VCPU_OP,
            [pvguest_sdk::abi::vcpu::SET_SINGLESHOT_TIMER, 1, &timer as *const _ as u64, 0, 0],
            Errno::EINVAL,
        ),
        (
            "vcpu_op timer with unknown flags",
            nr::VCPU_OP,
            [pvguest_sdk::abi::vcpu::SET_SINGLESHOT_TIMER, 0, &timer as *const _ as u64, 0, 0],
            Errno::EINVAL,
        ),
        (
            "vcpu_op run-state into hypervisor memory",
            nr::VCPU_OP,
            [pvguest_sdk::abi::vcpu::GET_RUNSTATE_INFO, 0, HV_IMAGE, 0, 0],
            Errno::EFAULT,
        ),
        (
            "sched_op poll on an unbound port",
            nr::SCHED_OP,
            [sched_op::POLL, &poll as *const _ as u64, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "event_channel_op bind of an unknown VIRQ",
            nr::EVENT_CHANNEL_OP,
            [pvguest_sdk::abi::event::BIND_VIRQ, &[99u32, 0, 0] as *const _ as u64, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "event_channel_op unmask of port 9999",
            nr::EVENT_CHANNEL_OP,
            [pvguest_sdk::abi::event::UNMASK, &9999u32 as *const _ as u64, 0, 0, 0],
            Errno::EINVAL,
        ),
        (
            "memory_op for another domain",
            nr::MEMORY_OP,
            [pvguest_sdk::abi::memory::CURRENT_RESERVATION, 0, 0, 0, 0],
            Errno::EPERM,
        ),
        ("multicall of 65 entries", nr::MULTICALL, [HV_IMAGE, 65, 0, 0, 0], Errno::E2BIG),
        ("multicall from hypervisor memory", nr::MULTICALL, [HV_IMAGE, 1, 0, 0, 0], Errno::EFAULT),
        (
            "console_io write from hypervisor memory",
            nr::CONSOLE_IO,
            [console_io::WRITE, 16, HV_IMAGE, 0, 0],
            Errno::EFAULT,
        ),
        (
            "console_io write from the entry area",
            nr::CONSOLE_IO,
            [console_io::WRITE, 16, ENTRY_AREA_BASE, 0, 0],
            Errno::EFAULT,
        ),
        (
            "console_io write from a non-canonical address",
            nr::CONSOLE_IO,
            [console_io::WRITE, 1, 0x0000_8000_0000_0000, 0, 0],
            Errno::EFAULT,
        ),
        (
            "console_io write that wraps the address space",
            nr::CONSOLE_IO,
            [console_io::WRITE, 64, u64::MAX - 7, 0, 0],
            Errno::EFAULT,
        ),
        (
            "console_io write of 1 TiB",
            nr::CONSOLE_IO,
            [console_io::WRITE, 1 << 40, msg.as_ptr() as u64, 0, 0],
            Errno::EINVAL,
        ),
        ("console_io unknown command", nr::CONSOLE_IO, [99, 3, msg.as_ptr() as u64, 0, 0], Errno::ENOSYS),
        ("sched_op unknown command", nr::SCHED_OP, [77, 0, 0, 0, 0], Errno::ENOSYS),
        ("sched_op shutdown with a bad reason", nr::SCHED_OP, [sched_op::SHUTDOWN, 9, 0, 0, 0], Errno::EINVAL),
        ("unknown hypercall 9999", 9999, [0; 5], Errno::ENOSYS),
        ("hypercall u64::MAX", u64::MAX, [0; 5], Errno::ENOSYS),
    ];
    let mut ok = 0;
    for (what, n, args, want) in cases {
        // SAFETY: none of these hypercalls writes guest memory.
        let r = unsafe { hypercall::raw(*n, *args) };
        let got = Errno::decode(r);
        let pass = got == Err(*want);
        ok += pass as usize;
        println!("spy: {what}: {} (want {}) {}", fmt(got), want.name(), if pass { "refused" } else { "WRONG" });
    }
    println!("spy: {ok}/{} bad hypercalls refused with the right error", cases.len());
}

fn fmt(r: Result<u64, Errno>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(e) => e.name(),
    }
}
