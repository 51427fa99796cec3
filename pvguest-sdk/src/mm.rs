//! Memory: frames, validated page-table updates, and address spaces.
//!
//! A guest owns a set of machine frames; the start info lists them by
//! pseudo-physical frame number (pfn), and at boot pfn `p` is mapped
//! read-write at `virt_base + p * 4096` (page tables read-only). Page tables
//! belong to the guest but are read-only to it: every change goes through a
//! hypercall that the hypervisor validates (a frame is either a page table
//! or writable, never both; only owned frames may be mapped).
//!
//! Layers, lowest first:
//! - [`mmu_update`], [`mmuext`], [`update_va_mapping`], [`pin`], [`unpin`],
//!   [`new_baseptr`]: typed wrappers of the three hypercalls.
//! - [`alloc_page`]: zeroed frames from the free pfns.
//! - [`AddressSpace`]: a page-table builder. It writes new tables while they
//!   are still ordinary writable pages, then makes them read-only and has
//!   the hypervisor validate and pin them bottom-up; later mappings go
//!   through `mmu_update`.
//!
//! ```ignore
//! use pvguest_sdk::mm::{self, AddressSpace, Pte};
//! let mut space = AddressSpace::new_sharing_kernel()?;
//! let page = mm::alloc_page().expect("memory");
//! space.map(0x40_0000, page, Pte::USER | Pte::WRITABLE | Pte::NO_EXECUTE)?;
//! space.activate()?; // new CR3 via MMUEXT_NEW_BASEPTR
//! ```

use crate::hypercall::raw;
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_abi::mmu::{ext, uvmf, MmuUpdate, MmuextOp, MMU_NORMAL_PT_UPDATE};
use pvguest_abi::{hypercall, Errno, DOMID_SELF};

/// A frame the guest owns: its pfn and machine frame number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Pseudo-physical frame number.
    pub pfn: u64,
    /// Machine frame number (what page tables contain).
    pub mfn: u64,
}

impl Page {
    /// The page's address in the boot linear mapping.
    pub fn va(&self) -> u64 {
        va_of_pfn(self.pfn)
    }
}

/// Page-table entry bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pte(pub u64);

impl Pte {
    pub const PRESENT: Pte = Pte(1);
    pub const WRITABLE: Pte = Pte(1 << 1);
    pub const USER: Pte = Pte(1 << 2);
    pub const NO_EXECUTE: Pte = Pte(1 << 63);
    /// An entry mapping `mfn` with `flags` (PRESENT is added).
    pub const fn new(mfn: u64, flags: Pte) -> Pte {
        Pte(((mfn << 12) & 0x000f_ffff_ffff_f000) | flags.0 | 1)
    }
    /// The frame an entry points to.
    pub const fn mfn(self) -> u64 {
        (self.0 & 0x000f_ffff_ffff_f000) >> 12
    }
}

impl core::ops::BitOr for Pte {
    type Output = Pte;
    fn bitor(self, o: Pte) -> Pte {
        Pte(self.0 | o.0)
    }
}

/// Guest virtual address of `pfn` in the boot linear mapping.
pub fn va_of_pfn(pfn: u64) -> u64 {
    crate::start_info().virt_base + pfn * 4096
}

/// The pfn mapped at `va` in the boot linear mapping, if any.
pub fn pfn_of_va(va: u64) -> Option<u64> {
    let si = crate::start_info();
    let pfn = va.checked_sub(si.virt_base)? / 4096;
    (pfn < si.nr_pages).then_some(pfn)
}

/// Machine frame number of `pfn` (from the start info's frame list).
pub fn mfn_of_pfn(pfn: u64) -> u64 {
    let si = crate::start_info();
    assert!(pfn < si.nr_pages, "pfn {pfn} is not this domain's");
    // SAFETY: the frame list holds nr_pages u64s at `mfn_list`, mapped
    // read-write in our memory and written only by the hypervisor at build.
    unsafe { ((si.mfn_list + pfn * 8) as *const u64).read_volatile() }
}

/// Machine frame of the boot page-table root (PML4).
pub fn kernel_root() -> Page {
    let pfn = pfn_of_va(crate::start_info().pt_base).expect("pt_base lies in our memory");
    Page { pfn, mfn: mfn_of_pfn(pfn) }
}

static NEXT_FREE: AtomicU64 = AtomicU64::new(0);

/// Takes a free frame (from `first_free_pfn` up) and zeroes it. Frames are
/// never returned in this simple allocator.
pub fn alloc_page() -> Option<Page> {
    let si = crate::start_info();
    let _ = NEXT_FREE.compare_exchange(0, si.first_free_pfn, Ordering::SeqCst, Ordering::SeqCst);
    let pfn = NEXT_FREE.fetch_add(1, Ordering::SeqCst);
    if pfn >= si.nr_pages {
        return None;
    }
    // SAFETY: `pfn` is free (handed out once by this allocator) and mapped
    // read-write at its linear address since boot.
    unsafe { core::ptr::write_bytes(va_of_pfn(pfn) as *mut u8, 0, 4096) };
    Some(Page { pfn, mfn: mfn_of_pfn(pfn) })
}

/// Takes `n` contiguous free frames (contiguous in the linear map), zeroed.
pub fn alloc_pages(n: u64) -> Option<Page> {
    let si = crate::start_info();
    let _ = NEXT_FREE.compare_exchange(0, si.first_free_pfn, Ordering::SeqCst, Ordering::SeqCst);
    let pfn = NEXT_FREE.fetch_add(n, Ordering::SeqCst);
    if pfn + n > si.nr_pages {
        return None;
    }
    // SAFETY: as for `alloc_page`, for `n` consecutive free pfns.
    unsafe { core::ptr::write_bytes(va_of_pfn(pfn) as *mut u8, 0, (4096 * n) as usize) };
    Some(Page { pfn, mfn: mfn_of_pfn(pfn) })
}

/// Applies page-table updates. On failure returns how many were applied
/// before the failing one, and its error.
pub fn mmu_update(reqs: &[MmuUpdate]) -> Result<(), (usize, Errno)> {
    let mut done = 0u32;
    // SAFETY: the hypervisor reads `reqs` and writes only `done`, a local.
    let r = unsafe {
        raw(
            hypercall::MMU_UPDATE,
            [reqs.as_ptr() as u64, reqs.len() as u64, &mut done as *mut u32 as u64, DOMID_SELF, 0],
        )
    };
    Errno::decode(r).map(|_| ()).map_err(|e| (done as usize, e))
}

/// The `mmu_update` request that sets entry `index` of table `table_mfn`.
pub fn pte_update(table_mfn: u64, index: usize, pte: Pte) -> MmuUpdate {
    MmuUpdate { ptr: ((table_mfn * 4096) + (index as u64 % 512) * 8) | MMU_NORMAL_PT_UPDATE, val: pte.0 }
}

/// Performs extended MMU operations.
pub fn mmuext(ops: &[MmuextOp]) -> Result<(), (usize, Errno)> {
    let mut done = 0u32;
    // SAFETY: the hypervisor reads `ops` and writes only `done`, a local.
    let r = unsafe {
        raw(hypercall::MMUEXT_OP, [ops.as_ptr() as u64, ops.len() as u64, &mut done as *mut u32 as u64, DOMID_SELF, 0])
    };
    Errno::decode(r).map(|_| ()).map_err(|e| (done as usize, e))
}

fn ext1(cmd: u32, arg1: u64) -> Result<(), Errno> {
    mmuext(&[MmuextOp { cmd, pad: 0, arg1, arg2: 0 }]).map_err(|(_, e)| e)
}

/// Validates `mfn` as a table of `level` (1..=4) and pins it.
pub fn pin(level: u8, mfn: u64) -> Result<(), Errno> {
    let cmd = match level {
        1 => ext::PIN_L1_TABLE,
        2 => ext::PIN_L2_TABLE,
        3 => ext::PIN_L3_TABLE,
        4 => ext::PIN_L4_TABLE,
        _ => return Err(Errno::EINVAL),
    };
    ext1(cmd, mfn)
}

/// Unpins a table.
pub fn unpin(mfn: u64) -> Result<(), Errno> {
    ext1(ext::UNPIN_TABLE, mfn)
}

/// Switches to the level-4 table `mfn` (a new CR3).
pub fn new_baseptr(mfn: u64) -> Result<(), Errno> {
    ext1(ext::NEW_BASEPTR, mfn)
}

/// Sets the entry that maps `va` in the current page tables.
pub fn update_va_mapping(va: u64, pte: Pte) -> Result<(), Errno> {
    // SAFETY: the hypervisor only validates and installs the entry; a
    // mapping change cannot break Rust invariants of memory we hold
    // references to, because callers only remap pages they own exclusively
    // (this module's table pages).
    Errno::decode(unsafe { raw(hypercall::UPDATE_VA_MAPPING, [va, pte.0, uvmf::INVLPG, 0, 0]) }).map(|_| ())
}

/// Makes `page`'s linear mapping read-only (so it can become a page table).
pub fn make_readonly(page: Page) -> Result<(), Errno> {
    update_va_mapping(page.va(), Pte::new(page.mfn, Pte::NO_EXECUTE))
}

/// Writes entry `index` of a table page that is still an ordinary writable
/// page (before it is validated).
fn write_entry(page: Page, index: usize, pte: Pte) {
    // SAFETY: `page` was allocated by this module and is still mapped
    // writable at its linear address; `index < 512` keeps the write inside
    // it.
    unsafe { ((page.va() + (index as u64 % 512) * 8) as *mut u64).write_volatile(pte.0) };
}

/// Copies `data` into `page` at `offset` (through its linear mapping; the
/// range is clamped to the page). A copy, not a reference: pages are
/// `Copy` values, so handing out `&mut` to their bytes could alias.
pub fn page_write(page: Page, offset: usize, data: &[u8]) {
    let n = data.len().min(4096usize.saturating_sub(offset));
    // SAFETY: `page` is one of ours (a `Page` is only made for our frames),
    // mapped read-write at its linear address; `offset + n <= 4096` keeps
    // the copy inside it, and no Rust reference to its bytes exists.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), (page.va() + offset as u64) as *mut u8, n) };
}

/// Copies bytes of `page` from `offset` into `out` (clamped to the page).
pub fn page_read(page: Page, offset: usize, out: &mut [u8]) {
    let n = out.len().min(4096usize.saturating_sub(offset));
    // SAFETY: as for `page_write`, reading.
    unsafe { core::ptr::copy_nonoverlapping((page.va() + offset as u64) as *const u8, out.as_mut_ptr(), n) };
}

/// Reads entry `index` of a table (tables stay readable).
pub fn read_entry(page: Page, index: usize) -> Pte {
    // SAFETY: table pages are mapped (read-only once validated) at their
    // linear address; `index < 512` keeps the read inside the page.
    Pte(unsafe { ((page.va() + (index as u64 % 512) * 8) as *const u64).read_volatile() })
}

/// Index of `va` in the table of `level`.
fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

/// Most intermediate tables one address space tracks.
const MAX_TABLES: usize = 16;

/// A page-table tree whose kernel half is shared with the boot tables, for
/// a ring-3 process.
pub struct AddressSpace {
    root: Page,
    /// Tables below the root: (level, va prefix they cover, page).
    tables: [(u32, u64, Page); MAX_TABLES],
    ntables: usize,
    pinned: bool,
}

impl AddressSpace {
    /// A new tree that maps the guest kernel (PML4 slot 256, shared with the
    /// boot tables) and nothing else yet.
    pub fn new_sharing_kernel() -> Result<AddressSpace, Errno> {
        let root = alloc_page().ok_or(Errno::ENOMEM)?;
        let kroot = kernel_root();
        let slot = index(crate::start_info().virt_base, 4);
        write_entry(root, slot, read_entry(kroot, slot));
        Ok(AddressSpace { root, tables: [(0, 0, root); MAX_TABLES], ntables: 0, pinned: false })
    }

    /// The root's frame (the value for [`new_baseptr`]).
    pub fn root(&self) -> Page {
        self.root
    }

    fn table_for(&mut self, va: u64, level: u32) -> Result<Page, Errno> {
        // The table at `level` covering `va`, created (and linked into its
        // parent) if missing.
        let span = 12 + 9 * level;
        let prefix = va >> span;
        if level == 4 {
            return Ok(self.root);
        }
        if let Some(t) = self.tables[..self.ntables].iter().find(|t| t.0 == level && t.1 == prefix) {
            return Ok(t.2);
        }
        if self.ntables == MAX_TABLES {
            return Err(Errno::ENOSPC);
        }
        let parent = self.table_for(va, level + 1)?;
        let page = alloc_page().ok_or(Errno::ENOMEM)?;
        let link = Pte::new(page.mfn, Pte::WRITABLE | Pte::USER);
        if self.pinned {
            // Validated tree: the new table must be read-only and pinned
            // (validated on its own) before a validated update links it.
            make_readonly(page)?;
            pin(level as u8, page.mfn)?;
            mmu_update(&[pte_update(parent.mfn, index(va, level + 1), link)]).map_err(|(_, e)| e)?;
        } else {
            write_entry(parent, index(va, level + 1), link);
        }
        self.tables[self.ntables] = (level, prefix, page);
        self.ntables += 1;
        Ok(page)
    }

    /// The level-1 table that maps `va`, if this tree has one.
    pub fn l1_for(&self, va: u64) -> Option<Page> {
        let prefix = va >> (12 + 9);
        self.tables[..self.ntables].iter().find(|t| t.0 == 1 && t.1 == prefix).map(|t| t.2)
    }

    /// Maps `page` at user address `va` with `flags` (PRESENT is added;
    /// include [`Pte::USER`] for ring-3 access).
    pub fn map(&mut self, va: u64, page: Page, flags: Pte) -> Result<(), Errno> {
        if va >= 0x0000_8000_0000_0000 || !va.is_multiple_of(4096) {
            return Err(Errno::EINVAL);
        }
        let l1 = self.table_for(va, 1)?;
        let pte = Pte::new(page.mfn, flags);
        if self.pinned {
            mmu_update(&[pte_update(l1.mfn, index(va, 1), pte)]).map_err(|(_, e)| e)
        } else {
            write_entry(l1, index(va, 1), pte);
            Ok(())
        }
    }

    /// Makes every table read-only and has the hypervisor validate and pin
    /// them bottom-up (level-1 tables first, the root last): the hypervisor
    /// validates one table per operation and only links tables that are
    /// already validated, which bounds its work. Later
    /// [`map`](Self::map) calls use `mmu_update`.
    pub fn pin(&mut self) -> Result<(), Errno> {
        if self.pinned {
            return Ok(());
        }
        for level in 1..=3 {
            for t in self.tables[..self.ntables].iter().filter(|t| t.0 == level) {
                make_readonly(t.2)?;
                pin(level as u8, t.2.mfn)?;
            }
        }
        make_readonly(self.root)?;
        pin(4, self.root.mfn)?;
        self.pinned = true;
        Ok(())
    }

    /// Switches the CPU to this tree (validating and pinning it first).
    pub fn activate(&mut self) -> Result<(), Errno> {
        self.pin()?;
        new_baseptr(self.root.mfn)
    }
}

/// Switches back to the boot page tables.
pub fn activate_kernel() -> Result<(), Errno> {
    new_baseptr(kernel_root().mfn)
}
