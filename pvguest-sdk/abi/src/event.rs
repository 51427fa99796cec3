//! Event channels: asynchronous notifications to a guest.
//!
//! Each domain has up to [`crate::shared_info::NR_EVENT_CHANNELS`] ports
//! (Xen's 2-level ABI: 4096; port 0 is never used). A port is bound to a
//! source: a virtual IRQ, an IPI, the console backend, or a port of another
//! domain (interdomain). When the source fires,
//! the hypervisor sets the port's bit in `evtchn_pending` of the shared-info
//! page. If the port is not masked (`evtchn_mask`), it also sets the port's
//! word in `evtchn_pending_sel` and `evtchn_upcall_pending`, and, when the
//! guest's event mask (`evtchn_upcall_mask`, its virtual interrupt flag) is
//! clear, enters the event callback. A masked event stays pending: unmasking
//! with [`UNMASK`] delivers it. No event is lost while masked; repeated
//! firings of a pending port coalesce into one.
//!
//! Operations: `event_channel_op(cmd, ptr to the command's struct)`, with
//! Xen's numbers and layouts (`EVTCHNOP_*`).
//!
//! # Interdomain channels
//! Domain A offers a channel to B with [`ALLOC_UNBOUND`] (`remote_dom` =
//! B); only B may then [`BIND_INTERDOMAIN`] to that port, which connects a
//! fresh port of B to it. [`SEND`] on either end raises the other. When one
//! end is [`CLOSE`]d, or its domain dies, the other end reverts to unbound
//! (for the same remote), so a peer learns of it through [`STATUS`] and can
//! be bound again. The privileged domain may allocate unbound ports, query
//! status and reset on behalf of any domain (its toolstack sets up channels
//! between domUs); every other domain only for itself (`EPERM`).

use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Connect to another domain's unbound port: [`BindInterdomain`].
pub const BIND_INTERDOMAIN: u64 = 0;
/// Bind a virtual IRQ: [`BindVirq`].
pub const BIND_VIRQ: u64 = 1;
/// Bind a physical IRQ (a pirq dom0 mapped with
/// [`crate::physdev::MAP_PIRQ`]) to a fresh port: [`BindPirq`]. The
/// privileged domain only (`EPERM` for any other, and for a pirq it has not
/// mapped); a pirq bound already is `EEXIST`. Closing the port masks the
/// line and unbinds it (the pirq stays mapped).
pub const BIND_PIRQ: u64 = 2;
/// Close a port: [`Close`].
pub const CLOSE: u64 = 3;
/// Notify the other end of a port: [`Send`]. An interdomain port raises its
/// peer, an IPI port itself, the console port the console backend. Sending
/// on a virtual-IRQ or closed port is `EINVAL`, on an unbound one
/// `ENOTCONN`.
pub const SEND: u64 = 4;
/// Query a port: [`Status`].
pub const STATUS: u64 = 5;
/// Allocate a port for a named remote domain to bind: [`AllocUnbound`].
pub const ALLOC_UNBOUND: u64 = 6;
/// Bind an IPI port: [`BindIpi`].
pub const BIND_IPI: u64 = 7;
/// Choose the vCPU a port notifies: [`BindVcpu`] (vCPU 0 only, until SMP).
pub const BIND_VCPU: u64 = 8;
/// Unmask a port, delivering a pending event: [`Unmask`].
pub const UNMASK: u64 = 9;
/// Close every port of a domain (the console port stays): [`Reset`].
pub const RESET: u64 = 10;

/// Virtual IRQ: the real-time one-shot timer fired.
pub const VIRQ_TIMER: u32 = 0;
/// Virtual IRQ (privileged domain only): a domain died (Xen's
/// `VIRQ_DOM_EXC`). The store's domain rescans with `domctl`
/// `GETDOMAININFO` to see which.
pub const VIRQ_DOM_EXC: u32 = 3;
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

/// Port states reported by `STATUS` (Xen's `EVTCHNSTAT_*`).
pub mod status {
    /// Not in use.
    pub const CLOSED: u32 = 0;
    /// Allocated for a remote domain to bind.
    pub const UNBOUND: u32 = 1;
    /// Connected to another end (a port of a domain, or the console
    /// backend, reported as the hypervisor's `DOMID_XEN`-like 0x7ff2).
    pub const INTERDOMAIN: u32 = 2;
    /// Bound to a physical IRQ (`u0`: the pirq).
    pub const PIRQ: u32 = 3;
    /// Bound to a virtual IRQ.
    pub const VIRQ: u32 = 4;
    /// An IPI port.
    pub const IPI: u32 = 5;
}

/// The domain id `STATUS` reports as the console port's other end.
pub const DOMID_CONSOLE_BACKEND: u16 = 0x7ff2;

/// `ALLOC_UNBOUND` argument (Xen's `evtchn_alloc_unbound`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct AllocUnbound {
    /// The domain that gets the port (`DOMID_SELF`; another only for the
    /// privileged domain).
    pub dom: u16,
    /// The only domain that may bind it (`DOMID_SELF` for a loopback).
    pub remote_dom: u16,
    /// Out: the port.
    pub port: u32,
}

/// `BIND_INTERDOMAIN` argument (Xen's `evtchn_bind_interdomain`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BindInterdomain {
    /// The domain that offered the port.
    pub remote_dom: u16,
    /// Padding.
    pub pad: u16,
    /// Its unbound port.
    pub remote_port: u32,
    /// Out: the caller's new port, connected to it.
    pub local_port: u32,
}

/// `BIND_IPI` argument.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BindIpi {
    /// vCPU (must be 0).
    pub vcpu: u32,
    /// Out: the port.
    pub port: u32,
}

/// `BIND_VCPU` argument.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BindVcpu {
    /// A port in use.
    pub port: u32,
    /// vCPU (must be 0).
    pub vcpu: u32,
}

/// [`BindPirq::flags`]: the caller would share the line (accepted; lines
/// are never shared: each GSI has one owner).
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

/// `BIND_PIRQ` argument (Xen's `evtchn_bind_pirq`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BindPirq {
    /// The pirq (from `PHYSDEVOP_map_pirq`).
    pub pirq: u32,
    /// 0 or [`BIND_PIRQ_WILL_SHARE`]; other bits are `EINVAL`.
    pub flags: u32,
    /// Out: the port.
    pub port: u32,
}

/// `RESET` argument.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Reset {
    /// The domain (`DOMID_SELF`; another only for the privileged domain).
    pub dom: u16,
}

/// `STATUS` argument (Xen's `evtchn_status`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Status {
    /// Domain (`DOMID_SELF`; another only for the privileged domain).
    pub dom: u16,
    /// Padding.
    pub pad: u16,
    /// The port.
    pub port: u32,
    /// Out: one of [`status`].
    pub status: u32,
    /// Out: vCPU notified.
    pub vcpu: u32,
    /// Out (Xen's union): the remote domain for `UNBOUND` and
    /// `INTERDOMAIN`, the virtual IRQ for `VIRQ`, the pirq for `PIRQ`.
    pub u0: u32,
    /// Out: the remote port for `INTERDOMAIN`.
    pub u1: u32,
}

const _: () = {
    assert!(size_of::<BindVirq>() == 12);
    assert!(size_of::<BindPirq>() == 12);
    assert!(core::mem::offset_of!(BindPirq, flags) == 4);
    assert!(core::mem::offset_of!(BindPirq, port) == 8);
    assert!(size_of::<Close>() == 4);
    assert!(size_of::<Unmask>() == 4);
    assert!(size_of::<Send>() == 4);
    assert!(size_of::<Status>() == 24);
    assert!(size_of::<AllocUnbound>() == 8);
    assert!(size_of::<BindInterdomain>() == 12);
    assert!(size_of::<BindIpi>() == 8);
    assert!(size_of::<BindVcpu>() == 8);
    assert!(size_of::<Reset>() == 2);
    assert!(core::mem::offset_of!(Status, u0) == 16);
    assert!(core::mem::offset_of!(BindInterdomain, local_port) == 8);
};
