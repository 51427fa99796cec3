//! The ring-0 side of the trap loop: the hypervisor state, the entry
//! points the entry code calls, and [`Platform`], the [`Machine`] over the
//! real CPU.
//!
//! Policy (what a trap means, who runs next, who pays) is the host-tested
//! library's [`ringfence_kernel::hv`]; this file only moves frames between
//! the entry stack and it, and gives it the hardware: TSC, local APIC
//! timer, COM1, segment registers, descriptor tables, the identity map
//! of physical memory and PCI configuration space. See the library's module docs for one trip through
//! the hypervisor and where validation happens.
//!
//! # Ownership
//! All mutable state lives in one [`Hv`] behind a spin lock. The hypervisor
//! runs on one CPU with interrupts disabled, so the lock is never contended;
//! it exists so that every access is explicit. A trap takes the lock, the
//! library decides which domain runs next and hands back that domain's
//! sanitised frame, and the lock is dropped before `enter_guest` (which
//! never returns).
//!
//! # Per-domain CPU state
//! The hypervisor keeps each domain's registers and FPU/SSE state in its
//! own memory; guests never see another domain's state. `entry_common`
//! saves the running guest's FPU/SSE state into the area `current_fx`
//! points at before any Rust code runs, and `exit_to_guest` restores the
//! next domain's, so the state survives every interrupt, hypercall and
//! domain switch.

use crate::arch::entry::{self, EntryCell, TrapFrame};
use crate::arch::ioapic::{self, Ioapic};
use crate::arch::pci::Mechanism1;
use crate::arch::phys::HvPhys;
use crate::arch::timer::{self, Rates};
use crate::arch::{cpu, descriptors, qemu_exit, serial, EXIT_FAILURE, EXIT_SUCCESS};
use crate::log;
use crate::log::Sym;
use core::mem::MaybeUninit;
use pvguest_abi::trap::SYSCALL_VECTOR;
use pvguest_abi::{hypercall as nr, HYPERCALL_VECTOR, NULL_TRAP_VECTOR};
use ring_protocol::{ByteChannel, SharedMem};
use ringfence_bundle::Bundle;
use ringfence_kernel::domain::table::{IdMap, Slot};
use ringfence_kernel::domain::vcpu::SegmentState;
use ringfence_kernel::domain::DomainTable;
use ringfence_kernel::event::SharedPage;
use ringfence_kernel::hv::{fast_path_hypercall, Domain, FastExit, Hv, Machine, Next, SPURIOUS_VECTOR, TIMER_VECTOR};
use ringfence_kernel::mm::frames::{FrameTable, Mfn};
use ringfence_kernel::regs::{FxArea, IretFrame};
use spin::Mutex;

pub use ringfence_kernel::hv::MAX_DOMAINS;

/// The real machine.
pub struct Platform {
    mem: HvPhys,
    rates: Option<Rates>,
    pci: Mechanism1,
    ioapic: Ioapic,
}

static HV: Mutex<Hv<Platform>> =
    Mutex::new(Hv::new(Platform { mem: HvPhys, rates: None, pci: Mechanism1, ioapic: Ioapic }));

/// The domain table's storage: outside the image's loaded part, set up at
/// boot (see `linker.ld`).
#[link_section = ".tables"]
static DOMAIN_SLOTS: EntryCell<MaybeUninit<[Slot<Domain>; MAX_DOMAINS]>> = EntryCell::new(MaybeUninit::uninit());
#[link_section = ".tables"]
static DOMAIN_IDS: EntryCell<MaybeUninit<IdMap>> = EntryCell::new(MaybeUninit::uninit());

/// The domain table over its storage. Called once, at boot.
fn domain_table() -> DomainTable<'static, Domain> {
    let slots = DOMAIN_SLOTS.get() as *mut Slot<Domain>;
    for i in 0..MAX_DOMAINS {
        // SAFETY: `slots` points at MAX_DOMAINS slots of .tables that
        // nothing else refers to; each is initialised once here.
        unsafe { slots.add(i).write(None) };
    }
    let ids = DOMAIN_IDS.get() as *mut IdMap;
    // SAFETY: as above; an all-zero id map is a valid (empty) one.
    unsafe { ids.write_bytes(0, 1) };
    // SAFETY: both were initialised above, and `boot` calls this once, so
    // these are the only references ever made to them.
    let (slots, ids) = unsafe { (core::slice::from_raw_parts_mut(slots, MAX_DOMAINS), &mut *ids) };
    DomainTable::new(slots, ids)
}

impl Machine for Platform {
    type Mem = HvPhys;
    type Config = Mechanism1;
    type Ioapic = Ioapic;

    fn ioapic(&mut self) -> &mut Ioapic {
        &mut self.ioapic
    }
    fn take_irq(&mut self) -> Option<u8> {
        ioapic::take()
    }
    fn heap_used(&self) -> u64 {
        crate::HEAP.lock().used() as u64
    }
    fn apic_id(&self) -> u8 {
        timer::apic_id()
    }

    fn pci_config(&mut self) -> &mut Mechanism1 {
        &mut self.pci
    }
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        match size {
            1 => u32::from(crate::arch::cpu::inb(port)),
            2 => u32::from(crate::arch::cpu::inw(port)),
            _ => crate::arch::cpu::inl(port),
        }
    }
    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        match size {
            1 => crate::arch::cpu::outb(port, value as u8),
            2 => crate::arch::cpu::outw(port, value as u16),
            _ => crate::arch::cpu::outl(port, value),
        }
    }

    fn mem(&mut self) -> &mut HvPhys {
        &mut self.mem
    }
    fn mem_ref(&self) -> &HvPhys {
        &self.mem
    }
    fn tsc() -> u64 {
        cpu::rdtsc()
    }
    #[inline] // on every switch
    fn tsc_ticks(&self, ns: u64) -> u64 {
        self.rates.map_or(ns, |r| r.tsc_ticks(ns))
    }
    #[inline] // on every switch
    fn arm_timer(&mut self, ns: u64) {
        if let Some(r) = self.rates {
            timer::arm_oneshot(&r, ns);
        }
    }
    fn eoi(&mut self) {
        timer::eoi();
    }
    fn halt(&mut self) {
        cpu::idle_halt();
    }
    fn console_write(&mut self, bytes: &[u8]) {
        serial::write_bytes(bytes);
    }
    fn console_read(&mut self) -> Option<u8> {
        serial::read_byte()
    }
    fn log(&mut self, args: core::fmt::Arguments<'_>) {
        log!("{args}");
    }
    fn cr2(&self) -> u64 {
        cpu::read_cr2()
    }
    #[inline] // on every switch
    fn save_segments(&mut self) -> SegmentState {
        SegmentState {
            selectors: cpu::data_selectors(),
            fs_base: cpu::rdmsr(cpu::msr::FS_BASE),
            gs_base: cpu::rdmsr(cpu::msr::GS_BASE),
        }
    }
    #[inline] // on every switch
    fn load_segments(&mut self, s: &SegmentState, selectors: bool) {
        // SAFETY: the library passes selectors read from the CPU while this
        // domain ran (or null ones) and bases checked canonical by
        // `set_segment_base` or read back from the CPU; the hypervisor
        // never uses fs or gs.
        unsafe {
            if selectors {
                cpu::load_data_selectors(s.selectors);
            }
            cpu::wrmsr(cpu::msr::FS_BASE, s.fs_base);
            cpu::wrmsr(cpu::msr::GS_BASE, s.gs_base);
        }
    }
    #[inline] // on every switch
    fn set_syscall_gate(&mut self, gate: Option<u64>) {
        descriptors::set_syscall_gate(gate);
    }
    #[inline] // on every switch
    fn set_rsp1(&mut self, rsp: u64) {
        descriptors::set_rsp1(rsp);
    }
    fn entry_area_pml4e(&self) -> u64 {
        descriptors::guest_entry_pml4e()
    }
    fn console_page(&mut self, mfn: Mfn) -> Option<ByteChannel<'static>> {
        console_back(mfn)
    }
    fn console_unread(&mut self, mfn: Mfn) -> u32 {
        // A second back end in the hypervisor's view while it lives: it
        // only reads the producer index (`poll` validates it) and is
        // dropped here; the ring's consumer is in the daemon's domain.
        let back = channel_page(mfn).and_then(|p| ByteChannel::back_attach(p).ok());
        back.and_then(|mut c| c.rx.poll().ok()).unwrap_or(0)
    }
    fn channel_page_init(&mut self, mfn: Mfn) -> bool {
        channel_init(mfn)
    }
    fn stretch(&self) -> ([u64; 4], u64) {
        stretch::current()
    }
    fn stretch_restart(&mut self) {
        stretch::restart();
    }
    fn stretch_report(&mut self) {
        stretch::report();
    }
    fn fatal(&mut self, vector: u8, frame: &TrapFrame) -> ! {
        hv_fault(vector, frame)
    }
    fn exit(&mut self, success: bool) -> ! {
        qemu_exit(if success { EXIT_SUCCESS } else { EXIT_FAILURE })
    }
}

/// Builds every domain of the bundle and starts the first one.
pub fn boot(frames: FrameTable<'static>, bundle: &Bundle<'static>, rates: Rates) -> ! {
    let next = {
        let mut hv = HV.lock();
        hv.m.rates = Some(rates);
        let wallclock = crate::arch::rtc::read_unix_seconds();
        hv.start(frames, domain_table(), rates.tsc_hz, bundle, wallclock)
    };
    stretch::start(0, 0, 0);
    run(next)
}

/// CR3 of the domain being entered (for the lock-free fast paths).
static CURRENT_CR3: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Shared-info frame of the domain being entered (for the lock-free fast
/// paths' upcall check).
static CURRENT_SHARED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Enters the chosen guest.
#[inline(always)] // on every full trip: no call
fn run(next: Next) -> ! {
    stretch::end();
    stretch::entering(next.id);
    entry::current_fx.store(next.fx as u64, core::sync::atomic::Ordering::Relaxed);
    CURRENT_CR3.store(next.cr3, core::sync::atomic::Ordering::Relaxed);
    CURRENT_SHARED.store(next.shared, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: `schedule` returns only live domains' roots (built and
    // validated by the builder) and sanitised frames; the lock is dropped,
    // and the frame and FPU area stay where they are (in the domain's
    // slot, which nothing changes until the next trap) while they are
    // copied out on the way to the guest.
    unsafe { entry::enter_guest(next.cr3, &*next.frame, next.fx) }
}

/// Entry from ring 1 or 3 (see `arch::entry`).
///
/// The null trap, fast-path hypercalls and a ring-3 `syscall` bounced to
/// the guest kernel are handled on the frame where `entry_common` built it
/// (the exit slot at the top of the entry stack) and return from there, with
/// no copies (only `rax` and the `iretq` part may change); everything else
/// copies the frame into the domain and goes through `Hv::on_trap`.
#[no_mangle]
pub(crate) extern "C" fn rust_guest_trap(frame: *mut TrapFrame) -> ! {
    use core::sync::atomic::Ordering::Relaxed;
    // SAFETY: `entry_common` built a complete frame at this address (the
    // exit slot of the entry stack, mapped read-write in the hypervisor
    // view); fields are read once each.
    let vector = unsafe { (&raw const (*frame).vector).read_volatile() };
    // SAFETY: as above.
    let rip = unsafe { (&raw const (*frame).rip).read_volatile() };
    // The in-place paths return through the CPU-made frame unchanged but
    // for `rax`. That frame is safe to `iretq` to (guest selectors, IF set,
    // IOPL 0: ring 1 cannot change those) except for one case: an `int` in
    // the last bytes below the canonical hole pushes a non-canonical return
    // address, and `iretq` would fault in ring 0. Those go the full way,
    // which refuses them.
    let in_place = pvguest_abi::layout::is_canonical(rip);
    // SAFETY: as above.
    let nr = unsafe { (&raw const (*frame).rax).read_volatile() };
    let hypercall = vector == u64::from(HYPERCALL_VECTOR) && in_place;
    if hypercall && nr == nr::XEN_VERSION && !(SharedPage { mfn: CURRENT_SHARED.load(Relaxed) }).upcall_due(&HvPhys) {
        // The most frequent hypercall reads no domain state: answered
        // without the lock. (An upcall that is due needs the full path,
        // which delivers it.)
        // SAFETY: as above; only `rax` of the in-place frame changes.
        unsafe {
            let cmd = (&raw const (*frame).rdi).read_volatile();
            let v = match ringfence_kernel::hypercall::xen_version(cmd) {
                Ok(v) => v,
                Err(e) => e.to_ret() as u64,
            };
            (&raw mut (*frame).rax).write_volatile(v);
            let fx = entry::current_fx.load(Relaxed) as *const FxArea;
            entry::enter_guest_in_place(CURRENT_CR3.load(Relaxed), fx)
        }
    }
    if vector == u64::from(NULL_TRAP_VECTOR) && in_place {
        // The CPU made this frame for an `int` from ring 1 (the gate's DPL
        // keeps ring 3 out), so returning through it unchanged is exactly
        // returning to the caller; nothing else happens.
        let fx = entry::current_fx.load(Relaxed) as *const FxArea;
        // SAFETY: same domain, same validated root, CPU-made frame in place.
        unsafe { entry::enter_guest_in_place(CURRENT_CR3.load(Relaxed), fx) }
    }
    stretch::start(vector, nr, rip);
    if hypercall && fast_path_hypercall(nr) {
        // SAFETY: as above; each argument register is read once.
        let a = unsafe {
            [
                (&raw const (*frame).rdi).read_volatile(),
                (&raw const (*frame).rsi).read_volatile(),
                (&raw const (*frame).rdx).read_volatile(),
                (&raw const (*frame).r10).read_volatile(),
                (&raw const (*frame).r8).read_volatile(),
            ]
        };
        let done = HV.lock().fast_hypercall(nr, a, || read_iret(frame));
        if let Some(exit) = done {
            fast_exit(frame, exit);
        }
    }
    if vector == u64::from(SYSCALL_VECTOR) && in_place {
        // SAFETY: as above.
        let rcx = unsafe { (&raw const (*frame).rcx).read_volatile() };
        let done = HV.lock().fast_syscall(rcx, read_iret(frame));
        if let Some(exit) = done {
            fast_exit(frame, exit);
        }
    }
    let next = HV.lock().on_trap_with(|regs| {
        // SAFETY: as above: one copy, straight into the domain's state (a
        // block copy: `rep movsq`, not a register-by-register one), from
        // the entry stack to the domain's slot (they do not overlap). The
        // frame is read once, and nothing else writes it while the
        // hypervisor runs (interrupts are off, one CPU).
        unsafe { entry::copy_frame(regs, frame.cast_const()) };
        if vector == 2 {
            // An NMI frame sits on IST2, which every guest view maps
            // read-write: do not leave this domain's registers there for
            // the next one.
            // SAFETY: as above; the frame was just copied out.
            unsafe { frame.write_volatile(TrapFrame::default()) };
        }
    });
    run(next)
}

/// The `iretq` part of the frame `entry_common` built at `frame` (the exit
/// slot of the entry stack), read once.
fn read_iret(frame: *const TrapFrame) -> IretFrame {
    // SAFETY: `frame` is the complete frame `entry_common` built (see
    // `rust_guest_trap`), mapped read-write in the hypervisor view; its
    // last five words are the `iretq` part (asserted in `regs`).
    unsafe { (&raw const (*frame).rip).cast::<IretFrame>().read_volatile() }
}

/// Leaves a fast path (the lock is dropped) through the CPU-made frame in
/// place, with the result in `rax` and the `iretq` part the fast path
/// prepared, if any.
#[inline(always)]
fn fast_exit(frame: *mut TrapFrame, FastExit { rax, cr3, fx, iret }: FastExit) -> ! {
    use core::sync::atomic::Ordering::Relaxed;
    stretch::end();
    // A new root from `new_baseptr` is the CR3 to exit with.
    CURRENT_CR3.store(cr3, Relaxed);
    // SAFETY: the frame is the CPU-made one in the exit slot, safe to
    // `iretq` through (guest selectors, IF set, IOPL 0, canonical rip:
    // checked by the caller); only `rax` and, when the fast path bounced
    // it to a guest handler, its `iretq` part change, and that part was
    // sanitised by the fast path. The root and FPU area are the current
    // domain's own (validated root).
    unsafe {
        if let Some(v) = rax {
            (&raw mut (*frame).rax).write_volatile(v);
        }
        if let Some(f) = iret {
            (&raw mut (*frame).rip).cast::<IretFrame>().write_volatile(f);
        }
        entry::enter_guest_in_place(cr3, fx)
    }
}

/// Entry from ring 0: an interrupt while idle, or a hypervisor fault.
#[no_mangle]
pub(crate) extern "C" fn rust_ring0_trap(frame: *mut TrapFrame) {
    // SAFETY: `hv_ring0_entry` passes the frame it just pushed.
    let f = unsafe { frame.read_volatile() };
    match f.vector as u8 {
        TIMER_VECTOR => timer::eoi(),
        SPURIOUS_VECTOR => {}
        // A host event, even in the middle of an entry or exit: the return
        // path restores the interrupted CR3 from the entry text, so
        // resuming is safe wherever it hit.
        2 => log!("NMI while the hypervisor ran: a host event, ignored"),
        // A device line while halted: left unacknowledged for the trap
        // loop, which masks the line first (see `arch::ioapic`).
        v if ioapic::taken_in_ring0(v) => {}
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
    log!(
        "  cr2 {:#x} cr3 {:#x} cr0 {:#x} cr4 {:#x}",
        cpu::read_cr2(),
        cpu::read_cr3(),
        cpu::read_cr0(),
        cpu::read_cr4()
    );
    log!("  backtrace:");
    log::backtrace(f.rbp);
    log!("halting: the hypervisor itself faulted");
    qemu_exit(EXIT_FAILURE)
}

/// The longest stretch spent in the hypervisor: from a guest's entry (after
/// the two constant-time lock-free paths, the null trap and `xen_version`)
/// to the next exit to a guest, halted time excluded. Interrupts are off
/// throughout, so this is the worst latency a guest can impose on the
/// others. Under `-icount shift=0` a TSC tick is one instruction.
mod stretch {
    use crate::arch::cpu;
    use crate::log;
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use ringfence_kernel::mm::frames::DomId;

    static START: AtomicU64 = AtomicU64::new(0);
    /// What the stretch being measured began with: vector, rax, rip, domain.
    static WHAT: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    static WORST: AtomicU64 = AtomicU64::new(0);
    static WORST_WHAT: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    /// The domain being entered (whose trap the next stretch starts with).
    static RUNNING: AtomicU64 = AtomicU64::new(0);

    /// A guest entered the hypervisor.
    #[inline] // on every trip through the hypervisor
    pub fn start(vector: u64, rax: u64, rip: u64) {
        START.store(cpu::rdtsc(), Relaxed);
        for (w, v) in WHAT.iter().zip([vector, rax, rip, RUNNING.load(Relaxed)]) {
            w.store(v, Relaxed);
        }
    }

    /// What the stretch under way began with, and how many ticks ago.
    pub fn current() -> ([u64; 4], u64) {
        (WHAT.each_ref().map(|a| a.load(Relaxed)), cpu::rdtsc().wrapping_sub(START.load(Relaxed)))
    }

    /// The CPU halted and woke: the stretch starts again now.
    pub fn restart() {
        START.store(cpu::rdtsc(), Relaxed);
    }

    /// Records the domain about to be entered.
    pub fn entering(id: DomId) {
        RUNNING.store(u64::from(id.raw()), Relaxed);
    }

    /// The hypervisor is about to return to a guest.
    #[inline(always)] // on every trip through the hypervisor
    pub fn end() {
        let ticks = cpu::rdtsc().wrapping_sub(START.load(Relaxed));
        if ticks > WORST.load(Relaxed) && ticks < u64::MAX / 2 {
            WORST.store(ticks, Relaxed);
            for (w, v) in WORST_WHAT.iter().zip(&WHAT) {
                w.store(v.load(Relaxed), Relaxed);
            }
        }
    }

    /// One line for the final report.
    pub fn report() {
        let [vector, rax, rip, dom] = WORST_WHAT.each_ref().map(|a| a.load(Relaxed));
        log!(
            "longest stretch in the hypervisor: {} TSC ticks, entered from dom{dom} by vector {vector:#x} (rax {rax:#x}) at rip {rip:#x}",
            WORST.load(Relaxed)
        );
    }
}

/// The hypervisor's view of the zeroed frame `mfn` of a domain being
/// built, as shared memory.
fn channel_page(mfn: Mfn) -> Option<SharedMem<'static>> {
    // SAFETY: `mfn` is a zeroed RAM frame of a domain being built,
    // identity-mapped in the hypervisor's view, held `Writable` for the
    // domain's life when the hypervisor keeps an endpoint in it (the
    // console page, released only after `end` has dropped that endpoint).
    // In the hypervisor's address space it is accessed only through
    // `ring-protocol` endpoints (the temporary front that initialises it is
    // dropped before any back is made); what a guest writes into it is
    // validated by the ring code.
    unsafe { SharedMem::new((mfn * 4096) as *mut u8, 4096) }.ok()
}

/// Initialises the page at `mfn` as an empty `ByteChannel` (the temporary
/// front only initialises it; it ends here).
fn channel_init(mfn: Mfn) -> bool {
    channel_page(mfn).is_some_and(|p| ByteChannel::front_init(p).is_ok())
}

/// Prepares domain's console page at `mfn` as a `ByteChannel` and returns
/// the back end the hypervisor drains.
fn console_back(mfn: Mfn) -> Option<ByteChannel<'static>> {
    if !channel_init(mfn) {
        return None;
    }
    ByteChannel::back_attach(channel_page(mfn)?).ok()
}
