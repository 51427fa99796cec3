//! The byte transport between a domain and the device store: the store
//! page start info names ([`pvguest_abi::start_info::StoreInfo`]), a
//! `ring-protocol` [`ByteChannel`], and the store's event port. The
//! message layer on top of it is [`crate::store`].
//!
//! # Who owns what
//! - The page is the domain's own frame. The domain builder initialised it
//!   and granted it read-write to the store's domain under
//!   [`pvguest_abi::grant::GNTTAB_RESERVED_XENSTORE`]; the store maps that
//!   grant and attaches as the back ([`StoreLink::back`]).
//! - The front ([`StoreLink::front`], taken once per domain) produces on
//!   the first half (requests) and consumes the second (replies and watch
//!   events); the back the other way round. Every index the peer writes is
//!   validated by `ring-protocol`, and a violation latches the endpoint:
//!   [`LinkError::Ring`] from then on.
//! - Notifications honour the rings' event indices (hold-off): a burst of
//!   writes costs one event.
//!
//! The console page has the same shape (a `ByteChannel` in the domain's
//! own frame, granted to the store's domain, under
//! [`pvguest_abi::grant::GNTTAB_RESERVED_CONSOLE`]): dom0's console daemon
//! is its back through [`BackLink::console`], which also takes the console
//! over from the hypervisor.
//!
//! A peer that stops reading cannot stall us: [`StoreLink::send`] writes
//! what fits and returns how much, and [`StoreLink::send_all`] gives up
//! after a bounded number of waits ([`LinkError::Stalled`]).

use crate::event::{self, EventChannel, Port};
use crate::grant::{self, Mapping};
use core::sync::atomic::{AtomicBool, Ordering};
use pvguest_abi::grant::{GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
use pvguest_abi::Errno;
use ring_protocol::{ByteChannel, RingError, SharedMem};

/// Why the link failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// Start info names no store page (the privileged domain, or a bundle
    /// without one).
    NoStore,
    /// The front was already taken in this domain.
    Taken,
    /// The page does not hold a valid channel.
    Layout,
    /// The peer broke the ring protocol; the link is dead.
    Ring(RingError),
    /// The event channel.
    Event(Errno),
    /// The peer made no room within [`MAX_WAITS`] waits.
    Stalled,
}

/// Waits for room [`StoreLink::send_all`] makes before it gives up.
pub const MAX_WAITS: u32 = 1000;

static TAKEN: AtomicBool = AtomicBool::new(false);

fn wake(_: Port) {}

/// One end of a store connection.
pub struct StoreLink<'a> {
    ch: ByteChannel<'a>,
    port: Port,
}

impl StoreLink<'static> {
    /// This domain's end (the front), from start info. Its port gets a
    /// no-op handler and is unmasked, so a reply wakes a domain blocked in
    /// [`StoreLink::wait`].
    pub fn front() -> Result<StoreLink<'static>, LinkError> {
        let s = crate::rt::start_info().store;
        if !s.present() {
            return Err(LinkError::NoStore);
        }
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Err(LinkError::Taken);
        }
        // SAFETY: the builder maps the store page read-write at `va` in the
        // domain's linear map for its whole life; `TAKEN` makes this the
        // only endpoint in this domain, and it touches the page only
        // through `ring-protocol`'s volatile and atomic accesses.
        let mem = unsafe { SharedMem::new(s.va as *mut u8, 4096) }.map_err(|_| LinkError::Layout)?;
        let ch = ByteChannel::front_attach(mem).map_err(|_| LinkError::Layout)?;
        let port = Port(s.evtchn);
        event::set_handler(port, wake).map_err(LinkError::Event)?;
        event::unmask(port).map_err(LinkError::Event)?;
        Ok(StoreLink { ch, port })
    }
}

impl<'a> StoreLink<'a> {
    /// The store's end of a domain's connection: `mem` is the domain's
    /// store page as the store mapped it, `port` the store's end of the
    /// domain's store port (bound with `bind_interdomain`).
    pub fn back(mem: SharedMem<'a>, port: Port) -> Result<StoreLink<'a>, LinkError> {
        let ch = ByteChannel::back_attach(mem).map_err(|_| LinkError::Layout)?;
        Ok(StoreLink { ch, port })
    }

    /// The local port of the connection.
    pub fn port(&self) -> Port {
        self.port
    }

    /// Writes what fits of `bytes` and notifies the peer if the ring asks
    /// for it; returns how many bytes went.
    pub fn send(&mut self, bytes: &[u8]) -> Result<usize, LinkError> {
        let n = self.ch.tx.write(bytes).map_err(LinkError::Ring)?;
        if self.ch.tx.push_and_check_notify().map_err(LinkError::Ring)? {
            self.notify();
        }
        Ok(n)
    }

    /// Writes all of `bytes` if they fit now, else nothing (a message that
    /// must not arrive cut); notifies the peer if the ring asks. How many
    /// bytes went: all or none.
    pub fn send_whole(&mut self, bytes: &[u8]) -> Result<usize, LinkError> {
        let room = self.ch.tx.poll_space().map_err(LinkError::Ring)?;
        if (room as usize) < bytes.len() {
            return Ok(0);
        }
        self.send(bytes)
    }

    /// Writes all of `bytes`, waiting for room as needed (bounded: see
    /// [`LinkError::Stalled`]).
    pub fn send_all(&mut self, mut bytes: &[u8]) -> Result<(), LinkError> {
        let mut waits = 0;
        while !bytes.is_empty() {
            let n = self.send(bytes)?;
            bytes = &bytes[n..];
            if n == 0 {
                waits += 1;
                if waits > MAX_WAITS {
                    return Err(LinkError::Stalled);
                }
                // Make sure the peer knows there is something to read.
                self.notify();
                let tx = &mut self.ch.tx;
                event::block_until(|| !matches!(tx.final_check_for_space(1), Ok(false)));
            }
        }
        Ok(())
    }

    /// Reads what has arrived (never blocks), frees the space and notifies
    /// the peer if the ring asks for it; returns how many bytes.
    pub fn recv(&mut self, out: &mut [u8]) -> Result<usize, LinkError> {
        let n = self.ch.rx.read(out).map_err(LinkError::Ring)?;
        // Also when nothing came: a final check may owe the peer a
        // notification of space released earlier.
        if self.ch.rx.release_and_check_notify().map_err(LinkError::Ring)? {
            self.notify();
        }
        Ok(n)
    }

    /// [`StoreLink::recv`], with `f` given the bytes before their space is
    /// freed: what `f` does with them is done before the peer (or anyone
    /// reading the ring's indices) can see them consumed.
    pub fn recv_with(&mut self, out: &mut [u8], f: impl FnOnce(&[u8])) -> Result<usize, LinkError> {
        let n = self.ch.rx.read(out).map_err(LinkError::Ring)?;
        f(&out[..n]);
        if self.ch.rx.release_and_check_notify().map_err(LinkError::Ring)? {
            self.notify();
        }
        Ok(n)
    }

    /// Whether bytes are waiting, arming the peer's notification if not
    /// (the ring's final check): `false` means an event will come when
    /// some arrive.
    pub fn readable(&mut self) -> Result<bool, LinkError> {
        self.ch.rx.final_check().map_err(LinkError::Ring)
    }

    /// Sleeps until bytes arrive.
    pub fn wait(&mut self) -> Result<(), LinkError> {
        let rx = &mut self.ch.rx;
        let mut err = None;
        event::block_until(|| match rx.final_check() {
            Ok(r) => r,
            Err(e) => {
                err = Some(e);
                true
            }
        });
        err.map_or(Ok(()), |e| Err(LinkError::Ring(e)))
    }

    /// Sends an event to the peer.
    pub fn notify(&self) {
        let _ = event::send(self.port);
    }

    /// The latched ring error, if any.
    pub fn error(&self) -> Option<RingError> {
        self.ch.tx.error().or(self.ch.rx.error())
    }
}

/// The store's end of one domain's connection, with what it holds: the
/// bound port and the mapping of the domain's store page (in a
/// [`crate::vmap`] slot). [`BackLink::close`] gives both back.
pub struct BackLink {
    // Declared first: dropped before the mapping it points into.
    link: StoreLink<'static>,
    chan: EventChannel,
    mapping: Mapping,
    va: u64,
}

impl BackLink {
    /// Connects to domain `domid`'s store page: maps its reserved store
    /// grant read-write, binds its store port `port` (what
    /// `GETDOMAININFO` reported) and attaches as the back. Anything done is
    /// undone on failure.
    pub fn connect(domid: u16, port: u32) -> Result<BackLink, BackError> {
        Self::attach(domid, GNTTAB_RESERVED_XENSTORE, || EventChannel::connect(domid, port).map_err(BackError::Event))
    }

    /// Takes domain `domid`'s console over and attaches as the back of its
    /// console ring: maps its reserved console grant
    /// ([`GNTTAB_RESERVED_CONSOLE`]) read-write, then
    /// [`crate::domctl::console_takeover`] gives the port connected to the
    /// domain's console port. The back consumes the domain's output (the
    /// page's first half) and produces its input (the second). Anything
    /// done is undone on failure; a failed takeover leaves the console the
    /// hypervisor's.
    pub fn console(domid: u16) -> Result<BackLink, BackError> {
        Self::attach(domid, GNTTAB_RESERVED_CONSOLE, || {
            crate::domctl::console_takeover(u32::from(domid)).map_err(BackError::Takeover)
        })
    }

    /// Maps `domid`'s grant `gref` in a fresh slot, then gets the channel
    /// (`chan`: after the map, so that a map that fails binds no port and
    /// takes nothing over), and attaches as the back; undoes what it did on
    /// failure.
    fn attach(
        domid: u16,
        gref: u32,
        chan: impl FnOnce() -> Result<EventChannel, BackError>,
    ) -> Result<BackLink, BackError> {
        let va = crate::vmap::alloc(1).map_err(BackError::Event)?;
        let mapping = match grant::map(domid, gref, va, false) {
            Ok(m) => m,
            Err(e) => {
                crate::vmap::free(va, 1);
                return Err(BackError::Grant(e));
            }
        };
        let undo_map = |mapping: Mapping| {
            if mapping.unmap().is_ok() {
                crate::vmap::free(va, 1);
            }
        };
        let chan = match chan() {
            Ok(c) => c,
            Err(e) => {
                undo_map(mapping);
                return Err(e);
            }
        };
        // SAFETY: the page stays mapped at `va` while this `BackLink`
        // lives: it owns the mapping, which only `close` unmaps, after the
        // link is gone (the link is a private field, never handed out by
        // value); the domain writes the page concurrently, which
        // `SharedMem` is built for.
        let mem = unsafe { SharedMem::new(va as *mut u8, 4096) };
        let link = match mem.map_err(|_| LinkError::Layout).and_then(|m| StoreLink::back(m, chan.port())) {
            Ok(l) => l,
            Err(e) => {
                undo_map(mapping);
                let _ = chan.close();
                return Err(BackError::Link(e));
            }
        };
        Ok(BackLink { link, chan, mapping, va })
    }

    /// The local port (its events say the domain wrote or read).
    pub fn port(&self) -> Port {
        self.chan.port()
    }

    /// [`StoreLink::send`].
    pub fn send(&mut self, bytes: &[u8]) -> Result<usize, LinkError> {
        self.link.send(bytes)
    }

    /// [`StoreLink::recv`].
    pub fn recv(&mut self, out: &mut [u8]) -> Result<usize, LinkError> {
        self.link.recv(out)
    }

    /// [`StoreLink::send_whole`].
    pub fn send_whole(&mut self, bytes: &[u8]) -> Result<usize, LinkError> {
        self.link.send_whole(bytes)
    }

    /// [`StoreLink::recv_with`].
    pub fn recv_with(&mut self, out: &mut [u8], f: impl FnOnce(&[u8])) -> Result<usize, LinkError> {
        self.link.recv_with(out, f)
    }

    /// [`StoreLink::error`].
    pub fn error(&self) -> Option<RingError> {
        self.link.error()
    }

    /// [`StoreLink::readable`].
    pub fn readable(&mut self) -> Result<bool, LinkError> {
        self.link.readable()
    }

    /// [`StoreLink::notify`].
    pub fn notify(&self) {
        self.link.notify()
    }

    /// Unmaps the page (the domain's frame is freed by the last unmap if
    /// it died) and closes the port.
    pub fn close(self) {
        // The link (no destructor: it only points into the page) ends
        // here, before the unmap.
        let BackLink { link: _, chan, mapping, va } = self;
        if mapping.unmap().is_ok() {
            crate::vmap::free(va, 1);
        }
        let _ = chan.close();
    }
}

/// Why [`BackLink::connect`] or [`BackLink::console`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackError {
    /// Binding the port, or no free mapping slot.
    Event(Errno),
    /// The hypervisor refused the console takeover (see
    /// [`crate::domctl::console_takeover`]).
    Takeover(Errno),
    /// Mapping the store grant.
    Grant(grant::GrantError),
    /// The page holds no valid channel.
    Link(LinkError),
}
