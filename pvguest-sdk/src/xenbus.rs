//! The front's half of a split device's connection, shared by every
//! frontend (`blkfront`, `netfront`): the store I/O around the connection
//! state machine of [`crate::xenbus_state::Frontend`].
//!
//! The toolstack (dom0) writes the device's two directories; the backend
//! shows `InitWait` once its details are written. The front then
//! publishes its ring details in one transaction (the caller's
//! `publish`), shows `Initialised`, and waits for the backend's
//! `Connected`, reading the backend's state node each time its watch
//! fires. Every value read from the store is an allegation: a state that
//! does not parse, or a node that went away, is the backend gone.
//!
//! Who writes what: the front writes only its own directory (`dir`: its
//! `state` and whatever `publish` writes); it reads the backend's
//! (`back`), which only the backend writes.

use crate::store::{Store, StoreError};
use crate::xenbus_state::{Action, Event, Frontend, State};
use alloc::format;

/// Runs the handshake of the front whose directory is `dir`, with the
/// backend at `back`. `publish` makes the front's half (ring pages, ports)
/// and writes its details into `dir` (in a transaction of its own), once
/// the backend waits for them; `connected` runs each time the backend
/// says `Connected` (to read what it published with it). Returns the
/// published value once connected, `Ok(None)` if the backend went away or
/// closed first.
pub fn connect_front<T, E: From<StoreError>>(
    store: &mut Store,
    dir: &str,
    back: &str,
    mut publish: impl FnMut(&mut Store) -> Result<T, E>,
    mut connected: impl FnMut(&mut Store, &mut T) -> Result<(), E>,
) -> Result<Option<T>, E> {
    let back_state = format!("{back}/state");
    let token = "xenbus-front";
    store.watch(&back_state, token)?;
    let mut fe = Frontend::new();
    let mut actions = fe.start();
    let mut dev: Option<T> = None;
    loop {
        let mut follow = None;
        for a in actions.iter() {
            match a {
                Action::WriteState(s) => store.write(&format!("{dir}/state"), s.as_str().as_bytes())?,
                Action::PublishRing => {
                    dev = Some(publish(store)?);
                    follow = Some(Event::LocalReady);
                }
                Action::Connect => {
                    if let Some(d) = dev.as_mut() {
                        connected(store, d)?;
                    }
                }
                Action::Disconnect | Action::Reset => dev = None,
                Action::ReadRingDetails | Action::Error(_) => {}
            }
        }
        if let Some(e) = follow {
            actions = fe.handle(e);
            continue;
        }
        if fe.is_connected() {
            let _ = store.unwatch(&back_state, token);
            return Ok(dev);
        }
        if fe.state() == State::Closed && dev.is_none() && fe.is_shut_down() {
            let _ = store.unwatch(&back_state, token);
            return Ok(None);
        }
        let _ = store.wait_event()?;
        actions = match store.read(&back_state) {
            Ok(v) => match State::parse(&v) {
                Ok(s) => fe.handle(Event::PeerState(s)),
                Err(_) => fe.handle(Event::PeerGone),
            },
            Err(e) if e.is("ENOENT") => fe.handle(Event::PeerGone),
            Err(e) => return Err(E::from(e)),
        };
    }
}
