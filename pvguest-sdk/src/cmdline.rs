//! `key=value` words of the domain's command line (from the boot manifest).
//!
//! ```ignore
//! // cmdline "rounds=4 mode=burst"
//! let rounds = pvguest_sdk::cmdline::arg(si.cmdline(), "rounds").unwrap_or(1);
//! ```

/// The number after `key=` in `cmdline` (space-separated words), if there
/// is one and it parses.
pub fn arg(cmdline: &str, key: &str) -> Option<u64> {
    cmdline.split(' ').find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).and_then(|v| v.parse().ok())
}

/// [`arg`], or `default` when it is missing or does not parse.
pub fn arg_or(cmdline: &str, key: &str, default: u64) -> u64 {
    arg(cmdline, key).unwrap_or(default)
}
