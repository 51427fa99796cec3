//! dom0's side of the device store ([`device_store`]): the store itself,
//! plus what its transport and dom0's own code need around it.
//!
//! - Per connection, the bytes read from a domain's ring that the store
//!   has not taken yet (it takes a request only when its outbox has room
//!   for the reply), and the reply bytes taken from the store that the
//!   ring had no room for. Both are bounded: dom0 reads no more of a
//!   domain's ring while its backlog holds a whole message
//!   ([`Xs::accepting`]).
//! - dom0's own requests (the toolstack's directories, its backends'
//!   state) go over the privileged domain's connection as wire requests,
//!   through the crate's client encoder and decoder, so they take the
//!   same checks as everyone's; reads of values use the store's direct
//!   [`Store::value`].

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use device_store::client::{Decoder, Reply, Request};
use device_store::{Config, ConnError, DomId, Perms, Store, XsError, PAYLOAD_MAX};

/// Bytes of one whole message at most.
const MESSAGE: usize = 16 + PAYLOAD_MAX;

/// Why one of dom0's own requests failed.
#[derive(Debug)]
pub struct XsFail(pub String);

impl fmt::Display for XsFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Default)]
struct Pipe {
    /// Read from the ring, not yet taken by the store.
    inbound: Vec<u8>,
    /// Taken from the store, not yet sent.
    outbound: Vec<u8>,
}

/// The store with its transport buffers (see the module docs).
pub struct Xs {
    store: Store,
    pipes: BTreeMap<u16, Pipe>,
    next_req: u32,
    /// Counts the passes in which another domain's requests reached the
    /// store or a domain was released: when it has not moved, no node
    /// another domain writes has changed.
    changes: u64,
}

const DOM0: DomId = DomId::new(0);

impl Xs {
    pub fn new() -> Xs {
        Xs { store: Store::new(Config::default()), pipes: BTreeMap::new(), next_req: 1, changes: 0 }
    }

    pub fn introduce(&mut self, domid: u16) {
        self.store.introduce(DomId::new(domid));
        self.pipes.insert(domid, Pipe::default());
    }

    pub fn release(&mut self, domid: u16) {
        self.store.release(DomId::new(domid));
        self.pipes.remove(&domid);
        self.changes += 1;
    }

    /// See the `changes` field: compare two readings to know whether
    /// another domain may have changed a node in between.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Whether dom0 should read more of `domid`'s ring now.
    pub fn accepting(&self, domid: u16) -> bool {
        self.pipes.get(&domid).is_some_and(|p| p.inbound.len() < MESSAGE) && !self.store.is_broken(DomId::new(domid))
    }

    /// Bytes read from `domid`'s ring.
    pub fn feed(&mut self, domid: u16, bytes: &[u8]) -> Result<(), ConnError> {
        let p = self.pipes.get_mut(&domid).ok_or(ConnError::NotIntroduced)?;
        p.inbound.extend_from_slice(bytes);
        self.push_in(domid)
    }

    fn push_in(&mut self, domid: u16) -> Result<(), ConnError> {
        let Some(p) = self.pipes.get_mut(&domid) else { return Ok(()) };
        if p.inbound.is_empty() {
            return Ok(());
        }
        let n = self.store.feed(DomId::new(domid), &p.inbound)?;
        p.inbound.drain(..n);
        if n > 0 {
            self.changes += 1;
        }
        Ok(())
    }

    /// Whether bytes wait for `domid` (a cheap test before
    /// [`Xs::peek_output`]).
    pub fn has_output(&self, domid: u16) -> bool {
        self.pipes.get(&domid).is_some_and(|p| !p.outbound.is_empty()) || self.store.has_output(DomId::new(domid))
    }

    /// Bytes waiting for `domid`, copied into `buf` (not taken).
    pub fn peek_output(&mut self, domid: u16, buf: &mut [u8]) -> usize {
        let Some(p) = self.pipes.get_mut(&domid) else { return 0 };
        let mut more = [0u8; 512];
        while p.outbound.len() < buf.len() {
            let want = (buf.len() - p.outbound.len()).min(more.len());
            let n = self.store.take_output(DomId::new(domid), &mut more[..want]);
            if n == 0 {
                break;
            }
            p.outbound.extend_from_slice(&more[..n]);
        }
        let n = p.outbound.len().min(buf.len());
        buf[..n].copy_from_slice(&p.outbound[..n]);
        n
    }

    /// The first `n` waiting bytes were sent; requests that waited for the
    /// room go on.
    pub fn consume_output(&mut self, domid: u16, n: usize) {
        if let Some(p) = self.pipes.get_mut(&domid) {
            let n = n.min(p.outbound.len());
            p.outbound.drain(..n);
        }
        let _ = self.push_in(domid);
    }

    /// One of dom0's own requests, answered at once.
    fn call(&mut self, req: Request<'_>) -> Result<Vec<u8>, XsFail> {
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut bytes = Vec::new();
        req.encode(id, 0, &mut bytes).map_err(|e| XsFail(String::from(e.name())))?;
        let mut at = 0;
        let mut dec = Decoder::new();
        let mut buf = alloc::vec![0u8; MESSAGE];
        loop {
            if at < bytes.len() {
                at += self.store.feed(DOM0, &bytes[at..]).map_err(|e| XsFail(alloc::format!("{e:?}")))?;
            }
            let n = self.store.take_output(DOM0, &mut buf);
            if n == 0 && at == bytes.len() {
                return Err(XsFail(String::from("no reply")));
            }
            for r in dec.push_all(&buf[..n]) {
                match r {
                    Ok(Reply::Ok { header, payload }) if header.req_id == id => return Ok(payload),
                    Ok(Reply::Error { header, error }) if header.req_id == id => {
                        return Err(XsFail(String::from(error.map_or("unknown error", XsError::name))))
                    }
                    _ => {} // dom0's watch events and nothing else
                }
            }
        }
    }

    pub fn write(&mut self, _dom0: u16, path: &str, value: &[u8]) -> Result<(), XsFail> {
        self.call(Request::Write(path, value)).map(|_| ())
    }

    pub fn mkdir(&mut self, _dom0: u16, path: &str) -> Result<(), XsFail> {
        self.call(Request::Mkdir(path)).map(|_| ())
    }

    pub fn set_perms(&mut self, _dom0: u16, path: &str, list: &[String]) -> Result<(), XsFail> {
        let mut payload = Vec::new();
        for p in list {
            payload.extend_from_slice(p.as_bytes());
            payload.push(0);
        }
        let perms = Perms::parse(&payload).map_err(|e| XsFail(String::from(e.name())))?;
        self.call(Request::SetPerms(path, &perms)).map(|_| ())
    }

    pub fn read(&mut self, _dom0: u16, path: &str) -> Result<Vec<u8>, XsFail> {
        self.store.value(path).map(<[u8]>::to_vec).ok_or_else(|| XsFail(String::from("ENOENT")))
    }
}
