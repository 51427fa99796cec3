//! Domain control (`hypercall::DOMCTL`, Xen's `__HYPERVISOR_domctl`):
//! what the privileged domain learns of the others. Every command is
//! privileged: any other caller gets `EPERM`.
//!
//! `domctl(GETDOMAININFO, &mut DomainInfo)`: the caller sets
//! [`DomainInfo::domid`] to a cursor; the hypervisor fills in the live
//! domain with the smallest id at or above it (`ESRCH` when there is
//! none), as Xen's `XEN_DOMCTL_getdomaininfo` does. To list every domain,
//! start at 0 and continue from `domid + 1`:
//!
//! ```ignore
//! let mut next = 0;
//! while let Ok(info) = pvguest_sdk::domctl::domain_info(next) {
//!     // ... info.domid, info.name(), info.store_evtchn ...
//!     next = info.domid + 1;
//! }
//! ```
//!
//! A domain that has shut down or crashed but is not yet reaped is listed
//! with [`dominf::DYING`]; once reaped it is gone (and its id is never
//! reused for a later domain: see the hypervisor's domain table).

//! The toolstack's commands (`domctl(cmd, arg, 0)`):
//!
//! | cmd | argument | what |
//! |---|---|---|
//! | [`CREATEDOMAIN`] | `&mut` [`CreateDomain`] | build a domain from an ELF image in the caller's memory; out: its id |
//! | [`DESTROYDOMAIN`] | a domain id | end it now; its resources are reclaimed in bounded steps |
//! | [`PAUSEDOMAIN`] / [`UNPAUSEDOMAIN`] | a domain id | stop or resume scheduling it |
//! | [`GETDOMAININFO`] | `&mut` [`DomainInfo`] | the live domain with the smallest id at or above a cursor |
//! | [`CONSOLE_TAKEOVER`] | a domain id | the caller drains that domain's console from now on; out: its port to it |
//! | [`SCHEDOP`] | `&` [`SchedParams`] | set a domain's BVT weight and warp |
//! | [`PHYSINFO`] | `&mut` [`PhysInfo`] | frames, domains, ports and hypervisor heap in use (the leak check's figures) |
//! | [`BOOTIMAGE_INFO`] | `&mut` [`BootImage`] | a template of the boot bundle: name, defaults, image size |
//! | [`BOOTIMAGE_READ`] | `&` [`ReadBootImage`] | copy up to [`BOOTIMAGE_CHUNK`] bytes of a template's image |
//!
//! # Creating a domain
//! The image is the caller's: the hypervisor copies it out of the caller's
//! memory, then takes and zeroes the new domain's frames, both as a
//! hypercall continuation ([`CREATE_CHUNK`] bytes, or one frame, per unit
//! of work; the third argument carries the work done, which the caller
//! passes as 0), validates the image with the same ELF loader as the boot
//! bundle's, and builds the domain in those frames (the loading of the
//! image and the page tables are the one step left whole). On failure `reason` says why, in words
//! (`EINVAL` for a bad image or argument, `ENOMEM` when memory is short,
//! `ENOSPC` when the domain table is full). The new domain gets a console
//! and a store connection as a boot domain does, and runs at once unless
//! [`create::PAUSED`] is set.
//!
//! # Destroying one
//! `DESTROYDOMAIN` ends the domain at once (its exit is "destroyed") and
//! queues its teardown, which releases its grant mappings (sending the
//! unmap notifications its grantees asked for), closes its ports (its
//! peers' ends revert to unbound) and frees its frames, in bounded steps.
//! `VIRQ_DOM_EXC` tells the privileged domain when the domain ended and
//! again when it is gone. The caller itself cannot be destroyed or paused
//! (`EINVAL`); a domain already ending is not an error.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Build a domain ([`CreateDomain`]; Xen's `XEN_DOMCTL_createdomain`
/// and the toolstack's build in one).
pub const CREATEDOMAIN: u64 = 1;
/// End a domain and reclaim everything it holds (`XEN_DOMCTL_destroydomain`).
pub const DESTROYDOMAIN: u64 = 2;
/// Stop scheduling a domain (`XEN_DOMCTL_pausedomain`).
pub const PAUSEDOMAIN: u64 = 3;
/// Resume a paused domain (`XEN_DOMCTL_unpausedomain`).
pub const UNPAUSEDOMAIN: u64 = 4;
/// Fill a [`DomainInfo`] (Xen's `XEN_DOMCTL_getdomaininfo`).
pub const GETDOMAININFO: u64 = 5;
/// Hand a domain's console to the caller (`domctl(CONSOLE_TAKEOVER,
/// domid)`): the hypervisor stops draining its console ring, which the
/// caller maps through the reserved grant
/// [`crate::grant::GNTTAB_RESERVED_CONSOLE`] and drains itself, passing
/// the bytes on with `console_io` `WRITE_AS`. Bytes already in the ring
/// wait there. Returns a new port of the caller's, connected to the
/// domain's console port (which keeps its number). When the domain ends,
/// its exit report waits (a while) for the caller to drain what it left in
/// the ring. `EBUSY`: taken already; itself `EINVAL`; no such domain, or
/// one that has ended, `ESRCH`; the domain closed its console port
/// `ENOENT`; no free port `ENOSPC`.
pub const CONSOLE_TAKEOVER: u64 = 6;
/// Set a domain's scheduling parameters ([`SchedParams`];
/// `XEN_DOMCTL_scheduler_op`).
pub const SCHEDOP: u64 = 16;
/// Fill a [`PhysInfo`] (Xen's `XEN_SYSCTL_physinfo` in spirit).
pub const PHYSINFO: u64 = 64;
/// Fill a [`BootImage`]: one template of the boot bundle.
pub const BOOTIMAGE_INFO: u64 = 65;
/// Copy part of a template's image ([`ReadBootImage`]).
pub const BOOTIMAGE_READ: u64 = 66;

/// Image bytes one unit of [`CREATEDOMAIN`]'s work copies.
pub const CREATE_CHUNK: u64 = 16 * 1024;
/// Largest image [`CREATEDOMAIN`] takes (the bytes the loader reads: the
/// ELF headers and every `PT_LOAD` segment's file bytes; debugging
/// sections after them need not be passed).
pub const MAX_CREATE_IMAGE: u64 = 8 << 20;
/// Largest [`ReadBootImage::len`].
pub const BOOTIMAGE_CHUNK: u32 = 16 * 1024;
/// Longest command line (bytes, no NUL), as in the boot bundle.
pub const MAX_CMDLINE: usize = 1023;
/// Most memory a created domain may have, in KiB (1 GiB).
pub const MAX_CREATE_MEM_KIB: u32 = 1 << 20;

/// [`CreateDomain::flags`].
pub mod create {
    /// Build the domain paused: it runs once `UNPAUSEDOMAIN` says so.
    pub const PAUSED: u32 = 1 << 0;
    /// Every flag this hypervisor knows (others are `EINVAL`).
    pub const KNOWN: u32 = PAUSED;
}

/// [`CREATEDOMAIN`] argument and result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CreateDomain {
    /// In: guest address of the ELF image in the caller's memory.
    pub image: u64,
    /// In: its length in bytes, `1..=MAX_CREATE_IMAGE`.
    pub image_len: u64,
    /// In: guest address of the command line (UTF-8, no NUL).
    pub cmdline: u64,
    /// In: its length, at most [`MAX_CMDLINE`].
    pub cmdline_len: u32,
    /// In: memory in KiB, a positive multiple of 4, at most
    /// [`MAX_CREATE_MEM_KIB`].
    pub mem_kib: u32,
    /// In: BVT weight `1..=10_000`, or 0 for the default.
    pub weight: u32,
    /// In: BVT warp in microseconds (0: none).
    pub warp_us: u32,
    /// In: [`create`] flags.
    pub flags: u32,
    /// Out: the new domain's id.
    pub domid: u32,
    /// In: the name, 1..=31 bytes of `[A-Za-z0-9._-]`, NUL-terminated.
    pub name: [u8; crate::start_info::MAX_NAME],
    /// Out, on failure: why, in words, NUL-terminated.
    pub reason: [u8; 96],
}

impl Default for CreateDomain {
    fn default() -> Self {
        CreateDomain::new_zeroed()
    }
}

impl CreateDomain {
    /// The failure reason up to its NUL (empty if none or not UTF-8).
    pub fn reason(&self) -> &str {
        c_str(&self.reason)
    }
}

/// [`SCHEDOP`] argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SchedParams {
    /// The domain.
    pub domid: u32,
    /// BVT weight `1..=10_000`.
    pub weight: u32,
    /// BVT warp in microseconds (0: none).
    pub warp_us: u32,
    /// Zero.
    pub reserved: u32,
}

/// [`PHYSINFO`] result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysInfo {
    /// Frames the hypervisor manages for domains (free or owned).
    pub total_frames: u64,
    /// Frames free now (a dead domain's come back as its teardown runs).
    pub free_frames: u64,
    /// Bytes of the hypervisor's heap in use.
    pub heap_used: u64,
    /// Event-channel ports in use (not free) over every live domain.
    pub ports_in_use: u64,
    /// Domains in the table (live or being torn down).
    pub domains: u32,
    /// Most domains alive at once.
    pub max_domains: u32,
    /// Domains being torn down.
    pub dying: u32,
    /// Zero.
    pub reserved: u32,
}

/// [`BOOTIMAGE_INFO`] argument and result: a boot bundle record marked
/// as a template (not started at boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BootImage {
    /// In: the template's index (`0..`; `ESRCH` past the last).
    pub index: u32,
    /// Out: its memory in KiB.
    pub mem_kib: u32,
    /// Out: BVT weight.
    pub weight: u32,
    /// Out: BVT warp in microseconds.
    pub warp_us: u32,
    /// Out: the image's length in bytes.
    pub image_len: u64,
    /// Out: the command line's length.
    pub cmdline_len: u32,
    /// Zero.
    pub reserved: u32,
    /// Out: its name, NUL-terminated.
    pub name: [u8; crate::start_info::MAX_NAME],
    /// Out: its command line (`cmdline_len` bytes).
    pub cmdline: [u8; 1024],
}

impl Default for BootImage {
    fn default() -> Self {
        BootImage::new_zeroed()
    }
}

impl BootImage {
    /// The name up to its NUL.
    pub fn name(&self) -> &str {
        c_str(&self.name)
    }
    /// The command line (empty if not UTF-8).
    pub fn cmdline(&self) -> &str {
        let n = (self.cmdline_len as usize).min(self.cmdline.len());
        core::str::from_utf8(&self.cmdline[..n]).unwrap_or("")
    }
}

/// [`BOOTIMAGE_READ`] argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReadBootImage {
    /// The template's index.
    pub index: u32,
    /// Bytes to copy, at most [`BOOTIMAGE_CHUNK`], within the image.
    pub len: u32,
    /// Offset in the image.
    pub offset: u64,
    /// Guest address to copy them to.
    pub buf: u64,
}

/// A NUL-terminated byte string's text (empty if not UTF-8).
fn c_str(b: &[u8]) -> &str {
    let len = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    core::str::from_utf8(&b[..len]).unwrap_or("")
}

/// [`DomainInfo::flags`] (Xen's `XEN_DOMINF_*` in spirit).
pub mod dominf {
    /// The domain has ended (shut down or crashed) and is being torn down.
    pub const DYING: u32 = 1 << 0;
    /// The domain is the privileged one.
    pub const PRIVILEGED: u32 = 1 << 1;
    /// The domain has a store connection: [`super::DomainInfo::store_evtchn`]
    /// and the reserved store grant are valid.
    pub const STORE: u32 = 1 << 2;
    /// The domain is paused (`PAUSEDOMAIN`).
    pub const PAUSED: u32 = 1 << 3;
    /// The domain is blocked, waiting for an event.
    pub const BLOCKED: u32 = 1 << 4;
    /// The domain is the one running (the caller).
    pub const RUNNING: u32 = 1 << 5;
}

/// `GETDOMAININFO` argument and result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DomainInfo {
    /// In: the first id to consider. Out: the domain's id.
    pub domid: u32,
    /// Out: `dominf::*`.
    pub flags: u32,
    /// Out: frames the domain owns.
    pub nr_pages: u64,
    /// Out: the domain's event port to the store (unbound until the
    /// store's domain binds it), when `flags` has [`dominf::STORE`].
    pub store_evtchn: u32,
    /// Out: the grant reference of the store page
    /// ([`crate::grant::GNTTAB_RESERVED_XENSTORE`]).
    pub store_gref: u32,
    /// Out: the domain's name from the boot manifest, NUL-terminated.
    pub name: [u8; crate::start_info::MAX_NAME],
    /// Out: CPU time it has been charged, in ns.
    pub cpu_time_ns: u64,
    /// Out: BVT weight.
    pub weight: u32,
    /// Out: BVT warp in microseconds.
    pub warp_us: u32,
}

impl DomainInfo {
    /// The name up to its NUL (empty if it is not UTF-8).
    pub fn name(&self) -> &str {
        c_str(&self.name)
    }
}

const _: () = {
    assert!(size_of::<DomainInfo>() == 72);
    assert!(offset_of!(DomainInfo, cpu_time_ns) == 56);
    assert!(offset_of!(DomainInfo, weight) == 64);
    assert!(offset_of!(DomainInfo, warp_us) == 68);
    assert!(size_of::<CreateDomain>() == 176);
    assert!(offset_of!(CreateDomain, image) == 0);
    assert!(offset_of!(CreateDomain, image_len) == 8);
    assert!(offset_of!(CreateDomain, cmdline) == 16);
    assert!(offset_of!(CreateDomain, cmdline_len) == 24);
    assert!(offset_of!(CreateDomain, mem_kib) == 28);
    assert!(offset_of!(CreateDomain, weight) == 32);
    assert!(offset_of!(CreateDomain, warp_us) == 36);
    assert!(offset_of!(CreateDomain, flags) == 40);
    assert!(offset_of!(CreateDomain, domid) == 44);
    assert!(offset_of!(CreateDomain, name) == 48);
    assert!(offset_of!(CreateDomain, reason) == 80);
    assert!(size_of::<SchedParams>() == 16);
    assert!(size_of::<PhysInfo>() == 48);
    assert!(offset_of!(PhysInfo, domains) == 32);
    assert!(size_of::<BootImage>() == 1088);
    assert!(offset_of!(BootImage, image_len) == 16);
    assert!(offset_of!(BootImage, name) == 32);
    assert!(offset_of!(BootImage, cmdline) == 64);
    assert!(size_of::<ReadBootImage>() == 24);
    assert!(offset_of!(ReadBootImage, offset) == 8);
    assert!(offset_of!(ReadBootImage, buf) == 16);
    assert!(offset_of!(DomainInfo, domid) == 0);
    assert!(offset_of!(DomainInfo, flags) == 4);
    assert!(offset_of!(DomainInfo, nr_pages) == 8);
    assert!(offset_of!(DomainInfo, store_evtchn) == 16);
    assert!(offset_of!(DomainInfo, store_gref) == 20);
    assert!(offset_of!(DomainInfo, name) == 24);
};
