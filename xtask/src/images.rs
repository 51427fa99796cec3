//! Building the images and packing boot bundles.

use crate::manifest::{parse_expect, Manifest};
use crate::{root, run_cmd, Result};
use object::{Object, ObjectSymbol, SymbolKind};
use ringfence_bundle_writer::{BundleWriter, DomainEntry};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the built images are.
pub struct Images {
    /// The hypervisor ELF.
    pub hypervisor: PathBuf,
    /// Directory holding the sample-guest binaries.
    pub guests_dir: PathBuf,
}

impl Images {
    /// The bytes of a guest image: a sample-guests binary name or a path.
    pub fn guest(&self, image: &str, manifest_dir: &Path) -> Result<Vec<u8>> {
        let p = if image.contains('/') { manifest_dir.join(image) } else { self.guests_dir.join(image) };
        std::fs::read(&p).map_err(|e| format!("cannot read guest image {}: {e}", p.display()))
    }
}

/// Builds the hypervisor and every sample guest (release profile).
pub fn build() -> Result<Images> {
    run_cmd(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "ringfence-kernel",
        "-p",
        "sample-guests",
        "--bins",
    ]))?;
    let dir = target_dir().join("release");
    Ok(Images { hypervisor: dir.join("ringfence"), guests_dir: dir })
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Function symbols of the hypervisor, demangled, for fault reports.
pub fn hypervisor_symbols(elf: &Path) -> Result<Vec<(u64, u64, String)>> {
    let data = std::fs::read(elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", elf.display()))?;
    let mut out = Vec::new();
    for s in file.symbols() {
        if s.kind() != SymbolKind::Text || s.address() == 0 {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        out.push((s.address(), s.size(), format!("{:#}", rustc_demangle::demangle(name))));
    }
    Ok(out)
}

/// Adds the hypervisor's symbols to a bundle.
pub fn add_symbols(w: &mut BundleWriter, imgs: &Images) -> Result<()> {
    for (addr, size, name) in hypervisor_symbols(&imgs.hypervisor)? {
        w.symbol(addr, size, name);
    }
    Ok(())
}

/// Packs `m` into `target/ringfence/<stem>.bundle` and returns its path.
pub fn pack_manifest(imgs: &Images, m: &Manifest) -> Result<PathBuf> {
    let mut w = BundleWriter::new();
    for d in &m.domain {
        let image = imgs.guest(&d.image, &m.dir)?;
        let e = DomainEntry::new(d.name.as_bytes(), image, d.mem_kib)
            .cmdline(m.cmdline_of(d).as_bytes())
            .weight(d.weight)
            .warp_us(d.warp_us)
            .privileged(d.privileged)
            .dma_kib(d.dma_kib)
            .expect(parse_expect(&d.expect)?);
        w.domain(e);
    }
    add_symbols(&mut w, imgs)?;
    let bytes = w.finish_checked().map_err(|e| format!("manifest cannot be packed: {e}"))?;
    write_bundle("demo", &bytes)
}

/// Writes what manifest `m`'s machine must find on its disk into the
/// fresh `image` (of `[devices] disk_mib`): the region dom0 proves
/// (`disk_pattern::dom0::READ`), then the virtual disks' headers and
/// templates ([`crate::vbd::Plan::format`]; the manifest checked that they
/// fit and stay clear of dom0's regions).
pub fn prepare_disk(m: &Manifest, image: &Path) -> Result<()> {
    let r = disk_pattern::dom0::READ;
    let region = crate::evidence::pattern::Region { first_sector: r.lba, sectors: r.sectors };
    crate::evidence::pattern::write_pattern(image, region, r.seed)?;
    m.disks.format(image)
}

/// Writes bundle bytes to `target/ringfence/<name>.bundle`.
pub fn write_bundle(name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let dir = target_dir().join("ringfence");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let p = dir.join(format!("{name}.bundle"));
    std::fs::write(&p, bytes).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(p)
}
