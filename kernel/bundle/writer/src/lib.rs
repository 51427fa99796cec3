//! Writes Ringfence boot bundles: the host side of the format that
//! `ringfence-bundle` reads (xtask packs manifests with it). Kept apart from
//! the reader so the hypervisor's dependency stays `no_std` however the
//! workspace is built.
//!
//! The writer writes what it is given, field for field, so tests can build
//! deliberately bad bundles (a zero memory size, a bad name, an image range
//! outside the bundle). [`BundleWriter::finish_checked`] reads the result
//! back with the same reader the hypervisor uses, so a bad manifest fails on
//! the host with the hypervisor's own message.
//!
//! Placement: header, record table, symbol table section (8-byte aligned),
//! command lines, then images (16-byte aligned; identical images are stored
//! once). Placement is not part of the format: the reader follows the
//! offsets in the records.

#![forbid(unsafe_code)]

use core::fmt;

use ringfence_bundle::layout::*;
use ringfence_bundle::{Bundle, BundleError, Expect, RecordError, SymbolError};

/// One domain as the writer stores it: raw record fields plus the image and
/// command line bytes to place in the payload area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainEntry {
    /// Name bytes, written NUL-padded into the 32-byte field; bytes past 32
    /// are dropped (so a 32-byte name is stored without a terminator).
    pub name: Vec<u8>,
    /// Guest ELF image, placed in the payload area.
    pub image: Vec<u8>,
    /// Command line bytes, placed in the payload area.
    pub cmdline: Vec<u8>,
    pub mem_kib: u32,
    pub weight: u32,
    pub warp_us: u32,
    /// Raw `flags` field ([`FLAG_PRIVILEGED`], ...).
    pub flags: u32,
    /// Raw `expect` field ([`Expect::to_raw`]).
    pub expect: u32,
    /// DMA pool in KiB (dom0's; 0 = none).
    pub dma_kib: u32,
    /// Written as `(image_offset, image_size)` instead of where the image
    /// was placed (the image bytes are still placed).
    pub image_range: Option<(u64, u64)>,
    /// Written as `(cmdline_offset, cmdline_len)` instead of where the
    /// command line was placed.
    pub cmdline_range: Option<(u64, u32)>,
}

/// BVT weight a domain gets unless told otherwise.
pub const DEFAULT_WEIGHT: u32 = 100;

impl DomainEntry {
    /// An unprivileged domain expected to power off, with an empty command
    /// line, weight [`DEFAULT_WEIGHT`] and no warp.
    pub fn new(name: impl AsRef<[u8]>, image: impl Into<Vec<u8>>, mem_kib: u32) -> DomainEntry {
        DomainEntry {
            name: name.as_ref().to_vec(),
            image: image.into(),
            cmdline: Vec::new(),
            mem_kib,
            weight: DEFAULT_WEIGHT,
            warp_us: 0,
            flags: 0,
            expect: Expect::Poweroff.to_raw(),
            dma_kib: 0,
            image_range: None,
            cmdline_range: None,
        }
    }

    pub fn cmdline(mut self, cmdline: impl AsRef<[u8]>) -> DomainEntry {
        self.cmdline = cmdline.as_ref().to_vec();
        self
    }

    pub fn weight(mut self, weight: u32) -> DomainEntry {
        self.weight = weight;
        self
    }

    pub fn warp_us(mut self, warp_us: u32) -> DomainEntry {
        self.warp_us = warp_us;
        self
    }

    pub fn privileged(mut self, privileged: bool) -> DomainEntry {
        if privileged {
            self.flags |= FLAG_PRIVILEGED;
        } else {
            self.flags &= !FLAG_PRIVILEGED;
        }
        self
    }

    /// Marks the entry a template: not started at boot, offered to dom0's
    /// toolstack, which creates domains from it.
    pub fn template(mut self, template: bool) -> DomainEntry {
        if template {
            self.flags |= FLAG_TEMPLATE;
        } else {
            self.flags &= !FLAG_TEMPLATE;
        }
        self
    }

    pub fn expect(mut self, expect: Expect) -> DomainEntry {
        self.expect = expect.to_raw();
        self
    }

    /// A DMA pool of `dma_kib` KiB, part of the domain's memory (dom0's).
    pub fn dma_kib(mut self, dma_kib: u32) -> DomainEntry {
        self.dma_kib = dma_kib;
        self
    }
}

/// Why [`BundleWriter::finish_checked`] refused what it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackError {
    Bundle(BundleError),
    Record(RecordError),
    Symbols(SymbolError),
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::Bundle(e) => fmt::Display::fmt(e, f),
            PackError::Record(e) => fmt::Display::fmt(e, f),
            PackError::Symbols(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for PackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PackError::Bundle(e) => Some(e),
            PackError::Record(e) => Some(e),
            PackError::Symbols(e) => Some(e),
        }
    }
}

/// Builds a bundle.
#[derive(Clone, Debug, Default)]
pub struct BundleWriter {
    domains: Vec<DomainEntry>,
    symbols: Vec<(u64, u64, Vec<u8>)>,
    keep_symbol_order: bool,
}

impl BundleWriter {
    pub fn new() -> BundleWriter {
        BundleWriter::default()
    }

    /// Appends a domain record.
    pub fn domain(&mut self, domain: DomainEntry) -> &mut BundleWriter {
        self.domains.push(domain);
        self
    }

    /// Adds a symbol. By default [`finish`](Self::finish) sorts symbols by
    /// address and drops those that overlap an earlier one (aliases, nested
    /// symbols), keeping the largest at each address.
    pub fn symbol(&mut self, addr: u64, size: u64, name: impl AsRef<[u8]>) -> &mut BundleWriter {
        self.symbols.push((addr, size, name.as_ref().to_vec()));
        self
    }

    /// Writes symbols exactly in the order given, without sorting or
    /// dropping any (for building bad tables in tests).
    pub fn keep_symbol_order(&mut self, keep: bool) -> &mut BundleWriter {
        self.keep_symbol_order = keep;
        self
    }

    fn normalized_symbols(&self) -> Vec<&(u64, u64, Vec<u8>)> {
        let mut syms: Vec<_> = self.symbols.iter().collect();
        if self.keep_symbol_order {
            return syms;
        }
        syms.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut out: Vec<&(u64, u64, Vec<u8>)> = Vec::with_capacity(syms.len());
        let mut prev_end: Option<u64> = None;
        for sym in syms {
            let Some(end) = sym.0.checked_add(sym.1) else {
                continue;
            };
            if let (Some(last), Some(prev_end)) = (out.last(), prev_end) {
                if sym.0 <= last.0 || sym.0 < prev_end {
                    continue;
                }
            }
            out.push(sym);
            prev_end = Some(end);
        }
        out
    }

    fn symbol_section(&self) -> Option<Vec<u8>> {
        if self.symbols.is_empty() {
            return None;
        }
        let syms = self.normalized_symbols();
        let strtab_offset = SYMTAB_HEADER_SIZE + syms.len() * SYMBOL_ENTRY_SIZE;
        let mut strings = Vec::new();
        let mut entries = Vec::with_capacity(syms.len() * SYMBOL_ENTRY_SIZE);
        for (addr, size, name) in syms {
            entries.extend_from_slice(&addr.to_le_bytes());
            entries.extend_from_slice(&size.to_le_bytes());
            entries.extend_from_slice(&u32_sat(strings.len()).to_le_bytes());
            entries.extend_from_slice(&u32_sat(name.len()).to_le_bytes());
            strings.extend_from_slice(name);
        }
        let mut section = Vec::with_capacity(strtab_offset + strings.len());
        section.extend_from_slice(&u32_sat(entries.len() / SYMBOL_ENTRY_SIZE).to_le_bytes());
        section.extend_from_slice(&u32_sat(SYMBOL_ENTRY_SIZE).to_le_bytes());
        section.extend_from_slice(&u32_sat(strtab_offset).to_le_bytes());
        section.extend_from_slice(&u32_sat(strings.len()).to_le_bytes());
        section.extend_from_slice(&entries);
        section.extend_from_slice(&strings);
        Some(section)
    }

    /// The bundle bytes, written as given (no validation).
    pub fn finish(&self) -> Vec<u8> {
        let count = self.domains.len();
        let table_end = HEADER_SIZE + count * RECORD_SIZE;
        let mut out = std::vec![0u8; table_end];

        let symtab = self.symbol_section().map(|section| {
            pad_to(&mut out, 8);
            let offset = out.len();
            out.extend_from_slice(&section);
            (offset as u64, section.len() as u64)
        });

        let mut cmdlines = Vec::with_capacity(count);
        for d in &self.domains {
            cmdlines.push((out.len() as u64, u32_sat(d.cmdline.len())));
            out.extend_from_slice(&d.cmdline);
        }

        let mut images: Vec<(u64, u64)> = Vec::with_capacity(count);
        for (i, d) in self.domains.iter().enumerate() {
            let earlier = self.domains[..i].iter().position(|e| e.image == d.image);
            let placed = match earlier {
                Some(j) => images[j],
                None => {
                    pad_to(&mut out, 16);
                    let offset = out.len() as u64;
                    out.extend_from_slice(&d.image);
                    (offset, d.image.len() as u64)
                }
            };
            images.push(placed);
        }

        for (i, d) in self.domains.iter().enumerate() {
            let start = HEADER_SIZE + i * RECORD_SIZE;
            let rec = &mut out[start..start + RECORD_SIZE];
            let name_len = d.name.len().min(REC_NAME_LEN);
            rec[REC_NAME..REC_NAME + name_len].copy_from_slice(&d.name[..name_len]);
            let (image_offset, image_size) = d.image_range.unwrap_or(images[i]);
            let (cmdline_offset, cmdline_len) = d.cmdline_range.unwrap_or(cmdlines[i]);
            put(rec, REC_IMAGE_OFFSET, &image_offset.to_le_bytes());
            put(rec, REC_IMAGE_SIZE, &image_size.to_le_bytes());
            put(rec, REC_CMDLINE_OFFSET, &cmdline_offset.to_le_bytes());
            put(rec, REC_CMDLINE_LEN, &cmdline_len.to_le_bytes());
            put(rec, REC_MEM_KIB, &d.mem_kib.to_le_bytes());
            put(rec, REC_WEIGHT, &d.weight.to_le_bytes());
            put(rec, REC_WARP_US, &d.warp_us.to_le_bytes());
            put(rec, REC_FLAGS, &d.flags.to_le_bytes());
            put(rec, REC_EXPECT, &d.expect.to_le_bytes());
            put(rec, REC_DMA_KIB, &d.dma_kib.to_le_bytes());
        }

        let total = out.len() as u64;
        let (sym_offset, sym_size) = symtab.unwrap_or((0, 0));
        let hdr = &mut out[..HEADER_SIZE];
        put(hdr, HDR_MAGIC, &MAGIC);
        put(hdr, HDR_VERSION, &VERSION.to_le_bytes());
        put(hdr, HDR_HEADER_SIZE, &(HEADER_SIZE as u16).to_le_bytes());
        let count16 = u16::try_from(count).unwrap_or(u16::MAX);
        put(hdr, HDR_RECORD_COUNT, &count16.to_le_bytes());
        put(hdr, HDR_RECORD_SIZE, &(RECORD_SIZE as u16).to_le_bytes());
        put(hdr, HDR_TOTAL_SIZE, &total.to_le_bytes());
        put(hdr, HDR_SYMTAB_OFFSET, &sym_offset.to_le_bytes());
        put(hdr, HDR_SYMTAB_SIZE, &sym_size.to_le_bytes());
        out
    }

    /// The bundle bytes, after reading them back with the hypervisor's
    /// reader: every domain record and the symbol table must be valid.
    pub fn finish_checked(&self) -> Result<Vec<u8>, PackError> {
        let bytes = self.finish();
        let bundle = Bundle::parse(&bytes).map_err(PackError::Bundle)?;
        for domain in bundle.domains() {
            domain.map_err(PackError::Record)?;
        }
        bundle.symbols().map_err(PackError::Symbols)?;
        Ok(bytes)
    }
}

fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn pad_to(out: &mut Vec<u8>, align: usize) {
    let padded = out.len().next_multiple_of(align);
    out.resize(padded, 0);
}

/// `n` as a `u32`, saturating (the reader then rejects the bundle).
fn u32_sat(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
