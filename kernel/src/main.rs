//! The Ringfence hypervisor image (ring 0).
//!
//! Boot order: serial, PVH boot info, descriptor tables and entry area,
//! frame table, timers, boot bundle, domains, then the first guest. From
//! then on the hypervisor runs only in response to traps (see [`platform`] and `ringfence_kernel::hv`).
#![no_std]
#![no_main]

extern crate freestanding;

mod arch;
mod log;
mod platform;

use arch::{descriptors, pvh::BootInfo, timer};
use ringfence_bundle::Bundle;
use ringfence_kernel::mm::frames::{FrameInfo, FrameTable};

/// Frames the frame table covers: RAM above 1 GiB is not used.
const MAX_FRAMES: usize = 1 << 18;

#[link_section = ".tables"]
static FRAME_STORE: arch::entry::EntryCell<core::mem::MaybeUninit<[FrameInfo; MAX_FRAMES]>> =
    arch::entry::EntryCell::new(core::mem::MaybeUninit::uninit());

extern "C" {
    static __image_end: u8;
}

/// Bytes of the hypervisor heap: per-domain tables that grow with use
/// (event-channel port buckets) come from here, always through fallible
/// allocation, so a guest that exhausts it gets an error, never a panic.
const HEAP_BYTES: u64 = 16 << 20;

/// The hypervisor heap, in RAM right after the image (reserved in the frame
/// table, so never handed to a domain). A well-kept allocator rather than
/// our own: allocation is rare (domain creation, port buckets) and never on
/// a hot path.
#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

#[no_mangle]
extern "C" fn kmain(start_info_paddr: u32) -> ! {
    arch::serial::init();
    log!("Ringfence {} hypervisor (x86_64, ring 0)", env!("CARGO_PKG_VERSION"));
    let bi = match BootInfo::parse(u64::from(start_info_paddr)) {
        Ok(bi) => bi,
        Err(e) => fatal(format_args!("boot: {e}")),
    };
    let cmdline = bi.cmdline();
    if !cmdline.is_empty() {
        log!("command line: {cmdline}");
    }
    descriptors::init();
    arch::mm::harden();

    let image_end = &raw const __image_end as u64;
    let heap_start = image_end.next_multiple_of(4096);
    let frames = init_frames(&bi, heap_start + HEAP_BYTES);
    let heap_end = heap_start + HEAP_BYTES;
    if let Some(m) = bi.modules().iter().find(|m| m.paddr < heap_end && m.paddr + m.size > heap_start) {
        fatal(format_args!(
            "boot: a boot module at {:#x} overlaps the hypervisor heap ({heap_start:#x}..{heap_end:#x})",
            m.paddr
        ));
    }
    log!("heap: {} MiB at {heap_start:#x}", HEAP_BYTES >> 20);
    // SAFETY: [heap_start, +HEAP_BYTES) is RAM below 1 GiB (init_frames
    // checked it is usable), identity-mapped read-write, reserved in the
    // frame table just now and used by nothing else; this runs once.
    unsafe { HEAP.lock().init(heap_start as *mut u8, HEAP_BYTES as usize) };
    log!("memory: {} MiB free for domains (hypervisor image ends at {:#x})", frames.free_count() * 4 / 1024, image_end);
    let rates = timer::init();
    log!("clocks: TSC {} MHz, APIC timer {} kHz", rates.tsc_hz / 1_000_000, rates.apic_hz / 1000);

    let Some(module) = bi.modules().first() else {
        fatal(format_args!("no boot bundle: pass one with QEMU -initrd (cargo xtask run does)"));
    };
    // SAFETY: QEMU loaded the module into identity-mapped RAM below 1 GiB,
    // which the frame table keeps reserved, so nothing else writes it.
    let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(module.paddr as *const u8, module.size as usize) };
    let bundle = match Bundle::parse(bytes) {
        Ok(b) => b,
        Err(e) => fatal(format_args!("bad boot bundle: {e}")),
    };
    match bundle.symbols() {
        Ok(Some(s)) => log::set_symbols(s),
        Ok(None) => {}
        Err(e) => log!("warning: ignoring the bundle's symbol table: {e}"),
    }
    if let Some(test) = cmdline.split(' ').find_map(|w| w.strip_prefix("selftest=")) {
        selftest(test);
    }

    platform::boot(frames, &bundle, rates)
}

/// The frame table over the boot memory map, with everything below
/// `reserved_end` (low memory, the image and the heap after it) and the
/// boot modules reserved.
fn init_frames(bi: &BootInfo, reserved_end: u64) -> FrameTable<'static> {
    let store = FRAME_STORE.get() as *mut FrameInfo;
    for i in 0..MAX_FRAMES {
        // SAFETY: `store` points at MAX_FRAMES FrameInfo slots in .tables.
        unsafe { store.add(i).write(FrameInfo::RESERVED) };
    }
    // SAFETY: every slot was initialised just above, and this is the only
    // reference ever made to the store.
    let slice = unsafe { core::slice::from_raw_parts_mut(store, MAX_FRAMES) };
    let mut t = FrameTable::new(slice);
    let mut ignored = 0u64;
    for r in bi.ram() {
        let start = r.addr.div_ceil(4096);
        let end = r.addr.saturating_add(r.size) / 4096;
        if end > MAX_FRAMES as u64 {
            ignored += end - start.max(MAX_FRAMES as u64);
        }
        t.add_free_range(start, end);
    }
    // Low memory (firmware, PVH structures), the image, and boot modules.
    let usable = bi.ram().any(|r| r.addr <= 0x10_0000 && r.addr.saturating_add(r.size) >= reserved_end);
    if !usable {
        fatal(format_args!("boot: the hypervisor image and heap (up to {reserved_end:#x}) are not in RAM"));
    }
    t.reserve_range(0, reserved_end.div_ceil(4096));
    for m in bi.modules() {
        t.reserve_range(m.paddr / 4096, (m.paddr + m.size).div_ceil(4096));
    }
    if ignored > 0 {
        log!("memory: ignoring {} MiB above {} MiB", ignored * 4 / 1024, MAX_FRAMES * 4 / 1024);
    }
    t
}

/// Deliberate hypervisor failures, to test the fault reporter.
fn selftest(which: &str) {
    match which {
        "hv-pagefault" => selftest_hv_pagefault(),
        "hv-panic" => panic!("self-test panic requested on the command line"),
        "hv-stack-overflow" => {
            log!("selftest: recursing until the hypervisor stack overflows");
            log!("selftest: depth {}", selftest_recurse(0));
        }
        "hv-write-text" => {
            log!("selftest: writing the hypervisor's own code");
            // SAFETY: deliberately not safe: text is mapped read-only, so
            // the write must fault and be reported.
            unsafe { (selftest_hv_pagefault as *const () as *mut u8).write_volatile(0xcc) };
            log!("selftest: the write to code was not caught");
        }
        other => log!("unknown selftest '{other}' ignored"),
    }
}

#[inline(never)]
fn selftest_recurse(depth: u64) -> u64 {
    let pad = core::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return 0;
    }
    selftest_recurse(depth + 1) + pad[7]
}

#[inline(never)]
fn selftest_hv_pagefault() {
    log!("selftest: reading unmapped hypervisor address 0x7f0000000000");
    // SAFETY: deliberately not safe: this read faults, and the fault reporter
    // must catch it, print the report and end the run with a failure status.
    let v = unsafe { (0x7f00_0000_0000 as *const u64).read_volatile() };
    log!("selftest: read {v:#x}: the fault was not caught");
}

/// Reports an unrecoverable hypervisor error and ends the run.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    log!("FATAL: {args}");
    arch::qemu_exit(arch::EXIT_FAILURE)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log!("PANIC: {info}");
    log::backtrace(arch::cpu::frame_pointer());
    arch::qemu_exit(arch::EXIT_FAILURE)
}
