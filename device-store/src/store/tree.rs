//! The tree, transaction overlays, and the operations written once over a
//! [`View`] (the global tree or a transaction's view of it).
//!
//! Invariants (checked by [`Tree::check`] in the tests):
//! - T1. The root `/` always exists and is never removed.
//! - T2. Every other node's parent exists and lists it among its children;
//!   every listed child exists.
//! - T3. `owned[d]` is the number of nodes whose owner is `d`.
//! - T4. Every change bumps the global generation and stamps the node with
//!   it, so a node's generation identifies its state (transactions compare
//!   generations to detect conflicts).
//!
//! Operations never modify a view: they read through it (a transaction
//! records each first read in its read set) and return an [`Effect`], which
//! the caller applies to the tree or to the transaction's overlay.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::path::{basename, join, parent};
use crate::perms::{Access, DomId, Perms};
use crate::quota::Quotas;
use crate::wire::{parse_decimal, push_decimal, XsError, PAYLOAD_MAX};

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub value: Vec<u8>,
    pub perms: Perms,
    pub children: BTreeSet<String>,
    pub gen: u64,
}

/// A list of node states to install (`None` removes).
pub(crate) type Changes = Vec<(String, Option<Node>)>;

/// A watch firing to deliver: `path` changed.
#[derive(Clone, Debug)]
pub(crate) struct Fire {
    pub path: String,
    /// Also tell watchers of paths below `path` (a removal).
    pub recurse: bool,
    /// Only domains that may read under these perms are told.
    pub perms: Perms,
}

/// What an operation does.
pub(crate) struct Effect {
    pub reply: Vec<u8>,
    pub changes: Changes,
    pub fire: Option<Fire>,
}

pub(crate) const OK: &[u8] = b"OK\0";

impl Effect {
    fn reply(reply: Vec<u8>) -> Self {
        Effect { reply, changes: Vec::new(), fire: None }
    }
    fn ok(changes: Changes, fire: Option<Fire>) -> Self {
        Effect { reply: OK.to_vec(), changes, fire }
    }
}

/// The global tree.
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
    gen: u64,
    owned: BTreeMap<DomId, usize>,
}

impl Tree {
    pub fn new(privileged: DomId) -> Self {
        let mut t = Tree { nodes: BTreeMap::new(), gen: 0, owned: BTreeMap::new() };
        let root = Node {
            value: Vec::new(),
            perms: Perms::owned_by(privileged, Access::None),
            children: BTreeSet::new(),
            gen: 0,
        };
        t.apply(vec![(String::from("/"), Some(root))]);
        t
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn owned(&self, d: DomId) -> usize {
        self.owned.get(&d).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn count(&mut self, d: DomId, up: bool) {
        let c = self.owned.entry(d).or_insert(0);
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.owned.remove(&d);
            }
        }
    }

    /// Install `changes` (T3, T4).
    pub fn apply(&mut self, changes: Changes) {
        for (path, new) in changes {
            self.gen += 1;
            if let Some(old) = self.nodes.get(&path).map(|n| n.perms.owner()) {
                self.count(old, false);
            }
            match new {
                Some(mut n) => {
                    n.gen = self.gen;
                    self.count(n.perms.owner(), true);
                    self.nodes.insert(path, n);
                }
                None => {
                    self.nodes.remove(&path);
                }
            }
        }
    }

    /// A domain is gone: its nodes pass to `to`, and ACL entries naming it
    /// are dropped, so that a later domain with the same id inherits
    /// nothing (XSA-322).
    pub fn forget_domain(&mut self, d: DomId, to: DomId) {
        let mut moved = 0;
        for n in self.nodes.values_mut() {
            let mut changed = n.perms.forget(d);
            if n.perms.owner() == d {
                n.perms.set_owner(to);
                moved += 1;
                changed = true;
            }
            if changed {
                self.gen += 1;
                n.gen = self.gen;
            }
        }
        for _ in 0..moved {
            self.count(d, false);
            self.count(to, true);
        }
    }

    /// T1–T3, for tests.
    #[cfg(test)]
    pub fn check(&self) -> Result<(), String> {
        use alloc::format;
        if !self.nodes.contains_key("/") {
            return Err("no root".into());
        }
        let mut owned: BTreeMap<DomId, usize> = BTreeMap::new();
        for (p, n) in &self.nodes {
            *owned.entry(n.perms.owner()).or_insert(0) += 1;
            if let Some(par) = parent(p) {
                match self.nodes.get(par) {
                    Some(pn) if pn.children.contains(basename(p)) => {}
                    _ => return Err(format!("{p}: parent missing or does not list it")),
                }
            }
            for c in &n.children {
                if !self.nodes.contains_key(&join(p, c)) {
                    return Err(format!("{p}: child {c} missing"));
                }
            }
        }
        if owned != self.owned {
            return Err(format!("owned {:?} != counted {:?}", self.owned, owned));
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn dump(&self) -> BTreeMap<String, Vec<u8>> {
        self.nodes.iter().map(|(p, n)| (p.clone(), n.value.clone())).collect()
    }
}

/// An open transaction: its read set, overlay and pending watch firings.
#[derive(Default)]
pub(crate) struct Tx {
    /// First-seen generation of every node touched (`None`: absent).
    reads: BTreeMap<String, Option<u64>>,
    /// The transaction's version of every node it changed.
    overlay: BTreeMap<String, Option<Node>>,
    /// Owned-node count changes, per domain.
    delta: BTreeMap<DomId, isize>,
    pub fires: Vec<Fire>,
    pub ops: u32,
}

impl Tx {
    pub fn apply(&mut self, tree: &Tree, changes: Changes) {
        for (path, new) in changes {
            let old = match self.overlay.get(&path) {
                Some(o) => o.as_ref().map(|n| n.perms.owner()),
                None => tree.get(&path).map(|n| n.perms.owner()),
            };
            if let Some(o) = old {
                *self.delta.entry(o).or_insert(0) -= 1;
            }
            if let Some(n) = &new {
                *self.delta.entry(n.perms.owner()).or_insert(0) += 1;
            }
            self.overlay.insert(path, new);
        }
        self.delta.retain(|_, v| *v != 0);
    }

    /// Whether nothing this transaction touched changed since it first did.
    pub fn unchanged(&self, tree: &Tree) -> bool {
        self.reads.iter().all(|(p, g)| tree.get(p).map(|n| n.gen) == *g)
    }

    pub fn delta(&self, d: DomId) -> isize {
        self.delta.get(&d).copied().unwrap_or(0)
    }

    pub fn into_parts(self) -> (Changes, Vec<Fire>) {
        (self.overlay.into_iter().collect(), self.fires)
    }
}

/// What an operation sees.
pub(crate) enum View<'a> {
    Global(&'a Tree),
    Tx { tree: &'a Tree, tx: &'a mut Tx, limit: usize },
}

impl View<'_> {
    /// The node at `path`; in a transaction, records the first read, and
    /// fails with `ENOSPC` once the read set is full (Q4).
    pub fn get(&mut self, path: &str) -> Result<Option<&Node>, XsError> {
        match self {
            View::Global(tree) => Ok(tree.get(path)),
            View::Tx { tree, tx, limit } => {
                if !tx.reads.contains_key(path) {
                    if tx.reads.len() >= *limit {
                        return Err(XsError::NoSpc);
                    }
                    tx.reads.insert(String::from(path), tree.get(path).map(|n| n.gen));
                }
                Ok(match tx.overlay.get(path) {
                    Some(o) => o.as_ref(),
                    None => tree.get(path),
                })
            }
        }
    }

    fn owned(&self, d: DomId) -> usize {
        match self {
            View::Global(tree) => tree.owned(d),
            View::Tx { tree, tx, .. } => tree.owned(d).saturating_add_signed(tx.delta(d)),
        }
    }
}

/// Who is asking.
pub(crate) struct Ctx<'q> {
    pub dom: DomId,
    pub privileged: DomId,
    pub quotas: &'q Quotas,
}

impl Ctx<'_> {
    fn access(&self, perms: &Perms) -> Access {
        perms.access_for(self.dom, self.privileged)
    }
    fn is_privileged(&self) -> bool {
        self.dom == self.privileged
    }
}

#[derive(Clone, Copy)]
enum Want {
    Read,
    Write,
}

/// The error for a missing node: `ENOENT` if the caller may read its
/// nearest existing ancestor, else `EACCES` (existence does not leak).
fn missing(v: &mut View<'_>, c: &Ctx<'_>, path: &str) -> XsError {
    let mut p = path;
    while let Some(par) = parent(p) {
        match v.get(par) {
            Err(e) => return e,
            Ok(Some(n)) => return if c.access(&n.perms).can_read() { XsError::NoEnt } else { XsError::Acces },
            Ok(None) => p = par,
        }
    }
    XsError::NoEnt
}

/// The existing node at `path`, if the caller may `want` it.
fn node<'v>(v: &'v mut View<'_>, c: &Ctx<'_>, path: &str, want: Want) -> Result<&'v Node, XsError> {
    if v.get(path)?.is_none() {
        return Err(missing(v, c, path));
    }
    let n = v.get(path)?.ok_or(XsError::NoEnt)?;
    let a = c.access(&n.perms);
    let ok = match want {
        Want::Read => a.can_read(),
        Want::Write => a.can_write(),
    };
    if ok {
        Ok(n)
    } else {
        Err(XsError::Acces)
    }
}

pub(crate) fn read(v: &mut View<'_>, c: &Ctx<'_>, path: &str) -> Result<Effect, XsError> {
    Ok(Effect::reply(node(v, c, path, Want::Read)?.value.clone()))
}

pub(crate) fn get_perms(v: &mut View<'_>, c: &Ctx<'_>, path: &str) -> Result<Effect, XsError> {
    let mut out = Vec::new();
    node(v, c, path, Want::Read)?.perms.encode(&mut out);
    Ok(Effect::reply(out))
}

pub(crate) fn directory(v: &mut View<'_>, c: &Ctx<'_>, path: &str) -> Result<Effect, XsError> {
    let n = node(v, c, path, Want::Read)?;
    let mut out = Vec::new();
    for k in &n.children {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        if out.len() > PAYLOAD_MAX {
            return Err(XsError::TooBig);
        }
    }
    Ok(Effect::reply(out))
}

/// `DIRECTORY_PART`: `gen\0` then the children from byte `offset` of the
/// full listing, as many as fit; a final extra `\0` when the listing ends.
pub(crate) fn directory_part(v: &mut View<'_>, c: &Ctx<'_>, path: &str, offset: &[u8]) -> Result<Effect, XsError> {
    let offset = parse_decimal(offset).ok_or(XsError::Inval)?;
    let n = node(v, c, path, Want::Read)?;
    let mut out = Vec::new();
    push_decimal(&mut out, n.gen);
    out.push(0);
    let mut pos: u64 = 0;
    let mut done = true;
    for k in &n.children {
        let len = k.len() as u64 + 1;
        if pos < offset {
            pos += len;
            if pos > offset {
                return Err(XsError::Inval);
            }
            continue;
        }
        if out.len() + k.len() + 2 > PAYLOAD_MAX {
            done = false;
            break;
        }
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        pos += len;
    }
    if pos < offset {
        return Err(XsError::Inval);
    }
    if done {
        out.push(0);
    }
    Ok(Effect::reply(out))
}

pub(crate) fn write(v: &mut View<'_>, c: &Ctx<'_>, path: &str, value: &[u8]) -> Result<Effect, XsError> {
    if value.len() > c.quotas.value_bytes {
        return Err(XsError::NoSpc);
    }
    if v.get(path)?.is_none() {
        return create(v, c, path, value);
    }
    let mut n = node(v, c, path, Want::Write)?.clone();
    n.value = value.to_vec();
    let fire = Fire { path: String::from(path), recurse: false, perms: n.perms.clone() };
    Ok(Effect::ok(vec![(String::from(path), Some(n))], Some(fire)))
}

pub(crate) fn mkdir(v: &mut View<'_>, c: &Ctx<'_>, path: &str) -> Result<Effect, XsError> {
    if v.get(path)?.is_none() {
        return create(v, c, path, &[]);
    }
    node(v, c, path, Want::Write)?;
    Ok(Effect::ok(Vec::new(), None))
}

/// Create `path` (absent) and its missing parents, which inherit the
/// perms of the nearest existing ancestor; an unprivileged creator owns
/// them (Xen). Needs write access to that ancestor, and node quota (Q1).
fn create(v: &mut View<'_>, c: &Ctx<'_>, path: &str, value: &[u8]) -> Result<Effect, XsError> {
    let mut missing_paths: Vec<&str> = vec![path];
    let mut anc = parent(path).ok_or(XsError::Inval)?;
    while v.get(anc)?.is_none() {
        missing_paths.push(anc);
        anc = parent(anc).ok_or(XsError::NoEnt)?;
    }
    let owned = v.owned(c.dom);
    let a = v.get(anc)?.ok_or(XsError::NoEnt)?;
    if !c.access(&a.perms).can_write() {
        return Err(XsError::Acces);
    }
    if !c.is_privileged() && owned + missing_paths.len() > c.quotas.nodes {
        return Err(XsError::NoSpc);
    }
    let mut perms = a.perms.clone();
    if !c.is_privileged() {
        perms.set_owner(c.dom);
    }
    let mut a2 = a.clone();
    let top = missing_paths.last().copied().unwrap_or(path);
    a2.children.insert(String::from(basename(top)));
    let mut changes = vec![(String::from(anc), Some(a2))];
    for i in (0..missing_paths.len()).rev() {
        let mut children = BTreeSet::new();
        if i > 0 {
            children.insert(String::from(basename(missing_paths[i - 1])));
        }
        let value = if i == 0 { value.to_vec() } else { Vec::new() };
        let n = Node { value, perms: perms.clone(), children, gen: 0 };
        changes.push((String::from(missing_paths[i]), Some(n)));
    }
    let fire = Fire { path: String::from(path), recurse: false, perms };
    Ok(Effect::ok(changes, Some(fire)))
}

/// Remove a subtree. Removing an absent node whose parent exists (and is
/// readable) succeeds, as in Xen; the root is `EINVAL`.
pub(crate) fn rm(v: &mut View<'_>, c: &Ctx<'_>, path: &str) -> Result<Effect, XsError> {
    let par = parent(path).ok_or(XsError::Inval)?;
    if v.get(path)?.is_none() {
        if v.get(par)?.is_some() {
            node(v, c, par, Want::Read)?;
            return Ok(Effect::ok(Vec::new(), None));
        }
        return Err(missing(v, c, path));
    }
    let perms = node(v, c, path, Want::Write)?.perms.clone();
    let mut changes = Vec::new();
    let mut stack = vec![String::from(path)];
    while let Some(p) = stack.pop() {
        if let Some(n) = v.get(&p)? {
            stack.extend(n.children.iter().map(|k| join(&p, k)));
        }
        changes.push((p, None));
    }
    let mut pn = v.get(par)?.ok_or(XsError::NoEnt)?.clone();
    pn.children.remove(basename(path));
    changes.push((String::from(par), Some(pn)));
    Ok(Effect::ok(changes, Some(Fire { path: String::from(path), recurse: true, perms })))
}

/// Replace perms: the owner or the privileged domain only (`EACCES`); an
/// unprivileged owner may not give the node away (`EPERM`).
pub(crate) fn set_perms(v: &mut View<'_>, c: &Ctx<'_>, path: &str, perms: Perms) -> Result<Effect, XsError> {
    if v.get(path)?.is_none() {
        return Err(missing(v, c, path));
    }
    let n = v.get(path)?.ok_or(XsError::NoEnt)?;
    if !c.is_privileged() && c.dom != n.perms.owner() {
        return Err(XsError::Acces);
    }
    if !c.is_privileged() && perms.owner() != n.perms.owner() {
        return Err(XsError::Perm);
    }
    let mut n = n.clone();
    n.perms = perms.clone();
    let fire = Fire { path: String::from(path), recurse: false, perms };
    Ok(Effect::ok(vec![(String::from(path), Some(n))], Some(fire)))
}
