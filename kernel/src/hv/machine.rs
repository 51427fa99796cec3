//! What the trap loop needs from the machine: the one narrow interface
//! between [`super::Hv`]'s policy (host-tested) and the hardware.
//!
//! The ring-0 image implements it over the real CPU (TSC, local APIC
//! timer, COM1, segment MSRs, descriptor tables, the identity map of
//! physical memory); host tests implement it over a fake clock, a byte
//! buffer for the console and a `Vec` of RAM. Nothing in [`super`] touches
//! hardware except through it.

use crate::domain::vcpu::SegmentState;
use crate::irq::IoapicRegs;
use crate::mm::frames::Mfn;
use crate::mm::guest_mem::PhysMem;
use crate::pci::ConfigSpace;
use crate::regs::Regs;
use ring_protocol::ByteChannel;

/// The machine services of the trap loop.
pub trait Machine {
    /// Physical memory.
    type Mem: PhysMem;

    /// PCI configuration space.
    type Config: ConfigSpace;

    /// The IOAPIC's registers.
    type Ioapic: IoapicRegs;

    /// The IOAPIC (only [`crate::irq`]'s policy uses it).
    fn ioapic(&mut self) -> &mut Self::Ioapic;
    /// The vector of a device interrupt the CPU took while halted in
    /// [`Machine::halt`] and did not acknowledge (the trap loop masks its
    /// line, then EOIs), if any is left; each vector once.
    fn take_irq(&mut self) -> Option<u8>;
    /// The local APIC id of this CPU (where device interrupts go).
    fn apic_id(&self) -> u8;
    /// Bytes of the hypervisor's heap in use (the leak check's figure).
    fn heap_used(&self) -> u64;
    /// Physical memory, to read and write.
    fn mem(&mut self) -> &mut Self::Mem;
    /// PCI configuration space (mechanism #1 on the real machine; only
    /// [`crate::pci`]'s policy, on dom0's behalf or at boot, uses it).
    fn pci_config(&mut self) -> &mut Self::Config;
    /// Reads `size` (1, 2 or 4) bytes from I/O port `port` (only for
    /// dom0's emulated `in`, on a port [`crate::pci::Pci::io_owner`]
    /// allowed).
    fn port_in(&mut self, port: u16, size: u8) -> u32;
    /// Writes `size` (1, 2 or 4) bytes of `value` to I/O port `port` (as
    /// [`Machine::port_in`]).
    fn port_out(&mut self, port: u16, size: u8, value: u32);
    /// Physical memory, to read.
    fn mem_ref(&self) -> &Self::Mem;
    /// The time-stamp counter. An associated function, not a method: the
    /// preemption checks read it while the rest of the machine is borrowed
    /// (a host test keeps its fake clock in a thread-local).
    fn tsc() -> u64;
    /// TSC ticks in `ns` nanoseconds.
    fn tsc_ticks(&self, ns: u64) -> u64;
    /// Arms the one-shot timer to interrupt in `ns` nanoseconds.
    fn arm_timer(&mut self, ns: u64);
    /// Acknowledges the interrupt in service at the local APIC (the
    /// timer's, or a device line's once [`crate::irq`] has masked it).
    fn eoi(&mut self);
    /// Waits, interrupts enabled, for the next interrupt (the CPU is idle).
    fn halt(&mut self);
    /// Writes console bytes (COM1).
    fn console_write(&mut self, bytes: &[u8]);
    /// One byte of console input, if any.
    fn console_read(&mut self) -> Option<u8>;
    /// Writes one line of the hypervisor's own log (`(rf) ...`).
    fn log(&mut self, args: core::fmt::Arguments<'_>);
    /// The page-fault address of the trap being handled.
    fn cr2(&self) -> u64;
    /// The data-segment state of the domain running now (selectors and
    /// FS/GS bases), read from the CPU when it is switched out.
    fn save_segments(&mut self) -> SegmentState;
    /// Loads a domain's data-segment state (`selectors`: its selectors too,
    /// not only the bases).
    fn load_segments(&mut self, s: &SegmentState, selectors: bool);
    /// Sets the direct syscall gate (`None`: closed).
    fn set_syscall_gate(&mut self, gate: Option<u64>);
    /// Sets the ring-1 stack the CPU switches to from ring 3.
    fn set_rsp1(&mut self, rsp: u64);
    /// The PML4 entry of the hypervisor's entry area, slot 511 of every
    /// guest root.
    fn entry_area_pml4e(&self) -> u64;
    /// The back end of the console ring in the domain's console page
    /// `mfn` (set up, zeroed, by the builder): `None` if it cannot be
    /// attached.
    fn console_page(&mut self, mfn: Mfn) -> Option<ByteChannel<'static>>;
    /// Bytes the console ring in page `mfn` holds unread, from its indices
    /// as they are (the page is not initialised again): for a ring the
    /// console daemon owns. 0 if it does not attach or its indices are
    /// corrupt.
    fn console_unread(&mut self, mfn: Mfn) -> u32;
    /// Initialises the zeroed page `mfn` (a domain's store page) as an
    /// empty `ByteChannel` for its two ends in other domains; the
    /// hypervisor keeps no endpoint. `false` if that failed.
    fn channel_page_init(&mut self, mfn: Mfn) -> bool;
    /// What the stretch of hypervisor time under way began with (vector,
    /// rax, rip, domain) and how many TSC ticks ago (for the wake-up
    /// report).
    fn stretch(&self) -> ([u64; 4], u64);
    /// The CPU halted and woke: the stretch starts again now.
    fn stretch_restart(&mut self);
    /// Prints the longest stretch (the final report).
    fn stretch_report(&mut self);
    /// A fault the hypervisor cannot survive (a double fault, a machine
    /// check taken from a guest): report and stop.
    fn fatal(&mut self, vector: u8, frame: &Regs) -> !;
    /// Ends the run with the verdict.
    fn exit(&mut self, success: bool) -> !;
}

/// Writes a log line through the machine: `hvlog!(machine, "fmt", args)`.
#[macro_export]
macro_rules! hvlog {
    ($m:expr, $($arg:tt)*) => {
        $m.log(format_args!($($arg)*))
    };
}
