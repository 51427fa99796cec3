//! Host tests of the trap loop over a fake machine.
//!
//! The real [`Hv`] runs over [`FakeMachine`]: RAM in a `Vec`, a TSC in a
//! thread-local that the tests advance (1 tick = 1 ns, `tsc_hz` = 1e9),
//! and recorders for everything the hypervisor asks of the hardware
//! (timer arming, EOIs, halts, console bytes, log lines, segment loads,
//! the syscall gate and RSP1). Its console page is `None` (this crate
//! forbids `unsafe`, so no `SharedMem` can be made over the `Vec`), so
//! the domains print with `console_io`.
//!
//! Guest code never runs. A test plays the guest: it hands `on_trap` the
//! frame the guest's instruction would have made (an `int 0x82` with the
//! hypercall number in `rax` and the arguments in rdi, rsi, rdx, r10, r8;
//! a timer interrupt; a fault) and writes argument structs into the
//! guest's memory through the guest's own page tables ([`GuestView`]),
//! which the builder maps at `GUEST_KERNEL_BASE`.
//!
//! With the TSC standing still unless a test moves it, every interval
//! is exact, so the accounting tests compare nanoseconds with `==`.
//! [`set_tsc_step`] makes every TSC read advance the clock, to model the
//! hypervisor's own work.

use super::{Domain, Hv, Machine, Next, TIMER_VECTOR};
use crate::builder::tests::tiny_elf;
use crate::builder::Layout;
use crate::domain::vcpu::SegmentState;
use crate::domain::{DomId, DomainTable, Exit, Fault, RunState};
use crate::hypercall::ShutdownReason;
use crate::mm::frames::{FrameInfo, FrameTable, Mfn, Owner};
use crate::mm::guest_mem::{GuestVa, GuestView, PhysMem};
use crate::mm::paging::PAGE_SIZE;
use crate::regs::Regs;
use crate::sched::bvt::{Params, DEFAULT_CTX_ALLOWANCE_NS, DEFAULT_WEIGHT, VT_SCALE};
use core::cell::Cell;
use core::mem::offset_of;
use pvguest_abi::event::{self, BindVirq, VIRQ_TIMER};
use pvguest_abi::hypercall as nr;
use pvguest_abi::layout::GUEST_KERNEL_BASE;
use pvguest_abi::sched_op::SchedPoll;
use pvguest_abi::shared_info::{SharedInfo, VcpuInfo};
use pvguest_abi::trap::{BounceFrame, UPCALL_VECTOR};
use pvguest_abi::vcpu::runstate;
use pvguest_abi::{console_io, sched_op, segbase, selectors, shutdown_reason, Errno, HYPERCALL_VECTOR};
use ring_protocol::ByteChannel;
use ringfence_bundle::{Bundle, Expect};
use ringfence_bundle_writer::{BundleWriter, DomainEntry};
use std::boxed::Box;
use std::format;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::string::String;
use std::vec::Vec;
use zerocopy::IntoBytes;

/// Fake RAM: 16 MiB.
const RAM_FRAMES: u64 = 4096;
/// Every test domain's memory: 128 pages.
const DOM_KIB: u32 = 512;
/// Where the TSC stands at boot (not 0, so an offset mistake shows).
const BOOT_TSC: u64 = 7_000_000_000;
const US: u64 = 1_000;
const MS: u64 = 1_000_000;
/// BVT's context-switch allowance C, the hypervisor's default.
const C: u64 = DEFAULT_CTX_ALLOWANCE_NS;
/// A read-write page free for the guest (the tiny image, start info,
/// shared info, console, frame list, page tables and stack end before it).
const SCRATCH: u64 = Layout::va(64);
/// An address in the tiny image's code page, used as an event callback.
const CALLBACK: u64 = GUEST_KERNEL_BASE + 0x40;
/// The PML4 entry the fake gives for the entry area (slot 511).
const ENTRY_AREA_PML4E: u64 = 0xdead_0003;

thread_local! {
    /// The fake TSC (each test runs on its own thread).
    static TSC: Cell<u64> = const { Cell::new(0) };
    /// Ticks every [`Machine::tsc`] read advances the clock by.
    static TSC_STEP: Cell<u64> = const { Cell::new(0) };
}

/// The TSC now, without advancing it.
fn tsc() -> u64 {
    TSC.with(Cell::get)
}

fn set_tsc(t: u64) {
    TSC.with(|c| c.set(t));
}

/// Makes every TSC read by the hypervisor advance the clock by `ticks`.
fn set_tsc_step(ticks: u64) {
    TSC_STEP.with(|c| c.set(ticks));
}

/// Physical memory over a byte vector; an access outside it panics (the
/// hypervisor must only touch frames the frame table knows).
struct Ram(Vec<u8>);

impl Ram {
    fn range(&self, pa: u64, len: usize) -> core::ops::Range<usize> {
        let start = usize::try_from(pa).unwrap_or(usize::MAX);
        match start.checked_add(len) {
            Some(end) if end <= self.0.len() => start..end,
            _ => panic!("fake RAM: {len}-byte access at {pa:#x} is outside its {} bytes", self.0.len()),
        }
    }
}

impl PhysMem for Ram {
    fn read_u64(&self, pa: u64) -> u64 {
        assert_eq!(pa % 8, 0, "unaligned u64 read at {pa:#x}");
        let r = self.range(pa, 8);
        u64::from_le_bytes(self.0[r].try_into().expect("8 bytes"))
    }
    fn write_u64(&mut self, pa: u64, val: u64) {
        assert_eq!(pa % 8, 0, "unaligned u64 write at {pa:#x}");
        let r = self.range(pa, 8);
        self.0[r].copy_from_slice(&val.to_le_bytes());
    }
    fn read(&self, pa: u64, buf: &mut [u8]) {
        assert!(pa % PAGE_SIZE + buf.len() as u64 <= PAGE_SIZE, "read crosses a frame at {pa:#x}");
        let r = self.range(pa, buf.len());
        buf.copy_from_slice(&self.0[r]);
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        assert!(pa % PAGE_SIZE + data.len() as u64 <= PAGE_SIZE, "write crosses a frame at {pa:#x}");
        let r = self.range(pa, data.len());
        self.0[r].copy_from_slice(data);
    }
    fn zero_frame(&mut self, mfn: Mfn) {
        let r = self.range(mfn * PAGE_SIZE, PAGE_SIZE as usize);
        self.0[r].fill(0);
    }
}

/// One arming of the one-shot timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Armed {
    /// TSC when it was armed.
    at: u64,
    /// For how long.
    ns: u64,
}

impl Armed {
    fn deadline(&self) -> u64 {
        self.at + self.ns
    }
}

/// The machine the hypervisor runs on in these tests.
struct FakeMachine {
    ram: Ram,
    armed: Vec<Armed>,
    eois: usize,
    halts: usize,
    console: Vec<u8>,
    log: Vec<String>,
    /// The data-segment state the "CPU" holds now.
    cpu_segments: SegmentState,
    /// Every `load_segments`: the state and whether selectors were loaded.
    segment_loads: Vec<(SegmentState, bool)>,
    gates: Vec<Option<u64>>,
    rsp1: Vec<u64>,
    /// What writing one byte to the UART costs, in ns.
    uart_ns_per_byte: u64,
    /// No PCI.
    pci: crate::pci::Absent,
    /// The IOAPIC, with its device lines.
    ioapic: crate::irq::fake::FakeIoapic,
    /// Device vectors the "CPU" took while halted, not yet collected.
    irq_taken: Vec<u8>,
    /// Device vectors in service at the local APIC (the EOI pops the top
    /// and broadcasts it to the IOAPIC).
    in_service: Vec<u8>,
    /// Device interrupts the CPU took (in a guest or halted).
    device_interrupts: usize,
    /// What `console_unread` says of a console page, by frame (0 if not
    /// listed): the test plays the daemon's ring.
    console_unread: Vec<(Mfn, u32)>,
}

impl FakeMachine {
    fn new() -> FakeMachine {
        FakeMachine {
            ram: Ram(std::vec![0; (RAM_FRAMES * PAGE_SIZE) as usize]),
            armed: Vec::new(),
            eois: 0,
            halts: 0,
            console: Vec::new(),
            log: Vec::new(),
            cpu_segments: SegmentState::default(),
            segment_loads: Vec::new(),
            gates: Vec::new(),
            rsp1: Vec::new(),
            uart_ns_per_byte: 0,
            pci: crate::pci::Absent,
            ioapic: crate::irq::fake::FakeIoapic::default(),
            irq_taken: Vec::new(),
            in_service: Vec::new(),
            device_interrupts: 0,
            console_unread: Vec::new(),
        }
    }

    fn logged(&self, needle: &str) -> usize {
        self.log.iter().filter(|l| l.contains(needle)).count()
    }
}

impl Machine for FakeMachine {
    type Mem = Ram;
    type Config = crate::pci::Absent;
    type Ioapic = crate::irq::fake::FakeIoapic;

    fn ioapic(&mut self) -> &mut Self::Ioapic {
        &mut self.ioapic
    }
    fn take_irq(&mut self) -> Option<u8> {
        self.irq_taken.pop()
    }
    fn heap_used(&self) -> u64 {
        0
    }
    fn apic_id(&self) -> u8 {
        0
    }

    fn pci_config(&mut self) -> &mut crate::pci::Absent {
        &mut self.pci
    }

    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        panic!("the fake machine has no I/O ports (in {port:#x}, {size})")
    }
    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        panic!("the fake machine has no I/O ports (out {port:#x}, {size}, {value:#x})")
    }
    fn mem(&mut self) -> &mut Ram {
        &mut self.ram
    }
    fn mem_ref(&self) -> &Ram {
        &self.ram
    }
    fn tsc() -> u64 {
        let t = tsc();
        set_tsc(t + TSC_STEP.with(Cell::get));
        t
    }
    fn tsc_ticks(&self, ns: u64) -> u64 {
        ns
    }
    fn arm_timer(&mut self, ns: u64) {
        self.armed.push(Armed { at: tsc(), ns });
    }
    fn eoi(&mut self) {
        self.eois += 1;
        if let Some(v) = self.in_service.pop() {
            self.ioapic.eoi_broadcast(v);
        }
    }
    /// The CPU sleeps until a device interrupt or the armed timer fires.
    fn halt(&mut self) {
        self.halts += 1;
        if let Some(v) = self.ioapic.deliver() {
            self.device_interrupts += 1;
            self.in_service.push(v);
            self.irq_taken.push(v);
            set_tsc(tsc() + 1_000);
            return;
        }
        let a = *self.armed.last().expect("halted with no timer armed: the CPU would sleep forever");
        set_tsc(tsc().max(a.deadline()));
    }
    fn console_write(&mut self, bytes: &[u8]) {
        self.console.extend_from_slice(bytes);
        set_tsc(tsc() + self.uart_ns_per_byte * bytes.len() as u64);
    }
    fn console_read(&mut self) -> Option<u8> {
        None
    }
    fn log(&mut self, args: core::fmt::Arguments<'_>) {
        self.log.push(format!("{args}"));
    }
    fn cr2(&self) -> u64 {
        0
    }
    fn save_segments(&mut self) -> SegmentState {
        self.cpu_segments
    }
    fn load_segments(&mut self, s: &SegmentState, selectors: bool) {
        self.segment_loads.push((*s, selectors));
        if selectors {
            self.cpu_segments.selectors = s.selectors;
        }
        (self.cpu_segments.fs_base, self.cpu_segments.gs_base) = (s.fs_base, s.gs_base);
    }
    fn set_syscall_gate(&mut self, gate: Option<u64>) {
        self.gates.push(gate);
    }
    fn set_rsp1(&mut self, rsp: u64) {
        self.rsp1.push(rsp);
    }
    fn entry_area_pml4e(&self) -> u64 {
        ENTRY_AREA_PML4E
    }
    fn console_page(&mut self, _mfn: Mfn) -> Option<ByteChannel<'static>> {
        None
    }
    fn console_unread(&mut self, mfn: Mfn) -> u32 {
        self.console_unread.iter().find(|(m, _)| *m == mfn).map_or(0, |&(_, n)| n)
    }
    fn channel_page_init(&mut self, _mfn: Mfn) -> bool {
        true
    }
    fn stretch(&self) -> ([u64; 4], u64) {
        ([0; 4], 0)
    }
    fn stretch_restart(&mut self) {}
    fn stretch_report(&mut self) {
        self.log.push(String::from("longest stretch in the hypervisor: (not measured by the fake)"));
    }
    fn fatal(&mut self, vector: u8, frame: &Regs) -> ! {
        panic!("fake machine: fatal hypervisor fault, vector {vector} at rip {:#x}", frame.rip)
    }
    fn exit(&mut self, success: bool) -> ! {
        panic!("fake machine: run ended: {}", if success { "PASS" } else { "FAIL" })
    }
}

/// A domain of the boot bundle running the tiny image.
fn dom(name: &str) -> DomainEntry {
    DomainEntry::new(name, tiny_elf(), DOM_KIB)
}

/// The hypervisor booted over a fake machine, and the domain it is about
/// to enter (the guest the test plays next).
struct Rig {
    hv: Box<Hv<FakeMachine>>,
    next: Next,
    /// Continuation rounds of the last [`Rig::create`].
    rounds: u32,
}

impl Rig {
    /// The registers of the domain about to be entered (what `next.frame`
    /// points at: its saved state).
    fn frame(&self) -> Regs {
        let slot = self.hv.domains.slot_of(self.next.id).expect("the next domain lives");
        self.hv.domains[slot].regs
    }

    /// Boots the domains of `entries` at TSC [`BOOT_TSC`].
    fn boot(entries: &[DomainEntry]) -> Rig {
        set_tsc(BOOT_TSC);
        set_tsc_step(0);
        let mut w = BundleWriter::new();
        for e in entries {
            w.domain(e.clone());
        }
        let bytes = w.finish_checked().expect("a valid bundle").leak();
        let bundle = Bundle::parse(bytes).expect("the bundle parses");
        let store: &'static mut [FrameInfo] = std::vec![FrameInfo::RESERVED; RAM_FRAMES as usize].leak();
        let mut frames = FrameTable::new(store);
        frames.add_free_range(1, RAM_FRAMES);
        let slots = Vec::from_iter((0..8).map(|_| None)).leak();
        let ids = Box::leak(Box::new([0; crate::domain::table::DOMID_FIRST_RESERVED as usize]));
        let mut hv = Box::new(Hv::new(FakeMachine::new()));
        let next = hv.start(frames, DomainTable::new(slots, ids), 1_000_000_000, &bundle, 1_795_315_111);
        Rig { hv, next, rounds: 0 }
    }

    /// System time now (ns since boot).
    fn now(&self) -> u64 {
        tsc() - self.hv.boot_tsc
    }

    fn advance(&mut self, ns: u64) {
        set_tsc(tsc() + ns);
    }

    fn advance_to(&mut self, system_ns: u64) {
        assert!(system_ns >= self.now(), "the clock never goes back");
        set_tsc(self.hv.boot_tsc + system_ns);
    }

    fn id(&self, name: &str) -> DomId {
        let found = self.hv.domains.iter().find(|(_, _, d)| d.name.as_str() == name);
        found.map(|(_, id, _)| id).unwrap_or_else(|| panic!("no domain {name}"))
    }

    fn slot(&self, id: DomId) -> usize {
        self.hv.domains.slot_of(id).expect("a live domain")
    }

    fn dom(&self, id: DomId) -> &Domain {
        self.hv.domains.get(id).expect("a live domain")
    }

    /// The last arming of the one-shot timer.
    fn armed(&self) -> Armed {
        *self.hv.m.armed.last().expect("the timer was armed")
    }

    /// The guest being entered traps with `f`; the next one is entered.
    fn trap(&mut self, f: Regs) {
        self.next = self.hv.on_trap(f);
    }

    /// The guest being entered executes the `int 0x82` at its `rip` with
    /// the registers it was entered with (a continued hypercall does this).
    fn int82(&mut self) -> i64 {
        let f = Regs { vector: u64::from(HYPERCALL_VECTOR), rip: self.frame().rip + 2, ..self.frame() };
        self.call(f)
    }

    /// The guest being entered makes hypercall `n` with arguments `a`;
    /// returns the result in its `rax` (the hypercall number if it is to
    /// be continued).
    fn hypercall(&mut self, n: u64, a: [u64; 5]) -> i64 {
        let [rdi, rsi, rdx, r10, r8] = a;
        let f = Regs {
            vector: u64::from(HYPERCALL_VECTOR),
            rax: n,
            rdi,
            rsi,
            rdx,
            r10,
            r8,
            rip: self.frame().rip + 2,
            ..self.frame()
        };
        self.call(f)
    }

    fn call(&mut self, f: Regs) -> i64 {
        let caller = self.next.id;
        self.trap(f);
        self.hv.domains.get(caller).map_or(i64::MIN, |d| d.regs.rax as i64)
    }

    /// An interrupt at `vector` while the guest being entered runs.
    fn interrupt(&mut self, vector: u8) {
        let f = Regs { vector: u64::from(vector), ..self.frame() };
        self.trap(f);
    }

    /// The clock reaches the armed deadline and the timer interrupts.
    fn timer_interrupt(&mut self) {
        let dl = self.armed().deadline();
        set_tsc(tsc().max(dl));
        self.interrupt(TIMER_VECTOR);
    }

    fn view(&mut self, id: DomId) -> GuestView<'_, Ram> {
        let d = self.hv.domains.get(id).expect("a live domain");
        let frames = self.hv.frames.as_ref().expect("the frame table is set");
        GuestView { mem: &mut self.hv.m.ram, frames, root: d.root, dom: id }
    }

    /// The guest `id` writes `data` at `va` (through its page tables).
    fn write_guest(&mut self, id: DomId, va: u64, data: &[u8]) {
        self.view(id).copy_to(GuestVa(va), data).expect("the guest can write there");
    }

    fn read_guest(&mut self, id: DomId, va: u64, buf: &mut [u8]) {
        self.view(id).copy_from(GuestVa(va), buf).expect("the guest can read there");
    }

    /// Byte `off` of domain `id`'s shared-info page.
    fn shared_byte(&self, id: DomId, off: usize) -> u8 {
        let mut b = [0u8];
        self.hv.m.ram.read(self.dom(id).shared.mfn * PAGE_SIZE + off as u64, &mut b);
        b[0]
    }

    /// Whether `port` is pending in domain `id`'s shared info.
    fn port_pending(&self, id: DomId, port: u32) -> bool {
        let pa = self.dom(id).shared.mfn * PAGE_SIZE
            + offset_of!(SharedInfo, evtchn_pending) as u64
            + u64::from(port / 64) * 8;
        self.hv.m.ram.read_u64(pa) & (1 << (port % 64)) != 0
    }

    /// The guest `id` handles its events: it clears `upcall_pending`, the
    /// selector word and every pending bit, as its upcall handler would.
    fn ack_events(&mut self, id: DomId) {
        let base = self.dom(id).shared.mfn * PAGE_SIZE;
        let info = offset_of!(SharedInfo, vcpu_info) as u64;
        self.hv.m.ram.write(base + info + offset_of!(VcpuInfo, evtchn_upcall_pending) as u64, &[0]);
        self.hv.m.ram.write_u64(base + info + offset_of!(VcpuInfo, evtchn_pending_sel) as u64, 0);
        let pending = base + offset_of!(SharedInfo, evtchn_pending) as u64;
        self.hv.m.ram.write(pending, &[0; 512]);
    }

    /// The guest being entered binds VIRQ_TIMER; returns the port.
    fn bind_virq_timer(&mut self) -> u32 {
        let id = self.next.id;
        self.write_guest(id, SCRATCH, BindVirq { virq: VIRQ_TIMER, vcpu: 0, port: 0 }.as_bytes());
        assert_eq!(self.hypercall(nr::EVENT_CHANNEL_OP, [event::BIND_VIRQ, SCRATCH, 0, 0, 0]), 0);
        let mut port = 0u32;
        self.read_guest(id, SCRATCH + offset_of!(BindVirq, port) as u64, port.as_mut_bytes());
        assert_ne!(port, 0, "the hypervisor wrote the port back");
        port
    }

    /// Run time of `id` so far: its run state's RUNNING time, plus the
    /// current stretch if it is running.
    fn running_ns(&self, id: DomId) -> u64 {
        let r = &self.dom(id).runstate;
        let t = r.time[runstate::RUNNING as usize];
        if r.state == runstate::RUNNING {
            t + self.now() - r.state_entry_time
        } else {
            t
        }
    }

    /// The CPU time BVT has been told `id` used, in real ns (weight
    /// [`DEFAULT_WEIGHT`]).
    fn bvt_ns(&self, id: DomId) -> u128 {
        let avt = self.hv.bvt.avt(self.slot(id)).expect("in the scheduler");
        avt * u128::from(DEFAULT_WEIGHT) / u128::from(VT_SCALE)
    }

    /// Runs `f`, which must end the run; returns the machine's exit message.
    fn expect_end(&mut self, f: impl FnOnce(&mut Rig)) -> String {
        let r = catch_unwind(AssertUnwindSafe(|| f(self)));
        let payload = r.expect_err("the run ended");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| String::from(*s)))
            .unwrap_or_default()
    }
}

#[test]
fn equal_weights_alternate_per_bvt_and_each_gets_half_the_cpu() {
    let mut r = Rig::boot(&[dom("a"), dom("b")]);
    let (a, b) = (r.id("a"), r.id("b"));
    assert_eq!(r.next.id, a);
    assert_eq!(r.armed().ns, C, "the first run lasts C");
    let mut expect = b;
    for i in 0..10 {
        r.timer_interrupt();
        assert_eq!(r.next.id, expect, "interrupt {i}: the other domain runs");
        assert_eq!(r.armed().ns, 2 * C, "interrupt {i}: every later run lasts 2C (from C behind to C ahead)");
        expect = if expect == a { b } else { a };
    }
    assert_eq!(r.hv.m.eois, 10, "every timer interrupt is acknowledged");
    let total = r.now();
    assert_eq!(total, C + 9 * 2 * C);
    let (ta, tb) = (r.running_ns(a), r.running_ns(b));
    assert_eq!(ta + tb, total, "every ns is one domain's");
    assert_eq!((ta, tb), (45 * MS, 50 * MS), "a ran 5 + 4 x 10 ms, b 5 x 10 ms");
    assert!(ta.abs_diff(total / 2) <= C && tb.abs_diff(total / 2) <= C, "each within C of half");
    assert_eq!(r.bvt_ns(a), u128::from(ta));
    assert_eq!(r.bvt_ns(b), u128::from(tb));
}

#[test]
fn equal_weights_share_the_cpu_with_hypervisor_work_charged_too() {
    let mut r = Rig::boot(&[dom("a"), dom("b")]);
    let (a, b) = (r.id("a"), r.id("b"));
    // 50 ns per TSC read: the hypervisor's own work takes time, and each
    // interrupt is handled after its deadline.
    set_tsc_step(50);
    let mut ran = std::vec![r.next.id];
    for _ in 0..40 {
        r.timer_interrupt();
        assert_eq!(r.next.cr3, r.dom(r.next.id).root * PAGE_SIZE, "entered on its own root");
        ran.push(r.next.id);
    }
    set_tsc_step(0);
    assert!(ran.windows(2).all(|w| w[0] != w[1]), "the domains alternate: {ran:?}");
    let total = r.now();
    let (ta, tb) = (r.running_ns(a), r.running_ns(b));
    // Before the first entry the hypervisor built the domains: nobody's.
    assert!(ta + tb <= total && total - (ta + tb) < 10 * US, "{ta} + {tb} of {total}");
    assert!(ta.abs_diff(tb) <= 2 * C, "about half each: {ta} and {tb}");
}

#[test]
fn a_blocked_domain_with_a_timer_sleeps_until_its_deadline_then_gets_its_upcall() {
    // The sleeper is warped, so its wake-up preempts the hog at once.
    let mut r = Rig::boot(&[dom("sleeper").warp_us(10_000), dom("hog")]);
    let (s, h) = (r.id("sleeper"), r.id("hog"));
    assert_eq!(r.next.id, s);
    let port = r.bind_virq_timer();
    assert_eq!(r.hypercall(nr::SET_CALLBACKS, [CALLBACK, 0, 0, 0, 0]), 0);
    r.advance(100 * US);
    let deadline = r.now() + 8 * MS;
    assert_eq!(r.hypercall(nr::SET_TIMER_OP, [deadline, 0, 0, 0, 0]), 0);
    let resume = r.frame().rip + 2;
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);

    assert_eq!(r.next.id, h, "the sleeper blocked: the hog runs");
    assert_eq!(r.dom(s).state, RunState::Blocked);
    assert_eq!(r.dom(s).runstate.state, runstate::BLOCKED);
    assert_eq!(r.armed().ns, deadline - r.now(), "the hog runs alone until the sleeper's deadline");
    assert_eq!(r.hv.cpu.armed_for, Some(r.slot(s)), "that interrupt will be the sleeper's work");

    // Before the deadline nothing wakes it: an early interrupt, a hypercall
    // one ns before.
    r.advance_to(4 * MS);
    r.interrupt(TIMER_VECTOR);
    assert_eq!((r.next.id, r.dom(s).state), (h, RunState::Blocked));
    r.advance_to(deadline - 1);
    assert_eq!(r.hypercall(nr::XEN_VERSION, [0; 5]), 1, "ABI 0.1");
    assert_eq!((r.next.id, r.dom(s).state), (h, RunState::Blocked));
    assert!(!r.port_pending(s, port));

    // The clock passes the deadline and the timer interrupts.
    r.timer_interrupt();
    assert!(r.now() > deadline);
    assert_eq!(r.next.id, s, "woken and, warped, entered at once");
    assert_eq!(r.dom(s).state, RunState::Runnable);
    assert!(r.port_pending(s, port), "VIRQ_TIMER's port is pending");
    let pending = offset_of!(VcpuInfo, evtchn_upcall_pending);
    let mask = offset_of!(VcpuInfo, evtchn_upcall_mask);
    assert_eq!(r.shared_byte(s, pending), 1, "upcall pending");
    assert_eq!(r.shared_byte(s, mask), 1, "delivery masks events");
    assert_eq!(r.frame().rip, CALLBACK, "entered at its event callback");
    assert_eq!(r.frame().cs, u64::from(selectors::GUEST_KERNEL_CS));
    let mut bf = BounceFrame::default();
    r.read_guest(s, r.frame().rsp, bf.as_mut_bytes());
    assert_eq!(bf.vector, UPCALL_VECTOR);
    assert_eq!(bf.rip, resume, "the callback returns to just after the block");
    assert_eq!(bf.saved_upcall_mask, 0, "events were enabled by the block");
}

/// Boots `a` and `b` with a UART costing 100 ns a byte, and has `a` write
/// 20 lines of 100 bytes with `console_io` starting 10 us before its
/// slice ends. Returns the rig, the ids, and the `rip` after the `int`.
fn write_across_the_slice_end() -> (Rig, DomId, DomId, u64, Vec<u8>) {
    let mut r = Rig::boot(&[dom("a"), dom("b")]);
    r.hv.m.uart_ns_per_byte = 100;
    let (a, b) = (r.id("a"), r.id("b"));
    assert_eq!((r.next.id, r.armed().ns), (a, C));
    let mut text = Vec::new();
    for i in 0..20 {
        let line = format!("line {i:02} {}\n", "x".repeat(91));
        assert_eq!(line.len(), 100);
        text.extend_from_slice(line.as_bytes());
    }
    r.write_guest(a, SCRATCH, &text);
    r.advance_to(C - 10 * US);
    let after_int = r.frame().rip + 2;
    let ret = r.hypercall(nr::CONSOLE_IO, [console_io::WRITE, text.len() as u64, SCRATCH, 0, 0]);
    assert_eq!(ret, nr::CONSOLE_IO as i64, "cut at the deadline: to be continued");
    (r, a, b, after_int, text)
}

#[test]
fn time_inside_a_hypercall_is_charged_to_the_caller_not_the_next_domain() {
    let (r, a, b, _, _) = write_across_the_slice_end();
    let t1 = r.now();
    assert!(t1 > C, "the write ran past a's slice end");
    assert_eq!(r.next.id, b, "a's slice is over");
    // a paid for everything up to the switch, write included.
    assert_eq!(r.dom(a).runstate.time[runstate::RUNNING as usize], t1);
    assert_eq!(r.dom(a).runstate.state, runstate::RUNNABLE);
    assert_eq!(r.bvt_ns(a), u128::from(t1));
    // b's run starts after it.
    assert_eq!(r.dom(b).runstate.state, runstate::RUNNING);
    assert_eq!(r.dom(b).runstate.state_entry_time, t1);
    assert_eq!(r.dom(b).runstate.time[runstate::RUNNING as usize], 0);
    assert_eq!(r.bvt_ns(b), 0);
    // BVT saw it too: b may run until it is C past a.
    assert_eq!(r.armed(), Armed { at: tsc(), ns: t1 + C });
}

#[test]
fn a_console_write_cut_at_the_deadline_continues_where_it_stopped() {
    let (mut r, a, _, after_int, text) = write_across_the_slice_end();
    let regs = r.dom(a).regs;
    assert_eq!(regs.rip, after_int - 2, "rip rewound to the int 0x82");
    assert_eq!(regs.rax, nr::CONSOLE_IO, "rax still names the hypercall");
    let done = (regs.rsi >> 16) & 0xffff;
    assert!(done > 0 && done < text.len() as u64, "part was written: {done}");
    assert_eq!(regs.rsi & 0xffff, text.len() as u64 - done);
    assert_eq!(regs.rdx, SCRATCH + done);
    // b's slice ends; a runs again and re-executes the int until done.
    r.timer_interrupt();
    assert_eq!(r.next.id, a);
    let mut trips = 0;
    let ret = loop {
        let ret = r.int82();
        trips += 1;
        assert!(trips < 100, "the write makes progress");
        if ret != nr::CONSOLE_IO as i64 {
            break ret;
        }
        // Continued within a's slice, or a's slice ended again.
        while r.next.id != a {
            r.timer_interrupt();
        }
    };
    assert_eq!(ret, text.len() as i64, "one hypercall, the whole length");
    let mut expect = Vec::new();
    for line in text.split_inclusive(|&c| c == b'\n') {
        expect.extend_from_slice(b"[a] ");
        expect.extend_from_slice(line);
    }
    assert_eq!(String::from_utf8_lossy(&r.hv.m.console), String::from_utf8_lossy(&expect), "each line once");
}

#[test]
fn a_domain_that_powers_off_is_reported_and_freed_and_its_slot_reused() {
    let mut r = Rig::boot(&[dom("a"), dom("b")]);
    let (a, b) = (r.id("a"), r.id("b"));
    let slot_a = r.slot(a);
    let frames = |r: &Rig| r.hv.frames.as_ref().expect("set").count_owned(Owner::Domain(a));
    let free = |r: &Rig| r.hv.frames.as_ref().expect("set").free_count();
    assert_eq!(frames(&r), 128);
    let free_before = free(&r);
    let span = r.dom(a).span;
    assert!(span.1 - span.0 <= 2 * 128, "a's 128 frames lie close together: {span:?}");
    r.advance(MS);
    r.hypercall(nr::SCHED_OP, [sched_op::SHUTDOWN, shutdown_reason::POWEROFF, 0, 0, 0]);

    assert_eq!(r.next.id, b);
    let rec = r.hv.records.iter().find(|x| x.id == a).expect("a's record");
    assert_eq!(rec.exit, Some(Exit::Shutdown(ShutdownReason::Poweroff)));
    assert_eq!(r.hv.m.logged(&format!("dom{a} (a) exited: poweroff")), 1, "{:#?}", r.hv.m.log);
    assert_eq!(r.dom(a).runstate.state, runstate::OFFLINE);
    assert!(!r.hv.bvt.contains(slot_a), "never scheduled again");

    // Teardown: bounded steps, one per trip through the hypervisor.
    let mut trips = 0;
    while r.hv.domains.get(a).is_some() {
        assert_eq!(r.hypercall(nr::XEN_VERSION, [0; 5]), 1);
        assert_eq!(r.next.id, b);
        trips += 1;
        assert!(trips < 64, "teardown ends");
    }
    // Its frames are scanned, not the whole table: the console and report
    // step, then the frames' entries of its span (128 frames and its grant
    // table's: one step of REAP_STEP), not the RAM_FRAMES entries in
    // RAM_FRAMES / REAP_STEP steps.
    assert!((2..=3).contains(&trips), "{trips} trips for a domain of 128 frames in {RAM_FRAMES}");
    assert_eq!(frames(&r), 0);
    assert_eq!(free(&r), free_before + 128, "all of a's frames are free again");
    assert_eq!(r.hv.m.logged("exited"), 1, "reported once");
    assert_eq!(r.hv.cpu.current, Some(r.slot(b)));
    assert_ne!(r.hv.cpu.loaded, Some(slot_a));
    assert_ne!(r.hv.cpu.armed_for, Some(slot_a));
    // The slot is free for the next domain, under a new id.
    let v = r.hv.domains.reserve().expect("a free slot");
    assert_eq!(v.slot(), slot_a);
    assert_ne!(v.id(), a);
}

#[test]
fn console_io_lines_are_tagged_with_the_domain_name_and_control_bytes_escaped() {
    let mut r = Rig::boot(&[dom("alpha")]);
    let a = r.id("alpha");
    let msg = b"hi \x1b[2J\x07there\r\nsecond\npartial";
    r.write_guest(a, SCRATCH, msg);
    let ret = r.hypercall(nr::CONSOLE_IO, [console_io::WRITE, msg.len() as u64, SCRATCH, 0, 0]);
    assert_eq!(ret, msg.len() as i64);
    assert_eq!(
        String::from_utf8_lossy(&r.hv.m.console),
        "[alpha] hi \\x1b[2J\\x07there\n[alpha] second\n",
        "whole lines only, tagged, escapes shown as text, CR dropped"
    );
    // The fast path prints the same way, returning in place.
    r.write_guest(a, SCRATCH, b"\n");
    let f = r.frame().iret();
    let exit = r.hv.fast_hypercall(nr::CONSOLE_IO, [console_io::WRITE, 1, SCRATCH, 0, 0], || f).expect("in place");
    assert!(exit.iret.is_none(), "no upcall: the frame in place");
    assert_eq!(exit.rax, Some(1));
    assert_eq!(exit.cr3, r.dom(a).root * PAGE_SIZE);
    assert!(String::from_utf8_lossy(&r.hv.m.console).ends_with("[alpha] partial\n"));
}

#[test]
fn a_faulting_domain_without_a_handler_is_crashed_and_reported_while_others_run() {
    let mut r = Rig::boot(&[dom("a").expect(Expect::Crash), dom("b")]);
    let (a, b) = (r.id("a"), r.id("b"));
    let rip = r.frame().rip;
    r.trap(Regs { vector: 13, error: 0, rbx: 0x5eed, ..r.frame() });
    assert_eq!(r.next.id, b);
    let fault = Fault { vector: 13, error: 0, rip, cr2: 0, ring: 1 };
    let rec = r.hv.records.iter().find(|x| x.id == a).expect("a's record");
    assert_eq!(rec.exit, Some(Exit::Faulted(fault)));
    assert!(Exit::Faulted(fault).matches(rec.expect));
    let line = format!("dom{a} (a) crashed: #GP (general protection) in ring 1 at rip {rip:#x}, error code 0x0");
    assert_eq!(r.hv.m.logged(&line), 1, "{:#?}", r.hv.m.log);
    assert_eq!(r.hv.m.logged("rbx 0x5eed"), 1, "the registers are reported");
}

#[test]
fn with_every_domain_blocked_the_cpu_halts_until_the_nearest_deadline() {
    let mut r = Rig::boot(&[dom("a"), dom("b")]);
    let (a, b) = (r.id("a"), r.id("b"));
    r.bind_virq_timer();
    r.advance(100 * US);
    assert_eq!(r.hypercall(nr::SET_TIMER_OP, [3 * MS, 0, 0, 0, 0]), 0);
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);
    assert_eq!(r.next.id, b);
    r.bind_virq_timer();
    r.advance(100 * US);
    assert_eq!(r.hypercall(nr::SET_TIMER_OP, [2 * MS, 0, 0, 0, 0]), 0);
    assert_eq!(r.hv.m.halts, 0);
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);

    // Nothing runnable: armed for b's deadline (the nearest), halted, woken.
    assert_eq!(r.hv.m.halts, 1);
    let idle = r.hv.m.armed[r.hv.m.armed.len() - 2];
    assert_eq!(idle, Armed { at: r.hv.boot_tsc + 200 * US, ns: 2 * MS - 200 * US });
    assert_eq!(r.now(), 2 * MS);
    assert_eq!(r.next.id, b);
    assert_eq!(r.dom(a).state, RunState::Blocked);
    // Idle time is nobody's.
    assert_eq!((r.running_ns(a), r.running_ns(b)), (100 * US, 100 * US));
    assert_eq!(r.dom(b).runstate.time[runstate::BLOCKED as usize], 2 * MS - 200 * US);

    // b's event is still pending: blocking returns at once.
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);
    assert_eq!((r.next.id, r.dom(b).state, r.hv.m.halts), (b, RunState::Runnable, 1));
    // Handled, it blocks and the CPU halts until a's deadline.
    r.ack_events(b);
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);
    assert_eq!(r.hv.m.halts, 2);
    assert_eq!(r.hv.m.armed[r.hv.m.armed.len() - 2].ns, MS);
    assert_eq!((r.now(), r.next.id), (3 * MS, a));
}

#[test]
fn a_poll_wakes_at_its_timeout_or_when_its_port_is_raised() {
    let mut r = Rig::boot(&[dom("p")]);
    let p = r.id("p");
    let port = r.bind_virq_timer();
    let (ports, args) = (SCRATCH + 0x100, SCRATCH + 0x200);
    r.write_guest(p, ports, port.as_bytes());
    let poll = |timeout| SchedPoll { ports, nr_ports: 1, pad: 0, timeout };
    // No event: it sleeps until the timeout.
    r.write_guest(p, args, poll(2 * MS).as_bytes());
    r.advance(100 * US);
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::POLL, args, 0, 0, 0]), 0);
    assert_eq!(r.hv.m.halts, 1);
    assert_eq!((r.now(), r.next.id), (2 * MS, p));
    assert!(!r.port_pending(p, port));
    assert!(r.dom(p).vcpu.poll_ports.is_empty() && r.dom(p).vcpu.poll_deadline.is_none());
    // Its timer fires first: the polled port wakes it, though its events
    // are masked (polling needs no upcall).
    assert_eq!(r.hypercall(nr::SET_TIMER_OP, [3 * MS, 0, 0, 0, 0]), 0);
    r.write_guest(p, args, poll(10 * MS).as_bytes());
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::POLL, args, 0, 0, 0]), 0);
    assert_eq!(r.hv.m.halts, 2);
    assert_eq!((r.now(), r.next.id), (3 * MS, p));
    assert!(r.port_pending(p, port));
    assert_eq!(r.shared_byte(p, offset_of!(VcpuInfo, evtchn_upcall_mask)), 1, "still masked");
    assert_eq!(r.dom(p).vcpu.poll_deadline, None, "the old timeout no longer wakes it");
}

/// A poll of no ports is a sleep: nothing raised wakes it before its
/// deadline, not even an event its upcall would take.
#[test]
fn a_poll_of_no_ports_sleeps_until_its_deadline() {
    let mut r = Rig::boot(&[dom("p")]);
    let p = r.id("p");
    let port = r.bind_virq_timer();
    // Events enabled: a block would end at the timer's event.
    let info = r.dom(p).shared.mfn * PAGE_SIZE + offset_of!(SharedInfo, vcpu_info) as u64;
    r.hv.m.ram.write(info + offset_of!(VcpuInfo, evtchn_upcall_mask) as u64, &[0]);
    assert_eq!(r.hypercall(nr::SET_TIMER_OP, [3 * MS, 0, 0, 0, 0]), 0);
    let args = SCRATCH + 0x200;
    r.write_guest(p, args, SchedPoll { ports: 0, nr_ports: 0, pad: 0, timeout: 10 * MS }.as_bytes());
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::POLL, args, 0, 0, 0]), 0);
    assert_eq!((r.now(), r.next.id), (10 * MS, p), "the timer's event at 3 ms did not end the sleep");
    assert!(r.port_pending(p, port), "its event waits for it");
}

#[test]
fn each_domain_runs_with_its_own_segment_state_and_kernel_stack() {
    let mut r = Rig::boot(&[dom("a"), dom("b")]);
    let (a, b) = (r.id("a"), r.id("b"));
    let stack = Layout::va(100);
    assert_eq!(r.hypercall(nr::STACK_SWITCH, [u64::from(selectors::GUEST_KERNEL_SS), stack, 0, 0, 0]), 0);
    assert_eq!(r.hv.m.rsp1.last(), Some(&stack));
    assert_eq!(r.hypercall(nr::SET_SEGMENT_BASE, [segbase::FS, 0x1111_0000, 0, 0, 0]), 0);
    let fs = SegmentState { selectors: [0; 4], fs_base: 0x1111_0000, gs_base: 0 };
    assert_eq!(r.hv.m.segment_loads.last(), Some(&(fs, false)), "a new base, loaded at once");
    // a loads a data selector itself (no hypercall).
    r.hv.m.cpu_segments.selectors = [0x2b, 0x2b, 0, 0];
    r.timer_interrupt();
    assert_eq!(r.next.id, b);
    assert_eq!(r.hv.m.segment_loads.last(), Some(&(SegmentState::default(), true)), "b's own, selectors too");
    assert_eq!(r.hv.m.rsp1.last(), Some(&0), "b set no kernel stack");
    assert_eq!(r.hv.m.gates.last(), Some(&None), "no syscall gate");
    r.timer_interrupt();
    assert_eq!(r.next.id, a);
    let back = SegmentState { selectors: [0x2b, 0x2b, 0, 0], ..fs };
    assert_eq!(r.hv.m.segment_loads.last(), Some(&(back, true)), "a's state as it left it");
    assert_eq!(r.hv.m.rsp1.last(), Some(&stack));
}

#[test]
fn the_last_domain_powering_off_ends_the_run_with_a_pass_verdict() {
    let mut r = Rig::boot(&[dom("solo")]);
    let end = r.expect_end(|r| {
        r.hypercall(nr::SCHED_OP, [sched_op::SHUTDOWN, shutdown_reason::POWEROFF, 0, 0, 0]);
    });
    assert!(end.contains("run ended: PASS"), "{end}");
    assert_eq!(r.hv.m.logged("dom1 (solo) exited: poweroff"), 1, "{:#?}", r.hv.m.log);
    assert_eq!(r.hv.m.logged("all domains have ended"), 1);
    assert_eq!(r.hv.m.logged("verdict: PASS"), 1);
}

#[test]
fn every_domain_blocked_with_nothing_to_wake_it_is_a_deadlock_and_fails() {
    let mut r = Rig::boot(&[dom("stuck")]);
    let end = r.expect_end(|r| {
        r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]);
    });
    assert!(end.contains("run ended: FAIL"), "{end}");
    assert_eq!(r.hv.m.logged("deadlock"), 1);
    assert_eq!(r.hv.m.logged("still blocked (never ended)"), 1, "{:#?}", r.hv.m.log);
    assert_eq!(r.hv.m.logged("verdict: FAIL"), 1);
}

#[test]
fn a_double_fault_from_a_guest_is_fatal_to_the_machine() {
    let mut r = Rig::boot(&[dom("a")]);
    let end = r.expect_end(|r| r.interrupt(8));
    assert!(end.contains("fatal hypervisor fault, vector 8"), "{end}");
}

/// Found by this test: the re-pick skipped the RUNNING transition, and the
/// run was counted as RUNNABLE time (lost from virtual time).
#[test]
fn a_domain_woken_in_the_trip_it_blocked_in_runs_with_run_state_running() {
    let mut r = Rig::boot(&[dom("a"), dom("b")]);
    let a = r.id("a");
    r.bind_virq_timer();
    r.advance(MS);
    // A timer 500 ns out (the one-shot is armed for at least 1 us), and a
    // block 600 ns later: the deadline has passed when it blocks, and the
    // timer fires in the same trip through the hypervisor.
    let deadline = r.now() + 500;
    assert_eq!(r.hypercall(nr::SET_TIMER_OP, [deadline, 0, 0, 0, 0]), 0);
    assert_eq!(r.armed().ns, 1_000);
    r.advance(600);
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);
    assert_eq!(r.dom(a).state, RunState::Runnable, "woken by its timer");
    assert_eq!(r.next.id, a, "woken at once, and still ahead of b by less than C");
    assert_eq!(r.dom(a).runstate.state, runstate::RUNNING, "it is running");
    // It runs to its slice end; all of that is run time.
    r.timer_interrupt();
    let switched = r.now();
    assert_ne!(r.next.id, a);
    assert_eq!(r.dom(a).runstate.time[runstate::RUNNING as usize], switched);
}

/// The guest being entered has a port pending with events enabled, and
/// calls `xen_version` from the frame it was entered with; returns that
/// frame.
fn xen_version_with_an_upcall_due(r: &mut Rig) -> Regs {
    let port = r.bind_virq_timer();
    assert_eq!(r.hypercall(nr::SET_CALLBACKS, [CALLBACK, 0, 0, 0, 0]), 0);
    let s = r.slot(r.next.id);
    let shared = r.hv.domains[s].shared;
    shared.set_upcall_mask(&mut r.hv.m.ram, false);
    assert!(shared.raise(&mut r.hv.m.ram, port), "an upcall is due");
    Regs { vector: u64::from(HYPERCALL_VECTOR), rax: nr::XEN_VERSION, rdi: 0, rip: r.frame().rip + 2, ..r.frame() }
}

#[test]
fn the_fast_path_delivers_a_due_upcall_exactly_as_the_full_path_does() {
    let mut full = Rig::boot(&[dom("a")]);
    let f = xen_version_with_an_upcall_due(&mut full);
    full.trap(f);
    let mut fast = Rig::boot(&[dom("a")]);
    let g = xen_version_with_an_upcall_due(&mut fast);
    assert_eq!(f, g, "the same guest state in both");
    let exit = fast.hv.fast_hypercall(nr::XEN_VERSION, [0; 5], || g.iret()).expect("delivered in place");
    let a = fast.next.id;
    assert_eq!(exit.cr3, fast.dom(a).root * PAGE_SIZE);
    // What the CPU-made frame becomes on the way out.
    let mut out = g;
    out.rax = exit.rax.expect("a result");
    out.set_iret(exit.iret.expect("bounced"));
    assert_eq!(out, full.frame(), "same registers: the event callback, rax = the result");
    assert_eq!(out.rip, CALLBACK);
    assert_eq!(out.rax, 1);
    let (mut bf, mut bg) = (BounceFrame::default(), BounceFrame::default());
    full.read_guest(a, full.frame().rsp, bf.as_mut_bytes());
    fast.read_guest(a, out.rsp, bg.as_mut_bytes());
    assert_eq!(bf, bg, "same bounce frame");
    assert_eq!(bg.vector, UPCALL_VECTOR);
    let mask = offset_of!(VcpuInfo, evtchn_upcall_mask);
    assert_eq!((full.shared_byte(a, mask), fast.shared_byte(a, mask)), (1, 1), "delivery masks events");
}

#[test]
fn the_fast_path_leaves_an_undeliverable_upcall_to_the_full_path_which_crashes_the_domain() {
    let mut r = Rig::boot(&[dom("a").expect(Expect::Crash), dom("b")]);
    let f = xen_version_with_an_upcall_due(&mut r);
    // A ring-1 stack the hypervisor cannot write the frame to.
    let f = Regs { rsp: 0x10, ..f };
    assert!(r.hv.fast_hypercall(nr::XEN_VERSION, [0; 5], || f.iret()).is_none());
    let a = r.next.id;
    let mask = offset_of!(VcpuInfo, evtchn_upcall_mask);
    assert_eq!(r.shared_byte(a, mask), 0, "the mask is as it was");
    r.trap(f);
    assert!(matches!(r.hv.records.iter().find(|x| x.id == a).and_then(|x| x.exit), Some(Exit::Crashed(_))));
}

#[test]
fn a_syscall_from_ring_1_is_not_bounced_on_the_fast_path() {
    let mut r = Rig::boot(&[dom("a")]);
    assert_eq!(r.hypercall(nr::SET_CALLBACKS, [CALLBACK, 0, CALLBACK, 0, 0]), 0);
    assert_eq!(r.hypercall(nr::STACK_SWITCH, [u64::from(selectors::GUEST_KERNEL_SS), SCRATCH + 2048, 0, 0, 0]), 0);
    // The CPU's frame for a `syscall`, from the guest kernel's own code.
    let rip = r.frame().rip;
    let f = Regs {
        vector: u64::from(pvguest_abi::trap::SYSCALL_VECTOR),
        rcx: rip + 2,
        rip: rip + 2,
        cs: u64::from(selectors::GUEST_USER_CS),
        ss: u64::from(selectors::GUEST_USER_SS),
        ..r.frame()
    };
    assert!(r.hv.fast_syscall(f.rcx, f.iret()).is_none(), "kernel code: the full path decides");
}

/// Two domains joined by an event channel; `a` runs. Returns the rig and
/// each end's domain and port.
fn channel_pair() -> (Rig, (DomId, u32), (DomId, u32)) {
    use pvguest_abi::event::{AllocUnbound, BindInterdomain};
    let mut r = Rig::boot(&[dom("a"), dom("b")]);
    let (a, b) = (r.id("a"), r.id("b"));
    assert_eq!(r.next.id, a);
    let offer = AllocUnbound { dom: pvguest_abi::DOMID_SELF as u16, remote_dom: b.raw(), port: 0 };
    r.write_guest(a, SCRATCH, offer.as_bytes());
    assert_eq!(r.hypercall(nr::EVENT_CHANNEL_OP, [event::ALLOC_UNBOUND, SCRATCH, 0, 0, 0]), 0);
    let mut pa = 0u32;
    r.read_guest(a, SCRATCH + offset_of!(AllocUnbound, port) as u64, pa.as_mut_bytes());
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]), 0);
    assert_eq!(r.next.id, b);
    let bind = BindInterdomain { remote_dom: a.raw(), pad: 0, remote_port: pa, local_port: 0 };
    r.write_guest(b, SCRATCH, bind.as_bytes());
    assert_eq!(r.hypercall(nr::EVENT_CHANNEL_OP, [event::BIND_INTERDOMAIN, SCRATCH, 0, 0, 0]), 0);
    let mut pb = 0u32;
    r.read_guest(b, SCRATCH + offset_of!(BindInterdomain, local_port) as u64, pb.as_mut_bytes());
    (r, (a, pa), (b, pb))
}

#[test]
fn a_send_to_a_runnable_domain_stays_on_the_fast_path_and_one_to_a_blocked_domain_wakes_it() {
    use pvguest_abi::event::Send;
    let (mut r, (a, pa), (b, pb)) = channel_pair();
    // b sends to a, which is runnable: marked pending in place, no switch.
    r.write_guest(b, SCRATCH, Send { port: pb }.as_bytes());
    let f = r.frame().iret();
    let send = [event::SEND, SCRATCH, 0, 0, 0];
    let exit = r.hv.fast_hypercall(nr::EVENT_CHANNEL_OP, send, || f).expect("in place: a is runnable");
    assert_eq!((exit.rax, exit.iret), (Some(0), None));
    assert!(r.port_pending(a, pa), "a's port is pending");
    assert!(r.hv.cpu.notify.is_empty() && r.hv.cpu.pending_action.is_none());
    assert_eq!(r.dom(a).state, RunState::Runnable);

    // b blocks; a runs and sends back: b is blocked, so the fast path
    // wakes it and asks the scheduler: a keeps the CPU (b is not warped
    // and a is within its allowance), so it resumes in place.
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);
    assert_eq!(r.next.id, a);
    r.ack_events(a);
    r.advance(300 * US);
    r.write_guest(a, SCRATCH, Send { port: pa }.as_bytes());
    let f = r.frame().iret();
    let exit = r.hv.fast_hypercall(nr::EVENT_CHANNEL_OP, [event::SEND, SCRATCH, 0, 0, 0], || f).expect("in place");
    assert_eq!((exit.rax, exit.iret), (Some(0), None));
    assert!(r.port_pending(b, pb));
    assert_eq!(r.dom(b).state, RunState::Runnable, "the send woke b");
    assert!(r.hv.cpu.notify.is_empty() && r.hv.cpu.pending_action.is_none() && !r.hv.cpu.sched_dirty);
    assert_ne!(r.hv.cpu.slice_end, u64::MAX, "a competitor: a slice");
    assert_eq!(r.armed().deadline() - r.hv.boot_tsc, r.hv.cpu.slice_end, "armed for its end");
}

/// A send that wakes the blocked peer decides, accounts and arms the same
/// in place (`in_place`) as on the full path.
/// Also returns how many sends resumed in place.
fn wake_by_send(in_place: bool, warp: bool) -> (Vec<String>, usize) {
    use pvguest_abi::event::Send;
    let (mut r, (a, pa), (b, pb)) = channel_pair();
    if warp {
        let s = r.slot(b);
        r.hv.bvt.set_params(s, Params::warped(DEFAULT_WEIGHT, 10 * MS, MS, 0)).expect("params");
    }
    let mut trace = Vec::new();
    let mut in_place_count = 0;
    for round in 0..20 {
        // b blocks (a runs), a runs a while and sends to b.
        if r.next.id == b {
            r.ack_events(b);
            assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);
        }
        assert_eq!(r.next.id, a);
        r.advance((round % 7 + 1) * 700 * US);
        r.write_guest(a, SCRATCH, Send { port: pa }.as_bytes());
        let send = [event::SEND, SCRATCH, 0, 0, 0];
        let resumed = if in_place {
            let f = r.frame().iret();
            r.hv.fast_hypercall(nr::EVENT_CHANNEL_OP, send, || f).is_some()
        } else {
            false
        };
        in_place_count += usize::from(resumed);
        if !resumed {
            // The full path (for the fast path: with the result it left).
            r.hypercall(nr::EVENT_CHANNEL_OP, send);
        }
        let (sa, sb) = (r.slot(a), r.slot(b));
        trace.push(format!(
            "{round}: next {:?}, pending {}, avt {:?} {:?}, slice {}, armed {:?} for {:?}, runstates {:?} {:?}",
            r.next.id,
            r.port_pending(b, pb),
            r.hv.bvt.avt(sa),
            r.hv.bvt.avt(sb),
            r.hv.cpu.slice_end,
            r.hv.m.armed.last().map(Armed::deadline),
            r.hv.cpu.armed_for,
            r.dom(a).runstate,
            r.dom(b).runstate,
        ));
        if r.next.id == a {
            // a goes on (in place or not) until its slice ends.
            r.timer_interrupt();
        }
    }
    (trace, in_place_count)
}

#[test]
fn a_wake_by_send_in_place_decides_as_the_full_path() {
    for warp in [false, true] {
        let ((fast, resumed), (full, _)) = (wake_by_send(true, warp), wake_by_send(false, warp));
        assert_eq!(fast, full, "warp {warp}");
        // Unwarped, a keeps the CPU: every send resumes in place; warped, b
        // preempts at once: the full path switches.
        assert_eq!(resumed, if warp { 0 } else { 20 }, "warp {warp}");
    }
}

/// `crate::irq` invariant 4 through the trap loop: a device line that is
/// held up for ever while dom0 never EOIs reaches the hypervisor once;
/// the interrupt is masked before the local APIC's EOI, raises dom0's
/// port, is charged to dom0, and the other domain keeps its half of the
/// CPU.
#[test]
fn irq_storm_a_held_line_without_eoi_costs_one_interrupt_and_no_cpu_share() {
    let mut r = Rig::boot(&[dom("dom0").privileged(true), dom("u")]);
    let (d0, u) = (r.id("dom0"), r.id("u"));
    let p = crate::domain::Privilege::of_domain(true).expect("privileged");
    r.hv.irqs = crate::irq::Irqs::init(&mut r.hv.m.ioapic, 1 << 22, 0);
    assert!(r.hv.m.ioapic.masked(22), "masked at boot");
    let s0 = r.slot(d0);
    let port = r.hv.domains[s0].events.bind_pirq(22).expect("a port");
    r.hv.irqs.map_gsi(p, d0, 22, -1).expect("map");
    r.hv.irqs.bind(&mut r.hv.m.ioapic, p, d0, 22, port).expect("bind");
    r.hv.m.ioapic.set_line(22, true);
    let start = r.now();
    for _ in 0..200 {
        // The CPU takes whatever the IOAPIC delivers before the next tick.
        if let Some(v) = r.hv.m.ioapic.deliver() {
            r.hv.m.device_interrupts += 1;
            r.hv.m.in_service.push(v);
            r.interrupt(v);
            assert!(r.hv.m.ioapic.masked(22), "masked from the interrupt on");
            assert_eq!(r.hv.m.in_service, [], "the local APIC was acknowledged");
        } else {
            r.timer_interrupt();
        }
    }
    assert_eq!(r.hv.m.device_interrupts, 1, "one interrupt, not a storm");
    assert!(r.dom(d0).shared.is_pending(&r.hv.m.ram, port), "dom0's port was raised");
    let total = r.now() - start;
    let tu = r.running_ns(u);
    assert!(tu.abs_diff(total / 2) <= 2 * C, "the other domain keeps its half: {tu} of {total}");
}

/// The device store's bootstrap (`StoreInfo`): with a privileged domain in
/// the bundle, it takes id 0, and every other domain gets a port only dom0
/// may bind plus its store page granted read-write to dom0 under the
/// reserved reference; dom0 itself, and every domain of a bundle without a
/// A domU's console page is granted to dom0 under the reserved ref 0; once
/// dom0 takes the console over, the hypervisor drains it no more, and
/// dom0's `WRITE_AS` lines come out tagged with the domU's name.
#[test]
fn dom0_takes_a_console_over_and_writes_as_its_domain() {
    use crate::event::Port;
    use pvguest_abi::domctl;
    use pvguest_abi::grant::{gtf, GrantEntryV1, GNTTAB_RESERVED_CONSOLE};
    let mut r = Rig::boot(&[dom("dom0").privileged(true), dom("u1")]);
    let u1 = r.id("u1");
    let d = r.dom(u1);
    let word = r.hv.m.ram.read_u64(d.grants.frames()[0] * 4096 + u64::from(GNTTAB_RESERVED_CONSOLE) * 8);
    let e = GrantEntryV1::from_word(word);
    assert_eq!((e.flags, e.domid), (gtf::PERMIT_ACCESS, 0), "read-write to dom0");
    assert!(d.console_taken.is_none());
    while r.next.id != DomId::DOM0 {
        r.timer_interrupt();
    }
    // Writing as u1 before the takeover is refused.
    r.write_guest(DomId::DOM0, CTL_ARG, b"from dom0's daemon\n");
    let as_u1 = 19 | (u64::from(u1.raw()) << 32);
    let wa = [pvguest_abi::console_io::WRITE_AS, as_u1, CTL_ARG, 0, 0];
    assert_eq!(r.hypercall(nr::CONSOLE_IO, wa), Errno::EINVAL.to_ret());
    let cport = r.dom(u1).events.console_port().expect("u1's console port");
    let port = r.domctl(domctl::CONSOLE_TAKEOVER, u64::from(u1.raw()));
    assert!(port > 0, "dom0's end of the console channel: {port}");
    assert!(r.dom(u1).console_ring.is_none() && r.dom(u1).console_taken == Some(DomId::DOM0), "the hypervisor lets go");
    // One channel now: u1's port (its number unchanged) and dom0's new one.
    assert_eq!(r.dom(u1).events.get(cport), Ok(Port::Interdomain { remote: DomId::DOM0, port: port as u32 }));
    assert_eq!(r.dom(DomId::DOM0).events.get(port as u32), Ok(Port::Interdomain { remote: u1, port: cport }));
    assert_eq!(r.dom(u1).events.console_port(), None, "no console port for the hypervisor any more");
    assert_eq!(r.domctl(domctl::CONSOLE_TAKEOVER, u64::from(u1.raw())), Errno::EBUSY.to_ret(), "once");
    assert_eq!(r.domctl(domctl::CONSOLE_TAKEOVER, 0), Errno::EINVAL.to_ret(), "not its own");
    assert_eq!(r.hypercall(nr::CONSOLE_IO, wa), 19);
    let out = String::from_utf8_lossy(&r.hv.m.console).into_owned();
    assert!(out.contains("[u1] from dom0's daemon\n"), "{out}");
    assert!(!out.contains("[dom0] from dom0's daemon"), "{out}");
    assert_eq!(r.hv.m.logged("console taken over by dom0"), 1);
}

/// The exit report of a domain whose console dom0 took over waits for
/// dom0 to drain what the domain left in its ring (its teardown's other
/// steps go on meanwhile), and no longer than the grace: a domain whose
/// ring is empty is reported at once, one whose daemon never drains when
/// the grace has run out.
#[test]
fn a_taken_over_consoles_exit_report_waits_for_the_daemon_within_the_grace() {
    use super::CONSOLE_GRACE_NS;
    use pvguest_abi::domctl;
    let mut r = Rig::boot(&[dom("dom0").privileged(true), dom("drained"), dom("stuck"), dom("empty")]);
    let mut ids = Vec::new();
    for name in ["drained", "stuck", "empty"] {
        let id = r.id(name);
        if name != "empty" {
            // The domain left a line in its ring.
            let mfn = r.dom(id).console_mfn;
            r.hv.m.console_unread.push((mfn, 11));
        }
        assert!(r.domctl(domctl::CONSOLE_TAKEOVER, u64::from(id.raw())) > 0, "{name}");
        ids.push(id);
    }
    for &id in &ids {
        let s = r.slot(id);
        r.hv.kill(s, Exit::Crashed("test"));
    }
    let reported = |r: &Rig, name: &str| r.hv.m.logged(&format!("({name}) exited: crash: test"));
    // Teardown runs; nobody drains.
    for _ in 0..50 {
        r.hypercall(nr::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]);
    }
    assert_eq!(reported(&r, "drained"), 0, "held while the ring has output: {:?}", r.hv.m.log);
    assert_eq!(reported(&r, "stuck"), 0);
    assert!(r.hv.domains.get(ids[0]).is_some_and(|d| d.ports_closed), "its other steps went on");
    // The daemon drains the first.
    let mfn = r.dom(ids[0]).console_mfn;
    r.hv.m.console_unread.retain(|&(m, _)| m != mfn);
    r.hypercall(nr::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]);
    assert_eq!(reported(&r, "drained"), 1, "reported once drained: {:?}", r.hv.m.log);
    assert_eq!(reported(&r, "stuck"), 0, "the next waits for its own ring");
    assert_eq!(reported(&r, "empty"), 0, "and the queue is in order");
    r.advance(CONSOLE_GRACE_NS);
    r.reap_all();
    assert_eq!(reported(&r, "stuck"), 1, "reported when the grace ran out");
    assert_eq!(reported(&r, "empty"), 1);
}

/// While a teardown waits for the console daemon, the CPU halts as in any
/// wait (it takes interrupts and fires timers: the daemon may be waiting
/// for its disk) instead of spinning until the grace runs out.
#[test]
fn a_teardown_waiting_for_the_daemon_lets_the_cpu_halt() {
    use pvguest_abi::domctl;
    let mut r = Rig::boot(&[dom("dom0").privileged(true), dom("u")]);
    let u = r.id("u");
    let mfn = r.dom(u).console_mfn;
    r.hv.m.console_unread.push((mfn, 5));
    assert!(r.domctl(domctl::CONSOLE_TAKEOVER, u64::from(u.raw())) > 0);
    let su = r.slot(u);
    r.hv.kill(su, Exit::Crashed("test"));
    // dom0 sleeps until 5 ms from now (as for its device): nothing runs.
    r.bind_virq_timer();
    let info = r.dom(DomId::DOM0).shared.mfn * PAGE_SIZE + offset_of!(SharedInfo, vcpu_info) as u64;
    r.hv.m.ram.write(info + offset_of!(VcpuInfo, evtchn_upcall_mask) as u64, &[0]);
    let (halts, wake) = (r.hv.m.halts, r.now() + 5 * MS);
    assert_eq!(r.hypercall(nr::SET_TIMER_OP, [wake, 0, 0, 0, 0]), 0);
    assert_eq!(r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0]), 0);
    assert!(r.hv.m.halts > halts, "the CPU halted");
    assert_eq!((r.next.id, r.now()), (DomId::DOM0, wake), "dom0 woke at its timer");
    assert_eq!(r.hv.m.logged("(u) exited: crash: test"), 0, "the report still waits");
    assert!(r.hv.reap_wait.is_some());
}

/// A daemon that has ended drains nothing: a domain whose console it took
/// is reported without waiting for the grace.
#[test]
fn a_dead_console_daemon_is_not_waited_for() {
    use pvguest_abi::domctl;
    let mut r = Rig::boot(&[dom("dom0").privileged(true), dom("u"), dom("other")]);
    let u = r.id("u");
    let mfn = r.dom(u).console_mfn;
    r.hv.m.console_unread.push((mfn, 5));
    assert!(r.domctl(domctl::CONSOLE_TAKEOVER, u64::from(u.raw())) > 0);
    let s0 = r.slot(DomId::DOM0);
    r.hv.kill(s0, Exit::Crashed("test"));
    let su = r.slot(u);
    r.hv.kill(su, Exit::Crashed("test"));
    let start = r.now();
    r.reap_all();
    assert_eq!(r.hv.m.logged("(u) exited: crash: test"), 1, "{:?}", r.hv.m.log);
    assert!(r.now() - start < super::CONSOLE_GRACE_NS, "no wait for the grace");
}

/// privileged one, gets none.
#[test]
fn store_every_domu_gets_a_port_for_dom0_and_its_store_page_granted_under_the_reserved_ref() {
    use crate::event::Port;
    use pvguest_abi::grant::{gtf, GrantEntryV1, GNTTAB_RESERVED_XENSTORE};
    let r = Rig::boot(&[dom("u1"), dom("dom0").privileged(true), dom("u2")]);
    assert_eq!(r.id("dom0"), DomId::DOM0, "the privileged domain is dom0 wherever it is in the bundle");
    assert_eq!(r.dom(DomId::DOM0).store_evtchn, None, "dom0 runs the store: no connection of its own");
    assert!(r.dom(DomId::DOM0).grants.frames().is_empty());
    let mut pages = Vec::new();
    for name in ["u1", "u2"] {
        let d = r.dom(r.id(name));
        let port = d.store_evtchn.expect("a store port");
        assert_eq!(d.events.get(port), Ok(Port::Unbound { remote: DomId::DOM0 }), "{name}: only dom0 may bind it");
        let table = d.grants.frames();
        assert_eq!(table.len(), 1, "{name}: the builder made the table's first frame");
        let word = r.hv.m.ram.read_u64(table[0] * 4096 + u64::from(GNTTAB_RESERVED_XENSTORE) * 8);
        let e = GrantEntryV1::from_word(word);
        assert_eq!((e.flags, e.domid), (gtf::PERMIT_ACCESS, 0), "{name}: read-write to dom0");
        let frames = r.hv.frames.as_ref().expect("frame table");
        let owner = frames.get(u64::from(e.frame)).map(|f| f.owner);
        assert_eq!(owner, Ok(crate::mm::frames::Owner::Domain(d.id)), "{name}: its own frame");
        pages.push(e.frame);
    }
    assert_ne!(pages[0], pages[1]);

    let r = Rig::boot(&[dom("a"), dom("b")]);
    for name in ["a", "b"] {
        let d = r.dom(r.id(name));
        assert_eq!(d.store_evtchn, None, "{name}: no privileged domain, no store");
        assert!(d.grants.frames().is_empty(), "{name}: no table made for it");
    }
}

/// The privileged domain maps a store page and a console page of every
/// other domain (1000 and more): its maptrack quota is the largest; the
/// others keep the default.
#[test]
fn the_privileged_domain_may_map_the_pages_of_a_thousand_domains() {
    use crate::grant::{DEFAULT_MAPTRACK, MAX_MAPTRACK};
    let r = Rig::boot(&[dom("dom0").privileged(true), dom("u")]);
    assert_eq!(r.dom(DomId::DOM0).maptrack.quota(), MAX_MAPTRACK);
    assert!(MAX_MAPTRACK >= 2 * super::MAX_DOMAINS as u32, "two pages of each domain");
    assert_eq!(r.dom(r.id("u")).maptrack.quota(), DEFAULT_MAPTRACK);
}

/// A privileged domain that cannot be built runs no store: the others get
/// no store page granted to a domain that does not exist (they would wait
/// on it for ever).
#[test]
fn no_store_connections_when_the_privileged_domain_is_not_built() {
    let bad = DomainEntry::new("dom0", b"\x7fELF but not really an image".to_vec(), DOM_KIB).privileged(true);
    let r = Rig::boot(&[dom("u1"), bad, dom("u2")]);
    assert!(r.hv.domains.get(DomId::DOM0).is_none(), "dom0 was not built");
    assert_eq!(r.hv.store_backend, None);
    for name in ["u1", "u2"] {
        let d = r.dom(r.id(name));
        assert_eq!(d.store_evtchn, None, "{name}: no store connection");
        assert!(d.grants.frames().is_empty(), "{name}: no table made for it");
    }
    assert!(r.hv.m.log.iter().any(|l| l.contains("the privileged domain was not built")));
}

/// `VIRQ_DOM_EXC`: dom0 hears when another domain ends (its
/// `GETDOMAININFO` changed), not when it ends itself.
#[test]
fn dom_exc_tells_dom0_when_another_domain_ends() {
    use pvguest_abi::event::VIRQ_DOM_EXC;
    let mut r = Rig::boot(&[dom("dom0").privileged(true), dom("u")]);
    let s0 = r.slot(DomId::DOM0);
    let port = r.hv.domains[s0].events.bind_virq(VIRQ_DOM_EXC).expect("bound");
    assert!(!r.dom(DomId::DOM0).shared.is_pending(&r.hv.m.ram, port));
    let su = r.slot(r.id("u"));
    r.hv.kill(su, Exit::Crashed("test"));
    assert!(r.dom(DomId::DOM0).shared.is_pending(&r.hv.m.ram, port), "dom0 was told");
}

/// A scripted mix of yields, blocks (with and without a timer to end
/// them, with events pending or not), timer interrupts and other
/// hypercalls over three domains (one warped, one heavier), with the fused
/// switch path on or off: what each step decided and every account after
/// it.
fn give_up_cpu_script(fused: bool) -> Vec<String> {
    let mut r = Rig::boot(&[dom("a"), dom("b").warp_us(2_000), dom("c").weight(300)]);
    r.hv.fused = fused;
    let ids = [r.id("a"), r.id("b"), r.id("c")];
    // Each binds its timer's virtual IRQ and sets an event callback the
    // first time it runs.
    let mut bound = Vec::new();
    while bound.len() < 3 {
        if !bound.contains(&r.next.id) {
            r.bind_virq_timer();
            assert_eq!(r.hypercall(nr::SET_CALLBACKS, [CALLBACK, 0, 0, 0, 0]), 0);
            bound.push(r.next.id);
        }
        r.timer_interrupt();
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut trace = Vec::new();
    for step in 0..600 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        r.advance(500 + rng % 900 * US);
        let caller = r.next.id;
        let ret = match rng % 7 {
            0 | 1 => r.hypercall(nr::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]),
            2 => {
                // A timer to wake it (unless an event is pending already).
                r.hypercall(nr::SET_TIMER_OP, [r.now() + rng % 3_000 * US + 1, 0, 0, 0, 0]);
                r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0])
            }
            3 => {
                r.ack_events(caller);
                let alive = ids.iter().filter(|&&id| r.dom(id).state == RunState::Runnable).count();
                if alive < 2 {
                    r.hypercall(nr::SET_TIMER_OP, [r.now() + 200 * US, 0, 0, 0, 0]);
                }
                r.hypercall(nr::SCHED_OP, [sched_op::BLOCK, 0, 0, 0, 0])
            }
            4 => {
                r.timer_interrupt();
                0
            }
            5 => r.hypercall(nr::XEN_VERSION, [0; 5]),
            _ => r.hypercall(nr::SCHED_OP, [sched_op::POLL + 100, 0, 0, 0, 0]),
        };
        let mut line = format!("{step}: {caller:?} -> {ret}, next {:?} at {}", r.next.id, r.now());
        for &id in &ids {
            let d = r.dom(id);
            let s = r.slot(id);
            line += &format!(
                " | {:?} {:?} {:?} avt {:?} evt {:?} warped {} timer {:?} rax {:#x} rip {:#x}",
                d.state,
                d.runstate,
                d.wakes.count,
                r.hv.bvt.avt(s),
                r.hv.bvt.evt(s),
                r.hv.bvt.is_warped(s),
                d.vcpu.timer,
                d.regs.rax,
                d.regs.rip,
            );
        }
        let c = &r.hv.cpu;
        line += &format!(
            " | cpu {:?} {:?} {:?} {} {} armed {:?}",
            c.current,
            c.meter,
            c.armed_for,
            c.slice_end,
            c.armed_tsc,
            r.hv.m.armed.last()
        );
        trace.push(line);
    }
    trace
}

#[test]
fn the_fused_yield_and_block_path_decides_as_the_general_path() {
    let (fused, general) = (give_up_cpu_script(true), give_up_cpu_script(false));
    for (f, g) in fused.iter().zip(&general) {
        assert_eq!(f, g, "the fused path (left) and the general path (right) parted");
    }
    assert_eq!(fused.len(), general.len());
    // The script exercised what it is meant to.
    let switches = fused.windows(2).filter(|w| w[0].split(" next ").nth(1) != w[1].split(" next ").nth(1)).count();
    assert!(switches > 100, "{switches} switches");
    assert!(fused.iter().any(|l| l.contains("Blocked")), "blocks");
}

/// Where the toolstack tests keep the `CreateDomain` request, the command
/// line and the image in dom0 (free pages past the tiny image's own).
const CTL_ARG: u64 = GUEST_KERNEL_BASE + 90 * PAGE_SIZE;
const CTL_CMDLINE: u64 = CTL_ARG + 0x800;
const CTL_IMAGE: u64 = GUEST_KERNEL_BASE + 92 * PAGE_SIZE;

impl Rig {
    /// dom0 (the domain being entered) asks for a domain built from
    /// `image` (put in its memory first) named `name`: the hypercall's
    /// result once every continuation round ran, and the request as the
    /// hypervisor left it. [`Rig::rounds`] counts its continuations.
    fn create(&mut self, name: &str, image: &[u8], flags: u32) -> (i64, pvguest_abi::domctl::CreateDomain) {
        use pvguest_abi::domctl::{self, CreateDomain};
        use zerocopy::FromBytes;
        while self.next.id != DomId::DOM0 {
            self.timer_interrupt();
        }
        let mut c = CreateDomain {
            image: CTL_IMAGE,
            image_len: image.len() as u64,
            cmdline: CTL_CMDLINE,
            cmdline_len: 7,
            mem_kib: DOM_KIB,
            flags,
            ..Default::default()
        };
        pvguest_abi::start_info::fill_c_str(&mut c.name, name);
        self.write_guest(DomId::DOM0, CTL_ARG, c.as_bytes());
        self.write_guest(DomId::DOM0, CTL_CMDLINE, b"x=1 y=2");
        self.write_guest(DomId::DOM0, CTL_IMAGE, image);
        let mut rax = self.hypercall(nr::DOMCTL, [domctl::CREATEDOMAIN, CTL_ARG, 0, 0, 0]);
        let mut rounds = 0;
        while rax == nr::DOMCTL as i64 {
            rounds += 1;
            assert!(rounds < 10_000, "the create never finishes");
            // dom0 yielded to the scheduler; when it is entered again it
            // re-executes the hypercall.
            while self.next.id != DomId::DOM0 {
                self.timer_interrupt();
            }
            rax = self.int82();
        }
        self.rounds = rounds;
        let mut back = [0u8; core::mem::size_of::<CreateDomain>()];
        self.read_guest(DomId::DOM0, CTL_ARG, &mut back);
        (rax, CreateDomain::read_from_bytes(&back).expect("sized"))
    }

    /// dom0 runs `domctl(cmd, arg)`.
    fn domctl(&mut self, cmd: u64, arg: u64) -> i64 {
        while self.next.id != DomId::DOM0 {
            self.timer_interrupt();
        }
        self.hypercall(nr::DOMCTL, [cmd, arg, 0, 0, 0])
    }

    /// Runs the scheduler until every teardown is done.
    fn reap_all(&mut self) {
        for _ in 0..100_000 {
            if self.hv.reaping.is_empty() {
                return;
            }
            if self.next.id == DomId::DOM0 {
                self.hypercall(nr::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]);
            } else {
                self.timer_interrupt();
            }
        }
        panic!("teardown never finished");
    }
}

/// The toolstack's life cycle: a domain created at run time from an
/// image in dom0's memory runs; pause keeps it off the CPU, unpause gives
/// it back; destroy ends it and its teardown returns every frame and
/// port, over many cycles (slots and ids reused, no id twice).
#[test]
fn domains_created_and_destroyed_at_run_time_leak_nothing() {
    use pvguest_abi::domctl::{self, dominf, DomainInfo, PhysInfo};
    use zerocopy::FromBytes;
    let mut r = Rig::boot(&[dom("dom0").privileged(true), dom("tmpl").template(true)]);
    assert_eq!(r.hv.domains.len(), 1, "a template is not started");
    let frames_before = r.hv.frames.as_ref().unwrap().free_count();
    let ports_before: u32 = r.hv.domains.iter().map(|(_, _, d)| d.events.in_use()).sum();
    let mut seen = Vec::new();
    for cycle in 0..40 {
        let (rax, c) = r.create("guest", &tiny_elf(), 0);
        assert_eq!(rax, 0, "cycle {cycle}: {}", c.reason());
        let id = DomId::of(c.domid as u16);
        assert!(!seen.contains(&id), "id {id} handed out twice");
        seen.push(id);
        let d = r.dom(id);
        assert_eq!((d.state, d.expect, d.name.as_str()), (RunState::Runnable, crate::domain::Expect::Managed, "guest"));
        // dom0 sees it, with its flags and scheduling parameters.
        let info = SCRATCH;
        r.write_guest(DomId::DOM0, info, DomainInfo { domid: c.domid, ..Default::default() }.as_bytes());
        assert_eq!(r.domctl(domctl::GETDOMAININFO, info), 0);
        let mut b = [0u8; core::mem::size_of::<DomainInfo>()];
        r.read_guest(DomId::DOM0, info, &mut b);
        let got = DomainInfo::read_from_bytes(&b).unwrap();
        assert_eq!(
            (got.domid, got.name(), got.weight, got.flags & dominf::DYING),
            (c.domid, "guest", DEFAULT_WEIGHT, 0)
        );
        if cycle % 2 == 0 {
            // Paused: never entered, even when dom0 gives the CPU away.
            assert_eq!(r.domctl(domctl::PAUSEDOMAIN, u64::from(c.domid)), 0);
            assert_eq!(r.dom(id).state, RunState::Paused);
            for _ in 0..5 {
                r.hypercall(nr::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]);
                assert_ne!(r.next.id, id, "a paused domain ran");
            }
            assert_eq!(r.domctl(domctl::UNPAUSEDOMAIN, u64::from(c.domid)), 0);
            assert_eq!(r.dom(id).state, RunState::Runnable);
        }
        assert_eq!(r.domctl(domctl::DESTROYDOMAIN, u64::from(c.domid)), 0);
        assert!(matches!(r.dom(id).state, RunState::Dead(Exit::Destroyed)));
        // Destroying it again while it is torn down is not an error.
        assert_eq!(r.domctl(domctl::DESTROYDOMAIN, u64::from(c.domid)), 0);
        r.reap_all();
        assert!(r.hv.domains.get(id).is_none(), "reaped");
        assert_eq!(r.domctl(domctl::DESTROYDOMAIN, u64::from(c.domid)), Errno::ESRCH.to_ret());
    }
    assert_eq!(r.hv.frames.as_ref().unwrap().free_count(), frames_before, "frames lost");
    let ports_after: u32 = r.hv.domains.iter().map(|(_, _, d)| d.events.in_use()).sum();
    assert_eq!(ports_after, ports_before, "ports lost");
    // PHYSINFO reports the same figures.
    r.write_guest(DomId::DOM0, SCRATCH, PhysInfo::default().as_bytes());
    assert_eq!(r.domctl(domctl::PHYSINFO, SCRATCH), 0);
    let mut b = [0u8; core::mem::size_of::<PhysInfo>()];
    r.read_guest(DomId::DOM0, SCRATCH, &mut b);
    let p = PhysInfo::read_from_bytes(&b).unwrap();
    assert_eq!(
        (p.free_frames, p.domains, p.dying, p.ports_in_use),
        (frames_before as u64, 1, 0, u64::from(ports_before))
    );
}

/// A create whose image takes several budgets continues (the guest sees
/// one hypercall); a bad image, a created domain that does not fit and an
/// image dom0 cannot read each fail with their reason and leave nothing.
#[test]
fn creates_continue_and_fail_cleanly() {
    use pvguest_abi::domctl;
    let mut r = Rig::boot(&[dom("dom0").privileged(true), dom("other")]);
    let free = r.hv.frames.as_ref().unwrap().free_count();
    let domains = r.hv.domains.len();
    // Each TSC read moves the clock on: the copy runs out of budget.
    set_tsc_step(20_000);
    let mut big = tiny_elf();
    big.resize(120 * 1024, 0);
    while r.next.id != DomId::DOM0 {
        r.timer_interrupt();
    }
    let (rax, c) = r.create("big", &big, domctl::create::PAUSED);
    set_tsc_step(0);
    assert_eq!(rax, 0, "{}", c.reason());
    // Each TSC read moves the clock a good part of the budget on, so a
    // round stops after a few units: 16 KiB of image or one frame zeroed.
    let units = (big.len() / 16384) as u32 + DOM_KIB / 4;
    assert!(r.rounds * 4 >= units, "the copy and the zeroing continued ({} rounds for {units} units)", r.rounds);
    let id = DomId::of(c.domid as u16);
    assert_eq!(r.dom(id).state, RunState::Paused, "built paused");
    assert!(r.hv.m.logged("not created") == 0);
    assert_eq!(r.domctl(domctl::DESTROYDOMAIN, u64::from(c.domid)), 0);
    r.reap_all();
    assert_eq!(r.hv.frames.as_ref().unwrap().free_count(), free);
    // Not an ELF image.
    let (rax, c) = r.create("bad", b"\x7fELF but not an image at all, really", 0);
    assert_eq!(rax, Errno::EINVAL.to_ret());
    assert!(c.reason().contains("ELF") || c.reason().contains("image"), "{}", c.reason());
    // The image lies partly outside dom0's memory.
    while r.next.id != DomId::DOM0 {
        r.timer_interrupt();
    }
    let mut req =
        domctl::CreateDomain { image: CTL_IMAGE, image_len: 64 << 20, mem_kib: DOM_KIB, ..Default::default() };
    req.image_len = domctl::MAX_CREATE_IMAGE;
    pvguest_abi::start_info::fill_c_str(&mut req.name, "far");
    r.write_guest(DomId::DOM0, CTL_ARG, req.as_bytes());
    let rax = r.hypercall(nr::DOMCTL, [domctl::CREATEDOMAIN, CTL_ARG, 0, 0, 0]);
    assert_eq!(rax, Errno::EFAULT.to_ret());
    // A continuation that is not the one under way.
    let rax = r.hypercall(nr::DOMCTL, [domctl::CREATEDOMAIN, CTL_ARG, 16384, 0, 0]);
    assert_eq!(rax, Errno::EINVAL.to_ret());
    // A create given up part-way through its zeroing (the caller starts
    // another) frees the frames it had taken.
    let before = r.hv.frames.as_ref().unwrap().free_count();
    set_tsc_step(20_000);
    let tiny = tiny_elf();
    let mut req =
        domctl::CreateDomain { image: CTL_IMAGE, image_len: tiny.len() as u64, mem_kib: DOM_KIB, ..Default::default() };
    pvguest_abi::start_info::fill_c_str(&mut req.name, "dropped");
    r.write_guest(DomId::DOM0, CTL_IMAGE, &tiny);
    r.write_guest(DomId::DOM0, CTL_ARG, req.as_bytes());
    let mut rax = r.hypercall(nr::DOMCTL, [domctl::CREATEDOMAIN, CTL_ARG, 0, 0, 0]);
    for _ in 0..3 {
        assert_eq!(rax, nr::DOMCTL as i64, "still under way");
        while r.next.id != DomId::DOM0 {
            r.timer_interrupt();
        }
        rax = r.int82();
    }
    set_tsc_step(0);
    let held = r.hv.creating.as_ref().map_or(0, |j| j.zeroed.len());
    assert!(held > 0, "the zeroing had begun");
    assert_eq!(r.hv.frames.as_ref().unwrap().free_count(), before - held);
    let (rax, c) = r.create("bad2", b"\x7fELF not an image", 0);
    assert_eq!(rax, Errno::EINVAL.to_ret(), "{}", c.reason());
    assert_eq!(r.hv.frames.as_ref().unwrap().free_count(), before, "the abandoned create's frames are free again");
    // A domain of more than half the free memory: its frames, taken and
    // zeroed first, are all the build needs (it must not ask for as many
    // free ones again).
    let free_now = r.hv.frames.as_ref().unwrap().free_count() as u32;
    let big_kib = free_now * 3 / 4 * 4;
    let elf = tiny_elf();
    r.write_guest(DomId::DOM0, CTL_IMAGE, &elf);
    let mut req =
        domctl::CreateDomain { image: CTL_IMAGE, image_len: elf.len() as u64, mem_kib: big_kib, ..Default::default() };
    pvguest_abi::start_info::fill_c_str(&mut req.name, "large");
    r.write_guest(DomId::DOM0, CTL_ARG, req.as_bytes());
    let mut rax = r.hypercall(nr::DOMCTL, [domctl::CREATEDOMAIN, CTL_ARG, 0, 0, 0]);
    while rax == nr::DOMCTL as i64 {
        while r.next.id != DomId::DOM0 {
            r.timer_interrupt();
        }
        rax = r.int82();
    }
    let mut out = domctl::CreateDomain::default();
    r.read_guest(DomId::DOM0, CTL_ARG, out.as_mut_bytes());
    assert_eq!(rax, 0, "{} KiB with {free_now} frames free: {}", big_kib, out.reason());
    assert_eq!(r.domctl(domctl::DESTROYDOMAIN, u64::from(out.domid)), 0);
    r.reap_all();
    // And more than there is: refused before any frame is zeroed.
    req.mem_kib = (free_now + 64) * 4;
    while r.next.id != DomId::DOM0 {
        r.timer_interrupt();
    }
    r.write_guest(DomId::DOM0, CTL_ARG, req.as_bytes());
    let rax = r.hypercall(nr::DOMCTL, [domctl::CREATEDOMAIN, CTL_ARG, 0, 0, 0]);
    let mut out = domctl::CreateDomain::default();
    r.read_guest(DomId::DOM0, CTL_ARG, out.as_mut_bytes());
    assert_eq!(rax, Errno::ENOMEM.to_ret(), "{}", out.reason());
    assert!(out.reason().starts_with("not enough free memory"), "{}", out.reason());
    assert!(r.hv.creating.is_none());
    // An empty command line is not read, wherever it points.
    let elf = tiny_elf();
    r.write_guest(DomId::DOM0, CTL_IMAGE, &elf);
    let mut req = domctl::CreateDomain {
        image: CTL_IMAGE,
        image_len: elf.len() as u64,
        cmdline: 1,
        cmdline_len: 0,
        mem_kib: DOM_KIB,
        ..Default::default()
    };
    pvguest_abi::start_info::fill_c_str(&mut req.name, "bare");
    r.write_guest(DomId::DOM0, CTL_ARG, req.as_bytes());
    assert_eq!(r.hypercall(nr::DOMCTL, [domctl::CREATEDOMAIN, CTL_ARG, 0, 0, 0]), 0);
    let mut out = domctl::CreateDomain::default();
    r.read_guest(DomId::DOM0, CTL_ARG, out.as_mut_bytes());
    assert_eq!(r.domctl(domctl::DESTROYDOMAIN, u64::from(out.domid)), 0);
    r.reap_all();
    // Only dom0 may: the other domain gets EPERM.
    while r.next.id == DomId::DOM0 {
        r.hypercall(nr::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]);
    }
    assert_eq!(r.hypercall(nr::DOMCTL, [domctl::CREATEDOMAIN, CTL_ARG, 0, 0, 0]), Errno::EPERM.to_ret());
    assert_eq!(r.hv.domains.len(), domains);
    assert_eq!(r.hv.frames.as_ref().unwrap().free_count(), free, "nothing leaked");
    assert!(r.hv.creating.is_none());
}
