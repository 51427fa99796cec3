//! Host tests, named after the rules they check (the crate docs' invariants
//! and open's check order).

extern crate std;

use alloc::vec;
use alloc::vec::Vec;
use std::format;

use proptest::prelude::*;

use crate::header::Header;
use crate::*;

const S: usize = SECTOR_BYTES;

/// A RAM device that logs every device operation.
#[derive(Clone)]
struct MemDisk {
    bytes: Vec<u8>,
    log: Vec<Op>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read(u64, u64),
    Write(u64, u64),
    Flush,
}

impl MemDisk {
    fn new(sectors: u64) -> Self {
        Self { bytes: vec![0; sectors as usize * S], log: Vec::new() }
    }

    fn fill(&mut self, r: Region, byte: u8) {
        self.bytes[r.lba as usize * S..(r.lba + r.sectors) as usize * S].fill(byte);
    }

    fn sector(&self, lba: u64) -> &[u8] {
        &self.bytes[lba as usize * S..(lba as usize + 1) * S]
    }

    fn writes(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.log.iter().filter_map(|op| match *op {
            Op::Write(l, n) => Some((l, n)),
            _ => None,
        })
    }
}

fn span(lba: u64, len: usize, total: usize) -> Result<core::ops::Range<usize>, IoError> {
    if !len.is_multiple_of(S) {
        return Err(IoError::BadLength);
    }
    let start = usize::try_from(lba).map_err(|_| IoError::OutOfRange)?.checked_mul(S).ok_or(IoError::OutOfRange)?;
    let end = start.checked_add(len).ok_or(IoError::OutOfRange)?;
    if end > total {
        return Err(IoError::OutOfRange);
    }
    Ok(start..end)
}

impl Device for MemDisk {
    fn sectors(&self) -> u64 {
        (self.bytes.len() / S) as u64
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let r = span(lba, buf.len(), self.bytes.len())?;
        self.log.push(Op::Read(lba, (buf.len() / S) as u64));
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        let r = span(lba, buf.len(), self.bytes.len())?;
        self.log.push(Op::Write(lba, (buf.len() / S) as u64));
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.log.push(Op::Flush);
        Ok(())
    }
}

/// The content of virtual sector `v` as written by write number `tag`
/// (tag 0: zeros). Keyed by both, so a sector from another block or another
/// write is told apart.
fn pattern(tag: u64, v: u64) -> [u8; S] {
    let mut b = [0u8; S];
    if tag == 0 {
        return b;
    }
    for (i, w) in b.chunks_exact_mut(8).enumerate() {
        let x =
            (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ v.wrapping_mul(0xBF58_476D_1CE4_E5B9)).wrapping_add(i as u64);
        w.copy_from_slice(&x.to_le_bytes());
    }
    b[0..8].copy_from_slice(&tag.to_le_bytes());
    b[8..16].copy_from_slice(&v.to_le_bytes());
    b
}

fn pattern_run(tag: u64, vlba: u64, n: u64) -> Vec<u8> {
    (vlba..vlba + n).flat_map(|v| pattern(tag, v)).collect()
}

fn read_all(img: &Image, dev: &mut impl Device) -> Vec<u8> {
    let mut buf = vec![0u8; img.virtual_sectors() as usize * S];
    img.read_blocking(dev, 0, &mut buf).unwrap();
    buf
}

/// Every extent of a read of the whole disk lies in the image's region or
/// in a base's (invariant 6, checked from outside).
fn assert_extents_inside(img: &Image) {
    let mut regions = vec![img.region()];
    regions.extend(img.base_regions());
    let mut v = 0;
    while v < img.virtual_sectors() {
        let n = MAX_REQUEST_SECTORS.min(img.virtual_sectors() - v);
        let plan = img.plan_read(v, n).unwrap();
        assert_eq!(plan.iter().map(Extent::nsect).sum::<u64>(), n);
        for e in plan {
            if let Extent::Phys(p) = e {
                assert!(regions.iter().any(|r| r.contains(&p)), "{p:?} outside {regions:?}");
            }
        }
        v += n;
    }
}

// ---- Raw slices ----

#[test]
fn raw_slice_virtual_sector_is_physical_plus_offset() {
    let raw = RawSlice::new(1000, Region::new(100, 50)).unwrap();
    assert_eq!(raw.plan_read(0, 8).unwrap(), [Extent::Phys(PhysExtent { lba: 100, nsect: 8 })]);
    assert_eq!(raw.plan_read(42, 8).unwrap(), [Extent::Phys(PhysExtent { lba: 142, nsect: 8 })]);
    let plan = raw.plan_write(49, 1).unwrap();
    assert_eq!(plan.data(), [PhysExtent { lba: 149, nsect: 1 }]);
    assert!(plan.prep().is_empty());
    let mut disk = VirtualDisk::Raw(raw);
    disk.commit_write(plan).unwrap();
}

#[test]
fn raw_slice_map_is_plan_read_without_the_list() {
    let raw = RawSlice::new(1000, Region::new(100, 50)).unwrap();
    for (vlba, n) in [(0, 1), (0, 8), (42, 8), (49, 1), (0, 50)] {
        assert_eq!(raw.plan_read(vlba, n).unwrap(), [Extent::Phys(raw.map(vlba, n).unwrap())]);
    }
    assert_eq!(raw.map(43, 8), Err(Error::OutOfRange { vlba: 43, nsect: 8 }));
    assert_eq!(raw.map(50, 1), Err(Error::OutOfRange { vlba: 50, nsect: 1 }));
    assert_eq!(raw.map(u64::MAX, 2), Err(Error::OutOfRange { vlba: u64::MAX, nsect: 2 }));
    let long = MAX_REQUEST_SECTORS + 1;
    assert_eq!(raw.map(0, long), Err(Error::TooLong { nsect: long }));
}

#[test]
fn raw_slice_out_of_range_is_an_error() {
    let raw = RawSlice::new(1000, Region::new(100, 50)).unwrap();
    assert_eq!(raw.plan_read(43, 8), Err(Error::OutOfRange { vlba: 43, nsect: 8 }));
    assert_eq!(raw.plan_read(50, 1), Err(Error::OutOfRange { vlba: 50, nsect: 1 }));
    assert_eq!(raw.plan_write(u64::MAX, 2).unwrap_err(), Error::OutOfRange { vlba: u64::MAX, nsect: 2 });
    let long = MAX_REQUEST_SECTORS + 1;
    assert_eq!(raw.plan_read(0, long), Err(Error::TooLong { nsect: long }));
    assert_eq!(RawSlice::new(1000, Region::new(990, 11)), Err(Error::RegionOutsideDevice));
    assert_eq!(RawSlice::new(1000, Region::new(u64::MAX, 2)), Err(Error::RegionOutsideDevice));
    assert_eq!(RawSlice::new(1000, Region::new(0, 0)), Err(Error::RegionOutsideDevice));
}

// ---- Sparse images ----

const IMG: Region = Region::new(64, 8 + 16 * 8);

fn sparse(virtual_sectors: u64) -> (MemDisk, Image) {
    let mut dev = MemDisk::new(512);
    dev.fill(Region::new(0, 512), 0xAA); // garbage a fresh block must never show
    format_sparse(&mut dev, IMG, virtual_sectors).unwrap();
    let img = open(&mut dev, IMG).unwrap();
    (dev, img)
}

#[test]
fn sparse_reads_zeros_until_written() {
    let (mut dev, mut img) = sparse(100);
    assert_eq!(img.plan_read(0, 88).unwrap(), [Extent::Zero { nsect: 88 }]);
    assert!(read_all(&img, &mut dev).iter().all(|&b| b == 0));
    img.write_blocking(&mut dev, 16, &pattern_run(7, 16, 8)).unwrap();
    let plan = img.plan_read(8, 24).unwrap();
    assert_eq!(plan[0], Extent::Zero { nsect: 8 });
    assert!(matches!(plan[1], Extent::Phys(PhysExtent { nsect: 8, .. })));
    assert_eq!(plan[2], Extent::Zero { nsect: 8 });
}

#[test]
fn sparse_partial_first_write_keeps_rest_of_block_zero() {
    let (mut dev, mut img) = sparse(100);
    let plan = img.plan_write(19, 2).unwrap();
    // Block 2 is new: sectors 16..19 and 21..24 are zero-filled first.
    assert_eq!(plan.prep().len(), 2);
    assert!(plan.prep().iter().all(|p| matches!(p, Prep::Zero(_))));
    img.prepare(&mut dev, &plan).unwrap();
    let d = plan.data()[0];
    dev.write(d.lba, &pattern_run(3, 19, 2)).unwrap();
    img.commit_write(plan).unwrap();
    let mut buf = vec![0u8; 8 * S];
    img.read_blocking(&mut dev, 16, &mut buf).unwrap();
    assert!(buf[..3 * S].iter().all(|&b| b == 0));
    assert_eq!(&buf[3 * S..5 * S], &pattern_run(3, 19, 2)[..]);
    assert!(buf[5 * S..].iter().all(|&b| b == 0));
}

#[test]
fn sparse_last_partial_block_is_whole_on_disk() {
    let (mut dev, mut img) = sparse(93); // block 11 has 5 virtual sectors
    img.write_blocking(&mut dev, 92, &pattern(5, 92)).unwrap();
    assert_eq!(img.plan_write(93, 1).unwrap_err(), Error::OutOfRange { vlba: 93, nsect: 1 });
    let mut buf = vec![0u8; 5 * S];
    img.read_blocking(&mut dev, 88, &mut buf).unwrap();
    assert!(buf[..4 * S].iter().all(|&b| b == 0));
    assert_eq!(&buf[4 * S..], &pattern(5, 92)[..]);
}

#[test]
fn committed_write_reads_back_before_flush_and_after_reopen_only_if_flushed() {
    let (mut dev, mut img) = sparse(128);
    dev.log.clear();
    img.write_blocking(&mut dev, 0, &pattern_run(1, 0, 16)).unwrap();
    assert!(img.is_dirty());
    assert!(!dev.log.iter().any(|op| matches!(op, Op::Write(l, _) if *l == IMG.lba + 1)), "map written before flush");
    assert_eq!(&read_all(&img, &mut dev)[..16 * S], &pattern_run(1, 0, 16)[..]);
    // Not flushed: a reopen (the disk as a crash would leave it, had the
    // cache been kept) sees nothing mapped.
    let again = open(&mut dev, IMG).unwrap();
    assert!(read_all(&again, &mut dev).iter().all(|&b| b == 0));
    img.flush(&mut dev).unwrap();
    let again = open(&mut dev, IMG).unwrap();
    assert_eq!(&read_all(&again, &mut dev)[..16 * S], &pattern_run(1, 0, 16)[..]);
}

#[test]
fn pending_allocation_is_invisible_busy_and_abort_frees_it() {
    let (mut dev, mut img) = sparse(128);
    let plan = img.plan_write(8, 4).unwrap();
    assert_eq!(img.allocated_blocks(), 1);
    assert_eq!(img.plan_read(8, 8).unwrap(), [Extent::Zero { nsect: 8 }]);
    assert_eq!(img.plan_write(12, 4).unwrap_err(), Error::Busy { vblock: 1 });
    assert_eq!(img.plan_write(0, 20).unwrap_err(), Error::Busy { vblock: 1 });
    assert_eq!(img.discard(8, 8), Err(Error::Busy { vblock: 1 }));
    img.flush(&mut dev).unwrap();
    assert!(open(&mut dev, IMG).unwrap().allocated_blocks() == 0, "flush published a pending block");
    img.abort_write(plan).unwrap();
    assert_eq!(img.allocated_blocks(), 0);
    let plan = img.plan_write(12, 4).unwrap();
    img.prepare(&mut dev, &plan).unwrap();
    img.commit_write(plan).unwrap();
    assert!(matches!(img.plan_read(8, 8).unwrap()[..], [Extent::Phys(_)]));
}

#[test]
fn a_plan_commits_only_to_the_image_that_made_it_and_only_once() {
    let (mut dev, mut img) = sparse(128);
    const OTHER: Region = Region::new(300, 8 + 16 * 8);
    format_sparse(&mut dev, OTHER, 128).unwrap();
    let mut other = open(&mut dev, OTHER).unwrap();
    let plan = other.plan_write(0, 8).unwrap();
    assert_eq!(img.commit_write(plan), Err(Error::ForeignPlan));
    // The plan is consumed; `other` still has it pending.
    assert_eq!(other.plan_write(0, 8).unwrap_err(), Error::Busy { vblock: 0 });
}

#[test]
fn full_data_area_is_no_space_and_reserves_nothing() {
    let mut dev = MemDisk::new(512);
    let r = Region::new(0, 8 + 2 * 8); // two data blocks
    format_sparse(&mut dev, r, 64).unwrap();
    let mut img = open(&mut dev, r).unwrap();
    assert_eq!(img.data_blocks(), 2);
    img.write_blocking(&mut dev, 0, &pattern_run(1, 0, 8)).unwrap();
    assert_eq!(img.plan_write(8, 16).unwrap_err(), Error::NoSpace);
    assert_eq!(img.allocated_blocks(), 1);
    img.write_blocking(&mut dev, 8, &pattern_run(1, 8, 8)).unwrap();
    img.write_blocking(&mut dev, 0, &pattern_run(2, 0, 16)).unwrap(); // in place
}

#[test]
fn flush_is_data_flush_then_map_then_flush() {
    let (mut dev, mut img) = sparse(128);
    img.write_blocking(&mut dev, 40, &pattern_run(1, 40, 3)).unwrap();
    img.discard(0, 8).unwrap();
    dev.log.clear();
    img.flush(&mut dev).unwrap();
    assert_eq!(dev.log, [Op::Flush, Op::Write(IMG.lba + 1, 1), Op::Flush]);
    dev.log.clear();
    img.flush(&mut dev).unwrap();
    assert_eq!(dev.log, [Op::Flush], "nothing dirty: one device flush");
}

#[test]
fn failed_flush_keeps_the_map_dirty_and_the_next_flush_publishes_it() {
    struct Flaky(MemDisk, u32);
    impl Device for Flaky {
        fn sectors(&self) -> u64 {
            self.0.sectors()
        }
        fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
            self.0.read(lba, buf)
        }
        fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
            self.0.write(lba, buf)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            self.1 += 1;
            if self.1 == 2 {
                Err(IoError::Failed)
            } else {
                self.0.flush()
            }
        }
    }
    let (dev, mut img) = sparse(128);
    let mut dev = Flaky(dev, 0);
    img.write_blocking(&mut dev, 0, &pattern_run(1, 0, 8)).unwrap();
    assert_eq!(img.flush(&mut dev), Err(Error::Io(IoError::Failed)));
    assert!(img.is_dirty());
    img.flush(&mut dev).unwrap();
    assert!(!img.is_dirty());
    assert_eq!(&read_all(&open(&mut dev, IMG).unwrap(), &mut dev)[..8 * S], &pattern_run(1, 0, 8)[..]);
}

#[test]
fn discard_whole_blocks_read_zero_and_partial_blocks_are_unchanged() {
    let (mut dev, mut img) = sparse(128);
    img.write_blocking(&mut dev, 0, &pattern_run(1, 0, 32)).unwrap();
    img.discard(4, 16).unwrap(); // block 1 whole, blocks 0 and 2 partial
    let all = read_all(&img, &mut dev);
    assert_eq!(&all[..8 * S], &pattern_run(1, 0, 8)[..]);
    assert!(all[8 * S..16 * S].iter().all(|&b| b == 0));
    assert_eq!(&all[16 * S..32 * S], &pattern_run(1, 16, 16)[..]);
    // Rewriting part of the discarded block keeps its block, zero-fills the rest.
    let before = img.allocated_blocks();
    let plan = img.plan_write(9, 1).unwrap();
    assert_eq!(plan.prep().len(), 2);
    img.abort_write(plan).unwrap();
    img.write_blocking(&mut dev, 9, &pattern(2, 9)).unwrap();
    assert_eq!(img.allocated_blocks(), before);
    let all = read_all(&img, &mut dev);
    assert!(all[8 * S..9 * S].iter().all(|&b| b == 0));
    assert_eq!(&all[9 * S..10 * S], &pattern(2, 9)[..]);
    assert!(all[10 * S..16 * S].iter().all(|&b| b == 0));
    assert_eq!(img.discard(0, MAX_DISCARD_SECTORS + 1), Err(Error::TooLong { nsect: MAX_DISCARD_SECTORS + 1 }));
}

#[test]
fn blocks_no_durable_entry_names_are_free_after_reopen() {
    let mut dev = MemDisk::new(512);
    let r = Region::new(0, 8 + 4 * 8); // exactly one data block per virtual block
    format_sparse(&mut dev, r, 32).unwrap();
    let mut img = open(&mut dev, r).unwrap();
    img.write_blocking(&mut dev, 0, &pattern_run(1, 0, 32)).unwrap();
    assert_eq!(img.allocated_blocks(), 4);
    // A crash before the flush: the map on disk names nothing.
    let mut img = open(&mut dev, r).unwrap();
    assert_eq!(img.allocated_blocks(), 0);
    img.write_blocking(&mut dev, 8, &pattern_run(2, 8, 24)).unwrap();
    img.flush(&mut dev).unwrap();
    let mut img = open(&mut dev, r).unwrap();
    assert_eq!(img.allocated_blocks(), 3);
    img.write_blocking(&mut dev, 0, &pattern(3, 0)).unwrap();
    assert_eq!(img.plan_read(0, 1).unwrap().len(), 1);
}

#[test]
fn virtual_disk_serves_every_kind_through_one_interface() {
    let (mut dev, img) = sparse(128);
    let mut disks = [
        VirtualDisk::Image(alloc::boxed::Box::new(img)),
        VirtualDisk::Raw(RawSlice::new(512, Region::new(300, 128)).unwrap()),
    ];
    for disk in &mut disks {
        assert_eq!(disk.virtual_sectors(), 128);
        let plan = disk.plan_write(5, 6).unwrap();
        disk.prepare(&mut dev, &plan).unwrap();
        let mut at = 0;
        for e in plan.data() {
            dev.write(e.lba, &pattern_run(9, 5 + at, e.nsect)).unwrap();
            at += e.nsect;
        }
        disk.commit_write(plan).unwrap();
        disk.discard(64, 64).unwrap();
        disk.flush(&mut dev).unwrap();
        let mut got = Vec::new();
        for e in disk.plan_read(5, 6).unwrap() {
            match e {
                Extent::Phys(p) => (0..p.nsect).for_each(|i| got.extend_from_slice(dev.sector(p.lba + i))),
                Extent::Zero { nsect } => got.extend(vec![0; nsect as usize * S]),
            }
        }
        assert_eq!(got, pattern_run(9, 5, 6));
        assert_eq!(disk.discard(100, 29), Err(Error::OutOfRange { vlba: 100, nsect: 29 }));
    }
}

// ---- Overlays ----

const BASE: Region = Region::new(0, 64);
const OVL_A: Region = Region::new(64, 8 + 8 * 8);
const OVL_B: Region = Region::new(200, 8 + 8 * 8);

fn with_base() -> MemDisk {
    let mut dev = MemDisk::new(512);
    dev.bytes[..64 * S].copy_from_slice(&pattern_run(1, 0, 64));
    dev
}

#[test]
fn overlay_reads_fall_through_to_the_base() {
    let mut dev = with_base();
    format_overlay(&mut dev, OVL_A, BaseRef::Raw(BASE), 64).unwrap();
    let img = open(&mut dev, OVL_A).unwrap();
    assert_eq!(img.kind(), Kind::Overlay);
    assert_eq!(img.plan_read(3, 20).unwrap(), [Extent::Phys(PhysExtent { lba: 3, nsect: 20 })]);
    assert_eq!(read_all(&img, &mut dev), pattern_run(1, 0, 64));
}

#[test]
fn overlay_larger_than_its_base_reads_zeros_past_the_base() {
    let mut dev = with_base();
    format_overlay(&mut dev, OVL_A, BaseRef::Raw(Region::new(0, 60)), 64).unwrap();
    let mut img = open(&mut dev, OVL_A).unwrap();
    assert_eq!(
        img.plan_read(56, 8).unwrap(),
        [Extent::Phys(PhysExtent { lba: 56, nsect: 4 }), Extent::Zero { nsect: 4 }]
    );
    let plan = img.plan_write(56, 1).unwrap();
    assert_eq!(plan.prep().len(), 2, "copy-up of 57..60, zeros for 60..64: {:?}", plan.prep());
    img.abort_write(plan).unwrap();
}

#[test]
fn overlay_copy_up_preserves_the_base_s_other_sectors() {
    let mut dev = with_base();
    format_overlay(&mut dev, OVL_A, BaseRef::Raw(BASE), 64).unwrap();
    let mut img = open(&mut dev, OVL_A).unwrap();
    let plan = img.plan_write(10, 3).unwrap();
    assert!(plan.prep().iter().all(|p| matches!(p, Prep::Copy { .. })));
    img.prepare(&mut dev, &plan).unwrap();
    dev.write(plan.data()[0].lba, &pattern_run(2, 10, 3)).unwrap();
    img.commit_write(plan).unwrap();
    img.flush(&mut dev).unwrap();
    let img = open(&mut dev, OVL_A).unwrap();
    let mut want = pattern_run(1, 0, 64);
    want[10 * S..13 * S].copy_from_slice(&pattern_run(2, 10, 3));
    assert_eq!(read_all(&img, &mut dev), want);
}

#[test]
fn overlay_never_writes_its_base() {
    let mut dev = with_base();
    format_overlay(&mut dev, OVL_A, BaseRef::Raw(BASE), 64).unwrap();
    let mut img = open(&mut dev, OVL_A).unwrap();
    for (i, v) in [0u64, 5, 13, 30, 63, 1].into_iter().enumerate() {
        let n = 9.min(64 - v);
        img.write_blocking(&mut dev, v, &pattern_run(10 + i as u64, v, n)).unwrap();
        img.discard(v, 16.min(64 - v)).unwrap();
        img.flush(&mut dev).unwrap();
    }
    assert!(dev.writes().all(|(l, n)| !BASE.overlaps(&Region::new(l, n))));
    assert_eq!(&dev.bytes[..64 * S], &pattern_run(1, 0, 64)[..]);
    // A base opened on its own is read-only.
    format_sparse(&mut dev, OVL_B, 64).unwrap();
    let mut ro = open_read_only(&mut dev, OVL_B).unwrap();
    assert_eq!(ro.plan_write(0, 1).unwrap_err(), Error::ReadOnly);
    assert_eq!(ro.discard(0, 8), Err(Error::ReadOnly));
}

#[test]
fn overlay_discard_reads_zeros_not_the_base() {
    let mut dev = with_base();
    format_overlay(&mut dev, OVL_A, BaseRef::Raw(BASE), 64).unwrap();
    let mut img = open(&mut dev, OVL_A).unwrap();
    img.discard(8, 8).unwrap();
    assert_eq!(img.plan_read(8, 8).unwrap(), [Extent::Zero { nsect: 8 }]);
    let plan = img.plan_write(9, 1).unwrap();
    assert!(plan.prep().iter().all(|p| matches!(p, Prep::Zero(_))), "zero-fill, not copy-up");
    img.abort_write(plan).unwrap();
}

#[test]
fn two_overlays_sharing_a_base_are_independent() {
    let mut dev = with_base();
    format_overlay(&mut dev, OVL_A, BaseRef::Raw(BASE), 64).unwrap();
    format_overlay(&mut dev, OVL_B, BaseRef::Raw(BASE), 64).unwrap();
    let mut a = open(&mut dev, OVL_A).unwrap();
    let mut b = open(&mut dev, OVL_B).unwrap();
    a.write_blocking(&mut dev, 4, &pattern_run(2, 4, 8)).unwrap();
    b.write_blocking(&mut dev, 8, &pattern_run(3, 8, 8)).unwrap();
    a.flush(&mut dev).unwrap();
    b.flush(&mut dev).unwrap();
    let mut want_a = pattern_run(1, 0, 64);
    want_a[4 * S..12 * S].copy_from_slice(&pattern_run(2, 4, 8));
    let mut want_b = pattern_run(1, 0, 64);
    want_b[8 * S..16 * S].copy_from_slice(&pattern_run(3, 8, 8));
    assert_eq!(read_all(&open(&mut dev, OVL_A).unwrap(), &mut dev), want_a);
    assert_eq!(read_all(&open(&mut dev, OVL_B).unwrap(), &mut dev), want_b);
    assert_eq!(&dev.bytes[..64 * S], &pattern_run(1, 0, 64)[..]);
}

#[test]
fn overlay_on_an_image_base_reads_through_the_chain() {
    let mut dev = MemDisk::new(512);
    let base = Region::new(0, 8 + 8 * 8);
    format_sparse(&mut dev, base, 64).unwrap();
    let mut b = open(&mut dev, base).unwrap();
    b.write_blocking(&mut dev, 8, &pattern_run(1, 8, 16)).unwrap();
    b.flush(&mut dev).unwrap();
    format_overlay(&mut dev, Region::new(100, 72), BaseRef::Image(base), 64).unwrap();
    let mut top = open(&mut dev, Region::new(100, 72)).unwrap();
    top.write_blocking(&mut dev, 20, &pattern(2, 20)).unwrap();
    let mut want = vec![0u8; 64 * S];
    want[8 * S..24 * S].copy_from_slice(&pattern_run(1, 8, 16));
    want[20 * S..21 * S].copy_from_slice(&pattern(2, 20));
    assert_eq!(read_all(&top, &mut dev), want);
    assert_eq!(top.base_regions(), [base]);
    assert_extents_inside(&top);
    let mut buf = vec![0u8; 64 * S];
    read_virtual(&mut dev, base, 0, &mut buf).unwrap();
    assert_eq!(&buf[8 * S..24 * S], &pattern_run(1, 8, 16)[..]);
}

// ---- Open's validation of hostile input ----

fn header_sector(dev: &MemDisk, r: Region) -> [u8; S] {
    let mut b = [0u8; S];
    b.copy_from_slice(dev.sector(r.lba));
    b
}

/// Stores `h` (fields patched by `patch`) with a correct checksum.
fn put_header(dev: &mut MemDisk, r: Region, mut b: [u8; S], patch: impl FnOnce(&mut [u8; S])) {
    patch(&mut b);
    let sum = header::fnv1a64(&b[..504]);
    b[504..].copy_from_slice(&sum.to_le_bytes());
    dev.write(r.lba, &b).unwrap();
}

#[test]
fn open_checks_the_header_in_order() {
    let (mut dev, _) = sparse(100);
    let good = header_sector(&dev, IMG);
    type Patch = fn(&mut [u8; S]);
    let cases: [(Patch, Error); 10] = [
        (|b| b[0] ^= 1, Error::BadMagic),
        (|b| b[8] = 2, Error::UnsupportedVersion(2)),
        (|b| b[12] = 7, Error::BadKind(7)),
        (|b| b[32] = 16, Error::BadBlockSize(16)),
        (|b| b[200] = 1, Error::NonZeroReserved),
        (|b| b[24] ^= 1, Error::RegionMismatch { header: IMG.sectors ^ 1, given: IMG.sectors }),
        (|b| b[16..24].fill(0), Error::BadVirtualSize(0)),
        (|b| b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes()), Error::BadVirtualSize(1 << 40)),
        (|b| b[64] ^= 1, Error::BadLayout("data_blocks")),
        (|b| b[72] = 1, Error::BadBase),
    ];
    for (patch, want) in cases {
        put_header(&mut dev, IMG, good, patch);
        assert_eq!(open(&mut dev, IMG).unwrap_err(), want);
    }
    let mut bad = good;
    bad[100] = 1;
    dev.write(IMG.lba, &bad).unwrap();
    assert_eq!(open(&mut dev, IMG).unwrap_err(), Error::BadChecksum);
    put_header(&mut dev, IMG, good, |_| {});
    open(&mut dev, IMG).unwrap();
    assert_eq!(
        open(&mut dev, Region::new(IMG.lba, IMG.sectors + 1)).unwrap_err(),
        Error::RegionMismatch { header: IMG.sectors, given: IMG.sectors + 1 }
    );
    assert_eq!(open(&mut dev, Region::new(500, 13)).unwrap_err(), Error::RegionOutsideDevice);
    // A virtual size whose map does not fit the region.
    put_header(&mut dev, IMG, good, |b| b[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes()));
    assert_eq!(open(&mut dev, IMG).unwrap_err(), Error::RegionTooSmall);
}

#[test]
fn open_checks_every_map_entry() {
    let (mut dev, _) = sparse(100); // 13 virtual blocks, 16 data blocks
    let map = IMG.lba + 1;
    let set = |dev: &mut MemDisk, i: usize, e: u32| {
        let at = map as usize * S + 4 * i;
        dev.bytes[at..at + 4].copy_from_slice(&e.to_le_bytes());
    };
    set(&mut dev, 0, 17);
    assert_eq!(open(&mut dev, IMG).unwrap_err(), Error::BadMapEntry { vblock: 0, entry: 17 });
    set(&mut dev, 0, 16 | (1 << 31));
    set(&mut dev, 5, 16);
    assert_eq!(open(&mut dev, IMG).unwrap_err(), Error::DuplicateBlock { vblock: 5, index: 16 });
    set(&mut dev, 5, 0);
    set(&mut dev, 13, 1);
    assert_eq!(open(&mut dev, IMG).unwrap_err(), Error::BadMapPadding { position: 13 });
    set(&mut dev, 13, 0);
    let img = open(&mut dev, IMG).unwrap();
    assert_eq!(img.allocated_blocks(), 1);
    assert_eq!(img.plan_read(0, 8).unwrap(), [Extent::Zero { nsect: 8 }]);
}

#[test]
fn open_rejects_a_base_that_is_off_the_device_overlapping_or_a_cycle() {
    let mut dev = with_base();
    format_overlay(&mut dev, OVL_A, BaseRef::Raw(BASE), 64).unwrap();
    let good = header_sector(&dev, OVL_A);
    let base_at = |lba: u64, n: u64| {
        move |b: &mut [u8; S]| {
            b[80..88].copy_from_slice(&lba.to_le_bytes());
            b[88..96].copy_from_slice(&n.to_le_bytes());
        }
    };
    put_header(&mut dev, OVL_A, good, base_at(500, 13));
    assert_eq!(open(&mut dev, OVL_A).unwrap_err(), Error::BaseOutsideDevice);
    put_header(&mut dev, OVL_A, good, base_at(100, 8));
    assert_eq!(open(&mut dev, OVL_A).unwrap_err(), Error::BaseOverlaps);
    put_header(&mut dev, OVL_A, good, base_at(0, 0));
    assert_eq!(open(&mut dev, OVL_A).unwrap_err(), Error::BadBase);
    // A and B, each the other's image base: the cycle overlaps the top.
    format_overlay(&mut dev, OVL_B, BaseRef::Raw(BASE), 64).unwrap();
    let gb = header_sector(&dev, OVL_B);
    let image_base = |r: Region| {
        move |b: &mut [u8; S]| {
            b[72] = 2;
            b[80..88].copy_from_slice(&r.lba.to_le_bytes());
            b[88..96].copy_from_slice(&r.sectors.to_le_bytes());
        }
    };
    put_header(&mut dev, OVL_A, good, image_base(OVL_B));
    put_header(&mut dev, OVL_B, gb, image_base(OVL_A));
    assert_eq!(open(&mut dev, OVL_A).unwrap_err(), Error::BaseOverlaps);
    assert_eq!(format_overlay(&mut dev, Region::new(300, 72), BaseRef::Image(OVL_A), 64), Err(Error::BaseOverlaps));
    assert_eq!(
        format_overlay(&mut dev, Region::new(300, 72), BaseRef::Raw(Region::new(310, 4)), 64),
        Err(Error::BaseOverlaps)
    );
}

#[test]
fn open_bounds_the_chain_depth() {
    let mut dev = MemDisk::new(4096);
    let region = |i: u64| Region::new(i * 80, 80);
    format_sparse(&mut dev, region(0), 64).unwrap();
    for i in 1..MAX_CHAIN_DEPTH as u64 {
        format_overlay(&mut dev, region(i), BaseRef::Image(region(i - 1)), 64).unwrap();
    }
    open(&mut dev, region(MAX_CHAIN_DEPTH as u64 - 1)).unwrap();
    let deep = region(MAX_CHAIN_DEPTH as u64);
    assert_eq!(
        format_overlay(&mut dev, deep, BaseRef::Image(region(MAX_CHAIN_DEPTH as u64 - 1)), 64),
        Err(Error::ChainTooDeep)
    );
}

#[test]
fn format_rejects_what_open_would() {
    let mut dev = MemDisk::new(512);
    assert_eq!(format_sparse(&mut dev, Region::new(0, 7), 64), Err(Error::RegionTooSmall));
    assert_eq!(format_sparse(&mut dev, Region::new(0, 64), 0), Err(Error::BadVirtualSize(0)));
    assert_eq!(format_sparse(&mut dev, Region::new(510, 8), 8), Err(Error::RegionOutsideDevice));
    assert_eq!(
        format_overlay(&mut dev, Region::new(0, 64), BaseRef::Image(Region::new(100, 64)), 8),
        Err(Error::BadMagic)
    );
    assert_eq!(Header::layout(Kind::Sparse, 100, 1 << 34, None), Err(Error::BadVirtualSize(1 << 34)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random header bytes: an error, never a panic.
    #[test]
    fn corrupt_header_random_bytes_is_an_error(bytes in proptest::collection::vec(any::<u8>(), S)) {
        let mut dev = MemDisk::new(512);
        dev.bytes[IMG.lba as usize * S..][..S].copy_from_slice(&bytes);
        prop_assert!(open(&mut dev, IMG).is_err());
    }

    /// Random header fields behind a valid magic, version and checksum:
    /// an error or a disk whose every extent stays in its regions.
    #[test]
    fn corrupt_header_fields_are_an_error_or_stay_inside(
        words in proptest::collection::vec((0usize..12, any::<u64>(), 0u32..4), 1..6),
    ) {
        let mut dev = with_base();
        format_overlay(&mut dev, OVL_A, BaseRef::Raw(BASE), 64).unwrap();
        let good = header_sector(&dev, OVL_A);
        put_header(&mut dev, OVL_A, good, |b| {
            for (slot, v, small) in words {
                let at = 12 + slot * 8;
                let v = if small == 0 { v } else { v % 256 };
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        });
        if let Ok(img) = open(&mut dev, OVL_A) {
            assert_extents_inside(&img);
        }
    }

    /// A flipped bit anywhere in a valid header is caught.
    #[test]
    fn corrupt_header_bit_flip_is_an_error(bit in 0usize..S * 8) {
        let (mut dev, _) = sparse(100);
        dev.bytes[IMG.lba as usize * S + bit / 8] ^= 1 << (bit % 8);
        prop_assert!(open(&mut dev, IMG).is_err());
    }

    /// Random map bytes behind a valid header: an error or a disk whose every
    /// extent stays inside, and whose writes work.
    #[test]
    fn corrupt_map_is_an_error_or_stays_inside(entries in proptest::collection::vec(
        prop_oneof![Just(0u32), 0u32..20, any::<u32>(), (0u32..20).prop_map(|i| i | 1 << 31)], 128)) {
        let (mut dev, _) = sparse(100);
        for (i, e) in entries.iter().enumerate() {
            let at = (IMG.lba as usize + 1) * S + 4 * i;
            dev.bytes[at..at + 4].copy_from_slice(&e.to_le_bytes());
        }
        if let Ok(mut img) = open(&mut dev, IMG) {
            assert_extents_inside(&img);
            for v in (0..100).step_by(7) {
                match img.plan_write(v, 1) {
                    Ok(p) => {
                        for d in p.data() { prop_assert!(IMG.contains(d)); }
                        img.abort_write(p).unwrap();
                    }
                    Err(e) => prop_assert_eq!(e, Error::NoSpace),
                }
            }
        }
    }
}

// ---- Crash consistency ----

/// A device with a volatile write cache: writes since the last flush live in
/// the cache, sector by sector; a crash keeps any subset of them, applied in
/// any order. It can also die after a number of operations (every later
/// operation fails until the crash), which puts crashes inside prepare and
/// flush.
struct CrashDisk {
    durable: Vec<u8>,
    current: Vec<u8>,
    cache: Vec<(u64, [u8; S])>,
    budget: Option<u32>,
    writes: Vec<(u64, u64)>,
}

impl CrashDisk {
    fn new(image: Vec<u8>) -> Self {
        Self { durable: image.clone(), current: image, cache: Vec::new(), budget: None, writes: Vec::new() }
    }

    fn tick(&mut self) -> Result<(), IoError> {
        match &mut self.budget {
            Some(0) => Err(IoError::Failed),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn crash(&mut self, seed: u64) {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut kept: Vec<(u64, [u8; S])> = self.cache.drain(..).filter(|_| next() % 2 == 0).collect();
        for i in (1..kept.len()).rev() {
            kept.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        for (lba, s) in kept {
            self.durable[lba as usize * S..][..S].copy_from_slice(&s);
        }
        self.current = self.durable.clone();
        self.budget = None;
    }
}

impl Device for CrashDisk {
    fn sectors(&self) -> u64 {
        (self.durable.len() / S) as u64
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.tick()?;
        let r = span(lba, buf.len(), self.current.len())?;
        buf.copy_from_slice(&self.current[r]);
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.tick()?;
        let r = span(lba, buf.len(), self.current.len())?;
        self.current[r].copy_from_slice(buf);
        self.writes.push((lba, (buf.len() / S) as u64));
        for (i, s) in buf.chunks_exact(S).enumerate() {
            let mut b = [0u8; S];
            b.copy_from_slice(s);
            self.cache.push((lba + i as u64, b));
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.tick()?;
        for (lba, s) in self.cache.drain(..) {
            self.durable[lba as usize * S..][..S].copy_from_slice(&s);
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Step {
    Write {
        vlba: u64,
        nsect: u64,
    },
    Read {
        vlba: u64,
        nsect: u64,
    },
    Discard {
        vlba: u64,
        nsect: u64,
    },
    Flush,
    /// The device dies after this many more operations.
    Die(u32),
    Crash(u64),
}

fn steps(virtual_sectors: u64) -> impl Strategy<Value = Vec<Step>> {
    let v = virtual_sectors;
    let step = prop_oneof![
        6 => (0..v, 1..=24u64).prop_map(move |(vlba, n)| Step::Write { vlba, nsect: n.min(v - vlba) }),
        2 => (0..v, 1..=40u64).prop_map(move |(vlba, n)| Step::Read { vlba, nsect: n.min(v - vlba).min(MAX_REQUEST_SECTORS) }),
        1 => (0..v, 1..=40u64).prop_map(move |(vlba, n)| Step::Discard { vlba, nsect: n.min(v - vlba) }),
        3 => Just(Step::Flush),
        1 => (0..12u32).prop_map(Step::Die),
        1 => any::<u64>().prop_map(Step::Crash),
    ];
    proptest::collection::vec(step, 1..64)
}

/// A disk set-up for the crash model: the device's bytes, the image's
/// region, and each virtual sector's initial tag.
struct Setup {
    device: Vec<u8>,
    region: Region,
    initial: Vec<u64>,
}

/// Sparse image of 92 sectors (its last block partial), exactly as many data
/// blocks as virtual blocks: any leak of a block would show as NoSpace.
fn setup_sparse() -> Setup {
    let mut dev = MemDisk::new(256);
    dev.fill(Region::new(0, 256), 0x5A);
    let region = Region::new(40, 8 + 12 * 8);
    format_sparse(&mut dev, region, 92).unwrap();
    Setup { device: dev.bytes, region, initial: vec![0; 92] }
}

/// Overlay of 96 sectors on a raw base of 90 (tag 1; zeros past it).
fn setup_overlay_raw() -> Setup {
    let mut dev = MemDisk::new(256);
    dev.fill(Region::new(0, 256), 0x5A);
    dev.bytes[..90 * S].copy_from_slice(&pattern_run(1, 0, 90));
    let region = Region::new(100, 8 + 12 * 8);
    format_overlay(&mut dev, region, BaseRef::Raw(Region::new(0, 90)), 96).unwrap();
    Setup { device: dev.bytes, region, initial: (0..96).map(|v| u64::from(v < 90)).collect() }
}

/// Overlay on a sparse image base whose first half is written (tag 1).
fn setup_overlay_image() -> Setup {
    let mut dev = MemDisk::new(256);
    dev.fill(Region::new(0, 256), 0x5A);
    let base = Region::new(0, 8 + 12 * 8);
    format_sparse(&mut dev, base, 96).unwrap();
    let mut b = open(&mut dev, base).unwrap();
    b.write_blocking(&mut dev, 0, &pattern_run(1, 0, 44)).unwrap();
    b.flush(&mut dev).unwrap();
    let region = Region::new(120, 8 + 12 * 8);
    format_overlay(&mut dev, region, BaseRef::Image(base), 96).unwrap();
    Setup { device: dev.bytes, region, initial: (0..96).map(|v| u64::from(v < 44)).collect() }
}

/// The model: per virtual sector, the value at the last completed flush (or
/// reopen), and every value it was given since (acknowledged or not). While
/// the device lives, `now` is exact.
fn run_crash_model(setup: Setup, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let region = setup.region;
    let vsect = setup.initial.len();
    let mut dev = CrashDisk::new(setup.device);
    let mut img = open(&mut dev, region).unwrap();
    let bases = img.base_regions();
    let base_bytes: Vec<Vec<u8>> =
        bases.iter().map(|r| dev.durable[r.lba as usize * S..(r.lba + r.sectors) as usize * S].to_vec()).collect();
    let mut stable = setup.initial.clone();
    let mut now = setup.initial;
    let mut since: Vec<Vec<u64>> = vec![Vec::new(); vsect];
    let mut dead = false;
    let mut tag = 100;
    for step in steps.into_iter().chain([Step::Crash(0x1234_5678)]) {
        match step {
            Step::Write { vlba, nsect } => {
                tag += 1;
                let data = pattern_run(tag, vlba, nsect);
                let plan = match img.plan_write(vlba, nsect) {
                    Ok(p) => p,
                    Err(e) => return Err(TestCaseError::fail(format!("plan_write: {e:?}"))),
                };
                for d in plan.data() {
                    prop_assert!(region.contains(d));
                }
                for p in plan.prep() {
                    match *p {
                        Prep::Zero(z) => prop_assert!(region.contains(&z)),
                        Prep::Copy { from, to, nsect } => {
                            let dst = PhysExtent { lba: to, nsect };
                            prop_assert!(region.contains(&dst));
                            let src = PhysExtent { lba: from, nsect };
                            prop_assert!(bases.iter().any(|b| b.contains(&src)));
                        }
                    }
                }
                let mut result = img.prepare(&mut dev, &plan);
                let mut at = 0;
                for d in plan.data() {
                    if result.is_ok() {
                        result = dev.write(d.lba, &data[at..at + d.nsect as usize * S]).map_err(Error::Io);
                    }
                    at += d.nsect as usize * S;
                }
                for v in vlba..vlba + nsect {
                    since[v as usize].push(tag);
                }
                match result {
                    Ok(()) => {
                        img.commit_write(plan).unwrap();
                        for v in vlba..vlba + nsect {
                            now[v as usize] = tag;
                        }
                    }
                    Err(_) => {
                        img.abort_write(plan).unwrap();
                        prop_assert!(dead, "a write failed on a live device");
                    }
                }
            }
            Step::Read { vlba, nsect } => {
                let mut buf = vec![0u8; nsect as usize * S];
                if img.read_blocking(&mut dev, vlba, &mut buf).is_ok() && !dead {
                    for (i, got) in buf.chunks_exact(S).enumerate() {
                        let v = vlba + i as u64;
                        prop_assert_eq!(got, &pattern(now[v as usize], v)[..], "sector {} in the same run", v);
                    }
                }
            }
            Step::Discard { vlba, nsect } => {
                img.discard(vlba, nsect).unwrap();
                for b in vlba.div_ceil(8)..(vlba + nsect) / 8 {
                    for v in b * 8..(b * 8 + 8).min(vsect as u64) {
                        now[v as usize] = 0;
                        since[v as usize].push(0);
                    }
                }
            }
            Step::Flush => {
                if img.flush(&mut dev).is_ok() {
                    stable.clone_from(&now);
                    since.iter_mut().for_each(Vec::clear);
                } else {
                    prop_assert!(dead, "a flush failed on a live device");
                }
            }
            // A device that died stays dead until the crash (a failed
            // write's sectors are indeterminate, so nothing after it may
            // succeed as if they were not).
            Step::Die(n) => {
                if !dead {
                    dev.budget = Some(n);
                    dead = true;
                }
            }
            Step::Crash(seed) => {
                dev.crash(seed);
                dead = false;
                img = match open(&mut dev, region) {
                    Ok(i) => i,
                    Err(e) => return Err(TestCaseError::fail(format!("reopen after crash: {e:?}"))),
                };
                assert_extents_inside(&img);
                let all = read_all(&img, &mut dev);
                for (v, got) in all.chunks_exact(S).enumerate() {
                    let ok = core::iter::once(&stable[v]).chain(&since[v]).find(|&&t| pattern(t, v as u64)[..] == *got);
                    match ok {
                        Some(&t) => {
                            now[v] = t;
                            stable[v] = t;
                        }
                        None => {
                            return Err(TestCaseError::fail(format!(
                                "sector {v} after crash: tag {:?} not in {:?}+{:?}",
                                &got[..16],
                                stable[v],
                                since[v]
                            )))
                        }
                    }
                }
                since.iter_mut().for_each(Vec::clear);
            }
        }
        // Nothing ever writes a base.
        prop_assert!(dev.writes.iter().all(|&(l, n)| bases.iter().all(|b| !b.overlaps(&Region::new(l, n)))));
    }
    for (r, bytes) in bases.iter().zip(&base_bytes) {
        prop_assert_eq!(&dev.durable[r.lba as usize * S..(r.lba + r.sectors) as usize * S], &bytes[..]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn crash_sparse_keeps_flushed_writes_and_never_shows_garbage(steps in steps(92)) {
        run_crash_model(setup_sparse(), steps)?;
    }

    #[test]
    fn crash_overlay_on_raw_base_keeps_flushed_writes_and_never_writes_the_base(steps in steps(96)) {
        run_crash_model(setup_overlay_raw(), steps)?;
    }

    #[test]
    fn crash_overlay_on_image_base_keeps_flushed_writes_and_never_writes_the_base(steps in steps(96)) {
        run_crash_model(setup_overlay_image(), steps)?;
    }
}
