//! The domain builder: turns a validated ELF image and a memory size into a
//! domain's initial memory, page tables and start-info page.
//!
//! # The initial guest layout (pfn order)
//! ```text
//! pfn 0 ..                 the ELF image span (from GUEST_KERNEL_BASE)
//! start_info_pfn           start-info page
//! shared_info_pfn          shared-info page
//! console_pfn              console page (two byte streams, see below)
//! store_pfn                store page (two byte streams, see below)
//! mfn_list_pfn ..          the frame list: nr_pages u64 mfns, by pfn
//! pt_pfn ..                boot page tables: PML4, PDPT, PDs, PTs
//! stack_pfn ..             boot stack (STACK_PAGES)
//! dma_pfn ..               dom0's DMA pool (dma_pages, often 0)
//! first_free_pfn ..        free for the guest
//! ```
//! Every pfn is mapped at `GUEST_KERNEL_BASE + pfn * 4096` with 4 KiB pages,
//! supervisor-only. Permissions: executable image pages read-only, other
//! image pages per their segment (NX), page-table frames read-only (NX),
//! everything else read-write (NX). PML4 slot 511 points at the shared entry
//! area. The page tables sit just below the stack, so a stack overflow hits a
//! read-only page and faults in the guest instead of corrupting memory.
//!
//! # Invariants
//! - Every frame is allocated to the domain and zeroed before anything is
//!   written to it: here as it is taken ([`Source::Fresh`], at boot), or
//!   beforehand by the caller, who took the frames for the hypervisor and
//!   zeroed them in bounded units ([`Source::Zeroed`], a run-time create);
//!   such a frame is handed over only if the hypervisor still holds it
//!   untouched ([`FrameTable::hand_over`]).
//! - The builder writes the initial page tables as plain memory and then
//!   has [`crate::mm`] validate them by the same rules as every later guest
//!   update, pinning every one of them bottom-up, one table per operation
//!   (rule 7): the PTs as L1s ([`Mm::pin_table`]), the PDs as L2s, the PDPT
//!   as an L3, and last the PML4 ([`Mm::install_initial_root`], which also
//!   makes it the active root). Every read-write leaf takes a `Writable`
//!   reference, the read-only mappings of the page-table frames are allowed
//!   by rule 2, and each table ends pinned with one more reference per
//!   entry that names it (PTs, PDs and the PDPT: count 2; the PML4: pin and
//!   root, count 2). Because every table is pinned, later guest operations
//!   never validate or devalidate more than one table: unlinking a boot
//!   table leaves it pinned, and the guest can unpin it only once nothing
//!   references it. This bottom-up validation is the hypervisor's own work,
//!   bounded by the domain's size at build time, not something a guest can
//!   repeat. A layout that broke a rule would fail the build
//!   ([`BuildError::PageTables`]) instead of running.
//! - On error the caller releases the domain's frames (nothing is leaked).
//! - The console page is zeroed here and initialised as a `ByteChannel` by
//!   the hypervisor before the guest first runs (the builder touches memory
//!   only through [`PhysMem`]; the ring layout belongs to `ring-protocol`).
//!   Its frame, like the shared-info frame, is held as `Writable` for the
//!   domain's life, so the guest can never make it a page table.
//! - Every domain gets a store page, zeroed here. When the domain has a
//!   store connection ([`DomainConfig::store`]), start info's `store`
//!   names it, and the hypervisor initialises it as a `ByteChannel` and
//!   grants it to the store's domain before the guest first runs; else it
//!   is an ordinary free-to-use page that start info does not mention.
//! - The DMA pool (the manifest's `dma_kib`, which the bundle reader allows
//!   only for the privileged domain) is allocated first, as one run of
//!   machine-consecutive free frames ([`FrameTable::alloc_contiguous`]),
//!   so pfn `dma_pfn + k` is machine frame `pool + k`. Its frames are
//!   ordinary frames of the domain (owned, mapped read-write and NX like
//!   other data, in the frame list, free to become page tables if the
//!   guest wants); start info's `dma` tells the guest where the pool is,
//!   virtually and in machine memory. Without an IOMMU, dom0 is
//!   DMA-trusted (as in Xen): the pool is a convenience for its drivers,
//!   not a bound on what its devices reach.

use crate::elf::{ElfError, ElfImage, LoadPolicy};
use crate::mm::frames::{DomId, FrameError, FrameTable, Mfn, Owner};
use crate::mm::guest_mem::PhysMem;
use crate::mm::paging::{table_index, Pte, PteFlags, ENTRIES, PAGE_SIZE};
use crate::mm::Mm;
use core::fmt;
use pvguest_abi::layout::GUEST_KERNEL_BASE;
use pvguest_abi::start_info::{
    fill_c_str, ConsoleInfo, DmaPoolInfo, StartInfo, StoreInfo, CONSOLE_RING, SIF_INITDOMAIN, SIF_PRIVILEGED,
};
use pvguest_abi::Errno;
use zerocopy::IntoBytes;

/// Pages of boot stack given to every guest.
pub const STACK_PAGES: u64 = 16;

/// Largest domain the builder supports (the frame list's frames are tracked
/// in a fixed array of 512 entries: 512 * 512 pages = 1 GiB).
pub const MAX_DOMAIN_PAGES: u64 = 512 * 512;

/// Where everything goes, in pfns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Frames the domain owns.
    pub nr_pages: u64,
    /// Pages spanned by the ELF image from the base.
    pub image_pages: u64,
    /// The start-info page.
    pub start_info_pfn: u64,
    /// The shared-info page.
    pub shared_info_pfn: u64,
    /// The console page.
    pub console_pfn: u64,
    /// The store page.
    pub store_pfn: u64,
    /// First page of the frame list.
    pub mfn_list_pfn: u64,
    /// Pages of the frame list.
    pub mfn_list_pages: u64,
    /// First page-table frame (the PML4).
    pub pt_pfn: u64,
    /// Number of page-table frames.
    pub nr_pt_frames: u64,
    /// First page of the boot stack.
    pub stack_pfn: u64,
    /// First page of the DMA pool.
    pub dma_pfn: u64,
    /// Pages of the DMA pool (0: none).
    pub dma_pages: u64,
    /// First pfn free for the guest.
    pub first_free_pfn: u64,
}

impl Layout {
    /// Computes the layout for a domain of `nr_pages` whose image ends at
    /// virtual address `image_end`.
    pub fn plan(nr_pages: u64, image_end: u64) -> Result<Layout, BuildError> {
        Layout::plan_with_dma(nr_pages, image_end, 0)
    }

    /// [`Layout::plan`] with a DMA pool of `dma_pages` after the stack.
    pub fn plan_with_dma(nr_pages: u64, image_end: u64, dma_pages: u64) -> Result<Layout, BuildError> {
        if nr_pages > MAX_DOMAIN_PAGES {
            return Err(BuildError::TooLarge { pages: nr_pages, max: MAX_DOMAIN_PAGES });
        }
        let image_pages = image_end
            .checked_sub(GUEST_KERNEL_BASE)
            .ok_or(BuildError::TooSmall { need_pages: u64::MAX, have_pages: nr_pages })?
            .div_ceil(PAGE_SIZE);
        let mfn_list_pages = (nr_pages * 8).div_ceil(PAGE_SIZE);
        let nr_pts = nr_pages.div_ceil(ENTRIES as u64);
        let nr_pds = nr_pts.div_ceil(ENTRIES as u64);
        let nr_pt_frames = 2 + nr_pds + nr_pts;
        let start_info_pfn = image_pages;
        let shared_info_pfn = start_info_pfn + 1;
        let console_pfn = shared_info_pfn + 1;
        let store_pfn = console_pfn + 1;
        let mfn_list_pfn = store_pfn + 1;
        let pt_pfn = mfn_list_pfn + mfn_list_pages;
        let stack_pfn = pt_pfn + nr_pt_frames;
        let dma_pfn = stack_pfn + STACK_PAGES;
        let first_free_pfn = dma_pfn.saturating_add(dma_pages);
        if first_free_pfn > nr_pages {
            return Err(BuildError::TooSmall { need_pages: first_free_pfn, have_pages: nr_pages });
        }
        Ok(Layout {
            nr_pages,
            image_pages,
            start_info_pfn,
            shared_info_pfn,
            console_pfn,
            store_pfn,
            mfn_list_pfn,
            mfn_list_pages,
            pt_pfn,
            nr_pt_frames,
            stack_pfn,
            dma_pfn,
            dma_pages,
            first_free_pfn,
        })
    }

    /// Guest virtual address of `pfn` in the initial mapping.
    pub const fn va(pfn: u64) -> u64 {
        GUEST_KERNEL_BASE + pfn * PAGE_SIZE
    }

    fn nr_pts(&self) -> u64 {
        self.nr_pages.div_ceil(ENTRIES as u64)
    }

    fn nr_pds(&self) -> u64 {
        self.nr_pts().div_ceil(ENTRIES as u64)
    }
}

/// Why a domain could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The ELF image was refused.
    Elf(ElfError),
    /// The memory size cannot hold the image and the bootstrap structures.
    TooSmall {
        /// Pages needed.
        need_pages: u64,
        /// Pages the manifest gives.
        have_pages: u64,
    },
    /// The memory size exceeds what the builder supports.
    TooLarge {
        /// Pages requested.
        pages: u64,
        /// The limit.
        max: u64,
    },
    /// Machine memory ran out.
    OutOfMemory {
        /// Pages requested.
        pages: u64,
        /// Pages that were free.
        free: u64,
    },
    /// The initial page tables failed validation (a builder bug: they are
    /// checked by the same rules as a guest's).
    PageTables(Errno),
    /// No run of free machine-consecutive frames is long enough for the
    /// DMA pool.
    NoContiguous {
        /// Pages requested.
        pages: u64,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Elf(e) => write!(f, "bad ELF image: {e}"),
            BuildError::TooSmall { need_pages, have_pages } => write!(
                f,
                "memory too small: the image and boot structures need {} KiB, the manifest gives {} KiB",
                need_pages.saturating_mul(4),
                have_pages * 4
            ),
            BuildError::TooLarge { pages, max } => {
                write!(f, "memory too large: {} KiB requested, at most {} KiB", pages * 4, max * 4)
            }
            BuildError::OutOfMemory { pages, free } => {
                write!(f, "not enough machine memory: {} KiB requested, {} KiB free", pages * 4, free * 4)
            }
            BuildError::PageTables(e) => write!(f, "the initial page tables failed validation: {e}"),
            BuildError::NoContiguous { pages } => {
                write!(f, "no {} KiB of machine-contiguous free memory for the DMA pool", pages * 4)
            }
        }
    }
}

impl From<FrameError> for BuildError {
    fn from(_: FrameError) -> Self {
        BuildError::OutOfMemory { pages: 0, free: 0 }
    }
}

/// What the domain needs to start running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Built {
    /// The machine frames the domain was given lie in `span.0..span.1`
    /// (its teardown scans only these).
    pub span: (Mfn, Mfn),
    /// Machine frame of the PML4 (the guest's CR3).
    pub root: Mfn,
    /// Entry point (ELF `e_entry`).
    pub entry: u64,
    /// Initial `rsp`.
    pub stack_top: u64,
    /// Initial `rsi`: the start-info page.
    pub start_info_va: u64,
    /// Machine frame of the shared-info page.
    pub shared_info_mfn: Mfn,
    /// Machine frame of the console page (zeroed).
    pub console_mfn: Mfn,
    /// Machine frame of the store page (zeroed).
    pub store_mfn: Mfn,
    /// The layout used.
    pub layout: Layout,
}

/// Identity of the domain being built.
#[derive(Clone, Copy, Debug)]
pub struct DomainConfig<'a> {
    /// Domain id.
    pub domid: DomId,
    /// Name from the manifest.
    pub name: &'a str,
    /// Command line from the manifest.
    pub cmdline: &'a str,
    /// Memory in pages.
    pub nr_pages: u64,
    /// Pages of DMA pool, part of `nr_pages` (dom0's; 0 for none).
    pub dma_pages: u64,
    /// Privileged (dom0).
    /// Its privilege (dom0's), made from the manifest's flag.
    pub privilege: Option<crate::domain::Privilege>,
    /// The console's event-channel port (already bound by the caller).
    pub console_evtchn: u32,
    /// The store connection: the domain's port to the store (already
    /// allocated by the caller) and the store's domain; `None`: no store.
    pub store: Option<(u32, DomId)>,
}

/// Where the builder's frames come from.
pub enum Source<'z> {
    /// Allocated from the frame table and zeroed as they are taken.
    Fresh,
    /// Taken from the end of this list of frames the hypervisor holds,
    /// already zeroed (one per page of the domain; none is needed for a
    /// DMA pool, which run-time creates do not have: those come `Fresh`).
    Zeroed(&'z mut alloc::vec::Vec<Mfn>),
}

impl Source<'_> {
    /// A zeroed frame of `owner`'s.
    fn take<M: PhysMem>(&mut self, mem: &mut M, frames: &mut FrameTable<'_>, owner: Owner) -> Result<Mfn, BuildError> {
        match self {
            Source::Fresh => {
                let m = frames.alloc(owner)?;
                mem.zero_frame(m);
                Ok(m)
            }
            Source::Zeroed(list) => {
                let m = list.pop().ok_or(FrameError::Exhausted)?;
                frames.hand_over(m, owner)?;
                Ok(m)
            }
        }
    }
}

/// Validates `image` and builds the domain in frames from `source`.
///
/// `entry_area_pml4e` is the PML4 entry installed in slot 511 (by validation,
/// see [`crate::mm`] rule 3). On success every initial page-table frame is
/// pinned, and `Built::root` also holds the active-root reference, so it can
/// be stored as the vCPU's current root and later passed to
/// [`Mm::new_baseptr`]. On error some
/// frames may already belong to the domain: the caller releases them with
/// [`FrameTable::release_domain`].
pub fn build<M: PhysMem>(
    mem: &mut M,
    frames: &mut FrameTable<'_>,
    image: &[u8],
    cfg: &DomainConfig<'_>,
    entry_area_pml4e: u64,
    mut source: Source<'_>,
) -> Result<Built, BuildError> {
    let bytes = cfg.nr_pages * PAGE_SIZE;
    let policy =
        LoadPolicy { virt_base: GUEST_KERNEL_BASE, virt_limit: GUEST_KERNEL_BASE + bytes, max_image_bytes: bytes };
    if cfg.nr_pages > MAX_DOMAIN_PAGES {
        return Err(BuildError::TooLarge { pages: cfg.nr_pages, max: MAX_DOMAIN_PAGES });
    }
    let elf = ElfImage::parse(image, &policy).map_err(BuildError::Elf)?;
    let layout = Layout::plan_with_dma(cfg.nr_pages, elf.span().1, cfg.dma_pages)?;
    // Enough frames where they come from: free ones, or the caller's.
    let have = match &source {
        Source::Fresh => frames.free_count() as u64,
        Source::Zeroed(list) => list.len() as u64,
    };
    if have < cfg.nr_pages {
        return Err(BuildError::OutOfMemory { pages: cfg.nr_pages, free: have });
    }
    let owner = Owner::Domain(cfg.domid);

    // The DMA pool first, while machine memory is least fragmented.
    let dma_mfn = if layout.dma_pages > 0 {
        let m = frames
            .alloc_contiguous(owner, layout.dma_pages as usize)
            .map_err(|_| BuildError::NoContiguous { pages: layout.dma_pages })?;
        for k in 0..layout.dma_pages {
            mem.zero_frame(m + k);
        }
        m
    } else {
        0
    };

    // The frame list's own frames first, so every other mfn can be recorded
    // in it as it is allocated.
    let mut list = [0 as Mfn; 512];
    for slot in list.iter_mut().take(layout.mfn_list_pages as usize) {
        *slot = source.take(mem, frames, owner)?;
    }
    let p2m = FrameList { list: &list[..layout.mfn_list_pages as usize] };
    // Every frame is one of the p2m's (the frame list's own, the DMA pool's
    // and the rest), so their span is the domain's.
    let mut span: (Mfn, Mfn) = (Mfn::MAX, 0);
    for pfn in 0..layout.nr_pages {
        let in_list = pfn.wrapping_sub(layout.mfn_list_pfn) < layout.mfn_list_pages;
        let in_pool = pfn.wrapping_sub(layout.dma_pfn) < layout.dma_pages;
        let mfn = if in_list {
            list[(pfn - layout.mfn_list_pfn) as usize]
        } else if in_pool {
            dma_mfn + (pfn - layout.dma_pfn)
        } else {
            source.take(mem, frames, owner)?
        };
        p2m.set(mem, pfn, mfn);
        span = (span.0.min(mfn), span.1.max(mfn + 1));
    }

    // The image.
    for seg in elf.segments() {
        let data = elf.file_bytes(seg);
        let mut done = 0u64;
        while done < data.len() as u64 {
            let va = seg.vaddr + done;
            let pfn = (va - GUEST_KERNEL_BASE) / PAGE_SIZE;
            let off = va % PAGE_SIZE;
            let n = (PAGE_SIZE - off).min(data.len() as u64 - done);
            let mfn = p2m.get(mem, pfn);
            mem.write(mfn * PAGE_SIZE + off, &data[done as usize..(done + n) as usize]);
            done += n;
        }
    }

    // Page tables: PML4, PDPT, PDs, PTs, in pfn order.
    let pml4_pfn = layout.pt_pfn;
    let pdpt_pfn = pml4_pfn + 1;
    let pd_pfn = pdpt_pfn + 1;
    let pt_pfn = pd_pfn + layout.nr_pds();
    let inner = PteFlags::PRESENT | PteFlags::WRITABLE;
    let root = p2m.get(mem, pml4_pfn);
    let base_slot = table_index(GUEST_KERNEL_BASE, 4) as u64;
    mem.write_u64(root * PAGE_SIZE + base_slot * 8, Pte::new(p2m.get(mem, pdpt_pfn), inner).0);
    let pdpt = p2m.get(mem, pdpt_pfn);
    for i in 0..layout.nr_pds() {
        mem.write_u64(pdpt * PAGE_SIZE + i * 8, Pte::new(p2m.get(mem, pd_pfn + i), inner).0);
    }
    for i in 0..layout.nr_pts() {
        let pd = p2m.get(mem, pd_pfn + i / ENTRIES as u64);
        let slot = i % ENTRIES as u64;
        mem.write_u64(pd * PAGE_SIZE + slot * 8, Pte::new(p2m.get(mem, pt_pfn + i), inner).0);
    }
    for pfn in 0..layout.nr_pages {
        let pt = p2m.get(mem, pt_pfn + pfn / ENTRIES as u64);
        let flags = leaf_flags(&layout, &elf, pfn);
        mem.write_u64(pt * PAGE_SIZE + (pfn % ENTRIES as u64) * 8, Pte::new(p2m.get(mem, pfn), flags).0);
    }
    // Validate and pin the tables bottom-up, one at a time (mm rule 7):
    // PTs, PDs, the PDPT, and last the PML4, which also becomes the root
    // (and gets slot 511).
    let lower = [(pt_pfn, layout.nr_pts(), 1u8), (pd_pfn, layout.nr_pds(), 2), (pdpt_pfn, 1, 3)];
    for (first, count, level) in lower {
        for pfn in first..first + count {
            let mfn = p2m.get(mem, pfn);
            Mm::new(mem, frames, entry_area_pml4e).pin_table(cfg.domid, mfn, level).map_err(BuildError::PageTables)?;
        }
    }
    Mm::new(mem, frames, entry_area_pml4e).install_initial_root(cfg.domid, root).map_err(BuildError::PageTables)?;

    // Start info.
    let mut si = StartInfo::new();
    si.nr_pages = layout.nr_pages;
    si.shared_info = Layout::va(layout.shared_info_pfn);
    si.flags = if cfg.privilege.is_some() { SIF_PRIVILEGED | SIF_INITDOMAIN } else { 0 };
    si.domid = u32::from(cfg.domid.raw());
    si.pt_base = Layout::va(layout.pt_pfn);
    si.nr_pt_frames = layout.nr_pt_frames;
    si.mfn_list = Layout::va(layout.mfn_list_pfn);
    si.first_free_pfn = layout.first_free_pfn;
    si.virt_base = GUEST_KERNEL_BASE;
    si.console = ConsoleInfo {
        kind: CONSOLE_RING,
        evtchn: cfg.console_evtchn,
        ring_mfn: p2m.get(mem, layout.console_pfn),
        ring_va: Layout::va(layout.console_pfn),
    };
    if layout.dma_pages > 0 {
        si.dma =
            DmaPoolInfo { va: Layout::va(layout.dma_pfn), mfn: dma_mfn, pfn: layout.dma_pfn, pages: layout.dma_pages };
    }
    if let Some((evtchn, backend)) = cfg.store {
        si.store = StoreInfo {
            mfn: p2m.get(mem, layout.store_pfn),
            va: Layout::va(layout.store_pfn),
            evtchn,
            backend: u32::from(backend.raw()),
        };
    }
    fill_c_str(&mut si.name, cfg.name);
    fill_c_str(&mut si.cmdline, cfg.cmdline);
    let si_mfn = p2m.get(mem, layout.start_info_pfn);
    mem.write(si_mfn * PAGE_SIZE, si.as_bytes());

    Ok(Built {
        span,
        root,
        entry: elf.entry(),
        stack_top: Layout::va(layout.stack_pfn + STACK_PAGES),
        start_info_va: Layout::va(layout.start_info_pfn),
        shared_info_mfn: p2m.get(mem, layout.shared_info_pfn),
        console_mfn: p2m.get(mem, layout.console_pfn),
        store_mfn: p2m.get(mem, layout.store_pfn),
        layout,
    })
}

/// Leaf permissions of `pfn` in the initial mapping.
fn leaf_flags(layout: &Layout, elf: &ElfImage<'_>, pfn: u64) -> PteFlags {
    let p = PteFlags::PRESENT;
    let data = p | PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
    if pfn >= layout.pt_pfn && pfn < layout.pt_pfn + layout.nr_pt_frames {
        return p | PteFlags::NO_EXECUTE;
    }
    if pfn >= layout.image_pages {
        return data;
    }
    let page = Layout::va(pfn);
    for seg in elf.segments() {
        let start = seg.vaddr & !(PAGE_SIZE - 1);
        let end = (seg.vaddr + seg.memsz).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if page >= start && page < end {
            return match (seg.writable, seg.executable) {
                (_, true) => p,
                (true, false) => data,
                (false, false) => p | PteFlags::NO_EXECUTE,
            };
        }
    }
    data
}

/// The pfn-to-mfn list, kept in the domain's own frame-list pages. It is
/// trusted only while the domain is being built (before it can run).
struct FrameList<'l> {
    list: &'l [Mfn],
}

impl FrameList<'_> {
    fn set<M: PhysMem>(&self, mem: &mut M, pfn: u64, mfn: Mfn) {
        let page = self.list[(pfn / 512) as usize];
        mem.write_u64(page * PAGE_SIZE + (pfn % 512) * 8, mfn);
    }
    fn get<M: PhysMem>(&self, mem: &M, pfn: u64) -> Mfn {
        let page = self.list[(pfn / 512) as usize];
        mem.read_u64(page * PAGE_SIZE + (pfn % 512) * 8)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mm::frames::{FrameInfo, FrameType};
    use crate::mm::guest_mem::fake::FakeMem;
    use crate::mm::guest_mem::{Access, GuestVa, GuestView};

    #[test]
    fn plan_small_domain() {
        let l = Layout::plan(256, GUEST_KERNEL_BASE + 3 * 4096 + 10).unwrap();
        assert_eq!(l.image_pages, 4);
        assert_eq!(l.start_info_pfn, 4);
        assert_eq!(l.mfn_list_pages, 1);
        assert_eq!(l.nr_pt_frames, 4);
        assert_eq!(l.console_pfn, 6);
        assert_eq!(l.store_pfn, 7);
        assert_eq!(l.first_free_pfn, 4 + 4 + 1 + 4 + STACK_PAGES);
    }

    #[test]
    fn plan_rejects_too_small_and_too_large() {
        assert!(matches!(Layout::plan(20, GUEST_KERNEL_BASE + 4096), Err(BuildError::TooSmall { .. })));
        assert!(matches!(Layout::plan(MAX_DOMAIN_PAGES + 1, GUEST_KERNEL_BASE), Err(BuildError::TooLarge { .. })));
        assert!(matches!(Layout::plan(100, 0), Err(BuildError::TooSmall { .. })));
        let msg = std::format!("{}", Layout::plan(20, GUEST_KERNEL_BASE + 4096).unwrap_err());
        assert!(msg.contains("memory too small"), "{msg}");
    }

    #[test]
    fn plan_spans_multiple_page_directories() {
        let l = Layout::plan(MAX_DOMAIN_PAGES, GUEST_KERNEL_BASE + 4096).unwrap();
        assert_eq!(l.nr_pts(), 512);
        assert_eq!(l.nr_pds(), 1);
        assert_eq!(l.mfn_list_pages, 512);
    }

    /// A minimal valid ELF64 executable: one RX segment at the base and one
    /// RW segment a page later, with the entry point in the first. Written
    /// through the loader's own header types.
    pub(crate) fn tiny_elf() -> std::vec::Vec<u8> {
        use crate::elf::{
            Elf64Ehdr, Elf64Phdr, ElfIdent, ELFCLASS64, ELFDATA2LSB, ELF_MAGIC, EM_X86_64, ET_EXEC, EV_CURRENT, PF_R,
            PF_W, PF_X, PT_LOAD,
        };
        use core::mem::size_of;
        use zerocopy::byteorder::little_endian::{U16, U32, U64};
        use zerocopy::FromZeros;

        let segs: [(u64, u64, u32); 2] =
            [(GUEST_KERNEL_BASE, 0x100, PF_R | PF_X), (GUEST_KERNEL_BASE + 0x1000, 0x2000, PF_R | PF_W)];
        let phdrs = segs.map(|(va, memsz, flags)| Elf64Phdr {
            p_type: U32::new(PT_LOAD),
            p_flags: U32::new(flags),
            p_offset: U64::new(va - GUEST_KERNEL_BASE + 0x1000),
            p_vaddr: U64::new(va),
            p_paddr: U64::new(va),
            p_filesz: U64::new(0x10),
            p_memsz: U64::new(memsz),
            p_align: U64::new(0x1000),
        });
        let ehdr = Elf64Ehdr {
            e_ident: ElfIdent {
                magic: ELF_MAGIC,
                class: ELFCLASS64,
                data: ELFDATA2LSB,
                version: EV_CURRENT as u8,
                ..ElfIdent::new_zeroed()
            },
            e_type: U16::new(ET_EXEC),
            e_machine: U16::new(EM_X86_64),
            e_version: U32::new(EV_CURRENT),
            e_entry: U64::new(GUEST_KERNEL_BASE + 0x10),
            e_phoff: U64::new(size_of::<Elf64Ehdr>() as u64),
            e_ehsize: U16::new(size_of::<Elf64Ehdr>() as u16),
            e_phentsize: U16::new(size_of::<Elf64Phdr>() as u16),
            e_phnum: U16::new(phdrs.len() as u16),
            ..Elf64Ehdr::new_zeroed()
        };
        let headers = [ehdr.as_bytes(), phdrs.as_bytes()].concat();
        let mut f = std::vec![0u8; 0x3000];
        f[..headers.len()].copy_from_slice(&headers);
        f[0x1000..0x1010].copy_from_slice(b"code-code-code-!");
        f
    }

    /// Frames zeroed beforehand build the same domain; a list one short,
    /// or holding a frame the hypervisor does not hold, is refused.
    #[test]
    fn a_build_from_frames_zeroed_beforehand() {
        let mut mem = FakeMem::default();
        let mut store = std::vec![FrameInfo::RESERVED; 1024];
        let mut frames = FrameTable::new(&mut store);
        frames.add_free_range(100, 1024);
        let cfg = |nr_pages| DomainConfig {
            domid: DomId::of(3),
            name: "t",
            cmdline: "x=1",
            nr_pages,
            dma_pages: 0,
            privilege: None,
            console_evtchn: 1,
            store: None,
        };
        let mut held: std::vec::Vec<Mfn> = (0..128).map(|_| frames.alloc(Owner::Hypervisor).unwrap()).collect();
        for &m in &held {
            mem.zero_frame(m);
        }
        let b = build(&mut mem, &mut frames, &tiny_elf(), &cfg(128), 0x3, Source::Zeroed(&mut held)).unwrap();
        assert!(held.is_empty());
        assert_eq!(frames.count_owned(Owner::Domain(DomId::of(3))), 128);
        assert_eq!(b.entry, GUEST_KERNEL_BASE + 0x10);
        frames.release_domain(DomId::of(3));
        let mut short: std::vec::Vec<Mfn> = (0..127).map(|_| frames.alloc(Owner::Hypervisor).unwrap()).collect();
        let e = build(&mut mem, &mut frames, &tiny_elf(), &cfg(128), 0x3, Source::Zeroed(&mut short)).unwrap_err();
        assert!(matches!(e, BuildError::OutOfMemory { .. }), "{e:?}");
        frames.release_domain(DomId::of(3));
        let mut stray: std::vec::Vec<Mfn> = std::vec![frames.alloc(Owner::Domain(DomId::of(9))).unwrap()];
        let e = build(&mut mem, &mut frames, &tiny_elf(), &cfg(128), 0x3, Source::Zeroed(&mut stray)).unwrap_err();
        assert!(matches!(e, BuildError::OutOfMemory { .. }), "a frame not held is not taken: {e:?}");
        assert_eq!(frames.count_owned(Owner::Domain(DomId::of(9))), 1, "the stray frame stays its owner's");
    }

    #[test]
    fn builds_a_walkable_isolated_domain() {
        let mut mem = FakeMem::default();
        let mut store = std::vec![FrameInfo::RESERVED; 1024];
        let mut frames = FrameTable::new(&mut store);
        frames.add_free_range(100, 1024);
        let cfg = DomainConfig {
            domid: DomId::of(3),
            name: "t",
            cmdline: "x=1",
            nr_pages: 128,
            dma_pages: 0,
            privilege: None,
            console_evtchn: 1,
            store: None,
        };
        let b = build(&mut mem, &mut frames, &tiny_elf(), &cfg, 0xdead_0003, Source::Fresh).unwrap();
        assert_eq!(frames.count_owned(Owner::Domain(DomId::of(3))), 128);
        assert_eq!(b.entry, GUEST_KERNEL_BASE + 0x10);
        assert_eq!(mem.read_u64(b.root * 4096 + 511 * 8), 0xdead_0003);
        let v = GuestView { mem: &mut mem, frames: &frames, root: b.root, dom: DomId::of(3) };
        // Text is readable but not writable; data and stack are writable.
        assert!(v.translate(GuestVa(GUEST_KERNEL_BASE), Access::KERNEL_READ).is_ok());
        assert!(v.translate(GuestVa(GUEST_KERNEL_BASE), Access::KERNEL_WRITE).is_err());
        assert!(v.translate(GuestVa(GUEST_KERNEL_BASE + 0x1000), Access::KERNEL_WRITE).is_ok());
        assert!(v.translate(GuestVa(b.stack_top - 8), Access::KERNEL_WRITE).is_ok());
        // Page tables are read-only to the guest.
        let pt = Layout::va(b.layout.pt_pfn);
        assert!(v.translate(GuestVa(pt), Access::KERNEL_READ).is_ok());
        assert!(v.translate(GuestVa(pt), Access::KERNEL_WRITE).is_err());
        // Nothing is user-accessible.
        assert!(v.translate(GuestVa(GUEST_KERNEL_BASE), Access { write: false, user: true }).is_err());
        // Beyond the domain's memory nothing is mapped.
        assert!(v.translate(GuestVa(Layout::va(128)), Access::KERNEL_READ).is_err());
        // The console page is the guest's to write, and the start info
        // points at it.
        let console = Layout::va(b.layout.console_pfn);
        assert_eq!(v.translate(GuestVa(console), Access::KERNEL_WRITE), Ok(b.console_mfn * 4096));
        // The start info names the domain and its frame list matches.
        let mut si = [0u8; 256];
        v.copy_from(GuestVa(b.start_info_va), &mut si).unwrap();
        assert!(si.starts_with(b"ringfence-0.1"));
        let mut first = [0u8; 8];
        v.copy_from(GuestVa(Layout::va(b.layout.mfn_list_pfn)), &mut first).unwrap();
        let mfn0 = u64::from_le_bytes(first);
        assert_eq!(v.translate(GuestVa(GUEST_KERNEL_BASE), Access::KERNEL_READ), Ok(mfn0 * 4096));
        // The root is a validated, pinned L4 holding the pin and the
        // active-root references.
        let root = frames.get(b.root).unwrap();
        assert_eq!((root.ty, root.type_count, root.pinned), (FrameType::PageTable(4), 2, true));
    }

    /// Domain 5 with 600 pages (two level-1 tables) built from the tiny ELF
    /// in 2048 frames of fake machine memory.
    fn build_600(store: &mut [FrameInfo]) -> (FakeMem, FrameTable<'_>, Built) {
        let mut mem = FakeMem::default();
        let mut frames = FrameTable::new(store);
        frames.add_free_range(100, 2048);
        let cfg = DomainConfig {
            domid: DomId::of(5),
            name: "t",
            cmdline: "",
            nr_pages: 600,
            dma_pages: 0,
            privilege: None,
            console_evtchn: 1,
            store: None,
        };
        let b = build(&mut mem, &mut frames, &tiny_elf(), &cfg, 0xabc_0003, Source::Fresh).unwrap();
        (mem, frames, b)
    }

    /// Builds the tiny domain and checks the type of every frame against the
    /// layout: tables typed at their level with one reference each, data
    /// pages writable with one reference each, read-only pages untyped.
    #[test]
    fn initial_tables_are_validated_by_mm() {
        let mut store = std::vec![FrameInfo::RESERVED; 2048];
        let (mut mem, mut frames, b) = build_600(&mut store);
        let l = b.layout;
        assert_eq!(l.nr_pt_frames, 5);
        let v = GuestView { mem: &mut mem, frames: &frames, root: b.root, dom: DomId::of(5) };
        let mut mfns = std::vec![0u64; 600];
        for (pfn, m) in mfns.iter_mut().enumerate() {
            let mut word = [0u8; 8];
            v.copy_from(GuestVa(Layout::va(l.mfn_list_pfn) + pfn as u64 * 8), &mut word).unwrap();
            *m = u64::from_le_bytes(word);
        }
        for (pfn, &mfn) in mfns.iter().enumerate() {
            let pfn = pfn as u64;
            let f = frames.get(mfn).unwrap();
            // Every table is pinned, and counts its pin plus the one entry
            // (or, for the PML4, the active root) that refers to it.
            let expect = if pfn == l.pt_pfn {
                (FrameType::PageTable(4), 2, true)
            } else if pfn == l.pt_pfn + 1 {
                (FrameType::PageTable(3), 2, true)
            } else if pfn == l.pt_pfn + 2 {
                (FrameType::PageTable(2), 2, true)
            } else if pfn > l.pt_pfn + 2 && pfn < l.pt_pfn + l.nr_pt_frames {
                (FrameType::PageTable(1), 2, true)
            } else if pfn == 0 {
                // Text: mapped read-only, so it takes no type.
                (FrameType::None, 0, false)
            } else {
                (FrameType::Writable, 1, false)
            };
            assert_eq!((f.ty, f.type_count, f.pinned), expect, "pfn {pfn}");
        }
        assert_eq!(mem.read_u64(b.root * 4096 + 511 * 8), 0xabc_0003);
        // The guest cannot make its own level-1 table writable through the
        // validated path.
        let pt0 = mfns[(l.pt_pfn + 3) as usize];
        let entry = Pte::new(pt0, PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE).0;
        let ptr = pt0 * 4096 + (l.pt_pfn + 3) * 8;
        let mut mm = Mm::new(&mut mem, &mut frames, 0xabc_0003);
        assert_eq!(mm.mmu_update(DomId::of(5), ptr, entry), Err(Errno::EBUSY));
    }

    /// Every initial table is pinned, so later guest operations work on one
    /// table at a time (mm rule 7): a linked boot table cannot be unpinned,
    /// unlinking one leaves it pinned, and its unpin devalidates it alone.
    #[test]
    fn initial_tables_are_pinned_so_nothing_cascades() {
        let mut store = std::vec![FrameInfo::RESERVED; 2048];
        let (mut mem, mut frames, b) = build_600(&mut store);
        // The tables, by walking from the root; the second PT maps pfns
        // 512..600, all read-write data.
        let pdpt = Pte(mem.read_u64(b.root * 4096 + table_index(GUEST_KERNEL_BASE, 4) as u64 * 8)).mfn();
        let pd = Pte(mem.read_u64(pdpt * 4096)).mfn();
        let pt1 = Pte(mem.read_u64(pd * 4096 + 8)).mfn();
        let data = Pte(mem.read_u64(pt1 * 4096)).mfn();
        let mut root = b.root;
        let mut mm = Mm::new(&mut mem, &mut frames, 0xabc_0003);
        for t in [b.root, pdpt, pd, pt1] {
            assert_eq!(mm.unpin_table(DomId::of(5), t), Err(Errno::EBUSY), "table {t:#x}");
        }
        // Unlinking the second PT drops one reference; it stays pinned.
        mm.mmu_update(DomId::of(5), pd * 4096 + 8, 0).unwrap();
        let info = |mm: &Mm<'_, '_, FakeMem>, m: Mfn| {
            let f = mm.frames().get(m).unwrap();
            (f.ty, f.type_count, f.pinned)
        };
        assert_eq!(info(&mm, pt1), (FrameType::PageTable(1), 1, true));
        assert_eq!(info(&mm, pd), (FrameType::PageTable(2), 2, true));
        assert_eq!(info(&mm, data), (FrameType::Writable, 1, false));
        // Its unpin devalidates it and releases its data pages, nothing else.
        mm.unpin_table(DomId::of(5), pt1).unwrap();
        assert_eq!(info(&mm, pt1), (FrameType::None, 0, false));
        assert_eq!(info(&mm, data), (FrameType::None, 0, false));
        assert_eq!(info(&mm, pd), (FrameType::PageTable(2), 2, true));
        // The root is a pinned L4, so it can be loaded again.
        assert_eq!(mm.new_baseptr(DomId::of(5), &mut root, b.root), Ok(b.root * 4096));
    }

    #[test]
    fn out_of_memory_is_reported_before_allocating() {
        let mut mem = FakeMem::default();
        let mut store = std::vec![FrameInfo::RESERVED; 64];
        let mut frames = FrameTable::new(&mut store);
        frames.add_free_range(0, 64);
        let cfg = DomainConfig {
            domid: DomId::of(1),
            name: "t",
            cmdline: "",
            nr_pages: 128,
            dma_pages: 0,
            privilege: None,
            console_evtchn: 1,
            store: None,
        };
        let e = build(&mut mem, &mut frames, &tiny_elf(), &cfg, 0, Source::Fresh).unwrap_err();
        assert_eq!(e, BuildError::OutOfMemory { pages: 128, free: 64 });
        assert_eq!(frames.count_owned(Owner::Domain(DomId::of(1))), 0);
    }
}

#[cfg(test)]
mod dma_tests {
    use super::tests::tiny_elf;
    use super::*;
    use crate::mm::frames::FrameInfo;
    use crate::mm::guest_mem::fake::FakeMem;
    use crate::mm::guest_mem::{Access, GuestVa, GuestView};
    use zerocopy::FromBytes;

    fn cfg(dma_pages: u64) -> DomainConfig<'static> {
        DomainConfig {
            domid: DomId::of(4),
            name: "dom0",
            cmdline: "",
            nr_pages: 128,
            dma_pages,
            privilege: crate::domain::Privilege::of_domain(true),
            console_evtchn: 1,
            store: None,
        }
    }

    #[test]
    fn the_dma_pool_is_machine_contiguous_mapped_and_in_start_info() {
        let mut mem = FakeMem::default();
        let mut store = std::vec![FrameInfo::RESERVED; 1024];
        let mut frames = FrameTable::new(&mut store);
        // Fragment machine memory: only frames 299.. hold a long run.
        frames.add_free_range(100, 1024);
        for m in (100..300).step_by(2) {
            frames.reserve_range(m, m + 1);
        }
        let b = build(&mut mem, &mut frames, &tiny_elf(), &cfg(8), 0x3, Source::Fresh).unwrap();
        let v = GuestView { mem: &mut mem, frames: &frames, root: b.root, dom: DomId::of(4) };
        let mut raw = [0u8; 4096];
        v.copy_from(GuestVa(b.start_info_va), &mut raw).unwrap();
        let si = StartInfo::read_from_prefix(&raw).unwrap().0;
        let dma = si.dma;
        assert_eq!((dma.pages, dma.pfn, dma.va), (8, b.layout.dma_pfn, Layout::va(b.layout.dma_pfn)));
        assert!(dma.pfn + dma.pages <= si.first_free_pfn, "the guest's allocator would hand the pool out");
        assert_eq!(dma.mfn, 299, "the lowest run of 8 free frames");
        for k in 0..dma.pages {
            // Each pool page is mapped read-write at va + k pages, on
            // machine frame mfn + k, and the frame list agrees.
            let pa = v.translate(GuestVa(dma.va + k * 4096), Access::KERNEL_WRITE).unwrap();
            assert_eq!(pa, (dma.mfn + k) * 4096);
            let mut w = [0u8; 8];
            v.copy_from(GuestVa(si.mfn_list + (dma.pfn + k) * 8), &mut w).unwrap();
            assert_eq!(u64::from_le_bytes(w), dma.mfn + k);
            assert!(frames.owned_by(dma.mfn + k, DomId::of(4)));
        }
        assert_eq!(frames.count_owned(Owner::Domain(DomId::of(4))), 128);
    }

    #[test]
    fn no_pool_means_zero_in_start_info() {
        let mut mem = FakeMem::default();
        let mut store = std::vec![FrameInfo::RESERVED; 1024];
        let mut frames = FrameTable::new(&mut store);
        frames.add_free_range(100, 1024);
        let b = build(&mut mem, &mut frames, &tiny_elf(), &cfg(0), 0x3, Source::Fresh).unwrap();
        let v = GuestView { mem: &mut mem, frames: &frames, root: b.root, dom: DomId::of(4) };
        let mut raw = [0u8; 4096];
        v.copy_from(GuestVa(b.start_info_va), &mut raw).unwrap();
        let si = StartInfo::read_from_prefix(&raw).unwrap().0;
        assert_eq!(si.dma, DmaPoolInfo { va: 0, mfn: 0, pfn: 0, pages: 0 });
    }

    #[test]
    fn a_pool_without_a_long_enough_run_is_a_clear_build_error() {
        let mut mem = FakeMem::default();
        let mut store = std::vec![FrameInfo::RESERVED; 1024];
        let mut frames = FrameTable::new(&mut store);
        frames.add_free_range(100, 400);
        for m in (100..400).step_by(4) {
            frames.reserve_range(m, m + 1);
        }
        let e = build(&mut mem, &mut frames, &tiny_elf(), &cfg(8), 0x3, Source::Fresh).unwrap_err();
        assert_eq!(e, BuildError::NoContiguous { pages: 8 });
        assert!(std::format!("{e}").contains("machine-contiguous"));
        // A pool that leaves no room for the boot structures is too small.
        let e = build(&mut mem, &mut frames, &tiny_elf(), &cfg(127), 0x3, Source::Fresh).unwrap_err();
        assert!(matches!(e, BuildError::TooSmall { .. }), "{e:?}");
    }
}
