//! A heap for `alloc` (`Box`, `Vec`, ...), carved from the domain's free
//! frames. The allocator is `linked_list_allocator` (a first-fit free list):
//! a well-kept crate, so the SDK does not hand-roll one.
//!
//! ```ignore
//! extern crate alloc;
//! pvguest_sdk::heap::init(64).expect("256 KiB of heap");
//! let v = alloc::vec![1, 2, 3];
//! ```
//! Until [`init`] runs, every allocation fails (and `alloc` reports it).

use linked_list_allocator::LockedHeap;
use pvguest_abi::Errno;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Gives the heap `pages` contiguous free frames. Call once.
pub fn init(pages: u64) -> Result<(), Errno> {
    let first = crate::mm::alloc_pages(pages).ok_or(Errno::ENOMEM)?;
    let mut h = HEAP.lock();
    if h.size() != 0 {
        return Err(Errno::EEXIST);
    }
    // SAFETY: the pages were just taken from the free pool, are mapped
    // read-write and contiguous in the linear map, and are used for nothing
    // else; the heap is empty, so nothing it handed out is lost.
    unsafe { h.init(first.va() as *mut u8, (pages * 4096) as usize) };
    Ok(())
}

/// Bytes in use and free.
pub fn stats() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}
