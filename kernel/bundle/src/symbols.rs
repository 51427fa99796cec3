//! The hypervisor symbol table, for "the symbol if known" in fault reports.

use core::fmt;

use crate::fixed::Fixed;
use crate::layout::*;

/// Why the symbol table section was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolError {
    /// The section is shorter than its 16-byte header.
    SectionTooShort { size: usize },
    /// `entry_size` is not 24.
    BadEntrySize { size: u32 },
    /// The entries run past the section (or into the string table).
    EntriesOutOfBounds { count: u32, strtab_offset: u32, section_size: usize },
    /// The string table runs past the section.
    StringsOutOfBounds { offset: u32, size: u32, section_size: usize },
    /// An entry's name runs past the string table.
    NameOutOfBounds { index: usize, offset: u32, len: u32, strtab_size: u32 },
    /// An entry's name is not UTF-8.
    NameNotUtf8 { index: usize },
    /// `addr + size` overflows.
    SizeOverflow { index: usize, addr: u64, size: u64 },
    /// An entry starts before the previous one ends (or at the same address):
    /// the table is unsorted or has overlapping symbols.
    NotSorted { index: usize, addr: u64, prev_addr: u64, prev_end: u64 },
}

impl fmt::Display for SymbolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("symbol table: ")?;
        match *self {
            SymbolError::SectionTooShort { size } => write!(
                f,
                "section is {size} bytes, shorter than its {SYMTAB_HEADER_SIZE}-byte header"
            ),
            SymbolError::BadEntrySize { size } => write!(
                f,
                "entry size is {size} bytes, expected {SYMBOL_ENTRY_SIZE}"
            ),
            SymbolError::EntriesOutOfBounds {
                count,
                strtab_offset,
                section_size,
            } => write!(
                f,
                "{count} entries of {SYMBOL_ENTRY_SIZE} bytes after the {SYMTAB_HEADER_SIZE}-byte header do not fit before the string table at {strtab_offset:#x} in a section of {section_size:#x} bytes"
            ),
            SymbolError::StringsOutOfBounds {
                offset,
                size,
                section_size,
            } => write!(
                f,
                "string table (offset {offset:#x}, size {size:#x}) runs past the section of {section_size:#x} bytes"
            ),
            SymbolError::NameOutOfBounds {
                index,
                offset,
                len,
                strtab_size,
            } => write!(
                f,
                "entry {index}: name (offset {offset:#x}, length {len:#x}) runs past the string table of {strtab_size:#x} bytes"
            ),
            SymbolError::NameNotUtf8 { index } => write!(f, "entry {index}: name is not UTF-8"),
            SymbolError::SizeOverflow { index, addr, size } => write!(
                f,
                "entry {index}: address {addr:#x} + size {size:#x} overflows"
            ),
            SymbolError::NotSorted {
                index,
                addr,
                prev_addr,
                prev_end,
            } => write!(
                f,
                "entry {index}: address {addr:#x} is not after the previous symbol [{prev_addr:#x}, {prev_end:#x}) (entries must be sorted and must not overlap)"
            ),
        }
    }
}

impl core::error::Error for SymbolError {}

/// One symbol: `[addr, addr + size)` (a size-0 symbol covers only `addr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    pub addr: u64,
    pub size: u64,
    pub name: &'a str,
}

impl Symbol<'_> {
    /// Whether `addr` falls inside this symbol.
    pub fn contains(&self, addr: u64) -> bool {
        match addr.checked_sub(self.addr) {
            Some(off) => off < self.size || (self.size == 0 && off == 0),
            None => false,
        }
    }
}

/// A validated symbol table: sorted, non-overlapping, every name in bounds
/// and UTF-8.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Symbols<'a> {
    entries: &'a [u8],
    strings: &'a [u8],
    count: usize,
}

impl fmt::Debug for Symbols<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Symbols").field("count", &self.count).field("strtab_size", &self.strings.len()).finish()
    }
}

impl<'a> Symbols<'a> {
    /// Validates a whole symbol table section (linear in its size).
    pub fn parse(section: &'a [u8]) -> Result<Symbols<'a>, SymbolError> {
        let section_size = section.len();
        let hdr =
            Fixed::<SYMTAB_HEADER_SIZE>::at(section, 0).ok_or(SymbolError::SectionTooShort { size: section_size })?;
        let count_raw = hdr.u32::<SYM_COUNT>();
        let entry_size = hdr.u32::<SYM_ENTRY_SIZE>();
        let strtab_offset = hdr.u32::<SYM_STRTAB_OFFSET>();
        let strtab_size = hdr.u32::<SYM_STRTAB_SIZE>();
        if usize::try_from(entry_size).ok() != Some(SYMBOL_ENTRY_SIZE) {
            return Err(SymbolError::BadEntrySize { size: entry_size });
        }

        let strings_oob = SymbolError::StringsOutOfBounds { offset: strtab_offset, size: strtab_size, section_size };
        let strtab_start = usize::try_from(strtab_offset).map_err(|_| strings_oob)?;
        let strtab_end =
            usize::try_from(strtab_size).ok().and_then(|size| strtab_start.checked_add(size)).ok_or(strings_oob)?;
        let strings = section.get(strtab_start..strtab_end).ok_or(strings_oob)?;

        let entries_oob = SymbolError::EntriesOutOfBounds { count: count_raw, strtab_offset, section_size };
        let count = usize::try_from(count_raw).map_err(|_| entries_oob)?;
        let entries_end = count
            .checked_mul(SYMBOL_ENTRY_SIZE)
            .and_then(|len| len.checked_add(SYMTAB_HEADER_SIZE))
            .ok_or(entries_oob)?;
        if entries_end > strtab_start {
            return Err(entries_oob);
        }
        let entries = section.get(SYMTAB_HEADER_SIZE..entries_end).ok_or(entries_oob)?;

        let table = Symbols { entries, strings, count };
        let mut prev: Option<(u64, u64)> = None;
        for index in 0..count {
            let (addr, size, name_offset, name_len) = table.raw(index).ok_or(entries_oob)?;
            let name = table.name(name_offset, name_len).ok_or(SymbolError::NameOutOfBounds {
                index,
                offset: name_offset,
                len: name_len,
                strtab_size,
            })?;
            core::str::from_utf8(name).map_err(|_| SymbolError::NameNotUtf8 { index })?;
            let end = addr.checked_add(size).ok_or(SymbolError::SizeOverflow { index, addr, size })?;
            if let Some((prev_addr, prev_end)) = prev {
                if addr <= prev_addr || addr < prev_end {
                    return Err(SymbolError::NotSorted { index, addr, prev_addr, prev_end });
                }
            }
            prev = Some((addr, end));
        }
        Ok(table)
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `(addr, size, name_offset, name_len)` of entry `index`.
    fn raw(&self, index: usize) -> Option<(u64, u64, u32, u32)> {
        let start = index.checked_mul(SYMBOL_ENTRY_SIZE)?;
        let e = Fixed::<SYMBOL_ENTRY_SIZE>::at(self.entries, start)?;
        Some((
            e.u64::<SYMENT_ADDR>(),
            e.u64::<SYMENT_SIZE>(),
            e.u32::<SYMENT_NAME_OFFSET>(),
            e.u32::<SYMENT_NAME_LEN>(),
        ))
    }

    fn name(&self, offset: u32, len: u32) -> Option<&'a [u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.strings.get(start..end)
    }

    /// Symbol `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<Symbol<'a>> {
        if index >= self.count {
            return None;
        }
        let (addr, size, name_offset, name_len) = self.raw(index)?;
        let name = core::str::from_utf8(self.name(name_offset, name_len)?).ok()?;
        Some(Symbol { addr, size, name })
    }

    /// Every symbol, in address order.
    pub fn iter(&self) -> impl Iterator<Item = Symbol<'a>> + '_ {
        (0..self.count).filter_map(move |i| self.get(i))
    }

    /// The symbol containing `addr` and the offset of `addr` into it.
    ///
    /// Binary search: `O(log n)`, no allocation.
    pub fn lookup(&self, addr: u64) -> Option<(&'a str, u64)> {
        // Find the number of entries whose start is <= addr.
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (start, ..) = self.raw(mid)?;
            if start <= addr {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let sym = self.get(lo.checked_sub(1)?)?;
        if !sym.contains(addr) {
            return None;
        }
        Some((sym.name, addr.checked_sub(sym.addr)?))
    }
}
