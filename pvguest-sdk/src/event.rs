//! Events: handlers for event-channel ports, the virtual interrupt flag,
//! and blocking.
//!
//! ```ignore
//! use pvguest_sdk::{event, abi::event::VIRQ_TIMER};
//!
//! fn on_timer(_port: event::Port) { /* ... */ }
//!
//! event::init();
//! let port = event::bind_virq(VIRQ_TIMER, on_timer)?;
//! event::enable();      // events were masked at boot
//! event::block();       // sleep until something arrives
//! ```
//!
//! Two domains talk through an [`EventChannel`]: one offers a port to the
//! other, which connects to it; then either end's [`EventChannel::send`]
//! runs the other's handler.
//!
//! ```ignore
//! use pvguest_sdk::event::{self, EventChannel};
//!
//! // In domain 5 (the back end), for domain 6:
//! let chan = EventChannel::offer(6)?;           // tell domain 6 chan.port()
//! chan.on_event(|_| { /* a request arrived */ })?;
//!
//! // In domain 6 (the front end), given that port:
//! let chan = EventChannel::connect(5, port)?;
//! chan.send()?;                                  // runs domain 5's handler
//! ```
//!
//! Every port starts masked: the SDK masks all of them before `main` runs,
//! and [`EventChannel::close`] masks a port again before closing it. An
//! event that arrives on a port before its handler is set (the peer
//! connected and sent at once, say) therefore stays pending, and
//! [`EventChannel::on_event`] (or [`bind_virq`]) delivers it when it
//! unmasks the port: nothing is lost between [`EventChannel::offer`] and
//! `on_event`. [`crate::sched::poll`] works on masked ports too.
//!
//! Handlers run in the upcall, on the interrupted stack, with events
//! masked; they may not block. The dispatcher clears a port's pending bit
//! before calling its handler, so an event that fires again while the
//! handler runs is delivered again, never lost.

use crate::shared;
use core::sync::atomic::{AtomicUsize, Ordering};
use pvguest_abi::event::{
    status, AllocUnbound, BindInterdomain, BindVirq, Close, Send, Status, Unmask, ALLOC_UNBOUND, BIND_INTERDOMAIN,
    BIND_VIRQ, CLOSE, SEND, STATUS, UNMASK,
};
use pvguest_abi::trap::BounceFrame;
use pvguest_abi::{hypercall, Errno, DOMID_SELF};

/// An event-channel port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(pub u32);

/// An event handler.
pub type Handler = fn(Port);

/// Ports that can have a handler (the hypervisor offers 4096; a guest
/// kernel that needs more handlers raises this).
const PORTS: usize = 1024;
static HANDLERS: [AtomicUsize; PORTS] = [const { AtomicUsize::new(0) }; PORTS];

extern "C" {
    fn pvguest_event_entry();
}

pub(crate) fn event_entry_address() -> u64 {
    pvguest_event_entry as *const () as u64
}

/// Registers the SDK's event upcall with the hypervisor. Events stay masked
/// until [`enable`]. The runtime does this before `main`; calling it again
/// changes nothing.
pub fn init() {
    // SAFETY: set_callbacks only reads its arguments.
    let r = unsafe { crate::hypercall::raw(hypercall::SET_CALLBACKS, [event_entry_address(), 0, 0, 0, 0]) };
    Errno::decode(r).expect("the SDK's event entry is a valid callback");
}

/// Binds virtual IRQ `virq` to a new port with `handler`, and unmasks it.
pub fn bind_virq(virq: u32, handler: Handler) -> Result<Port, Errno> {
    let mut arg = BindVirq { virq, vcpu: 0, port: 0 };
    // SAFETY: `arg` is a local the hypervisor writes `port` into.
    Errno::decode(unsafe {
        crate::hypercall::raw(hypercall::EVENT_CHANNEL_OP, [BIND_VIRQ, &mut arg as *mut BindVirq as u64, 0, 0, 0])
    })?;
    let port = Port(arg.port);
    set_handler(port, handler)?;
    unmask(port)?;
    Ok(port)
}

/// Sets the handler of `port`.
pub fn set_handler(port: Port, handler: Handler) -> Result<(), Errno> {
    HANDLERS.get(port.0 as usize).ok_or(Errno::EINVAL)?.store(handler as usize, Ordering::Release);
    Ok(())
}

/// Whether `port` has an event pending (not yet taken by its handler; a
/// masked port keeps its events pending).
pub fn is_pending(port: Port) -> bool {
    let w = port.0 as usize / 64;
    w < pvguest_abi::shared_info::NR_EVENT_CHANNELS / 64
        && shared::pending(w).load(Ordering::SeqCst) & (1 << (port.0 % 64)) != 0
}

/// Clears `port`'s pending bit without running its handler: for a loop
/// that waits with [`crate::sched::poll`] (which returns while a polled
/// port is pending): clear, check for work, then poll, so an event that
/// comes after the check still ends the poll.
pub fn clear_pending(port: Port) {
    let w = port.0 as usize / 64;
    if w < pvguest_abi::shared_info::NR_EVENT_CHANNELS / 64 {
        shared::pending(w).fetch_and(!(1 << (port.0 % 64)), Ordering::SeqCst);
    }
}

/// Masks every port (the runtime does this before `main`; see the module
/// docs).
pub(crate) fn mask_all() {
    for w in 0..pvguest_abi::shared_info::NR_EVENT_CHANNELS / 64 {
        shared::mask(w).store(u64::MAX, Ordering::SeqCst);
    }
}

/// Masks `port`: its events stay pending, undelivered, until [`unmask`].
pub fn mask(port: Port) {
    shared::mask(port.0 as usize / 64).fetch_or(1 << (port.0 % 64), Ordering::SeqCst);
}

/// Unmasks `port`; an event that arrived while masked is delivered now.
pub fn unmask(port: Port) -> Result<(), Errno> {
    let mut arg = Unmask { port: port.0 };
    // SAFETY: the hypervisor only reads `arg`.
    Errno::decode(unsafe {
        crate::hypercall::raw(hypercall::EVENT_CHANNEL_OP, [UNMASK, &mut arg as *mut Unmask as u64, 0, 0, 0])
    })
    .map(|_| ())
}

/// Enables event delivery (clears the virtual interrupt mask). Anything
/// pending is delivered before this returns.
pub fn enable() {
    shared::upcall_mask().store(0, Ordering::SeqCst);
    if shared::upcall_pending().load(Ordering::SeqCst) != 0 {
        // Any hypercall returns through the hypervisor's upcall check.
        crate::version::abi_version();
    }
}

/// Disables event delivery; returns whether it was enabled.
pub fn disable() -> bool {
    shared::upcall_mask().swap(1, Ordering::SeqCst) == 0
}

/// Sleeps until an event is delivered (enables events, atomically with the
/// check for pending ones).
pub fn block() {
    crate::sched::block();
}

/// Sleeps until `ready()` returns `true`, then returns with events enabled.
/// Events are masked around each call of `ready`, so one that arrives
/// between the check and the sleep is not missed: [`block`] re-enables
/// them atomically with its own check for pending ones, and their handlers
/// run before `ready` is asked again.
///
/// ```ignore
/// static GOT: AtomicU64 = AtomicU64::new(0);   // counted by a handler
/// event::block_until(|| GOT.load(Ordering::SeqCst) > seen);
/// ```
pub fn block_until(mut ready: impl FnMut() -> bool) {
    loop {
        disable();
        if ready() {
            enable();
            return;
        }
        block();
    }
}

/// Sends an event on `port` (its peer's handler runs; events coalesce
/// while the peer's port is pending). [`EventChannel::send`] for a channel
/// held as such; this form is for a port known only by number (in an event
/// handler, say). `ENOTCONN` on a port nobody has connected to, `EINVAL` on
/// one that is not open.
pub fn send(port: Port) -> Result<(), Errno> {
    op(SEND, &mut Send { port: port.0 }).map(|_| ())
}

#[no_mangle]
extern "C" fn pvguest_event_upcall(frame: *const BounceFrame) {
    // SAFETY: the entry stub passes the bounce frame the hypervisor wrote
    // on this stack for this upcall; nothing else writes it meanwhile.
    let saved = unsafe { (&raw const (*frame).saved_upcall_mask).read() };
    // The page's address once for the whole dispatch (it never moves).
    let page = shared::page();
    loop {
        page.upcall_pending().store(0, Ordering::SeqCst);
        let mut sel = page.pending_sel().swap(0, Ordering::SeqCst);
        while sel != 0 {
            let w = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            let mut bits = page.pending(w).load(Ordering::SeqCst) & !page.mask(w).load(Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                page.pending(w).fetch_and(!(1u64 << b), Ordering::SeqCst);
                let port = (w * 64) as u32 + b;
                let h = HANDLERS.get(port as usize).map_or(0, |h| h.load(Ordering::Acquire));
                if h != 0 {
                    // SAFETY: only `set_handler` stores non-zero values,
                    // and it stores `Handler` function pointers.
                    let f: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
                    f(Port(port));
                }
            }
        }
        page.upcall_mask().store(saved as u8, Ordering::SeqCst);
        if saved != 0 || page.upcall_pending().load(Ordering::SeqCst) == 0 {
            break;
        }
        page.upcall_mask().store(1, Ordering::SeqCst);
    }
}

/// `event_channel_op(cmd, arg)` on a local struct the hypervisor reads
/// and may write.
fn op<T>(cmd: u64, arg: &mut T) -> Result<u64, Errno> {
    // SAFETY: `arg` is a live local of the layout `cmd` expects (each
    // caller pairs a command with its ABI struct); the hypervisor writes
    // only its out fields.
    Errno::decode(unsafe { crate::hypercall::raw(hypercall::EVENT_CHANNEL_OP, [cmd, arg as *mut T as u64, 0, 0, 0]) })
}

/// What a port is connected to, as the hypervisor reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortStatus {
    /// Not in use.
    Closed,
    /// Offered to `remote`, not connected (yet, or any more: the peer
    /// closed its end or died).
    Unbound {
        /// The domain that may connect.
        remote: u16,
    },
    /// Connected to `port` of `remote`.
    Connected {
        /// The peer domain.
        remote: u16,
        /// The peer's port.
        port: u32,
    },
    /// Something else (a virtual IRQ, an IPI, the console).
    Other(u32),
}

/// The state of `port` (of this domain).
pub fn status(port: Port) -> Result<PortStatus, Errno> {
    let mut s = Status { dom: DOMID_SELF as u16, port: port.0, ..Status::default() };
    op(STATUS, &mut s)?;
    Ok(match s.status {
        status::CLOSED => PortStatus::Closed,
        status::UNBOUND => PortStatus::Unbound { remote: s.u0 as u16 },
        status::INTERDOMAIN => PortStatus::Connected { remote: s.u0 as u16, port: s.u1 },
        other => PortStatus::Other(other),
    })
}

/// One end of an interdomain event channel (see the module docs). Dropping
/// it leaves the port open; [`EventChannel::close`] closes it, and the peer's
/// end then reverts to unbound.
#[derive(Debug)]
pub struct EventChannel {
    port: Port,
}

impl EventChannel {
    /// Offers a new port to domain `remote` (only it may connect). Tell the
    /// peer [`EventChannel::port`] (through the store, or a command line).
    pub fn offer(remote: u16) -> Result<EventChannel, Errno> {
        let mut a = AllocUnbound { dom: DOMID_SELF as u16, remote_dom: remote, port: 0 };
        op(ALLOC_UNBOUND, &mut a)?;
        Ok(EventChannel { port: Port(a.port) })
    }

    /// A port the hypervisor bound for this domain already (a console
    /// taken over: [`crate::domctl::console_takeover`]).
    pub(crate) fn bound(port: u32) -> EventChannel {
        EventChannel { port: Port(port) }
    }

    /// Connects to `remote_port`, which domain `remote` offered to us.
    /// `EINVAL` until the peer has offered it (so a caller that started
    /// first may retry).
    pub fn connect(remote: u16, remote_port: u32) -> Result<EventChannel, Errno> {
        let mut b = BindInterdomain { remote_dom: remote, pad: 0, remote_port, local_port: 0 };
        op(BIND_INTERDOMAIN, &mut b)?;
        Ok(EventChannel { port: Port(b.local_port) })
    }

    /// Connects to the first of `remote`'s ports in `ports` that was offered
    /// to us, yielding the CPU until one is. Without a store to say which
    /// port, this is how a peer finds one: only a port offered to us binds.
    /// Waits for ever if `remote` never offers one.
    pub fn connect_first_offered(remote: u16, ports: core::ops::Range<u32>) -> EventChannel {
        loop {
            if let Some(c) = ports.clone().find_map(|p| EventChannel::connect(remote, p).ok()) {
                return c;
            }
            crate::sched::yield_now();
        }
    }

    /// Our port.
    pub fn port(&self) -> Port {
        self.port
    }

    /// Runs `handler` on every event from the peer (and unmasks the port).
    pub fn on_event(&self, handler: Handler) -> Result<(), Errno> {
        set_handler(self.port, handler)?;
        unmask(self.port)
    }

    /// Notifies the peer: its handler runs (events coalesce while its port
    /// is pending). `ENOTCONN` while nobody has connected to an offered port.
    pub fn send(&self) -> Result<(), Errno> {
        send(self.port)
    }

    /// The channel's state.
    pub fn status(&self) -> Result<PortStatus, Errno> {
        status(self.port)
    }

    /// Closes our end; the peer's end reverts to unbound. The port is
    /// masked first, so whatever reuses its number starts masked.
    pub fn close(self) -> Result<(), Errno> {
        mask(self.port);
        if let Some(h) = HANDLERS.get(self.port.0 as usize) {
            h.store(0, Ordering::Release);
        }
        op(CLOSE, &mut Close { port: self.port.0 }).map(|_| ())
    }
}
