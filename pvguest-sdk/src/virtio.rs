//! virtio devices (dom0): the `virtio-drivers` crate on the SDK.
//!
//! dom0 drives its virtio PCI functions with the well-kept
//! [`virtio_drivers`] crate (re-exported here, so guests use the version
//! the SDK was built with) rather than drivers of our own. The crate needs
//! two things from its host, and this module gives both:
//!
//! - [`HypercallCam`], its `ConfigurationAccess`: configuration space
//!   through the hypervisor ([`crate::pci`]). A read the hypervisor
//!   refuses reads as all ones (an absent function); a refused write is
//!   printed and remembered ([`last_config_error`]), never silent.
//! - [`SdkHal`], its `Hal`:
//!   - `dma_alloc` takes zeroed, page-aligned, machine-contiguous pages
//!     from the DMA pool ([`crate::dma::alloc`]); `dma_dealloc` gives
//!     nothing back (the pool is a bump allocator; drivers allocate their
//!     queues once).
//!   - `mmio_phys_to_virt` answers from the regions [`crate::mmio`] has
//!     mapped, and maps the BAR pages (uncached, through the validated
//!     page-table path) on first use.
//!   - `share` passes a buffer to the device in place when its frames are
//!     machine-contiguous (any single page is): the identity, no copy. A
//!     buffer that spans machine-discontiguous frames, or lies outside the
//!     domain's linear mapping, goes through a bounce buffer taken from
//!     the pool on first need ([`BOUNCE_PAGES`] pages): copied in for the
//!     device to read, copied back at `unshare` for it to write. A driver
//!     that wants zero copy for big transfers allocates its buffers with
//!     [`crate::dma::alloc`].
//!
//! There is no IOMMU: the device reaches every machine address, so dom0 is
//! DMA-trusted, as in Xen. The device writes into buffers while the driver
//! holds them, as the crate's API has it; the device is dom0's own, so no
//! hostile peer sits on the other side of this memory.
//!
//! Everything here runs in the domain's main flow, not in event handlers:
//! the bounce allocator's lock is not taken with events masked.
//!
//! [`blk`] builds an interrupt-driven block driver on these (the crate's
//! `VirtIOBlk` waiting on the device's interrupt, never polling).
//!
//! ```ignore
//! use pvguest_sdk::{pci::Bdf, virtio};
//! use virtio::virtio_drivers::device::blk::VirtIOBlk;
//!
//! let transport = virtio::transport(Bdf::new(0, 2, 0))?;
//! let mut disk = VirtIOBlk::<virtio::SdkHal, _>::new(transport)?;
//! println!("{} sectors", disk.capacity());
//! ```

pub mod blk;

use crate::pci::{self, Bdf};
use crate::{dma, println};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use pvguest_abi::Errno;
pub use virtio_drivers;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Pages of the bounce area (taken from the DMA pool on first need).
pub const BOUNCE_PAGES: usize = 64;

/// The PCI configuration mechanism of the virtio crate, over the
/// hypervisor's `physdev_op` config calls.
///
/// The crate sizes a BAR (decoding off, all ones written, the mask read
/// back, the old value and decoding restored) each time it looks at one,
/// also after dom0 has mapped that BAR, and the hypervisor refuses to let
/// a mapped BAR stop decoding or move (`EBUSY`). [`transport`] therefore
/// sizes every BAR register of the function before anything is mapped
/// and remembers the masks; when the hypervisor then refuses a step of
/// the sizing protocol with `EBUSY`, this type plays it instead: the
/// decode-off and restore writes are dropped (the live values never
/// changed) and the read after the all-ones write returns the remembered
/// mask. Every other refusal is printed and kept ([`last_config_error`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct HypercallCam;

/// Most BAR registers whose sizes [`HypercallCam`] remembers.
const MAX_SIZED: usize = 48;

/// A remembered BAR register: its function, offset, size mask, and
/// whether a played sizing step is under way (the next read returns the
/// mask).
#[derive(Clone, Copy)]
struct Sized {
    bdf: Bdf,
    reg: u8,
    mask: u32,
    sizing: bool,
}

static SIZED: spin::Mutex<[Option<Sized>; MAX_SIZED]> = spin::Mutex::new([None; MAX_SIZED]);

/// The errno of the last configuration write the hypervisor refused (0:
/// none yet), as [`Errno`]'s raw value.
static LAST_CONFIG_ERROR: AtomicU32 = AtomicU32::new(0);

/// The last configuration write the hypervisor refused through
/// [`HypercallCam`] (one it did not play itself), if any.
pub fn last_config_error() -> Option<Errno> {
    Errno::from_code(i64::from(LAST_CONFIG_ERROR.load(Ordering::Relaxed)))
}

fn bdf_of(df: DeviceFunction) -> Bdf {
    Bdf::new(df.bus, df.device, df.function)
}

/// Whether `reg` is one of the six BAR registers.
fn is_bar(reg: u8) -> bool {
    (0x10..0x28).contains(&reg) && reg.is_multiple_of(4)
}

/// Plays a sizing step the hypervisor refused with `EBUSY`; false if
/// `data` at `reg` is no such step.
fn play_sizing_step(bdf: Bdf, reg: u8, data: u32) -> bool {
    if u16::from(reg) == pci::reg::COMMAND {
        // Decoding off, or back on: the BAR is mapped, so it stays on.
        let live = pci::read16(bdf, pci::reg::COMMAND).unwrap_or(0);
        let decode = pci::command::MEMORY_SPACE | pci::command::IO_SPACE;
        return (data as u16) | decode == live | decode;
    }
    if !is_bar(reg) {
        return false;
    }
    let mut sized = SIZED.lock();
    let Some(entry) = sized.iter_mut().flatten().find(|e| e.bdf == bdf && e.reg == reg) else {
        return false;
    };
    if data == u32::MAX {
        entry.sizing = true;
        return true;
    }
    // The restore: only the live value itself.
    entry.sizing = false;
    pci::read32(bdf, u16::from(reg)).is_ok_and(|live| live == data)
}

impl ConfigurationAccess for HypercallCam {
    fn read_word(&self, df: DeviceFunction, register_offset: u8) -> u32 {
        let bdf = bdf_of(df);
        if is_bar(register_offset) {
            let sized = SIZED.lock();
            if let Some(e) = sized.iter().flatten().find(|e| e.bdf == bdf && e.reg == register_offset && e.sizing) {
                return e.mask;
            }
        }
        pci::read32(bdf, u16::from(register_offset)).unwrap_or(u32::MAX)
    }

    fn write_word(&mut self, df: DeviceFunction, register_offset: u8, data: u32) {
        let bdf = bdf_of(df);
        match pci::write32(bdf, u16::from(register_offset), data) {
            Ok(()) => {}
            Err(Errno::EBUSY) if play_sizing_step(bdf, register_offset, data) => {}
            Err(e) => {
                LAST_CONFIG_ERROR.store(e as u32, Ordering::Relaxed);
                println!("virtio: config write {bdf} reg {register_offset:#x} = {data:#x} refused: {}", e.name());
            }
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        HypercallCam
    }
}

/// Sizes every BAR register of `bdf` (decoding must be off, and nothing
/// mapped) and remembers the masks for [`HypercallCam`]. A register the
/// hypervisor refuses to size is left out.
fn size_bars(bdf: Bdf) -> Result<(), Errno> {
    for reg in (0x10u8..0x28).step_by(4) {
        let r = u16::from(reg);
        let old = pci::read32(bdf, r)?;
        if pci::write32(bdf, r, u32::MAX).is_err() {
            continue;
        }
        let mask = pci::read32(bdf, r)?;
        pci::write32(bdf, r, old)?;
        let mut sized = SIZED.lock();
        if let Some(e) = sized.iter_mut().flatten().find(|e| e.bdf == bdf && e.reg == reg) {
            e.mask = mask;
        } else if let Some(slot) = sized.iter_mut().find(|s| s.is_none()) {
            *slot = Some(Sized { bdf, reg, mask, sizing: false });
        }
    }
    Ok(())
}

/// A PCI root over [`HypercallCam`] (for the crate's enumeration and
/// capability walks).
pub fn pci_root() -> PciRoot<HypercallCam> {
    PciRoot::new(HypercallCam)
}

/// Why [`transport`] failed.
#[derive(Debug)]
pub enum TransportError {
    /// A configuration call failed (the function was not given to us, or
    /// the domain is not privileged).
    Config(Errno),
    /// The virtio crate refused the function (not virtio, or a capability
    /// missing).
    Virtio(VirtioPciError),
}

impl From<Errno> for TransportError {
    fn from(e: Errno) -> Self {
        TransportError::Config(e)
    }
}

impl From<VirtioPciError> for TransportError {
    fn from(e: VirtioPciError) -> Self {
        TransportError::Virtio(e)
    }
}

/// Sizes the BARs of the virtio function at `bdf` (see [`HypercallCam`]),
/// turns on its memory decoding and bus mastering, and builds its
/// transport (mapping its capability BAR pages).
pub fn transport(bdf: Bdf) -> Result<PciTransport, TransportError> {
    let cmd = pci::read16(bdf, pci::reg::COMMAND)?;
    let decode = pci::command::MEMORY_SPACE | pci::command::IO_SPACE;
    if pci::write16(bdf, pci::reg::COMMAND, cmd & !decode).is_ok() {
        size_bars(bdf)?;
    }
    pci::write16(bdf, pci::reg::COMMAND, cmd | pci::command::MEMORY_SPACE | pci::command::BUS_MASTER)?;
    let mut root = pci_root();
    let df = DeviceFunction { bus: bdf.bus, device: bdf.dev, function: bdf.func };
    Ok(PciTransport::new::<SdkHal, _>(&mut root, df)?)
}

/// The bounce area: its pool buffer and which pages are taken.
struct Bounce {
    buf: Option<dma::DmaBuffer>,
    taken: [bool; BOUNCE_PAGES],
}

/// The bounce area's machine address once taken (0: not yet).
static BOUNCE_AT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static BOUNCE: spin::Mutex<Bounce> = spin::Mutex::new(Bounce { buf: None, taken: [false; BOUNCE_PAGES] });

/// The machine address of `len` bytes at `va` if they lie in the linear
/// mapping on machine-contiguous frames.
fn contiguous_machine(va: u64, len: u64) -> Option<u64> {
    let first = dma::machine_of(va)?;
    let last_page = (va + len - 1) & !4095;
    let mut page = va & !4095;
    while page < last_page {
        page += 4096;
        let m = dma::machine_of(page)?;
        if m != (first & !4095) + (page - (va & !4095)) {
            return None;
        }
    }
    Some(first)
}

/// The virtio crate's host interface: DMA from the pool, BARs through
/// the validated mapping path, buffers shared in place or bounced.
#[derive(Debug)]
pub struct SdkHal;

// SAFETY: `dma_alloc` returns zeroed pool pages (never handed out twice:
// the pool is a bump allocator, zeroed when built), page-aligned in
// virtual and machine memory; `mmio_phys_to_virt` returns addresses
// inside a region mapped uncached for the domain's life (mappings made
// here are never unmapped); `share` returns the machine address the
// device must use for exactly the bytes of the buffer (in place or a
// bounce copy that `unshare` copies back).
unsafe impl Hal for SdkHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match dma::alloc(pages as u64 * 4096, 4096) {
            Ok(b) => (b.machine_addr(), b.as_ptr()),
            Err(e) => panic!("virtio: {pages} DMA pages: {} (set dma_kib in the manifest)", e.name()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // The pool is a bump allocator: queues live as long as the domain.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let size = size.max(1) as u64;
        if let Some(p) = crate::mmio::phys_to_virt(paddr, size) {
            return p;
        }
        let base = paddr & !4095;
        let len = (paddr + size).next_multiple_of(4096) - base;
        match crate::mmio::Mmio::map(base, len, true) {
            // Dropping the handle leaves the region mapped (and
            // registered) for the domain's life: the crate keeps the
            // pointer.
            Ok(_region) => {}
            Err(e) => panic!("virtio: mapping device memory {paddr:#x}+{size:#x}: {}", e.name()),
        }
        crate::mmio::phys_to_virt(paddr, size).expect("a region just mapped is registered")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let va = buffer.as_ptr() as *mut u8 as u64;
        let len = buffer.len() as u64;
        assert!(len > 0, "virtio: sharing an empty buffer");
        if let Some(m) = contiguous_machine(va, len) {
            return m;
        }
        let pages = (len as usize).div_ceil(4096);
        let mut b = BOUNCE.lock();
        if b.buf.is_none() {
            match dma::alloc(BOUNCE_PAGES as u64 * 4096, 4096) {
                Ok(buf) => {
                    BOUNCE_AT.store(buf.machine_addr(), Ordering::Release);
                    b.buf = Some(buf);
                }
                Err(e) => panic!("virtio: bounce area of {BOUNCE_PAGES} pages: {} (raise dma_kib)", e.name()),
            }
        }
        let start = (0..=BOUNCE_PAGES.saturating_sub(pages))
            .find(|&s| b.taken[s..s + pages].iter().all(|t| !t))
            .unwrap_or_else(|| panic!("virtio: bounce area full ({pages} pages wanted of {BOUNCE_PAGES})"));
        b.taken[start..start + pages].iter_mut().for_each(|t| *t = true);
        let area = b.buf.expect("allocated above");
        let offset = start as u64 * 4096;
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller promises `buffer` is valid and not
            // accessed by anyone else during this call.
            area.write(offset, unsafe { buffer.as_ref() });
        }
        area.machine_addr() + offset
    }

    unsafe fn unshare(paddr: PhysAddr, mut buffer: NonNull<[u8]>, direction: BufferDirection) {
        // Shared in place (the usual case) is known without the lock.
        let at = BOUNCE_AT.load(Ordering::Acquire);
        if at == 0 || paddr < at || paddr >= at + BOUNCE_PAGES as u64 * 4096 {
            return;
        }
        let mut b = BOUNCE.lock();
        let Some(area) = b.buf else { return };
        if paddr < area.machine_addr() || paddr >= area.machine_addr() + area.len() {
            return; // shared in place
        }
        let offset = paddr - area.machine_addr();
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: as in `share`; the bounce copy lies in the area.
            area.read(offset, unsafe { buffer.as_mut() });
        }
        let start = (offset / 4096) as usize;
        let pages = buffer.len().div_ceil(4096);
        b.taken[start..start + pages].iter_mut().for_each(|t| *t = false);
    }
}
