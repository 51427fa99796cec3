//! Device interrupts as events, for the privileged domain (dom0).
//!
//! The hypervisor owns the IOAPIC. dom0 maps the GSI of a PCI function it
//! was given to a pirq ([`map_gsi`]), binds the pirq to a port with a
//! handler ([`bind`]), and acknowledges each interrupt with
//! [`IrqChannel::eoi`] once it has quieted the device (read its ISR).
//! The line stays masked from the moment it fires until that EOI: a
//! device that keeps its line up gets its handler run again right after
//! the EOI, never in a storm. Every call is `EPERM` for any other domain;
//! see `pvguest_abi::physdev` for every error.
//!
//! ```ignore
//! use pvguest_sdk::{event, irq, pci};
//!
//! fn on_disk(_port: event::Port) {
//!     // Read the device's ISR (quiets the line), then acknowledge.
//!     let _ = irq::eoi(irq::Pirq(22));
//! }
//!
//! let disk = pci::Bdf::new(0, 2, 0);
//! let gsi = irq::gsi_of(disk)?.expect("an INTx pin routed to a GSI");
//! let pirq = irq::map_gsi(gsi)?;
//! let chan = irq::bind(pirq)?;
//! chan.on_interrupt(on_disk)?;
//! event::enable();
//! ```

use crate::event::{self, Handler, Port};
use crate::pci::{self, Bdf};
use pvguest_abi::event::{BindPirq, Close, BIND_PIRQ, CLOSE};
use pvguest_abi::hypercall::{EVENT_CHANNEL_OP, PHYSDEV_OP};
use pvguest_abi::physdev::{self, map_pirq_type, q35_intx_gsi, Eoi, MapPirq};
use pvguest_abi::{Errno, DOMID_SELF};

/// A physical IRQ: for a GSI, the GSI's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pirq(pub u32);

/// The GSI the hypervisor routes `bdf`'s INTx pin to (q35's rule,
/// [`q35_intx_gsi`], on the pin read from configuration space; not the
/// interrupt-line register, which firmware fills with legacy PIC routing):
/// `None` if it has no pin or its routing is the chipset's.
pub fn gsi_of(bdf: Bdf) -> Result<Option<u32>, Errno> {
    let pin = pci::read8(bdf, pci::reg::INTERRUPT_PIN)?;
    Ok(q35_intx_gsi(bdf.bus, bdf.dev, pin))
}

/// `PHYSDEVOP_map_pirq` with `arg` as given, returned as the hypervisor
/// left it (the pirq filled in). [`map_gsi`] is the normal way in; this is
/// for tests that pass malformed requests.
pub fn map_raw(arg: MapPirq) -> Result<MapPirq, Errno> {
    let mut a = arg;
    // SAFETY: `a` is a local that nothing else refers to during the call;
    // the hypervisor reads it and writes only its `pirq` field (an i32).
    let r = unsafe { crate::hypercall::raw(PHYSDEV_OP, [physdev::MAP_PIRQ, &mut a as *mut MapPirq as u64, 0, 0, 0]) };
    Errno::decode(r).map(|_| a)
}

/// Maps GSI `gsi` (of a function dom0 was given) to its pirq.
pub fn map_gsi(gsi: u32) -> Result<Pirq, Errno> {
    let index = i32::try_from(gsi).map_err(|_| Errno::EINVAL)?;
    let a = map_raw(MapPirq {
        domid: DOMID_SELF as u16,
        type_: map_pirq_type::GSI,
        index,
        pirq: -1,
        ..MapPirq::default()
    })?;
    Ok(Pirq(a.pirq as u32))
}

/// `EVTCHNOP_bind_pirq` with these flags: the port.
pub fn bind_raw(pirq: u32, flags: u32) -> Result<Port, Errno> {
    let mut b = BindPirq { pirq, flags, port: 0 };
    // SAFETY: `b` is a local of the layout BIND_PIRQ expects; the
    // hypervisor writes only its `port` field.
    let r = unsafe { crate::hypercall::raw(EVENT_CHANNEL_OP, [BIND_PIRQ, &mut b as *mut BindPirq as u64, 0, 0, 0]) };
    Errno::decode(r).map(|_| Port(b.port))
}

/// Binds `pirq` to a fresh port, masked in this domain until
/// [`IrqChannel::on_interrupt`] sets its handler (the hypervisor unmasks
/// the line now: an interrupt that comes first stays pending).
pub fn bind(pirq: Pirq) -> Result<IrqChannel, Errno> {
    let port = bind_raw(pirq.0, 0)?;
    event::mask(port);
    Ok(IrqChannel { pirq, port })
}

/// `PHYSDEVOP_eoi`: the interrupt of `pirq` was handled; its line is
/// unmasked (if the device still holds it, it fires again at once).
pub fn eoi(pirq: Pirq) -> Result<(), Errno> {
    let mut a = Eoi { irq: pirq.0 };
    // SAFETY: the hypervisor only reads `a`.
    let r = unsafe { crate::hypercall::raw(PHYSDEV_OP, [physdev::EOI, &mut a as *mut Eoi as u64, 0, 0, 0]) };
    Errno::decode(r).map(|_| ())
}

/// A pirq bound to a port.
#[derive(Debug)]
pub struct IrqChannel {
    pirq: Pirq,
    port: Port,
}

impl IrqChannel {
    /// The pirq.
    pub fn pirq(&self) -> Pirq {
        self.pirq
    }

    /// The port its interrupts arrive on.
    pub fn port(&self) -> Port {
        self.port
    }

    /// Runs `handler` on each interrupt (and unmasks the port). The
    /// handler (or code it wakes) must call [`IrqChannel::eoi`] or [`eoi`]
    /// for the next interrupt to come.
    pub fn on_interrupt(&self, handler: Handler) -> Result<(), Errno> {
        event::set_handler(self.port, handler)?;
        event::unmask(self.port)
    }

    /// [`eoi`] of this pirq.
    pub fn eoi(&self) -> Result<(), Errno> {
        eoi(self.pirq)
    }

    /// Closes the port: the hypervisor masks the line and unbinds it (the
    /// pirq stays mapped, and may be bound again).
    pub fn close(self) -> Result<(), Errno> {
        event::mask(self.port);
        let _ = event::set_handler(self.port, |_| {});
        let mut c = Close { port: self.port.0 };
        // SAFETY: the hypervisor only reads `c`.
        let r = unsafe { crate::hypercall::raw(EVENT_CHANNEL_OP, [CLOSE, &mut c as *mut Close as u64, 0, 0, 0]) };
        Errno::decode(r).map(|_| ())
    }
}
