//! Physical memory through the hypervisor's identity map: the one
//! implementation of [`PhysMem`] that touches real memory.
//!
//! Callers (the library's page-table validator, guest-memory accessor,
//! event and builder code) pass only addresses inside frames the frame
//! table knows (RAM below 1 GiB, identity-mapped in the hypervisor view),
//! after checking ownership; this type does no checks of its own.

use core::sync::atomic::Ordering::SeqCst;
use ringfence_kernel::mm::frames::Mfn;
use ringfence_kernel::mm::guest_mem::PhysMem;

/// Machine memory through the hypervisor's identity map.
pub struct HvPhys;

impl PhysMem for HvPhys {
    fn read_u64(&self, pa: u64) -> u64 {
        // SAFETY: callers pass addresses inside frames the frame table knows
        // (RAM below 1 GiB), all identity-mapped in the hypervisor view;
        // `pa` is 8-aligned by construction of page-table entry addresses.
        unsafe { (pa as *const u64).read_volatile() }
    }
    fn write_u64(&mut self, pa: u64, val: u64) {
        // SAFETY: as for `read_u64`.
        unsafe { (pa as *mut u64).write_volatile(val) }
    }
    fn read(&self, pa: u64, buf: &mut [u8]) {
        // SAFETY: the range lies inside one known RAM frame (see
        // `read_u64`); the bytes are copied once into our own buffer.
        unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, buf.as_mut_ptr(), buf.len()) }
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), pa as *mut u8, data.len()) }
    }
    fn zero_frame(&mut self, mfn: Mfn) {
        // SAFETY: `mfn` is a RAM frame just allocated from the frame table.
        unsafe { core::ptr::write_bytes((mfn * 4096) as *mut u8, 0, 4096) }
    }
    fn fetch_or_u64(&mut self, pa: u64, bits: u64) -> u64 {
        // SAFETY: as for `read_u64` (8-aligned, in a known RAM frame); the
        // guest may access the word concurrently only through atomic or
        // plain accesses of its own, which an atomic RMW tolerates.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(pa as *mut u64) }.fetch_or(bits, SeqCst)
    }
    fn fetch_and_u64(&mut self, pa: u64, bits: u64) -> u64 {
        // SAFETY: as for `fetch_or_u64`.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(pa as *mut u64) }.fetch_and(bits, SeqCst)
    }
    fn cmpxchg_u64(&mut self, pa: u64, current: u64, new: u64) -> Result<u64, u64> {
        // SAFETY: as for `fetch_or_u64` (grant entries are 8 bytes in a
        // 4 KiB-aligned frame, so 8-aligned); a guest writing the word
        // meanwhile makes the exchange fail, which the caller expects.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(pa as *mut u64) }
            .compare_exchange(current, new, SeqCst, SeqCst)
    }
    fn swap_u8(&mut self, pa: u64, v: u8) -> u8 {
        // SAFETY: as for `fetch_or_u64` (a byte is always aligned).
        unsafe { core::sync::atomic::AtomicU8::from_ptr(pa as *mut u8) }.swap(v, SeqCst)
    }
}
