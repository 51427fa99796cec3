//! Domain ids and the domain table.
//!
//! # Ids
//! A [`DomId`] is the 16-bit number guests, grant entries and the toolstack
//! name a domain by (Xen's `domid_t`): `0..DOMID_FIRST_RESERVED`. Id 0 is
//! kept for the privileged domain that the boot bundle marks as dom0
//! ([`DomainTable::insert_dom0`]); every other domain takes the next id
//! after the last one handed out, skipping ids still alive, and wrapping
//! below [`DOMID_FIRST_RESERVED`]. So an id is never handed out again until
//! 32 750 other domains have been created after it: a stale id of a dead
//! domain never names its successor in the table, nor any domain created
//! soon after, as long as fewer than that many domains are created while
//! someone still holds it. (Xen allocates the same way; 16 bits is what
//! its grant entries and event channels carry.)
//!
//! # Slots
//! The table keeps at most as many live domains as the storage it is given
//! has slots (the hypervisor gives it storage outside its image at boot,
//! as it does for the frame table), each in a slot. Slot numbers
//! are the table's business and index per-slot state elsewhere (the
//! scheduler's entity of the domain); a slot is reused once its domain has
//! been removed, which the hypervisor does only after the domain is reaped
//! (its frames freed). Ids are looked up through a map from every possible
//! id to its slot, so [`DomainTable::get`] is O(1).
//!
//! # Borrowing two
//! Interdomain work (event channels, grants) needs two domains at once:
//! [`DomainTable::pair_mut`] borrows two distinct live domains mutably.

use pvguest_abi::Errno;

/// First id that names no domain (Xen's `DOMID_FIRST_RESERVED`): ids from
/// here on are special (`DOMID_SELF` = 0x7ff0, ...).
pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

/// A domain's id (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomId(u16);

impl DomId {
    /// The privileged domain of the boot bundle.
    pub const DOM0: DomId = DomId(0);

    /// The id `raw`, if it can name a domain.
    pub const fn new(raw: u16) -> Option<DomId> {
        if raw < DOMID_FIRST_RESERVED {
            Some(DomId(raw))
        } else {
            None
        }
    }

    /// The id `raw`, which must name a domain (for constants: a bad value
    /// fails the build in a const context, and panics otherwise).
    pub const fn of(raw: u16) -> DomId {
        match DomId::new(raw) {
            Some(d) => d,
            None => panic!("not a domain id"),
        }
    }

    /// A domain id passed in a hypercall argument: `ESRCH` if the value
    /// cannot name a domain (it says nothing about whether one lives).
    pub fn from_arg(v: u64) -> Result<DomId, Errno> {
        u16::try_from(v).ok().and_then(DomId::new).ok_or(Errno::ESRCH)
    }

    /// The number.
    pub const fn raw(self) -> u16 {
        self.0
    }
}

impl core::fmt::Display for DomId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An id and a slot reserved for a domain being built.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Vacant {
    id: DomId,
    slot: usize,
}

impl Vacant {
    /// The id the domain will have.
    pub fn id(&self) -> DomId {
        self.id
    }

    /// The slot it will have.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

/// Why a domain could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// Every slot holds a live domain.
    Full,
    /// Id 0 is already taken.
    Dom0Taken,
}

/// A domain slot of the table's storage.
pub type Slot<D> = Option<(DomId, D)>;

/// The id map of the table's storage: slot + 1 of every id, 0 for none.
pub type IdMap = [u16; DOMID_FIRST_RESERVED as usize];

/// Live domains of type `D`, in storage it borrows (see the module docs).
pub struct DomainTable<'a, D> {
    slots: &'a mut [Slot<D>],
    by_id: &'a mut [u16],
    /// The last id handed out (the next search starts after it).
    last: u16,
    live: usize,
    /// One past the highest slot in use: loops over slots stop here.
    hi: usize,
}

impl<D> DomainTable<'static, D> {
    /// A table with no storage (every insert fails `Full`), until the real
    /// one replaces it.
    pub const fn empty() -> Self {
        DomainTable { slots: &mut [], by_id: &mut [], last: 0, live: 0, hi: 0 }
    }
}

impl<'a, D> DomainTable<'a, D> {
    /// An empty table over `slots` (fewer than 65 535, each reset to
    /// `None`) and `by_id` (reset to 0).
    pub fn new(slots: &'a mut [Slot<D>], by_id: &'a mut IdMap) -> Self {
        assert!(slots.len() < usize::from(u16::MAX), "fewer than 65535 slots");
        slots.iter_mut().for_each(|s| *s = None);
        by_id.fill(0);
        DomainTable { slots, by_id, last: 0, live: 0, hi: 0 }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Number of live domains.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no domain lives.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds `d` under the next free id (never 0); returns its id and slot.
    pub fn insert(&mut self, d: D) -> Result<(DomId, usize), (TableError, D)> {
        match self.reserve() {
            Ok(v) => Ok((v.id, self.fill(v, d))),
            Err(e) => Err((e, d)),
        }
    }

    /// Adds `d` as dom0 (id 0).
    pub fn insert_dom0(&mut self, d: D) -> Result<(DomId, usize), (TableError, D)> {
        match self.reserve_dom0() {
            Ok(v) => Ok((v.id, self.fill(v, d))),
            Err(e) => Err((e, d)),
        }
    }

    /// Takes the next free id (never 0) and a free slot for a domain that
    /// is yet to be built (it needs its id first: its frames are owned by
    /// it). [`DomainTable::fill`] puts it there; a reservation that is
    /// dropped instead burns the id (it is not handed out again until the
    /// allocator comes round) and leaves the slot free.
    pub fn reserve(&mut self) -> Result<Vacant, TableError> {
        let slot = self.free_slot()?;
        // Fewer than 65 535 slots but ids may run out: bound the search.
        // (With more slots than ids, a full id space is `Full` too.)
        let mut id = self.last;
        for _ in 1..DOMID_FIRST_RESERVED {
            id = if id + 1 >= DOMID_FIRST_RESERVED { 1 } else { id + 1 };
            if self.by_id[usize::from(id)] == 0 {
                self.last = id;
                return Ok(Vacant { id: DomId(id), slot });
            }
        }
        Err(TableError::Full)
    }

    /// As [`DomainTable::reserve`], for dom0 (id 0).
    pub fn reserve_dom0(&mut self) -> Result<Vacant, TableError> {
        match self.by_id.first() {
            Some(0) => {}
            Some(_) => return Err(TableError::Dom0Taken),
            None => return Err(TableError::Full),
        }
        Ok(Vacant { id: DomId::DOM0, slot: self.free_slot()? })
    }

    fn free_slot(&self) -> Result<usize, TableError> {
        self.slots.iter().position(Option::is_none).ok_or(TableError::Full)
    }

    /// Puts `d` where `v` reserved (no other reservation may have been
    /// filled in between); returns its slot.
    pub fn fill(&mut self, v: Vacant, d: D) -> usize {
        let Vacant { id, slot } = v;
        debug_assert!(self.slots[slot].is_none() && self.by_id[usize::from(id.0)] == 0, "reservation taken");
        self.slots[slot] = Some((id, d));
        self.by_id[usize::from(id.0)] = slot as u16 + 1;
        self.live += 1;
        self.hi = self.hi.max(slot + 1);
        slot
    }

    /// The slot of a live domain.
    #[inline]
    pub fn slot_of(&self, id: DomId) -> Option<usize> {
        self.by_id.get(usize::from(id.0)).and_then(|&s| usize::from(s).checked_sub(1))
    }

    /// The live domain `id`.
    #[inline]
    pub fn get(&self, id: DomId) -> Option<&D> {
        self.slot_of(id).and_then(|s| self.slots[s].as_ref()).map(|(_, d)| d)
    }

    /// The live domain `id`, mutably.
    #[inline]
    pub fn get_mut(&mut self, id: DomId) -> Option<&mut D> {
        let s = self.slot_of(id)?;
        self.slots[s].as_mut().map(|(_, d)| d)
    }

    /// The domain in `slot`, with its id.
    #[inline]
    pub fn at(&self, slot: usize) -> Option<(DomId, &D)> {
        self.slots.get(slot).and_then(Option::as_ref).map(|(id, d)| (*id, d))
    }

    /// The domain in `slot`, mutably.
    #[inline]
    pub fn at_mut(&mut self, slot: usize) -> Option<(DomId, &mut D)> {
        self.slots.get_mut(slot).and_then(Option::as_mut).map(|(id, d)| (*id, d))
    }

    /// Two distinct live domains, both mutably; `None` if `a == b` or
    /// either is not alive.
    #[inline]
    pub fn pair_mut(&mut self, a: DomId, b: DomId) -> Option<(&mut D, &mut D)> {
        let (sa, sb) = (self.slot_of(a)?, self.slot_of(b)?);
        if sa == sb {
            return None;
        }
        let (lo, hi) = (sa.min(sb), sa.max(sb));
        let (left, right) = self.slots.split_at_mut(hi);
        let (x, y) = (left[lo].as_mut()?, right[0].as_mut()?);
        Some(if sa < sb { (&mut x.1, &mut y.1) } else { (&mut y.1, &mut x.1) })
    }

    /// Removes the domain `id`: its slot is free for the next domain, its
    /// id retired until the allocator comes round again.
    pub fn remove(&mut self, id: DomId) -> Option<D> {
        let s = self.slot_of(id)?;
        self.by_id[usize::from(id.0)] = 0;
        self.live -= 1;
        let d = self.slots[s].take().map(|(_, d)| d);
        while self.hi > 0 && self.slots[self.hi - 1].is_none() {
            self.hi -= 1;
        }
        d
    }

    /// Every live domain, in slot order, with its slot and id.
    pub fn iter(&self) -> impl Iterator<Item = (usize, DomId, &D)> {
        self.slots[..self.hi].iter().enumerate().filter_map(|(s, e)| e.as_ref().map(|(id, d)| (s, *id, d)))
    }

    /// Every live domain, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, DomId, &mut D)> {
        self.slots[..self.hi].iter_mut().enumerate().filter_map(|(s, e)| e.as_mut().map(|(id, d)| (s, *id, d)))
    }

    /// One past the highest slot in use (slots below may be free): the
    /// bound for loops over slots.
    pub fn slot_bound(&self) -> usize {
        self.hi
    }
}

impl<D> core::ops::Index<usize> for DomainTable<'_, D> {
    type Output = D;

    /// The domain in a slot known to be live (the hypervisor's own slot
    /// numbers); a free slot is a hypervisor bug.
    #[inline(always)]
    fn index(&self, slot: usize) -> &D {
        match self.slots.get(slot) {
            Some(Some((_, d))) => d,
            _ => panic!("domain slot {slot} is free"),
        }
    }
}

impl<D> core::ops::IndexMut<usize> for DomainTable<'_, D> {
    #[inline(always)]
    fn index_mut(&mut self, slot: usize) -> &mut D {
        match self.slots.get_mut(slot) {
            Some(Some((_, d))) => d,
            _ => panic!("domain slot {slot} is free"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::collections::HashSet;
    use std::vec::Vec;

    /// A table of `n` slots over leaked storage.
    fn table<D>(n: usize) -> DomainTable<'static, D> {
        let slots: &'static mut [Slot<D>] = Vec::from_iter((0..n).map(|_| None)).leak();
        let by_id: &'static mut IdMap = Box::leak(Box::new([0; DOMID_FIRST_RESERVED as usize]));
        DomainTable::new(slots, by_id)
    }

    #[test]
    fn ids_are_valid_and_refuse_reserved_values() {
        assert_eq!(DomId::new(0x7fef).map(DomId::raw), Some(0x7fef));
        assert_eq!(DomId::new(DOMID_FIRST_RESERVED), None);
        assert_eq!(DomId::from_arg(pvguest_abi::DOMID_SELF), Err(Errno::ESRCH));
        assert_eq!(DomId::from_arg(1 << 20), Err(Errno::ESRCH));
        assert_eq!(DomId::from_arg(5), Ok(DomId(5)));
    }

    /// 1024 domains alive at once; the 1025th is refused, and a freed slot
    /// takes the next one under a new id.
    #[test]
    fn a_thousand_and_twenty_four_alive_at_once() {
        let mut t: DomainTable<u32> = table(1024);
        let ids: Vec<DomId> = (0..1024).map(|i| t.insert(i).unwrap().0).collect();
        assert_eq!(t.len(), 1024);
        assert_eq!(t.insert(7).unwrap_err().0, TableError::Full);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1024, "distinct ids");
        assert!(!ids.contains(&DomId::DOM0), "id 0 is dom0's");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(t.get(*id), Some(&(i as u32)));
        }
        let gone = ids[500];
        let slot = t.slot_of(gone).unwrap();
        assert_eq!(t.remove(gone), Some(500));
        assert_eq!(t.get(gone), None, "a removed id names nothing");
        let (new, new_slot) = t.insert(9999).unwrap();
        assert_eq!(new_slot, slot, "the slot is reused");
        assert_ne!(new, gone, "under another id");
        assert_eq!(t.get(gone), None, "the stale id does not name its successor");
    }

    /// 100 000 domains created and reaped over time, with a few long-lived
    /// ones among them: ids never collide with a live domain, a stale id
    /// is not handed out again until the allocator has come round, and
    /// the table never runs out.
    #[test]
    fn a_hundred_thousand_created_and_reaped() {
        let mut t: DomainTable<u64> = table(1024);
        let (dom0, _) = t.insert_dom0(0).unwrap();
        assert_eq!(dom0, DomId::DOM0);
        assert_eq!(t.insert_dom0(1).unwrap_err().0, TableError::Dom0Taken);
        let long: Vec<DomId> = (0..10).map(|i| t.insert(i).unwrap().0).collect();
        let mut window: std::collections::VecDeque<(DomId, u64)> = Default::default();
        let mut last_use: std::collections::HashMap<DomId, u64> = Default::default();
        for n in 0..100_000u64 {
            let (id, _) = t.insert(n).unwrap();
            assert!(!long.contains(&id) && id != dom0, "a live id handed out again");
            if let Some(&prev) = last_use.get(&id) {
                assert!(
                    n - prev >= u64::from(DOMID_FIRST_RESERVED) - 1 - 1024 - 11,
                    "id {id} reused after {}",
                    n - prev
                );
            }
            last_use.insert(id, n);
            window.push_back((id, n));
            if window.len() > 900 {
                let (old, v) = window.pop_front().unwrap();
                assert_eq!(t.remove(old), Some(v));
                assert_eq!(t.get(old), None);
            }
        }
        for (i, id) in long.iter().enumerate() {
            assert_eq!(t.get(*id), Some(&(i as u64)), "long-lived domains keep their ids");
        }
        assert_eq!(t.len(), 1 + 10 + 900);
    }

    #[test]
    fn two_distinct_domains_borrow_mutably() {
        let mut t: DomainTable<u32> = table(4);
        let (a, _) = t.insert(1).unwrap();
        let (b, _) = t.insert(2).unwrap();
        let (x, y) = t.pair_mut(b, a).unwrap();
        assert_eq!((*x, *y), (2, 1));
        std::mem::swap(x, y);
        assert_eq!((t.get(a), t.get(b)), (Some(&2), Some(&1)));
        assert!(t.pair_mut(a, a).is_none(), "the same domain twice");
        let dead = DomId(3000);
        assert!(t.pair_mut(a, dead).is_none());
        assert_eq!(t.iter().map(|(s, id, &v)| (s, id, v)).collect::<Vec<_>>(), [(0, a, 2), (1, b, 1)]);
        assert_eq!(t.slot_bound(), 2);
    }

    #[test]
    fn a_reservation_fills_its_slot_or_burns_its_id() {
        let mut t: DomainTable<u32> = table(2);
        let v = t.reserve().unwrap();
        let burnt = v.id();
        drop(v);
        let v = t.reserve().unwrap();
        assert_ne!(v.id(), burnt, "a dropped reservation's id is not handed out next");
        let id = v.id();
        let slot = t.fill(v, 5);
        assert_eq!((t.get(id), t[slot]), (Some(&5), 5));
        t[slot] = 6;
        assert_eq!(t.get(id), Some(&6));
        t.insert(1).unwrap();
        assert_eq!(t.reserve(), Err(TableError::Full));
        let mut e: DomainTable<u32> = DomainTable::empty();
        assert_eq!(e.insert(1).unwrap_err().0, TableError::Full);
        assert_eq!((e.get(DomId::of(1)), e.slot_bound()), (None, 0));
        assert_eq!(e.reserve_dom0(), Err(TableError::Full));
    }
}
