//! The standard descriptor and completion types (R11), and [`IdTable`], the
//! frontend's map from request ids back to its own request state.
//!
//! Descriptors name data, they never carry it: the bytes stay in a page the
//! front granted, and the descriptor gives the grant reference, an offset
//! and a length. To the back a descriptor is an *allegation*: check it with
//! [`Descriptor::checked_range`] before touching the granted page.
//!
//! Responses may complete out of order; they carry the request's id. To the
//! front that id is an allegation too: [`IdTable::complete`] accepts each
//! id it handed out exactly once and rejects everything else.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes in a page / frame, the unit of granting.
pub const PAGE_SIZE: usize = 4096;

/// A request: "do `op` on `len` bytes at `offset` in the frame granted as
/// `gref`", tagged with the front's `id`.
///
/// [`Pod`](crate::Pod) by zerocopy's derives, which check that there is no
/// padding (8 + 4 + 4 + 4 + 2 + 2 = 24 = size) and that every field accepts
/// any bit pattern.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Descriptor {
    /// Chosen by the front (typically from an [`IdTable`]); echoed in the
    /// response.
    pub id: u64,
    /// Grant reference of the data frame.
    pub gref: u32,
    /// Byte offset of the data inside the granted frame.
    pub offset: u32,
    /// Length of the data in bytes.
    pub len: u32,
    /// Operation (defined by the device protocol, e.g. read or write).
    pub op: u16,
    /// Operation flags (defined by the device protocol).
    pub flags: u16,
}

const _: () = {
    assert!(size_of::<Descriptor>() == 24);
    assert!(offset_of!(Descriptor, id) == 0);
    assert!(offset_of!(Descriptor, gref) == 8);
    assert!(offset_of!(Descriptor, offset) == 12);
    assert!(offset_of!(Descriptor, len) == 16);
    assert!(offset_of!(Descriptor, op) == 20);
    assert!(offset_of!(Descriptor, flags) == 22);
};

impl Descriptor {
    /// The byte range `offset..offset + len` if it lies inside a frame of
    /// `frame_size` bytes and is not empty; `None` otherwise.
    pub fn checked_range(&self, frame_size: usize) -> Option<core::ops::Range<usize>> {
        let start = self.offset as usize;
        let end = start.checked_add(self.len as usize)?;
        (self.len != 0 && end <= frame_size).then_some(start..end)
    }
}

/// A response: the request `id` finished with `status` (0 or a negative
/// errno) after transferring `len` bytes.
///
/// [`Pod`](crate::Pod) by zerocopy's derives (8 + 4 + 4 = 16 = size: no
/// padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Completion {
    /// The id of the request this answers.
    pub id: u64,
    /// 0 on success, a negative errno on failure.
    pub status: i32,
    /// Bytes transferred.
    pub len: u32,
}

const _: () = {
    assert!(size_of::<Completion>() == 16);
    assert!(offset_of!(Completion, id) == 0);
    assert!(offset_of!(Completion, status) == 8);
    assert!(offset_of!(Completion, len) == 12);
};

/// Why [`IdTable::complete`] refused an id. Either way the back broke the
/// protocol: latch it with `front.poison(RingError::BadId { id })`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdError {
    /// The id's index is not one of ours.
    Unknown,
    /// The index is ours but that request is not in flight (a duplicate
    /// completion) or the id belongs to an earlier use of the index (stale).
    NotInFlight,
}

/// A fixed-capacity table of in-flight requests: hands out ids, and maps a
/// completion's id back to the state saved for it, exactly once.
///
/// An id is a `u64` (the width of [`Descriptor::id`] and
/// [`Completion::id`]): `generation << b | index`, where `b`, the fewest
/// bits that hold every index below `N` (`b = ceil(log2 N)`, 0 for
/// `N = 1`), leaves `64 - b` bits for the generation. The generation of an
/// index changes every time it is reused, so a hostile back that replays an
/// old id gets [`IdError::NotInFlight`] even after the index is in use
/// again.
///
/// Generations never wrap (R11): an index whose generation has reached
/// `2^(64 - b) - 1` is *retired* when that use completes and is never handed
/// out again. So no id is ever issued twice, and a stale id cannot match an
/// in-flight request at all, however long the table lives. The price is
/// capacity, and only in theory: the table issues `N * 2^(64 - b) >= 2^63`
/// ids before every index is retired (`N > 2^(b - 1)`), which at 10^9
/// completions per second is more than 290 years; after that `insert`
/// reports the table full ([`IdTable::retired`] counts retired indices).
///
/// No allocation: the table is an array of `N` entries and a free list.
pub struct IdTable<T, const N: usize> {
    entries: [Entry<T>; N],
    /// Head of the free list (an index, or `NONE`).
    free: u32,
    in_flight: usize,
    retired: usize,
}

struct Entry<T> {
    /// At most `IdTable::MAX_GENERATION`.
    generation: u64,
    /// `Some` while in flight.
    value: Option<T>,
    /// Next free index while free.
    next_free: u32,
}

const NONE: u32 = u32::MAX;

impl<T, const N: usize> Default for IdTable<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> IdTable<T, N> {
    /// Bits of an id that hold the index: the fewest that hold `N - 1`
    /// (at most 32, as `N < 2^32 - 1`).
    const INDEX_BITS: u32 = if N <= 1 { 0 } else { usize::BITS - (N - 1).leading_zeros() };
    const INDEX_MASK: u64 = (1 << Self::INDEX_BITS) - 1;
    /// The last generation of an index; its completion retires the index.
    const MAX_GENERATION: u64 = u64::MAX >> Self::INDEX_BITS;

    /// An empty table.
    pub fn new() -> Self {
        const {
            assert!(N < NONE as usize, "IdTable too large");
        }
        IdTable {
            entries: core::array::from_fn(|i| Entry {
                generation: 0,
                value: None,
                next_free: if i + 1 < N { (i + 1) as u32 } else { NONE },
            }),
            free: if N == 0 { NONE } else { 0 },
            in_flight: 0,
            retired: 0,
        }
    }

    /// The index and generation an id names (any `u64` names one).
    #[inline]
    fn split(id: u64) -> (usize, u64) {
        ((id & Self::INDEX_MASK) as usize, id >> Self::INDEX_BITS)
    }

    /// The table index id `id` names, if it is one of the table's (an id
    /// in flight or not: use [`IdTable::get`] to know). Lets a caller keep
    /// its own per-request array beside the table without a search.
    pub fn index_of(id: u64) -> Option<usize> {
        let (index, _) = Self::split(id);
        (index < N).then_some(index)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether no id is free.
    pub fn is_full(&self) -> bool {
        self.free == NONE
    }

    /// Indices retired because their generations ran out (see the type's
    /// docs): the table holds `N - retired()` requests at most. Zero in
    /// practice.
    pub fn retired(&self) -> usize {
        self.retired
    }

    /// Save `value` and return a fresh id for its request, or give `value`
    /// back if all `N` ids are in flight.
    ///
    /// # Errors
    /// `Err(value)` when full.
    pub fn insert(&mut self, value: T) -> Result<u64, T> {
        let index = self.free;
        let Some(entry) = self.entries.get_mut(index as usize) else {
            return Err(value);
        };
        self.free = entry.next_free;
        entry.value = Some(value);
        self.in_flight += 1;
        Ok(entry.generation << Self::INDEX_BITS | u64::from(index))
    }

    /// The state saved for in-flight `id`.
    pub fn get(&self, id: u64) -> Option<&T> {
        let (index, generation) = Self::split(id);
        let entry = self.entries.get(index)?;
        if entry.generation != generation {
            return None;
        }
        entry.value.as_ref()
    }

    /// Complete `id` and return its state. Its index is free again, with
    /// the next generation, unless that generation was the last one: then
    /// the index is retired for good instead of wrapping (R11).
    ///
    /// # Errors
    /// [`IdError`] if `id` is not in flight; the table is unchanged.
    pub fn complete(&mut self, id: u64) -> Result<T, IdError> {
        let (index, generation) = Self::split(id);
        let entry = self.entries.get_mut(index).ok_or(IdError::Unknown)?;
        if entry.generation != generation {
            return Err(IdError::NotInFlight);
        }
        let value = entry.value.take().ok_or(IdError::NotInFlight)?;
        self.in_flight -= 1;
        if entry.generation == Self::MAX_GENERATION {
            // Never wrap: an id with generation 0 may still be in a hostile
            // back's hands. Keep the last generation and stay off the free
            // list; completing it again fails (`value` is None).
            self.retired += 1;
        } else {
            entry.generation += 1;
            entry.next_free = self.free;
            // index < N < u32::MAX (const-asserted in `new`).
            self.free = index as u32;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn r11_ids_complete_once_in_any_order() {
        let mut t = IdTable::<u32, 4>::new();
        let ids: [u64; 4] = core::array::from_fn(|i| t.insert(i as u32).unwrap());
        assert!(t.is_full());
        assert_eq!(t.insert(9), Err(9));
        assert_eq!(t.complete(ids[2]), Ok(2));
        assert_eq!(t.complete(ids[2]), Err(IdError::NotInFlight));
        assert_eq!(t.complete(ids[0]), Ok(0));
        assert_eq!(t.in_flight(), 2);
    }

    #[test]
    fn r11_unknown_and_stale_ids_are_rejected() {
        // Three entries: two index bits, so index 3 is not ours.
        let mut t = IdTable::<(), 3>::new();
        assert_eq!(t.complete(7), Err(IdError::Unknown));
        assert_eq!(t.complete(u64::MAX), Err(IdError::Unknown));
        assert_eq!(t.complete(1 << 2), Err(IdError::NotInFlight), "index 0, generation 1: not issued");
        let a = t.insert(()).unwrap();
        t.complete(a).unwrap();
        let b = t.insert(()).unwrap();
        assert_eq!(a & 3, b & 3, "index reused");
        assert_ne!(a, b, "with a new generation");
        assert_eq!(t.complete(a), Err(IdError::NotInFlight));
        assert!(t.get(a).is_none());
        assert!(t.get(b).is_some());
        assert_eq!(t.complete(b), Ok(()));
    }

    #[test]
    fn r11_ids_use_the_fewest_index_bits() {
        fn second_id<const N: usize>() -> u64 {
            let mut t = IdTable::<(), N>::new();
            let a = t.insert(()).unwrap();
            t.complete(a).unwrap();
            t.insert(()).unwrap() // index 0, generation 1
        }
        assert_eq!(second_id::<1>(), 1);
        assert_eq!(second_id::<2>(), 1 << 1);
        assert_eq!(second_id::<4>(), 1 << 2);
        assert_eq!(second_id::<5>(), 1 << 3);
        assert_eq!(second_id::<128>(), 1 << 7);
        assert_eq!(IdTable::<(), 1>::MAX_GENERATION, u64::MAX);
        assert_eq!(IdTable::<(), 128>::MAX_GENERATION, u64::MAX >> 7);
        assert_eq!(IdTable::<(), { u32::MAX as usize - 1 }>::INDEX_BITS, 32);
    }

    /// R11: an index whose generation runs out is retired, never wrapped,
    /// so an id issued at generation 0 can never be accepted again.
    #[test]
    fn r11_generations_never_wrap() {
        let mut t = IdTable::<u32, 2>::new();
        let first = t.insert(0).unwrap();
        assert_eq!(first, 0);
        t.complete(first).unwrap();
        // Fast-forward index 0 to its second-to-last generation.
        t.entries[0].generation = IdTable::<u32, 2>::MAX_GENERATION - 1;
        let mut issued = std::vec::Vec::new();
        for v in 0..4 {
            let id = t.insert(v).unwrap();
            issued.push(id);
            assert_eq!(t.complete(id), Ok(v));
            assert_eq!(t.complete(first), Err(IdError::NotInFlight), "stale generation-0 id accepted");
            assert!(t.get(first).is_none());
        }
        assert_eq!(&issued[..2], [u64::MAX - 3, u64::MAX - 1], "index 0's last two generations");
        assert_eq!(issued[2] & 1, 1, "index 0 is retired: index 1 serves from now on");
        assert_eq!(t.retired(), 1);
        assert_eq!(t.complete(u64::MAX - 1), Err(IdError::NotInFlight), "the retired index's last id");
        // Only index 1 is left: one request in flight fills the table.
        let id = t.insert(9).unwrap();
        assert!(t.is_full());
        assert_eq!(t.insert(10), Err(10));
        assert_eq!(t.complete(id), Ok(9));

        // With one entry, retiring it leaves a table that refuses inserts.
        let mut t = IdTable::<(), 1>::new();
        t.entries[0].generation = u64::MAX;
        let id = t.insert(()).unwrap();
        assert_eq!(id, u64::MAX);
        t.complete(id).unwrap();
        assert!(t.is_full() && t.retired() == 1 && t.in_flight() == 0);
        assert_eq!(t.insert(()), Err(()));
        assert_eq!(t.complete(0), Err(IdError::NotInFlight), "generation 0 again is stale, not a wrap");
    }

    #[test]
    fn r11_descriptor_ranges_are_checked() {
        let d = |offset, len| Descriptor { offset, len, ..Descriptor::default() };
        assert_eq!(d(0, 4096).checked_range(PAGE_SIZE), Some(0..4096));
        assert_eq!(d(4000, 96).checked_range(PAGE_SIZE), Some(4000..4096));
        assert_eq!(d(4000, 97).checked_range(PAGE_SIZE), None);
        assert_eq!(d(0, 0).checked_range(PAGE_SIZE), None);
        assert_eq!(d(u32::MAX, u32::MAX).checked_range(PAGE_SIZE), None);
    }
}
