//! The atomics behind every shared index, and the loom model hooks.
//!
//! Normal builds use `core::sync::atomic`. Under `--cfg loom` the same names
//! come from `loom`, so the loom tests (`tests/loom.rs`) run the real
//! endpoint code against loom's model of the C11 memory model:
//! - the four index words of a region live in a [`LoomShadow`] instead of the
//!   raw bytes (loom atomics are objects, not reinterpretable memory);
//! - every slot access touches a `loom::cell::UnsafeCell<()>` for that slot,
//!   so loom checks that each slot write happens-before every read of it and
//!   each read happens-before the next write (R5, R7), although the slot data
//!   itself still goes through raw memory;
//! - [`LoomShadow::weaken_full_fences`] turns the SeqCst fences of R8/R9 into
//!   AcqRel ones, which lets a test show that loom finds the lost wake-up that
//!   those fences exist to prevent.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU32, Ordering};

#[cfg(loom)]
extern crate std;

/// The full (store-load) fence of R8 and R9.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn full_fence() {
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Index words and slot cells that stand in for shared memory in loom models.
///
/// Create one per ring inside `loom::model`, with one cell per slot, and
/// attach it to every [`SharedMem`](crate::SharedMem) built over that ring's
/// memory with [`SharedMem::with_loom_shadow`](crate::SharedMem::with_loom_shadow).
#[cfg(loom)]
pub struct LoomShadow {
    pub(crate) indices: [AtomicU32; 4],
    pub(crate) cells: std::vec::Vec<loom::cell::UnsafeCell<()>>,
    pub(crate) weak_fences: bool,
}

#[cfg(loom)]
impl LoomShadow {
    /// A shadow for a region with `slots` slots.
    pub fn new(slots: usize) -> Self {
        LoomShadow {
            indices: core::array::from_fn(|_| AtomicU32::new(0)),
            cells: (0..slots).map(|_| loom::cell::UnsafeCell::new(())).collect(),
            weak_fences: false,
        }
    }

    /// Replace the SeqCst fences of R8/R9 by AcqRel ones (a deliberate bug,
    /// for tests that check that loom catches the lost wake-up).
    pub fn weaken_full_fences(mut self) -> Self {
        self.weak_fences = true;
        self
    }

    pub(crate) fn full_fence(&self) {
        let order = if self.weak_fences { Ordering::AcqRel } else { Ordering::SeqCst };
        loom::sync::atomic::fence(order);
    }

    pub(crate) fn index(&self, offset: usize) -> &AtomicU32 {
        // Offsets 0 and 4 of each index line map to words 0..4.
        let spacing = crate::layout::INDEX_SPACING;
        &self.indices[(offset / spacing) * 2 + (offset % spacing) / 4]
    }
}
