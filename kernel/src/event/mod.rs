//! Event channels: per-domain ports, and the event bits in the shared-info
//! page.
//!
//! # Who writes what (see `pvguest_abi::shared_info`)
//! The hypervisor sets `evtchn_pending`, `evtchn_pending_sel` and
//! `evtchn_upcall_pending`; the guest clears them and owns `evtchn_mask` and
//! `evtchn_upcall_mask`. The hypervisor reads guest-owned fields exactly once
//! per decision and treats them as hints: a guest that scribbles on them can
//! only confuse its own event delivery.
//!
//! # Rules
//! 1. Raising a port sets its pending bit. If it was already pending, nothing
//!    else happens (events coalesce).
//! 2. If the port is not masked, its selector bit and `upcall_pending` are
//!    set, and the domain is woken if blocked.
//! 3. Unmasking a pending port performs step 2 (nothing is lost while
//!    masked).
//! 4. An upcall is delivered when `upcall_pending` is set and `upcall_mask`
//!    is clear; delivering it sets `upcall_mask`.

use crate::domain::DomId;
use crate::mm::frames::Mfn;
use crate::mm::guest_mem::PhysMem;
use crate::mm::paging::PAGE_SIZE;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::offset_of;
use pvguest_abi::event::NR_VIRQS;
use pvguest_abi::shared_info::{SharedInfo, VcpuInfo, VcpuTimeInfo};
use pvguest_abi::Errno;
use zerocopy::IntoBytes;

/// Ports per domain: the whole 2-level shared-info bitmap (Xen's 2-level
/// ABI: 64 words of 64 bits, one selector bit per word).
pub const NR_PORTS: u32 = pvguest_abi::shared_info::NR_EVENT_CHANNELS as u32;

/// Ports per bucket of the port table: buckets are allocated as ports are
/// first used, so a domain with a few ports holds one.
const BUCKET: u32 = 512;

/// What a port is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// Unused.
    Free,
    /// Allocated for `remote` to bind (`EVTCHNOP_alloc_unbound`).
    Unbound {
        /// The only domain that may bind it.
        remote: DomId,
    },
    /// Connected to `port` of `remote` (`EVTCHNOP_bind_interdomain`).
    Interdomain {
        /// The other end's domain (possibly this one: loopback).
        remote: DomId,
        /// The other end's port.
        port: u32,
    },
    /// A virtual IRQ.
    Virq(u32),
    /// An inter-processor event to this domain's own vCPU.
    Ipi,
    /// The domain's console port: its other end is the console backend
    /// (the hypervisor's drain), bound by the domain builder.
    Console,
    /// A physical IRQ (dom0's, `EVTCHNOP_bind_pirq`; see [`crate::irq`]).
    Pirq(u32),
}

/// What closing a port leaves for the caller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// Nothing more.
    Done,
    /// The port was bound to this pirq: its line must be masked and
    /// unbound ([`crate::irq::Irqs::unbind`]).
    Pirq(u32),
    /// The port was connected: the other end, `port` of `remote`, must go
    /// back to unbound (Xen: it stays allocated, for the closer to bind
    /// again).
    Remote {
        /// The other end's domain.
        remote: DomId,
        /// The other end's port.
        port: u32,
    },
}

/// A domain's port table: [`NR_PORTS`] ports in buckets of 512 allocated
/// on first use (from the hypervisor heap, fallibly: `ENOMEM` when it is
/// exhausted), plus the VIRQ bindings.
#[derive(Debug)]
pub struct EventChannels {
    buckets: [Option<Box<[Port]>>; (NR_PORTS / BUCKET) as usize],
    virq: [u32; NR_VIRQS as usize],
    /// One bit per port, set while it is in use (port 0 always): finding a
    /// free port is a scan of 64 words, whatever a guest has allocated and
    /// freed before.
    used: [u64; (NR_PORTS / 64) as usize],
    /// The console port (0: none), kept so that finding it is O(1): the
    /// console drain asks on every step.
    console: u32,
    /// Where [`EventChannels::close_first`] goes on.
    teardown_next: u32,
}

/// The in-use bitmap of an empty table: only port 0, which is never used.
const USED_EMPTY: [u64; (NR_PORTS / 64) as usize] = {
    let mut u = [0; (NR_PORTS / 64) as usize];
    u[0] = 1;
    u
};

impl Default for EventChannels {
    fn default() -> Self {
        EventChannels {
            buckets: Default::default(),
            virq: [0; NR_VIRQS as usize],
            used: USED_EMPTY,
            console: 0,
            teardown_next: 1,
        }
    }
}

impl EventChannels {
    /// Binds `virq` to a fresh port (port 0 is never used). Binding a VIRQ
    /// twice is `EEXIST`; an unknown VIRQ is `EINVAL`; no free port `ENOSPC`.
    pub fn bind_virq(&mut self, virq: u32) -> Result<u32, Errno> {
        let slot = *self.virq.get(virq as usize).ok_or(Errno::EINVAL)?;
        if slot != 0 {
            return Err(Errno::EEXIST);
        }
        let port = self.alloc(Port::Virq(virq))?;
        self.virq[virq as usize] = port;
        Ok(port)
    }

    /// Binds the console port to a fresh port (no free port: `ENOSPC`).
    pub fn bind_console(&mut self) -> Result<u32, Errno> {
        let port = self.alloc(Port::Console)?;
        self.console = port;
        Ok(port)
    }

    /// A fresh port that only `remote` may bind (`EVTCHNOP_alloc_unbound`).
    pub fn alloc_unbound(&mut self, remote: DomId) -> Result<u32, Errno> {
        self.alloc(Port::Unbound { remote })
    }

    /// A fresh port bound to `pirq` (`EVTCHNOP_bind_pirq`, once
    /// [`crate::irq::Irqs::check_bind`] allowed it).
    pub fn bind_pirq(&mut self, pirq: u32) -> Result<u32, Errno> {
        self.alloc(Port::Pirq(pirq))
    }

    /// A fresh IPI port (`EVTCHNOP_bind_ipi`).
    pub fn bind_ipi(&mut self) -> Result<u32, Errno> {
        self.alloc(Port::Ipi)
    }

    /// Takes the lowest free port for `p`: `ENOSPC` when all
    /// [`NR_PORTS`] - 1 are in use, `ENOMEM` when a new bucket cannot be
    /// allocated.
    fn alloc(&mut self, p: Port) -> Result<u32, Errno> {
        let (w, word) = self.used.iter().enumerate().find(|(_, &u)| u != u64::MAX).ok_or(Errno::ENOSPC)?;
        let port = w as u32 * 64 + word.trailing_ones();
        self.set(port, p)?;
        Ok(port)
    }

    fn get_raw(&self, port: u32) -> Port {
        match &self.buckets[(port / BUCKET) as usize] {
            Some(b) => b[(port % BUCKET) as usize],
            None => Port::Free,
        }
    }

    /// Binds `port` (in range) to `p`, allocating its bucket if need be.
    fn set(&mut self, port: u32, p: Port) -> Result<(), Errno> {
        let slot = &mut self.buckets[(port / BUCKET) as usize];
        if slot.is_none() {
            if p == Port::Free {
                return Ok(());
            }
            let mut v = Vec::new();
            v.try_reserve_exact(BUCKET as usize).map_err(|_| Errno::ENOMEM)?;
            v.resize(BUCKET as usize, Port::Free);
            *slot = Some(v.into_boxed_slice());
        }
        if let Some(b) = slot {
            b[(port % BUCKET) as usize] = p;
        }
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if p == Port::Free {
            self.used[w] &= !bit;
        } else {
            self.used[w] |= bit;
        }
        Ok(())
    }

    /// Binds `port` to `p`: for a connection's two ends, which the caller
    /// has checked (the port is in use, so its bucket exists).
    pub fn rebind(&mut self, port: u32, p: Port) -> Result<(), Errno> {
        if self.get(port)? == Port::Free {
            return Err(Errno::EINVAL);
        }
        self.set(port, p)
    }

    /// Closes `port` and says what is left to do for its other end. A
    /// closed console port stays closed: the backend is never notified
    /// again and the guest's console ring goes undrained.
    pub fn close(&mut self, port: u32) -> Result<Closed, Errno> {
        let p = self.get(port)?;
        let closed = match p {
            Port::Free => return Err(Errno::EINVAL),
            Port::Virq(v) => {
                self.virq[v as usize] = 0;
                Closed::Done
            }
            Port::Interdomain { remote, port } => Closed::Remote { remote, port },
            Port::Console => {
                self.console = 0;
                Closed::Done
            }
            Port::Pirq(pirq) => Closed::Pirq(pirq),
            Port::Unbound { .. } | Port::Ipi => Closed::Done,
        };
        self.set(port, Port::Free)?;
        Ok(closed)
    }

    /// The console port, if it is still bound.
    pub fn console_port(&self) -> Option<u32> {
        (self.console != 0).then_some(self.console)
    }

    /// The binding of `port` (`EINVAL` for port 0 and ports out of range).
    #[inline(always)] // every send
    pub fn get(&self, port: u32) -> Result<Port, Errno> {
        if port == 0 || port >= NR_PORTS {
            return Err(Errno::EINVAL);
        }
        Ok(self.get_raw(port))
    }

    /// The port bound to `virq`, if any.
    pub fn virq_port(&self, virq: u32) -> Option<u32> {
        self.virq.get(virq as usize).copied().filter(|&p| p != 0)
    }

    /// Closes the first port in use, if any, and returns it with what is
    /// left to do for its other end (a dead domain's teardown, a few ports
    /// at a time).
    ///
    /// Ports are closed in ascending order and the search starts where the
    /// last one ended (a bucket not allocated is skipped whole), so closing
    /// every port costs one pass over the table in all, not one per port.
    pub fn close_first(&mut self) -> Option<(u32, Closed)> {
        let mut q = self.teardown_next.max(1);
        while q < NR_PORTS {
            if self.buckets[(q / BUCKET) as usize].is_none() {
                q = (q / BUCKET + 1) * BUCKET;
                continue;
            }
            if self.get_raw(q) != Port::Free {
                self.teardown_next = q + 1;
                return self.close(q).ok().map(|c| (q, c));
            }
            q += 1;
        }
        self.teardown_next = NR_PORTS;
        None
    }

    /// How many ports are in use (port 0, never usable, not counted).
    pub fn in_use(&self) -> u32 {
        self.used.iter().map(|w| w.count_ones()).sum::<u32>() - 1
    }

    /// Every port in use, with its binding, in port order.
    pub fn ports(&self) -> impl Iterator<Item = (u32, Port)> + '_ {
        self.buckets.iter().enumerate().filter_map(|(i, b)| b.as_ref().map(|b| (i, b))).flat_map(|(i, b)| {
            b.iter().enumerate().map(move |(j, &p)| (i as u32 * BUCKET + j as u32, p)).filter(|&(_, p)| p != Port::Free)
        })
    }
}

/// `EVTCHNOP_bind_interdomain`: connects a fresh port of `local` (domain
/// `me`) to `remote_port` of `remote` (domain `remote_dom`), which must be
/// unbound and allocated for `me` (`EINVAL` otherwise, as in Xen). Returns
/// the local port. For a loopback (`remote_dom == me`) pass the same table
/// as [`connect_self`].
pub fn connect(
    local: &mut EventChannels,
    me: DomId,
    remote: &mut EventChannels,
    remote_dom: DomId,
    remote_port: u32,
) -> Result<u32, Errno> {
    if remote.get(remote_port)? != (Port::Unbound { remote: me }) {
        return Err(Errno::EINVAL);
    }
    let port = local.alloc(Port::Interdomain { remote: remote_dom, port: remote_port })?;
    remote.rebind(remote_port, Port::Interdomain { remote: me, port })?;
    Ok(port)
}

/// `CONSOLE_TAKEOVER`'s channel: the console port of `guest` (domain
/// `guest_dom`) becomes an interdomain channel to a fresh port of
/// `backend` (domain `backend_dom`, the console daemon's), in one step, so
/// the guest's notifications reach the daemon from then on and its port
/// keeps its number (the one its start info names). Returns the backend's
/// port. `ENOENT`: the guest closed its console port (the console stays
/// the hypervisor's); `ENOSPC`: the backend has no free port. On an error
/// nothing changed.
pub fn connect_console(
    backend: &mut EventChannels,
    backend_dom: DomId,
    guest: &mut EventChannels,
    guest_dom: DomId,
) -> Result<u32, Errno> {
    let cport = guest.console_port().ok_or(Errno::ENOENT)?;
    let port = backend.alloc(Port::Interdomain { remote: guest_dom, port: cport })?;
    if let Err(e) = guest.rebind(cport, Port::Interdomain { remote: backend_dom, port }) {
        let _ = backend.set(port, Port::Free);
        return Err(e);
    }
    guest.console = 0;
    Ok(port)
}

/// [`connect`] for a domain binding its own unbound port (loopback).
pub fn connect_self(table: &mut EventChannels, me: DomId, remote_port: u32) -> Result<u32, Errno> {
    if table.get(remote_port)? != (Port::Unbound { remote: me }) {
        return Err(Errno::EINVAL);
    }
    let port = table.alloc(Port::Interdomain { remote: me, port: remote_port })?;
    table.rebind(remote_port, Port::Interdomain { remote: me, port })?;
    Ok(port)
}

/// The other end of a closed connection, `port` of a domain whose table is
/// `table`, goes back to unbound for `closer` (if it still is that
/// connection's end: a stale record changes nothing).
pub fn unbind_remote_end(table: &mut EventChannels, port: u32, closer: DomId, closer_port: u32) {
    if table.get(port) == Ok(Port::Interdomain { remote: closer, port: closer_port }) {
        let _ = table.rebind(port, Port::Unbound { remote: closer });
    }
}

/// The event and time fields of one domain's shared-info page, reached
/// through the hypervisor's direct map.
#[derive(Clone, Copy, Debug)]
pub struct SharedPage {
    /// The page's machine frame.
    pub mfn: Mfn,
}

const VCPU0: u64 = offset_of!(SharedInfo, vcpu_info) as u64;
const UPCALL_PENDING: u64 = VCPU0 + offset_of!(VcpuInfo, evtchn_upcall_pending) as u64;
const UPCALL_MASK: u64 = VCPU0 + offset_of!(VcpuInfo, evtchn_upcall_mask) as u64;
const PENDING_SEL: u64 = VCPU0 + offset_of!(VcpuInfo, evtchn_pending_sel) as u64;
const TIME: u64 = VCPU0 + offset_of!(VcpuInfo, time) as u64;
const PENDING: u64 = offset_of!(SharedInfo, evtchn_pending) as u64;
const MASK: u64 = offset_of!(SharedInfo, evtchn_mask) as u64;

impl SharedPage {
    fn pa(&self, off: u64) -> u64 {
        self.mfn * PAGE_SIZE + off
    }

    fn read_u8<M: PhysMem>(&self, mem: &M, off: u64) -> u8 {
        let mut b = [0u8];
        mem.read(self.pa(off), &mut b);
        b[0]
    }

    fn word(port: u32) -> u64 {
        u64::from(port / 64) * 8
    }

    fn bit(port: u32) -> u64 {
        1 << (port % 64)
    }

    /// Rule 2 for a pending, unmasked port. Returns true if the upcall
    /// became pending.
    fn notify<M: PhysMem>(&self, mem: &mut M, port: u32) -> bool {
        let mask = mem.read_u64(self.pa(MASK + Self::word(port)));
        if mask & Self::bit(port) != 0 {
            return false;
        }
        mem.fetch_or_u64(self.pa(PENDING_SEL), 1 << (port / 64));
        mem.swap_u8(self.pa(UPCALL_PENDING), 1);
        true
    }

    /// Rules 1 and 2: raises `port`. Returns true if the domain should be
    /// woken (the upcall became pending). The pending bit is set by one
    /// atomic read-modify-write (a guest clears bits in the same word).
    pub fn raise<M: PhysMem>(&self, mem: &mut M, port: u32) -> bool {
        let old = mem.fetch_or_u64(self.pa(PENDING + Self::word(port)), Self::bit(port));
        if old & Self::bit(port) != 0 {
            return false;
        }
        self.notify(mem, port)
    }

    /// Rule 3: clears `port`'s mask (atomically) and notifies if it is
    /// pending. Returns true if the upcall became pending.
    pub fn unmask<M: PhysMem>(&self, mem: &mut M, port: u32) -> bool {
        mem.fetch_and_u64(self.pa(MASK + Self::word(port)), !Self::bit(port));
        let pending = mem.read_u64(self.pa(PENDING + Self::word(port))) & Self::bit(port) != 0;
        pending && self.notify(mem, port)
    }

    /// Whether `port` is pending.
    pub fn is_pending<M: PhysMem>(&self, mem: &M, port: u32) -> bool {
        mem.read_u64(self.pa(PENDING + Self::word(port))) & Self::bit(port) != 0
    }

    /// Rule 4: whether an upcall should be delivered now. (One read of the
    /// two adjacent bytes: this is on every hypercall's fast path.)
    pub fn upcall_due<M: PhysMem>(&self, mem: &M) -> bool {
        const _: () = assert!(UPCALL_MASK == UPCALL_PENDING + 1);
        let mut b = [0u8; 2];
        mem.read(self.pa(UPCALL_PENDING), &mut b);
        b[0] != 0 && b[1] == 0
    }

    /// Whether an upcall is pending, masked or not.
    pub fn upcall_pending<M: PhysMem>(&self, mem: &M) -> bool {
        self.read_u8(mem, UPCALL_PENDING) != 0
    }

    /// Sets the guest's event mask, returning the previous value (0 or 1).
    pub fn set_upcall_mask<M: PhysMem>(&self, mem: &mut M, masked: bool) -> u8 {
        let old = mem.swap_u8(self.pa(UPCALL_MASK), masked as u8);
        (old != 0) as u8
    }

    /// Publishes system-time parameters under the version seqlock.
    pub fn publish_time<M: PhysMem>(&self, mem: &mut M, t: &VcpuTimeInfo) {
        let v = mem.read_u64(self.pa(TIME)) as u32;
        let odd = (v | 1).wrapping_add(if v & 1 == 1 { 2 } else { 0 });
        let ver_pa = self.pa(TIME + offset_of!(VcpuTimeInfo, version) as u64);
        mem.write(ver_pa, odd.as_bytes());
        mem.write_u64(self.pa(TIME + offset_of!(VcpuTimeInfo, tsc_timestamp) as u64), t.tsc_timestamp);
        mem.write_u64(self.pa(TIME + offset_of!(VcpuTimeInfo, system_time) as u64), t.system_time);
        mem.write(self.pa(TIME + offset_of!(VcpuTimeInfo, tsc_to_system_mul) as u64), t.tsc_to_system_mul.as_bytes());
        mem.write(self.pa(TIME + offset_of!(VcpuTimeInfo, tsc_shift) as u64), t.tsc_shift.as_bytes());
        mem.write(ver_pa, odd.wrapping_add(1).as_bytes());
    }

    /// Publishes the wall-clock time at system time 0.
    pub fn publish_wallclock<M: PhysMem>(&self, mem: &mut M, sec: u64, nsec: u32) {
        let field = |off: usize| self.pa(off as u64);
        let pa = field(offset_of!(SharedInfo, wc_version));
        let mut v = 0u32;
        mem.read(pa, v.as_mut_bytes());
        let v = v | 1;
        mem.write(pa, v.as_bytes());
        mem.write(field(offset_of!(SharedInfo, wc_sec)), (sec as u32).as_bytes());
        mem.write(field(offset_of!(SharedInfo, wc_nsec)), nsec.as_bytes());
        mem.write(field(offset_of!(SharedInfo, wc_sec_hi)), ((sec >> 32) as u32).as_bytes());
        mem.write(pa, v.wrapping_add(1).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::guest_mem::fake::FakeMem;

    const SI: SharedPage = SharedPage { mfn: 7 };

    #[test]
    fn ports_bind_close_and_refuse_bad_input() {
        let mut e = EventChannels::default();
        let p = e.bind_virq(0).unwrap();
        assert_eq!(p, 1);
        assert_eq!(e.bind_virq(0), Err(Errno::EEXIST));
        assert_eq!(e.bind_virq(NR_VIRQS), Err(Errno::EINVAL));
        assert_eq!(e.bind_virq(u32::MAX), Err(Errno::EINVAL));
        assert_eq!(e.virq_port(0), Some(1));
        assert_eq!(e.get(0), Err(Errno::EINVAL));
        assert_eq!(e.get(NR_PORTS), Err(Errno::EINVAL));
        assert_eq!(e.close(5), Err(Errno::EINVAL));
        e.close(p).unwrap();
        assert_eq!(e.virq_port(0), None);
        assert_eq!(e.close(p), Err(Errno::EINVAL));
    }

    /// A console taken over: the guest's console port (same number)
    /// and a fresh port of the daemon's become one channel; a guest that
    /// closed its console port, or a daemon out of ports, changes nothing.
    #[test]
    fn a_console_takeover_connects_the_console_port_to_the_daemon() {
        let (d0, g) = (DomId::DOM0, DomId::of(5));
        let mut daemon = EventChannels::default();
        let mut guest = EventChannels::default();
        let cport = guest.bind_console().unwrap();
        let port = connect_console(&mut daemon, d0, &mut guest, g).unwrap();
        assert_eq!(guest.get(cport), Ok(Port::Interdomain { remote: d0, port }));
        assert_eq!(daemon.get(port), Ok(Port::Interdomain { remote: g, port: cport }));
        assert_eq!(guest.console_port(), None);
        assert_eq!(connect_console(&mut daemon, d0, &mut guest, g), Err(Errno::ENOENT), "taken");
        // Closed by the guest before the takeover.
        let mut closed = EventChannels::default();
        let c = closed.bind_console().unwrap();
        closed.close(c).unwrap();
        assert_eq!(connect_console(&mut daemon, d0, &mut closed, g), Err(Errno::ENOENT));
        // A daemon whose ports are all in use.
        let mut full = EventChannels::default();
        while full.alloc_unbound(g).is_ok() {}
        let mut other = EventChannels::default();
        let oc = other.bind_console().unwrap();
        assert_eq!(connect_console(&mut full, d0, &mut other, g), Err(Errno::ENOSPC));
        assert_eq!(other.get(oc), Ok(Port::Console), "unchanged");
        assert_eq!(other.console_port(), Some(oc));
    }

    /// Teardown closes every port once, in one pass over the table, and
    /// reports the connected ones' peers.
    #[test]
    fn close_first_closes_each_port_once_in_one_pass() {
        let mut e = EventChannels::default();
        let peer = DomId::of(9);
        let ports: std::vec::Vec<u32> = (0..1500).map(|_| e.alloc_unbound(peer).unwrap()).collect();
        for &p in ports.iter().filter(|&&p| p % 3 == 0) {
            e.close(p).unwrap();
        }
        e.rebind(1, Port::Interdomain { remote: peer, port: 7 }).unwrap();
        let mut closed = std::vec::Vec::new();
        while let Some((p, c)) = e.close_first() {
            closed.push((p, c));
        }
        let left: std::vec::Vec<u32> = ports.iter().copied().filter(|p| p % 3 != 0).collect();
        assert_eq!(closed.iter().map(|&(p, _)| p).collect::<std::vec::Vec<_>>(), left);
        assert_eq!(closed[0].1, Closed::Remote { remote: peer, port: 7 });
        assert_eq!(e.ports().count(), 0);
        assert_eq!(e.close_first(), None);
    }

    #[test]
    fn ports_run_out_cleanly() {
        let mut e = EventChannels::default();
        for v in 0..NR_VIRQS {
            e.bind_virq(v).unwrap();
        }
        assert_eq!(e.bind_virq(0), Err(Errno::EEXIST));
    }

    #[test]
    fn rule1_rule2_raise_coalesces_and_notifies() {
        let mut m = FakeMem::default();
        assert!(SI.raise(&mut m, 70));
        assert!(!SI.raise(&mut m, 70), "a pending port coalesces");
        assert!(SI.upcall_due(&m));
        assert_eq!(m.read_u64(7 * 4096 + PENDING_SEL), 1 << 1);
        assert!(SI.is_pending(&m, 70));
    }

    #[test]
    fn rule3_masked_events_are_kept_and_delivered_on_unmask() {
        let mut m = FakeMem::default();
        m.write_u64(7 * 4096 + MASK, 1 << 3);
        assert!(!SI.raise(&mut m, 3));
        assert!(!SI.upcall_pending(&m));
        assert!(SI.is_pending(&m, 3));
        assert!(SI.unmask(&mut m, 3));
        assert!(SI.upcall_due(&m));
    }

    #[test]
    fn rule4_upcall_mask_defers_delivery() {
        let mut m = FakeMem::default();
        assert_eq!(SI.set_upcall_mask(&mut m, true), 0);
        SI.raise(&mut m, 1);
        assert!(!SI.upcall_due(&m));
        assert_eq!(SI.set_upcall_mask(&mut m, false), 1);
        assert!(SI.upcall_due(&m));
    }

    #[test]
    fn time_publication_leaves_an_even_version() {
        let mut m = FakeMem::default();
        let t = VcpuTimeInfo {
            tsc_timestamp: 5,
            system_time: 9,
            tsc_to_system_mul: 77,
            tsc_shift: -2,
            ..Default::default()
        };
        SI.publish_time(&mut m, &t);
        SI.publish_time(&mut m, &t);
        let v = m.read_u64(7 * 4096 + TIME) as u32;
        assert_eq!(v % 2, 0);
        assert_eq!(v, 4);
        assert_eq!(m.read_u64(7 * 4096 + TIME + 16), 9);
        SI.publish_wallclock(&mut m, 0x1_0000_0005, 6);
        let mut b = [0u8; 16];
        m.read(7 * 4096 + offset_of!(SharedInfo, wc_version) as u64, &mut b);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 5);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 1);
    }
}
