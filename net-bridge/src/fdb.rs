//! The learning table (forwarding database): (VLAN, MAC) → port.
//!
//! # Invariants
//! - Owned by its [`Bridge`](crate::Bridge); filled only by the bridge's
//!   learning step, from the source MAC of a frame it accepted on a port that
//!   has no assigned MAC (pinned MACs never take an entry).
//! - At most `N` entries (the fixed capacity), at most one per (VLAN, MAC),
//!   and at most the port's learn limit per port: `per_port[p]` is the number
//!   of entries, live or expired, naming port `p`.
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
//! So while the learn limits of the ports add up to at most `N` (the default
//! limit, `N / MAX_PORTS`, ensures it), step 3 never happens and a port's
//! entries leave the table only by its own learning, by ageing, or by dom0
//! (reconfiguring or removing the port): a hostile trunk or uplink flooding
//! random source MACs only churns its own share. A MAC seen on a new port in
//! the same VLAN moves its entry there (step 1 applies to the new port).
//!
//! # Work
//! Every operation is one pass over the `N` slots: learning and lookup are
//! `O(N)`, bounded by the capacity the caller chose (1024 by default).

use crate::ethernet::{Mac, Vid};
use crate::port::{PortId, MAX_PORTS};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Slot {
    pub(crate) vlan: Vid,
    pub(crate) mac: Mac,
    pub(crate) port: PortId,
    pub(crate) seen: u64,
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
    slots: [Option<Slot>; N],
    per_port: [usize; MAX_PORTS],
    ageing: u64,
}

const fn live(seen: u64, now: u64, ageing: u64) -> bool {
    now.saturating_sub(seen) <= ageing
}

impl<const N: usize> Fdb<N> {
    pub(crate) const fn new(ageing: u64) -> Self {
        Fdb { slots: [None; N], per_port: [0; MAX_PORTS], ageing }
    }

    pub(crate) fn len(&self) -> usize {
        self.per_port.iter().sum()
    }

    /// The live entry's port for (vlan, mac).
    pub(crate) fn lookup(&self, vlan: Vid, mac: Mac, now: u64) -> Option<PortId> {
        self.slots
            .iter()
            .flatten()
            .find(|s| s.vlan == vlan && s.mac == mac)
            .filter(|s| live(s.seen, now, self.ageing))
            .map(|s| s.port)
    }

    fn count(&mut self, port: PortId, add: bool) {
        if let Some(c) = self.per_port.get_mut(port.index()) {
            *c = if add { c.saturating_add(1) } else { c.saturating_sub(1) };
        }
    }

    /// Frees slot `i`; returns whether its entry was live (an expired one is
    /// counted in `stats.expired`).
    fn free(&mut self, i: usize, now: u64, stats: &mut FdbStats) -> bool {
        let Some(slot) = self.slots.get_mut(i) else { return false };
        let Some(old) = slot.take() else { return false };
        self.count(old.port, false);
        let was_live = live(old.seen, now, self.ageing);
        if !was_live {
            stats.expired = stats.expired.wrapping_add(1);
        }
        was_live
    }

    fn put(&mut self, i: usize, slot: Slot) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(slot);
            self.count(slot.port, true);
        }
    }

    /// Records that `mac` sent from `port` in `vlan` at `now` (the rules in
    /// the module docs). `limit` is the port's learn limit.
    pub(crate) fn learn(&mut self, vlan: Vid, mac: Mac, port: PortId, now: u64, limit: usize, stats: &mut FdbStats) {
        let mut found = None;
        let mut free = None;
        let mut oldest: Option<(usize, u64)> = None;
        let mut port_oldest: Option<(usize, u64)> = None;
        for (i, s) in self.slots.iter().enumerate() {
            let Some(s) = s else {
                free = free.or(Some(i));
                continue;
            };
            if s.vlan == vlan && s.mac == mac {
                found = Some((i, s.port));
                continue;
            }
            if oldest.is_none_or(|(_, t)| s.seen < t) {
                oldest = Some((i, s.seen));
            }
            if s.port == port && port_oldest.is_none_or(|(_, t)| s.seen < t) {
                port_oldest = Some((i, s.seen));
            }
        }
        let at_limit = self.per_port.get(port.index()).is_none_or(|&c| c >= limit);
        let new = Slot { vlan, mac, port, seen: now };
        match found {
            Some((i, p)) if p == port => self.put_refresh(i, now),
            Some((i, _)) => {
                // A move: the old entry goes in any case (it would misdirect).
                self.free(i, now, stats);
                if limit == 0 {
                    stats.not_learned = stats.not_learned.wrapping_add(1);
                    stats.entries = self.len();
                    return;
                }
                if at_limit {
                    if let Some((j, _)) = port_oldest {
                        if self.free(j, now, stats) {
                            stats.evicted_port_limit = stats.evicted_port_limit.wrapping_add(1);
                        }
                    }
                }
                self.put(i, new);
                stats.moved = stats.moved.wrapping_add(1);
            }
            None => {
                let target = if limit == 0 {
                    None
                } else if at_limit {
                    port_oldest.map(|(j, _)| {
                        if self.free(j, now, stats) {
                            stats.evicted_port_limit = stats.evicted_port_limit.wrapping_add(1);
                        }
                        j
                    })
                } else if free.is_some() {
                    free
                } else {
                    oldest.map(|(j, _)| {
                        if self.free(j, now, stats) {
                            stats.evicted_full = stats.evicted_full.wrapping_add(1);
                        }
                        j
                    })
                };
                match target {
                    Some(j) => {
                        self.put(j, new);
                        stats.learned = stats.learned.wrapping_add(1);
                    }
                    None => stats.not_learned = stats.not_learned.wrapping_add(1),
                }
            }
        }
        stats.entries = self.len();
    }

    fn put_refresh(&mut self, i: usize, now: u64) {
        if let Some(Some(s)) = self.slots.get_mut(i) {
            s.seen = now;
        }
    }

    /// Removes every entry for which `drop` holds; returns how many.
    pub(crate) fn remove_where(&mut self, stats: &mut FdbStats, mut drop: impl FnMut(&Slot) -> bool) -> usize {
        let mut n = 0;
        for slot in self.slots.iter_mut() {
            if let Some(s) = slot.take_if(|s| drop(s)) {
                if let Some(c) = self.per_port.get_mut(s.port.index()) {
                    *c = c.saturating_sub(1);
                }
                n += 1;
            }
        }
        stats.entries = self.len();
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
        self.slots.iter().flatten().map(move |s| FdbEntry {
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
        let mut f = Fdb::<8>::new(AGE);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(3), 0, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 10), Some(p(3)));
        assert_eq!(f.lookup(v(2), m(1), 10), None);
        assert_eq!((st.entries, st.learned), (1, 1));
    }

    #[test]
    fn ageing_hides_then_expire_frees() {
        let mut f = Fdb::<8>::new(AGE);
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
        let mut f = Fdb::<8>::new(AGE);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        f.learn(v(1), m(1), p(0), 90, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 180), Some(p(0)));
        assert_eq!(st.learned, 1);
    }

    #[test]
    fn a_move_updates_the_port() {
        let mut f = Fdb::<8>::new(AGE);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        f.learn(v(1), m(1), p(1), 5, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 6), Some(p(1)));
        assert_eq!((f.len(), f.port_len(p(0)), f.port_len(p(1)), st.moved), (1, 0, 1, 1));
    }

    #[test]
    fn a_move_to_a_port_at_its_limit_evicts_that_ports_oldest() {
        let mut f = Fdb::<8>::new(AGE);
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
        let mut f = Fdb::<8>::new(AGE);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        f.learn(v(1), m(1), p(1), 1, 0, &mut st);
        assert_eq!(f.lookup(v(1), m(1), 2), None);
        assert_eq!((f.len(), st.entries, st.not_learned), (0, 0, 1));
    }

    #[test]
    fn full_table_evicts_the_oldest() {
        let mut f = Fdb::<3>::new(AGE);
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
        let mut f = Fdb::<2>::new(AGE);
        let mut st = FdbStats::default();
        f.learn(v(1), m(1), p(0), 0, 8, &mut st);
        f.learn(v(1), m(2), p(1), 150, 8, &mut st);
        f.learn(v(1), m(3), p(2), 160, 8, &mut st);
        assert_eq!(f.lookup(v(1), m(2), 160), Some(p(1)));
        assert_eq!((st.evicted_full, st.expired), (0, 1));
    }

    #[test]
    fn a_port_at_its_limit_replaces_only_its_own_entries() {
        let mut f = Fdb::<64>::new(AGE);
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
        let mut f = Fdb::<0>::new(AGE);
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

            /// Each learn does what the module docs' replacement rules say,
            /// checked against the table before and after.
            #[test]
            fn learn_follows_the_replacement_rules(
                ops in proptest::collection::vec((1..3u16, 0..12u16, 0..4u8, 0..20u64, 0..4usize), 1..200),
            ) {
                const CAP: usize = 6;
                let mut f = Fdb::<CAP>::new(AGE);
                let mut st = FdbStats::default();
                let mut now = 0;
                for (vl, mc, pt, dt, limit) in ops {
                    now += dt;
                    let (key, port) = ((v(vl), m(mc)), p(pt));
                    let before = snapshot(&f);
                    let port_before = before.values().filter(|(q, _)| *q == port).count();
                    let moved = before.get(&key).is_some_and(|(q, _)| *q != port);
                    f.learn(key.0, key.1, port, now, limit, &mut st);
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
