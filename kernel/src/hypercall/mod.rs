//! The hypercall table: decoding and validating every hypercall.
//!
//! The trap layer saves the guest's registers, calls [`dispatch`] with the
//! number (`rax`) and the five argument registers, and carries out the
//! returned [`Action`]. Everything a hypercall needs from the machine goes
//! through [`Env`], so each hypercall and all its bad inputs are tested on
//! the host.
//!
//! # Validation rules
//! - An unknown hypercall number or sub-command returns `-ENOSYS`.
//! - Every guest pointer is dereferenced only through [`Env::copy_from_guest`]
//!   / [`Env::copy_to_guest`] (the one guest-memory accessor); an unmapped,
//!   read-only, foreign or hypervisor address returns `-EFAULT`.
//! - Structures are copied out of guest memory once, then decoded field by
//!   field; the guest changing them afterwards has no effect.
//! - Counts and lengths are bounded before any copy (`-EINVAL` or `-E2BIG`).
//! - Batches (`mmu_update`, `mmuext_op`, `multicall`) stop at the first
//!   failing entry and report how many were done. A batch's `done` pointer
//!   is checked writable before the first request is applied.
//!
//! # The budget
//! No hypercall holds the CPU (with interrupts off) for more than
//! [`BUDGET_NS`] plus one unit of work. Every loop over guest-sized input
//! asks [`Env::preempt_due`] between units, and the trap layer answers true
//! once the budget since the hypercall began is spent (or a timer deadline
//! has passed). The work then stops at a unit boundary and returns
//! [`Action::Continue`]: the trap layer re-executes the same `int 0x82` with
//! the updated arguments once the scheduler has had its say, so the guest
//! sees one hypercall. A unit is one batch request (one page-table entry,
//! or one extended op: a pin or unpin stops every
//! [`crate::mm::STEP_ENTRIES`] entries when the budget is spent and runs
//! again from where it stopped, see [`crate::mm`] rule 7 (v)), one
//! multicall entry's unit of work, or one console step
//! ([`crate::console::STEP_WORK`] units of output work). Under QEMU `-icount shift=0`, where one
//! ns is one instruction, the budget is 50 000 instructions; `cargo xtask
//! bench` measures the worst uninterrupted stretch a guest can cause
//! (`worst_hypercall`).
//!
//! Continuation state rides in argument registers the guest passes as 0:
//! bits 32..63 of a batch's count (requests done so far), bits 16..31 of a
//! console write's length (bytes done so far), and a multicall's third
//! argument (bit 0: an entry asked to yield). A multicall entry that is
//! itself preempted has its arguments rewritten in guest memory with the
//! continuation's (as Xen does), and the multicall resumes at that entry.
//! - Guest addresses the hypervisor will jump to are validated once, in
//!   [`crate::domain::vcpu`].
//! - A privileged operation (`console_io` read, every `physdev_op`) asks
//!   [`Env::privilege`] first and passes the [`Privilege`] on to the
//!   operation, which cannot be called without one; a domain without it
//!   gets `EPERM` before any argument is read.

mod guest;

pub use guest::{GuestPtr, GuestSlice};

use crate::domain::vcpu::Vcpu;
use crate::domain::{DomId, Privilege};
use crate::event::{self as evt, Closed, EventChannels, Port};
use crate::grant::{CopyOp, GrantError, MapRequest, MAX_GRANT_FRAMES};
use crate::pci::ConfigAddr;
use core::mem::offset_of;
use pvguest_abi::domctl::{self, BootImage, DomainInfo, PhysInfo, ReadBootImage};
use pvguest_abi::event::{
    self, status, AllocUnbound, BindInterdomain, BindIpi, BindPirq, BindVcpu, BindVirq, Close, Reset, Send, Status,
    Unmask, BIND_PIRQ_WILL_SHARE, DOMID_CONSOLE_BACKEND,
};
use pvguest_abi::grant::{
    self as gnt, gntst, GnttabCopy, MapGrantRef, QuerySize, SetUnmapNotify, SetupTable, UnmapGrantRef,
};
use pvguest_abi::memory::{MemRange, MemoryMap};
use pvguest_abi::mmu::{MmuUpdate, MmuextOp, MAX_BATCH};
use pvguest_abi::physdev::{self, map_pirq_type, Eoi, MapPirq, PciConfig};
use pvguest_abi::sched_op::SchedPoll;
use pvguest_abi::trap::{TrapInfo, MAX_TRAP_TABLE};
use pvguest_abi::vcpu::{self as vcpuop, RunstateInfo, SingleshotTimer, SSHOT_FUTURE};
use pvguest_abi::{
    console_io, features, hypercall, layout, memory, sched_op, segbase, shutdown_reason, version, Errno,
    MulticallEntry, DOMID_SELF, MULTICALL_MAX,
};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Why a domain shut itself down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// Normal completion.
    Poweroff,
    /// Asked for a restart.
    Reboot,
    /// The guest declared itself crashed.
    Crash,
}

/// What the trap layer must do after a hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Return `value` in `rax` and resume the caller.
    Return(i64),
    /// Return 0 and let the scheduler pick another domain.
    Yield,
    /// Return 0 once an event is pending; until then the domain uses no CPU.
    Block,
    /// Return 0 once a polled port is pending or the poll deadline passes
    /// (the ports and deadline are in [`Vcpu::poll_ports`]).
    Poll,
    /// The domain is finished.
    Shutdown(ShutdownReason),
    /// A batch was preempted part-way: re-execute the same hypercall with
    /// these argument registers (rdi, rsi, rdx, r10, r8) once the domain
    /// runs again. The trap layer rewinds `rip` to the `int 0x82` and leaves
    /// `rax` (the hypercall number) alone, so the guest sees one hypercall.
    Continue([u64; 5]),
    /// A toolstack command was validated and handed over with
    /// [`Env::request_ctl`]: the trap layer carries it out (it changes the
    /// domain table and the scheduler) and sets the result.
    Ctl,
}

/// A privileged toolstack command (`domctl`), decoded and validated by
/// [`dispatch`], carried out by the trap layer after the hypercall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ctl {
    /// `CREATEDOMAIN` of the request at guest address `arg`, with `done`
    /// image bytes copied by earlier rounds of the continuation.
    Create { arg: u64, req: CreateReq, done: u64 },
    /// `DESTROYDOMAIN`.
    Destroy(DomId),
    /// `PAUSEDOMAIN`.
    Pause(DomId),
    /// `UNPAUSEDOMAIN`.
    Unpause(DomId),
    /// `SCHEDOP`: weight `1..=10_000`, warp in microseconds.
    SetSched { dom: DomId, weight: u32, warp_us: u32 },
}

/// A validated [`domctl::CreateDomain`]: a name of the bundle's alphabet,
/// lengths and sizes within their bounds (the image and command line are
/// still in the caller's memory; the image is validated by the ELF loader
/// once copied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateReq {
    pub image: u64,
    pub image_len: u64,
    pub cmdline: u64,
    pub cmdline_len: u32,
    pub mem_kib: u32,
    /// `1..=10_000` (0 in the request became the default).
    pub weight: u32,
    pub warp_us: u32,
    pub paused: bool,
    pub name: heapless::String<31>,
}

impl CreateReq {
    /// Validates `c`: the failure's errno and reason.
    pub fn decode(c: &domctl::CreateDomain) -> Result<CreateReq, (Errno, &'static str)> {
        let bad = |why| Err((Errno::EINVAL, why));
        // The boot bundle's rule for names.
        let name = match ringfence_bundle::parse_name(&c.name) {
            Ok(name) => name,
            Err(ringfence_bundle::RecordErrorKind::NameBadByte { .. }) => {
                return bad("the name may hold only letters, digits, '.', '_' and '-'")
            }
            Err(_) => return bad("the name must be 1 to 31 bytes, NUL-terminated and NUL-padded"),
        };
        if c.image_len == 0 || c.image_len > domctl::MAX_CREATE_IMAGE {
            return bad("the image must be 1 byte to 8 MiB long");
        }
        if c.cmdline_len as usize > domctl::MAX_CMDLINE {
            return bad("the command line is longer than 1023 bytes");
        }
        if c.mem_kib == 0 || !c.mem_kib.is_multiple_of(4) || c.mem_kib > domctl::MAX_CREATE_MEM_KIB {
            return bad("memory must be a positive multiple of 4 KiB, at most 1 GiB");
        }
        let weight = if c.weight == 0 { crate::sched::bvt::DEFAULT_WEIGHT } else { c.weight };
        if !(1..=crate::sched::bvt::MAX_WEIGHT).contains(&weight) {
            return bad("the weight must be 1 to 10000");
        }
        if c.warp_us > MAX_WARP_US {
            return bad("the warp must be at most 1 s");
        }
        if c.flags & !domctl::create::KNOWN != 0 {
            return bad("unknown flags");
        }
        let mut n = heapless::String::new();
        // At most 31 bytes: always fits.
        let _ = n.push_str(name);
        Ok(CreateReq {
            image: c.image,
            image_len: c.image_len,
            cmdline: c.cmdline,
            cmdline_len: c.cmdline_len,
            mem_kib: c.mem_kib,
            weight,
            warp_us: c.warp_us,
            paused: c.flags & domctl::create::PAUSED != 0,
            name: n,
        })
    }
}

/// Largest BVT warp a toolstack may set, in microseconds (1 s).
pub const MAX_WARP_US: u32 = 1_000_000;

/// The frames of a grant table, as `setup_table` hands them out.
pub type GrantFrames = heapless::Vec<crate::mm::frames::Mfn, { MAX_GRANT_FRAMES as usize }>;

/// Work on two port tables at once: the caller's, and another domain's
/// (`None` when that is the caller itself). See [`Env::with_events`].
pub type PairFn<'f> = dyn FnMut(&mut EventChannels, Option<&mut EventChannels>) -> Result<u32, Errno> + 'f;

/// The machine as a hypercall sees it: the calling domain's memory and
/// state.
pub trait Env {
    /// Copies from the calling domain's memory (see [`crate::mm::guest_mem`]).
    fn copy_from_guest(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Copies into the calling domain's memory.
    fn copy_to_guest(&mut self, va: u64, data: &[u8]) -> Result<(), Errno>;
    /// Takes one bounded step of `bytes` into the calling domain's console
    /// ([`crate::console::ConsoleOut::push_bounded`]) and returns how many
    /// bytes it took: at least one unless `bytes` is empty.
    /// Takes console output from the caller, or, with `as_dom`, as domain
    /// `as_dom`'s (checked by [`Env::console_target`]).
    fn console_write(&mut self, as_dom: Option<DomId>, bytes: &[u8]) -> usize;
    /// The domain the privileged caller may write console output as: one
    /// whose console it took over (`EINVAL` otherwise, `ESRCH` if none).
    fn console_target(&self, privilege: Privilege, id: u16) -> Result<DomId, Errno>;
    /// `CONSOLE_TAKEOVER` of `dom` by the privileged caller: the caller's
    /// new port, connected to `dom`'s console port.
    fn console_takeover(&mut self, privilege: Privilege, dom: DomId) -> Result<u32, Errno>;
    /// The caller notified its console port: its console ring has output
    /// for the backend (drained outside the hypercall).
    fn console_kick(&mut self);
    /// Reads available console input (never blocks): privileged.
    fn console_read(&mut self, buf: &mut [u8], privilege: Privilege) -> usize;
    /// The caller's privilege, if it has one (dom0).
    fn privilege(&self) -> Option<Privilege>;
    /// Frames the caller owns.
    fn nr_pages(&self) -> u64;
    /// System time in ns.
    fn now_ns(&self) -> u64;
    /// The caller's run-state accounting (`time[RUNNING]` is its virtual
    /// time).
    fn runstate(&self) -> RunstateInfo;
    /// The caller's vCPU state.
    fn vcpu(&mut self) -> &mut Vcpu;
    /// The caller's event channels.
    fn events(&mut self) -> &mut EventChannels;
    /// The caller's id.
    fn caller(&self) -> DomId;
    /// Runs `f` on the caller's port table and on domain `dom`'s: `f(mine,
    /// Some(theirs))`, or `f(mine, None)` when `dom` is the caller. `ESRCH`
    /// when `dom` is not a live domain. (Handlers see every domain, two at
    /// a time, through this; it is the only way to another domain's
    /// ports.)
    fn with_events(&mut self, dom: DomId, f: &mut PairFn<'_>) -> Result<u32, Errno>;
    /// Raises `port` of domain `dom` once the hypercall is done (waking
    /// `dom` if it waits for it). A domain that has died meanwhile is
    /// skipped.
    fn notify(&mut self, dom: DomId, port: u32);
    /// `GNTTABOP_setup_table` for `dom` ([`crate::grant::Gnttab::setup_table`]):
    /// the table's first `nr_frames` frames.
    fn grant_setup(&mut self, dom: DomId, nr_frames: u32) -> Result<GrantFrames, GrantError>;
    /// `GNTTABOP_query_size` for `dom`: (frames now, quota).
    fn grant_query(&mut self, dom: DomId) -> Result<(u32, u32), GrantError>;
    /// One `GNTTABOP_copy` element of the caller ([`crate::grant::Gnttab::copy`]).
    fn grant_copy(&mut self, op: &CopyOp) -> Result<(), GrantError>;
    /// One `GNTTABOP_map_grant_ref` element of the caller: the grant
    /// layer's map, then the host mapping in the caller's page tables
    /// (undone if that fails). Returns (handle, frame machine address).
    fn grant_map(&mut self, req: &MapRequest) -> Result<(u32, u64), GrantError>;
    /// One `GNTTABOP_unmap_grant_ref` element of the caller: checks it,
    /// clears the host mapping, then releases the grant (sending the unmap
    /// notification, if one was asked for).
    fn grant_unmap(&mut self, handle: u32, host_addr: u64, dev_bus_addr: u64) -> Result<(), GrantError>;
    /// `GNTTABOP_set_unmap_notify` for a mapping of the caller.
    fn grant_set_notify(&mut self, handle: u32, action: u16, offset: u16, port: u32) -> Result<(), GrantError>;
    /// Unmasks a port in shared info, delivering it if pending.
    fn unmask(&mut self, port: u32);
    /// Whether a port is pending in shared info.
    fn port_pending(&self, port: u32) -> bool;
    /// Clears the event mask; returns whether an upcall is pending.
    fn enable_events(&mut self) -> bool;
    /// One validated page-table entry update.
    fn mmu_update(&mut self, req: MmuUpdate) -> Result<(), Errno>;
    /// One extended MMU operation. `Ok(false)`: a pin or unpin stopped
    /// part-way because [`Env::preempt_due`] said so (its progress is kept
    /// on the frame, see [`crate::mm`] rule 7 (v)); issue it again to go
    /// on.
    fn mmuext(&mut self, op: MmuextOp) -> Result<bool, Errno>;
    /// Updates the entry that maps `va` in the current page tables.
    fn update_va_mapping(&mut self, va: u64, val: u64, flags: u64) -> Result<(), Errno>;
    /// A PCI configuration read for the caller, which holds `privilege`
    /// ([`crate::pci::Pci::read`]).
    fn pci_read(&mut self, privilege: Privilege, at: ConfigAddr) -> u32;
    /// A PCI configuration write for the caller, which holds `privilege`,
    /// through the filter ([`crate::pci::Pci::write`]).
    fn pci_write(&mut self, privilege: Privilege, at: ConfigAddr, value: u32) -> Result<(), Errno>;
    /// `PHYSDEVOP_map_pirq` of GSI `gsi` for the caller, which holds
    /// `privilege` ([`crate::irq::Irqs::map_gsi`]): the pirq.
    fn map_pirq(&mut self, privilege: Privilege, gsi: i32, pirq: i32) -> Result<u32, Errno>;
    /// The checks of `EVTCHNOP_bind_pirq` for the caller, before a port is
    /// allocated ([`crate::irq::Irqs::check_bind`]).
    fn check_bind_pirq(&mut self, privilege: Privilege, pirq: u32) -> Result<(), Errno>;
    /// Binds the caller's `pirq` to its `port` and unmasks the line
    /// ([`crate::irq::Irqs::bind`]).
    fn bind_pirq(&mut self, privilege: Privilege, pirq: u32, port: u32) -> Result<(), Errno>;
    /// `PHYSDEVOP_eoi` by the caller ([`crate::irq::Irqs::eoi`]).
    fn pirq_eoi(&mut self, privilege: Privilege, pirq: u32) -> Result<(), Errno>;
    /// `dom`'s port bound to `pirq` was closed: its line is masked and
    /// unbound ([`crate::irq::Irqs::unbind`]).
    fn pirq_unbind(&mut self, dom: DomId, pirq: u32);
    /// `domctl` `GETDOMAININFO` for the caller, which holds `privilege`:
    /// the live domain (dead ones until reaped) with the smallest id at or
    /// above `from`, or `ESRCH`.
    fn domain_info(&mut self, privilege: Privilege, from: u16) -> Result<DomainInfo, Errno>;
    /// `domctl` `PHYSINFO`: the figures of the leak check.
    fn phys_info(&mut self, privilege: Privilege) -> PhysInfo;
    /// `domctl` `BOOTIMAGE_INFO`: template `index` of the boot bundle
    /// (`ESRCH` past the last).
    fn boot_image(&mut self, privilege: Privilege, index: u32) -> Result<BootImage, Errno>;
    /// `domctl` `BOOTIMAGE_READ`: copies `r.len` bytes of template
    /// `r.index`'s image from `r.offset` to the caller's `r.buf` (`EINVAL`
    /// for a range outside the image; `len` is already bounded).
    fn boot_image_read(&mut self, privilege: Privilege, r: &ReadBootImage) -> Result<(), Errno>;
    /// Hands a validated toolstack command to the trap layer, which carries
    /// it out once the hypercall returns [`Action::Ctl`].
    fn request_ctl(&mut self, privilege: Privilege, ctl: Ctl);
    /// Whether this hypercall must stop at the next unit boundary: its
    /// [`BUDGET_NS`] is spent or other work is due (a timer deadline
    /// passed). Long work then continues later (see the module docs).
    fn preempt_due(&mut self) -> bool;
}

/// Bytes of a `console_io` write copied from the guest at a time.
pub const CONSOLE_PIECE: usize = 256;

/// Longest a hypercall runs before it continues later, in ns of system
/// time (50 000 instructions under QEMU `-icount shift=0`).
pub const BUDGET_NS: u64 = 50_000;

/// The action of hypercall `nr` with first argument `a0` when it needs
/// nothing of its environment: only `sched_op` yield, whose whole effect is
/// its [`Action::Yield`]. The trap loop takes it without building an
/// environment; [`dispatch`] answers the same (its `sched_op` arm). `None`
/// for every other call.
#[inline]
pub fn without_env(nr: u64, a0: u64) -> Option<Action> {
    (nr == hypercall::SCHED_OP && a0 == sched_op::YIELD).then_some(Action::Yield)
}

/// The two hypercalls that give up the CPU, `sched_op` yield and block,
/// performed with only the caller's event switch: `enable_events` unmasks
/// its events and returns whether an upcall is pending (as
/// [`Env::enable_events`]). The trap loop's fused switch path takes them
/// before any environment exists; [`dispatch`] answers the same (its
/// `sched_op` arm calls this). `None` for every other call (nothing done).
#[inline]
pub fn give_up_cpu(nr: u64, a0: u64, enable_events: impl FnOnce() -> bool) -> Option<Action> {
    if nr != hypercall::SCHED_OP {
        return None;
    }
    match a0 {
        sched_op::YIELD => Some(Action::Yield),
        // Xen semantics: enable event delivery, and block only if nothing
        // is pending already (the check and the block are atomic: the
        // hypervisor runs with interrupts off).
        sched_op::BLOCK => Some(if enable_events() { Action::Return(0) } else { Action::Block }),
        _ => None,
    }
}

/// Decodes and performs hypercall `nr` with arguments `a` (rdi, rsi, rdx,
/// r10, r8).
pub fn dispatch<E: Env>(env: &mut E, nr: u64, a: [u64; 5]) -> Action {
    match nr {
        hypercall::SET_TRAP_TABLE => ret(set_trap_table(env, a[0])),
        hypercall::MMU_UPDATE => mmu_update(env, a),
        hypercall::STACK_SWITCH => ret(env.vcpu().stack_switch(a[0], a[1]).map(|_| 0)),
        hypercall::SET_CALLBACKS => ret(env.vcpu().callbacks.set(a[0], a[1], a[2]).map(|_| 0)),
        hypercall::MEMORY_OP => ret(memory_op(env, a[0], a[1])),
        hypercall::MULTICALL => multicall(env, a[0], a[1], a[2]),
        hypercall::UPDATE_VA_MAPPING => ret(update_va_mapping(env, a[0], a[1], a[2])),
        hypercall::SET_TIMER_OP => {
            env.vcpu().timer = if a[0] == 0 { None } else { Some(a[0]) };
            Action::Return(0)
        }
        hypercall::XEN_VERSION => ret(xen_version(a[0])),
        hypercall::CONSOLE_IO => console(env, a[0], a[1], a[2]),
        hypercall::VCPU_OP => ret(vcpu_op(env, a[0], a[1], a[2])),
        hypercall::SET_SEGMENT_BASE => ret(set_segment_base(env, a[0], a[1])),
        hypercall::MMUEXT_OP => mmuext_op(env, a),
        hypercall::SCHED_OP => sched(env, a[0], a[1]),
        hypercall::EVENT_CHANNEL_OP => event_channel_op(env, a[0], a[1], a[2]),
        hypercall::GRANT_TABLE_OP => grant_table_op(env, a[0], a[1], a[2]),
        hypercall::PHYSDEV_OP => ret(physdev_op(env, a[0], a[1])),
        hypercall::DOMCTL => domctl(env, a),
        _ => Action::Return(Errno::ENOSYS.to_ret()),
    }
}

fn ret(r: Result<u64, Errno>) -> Action {
    Action::Return(match r {
        Ok(v) => v as i64,
        Err(e) => e.to_ret(),
    })
}

fn self_domain(domid: u64) -> Result<(), Errno> {
    if domid == DOMID_SELF {
        Ok(())
    } else {
        // Foreign mappings are a privileged operation of a later slice.
        Err(Errno::EPERM)
    }
}

fn set_trap_table<E: Env>(env: &mut E, ptr: u64) -> Result<u64, Errno> {
    let mut entries = [TrapInfo::default(); MAX_TRAP_TABLE + 1];
    let mut n = 0;
    if ptr != 0 {
        let table = GuestSlice::<TrapInfo>::new(ptr, entries.len() as u64);
        while n < entries.len() {
            let e = TrapInfo { pad: 0, ..table.at(n as u64)?.read(env)? };
            entries[n] = e;
            n += 1;
            if e.address == 0 {
                break;
            }
        }
        if entries[n - 1].address != 0 {
            // No terminator within MAX_TRAP_TABLE + 1 entries.
            return Err(Errno::E2BIG);
        }
        // The terminator is not a handler: a full table of
        // MAX_TRAP_TABLE handlers plus its terminator is accepted.
        n -= 1;
    }
    env.vcpu().traps.set(&entries[..n]).map(|_| 0)
}

/// Writes `done` to `done_ptr` if the guest gave one.
fn report_done<E: Env>(env: &mut E, done_ptr: GuestPtr<u32>, done: u64) -> Result<(), Errno> {
    if !done_ptr.is_null() {
        done_ptr.write(env, &(done as u32))?;
    }
    Ok(())
}

/// Requests copied from guest memory per chunk (one translation per page
/// instead of one per request).
const CHUNK: usize = 32;

/// Runs a batch of requests of type `T`: `a` is (base, count, done_ptr,
/// domid). Requests are applied in order with `apply`; the batch
/// stops at the first failure and reports how many were done through
/// done_ptr (if not 0). `done_ptr` is written (with the count done so far)
/// before the first request is applied, so an unwritable one fails the
/// batch with `-EFAULT` before it changes anything; only a batch that makes
/// its own `done` page unwritable gets `-EFAULT` after applying requests.
///
/// Preemption: when [`Env::preempt_due`] says so, the batch stops at a
/// request boundary (after at least one request), or inside a request that
/// stopped part-way (`apply` returned `Ok(false)`: that request runs again),
/// and returns [`Action::Continue`] with the base advanced and the
/// remaining count. The number already done rides in bits 32..63 of the
/// count argument, so the final done count covers the whole batch. Guests
/// pass 0 there.
fn batch<E: Env, T: FromBytes + IntoBytes + Immutable + Copy>(
    env: &mut E,
    a: [u64; 5],
    apply: fn(&mut E, &T) -> Result<bool, Errno>,
) -> Action {
    let [base, count_arg, done_arg, domid, _] = a;
    let (count, done_before) = (count_arg & 0xffff_ffff, count_arg >> 32);
    let (reqs, done_ptr) = (GuestSlice::<T>::new(base, count), GuestPtr::<u32>::new(done_arg));
    let r: Result<(), Errno> = (|| {
        self_domain(domid)?;
        if count > MAX_BATCH || done_before > MAX_BATCH {
            return Err(Errno::E2BIG);
        }
        report_done(env, done_ptr, done_before)
    })();
    if let Err(e) = r {
        return Action::Return(e.to_ret());
    }
    // The continuation of this batch from request `at` on.
    let continued = |at: u64| match reqs.at(at) {
        Ok(next) => Action::Continue([next.addr(), (count - at) | ((done_before + at) << 32), done_arg, domid, 0]),
        Err(e) => Action::Return(e.to_ret()),
    };
    let mut buf = [T::new_zeroed(); CHUNK];
    let mut i = 0;
    while i < count {
        let n = (count - i).min(CHUNK as u64) as usize;
        let whole = reqs.read_into(env, i, &mut buf[..n]).is_ok();
        for (j, req) in buf[..n].iter_mut().enumerate() {
            let at = i + j as u64;
            if at > 0 && env.preempt_due() {
                return continued(at);
            }
            // If the chunk straddles unreadable memory, read request by
            // request so the batch stops exactly at the first unreadable one.
            let read = if whole { Ok(()) } else { reqs.at(at).and_then(|p| p.read(env)).map(|r| *req = r) };
            match read.and_then(|_| apply(env, req)) {
                Ok(true) => {}
                Ok(false) => return continued(at),
                Err(e) => return ret(report_done(env, done_ptr, done_before + at).and(Err(e))),
            }
        }
        i += n as u64;
    }
    ret(report_done(env, done_ptr, done_before + count).map(|_| 0))
}

fn mmu_update<E: Env>(env: &mut E, a: [u64; 5]) -> Action {
    batch::<E, MmuUpdate>(env, a, |env, r| env.mmu_update(*r).map(|()| true))
}

fn mmuext_op<E: Env>(env: &mut E, a: [u64; 5]) -> Action {
    batch::<E, MmuextOp>(env, a, |env, op| env.mmuext(MmuextOp { pad: 0, ..*op }))
}

fn update_va_mapping<E: Env>(env: &mut E, va: u64, val: u64, flags: u64) -> Result<u64, Errno> {
    if flags > pvguest_abi::mmu::uvmf::INVLPG {
        return Err(Errno::EINVAL);
    }
    env.update_va_mapping(va, val, flags).map(|_| 0)
}

fn memory_op<E: Env>(env: &mut E, cmd: u64, arg: u64) -> Result<u64, Errno> {
    match cmd {
        memory::CURRENT_RESERVATION | memory::MAXIMUM_RESERVATION => {
            if arg != DOMID_SELF {
                return Err(Errno::EPERM);
            }
            Ok(env.nr_pages())
        }
        memory::MEMORY_MAP => {
            let map = GuestPtr::<MemoryMap>::new(arg);
            let m = map.read(env)?;
            if m.nr_entries < 1 {
                return Err(Errno::EINVAL);
            }
            let ram = MemRange { addr: 0, size: env.nr_pages() * 4096, kind: memory::RAM, pad: 0 };
            GuestPtr::<MemRange>::new(m.buffer).write(env, &ram)?;
            map.field::<u32>(offset_of!(MemoryMap, nr_entries)).write(env, &1)?;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// `multicall(calls, count, state)`: `state` is continuation state (bit 0:
/// an entry asked to yield); guests pass 0.
fn multicall<E: Env>(env: &mut E, calls: u64, count: u64, state: u64) -> Action {
    if count > MULTICALL_MAX {
        return Action::Return(Errno::E2BIG.to_ret());
    }
    let mut yield_after = state & 1 != 0;
    let entries = GuestSlice::<MulticallEntry>::new(calls, count);
    for i in 0..count {
        let entry = match entries.at(i) {
            Ok(e) => e,
            Err(e) => return Action::Return(e.to_ret()),
        };
        let resume_here = Action::Continue([entry.addr(), count - i, u64::from(yield_after), 0, 0]);
        if i > 0 && env.preempt_due() {
            return resume_here;
        }
        let call = match entry.read(env) {
            Ok(c) => c,
            Err(e) => return Action::Return(e.to_ret()),
        };
        let (op, [a0, a1, a2, a3, a4, _]) = (call.op, call.args);
        let args = [a0, a1, a2, a3, a4];
        let sleeps = op == hypercall::SCHED_OP && matches!(args[0], sched_op::BLOCK | sched_op::POLL);
        let result = match op {
            // No nesting, and no sleeping in the middle of a batch (refused
            // before anything, such as the event mask, is touched). Domain
            // control is carried out after its hypercall by the trap layer,
            // so it is not batched either.
            hypercall::MULTICALL | hypercall::DOMCTL => Errno::EINVAL.to_ret(),
            _ if sleeps => Errno::EINVAL.to_ret(),
            _ => match dispatch(env, op, args) {
                Action::Return(v) => v,
                Action::Yield => {
                    yield_after = true;
                    0
                }
                // Sleeping in the middle of a batch would leave it half
                // done: refused.
                Action::Block | Action::Poll => {
                    env.vcpu().poll_ports.clear();
                    env.vcpu().poll_deadline = None;
                    Errno::EINVAL.to_ret()
                }
                Action::Shutdown(r) => return Action::Shutdown(r),
                // Only `domctl` hands commands over, refused above.
                Action::Ctl => Errno::EINVAL.to_ret(),
                // The entry ran out of budget part-way: it continues with
                // the arguments it returned, written back into its entry,
                // and the multicall resumes at this entry.
                Action::Continue(next) => {
                    let args = entry.field::<[u64; 5]>(offset_of!(MulticallEntry, args));
                    if let Err(e) = args.write(env, &next) {
                        return Action::Return(e.to_ret());
                    }
                    return resume_here;
                }
            },
        };
        if let Err(e) = entry.field::<u64>(offset_of!(MulticallEntry, result)).write(env, &(result as u64)) {
            return Action::Return(e.to_ret());
        }
    }
    if yield_after {
        Action::Yield
    } else {
        Action::Return(0)
    }
}

/// `console_io(cmd, len, buf)`. A write first checks that what is left of
/// the buffer is readable (one byte of each page it spans: so a bad pointer
/// fails before anything is written), then copies it [`CONSOLE_PIECE`]
/// bytes at a time and takes it in console steps, and continues when the
/// budget is spent; the bytes done so far ride in bits 16..31 of `len`
/// (guests pass 0, and bits 32..63 must be 0) and the result is the whole
/// length. (Copying the whole buffer up front cost about 8 000
/// instructions per entry, a continued one included, before the first
/// byte went out.)
fn console<E: Env>(env: &mut E, cmd: u64, len_arg: u64, buf: u64) -> Action {
    match cmd {
        console_io::WRITE | console_io::WRITE_AS => {
            let (len, done) = (len_arg & 0xffff, (len_arg >> 16) & 0xffff);
            let as_dom = if cmd == console_io::WRITE_AS {
                let Some(privilege) = env.privilege() else {
                    return Action::Return(Errno::EPERM.to_ret());
                };
                if len_arg >> 48 != 0 {
                    return Action::Return(Errno::EINVAL.to_ret());
                }
                match env.console_target(privilege, ((len_arg >> 32) & 0xffff) as u16) {
                    Ok(d) => Some(d),
                    Err(e) => return Action::Return(e.to_ret()),
                }
            } else {
                if len_arg >> 32 != 0 {
                    return Action::Return(Errno::EINVAL.to_ret());
                }
                None
            };
            if len + done > console_io::MAX_WRITE {
                return Action::Return(Errno::EINVAL.to_ret());
            }
            if len == 0 {
                return Action::Return(done as i64);
            }
            let Some(last) = buf.checked_add(len - 1) else {
                return Action::Return(Errno::EFAULT.to_ret());
            };
            let mut probe = [0u8; 1];
            let pages = core::iter::once(buf).chain((buf / 4096 + 1..=last / 4096).map(|p| p * 4096));
            for at in pages {
                if let Err(e) = env.copy_from_guest(at, &mut probe) {
                    return Action::Return(e.to_ret());
                }
            }
            let mut piece = [0u8; CONSOLE_PIECE];
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(CONSOLE_PIECE as u64) as usize;
                if let Err(e) = env.copy_from_guest(buf + off, &mut piece[..n]) {
                    return Action::Return(e.to_ret());
                }
                let mut k = 0;
                while k < n {
                    let at = off + k as u64;
                    if at > 0 && env.preempt_due() {
                        let target = len_arg & (0xffff << 32);
                        return Action::Continue([cmd, (len - at) | ((done + at) << 16) | target, buf + at, 0, 0]);
                    }
                    k += env.console_write(as_dom, &piece[k..n]).max(1);
                }
                off += n as u64;
            }
            Action::Return((done + len) as i64)
        }
        console_io::READ => ret((|| {
            let Some(privilege) = env.privilege() else {
                return Err(Errno::EPERM);
            };
            if len_arg > console_io::MAX_WRITE {
                return Err(Errno::EINVAL);
            }
            let mut bytes = [0u8; console_io::MAX_WRITE as usize];
            let n = env.console_read(&mut bytes[..len_arg as usize], privilege);
            env.copy_to_guest(buf, &bytes[..n])?;
            Ok(n as u64)
        })()),
        _ => Action::Return(Errno::ENOSYS.to_ret()),
    }
}

fn vcpu_op<E: Env>(env: &mut E, cmd: u64, vcpu: u64, arg: u64) -> Result<u64, Errno> {
    if vcpu != 0 {
        return Err(Errno::EINVAL);
    }
    match cmd {
        vcpuop::GET_RUNSTATE_INFO => {
            let r = env.runstate();
            GuestPtr::<RunstateInfo>::new(arg).write(env, &r)?;
            Ok(0)
        }
        vcpuop::SET_SINGLESHOT_TIMER | vcpuop::SET_VIRTUAL_TIMER => {
            let t = GuestPtr::<SingleshotTimer>::new(arg).read(env)?;
            let (deadline, flags) = (t.timeout_abs_ns, t.flags);
            if flags & !SSHOT_FUTURE != 0 {
                return Err(Errno::EINVAL);
            }
            let virtual_time = cmd == vcpuop::SET_VIRTUAL_TIMER;
            let now = if virtual_time { env.runstate().time[0] } else { env.now_ns() };
            if flags & SSHOT_FUTURE != 0 && deadline < now {
                return Ok(vcpuop::ETIME as u64);
            }
            if virtual_time {
                env.vcpu().vtimer = Some(deadline);
            } else {
                env.vcpu().timer = Some(deadline);
            }
            Ok(0)
        }
        vcpuop::STOP_SINGLESHOT_TIMER => {
            env.vcpu().timer = None;
            Ok(0)
        }
        vcpuop::STOP_VIRTUAL_TIMER => {
            env.vcpu().vtimer = None;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

fn set_segment_base<E: Env>(env: &mut E, which: u64, base: u64) -> Result<u64, Errno> {
    if !layout::is_canonical(base) {
        return Err(Errno::EINVAL);
    }
    match which {
        segbase::FS => env.vcpu().fs_base = base,
        segbase::GS => env.vcpu().gs_base = base,
        _ => return Err(Errno::EINVAL),
    }
    env.vcpu().segs_dirty = true;
    Ok(0)
}

fn sched<E: Env>(env: &mut E, cmd: u64, arg: u64) -> Action {
    match cmd {
        // (Always `Some` for these two.)
        sched_op::YIELD | sched_op::BLOCK => {
            give_up_cpu(hypercall::SCHED_OP, cmd, || env.enable_events()).unwrap_or(Action::Return(0))
        }
        sched_op::POLL => match poll(env, arg) {
            Ok(a) => a,
            Err(e) => Action::Return(e.to_ret()),
        },
        sched_op::SHUTDOWN => match arg {
            shutdown_reason::POWEROFF => Action::Shutdown(ShutdownReason::Poweroff),
            shutdown_reason::REBOOT => Action::Shutdown(ShutdownReason::Reboot),
            shutdown_reason::CRASH => Action::Shutdown(ShutdownReason::Crash),
            _ => Action::Return(Errno::EINVAL.to_ret()),
        },
        _ => Action::Return(Errno::ENOSYS.to_ret()),
    }
}

fn poll<E: Env>(env: &mut E, arg: u64) -> Result<Action, Errno> {
    let SchedPoll { ports: ports_ptr, nr_ports: nr, timeout, .. } = GuestPtr::<SchedPoll>::new(arg).read(env)?;
    // No port: a sleep until the deadline (with none, it would never end).
    if nr > sched_op::POLL_MAX_PORTS || (nr == 0 && timeout == 0) {
        return Err(Errno::EINVAL);
    }
    let mut raw = [0u32; sched_op::POLL_MAX_PORTS as usize];
    let raw = &mut raw[..nr as usize];
    if nr > 0 {
        GuestSlice::<u32>::new(ports_ptr, u64::from(nr)).read_into(env, 0, raw)?;
    }
    let mut ports: heapless::Vec<u32, 128> = heapless::Vec::new();
    for &p in raw.iter() {
        if env.events().get(p)? == Port::Free {
            return Err(Errno::EINVAL);
        }
        let _ = ports.push(p);
    }
    if ports.iter().any(|&p| env.port_pending(p)) || (timeout != 0 && timeout <= env.now_ns()) {
        return Ok(Action::Return(0));
    }
    let v = env.vcpu();
    v.poll_ports = ports;
    v.poll_deadline = if timeout == 0 { None } else { Some(timeout) };
    Ok(Action::Poll)
}

/// A domain named in an event-channel argument: `DOMID_SELF` or the
/// caller's own id is the caller; another needs the caller's privilege
/// (`EPERM`) and must be alive (`ESRCH`, checked by the use).
fn evtchn_dom<E: Env>(env: &mut E, raw: u16) -> Result<DomId, Errno> {
    if u64::from(raw) == DOMID_SELF {
        return Ok(env.caller());
    }
    let dom = DomId::from_arg(u64::from(raw))?;
    if dom != env.caller() && env.privilege().is_none() {
        return Err(Errno::EPERM);
    }
    Ok(dom)
}

/// The remote domain of a channel: `DOMID_SELF` is the caller (loopback).
fn remote_dom<E: Env>(env: &mut E, raw: u16) -> Result<DomId, Errno> {
    if u64::from(raw) == DOMID_SELF {
        Ok(env.caller())
    } else {
        DomId::from_arg(u64::from(raw))
    }
}

/// Runs `f` on the port table of `dom` (the caller's or another's).
fn on_table<E: Env>(
    env: &mut E,
    dom: DomId,
    f: &mut dyn FnMut(&mut EventChannels) -> Result<u32, Errno>,
) -> Result<u32, Errno> {
    env.with_events(dom, &mut |mine, theirs| match theirs {
        Some(t) => f(t),
        None => f(mine),
    })
}

/// Closes `port` of `dom` and reverts a connected other end to unbound.
fn close_port<E: Env>(env: &mut E, dom: DomId, port: u32) -> Result<(), Errno> {
    let closed = if dom == env.caller() {
        env.events().close(port)?
    } else {
        let mut c = Closed::Done;
        on_table(env, dom, &mut |t| {
            c = t.close(port)?;
            Ok(0)
        })?;
        c
    };
    match closed {
        Closed::Remote { remote, port: rp } => {
            // A dead peer (`ESRCH`) has no end left to revert.
            let _ = on_table(env, remote, &mut |t| {
                evt::unbind_remote_end(t, rp, dom, port);
                Ok(0)
            });
        }
        Closed::Pirq(pirq) => env.pirq_unbind(dom, pirq),
        Closed::Done => {}
    }
    Ok(())
}

/// `event_channel_op(cmd, arg, state)`: `state` is continuation state of a
/// `RESET` (the next port to close); guests pass 0.
fn event_channel_op<E: Env>(env: &mut E, cmd: u64, arg: u64, state: u64) -> Action {
    if cmd == event::RESET {
        return reset(env, arg, state);
    }
    ret(event_op(env, cmd, arg))
}

fn event_op<E: Env>(env: &mut E, cmd: u64, arg: u64) -> Result<u64, Errno> {
    let me = env.caller();
    match cmd {
        event::BIND_VIRQ => {
            let bind = GuestPtr::<BindVirq>::new(arg);
            let b = bind.read(env)?;
            if b.vcpu != 0 {
                return Err(Errno::EINVAL);
            }
            // A global VIRQ: only the privileged domain hears of others.
            if b.virq == event::VIRQ_DOM_EXC && env.privilege().is_none() {
                return Err(Errno::EPERM);
            }
            let port = env.events().bind_virq(b.virq)?;
            if let Err(e) = bind.field::<u32>(offset_of!(BindVirq, port)).write(env, &port) {
                // The guest never learnt the port: undo the bind.
                let _ = env.events().close(port);
                return Err(e);
            }
            Ok(0)
        }
        event::ALLOC_UNBOUND => {
            let ptr = GuestPtr::<AllocUnbound>::new(arg);
            let a = ptr.read(env)?;
            let dom = evtchn_dom(env, a.dom)?;
            let remote = remote_dom(env, a.remote_dom)?;
            let port = on_table(env, dom, &mut |t| t.alloc_unbound(remote))?;
            if let Err(e) = ptr.field::<u32>(offset_of!(AllocUnbound, port)).write(env, &port) {
                let _ = close_port(env, dom, port);
                return Err(e);
            }
            Ok(0)
        }
        event::BIND_INTERDOMAIN => {
            let ptr = GuestPtr::<BindInterdomain>::new(arg);
            let b = ptr.read(env)?;
            let remote = remote_dom(env, b.remote_dom)?;
            let rp = b.remote_port;
            let port = env.with_events(remote, &mut |mine, theirs| match theirs {
                Some(t) => evt::connect(mine, me, t, remote, rp),
                None => evt::connect_self(mine, me, rp),
            })?;
            if let Err(e) = ptr.field::<u32>(offset_of!(BindInterdomain, local_port)).write(env, &port) {
                // Undone: the remote end goes back to unbound for us.
                let _ = close_port(env, me, port);
                return Err(e);
            }
            Ok(0)
        }
        event::BIND_PIRQ => {
            // dom0's only: the privilege comes before the argument is read.
            let Some(privilege) = env.privilege() else {
                return Err(Errno::EPERM);
            };
            let ptr = GuestPtr::<BindPirq>::new(arg);
            let b = ptr.read(env)?;
            if b.flags & !BIND_PIRQ_WILL_SHARE != 0 {
                return Err(Errno::EINVAL);
            }
            env.check_bind_pirq(privilege, b.pirq)?;
            let port = env.events().bind_pirq(b.pirq)?;
            // The guest learns the port before the line is unmasked.
            let bound = ptr
                .field::<u32>(offset_of!(BindPirq, port))
                .write(env, &port)
                .and_then(|()| env.bind_pirq(privilege, b.pirq, port));
            if let Err(e) = bound {
                let _ = env.events().close(port);
                return Err(e);
            }
            Ok(0)
        }
        event::BIND_IPI => {
            let ptr = GuestPtr::<BindIpi>::new(arg);
            if ptr.read(env)?.vcpu != 0 {
                return Err(Errno::EINVAL);
            }
            let port = env.events().bind_ipi()?;
            if let Err(e) = ptr.field::<u32>(offset_of!(BindIpi, port)).write(env, &port) {
                let _ = env.events().close(port);
                return Err(e);
            }
            Ok(0)
        }
        event::BIND_VCPU => {
            let b = GuestPtr::<BindVcpu>::new(arg).read(env)?;
            if env.events().get(b.port)? == Port::Free {
                return Err(Errno::EINVAL);
            }
            // One vCPU per domain until SMP: only vCPU 0 exists.
            if b.vcpu != 0 {
                return Err(Errno::ENOENT);
            }
            Ok(0)
        }
        event::CLOSE => {
            let Close { port } = GuestPtr::new(arg).read(env)?;
            close_port(env, me, port).map(|_| 0)
        }
        event::SEND => {
            let Send { port } = GuestPtr::new(arg).read(env)?;
            match env.events().get(port)? {
                Port::Console => env.console_kick(),
                Port::Interdomain { remote, port: rp } => env.notify(remote, rp),
                Port::Ipi => env.notify(me, port),
                Port::Unbound { .. } => return Err(Errno::ENOTCONN),
                Port::Free | Port::Virq(_) | Port::Pirq(_) => return Err(Errno::EINVAL),
            }
            Ok(0)
        }
        event::UNMASK => {
            let Unmask { port } = GuestPtr::new(arg).read(env)?;
            env.events().get(port)?;
            env.unmask(port);
            Ok(0)
        }
        event::STATUS => {
            let ptr = GuestPtr::<Status>::new(arg);
            let q = ptr.read(env)?;
            let dom = evtchn_dom(env, q.dom)?;
            let mut binding = Port::Free;
            on_table(env, dom, &mut |t| {
                binding = t.get(q.port)?;
                Ok(0)
            })?;
            let (st, u0, u1) = match binding {
                Port::Free => (status::CLOSED, 0, 0),
                Port::Unbound { remote } => (status::UNBOUND, u32::from(remote.raw()), 0),
                Port::Interdomain { remote, port } => (status::INTERDOMAIN, u32::from(remote.raw()), port),
                Port::Virq(v) => (status::VIRQ, v, 0),
                Port::Pirq(p) => (status::PIRQ, p, 0),
                Port::Ipi => (status::IPI, 0, 0),
                Port::Console => (status::INTERDOMAIN, u32::from(DOMID_CONSOLE_BACKEND), 0),
            };
            // The answer fields, written in one copy: the rest of the
            // struct is the guest's question, left as it was.
            ptr.write(env, &Status { status: st, vcpu: 0, u0, u1, ..q })?;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// Ports a `RESET` closes per unit of work before it asks whether to stop.
const RESET_STEP: u32 = 64;

/// `RESET`: closes every port of the domain but its console port, in
/// steps (it may close up to 4095, each reverting a peer's end), continued
/// from port `from`.
fn reset<E: Env>(env: &mut E, arg: u64, from: u64) -> Action {
    let r: Result<DomId, Errno> = (|| {
        let Reset { dom } = GuestPtr::new(arg).read(env)?;
        evtchn_dom(env, dom)
    })();
    let dom = match r {
        Ok(d) => d,
        Err(e) => return Action::Return(e.to_ret()),
    };
    let Ok(mut port) = u32::try_from(from.max(1)) else {
        return Action::Return(Errno::EINVAL.to_ret());
    };
    let mut done = 0;
    while port < evt::NR_PORTS {
        if done >= RESET_STEP {
            done = 0;
            if env.preempt_due() {
                return Action::Continue([event::RESET, arg, u64::from(port), 0, 0]);
            }
        }
        let mut binding = Port::Free;
        if let Err(e) = on_table(env, dom, &mut |t| {
            binding = t.get(port)?;
            Ok(0)
        }) {
            return Action::Return(e.to_ret());
        }
        if !matches!(binding, Port::Free | Port::Console) {
            let _ = close_port(env, dom, port);
            done += 1;
        }
        port += 1;
        done += usize::from(port % 64 == 0) as u32;
    }
    Action::Return(0)
}

/// Most `GNTTABOP_copy` elements in one call (as Xen bounds batches).
pub const MAX_GRANT_COPIES: u64 = 512;

/// `grant_table_op(cmd, uop, count)`: Xen's numbering. Each element's
/// outcome is its `status` field (`GNTST_*`); the call itself fails only
/// for what concerns the whole call (`EFAULT` for unreadable or unwritable
/// arguments, `EINVAL` for a bad count, `ENOSYS` for an unknown or not yet
/// offered command). Batches (copy, map, unmap, set_unmap_notify) are
/// preempted between elements: the call continues with `uop` and `count`
/// advanced.
fn grant_table_op<E: Env>(env: &mut E, cmd: u64, uop: u64, count: u64) -> Action {
    match cmd {
        gnt::SETUP_TABLE => ret(grant_setup(env, uop, count)),
        gnt::QUERY_SIZE => ret(grant_query(env, uop, count)),
        gnt::COPY => grant_copy(env, uop, count),
        gnt::MAP_GRANT_REF => grant_batch::<E, MapGrantRef>(env, cmd, uop, count, |env, at, raw| {
            let caller = env.caller();
            let (status, handle, bus) = match MapRequest::decode(raw, caller).and_then(|req| env.grant_map(&req)) {
                Ok((h, bus)) => (gntst::OKAY, h, bus),
                Err(e) => (e.status(), u32::MAX, 0),
            };
            // The element goes back whole, in one copy (as Xen does): its
            // in fields as we read them, and the out fields.
            at.write(env, &MapGrantRef { status, handle, dev_bus_addr: bus, ..*raw })
        }),
        gnt::UNMAP_GRANT_REF => grant_batch::<E, UnmapGrantRef>(env, cmd, uop, count, |env, at, raw| {
            let status = match env.grant_unmap(raw.handle, raw.host_addr, raw.dev_bus_addr) {
                Ok(()) => gntst::OKAY,
                Err(e) => e.status(),
            };
            at.field::<i16>(offset_of!(UnmapGrantRef, status)).write(env, &status)
        }),
        gnt::SET_UNMAP_NOTIFY => grant_batch::<E, SetUnmapNotify>(env, cmd, uop, count, |env, at, raw| {
            let status = match env.grant_set_notify(raw.handle, raw.action, raw.offset, raw.port) {
                Ok(()) => gntst::OKAY,
                Err(e) => e.status(),
            };
            at.field::<i16>(offset_of!(SetUnmapNotify, status)).write(env, &status)
        }),
        _ => Action::Return(Errno::ENOSYS.to_ret()),
    }
}

/// The domain a grant argument names: `DOMID_SELF` or the caller's own id;
/// another needs the privilege. `Err` is the status to report.
fn grant_dom<E: Env>(env: &mut E, raw: u16) -> Result<DomId, i16> {
    match evtchn_dom(env, raw) {
        Ok(d) => Ok(d),
        Err(Errno::EPERM) => Err(gntst::PERMISSION_DENIED),
        Err(_) => Err(gntst::BAD_DOMAIN),
    }
}

fn grant_setup<E: Env>(env: &mut E, uop: u64, count: u64) -> Result<u64, Errno> {
    if count != 1 {
        return Err(Errno::EINVAL);
    }
    let ptr = GuestPtr::<SetupTable>::new(uop);
    let st = ptr.read(env)?;
    let status = match grant_dom(env, st.dom) {
        Err(s) => s,
        Ok(dom) => match env.grant_setup(dom, st.nr_frames) {
            Err(e) => e.status(),
            Ok(frames) => {
                let list = GuestSlice::<u64>::new(st.frame_list, u64::from(st.nr_frames));
                for (i, mfn) in frames.iter().enumerate() {
                    list.at(i as u64)?.write(env, mfn)?;
                }
                gntst::OKAY
            }
        },
    };
    ptr.field::<i16>(offset_of!(SetupTable, status)).write(env, &status)?;
    Ok(0)
}

fn grant_query<E: Env>(env: &mut E, uop: u64, count: u64) -> Result<u64, Errno> {
    if count != 1 {
        return Err(Errno::EINVAL);
    }
    let ptr = GuestPtr::<QuerySize>::new(uop);
    let q = ptr.read(env)?;
    let answer = match grant_dom(env, q.dom).map(|dom| env.grant_query(dom)) {
        Err(s) => QuerySize { status: s, ..q },
        Ok(Err(e)) => QuerySize { status: e.status(), ..q },
        Ok(Ok((nr, max))) => QuerySize { nr_frames: nr, max_nr_frames: max, status: gntst::OKAY, ..q },
    };
    ptr.write(env, &answer)?;
    Ok(0)
}

/// A batch of `count` elements of `T` at `uop`: `each` handles one and
/// writes its out fields. Bounded ([`MAX_GRANT_COPIES`]) and preemptible
/// between elements.
fn grant_batch<E: Env, T: FromBytes + IntoBytes + Immutable>(
    env: &mut E,
    cmd: u64,
    uop: u64,
    count: u64,
    each: fn(&mut E, GuestPtr<T>, &T) -> Result<(), Errno>,
) -> Action {
    if count > MAX_GRANT_COPIES {
        return Action::Return(Errno::E2BIG.to_ret());
    }
    let elems = GuestSlice::<T>::new(uop, count);
    for i in 0..count {
        let Ok(at) = elems.at(i) else { return Action::Return(Errno::EFAULT.to_ret()) };
        if i > 0 && env.preempt_due() {
            return Action::Continue([cmd, at.addr(), count - i, 0, 0]);
        }
        let r = at.read(env).and_then(|raw| each(env, at, &raw));
        if let Err(e) = r {
            return Action::Return(e.to_ret());
        }
    }
    Action::Return(0)
}

fn grant_copy<E: Env>(env: &mut E, uop: u64, count: u64) -> Action {
    if count > MAX_GRANT_COPIES {
        return Action::Return(Errno::E2BIG.to_ret());
    }
    let ops = GuestSlice::<GnttabCopy>::new(uop, count);
    let caller = env.caller();
    for i in 0..count {
        let Ok(at) = ops.at(i) else { return Action::Return(Errno::EFAULT.to_ret()) };
        if i > 0 && env.preempt_due() {
            return Action::Continue([gnt::COPY, at.addr(), count - i, 0, 0]);
        }
        let raw = match at.read(env) {
            Ok(r) => r,
            Err(e) => return Action::Return(e.to_ret()),
        };
        let status = match CopyOp::decode(&raw, caller).and_then(|op| env.grant_copy(&op)) {
            Ok(()) => gntst::OKAY,
            Err(e) => e.status(),
        };
        if let Err(e) = at.field::<i16>(offset_of!(GnttabCopy, status)).write(env, &status) {
            return Action::Return(e.to_ret());
        }
    }
    Action::Return(0)
}

/// `domctl(cmd, arg, done)`: privileged domain control
/// ([`pvguest_abi::domctl`]): `EPERM` for any other caller, before the
/// argument is read. Commands that change the domain table or the
/// scheduler are validated here and carried out by the trap layer
/// ([`Action::Ctl`]); `done` is `CREATEDOMAIN`'s continuation state (0
/// from the guest).
fn domctl<E: Env>(env: &mut E, a: [u64; 5]) -> Action {
    let Some(privilege) = env.privilege() else {
        return Action::Return(Errno::EPERM.to_ret());
    };
    let [cmd, arg, done, ..] = a;
    let ctl = match cmd {
        domctl::CREATEDOMAIN => create_request(env, arg, done),
        domctl::DESTROYDOMAIN => target(env, arg).map(Ctl::Destroy),
        domctl::PAUSEDOMAIN => target(env, arg).map(Ctl::Pause),
        domctl::UNPAUSEDOMAIN => target(env, arg).map(Ctl::Unpause),
        domctl::SCHEDOP => sched_params(env, arg),
        domctl::CONSOLE_TAKEOVER => {
            return ret(target(env, arg).and_then(|d| env.console_takeover(privilege, d)).map(u64::from));
        }
        // The rest only read: answered here.
        _ => return ret(domctl_query(env, privilege, cmd, arg)),
    };
    match ctl {
        Ok(ctl) => {
            env.request_ctl(privilege, ctl);
            Action::Ctl
        }
        Err(e) => Action::Return(e.to_ret()),
    }
}

/// The `domctl` commands that only read (`GETDOMAININFO`, `PHYSINFO`,
/// `BOOTIMAGE_*`), for the caller holding `privilege`.
fn domctl_query<E: Env>(env: &mut E, privilege: Privilege, cmd: u64, arg: u64) -> Result<u64, Errno> {
    match cmd {
        domctl::GETDOMAININFO => {
            let ptr = GuestPtr::<DomainInfo>::new(arg);
            let cursor = ptr.read(env)?.domid;
            // A cursor past every id finds nothing, like one at a dead end.
            let from = u16::try_from(cursor).map_err(|_| Errno::ESRCH)?;
            let info = env.domain_info(privilege, from)?;
            ptr.write(env, &info)?;
        }
        domctl::PHYSINFO => {
            let info = env.phys_info(privilege);
            GuestPtr::<PhysInfo>::new(arg).write(env, &info)?;
        }
        domctl::BOOTIMAGE_INFO => {
            let ptr = GuestPtr::<BootImage>::new(arg);
            let index = ptr.field::<u32>(offset_of!(BootImage, index)).read(env)?;
            let info = env.boot_image(privilege, index)?;
            ptr.write(env, &info)?;
        }
        domctl::BOOTIMAGE_READ => {
            let r = GuestPtr::<ReadBootImage>::new(arg).read(env)?;
            if r.len > domctl::BOOTIMAGE_CHUNK {
                return Err(Errno::E2BIG);
            }
            env.boot_image_read(privilege, &r)?;
        }
        _ => return Err(Errno::ENOSYS),
    }
    Ok(0)
}

/// `CREATEDOMAIN`'s request at `arg`, validated ([`CreateReq::decode`]); on
/// failure its `reason` says why.
fn create_request<E: Env>(env: &mut E, arg: u64, done: u64) -> Result<Ctl, Errno> {
    let ptr = GuestPtr::<domctl::CreateDomain>::new(arg);
    match CreateReq::decode(&ptr.read(env)?) {
        Ok(req) => Ok(Ctl::Create { arg, req, done }),
        Err((e, why)) => {
            let mut reason = [0u8; 96];
            pvguest_abi::start_info::fill_c_str(&mut reason, why);
            let _ = ptr.field::<[u8; 96]>(offset_of!(domctl::CreateDomain, reason)).write(env, &reason);
            Err(e)
        }
    }
}

/// `SCHEDOP`'s [`domctl::SchedParams`] at `arg`, validated.
fn sched_params<E: Env>(env: &mut E, arg: u64) -> Result<Ctl, Errno> {
    let p = GuestPtr::<domctl::SchedParams>::new(arg).read(env)?;
    let dom = target(env, u64::from(p.domid))?;
    if !(1..=crate::sched::bvt::MAX_WEIGHT).contains(&p.weight) || p.warp_us > MAX_WARP_US || p.reserved != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(Ctl::SetSched { dom, weight: p.weight, warp_us: p.warp_us })
}

/// The domain a toolstack command names: a valid id, not `DOMID_SELF` and
/// not the caller (which ends itself with `sched_op` shutdown), or `ESRCH`
/// / `EINVAL`. Whether it lives is the trap layer's check.
fn target<E: Env>(env: &E, arg: u64) -> Result<DomId, Errno> {
    let dom = DomId::from_arg(arg)?;
    if dom == env.caller() {
        return Err(Errno::EINVAL);
    }
    Ok(dom)
}

/// `physdev_op(cmd, arg)`: every command needs the caller's privilege,
/// checked before anything else (`EPERM`, whatever the command or
/// argument, so an ordinary domain learns nothing from it). PCI
/// configuration addresses are decoded by [`ConfigAddr::decode`] (rule 1 of
/// [`crate::pci`]) and writes filtered by [`crate::pci::Pci::write`].
/// `PHYSDEVOP_map_pirq` (type GSI only: an MSI is `EOPNOTSUPP`, another
/// type `EINVAL`; for the caller only: another `domid` is `EPERM`) and
/// `PHYSDEVOP_eoi` go to [`crate::irq`]'s policy. map_pirq checks its out
/// field writable (writing the caller's `pirq` back) before it maps, so a
/// mapped pirq is always one the guest learnt.
fn physdev_op<E: Env>(env: &mut E, cmd: u64, arg: u64) -> Result<u64, Errno> {
    let Some(privilege) = env.privilege() else {
        return Err(Errno::EPERM);
    };
    match cmd {
        physdev::PCI_CONFIG_READ => {
            let ptr = GuestPtr::<PciConfig>::new(arg);
            let at = ConfigAddr::decode(&ptr.read(env)?)?;
            let value = env.pci_read(privilege, at);
            ptr.field::<u32>(offset_of!(PciConfig, value)).write(env, &value)?;
            Ok(0)
        }
        physdev::PCI_CONFIG_WRITE => {
            let (at, value) = ConfigAddr::decode_write(&GuestPtr::<PciConfig>::new(arg).read(env)?)?;
            env.pci_write(privilege, at, value).map(|()| 0)
        }
        physdev::MAP_PIRQ => {
            let ptr = GuestPtr::<MapPirq>::new(arg);
            let m = ptr.read(env)?;
            if u64::from(m.domid) != DOMID_SELF && m.domid != env.caller().raw() {
                // Pirqs for other domains (passthrough) are not offered.
                return Err(Errno::EPERM);
            }
            match m.type_ {
                map_pirq_type::GSI => {}
                map_pirq_type::MSI | map_pirq_type::MSI_SEG => return Err(Errno::EOPNOTSUPP),
                _ => return Err(Errno::EINVAL),
            }
            let out = ptr.field::<i32>(offset_of!(MapPirq, pirq));
            out.write(env, &m.pirq)?;
            let pirq = env.map_pirq(privilege, m.index, m.pirq)?;
            // Checked writable just above, with nothing in between that
            // changes the caller's mappings.
            out.write(env, &(pirq as i32))?;
            Ok(0)
        }
        physdev::EOI => {
            let Eoi { irq } = GuestPtr::<Eoi>::new(arg).read(env)?;
            env.pirq_eoi(privilege, irq).map(|()| 0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// `xen_version`: reads no domain state, so the trap layer may answer it
/// without taking the hypervisor lock.
pub fn xen_version(cmd: u64) -> Result<u64, Errno> {
    match cmd {
        version::VERSION => Ok((version::ABI_MAJOR << 16) | version::ABI_MINOR),
        version::GET_FEATURES => Ok(features::CONSOLE_WRITE
            | features::SCHED_OP
            | features::FPU_PRESERVED
            | features::ISOLATED_ENTRY
            | features::TRAP_BOUNCE
            | features::EVENTS
            | features::DIRECT_PAGING
            | features::TIMERS
            | features::DIRECT_SYSCALL),
        _ => Err(Errno::ENOSYS),
    }
}

#[cfg(test)]
mod tests;
