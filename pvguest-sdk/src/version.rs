//! ABI version and feature queries.

use crate::hypercall::call_readonly;
use pvguest_abi::{hypercall, version, Errno};

/// The hypervisor's ABI version as `(major, minor)`.
pub fn abi_version() -> (u16, u16) {
    let v = call_readonly(hypercall::XEN_VERSION, [version::VERSION, 0, 0, 0, 0]);
    match Errno::decode(v) {
        Ok(v) => ((v >> 16) as u16, v as u16),
        Err(_) => (0, 0),
    }
}

/// The feature bitmap (see [`pvguest_abi::features`]).
pub fn features() -> u64 {
    let v = call_readonly(hypercall::XEN_VERSION, [version::GET_FEATURES, 0, 0, 0, 0]);
    Errno::decode(v).unwrap_or(0)
}
