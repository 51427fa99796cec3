//! Tests of the block protocol: layout, one test per [`BadRequest`],
//! [`BadResponse`] and [`BuildError`] rule, and proptests (hostile request
//! bytes, hostile response streams against a reference model).

extern crate std;

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;
use ring_protocol::zerocopy::{FromBytes, IntoBytes};

use super::*;

const DISK: u64 = 1 << 20;

fn piece(gref: u32, offset: u32, len: u32) -> Piece {
    Piece { gref, offset, len }
}

/// A valid one-segment read of sectors `first..=last` of page 5 at `sector`.
fn read(sector: u64, first: u8, last: u8) -> Request {
    let mut r = Request { operation: op::READ, nr_segments: 1, sector_number: sector, ..Request::default() };
    r.seg[0] = Segment { gref: 5, first_sect: first, last_sect: last, _pad: 0 };
    r
}

// --- Layout --------------------------------------------------------------

#[test]
fn layout_request_bytes_are_xens() {
    let mut r = Request::rw(Op::Write, 0x0203, 0x1112_1314_1516_1718, &[piece(0x2122_2324, 512, 1024)]).unwrap();
    r.id = 0x0102_0304_0506_0708;
    let b = r.as_bytes();
    assert_eq!(b.len(), 112);
    assert_eq!(b[0], op::WRITE);
    assert_eq!(b[1], 1, "nr_segments");
    assert_eq!(&b[2..4], 0x0203u16.to_le_bytes());
    assert_eq!(&b[4..8], [0; 4], "explicit padding is zero");
    assert_eq!(&b[8..16], 0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&b[16..24], 0x1112_1314_1516_1718u64.to_le_bytes());
    assert_eq!(&b[24..28], 0x2122_2324u32.to_le_bytes(), "seg[0].gref");
    assert_eq!((b[28], b[29]), (1, 2), "first_sect, last_sect");
    assert!(b[30..].iter().all(|&x| x == 0));
}

#[test]
fn layout_discard_overlays_the_first_segment() {
    let r = Request::discard(3, 100, 0x0a0b_0c0d_0e0f_1011, true);
    let b = r.as_bytes();
    assert_eq!((b[0], b[1]), (op::DISCARD, DISCARD_SECURE), "operation, flag");
    assert_eq!(&b[16..24], 100u64.to_le_bytes());
    assert_eq!(&b[24..32], 0x0a0b_0c0d_0e0f_1011u64.to_le_bytes(), "nr_sectors at 24");
    assert_eq!(r.as_discard().nr_sectors, 0x0a0b_0c0d_0e0f_1011);
    assert_eq!(r.as_discard().into_request(), r);
}

#[test]
fn layout_response_bytes_are_xens() {
    let rsp = Response { id: 0x0102_0304_0506_0708, operation: 3, status: Status::NOTSUPP, ..Response::default() };
    let b = rsp.as_bytes();
    assert_eq!(b.len(), 16);
    assert_eq!(&b[..8], 0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(b[8], 3);
    assert_eq!(b[9], 0);
    assert_eq!(&b[10..12], (-2i16).to_le_bytes());
    assert_eq!(&b[12..], [0; 4]);
    assert_eq!(Response::read_from_bytes(b).unwrap(), rsp);
}

#[test]
fn layout_op_and_status_codes_are_xens() {
    assert_eq!([op::READ, op::WRITE, op::WRITE_BARRIER, op::FLUSH_DISKCACHE, op::DISCARD], [0, 1, 2, 3, 5]);
    assert_eq!([Status::OKAY, Status::ERROR, Status::NOTSUPP], [0, -1, -2]);
    for code in 0..=u8::MAX {
        if let Some(op) = Op::from_code(code) {
            assert_eq!(op.code(), code);
        }
    }
    assert_eq!(Op::from_code(4), None, "Xen's reserved op");
    assert_eq!(Op::from_code(6), None, "indirect is not supported");
    assert_eq!((MAX_SEGMENTS, SECTOR, SECTORS_PER_PAGE, RING_SLOTS), (11, 512, 8, 32));
}

// --- validate: one test per check -----------------------------------------

#[test]
fn check1_unknown_op() {
    let mut r = read(0, 0, 7);
    for code in [4, 6, 7, 0x80, 0xff] {
        r.operation = code;
        let no_indirect = Features { indirect: false, ..Features::ALL };
        assert_eq!(validate(&r, DISK, &no_indirect), Err(BadRequest::UnknownOp { operation: code }));
    }
    // Advertised, an indirect request goes to its own validator.
    r.operation = op::INDIRECT;
    assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::Indirect));
}

// --- indirect requests --------------------------------------------------------

/// The segments of `pieces`, as a front writes them in its indirect page.
fn indirect_page(pieces: &[Piece]) -> Vec<Segment> {
    pieces.iter().enumerate().map(|(i, p)| p.segment(i).expect("valid piece")).collect()
}

#[test]
fn indirect_layout_is_xens() {
    let r = Request::indirect(Op::Write, 0x1234, 0x0102_0304_0506_0708, 16, 77).unwrap();
    let b = r.as_bytes();
    assert_eq!(b[0], op::INDIRECT);
    assert_eq!(b[1], op::WRITE);
    assert_eq!(u16::from_le_bytes([b[2], b[3]]), 16);
    assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 0x0102_0304_0506_0708);
    assert_eq!(u16::from_le_bytes([b[24], b[25]]), 0x1234);
    assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), 77);
    assert!(b[32..].iter().all(|&x| x == 0));
}

#[test]
fn indirect_round_trip_of_32_pages() {
    let pieces: Vec<Piece> = (0..32).map(|g| piece(100 + g, 0, 4096)).collect();
    let mut inflight = Inflight::<RING_SLOTS>::with_salt(9);
    let req = inflight.submit(Request::indirect(Op::Read, 0, 4096, 32, 55).unwrap()).unwrap();
    let h = validate_indirect(&req, &Features::ALL).unwrap();
    assert_eq!((h.segments_gref(), h.nr_segments(), h.id()), (55, 32, req.id));
    let v = h.validate(&indirect_page(&pieces), DISK).unwrap();
    assert_eq!((v.op(), v.sector(), v.sectors(), v.segments().len()), (Op::Read, 4096, 256, 32));
    assert_eq!(v.segments()[31].gref(), 131);
    assert_eq!(v.segments()[31].sector(), 4096 + 31 * 8);
    // The answer names the read it carried (Linux's convention), and the
    // front's table takes it.
    assert_eq!(v.response(Status::Okay).operation, op::READ);
    let done = inflight.complete(v.response(Status::Okay)).unwrap();
    assert_eq!((done.op, done.status, done.grants.as_slice()), (Op::Read, Status::Okay, &[55u32][..]));
}

#[test]
fn indirect_header_checks() {
    let all = Features::ALL;
    let ok = Request::indirect(Op::Read, 0, 0, 4, 1).unwrap();
    assert_eq!(
        validate_indirect(&ok, &Features { indirect: false, ..all }),
        Err(BadRequest::UnknownOp { operation: op::INDIRECT })
    );
    assert!(matches!(validate_indirect(&read(0, 0, 7), &all), Err(BadRequest::UnknownOp { .. })));
    for bad in [op::FLUSH_DISKCACHE, op::DISCARD, op::INDIRECT, op::WRITE_BARRIER, 9] {
        let mut r = ok.as_indirect();
        r.indirect_op = bad;
        assert_eq!(validate_indirect(&r.into_request(), &all), Err(BadRequest::BadIndirectOp { indirect_op: bad }));
    }
    let mut r = ok.as_indirect();
    r.indirect_op = op::WRITE_FUA;
    assert_eq!(
        validate_indirect(&r.into_request(), &Features { fua: false, ..all }),
        Err(BadRequest::NotSupported { op: Op::WriteFua })
    );
    for (nr, want) in
        [(0u16, Err(BadRequest::NoSegments)), (33, Err(BadRequest::TooManyIndirectSegments { nr_segments: 33 }))]
    {
        let mut r = ok.as_indirect();
        r.nr_segments = nr;
        assert_eq!(validate_indirect(&r.into_request(), &all).map(|_| ()), want);
    }
    // A refused indirect request is answered with the operation it carries.
    let mut r = ok.as_indirect();
    r.indirect_op = op::WRITE;
    assert_eq!(Response::to_invalid(&r.into_request(), Status::Error).operation, op::WRITE);
    assert_eq!(Request::indirect(Op::Flush, 0, 0, 1, 1), Err(BuildError::NotIndirect));
    assert_eq!(Request::indirect(Op::Read, 0, 0, 33, 1), Err(BuildError::TooManyPieces { pieces: 33 }));
}

#[test]
fn indirect_segments_are_checked_like_direct_ones() {
    let h = validate_indirect(&Request::indirect(Op::Write, 0, DISK - 16, 3, 1).unwrap(), &Features::ALL).unwrap();
    let mut segs = indirect_page(&[piece(1, 0, 4096), piece(2, 0, 4096), piece(3, 0, 4096)]);
    // Too few segments given for the count.
    assert_eq!(h.validate(&segs[..2], DISK), Err(BadRequest::TooManyIndirectSegments { nr_segments: 3 }));
    // 24 sectors from DISK - 16: past the end.
    assert!(matches!(h.validate(&segs, DISK), Err(BadRequest::BeyondDisk { .. })));
    let h = validate_indirect(&Request::indirect(Op::Write, 0, 0, 3, 1).unwrap(), &Features::ALL).unwrap();
    segs[1].last_sect = 8;
    assert_eq!(h.validate(&segs, DISK), Err(BadRequest::SegmentBeyondPage { index: 1, last_sect: 8 }));
    segs[1].last_sect = 7;
    segs[2].first_sect = 5;
    segs[2].last_sect = 4;
    assert_eq!(h.validate(&segs, DISK), Err(BadRequest::SegmentReversed { index: 2, first_sect: 5, last_sect: 4 }));
    // Segments past the count are never read.
    segs[2] = Segment { gref: 3, first_sect: 0, last_sect: 7, _pad: 0 };
    segs.push(Segment { gref: 0, first_sect: 9, last_sect: 1, _pad: 0 });
    assert!(h.validate(&segs, DISK).is_ok());
}

proptest! {
    /// Hostile indirect headers and pages: nothing panics, and whatever is
    /// accepted lies on the disk, with every segment inside its page.
    #[test]
    fn prop_indirect_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 112),
        page in proptest::collection::vec(any::<u8>(), 8 * MAX_INDIRECT_SEGMENTS),
        features in any_features(),
    ) {
        let mut req = Request::read_from_bytes(&bytes).unwrap();
        req.operation = op::INDIRECT;
        let segs: Vec<Segment> = page.chunks(8).map(|c| Segment::read_from_bytes(c).unwrap()).collect();
        if let Ok(h) = validate_indirect(&req, &features) {
            if let Ok(v) = h.validate(&segs, DISK) {
                prop_assert!(v.sector() + v.sectors() <= DISK);
                prop_assert!(v.segments().len() <= MAX_INDIRECT_SEGMENTS);
                for s in v.segments() {
                    prop_assert!(s.range().end <= PAGE_SIZE);
                }
                prop_assert_eq!(v.response(Status::Okay).operation, v.op().code());
            }
        }
    }
}

#[test]
fn check2_unadvertised_ops_are_not_supported() {
    let none = Features::default();
    for op in [Op::WriteBarrier, Op::Flush, Op::Discard, Op::WriteFua] {
        let mut r = read(0, 0, 7);
        r.operation = op.code();
        if op == Op::Discard {
            r = Request::discard(0, 0, 8, false);
        }
        let err = validate(&r, DISK, &none).unwrap_err();
        assert_eq!(err, BadRequest::NotSupported { op });
        assert_eq!(err.status(), Status::NotSupported);
        assert!(validate(&r, DISK, &Features::ALL).is_ok(), "{op:?} with the feature");
    }
    // Reads and writes need no feature.
    assert!(validate(&read(0, 0, 7), DISK, &none).is_ok());
}

#[test]
fn check3_discard_flags() {
    let mut r = Request::discard(0, 0, 8, false);
    r.nr_segments = 2; // the flag byte
    assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::BadDiscardFlags { flag: 2 }));
    let secure = Request::discard(0, 0, 8, true);
    let no_secure = Features { secure_discard: false, ..Features::ALL };
    assert_eq!(validate(&secure, DISK, &no_secure), Err(BadRequest::NotSupported { op: Op::Discard }));
    let v = validate(&secure, DISK, &Features::ALL).unwrap();
    assert!(v.secure_discard() && v.segments().is_empty());
    assert_eq!((v.sector(), v.sectors()), (0, 8));
}

#[test]
fn check3_discard_range() {
    let f = Features::ALL;
    assert!(validate(&Request::discard(0, DISK - 8, 8, false), DISK, &f).is_ok());
    assert!(validate(&Request::discard(0, 5, 0, false), DISK, &f).is_ok(), "empty discard is a no-op");
    for (sector, n) in [(DISK - 8, 9), (DISK, 1), (u64::MAX, 1), (1, u64::MAX)] {
        assert_eq!(
            validate(&Request::discard(0, sector, n, false), DISK, &f),
            Err(BadRequest::BeyondDisk { sector, sectors: n, disk_sectors: DISK })
        );
    }
}

#[test]
fn check4_segment_count() {
    let mut r = read(0, 0, 7);
    r.nr_segments = 0;
    assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::NoSegments));
    r.operation = op::WRITE_FUA;
    assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::NoSegments));
    for code in [op::FLUSH_DISKCACHE, op::WRITE_BARRIER] {
        r.operation = code;
        r.sector_number = u64::MAX; // ignored without data
        let v = validate(&r, DISK, &Features::ALL).unwrap();
        assert!(v.segments().is_empty() && v.sectors() == 0 && v.sector() == 0);
    }
    for nr in [12, 200, 255] {
        let mut r = read(0, 0, 7);
        r.nr_segments = nr;
        assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::TooManySegments { nr_segments: nr }));
    }
    let mut r = read(0, 0, 7);
    r.nr_segments = 11;
    r.seg = [r.seg[0]; MAX_SEGMENTS];
    assert_eq!(validate(&r, DISK, &Features::ALL).unwrap().sectors(), 88);
}

#[test]
fn check5_segment_beyond_page() {
    let mut r = read(0, 0, 7);
    r.nr_segments = 3;
    r.seg[1] = Segment { gref: 1, first_sect: 0, last_sect: 7, _pad: 0 };
    r.seg[2] = Segment { gref: 2, first_sect: 8, last_sect: 8, _pad: 0 };
    assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::SegmentBeyondPage { index: 2, last_sect: 8 }));
    // Checked before the order of the bounds, segment by segment.
    r.seg[1].first_sect = 9;
    r.seg[1].last_sect = 255;
    assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::SegmentBeyondPage { index: 1, last_sect: 255 }));
}

#[test]
fn check5_segment_reversed() {
    let r = read(0, 5, 4);
    assert_eq!(
        validate(&r, DISK, &Features::ALL),
        Err(BadRequest::SegmentReversed { index: 0, first_sect: 5, last_sect: 4 })
    );
}

#[test]
fn check5_segments_past_the_count_are_not_read() {
    let mut r = read(0, 0, 7);
    r.seg[1] = Segment { gref: 0, first_sect: 200, last_sect: 100, _pad: 0 };
    assert!(validate(&r, DISK, &Features::ALL).is_ok());
}

#[test]
fn check6_range_on_the_disk() {
    assert!(validate(&read(DISK - 8, 0, 7), DISK, &Features::ALL).is_ok());
    for sector in [DISK - 7, DISK, u64::MAX - 3, u64::MAX] {
        assert_eq!(
            validate(&read(sector, 0, 7), DISK, &Features::ALL),
            Err(BadRequest::BeyondDisk { sector, sectors: 8, disk_sectors: DISK })
        );
    }
    assert!(validate(&read(0, 0, 0), 0, &Features::ALL).is_err(), "empty disk");
}

#[test]
fn check_order_first_failure_wins() {
    // Unknown op and everything else wrong: the op is reported.
    let mut r = read(u64::MAX, 7, 9);
    r.nr_segments = 99;
    r.operation = 9;
    assert_eq!(validate(&r, DISK, &Features::default()), Err(BadRequest::UnknownOp { operation: 9 }));
    r.operation = op::FLUSH_DISKCACHE;
    assert_eq!(validate(&r, DISK, &Features::default()), Err(BadRequest::NotSupported { op: Op::Flush }));
    assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::TooManySegments { nr_segments: 99 }));
    r.nr_segments = 1;
    assert_eq!(validate(&r, DISK, &Features::ALL), Err(BadRequest::SegmentBeyondPage { index: 0, last_sect: 9 }));
    r.seg[0].last_sect = 6;
    assert!(matches!(validate(&r, DISK, &Features::ALL), Err(BadRequest::SegmentReversed { .. })));
    r.seg[0].first_sect = 0;
    assert!(matches!(validate(&r, DISK, &Features::ALL), Err(BadRequest::BeyondDisk { .. })));
}

#[test]
fn valid_segments_carry_offsets_and_disk_sectors() {
    let req = Request::rw(Op::Write, 1, 100, &[piece(1, 3584, 512), piece(2, 0, 4096), piece(3, 1024, 1024)]).unwrap();
    let v = validate(&req, DISK, &Features::default()).unwrap();
    let segs = v.segments();
    assert_eq!(segs.len(), 3);
    assert_eq!((segs[0].gref(), segs[0].range(), segs[0].sector()), (1, 3584..4096, 100));
    assert_eq!((segs[1].gref(), segs[1].range(), segs[1].sector()), (2, 0..4096, 101));
    assert_eq!((segs[2].gref(), segs[2].range(), segs[2].sector()), (3, 1024..2048, 109));
    assert_eq!((v.sector(), v.sectors(), v.handle()), (100, 11, 1));
    let rsp = v.response(Status::Error);
    assert_eq!((rsp.id, rsp.operation, rsp.status), (req.id, op::WRITE, -1));
}

#[test]
fn invalid_requests_are_answered_with_their_id() {
    let mut r = read(0, 0, 9);
    r.id = 77;
    let err = validate(&r, DISK, &Features::ALL).unwrap_err();
    let rsp = Response::to_invalid(&r, err.status());
    assert_eq!((rsp.id, rsp.operation, rsp.status), (77, op::READ, Status::ERROR));
}

// --- Builders --------------------------------------------------------------

#[test]
fn build_rules() {
    let ok = piece(1, 0, 512);
    assert_eq!(Request::rw(Op::Discard, 0, 0, &[ok]), Err(BuildError::Discard));
    assert_eq!(Request::rw(Op::Read, 0, 0, &[]), Err(BuildError::NoPieces));
    assert_eq!(Request::rw(Op::Write, 0, 0, &[]), Err(BuildError::NoPieces));
    assert!(Request::rw(Op::Flush, 0, 0, &[]).is_ok());
    assert_eq!(Request::rw(Op::Read, 0, 0, &[ok; 12]), Err(BuildError::TooManyPieces { pieces: 12 }));
    assert!(Request::rw(Op::Read, 0, 0, &[ok; 11]).is_ok());
    assert_eq!(Request::rw(Op::Read, 0, 0, &[ok, piece(1, 0, 0)]), Err(BuildError::Empty { index: 1 }));
    assert_eq!(Request::rw(Op::Read, 0, 0, &[piece(1, 1, 512)]), Err(BuildError::Unaligned { index: 0 }));
    assert_eq!(Request::rw(Op::Read, 0, 0, &[piece(1, 0, 100)]), Err(BuildError::Unaligned { index: 0 }));
    assert_eq!(Request::rw(Op::Read, 0, 0, &[piece(1, 512, 4096)]), Err(BuildError::BeyondPage { index: 0 }));
    assert_eq!(
        Request::rw(Op::Read, 0, 0, &[piece(1, u32::MAX - 511, 1024)]),
        Err(BuildError::BeyondPage { index: 0 })
    );
    assert_eq!(Request::rw(Op::Read, 0, u64::MAX - 1, &[piece(1, 0, 1024)]), Err(BuildError::SectorOverflow));
    assert!(Request::rw(Op::Read, 0, u64::MAX - 2, &[piece(1, 0, 1024)]).is_ok());
}

#[test]
fn pieces_rules() {
    assert_eq!(Pieces::new(0, 0, &[1]).unwrap_err(), BuildError::EmptyBuffer);
    assert_eq!(Pieces::new(1, 512, &[1]).unwrap_err(), BuildError::BufferUnaligned);
    assert_eq!(Pieces::new(0, 100, &[1]).unwrap_err(), BuildError::BufferUnaligned);
    assert_eq!(Pieces::new(4096, 512, &[1, 2]).unwrap_err(), BuildError::BufferUnaligned);
    assert_eq!(Pieces::new(512, 4096, &[1]).unwrap_err(), BuildError::NotEnoughPages { needed: 2, given: 1 });
    assert_eq!(
        Pieces::new(512, usize::MAX - 511, &[1]).unwrap_err(),
        BuildError::NotEnoughPages { needed: usize::MAX, given: 1 }
    );
    let all: Vec<Piece> = Pieces::new(0, 8192, &[1, 2, 3]).unwrap().collect();
    assert_eq!(all, [piece(1, 0, 4096), piece(2, 0, 4096)], "extra grants unused");
}

#[test]
fn pieces_split_into_requests_of_eleven() {
    let grefs: Vec<u32> = (100..125).collect();
    // 24 pages' worth from 512 bytes in: 25 pages.
    let mut p = Pieces::new(512, 24 * 4096, &grefs).unwrap();
    let mut sector = 1000;
    let mut reqs = Vec::new();
    while let Some(r) = p.next_request(Op::Read, 2, &mut sector) {
        reqs.push(r.unwrap());
    }
    assert_eq!(reqs.iter().map(|r| r.nr_segments).collect::<Vec<_>>(), [11, 11, 3]);
    assert_eq!(sector, 1000 + 24 * 8);
    let mut next = 1000;
    for r in &reqs {
        let v = validate(r, DISK, &Features::default()).unwrap();
        assert_eq!(v.sector(), next);
        next += v.sectors();
    }
    assert_eq!(reqs[0].seg[0], Segment { gref: 100, first_sect: 1, last_sect: 7, _pad: 0 });
    assert_eq!(reqs[2].seg[2], Segment { gref: 124, first_sect: 0, last_sect: 0, _pad: 0 });

    let mut p = Pieces::new(0, 4096, &grefs).unwrap();
    assert_eq!(p.next_request(Op::Discard, 0, &mut 0), Some(Err(BuildError::Discard)));
    let mut p = Pieces::new(0, 4096, &grefs).unwrap();
    let mut sector = u64::MAX - 7;
    assert_eq!(p.next_request(Op::Read, 0, &mut sector), Some(Err(BuildError::SectorOverflow)));
    assert_eq!(sector, u64::MAX - 7, "not advanced");
}

proptest! {
    /// Any aligned buffer: the pieces cover it exactly, page by page.
    #[test]
    fn prop_pieces_cover_the_buffer(first in 0usize..8, sectors in 1usize..200) {
        let (offset, len) = (first * SECTOR, sectors * SECTOR);
        let grefs: Vec<u32> = (0..30).collect();
        let pieces: Vec<Piece> = Pieces::new(offset, len, &grefs).unwrap().collect();
        prop_assert_eq!(pieces.len(), (offset + len).div_ceil(PAGE_SIZE));
        prop_assert_eq!(pieces.iter().map(|p| p.len as usize).sum::<usize>(), len);
        for (i, p) in pieces.iter().enumerate() {
            prop_assert_eq!(p.gref, i as u32);
            prop_assert_eq!(p.offset as usize, if i == 0 { offset } else { 0 });
            prop_assert!(p.offset + p.len <= PAGE_SIZE as u32);
            if i + 1 < pieces.len() {
                prop_assert_eq!((p.offset + p.len) as usize, PAGE_SIZE, "only the last piece ends early");
            }
        }
    }
}

// --- Inflight: one test per BadResponse ------------------------------------

fn submitted<const N: usize>(t: &mut Inflight<N>, op: Op, grefs: &[u32]) -> Request {
    let pieces: Vec<Piece> = grefs.iter().map(|&g| piece(g, 0, 4096)).collect();
    let req =
        if op == Op::Discard { Request::discard(0, 0, 8, false) } else { Request::rw(op, 0, 0, &pieces).unwrap() };
    t.submit(req).unwrap()
}

fn ok(req: &Request) -> Response {
    Response { id: req.id, operation: req.operation, status: Status::OKAY, ..Response::default() }
}

#[test]
fn response_unknown_id() {
    // Three entries, two index bits: index 3 is nobody's.
    let mut t = Inflight::<3>::new();
    let r = submitted(&mut t, Op::Read, &[1]);
    for id in [3, 7, u64::MAX, r.id | 3] {
        assert_eq!(t.complete(Response { id, ..ok(&r) }), Err(BadResponse::UnknownId { id }));
    }
    // Index 0 at a generation never issued: ours, but not in flight.
    assert_eq!(t.complete(Response { id: 4, ..ok(&r) }), Err(BadResponse::NotInFlight { id: 4 }));
    assert_eq!(t.in_flight(), 1);
    assert!(t.complete(ok(&r)).is_ok(), "the real request is untouched");
}

#[test]
fn response_duplicate_and_stale_ids() {
    let mut t = Inflight::<4>::with_salt(0xdead_beef);
    let a = submitted(&mut t, Op::Write, &[1, 2]);
    assert_ne!(a.id, 0, "salted");
    let done = t.complete(ok(&a)).unwrap();
    assert_eq!(done.grants.as_slice(), [1, 2]);
    assert_eq!(t.complete(ok(&a)), Err(BadResponse::NotInFlight { id: a.id }), "duplicate");
    // The same slot reused: the old id is stale, not the new request's.
    let b = submitted(&mut t, Op::Write, &[3]);
    assert_ne!(a.id, b.id);
    assert_eq!(t.complete(ok(&a)), Err(BadResponse::NotInFlight { id: a.id }), "stale");
    assert_eq!(t.complete(ok(&b)).unwrap().grants.as_slice(), [3]);
}

#[test]
fn response_operation_mismatch() {
    let mut t = Inflight::<4>::new();
    let r = submitted(&mut t, Op::Read, &[1]);
    let rsp = Response { operation: op::WRITE, ..ok(&r) };
    assert_eq!(t.complete(rsp), Err(BadResponse::OperationMismatch { id: r.id, expected: op::READ, got: op::WRITE }));
    assert_eq!(t.in_flight(), 1, "unchanged");
    assert_eq!(t.complete(ok(&r)).unwrap().op, Op::Read);
}

#[test]
fn response_bad_status() {
    let mut t = Inflight::<4>::new();
    let r = submitted(&mut t, Op::Flush, &[]);
    for status in [1, -3, i16::MIN, i16::MAX] {
        assert_eq!(t.complete(Response { status, ..ok(&r) }), Err(BadResponse::BadStatus { id: r.id, status }));
    }
    let done = t.complete(Response { status: Status::NOTSUPP, ..ok(&r) }).unwrap();
    assert_eq!((done.status, done.grants.as_slice()), (Status::NotSupported, &[][..]));
}

#[test]
fn responses_complete_out_of_order() {
    let mut t = Inflight::<RING_SLOTS>::with_salt(42);
    let reqs: Vec<Request> = (0..RING_SLOTS as u32).map(|g| submitted(&mut t, Op::Read, &[g])).collect();
    assert!(t.is_full());
    assert_eq!(t.submit(Request::rw(Op::Read, 0, 0, &[piece(1, 0, 512)]).unwrap()), Err(SubmitError::Full));
    for i in (0..RING_SLOTS).rev().step_by(2).chain((0..RING_SLOTS).step_by(2)) {
        let done = t.complete(ok(&reqs[i])).unwrap();
        assert_eq!(done.grants.as_slice(), [i as u32]);
    }
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn submit_refuses_malformed_requests() {
    let mut t = Inflight::<2>::new();
    let mut r = Request::rw(Op::Read, 0, 0, &[piece(1, 0, 512)]).unwrap();
    r.operation = 9;
    assert_eq!(t.submit(r), Err(SubmitError::Malformed));
    r.operation = op::READ;
    r.nr_segments = 12;
    assert_eq!(t.submit(r), Err(SubmitError::Malformed));
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn abandon_releases_exactly_the_requests_in_flight() {
    let mut t = Inflight::<8>::new();
    let a = submitted(&mut t, Op::Read, &[1]);
    let b = submitted(&mut t, Op::Write, &[2, 3]);
    let c = submitted(&mut t, Op::Discard, &[]);
    t.complete(ok(&b)).unwrap();
    let mut left: Vec<(u64, Op, Vec<u32>)> =
        core::iter::from_fn(|| t.abandon_next()).map(|x| (x.id, x.op, x.grants.as_slice().to_vec())).collect();
    left.sort_by_key(|x| x.0);
    let mut want = std::vec![(a.id, Op::Read, std::vec![1]), (c.id, Op::Discard, std::vec![])];
    want.sort_by_key(|x| x.0);
    assert_eq!(left, want);
    assert_eq!(t.in_flight(), 0);
    assert_eq!(t.complete(ok(&a)), Err(BadResponse::NotInFlight { id: a.id }), "abandoned ids are dead");
}

// --- Proptests -------------------------------------------------------------

fn any_request() -> impl Strategy<Value = Request> {
    let code = prop_oneof![0u8..=6, Just(op::WRITE_FUA), any::<u8>()];
    let nr = prop_oneof![0u8..=12, any::<u8>()];
    let sect = prop_oneof![0u8..=9, any::<u8>()];
    let seg = (any::<u32>(), sect.clone(), sect).prop_map(|(gref, first_sect, last_sect)| Segment {
        gref,
        first_sect,
        last_sect,
        _pad: 0,
    });
    let sector = prop_oneof![0u64..2 * DISK, any::<u64>()];
    (code, nr, any::<u64>(), sector, proptest::array::uniform11(seg), proptest::collection::vec(any::<u8>(), 112))
        .prop_map(|(operation, nr_segments, id, sector_number, seg, raw)| {
            // Half from fields, half raw bytes.
            if raw[0] & 1 == 0 {
                Request { operation, nr_segments, handle: 0, _pad: 0, id, sector_number, seg }
            } else {
                let mut r = Request::read_from_bytes(&raw).unwrap();
                r.operation = operation;
                r
            }
        })
}

fn any_features() -> impl Strategy<Value = Features> {
    proptest::array::uniform6(any::<bool>()).prop_map(|[barrier, flush, discard, secure_discard, fua, indirect]| {
        Features { barrier, flush, discard, secure_discard, fua, indirect }
    })
}

proptest! {
    /// Hostile bytes: `validate` never panics, and anything it accepts is
    /// in its pages and on the disk.
    #[test]
    fn prop_validate_accepts_only_in_bounds(
        req in any_request(),
        disk in prop_oneof![0u64..4 * DISK, any::<u64>()],
        features in any_features(),
    ) {
        match validate(&req, disk, &features) {
            Err(e) => {
                let s = e.status();
                prop_assert!(s != Status::Okay);
            }
            Ok(v) => {
                prop_assert_eq!(Some(v.op()), Op::from_code(req.operation));
                prop_assert!(features.supports(v.op()));
                prop_assert_eq!(v.id(), req.id);
                let end = v.sector().checked_add(v.sectors());
                prop_assert!(end.is_some_and(|e| e <= disk));
                let segs = v.segments();
                prop_assert!(segs.len() <= MAX_SEGMENTS);
                if v.op() == Op::Discard {
                    prop_assert!(segs.is_empty());
                    prop_assert_eq!(v.sectors(), req.as_discard().nr_sectors);
                } else {
                    prop_assert_eq!(segs.len(), usize::from(req.nr_segments));
                    prop_assert!(!segs.is_empty() || v.op().data_optional());
                    let mut next = v.sector();
                    for (s, raw) in segs.iter().zip(&req.seg) {
                        prop_assert!(s.len() >= SECTOR && s.offset() % SECTOR == 0 && s.range().end <= PAGE_SIZE);
                        prop_assert_eq!(s.gref(), raw.gref);
                        prop_assert_eq!(s.sector(), next);
                        next += u64::from(s.sectors());
                    }
                    prop_assert_eq!(next, v.sector() + v.sectors());
                }
            }
        }
    }

    /// Whatever the front builds from good pieces, the back accepts.
    #[test]
    fn prop_built_requests_validate(
        pieces in proptest::collection::vec((any::<u32>(), 0u32..8, 1u32..=8), 1..=MAX_SEGMENTS),
        sector in 0u64..DISK,
        write in any::<bool>(),
    ) {
        let pieces: Vec<Piece> = pieces
            .into_iter()
            .map(|(gref, first, n)| piece(gref, first * 512, n.min(8 - first) * 512))
            .collect();
        let op = if write { Op::Write } else { Op::Read };
        let req = Request::rw(op, 0, sector, &pieces).unwrap();
        let total: u64 = pieces.iter().map(|p| u64::from(p.len) / 512).sum();
        let v = validate(&req, sector + total, &Features::default()).unwrap();
        prop_assert_eq!(v.sectors(), total);
        for (s, p) in v.segments().iter().zip(&pieces) {
            prop_assert_eq!((s.gref(), s.offset(), s.len()), (p.gref, p.offset as usize, p.len as usize));
        }
        prop_assert!(validate(&req, sector + total - 1, &Features::default()).is_err());
    }
}

/// One step of the shadow-table model test.
#[derive(Clone, Debug)]
enum Step {
    /// Submit an op with this many grefs.
    Submit(u8, u8),
    /// Answer the `n`-th in-flight request (mod count) with a valid status.
    Answer(usize, i16),
    /// Answer an in-flight request with a wrong operation.
    WrongOp(usize, u8),
    /// Answer an in-flight request with a bad status.
    BadStatus(usize, i16),
    /// Replay the `n`-th response ever accepted.
    Replay(usize),
    /// A response of random bytes.
    Garbage(u64, u8, i16),
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..6, 0u8..=11).prop_map(|(o, n)| Step::Submit(o, n)),
        3 => (any::<usize>(), -2i16..=0).prop_map(|(i, s)| Step::Answer(i, s)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, o)| Step::WrongOp(i, o)),
        1 => (any::<usize>(), any::<i16>()).prop_map(|(i, s)| Step::BadStatus(i, s)),
        1 => any::<usize>().prop_map(Step::Replay),
        1 => (any::<u64>(), any::<u8>(), any::<i16>()).prop_map(|(i, o, s)| Step::Garbage(i, o, s)),
    ]
}

const OPS: [Op; 6] = [Op::Read, Op::Write, Op::WriteBarrier, Op::Flush, Op::Discard, Op::WriteFua];

proptest! {
    /// Submit/complete against a reference map, with a hostile response
    /// stream mixed in: every good response completes exactly its request
    /// with the grants submitted, every bad one is refused and changes
    /// nothing, and teardown releases exactly what is left.
    #[test]
    fn prop_shadow_table_matches_model(
        salt in any::<u64>(),
        steps in proptest::collection::vec(any_step(), 1..200),
    ) {
        let mut t = Inflight::<8>::with_salt(salt);
        // id -> (op, grefs)
        let mut model: BTreeMap<u64, (Op, Vec<u32>)> = BTreeMap::new();
        let mut accepted: Vec<Response> = Vec::new();
        let mut next_gref = 0u32;
        for step in steps {
            let live: Vec<u64> = model.keys().copied().collect();
            let pick = |i: usize| live.get(i % live.len().max(1)).copied();
            match step {
                Step::Submit(o, n) => {
                    let op = OPS[usize::from(o)];
                    let n = if op == Op::Discard { 0 } else if op.data_optional() { n } else { n.max(1) };
                    let grefs: Vec<u32> = (0..n).map(|_| { next_gref += 1; next_gref }).collect();
                    let req = if op == Op::Discard {
                        Request::discard(0, 1, 2, false)
                    } else {
                        let pieces: Vec<Piece> = grefs.iter().map(|&g| piece(g, 0, 512)).collect();
                        Request::rw(op, 0, 0, &pieces).unwrap()
                    };
                    match t.submit(req) {
                        Ok(r) => {
                            prop_assert!(model.len() < 8);
                            prop_assert!(!model.contains_key(&r.id), "id reused while in flight");
                            prop_assert!(accepted.iter().all(|a| a.id != r.id), "id issued twice");
                            model.insert(r.id, (op, grefs));
                        }
                        Err(e) => {
                            prop_assert_eq!(e, SubmitError::Full);
                            prop_assert_eq!(model.len(), 8);
                        }
                    }
                }
                Step::Answer(i, status) => {
                    let Some(id) = pick(i) else { continue };
                    let (op, grefs) = model.remove(&id).unwrap();
                    let rsp = Response { id, operation: op.code(), status, ..Response::default() };
                    let done = t.complete(rsp).unwrap();
                    prop_assert_eq!((done.id, done.op, done.status.code()), (id, op, status));
                    prop_assert_eq!(done.grants.as_slice(), &grefs[..]);
                    accepted.push(rsp);
                }
                Step::WrongOp(i, o) => {
                    let Some(id) = pick(i) else { continue };
                    let op = model[&id].0;
                    if o == op.code() { continue }
                    let rsp = Response { id, operation: o, ..Response::default() };
                    prop_assert!(
                        matches!(t.complete(rsp), Err(BadResponse::OperationMismatch { .. })),
                        "wrong op accepted"
                    );
                }
                Step::BadStatus(i, s) => {
                    let Some(id) = pick(i) else { continue };
                    if Status::from_code(s).is_some() { continue }
                    let rsp = Response { id, operation: model[&id].0.code(), status: s, ..Response::default() };
                    prop_assert_eq!(t.complete(rsp), Err(BadResponse::BadStatus { id, status: s }));
                }
                Step::Replay(i) => {
                    if accepted.is_empty() { continue }
                    let rsp = accepted[i % accepted.len()];
                    prop_assert_eq!(t.complete(rsp), Err(BadResponse::NotInFlight { id: rsp.id }));
                }
                Step::Garbage(id, operation, status) => {
                    let rsp = Response { id, operation, status, ..Response::default() };
                    let good = model.get(&id).is_some_and(|(op, _)| op.code() == operation)
                        && Status::from_code(status).is_some();
                    match t.complete(rsp) {
                        Ok(done) => {
                            prop_assert!(good);
                            let (_, grefs) = model.remove(&id).unwrap();
                            prop_assert_eq!(done.grants.as_slice(), &grefs[..]);
                            accepted.push(rsp);
                        }
                        Err(_) => prop_assert!(!good),
                    }
                }
            }
            prop_assert_eq!(t.in_flight(), model.len());
        }
        while let Some(a) = t.abandon_next() {
            let (op, grefs) = model.remove(&a.id).expect("abandoned an id not in flight");
            prop_assert_eq!(a.op, op);
            prop_assert_eq!(a.grants.as_slice(), &grefs[..]);
        }
        prop_assert!(model.is_empty(), "in flight but not abandoned: {:?}", model);
        prop_assert_eq!(t.in_flight(), 0);
    }
}
