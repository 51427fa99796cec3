//! The one ELF loader: validates a guest kernel image and produces its load
//! plan.
//!
//! A guest kernel arrives as an ELF64 image inside the boot bundle (or, later,
//! from dom0's toolstack). Every byte of it is hostile input. [`ElfImage::parse`]
//! is the single place that turns those bytes into a trusted load plan: a
//! list of at most [`MAX_LOAD_SEGMENTS`] `PT_LOAD` segments and an entry point.
//! It never panics, never indexes out of bounds, uses checked arithmetic for
//! every sum of untrusted values, and does a bounded amount of work
//! (`O(phnum + loads²)`, with `phnum <= 64` and `loads <= 16`). The loader
//! neither allocates nor copies: [`ElfImage::file_bytes`] borrows from the
//! image, and the domain builder copies those bytes into the guest's frames and
//! zero-fills the rest of each segment.
//!
//! # What a valid image is
//! Checked in this order; the first failure is reported as its own
//! [`ElfError`] variant, naming the program header index (`ph`) and values.
//! 1. At least the 64-byte ELF header; magic `\x7fELF`; `ELFCLASS64`;
//!    little-endian; `EV_CURRENT` (in `e_ident` and `e_version`);
//!    `EM_X86_64`; `ET_EXEC` (a static, non-PIE executable: the builder
//!    loads at the linked addresses, it does not relocate).
//! 2. `e_phentsize == 56`, `1 <= e_phnum <= 64`, and the program header
//!    table lies inside the file.
//! 3. 1 to 16 `PT_LOAD` headers. Other program header types (`PT_NOTE`,
//!    `PT_GNU_STACK`, `PT_TLS`, ...) are ignored; the table bound check covers
//!    them.
//! 4. Each `PT_LOAD`: `memsz > 0`; `filesz <= memsz`; the file bytes
//!    `[offset, offset + filesz)` lie inside the file (not checked when
//!    `filesz == 0`: nothing is read); `p_align` is 0 or a power of two and,
//!    when it is at least 4096, `offset % 4096 == vaddr % 4096`; not both
//!    writable and executable (W^X); `vaddr + memsz` does not overflow even
//!    when rounded up to a page; and the segment's pages lie inside the
//!    policy's window: `floor4k(vaddr) >= virt_base` and
//!    `ceil4k(vaddr + memsz) <= virt_limit`. (For a page-aligned window,
//!    which is what the hypervisor passes, this is exactly
//!    `vaddr >= virt_base` and `vaddr + memsz <= virt_limit`.)
//! 5. No two `PT_LOAD` segments share a 4 KiB page: a page carries one set of
//!    permissions, so a linker script must page-align segment boundaries.
//! 6. The page-rounded span from the lowest segment page to the end of the
//!    highest is at most `max_image_bytes`.
//! 7. The entry point lies inside an executable `PT_LOAD` segment.
//!
//! Segments are kept in program header order.
//!
//! # How the bytes are read
//! There are no field offsets in this module. The ELF header and the program
//! header table are viewed as an [`Elf64Ehdr`] and a slice of [`Elf64Phdr`],
//! `#[repr(C)]` mirrors of the ELF64 layout whose sizes (64 and 56 bytes) and
//! field offsets are asserted against the specification at compile time.
//! They derive the byte-view traits of `zerocopy` (the crate the whole
//! hypervisor uses for this, see `pvguest_abi`), which is what makes viewing
//! hostile bytes as these types sound without any `unsafe` here:
//! - `FromBytes`: every field is an integer or a byte array, so every bit
//!   pattern is a valid value and no image can make the view itself invalid;
//!   whether the values make sense is what the checks above decide.
//! - `Unaligned`: the integer fields are `zerocopy`'s little-endian `U16`,
//!   `U32` and `U64`, byte arrays of alignment 1, so a header can be viewed
//!   at any offset of the image (an odd `e_phoff` is valid ELF) and a field
//!   decodes as little-endian whatever the host's byte order.
//! - `Immutable` and `KnownLayout`: no interior mutability and a layout
//!   known to the conversions, so a view is a plain shared borrow of the
//!   image: the bytes cannot change between a check and a use.
//! - The conversions (`ref_from_prefix`, `ref_from_prefix_with_elems`)
//!   check the length with checked arithmetic and return an error for a
//!   short slice, which becomes [`ElfError::TooShort`] or
//!   [`ElfError::PhdrTableOutOfBounds`]; they never panic and never read
//!   past the slice.
use core::fmt;
use core::mem;

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Page size of the load plan.
pub const PAGE_SIZE: u64 = 4096;
/// Most `PT_LOAD` segments an image may have.
pub const MAX_LOAD_SEGMENTS: usize = 16;
/// Most program headers an image may have.
pub const MAX_PHNUM: u16 = 64;

/// Size of the ELF64 file header.
const EHDR_SIZE: usize = mem::size_of::<Elf64Ehdr>();
/// Size of one ELF64 program header.
const PHDR_SIZE: usize = mem::size_of::<Elf64Phdr>();

/// `e_ident.magic`: `EI_MAG0..=EI_MAG3`.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// `e_ident.class` of a 64-bit image.
pub const ELFCLASS64: u8 = 2;
/// `e_ident.data` of a little-endian image.
pub const ELFDATA2LSB: u8 = 1;
/// `e_ident.version` and `e_version` of the current ELF version.
pub const EV_CURRENT: u32 = 1;
/// `e_type` of an executable.
pub const ET_EXEC: u16 = 2;
/// `e_type` of a shared object or position-independent executable.
pub const ET_DYN: u16 = 3;
/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `p_flags` bit: executable.
pub const PF_X: u32 = 1;
/// `p_flags` bit: writable.
pub const PF_W: u32 = 2;
/// `p_flags` bit: readable.
pub const PF_R: u32 = 4;

/// `e_ident`, the first 16 bytes of an ELF file ("ELF Identification" in
/// the ELF specification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ElfIdent {
    /// `EI_MAG0..=EI_MAG3`: [`ELF_MAGIC`].
    pub magic: [u8; 4],
    /// `EI_CLASS`: [`ELFCLASS64`].
    pub class: u8,
    /// `EI_DATA`: [`ELFDATA2LSB`].
    pub data: u8,
    /// `EI_VERSION`: [`EV_CURRENT`].
    pub version: u8,
    /// `EI_OSABI` (not checked).
    pub osabi: u8,
    /// `EI_ABIVERSION` (not checked).
    pub abiversion: u8,
    /// `EI_PAD` (not checked).
    pub pad: [u8; 7],
}

/// The ELF64 file header (`Elf64_Ehdr`), little-endian; fields named as in
/// the ELF specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Elf64Ehdr {
    pub e_ident: ElfIdent,
    pub e_type: U16,
    pub e_machine: U16,
    pub e_version: U32,
    pub e_entry: U64,
    pub e_phoff: U64,
    pub e_shoff: U64,
    pub e_flags: U32,
    pub e_ehsize: U16,
    pub e_phentsize: U16,
    pub e_phnum: U16,
    pub e_shentsize: U16,
    pub e_shnum: U16,
    pub e_shstrndx: U16,
}

/// One ELF64 program header (`Elf64_Phdr`), little-endian; fields named as
/// in the ELF specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Elf64Phdr {
    pub p_type: U32,
    pub p_flags: U32,
    pub p_offset: U64,
    pub p_vaddr: U64,
    pub p_paddr: U64,
    pub p_filesz: U64,
    pub p_memsz: U64,
    pub p_align: U64,
}

// The layouts, checked against the ELF specification.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};

    assert!(size_of::<ElfIdent>() == 16);
    assert!(offset_of!(ElfIdent, magic) == 0);
    assert!(offset_of!(ElfIdent, class) == 4);
    assert!(offset_of!(ElfIdent, data) == 5);
    assert!(offset_of!(ElfIdent, version) == 6);
    assert!(offset_of!(ElfIdent, osabi) == 7);
    assert!(offset_of!(ElfIdent, abiversion) == 8);
    assert!(offset_of!(ElfIdent, pad) == 9);

    assert!(size_of::<Elf64Ehdr>() == 64);
    assert!(align_of::<Elf64Ehdr>() == 1);
    assert!(offset_of!(Elf64Ehdr, e_ident) == 0);
    assert!(offset_of!(Elf64Ehdr, e_type) == 16);
    assert!(offset_of!(Elf64Ehdr, e_machine) == 18);
    assert!(offset_of!(Elf64Ehdr, e_version) == 20);
    assert!(offset_of!(Elf64Ehdr, e_entry) == 24);
    assert!(offset_of!(Elf64Ehdr, e_phoff) == 32);
    assert!(offset_of!(Elf64Ehdr, e_shoff) == 40);
    assert!(offset_of!(Elf64Ehdr, e_flags) == 48);
    assert!(offset_of!(Elf64Ehdr, e_ehsize) == 52);
    assert!(offset_of!(Elf64Ehdr, e_phentsize) == 54);
    assert!(offset_of!(Elf64Ehdr, e_phnum) == 56);
    assert!(offset_of!(Elf64Ehdr, e_shentsize) == 58);
    assert!(offset_of!(Elf64Ehdr, e_shnum) == 60);
    assert!(offset_of!(Elf64Ehdr, e_shstrndx) == 62);

    assert!(size_of::<Elf64Phdr>() == 56);
    assert!(align_of::<Elf64Phdr>() == 1);
    assert!(offset_of!(Elf64Phdr, p_type) == 0);
    assert!(offset_of!(Elf64Phdr, p_flags) == 4);
    assert!(offset_of!(Elf64Phdr, p_offset) == 8);
    assert!(offset_of!(Elf64Phdr, p_vaddr) == 16);
    assert!(offset_of!(Elf64Phdr, p_paddr) == 24);
    assert!(offset_of!(Elf64Phdr, p_filesz) == 32);
    assert!(offset_of!(Elf64Phdr, p_memsz) == 40);
    assert!(offset_of!(Elf64Phdr, p_align) == 48);
};

/// Where and how big a guest image may be. Supplied by the hypervisor
/// (trusted); `virt_base` and `virt_limit` should be page-aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadPolicy {
    /// Lowest virtual address a segment may occupy.
    pub virt_base: u64,
    /// End of the window (exclusive).
    pub virt_limit: u64,
    /// Largest page-rounded span of all segments, in bytes.
    pub max_image_bytes: u64,
}

/// One validated `PT_LOAD` segment: `filesz` bytes from `file_offset` go to
/// `vaddr`, and the rest of `memsz` is zero-filled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub file_offset: u64,
    pub filesz: u64,
    pub writable: bool,
    pub executable: bool,
}

impl Segment {
    /// First byte of the segment's first page.
    pub fn page_start(&self) -> u64 {
        page_floor(self.vaddr)
    }

    /// End of the segment's last page (exclusive), or `None` on overflow
    /// (never for a segment of a parsed [`ElfImage`]).
    pub fn page_end(&self) -> Option<u64> {
        self.vaddr.checked_add(self.memsz).and_then(page_ceil)
    }
}

/// Why an image was rejected. `ph` is a program header index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the 64-byte ELF header.
    TooShort { len: usize },
    /// The first four bytes are not `\x7fELF`.
    BadMagic { found: [u8; 4] },
    /// `EI_CLASS` is not `ELFCLASS64` (2).
    NotElf64 { class: u8 },
    /// `EI_DATA` is not `ELFDATA2LSB` (1).
    NotLittleEndian { data: u8 },
    /// `EI_VERSION` or `e_version` is not `EV_CURRENT` (1).
    BadVersion { ident: u8, version: u32 },
    /// `e_machine` is not `EM_X86_64` (62).
    WrongMachine { machine: u16 },
    /// `e_type` is not `ET_EXEC` (2).
    NotExecutable { e_type: u16 },
    /// `e_phentsize` is not 56.
    BadPhentsize { size: u16 },
    /// `e_phnum` is 0 or above 64.
    BadPhnum { phnum: u16 },
    /// The program header table runs past the end of the file.
    PhdrTableOutOfBounds { offset: u64, phnum: u16, file_len: usize },
    /// No `PT_LOAD` program header.
    NoLoadSegments,
    /// More than 16 `PT_LOAD` program headers.
    TooManyLoadSegments { count: usize },
    /// A `PT_LOAD` with `memsz == 0`.
    EmptySegment { ph: usize },
    /// A `PT_LOAD` with more file bytes than memory bytes.
    FileSizeExceedsMemSize { ph: usize, filesz: u64, memsz: u64 },
    /// A `PT_LOAD`'s file bytes run past the end of the file.
    SegmentFileOutOfBounds { ph: usize, offset: u64, filesz: u64, file_len: usize },
    /// `p_align` is neither 0 nor a power of two.
    BadAlignment { ph: usize, align: u64 },
    /// `offset % 4096 != vaddr % 4096` although `p_align >= 4096`.
    MisalignedSegment { ph: usize, offset: u64, vaddr: u64 },
    /// A segment both writable and executable.
    WritableAndExecutable { ph: usize, vaddr: u64 },
    /// `vaddr + memsz`, rounded up to a page, overflows.
    SegmentAddressOverflow { ph: usize, vaddr: u64, memsz: u64 },
    /// A segment's first page lies below the policy's `virt_base`.
    SegmentBelowBase { ph: usize, vaddr: u64, base: u64 },
    /// A segment's last page ends above the policy's `virt_limit`.
    SegmentAboveLimit { ph: usize, end: u64, limit: u64 },
    /// Two segments share a page (`page` is the first shared one).
    SegmentsOverlap { first: usize, second: usize, page: u64 },
    /// The page-rounded span of all segments is above `max_image_bytes`.
    ImageTooLarge { span: u64, max: u64 },
    /// The entry point is not inside an executable segment.
    EntryNotExecutable { entry: u64 },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfError::TooShort { len } => write!(
                f,
                "ELF image is {len} bytes, shorter than the {EHDR_SIZE}-byte ELF header"
            ),
            ElfError::BadMagic { found } => write!(
                f,
                "not an ELF image: magic is {found:02x?}, expected [7f, 45, 4c, 46] (\"\\x7fELF\")"
            ),
            ElfError::NotElf64 { class } => write!(
                f,
                "ELF class is {class}, expected {ELFCLASS64} (ELFCLASS64, a 64-bit image)"
            ),
            ElfError::NotLittleEndian { data } => write!(
                f,
                "ELF data encoding is {data}, expected {ELFDATA2LSB} (little-endian)"
            ),
            ElfError::BadVersion { ident, version } => write!(
                f,
                "ELF version is {ident} in e_ident and {version} in e_version, expected {EV_CURRENT} (EV_CURRENT) in both"
            ),
            ElfError::WrongMachine { machine } => write!(
                f,
                "ELF machine is {machine}, expected {EM_X86_64} (EM_X86_64)"
            ),
            ElfError::NotExecutable { e_type } => {
                write!(f, "ELF type is {e_type}")?;
                match e_type {
                    0 => f.write_str(" (ET_NONE)")?,
                    1 => f.write_str(" (ET_REL, an object file)")?,
                    ET_DYN => f.write_str(" (ET_DYN, a shared object or position-independent executable)")?,
                    4 => f.write_str(" (ET_CORE, a core dump)")?,
                    _ => {}
                }
                write!(
                    f,
                    ", expected {ET_EXEC} (ET_EXEC): link the guest kernel as a static, non-PIE executable"
                )
            }
            ElfError::BadPhentsize { size } => write!(
                f,
                "ELF program header entry size is {size} bytes, expected {PHDR_SIZE}"
            ),
            ElfError::BadPhnum { phnum } => write!(
                f,
                "ELF image has {phnum} program headers, expected 1..={MAX_PHNUM}"
            ),
            ElfError::PhdrTableOutOfBounds {
                offset,
                phnum,
                file_len,
            } => write!(
                f,
                "ELF program header table ({phnum} entries of {PHDR_SIZE} bytes at offset {offset:#x}) runs past the end of the {file_len:#x}-byte file"
            ),
            ElfError::NoLoadSegments => f.write_str("ELF image has no PT_LOAD segment"),
            ElfError::TooManyLoadSegments { count } => write!(
                f,
                "ELF image has {count} PT_LOAD segments, at most {MAX_LOAD_SEGMENTS} are allowed"
            ),
            ElfError::EmptySegment { ph } => {
                write!(f, "ELF program header {ph}: PT_LOAD segment has memsz 0")
            }
            ElfError::FileSizeExceedsMemSize { ph, filesz, memsz } => write!(
                f,
                "ELF program header {ph}: filesz {filesz:#x} is larger than memsz {memsz:#x}"
            ),
            ElfError::SegmentFileOutOfBounds {
                ph,
                offset,
                filesz,
                file_len,
            } => write!(
                f,
                "ELF program header {ph}: file bytes (offset {offset:#x}, filesz {filesz:#x}) run past the end of the {file_len:#x}-byte file"
            ),
            ElfError::BadAlignment { ph, align } => write!(
                f,
                "ELF program header {ph}: alignment {align:#x} is not a power of two"
            ),
            ElfError::MisalignedSegment { ph, offset, vaddr } => write!(
                f,
                "ELF program header {ph}: file offset {offset:#x} and vaddr {vaddr:#x} differ modulo the page size {PAGE_SIZE:#x}"
            ),
            ElfError::WritableAndExecutable { ph, vaddr } => write!(
                f,
                "ELF program header {ph}: segment at {vaddr:#x} is both writable and executable (W^X)"
            ),
            ElfError::SegmentAddressOverflow { ph, vaddr, memsz } => write!(
                f,
                "ELF program header {ph}: vaddr {vaddr:#x} + memsz {memsz:#x} overflows the address space"
            ),
            ElfError::SegmentBelowBase { ph, vaddr, base } => write!(
                f,
                "ELF program header {ph}: segment at vaddr {vaddr:#x} (page {:#x}) starts below the load window base {base:#x}",
                page_floor(vaddr)
            ),
            ElfError::SegmentAboveLimit { ph, end, limit } => write!(
                f,
                "ELF program header {ph}: segment ends at {end:#x} (page-rounded), past the load window limit {limit:#x}"
            ),
            ElfError::SegmentsOverlap {
                first,
                second,
                page,
            } => write!(
                f,
                "ELF program headers {first} and {second}: PT_LOAD segments share the page at {page:#x} (a page has one set of permissions; page-align segment boundaries)"
            ),
            ElfError::ImageTooLarge { span, max } => write!(
                f,
                "ELF image spans {span:#x} bytes (page-rounded), more than the {max:#x} allowed"
            ),
            ElfError::EntryNotExecutable { entry } => write!(
                f,
                "ELF entry point {entry:#x} is not inside an executable PT_LOAD segment"
            ),
        }
    }
}

impl core::error::Error for ElfError {}

/// A validated ELF image and its load plan.
#[derive(Clone, Copy)]
pub struct ElfImage<'a> {
    data: &'a [u8],
    entry: u64,
    segments: [Segment; MAX_LOAD_SEGMENTS],
    count: usize,
    span: (u64, u64),
}

impl fmt::Debug for ElfImage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElfImage")
            .field("len", &self.data.len())
            .field("entry", &format_args!("{:#x}", self.entry))
            .field("segments", &self.segments())
            .field("span", &format_args!("{:#x}..{:#x}", self.span.0, self.span.1))
            .finish()
    }
}

impl<'a> ElfImage<'a> {
    /// Validates `image` against the rules in the module docs and `policy`.
    pub fn parse(image: &'a [u8], policy: &LoadPolicy) -> Result<ElfImage<'a>, ElfError> {
        let Header { entry, table } = parse_header(image)?;

        // Count first, so the error names the real number.
        let loads = table.iter().filter(|ph| ph.p_type.get() == PT_LOAD).count();
        if loads == 0 {
            return Err(ElfError::NoLoadSegments);
        }
        if loads > MAX_LOAD_SEGMENTS {
            return Err(ElfError::TooManyLoadSegments { count: loads });
        }

        let mut segments = [Segment::default(); MAX_LOAD_SEGMENTS];
        let mut ph_index = [0usize; MAX_LOAD_SEGMENTS];
        let mut pages = [(0u64, 0u64); MAX_LOAD_SEGMENTS];
        let mut count = 0;
        for (i, ph) in table.iter().enumerate() {
            if ph.p_type.get() != PT_LOAD {
                continue;
            }
            let (seg, page_range) = check_load(ph, i, image.len(), policy)?;
            let (Some(seg_slot), Some(ph_slot), Some(page_slot)) =
                (segments.get_mut(count), ph_index.get_mut(count), pages.get_mut(count))
            else {
                return Err(ElfError::TooManyLoadSegments { count: loads });
            };
            *seg_slot = seg;
            *ph_slot = i;
            *page_slot = page_range;
            count += 1;
        }
        let pages = pages.get(..count).unwrap_or(&[]);
        let ph_index = ph_index.get(..count).unwrap_or(&[]);

        for (a, &(a_start, a_end)) in pages.iter().enumerate() {
            for (b, &(b_start, b_end)) in pages.iter().enumerate().skip(a + 1) {
                if a_start < b_end && b_start < a_end {
                    return Err(ElfError::SegmentsOverlap {
                        first: ph_index.get(a).copied().unwrap_or(0),
                        second: ph_index.get(b).copied().unwrap_or(0),
                        page: a_start.max(b_start),
                    });
                }
            }
        }

        let start = pages.iter().map(|p| p.0).min().unwrap_or(0);
        let end = pages.iter().map(|p| p.1).max().unwrap_or(0);
        let span = end.saturating_sub(start);
        if span > policy.max_image_bytes {
            return Err(ElfError::ImageTooLarge { span, max: policy.max_image_bytes });
        }

        let segs = segments.get(..count).unwrap_or(&[]);
        let entry_ok = segs.iter().any(|s| s.executable && entry.checked_sub(s.vaddr).is_some_and(|off| off < s.memsz));
        if !entry_ok {
            return Err(ElfError::EntryNotExecutable { entry });
        }

        Ok(ElfImage { data: image, entry, segments, count, span: (start, end) })
    }

    /// The entry point (inside an executable segment).
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The `PT_LOAD` segments, in program header order (1 to 16).
    pub fn segments(&self) -> &[Segment] {
        self.segments.get(..self.count).unwrap_or(&[])
    }

    /// The `filesz` bytes of `seg` in the image; the rest of `memsz` is
    /// zero-fill. Empty for a segment that is not in this image's bounds.
    pub fn file_bytes(&self, seg: &Segment) -> &'a [u8] {
        let range = usize::try_from(seg.file_offset).ok().and_then(|start| {
            let len = usize::try_from(seg.filesz).ok()?;
            Some(start..start.checked_add(len)?)
        });
        range.and_then(|r| self.data.get(r)).unwrap_or(&[])
    }

    /// `(lowest page-aligned vaddr, end of the highest segment rounded up to
    /// 4 KiB)`.
    pub fn span(&self) -> (u64, u64) {
        self.span
    }
}

/// What the ELF header says, once checked.
struct Header<'a> {
    entry: u64,
    /// The program header table: 1 to 64 entries, inside the image.
    table: &'a [Elf64Phdr],
}

/// Checks the ELF header and locates the program header table.
fn parse_header(image: &[u8]) -> Result<Header<'_>, ElfError> {
    let (eh, _) = Elf64Ehdr::ref_from_prefix(image).map_err(|_| ElfError::TooShort { len: image.len() })?;

    let ElfIdent { magic, class, data, version: ident, .. } = eh.e_ident;
    if magic != ELF_MAGIC {
        return Err(ElfError::BadMagic { found: magic });
    }
    if class != ELFCLASS64 {
        return Err(ElfError::NotElf64 { class });
    }
    if data != ELFDATA2LSB {
        return Err(ElfError::NotLittleEndian { data });
    }
    let version = eh.e_version.get();
    if u32::from(ident) != EV_CURRENT || version != EV_CURRENT {
        return Err(ElfError::BadVersion { ident, version });
    }
    let machine = eh.e_machine.get();
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine { machine });
    }
    let e_type = eh.e_type.get();
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable { e_type });
    }
    let phentsize = eh.e_phentsize.get();
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(ElfError::BadPhentsize { size: phentsize });
    }
    let phnum = eh.e_phnum.get();
    if phnum == 0 || phnum > MAX_PHNUM {
        return Err(ElfError::BadPhnum { phnum });
    }
    let phoff = eh.e_phoff.get();
    let out_of_bounds = ElfError::PhdrTableOutOfBounds { offset: phoff, phnum, file_len: image.len() };
    let start = usize::try_from(phoff).map_err(|_| out_of_bounds)?;
    let from_table = image.get(start..).ok_or(out_of_bounds)?;
    let (table, _) =
        <[Elf64Phdr]>::ref_from_prefix_with_elems(from_table, usize::from(phnum)).map_err(|_| out_of_bounds)?;
    Ok(Header { entry: eh.e_entry.get(), table })
}

/// Checks one `PT_LOAD` program header; returns the segment and its
/// page-rounded address range.
fn check_load(
    ph: &Elf64Phdr,
    index: usize,
    file_len: usize,
    policy: &LoadPolicy,
) -> Result<(Segment, (u64, u64)), ElfError> {
    let flags = ph.p_flags.get();
    let seg = Segment {
        vaddr: ph.p_vaddr.get(),
        memsz: ph.p_memsz.get(),
        file_offset: ph.p_offset.get(),
        filesz: ph.p_filesz.get(),
        writable: flags & PF_W != 0,
        executable: flags & PF_X != 0,
    };
    let align = ph.p_align.get();

    if seg.memsz == 0 {
        return Err(ElfError::EmptySegment { ph: index });
    }
    if seg.filesz > seg.memsz {
        return Err(ElfError::FileSizeExceedsMemSize { ph: index, filesz: seg.filesz, memsz: seg.memsz });
    }
    if seg.filesz > 0 {
        let in_file = seg
            .file_offset
            .checked_add(seg.filesz)
            .is_some_and(|end| usize::try_from(end).is_ok_and(|end| end <= file_len));
        if !in_file {
            return Err(ElfError::SegmentFileOutOfBounds {
                ph: index,
                offset: seg.file_offset,
                filesz: seg.filesz,
                file_len,
            });
        }
    }
    if align != 0 && !align.is_power_of_two() {
        return Err(ElfError::BadAlignment { ph: index, align });
    }
    if align >= PAGE_SIZE && seg.file_offset % PAGE_SIZE != seg.vaddr % PAGE_SIZE {
        return Err(ElfError::MisalignedSegment { ph: index, offset: seg.file_offset, vaddr: seg.vaddr });
    }
    if seg.writable && seg.executable {
        return Err(ElfError::WritableAndExecutable { ph: index, vaddr: seg.vaddr });
    }
    let page_start = seg.page_start();
    let page_end =
        seg.page_end().ok_or(ElfError::SegmentAddressOverflow { ph: index, vaddr: seg.vaddr, memsz: seg.memsz })?;
    if page_start < policy.virt_base {
        return Err(ElfError::SegmentBelowBase { ph: index, vaddr: seg.vaddr, base: policy.virt_base });
    }
    if page_end > policy.virt_limit {
        return Err(ElfError::SegmentAboveLimit { ph: index, end: page_end, limit: policy.virt_limit });
    }
    Ok((seg, (page_start, page_end)))
}

fn page_floor(addr: u64) -> u64 {
    addr & !(PAGE_SIZE - 1)
}

fn page_ceil(addr: u64) -> Option<u64> {
    Some(addr.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;
    use zerocopy::FromZeros;

    const BASE: u64 = 0x40_0000;
    const POLICY: LoadPolicy = LoadPolicy { virt_base: BASE, virt_limit: BASE + 0x40_0000, max_image_bytes: 0x20_0000 };
    const R: u32 = PF_R;
    const RW: u32 = PF_R | PF_W;
    const RX: u32 = PF_R | PF_X;
    const RWX: u32 = PF_R | PF_W | PF_X;
    const PT_NOTE: u32 = 4;
    const PT_GNU_STACK: u32 = 0x6474_e551;

    // ------------------------------------------------------- the test builder

    #[derive(Clone, Copy, Debug)]
    struct Ph {
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
        align: u64,
    }

    impl Ph {
        fn to_phdr(self) -> Elf64Phdr {
            Elf64Phdr {
                p_type: self.p_type.into(),
                p_flags: self.flags.into(),
                p_offset: self.offset.into(),
                p_vaddr: self.vaddr.into(),
                p_paddr: self.vaddr.into(),
                p_filesz: self.filesz.into(),
                p_memsz: self.memsz.into(),
                p_align: self.align.into(),
            }
        }
    }

    fn load(flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> Ph {
        Ph { p_type: PT_LOAD, flags, offset, vaddr, filesz, memsz, align: PAGE_SIZE }
    }

    fn other(p_type: u32) -> Ph {
        Ph { p_type, flags: RW, offset: 0, vaddr: 0, filesz: 0, memsz: 0, align: 16 }
    }

    /// An ELF64 image described field by field; `build` writes it through
    /// [`Elf64Ehdr`] and [`Elf64Phdr`].
    #[derive(Clone, Debug)]
    struct Elf {
        class: u8,
        data: u8,
        ident_version: u8,
        version: u32,
        e_type: u16,
        machine: u16,
        entry: u64,
        phoff: u64,
        phentsize: u16,
        phnum: Option<u16>,
        phs: Vec<Ph>,
        len: usize,
    }

    impl Elf {
        /// Text (RX), a note, rodata (R), data + bss (RW), a stack marker.
        fn sample() -> Elf {
            Elf {
                class: ELFCLASS64,
                data: ELFDATA2LSB,
                ident_version: 1,
                version: 1,
                e_type: ET_EXEC,
                machine: EM_X86_64,
                entry: BASE + 0x10,
                phoff: 64,
                phentsize: 56,
                phnum: None,
                phs: vec![
                    load(RX, 0x1000, BASE, 0x1800, 0x1800),
                    Ph { offset: 0x200, filesz: 0x20, ..other(PT_NOTE) },
                    load(R, 0x3000, BASE + 0x2000, 0x800, 0x800),
                    load(RW, 0x4000, BASE + 0x3000, 0x100, 0x3000),
                    other(PT_GNU_STACK),
                ],
                len: 0x5000,
            }
        }

        fn build(&self) -> Vec<u8> {
            let header = Elf64Ehdr {
                e_ident: ElfIdent {
                    magic: ELF_MAGIC,
                    class: self.class,
                    data: self.data,
                    version: self.ident_version,
                    ..ElfIdent::new_zeroed()
                },
                e_type: self.e_type.into(),
                e_machine: self.machine.into(),
                e_version: self.version.into(),
                e_entry: self.entry.into(),
                e_phoff: self.phoff.into(),
                e_ehsize: (EHDR_SIZE as u16).into(),
                e_phentsize: self.phentsize.into(),
                e_phnum: self.phnum.unwrap_or(self.phs.len() as u16).into(),
                ..Elf64Ehdr::new_zeroed()
            };
            let table: Vec<Elf64Phdr> = self.phs.iter().map(|ph| ph.to_phdr()).collect();
            let phoff = self.phoff as usize;
            let table_end = phoff + table.as_bytes().len();
            let len = self.len.max(EHDR_SIZE);
            let mut f: Vec<u8> = (0..len.max(table_end)).map(|i| (i * 7 + 3) as u8).collect();
            f[..EHDR_SIZE].copy_from_slice(header.as_bytes());
            f[phoff..table_end].copy_from_slice(table.as_bytes());
            f.truncate(len.max(table_end).min(self.len.max(table_end)));
            f
        }

        fn parse_err(&self) -> ElfError {
            self.parse_err_with(&POLICY)
        }

        fn parse_err_with(&self, policy: &LoadPolicy) -> ElfError {
            let bytes = self.build();
            let err = ElfImage::parse(&bytes, policy).expect_err("image should be rejected");
            check_display(&err);
            err
        }

        fn with_ph(mut self, i: usize, f: impl FnOnce(&mut Ph)) -> Elf {
            f(&mut self.phs[i]);
            self
        }
    }

    /// The ELF header at the start of `bytes`, to patch in place.
    fn header_mut(bytes: &mut [u8]) -> &mut Elf64Ehdr {
        Elf64Ehdr::mut_from_prefix(bytes).expect("room for an ELF header").0
    }

    fn check_display(err: &ElfError) {
        let msg = err.to_string();
        assert!(msg.starts_with("ELF") || msg.starts_with("not an ELF"), "{msg}");
        assert!(msg.len() > 20, "{msg}");
    }

    /// Every promise a parsed image makes, checked independently.
    fn check_invariants(img: &ElfImage<'_>, bytes: &[u8], policy: &LoadPolicy) {
        let segs = img.segments();
        assert!((1..=MAX_LOAD_SEGMENTS).contains(&segs.len()));
        let mut lo = u64::MAX;
        let mut hi = 0;
        for (i, s) in segs.iter().enumerate() {
            assert!(s.memsz > 0 && s.filesz <= s.memsz);
            assert!(!(s.writable && s.executable));
            let data = img.file_bytes(s);
            assert_eq!(data.len() as u64, s.filesz);
            if s.filesz > 0 {
                let start = s.file_offset as usize;
                assert_eq!(data, &bytes[start..start + s.filesz as usize]);
            }
            let (ps, pe) = (s.page_start(), s.page_end().unwrap());
            assert!(ps >= policy.virt_base && pe <= policy.virt_limit);
            lo = lo.min(ps);
            hi = hi.max(pe);
            for t in &segs[i + 1..] {
                assert!(pe <= t.page_start() || t.page_end().unwrap() <= ps);
            }
        }
        assert_eq!(img.span(), (lo, hi));
        assert!(hi - lo <= policy.max_image_bytes);
        let e = img.entry();
        assert!(segs.iter().any(|s| s.executable && e >= s.vaddr && e - s.vaddr < s.memsz));
    }

    // ------------------------------------------------------------ acceptance

    #[test]
    fn accepts_the_sample() {
        let bytes = Elf::sample().build();
        let img = ElfImage::parse(&bytes, &POLICY).unwrap();
        assert_eq!(img.entry(), BASE + 0x10);
        assert_eq!(
            img.segments(),
            &[
                Segment {
                    vaddr: BASE,
                    memsz: 0x1800,
                    file_offset: 0x1000,
                    filesz: 0x1800,
                    writable: false,
                    executable: true
                },
                Segment {
                    vaddr: BASE + 0x2000,
                    memsz: 0x800,
                    file_offset: 0x3000,
                    filesz: 0x800,
                    writable: false,
                    executable: false
                },
                Segment {
                    vaddr: BASE + 0x3000,
                    memsz: 0x3000,
                    file_offset: 0x4000,
                    filesz: 0x100,
                    writable: true,
                    executable: false
                },
            ]
        );
        assert_eq!(img.file_bytes(&img.segments()[0]), &bytes[0x1000..0x2800]);
        assert_eq!(img.file_bytes(&img.segments()[2]), &bytes[0x4000..0x4100]);
        assert_eq!(img.span(), (BASE, BASE + 0x6000));
        check_invariants(&img, &bytes, &POLICY);
    }

    #[test]
    fn accepts_edge_cases() {
        // Exactly 16 loads, one page each, packed page by page; the phdr
        // table at an odd offset; 64 program headers in total.
        let mut elf = Elf::sample();
        elf.phoff = 0x41;
        elf.phs = (0..16).map(|i| load(if i == 0 { RX } else { R }, 0x1000, BASE + i * 0x1000, 0x10, 0x1000)).collect();
        elf.phs.extend((0..48).map(|_| other(PT_NOTE)));
        let bytes = elf.build();
        let img = ElfImage::parse(&bytes, &POLICY).unwrap();
        assert_eq!(img.segments().len(), 16);
        check_invariants(&img, &bytes, &POLICY);

        // The window filled exactly, the span at its maximum, the entry on
        // the last byte of an executable zero-fill tail.
        let policy = LoadPolicy { virt_base: BASE, virt_limit: BASE + 0x6000, max_image_bytes: 0x6000 };
        let mut elf = Elf::sample().with_ph(0, |p| p.memsz = 0x2000);
        elf.entry = BASE + 0x1fff;
        let bytes = elf.build();
        let img = ElfImage::parse(&bytes, &policy).unwrap();
        check_invariants(&img, &bytes, &policy);

        // A bss-only segment with a meaningless file offset reads nothing.
        let elf = Elf::sample().with_ph(3, |p| {
            p.filesz = 0;
            p.offset = !0xfff_u64;
            p.align = 0;
        });
        let bytes = elf.build();
        let img = ElfImage::parse(&bytes, &POLICY).unwrap();
        assert_eq!(img.file_bytes(&img.segments()[2]), &[] as &[u8]);

        // Alignment below a page needs no congruence; a 2 MiB alignment
        // needs it only modulo the page size.
        let elf = Elf::sample()
            .with_ph(2, |p| {
                p.align = 16;
                p.offset = 0x3010;
            })
            .with_ph(0, |p| p.align = 0x20_0000);
        let bytes = elf.build();
        assert!(ElfImage::parse(&bytes, &POLICY).is_ok());

        // Segments out of address order stay in program header order.
        let mut elf = Elf::sample();
        elf.phs.swap(0, 3);
        let bytes = elf.build();
        let img = ElfImage::parse(&bytes, &POLICY).unwrap();
        assert_eq!(img.segments()[0].vaddr, BASE + 0x3000);
        assert_eq!(img.segments()[2].vaddr, BASE);
    }

    #[test]
    fn file_bytes_of_a_foreign_segment_is_empty() {
        let bytes = Elf::sample().build();
        let img = ElfImage::parse(&bytes, &POLICY).unwrap();
        for (file_offset, filesz) in [(u64::MAX, 1), (0, u64::MAX), (0x4fff, 2), (1 << 40, 0)] {
            let seg = Segment { file_offset, filesz, ..Segment::default() };
            assert_eq!(img.file_bytes(&seg), &[] as &[u8]);
        }
    }

    // ------------------------------------------------------------ rejections

    #[test]
    fn rejects_short_files() {
        let bytes = Elf::sample().build();
        for len in [0, 1, 4, 63] {
            assert_eq!(ElfImage::parse(&bytes[..len], &POLICY).unwrap_err(), ElfError::TooShort { len });
        }
    }

    #[test]
    fn rejects_bad_identification() {
        let mut bytes = Elf::sample().build();
        header_mut(&mut bytes).e_ident.magic = *b"\x7fZLF";
        assert_eq!(ElfImage::parse(&bytes, &POLICY).unwrap_err(), ElfError::BadMagic { found: *b"\x7fZLF" });

        for class in [0, 1, 3] {
            let elf = Elf { class, ..Elf::sample() };
            assert_eq!(elf.parse_err(), ElfError::NotElf64 { class });
        }
        for data in [0, 2, 0xff] {
            let elf = Elf { data, ..Elf::sample() };
            assert_eq!(elf.parse_err(), ElfError::NotLittleEndian { data });
        }
        for (ident, version) in [(0, 1), (2, 1), (1, 0), (1, 2), (0, 0)] {
            let elf = Elf { ident_version: ident, version, ..Elf::sample() };
            assert_eq!(elf.parse_err(), ElfError::BadVersion { ident, version });
        }
        for machine in [0, 3, 40, 183] {
            let elf = Elf { machine, ..Elf::sample() };
            assert_eq!(elf.parse_err(), ElfError::WrongMachine { machine });
        }
        for e_type in [0, 1, ET_DYN, 4, 0xfe00, 0xffff] {
            let elf = Elf { e_type, ..Elf::sample() };
            assert_eq!(elf.parse_err(), ElfError::NotExecutable { e_type });
        }
    }

    #[test]
    fn rejects_bad_program_header_tables() {
        for size in [0, 32, 55, 57, 64] {
            let elf = Elf { phentsize: size, ..Elf::sample() };
            assert_eq!(elf.parse_err(), ElfError::BadPhentsize { size });
        }
        for phnum in [0, 65, 0xffff] {
            let elf = Elf { phnum: Some(phnum), ..Elf::sample() };
            assert_eq!(elf.parse_err(), ElfError::BadPhnum { phnum });
        }

        let bytes = Elf::sample().build();
        let len = bytes.len();
        for phoff in [(len - 5 * PHDR_SIZE) as u64 + 1, len as u64, u64::MAX, u64::MAX - 100] {
            let mut b = bytes.clone();
            header_mut(&mut b).e_phoff = phoff.into();
            assert_eq!(
                ElfImage::parse(&b, &POLICY).unwrap_err(),
                ElfError::PhdrTableOutOfBounds { offset: phoff, phnum: 5, file_len: len }
            );
        }
        // A table that would fit but the file is cut inside it.
        let cut = EHDR_SIZE + 3 * PHDR_SIZE;
        assert_eq!(
            ElfImage::parse(&bytes[..cut], &POLICY).unwrap_err(),
            ElfError::PhdrTableOutOfBounds { offset: 64, phnum: 5, file_len: cut }
        );
    }

    #[test]
    fn rejects_load_counts() {
        let mut elf = Elf::sample();
        elf.phs = vec![other(PT_NOTE), other(PT_GNU_STACK)];
        assert_eq!(elf.parse_err(), ElfError::NoLoadSegments);

        let mut elf = Elf::sample();
        elf.phs = (0..17).map(|i| load(RX, 0x1000, BASE + i * 0x1000, 0x10, 0x10)).collect();
        assert_eq!(elf.parse_err(), ElfError::TooManyLoadSegments { count: 17 });
        elf.phs.extend((0..40).map(|i| load(R, 0, i, 0, 0)));
        assert_eq!(elf.parse_err(), ElfError::TooManyLoadSegments { count: 57 });
    }

    #[test]
    fn rejects_empty_and_oversized_file_parts() {
        let elf = Elf::sample().with_ph(2, |p| {
            p.memsz = 0;
            p.filesz = 0;
        });
        assert_eq!(elf.parse_err(), ElfError::EmptySegment { ph: 2 });

        let elf = Elf::sample().with_ph(3, |p| p.filesz = 0x3001);
        assert_eq!(elf.parse_err(), ElfError::FileSizeExceedsMemSize { ph: 3, filesz: 0x3001, memsz: 0x3000 });

        for (offset, filesz) in [(0x4000, 0x1001), (0x5000, 1), (!0xfff_u64, 0x1000), (0x1000, u64::MAX)] {
            let elf = Elf::sample().with_ph(3, |p| {
                p.offset = offset;
                p.filesz = filesz;
                p.memsz = u64::MAX;
            });
            assert_eq!(elf.parse_err(), ElfError::SegmentFileOutOfBounds { ph: 3, offset, filesz, file_len: 0x5000 });
        }
    }

    #[test]
    fn rejects_bad_alignment() {
        for align in [3, 0x1001, 0x3000, u64::MAX] {
            let elf = Elf::sample().with_ph(2, |p| p.align = align);
            assert_eq!(elf.parse_err(), ElfError::BadAlignment { ph: 2, align });
        }
        for (offset, align) in [(0x3001, 0x1000), (0x3800, 0x1000), (0x2010, 0x20_0000)] {
            let elf = Elf::sample().with_ph(2, |p| {
                p.offset = offset;
                p.align = align;
            });
            assert_eq!(elf.parse_err(), ElfError::MisalignedSegment { ph: 2, offset, vaddr: BASE + 0x2000 });
        }
    }

    #[test]
    fn rejects_writable_executable() {
        let elf = Elf::sample().with_ph(3, |p| p.flags = RWX);
        assert_eq!(elf.parse_err(), ElfError::WritableAndExecutable { ph: 3, vaddr: BASE + 0x3000 });
        let elf = Elf::sample().with_ph(0, |p| p.flags = PF_W | PF_X);
        assert_eq!(elf.parse_err(), ElfError::WritableAndExecutable { ph: 0, vaddr: BASE });
    }

    #[test]
    fn rejects_addresses_outside_the_window() {
        let everything = LoadPolicy { virt_base: 0, virt_limit: u64::MAX, max_image_bytes: u64::MAX };
        for (vaddr, memsz) in [(u64::MAX, 1), (u64::MAX - 0x800, 0x100), (0x1000, u64::MAX)] {
            let elf = Elf::sample().with_ph(3, |p| {
                p.vaddr = vaddr;
                p.offset = 0x4000 + (vaddr & 0xfff);
                p.filesz = 0;
                p.memsz = memsz;
            });
            assert_eq!(elf.parse_err_with(&everything), ElfError::SegmentAddressOverflow { ph: 3, vaddr, memsz });
        }

        let elf = Elf::sample().with_ph(2, |p| p.vaddr = BASE - 0x1000);
        assert_eq!(elf.parse_err(), ElfError::SegmentBelowBase { ph: 2, vaddr: BASE - 0x1000, base: BASE });
        let elf = Elf::sample().with_ph(2, |p| p.vaddr = 0);
        assert_eq!(elf.parse_err(), ElfError::SegmentBelowBase { ph: 2, vaddr: 0, base: BASE });
        // An unaligned window: the segment's first page must be inside it.
        let odd = LoadPolicy { virt_base: BASE + 8, ..POLICY };
        let mut elf = Elf::sample();
        elf.phs[0].vaddr = BASE + 8;
        elf.phs[0].offset = 0x1008;
        elf.entry = BASE + 8;
        assert_eq!(elf.parse_err_with(&odd), ElfError::SegmentBelowBase { ph: 0, vaddr: BASE + 8, base: BASE + 8 });

        let limit = POLICY.virt_limit;
        for (vaddr, memsz, end) in [
            (limit - 0x1000, 0x1001, limit + 0x1000),
            (limit, 1, limit + 0x1000),
            (limit - 0x1000, u64::MAX - limit, !0xfff_u64),
        ] {
            let elf = Elf::sample().with_ph(3, |p| {
                p.vaddr = vaddr;
                p.filesz = 1;
                p.memsz = memsz;
            });
            assert_eq!(elf.parse_err(), ElfError::SegmentAboveLimit { ph: 3, end, limit });
        }
        // The end is page-rounded against an unaligned limit.
        let odd = LoadPolicy { virt_limit: BASE + 0x5ff0, ..POLICY };
        assert_eq!(
            Elf::sample().parse_err_with(&odd),
            ElfError::SegmentAboveLimit { ph: 3, end: BASE + 0x6000, limit: BASE + 0x5ff0 }
        );
        // An empty window rejects everything, without panicking.
        let empty = LoadPolicy { virt_base: BASE + 0x10_0000, virt_limit: BASE, max_image_bytes: 0 };
        assert!(matches!(Elf::sample().parse_err_with(&empty), ElfError::SegmentBelowBase { ph: 0, .. }));
    }

    #[test]
    fn rejects_segments_sharing_a_page() {
        // rodata starting in text's last page.
        let elf = Elf::sample().with_ph(2, |p| {
            p.vaddr = BASE + 0x1800;
            p.offset = 0x3800;
        });
        assert_eq!(elf.parse_err(), ElfError::SegmentsOverlap { first: 0, second: 2, page: BASE + 0x1000 });
        // data ending in the same page where... a later segment starts.
        let elf = Elf::sample().with_ph(3, |p| {
            p.vaddr = BASE + 0x2800;
            p.offset = 0x4800;
        });
        assert_eq!(elf.parse_err(), ElfError::SegmentsOverlap { first: 2, second: 3, page: BASE + 0x2000 });
        // One segment nested in another, and two identical ones.
        let elf = Elf::sample().with_ph(3, |p| {
            p.vaddr = BASE;
            p.offset = 0x4000;
            p.memsz = 0x10_0000;
        });
        assert_eq!(elf.parse_err(), ElfError::SegmentsOverlap { first: 0, second: 3, page: BASE });
        let mut elf = Elf::sample();
        elf.phs.push(elf.phs[2]);
        assert_eq!(elf.parse_err(), ElfError::SegmentsOverlap { first: 2, second: 5, page: BASE + 0x2000 });
    }

    #[test]
    fn rejects_too_large_a_span() {
        let small = LoadPolicy { max_image_bytes: 0x5fff, ..POLICY };
        assert_eq!(Elf::sample().parse_err_with(&small), ElfError::ImageTooLarge { span: 0x6000, max: 0x5fff });
        // The span counts the gap between segments.
        let elf = Elf::sample().with_ph(3, |p| p.vaddr = BASE + 0x30_0000);
        assert_eq!(elf.parse_err(), ElfError::ImageTooLarge { span: 0x30_3000, max: 0x20_0000 });
    }

    #[test]
    fn rejects_entry_outside_executable_segments() {
        for entry in [
            0,
            BASE - 1,
            BASE + 0x1800, // just past text
            BASE + 0x1fff, // text's page, but past the segment
            BASE + 0x2000, // rodata
            BASE + 0x3000, // data
            BASE + 0x5fff, // bss
            u64::MAX,
        ] {
            let elf = Elf { entry, ..Elf::sample() };
            assert_eq!(elf.parse_err(), ElfError::EntryNotExecutable { entry });
        }
    }

    #[test]
    fn display_names_the_values() {
        let cases: &[(ElfError, &[&str])] = &[
            (ElfError::TooShort { len: 9 }, &["9", "64"]),
            (ElfError::BadMagic { found: *b"MZ\x90\0" }, &["4d", "7f"]),
            (ElfError::NotElf64 { class: 1 }, &["class is 1", "ELFCLASS64"]),
            (ElfError::NotLittleEndian { data: 2 }, &["2", "little-endian"]),
            (ElfError::BadVersion { ident: 0, version: 7 }, &["0", "7", "EV_CURRENT"]),
            (ElfError::WrongMachine { machine: 3 }, &["machine is 3", "62"]),
            (ElfError::NotExecutable { e_type: 3 }, &["type is 3", "ET_DYN", "ET_EXEC", "non-PIE"]),
            (ElfError::NotExecutable { e_type: 1 }, &["ET_REL"]),
            (ElfError::NotExecutable { e_type: 99 }, &["type is 99"]),
            (ElfError::BadPhentsize { size: 32 }, &["32", "56"]),
            (ElfError::BadPhnum { phnum: 99 }, &["99", "64"]),
            (
                ElfError::PhdrTableOutOfBounds { offset: 0x40, phnum: 5, file_len: 0x100 },
                &["5 entries", "0x40", "0x100"],
            ),
            (ElfError::NoLoadSegments, &["no PT_LOAD"]),
            (ElfError::TooManyLoadSegments { count: 17 }, &["17", "16"]),
            (ElfError::EmptySegment { ph: 3 }, &["header 3", "memsz 0"]),
            (ElfError::FileSizeExceedsMemSize { ph: 1, filesz: 0x20, memsz: 0x10 }, &["header 1", "0x20", "0x10"]),
            (
                ElfError::SegmentFileOutOfBounds { ph: 2, offset: 0x30, filesz: 0x40, file_len: 0x50 },
                &["header 2", "0x30", "0x40", "0x50"],
            ),
            (ElfError::BadAlignment { ph: 4, align: 3 }, &["header 4", "0x3", "power of two"]),
            (
                ElfError::MisalignedSegment { ph: 1, offset: 0x1001, vaddr: 0x400000 },
                &["header 1", "0x1001", "0x400000"],
            ),
            (ElfError::WritableAndExecutable { ph: 0, vaddr: 0x5000 }, &["header 0", "0x5000", "W^X"]),
            (
                ElfError::SegmentAddressOverflow { ph: 2, vaddr: 0xffff, memsz: 0xeeee },
                &["header 2", "0xffff", "0xeeee", "overflow"],
            ),
            (
                ElfError::SegmentBelowBase { ph: 1, vaddr: 0x1234, base: 0x400000 },
                &["header 1", "0x1234", "page 0x1000", "0x400000"],
            ),
            (
                ElfError::SegmentAboveLimit { ph: 1, end: 0x900000, limit: 0x800000 },
                &["header 1", "0x900000", "0x800000"],
            ),
            (ElfError::SegmentsOverlap { first: 0, second: 2, page: 0x401000 }, &["headers 0 and 2", "0x401000"]),
            (ElfError::ImageTooLarge { span: 0x6000, max: 0x5000 }, &["0x6000", "0x5000"]),
            (ElfError::EntryNotExecutable { entry: 0xabc }, &["0xabc", "executable"]),
        ];
        for (err, needles) in cases {
            let msg = err.to_string();
            check_display(err);
            for needle in *needles {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
            }
        }
    }

    // ------------------------------------------------------------- real ELF

    #[test]
    fn rejects_a_real_host_executable_as_not_et_exec() {
        // Rust test binaries on x86_64 Linux are position-independent (ET_DYN).
        let bytes = std::fs::read("/proc/self/exe").expect("read own executable");
        let err = ElfImage::parse(&bytes, &POLICY).unwrap_err();
        assert_eq!(err, ElfError::NotExecutable { e_type: ET_DYN });
        assert!(err.to_string().contains("non-PIE"), "{err}");

        // Claiming ET_EXEC gets further into a real, large program header
        // table; whatever it finds must be an error, not a panic.
        let mut patched = bytes.clone();
        header_mut(&mut patched).e_type = ET_EXEC.into();
        let anywhere = LoadPolicy { virt_base: 0, virt_limit: 1 << 47, max_image_bytes: 1 << 40 };
        match ElfImage::parse(&patched, &anywhere) {
            Ok(img) => check_invariants(&img, &patched, &anywhere),
            Err(e) => check_display(&e),
        }
    }

    // -------------------------------------------------------------- fuzzing

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Values that sit on the boundaries the checks care about.
    fn interesting(rng: &mut XorShift) -> u64 {
        const V: [u64; 16] = [
            0,
            1,
            0xfff,
            0x1000,
            0x1001,
            56,
            64,
            BASE,
            BASE + 0x10,
            BASE + 0x40_0000,
            0x20_0000,
            0x5000,
            u64::MAX,
            u64::MAX - 0xfff,
            1 << 63,
            u32::MAX as u64,
        ];
        V[rng.below(V.len())]
    }

    fn parse_and_check(bytes: &[u8]) -> bool {
        match ElfImage::parse(bytes, &POLICY) {
            Ok(img) => {
                check_invariants(&img, bytes, &POLICY);
                true
            }
            Err(e) => {
                check_display(&e);
                false
            }
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        let base = Elf::sample().build();
        let headers = EHDR_SIZE + 5 * PHDR_SIZE;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..40_000 {
            let mut b = base.clone();
            for _ in 0..1 + rng.below(6) {
                let headers = headers.min(b.len());
                if headers < 16 {
                    break;
                }
                match rng.below(5) {
                    // A random byte anywhere in the headers.
                    0 => {
                        let i = rng.below(headers);
                        b[i] = rng.next() as u8;
                    }
                    // A boundary value in an 8-byte-aligned header field.
                    1 | 2 => {
                        let i = rng.below(headers / 8) * 8;
                        let v = interesting(&mut rng);
                        b[i..i + 8].copy_from_slice(&v.to_le_bytes());
                    }
                    // A random 8 bytes at any header offset.
                    3 => {
                        let i = rng.below(headers - 8);
                        let v = rng.next();
                        b[i..i + 8].copy_from_slice(&v.to_le_bytes());
                    }
                    // Truncation.
                    _ => {
                        let len = rng.below(b.len() + 1);
                        b.truncate(len);
                    }
                }
            }
            if parse_and_check(&b) {
                accepted += 1;
            }
        }
        // The loop exercises acceptance too, not only early rejections.
        assert!(accepted > 100, "only {accepted} mutants parsed");
    }

    #[test]
    fn every_header_byte_mutated() {
        let base = Elf::sample().build();
        for i in 0..EHDR_SIZE + 5 * PHDR_SIZE {
            for v in [0x00, 0x01, 0x07, 0x10, 0x40, 0x7f, 0x80, 0xff, base[i] ^ 0x01] {
                let mut b = base.clone();
                b[i] = v;
                parse_and_check(&b);
            }
        }
    }

    #[test]
    fn every_truncation() {
        let base = Elf::sample().build();
        for len in 0..=base.len() {
            let ok = parse_and_check(&base[..len]);
            assert_eq!(ok, len >= 0x4100, "length {len:#x}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(12345);
        let base = Elf::sample().build();
        let good = Elf64Ehdr::read_from_prefix(&base).unwrap().0;
        for _ in 0..5_000 {
            let len = rng.below(600);
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Keep a plausible identification most of the time so the
            // random bytes reach the program header checks.
            if len >= EHDR_SIZE && rng.below(4) != 0 {
                let eh = header_mut(&mut b);
                eh.e_ident = good.e_ident;
                eh.e_type = good.e_type;
                eh.e_machine = good.e_machine;
                eh.e_version = good.e_version;
                if rng.below(2) == 0 {
                    // A table right after the header, of the right entry size.
                    eh.e_phentsize = good.e_phentsize;
                    eh.e_phnum = good.e_phnum;
                    eh.e_phoff = (EHDR_SIZE as u64).into();
                }
            }
            parse_and_check(&b);
        }
    }
}
