//! The frame table: who owns every machine frame, and what it is used as.
//!
//! # Invariants
//! - Every machine frame below `max_mfn` has exactly one [`FrameInfo`]; a
//!   frame is free, owned by the hypervisor, or owned by exactly one domain.
//! - Only this module changes ownership. A frame handed to a domain is zeroed
//!   by the caller before the domain can see it (the builder does this), so
//!   no data crosses between owners.
//! - Frames that are not RAM (holes, MMIO, firmware) are never free and never
//!   owned by a domain: they start as [`Owner::Reserved`].
//! - The guest-memory accessor ([`crate::guest_mem`]) refuses any frame whose
//!   owner is not the accessing domain, so even a bug elsewhere cannot make
//!   the hypervisor read or write another domain's memory on a guest's
//!   behalf.

use core::fmt;

/// A machine frame number (physical address >> 12).
pub type Mfn = u64;

/// A domain id.
pub type DomId = u16;

/// Who owns a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Not RAM, or RAM the hypervisor must never hand out (firmware, its own
    /// image, boot modules).
    Reserved,
    /// Free RAM.
    Free,
    /// Used by the hypervisor itself (page tables, frame table).
    Hypervisor,
    /// Owned by a domain.
    Domain(DomId),
}

/// What a domain-owned frame is currently used as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Ordinary memory: may be mapped writable.
    Normal,
    /// A page table of the given level (1 = PT, 4 = PML4): never writable in
    /// any view.
    PageTable(u8),
}

/// Bookkeeping for one machine frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// The owner.
    pub owner: Owner,
    /// The current use.
    pub kind: FrameKind,
}

impl FrameInfo {
    /// A frame that is not usable RAM.
    pub const RESERVED: FrameInfo = FrameInfo { owner: Owner::Reserved, kind: FrameKind::Normal };
}

/// Errors from frame-table operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The frame number lies outside the table.
    OutOfRange(Mfn),
    /// The frame does not have the owner the operation requires.
    NotOwned(Mfn),
    /// No free frame is left.
    Exhausted,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::OutOfRange(m) => write!(f, "frame {m:#x} is outside machine memory"),
            FrameError::NotOwned(m) => write!(f, "frame {m:#x} is not owned by the caller"),
            FrameError::Exhausted => write!(f, "out of machine memory"),
        }
    }
}

/// The table over all machine frames `0..len`.
pub struct FrameTable<'a> {
    frames: &'a mut [FrameInfo],
    /// Next-fit cursor for allocation.
    cursor: usize,
    free: usize,
}

impl<'a> FrameTable<'a> {
    /// Wraps storage for `frames.len()` frames, all reserved until
    /// [`FrameTable::add_free_range`] says otherwise.
    pub fn new(frames: &'a mut [FrameInfo]) -> Self {
        frames.fill(FrameInfo::RESERVED);
        FrameTable { frames, cursor: 0, free: 0 }
    }

    /// Number of frames covered.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the table covers no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Number of free frames.
    pub fn free_count(&self) -> usize {
        self.free
    }

    /// Marks `[start, end)` as free RAM, clamped to the table. Frames that
    /// are already owned are left alone.
    pub fn add_free_range(&mut self, start: Mfn, end: Mfn) {
        let end = (end as usize).min(self.frames.len());
        let start = (start as usize).min(end);
        for f in &mut self.frames[start..end] {
            if f.owner == Owner::Reserved {
                f.owner = Owner::Free;
                self.free += 1;
            }
        }
    }

    /// Marks `[start, end)` reserved (for instance, a boot module), clamped
    /// to the table. Panics never; frames already handed out are not touched.
    pub fn reserve_range(&mut self, start: Mfn, end: Mfn) {
        let end = (end as usize).min(self.frames.len());
        let start = (start as usize).min(end);
        for f in &mut self.frames[start..end] {
            if f.owner == Owner::Free {
                f.owner = Owner::Reserved;
                self.free -= 1;
            }
        }
    }

    /// The bookkeeping of `mfn`.
    pub fn get(&self, mfn: Mfn) -> Result<FrameInfo, FrameError> {
        usize::try_from(mfn)
            .ok()
            .and_then(|i| self.frames.get(i))
            .copied()
            .ok_or(FrameError::OutOfRange(mfn))
    }

    /// Whether `dom` owns `mfn`.
    pub fn owned_by(&self, mfn: Mfn, dom: DomId) -> bool {
        matches!(self.get(mfn), Ok(FrameInfo { owner: Owner::Domain(d), .. }) if d == dom)
    }

    /// Takes a free frame for `owner`. The caller zeroes it before use.
    pub fn alloc(&mut self, owner: Owner) -> Result<Mfn, FrameError> {
        let n = self.frames.len();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if self.frames[i].owner == Owner::Free {
                self.frames[i] = FrameInfo { owner, kind: FrameKind::Normal };
                self.cursor = (i + 1) % n;
                self.free -= 1;
                return Ok(i as Mfn);
            }
        }
        Err(FrameError::Exhausted)
    }

    /// Sets the use of a frame that `dom` owns.
    pub fn set_kind(&mut self, mfn: Mfn, dom: DomId, kind: FrameKind) -> Result<(), FrameError> {
        if !self.owned_by(mfn, dom) {
            return Err(FrameError::NotOwned(mfn));
        }
        self.frames[mfn as usize].kind = kind;
        Ok(())
    }

    /// Returns every frame of `dom` to the free pool and returns how many.
    pub fn release_domain(&mut self, dom: DomId) -> usize {
        let mut n = 0;
        for f in self.frames.iter_mut() {
            if f.owner == Owner::Domain(dom) {
                *f = FrameInfo { owner: Owner::Free, kind: FrameKind::Normal };
                n += 1;
            }
        }
        self.free += n;
        n
    }

    /// Number of frames `owner` holds.
    pub fn count_owned(&self, owner: Owner) -> usize {
        self.frames.iter().filter(|f| f.owner == owner).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_only_free_ram_and_accounts() {
        let mut store = [FrameInfo::RESERVED; 64];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(10, 20);
        t.reserve_range(12, 14);
        assert_eq!(t.free_count(), 8);
        let mut got = std::vec::Vec::new();
        while let Ok(m) = t.alloc(Owner::Domain(3)) {
            got.push(m);
        }
        assert_eq!(got, [10, 11, 14, 15, 16, 17, 18, 19]);
        assert_eq!(t.alloc(Owner::Domain(3)), Err(FrameError::Exhausted));
        assert!(t.owned_by(10, 3));
        assert!(!t.owned_by(10, 4));
        assert!(!t.owned_by(12, 3));
        assert_eq!(t.release_domain(3), 8);
        assert_eq!(t.free_count(), 8);
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let mut store = [FrameInfo::RESERVED; 4];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, u64::MAX);
        assert_eq!(t.free_count(), 4);
        assert_eq!(t.get(4), Err(FrameError::OutOfRange(4)));
        assert_eq!(t.get(u64::MAX), Err(FrameError::OutOfRange(u64::MAX)));
        assert!(!t.owned_by(u64::MAX, 0));
        assert_eq!(t.set_kind(99, 0, FrameKind::PageTable(1)), Err(FrameError::NotOwned(99)));
    }

    #[test]
    fn kind_changes_need_ownership() {
        let mut store = [FrameInfo::RESERVED; 4];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 4);
        let m = t.alloc(Owner::Domain(1)).unwrap();
        assert_eq!(t.set_kind(m, 2, FrameKind::PageTable(4)), Err(FrameError::NotOwned(m)));
        t.set_kind(m, 1, FrameKind::PageTable(4)).unwrap();
        assert_eq!(t.get(m).unwrap().kind, FrameKind::PageTable(4));
    }
}
