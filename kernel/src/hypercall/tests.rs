//! Every hypercall with its good and bad inputs, against a fake machine.

use super::*;
use crate::domain::{DomId, Privilege};
use crate::grant::GrantError;
use pvguest_abi::layout::{ENTRY_AREA_BASE, GUEST_KERNEL_BASE};
use pvguest_abi::trap::TI_MASK_EVENTS;
use std::vec::Vec;

const BASE: u64 = GUEST_KERNEL_BASE;
/// The fake's one boot template's image.
const FAKE_IMAGE: &[u8] = b"an image of twenty-nine bytes";
const SIZE: usize = 64 * 1024;
/// Bytes the fake console takes per step.
const FAKE_CONSOLE_STEP: usize = 100;
/// Guest memory at [BASE + RO_FROM, BASE + SIZE) is read-only.
const RO_FROM: u64 = 60 * 1024;

struct FakeEnv {
    mem: Vec<u8>,
    console: Vec<u8>,
    /// Console output written as another domain (`WRITE_AS`).
    console_as: Vec<(DomId, Vec<u8>)>,
    /// Domains whose console was taken over.
    taken: Vec<DomId>,
    input: Vec<u8>,
    privileged: bool,
    now: u64,
    run: u64,
    vcpu: Vcpu,
    events: EventChannels,
    pending: Vec<u32>,
    unmasked: Vec<u32>,
    upcall_pending: bool,
    mask: bool,
    mmu: Vec<MmuUpdate>,
    ext: Vec<MmuextOp>,
    /// mmu/ext requests whose `ptr`/`arg1` equals this fail with EINVAL.
    poison: u64,
    /// The ext request whose `arg1` equals this stops part-way this many
    /// times before it completes (a long pin).
    slow: (u64, u32),
    /// `preempt_due` answers true every this many calls (0: never).
    preempt_every: u32,
    preempt_calls: u32,
    /// Fake clock: ns each mmu/ext request costs (added to `now`).
    cost_ns: u64,
    /// `preempt_due` answers true once `now` reaches this (the budget).
    budget_end: Option<u64>,
    /// Console kicks received.
    kicks: u32,
    /// The caller's id.
    me: DomId,
    /// Other live domains' port tables.
    others: std::collections::BTreeMap<DomId, EventChannels>,
    /// Ports raised through `notify`.
    notified: Vec<(DomId, u32)>,
    /// Grant copies performed.
    copies: Vec<crate::grant::CopyOp>,
    /// PCI configuration accesses that reached the machine: (address,
    /// value written, or `None` for a read).
    pci: Vec<(ConfigAddr, Option<u32>)>,
    /// The IOAPIC's lines (GSIs 22 and 23 given) over a fake IOAPIC.
    irqs: crate::irq::Irqs,
    ioapic: crate::irq::fake::FakeIoapic,
    /// The toolstack command handed over, if any.
    ctl: Option<Ctl>,
}

impl FakeEnv {
    fn new() -> Self {
        FakeEnv {
            mem: std::vec![0; SIZE],
            console: Vec::new(),
            console_as: Vec::new(),
            taken: Vec::new(),
            input: b"typed".to_vec(),
            privileged: false,
            now: 1_000,
            run: 500,
            vcpu: Vcpu::default(),
            events: EventChannels::default(),
            pending: Vec::new(),
            unmasked: Vec::new(),
            upcall_pending: false,
            mask: true,
            mmu: Vec::new(),
            ext: Vec::new(),
            poison: u64::MAX,
            slow: (u64::MAX, 0),
            preempt_every: 0,
            preempt_calls: 0,
            cost_ns: 0,
            budget_end: None,
            kicks: 0,
            me: DomId::of(1),
            others: Default::default(),
            notified: Vec::new(),
            copies: Vec::new(),
            pci: Vec::new(),
            irqs: crate::irq::Irqs::empty(),
            ioapic: crate::irq::fake::FakeIoapic::default(),
            ctl: None,
        }
        .with_irqs()
    }
    fn with_irqs(mut self) -> Self {
        self.irqs = crate::irq::Irqs::init(&mut self.ioapic, 1 << 22 | 1 << 23, 0);
        self
    }
    fn range(&self, va: u64, len: usize, write: bool) -> Result<usize, Errno> {
        if len == 0 {
            return Ok(0);
        }
        let off = va.checked_sub(BASE).ok_or(Errno::EFAULT)?;
        let end = off.checked_add(len as u64).ok_or(Errno::EFAULT)?;
        if end > SIZE as u64 || (write && end > RO_FROM) {
            return Err(Errno::EFAULT);
        }
        Ok(off as usize)
    }
    fn put(&mut self, va: u64, b: &[u8]) {
        let o = (va - BASE) as usize;
        self.mem[o..o + b.len()].copy_from_slice(b);
    }
    fn get(&self, va: u64, n: usize) -> &[u8] {
        let o = (va - BASE) as usize;
        &self.mem[o..o + n]
    }
    fn call(&mut self, nr: u64, a: [u64; 5]) -> Action {
        dispatch(self, nr, a)
    }
}

impl Env for FakeEnv {
    fn map_pirq(&mut self, p: Privilege, gsi: i32, pirq: i32) -> Result<u32, Errno> {
        self.irqs.map_gsi(p, self.me, gsi, pirq)
    }
    fn check_bind_pirq(&mut self, p: Privilege, pirq: u32) -> Result<(), Errno> {
        self.irqs.check_bind(p, self.me, pirq)
    }
    fn bind_pirq(&mut self, p: Privilege, pirq: u32, port: u32) -> Result<(), Errno> {
        self.irqs.bind(&mut self.ioapic, p, self.me, pirq, port)
    }
    fn pirq_eoi(&mut self, p: Privilege, pirq: u32) -> Result<(), Errno> {
        self.irqs.eoi(&mut self.ioapic, p, self.me, pirq)
    }
    fn pirq_unbind(&mut self, dom: DomId, pirq: u32) {
        self.irqs.unbind(&mut self.ioapic, dom, pirq);
    }
    fn pci_read(&mut self, _: Privilege, at: ConfigAddr) -> u32 {
        self.pci.push((at, None));
        0x29c0_8086 & at.mask()
    }
    fn pci_write(&mut self, _: Privilege, at: ConfigAddr, value: u32) -> Result<(), Errno> {
        self.pci.push((at, Some(value)));
        // The fake's policy: the host bridge is not dom0's.
        if at.bdf().dev() == 0 {
            Err(Errno::EPERM)
        } else {
            Ok(())
        }
    }
    fn copy_from_guest(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let o = self.range(va, buf.len(), false)?;
        buf.copy_from_slice(&self.mem[o..o + buf.len()]);
        Ok(())
    }
    fn copy_to_guest(&mut self, va: u64, data: &[u8]) -> Result<(), Errno> {
        let o = self.range(va, data.len(), true)?;
        self.mem[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn console_write(&mut self, as_dom: Option<DomId>, bytes: &[u8]) -> usize {
        let n = bytes.len().min(FAKE_CONSOLE_STEP);
        match as_dom {
            Some(d) => self.console_as.push((d, bytes[..n].to_vec())),
            None => self.console.extend_from_slice(&bytes[..n]),
        }
        n
    }
    fn console_target(&self, _: Privilege, id: u16) -> Result<DomId, Errno> {
        match id {
            7 => Ok(DomId::of(7)),
            8 => Err(Errno::EINVAL),
            _ => Err(Errno::ESRCH),
        }
    }
    fn console_takeover(&mut self, _: Privilege, dom: DomId) -> Result<u32, Errno> {
        self.taken.push(dom);
        Ok(40)
    }
    fn console_kick(&mut self) {
        self.kicks += 1;
    }
    fn console_read(&mut self, buf: &mut [u8], _: Privilege) -> usize {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        n
    }
    fn privilege(&self) -> Option<Privilege> {
        Privilege::of_domain(self.privileged)
    }
    fn domain_info(&mut self, _: Privilege, from: u16) -> Result<pvguest_abi::domctl::DomainInfo, Errno> {
        // The fake knows only the caller.
        if from > self.caller().raw() {
            return Err(Errno::ESRCH);
        }
        Ok(pvguest_abi::domctl::DomainInfo { domid: u32::from(self.caller().raw()), ..Default::default() })
    }
    fn phys_info(&mut self, _: Privilege) -> PhysInfo {
        PhysInfo { total_frames: 100, free_frames: 40, domains: 1, max_domains: 1024, ..Default::default() }
    }
    fn boot_image(&mut self, _: Privilege, index: u32) -> Result<BootImage, Errno> {
        // The fake offers one template, "tmpl", of FAKE_IMAGE.
        if index != 0 {
            return Err(Errno::ESRCH);
        }
        let mut b = BootImage { index, mem_kib: 512, image_len: FAKE_IMAGE.len() as u64, ..Default::default() };
        pvguest_abi::start_info::fill_c_str(&mut b.name, "tmpl");
        Ok(b)
    }
    fn boot_image_read(&mut self, _: Privilege, r: &ReadBootImage) -> Result<(), Errno> {
        if r.index != 0 {
            return Err(Errno::ESRCH);
        }
        let end = r.offset.checked_add(u64::from(r.len)).ok_or(Errno::EINVAL)?;
        let bytes = FAKE_IMAGE.get(r.offset as usize..end as usize).ok_or(Errno::EINVAL)?;
        self.copy_to_guest(r.buf, bytes)
    }
    fn request_ctl(&mut self, _: Privilege, ctl: Ctl) {
        self.ctl = Some(ctl);
    }
    fn nr_pages(&self) -> u64 {
        256
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
    fn runstate(&self) -> RunstateInfo {
        RunstateInfo { state: 0, pad: 0, state_entry_time: 7, time: [self.run, 2, 3, 4] }
    }
    fn vcpu(&mut self) -> &mut Vcpu {
        &mut self.vcpu
    }
    fn events(&mut self) -> &mut EventChannels {
        &mut self.events
    }
    fn caller(&self) -> DomId {
        self.me
    }
    fn with_events(&mut self, dom: DomId, f: &mut PairFn<'_>) -> Result<u32, Errno> {
        if dom == self.me {
            return f(&mut self.events, None);
        }
        let theirs = self.others.get_mut(&dom).ok_or(Errno::ESRCH)?;
        f(&mut self.events, Some(theirs))
    }
    fn notify(&mut self, dom: DomId, port: u32) {
        self.notified.push((dom, port));
    }
    fn grant_setup(&mut self, dom: DomId, nr_frames: u32) -> Result<GrantFrames, GrantError> {
        if nr_frames > 4 {
            return Err(GrantError::FrameQuota);
        }
        Ok((0..u64::from(nr_frames)).map(|i| 0x100 * u64::from(dom.raw()) + i).collect())
    }
    fn grant_query(&mut self, dom: DomId) -> Result<(u32, u32), GrantError> {
        Ok((u32::from(dom.raw()), 4))
    }
    fn grant_copy(&mut self, op: &crate::grant::CopyOp) -> Result<(), GrantError> {
        self.now += self.cost_ns;
        self.copies.push(*op);
        Ok(())
    }
    fn grant_map(&mut self, req: &crate::grant::MapRequest) -> Result<(u32, u64), GrantError> {
        if req.gref == 13 {
            return Err(GrantError::NotGranted);
        }
        Ok((req.gref + 100, 0x5000))
    }
    fn grant_unmap(&mut self, handle: u32, _host: u64, _bus: u64) -> Result<(), GrantError> {
        if handle == 7 {
            Err(GrantError::BadHandle)
        } else {
            Ok(())
        }
    }
    fn grant_set_notify(&mut self, _h: u32, _a: u16, _o: u16, _p: u32) -> Result<(), GrantError> {
        Ok(())
    }
    fn unmask(&mut self, port: u32) {
        self.unmasked.push(port);
    }
    fn port_pending(&self, port: u32) -> bool {
        self.pending.contains(&port)
    }
    fn enable_events(&mut self) -> bool {
        self.mask = false;
        self.upcall_pending
    }
    fn mmu_update(&mut self, req: MmuUpdate) -> Result<(), Errno> {
        if req.ptr == self.poison {
            return Err(Errno::EINVAL);
        }
        self.now += self.cost_ns;
        self.mmu.push(req);
        Ok(())
    }
    fn mmuext(&mut self, op: MmuextOp) -> Result<bool, Errno> {
        if op.arg1 == self.poison {
            return Err(Errno::EINVAL);
        }
        self.now += self.cost_ns;
        if op.arg1 == self.slow.0 && self.slow.1 > 0 {
            self.slow.1 -= 1;
            return Ok(false);
        }
        self.ext.push(op);
        Ok(true)
    }
    fn update_va_mapping(&mut self, va: u64, val: u64, _flags: u64) -> Result<(), Errno> {
        self.mmu.push(MmuUpdate { ptr: va, val });
        Ok(())
    }
    fn preempt_due(&mut self) -> bool {
        self.preempt_calls += 1;
        if self.budget_end.is_some_and(|end| self.now >= end) {
            return true;
        }
        self.preempt_every != 0 && self.preempt_calls.is_multiple_of(self.preempt_every)
    }
}

/// Runs a hypercall to completion the way the trap layer does: a
/// continuation re-executes it with the new arguments.
fn run_to_end(e: &mut FakeEnv, nr: u64, mut a: [u64; 5]) -> (Action, u32) {
    let mut continuations = 0;
    loop {
        match dispatch(e, nr, a) {
            Action::Continue(next) => {
                continuations += 1;
                a = next;
            }
            other => return (other, continuations),
        }
    }
}

fn r(e: Errno) -> Action {
    Action::Return(e.to_ret())
}

const OK: Action = Action::Return(0);

fn trap_entry(vector: u8, flags: u8, address: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = vector;
    b[1] = flags;
    b[8..16].copy_from_slice(&address.to_le_bytes());
    b
}

#[test]
fn console_write_copies_and_returns_length() {
    let mut e = FakeEnv::new();
    e.put(BASE, b"hello");
    assert_eq!(e.call(hypercall::CONSOLE_IO, [0, 5, BASE, 0, 0]), Action::Return(5));
    assert_eq!(e.console, b"hello");
    assert_eq!(e.call(hypercall::CONSOLE_IO, [0, 0, 0, 0, 0]), Action::Return(0));
}

#[test]
fn console_write_bad_pointer_is_efault_and_writes_nothing() {
    let mut e = FakeEnv::new();
    for (len, ptr) in
        [(5, 0), (5, BASE + SIZE as u64 - 2), (1, u64::MAX), (4096, BASE + 63 * 1024), (8, ENTRY_AREA_BASE)]
    {
        assert_eq!(e.call(hypercall::CONSOLE_IO, [0, len, ptr, 0, 0]), r(Errno::EFAULT), "len {len} ptr {ptr:#x}");
    }
    assert!(e.console.is_empty());
    for len in [4097, u64::MAX, 1 << 40] {
        assert_eq!(e.call(hypercall::CONSOLE_IO, [0, len, BASE, 0, 0]), r(Errno::EINVAL));
    }
}

#[test]
fn console_takeover_and_write_as_are_privileged_and_checked() {
    use pvguest_abi::domctl;
    let mut e = FakeEnv::new();
    e.put(BASE, b"hello");
    let as7 = 5 | (7u64 << 32);
    let (wa, w) = (console_io::WRITE_AS, console_io::WRITE);
    // Unprivileged: both refused before anything is looked at.
    assert_eq!(e.call(hypercall::CONSOLE_IO, [wa, as7, BASE, 0, 0]), r(Errno::EPERM));
    assert_eq!(e.call(hypercall::DOMCTL, [domctl::CONSOLE_TAKEOVER, 7, 0, 0, 0]), r(Errno::EPERM));
    e.privileged = true;
    assert_eq!(e.call(hypercall::DOMCTL, [domctl::CONSOLE_TAKEOVER, 7, 0, 0, 0]), Action::Return(40), "the port");
    assert_eq!(e.taken, [DomId::of(7)]);
    assert_eq!(e.call(hypercall::CONSOLE_IO, [wa, as7, BASE, 0, 0]), Action::Return(5));
    assert_eq!(e.console_as, [(DomId::of(7), b"hello".to_vec())]);
    assert!(e.console.is_empty(), "nothing as the caller");
    // A domain not taken over, none at all, and bits past the id.
    for (arg, err) in
        [(5 | (8u64 << 32), Errno::EINVAL), (5 | (9u64 << 32), Errno::ESRCH), (5 | (1u64 << 48), Errno::EINVAL)]
    {
        assert_eq!(e.call(hypercall::CONSOLE_IO, [wa, arg, BASE, 0, 0]), r(err));
    }
    // A plain write still takes no id.
    assert_eq!(e.call(hypercall::CONSOLE_IO, [w, as7, BASE, 0, 0]), r(Errno::EINVAL));
}

#[test]
fn console_read_is_privileged_and_bounded() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::CONSOLE_IO, [1, 8, BASE, 0, 0]), r(Errno::EPERM));
    e.privileged = true;
    assert_eq!(e.call(hypercall::CONSOLE_IO, [1, 8, BASE, 0, 0]), Action::Return(5));
    assert_eq!(e.get(BASE, 5), b"typed");
    assert_eq!(e.call(hypercall::CONSOLE_IO, [1, 5000, BASE, 0, 0]), r(Errno::EINVAL));
    e.input = b"x".to_vec();
    assert_eq!(e.call(hypercall::CONSOLE_IO, [1, 8, BASE + RO_FROM, 0, 0]), r(Errno::EFAULT));
}

#[test]
fn unknown_numbers_and_subcommands_are_enosys() {
    let mut e = FakeEnv::new();
    for nr in [2, 5, 16, 23, 30, 999, u64::MAX] {
        assert_eq!(e.call(nr, [0; 5]), r(Errno::ENOSYS), "nr {nr}");
    }
    assert_eq!(e.call(hypercall::CONSOLE_IO, [7, 1, BASE, 0, 0]), r(Errno::ENOSYS));
    assert_eq!(e.call(hypercall::SCHED_OP, [99, 0, 0, 0, 0]), r(Errno::ENOSYS));
    assert_eq!(e.call(hypercall::XEN_VERSION, [u64::MAX, 0, 0, 0, 0]), r(Errno::ENOSYS));
    assert_eq!(e.call(hypercall::MEMORY_OP, [77, DOMID_SELF, 0, 0, 0]), r(Errno::ENOSYS));
    assert_eq!(e.call(hypercall::VCPU_OP, [77, 0, BASE, 0, 0]), r(Errno::ENOSYS));
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [77, BASE, 0, 0, 0]), r(Errno::ENOSYS));
}

#[test]
fn sched_op_commands() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::SCHED_OP, [0, 0, 0, 0, 0]), Action::Yield);
    assert_eq!(e.call(hypercall::SCHED_OP, [1, 0, 0, 0, 0]), Action::Block);
    assert!(!e.mask, "block enables event delivery");
    e.upcall_pending = true;
    assert_eq!(e.call(hypercall::SCHED_OP, [1, 0, 0, 0, 0]), OK, "block returns at once if an event is pending");
    assert_eq!(e.call(hypercall::SCHED_OP, [2, 0, 0, 0, 0]), Action::Shutdown(ShutdownReason::Poweroff));
    assert_eq!(e.call(hypercall::SCHED_OP, [2, 3, 0, 0, 0]), Action::Shutdown(ShutdownReason::Crash));
    for bad in [2, 4, 5, u64::MAX] {
        assert_eq!(e.call(hypercall::SCHED_OP, [2, bad, 0, 0, 0]), r(Errno::EINVAL), "reason {bad}");
    }
}

fn poll_arg(e: &mut FakeEnv, ports: &[u32], timeout: u64) -> u64 {
    let at = BASE + 0x100;
    let list = BASE + 0x200;
    let mut b = [0u8; 24];
    b[0..8].copy_from_slice(&list.to_le_bytes());
    b[8..12].copy_from_slice(&(ports.len() as u32).to_le_bytes());
    b[16..24].copy_from_slice(&timeout.to_le_bytes());
    e.put(at, &b);
    for (i, p) in ports.iter().enumerate() {
        e.put(list + 4 * i as u64, &p.to_le_bytes());
    }
    at
}

#[test]
fn sched_poll_validates_and_waits() {
    let mut e = FakeEnv::new();
    let p = e.events.bind_virq(0).unwrap();
    let a = poll_arg(&mut e, &[p], 0);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, a, 0, 0, 0]), Action::Poll);
    assert_eq!(e.vcpu.poll_ports.as_slice(), &[p]);
    assert_eq!(e.vcpu.poll_deadline, None);
    e.pending.push(p);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, a, 0, 0, 0]), OK, "a pending port returns at once");
    e.pending.clear();
    let a = poll_arg(&mut e, &[p], 999);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, a, 0, 0, 0]), OK, "a past deadline returns at once");
    let a = poll_arg(&mut e, &[p], 5000);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, a, 0, 0, 0]), Action::Poll);
    assert_eq!(e.vcpu.poll_deadline, Some(5000));
    let a = poll_arg(&mut e, &[p, 77], 0);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, a, 0, 0, 0]), r(Errno::EINVAL), "unbound port");
    let a = poll_arg(&mut e, &[], 0);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, a, 0, 0, 0]), r(Errno::EINVAL), "no ports and no deadline");
    let a = poll_arg(&mut e, &[], 7000);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, a, 0, 0, 0]), Action::Poll, "no ports: a sleep until the deadline");
    assert!(e.vcpu.poll_ports.is_empty());
    assert_eq!(e.vcpu.poll_deadline, Some(7000));
    let mut b = [0u8; 24];
    b[0..8].copy_from_slice(&(BASE + 0x200).to_le_bytes());
    b[8..12].copy_from_slice(&129u32.to_le_bytes());
    e.put(BASE + 0x100, &b);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, BASE + 0x100, 0, 0, 0]), r(Errno::EINVAL), "too many ports");
    assert_eq!(e.call(hypercall::SCHED_OP, [3, 0, 0, 0, 0]), r(Errno::EFAULT));
    b[0..8].copy_from_slice(&ENTRY_AREA_BASE.to_le_bytes());
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    e.put(BASE + 0x100, &b);
    assert_eq!(e.call(hypercall::SCHED_OP, [3, BASE + 0x100, 0, 0, 0]), r(Errno::EFAULT), "bad port array");
}

#[test]
fn version_and_features() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::XEN_VERSION, [0; 5]), Action::Return(1));
    let Action::Return(f) = e.call(hypercall::XEN_VERSION, [6, 0, 0, 0, 0]) else { panic!("features") };
    assert_ne!(f as u64 & features::FPU_PRESERVED, 0);
    assert_ne!(f as u64 & features::EVENTS, 0);
}

#[test]
fn set_trap_table_reads_until_terminator() {
    let mut e = FakeEnv::new();
    let t = BASE + 0x1000;
    e.put(t, &trap_entry(14, TI_MASK_EVENTS, BASE + 0x40));
    e.put(t + 16, &trap_entry(13, 0, BASE + 0x80));
    e.put(t + 32, &trap_entry(0, 0, 0));
    assert_eq!(e.call(hypercall::SET_TRAP_TABLE, [t, 0, 0, 0, 0]), OK);
    assert_eq!(e.vcpu.traps.handler(14).unwrap().address, BASE + 0x40);
    assert!(e.vcpu.traps.handler(14).unwrap().mask_events);
    assert_eq!(e.call(hypercall::SET_TRAP_TABLE, [0, 0, 0, 0, 0]), OK);
    assert_eq!(e.vcpu.traps.handler(14), None, "a null table clears");
}

#[test]
fn set_trap_table_bad_inputs() {
    let mut e = FakeEnv::new();
    let t = BASE + 0x1000;
    e.put(t, &trap_entry(14, 0, ENTRY_AREA_BASE));
    assert_eq!(e.call(hypercall::SET_TRAP_TABLE, [t, 0, 0, 0, 0]), r(Errno::EINVAL));
    e.put(t, &trap_entry(14, 0, BASE));
    for i in 1..=MAX_TRAP_TABLE as u64 {
        e.put(t + 16 * i, &trap_entry(6, 0, BASE));
    }
    assert_eq!(e.call(hypercall::SET_TRAP_TABLE, [t, 0, 0, 0, 0]), r(Errno::E2BIG), "no terminator");
    // A full table: MAX_TRAP_TABLE handlers and then the terminator.
    e.put(t + 16 * MAX_TRAP_TABLE as u64, &trap_entry(0, 0, 0));
    assert_eq!(e.call(hypercall::SET_TRAP_TABLE, [t, 0, 0, 0, 0]), OK, "a full table is accepted");
    assert!(e.vcpu.traps.handler(14).is_some() && e.vcpu.traps.handler(6).is_some());
    e.put(t + 16 * MAX_TRAP_TABLE as u64, &trap_entry(6, 0, BASE));
    e.vcpu = Vcpu::default();
    assert_eq!(e.call(hypercall::SET_TRAP_TABLE, [ENTRY_AREA_BASE, 0, 0, 0, 0]), r(Errno::EFAULT));
    assert_eq!(e.call(hypercall::SET_TRAP_TABLE, [u64::MAX - 8, 0, 0, 0, 0]), r(Errno::EFAULT));
    assert_eq!(e.vcpu.traps.handler(14), None, "nothing installed by failed calls");
}

#[test]
fn stack_switch_and_callbacks_validate() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::STACK_SWITCH, [0x21, BASE + 0x8000, 0, 0, 0]), OK);
    assert_eq!(e.call(hypercall::STACK_SWITCH, [0x10, BASE, 0, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::STACK_SWITCH, [0x21, ENTRY_AREA_BASE, 0, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::SET_CALLBACKS, [BASE + 1, 0, BASE + 2, 0, 0]), OK);
    assert_eq!(e.vcpu.callbacks.event, BASE + 1);
    assert_eq!(e.call(hypercall::SET_CALLBACKS, [1 << 50, 0, 0, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.vcpu.callbacks.event, BASE + 1);
}

fn put_mmu(e: &mut FakeEnv, at: u64, reqs: &[(u64, u64)]) {
    for (i, (p, v)) in reqs.iter().enumerate() {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&p.to_le_bytes());
        b[8..16].copy_from_slice(&v.to_le_bytes());
        e.put(at + 16 * i as u64, &b);
    }
}

#[test]
fn mmu_update_batches_and_reports_done() {
    let mut e = FakeEnv::new();
    let reqs = BASE + 0x2000;
    let done = BASE + 0x3000;
    put_mmu(&mut e, reqs, &[(8, 1), (16, 2), (24, 3)]);
    assert_eq!(e.call(hypercall::MMU_UPDATE, [reqs, 3, done, DOMID_SELF, 0]), OK);
    assert_eq!(e.mmu.len(), 3);
    assert_eq!(e.get(done, 4), 3u32.to_le_bytes());
    e.poison = 16;
    e.mmu.clear();
    assert_eq!(e.call(hypercall::MMU_UPDATE, [reqs, 3, done, DOMID_SELF, 0]), r(Errno::EINVAL));
    assert_eq!(e.mmu.len(), 1, "stops at the first failure");
    assert_eq!(e.get(done, 4), 1u32.to_le_bytes(), "reports the entries done");
}

#[test]
fn mmu_update_bad_inputs() {
    let mut e = FakeEnv::new();
    let reqs = BASE + 0x2000;
    assert_eq!(e.call(hypercall::MMU_UPDATE, [reqs, 1, 0, 0, 0]), r(Errno::EPERM), "foreign domain");
    assert_eq!(e.call(hypercall::MMU_UPDATE, [reqs, MAX_BATCH + 1, 0, DOMID_SELF, 0]), r(Errno::E2BIG));
    assert_eq!(e.call(hypercall::MMU_UPDATE, [ENTRY_AREA_BASE, 1, 0, DOMID_SELF, 0]), r(Errno::EFAULT));
    assert_eq!(e.call(hypercall::MMU_UPDATE, [u64::MAX - 15, 2, 0, DOMID_SELF, 0]), r(Errno::EFAULT));
    assert_eq!(
        e.call(hypercall::MMU_UPDATE, [reqs, 1, BASE + RO_FROM, DOMID_SELF, 0]),
        r(Errno::EFAULT),
        "read-only done"
    );
    // A batch that runs off the end of guest memory stops there.
    let last = BASE + SIZE as u64 - 16;
    put_mmu(&mut e, last, &[(8, 8)]);
    e.mmu.clear();
    assert_eq!(e.call(hypercall::MMU_UPDATE, [last, 2, 0, DOMID_SELF, 0]), r(Errno::EFAULT));
    assert_eq!(e.mmu.len(), 1);
}

#[test]
fn mmuext_op_batches_and_bad_inputs() {
    let mut e = FakeEnv::new();
    let ops = BASE + 0x2000;
    let mut b = [0u8; 48];
    b[0..4].copy_from_slice(&3u32.to_le_bytes());
    b[8..16].copy_from_slice(&77u64.to_le_bytes());
    b[24..28].copy_from_slice(&5u32.to_le_bytes());
    b[32..40].copy_from_slice(&78u64.to_le_bytes());
    e.put(ops, &b);
    assert_eq!(e.call(hypercall::MMUEXT_OP, [ops, 2, 0, DOMID_SELF, 0]), OK);
    assert_eq!(e.ext[1], MmuextOp { cmd: 5, pad: 0, arg1: 78, arg2: 0 });
    e.poison = 77;
    assert_eq!(e.call(hypercall::MMUEXT_OP, [ops, 2, BASE, DOMID_SELF, 0]), r(Errno::EINVAL));
    assert_eq!(e.get(BASE, 4), 0u32.to_le_bytes());
    assert_eq!(e.call(hypercall::MMUEXT_OP, [ops, 1, 0, 5, 0]), r(Errno::EPERM));
    assert_eq!(e.call(hypercall::MMUEXT_OP, [ops, 513, 0, DOMID_SELF, 0]), r(Errno::E2BIG));
    assert_eq!(e.call(hypercall::MMUEXT_OP, [0, 1, 0, DOMID_SELF, 0]), r(Errno::EFAULT));
}

/// A request that stops part-way (a long pin) makes the batch continue at
/// that same request; the batch still reports every request done once.
#[test]
fn a_request_stopped_part_way_runs_again_and_the_batch_goes_on() {
    let mut e = FakeEnv::new();
    let ops = BASE + 0x2000;
    let mut b = [0u8; 72];
    for (i, arg) in [70u64, 71, 72].into_iter().enumerate() {
        b[24 * i + 8..24 * i + 16].copy_from_slice(&arg.to_le_bytes());
    }
    e.put(ops, &b);
    e.slow = (71, 3);
    let done = BASE + 0x100;
    let (res, n) = run_to_end(&mut e, hypercall::MMUEXT_OP, [ops, 3, done, DOMID_SELF, 0]);
    assert_eq!(res, OK);
    assert_eq!(n, 3, "one continuation per stop");
    assert_eq!(e.ext.iter().map(|o| o.arg1).collect::<Vec<_>>(), [70, 71, 72], "each request completed once");
    assert_eq!(e.get(done, 4), 3u32.to_le_bytes());
    // Nested in a multicall, the entry continues the same way.
    e.ext.clear();
    e.slow = (71, 2);
    let c = BASE + 0x4000;
    put_call(&mut e, c, hypercall::MMUEXT_OP, [ops, 3, 0, DOMID_SELF, 0]);
    let (res, n) = run_to_end(&mut e, hypercall::MULTICALL, [c, 1, 0, 0, 0]);
    assert_eq!(res, OK);
    assert_eq!(n, 2);
    assert_eq!(e.ext.iter().map(|o| o.arg1).collect::<Vec<_>>(), [70, 71, 72]);
}

#[test]
fn update_va_mapping_flags() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::UPDATE_VA_MAPPING, [BASE, 5, 2, 0, 0]), OK);
    assert_eq!(e.call(hypercall::UPDATE_VA_MAPPING, [BASE, 5, 3, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::UPDATE_VA_MAPPING, [BASE, 5, u64::MAX, 0, 0]), r(Errno::EINVAL));
}

#[test]
fn memory_op_queries() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::MEMORY_OP, [3, DOMID_SELF, 0, 0, 0]), Action::Return(256));
    assert_eq!(e.call(hypercall::MEMORY_OP, [4, DOMID_SELF, 0, 0, 0]), Action::Return(256));
    assert_eq!(e.call(hypercall::MEMORY_OP, [3, 2, 0, 0, 0]), r(Errno::EPERM));
    let m = BASE + 0x100;
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&4u32.to_le_bytes());
    b[8..16].copy_from_slice(&(BASE + 0x200).to_le_bytes());
    e.put(m, &b);
    assert_eq!(e.call(hypercall::MEMORY_OP, [9, m, 0, 0, 0]), OK);
    assert_eq!(e.get(m, 4), 1u32.to_le_bytes());
    assert_eq!(u64::from_le_bytes(e.get(BASE + 0x208, 8).try_into().unwrap()), 256 * 4096);
    b[0..4].copy_from_slice(&0u32.to_le_bytes());
    e.put(m, &b);
    assert_eq!(e.call(hypercall::MEMORY_OP, [9, m, 0, 0, 0]), r(Errno::EINVAL));
    b[0..4].copy_from_slice(&1u32.to_le_bytes());
    b[8..16].copy_from_slice(&(BASE + RO_FROM).to_le_bytes());
    e.put(m, &b);
    assert_eq!(e.call(hypercall::MEMORY_OP, [9, m, 0, 0, 0]), r(Errno::EFAULT));
    assert_eq!(e.call(hypercall::MEMORY_OP, [9, 0, 0, 0, 0]), r(Errno::EFAULT));
}

fn put_call(e: &mut FakeEnv, at: u64, op: u64, args: [u64; 5]) {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&op.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    e.put(at, &b);
}

#[test]
fn multicall_runs_each_and_writes_results() {
    let mut e = FakeEnv::new();
    let c = BASE + 0x4000;
    put_call(&mut e, c, hypercall::XEN_VERSION, [0; 5]);
    put_call(&mut e, c + 64, 9999, [0; 5]);
    put_call(&mut e, c + 128, hypercall::MULTICALL, [c, 1, 0, 0, 0]);
    put_call(&mut e, c + 192, hypercall::SCHED_OP, [1, 0, 0, 0, 0]);
    put_call(&mut e, c + 256, hypercall::SCHED_OP, [0, 0, 0, 0, 0]);
    assert_eq!(e.call(hypercall::MULTICALL, [c, 5, 0, 0, 0]), Action::Yield, "a yield inside runs after the batch");
    let res = |e: &FakeEnv, i: u64| i64::from_le_bytes(e.get(c + 64 * i + 8, 8).try_into().unwrap());
    assert_eq!(res(&e, 0), 1);
    assert_eq!(res(&e, 1), Errno::ENOSYS.to_ret());
    assert_eq!(res(&e, 2), Errno::EINVAL.to_ret(), "no nested multicall");
    assert_eq!(res(&e, 3), Errno::EINVAL.to_ret(), "no blocking inside a batch");
    put_call(&mut e, c + 64, hypercall::SCHED_OP, [2, 0, 0, 0, 0]);
    assert_eq!(e.call(hypercall::MULTICALL, [c, 3, 0, 0, 0]), Action::Shutdown(ShutdownReason::Poweroff));
}

#[test]
fn multicall_bad_inputs() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::MULTICALL, [BASE, MULTICALL_MAX + 1, 0, 0, 0]), r(Errno::E2BIG));
    assert_eq!(e.call(hypercall::MULTICALL, [0, 1, 0, 0, 0]), r(Errno::EFAULT));
    put_call(&mut e, BASE + RO_FROM, hypercall::XEN_VERSION, [0; 5]);
    assert_eq!(e.call(hypercall::MULTICALL, [BASE + RO_FROM, 1, 0, 0, 0]), r(Errno::EFAULT), "result not writable");
    assert_eq!(e.call(hypercall::MULTICALL, [u64::MAX - 63, 2, 0, 0, 0]), r(Errno::EFAULT));
}

#[test]
fn timers() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::SET_TIMER_OP, [5000, 0, 0, 0, 0]), OK);
    assert_eq!(e.vcpu.timer, Some(5000));
    assert_eq!(e.call(hypercall::SET_TIMER_OP, [0, 0, 0, 0, 0]), OK);
    assert_eq!(e.vcpu.timer, None);
    let t = BASE + 0x100;
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&2000u64.to_le_bytes());
    e.put(t, &b);
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::SET_SINGLESHOT_TIMER, 0, t, 0, 0]), OK);
    assert_eq!(e.vcpu.timer, Some(2000));
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::SET_VIRTUAL_TIMER, 0, t, 0, 0]), OK);
    assert_eq!(e.vcpu.vtimer, Some(2000));
    b[0..8].copy_from_slice(&10u64.to_le_bytes());
    b[8..12].copy_from_slice(&SSHOT_FUTURE.to_le_bytes());
    e.put(t, &b);
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::SET_SINGLESHOT_TIMER, 0, t, 0, 0]), Action::Return(vcpuop::ETIME));
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::SET_VIRTUAL_TIMER, 0, t, 0, 0]), Action::Return(vcpuop::ETIME));
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    e.put(t, &b);
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::SET_SINGLESHOT_TIMER, 0, t, 0, 0]), r(Errno::EINVAL), "bad flags");
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::SET_SINGLESHOT_TIMER, 1, t, 0, 0]), r(Errno::EINVAL), "vcpu 1");
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::SET_SINGLESHOT_TIMER, 0, 0, 0, 0]), r(Errno::EFAULT));
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::STOP_SINGLESHOT_TIMER, 0, 0, 0, 0]), OK);
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::STOP_VIRTUAL_TIMER, 0, 0, 0, 0]), OK);
    assert_eq!((e.vcpu.timer, e.vcpu.vtimer), (None, None));
}

#[test]
fn runstate_info() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::GET_RUNSTATE_INFO, 0, BASE + 0x100, 0, 0]), OK);
    assert_eq!(u64::from_le_bytes(e.get(BASE + 0x110, 8).try_into().unwrap()), 500);
    assert_eq!(e.call(hypercall::VCPU_OP, [vcpuop::GET_RUNSTATE_INFO, 0, BASE + RO_FROM, 0, 0]), r(Errno::EFAULT));
}

#[test]
fn segment_bases() {
    let mut e = FakeEnv::new();
    assert_eq!(e.call(hypercall::SET_SEGMENT_BASE, [segbase::FS, 0x1234, 0, 0, 0]), OK);
    assert_eq!(e.call(hypercall::SET_SEGMENT_BASE, [segbase::GS, BASE, 0, 0, 0]), OK);
    assert_eq!((e.vcpu.fs_base, e.vcpu.gs_base), (0x1234, BASE));
    assert_eq!(e.call(hypercall::SET_SEGMENT_BASE, [segbase::FS, 1 << 47, 0, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::SET_SEGMENT_BASE, [2, 0, 0, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.vcpu.fs_base, 0x1234);
}

#[test]
fn event_channel_ops() {
    let mut e = FakeEnv::new();
    let a = BASE + 0x100;
    e.put(a, &[0u8; 12]);
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VIRQ, a, 0, 0, 0]), OK);
    assert_eq!(e.get(a + 8, 4), 1u32.to_le_bytes());
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VIRQ, a, 0, 0, 0]), r(Errno::EEXIST));
    e.put(a, &[16, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VIRQ, a, 0, 0, 0]), r(Errno::EINVAL), "vcpu 1");
    e.put(a, &[99, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VIRQ, a, 0, 0, 0]), r(Errno::EINVAL), "bad virq");
    // The port cannot be written back: the bind is undone.
    let ro = BASE + RO_FROM;
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VIRQ, ro, 0, 0, 0]), r(Errno::EEXIST));
    e.events.close(1).unwrap();
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VIRQ, ro, 0, 0, 0]), r(Errno::EFAULT));
    assert_eq!(e.events.virq_port(0), None);
    // Unmask and close validate the port.
    let p = e.events.bind_virq(0).unwrap();
    e.put(a, &p.to_le_bytes());
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::UNMASK, a, 0, 0, 0]), OK);
    assert_eq!(e.unmasked, [p]);
    e.put(a, &200u32.to_le_bytes());
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::UNMASK, a, 0, 0, 0]), OK, "a free port in range");
    e.put(a, &9999u32.to_le_bytes());
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::UNMASK, a, 0, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::CLOSE, a, 0, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::CLOSE, 0, 0, 0, 0]), r(Errno::EFAULT));
    // Status.
    let st = status(&mut e, DOMID_SELF as u16, p).unwrap();
    assert_eq!((st.status, st.u0), (status::VIRQ, 0));
    assert_eq!(status(&mut e, 3, p).err(), Some(r(Errno::EPERM)), "another domain's ports are not ours to see");
}

#[test]
fn preempted_batches_continue_and_count_the_whole_batch() {
    let mut e = FakeEnv::new();
    let reqs = BASE + 0x2000;
    let done = BASE + 0x3000;
    let list: std::vec::Vec<(u64, u64)> = (0..100).map(|i| (8 * i, i)).collect();
    put_mmu(&mut e, reqs, &list);
    e.preempt_every = 7;
    let (res, n) = run_to_end(&mut e, hypercall::MMU_UPDATE, [reqs, 100, done, DOMID_SELF, 0]);
    assert_eq!(res, OK);
    assert!(n >= 10, "preempted {n} times");
    assert_eq!(e.mmu.len(), 100, "every request applied exactly once");
    assert!(e.mmu.iter().enumerate().all(|(i, m)| m.val == i as u64), "in order");
    assert_eq!(e.get(done, 4), 100u32.to_le_bytes(), "done counts the whole batch");
    // A failure after a continuation reports the index in the whole batch.
    e.mmu.clear();
    e.poison = 8 * 57;
    let (res, _) = run_to_end(&mut e, hypercall::MMU_UPDATE, [reqs, 100, done, DOMID_SELF, 0]);
    assert_eq!(res, r(Errno::EINVAL));
    assert_eq!(e.get(done, 4), 57u32.to_le_bytes());
    // Progress bits beyond a batch are refused.
    assert_eq!(e.call(hypercall::MMU_UPDATE, [reqs, 1 | (513 << 32), 0, DOMID_SELF, 0]), r(Errno::E2BIG));
}

#[test]
fn preempted_multicall_continues_where_it_stopped() {
    let mut e = FakeEnv::new();
    let c = BASE + 0x4000;
    for i in 0..10 {
        put_call(&mut e, c + 64 * i, hypercall::SET_TIMER_OP, [1000 + i, 0, 0, 0, 0]);
    }
    e.preempt_every = 3;
    let (res, n) = run_to_end(&mut e, hypercall::MULTICALL, [c, 10, 0, 0, 0]);
    assert_eq!(res, OK);
    assert!(n >= 3);
    assert_eq!(e.vcpu.timer, Some(1009), "every entry ran, in order");
    for i in 0..10 {
        assert_eq!(e.get(c + 64 * i + 8, 8), 0u64.to_le_bytes());
    }
}

#[test]
fn nested_batches_are_preempted_and_resume_in_their_entry() {
    let mut e = FakeEnv::new();
    let reqs = BASE + 0x2000;
    let list: std::vec::Vec<(u64, u64)> = (0..200).map(|i| (8 * i, i)).collect();
    put_mmu(&mut e, reqs, &list);
    let c = BASE + 0x4000;
    let done = BASE + 0x3000;
    put_call(&mut e, c, hypercall::MMU_UPDATE, [reqs, 150, done, DOMID_SELF, 0]);
    put_call(&mut e, c + 64, hypercall::MMU_UPDATE, [reqs + 150 * 16, 50, 0, DOMID_SELF, 0]);
    put_call(&mut e, c + 128, hypercall::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]);
    put_call(&mut e, c + 192, hypercall::MMU_UPDATE, [reqs, 1, 0, DOMID_SELF, 0]);
    e.preempt_every = 10;
    let (res, n) = run_to_end(&mut e, hypercall::MULTICALL, [c, 4, 0, 0, 0]);
    assert_eq!(res, Action::Yield, "a yield requested before a continuation survives it");
    assert!(n >= 20, "the nested batches were preempted ({n} continuations)");
    assert_eq!(e.mmu.len(), 201, "every request applied exactly once");
    assert!(e.mmu[..200].iter().enumerate().all(|(i, m)| m.val == i as u64), "in order");
    assert_eq!(e.get(done, 4), 150u32.to_le_bytes(), "the entry's done counts its whole batch");
    for i in 0..4 {
        assert_eq!(e.get(c + 64 * i + 8, 8), 0u64.to_le_bytes(), "entry {i} succeeded");
    }
    // A nested batch beyond MAX_BATCH is refused like a direct one.
    put_call(&mut e, c, hypercall::MMU_UPDATE, [reqs, MAX_BATCH + 1, 0, DOMID_SELF, 0]);
    assert_eq!(dispatch(&mut e, hypercall::MULTICALL, [c, 1, 0, 0, 0]), OK);
    assert_eq!(i64::from_le_bytes(e.get(c + 8, 8).try_into().unwrap()), Errno::E2BIG.to_ret());
}

#[test]
fn a_preempted_entry_whose_arguments_cannot_be_rewritten_fails_the_multicall() {
    let mut e = FakeEnv::new();
    let reqs = BASE + 0x2000;
    let list: std::vec::Vec<(u64, u64)> = (0..20).map(|i| (8 * i, i)).collect();
    put_mmu(&mut e, reqs, &list);
    // The entry sits in read-only memory: its result cannot be written
    // either, so the multicall ends with EFAULT at the first unit boundary.
    put_call(&mut e, BASE + RO_FROM, hypercall::MMU_UPDATE, [reqs, 20, 0, DOMID_SELF, 0]);
    e.preempt_every = 5;
    assert_eq!(dispatch(&mut e, hypercall::MULTICALL, [BASE + RO_FROM, 1, 0, 0, 0]), r(Errno::EFAULT));
}

#[test]
fn a_read_only_done_pointer_fails_before_anything_is_applied() {
    let mut e = FakeEnv::new();
    let reqs = BASE + 0x2000;
    put_mmu(&mut e, reqs, &[(0, 1), (8, 2)]);
    assert_eq!(e.call(hypercall::MMU_UPDATE, [reqs, 2, BASE + RO_FROM, DOMID_SELF, 0]), r(Errno::EFAULT));
    assert!(e.mmu.is_empty(), "nothing applied");
    assert_eq!(e.call(hypercall::MMUEXT_OP, [reqs, 1, BASE + RO_FROM, DOMID_SELF, 0]), r(Errno::EFAULT));
    assert!(e.ext.is_empty(), "nothing applied");
}

#[test]
fn console_writes_continue_in_steps_and_return_the_whole_length() {
    let mut e = FakeEnv::new();
    let buf = BASE + 0x5000;
    let text: std::vec::Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
    e.put(buf, &text);
    e.preempt_every = 1;
    let (res, n) = run_to_end(&mut e, hypercall::CONSOLE_IO, [console_io::WRITE, 4096, buf, 0, 0]);
    assert_eq!(res, Action::Return(4096));
    assert_eq!(n as usize, 4096usize.div_ceil(FAKE_CONSOLE_STEP) - 1, "one step per unit");
    assert_eq!(e.console, text, "every byte once, in order");
    assert_eq!(e.call(hypercall::CONSOLE_IO, [console_io::WRITE, 10 | (4090 << 16), buf, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::CONSOLE_IO, [console_io::WRITE, 10 | (1 << 32), buf, 0, 0]), r(Errno::EINVAL));
}

/// Rule of `crate::sched::account`: a fake clock advanced inside a handler shows
/// up in the caller's BVT account, and in no one else's.
#[test]
fn time_spent_inside_a_hypercall_is_charged_to_its_caller() {
    use crate::sched::account::Meter;
    use crate::sched::bvt::{Bvt, Params, DEFAULT_WEIGHT, VT_SCALE};
    let mut bvt: Bvt<2> = Bvt::new(5_000_000);
    bvt.add(0, Params::weighted(DEFAULT_WEIGHT), 0).unwrap();
    bvt.add(1, Params::weighted(DEFAULT_WEIGHT), 0).unwrap();
    let mut e = FakeEnv::new();
    let reqs = BASE + 0x2000;
    let list: std::vec::Vec<(u64, u64)> = (0..64).map(|i| (8 * i, i)).collect();
    put_mmu(&mut e, reqs, &list);
    let c = BASE + 0x4000;
    for i in 0..8 {
        put_call(&mut e, c + 64 * i, hypercall::MMU_UPDATE, [reqs, 64, 0, DOMID_SELF, 0]);
    }
    e.now = 0;
    e.cost_ns = 1_000;
    let mut m = Meter::new(0);
    // The caller ran 500 ns and trapped (charge point 1) ...
    e.now = 500;
    m.charge(&mut bvt, 0, e.now);
    // ... then the hypercall did 8 x 64 requests of 1 us each (point 2).
    assert_eq!(dispatch(&mut e, hypercall::MULTICALL, [c, 8, 0, 0, 0]), OK);
    assert_eq!(m.charge(&mut bvt, 0, e.now), 512_000);
    m.settle(&mut bvt);
    let ns = |slot| bvt.avt(slot).unwrap() * u128::from(DEFAULT_WEIGHT) / u128::from(VT_SCALE);
    assert_eq!(ns(0), 512_500, "the caller pays for its run and for the work inside its hypercall");
    assert_eq!(ns(1), 0, "the other domain pays nothing");
}

/// The budget: with a fake clock, no invocation of a multicall storm runs
/// past `BUDGET_NS` plus one unit of work, and the storm still completes.
#[test]
fn no_hypercall_runs_past_its_budget_plus_one_unit() {
    let mut e = FakeEnv::new();
    let reqs = BASE + 0x2000;
    let list: std::vec::Vec<(u64, u64)> = (0..512).map(|i| (8 * (i % 64), i)).collect();
    put_mmu(&mut e, reqs, &list);
    let c = BASE + 0x3000;
    for i in 0..MULTICALL_MAX {
        put_call(&mut e, c + 64 * i, hypercall::MMU_UPDATE, [reqs, 512, 0, DOMID_SELF, 0]);
    }
    e.cost_ns = 700;
    let mut a = [c, MULTICALL_MAX, 0, 0, 0];
    let mut longest = 0;
    let mut invocations = 0;
    loop {
        let start = e.now;
        e.budget_end = Some(start + BUDGET_NS);
        let act = dispatch(&mut e, hypercall::MULTICALL, a);
        longest = longest.max(e.now - start);
        invocations += 1;
        match act {
            Action::Continue(next) => a = next,
            other => {
                assert_eq!(other, OK);
                break;
            }
        }
    }
    assert_eq!(e.mmu.len(), 512 * MULTICALL_MAX as usize, "every request applied exactly once");
    assert!(longest <= BUDGET_NS + e.cost_ns, "longest invocation {longest} ns");
    assert!(invocations >= 512 * 64 / (BUDGET_NS / 700 + 1), "{invocations} invocations");
}

#[test]
fn send_kicks_only_the_console_port() {
    let mut e = FakeEnv::new();
    let console = e.events.bind_console().unwrap();
    let virq = e.events.bind_virq(0).unwrap();
    let a = BASE + 0x100;
    let send = |e: &mut FakeEnv, port: u32| {
        e.put(a, &port.to_le_bytes());
        e.call(hypercall::EVENT_CHANNEL_OP, [event::SEND, a, 0, 0, 0])
    };
    assert_eq!(send(&mut e, console), OK);
    assert_eq!(e.kicks, 1);
    assert_eq!(send(&mut e, virq), r(Errno::EINVAL), "a virtual IRQ has no other end");
    assert_eq!(send(&mut e, 77), r(Errno::EINVAL), "unbound");
    assert_eq!(send(&mut e, 0), r(Errno::EINVAL));
    assert_eq!(send(&mut e, 1 << 20), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::SEND, 0, 0, 0, 0]), r(Errno::EFAULT));
    assert_eq!(e.kicks, 1);
    // Status shows the console port as connected; once closed it is gone.
    let mut st = [0u8; 20];
    st[0..2].copy_from_slice(&(DOMID_SELF as u16).to_le_bytes());
    st[4..8].copy_from_slice(&console.to_le_bytes());
    e.put(a, &st);
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::STATUS, a, 0, 0, 0]), OK);
    assert_eq!(e.get(a + 8, 4), status::INTERDOMAIN.to_le_bytes());
    e.put(a, &console.to_le_bytes());
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::CLOSE, a, 0, 0, 0]), OK);
    assert_eq!(send(&mut e, console), r(Errno::EINVAL), "closed");
    assert_eq!(e.kicks, 1);
}

// ---- interdomain event channels ----

const A: DomId = DomId::of(1);
const B: DomId = DomId::of(2);
const C: DomId = DomId::of(3);

fn put_struct<T: zerocopy::IntoBytes + zerocopy::Immutable>(e: &mut FakeEnv, at: u64, v: &T) {
    e.put(at, v.as_bytes());
}

fn get_struct<T: zerocopy::FromBytes>(e: &FakeEnv, at: u64) -> T {
    T::read_from_bytes(e.get(at, size_of::<T>())).unwrap()
}

/// `EVTCHNOP_alloc_unbound` in the caller's table for `remote`.
fn alloc_unbound(e: &mut FakeEnv, dom: u16, remote: u16) -> Result<u32, Action> {
    let at = BASE + 0x3000;
    put_struct(e, at, &AllocUnbound { dom, remote_dom: remote, port: 0 });
    match e.call(hypercall::EVENT_CHANNEL_OP, [event::ALLOC_UNBOUND, at, 0, 0, 0]) {
        OK => Ok(get_struct::<AllocUnbound>(e, at).port),
        other => Err(other),
    }
}

fn bind_interdomain(e: &mut FakeEnv, remote: u16, remote_port: u32) -> Result<u32, Action> {
    let at = BASE + 0x3100;
    put_struct(e, at, &BindInterdomain { remote_dom: remote, pad: 0, remote_port, local_port: 0 });
    match e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_INTERDOMAIN, at, 0, 0, 0]) {
        OK => Ok(get_struct::<BindInterdomain>(e, at).local_port),
        other => Err(other),
    }
}

fn evt_port_op(e: &mut FakeEnv, cmd: u64, port: u32) -> Action {
    let at = BASE + 0x3200;
    e.put(at, &port.to_le_bytes());
    e.call(hypercall::EVENT_CHANNEL_OP, [cmd, at, 0, 0, 0])
}

fn status(e: &mut FakeEnv, dom: u16, port: u32) -> Result<Status, Action> {
    let at = BASE + 0x3300;
    put_struct(e, at, &Status { dom, port, ..Status::default() });
    match e.call(hypercall::EVENT_CHANNEL_OP, [event::STATUS, at, 0, 0, 0]) {
        OK => Ok(get_struct::<Status>(e, at)),
        other => Err(other),
    }
}

const SELF16: u16 = DOMID_SELF as u16;

/// A offers a port to B; only B binds it; sends raise the other end; a
/// close reverts the other end to unbound, for the closer to bind again.
#[test]
fn interdomain_channels_connect_only_the_named_peer_and_revert_on_close() {
    let mut e = FakeEnv::new();
    e.others.insert(B, EventChannels::default());
    e.others.insert(C, EventChannels::default());
    // B offers port `bp` to A (played here by B's table directly).
    let bp = e.others.get_mut(&B).unwrap().alloc_unbound(A).unwrap();
    let cp = e.others.get_mut(&C).unwrap().alloc_unbound(B).unwrap();
    // A cannot bind C's port (offered to B), nor a port that is free.
    assert_eq!(bind_interdomain(&mut e, C.raw(), cp), Err(r(Errno::EINVAL)));
    assert_eq!(bind_interdomain(&mut e, B.raw(), bp + 1), Err(r(Errno::EINVAL)));
    assert_eq!(bind_interdomain(&mut e, 77, bp), Err(r(Errno::ESRCH)), "no such domain");
    let ap = bind_interdomain(&mut e, B.raw(), bp).unwrap();
    assert_eq!(e.events.get(ap), Ok(Port::Interdomain { remote: B, port: bp }));
    assert_eq!(e.others[&B].get(bp), Ok(Port::Interdomain { remote: A, port: ap }));
    assert_eq!(bind_interdomain(&mut e, B.raw(), bp), Err(r(Errno::EINVAL)), "bound only once");
    let st = status(&mut e, SELF16, ap).unwrap();
    assert_eq!((st.status, st.u0, st.u1), (status::INTERDOMAIN, u32::from(B.raw()), bp));
    // Send raises the peer's end.
    assert_eq!(evt_port_op(&mut e, event::SEND, ap), OK);
    assert_eq!(e.notified, [(B, bp)]);
    // Close: our port is free, B's reverts to unbound for us.
    assert_eq!(evt_port_op(&mut e, event::CLOSE, ap), OK);
    assert_eq!(e.events.get(ap), Ok(Port::Free));
    assert_eq!(e.others[&B].get(bp), Ok(Port::Unbound { remote: A }));
    assert_eq!(evt_port_op(&mut e, event::SEND, ap), r(Errno::EINVAL), "a closed port");
    // And we may bind it again.
    let ap2 = bind_interdomain(&mut e, B.raw(), bp).unwrap();
    assert_eq!(e.others[&B].get(bp), Ok(Port::Interdomain { remote: A, port: ap2 }));
}

#[test]
fn unbound_loopback_and_ipi_ports() {
    let mut e = FakeEnv::new();
    e.others.insert(B, EventChannels::default());
    let p = alloc_unbound(&mut e, SELF16, B.raw()).unwrap();
    assert_eq!(e.events.get(p), Ok(Port::Unbound { remote: B }));
    assert_eq!(evt_port_op(&mut e, event::SEND, p), r(Errno::ENOTCONN), "nobody bound it yet");
    let st = status(&mut e, SELF16, p).unwrap();
    assert_eq!((st.status, st.u0), (status::UNBOUND, u32::from(B.raw())));
    assert_eq!(alloc_unbound(&mut e, SELF16, 0x7ff5), Err(r(Errno::ESRCH)), "not a domain id");
    // Loopback: a port offered to ourselves, bound by ourselves.
    let lp = alloc_unbound(&mut e, SELF16, SELF16).unwrap();
    let lq = bind_interdomain(&mut e, SELF16, lp).unwrap();
    assert_eq!(evt_port_op(&mut e, event::SEND, lq), OK);
    assert_eq!(e.notified, [(A, lp)]);
    // IPI: a send raises the port itself.
    let at = BASE + 0x3400;
    put_struct(&mut e, at, &BindIpi { vcpu: 0, port: 0 });
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_IPI, at, 0, 0, 0]), OK);
    let ipi = get_struct::<BindIpi>(&e, at).port;
    assert_eq!(evt_port_op(&mut e, event::SEND, ipi), OK);
    assert_eq!(e.notified.last(), Some(&(A, ipi)));
    put_struct(&mut e, at, &BindIpi { vcpu: 1, port: 0 });
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_IPI, at, 0, 0, 0]), r(Errno::EINVAL));
    // bind_vcpu: vCPU 0 only, on a port in use.
    put_struct(&mut e, at, &BindVcpu { port: ipi, vcpu: 0 });
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VCPU, at, 0, 0, 0]), OK);
    put_struct(&mut e, at, &BindVcpu { port: ipi, vcpu: 1 });
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VCPU, at, 0, 0, 0]), r(Errno::ENOENT));
    put_struct(&mut e, at, &BindVcpu { port: 4000, vcpu: 0 });
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_VCPU, at, 0, 0, 0]), r(Errno::EINVAL));
}

/// Setting up channels for another domain is the privileged domain's.
#[test]
fn only_the_privileged_domain_acts_for_others() {
    let mut e = FakeEnv::new();
    e.others.insert(B, EventChannels::default());
    assert_eq!(alloc_unbound(&mut e, B.raw(), C.raw()), Err(r(Errno::EPERM)));
    assert_eq!(status(&mut e, B.raw(), 1).err(), Some(r(Errno::EPERM)));
    e.privileged = true;
    let p = alloc_unbound(&mut e, B.raw(), C.raw()).unwrap();
    assert_eq!(e.others[&B].get(p), Ok(Port::Unbound { remote: C }));
    assert_eq!(status(&mut e, B.raw(), p).unwrap().status, status::UNBOUND);
    assert_eq!(alloc_unbound(&mut e, 9, C.raw()), Err(r(Errno::ESRCH)), "a domain that does not live");
}

/// 4095 ports, then a clear error; closing one frees it for the next.
#[test]
fn ports_run_out_with_enospc() {
    let mut e = FakeEnv::new();
    let mut last = 0;
    for _ in 1..crate::event::NR_PORTS {
        last = e.events.alloc_unbound(B).unwrap();
    }
    assert_eq!(last, crate::event::NR_PORTS - 1);
    assert_eq!(alloc_unbound(&mut e, SELF16, B.raw()), Err(r(Errno::ENOSPC)));
    assert_eq!(evt_port_op(&mut e, event::CLOSE, 100), OK);
    assert_eq!(alloc_unbound(&mut e, SELF16, B.raw()), Ok(100));
}

/// `RESET` closes every port but the console's, in steps, reverting
/// connected peers.
#[test]
fn reset_closes_everything_but_the_console_in_steps() {
    let mut e = FakeEnv::new();
    e.others.insert(B, EventChannels::default());
    let console = e.events.bind_console().unwrap();
    let bp = e.others.get_mut(&B).unwrap().alloc_unbound(A).unwrap();
    let ap = bind_interdomain(&mut e, B.raw(), bp).unwrap();
    for _ in 0..300 {
        e.events.bind_ipi().unwrap();
    }
    let at = BASE + 0x3500;
    put_struct(&mut e, at, &Reset { dom: SELF16 });
    e.preempt_every = 1;
    let (res, n) = run_to_end(&mut e, hypercall::EVENT_CHANNEL_OP, [event::RESET, at, 0, 0, 0]);
    assert_eq!(res, OK);
    assert!(n >= 4, "300 ports take several steps ({n} continuations)");
    assert_eq!(e.events.ports().collect::<Vec<_>>(), [(console, Port::Console)]);
    assert_eq!(e.events.get(ap), Ok(Port::Free));
    assert_eq!(e.others[&B].get(bp), Ok(Port::Unbound { remote: A }));
}

// ---- grant tables (the hypercall layer; the rules are crate::grant's) ----

#[test]
fn grant_setup_writes_the_frame_list_and_a_status() {
    use pvguest_abi::grant::{gntst, SetupTable, SETUP_TABLE};
    let mut e = FakeEnv::new();
    let (at, list) = (BASE + 0x3000, BASE + 0x3100);
    put_struct(&mut e, at, &SetupTable { dom: SELF16, nr_frames: 3, frame_list: list, ..SetupTable::default() });
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [SETUP_TABLE, at, 1, 0, 0]), OK);
    assert_eq!(get_struct::<SetupTable>(&e, at).status, gntst::OKAY);
    let frames: Vec<u64> = (0..3).map(|i| u64::from_le_bytes(e.get(list + 8 * i, 8).try_into().unwrap())).collect();
    assert_eq!(frames, [0x100, 0x101, 0x102]);
    // Over the quota: a status, not a hypercall error.
    put_struct(&mut e, at, &SetupTable { dom: SELF16, nr_frames: 9, frame_list: list, ..SetupTable::default() });
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [SETUP_TABLE, at, 1, 0, 0]), OK);
    assert_eq!(get_struct::<SetupTable>(&e, at).status, gntst::NO_SPACE);
    // Another domain's table is the privileged domain's business.
    put_struct(&mut e, at, &SetupTable { dom: 2, nr_frames: 1, frame_list: list, ..SetupTable::default() });
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [SETUP_TABLE, at, 1, 0, 0]), OK);
    assert_eq!(get_struct::<SetupTable>(&e, at).status, gntst::PERMISSION_DENIED);
    // A frame list the guest cannot write, a count other than 1.
    put_struct(
        &mut e,
        at,
        &SetupTable { dom: SELF16, nr_frames: 1, frame_list: BASE + RO_FROM, ..SetupTable::default() },
    );
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [SETUP_TABLE, at, 1, 0, 0]), r(Errno::EFAULT));
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [SETUP_TABLE, at, 2, 0, 0]), r(Errno::EINVAL));
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [SETUP_TABLE, 0, 1, 0, 0]), r(Errno::EFAULT));
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [3, at, 1, 0, 0]), r(Errno::ENOSYS), "dump_table is not offered");
}

#[test]
fn grant_query_answers_in_the_struct() {
    use pvguest_abi::grant::{gntst, QuerySize, QUERY_SIZE};
    let mut e = FakeEnv::new();
    let at = BASE + 0x3000;
    put_struct(&mut e, at, &QuerySize { dom: SELF16, ..QuerySize::default() });
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [QUERY_SIZE, at, 1, 0, 0]), OK);
    let q = get_struct::<QuerySize>(&e, at);
    assert_eq!((q.nr_frames, q.max_nr_frames, q.status), (1, 4, gntst::OKAY));
}

/// Copies: each element decoded (bad ones get their status, the rest go
/// on), the batch bounded and preemptible between elements.
#[test]
fn grant_copies_report_per_element_and_continue_in_steps() {
    use pvguest_abi::grant::{gntcopy, gntst, CopyPtr, GnttabCopy, COPY};
    let mut e = FakeEnv::new();
    let at = BASE + 0x3000;
    let good = GnttabCopy {
        source: CopyPtr { u: 5, domid: 2, ..CopyPtr::default() },
        dest: CopyPtr { u: 0x40, domid: SELF16, ..CopyPtr::default() },
        len: 100,
        flags: gntcopy::SOURCE_GREF,
        ..GnttabCopy::default()
    };
    let across = GnttabCopy { len: 200, source: CopyPtr { offset: 4000, ..good.source }, ..good };
    let foreign_frame = GnttabCopy { dest: CopyPtr { domid: 3, ..good.dest }, ..good };
    for (i, op) in [good, across, foreign_frame, good].iter().enumerate() {
        put_struct(&mut e, at + 40 * i as u64, op);
    }
    e.preempt_every = 1;
    let (res, n) = run_to_end(&mut e, hypercall::GRANT_TABLE_OP, [COPY, at, 4, 0, 0]);
    assert_eq!(res, OK);
    assert_eq!(n, 3, "one element per step");
    let st = |e: &FakeEnv, i: u64| get_struct::<GnttabCopy>(e, at + 40 * i).status;
    assert_eq!(
        [st(&e, 0), st(&e, 1), st(&e, 2), st(&e, 3)],
        [gntst::OKAY, gntst::BAD_COPY_ARG, gntst::PERMISSION_DENIED, gntst::OKAY]
    );
    assert_eq!(e.copies.len(), 2, "only the valid elements were copied");
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [COPY, at, 513, 0, 0]), r(Errno::E2BIG));
}

/// Map and unmap batches write each element's out fields and status.
#[test]
fn grant_map_and_unmap_batches_report_per_element() {
    use pvguest_abi::grant::{gntmap, gntst, MapGrantRef, UnmapGrantRef, MAP_GRANT_REF, UNMAP_GRANT_REF};
    let mut e = FakeEnv::new();
    let at = BASE + 0x3000;
    let ok = MapGrantRef { host_addr: 0x1000, flags: gntmap::HOST_MAP, gref: 8, dom: 2, ..MapGrantRef::default() };
    let bad_ref = MapGrantRef { gref: 13, ..ok };
    let bad_flags = MapGrantRef { flags: 1 << 20, ..ok };
    for (i, m) in [ok, bad_ref, bad_flags].iter().enumerate() {
        put_struct(&mut e, at + 32 * i as u64, m);
    }
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [MAP_GRANT_REF, at, 3, 0, 0]), OK);
    let got = |e: &FakeEnv, i: u64| get_struct::<MapGrantRef>(e, at + 32 * i);
    assert_eq!((got(&e, 0).status, got(&e, 0).handle, got(&e, 0).dev_bus_addr), (gntst::OKAY, 108, 0x5000));
    assert_eq!(got(&e, 1).status, gntst::BAD_GNTREF);
    assert_eq!(got(&e, 2).status, gntst::GENERAL_ERROR, "unknown flags");
    let u = BASE + 0x3400;
    put_struct(&mut e, u, &UnmapGrantRef { handle: 108, host_addr: 0x1000, ..UnmapGrantRef::default() });
    put_struct(&mut e, u + 24, &UnmapGrantRef { handle: 7, ..UnmapGrantRef::default() });
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [UNMAP_GRANT_REF, u, 2, 0, 0]), OK);
    assert_eq!(get_struct::<UnmapGrantRef>(&e, u).status, gntst::OKAY);
    assert_eq!(get_struct::<UnmapGrantRef>(&e, u + 24).status, gntst::BAD_HANDLE);
    assert_eq!(e.call(hypercall::GRANT_TABLE_OP, [MAP_GRANT_REF, 0, 1, 0, 0]), r(Errno::EFAULT));
}

// ---- physdev_op ----

fn pci_arg(bus: u8, dev: u8, func: u8, reg: u16, size: u8, value: u32) -> PciConfig {
    PciConfig { seg: 0, bus, dev, func, size, reg, value }
}

fn physdev(e: &mut FakeEnv, cmd: u64, arg: u64) -> Action {
    e.call(hypercall::PHYSDEV_OP, [cmd, arg, 0, 0, 0])
}

#[test]
fn physdev_op_is_eperm_for_an_unprivileged_domain_whatever_it_asks() {
    let mut e = FakeEnv::new();
    put_struct(&mut e, BASE, &pci_arg(0, 0x1f, 2, 0, 4, 0));
    for cmd in [physdev::PCI_CONFIG_READ, physdev::PCI_CONFIG_WRITE, physdev::EOI, physdev::MAP_PIRQ, 0, 77, u64::MAX] {
        // A good argument, a bad pointer, a bad address: all EPERM.
        for arg in [BASE, 0, BASE + SIZE as u64] {
            assert_eq!(physdev(&mut e, cmd, arg), r(Errno::EPERM), "cmd {cmd:#x} arg {arg:#x}");
        }
    }
    assert!(e.pci.is_empty(), "an unprivileged call reached the machine");
    assert_eq!(e.get(BASE + 8, 4), [0; 4], "nothing was written back");
}

#[test]
fn physdev_unknown_commands_are_enosys_for_dom0() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    put_struct(&mut e, BASE, &pvguest_abi::physdev::MapPirq::default());
    for cmd in [0, 5, 14, 33, physdev::RF_BASE + 2, u64::MAX] {
        assert_eq!(physdev(&mut e, cmd, BASE), r(Errno::ENOSYS), "cmd {cmd:#x}");
    }
    assert!(e.pci.is_empty());
}

#[test]
fn physdev_pci_read_decodes_once_and_writes_only_the_value() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    put_struct(&mut e, BASE, &pci_arg(0, 0, 0, 0, 4, 0xdead_beef));
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_READ, BASE), Action::Return(0));
    let back = PciConfig::read_from_bytes(e.get(BASE, size_of::<PciConfig>())).unwrap();
    assert_eq!(back, pci_arg(0, 0, 0, 0, 4, 0x29c0_8086));
    assert_eq!(e.pci, [(ConfigAddr::decode(&back).unwrap(), None)]);
    // A byte read: the value is zero-extended.
    put_struct(&mut e, BASE, &pci_arg(0, 0, 0, 1, 1, 0xffff_ffff));
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_READ, BASE), Action::Return(0));
    assert_eq!(e.get(BASE + 8, 4), 0x86u32.to_le_bytes());
    // Unreadable, or readable but not writable for the answer.
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_READ, BASE + SIZE as u64 - 4), r(Errno::EFAULT));
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_READ, 0), r(Errno::EFAULT));
    put_struct(&mut e, BASE + RO_FROM, &pci_arg(0, 0, 0, 0, 4, 0));
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_READ, BASE + RO_FROM), r(Errno::EFAULT));
}

#[test]
fn physdev_pci_bad_addresses_are_einval_before_the_machine() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    for bad in [
        PciConfig { seg: 1, ..pci_arg(0, 1, 0, 0, 4, 0) },
        pci_arg(0, 32, 0, 0, 4, 0),
        pci_arg(0, 1, 8, 0, 4, 0),
        pci_arg(0, 1, 0, 0x100, 1, 0),
        pci_arg(0, 1, 0, 2, 4, 0),
        pci_arg(0, 1, 0, 3, 2, 0),
        pci_arg(0, 1, 0, 0, 3, 0),
        pci_arg(0, 1, 0, 0, 0, 0),
    ] {
        put_struct(&mut e, BASE, &bad);
        for cmd in [physdev::PCI_CONFIG_READ, physdev::PCI_CONFIG_WRITE] {
            assert_eq!(physdev(&mut e, cmd, BASE), r(Errno::EINVAL), "{bad:?}");
        }
    }
    // A written value wider than its size.
    put_struct(&mut e, BASE, &pci_arg(0, 1, 0, 4, 2, 0x1_0000));
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_WRITE, BASE), r(Errno::EINVAL));
    assert!(e.pci.is_empty());
}

#[test]
fn physdev_pci_write_passes_the_filters_answer() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    put_struct(&mut e, BASE, &pci_arg(0, 0x1f, 2, 4, 2, 0x0007));
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_WRITE, BASE), Action::Return(0));
    put_struct(&mut e, BASE, &pci_arg(0, 0, 0, 4, 2, 0x0007));
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_WRITE, BASE), r(Errno::EPERM));
    let dev = |d| ConfigAddr::decode(&pci_arg(0, d, if d == 0 { 0 } else { 2 }, 4, 2, 0)).unwrap();
    assert_eq!(e.pci, [(dev(0x1f), Some(7)), (dev(0), Some(7))]);
    // A write never writes guest memory (the argument may be read-only).
    put_struct(&mut e, BASE + RO_FROM, &pci_arg(0, 0x1f, 2, 0x3c, 1, 9));
    assert_eq!(physdev(&mut e, physdev::PCI_CONFIG_WRITE, BASE + RO_FROM), Action::Return(0));
}

// ---- device interrupts: map_pirq, bind_pirq, eoi ----

use pvguest_abi::physdev::{map_pirq_type, Eoi, MapPirq};

fn map_arg(gsi: i32) -> MapPirq {
    MapPirq { domid: DOMID_SELF as u16, type_: map_pirq_type::GSI, index: gsi, pirq: -1, ..MapPirq::default() }
}

fn map(e: &mut FakeEnv, m: &MapPirq) -> Result<i32, Errno> {
    put_struct(e, BASE, m);
    match physdev(e, physdev::MAP_PIRQ, BASE) {
        Action::Return(0) => Ok(get_struct::<MapPirq>(e, BASE).pirq),
        Action::Return(v) => Err(Errno::from_code(-v).expect("an errno")),
        a => panic!("map_pirq: {a:?}"),
    }
}

fn bind(e: &mut FakeEnv, pirq: u32, flags: u32) -> Result<u32, Errno> {
    put_struct(e, BASE + 64, &BindPirq { pirq, flags, port: 0 });
    match e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_PIRQ, BASE + 64, 0, 0, 0]) {
        Action::Return(0) => Ok(get_struct::<BindPirq>(e, BASE + 64).port),
        Action::Return(v) => Err(Errno::from_code(-v).expect("an errno")),
        a => panic!("bind_pirq: {a:?}"),
    }
}

fn eoi(e: &mut FakeEnv, irq: u32) -> Action {
    put_struct(e, BASE + 128, &Eoi { irq });
    physdev(e, physdev::EOI, BASE + 128)
}

#[test]
fn pirq_calls_are_eperm_for_a_domu_before_any_argument_is_read() {
    let mut e = FakeEnv::new();
    put_struct(&mut e, BASE, &map_arg(22));
    for arg in [BASE, 0] {
        assert_eq!(physdev(&mut e, physdev::MAP_PIRQ, arg), r(Errno::EPERM));
        assert_eq!(physdev(&mut e, physdev::EOI, arg), r(Errno::EPERM));
        assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_PIRQ, arg, 0, 0, 0]), r(Errno::EPERM));
    }
    assert_eq!(e.irqs.line(22).unwrap().owner, None, "nothing mapped");
    assert!(e.ioapic.masked(22));
}

#[test]
fn map_pirq_maps_gsis_of_dom0s_devices_and_refuses_the_rest() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    assert_eq!(map(&mut e, &map_arg(22)), Ok(22), "the pirq comes back in the struct");
    assert_eq!(map(&mut e, &map_arg(22)), Err(Errno::EEXIST), "a double map");
    assert_eq!(map(&mut e, &map_arg(21)), Err(Errno::EPERM), "no device of dom0 is on GSI 21");
    assert_eq!(map(&mut e, &map_arg(24)), Err(Errno::EINVAL), "past the IOAPIC");
    assert_eq!(map(&mut e, &map_arg(-5)), Err(Errno::EINVAL));
    assert_eq!(map(&mut e, &MapPirq { pirq: 3, ..map_arg(23) }), Err(Errno::EINVAL), "pirq must be -1 or the GSI");
    for t in [map_pirq_type::MSI, map_pirq_type::MSI_SEG] {
        assert_eq!(map(&mut e, &MapPirq { type_: t, ..map_arg(23) }), Err(Errno::EOPNOTSUPP), "MSI");
    }
    assert_eq!(map(&mut e, &MapPirq { type_: 2, ..map_arg(23) }), Err(Errno::EINVAL));
    assert_eq!(map(&mut e, &MapPirq { type_: -1, ..map_arg(23) }), Err(Errno::EINVAL));
    assert_eq!(map(&mut e, &MapPirq { domid: 7, ..map_arg(23) }), Err(Errno::EPERM), "for another domain");
    let me = e.me.raw();
    assert_eq!(map(&mut e, &MapPirq { domid: me, ..map_arg(23) }), Ok(23), "its own id is itself");
    // An out field it cannot write: EFAULT, and nothing mapped.
    let mut e = FakeEnv::new();
    e.privileged = true;
    put_struct(&mut e, BASE + RO_FROM - 8, &map_arg(22));
    assert_eq!(physdev(&mut e, physdev::MAP_PIRQ, BASE + RO_FROM - 8), r(Errno::EFAULT));
    assert_eq!(e.irqs.line(22).unwrap().owner, None, "a pirq the guest never learnt is not mapped");
}

#[test]
fn bind_pirq_binds_a_mapped_pirq_once_and_unmasks_it() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    assert_eq!(bind(&mut e, 22, 0), Err(Errno::EPERM), "a pirq it was not given (not mapped)");
    assert_eq!(bind(&mut e, 21, 0), Err(Errno::EPERM), "a GSI not dom0's");
    assert_eq!(bind(&mut e, 99, 0), Err(Errno::EINVAL));
    map(&mut e, &map_arg(22)).unwrap();
    assert_eq!(bind(&mut e, 22, 2), Err(Errno::EINVAL), "unknown flags");
    assert!(e.ioapic.masked(22), "refusals unmask nothing");
    let port = bind(&mut e, 22, event::BIND_PIRQ_WILL_SHARE).unwrap();
    assert_eq!(e.events.get(port), Ok(Port::Pirq(22)));
    assert!(!e.ioapic.masked(22));
    assert_eq!(bind(&mut e, 22, 0), Err(Errno::EEXIST), "a double bind");
    // Status names the pirq; send on it is refused.
    put_struct(&mut e, BASE + 256, &Status { dom: DOMID_SELF as u16, port, ..Status::default() });
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::STATUS, BASE + 256, 0, 0, 0]), Action::Return(0));
    let st = get_struct::<Status>(&e, BASE + 256);
    assert_eq!((st.status, st.u0), (status::PIRQ, 22));
    put_struct(&mut e, BASE + 256, &Send { port });
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::SEND, BASE + 256, 0, 0, 0]), r(Errno::EINVAL));
    // A port it cannot learn: EFAULT, the port freed, the line still masked.
    map(&mut e, &map_arg(23)).unwrap();
    put_struct(&mut e, BASE + RO_FROM - 8, &BindPirq { pirq: 23, flags: 0, port: 0 });
    let ro = BASE + RO_FROM - 8;
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_PIRQ, ro, 0, 0, 0]), r(Errno::EFAULT));
    assert!(e.ioapic.masked(23));
    assert_eq!(e.events.ports().filter(|(_, p)| matches!(p, Port::Pirq(_))).count(), 1);
}

#[test]
fn eoi_unmasks_only_the_callers_bound_line_and_close_masks_it() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    assert_eq!(eoi(&mut e, 22), r(Errno::EPERM), "a line it does not own");
    assert_eq!(eoi(&mut e, 1000), r(Errno::EINVAL));
    map(&mut e, &map_arg(22)).unwrap();
    let port = bind(&mut e, 22, 0).unwrap();
    e.ioapic.set_line(22, true);
    let v = e.ioapic.deliver().unwrap();
    assert!(e.irqs.interrupt(&mut e.ioapic, u64::from(v)).is_some());
    e.ioapic.eoi_broadcast(v);
    assert_eq!(e.ioapic.deliver(), None, "masked until EOI");
    assert_eq!(eoi(&mut e, 22), Action::Return(0));
    assert_eq!(e.ioapic.deliver(), Some(v), "re-asserts: the device still holds the line");
    // Closing the port masks the line and unbinds it.
    assert!(e.irqs.interrupt(&mut e.ioapic, u64::from(v)).is_some());
    e.ioapic.eoi_broadcast(v);
    put_struct(&mut e, BASE + 256, &Close { port });
    assert_eq!(e.call(hypercall::EVENT_CHANNEL_OP, [event::CLOSE, BASE + 256, 0, 0, 0]), Action::Return(0));
    assert!(e.ioapic.masked(22));
    assert_eq!(e.irqs.line(22).unwrap().port, None);
    assert_eq!(eoi(&mut e, 22), r(Errno::EPERM), "no EOI of an unbound line");
    assert_eq!(e.ioapic.deliver(), None);
    assert_eq!(bind(&mut e, 22, 0).map(|_| ()), Ok(()), "still mapped: it binds again");
}

#[test]
fn dom0s_bad_argument_pointers_are_efault_for_every_device_op_and_reach_nothing() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    // Unmapped, straddling the end of guest memory, non-canonical, and the
    // hypervisor's entry area: the accessor refuses each (EFAULT), never a
    // fault of the hypervisor's.
    let bad = [0, BASE + SIZE as u64 - 2, 0x0000_8000_0000_1000, pvguest_abi::layout::ENTRY_AREA_BASE, u64::MAX - 1];
    for arg in bad {
        for cmd in [physdev::PCI_CONFIG_READ, physdev::PCI_CONFIG_WRITE, physdev::MAP_PIRQ, physdev::EOI] {
            assert_eq!(physdev(&mut e, cmd, arg), r(Errno::EFAULT), "physdev {cmd:#x} at {arg:#x}");
        }
        let bind = e.call(hypercall::EVENT_CHANNEL_OP, [event::BIND_PIRQ, arg, 0, 0, 0]);
        assert_eq!(bind, r(Errno::EFAULT), "bind_pirq at {arg:#x}");
    }
    assert!(e.pci.is_empty(), "a refused request reached configuration space");
    for gsi in [22, 23] {
        assert_eq!(e.irqs.line(gsi).unwrap().owner, None, "GSI {gsi} mapped by a refused request");
        assert!(e.ioapic.masked(gsi as usize));
    }
    assert_eq!(e.events.ports().filter(|(_, p)| matches!(p, Port::Pirq(_))).count(), 0, "a port was left behind");
}

#[test]
fn dom0s_garbage_pirq_numbers_are_einval_and_legacy_gsis_eperm() {
    let mut e = FakeEnv::new();
    e.privileged = true;
    for pirq in [24, 4096, i32::MAX as u32, u32::MAX] {
        assert_eq!(bind(&mut e, pirq, 0), Err(Errno::EINVAL), "bind_pirq {pirq:#x}");
        assert_eq!(eoi(&mut e, pirq), r(Errno::EINVAL), "eoi {pirq:#x}");
    }
    for gsi in [i32::MAX, i32::MIN, -1, 24, 255] {
        assert_eq!(map(&mut e, &map_arg(gsi)), Err(Errno::EINVAL), "map_pirq of GSI {gsi}");
    }
    // The hypervisor's own lines (PIT, COM1) and every GSI without a
    // function of dom0's on it are not dom0's to map.
    for gsi in [0, 2, 4, 8, 16, 21] {
        assert_eq!(map(&mut e, &map_arg(gsi)), Err(Errno::EPERM), "map_pirq of GSI {gsi}");
        assert_eq!(bind(&mut e, gsi as u32, 0), Err(Errno::EPERM), "bind_pirq {gsi}");
        assert_eq!(eoi(&mut e, gsi as u32), r(Errno::EPERM), "eoi {gsi}");
    }
    assert!((0..24).all(|g| e.ioapic.masked(g)), "nothing was unmasked");
}

/// A `CreateDomain` naming an image and command line in the fake's memory.
fn create_request(name: &str) -> domctl::CreateDomain {
    let mut c = domctl::CreateDomain {
        image: BASE + 0x2000,
        image_len: 4096,
        cmdline: BASE + 0x100,
        cmdline_len: 5,
        mem_kib: 512,
        ..Default::default()
    };
    pvguest_abi::start_info::fill_c_str(&mut c.name, name);
    c
}

#[test]
fn domctl_is_privileged_and_hands_commands_over() {
    use zerocopy::IntoBytes;
    let mut env = FakeEnv::new();
    let at = BASE + 0x400;
    env.put(at, create_request("web").as_bytes());
    // An ordinary domain: EPERM for every command, nothing handed over.
    for cmd in
        [domctl::CREATEDOMAIN, domctl::DESTROYDOMAIN, domctl::PAUSEDOMAIN, domctl::PHYSINFO, domctl::BOOTIMAGE_INFO]
    {
        assert_eq!(env.call(hypercall::DOMCTL, [cmd, at, 0, 0, 0]), Action::Return(Errno::EPERM.to_ret()));
    }
    assert_eq!(env.ctl, None);
    env.privileged = true;
    assert_eq!(env.call(hypercall::DOMCTL, [domctl::CREATEDOMAIN, at, 0, 0, 0]), Action::Ctl);
    let Some(Ctl::Create { arg, req, done }) = env.ctl.take() else { panic!("no create handed over") };
    assert_eq!((arg, done, req.name.as_str(), req.mem_kib, req.weight), (at, 0, "web", 512, 100));
    assert!(!req.paused);
    // The continuation state is passed through.
    assert_eq!(env.call(hypercall::DOMCTL, [domctl::CREATEDOMAIN, at, 16384, 0, 0]), Action::Ctl);
    assert!(matches!(env.ctl.take(), Some(Ctl::Create { done: 16384, .. })));
    // Destroy, pause and unpause name another domain.
    for (cmd, want) in [
        (domctl::DESTROYDOMAIN, Ctl::Destroy(DomId::of(7))),
        (domctl::PAUSEDOMAIN, Ctl::Pause(DomId::of(7))),
        (domctl::UNPAUSEDOMAIN, Ctl::Unpause(DomId::of(7))),
    ] {
        assert_eq!(env.call(hypercall::DOMCTL, [cmd, 7, 0, 0, 0]), Action::Ctl);
        assert_eq!(env.ctl.take(), Some(want));
        // Itself: EINVAL (it shuts itself down instead); no id: ESRCH.
        assert_eq!(env.call(hypercall::DOMCTL, [cmd, 1, 0, 0, 0]), Action::Return(Errno::EINVAL.to_ret()));
        for bad in [0x7ff0, 1 << 16, u64::MAX] {
            assert_eq!(env.call(hypercall::DOMCTL, [cmd, bad, 0, 0, 0]), Action::Return(Errno::ESRCH.to_ret()));
        }
        assert_eq!(env.ctl, None);
    }
    // Scheduling parameters are bounded.
    let sp = BASE + 0x800;
    for (p, ok) in [
        (domctl::SchedParams { domid: 7, weight: 300, warp_us: 500, reserved: 0 }, true),
        (domctl::SchedParams { domid: 7, weight: 0, warp_us: 0, reserved: 0 }, false),
        (domctl::SchedParams { domid: 7, weight: 10_001, warp_us: 0, reserved: 0 }, false),
        (domctl::SchedParams { domid: 7, weight: 1, warp_us: 1_000_001, reserved: 0 }, false),
        (domctl::SchedParams { domid: 7, weight: 1, warp_us: 0, reserved: 1 }, false),
    ] {
        env.put(sp, p.as_bytes());
        let r = env.call(hypercall::DOMCTL, [domctl::SCHEDOP, sp, 0, 0, 0]);
        if ok {
            assert_eq!(r, Action::Ctl);
            assert_eq!(env.ctl.take(), Some(Ctl::SetSched { dom: DomId::of(7), weight: 300, warp_us: 500 }));
        } else {
            assert_eq!(r, Action::Return(Errno::EINVAL.to_ret()), "{p:?}");
            assert_eq!(env.ctl, None);
        }
    }
    // Not in a multicall: it would be carried out after the batch.
    let calls = BASE + 0xc00;
    let entry = MulticallEntry { op: hypercall::DOMCTL, result: 0, args: [domctl::DESTROYDOMAIN, 7, 0, 0, 0, 0] };
    env.put(calls, entry.as_bytes());
    assert_eq!(env.call(hypercall::MULTICALL, [calls, 1, 0, 0, 0]), Action::Return(0));
    let result = u64::from_le_bytes(env.get(calls + 8, 8).try_into().unwrap());
    assert_eq!(result as i64, Errno::EINVAL.to_ret());
    assert_eq!(env.ctl, None);
    // An unknown command.
    assert_eq!(env.call(hypercall::DOMCTL, [999, at, 0, 0, 0]), Action::Return(Errno::ENOSYS.to_ret()));
}

#[test]
fn a_bad_create_request_says_why() {
    use zerocopy::{FromBytes, IntoBytes};
    let mut env = FakeEnv::new();
    env.privileged = true;
    let at = BASE + 0x400;
    let cases: [(fn(&mut domctl::CreateDomain), &str); 9] = [
        (|c| c.name = [0; 32], "name must be 1 to 31 bytes"),
        (|c| c.name = [b'a'; 32], "name must be 1 to 31 bytes"),
        (|c| c.name[1] = b'/', "only letters, digits"),
        (|c| c.image_len = 0, "image must be 1 byte to 8 MiB"),
        (|c| c.image_len = domctl::MAX_CREATE_IMAGE + 1, "image must be 1 byte to 8 MiB"),
        (|c| c.cmdline_len = 1024, "command line is longer"),
        (|c| c.mem_kib = 6, "multiple of 4 KiB"),
        (|c| c.weight = 10_001, "weight must be 1 to 10000"),
        (|c| c.flags = 1 << 9, "unknown flags"),
    ];
    for (spoil, why) in cases {
        let mut c = create_request("web");
        spoil(&mut c);
        env.put(at, c.as_bytes());
        assert_eq!(
            env.call(hypercall::DOMCTL, [domctl::CREATEDOMAIN, at, 0, 0, 0]),
            Action::Return(Errno::EINVAL.to_ret())
        );
        assert_eq!(env.ctl, None);
        let back = domctl::CreateDomain::read_from_bytes(env.get(at, size_of::<domctl::CreateDomain>())).unwrap();
        assert!(back.reason().contains(why), "{:?} lacks {why:?}", back.reason());
    }
    // A request the guest cannot read: EFAULT.
    assert_eq!(env.call(hypercall::DOMCTL, [domctl::CREATEDOMAIN, 8, 0, 0, 0]), Action::Return(Errno::EFAULT.to_ret()));
    // Paused is a flag.
    let mut c = create_request("db");
    c.flags = domctl::create::PAUSED;
    env.put(at, c.as_bytes());
    assert_eq!(env.call(hypercall::DOMCTL, [domctl::CREATEDOMAIN, at, 0, 0, 0]), Action::Ctl);
    assert!(matches!(env.ctl.take(), Some(Ctl::Create { req: CreateReq { paused: true, .. }, .. })));
}

#[test]
fn boot_images_are_read_in_bounded_pieces() {
    use zerocopy::{FromBytes, IntoBytes};
    let mut env = FakeEnv::new();
    env.privileged = true;
    let at = BASE + 0x400;
    env.put(at, BootImage { index: 0, ..Default::default() }.as_bytes());
    assert_eq!(env.call(hypercall::DOMCTL, [domctl::BOOTIMAGE_INFO, at, 0, 0, 0]), Action::Return(0));
    let info = BootImage::read_from_bytes(env.get(at, size_of::<BootImage>())).unwrap();
    assert_eq!((info.name(), info.image_len), ("tmpl", FAKE_IMAGE.len() as u64));
    env.put(at, BootImage { index: 1, ..Default::default() }.as_bytes());
    assert_eq!(
        env.call(hypercall::DOMCTL, [domctl::BOOTIMAGE_INFO, at, 0, 0, 0]),
        Action::Return(Errno::ESRCH.to_ret())
    );
    let rd = BASE + 0x900;
    let buf = BASE + 0x1000;
    for (offset, len, want) in [
        (0, 29, Ok(&FAKE_IMAGE[..])),
        (3, 4, Ok(&FAKE_IMAGE[3..7])),
        (20, 10, Err(Errno::EINVAL)),
        (u64::MAX, 2, Err(Errno::EINVAL)),
        (0, domctl::BOOTIMAGE_CHUNK + 1, Err(Errno::E2BIG)),
    ] {
        env.put(rd, ReadBootImage { index: 0, len, offset, buf }.as_bytes());
        let r = env.call(hypercall::DOMCTL, [domctl::BOOTIMAGE_READ, rd, 0, 0, 0]);
        match want {
            Ok(bytes) => {
                assert_eq!(r, Action::Return(0));
                assert_eq!(env.get(buf, bytes.len()), bytes);
            }
            Err(e) => assert_eq!(r, Action::Return(e.to_ret()), "offset {offset} len {len}"),
        }
    }
    env.put(at, PhysInfo::default().as_bytes());
    assert_eq!(env.call(hypercall::DOMCTL, [domctl::PHYSINFO, at, 0, 0, 0]), Action::Return(0));
    let p = PhysInfo::read_from_bytes(env.get(at, size_of::<PhysInfo>())).unwrap();
    assert_eq!((p.total_frames, p.free_frames), (100, 40));
}
