//! The frame table: who owns every machine frame, and what it is used as.
//!
//! # Invariants
//! - Every machine frame below `max_mfn` has exactly one [`FrameInfo`]; a
//!   frame is free, owned by the hypervisor, owned by exactly one domain,
//!   or an orphan that a dead domain left mapped by others (see *Foreign
//!   mappings*).
//! - Only this module changes ownership. A frame handed to a domain is zeroed
//!   by the caller before the domain can see it (the builder does this), so
//!   no data crosses between owners.
//! - Frames that are not RAM (holes, MMIO, firmware) are never free and never
//!   owned by a domain: they start as [`Owner::Reserved`].
//! - The guest-memory accessor ([`crate::mm::guest_mem`]) refuses any frame whose
//!   owner is not the accessing domain, so even a bug elsewhere cannot make
//!   the hypervisor read or write another domain's memory on a guest's
//!   behalf.
//!
//! # Frame types (Xen's `type_info`)
//! Every frame also carries a [`FrameType`] and a *type count*, the number of
//! references that currently hold that type:
//! - [`FrameType::Writable`]: one reference per present, writable level-1
//!   entry in a validated page table that maps the frame (and one the
//!   hypervisor holds on each domain's shared-info page);
//! - [`FrameType::PageTable`]`(n)`: one for its pin ([`FrameInfo::pinned`]),
//!   one per present entry of a validated level-`n+1` table that points at
//!   it, and one per vCPU that has it as its active root.
//!
//! This module only keeps the counts; what a reference means, and
//! validating and devalidating page-table contents, is [`crate::mm`]'s job.
//! The rules kept here:
//! - the type count is 0 exactly when the type is [`FrameType::None`];
//! - a frame's type changes only while its type count is 0: a reference of a
//!   different type is refused with [`FrameError::TypeConflict`];
//! - a page table being pinned or unpinned in steps (its [`Partial`] state
//!   is not [`Partial::None`]) holds exactly one reference, the operation's
//!   own, is not pinned and takes no other reference: it is not a usable
//!   table until its pin completes ([`FrameInfo::is_page_table`] is false),
//!   and [`FrameTable::end_partial`] ends its type;
//! - a pinned frame is a page table, and its pin is one of its references.
//!   The pin's reference is dropped only by [`FrameTable::unpin`], and only
//!   when it is the frame's last ([`FrameError::Referenced`] otherwise);
//!   [`FrameTable::put_type_ref`] never drops a pinned frame's last
//!   reference. So a pinned frame stays typed until it is unpinned, and
//!   dropping any other reference to it never ends its type (this is what
//!   keeps devalidation from cascading: [`crate::mm`] rule 7);
//! - [`FrameTable::get_pinned_ref`] takes a reference only to a frame that
//!   is already a pinned table of the wanted type: it never gives a frame its
//!   first reference ([`TypeRef::First`]), so it never asks for validation;
//! - only the domain that owns a frame can take a type reference to it, and
//!   references never cross domains, so [`FrameTable::release_domain`] can
//!   reset every frame of a dead domain (owner, type, count, pin) without
//!   touching any other domain's counts.
//!
//! # Remembered translations (the change counter)
//! The guest-memory accessor remembers page walks
//! ([`crate::mm::guest_mem`]) together with [`FrameTable::epoch`], and uses
//! one only while the counter is unchanged. So the rule is: **no frame's
//! bookkeeping changes without the counter changing.** It is kept by
//! construction, not by discipline: the frame array lives in the private
//! `store` submodule beside the counter, and the only ways to reach it
//! mutably (`Slots::slot_mut`, `Slots::all_mut`) bump the counter before
//! they hand out the `&mut`. No method of [`FrameTable`] can name the
//! array otherwise, so a new method cannot forget. (A bump on a path that
//! then changes nothing, such as a refused reference, only costs a fresh
//! walk.) Page-table contents live in guest frames, outside this table:
//! [`FrameTable::note_change`] covers them, called by every validator that
//! may write one ([`crate::mm::Mm::new`]).
//!
//! One narrow exception, also by construction: a remembered walk reads
//! frame owners (rule 4 of [`crate::mm::guest_mem`]) and page-table
//! entries, nothing else of this table. So a change made through
//! `Slots::update_keeping_owner`, which bumps the counter only if the
//! owner changed, cannot leave a stale walk behind. Only
//! [`FrameTable::get_foreign_ref`] and [`FrameTable::put_foreign_ref`] (a
//! grant mapping's references: counts and a `Writable` type; the owner
//! changes only when the last reference frees an orphan, and then the
//! counter is bumped) use it, so that a grant map and unmap do not cost
//! the mapper its remembered walks.
//!
//! # Foreign (grant) mappings
//! A frame that its owner granted and another domain mapped
//! ([`crate::grant`]) carries a *foreign count*, [`FrameInfo::foreign`]: one
//! per grant mapping of it, taken by [`FrameTable::get_foreign_ref`] and
//! dropped by [`FrameTable::put_foreign_ref`]. A writable grant mapping also
//! holds one [`FrameType::Writable`] reference, taken for the owner (so a
//! frame mapped writable by a grantee can be no page table of its owner, and
//! a page table cannot be mapped writable by a grantee). This is the one
//! exception to "references never cross domains", and the frame table
//! handles it alone:
//! - the foreign count is at most [`MAX_FOREIGN`]; one more is refused with
//!   [`FrameError::CountOverflow`], never wrapped;
//! - when the owner dies, [`FrameTable::release_domain`] (and its steps)
//!   frees only frames without foreign mappings. A frame with some becomes
//!   [`Owner::Orphan`]: owned by nobody (so no domain can map it anew or
//!   access it through the guest-memory accessor), untyped, its type
//!   references gone with its owner, its foreign count kept. The last
//!   [`FrameTable::put_foreign_ref`] frees it ([`ForeignPut::Freed`]). So a
//!   mapped frame outlives its owner until the last unmap, and is never
//!   handed to anyone else while mapped;
//! - [`FrameTable::put_foreign_ref`] drops the writable mapping's type
//!   reference only while the owner lives (an orphan has none left).

use core::fmt;

/// A machine frame number (physical address >> 12).
pub type Mfn = u64;

pub use crate::domain::DomId;

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
    /// Owned by a domain that died while other domains still had grant
    /// mappings of the frame: nobody's, freed by the last unmap (see the
    /// module docs).
    Orphan,
}

/// What a frame is currently used as (meaningful for domain frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameType {
    /// No type reference is held: the frame may take any type.
    None,
    /// Mapped writable by at least one validated level-1 entry: it can be no
    /// page table until the last such mapping goes.
    Writable,
    /// A validated page table of the given level (1 = PT .. 4 = PML4): never
    /// mapped writable in any validated table.
    PageTable(u8),
}

/// A page table part-way through a pin or an unpin that was preempted
/// (see [`crate::mm`] rule 7): how far it got. In both states the entries
/// below `next` hold their references and the others hold none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partial {
    /// No pin or unpin is under way.
    None,
    /// A pin has validated the entries below `next`.
    Validating {
        /// The first entry not yet validated.
        next: u16,
    },
    /// An unpin (or a pin that failed, with `failed` its error) is giving
    /// back the references of the entries below `next`.
    Devalidating {
        /// One past the last entry still holding its reference.
        next: u16,
        /// The error code ([`pvguest_abi::Errno`]) of the pin whose
        /// references these are, if a pin failed (0 for an unpin): it is
        /// reported once they are all given back. A code, not the enum, so
        /// that a frame's bookkeeping stays 16 bytes.
        failed: u8,
    },
}

impl Partial {
    /// The error to report when a failed pin's references are all back.
    pub fn failure(code: u8) -> Option<pvguest_abi::Errno> {
        pvguest_abi::Errno::from_code(i64::from(code))
    }
}

const _: () = assert!(core::mem::size_of::<FrameInfo>() == 16, "a frame's bookkeeping is 16 bytes");

/// Bookkeeping for one machine frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// The owner.
    pub owner: Owner,
    /// The current type ([`FrameType::None`] when `type_count` is 0).
    pub ty: FrameType,
    /// Number of references holding `ty`.
    pub type_count: u32,
    /// The domain pinned the frame as a page table (holds one reference).
    pub pinned: bool,
    /// A pin or unpin of this page table under way (see [`Partial`]).
    pub partial: Partial,
    /// Grant mappings of the frame by other domains (see the module docs):
    /// a `u8` so that a frame's bookkeeping stays 16 bytes.
    pub foreign: u8,
}

/// Most grant mappings one frame can have at once ([`FrameInfo::foreign`]).
pub const MAX_FOREIGN: u8 = u8::MAX;

/// What dropping a foreign reference did.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignPut {
    /// The frame stays (its owner lives, or other mappings remain).
    Kept,
    /// It was the last mapping of an orphan: the frame is free now.
    Freed,
}

impl FrameInfo {
    /// A frame that is not usable RAM.
    pub const RESERVED: FrameInfo = FrameInfo::untyped(Owner::Reserved);

    /// A frame of `owner` with no type.
    pub const fn untyped(owner: Owner) -> FrameInfo {
        FrameInfo { owner, ty: FrameType::None, type_count: 0, pinned: false, partial: Partial::None, foreign: 0 }
    }

    /// Whether the frame is a validated page table of `level` (not one
    /// part-way through a pin or unpin).
    pub const fn is_page_table(&self, level: u8) -> bool {
        matches!(self.ty, FrameType::PageTable(l) if l == level)
            && self.type_count > 0
            && matches!(self.partial, Partial::None)
    }
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
    /// The frame holds references of another type.
    TypeConflict {
        /// The frame.
        mfn: Mfn,
        /// Its current type.
        have: FrameType,
    },
    /// The type count would overflow.
    CountOverflow(Mfn),
    /// The frame is not a pinned page table (it has no type yet, or has not
    /// been pinned): a reference that needs one is refused.
    NotPinned(Mfn),
    /// Unpinning a table that other references (entries, active roots)
    /// still hold.
    Referenced {
        /// The frame.
        mfn: Mfn,
        /// Its type count, the pin included.
        count: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::OutOfRange(m) => write!(f, "frame {m:#x} is outside machine memory"),
            FrameError::NotOwned(m) => write!(f, "frame {m:#x} is not owned by the caller"),
            FrameError::Exhausted => write!(f, "out of machine memory"),
            FrameError::TypeConflict { mfn, have } => {
                write!(f, "frame {mfn:#x} is in use as {have:?}")
            }
            FrameError::CountOverflow(m) => write!(f, "frame {m:#x} has too many references"),
            FrameError::NotPinned(m) => write!(f, "frame {m:#x} is not a pinned page table"),
            FrameError::Referenced { mfn, count } => {
                write!(f, "frame {mfn:#x} is still referenced ({} references besides its pin)", count - 1)
            }
        }
    }
}

/// The result of taking a type reference.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeRef {
    /// The frame had no type and now has the requested one with count 1: a
    /// page table's contents must now be validated, and on failure the
    /// reference dropped again with [`FrameTable::put_type_ref`].
    First,
    /// The frame already had the type; its count went up.
    More,
}

/// The frame array and its change counter, kept together so that nothing
/// can reach the array mutably without bumping the counter.
///
/// This submodule is the privacy boundary: [`FrameTable`]'s methods see
/// only [`store::Slots::all`] (shared), [`store::Slots::all_mut`] /
/// [`store::Slots::slot_mut`] (each bumps the counter before it hands out
/// the `&mut`) and [`store::Slots::update_keeping_owner`] (bumps it after
/// the change if the frame's owner changed, the one field a remembered
/// walk reads). A new `&mut self` method of [`FrameTable`] therefore cannot
/// change what a walk depends on and forget to invalidate remembered
/// translations: the compiler gives it no other way in.
mod store {
    use super::FrameInfo;

    pub(super) struct Slots<'a> {
        frames: &'a mut [FrameInfo],
        epoch: u64,
    }

    impl<'a> Slots<'a> {
        pub(super) fn new(frames: &'a mut [FrameInfo]) -> Self {
            Slots { frames, epoch: 0 }
        }

        /// Every frame, read-only (no bump).
        #[inline]
        pub(super) fn all(&self) -> &[FrameInfo] {
            self.frames
        }

        /// Every frame, mutably: bumps the counter first.
        #[inline]
        pub(super) fn all_mut(&mut self) -> &mut [FrameInfo] {
            self.bump();
            self.frames
        }

        /// Frame `mfn`, mutably (`None` past the table): bumps the counter
        /// first, whether or not the frame exists.
        #[inline]
        pub(super) fn slot_mut(&mut self, mfn: u64) -> Option<&mut FrameInfo> {
            self.bump();
            usize::try_from(mfn).ok().and_then(|i| self.frames.get_mut(i))
        }

        /// Runs `f` on frame `mfn` (`None` past the table) and bumps the
        /// counter only if `f` changed the frame's owner: the one piece of
        /// frame bookkeeping a remembered walk depends on (rule 4 of
        /// [`crate::mm::guest_mem`]). For reference-count changes that no
        /// remembered walk can observe ([`super::FrameTable::get_foreign_ref`]);
        /// the owner check keeps even a wrong `f` from leaving a stale walk.
        #[inline]
        pub(super) fn update_keeping_owner<R>(&mut self, mfn: u64, f: impl FnOnce(&mut FrameInfo) -> R) -> Option<R> {
            let slot = usize::try_from(mfn).ok().and_then(|i| self.frames.get_mut(i))?;
            let owner = slot.owner;
            let r = f(slot);
            if slot.owner != owner {
                self.bump();
            }
            Some(r)
        }

        #[inline]
        pub(super) fn epoch(&self) -> u64 {
            self.epoch
        }

        #[inline]
        pub(super) fn bump(&mut self) {
            self.epoch = self.epoch.wrapping_add(1);
        }
    }
}

/// The table over all machine frames `0..len`.
pub struct FrameTable<'a> {
    /// The frames and the change counter: bumped by every mutable access
    /// to a frame (see [`store`]) and by every page-table validator made
    /// over the table ([`FrameTable::note_change`]); a remembered guest
    /// translation is valid only while it is unchanged.
    slots: store::Slots<'a>,
    /// Next-fit cursor for allocation.
    cursor: usize,
    free: usize,
}

impl<'a> FrameTable<'a> {
    /// Wraps storage for `frames.len()` frames, all reserved until
    /// [`FrameTable::add_free_range`] says otherwise.
    pub fn new(frames: &'a mut [FrameInfo]) -> Self {
        frames.fill(FrameInfo::RESERVED);
        FrameTable { slots: store::Slots::new(frames), cursor: 0, free: 0 }
    }

    /// Number of frames covered.
    pub fn len(&self) -> usize {
        self.slots.all().len()
    }

    /// Whether the table covers no frames.
    pub fn is_empty(&self) -> bool {
        self.slots.all().is_empty()
    }

    /// Number of free frames.
    pub fn free_count(&self) -> usize {
        self.free
    }

    /// Marks `[start, end)` as free RAM, clamped to the table. Frames that
    /// are already owned are left alone.
    pub fn add_free_range(&mut self, start: Mfn, end: Mfn) {
        let end = (end.min(self.slots.all().len() as u64)) as usize;
        let start = (start.min(end as u64)) as usize;
        for f in &mut self.slots.all_mut()[start..end] {
            if f.owner == Owner::Reserved {
                *f = FrameInfo::untyped(Owner::Free);
                self.free += 1;
            }
        }
    }

    /// Marks `[start, end)` reserved (for instance, a boot module), clamped
    /// to the table. Panics never; frames already handed out are not touched.
    pub fn reserve_range(&mut self, start: Mfn, end: Mfn) {
        let end = (end.min(self.slots.all().len() as u64)) as usize;
        let start = (start.min(end as u64)) as usize;
        for f in &mut self.slots.all_mut()[start..end] {
            if f.owner == Owner::Free {
                *f = FrameInfo::RESERVED;
                self.free -= 1;
            }
        }
    }

    /// The change counter (see the field's docs).
    pub fn epoch(&self) -> u64 {
        self.slots.epoch()
    }

    /// Records that page tables over this table may have changed, so no
    /// translation remembered before is used again: [`crate::mm::Mm::new`]
    /// calls it (a validator may write entries). Changes to the frames
    /// themselves need no call: every mutable access to a frame bumps the
    /// counter by construction (see *Remembered translations* in the
    /// module docs).
    pub fn note_change(&mut self) {
        self.slots.bump();
    }

    /// The bookkeeping of `mfn`.
    pub fn get(&self, mfn: Mfn) -> Result<FrameInfo, FrameError> {
        usize::try_from(mfn).ok().and_then(|i| self.slots.all().get(i)).copied().ok_or(FrameError::OutOfRange(mfn))
    }

    /// Whether `dom` owns `mfn`.
    pub fn owned_by(&self, mfn: Mfn, dom: DomId) -> bool {
        // In place: every guest-memory walk asks this at each level.
        usize::try_from(mfn).ok().and_then(|i| self.slots.all().get(i)).is_some_and(|f| f.owner == Owner::Domain(dom))
    }

    /// Takes a free frame for `owner`. The caller zeroes it before use.
    pub fn alloc(&mut self, owner: Owner) -> Result<Mfn, FrameError> {
        let n = self.slots.all().len();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if self.slots.all()[i].owner == Owner::Free {
                self.slots.all_mut()[i] = FrameInfo::untyped(owner);
                self.cursor = (i + 1) % n;
                self.free -= 1;
                return Ok(i as Mfn);
            }
        }
        Err(FrameError::Exhausted)
    }

    /// Gives `owner` a frame the hypervisor holds untouched (taken with
    /// [`FrameTable::alloc`] for [`Owner::Hypervisor`]): a run-time
    /// create's frames are taken and zeroed in bounded units before its
    /// build, which hands them over. `NotOwned` for any other frame.
    pub fn hand_over(&mut self, mfn: Mfn, owner: Owner) -> Result<(), FrameError> {
        let i = self.held(mfn)?;
        self.slots.all_mut()[i] = FrameInfo::untyped(owner);
        Ok(())
    }

    /// Frees a frame the hypervisor holds untouched (as for
    /// [`FrameTable::hand_over`]): a create given up part-way.
    pub fn free_held(&mut self, mfn: Mfn) -> Result<(), FrameError> {
        let i = self.held(mfn)?;
        self.slots.all_mut()[i] = FrameInfo::untyped(Owner::Free);
        self.free += 1;
        Ok(())
    }

    /// `mfn`'s index, if the hypervisor holds it untouched.
    fn held(&self, mfn: Mfn) -> Result<usize, FrameError> {
        let i = usize::try_from(mfn).ok().filter(|&i| i < self.slots.all().len()).ok_or(FrameError::OutOfRange(mfn))?;
        if self.slots.all()[i] != FrameInfo::untyped(Owner::Hypervisor) {
            return Err(FrameError::NotOwned(mfn));
        }
        Ok(i)
    }

    /// Takes `n` (at least 1) free frames with consecutive machine numbers
    /// for `owner` (a DMA pool) and returns the first; the lowest such run
    /// is taken. `Exhausted` if there is none. Scans the whole table once
    /// (build time only). The caller zeroes them before use.
    pub fn alloc_contiguous(&mut self, owner: Owner, n: usize) -> Result<Mfn, FrameError> {
        let mut run = 0;
        for i in 0..self.slots.all().len() {
            run = if self.slots.all()[i].owner == Owner::Free { run + 1 } else { 0 };
            if run == n && n > 0 {
                let first = i + 1 - n;
                for f in &mut self.slots.all_mut()[first..=i] {
                    *f = FrameInfo::untyped(owner);
                }
                self.free -= n;
                return Ok(first as Mfn);
            }
        }
        Err(FrameError::Exhausted)
    }

    /// The slot of a frame that `dom` owns.
    fn owned_mut(&mut self, mfn: Mfn, dom: DomId) -> Result<&mut FrameInfo, FrameError> {
        let f = self.slots.slot_mut(mfn).ok_or(FrameError::OutOfRange(mfn))?;
        if f.owner != Owner::Domain(dom) {
            return Err(FrameError::NotOwned(mfn));
        }
        Ok(f)
    }

    /// Takes one reference of type `ty` (not [`FrameType::None`]) to a
    /// frame that `dom` owns. A frame without references takes the type
    /// ([`TypeRef::First`]); one that already has `ty` counts one more; any
    /// other type is a [`FrameError::TypeConflict`]. On error nothing
    /// changes.
    pub fn get_type_ref(&mut self, mfn: Mfn, dom: DomId, ty: FrameType) -> Result<TypeRef, FrameError> {
        debug_assert!(ty != FrameType::None, "FrameType::None is not a reference");
        take_type_ref(self.owned_mut(mfn, dom)?, mfn, ty)
    }

    /// Takes one more reference of type `ty` (a page-table type) to a frame
    /// that `dom` owns and that is already a *pinned* frame of that type.
    /// Unlike [`FrameTable::get_type_ref`] this never gives a frame its
    /// first reference, so the caller never has contents to validate. A
    /// frame of another type is a [`FrameError::TypeConflict`]; one without
    /// a type, or of the right type but not pinned, is
    /// [`FrameError::NotPinned`]. On error nothing changes.
    pub fn get_pinned_ref(&mut self, mfn: Mfn, dom: DomId, ty: FrameType) -> Result<(), FrameError> {
        debug_assert!(matches!(ty, FrameType::PageTable(_)), "only page tables are pinned");
        let f = self.owned_mut(mfn, dom)?;
        if f.type_count > 0 && f.ty != ty {
            return Err(FrameError::TypeConflict { mfn, have: f.ty });
        }
        if f.type_count == 0 || !f.pinned {
            return Err(FrameError::NotPinned(mfn));
        }
        f.type_count = f.type_count.checked_add(1).ok_or(FrameError::CountOverflow(mfn))?;
        Ok(())
    }

    /// Drops one type reference. When it was the last, the type is reset to
    /// [`FrameType::None`] and the old type is returned, so that the caller
    /// can devalidate a page table's contents.
    ///
    /// The pin's own reference is not dropped here but by
    /// [`FrameTable::unpin`]: dropping the last reference of a pinned frame
    /// is a hypervisor bug. So is dropping a reference nobody holds. Both
    /// are ignored (and assert in debug builds) rather than wrapping the
    /// count or ending a pinned table's type.
    pub fn put_type_ref(&mut self, mfn: Mfn) -> Option<FrameType> {
        drop_type_ref(self.slots.slot_mut(mfn)?, mfn)
    }

    /// Marks a frame `dom` owns as pinned. The caller has just taken the
    /// pin's type reference (a page-table type); pinning an untyped frame
    /// is a hypervisor bug and is refused with [`FrameError::NotPinned`].
    pub fn set_pinned(&mut self, mfn: Mfn, dom: DomId) -> Result<(), FrameError> {
        let f = self.owned_mut(mfn, dom)?;
        if !matches!(f.ty, FrameType::PageTable(_)) || f.type_count == 0 {
            return Err(FrameError::NotPinned(mfn));
        }
        f.pinned = true;
        f.partial = Partial::None;
        Ok(())
    }

    /// Records how far a pin or unpin of the page table `mfn` (which `dom`
    /// owns and which holds the operation's one reference) got.
    pub fn set_partial(&mut self, mfn: Mfn, dom: DomId, partial: Partial) -> Result<(), FrameError> {
        let f = self.owned_mut(mfn, dom)?;
        if !matches!(f.ty, FrameType::PageTable(_)) || f.type_count != 1 || f.pinned {
            return Err(FrameError::NotPinned(mfn));
        }
        f.partial = partial;
        Ok(())
    }

    /// Ends a pin that failed or an unpin, once every entry has given its
    /// reference back: the frame loses the operation's reference and its
    /// type.
    pub fn end_partial(&mut self, mfn: Mfn, dom: DomId) -> Result<(), FrameError> {
        let f = self.owned_mut(mfn, dom)?;
        if !matches!(f.ty, FrameType::PageTable(_)) || f.type_count != 1 || f.pinned {
            return Err(FrameError::NotPinned(mfn));
        }
        *f = FrameInfo::untyped(f.owner);
        Ok(())
    }

    /// Drops the pin of a frame `dom` owns and returns the type it had,
    /// which the caller devalidates: the pin's reference becomes the
    /// unpin's, with [`Partial::Devalidating`] from entry `next` down, until
    /// [`FrameTable::end_partial`]. Only a pin that is the frame's *last*
    /// reference can go: a frame that is not pinned is
    /// [`FrameError::NotPinned`], one that other references still hold is
    /// [`FrameError::Referenced`]. On error nothing changes.
    pub fn unpin(&mut self, mfn: Mfn, dom: DomId, next: u16) -> Result<FrameType, FrameError> {
        let f = self.owned_mut(mfn, dom)?;
        if !f.pinned {
            return Err(FrameError::NotPinned(mfn));
        }
        if f.type_count != 1 {
            return Err(FrameError::Referenced { mfn, count: f.type_count });
        }
        f.pinned = false;
        f.partial = Partial::Devalidating { next, failed: 0 };
        Ok(f.ty)
    }

    /// Returns every frame of `dom` to the free pool, with its type, type
    /// count and pin cleared, and returns how many. Type references never
    /// cross domains, so no other frame's count refers to these frames;
    /// frames that other domains still map through grants become
    /// [`Owner::Orphan`] instead and are not counted (see the module docs).
    pub fn release_domain(&mut self, dom: DomId) -> usize {
        let n = self.slots.all_mut().iter_mut().map(|f| release_one(f, dom)).sum();
        self.free += n;
        n
    }

    /// Frees `dom`'s frames among the `max` frame-table entries from index
    /// `from` on: a domain's teardown in bounded steps. Returns where the
    /// next step starts, or `None` when the whole table has been scanned.
    pub fn release_domain_step(&mut self, dom: DomId, from: usize, max: usize) -> Option<usize> {
        let end = from.saturating_add(max).min(self.slots.all().len());
        let n: usize =
            self.slots.all_mut().get_mut(from..end).unwrap_or(&mut []).iter_mut().map(|f| release_one(f, dom)).sum();
        self.free += n;
        (end < self.slots.all().len()).then_some(end)
    }

    /// Takes one foreign reference to `mfn` for a grant mapping by another
    /// domain: the frame must be owned by `owner` (the granter, alive), and
    /// a `writable` mapping also takes a [`FrameType::Writable`] reference
    /// for the owner, so it fails with [`FrameError::TypeConflict`] on a page
    /// table. [`MAX_FOREIGN`] mappings are [`FrameError::CountOverflow`].
    /// Both references or neither: on error nothing changes.
    ///
    /// It does not bump the change counter (see *Remembered translations*
    /// in the module docs): the owner stays, and a remembered walk reads
    /// owners and page-table entries only, never counts or types.
    pub fn get_foreign_ref(&mut self, mfn: Mfn, owner: DomId, writable: bool) -> Result<(), FrameError> {
        let taken = self.slots.update_keeping_owner(mfn, |f| {
            if f.owner != Owner::Domain(owner) {
                return Err(FrameError::NotOwned(mfn));
            }
            if f.foreign == MAX_FOREIGN {
                return Err(FrameError::CountOverflow(mfn));
            }
            if writable {
                let _ = take_type_ref(f, mfn, FrameType::Writable)?;
            }
            f.foreign += 1;
            Ok(())
        });
        taken.unwrap_or(Err(FrameError::OutOfRange(mfn)))
    }

    /// Drops one foreign reference (and, for a `writable` mapping whose
    /// owner lives, its `Writable` type reference). The last one of an
    /// [`Owner::Orphan`] frees it. Dropping a reference nobody holds is a
    /// hypervisor bug: ignored (and asserted in debug builds), never a
    /// wrapped count.
    ///
    /// Like [`FrameTable::get_foreign_ref`] it bumps the change counter only
    /// if the owner changes (an orphan freed): no remembered walk ends in a
    /// frame its domain does not own, so counts and types are not theirs.
    pub fn put_foreign_ref(&mut self, mfn: Mfn, writable: bool) -> ForeignPut {
        let put = self.slots.update_keeping_owner(mfn, |f| {
            debug_assert!(f.foreign > 0, "foreign reference underflow on frame {mfn:#x}");
            if f.foreign == 0 {
                return ForeignPut::Kept;
            }
            f.foreign -= 1;
            match f.owner {
                Owner::Orphan if f.foreign == 0 => {
                    *f = FrameInfo::untyped(Owner::Free);
                    ForeignPut::Freed
                }
                Owner::Domain(_) if writable => {
                    let _ = drop_type_ref(f, mfn);
                    ForeignPut::Kept
                }
                _ => ForeignPut::Kept,
            }
        });
        match put {
            Some(ForeignPut::Freed) => {
                self.free += 1;
                ForeignPut::Freed
            }
            _ => ForeignPut::Kept,
        }
    }

    /// Number of frames `owner` holds.
    pub fn count_owned(&self, owner: Owner) -> usize {
        self.slots.all().iter().filter(|f| f.owner == owner).count()
    }
}

/// [`FrameTable::get_type_ref`] on the bookkeeping `f` of frame `mfn`
/// (its owner already checked); on error nothing changes.
fn take_type_ref(f: &mut FrameInfo, mfn: Mfn, ty: FrameType) -> Result<TypeRef, FrameError> {
    if f.type_count == 0 {
        f.ty = ty;
        f.type_count = 1;
        return Ok(TypeRef::First);
    }
    if f.ty != ty || f.partial != Partial::None {
        return Err(FrameError::TypeConflict { mfn, have: f.ty });
    }
    f.type_count = f.type_count.checked_add(1).ok_or(FrameError::CountOverflow(mfn))?;
    Ok(TypeRef::More)
}

/// [`FrameTable::put_type_ref`] on the bookkeeping `f` of frame `mfn`.
fn drop_type_ref(f: &mut FrameInfo, mfn: Mfn) -> Option<FrameType> {
    debug_assert!(f.type_count > 0, "type reference underflow on frame {mfn:#x}");
    debug_assert!(!(f.pinned && f.type_count == 1), "the pin's reference of frame {mfn:#x} dropped by put");
    debug_assert!(f.partial == Partial::None, "a reference to frame {mfn:#x}, part-way through a pin, dropped");
    if f.type_count == 0 || (f.pinned && f.type_count == 1) || f.partial != Partial::None {
        return None;
    }
    f.type_count -= 1;
    if f.type_count > 0 {
        return None;
    }
    let old = f.ty;
    f.ty = FrameType::None;
    Some(old)
}

/// Frees `f` if `dom` owns it and nothing maps it from outside (returns 1),
/// or makes it an orphan if grant mappings remain (returns 0).
fn release_one(f: &mut FrameInfo, dom: DomId) -> usize {
    if f.owner != Owner::Domain(dom) {
        return 0;
    }
    if f.foreign > 0 {
        *f = FrameInfo { foreign: f.foreign, ..FrameInfo::untyped(Owner::Orphan) };
        return 0;
    }
    *f = FrameInfo::untyped(Owner::Free);
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_frames_are_handed_over_or_freed_and_nothing_else_is() {
        let mut store = std::vec![FrameInfo::untyped(Owner::Reserved); 16];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 16);
        let a = t.alloc(Owner::Hypervisor).unwrap();
        let b = t.alloc(Owner::Hypervisor).unwrap();
        let mine = t.alloc(Owner::Domain(DomId::of(3))).unwrap();
        assert_eq!(t.free_count(), 13);
        bumps(&mut t, "hand over", |t| t.hand_over(a, Owner::Domain(DomId::of(4)))).unwrap();
        assert!(t.owned_by(a, DomId::of(4)));
        assert_eq!(t.hand_over(a, Owner::Domain(DomId::of(5))), Err(FrameError::NotOwned(a)), "not held any more");
        assert_eq!(t.hand_over(mine, Owner::Domain(DomId::of(5))), Err(FrameError::NotOwned(mine)));
        assert_eq!(t.free_held(mine), Err(FrameError::NotOwned(mine)));
        assert_eq!(t.free_held(99), Err(FrameError::OutOfRange(99)));
        bumps(&mut t, "free", |t| t.free_held(b)).unwrap();
        assert_eq!(t.free_count(), 14);
        assert_eq!(t.free_held(b), Err(FrameError::NotOwned(b)), "freed once");
    }

    /// Every frame's bookkeeping, for comparing before and after.
    fn snapshot(t: &FrameTable<'_>) -> std::vec::Vec<FrameInfo> {
        (0..t.len() as Mfn).map(|m| t.get(m).unwrap()).collect()
    }

    /// Runs `op` and checks the counter rule: if any frame changed, the
    /// epoch changed too.
    fn bumps<R>(t: &mut FrameTable<'_>, what: &str, op: impl FnOnce(&mut FrameTable<'_>) -> R) -> R {
        let (before, epoch) = (snapshot(t), t.epoch());
        let r = op(t);
        if snapshot(t) != before {
            assert_ne!(t.epoch(), epoch, "{what} changed a frame without bumping the epoch");
        }
        r
    }

    /// `op` changes no frame's owner, and leaves the epoch alone exactly
    /// when it changes no owner (it may change counts and types).
    fn keeps_owners<R>(t: &mut FrameTable<'_>, what: &str, op: impl FnOnce(&mut FrameTable<'_>) -> R) -> R {
        let owners = |t: &FrameTable<'_>| t.slots.all().iter().map(|f| f.owner).collect::<Vec<_>>();
        let (before, epoch) = (owners(t), t.epoch());
        let r = op(t);
        assert_eq!(owners(t), before, "{what} changed an owner");
        assert_eq!(t.epoch(), epoch, "{what} bumped the epoch though no owner changed");
        r
    }

    #[test]
    fn a_foreign_reference_keeps_remembered_walks_and_decides_as_before() {
        // Same answers as taking the references one by one (the general
        // way: `get_type_ref`, then the count), and the epoch is kept.
        let mut store = [FrameInfo::RESERVED; 16];
        let mut t = FrameTable::new(&mut store);
        let (a, b) = (DomId::of(3), DomId::of(4));
        t.add_free_range(0, 16);
        let data = t.alloc(Owner::Domain(a)).unwrap();
        let pt = t.alloc(Owner::Domain(a)).unwrap();
        let _ = t.get_type_ref(pt, a, FrameType::PageTable(1)).unwrap();
        let e = t.epoch();
        assert_eq!(t.get_foreign_ref(data, b, false), Err(FrameError::NotOwned(data)));
        assert_eq!(t.get_foreign_ref(99, a, false), Err(FrameError::OutOfRange(99)));
        assert_eq!(
            t.get_foreign_ref(pt, a, true),
            Err(FrameError::TypeConflict { mfn: pt, have: FrameType::PageTable(1) })
        );
        t.get_foreign_ref(data, a, true).unwrap();
        t.get_foreign_ref(data, a, true).unwrap();
        t.get_foreign_ref(pt, a, false).unwrap();
        assert_eq!(t.epoch(), e, "no owner changed");
        let f = t.get(data).unwrap();
        assert_eq!((f.ty, f.type_count, f.foreign), (FrameType::Writable, 2, 2));
        assert_eq!(t.get(pt).unwrap().foreign, 1);
        for _ in 2..MAX_FOREIGN {
            t.get_foreign_ref(data, a, false).unwrap();
        }
        let before = t.get(data).unwrap();
        assert_eq!(t.get_foreign_ref(data, a, true), Err(FrameError::CountOverflow(data)));
        assert_eq!(t.get(data).unwrap(), before, "on error nothing changes");
        // Dropping one keeps them too, unless it frees an orphan.
        let _ = keeps_owners(&mut t, "put_foreign_ref", |t| t.put_foreign_ref(data, true));
        assert_eq!(t.get(data).unwrap().type_count, 1);
        assert_eq!(t.epoch(), e);
    }

    /// Every change bumps, but a foreign reference's, which keeps every
    /// owner (`keeps_owners`).
    #[test]
    fn every_change_to_a_frame_bumps_the_epoch() {
        let mut store = [FrameInfo::RESERVED; 64];
        let mut t = FrameTable::new(&mut store);
        let (a, b) = (DomId::of(3), DomId::of(4));
        bumps(&mut t, "add_free_range", |t| t.add_free_range(0, 64));
        bumps(&mut t, "reserve_range", |t| t.reserve_range(60, 64));
        let m = bumps(&mut t, "alloc", |t| t.alloc(Owner::Domain(a))).unwrap();
        let pool = bumps(&mut t, "alloc_contiguous", |t| t.alloc_contiguous(Owner::Domain(a), 4)).unwrap();
        let pt = bumps(&mut t, "alloc", |t| t.alloc(Owner::Domain(a))).unwrap();
        let l1 = FrameType::PageTable(1);
        let _ = bumps(&mut t, "get_type_ref", |t| t.get_type_ref(m, a, FrameType::Writable)).unwrap();
        bumps(&mut t, "put_type_ref", |t| t.put_type_ref(m));
        let _ = bumps(&mut t, "get_type_ref", |t| t.get_type_ref(pt, a, l1)).unwrap();
        bumps(&mut t, "set_partial", |t| t.set_partial(pt, a, Partial::Validating { next: 3 })).unwrap();
        bumps(&mut t, "set_pinned", |t| t.set_pinned(pt, a)).unwrap();
        bumps(&mut t, "get_pinned_ref", |t| t.get_pinned_ref(pt, a, l1)).unwrap();
        bumps(&mut t, "put_type_ref", |t| t.put_type_ref(pt));
        bumps(&mut t, "unpin", |t| t.unpin(pt, a, 512)).unwrap();
        bumps(&mut t, "end_partial", |t| t.end_partial(pt, a)).unwrap();
        keeps_owners(&mut t, "get_foreign_ref", |t| t.get_foreign_ref(pool, a, true)).unwrap();
        bumps(&mut t, "release_domain_step", |t| t.release_domain_step(a, 0, 8));
        bumps(&mut t, "release_domain", |t| t.release_domain(a));
        let _ = bumps(&mut t, "put_foreign_ref", |t| t.put_foreign_ref(pool, true));
        let other = bumps(&mut t, "alloc", |t| t.alloc(Owner::Domain(b))).unwrap();
        bumps(&mut t, "release_domain", |t| t.release_domain(b));
        assert_eq!(t.get(other).unwrap().owner, Owner::Free);
        assert_eq!(t.get(pool).unwrap().owner, Owner::Free, "the orphan was freed by its last unmap");
    }

    #[test]
    fn release_in_steps_frees_exactly_the_domains_frames() {
        let mut store = [FrameInfo::RESERVED; 100];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 100);
        let mine: std::vec::Vec<Mfn> = (0..30).map(|_| t.alloc(Owner::Domain(DomId::of(3))).unwrap()).collect();
        let other = t.alloc(Owner::Domain(DomId::of(4))).unwrap();
        let free = t.free_count();
        let (mut at, mut steps) = (Some(0), 0);
        while let Some(from) = at {
            at = t.release_domain_step(DomId::of(3), from, 7);
            steps += 1;
        }
        assert_eq!(steps, 15, "100 entries in steps of 7");
        assert_eq!(t.free_count(), free + mine.len());
        assert_eq!(t.count_owned(Owner::Domain(DomId::of(3))), 0);
        assert_eq!(t.count_owned(Owner::Domain(DomId::of(4))), 1, "{other} is still the other domain's");
        assert_eq!(t.release_domain_step(DomId::of(3), 1000, 7), None, "a cursor past the end is done");
    }

    #[test]
    fn allocates_only_free_ram_and_accounts() {
        let mut store = [FrameInfo::RESERVED; 64];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(10, 20);
        t.reserve_range(12, 14);
        assert_eq!(t.free_count(), 8);
        let mut got = std::vec::Vec::new();
        while let Ok(m) = t.alloc(Owner::Domain(DomId::of(3))) {
            got.push(m);
        }
        assert_eq!(got, [10, 11, 14, 15, 16, 17, 18, 19]);
        assert_eq!(t.alloc(Owner::Domain(DomId::of(3))), Err(FrameError::Exhausted));
        assert!(t.owned_by(10, DomId::of(3)));
        assert!(!t.owned_by(10, DomId::of(4)));
        assert!(!t.owned_by(12, DomId::of(3)));
        assert_eq!(t.release_domain(DomId::of(3)), 8);
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
        assert!(!t.owned_by(u64::MAX, DomId::of(0)));
        assert_eq!(t.set_pinned(99, DomId::of(0)), Err(FrameError::OutOfRange(99)));
        assert_eq!(t.unpin(99, DomId::of(0), 512), Err(FrameError::OutOfRange(99)));
        assert_eq!(t.get_pinned_ref(99, DomId::of(0), FrameType::PageTable(1)), Err(FrameError::OutOfRange(99)));
    }

    #[test]
    fn type_references_need_ownership_and_one_type() {
        let mut store = [FrameInfo::RESERVED; 4];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 4);
        let m = t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        let pt = FrameType::PageTable(4);
        assert_eq!(t.get_type_ref(m, DomId::of(2), pt), Err(FrameError::NotOwned(m)));
        assert_eq!(t.get_type_ref(99, DomId::of(1), pt), Err(FrameError::OutOfRange(99)));
        assert_eq!(t.get_type_ref(m, DomId::of(1), pt), Ok(TypeRef::First));
        assert_eq!(t.get_type_ref(m, DomId::of(1), pt), Ok(TypeRef::More));
        let conflict = FrameError::TypeConflict { mfn: m, have: pt };
        assert_eq!(t.get_type_ref(m, DomId::of(1), FrameType::Writable), Err(conflict));
        assert_eq!(t.get_type_ref(m, DomId::of(1), FrameType::PageTable(3)), Err(conflict));
        assert_eq!(t.get(m).unwrap().type_count, 2);
        assert!(t.get(m).unwrap().is_page_table(4));
        assert_eq!(t.put_type_ref(m), None);
        assert_eq!(t.put_type_ref(m), Some(pt));
        assert_eq!(t.get(m).unwrap(), FrameInfo::untyped(Owner::Domain(DomId::of(1))));
        // Once the count is 0 the frame may take another type.
        assert_eq!(t.get_type_ref(m, DomId::of(1), FrameType::Writable), Ok(TypeRef::First));
        assert_eq!(t.put_type_ref(u64::MAX), None);
    }

    #[test]
    fn type_count_saturates_with_an_error() {
        let mut store = [FrameInfo::RESERVED; 1];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 1);
        let m = t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        store_count(&mut t, m, u32::MAX);
        assert_eq!(t.get_type_ref(m, DomId::of(1), FrameType::Writable), Err(FrameError::CountOverflow(m)));
        assert_eq!(t.get(m).unwrap().type_count, u32::MAX);
    }

    fn store_count(t: &mut FrameTable<'_>, m: Mfn, n: u32) {
        let f = t.slots.slot_mut(m).unwrap();
        f.ty = FrameType::Writable;
        f.type_count = n;
    }

    #[test]
    fn release_domain_clears_types_counts_and_pins() {
        let mut store = [FrameInfo::RESERVED; 8];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 8);
        let a = t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        let b = t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        let c = t.alloc(Owner::Domain(DomId::of(2))).unwrap();
        let _ = t.get_type_ref(a, DomId::of(1), FrameType::PageTable(1)).unwrap();
        t.set_pinned(a, DomId::of(1)).unwrap();
        let _ = t.get_type_ref(b, DomId::of(1), FrameType::Writable).unwrap();
        let _ = t.get_type_ref(c, DomId::of(2), FrameType::Writable).unwrap();
        assert_eq!(t.set_pinned(c, DomId::of(1)), Err(FrameError::NotOwned(c)));
        assert_eq!(t.release_domain(DomId::of(1)), 2);
        for m in [a, b] {
            assert_eq!(t.get(m).unwrap(), FrameInfo::untyped(Owner::Free));
        }
        // The other domain's frame keeps its type and count.
        assert_eq!(t.get(c).unwrap().type_count, 1);
        assert_eq!(t.free_count(), 7);
        // Reallocated frames come back untyped.
        let again = t.alloc(Owner::Domain(DomId::of(3))).unwrap();
        assert_eq!(t.get(again).unwrap(), FrameInfo::untyped(Owner::Domain(DomId::of(3))));
    }

    #[test]
    fn pinned_references_need_a_pinned_table_of_the_type() {
        let mut store = [FrameInfo::RESERVED; 4];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 4);
        let m = t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        let w = t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        let l1 = FrameType::PageTable(1);
        // Untyped, or a table nobody pinned: never a first reference.
        assert_eq!(t.get_pinned_ref(m, DomId::of(1), l1), Err(FrameError::NotPinned(m)));
        assert_eq!(t.get_type_ref(m, DomId::of(1), l1), Ok(TypeRef::First));
        assert_eq!(t.get_pinned_ref(m, DomId::of(1), l1), Err(FrameError::NotPinned(m)));
        // Pinning needs the type; then references count.
        assert_eq!(t.set_pinned(w, DomId::of(1)), Err(FrameError::NotPinned(w)));
        t.set_pinned(m, DomId::of(1)).unwrap();
        assert_eq!(t.get_pinned_ref(m, DomId::of(2), l1), Err(FrameError::NotOwned(m)));
        let conflict = FrameError::TypeConflict { mfn: m, have: l1 };
        assert_eq!(t.get_pinned_ref(m, DomId::of(1), FrameType::PageTable(2)), Err(conflict));
        assert_eq!(t.get_pinned_ref(m, DomId::of(1), l1), Ok(()));
        assert_eq!(t.get(m).unwrap().type_count, 2);
        // A writable frame is a conflict, not "not pinned".
        let _ = t.get_type_ref(w, DomId::of(1), FrameType::Writable).unwrap();
        let conflict = FrameError::TypeConflict { mfn: w, have: FrameType::Writable };
        assert_eq!(t.get_pinned_ref(w, DomId::of(1), l1), Err(conflict));
    }

    #[test]
    fn unpin_only_drops_a_pin_that_is_the_last_reference() {
        let mut store = [FrameInfo::RESERVED; 4];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 4);
        let m = t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        let l2 = FrameType::PageTable(2);
        assert_eq!(t.unpin(m, DomId::of(1), 512), Err(FrameError::NotPinned(m)));
        let _ = t.get_type_ref(m, DomId::of(1), l2).unwrap();
        t.set_pinned(m, DomId::of(1)).unwrap();
        t.get_pinned_ref(m, DomId::of(1), l2).unwrap();
        // Referenced: refused, nothing changes.
        let before = t.get(m).unwrap();
        assert_eq!(t.unpin(m, DomId::of(1), 512), Err(FrameError::Referenced { mfn: m, count: 2 }));
        assert_eq!(t.unpin(m, DomId::of(2), 512), Err(FrameError::NotOwned(m)));
        assert_eq!(t.get(m).unwrap(), before);
        // Dropping the other reference never ends a pinned table's type.
        assert_eq!(t.put_type_ref(m), None);
        assert_eq!((t.get(m).unwrap().ty, t.get(m).unwrap().type_count), (l2, 1));
        assert_eq!(t.unpin(m, DomId::of(1), 512), Ok(l2));
        // The unpin's reference holds the type, unusable, until it ends.
        let f = t.get(m).unwrap();
        assert_eq!((f.ty, f.type_count, f.pinned), (l2, 1, false));
        assert_eq!(f.partial, Partial::Devalidating { next: 512, failed: 0 });
        assert!(!f.is_page_table(2));
        assert_eq!(t.get_pinned_ref(m, DomId::of(1), l2), Err(FrameError::NotPinned(m)));
        assert_eq!(t.get_type_ref(m, DomId::of(1), l2), Err(FrameError::TypeConflict { mfn: m, have: l2 }));
        t.end_partial(m, DomId::of(1)).unwrap();
        assert_eq!(t.get(m).unwrap(), FrameInfo::untyped(Owner::Domain(DomId::of(1))));
        let msg = std::format!("{}", FrameError::Referenced { mfn: 7, count: 3 });
        assert!(msg.contains("2 references besides its pin"), "{msg}");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the pin's reference")]
    fn put_never_drops_the_pins_reference() {
        let mut store = [FrameInfo::RESERVED; 1];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 1);
        let m = t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        let _ = t.get_type_ref(m, DomId::of(1), FrameType::PageTable(1)).unwrap();
        t.set_pinned(m, DomId::of(1)).unwrap();
        let _ = t.put_type_ref(m);
    }
    #[test]
    fn foreign_refs_keep_a_dead_owners_frame_until_the_last_unmap() {
        let mut store = [FrameInfo::RESERVED; 8];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 8);
        let (a, b) = (DomId::of(1), DomId::of(2));
        let m = t.alloc(Owner::Domain(a)).unwrap();
        let other = t.alloc(Owner::Domain(a)).unwrap();
        assert_eq!(t.get_foreign_ref(m, b, false), Err(FrameError::NotOwned(m)), "only the owner grants");
        t.get_foreign_ref(m, a, true).unwrap();
        t.get_foreign_ref(m, a, false).unwrap();
        let f = t.get(m).unwrap();
        assert_eq!((f.foreign, f.ty, f.type_count), (2, FrameType::Writable, 1));
        let free = t.free_count();
        assert_eq!(t.release_domain(a), 1, "only the unmapped frame is freed");
        assert_eq!(t.get(other).unwrap().owner, Owner::Free);
        let f = t.get(m).unwrap();
        assert_eq!((f.owner, f.ty, f.type_count, f.foreign), (Owner::Orphan, FrameType::None, 0, 2));
        assert_eq!(t.free_count(), free + 1);
        // Nobody owns an orphan: it can be neither mapped anew nor typed.
        assert!(!t.owned_by(m, a));
        assert_eq!(t.get_foreign_ref(m, a, false), Err(FrameError::NotOwned(m)));
        assert_eq!(t.get_type_ref(m, a, FrameType::Writable), Err(FrameError::NotOwned(m)));
        // Allocation never hands it out while mapped.
        while t.alloc(Owner::Domain(DomId::of(3))).is_ok() {}
        assert_eq!(t.get(m).unwrap().owner, Owner::Orphan);
        // The writable mapping's type reference went with its owner.
        assert_eq!(t.put_foreign_ref(m, true), ForeignPut::Kept);
        assert_eq!(t.get(m).unwrap().type_count, 0);
        assert_eq!(t.put_foreign_ref(m, false), ForeignPut::Freed);
        assert_eq!(t.get(m).unwrap(), FrameInfo::untyped(Owner::Free));
        assert_eq!(t.free_count(), 1);
    }

    #[test]
    fn writable_foreign_refs_exclude_page_tables() {
        let mut store = [FrameInfo::RESERVED; 4];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 4);
        let a = DomId::of(1);
        let pt = t.alloc(Owner::Domain(a)).unwrap();
        let data = t.alloc(Owner::Domain(a)).unwrap();
        let _ = t.get_type_ref(pt, a, FrameType::PageTable(1)).unwrap();
        let conflict = FrameError::TypeConflict { mfn: pt, have: FrameType::PageTable(1) };
        assert_eq!(t.get_foreign_ref(pt, a, true), Err(conflict));
        assert_eq!(t.get(pt).unwrap().foreign, 0, "nothing changed");
        // Read-only: any owned frame, page tables included.
        t.get_foreign_ref(pt, a, false).unwrap();
        // A frame mapped writable by a grantee can become no page table.
        t.get_foreign_ref(data, a, true).unwrap();
        let conflict = FrameError::TypeConflict { mfn: data, have: FrameType::Writable };
        assert_eq!(t.get_type_ref(data, a, FrameType::PageTable(1)), Err(conflict));
        assert_eq!(t.put_foreign_ref(data, true), ForeignPut::Kept);
        assert_eq!(t.get(data).unwrap(), FrameInfo::untyped(Owner::Domain(a)));
        assert_eq!(t.get_type_ref(data, a, FrameType::PageTable(1)), Ok(TypeRef::First));
        assert_eq!(t.put_foreign_ref(99, false), ForeignPut::Kept);
    }

    #[test]
    fn foreign_count_saturates_with_an_error() {
        let mut store = [FrameInfo::RESERVED; 2];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 2);
        let a = DomId::of(1);
        let m = t.alloc(Owner::Domain(a)).unwrap();
        for _ in 0..MAX_FOREIGN {
            t.get_foreign_ref(m, a, false).unwrap();
        }
        assert_eq!(t.get_foreign_ref(m, a, true), Err(FrameError::CountOverflow(m)));
        let f = t.get(m).unwrap();
        assert_eq!((f.foreign, f.type_count), (MAX_FOREIGN, 0), "the writable reference was not taken either");
    }

    #[test]
    fn release_in_steps_orphans_mapped_frames() {
        let mut store = [FrameInfo::RESERVED; 10];
        let mut t = FrameTable::new(&mut store);
        t.add_free_range(0, 10);
        let a = DomId::of(1);
        let ms: std::vec::Vec<Mfn> = (0..10).map(|_| t.alloc(Owner::Domain(a)).unwrap()).collect();
        t.get_foreign_ref(ms[7], a, false).unwrap();
        let (mut at, mut freed) = (Some(0), 0);
        while let Some(from) = at {
            at = t.release_domain_step(a, from, 3);
            freed = t.free_count();
        }
        assert_eq!(freed, 9);
        assert_eq!(t.get(ms[7]).unwrap().owner, Owner::Orphan);
        assert_eq!(t.put_foreign_ref(ms[7], false), ForeignPut::Freed);
        assert_eq!(t.free_count(), 10);
    }
}
