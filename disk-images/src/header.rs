//! The image header: its encoding, and its validation as hostile input
//! (steps 2–5 of [`crate::open`]'s check order, except the device checks).

use crate::{BaseRef, Error, Region, BLOCK_SECTORS, SECTOR_BYTES};

/// The magic at byte 0 of an image's header.
pub const MAGIC: [u8; 8] = *b"RFIMAGE\x1a";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;

/// Map entries per map sector.
pub(crate) const ENTRIES_PER_SECTOR: u64 = (SECTOR_BYTES / 4) as u64;
/// The largest physical block index (and virtual block count) the map's
/// 31-bit index can name.
pub(crate) const MAX_INDEX: u64 = 0x7fff_ffff;
/// Bytes covered by the checksum.
const CHECKED: usize = 504;

/// What an image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Unwritten blocks read as zeros.
    Sparse,
    /// Unwritten blocks read from the base.
    Overlay,
}

/// A validated header: the layout of an image in its region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub virtual_sectors: u64,
    pub region_sectors: u64,
    /// Region-relative.
    pub map_lba: u64,
    pub map_sectors: u64,
    /// Region-relative.
    pub data_lba: u64,
    pub data_blocks: u64,
    pub base: Option<BaseRef>,
}

impl Header {
    /// The one definition of the layout: where the map and the data area of
    /// an image of `virtual_sectors` in `region_sectors` lie.
    pub fn layout(kind: Kind, region_sectors: u64, virtual_sectors: u64, base: Option<BaseRef>) -> Result<Self, Error> {
        let vblocks = virtual_sectors.div_ceil(BLOCK_SECTORS);
        if virtual_sectors == 0 || vblocks > MAX_INDEX {
            return Err(Error::BadVirtualSize(virtual_sectors));
        }
        let map_sectors = vblocks.div_ceil(ENTRIES_PER_SECTOR);
        let data_lba = (1 + map_sectors).div_ceil(BLOCK_SECTORS) * BLOCK_SECTORS;
        if data_lba > region_sectors {
            return Err(Error::RegionTooSmall);
        }
        let data_blocks = ((region_sectors - data_lba) / BLOCK_SECTORS).min(MAX_INDEX);
        Ok(Self { kind, virtual_sectors, region_sectors, map_lba: 1, map_sectors, data_lba, data_blocks, base })
    }

    /// Virtual blocks (map entries in use).
    pub fn vblocks(&self) -> u64 {
        self.virtual_sectors.div_ceil(BLOCK_SECTORS)
    }

    pub fn encode(&self) -> [u8; SECTOR_BYTES] {
        let mut b = [0u8; SECTOR_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        put32(&mut b, 8, VERSION);
        put32(&mut b, 12, kind_code(self.kind));
        put64(&mut b, 16, self.virtual_sectors);
        put64(&mut b, 24, self.region_sectors);
        put32(&mut b, 32, BLOCK_SECTORS as u32);
        put64(&mut b, 40, self.map_lba);
        put64(&mut b, 48, self.map_sectors);
        put64(&mut b, 56, self.data_lba);
        put64(&mut b, 64, self.data_blocks);
        let (code, r) = match self.base {
            None => (0, Region::new(0, 0)),
            Some(BaseRef::Raw(r)) => (1, r),
            Some(BaseRef::Image(r)) => (2, r),
        };
        put32(&mut b, 72, code);
        put64(&mut b, 80, r.lba);
        put64(&mut b, 88, r.sectors);
        let sum = fnv1a64(&b[..CHECKED]);
        put64(&mut b, CHECKED, sum);
        b
    }

    /// Decodes and validates a header read from sector 0 of `region`, in
    /// the documented order. Device-dependent base checks are the caller's.
    pub fn decode(b: &[u8; SECTOR_BYTES], region: Region) -> Result<Self, Error> {
        if b[0..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = get32(b, 8);
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        if get64(b, CHECKED) != fnv1a64(&b[..CHECKED]) {
            return Err(Error::BadChecksum);
        }
        let kind = match get32(b, 12) {
            1 => Kind::Sparse,
            2 => Kind::Overlay,
            k => return Err(Error::BadKind(k)),
        };
        let block = get32(b, 32);
        if u64::from(block) != BLOCK_SECTORS {
            return Err(Error::BadBlockSize(block));
        }
        if get32(b, 36) != 0 || get32(b, 76) != 0 || b[96..CHECKED].iter().any(|&x| x != 0) {
            return Err(Error::NonZeroReserved);
        }
        let region_sectors = get64(b, 24);
        if region_sectors != region.sectors {
            return Err(Error::RegionMismatch { header: region_sectors, given: region.sectors });
        }
        let virtual_sectors = get64(b, 16);
        let base_region = Region::new(get64(b, 80), get64(b, 88));
        let base = match (kind, get32(b, 72)) {
            (Kind::Sparse, 0) if base_region == Region::new(0, 0) => None,
            (Kind::Overlay, 1) if base_region.sectors > 0 => Some(BaseRef::Raw(base_region)),
            (Kind::Overlay, 2) if base_region.sectors > 0 => Some(BaseRef::Image(base_region)),
            _ => return Err(Error::BadBase),
        };
        let want = Self::layout(kind, region_sectors, virtual_sectors, base)?;
        let fields = [
            ("map_lba", 40, want.map_lba),
            ("map_sectors", 48, want.map_sectors),
            ("data_lba", 56, want.data_lba),
            ("data_blocks", 64, want.data_blocks),
        ];
        for (name, at, value) in fields {
            if get64(b, at) != value {
                return Err(Error::BadLayout(name));
            }
        }
        Ok(want)
    }
}

fn kind_code(k: Kind) -> u32 {
    match k {
        Kind::Sparse => 1,
        Kind::Overlay => 2,
    }
}

/// FNV-1a, 64-bit: catches accidental corruption (hostile headers are
/// caught by the field checks, not by this).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn get64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}
