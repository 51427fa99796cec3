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
//! Xen's `xs_wire` framing: a 16-byte header `{type, req_id, tx_id, len}`
//! (little-endian u32s) and `len <= PAYLOAD_MAX` bytes of payload, strings
//! NUL-separated; an error reply is type `ERROR` with the error's name
//! (`"ENOENT"`). Requests are answered in order; watch events may come
//! between a request and its reply, and are queued here.
//!
//! # Hostile store
//! A reply is checked before it is believed: a header whose length passes
//! [`PAYLOAD_MAX`], or a reply to a request we did not make, is
//! [`StoreError::Protocol`] and the connection is given up.

use crate::store_link::{LinkError, StoreLink};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// Largest payload of one message (Xen's `XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Watch events kept while nobody asks for them; older ones are dropped
/// (and counted) beyond that.
pub const MAX_QUEUED_EVENTS: usize = 64;

/// Message types (Xen's `xsd_sockmsg_type`).
pub mod msg {
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const GET_PERMS: u32 = 3;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const INTRODUCE: u32 = 8;
    pub const RELEASE: u32 = 9;
    pub const GET_DOMAIN_PATH: u32 = 10;
    pub const WRITE: u32 = 11;
    pub const MKDIR: u32 = 12;
    pub const RM: u32 = 13;
    pub const SET_PERMS: u32 = 14;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
}

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
    /// Bytes received and not yet parsed.
    rx: Vec<u8>,
    events: VecDeque<WatchEvent>,
    /// Events dropped because the queue was full.
    pub dropped_events: u64,
    broken: bool,
}

impl Store {
    /// This domain's connection (start info's), taken once.
    pub fn open() -> Result<Store, StoreError> {
        let link = StoreLink::front()?;
        Ok(Store { link, next_req: 1, rx: Vec::new(), events: VecDeque::new(), dropped_events: 0, broken: false })
    }

    /// Sends one request and waits for its reply's payload.
    pub fn request(&mut self, ty: u32, tx: Tx, parts: &[&[u8]]) -> Result<Vec<u8>, StoreError> {
        if self.broken {
            return Err(StoreError::Protocol);
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > PAYLOAD_MAX {
            return Err(StoreError::TooLong);
        }
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut m = Vec::with_capacity(16 + len);
        for w in [ty, id, tx.0, len as u32] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        for p in parts {
            m.extend_from_slice(p);
        }
        self.link.send_all(&m)?;
        loop {
            if let Some((rty, rid, payload)) = self.take_message()? {
                if rty == msg::WATCH_EVENT {
                    self.queue_event(&payload);
                    continue;
                }
                if rid != id {
                    self.broken = true;
                    return Err(StoreError::Protocol);
                }
                if rty == msg::ERROR {
                    let name = payload.split(|&b| b == 0).next().unwrap_or(&[]);
                    return Err(StoreError::Error(String::from_utf8_lossy(name).into()));
                }
                if rty != ty {
                    self.broken = true;
                    return Err(StoreError::Protocol);
                }
                return Ok(payload);
            }
            self.link.wait()?;
        }
    }

    /// Parses one whole message out of what has arrived, reading more
    /// first; `None` if it is not all here yet.
    fn take_message(&mut self) -> Result<Option<(u32, u32, Vec<u8>)>, StoreError> {
        let mut buf = [0u8; 512];
        loop {
            let n = self.link.recv(&mut buf)?;
            if n == 0 {
                break;
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
        if self.rx.len() < 16 {
            return Ok(None);
        }
        let word = |i: usize| u32::from_le_bytes([self.rx[i], self.rx[i + 1], self.rx[i + 2], self.rx[i + 3]]);
        let (ty, id, len) = (word(0), word(4), word(12) as usize);
        if len > PAYLOAD_MAX {
            self.broken = true;
            return Err(StoreError::Protocol);
        }
        if self.rx.len() < 16 + len {
            return Ok(None);
        }
        let payload = self.rx[16..16 + len].to_vec();
        self.rx.drain(..16 + len);
        Ok(Some((ty, id, payload)))
    }

    fn queue_event(&mut self, payload: &[u8]) {
        let mut it = payload.split(|&b| b == 0);
        let path = String::from_utf8_lossy(it.next().unwrap_or(&[])).into();
        let token = String::from_utf8_lossy(it.next().unwrap_or(&[])).into();
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(WatchEvent { path, token });
    }

    /// The value at `path`.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, StoreError> {
        self.read_tx(Tx::NONE, path)
    }

    /// The value at `path` in transaction `tx`.
    pub fn read_tx(&mut self, tx: Tx, path: &str) -> Result<Vec<u8>, StoreError> {
        self.request(msg::READ, tx, &[path.as_bytes(), b"\0"])
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
        self.request(msg::WRITE, tx, &[path.as_bytes(), b"\0", value]).map(|_| ())
    }

    /// Creates the node `path` (empty value) if missing.
    pub fn mkdir(&mut self, path: &str) -> Result<(), StoreError> {
        self.request(msg::MKDIR, Tx::NONE, &[path.as_bytes(), b"\0"]).map(|_| ())
    }

    /// Removes `path` and everything below it.
    pub fn rm(&mut self, path: &str) -> Result<(), StoreError> {
        self.request(msg::RM, Tx::NONE, &[path.as_bytes(), b"\0"]).map(|_| ())
    }

    /// The names of `path`'s children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, StoreError> {
        let v = self.request(msg::DIRECTORY, Tx::NONE, &[path.as_bytes(), b"\0"])?;
        Ok(v.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into()).collect())
    }

    /// Sets `path`'s permissions: Xen's list, `"<letter><domid>"` each
    /// (`n`, `r`, `w`, `b`), the first naming the owner and everyone's
    /// default, e.g. `["n5", "r0"]`.
    pub fn set_perms(&mut self, path: &str, perms: &[&str]) -> Result<(), StoreError> {
        let mut parts: Vec<&[u8]> = alloc::vec![path.as_bytes(), b"\0"];
        for p in perms {
            parts.push(p.as_bytes());
            parts.push(b"\0");
        }
        self.request(msg::SET_PERMS, Tx::NONE, &parts).map(|_| ())
    }

    /// Watches `path` and everything below it: each change queues a
    /// [`WatchEvent`] with `token`; one fires at once, as in Xen.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        self.request(msg::WATCH, Tx::NONE, &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"]).map(|_| ())
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), StoreError> {
        self.request(msg::UNWATCH, Tx::NONE, &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"]).map(|_| ())
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<Tx, StoreError> {
        let v = self.request(msg::TRANSACTION_START, Tx::NONE, &[b"\0"])?;
        let s = core::str::from_utf8(&v).map_err(|_| StoreError::BadValue)?;
        s.trim_end_matches('\0').parse().map(Tx).map_err(|_| StoreError::BadValue)
    }

    /// Ends `tx`, committing it if `commit`. A conflict is the error
    /// `"EAGAIN"`: nothing was applied; run the transaction again.
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<(), StoreError> {
        self.request(msg::TRANSACTION_END, tx, &[if commit { b"T\0" } else { b"F\0" }]).map(|_| ())
    }

    /// The next queued watch event, if any (reads what has arrived first).
    pub fn next_event(&mut self) -> Result<Option<WatchEvent>, StoreError> {
        while let Some((ty, _, payload)) = self.take_message()? {
            if ty != msg::WATCH_EVENT {
                // Nothing is outstanding between requests.
                self.broken = true;
                return Err(StoreError::Protocol);
            }
            self.queue_event(&payload);
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
