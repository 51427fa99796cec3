//! Device interrupts: the IOAPIC's lines, dom0's pirqs, and the rule that
//! keeps a line masked from the moment it fires until dom0's EOI.
//!
//! # Who owns what
//! - **The IOAPIC is the hypervisor's.** Its registers are reached only
//!   through [`IoapicRegs`] (in the ring-0 image: the index/data window at
//!   `0xFEC00000`, mapped uncached in the hypervisor's view only; no guest
//!   maps it: the PCI filter keeps BARs off it and guests map only their
//!   own frames). This module is the only code that writes a redirection
//!   entry. The local APIC is the hypervisor's too (its EOI is
//!   [`crate::hv::Machine::eoi`]).
//! - **The 8259 PICs stay masked** (`arch::timer` masks them at boot and
//!   nothing unmasks them), so every device interrupt comes through the
//!   IOAPIC.
//! - **Lines.** Each GSI below [`MAX_GSIS`] has one [`Line`]: free, mapped
//!   to a pirq by its owner (dom0, the holder of the privilege), bound to a
//!   port of the owner, and in flight (fired, masked, waiting for the
//!   owner's EOI). The pirq of a GSI is the GSI number (Xen's identity
//!   map for dom0's GSIs), and its vector is [`VECTOR_BASE`] + GSI, one
//!   vector per line, below the timer's.
//!
//! # Invariants
//! 1. **Masked at boot.** [`Irqs::init`] masks every redirection entry
//!    the IOAPIC has (beyond [`MAX_GSIS`] too); an entry is unmasked only
//!    by [`Irqs::bind`] and [`Irqs::eoi`], and only for a bound line
//!    that is not in flight.
//! 2. **Which GSIs dom0 may map.** Only those the PCI record routes an
//!    INTx pin of a function dom0 is given to ([`crate::pci::Pci::dom0_gsis`]):
//!    the *interrupt pin* register, read at boot (dom0 cannot write it,
//!    rule 3 of [`crate::pci`]), routed by the q35 rule (pin `p` of root-bus
//!    slot `s` is GSI `16 + 4 + (s + p - 1) % 4`; PIRQ E-H). Not the
//!    *interrupt line* register: dom0 may write it, and firmware puts the
//!    legacy PIC routing there (QEMU's "IRQ 11"), which means nothing in
//!    APIC mode.
//! 3. **Level-triggered, active-low, fixed delivery to the boot CPU** for
//!    every bound line (PCI INTx: q35 routes them to GSIs 16-23, level,
//!    active-low; the IOAPIC's remote IRR then tracks each delivery).
//! 4. **Masked until EOI.** When a bound line fires, [`Irqs::interrupt`]
//!    masks it *before* the local APIC's EOI (so the EOI's broadcast clears
//!    remote IRR while the entry is masked and the IOAPIC does not deliver
//!    again), marks it in flight and names the port to raise. Only the
//!    owner's [`Irqs::eoi`] unmasks it; if the device still holds the line
//!    it fires again at once. So a device that never lets go, or a dom0
//!    that never EOIs, costs the hypervisor one interrupt per EOI, not a
//!    storm. A vector that fires for a line no one has bound (a stale or
//!    spurious delivery) is masked and dropped.
//! 5. **Who may EOI.** The owner of a bound line ([`Irqs::eoi`]: `EPERM`
//!    for anyone else and for a line not bound); an EOI of a bound line
//!    not in flight changes nothing.
//! 6. **Release.** Closing the bound port masks the line and unbinds it
//!    (the pirq stays mapped, [`Irqs::unbind`]); the owner's death masks
//!    and frees every line it had ([`Irqs::release`]).
//!
//! # Errors (see `pvguest_abi::physdev`)
//! `EINVAL`: a GSI or pirq outside the IOAPIC's inputs (or past
//! [`MAX_GSIS`]), a `pirq` in [`Irqs::map_gsi`] other than -1 and the GSI.
//! `EPERM`: a GSI not routed from a function dom0 is given, a pirq not
//! mapped by the caller, an EOI by anyone but the owner of the bound line.
//! `EEXIST`: a GSI mapped, or a pirq bound, already.
//!
//! # Bounded work
//! Every operation touches one line (two register writes at most), except
//! [`Irqs::init`] and [`Irqs::release`], which visit each entry once.

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use crate::domain::{DomId, Privilege};
use pvguest_abi::Errno;

/// Lines this module manages (the q35 IOAPIC's 24 inputs). Entries past
/// it are masked at boot and never unmasked.
pub const MAX_GSIS: u32 = 24;
/// The vector of GSI 0; GSI `g` interrupts on `VECTOR_BASE + g`
/// (`0xd0..0xe8`: above every exception and the guest-named vectors,
/// below the timer's `0xf0`).
pub const VECTOR_BASE: u8 = 0xd0;

/// Register indices and redirection-entry bits of the IOAPIC.
pub mod reg {
    /// The version register (bits 16..24: the last redirection entry).
    pub const VERSION: u8 = 0x01;
    /// Low dword of redirection entry `n`.
    pub const fn redir_lo(n: u32) -> u8 {
        (0x10 + 2 * n) as u8
    }
    /// High dword of redirection entry `n` (bits 24..32: destination).
    pub const fn redir_hi(n: u32) -> u8 {
        (0x11 + 2 * n) as u8
    }
    /// Interrupt input pin polarity: active low.
    pub const ACTIVE_LOW: u32 = 1 << 13;
    /// Remote IRR (read-only): a level-triggered interrupt was accepted by
    /// a local APIC and not yet EOIed.
    pub const REMOTE_IRR: u32 = 1 << 14;
    /// Trigger mode: level.
    pub const LEVEL: u32 = 1 << 15;
    /// The entry is masked.
    pub const MASKED: u32 = 1 << 16;
}

/// The IOAPIC's registers, by index (in the ring-0 image: `IOREGSEL` and
/// `IOWIN`; a fake in host tests).
pub trait IoapicRegs {
    /// Reads register `index`.
    fn read(&mut self, index: u8) -> u32;
    /// Writes register `index`.
    fn write(&mut self, index: u8, value: u32);
}

/// A machine without an IOAPIC: reads as zero (no entries), writes go
/// nowhere.
pub struct NoIoapic;

impl IoapicRegs for NoIoapic {
    fn read(&mut self, _: u8) -> u32 {
        0
    }
    fn write(&mut self, _: u8, _: u32) {}
}

/// The vector of `gsi`.
pub const fn vector_of(gsi: u32) -> u8 {
    VECTOR_BASE + gsi as u8
}

/// The GSI whose vector is `vector`, if it is one of the lines'.
pub fn gsi_of_vector(vector: u64) -> Option<u32> {
    let g = vector.checked_sub(u64::from(VECTOR_BASE))?;
    (g < u64::from(MAX_GSIS)).then_some(g as u32)
}

/// One line's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Line {
    /// The domain that mapped it (`None`: free).
    pub owner: Option<DomId>,
    /// The owner's port it is bound to.
    pub port: Option<u32>,
    /// Fired and masked; waiting for the owner's EOI.
    pub in_flight: bool,
    /// Interrupts taken on it.
    pub fired: u64,
}

/// A line that fired: raise `port` of `owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fired {
    /// The GSI.
    pub gsi: u32,
    /// Its owner.
    pub owner: DomId,
    /// The owner's port.
    pub port: u32,
}

/// The lines and their owners.
pub struct Irqs {
    /// Redirection entries the IOAPIC has, capped at [`MAX_GSIS`].
    entries: u32,
    /// GSIs dom0 may map (bit `g`: GSI `g`).
    given: u32,
    /// Local APIC id of the CPU interrupts go to.
    dest: u8,
    lines: [Line; MAX_GSIS as usize],
}

impl Irqs {
    /// No IOAPIC and no lines (before boot): every operation is refused.
    pub const fn empty() -> Irqs {
        Irqs {
            entries: 0,
            given: 0,
            dest: 0,
            lines: [Line { owner: None, port: None, in_flight: false, fired: 0 }; MAX_GSIS as usize],
        }
    }

    /// Invariant 1: masks every redirection entry of `io` and returns the
    /// lines, with `given` the GSIs dom0 may map (invariant 2) and
    /// interrupts sent to local APIC `dest`.
    pub fn init<I: IoapicRegs>(io: &mut I, given: u32, dest: u8) -> Irqs {
        let last = (io.read(reg::VERSION) >> 16) & 0xff;
        let all = if io.read(reg::VERSION) == 0 { 0 } else { last + 1 };
        for n in 0..all {
            io.write(reg::redir_lo(n), reg::MASKED);
            io.write(reg::redir_hi(n), 0);
        }
        let entries = all.min(MAX_GSIS);
        Irqs { entries, given: given & ((1u64 << entries) - 1) as u32, dest, ..Irqs::empty() }
    }

    /// Redirection entries managed.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// GSIs dom0 may map (bit `g`: GSI `g`).
    pub fn given(&self) -> u32 {
        self.given
    }

    /// Line `gsi`'s state, if it is one.
    pub fn line(&self, gsi: u32) -> Option<&Line> {
        self.lines.get(gsi as usize).filter(|_| gsi < self.entries)
    }

    /// Whether a device can still wake a domain: some line is bound to a
    /// port and unmasked (not waiting for its EOI). A domain blocked on
    /// its disk's interrupt is waiting, not deadlocked, while this holds.
    pub fn armed(&self) -> bool {
        self.lines.iter().any(|l| l.port.is_some() && !l.in_flight)
    }

    /// The line of an alleged GSI or pirq (`EINVAL` out of range).
    fn index(&self, gsi: u32) -> Result<usize, Errno> {
        if gsi < self.entries {
            Ok(gsi as usize)
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// `PHYSDEVOP_map_pirq` of type GSI for `dom` (the holder of
    /// `_privilege`): maps `gsi` (alleged) to its pirq, which is returned.
    /// `pirq` is the caller's wish (-1: any; else it must be `gsi`).
    pub fn map_gsi(&mut self, _privilege: Privilege, dom: DomId, gsi: i32, pirq: i32) -> Result<u32, Errno> {
        let g = u32::try_from(gsi).map_err(|_| Errno::EINVAL)?;
        let i = self.index(g)?;
        if pirq != -1 && pirq != gsi {
            return Err(Errno::EINVAL);
        }
        if self.given & (1 << g) == 0 {
            return Err(Errno::EPERM);
        }
        if self.lines[i].owner.is_some() {
            return Err(Errno::EEXIST);
        }
        self.lines[i] = Line { owner: Some(dom), ..Line::default() };
        Ok(g)
    }

    /// The checks of `EVTCHNOP_bind_pirq` for `dom`, before a port is
    /// allocated: `pirq` must be mapped by `dom` (`EPERM`) and not bound
    /// (`EEXIST`).
    pub fn check_bind(&self, _privilege: Privilege, dom: DomId, pirq: u32) -> Result<(), Errno> {
        let l = &self.lines[self.index(pirq)?];
        if l.owner != Some(dom) {
            return Err(Errno::EPERM);
        }
        if l.port.is_some() {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    /// Binds `pirq` (checked by [`Irqs::check_bind`]) to `port` and
    /// unmasks its line, level-triggered and active-low (invariant 3).
    pub fn bind<I: IoapicRegs>(
        &mut self,
        io: &mut I,
        p: Privilege,
        dom: DomId,
        pirq: u32,
        port: u32,
    ) -> Result<(), Errno> {
        self.check_bind(p, dom, pirq)?;
        let l = &mut self.lines[pirq as usize];
        l.port = Some(port);
        l.in_flight = false;
        self.program(io, pirq, false);
        Ok(())
    }

    /// Writes line `gsi`'s redirection entry: its vector, fixed delivery,
    /// physical destination, level, active low; masked or not.
    fn program<I: IoapicRegs>(&self, io: &mut I, gsi: u32, masked: bool) {
        let lo = u32::from(vector_of(gsi)) | reg::ACTIVE_LOW | reg::LEVEL | if masked { reg::MASKED } else { 0 };
        // Masked while the high half changes, then the low half in one write.
        io.write(reg::redir_lo(gsi), reg::MASKED | (lo & !reg::MASKED));
        io.write(reg::redir_hi(gsi), u32::from(self.dest) << 24);
        io.write(reg::redir_lo(gsi), lo);
    }

    fn mask<I: IoapicRegs>(io: &mut I, gsi: u32) {
        let lo = io.read(reg::redir_lo(gsi));
        io.write(reg::redir_lo(gsi), lo | reg::MASKED);
    }

    /// Invariant 4: the interrupt on `vector` arrived. Masks its line (the
    /// caller then EOIs the local APIC) and, if the line is bound and was
    /// not in flight, marks it in flight and returns the port to raise.
    pub fn interrupt<I: IoapicRegs>(&mut self, io: &mut I, vector: u64) -> Option<Fired> {
        let gsi = gsi_of_vector(vector).filter(|&g| g < self.entries)?;
        Self::mask(io, gsi);
        let l = &mut self.lines[gsi as usize];
        let (Some(owner), Some(port)) = (l.owner, l.port) else { return None };
        if l.in_flight {
            return None;
        }
        l.in_flight = true;
        l.fired += 1;
        Some(Fired { gsi, owner, port })
    }

    /// The owner of the line `vector` names, if any (who pays for its
    /// interrupt).
    pub fn owner_of_vector(&self, vector: u64) -> Option<DomId> {
        gsi_of_vector(vector).and_then(|g| self.line(g)).and_then(|l| l.owner)
    }

    /// `PHYSDEVOP_eoi` by `dom` (invariant 5): unmasks the line of its
    /// bound `pirq` if it is in flight.
    pub fn eoi<I: IoapicRegs>(
        &mut self,
        io: &mut I,
        _privilege: Privilege,
        dom: DomId,
        pirq: u32,
    ) -> Result<(), Errno> {
        let i = self.index(pirq)?;
        let l = &mut self.lines[i];
        if l.owner != Some(dom) || l.port.is_none() {
            return Err(Errno::EPERM);
        }
        if l.in_flight {
            l.in_flight = false;
            self.program(io, pirq, false);
        }
        Ok(())
    }

    /// Invariant 6: `dom`'s port bound to `pirq` was closed: masks the line
    /// and unbinds it (it stays mapped). Anything else is ignored (a stale
    /// call after [`Irqs::release`]).
    pub fn unbind<I: IoapicRegs>(&mut self, io: &mut I, dom: DomId, pirq: u32) {
        let Ok(i) = self.index(pirq) else { return };
        let l = &mut self.lines[i];
        if l.owner == Some(dom) && l.port.is_some() {
            Self::mask(io, pirq);
            l.port = None;
            l.in_flight = false;
        }
    }

    /// Invariant 6: `dom` died: masks and frees every line it had; returns
    /// how many.
    pub fn release<I: IoapicRegs>(&mut self, io: &mut I, dom: DomId) -> u32 {
        let mut n = 0;
        for g in 0..self.entries {
            if self.lines[g as usize].owner == Some(dom) {
                Self::mask(io, g);
                self.lines[g as usize] = Line::default();
                n += 1;
            }
        }
        n
    }

    /// Line `gsi`'s redirection entry as the IOAPIC holds it (low dword),
    /// for the hypervisor's log and tests.
    pub fn entry<I: IoapicRegs>(&self, io: &mut I, gsi: u32) -> Option<u32> {
        (gsi < self.entries).then(|| io.read(reg::redir_lo(gsi)))
    }
}
