//! Round trips, every rejection path, and mutation fuzzing.

use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use crate::{BundleWriter, DomainEntry, PackError};
use ringfence_bundle::layout::*;
use ringfence_bundle::*;

fn image(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag ^ (i as u8)).collect()
}

fn sample_writer() -> BundleWriter {
    let mut w = BundleWriter::new();
    w.domain(
        DomainEntry::new("dom0", image(0xa5, 300), 65536)
            .cmdline("console=ttyS0 loglevel=7")
            .weight(512)
            .privileged(true),
    )
    .domain(DomainEntry::new("domU-1.test_a", image(0x11, 77), 8192).warp_us(2000).expect(Expect::Crash))
    .domain(DomainEntry::new("domU-2", image(0x11, 77), 4).weight(1))
    .symbol(0x1000, 0x40, "entry")
    .symbol(0x1040, 0x100, "trap_handler")
    .symbol(0x2000, 0, "marker")
    .symbol(0x3000, 0x10, "last");
    w
}

fn sample() -> Vec<u8> {
    sample_writer().finish_checked().expect("sample bundle is valid")
}

fn patch(bytes: &mut [u8], offset: usize, value: &[u8]) {
    bytes[offset..offset + value.len()].copy_from_slice(value);
}

fn rec_off(index: usize, field: usize) -> usize {
    HEADER_SIZE + index * RECORD_SIZE + field
}

fn header_err(bytes: &[u8]) -> BundleError {
    Bundle::parse(bytes).expect_err("header should be rejected")
}

/// A one-domain bundle with `entry` and the error of its record.
fn record_err(entry: DomainEntry) -> RecordError {
    let mut w = BundleWriter::new();
    w.domain(entry);
    record_err_bytes(&w.finish(), 0)
}

fn record_err_bytes(bytes: &[u8], index: usize) -> RecordError {
    let bundle = Bundle::parse(bytes).expect("header is valid");
    bundle.domain(index).expect_err("record should be rejected")
}

fn good() -> DomainEntry {
    DomainEntry::new("guest", image(1, 64), 1024)
}

// ---------------------------------------------------------------- round trip

#[test]
fn round_trip() {
    let bytes = sample();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert_eq!(bundle.domain_count(), 3);
    assert_eq!(bundle.bytes().len(), bytes.len());
    let d: Vec<DomainSpec<'_>> = bundle.domains().map(Result::unwrap).collect();

    assert_eq!(d[0].index, 0);
    assert_eq!(d[0].name, "dom0");
    assert_eq!(d[0].image, &image(0xa5, 300)[..]);
    assert_eq!(d[0].cmdline, "console=ttyS0 loglevel=7");
    assert_eq!(d[0].mem_kib, 65536);
    assert_eq!(d[0].weight, 512);
    assert_eq!(d[0].warp_us, 0);
    assert!(d[0].privileged);
    assert_eq!(d[0].expect, Expect::Poweroff);

    assert_eq!(d[1].index, 1);
    assert_eq!(d[1].name, "domU-1.test_a");
    assert_eq!(d[1].image, &image(0x11, 77)[..]);
    assert_eq!(d[1].cmdline, "");
    assert_eq!(d[1].warp_us, 2000);
    assert_eq!(d[1].weight, crate::DEFAULT_WEIGHT);
    assert!(!d[1].privileged);
    assert_eq!(d[1].expect, Expect::Crash);

    assert_eq!(d[2].name, "domU-2");
    assert_eq!(d[2].mem_kib, 4);
    assert_eq!(d[2].weight, 1);
    // Identical images are stored once.
    assert_eq!(d[1].image.as_ptr(), d[2].image.as_ptr());

    let syms = bundle.symbols().unwrap().unwrap();
    assert_eq!(syms.len(), 4);
    let names: Vec<&str> = syms.iter().map(|s| s.name).collect();
    assert_eq!(names, ["entry", "trap_handler", "marker", "last"]);
}

#[test]
fn bundle_at_any_alignment_with_trailing_padding() {
    let bytes = sample();
    for shift in 0..8 {
        let mut buf = vec![0xeeu8; shift];
        buf.extend_from_slice(&bytes);
        buf.extend_from_slice(&[0xff; 100]); // QEMU may pad the module
        let bundle = Bundle::parse(&buf[shift..]).unwrap();
        assert_eq!(bundle.bytes().len(), bytes.len());
        assert_eq!(bundle.domain(0).unwrap().name, "dom0");
    }
}

#[test]
fn no_symbols_is_none() {
    let mut w = BundleWriter::new();
    w.domain(good());
    let bytes = w.finish_checked().unwrap();
    assert_eq!(Bundle::parse(&bytes).unwrap().symbols(), Ok(None));
}

#[test]
fn max_domains_and_boundary_values_accepted() {
    let mut w = BundleWriter::new();
    for i in 0..MAX_DOMAINS {
        let name = if i == 0 { "a".repeat(MAX_NAME_LEN) } else { format!("d{i}") };
        w.domain(
            DomainEntry::new(name, image(i as u8, 1), MAX_MEM_KIB)
                .weight(MAX_WEIGHT)
                .warp_us(u32::MAX)
                .cmdline("x".repeat(MAX_CMDLINE_LEN as usize - 1)),
        );
    }
    let bytes = w.finish_checked().unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert_eq!(bundle.domain_count(), MAX_DOMAINS);
    assert_eq!(bundle.domain(0).unwrap().name.len(), MAX_NAME_LEN);
    assert!(bundle.domains().all(|d| d.is_ok()));
}

#[test]
fn writer_drops_overlapping_symbols_and_sorts() {
    let mut w = BundleWriter::new();
    w.domain(good())
        .symbol(0x500, 0x10, "late")
        .symbol(0x100, 0x10, "alias_small")
        .symbol(0x100, 0x40, "big")
        .symbol(0x120, 0x4, "nested")
        .symbol(u64::MAX, 2, "overflowing")
        .symbol(0x140, 0x10, "after");
    let bytes = w.finish_checked().unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    let syms = bundle.symbols().unwrap().unwrap();
    let names: Vec<&str> = syms.iter().map(|s| s.name).collect();
    assert_eq!(names, ["big", "after", "late"]);
}

// ------------------------------------------------------------------ symbols

#[test]
fn symbol_lookup() {
    let bytes = sample();
    let bundle = Bundle::parse(&bytes).unwrap();
    let syms = bundle.symbols().unwrap().unwrap();
    assert_eq!(syms.lookup(0), None);
    assert_eq!(syms.lookup(0xfff), None);
    assert_eq!(syms.lookup(0x1000), Some(("entry", 0)));
    assert_eq!(syms.lookup(0x103f), Some(("entry", 0x3f)));
    assert_eq!(syms.lookup(0x1040), Some(("trap_handler", 0)));
    assert_eq!(syms.lookup(0x113f), Some(("trap_handler", 0xff)));
    assert_eq!(syms.lookup(0x1140), None);
    assert_eq!(syms.lookup(0x2000), Some(("marker", 0)));
    assert_eq!(syms.lookup(0x2001), None);
    assert_eq!(syms.lookup(0x300f), Some(("last", 0xf)));
    assert_eq!(syms.lookup(0x3010), None);
    assert_eq!(syms.lookup(u64::MAX), None);
    assert_eq!(syms.get(4), None);
    assert_eq!(syms.get(1), Some(Symbol { addr: 0x1040, size: 0x100, name: "trap_handler" }));
}

#[test]
fn symbol_lookup_matches_linear_scan() {
    let mut w = BundleWriter::new();
    w.domain(good());
    let mut addr = 0u64;
    for i in 0..200u64 {
        addr += (i * 7919) % 97;
        let size = (i * 31) % 13;
        w.symbol(addr, size, format!("s{i}"));
        addr += size.max(1);
    }
    w.symbol(u64::MAX - 4, 4, "top");
    let bytes = w.finish_checked().unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    let syms = bundle.symbols().unwrap().unwrap();
    for probe in (0..addr + 10).chain(u64::MAX - 10..=u64::MAX) {
        let linear = syms.iter().find(|s| s.contains(probe)).map(|s| (s.name, probe - s.addr));
        assert_eq!(syms.lookup(probe), linear, "probe {probe:#x}");
    }
}

#[test]
fn empty_symbol_table_section() {
    let section = [0u8, 0, 0, 0, 24, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0];
    let syms = Symbols::parse(&section).unwrap();
    assert!(syms.is_empty());
    assert_eq!(syms.lookup(0), None);
}

fn sym_section(entries: &[(u64, u64, u32, u32)], strings: &[u8]) -> Vec<u8> {
    let strtab = (SYMTAB_HEADER_SIZE + entries.len() * SYMBOL_ENTRY_SIZE) as u32;
    let mut s = Vec::new();
    s.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    s.extend_from_slice(&24u32.to_le_bytes());
    s.extend_from_slice(&strtab.to_le_bytes());
    s.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    for &(a, sz, o, l) in entries {
        s.extend_from_slice(&a.to_le_bytes());
        s.extend_from_slice(&sz.to_le_bytes());
        s.extend_from_slice(&o.to_le_bytes());
        s.extend_from_slice(&l.to_le_bytes());
    }
    s.extend_from_slice(strings);
    s
}

#[test]
fn symbol_rejections() {
    let ok = sym_section(&[(0x10, 4, 0, 1), (0x20, 4, 1, 2)], b"abc");
    assert!(Symbols::parse(&ok).is_ok());

    assert_eq!(Symbols::parse(&ok[..15]).unwrap_err(), SymbolError::SectionTooShort { size: 15 });

    let mut s = ok.clone();
    patch(&mut s, SYM_ENTRY_SIZE, &16u32.to_le_bytes());
    assert_eq!(Symbols::parse(&s).unwrap_err(), SymbolError::BadEntrySize { size: 16 });

    let mut s = ok.clone();
    patch(&mut s, SYM_COUNT, &3u32.to_le_bytes());
    assert!(matches!(Symbols::parse(&s).unwrap_err(), SymbolError::EntriesOutOfBounds { count: 3, .. }));
    patch(&mut s, SYM_COUNT, &u32::MAX.to_le_bytes());
    assert!(matches!(Symbols::parse(&s).unwrap_err(), SymbolError::EntriesOutOfBounds { count: u32::MAX, .. }));

    let mut s = ok.clone();
    patch(&mut s, SYM_STRTAB_SIZE, &4u32.to_le_bytes());
    assert!(matches!(Symbols::parse(&s).unwrap_err(), SymbolError::StringsOutOfBounds { size: 4, .. }));
    let mut s = ok.clone();
    patch(&mut s, SYM_STRTAB_OFFSET, &u32::MAX.to_le_bytes());
    patch(&mut s, SYM_STRTAB_SIZE, &u32::MAX.to_le_bytes());
    assert!(matches!(Symbols::parse(&s).unwrap_err(), SymbolError::StringsOutOfBounds { .. }));

    let s = sym_section(&[(0x10, 4, 2, 2)], b"abc");
    assert_eq!(
        Symbols::parse(&s).unwrap_err(),
        SymbolError::NameOutOfBounds { index: 0, offset: 2, len: 2, strtab_size: 3 }
    );
    let s = sym_section(&[(0x10, 4, u32::MAX, u32::MAX)], b"abc");
    assert!(matches!(Symbols::parse(&s).unwrap_err(), SymbolError::NameOutOfBounds { index: 0, .. }));

    let s = sym_section(&[(0x10, 4, 0, 1), (0x20, 4, 1, 2)], b"a\xff\xfe");
    assert_eq!(Symbols::parse(&s).unwrap_err(), SymbolError::NameNotUtf8 { index: 1 });

    let s = sym_section(&[(u64::MAX, 2, 0, 1)], b"a");
    assert_eq!(Symbols::parse(&s).unwrap_err(), SymbolError::SizeOverflow { index: 0, addr: u64::MAX, size: 2 });

    // Unsorted, duplicate address, overlapping.
    for entries in
        [[(0x20, 4, 0, 1), (0x10, 4, 0, 1)], [(0x10, 0, 0, 1), (0x10, 4, 0, 1)], [(0x10, 0x11, 0, 1), (0x20, 4, 0, 1)]]
    {
        let s = sym_section(&entries, b"a");
        assert!(matches!(Symbols::parse(&s).unwrap_err(), SymbolError::NotSorted { index: 1, .. }), "{entries:x?}");
    }
}

#[test]
fn bad_symbol_table_fails_only_symbols() {
    let mut w = sample_writer();
    w.keep_symbol_order(true).symbol(0x10, 1, "unsorted");
    let bytes = w.finish();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert!(matches!(bundle.symbols(), Err(SymbolError::NotSorted { index: 4, .. })));
    assert!(bundle.domains().all(|d| d.is_ok()));
    assert!(matches!(w.finish_checked(), Err(PackError::Symbols(SymbolError::NotSorted { .. }))));
}

// ------------------------------------------------------------------- header

fn hdr_u16(bytes: &mut [u8], off: usize, v: u16) {
    patch(bytes, off, &v.to_le_bytes());
}

fn hdr_u64(bytes: &mut [u8], off: usize, v: u64) {
    patch(bytes, off, &v.to_le_bytes());
}

#[test]
fn header_too_short() {
    let bytes = sample();
    for len in [0, 1, 8, HEADER_SIZE - 1] {
        assert_eq!(header_err(&bytes[..len]), BundleError::TooShort { len });
    }
}

#[test]
fn header_bad_magic() {
    let mut bytes = sample();
    bytes[7] = b'2';
    assert_eq!(header_err(&bytes), BundleError::BadMagic { found: *b"RFBUNDL2" });
}

#[test]
fn header_bad_version() {
    for v in [0u16, 2, u16::MAX] {
        let mut bytes = sample();
        hdr_u16(&mut bytes, HDR_VERSION, v);
        assert_eq!(header_err(&bytes), BundleError::UnsupportedVersion { version: v });
    }
}

#[test]
fn header_bad_sizes() {
    let mut bytes = sample();
    hdr_u16(&mut bytes, HDR_HEADER_SIZE, 72);
    assert_eq!(header_err(&bytes), BundleError::BadHeaderSize { size: 72 });

    let mut bytes = sample();
    hdr_u16(&mut bytes, HDR_RECORD_SIZE, 0);
    assert_eq!(header_err(&bytes), BundleError::BadRecordSize { size: 0 });
}

#[test]
fn header_record_count() {
    let mut bytes = sample();
    hdr_u16(&mut bytes, HDR_RECORD_COUNT, 0);
    assert_eq!(header_err(&bytes), BundleError::NoDomains);

    for n in [MAX_DOMAINS as u16 + 1, u16::MAX] {
        hdr_u16(&mut bytes, HDR_RECORD_COUNT, n);
        assert_eq!(header_err(&bytes), BundleError::TooManyDomains { count: n });
    }

    let mut w = BundleWriter::new();
    for i in 0..=MAX_DOMAINS {
        w.domain(DomainEntry::new(format!("d{i}"), image(0, 1), 4));
    }
    assert_eq!(
        w.finish_checked(),
        Err(PackError::Bundle(BundleError::TooManyDomains { count: MAX_DOMAINS as u16 + 1 }))
    );
}

#[test]
fn header_reserved() {
    for off in HDR_RESERVED..HEADER_SIZE {
        let mut bytes = sample();
        bytes[off] = 1;
        assert_eq!(header_err(&bytes), BundleError::ReservedNotZero { offset: off });
    }
}

#[test]
fn header_total_size() {
    let bytes = sample();
    let len = bytes.len();

    // Truncated module: total_size claims more than there is.
    assert_eq!(header_err(&bytes[..len - 1]), BundleError::TotalSizeTooLarge { total: len as u64, available: len - 1 });
    let mut b = bytes.clone();
    hdr_u64(&mut b, HDR_TOTAL_SIZE, u64::MAX);
    assert_eq!(header_err(&b), BundleError::TotalSizeTooLarge { total: u64::MAX, available: len });

    // total_size smaller than the record table.
    let mut b = bytes.clone();
    let table_end = (HEADER_SIZE + 3 * RECORD_SIZE) as u64;
    hdr_u64(&mut b, HDR_TOTAL_SIZE, table_end - 1);
    assert_eq!(header_err(&b), BundleError::RecordTableOutOfBounds { end: table_end, total: table_end - 1 });
    // A record table that runs past a short module.
    let mut b = bytes[..HEADER_SIZE + RECORD_SIZE].to_vec();
    let short = b.len() as u64;
    hdr_u64(&mut b, HDR_TOTAL_SIZE, short);
    assert!(matches!(
        header_err(&b),
        BundleError::RecordTableOutOfBounds { .. } | BundleError::SymbolTableOutOfBounds { .. }
    ));
}

#[test]
fn header_total_size_cuts_payload() {
    // A smaller total_size makes the tail invisible: images past it fail.
    let mut bytes = sample();
    let cut = bytes.len() as u64 - 10;
    hdr_u64(&mut bytes, HDR_TOTAL_SIZE, cut);
    let bundle = Bundle::parse(&bytes).unwrap();
    assert_eq!(bundle.bytes().len() as u64, cut);
    let errs: Vec<RecordError> = bundle.domains().filter_map(Result::err).collect();
    assert!(errs.iter().all(|e| matches!(e.kind, RecordErrorKind::ImageOutOfBounds { .. })));
    assert!(!errs.is_empty());
}

#[test]
fn header_symbol_table_bounds() {
    let bytes = sample();
    let total = bytes.len() as u64;
    let payload_start = (HEADER_SIZE + 3 * RECORD_SIZE) as u64;
    for (offset, size) in [
        (0, 16),                   // overlaps the header
        (payload_start - 1, 16),   // overlaps the record table
        (total - 8, 16),           // runs past the end
        (total, 1),                // starts at the end
        (8, 0),                    // offset without size still must be in the payload
        (u64::MAX, 2),             // overflows
        (payload_start, u64::MAX), // overflows
    ] {
        let mut b = bytes.clone();
        hdr_u64(&mut b, HDR_SYMTAB_OFFSET, offset);
        hdr_u64(&mut b, HDR_SYMTAB_SIZE, size);
        assert_eq!(
            header_err(&b),
            BundleError::SymbolTableOutOfBounds { offset, size, payload_start, total },
            "offset {offset:#x} size {size:#x}"
        );
    }
    // A section of size 0 inside the payload area is present but too short.
    let mut b = bytes.clone();
    hdr_u64(&mut b, HDR_SYMTAB_OFFSET, payload_start);
    hdr_u64(&mut b, HDR_SYMTAB_SIZE, 0);
    assert_eq!(Bundle::parse(&b).unwrap().symbols(), Err(SymbolError::SectionTooShort { size: 0 }));
}

// ------------------------------------------------------------------- records

#[test]
fn record_index_out_of_range() {
    let bytes = sample();
    let bundle = Bundle::parse(&bytes).unwrap();
    for i in [3, 64, usize::MAX] {
        assert_eq!(
            bundle.domain(i),
            Err(RecordError { index: i, name: None, kind: RecordErrorKind::NoSuchRecord { count: 3 } })
        );
    }
}

#[test]
fn record_name_rules() {
    let e = record_err(DomainEntry::new("", image(1, 8), 4));
    assert_eq!((e.index, e.name, e.kind), (0, None, RecordErrorKind::NameEmpty));

    let e = record_err(DomainEntry::new("a".repeat(32), image(1, 8), 4));
    assert_eq!(e.kind, RecordErrorKind::NameTooLong);

    for (name, byte, position) in
        [("dom 0", b' ', 3), ("dom/0", b'/', 3), ("\u{e9}t\u{e9}", 0xc3, 0), ("a\x01", 1, 1), ("x+y", b'+', 1)]
    {
        let e = record_err(DomainEntry::new(name, image(1, 8), 4));
        assert_eq!(e.kind, RecordErrorKind::NameBadByte { byte, position }, "{name:?}");
        assert_eq!(e.name, None);
    }

    let e = record_err(DomainEntry::new(b"ab\0c".as_slice(), image(1, 8), 4));
    assert_eq!(e.kind, RecordErrorKind::NameBadPadding { position: 3 });
}

#[test]
fn record_duplicate_name() {
    let mut w = BundleWriter::new();
    w.domain(DomainEntry::new("same", image(1, 8), 4))
        .domain(DomainEntry::new("other", image(1, 8), 4))
        .domain(DomainEntry::new("same", image(2, 8), 4));
    let bytes = w.finish();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert!(bundle.domain(0).is_ok());
    assert!(bundle.domain(1).is_ok());
    let e = bundle.domain(2).unwrap_err();
    assert_eq!(e.kind, RecordErrorKind::DuplicateName { first: 0 });
    assert_eq!(e.name.unwrap().as_str(), "same");
    assert_eq!(e.to_string(), "domain record 2 (\"same\"): name is already used by domain record 0");
}

#[test]
fn record_image_rules() {
    let mut d = good();
    d.image_range = Some((1000, 0));
    assert_eq!(record_err(d).kind, RecordErrorKind::ImageEmpty);

    let mut w = BundleWriter::new();
    w.domain(good());
    let total = w.finish().len() as u64;
    let payload_start = (HEADER_SIZE + RECORD_SIZE) as u64;
    for (offset, size) in [
        (0, 8),                    // the header
        (payload_start - 1, 8),    // the record table
        (total - 4, 8),            // past the end
        (total, 1),                // at the end
        (u64::MAX, 1),             // far away
        (payload_start, u64::MAX), // overflows
        (u64::MAX - 1, 4),         // overflows
    ] {
        let mut d = good();
        d.image_range = Some((offset, size));
        let e = record_err(d);
        assert_eq!(e.name.unwrap().as_str(), "guest");
        assert_eq!(e.kind, RecordErrorKind::ImageOutOfBounds { offset, size, payload_start, total });
    }
}

#[test]
fn record_cmdline_rules() {
    let e = record_err(good().cmdline("x".repeat(1024)));
    assert_eq!(e.kind, RecordErrorKind::CmdlineTooLong { len: 1024 });
    let mut d = good();
    d.cmdline_range = Some((0, u32::MAX));
    assert_eq!(record_err(d).kind, RecordErrorKind::CmdlineTooLong { len: u32::MAX });

    let mut w = BundleWriter::new();
    w.domain(good().cmdline("hi"));
    let total = w.finish().len() as u64;
    let payload_start = (HEADER_SIZE + RECORD_SIZE) as u64;
    for (offset, len) in [(0, 2), (payload_start - 1, 2), (total - 1, 2), (u64::MAX, 1)] {
        let mut d = good().cmdline("hi");
        d.cmdline_range = Some((offset, len));
        assert_eq!(record_err(d).kind, RecordErrorKind::CmdlineOutOfBounds { offset, len, payload_start, total });
    }

    // An empty command line may have any offset.
    let mut d = good();
    d.cmdline_range = Some((u64::MAX, 0));
    let mut w = BundleWriter::new();
    w.domain(d);
    assert_eq!(w.finish_checked().map(|_| ()), Ok(()));

    let e = record_err(good().cmdline(b"ok\xffno".as_slice()));
    assert_eq!(e.kind, RecordErrorKind::CmdlineNotUtf8 { valid_up_to: 2 });
}

#[test]
fn record_memory_rules() {
    let mem = |m| record_err(DomainEntry::new("g", image(1, 8), m)).kind;
    assert_eq!(mem(0), RecordErrorKind::MemZero);
    for m in [1, 2, 3, 4097, MAX_MEM_KIB - 1, u32::MAX] {
        assert_eq!(mem(m), RecordErrorKind::MemNotPageMultiple { mem_kib: m });
    }
    for m in [MAX_MEM_KIB + 4, u32::MAX - 3] {
        assert_eq!(mem(m), RecordErrorKind::MemTooLarge { mem_kib: m });
    }
}

#[test]
fn record_weight_rules() {
    for w in [0, MAX_WEIGHT + 1, u32::MAX] {
        assert_eq!(record_err(good().weight(w)).kind, RecordErrorKind::WeightOutOfRange { weight: w });
    }
}

#[test]
fn record_flags_and_expect_rules() {
    for flags in [4, 0x8000_0000, u32::MAX] {
        let mut d = good();
        d.flags = flags;
        assert_eq!(record_err(d).kind, RecordErrorKind::UnknownFlags { flags });
    }
    for value in [0, 4, u32::MAX] {
        let mut d = good();
        d.expect = value;
        assert_eq!(record_err(d).kind, RecordErrorKind::UnknownExpect { value });
    }
}

#[test]
fn record_reserved() {
    let mut w = BundleWriter::new();
    w.domain(good());
    let clean = w.finish();
    for off in REC_RESERVED..RECORD_SIZE {
        let mut b = clean.clone();
        b[rec_off(0, off)] = 0x80;
        assert_eq!(record_err_bytes(&b, 0).kind, RecordErrorKind::ReservedNotZero { offset: off });
    }
}

#[test]
fn one_bad_record_fails_only_its_domain() {
    let mut bytes = sample();
    patch(&mut bytes, rec_off(1, REC_MEM_KIB), &0u32.to_le_bytes());
    let bundle = Bundle::parse(&bytes).unwrap();
    let results: Vec<_> = bundle.domains().collect();
    assert!(results[0].is_ok());
    assert_eq!(results[1].unwrap_err().to_string(), "domain record 1 (\"domU-1.test_a\"): memory size is 0 KiB");
    assert!(results[2].is_ok());
}

#[test]
fn finish_checked_reports_the_record() {
    let mut w = BundleWriter::new();
    w.domain(good()).domain(DomainEntry::new("bad", image(1, 8), 6));
    let err = w.finish_checked().unwrap_err();
    assert_eq!(err.to_string(), "domain record 1 (\"bad\"): memory size 6 KiB is not a multiple of 4 KiB");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn display_messages_name_the_values() {
    let cases: Vec<(String, &[&str])> = vec![
        (BundleError::TooShort { len: 5 }.to_string(), &["5", "64"]),
        (BundleError::BadMagic { found: *b"ELF\0\0\0\0\0" }.to_string(), &["magic", "RFBUNDL1"]),
        (BundleError::UnsupportedVersion { version: 9 }.to_string(), &["version 9"]),
        (BundleError::BadHeaderSize { size: 3 }.to_string(), &["3", "64"]),
        (BundleError::BadRecordSize { size: 3 }.to_string(), &["3", "128"]),
        (BundleError::NoDomains.to_string(), &["no domain"]),
        (BundleError::TooManyDomains { count: 1999 }.to_string(), &["1999", "1024"]),
        (BundleError::TotalSizeTooLarge { total: 1000, available: 10 }.to_string(), &["1000", "10"]),
        (BundleError::RecordTableOutOfBounds { end: 192, total: 100 }.to_string(), &["192", "100"]),
        (
            BundleError::SymbolTableOutOfBounds { offset: 0x10, size: 0x20, payload_start: 0xc0, total: 0x100 }
                .to_string(),
            &["0x10", "0x20", "0xc0", "0x100"],
        ),
        (BundleError::ReservedNotZero { offset: 0x29 }.to_string(), &["0x29", "reserved"]),
        (RecordErrorKind::NoSuchRecord { count: 3 }.to_string(), &["3"]),
        (RecordErrorKind::NameEmpty.to_string(), &["empty"]),
        (RecordErrorKind::NameTooLong.to_string(), &["31"]),
        (RecordErrorKind::NameBadByte { byte: 0x20, position: 3 }.to_string(), &["0x20", "3"]),
        (RecordErrorKind::NameBadPadding { position: 7 }.to_string(), &["7", "NUL"]),
        (RecordErrorKind::ImageEmpty.to_string(), &["image", "zero"]),
        (
            RecordErrorKind::ImageOutOfBounds { offset: 0x11, size: 0x22, payload_start: 0x33, total: 0x44 }
                .to_string(),
            &["0x11", "0x22", "0x33", "0x44"],
        ),
        (RecordErrorKind::CmdlineTooLong { len: 2000 }.to_string(), &["2000", "1024"]),
        (
            RecordErrorKind::CmdlineOutOfBounds { offset: 0x11, len: 0x22, payload_start: 0x33, total: 0x44 }
                .to_string(),
            &["0x11", "0x22", "0x33", "0x44"],
        ),
        (RecordErrorKind::CmdlineNotUtf8 { valid_up_to: 6 }.to_string(), &["UTF-8", "6"]),
        (RecordErrorKind::MemZero.to_string(), &["0 KiB"]),
        (RecordErrorKind::MemNotPageMultiple { mem_kib: 6 }.to_string(), &["6 KiB"]),
        (RecordErrorKind::MemTooLarge { mem_kib: 5_000_000 }.to_string(), &["5000000", "4194304"]),
        (RecordErrorKind::WeightOutOfRange { weight: 0 }.to_string(), &["weight 0", "10000"]),
        (RecordErrorKind::UnknownFlags { flags: 0x5 }.to_string(), &["0x5", "0x4"]),
        (RecordErrorKind::UnknownExpect { value: 7 }.to_string(), &["7", "poweroff", "crash"]),
        (RecordErrorKind::ReservedNotZero { offset: 0x50 }.to_string(), &["0x50"]),
        (
            RecordError { index: 4, name: None, kind: RecordErrorKind::NameEmpty }.to_string(),
            &["domain record 4: name is empty"],
        ),
        (SymbolError::SectionTooShort { size: 3 }.to_string(), &["symbol table", "3", "16"]),
        (SymbolError::BadEntrySize { size: 8 }.to_string(), &["8", "24"]),
        (
            SymbolError::EntriesOutOfBounds { count: 9, strtab_offset: 0x20, section_size: 0x30 }.to_string(),
            &["9", "0x20", "0x30"],
        ),
        (
            SymbolError::StringsOutOfBounds { offset: 0x20, size: 0x40, section_size: 0x30 }.to_string(),
            &["0x20", "0x40", "0x30"],
        ),
        (
            SymbolError::NameOutOfBounds { index: 2, offset: 0x5, len: 0x9, strtab_size: 0x6 }.to_string(),
            &["entry 2", "0x5", "0x9", "0x6"],
        ),
        (SymbolError::NameNotUtf8 { index: 2 }.to_string(), &["entry 2", "UTF-8"]),
        (SymbolError::SizeOverflow { index: 1, addr: 0xff, size: 0x10 }.to_string(), &["entry 1", "0xff", "0x10"]),
        (
            SymbolError::NotSorted { index: 3, addr: 0x10, prev_addr: 0x8, prev_end: 0x20 }.to_string(),
            &["entry 3", "0x10", "0x8", "0x20"],
        ),
    ];
    for (msg, needles) in cases {
        for needle in needles {
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
    }
}

#[test]
fn expect_raw_round_trip() {
    for e in [Expect::Poweroff, Expect::Crash, Expect::Rejected] {
        assert_eq!(Expect::from_raw(e.to_raw()), Some(e));
    }
    assert_eq!(Expect::from_raw(0), None);
    assert_eq!(Expect::Crash.to_string(), "crash");
}

// ------------------------------------------------------------------ fuzzing

/// Checks the promises a successful parse makes, for any input.
fn exercise(bytes: &[u8]) {
    let Ok(bundle) = Bundle::parse(bytes) else {
        return;
    };
    assert!(bundle.bytes().len() <= bytes.len());
    assert!((1..=MAX_DOMAINS).contains(&bundle.domain_count()));
    let range = bytes.as_ptr_range();
    for (i, d) in bundle.domains().enumerate() {
        let _ = d.as_ref().map_err(|e| e.to_string());
        let Ok(d) = d else { continue };
        assert_eq!(d.index, i);
        assert!(!d.image.is_empty());
        assert!(range.contains(&d.image.as_ptr()));
        assert!(d.image.as_ptr_range().end <= range.end);
        assert!((1..=MAX_NAME_LEN).contains(&d.name.len()));
        assert!(d.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert!(d.cmdline.len() < MAX_CMDLINE_LEN as usize);
        assert!(d.mem_kib > 0 && d.mem_kib % 4 == 0 && d.mem_kib <= MAX_MEM_KIB);
        assert!((MIN_WEIGHT..=MAX_WEIGHT).contains(&d.weight));
    }
    let _ = bundle.domain(bundle.domain_count());
    match bundle.symbols() {
        Ok(Some(syms)) => {
            for probe in [0, 1, 0x1000, 0x1040, 0x2000, 0x3008, u64::MAX] {
                let _ = syms.lookup(probe);
            }
            for s in syms.iter() {
                assert_eq!(syms.lookup(s.addr), Some((s.name, 0)));
            }
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A deterministic sweep: every single byte of the sample set to a few
/// interesting values.
#[test]
fn every_byte_mutated() {
    let base = sample();
    for i in 0..base.len() {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff, base[i] ^ 0x40] {
            let mut b = base.clone();
            b[i] = v;
            exercise(&b);
        }
    }
}

#[test]
fn every_truncation() {
    let base = sample();
    for len in 0..=base.len() {
        exercise(&base[..len]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_bundles_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        wide in prop::collection::vec((any::<prop::sample::Index>(), any::<u64>()), 0..4),
        truncate in any::<Option<prop::sample::Index>>(),
    ) {
        let mut b = sample();
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        // Wide edits hit length and offset fields with big values.
        for (at, v) in wide {
            let i = at.index(b.len() - 8);
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        if let Some(at) = truncate {
            let len = at.index(b.len() + 1);
            b.truncate(len);
        }
        exercise(&b);
    }

    #[test]
    fn random_bytes_after_a_valid_magic_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&tail);
        exercise(&b);
    }

    #[test]
    fn round_trip_any_valid_fields(
        name in "[A-Za-z0-9._-]{1,31}",
        img in prop::collection::vec(any::<u8>(), 1..256),
        cmdline in "\\PC{0,40}",
        pages in 1u32..=(MAX_MEM_KIB / 4),
        weight in MIN_WEIGHT..=MAX_WEIGHT,
        warp_us in any::<u32>(),
        privileged in any::<bool>(),
        crash in any::<bool>(),
    ) {
        let expect = if crash { Expect::Crash } else { Expect::Poweroff };
        let mut w = BundleWriter::new();
        w.domain(
            DomainEntry::new(&name, img.clone(), pages * 4)
                .cmdline(&cmdline)
                .weight(weight)
                .warp_us(warp_us)
                .privileged(privileged)
                .expect(expect),
        );
        let bytes = w.finish_checked().unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        let d = bundle.domain(0).unwrap();
        prop_assert_eq!(d.name, name.as_str());
        prop_assert_eq!(d.image, &img[..]);
        prop_assert_eq!(d.cmdline, cmdline.as_str());
        prop_assert_eq!(d.mem_kib, pages * 4);
        prop_assert_eq!(d.weight, weight);
        prop_assert_eq!(d.warp_us, warp_us);
        prop_assert_eq!(d.privileged, privileged);
        prop_assert_eq!(d.expect, expect);
    }
}

#[test]
fn record_dma_pool_rules() {
    // Default: no pool.
    let mut w = BundleWriter::new();
    w.domain(good());
    let b = w.finish();
    assert_eq!(Bundle::parse(&b).unwrap().domain(0).unwrap().dma_kib, 0);
    // A good pool on dom0 round-trips.
    let mut w = BundleWriter::new();
    w.domain(good().privileged(true).dma_kib(64));
    let b = w.finish_checked().unwrap();
    assert_eq!(Bundle::parse(&b).unwrap().domain(0).unwrap().dma_kib, 64);
    // Bad sizes, and a pool for a domU, are clear record errors.
    for dma_kib in [1, 6, 1022] {
        let e = record_err(good().privileged(true).dma_kib(dma_kib));
        assert_eq!(e.kind, RecordErrorKind::DmaNotPageMultiple { dma_kib });
    }
    for (dma_kib, mem_kib) in [(MAX_DMA_KIB + 4, 65536), (1024, 1024), (2048, 1024)] {
        let mut d = good().privileged(true).dma_kib(dma_kib);
        d.mem_kib = mem_kib;
        assert_eq!(record_err(d).kind, RecordErrorKind::DmaTooLarge { dma_kib, mem_kib });
    }
    let e = record_err(good().dma_kib(64));
    assert_eq!(e.kind, RecordErrorKind::DmaUnprivileged { dma_kib: 64 });
    assert!(e.to_string().contains("not privileged"), "{e}");
}

// ------------------------------------------------- one privileged domain

#[test]
fn a_second_privileged_record_rejects_the_whole_bundle() {
    // One privileged record, wherever it is, or none: fine.
    for at in [None, Some(0), Some(2)] {
        let mut w = BundleWriter::new();
        for i in 0..3 {
            w.domain(DomainEntry::new(format!("d{i}"), image(i as u8, 8), 64).privileged(Some(i) == at));
        }
        assert!(w.finish_checked().is_ok(), "privileged at {at:?}");
    }
    // Two (or more): the header check refuses the bundle and names the
    // first two by index and name.
    let mut w = BundleWriter::new();
    w.domain(DomainEntry::new("domu", image(1, 8), 64))
        .domain(DomainEntry::new("dom0", image(2, 8), 64).privileged(true))
        .domain(DomainEntry::new("rogue", image(3, 8), 64).privileged(true))
        .domain(DomainEntry::new("third", image(4, 8), 64).privileged(true));
    let e = header_err(&w.finish());
    let BundleError::SeveralPrivileged { first: 1, first_name: Some(a), second: 2, second_name: Some(b) } = e else {
        panic!("{e:?}");
    };
    assert_eq!((a.as_str(), b.as_str()), ("dom0", "rogue"));
    assert_eq!(
        e.to_string(),
        "boot bundle has more than one privileged domain: domain record 1 (\"dom0\") and domain record 2 \
         (\"rogue\") are both privileged; there is exactly one dom0"
    );
    assert_eq!(w.finish_checked(), Err(PackError::Bundle(e)), "the writer's check is the reader's");
    // A privileged record that is otherwise invalid still claims the
    // privilege (and its unreadable name is left out).
    let mut w = BundleWriter::new();
    w.domain(DomainEntry::new("dom0", image(2, 8), 64).privileged(true))
        .domain(DomainEntry::new("bad name!", image(3, 8), 0).privileged(true));
    let e = header_err(&w.finish());
    assert!(matches!(e, BundleError::SeveralPrivileged { first: 0, second: 1, second_name: None, .. }), "{e:?}");
    assert!(e.to_string().contains("domain record 0 (\"dom0\") and domain record 1 are both privileged"), "{e}");
}

#[test]
fn templates_round_trip_and_are_never_privileged() {
    let mut w = BundleWriter::new();
    w.domain(good().template(true));
    let b = w.finish_checked().unwrap();
    let d = Bundle::parse(&b).unwrap().domain(0).unwrap();
    assert!(d.template && !d.privileged);
    let mut w = BundleWriter::new();
    w.domain(good());
    assert!(!Bundle::parse(&w.finish_checked().unwrap()).unwrap().domain(0).unwrap().template);
    let e = record_err(good().template(true).privileged(true));
    assert_eq!(e.kind, RecordErrorKind::PrivilegedTemplate);
    assert!(e.to_string().contains("template cannot be privileged"), "{e}");
}
