//! The running hypervisor: domain table, trap handling and scheduling.
//!
//! # Ownership
//! All mutable state lives in one [`Hv`] behind a spin lock. The hypervisor
//! runs on one CPU with interrupts disabled, so the lock is never contended;
//! it exists so that every access is explicit. A trap takes the lock, decides
//! which domain runs next, copies that domain's sanitised frame out, and
//! drops the lock before `enter_guest` (which never returns).
//!
//! # Per-domain state
//! The hypervisor keeps each domain's registers ([`TrapFrame`]) and FPU/SSE
//! state ([`FxArea`]) in its own memory; guests never see another domain's
//! state. `entry_common` saves the running guest's FPU/SSE state into the
//! area `current_fx` points at before any Rust code runs, and
//! `exit_to_guest` restores the next domain's, so the state survives every
//! interrupt, hypercall and domain switch.
//!
//! # Where validation happens
//! - Hypercall arguments: [`ringfence_kernel::hypercall::dispatch`].
//! - Guest pointers: [`ringfence_kernel::guest_mem::GuestView`].
//! - Return frames: [`sanitize`], on every exit.

use crate::arch::entry::{self, FxArea, TrapFrame};
use crate::arch::timer::{self, Rates, SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::arch::{cpu, qemu_exit, EXIT_FAILURE, EXIT_SUCCESS};
use crate::log;
use crate::log::Sym;
use core::fmt::Write as _;
use pvguest_abi::{selectors, HYPERCALL_VECTOR};
use ringfence_bundle::Bundle;
use ringfence_kernel::builder::{self, DomainConfig};
use ringfence_kernel::console::LineBuffer;
use ringfence_kernel::domain::{next_runnable, Exit, Expect, Fault, RunState};
use ringfence_kernel::frames::{DomId, FrameTable, Mfn};
use ringfence_kernel::guest_mem::{GuestVa, GuestView, PhysMem};
use ringfence_kernel::hypercall::{self, Action};
use ringfence_kernel::regs::{RFLAGS_FIXED, RFLAGS_IF};
use spin::Mutex;

/// Most domains the hypervisor tracks.
pub const MAX_DOMAINS: usize = 64;

/// Preemption tick rate.
const TICK_HZ: u64 = 1000;
/// Ticks in a time slice.
const SLICE_TICKS: u32 = 5;


/// One domain.
pub struct Domain {
    pub id: DomId,
    pub name: heapless::String<32>,
    pub expect: Expect,
    pub state: RunState,
    /// Machine frame of the PML4 the domain runs on.
    pub root: Mfn,
    pub regs: TrapFrame,
    pub fx: FxArea,
    pub console: LineBuffer,
    /// Ticks the domain has run.
    pub ticks_run: u64,
}

/// The hypervisor's state.
pub struct Hv {
    pub domains: heapless::Vec<Domain, MAX_DOMAINS>,
    pub frames: Option<FrameTable<'static>>,
    /// Index in `domains` of the running domain.
    pub current: Option<usize>,
    pub slice_left: u32,
    pub ticks: u64,
    pub boot_tsc: u64,
    pub rates: Option<Rates>,
}

static HV: Mutex<Hv> = Mutex::new(Hv {
    domains: heapless::Vec::new(),
    frames: None,
    current: None,
    slice_left: SLICE_TICKS,
    ticks: 0,
    boot_tsc: 0,
    rates: None,
});

/// Machine memory through the hypervisor's identity map.
pub struct HvPhys;

impl PhysMem for HvPhys {
    fn read_u64(&self, pa: u64) -> u64 {
        // SAFETY: callers pass addresses inside frames the frame table knows
        // (RAM below 1 GiB), all identity-mapped in the hypervisor view;
        // `pa` is 8-aligned by construction of page-table entry addresses.
        unsafe { (pa as *const u64).read_volatile() }
    }
    fn write_u64(&mut self, pa: u64, val: u64) {
        // SAFETY: as for `read_u64`.
        unsafe { (pa as *mut u64).write_volatile(val) }
    }
    fn read(&self, pa: u64, buf: &mut [u8]) {
        // SAFETY: the range lies inside one known RAM frame (see `read_u64`);
        // a guest may change the bytes concurrently only on another CPU,
        // and we copy them once into our own buffer.
        unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, buf.as_mut_ptr(), buf.len()) }
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), pa as *mut u8, data.len()) }
    }
    fn zero_frame(&mut self, mfn: Mfn) {
        // SAFETY: `mfn` is a RAM frame just allocated from the frame table.
        unsafe { core::ptr::write_bytes((mfn * 4096) as *mut u8, 0, 4096) }
    }
}

/// What a hypercall may touch: the calling domain's memory and console.
struct DomEnv<'a> {
    frames: &'a FrameTable<'static>,
    dom: &'a mut Domain,
}

impl hypercall::Env for DomEnv<'_> {
    fn copy_from_guest(&mut self, va: u64, buf: &mut [u8]) -> Result<(), pvguest_abi::Errno> {
        let mut phys = HvPhys;
        let view = GuestView { mem: &mut phys, frames: self.frames, root: self.dom.root, dom: self.dom.id };
        view.copy_from(GuestVa(va), buf)
    }

    fn console_write(&mut self, bytes: &[u8]) {
        let name = &self.dom.name;
        self.dom.console.push(bytes, |l| {
            let _ = writeln!(crate::arch::serial::Serial, "[{name}] {l}");
        });
    }
}

/// Builds every domain of the bundle and starts the first one.
pub fn boot(frames: FrameTable<'static>, bundle: &Bundle<'_>, rates: Rates) -> ! {
    {
        let mut guard = HV.lock();
        let hv = &mut *guard;
        hv.frames = Some(frames);
        hv.rates = Some(rates);
        hv.boot_tsc = cpu::rdtsc();
        log!("boot bundle: {} domain(s)", bundle.domain_count());
        for i in 0..bundle.domain_count() {
            hv.create_domain(bundle, i);
        }
    }
    timer::start_periodic(&rates, TICK_HZ);
    let next = HV.lock().schedule(true);
    run(next)
}

/// Enters the chosen guest.
fn run(next: Next) -> ! {
    entry::current_fx.store(next.fx as u64, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: `schedule` returns only live domains' roots (built and
    // validated by the builder) and sanitised frames; the lock is dropped.
    unsafe { entry::enter_guest(next.cr3, &next.frame, next.fx) }
}

/// The domain to enter next.
struct Next {
    cr3: u64,
    frame: TrapFrame,
    fx: *const FxArea,
}

impl Hv {
    fn create_domain(&mut self, bundle: &Bundle<'_>, index: usize) {
        let id = (self.domains.len() + 1) as DomId;
        let spec = match bundle.domain(index) {
            Ok(s) => s,
            Err(e) => {
                log!("dom{id}: bad manifest entry, not started: {e}");
                let name = e.name;
                self.push_rejected(id, name.as_ref().map_or("?", |n| n.as_str()), Expect::Poweroff);
                return;
            }
        };
        let expect = match spec.expect {
            ringfence_bundle::Expect::Poweroff => Expect::Poweroff,
            ringfence_bundle::Expect::Crash => Expect::Crash,
            ringfence_bundle::Expect::Rejected => Expect::Rejected,
        };
        let frames = self.frames.as_mut().expect("frame table set before domains");
        let cfg = DomainConfig {
            domid: id,
            name: spec.name,
            cmdline: spec.cmdline,
            nr_pages: u64::from(spec.mem_kib) / 4,
            privileged: spec.privileged,
        };
        let built = builder::build(&mut HvPhys, frames, spec.image, &cfg, crate::arch::descriptors::guest_entry_pml4e());
        let b = match built {
            Ok(b) => b,
            Err(e) => {
                frames.release_domain(id);
                log!("dom{id} ({}): not started: {e}", spec.name);
                self.push_rejected(id, spec.name, expect);
                return;
            }
        };
        log!(
            "dom{id} ({}): {} KiB, entry {:#x}, {}{}",
            spec.name,
            spec.mem_kib,
            b.entry,
            if spec.privileged { "privileged, " } else { "" },
            if spec.cmdline.is_empty() { "no command line" } else { spec.cmdline }
        );
        let regs = TrapFrame {
            rip: b.entry,
            cs: u64::from(selectors::GUEST_KERNEL_CS),
            rflags: RFLAGS_IF | RFLAGS_FIXED,
            rsp: b.stack_top,
            ss: u64::from(selectors::GUEST_KERNEL_SS),
            rsi: b.start_info_va,
            ..TrapFrame::default()
        };
        let _ = self.domains.push(Domain {
            id,
            name: name_of(spec.name),
            expect,
            state: RunState::Runnable,
            root: b.root,
            regs,
            fx: FxArea::initial(),
            console: LineBuffer::new(),
            ticks_run: 0,
        });
    }

    fn push_rejected(&mut self, id: DomId, name: &str, expect: Expect) {
        let _ = self.domains.push(Domain {
            id,
            name: name_of(name),
            expect,
            state: RunState::Dead(Exit::Rejected),
            root: 0,
            regs: TrapFrame::default(),
            fx: FxArea::initial(),
            console: LineBuffer::new(),
            ticks_run: 0,
        });
    }

    /// Handles a trap taken by the current domain; returns who runs next.
    fn on_trap(&mut self, f: TrapFrame) -> Next {
        let cur = self.current.expect("a trap from a guest has a current domain");
        self.domains[cur].regs = f;
        let vector = f.vector as u8;
        let mut resched = false;
        match vector {
            HYPERCALL_VECTOR => resched = self.hypercall(cur),
            TIMER_VECTOR => {
                timer::eoi();
                self.ticks += 1;
                self.domains[cur].ticks_run += 1;
                self.slice_left = self.slice_left.saturating_sub(1);
                resched = self.slice_left == 0;
            }
            SPURIOUS_VECTOR => {}
            0..=31 => {
                let fault = Fault {
                    vector,
                    error: f.error,
                    rip: f.rip,
                    cr2: if vector == 14 { cpu::read_cr2() } else { 0 },
                    ring: (f.cs & 3) as u8,
                };
                self.kill(cur, Exit::Faulted(fault));
                resched = true;
            }
            _ => timer::eoi(),
        }
        self.schedule(resched)
    }

    /// Runs a hypercall for domain `cur`; returns whether to reschedule.
    fn hypercall(&mut self, cur: usize) -> bool {
        let frames = self.frames.as_ref().expect("frame table set");
        let dom = &mut self.domains[cur];
        let r = dom.regs;
        let mut env = DomEnv { frames, dom };
        let action = hypercall::dispatch(&mut env, r.rax, [r.rdi, r.rsi, r.rdx, r.r10, r.r8]);
        match action {
            Action::Return(v) => {
                self.domains[cur].regs.rax = v as u64;
                false
            }
            Action::Yield => {
                self.domains[cur].regs.rax = 0;
                true
            }
            Action::Block => {
                self.domains[cur].regs.rax = 0;
                self.domains[cur].state = RunState::Blocked;
                true
            }
            Action::Shutdown(reason) => {
                self.kill(cur, Exit::Shutdown(reason));
                true
            }
        }
    }

    /// Ends domain `i`: reports, flushes its console and frees its memory.
    fn kill(&mut self, i: usize, exit: Exit) {
        let d = &mut self.domains[i];
        if !d.console.is_empty() {
            let name = &d.name;
            d.console.flush(&mut |l: &str| {
                let _ = writeln!(crate::arch::serial::Serial, "[{name}] {l}");
            });
        }
        d.state = RunState::Dead(exit);
        match exit {
            Exit::Faulted(fault) => {
                let r = &d.regs;
                log!("dom{} ({}) crashed: {fault}", d.id, d.name);
                log!(
                    "  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rsp {:#x} rbp {:#x}",
                    r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp
                );
            }
            _ => log!("dom{} ({}) exited: {exit}", d.id, d.name),
        }
        let id = d.id;
        let freed = self.frames.as_mut().map_or(0, |f| f.release_domain(id));
        let _ = freed;
    }

    /// Picks the domain to run. With `resched` false the current domain
    /// continues if it still can.
    fn schedule(&mut self, resched: bool) -> Next {
        let states: heapless::Vec<RunState, MAX_DOMAINS> = self.domains.iter().map(|d| d.state).collect();
        let still = self.current.filter(|&c| states[c] == RunState::Runnable);
        let pick = match (resched, still) {
            (false, Some(c)) => Some(c),
            _ => next_runnable(&states, self.current),
        };
        let Some(i) = pick else {
            if states.iter().any(|s| *s == RunState::Blocked) {
                log!("every live domain is blocked and nothing can wake them: deadlock");
                self.finish(false);
            }
            self.finish(true);
        };
        if Some(i) != self.current {
            self.slice_left = SLICE_TICKS;
        } else if resched {
            self.slice_left = SLICE_TICKS;
        }
        self.current = Some(i);
        let d = &mut self.domains[i];
        if !d.regs.sanitize() {
            // Frames come from the CPU or from validated guest input, so
            // only a hypervisor bug gets here; never iretq to it.
            log!("dom{} ({}): non-canonical return frame, crashing it", d.id, d.name);
            self.kill(i, Exit::Rejected);
            return self.schedule(true);
        }
        Next { cr3: d.root * 4096, frame: d.regs, fx: &d.fx }
    }

    /// Prints the end-of-run report and exits QEMU.
    fn finish(&mut self, clean: bool) -> ! {
        let elapsed_ms = match self.rates {
            Some(r) if r.tsc_hz > 0 => (cpu::rdtsc() - self.boot_tsc) / (r.tsc_hz / 1000).max(1),
            _ => 0,
        };
        log!("all domains have ended after {elapsed_ms} ms:");
        log!("  {:<4} {:<16} {:<9} {:<6} {}", "dom", "name", "expected", "ok", "exit");
        let mut all_ok = clean;
        for d in &self.domains {
            let (ok, exit) = match d.state {
                RunState::Dead(e) => (e.matches(d.expect), e),
                _ => (false, Exit::Rejected),
            };
            all_ok &= ok;
            log!(
                "  {:<4} {:<16} {:<9} {:<6} {}",
                d.id,
                d.name.as_str(),
                d.expect,
                if ok { "yes" } else { "NO" },
                exit
            );
        }
        if all_ok {
            log!("verdict: PASS: every domain ended as the manifest expected");
            qemu_exit(EXIT_SUCCESS)
        } else {
            log!("verdict: FAIL: some domain did not end as the manifest expected");
            qemu_exit(EXIT_FAILURE)
        }
    }
}

fn name_of(s: &str) -> heapless::String<32> {
    let mut n = heapless::String::new();
    for c in s.chars().take(31) {
        let _ = n.push(c);
    }
    n
}

/// Entry from ring 1 or 3 (see `arch::entry`).
#[no_mangle]
extern "C" fn rust_guest_trap(frame: *const TrapFrame) -> ! {
    // SAFETY: `entry_common` built a complete frame at this address on the
    // entry stack, which is mapped in the hypervisor view.
    let f = unsafe { frame.read_volatile() };
    let next = HV.lock().on_trap(f);
    run(next)
}

/// Entry from ring 0: an interrupt while idle, or a hypervisor fault.
#[no_mangle]
extern "C" fn rust_ring0_trap(frame: *mut TrapFrame) {
    // SAFETY: `hv_ring0_entry` passes the frame it just pushed.
    let f = unsafe { frame.read_volatile() };
    match f.vector as u8 {
        TIMER_VECTOR => timer::eoi(),
        SPURIOUS_VECTOR => {}
        v => hv_fault(v, &f),
    }
}

fn hv_fault(v: u8, f: &TrapFrame) -> ! {
    use ringfence_kernel::domain::{vector_mnemonic, vector_name};
    log!("FATAL: hypervisor fault {} ({}), error code {:#x}", vector_mnemonic(v), vector_name(v), f.error);
    log!("  rip {}  cs {:#x} rflags {:#x} rsp {:#x} ss {:#x}", Sym(f.rip), f.cs, f.rflags, f.rsp, f.ss);
    log!("  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x}", f.rax, f.rbx, f.rcx, f.rdx);
    log!("  rsi {:#x} rdi {:#x} rbp {:#x} r8 {:#x}", f.rsi, f.rdi, f.rbp, f.r8);
    log!("  r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x}", f.r9, f.r10, f.r11, f.r12);
    log!("  r13 {:#x} r14 {:#x} r15 {:#x}", f.r13, f.r14, f.r15);
    log!("  cr2 {:#x} cr3 {:#x} cr0 {:#x} cr4 {:#x}", cpu::read_cr2(), cpu::read_cr3(), cpu::read_cr0(), cpu::read_cr4());
    log!("  backtrace:");
    log::backtrace(f.rbp);
    log!("halting: the hypervisor itself faulted");
    qemu_exit(EXIT_FAILURE)
}
