//! Host tests of the grant rules (module docs of [`crate::grant`]), named
//! after the rule they check, and of hostile input.

use super::*;
use crate::mm::frames::{FrameInfo, MAX_FOREIGN};
use crate::mm::guest_mem::fake::FakeMem;
use pvguest_abi::grant::{notify, GnttabCopy, MapGrantRef};
use std::collections::BTreeMap;
use std::vec;

/// The granter.
const A: DomId = DomId::of(1);
/// The grantee.
const B: DomId = DomId::of(2);
/// Another domain.
const C: DomId = DomId::of(3);

const RW: u16 = gtf::PERMIT_ACCESS;
const RO: u16 = gtf::PERMIT_ACCESS | gtf::READONLY;
const VA: u64 = 0xffff_8000_0010_0000;

/// Machine memory whose next `flips` compare-exchanges find the entry
/// changed by the granter "on another CPU" (`interfere` rewrites it first).
#[derive(Default)]
struct TestMem {
    inner: FakeMem,
    flips: u32,
    interfere: Option<fn(u64) -> u64>,
}

impl PhysMem for TestMem {
    fn read_u64(&self, pa: u64) -> u64 {
        self.inner.read_u64(pa)
    }
    fn write_u64(&mut self, pa: u64, val: u64) {
        self.inner.write_u64(pa, val)
    }
    fn read(&self, pa: u64, buf: &mut [u8]) {
        self.inner.read(pa, buf)
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        self.inner.write(pa, data)
    }
    fn zero_frame(&mut self, mfn: Mfn) {
        self.inner.zero_frame(mfn)
    }
    fn cmpxchg_u64(&mut self, pa: u64, current: u64, new: u64) -> Result<u64, u64> {
        if self.flips > 0 {
            self.flips -= 1;
            let f = self.interfere.unwrap_or(|w| w ^ u64::from(gtf::PWT));
            let w = self.inner.read_u64(pa);
            self.inner.write_u64(pa, f(w));
        }
        self.inner.cmpxchg_u64(pa, current, new)
    }
}

#[derive(Default)]
struct Doms(BTreeMap<DomId, (GrantTable, Maptrack)>);

impl GrantDomains for Doms {
    fn table(&mut self, dom: DomId) -> Option<&mut GrantTable> {
        self.0.get_mut(&dom).map(|d| &mut d.0)
    }
    fn maptrack(&mut self, dom: DomId) -> Option<&mut Maptrack> {
        self.0.get_mut(&dom).map(|d| &mut d.1)
    }
    fn table_and_maptrack(&mut self, granter: DomId, grantee: DomId) -> Option<(&mut GrantTable, &mut Maptrack)> {
        if granter == grantee {
            return None;
        }
        let (mut t, mut m) = (None, None);
        for (id, (table, maptrack)) in self.0.iter_mut() {
            if *id == granter {
                t = Some(table);
            } else if *id == grantee {
                m = Some(maptrack);
            }
        }
        Some((t?, m?))
    }
}

struct Rig {
    frames: FrameTable<'static>,
    mem: TestMem,
    doms: Doms,
}

impl Rig {
    /// Three live domains with default quotas over 64 free frames; A has a
    /// one-frame table.
    fn new() -> Rig {
        Rig::with_maptrack(DEFAULT_MAPTRACK)
    }

    fn with_maptrack(quota: u32) -> Rig {
        let store = Box::leak(vec![FrameInfo::RESERVED; 600].into_boxed_slice());
        let mut frames = FrameTable::new(store);
        frames.add_free_range(1, 600);
        let mut doms = Doms::default();
        for d in [A, B, C] {
            doms.0.insert(d, (GrantTable::new(DEFAULT_GRANT_FRAMES), Maptrack::new(quota)));
        }
        let mut r = Rig { frames, mem: TestMem::default(), doms };
        r.g().setup_table(A, 1).unwrap();
        r
    }

    fn g(&mut self) -> Gnttab<'_, 'static, Doms, TestMem> {
        Gnttab::new(&mut self.doms, &mut self.frames, &mut self.mem)
    }

    fn page(&mut self, dom: DomId) -> Mfn {
        self.frames.alloc(Owner::Domain(dom)).unwrap()
    }

    fn table(&mut self, dom: DomId) -> &mut GrantTable {
        self.doms.table(dom).unwrap()
    }

    fn entry_pa(&mut self, granter: DomId, gref: u32) -> u64 {
        self.table(granter).entry_pa(gref).unwrap()
    }

    /// The granter writes entry `gref` (a plain store, as a guest may).
    fn write_entry(&mut self, granter: DomId, gref: u32, flags: u16, domid: DomId, frame: Mfn) {
        let pa = self.entry_pa(granter, gref);
        let e = GrantEntryV1 { flags, domid: domid.raw(), frame: frame as u32 };
        self.mem.write_u64(pa, e.to_word());
    }

    fn entry(&mut self, granter: DomId, gref: u32) -> GrantEntryV1 {
        let pa = self.entry_pa(granter, gref);
        GrantEntryV1::from_word(self.mem.read_u64(pa))
    }

    /// A grants a fresh page of its own to `to` as `gref`.
    fn grant(&mut self, gref: u32, to: DomId, flags: u16) -> Mfn {
        let m = self.page(A);
        self.write_entry(A, gref, flags, to, m);
        m
    }

    fn map_raw(&mut self, grantee: DomId, dom: u16, gref: u32, flags: u32) -> Result<Mapped, GrantError> {
        let raw = MapGrantRef { host_addr: VA, flags, gref, dom, ..Default::default() };
        let req = MapRequest::decode(&raw, grantee)?;
        self.g().map(grantee, &req)
    }

    fn map(&mut self, grantee: DomId, granter: DomId, gref: u32, readonly: bool) -> Result<Mapped, GrantError> {
        let ro = if readonly { gntmap::READONLY } else { 0 };
        self.map_raw(grantee, granter.raw(), gref, gntmap::HOST_MAP | ro)
    }

    fn unmap(&mut self, grantee: DomId, handle: u32) -> Result<Unmapped, GrantError> {
        let mt = self.doms.maptrack(grantee).unwrap();
        let m = mt.check_unmap(handle, VA, 0)?;
        assert_eq!(m.host.unwrap().addr, VA);
        // (The page-table side clears the entry and flushes here.)
        self.g().unmap(grantee, handle)
    }

    fn info(&self, m: Mfn) -> FrameInfo {
        self.frames.get(m).unwrap()
    }

    fn flags(&mut self, gref: u32) -> u16 {
        self.entry(A, gref).flags
    }

    fn copy_raw(&mut self, caller: DomId, raw: &GnttabCopy) -> Result<CopyPlan, GrantError> {
        let op = CopyOp::decode(raw, caller)?;
        self.g().copy(caller, &op)
    }

    /// A snapshot of everything a failed operation must leave unchanged.
    fn snapshot(&mut self) -> (std::vec::Vec<FrameInfo>, std::vec::Vec<u64>, std::vec::Vec<u32>) {
        let frames = (0..self.frames.len() as u64).map(|m| self.frames.get(m).unwrap()).collect();
        let pa = self.entry_pa(A, 0);
        let entries = (0..ENTRIES_PER_FRAME as u64).map(|i| self.mem.read_u64(pa + 8 * i)).collect();
        let maps = self.doms.0.values().map(|d| d.1.len()).collect();
        (frames, entries, maps)
    }
}

fn copy_op(src: (u64, u16, u16), dst: (u64, u16, u16), len: u16, flags: u16) -> GnttabCopy {
    let ptr = |(u, domid, offset): (u64, u16, u16)| abi::CopyPtr { u, domid, offset, pad: 0 };
    GnttabCopy { source: ptr(src), dest: ptr(dst), len, flags, ..Default::default() }
}

const SELF: u16 = pvguest_abi::DOMID_SELF as u16;

// ---- setup_table, query_size, the frame quota --------------------------

#[test]
fn setup_gives_zeroed_writable_frames_of_the_granter_up_to_its_quota() {
    let mut r = Rig::new();
    let first = r.table(A).frames()[0];
    r.mem.inner.write(first * PAGE_SIZE, &[0xaa; 8]);
    let got = r.g().setup_table(A, 3).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], first, "growing keeps the frames the domain already maps");
    for &m in &got {
        let f = r.info(m);
        assert_eq!((f.owner, f.ty, f.type_count), (Owner::Domain(A), FrameType::Writable, 1));
        // Held Writable: the domain can never make it a page table.
        let conflict = FrameError::TypeConflict { mfn: m, have: FrameType::Writable };
        assert_eq!(r.frames.get_type_ref(m, A, FrameType::PageTable(1)), Err(conflict));
    }
    let mut b = [0u8; 8];
    r.mem.read(got[1] * PAGE_SIZE, &mut b);
    assert_eq!(b, [0; 8], "new frames are zeroed");
    r.mem.read(first * PAGE_SIZE, &mut b);
    assert_eq!(b, [0xaa; 8], "existing frames are not");
    assert_eq!(r.table(A).nr_entries(), 3 * 512);
    // Asking for fewer reports that many and changes nothing.
    assert_eq!(r.g().setup_table(A, 1).unwrap().as_slice(), &got[..1]);
    assert_eq!(r.g().query_size(A), Ok((3, DEFAULT_GRANT_FRAMES)));
    assert_eq!(r.g().query_size(DomId::of(77)), Err(GrantError::BadDomain));
    assert_eq!(r.g().setup_table(DomId::of(77), 1), Err(GrantError::BadDomain));
}

#[test]
fn quota_grant_frames_exhausted_is_no_space_and_changes_nothing() {
    let mut r = Rig::new();
    let free = r.frames.free_count();
    let e = r.g().setup_table(A, DEFAULT_GRANT_FRAMES + 1).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::FrameQuota, gntst::NO_SPACE));
    assert_eq!((r.frames.free_count(), r.table(A).size().0), (free, 1));
    assert_eq!(r.g().setup_table(A, u32::MAX), Err(GrantError::FrameQuota));
    assert_eq!(r.g().setup_table(A, DEFAULT_GRANT_FRAMES).unwrap().len(), DEFAULT_GRANT_FRAMES as usize);
    // The quota is clamped to the hypervisor's maximum.
    assert_eq!(GrantTable::new(u32::MAX).size(), (0, MAX_GRANT_FRAMES));
    // Out of machine memory: refused before anything is allocated.
    while r.frames.alloc(Owner::Domain(C)).is_ok() {}
    let e = r.g().setup_table(B, 2).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::OutOfMemory, gntst::NO_SPACE));
    assert_eq!(r.table(B).size().0, 0);
}

// ---- map: validation of the copy --------------------------------------

#[test]
fn map_returns_a_handle_and_the_machine_address_and_pins_the_grant() {
    let mut r = Rig::new();
    let m = r.grant(5, B, RW);
    let got = r.map(B, A, 5, false).unwrap();
    assert_eq!(got.handle, 0);
    assert_eq!(got.mapping.mfn, m);
    assert_eq!(got.mapping.machine_addr(), m * PAGE_SIZE);
    assert!(got.mapping.writable);
    assert_eq!(got.mapping.host, Some(HostMapping { addr: VA, contains_pte: false, application: false, pte: 0 }));
    assert_eq!(r.flags(5), RW | gtf::READING | gtf::WRITING);
    assert_eq!(r.entry(A, 5).frame as u64, m, "the hypervisor writes only the in-use bits");
    assert!(r.table(A).in_use(5));
    assert!(!r.table(A).in_use(6));
    let f = r.info(m);
    assert_eq!((f.foreign, f.ty, f.type_count), (1, FrameType::Writable, 1));
    assert_eq!(r.doms.maptrack(B).unwrap().get(0), Ok(&got.mapping));
    assert_eq!(r.table(A).mapped_frames().collect::<std::vec::Vec<_>>(), [m]);
}

#[test]
fn read_only_grant_is_never_mapped_writable() {
    let mut r = Rig::new();
    let m = r.grant(1, B, RO);
    let before = r.snapshot();
    let e = r.map(B, A, 1, false).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::ReadOnly, gntst::PERMISSION_DENIED));
    assert_eq!(r.snapshot(), before, "a refused map changes nothing");
    let got = r.map(B, A, 1, true).unwrap();
    assert!(!got.mapping.writable);
    assert_eq!(r.flags(1), RO | gtf::READING, "read-only use sets only GTF_reading");
    let f = r.info(m);
    assert_eq!((f.foreign, f.ty, f.type_count), (1, FrameType::None, 0), "no writable reference");
    // A writable grant mapped read-only is a read-only mapping.
    r.grant(2, B, RW);
    let got = r.map(B, A, 2, true).unwrap();
    assert!(!got.mapping.writable);
    assert_eq!(r.flags(2), RW | gtf::READING);
}

/// What a hostile map case is: description, `dom` and `ref` of the
/// request, the entry written (flags, domid, frame), the error and its code.
type HostileMap = (&'static str, u16, u32, u16, DomId, Mfn, GrantError, i16);

#[test]
fn hostile_refs_are_refused_and_change_nothing() {
    let mut r = Rig::new();
    let mine = r.page(A);
    let bs = r.page(B);
    let cases: &[HostileMap] = &[
        ("out of range", A.raw(), 512, RW, B, mine, GrantError::BadRef, gntst::BAD_GNTREF),
        ("far out of range", A.raw(), u32::MAX, RW, B, mine, GrantError::BadRef, gntst::BAD_GNTREF),
        ("invalid entry", A.raw(), 3, gtf::INVALID | gtf::READONLY, B, mine, GrantError::NotGranted, gntst::BAD_GNTREF),
        ("transfer entry", A.raw(), 3, gtf::ACCEPT_TRANSFER, B, mine, GrantError::NotGranted, gntst::BAD_GNTREF),
        ("transitive entry", A.raw(), 3, gtf::TRANSITIVE, B, mine, GrantError::NotGranted, gntst::BAD_GNTREF),
        ("another domain's grant", A.raw(), 3, RW, C, mine, GrantError::NotGrantee, gntst::PERMISSION_DENIED),
        ("forged frame of the grantee", A.raw(), 3, RW, B, bs, GrantError::BadFrame, gntst::BAD_PAGE),
        ("forged reserved frame", A.raw(), 3, RW, B, 0, GrantError::BadFrame, gntst::BAD_PAGE),
        ("forged frame past memory", A.raw(), 3, RW, B, 0xffff_ffff, GrantError::BadFrame, gntst::BAD_PAGE),
        ("granter without a table", C.raw(), 0, RW, B, mine, GrantError::BadRef, gntst::BAD_GNTREF),
        ("no such domain", 77, 3, RW, B, mine, GrantError::BadDomain, gntst::BAD_DOMAIN),
        ("reserved id", 0x7ff5, 3, RW, B, mine, GrantError::BadDomain, gntst::BAD_DOMAIN),
        ("own grant (DOMID_SELF)", SELF, 3, RW, B, mine, GrantError::BadDomain, gntst::BAD_DOMAIN),
    ];
    for &(what, dom, gref, flags, to, frame, want, status) in cases {
        r.write_entry(A, 3, flags, to, frame);
        let before = r.snapshot();
        let got = r.map_raw(B, dom, gref, gntmap::HOST_MAP).map(|m| m.handle);
        assert_eq!(got, Err(want), "{what}");
        assert_eq!(want.status(), status, "{what}");
        assert_eq!(r.snapshot(), before, "{what}: nothing changed");
    }
    // B's own table, named by id: still its own.
    r.g().setup_table(B, 1).unwrap();
    assert_eq!(r.map(B, B, 0, false).map(|m| m.handle), Err(GrantError::BadDomain));
}

#[test]
fn bad_map_flags_are_general_errors() {
    let mut r = Rig::new();
    r.grant(0, B, RW);
    for flags in [
        0,
        gntmap::READONLY,
        gntmap::DEVICE_MAP | gntmap::CONTAINS_PTE,
        gntmap::DEVICE_MAP | gntmap::APPLICATION_MAP,
        gntmap::HOST_MAP | 1 << 9,
    ] {
        let e = r.map_raw(B, A.raw(), 0, flags).unwrap_err();
        assert_eq!((e, e.status()), (GrantError::BadFlags, gntst::GENERAL_ERROR), "{flags:#x}");
    }
    assert_eq!(r.flags(0), RW);
    // A device-only mapping has no host part; its machine address is the
    // device address.
    let got = r.map_raw(B, A.raw(), 0, gntmap::DEVICE_MAP | gntmap::READONLY).unwrap();
    assert_eq!((got.mapping.host, got.mapping.device), (None, true));
    let mt = r.doms.maptrack(B).unwrap();
    assert_eq!(mt.check_unmap(got.handle, VA, 0), Err(GrantError::BadVirtAddr));
    assert_eq!(mt.check_unmap(got.handle, 0, got.mapping.machine_addr()).map(|m| m.mfn), Ok(got.mapping.mfn));
}

#[test]
fn writable_grant_of_a_page_table_is_never_mapped_writable() {
    let mut r = Rig::new();
    let pt = r.grant(4, B, RW);
    let _ = r.frames.get_type_ref(pt, A, FrameType::PageTable(1)).unwrap();
    let before = r.snapshot();
    let e = r.map(B, A, 4, false).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::NotWritableFrame, gntst::BAD_PAGE));
    assert_eq!(r.snapshot(), before, "the in-use bits were cleared again");
    assert!(!r.table(A).in_use(4));
    // Read-only, as mmu_update allows for one's own tables.
    assert!(r.map(B, A, 4, true).is_ok());
}

// ---- compare-exchange ---------------------------------------------------

#[test]
fn flags_change_only_by_compare_exchange_of_the_validated_copy() {
    let mut r = Rig::new();
    r.grant(0, B, RW);
    // The granter flips a cache bit on every try: never stable.
    r.mem.flips = CAS_RETRIES;
    let e = r.map(B, A, 0, false).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::Unstable, gntst::EAGAIN));
    assert_eq!(r.flags(0) & (gtf::READING | gtf::WRITING), 0, "nothing was set");
    assert!(!r.table(A).in_use(0));
    assert_eq!(r.doms.maptrack(B).unwrap().len(), 0);
    // Stable on the last try: the entry is validated again and used.
    r.mem.flips = CAS_RETRIES - 1;
    assert!(r.map(B, A, 0, false).is_ok());
    assert_eq!(r.flags(0) & (gtf::READING | gtf::WRITING), gtf::READING | gtf::WRITING);
}

#[test]
fn an_entry_changed_between_copy_and_exchange_is_validated_again() {
    let mut r = Rig::new();
    r.grant(0, B, RW);
    // Between the copy and the exchange the granter makes it read-only:
    // the retry sees it and refuses the writable map.
    r.mem.flips = 1;
    r.mem.interfere = Some(|w| w | u64::from(gtf::READONLY));
    assert_eq!(r.map(B, A, 0, false).map(|m| m.handle), Err(GrantError::ReadOnly));
    // Or gives it to another domain, or swaps the frame for one not its own.
    r.grant(1, B, RW);
    r.mem.flips = 1;
    r.mem.interfere = Some(|w| (w & !0xffff_0000) | u64::from(C.raw()) << 16);
    assert_eq!(r.map(B, A, 1, false).map(|m| m.handle), Err(GrantError::NotGrantee));
    r.grant(2, B, RW);
    r.mem.flips = 1;
    r.mem.interfere = Some(|w| w & 0xffff_ffff);
    assert_eq!(r.map(B, A, 2, false).map(|m| m.handle), Err(GrantError::BadFrame));
    for g in 0..3 {
        assert!(!r.table(A).in_use(g));
        assert_eq!(r.flags(g) & (gtf::READING | gtf::WRITING), 0);
    }
}

// ---- pins, release, revocation -----------------------------------------

#[test]
fn bits_stay_set_until_the_last_pin_goes() {
    let mut r = Rig::new();
    let m = r.grant(7, B, RW);
    let ro = r.map(B, A, 7, true).unwrap();
    let rw = r.map(B, A, 7, false).unwrap();
    let rw2 = r.map(B, A, 7, false).unwrap();
    assert_eq!(r.flags(7), RW | gtf::READING | gtf::WRITING);
    assert_eq!((r.info(m).foreign, r.info(m).type_count), (3, 2));
    let _ = r.unmap(B, rw.handle).unwrap();
    assert_eq!(r.flags(7), RW | gtf::READING | gtf::WRITING, "one writable pin left");
    let _ = r.unmap(B, rw2.handle).unwrap();
    assert_eq!(r.flags(7), RW | gtf::READING, "the last writable pin clears GTF_writing");
    assert!(r.table(A).in_use(7));
    let _ = r.unmap(B, ro.handle).unwrap();
    assert_eq!(r.flags(7), RW, "the last pin clears GTF_reading");
    assert!(!r.table(A).in_use(7));
    assert_eq!(r.info(m), FrameInfo::untyped(Owner::Domain(A)));
}

/// The granter's end-access, as Xen's protocol has it: CAS the flags it
/// read (without in-use bits) to 0.
fn end_access(r: &mut Rig, gref: u32) -> Result<(), u16> {
    let pa = r.entry_pa(A, gref);
    let w = r.mem.read_u64(pa);
    let expect = w & !u64::from(gtf::READING | gtf::WRITING);
    r.mem.cmpxchg_u64(pa, expect, expect & !0xffff).map(|_| ()).map_err(|now| now as u16)
}

#[test]
fn revoke_while_mapped_fails_and_the_entry_is_not_reused() {
    let mut r = Rig::new();
    let m = r.grant(9, B, RW);
    let h = r.map(B, A, 9, false).unwrap().handle;
    // The granter cannot end access, and sees why.
    assert_eq!(end_access(&mut r, 9), Err(RW | gtf::READING | gtf::WRITING));
    assert!(r.table(A).in_use(9));
    // A granter that overwrites the entry anyway revokes nothing: the
    // mapping keeps its frame, and the entry is not reused while pinned.
    r.write_entry(A, 9, gtf::INVALID, B, 0);
    assert!(r.table(A).in_use(9));
    assert_eq!(r.doms.maptrack(B).unwrap().get(h).unwrap().mfn, m);
    assert_eq!(r.map(B, A, 9, false).map(|m| m.handle), Err(GrantError::NotGranted));
    // Rewritten for another grantee and frame: refused to that grantee too.
    let other = r.page(A);
    r.write_entry(A, 9, RW, C, other);
    let e = r.map(C, A, 9, false).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::Changed, gntst::BAD_GNTREF));
    assert_eq!(
        r.copy_raw(C, &copy_op((9, A.raw(), 0), (r.frames.len() as u64, SELF, 0), 1, gntcopy::SOURCE_GREF)),
        Err(GrantError::Changed)
    );
    assert_eq!(r.map(B, A, 9, false).map(|m| m.handle), Err(GrantError::NotGrantee));
    // Same grantee, other frame: refused as well.
    r.write_entry(A, 9, RW, B, other);
    assert_eq!(r.map(B, A, 9, false).map(|m| m.handle), Err(GrantError::Changed));
    assert_eq!(r.info(other).foreign, 0);
    // Once the last mapping goes the reference is free for the new grant.
    let _ = r.unmap(B, h).unwrap();
    assert!(!r.table(A).in_use(9));
    assert_eq!(r.info(m).foreign, 0);
    r.write_entry(A, 9, RW, C, other);
    assert_eq!(r.map(C, A, 9, false).unwrap().mapping.mfn, other);
}

#[test]
fn map_after_revoke_fails() {
    let mut r = Rig::new();
    r.grant(2, B, RW);
    let h = r.map(B, A, 2, false).unwrap().handle;
    let _ = r.unmap(B, h).unwrap();
    assert_eq!(end_access(&mut r, 2), Ok(()), "unused: the granter ends access");
    let e = r.map(B, A, 2, false).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::NotGranted, gntst::BAD_GNTREF));
    assert_eq!(r.flags(2), gtf::INVALID);
}

#[test]
fn in_use_is_false_out_of_range_and_for_an_empty_table() {
    let r = Rig::new();
    assert!(!GrantTable::new(4).in_use(0));
    let t = &r.doms.0[&A].0;
    assert!(!t.in_use(512) && !t.in_use(u32::MAX));
}

// ---- unmap ---------------------------------------------------------------

#[test]
fn unmap_checks_the_handle_and_the_addresses() {
    let mut r = Rig::new();
    r.grant(0, B, RW);
    let got = r.map(B, A, 0, false).unwrap();
    let mt = r.doms.maptrack(B).unwrap();
    for h in [1, 63, 64, u32::MAX] {
        assert_eq!(mt.check_unmap(h, VA, 0).map(|m| m.gref), Err(GrantError::BadHandle));
    }
    let e = mt.check_unmap(got.handle, VA + 4096, 0).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::BadVirtAddr, gntst::BAD_VIRT_ADDR));
    let e = mt.check_unmap(got.handle, VA, 0x1000).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::BadDevAddr, gntst::BAD_DEV_ADDR));
    assert_eq!(mt.check_unmap(got.handle, VA, got.mapping.machine_addr()), Ok(got.mapping));
    // Another domain cannot use B's handle.
    assert_eq!(r.g().unmap(C, got.handle).map(|u| u.mapping), Err(GrantError::BadHandle));
    assert_eq!(r.g().unmap(DomId::of(77), got.handle).map(|u| u.mapping), Err(GrantError::BadDomain));
    let u = r.unmap(B, got.handle).unwrap();
    assert_eq!((u.mapping, u.notify, u.frame_freed), (got.mapping, None, false));
    // Twice: the handle is gone.
    let e = r.g().unmap(B, got.handle).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::BadHandle, gntst::BAD_HANDLE));
}

#[test]
fn cancel_map_undoes_a_map_without_notifying() {
    let mut r = Rig::new();
    let m = r.grant(0, B, RW);
    let got = r.map(B, A, 0, false).unwrap();
    r.g().set_unmap_notify(B, got.handle, notify::CLEAR_BYTE | notify::SEND_EVENT, 0, 5).unwrap();
    r.mem.inner.write(m * PAGE_SIZE, &[7]);
    r.g().cancel_map(B, got.handle).unwrap();
    let mut b = [0u8];
    r.mem.inner.read(m * PAGE_SIZE, &mut b);
    assert_eq!(b, [7], "no notification for a mapping that never was");
    assert_eq!((r.flags(0), r.info(m).foreign, r.info(m).type_count), (RW, 0, 0));
    assert_eq!(r.g().cancel_map(B, got.handle), Err(GrantError::BadHandle));
}

/// `map` borrows the granter's table and the grantee's maptrack in one
/// look-up; its errors keep the order of the checks: a full maptrack is
/// reported before a missing granter, and a missing grantee before both.
#[test]
fn map_errors_keep_their_order_with_one_look_up() {
    let mut r = Rig::with_maptrack(1);
    r.grant(0, B, RW);
    r.grant(1, B, RW);
    let nobody = DomId::of(77);
    assert_eq!(r.map(B, nobody, 0, false).map(|m| m.handle), Err(GrantError::BadDomain));
    assert_eq!(r.map(nobody, A, 0, false).map(|m| m.handle), Err(GrantError::BadDomain));
    assert_eq!(r.map(B, A, 0, false).map(|m| m.handle), Ok(0));
    assert_eq!(r.map(B, nobody, 1, false).map(|m| m.handle), Err(GrantError::MaptrackFull));
    assert_eq!(r.map(B, A, 1, false).map(|m| m.handle), Err(GrantError::MaptrackFull));
    assert_eq!(r.flags(1), RW, "a refused map leaves the grant untouched");
}

// ---- quotas ----------------------------------------------------------------

#[test]
fn quota_maptrack_exhausted_is_no_space_and_handles_are_reused() {
    let mut r = Rig::with_maptrack(3);
    for g in 0..4 {
        r.grant(g, B, RW);
    }
    let hs: std::vec::Vec<u32> = (0..3).map(|g| r.map(B, A, g, false).unwrap().handle).collect();
    assert_eq!(hs, [0, 1, 2]);
    let before = r.snapshot();
    let e = r.map(B, A, 3, false).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::MaptrackFull, gntst::NO_SPACE));
    assert_eq!(r.snapshot(), before, "refused before the grant is touched");
    assert_eq!(r.flags(3), RW);
    let _ = r.unmap(B, 1).unwrap();
    assert_eq!(r.map(B, A, 3, false).unwrap().handle, 1, "a freed handle is reused");
    assert_eq!(r.doms.maptrack(B).unwrap().len(), 3);
    // Another grantee has its own quota.
    r.grant(10, C, RW);
    assert!(r.map(C, A, 10, false).is_ok());
    assert_eq!(Maptrack::new(u32::MAX).quota(), MAX_MAPTRACK);
}

#[test]
fn quota_mappings_of_one_frame_exhausted_is_no_space() {
    let mut r = Rig::with_maptrack(400);
    let m = r.grant(0, B, RO);
    for _ in 0..MAX_FOREIGN {
        r.map(B, A, 0, true).unwrap();
    }
    let e = r.map(B, A, 0, true).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::FrameMapsFull, gntst::NO_SPACE));
    assert_eq!(r.info(m).foreign, MAX_FOREIGN);
    assert_eq!(r.table(A).record(0).unwrap().readers, u32::from(MAX_FOREIGN), "the extra pin was dropped");
    assert_eq!(r.doms.maptrack(B).unwrap().len(), u32::from(MAX_FOREIGN));
}

// ---- copy ------------------------------------------------------------------

#[test]
fn copy_between_grants_and_own_frames() {
    let mut r = Rig::new();
    let src = r.grant(0, B, RO);
    let dst = r.grant(1, B, RW);
    let own = r.page(B);
    r.mem.inner.write(src * PAGE_SIZE + 100, b"granted bytes");
    // Grant -> own frame.
    let plan = r.copy_raw(B, &copy_op((0, A.raw(), 100), (own, SELF, 10), 13, gntcopy::SOURCE_GREF)).unwrap();
    assert_eq!(plan, CopyPlan { src: src * PAGE_SIZE + 100, dst: own * PAGE_SIZE + 10, len: 13 });
    let mut b = [0u8; 13];
    r.mem.inner.read(own * PAGE_SIZE + 10, &mut b);
    assert_eq!(&b, b"granted bytes");
    // Own frame (named by id) -> grant, and grant -> grant.
    r.copy_raw(B, &copy_op((own, B.raw(), 10), (1, A.raw(), 0), 13, gntcopy::DEST_GREF)).unwrap();
    r.copy_raw(B, &copy_op((1, A.raw(), 0), (1, A.raw(), 4000), 13, gntcopy::SOURCE_GREF | gntcopy::DEST_GREF))
        .unwrap();
    r.mem.inner.read(dst * PAGE_SIZE + 4000, &mut b);
    assert_eq!(&b, b"granted bytes");
    // A whole page.
    assert!(r.copy_raw(B, &copy_op((0, A.raw(), 0), (own, SELF, 0), 4096, gntcopy::SOURCE_GREF)).is_ok());
    // Nothing is held afterwards.
    assert_eq!((r.flags(0), r.flags(1)), (RO, RW));
    assert!(!r.table(A).in_use(0) && !r.table(A).in_use(1));
    for m in [src, dst, own] {
        assert_eq!(r.info(m).type_count, 0);
        assert_eq!(r.info(m).foreign, 0);
    }
}

#[test]
fn copy_within_one_frame_handles_overlap() {
    let mut r = Rig::new();
    let own = r.page(B);
    let data: std::vec::Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    r.mem.inner.write(own * PAGE_SIZE, &data);
    r.copy_raw(B, &copy_op((own, SELF, 0), (own, SELF, 300), 1000, 0)).unwrap();
    let mut b = vec![0u8; 1000];
    r.mem.inner.read(own * PAGE_SIZE + 300, &mut b);
    assert_eq!(b, data, "forward overlap copied as memmove");
    r.copy_raw(B, &copy_op((own, SELF, 300), (own, SELF, 0), 1000, 0)).unwrap();
    r.mem.inner.read(own * PAGE_SIZE, &mut b);
    assert_eq!(b, data, "backward overlap too");
}

#[test]
fn copy_across_a_page_boundary_is_bad_copy_arg() {
    let mut r = Rig::new();
    r.grant(0, B, RW);
    let own = r.page(B);
    for (so, dof, len) in
        [(4000, 0, 200), (0, 3997, 100), (0, 0, 4097), (4096, 0, 1), (u16::MAX, 0, 1), (0, 0, u16::MAX)]
    {
        let before = r.snapshot();
        let e = r.copy_raw(B, &copy_op((0, A.raw(), so), (own, SELF, dof), len, gntcopy::SOURCE_GREF)).unwrap_err();
        assert_eq!((e, e.status()), (GrantError::BadCopyArg, gntst::BAD_COPY_ARG), "{so} {dof} {len}");
        assert_eq!(r.snapshot(), before);
    }
    // Ending exactly at the page end is fine.
    assert!(r.copy_raw(B, &copy_op((0, A.raw(), 4000), (own, SELF, 0), 96, gntcopy::SOURCE_GREF)).is_ok());
}

#[test]
fn hostile_copies_are_refused_and_write_nothing() {
    let mut r = Rig::new();
    let ro = r.grant(0, B, RO);
    let pt = r.grant(1, B, RW);
    let _ = r.frames.get_type_ref(pt, A, FrameType::PageTable(1)).unwrap();
    r.grant(2, C, RW);
    let own = r.page(B);
    let own_pt = r.page(B);
    let _ = r.frames.get_type_ref(own_pt, B, FrameType::PageTable(2)).unwrap();
    let theirs = r.page(C);
    r.mem.inner.write(own * PAGE_SIZE, &[0x5a; 16]);
    let s = gntcopy::SOURCE_GREF;
    let d = gntcopy::DEST_GREF;
    let cases: &[(&str, GnttabCopy, GrantError)] = &[
        ("from an unused ref", copy_op((3, A.raw(), 0), (own, SELF, 0), 8, s), GrantError::NotGranted),
        ("from a ref out of range", copy_op((512, A.raw(), 0), (own, SELF, 0), 8, s), GrantError::BadRef),
        ("from another domain's grant", copy_op((2, A.raw(), 0), (own, SELF, 0), 8, s), GrantError::NotGrantee),
        ("into a read-only grant", copy_op((own, SELF, 0), (0, A.raw(), 0), 8, d), GrantError::ReadOnly),
        ("into a granter's page table", copy_op((own, SELF, 0), (1, A.raw(), 0), 8, d), GrantError::NotWritableFrame),
        ("into its own page table", copy_op((own, SELF, 0), (own_pt, SELF, 0), 8, 0), GrantError::NotWritableFrame),
        ("from a frame not its own", copy_op((theirs, SELF, 0), (own, SELF, 0), 8, 0), GrantError::BadFrame),
        ("into a frame not its own", copy_op((own, SELF, 0), (theirs, SELF, 0), 8, 0), GrantError::BadFrame),
        (
            "a frame named by another domain",
            copy_op((theirs, C.raw(), 0), (own, SELF, 0), 8, 0),
            GrantError::NotOwnFrame,
        ),
        ("a granter that does not exist", copy_op((0, 77, 0), (own, SELF, 0), 8, s), GrantError::BadDomain),
        ("unknown flags", copy_op((0, A.raw(), 0), (own, SELF, 0), 8, s | 1 << 3), GrantError::BadFlags),
    ];
    for (what, op, want) in cases {
        let before = r.snapshot();
        let mem_before: std::vec::Vec<u8> = [ro, pt, own, own_pt, theirs]
            .iter()
            .flat_map(|&m| {
                let mut b = vec![0u8; 16];
                r.mem.inner.read(m * PAGE_SIZE, &mut b);
                b
            })
            .collect();
        assert_eq!(r.copy_raw(B, op), Err(*want), "{what}");
        assert_eq!(r.snapshot(), before, "{what}: nothing held");
        let mem_after: std::vec::Vec<u8> = [ro, pt, own, own_pt, theirs]
            .iter()
            .flat_map(|&m| {
                let mut b = vec![0u8; 16];
                r.mem.inner.read(m * PAGE_SIZE, &mut b);
                b
            })
            .collect();
        assert_eq!(mem_after, mem_before, "{what}: nothing written");
    }
    // Reading a read-only grant is fine.
    assert!(r.copy_raw(B, &copy_op((0, A.raw(), 0), (own, SELF, 0), 8, s)).is_ok());
}

// ---- death -------------------------------------------------------------------

#[test]
fn a_dead_granters_stale_mapping_never_releases_a_pin_of_its_successor() {
    // B maps A's grant 0; A dies and is reaped; a new domain gets A's id
    // (the allocator went round) with a new table, and grants its own
    // reference 0 to C, which maps it. B's old mapping names the same
    // granter id and reference: its unmap must leave C's pin alone.
    let mut r = Rig::new();
    r.grant(0, B, RW);
    let stale = r.map(B, A, 0, false).unwrap().handle;
    let old_id = r.table(A).id();
    r.table(A).retire();
    r.frames.release_domain(A);
    r.doms.0.insert(A, (GrantTable::new(DEFAULT_GRANT_FRAMES), Maptrack::new(DEFAULT_MAPTRACK)));
    assert_ne!(r.table(A).id(), old_id, "a new table has a new identity");
    r.g().setup_table(A, 1).unwrap();
    r.grant(0, C, RW);
    let c = r.map(C, A, 0, false).unwrap().handle;
    assert_eq!(r.flags(0), RW | gtf::READING | gtf::WRITING);
    let u = r.unmap(B, stale).unwrap();
    assert!(u.frame_freed, "the old frame goes with its last mapping");
    assert!(r.table(A).in_use(0), "the successor's pin for C stands");
    assert_eq!(r.flags(0), RW | gtf::READING | gtf::WRITING, "its in-use bits too");
    let u = r.unmap(C, c).unwrap();
    assert!(!u.frame_freed, "the successor's frame stays: its table holds it");
    assert!(!r.table(A).in_use(0));
}

#[test]
fn granter_dying_while_mapped_frees_the_frames_after_the_last_unmap() {
    let mut r = Rig::new();
    let rw = r.grant(0, B, RW);
    let ro = r.grant(1, B, RO);
    let idle = r.grant(2, B, RW);
    let h0 = r.map(B, A, 0, false).unwrap().handle;
    let h1 = r.map(B, A, 1, true).unwrap().handle;
    let h1b = r.map(B, A, 1, true).unwrap().handle;
    let table_frame = r.table(A).frames()[0];
    let mut mapped: std::vec::Vec<Mfn> = r.table(A).mapped_frames().collect();
    mapped.sort();
    assert_eq!(mapped, [rw, ro]);
    // A dies: its table is retired, then its frames are released.
    assert_eq!(r.table(A).retire(), 2);
    assert_eq!(r.table(A).mapped_frames().count(), 0);
    let owned = r.frames.count_owned(Owner::Domain(A));
    let free = r.frames.free_count();
    assert_eq!(r.frames.release_domain(A), owned - 2, "all but the two mapped frames");
    assert_eq!(r.frames.free_count(), free + owned - 2);
    for m in [rw, ro] {
        assert_eq!(r.info(m).owner, Owner::Orphan);
    }
    assert_eq!(r.info(idle).owner, Owner::Free);
    assert_eq!(r.info(table_frame).owner, Owner::Free);
    // The freed table frame may belong to someone else now: B's unmaps
    // must not touch it.
    r.mem.inner.write(table_frame * PAGE_SIZE, &[0xff; 16]);
    // Nothing new can be mapped from the dead granter.
    assert_eq!(r.map(B, A, 3, false).map(|m| m.handle), Err(GrantError::BadRef));
    let u = r.unmap(B, h0).unwrap();
    assert!(u.frame_freed, "the writable frame's last mapping");
    assert_eq!(r.info(rw), FrameInfo::untyped(Owner::Free));
    assert!(!r.unmap(B, h1).unwrap().frame_freed, "one mapping left");
    assert_eq!(r.info(ro).owner, Owner::Orphan);
    // Reaped: the domain is gone from the table altogether.
    r.doms.0.remove(&A);
    assert!(r.unmap(B, h1b).unwrap().frame_freed);
    assert_eq!(r.info(ro), FrameInfo::untyped(Owner::Free));
    let mut b = [0u8; 16];
    r.mem.inner.read(table_frame * PAGE_SIZE, &mut b);
    assert_eq!(b, [0xff; 16], "the dead granter's old table frame was never written");
    assert_eq!(r.frames.count_owned(Owner::Orphan), 0);
}

#[test]
fn grantee_dying_tears_down_all_its_mappings() {
    let mut r = Rig::new();
    r.g().setup_table(C, 1).unwrap();
    let a0 = r.grant(0, B, RW);
    let a1 = r.grant(1, B, RO);
    let c0 = r.page(C);
    r.write_entry(C, 0, RW, B, c0);
    let h = r.map(B, A, 0, false).unwrap().handle;
    r.map(B, A, 1, true).unwrap();
    r.map(B, C, 0, false).unwrap();
    // Another grantee's mapping of A's frame is not B's to tear down.
    r.grant(5, C, RW);
    let theirs = r.map(C, A, 5, false).unwrap();
    r.g().set_unmap_notify(B, h, notify::CLEAR_BYTE | notify::SEND_EVENT, 12, 33).unwrap();
    r.mem.inner.write(a0 * PAGE_SIZE + 12, &[1]);
    let mut gone = std::vec::Vec::new();
    for _ in 0..10 {
        match r.g().teardown_one(B) {
            Some(u) => gone.push(u),
            None => break,
        }
    }
    assert_eq!(gone.len(), 3);
    assert_eq!(gone.iter().filter_map(|u| u.notify).collect::<std::vec::Vec<_>>(), [33]);
    let mut b = [9u8];
    r.mem.inner.read(a0 * PAGE_SIZE + 12, &mut b);
    assert_eq!(b, [0], "the notify byte was cleared");
    assert!(r.doms.maptrack(B).unwrap().is_empty());
    assert_eq!(r.g().teardown_one(B), None);
    assert!(!r.table(A).in_use(0) && !r.table(A).in_use(1) && !r.table(C).in_use(0));
    assert_eq!((r.flags(0), r.flags(1), r.entry(C, 0).flags), (RW, RO, RW));
    for m in [a0, a1, c0] {
        assert_eq!(r.info(m).foreign, 0);
        assert_eq!(r.info(m).type_count, 0);
    }
    assert!(r.table(A).in_use(5));
    assert_eq!(r.doms.maptrack(C).unwrap().get(theirs.handle), Ok(&theirs.mapping));
    // The granters can end access now.
    assert_eq!(end_access(&mut r, 0), Ok(()));
}

#[test]
fn teardown_takes_every_mapping_once_in_steps() {
    let mut r = Rig::with_maptrack(200);
    r.grant(0, B, RO);
    for _ in 0..150 {
        r.map(B, A, 0, true).unwrap();
    }
    // Holes, and a mapping added part-way through the teardown.
    for h in [3, 64, 149] {
        let _ = r.unmap(B, h).unwrap();
    }
    let mut n = 0;
    while r.g().teardown_one(B).is_some() {
        n += 1;
        if n == 10 {
            r.map(B, A, 0, true).unwrap();
        }
    }
    assert_eq!(n, 148);
    assert!(!r.table(A).in_use(0));
    assert_eq!(r.flags(0), RO);
}

// ---- unmap notification --------------------------------------------------------

#[test]
fn unmap_notify_clears_a_byte_and_names_the_port() {
    let mut r = Rig::new();
    let m = r.grant(0, B, RW);
    let h = r.map(B, A, 0, false).unwrap().handle;
    r.mem.inner.write(m * PAGE_SIZE + 4095, &[0xee]);
    r.g().set_unmap_notify(B, h, notify::CLEAR_BYTE | notify::SEND_EVENT, 4095, 7).unwrap();
    let got = r.doms.maptrack(B).unwrap().get(h).unwrap().notify;
    assert_eq!(got, UnmapNotify { clear_byte: Some(4095), port: Some(7) });
    let u = r.unmap(B, h).unwrap();
    assert_eq!(u.notify, Some(7));
    let mut b = [1u8];
    r.mem.inner.read(m * PAGE_SIZE + 4095, &mut b);
    assert_eq!(b, [0]);
}

#[test]
fn unmap_notify_rules() {
    let mut r = Rig::new();
    r.grant(0, B, RO);
    r.grant(1, B, RW);
    let ro = r.map(B, A, 0, true).unwrap().handle;
    let rw = r.map(B, A, 1, false).unwrap().handle;
    let e = r.g().set_unmap_notify(B, ro, notify::CLEAR_BYTE, 0, 0).unwrap_err();
    assert_eq!((e, e.status()), (GrantError::ReadOnly, gntst::PERMISSION_DENIED));
    assert_eq!(r.g().set_unmap_notify(B, rw, notify::CLEAR_BYTE, 4096, 0), Err(GrantError::BadFlags));
    assert_eq!(r.g().set_unmap_notify(B, rw, 4, 0, 0), Err(GrantError::BadFlags));
    assert_eq!(r.g().set_unmap_notify(B, 99, notify::SEND_EVENT, 0, 3), Err(GrantError::BadHandle));
    assert_eq!(r.g().set_unmap_notify(C, rw, notify::SEND_EVENT, 0, 3), Err(GrantError::BadHandle));
    // An event alone is fine on a read-only mapping; 0 cancels.
    r.g().set_unmap_notify(B, ro, notify::SEND_EVENT, 0, 3).unwrap();
    r.g().set_unmap_notify(B, rw, notify::SEND_EVENT, 0, 4).unwrap();
    r.g().set_unmap_notify(B, rw, 0, 0, 4).unwrap();
    assert_eq!(r.unmap(B, ro).unwrap().notify, Some(3));
    assert_eq!(r.unmap(B, rw).unwrap().notify, None);
}

// ---- codes and decoding ----------------------------------------------------------

#[test]
fn every_error_has_a_status_and_a_message() {
    use GrantError::*;
    let all = [
        BadFlags,
        BadDomain,
        BadRef,
        NotGranted,
        NotGrantee,
        ReadOnly,
        BadFrame,
        NotWritableFrame,
        Changed,
        Unstable,
        BadHandle,
        BadVirtAddr,
        BadDevAddr,
        BadCopyArg,
        NotOwnFrame,
        FrameQuota,
        MaptrackFull,
        FrameMapsFull,
        OutOfMemory,
    ];
    for e in all {
        assert!((gntst::NO_SPACE..gntst::OKAY).contains(&e.status()), "{e:?}");
        assert!(!std::format!("{e}").is_empty());
    }
    let exhausted = [FrameQuota, MaptrackFull, FrameMapsFull, OutOfMemory];
    assert!(exhausted.iter().all(|e| e.status() == gntst::NO_SPACE));
}

#[test]
fn map_request_decoding() {
    let raw = MapGrantRef {
        host_addr: 0x1238,
        flags: gntmap::HOST_MAP | gntmap::CONTAINS_PTE | gntmap::APPLICATION_MAP | gntmap::CAN_FAIL,
        gref: 17,
        dom: A.raw(),
        ..Default::default()
    };
    let req = MapRequest::decode(&raw, B).unwrap();
    assert_eq!(
        req,
        MapRequest {
            granter: A,
            gref: 17,
            writable: true,
            host: Some(HostMapping { addr: 0x1238, contains_pte: true, application: true, pte: 0 }),
            device: false,
        }
    );
    let raw = MapGrantRef { dom: SELF, flags: gntmap::DEVICE_MAP, ..raw };
    assert_eq!(MapRequest::decode(&raw, B).map(|r| r.granter), Ok(B));
}
