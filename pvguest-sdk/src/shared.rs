//! Access to this domain's shared-info page (see
//! [`pvguest_abi::shared_info`] for who writes which field).
//!
//! The page is shared with the hypervisor, which writes it between any two
//! guest instructions (from our point of view: whenever we trap or are
//! preempted). Every access here is a single volatile read or write of one
//! field, or an atomic read-modify-write for bits the hypervisor may set
//! concurrently; no reference into the page is ever created.
//!
//! The page's address is read from the start info once, by the runtime
//! before `main` ([`publish`]), and kept in [`BASE`]: the event upcall
//! reaches the page on every event, and going through the start info's
//! `spin::Once` there cost a check and a branch per field.

use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use pvguest_abi::shared_info::{SharedInfo, VcpuInfo, VcpuTimeInfo};

/// The shared-info page's address (0: not published yet). Written once,
/// by [`publish`], before anything else of the SDK runs; never changes
/// afterwards (the page stays mapped there for the domain's whole life).
static BASE: AtomicUsize = AtomicUsize::new(0);

/// Publishes the page's address from the start info (the runtime, once,
/// before `main`).
pub(crate) fn publish(si: &pvguest_abi::StartInfo) {
    BASE.store(si.shared_info as usize, Ordering::Relaxed);
}

#[inline]
fn base() -> usize {
    match BASE.load(Ordering::Relaxed) {
        0 => crate::start_info().shared_info as usize,
        b => b,
    }
}

/// The page, at its published address: for a caller that reaches several
/// fields in a row (the event upcall), which then reads the address once.
#[derive(Clone, Copy)]
pub(crate) struct Page(usize);

/// The shared-info page.
#[inline]
pub(crate) fn page() -> Page {
    Page(base())
}

const V0: usize = offset_of!(SharedInfo, vcpu_info);

impl Page {
    #[inline]
    fn byte(self, off: usize) -> &'static AtomicU8 {
        // SAFETY: the shared-info page is mapped read-write for the
        // domain's whole life at the address the start info gives (`self.0`
        // is that address); `off` is a field offset inside it; AtomicU8
        // has no alignment requirement.
        unsafe { AtomicU8::from_ptr((self.0 + off) as *mut u8) }
    }

    #[inline]
    fn word(self, off: usize) -> &'static AtomicU64 {
        // SAFETY: as for `byte`; every u64 field offset used here is
        // 8-aligned (the layout is const-asserted in the ABI crate).
        unsafe { AtomicU64::from_ptr((self.0 + off) as *mut u64) }
    }

    /// `evtchn_upcall_pending` of vCPU 0.
    #[inline]
    pub(crate) fn upcall_pending(self) -> &'static AtomicU8 {
        self.byte(V0 + offset_of!(VcpuInfo, evtchn_upcall_pending))
    }

    /// `evtchn_upcall_mask` of vCPU 0 (the virtual interrupt flag).
    #[inline]
    pub(crate) fn upcall_mask(self) -> &'static AtomicU8 {
        self.byte(V0 + offset_of!(VcpuInfo, evtchn_upcall_mask))
    }

    /// `evtchn_pending_sel` of vCPU 0.
    #[inline]
    pub(crate) fn pending_sel(self) -> &'static AtomicU64 {
        self.word(V0 + offset_of!(VcpuInfo, evtchn_pending_sel))
    }

    /// Word `i` of `evtchn_pending`.
    #[inline]
    pub(crate) fn pending(self, i: usize) -> &'static AtomicU64 {
        self.word(offset_of!(SharedInfo, evtchn_pending) + 8 * (i % 64))
    }

    /// Word `i` of `evtchn_mask`.
    #[inline]
    pub(crate) fn mask(self, i: usize) -> &'static AtomicU64 {
        self.word(offset_of!(SharedInfo, evtchn_mask) + 8 * (i % 64))
    }
}

/// `evtchn_upcall_pending` of vCPU 0.
pub(crate) fn upcall_pending() -> &'static AtomicU8 {
    page().upcall_pending()
}

/// `evtchn_upcall_mask` of vCPU 0 (the virtual interrupt flag).
pub(crate) fn upcall_mask() -> &'static AtomicU8 {
    page().upcall_mask()
}

/// Word `i` of `evtchn_pending`.
pub(crate) fn pending(i: usize) -> &'static AtomicU64 {
    page().pending(i)
}

/// Word `i` of `evtchn_mask`.
pub(crate) fn mask(i: usize) -> &'static AtomicU64 {
    page().mask(i)
}

fn read_u32(off: usize) -> u32 {
    // SAFETY: an aligned u32 field of the mapped shared-info page.
    unsafe { ((base() + off) as *const u32).read_volatile() }
}

fn read_u64(off: usize) -> u64 {
    // SAFETY: an aligned u64 field of the mapped shared-info page.
    unsafe { ((base() + off) as *const u64).read_volatile() }
}

/// A consistent copy of the time record, read under its version seqlock.
pub(crate) fn time_info() -> VcpuTimeInfo {
    let t = V0 + offset_of!(VcpuInfo, time);
    loop {
        let v1 = read_u32(t + offset_of!(VcpuTimeInfo, version));
        core::sync::atomic::fence(Ordering::Acquire);
        let tail = read_u64(t + offset_of!(VcpuTimeInfo, tsc_to_system_mul));
        let info = VcpuTimeInfo {
            version: v1,
            pad0: 0,
            tsc_timestamp: read_u64(t + offset_of!(VcpuTimeInfo, tsc_timestamp)),
            system_time: read_u64(t + offset_of!(VcpuTimeInfo, system_time)),
            tsc_to_system_mul: tail as u32,
            tsc_shift: (tail >> 32) as u8 as i8,
            pad1: [0; 3],
        };
        core::sync::atomic::fence(Ordering::Acquire);
        let v2 = read_u32(t + offset_of!(VcpuTimeInfo, version));
        if v1 == v2 && v1 & 1 == 0 {
            return info;
        }
        core::hint::spin_loop();
    }
}

/// A consistent copy of the wall clock (seconds, nanoseconds) at system
/// time 0.
pub(crate) fn wallclock() -> (u64, u32) {
    let w = offset_of!(SharedInfo, wc_version);
    loop {
        let v1 = read_u32(w);
        core::sync::atomic::fence(Ordering::Acquire);
        let sec = u64::from(read_u32(w + 4)) | (u64::from(read_u32(w + 12)) << 32);
        let nsec = read_u32(w + 8);
        core::sync::atomic::fence(Ordering::Acquire);
        if v1 == read_u32(w) && v1 & 1 == 0 {
            return (sec, nsec);
        }
        core::hint::spin_loop();
    }
}
