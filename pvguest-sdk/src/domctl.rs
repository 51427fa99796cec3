//! Domain control for the privileged domain ([`pvguest_abi::domctl`]):
//! which domains exist, and how to reach their store connection.
//!
//! ```ignore
//! use pvguest_sdk::domctl;
//! for info in domctl::domains() {
//!     println!("dom{} {} store port {}", info.domid, info.name(), info.store_evtchn);
//! }
//! ```
//!
//! Any other domain gets `EPERM` from every call, and [`domains`] yields
//! nothing for it.

use crate::hypercall::raw;
use pvguest_abi::domctl::{DomainInfo, GETDOMAININFO};
use pvguest_abi::{hypercall, Errno};

pub use pvguest_abi::domctl::dominf;

/// The live domain with the smallest id at or above `from` (`ESRCH`: none).
pub fn domain_info(from: u32) -> Result<DomainInfo, Errno> {
    let mut info = DomainInfo { domid: from, ..DomainInfo::default() };
    // SAFETY: `info` is a live local of the layout GETDOMAININFO reads and
    // writes; the hypervisor writes only it.
    let r = unsafe { raw(hypercall::DOMCTL, [GETDOMAININFO, &raw mut info as u64, 0, 0, 0]) };
    Errno::decode(r)?;
    Ok(info)
}

/// Every live domain (dead ones until reaped: [`dominf::DYING`]), in id
/// order. Ends at the first error (for an unprivileged caller, at once).
pub fn domains() -> impl Iterator<Item = DomainInfo> {
    let mut next = Some(0u32);
    core::iter::from_fn(move || {
        let info = domain_info(next?).ok();
        next = info.and_then(|i| i.domid.checked_add(1));
        info
    })
}
