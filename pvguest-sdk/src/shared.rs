//! Access to this domain's shared-info page (see
//! [`pvguest_abi::shared_info`] for who writes which field).
//!
//! The page is shared with the hypervisor, which writes it between any two
//! guest instructions (from our point of view: whenever we trap or are
//! preempted). Every access here is a single volatile read or write of one
//! field, or an atomic read-modify-write for bits the hypervisor may set
//! concurrently; no reference into the page is ever created.

use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use pvguest_abi::shared_info::{SharedInfo, VcpuInfo, VcpuTimeInfo};

fn base() -> usize {
    crate::start_info().shared_info as usize
}

fn byte(off: usize) -> &'static AtomicU8 {
    // SAFETY: the shared-info page is mapped read-write for the domain's
    // whole life at the address the start info gives; `off` is a field
    // offset inside it; AtomicU8 has no alignment requirement.
    unsafe { AtomicU8::from_ptr((base() + off) as *mut u8) }
}

fn word(off: usize) -> &'static AtomicU64 {
    // SAFETY: as for `byte`; every u64 field offset used here is 8-aligned
    // (the layout is const-asserted in the ABI crate).
    unsafe { AtomicU64::from_ptr((base() + off) as *mut u64) }
}

const V0: usize = offset_of!(SharedInfo, vcpu_info);

/// `evtchn_upcall_pending` of vCPU 0.
pub(crate) fn upcall_pending() -> &'static AtomicU8 {
    byte(V0 + offset_of!(VcpuInfo, evtchn_upcall_pending))
}

/// `evtchn_upcall_mask` of vCPU 0 (the virtual interrupt flag).
pub(crate) fn upcall_mask() -> &'static AtomicU8 {
    byte(V0 + offset_of!(VcpuInfo, evtchn_upcall_mask))
}

/// `evtchn_pending_sel` of vCPU 0.
pub(crate) fn pending_sel() -> &'static AtomicU64 {
    word(V0 + offset_of!(VcpuInfo, evtchn_pending_sel))
}

/// Word `i` of `evtchn_pending`.
pub(crate) fn pending(i: usize) -> &'static AtomicU64 {
    word(offset_of!(SharedInfo, evtchn_pending) + 8 * (i % 64))
}

/// Word `i` of `evtchn_mask`.
pub(crate) fn mask(i: usize) -> &'static AtomicU64 {
    word(offset_of!(SharedInfo, evtchn_mask) + 8 * (i % 64))
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
