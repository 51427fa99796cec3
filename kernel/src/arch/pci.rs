//! PCI configuration mechanism #1: the address of a register goes to port
//! `0xCF8`, then its data moves through `0xCFC..=0xCFF`.
//!
//! # The address latch
//! `0xCF8` holds one address for the whole machine, so an access is two
//! steps that must not interleave with another access. This module is the
//! only code that touches `0xCF8..=0xCFF`, and every access holds
//! [`LATCH`] from the address write to the data transfer. (The hypervisor
//! runs on one CPU with interrupts off, so the lock is never contended
//! today; it makes the ownership explicit and stays right with SMP or a
//! configuration access from an interrupt path.) Guests cannot reach the
//! ports: they run without I/O privilege and without an I/O bitmap, and
//! when dom0 is given I/O ports later, these must never be among them.
//!
//! The policy (which function and register dom0 may write) is the
//! library's `ringfence_kernel::pci`; this layer only moves bytes.

use super::cpu;
use ringfence_kernel::pci::{ConfigAddr, ConfigSpace};
use spin::Mutex;

/// The address port.
const CONFIG_ADDRESS: u16 = 0xcf8;
/// The first data port.
const CONFIG_DATA: u16 = 0xcfc;

/// Held across the address write and the data access.
static LATCH: Mutex<()> = Mutex::new(());

/// The machine's configuration space through mechanism #1.
pub struct Mechanism1;

impl ConfigSpace for Mechanism1 {
    fn read(&mut self, at: ConfigAddr) -> u32 {
        let _latch = LATCH.lock();
        cpu::outl(CONFIG_ADDRESS, at.mech1_address());
        let port = CONFIG_DATA + at.data_offset();
        match at.size() {
            1 => u32::from(cpu::inb(port)),
            2 => u32::from(cpu::inw(port)),
            _ => cpu::inl(port),
        }
    }

    fn write(&mut self, at: ConfigAddr, value: u32) {
        let _latch = LATCH.lock();
        cpu::outl(CONFIG_ADDRESS, at.mech1_address());
        let port = CONFIG_DATA + at.data_offset();
        match at.size() {
            1 => cpu::outb(port, value as u8),
            2 => cpu::outw(port, value as u16),
            _ => cpu::outl(port, value),
        }
    }
}
