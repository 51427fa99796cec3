//! The device store, from a domain: read, write, list and watch keys, in
//! transactions if need be, over the store connection start info names
//! ([`crate::store_link`]). The store runs in the privileged domain; a
//! domain reads and writes its own subtree (`/local/domain/<id>`, which
//! relative paths name) and whatever the store's permissions grant it.
//!
//! ```ignore
//! use pvguest_sdk::store::Store;
//! let mut store = Store::open()?;
//! store.write("data/greeting", b"hello")?;            // relative: our subtree
//! let v = store.read("data/greeting")?;
//! store.watch("device/vbd", "vbd")?;                  // fires once at once
//! let ev = store.wait_event()?;                       // (path, token)
//! ```
//!
//! # Wire
//! Xen's `xs_wire` framing, encoded and decoded by the `device-store`
//! crate's client half (`device_store::client`): the store and its clients
//! share one definition of every message. Requests are answered in order;
//! watch events may come between a request and its reply, and are queued
//! here.
//!
//! # Hostile store
//! A reply is checked before it is believed: a frame whose length passes
//! [`PAYLOAD_MAX`], or a reply to a request we did not make, is
//! [`StoreError::Protocol`] and the connection is given up.

use crate::store_link::{LinkError, StoreLink};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use device_store::client::{parse_tx_id, split_list, Decoder, Reply, Request};
use device_store::Perms;

pub use device_store::PAYLOAD_MAX;

/// Watch events kept while nobody asks for them; older ones are dropped
/// (and counted) beyond that.
pub const MAX_QUEUED_EVENTS: usize = 64;

/// Why a store call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The store answered with this error (`"ENOENT"`, `"EACCES"`,
    /// `"EAGAIN"` for a transaction that conflicted, ...).
    Error(String),
    /// The transport failed.
    Link(LinkError),
    /// The store broke the protocol; the connection is given up.
    Protocol,
    /// A request larger than [`PAYLOAD_MAX`].
    TooLong,
    /// A value that should be text or a number is not.
    BadValue,
}

impl StoreError {
    /// Whether this is the store's error `name`.
    pub fn is(&self, name: &str) -> bool {
        matches!(self, StoreError::Error(e) if e == name)
    }
}

impl From<LinkError> for StoreError {
    fn from(e: LinkError) -> Self {
        StoreError::Link(e)
    }
}

/// A watch firing: the path that changed and the watch's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// A transaction id (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    /// Outside any transaction.
    pub const NONE: Tx = Tx(0);
}

/// A connection to the store.
pub struct Store {
    link: StoreLink<'static>,
    next_req: u32,
    decoder: Decoder,
    /// Replies and events decoded and not yet consumed.
    replies: VecDeque<Reply>,
    events: VecDeque<WatchEvent>,
    /// Events dropped because the queue was full.
    pub dropped_events: u64,
    broken: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into()
}

impl Store {
    /// This domain's connection (start info's), taken once.
    pub fn open() -> Result<Store, StoreError> {
        let link = StoreLink::front()?;
        Ok(Store {
            link,
            next_req: 1,
            decoder: Decoder::new(),
            replies: VecDeque::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            broken: false,
        })
    }

    /// Sends one request (in transaction `tx`) and waits for its reply's
    /// payload.
    pub fn request(&mut self, req: Request<'_>, tx: Tx) -> Result<Vec<u8>, StoreError> {
        if self.broken {
            return Err(StoreError::Protocol);
        }
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut m = Vec::new();
        req.encode(id, tx.0, &mut m).map_err(|_| StoreError::TooLong)?;
        if m.len() > 16 + PAYLOAD_MAX {
            return Err(StoreError::TooLong);
        }
        self.link.send_all(&m)?;
        loop {
            self.take_messages()?;
            if let Some(r) = self.replies.pop_front() {
                let (header, result) = match r {
                    Reply::Ok { header, payload } => (header, Ok(payload)),
                    Reply::Error { header, error } => {
                        (header, Err(StoreError::Error(String::from(error.map_or("EUNKNOWN", |e| e.name())))))
                    }
                    Reply::WatchEvent { .. } => continue,
                };
                // An answer to another request, or a success of another
                // type (an error reply has its own type).
                if header.req_id != id || (result.is_ok() && header.ty != req.msg_type() as u32) {
                    self.broken = true;
                    return Err(StoreError::Protocol);
                }
                return result;
            }
            self.link.wait()?;
        }
    }

    /// Decodes everything that has arrived: replies queued in order, watch
    /// events into the event queue.
    fn take_messages(&mut self) -> Result<(), StoreError> {
        let mut buf = [0u8; 512];
        loop {
            let n = self.link.recv(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            for r in self.decoder.push_all(&buf[..n]) {
                match r {
                    Ok(Reply::WatchEvent { path, token }) => {
                        if self.events.len() >= MAX_QUEUED_EVENTS {
                            self.events.pop_front();
                            self.dropped_events += 1;
                        }
                        self.events.push_back(WatchEvent { path: text(&path), token: text(&token) });
                    }
                    Ok(reply) => self.replies.push_back(reply),
                    Err(_) => {
                        self.broken = true;
                        return Err(StoreError::Protocol);
                    }
                }
            }
        }
    }

    /// The value at `path`.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, StoreError> {
        self.read_tx(Tx::NONE, path)
    }

    /// The value at `path` in transaction `tx`.
    pub fn read_tx(&mut self, tx: Tx, path: &str) -> Result<Vec<u8>, StoreError> {
        self.request(Request::Read(path), tx)
    }

    /// The value at `path` as text.
    pub fn read_string(&mut self, path: &str) -> Result<String, StoreError> {
        String::from_utf8(self.read(path)?).map_err(|_| StoreError::BadValue)
    }

    /// The value at `path` as a decimal number.
    pub fn read_u64(&mut self, path: &str) -> Result<u64, StoreError> {
        let v = self.read(path)?;
        core::str::from_utf8(&v).ok().and_then(|s| s.trim_end_matches('\0').parse().ok()).ok_or(StoreError::BadValue)
    }

    /// Writes `value` at `path` (creating it and missing parents).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write_tx(Tx::NONE, path, value)
    }

    /// [`Store::write`] in transaction `tx`.
    pub fn write_tx(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<(), StoreError> {
        self.request(Request::Write(path, value), tx).map(|_| ())
    }

    /// Creates the node `path` (empty value) if missing.
    pub fn mkdir(&mut self, path: &str) -> Result<(), StoreError> {
        self.request(Request::Mkdir(path), Tx::NONE).map(|_| ())
    }

    /// Removes `path` and everything below it.
    pub fn rm(&mut self, path: &str) -> Result<(), StoreError> {
        self.request(Request::Rm(path), Tx::NONE).map(|_| ())
    }

    /// The names of `path`'s children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, StoreError> {
        let v = self.request(Request::Directory(path), Tx::NONE)?;
        Ok(split_list(&v).map(text).collect())
    }

    /// Sets `path`'s permissions: Xen's list, `"<letter><domid>"` each
    /// (`n`, `r`, `w`, `b`), the first naming the owner and everyone's
    /// default, e.g. `["n5", "r0"]`.
    pub fn set_perms(&mut self, path: &str, perms: &[&str]) -> Result<(), StoreError> {
        let mut list = Vec::new();
        for p in perms {
            list.extend_from_slice(p.as_bytes());
            list.push(0);
        }
        let perms = Perms::parse(&list).map_err(|_| StoreError::BadValue)?;
        self.request(Request::SetPerms(path, &perms), Tx::NONE).map(|_| ())
    }

    /// Watches `path` and everything below it: each change queues a
    /// [`WatchEvent`] with `token`; one fires at once, as in Xen.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        self.request(Request::Watch(path, token.as_bytes()), Tx::NONE).map(|_| ())
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        self.request(Request::Unwatch(path, token.as_bytes()), Tx::NONE).map(|_| ())
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<Tx, StoreError> {
        let v = self.request(Request::TransactionStart, Tx::NONE)?;
        parse_tx_id(&v).map(Tx).map_err(|_| StoreError::BadValue)
    }

    /// Ends `tx`, committing it if `commit`. A conflict is the error
    /// `"EAGAIN"`: nothing was applied; run the transaction again.
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<(), StoreError> {
        self.request(Request::TransactionEnd(commit), tx).map(|_| ())
    }

    /// The next queued watch event, if any (reads what has arrived first).
    pub fn next_event(&mut self) -> Result<Option<WatchEvent>, StoreError> {
        self.take_messages()?;
        if !self.replies.is_empty() {
            // Nothing is outstanding between requests.
            self.broken = true;
            return Err(StoreError::Protocol);
        }
        Ok(self.events.pop_front())
    }

    /// Waits for the next watch event.
    pub fn wait_event(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            if let Some(e) = self.next_event()? {
                return Ok(e);
            }
            self.link.wait()?;
        }
    }

    /// This domain's home path, `/local/domain/<id>`.
    pub fn home(&self) -> String {
        alloc::format!("/local/domain/{}", crate::rt::start_info().domid)
    }
}
