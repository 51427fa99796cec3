//! Per-domain execution state that hypercalls change: trap table, callbacks,
//! kernel stack, segment bases and timers.
//!
//! # Invariants
//! - Every stored guest address is canonical and below the entry area: it was
//!   checked by the setter here ([`guest_code_va`]), the one place that
//!   turns those allegations into values the hypervisor will `iretq` to.
//! - A table update is all-or-nothing: one bad entry rejects the whole call
//!   and leaves the previous table in force.

use pvguest_abi::layout::is_guest_va;
use pvguest_abi::selectors::{GUEST_KERNEL_CS, GUEST_KERNEL_SS};
use pvguest_abi::trap::{TrapInfo, MAX_TRAP_TABLE, SYSCALL_GATE_VECTOR, TI_MASK_EVENTS};
use pvguest_abi::Errno;

/// Checks an alleged guest code or stack address.
pub fn guest_code_va(va: u64) -> Result<u64, Errno> {
    if va != 0 && is_guest_va(va) {
        Ok(va)
    } else {
        Err(Errno::EINVAL)
    }
}

/// A registered handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handler {
    /// Entry address (0 = none).
    pub address: u64,
    /// Mask events on entry.
    pub mask_events: bool,
}

/// Exception handlers (vectors 0..=31) and the direct syscall gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapTable {
    handlers: [Handler; 32],
    /// Target of the ring-3 `int 0x80` gate (0 = no gate).
    pub syscall_gate: u64,
}

/// A domain's data-segment state as the CPU holds it while the domain runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentState {
    /// ds, es, fs, gs.
    pub selectors: [u16; 4],
    pub fs_base: u64,
    pub gs_base: u64,
}

impl TrapTable {
    /// Applies a guest trap table (entries up to the first with address 0).
    /// An empty table clears every handler, as in Xen.
    pub fn set(&mut self, entries: &[TrapInfo]) -> Result<(), Errno> {
        if entries.len() > MAX_TRAP_TABLE {
            return Err(Errno::E2BIG);
        }
        let mut next = if entries.first().is_none_or(|e| e.address == 0) { TrapTable::default() } else { *self };
        for e in entries.iter().take_while(|e| e.address != 0) {
            let address = guest_code_va(e.address)?;
            if e.cs != 0 && e.cs != GUEST_KERNEL_CS {
                return Err(Errno::EINVAL);
            }
            if e.flags & !(3 | TI_MASK_EVENTS) != 0 {
                return Err(Errno::EINVAL);
            }
            match e.vector {
                v @ 0..=31 => {
                    // NMI, double fault and machine check are the
                    // hypervisor's own.
                    if matches!(v, 2 | 8 | 18) {
                        return Err(Errno::EINVAL);
                    }
                    next.handlers[v as usize] = Handler { address, mask_events: e.flags & TI_MASK_EVENTS != 0 };
                }
                SYSCALL_GATE_VECTOR => {
                    if e.flags & 3 != 3 {
                        return Err(Errno::EINVAL);
                    }
                    next.syscall_gate = address;
                }
                _ => return Err(Errno::EINVAL),
            }
        }
        *self = next;
        Ok(())
    }

    /// The handler for exception `vector`, if one is registered.
    pub fn handler(&self, vector: u8) -> Option<Handler> {
        self.handlers.get(vector as usize).copied().filter(|h| h.address != 0)
    }
}

/// Callback entry points (`set_callbacks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Callbacks {
    /// Event upcall.
    pub event: u64,
    /// Failsafe callback (reserved: a bounce that cannot be delivered
    /// crashes the domain).
    pub failsafe: u64,
    /// Bounced `syscall` instruction.
    pub syscall: u64,
}

impl Callbacks {
    /// Validates and installs callbacks; 0 unregisters one.
    pub fn set(&mut self, event: u64, failsafe: u64, syscall: u64) -> Result<(), Errno> {
        let check = |va: u64| if va == 0 { Ok(0) } else { guest_code_va(va) };
        let next = Callbacks { event: check(event)?, failsafe: check(failsafe)?, syscall: check(syscall)? };
        *self = next;
        Ok(())
    }
}

/// The guest-visible execution state of a domain's (only) vCPU.
#[derive(Clone, Debug, Default)]
pub struct Vcpu {
    /// Exception handlers and the syscall gate.
    pub traps: TrapTable,
    /// Callbacks.
    pub callbacks: Callbacks,
    /// Guest kernel stack for traps from ring 3 (`stack_switch`).
    pub kernel_sp: Option<u64>,
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// `set_segment_base` changed a base since the CPU was loaded.
    pub segs_dirty: bool,
    /// Data selectors (ds, es, fs, gs) as the guest left them.
    pub selectors: [u16; 4],
    /// Real-time one-shot deadline (system ns).
    pub timer: Option<u64>,
    /// Virtual-time alarm deadline (ns of run time).
    pub vtimer: Option<u64>,
    /// Ports a `sched_op(poll)` waits on (empty unless polling).
    pub poll_ports: heapless::Vec<u32, 128>,
    /// Deadline of the current poll.
    pub poll_deadline: Option<u64>,
}

impl Vcpu {
    /// The data-segment state to load when the domain runs.
    pub fn segments(&self) -> SegmentState {
        SegmentState { selectors: self.selectors, fs_base: self.fs_base, gs_base: self.gs_base }
    }

    /// `stack_switch(ss, sp)`.
    pub fn stack_switch(&mut self, ss: u64, sp: u64) -> Result<(), Errno> {
        if ss != u64::from(GUEST_KERNEL_SS) {
            return Err(Errno::EINVAL);
        }
        self.kernel_sp = Some(guest_code_va(sp)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvguest_abi::layout::{ENTRY_AREA_BASE, GUEST_KERNEL_BASE};

    fn ti(vector: u8, flags: u8, address: u64) -> TrapInfo {
        TrapInfo { vector, flags, cs: 0, pad: 0, address }
    }

    const H: u64 = GUEST_KERNEL_BASE + 0x100;

    #[test]
    fn trap_table_installs_and_terminates_at_zero() {
        let mut t = TrapTable::default();
        t.set(&[ti(14, TI_MASK_EVENTS, H), ti(13, 0, H + 8), ti(6, 0, 0), ti(3, 0, H)]).unwrap();
        assert_eq!(t.handler(14), Some(Handler { address: H, mask_events: true }));
        assert_eq!(t.handler(13).unwrap().address, H + 8);
        assert_eq!(t.handler(3), None, "entries after the terminator are ignored");
        t.set(&[]).unwrap();
        assert_eq!(t.handler(14), None, "an empty table clears");
    }

    #[test]
    fn trap_table_bad_entries_change_nothing() {
        let mut t = TrapTable::default();
        t.set(&[ti(14, 0, H)]).unwrap();
        let before = t;
        for bad in [
            ti(13, 0, ENTRY_AREA_BASE),
            ti(13, 0, 0x0000_8000_0000_0000),
            ti(8, 0, H),
            ti(2, 0, H),
            ti(18, 0, H),
            ti(32, 0, H),
            ti(0xf0, 0, H),
            ti(SYSCALL_GATE_VECTOR, 1, H),
            ti(13, 0x80, H),
            TrapInfo { vector: 13, flags: 0, cs: 0x08, pad: 0, address: H },
        ] {
            assert_eq!(t.set(&[ti(6, 0, H), bad]), Err(Errno::EINVAL), "{bad:?}");
            assert_eq!(t, before);
        }
        let many = [ti(6, 0, H); MAX_TRAP_TABLE + 1];
        assert_eq!(t.set(&many), Err(Errno::E2BIG));
    }

    #[test]
    fn syscall_gate_needs_dpl3() {
        let mut t = TrapTable::default();
        t.set(&[ti(SYSCALL_GATE_VECTOR, 3, H)]).unwrap();
        assert_eq!(t.syscall_gate, H);
    }

    #[test]
    fn callbacks_and_stack_switch_validate() {
        let mut c = Callbacks::default();
        c.set(H, 0, H + 4).unwrap();
        assert_eq!(c.event, H);
        assert_eq!(c.set(ENTRY_AREA_BASE + 8, 0, 0), Err(Errno::EINVAL));
        assert_eq!(c.event, H, "a failed set leaves the old callbacks");
        let mut v = Vcpu::default();
        assert_eq!(v.stack_switch(0x10, H), Err(Errno::EINVAL));
        assert_eq!(v.stack_switch(u64::from(GUEST_KERNEL_SS), u64::MAX), Err(Errno::EINVAL));
        v.stack_switch(u64::from(GUEST_KERNEL_SS), H).unwrap();
        assert_eq!(v.kernel_sp, Some(H));
    }
}
