//! A fake IOAPIC for host tests, modelled on QEMU's: 24 redirection
//! entries, device lines that are asserted or not, remote IRR for
//! level-triggered entries, and the local APIC's EOI broadcast.
//!
//! Delivery: an unmasked entry whose line is asserted (level) and whose
//! remote IRR is clear delivers its vector and sets remote IRR; the EOI
//! broadcast for that vector clears remote IRR, after which a line still
//! asserted delivers again (if unmasked). Unmasking an entry whose line is
//! asserted delivers too. Edge-triggered entries deliver once per assertion.

use super::{reg, IoapicRegs};
use std::vec::Vec;

/// The fake.
#[derive(Clone, Debug)]
pub struct FakeIoapic {
    /// Redirection entries (low, high); the read-only bits are kept here
    /// too.
    pub redir: [(u32, u32); 24],
    /// Device lines (logical: asserted or not).
    pub line: [bool; 24],
    /// Edge entries: an assertion not yet delivered.
    pub edge_pending: [bool; 24],
    /// Every vector delivered, in order.
    pub delivered: Vec<u8>,
    /// Registers written (index, value), in order.
    pub writes: Vec<(u8, u32)>,
    /// The value of the version register.
    pub version: u32,
}

impl Default for FakeIoapic {
    fn default() -> Self {
        // QEMU: version 0x20, 24 entries, all masked at reset.
        FakeIoapic {
            redir: [(reg::MASKED, 0); 24],
            line: [false; 24],
            edge_pending: [false; 24],
            delivered: Vec::new(),
            writes: Vec::new(),
            version: 0x0017_0020,
        }
    }
}

impl FakeIoapic {
    /// An IOAPIC whose entries the firmware left unmasked (to show that
    /// boot masks them).
    pub fn unmasked_by_firmware() -> FakeIoapic {
        FakeIoapic { redir: [(0x30, 0); 24], ..FakeIoapic::default() }
    }

    /// Sets device line `gsi`.
    pub fn set_line(&mut self, gsi: usize, up: bool) {
        if up && !self.line[gsi] {
            self.edge_pending[gsi] = true;
        }
        self.line[gsi] = up;
    }

    /// The next vector the IOAPIC delivers now, if any (the CPU takes it).
    pub fn deliver(&mut self) -> Option<u8> {
        for g in 0..24 {
            let lo = self.redir[g].0;
            if lo & reg::MASKED != 0 {
                continue;
            }
            let level = lo & reg::LEVEL != 0;
            if level && self.line[g] && lo & reg::REMOTE_IRR == 0 {
                self.redir[g].0 |= reg::REMOTE_IRR;
                self.delivered.push(lo as u8);
                return Some(lo as u8);
            }
            if !level && self.edge_pending[g] {
                self.edge_pending[g] = false;
                self.delivered.push(lo as u8);
                return Some(lo as u8);
            }
        }
        None
    }

    /// The local APIC's EOI for `vector`, broadcast to the IOAPIC.
    pub fn eoi_broadcast(&mut self, vector: u8) {
        for e in &mut self.redir {
            if e.0 as u8 == vector {
                e.0 &= !reg::REMOTE_IRR;
            }
        }
    }

    /// Whether entry `gsi` is masked.
    pub fn masked(&self, gsi: usize) -> bool {
        self.redir[gsi].0 & reg::MASKED != 0
    }
}

impl IoapicRegs for FakeIoapic {
    fn read(&mut self, index: u8) -> u32 {
        match index {
            0x00 => 0,
            reg::VERSION => self.version,
            0x10..=0x3f => {
                let n = usize::from(index - 0x10) / 2;
                if index.is_multiple_of(2) {
                    self.redir[n].0
                } else {
                    self.redir[n].1
                }
            }
            _ => 0,
        }
    }

    fn write(&mut self, index: u8, value: u32) {
        self.writes.push((index, value));
        if let 0x10..=0x3f = index {
            let n = usize::from(index - 0x10) / 2;
            if index.is_multiple_of(2) {
                // Delivery status and remote IRR are read-only.
                let ro = reg::REMOTE_IRR | (1 << 12);
                self.redir[n].0 = (value & !ro) | (self.redir[n].0 & ro);
            } else {
                self.redir[n].1 = value;
            }
        }
    }
}
