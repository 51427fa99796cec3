//! Physical devices: `physdev_op(cmd, arg)`
//! ([`crate::hypercall::PHYSDEV_OP`], Xen's `__HYPERVISOR_physdev_op`, 33),
//! `cmd` in `rdi` and a pointer to the command's struct in `rsi`.
//!
//! Every command is the privileged domain's (dom0's): any other domain gets
//! `EPERM` from every command, known or not, before its argument is read.
//!
//! # Commands
//! - [`PCI_CONFIG_READ`], [`PCI_CONFIG_WRITE`]: Ringfence's own (Xen's dom0
//!   reaches configuration space by port I/O; here the hypervisor owns the
//!   ports and filters every write). Their numbers start at [`RF_BASE`],
//!   far above every `PHYSDEVOP_*` Xen defines (0 to 32 today), so they can
//!   never collide with one Xen adds.
//! - [`MAP_PIRQ`] and [`EOI`]: Xen's numbers and layouts ([`MapPirq`],
//!   [`Eoi`]); with `EVTCHNOP_bind_pirq` (`crate::event::BIND_PIRQ`) they
//!   deliver a device's interrupt line as an event (below).
//!
//! # Device interrupts (GSIs as pirqs)
//! The hypervisor owns the IOAPIC. dom0 maps a GSI (an IOAPIC input) of a
//! PCI function it was given to a pirq, binds the pirq to a port, and
//! gets an event each time the line fires:
//! 1. [`MAP_PIRQ`] with `type_` [`map_pirq_type::GSI`], `domid`
//!    `DOMID_SELF` (or dom0's own id), `index` the GSI and `pirq` -1 (or
//!    the GSI itself): the pirq *is* the GSI number (Xen's identity map for
//!    dom0's GSIs) and comes back in `pirq`. The GSI must be the one the
//!    hypervisor routes one of dom0's functions' INTx pin to (on q35: pin
//!    A of root-bus slot `s` is GSI `20 + s % 4`): `EPERM` otherwise, and
//!    for mapping for another domain. `EINVAL`: `index` outside the
//!    IOAPIC's inputs, or a `pirq` other than -1 and the GSI. `EEXIST`:
//!    mapped already. `EOPNOTSUPP`: an MSI (type `MSI` or `MSI_SEG`);
//!    `EINVAL` for any other type.
//! 2. `EVTCHNOP_bind_pirq` binds the pirq to a fresh port and unmasks the
//!    line, programmed level-triggered and active-low (PCI INTx).
//! 3. When the line fires, the hypervisor masks it, acknowledges the local
//!    APIC and raises the port. The line **stays masked until [`EOI`]**: a
//!    device that keeps its line up costs the hypervisor one interrupt, not
//!    a storm. dom0 quiets the device (reads its ISR), then EOIs; if the
//!    device still holds the line, it fires again at once (level).
//! 4. [`EOI`] of a pirq dom0 has not bound is `EPERM`; of a bound line that
//!    is not waiting for one, a harmless no-op (0); `EINVAL` for a pirq out
//!    of range.
//!
//! Closing the port masks the line and unbinds it (the pirq stays
//! mapped); dom0's death masks and frees every line it had.
//!
//! # PCI configuration access
//! [`PciConfig`] names one register of one function: segment 0 only, bus
//! 0-255, device 0-31, function 0-7, `reg` 0-255 (the legacy configuration
//! space that mechanism #1 reaches), `size` 1, 2 or 4 bytes with `reg`
//! aligned to it. Anything else is `EINVAL`, as is a write whose `value`
//! does not fit in `size` bytes. A read returns 0 and puts the register in
//! `value` (all ones for a function that does not exist, as the hardware
//! answers). dom0 may read every function; it may write only the functions
//! it was given, and the hypervisor refuses (`EPERM`) writes that would let
//! a device reach memory or interrupts that are not dom0's to give: see the
//! hypervisor's `pci` module for the rules.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Xen's `PHYSDEVOP_eoi`: end of interrupt for a pirq ([`Eoi`]): unmasks
/// its line.
pub const EOI: u64 = 12;
/// Xen's `PHYSDEVOP_map_pirq`: map a GSI to a pirq ([`MapPirq`]; MSI is
/// `EOPNOTSUPP`).
pub const MAP_PIRQ: u64 = 13;
/// The GSI that QEMU's q35 routes INTx pin `pin` (1-4: INTA#-INTD#) of
/// root-bus slot `dev` to: PIRQ E-H, GSI `20 + (dev + pin - 1) % 4`
/// (measured on QEMU 7.2: virtio-blk at 00:02.0, pin A, is GSI 22;
/// virtio-net at 00:03.0 is GSI 23). `None` for no pin, a bus other than
/// 0 (behind a bridge the pin is swizzled) and the chipset slots
/// `0x19..=0x1f`, which the chipset routes by its own registers. The
/// hypervisor offers dom0 exactly the GSIs this gives for its functions.
pub const fn q35_intx_gsi(bus: u8, dev: u8, pin: u8) -> Option<u32> {
    if pin < 1 || pin > 4 || bus != 0 || dev >= 0x19 {
        return None;
    }
    Some(20 + (dev as u32 + pin as u32 - 1) % 4)
}

/// First Ringfence-only command number.
pub const RF_BASE: u64 = 0x1000;
/// Read one PCI configuration register: [`PciConfig`] (in: the address;
/// out: `value`).
pub const PCI_CONFIG_READ: u64 = RF_BASE;
/// Write one PCI configuration register: [`PciConfig`] (in: the address
/// and `value`), filtered by the hypervisor.
pub const PCI_CONFIG_WRITE: u64 = RF_BASE + 1;

/// Argument of [`PCI_CONFIG_READ`] and [`PCI_CONFIG_WRITE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PciConfig {
    /// PCI segment: must be 0.
    pub seg: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0-31).
    pub dev: u8,
    /// Function number (0-7).
    pub func: u8,
    /// Access size in bytes: 1, 2 or 4.
    pub size: u8,
    /// Register offset (0-255), a multiple of `size`.
    pub reg: u16,
    /// Write: the value (in the low `size` bytes). Read: out, the value.
    pub value: u32,
}

/// Argument of [`EOI`] (Xen's `physdev_eoi`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Eoi {
    /// The pirq whose interrupt was handled.
    pub irq: u32,
}

/// `type` values of [`MapPirq`] (Xen's `MAP_PIRQ_TYPE_*`).
pub mod map_pirq_type {
    /// A message-signalled interrupt.
    pub const MSI: i32 = 0;
    /// A global system interrupt (an IOAPIC pin).
    pub const GSI: i32 = 1;
    /// Unknown.
    pub const UNKNOWN: i32 = 2;
    /// An MSI with the segment in the high 16 bits of `bus`.
    pub const MSI_SEG: i32 = 3;
}

/// Argument of [`MAP_PIRQ`] (Xen's `physdev_map_pirq`, x86_64 layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MapPirq {
    /// The domain the pirq is for.
    pub domid: u16,
    /// Padding (Xen's layout: `type` is 4-aligned).
    pub pad0: u16,
    /// [`map_pirq_type`].
    pub type_: i32,
    /// GSI number, or MSI index.
    pub index: i32,
    /// In or out: the pirq (-1 in: let the hypervisor choose).
    pub pirq: i32,
    /// Bus (MSI; the segment in the high 16 bits for `MSI_SEG`).
    pub bus: i32,
    /// Device and function (MSI).
    pub devfn: i32,
    /// MSI-X entry number, or the vector count of a multi-vector MSI.
    pub entry_nr: i32,
    /// Padding (Xen's layout: `table_base` is 8-aligned).
    pub pad1: u32,
    /// MSI-X table base.
    pub table_base: u64,
}

const _: () = {
    assert!(size_of::<PciConfig>() == 12);
    assert!(offset_of!(PciConfig, bus) == 2);
    assert!(offset_of!(PciConfig, dev) == 3);
    assert!(offset_of!(PciConfig, func) == 4);
    assert!(offset_of!(PciConfig, size) == 5);
    assert!(offset_of!(PciConfig, reg) == 6);
    assert!(offset_of!(PciConfig, value) == 8);
    assert!(size_of::<Eoi>() == 4);
    assert!(size_of::<MapPirq>() == 40);
    assert!(offset_of!(MapPirq, type_) == 4);
    assert!(offset_of!(MapPirq, index) == 8);
    assert!(offset_of!(MapPirq, pirq) == 12);
    assert!(offset_of!(MapPirq, bus) == 16);
    assert!(offset_of!(MapPirq, devfn) == 20);
    assert!(offset_of!(MapPirq, entry_nr) == 24);
    assert!(offset_of!(MapPirq, table_base) == 32);
};
