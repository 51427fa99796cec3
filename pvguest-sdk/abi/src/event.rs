//! Event channels: asynchronous notifications to a guest.
//!
//! Each domain has up to [`crate::shared_info::NR_EVENT_CHANNELS`] ports.
//! A port is bound to a source (here: a virtual IRQ); when the source fires,
//! the hypervisor sets the port's bit in `evtchn_pending` of the shared-info
//! page. If the port is not masked (`evtchn_mask`), it also sets the port's
//! word in `evtchn_pending_sel` and `evtchn_upcall_pending`, and, when the
//! guest's event mask (`evtchn_upcall_mask`, its virtual interrupt flag) is
//! clear, enters the event callback. A masked event stays pending: unmasking
//! with [`UNMASK`] delivers it. No event is lost while masked; repeated
//! firings of a pending port coalesce into one.
//!
//! Operations: `event_channel_op(cmd, ptr to the command's struct)`.

use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bind a virtual IRQ: [`BindVirq`].
pub const BIND_VIRQ: u64 = 1;
/// Close a port: [`Close`].
pub const CLOSE: u64 = 3;
/// Notify the other end of a port: [`Send`]. Today the only ports with an
/// other end are console ports (see `start_info::CONSOLE_RING`); sending on
/// a virtual-IRQ port is `EINVAL`.
pub const SEND: u64 = 4;
/// Query a port: [`Status`].
pub const STATUS: u64 = 5;
/// Unmask a port, delivering a pending event: [`Unmask`].
pub const UNMASK: u64 = 9;

/// Virtual IRQ: the real-time one-shot timer fired.
pub const VIRQ_TIMER: u32 = 0;
/// Virtual IRQ: the virtual-time (time the domain has run) alarm fired.
pub const VIRQ_VTIMER: u32 = 16;
/// Number of virtual IRQs.
pub const NR_VIRQS: u32 = 24;

/// `BIND_VIRQ` argument (Xen's `evtchn_bind_virq`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BindVirq {
    /// The virtual IRQ.
    pub virq: u32,
    /// vCPU (must be 0).
    pub vcpu: u32,
    /// Out: the port.
    pub port: u32,
}

/// `CLOSE` argument.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Close {
    /// The port.
    pub port: u32,
}

/// `SEND` argument (Xen's `evtchn_send`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Send {
    /// The port.
    pub port: u32,
}

/// `UNMASK` argument.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Unmask {
    /// The port.
    pub port: u32,
}

/// Port states reported by `STATUS`.
pub mod status {
    /// Not in use.
    pub const CLOSED: u32 = 0;
    /// Connected to another end (today: the console backend).
    pub const INTERDOMAIN: u32 = 2;
    /// Bound to a virtual IRQ.
    pub const VIRQ: u32 = 4;
}

/// `STATUS` argument (a subset of Xen's `evtchn_status`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Status {
    /// Domain (must be `DOMID_SELF` as u16).
    pub dom: u16,
    /// Padding.
    pub pad: u16,
    /// The port.
    pub port: u32,
    /// Out: one of [`status`].
    pub status: u32,
    /// Out: vCPU notified.
    pub vcpu: u32,
    /// Out: the virtual IRQ for `status::VIRQ`.
    pub virq: u32,
}

const _: () = {
    assert!(size_of::<BindVirq>() == 12);
    assert!(size_of::<Close>() == 4);
    assert!(size_of::<Unmask>() == 4);
    assert!(size_of::<Send>() == 4);
    assert!(size_of::<Status>() == 20);
};
