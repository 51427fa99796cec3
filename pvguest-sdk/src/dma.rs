//! DMA memory (dom0): the machine-contiguous pool and machine addresses.
//!
//! A device reads and writes machine memory, so a driver needs buffers
//! whose machine addresses it knows and which are contiguous when the
//! device wants more than a page. dom0's manifest entry may set
//! `dma_kib`; the hypervisor then builds dom0 with that many KiB of
//! machine-contiguous frames, mapped read-write at
//! [`StartInfo::dma`](pvguest_abi::start_info::StartInfo::dma)'s `va`,
//! and says where they are in machine memory. [`alloc()`] hands out aligned
//! buffers from it (a bump allocator: buffers are never freed, as drivers
//! allocate their queues once). Any other frame the domain owns has its
//! machine address in the frame list ([`machine_of`]), and a granted
//! frame's grant map returns its `dev_bus_addr`.
//!
//! There is no IOMMU: a device that dom0 programs reaches every machine
//! address, so dom0 is DMA-trusted, as in Xen. The pool bounds nothing; it
//! only spares the driver the search for contiguous frames.
//!
//! These are what `virtio-drivers`' `Hal` ([`crate::virtio::SdkHal`])
//! sits on: `dma_alloc` is [`alloc()`] (machine address and pointer), and
//! `share` is [`machine_of`] on the buffer when its frames are
//! machine-contiguous (in place, no copy), else a bounce copy in the pool.
//!
//! ```ignore
//! use pvguest_sdk::dma;
//! let ring = dma::alloc(2 * 4096, 4096)?; // two contiguous pages
//! device.set_queue_address(ring.machine_addr());
//! ring.write(0, &[0u8; 16]);
//! ```

use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_abi::start_info::DmaPoolInfo;
use pvguest_abi::Errno;

/// Bytes of the pool handed out so far.
static USED: AtomicU64 = AtomicU64::new(0);

/// The pool as start info describes it (`None` without one).
pub fn pool() -> Option<DmaPoolInfo> {
    let d = crate::start_info().dma;
    (d.pages > 0).then_some(d)
}

/// A buffer in the DMA pool: machine-contiguous, zeroed when built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaBuffer {
    va: u64,
    machine: u64,
    len: u64,
}

/// Takes `len` bytes (at least 1) aligned to `align` (a power of two, in
/// machine and virtual memory alike) from the pool. `ENOMEM` without a
/// pool, `EINVAL` for a bad size or alignment, `ENOMEM` when it is used up.
pub fn alloc(len: u64, align: u64) -> Result<DmaBuffer, Errno> {
    let p = pool().ok_or(Errno::ENOMEM)?;
    if len == 0 || !align.is_power_of_two() {
        return Err(Errno::EINVAL);
    }
    let size = p.pages * 4096;
    let base = p.mfn * 4096;
    let mut cur = USED.load(Ordering::SeqCst);
    loop {
        let start = (base + cur).checked_next_multiple_of(align).ok_or(Errno::EINVAL)? - base;
        let end = start.checked_add(len).filter(|&e| e <= size).ok_or(Errno::ENOMEM)?;
        match USED.compare_exchange(cur, end, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Ok(DmaBuffer { va: p.va + start, machine: base + start, len }),
            Err(now) => cur = now,
        }
    }
}

/// The machine address of guest virtual address `va`: in the boot linear
/// mapping (any frame the domain owns, the pool's included) from the start
/// info's frame list, or in a foreign-mapping slot ([`crate::vmap`], a
/// peer's granted page) from the machine address its mapping recorded
/// (`Hal::share`, so a device can DMA straight into a peer's page).
pub fn machine_of(va: u64) -> Option<u64> {
    match crate::mm::pfn_of_va(va) {
        Some(pfn) => Some(crate::mm::mfn_of_pfn(pfn) * 4096 + va % 4096),
        None => crate::vmap::machine_of(va),
    }
}

impl DmaBuffer {
    /// Its machine address (what the device is given).
    pub fn machine_addr(&self) -> u64 {
        self.machine
    }
    /// Its virtual address.
    pub fn va(&self) -> u64 {
        self.va
    }
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether it is empty (never: [`alloc()`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// A pointer to it (`Hal::dma_alloc`'s second half).
    pub fn as_ptr(&self) -> core::ptr::NonNull<u8> {
        core::ptr::NonNull::new(self.va as *mut u8).expect("pool addresses are not null")
    }
    /// Copies `data` into the buffer at `offset` (panics past its end).
    pub fn write(&self, offset: u64, data: &[u8]) {
        assert!(offset.checked_add(data.len() as u64).is_some_and(|e| e <= self.len), "DMA write past the buffer");
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: inside the buffer (checked above), which lies in the
            // pool, mapped read-write for the domain's life; the device may
            // change it at any time, so it is accessed volatile and never
            // through a reference.
            unsafe { ((self.va + offset + i as u64) as *mut u8).write_volatile(b) }
        }
    }
    /// Copies bytes from the buffer at `offset` into `out` (panics past
    /// its end).
    pub fn read(&self, offset: u64, out: &mut [u8]) {
        assert!(offset.checked_add(out.len() as u64).is_some_and(|e| e <= self.len), "DMA read past the buffer");
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: as in `write`.
            *b = unsafe { ((self.va + offset + i as u64) as *const u8).read_volatile() };
        }
    }
}
