//! The server: connections, request dispatch, watches, transactions.
//!
//! # Who owns what
//! - The [`Store`] owns the tree and one connection per introduced domain
//!   (framer, outbox, watches, transactions, stats). The transport owns the
//!   rings: it passes bytes to [`Store::feed`] and moves bytes from
//!   [`Store::take_output`] into the domain's response ring.
//! - One connection per domain id; the privileged domain's exists from
//!   [`Store::new`]. Domain ids are 16-bit ([`DomId`]), as `domid_t`.
//!
//! # Request handling (check order)
//! framing (W1–W4) → type (`EINVAL` unknown, `ENOSYS` not served) →
//! privilege (`EACCES` for INTRODUCE, RELEASE, IS_DOMAIN_INTRODUCED from an
//! unprivileged domain) → arguments (`EINVAL`: unterminated or extra
//! strings, bad path P1–P5, bad domid or perms) → transaction (`ENOENT`
//! unknown `tx_id`, `ENOSPC` over Q4) → permissions (`EACCES`) → quotas
//! (`ENOSPC`). The `tx_id` matters for READ, WRITE, MKDIR, RM, DIRECTORY,
//! DIRECTORY_PART, GET_PERMS, SET_PERMS and TRANSACTION_END; other requests
//! ignore it.
//!
//! # Watches
//! - WATCH registers `(path, token)` (`EEXIST` if the pair exists) and,
//!   after the `OK`, queues one event with the path as given (Xen).
//! - A change at `p` fires every watch on `p` or an ancestor of `p`; a
//!   removal also fires watches below `p` (with the watch's own path).
//!   Events name the path relative to the home if the watch was relative.
//! - An event is queued only for domains that may read the changed node
//!   (its new perms, or its old perms for a removal): no domain learns of
//!   a node it cannot read. `@introduceDomain`/`@releaseDomain` are readable
//!   by the privileged domain only.
//! - Replies precede the events a request causes.
//!
//! # Transactions
//! A transaction reads through the tree and records, per node it touches,
//! the generation it saw (T4); its changes go to an overlay. At commit, if
//! any recorded node's generation changed (or an absent node appeared),
//! the commit fails with `EAGAIN` and nothing is applied; otherwise the
//! overlay is installed at once and its watches fire. Aborting (`"F"`)
//! drops it. Node quota (Q1) is checked again at commit.
//!
//! # Release
//! [`Store::release`] drops the connection (watches, transactions), removes
//! the domain's home subtree, gives its remaining nodes to the privileged
//! domain and drops ACL entries naming it (XSA-322: a reused domid
//! inherits nothing), then fires `@releaseDomain`.

mod tree;

#[cfg(test)]
mod tests;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::path::{self, home, resolve, resolve_watch, WatchPath, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::{Access, DomId, Perms};
use crate::quota::{Config, TOKEN_MAX};
use crate::wire::{
    self, parse_decimal, push_decimal, string_then_rest, strings, Frame, FrameError, Framer, Header, Message, MsgType,
    XsError, HEADER_LEN, MSG_MAX,
};
use tree::{Ctx, Effect, Fire, Tree, Tx, View, OK};

/// Why [`Store::feed`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The domain is not introduced.
    NotIntroduced,
    /// The connection broke on a framing error (W2): its input is ignored
    /// from now on; its output (the error reply) can still be taken.
    Broken,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::NotIntroduced => f.write_str("domain not introduced"),
            ConnError::Broken => f.write_str("connection broken by a framing error"),
        }
    }
}

impl core::error::Error for ConnError {}
impl core::error::Error for XsError {}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Requests answered.
    pub requests: u64,
    /// Of which answered with an error.
    pub errors: u64,
    /// Watch events queued.
    pub events_sent: u64,
    /// Watch events dropped because the outbox was full (Q6).
    pub events_dropped: u64,
    /// Bytes consumed by `feed`.
    pub bytes_in: u64,
    /// Bytes handed out by `take_output`.
    pub bytes_out: u64,
}

/// Counters of the whole store (including released connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered.
    pub requests: u64,
    /// Of which answered with an error.
    pub errors: u64,
    /// Watch events queued.
    pub events_sent: u64,
    /// Watch events dropped (Q6).
    pub events_dropped: u64,
    /// Transaction commits refused with `EAGAIN`.
    pub conflicts: u64,
    /// Connections broken by framing errors.
    pub broken: u64,
    /// Notices dropped because the transport did not poll them.
    pub notices_dropped: u64,
}

/// Something the transport must act on, from a privileged request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// INTRODUCE: map the domain's ring at `gfn` and bind `port`.
    Introduced {
        /// The new domain.
        domid: DomId,
        /// Its ring's frame, as sent.
        gfn: u64,
        /// Its event channel, as sent.
        port: u32,
    },
    /// RELEASE: unmap the domain's ring.
    Released {
        /// The domain.
        domid: DomId,
    },
}

struct Watch {
    /// Absolute path, or a special name.
    path: String,
    token: Vec<u8>,
    relative: bool,
}

struct Conn {
    framer: Framer,
    out: VecDeque<u8>,
    broken: bool,
    watches: Vec<Watch>,
    txs: BTreeMap<u32, Tx>,
    next_tx: u32,
    stats: ConnStats,
}

impl Conn {
    fn new(payload: usize) -> Self {
        Conn {
            framer: Framer::new(payload),
            out: VecDeque::new(),
            broken: false,
            watches: Vec::new(),
            txs: BTreeMap::new(),
            next_tx: 1,
            stats: ConnStats::default(),
        }
    }

    /// Queue the reply to `h` (always fits: Q6 reserve).
    fn reply(&mut self, h: Header, result: Result<Vec<u8>, XsError>, global: &mut Stats) {
        let mut msg = Vec::new();
        let err = match result {
            Ok(payload) => wire::encode(&mut msg, h.ty, h.req_id, h.tx_id, &[&payload]).err(),
            Err(e) => Some(e),
        };
        if let Some(e) = err {
            msg.clear();
            let _ = wire::encode(&mut msg, MsgType::Error as u32, h.req_id, h.tx_id, &[e.name().as_bytes(), b"\0"]);
            self.stats.errors += 1;
            global.errors += 1;
        }
        self.stats.requests += 1;
        global.requests += 1;
        self.out.extend(msg);
    }

    /// Queue a watch event, or drop it if it would eat the reply reserve.
    fn event(&mut self, path: &[u8], token: &[u8], cap: usize, global: &mut Stats) {
        let len = HEADER_LEN + path.len() + token.len() + 2;
        let mut msg = Vec::new();
        let fits = self.out.len() + len + MSG_MAX <= cap;
        if !fits || wire::encode(&mut msg, MsgType::WatchEvent as u32, 0, 0, &[path, b"\0", token, b"\0"]).is_err() {
            self.stats.events_dropped += 1;
            global.events_dropped += 1;
            return;
        }
        self.out.extend(msg);
        self.stats.events_sent += 1;
        global.events_sent += 1;
    }
}

/// A successful request: its reply payload, the initial event of a WATCH,
/// and the firings to deliver after the reply.
struct Done {
    payload: Vec<u8>,
    initial: Option<(Vec<u8>, Vec<u8>)>,
    fires: Vec<Fire>,
}

impl Done {
    fn reply(payload: Vec<u8>) -> Self {
        Done { payload, initial: None, fires: Vec::new() }
    }
}

/// The device store.
pub struct Store {
    cfg: Config,
    tree: Tree,
    conns: BTreeMap<DomId, Conn>,
    stats: Stats,
    notices: VecDeque<Notice>,
}

impl Store {
    /// A store with the root, the privileged domain's connection and home.
    pub fn new(config: Config) -> Self {
        let mut cfg = config;
        cfg.quotas = cfg.quotas.clamped();
        let mut s = Store {
            cfg,
            tree: Tree::new(cfg.privileged),
            conns: BTreeMap::new(),
            stats: Stats::default(),
            notices: VecDeque::new(),
        };
        s.introduce(cfg.privileged);
        s
    }

    /// The configuration in force (quotas clamped).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Open a connection for `domid` and create its home
    /// `/local/domain/<domid>` owned by it (if the home exists it is left
    /// as the toolstack made it), then fire `@introduceDomain`. Returns
    /// false if the domain was already introduced (nothing changes).
    pub fn introduce(&mut self, domid: DomId) -> bool {
        match self.introduce_inner(domid) {
            Some(fires) => {
                self.deliver(&fires);
                true
            }
            None => false,
        }
    }

    fn introduce_inner(&mut self, domid: DomId) -> Option<Vec<Fire>> {
        if self.conns.contains_key(&domid) {
            return None;
        }
        self.conns.insert(domid, Conn::new(self.cfg.quotas.payload));
        let mut fires = Vec::new();
        let h = home(domid);
        if self.tree.get(&h).is_none() {
            let perms = Perms::owned_by(domid, Access::None);
            let quotas = self.cfg.quotas;
            let c = Ctx { dom: self.cfg.privileged, privileged: self.cfg.privileged, quotas: &quotas };
            for step in 0..2 {
                let mut v = View::Global(&self.tree);
                let eff = if step == 0 {
                    tree::mkdir(&mut v, &c, &h)
                } else {
                    tree::set_perms(&mut v, &c, &h, perms.clone())
                };
                if let Ok(eff) = eff {
                    fires.extend(eff.fire);
                    self.tree.apply(eff.changes);
                }
            }
        }
        fires.push(special(INTRODUCE_DOMAIN, self.cfg.privileged));
        Some(fires)
    }

    /// Drop `domid`'s connection and state (see the module docs), then fire
    /// `@releaseDomain`. False if not introduced or privileged.
    pub fn release(&mut self, domid: DomId) -> bool {
        match self.release_inner(domid) {
            Some(fires) => {
                self.deliver(&fires);
                true
            }
            None => false,
        }
    }

    fn release_inner(&mut self, domid: DomId) -> Option<Vec<Fire>> {
        if domid == self.cfg.privileged {
            return None;
        }
        self.conns.remove(&domid)?;
        let mut fires = Vec::new();
        let quotas = self.cfg.quotas;
        let c = Ctx { dom: self.cfg.privileged, privileged: self.cfg.privileged, quotas: &quotas };
        let h = home(domid);
        if let Ok(eff) = tree::rm(&mut View::Global(&self.tree), &c, &h) {
            fires.extend(eff.fire);
            self.tree.apply(eff.changes);
        }
        self.tree.forget_domain(domid, self.cfg.privileged);
        fires.push(special(RELEASE_DOMAIN, self.cfg.privileged));
        Some(fires)
    }

    /// Whether `domid` has a connection.
    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.conns.contains_key(&domid)
    }

    /// Whether `domid`'s connection broke on a framing error.
    pub fn is_broken(&self, domid: DomId) -> bool {
        self.conns.get(&domid).is_some_and(|c| c.broken)
    }

    /// Consume request bytes from `domid`'s ring and answer every complete
    /// request. Returns how many bytes were consumed: fewer than given when
    /// the outbox lacks room for another reply (Q6) — leave the rest in the
    /// ring and feed it after `take_output`. Work is proportional to the
    /// bytes given, plus the watches a change fires.
    pub fn feed(&mut self, domid: DomId, bytes: &[u8]) -> Result<usize, ConnError> {
        let cap = self.cfg.quotas.outbox_bytes;
        let mut used = 0;
        loop {
            let conn = self.conns.get_mut(&domid).ok_or(ConnError::NotIntroduced)?;
            if conn.broken {
                return Err(ConnError::Broken);
            }
            if used == bytes.len() || conn.out.len() + MSG_MAX > cap {
                return Ok(used);
            }
            let (n, frame) = conn.framer.push(&bytes[used..]);
            used += n;
            conn.stats.bytes_in += n as u64;
            match frame {
                None => {
                    if n == 0 {
                        return Ok(used);
                    }
                }
                Some(Err(FrameError::TooLong(h))) => {
                    conn.reply(h, Err(XsError::TooBig), &mut self.stats);
                    conn.broken = true;
                    self.stats.broken += 1;
                    return Err(ConnError::Broken);
                }
                Some(Ok(Frame::Oversized(h))) => conn.reply(h, Err(XsError::TooBig), &mut self.stats),
                Some(Ok(Frame::Message(m))) => self.handle(domid, m),
            }
        }
    }

    /// Whether `domid` has bytes waiting in its outbox.
    pub fn has_output(&self, domid: DomId) -> bool {
        self.pending_output(domid) > 0
    }

    /// Bytes waiting in `domid`'s outbox.
    pub fn pending_output(&self, domid: DomId) -> usize {
        self.conns.get(&domid).map_or(0, |c| c.out.len())
    }

    /// Move up to `buf.len()` outbox bytes into `buf` (partial messages are
    /// fine: the stream continues on the next call). Returns the count.
    pub fn take_output(&mut self, domid: DomId, buf: &mut [u8]) -> usize {
        let Some(conn) = self.conns.get_mut(&domid) else { return 0 };
        let n = buf.len().min(conn.out.len());
        for (d, s) in buf.iter_mut().zip(conn.out.drain(..n)) {
            *d = s;
        }
        conn.stats.bytes_out += n as u64;
        n
    }

    /// Store-wide counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// `domid`'s counters.
    pub fn conn_stats(&self, domid: DomId) -> Option<ConnStats> {
        self.conns.get(&domid).map(|c| c.stats)
    }

    /// The next notice for the transport (INTRODUCE/RELEASE requests).
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// Number of nodes in the tree.
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    /// Nodes owned by `domid` (what Q1 counts).
    pub fn owned_nodes(&self, domid: DomId) -> usize {
        self.tree.owned(domid)
    }

    /// The value at an absolute path, for dom0's own code (no permission check).
    pub fn value(&self, abs_path: &str) -> Option<&[u8]> {
        self.tree.get(abs_path).map(|n| n.value.as_slice())
    }

    fn notice(&mut self, n: Notice) {
        if self.notices.len() >= self.cfg.max_notices.max(1) {
            self.notices.pop_front();
            self.stats.notices_dropped += 1;
        }
        self.notices.push_back(n);
    }

    fn handle(&mut self, dom: DomId, m: Message) {
        let h = m.header;
        let result = self.dispatch(dom, h, &m.payload);
        let cap = self.cfg.quotas.outbox_bytes;
        let Some(conn) = self.conns.get_mut(&dom) else { return };
        match result {
            Err(e) => conn.reply(h, Err(e), &mut self.stats),
            Ok(done) => {
                conn.reply(h, Ok(done.payload), &mut self.stats);
                if let Some((p, t)) = done.initial {
                    conn.event(&p, &t, cap, &mut self.stats);
                }
                self.deliver(&done.fires);
            }
        }
    }

    fn dispatch(&mut self, dom: DomId, h: Header, payload: &[u8]) -> Result<Done, XsError> {
        use MsgType::*;
        let ty = MsgType::from_u32(h.ty).ok_or(XsError::Inval)?;
        let privileged = dom == self.cfg.privileged;
        match ty {
            Read | Write | Mkdir | Rm | Directory | DirectoryPart | GetPerms | SetPerms => {
                self.tree_op(dom, ty, h.tx_id, payload)
            }
            Watch => self.watch(dom, payload),
            Unwatch => self.unwatch(dom, payload),
            TransactionStart => self.tx_start(dom, h.tx_id, payload),
            TransactionEnd => self.tx_end(dom, h.tx_id, payload),
            Introduce => {
                if !privileged {
                    return Err(XsError::Acces);
                }
                let [d, gfn, port] = strings::<3>(payload)?;
                let domid = DomId::parse(d)?;
                let gfn = parse_decimal(gfn).ok_or(XsError::Inval)?;
                let port = parse_decimal(port).and_then(|p| u32::try_from(p).ok()).ok_or(XsError::Inval)?;
                let fires = self.introduce_inner(domid).unwrap_or_default();
                if !fires.is_empty() {
                    self.notice(Notice::Introduced { domid, gfn, port });
                }
                Ok(Done { payload: OK.to_vec(), initial: None, fires })
            }
            Release => {
                if !privileged {
                    return Err(XsError::Acces);
                }
                let [d] = strings::<1>(payload)?;
                let domid = DomId::parse(d)?;
                if domid == self.cfg.privileged {
                    return Err(XsError::Inval);
                }
                let fires = self.release_inner(domid).ok_or(XsError::NoEnt)?;
                self.notice(Notice::Released { domid });
                Ok(Done { payload: OK.to_vec(), initial: None, fires })
            }
            IsDomainIntroduced => {
                if !privileged {
                    return Err(XsError::Acces);
                }
                let [d] = strings::<1>(payload)?;
                let yes = self.conns.contains_key(&DomId::parse(d)?);
                Ok(Done::reply(if yes { b"T\0".to_vec() } else { b"F\0".to_vec() }))
            }
            GetDomainPath => {
                let [d] = strings::<1>(payload)?;
                let mut p = home(DomId::parse(d)?).into_bytes();
                p.push(0);
                Ok(Done::reply(p))
            }
            ResetWatches => {
                let conn = self.conns.get_mut(&dom).ok_or(XsError::NoEnt)?;
                conn.watches.clear();
                conn.txs.clear();
                Ok(Done::reply(OK.to_vec()))
            }
            Control | Resume | SetTarget | Restrict => Err(XsError::NoSys),
            WatchEvent | Error => Err(XsError::Inval),
        }
    }

    fn tree_op(&mut self, dom: DomId, ty: MsgType, tx_id: u32, payload: &[u8]) -> Result<Done, XsError> {
        let quotas = self.cfg.quotas;
        let c = Ctx { dom, privileged: self.cfg.privileged, quotas: &quotas };
        let run = |v: &mut View<'_>| -> Result<Effect, XsError> {
            let path_of = |raw: &[u8]| resolve(dom, raw).map(|r| r.abs);
            match ty {
                MsgType::Write => {
                    let (p, value) = string_then_rest(payload)?;
                    tree::write(v, &c, &path_of(p)?, value)
                }
                MsgType::SetPerms => {
                    let (p, perms) = string_then_rest(payload)?;
                    let path = path_of(p)?;
                    tree::set_perms(v, &c, &path, Perms::parse(perms)?)
                }
                MsgType::DirectoryPart => {
                    let [p, off] = strings::<2>(payload)?;
                    tree::directory_part(v, &c, &path_of(p)?, off)
                }
                _ => {
                    let [p] = strings::<1>(payload)?;
                    let path = path_of(p)?;
                    match ty {
                        MsgType::Read => tree::read(v, &c, &path),
                        MsgType::Mkdir => tree::mkdir(v, &c, &path),
                        MsgType::Rm => tree::rm(v, &c, &path),
                        MsgType::Directory => tree::directory(v, &c, &path),
                        _ => tree::get_perms(v, &c, &path),
                    }
                }
            }
        };
        if tx_id == 0 {
            let eff = run(&mut View::Global(&self.tree))?;
            self.tree.apply(eff.changes);
            return Ok(Done { payload: eff.reply, initial: None, fires: eff.fire.into_iter().collect() });
        }
        let conn = self.conns.get_mut(&dom).ok_or(XsError::NoEnt)?;
        let tx = conn.txs.get_mut(&tx_id).ok_or(XsError::NoEnt)?;
        tx.ops = tx.ops.saturating_add(1);
        if tx.ops > quotas.tx_ops {
            return Err(XsError::NoSpc);
        }
        let eff = run(&mut View::Tx { tree: &self.tree, tx, limit: quotas.tx_nodes })?;
        tx.apply(&self.tree, eff.changes);
        tx.fires.extend(eff.fire);
        Ok(Done::reply(eff.reply))
    }

    fn watch_args(&self, dom: DomId, payload: &[u8]) -> Result<(Vec<u8>, String, Vec<u8>, bool), XsError> {
        let [p, token] = strings::<2>(payload)?;
        if token.len() > TOKEN_MAX {
            return Err(XsError::TooBig);
        }
        let (path, relative) = match resolve_watch(dom, p)? {
            WatchPath::Node(r) => (r.abs, r.relative),
            WatchPath::Special(s) => (String::from(s), false),
        };
        Ok((p.to_vec(), path, token.to_vec(), relative))
    }

    fn watch(&mut self, dom: DomId, payload: &[u8]) -> Result<Done, XsError> {
        let (given, path, token, relative) = self.watch_args(dom, payload)?;
        let limit = if dom == self.cfg.privileged { usize::MAX } else { self.cfg.quotas.watches };
        let conn = self.conns.get_mut(&dom).ok_or(XsError::NoEnt)?;
        if conn.watches.iter().any(|w| w.path == path && w.token == token) {
            return Err(XsError::Exist);
        }
        if conn.watches.len() >= limit {
            return Err(XsError::NoSpc);
        }
        conn.watches.push(Watch { path, token: token.clone(), relative });
        Ok(Done { payload: OK.to_vec(), initial: Some((given, token)), fires: Vec::new() })
    }

    fn unwatch(&mut self, dom: DomId, payload: &[u8]) -> Result<Done, XsError> {
        let (_, path, token, _) = self.watch_args(dom, payload)?;
        let conn = self.conns.get_mut(&dom).ok_or(XsError::NoEnt)?;
        let i = conn.watches.iter().position(|w| w.path == path && w.token == token).ok_or(XsError::NoEnt)?;
        conn.watches.remove(i);
        Ok(Done::reply(OK.to_vec()))
    }

    fn tx_start(&mut self, dom: DomId, tx_id: u32, payload: &[u8]) -> Result<Done, XsError> {
        if tx_id != 0 {
            return Err(XsError::Busy);
        }
        if !(payload.is_empty() || payload == b"\0") {
            return Err(XsError::Inval);
        }
        let limit = if dom == self.cfg.privileged { usize::MAX } else { self.cfg.quotas.transactions };
        let conn = self.conns.get_mut(&dom).ok_or(XsError::NoEnt)?;
        if conn.txs.len() >= limit {
            return Err(XsError::NoSpc);
        }
        let mut id = conn.next_tx;
        while id == 0 || conn.txs.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        conn.next_tx = id.wrapping_add(1);
        conn.txs.insert(id, Tx::default());
        let mut out = Vec::new();
        push_decimal(&mut out, u64::from(id));
        out.push(0);
        Ok(Done::reply(out))
    }

    fn tx_end(&mut self, dom: DomId, tx_id: u32, payload: &[u8]) -> Result<Done, XsError> {
        let [arg] = strings::<1>(payload)?;
        let commit = match arg {
            b"T" => true,
            b"F" => false,
            _ => return Err(XsError::Inval),
        };
        let conn = self.conns.get_mut(&dom).ok_or(XsError::NoEnt)?;
        let tx = conn.txs.remove(&tx_id).ok_or(XsError::NoEnt)?;
        if !commit {
            return Ok(Done::reply(OK.to_vec()));
        }
        if !tx.unchanged(&self.tree) {
            self.stats.conflicts += 1;
            return Err(XsError::Again);
        }
        let delta = tx.delta(dom);
        if dom != self.cfg.privileged
            && delta > 0
            && self.tree.owned(dom).saturating_add_signed(delta) > self.cfg.quotas.nodes
        {
            return Err(XsError::NoSpc);
        }
        let (changes, mut fires) = tx.into_parts();
        self.tree.apply(changes);
        for f in &mut fires {
            if !f.recurse {
                if let Some(n) = self.tree.get(&f.path) {
                    f.perms = n.perms.clone();
                }
            }
        }
        Ok(Done { payload: OK.to_vec(), initial: None, fires })
    }

    /// Queue the events of `fires` (deduplicated per watch and path).
    fn deliver(&mut self, fires: &[Fire]) {
        let cap = self.cfg.quotas.outbox_bytes;
        let privileged = self.cfg.privileged;
        let mut seen: BTreeSet<(DomId, usize, String)> = BTreeSet::new();
        for f in fires {
            for (&dom, conn) in self.conns.iter_mut() {
                if !f.perms.access_for(dom, privileged).can_read() {
                    continue;
                }
                let prefix = {
                    let mut h = home(dom);
                    h.push('/');
                    h
                };
                let mut events = Vec::new();
                for (i, w) in conn.watches.iter().enumerate() {
                    let ev = if path::is_under(&f.path, &w.path) {
                        &f.path
                    } else if f.recurse && path::is_under(&w.path, &f.path) {
                        &w.path
                    } else {
                        continue;
                    };
                    if !seen.insert((dom, i, ev.clone())) {
                        continue;
                    }
                    let shown = if w.relative { ev.strip_prefix(prefix.as_str()).unwrap_or(ev) } else { ev };
                    events.push((shown.as_bytes().to_vec(), w.token.clone()));
                }
                for (p, t) in events {
                    conn.event(&p, &t, cap, &mut self.stats);
                }
            }
        }
    }
}

fn special(name: &str, privileged: DomId) -> Fire {
    Fire { path: String::from(name), recurse: false, perms: Perms::owned_by(privileged, Access::None) }
}
