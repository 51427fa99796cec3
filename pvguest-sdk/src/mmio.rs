//! Device memory (dom0): a device's MMIO registers mapped uncached.
//!
//! dom0 maps the frames of a BAR of a PCI function it was given with an
//! ordinary validated page-table update (`update_va_mapping`) whose entry
//! names the machine frame and has PCD and PWT set (uncached with the
//! power-on PAT). The hypervisor allows it only for frames wholly inside a
//! memory BAR of a function given to dom0 that decodes memory; RAM of any
//! domain, the hypervisor, the local APIC and the IOAPIC are `EPERM`, as
//! is a writable mapping of a frame holding the function's MSI-X table or
//! pending-bit array (map those read-only); an entry that is not uncached
//! is `EINVAL`. While a BAR has mappings, the hypervisor refuses to move
//! it or to turn the function's memory decoding off (`EBUSY`): unmap
//! ([`Mmio::unmap`]) first. A domU gets `EPERM` for every frame.
//!
//! Mappings go at virtual addresses just past the domain's memory, in the
//! slots of its last boot page-table page ([`window`]); there are as many
//! as that page has free slots (up to 511, and none for a domain of a
//! multiple of 2 MiB). Addresses there are handed out once and never
//! reused. A mapping that does not fit there takes consecutive slots of
//! the foreign-mapping window ([`crate::vmap`], whose level-1 tables are
//! the domain's own), given back when it is unmapped.
//!
//! A [`Mmio`] handle gives bounds-checked volatile reads and writes, so
//! guest code needs no `unsafe`; [`phys_to_virt`] answers where a machine
//! address of a mapped region is (what `virtio-drivers`' `Hal::
//! mmio_phys_to_virt` asks).
//!
//! ```ignore
//! use pvguest_sdk::mmio::Mmio;
//! // BAR4 of a virtio device: 16 KiB at `bar4` (from its BAR registers).
//! let regs = Mmio::map(bar4, 0x4000, true)?;
//! let capacity = regs.read64(device_cfg_offset);
//! ```

use crate::mm::{self, Pte};
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_abi::Errno;

/// Page-cache bits of an uncached entry: PWT (3) and PCD (4).
pub const UNCACHED: Pte = Pte((1 << 3) | (1 << 4));

/// The entry bits of an uncached, no-execute device mapping, writable or
/// not (what [`Mmio::map`] uses; for [`Mmio::probe`]).
pub fn uncached(writable: bool) -> Pte {
    let f = UNCACHED | Pte::NO_EXECUTE;
    if writable {
        f | Pte::WRITABLE
    } else {
        f
    }
}

/// Most mapped regions [`phys_to_virt`] remembers.
pub const MAX_REGIONS: usize = 16;

/// Pages of the window handed out so far.
static USED: AtomicU64 = AtomicU64::new(0);
/// Regions mapped: (machine base, va, len), for [`phys_to_virt`].
static REGIONS: spin::Mutex<[(u64, u64, u64); MAX_REGIONS]> = spin::Mutex::new([(0, 0, 0); MAX_REGIONS]);

/// The virtual window for device mappings: its first address and pages
/// (the free slots of the last boot page-table page, past the domain's
/// memory).
pub fn window() -> (u64, u64) {
    let si = crate::start_info();
    let start = si.virt_base + si.nr_pages * 4096;
    let pages = (512 - si.nr_pages % 512) % 512;
    (start, pages)
}

/// A mapped device-memory region.
#[derive(Debug)]
pub struct Mmio {
    va: u64,
    phys: u64,
    len: u64,
    /// Its addresses are foreign-mapping slots (given back at unmap).
    vmapped: bool,
}

/// `pages` fresh consecutive addresses: from the boot window while it has
/// room, else from the foreign-mapping window (`true`). `ENOMEM` if
/// neither has.
fn take(pages: u64) -> Result<(u64, bool), Errno> {
    let (start, max) = window();
    let taken =
        USED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| used.checked_add(pages).filter(|&end| end <= max));
    match taken {
        Ok(first) => Ok((start + first * 4096, false)),
        Err(_) => {
            let n = usize::try_from(pages).map_err(|_| Errno::ENOMEM)?;
            crate::vmap::alloc(n).map(|va| (va, true)).map_err(|_| Errno::ENOMEM)
        }
    }
}

impl Mmio {
    /// Maps `len` bytes of device memory at machine address `phys` (both
    /// page-aligned), writable if `writable`, uncached and no-execute, at
    /// fresh addresses of the [`window`]. On a refusal the pages mapped so
    /// far are unmapped again and the hypervisor's error is returned;
    /// `ENOMEM` if the window is full, `EINVAL` if unaligned or empty.
    pub fn map(phys: u64, len: u64, writable: bool) -> Result<Mmio, Errno> {
        if !phys.is_multiple_of(4096) || len == 0 || !len.is_multiple_of(4096) {
            return Err(Errno::EINVAL);
        }
        let pages = len / 4096;
        let (va, vmapped) = take(pages)?;
        let flags = uncached(writable);
        for k in 0..pages {
            if let Err(e) = mm::update_va_mapping(va + k * 4096, Pte::new(phys / 4096 + k, flags)) {
                for j in 0..k {
                    let _ = mm::update_va_mapping(va + j * 4096, Pte(0));
                }
                if vmapped {
                    crate::vmap::free(va, pages as usize);
                }
                return Err(e);
            }
        }
        let mut r = REGIONS.lock();
        if let Some(slot) = r.iter_mut().find(|s| s.2 == 0) {
            *slot = (phys, va, len);
        }
        Ok(Mmio { va, phys, len, vmapped })
    }

    /// Maps one page-aligned frame with exactly the entry bits `flags`
    /// (PRESENT is added) at a fresh window address and unmaps it again:
    /// for probing what the hypervisor allows (tests, diagnostics).
    pub fn probe(phys: u64, flags: Pte) -> Result<(), Errno> {
        let (va, vmapped) = take(1)?;
        let mapped = mm::update_va_mapping(va, Pte::new(phys / 4096, flags));
        let r = mapped.and_then(|()| mm::update_va_mapping(va, Pte(0)));
        if vmapped && (mapped.is_err() || r.is_ok()) {
            // Nothing is left mapped there (a slot whose unmap failed is
            // never handed out again).
            crate::vmap::free(va, 1);
        }
        r
    }

    /// [`Mmio::probe`] of each of the `frames` frames from `phys` on, all
    /// through one window address: calls `answer` with each frame's
    /// machine address and the hypervisor's answer (for sweeping a range,
    /// which [`Mmio::probe`]'s fresh address per call would exhaust).
    /// `ENOMEM` if the window is full; a frame that maps but does not unmap
    /// stops the sweep with that error.
    pub fn probe_each(
        phys: u64,
        frames: u64,
        flags: Pte,
        mut answer: impl FnMut(u64, Result<(), Errno>),
    ) -> Result<(), Errno> {
        let (va, vmapped) = take(1)?;
        let r = Self::sweep(va, phys, frames, flags, &mut answer);
        if vmapped && r.is_ok() {
            crate::vmap::free(va, 1);
        }
        r
    }

    fn sweep(
        va: u64,
        phys: u64,
        frames: u64,
        flags: Pte,
        answer: &mut impl FnMut(u64, Result<(), Errno>),
    ) -> Result<(), Errno> {
        for k in 0..frames {
            let at = phys + k * 4096;
            let r = mm::update_va_mapping(va, Pte::new(at / 4096, flags));
            if r.is_ok() {
                mm::update_va_mapping(va, Pte(0))?;
            }
            answer(at, r);
        }
        Ok(())
    }

    /// Unmaps the region (its BAR may then move again).
    pub fn unmap(self) -> Result<(), Errno> {
        for k in 0..self.len / 4096 {
            mm::update_va_mapping(self.va + k * 4096, Pte(0))?;
        }
        let mut r = REGIONS.lock();
        if let Some(slot) = r.iter_mut().find(|s| s.1 == self.va) {
            *slot = (0, 0, 0);
        }
        if self.vmapped {
            crate::vmap::free(self.va, (self.len / 4096) as usize);
        }
        Ok(())
    }

    /// Its machine address.
    pub fn phys(&self) -> u64 {
        self.phys
    }
    /// Its virtual address.
    pub fn va(&self) -> u64 {
        self.va
    }
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether it is empty (never: [`Mmio::map`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of `size` bytes at `offset`, aligned to `size`, inside
    /// the region (panics otherwise: a driver bug).
    fn at(&self, offset: u64, size: u64) -> u64 {
        assert!(
            offset.is_multiple_of(size) && offset.checked_add(size).is_some_and(|e| e <= self.len),
            "MMIO access of {size} bytes at {offset:#x} outside a region of {:#x} bytes or misaligned",
            self.len
        );
        self.va + offset
    }

    /// Reads the byte at `offset`.
    pub fn read8(&self, offset: u64) -> u8 {
        let p = self.at(offset, 1) as *const u8;
        // SAFETY: `p` lies inside this region, mapped (uncached) for the
        // handle's life; device registers are read volatile, never cached
        // in a reference.
        unsafe { p.read_volatile() }
    }
    /// Reads the u16 at `offset` (aligned).
    pub fn read16(&self, offset: u64) -> u16 {
        let p = self.at(offset, 2) as *const u16;
        // SAFETY: as in `read8`; aligned by `at`.
        unsafe { p.read_volatile() }
    }
    /// Reads the u32 at `offset` (aligned).
    pub fn read32(&self, offset: u64) -> u32 {
        let p = self.at(offset, 4) as *const u32;
        // SAFETY: as in `read8`; aligned by `at`.
        unsafe { p.read_volatile() }
    }
    /// Reads the u64 at `offset` (aligned) as two u32 reads, low first
    /// (as virtio's device configuration allows).
    pub fn read64(&self, offset: u64) -> u64 {
        let lo = self.read32(offset);
        let hi = self.read32(offset + 4);
        u64::from(hi) << 32 | u64::from(lo)
    }
    /// Writes the byte at `offset`.
    pub fn write8(&self, offset: u64, v: u8) {
        let p = self.at(offset, 1) as *mut u8;
        // SAFETY: as in `read8`; a read-only region faults in the guest,
        // which is its own bug, not undefined behaviour of ours.
        unsafe { p.write_volatile(v) }
    }
    /// Writes the u16 at `offset` (aligned).
    pub fn write16(&self, offset: u64, v: u16) {
        let p = self.at(offset, 2) as *mut u16;
        // SAFETY: as in `write8`.
        unsafe { p.write_volatile(v) }
    }
    /// Writes the u32 at `offset` (aligned).
    pub fn write32(&self, offset: u64, v: u32) {
        let p = self.at(offset, 4) as *mut u32;
        // SAFETY: as in `write8`.
        unsafe { p.write_volatile(v) }
    }
}

/// Where `size` bytes at machine address `phys` are mapped, if inside a
/// region mapped by [`Mmio::map`] (`Hal::mmio_phys_to_virt`).
pub fn phys_to_virt(phys: u64, size: u64) -> Option<core::ptr::NonNull<u8>> {
    let r = REGIONS.lock();
    let &(base, va, len) = r.iter().find(|&&(b, _, l)| l > 0 && phys >= b && phys - b < l)?;
    if phys - base + size > len {
        return None;
    }
    core::ptr::NonNull::new((va + (phys - base)) as *mut u8)
}
