//! The disk pattern: known bytes that xtask writes into a disk image before
//! a run, that a guest computes to check what it reads and to write a new
//! region, and that xtask checks in the image after the run.
//!
//! The pattern itself (SplitMix64 keyed by seed and absolute byte offset,
//! with its test vectors) is defined once, in the `disk-pattern` crate,
//! which the guest uses too.
//!
//! Regions are whole sectors of [`SECTOR`] bytes ([`Region`]).

use crate::qemu::devices::SECTOR;
use crate::Result;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

#[cfg(test)]
use disk_pattern::pattern_byte;
pub use disk_pattern::pattern_word;

/// A run of whole sectors of a disk image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// The first sector.
    pub first_sector: u64,
    /// How many sectors.
    pub sectors: u64,
}

impl Region {
    /// The region's byte offset in the image.
    pub fn offset(self) -> u64 {
        self.first_sector * SECTOR
    }

    /// The region's length in bytes.
    pub fn len(self) -> u64 {
        self.sectors * SECTOR
    }

    fn end(self) -> u64 {
        self.offset() + self.len()
    }
}

/// Fills one sector-sized buffer with the pattern of the sector at `sector`.
fn fill_sector(buf: &mut [u8], seed: u64, sector: u64) {
    let first_word = sector * SECTOR / 8;
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern_word(seed, first_word + i as u64).to_le_bytes());
    }
}

fn open_region(image: &Path, region: Region, write: bool) -> Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(write)
        .open(image)
        .map_err(|e| format!("cannot open disk image {}: {e}", image.display()))?;
    let size = f.metadata().map_err(|e| format!("{}: {e}", image.display()))?.len();
    if region.sectors == 0 || region.end() > size {
        return Err(format!(
            "sectors {}..{} are not a non-empty region of disk image {} ({} sectors)",
            region.first_sector,
            region.first_sector + region.sectors,
            image.display(),
            size / SECTOR
        ));
    }
    f.seek(SeekFrom::Start(region.offset())).map_err(|e| format!("{}: {e}", image.display()))?;
    Ok(f)
}

/// Writes the pattern of `seed` into `region` of the image (which must
/// already hold the region: the image never grows).
pub fn write_pattern(image: &Path, region: Region, seed: u64) -> Result<()> {
    let mut f = open_region(image, region, true)?;
    let mut buf = vec![0u8; SECTOR as usize];
    for s in region.first_sector..region.first_sector + region.sectors {
        fill_sector(&mut buf, seed, s);
        f.write_all(&buf).map_err(|e| format!("cannot write sector {s} of {}: {e}", image.display()))?;
    }
    f.sync_all().map_err(|e| format!("cannot sync {}: {e}", image.display()))
}

/// Checks that `region` of the image holds the pattern of `seed`, byte for
/// byte; the error names how many sectors differ and the first difference.
pub fn check_pattern(image: &Path, region: Region, seed: u64) -> Result<()> {
    let mut f = open_region(image, region, false)?;
    let (mut want, mut got) = (vec![0u8; SECTOR as usize], vec![0u8; SECTOR as usize]);
    let mut bad = 0u64;
    let mut first: Option<String> = None;
    for s in region.first_sector..region.first_sector + region.sectors {
        f.read_exact(&mut got).map_err(|e| format!("cannot read sector {s} of {}: {e}", image.display()))?;
        fill_sector(&mut want, seed, s);
        if got == want {
            continue;
        }
        bad += 1;
        if first.is_none() {
            let i = got.iter().zip(&want).position(|(g, w)| g != w).expect("the sectors differ");
            let zeros =
                if got.iter().all(|&b| b == 0) { " (the sector is all zeros: never written there)" } else { "" };
            first = Some(format!(
                "first at sector {s} byte {i} (image offset {}): want {:#04x}, found {:#04x}{zeros}",
                s * SECTOR + i as u64,
                want[i],
                got[i]
            ));
        }
    }
    match first {
        None => Ok(()),
        Some(first) => Err(format!(
            "disk image {}: {bad} of {} sectors in {}..{} do not hold the pattern of seed {seed:#x}; {first}",
            image.display(),
            region.sectors,
            region.first_sector,
            region.first_sector + region.sectors
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::devices::Disk;
    use std::path::PathBuf;

    fn image(name: &str, sectors: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("xtask-pattern-{}-{name}.img", std::process::id()));
        Disk::create(&p, sectors * SECTOR).unwrap();
        p
    }

    #[test]
    fn the_pattern_depends_on_seed_and_offset() {
        let sector = |seed, s| -> Vec<u8> { (0..SECTOR).map(|i| pattern_byte(seed, s * SECTOR + i)).collect() };
        assert_ne!(sector(1, 5), sector(2, 5));
        assert_ne!(sector(1, 5), sector(1, 6));
        assert_ne!(sector(0, 0), vec![0u8; SECTOR as usize]);
    }

    #[test]
    fn a_written_region_checks_and_the_rest_does_not() {
        let p = image("roundtrip", 64);
        let r = Region { first_sector: 8, sectors: 16 };
        write_pattern(&p, r, 0x5EED).unwrap();
        check_pattern(&p, r, 0x5EED).unwrap();
        // The bytes on file are exactly pattern_byte at their absolute offset.
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes[(r.offset() + 3) as usize], pattern_byte(0x5EED, r.offset() + 3));
        assert!(bytes[..r.offset() as usize].iter().all(|&b| b == 0), "wrote before the region");
        assert!(bytes[(r.offset() + r.len()) as usize..].iter().all(|&b| b == 0), "wrote past the region");
        // Another seed, and a region that was never written, fail.
        let e = check_pattern(&p, r, 0x5EEE).unwrap_err();
        assert!(e.contains("16 of 16 sectors"), "{e}");
        let e = check_pattern(&p, Region { first_sector: 20, sectors: 8 }, 0x5EED).unwrap_err();
        assert!(e.contains("4 of 8 sectors") && e.contains("first at sector 24 byte 0"), "{e}");
        assert!(e.contains("all zeros"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_misplaced_or_damaged_sector_fails_the_check() {
        let p = image("damage", 32);
        let r = Region { first_sector: 4, sectors: 8 };
        // Sector 5's pattern written at sector 6 (a wrong LBA).
        write_pattern(&p, r, 9).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let (s5, s6) = ((5 * SECTOR) as usize, (6 * SECTOR) as usize);
        bytes.copy_within(s5..s6, s6);
        std::fs::write(&p, &bytes).unwrap();
        let e = check_pattern(&p, r, 9).unwrap_err();
        assert!(e.contains("1 of 8 sectors") && e.contains("first at sector 6 byte 0"), "{e}");
        // One flipped bit.
        write_pattern(&p, r, 9).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[(11 * SECTOR + 511) as usize] ^= 0x10;
        std::fs::write(&p, &bytes).unwrap();
        let e = check_pattern(&p, r, 9).unwrap_err();
        assert!(e.contains("1 of 8 sectors") && e.contains("first at sector 11 byte 511"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn regions_outside_the_image_are_refused_and_it_never_grows() {
        let p = image("bounds", 16);
        assert!(write_pattern(&p, Region { first_sector: 10, sectors: 7 }, 1).is_err());
        assert!(check_pattern(&p, Region { first_sector: 16, sectors: 1 }, 1).is_err());
        assert!(write_pattern(&p, Region { first_sector: 0, sectors: 0 }, 1).is_err());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 16 * SECTOR);
        std::fs::remove_file(&p).unwrap();
    }
}
