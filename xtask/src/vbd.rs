//! Virtual disks on the machine's one real disk: where each domU's disk
//! lies, the words of dom0's command line that tell it (`vbd=`, read by
//! dom0's `serve` mode), and the host-side image tools (formatting sparse
//! images and overlays, filling a template, reading a virtual disk back
//! for evidence) over the image file, through the same `disk-images` code
//! dom0 runs.
//!
//! Layout: regions start at the plan's first sector ([`FIRST_LBA`] for
//! the scenarios' own plans, [`MANIFEST_FIRST_LBA`] for a manifest's) and
//! each begins on a MiB, in the order given; nothing else of the real disk
//! is used (its first MiB stays free, like a partition table's gap).
//!
//! A manifest's machine has dom0 in `devices` mode, which proves the real
//! disk on its own regions (`disk_pattern::dom0::READ` and `WRITE`, both
//! inside the first 16 MiB) before it serves the domUs: a manifest's plan
//! therefore starts at 16 MiB, and no virtual disk overlaps them (checked
//! at compile time below).

use crate::Result;
use disk_images::{BaseRef, Device, IoError, Region};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// First sector any region may use (1 MiB).
pub const FIRST_LBA: u64 = 2048;
/// Sectors per MiB.
pub const MIB: u64 = 2048;
/// First sector a manifest's virtual disks may use (16 MiB): the sectors
/// below are dom0's own, for its disk proof.
pub const MANIFEST_FIRST_LBA: u64 = 16 * MIB;

const _: () = {
    use disk_pattern::dom0::{READ, WRITE};
    assert!(READ.lba + READ.sectors <= MANIFEST_FIRST_LBA && WRITE.lba + WRITE.sectors <= MANIFEST_FIRST_LBA);
};

/// What kind of virtual disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A raw slice.
    Raw,
    /// A sparse image.
    Sparse,
    /// A copy-on-write overlay on the template of that index in the plan.
    Overlay(usize),
    /// A read-only template (a raw region no domain gets), filled with the
    /// pattern of this seed keyed by the offset in the template, for
    /// overlays to share.
    Template(u64),
    /// The space dom0's toolstack makes clones in at run time (overlays of
    /// the named templates: `create ... --from NAME`); left as it is.
    Pool,
}

/// One region of the plan.
#[derive(Clone, Debug)]
pub struct Vbd {
    /// The domain that gets it (a template's name, for a template; empty
    /// for the clone space).
    pub domain: String,
    pub kind: Kind,
    pub region: Region,
}

/// The plan: regions in order, from its first sector.
#[derive(Clone, Debug)]
pub struct Plan {
    pub vbds: Vec<Vbd>,
    first_lba: u64,
}

impl Default for Plan {
    /// An empty plan from [`FIRST_LBA`].
    fn default() -> Plan {
        Plan::starting_at(FIRST_LBA)
    }
}

impl Plan {
    /// An empty plan whose first region starts at the first MiB boundary
    /// at or past `lba`.
    pub fn starting_at(lba: u64) -> Plan {
        Plan { vbds: Vec::new(), first_lba: lba.div_ceil(MIB) * MIB }
    }

    /// Adds `mib` MiB of kind `kind` for `domain`; returns its index.
    pub fn add(&mut self, domain: &str, kind: Kind, mib: u64) -> usize {
        let lba = self.vbds.last().map_or(self.first_lba, |v| (v.region.lba + v.region.sectors).div_ceil(MIB) * MIB);
        self.vbds.push(Vbd { domain: domain.into(), kind, region: Region::new(lba, mib * MIB) });
        self.vbds.len() - 1
    }

    /// Sectors the real disk needs.
    pub fn disk_sectors(&self) -> u64 {
        self.vbds.last().map_or(self.first_lba, |v| v.region.lba + v.region.sectors).div_ceil(MIB) * MIB
    }

    /// The region of `domain`'s disk, if it has one (a template's name is
    /// no domain's).
    pub fn of(&self, domain: &str) -> Option<&Vbd> {
        self.vbds.iter().find(|v| !matches!(v.kind, Kind::Template(_)) && v.domain == domain)
    }

    /// dom0's `vbd=` words.
    pub fn cmdline(&self) -> String {
        let mut words: Vec<String> = self
            .vbds
            .iter()
            .filter(|v| matches!(v.kind, Kind::Raw | Kind::Sparse | Kind::Overlay(_)))
            .map(|v| {
                let kind = if v.kind == Kind::Raw { "raw" } else { "image" };
                format!("vbd={}:{kind}:{}:{}", v.domain, v.region.lba, v.region.sectors)
            })
            .collect();
        // With clone space, the templates clones may be made of, by name.
        if let Some(pool) = self.vbds.iter().find(|v| v.kind == Kind::Pool) {
            for t in self.vbds.iter().filter(|v| matches!(v.kind, Kind::Template(_)) && !v.domain.is_empty()) {
                words.push(format!("vtemplate={}:{}:{}", t.domain, t.region.lba, t.region.sectors));
            }
            words.push(format!("vpool={}:{}", pool.region.lba, pool.region.sectors));
        }
        words.join(" ")
    }

    /// Writes every image header and template into the disk file.
    pub fn format(&self, image: &Path) -> Result<()> {
        let mut dev = FileDevice::open(image)?;
        for v in &self.vbds {
            let err = |e: disk_images::Error| format!("formatting {}'s disk: {e:?}", v.domain);
            match v.kind {
                Kind::Raw | Kind::Pool => {}
                Kind::Sparse => disk_images::format_sparse(&mut dev, v.region, v.region.sectors).map_err(err)?,
                Kind::Overlay(t) => {
                    let base = self.vbds.get(t).filter(|b| matches!(b.kind, Kind::Template(_)));
                    let base = base.ok_or_else(|| format!("{}'s overlay names no template", v.domain))?;
                    let vs = base.region.sectors;
                    disk_images::format_overlay(&mut dev, v.region, BaseRef::Raw(base.region), vs).map_err(err)?;
                }
                Kind::Template(seed) => {
                    // Keyed by the offset in the template (the overlays'
                    // virtual offset), so a domU can check what it reads.
                    let mut buf = vec![0u8; 64 * 512];
                    for first in (0..v.region.sectors).step_by(64) {
                        let n = (v.region.sectors - first).min(64) as usize;
                        disk_pattern::fill(&mut buf[..n * 512], seed, first * 512);
                        dev.write(v.region.lba + first, &buf[..n * 512]).map_err(|e| format!("template: {e:?}"))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The disk image file as a `disk-images` device.
pub struct FileDevice {
    file: File,
    sectors: u64,
}

impl FileDevice {
    /// Opens the image read-write.
    pub fn open(path: &Path) -> Result<FileDevice> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let len = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
        Ok(FileDevice { file, sectors: len / 512 })
    }
}

impl Device for FileDevice {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        self.check(lba, buf.len())?;
        self.file.read_exact_at(buf, lba * 512).map_err(|_| IoError::Failed)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> std::result::Result<(), IoError> {
        self.check(lba, buf.len())?;
        self.file.write_all_at(buf, lba * 512).map_err(|_| IoError::Failed)
    }
    fn flush(&mut self) -> std::result::Result<(), IoError> {
        self.file.sync_data().map_err(|_| IoError::Failed)
    }
}

impl FileDevice {
    fn check(&self, lba: u64, len: usize) -> std::result::Result<(), IoError> {
        if !len.is_multiple_of(512) {
            return Err(IoError::BadLength);
        }
        match lba.checked_add(len as u64 / 512) {
            Some(end) if end <= self.sectors => Ok(()),
            _ => Err(IoError::OutOfRange),
        }
    }
}

/// Reads `buf.len()` bytes of `v`'s virtual disk from virtual sector
/// `vlba`, the way dom0 would (through the image's map).
pub fn read_virtual(image: &Path, v: &Vbd, vlba: u64, buf: &mut [u8]) -> Result<()> {
    let mut dev = FileDevice::open(image)?;
    match v.kind {
        Kind::Raw | Kind::Template(_) | Kind::Pool => {
            if vlba + buf.len() as u64 / 512 > v.region.sectors {
                return Err(format!("read past {}'s disk", v.domain));
            }
            dev.read(v.region.lba + vlba, buf).map_err(|e| format!("{e:?}"))
        }
        Kind::Sparse | Kind::Overlay(_) => {
            disk_images::read_virtual(&mut dev, v.region, vlba, buf).map_err(|e| format!("{}'s image: {e:?}", v.domain))
        }
    }
}

/// Blocks a sparse image or overlay has allocated (what its map names).
pub fn allocated_blocks(image: &Path, v: &Vbd) -> Result<u64> {
    let mut dev = FileDevice::open(image)?;
    let img = disk_images::open_read_only(&mut dev, v.region).map_err(|e| format!("{}'s image: {e:?}", v.domain))?;
    Ok(img.allocated_blocks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_start_past_the_first_mib_on_mib_boundaries_and_the_cmdline_names_them() {
        let mut p = Plan::default();
        p.add("a", Kind::Raw, 8);
        let t = p.add("", Kind::Template(7), 4);
        p.add("b", Kind::Overlay(t), 5);
        p.add("c", Kind::Sparse, 3);
        let lbas: Vec<u64> = p.vbds.iter().map(|v| v.region.lba).collect();
        assert_eq!(lbas, [2048, 2048 + 8 * 2048, 2048 + 12 * 2048, 2048 + 17 * 2048]);
        assert_eq!(p.disk_sectors(), 2048 + 20 * 2048);
        assert_eq!(
            p.cmdline(),
            format!(
                "vbd=a:raw:2048:16384 vbd=b:image:{}:10240 vbd=c:image:{}:6144",
                2048 + 12 * 2048,
                2048 + 17 * 2048
            )
        );
        assert_eq!(p.of("b").map(|v| v.region.lba), Some(2048 + 12 * 2048));
        assert!(p.of("").is_none() && p.of("d").is_none());
    }

    #[test]
    fn a_plan_starting_past_dom0s_regions_rounds_up_to_a_mib() {
        let mut p = Plan::starting_at(MANIFEST_FIRST_LBA + 1);
        assert_eq!(p.disk_sectors(), MANIFEST_FIRST_LBA + MIB);
        p.add("a", Kind::Raw, 1);
        assert_eq!(p.vbds[0].region.lba, MANIFEST_FIRST_LBA + MIB);
        assert_eq!(Plan::starting_at(MANIFEST_FIRST_LBA).disk_sectors(), MANIFEST_FIRST_LBA);
    }
}
