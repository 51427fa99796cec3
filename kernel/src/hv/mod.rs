//! The running hypervisor: domain table, trap handling, events, timers and
//! scheduling.
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
//! # One trip through the hypervisor
//! 1. Charge the running domain for the time since it was entered.
//! 2. Handle the trap: hypercall, timer, bounced exception or `syscall`,
//!    and charge that work to the domain that trapped (or, for a timer
//!    interrupt armed for another domain's deadline, to that domain).
//!    If the domain that trapped has console output waiting, drain it
//!    now, charged to it.
//! 3. Fire expired timers against the time after that work (events for
//!    their domains, waking them; each charged to its domain).
//! 4. Charge what is left to the running domain, then pick the next one; if
//!    none is runnable, drain leftover console output, then halt until a
//!    timer fires (idle time is nobody's). A picked domain with console
//!    output waiting has it drained first, in its time; if a deadline
//!    passed meanwhile, its timers fire and the pick is made again.
//! 5. Deliver a pending event upcall to it, load its per-domain CPU state
//!    (segment bases, syscall gate, ring-1 stack), arm the one-shot timer
//!    for the nearest deadline, and return to it.
//!
//! # Fast paths
//! Some entries never make that trip: the hypercalls of
//! [`fast_path_hypercall`] ([`Hv::fast_hypercall`]) and a `syscall` from
//! ring 3 ([`Hv::fast_syscall`]) run under the lock on the CPU-made frame
//! in place and return straight to the same domain. Their invariants:
//! - Nothing that can change the pick happens on them (no wake, block,
//!   yield, death, timer or console work; a port to raise in another
//!   domain, console output or a failed bounce sends the entry to the full
//!   path, which starts from the CPU-made frame again).
//! - Time is not sampled and nothing is charged: the meter's mark stays
//!   where it was, so the next full entry charges the whole interval to the
//!   running domain, which is the one that did the work. Every deadline
//!   (slice end, timers, virtual-time alarm) is still enforced by the armed
//!   one-shot timer, whose interrupt is taken as soon as the guest runs.
//! - While a domain runs, the CPU-made frame is the truth and its saved
//!   [`Domain::regs`] are stale: they are only read after a full entry has
//!   copied the frame in. A fast path changes only `rax` and, when it
//!   bounces (a `syscall` to its callback, a due upcall to the event
//!   callback, exactly as the full path would), the `iretq` part, which it
//!   sanitises like every other return frame.
//!
//! # Console draining and latency
//! A domain's console ring is drained in that domain's time only (when it
//! traps, when it is picked, or when the CPU would idle), in steps of
//! [`STEP_WORK`], at most one budget per trip, and no step starts once the
//! armed deadline has passed. So a flooding domain pays for its output
//! and delays another domain's wake-up by one step at most: draining
//! everyone's output on every trip, as an earlier version did, charged
//! the right domain but made a warped domain wait for a neighbour's
//! flood (a 4.8x worse wake-up latency in the `isolation-seed` runs).
//!
//! The accounting rule is [`crate::sched::account`]'s: every ns belongs
//! to exactly one domain or to idle. No hypercall runs past
//! [`hypercall::BUDGET_NS`] plus one unit of work (see
//! [`crate::hypercall`]); the longest stretch spent in the
//! hypervisor between a guest's entry and the next exit to a guest (idle
//! halts excluded) is measured on every locked path and printed in the
//! final report.
//!
//! # Where validation happens
//! - Hypercall arguments: [`crate::hypercall::dispatch`].
//! - Guest pointers: [`crate::mm::guest_mem::GuestView`].
//! - Handler addresses and stacks: [`crate::domain::vcpu`].
//! - Return frames: [`crate::regs::Regs::sanitize`], on every exit.
//! - PCI configuration addresses and writes (dom0's): [`crate::pci`].
//! - Pirqs, their ports and EOIs (dom0's): [`crate::irq`].
//!
//! # Device interrupts
//! A device vector ([`crate::irq::gsi_of_vector`]) taken while a guest
//! runs comes through [`Hv::on_trap`]; one taken while the CPU is halted
//! is left unacknowledged by the machine and collected after the halt
//! ([`Machine::take_irq`]). Either way [`crate::irq::Irqs::interrupt`]
//! masks the line, then the local APIC is acknowledged, then the owner's
//! port is raised (waking it if it waits), and the work is charged to the
//! line's owner (dom0), not to whoever was running.

mod machine;
mod report;

pub use machine::Machine;

use crate::builder::{self, DomainConfig};
use crate::console::{ConsoleOut, BYTE_WORK, STEP_WORK};
use crate::domain::table::Vacant;
use crate::domain::vcpu::Vcpu;
use crate::domain::{DomId, DomainTable, Exit, Expect, Fault, Privilege, RunState};
use crate::event::Port;
use crate::event::{Closed, EventChannels, SharedPage};
use crate::grant::{
    CopyOp, Gnttab, GrantDomains, GrantError, GrantTable, MapRequest, Maptrack, DEFAULT_GRANT_FRAMES, DEFAULT_MAPTRACK,
    MAX_MAPTRACK,
};
use crate::hvlog;
use crate::hypercall::{self, Action};
use crate::irq::{self, Irqs};
use crate::mm::frames::{FrameTable, Mfn};
use crate::mm::guest_mem::{GuestVa, GuestView, PhysMem, Remembered};
use crate::mm::{Foreign, Mm, MmuExtOp};
use crate::pci::{ConfigAddr, Dom0Mmio, Forbidden, Pci};
use crate::regs::{FxArea, IretFrame, Regs as TrapFrame, RFLAGS_FIXED, RFLAGS_IF};
use crate::sched::account::Meter;
use crate::sched::bvt::{Bvt, Params, DEFAULT_CTX_ALLOWANCE_NS};
use crate::sched::heap::IndexedHeap;
use crate::time::TscScale;
use crate::trap::{bounce_iret_remembered, Bounce};
use core::fmt::Write as _;
use pvguest_abi::event::{VIRQ_DOM_EXC, VIRQ_TIMER, VIRQ_VTIMER};
use pvguest_abi::grant::{gtf, GrantEntryV1, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
use pvguest_abi::mmu::{MmuUpdate, MmuextOp};
use pvguest_abi::shared_info::VcpuTimeInfo;
use pvguest_abi::trap::{SYSCALL_VECTOR, UPCALL_VECTOR};
use pvguest_abi::vcpu::{runstate, RunstateInfo};
use pvguest_abi::{hypercall as nr, selectors, Errno, HYPERCALL_VECTOR, NULL_TRAP_VECTOR};
use ring_protocol::ByteChannel;
use ringfence_bundle::Bundle;

/// The local APIC timer's interrupt vector (above every vector a guest
/// may name in its trap table or raise with `int`).
pub const TIMER_VECTOR: u8 = 0xf0;
/// The local APIC's spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Most domains alive at once (any number may be created over time: a
/// slot is reused once its domain has been reaped).
pub const MAX_DOMAINS: usize = 1024;
/// Domains the final report lists one by one (later ones are counted).
pub const MAX_RECORDS: usize = 2048;

/// Templates of the boot bundle the toolstack is offered at most.
pub const MAX_TEMPLATES: usize = 64;

/// Why a build failed, in words (what `CREATEDOMAIN` writes back).
pub type Reason = heapless::String<96>;

/// What [`Hv::build_domain`] builds: a boot bundle record's fields, or a
/// toolstack's validated request.
struct Build<'s> {
    name: &'s str,
    image: &'s [u8],
    cmdline: &'s str,
    mem_kib: u32,
    dma_kib: u32,
    weight: u32,
    warp_us: u32,
    privileged: bool,
    expect: Expect,
    /// Built paused (`domctl::create::PAUSED`).
    paused: bool,
}

/// A `CREATEDOMAIN` under way: the request, and its image as copied so far
/// (continuation rounds add [`domctl::CREATE_CHUNK`] bytes per unit).
struct CreateJob {
    caller: DomId,
    arg: u64,
    req: hypercall::CreateReq,
    cmdline: alloc::string::String,
    image: alloc::vec::Vec<u8>,
    /// The new domain's frames, taken for the hypervisor and zeroed in
    /// units after the copy; its build hands them over. A job given up
    /// frees them ([`Hv::cancel_create`]).
    zeroed: alloc::vec::Vec<Mfn>,
}

impl CreateJob {
    /// What its rounds have done so far, the continuation's third
    /// argument: image bytes copied plus frames zeroed.
    fn progress(&self) -> u64 {
        self.image.len() as u64 + self.zeroed.len() as u64
    }
}

/// BVT parameters of weight `weight` and warp `warp_us` (0: none).
fn sched_params(weight: u32, warp_us: u32) -> Params {
    if warp_us == 0 {
        Params::weighted(weight)
    } else {
        Params::warped(weight, u64::from(warp_us) * 1000, WARP_LIMIT_NS, UNWARP_NS)
    }
}

/// Longest the one-shot timer is ever armed for (so time is sampled).
const MAX_ARM_NS: u64 = 50_000_000;
/// Frame-table entries scanned per step of a dead domain's teardown (about
/// 4 000 instructions: one step per scheduling decision, so this is what a
/// teardown can delay a deadline by).
const REAP_STEP: usize = 512;
/// Grant mappings of a dead domain released per teardown step.
const MAPPINGS_PER_REAP_STEP: usize = 32;
/// Ports of a dead domain closed per teardown step (each reverts a peer's
/// end to unbound).
const PORTS_PER_REAP_STEP: usize = 64;
/// How long the exit report of a domain whose console was taken over waits
/// for the console daemon to drain what the domain left in its ring (so
/// its last lines come out before the report, as they do from a ring the
/// hypervisor drains). A daemon that does not drain only delays the report
/// (and the teardowns queued behind it); one that has ended is not waited
/// for.
pub const CONSOLE_GRACE_NS: u64 = 1_000_000_000;
/// Warp limit L of a warped domain: the longest it runs warped per wake.
const WARP_LIMIT_NS: u64 = 2_000_000;
/// Unwarp requirement U: real time between warps.
const UNWARP_NS: u64 = 5_000_000;

/// One domain.
pub struct Domain {
    pub id: DomId,
    /// Every machine frame it has owned lies in `span.0..span.1`: its
    /// build's ([`builder::Built::span`]) and, from its end, its grant
    /// table's. Its teardown scans only these frame-table entries.
    pub span: (Mfn, Mfn),
    /// Its line in the final report (`None`: past [`MAX_RECORDS`]).
    pub record: Option<usize>,
    pub name: heapless::String<32>,
    pub expect: Expect,
    pub state: RunState,
    /// Its privilege (see [`Privilege`]).
    pub privilege: Option<Privilege>,
    pub nr_pages: u64,
    /// Machine frame of the PML4 the domain runs on.
    pub root: Mfn,
    pub shared: SharedPage,
    pub regs: TrapFrame,
    pub fx: FxArea,
    pub vcpu: Vcpu,
    pub events: EventChannels,
    /// Console output: line assembly and rate limit.
    pub console: ConsoleOut,
    /// The back end of the console page (`None`: no page, or the guest
    /// broke the ring protocol and the console was cut off).
    pub console_ring: Option<ByteChannel<'static>>,
    /// The privileged domain took its console over (`CONSOLE_TAKEOVER`):
    /// `console_ring` is `None` for good, and that domain may write
    /// console output as this one (`console_io` `WRITE_AS`).
    pub console_taken: Option<DomId>,
    /// Its console page's frame (the builder's; the domain's own).
    pub console_mfn: Mfn,
    /// A domain that ended with its console taken over: until when its
    /// exit report waits for the daemon to drain the ring
    /// ([`CONSOLE_GRACE_NS`]; see `Hv::reap_step`).
    pub console_grace: u64,
    /// The console port was notified and the ring may hold output.
    pub console_dirty: bool,
    /// The domain ended and its exit is reported once its leftover console
    /// output is out (teardown drains it in steps first).
    pub report_pending: bool,
    /// Teardown has closed all its ports.
    pub ports_closed: bool,
    /// Its grant table (what it grants others).
    pub grants: GrantTable,
    /// Its maptrack (the grants of others it has mapped).
    pub maptrack: Maptrack,
    /// Run-state accounting; `time[RUNNING]` is the domain's virtual time.
    pub runstate: RunstateInfo,
    /// Timer wake-up lateness, for the final report.
    pub wakes: Wakes,
    /// Its remembered translations ([`MEMO_CODE`], [`MEMO_STACK`],
    /// [`MEMO_ARGS`]): each is used only while the frame table is unchanged
    /// since its walk ([`crate::mm::guest_mem`] says why that is enough), so
    /// they are kept across entries, like a TLB tagged by address space.
    pub memo: [Option<Remembered>; 3],
    /// Its port to the device store (`None`: no store connection), as
    /// `domctl` `GETDOMAININFO` reports it.
    pub store_evtchn: Option<u32>,
    /// Its BVT weight and warp in microseconds, as `GETDOMAININFO`
    /// reports them (the scheduler holds the truth).
    pub sched: (u32, u32),
}

/// [`Domain::memo`]: the page of the last bounced `syscall` instruction.
pub const MEMO_CODE: usize = 0;
/// [`Domain::memo`]: the page the last bounce frame went to.
pub const MEMO_STACK: usize = 1;
/// [`Domain::memo`]: the page of the last hypercall argument.
pub const MEMO_ARGS: usize = 2;
// The order `Hv::fast_syscall` destructures them in.
const _: () = assert!(MEMO_CODE == 0 && MEMO_STACK == 1 && MEMO_ARGS == 2);

/// One domain's line in the final report.
pub struct Record {
    pub id: DomId,
    pub name: heapless::String<32>,
    pub expect: Expect,
    /// How it ended (`None`: still alive).
    pub exit: Option<Exit>,
    /// CPU time it was charged, in ms, when it ended.
    pub cpu_ms: u64,
}

/// How late a domain's real-time timer wake-ups ran: from the deadline to
/// the time it was next entered. The worst is printed in the final report
/// with what the hypervisor was doing when the timer fired, so a late
/// wake-up names its cause.
#[derive(Clone, Copy, Default)]
pub struct Wakes {
    /// Timer fired, domain not entered since: (deadline, fired at, what the
    /// stretch the timer fired in began with, how far into it in ticks).
    pending: Option<(u64, u64, [u64; 4], u64)>,
    pub count: u64,
    /// Worst: (lateness, fire lateness, stretch origin, ticks into it).
    worst: Option<(u64, u64, [u64; 4], u64)>,
    /// Entered after a wake and not blocked since: (deadline, times
    /// switched out, the last domain switched to).
    serving: Option<(u64, u32, Option<DomId>)>,
    /// Worst time from a deadline to the next block: (time, switch-outs,
    /// last domain switched to).
    worst_served: Option<(u64, u32, Option<DomId>)>,
}

impl Wakes {
    fn fired(&mut self, deadline: u64, now: u64, (what, into): ([u64; 4], u64)) {
        self.pending = Some((deadline, now, what, into));
    }

    #[inline(always)]
    fn blocked(&mut self, now: u64) {
        if let Some((deadline, outs, to)) = self.serving.take() {
            let t = now.saturating_sub(deadline);
            if self.worst_served.is_none_or(|w| t > w.0) {
                self.worst_served = Some((t, outs, to));
            }
        }
    }

    fn switched_out(&mut self, to: DomId) {
        if let Some(s) = self.serving.as_mut() {
            s.1 += 1;
            s.2 = Some(to);
        }
    }

    #[inline(always)]
    fn entered(&mut self, now: u64) {
        if let Some((deadline, fired, what, into)) = self.pending.take() {
            self.serving = Some((deadline, 0, None));
            self.count += 1;
            let late = now.saturating_sub(deadline);
            if self.worst.is_none_or(|w| late > w.0) {
                self.worst = Some((late, fired.saturating_sub(deadline), what, into));
            }
        }
    }
}

/// What one CPU is doing: the domain it runs and has loaded, the slice and
/// the deadline it armed, and the trip through the hypervisor under way.
/// The hypervisor runs on one CPU today; SMP adds one of these per CPU
/// (and finer locks), and none of these fields has to move again.
pub struct PerCpu {
    /// Index in `domains` of the running domain.
    pub current: Option<usize>,
    /// The charge point: CPU time up to here has been charged.
    pub meter: Meter,
    /// Domain whose deadline the one-shot timer is armed for, if it is not
    /// the running domain's own (its interrupt is that domain's work).
    pub armed_for: Option<usize>,
    /// System time at which the scheduler must be consulted again
    /// (`u64::MAX`: only when something else happens).
    pub slice_end: u64,
    /// Domain whose FS/GS bases and syscall gate are loaded in the CPU.
    pub loaded: Option<usize>,
    /// The fast path already ran the current hypercall; the full path
    /// applies its result (an upcall became due).
    pub pending_action: Option<Action>,
    /// The current domain asked to yield.
    pub yielding: bool,
    /// TSC value of the deadline the one-shot timer is armed for: batches
    /// running past it stop and continue later.
    pub armed_tsc: u64,
    /// TSC value at which this trip through the hypervisor has spent its
    /// console-draining budget.
    pub drain_until: u64,
    /// Ports the hypercall under way asked to raise (interdomain sends).
    notify: Notify,
    /// The syscall gate and ring-1 stack the CPU's IDT and TSS hold
    /// (`None`: not written yet).
    pub gate_rsp1: Option<(Option<u64>, u64)>,
    /// Something that can change the pick happened since the last one (a
    /// domain woke, blocked, was created or ended): the next trip asks the
    /// scheduler again even if the slice has time left.
    pub sched_dirty: bool,
    /// The toolstack command the hypercall under way handed over
    /// ([`hypercall::Env::request_ctl`]), carried out by [`Hv::apply`].
    ctl: Option<hypercall::Ctl>,
}

/// The hypervisor's state: the domains and everything shared between CPUs,
/// and what each CPU is doing.
pub struct Hv<M: Machine> {
    /// What the CPU is doing (one CPU today; see [`PerCpu`]).
    pub cpu: PerCpu,
    /// The machine: CPU, memory, timer and console services.
    pub m: M,
    /// Live domains (dead ones until they are reaped); the slot numbers
    /// index the scheduler's entities too.
    pub domains: DomainTable<'static, Domain>,
    /// Every domain the run created or refused, for the final report.
    pub records: heapless::Vec<Record, MAX_RECORDS>,
    /// Domains past [`MAX_RECORDS`]: how many ended, and how many of those
    /// not as expected.
    pub unrecorded: (u64, u64),
    pub frames: Option<FrameTable<'static>>,
    /// [`hypercall::BUDGET_NS`] in TSC ticks.
    pub budget_ticks: u64,
    /// Dead domains whose frames are still being freed, with the frame-table
    /// index the next step starts at: teardown is bounded work per step,
    /// one step per scheduling decision (more when the CPU is otherwise
    /// idle), charged to nobody since its domain no longer exists. Until
    /// then the frames stay the dead domain's and nothing else uses them.
    pub reaping: heapless::Deque<(DomId, usize), MAX_DOMAINS>,
    /// The oldest teardown waits for a console daemon until this time
    /// (its last step did nothing): the CPU may halt meanwhile, and wake
    /// at it (see [`CONSOLE_GRACE_NS`]).
    pub reap_wait: Option<u64>,
    /// The domain that runs the device store (the privileged one, id 0),
    /// if the bundle has one: every other domain is connected to it.
    pub store_backend: Option<DomId>,
    /// Take the fused switch path for yield and block (`Hv::on_trap_with`;
    /// tests turn it off to compare it with the general path).
    pub fused: bool,
    /// Borrowed-virtual-time scheduler; slot = index in `domains`.
    pub bvt: Bvt<MAX_DOMAINS>,
    /// Every live domain's real-time deadlines, nearest first: key
    /// `2 * slot` is its one-shot timer (`vcpu.timer`), `2 * slot + 1` its
    /// poll deadline (`vcpu.poll_deadline`). The fields are the truth; this
    /// is their index, brought up to date by `Hv::sync_deadlines` after
    /// every change (hypercalls on the full path, wake, death), so that
    /// firing timers and finding the next deadline never scan the domains.
    pub deadlines: IndexedHeap<(u64, usize), { 2 * MAX_DOMAINS }>,
    pub boot_tsc: u64,
    pub scale: TscScale,
    /// PCI functions, dom0's share of them and the BAR record (scanned at
    /// boot; see [`crate::pci`]).
    pub pci: Pci,
    /// The IOAPIC's lines and dom0's pirqs ([`crate::irq`]).
    pub irqs: Irqs,
    /// The boot bundle, for its templates.
    boot: Option<Bundle<'static>>,
    /// The record indices of the bundle's templates, in order: what
    /// `BOOTIMAGE_INFO` index `k` names.
    templates: heapless::Vec<u16, MAX_TEMPLATES>,
    /// Wall-clock seconds at boot (system time 0), published to every
    /// domain built.
    wallclock: u64,
    /// The `CREATEDOMAIN` under way, if any (only the privileged domain
    /// creates, one at a time).
    creating: Option<alloc::boxed::Box<CreateJob>>,
}

/// What a hypercall may touch: the calling domain's memory and state.
struct DomEnv<'a, M: Machine> {
    m: &'a mut M,
    frames: &'a mut FrameTable<'static>,
    /// Every domain; the caller is the one in slot `cur`.
    domains: &'a mut DomainTable<'static, Domain>,
    cur: usize,
    /// Ports to raise once the hypercall is done ([`hypercall::Env::notify`]).
    notify: &'a mut Notify,
    /// System time at the trap (0 on the fast path, which does not sample).
    now: u64,
    /// The clock, for what needs the time on the fast path too.
    clock: (TscScale, u64),
    /// TSC value at which other work is due (the armed deadline).
    preempt_tsc: u64,
    /// The PCI policy and record.
    pci: &'a mut Pci,
    /// The IOAPIC's lines.
    irqs: &'a mut Irqs,
    /// Where a toolstack command goes ([`hypercall::Env::request_ctl`]).
    ctl: &'a mut Option<hypercall::Ctl>,
    /// The boot bundle and its templates' record indices.
    boot: Option<(Bundle<'static>, &'a [u16])>,
}

impl<M: Machine> DomEnv<'_, M> {
    /// `EVTCHNOP_send` on `port` of `dom` (for an unmap notification):
    /// raises the peer of an interdomain port, or the port itself for an
    /// IPI; anything else sends nothing.
    fn send_from(&mut self, dom: DomId, port: u32) {
        let target = match self.domains.get(dom).map(|d| d.events.get(port)) {
            Some(Ok(Port::Interdomain { remote, port: rp })) => (remote, rp),
            Some(Ok(Port::Ipi)) => (dom, port),
            _ => return,
        };
        let _ = self.notify.push(target);
    }
}

impl<M: Machine> hypercall::Env for DomEnv<'_, M> {
    #[inline(always)] // every hypercall's arguments
    fn copy_from_guest(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        copy_from_domain(self.m.mem(), self.frames, &mut self.domains[self.cur], va, buf)
    }
    #[inline(always)] // every hypercall's arguments
    fn copy_to_guest(&mut self, va: u64, data: &[u8]) -> Result<(), Errno> {
        copy_to_domain(self.m.mem(), self.frames, &mut self.domains[self.cur], va, data)
    }
    fn console_write(&mut self, as_dom: Option<DomId>, bytes: &[u8]) -> usize {
        let (scale, boot) = self.clock;
        let now = if self.now != 0 { self.now } else { scale.to_ns(M::tsc().wrapping_sub(boot)) };
        let mut input = bytes.iter().copied();
        let m = &mut *self.m;
        // `console_target` checked `as_dom`; a domain reaped since is
        // gone, and its bytes with it.
        let slot = match as_dom {
            Some(id) => match self.domains.slot_of(id) {
                Some(s) => s,
                None => return bytes.len(),
            },
            None => self.cur,
        };
        let d = &mut self.domains[slot];
        let name = &d.name;
        d.console.push_bounded(&mut input, now, STEP_WORK, |l| tagged_line(m, name, l));
        bytes.len() - input.len()
    }
    fn console_kick(&mut self) {
        self.domains[self.cur].console_dirty = true;
    }
    fn console_target(&self, _: Privilege, id: u16) -> Result<DomId, Errno> {
        let id = DomId::of(id);
        let slot = self.domains.slot_of(id).ok_or(Errno::ESRCH)?;
        if self.domains[slot].console_taken.is_none() || slot == self.cur {
            return Err(Errno::EINVAL);
        }
        Ok(id)
    }
    fn console_takeover(&mut self, _: Privilege, dom: DomId) -> Result<u32, Errno> {
        let slot = self.domains.slot_of(dom).ok_or(Errno::ESRCH)?;
        let by = self.domains[self.cur].id;
        let d = &self.domains[slot];
        if d.console_taken.is_some() {
            return Err(Errno::EBUSY);
        }
        if matches!(d.state, RunState::Dead(_)) {
            // Its ring is teardown's now.
            return Err(Errno::ESRCH);
        }
        let (mine, theirs) = self.domains.pair_mut(by, dom).ok_or(Errno::ESRCH)?;
        let port = crate::event::connect_console(&mut mine.events, by, &mut theirs.events, dom)?;
        // The hypervisor never reads the ring again: the caller's
        // consumer starts from the indices in the page as they are.
        theirs.console_ring = None;
        theirs.console_taken = Some(by);
        theirs.console_dirty = false;
        hvlog!(self.m, "dom{dom} ({}): console taken over by dom{by}", theirs.name);
        Ok(port)
    }
    fn console_read(&mut self, buf: &mut [u8], _: Privilege) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match self.m.console_read() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
    fn privilege(&self) -> Option<Privilege> {
        self.domains[self.cur].privilege
    }
    fn domain_info(&mut self, _: Privilege, from: u16) -> Result<pvguest_abi::domctl::DomainInfo, Errno> {
        use pvguest_abi::domctl::{dominf, DomainInfo};
        // Bounded by the table's slots (a scan, not a search by id: ids
        // are sparse).
        let (_, id, d) = self
            .domains
            .iter()
            .filter(|(_, id, _)| id.raw() >= from)
            .min_by_key(|(_, id, _)| *id)
            .ok_or(Errno::ESRCH)?;
        let mut info = DomainInfo { domid: u32::from(id.raw()), nr_pages: d.nr_pages, ..DomainInfo::default() };
        if matches!(d.state, RunState::Dead(_)) {
            info.flags |= dominf::DYING;
        }
        if d.privilege.is_some() {
            info.flags |= dominf::PRIVILEGED;
        }
        if let Some(port) = d.store_evtchn {
            info.flags |= dominf::STORE;
            info.store_evtchn = port;
            info.store_gref = GNTTAB_RESERVED_XENSTORE;
        }
        match d.state {
            RunState::Paused => info.flags |= dominf::PAUSED,
            RunState::Blocked => info.flags |= dominf::BLOCKED,
            _ => {}
        }
        if id == self.domains[self.cur].id {
            info.flags |= dominf::RUNNING;
        }
        info.cpu_time_ns = d.runstate.time[runstate::RUNNING as usize];
        (info.weight, info.warp_us) = d.sched;
        pvguest_abi::start_info::fill_c_str(&mut info.name, &d.name);
        Ok(info)
    }
    fn phys_info(&mut self, _: Privilege) -> pvguest_abi::domctl::PhysInfo {
        let mut info = pvguest_abi::domctl::PhysInfo {
            total_frames: self.frames.len() as u64,
            free_frames: self.frames.free_count() as u64,
            heap_used: self.m.heap_used(),
            max_domains: MAX_DOMAINS as u32,
            ..Default::default()
        };
        for (_, _, d) in self.domains.iter() {
            info.domains += 1;
            info.dying += u32::from(matches!(d.state, RunState::Dead(_)));
            info.ports_in_use += u64::from(d.events.in_use());
        }
        info
    }
    fn boot_image(&mut self, _: Privilege, index: u32) -> Result<pvguest_abi::domctl::BootImage, Errno> {
        let spec = template(self.boot, index)?;
        let mut info = pvguest_abi::domctl::BootImage {
            index,
            mem_kib: spec.mem_kib,
            weight: spec.weight,
            warp_us: spec.warp_us,
            image_len: spec.image.len() as u64,
            cmdline_len: spec.cmdline.len() as u32,
            ..Default::default()
        };
        pvguest_abi::start_info::fill_c_str(&mut info.name, spec.name);
        // Shorter than 1024 bytes (the bundle reader's rule).
        info.cmdline[..spec.cmdline.len()].copy_from_slice(spec.cmdline.as_bytes());
        Ok(info)
    }
    fn boot_image_read(&mut self, _: Privilege, r: &pvguest_abi::domctl::ReadBootImage) -> Result<(), Errno> {
        let spec = template(self.boot, r.index)?;
        let end = r.offset.checked_add(u64::from(r.len)).ok_or(Errno::EINVAL)?;
        let bytes = usize::try_from(r.offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(a, b)| spec.image.get(a..b))
            .ok_or(Errno::EINVAL)?;
        hypercall::Env::copy_to_guest(self, r.buf, bytes)
    }
    fn request_ctl(&mut self, _: Privilege, ctl: hypercall::Ctl) {
        *self.ctl = Some(ctl);
    }
    fn nr_pages(&self) -> u64 {
        self.domains[self.cur].nr_pages
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
    fn runstate(&self) -> RunstateInfo {
        let mut r = self.domains[self.cur].runstate;
        r.time[runstate::RUNNING as usize] += self.now.saturating_sub(r.state_entry_time);
        r
    }
    fn vcpu(&mut self) -> &mut Vcpu {
        &mut self.domains[self.cur].vcpu
    }
    fn events(&mut self) -> &mut EventChannels {
        &mut self.domains[self.cur].events
    }
    fn caller(&self) -> DomId {
        self.domains[self.cur].id
    }
    fn with_events(&mut self, dom: DomId, f: &mut hypercall::PairFn<'_>) -> Result<u32, Errno> {
        let me = self.domains[self.cur].id;
        if dom == me {
            return f(&mut self.domains[self.cur].events, None);
        }
        let (mine, theirs) = self.domains.pair_mut(me, dom).ok_or(Errno::ESRCH)?;
        if matches!(theirs.state, RunState::Dead(_)) {
            return Err(Errno::ESRCH);
        }
        f(&mut mine.events, Some(&mut theirs.events))
    }
    fn grant_setup(&mut self, dom: DomId, nr_frames: u32) -> Result<hypercall::GrantFrames, GrantError> {
        Gnttab::new(&mut Grants(self.domains), self.frames, self.m.mem()).setup_table(dom, nr_frames)
    }
    fn grant_query(&mut self, dom: DomId) -> Result<(u32, u32), GrantError> {
        Gnttab::new(&mut Grants(self.domains), self.frames, self.m.mem()).query_size(dom)
    }
    fn grant_copy(&mut self, op: &CopyOp) -> Result<(), GrantError> {
        let caller = self.domains[self.cur].id;
        Gnttab::new(&mut Grants(self.domains), self.frames, self.m.mem()).copy(caller, op).map(|_| ())
    }
    fn grant_map(&mut self, req: &MapRequest) -> Result<(u32, u64), GrantError> {
        let (me, root) = (self.domains[self.cur].id, self.domains[self.cur].root);
        let mapped = Gnttab::new(&mut Grants(self.domains), self.frames, self.m.mem()).map(me, req)?;
        let m = mapped.mapping;
        if let Some(h) = m.host {
            let e = self.m.entry_area_pml4e();
            let f = Foreign { mfn: m.mfn, writable: m.writable, user: h.application };
            // Over a non-present entry only: the caller's remembered walks
            // stay valid (see `Mm::map_foreign_keeping_walks`).
            match Mm::map_foreign_keeping_walks(self.m.mem(), self.frames, e, me, root, h.addr, h.contains_pte, f) {
                Ok(pte) => self.domains[self.cur].maptrack.set_host_pte(mapped.handle, pte)?,
                Err(_) => {
                    let _ =
                        Gnttab::new(&mut Grants(self.domains), self.frames, self.m.mem()).cancel_map(me, mapped.handle);
                    return Err(GrantError::BadVirtAddr);
                }
            }
        }
        Ok((mapped.handle, m.machine_addr()))
    }
    fn grant_unmap(&mut self, handle: u32, host_addr: u64, dev_bus_addr: u64) -> Result<(), GrantError> {
        let me = self.domains[self.cur].id;
        let m = self.domains[self.cur].maptrack.check_unmap(handle, host_addr, dev_bus_addr)?;
        if let Some(h) = m.host {
            // The entry goes first; the TLB is flushed on the way back to
            // the guest (every exit reloads CR3, with global pages off),
            // before the guest runs again, and nothing else runs meanwhile.
            // Only a foreign entry goes: the caller's remembered walks stay
            // valid (see `Mm::unmap_foreign_keeping_walks`).
            let e = self.m.entry_area_pml4e();
            Mm::unmap_foreign_keeping_walks(self.m.mem(), self.frames, e, me, h.pte, m.mfn);
        }
        let un = Gnttab::new(&mut Grants(self.domains), self.frames, self.m.mem()).unmap(me, handle)?;
        if let Some(port) = un.notify {
            self.send_from(me, port);
        }
        Ok(())
    }
    fn grant_set_notify(&mut self, handle: u32, action: u16, offset: u16, port: u32) -> Result<(), GrantError> {
        let me = self.domains[self.cur].id;
        Gnttab::new(&mut Grants(self.domains), self.frames, self.m.mem())
            .set_unmap_notify(me, handle, action, offset, port)
    }
    fn notify(&mut self, dom: DomId, port: u32) {
        // At most one per hypercall, and a multicall holds at most
        // MULTICALL_MAX of them: the list never fills.
        let pushed = self.notify.push((dom, port));
        debug_assert!(pushed.is_ok(), "notification list full");
    }
    fn unmask(&mut self, port: u32) {
        let shared = self.domains[self.cur].shared;
        shared.unmask(self.m.mem(), port);
    }
    fn port_pending(&self, port: u32) -> bool {
        self.domains[self.cur].shared.is_pending(self.m.mem_ref(), port)
    }
    fn enable_events(&mut self) -> bool {
        let shared = self.domains[self.cur].shared;
        shared.set_upcall_mask(self.m.mem(), false);
        shared.upcall_pending(self.m.mem_ref())
    }
    fn mmu_update(&mut self, r: MmuUpdate) -> Result<(), Errno> {
        let e = self.m.entry_area_pml4e();
        let d = &self.domains[self.cur];
        let mut io = d.privilege.map(|p| Dom0Mmio::new(p, self.pci));
        with_io(Mm::new(self.m.mem(), self.frames, e), &mut io).mmu_update(d.id, r.ptr, r.val)
    }
    fn mmuext(&mut self, op: MmuextOp) -> Result<bool, Errno> {
        // Every exit reloads CR3 from `root` with global pages off, which
        // flushes the TLB, so the flush outcomes need no action here.
        let op = MmuExtOp::decode(&op)?;
        let preempt_tsc = self.preempt_tsc;
        let mut due = || M::tsc() >= preempt_tsc;
        let e = self.m.entry_area_pml4e();
        let d = &mut self.domains[self.cur];
        let mut io = d.privilege.map(|p| Dom0Mmio::new(p, self.pci));
        with_io(Mm::new(self.m.mem(), self.frames, e), &mut io)
            .preemptible(&mut due)
            .mmuext_op(d.id, &mut d.root, op)
            .map(|o| o != crate::mm::ExtOutcome::Again)
    }
    fn preempt_due(&mut self) -> bool {
        M::tsc() >= self.preempt_tsc
    }
    fn pci_read(&mut self, privilege: Privilege, at: ConfigAddr) -> u32 {
        self.pci.read(privilege, self.m.pci_config(), at)
    }
    fn pci_write(&mut self, privilege: Privilege, at: ConfigAddr, value: u32) -> Result<(), Errno> {
        self.pci.write(privilege, self.m.pci_config(), at, value)
    }
    fn map_pirq(&mut self, privilege: Privilege, gsi: i32, pirq: i32) -> Result<u32, Errno> {
        let me = self.domains[self.cur].id;
        let r = self.irqs.map_gsi(privilege, me, gsi, pirq);
        if let Ok(p) = r {
            hvlog!(self.m, "dom{me}: GSI {gsi} mapped to pirq {p}");
        }
        r
    }
    fn check_bind_pirq(&mut self, privilege: Privilege, pirq: u32) -> Result<(), Errno> {
        self.irqs.check_bind(privilege, self.domains[self.cur].id, pirq)
    }
    fn bind_pirq(&mut self, privilege: Privilege, pirq: u32, port: u32) -> Result<(), Errno> {
        let me = self.domains[self.cur].id;
        self.irqs.bind(self.m.ioapic(), privilege, me, pirq, port)?;
        let entry = self.irqs.entry(self.m.ioapic(), pirq).unwrap_or(0);
        hvlog!(
            self.m,
            "dom{me}: pirq {pirq} bound to port {port}: IOAPIC entry {entry:#x} (vector {:#x}, {}, {}, {})",
            entry as u8,
            if entry & irq::reg::LEVEL != 0 { "level" } else { "edge" },
            if entry & irq::reg::ACTIVE_LOW != 0 { "active low" } else { "active high" },
            if entry & irq::reg::MASKED != 0 { "masked" } else { "unmasked" }
        );
        Ok(())
    }
    fn pirq_eoi(&mut self, privilege: Privilege, pirq: u32) -> Result<(), Errno> {
        let me = self.domains[self.cur].id;
        self.irqs.eoi(self.m.ioapic(), privilege, me, pirq)
    }
    fn pirq_unbind(&mut self, dom: DomId, pirq: u32) {
        self.irqs.unbind(self.m.ioapic(), dom, pirq);
    }
    fn update_va_mapping(&mut self, va: u64, val: u64, _flags: u64) -> Result<(), Errno> {
        let e = self.m.entry_area_pml4e();
        let d = &self.domains[self.cur];
        let mut io = d.privilege.map(|p| Dom0Mmio::new(p, self.pci));
        with_io(Mm::new(self.m.mem(), self.frames, e), &mut io).update_va_mapping(d.id, d.root, va, val)
    }
}

/// Copies from domain `d`'s memory at `va`: the one guest-memory accessor
/// ([`GuestView`]), through its remembered argument walk, for hypercalls
/// and for the toolstack's work done after one.
#[inline]
fn copy_from_domain<P: PhysMem>(
    mem: &mut P,
    frames: &FrameTable<'static>,
    d: &mut Domain,
    va: u64,
    buf: &mut [u8],
) -> Result<(), Errno> {
    let view = GuestView { mem, frames, root: d.root, dom: d.id };
    view.copy_from_remembered(GuestVa(va), buf, &mut d.memo[MEMO_ARGS])
}

/// Copies `data` into domain `d`'s memory at `va` (as [`copy_from_domain`]).
#[inline]
fn copy_to_domain<P: PhysMem>(
    mem: &mut P,
    frames: &FrameTable<'static>,
    d: &mut Domain,
    va: u64,
    data: &[u8],
) -> Result<(), Errno> {
    let mut view = GuestView { mem, frames, root: d.root, dom: d.id };
    view.copy_to_remembered(GuestVa(va), data, &mut d.memo[MEMO_ARGS])
}

/// Template `index` of the boot bundle (`ESRCH`: none).
fn template(
    boot: Option<(Bundle<'static>, &[u16])>,
    index: u32,
) -> Result<ringfence_bundle::DomainSpec<'static>, Errno> {
    let (bundle, templates) = boot.ok_or(Errno::ESRCH)?;
    let &record = templates.get(index as usize).ok_or(Errno::ESRCH)?;
    bundle.domain(usize::from(record)).map_err(|_| Errno::ESRCH)
}

/// `mm` with the device-memory right (mm rule 9) if the caller has one
/// (the privileged domain's, made from its [`Privilege`]).
fn with_io<'a, 'f, P: crate::mm::guest_mem::PhysMem>(
    mm: Mm<'a, 'f, P>,
    io: &'a mut Option<Dom0Mmio<'_>>,
) -> Mm<'a, 'f, P> {
    match io {
        Some(io) => mm.with_device_memory(io),
        None => mm,
    }
}

/// The grant state of the live domains, for [`Gnttab`]: a dead domain has
/// none (its table is retired and its mappings are being torn down).
struct Grants<'a, 't>(&'a mut DomainTable<'t, Domain>);

impl GrantDomains for Grants<'_, '_> {
    fn table(&mut self, dom: DomId) -> Option<&mut GrantTable> {
        self.0.get_mut(dom).filter(|d| !matches!(d.state, RunState::Dead(_))).map(|d| &mut d.grants)
    }
    fn maptrack(&mut self, dom: DomId) -> Option<&mut Maptrack> {
        self.0.get_mut(dom).filter(|d| !matches!(d.state, RunState::Dead(_))).map(|d| &mut d.maptrack)
    }
    fn table_and_maptrack(&mut self, granter: DomId, grantee: DomId) -> Option<(&mut GrantTable, &mut Maptrack)> {
        let (g, m) = self.0.pair_mut(granter, grantee)?;
        let dead = |d: &Domain| matches!(d.state, RunState::Dead(_));
        (!dead(g) && !dead(m)).then_some((&mut g.grants, &mut m.maptrack))
    }
}

/// Every domain's grant state, dead ones included: for the teardown of a
/// dead grantee's mappings (whose granters may be dead too: their tables
/// are retired, and releasing a grant of one writes nothing).
struct AllGrants<'a, 't>(&'a mut DomainTable<'t, Domain>);

impl GrantDomains for AllGrants<'_, '_> {
    fn table(&mut self, dom: DomId) -> Option<&mut GrantTable> {
        self.0.get_mut(dom).map(|d| &mut d.grants)
    }
    fn maptrack(&mut self, dom: DomId) -> Option<&mut Maptrack> {
        self.0.get_mut(dom).map(|d| &mut d.maptrack)
    }
    fn table_and_maptrack(&mut self, granter: DomId, grantee: DomId) -> Option<(&mut GrantTable, &mut Maptrack)> {
        self.0.pair_mut(granter, grantee).map(|(g, m)| (&mut g.grants, &mut m.maptrack))
    }
}

/// Ports to raise after a hypercall: at most one per multicall entry.
type Notify = heapless::Vec<(DomId, u32), { pvguest_abi::MULTICALL_MAX as usize + 8 }>;

/// The domain to enter next.
pub struct Next {
    pub id: DomId,
    pub cr3: u64,
    /// Its shared-info frame.
    pub shared: Mfn,
    /// Its registers, sanitised (in its domain's saved state, which stays
    /// put until the next trip through the hypervisor).
    pub frame: *const TrapFrame,
    /// Its FPU/SSE state.
    pub fx: *const FxArea,
}

/// How a fast path returns to its caller: exit through the CPU-made frame
/// in place, with this root and FPU/SSE state, after putting the result in
/// `rax` (if any) and the `iretq` part the fast path prepared (if any: a
/// bounce to a guest handler, sanitised). The rest of the frame is the
/// guest's own registers, as the CPU saved them.
pub struct FastExit {
    /// The hypercall's result (`None`: `rax` stays as it is).
    pub rax: Option<u64>,
    pub cr3: u64,
    pub fx: *const FxArea,
    /// The `iretq` part to resume with (`None`: the frame's own).
    pub iret: Option<IretFrame>,
}

impl<M: Machine> Hv<M> {
    /// A hypervisor with no domains yet, over the machine `m`.
    pub const fn new(m: M) -> Self {
        Hv {
            m,
            cpu: PerCpu {
                current: None,
                meter: Meter::new(0),
                armed_for: None,
                slice_end: 0,
                loaded: None,
                pending_action: None,
                yielding: false,
                armed_tsc: u64::MAX,
                drain_until: 0,
                notify: heapless::Vec::new(),
                gate_rsp1: None,
                sched_dirty: true,
                ctl: None,
            },
            domains: DomainTable::empty(),
            records: heapless::Vec::new(),
            unrecorded: (0, 0),
            frames: None,
            budget_ticks: 0,
            reaping: heapless::Deque::new(),
            reap_wait: None,
            store_backend: None,
            fused: true,
            bvt: Bvt::new(DEFAULT_CTX_ALLOWANCE_NS),
            deadlines: IndexedHeap::new((0, 0)),
            boot_tsc: 0,
            scale: TscScale { mul: 0, shift: 0 },
            pci: Pci::empty(),
            irqs: Irqs::empty(),
            boot: None,
            templates: heapless::Vec::new(),
            wallclock: 0,
            creating: None,
        }
    }

    /// Builds every domain of `bundle` over `frames` and the domain table
    /// `domains` (empty), with the TSC running at `tsc_hz` and the wall
    /// clock at `wallclock` seconds since the epoch; returns the first
    /// domain to enter.
    pub fn start(
        &mut self,
        frames: FrameTable<'static>,
        domains: DomainTable<'static, Domain>,
        tsc_hz: u64,
        bundle: &Bundle<'static>,
        wallclock: u64,
    ) -> Next {
        // Every frame the frame table covers is RAM or the hypervisor's: no
        // device BAR may decode there.
        let ram_end = frames.len() as u64 * 4096;
        self.frames = Some(frames);
        self.domains = domains;
        self.scan_pci(ram_end);
        self.init_irqs();
        self.scale = TscScale::from_hz(tsc_hz);
        self.boot_tsc = M::tsc();
        self.budget_ticks = self.m.tsc_ticks(hypercall::BUDGET_NS).max(1);
        hvlog!(self.m, "wall clock: {wallclock} s since the epoch (RTC)");
        self.wallclock = wallclock;
        self.boot = Some(*bundle);
        for i in 0..bundle.domain_count() {
            if bundle.domain(i).is_ok_and(|s| s.template) && self.templates.push(i as u16).is_err() {
                hvlog!(self.m, "bundle entry {i}: more than {MAX_TEMPLATES} templates; not offered");
            }
        }
        hvlog!(self.m, "boot bundle: {} domain(s)", bundle.domain_count());
        // The privileged domain (id 0) runs the device store: it is built
        // first, and only if it was built does every other domain get a
        // connection to it (a store page granted to no one would leave
        // them waiting for ever).
        let privileged = (0..bundle.domain_count()).find(|&i| bundle.domain(i).is_ok_and(|s| s.privileged));
        if let Some(i) = privileged {
            self.create_domain(bundle, i);
            if self.domains.get(DomId::DOM0).is_some() {
                self.store_backend = Some(DomId::DOM0);
            } else {
                hvlog!(self.m, "the privileged domain was not built: no domain gets a store connection");
            }
        }
        for i in (0..bundle.domain_count()).filter(|&i| Some(i) != privileged) {
            self.create_domain(bundle, i);
        }
        // Building the domains is nobody's CPU time.
        let now = self.now();
        self.cpu.meter.skip(now);
        self.schedule()
    }

    /// Finds the PCI functions and logs each with its share ([`crate::pci`]).
    fn scan_pci(&mut self, ram_end: u64) {
        self.pci = Pci::scan(self.m.pci_config(), Forbidden::new(ram_end));
        for f in self.pci.functions() {
            hvlog!(self.m, "pci {f}");
        }
        if self.pci.unrecorded > 0 {
            hvlog!(self.m, "pci: {} more functions not recorded, none given to dom0", self.pci.unrecorded);
        }
    }

    /// Masks every IOAPIC entry and offers dom0 the GSIs of its functions
    /// ([`crate::irq`] invariants 1 and 2).
    fn init_irqs(&mut self) {
        let dest = self.m.apic_id();
        self.irqs = Irqs::init(self.m.ioapic(), self.pci.dom0_gsis(), dest);
        let mut gsis: heapless::String<96> = heapless::String::new();
        for g in (0..irq::MAX_GSIS).filter(|g| self.irqs.given() & (1 << g) != 0) {
            let _ = write!(gsis, "{}{g}", if gsis.is_empty() { "" } else { ", " });
        }
        hvlog!(self.m, "ioapic: {} redirection entries, all masked; dom0 may map GSI(s) [{gsis}]", self.irqs.entries());
    }

    /// The interrupt on device vector `vector` (see the module docs):
    /// masks its line, acknowledges the local APIC, raises the owner's
    /// port. The first interrupt of each line is logged with its entry's
    /// remote IRR as the IOAPIC held it on arrival (set: the line is
    /// level-triggered and was accepted, not yet EOId).
    fn device_interrupt(&mut self, vector: u64) {
        let gsi = irq::gsi_of_vector(vector);
        let first = gsi.and_then(|g| self.irqs.line(g)).is_some_and(|l| l.fired == 0 && l.port.is_some());
        let entry = gsi.and_then(|g| self.irqs.entry(self.m.ioapic(), g)).unwrap_or(0);
        let fired = self.irqs.interrupt(self.m.ioapic(), vector);
        self.m.eoi();
        let Some(f) = fired else { return };
        if first {
            hvlog!(
                self.m,
                "GSI {}: first interrupt (vector {vector:#x}, remote IRR {}, {}): raising dom{}'s port {}; line masked until EOI",
                f.gsi,
                u8::from(entry & irq::reg::REMOTE_IRR != 0),
                if entry & irq::reg::LEVEL != 0 { "level" } else { "edge" },
                f.owner,
                f.port
            );
        }
        if let Some(slot) = self.domains.slot_of(f.owner) {
            self.raise(slot, f.port);
        }
    }

    /// The slot of the domain that pays for a device interrupt on
    /// `vector` (the line's owner), if it is one.
    fn irq_payer(&self, vector: u64) -> Option<usize> {
        self.irqs.owner_of_vector(vector).and_then(|d| self.domains.slot_of(d))
    }

    /// The TSC value at which work started now must stop at a unit
    /// boundary: its [`hypercall::BUDGET_NS`] spent, or the armed deadline.
    #[inline]
    fn preempt_tsc(&self) -> u64 {
        self.cpu.armed_tsc.min(M::tsc().saturating_add(self.budget_ticks))
    }

    /// System time in ns.
    #[inline]
    fn now(&self) -> u64 {
        self.now_at(M::tsc())
    }

    /// System time at TSC value `tsc`.
    #[inline]
    fn now_at(&self, tsc: u64) -> u64 {
        self.scale.to_ns(tsc.wrapping_sub(self.boot_tsc))
    }

    /// Builds record `index` of the boot bundle (templates are not
    /// started: they are the toolstack's, [`Hv::templates`]).
    fn create_domain(&mut self, bundle: &Bundle<'_>, index: usize) {
        if bundle.domain(index).is_ok_and(|s| s.template) {
            return;
        }
        // The privileged domain takes id 0, as Xen's dom0 (the bundle
        // reader allows at most one); a bad entry takes an ordinary id for
        // its line in the report.
        let privileged = bundle.domain(index).is_ok_and(|s| s.privileged);
        let reserved = if privileged { self.domains.reserve_dom0() } else { self.domains.reserve() };
        let vacant = match reserved {
            Ok(v) => v,
            Err(e) => {
                hvlog!(self.m, "bundle entry {index}: not started: {e:?} (at most {MAX_DOMAINS} domains at once)");
                self.unrecorded.0 += 1;
                self.unrecorded.1 += 1;
                return;
            }
        };
        let id = vacant.id();
        let spec = match bundle.domain(index) {
            Ok(s) => s,
            Err(e) => {
                hvlog!(self.m, "dom{id}: bad manifest entry, not started: {e}");
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
        let build = Build {
            name: spec.name,
            image: spec.image,
            cmdline: spec.cmdline,
            mem_kib: spec.mem_kib,
            dma_kib: spec.dma_kib,
            weight: spec.weight,
            warp_us: spec.warp_us,
            privileged: spec.privileged,
            expect,
            paused: false,
        };
        if let Err((_, why)) = self.build_domain(vacant, &build, builder::Source::Fresh) {
            hvlog!(self.m, "dom{id} ({}): not started: {why}", spec.name);
            self.push_rejected(id, spec.name, expect);
        }
    }

    /// Builds a domain in the slot and id `vacant` reserved: its memory
    /// and page tables (the builder), console, store connection, shared
    /// info and scheduler entry. Returns its slot, or why not (the errno
    /// the toolstack gets and the words of the failure); nothing of the
    /// domain is left behind on failure (its frames are released).
    fn build_domain(
        &mut self,
        vacant: Vacant,
        spec: &Build<'_>,
        source: builder::Source<'_>,
    ) -> Result<usize, (Errno, Reason)> {
        let id = vacant.id();
        let fail = |errno, args: core::fmt::Arguments<'_>| {
            let mut why = Reason::new();
            let _ = why.write_fmt(args);
            Err((errno, why))
        };
        let mut events = EventChannels::default();
        // A fresh table has free ports; only a full hypervisor heap fails.
        let console_evtchn = match events.bind_console() {
            Ok(p) => p,
            Err(e) => return fail(Errno::ENOMEM, format_args!("no console port: {e}")),
        };
        let frames = self.frames.as_mut().expect("frame table set before domains");
        let mut cfg = DomainConfig {
            domid: id,
            name: spec.name,
            cmdline: spec.cmdline,
            nr_pages: u64::from(spec.mem_kib) / 4,
            dma_pages: u64::from(spec.dma_kib) / 4,
            privilege: Privilege::of_domain(spec.privileged),
            console_evtchn,
            store: None,
        };
        // Its store connection: a port only the store's domain may bind.
        if let Some(backend) = self.store_backend.filter(|_| !spec.privileged) {
            match events.alloc_unbound(backend) {
                Ok(port) => cfg.store = Some((port, backend)),
                Err(e) => return fail(Errno::ENOMEM, format_args!("no store port: {e}")),
            }
        }
        let e = self.m.entry_area_pml4e();
        let built = builder::build(self.m.mem(), frames, spec.image, &cfg, e, source);
        let b = match built {
            Ok(b) => b,
            Err(e) => {
                frames.release_domain(id);
                let errno = if matches!(
                    e,
                    builder::BuildError::OutOfMemory { .. } | builder::BuildError::NoContiguous { .. }
                ) {
                    Errno::ENOMEM
                } else {
                    Errno::EINVAL
                };
                return fail(errno, format_args!("{e}"));
            }
        };
        hvlog!(
            self.m,
            "dom{id} ({}): {} KiB, entry {:#x}, {}{}",
            spec.name,
            spec.mem_kib,
            b.entry,
            if spec.privileged { "privileged, " } else { "" },
            if spec.cmdline.is_empty() { "no command line" } else { spec.cmdline }
        );
        let shared = SharedPage { mfn: b.shared_info_mfn };
        // The hypervisor writes event bits into this frame for the domain's
        // whole life, so it must never become a page table: hold a
        // permanent writable type reference (page tables need a count of
        // zero to change type). Released with the domain.
        // The same holds for the console page.
        let frames = self.frames.as_mut().expect("frame table set");
        for (what, mfn) in [("shared-info", b.shared_info_mfn), ("console", b.console_mfn)] {
            if let Err(e) = frames.get_type_ref(mfn, id, crate::mm::frames::FrameType::Writable) {
                frames.release_domain(id);
                return fail(Errno::EINVAL, format_args!("{what} frame: {e}"));
            }
        }
        // The store page: a byte channel the domain attaches to as the
        // front, granted to the store's domain under the reserved
        // reference, which the store maps.
        let mut grants = GrantTable::new(DEFAULT_GRANT_FRAMES);
        if let Some((_, backend)) = cfg.store {
            let entry = GrantEntryV1 { flags: gtf::PERMIT_ACCESS, domid: backend.raw(), frame: b.store_mfn as u32 };
            let frames = self.frames.as_mut().expect("frame table set");
            let granted = grants.builder_grant(id, GNTTAB_RESERVED_XENSTORE, entry, frames, self.m.mem());
            let ready = granted.map(|()| self.m.channel_page_init(b.store_mfn));
            if ready != Ok(true) {
                self.frames.as_mut().expect("set").release_domain(id);
                return match ready {
                    Err(e) => fail(Errno::EINVAL, format_args!("store grant: {e}")),
                    Ok(_) => fail(Errno::EINVAL, format_args!("store page could not be set up")),
                };
            }
        }
        // The console page too, under its reserved reference, for the
        // store's domain to take over (CONSOLE_TAKEOVER).
        if let Some((_, backend)) = cfg.store {
            let entry = GrantEntryV1 { flags: gtf::PERMIT_ACCESS, domid: backend.raw(), frame: b.console_mfn as u32 };
            let frames = self.frames.as_mut().expect("frame table set");
            if let Err(e) = grants.builder_grant(id, GNTTAB_RESERVED_CONSOLE, entry, frames, self.m.mem()) {
                self.frames.as_mut().expect("set").release_domain(id);
                return fail(Errno::EINVAL, format_args!("console grant: {e}"));
            }
        }
        let console_ring = self.m.console_page(b.console_mfn);
        if console_ring.is_none() {
            hvlog!(self.m, "dom{id} ({}): console page could not be set up; console_io only", spec.name);
        }
        let time = VcpuTimeInfo {
            tsc_timestamp: self.boot_tsc,
            system_time: 0,
            tsc_to_system_mul: self.scale.mul,
            tsc_shift: self.scale.shift,
            ..VcpuTimeInfo::default()
        };
        shared.publish_time(self.m.mem(), &time);
        shared.publish_wallclock(self.m.mem(), self.wallclock, 0);
        // Events start masked, as the start-info contract says.
        shared.set_upcall_mask(self.m.mem(), true);
        let regs = TrapFrame {
            rip: b.entry,
            cs: u64::from(selectors::GUEST_KERNEL_CS),
            rflags: RFLAGS_IF | RFLAGS_FIXED,
            rsp: b.stack_top,
            ss: u64::from(selectors::GUEST_KERNEL_SS),
            rsi: b.start_info_va,
            ..TrapFrame::default()
        };
        let now = self.now();
        if let Err(e) = self.bvt.add(vacant.slot(), sched_params(spec.weight, spec.warp_us), now) {
            self.frames.as_mut().expect("set").release_domain(id);
            return fail(Errno::EINVAL, format_args!("scheduler refused it: {e:?}"));
        }
        if spec.paused {
            self.bvt.block(vacant.slot(), now);
        }
        self.cpu.sched_dirty = true;
        if spec.warp_us != 0 || spec.weight != crate::sched::bvt::DEFAULT_WEIGHT {
            hvlog!(self.m, "dom{id} ({}): BVT weight {}, warp {} us", spec.name, spec.weight, spec.warp_us);
        }
        let record = self.record(id, spec.name, spec.expect, None);
        let (state, rs) =
            if spec.paused { (RunState::Paused, runstate::OFFLINE) } else { (RunState::Runnable, runstate::RUNNABLE) };
        let slot = self.domains.fill(
            vacant,
            Domain {
                id,
                span: b.span,
                record,
                name: name_of(spec.name),
                expect: spec.expect,
                state,
                privilege: cfg.privilege,
                nr_pages: cfg.nr_pages,
                root: b.root,
                shared,
                regs,
                fx: FxArea::initial(),
                vcpu: Vcpu::default(),
                events,
                console: ConsoleOut::new(now, line_overhead(&name_of(spec.name))),
                console_ring,
                console_taken: None,
                console_mfn: b.console_mfn,
                console_grace: 0,
                console_dirty: false,
                report_pending: false,
                ports_closed: false,
                grants,
                store_evtchn: cfg.store.map(|(p, _)| p),
                // The privileged domain serves every other one (the
                // store's page, the console's, each device's rings and
                // buffers): the largest quota; chunks are made as it maps.
                maptrack: Maptrack::new(if cfg.privilege.is_some() { MAX_MAPTRACK } else { DEFAULT_MAPTRACK }),
                wakes: Wakes::default(),
                runstate: RunstateInfo { state: rs, state_entry_time: now, ..RunstateInfo::default() },
                memo: [None; 3],
                sched: (spec.weight, spec.warp_us),
            },
        );
        Ok(slot)
    }

    /// Adds a line to the final report; returns its index (`None` once the
    /// report is full: the domain is then only counted when it ends).
    fn record(&mut self, id: DomId, name: &str, expect: Expect, exit: Option<Exit>) -> Option<usize> {
        let r = Record { id, name: name_of(name), expect, exit, cpu_ms: 0 };
        match self.records.push(r) {
            Ok(()) => Some(self.records.len() - 1),
            Err(_) => {
                if let Some(e) = exit {
                    self.unrecorded.0 += 1;
                    self.unrecorded.1 += u64::from(!e.matches(expect));
                }
                None
            }
        }
    }

    fn push_rejected(&mut self, id: DomId, name: &str, expect: Expect) {
        self.record(id, name, expect, Some(Exit::Rejected));
    }

    /// Moves domain `i` to run state `state` at `now`, accounting the time
    /// spent in the previous one.
    #[inline(always)]
    fn set_runstate(&mut self, i: usize, state: u32, now: u64) {
        runstate_to(&mut self.domains[i].runstate, state, now);
    }

    /// Handles a trap taken by the current domain; returns who runs next.
    pub fn on_trap(&mut self, f: TrapFrame) -> Next {
        self.on_trap_with(|regs| *regs = f)
    }

    /// [`Hv::on_trap`] with the frame written by `load` straight into the
    /// current domain's saved registers (one copy from the entry stack).
    pub fn on_trap_with(&mut self, load: impl FnOnce(&mut TrapFrame)) -> Next {
        let cur = self.cpu.current.expect("a trap from a guest has a current domain");
        let tsc = M::tsc();
        self.cpu.drain_until = tsc.saturating_add(self.budget_ticks);
        load(&mut self.domains[cur].regs);
        if self.fused {
            if let Some(next) = self.give_up_cpu_fused(cur) {
                return next;
            }
        }
        let (vector, rip) = (self.domains[cur].regs.vector, self.domains[cur].regs.rip);
        let now = self.now_at(tsc);
        // Charge point 1: the domain's run and its entry.
        self.cpu.meter.charge(&mut self.bvt, cur, now);
        self.check_vtimer(cur, now);
        // Work this trap causes is charged to the domain that trapped,
        // except a timer interrupt armed for another domain's deadline.
        let payer = match self.cpu.armed_for {
            Some(o) if vector == u64::from(TIMER_VECTOR) && o != cur => o,
            // A device interrupt is its line's owner's work.
            _ => self.irq_payer(vector).unwrap_or(cur),
        };
        if !pvguest_abi::layout::is_canonical(rip) {
            // Only a trap taken in the last bytes below the canonical hole
            // pushes a non-canonical return address. Nothing it asked for
            // is carried out: the domain cannot be resumed there.
            let mut msg: heapless::String<160> = heapless::String::new();
            let _ = write!(
                msg,
                "return address {:#x} (vector {:#x}) is not canonical; the trap was not handled",
                rip, vector
            );
            self.crash(cur, "trap from the last bytes below the canonical hole", &msg);
            return self.after_trap(payer);
        }
        match vector {
            v if v == u64::from(HYPERCALL_VECTOR) => self.hypercall(cur, now),
            v if v == u64::from(TIMER_VECTOR) => self.m.eoi(),
            v if v == u64::from(SPURIOUS_VECTOR) => {}
            v if v == u64::from(SYSCALL_VECTOR) => self.syscall(cur),
            2 => hvlog!(self.m, "NMI while dom{} ran: a host event, ignored", self.domains[cur].id),
            8 | 18 => {
                let f = self.domains[cur].regs;
                self.m.fatal(vector as u8, &f)
            }
            v if v == u64::from(NULL_TRAP_VECTOR) => {}
            v if irq::gsi_of_vector(v).is_some() => self.device_interrupt(v),
            0..=31 => {
                let f = self.domains[cur].regs;
                self.exception(cur, &f)
            }
            _ => self.m.eoi(),
        }
        self.after_trap(payer)
    }

    /// Charge point 2 (the trap's work to `payer`), then timers against
    /// the time after that work, then the scheduler.
    fn after_trap(&mut self, payer: usize) -> Next {
        let now = self.now();
        self.cpu.meter.charge(&mut self.bvt, payer, now);
        self.finish_trip(now)
    }

    /// The rest of a trip once the trap's work is charged (up to `now`):
    /// the console of the domain that trapped, timers due, the scheduler.
    #[inline(always)] // twice on the switch paths, no call
    fn finish_trip(&mut self, now: u64) -> Next {
        // The domain that trapped drains its own console, in its own time.
        let now = match self.cpu.current {
            Some(c) if self.domains[c].console_dirty => self.drain_console(c, Some(self.drain_deadline())),
            _ => now,
        };
        // Timers that fired did work (charged to their domains): the pick
        // is made at the time after it.
        let fired = self.deadlines.peek().is_some_and(|((t, _), _)| t <= now) && self.fire_timers(now);
        self.schedule_at(if fired { self.now() } else { now })
    }

    /// The fused switch path: a `sched_op` yield or block
    /// ([`hypercall::give_up_cpu`]) goes from the trap to the pick in one
    /// pass, making the general path's decisions (`on_trap_with`, then
    /// `hypercall` and `apply`, then `after_trap`) without its generality:
    /// no environment, no payer, notify list or deadline comparison (these
    /// hypercalls send nothing and set no timer), and one clock sample,
    /// after the hypercall's work: the caller's run, its entry and the
    /// hypercall are all its own, so charge points 1 and 2 are one charge
    /// to it. `None` (nothing done): another trap, a return address the
    /// general path refuses, or a fast-path result waiting to be applied.
    /// Host tests check that it decides as the general path does.
    fn give_up_cpu_fused(&mut self, cur: usize) -> Option<Next> {
        if self.cpu.pending_action.is_some() {
            return None;
        }
        let d = &self.domains[cur];
        let r = &d.regs;
        if r.vector != u64::from(HYPERCALL_VECTOR) || !pvguest_abi::layout::is_canonical(r.rip) {
            return None;
        }
        let shared = d.shared;
        let mem = self.m.mem();
        let action = hypercall::give_up_cpu(r.rax, r.rdi, || {
            shared.set_upcall_mask(mem, false);
            shared.upcall_pending(mem)
        })?;
        let now = self.now();
        self.cpu.meter.charge(&mut self.bvt, cur, now);
        self.check_vtimer(cur, now);
        self.apply(cur, action, now);
        Some(self.finish_trip(now))
    }

    /// When console draining must stop: one budget into this trip through
    /// the hypervisor, or the armed deadline if that is sooner (a warped
    /// wake-up, a slice end).
    fn drain_deadline(&self) -> u64 {
        self.cpu.drain_until.min(self.cpu.armed_tsc)
    }

    /// Drains the notified console rings of every domain, a step at a
    /// time, each step charged to its writer, until they are empty or one
    /// budget is spent (the rest waits for the next trip): only while the
    /// CPU is otherwise idle. A domain's console is drained in its own time
    /// otherwise: when it traps and when it is picked to run, so draining
    /// never delays another domain by more than one step past a deadline.
    /// Returns the time after the last step, if any ran.
    fn drain_consoles(&mut self) -> Option<u64> {
        // Draining never delays a deadline (a warped wake-up, a slice end)
        // by more than one step: none starts once it has passed.
        let deadline = self.drain_deadline();
        let mut last = None;
        for i in 0..self.domains.slot_bound() {
            if M::tsc() >= deadline {
                break;
            }
            if self.domains.at(i).is_some_and(|(_, d)| d.console_dirty) {
                last = Some(self.drain_console(i, Some(deadline)));
            }
        }
        last
    }

    /// Drains domain `i`'s console ring in bounded steps
    /// ([`ConsoleOut::push_bounded`]) until it is empty (`console_dirty`
    /// cleared after the final check re-arms the notification) or
    /// `deadline` (TSC) passes, checked before each step. Each step is
    /// charged to the domain. A protocol violation cuts the console off,
    /// with a line saying why. Returns the time after the last step.
    fn drain_console(&mut self, i: usize, deadline: Option<u64>) -> u64 {
        loop {
            let now = self.now();
            if deadline.is_some_and(|dl| M::tsc() >= dl) {
                return now;
            }
            let more = self.console_step(i, now);
            let t = self.now();
            if deadline.is_some() {
                self.cpu.meter.charge(&mut self.bvt, i, t);
            }
            if !more {
                return t;
            }
        }
    }

    /// One bounded step of domain `i`'s console ring at time `now`
    /// ([`ConsoleOut::push_bounded`]); returns whether output may be left.
    /// A protocol violation cuts the console off, with a line saying why.
    fn console_step(&mut self, i: usize, now: u64) -> bool {
        let d = &mut self.domains[i];
        let Some(ring) = d.console_ring.as_mut() else {
            d.console_dirty = false;
            return false;
        };
        let name = &d.name;
        let m = &mut self.m;
        // One read of the producer index for the step (a step takes at
        // most STEP_WORK / BYTE_WORK bytes); bytes it leaves stay in the ring.
        let taken = ring.rx.drain_up_to((STEP_WORK / BYTE_WORK) as u32).map(|mut input| {
            let (_, ended) = d.console.push_bounded(&mut input, now, STEP_WORK, |l| tagged_line(m, name, l));
            ended
        });
        let step = match taken {
            Err(e) => Err(e),
            Ok(ended) => ring.rx.release_and_check_notify().and_then(|notify| {
                let more = !ended || ring.rx.final_check()?;
                Ok((notify, more))
            }),
        };
        let (notify, more) = match step {
            Ok(s) => s,
            Err(e) => {
                hvlog!(self.m, "dom{} ({}): console ring cut off: {e}", d.id, d.name);
                d.console_ring = None;
                d.console_dirty = false;
                return false;
            }
        };
        d.console_dirty = more && !matches!(d.state, RunState::Dead(_));
        if notify {
            // The guest waits for space (it will not be woken for its own
            // output otherwise).
            if let Some(port) = d.events.console_port() {
                self.raise(i, port);
            }
        }
        more
    }

    /// The hypercall fast path: a hypercall that cannot change scheduling
    /// or per-domain CPU state runs on the frame in place and returns
    /// straight to its caller. Time is not sampled: every deadline is
    /// enforced by the armed one-shot timer, whose interrupt is taken as
    /// soon as the guest runs again, and the run time is charged at the
    /// next full entry (the meter's mark is left alone), to the same
    /// domain, which is the one that did this work. An event upcall that
    /// became due (or was due already) is delivered here too, exactly as
    /// `Hv::prepare` would: the `iretq` part of the CPU-made frame (read by
    /// `iret`, only then) is bounced to the event callback. The domain's saved registers are
    /// not touched: the CPU-made frame is the truth while the domain runs,
    /// and the next full entry copies it in. Returns how to exit, or
    /// `None` to finish the entry on the full path (the result waits in
    /// `pending_action`): console output to drain, another domain to
    /// notify, or an upcall that cannot be delivered (the full path
    /// crashes the domain).
    pub fn fast_hypercall(&mut self, nr: u64, a: [u64; 5], iret: impl FnOnce() -> IretFrame) -> Option<FastExit> {
        let cur = self.cpu.current?;
        if nr == nr::XEN_VERSION {
            // Here only because an upcall is due (see `fast_path_hypercall`):
            // the value needs no domain state, the upcall is delivered below.
            let v = hypercall::xen_version(a[0]).unwrap_or_else(|e| e.to_ret() as u64);
            return self.fast_return(cur, Action::Return(v as i64), iret);
        }
        let preempt_tsc = self.preempt_tsc();
        let frames = self.frames.as_mut()?;
        let mut env = DomEnv {
            m: &mut self.m,
            frames,
            domains: &mut self.domains,
            cur,
            notify: &mut self.cpu.notify,
            now: 0,
            clock: (self.scale, self.boot_tsc),
            preempt_tsc,
            pci: &mut self.pci,
            irqs: &mut self.irqs,
            // `domctl` is never a fast-path hypercall.
            ctl: &mut self.cpu.ctl,
            boot: None,
        };
        let action = hypercall::dispatch(&mut env, nr, a);
        self.fast_return(cur, action, iret)
    }

    /// The rest of [`Hv::fast_hypercall`] once the hypercall has run: the
    /// events it sent, then the exit in place, with a due upcall bounced.
    #[inline(always)]
    fn fast_return(&mut self, cur: usize, action: Action, iret: impl FnOnce() -> IretFrame) -> Option<FastExit> {
        let Action::Return(v) = action else {
            // Not expected for these hypercalls; the full path applies it.
            self.cpu.pending_action = Some(action);
            return None;
        };
        if !self.cpu.notify.is_empty() {
            // Events the hypercall sent. Raising one for a domain that is
            // not blocked only marks it pending (nothing to wake, nothing
            // for the scheduler): done here. If any target is blocked,
            // `wake_in_place` raises them all, waking it, and asks the
            // scheduler.
            let wakes =
                self.cpu.notify.iter().any(|&(dom, _)| {
                    self.domains.slot_of(dom).is_some_and(|i| self.domains[i].state == RunState::Blocked)
                });
            if wakes {
                if !self.wake_in_place(cur) {
                    self.cpu.pending_action = Some(action);
                    return None;
                }
            } else {
                self.raise_notified();
            }
        }
        let d = &self.domains[cur];
        if d.console_dirty {
            // Console output to drain (outside the hypercall): the full
            // path does it.
            self.cpu.pending_action = Some(action);
            return None;
        }
        // A new root from `new_baseptr` is the CR3 to exit with.
        let exit = FastExit { rax: Some(v as u64), cr3: d.root * 4096, fx: &d.fx, iret: None };
        if !d.shared.upcall_due(self.m.mem_ref()) || d.vcpu.callbacks.event == 0 {
            return Some(exit);
        }
        let mut iret = iret();
        if !self.bounce_upcall_fast(cur, &mut iret) {
            self.cpu.pending_action = Some(action);
            return None;
        }
        Some(FastExit { iret: Some(iret), ..exit })
    }

    /// Raises the ports the hypercall under way sent to (a domain that died
    /// meanwhile is skipped), waking their domains.
    #[inline]
    fn raise_notified(&mut self) {
        // (By index, not `mem::take`: that would copy the whole list.)
        for k in 0..self.cpu.notify.len() {
            let (dom, port) = self.cpu.notify[k];
            if let Some(slot) = self.domains.slot_of(dom) {
                self.raise(slot, port);
            }
        }
        self.cpu.notify.clear();
    }

    /// A fast-path hypercall of the current domain `cur` sent events that
    /// wake a blocked domain: the trip the full path would make, without
    /// leaving the CPU-made frame, when the caller keeps the CPU. Charge
    /// points 1 and 2 at once (its run, its entry and the hypercall are its
    /// own), the wake-ups, then charge point 4 and the pick, as
    /// `Hv::schedule_at` makes them; if the caller keeps the CPU, its new
    /// slice is armed as `Hv::prepare` arms it and `true`: it resumes in
    /// place. `false`: the full path finishes the trip (with the ports
    /// raised: nothing is raised twice): a switch is due (it asks the
    /// scheduler again, which answers the same from the same accounts), or
    /// something only it does is (timers due, teardown, console output).
    fn wake_in_place(&mut self, cur: usize) -> bool {
        let now = self.now();
        self.cpu.meter.charge(&mut self.bvt, cur, now);
        // As `raise_notified`, with the wake-ups dated by this trip's one
        // sample (the full path samples again after the hypercall: the
        // same trip, a few instructions later).
        for k in 0..self.cpu.notify.len() {
            let (dom, port) = self.cpu.notify[k];
            if let Some(i) = self.domains.slot_of(dom) {
                if self.mark_raised(i, port) {
                    self.wake_at(i, now);
                }
            }
        }
        self.cpu.notify.clear();
        let due = self.deadlines.peek().is_some_and(|((t, _), _)| t <= now);
        let d = &self.domains[cur];
        if due || !self.reaping.is_empty() || d.console_dirty || self.cpu.loaded != Some(cur) || self.cpu.yielding {
            return false;
        }
        self.cpu.sched_dirty = false;
        self.cpu.meter.settle(&mut self.bvt);
        let pick = self.bvt.pick(now, Some(cur));
        if pick.next != Some(cur) {
            self.cpu.sched_dirty = true;
            return false;
        }
        self.cpu.slice_end = pick.run_for_ns.map_or(u64::MAX, |t| now.saturating_add(t));
        let d = &mut self.domains[cur];
        d.wakes.entered(now);
        let vt_left = vtimer_left(d, now);
        self.arm_deadline(cur, now, vt_left);
        true
    }

    /// Redirects `iret` of the current domain `cur` to its event callback
    /// with events masked, as `Hv::prepare` does, for the fast paths, and
    /// sanitises it; `false` (with the mask as it was) if that fails: the
    /// full path then does it again and crashes the domain.
    fn bounce_upcall_fast(&mut self, cur: usize, iret: &mut IretFrame) -> bool {
        let Some(frames) = self.frames.as_ref() else { return false };
        let d = &mut self.domains[cur];
        let saved = d.shared.set_upcall_mask(self.m.mem(), true);
        let b = Bounce {
            handler: d.vcpu.callbacks.event,
            vector: UPCALL_VECTOR,
            error: 0,
            cr2: 0,
            saved_upcall_mask: u32::from(saved),
        };
        let mut view = GuestView { mem: self.m.mem(), frames, root: d.root, dom: d.id };
        let mut f = *iret;
        let stack = &mut d.memo[MEMO_STACK];
        if bounce_iret_remembered(&mut f, &b, d.vcpu.kernel_sp, &mut view, stack).is_ok() && f.sanitize() {
            *iret = f;
            return true;
        }
        d.shared.set_upcall_mask(self.m.mem(), saved != 0);
        false
    }

    /// The bounced-`syscall` fast path: a `syscall` from ring 3 of the
    /// running domain, which has a syscall callback and a kernel stack,
    /// is bounced to the callback (as `Hv::syscall` does: same page check
    /// on `rcx - 2`, same bounce, same sanitising) and the domain resumes
    /// there at once, without a trip through the scheduler: only `iret`,
    /// the `iretq` part of the CPU-made frame, changes (a bounce reads and
    /// changes nothing else). As on the hypercall fast path, time is not
    /// sampled, the run time is charged at the next full entry to this
    /// same domain, the armed one-shot timer enforces every deadline, and
    /// the domain's saved registers are left to the next full entry.
    /// `None`: the full path handles it: an event upcall is due, console
    /// output waits, the scheduler has something to do, the `syscall` came
    /// from ring 1, or the bounce failed (the full path then crashes the
    /// domain).
    pub fn fast_syscall(&mut self, rcx: u64, iret: IretFrame) -> Option<FastExit> {
        let cur = self.cpu.current?;
        if self.cpu.loaded != Some(cur) || self.cpu.sched_dirty || self.cpu.yielding || !self.reaping.is_empty() {
            return None;
        }
        let frames = self.frames.as_ref()?;
        let d = &mut self.domains[cur];
        let handler = d.vcpu.callbacks.syscall;
        if handler == 0 || d.vcpu.kernel_sp.is_none() || d.console_dirty || d.shared.upcall_due(self.m.mem_ref()) {
            return None;
        }
        let insn = rcx.wrapping_sub(2);
        let mut view = GuestView { mem: self.m.mem(), frames, root: d.root, dom: d.id };
        let [code, stack, _] = &mut d.memo;
        let user_read = crate::mm::guest_mem::Access { write: false, user: true };
        if view.translate_remembered(GuestVa(insn), user_read, code).is_err() {
            return None;
        }
        let b = Bounce { handler, vector: SYSCALL_VECTOR, error: 0, cr2: 0, saved_upcall_mask: 0 };
        let mut f = iret;
        if bounce_iret_remembered(&mut f, &b, d.vcpu.kernel_sp, &mut view, stack).is_err() || !f.sanitize() {
            return None;
        }
        Some(FastExit { rax: None, cr3: d.root * 4096, fx: &d.fx, iret: Some(f) })
    }

    /// Fires the current domain's virtual-time alarm if that time has come.
    #[inline(always)]
    fn check_vtimer(&mut self, cur: usize, now: u64) {
        let d = &mut self.domains[cur];
        if let Some(deadline) = d.vcpu.vtimer {
            let vt = d.runstate.time[runstate::RUNNING as usize] + now.saturating_sub(d.runstate.state_entry_time);
            if vt >= deadline {
                d.vcpu.vtimer = None;
                self.raise_virq(cur, VIRQ_VTIMER);
            }
        }
    }

    /// A `syscall` instruction. The CPU does not say which ring it came
    /// from, so look at the page of the instruction (`rcx - 2`): code that
    /// ring 3 cannot execute ran in ring 1, and the guest kernel gets `#UD`
    /// (as on a CPU without `syscall`): the guest kernel calls the
    /// hypervisor through the hypercall gate. From ring 3 it is bounced to
    /// the syscall callback.
    fn syscall(&mut self, cur: usize) {
        let frames = self.frames.as_ref().expect("frame table set");
        let d = &mut self.domains[cur];
        let insn = d.regs.rcx.wrapping_sub(2);
        let view = GuestView { mem: self.m.mem(), frames, root: d.root, dom: d.id };
        let from_user =
            view.translate(GuestVa(insn), crate::mm::guest_mem::Access { write: false, user: true }).is_ok();
        if !from_user {
            d.regs.rip = insn;
            d.regs.rflags = d.regs.r11;
            d.regs.cs = u64::from(selectors::GUEST_KERNEL_CS);
            d.regs.ss = u64::from(selectors::GUEST_KERNEL_SS);
            let f = TrapFrame { vector: 6, error: 0, ..d.regs };
            return self.exception(cur, &f);
        }
        let handler = d.vcpu.callbacks.syscall;
        if handler == 0 {
            // No syscall callback: the application gets #UD, as on a CPU
            // without `syscall`, and its kernel decides (kill it, ...).
            d.regs.rip = insn;
            d.regs.rflags = d.regs.r11;
            let f = TrapFrame { vector: 6, error: 0, ..d.regs };
            return self.exception(cur, &f);
        }
        let b = Bounce { handler, vector: SYSCALL_VECTOR, error: 0, cr2: 0, saved_upcall_mask: 0 };
        self.deliver(cur, &b, false);
    }

    /// Bounces CPU exception `f.vector` to the guest's handler, or crashes
    /// the domain.
    fn exception(&mut self, cur: usize, f: &TrapFrame) {
        let vector = f.vector as u8;
        if vector == 13 && f.error == 0 && self.emulate_port_io(cur) {
            return;
        }
        let cr2 = if vector == 14 { self.m.cr2() } else { 0 };
        let fault = Fault { vector, error: f.error, rip: f.rip, cr2, ring: (f.cs & 3) as u8 };
        match self.domains[cur].vcpu.traps.handler(vector) {
            None => self.kill(cur, Exit::Faulted(fault)),
            Some(h) => {
                let b =
                    Bounce { handler: h.address, vector: u32::from(vector), error: f.error, cr2, saved_upcall_mask: 0 };
                self.deliver(cur, &b, h.mask_events);
            }
        }
    }

    /// dom0's `in`/`out` on a port of a given function's I/O BAR
    /// ([`crate::ioport`]): performed, `rip` past it. False (the #GP goes
    /// to the guest as it was) for any other domain, port or instruction.
    fn emulate_port_io(&mut self, cur: usize) -> bool {
        let frames = self.frames.as_ref().expect("frame table set");
        let d = &mut self.domains[cur];
        let Some(privilege) = d.privilege else { return false };
        // dom0's kernel only (ring 1): its applications get the #GP.
        if d.regs.cs & 3 != 1 {
            return false;
        }
        let rip = d.regs.rip;
        let view = GuestView { mem: self.m.mem(), frames, root: d.root, dom: d.id };
        // Up to MAX_LEN bytes: fewer if the code ends at an unmapped page.
        let mut code = [0u8; crate::ioport::MAX_LEN];
        let mut got = 0;
        for (i, b) in code.iter_mut().enumerate() {
            let mut one = [0u8];
            if view.copy_from_remembered(GuestVa(rip.wrapping_add(i as u64)), &mut one, &mut d.memo[MEMO_CODE]).is_err()
            {
                break;
            }
            *b = one[0];
            got += 1;
        }
        let Some(op) = crate::ioport::decode(&code[..got]) else { return false };
        let port = op.port(d.regs.rdx);
        if self.pci.io_owner(privilege, port, op.size).is_none() {
            return false;
        }
        let d = &mut self.domains[cur];
        if op.out {
            let v = op.out_value(d.regs.rax);
            self.m.port_out(port, op.size, v);
        } else {
            let v = self.m.port_in(port, op.size);
            d.regs.rax = op.complete_in(d.regs.rax, v);
        }
        let d = &mut self.domains[cur];
        d.regs.rip = rip.wrapping_add(u64::from(op.len));
        true
    }

    /// Bounces to a guest handler, masking events if asked; crashes the
    /// domain if the frame cannot be delivered. Returns success.
    #[inline(always)]
    fn deliver(&mut self, cur: usize, b: &Bounce, mask_events: bool) -> bool {
        let frames = self.frames.as_ref().expect("frame table set");
        let d = &mut self.domains[cur];
        let saved = if mask_events { d.shared.set_upcall_mask(self.m.mem(), true) } else { 0 };
        let b = Bounce { saved_upcall_mask: u32::from(saved), ..*b };
        let mut view = GuestView { mem: self.m.mem(), frames, root: d.root, dom: d.id };
        let mut f = d.regs.iret();
        let r = bounce_iret_remembered(&mut f, &b, d.vcpu.kernel_sp, &mut view, &mut d.memo[MEMO_STACK]);
        match r {
            Ok(()) => {
                d.regs.set_iret(f);
                true
            }
            Err(e) => {
                let what = match b.vector {
                    UPCALL_VECTOR => "event upcall",
                    SYSCALL_VECTOR => "syscall",
                    _ => "trap",
                };
                let mut msg: heapless::String<160> = heapless::String::new();
                let _ = write!(msg, "{what} (vector {:#x}): {e}", b.vector);
                self.crash(cur, "a trap, event or syscall could not be delivered", &msg);
                false
            }
        }
    }

    /// Runs a hypercall for domain `cur` and applies its action.
    fn hypercall(&mut self, cur: usize, now: u64) {
        // The caller's timer and poll deadline before the hypercall (`None`:
        // it ran on the fast path, so compare nothing and re-index).
        let (action, deadlines_before) = match self.cpu.pending_action.take() {
            Some(a) => (a, None),
            None => {
                let d = &self.domains[cur];
                if let Some(a) = hypercall::without_env(d.regs.rax, d.regs.rdi) {
                    // A yield: nothing to decode, no environment to build.
                    self.apply(cur, a, now);
                    return;
                }
                let preempt_tsc = self.preempt_tsc();
                let frames = self.frames.as_mut().expect("frame table set");
                let (nr, args) = (d.regs.rax, [d.regs.rdi, d.regs.rsi, d.regs.rdx, d.regs.r10, d.regs.r8]);
                let before = Some((d.vcpu.timer, d.vcpu.poll_deadline));
                let mut env = DomEnv {
                    m: &mut self.m,
                    frames,
                    domains: &mut self.domains,
                    cur,
                    notify: &mut self.cpu.notify,
                    now,
                    clock: (self.scale, self.boot_tsc),
                    preempt_tsc,
                    pci: &mut self.pci,
                    irqs: &mut self.irqs,
                    ctl: &mut self.cpu.ctl,
                    boot: self.boot.map(|b| (b, &self.templates[..])),
                };
                (hypercall::dispatch(&mut env, nr, args), before)
            }
        };
        // Interdomain events the hypercall sent: raise them now (waking
        // their domains).
        self.raise_notified();
        // The hypercall may have set or cleared the caller's timer or poll
        // deadline (the index is up to date with what they were before).
        let v = &self.domains[cur].vcpu;
        if deadlines_before != Some((v.timer, v.poll_deadline)) {
            self.sync_deadlines(cur);
        }
        self.apply(cur, action, now);
    }

    /// Applies the action of domain `cur`'s hypercall.
    #[inline(always)] // on every hypercall trip, no call
    fn apply(&mut self, cur: usize, action: Action, now: u64) {
        let d = &mut self.domains[cur];
        match action {
            Action::Return(v) => d.regs.rax = v as u64,
            Action::Yield => {
                d.regs.rax = 0;
                self.cpu.yielding = true;
            }
            Action::Block | Action::Poll => {
                d.wakes.blocked(now);
                d.regs.rax = 0;
                d.state = RunState::Blocked;
                self.bvt.block(cur, now);
                self.cpu.sched_dirty = true;
                self.set_runstate(cur, runstate::BLOCKED, now);
            }
            Action::Shutdown(reason) => self.kill(cur, Exit::Shutdown(reason)),
            Action::Continue(a) => {
                // Re-execute the same `int 0x82` (2 bytes) with the new
                // arguments once the domain runs again; rax still holds the
                // hypercall number. The scheduler gets its say first.
                [d.regs.rdi, d.regs.rsi, d.regs.rdx, d.regs.r10, d.regs.r8] = a;
                d.regs.rip = d.regs.rip.wrapping_sub(2);
            }
            Action::Ctl => self.apply_ctl(cur, now),
        }
    }

    /// [`Action::Ctl`]: carries out the command the hypercall handed over
    /// and applies its result or continuation (kept out of the hot
    /// [`Hv::apply`]).
    #[inline(never)]
    fn apply_ctl(&mut self, cur: usize, now: u64) {
        let done = match self.cpu.ctl.take() {
            Some(ctl) => self.ctl(cur, ctl, now),
            None => Action::Return(Errno::EINVAL.to_ret()),
        };
        self.apply(cur, done, now);
    }

    /// Carries out toolstack command `ctl` of domain `cur` (the privileged
    /// one; the hypercall layer validated the arguments): a result, or a
    /// continuation of a create (never [`Action::Ctl`]).
    fn ctl(&mut self, cur: usize, ctl: hypercall::Ctl, now: u64) -> Action {
        use hypercall::Ctl;
        let caller = self.domains[cur].id;
        let r = match ctl {
            Ctl::Create { arg, req, done } => return self.ctl_create(cur, arg, req, done),
            Ctl::Destroy(id) => self.live_slot(id).map(|i| {
                if !matches!(self.domains[i].state, RunState::Dead(_)) {
                    hvlog!(self.m, "dom{id} ({}): destroyed by dom{caller}", self.domains[i].name);
                    self.kill(i, Exit::Destroyed);
                }
            }),
            Ctl::Pause(id) => self.live_slot(id).and_then(|i| match self.domains[i].state {
                RunState::Dead(_) => Err(Errno::EINVAL),
                RunState::Paused => Ok(()),
                state => {
                    if state == RunState::Runnable {
                        self.bvt.block(i, now);
                    }
                    self.domains[i].state = RunState::Paused;
                    self.set_runstate(i, runstate::OFFLINE, now);
                    self.cpu.sched_dirty = true;
                    Ok(())
                }
            }),
            // Resumed as if woken: a domain paused while it blocked sees
            // its block or poll return early (as an event would make it).
            Ctl::Unpause(id) => self.live_slot(id).and_then(|i| match self.domains[i].state {
                RunState::Paused => {
                    self.wake(i);
                    Ok(())
                }
                RunState::Dead(_) => Err(Errno::EINVAL),
                _ => Ok(()),
            }),
            Ctl::SetSched { dom, weight, warp_us } => self.live_slot(dom).and_then(|i| {
                if matches!(self.domains[i].state, RunState::Dead(_)) {
                    return Err(Errno::EINVAL);
                }
                self.bvt.set_params(i, sched_params(weight, warp_us)).map_err(|_| Errno::EINVAL)?;
                self.domains[i].sched = (weight, warp_us);
                self.cpu.sched_dirty = true;
                Ok(())
            }),
        };
        Action::Return(match r {
            Ok(()) => 0,
            Err(e) => e.to_ret(),
        })
    }

    /// The slot of domain `id` (`ESRCH`: not in the table).
    fn live_slot(&self, id: DomId) -> Result<usize, Errno> {
        self.domains.slot_of(id).ok_or(Errno::ESRCH)
    }

    /// `CREATEDOMAIN` by domain `cur` of the request at `arg`: copies the
    /// image from the caller in units of [`domctl::CREATE_CHUNK`] bytes
    /// (continuing once the hypercall budget is spent; `done` is what
    /// earlier rounds copied), then builds the domain.
    fn ctl_create(&mut self, cur: usize, arg: u64, req: hypercall::CreateReq, done: u64) -> Action {
        use pvguest_abi::domctl::{CreateDomain, CREATEDOMAIN, CREATE_CHUNK};
        let caller = self.domains[cur].id;
        let job = if done == 0 {
            // A new request: one abandoned part-way (the caller started
            // over) is dropped.
            self.cancel_create();
            let mut cmdline = [0u8; pvguest_abi::domctl::MAX_CMDLINE];
            let line = &mut cmdline[..req.cmdline_len as usize];
            // An empty command line is not read (its address may be anything).
            if !line.is_empty() && self.copy_from_slot(cur, req.cmdline, line).is_err() {
                return self.create_failed(cur, arg, Errno::EFAULT, format_args!("the command line is not readable"));
            }
            let Ok(text) = core::str::from_utf8(line) else {
                return self.create_failed(cur, arg, Errno::EINVAL, format_args!("the command line is not UTF-8"));
            };
            let mut image = alloc::vec::Vec::new();
            let mut owned = alloc::string::String::new();
            if image.try_reserve_exact(req.image_len as usize).is_err() || owned.try_reserve_exact(text.len()).is_err()
            {
                return self.create_failed(cur, arg, Errno::ENOMEM, format_args!("no hypervisor memory for the image"));
            }
            owned.push_str(text);
            alloc::boxed::Box::new(CreateJob {
                caller,
                arg,
                req,
                cmdline: owned,
                image,
                zeroed: alloc::vec::Vec::new(),
            })
        } else {
            match self.creating.take() {
                Some(j) if j.caller == caller && j.arg == arg && j.progress() == done => j,
                other => {
                    if let Some(j) = other {
                        self.free_job(&j);
                    }
                    return self.create_failed(
                        cur,
                        arg,
                        Errno::EINVAL,
                        format_args!("a continued create that is not the one under way"),
                    );
                }
            }
        };
        let mut job = job;
        // The image, a unit at a time, within the hypercall's budget.
        let preempt = self.preempt_tsc();
        let mut units = 0;
        while (job.image.len() as u64) < job.req.image_len {
            if units > 0 && M::tsc() >= preempt {
                let done = job.progress();
                self.creating = Some(job);
                return Action::Continue([CREATEDOMAIN, arg, done, 0, 0]);
            }
            let at = job.image.len();
            let n = (job.req.image_len - at as u64).min(CREATE_CHUNK) as usize;
            job.image.resize(at + n, 0);
            if self.copy_from_slot(cur, job.req.image.wrapping_add(at as u64), &mut job.image[at..]).is_err() {
                return self.create_job_failed(
                    job,
                    cur,
                    arg,
                    Errno::EFAULT,
                    format_args!("the image is not readable at byte {at}"),
                );
            }
            units += 1;
        }
        // Then the new domain's frames, taken for the hypervisor and zeroed
        // a frame at a time within the same budget, so that the build that
        // follows only hands them over.
        let pages = u64::from(job.req.mem_kib) / 4;
        let free = self.frames.as_ref().map_or(0, |f| f.free_count()) as u64;
        if job.zeroed.is_empty() && free < pages {
            // Refused before any frame is taken (another allocation may
            // still take frames meanwhile: then the loop below says so).
            return self.create_job_failed(
                job,
                cur,
                arg,
                Errno::ENOMEM,
                format_args!("not enough free memory: {pages} pages asked, {free} free"),
            );
        }
        if job.zeroed.try_reserve_exact(pages as usize - job.zeroed.len().min(pages as usize)).is_err() {
            return self.create_job_failed(
                job,
                cur,
                arg,
                Errno::ENOMEM,
                format_args!("no hypervisor memory for the frame list"),
            );
        }
        while (job.zeroed.len() as u64) < pages {
            if units > 0 && M::tsc() >= preempt {
                let done = job.progress();
                self.creating = Some(job);
                return Action::Continue([CREATEDOMAIN, arg, done, 0, 0]);
            }
            let Some(m) = self.frames.as_mut().and_then(|f| f.alloc(crate::mm::frames::Owner::Hypervisor).ok()) else {
                let free = self.frames.as_ref().map_or(0, |f| f.free_count());
                return self.create_job_failed(
                    job,
                    cur,
                    arg,
                    Errno::ENOMEM,
                    format_args!("not enough free memory: {pages} pages asked, {free} free"),
                );
            };
            self.m.mem().zero_frame(m);
            job.zeroed.push(m);
            units += 1;
        }
        let vacant = match self.domains.reserve() {
            Ok(v) => v,
            Err(e) => {
                return self.create_job_failed(
                    job,
                    cur,
                    arg,
                    Errno::ENOSPC,
                    format_args!("the domain table is full ({e:?}: at most {MAX_DOMAINS} domains)"),
                );
            }
        };
        let id = vacant.id();
        let j = &mut *job;
        let build = Build {
            name: &j.req.name,
            image: &j.image,
            cmdline: &j.cmdline,
            mem_kib: j.req.mem_kib,
            dma_kib: 0,
            weight: j.req.weight,
            warp_us: j.req.warp_us,
            privileged: false,
            expect: Expect::Managed,
            paused: j.req.paused,
        };
        let built = self.build_domain(vacant, &build, builder::Source::Zeroed(&mut j.zeroed));
        let name = job.req.name.clone();
        // Frames the build did not take (none, unless it failed).
        self.free_job(&job);
        match built {
            Ok(_) => {
                let at = arg.wrapping_add(core::mem::offset_of!(CreateDomain, domid) as u64);
                let written = self.copy_to_slot(cur, at, &u32::from(id.raw()).to_le_bytes());
                self.dom_exc(id);
                Action::Return(match written {
                    Ok(()) => 0,
                    Err(e) => e.to_ret(),
                })
            }
            Err((errno, why)) => {
                hvlog!(self.m, "dom{id} ({}): not created: {why}", name);
                self.create_failed(cur, arg, errno, format_args!("{why}"))
            }
        }
    }

    /// Frees what a create job holds: the frames it zeroed and not yet
    /// handed over.
    fn free_job(&mut self, job: &CreateJob) {
        if let Some(f) = self.frames.as_mut() {
            for &m in &job.zeroed {
                let freed = f.free_held(m);
                debug_assert!(freed.is_ok(), "a create's frame {m:#x} is not held: {freed:?}");
            }
        }
    }

    /// Gives up the create under way, if any ([`Hv::free_job`]).
    fn cancel_create(&mut self) {
        if let Some(j) = self.creating.take() {
            self.free_job(&j);
        }
    }

    /// [`Hv::create_failed`] for the create `job` in hand (not the one
    /// under way): its frames go back too.
    fn create_job_failed(
        &mut self,
        job: alloc::boxed::Box<CreateJob>,
        cur: usize,
        arg: u64,
        errno: Errno,
        why: core::fmt::Arguments<'_>,
    ) -> Action {
        self.free_job(&job);
        self.create_failed(cur, arg, errno, why)
    }

    /// Ends a `CREATEDOMAIN` with `errno`, writing `why` into the request's
    /// `reason` (best effort: the errno is the answer).
    fn create_failed(&mut self, cur: usize, arg: u64, errno: Errno, why: core::fmt::Arguments<'_>) -> Action {
        self.cancel_create();
        let mut text = Reason::new();
        let _ = text.write_fmt(why);
        let mut reason = [0u8; 96];
        pvguest_abi::start_info::fill_c_str(&mut reason, &text);
        let at = arg.wrapping_add(core::mem::offset_of!(pvguest_abi::domctl::CreateDomain, reason) as u64);
        let _ = self.copy_to_slot(cur, at, &reason);
        Action::Return(errno.to_ret())
    }

    /// Copies from domain `i`'s memory at `va` ([`copy_from_domain`]).
    fn copy_from_slot(&mut self, i: usize, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let frames = self.frames.as_ref().expect("frame table set");
        copy_from_domain(self.m.mem(), frames, &mut self.domains[i], va, buf)
    }

    /// Copies into domain `i`'s memory at `va` ([`copy_to_domain`]).
    fn copy_to_slot(&mut self, i: usize, va: u64, data: &[u8]) -> Result<(), Errno> {
        let frames = self.frames.as_ref().expect("frame table set");
        copy_to_domain(self.m.mem(), frames, &mut self.domains[i], va, data)
    }

    /// Raises virtual IRQ `virq` for domain `i` if it bound a port to it.
    fn raise_virq(&mut self, i: usize, virq: u32) {
        if let Some(port) = self.domains[i].events.virq_port(virq) {
            self.raise(i, port);
        }
    }

    /// Rules 1-2 of `evtchn`: marks `port` pending and wakes the domain if
    /// it waits for it.
    #[inline(always)]
    fn raise(&mut self, i: usize, port: u32) {
        if self.mark_raised(i, port) {
            self.wake(i);
        }
    }

    /// Rule 1 of [`Hv::raise`]: marks `port` of domain `i` pending; returns
    /// whether rule 2 wakes the domain (the caller wakes it).
    #[inline(always)]
    fn mark_raised(&mut self, i: usize, port: u32) -> bool {
        let d = &mut self.domains[i];
        if matches!(d.state, RunState::Dead(_)) {
            // Its frames (the shared-info page among them) are free.
            return false;
        }
        let upcall = d.shared.raise(self.m.mem(), port);
        if d.state != RunState::Blocked {
            return false;
        }
        // Polling: its ports (none: a sleep until the poll's deadline).
        let polling = !d.vcpu.poll_ports.is_empty() || d.vcpu.poll_deadline.is_some();
        if polling {
            d.vcpu.poll_ports.contains(&port)
        } else {
            upcall
        }
    }

    #[inline(always)]
    fn wake(&mut self, i: usize) {
        let now = self.now();
        self.wake_at(i, now);
    }

    /// [`Hv::wake`] at `now`, sampled by the caller in this trip.
    #[inline(always)]
    fn wake_at(&mut self, i: usize, now: u64) {
        self.cpu.sched_dirty = true;
        let d = &mut self.domains[i];
        d.vcpu.poll_ports.clear();
        d.state = RunState::Runnable;
        // The timer is untouched; the index changes only if a poll
        // deadline goes (its entry is `2 * i + 1`, see `Hv::deadlines`).
        if d.vcpu.poll_deadline.take().is_some() {
            self.deadlines.remove(2 * i + 1);
        }
        self.bvt.wake(i, now);
        self.set_runstate(i, runstate::RUNNABLE, now);
    }

    /// Brings domain `i`'s entries in [`Hv::deadlines`] up to date with
    /// its timer and poll deadline (none for a dead domain). O(log n).
    fn sync_deadlines(&mut self, i: usize) {
        let (timer, poll) = match self.domains.at(i) {
            Some((_, d)) if !matches!(d.state, RunState::Dead(_)) => (d.vcpu.timer, d.vcpu.poll_deadline),
            _ => (None, None),
        };
        for (key, t) in [(2 * i, timer), (2 * i + 1, poll)] {
            match t {
                Some(t) => self.deadlines.set(key, (t, key)),
                None => self.deadlines.remove(key),
            }
        }
    }

    /// Fires every expired real-time timer and poll deadline, nearest
    /// first, charging each domain's timer work to it; returns whether any
    /// fired. A poll deadline of a domain that is no longer blocked in the
    /// poll is dropped.
    fn fire_timers(&mut self, now: u64) -> bool {
        let mut any = false;
        while let Some(((t, key), _)) = self.deadlines.peek() {
            if t > now {
                break;
            }
            let i = key / 2;
            if key % 2 == 0 {
                self.domains[i].vcpu.timer = None;
                let stretch = self.m.stretch();
                self.domains[i].wakes.fired(t, now, stretch);
                self.raise_virq(i, VIRQ_TIMER);
                any = true;
            } else if self.domains[i].state == RunState::Blocked {
                self.wake(i);
                any = true;
            } else {
                self.domains[i].vcpu.poll_deadline = None;
            }
            self.sync_deadlines(i);
            let t = self.now();
            self.cpu.meter.charge(&mut self.bvt, i, t);
        }
        any
    }

    /// The TSC value of the nearest real-time deadline after `now`
    /// (`u64::MAX`: none).
    fn next_deadline_tsc(&self, now: u64) -> u64 {
        match self.next_deadline() {
            Some(t) => M::tsc().saturating_add(self.m.tsc_ticks(t.saturating_sub(now))),
            None => u64::MAX,
        }
    }

    /// The nearest real-time deadline of any live domain.
    fn next_deadline(&self) -> Option<u64> {
        self.next_deadline_of().map(|(t, _)| t)
    }

    /// The nearest real-time deadline of any live domain, and whose it is.
    fn next_deadline_of(&self) -> Option<(u64, usize)> {
        self.deadlines.peek().map(|((t, key), _)| (t, key / 2))
    }

    /// Crashes domain `i` for a reason the hypervisor found: `summary`
    /// goes in the final report, `detail` in the log line.
    fn crash(&mut self, i: usize, summary: &'static str, detail: &str) {
        let d = &self.domains[i];
        hvlog!(
            self.m,
            "dom{} ({}) crashed: {summary}{}{detail}",
            d.id,
            d.name,
            if detail.is_empty() { "" } else { ": " }
        );
        self.end(i, Exit::Crashed(summary), false);
    }

    /// Ends domain `i` and reports why.
    fn kill(&mut self, i: usize, exit: Exit) {
        self.end(i, exit, true);
    }

    /// Ends domain `i`: it never runs again, and its teardown is queued.
    /// Its leftover console output goes out first, in bounded steps
    /// ([`Hv::reap_step`]), then its exit is reported (if `report`) and its
    /// memory freed.
    fn end(&mut self, i: usize, exit: Exit, report: bool) {
        let now = self.now();
        if self.creating.as_ref().is_some_and(|j| j.caller == self.domains[i].id) {
            // Its create under way goes with it, and the frames it zeroed.
            self.cancel_create();
        }
        self.set_runstate(i, runstate::OFFLINE, now);
        let d = &mut self.domains[i];
        d.console_dirty = false;
        d.report_pending = report;
        d.console_grace = now.saturating_add(CONSOLE_GRACE_NS);
        d.state = RunState::Dead(exit);
        // It grants nothing any more: its table is never read or written
        // again (its frames go with the rest of its memory, so they join
        // the span its teardown scans).
        for &m in d.grants.frames() {
            d.span = (d.span.0.min(m), d.span.1.max(m + 1));
        }
        d.grants.retire();
        let from = usize::try_from(d.span.0).unwrap_or(0);
        let id = d.id;
        let cpu_ms = d.runstate.time[runstate::RUNNING as usize] / 1_000_000;
        match d.record.and_then(|r| self.records.get_mut(r)) {
            Some(r) => (r.exit, r.cpu_ms) = (Some(exit), cpu_ms),
            None => {
                self.unrecorded.0 += 1;
                self.unrecorded.1 += u64::from(!exit.matches(d.expect));
            }
        }
        self.bvt.remove(i);
        self.sync_deadlines(i);
        self.cpu.sched_dirty = true;
        // Its interrupt lines are masked and freed at once (its pirq
        // ports close with the rest later, which then changes nothing).
        let lines = self.irqs.release(self.m.ioapic(), id);
        if lines > 0 {
            hvlog!(self.m, "dom{id}: {lines} interrupt line(s) masked and freed");
        }
        if self.reaping.push_back((id, from)).is_err() {
            // Cannot happen (one entry per domain); never leak silently.
            hvlog!(self.m, "dom{id}: teardown queue full, frames freed at once");
            self.report_end(i);
            if let Some(f) = self.frames.as_mut() {
                f.release_domain(id);
            }
        }
        if self.cpu.loaded == Some(i) {
            self.cpu.loaded = None;
        }
        self.dom_exc(id);
    }

    /// Tells the privileged domain that domain `id` ended or was reaped
    /// (`VIRQ_DOM_EXC`, if it bound it): its `GETDOMAININFO` changed.
    fn dom_exc(&mut self, id: DomId) {
        if id == DomId::DOM0 {
            return;
        }
        if let Some(slot) = self.domains.slot_of(DomId::DOM0).filter(|&s| self.domains[s].privilege.is_some()) {
            self.raise_virq(slot, VIRQ_DOM_EXC);
        }
    }

    /// Picks the domain to run (BVT) and prepares its entry. The running
    /// domain keeps the CPU unless another is due, or it yielded.
    /// block or expired slice) only forces the question to be asked.
    fn schedule(&mut self) -> Next {
        let now = self.now();
        self.schedule_at(now)
    }

    /// [`Hv::schedule`] with the time already sampled (`now`); later
    /// rounds of its loop (after idling, draining or teardown) sample again.
    fn schedule_at(&mut self, now: u64) -> Next {
        let mut sampled = Some(now);
        loop {
            let now = sampled.take().unwrap_or_else(|| self.now());
            // Nothing that could change the pick happened (no domain woke,
            // blocked, ended or yielded, the slice has time left and there
            // is no teardown or console work): the running domain goes on
            // without a new pick. Its charges wait in the meter (a payer's
            // charges add up there) until the next pick settles them, so
            // accounts stay exact; other domains' charges only delay them.
            // (The CPU's flags first: a yield or block skips the look-up.)
            if let Some(c) = self.cpu.current.filter(|_| {
                !self.cpu.sched_dirty && !self.cpu.yielding && self.reaping.is_empty() && now < self.cpu.slice_end
            }) {
                let d = &self.domains[c];
                if d.state == RunState::Runnable && !d.console_dirty {
                    self.cpu.meter.charge(&mut self.bvt, c, now);
                    if let Some(next) = self.prepare(c, now) {
                        return next;
                    }
                    continue;
                }
            }
            self.cpu.sched_dirty = false;
            // Charge point 4: the rest goes to the domain that ran (a no-op
            // for a domain that died), so the pick sees exact accounts.
            // (Skipped when it would change nothing: the fused yield and
            // block paths charged the domain at this same `now`.)
            if let Some(c) = self.cpu.current.filter(|&c| !self.cpu.meter.charged_to(c, now)) {
                self.cpu.meter.charge(&mut self.bvt, c, now);
            }
            self.cpu.meter.settle(&mut self.bvt);
            let now = if self.reaping.is_empty() { now } else { self.reap_step() };
            let current = self.cpu.current.filter(|&c| self.domains[c].state == RunState::Runnable);
            let yielding = core::mem::take(&mut self.cpu.yielding);
            let pick = match current {
                Some(c) if yielding => self.bvt.pick_yielding(now, c),
                _ => self.bvt.pick(now, current),
            };
            let Some(i) = pick.next else {
                if !self.domains.iter().any(|(_, _, d)| d.state == RunState::Blocked) {
                    self.finish(true);
                }
                // Nothing is runnable: idle time goes to leftover console
                // output and teardown first, a bounded step at a time, with
                // timers fired between steps. Nobody waits for the CPU, so
                // each step starts a new stretch.
                if self.domains.iter().any(|(_, _, d)| d.console_dirty) {
                    self.cpu.drain_until = M::tsc().saturating_add(self.budget_ticks);
                    let now = self.drain_consoles().unwrap_or(now);
                    self.fire_timers(now);
                    self.m.stretch_restart();
                    continue;
                }
                if !self.reaping.is_empty() && self.reap_wait.is_none() {
                    self.fire_timers(now);
                    self.m.stretch_restart();
                    continue;
                }
                // A bound, unmasked device line can still wake its owner
                // (a driver blocked until its device's interrupt). A
                // teardown that waits for a console daemon halts the CPU
                // like any wait (device interrupts are taken, the daemon
                // among those they wake), until the grace at the latest.
                if self.next_deadline().is_none() && !self.irqs.armed() && self.reap_wait.is_none() {
                    hvlog!(self.m, "every live domain is blocked and nothing can wake them: deadlock");
                    self.finish(false);
                }
                self.idle(now);
                continue;
            };
            self.cpu.slice_end = pick.run_for_ns.map_or(u64::MAX, |t| now.saturating_add(t));
            // Also when the pick is the domain that just ran: it may have
            // blocked and been woken in this same trip (a timer due at
            // once), which left it RUNNABLE.
            let di = &mut self.domains[i];
            if di.runstate.state != runstate::RUNNING {
                runstate_to(&mut di.runstate, runstate::RUNNING, now);
            }
            let (to, console_dirty) = (di.id, di.console_dirty);
            if let Some(c) = current.filter(|&c| c != i) {
                let dc = &mut self.domains[c];
                dc.wakes.switched_out(to);
                runstate_to(&mut dc.runstate, runstate::RUNNABLE, now);
            }
            self.cpu.current = Some(i);
            let mut entered = now;
            if console_dirty {
                // Its console is drained in its time; a deadline that
                // passed meanwhile is served before it runs.
                let t = self.drain_console(i, Some(self.drain_deadline()));
                if M::tsc() >= self.cpu.armed_tsc {
                    // What fired is served: the next deadline bounds what
                    // follows. Only a wake-up changes the pick.
                    let woke = self.fire_timers(t);
                    self.cpu.armed_tsc = self.next_deadline_tsc(t);
                    if woke {
                        continue;
                    }
                }
                // The timer is armed from the time after the drain: armed
                // from `now`, every deadline would fire the drain's length
                // late (up to a step's worth, a warped wake-up among them).
                entered = t;
            }
            if let Some(next) = self.prepare(i, entered) {
                return next;
            }
        }
    }

    /// One bounded step of the oldest pending teardown; returns the time
    /// after it (the step is charged to nobody). A dead domain's leftover
    /// console output goes first, one console step at a time, then its
    /// exit report; then its ports, [`PORTS_PER_REAP_STEP`] at a time
    /// (each reverting a peer's end to unbound); then its frames, [`REAP_STEP`] frame-table entries at a
    /// time (the console page among them, so it stays the domain's while
    /// it is read).
    fn reap_step(&mut self) -> u64 {
        self.reap_wait = None;
        let dying = self.reaping.front().and_then(|&(id, _)| self.domains.slot_of(id));
        // A console taken over: the report waits for the daemon to drain
        // the ring (bounded by the grace), its mappings and ports go first.
        let waiting = dying.is_some_and(|i| self.console_unread(i));
        if let Some(i) =
            dying.filter(|&i| !waiting && (self.domains[i].console_ring.is_some() || self.domains[i].report_pending))
        {
            let now = self.now();
            if !self.console_step(i, now) {
                self.report_end(i);
            }
        } else if let Some(i) = dying.filter(|&i| !self.domains[i].maptrack.is_empty()) {
            // Then the grants it had mapped: each released (its granter may
            // end access, or free an orphan frame), with the notification
            // it asked for sent on its ports, still open.
            let id = self.domains[i].id;
            for _ in 0..MAPPINGS_PER_REAP_STEP {
                let Some(f) = self.frames.as_mut() else { break };
                let Some(un) = Gnttab::new(&mut AllGrants(&mut self.domains), f, self.m.mem()).teardown_one(id) else {
                    break;
                };
                let target = match (un.notify, self.domains.get(id)) {
                    (Some(port), Some(d)) => match d.events.get(port) {
                        Ok(Port::Interdomain { remote, port: rp }) => self.domains.slot_of(remote).map(|s| (s, rp)),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some((slot, rp)) = target {
                    self.raise(slot, rp);
                }
            }
        } else if let Some(i) = dying.filter(|&i| !self.domains[i].ports_closed) {
            // Then its ports: its peers see their ends unbound.
            let id = self.domains[i].id;
            for _ in 0..PORTS_PER_REAP_STEP {
                let Some((port, closed)) = self.domains[i].events.close_first() else {
                    self.domains[i].ports_closed = true;
                    break;
                };
                if let Closed::Remote { remote, port: rp } = closed {
                    if let Some(peer) = self.domains.get_mut(remote) {
                        crate::event::unbind_remote_end(&mut peer.events, rp, id, port);
                    }
                }
            }
        } else if let Some(i) = dying.filter(|_| waiting) {
            // Only the report is left before its frames (the console page
            // among them), and the daemon has not drained the ring yet:
            // nothing to do until it has, or the grace has run out.
            self.reap_wait = Some(self.domains[i].console_grace);
            let now = self.now();
            self.cpu.meter.skip(now);
            return now;
        } else if let (Some(&(id, from)), Some(f)) = (self.reaping.front(), self.frames.as_mut()) {
            let end = self.domains.get(id).map_or(usize::MAX, |d| usize::try_from(d.span.1).unwrap_or(usize::MAX));
            let next =
                f.release_domain_step(id, from, REAP_STEP.min(end.saturating_sub(from)).max(1)).filter(|&n| n < end);
            let _ = self.reaping.pop_front();
            match next {
                Some(n) => {
                    let _ = self.reaping.push_front((id, n));
                }
                None => self.forget(id),
            }
        }
        let now = self.now();
        self.cpu.meter.skip(now);
        now
    }

    /// Whether dead domain `i`'s teardown still waits for the console
    /// daemon (before its exit report, if it has one, and before it leaves
    /// the table, after which the daemon could no longer write as it): its
    /// console was taken over by a daemon still alive, its grace has not
    /// run out, and its ring still holds output (read from the page's
    /// indices as they are, validated like any the guest writes: a ring
    /// that does not attach or is corrupt waits no more).
    fn console_unread(&mut self, i: usize) -> bool {
        let d = &self.domains[i];
        let Some(daemon) = d.console_taken else { return false };
        if self.now() >= d.console_grace {
            return false;
        }
        // A daemon that has ended drains nothing.
        if self.domains.get(daemon).is_none_or(|t| matches!(t.state, RunState::Dead(_))) {
            return false;
        }
        let d = &self.domains[i];
        let mfn = d.console_mfn;
        self.m.console_unread(mfn) > 0
    }

    /// A reaped domain leaves the table: its slot is free for the next one,
    /// and nothing of the hypervisor's still names the slot.
    fn forget(&mut self, id: DomId) {
        let Some(slot) = self.domains.slot_of(id) else { return };
        for s in [&mut self.cpu.current, &mut self.cpu.loaded, &mut self.cpu.armed_for] {
            if *s == Some(slot) {
                *s = None;
            }
        }
        self.domains.remove(id);
        self.dom_exc(id);
    }

    /// Halts until the nearest deadline, then fires timers.
    fn idle(&mut self, now: u64) {
        if let Some(c) = self.cpu.current.take() {
            if self.domains[c].state == RunState::Runnable {
                self.set_runstate(c, runstate::RUNNABLE, now);
            }
        }
        let next = match (self.next_deadline(), self.reap_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let until = next.map_or(MAX_ARM_NS, |d| d.saturating_sub(now));
        self.m.arm_timer(until.clamp(1_000, MAX_ARM_NS));
        self.m.halt();
        let mut now = self.now();
        // Halted time is nobody's, and not a stretch in the hypervisor.
        self.cpu.meter.skip(now);
        self.m.stretch_restart();
        // Device interrupts taken while halted: each line's owner pays.
        while let Some(v) = self.m.take_irq() {
            self.device_interrupt(u64::from(v));
            now = self.now();
            match self.irq_payer(u64::from(v)) {
                Some(s) => _ = self.cpu.meter.charge(&mut self.bvt, s, now),
                None => self.cpu.meter.skip(now),
            }
        }
        self.fire_timers(now);
    }

    /// Final steps before entering domain `i`: upcall delivery, per-domain
    /// CPU state, frame sanitising, timer arming. `None` if the domain died
    /// on the way (its upcall could not be delivered).
    #[inline(always)] // once per full trip: no call
    fn prepare(&mut self, i: usize, now: u64) -> Option<Next> {
        let d = &mut self.domains[i];
        d.wakes.entered(now);
        if d.shared.upcall_due(self.m.mem_ref()) && d.vcpu.callbacks.event != 0 {
            let b = Bounce {
                handler: d.vcpu.callbacks.event,
                vector: UPCALL_VECTOR,
                error: 0,
                cr2: 0,
                saved_upcall_mask: 0,
            };
            if !self.deliver(i, &b, true) {
                return None;
            }
        }
        // Per-domain segment state: saved from the CPU when a domain is
        // switched out (the guest may have changed it by loading a
        // selector), loaded when it is switched in, and otherwise written
        // only after `set_segment_base`.
        let switch = self.cpu.loaded != Some(i);
        // What the CPU holds now, when known (read back from the domain
        // switched out): state equal to it is not loaded again.
        let mut in_cpu = None;
        if switch {
            if let Some(old) = self.cpu.loaded {
                let cpu = self.m.save_segments();
                let v = &mut self.domains[old].vcpu;
                v.selectors = cpu.selectors;
                // A base set by `set_segment_base` but not yet loaded is the
                // newer value: keep it.
                if !v.segs_dirty {
                    (v.fs_base, v.gs_base) = (cpu.fs_base, cpu.gs_base);
                }
                in_cpu = Some(cpu);
            }
            self.cpu.loaded = Some(i);
        }
        let d = &mut self.domains[i];
        if switch || d.vcpu.segs_dirty {
            // The selectors were read from the CPU while this domain ran (or
            // are null); the bases were checked canonical by
            // `set_segment_base` or read back from the CPU.
            let s = d.vcpu.segments();
            // Selectors are loaded on a switch unless the CPU holds the same
            // ones (loading fs or gs would reset its base: the bases are
            // written whenever selectors are); bases unless both are equal.
            let selectors = switch && in_cpu.is_none_or(|c| c.selectors != s.selectors);
            if selectors || in_cpu.is_none_or(|c| (c.fs_base, c.gs_base) != (s.fs_base, s.gs_base)) {
                self.m.load_segments(&s, selectors);
            }
            d.vcpu.segs_dirty = false;
        }
        // The syscall gate and ring-1 stack, written when they differ from
        // what the CPU's tables hold.
        let gate = d.vcpu.traps.syscall_gate;
        let entry = ((gate != 0 && d.vcpu.kernel_sp.is_some()).then_some(gate), d.vcpu.kernel_sp.unwrap_or(0));
        if self.cpu.gate_rsp1 != Some(entry) {
            self.m.set_syscall_gate(entry.0);
            self.m.set_rsp1(entry.1);
            self.cpu.gate_rsp1 = Some(entry);
        }
        if !d.regs.sanitize() {
            // Frames come from the CPU, the builder or validated bounces,
            // so only a hypervisor bug gets here; never iretq to it.
            self.crash(i, "non-canonical return frame", "");
            return None;
        }
        let next = Next { id: d.id, cr3: d.root * 4096, shared: d.shared.mfn, frame: &d.regs, fx: &d.fx };
        let vt_left = vtimer_left(d, now);
        self.arm_deadline(i, now, vt_left);
        Some(next)
    }

    /// Arms the one-shot timer for domain `i`, about to run at `now`: the
    /// nearest of its slice end, every domain's next real-time deadline and
    /// its own virtual-time alarm.
    #[inline(always)] // on every trip: once per switch, no call
    fn arm_deadline(&mut self, i: usize, now: u64, vt_left: Option<u64>) {
        let mut until = self.cpu.slice_end.saturating_sub(now);
        let mut armed_for = None;
        if let Some((t, o)) = self.next_deadline_of() {
            if t.saturating_sub(now) < until {
                until = t.saturating_sub(now);
                armed_for = (o != i).then_some(o);
            }
        }
        if let Some(left) = vt_left {
            if left < until {
                until = left;
                armed_for = None;
            }
        }
        let until = until.clamp(1_000, MAX_ARM_NS);
        self.cpu.armed_for = armed_for;
        self.m.arm_timer(until);
        self.cpu.armed_tsc = M::tsc().saturating_add(self.m.tsc_ticks(until));
    }
}

/// Run time left before domain `d`'s virtual-time alarm, at `now` (`None`:
/// no alarm set): what [`Hv::arm_deadline`] needs of the domain it arms
/// for, read by the caller, which holds the domain already.
#[inline(always)]
fn vtimer_left(d: &Domain, now: u64) -> Option<u64> {
    let vt = d.vcpu.vtimer?;
    let ran = d.runstate.time[runstate::RUNNING as usize] + now.saturating_sub(d.runstate.state_entry_time);
    Some(vt.saturating_sub(ran))
}

/// Moves run-state record `r` to state `state` at `now`, accounting the
/// time spent in the previous one.
#[inline]
fn runstate_to(r: &mut RunstateInfo, state: u32, now: u64) {
    let old = r.state as usize;
    if old < r.time.len() {
        r.time[old] += now.saturating_sub(r.state_entry_time);
    }
    r.state = state;
    r.state_entry_time = now;
}

/// Hypercalls that only return a value (`xen_version` has its own lock-free
/// path before this one, and comes here when an upcall is due): they
/// change neither scheduling, timers, the trap table, stacks nor segment
/// bases, so they may take [`Hv::fast_hypercall`]. (`new_baseptr` changes
/// `root`, which the fast path reads afterwards; an unmask may make an
/// upcall due, which it delivers; an interdomain send or a grant unmap
/// notification leaves a port to raise, which it raises when its domain is
/// not blocked, and sends to the full path (to wake that domain) when it is; a
/// preempted batch continues there too. Page-table changes, grant mappings
/// among them, need no flush here: every exit reloads CR3.)
pub fn fast_path_hypercall(n: u64) -> bool {
    matches!(
        n,
        nr::XEN_VERSION
            | nr::CONSOLE_IO
            | nr::MEMORY_OP
            | nr::MMU_UPDATE
            | nr::UPDATE_VA_MAPPING
            | nr::MMUEXT_OP
            | nr::EVENT_CHANNEL_OP
            | nr::GRANT_TABLE_OP
    )
}

/// Writes one console line of a domain to COM1: `[name] line`. Plain
/// byte writes (no formatting machinery): this is the per-byte cost the
/// console steps bound.
fn tagged_line<M: Machine>(m: &mut M, name: &str, line: &str) {
    m.console_write(b"[");
    m.console_write(name.as_bytes());
    m.console_write(b"] ");
    m.console_write(line.as_bytes());
    m.console_write(b"\n");
}

/// UART bytes a line of domain `name` costs besides its text: the tag and
/// the line end (`\r\n`).
fn line_overhead(name: &str) -> u64 {
    name.len() as u64 + 3 + 2
}

fn name_of(s: &str) -> heapless::String<32> {
    let mut n = heapless::String::new();
    for c in s.chars().take(31) {
        let _ = n.push(c);
    }
    n
}

#[cfg(test)]
mod tests;
