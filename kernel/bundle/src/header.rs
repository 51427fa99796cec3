//! The bundle header and the [`Bundle`] handle.

use core::fmt;

use crate::fixed::Fixed;
use crate::layout::*;
use crate::record::{self, DomainSpec, RecordError, RecordName};
use crate::symbols::{SymbolError, Symbols};

/// Why a bundle's header was rejected. The whole bundle is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    /// The boot module is shorter than a header.
    TooShort { len: usize },
    /// The first eight bytes are not `RFBUNDL1`.
    BadMagic { found: [u8; 8] },
    /// A format version this reader does not know.
    UnsupportedVersion { version: u16 },
    /// `header_size` is not the version-1 header size.
    BadHeaderSize { size: u16 },
    /// `record_size` is not the version-1 record size.
    BadRecordSize { size: u16 },
    /// `record_count` is zero.
    NoDomains,
    /// `record_count` is above [`MAX_DOMAINS`].
    TooManyDomains { count: u16 },
    /// `total_size` is larger than the boot module.
    TotalSizeTooLarge { total: u64, available: usize },
    /// The record table does not fit in `total_size`.
    RecordTableOutOfBounds { end: u64, total: u64 },
    /// The symbol table section is not inside the payload area.
    SymbolTableOutOfBounds { offset: u64, size: u64, payload_start: u64, total: u64 },
    /// A reserved header byte is not zero.
    ReservedNotZero { offset: usize },
    /// Two records have the privileged flag: there is at most one dom0.
    /// Indices of the first two such records, with their names where the
    /// name fields are valid.
    SeveralPrivileged { first: usize, first_name: Option<RecordName>, second: usize, second_name: Option<RecordName> },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BundleError::TooShort { len } => write!(
                f,
                "boot bundle is {len} bytes, shorter than its {HEADER_SIZE}-byte header"
            ),
            BundleError::BadMagic { found } => write!(
                f,
                "boot bundle magic is {found:02x?}, expected {MAGIC:02x?} (\"RFBUNDL1\")"
            ),
            BundleError::UnsupportedVersion { version } => write!(
                f,
                "boot bundle format version {version} is not supported (this hypervisor reads version {VERSION})"
            ),
            BundleError::BadHeaderSize { size } => write!(
                f,
                "boot bundle header size is {size} bytes, expected {HEADER_SIZE}"
            ),
            BundleError::BadRecordSize { size } => write!(
                f,
                "boot bundle record size is {size} bytes, expected {RECORD_SIZE}"
            ),
            BundleError::NoDomains => write!(f, "boot bundle has no domain records"),
            BundleError::TooManyDomains { count } => write!(
                f,
                "boot bundle has {count} domain records, at most {MAX_DOMAINS} are allowed"
            ),
            BundleError::TotalSizeTooLarge { total, available } => write!(
                f,
                "boot bundle claims {total} bytes but the boot module holds only {available}"
            ),
            BundleError::RecordTableOutOfBounds { end, total } => write!(
                f,
                "boot bundle record table ends at byte {end}, past the bundle's total size {total}"
            ),
            BundleError::SymbolTableOutOfBounds {
                offset,
                size,
                payload_start,
                total,
            } => write!(
                f,
                "boot bundle symbol table (offset {offset:#x}, size {size:#x}) is outside the payload area [{payload_start:#x}, {total:#x})"
            ),
            BundleError::ReservedNotZero { offset } => write!(
                f,
                "boot bundle header byte {offset:#x} is reserved and must be zero"
            ),
            BundleError::SeveralPrivileged { first, first_name, second, second_name } => {
                write!(f, "boot bundle has more than one privileged domain: domain record {first}")?;
                if let Some(n) = first_name {
                    write!(f, " ({n:?})")?;
                }
                write!(f, " and domain record {second}")?;
                if let Some(n) = second_name {
                    write!(f, " ({n:?})")?;
                }
                f.write_str(" are both privileged; there is exactly one dom0")
            }
        }
    }
}

impl core::error::Error for BundleError {}

/// A boot bundle whose header has been validated.
///
/// Holds the bundle bytes (exactly `total_size` of them). Domain records and
/// the symbol table are validated when asked for.
#[derive(Clone, Copy)]
pub struct Bundle<'a> {
    bytes: &'a [u8],
    count: usize,
    payload_start: u64,
    symtab: Option<&'a [u8]>,
}

impl fmt::Debug for Bundle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("total_size", &self.bytes.len())
            .field("domain_count", &self.count)
            .field("payload_start", &self.payload_start)
            .field("symtab_size", &self.symtab.map(<[u8]>::len))
            .finish()
    }
}

impl<'a> Bundle<'a> {
    /// Validates the header of the bundle at the start of `bytes`.
    ///
    /// `bytes` may be longer than the bundle; the tail is ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Bundle<'a>, BundleError> {
        let hdr = Fixed::<HEADER_SIZE>::at(bytes, 0).ok_or(BundleError::TooShort { len: bytes.len() })?;

        let magic = hdr.array::<HDR_MAGIC, 8>();
        if magic != MAGIC {
            return Err(BundleError::BadMagic { found: magic });
        }
        let version = hdr.u16::<HDR_VERSION>();
        if version != VERSION {
            return Err(BundleError::UnsupportedVersion { version });
        }
        let header_size = hdr.u16::<HDR_HEADER_SIZE>();
        if usize::from(header_size) != HEADER_SIZE {
            return Err(BundleError::BadHeaderSize { size: header_size });
        }
        let record_size = hdr.u16::<HDR_RECORD_SIZE>();
        if usize::from(record_size) != RECORD_SIZE {
            return Err(BundleError::BadRecordSize { size: record_size });
        }
        let count_raw = hdr.u16::<HDR_RECORD_COUNT>();
        let count = usize::from(count_raw);
        if count == 0 {
            return Err(BundleError::NoDomains);
        }
        if count > MAX_DOMAINS {
            return Err(BundleError::TooManyDomains { count: count_raw });
        }
        if let Some(offset) = hdr.first_nonzero::<HDR_RESERVED, HDR_RESERVED_LEN>() {
            return Err(BundleError::ReservedNotZero { offset });
        }

        let total = hdr.u64::<HDR_TOTAL_SIZE>();
        let too_large = BundleError::TotalSizeTooLarge { total, available: bytes.len() };
        let total_usize = usize::try_from(total).map_err(|_| too_large)?;
        let bytes = bytes.get(..total_usize).ok_or(too_large)?;

        // count <= 1024 and RECORD_SIZE = 128: cannot overflow, but stay checked.
        let table_end = (count as u64)
            .checked_mul(RECORD_SIZE as u64)
            .and_then(|len| len.checked_add(HEADER_SIZE as u64))
            .unwrap_or(u64::MAX);
        if table_end > total {
            return Err(BundleError::RecordTableOutOfBounds { end: table_end, total });
        }
        let payload_start = table_end;

        let sym_offset = hdr.u64::<HDR_SYMTAB_OFFSET>();
        let sym_size = hdr.u64::<HDR_SYMTAB_SIZE>();
        let symtab = if sym_offset == 0 && sym_size == 0 {
            None
        } else {
            let out_of_bounds =
                BundleError::SymbolTableOutOfBounds { offset: sym_offset, size: sym_size, payload_start, total };
            let range = payload_range(sym_offset, sym_size, payload_start, total).ok_or(out_of_bounds)?;
            Some(bytes.get(range).ok_or(out_of_bounds)?)
        };

        let bundle = Bundle { bytes, count, payload_start, symtab };
        bundle.at_most_one_privileged()?;
        Ok(bundle)
    }

    /// There is one privileged domain (dom0): a second record with the
    /// privileged flag rejects the whole bundle, so no bundle can leave it
    /// in doubt which domain holds the devices. Reads only each record's
    /// `flags` bit 0 (a record that fails its own validation still claims
    /// the privilege, and still counts); `count` records, each looked at
    /// once.
    fn at_most_one_privileged(&self) -> Result<(), BundleError> {
        let name = |i: usize| {
            let rec = record::record_at(self.bytes, i)?;
            record::parse_name(&rec.array::<REC_NAME, REC_NAME_LEN>()).ok().map(RecordName::new)
        };
        let privileged =
            |i: &usize| record::record_at(self.bytes, *i).is_some_and(|r| r.u32::<REC_FLAGS>() & FLAG_PRIVILEGED != 0);
        let mut found = (0..self.count).filter(privileged);
        match (found.next(), found.next()) {
            (Some(first), Some(second)) => Err(BundleError::SeveralPrivileged {
                first,
                first_name: name(first),
                second,
                second_name: name(second),
            }),
            _ => Ok(()),
        }
    }

    /// The bundle's bytes (exactly `total_size` of them).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Number of domain records (`1..=1024`).
    pub fn domain_count(&self) -> usize {
        self.count
    }

    /// Validates domain record `i` and returns what it describes.
    ///
    /// A bad record fails only its own domain; see the crate docs for the
    /// rules.
    pub fn domain(&self, i: usize) -> Result<DomainSpec<'a>, RecordError> {
        record::parse(self.bytes, self.count, self.payload_start, i)
    }

    /// Every domain record in order, each validated on its own.
    pub fn domains(&self) -> impl Iterator<Item = Result<DomainSpec<'a>, RecordError>> + '_ {
        (0..self.count).map(move |i| self.domain(i))
    }

    /// The hypervisor's symbol table: `Ok(None)` when the bundle has none,
    /// an error when the section is malformed.
    ///
    /// Validates the whole section (linear in its size) on every call, so
    /// call it once and keep the [`Symbols`].
    pub fn symbols(&self) -> Result<Option<Symbols<'a>>, SymbolError> {
        match self.symtab {
            None => Ok(None),
            Some(section) => Symbols::parse(section).map(Some),
        }
    }
}

/// `offset..offset + size` as a `usize` range if it lies within
/// `payload_start..total`.
pub(crate) fn payload_range(offset: u64, size: u64, payload_start: u64, total: u64) -> Option<core::ops::Range<usize>> {
    let end = offset.checked_add(size)?;
    if offset < payload_start || end > total {
        return None;
    }
    Some(usize::try_from(offset).ok()?..usize::try_from(end).ok()?)
}
