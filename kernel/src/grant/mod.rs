//! Grant tables, version 1 (Xen's layout and numbering: see
//! [`pvguest_abi::grant`]): how one domain lets another map or copy one of
//! its frames.
//!
//! This module keeps the data model and the rules. The hypercall layer
//! decodes `grant_table_op` and calls [`Gnttab`]; the page-table side
//! ([`crate::mm`]) writes and clears the grantee's page-table entry for a
//! mapping. Both reach per-domain state through [`GrantDomains`].
//!
//! # Who owns what
//! - A domain's [`GrantTable`] names the frames that hold its table (up to
//!   its quota). They are the granting domain's own frames, given to it by
//!   [`Gnttab::setup_table`] and held [`FrameType::Writable`] in the frame
//!   table for the domain's life, like the shared-info page, so they can
//!   never become page tables; the domain maps them writable with
//!   `mmu_update`. The table also keeps, per reference in use, the
//!   hypervisor's own record of that use (its grantee, its frame and its
//!   pin counts), which lives in hypervisor memory, never in the guest's.
//! - A domain's [`Maptrack`] holds the mappings it made as a grantee:
//!   handle → [`Mapping`] (granter, reference, frame, access, where it is
//!   mapped, unmap notification).
//! - Each grant mapping holds a *foreign reference* on its frame (and a
//!   writable one also a `Writable` type reference, taken for the owner):
//!   see [`crate::mm::frames`], *Foreign mappings*. So a frame a grantee maps
//!   writable is no page table of its owner, and a mapped frame stays
//!   allocated, even after its owner dies, until the last unmap.
//!
//! # Who writes which field of a grant entry
//! - The granter writes all of `domid`, `frame` and `flags` (the type,
//!   `GTF_readonly`), whenever it likes: the hypervisor trusts none of it.
//! - The hypervisor writes only `GTF_reading` and `GTF_writing`, and only
//!   atomically: it sets them with a compare-exchange of the whole 8-byte
//!   entry against the copy it validated ([`PhysMem::cmpxchg_u64`]), and
//!   clears them with an atomic AND ([`PhysMem::fetch_and_u64`]). `reading`
//!   is set while the grant has any pin, `writing` while it has a writable
//!   one (as Xen).
//!
//! # Where validation happens
//! [`GrantTable::acquire`] is the one place where a grant reference, an
//! allegation, becomes a trusted frame. It reads the entry once, as one
//! 8-byte load into the hypervisor's own copy, and checks only the copy, in
//! this order: reference in range ([`GrantError::BadRef`]); type
//! `GTF_permit_access` ([`GrantError::NotGranted`]); `domid` is the grantee
//! ([`GrantError::NotGrantee`]); no write to a `GTF_readonly` grant
//! ([`GrantError::ReadOnly`]); the frame is the granter's
//! ([`GrantError::BadFrame`]); if the reference is already in use, the same
//! grantee and frame as the use recorded ([`GrantError::Changed`]). Then
//! it sets the in-use bits with a compare-exchange against exactly the
//! bytes it validated: if the granter changed any byte of the entry in
//! between, the exchange fails and the entry is read and validated again,
//! at most [`CAS_RETRIES`] times ([`GrantError::Unstable`], `GNTST_eagain`:
//! nothing changed, the caller may retry). So the hypervisor never acts on
//! a field it read twice (the XSA-155 class), and the bits are set on an
//! entry that, at that instant, granted exactly what was checked. Mapping
//! adds the checks of `mmu_update` on the frame: a writable mapping takes a
//! `Writable` reference for the owner, so a page table is never mapped
//! writable ([`GrantError::NotWritableFrame`]), and a read-only grant never
//! gives a writable mapping ([`Mapping::writable`] is false, and the
//! page-table side must map it without RW). Copies check both sides the
//! same way, and the destination frame, the caller's own or a grant's,
//! takes a `Writable` reference for the length of the copy, so no copy ever
//! writes a page table.
//!
//! # The state of a grant (granter `g`, reference `r`)
//! ```text
//!            g writes domid, frame; then flags = permit_access [| readonly]
//!   Invalid ─────────────────────────────────────────────────────────▶ Granted
//!      ▲                                                                │
//!      │ g: CAS flags → 0, which succeeds only                          │ map or copy by `domid`,
//!      │    without reading/writing                                     │ validated: pins 0 → 1,
//!      │                                                                ▼ bits set by CAS
//!   Granted ◀── last pin goes: bits cleared ─────────── In use (pins: read-only n, writable m)
//! ```
//! - *In use* means the hypervisor holds pins: one per mapping and one per
//!   copy under way, counted in [`GrantTable`], never in guest memory. More
//!   uses by the same grantee of the same frame add pins; `writing` is set
//!   while a writable pin exists.
//! - **A grant in use cannot be revoked.** The granter ends access with a
//!   compare-exchange that expects `reading`/`writing` clear (Xen's
//!   protocol): it fails while mapped, and the granter sees why. A granter
//!   that overwrites the entry anyway (a plain store) revokes nothing:
//!   existing mappings keep the recorded frame (the hypervisor never
//!   re-reads the entry for them), and every new use of the reference is
//!   refused, because the copy no longer grants it ([`GrantError::NotGranted`],
//!   [`GrantError::NotGrantee`]) or names another frame or grantee than the
//!   use in progress ([`GrantError::Changed`]), until the last pin goes. So
//!   an entry in use is never reused for anything else. [`GrantTable::in_use`]
//!   tells whether a reference has pins.
//! - **Death.** When a *grantee* dies, [`Gnttab::teardown_one`] tears down
//!   its mappings one per call (each releases its pins and frame references
//!   like an unmap, and gives its notification). When a *granter* dies, its
//!   table is retired ([`GrantTable::retire`]: the hypervisor no longer
//!   touches its frames), and the frame table turns its frames that are
//!   still mapped into orphans, freed by the last unmap
//!   ([`crate::mm::frames::Owner::Orphan`]). The grantees' later unmaps
//!   find no live table and release only the frame references.
//!   [`GrantTable::mapped_frames`] lists what a granter leaves mapped. A
//!   maptrack entry names its granter by [`DomId`] *and* by the identity
//!   of the table it pinned ([`GrantTable::id`], unique for the life of
//!   the hypervisor): ids are reused once the allocator has gone round
//!   ([`crate::domain::table`]), and a stale entry of a dead granter must
//!   never release a pin in its successor's table, so a release whose
//!   table is not the one it pinned touches no table at all.
//!
//! # Quotas
//! Every limit is explicit, and running into one is an error
//! (`GNTST_no_space`), never a silent loss:
//! - grant frames per domain: [`GrantTable::new`]'s quota, at most
//!   [`MAX_GRANT_FRAMES`] ([`GrantError::FrameQuota`]);
//! - maptrack entries per grantee: [`Maptrack::new`]'s quota, at most
//!   [`MAX_MAPTRACK`] ([`GrantError::MaptrackFull`]): [`DEFAULT_MAPTRACK`]
//!   for a domain, [`MAX_MAPTRACK`] for the privileged one, which maps a
//!   store page, a console page and device rings of every other domain;
//!   entries are allocated a chunk at a time as they are used;
//! - grant mappings of one frame: [`crate::mm::frames::MAX_FOREIGN`]
//!   ([`GrantError::FrameMapsFull`]);
//! - the hypervisor's heap and free frames ([`GrantError::OutOfMemory`]).
//!
//! # Unmap notification
//! A grantee may ask ([`Gnttab::set_unmap_notify`]) that when a mapping goes
//! away, by unmap or by its own death, a byte of the granted page be
//! cleared and an event be sent on one of its ports (Linux's gntdev offers
//! this to user space, e.g. for vchan). The byte is recorded as its offset
//! in the granted frame, which is the byte at that offset from the
//! mapping's address in the grantee: the hypervisor clears it through the
//! frame, so no page walk of a dying grantee is needed, and only in a
//! writable mapping. The event is the caller's to send ([`Unmapped::notify`]).
//!
//! # Bounds
//! Every operation does O(1) work: one entry read and at most
//! [`CAS_RETRIES`] compare-exchanges per grant, O(1) frame-table and
//! maptrack work, and a copy of at most one page in [`COPY_CHUNK`]-byte
//! steps. [`Gnttab::setup_table`] allocates and zeroes at most
//! [`MAX_GRANT_FRAMES`] frames; a grantee's teardown is one mapping per
//! [`Gnttab::teardown_one`]. Batches and their continuations are the
//! hypercall layer's.

use crate::domain::DomId;
use crate::mm::frames::{FrameError, FrameTable, FrameType, Mfn, Owner};
use crate::mm::guest_mem::PhysMem;
use crate::mm::paging::PAGE_SIZE;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_abi::grant::{self as abi, gntcopy, gntmap, gntst, gtf, GrantEntryV1, ENTRIES_PER_FRAME};

#[cfg(test)]
mod tests;

/// Largest grant-frame quota a domain can have (16 384 entries).
pub const MAX_GRANT_FRAMES: u32 = 32;
/// The grant-frame quota of a domain the manifest says nothing about
/// (2048 entries).
pub const DEFAULT_GRANT_FRAMES: u32 = 4;
/// Largest maptrack quota a grantee can have.
pub const MAX_MAPTRACK: u32 = 16_384;
/// The maptrack quota of a domain the manifest says nothing about.
pub const DEFAULT_MAPTRACK: u32 = 1024;
/// Compare-exchanges tried on an entry that the granter keeps changing
/// before [`GrantError::Unstable`].
pub const CAS_RETRIES: u32 = 4;
/// Bytes a copy moves per step through the hypervisor's stack.
pub const COPY_CHUNK: usize = 256;
/// Maptrack entries allocated at a time.
const MAPTRACK_CHUNK: u32 = 64;

/// Why a grant operation failed: one variant per rule, each with its
/// `GNTST_*` ([`GrantError::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// Unknown or inconsistent flags (`GNTMAP_*`, `GNTCOPY_*`, notify
    /// actions), or a notify offset outside the page.
    BadFlags,
    /// The domain id names no live domain, or one the operation may not
    /// name (a domain's own grant for a mapping).
    BadDomain,
    /// The reference is beyond the granter's table.
    BadRef,
    /// The entry does not grant access (`GTF_invalid`, transfer or
    /// transitive).
    NotGranted,
    /// The entry grants access to another domain.
    NotGrantee,
    /// A write (writable mapping, copy destination) through a read-only
    /// grant, or a byte to clear in a read-only mapping.
    ReadOnly,
    /// The frame is not the granter's (for a grant), or not the caller's
    /// (for a copy's own frame).
    BadFrame,
    /// A writable use of a frame that is a page table (or part-way through
    /// becoming one): refused as `mmu_update` refuses it.
    NotWritableFrame,
    /// The reference is in use, and its entry now names another grantee or
    /// frame than the use recorded: the granter rewrote an entry in use.
    Changed,
    /// The granter changed the entry during every one of [`CAS_RETRIES`]
    /// attempts; nothing was done.
    Unstable,
    /// The handle names no mapping of the caller.
    BadHandle,
    /// The unmap's `host_addr` does not match the mapping.
    BadVirtAddr,
    /// The unmap's `dev_bus_addr` does not match the mapping.
    BadDevAddr,
    /// A copy's offset and length leave the page.
    BadCopyArg,
    /// A copy names a frame (not a grant) of another domain.
    NotOwnFrame,
    /// The table would exceed its grant-frame quota.
    FrameQuota,
    /// The grantee's maptrack quota is used up.
    MaptrackFull,
    /// The frame has [`crate::mm::frames::MAX_FOREIGN`] grant mappings.
    FrameMapsFull,
    /// No hypervisor heap or free frame is left.
    OutOfMemory,
}

impl GrantError {
    /// The `GNTST_*` code the guest sees.
    pub const fn status(self) -> i16 {
        match self {
            GrantError::BadFlags => gntst::GENERAL_ERROR,
            GrantError::BadDomain => gntst::BAD_DOMAIN,
            GrantError::BadRef | GrantError::NotGranted | GrantError::Changed => gntst::BAD_GNTREF,
            GrantError::NotGrantee | GrantError::ReadOnly | GrantError::NotOwnFrame => gntst::PERMISSION_DENIED,
            GrantError::BadFrame | GrantError::NotWritableFrame => gntst::BAD_PAGE,
            GrantError::Unstable => gntst::EAGAIN,
            GrantError::BadHandle => gntst::BAD_HANDLE,
            GrantError::BadVirtAddr => gntst::BAD_VIRT_ADDR,
            GrantError::BadDevAddr => gntst::BAD_DEV_ADDR,
            GrantError::BadCopyArg => gntst::BAD_COPY_ARG,
            GrantError::FrameQuota | GrantError::MaptrackFull | GrantError::FrameMapsFull | GrantError::OutOfMemory => {
                gntst::NO_SPACE
            }
        }
    }
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrantError::BadFlags => "bad flags",
            GrantError::BadDomain => "no such domain, or not one this operation may name",
            GrantError::BadRef => "grant reference out of range",
            GrantError::NotGranted => "the entry grants no access",
            GrantError::NotGrantee => "the entry grants access to another domain",
            GrantError::ReadOnly => "the grant is read-only",
            GrantError::BadFrame => "the frame is not the owner's",
            GrantError::NotWritableFrame => "the frame is a page table and cannot be written",
            GrantError::Changed => "the entry was rewritten while in use",
            GrantError::Unstable => "the entry kept changing; try again",
            GrantError::BadHandle => "no such mapping handle",
            GrantError::BadVirtAddr => "host address does not match the mapping",
            GrantError::BadDevAddr => "device address does not match the mapping",
            GrantError::BadCopyArg => "copy crosses a page boundary",
            GrantError::NotOwnFrame => "copy names another domain's frame",
            GrantError::FrameQuota => "grant-frame quota exhausted",
            GrantError::MaptrackFull => "maptrack quota exhausted",
            GrantError::FrameMapsFull => "the frame has too many grant mappings",
            GrantError::OutOfMemory => "out of hypervisor memory",
        })
    }
}

/// The hypervisor's record of one reference in use (Xen's
/// `active_grant_entry`). All zero when unused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Active {
    /// The grantee of the use (raw id; meaningful while pinned).
    grantee: u16,
    /// The frame the use validated.
    mfn: u32,
    /// Pins for read-only use.
    readers: u32,
    /// Pins for writable use.
    writers: u32,
}

impl Active {
    fn pinned(&self) -> bool {
        self.readers != 0 || self.writers != 0
    }
}

/// A domain's grant table, as the granter (see the module docs).
#[derive(Debug)]
pub struct GrantTable {
    /// The frames holding the entries, in order.
    frames: heapless::Vec<Mfn, { MAX_GRANT_FRAMES as usize }>,
    /// Per frame of the table, the records of its entries.
    active: Vec<Box<[Active]>>,
    /// The quota of frames.
    max_frames: u32,
    /// The domain whose table this is (set by its first growth): every
    /// grant is validated against its frames.
    owner: Option<DomId>,
    /// The domain died: the table no longer touches its frames.
    retired: bool,
    /// This table's identity ([`GrantTable::id`]).
    id: u64,
}

/// The next [`GrantTable::id`]: 64 bits never wrap in practice (one table
/// per domain created).
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

impl GrantTable {
    /// An empty table with a quota of `max_frames` frames (clamped to
    /// [`MAX_GRANT_FRAMES`]).
    pub fn new(max_frames: u32) -> Self {
        GrantTable {
            frames: heapless::Vec::new(),
            active: Vec::new(),
            max_frames: max_frames.min(MAX_GRANT_FRAMES),
            owner: None,
            retired: false,
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// This table's identity: no two tables made in one run of the
    /// hypervisor share it, whatever domain ids they belong to. A mapping
    /// records it ([`Mapping::table`]) so that its release can tell its
    /// granter's table from a successor's under the same id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The frames of the table, in order (what `setup_table` reports).
    pub fn frames(&self) -> &[Mfn] {
        &self.frames
    }

    /// `(frames now, quota)`: what `query_size` reports.
    pub fn size(&self) -> (u32, u32) {
        (self.frames.len() as u32, self.max_frames)
    }

    /// Number of entries: references `0..nr_entries()` are in range.
    pub fn nr_entries(&self) -> u32 {
        self.frames.len() as u32 * ENTRIES_PER_FRAME
    }

    /// Whether `gref` is in use: mapped, or being copied (the hypervisor's
    /// pins, not the guest-visible bits).
    pub fn in_use(&self, gref: u32) -> bool {
        self.record(gref).is_some_and(|a| a.pinned())
    }

    /// The frames of references in use, once per reference: what a dying
    /// granter leaves mapped (the frame table keeps them as orphans).
    pub fn mapped_frames(&self) -> impl Iterator<Item = Mfn> + '_ {
        self.active.iter().flat_map(|b| b.iter()).filter(|a| a.pinned()).map(|a| Mfn::from(a.mfn))
    }

    /// The domain builder's grant for `dom` (Xen's reserved entries, e.g.
    /// [`pvguest_abi::grant::GNTTAB_RESERVED_XENSTORE`]): grows the table
    /// to its first frame and writes entry `gref` (below
    /// [`pvguest_abi::grant::NR_RESERVED_ENTRIES`]) granting `frame` to
    /// `grantee`, writable unless `readonly`. From then on the entry is the
    /// guest's like any other: the hypervisor validates it at each use, as
    /// it does every entry, and never reads it for anything else.
    pub fn builder_grant<M: PhysMem>(
        &mut self,
        dom: DomId,
        gref: u32,
        entry: GrantEntryV1,
        frames: &mut FrameTable<'_>,
        mem: &mut M,
    ) -> Result<(), GrantError> {
        if gref >= pvguest_abi::grant::NR_RESERVED_ENTRIES {
            return Err(GrantError::BadRef);
        }
        self.grow(dom, 1, frames, mem)?;
        let pa = self.entry_pa(gref).ok_or(GrantError::BadRef)?;
        mem.write_u64(pa, entry.to_word());
        Ok(())
    }

    /// The domain died: forget every record and frame, so that the
    /// hypervisor never touches the table's frames again (the frame table
    /// frees them with the domain's other frames). Later releases of its
    /// grants do nothing here; their frames' foreign references keep the
    /// frames alive. Returns how many references were in use.
    pub fn retire(&mut self) -> usize {
        let n = self.active.iter().flat_map(|b| b.iter()).filter(|a| a.pinned()).count();
        self.frames.clear();
        self.active = Vec::new();
        self.retired = true;
        n
    }

    /// Grows the table of `dom` to at least `nr_frames` frames, each
    /// allocated for `dom`, zeroed, and held `Writable`. All or nothing on
    /// the quota and on memory (checked before anything changes).
    fn grow<M: PhysMem>(
        &mut self,
        dom: DomId,
        nr_frames: u32,
        frames: &mut FrameTable<'_>,
        mem: &mut M,
    ) -> Result<(), GrantError> {
        if self.retired || self.owner.is_some_and(|o| o != dom) {
            return Err(GrantError::BadDomain);
        }
        if nr_frames > self.max_frames {
            return Err(GrantError::FrameQuota);
        }
        let have = self.frames.len();
        let need = (nr_frames as usize).saturating_sub(have);
        if need == 0 {
            return Ok(());
        }
        if frames.free_count() < need {
            return Err(GrantError::OutOfMemory);
        }
        let mut records: Vec<Box<[Active]>> = Vec::new();
        records.try_reserve_exact(need).map_err(|_| GrantError::OutOfMemory)?;
        self.active.try_reserve_exact(need).map_err(|_| GrantError::OutOfMemory)?;
        for _ in 0..need {
            let mut v = Vec::new();
            v.try_reserve_exact(ENTRIES_PER_FRAME as usize).map_err(|_| GrantError::OutOfMemory)?;
            v.resize(ENTRIES_PER_FRAME as usize, Active::default());
            records.push(v.into_boxed_slice());
        }
        self.owner = Some(dom);
        for rec in records {
            // Cannot fail: enough frames are free and the quota allows it.
            let mfn = frames.alloc(Owner::Domain(dom)).map_err(|_| GrantError::OutOfMemory)?;
            mem.zero_frame(mfn);
            // A fresh frame has no type: this is its first reference.
            let _ = frames.get_type_ref(mfn, dom, FrameType::Writable).map_err(|_| GrantError::OutOfMemory)?;
            let _ = self.frames.push(mfn);
            self.active.push(rec);
        }
        Ok(())
    }

    fn record(&self, gref: u32) -> Option<&Active> {
        self.active.get((gref / ENTRIES_PER_FRAME) as usize)?.get((gref % ENTRIES_PER_FRAME) as usize)
    }

    fn record_mut(&mut self, gref: u32) -> Option<&mut Active> {
        self.active.get_mut((gref / ENTRIES_PER_FRAME) as usize)?.get_mut((gref % ENTRIES_PER_FRAME) as usize)
    }

    /// Machine address of entry `gref`.
    fn entry_pa(&self, gref: u32) -> Option<u64> {
        let mfn = *self.frames.get((gref / ENTRIES_PER_FRAME) as usize)?;
        Some(mfn * PAGE_SIZE + u64::from(gref % ENTRIES_PER_FRAME) * 8)
    }

    /// Checks the hypervisor's copy of entry `gref` of `granter` for a use
    /// by `grantee` (see the module docs for the order) and returns the
    /// granted frame.
    fn validate(
        &self,
        e: GrantEntryV1,
        granter: DomId,
        grantee: DomId,
        gref: u32,
        write: bool,
        frames: &FrameTable<'_>,
    ) -> Result<Mfn, GrantError> {
        if e.flags & gtf::TYPE_MASK != gtf::PERMIT_ACCESS {
            return Err(GrantError::NotGranted);
        }
        if e.domid != grantee.raw() {
            return Err(GrantError::NotGrantee);
        }
        if write && e.flags & gtf::READONLY != 0 {
            return Err(GrantError::ReadOnly);
        }
        let mfn = Mfn::from(e.frame);
        if !frames.owned_by(mfn, granter) {
            return Err(GrantError::BadFrame);
        }
        match self.record(gref) {
            Some(a) if a.pinned() && (a.grantee != grantee.raw() || a.mfn != e.frame) => Err(GrantError::Changed),
            _ => Ok(mfn),
        }
    }

    /// Pins reference `gref` of this table for a use by `grantee`, `write` or read-only: the one validation of a
    /// grant reference (module docs, *Where validation happens*). On
    /// success the entry's in-use bits are set and the granted frame is
    /// returned; release the pin with [`GrantTable::release`] and the same
    /// `write`. On error nothing changed.
    pub fn acquire<M: PhysMem>(
        &mut self,
        grantee: DomId,
        gref: u32,
        write: bool,
        frames: &FrameTable<'_>,
        mem: &mut M,
    ) -> Result<Mfn, GrantError> {
        let granter = self.owner.ok_or(GrantError::BadRef)?;
        let pa = self.entry_pa(gref).ok_or(GrantError::BadRef)?;
        let set = u64::from(if write { gtf::READING | gtf::WRITING } else { gtf::READING });
        for _ in 0..CAS_RETRIES {
            // The one copy of the entry: a single 8-byte load.
            let word = mem.read_u64(pa);
            let mfn = self.validate(GrantEntryV1::from_word(word), granter, grantee, gref, write, frames)?;
            let a = self.record(gref).ok_or(GrantError::BadRef)?;
            if (write && a.writers == u32::MAX) || (!write && a.readers == u32::MAX) {
                return Err(GrantError::FrameMapsFull);
            }
            if mem.cmpxchg_u64(pa, word, word | set).is_err() {
                continue;
            }
            let a = self.record_mut(gref).ok_or(GrantError::BadRef)?;
            if !a.pinned() {
                *a = Active { grantee: grantee.raw(), mfn: mfn as u32, readers: 0, writers: 0 };
            }
            if write {
                a.writers += 1;
            } else {
                a.readers += 1;
            }
            return Ok(mfn);
        }
        Err(GrantError::Unstable)
    }

    /// Drops one pin that [`GrantTable::acquire`] took with the same
    /// `write`; the last writable pin clears `GTF_writing`, the last pin
    /// `GTF_reading`. A retired table, or a reference without such a pin,
    /// changes nothing.
    pub fn release<M: PhysMem>(&mut self, gref: u32, write: bool, mem: &mut M) {
        if self.retired {
            return;
        }
        let Some(pa) = self.entry_pa(gref) else { return };
        let Some(a) = self.record_mut(gref) else { return };
        let count = if write { &mut a.writers } else { &mut a.readers };
        debug_assert!(*count > 0, "grant {gref} released without a pin");
        if *count == 0 {
            return;
        }
        *count -= 1;
        let mut clear = 0;
        if write && a.writers == 0 {
            clear |= gtf::WRITING;
        }
        if !a.pinned() {
            clear |= gtf::READING;
            *a = Active::default();
        }
        if clear != 0 {
            let _ = mem.fetch_and_u64(pa, !u64::from(clear));
        }
    }
}

/// Where a mapping is in the grantee's address space (the page-table
/// side's business; recorded so that unmap can check and find it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMapping {
    /// A virtual address of the grantee, or with `contains_pte` the
    /// machine address of the level-1 entry.
    pub addr: u64,
    /// `GNTMAP_contains_pte`.
    pub contains_pte: bool,
    /// `GNTMAP_application_map`: ring 3 may use it (U bit).
    pub application: bool,
    /// The machine address of the level-1 entry the page-table side
    /// installed ([`Maptrack::set_host_pte`]; 0 until then): unmap clears
    /// that entry, not whatever `addr` leads to by then.
    pub pte: u64,
}

/// What to do when a mapping goes away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Clear the byte at this offset of the granted frame.
    pub clear_byte: Option<u16>,
    /// Send an event on this port of the grantee.
    pub port: Option<u32>,
}

/// One mapping of a grantee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The granter.
    pub granter: DomId,
    /// The [`GrantTable::id`] of the granter's table the mapping pinned.
    pub table: u64,
    /// The reference in the granter's table.
    pub gref: u32,
    /// The granted frame.
    pub mfn: Mfn,
    /// Mapped writable (never for a read-only grant).
    pub writable: bool,
    /// The CPU mapping, if `GNTMAP_host_map`.
    pub host: Option<HostMapping>,
    /// `GNTMAP_device_map`: the machine address was given for DMA.
    pub device: bool,
    /// The unmap notification.
    pub notify: UnmapNotify,
}

impl Mapping {
    /// The frame's machine address (`dev_bus_addr`).
    pub fn machine_addr(&self) -> u64 {
        self.mfn * PAGE_SIZE
    }
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Free { next: u32 },
    Used(Mapping),
}

const NO_SLOT: u32 = u32::MAX;

/// A domain's mappings as a grantee (Xen's maptrack): handle → [`Mapping`],
/// at most its quota, grown from the hypervisor heap in chunks.
#[derive(Debug)]
pub struct Maptrack {
    slots: Vec<Slot>,
    free_head: u32,
    used: u32,
    /// Where [`Maptrack::pop`] goes on scanning down from.
    scan: usize,
    quota: u32,
}

impl Maptrack {
    /// An empty maptrack with a quota of `quota` mappings (clamped to
    /// [`MAX_MAPTRACK`]).
    pub fn new(quota: u32) -> Self {
        Maptrack { slots: Vec::new(), free_head: NO_SLOT, used: 0, scan: usize::MAX, quota: quota.min(MAX_MAPTRACK) }
    }

    /// Mappings held.
    pub fn len(&self) -> u32 {
        self.used
    }

    /// Whether no mapping is held.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The quota.
    pub fn quota(&self) -> u32 {
        self.quota
    }

    /// The mapping of `handle`.
    pub fn get(&self, handle: u32) -> Result<&Mapping, GrantError> {
        match self.slots.get(handle as usize) {
            Some(Slot::Used(m)) => Ok(m),
            _ => Err(GrantError::BadHandle),
        }
    }

    /// Every mapping with its handle.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Mapping)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Used(m) => Some((i as u32, m)),
            Slot::Free { .. } => None,
        })
    }

    /// Checks an unmap request against the mapping of `handle` and returns
    /// a copy of it (nothing changes): the page-table side then removes the
    /// host mapping it names, before [`Gnttab::unmap`]. `host_addr` must be
    /// the mapping's (0 when it has no host mapping: unlike Xen, an unmap
    /// always removes the whole mapping); `dev_bus_addr` is 0 or the
    /// frame's machine address.
    pub fn check_unmap(&self, handle: u32, host_addr: u64, dev_bus_addr: u64) -> Result<Mapping, GrantError> {
        let m = *self.get(handle)?;
        if host_addr != m.host.map_or(0, |h| h.addr) {
            return Err(GrantError::BadVirtAddr);
        }
        if dev_bus_addr != 0 && dev_bus_addr != m.machine_addr() {
            return Err(GrantError::BadDevAddr);
        }
        Ok(m)
    }

    /// Records where the page-table side installed the host mapping of
    /// `handle`.
    pub fn set_host_pte(&mut self, handle: u32, pte: u64) -> Result<(), GrantError> {
        match self.slots.get_mut(handle as usize) {
            Some(Slot::Used(Mapping { host: Some(h), .. })) => {
                h.pte = pte;
                Ok(())
            }
            _ => Err(GrantError::BadHandle),
        }
    }

    /// Makes sure one more mapping fits: quota and heap.
    fn reserve(&mut self) -> Result<(), GrantError> {
        if self.free_head != NO_SLOT {
            return Ok(());
        }
        let len = self.slots.len() as u32;
        if len >= self.quota {
            return Err(GrantError::MaptrackFull);
        }
        let grow = MAPTRACK_CHUNK.min(self.quota - len);
        self.slots.try_reserve_exact(grow as usize).map_err(|_| GrantError::OutOfMemory)?;
        // The new slots form the free list, lowest first.
        for i in len..len + grow {
            self.slots.push(Slot::Free { next: if i + 1 < len + grow { i + 1 } else { NO_SLOT } });
        }
        self.free_head = len;
        Ok(())
    }

    /// Stores `m` and returns its handle.
    fn insert(&mut self, m: Mapping) -> Result<u32, GrantError> {
        self.reserve()?;
        let h = self.free_head;
        let Slot::Free { next } = self.slots[h as usize] else { return Err(GrantError::MaptrackFull) };
        self.free_head = next;
        self.slots[h as usize] = Slot::Used(m);
        self.used += 1;
        Ok(h)
    }

    /// Removes the mapping of `handle`.
    fn remove(&mut self, handle: u32) -> Result<Mapping, GrantError> {
        let m = *self.get(handle)?;
        self.slots[handle as usize] = Slot::Free { next: self.free_head };
        self.free_head = handle;
        self.used -= 1;
        Ok(m)
    }

    /// Removes some mapping, for teardown: the highest handle below the
    /// previous pop's, so a whole teardown scans the slots once (O(quota)
    /// in all, however it is split into steps); a mapping added meanwhile
    /// above the cursor is found by one more scan from the top.
    fn pop(&mut self) -> Option<Mapping> {
        if self.used == 0 {
            return None;
        }
        let below = self.scan.min(self.slots.len());
        let h = match self.slots[..below].iter().rposition(|s| matches!(s, Slot::Used(_))) {
            Some(h) => h,
            None => self.slots.iter().rposition(|s| matches!(s, Slot::Used(_)))?,
        };
        self.scan = h;
        self.remove(h as u32).ok()
    }
}

/// A decoded `GNTTABOP_map_grant_ref` element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// The granter.
    pub granter: DomId,
    /// Its reference.
    pub gref: u32,
    /// Writable wanted (no `GNTMAP_readonly`).
    pub writable: bool,
    /// `GNTMAP_host_map`: where.
    pub host: Option<HostMapping>,
    /// `GNTMAP_device_map`.
    pub device: bool,
}

impl MapRequest {
    /// Decodes `raw` from `caller`: known flags only, at least one of
    /// host and device map, `contains_pte`/`application_map` only with a
    /// host map (all [`GrantError::BadFlags`]); `DOMID_SELF` is the caller;
    /// an id that can name no domain is [`GrantError::BadDomain`].
    pub fn decode(raw: &abi::MapGrantRef, caller: DomId) -> Result<MapRequest, GrantError> {
        let f = raw.flags;
        let host = f & gntmap::HOST_MAP != 0;
        if f & !gntmap::ALL != 0
            || f & (gntmap::HOST_MAP | gntmap::DEVICE_MAP) == 0
            || (!host && f & (gntmap::CONTAINS_PTE | gntmap::APPLICATION_MAP) != 0)
        {
            return Err(GrantError::BadFlags);
        }
        Ok(MapRequest {
            granter: domain_arg(raw.dom, caller)?,
            gref: raw.gref,
            writable: f & gntmap::READONLY == 0,
            host: host.then_some(HostMapping {
                addr: raw.host_addr,
                contains_pte: f & gntmap::CONTAINS_PTE != 0,
                application: f & gntmap::APPLICATION_MAP != 0,
                pte: 0,
            }),
            device: f & gntmap::DEVICE_MAP != 0,
        })
    }
}

/// A domain id in a grant argument: `DOMID_SELF` is `caller`.
fn domain_arg(raw: u16, caller: DomId) -> Result<DomId, GrantError> {
    if u64::from(raw) == pvguest_abi::DOMID_SELF {
        return Ok(caller);
    }
    DomId::new(raw).ok_or(GrantError::BadDomain)
}

/// What a successful map gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// The handle (`handle` out field).
    pub handle: u32,
    /// The mapping as recorded.
    pub mapping: Mapping,
}

/// What an unmap or a teardown leaves for the caller to do.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmapped {
    /// The mapping that went.
    pub mapping: Mapping,
    /// Send an event on this port of the grantee (as if it did
    /// `EVTCHNOP_send`): the notification asked for. Its byte, if any, is
    /// already cleared.
    pub notify: Option<u32>,
    /// The frame was an orphan's last mapping and is free now.
    pub frame_freed: bool,
}

/// One side of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopySide {
    /// A grant of `granter`.
    Gref {
        /// The granter.
        granter: DomId,
        /// The reference.
        gref: u32,
        /// Byte offset in the frame.
        offset: u16,
    },
    /// A frame of the caller.
    Frame {
        /// The frame.
        mfn: Mfn,
        /// Byte offset in the frame.
        offset: u16,
    },
}

impl CopySide {
    fn offset(&self) -> u16 {
        match *self {
            CopySide::Gref { offset, .. } | CopySide::Frame { offset, .. } => offset,
        }
    }

    fn decode(p: &abi::CopyPtr, gref: bool, caller: DomId) -> Result<CopySide, GrantError> {
        if gref {
            return Ok(CopySide::Gref { granter: domain_arg(p.domid, caller)?, gref: p.gref(), offset: p.offset });
        }
        if domain_arg(p.domid, caller) != Ok(caller) {
            return Err(GrantError::NotOwnFrame);
        }
        Ok(CopySide::Frame { mfn: p.u, offset: p.offset })
    }
}

/// A decoded `GNTTABOP_copy` element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    /// Where to read.
    pub src: CopySide,
    /// Where to write.
    pub dst: CopySide,
    /// Bytes.
    pub len: u16,
}

impl CopyOp {
    /// Decodes `raw` from `caller`: known flags ([`GrantError::BadFlags`]);
    /// `offset + len` within the page on both sides
    /// ([`GrantError::BadCopyArg`]); a frame side names `DOMID_SELF` or the
    /// caller ([`GrantError::NotOwnFrame`]).
    pub fn decode(raw: &abi::GnttabCopy, caller: DomId) -> Result<CopyOp, GrantError> {
        if raw.flags & !gntcopy::ALL != 0 {
            return Err(GrantError::BadFlags);
        }
        let len = u64::from(raw.len);
        if u64::from(raw.source.offset) + len > PAGE_SIZE || u64::from(raw.dest.offset) + len > PAGE_SIZE {
            return Err(GrantError::BadCopyArg);
        }
        Ok(CopyOp {
            src: CopySide::decode(&raw.source, raw.flags & gntcopy::SOURCE_GREF != 0, caller)?,
            dst: CopySide::decode(&raw.dest, raw.flags & gntcopy::DEST_GREF != 0, caller)?,
            len: raw.len,
        })
    }
}

/// The machine addresses a validated copy moves between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    /// Source machine address.
    pub src: u64,
    /// Destination machine address.
    pub dst: u64,
    /// Bytes; neither range leaves its page.
    pub len: usize,
}

/// Copies `plan.len` bytes through [`PhysMem`], [`COPY_CHUNK`] at a time,
/// as `memmove` (overlap within one frame is copied correctly).
pub fn copy_bytes<M: PhysMem>(mem: &mut M, plan: CopyPlan) {
    let mut buf = [0u8; COPY_CHUNK];
    let chunks = plan.len.div_ceil(COPY_CHUNK);
    let backwards = plan.dst > plan.src && plan.dst < plan.src + plan.len as u64;
    for i in 0..chunks {
        let i = if backwards { chunks - 1 - i } else { i };
        let at = i * COPY_CHUNK;
        let n = COPY_CHUNK.min(plan.len - at);
        mem.read(plan.src + at as u64, &mut buf[..n]);
        mem.write(plan.dst + at as u64, &buf[..n]);
    }
}

/// Per-domain grant state, reached by domain id (the hypercall layer
/// implements it over the domain table). `table` and `maptrack` borrow
/// one domain's state at a time, so granter and grantee may be the same
/// domain there; `table_and_maptrack` borrows two distinct ones.
pub trait GrantDomains {
    /// The grant table of the live domain `dom`.
    fn table(&mut self, dom: DomId) -> Option<&mut GrantTable>;
    /// The maptrack of the live domain `dom`.
    fn maptrack(&mut self, dom: DomId) -> Option<&mut Maptrack>;
    /// The grant table of the live domain `granter` and the maptrack of
    /// the live domain `grantee`, at once (one look-up of each, for a
    /// map); `None` if either is not alive or they are the same domain.
    fn table_and_maptrack(&mut self, granter: DomId, grantee: DomId) -> Option<(&mut GrantTable, &mut Maptrack)>;
}

/// The grant operations over the domains, the frame table and machine
/// memory. Short-lived: build one per hypercall, like [`crate::mm::Mm`].
pub struct Gnttab<'a, 'f, D: GrantDomains + ?Sized, M: PhysMem> {
    /// Per-domain grant state.
    pub doms: &'a mut D,
    /// Ownership and types of frames.
    pub frames: &'a mut FrameTable<'f>,
    /// Machine memory.
    pub mem: &'a mut M,
}

impl<'a, 'f, D: GrantDomains + ?Sized, M: PhysMem> Gnttab<'a, 'f, D, M> {
    /// Bundles the state a grant operation needs.
    pub fn new(doms: &'a mut D, frames: &'a mut FrameTable<'f>, mem: &'a mut M) -> Self {
        Gnttab { doms, frames, mem }
    }

    /// `GNTTABOP_setup_table` for `dom` (already resolved from
    /// `DOMID_SELF`; acting for another domain is the privileged domain's,
    /// which the caller checks): grows its table to at least `nr_frames`
    /// frames and returns the first `nr_frames` frame numbers, which the
    /// caller writes to `frame_list`.
    pub fn setup_table(
        &mut self,
        dom: DomId,
        nr_frames: u32,
    ) -> Result<heapless::Vec<Mfn, { MAX_GRANT_FRAMES as usize }>, GrantError> {
        let t = self.doms.table(dom).ok_or(GrantError::BadDomain)?;
        t.grow(dom, nr_frames, self.frames, self.mem)?;
        Ok(t.frames().iter().take(nr_frames as usize).copied().collect())
    }

    /// `GNTTABOP_query_size` for `dom`: `(nr_frames, max_nr_frames)`.
    pub fn query_size(&mut self, dom: DomId) -> Result<(u32, u32), GrantError> {
        Ok(self.doms.table(dom).ok_or(GrantError::BadDomain)?.size())
    }

    /// One `GNTTABOP_map_grant_ref` element of `grantee` (the caller):
    /// validates and pins the grant, takes the frame's foreign reference
    /// (and `Writable` for a writable mapping) and records the mapping.
    /// The caller then installs the host mapping (if [`Mapping::host`])
    /// through the page-table side, writable only if [`Mapping::writable`];
    /// if that fails, it undoes this with [`Gnttab::cancel_map`]. A domain
    /// maps its own frames with `mmu_update`, not through its own grants
    /// ([`GrantError::BadDomain`]). On error nothing changed.
    pub fn map(&mut self, grantee: DomId, req: &MapRequest) -> Result<Mapped, GrantError> {
        if req.granter == grantee {
            return Err(GrantError::BadDomain);
        }
        let Some((table, mt)) = self.doms.table_and_maptrack(req.granter, grantee) else {
            // The errors in the order of the checks: the grantee's
            // maptrack (missing, or full), then the granter.
            self.doms.maptrack(grantee).ok_or(GrantError::BadDomain)?.reserve()?;
            return Err(GrantError::BadDomain);
        };
        mt.reserve()?;
        let mfn = table.acquire(grantee, req.gref, req.writable, self.frames, self.mem)?;
        if let Err(e) = self.frames.get_foreign_ref(mfn, req.granter, req.writable) {
            table.release(req.gref, req.writable, self.mem);
            return Err(match e {
                FrameError::TypeConflict { .. } => GrantError::NotWritableFrame,
                FrameError::CountOverflow(_) => GrantError::FrameMapsFull,
                _ => GrantError::BadFrame,
            });
        }
        let mapping = Mapping {
            granter: req.granter,
            table: table.id(),
            gref: req.gref,
            mfn,
            writable: req.writable,
            host: req.host,
            device: req.device,
            notify: UnmapNotify::default(),
        };
        // Cannot fail: a slot was reserved above, and nothing since could
        // take it; undo all the same if it ever did.
        match mt.insert(mapping) {
            Ok(handle) => Ok(Mapped { handle, mapping }),
            Err(e) => {
                let _ = self.release(mapping);
                Err(e)
            }
        }
    }

    /// Undoes a [`Gnttab::map`] whose host mapping the page-table side
    /// could not install: as [`Gnttab::unmap`], without notification.
    pub fn cancel_map(&mut self, grantee: DomId, handle: u32) -> Result<(), GrantError> {
        let mt = self.doms.maptrack(grantee).ok_or(GrantError::BadDomain)?;
        let mut m = mt.remove(handle)?;
        m.notify = UnmapNotify::default();
        let _ = self.release(m);
        Ok(())
    }

    /// One `GNTTABOP_unmap_grant_ref` element of `grantee`, after
    /// [`Maptrack::check_unmap`] accepted it and the page-table side removed
    /// the host mapping *and flushed the TLB*: releases the pins and the
    /// frame's references (which may free an orphan or let its owner reuse
    /// it, so no stale translation may survive) and the handle, clears the
    /// notification byte and returns the event to send.
    pub fn unmap(&mut self, grantee: DomId, handle: u32) -> Result<Unmapped, GrantError> {
        let m = self.doms.maptrack(grantee).ok_or(GrantError::BadDomain)?.remove(handle)?;
        Ok(self.release(m))
    }

    /// Ringfence's `GNTTABOP_set_unmap_notify` for a mapping of `grantee`:
    /// `action` is [`pvguest_abi::grant::notify`] bits (0 cancels); a byte
    /// to clear must lie in the page ([`GrantError::BadFlags`]) of a
    /// writable mapping ([`GrantError::ReadOnly`]). The port is the
    /// grantee's, checked when the event is sent (a closed port sends
    /// nothing).
    pub fn set_unmap_notify(
        &mut self,
        grantee: DomId,
        handle: u32,
        action: u16,
        offset: u16,
        port: u32,
    ) -> Result<(), GrantError> {
        use pvguest_abi::grant::notify;
        let mt = self.doms.maptrack(grantee).ok_or(GrantError::BadDomain)?;
        let m = *mt.get(handle)?;
        if action & !(notify::CLEAR_BYTE | notify::SEND_EVENT) != 0 {
            return Err(GrantError::BadFlags);
        }
        let clear = action & notify::CLEAR_BYTE != 0;
        if clear && u64::from(offset) >= PAGE_SIZE {
            return Err(GrantError::BadFlags);
        }
        if clear && !m.writable {
            return Err(GrantError::ReadOnly);
        }
        let n = UnmapNotify {
            clear_byte: clear.then_some(offset),
            port: (action & notify::SEND_EVENT != 0).then_some(port),
        };
        if let Some(Slot::Used(m)) = mt.slots.get_mut(handle as usize) {
            m.notify = n;
        }
        Ok(())
    }

    /// One `GNTTABOP_copy` element of `caller`: validates and pins both
    /// sides (a grant like [`GrantTable::acquire`], read for the source and
    /// write for the destination; an own frame must be the caller's), holds
    /// a `Writable` reference on the destination frame for the copy (no page
    /// table is ever written), copies, and releases everything. Returns
    /// what was copied. On error nothing was copied and nothing is held.
    pub fn copy(&mut self, caller: DomId, op: &CopyOp) -> Result<CopyPlan, GrantError> {
        let (src, _) = self.acquire_side(caller, &op.src, false)?;
        let (dst, dst_owner) = match self.acquire_side(caller, &op.dst, true) {
            Ok(d) => d,
            Err(e) => {
                self.release_side(&op.src, false);
                return Err(e);
            }
        };
        if self.frames.get_type_ref(dst, dst_owner, FrameType::Writable).is_err() {
            self.release_side(&op.dst, true);
            self.release_side(&op.src, false);
            return Err(GrantError::NotWritableFrame);
        }
        let plan = CopyPlan {
            src: src * PAGE_SIZE + u64::from(op.src.offset()),
            dst: dst * PAGE_SIZE + u64::from(op.dst.offset()),
            len: usize::from(op.len),
        };
        copy_bytes(self.mem, plan);
        let _ = self.frames.put_type_ref(dst);
        self.release_side(&op.dst, true);
        self.release_side(&op.src, false);
        Ok(plan)
    }

    /// Tears down one mapping of the dead grantee `dead` (releases it as
    /// an unmap does, notification included) and returns it, or `None` when
    /// none is left. Call it until `None` (a bounded number per teardown
    /// step), before the grantee's event channels are closed, so that its
    /// notifications can still be sent. Its page tables are freed with its
    /// frames, so the page-table side need not clear the entries one by
    /// one, but no CPU may still run on them (today: the domain never runs
    /// again once dead, and every entry to a guest reloads CR3).
    pub fn teardown_one(&mut self, dead: DomId) -> Option<Unmapped> {
        let m = self.doms.maptrack(dead)?.pop()?;
        Some(self.release(m))
    }

    /// Releases what a mapping held: the notification byte (while the
    /// frame is surely alive), the granter's pin (if the granter lives),
    /// the frame's references.
    fn release(&mut self, m: Mapping) -> Unmapped {
        if let (Some(off), true) = (m.notify.clear_byte, m.writable) {
            self.mem.write(m.machine_addr() + u64::from(off), &[0]);
        }
        // Only the table the mapping pinned: a successor under the same
        // domain id has its own pins.
        if let Some(t) = self.doms.table(m.granter).filter(|t| t.id() == m.table) {
            t.release(m.gref, m.writable, self.mem);
        }
        let freed = self.frames.put_foreign_ref(m.mfn, m.writable);
        Unmapped { mapping: m, notify: m.notify.port, frame_freed: freed == crate::mm::frames::ForeignPut::Freed }
    }

    /// Pins one side of a copy and returns its frame and the frame's owner.
    fn acquire_side(&mut self, caller: DomId, side: &CopySide, write: bool) -> Result<(Mfn, DomId), GrantError> {
        match *side {
            CopySide::Gref { granter, gref, .. } => {
                let t = self.doms.table(granter).ok_or(GrantError::BadDomain)?;
                Ok((t.acquire(caller, gref, write, self.frames, self.mem)?, granter))
            }
            CopySide::Frame { mfn, .. } if self.frames.owned_by(mfn, caller) => Ok((mfn, caller)),
            CopySide::Frame { .. } => Err(GrantError::BadFrame),
        }
    }

    fn release_side(&mut self, side: &CopySide, write: bool) {
        if let CopySide::Gref { granter, gref, .. } = *side {
            if let Some(t) = self.doms.table(granter) {
                t.release(gref, write, self.mem);
            }
        }
    }
}
