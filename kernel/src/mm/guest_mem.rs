//! The one guest-memory accessor.
//!
//! A guest pointer is an *allegation*: [`GuestVa`] wraps it, and the only way
//! to turn it into machine memory is [`GuestView::translate`], which walks the
//! guest's page tables in software through the hypervisor's direct map. The
//! hypervisor never dereferences a guest virtual address with the CPU, so a
//! bad pointer can never fault the hypervisor: it becomes `EFAULT`.
//!
//! # Rules the walk enforces
//! 1. The address is canonical and below the entry area
//!    ([`pvguest_abi::layout::is_guest_va`]).
//! 2. Every level is present; for writes every level is writable; for
//!    accesses on behalf of ring 3, every level is user-accessible.
//! 3. Large pages are refused: guests map 4 KiB pages only.
//! 4. Every page-table frame on the walk and the final frame are owned by the
//!    accessing domain according to the frame table.
//!
//! Copies are done page by page; a copy that fails part-way reports `EFAULT`
//! and may have written a prefix (as `copy_to_user` does).
//!
//! # Remembered translations
//! [`GuestView::translate_remembered`] answers from a [`Remembered`] walk
//! of the same page, root, domain and access when it has one, and walks
//! (and remembers) otherwise. Only a walk that passed every rule above is
//! remembered, with the frame table's change counter
//! ([`FrameTable::epoch`]) at the time of the walk, and it is used only
//! while that counter is unchanged. A walk depends on page-table entries
//! and frame owners only (rules 2-4). Every change to frame ownership bumps
//! the counter by construction, and so does every other change to the frame
//! table except a grant mapping's foreign references, which keep every
//! owner (see *Remembered translations* in [`crate::mm::frames`]). Every
//! page-table write goes through an [`crate::mm::Mm`], whose construction
//! bumps it, except [`crate::mm::Mm::map_foreign_keeping_walks`], which
//! only makes a non-present entry present (no successful walk read it:
//! each level must be present), and
//! [`crate::mm::Mm::unmap_foreign_keeping_walks`], which only clears an
//! entry naming a frame the domain does not own (no successful walk read
//! it either: each table and the final frame must be the domain's). Page-table frames are never writable to a guest,
//! and none of the hypervisor's guest copies can reach one (rule 2 and the
//! validator's rules). So a remembered walk is exactly the walk that would
//! be made now. A memo made for a write also serves reads (writable implies
//! present at every level). (On SMP the counter must be shared, or bumped
//! on every CPU, as a TLB shootdown.)

use crate::mm::frames::{DomId, FrameTable, Mfn};
use crate::mm::paging::{Pte, PteFlags, PAGE_SIZE};
use pvguest_abi::{layout, Errno};

/// Access to machine memory through the hypervisor's direct map.
///
/// Implementations must accept any physical address inside a frame that
/// [`FrameTable`] knows about; callers only pass such addresses.
pub trait PhysMem {
    /// Reads a little-endian u64 at physical address `pa` (8-aligned).
    fn read_u64(&self, pa: u64) -> u64;
    /// Writes a u64 at physical address `pa` (8-aligned).
    fn write_u64(&mut self, pa: u64, val: u64);
    /// Copies `buf.len()` bytes from `pa`; the range lies within one frame.
    fn read(&self, pa: u64, buf: &mut [u8]);
    /// Copies `data` to `pa`; the range lies within one frame.
    fn write(&mut self, pa: u64, data: &[u8]);
    /// Fills the frame `mfn` with zeroes.
    fn zero_frame(&mut self, mfn: Mfn);
    /// ORs `bits` into the u64 at `pa` (8-aligned) as one atomic
    /// read-modify-write, and returns the old value. Shared-info pending
    /// and mask bits change only this way ([`crate::event`]), so that a
    /// guest vCPU on another CPU never loses a bit it set meanwhile. The
    /// default is a plain read and write, for memory no other CPU sees
    /// (host tests); the hypervisor's accessor is atomic.
    fn fetch_or_u64(&mut self, pa: u64, bits: u64) -> u64 {
        let old = self.read_u64(pa);
        self.write_u64(pa, old | bits);
        old
    }
    /// ANDs `bits` into the u64 at `pa`, atomically: see
    /// [`PhysMem::fetch_or_u64`].
    fn fetch_and_u64(&mut self, pa: u64, bits: u64) -> u64 {
        let old = self.read_u64(pa);
        self.write_u64(pa, old & bits);
        old
    }
    /// If the u64 at `pa` (8-aligned) equals `current`, replaces it with
    /// `new`, as one atomic compare-exchange; returns `Ok(current)` when it
    /// did and `Err(actual)` with the value found when it did not (as
    /// [`core::sync::atomic::AtomicU64::compare_exchange`]). Grant entries
    /// change only this way ([`crate::grant`]): the hypervisor sets its
    /// in-use bits only on exactly the 8 bytes it validated, so an entry the
    /// granter changes meanwhile is read and validated again. The default
    /// is a plain read and write, for memory no other CPU sees (host tests);
    /// the hypervisor's accessor is atomic.
    fn cmpxchg_u64(&mut self, pa: u64, current: u64, new: u64) -> Result<u64, u64> {
        let old = self.read_u64(pa);
        if old != current {
            return Err(old);
        }
        self.write_u64(pa, new);
        Ok(old)
    }
    /// Stores the byte `v` at `pa` and returns the old one, atomically: see
    /// [`PhysMem::fetch_or_u64`].
    fn swap_u8(&mut self, pa: u64, v: u8) -> u8 {
        let mut b = [0u8];
        self.read(pa, &mut b);
        self.write(pa, &[v]);
        b[0]
    }
}

/// A guest virtual address: an allegation until translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestVa(pub u64);

/// What kind of access is being made on the guest's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The access writes.
    pub write: bool,
    /// The access is made for ring-3 code (requires U at every level).
    pub user: bool,
}

impl Access {
    /// A read on behalf of the guest kernel.
    pub const KERNEL_READ: Access = Access { write: false, user: false };
    /// A write on behalf of the guest kernel.
    pub const KERNEL_WRITE: Access = Access { write: true, user: false };
}

/// A translation [`GuestView::translate`] made, to be reused while nothing
/// can have changed it (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remembered {
    /// [`FrameTable::epoch`] at the walk.
    epoch: u64,
    root: Mfn,
    dom: DomId,
    access: Access,
    /// The guest page (`va >> 12`).
    page: u64,
    /// Machine address of the start of that page.
    pa: u64,
}

/// A domain's address space as seen by the hypervisor.
pub struct GuestView<'a, M: PhysMem> {
    /// Machine memory.
    pub mem: &'a mut M,
    /// Ownership of frames.
    pub frames: &'a FrameTable<'a>,
    /// Machine frame of the domain's active PML4.
    pub root: Mfn,
    /// The domain.
    pub dom: DomId,
}

impl<'a, M: PhysMem> GuestView<'a, M> {
    /// Translates one guest address to a machine address, enforcing the
    /// module's rules.
    pub fn translate(&self, va: GuestVa, access: Access) -> Result<u64, Errno> {
        if !layout::is_guest_va(va.0) {
            return Err(Errno::EFAULT);
        }
        // The bits every level must have for this access (one test per
        // level instead of one per rule).
        let mut need = PteFlags::PRESENT;
        if access.write {
            need |= PteFlags::WRITABLE;
        }
        if access.user {
            need |= PteFlags::USER;
        }
        let mut table = self.root;
        for shift in [39u32, 30, 21, 12] {
            if !self.frames.owned_by(table, self.dom) {
                return Err(Errno::EFAULT);
            }
            let index = (va.0 >> shift) & 511;
            let pte = Pte(self.mem.read_u64(table * PAGE_SIZE + index * 8));
            // No huge pages: PS must be clear above L1 (at L1 it is PAT).
            let huge = if shift > 12 { PteFlags::HUGE.bits() } else { 0 };
            if pte.0 & (need.bits() | huge) != need.bits() {
                return Err(Errno::EFAULT);
            }
            table = pte.mfn();
        }
        if !self.frames.owned_by(table, self.dom) {
            return Err(Errno::EFAULT);
        }
        Ok(table * PAGE_SIZE + (va.0 & (PAGE_SIZE - 1)))
    }

    /// [`GuestView::translate`], answered from `memo` if it holds this
    /// page of this view for this access, else walked and remembered there.
    #[inline(always)] // every remembered copy: the memo check, no call
    pub fn translate_remembered(
        &self,
        va: GuestVa,
        access: Access,
        memo: &mut Option<Remembered>,
    ) -> Result<u64, Errno> {
        let page = va.0 >> 12;
        let offset = va.0 & (PAGE_SIZE - 1);
        let epoch = self.frames.epoch();
        if let Some(m) = memo.filter(|m| {
            m.epoch == epoch
                && m.page == page
                && m.root == self.root
                && m.dom == self.dom
                && (m.access == access || (m.access.write && m.access.user == access.user))
        }) {
            return Ok(m.pa + offset);
        }
        let pa = self.translate(va, access)?;
        *memo = Some(Remembered { epoch, root: self.root, dom: self.dom, access, page, pa: pa - offset });
        Ok(pa)
    }

    /// [`GuestView::copy_from`] through [`GuestView::translate_remembered`]
    /// when `buf` lies within one page (otherwise a plain `copy_from`).
    #[inline(always)]
    pub fn copy_from_remembered(
        &self,
        va: GuestVa,
        buf: &mut [u8],
        memo: &mut Option<Remembered>,
    ) -> Result<(), Errno> {
        let in_page = PAGE_SIZE - (va.0 & (PAGE_SIZE - 1));
        if buf.len() as u64 > in_page {
            return self.copy_from(va, buf);
        }
        let pa = self.translate_remembered(va, Access::KERNEL_READ, memo)?;
        self.mem.read(pa, buf);
        Ok(())
    }

    /// [`GuestView::copy_to`] through [`GuestView::translate_remembered`]
    /// when `data` lies within one page (otherwise a plain `copy_to`).
    #[inline(always)]
    pub fn copy_to_remembered(&mut self, va: GuestVa, data: &[u8], memo: &mut Option<Remembered>) -> Result<(), Errno> {
        let in_page = PAGE_SIZE - (va.0 & (PAGE_SIZE - 1));
        if data.len() as u64 > in_page {
            return self.copy_to(va, data);
        }
        let pa = self.translate_remembered(va, Access::KERNEL_WRITE, memo)?;
        self.mem.write(pa, data);
        Ok(())
    }

    /// Copies guest memory at `va` into `buf`.
    pub fn copy_from(&self, va: GuestVa, buf: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va.0.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let pa = self.translate(GuestVa(cur), Access::KERNEL_READ)?;
            let in_page = (PAGE_SIZE - (cur & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(buf.len() - done);
            self.mem.read(pa, &mut buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into guest memory at `va`.
    pub fn copy_to(&mut self, va: GuestVa, data: &[u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < data.len() {
            let cur = va.0.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let pa = self.translate(GuestVa(cur), Access::KERNEL_WRITE)?;
            let in_page = (PAGE_SIZE - (cur & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(data.len() - done);
            self.mem.write(pa, &data[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A sparse fake machine memory for host tests.
    use super::*;
    use std::collections::HashMap;

    /// Frames materialise as zero pages on first touch.
    #[derive(Default)]
    pub struct FakeMem {
        pub frames: HashMap<Mfn, Box<[u8; 4096]>>,
    }

    impl FakeMem {
        fn frame(&mut self, mfn: Mfn) -> &mut [u8; 4096] {
            self.frames.entry(mfn).or_insert_with(|| Box::new([0; 4096]))
        }
    }

    impl PhysMem for FakeMem {
        fn read_u64(&self, pa: u64) -> u64 {
            let mut b = [0u8; 8];
            self.read(pa, &mut b);
            u64::from_le_bytes(b)
        }
        fn write_u64(&mut self, pa: u64, val: u64) {
            self.write(pa, &val.to_le_bytes());
        }
        fn read(&self, pa: u64, buf: &mut [u8]) {
            let off = (pa % 4096) as usize;
            assert!(off + buf.len() <= 4096, "read crosses a frame");
            match self.frames.get(&(pa / 4096)) {
                Some(f) => buf.copy_from_slice(&f[off..off + buf.len()]),
                None => buf.fill(0),
            }
        }
        fn write(&mut self, pa: u64, data: &[u8]) {
            let off = (pa % 4096) as usize;
            assert!(off + data.len() <= 4096, "write crosses a frame");
            self.frame(pa / 4096)[off..off + data.len()].copy_from_slice(data);
        }
        fn zero_frame(&mut self, mfn: Mfn) {
            self.frame(mfn).fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMem;
    use super::*;
    use crate::mm::frames::{FrameInfo, Owner};
    use crate::mm::paging::PteFlags;

    /// Maps `va` -> `leaf` in a 4-level tree rooted at frame 1 (tables 1..=4).
    fn setup(mem: &mut FakeMem, va: u64, leaf: Mfn, leaf_flags: PteFlags) {
        let idx = |l: u32| (va >> (12 + 9 * (l - 1))) & 511;
        let inner = PteFlags::PRESENT | PteFlags::WRITABLE;
        mem.write_u64(4096 + idx(4) * 8, Pte::new(2, inner).0);
        mem.write_u64(2 * 4096 + idx(3) * 8, Pte::new(3, inner).0);
        mem.write_u64(3 * 4096 + idx(2) * 8, Pte::new(4, inner).0);
        mem.write_u64(4 * 4096 + idx(1) * 8, Pte::new(leaf, leaf_flags).0);
    }

    fn table(store: &mut [FrameInfo], dom: DomId) -> FrameTable<'_> {
        let mut t = FrameTable::new(store);
        t.add_free_range(0, 16);
        for _ in 0..16 {
            t.alloc(Owner::Domain(dom)).unwrap();
        }
        t
    }

    const VA: u64 = layout::GUEST_KERNEL_BASE + 0x5000;

    #[test]
    fn reads_and_writes_through_valid_mapping() {
        let mut mem = FakeMem::default();
        setup(&mut mem, VA, 9, PteFlags::PRESENT | PteFlags::WRITABLE);
        let mut store = [FrameInfo::RESERVED; 16];
        let t = table(&mut store, DomId::of(1));
        let mut v = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        v.copy_to(GuestVa(VA + 10), b"hello").unwrap();
        let mut buf = [0u8; 5];
        v.copy_from(GuestVa(VA + 10), &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(v.translate(GuestVa(VA + 10), Access::KERNEL_READ), Ok(9 * 4096 + 10));
    }

    #[test]
    fn rule1_non_canonical_and_entry_area_are_efault() {
        let mut mem = FakeMem::default();
        let mut store = [FrameInfo::RESERVED; 16];
        let t = table(&mut store, DomId::of(1));
        let v = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        for va in [0x0000_8000_0000_0000, layout::ENTRY_AREA_BASE, u64::MAX - 3] {
            assert_eq!(v.translate(GuestVa(va), Access::KERNEL_READ), Err(Errno::EFAULT));
        }
    }

    #[test]
    fn rule2_read_only_and_unmapped_refused() {
        let mut mem = FakeMem::default();
        setup(&mut mem, VA, 9, PteFlags::PRESENT);
        let mut store = [FrameInfo::RESERVED; 16];
        let t = table(&mut store, DomId::of(1));
        let mut v = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        assert_eq!(v.copy_to(GuestVa(VA), b"x"), Err(Errno::EFAULT));
        assert_eq!(v.translate(GuestVa(VA), Access { write: false, user: true }), Err(Errno::EFAULT));
        let mut b = [0u8; 1];
        assert_eq!(v.copy_from(GuestVa(VA + 4096), &mut b), Err(Errno::EFAULT));
        // A copy that starts mapped and runs into an unmapped page fails.
        let mut big = [0u8; 8];
        assert_eq!(v.copy_from(GuestVa(VA + 4092), &mut big), Err(Errno::EFAULT));
        // Address-space wraparound is refused, not wrapped.
        assert_eq!(v.copy_from(GuestVa(u64::MAX), &mut big), Err(Errno::EFAULT));
    }

    #[test]
    fn rule3_huge_pages_refused() {
        let mut mem = FakeMem::default();
        setup(&mut mem, VA, 9, PteFlags::PRESENT);
        let idx2 = (VA >> 21) & 511;
        mem.write_u64(3 * 4096 + idx2 * 8, Pte::new(4, PteFlags::PRESENT | PteFlags::HUGE).0);
        let mut store = [FrameInfo::RESERVED; 16];
        let t = table(&mut store, DomId::of(1));
        let v = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        assert_eq!(v.translate(GuestVa(VA), Access::KERNEL_READ), Err(Errno::EFAULT));
    }

    #[test]
    fn rule4_foreign_frames_refused() {
        let mut mem = FakeMem::default();
        setup(&mut mem, VA, 9, PteFlags::PRESENT | PteFlags::WRITABLE);
        let mut store = [FrameInfo::RESERVED; 16];
        let t = table(&mut store, DomId::of(1));
        // The same tables, seen as another domain: every frame is foreign.
        let v = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(2) };
        assert_eq!(v.translate(GuestVa(VA), Access::KERNEL_READ), Err(Errno::EFAULT));
        // A leaf that points outside the table (e.g. hypervisor memory).
        let mut mem2 = FakeMem::default();
        setup(&mut mem2, VA, 0x1_0000, PteFlags::PRESENT);
        let v2 = GuestView { mem: &mut mem2, frames: &t, root: 1, dom: DomId::of(1) };
        assert_eq!(v2.translate(GuestVa(VA), Access::KERNEL_READ), Err(Errno::EFAULT));
    }
}
