//! Tests name the rule (module docs) or the operation they check; the
//! `attack_*` tests follow the pt-attacker guest's plan.
use super::*;
use crate::mm::frames::{FrameInfo, Owner};
use crate::mm::paging::PteFlags;
use core::cell::Cell;
use std::collections::HashMap;
use std::string::String;
use std::vec::Vec;
use std::{format, vec};

const D: DomId = DomId::of(1);
const OTHER: DomId = DomId::of(2);
/// Frames of the table: 0..16 reserved, 16..80 the domain (64 frames),
/// 80..88 another domain, 88..92 the hypervisor, 92..96 free, 96..128
/// reserved; beyond 128 out of range.
const NFRAMES: usize = 128;
const DOM_FIRST: Mfn = 16;
const DOM_END: Mfn = 80;
const OTHER_FIRST: Mfn = 80;
const HYP_FIRST: Mfn = 88;
const FREE_FIRST: Mfn = 92;
/// Every frame the domain must not touch, one of each kind.
const NOT_OURS: [Mfn; 8] = [OTHER_FIRST, OTHER_FIRST + 7, HYP_FIRST, FREE_FIRST, 0, 100, 5000, 1 << 39];
/// The entry-area PML4E: points at a hypervisor frame, so it would fail
/// rule 4 if it were ever checked as a guest entry.
const ENTRY: u64 = Pte::new(HYP_FIRST, PteFlags::PRESENT.union(PteFlags::WRITABLE)).0;

// The standard tree built by `H::new`.
const L4: Mfn = 16;
const L3: Mfn = 17;
const L2: Mfn = 18;
const L1: Mfn = 19;
/// Data pages mapped read-write at L1 slots 0..4 (va 0x0000..0x4000).
const DATA: Mfn = 20;
/// Untyped frames free for the tests (32.. are never mapped by `H::new`).
const SPARE: Mfn = 32;

fn rw(mfn: Mfn) -> u64 {
    Pte::new(mfn, PteFlags::PRESENT | PteFlags::WRITABLE).0
}
fn ro(mfn: Mfn) -> u64 {
    Pte::new(mfn, PteFlags::PRESENT).0
}
fn at(mfn: Mfn, slot: usize) -> u64 {
    mfn * PAGE_SIZE + slot as u64 * 8
}

/// Machine memory holding only the domain's frames: the validator must
/// never read or write any other frame, so touching one panics. It
/// counts every entry read and written, for rule 7's bound.
struct TestMem {
    words: Vec<u64>,
    accesses: Cell<u64>,
}

/// Entries one operation may read or write (rule 7 (iv)): one table
/// twice (validation and its rollback) plus O(1).
const OP_BOUND: u64 = 2 * ENTRIES as u64 + 64;

impl TestMem {
    fn index(pa: u64) -> usize {
        let mfn = pa / PAGE_SIZE;
        assert!((DOM_FIRST..DOM_END).contains(&mfn), "touched frame {mfn:#x}, not the domain's");
        assert_eq!(pa % 8, 0, "unaligned access");
        ((mfn - DOM_FIRST) * 512 + (pa % PAGE_SIZE) / 8) as usize
    }
}

impl PhysMem for TestMem {
    fn read_u64(&self, pa: u64) -> u64 {
        self.accesses.set(self.accesses.get() + 1);
        self.words[Self::index(pa)]
    }
    fn write_u64(&mut self, pa: u64, val: u64) {
        self.accesses.set(self.accesses.get() + 1);
        self.words[Self::index(pa)] = val;
    }
    fn read(&self, _: u64, _: &mut [u8]) {
        unreachable!("mm reads entries only")
    }
    fn write(&mut self, _: u64, _: &[u8]) {
        unreachable!("mm writes entries only")
    }
    fn zero_frame(&mut self, _: Mfn) {
        unreachable!("mm never zeroes")
    }
}

/// A domain with frames [`DOM_FIRST`, `DOM_END`) and the standard tree:
/// L4 -> L3 -> L2 -> L1 through slot 0 at every level, DATA.. mapped RW
/// at L1 slots 0..4, the four tables mapped RO at L1 slots 10..14. Like
/// the builder's, every table is pinned, bottom-up.
struct H {
    mem: TestMem,
    frames: FrameTable<'static>,
    root: Mfn,
}

impl H {
    fn bare() -> H {
        let store = vec![FrameInfo::RESERVED; NFRAMES].leak();
        let mut frames = FrameTable::new(store);
        frames.add_free_range(DOM_FIRST, 96);
        for (n, owner) in [(64, Owner::Domain(D)), (8, Owner::Domain(OTHER)), (4, Owner::Hypervisor)] {
            for _ in 0..n {
                frames.alloc(owner).unwrap();
            }
        }
        assert!(frames.owned_by(DOM_END - 1, D) && frames.owned_by(OTHER_FIRST, OTHER));
        assert_eq!(frames.get(HYP_FIRST).unwrap().owner, Owner::Hypervisor);
        H { mem: TestMem { words: vec![0; 64 * 512], accesses: Cell::new(0) }, frames, root: 0 }
    }

    fn new() -> H {
        let mut h = H::bare();
        h.raw(L4, 0, rw(L3));
        h.raw(L3, 0, rw(L2));
        h.raw(L2, 0, rw(L1));
        for i in 0..4 {
            h.raw(L1, i, rw(DATA + i as u64));
        }
        for (i, t) in [L4, L3, L2, L1].into_iter().enumerate() {
            h.raw(L1, 10 + i, ro(t));
        }
        for (t, level) in [(L1, 1), (L2, 2), (L3, 3)] {
            h.pin(t, level).unwrap();
        }
        h.mm().install_initial_root(D, L4).unwrap();
        h.root = L4;
        h.check();
        h
    }

    /// Entries read or written since the last call.
    fn accesses(&self) -> u64 {
        self.mem.accesses.replace(0)
    }

    /// Runs `n` (at least one) operations in `f` and checks rule 7's
    /// bound: at most [`OP_BOUND`] entries touched per operation.
    fn bounded<R>(&mut self, n: usize, f: impl FnOnce(&mut H) -> R) -> R {
        self.accesses();
        let r = f(self);
        let used = self.accesses();
        let bound = n.max(1) as u64 * OP_BOUND;
        assert!(used <= bound, "rule 7: {n} operation(s) touched {used} entries (bound {bound})");
        r
    }

    fn unpin(&mut self, mfn: Mfn) -> Result<(), Errno> {
        self.mm().unpin_table(D, mfn)
    }

    fn mm(&mut self) -> Mm<'_, 'static, TestMem> {
        Mm::new(&mut self.mem, &mut self.frames, ENTRY)
    }

    /// One call of a preemptible pin (`unpin`: of an unpin) whose
    /// preemption check says "stop" from its `allow`-th question on.
    fn step(&mut self, mfn: Mfn, level: Option<u8>, allow: u32) -> Result<Step, Errno> {
        let mut asked = 0;
        let mut due = || {
            asked += 1;
            asked > allow
        };
        let mut mm = Mm::new(&mut self.mem, &mut self.frames, ENTRY).preemptible(&mut due);
        match level {
            Some(l) => mm.pin_step(D, mfn, l),
            None => mm.unpin_step(D, mfn),
        }
    }

    /// Frames part-way through a pin or unpin.
    fn partial(&self) -> Vec<Mfn> {
        (DOM_FIRST..DOM_END).filter(|&m| self.info(m).partial != Partial::None).collect()
    }

    /// A guest write to a frame that is not a validated table (the guest
    /// preparing a new table in its own memory).
    fn raw(&mut self, mfn: Mfn, slot: usize, val: u64) {
        let ty = self.info(mfn).ty;
        assert!(!matches!(ty, FrameType::PageTable(_)), "the guest cannot write table {mfn}");
        self.mem.write_u64(at(mfn, slot), val);
    }

    fn read(&self, mfn: Mfn, slot: usize) -> u64 {
        self.mem.read_u64(at(mfn, slot))
    }

    fn info(&self, mfn: Mfn) -> FrameInfo {
        self.frames.get(mfn).unwrap()
    }

    fn ty(&self, mfn: Mfn) -> (FrameType, u32) {
        let f = self.info(mfn);
        (f.ty, f.type_count)
    }

    fn snapshot(&self) -> (Vec<u64>, Vec<FrameInfo>) {
        let infos = (0..NFRAMES as u64).map(|m| self.frames.get(m).unwrap()).collect();
        (self.mem.words.clone(), infos)
    }

    fn update(&mut self, table: Mfn, slot: usize, val: u64) -> Result<(), Errno> {
        self.mm().mmu_update(D, at(table, slot), val)
    }

    fn pin(&mut self, mfn: Mfn, level: u8) -> Result<(), Errno> {
        self.mm().pin_table(D, mfn, level)
    }

    fn baseptr(&mut self, mfn: Mfn) -> Result<u64, Errno> {
        let mut root = self.root;
        let r = self.mm().new_baseptr(D, &mut root, mfn);
        self.root = root;
        r
    }

    fn uvm(&mut self, va: u64, val: u64) -> Result<(), Errno> {
        let root = self.root;
        self.mm().update_va_mapping(D, root, va, val)
    }

    /// Runs `f`, expects `err`, and checks that nothing changed.
    fn refused(&mut self, err: Errno, f: impl FnOnce(&mut H) -> Result<(), Errno>) {
        let before = self.snapshot();
        let root = self.root;
        assert_eq!(f(self), Err(err));
        assert!(self.snapshot() == before, "a refused operation changed state");
        assert_eq!(self.root, root);
    }

    fn check(&self) {
        if let Err(e) = audit(&self.mem, &self.frames, &[self.root]) {
            panic!("invariant broken: {e}");
        }
    }
}

/// Checks the global invariants by scanning memory: (a) no page table is
/// the target of a present RW L1 entry of a validated table; (b) every
/// present entry of a validated table points to a frame the domain owns
/// and has no refused bits; (c) type counts and types equal the
/// references recomputed from the validated tables, pins and `roots`;
/// (d) slot 511 of every validated L4 is the entry-area value; (f) a
/// frame has a page-table type exactly while it is pinned, and every
/// root is a pinned L4 (rule 7 (i), (ii)), so no table can lose its last
/// reference except by its own unpin; (g) a table part-way through a
/// pin or unpin holds only its operation's reference and those of its
/// entries below the recorded point. Frames the domain does not own
/// hold no types at all. ((e), rule 7's bound on the work of one
/// operation, is checked around each operation: [`H::bounded`].)
fn audit(mem: &TestMem, frames: &FrameTable<'_>, roots: &[Mfn]) -> Result<(), String> {
    let mut want: HashMap<Mfn, (FrameType, u32)> = HashMap::new();
    let mut add = |m: Mfn, ty: FrameType, why: &str| -> Result<(), String> {
        let e = want.entry(m).or_insert((ty, 0));
        if e.0 != ty {
            return Err(format!("frame {m} wanted as {:?} and as {ty:?} ({why})", e.0));
        }
        e.1 += 1;
        Ok(())
    };
    for t in DOM_FIRST..DOM_END {
        let f = frames.get(t).unwrap();
        if f.pinned {
            let FrameType::PageTable(_) = f.ty else {
                return Err(format!("pinned frame {t} is {:?}", f.ty));
            };
            if f.partial != Partial::None {
                return Err(format!("pinned frame {t} is part-way: {:?}", f.partial));
            }
            add(t, f.ty, "pin")?;
        }
        let FrameType::PageTable(level) = f.ty else {
            if f.partial != Partial::None {
                return Err(format!("frame {t} of type {:?} is part-way: {:?}", f.ty, f.partial));
            }
            continue;
        };
        if f.type_count == 0 {
            return Err(format!("frame {t} typed with count 0"));
        }
        // (g) A table part-way through a pin or unpin holds only its
        // operation's reference, and only its entries below `next`
        // hold theirs (rule 7 (v)).
        let held = match f.partial {
            Partial::None if !f.pinned => return Err(format!("(f) table {t} (L{level}) is not pinned")),
            Partial::None => ENTRIES,
            Partial::Validating { next } | Partial::Devalidating { next, .. } => {
                add(t, f.ty, "operation under way")?;
                usize::from(next)
            }
        };
        for i in 0..held {
            let v = mem.read_u64(at(t, i));
            if !guest_slot(level, i) {
                if v != ENTRY {
                    return Err(format!("(d) L4 {t} slot 511 is {v:#x}"));
                }
                continue;
            }
            let e = Pte(v);
            if !e.present() {
                continue;
            }
            // Rule 1 restated independently of `check_bits`: PS and
            // bits 52..=62 anywhere, G above level 1.
            let refused = (0x7ffu64 << 52) | 1 << 7 | if level > 1 { 1 << 8 } else { 0 };
            if v & refused != 0 {
                return Err(format!("(b) L{level} {t}[{i}] = {v:#x} has refused bits"));
            }
            if !frames.owned_by(e.mfn(), D) {
                // (h) A grant mapping: a level-1 entry, no-execute, of a
                // frame that holds foreign references; it holds none of
                // ours.
                let f = frames.get(e.mfn()).unwrap();
                if level == 1 && f.foreign > 0 && v & (1 << 63) != 0 {
                    continue;
                }
                return Err(format!("(b) L{level} {t}[{i}] = {v:#x} maps a frame not owned"));
            }
            let target = frames.get(e.mfn()).unwrap();
            if level == 1 && e.writable() {
                if let FrameType::PageTable(_) = target.ty {
                    return Err(format!("(a) L1 {t}[{i}] maps page table {} writable", e.mfn()));
                }
                add(e.mfn(), FrameType::Writable, "RW leaf")?;
            } else if level > 1 {
                add(e.mfn(), FrameType::PageTable(level - 1), "table entry")?;
            }
        }
    }
    for &r in roots {
        if !frames.get(r).is_ok_and(|f| f.pinned) {
            return Err(format!("(f) root {r} is not pinned"));
        }
        add(r, FrameType::PageTable(4), "root")?;
    }
    for m in 0..NFRAMES as u64 {
        let f = frames.get(m).unwrap();
        if f.foreign > 0 {
            // Another domain's frame mapped by grant: its references are the
            // grant layer's (checked in `crate::grant`'s tests).
            continue;
        }
        let expect = want.get(&m).copied().unwrap_or((FrameType::None, 0));
        if (f.ty, f.type_count) != expect {
            return Err(format!("(c) frame {m} is {:?}/{}, references say {expect:?}", f.ty, f.type_count));
        }
        if !frames.owned_by(m, D) && (f.type_count != 0 || f.pinned) {
            return Err(format!("frame {m} not owned by the domain has a type"));
        }
    }
    Ok(())
}

#[test]
fn standard_tree_is_typed() {
    let h = H::new();
    // Pin and root; pin and the entry above, for the others.
    assert_eq!(h.ty(L4), (FrameType::PageTable(4), 2));
    assert_eq!(h.ty(L3), (FrameType::PageTable(3), 2));
    assert_eq!(h.ty(L2), (FrameType::PageTable(2), 2));
    assert_eq!(h.ty(L1), (FrameType::PageTable(1), 2));
    for t in [L4, L3, L2, L1] {
        assert!(h.info(t).pinned, "table {t}");
    }
    assert_eq!(h.ty(DATA), (FrameType::Writable, 1));
    assert_eq!(h.ty(SPARE), (FrameType::None, 0));
    assert_eq!(h.read(L4, ENTRY_AREA_SLOT), ENTRY);
}

// ---- rule 1 ----

#[test]
fn rule1_upper_entry_takes_a_reference_to_a_pinned_table() {
    let mut h = H::new();
    // A new L3 -> L2 -> L1 chain in spare frames, pinned bottom-up and
    // linked from L4 slot 1.
    h.raw(SPARE, 0, rw(SPARE + 1));
    h.raw(SPARE + 1, 7, rw(SPARE + 2));
    h.raw(SPARE + 2, 3, rw(SPARE + 3));
    h.raw(SPARE + 2, 4, ro(L1));
    for (t, level) in [(SPARE + 2, 1), (SPARE + 1, 2), (SPARE, 3)] {
        h.pin(t, level).unwrap();
    }
    h.update(L4, 1, rw(SPARE)).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(3), 2));
    assert_eq!(h.ty(SPARE + 1), (FrameType::PageTable(2), 2));
    assert_eq!(h.ty(SPARE + 2), (FrameType::PageTable(1), 2));
    assert_eq!(h.ty(SPARE + 3), (FrameType::Writable, 1));
    h.check();
    // Dropping the link drops one reference; the pins keep the chain.
    h.update(L4, 1, 0).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(3), 1));
    assert_eq!(h.ty(SPARE + 1), (FrameType::PageTable(2), 2));
    h.check();
    // Unpinned top-down, one table at a time.
    for t in [SPARE, SPARE + 1, SPARE + 2] {
        h.unpin(t).unwrap();
        h.check();
    }
    for m in SPARE..SPARE + 4 {
        assert_eq!(h.ty(m), (FrameType::None, 0), "frame {m}");
    }
}

#[test]
fn rule1_tables_may_be_shared_at_their_level() {
    let mut h = H::new();
    h.update(L2, 1, rw(L1)).unwrap();
    h.update(L3, 1, ro(L2)).unwrap();
    assert_eq!(h.ty(L1), (FrameType::PageTable(1), 3));
    assert_eq!(h.ty(L2), (FrameType::PageTable(2), 3));
    h.check();
}

#[test]
fn rule1_strict_levels_refuse_self_maps_and_wrong_levels() {
    let mut h = H::new();
    for (table, target) in [
        (L4, L4), // recursive self-map
        (L4, L2), // an L2 used as L3
        (L4, L1),
        (L3, L3),
        (L3, L4),
        (L3, L1),
        (L2, L2), // an L2 entry pointing at a frame used as L2
        (L2, L3),
        (L2, L4),
    ] {
        h.refused(Errno::EBUSY, |h| h.update(table, 2, ro(target)));
    }
    // A table under validation is already typed, so a self-reference
    // inside a new table is refused too; and it cannot be linked before
    // it is pinned (rule 7).
    h.raw(SPARE, 5, rw(SPARE));
    h.refused(Errno::EBUSY, |h| h.pin(SPARE, 2));
    h.refused(Errno::EINVAL, |h| h.update(L4, 3, rw(SPARE)));
}

#[test]
fn rule1_huge_page_bit_refused_at_every_level() {
    let mut h = H::new();
    let ps = PteFlags::HUGE.bits();
    for (table, target) in [(L4, L3), (L3, L2), (L2, L1), (L1, DATA)] {
        h.refused(Errno::EINVAL, |h| h.update(table, 0, rw(target) | ps));
        h.refused(Errno::EINVAL, |h| h.update(table, 9, ro(target) | ps));
    }
    // A 2 MiB page at L2 pointing at ordinary memory.
    h.refused(Errno::EINVAL, |h| h.update(L2, 1, rw(SPARE) | ps));
    // A new table with a huge entry fails validation as a whole.
    h.raw(SPARE, 0, ro(DATA) | ps);
    h.refused(Errno::EINVAL, |h| h.pin(SPARE, 1));
    h.refused(Errno::EINVAL, |h| h.pin(SPARE, 2));
}

#[test]
fn rule1_reserved_and_upper_global_bits_refused() {
    let mut h = H::new();
    for bit in 52..=62 {
        for (table, target) in [(L4, L3), (L3, L2), (L2, L1), (L1, DATA)] {
            h.refused(Errno::EINVAL, |h| h.update(table, 0, rw(target) | 1 << bit));
        }
    }
    let g = PteFlags::GLOBAL.bits();
    for (table, target) in [(L4, L3), (L3, L2), (L2, L1)] {
        h.refused(Errno::EINVAL, |h| h.update(table, 0, rw(target) | g));
    }
    // At level 1, G and the software bits 9..=11 are the guest's.
    h.update(L1, 0, rw(DATA) | g | 0xe00).unwrap();
    h.update(L2, 0, rw(L1) | 0xe00).unwrap();
    h.check();
}

#[test]
fn rule1_non_present_entries_are_the_guests() {
    let mut h = H::new();
    // Their bits outside the frame address are the guest's (rule 8
    // keeps the address clear).
    let guest_bits = !1u64 & !crate::mm::paging::ADDR_MASK;
    for v in [0, guest_bits, 0x7ff0_0000_0000_0080] {
        for t in [L4, L3, L2, L1] {
            h.update(t, 20, v).unwrap();
            assert_eq!(h.read(t, 20), v);
        }
    }
    h.check();
    // A table full of non-present garbage validates and holds nothing.
    for i in 0..ENTRIES {
        h.raw(SPARE, i, (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c14) & guest_bits);
    }
    h.pin(SPARE, 2).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(2), 1));
    h.check();
}

// ---- rule 2 ----

#[test]
fn rule2_writable_leaf_takes_the_writable_type() {
    let mut h = H::new();
    h.update(L1, 5, rw(SPARE)).unwrap();
    h.update(L1, 6, rw(SPARE)).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::Writable, 2));
    h.update(L1, 5, ro(SPARE)).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::Writable, 1));
    h.update(L1, 6, 0).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::None, 0));
    h.check();
}

#[test]
fn rule2_read_only_leaf_may_map_page_tables() {
    let mut h = H::new();
    for (i, t) in [L4, L3, L2, L1].into_iter().enumerate() {
        let before = h.ty(t);
        h.update(L1, 20 + i, ro(t) | PteFlags::NO_EXECUTE.bits()).unwrap();
        assert_eq!(h.ty(t), before, "a read-only mapping takes no type");
    }
    // Including the level-1 table mapping itself.
    h.update(L1, 30, ro(L1)).unwrap();
    h.check();
}

// ---- rule 3 ----

#[test]
fn rule3_slot_511_is_installed_when_an_l4_is_validated() {
    let mut h = H::new();
    // Whatever the guest left in slot 511, even a foreign frame, is
    // replaced, never checked or counted.
    h.raw(SPARE, 0, rw(L3));
    h.raw(SPARE, ENTRY_AREA_SLOT, rw(OTHER_FIRST) | PteFlags::HUGE.bits());
    h.pin(SPARE, 4).unwrap();
    assert_eq!(h.read(SPARE, ENTRY_AREA_SLOT), ENTRY);
    assert_eq!(h.ty(L3), (FrameType::PageTable(3), 3));
    h.check();
    // Devalidation leaves the hypervisor's slot alone and drops nothing
    // for it.
    h.mm().unpin_table(D, SPARE).unwrap();
    assert_eq!(h.ty(L3), (FrameType::PageTable(3), 2));
    h.check();
}

#[test]
fn rule3_slot_511_cannot_be_changed() {
    let mut h = H::new();
    for v in [0, ENTRY, rw(L3), ro(DATA), ENTRY ^ 2] {
        h.refused(Errno::EPERM, |h| h.update(L4, ENTRY_AREA_SLOT, v));
    }
    for va in [layout::ENTRY_AREA_BASE, !0xfff, layout::ENTRY_AREA_BASE + 0x20_0000] {
        h.refused(Errno::EINVAL, |h| h.uvm(va, rw(DATA)));
    }
}

#[test]
fn rule3_failed_l4_validation_leaves_slot_511_alone() {
    let mut h = H::new();
    h.raw(SPARE, 0, rw(OTHER_FIRST));
    h.raw(SPARE, ENTRY_AREA_SLOT, 0x1234);
    h.refused(Errno::EPERM, |h| h.pin(SPARE, 4));
    assert_eq!(h.read(SPARE, ENTRY_AREA_SLOT), 0x1234);
}

// ---- rule 4 ----

#[test]
fn rule4_frames_not_owned_are_refused_everywhere() {
    let mut h = H::new();
    for m in NOT_OURS {
        for (table, val) in [(L1, rw(m)), (L1, ro(m)), (L2, rw(m)), (L3, ro(m)), (L4, rw(m))] {
            h.refused(Errno::EPERM, |h| h.update(table, 7, val));
        }
        h.refused(Errno::EPERM, |h| h.uvm(0x7000, ro(m)));
        for level in 1..=4 {
            h.refused(Errno::EPERM, |h| h.pin(m, level));
        }
        h.refused(Errno::EPERM, |h| h.mm().unpin_table(D, m));
        h.refused(Errno::EPERM, |h| h.baseptr(m).map(drop));
        // `ptr` into a frame that is not ours (even a validated table of
        // another domain would be refused before its type is looked at).
        h.refused(Errno::EPERM, |h| h.mm().mmu_update(D, at(m, 0), 0));
    }
    // A new tree hiding a foreign entry deep inside: it is found when
    // the table that holds it is pinned (tables are pinned bottom-up),
    // and the tables above cannot be pinned without it.
    h.raw(SPARE, 0, rw(SPARE + 1));
    h.raw(SPARE + 1, 0, rw(SPARE + 2));
    h.raw(SPARE + 2, 0, rw(DATA));
    h.raw(SPARE + 2, 1, ro(HYP_FIRST));
    h.refused(Errno::EPERM, |h| h.pin(SPARE + 2, 1));
    h.refused(Errno::EINVAL, |h| h.pin(SPARE + 1, 2));
    h.refused(Errno::EINVAL, |h| h.pin(SPARE, 3));
}

#[test]
fn rule4_another_domains_view_of_our_tables_is_refused() {
    let mut h = H::new();
    // The other domain cannot write our tables, pin our frames or make
    // them its root.
    let mut root = L4;
    let mut mm = h.mm();
    assert_eq!(mm.mmu_update(OTHER, at(L1, 0), 0), Err(Errno::EPERM));
    assert_eq!(mm.pin_table(OTHER, SPARE, 1), Err(Errno::EPERM));
    assert_eq!(mm.new_baseptr(OTHER, &mut root, L4), Err(Errno::EPERM));
    assert_eq!(mm.update_va_mapping(OTHER, L4, 0, 0), Err(Errno::EINVAL));
    h.check();
}

// ---- rule 5 ----

#[test]
fn rule5_page_table_cannot_be_mapped_writable() {
    let mut h = H::new();
    for t in [L4, L3, L2, L1] {
        h.refused(Errno::EBUSY, |h| h.update(L1, 5, rw(t)));
        // Upgrading the existing read-only mapping of a table.
        h.refused(Errno::EBUSY, |h| h.update(L1, 10, rw(t)));
        h.refused(Errno::EBUSY, |h| h.uvm(0x5000, rw(t)));
    }
    // A pinned table that nothing else references is still a table.
    h.pin(SPARE, 1).unwrap();
    h.refused(Errno::EBUSY, |h| h.update(L1, 5, rw(SPARE)));
}

#[test]
fn rule5_writable_frame_cannot_become_a_page_table() {
    let mut h = H::new();
    for level in 1..=4 {
        h.refused(Errno::EBUSY, |h| h.pin(DATA, level));
    }
    h.refused(Errno::EBUSY, |h| h.update(L2, 1, rw(DATA)));
    h.refused(Errno::EBUSY, |h| h.baseptr(DATA).map(drop));
    // A new table that maps itself writable.
    h.raw(SPARE, 0, rw(SPARE));
    h.refused(Errno::EBUSY, |h| h.pin(SPARE, 1));
    // Once the last writable mapping is gone, the frame may change type.
    h.update(L1, 0, ro(DATA)).unwrap();
    assert_eq!(h.ty(DATA), (FrameType::None, 0));
    h.pin(DATA, 1).unwrap();
    assert_eq!(h.ty(DATA), (FrameType::PageTable(1), 1));
    h.check();
}

#[test]
fn rule5_type_changes_only_when_the_count_is_zero() {
    let mut h = H::new();
    h.pin(SPARE, 1).unwrap();
    h.update(L2, 1, rw(SPARE)).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(1), 2));
    h.refused(Errno::EBUSY, |h| h.update(L1, 5, rw(SPARE)));
    h.refused(Errno::EBUSY, |h| h.update(L3, 1, rw(SPARE)));
    // Unlinked, it is still a pinned table.
    h.update(L2, 1, 0).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(1), 1));
    h.refused(Errno::EBUSY, |h| h.update(L1, 5, rw(SPARE)));
    // Unpinned, its count is 0 and it may take another type.
    h.unpin(SPARE).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::None, 0));
    h.update(L1, 5, rw(SPARE)).unwrap();
    h.check();
}

// ---- rule 6 ----

#[test]
fn rule6_user_nx_global_and_cache_bits_are_installed_as_given() {
    let mut h = H::new();
    let leaf = rw(SPARE)
        | (PteFlags::USER
            | PteFlags::NO_EXECUTE
            | PteFlags::GLOBAL
            | PteFlags::WRITE_THROUGH
            | PteFlags::NO_CACHE
            | PteFlags::ACCESSED
            | PteFlags::DIRTY)
            .bits();
    h.update(L1, 5, leaf).unwrap();
    assert_eq!(h.read(L1, 5), leaf);
    let upper = rw(L1) | (PteFlags::USER | PteFlags::NO_EXECUTE | PteFlags::NO_CACHE).bits();
    h.update(L2, 0, upper).unwrap();
    assert_eq!(h.read(L2, 0), upper);
    h.check();
}

// ---- rule 8 ----

#[test]
fn rule8_non_present_entries_carry_no_frame_address() {
    let mut h = H::new();
    // A non-present entry naming a frame (here: another domain's, or the
    // hypervisor's) is refused on every path; other bits are allowed.
    let naming = |mfn: u64| mfn << 12;
    h.refused(Errno::EINVAL, |h| h.update(L1, 7, naming(DATA + 1)));
    h.refused(Errno::EINVAL, |h| h.update(L2, 7, naming(0x100)));
    h.update(L1, 7, 0x0fe).unwrap();
    h.update(L1, 7, 0x7ff0_0000_0000_0000).unwrap();
    h.update(L1, 7, 0).unwrap();
    // And inside a table being pinned.
    h.raw(SPARE, 3, naming(0x100));
    h.refused(Errno::EINVAL, |h| h.pin(SPARE, 1));
    h.raw(SPARE, 3, 0x0fe);
    h.pin(SPARE, 1).unwrap();
    h.check();
}

// ---- rule 7 ----

#[test]
fn rule7_link_requires_pinned_child() {
    let mut h = H::new();
    // An L1 that would validate, offered unpinned at every path that
    // names a lower table: a single update, a batch, a pinned L2's
    // validation, update_va_mapping's walk.
    h.raw(SPARE, 0, rw(DATA + 8));
    h.refused(Errno::EINVAL, |h| h.update(L2, 1, rw(SPARE)));
    let reqs = [MmuUpdate { ptr: at(L1, 5), val: rw(DATA + 9) }, MmuUpdate { ptr: at(L2, 1), val: rw(SPARE) }];
    assert_eq!(h.mm().mmu_update_batch(D, &reqs), (1, Err(Errno::EINVAL)));
    h.update(L1, 5, 0).unwrap();
    h.raw(SPARE + 1, 0, rw(SPARE));
    h.refused(Errno::EINVAL, |h| h.pin(SPARE + 1, 2));
    // It was never validated: no type, no reference to its leaf.
    assert_eq!(h.ty(SPARE), (FrameType::None, 0));
    assert_eq!(h.ty(DATA + 8), (FrameType::None, 0));
    // The same at every level: an unpinned L2 under an L3, an unpinned
    // L3 under the L4.
    h.raw(SPARE + 2, 0, rw(L1));
    h.refused(Errno::EINVAL, |h| h.update(L3, 1, rw(SPARE + 2)));
    h.raw(SPARE + 3, 0, rw(L2));
    h.refused(Errno::EINVAL, |h| h.update(L4, 1, rw(SPARE + 3)));
    // Pinned bottom-up, every link is accepted.
    h.pin(SPARE, 1).unwrap();
    h.pin(SPARE + 1, 2).unwrap();
    h.update(L3, 1, rw(SPARE + 1)).unwrap();
    h.pin(SPARE + 2, 2).unwrap();
    h.update(L3, 2, rw(SPARE + 2)).unwrap();
    h.pin(SPARE + 3, 3).unwrap();
    h.update(L4, 1, rw(SPARE + 3)).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(1), 2));
    assert_eq!(h.ty(SPARE + 1), (FrameType::PageTable(2), 2));
    assert_eq!(h.ty(L2), (FrameType::PageTable(2), 3));
    h.uvm(1 << 30, rw(DATA + 10)).unwrap();
    assert_eq!(h.read(SPARE, 0), rw(DATA + 10));
    h.check();
}

#[test]
fn rule7_unpin_referenced_table_is_ebusy() {
    let mut h = H::new();
    // Referenced by an entry of another table, at every level, and the
    // active root.
    for t in [L4, L3, L2, L1] {
        h.refused(Errno::EBUSY, |h| h.unpin(t));
    }
    // A second, shared reference: unlinking one is not enough.
    h.update(L2, 1, rw(L1)).unwrap();
    h.update(L2, 0, 0).unwrap();
    h.refused(Errno::EBUSY, |h| h.unpin(L1));
    h.update(L2, 1, 0).unwrap();
    h.unpin(L1).unwrap();
    // A root that is also the switch target: it holds the root
    // reference until the vCPU switches away.
    let l4 = second_l4(&mut h);
    h.baseptr(l4).unwrap();
    h.refused(Errno::EBUSY, |h| h.unpin(l4));
    h.baseptr(L4).unwrap();
    h.unpin(l4).unwrap();
    h.check();
}

#[test]
fn rule7_no_cascade_on_unpin() {
    let mut h = H::new();
    // A deep tree: L3 -> L2 -> L1 -> RW leaves, pinned bottom-up, linked.
    h.raw(SPARE, 0, rw(DATA + 5));
    h.raw(SPARE + 1, 0, rw(SPARE));
    h.raw(SPARE + 2, 0, rw(SPARE + 1));
    for (t, level) in [(SPARE, 1), (SPARE + 1, 2), (SPARE + 2, 3)] {
        h.pin(t, level).unwrap();
    }
    h.update(L4, 1, rw(SPARE + 2)).unwrap();
    // Unlinking the top touches one entry and one count.
    let before = h.snapshot().1;
    h.update(L4, 1, 0).unwrap();
    let after = h.snapshot().1;
    let changed: Vec<Mfn> = (0..NFRAMES as Mfn).filter(|&m| before[m as usize] != after[m as usize]).collect();
    assert_eq!(changed, [SPARE + 2]);
    // Unpinning the top devalidates it alone: its child loses one
    // reference and keeps its pin.
    let before = h.snapshot().1;
    h.unpin(SPARE + 2).unwrap();
    let after = h.snapshot().1;
    let changed: Vec<Mfn> = (0..NFRAMES as Mfn).filter(|&m| before[m as usize] != after[m as usize]).collect();
    assert_eq!(changed, [SPARE + 1, SPARE + 2]);
    assert_eq!(h.ty(SPARE + 1), (FrameType::PageTable(2), 1));
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(1), 2));
    h.check();
    h.unpin(SPARE + 1).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(1), 1));
    assert_eq!(h.ty(DATA + 5), (FrameType::Writable, 1));
    h.unpin(SPARE).unwrap();
    assert_eq!(h.ty(DATA + 5), (FrameType::None, 0));
    h.check();
}

#[test]
fn rule7_new_baseptr_requires_a_pinned_l4_and_never_devalidates() {
    let mut h = H::new();
    let l4 = second_l4_unpinned(&mut h);
    h.refused(Errno::EINVAL, |h| h.baseptr(l4).map(drop));
    pin_second_l4(&mut h);
    // Switching back and forth is O(1): two counts, no entries.
    for _ in 0..3 {
        let cr3 = h.bounded(1, |h| h.baseptr(l4)).unwrap();
        assert_eq!(cr3, l4 * PAGE_SIZE);
        assert_eq!(h.bounded(1, |h| h.baseptr(L4)), Ok(L4 * PAGE_SIZE));
        assert_eq!(h.accesses(), 0);
    }
    assert_eq!(h.ty(l4), (FrameType::PageTable(4), 1));
    h.check();
}

#[test]
fn rule7_each_operation_touches_at_most_one_table() {
    let mut h = H::new();
    // An L2 whose 512 entries all name the same pinned L1 (sharing at
    // a level is allowed), and an L3 whose 512 entries name that L2.
    for i in 0..ENTRIES {
        h.raw(SPARE, i, rw(L1));
        h.raw(SPARE + 1, i, rw(SPARE));
    }
    h.bounded(1, |h| h.pin(SPARE, 2)).unwrap();
    h.bounded(1, |h| h.pin(SPARE + 1, 3)).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::PageTable(2), 513));
    // Linking and unlinking the 512-way tree: one entry each.
    for _ in 0..4 {
        h.accesses();
        h.update(L4, 1, rw(SPARE + 1)).unwrap();
        assert!(h.accesses() <= 2);
        h.update(L4, 1, 0).unwrap();
        assert!(h.accesses() <= 2);
    }
    // A validation that fails at the last entry gives back 511 and
    // stays within the bound.
    for i in 0..ENTRIES {
        h.raw(SPARE + 2, i, rw(SPARE));
    }
    h.raw(SPARE + 2, ENTRIES - 1, rw(OTHER_FIRST));
    h.bounded(1, |h| h.refused(Errno::EPERM, |h| h.pin(SPARE + 2, 3)));
    // Unpins, top-down: one table each.
    h.refused(Errno::EBUSY, |h| h.unpin(SPARE));
    h.bounded(1, |h| h.unpin(SPARE + 1)).unwrap();
    h.bounded(1, |h| h.unpin(SPARE)).unwrap();
    h.check();
}

// ---- mmu_update ----

#[test]
fn mmu_update_refuses_command_bits_and_unaligned_ptr() {
    let mut h = H::new();
    for off in 1..=3 {
        h.refused(Errno::ENOSYS, |h| h.mm().mmu_update(D, at(L1, 5) + off, 0));
    }
    for off in 4..=7 {
        h.refused(if off == 4 { Errno::EINVAL } else { Errno::ENOSYS }, |h| h.mm().mmu_update(D, at(L1, 5) + off, 0));
    }
}

#[test]
fn mmu_update_ptr_must_be_in_a_validated_table() {
    let mut h = H::new();
    // Into a writable data page, an untyped frame, another domain's.
    h.refused(Errno::EINVAL, |h| h.update(DATA, 0, 0));
    h.refused(Errno::EINVAL, |h| h.update(SPARE, 0, ro(DATA)));
    h.refused(Errno::EPERM, |h| h.mm().mmu_update(D, at(OTHER_FIRST, 0), 0));
    // A frame typed as table with count 0 does not exist: once its last
    // reference goes it is untyped and refused.
    h.pin(SPARE, 1).unwrap();
    h.update(SPARE, 0, ro(DATA)).unwrap();
    h.mm().unpin_table(D, SPARE).unwrap();
    h.refused(Errno::EINVAL, |h| h.update(SPARE, 0, 0));
}

#[test]
fn mmu_update_same_value_changes_nothing() {
    let mut h = H::new();
    for (t, slot) in [(L4, 0), (L3, 0), (L2, 0), (L1, 0), (L1, 10), (L1, 99)] {
        let v = h.read(t, slot);
        let before = h.snapshot();
        h.update(t, slot, v).unwrap();
        assert!(h.snapshot() == before, "{t}[{slot}]");
    }
}

#[test]
fn mmu_update_replacing_an_entry_releases_the_old_reference() {
    let mut h = H::new();
    h.update(L1, 0, rw(DATA + 1)).unwrap();
    assert_eq!(h.ty(DATA), (FrameType::None, 0));
    assert_eq!(h.ty(DATA + 1), (FrameType::Writable, 2));
    // Replacing the L3 link drops one reference of L3, which its pin
    // keeps alive: nothing below is touched (rule 7).
    h.update(L4, 0, 0).unwrap();
    assert_eq!(h.ty(L3), (FrameType::PageTable(3), 1));
    assert_eq!(h.ty(L2), (FrameType::PageTable(2), 2));
    assert_eq!(h.ty(DATA + 1), (FrameType::Writable, 2));
    h.check();
    // Unpinning top-down releases one table each; the last releases the
    // data pages, and the read-only maps of the tables are left alone.
    for t in [L3, L2, L1] {
        h.unpin(t).unwrap();
    }
    for m in [L3, L2, L1, DATA + 1, DATA + 2] {
        assert_eq!(h.ty(m), (FrameType::None, 0), "frame {m}");
    }
    assert_eq!(h.ty(L4), (FrameType::PageTable(4), 2));
    h.check();
    // The old tables are plain memory now: the guest could map them
    // writable.
    h.pin(SPARE, 1).unwrap();
    h.update(SPARE, 0, rw(L1)).unwrap();
    h.check();
}

#[test]
fn mmu_update_batch_stops_at_first_failure_and_reports_done() {
    let mut h = H::new();
    let reqs = [
        MmuUpdate { ptr: at(L1, 5), val: rw(SPARE) },
        MmuUpdate { ptr: at(L1, 6), val: ro(SPARE + 1) },
        MmuUpdate { ptr: at(L1, 7), val: rw(L2) },
        MmuUpdate { ptr: at(L1, 8), val: rw(SPARE + 2) },
    ];
    assert_eq!(h.mm().mmu_update_batch(D, &reqs), (2, Err(Errno::EBUSY)));
    assert_eq!(h.read(L1, 5), rw(SPARE));
    assert_eq!(h.read(L1, 6), ro(SPARE + 1));
    assert_eq!(h.read(L1, 7), 0);
    assert_eq!(h.read(L1, 8), 0);
    h.check();
    assert_eq!(h.mm().mmu_update_batch(D, &reqs[..2]), (2, Ok(())));
    assert_eq!(h.mm().mmu_update_batch(D, &[]), (0, Ok(())));
    h.check();
}

// ---- pin / unpin ----

#[test]
fn pin_refuses_bad_levels_and_double_pins() {
    let mut h = H::new();
    for level in [0, 5, 255] {
        h.refused(Errno::EINVAL, |h| h.pin(SPARE, level));
    }
    h.pin(SPARE, 3).unwrap();
    h.refused(Errno::EINVAL, |h| h.pin(SPARE, 3));
    h.refused(Errno::EINVAL, |h| h.pin(L4, 4));
    // Every table in use is pinned already (rule 7); at another level
    // it is a type conflict first.
    for (t, level) in [(L1, 1), (L2, 2), (L3, 3)] {
        h.refused(Errno::EINVAL, |h| h.pin(t, level));
    }
    for (t, level) in [(L1, 2), (L2, 1), (L4, 3), (SPARE, 1)] {
        h.refused(Errno::EBUSY, |h| h.pin(t, level));
    }
    h.check();
}

#[test]
fn unpin_refuses_unpinned_and_devalidates_on_last_reference() {
    let mut h = H::new();
    h.refused(Errno::EINVAL, |h| h.mm().unpin_table(D, SPARE));
    h.refused(Errno::EINVAL, |h| h.mm().unpin_table(D, DATA));
    h.raw(SPARE, 0, rw(DATA + 5));
    h.pin(SPARE, 1).unwrap();
    assert_eq!(h.ty(DATA + 5), (FrameType::Writable, 1));
    h.mm().unpin_table(D, SPARE).unwrap();
    assert_eq!(h.ty(SPARE), (FrameType::None, 0));
    assert_eq!(h.ty(DATA + 5), (FrameType::None, 0));
    h.refused(Errno::EINVAL, |h| h.mm().unpin_table(D, SPARE));
    // Tables still referenced cannot be unpinned (rule 7c): the active
    // root, and tables that entries name.
    for t in [L4, L3, L2, L1] {
        h.refused(Errno::EBUSY, |h| h.unpin(t));
    }
    h.check();
}

// ---- new_baseptr ----

/// A second address space in spare frames sharing the standard L3,
/// written but not pinned.
fn second_l4_unpinned(h: &mut H) -> Mfn {
    let l4 = SPARE + 10;
    h.raw(l4, 0, rw(L3));
    h.raw(l4, 1, rw(SPARE + 11));
    h.raw(SPARE + 11, 0, rw(SPARE + 12));
    h.raw(SPARE + 12, 0, rw(SPARE + 13));
    h.raw(SPARE + 13, 0, rw(SPARE + 14));
    l4
}

/// Pins the tables of [`second_l4_unpinned`] bottom-up.
fn pin_second_l4(h: &mut H) -> Mfn {
    for (t, level) in [(SPARE + 13, 1), (SPARE + 12, 2), (SPARE + 11, 3), (SPARE + 10, 4)] {
        h.pin(t, level).unwrap();
    }
    SPARE + 10
}

/// The second address space, pinned.
fn second_l4(h: &mut H) -> Mfn {
    second_l4_unpinned(h);
    pin_second_l4(h)
}

#[test]
fn new_baseptr_switches_roots_and_moves_the_root_reference() {
    let mut h = H::new();
    let l4 = second_l4(&mut h);
    assert_eq!(h.baseptr(l4), Ok(l4 * PAGE_SIZE));
    assert_eq!(h.root, l4);
    assert_eq!(h.ty(l4), (FrameType::PageTable(4), 2));
    assert_eq!(h.read(l4, ENTRY_AREA_SLOT), ENTRY);
    // The old root stays validated through its pin.
    assert_eq!(h.ty(L4), (FrameType::PageTable(4), 1));
    assert_eq!(h.ty(L3), (FrameType::PageTable(3), 3));
    h.check();
    // Setting the same root again changes nothing.
    let before = h.snapshot();
    assert_eq!(h.baseptr(l4), Ok(l4 * PAGE_SIZE));
    assert!(h.snapshot() == before);
    // Back to the first root: the second stays pinned, nothing is
    // devalidated (rule 7 (ii)).
    let before = h.snapshot().1;
    h.baseptr(L4).unwrap();
    let after = h.snapshot().1;
    let changed: Vec<usize> = (0..NFRAMES).filter(|&m| before[m] != after[m]).collect();
    assert_eq!(changed, [L4 as usize, l4 as usize]);
    assert_eq!(h.ty(l4), (FrameType::PageTable(4), 1));
    h.check();
    // Its own unpin devalidates it, and only it.
    h.unpin(l4).unwrap();
    assert_eq!(h.ty(l4), (FrameType::None, 0));
    assert_eq!(h.ty(SPARE + 11), (FrameType::PageTable(3), 1));
    assert_eq!(h.ty(L3), (FrameType::PageTable(3), 2));
    h.check();
}

#[test]
fn new_baseptr_refuses_non_l4_and_bad_current_root() {
    let mut h = H::new();
    for t in [L3, L2, L1, DATA] {
        h.refused(Errno::EBUSY, |h| h.baseptr(t).map(drop));
    }
    // A valid L4 that nobody pinned, an empty frame (rule 7b).
    let l4 = second_l4_unpinned(&mut h);
    h.refused(Errno::EINVAL, |h| h.baseptr(l4).map(drop));
    h.refused(Errno::EINVAL, |h| h.baseptr(SPARE).map(drop));
    // A caller passing something that is not the current root.
    let mut bogus = SPARE;
    assert_eq!(h.mm().new_baseptr(D, &mut bogus, L4), Err(Errno::EINVAL));
    assert_eq!(bogus, SPARE);
    h.check();
}

// ---- update_va_mapping ----

#[test]
fn update_va_mapping_edits_the_leaf_of_the_current_tables() {
    let mut h = H::new();
    h.uvm(0x5000, rw(SPARE)).unwrap();
    assert_eq!(h.read(L1, 5), rw(SPARE));
    h.uvm(0x0000, ro(DATA)).unwrap();
    assert_eq!(h.ty(DATA), (FrameType::None, 0));
    h.check();
    // Not mapped down to an L1 (L4 slot 2 / L3 slot 1 / L2 slot 1).
    for va in [2 << 39, 1 << 30, 1 << 21] {
        h.refused(Errno::EINVAL, |h| h.uvm(va, rw(SPARE)));
    }
    // Non-canonical, entry area.
    for va in [1 << 47, 0xffff_7fff_ffff_f000, layout::ENTRY_AREA_BASE] {
        h.refused(Errno::EINVAL, |h| h.uvm(va, 0));
    }
    // The same validation as mmu_update.
    h.refused(Errno::EBUSY, |h| h.uvm(0x5000, rw(L1)));
    h.refused(Errno::EPERM, |h| h.uvm(0x5000, rw(OTHER_FIRST)));
    h.refused(Errno::EINVAL, |h| h.uvm(0x5000, rw(DATA) | PteFlags::HUGE.bits()));
    // A root that is not a validated L4.
    h.refused(Errno::EINVAL, |h| h.mm().update_va_mapping(D, L3, 0x5000, 0));
    h.refused(Errno::EINVAL, |h| h.mm().update_va_mapping(D, SPARE, 0x5000, 0));
}

// ---- mmuext_op ----

#[test]
fn mmuext_op_decodes_and_dispatches() {
    let req = |cmd, arg1| MmuextOp { cmd, pad: 0, arg1, arg2: 0 };
    assert_eq!(MmuExtOp::decode(&req(ext::PIN_L1_TABLE, 5)), Ok(MmuExtOp::Pin { mfn: 5, level: 1 }));
    assert_eq!(MmuExtOp::decode(&req(ext::PIN_L4_TABLE, 5)), Ok(MmuExtOp::Pin { mfn: 5, level: 4 }));
    assert_eq!(MmuExtOp::decode(&req(ext::UNPIN_TABLE, 6)), Ok(MmuExtOp::Unpin { mfn: 6 }));
    assert_eq!(MmuExtOp::decode(&req(ext::NEW_BASEPTR, 7)), Ok(MmuExtOp::NewBaseptr { mfn: 7 }));
    assert_eq!(MmuExtOp::decode(&req(ext::TLB_FLUSH_LOCAL, 0)), Ok(MmuExtOp::TlbFlushLocal));
    assert_eq!(MmuExtOp::decode(&req(ext::INVLPG_LOCAL, 0x1000)), Ok(MmuExtOp::InvlpgLocal { va: 0x1000 }));
    for cmd in [8, 9, 17, u32::MAX] {
        assert_eq!(MmuExtOp::decode(&req(cmd, 0)), Err(Errno::ENOSYS));
    }

    let mut h = H::new();
    let mut root = h.root;
    let mut mm = h.mm();
    assert_eq!(mm.mmuext_op(D, &mut root, MmuExtOp::Pin { mfn: SPARE, level: 2 }), Ok(ExtOutcome::Done));
    assert_eq!(mm.mmuext_op(D, &mut root, MmuExtOp::Unpin { mfn: SPARE }), Ok(ExtOutcome::Done));
    assert_eq!(mm.mmuext_op(D, &mut root, MmuExtOp::TlbFlushLocal), Ok(ExtOutcome::FlushTlb));
    assert_eq!(mm.mmuext_op(D, &mut root, MmuExtOp::InvlpgLocal { va: 0x5000 }), Ok(ExtOutcome::Invlpg(0x5000)));
    let bad = MmuExtOp::InvlpgLocal { va: layout::ENTRY_AREA_BASE };
    assert_eq!(mm.mmuext_op(D, &mut root, bad), Err(Errno::EINVAL));
    assert_eq!(mm.mmuext_op(D, &mut root, MmuExtOp::Pin { mfn: DATA, level: 1 }), Err(Errno::EBUSY));
    assert_eq!(mm.mmuext_op(D, &mut root, MmuExtOp::NewBaseptr { mfn: L4 }), Ok(ExtOutcome::LoadCr3(L4 * PAGE_SIZE)));
    assert_eq!(root, L4);
    h.check();
}

// ---- domain death ----

#[test]
fn release_domain_returns_frames_untyped() {
    let mut h = H::new();
    h.pin(SPARE, 2).unwrap();
    assert_eq!(h.frames.release_domain(D), 64);
    for m in DOM_FIRST..DOM_END {
        assert_eq!(h.info(m), FrameInfo::untyped(Owner::Free), "frame {m}");
    }
    assert!(h.frames.owned_by(OTHER_FIRST, OTHER));
}

// ---- the pt-attacker guest's plan ----

#[test]
fn attack_make_own_page_tables_writable() {
    let mut h = H::new();
    // Directly, through update_va_mapping, through a new L1 pinned or
    // linked, and through a batch that first unmaps the table's
    // read-only alias.
    for t in [L4, L3, L2, L1] {
        h.refused(Errno::EBUSY, |h| h.update(L1, 40, rw(t)));
        h.refused(Errno::EBUSY, |h| h.uvm(40 << 12, rw(t)));
        h.raw(SPARE, 0, rw(t));
        h.refused(Errno::EBUSY, |h| h.pin(SPARE, 1));
        // Linking it unpinned no longer validates it on the way: it is
        // refused for not being a pinned table (rule 7a).
        h.refused(Errno::EINVAL, |h| h.update(L2, 1, rw(SPARE)));
        let reqs = [MmuUpdate { ptr: at(L1, 10), val: 0 }, MmuUpdate { ptr: at(L1, 40), val: rw(t) }];
        assert_eq!(h.mm().mmu_update_batch(D, &reqs), (1, Err(Errno::EBUSY)));
        h.update(L1, 10, ro(L4)).unwrap();
        h.check();
    }
}

#[test]
fn attack_map_other_domains_and_hypervisor_frames() {
    let mut h = H::new();
    for m in NOT_OURS {
        for flags in [PteFlags::PRESENT, PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER] {
            h.refused(Errno::EPERM, |h| h.update(L1, 41, Pte::new(m, flags).0));
        }
        // As a table: an L2 entry whose "L1" is the hypervisor's.
        h.refused(Errno::EPERM, |h| h.update(L2, 3, rw(m)));
    }
    // The entry-area value itself, copied into a guest slot.
    h.refused(Errno::EPERM, |h| h.update(L4, 3, ENTRY));
    h.refused(Errno::EPERM, |h| h.update(L1, 41, ENTRY));
}

#[test]
fn attack_pin_bogus_tables_changes_nothing() {
    let mut h = H::new();
    // Garbage: every entry present with pseudo-random bits.
    let mut x = 0x1234_5678_9abc_def1u64;
    for i in 0..ENTRIES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        h.raw(SPARE, i, x | 1);
    }
    for level in 1..=4 {
        let before = h.snapshot();
        assert!(h.pin(SPARE, level).is_err(), "garbage pinned as L{level}");
        assert!(h.snapshot() == before);
    }
    // Valid entries first, then a foreign one at the end: everything
    // taken for the prefix is given back.
    for i in 0..ENTRIES {
        h.raw(SPARE + 1, i, rw(DATA + (i % 8) as u64));
    }
    h.raw(SPARE + 1, 511, ro(OTHER_FIRST));
    h.refused(Errno::EPERM, |h| h.pin(SPARE + 1, 1));
    // A two-level bogus tree: a valid, pinned L1 first, then an L1
    // that was refused (so never pinned), then a foreign frame. The
    // reference taken to the first is given back each time.
    h.raw(SPARE + 2, 0, ro(SPARE + 3));
    h.raw(SPARE + 3, 0, rw(DATA));
    h.pin(SPARE + 3, 1).unwrap();
    h.raw(SPARE + 2, 1, ro(SPARE + 1));
    h.refused(Errno::EINVAL, |h| h.pin(SPARE + 2, 2));
    h.refused(Errno::EINVAL, |h| h.update(L3, 1, rw(SPARE + 2)));
    h.raw(SPARE + 2, 1, ro(OTHER_FIRST));
    h.refused(Errno::EPERM, |h| h.pin(SPARE + 2, 2));
    assert_eq!(h.ty(SPARE + 3), (FrameType::PageTable(1), 1));
    h.unpin(SPARE + 3).unwrap();
    h.check();
}

#[test]
fn attack_overlapping_and_huge_batches_stay_consistent() {
    let mut h = H::new();
    // Ten thousand requests hammering three entries, the same PTE again
    // and again with alternating targets and a table in between.
    let mut reqs = Vec::new();
    for i in 0..10_000u64 {
        let slot = (i % 3) as usize + 5;
        let val = match i % 5 {
            0 => rw(SPARE + i % 4),
            1 => ro(L1),
            2 => rw(DATA),
            3 => 0,
            _ => ro(SPARE + 7),
        };
        reqs.push(MmuUpdate { ptr: at(L1, slot), val });
    }
    assert_eq!(h.mm().mmu_update_batch(D, &reqs), (reqs.len(), Ok(())));
    h.check();
    // The final state equals applying each request's last write.
    for slot in 5..8 {
        let last = reqs.iter().rev().find(|r| r.ptr == at(L1, slot)).unwrap();
        assert_eq!(h.read(L1, slot), last.val);
    }
    // A huge batch with a poisoned request in the middle stops there.
    reqs[6_000] = MmuUpdate { ptr: at(L1, 5), val: rw(L2) };
    assert_eq!(h.mm().mmu_update_batch(D, &reqs), (6_000, Err(Errno::EBUSY)));
    h.check();
    // Linking and unlinking the same table in one batch: unlinked, it
    // is still a pinned table, so it cannot be mapped writable until it
    // is unpinned.
    h.raw(SPARE + 20, 0, rw(DATA + 9));
    let link = [
        MmuUpdate { ptr: at(L2, 1), val: rw(SPARE + 20) },
        MmuUpdate { ptr: at(L2, 2), val: rw(SPARE + 20) },
        MmuUpdate { ptr: at(L2, 1), val: 0 },
        MmuUpdate { ptr: at(L1, 9), val: rw(SPARE + 20) },
        MmuUpdate { ptr: at(L2, 2), val: 0 },
        MmuUpdate { ptr: at(L1, 9), val: rw(SPARE + 20) },
    ];
    assert_eq!(h.mm().mmu_update_batch(D, &link), (0, Err(Errno::EINVAL)));
    h.pin(SPARE + 20, 1).unwrap();
    assert_eq!(h.mm().mmu_update_batch(D, &link), (3, Err(Errno::EBUSY)));
    assert_eq!(h.ty(SPARE + 20), (FrameType::PageTable(1), 2));
    assert_eq!(h.mm().mmu_update_batch(D, &link[4..]), (1, Err(Errno::EBUSY)));
    assert_eq!(h.ty(SPARE + 20), (FrameType::PageTable(1), 1));
    h.unpin(SPARE + 20).unwrap();
    assert_eq!(h.ty(DATA + 9), (FrameType::None, 0));
    assert_eq!(h.mm().mmu_update_batch(D, &link[5..]), (1, Ok(())));
    assert_eq!(h.ty(SPARE + 20), (FrameType::Writable, 1));
    h.check();
}

#[test]
fn attack_change_slot_511() {
    let mut h = H::new();
    h.refused(Errno::EPERM, |h| h.update(L4, ENTRY_AREA_SLOT, rw(L3)));
    h.refused(Errno::EPERM, |h| h.update(L4, ENTRY_AREA_SLOT, 0));
    h.refused(Errno::EINVAL, |h| h.uvm(layout::ENTRY_AREA_BASE, rw(DATA)));
    // Preparing an L4 with a slot 511 of its own and switching to it.
    let l4 = second_l4_unpinned(&mut h);
    h.raw(l4, ENTRY_AREA_SLOT, rw(SPARE + 30));
    pin_second_l4(&mut h);
    h.baseptr(l4).unwrap();
    assert_eq!(h.read(l4, ENTRY_AREA_SLOT), ENTRY);
    assert_eq!(h.ty(SPARE + 30), (FrameType::None, 0));
    h.check();
}

#[test]
fn attack_wrong_level_huge_pages_and_bad_ptrs() {
    let mut h = H::new();
    h.refused(Errno::EBUSY, |h| h.update(L2, 3, rw(L2)));
    h.refused(Errno::EBUSY, |h| h.update(L3, 3, rw(L1)));
    h.refused(Errno::EINVAL, |h| h.update(L2, 3, rw(DATA + 20) | PteFlags::HUGE.bits()));
    h.refused(Errno::EINVAL, |h| h.update(L3, 3, rw(DATA + 20) | PteFlags::HUGE.bits()));
    h.refused(Errno::EINVAL, |h| h.mm().mmu_update(D, at(L1, 5) + 4, 0));
    h.refused(Errno::EINVAL, |h| h.update(DATA, 0, rw(DATA)));
    h.refused(Errno::EPERM, |h| h.mm().mmu_update(D, at(OTHER_FIRST, 0), rw(DATA)));
    h.refused(Errno::EPERM, |h| h.mm().mmu_update(D, at(HYP_FIRST, 0), rw(DATA)));
    h.refused(Errno::EPERM, |h| h.mm().mmu_update(D, !7, 0));
}

/// The pt-attacker's latency attack (Xen's XSA-45): a tree of tables as
/// big as the domain allows, linked and unlinked in a free L4 slot by
/// every request of a full batch. Unpinned, it is refused at the first
/// request; pinned bottom-up, every request costs one entry.
#[test]
fn attack_link_unlink_storm_is_bounded() {
    let mut h = H::new();
    let (l3, l2, l1s) = (SPARE, SPARE + 1, SPARE + 2);
    let k = (DOM_END - l1s) as usize;
    for j in 0..k as u64 {
        for i in 0..ENTRIES {
            h.raw(l1s + j, i, rw(DATA + i as u64 % 4));
        }
        h.raw(l2, j as usize, rw(l1s + j));
    }
    h.raw(l3, 0, rw(l2));
    let storm: Vec<MmuUpdate> = (0..pvguest_abi::mmu::MAX_BATCH as usize)
        .map(|j| MmuUpdate { ptr: at(L4, 2), val: if j % 2 == 0 { rw(l3) } else { 0 } })
        .collect();
    let before = h.snapshot();
    assert_eq!(h.bounded(1, |h| h.mm().mmu_update_batch(D, &storm)), (0, Err(Errno::EINVAL)));
    assert!(h.snapshot() == before);
    // Pinned bottom-up: each pin validates one table.
    for j in 0..k as u64 {
        h.bounded(1, |h| h.pin(l1s + j, 1)).unwrap();
    }
    h.bounded(1, |h| h.pin(l2, 2)).unwrap();
    h.bounded(1, |h| h.pin(l3, 3)).unwrap();
    assert_eq!(h.ty(DATA), (FrameType::Writable, 1 + 128 * k as u32));
    h.accesses();
    assert_eq!(h.mm().mmu_update_batch(D, &storm), (storm.len(), Ok(())));
    let used = h.accesses();
    assert!(used <= 2 * storm.len() as u64, "the storm touched {used} entries");
    h.check();
    // The counterpart with mmuext_op: pinning and unpinning a full L1
    // costs one table per operation.
    let t = l1s;
    h.refused(Errno::EBUSY, |h| h.unpin(t));
    h.update(l2, 0, 0).unwrap();
    let mut root = h.root;
    for j in 0..64 {
        let op = if j % 2 == 0 { MmuExtOp::Unpin { mfn: t } } else { MmuExtOp::Pin { mfn: t, level: 1 } };
        h.bounded(1, |h| h.mm().mmuext_op(D, &mut root, op)).unwrap();
    }
    h.check();
}

/// A full L1 in `SPARE`: 511 read-only entries mapping DATA frames and,
/// at slot 300, `bad` if given; slot 511 writable to DATA.
fn full_l1(h: &mut H, bad: Option<u64>) -> Mfn {
    let t = SPARE;
    for i in 0..ENTRIES {
        h.raw(t, i, if i == 511 { rw(DATA) } else { ro(DATA + i as u64 % 4) });
    }
    if let Some(v) = bad {
        h.raw(t, 300, v);
    }
    t
}

#[test]
fn rule7v_a_pin_stops_part_way_and_goes_on_where_it_stopped() {
    let mut h = H::new();
    let t = full_l1(&mut h, None);
    let writable = h.ty(DATA).1;
    let mut calls = 0;
    loop {
        h.accesses();
        let r = h.step(t, Some(1), 0).unwrap();
        assert!(h.accesses() <= u64::from(STEP_ENTRIES) + 2, "one step's entries per call");
        calls += 1;
        h.check();
        if r == Step::Done {
            break;
        }
        let f = h.info(t);
        assert_eq!(f.partial, Partial::Validating { next: (calls * STEP_ENTRIES) as u16 });
        assert!(!f.pinned && !f.is_page_table(1));
        // Part-way, the table is no table: it cannot be linked, written
        // through mmu_update, mapped writable or pinned at another
        // level, and it holds only its own reference.
        h.refused(Errno::EINVAL, |h| h.update(L2, 1, rw(t)));
        h.refused(Errno::EINVAL, |h| h.update(t, 0, 0));
        h.refused(Errno::EBUSY, |h| h.update(L1, 5, rw(t)));
        h.refused(Errno::EBUSY, |h| h.step(t, Some(2), 0).map(drop));
        assert_eq!(h.ty(t), (FrameType::PageTable(1), 1));
    }
    assert_eq!(calls, ENTRIES as u32 / STEP_ENTRIES);
    assert!(h.info(t).pinned && h.info(t).is_page_table(1));
    assert_eq!(h.ty(DATA).1, writable + 1, "slot 511's writable reference, taken once");
    h.update(L2, 1, rw(t)).unwrap();
    h.check();
}

#[test]
fn rule7v_a_failing_pin_gives_its_references_back_in_steps_then_fails() {
    let mut h = H::new();
    let t = full_l1(&mut h, Some(rw(OTHER_FIRST)));
    // Slot 0 writable too, so the failed pin has a reference to give back.
    h.raw(t, 0, rw(DATA + 1));
    let before = h.snapshot();
    let mut calls = 0;
    let err = loop {
        calls += 1;
        match h.step(t, Some(1), 0) {
            Ok(Step::Again) => h.check(),
            Ok(Step::Done) => panic!("a pin of a bad table succeeded"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, Errno::EPERM, "the failing entry's error, reported at the end");
    assert!(calls > 5, "300 entries validated and 300 given back, one step per call ({calls} calls)");
    assert!(h.snapshot() == before, "a failed pin leaves nothing behind");
}

#[test]
fn rule7v_an_unpin_goes_in_steps_and_can_abandon_a_pin_part_way() {
    let mut h = H::new();
    let t = full_l1(&mut h, None);
    let before = h.snapshot();
    // Abandon a pin part-way: its references come back.
    assert_eq!(h.step(t, Some(1), 2), Ok(Step::Again));
    assert_eq!(h.info(t).partial, Partial::Validating { next: 3 * STEP_ENTRIES as u16 });
    while h.step(t, None, 0).unwrap() == Step::Again {
        h.check();
    }
    assert!(h.snapshot() == before);
    // A whole pin, then an unpin in steps.
    h.pin(t, 1).unwrap();
    let mut calls = 0;
    while h.step(t, None, 0).unwrap() == Step::Again {
        calls += 1;
        assert!(matches!(h.info(t).partial, Partial::Devalidating { failed: 0, .. }));
        h.refused(Errno::EINVAL, |h| h.update(L2, 1, rw(t)));
        // A pin meanwhile helps the unpin finish, then says it was busy.
        h.check();
    }
    assert_eq!(calls, ENTRIES as u32 / STEP_ENTRIES - 1);
    assert!(h.snapshot() == before);
    h.pin(t, 1).unwrap();
    assert_eq!(h.step(t, None, 0), Ok(Step::Again));
    assert_eq!(h.pin(t, 1), Err(Errno::EBUSY), "a pin during an unpin finishes the unpin and is refused");
    assert!(h.snapshot() == before);
}

// ---- the state machine ----

mod model {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    /// A frame, chosen when the operation runs so that it fits the state
    /// as often as it misfits it.
    #[derive(Clone, Copy, Debug)]
    enum Pick {
        /// The k-th validated table (any level), if any.
        Table(usize),
        /// The k-th validated table of a level, if any.
        TableAt(u8, usize),
        /// The k-th frame of the domain without a type.
        Untyped(usize),
        /// The k-th frame of type Writable.
        Writable(usize),
        /// A fixed frame: the domain's or one that is not.
        Frame(Mfn),
    }

    /// An entry value: a picked frame with flags, or raw bits.
    #[derive(Clone, Copy, Debug)]
    enum Val {
        Entry(Pick, u64),
        Raw(u64),
    }

    #[derive(Clone, Debug)]
    enum Op {
        Update {
            table: Pick,
            slot: usize,
            misalign: u64,
            val: Val,
        },
        Batch(Vec<(Pick, usize, Val)>),
        Pin {
            mfn: Pick,
            level: u8,
        },
        Unpin {
            mfn: Pick,
        },
        NewBaseptr {
            mfn: Pick,
        },
        Uvm {
            va: u64,
            val: Val,
        },
        /// A preemptible pin or unpin (`level` `None`) whose preemption
        /// check says "stop" from its `allow`-th question on: it may stop
        /// part-way, and the sequence may never go on with it.
        Step {
            mfn: Pick,
            level: Option<u8>,
            allow: u32,
        },
        /// The guest writing a frame that is not a page table.
        GuestWrite {
            mfn: Pick,
            slot: usize,
            val: Val,
        },
        /// The guest building a tree as rule 7 wants it: `depth` new
        /// tables in untyped frames, each pinned as soon as it is
        /// written, bottom-up: an L1 with `leaves`, then each level
        /// naming the one below (and, with `share`, an existing pinned
        /// table of that level); then the top optionally linked into
        /// `link`.
        PinTree {
            depth: u8,
            leaves: Vec<(Pick, u64)>,
            share: Option<usize>,
            link: Option<(Pick, usize)>,
        },
    }

    fn pick() -> impl Strategy<Value = Pick> {
        prop_oneof![
            3 => (0..16usize).prop_map(Pick::Table),
            3 => (1..=4u8, 0..4usize).prop_map(|(l, k)| Pick::TableAt(l, k)),
            3 => (0..8usize).prop_map(Pick::Untyped),
            1 => (0..8usize).prop_map(Pick::Writable),
            2 => (DOM_FIRST..DOM_END).prop_map(Pick::Frame),
            1 => proptest::sample::select(NOT_OURS.to_vec()).prop_map(Pick::Frame),
        ]
    }

    fn slot() -> impl Strategy<Value = usize> {
        prop_oneof![8 => 0..4usize, 1 => Just(ENTRY_AREA_SLOT), 1 => 0..ENTRIES]
    }

    fn flags() -> impl Strategy<Value = u64> {
        let p = PteFlags::PRESENT.bits();
        let w = PteFlags::WRITABLE.bits();
        prop_oneof![
            8 => Just(p | w),
            6 => Just(p),
            2 => Just(p | w | PteFlags::USER.bits() | PteFlags::NO_EXECUTE.bits()),
            2 => Just(0u64),
            1 => Just(p | w | PteFlags::HUGE.bits()),
            1 => Just(p | PteFlags::HUGE.bits()),
            1 => Just(p | w | PteFlags::GLOBAL.bits()),
            1 => (52..63u32).prop_map(move |b| p | 1u64 << b),
            1 => any::<u64>().prop_map(|v| v & !crate::mm::paging::ADDR_MASK),
        ]
    }

    fn value() -> impl Strategy<Value = Val> {
        prop_oneof![
            12 => (pick(), flags()).prop_map(|(m, f)| Val::Entry(m, f)),
            1 => Just(Val::Raw(ENTRY)),
            1 => any::<u64>().prop_map(Val::Raw),
        ]
    }

    fn va() -> impl Strategy<Value = u64> {
        let upper = || prop_oneof![6 => Just(0u64), 3 => 0..4u64, 1 => 0..512u64];
        (upper(), upper(), upper(), 0..16u64, prop_oneof![3 => Just(0u64), 1 => 0..4096u64]).prop_map(
            |(a, b, c, d, off)| {
                let raw = a << 39 | b << 30 | c << 21 | d << 12 | off;
                // Sign-extend the upper half (slot 511 is the entry area).
                if a >= 256 {
                    raw | 0xffff_0000_0000_0000
                } else {
                    raw
                }
            },
        )
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (pick(), slot(), prop_oneof![12 => Just(0u64), 1 => 1..8u64], value())
                .prop_map(|(table, slot, misalign, val)| Op::Update { table, slot, misalign, val }),
            2 => proptest::collection::vec((pick(), slot(), value()), 0..12).prop_map(Op::Batch),
            3 => (pick(), prop_oneof![12 => 1..=4u8, 1 => Just(0u8), 1 => Just(5u8)])
                .prop_map(|(mfn, level)| Op::Pin { mfn, level }),
            2 => pick().prop_map(|mfn| Op::Unpin { mfn }),
            2 => pick().prop_map(|mfn| Op::NewBaseptr { mfn }),
            4 => (pick(), proptest::option::weighted(0.7, 1..=4u8), prop_oneof![3 => Just(0u32), 1 => 0..8u32])
                .prop_map(|(mfn, level, allow)| Op::Step { mfn, level, allow }),
            4 => (va(), value()).prop_map(|(va, val)| Op::Uvm { va, val }),
            6 => (pick(), slot(), value()).prop_map(|(mfn, slot, val)| Op::GuestWrite { mfn, slot, val }),
            4 => (
                1..=4u8,
                proptest::collection::vec((pick(), flags()), 0..6),
                proptest::option::of(0..4usize),
                proptest::option::weighted(0.7, (pick(), slot())),
            )
                .prop_map(|(depth, leaves, share, link)| Op::PinTree { depth, leaves, share, link }),
        ]
    }

    fn resolve(h: &H, p: Pick) -> Mfn {
        let nth = |k: usize, f: &dyn Fn(&FrameInfo) -> bool| {
            let all: Vec<Mfn> = (DOM_FIRST..DOM_END).filter(|&m| f(&h.info(m))).collect();
            if all.is_empty() {
                DOM_FIRST + k as u64
            } else {
                all[k % all.len()]
            }
        };
        match p {
            Pick::Table(k) => nth(k, &|f| matches!(f.ty, FrameType::PageTable(_))),
            Pick::TableAt(l, k) => nth(k, &|f| f.ty == FrameType::PageTable(l)),
            Pick::Untyped(k) => nth(k, &|f| f.ty == FrameType::None),
            Pick::Writable(k) => nth(k, &|f| f.ty == FrameType::Writable),
            Pick::Frame(m) => m,
        }
    }

    fn entry(h: &H, v: Val) -> u64 {
        match v {
            Val::Entry(p, flags) => ((resolve(h, p) << 12) & crate::mm::paging::ADDR_MASK) | flags,
            Val::Raw(v) => v,
        }
    }

    /// Runs `op`; every page-table operation in it is checked against
    /// rule 7's bound (invariant (e)).
    fn apply(h: &mut H, op: &Op) -> Result<(), Errno> {
        match *op {
            Op::Update { table, slot, misalign, val } => {
                let ptr = (resolve(h, table) << 12).wrapping_add(slot as u64 * 8 + misalign);
                let val = entry(h, val);
                let r = h.bounded(1, |h| h.mm().mmu_update(D, ptr, val));
                if r.is_ok() {
                    assert_eq!(h.mem.read_u64(ptr), val);
                }
                r
            }
            Op::Batch(ref reqs) => {
                // Resolved up front, as a guest fills its request array.
                let reqs: Vec<MmuUpdate> = reqs
                    .iter()
                    .map(|&(t, s, val)| MmuUpdate { ptr: at(resolve(h, t), s), val: entry(h, val) })
                    .collect();
                let (done, r) = h.bounded(reqs.len(), |h| h.mm().mmu_update_batch(D, &reqs));
                assert!(done <= reqs.len());
                assert_eq!(r.is_ok(), done == reqs.len());
                r
            }
            Op::Pin { mfn, level } => {
                let m = resolve(h, mfn);
                h.bounded(1, |h| h.pin(m, level))
            }
            Op::Unpin { mfn } => {
                let m = resolve(h, mfn);
                h.bounded(1, |h| h.unpin(m))
            }
            Op::NewBaseptr { mfn } => {
                let m = resolve(h, mfn);
                h.bounded(1, |h| h.baseptr(m)).map(|cr3| assert_eq!(cr3, m << 12))
            }
            Op::Step { mfn, level, allow } => {
                let m = resolve(h, mfn);
                h.accesses();
                let r = h.step(m, level, allow);
                let used = h.accesses();
                // Rule 7 (v): a call that stopped did at most the
                // entries its questions allowed.
                let bound = u64::from(STEP_ENTRIES) * (u64::from(allow) + 1) + 2;
                if r == Ok(Step::Again) {
                    assert!(used <= bound, "a stopped call touched {used} entries (bound {bound})");
                    assert_ne!(h.info(m).partial, Partial::None, "a stopped call recorded no progress");
                }
                assert!(used <= OP_BOUND, "one call touched {used} entries");
                r.map(drop)
            }
            Op::Uvm { va, val } => {
                let val = entry(h, val);
                h.bounded(1, |h| h.uvm(va, val))
            }
            Op::GuestWrite { mfn, slot, val } => {
                let (m, val) = (resolve(h, mfn), entry(h, val));
                if h.frames.owned_by(m, D) && !matches!(h.info(m).ty, FrameType::PageTable(_)) {
                    h.raw(m, slot, val);
                }
                Ok(())
            }
            Op::PinTree { depth, ref leaves, share, link } => {
                let mut below = None;
                for level in 1..=depth {
                    let m = resolve(h, Pick::Untyped(0));
                    if h.info(m).ty != FrameType::None {
                        // No untyped frame left.
                        return Err(Errno::ENOMEM);
                    }
                    for i in 0..ENTRIES {
                        h.raw(m, i, 0);
                    }
                    match below {
                        None => {
                            for (i, &(p, flags)) in leaves.iter().enumerate() {
                                let v = entry(h, Val::Entry(p, flags));
                                h.raw(m, i, v);
                            }
                        }
                        Some(b) => {
                            h.raw(m, 0, rw(b));
                            if let Some(k) = share {
                                let other = resolve(h, Pick::TableAt(level - 1, k));
                                h.raw(m, 1, ro(other));
                            }
                        }
                    }
                    h.bounded(1, |h| h.pin(m, level))?;
                    below = Some(m);
                }
                if let (Some(top), Some((table, slot))) = (below, link) {
                    let ptr = at(resolve(h, table), slot);
                    h.bounded(1, |h| h.mm().mmu_update(D, ptr, rw(top)))?;
                }
                Ok(())
            }
        }
    }

    proptest! {
        #![proptest_config(Config {
            cases: 128,
            rng_seed: RngSeed::Fixed(0x5249_4e47_4645_4e43),
            failure_persistence: None,
            ..Config::default()
        })]

        /// Random valid-ish and hostile sequences; after every step the
        /// invariants hold (see [`audit`]) and a refused operation has
        /// changed nothing.
        #[test]
        fn random_operations_keep_every_invariant(ops in proptest::collection::vec(op(), 1..100)) {
            let mut h = H::new();
            for (i, op) in ops.iter().enumerate() {
                let before = h.snapshot();
                let root = h.root;
                // Resolved as `apply` will resolve it.
                let resumed = matches!(op, Op::Step { mfn, .. }
                    if h.frames.get(resolve(&h, *mfn)).is_ok_and(|f| f.partial != Partial::None));
                let r = apply(&mut h, op);
                if let Err(e) = audit(&h.mem, &h.frames, &[h.root]) {
                    panic!("step {i} {op:?} -> {r:?}: {e}");
                }
                // A refused single operation changes nothing (a batch
                // keeps the requests before the failing one, a tree the
                // tables pinned before the failing one, and a step that
                // finished giving back a failed pin's references ends
                // that pin).
                if r.is_err() && !resumed && !matches!(op, Op::Batch(_) | Op::PinTree { .. }) {
                    prop_assert!(h.snapshot() == before, "step {} {:?} failed but changed state", i, op);
                    prop_assert_eq!(h.root, root);
                }
            }
            // Emptying the root and unpinning every other table,
            // top-down (rule 7: a table can be unpinned once nothing
            // references it), leaves nothing else typed: no reference
            // leaked, and each unpin was one table's work.
            let root = h.root;
            // Pins and unpins left part-way are abandoned or finished
            // first: nothing references those tables.
            for m in h.partial() {
                h.bounded(1, |h| h.unpin(m)).unwrap();
            }
            for i in (0..ENTRIES).filter(|&i| guest_slot(4, i)) {
                if Pte(h.read(root, i)).present() {
                    h.bounded(1, |h| h.update(root, i, 0)).unwrap();
                }
            }
            for level in (1..=4).rev() {
                for m in DOM_FIRST..DOM_END {
                    if m != root && h.info(m).pinned && h.info(m).ty == FrameType::PageTable(level) {
                        if let Err(e) = h.bounded(1, |h| h.unpin(m)) {
                            panic!("teardown: unpin of L{level} {m}: {e:?}");
                        }
                    }
                }
            }
            if let Err(e) = audit(&h.mem, &h.frames, &[h.root]) {
                panic!("after teardown: {e}");
            }
            for m in (DOM_FIRST..DOM_END).filter(|&m| m != root) {
                prop_assert_eq!(h.ty(m), (FrameType::None, 0), "frame {}", m);
            }
            prop_assert_eq!(h.ty(root), (FrameType::PageTable(4), 2));
        }
    }
}

// ---- grant mappings (foreign entries) ----

/// A grant mapping sits over a non-present entry, holds none of our
/// references, cannot be changed by `mmu_update` or `update_va_mapping`,
/// survives (untouched) an unpin of its table, is refused by a re-pin, and
/// is cleared only by `unmap_foreign`, which does nothing for an entry that
/// is no longer live.
#[test]
fn foreign_entries_are_the_grant_layers_alone() {
    let mut h = H::new();
    let frame = OTHER_FIRST;
    // The grant layer's references on the other domain's frame.
    h.frames.get_foreign_ref(frame, OTHER, true).unwrap();
    let va = 5 * 4096; // L1 slot 5 of the standard tree: not present
    let root = h.root;
    let slot5 = h.mm().map_foreign(D, root, va, false, Foreign { mfn: frame, writable: true, user: false }).unwrap();
    assert_eq!(slot5, at(L1, 5));
    assert_eq!(Pte(h.read(L1, 5)).mfn(), frame);
    h.check();
    assert_eq!(
        h.mm().map_foreign(D, root, va, false, Foreign { mfn: frame, writable: true, user: false }),
        Err(Errno::EBUSY),
        "never over a mapping"
    );
    assert_eq!(
        h.mm().map_foreign(D, root, 0, false, Foreign { mfn: frame, writable: true, user: false }),
        Err(Errno::EBUSY),
        "slot 0 is mapped"
    );
    h.refused(Errno::EBUSY, |h| h.update(L1, 5, 0));
    h.refused(Errno::EBUSY, |h| h.uvm(va, rw(DATA)));
    // The machine-address form names the same entry.
    assert_eq!(
        h.mm().map_foreign(D, root, slot5, true, Foreign { mfn: frame, writable: false, user: false }),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        h.mm().map_foreign(D, root, slot5 + 1, true, Foreign { mfn: frame, writable: false, user: false }),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.mm().map_foreign(D, root, at(DATA, 0), true, Foreign { mfn: frame, writable: false, user: false }),
        Err(Errno::EINVAL),
        "not a table"
    );
    // Unmap of another frame changes nothing; of this one clears it.
    h.mm().unmap_foreign(D, slot5, frame + 1);
    assert_eq!(Pte(h.read(L1, 5)).mfn(), frame);
    h.mm().unmap_foreign(D, slot5, frame);
    assert_eq!(h.read(L1, 5), 0);
    h.check();
    // An unpinned table keeps a foreign entry, untouched, and a re-pin
    // refuses it.
    let t = SPARE;
    h.pin(t, 1).unwrap();
    let e = h.mm().map_foreign(D, root, at(t, 7), true, Foreign { mfn: frame, writable: false, user: false }).unwrap();
    let count = h.ty(DATA);
    h.unpin(t).unwrap();
    assert_eq!(h.ty(DATA), count);
    assert_eq!(h.info(frame).foreign, 1, "the grant layer's reference is not ours to drop");
    h.refused(Errno::EPERM, |h| h.pin(t, 1));
    // Its unmap now finds nothing live to clear.
    h.mm().unmap_foreign(D, e, frame);
    assert_eq!(Pte(h.read(t, 7)).mfn(), frame);
}

/// A guest-memory view of domain `D` over `h`'s tables.
fn guest_view(h: &mut H) -> crate::mm::guest_mem::GuestView<'_, TestMem> {
    crate::mm::guest_mem::GuestView { mem: &mut h.mem, frames: &h.frames, root: h.root, dom: D }
}

#[test]
fn a_remembered_translation_is_used_only_while_the_frame_table_is_unchanged() {
    use crate::mm::guest_mem::{Access, GuestVa};
    let mut h = H::new();
    h.update(L1, 5, rw(SPARE)).unwrap();
    let va = GuestVa(5 * 4096 + 8);
    let pa = SPARE * 4096 + 8;
    let mut memo = None;
    assert_eq!(guest_view(&mut h).translate_remembered(va, Access::KERNEL_WRITE, &mut memo), Ok(pa));
    // Nothing changed: answered from the memo, without reading an entry;
    // a walk made for a write serves a read.
    h.accesses();
    assert_eq!(guest_view(&mut h).translate_remembered(va, Access::KERNEL_WRITE, &mut memo), Ok(pa));
    assert_eq!(guest_view(&mut h).translate_remembered(va, Access::KERNEL_READ, &mut memo), Ok(pa));
    assert_eq!(h.accesses(), 0, "no walk");
    // Another page of the same view is walked.
    assert_eq!(guest_view(&mut h).translate_remembered(GuestVa(0), Access::KERNEL_READ, &mut memo), Ok(DATA * 4096));
    assert!(h.accesses() > 0);
    // The page is unmapped through the validator: the old walk is never
    // used again.
    let mut memo = None;
    guest_view(&mut h).translate_remembered(va, Access::KERNEL_WRITE, &mut memo).unwrap();
    h.update(L1, 5, 0).unwrap();
    assert_eq!(guest_view(&mut h).translate_remembered(va, Access::KERNEL_WRITE, &mut memo), Err(Errno::EFAULT));
    assert_eq!(guest_view(&mut h).translate_remembered(va, Access::KERNEL_READ, &mut memo), Err(Errno::EFAULT));
    // Mapped read-only: a walk made for a read does not serve a write.
    h.update(L1, 5, ro(SPARE)).unwrap();
    let mut memo = None;
    assert_eq!(guest_view(&mut h).translate_remembered(va, Access::KERNEL_READ, &mut memo), Ok(pa));
    assert_eq!(guest_view(&mut h).translate_remembered(va, Access::KERNEL_WRITE, &mut memo), Err(Errno::EFAULT));
    // A change of frame ownership alone (no page-table write) forgets it too.
    let mut memo = None;
    guest_view(&mut h).translate_remembered(va, Access::KERNEL_READ, &mut memo).unwrap();
    let before = h.frames.epoch();
    h.frames.alloc(Owner::Domain(OTHER)).unwrap();
    assert_ne!(h.frames.epoch(), before);
    h.accesses();
    assert_eq!(guest_view(&mut h).translate_remembered(va, Access::KERNEL_READ, &mut memo), Ok(pa));
    assert!(h.accesses() > 0, "walked again");
    // And so does a validator made over the table (it may write entries).
    let before = h.frames.epoch();
    drop(h.mm());
    assert_ne!(h.frames.epoch(), before);
}

/// A grant map (the foreign references, then the entry over a hole)
/// keeps remembered walks, and each then answers exactly as a fresh walk
/// does, for every page the tree maps and the new one; so after the
/// unmap.
#[test]
fn a_grant_map_keeps_remembered_walks_and_they_match_fresh_walks() {
    use crate::mm::guest_mem::{Access, GuestVa};
    let mut h = H::new();
    h.update(L1, 5, rw(SPARE)).unwrap();
    let accesses = [Access::KERNEL_READ, Access::KERNEL_WRITE];
    let pages = [GuestVa(0), GuestVa(5 * 4096 + 8), GuestVa(6 * 4096)];
    let mut memos: std::vec::Vec<_> = pages.iter().flat_map(|_| accesses.iter().map(|_| None)).collect();
    let walk_all = |h: &mut H, memos: &mut [Option<_>], remembered: bool| {
        let mut out = std::vec::Vec::new();
        for (i, va) in pages.iter().enumerate() {
            for (j, &a) in accesses.iter().enumerate() {
                let v = guest_view(h);
                out.push(if remembered {
                    v.translate_remembered(*va, a, &mut memos[i * accesses.len() + j])
                } else {
                    v.translate(*va, a)
                });
            }
        }
        out
    };
    let before = walk_all(&mut h, &mut memos, true);
    let epoch = h.frames.epoch();
    // The mapper's grant of another domain's frame at page 6 (a hole).
    let frame = OTHER_FIRST;
    h.frames.get_foreign_ref(frame, OTHER, true).unwrap();
    let root = h.root;
    let f = Foreign { mfn: frame, writable: true, user: false };
    let slot = Mm::map_foreign_keeping_walks(&mut h.mem, &mut h.frames, ENTRY, D, root, 6 * 4096, false, f).unwrap();
    assert_eq!(h.frames.epoch(), epoch, "the map kept the counter");
    assert_eq!(Pte(h.mem.read_u64(slot)).mfn(), frame);
    let remembered = walk_all(&mut h, &mut memos, true);
    let fresh = walk_all(&mut h, &mut memos, false);
    assert_eq!(remembered, fresh, "a kept walk is the walk made now");
    assert_eq!(remembered[..4], before[..4]);
    // Over a present entry it refuses and writes nothing.
    let f = Foreign { mfn: frame, writable: false, user: false };
    assert_eq!(
        Mm::map_foreign_keeping_walks(&mut h.mem, &mut h.frames, ENTRY, D, root, 5 * 4096, false, f),
        Err(Errno::EBUSY)
    );
    assert_eq!(walk_all(&mut h, &mut memos, false), fresh);
    // The unmap keeps them too, and they still match fresh walks (the
    // grant's page was never remembered: its frame is not ours).
    Mm::unmap_foreign_keeping_walks(&mut h.mem, &mut h.frames, ENTRY, D, slot, frame);
    assert_eq!(h.mem.read_u64(slot), 0);
    let _ = h.frames.put_foreign_ref(frame, true);
    assert_eq!(h.frames.epoch(), epoch, "the unmap kept the counter");
    let remembered = walk_all(&mut h, &mut memos, true);
    assert_eq!(remembered, walk_all(&mut h, &mut memos, false), "a kept walk is the walk made now");
    assert_eq!(remembered, before);
    // An unmap naming one of our own frames clears nothing.
    Mm::unmap_foreign_keeping_walks(&mut h.mem, &mut h.frames, ENTRY, D, at(L1, 5), SPARE);
    assert_eq!(walk_all(&mut h, &mut memos, true), before);
    assert_eq!(Pte(h.read(L1, 5)).mfn(), SPARE);
}

// ---- rule 9: device memory ----

/// A device frame beyond the frame table (which ends at [`NFRAMES`]).
const DEV: Mfn = 0xfebf0;
/// A device frame the fake right allows only read-only (like MSI-X).
const DEV_RO: Mfn = 0xfebf1;
/// A frame beyond the frame table that is no device's (the APIC, say).
const NOT_DEV: Mfn = 0xfee00;

/// A device-memory right over [`DEV`] (any) and [`DEV_RO`] (read-only),
/// counting mappings per frame.
#[derive(Default)]
struct FakeIo {
    maps: HashMap<Mfn, i64>,
}

impl DeviceMemory for FakeIo {
    fn get(&mut self, mfn: Mfn, writable: bool) -> Result<(), Errno> {
        match (mfn, writable) {
            (DEV, _) | (DEV_RO, false) => {
                *self.maps.entry(mfn).or_default() += 1;
                Ok(())
            }
            _ => Err(Errno::EPERM),
        }
    }
    fn put(&mut self, mfn: Mfn) {
        let n = self.maps.entry(mfn).or_default();
        *n -= 1;
        assert!(*n >= 0, "frame {mfn:#x} put more often than got");
    }
}

fn uc(mfn: Mfn, writable: bool) -> u64 {
    let mut f = PteFlags::PRESENT | PteFlags::NO_CACHE | PteFlags::WRITE_THROUGH | PteFlags::NO_EXECUTE;
    if writable {
        f |= PteFlags::WRITABLE;
    }
    Pte::new(mfn, f).0
}

impl H {
    fn io_update(&mut self, io: &mut FakeIo, table: Mfn, slot: usize, val: u64) -> Result<(), Errno> {
        Mm::new(&mut self.mem, &mut self.frames, ENTRY).with_device_memory(io).mmu_update(D, at(table, slot), val)
    }
}

#[test]
fn rule9_without_the_right_device_frames_are_not_owned() {
    // What every domU gets: the hypercall layer attaches no right.
    let mut h = H::new();
    for m in [DEV, DEV_RO, NOT_DEV] {
        h.refused(Errno::EPERM, |h| h.update(L1, 20, uc(m, false)));
        h.refused(Errno::EPERM, |h| h.uvm(0x1000, uc(m, true)));
    }
}

#[test]
fn rule9_dom0_maps_device_frames_uncached_and_counted() {
    let mut h = H::new();
    let mut io = FakeIo::default();
    assert_eq!(h.io_update(&mut io, L1, 20, uc(DEV, true)), Ok(()));
    assert_eq!(h.read(L1, 20), uc(DEV, true));
    assert_eq!(io.maps[&DEV], 1);
    // Read-only where the right says so.
    assert_eq!(h.io_update(&mut io, L1, 21, uc(DEV_RO, false)), Ok(()));
    assert_eq!(h.io_update(&mut io, L1, 22, uc(DEV_RO, true)), Err(Errno::EPERM));
    assert_eq!(h.read(L1, 22), 0);
    // Not a device frame: EPERM, nothing counted.
    assert_eq!(h.io_update(&mut io, L1, 22, uc(NOT_DEV, false)), Err(Errno::EPERM));
    // Cached or write-back-ish: EINVAL before the right is asked.
    for bits in [PteFlags::NO_CACHE, PteFlags::WRITE_THROUGH, PteFlags::empty()] {
        let val = Pte::new(DEV, PteFlags::PRESENT | PteFlags::WRITABLE | bits).0;
        assert_eq!(h.io_update(&mut io, L1, 22, val), Err(Errno::EINVAL));
    }
    // The PAT bit stays refused (rule 1).
    assert_eq!(h.io_update(&mut io, L1, 22, uc(DEV, false) | 1 << 7), Err(Errno::EINVAL));
    assert_eq!(io.maps[&DEV], 1);
    // Writable MMIO takes no frame-table type: there is none to take.
    assert!(h.frames.get(DEV).is_err());
}

#[test]
fn rule9_every_dropped_device_entry_is_given_back_once() {
    let mut h = H::new();
    let mut io = FakeIo::default();
    h.io_update(&mut io, L1, 20, uc(DEV, true)).unwrap();
    // Rewriting it with itself: counted once.
    h.io_update(&mut io, L1, 20, uc(DEV, true)).unwrap();
    assert_eq!(io.maps[&DEV], 1);
    // Overwritten by mmu_update (it is no grant mapping: not EBUSY).
    h.io_update(&mut io, L1, 20, 0).unwrap();
    assert_eq!(io.maps[&DEV], 0);
    // Through update_va_mapping, mapped and unmapped.
    let root = h.root;
    let va = 20 * PAGE_SIZE;
    Mm::new(&mut h.mem, &mut h.frames, ENTRY)
        .with_device_memory(&mut io)
        .update_va_mapping(D, root, va, uc(DEV, true))
        .unwrap();
    assert_eq!(io.maps[&DEV], 1);
    Mm::new(&mut h.mem, &mut h.frames, ENTRY)
        .with_device_memory(&mut io)
        .update_va_mapping(D, root, va, rw(SPARE))
        .unwrap();
    assert_eq!(io.maps[&DEV], 0);
    // A table holding device entries, pinned and unpinned: the pin takes
    // them, the unpin (devalidation) gives them back.
    let t = SPARE + 1;
    h.raw(t, 0, uc(DEV, true));
    h.raw(t, 1, uc(DEV_RO, false));
    Mm::new(&mut h.mem, &mut h.frames, ENTRY).with_device_memory(&mut io).pin_table(D, t, 1).unwrap();
    assert_eq!((io.maps[&DEV], io.maps[&DEV_RO]), (1, 1));
    Mm::new(&mut h.mem, &mut h.frames, ENTRY).with_device_memory(&mut io).unpin_table(D, t).unwrap();
    assert_eq!((io.maps[&DEV], io.maps[&DEV_RO]), (0, 0));
    // A pin that fails part-way gives back what it took.
    h.raw(t, 2, uc(NOT_DEV, false));
    let r = Mm::new(&mut h.mem, &mut h.frames, ENTRY).with_device_memory(&mut io).pin_table(D, t, 1);
    assert_eq!(r, Err(Errno::EPERM));
    assert_eq!((io.maps[&DEV], io.maps[&DEV_RO]), (0, 0));
}

#[test]
fn rule9_a_device_frame_never_becomes_a_page_table() {
    let mut h = H::new();
    let mut io = FakeIo::default();
    for level in 1..=4 {
        let r = Mm::new(&mut h.mem, &mut h.frames, ENTRY).with_device_memory(&mut io).pin_table(D, DEV, level);
        assert_eq!(r, Err(Errno::EPERM));
    }
    // Nor is it linked as a table, at any upper level.
    for (table, level) in [(L2, 2u8), (L3, 3), (L4, 4)] {
        let _ = level;
        assert_eq!(h.io_update(&mut io, table, 5, rw(DEV)), Err(Errno::EPERM));
    }
    let mut root = h.root;
    let r = Mm::new(&mut h.mem, &mut h.frames, ENTRY).with_device_memory(&mut io).new_baseptr(D, &mut root, DEV);
    assert_eq!(r, Err(Errno::EPERM));
    assert!(io.maps.values().all(|&n| n == 0));
}

#[test]
fn rule9_the_guest_memory_accessor_refuses_device_memory() {
    // A hypercall buffer in device memory is EFAULT, never a device access.
    let mut h = H::new();
    let mut io = FakeIo::default();
    h.io_update(&mut io, L1, 20, uc(DEV, true)).unwrap();
    let root = h.root;
    let v = crate::mm::guest_mem::GuestView { mem: &mut h.mem, frames: &h.frames, root, dom: D };
    let mut b = [0u8; 8];
    assert_eq!(v.copy_from(crate::mm::guest_mem::GuestVa(20 * PAGE_SIZE), &mut b), Err(Errno::EFAULT));
}

#[test]
fn rule9_ram_is_never_device_memory_whatever_the_cache_bits() {
    // dom0's validator, with the right: RAM frames inside the frame table
    // are judged by rules 2-5 alone, never by the device-memory right.
    let mut h = H::new();
    let mut io = FakeIo::default();
    // Another domain's, the hypervisor's, free or reserved RAM: EPERM.
    for m in [OTHER_FIRST, HYP_FIRST, FREE_FIRST, 0, 100] {
        for w in [false, true] {
            assert_eq!(h.io_update(&mut io, L1, 22, uc(m, w)), Err(Errno::EPERM), "frame {m:#x} writable {w}");
        }
    }
    // Its own page tables stay unwritable (rule 5), uncached or not.
    for t in [L4, L3, L2, L1] {
        assert_eq!(h.io_update(&mut io, L1, 22, uc(t, true)), Err(Errno::EBUSY), "table {t:#x}");
    }
    // Its own data page mapped uncached is an ordinary RAM mapping: a
    // Writable reference, and the right is never asked.
    let before = h.frames.get(SPARE).unwrap().type_count;
    assert_eq!(h.io_update(&mut io, L1, 22, uc(SPARE, true)), Ok(()));
    assert_eq!(h.frames.get(SPARE).unwrap().type_count, before + 1);
    assert!(io.maps.is_empty(), "RAM was counted as device memory");
    assert_eq!(h.read(L1, 22), uc(SPARE, true));
}
