//! The shared-info page: one page per domain, written by both sides.
//!
//! The hypervisor allocates it from the domain's own frames at build time and
//! maps it read-write in the guest's initial view. Field ownership:
//! - `vcpu_info[0].evtchn_upcall_pending`, `evtchn_pending`,
//!   `evtchn_pending_sel`: set by the hypervisor, cleared by the guest.
//! - `vcpu_info[0].evtchn_upcall_mask`, `evtchn_mask`: written by the guest
//!   (its virtual interrupt flag and per-port masks), read by the hypervisor.
//! - `vcpu_info[0].time`, `wc_*`: written by the hypervisor under a version
//!   seqlock (odd version = update in progress), read by the guest.
//!
//! The hypervisor never trusts what it reads back from this page: it reads
//! each field once, with a volatile access, and treats it as a hint.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Time information for one vCPU, published under `version`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuTimeInfo {
    /// Odd while the hypervisor updates the record.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC value at `system_time`.
    pub tsc_timestamp: u64,
    /// Nanoseconds since boot at `tsc_timestamp`.
    pub system_time: u64,
    /// TSC-to-ns multiplier (32.32 fixed point after `tsc_shift`).
    pub tsc_to_system_mul: u32,
    /// Pre-shift applied to the TSC delta (may be negative).
    pub tsc_shift: i8,
    /// Padding.
    pub pad1: [i8; 3],
}

/// Per-vCPU part of the shared-info page.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuInfo {
    /// Set by the hypervisor when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// The guest's virtual interrupt flag: non-zero masks event upcalls.
    pub evtchn_upcall_mask: u8,
    /// Padding.
    pub pad0: [u8; 6],
    /// Which words of `evtchn_pending` may have bits set.
    pub evtchn_pending_sel: u64,
    /// Time information.
    pub time: VcpuTimeInfo,
}

/// Number of event-channel ports per domain.
pub const NR_EVENT_CHANNELS: usize = 4096;

/// The shared-info page (the first bytes of it).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SharedInfo {
    /// One entry per vCPU (one vCPU per domain for now).
    pub vcpu_info: [VcpuInfo; 1],
    /// Pending bit per port, set by the hypervisor.
    pub evtchn_pending: [u64; NR_EVENT_CHANNELS / 64],
    /// Mask bit per port, set by the guest.
    pub evtchn_mask: [u64; NR_EVENT_CHANNELS / 64],
    /// Wall-clock version (odd while updating).
    pub wc_version: u32,
    /// Wall-clock seconds since the epoch at system time 0.
    pub wc_sec: u32,
    /// Nanoseconds part of the wall-clock at system time 0.
    pub wc_nsec: u32,
    /// Upper 32 bits of `wc_sec`.
    pub wc_sec_hi: u32,
}

const _: () = {
    assert!(size_of::<VcpuTimeInfo>() == 32);
    assert!(size_of::<VcpuInfo>() == 48);
    assert!(offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
    assert!(offset_of!(VcpuInfo, time) == 16);
    assert!(offset_of!(SharedInfo, evtchn_pending) == 48);
    assert!(offset_of!(SharedInfo, evtchn_mask) == 48 + 512);
    assert!(offset_of!(SharedInfo, wc_version) == 48 + 1024);
    assert!(size_of::<SharedInfo>() == 48 + 1024 + 16);
    assert!(size_of::<SharedInfo>() <= 4096);
};
