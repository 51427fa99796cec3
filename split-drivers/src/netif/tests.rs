//! Tests of the network protocol: layout, one test per [`BadTxRequest`],
//! [`RxFrameError`], [`SubmitError`] and [`BadResponse`] rule, and
//! proptests (hostile request streams against the assembler, front-built
//! frames round-tripping through the back, hostile response streams
//! against the front's tables).

extern crate std;

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use proptest::prelude::*;
use ring_protocol::zerocopy::{FromBytes, IntoBytes};

use super::*;

const MORE: u16 = tx_flags::MORE_DATA;

fn txreq(id: u16, gref: u32, offset: u16, size: u16, flags: u16) -> TxRequest {
    TxRequest { gref, offset, flags, id, size }
}

/// Push `reqs`; all but the last must ask for more.
fn push_all(asm: &mut TxAssembler, reqs: &[TxRequest]) -> TxStep {
    let (last, init) = reqs.split_last().expect("at least one request");
    for r in init {
        assert_eq!(asm.push(r), TxStep::NeedMore, "request {r:?}");
    }
    asm.push(last)
}

fn refused(reqs: &[TxRequest]) -> TxRefused {
    match push_all(&mut TxAssembler::new(), reqs) {
        TxStep::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn frame(reqs: &[TxRequest]) -> ValidTxFrame {
    match push_all(&mut TxAssembler::new(), reqs) {
        TxStep::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

// --- Layout --------------------------------------------------------------

#[test]
fn layout_tx_bytes_are_xens() {
    let r = txreq(0x0506, 0x0102_0304, 0x0a0b, 0x0c0d, 0x0003);
    let b = r.as_bytes();
    assert_eq!(b.len(), 12);
    assert_eq!(&b[0..4], 0x0102_0304u32.to_le_bytes(), "gref");
    assert_eq!(&b[4..6], 0x0a0bu16.to_le_bytes(), "offset");
    assert_eq!(&b[6..8], 0x0003u16.to_le_bytes(), "flags");
    assert_eq!(&b[8..10], 0x0506u16.to_le_bytes(), "id");
    assert_eq!(&b[10..12], 0x0c0du16.to_le_bytes(), "size");
    assert_eq!(TxRequest::read_from_bytes(b).unwrap(), r);

    let rsp = TxResponse { id: 0x0102, status: TxStatus::DROPPED };
    assert_eq!(rsp.as_bytes(), [0x02, 0x01, 0xfe, 0xff]);
}

#[test]
fn layout_rx_bytes_are_xens() {
    let r = RxRequest { id: 0x0102, _pad: 0, gref: 0x0304_0506 };
    assert_eq!(r.as_bytes(), [0x02, 0x01, 0, 0, 0x06, 0x05, 0x04, 0x03]);
    let rsp = RxResponse { id: 0x0102, offset: 0x0304, flags: 0x0005, status: -1 };
    assert_eq!(rsp.as_bytes(), [0x02, 0x01, 0x04, 0x03, 0x05, 0x00, 0xff, 0xff]);
    assert_eq!(RxResponse::read_from_bytes(rsp.as_bytes()).unwrap(), rsp);
}

#[test]
fn layout_flags_statuses_and_ring_sizes_are_xens() {
    use rx_flags as r;
    use tx_flags as t;
    assert_eq!([t::CSUM_BLANK, t::DATA_VALIDATED, t::MORE_DATA, t::EXTRA_INFO], [1, 2, 4, 8]);
    assert_eq!([r::DATA_VALIDATED, r::CSUM_BLANK, r::MORE_DATA, r::EXTRA_INFO, r::GSO_PREFIX], [1, 2, 4, 8, 16]);
    assert_eq!([TxStatus::OKAY, TxStatus::ERROR, TxStatus::DROPPED, TxStatus::NULL], [0, -1, -2, 1]);
    for code in i16::MIN..=i16::MAX {
        if let Some(s) = TxStatus::from_code(code) {
            assert_eq!(s.code(), code);
        }
        if let Some(s) = RxStatus::from_code(code) {
            assert_eq!(s.code(), code);
            assert!(code < 0);
        }
    }
    assert_eq!((TX_RING_SLOTS, RX_RING_SLOTS), (256, 256));
}

// --- Back, tx ----------------------------------------------------------------

#[test]
fn tx_single_slot_frame() {
    let f = frame(&[txreq(7, 70, 100, 60, tx_flags::CSUM_BLANK)]);
    assert_eq!(f.len(), 60);
    assert_eq!(f.ids(), [7]);
    assert_eq!(f.slots().len(), 1);
    let s = f.slots()[0];
    assert_eq!((s.gref(), s.range()), (70, 100..160));
    assert_eq!(f.flags(), TxFlags { csum_blank: true, data_validated: false });
    let rsps: Vec<_> = f.responses(TxStatus::Okay).collect();
    assert_eq!(rsps, [TxResponse { id: 7, status: 0 }]);
}

#[test]
fn tx_multi_slot_frame_first_piece_is_the_remainder() {
    // 1500 bytes: 1000 in slot 0 (the remainder), 300 + 200 after.
    let reqs = [
        txreq(1, 10, 3096, 1500, MORE | tx_flags::DATA_VALIDATED),
        txreq(2, 11, 0, 300, MORE | tx_flags::CSUM_BLANK),
        txreq(3, 12, 3896, 200, 0),
    ];
    let f = frame(&reqs);
    assert_eq!(f.len(), 1500);
    assert_eq!(f.ids(), [1, 2, 3]);
    let ranges: Vec<_> = f.slots().iter().map(|s| (s.gref(), s.range())).collect();
    assert_eq!(ranges, [(10, 3096..4096), (11, 0..300), (12, 3896..4096)]);
    // Only the first request's checksum flags count.
    assert_eq!(f.flags(), TxFlags { csum_blank: false, data_validated: true });
    assert!(f.responses(TxStatus::Dropped).all(|r| r.status == TxStatus::DROPPED));
}

#[test]
fn check1_unknown_flags() {
    let r = refused(&[txreq(1, 0, 0, 60, 0x10)]);
    assert_eq!(r.error(), BadTxRequest::UnknownFlags { slot: 0, flags: 0x10 });
    let r = refused(&[txreq(1, 0, 0, 60, MORE), txreq(2, 0, 0, 10, MORE | 0x8000), txreq(3, 0, 0, 5, 0)]);
    assert_eq!(r.error(), BadTxRequest::UnknownFlags { slot: 1, flags: MORE | 0x8000 });
    assert_eq!(r.ids(), [1, 2, 3], "the rest of the chain is taken and answered");
}

#[test]
fn check2_extra_info_is_refused() {
    let r = refused(&[txreq(4, 0, 0, 60, tx_flags::EXTRA_INFO)]);
    assert_eq!(r.error(), BadTxRequest::ExtraInfo { slot: 0 });
    assert_eq!(r.error().status(), TxStatus::Error);
    // The next slot is an ordinary request (no extra-info slot is skipped).
    let mut asm = TxAssembler::new();
    assert!(matches!(asm.push(&txreq(4, 0, 0, 60, tx_flags::EXTRA_INFO)), TxStep::Refused(_)));
    assert!(matches!(asm.push(&txreq(5, 0, 0, 60, 0)), TxStep::Frame(_)));
}

#[test]
fn check3_empty_slot() {
    assert_eq!(refused(&[txreq(1, 0, 0, 0, 0)]).error(), BadTxRequest::EmptySlot { slot: 0 });
    let r = refused(&[txreq(1, 0, 0, 60, MORE), txreq(2, 0, 0, 0, 0)]);
    assert_eq!(r.error(), BadTxRequest::EmptySlot { slot: 1 });
}

#[test]
fn check4_frame_length() {
    assert_eq!(refused(&[txreq(1, 0, 0, 13, 0)]).error(), BadTxRequest::FrameTooShort { len: 13 });
    assert_eq!(refused(&[txreq(1, 0, 0, 1523, 0)]).error(), BadTxRequest::FrameTooLong { len: 1523 });
    assert_eq!(refused(&[txreq(1, 0, 0, u16::MAX, 0)]).error(), BadTxRequest::FrameTooLong { len: u16::MAX });
    assert_eq!(frame(&[txreq(1, 0, 0, 14, 0)]).len(), 14);
    assert_eq!(frame(&[txreq(1, 0, 0, 1522, 0)]).len(), 1522);
}

#[test]
fn check5_beyond_page() {
    // First slot: offset past the page, caught at once.
    let r = refused(&[txreq(1, 0, 4096, 60, MORE), txreq(2, 0, 0, 10, 0)]);
    assert_eq!(r.error(), BadTxRequest::BeyondPage { slot: 0, offset: 4096, len: 60 });
    // A following slot.
    let r = refused(&[txreq(1, 0, 0, 100, MORE), txreq(2, 0, 4000, 97, 0)]);
    assert_eq!(r.error(), BadTxRequest::BeyondPage { slot: 1, offset: 4000, len: 97 });
    // u16 offsets cannot overflow: the largest still fails cleanly.
    let r = refused(&[txreq(1, 0, 0, 100, MORE), txreq(2, 0, u16::MAX, u16::MAX, 0)]);
    assert!(matches!(r.error(), BadTxRequest::BeyondPage { slot: 1, .. }));
    // The first slot's own piece, known only at the end.
    let r = refused(&[txreq(1, 0, 4000, 150, MORE), txreq(2, 0, 0, 50, 0)]);
    assert_eq!(r.error(), BadTxRequest::BeyondPage { slot: 0, offset: 4000, len: 100 });
    // Exactly to the end of the page is fine.
    assert_eq!(frame(&[txreq(1, 0, 4000, 146, MORE), txreq(2, 0, 0, 50, 0)]).slots()[0].range(), 4000..4096);
}

#[test]
fn check6_chunks_exceed_frame() {
    let r = refused(&[txreq(1, 0, 0, 100, MORE), txreq(2, 0, 0, 60, MORE), txreq(3, 0, 0, 41, 0)]);
    assert_eq!(r.error(), BadTxRequest::ChunksExceedFrame { frame_len: 100, chunks: 101 });
    assert_eq!(r.ids(), [1, 2, 3]);
}

#[test]
fn check7_too_many_slots() {
    let mut asm = TxAssembler::new();
    let mut ids = Vec::new();
    for id in 0..MAX_SLOTS_PER_FRAME as u16 {
        let size = if id == 0 { 1000 } else { 1 };
        let step = asm.push(&txreq(id, 0, 0, size, MORE));
        ids.push(id);
        if usize::from(id) + 1 < MAX_SLOTS_PER_FRAME {
            assert_eq!(step, TxStep::NeedMore);
        } else {
            let TxStep::Refused(r) = step else { panic!("{step:?}") };
            assert_eq!(r.error(), BadTxRequest::TooManySlots);
            assert_eq!(r.ids(), ids.as_slice(), "all 18 are answered");
        }
    }
    assert!(asm.is_idle());
    // The next request starts a new frame.
    assert!(matches!(asm.push(&txreq(99, 0, 0, 60, 0)), TxStep::Frame(_)));
    // 18 slots ending the chain are fine.
    let mut reqs: Vec<_> = (0..17u16).map(|id| txreq(id, 0, 0, if id == 0 { 100 } else { 1 }, MORE)).collect();
    reqs.push(txreq(17, 0, 0, 1, 0));
    assert_eq!(frame(&reqs).slots().len(), MAX_SLOTS_PER_FRAME);
}

#[test]
fn check8_header_in_first_slot() {
    let r = refused(&[txreq(1, 0, 0, 100, MORE), txreq(2, 0, 0, 87, 0)]);
    assert_eq!(r.error(), BadTxRequest::HeaderNotInFirstSlot { first_len: 13 });
    assert_eq!(frame(&[txreq(1, 0, 0, 100, MORE), txreq(2, 0, 0, 86, 0)]).slots()[0].len(), 14);
    // All bytes in the others: the first piece is empty.
    let r = refused(&[txreq(1, 0, 0, 100, MORE), txreq(2, 0, 0, 100, 0)]);
    assert_eq!(r.error(), BadTxRequest::HeaderNotInFirstSlot { first_len: 0 });
}

#[test]
fn check_order_first_failure_wins() {
    // Unknown flags beat everything in the same slot.
    let r = refused(&[txreq(1, 0, 5000, 0, 0x8000 | tx_flags::EXTRA_INFO)]);
    assert_eq!(r.error(), BadTxRequest::UnknownFlags { slot: 0, flags: 0x8000 | tx_flags::EXTRA_INFO });
    // An earlier slot's failure beats a later one's, and later ones are not checked.
    let r = refused(&[txreq(1, 0, 0, 10, MORE), txreq(2, 0, 5000, 0, 0x8000 | MORE), txreq(3, 0, 0, 1, 0)]);
    assert_eq!(r.error(), BadTxRequest::FrameTooShort { len: 10 });
    // A slot's failure beats the chain that never ends.
    let mut asm = TxAssembler::new();
    let mut last = TxStep::NeedMore;
    for id in 0..MAX_SLOTS_PER_FRAME as u16 {
        last = asm.push(&txreq(id, 0, 0, 0, MORE));
    }
    let TxStep::Refused(r) = last else { panic!() };
    assert_eq!(r.error(), BadTxRequest::EmptySlot { slot: 0 });
    assert_eq!(r.ids().len(), MAX_SLOTS_PER_FRAME);
}

#[test]
fn tx_refusals_answer_every_id_with_error_and_reset() {
    let mut asm = TxAssembler::new();
    assert_eq!(asm.push(&txreq(1, 0, 0, 100, MORE)), TxStep::NeedMore);
    assert_eq!(asm.pending_ids(), [1]);
    assert!(!asm.is_idle());
    let TxStep::Refused(r) = asm.push(&txreq(2, 0, 0, 500, 0)) else { panic!() };
    let rsps: Vec<_> = r.responses().collect();
    assert_eq!(rsps, [TxResponse { id: 1, status: -1 }, TxResponse { id: 2, status: -1 }]);
    assert!(asm.is_idle());
    assert!(matches!(asm.push(&txreq(3, 0, 0, 100, 0)), TxStep::Frame(_)));
}

// --- Back, rx ----------------------------------------------------------------

fn rxreq(id: u16, gref: u32) -> RxRequest {
    RxRequest { id, _pad: 0, gref }
}

#[test]
fn rx_frame_in_one_slot() {
    let flags = RxFlags { csum_blank: true, data_validated: true };
    let mut w = RxWriter::new(1522, 0, flags).unwrap();
    assert_eq!((w.slots(), w.remaining_slots()), (1, 1));
    let p = w.place(&rxreq(3, 30)).unwrap();
    assert_eq!((p.gref(), p.range(), p.frame_range(), p.more_data()), (30, 0..1522, 0..1522, false));
    let rsp = p.response();
    assert_eq!(
        rsp,
        RxResponse { id: 3, offset: 0, flags: rx_flags::CSUM_BLANK | rx_flags::DATA_VALIDATED, status: 1522 }
    );
    assert_eq!(w.remaining_slots(), 0);
    assert_eq!(w.place(&rxreq(4, 40)), None, "a whole frame takes no more buffers");
}

#[test]
fn rx_frame_across_a_page_boundary_spans_slots() {
    let flags = RxFlags { csum_blank: false, data_validated: true };
    let mut w = RxWriter::new(1500, 3000, flags).unwrap();
    assert_eq!(w.slots(), 2);
    let a = w.place(&rxreq(1, 10)).unwrap();
    let b = w.place(&rxreq(2, 20)).unwrap();
    assert_eq!((a.range(), a.frame_range(), a.more_data()), (3000..4096, 0..1096, true));
    assert_eq!((b.range(), b.frame_range(), b.more_data()), (0..404, 1096..1500, false));
    assert_eq!(a.response().flags, rx_flags::DATA_VALIDATED | rx_flags::MORE_DATA);
    assert_eq!(b.response().flags, 0, "checksum flags on the first response only");
    assert_eq!(w.place(&rxreq(3, 30)), None);
    // A failed copy keeps the chain.
    assert_eq!(a.failed(RxStatus::Error), RxResponse { id: 1, offset: 0, flags: rx_flags::MORE_DATA, status: -1 });
    assert_eq!(b.failed(RxStatus::Dropped).status, -2);
}

#[test]
fn rx_writer_refuses_bad_frames() {
    let f = RxFlags::default();
    assert_eq!(RxWriter::new(13, 0, f), Err(RxFrameError::TooShort { len: 13 }));
    assert_eq!(RxWriter::new(1523, 0, f), Err(RxFrameError::TooLong { len: 1523 }));
    assert_eq!(RxWriter::new(usize::MAX, 0, f), Err(RxFrameError::TooLong { len: usize::MAX }));
    assert_eq!(RxWriter::new(60, 4096, f), Err(RxFrameError::OffsetBeyondPage { offset: 4096 }));
    assert_eq!(RxWriter::new(60, 4095, f).unwrap().slots(), 2);
}

#[test]
fn rx_writer_never_reads_pad() {
    let mut w = RxWriter::new(60, 0, RxFlags::default()).unwrap();
    let p = w.place(&RxRequest { id: 1, _pad: 0xffff, gref: 2 }).unwrap();
    assert_eq!(p.response(), RxResponse { id: 1, offset: 0, flags: 0, status: 60 });
}

// --- Front, tx ---------------------------------------------------------------

fn tp(gref: u32, offset: u16, len: u16) -> TxPiece {
    TxPiece { gref, offset, len }
}

#[test]
fn tx_submit_builds_xens_chain() {
    let mut t = TxInflight::<8>::new();
    let reqs = t
        .submit_frame(&[tp(1, 10, 100), tp(2, 0, 50), tp(3, 7, 25)], TxFlags { csum_blank: true, ..TxFlags::default() })
        .unwrap();
    let r = reqs.as_slice();
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].gref, r[0].offset, r[0].size, r[0].flags), (1, 10, 175, MORE | tx_flags::CSUM_BLANK));
    assert_eq!((r[1].gref, r[1].size, r[1].flags), (2, 50, MORE));
    assert_eq!((r[2].gref, r[2].offset, r[2].size, r[2].flags), (3, 7, 25, 0));
    assert_eq!(t.in_flight(), 3);
    let ids: BTreeSet<u16> = r.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 3, "distinct ids");
}

#[test]
fn tx_submit_rules() {
    let mut t = TxInflight::<4>::new();
    let f = TxFlags::default();
    assert_eq!(t.submit_frame(&[], f), Err(SubmitError::BadPieceCount { pieces: 0 }));
    let many = [tp(0, 0, 100); MAX_SLOTS_PER_FRAME + 1];
    assert_eq!(t.submit_frame(&many, f), Err(SubmitError::BadPieceCount { pieces: 19 }));
    assert_eq!(t.submit_frame(&[tp(0, 0, 60), tp(0, 0, 0)], f), Err(SubmitError::BadPiece { index: 1 }));
    assert_eq!(t.submit_frame(&[tp(0, 4000, 97)], f), Err(SubmitError::BadPiece { index: 0 }));
    assert_eq!(t.submit_frame(&[tp(0, 0, 13), tp(0, 0, 100)], f), Err(SubmitError::HeaderNotInFirstPiece));
    assert_eq!(t.submit_frame(&[tp(0, 0, 1000), tp(0, 0, 523)], f), Err(SubmitError::BadFrameLength { len: 1523 }));
    // Full: all or nothing.
    t.submit_frame(&[tp(0, 0, 60), tp(1, 0, 60)], f).unwrap();
    assert_eq!(t.submit_frame(&[tp(2, 0, 60), tp(3, 0, 60), tp(4, 0, 60)], f), Err(SubmitError::Full));
    assert_eq!((t.in_flight(), t.free()), (2, 2));
    assert!(t.submit_frame(&[tp(2, 0, 60), tp(3, 0, 60)], f).is_ok());
}

#[test]
fn tx_response_ids() {
    let mut t = TxInflight::<4>::with_salt(0x1234);
    let r = t.submit_frame(&[tp(9, 0, 60)], TxFlags::default()).unwrap().as_slice()[0];
    assert_ne!(r.id, 0, "salted");
    let ok = TxResponse { id: r.id, status: 0 };
    assert_eq!(t.complete(TxResponse { id: r.id ^ 1, status: 0 }), Err(BadResponse::NotInFlight { id: r.id ^ 1 }));
    assert_eq!(t.complete(ok), Ok(TxCompleted { id: r.id, gref: 9, status: TxStatus::Okay }));
    assert_eq!(t.complete(ok), Err(BadResponse::NotInFlight { id: r.id }), "duplicate");
    // The index is reused with a new generation: the old id is stale.
    let r2 = t.submit_frame(&[tp(10, 0, 60)], TxFlags::default()).unwrap().as_slice()[0];
    assert_ne!(r2.id, r.id);
    assert_eq!(t.complete(ok), Err(BadResponse::NotInFlight { id: r.id }), "stale");
    assert_eq!(t.in_flight(), 1);
}

#[test]
fn wire_ids_of_one_index_repeat_only_after_256_uses() {
    // One request at a time reuses index 0; the wire id carries the low 8
    // bits of its generation, as the module docs say.
    let mut t = TxInflight::<TX_RING_SLOTS>::with_salt(0x0f0f);
    let mut seen = Vec::new();
    for _ in 0..=256 {
        let id = t.submit_frame(&[tp(1, 0, 60)], TxFlags::default()).unwrap().as_slice()[0].id;
        seen.push(id);
        t.complete(TxResponse { id, status: 0 }).unwrap();
    }
    let distinct: BTreeSet<u16> = seen[..256].iter().copied().collect();
    assert_eq!(distinct.len(), 256, "no repeat within 256 uses");
    assert_eq!(seen[256], seen[0], "the 257th use repeats the first");
}

#[test]
fn tx_response_unknown_index() {
    // N = 3 is not a power of two: index 3 is not ours.
    let mut t = TxInflight::<3>::new();
    t.submit_frame(&[tp(1, 0, 60)], TxFlags::default()).unwrap();
    assert_eq!(t.complete(TxResponse { id: 3, status: 0 }), Err(BadResponse::UnknownId { id: 3 }));
    assert_eq!(t.in_flight(), 1);
}

#[test]
fn tx_response_status() {
    let mut t = TxInflight::<4>::new();
    let id = t.submit_frame(&[tp(1, 0, 60)], TxFlags::default()).unwrap().as_slice()[0].id;
    for status in [2, -3, i16::MIN, i16::MAX] {
        assert_eq!(t.complete(TxResponse { id, status }), Err(BadResponse::BadTxStatus { id, status }));
    }
    assert_eq!(t.complete(TxResponse { id, status: TxStatus::NULL }), Err(BadResponse::UnexpectedNull { id }));
    assert_eq!(t.in_flight(), 1, "unchanged on every error");
    assert_eq!(t.complete(TxResponse { id, status: 0 }).unwrap().gref, 1, "still completes");
}

#[test]
fn tx_every_status_but_null_completes() {
    for (status, want) in [(-1, TxStatus::Error), (-2, TxStatus::Dropped), (0, TxStatus::Okay)] {
        let mut t = TxInflight::<4>::new();
        let id = t.submit_frame(&[tp(1, 0, 60)], TxFlags::default()).unwrap().as_slice()[0].id;
        assert_eq!(t.complete(TxResponse { id, status }).unwrap().status, want);
        assert_eq!(t.in_flight(), 0);
    }
}

#[test]
fn tx_abandon_releases_exactly_what_is_in_flight() {
    let mut t = TxInflight::<8>::new();
    let a = t.submit_frame(&[tp(1, 0, 60), tp(2, 0, 60)], TxFlags::default()).unwrap();
    t.submit_frame(&[tp(3, 0, 60)], TxFlags::default()).unwrap();
    t.complete(TxResponse { id: a.as_slice()[1].id, status: 0 }).unwrap();
    let mut grefs: Vec<u32> = core::iter::from_fn(|| t.abandon_next().map(|(_, g)| g)).collect();
    grefs.sort();
    assert_eq!(grefs, [1, 3]);
    assert_eq!(t.in_flight(), 0);
}

// --- Front, rx ---------------------------------------------------------------

fn rxrsp(id: u16, offset: u16, flags: u16, status: i16) -> RxResponse {
    RxResponse { id, offset, flags, status }
}

#[test]
fn rx_frames_one_and_two_slots() {
    let mut t = RxInflight::<8>::with_salt(0xbeef);
    let a = t.post(1).unwrap();
    let b = t.post(2).unwrap();
    let c = t.post(3).unwrap();
    assert_eq!(t.posted(), 3);
    let RxStep::Frame(f) = t.complete(rxrsp(b.id, 2, rx_flags::CSUM_BLANK, 60)).unwrap() else { panic!() };
    assert_eq!(
        (f.len(), f.chunks(), f.flags()),
        (60, &[RxChunk { gref: 2, offset: 2, len: 60 }][..], RxFlags { csum_blank: true, data_validated: false })
    );
    assert_eq!(t.complete(rxrsp(c.id, 3000, rx_flags::MORE_DATA, 1096)), Ok(RxStep::More));
    assert_eq!((t.posted(), t.held()), (1, 1));
    let RxStep::Frame(f) = t.complete(rxrsp(a.id, 0, 0, 404)).unwrap() else { panic!() };
    assert_eq!(f.len(), 1500);
    let chunks: Vec<_> = f.chunks().iter().map(|c| (c.gref, c.range())).collect();
    assert_eq!(chunks, [(3, 3000..4096), (1, 0..404)]);
    assert_eq!((t.posted(), t.held()), (0, 0));
}

/// `t` with one buffer (gref 7) posted; its id.
fn one_posted() -> (RxInflight<4>, u16) {
    let mut t = RxInflight::<4>::new();
    let id = t.post(7).unwrap().id;
    (t, id)
}

fn assert_refused(t: &mut RxInflight<4>, rsp: RxResponse, want: BadResponse) {
    let (posted, held) = (t.posted(), t.held());
    assert_eq!(t.complete(rsp), Err(want));
    assert_eq!((t.posted(), t.held()), (posted, held), "unchanged");
}

#[test]
fn rx_response_ids() {
    let (mut t, id) = one_posted();
    assert_refused(&mut t, rxrsp(id ^ 2, 0, 0, 60), BadResponse::NotInFlight { id: id ^ 2 });
    assert!(t.complete(rxrsp(id, 0, 0, 60)).is_ok());
    assert_refused(&mut t, rxrsp(id, 0, 0, 60), BadResponse::NotInFlight { id });
    let mut t3 = RxInflight::<3>::new();
    t3.post(1).unwrap();
    assert_eq!(t3.complete(rxrsp(3, 0, 0, 60)), Err(BadResponse::UnknownId { id: 3 }));
}

#[test]
fn rx_response_flags() {
    let (mut t, id) = one_posted();
    for flags in [rx_flags::EXTRA_INFO, rx_flags::GSO_PREFIX, 0x8000] {
        assert_refused(&mut t, rxrsp(id, 0, flags, 60), BadResponse::UnknownRxFlags { id, flags });
    }
}

#[test]
fn rx_response_status() {
    let (mut t, id) = one_posted();
    for status in [0, -3, i16::MIN] {
        assert_refused(&mut t, rxrsp(id, 0, 0, status), BadResponse::BadRxStatus { id, status });
    }
}

#[test]
fn rx_response_offset_and_length_in_page() {
    let (mut t, id) = one_posted();
    assert_refused(&mut t, rxrsp(id, 4096, 0, 60), BadResponse::OffsetBeyondPage { id, offset: 4096 });
    assert_refused(&mut t, rxrsp(id, u16::MAX, 0, 60), BadResponse::OffsetBeyondPage { id, offset: u16::MAX });
    assert_refused(&mut t, rxrsp(id, 4037, 0, 60), BadResponse::LengthBeyondPage { id, offset: 4037, len: 60 });
    assert_refused(
        &mut t,
        rxrsp(id, 0, 0, i16::MAX),
        BadResponse::LengthBeyondPage { id, offset: 0, len: i16::MAX as u16 },
    );
    assert!(matches!(t.complete(rxrsp(id, 4036, 0, 60)), Ok(RxStep::Frame(_))));
}

#[test]
fn rx_response_frame_length() {
    let (mut t, id) = one_posted();
    assert_refused(&mut t, rxrsp(id, 0, 0, 13), BadResponse::FrameTooShort { id, len: 13 });
    assert_refused(&mut t, rxrsp(id, 0, 0, 1523), BadResponse::FrameTooLong { id, len: 1523 });
    // Across slots.
    let mut t = RxInflight::<4>::new();
    let a = t.post(1).unwrap().id;
    let b = t.post(2).unwrap().id;
    assert_eq!(t.complete(rxrsp(a, 0, rx_flags::MORE_DATA, 1000)), Ok(RxStep::More));
    assert_refused(&mut t, rxrsp(b, 0, 0, 523), BadResponse::FrameTooLong { id: b, len: 1523 });
    // A short frame may end in a later slot: 10 + 4 bytes.
    let mut t = RxInflight::<4>::new();
    let a = t.post(1).unwrap().id;
    let b = t.post(2).unwrap().id;
    assert_eq!(t.complete(rxrsp(a, 0, rx_flags::MORE_DATA, 10)), Ok(RxStep::More));
    assert_refused(&mut t, rxrsp(b, 0, 0, 3), BadResponse::FrameTooShort { id: b, len: 13 });
    assert!(matches!(t.complete(rxrsp(b, 0, 0, 4)), Ok(RxStep::Frame(f)) if f.len() == 14));
}

#[test]
fn rx_response_chain_limit() {
    let mut t = RxInflight::<32>::new();
    let ids: Vec<u16> = (0..MAX_SLOTS_PER_FRAME as u32).map(|g| t.post(g).unwrap().id).collect();
    for &id in &ids[..MAX_SLOTS_PER_FRAME - 1] {
        assert_eq!(t.complete(rxrsp(id, 0, rx_flags::MORE_DATA, 1)), Ok(RxStep::More));
    }
    let last = ids[MAX_SLOTS_PER_FRAME - 1];
    let (posted, held) = (t.posted(), t.held());
    assert_eq!(t.complete(rxrsp(last, 0, rx_flags::MORE_DATA, 1)), Err(BadResponse::ChainTooLong { id: last }));
    assert_eq!((t.posted(), t.held()), (posted, held));
    let RxStep::Frame(f) = t.complete(rxrsp(last, 0, 0, 1)).unwrap() else { panic!() };
    assert_eq!((f.len(), f.chunks().len()), (18, 18));
}

#[test]
fn rx_error_status_drops_the_whole_frame() {
    let mut t = RxInflight::<4>::new();
    let a = t.post(1).unwrap().id;
    let b = t.post(2).unwrap().id;
    let c = t.post(3).unwrap().id;
    assert_eq!(t.complete(rxrsp(a, 0, rx_flags::MORE_DATA, 1000)), Ok(RxStep::More));
    // Offsets of error responses are not data: not checked.
    assert_eq!(t.complete(rxrsp(b, 9999, rx_flags::MORE_DATA, -2)), Ok(RxStep::More));
    let RxStep::Dropped(d) = t.complete(rxrsp(c, 0, 0, 5)).unwrap() else { panic!() };
    assert_eq!((d.grefs.as_slice(), d.status), (&[1, 2, 3][..], RxStatus::Dropped));
    // A lone error response: no frame-length check.
    let d2 = t.post(4).unwrap().id;
    assert!(matches!(t.complete(rxrsp(d2, 0, 0, -1)), Ok(RxStep::Dropped(RxDropped { status: RxStatus::Error, .. }))));
}

#[test]
fn rx_abandon_releases_posted_and_held_buffers() {
    let mut t = RxInflight::<4>::new();
    let a = t.post(1).unwrap().id;
    t.post(2).unwrap();
    t.post(3).unwrap();
    assert_eq!(t.complete(rxrsp(a, 0, rx_flags::MORE_DATA, 100)), Ok(RxStep::More));
    let mut grefs: Vec<u32> = core::iter::from_fn(|| t.abandon_next()).collect();
    grefs.sort();
    assert_eq!(grefs, [1, 2, 3]);
    assert_eq!((t.posted(), t.held()), (0, 0));
}

// --- Proptests -----------------------------------------------------------

/// A hostile tx request: fields biased towards the edges of each check.
fn any_txreq() -> impl Strategy<Value = TxRequest> {
    let flags = prop_oneof![
        4 => Just(MORE),
        4 => Just(0u16),
        1 => Just(tx_flags::CSUM_BLANK | MORE),
        1 => Just(tx_flags::EXTRA_INFO),
        1 => any::<u16>(),
    ];
    let offset = prop_oneof![3 => Just(0u16), 2 => 0u16..4096, 1 => 4000u16..4200, 1 => any::<u16>()];
    let size = prop_oneof![3 => 1u16..200, 2 => 0u16..1600, 1 => any::<u16>()];
    (any::<u32>(), offset, flags, size).prop_map(|(gref, offset, flags, size)| TxRequest {
        gref,
        offset,
        flags,
        id: 0,
        size,
    })
}

/// A chain a front might send, of `1..=22` requests (longer than the
/// limit sometimes), each with a small chance of one hostile field.
fn any_chain() -> impl Strategy<Value = Vec<TxRequest>> {
    (60u16..=1522, proptest::collection::vec((1u16..=60, 0u16..4000, any::<u8>()), 0..22)).prop_map(|(size, rest)| {
        let mut reqs = std::vec![TxRequest { gref: 1, offset: 0, flags: MORE, id: 0, size }];
        for (len, offset, spoil) in rest {
            let mut r = TxRequest { gref: 2, offset, flags: MORE, id: 0, size: len };
            match spoil {
                0 => r.size = 0,
                1 => r.offset = 4090,
                2 => r.flags |= 0x40,
                _ => {}
            }
            reqs.push(r);
        }
        if let Some(last) = reqs.last_mut() {
            last.flags &= !MORE;
        }
        reqs
    })
}

proptest! {
    /// (a) Any request stream: the assembler never panics, every request
    /// taken is answered exactly once, in order, and every frame it
    /// accepts obeys the protocol's limits.
    #[test]
    fn prop_assembler_answers_every_request_once(
        reqs in proptest::collection::vec(
            prop_oneof![
                1 => proptest::collection::vec(any_txreq(), 1..20),
                1 => any_chain(),
            ],
            0..40,
        ).prop_map(|runs| runs.concat()),
    ) {
        let mut asm = TxAssembler::new();
        let mut answered: Vec<u16> = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            let req = TxRequest { id: i as u16, ..*req };
            match asm.push(&req) {
                TxStep::NeedMore => prop_assert!(asm.pending_ids().len() < MAX_SLOTS_PER_FRAME),
                TxStep::Refused(r) => {
                    prop_assert!(!r.ids().is_empty() && r.ids().len() <= MAX_SLOTS_PER_FRAME);
                    prop_assert!(r.responses().all(|rsp| rsp.status == TxStatus::ERROR));
                    answered.extend(r.ids());
                }
                TxStep::Frame(f) => {
                    prop_assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&f.len()));
                    prop_assert_eq!(f.slots().len(), f.ids().len());
                    prop_assert!(f.slots().iter().all(|s| !s.range().is_empty() && s.range().end <= PAGE_SIZE));
                    prop_assert!(f.slots()[0].len() >= ETH_HLEN);
                    prop_assert_eq!(f.slots().iter().map(ValidTxSlot::len).sum::<usize>(), f.len());
                    answered.extend(f.ids());
                }
            }
            prop_assert!(asm.is_idle() || asm.pending_ids().last() == Some(&(i as u16)));
        }
        answered.extend(asm.pending_ids());
        let taken: Vec<u16> = (0..reqs.len() as u16).collect();
        prop_assert_eq!(answered, taken);
    }
}

/// Pieces of a frame a front might build: the first holds the header,
/// each lies in its page, the total is a legal frame length.
fn any_frame_pieces() -> impl Strategy<Value = Vec<TxPiece>> {
    let piece = (any::<u32>(), 0u16..4096, 1u16..=400).prop_map(|(gref, offset, len)| {
        let len = len.min(4096 - offset).max(1);
        let offset = offset.min(4096 - len);
        TxPiece { gref, offset, len }
    });
    (piece.clone(), ETH_HLEN as u16..=1522, proptest::collection::vec(piece, 0..MAX_SLOTS_PER_FRAME)).prop_map(
        |(first, first_len, rest)| {
            let first_len = first_len.min(4096 - first.offset).max(ETH_HLEN as u16);
            let first = TxPiece { offset: first.offset.min(4096 - first_len), len: first_len, ..first };
            let mut total = usize::from(first.len);
            let mut pieces = std::vec![first];
            for p in rest {
                if total + usize::from(p.len) > MAX_FRAME_LEN {
                    break;
                }
                total += usize::from(p.len);
                pieces.push(p);
            }
            pieces
        },
    )
}

/// A contiguous frame of `len` bytes from `offset` of the first of
/// consecutive pages, split at page boundaries (as a netfront does).
fn contiguous_pieces(offset: usize, len: usize, first_gref: u32) -> Vec<TxPiece> {
    let mut pieces = Vec::new();
    let (mut off, mut left, mut gref) = (offset, len, first_gref);
    while left > 0 {
        let n = left.min(PAGE_SIZE - off);
        pieces.push(TxPiece { gref, offset: off as u16, len: n as u16 });
        left -= n;
        off = 0;
        gref = gref.wrapping_add(1);
    }
    pieces
}

proptest! {
    /// (b) A front-built frame always validates on the back, which
    /// reassembles the same pieces; the back's answers complete exactly
    /// the frame's requests with their grants.
    #[test]
    fn prop_front_frames_round_trip(
        pieces in prop_oneof![
            any_frame_pieces(),
            (0usize..PAGE_SIZE - ETH_HLEN, MIN_FRAME_LEN..=MAX_FRAME_LEN, any::<u32>())
                .prop_map(|(o, l, g)| contiguous_pieces(o, l, g)),
        ],
        csum_blank in any::<bool>(),
        data_validated in any::<bool>(),
        salt in any::<u16>(),
        busy in 0usize..200,
    ) {
        let flags = TxFlags { csum_blank, data_validated };
        let mut t = TxInflight::<TX_RING_SLOTS>::with_salt(salt);
        for _ in 0..busy {
            t.submit_frame(&[tp(0, 0, 60)], TxFlags::default()).unwrap();
        }
        let reqs = t.submit_frame(&pieces, flags).unwrap();
        let mut asm = TxAssembler::new();
        let mut frame = None;
        for (i, r) in reqs.as_slice().iter().enumerate() {
            match asm.push(r) {
                TxStep::NeedMore => prop_assert!(i + 1 < reqs.len()),
                TxStep::Frame(f) => { prop_assert_eq!(i + 1, reqs.len()); frame = Some(f); }
                TxStep::Refused(r) => prop_assert!(false, "refused: {:?}", r.error()),
            }
        }
        let f = frame.unwrap();
        let got: Vec<TxPiece> = f.slots().iter().map(|s| tp(s.gref(), s.offset() as u16, s.len() as u16)).collect();
        prop_assert_eq!(&got, &pieces);
        prop_assert_eq!(f.len(), pieces.iter().map(|p| usize::from(p.len)).sum::<usize>());
        prop_assert_eq!(f.flags(), flags);
        let mut grefs = Vec::new();
        for rsp in f.responses(TxStatus::Okay) {
            grefs.push(t.complete(rsp).unwrap().gref);
        }
        prop_assert_eq!(grefs, pieces.iter().map(|p| p.gref).collect::<Vec<_>>());
        prop_assert_eq!(t.in_flight(), busy);
    }

    /// (b, rx) Any frame the back places arrives at the front as the same
    /// pieces, in the buffers the front posted.
    #[test]
    fn prop_rx_frames_round_trip(
        len in MIN_FRAME_LEN..=MAX_FRAME_LEN,
        offset in prop_oneof![Just(0usize), 0usize..PAGE_SIZE],
        csum_blank in any::<bool>(),
        data_validated in any::<bool>(),
        salt in any::<u16>(),
    ) {
        let flags = RxFlags { csum_blank, data_validated };
        let mut t = RxInflight::<RX_RING_SLOTS>::with_salt(salt);
        let posted: Vec<RxRequest> = (0..4u32).map(|g| t.post(100 + g).unwrap()).collect();
        let mut w = RxWriter::new(len, offset, flags).unwrap();
        prop_assert!(w.slots() <= posted.len());
        let mut steps = Vec::new();
        let mut places = Vec::new();
        for req in &posted {
            let Some(p) = w.place(req) else { break };
            places.push(p);
            steps.push(t.complete(p.response()).unwrap());
        }
        prop_assert_eq!(places.len(), w.slots());
        let (last, init) = steps.split_last().unwrap();
        prop_assert!(init.iter().all(|s| *s == RxStep::More));
        let RxStep::Frame(f) = last else { return Err(TestCaseError::fail("no frame")) };
        prop_assert_eq!(f.len(), len);
        prop_assert_eq!(f.flags(), flags);
        let want: Vec<_> = places.iter().map(|p| (p.gref(), p.range())).collect();
        let got: Vec<_> = f.chunks().iter().map(|c| (c.gref, c.range())).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(places.last().unwrap().frame_range().end, len);
        prop_assert_eq!(t.posted(), posted.len() - places.len());
    }
}

#[derive(Clone, Debug)]
enum TxStepOp {
    /// Submit a frame of this many pieces.
    Submit(u8),
    /// Answer the `n`-th in-flight request with a valid status.
    Answer(usize, i16),
    /// Answer an in-flight request with a bad status.
    BadStatus(usize, i16),
    /// Replay the `n`-th response ever accepted.
    Replay(usize),
    /// A response of random bytes.
    Garbage(u16, i16),
}

fn any_tx_op() -> impl Strategy<Value = TxStepOp> {
    prop_oneof![
        3 => (1u8..=4).prop_map(TxStepOp::Submit),
        3 => (any::<usize>(), -2i16..=0).prop_map(|(i, s)| TxStepOp::Answer(i, s)),
        1 => (any::<usize>(), prop_oneof![Just(1i16), any::<i16>()]).prop_map(|(i, s)| TxStepOp::BadStatus(i, s)),
        1 => any::<usize>().prop_map(TxStepOp::Replay),
        1 => (any::<u16>(), any::<i16>()).prop_map(|(i, s)| TxStepOp::Garbage(i, s)),
    ]
}

proptest! {
    /// (c, tx) Submit/complete against a reference map with hostile
    /// responses mixed in: good responses complete exactly their request
    /// with its grant, bad ones are refused and change nothing, and
    /// teardown releases exactly what is left.
    #[test]
    fn prop_tx_table_matches_model(
        salt in any::<u16>(),
        steps in proptest::collection::vec(any_tx_op(), 1..300),
    ) {
        const N: usize = 8;
        let mut t = TxInflight::<N>::with_salt(salt);
        let mut model: BTreeMap<u16, u32> = BTreeMap::new();
        let mut accepted: Vec<TxResponse> = Vec::new();
        let mut next_gref = 0u32;
        for step in steps {
            let live: Vec<u16> = model.keys().copied().collect();
            let pick = |i: usize| live.get(i % live.len().max(1)).copied();
            let rsp = match step {
                TxStepOp::Submit(n) => {
                    let pieces: Vec<TxPiece> = (0..n).map(|_| { next_gref += 1; tp(next_gref, 0, 100) }).collect();
                    match t.submit_frame(&pieces, TxFlags::default()) {
                        Ok(reqs) => {
                            for r in reqs.as_slice() {
                                prop_assert!(model.insert(r.id, r.gref).is_none(), "id reused while in flight");
                            }
                        }
                        Err(e) => {
                            prop_assert_eq!(e, SubmitError::Full);
                            prop_assert!(model.len() + usize::from(n) > N);
                        }
                    }
                    None
                }
                TxStepOp::Answer(i, s) => pick(i).map(|id| TxResponse { id, status: s }),
                TxStepOp::BadStatus(i, s) => pick(i).map(|id| TxResponse { id, status: if (-2..=0).contains(&s) { 1 } else { s } }),
                TxStepOp::Replay(i) => accepted.get(i % accepted.len().max(1)).copied(),
                TxStepOp::Garbage(id, s) => Some(TxResponse { id, status: s }),
            };
            if let Some(rsp) = rsp {
                let expect_ok = model.contains_key(&rsp.id) && (-2..=0).contains(&rsp.status);
                match t.complete(rsp) {
                    Ok(done) => {
                        prop_assert!(expect_ok);
                        prop_assert_eq!(model.remove(&rsp.id), Some(done.gref));
                        prop_assert_eq!(done.status.code(), rsp.status);
                        accepted.push(rsp);
                    }
                    Err(e) => {
                        prop_assert!(!expect_ok, "refused a good response: {:?}", e);
                    }
                }
            }
            prop_assert_eq!(t.in_flight(), model.len());
        }
        let mut left: Vec<(u16, u32)> = core::iter::from_fn(|| t.abandon_next()).collect();
        left.sort();
        prop_assert_eq!(left, model.into_iter().collect::<Vec<_>>());
    }
}

/// A hostile rx response for one of the posted ids (or any id), chained
/// with `more` in 32 of `more_data` being set.
fn any_rx_rsp(more: u32) -> impl Strategy<Value = (usize, Option<u16>, u16, u16, i16)> {
    (
        any::<usize>(),
        prop_oneof![8 => Just(None), 1 => any::<u16>().prop_map(Some)],
        prop_oneof![4 => Just(0u16), 2 => 0u16..4096, 1 => any::<u16>()],
        prop_oneof![32 - more => Just(0u16), more => Just(rx_flags::MORE_DATA), 2 => any::<u16>()],
        prop_oneof![4 => 1i16..100, 2 => 1i16..800, 1 => -3i16..=0, 1 => any::<i16>()],
    )
}

proptest! {
    /// (c, rx) Hostile responses never corrupt the rx table: a refused
    /// response changes nothing, an accepted one moves exactly one posted
    /// buffer into the frame, every frame handed out obeys the limits,
    /// and every posted gref comes back exactly once (in a frame, a drop,
    /// or at teardown).
    #[test]
    fn prop_rx_table_conserves_buffers(
        salt in any::<u16>(),
        (steps, _more) in prop_oneof![Just(12u32), Just(31u32)].prop_flat_map(|more| {
            (proptest::collection::vec((any::<bool>(), any_rx_rsp(more)), 1..300), Just(more))
        }),
    ) {
        const N: usize = 32;
        let mut t = RxInflight::<N>::with_salt(salt);
        let mut posted: BTreeMap<u16, u32> = BTreeMap::new();
        let mut returned: BTreeSet<u32> = BTreeSet::new();
        let mut next_gref = 0u32;
        for (post, (pick, forged, offset, flags, status)) in steps {
            if post {
                match t.post(next_gref) {
                    Ok(req) => {
                        prop_assert_eq!(req.gref, next_gref);
                        prop_assert!(posted.insert(req.id, next_gref).is_none());
                        next_gref += 1;
                    }
                    Err(e) => {
                        prop_assert_eq!(e, SubmitError::Full);
                        prop_assert_eq!(t.posted(), N);
                    }
                }
                continue;
            }
            let live: Vec<u16> = posted.keys().copied().collect();
            let id = match forged {
                Some(id) => id,
                None => match live.get(pick % live.len().max(1)) { Some(&id) => id, None => continue },
            };
            let (before_posted, before_held) = (t.posted(), t.held());
            match t.complete(RxResponse { id, offset, flags, status }) {
                Err(_) => prop_assert_eq!((t.posted(), t.held()), (before_posted, before_held)),
                Ok(step) => {
                    prop_assert!(posted.remove(&id).is_some(), "accepted an id not posted");
                    prop_assert_eq!(t.posted(), before_posted - 1);
                    match step {
                        RxStep::More => prop_assert_eq!(t.held(), before_held + 1),
                        RxStep::Frame(f) => {
                            prop_assert_eq!(t.held(), 0);
                            prop_assert_eq!(f.chunks().len(), before_held + 1);
                            prop_assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&f.len()));
                            prop_assert!(f.chunks().iter().all(|c| c.len >= 1 && c.range().end <= PAGE_SIZE));
                            prop_assert_eq!(f.chunks().iter().map(|c| usize::from(c.len)).sum::<usize>(), f.len());
                            for c in f.chunks() {
                                prop_assert!(returned.insert(c.gref), "gref returned twice");
                            }
                        }
                        RxStep::Dropped(d) => {
                            prop_assert_eq!(t.held(), 0);
                            prop_assert_eq!(d.grefs.len(), before_held + 1);
                            for &g in d.grefs.as_slice() {
                                prop_assert!(returned.insert(g), "gref returned twice");
                            }
                        }
                    }
                    prop_assert!(t.held() < MAX_SLOTS_PER_FRAME);
                }
            }
        }
        for g in core::iter::from_fn(|| t.abandon_next()) {
            prop_assert!(returned.insert(g), "gref returned twice");
        }
        prop_assert_eq!(returned, (0..next_gref).collect::<BTreeSet<u32>>());
        prop_assert_eq!((t.posted(), t.held()), (0, 0));
    }
}
