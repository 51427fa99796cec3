//! A request/response channel to another domain: a `ring-protocol` ring in
//! a page the front grants to the back, plus an interdomain event channel.
//!
//! The front offers the channel ([`FrontChannel::offer`]): it takes a fresh
//! page of its own, initialises the ring in it, grants it read-write to the
//! back and offers an event port; it then tells the back the pair
//! ([`FrontChannel::gref`], [`FrontChannel::port`]) (through the store, or
//! a command line). The back connects with that pair
//! ([`BackChannel::connect`]): it maps the grant, attaches to the ring and
//! binds the port. From then on both drive `ring` as the `ring-protocol`
//! docs show, and call `notify` when `push_and_check_notify` says so.
//!
//! ```ignore
//! use pvguest_sdk::channel::{BackChannel, FrontChannel};
//! use pvguest_sdk::grant::GrantTable;
//! use ring_protocol::{Completion, Descriptor};
//!
//! // Front, in domain 6, for domain 5:
//! let mut table = GrantTable::setup(1)?;
//! let mut front = FrontChannel::<Descriptor, Completion>::offer(5, &mut table)?;
//! // ... tell domain 5 (front.gref(), front.port()) ...
//! front.ring.try_push(Descriptor { id: 1, ..Default::default() })?;
//! if front.ring.push_and_check_notify()? { front.notify()?; }
//!
//! // Back, in domain 5, told (gref, port):
//! let mut back = BackChannel::<Descriptor, Completion>::connect(6, gref, port, spare_va)?;
//! // ... or, with no store to tell it, trying the front's low ports
//! // (only a port offered to us binds; nothing is left behind otherwise):
//! let mut back = (1..16)
//!     .find_map(|p| BackChannel::<Descriptor, Completion>::connect(6, 8, p, spare_va).ok())
//!     .expect("no port of domain 6 was offered to us");
//! while let Some(req) = back.ring.pop_request()? {
//!     back.ring.try_push(Completion { id: req.id, ..Default::default() })?;
//! }
//! if back.ring.push_and_check_notify()? { back.notify()?; }
//! ```
//!
//! `sample-guests/src/bin/pingpong.rs` is a complete front and back.
//!
//! Every slot the peer writes is an allegation: `ring-protocol` validates
//! indices and copies each slot once; the contents are the protocol's to
//! validate.

use crate::event::{EventChannel, Handler, Port};
use crate::grant::{self, GrantError, GrantTable, Mapping};
use crate::mm;
use pvguest_abi::Errno;
use ring_protocol::{Back, Front, LayoutError, Pod, SharedMem};

/// Why a channel could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// Granting or mapping the ring page.
    Grant(GrantError),
    /// The event channel.
    Event(Errno),
    /// No free page for the ring.
    NoMemory,
    /// The ring in the page.
    Ring(LayoutError),
}

/// The front end: owns the ring page and grants it.
pub struct FrontChannel<Req: Pod, Rsp: Pod> {
    /// The ring (see `ring-protocol`'s `Front`).
    pub ring: Front<'static, Req, Rsp>,
    chan: EventChannel,
    gref: u32,
}

impl<Req: Pod, Rsp: Pod> FrontChannel<Req, Rsp> {
    /// Offers a channel to domain `back`, granting the ring page through
    /// `table`.
    pub fn offer(back: u16, table: &mut GrantTable) -> Result<Self, ChannelError> {
        let page = mm::alloc_page().ok_or(ChannelError::NoMemory)?;
        // SAFETY: the page is ours, mapped read-write at its linear address
        // for the life of the domain (the SDK's allocator never frees), and
        // used only through this ring and the peer's mapping of it.
        let mem = unsafe { SharedMem::new(page.va() as *mut u8, 4096) }.map_err(ChannelError::Ring)?;
        let ring = Front::init(mem).map_err(ChannelError::Ring)?;
        let gref = table.grant(back, page, false).map_err(ChannelError::Grant)?.gref();
        let chan = EventChannel::offer(back).map_err(ChannelError::Event)?;
        Ok(FrontChannel { ring, chan, gref })
    }

    /// The grant reference of the ring page, for the back.
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// Our event port, for the back.
    pub fn port(&self) -> Port {
        self.chan.port()
    }

    /// Runs `handler` on the back's notifications.
    pub fn on_event(&self, handler: Handler) -> Result<(), Errno> {
        self.chan.on_event(handler)
    }

    /// Notifies the back.
    pub fn notify(&self) -> Result<(), Errno> {
        self.chan.send()
    }

    /// Whether the back has connected its event port.
    pub fn connected(&self) -> bool {
        matches!(self.chan.status(), Ok(crate::event::PortStatus::Connected { .. }))
    }
}

/// The back end: maps the front's ring page.
pub struct BackChannel<Req: Pod, Rsp: Pod> {
    /// The ring (see `ring-protocol`'s `Back`).
    pub ring: Back<'static, Req, Rsp>,
    chan: EventChannel,
    /// Keeps the page mapped for `ring` (never unmapped while the channel
    /// lives: dropping the channel leaves it mapped).
    _mapping: Mapping,
}

impl<Req: Pod, Rsp: Pod> BackChannel<Req, Rsp> {
    /// Connects to the channel domain `front` offered: binds its event port
    /// `port`, then maps its grant `gref` at `va` (a page-aligned address
    /// whose entry exists and is not present) and attaches to the ring.
    ///
    /// The port is bound first, so a back that does not know the port yet
    /// can try the front's ports in turn: [`ChannelError::Event`] means
    /// "not this port" and leaves nothing behind. If the mapping or the
    /// ring then fails, the port is closed again.
    pub fn connect(front: u16, gref: u32, port: u32, va: u64) -> Result<Self, ChannelError> {
        let chan = EventChannel::connect(front, port).map_err(ChannelError::Event)?;
        let mapping = match grant::map(front, gref, va, false) {
            Ok(m) => m,
            Err(e) => {
                let _ = chan.close();
                return Err(ChannelError::Grant(e));
            }
        };
        // SAFETY: the page stays mapped at `va` for as long as this channel
        // lives (it owns the mapping and never unmaps it), so `'static` is
        // never outlived by a use through the ring; the front writes it
        // concurrently, which `SharedMem` is built for.
        let ring = match unsafe { SharedMem::new(va as *mut u8, 4096) }.and_then(Back::attach) {
            Ok(r) => r,
            Err(e) => {
                let _ = mapping.unmap();
                let _ = chan.close();
                return Err(ChannelError::Ring(e));
            }
        };
        Ok(BackChannel { ring, chan, _mapping: mapping })
    }

    /// Runs `handler` on the front's notifications.
    pub fn on_event(&self, handler: Handler) -> Result<(), Errno> {
        self.chan.on_event(handler)
    }

    /// Our event port.
    pub fn port(&self) -> Port {
        self.chan.port()
    }

    /// Ends the channel: unmaps the front's ring page (its frame is freed
    /// by this unmap if the front died) and closes our port. `Err` if the
    /// unmap failed (the address is then still in use).
    pub fn close(self) -> Result<(), GrantError> {
        let BackChannel { ring: _, chan, _mapping: mapping } = self;
        let r = mapping.unmap().map_err(|(_, e)| e);
        let _ = chan.close();
        r
    }

    /// Notifies the front.
    pub fn notify(&self) -> Result<(), Errno> {
        self.chan.send()
    }

    /// Whether the front's end is still connected.
    pub fn connected(&self) -> bool {
        matches!(self.chan.status(), Ok(crate::event::PortStatus::Connected { .. }))
    }
}
