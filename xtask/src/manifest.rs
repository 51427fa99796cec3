//! Boot manifests: the human-written TOML that `cargo xtask run` packs into
//! the boot bundle.
//!
//! ```toml
//! [[domain]]
//! name = "hello"          # 1..=31 of [A-Za-z0-9._-], unique
//! image = "hello"         # a binary of sample-guests, or a path to an ELF
//! mem_kib = 1024          # multiple of 4
//! cmdline = "rounds=4"    # optional
//! weight = 100            # optional, BVT weight 1..=10000 (default 100)
//! warp_us = 0             # optional
//! privileged = false      # optional
//! dma_kib = 0             # optional: dom0's DMA pool, part of mem_kib (multiple of 4, <= 16384)
//! expect = "poweroff"     # "poweroff" | "crash" | "rejected"
//! ```
//! Mistakes are reported here with the file and domain named; the bundle
//! writer then checks every record again with the hypervisor's own reader.

use crate::Result;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A parsed manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The domains, in boot order.
    pub domain: Vec<DomainToml>,
    /// The machine's devices (none by default).
    #[serde(default)]
    pub devices: DevicesToml,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// One `[[domain]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainToml {
    pub name: String,
    pub image: String,
    pub mem_kib: u32,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub warp_us: u32,
    #[serde(default)]
    pub privileged: bool,
    /// dom0's machine-contiguous DMA pool in KiB, part of `mem_kib` (0:
    /// none; the bundle reader enforces the rules).
    #[serde(default)]
    pub dma_kib: u32,
    #[serde(default = "default_expect")]
    pub expect: String,
}

/// `[devices]`: what the machine gets beyond the plain one (for dom0).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesToml {
    /// A virtio-blk disk of this many MiB (0: none) on a fresh sparse
    /// image `target/ringfence/<manifest stem>.img`, with the region dom0
    /// checks (`disk_pattern::dom0::READ`) filled in.
    #[serde(default)]
    pub disk_mib: u64,
    /// A virtio-net NIC on QEMU's user network with a host forward to each
    /// of these guest UDP ports (empty: no NIC).
    #[serde(default)]
    pub nic_udp: Vec<u16>,
}

fn default_weight() -> u32 {
    100
}

fn default_expect() -> String {
    "poweroff".into()
}

impl Manifest {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read manifest {}: {e}", path.display()))?;
        Manifest::parse(&text, path)
    }

    /// Parses and checks manifest `text` (read from `path`, which names it
    /// in errors and locates relative images).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| format!("manifest {}: {e}", path.display()))?;
        if m.domain.is_empty() {
            return Err(format!("manifest {}: no [[domain]] entries", path.display()));
        }
        for d in &m.domain {
            parse_expect(&d.expect).map_err(|e| format!("manifest {}: domain '{}': {e}", path.display(), d.name))?;
        }
        one_privileged(&m.domain).map_err(|e| format!("manifest {}: {e}", path.display()))?;
        m.dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(m)
    }
}

/// There is at most one privileged domain (dom0): the hypervisor's bundle
/// reader refuses a bundle with two, and this says so first, naming them.
fn one_privileged(domains: &[DomainToml]) -> Result<()> {
    let named: Vec<String> = domains.iter().filter(|d| d.privileged).map(|d| format!("'{}'", d.name)).collect();
    if named.len() > 1 {
        return Err(format!(
            "{} domains are privileged ({}); there is exactly one dom0: keep privileged = true on one",
            named.len(),
            named.join(", ")
        ));
    }
    Ok(())
}

/// The bundle's `Expect` for a manifest string.
pub fn parse_expect(s: &str) -> Result<ringfence_bundle::Expect> {
    match s {
        "poweroff" => Ok(ringfence_bundle::Expect::Poweroff),
        "crash" => Ok(ringfence_bundle::Expect::Crash),
        "rejected" => Ok(ringfence_bundle::Expect::Rejected),
        other => Err(format!("expect = '{other}' is not \"poweroff\", \"crash\" or \"rejected\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text, Path::new("m.toml"))
    }

    const DOMU: &str = "[[domain]]\nname = \"domu\"\nimage = \"hello\"\nmem_kib = 512\n";

    fn dom0(name: &str) -> String {
        format!("[[domain]]\nname = \"{name}\"\nimage = \"dom0\"\nmem_kib = 1024\nprivileged = true\n")
    }

    #[test]
    fn no_or_one_privileged_domain_is_fine() {
        assert!(parse(DOMU).is_ok());
        assert!(parse(&format!("{DOMU}{}", dom0("dom0"))).is_ok());
    }

    #[test]
    fn a_second_privileged_domain_is_refused_naming_both() {
        let e = parse(&format!("{}{DOMU}{}", dom0("dom0"), dom0("rogue"))).unwrap_err();
        assert_eq!(
            e,
            "manifest m.toml: 2 domains are privileged ('dom0', 'rogue'); there is exactly one dom0: keep privileged = true on one"
        );
        let e = parse(&format!("{}{}{}", dom0("a"), dom0("b"), dom0("c"))).unwrap_err();
        assert!(e.contains("3 domains are privileged ('a', 'b', 'c')"), "{e}");
    }
}
