//! Direct paging with validation: the guest's page tables, Xen style.
//!
//! A guest builds and edits its own page tables in frames it owns. The CPU
//! walks them directly, so the hypervisor keeps them safe by one discipline:
//! page-table frames are never writable to the guest, and every change to a
//! page table goes through this module, which validates it first. The hypercall
//! layer decodes `mmu_update`, `mmuext_op` and `update_va_mapping` and calls
//! [`Mm`]; the domain builder validates and pins the initial tables through
//! [`Mm`] too, so the type counts are consistent from the first instruction a
//! guest runs.
//!
//! # Who owns what
//! - [`crate::mm::frames`] keeps every frame's owner, type, type count and pin
//!   flag. This module is the only code that takes or drops type references.
//! - Page-table *contents* live in guest frames and are read and written only
//!   through [`PhysMem`]; the hypervisor writes a page-table frame only to
//!   install a validated entry ([`Mm::mmu_update`]) or slot 511 of an L4 it
//!   validates (rule 3). It never writes a frame the domain does not own.
//! - The hypervisor entry area's PML4 entry (`entry_area_pml4e`) is passed in
//!   by the caller; its frames belong to the hypervisor and are never counted.
//! - The caller keeps each vCPU's active root (`Domain::root`) and passes it
//!   in; while it names a frame, that frame holds one `PageTable(4)` reference
//!   (taken by [`Mm::install_initial_root`] or [`Mm::new_baseptr`]), and it is
//!   always a pinned L4 (rule 7).
//!
//! # Terms
//! A *validated* table is a frame of type `PageTable(n)` with a type count
//! above 0; by rule 7 that is exactly a *pinned* frame. Only validated tables
//! are ever reachable by the CPU (the active root is validated, and every
//! present upper entry of a validated table points at a validated table), so
//! only their entries matter; a frame with count 0 holds arbitrary bytes.
//!
//! # Validation rules
//! Each applies to every *present* entry (P=1) of every validated table, on
//! every path: validating a table (pin, and the builder's pins of the initial
//! tables), `mmu_update`, batched or single, and `update_va_mapping`.
//! Non-present entries hold no reference; only rule 8 constrains them.
//!
//! 1. **Strict hierarchy.** A present entry of a level-N table (N ≥ 2) points
//!    to a frame the domain owns that is already a validated, pinned table of
//!    level N-1; it takes one more reference to it, and nothing is validated
//!    on the way (rule 7). So there are no recursive or linear self-maps (a
//!    table under validation has its own level, never N-1), and no table
//!    serves at two levels.
//!    Refused bits, at every level: PS (bit 7; PAT at level 1, which the
//!    hypervisor does not program, so it is refused there too, as Xen does)
//!    and bits 52..=62 (software-available bits and protection keys, neither
//!    of which the guest gets). Refused in levels 2..4: G (bit 8; MBZ in a
//!    PML4E on AMD, meaningless elsewhere). Bits 9..=11 (available to
//!    software) and the address bits are free; the address must name an owned
//!    frame (rule 4), which also bounds it by MAXPHYADDR.
//! 2. **Leaves.** A present level-1 entry points to a frame the domain owns.
//!    If it is writable (RW=1) the frame takes type `Writable`, so it can be no
//!    page table. A read-only level-1 entry may map any owned frame, page
//!    tables included (guests read their own tables), and takes no type
//!    reference: only the ownership check applies.
//! 3. **Slot 511 is the hypervisor's.** In every validated L4, slot
//!    [`ENTRY_AREA_SLOT`] equals `entry_area_pml4e`. When an L4 is validated
//!    the hypervisor writes that value into slot 511 itself, whatever the
//!    guest left there (as Xen fills its own L4 slots); it is never checked or
//!    counted as a guest entry. `mmu_update` of slot 511 is refused
//!    (`EPERM`), even with the same value, and `update_va_mapping` cannot name
//!    an address there.
//! 4. **Only owned frames.** A frame that the domain does not own (another
//!    domain's, the hypervisor's, free, reserved or MMIO, or beyond machine
//!    memory) is refused with `EPERM`, whether it is the target of an entry,
//!    the table an `mmu_update` writes into, or the frame of a pin or new
//!    root.
//! 5. **Page table or writable, never both.** A frame with writable mappings
//!    (type `Writable`, count > 0) cannot become a page table, a page table
//!    cannot be mapped writable, and a page table of one level cannot be used
//!    at another: all `EBUSY`. A frame changes type only when its type count
//!    is back at 0 (for a table: it was unpinned and no entry or root refers
//!    to it; it is then devalidated, releasing what its own entries held, and
//!    nothing more: rule 7).
//! 6. **U/S, NX, G, cache bits** (PWT, PCD) and A/D are the guest's business
//!    and are installed as given. Guest kernels run in ring 1, which the
//!    paging hardware treats as supervisor: a guest kernel protects itself
//!    from its applications only by mapping its own pages with U=0. G has no
//!    effect because the hypervisor runs with CR4.PGE clear; if it ever sets
//!    PGE it must refuse G in guest entries or flush global entries on every
//!    domain switch.
//! 7. **Bounded work: at most one table per operation.** The hypervisor runs
//!    page-table operations with interrupts off, so no guest may make the
//!    cost of one operation grow with the size of its page tables. (When
//!    validation recursed, a 1 MiB guest linking and unlinking a tree of
//!    tables 512 times in one `mmu_update` batch held the CPU for ~2.9 s
//!    under QEMU TCG, and more with more memory: Xen's XSA-45.) Three rules:
//!    - (a) *Validation never recurses.* A present entry of a level-N table
//!      (N ≥ 2), whether met while validating the table or written by one
//!      `mmu_update`, must point at a table that is already validated and
//!      pinned at level N-1; it takes one more reference to it
//!      ([`FrameTable::get_pinned_ref`], never a first reference). A frame
//!      with no type, or a table nobody pinned, is refused with `EINVAL`
//!      ("pin lower-level tables first"); another type is `EBUSY` (rule 5).
//!      Level-1 entries are as in rule 2 (a writable leaf takes a `Writable`
//!      reference, which has no contents to validate).
//!    - (b) *A table is first validated only by the operation that names it:*
//!      `MMUEXT_PIN_Ln_TABLE` ([`Mm::pin_table`]), which the builder also uses
//!      for the initial tables, bottom-up. `MMUEXT_NEW_BASEPTR` accepts only
//!      an L4 that is already pinned (`EINVAL` otherwise; Linux PV pins its
//!      L4s before loading them) and validates nothing.
//!    - (c) *Only an unreferenced table can be unpinned.*
//!      `MMUEXT_UNPIN_TABLE` succeeds only when the pin is the table's last
//!      reference (type count 1); a table that entries of other tables or an
//!      active root still hold is `EBUSY` ("still referenced"), and unpin
//!      devalidates exactly that one table.
//!
//!    What follows, by induction over operations from the builder's state
//!    (every initial table pinned):
//!    - (i) *A frame has a page-table type exactly while it is pinned, or
//!      part-way through a pin or an unpin (v).* The type is given only by
//!      a pin (b); (a) and `new_baseptr` only add references to pinned
//!      tables; the pin's reference is dropped only by unpin, only when it
//!      is the last (c), which ends pin and type together once the table's
//!      entries have given their references back
//!      ([`FrameTable::put_type_ref`] never drops a pinned frame's last
//!      reference, nor the reference of a table part-way).
//!    - (ii) *The active root is a pinned L4*: `new_baseptr` takes only those,
//!      and the root reference makes unpinning it `EBUSY`. Switching away
//!      from a root therefore never ends its type.
//!    - (iii) *Devalidation never cascades.* Only unpin ends a table's type,
//!      and then nothing else references it (c). Devalidating it drops one
//!      reference from each table its entries name, each of which is pinned
//!      (i) and so keeps its type, and from each frame it maps writable,
//!      which has no contents. Every other dropped reference (an entry
//!      overwritten, a root switched away from) leaves a pinned table pinned.
//!    - (iv) *The bound.* Every operation reads or writes at most the 512
//!      entries of one table, each with O(1) frame-table work, plus O(1)
//!      more: `mmu_update` reads 1 entry and writes 1 (2 frame-table
//!      updates); `update_va_mapping` adds a 3-entry walk; a pin reads at
//!      most 512 entries, re-reads at most 511 to give back their
//!      references if one fails, and writes slot 511 of an L4; an unpin
//!      reads at most 512; `new_baseptr` reads none. So one operation
//!      touches at most 2 × 512 entries. A batch is bounded by its caller
//!      ([`pvguest_abi::mmu::MAX_BATCH`] operations per hypercall), and the
//!      domain builder's bottom-up pins of the initial tables are the
//!      hypervisor's own work, bounded by the domain's size at build time.
//!    - (v) *Pins and unpins are preemptible.* One table is still up to
//!      1023 entry reads (a pin that fails at its last entry), tens of
//!      thousands of instructions, too long to hold the CPU with a warped
//!      domain's deadline due (Xen's `PGT_partial`). Through
//!      [`Mm::mmuext_op`] on a [`Mm::preemptible`] validator, a pin or unpin
//!      asks every [`STEP_ENTRIES`] entries whether to stop; if so it
//!      records how far it got on the frame ([`Partial`]) and returns
//!      [`ExtOutcome::Again`], and the same operation issued again goes on
//!      from there. A table part-way holds exactly one reference (its
//!      operation's, taken at the start and kept), plus the references of
//!      its entries below the recorded point; it is not pinned and no
//!      validated table: it cannot be linked (`EINVAL`), written by
//!      `mmu_update` (`EINVAL`), loaded as a root (`EINVAL`), mapped
//!      writable (`EBUSY`) or pinned at another level (`EBUSY`), and its
//!      contents cannot change (it has no writable mapping). A pin that
//!      fails gives its references back the same way, in steps, and
//!      returns its error once they are all back; an unpin of a table
//!      part-way through its pin abandons the pin (its references are given
//!      back, and the unpin succeeds); a pin of a table part-way through an
//!      unpin first finishes the unpin, then is refused (`EBUSY`). Each call
//!      makes progress (no question before its first [`STEP_ENTRIES`]
//!      entries), so an operation issued again and again ends. A domain
//!      that never goes on leaves only its own frame typed until it dies
//!      (teardown resets every frame it owns).
//!
//! 8. **Non-present entries carry no frame address (L1TF).** On CPUs with
//!    the L1 terminal fault, a non-present entry's address bits still feed
//!    speculative loads, so a guest could read any physical memory that is
//!    in the L1 cache (Xen's XSA-273). A non-present entry must have bits
//!    12..=51 clear (`EINVAL` otherwise); its other bits remain the guest's
//!    (for instance to mark swapped-out pages).
//!
//! 9. **Device memory (dom0 only).** A present level-1 entry may name a
//!    machine frame beyond the frame table (an *MMIO entry*) only when the
//!    validator was made with dom0's [`DeviceMemory`] right
//!    ([`Mm::with_device_memory`]; the hypercall layer attaches it for the
//!    privileged domain only, [`crate::pci::Dom0Mmio`]). Without it the
//!    frame is not owned: `EPERM` (rule 4), which is what every domU gets.
//!    With it:
//!    - the entry must be uncached: PCD and PWT both set, which selects UC
//!      with the power-on PAT (the hypervisor does not program the PAT,
//!      and the PAT bit stays refused, rule 1); else `EINVAL`;
//!    - [`DeviceMemory::get`] decides (for dom0: [`crate::pci::Pci`]'s
//!      record: only frames of BARs of functions it was given that decode
//!      memory, never RAM, the hypervisor, the IOAPIC or the local APIC,
//!      and MSI-X table and PBA frames read-only only; else `EPERM`) and
//!      counts the mapping, read-only or writable; every path that drops
//!      the entry (overwritten by `mmu_update` or `update_va_mapping`, or
//!      its table devalidated by an unpin) calls [`DeviceMemory::put`]
//!      exactly once;
//!    - the frame takes no frame-table type or reference (it has none), so
//!      it can never be a page table: a pin, an upper-level entry or a root
//!      naming it is `EPERM` (rule 4), as before.
//!
//!    Xen's dom0 does the same with plain `mmu_update` and
//!    `update_va_mapping` (its `iomem` permission; `DOMID_IO` ownership is
//!    for I/O frames inside the frame table, which Ringfence has none of:
//!    every frame the frame table covers is RAM or the hypervisor's, and
//!    the PCI policy keeps BARs off all of it).
//!
//! # Grant mappings (foreign entries)
//! A present level-1 entry of a domain's validated table may map a frame
//! the domain does not own only as a grant mapping, which
//! [`Mm::map_foreign`] installs after the grant layer ([`crate::grant`])
//! took the frame's foreign reference (and its `Writable` reference, for a
//! writable mapping). Such an entry holds no reference of this module's,
//! and nothing but the grant layer may remove it:
//! - `mmu_update` and `update_va_mapping` refuse to change it (`EBUSY`:
//!   unmap it with `GNTTABOP_unmap_grant_ref`);
//! - devalidating a table (its unpin) leaves it alone and drops nothing
//!   for it: the table is then unreachable (an unpin needs the table's
//!   last reference), and re-pinning it refuses the entry (rule 4);
//! - [`Mm::unmap_foreign`] clears it by its machine address, recorded at
//!   map time (a virtual address could lead through other tables once the
//!   guest switched roots), before the grant layer drops the references
//!   (the TLB is flushed on the way back to the guest). An entry that is no
//!   longer in a validated table, or no longer maps the frame, is
//!   unreachable already: nothing to clear;
//! - validation refuses them (rule 4), so only [`Mm::map_foreign`] makes
//!   them, and only over a non-present entry (nothing is dropped).
//!
//! # Errors (Xen-like errno)
//! Xen answers most of these with `EINVAL`; Ringfence keeps Xen's numbers but
//! separates "not yours" (`EPERM`) and "in use as another type" (`EBUSY`) from
//! "malformed" (`EINVAL`), so that guests and tests can tell them apart.
//!
//! | failure | errno |
//! |---|---|
//! | frame not owned by the domain, out of range; slot 511 | `EPERM` |
//! | type conflict (rule 5, wrong level) | `EBUSY` |
//! | `mmu_update` command (`ptr & 3`) other than `MMU_NORMAL_PT_UPDATE` | `ENOSYS` |
//! | unpin of a table that entries or an active root still reference (rule 7c) | `EBUSY` |
//! | refused bits (rule 1); `ptr` not 8-aligned; `ptr` not in a validated table; level not 1..=4; pin of a frame already pinned at that level, unpin of an unpinned one; `va` not a guest address or not mapped by an L1; a bad current root | `EINVAL` |
//! | a level-2..4 entry, or a new root, naming a frame that is not yet a pinned table (no type yet, or never pinned: pin lower-level tables first, rule 7a/b) | `EINVAL` |
//! | unknown `mmuext_op` command | `ENOSYS` |
//!
//! Every operation either succeeds completely or changes nothing (memory and
//! frame table): a table that fails validation part-way gives back the
//! references it took, in reverse. The one exception is a preemptible pin
//! or unpin that stops part-way (rule 7 (v)): its progress is recorded on
//! its frame, and issuing it again finishes it (or, for a failing pin,
//! finishes giving back and then fails).
//!
//! # TLB
//! Flushing is the caller's: `TLB_FLUSH_LOCAL` and `INVLPG_LOCAL` come back
//! from [`Mm::mmuext_op`] as an [`ExtOutcome`] to act on, and the caller
//! applies `update_va_mapping`'s [`pvguest_abi::mmu::uvmf`] flags. Safety
//! does not depend on the guest asking: a reference dropped here (a writable
//! mapping removed, say) must not survive in the TLB once the frame can take
//! another type. Today every exit to a guest reloads CR3 (the entry path
//! switches to the hypervisor's tables and back) and PGE is off, which
//! flushes the whole TLB on every hypercall. A fast path that returns without
//! a CR3 reload, or PCIDs, must flush after any operation that dropped a
//! reference.
//!
//! # Bounds
//! Rule 7: one operation validates or devalidates at most one table, so it
//! touches at most 2 × 512 entries and O(512) frame-table slots, whatever
//! the size of the domain, and a preemptible pin or unpin stops every
//! [`STEP_ENTRIES`] entries when other work is due (rule 7 (v)). Batches
//! are the hypercall layer's: it bounds them
//! ([`pvguest_abi::mmu::MAX_BATCH`]; shorter inside a `multicall`) and
//! stops a batch between operations, or inside a pin or unpin, when other
//! work is due (a continuation), so the longest the hypervisor runs
//! page-table work without a preemption point is [`STEP_ENTRIES`] entries
//! or one `mmu_update` request. (Measured under QEMU TCG `-icount
//! shift=0`: a full read-only L1 pinned in one go took ~26 000
//! instructions, and delayed a warped domain's wake-up by as much; the
//! 512-request link/unlink storm that took ~2.9 s with recursive
//! validation, ~0.1 ms.)
//! Type counts are `u32`; a frame's references are bounded by the domain's
//! entries, far below 2^32 for the 1 GiB the frame table covers.
//!
//! # Not yet
//! Ownership of a domain's frames does not change while it lives, so read-only
//! mappings need no reference. Balloon or transfer operations must first add
//! a general reference count (Xen's `count_info`) so that a mapped frame can
//! never leave the domain; grant mappings must add foreign references, and
//! then a dying domain must drop its mappings before its frames are freed.

pub mod frames;
pub mod guest_mem;
pub mod paging;

use crate::mm::frames::{DomId, FrameError, FrameTable, FrameType, Mfn, Partial, TypeRef};
use crate::mm::guest_mem::PhysMem;
use crate::mm::paging::{table_index, Pte, ENTRIES, PAGE_SIZE};
use pvguest_abi::mmu::{ext, MmuUpdate, MmuextOp, MMU_NORMAL_PT_UPDATE};
use pvguest_abi::{layout, Errno};

/// The L4 slot that maps the hypervisor's entry area (rule 3).
pub const ENTRY_AREA_SLOT: usize = layout::ENTRY_AREA_PML4_SLOT;

/// Bits refused in every present entry (rule 1): PS/PAT (7) and 52..=62.
pub const REFUSED_BITS: u64 = 0x7ff0_0000_0000_0000 | (1 << 7);

/// Bits additionally refused in present entries of levels 2..=4: G (8).
pub const REFUSED_UPPER_BITS: u64 = 1 << 8;

/// Entries a preemptible pin or unpin validates or devalidates before it
/// asks whether to stop (rule 7 (v)): about 30 instructions each under
/// QEMU `-icount shift=0`, so a unit is a few thousand instructions.
pub const STEP_ENTRIES: u32 = 32;

/// How far a preemptible operation got.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// It is complete.
    Done,
    /// It stopped part-way because other work is due; its progress is
    /// recorded on the frame ([`Partial`]). Issue the same operation again
    /// to go on.
    Again,
}

/// A decoded `mmuext_op` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmuExtOp {
    /// Validate `mfn` as a table of `level` and pin it.
    Pin {
        /// The table.
        mfn: Mfn,
        /// Its level, 1..=4.
        level: u8,
    },
    /// Drop the pin of `mfn`.
    Unpin {
        /// The table.
        mfn: Mfn,
    },
    /// Make `mfn` the vCPU's root.
    NewBaseptr {
        /// An L4.
        mfn: Mfn,
    },
    /// Flush the TLB.
    TlbFlushLocal,
    /// Invalidate one guest address.
    InvlpgLocal {
        /// The address.
        va: u64,
    },
}

impl MmuExtOp {
    /// Decodes one request; unknown commands are `ENOSYS`. `arg2` and the
    /// padding are unused by these commands and ignored.
    pub fn decode(req: &MmuextOp) -> Result<MmuExtOp, Errno> {
        let arg1 = req.arg1;
        Ok(match req.cmd {
            ext::PIN_L1_TABLE..=ext::PIN_L4_TABLE => MmuExtOp::Pin { mfn: arg1, level: req.cmd as u8 + 1 },
            ext::UNPIN_TABLE => MmuExtOp::Unpin { mfn: arg1 },
            ext::NEW_BASEPTR => MmuExtOp::NewBaseptr { mfn: arg1 },
            ext::TLB_FLUSH_LOCAL => MmuExtOp::TlbFlushLocal,
            ext::INVLPG_LOCAL => MmuExtOp::InvlpgLocal { va: arg1 },
            _ => return Err(Errno::ENOSYS),
        })
    }
}

/// A grant mapping to install ([`Mm::map_foreign`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Foreign {
    /// The foreign frame (its references are the grant layer's).
    pub mfn: Mfn,
    /// Writable (only for a writable grant).
    pub writable: bool,
    /// User-accessible (`GNTMAP_application_map`).
    pub user: bool,
}

/// The right to map device memory (rule 9): dom0's is
/// [`crate::pci::Dom0Mmio`].
pub trait DeviceMemory {
    /// Whether `mfn` (beyond the frame table) may be mapped, writable or
    /// not; on `Ok` one mapping is counted.
    fn get(&mut self, mfn: Mfn, writable: bool) -> Result<(), Errno>;
    /// One mapping of `mfn` taken by [`DeviceMemory::get`] is gone.
    fn put(&mut self, mfn: Mfn);
}

/// What the caller must do after a successful [`Mm::mmuext_op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtOutcome {
    /// Nothing more.
    Done,
    /// The root changed: load this CR3 value (the caller's `root` already
    /// names the new L4).
    LoadCr3(u64),
    /// Flush the TLB.
    FlushTlb,
    /// Invalidate the TLB entry of this address.
    Invlpg(u64),
    /// A pin or unpin stopped part-way because other work is due (rule 7
    /// (v)): issue the same operation again to go on.
    Again,
}

/// The page-table validator over machine memory and the frame table.
///
/// Short-lived: build one per hypercall (or per build) from the hypervisor's
/// state; it holds no state of its own beyond the preemption check.
pub struct Mm<'a, 'f, M: PhysMem> {
    mem: &'a mut M,
    frames: &'a mut FrameTable<'f>,
    entry_area_pml4e: u64,
    /// Asked every [`STEP_ENTRIES`] entries of a pin or unpin: stop now?
    /// (`None`: never stop, as for the builder.)
    preempt: Option<&'a mut dyn FnMut() -> bool>,
    /// Entries done since the last question.
    work: u32,
    /// The right to map device memory (rule 9), dom0's only.
    io: Option<&'a mut dyn DeviceMemory>,
}

fn errno(e: FrameError) -> Errno {
    match e {
        FrameError::OutOfRange(_) | FrameError::NotOwned(_) => Errno::EPERM,
        FrameError::TypeConflict { .. } | FrameError::CountOverflow(_) | FrameError::Referenced { .. } => Errno::EBUSY,
        FrameError::NotPinned(_) => Errno::EINVAL,
        FrameError::Exhausted => Errno::ENOMEM,
    }
}

/// Whether slot `i` of a level-`level` table holds a guest entry.
const fn guest_slot(level: u8, i: usize) -> bool {
    !(level == 4 && i == ENTRY_AREA_SLOT)
}

/// Rule 1's bit checks for a present entry at `level`.
fn check_bits(level: u8, val: u64) -> Result<(), Errno> {
    let refused = if level > 1 { REFUSED_BITS | REFUSED_UPPER_BITS } else { REFUSED_BITS };
    if val & refused != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl<'a, 'f, M: PhysMem> Mm<'a, 'f, M> {
    /// A validator over `mem` and `frames`; `entry_area_pml4e` is the value
    /// every validated L4 carries in slot 511 (rule 3).
    pub fn new(mem: &'a mut M, frames: &'a mut FrameTable<'f>, entry_area_pml4e: u64) -> Self {
        // It may write page-table entries: forget remembered translations.
        frames.note_change();
        Self::keeping_walks(mem, frames, entry_area_pml4e)
    }

    /// A validator that leaves the change counter alone: only for
    /// [`Mm::map_foreign_keeping_walks`] and
    /// [`Mm::unmap_foreign_keeping_walks`], which no remembered walk can
    /// observe.
    fn keeping_walks(mem: &'a mut M, frames: &'a mut FrameTable<'f>, entry_area_pml4e: u64) -> Self {
        Mm { mem, frames, entry_area_pml4e, preempt: None, work: 0, io: None }
    }

    /// The same validator, which lets the domain map device memory as
    /// `io` allows (rule 9). Only the privileged domain's validators get
    /// one, and they must always have it, so that every MMIO entry dropped
    /// is given back.
    pub fn with_device_memory(mut self, io: &'a mut dyn DeviceMemory) -> Self {
        self.io = Some(io);
        self
    }

    /// The same validator, whose pins and unpins stop part-way when
    /// `preempt` says so (asked every [`STEP_ENTRIES`] entries, never
    /// before the first [`STEP_ENTRIES`] of an operation, so each call makes
    /// progress): [`Mm::mmuext_op`] then returns [`ExtOutcome::Again`].
    pub fn preemptible(mut self, preempt: &'a mut dyn FnMut() -> bool) -> Self {
        self.preempt = Some(preempt);
        self
    }

    /// One `mmu_update` request: `ptr`'s low 2 bits are the command, and
    /// only [`MMU_NORMAL_PT_UPDATE`] exists (others are `ENOSYS`). It writes
    /// `val` into the entry at machine address `ptr`, which must be 8-aligned
    /// and lie in a validated page table that `dom` owns. `val` is validated for
    /// that table's level (rules 1-5 and 7a), its reference taken, the entry written
    /// and the old entry's reference dropped, in that order, so rewriting an
    /// entry with its own value is a no-op.
    pub fn mmu_update(&mut self, dom: DomId, ptr: u64, val: u64) -> Result<(), Errno> {
        if ptr & 3 != MMU_NORMAL_PT_UPDATE {
            return Err(Errno::ENOSYS);
        }
        if ptr & 7 != 0 {
            return Err(Errno::EINVAL);
        }
        let mfn = ptr / PAGE_SIZE;
        if !self.frames.owned_by(mfn, dom) {
            return Err(Errno::EPERM);
        }
        let level = match self.frames.get(mfn).map_err(errno)? {
            f if f.type_count > 0 && f.partial == Partial::None => match f.ty {
                FrameType::PageTable(l) => l,
                _ => return Err(Errno::EINVAL),
            },
            _ => return Err(Errno::EINVAL),
        };
        self.update_entry(dom, level, ptr, val)
    }

    /// Applies `reqs` in order with [`Mm::mmu_update`] and stops at the first
    /// failure. Returns how many succeeded and the result: `(reqs.len(),
    /// Ok(()))` or `(done, Err(e))` where request `done` failed and changed
    /// nothing. Requests that name the same entry see each other's effects
    /// exactly as if issued one by one. The hypercall layer, which reads
    /// requests from guest memory, may loop over [`Mm::mmu_update`] itself:
    /// the semantics are the same. Bounding a batch
    /// ([`pvguest_abi::mmu::MAX_BATCH`]) is the caller's.
    pub fn mmu_update_batch(&mut self, dom: DomId, reqs: &[MmuUpdate]) -> (usize, Result<(), Errno>) {
        for (i, r) in reqs.iter().enumerate() {
            if let Err(e) = self.mmu_update(dom, r.ptr, r.val) {
                return (i, Err(e));
            }
        }
        (reqs.len(), Ok(()))
    }

    /// `MMUEXT_PIN_Ln_TABLE`: validates `mfn` as a table of `level` and
    /// pins it, which holds one reference until [`Mm::unpin_table`]. This is
    /// the only way a table gets its type (rule 7b): every table it points
    /// at must already be pinned (rule 7a), so it validates this one table
    /// and nothing else. Pinning a frame already pinned at this level is
    /// `EINVAL`, as in Xen; a frame of another type or level is `EBUSY`.
    /// Runs to the end whatever the preemption check says (the builder's
    /// pins); [`Mm::mmuext_op`] is the preemptible form.
    pub fn pin_table(&mut self, dom: DomId, mfn: Mfn, level: u8) -> Result<(), Errno> {
        while self.pin_step(dom, mfn, level)? == Step::Again {}
        Ok(())
    }

    /// `MMUEXT_UNPIN_TABLE`: drops the pin of `mfn` and devalidates it. Only
    /// a pin that is the table's last reference can go (rule 7c): a table
    /// that entries of other tables or an active root still hold is
    /// `EBUSY`, and unpinning an unpinned frame is `EINVAL`. The tables its
    /// entries name are pinned, so they only lose one reference each: no
    /// devalidation cascades. Runs to the end, like [`Mm::pin_table`].
    pub fn unpin_table(&mut self, dom: DomId, mfn: Mfn) -> Result<(), Errno> {
        while self.unpin_step(dom, mfn)? == Step::Again {}
        Ok(())
    }

    /// One call of a pin (rule 7 (v)): starts it, or goes on with one that
    /// stopped part-way. A pin that fails gives back the references it took
    /// (itself in steps) and reports its error once they are all back.
    pub fn pin_step(&mut self, dom: DomId, mfn: Mfn, level: u8) -> Result<Step, Errno> {
        self.work = 0;
        if !(1..=4).contains(&level) {
            return Err(Errno::EINVAL);
        }
        let info = self.owned(dom, mfn)?;
        let FrameType::PageTable(have) = info.ty else {
            return self.start_pin(dom, mfn, level, info);
        };
        match info.partial {
            Partial::None => self.start_pin(dom, mfn, level, info),
            Partial::Validating { .. } if have != level => Err(errno(FrameError::TypeConflict { mfn, have: info.ty })),
            Partial::Validating { next } => self.validate(dom, mfn, level, u32::from(next)),
            // Someone's references are being given back: finish that first.
            Partial::Devalidating { next, failed } => {
                let failed = Partial::failure(failed);
                match self.devalidate(dom, mfn, have, u32::from(next), failed)? {
                    Step::Again => Ok(Step::Again),
                    Step::Done => Err(failed.unwrap_or(Errno::EBUSY)),
                }
            }
        }
    }

    /// A pin of a frame no pin or unpin is under way on.
    fn start_pin(
        &mut self,
        dom: DomId,
        mfn: Mfn,
        level: u8,
        info: crate::mm::frames::FrameInfo,
    ) -> Result<Step, Errno> {
        // A frame in use as another type (or a table of another level) is
        // a type conflict before it is a double pin, as in Xen.
        if info.type_count > 0 && info.ty != FrameType::PageTable(level) {
            return Err(errno(FrameError::TypeConflict { mfn, have: info.ty }));
        }
        if info.pinned {
            return Err(Errno::EINVAL);
        }
        match self.frames.get_type_ref(mfn, dom, FrameType::PageTable(level)).map_err(errno)? {
            TypeRef::First => self.validate(dom, mfn, level, 0),
            // A table that is typed but neither pinned nor part-way does
            // not exist (rule 7 (i)).
            TypeRef::More => {
                debug_assert!(false, "rule 7: frame {mfn:#x} is a table but not pinned");
                let _ = self.frames.put_type_ref(mfn);
                Err(Errno::EBUSY)
            }
        }
    }

    /// One call of an unpin (rule 7 (v)): starts it, or goes on with one
    /// that stopped part-way. Unpinning a table part-way through its pin
    /// abandons the pin (its references are given back).
    pub fn unpin_step(&mut self, dom: DomId, mfn: Mfn) -> Result<Step, Errno> {
        self.work = 0;
        let info = self.owned(dom, mfn)?;
        match (info.ty, info.partial) {
            (FrameType::PageTable(level), Partial::Validating { next }) => {
                self.devalidate(dom, mfn, level, u32::from(next), None)
            }
            (FrameType::PageTable(level), Partial::Devalidating { next, failed }) => {
                self.devalidate(dom, mfn, level, u32::from(next), Partial::failure(failed))
            }
            _ => match self.frames.unpin(mfn, dom, ENTRIES as u16).map_err(errno)? {
                FrameType::PageTable(level) => self.devalidate(dom, mfn, level, ENTRIES as u32, None),
                other => {
                    debug_assert!(false, "pinned frame {mfn:#x} was {other:?}");
                    Err(Errno::EINVAL)
                }
            },
        }
    }

    /// `MMUEXT_NEW_BASEPTR`: makes the pinned L4 `mfn` the vCPU's root. The
    /// L4 must already be pinned (rule 7b: `EINVAL` for a frame with no type
    /// or a table nobody pinned, `EBUSY` for another type), so nothing is
    /// validated. `current_root` must name the vCPU's current root (which
    /// holds a root reference); on success it names `mfn`, the old root's
    /// reference is dropped (it stays pinned, so nothing is devalidated) and
    /// the CR3 value to load is returned. Setting the current root again is
    /// allowed.
    pub fn new_baseptr(&mut self, dom: DomId, current_root: &mut Mfn, mfn: Mfn) -> Result<u64, Errno> {
        self.owned(dom, mfn)?;
        if !self.is_table(dom, *current_root, 4) {
            return Err(Errno::EINVAL);
        }
        self.frames.get_pinned_ref(mfn, dom, FrameType::PageTable(4)).map_err(errno)?;
        let old = core::mem::replace(current_root, mfn);
        self.put_table_ref(old);
        Ok(mfn * PAGE_SIZE)
    }

    /// For a vCPU that has no root yet (the domain builder): validates `mfn`
    /// as an L4, pins it and takes the active-root reference, so it ends with
    /// type count 2. The tables its entries name must already be pinned
    /// (the builder pins the initial tables bottom-up first). Returns the CR3
    /// value. On error nothing changed.
    pub fn install_initial_root(&mut self, dom: DomId, mfn: Mfn) -> Result<u64, Errno> {
        self.preempt = None;
        self.pin_table(dom, mfn, 4)?;
        // The pin holds a reference, so this only counts and cannot fail:
        // the type is PageTable(4), the count 1 and the frame pinned.
        if let Err(e) = self.frames.get_pinned_ref(mfn, dom, FrameType::PageTable(4)) {
            self.unpin_table(dom, mfn)?;
            return Err(errno(e));
        }
        Ok(mfn * PAGE_SIZE)
    }

    /// `update_va_mapping`: replaces the level-1 entry that maps `va` in the
    /// tables rooted at `root` (the vCPU's current root) with `val`, with the
    /// same validation as [`Mm::mmu_update`]. `va` must be a guest address
    /// (canonical, outside the entry area) whose L4, L3 and L2 entries are
    /// present. Flushing (`UVMF_*`) is the caller's.
    pub fn update_va_mapping(&mut self, dom: DomId, root: Mfn, va: u64, val: u64) -> Result<(), Errno> {
        let at = self.l1_entry_of(dom, root, va)?;
        self.update_entry(dom, 1, at, val)
    }

    /// Runs one decoded `mmuext_op` for a vCPU whose root is `current_root`.
    /// A pin or unpin on a preemptible validator may stop part-way
    /// ([`ExtOutcome::Again`]).
    pub fn mmuext_op(&mut self, dom: DomId, current_root: &mut Mfn, op: MmuExtOp) -> Result<ExtOutcome, Errno> {
        let step = |s: Step| match s {
            Step::Done => ExtOutcome::Done,
            Step::Again => ExtOutcome::Again,
        };
        match op {
            MmuExtOp::Pin { mfn, level } => self.pin_step(dom, mfn, level).map(step),
            MmuExtOp::Unpin { mfn } => self.unpin_step(dom, mfn).map(step),
            MmuExtOp::NewBaseptr { mfn } => self.new_baseptr(dom, current_root, mfn).map(ExtOutcome::LoadCr3),
            MmuExtOp::TlbFlushLocal => Ok(ExtOutcome::FlushTlb),
            MmuExtOp::InvlpgLocal { va } if layout::is_guest_va(va) => Ok(ExtOutcome::Invlpg(va)),
            MmuExtOp::InvlpgLocal { .. } => Err(Errno::EINVAL),
        }
    }

    /// The frame table (read-only), for callers that inspect types.
    pub fn frames(&self) -> &FrameTable<'f> {
        self.frames
    }

    // ---- internals ----

    /// The bookkeeping of a frame `dom` owns, or `EPERM`.
    fn owned(&self, dom: DomId, mfn: Mfn) -> Result<crate::mm::frames::FrameInfo, Errno> {
        if !self.frames.owned_by(mfn, dom) {
            return Err(Errno::EPERM);
        }
        self.frames.get(mfn).map_err(errno)
    }

    /// Whether `mfn` is a validated table of `level` owned by `dom`.
    fn is_table(&self, dom: DomId, mfn: Mfn, level: u8) -> bool {
        self.frames.owned_by(mfn, dom) && self.frames.get(mfn).is_ok_and(|f| f.is_page_table(level))
    }

    /// Whether `val`, an entry of a level-1 table of `dom`, is a grant
    /// mapping: present and naming a frame `dom` does not own.
    fn is_foreign(&self, dom: DomId, val: u64) -> bool {
        let e = Pte(val);
        e.present() && !self.frames.owned_by(e.mfn(), dom) && !self.is_mmio(val)
    }

    /// Whether `val`, an entry of a level-1 table, is an MMIO entry
    /// (rule 9): present and naming a frame beyond the frame table.
    fn is_mmio(&self, val: u64) -> bool {
        let e = Pte(val);
        e.present() && matches!(self.frames.get(e.mfn()), Err(FrameError::OutOfRange(_)))
    }

    /// The machine address of the level-1 entry that maps `va` in the
    /// tables rooted at `root` (`EINVAL` when `va` is no guest address or
    /// its upper entries are not present).
    fn l1_entry_of(&self, dom: DomId, root: Mfn, va: u64) -> Result<u64, Errno> {
        if !layout::is_guest_va(va) || !self.is_table(dom, root, 4) {
            return Err(Errno::EINVAL);
        }
        let mut table = root;
        for level in (2..=4u8).rev() {
            let e = Pte(self.mem.read_u64(table * PAGE_SIZE + table_index(va, u32::from(level)) as u64 * 8));
            // Validated tables only point at validated tables of the next
            // level (rule 1); checked again so the walk can never leave them.
            if !e.present() || !self.is_table(dom, e.mfn(), level - 1) {
                return Err(Errno::EINVAL);
            }
            table = e.mfn();
        }
        Ok(table * PAGE_SIZE + table_index(va, 1) as u64 * 8)
    }

    /// Where a grant mapping's entry is: `host` is a virtual address in the
    /// tables rooted at `root`, or with `contains_pte` the machine address
    /// of an entry of one of `dom`'s validated level-1 tables.
    fn foreign_slot(&self, dom: DomId, root: Mfn, host: u64, contains_pte: bool) -> Result<u64, Errno> {
        if !contains_pte {
            return self.l1_entry_of(dom, root, host);
        }
        if host & 7 != 0 || !self.is_table(dom, host / PAGE_SIZE, 1) {
            return Err(Errno::EINVAL);
        }
        Ok(host)
    }

    /// [`Mm::map_foreign`] through a validator that keeps remembered
    /// translations (the one page-table write that does not bump the frame
    /// table's change counter): it writes one entry, and only over a
    /// non-present one, which no successful walk read (every level of a
    /// walk must be present), so every remembered walk is still the walk
    /// that would be made now. Nothing else can be done through it.
    #[allow(clippy::too_many_arguments)]
    pub fn map_foreign_keeping_walks(
        mem: &'a mut M,
        frames: &'a mut FrameTable<'f>,
        entry_area_pml4e: u64,
        dom: DomId,
        root: Mfn,
        host: u64,
        contains_pte: bool,
        f: Foreign,
    ) -> Result<u64, Errno> {
        Self::keeping_walks(mem, frames, entry_area_pml4e).map_foreign(dom, root, host, contains_pte, f)
    }

    /// Installs a grant mapping of the foreign frame `mfn` (whose
    /// references the grant layer holds) over the non-present entry that
    /// `host` names (a virtual address in the tables rooted at `root`, or with `contains_pte` the machine address of an entry of one of `dom`'s validated level-1 tables): present, no-execute,
    /// writable only if `writable`, user-accessible only if `user`. Returns
    /// the entry's machine address. `EBUSY` if the entry is present (a grant
    /// mapping never replaces a mapping).
    pub fn map_foreign(
        &mut self,
        dom: DomId,
        root: Mfn,
        host: u64,
        contains_pte: bool,
        f: Foreign,
    ) -> Result<u64, Errno> {
        let at = self.foreign_slot(dom, root, host, contains_pte)?;
        if Pte(self.mem.read_u64(at)).present() {
            return Err(Errno::EBUSY);
        }
        use crate::mm::paging::PteFlags;
        let mut flags = PteFlags::PRESENT | PteFlags::NO_EXECUTE;
        if f.writable {
            flags |= PteFlags::WRITABLE;
        }
        if f.user {
            flags |= PteFlags::USER;
        }
        self.mem.write_u64(at, Pte::new(f.mfn, flags).0);
        Ok(at)
    }

    /// [`Mm::unmap_foreign`] through a validator that keeps remembered
    /// translations: it clears at most one entry, and only one that maps
    /// a frame `dom` does not own. No successful walk of `dom` read it:
    /// a walk needs every table and the final frame owned by `dom`
    /// (owners have not changed since the walk, or the counter would
    /// have), so every remembered walk is still the walk made now.
    pub fn unmap_foreign_keeping_walks(
        mem: &'a mut M,
        frames: &'a mut FrameTable<'f>,
        entry_area_pml4e: u64,
        dom: DomId,
        at: u64,
        mfn: Mfn,
    ) {
        Self::keeping_walks(mem, frames, entry_area_pml4e).unmap_foreign(dom, at, mfn);
    }

    /// Makes sure the entry at machine address `at` (what
    /// [`Mm::map_foreign`] returned) no longer maps the foreign frame `mfn`
    /// for the CPU: clears it if it lies in one of `dom`'s validated level-1
    /// tables and still maps `mfn`; otherwise it is unreachable already (see
    /// the module docs). The caller flushes the TLB before the references
    /// go.
    pub fn unmap_foreign(&mut self, dom: DomId, at: u64, mfn: Mfn) {
        if at & 7 != 0 || !self.is_table(dom, at / PAGE_SIZE, 1) {
            return;
        }
        let e = self.mem.read_u64(at);
        if self.is_foreign(dom, e) && Pte(e).mfn() == mfn {
            self.mem.write_u64(at, 0);
        }
    }

    /// Installs `val` at `ptr` in a validated table of `level`.
    fn update_entry(&mut self, dom: DomId, level: u8, ptr: u64, val: u64) -> Result<(), Errno> {
        let slot = ((ptr % PAGE_SIZE) / 8) as usize;
        if !guest_slot(level, slot) {
            return Err(Errno::EPERM);
        }
        let old = self.mem.read_u64(ptr);
        if level == 1 && self.is_foreign(dom, old) {
            // A grant mapping: only the grant layer removes it.
            return Err(Errno::EBUSY);
        }
        self.get_entry_ref(dom, level, val)?;
        self.mem.write_u64(ptr, val);
        self.put_entry_ref(dom, level, old);
        Ok(())
    }

    /// Checks a would-be entry of a level-`level` table (rules 1, 2, 4, 5, 7a)
    /// and takes the reference it holds. Never validates anything: a
    /// writable leaf's `Writable` type has no contents, and an upper entry
    /// must name a table that is already pinned.
    fn get_entry_ref(&mut self, dom: DomId, level: u8, val: u64) -> Result<(), Errno> {
        let e = Pte(val);
        if !e.present() {
            // Rule 8 (L1TF): no frame address in a non-present entry.
            return if val & crate::mm::paging::ADDR_MASK == 0 { Ok(()) } else { Err(Errno::EINVAL) };
        }
        check_bits(level, val)?;
        let target = e.mfn();
        if level == 1 && self.is_mmio(val) {
            if let Some(io) = self.io.as_mut() {
                // Rule 9.
                let uc = crate::mm::paging::PteFlags::NO_CACHE | crate::mm::paging::PteFlags::WRITE_THROUGH;
                if val & uc.bits() != uc.bits() {
                    return Err(Errno::EINVAL);
                }
                return io.get(target, e.writable());
            }
        }
        if !self.frames.owned_by(target, dom) {
            return Err(Errno::EPERM);
        }
        match level {
            1 if e.writable() => {
                // First or More: either way there is nothing to validate.
                self.frames.get_type_ref(target, dom, FrameType::Writable).map(drop).map_err(errno)
            }
            1 => Ok(()),
            _ => self.frames.get_pinned_ref(target, dom, FrameType::PageTable(level - 1)).map_err(errno),
        }
    }

    /// Drops the reference held by an entry of a validated table. A
    /// writable frame may lose its type here (it has no contents); a table
    /// never does (rule 7c).
    fn put_entry_ref(&mut self, dom: DomId, level: u8, val: u64) {
        let e = Pte(val);
        if !e.present() || (level == 1 && self.is_foreign(dom, val)) {
            // A grant mapping holds no reference of ours.
            return;
        }
        if level == 1 && self.is_mmio(val) {
            // Rule 9: only a validator with the right installs one.
            match self.io.as_mut() {
                Some(io) => io.put(e.mfn()),
                None => debug_assert!(false, "MMIO entry {val:#x} dropped without the device-memory right"),
            }
            return;
        }
        if level > 1 {
            self.put_table_ref(e.mfn());
        } else if e.writable() {
            let _ = self.frames.put_type_ref(e.mfn());
        }
    }

    /// Drops a reference to a table other than its pin (an entry's or a
    /// root's). The table is pinned (rule 7 (i)), so this is never its last
    /// reference and nothing is devalidated.
    fn put_table_ref(&mut self, mfn: Mfn) {
        let last = self.frames.put_type_ref(mfn);
        debug_assert!(last.is_none(), "rule 7: table {mfn:#x} lost its last reference through an entry");
    }

    /// Whether to stop before the next entry: asked once every
    /// [`STEP_ENTRIES`] entries (rule 7 (v)).
    fn stop(&mut self) -> bool {
        self.work += 1;
        if self.work <= STEP_ENTRIES {
            return false;
        }
        self.work = 1;
        self.preempt.as_mut().is_some_and(|p| p())
    }

    /// Takes the references of the guest entries of the table `mfn` from
    /// entry `from` on; the frame holds the pin's reference and the entries
    /// below `from` hold theirs. Success pins it and installs slot 511 of an
    /// L4 (rule 3). On a failure it gives the references back (in steps) and
    /// reports the error once they are; stopping part-way records where it
    /// got ([`Partial`]). Reads at most 511 entries, and as many again to
    /// give them back (rule 7 (iv)).
    fn validate(&mut self, dom: DomId, mfn: Mfn, level: u8, from: u32) -> Result<Step, Errno> {
        let base = mfn * PAGE_SIZE;
        for i in from..ENTRIES as u32 {
            if self.stop() {
                self.frames.set_partial(mfn, dom, Partial::Validating { next: i as u16 }).map_err(errno)?;
                return Ok(Step::Again);
            }
            if !guest_slot(level, i as usize) {
                continue;
            }
            let val = self.mem.read_u64(base + u64::from(i) * 8);
            if let Err(e) = self.get_entry_ref(dom, level, val) {
                return match self.devalidate(dom, mfn, level, i, Some(e))? {
                    Step::Done => Err(e),
                    Step::Again => Ok(Step::Again),
                };
            }
        }
        if level == 4 {
            self.mem.write_u64(base + ENTRY_AREA_SLOT as u64 * 8, self.entry_area_pml4e);
        }
        self.frames.set_pinned(mfn, dom).map_err(errno)?;
        Ok(Step::Done)
    }

    /// Gives back the references of the guest entries below `next` of the
    /// table `mfn`, which holds the operation's one reference and no pin,
    /// last entry first; then ends its type. `failed` is the error of the
    /// pin whose references these are (kept with the progress if it stops
    /// part-way). At most 512 entry reads (rule 7 (iv)).
    fn devalidate(&mut self, dom: DomId, mfn: Mfn, level: u8, next: u32, failed: Option<Errno>) -> Result<Step, Errno> {
        let base = mfn * PAGE_SIZE;
        let mut i = next.min(ENTRIES as u32);
        while i > 0 {
            if self.stop() {
                let failed = failed.map_or(0, |e| e as i32 as u8);
                self.frames.set_partial(mfn, dom, Partial::Devalidating { next: i as u16, failed }).map_err(errno)?;
                return Ok(Step::Again);
            }
            i -= 1;
            if guest_slot(level, i as usize) {
                let v = self.mem.read_u64(base + u64::from(i) * 8);
                self.put_entry_ref(dom, level, v);
            }
        }
        self.frames.end_partial(mfn, dom).map_err(errno)?;
        Ok(Step::Done)
    }
}

#[cfg(test)]
mod tests;
