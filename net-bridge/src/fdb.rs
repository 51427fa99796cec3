//! The learning table (forwarding database): (VLAN, MAC) → port.
//!
//! # Invariants
//! - Owned by its [`Bridge`](crate::Bridge); filled only by the bridge's
//!   learning step, from the source MAC of a frame it accepted on a port that
//!   has no assigned MAC (pinned MACs never take an entry).
//! - At most `N` entries (the fixed capacity), at most one per (VLAN, MAC),
//!   and at most the port's learn limit per port: `per_port[p]` is the number
//!   of entries, live or expired, naming port `p`.
//! - Every entry is in its hash bucket's chain, in the table's recency list
//!   and in its port's recency list. Nodes from `unused` up have never been
//!   used; every other free node is in the free list.
//!   The lists are ordered by last refresh, least recent first.
//! - Time is the caller's monotonic clock in ns. An entry is *live* while
//!   `now - last_seen <= ageing`; a `now` before `last_seen` (a clock that
//!   went back) counts as age 0. An expired entry is ignored by lookups and is
//!   the first to be reused; [`Bridge::expire`](crate::Bridge::expire) frees
//!   all of them at once.
//!
//! # Replacement when a port learns a new (VLAN, MAC)
//! 1. The port is at its learn limit: its own least recently seen entry is
//!    replaced. A port can never push out another port's entries this way.
//! 2. Else a free slot is used.
//! 3. Else (table full) the least recently seen entry of the whole table is
//!    replaced; it is an expired one if any exists.
//!
//! "Least recently seen" is the order of refreshes, which for a monotonic
//! clock is the order of last-seen times.
//!
//! So while the learn limits of the ports add up to at most `N` (the default
//! limit, `N / MAX_PORTS`, ensures it), step 3 never happens and a port's
//! entries leave the table only by its own learning, by ageing, or by dom0
//! (reconfiguring or removing the port): a hostile trunk or uplink flooding
//! random source MACs only churns its own share. A MAC seen on a new port in
//! the same VLAN moves its entry there (step 1 applies to the new port).
//!
//! # Work
//! Lookup and learning hash (VLAN, MAC) with the bridge's seed
//! ([`Config::hash_seed`](crate::Config::hash_seed)) into one of `N` buckets
//! and walk its chain; replacement takes the head of a recency list. So both
//! are `O(1)` expected, and `O(chain)` at worst: a sender that knows the seed
//! can put into one bucket at most the entries its port may hold (its learn
//! limit), so the chain is bounded by the sum of the limits of the ports that
//! collude, and never exceeds `N`. Removing a port, flushing and expiring
//! scan the `N` nodes; they are dom0's calls, not per frame.
//!
//! Memory: about 60 bytes per entry (some 60 KiB at the default `N` = 1024).

use crate::ethernet::{Mac, Vid};
use crate::port::{PortId, MAX_PORTS};

/// "No node": the end of a chain or list.
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Slot {
    pub(crate) vlan: Vid,
    pub(crate) mac: Mac,
    pub(crate) port: PortId,
    pub(crate) seen: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link { prev: NIL, next: NIL };

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Node {
    entry: Option<Slot>,
    /// Next node in the bucket's chain, or in the free list.
    chain: u32,
    /// Place in the table's recency list.
    age: Link,
    /// Place in the port's recency list.
    own: Link,
}

const FREE_NODE: Node = Node { entry: None, chain: NIL, age: UNLINKED, own: UNLINKED };

/// A doubly linked list of nodes: `head` is the least recent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY_LIST: List = List { head: NIL, tail: NIL };

/// Which recency list.
#[derive(Clone, Copy)]
enum Which {
    Table,
    Port(PortId),
}

/// One learned entry, as [`Bridge::fdb_entries`](crate::Bridge::fdb_entries)
/// shows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FdbEntry {
    /// The VLAN it was learned in.
    pub vlan: Vid,
    /// The source MAC.
    pub mac: Mac,
    /// The port it was last seen on.
    pub port: PortId,
    /// When (the caller's ns).
    pub last_seen: u64,
    /// Whether it is still live at the time asked.
    pub live: bool,
}

/// Learning-table counters (part of [`Stats`](crate::Stats)).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FdbStats {
    /// Entries now in the table, live or expired.
    pub entries: usize,
    /// New (VLAN, MAC) entries made.
    pub learned: u64,
    /// Entries moved to another port.
    pub moved: u64,
    /// Live entries replaced because their port was at its learn limit.
    pub evicted_port_limit: u64,
    /// Live entries replaced because the table was full.
    pub evicted_full: u64,
    /// Expired entries reused or freed.
    pub expired: u64,
    /// Sources not learned: a learn limit of 0, or a capacity of 0.
    pub not_learned: u64,
}

pub(crate) struct Fdb<const N: usize> {
    nodes: [Node; N],
    /// Chain heads, indexed by hash.
    buckets: [u32; N],
    /// Freed nodes, linked through `chain`.
    free: u32,
    /// Nodes from here up have never been used.
    unused: u32,
    table: List,
    ports: [List; MAX_PORTS],
    per_port: [usize; MAX_PORTS],
    len: usize,
    ageing: u64,
    seed: u64,
}

const fn live(seen: u64, now: u64, ageing: u64) -> bool {
    now.saturating_sub(seen) <= ageing
}

/// A 64-bit mix of the key and the seed (not cryptographic: the seed, which
/// dom0 draws at boot, only makes collisions hard to aim at).
fn hash(seed: u64, vlan: Vid, mac: Mac) -> u64 {
    let [a, b, c, d, e, f] = mac.0;
    let [v0, v1] = vlan.get().to_be_bytes();
    let mut h = u64::from_be_bytes([v0, v1, a, b, c, d, e, f]) ^ seed;
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn idx(i: u32) -> usize {
    i as usize
}

impl<const N: usize> Fdb<N> {
    pub(crate) const fn new(ageing: u64, seed: u64) -> Self {
        const { assert!(N < NIL as usize, "the capacity must fit the u32 node indices") };
        Fdb {
            nodes: [FREE_NODE; N],
            buckets: [NIL; N],
            free: NIL,
            unused: 0,
            table: EMPTY_LIST,
            ports: [EMPTY_LIST; MAX_PORTS],
            per_port: [0; MAX_PORTS],
            len: 0,
            ageing,
            seed,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn bucket(&self, vlan: Vid, mac: Mac) -> Option<usize> {
        let n = u64::try_from(N).ok().filter(|&n| n > 0)?;
        usize::try_from(hash(self.seed, vlan, mac) % n).ok()
    }

    fn entry(&self, i: u32) -> Option<Slot> {
        self.nodes.get(idx(i))?.entry
    }

    /// The node holding (vlan, mac). The walk is bounded by `N` whatever
    /// the links say.
    fn find(&self, vlan: Vid, mac: Mac) -> Option<u32> {
        let mut i = *self.buckets.get(self.bucket(vlan, mac)?)?;
        for _ in 0..N {
            let node = self.nodes.get(idx(i))?;
            if node.entry.is_some_and(|s| s.vlan == vlan && s.mac == mac) {
                return Some(i);
            }
            i = node.chain;
        }
        None
    }

    /// The live entry's port for (vlan, mac).
    pub(crate) fn lookup(&self, vlan: Vid, mac: Mac, now: u64) -> Option<PortId> {
        self.entry(self.find(vlan, mac)?).filter(|s| live(s.seen, now, self.ageing)).map(|s| s.port)
    }

    fn list_mut(&mut self, which: Which) -> Option<&mut List> {
        match which {
            Which::Table => Some(&mut self.table),
            Which::Port(p) => self.ports.get_mut(p.index()),
        }
    }

    fn link_mut(&mut self, which: Which, i: u32) -> Option<&mut Link> {
        let node = self.nodes.get_mut(idx(i))?;
        Some(match which {
            Which::Table => &mut node.age,
            Which::Port(_) => &mut node.own,
        })
    }

    fn unlink(&mut self, which: Which, i: u32) {
        let Some(&mut Link { prev, next }) = self.link_mut(which, i) else { return };
        match self.link_mut(which, prev) {
            Some(l) => l.next = next,
            None => {
                if let Some(list) = self.list_mut(which) {
                    list.head = next;
                }
            }
        }
        match self.link_mut(which, next) {
            Some(l) => l.prev = prev,
            None => {
                if let Some(list) = self.list_mut(which) {
                    list.tail = prev;
                }
            }
        }
        if let Some(l) = self.link_mut(which, i) {
            *l = UNLINKED;
        }
    }

    fn push_newest(&mut self, which: Which, i: u32) {
        let Some(tail) = self.list_mut(which).map(|l| l.tail) else { return };
        if let Some(l) = self.link_mut(which, i) {
            *l = Link { prev: tail, next: NIL };
        }
        match self.link_mut(which, tail) {
            Some(l) => l.next = i,
            None => {
                if let Some(list) = self.list_mut(which) {
                    list.head = i;
                }
            }
        }
        if let Some(list) = self.list_mut(which) {
            list.tail = i;
        }
    }

    fn count(&mut self, port: PortId, add: bool) {
        if let Some(c) = self.per_port.get_mut(port.index()) {
            *c = if add { c.saturating_add(1) } else { c.saturating_sub(1) };
        }
    }

    /// Whether a node is free.
    fn has_room(&self) -> bool {
        self.free != NIL || idx(self.unused) < N
    }

    /// Puts `slot` in a free node (none: nothing happens).
    fn insert(&mut self, slot: Slot) {
        let Some(b) = self.bucket(slot.vlan, slot.mac) else { return };
        let Some(head) = self.buckets.get(b).copied() else { return };
        let i = if self.free != NIL { self.free } else { self.unused };
        let Some(node) = self.nodes.get_mut(idx(i)) else { return };
        if i == self.free {
            self.free = node.chain;
        } else {
            self.unused += 1;
        }
        *node = Node { entry: Some(slot), chain: head, age: UNLINKED, own: UNLINKED };
        if let Some(h) = self.buckets.get_mut(b) {
            *h = i;
        }
        self.push_newest(Which::Table, i);
        self.push_newest(Which::Port(slot.port), i);
        self.count(slot.port, true);
        self.len += 1;
    }

    /// Frees node `i`; returns whether its entry was live (an expired one is
    /// counted in `stats.expired`).
    fn remove(&mut self, i: u32, now: u64, stats: &mut FdbStats) -> bool {
        let Some(old) = self.entry(i) else { return false };
        // Unchain: find the link that points at `i`.
        if let Some(b) = self.bucket(old.vlan, old.mac) {
            let next = self.nodes.get(idx(i)).map_or(NIL, |n| n.chain);
            let mut at = self.buckets.get(b).copied().unwrap_or(NIL);
            if at == i {
                if let Some(h) = self.buckets.get_mut(b) {
                    *h = next;
                }
            } else {
                for _ in 0..N {
                    let Some(node) = self.nodes.get_mut(idx(at)) else { break };
                    if node.chain == i {
                        node.chain = next;
                        break;
                    }
                    at = node.chain;
                }
            }
        }
        self.unlink(Which::Table, i);
        self.unlink(Which::Port(old.port), i);
        self.count(old.port, false);
        self.len = self.len.saturating_sub(1);
        let free = self.free;
        if let Some(node) = self.nodes.get_mut(idx(i)) {
            *node = Node { chain: free, ..FREE_NODE };
            self.free = i;
        }
        let was_live = live(old.seen, now, self.ageing);
        if !was_live {
            stats.expired = stats.expired.wrapping_add(1);
        }
        was_live
    }

    /// Marks node `i` seen now on `port` (moving it if the port changed).
    fn refresh(&mut self, i: u32, port: PortId, now: u64) {
        let Some(old) = self.entry(i) else { return };
        self.unlink(Which::Table, i);
        self.unlink(Which::Port(old.port), i);
        self.count(old.port, false);
        if let Some(Some(s)) = self.nodes.get_mut(idx(i)).map(|n| n.entry.as_mut()) {
            s.seen = now;
            s.port = port;
        }
        self.push_newest(Which::Table, i);
        self.push_newest(Which::Port(port), i);
        self.count(port, true);
    }

    /// Frees the least recent entry of `which`, counting a live one in `evicted`.
    fn evict_oldest(&mut self, which: Which, now: u64, stats: &mut FdbStats) -> bool {
        let Some(head) = self.list_mut(which).map(|l| l.head) else { return false };
        if self.entry(head).is_none() {
            return false;
        }
        if self.remove(head, now, stats) {
            match which {
                Which::Table => stats.evicted_full = stats.evicted_full.wrapping_add(1),
                Which::Port(_) => stats.evicted_port_limit = stats.evicted_port_limit.wrapping_add(1),
            }
        }
        true
    }

    /// Records that `mac` sent from `port` in `vlan` at `now` (the rules in
    /// the module docs). `limit` is the port's learn limit.
    pub(crate) fn learn(&mut self, vlan: Vid, mac: Mac, port: PortId, now: u64, limit: usize, stats: &mut FdbStats) {
        self.learn_inner(vlan, mac, port, now, limit, stats);
        stats.entries = self.len;
    }

    fn learn_inner(&mut self, vlan: Vid, mac: Mac, port: PortId, now: u64, limit: usize, stats: &mut FdbStats) {
        let found = self.find(vlan, mac);
        let at_limit = self.per_port.get(port.index()).is_none_or(|&c| c >= limit);
        match found.and_then(|i| Some((i, self.entry(i)?.port))) {
            Some((i, p)) if p == port => self.refresh(i, port, now),
            Some((i, _)) => {
                // A move. To a port that does not learn, the old entry goes
                // (it would misdirect).
                if limit == 0 {
                    self.remove(i, now, stats);
                    stats.not_learned = stats.not_learned.wrapping_add(1);
                    return;
                }
                if at_limit {
                    self.evict_oldest(Which::Port(port), now, stats);
                }
                self.refresh(i, port, now);
                stats.moved = stats.moved.wrapping_add(1);
            }
            None => {
                let room = limit > 0
                    && if at_limit {
                        self.evict_oldest(Which::Port(port), now, stats)
                    } else {
                        self.has_room() || self.evict_oldest(Which::Table, now, stats)
                    };
                if room && self.has_room() {
                    self.insert(Slot { vlan, mac, port, seen: now });
                    stats.learned = stats.learned.wrapping_add(1);
                } else {
                    stats.not_learned = stats.not_learned.wrapping_add(1);
                }
            }
        }
    }

    /// Removes every entry for which `drop` holds; returns how many.
    pub(crate) fn remove_where(&mut self, stats: &mut FdbStats, mut drop: impl FnMut(&Slot) -> bool) -> usize {
        let mut n = 0;
        let mut scratch = FdbStats::default();
        for i in 0..N as u32 {
            if self.entry(i).is_some_and(|s| drop(&s)) {
                self.remove(i, 0, &mut scratch);
                n += 1;
            }
        }
        stats.entries = self.len;
        n
    }

    /// Frees every expired entry; returns how many.
    pub(crate) fn expire(&mut self, now: u64, stats: &mut FdbStats) -> usize {
        let ageing = self.ageing;
        let n = self.remove_where(stats, |s| !live(s.seen, now, ageing));
        stats.expired = stats.expired.wrapping_add(n as u64);
        n
    }

    pub(crate) fn entries(&self, now: u64) -> impl Iterator<Item = FdbEntry> + '_ {
        let ageing = self.ageing;
        self.nodes.iter().filter_map(|n| n.entry).map(move |s| FdbEntry {
            vlan: s.vlan,
            mac: s.mac,
            port: s.port,
            last_seen: s.seen,
            live: live(s.seen, now, ageing),
        })
    }

    #[cfg(test)]
    pub(crate) fn port_len(&self, port: PortId) -> usize {
        self.per_port.get(port.index()).copied().unwrap_or(0)
    }

    /// Checks every structural invariant of the module docs.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        extern crate std;
        use std::collections::BTreeSet;
        use std::vec::Vec;
        let used: BTreeSet<u32> = (0..N as u32).filter(|&i| self.entry(i).is_some()).collect();
        assert_eq!(used.len(), self.len);
        // Free list and never-used nodes: exactly the unused nodes.
        assert!(idx(self.unused) <= N);
        let mut free: BTreeSet<u32> = (self.unused..N as u32).collect();
        assert!(used.iter().all(|&i| i < self.unused));
        let mut i = self.free;
        while i != NIL {
            assert!(i < self.unused);
            assert!(free.insert(i), "free list cycle");
            i = self.nodes[idx(i)].chain;
        }
        assert_eq!(free.len() + used.len(), N);
        assert!(free.is_disjoint(&used));
        // Chains: every used node in its own bucket, once.
        let mut chained = BTreeSet::new();
        for (b, &head) in self.buckets.iter().enumerate() {
            let mut i = head;
            while i != NIL {
                let s = self.entry(i).expect("free node in a chain");
                assert_eq!(self.bucket(s.vlan, s.mac), Some(b));
                assert!(chained.insert(i), "chain cycle");
                i = self.nodes[idx(i)].chain;
            }
        }
        assert_eq!(chained, used);
        // Recency lists: well linked, the right members.
        let walk = |which: Which, list: List| -> Vec<u32> {
            let mut out = Vec::new();
            let (mut i, mut prev) = (list.head, NIL);
            while i != NIL {
                let l = match which {
                    Which::Table => self.nodes[idx(i)].age,
                    Which::Port(_) => self.nodes[idx(i)].own,
                };
                assert_eq!(l.prev, prev);
                out.push(i);
                assert!(out.len() <= N, "list cycle");
                (prev, i) = (i, l.next);
            }
            assert_eq!(list.tail, prev);
            out
        };
        let table = walk(Which::Table, self.table);
        assert_eq!(table.iter().copied().collect::<BTreeSet<_>>(), used);
        assert_eq!(table.len(), used.len());
        for p in PortId::all() {
            let own = walk(Which::Port(p), self.ports[p.index()]);
            assert_eq!(own.len(), self.per_port[p.index()]);
            assert!(own.iter().all(|&i| self.entry(i).is_some_and(|s| s.port == p)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: u64 = 100;

    fn v(n: u16) -> Vid {
        Vid::new(n).unwrap()
    }
    fn p(n: u8) -> PortId {
        PortId::new(n).unwrap()
    }
    fn m(n: u16) -> Mac {
        let [a, b] = n.to_be_bytes();
        Mac([0x02, 0, 0, 0, a, b])
    }

    #[test]
    fn learns_and_looks_up_per_vlan() {
        let mut f = Fdb::<8>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(3), 0, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 10), Some(p(3)));
        assert_eq!(f.lookup(v(2), m(1), 10), None);
        assert_eq!((st.entries, st.learned), (1, 1));
    }

    #[test]
    fn ageing_hides_then_expire_frees() {
        let mut f = Fdb::<8>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 1000, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 1000 + AGE), Some(p(0)));
        assert_eq!(f.lookup(v(1), m(1), 1001 + AGE), None);
        // A clock that went back counts as age 0.
        assert_eq!(f.lookup(v(1), m(1), 5), Some(p(0)));
        assert_eq!(f.expire(1001 + AGE, &mut st), 1);
        assert_eq!((f.len(), st.entries, st.expired), (0, 0, 1));
    }

    #[test]
    fn refresh_keeps_an_entry_alive() {
        let mut f = Fdb::<8>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        f.learn(v(1), m(1), p(0), 90, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 180), Some(p(0)));
        assert_eq!(st.learned, 1);
    }

    #[test]
    fn a_move_updates_the_port() {
        let mut f = Fdb::<8>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        f.learn(v(1), m(1), p(1), 5, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 6), Some(p(1)));
        assert_eq!((f.len(), f.port_len(p(0)), f.port_len(p(1)), st.moved), (1, 0, 1, 1));
    }

    #[test]
    fn a_move_to_a_port_at_its_limit_evicts_that_ports_oldest() {
        let mut f = Fdb::<8>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(1), 0, 1, &mut st);
        f.learn(v(1), m(2), p(0), 1, 1, &mut st);
        f.learn(v(1), m(2), p(1), 2, 1, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 3), None);
        assert_eq!(f.lookup(v(1), m(2), 3), Some(p(1)));
        assert_eq!((f.len(), st.evicted_port_limit), (1, 1));
    }

    #[test]
    fn a_move_to_a_non_learning_port_forgets_the_entry() {
        let mut f = Fdb::<8>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        f.learn(v(1), m(1), p(1), 1, 0, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 2), None);
        assert_eq!((f.len(), st.entries, st.not_learned), (0, 0, 1));
    }

    #[test]
    fn full_table_evicts_the_oldest() {
        let mut f = Fdb::<3>::new(AGE, 7);
        let mut st = FdbStats::default();
        for i in 0..3 {
            f.learn(v(1), m(i), p(i as u8), u64::from(i) + 10, 8, &mut st);
        }
        f.learn(v(1), m(0), p(0), 20, 8, &mut st); // refresh m0: m1 is now the oldest
        f.learn(v(1), m(9), p(5), 21, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 22), None);
        assert_eq!(f.lookup(v(1), m(0), 22), Some(p(0)));
        assert_eq!(f.lookup(v(1), m(9), 22), Some(p(5)));
        assert_eq!((f.len(), st.evicted_full, st.expired), (3, 1, 0));
    }

    #[test]
    fn full_table_reuses_an_expired_entry_first() {
        let mut f = Fdb::<2>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        f.learn(v(1), m(2), p(1), 150, 8, &mut st);
        f.learn(v(1), m(3), p(2), 160, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(2), 160), Some(p(1)));
        assert_eq!((st.evicted_full, st.expired), (0, 1));
    }

    #[test]
    fn a_port_at_its_limit_replaces_only_its_own_entries() {
        let mut f = Fdb::<64>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1000), p(1), 0, 4, &mut st);
        for i in 0..1000 {
            f.learn(v(1), m(i), p(0), u64::from(i), 4, &mut st);
        }
        assert_eq!(f.port_len(p(0)), 4);
        assert_eq!(f.lookup(v(1), m(1000), 50), Some(p(1)));
        // The newest four remain.
        assert!((996..1000).all(|i| f.lookup(v(1), m(i), 1000) == Some(p(0))));
        assert_eq!(st.evicted_full, 0);
    }

    #[test]
    fn zero_capacity_never_learns() {
        let mut f = Fdb::<0>::new(AGE, 7);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 0), None);
        assert_eq!(st.not_learned, 1);
    }

    mod replacement {
        extern crate std;
        use std::collections::BTreeMap;
        use std::vec::Vec;

        use proptest::prelude::*;

        use super::*;

        type Key = (Vid, Mac);
        type Snapshot = BTreeMap<Key, (PortId, u64)>;

        fn snapshot<const N: usize>(f: &Fdb<N>) -> Snapshot {
            f.entries(0).map(|e| ((e.vlan, e.mac), (e.port, e.last_seen))).collect()
        }

        fn oldest<'a>(it: impl Iterator<Item = (&'a Key, &'a (PortId, u64))>) -> Option<u64> {
            it.map(|(_, &(_, t))| t).min()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any sequence of learns, removals and expiries keeps the chains,
            /// lists, free list and counts consistent, and lookups agree with
            /// the entries.
            #[test]
            fn structure_survives_any_sequence(
                ops in proptest::collection::vec((0..10u8, 1..3u16, 0..16u16, 0..4u8, 0..30u64, 0..5usize), 1..300),
                seed in any::<u64>(),
            ) {
                let mut f = Fdb::<5>::new(AGE, seed);
                let mut st = FdbStats::default();
                let mut now = 0;
                for (op, vl, mc, pt, dt, limit) in ops {
                    now += dt;
                    match op {
                        0 => {
                            f.remove_where(&mut st, |s| s.port == p(pt));
                        }
                        1 => {
                            f.expire(now, &mut st);
                        }
                        _ => f.learn(v(vl), m(mc), p(pt), now, limit, &mut st),
                    }
                    f.check();
                    prop_assert_eq!(st.entries, f.len());
                    for e in f.entries(now) {
                        prop_assert_eq!(f.lookup(e.vlan, e.mac, now), e.live.then_some(e.port));
                    }
                }
            }

            /// Each learn does what the module docs' replacement rules say,
            /// checked against the table before and after.
            #[test]
            fn learn_follows_the_replacement_rules(
                ops in proptest::collection::vec((1..3u16, 0..12u16, 0..4u8, 0..20u64, 0..4usize), 1..200),
                seed in any::<u64>(),
            ) {
                const CAP: usize = 6;
                let mut f = Fdb::<CAP>::new(AGE, seed);
                let mut st = FdbStats::default();
                let mut now = 0;
                for (vl, mc, pt, dt, limit) in ops {
                    now += dt;
                    let (key, port) = ((v(vl), m(mc)), p(pt));
                    let before = snapshot(&f);
                    let port_before = before.values().filter(|(q, _)| *q == port).count();
                    let moved = before.get(&key).is_some_and(|(q, _)| *q != port);
                    f.learn(key.0, key.1, port, now, limit, &mut st);
                    f.check();
                    let after = snapshot(&f);

                    prop_assert!(after.len() <= CAP);
                    prop_assert_eq!(st.entries, after.len());
                    if limit == 0 {
                        if before.get(&key).is_some_and(|(q, _)| *q == port) {
                            prop_assert_eq!(after.get(&key), Some(&(port, now)));
                        } else {
                            prop_assert!(!after.contains_key(&key));
                        }
                    } else {
                        prop_assert_eq!(after.get(&key), Some(&(port, now)));
                    }
                    // Every other entry is unchanged or gone; at most one goes.
                    let gone: Vec<_> = before
                        .iter()
                        .filter(|(k, _)| **k != key)
                        .filter(|(k, e)| match after.get(*k) {
                            Some(a) => {
                                assert_eq!(a, *e, "an unrelated entry changed");
                                false
                            }
                            None => true,
                        })
                        .collect();
                    prop_assert!(gone.len() <= 1);
                    if let Some(&(_, &(q, t))) = gone.first() {
                        let others = || before.iter().filter(|(k, _)| **k != key);
                        if limit > 0 && port_before >= limit {
                            // Rule 1: the port was at its limit; its own oldest went.
                            prop_assert_eq!(q, port);
                            prop_assert_eq!(Some(t), oldest(others().filter(|(_, (r, _))| *r == port)));
                        } else {
                            // Rule 3: the table was full and the port under its
                            // limit; the table's oldest went (of any port).
                            prop_assert!(!moved);
                            prop_assert_eq!(before.len(), CAP);
                            prop_assert_eq!(Some(t), oldest(others()));
                        }
                    }
                    for pid in 0..4 {
                        let n = after.values().filter(|(q, _)| *q == p(pid)).count();
                        prop_assert_eq!(n, f.port_len(p(pid)));
                    }
                    if limit > 0 {
                        prop_assert!(after.values().filter(|(q, _)| *q == port).count() <= limit.max(port_before));
                    }
                }
            }
        }
    }
}
