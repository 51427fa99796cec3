//! The device store: a hierarchical key-value tree shared by every domain,
//! modelled on xenstore. dom0 runs it; each other domain talks to it over a
//! byte stream (its store page, `pvguest_sdk::store_link`), in Xen's
//! `xs_wire` framing. This crate is the store's logic only: bytes in,
//! bytes out, no I/O, so all of it is tested on the host.
//!
//! ```
//! use device_store::{Quotas, Store};
//! let mut s = Store::new(Quotas::default());
//! s.introduce(5);
//! // Domain 5 writes `data/x` (relative: its own subtree) ...
//! let mut req = Vec::new();
//! for w in [11u32, 1, 0, 9] { req.extend_from_slice(&w.to_le_bytes()); } // WRITE, id 1, no tx, 9 bytes
//! req.extend_from_slice(b"data/x\0hi");
//! s.feed(5, &req).unwrap();
//! let mut out = [0u8; 64];
//! let n = s.peek_output(5, &mut out);
//! assert_eq!(&out[16..n], b"OK\0");
//! s.consume_output(5, n);
//! // ... and dom0 reads it by its absolute path.
//! assert_eq!(s.read(0, "/local/domain/5/data/x").unwrap(), b"hi");
//! ```
//!
//! # The tree, and who owns what
//! - Every node has a value (bytes), children, a permission list and a
//!   generation (bumped by every change of the node's value, permissions or
//!   children). The root `/` and `/local/domain` belong to the privileged
//!   domain (0).
//! - [`Store::introduce`] makes `/local/domain/<id>`, owned by the domain:
//!   its home. Relative paths are relative to it.
//! - Permissions are Xen's: a list of `<letter><domid>` (`n` none, `r`
//!   read, `w` write, `b` both); the first entry names the owner and the
//!   access of every domain not listed after it. The owner and the
//!   privileged domain may do anything; others get what the list says. A
//!   new node inherits its parent's list, with its creator as the owner
//!   (unless the creator is the privileged domain, which keeps the
//!   parent's owner). Only the owner or the privileged domain sets
//!   permissions, and only the privileged domain gives a node away.
//! - Creating a node needs write access to its nearest existing ancestor;
//!   changing or removing one needs write access to it; reading or listing
//!   needs read access.
//!
//! # Watches
//! `WATCH(path, token)` fires once at once, and then after every change at
//! or below `path`, as a `WATCH_EVENT` `{path, token}` (the path as the
//! watcher named it: relative if it watched relatively). An event is sent
//! only if the watcher may read the changed node (or the node is gone), so
//! a watch tells nobody about nodes it could not read. `@introduceDomain`
//! and `@releaseDomain` fire when a domain is introduced or released.
//!
//! # Transactions
//! Optimistic: inside a transaction, reads see the live tree plus the
//! transaction's own writes, and every node read or written is recorded
//! with the generation it had (or its absence). `TRANSACTION_END("T")`
//! checks that none of them changed since; if one did, nothing is applied
//! and the answer is `EAGAIN` (run the transaction again). Else its writes
//! are applied in order, with their permission checks again, and watches
//! fire then (never for a transaction that is aborted or conflicts).
//!
//! # Hostile clients
//! Every request is validated before it is acted on, and nothing a client
//! sends can stall the store or another client:
//! - a header whose length passes [`PAYLOAD_MAX`] is answered `E2BIG` and
//!   the connection is closed for good ([`ConnError::Broken`]: the stream
//!   cannot be resynchronised); an unknown type is `EINVAL`, the payload
//!   skipped;
//! - paths are checked ([`path`]): characters, length, no empty component;
//!   a string that should end with NUL and does not is `EINVAL`;
//! - every resource is bounded per domain by [`Quotas`] (`EQUOTA` when hit):
//!   nodes owned, value size, watches, open transactions, operations per
//!   transaction; the replies and events waiting for a client are bounded
//!   too: while its outbox is over [`Quotas::outbox_bytes`] its requests
//!   wait (it must read its replies) and watch events for it are dropped and
//!   counted ([`Store::dropped_events`]), never queued without bound;
//! - work per request is bounded: by the payload, the tree's size (quota
//!   bounded) for `RM` and `DIRECTORY`, the watches (quota bounded) for
//!   firing.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod path;
mod perms;
pub mod wire;

#[cfg(test)]
mod tests;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
pub use perms::{Access, Perm};
pub use wire::{msg, PAYLOAD_MAX};

/// The privileged domain's id (it runs the store).
pub const PRIVILEGED: u16 = 0;

/// Per-domain limits ([`Store::new`]); the privileged domain has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own.
    pub nodes: usize,
    /// Bytes of one value.
    pub value_bytes: usize,
    /// Watches a domain may hold.
    pub watches: usize,
    /// Transactions a domain may have open.
    pub transactions: usize,
    /// Operations in one transaction.
    pub transaction_ops: usize,
    /// Bytes of replies and events waiting for a domain before its
    /// requests wait and its events are dropped.
    pub outbox_bytes: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes: 1000,
            value_bytes: 2048,
            watches: 128,
            transactions: 10,
            transaction_ops: 256,
            outbox_bytes: 64 * 1024,
        }
    }
}

/// An error answered to a client, by name (as `xs_wire` sends it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No such node.
    NoEnt,
    /// Not allowed.
    Access,
    /// Malformed request (bad path, missing NUL, bad permissions).
    Inval,
    /// Exists already (or the root, for removal).
    Exist,
    /// Too large.
    TooBig,
    /// A quota is used up.
    Quota,
    /// The transaction conflicted: run it again.
    Again,
    /// Not offered.
    NoSys,
}

impl Error {
    /// The name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Error::NoEnt => "ENOENT",
            Error::Access => "EACCES",
            Error::Inval => "EINVAL",
            Error::Exist => "EEXIST",
            Error::TooBig => "E2BIG",
            Error::Quota => "EQUOTA",
            Error::Again => "EAGAIN",
            Error::NoSys => "ENOSYS",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a connection stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// No connection for that domain ([`Store::introduce`] first).
    Unknown,
    /// The client broke the framing; the connection is closed for good.
    Broken,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Unknown => f.write_str("no such connection"),
            ConnError::Broken => f.write_str("the client broke the framing; connection closed"),
        }
    }
}

#[derive(Clone, Debug)]
struct Node {
    value: Vec<u8>,
    children: BTreeSet<String>,
    perms: Vec<Perm>,
    gen: u64,
}

/// A watch: the path as given (for events), its absolute form, the token.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Watch {
    given: String,
    abs: String,
    token: String,
}

/// One operation of a transaction, replayed at commit.
#[derive(Clone, Debug)]
enum TxOp {
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
}

#[derive(Debug, Default)]
struct Tx {
    /// Nodes seen, with the generation they had (None: absent).
    seen: BTreeMap<String, Option<u64>>,
    /// The transaction's own view of nodes it changed (None: removed).
    view: BTreeMap<String, Option<Vec<u8>>>,
    ops: Vec<TxOp>,
}

struct Conn {
    rx: Vec<u8>,
    out: VecDeque<u8>,
    watches: Vec<Watch>,
    txs: BTreeMap<u32, Tx>,
    next_tx: u32,
    broken: bool,
    owned: usize,
    /// A new watch's first event, sent after the reply to `WATCH`.
    pending_event: Option<Watch>,
}

/// The store (see the crate docs).
pub struct Store {
    nodes: BTreeMap<String, Node>,
    conns: BTreeMap<u16, Conn>,
    quotas: Quotas,
    gen: u64,
    /// Watch events dropped because a watcher's outbox was full.
    pub dropped_events: u64,
    /// Requests answered, and answered with an error.
    pub requests: u64,
    pub errors: u64,
    /// Nodes the privileged domain owns (not in any connection).
    owned0: usize,
}

fn home(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

impl Store {
    /// An empty store: `/`, `/local` and `/local/domain`, the privileged
    /// domain's, readable by nobody else.
    pub fn new(quotas: Quotas) -> Store {
        let mut s = Store {
            nodes: BTreeMap::new(),
            conns: BTreeMap::new(),
            quotas,
            gen: 0,
            dropped_events: 0,
            requests: 0,
            errors: 0,
            owned0: 0,
        };
        let root = Node { value: Vec::new(), children: BTreeSet::new(), perms: alloc::vec![Perm::owner(0)], gen: 0 };
        s.nodes.insert("/".into(), root);
        let _ = s.mkdir(PRIVILEGED, "/local/domain");
        s
    }

    /// Introduces domain `domid` (not the privileged one): its connection
    /// and its home `/local/domain/<id>`, owned by it. Fires
    /// `@introduceDomain`. Introducing it again resets its connection.
    pub fn introduce(&mut self, domid: u16) {
        if domid == PRIVILEGED {
            return;
        }
        self.release_conn(domid);
        let c = Conn {
            rx: Vec::new(),
            out: VecDeque::new(),
            watches: Vec::new(),
            txs: BTreeMap::new(),
            next_tx: 1,
            broken: false,
            owned: 0,
            pending_event: None,
        };
        self.conns.insert(domid, c);
        let h = home(domid);
        let _ = self.mkdir(PRIVILEGED, &h);
        if let Some(n) = self.nodes.get_mut(&h) {
            n.perms = alloc::vec![Perm::owner(domid)];
            self.gen += 1;
            n.gen = self.gen;
        }
        self.recount();
        self.fire_special("@introduceDomain");
    }

    /// Releases domain `domid`: its connection (watches, transactions,
    /// pending bytes) and its home subtree go. Fires `@releaseDomain`.
    pub fn release(&mut self, domid: u16) {
        if domid == PRIVILEGED {
            return;
        }
        self.release_conn(domid);
        let _ = self.rm(PRIVILEGED, &home(domid));
        self.recount();
        self.fire_special("@releaseDomain");
    }

    fn release_conn(&mut self, domid: u16) {
        self.conns.remove(&domid);
    }

    /// Whether `domid` has a connection that takes requests now: not broken
    /// and its outbox under quota (it reads its replies). The transport
    /// should read no more of its bytes while this is false.
    pub fn accepting(&self, domid: u16) -> bool {
        self.conns.get(&domid).is_some_and(|c| !c.broken && c.out.len() < self.quotas.outbox_bytes)
    }

    /// Bytes from `domid`'s ring: buffered, and every whole request in them
    /// answered (while its outbox is under quota; the rest wait).
    pub fn feed(&mut self, domid: u16, bytes: &[u8]) -> Result<(), ConnError> {
        let c = self.conns.get_mut(&domid).ok_or(ConnError::Unknown)?;
        if c.broken {
            return Err(ConnError::Broken);
        }
        c.rx.extend_from_slice(bytes);
        self.process(domid)
    }

    /// Answers the whole requests waiting in `domid`'s buffer (call again
    /// once its outbox drained: [`Store::consume_output`] does).
    fn process(&mut self, domid: u16) -> Result<(), ConnError> {
        loop {
            let Some(c) = self.conns.get_mut(&domid) else { return Err(ConnError::Unknown) };
            if c.broken {
                return Err(ConnError::Broken);
            }
            if c.out.len() >= self.quotas.outbox_bytes {
                // Backpressure: it must read its replies first. Bounded:
                // the transport reads no more while not `accepting`.
                if c.rx.len() > 2 * (wire::HEADER + PAYLOAD_MAX) {
                    c.broken = true;
                    return Err(ConnError::Broken);
                }
                return Ok(());
            }
            let Some(h) = wire::Header::parse(&c.rx) else { return Ok(()) };
            if h.len as usize > PAYLOAD_MAX {
                wire::push_error(&mut c.out, &h, Error::TooBig.name());
                c.broken = true;
                c.rx.clear();
                return Err(ConnError::Broken);
            }
            let total = wire::HEADER + h.len as usize;
            if c.rx.len() < total {
                return Ok(());
            }
            let payload: Vec<u8> = c.rx[wire::HEADER..total].to_vec();
            c.rx.drain(..total);
            self.requests += 1;
            let reply = self.request(domid, &h, &payload);
            let limit = self.quotas.outbox_bytes + wire::HEADER + PAYLOAD_MAX;
            let Some(c) = self.conns.get_mut(&domid) else { return Err(ConnError::Unknown) };
            match reply {
                Ok(body) => wire::push(&mut c.out, h.ty, h.req_id, h.tx_id, &body),
                Err(e) => {
                    self.errors += 1;
                    wire::push_error(&mut c.out, &h, e.name());
                }
            }
            if let Some(w) = c.pending_event.take() {
                if !push_event(&mut c.out, limit, &w.given, &w.token) {
                    self.dropped_events += 1;
                }
            }
        }
    }

    /// Copies up to `buf.len()` bytes waiting for `domid` into `buf`
    /// (without taking them); returns how many.
    pub fn peek_output(&self, domid: u16, buf: &mut [u8]) -> usize {
        let Some(c) = self.conns.get(&domid) else { return 0 };
        let (a, b) = c.out.as_slices();
        let n = a.len().min(buf.len());
        buf[..n].copy_from_slice(&a[..n]);
        let m = b.len().min(buf.len() - n);
        buf[n..n + m].copy_from_slice(&b[..m]);
        n + m
    }

    /// Drops the first `n` bytes waiting for `domid` (sent), and answers
    /// requests that waited for the room.
    pub fn consume_output(&mut self, domid: u16, n: usize) {
        if let Some(c) = self.conns.get_mut(&domid) {
            let n = n.min(c.out.len());
            c.out.drain(..n);
            let _ = self.process(domid);
        }
    }

    /// Whether bytes wait for `domid`.
    pub fn has_output(&self, domid: u16) -> bool {
        self.conns.get(&domid).is_some_and(|c| !c.out.is_empty())
    }

    // ---- one request ----

    fn request(&mut self, domid: u16, h: &wire::Header, p: &[u8]) -> Result<Vec<u8>, Error> {
        let ok = || Ok(b"OK\0".to_vec());
        let tx = h.tx_id;
        if tx != 0 && !self.conns.get(&domid).is_some_and(|c| c.txs.contains_key(&tx)) {
            return Err(Error::NoEnt);
        }
        match h.ty {
            msg::READ => {
                let path = self.abs(domid, wire::one_string(p)?)?;
                self.read_in(domid, tx, &path)
            }
            msg::WRITE => {
                let (name, value) = wire::string_then_bytes(p)?;
                let path = self.abs(domid, name)?;
                self.change(domid, tx, TxOp::Write(path, value.to_vec()))?;
                ok()
            }
            msg::MKDIR => {
                let path = self.abs(domid, wire::one_string(p)?)?;
                self.change(domid, tx, TxOp::Mkdir(path))?;
                ok()
            }
            msg::RM => {
                let path = self.abs(domid, wire::one_string(p)?)?;
                self.change(domid, tx, TxOp::Rm(path))?;
                ok()
            }
            msg::DIRECTORY => {
                let path = self.abs(domid, wire::one_string(p)?)?;
                let names = self.directory_in(domid, tx, &path)?;
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(n.as_bytes());
                    out.push(0);
                }
                Ok(out)
            }
            msg::GET_PERMS => {
                let path = self.abs(domid, wire::one_string(p)?)?;
                let n = self.nodes.get(&path).ok_or(Error::NoEnt)?;
                if !perms::allows(&n.perms, domid, Access::Read) {
                    return Err(Error::Access);
                }
                let mut out = Vec::new();
                for q in &n.perms {
                    out.extend_from_slice(q.to_string().as_bytes());
                    out.push(0);
                }
                Ok(out)
            }
            msg::SET_PERMS => {
                if tx != 0 {
                    return Err(Error::NoSys);
                }
                let parts = wire::strings(p)?;
                let (first, rest) = parts.split_first().ok_or(Error::Inval)?;
                let path = self.abs(domid, first)?;
                let list: Vec<String> = rest.iter().map(|s| String::from(*s)).collect();
                self.set_perms(domid, &path, &list)?;
                ok()
            }
            msg::WATCH => {
                let parts = wire::strings(p)?;
                let [given, token] = parts.as_slice() else { return Err(Error::Inval) };
                self.watch(domid, given, token)?;
                Ok(b"OK\0".to_vec())
            }
            msg::UNWATCH => {
                let parts = wire::strings(p)?;
                let [given, token] = parts.as_slice() else { return Err(Error::Inval) };
                let c = self.conns.get_mut(&domid).ok_or(Error::Inval)?;
                let before = c.watches.len();
                c.watches.retain(|w| !(w.given == *given && w.token == *token));
                if c.watches.len() == before {
                    return Err(Error::NoEnt);
                }
                ok()
            }
            msg::TRANSACTION_START => {
                let q = self.quotas.transactions;
                let c = self.conns.get_mut(&domid).ok_or(Error::Inval)?;
                if c.txs.len() >= q {
                    return Err(Error::Quota);
                }
                let id = c.next_tx;
                c.next_tx = c.next_tx.checked_add(1).filter(|&n| n != 0).unwrap_or(1);
                c.txs.insert(id, Tx::default());
                Ok(format!("{id}\0").into_bytes())
            }
            msg::TRANSACTION_END => {
                let commit = match wire::one_string(p)? {
                    "T" => true,
                    "F" => false,
                    _ => return Err(Error::Inval),
                };
                let t = self.conns.get_mut(&domid).and_then(|c| c.txs.remove(&tx)).ok_or(Error::NoEnt)?;
                if commit {
                    self.commit(domid, t)?;
                }
                ok()
            }
            msg::GET_DOMAIN_PATH => {
                let id: u16 = wire::one_string(p)?.parse().map_err(|_| Error::Inval)?;
                Ok(format!("{}\0", home(id)).into_bytes())
            }
            msg::INTRODUCE | msg::RELEASE | msg::SET_TARGET | msg::RESUME => Err(Error::Access),
            _ => Err(Error::Inval),
        }
    }

    /// The absolute form of a client's path (validated).
    fn abs(&self, domid: u16, p: &str) -> Result<String, Error> {
        path::absolute(p, &home(domid))
    }

    // ---- reading ----

    fn read_in(&mut self, domid: u16, tx: u32, path: &str) -> Result<Vec<u8>, Error> {
        if tx != 0 {
            let gen = self.nodes.get(path).map(|n| n.gen);
            let t = self.tx_mut(domid, tx)?;
            t.seen.entry(path.into()).or_insert(gen);
            if let Some(v) = t.view.get(path) {
                return v.clone().ok_or(Error::NoEnt);
            }
        }
        self.read(domid, path)
    }

    fn directory_in(&mut self, domid: u16, tx: u32, path: &str) -> Result<Vec<String>, Error> {
        let mut names = self.directory(domid, path)?;
        if tx != 0 {
            let gen = self.nodes.get(path).map(|n| n.gen);
            let t = self.tx_mut(domid, tx)?;
            t.seen.entry(path.into()).or_insert(gen);
            let prefix = if path == "/" { String::from("/") } else { format!("{path}/") };
            for (p, v) in &t.view {
                if let Some(rest) = p.strip_prefix(&prefix) {
                    if !rest.contains('/') {
                        let name = String::from(rest);
                        match v {
                            Some(_) if !names.contains(&name) => names.push(name),
                            None => names.retain(|n| *n != name),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(names)
    }

    fn tx_mut(&mut self, domid: u16, tx: u32) -> Result<&mut Tx, Error> {
        self.conns.get_mut(&domid).and_then(|c| c.txs.get_mut(&tx)).ok_or(Error::NoEnt)
    }

    /// The value at absolute `path`, as domain `domid` may read it.
    pub fn read(&self, domid: u16, path: &str) -> Result<Vec<u8>, Error> {
        let n = self.nodes.get(path).ok_or(Error::NoEnt)?;
        if !perms::allows(&n.perms, domid, Access::Read) {
            return Err(Error::Access);
        }
        Ok(n.value.clone())
    }

    /// The children of absolute `path`.
    pub fn directory(&self, domid: u16, path: &str) -> Result<Vec<String>, Error> {
        let n = self.nodes.get(path).ok_or(Error::NoEnt)?;
        if !perms::allows(&n.perms, domid, Access::Read) {
            return Err(Error::Access);
        }
        Ok(n.children.iter().cloned().collect())
    }

    // ---- changing ----

    /// One change, in a transaction (checked now against the live tree,
    /// applied at commit) or at once.
    fn change(&mut self, domid: u16, tx: u32, op: TxOp) -> Result<(), Error> {
        if tx == 0 {
            return self.apply(domid, &op);
        }
        let max = self.quotas.transaction_ops;
        let (path, view) = match &op {
            TxOp::Write(p, v) => (p.clone(), Some(v.clone())),
            TxOp::Mkdir(p) => (p.clone(), Some(self.nodes.get(p).map(|n| n.value.clone()).unwrap_or_default())),
            TxOp::Rm(p) => (p.clone(), None),
        };
        self.check(domid, &op)?;
        let gen = self.nodes.get(&path).map(|n| n.gen);
        let t = self.tx_mut(domid, tx)?;
        if t.ops.len() >= max {
            return Err(Error::Quota);
        }
        t.seen.entry(path.clone()).or_insert(gen);
        if view.is_none() {
            // A removal hides the subtree in the transaction's view.
            let prefix = format!("{path}/");
            for v in t.view.iter_mut().filter(|(p, _)| p.starts_with(&prefix)) {
                *v.1 = None;
            }
        }
        t.view.insert(path, view);
        t.ops.push(op);
        Ok(())
    }

    fn commit(&mut self, domid: u16, t: Tx) -> Result<(), Error> {
        for (p, gen) in &t.seen {
            if self.nodes.get(p).map(|n| n.gen) != *gen {
                return Err(Error::Again);
            }
        }
        // Nothing it saw changed, so its checks still hold; each op is
        // checked again anyway, and the first refusal stops the rest.
        for op in &t.ops {
            self.apply(domid, op)?;
        }
        Ok(())
    }

    /// Whether `domid` may do `op` now (no change).
    fn check(&self, domid: u16, op: &TxOp) -> Result<(), Error> {
        match op {
            TxOp::Write(p, v) => {
                if v.len() > self.quotas.value_bytes && domid != PRIVILEGED {
                    return Err(Error::TooBig);
                }
                self.check_create(domid, p)
            }
            TxOp::Mkdir(p) => self.check_create(domid, p),
            TxOp::Rm(p) => {
                if p == "/" {
                    return Err(Error::Inval);
                }
                let n = self.nodes.get(p).ok_or(Error::NoEnt)?;
                if !perms::allows(&n.perms, domid, Access::Write) {
                    return Err(Error::Access);
                }
                Ok(())
            }
        }
    }

    fn check_create(&self, domid: u16, p: &str) -> Result<(), Error> {
        if let Some(n) = self.nodes.get(p) {
            return if perms::allows(&n.perms, domid, Access::Write) { Ok(()) } else { Err(Error::Access) };
        }
        let anc = self.nearest_existing(p);
        let n = self.nodes.get(&anc).ok_or(Error::NoEnt)?;
        if !perms::allows(&n.perms, domid, Access::Write) {
            return Err(Error::Access);
        }
        let new = path::components(p).count() - path::components(&anc).count();
        if domid != PRIVILEGED && self.owned(domid) + new > self.quotas.nodes {
            return Err(Error::Quota);
        }
        Ok(())
    }

    fn nearest_existing(&self, p: &str) -> String {
        let mut cur = String::from(p);
        while !self.nodes.contains_key(&cur) {
            cur = path::parent(&cur);
        }
        cur
    }

    fn owned(&self, domid: u16) -> usize {
        if domid == PRIVILEGED {
            self.owned0
        } else {
            self.conns.get(&domid).map_or(0, |c| c.owned)
        }
    }

    fn apply(&mut self, domid: u16, op: &TxOp) -> Result<(), Error> {
        self.check(domid, op)?;
        let changed = match op {
            TxOp::Write(p, v) => {
                self.create(domid, p);
                if let Some(n) = self.nodes.get_mut(p) {
                    n.value = v.clone();
                    self.gen += 1;
                    n.gen = self.gen;
                }
                p.clone()
            }
            TxOp::Mkdir(p) => {
                if self.nodes.contains_key(p) {
                    return Ok(());
                }
                self.create(domid, p);
                p.clone()
            }
            TxOp::Rm(p) => {
                self.remove(p);
                p.clone()
            }
        };
        self.recount();
        self.fire(&changed);
        Ok(())
    }

    /// Makes `p` and any missing ancestors (checked by the caller).
    fn create(&mut self, domid: u16, p: &str) {
        if self.nodes.contains_key(p) {
            return;
        }
        let parent = path::parent(p);
        self.create(domid, &parent);
        let mut perms = self.nodes.get(&parent).map(|n| n.perms.clone()).unwrap_or_else(|| alloc::vec![Perm::owner(0)]);
        if domid != PRIVILEGED {
            perms[0].dom = domid;
        }
        self.gen += 1;
        let g = self.gen;
        if let Some(n) = self.nodes.get_mut(&parent) {
            n.children.insert(path::last(p).into());
            n.gen = g;
        }
        self.nodes.insert(p.into(), Node { value: Vec::new(), children: BTreeSet::new(), perms, gen: g });
    }

    fn remove(&mut self, p: &str) {
        let prefix = format!("{p}/");
        // Keys below `p` all start with `p/`, so they are one run of the
        // sorted map (bounded by the subtree).
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
        self.nodes.remove(p);
        self.gen += 1;
        let g = self.gen;
        if let Some(n) = self.nodes.get_mut(&path::parent(p)) {
            n.children.remove(path::last(p));
            n.gen = g;
        }
    }

    /// Recomputes how many nodes each domain owns (bounded by the tree).
    fn recount(&mut self) {
        for c in self.conns.values_mut() {
            c.owned = 0;
        }
        self.owned0 = 0;
        for n in self.nodes.values() {
            let o = n.perms[0].dom;
            if o == PRIVILEGED {
                self.owned0 += 1;
            } else if let Some(c) = self.conns.get_mut(&o) {
                c.owned += 1;
            }
        }
    }

    /// Writes `value` at absolute `path` as domain `domid` (dom0's own use).
    pub fn write(&mut self, domid: u16, path: &str, value: &[u8]) -> Result<(), Error> {
        path::absolute(path, &home(domid))?;
        self.apply(domid, &TxOp::Write(path.into(), value.to_vec()))
    }

    /// Makes the node `path` if missing.
    pub fn mkdir(&mut self, domid: u16, path: &str) -> Result<(), Error> {
        path::absolute(path, &home(domid))?;
        self.apply(domid, &TxOp::Mkdir(path.into()))
    }

    /// Removes `path` and its subtree.
    pub fn rm(&mut self, domid: u16, path: &str) -> Result<(), Error> {
        path::absolute(path, &home(domid))?;
        self.apply(domid, &TxOp::Rm(path.into()))
    }

    /// Sets the permissions of `path` (Xen's `<letter><domid>` list).
    pub fn set_perms(&mut self, domid: u16, path: &str, list: &[String]) -> Result<(), Error> {
        let parsed: Vec<Perm> = list.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
        let first = *parsed.first().ok_or(Error::Inval)?;
        let n = self.nodes.get_mut(path).ok_or(Error::NoEnt)?;
        if domid != PRIVILEGED && (n.perms[0].dom != domid || first.dom != domid) {
            return Err(Error::Access);
        }
        n.perms = parsed;
        self.gen += 1;
        n.gen = self.gen;
        self.recount();
        self.fire(path);
        Ok(())
    }

    // ---- watches ----

    fn watch(&mut self, domid: u16, given: &str, token: &str) -> Result<(), Error> {
        let abs = if given.starts_with('@') {
            match given {
                "@introduceDomain" | "@releaseDomain" => String::from(given),
                _ => return Err(Error::Inval),
            }
        } else {
            self.abs(domid, given)?
        };
        if token.len() > path::MAX_ABS {
            return Err(Error::TooBig);
        }
        let q = self.quotas.watches;
        let c = self.conns.get_mut(&domid).ok_or(Error::Inval)?;
        if c.watches.iter().any(|w| w.given == given && w.token == token) {
            return Err(Error::Exist);
        }
        if c.watches.len() >= q {
            return Err(Error::Quota);
        }
        let w = Watch { given: given.into(), abs, token: token.into() };
        c.watches.push(w.clone());
        // The first event goes right after the reply (`process`).
        c.pending_event = Some(w);
        Ok(())
    }

    fn fire_special(&mut self, name: &str) {
        let limit = self.quotas.outbox_bytes;
        for c in self.conns.values_mut() {
            for w in c.watches.iter().filter(|w| w.abs == name) {
                if !push_event(&mut c.out, limit, &w.given, &w.token) {
                    self.dropped_events += 1;
                }
            }
        }
    }

    /// Sends the events of a change at absolute `changed`.
    fn fire(&mut self, changed: &str) {
        let limit = self.quotas.outbox_bytes;
        let node_perms = self.nodes.get(changed).map(|n| n.perms.clone());
        let mut dropped = 0;
        for (&dom, c) in self.conns.iter_mut() {
            if let Some(p) = &node_perms {
                if !perms::allows(p, dom, Access::Read) {
                    continue;
                }
            }
            let h = home(dom);
            for w in &c.watches {
                if !path::is_at_or_below(changed, &w.abs) {
                    continue;
                }
                // Report in the watcher's terms: relative below its home
                // if it watched relatively.
                let shown = if w.given.starts_with('/') {
                    String::from(changed)
                } else {
                    changed.strip_prefix(&format!("{h}/")).map_or_else(|| String::from(changed), String::from)
                };
                if !push_event(&mut c.out, limit, &shown, &w.token) {
                    dropped += 1;
                }
            }
        }
        self.dropped_events += dropped;
    }

    /// Nodes in the tree.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: the root always exists.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Queues a watch event unless the outbox is full; whether it was queued.
fn push_event(out: &mut VecDeque<u8>, limit: usize, path: &str, token: &str) -> bool {
    let len = path.len() + token.len() + 2;
    if out.len() + wire::HEADER + len > limit {
        return false;
    }
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(path.as_bytes());
    body.push(0);
    body.extend_from_slice(token.as_bytes());
    body.push(0);
    wire::push(out, msg::WATCH_EVENT, 0, 0, &body);
    true
}
