//! The bridge's uplink: dom0's real NIC (virtio-net,
//! [`pvguest_sdk::virtio_net::Nic`]) as one more port of the switch, so
//! the domUs' frames reach QEMU's user network (slirp: a gateway at
//! 10.0.2.2 that NATs to the host, DHCP and DNS; host forwards in) and
//! its frames reach them. The bridge does no NAT of its own: slirp's is
//! the seeds' NAT.
//!
//! # Who owns what
//! The NIC's buffers are the driver's (its module docs); a frame received
//! is copied out once into dom0's buffer before the bridge parses it, so
//! the device cannot change it under the parser. The NIC's INTx line is a
//! pirq whose handler only sets [`IRQ`] (the event wakes the loop); the main
//! flow reads the ISR (lowering the line), then EOIs, then drains the
//! rings, in that order.
//!
//! # Limits
//! [`Uplink::poll_rx`] takes at most [`BATCH`] frames a pass; a frame for
//! the uplink finding every transmit buffer in flight is dropped and
//! counted (the bridge's `tx_failed`), never queued without bound.

use core::sync::atomic::{AtomicBool, Ordering};
use pvguest_sdk::event::Port;
use pvguest_sdk::irq::{self, IrqChannel};
use pvguest_sdk::pci::{self, Bdf};
use pvguest_sdk::virtio_net::{Nic, MAX_FRAME};
use pvguest_sdk::{println, Errno};

/// Frames received one [`Uplink::poll_rx`] call takes at most.
pub const BATCH: usize = 32;

/// Set by the NIC's interrupt handler, cleared by the main flow.
static IRQ: AtomicBool = AtomicBool::new(false);
/// The NIC's handler: the event itself wakes the loop, which looks at
/// [`IRQ`] ([`Uplink::ready`]).
fn on_nic(_: Port) {
    IRQ.store(true, Ordering::SeqCst);
}

/// Why the uplink did not come up.
#[derive(Debug)]
pub enum UplinkError {
    NoNic,
    Pci(Errno),
    Nic(pvguest_sdk::virtio_net::NicError),
    Irq(&'static str, Errno),
    NoGsi,
}

impl core::fmt::Display for UplinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UplinkError::NoNic => write!(f, "no virtio-net function"),
            UplinkError::Pci(e) => write!(f, "PCI enumeration: {}", e.name()),
            UplinkError::Nic(e) => write!(f, "the NIC did not come up: {e:?}"),
            UplinkError::Irq(what, e) => write!(f, "{what}: {}", e.name()),
            UplinkError::NoGsi => write!(f, "the NIC's INTx pin routes to no GSI"),
        }
    }
}

/// The NIC, brought up, with its interrupt bound.
pub struct Uplink {
    nic: Nic,
    chan: IrqChannel,
    pub rx_dropped: u64,
}

impl Uplink {
    /// Finds the virtio-net function, brings it up and binds its line.
    pub fn open() -> Result<Uplink, UplinkError> {
        let mut fs = pci::enumerate().map_err(UplinkError::Pci)?;
        let bdf: Bdf =
            fs.find(|f| (f.vendor, f.device) == crate::net::VIRTIO_NET).map(|f| f.bdf).ok_or(UplinkError::NoNic)?;
        let nic = Nic::new(bdf).map_err(UplinkError::Nic)?;
        let gsi = irq::gsi_of(bdf).map_err(|e| UplinkError::Irq("interrupt pin", e))?.ok_or(UplinkError::NoGsi)?;
        let pirq = irq::map_gsi(gsi).map_err(|e| UplinkError::Irq("map_pirq", e))?;
        let chan = irq::bind(pirq).map_err(|e| UplinkError::Irq("bind_pirq", e))?;
        chan.on_interrupt(on_nic).map_err(|e| UplinkError::Irq("handler", e))?;
        let m = nic.mac();
        println!(
            "serve: uplink: virtio-net at {bdf}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, GSI {gsi}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
        Ok(Uplink { nic, chan, rx_dropped: 0 })
    }

    /// Whether the NIC interrupted since the last [`Uplink::poll_rx`].
    pub fn ready(&self) -> bool {
        IRQ.load(Ordering::SeqCst)
    }

    /// Acknowledges an interrupt (ISR, then EOI) and calls `frame` with up
    /// to [`BATCH`] frames received, each copied out of the device's
    /// buffer first. Returns how many.
    pub fn poll_rx(&mut self, mut frame: impl FnMut(&[u8])) -> usize {
        if IRQ.swap(false, Ordering::SeqCst) {
            self.nic.ack_interrupt();
            if let Err(e) = self.chan.eoi() {
                println!("serve: uplink: EOI: {e}");
            }
        }
        self.nic.reclaim();
        let mut buf = [0u8; MAX_FRAME];
        let mut n = 0;
        while n < BATCH {
            match self.nic.receive_into(&mut buf) {
                Some(Ok(len)) => {
                    frame(&buf[..len]);
                    n += 1;
                }
                Some(Err(_)) => self.rx_dropped += 1,
                None => break,
            }
        }
        n
    }

    /// Sends a frame out; `false` if every transmit buffer is in flight or
    /// the frame does not fit.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.nic.reclaim();
        self.nic.transmit(frame.len(), |b| b.copy_from_slice(frame)).is_ok()
    }
}
