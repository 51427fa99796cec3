//! Test support: page-aligned memory standing in for granted pages, and raw
//! access to it for playing a hostile peer.
#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU32, Ordering};

use ring_protocol::SharedMem;

/// A zeroed, page-aligned heap region.
pub struct Pages {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is plain heap memory; threads share it only through
// ring endpoints (atomics and volatile copies).
unsafe impl Send for Pages {}
// SAFETY: as above.
unsafe impl Sync for Pages {}

impl Pages {
    pub fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Pages { ptr, len }
    }

    /// A view of `[offset, offset + len)` for one endpoint.
    pub fn mem_at(&self, offset: usize, len: usize) -> SharedMem<'_> {
        assert!(offset + len <= self.len);
        // SAFETY: the range is inside our allocation, which outlives the
        // returned borrow; the tests touch it only through endpoints and the
        // helpers below (atomics / volatile).
        unsafe { SharedMem::new(self.ptr.add(offset), len) }.unwrap()
    }

    pub fn mem(&self) -> SharedMem<'_> {
        self.mem_at(0, self.len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The hostile peer stores an index word.
    pub fn store_u32(&self, offset: usize, value: u32) {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.len);
        // SAFETY: in bounds and aligned; index words are accessed atomically.
        unsafe { AtomicU32::from_ptr(self.ptr.add(offset).cast()) }.store(value, Ordering::SeqCst);
    }

    pub fn load_u32(&self, offset: usize) -> u32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.len);
        // SAFETY: as in store_u32.
        unsafe { AtomicU32::from_ptr(self.ptr.add(offset).cast()) }.load(Ordering::SeqCst)
    }

    /// The hostile peer scribbles bytes.
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: in bounds; volatile, no reference formed.
            unsafe { self.ptr.add(offset + i).write_volatile(*b) };
        }
    }

    pub fn read_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len);
        // SAFETY: in bounds; volatile, no reference formed.
        (0..len).map(|i| unsafe { self.ptr.add(offset + i).read_volatile() }).collect()
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(1), 4096).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, layout) };
    }
}
