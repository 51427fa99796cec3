//! Domain records: one per boot domain, each validated on its own.

use core::fmt;

use crate::fixed::Fixed;
use crate::header::payload_range;
use crate::layout::*;

/// How the manifest expects a domain to end. The hypervisor's final verdict
/// compares each domain's actual end with this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expect {
    /// The domain shuts itself down cleanly.
    Poweroff,
    /// The domain is crashed (by its own request or by the hypervisor).
    Crash,
    /// The hypervisor refuses to build the domain (its image is bad on
    /// purpose). The record itself must still be valid.
    Rejected,
}

impl Expect {
    /// The value stored in a record's `expect` field.
    pub const fn to_raw(self) -> u32 {
        match self {
            Expect::Poweroff => EXPECT_POWEROFF,
            Expect::Crash => EXPECT_CRASH,
            Expect::Rejected => EXPECT_REJECTED,
        }
    }

    /// The variant for a record's `expect` field, if it is a known value.
    pub const fn from_raw(raw: u32) -> Option<Expect> {
        match raw {
            EXPECT_POWEROFF => Some(Expect::Poweroff),
            EXPECT_CRASH => Some(Expect::Crash),
            EXPECT_REJECTED => Some(Expect::Rejected),
            _ => None,
        }
    }

    /// Lower-case name, as manifests and reports spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Expect::Poweroff => "poweroff",
            Expect::Crash => "crash",
            Expect::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated domain record: every field has passed the rules in the crate
/// docs, and `image` and `cmdline` borrow from the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainSpec<'a> {
    /// Position of the record in the bundle (`0..domain_count`).
    pub index: usize,
    /// 1..=31 bytes of `[A-Za-z0-9._-]`, unique within the bundle.
    pub name: &'a str,
    /// The guest kernel's ELF image (non-empty; contents not yet validated).
    pub image: &'a [u8],
    /// Kernel command line, shorter than 1024 bytes.
    pub cmdline: &'a str,
    /// Memory in KiB: a positive multiple of 4, at most 4 GiB.
    pub mem_kib: u32,
    /// BVT weight, `1..=10_000`.
    pub weight: u32,
    /// BVT warp in microseconds; 0 means none.
    pub warp_us: u32,
    /// The domain is privileged (dom0).
    pub privileged: bool,
    /// A template: not started at boot, offered to dom0's toolstack.
    pub template: bool,
    /// dom0's machine-contiguous DMA pool in KiB, part of `mem_kib`: 0
    /// (none), or a multiple of 4 below `mem_kib`, at most 16 MiB, only
    /// for a privileged domain.
    pub dma_kib: u32,
    /// How the domain is expected to end.
    pub expect: Expect,
}

/// A domain name copied out of a record, so errors can name the domain
/// without borrowing the bundle.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordName {
    bytes: [u8; MAX_NAME_LEN],
    len: u8,
}

impl RecordName {
    /// `name` must be at most 31 bytes; longer names are cut (never happens
    /// for a name that passed validation).
    pub(crate) fn new(name: &str) -> RecordName {
        let mut bytes = [0u8; MAX_NAME_LEN];
        let len = name.len().min(MAX_NAME_LEN);
        let src = name.as_bytes().get(..len).unwrap_or(&[]);
        for (dst, &b) in bytes.iter_mut().zip(src) {
            *dst = b;
        }
        RecordName { bytes, len: len as u8 }
    }

    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        // Only valid names (ASCII) are stored, so this never falls back.
        core::str::from_utf8(bytes).unwrap_or("")
    }
}

impl fmt::Debug for RecordName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RecordName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one domain record was rejected. Other records are unaffected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordError {
    /// Index of the record in the bundle.
    pub index: usize,
    /// The record's name, when the name itself is valid.
    pub name: Option<RecordName>,
    /// What is wrong.
    pub kind: RecordErrorKind,
}

/// What is wrong with a domain record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordErrorKind {
    /// The index is not below the bundle's record count.
    NoSuchRecord { count: usize },
    /// The name field starts with NUL.
    NameEmpty,
    /// No NUL in the 32-byte name field: the name is longer than 31 bytes.
    NameTooLong,
    /// A name byte outside `[A-Za-z0-9._-]`.
    NameBadByte { byte: u8, position: usize },
    /// A non-zero byte after the name's NUL terminator.
    NameBadPadding { position: usize },
    /// An earlier record has the same name.
    DuplicateName { first: usize },
    /// `image_size` is zero.
    ImageEmpty,
    /// The image is not inside the payload area.
    ImageOutOfBounds { offset: u64, size: u64, payload_start: u64, total: u64 },
    /// The command line is 1024 bytes or longer.
    CmdlineTooLong { len: u32 },
    /// The command line is not inside the payload area.
    CmdlineOutOfBounds { offset: u64, len: u32, payload_start: u64, total: u64 },
    /// The command line is not UTF-8.
    CmdlineNotUtf8 { valid_up_to: usize },
    /// `mem_kib` is zero.
    MemZero,
    /// `mem_kib` is not a multiple of 4 (whole pages).
    MemNotPageMultiple { mem_kib: u32 },
    /// `mem_kib` is above 4 GiB.
    MemTooLarge { mem_kib: u32 },
    /// `weight` is outside `1..=10_000`.
    WeightOutOfRange { weight: u32 },
    /// `flags` has bits this reader does not know.
    UnknownFlags { flags: u32 },
    /// `expect` is not 1 (poweroff) or 2 (crash).
    UnknownExpect { value: u32 },
    /// `dma_kib` is not a multiple of 4 (whole pages).
    DmaNotPageMultiple { dma_kib: u32 },
    /// `dma_kib` is above 16 MiB, or not below `mem_kib`.
    DmaTooLarge { dma_kib: u32, mem_kib: u32 },
    /// `dma_kib` is set for a domain that is not privileged.
    DmaUnprivileged { dma_kib: u32 },
    /// A record is both privileged and a template.
    PrivilegedTemplate,
    /// A reserved record byte is not zero.
    ReservedNotZero { offset: usize },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain record {}", self.index)?;
        if let Some(name) = &self.name {
            write!(f, " ({name:?})")?;
        }
        f.write_str(": ")?;
        fmt::Display::fmt(&self.kind, f)
    }
}

impl fmt::Display for RecordErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecordErrorKind::NoSuchRecord { count } => {
                write!(f, "no such record, the bundle has {count}")
            }
            RecordErrorKind::NameEmpty => f.write_str("name is empty"),
            RecordErrorKind::NameTooLong => write!(
                f,
                "name is longer than {MAX_NAME_LEN} bytes (no NUL in its {REC_NAME_LEN}-byte field)"
            ),
            RecordErrorKind::NameBadByte { byte, position } => write!(
                f,
                "name byte {byte:#04x} at position {position} is not one of [A-Za-z0-9._-]"
            ),
            RecordErrorKind::NameBadPadding { position } => write!(
                f,
                "name field byte {position} after the NUL terminator is not zero"
            ),
            RecordErrorKind::DuplicateName { first } => {
                write!(f, "name is already used by domain record {first}")
            }
            RecordErrorKind::ImageEmpty => f.write_str("image size is zero"),
            RecordErrorKind::ImageOutOfBounds {
                offset,
                size,
                payload_start,
                total,
            } => write!(
                f,
                "image (offset {offset:#x}, size {size:#x}) is outside the payload area [{payload_start:#x}, {total:#x})"
            ),
            RecordErrorKind::CmdlineTooLong { len } => write!(
                f,
                "command line is {len} bytes, it must be shorter than {MAX_CMDLINE_LEN}"
            ),
            RecordErrorKind::CmdlineOutOfBounds {
                offset,
                len,
                payload_start,
                total,
            } => write!(
                f,
                "command line (offset {offset:#x}, length {len:#x}) is outside the payload area [{payload_start:#x}, {total:#x})"
            ),
            RecordErrorKind::CmdlineNotUtf8 { valid_up_to } => write!(
                f,
                "command line is not UTF-8 (invalid from byte {valid_up_to})"
            ),
            RecordErrorKind::MemZero => f.write_str("memory size is 0 KiB"),
            RecordErrorKind::MemNotPageMultiple { mem_kib } => write!(
                f,
                "memory size {mem_kib} KiB is not a multiple of {MEM_KIB_GRANULE} KiB"
            ),
            RecordErrorKind::MemTooLarge { mem_kib } => write!(
                f,
                "memory size {mem_kib} KiB is above the maximum {MAX_MEM_KIB} KiB (4 GiB)"
            ),
            RecordErrorKind::WeightOutOfRange { weight } => write!(
                f,
                "weight {weight} is outside {MIN_WEIGHT}..={MAX_WEIGHT}"
            ),
            RecordErrorKind::UnknownFlags { flags } => write!(
                f,
                "flags {flags:#x} has unknown bits {:#x}",
                flags & !KNOWN_FLAGS
            ),
            RecordErrorKind::UnknownExpect { value } => write!(
                f,
                "expect value {value} is not {EXPECT_POWEROFF} (poweroff), {EXPECT_CRASH} (crash) or {EXPECT_REJECTED} (rejected)"
            ),
            RecordErrorKind::DmaNotPageMultiple { dma_kib } => write!(
                f,
                "DMA pool size {dma_kib} KiB is not a multiple of {MEM_KIB_GRANULE} KiB"
            ),
            RecordErrorKind::DmaTooLarge { dma_kib, mem_kib } => write!(
                f,
                "DMA pool size {dma_kib} KiB is above the maximum {MAX_DMA_KIB} KiB or not below the memory size {mem_kib} KiB"
            ),
            RecordErrorKind::DmaUnprivileged { dma_kib } => write!(
                f,
                "DMA pool of {dma_kib} KiB for a domain that is not privileged (only dom0 drives devices)"
            ),
            RecordErrorKind::PrivilegedTemplate => {
                f.write_str("a template cannot be privileged (dom0 is started at boot, once)")
            }
            RecordErrorKind::ReservedNotZero { offset } => write!(
                f,
                "record byte {offset:#x} is reserved and must be zero"
            ),
        }
    }
}

impl core::error::Error for RecordError {}

/// The record at `index`, if `index < count` (the header check guarantees
/// the whole table lies within `bytes`).
pub(crate) fn record_at(bytes: &[u8], index: usize) -> Option<Fixed<'_, RECORD_SIZE>> {
    let start = index.checked_mul(RECORD_SIZE)?.checked_add(HEADER_SIZE)?;
    Fixed::at(bytes, start)
}

/// Validates a domain name field (a record's, or a toolstack's request's:
/// the one rule for names) and returns the name: 1..=31 bytes of
/// `[A-Za-z0-9._-]`, then NUL padding.
pub fn parse_name(name_field: &[u8; REC_NAME_LEN]) -> Result<&str, RecordErrorKind> {
    let len = name_field.iter().position(|&b| b == 0).ok_or(RecordErrorKind::NameTooLong)?;
    if len == 0 {
        return Err(RecordErrorKind::NameEmpty);
    }
    let (name, padding) = name_field.split_at(len);
    if let Some(position) = name.iter().position(|&b| !is_name_byte(b)) {
        let byte = name.get(position).copied().unwrap_or(0);
        return Err(RecordErrorKind::NameBadByte { byte, position });
    }
    if let Some(i) = padding.iter().position(|&b| b != 0) {
        return Err(RecordErrorKind::NameBadPadding { position: len + i });
    }
    // All bytes are ASCII, so this cannot fail; map it to an error anyway.
    core::str::from_utf8(name).map_err(|_| RecordErrorKind::NameEmpty)
}

/// A byte allowed in a domain name: `[A-Za-z0-9._-]`.
pub(crate) const fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

pub(crate) fn parse<'a>(
    bytes: &'a [u8],
    count: usize,
    payload_start: u64,
    index: usize,
) -> Result<DomainSpec<'a>, RecordError> {
    let fail = |name: Option<&str>, kind| RecordError { index, name: name.map(RecordName::new), kind };
    let rec = match record_at(bytes, index) {
        Some(rec) if index < count => rec,
        _ => return Err(fail(None, RecordErrorKind::NoSuchRecord { count })),
    };

    let name_field: &'a [u8; REC_NAME_LEN] =
        rec.0.get(REC_NAME..).and_then(<[u8]>::first_chunk).unwrap_or(&[0; REC_NAME_LEN]);
    let name = parse_name(name_field).map_err(|kind| fail(None, kind))?;
    let fail = |kind| fail(Some(name), kind);

    // The first record with a name keeps it.
    for earlier in 0..index {
        let Some(other) = record_at(bytes, earlier) else {
            break;
        };
        if other.array::<REC_NAME, REC_NAME_LEN>() == *name_field {
            return Err(fail(RecordErrorKind::DuplicateName { first: earlier }));
        }
    }

    let total = bytes.len() as u64;

    let image_offset = rec.u64::<REC_IMAGE_OFFSET>();
    let image_size = rec.u64::<REC_IMAGE_SIZE>();
    if image_size == 0 {
        return Err(fail(RecordErrorKind::ImageEmpty));
    }
    let image_oob = RecordErrorKind::ImageOutOfBounds { offset: image_offset, size: image_size, payload_start, total };
    let image = payload_range(image_offset, image_size, payload_start, total)
        .and_then(|range| bytes.get(range))
        .ok_or(fail(image_oob))?;

    let cmdline_offset = rec.u64::<REC_CMDLINE_OFFSET>();
    let cmdline_len = rec.u32::<REC_CMDLINE_LEN>();
    if cmdline_len >= MAX_CMDLINE_LEN {
        return Err(fail(RecordErrorKind::CmdlineTooLong { len: cmdline_len }));
    }
    let cmdline_bytes: &[u8] = if cmdline_len == 0 {
        &[]
    } else {
        let cmdline_oob =
            RecordErrorKind::CmdlineOutOfBounds { offset: cmdline_offset, len: cmdline_len, payload_start, total };
        payload_range(cmdline_offset, u64::from(cmdline_len), payload_start, total)
            .and_then(|range| bytes.get(range))
            .ok_or(fail(cmdline_oob))?
    };
    let cmdline = core::str::from_utf8(cmdline_bytes)
        .map_err(|e| fail(RecordErrorKind::CmdlineNotUtf8 { valid_up_to: e.valid_up_to() }))?;

    let mem_kib = rec.u32::<REC_MEM_KIB>();
    if mem_kib == 0 {
        return Err(fail(RecordErrorKind::MemZero));
    }
    if mem_kib % MEM_KIB_GRANULE != 0 {
        return Err(fail(RecordErrorKind::MemNotPageMultiple { mem_kib }));
    }
    if mem_kib > MAX_MEM_KIB {
        return Err(fail(RecordErrorKind::MemTooLarge { mem_kib }));
    }

    let weight = rec.u32::<REC_WEIGHT>();
    if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
        return Err(fail(RecordErrorKind::WeightOutOfRange { weight }));
    }
    let warp_us = rec.u32::<REC_WARP_US>();

    let flags = rec.u32::<REC_FLAGS>();
    if flags & !KNOWN_FLAGS != 0 {
        return Err(fail(RecordErrorKind::UnknownFlags { flags }));
    }
    let expect_raw = rec.u32::<REC_EXPECT>();
    let expect = Expect::from_raw(expect_raw).ok_or(fail(RecordErrorKind::UnknownExpect { value: expect_raw }))?;

    let dma_kib = rec.u32::<REC_DMA_KIB>();
    if dma_kib % MEM_KIB_GRANULE != 0 {
        return Err(fail(RecordErrorKind::DmaNotPageMultiple { dma_kib }));
    }
    if dma_kib > MAX_DMA_KIB || (dma_kib > 0 && dma_kib >= mem_kib) {
        return Err(fail(RecordErrorKind::DmaTooLarge { dma_kib, mem_kib }));
    }
    if dma_kib > 0 && flags & FLAG_PRIVILEGED == 0 {
        return Err(fail(RecordErrorKind::DmaUnprivileged { dma_kib }));
    }

    if flags & FLAG_PRIVILEGED != 0 && flags & FLAG_TEMPLATE != 0 {
        return Err(fail(RecordErrorKind::PrivilegedTemplate));
    }

    if let Some(offset) = rec.first_nonzero::<REC_RESERVED, REC_RESERVED_LEN>() {
        return Err(fail(RecordErrorKind::ReservedNotZero { offset }));
    }

    Ok(DomainSpec {
        index,
        name,
        image,
        cmdline,
        mem_kib,
        weight,
        warp_us,
        privileged: flags & FLAG_PRIVILEGED != 0,
        template: flags & FLAG_TEMPLATE != 0,
        dma_kib,
        expect,
    })
}
