//! A hostile peer: it writes arbitrary indices and rewrites slots after
//! publishing them. The honest side must stay inside its region, report
//! violations as a latched `RingError` (R4, R10), and keep the copy it took
//! of each slot (R6).
#![cfg(not(loom))]

mod common;

use common::Pages;
use proptest::prelude::*;
use ring_protocol::{
    ring_bytes, stream_bytes, Back, Front, PushError, RingError, StreamConsumer, StreamProducer, HEADER_SIZE,
};

const GUARD: usize = 4096;
const CANARY: u8 = 0xa5;

/// A region of `len` bytes with canary pages on both sides.
fn guarded(len: usize) -> Pages {
    let pages = Pages::new(GUARD + len + GUARD);
    pages.write_bytes(0, &[CANARY; GUARD]);
    pages.write_bytes(GUARD + len, &[CANARY; GUARD]);
    pages
}

fn canaries_intact(pages: &Pages, len: usize) -> bool {
    pages.read_bytes(0, GUARD).iter().all(|&b| b == CANARY)
        && pages.read_bytes(GUARD + len, GUARD).iter().all(|&b| b == CANARY)
}

// Index word offsets inside a region (RingHeader / StreamHeader).
const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 128;
const RSP_EVENT: usize = 132;
const PROD: usize = 0;
const CONS: usize = 128;

#[derive(Clone, Copy, Debug)]
enum Evil {
    /// Set the producer index to our consumer index + delta.
    Prod(u32),
    /// Set the producer index to anything.
    ProdRaw(u32),
    /// Rewrite a slot (maybe one already published or being consumed).
    Scribble(u8, u64),
    /// Set the event index to anything.
    Event(u32),
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Evil(Evil),
    Pop,
    Drain,
    Respond(u8),
    Publish,
    Final(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u32..20).prop_map(|d| Step::Evil(Evil::Prod(d))),
        any::<u32>().prop_map(|p| Step::Evil(Evil::ProdRaw(p))),
        (any::<u8>(), any::<u64>()).prop_map(|(s, v)| Step::Evil(Evil::Scribble(s, v))),
        any::<u32>().prop_map(|e| Step::Evil(Evil::Event(e))),
        Just(Step::Pop),
        Just(Step::Drain),
        (1u8..4).prop_map(Step::Respond),
        Just(Step::Publish),
        (1u8..6).prop_map(Step::Final),
    ]
}

/// The honest back against a hostile front.
fn run_back(cap: u32, start: u32, steps: &[Step]) -> Result<(), TestCaseError> {
    let len = ring_bytes::<u64, u64>(cap);
    let pages = guarded(len);
    let region = pages.mem_at(GUARD, len);
    let _front = Front::<u64, u64>::init_at(region, start).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem_at(GUARD, len)).unwrap();

    // Our mirror of the back's counters and of what each slot holds.
    let mut cons = start;
    let mut answered = start;
    let mut slots = vec![0u64; cap as usize];
    let mut latched: Option<RingError> = None;
    let slot_off = |i: u32| GUARD + HEADER_SIZE + (i & (cap - 1)) as usize * 8;
    let violates = |prod: u32, cons: u32, answered: u32| prod.wrapping_sub(cons) > cap - cons.wrapping_sub(answered);

    for &s in steps {
        let before = pages.read_bytes(GUARD, len);
        let result: Result<(), RingError> = match s {
            Step::Evil(e) => {
                match e {
                    Evil::Prod(d) => pages.store_u32(GUARD + REQ_PROD, cons.wrapping_add(d)),
                    Evil::ProdRaw(p) => pages.store_u32(GUARD + REQ_PROD, p),
                    Evil::Scribble(slot, v) => {
                        let i = u32::from(slot) % cap;
                        pages.write_bytes(slot_off(i), &v.to_le_bytes());
                        slots[i as usize] = v;
                    }
                    Evil::Event(v) => pages.store_u32(GUARD + RSP_EVENT, v),
                }
                continue;
            }
            Step::Pop => back.pop_request().map(|got| {
                if let Some(v) = got {
                    // R6: we got exactly what the slot held when we read it.
                    assert_eq!(v, slots[(cons & (cap - 1)) as usize]);
                    cons = cons.wrapping_add(1);
                }
            }),
            Step::Drain => back.requests().map(|it| {
                let mut taken = Vec::new();
                for v in it {
                    assert_eq!(v, slots[(cons & (cap - 1)) as usize]);
                    // The peer rewrites the slot right after our copy: the
                    // copy we hold does not change.
                    pages.write_bytes(slot_off(cons), &(!v).to_le_bytes());
                    slots[(cons & (cap - 1)) as usize] = !v;
                    taken.push(v);
                    cons = cons.wrapping_add(1);
                }
                for (k, v) in taken.iter().enumerate() {
                    let i = cons.wrapping_sub(taken.len() as u32).wrapping_add(k as u32);
                    assert_eq!(!*v, slots[(i & (cap - 1)) as usize]);
                }
            }),
            Step::Respond(n) => {
                let mut r = Ok(());
                for _ in 0..n {
                    let resp = u64::from(answered) | 0xbeef << 32;
                    match back.try_push(resp) {
                        Ok(()) => {
                            assert_ne!(answered, cons, "answered an unconsumed request");
                            assert_eq!(pages.read_bytes(slot_off(answered), 8), resp.to_le_bytes());
                            slots[(answered & (cap - 1)) as usize] = resp;
                            answered = answered.wrapping_add(1);
                        }
                        Err(PushError::Full) => assert_eq!(answered, cons),
                        Err(PushError::Ring(e)) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                r
            }
            Step::Publish => back.push_and_check_notify().map(|_| ()),
            Step::Final(k) => back.final_check_for_requests_batched(u32::from(k)).map(|_| ()),
        };
        // R4: the back never holds more consumed-unanswered requests than slots.
        prop_assert!(cons.wrapping_sub(answered) <= cap);
        match (result, latched) {
            (Ok(()), None) => {}
            (Err(e), None) => {
                // An error is only ever reported for a real violation.
                let prod = pages.load_u32(GUARD + REQ_PROD);
                prop_assert!(violates(prod, cons, answered), "{e:?} for prod {prod}");
                prop_assert_eq!(back.error(), Some(e));
                latched = Some(e);
            }
            (Err(e), Some(first)) => {
                // R10: latched, same error, and nothing written.
                prop_assert_eq!(e, first);
                let after = pages.read_bytes(GUARD, len);
                prop_assert!(before == after, "latched endpoint wrote to the ring");
            }
            (Ok(()), Some(_)) => prop_assert!(false, "latched endpoint succeeded"),
        }
    }
    prop_assert!(canaries_intact(&pages, len));
    Ok(())
}

/// The honest front against a hostile back.
fn run_front(cap: u32, start: u32, steps: &[Step]) -> Result<(), TestCaseError> {
    let len = ring_bytes::<u64, u64>(cap);
    let pages = guarded(len);
    let mut front = Front::<u64, u64>::init_at(pages.mem_at(GUARD, len), start).unwrap();
    let slot_off = |i: u32| GUARD + HEADER_SIZE + (i & (cap - 1)) as usize * 8;
    let mut published = start; // req_prod
    let mut written = start; // req_prod_pvt
    let mut rsp_cons = start;
    let mut slots = vec![0u64; cap as usize];
    let mut latched: Option<RingError> = None;

    for &s in steps {
        let before = pages.read_bytes(GUARD, len);
        let result: Result<(), RingError> = match s {
            Step::Evil(e) => {
                match e {
                    Evil::Prod(d) => pages.store_u32(GUARD + RSP_PROD, rsp_cons.wrapping_add(d)),
                    Evil::ProdRaw(p) => pages.store_u32(GUARD + RSP_PROD, p),
                    Evil::Scribble(slot, v) => {
                        let i = u32::from(slot) % cap;
                        pages.write_bytes(slot_off(i), &v.to_le_bytes());
                        slots[i as usize] = v;
                    }
                    Evil::Event(v) => pages.store_u32(GUARD + REQ_EVENT, v),
                }
                continue;
            }
            Step::Pop | Step::Drain => front.pop_response().map(|got| {
                if let Some(v) = got {
                    assert_eq!(v, slots[(rsp_cons & (cap - 1)) as usize]);
                    rsp_cons = rsp_cons.wrapping_add(1);
                }
            }),
            Step::Respond(n) => {
                // The front's turn to push requests.
                let mut r = Ok(());
                for _ in 0..n {
                    match front.try_push(u64::from(written)) {
                        Ok(()) => {
                            prop_assert!(written.wrapping_sub(rsp_cons) < cap);
                            slots[(written & (cap - 1)) as usize] = u64::from(written);
                            written = written.wrapping_add(1);
                        }
                        Err(PushError::Full) => prop_assert_eq!(written.wrapping_sub(rsp_cons), cap),
                        Err(PushError::Ring(e)) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                r
            }
            Step::Publish => front.push_and_check_notify().map(|_| published = written),
            Step::Final(k) => front.final_check_for_responses_batched(u32::from(k)).map(|_| ()),
        };
        match (result, latched) {
            (Ok(()), None) => {}
            (Err(e), None) => {
                let prod = pages.load_u32(GUARD + RSP_PROD);
                prop_assert!(
                    prod.wrapping_sub(rsp_cons) > published.wrapping_sub(rsp_cons),
                    "{e:?} for rsp_prod {prod}"
                );
                latched = Some(e);
            }
            (Err(e), Some(first)) => {
                prop_assert_eq!(e, first);
                prop_assert!(before == pages.read_bytes(GUARD, len));
            }
            (Ok(()), Some(_)) => prop_assert!(false, "latched endpoint succeeded"),
        }
    }
    prop_assert!(canaries_intact(&pages, len));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn r4_r6_r10_back_survives_hostile_front(
        cap in prop::sample::select(vec![1u32, 2, 4, 8]),
        start in prop_oneof![Just(0u32), (u32::MAX - 20)..=u32::MAX, any::<u32>()],
        steps in prop::collection::vec(step(), 1..200),
    ) {
        run_back(cap, start, &steps)?;
    }

    #[test]
    fn r4_r6_r10_front_survives_hostile_back(
        cap in prop::sample::select(vec![1u32, 2, 4, 8]),
        start in prop_oneof![Just(0u32), (u32::MAX - 20)..=u32::MAX, any::<u32>()],
        steps in prop::collection::vec(step(), 1..200),
    ) {
        run_front(cap, start, &steps)?;
    }

    /// R12: a stream consumer against a producer that writes any `prod`.
    #[test]
    fn r4_r10_stream_consumer_survives_hostile_producer(
        cap in prop::sample::select(vec![1u32, 4, 16]),
        prods in prop::collection::vec(prop_oneof![0u32..40, any::<u32>()], 1..60),
    ) {
        let len = stream_bytes::<u32>(cap);
        let pages = guarded(len);
        let mut rx = StreamConsumer::<u32>::init(pages.mem_at(GUARD, len)).unwrap();
        let mut cons = 0u32;
        let mut released = 0u32;
        let mut latched = None;
        for (i, &p) in prods.iter().enumerate() {
            pages.store_u32(GUARD + PROD, p);
            let r = rx.drain().map(|it| it.count() as u32);
            match (r, latched) {
                (Ok(n), None) => {
                    cons = cons.wrapping_add(n);
                    prop_assert!(cons.wrapping_sub(released) <= cap);
                    if i % 2 == 0 {
                        rx.release().unwrap();
                        released = cons;
                        prop_assert_eq!(pages.load_u32(GUARD + CONS), cons);
                    }
                }
                (Err(e), None) => {
                    prop_assert!(p.wrapping_sub(cons) > cap - cons.wrapping_sub(released));
                    latched = Some(e);
                }
                (Err(e), Some(first)) => prop_assert_eq!(e, first),
                (Ok(_), Some(_)) => prop_assert!(false, "latched endpoint succeeded"),
            }
        }
        prop_assert!(canaries_intact(&pages, len));
    }

    /// R12: a stream producer against a consumer that writes any `cons`.
    #[test]
    fn r4_r10_stream_producer_survives_hostile_consumer(
        cap in prop::sample::select(vec![1u32, 4, 16]),
        conss in prop::collection::vec(prop_oneof![0u32..40, any::<u32>()], 1..60),
    ) {
        let len = stream_bytes::<u32>(cap);
        let pages = guarded(len);
        let mut tx = StreamProducer::<u32>::init(pages.mem_at(GUARD, len)).unwrap();
        let mut prod = 0u32;
        // The producer assumes the ring full until it has read `cons`.
        let mut seen = 0u32.wrapping_sub(cap);
        let mut latched = None;
        for &c in &conss {
            pages.store_u32(GUARD + CONS, c);
            let r = tx.poll_space().and_then(|free| {
                let n = tx.push_iter(0..7)?;
                tx.publish()?;
                Ok((free, n))
            });
            match (r, latched) {
                (Ok((free, n)), None) => {
                    prop_assert_eq!(free, cap - prod.wrapping_sub(c));
                    prop_assert_eq!(n, free.min(7));
                    seen = c;
                    prod = prod.wrapping_add(n);
                    // Never more than a ring's worth ahead of what the consumer released.
                    prop_assert!(prod.wrapping_sub(seen) <= cap);
                    prop_assert_eq!(pages.load_u32(GUARD + PROD), prod);
                }
                (Err(e), None) => {
                    prop_assert!(c.wrapping_sub(seen) > prod.wrapping_sub(seen));
                    latched = Some(e);
                }
                (Err(e), Some(first)) => prop_assert_eq!(e, first),
                (Ok(_), Some(_)) => prop_assert!(false, "latched endpoint succeeded"),
            }
        }
        prop_assert!(canaries_intact(&pages, len));
    }
}

#[test]
fn r4_prod_overflow_latches_error() {
    let len = ring_bytes::<u64, u64>(4);
    let pages = Pages::new(len);
    let _front = Front::<u64, u64>::init(pages.mem()).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem()).unwrap();
    pages.store_u32(REQ_PROD, 5);
    let err = back.pop_request().unwrap_err();
    assert_eq!(err, RingError::ProdOverflow { prod: 5, cons: 0, limit: 4 });
    // Fixing the index does not unlatch.
    pages.store_u32(REQ_PROD, 1);
    assert_eq!(back.pop_request(), Err(err));
    assert_eq!(back.requests().err(), Some(err));
    assert_eq!(back.final_check_for_requests(), Err(err));
    assert_eq!(back.try_push(0), Err(PushError::Ring(err)));
    assert_eq!(back.push_and_check_notify(), Err(err));
}

#[test]
fn r4_prod_behind_cons_latches_error() {
    let len = ring_bytes::<u64, u64>(4);
    let pages = Pages::new(len);
    let _front = Front::<u64, u64>::init_at(pages.mem(), 10).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem()).unwrap();
    pages.store_u32(REQ_PROD, 12);
    assert!(back.pop_request().unwrap().is_some());
    assert!(back.pop_request().unwrap().is_some());
    pages.store_u32(REQ_PROD, 11); // went backwards
    assert!(matches!(back.pop_request(), Err(RingError::ProdOverflow { .. })));
}

#[test]
fn r4_more_responses_than_requests_latches_error() {
    let len = ring_bytes::<u64, u64>(4);
    let pages = Pages::new(len);
    let mut front = Front::<u64, u64>::init(pages.mem()).unwrap();
    front.try_push(1).unwrap();
    front.push_and_check_notify().unwrap();
    pages.store_u32(RSP_PROD, 2);
    assert_eq!(front.pop_response(), Err(RingError::RspOverflow { rsp_prod: 2, rsp_cons: 0, req_prod: 1 }));
    assert_eq!(front.try_push(2), Err(PushError::Ring(front.error().unwrap())));
}

#[test]
fn r11_poison_latches_a_bad_id() {
    let len = ring_bytes::<u64, u64>(4);
    let pages = Pages::new(len);
    let mut front = Front::<u64, u64>::init(pages.mem()).unwrap();
    front.poison(RingError::BadId { id: 99 });
    front.poison(RingError::Protocol);
    assert_eq!(front.error(), Some(RingError::BadId { id: 99 }));
    assert_eq!(front.push_and_check_notify(), Err(RingError::BadId { id: 99 }));
}

/// R9 regression (found by the property above): the back consumes a full
/// ring, queues responses without publishing them, consumes the slots the
/// front refilled, then does a batched final check. Its room computation
/// once underflowed there (a panic in debug builds); it must saturate.
#[test]
fn r9_final_check_after_unpublished_responses_does_not_underflow() {
    let steps = [
        Step::Evil(Evil::Prod(8)),
        Step::Drain,
        Step::Respond(3),
        Step::Evil(Evil::Prod(1)),
        Step::Evil(Evil::Scribble(0, 0)),
        Step::Final(1),
        Step::Pop,
        Step::Final(1),
    ];
    run_back(8, 0, &steps).unwrap();
}
