//! The part every device dom0 serves shares: its connection handshake
//! ([`split_drivers::state::Backend`]) driven from the store.
//!
//! A disk (`serve::Vbd`) and a NIC (`vifs::Vif`) differ only in how they
//! connect their rings and what they give back on a disconnect; both
//! implement [`Served`] for that, and [`offer`], [`follow_front`] and
//! [`handshake`] do the rest for either.
//!
//! # Who writes what
//! - dom0 writes the backend's `state` node (`<back dir>/state`), only
//!   here, as the state machine says.
//! - The frontend's `state` node (`<front dir>/state`) is the domU's once
//!   dom0 has made it (dom0 writes its first value, `Initialising`, when
//!   it offers the device): it is read (an allegation, parsed with
//!   [`State::parse`]; unreadable or malformed reads as the peer gone) when
//!   another domain's requests have reached the store since the last look,
//!   and fed to the state machine only when it changed.
//! - The ring details the frontend wrote are read by
//!   [`Served::connect`], when the state machine asks for them.

use crate::xs::Xs as Store;
use alloc::format;
use alloc::string::String;
use pvguest_sdk::println;
use split_drivers::state::{Action, Actions, Backend, Event, State};

/// A device's handshake state: whom it serves, where both ends' nodes
/// are, the machine, and what dom0 last saw of the frontend.
pub struct Handshake {
    domid: u16,
    /// The frontend's directory.
    front: String,
    /// The backend's directory.
    back: String,
    pub be: Backend,
    /// The frontend's state as last read.
    front_state: Option<State>,
    /// The store's change count at the last read.
    seen_changes: Option<u64>,
}

impl Handshake {
    /// The handshake of the device of `domid` whose directories are
    /// `front` and `back`.
    pub fn new(domid: u16, front: String, back: String) -> Handshake {
        Handshake { domid, front, back, be: Backend::new(), front_state: None, seen_changes: None }
    }
}

/// A device dom0 serves to one domU.
pub trait Served {
    /// What it is, in dom0's lines (`disk`, `NIC`).
    const WHAT: &'static str;
    fn handshake(&mut self) -> &mut Handshake;
    /// Reads the frontend's ring details and maps its rings:
    /// [`Event::LocalReady`] or [`Event::LocalFailed`].
    fn connect(&mut self, store: &mut Store) -> Event;
    /// Closes the rings (the frontend went away or asked to).
    fn disconnect(&mut self);
}

/// Starts the handshake of a device just offered (its directories are
/// written): the machine starts, and dom0's side is ready at once.
pub fn offer(store: &mut Store, dev: &mut impl Served) {
    let start = dev.handshake().be.start();
    handshake(store, dev, start);
    let ready = dev.handshake().be.handle(Event::LocalReady);
    handshake(store, dev, ready);
}

/// Reads the frontend's state if the store changed since the last look,
/// and feeds a change to the handshake; whether it changed.
pub fn follow_front(store: &mut Store, dev: &mut impl Served) -> bool {
    let changes = store.changes();
    if dev.handshake().seen_changes == Some(changes) {
        return false;
    }
    dev.handshake().seen_changes = Some(changes);
    let now = store.read(0, &format!("{}/state", dev.handshake().front)).ok().and_then(|b| State::parse(&b).ok());
    if now == dev.handshake().front_state {
        return false;
    }
    dev.handshake().front_state = now;
    let actions = dev.handshake().be.handle(now.map_or(Event::PeerGone, Event::PeerState));
    handshake(store, dev, actions);
    true
}

/// Does what the handshake asks, feeding it the outcome of each local step
/// it asked for, until it asks nothing more.
pub fn handshake<D: Served>(store: &mut Store, dev: &mut D, mut actions: Actions) {
    loop {
        let mut follow = None;
        for a in actions.iter() {
            match a {
                Action::WriteState(s) => {
                    let _ = store.write(0, &format!("{}/state", dev.handshake().back), s.as_str().as_bytes());
                }
                Action::ReadRingDetails => follow = Some(dev.connect(store)),
                Action::Disconnect => dev.disconnect(),
                Action::Error(e) => println!("serve: dom{}: {} handshake: {e:?}", dev.handshake().domid, D::WHAT),
                Action::Connect | Action::PublishRing | Action::Reset => {}
            }
        }
        match follow {
            Some(e) => actions = dev.handshake().be.handle(e),
            None => return,
        }
    }
}

/// Writes the backend's `Closed` state (a ring that broke the protocol).
pub fn write_closed(store: &mut Store, dev: &mut impl Served) {
    let _ = store.write(0, &format!("{}/state", dev.handshake().back), State::Closed.as_str().as_bytes());
}
