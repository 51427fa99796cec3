//! The Ringfence boot bundle: one blob holding the boot manifest, the guest
//! kernel images and the hypervisor's symbol table.
//!
//! `cargo xtask` packs a bundle on the host with the `ringfence-bundle-writer` crate;
//! QEMU hands it to the hypervisor as the boot module, a byte blob at an
//! arbitrary address with any alignment; the hypervisor reads it with
//! [`Bundle`]. The reader never needs alignment: every field is read byte by
//! byte as little-endian.
//!
//! # Trust
//! Every byte of a bundle is hostile input. The reader turns it into trusted
//! values in exactly three places, each of which validates everything it
//! hands out and never panics, indexes out of bounds, overflows or loops
//! without bound:
//! - [`Bundle::parse`] validates the header, and one rule across records:
//!   at most one record has the privileged flag (there is one dom0;
//!   [`BundleError::SeveralPrivileged`] names the first two). A bundle that
//!   breaks either is rejected whole;
//! - [`Bundle::domain`] validates one domain record, so one bad record fails
//!   only that domain ([`RecordError`] names the record index and, when it is
//!   readable, the domain name);
//! - [`Bundle::symbols`] validates the whole symbol table section
//!   ([`SymbolError`]); the table is a debugging aid, so a bad one need not
//!   stop a boot.
//!
//! The guest images themselves are only located here; their contents are
//! validated by the hypervisor's ELF loader.
//!
//! # Layout (format version 1)
//! All integers are little-endian. Offsets are from the start of the bundle.
//! Every reserved byte must be zero; a later format that gives reserved bytes
//! a meaning bumps the version, so a version-1 reader never ignores a field it
//! does not understand.
//!
//! ## Header (64 bytes, at offset 0)
//! | offset | size | field            | rule                                                        |
//! |-------:|-----:|------------------|-------------------------------------------------------------|
//! | 0x00   | 8    | magic            | `b"RFBUNDL1"`                                               |
//! | 0x08   | 2    | version          | `1`                                                         |
//! | 0x0a   | 2    | header_size      | `64`                                                        |
//! | 0x0c   | 2    | record_count     | `1..=1024` domain records                                   |
//! | 0x0e   | 2    | record_size      | `128`                                                       |
//! | 0x10   | 8    | total_size       | bundle size in bytes; `<=` the boot module's size; the record table fits |
//! | 0x18   | 8    | symtab_offset    | symbol table section, or 0 with symtab_size 0 for none      |
//! | 0x20   | 8    | symtab_size      | section size; the section lies in the payload area          |
//! | 0x28   | 24   | reserved         | zero                                                        |
//!
//! The record table follows at `header_size`: `record_count` records of
//! `record_size` bytes. Everything after it, up to `total_size`, is the
//! *payload area*; images, command lines and the symbol table lie inside it.
//! Bytes of the boot module past `total_size` are ignored (QEMU may pad).
//!
//! ## Domain record (128 bytes)
//! | offset | size | field          | rule                                                             |
//! |-------:|-----:|----------------|------------------------------------------------------------------|
//! | 0x00   | 32   | name           | 1..=31 bytes of `[A-Za-z0-9._-]`, then NUL, NUL-padded; unique    |
//! | 0x20   | 8    | image_offset   | guest ELF image: non-empty, inside the payload area              |
//! | 0x28   | 8    | image_size     |                                                                  |
//! | 0x30   | 8    | cmdline_offset | command line: inside the payload area (any offset if len is 0)   |
//! | 0x38   | 4    | cmdline_len    | `< 1024` bytes of UTF-8, no NUL terminator                       |
//! | 0x3c   | 4    | mem_kib        | memory in KiB: a positive multiple of 4, `<= 4 GiB`              |
//! | 0x40   | 4    | weight         | BVT weight, `1..=10_000`                                         |
//! | 0x44   | 4    | warp_us        | BVT warp in microseconds, 0 = none                               |
//! | 0x48   | 4    | flags          | bit 0 = privileged (dom0), in at most one record; bit 1 = template (not started at boot, given to dom0's toolstack; never with bit 0); other bits must be zero |
//! | 0x4c   | 4    | expect         | how the domain should end: 1 = poweroff, 2 = crash               |
//! | 0x50   | 4    | dma_kib        | DMA pool in KiB: 0 (none), or a multiple of 4, `<= 16 MiB`, `< mem_kib`, privileged records only |
//! | 0x54   | 44   | reserved       | zero                                                             |
//!
//! A name is unique: a record whose name equals an earlier record's fails
//! with [`RecordErrorKind::DuplicateName`] (the earlier one stays valid).
//! `expect` starts at 1 so that an all-zero record is rejected.
//!
//! ## Symbol table section (at symtab_offset, symtab_size bytes)
//! | offset            | size       | field                                                       |
//! |------------------:|-----------:|-------------------------------------------------------------|
//! | 0x00              | 4          | count: number of entries                                    |
//! | 0x04              | 4          | entry_size: `24`                                            |
//! | 0x08              | 4          | strtab_offset (from the section start), `>=` the entries' end |
//! | 0x0c              | 4          | strtab_size; the string table ends inside the section       |
//! | 0x10              | count × 24 | entries                                                     |
//! | strtab_offset     | strtab_size| string table: UTF-8 names, not NUL-terminated               |
//!
//! Each entry: `addr: u64` (0x00), `size: u64` (0x08), `name_offset: u32`
//! (0x10, into the string table), `name_len: u32` (0x14). Entries are sorted
//! by strictly increasing `addr` and do not overlap: `addr + size` does not
//! overflow and is `<=` the next entry's `addr`. A symbol of size 0 covers
//! only its own address.
//!
//! # Versioning
//! `header_size` and `record_size` are explicit so that a reader can reject a
//! different layout with a precise message; a version-1 reader accepts only
//! the sizes above. Growth goes into reserved space or a new version.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

mod fixed;
mod header;
mod record;
mod symbols;

pub use header::{Bundle, BundleError};
pub use record::{parse_name, DomainSpec, Expect, RecordError, RecordErrorKind, RecordName};
pub use symbols::{Symbol, SymbolError, Symbols};

/// Byte offsets and sizes of the format, as in the crate docs' tables.
pub mod layout {
    /// Magic at offset 0.
    pub const MAGIC: [u8; 8] = *b"RFBUNDL1";
    /// The format version this crate reads and writes.
    pub const VERSION: u16 = 1;

    /// Size of the header.
    pub const HEADER_SIZE: usize = 64;
    pub const HDR_MAGIC: usize = 0x00;
    pub const HDR_VERSION: usize = 0x08;
    pub const HDR_HEADER_SIZE: usize = 0x0a;
    pub const HDR_RECORD_COUNT: usize = 0x0c;
    pub const HDR_RECORD_SIZE: usize = 0x0e;
    pub const HDR_TOTAL_SIZE: usize = 0x10;
    pub const HDR_SYMTAB_OFFSET: usize = 0x18;
    pub const HDR_SYMTAB_SIZE: usize = 0x20;
    pub const HDR_RESERVED: usize = 0x28;
    pub const HDR_RESERVED_LEN: usize = HEADER_SIZE - HDR_RESERVED;

    /// Most domain records a bundle may hold.
    pub const MAX_DOMAINS: usize = 1024;

    /// Size of one domain record.
    pub const RECORD_SIZE: usize = 128;
    pub const REC_NAME: usize = 0x00;
    /// Size of the name field: up to 31 name bytes and a NUL.
    pub const REC_NAME_LEN: usize = 32;
    pub const REC_IMAGE_OFFSET: usize = 0x20;
    pub const REC_IMAGE_SIZE: usize = 0x28;
    pub const REC_CMDLINE_OFFSET: usize = 0x30;
    pub const REC_CMDLINE_LEN: usize = 0x38;
    pub const REC_MEM_KIB: usize = 0x3c;
    pub const REC_WEIGHT: usize = 0x40;
    pub const REC_WARP_US: usize = 0x44;
    pub const REC_FLAGS: usize = 0x48;
    pub const REC_EXPECT: usize = 0x4c;
    pub const REC_DMA_KIB: usize = 0x50;
    pub const REC_RESERVED: usize = 0x54;
    pub const REC_RESERVED_LEN: usize = RECORD_SIZE - REC_RESERVED;

    /// Longest domain name in bytes.
    pub const MAX_NAME_LEN: usize = REC_NAME_LEN - 1;
    /// A command line is shorter than this many bytes.
    pub const MAX_CMDLINE_LEN: u32 = 1024;
    /// Largest memory size: 4 GiB in KiB.
    pub const MAX_MEM_KIB: u32 = 4 * 1024 * 1024;
    /// Memory sizes are whole 4 KiB pages.
    pub const MEM_KIB_GRANULE: u32 = 4;
    /// Largest DMA pool: 16 MiB in KiB (machine-contiguous memory is
    /// scarce; the pool is taken from the domain's `mem_kib`).
    pub const MAX_DMA_KIB: u32 = 16 * 1024;
    pub const MIN_WEIGHT: u32 = 1;
    pub const MAX_WEIGHT: u32 = 10_000;

    /// `flags` bit 0: the domain is privileged (dom0).
    pub const FLAG_PRIVILEGED: u32 = 1 << 0;
    /// `flags` bit 1: a template, not started at boot: the privileged
    /// domain's toolstack reads it (`domctl` `BOOTIMAGE_*`) and creates
    /// domains from it.
    pub const FLAG_TEMPLATE: u32 = 1 << 1;
    /// Every flag bit a version-1 reader understands.
    pub const KNOWN_FLAGS: u32 = FLAG_PRIVILEGED | FLAG_TEMPLATE;

    /// `expect` value: the domain should power off.
    pub const EXPECT_POWEROFF: u32 = 1;
    /// `expect` value: the domain should crash.
    pub const EXPECT_CRASH: u32 = 2;
    /// `expect` value: the hypervisor must refuse to build the domain (a
    /// deliberately bad image, for tests of the loader).
    pub const EXPECT_REJECTED: u32 = 3;

    /// Size of the symbol table section's header.
    pub const SYMTAB_HEADER_SIZE: usize = 16;
    pub const SYM_COUNT: usize = 0x00;
    pub const SYM_ENTRY_SIZE: usize = 0x04;
    pub const SYM_STRTAB_OFFSET: usize = 0x08;
    pub const SYM_STRTAB_SIZE: usize = 0x0c;
    /// Size of one symbol entry.
    pub const SYMBOL_ENTRY_SIZE: usize = 24;
    pub const SYMENT_ADDR: usize = 0x00;
    pub const SYMENT_SIZE: usize = 0x08;
    pub const SYMENT_NAME_OFFSET: usize = 0x10;
    pub const SYMENT_NAME_LEN: usize = 0x14;
}
