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

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Fill a [`DomainInfo`] (Xen's `XEN_DOMCTL_getdomaininfo`).
pub const GETDOMAININFO: u64 = 5;

/// [`DomainInfo::flags`] (Xen's `XEN_DOMINF_*` in spirit).
pub mod dominf {
    /// The domain has ended (shut down or crashed) and is being torn down.
    pub const DYING: u32 = 1 << 0;
    /// The domain is the privileged one.
    pub const PRIVILEGED: u32 = 1 << 1;
    /// The domain has a store connection: [`super::DomainInfo::store_evtchn`]
    /// and the reserved store grant are valid.
    pub const STORE: u32 = 1 << 2;
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
}

impl DomainInfo {
    /// The name up to its NUL (empty if it is not UTF-8).
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..len]).unwrap_or("")
    }
}

const _: () = {
    assert!(size_of::<DomainInfo>() == 56);
    assert!(offset_of!(DomainInfo, domid) == 0);
    assert!(offset_of!(DomainInfo, flags) == 4);
    assert!(offset_of!(DomainInfo, nr_pages) == 8);
    assert!(offset_of!(DomainInfo, store_evtchn) == 16);
    assert!(offset_of!(DomainInfo, store_gref) == 20);
    assert!(offset_of!(DomainInfo, name) == 24);
};
