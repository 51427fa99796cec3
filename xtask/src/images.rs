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
    /// The bytes of a guest image: a bare name is a binary in the release
    /// directory (a sample guest's, or a crate's built into this target
    /// directory, such as one from `cargo xtask new-guest`); a name with a
    /// `/` is a path relative to the manifest's directory.
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

/// Builds the guest crate a manifest lies next to (`manifest_dir` holds a
/// `Cargo.toml`, as a crate from `cargo xtask new-guest` does), in release
/// and into this target directory, where its manifest's bare image name
/// finds the binary; nothing for a manifest with no crate beside it.
/// Returns whether it built one.
pub fn build_crate_of(manifest_dir: &Path) -> Result<bool> {
    let krate = std::path::absolute(manifest_dir.join("Cargo.toml")).map_err(|e| e.to_string())?;
    if !krate.is_file() {
        return Ok(false);
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args(["build", "--release", "--manifest-path"]).arg(&krate).arg("--target-dir");
    run_cmd(cmd.arg(target_dir()))?;
    Ok(true)
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
    for t in &m.image {
        let image = imgs.guest(&t.image, &m.dir)?;
        let image = loadable(&image).map_err(|e| format!("image '{}' ({}): {e}", t.name, t.image))?;
        let e = DomainEntry::new(t.name.as_bytes(), image, t.mem_kib)
            .cmdline(t.cmdline.as_bytes())
            .weight(t.weight)
            .warp_us(t.warp_us)
            .template(true);
        w.domain(e);
    }
    add_symbols(&mut w, imgs)?;
    let bytes = w.finish_checked().map_err(|e| format!("manifest cannot be packed: {e}"))?;
    write_bundle("demo", &bytes)
}

/// The bytes of ELF `image` that a loader reads: the headers and every
/// `PT_LOAD` segment's file bytes, without the section table (and the
/// debugging sections after them). A template is packed so, and dom0's
/// toolstack hands the hypervisor only these bytes
/// (`pvguest_abi::domctl::MAX_CREATE_IMAGE`).
pub fn loadable(image: &[u8]) -> Result<Vec<u8>> {
    use object::elf::{FileHeader64, PT_LOAD};
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::LittleEndian as LE;
    let h = FileHeader64::<LE>::parse(image).map_err(|e| format!("not a 64-bit ELF: {e}"))?;
    let phdrs = h.program_headers(LE, image).map_err(|e| format!("program headers: {e}"))?;
    let headers = h.e_phoff(LE) + u64::from(h.e_phnum(LE)) * u64::from(h.e_phentsize(LE));
    let mut end = headers;
    for p in phdrs.iter().filter(|p| p.p_type(LE) == PT_LOAD) {
        let seg = p.p_offset(LE).checked_add(p.p_filesz(LE)).ok_or("a segment's bytes wrap")?;
        end = end.max(seg);
    }
    let end = usize::try_from(end).ok().filter(|&e| e <= image.len()).ok_or("a segment lies past the file's end")?;
    let mut out = image[..end].to_vec();
    // No section table: e_shoff, e_shnum and e_shstrndx are zero.
    out[0x28..0x30].fill(0);
    out[0x3c..0x40].fill(0);
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::loadable;
    use object::{Object, ObjectSegment};

    /// An image (this test binary) is trimmed to its segments, whose bytes
    /// are the same past the ELF header (where the section table's fields
    /// are now zero), and the result still parses as the same ELF.
    #[test]
    fn a_trimmed_image_keeps_every_loadable_byte() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let cut = loadable(&me).unwrap();
        assert!(cut.len() < me.len(), "the section table and what follows are gone");
        let (a, b) = (object::File::parse(&*me).unwrap(), object::File::parse(&*cut).unwrap());
        assert_eq!(a.entry(), b.entry());
        let ranges = |f: &object::File| -> Vec<(u64, u64, u64)> {
            f.segments().map(|s| (s.address(), s.file_range().0, s.file_range().1)).collect()
        };
        assert_eq!(ranges(&a), ranges(&b));
        for (_, off, len) in ranges(&a) {
            let (from, to) = ((off as usize).max(64), (off + len) as usize);
            assert!(me[from..to] == cut[from..to], "segment at file offset {off:#x} differs");
        }
        assert_eq!(&me[..0x28], &cut[..0x28]);
        assert!(b.sections().next().is_none(), "the section table is gone");
    }

    #[test]
    fn what_is_no_elf_is_refused() {
        assert!(loadable(b"not an elf").unwrap_err().starts_with("not a 64-bit ELF"));
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let mut short = me[..4096.min(me.len())].to_vec();
        short.truncate(200);
        assert!(loadable(&short).is_err());
    }
}
