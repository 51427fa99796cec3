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
    let mut published = start;
    let mut slots = vec![0u64; cap as usize];
    let mut latched: Option<RingError> = None;
    let slot_off = |i: u32| GUARD + HEADER_SIZE + (i & (cap - 1)) as usize * 8;
    // R4: the bound counts the responses the back *published*.
    let violates = |prod: u32, cons: u32, published: u32| prod.wrapping_sub(cons) > cap - cons.wrapping_sub(published);

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
            Step::Publish => back.push_and_check_notify().map(|_| published = answered),
            Step::Final(k) => {
                let r = back.final_check_for_requests_batched(u32::from(k)).map(|_| ());
                if latched.is_none() {
                    // R9: the final check published our responses first.
                    prop_assert_eq!(pages.load_u32(GUARD + RSP_PROD), answered);
                    published = answered;
                }
                r
            }
        };
        // R4: the back never holds more consumed entries than slots beyond
        // what it published (so never a slot with an unpublished response).
        prop_assert!(cons.wrapping_sub(published) <= cap);
        match (result, latched) {
            (Ok(()), None) => {}
            (Err(e), None) => {
                // An error is only ever reported for a real violation.
                let prod = pages.load_u32(GUARD + REQ_PROD);
                prop_assert!(violates(prod, cons, published), "{e:?} for prod {prod}");
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
            Step::Final(k) => {
                let r = front.final_check_for_responses_batched(u32::from(k)).map(|_| ());
                if latched.is_none() {
                    // R9: the final check published our requests first.
                    prop_assert_eq!(pages.load_u32(GUARD + REQ_PROD), written);
                    published = written;
                }
                r
            }
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

/// R4: a request slot is free for the front only once the back published
/// the response in it. The back consumed a full ring and answered it
/// without publishing; a front that claims one more request claims a slot
/// that still holds an unpublished response, and is refused.
#[test]
fn r4_back_refuses_slots_holding_unpublished_responses() {
    let len = ring_bytes::<u64, u64>(4);
    let pages = Pages::new(len);
    let _front = Front::<u64, u64>::init_at(pages.mem(), u32::MAX - 1).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem()).unwrap();
    let start = u32::MAX - 1;
    pages.store_u32(REQ_PROD, start.wrapping_add(4));
    for _ in 0..4 {
        let req = back.pop_request().unwrap().unwrap();
        back.try_push(req).unwrap();
    }
    assert_eq!(back.unanswered(), 0);
    pages.store_u32(REQ_PROD, start.wrapping_add(5));
    assert_eq!(
        back.pop_request(),
        Err(RingError::ProdOverflow { prod: start.wrapping_add(5), cons: start.wrapping_add(4), limit: 0 })
    );

    // Once published, the same slot may be claimed again.
    let pages = Pages::new(len);
    let _front = Front::<u64, u64>::init_at(pages.mem(), start).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem()).unwrap();
    pages.store_u32(REQ_PROD, start.wrapping_add(4));
    assert_eq!(back.serve_up_to(4, |r| r).unwrap(), 4);
    back.publish().unwrap();
    pages.store_u32(REQ_PROD, start.wrapping_add(5));
    assert!(back.pop_request().unwrap().is_some());
}

/// How a documented consume loop takes entries.
#[derive(Clone, Copy, Debug)]
enum Take {
    /// `while let Some(x) = pop()? { .. }`
    Pop,
    /// `loop { let batch = requests()?/drain()?; if empty break; .. }`
    Drain,
    /// As `Drain`, with `*_up_to(n)` / `drain_up_to(n)`.
    UpTo(u8),
    /// `while back.serve_up_to(n, f)? > 0 {}` (back only).
    Serve(u8),
}

fn take() -> impl Strategy<Value = Take> {
    prop_oneof![Just(Take::Pop), Just(Take::Drain), (1u8..5).prop_map(Take::UpTo), (1u8..5).prop_map(Take::Serve),]
}

/// More iterations than this and a loop is taken not to end.
const LOOP_BUDGET: u32 = 1000;

/// The peer's move after each entry the loop takes: set its producer index
/// to our consumer index plus a small delta (mostly "one more", the move
/// that kept the unbounded loop going), or to anything.
fn peer_move() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![4 => Just(Some(1u32)), 2 => (0u32..12).prop_map(Some), 1 => any::<u32>().prop_map(|p| Some(p ^ 1 << 31)), 1 => Just(None)]
}

fn prod_after(cons: u32, mv: Option<u32>) -> Option<u32> {
    // `Some(p ^ 1 << 31)` above marks a raw value: undo the mark.
    mv.map(|d| if d & 1 << 31 != 0 { d ^ 1 << 31 } else { cons.wrapping_add(d) })
}

/// R10: the back's documented inner loop (take requests and answer each,
/// no publish inside the loop) against a front that rewrites `req_prod`
/// every time the back takes a request. Returns how many requests the loop
/// took; fails if it runs past `LOOP_BUDGET`.
fn back_loop(cap: u32, start: u32, how: Take, moves: &[Option<u32>]) -> Result<u32, TestCaseError> {
    let len = ring_bytes::<u64, u64>(cap);
    let pages = guarded(len);
    let _front = Front::<u64, u64>::init_at(pages.mem_at(GUARD, len), start).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem_at(GUARD, len)).unwrap();
    pages.store_u32(GUARD + REQ_PROD, start.wrapping_add(cap.min(2)));
    let mut taken = 0u32;
    let mut iterations = 0u32;
    // The hostile front, run inside the loop body as a concurrent peer would.
    let peer = |taken: u32| {
        if let Some(p) = prod_after(start.wrapping_add(taken), moves[taken as usize % moves.len()]) {
            pages.store_u32(GUARD + REQ_PROD, p);
        }
    };
    let ended: Result<(), RingError> = (|| {
        match how {
            Take::Pop => {
                while let Some(req) = back.pop_request()? {
                    iterations += 1;
                    taken += 1;
                    peer(taken);
                    let _ = back.try_push(req);
                    if iterations > LOOP_BUDGET {
                        break;
                    }
                }
            }
            Take::Drain | Take::UpTo(_) => loop {
                iterations += 1;
                let batch: Vec<u64> = match how {
                    Take::UpTo(n) => back.requests_up_to(u32::from(n))?,
                    _ => back.requests()?,
                }
                .inspect(|_| {
                    taken += 1;
                    peer(taken);
                })
                .collect();
                if batch.is_empty() || iterations > LOOP_BUDGET {
                    break;
                }
                back.push_iter(batch)?;
            },
            Take::Serve(n) => {
                while back.serve_up_to(u32::from(n), |req| {
                    taken += 1;
                    peer(taken);
                    req
                })? > 0
                {
                    iterations += 1;
                    if iterations > LOOP_BUDGET {
                        break;
                    }
                }
            }
        }
        Ok(())
    })();
    prop_assert!(iterations <= LOOP_BUDGET, "{how:?}: the loop did not end ({taken} requests taken)");
    // Nothing was published: at most one ring of requests, then the loop
    // ends with None or a latched violation.
    prop_assert!(taken <= cap, "{how:?}: took {taken} requests from a ring of {cap}");
    if let Err(e) = ended {
        prop_assert!(matches!(e, RingError::ProdOverflow { .. }), "{e:?}");
        prop_assert_eq!(back.error(), Some(e));
    }
    prop_assert!(canaries_intact(&pages, len));
    Ok(taken)
}

/// R10: the front's documented inner loop (`while let Some(rsp) =
/// front.pop_response()?`) against a back that rewrites `rsp_prod` each
/// time the front takes a response.
fn front_loop(cap: u32, start: u32, moves: &[Option<u32>]) -> Result<u32, TestCaseError> {
    let len = ring_bytes::<u64, u64>(cap);
    let pages = guarded(len);
    let mut front = Front::<u64, u64>::init_at(pages.mem_at(GUARD, len), start).unwrap();
    let outstanding = front.push_iter(0..u64::from(cap)).unwrap();
    front.push_and_check_notify().unwrap();
    pages.store_u32(GUARD + RSP_PROD, start.wrapping_add(1));
    let (mut taken, mut iterations) = (0u32, 0u32);
    let ended: Result<(), RingError> = (|| {
        while let Some(_rsp) = front.pop_response()? {
            iterations += 1;
            taken += 1;
            if let Some(p) = prod_after(start.wrapping_add(taken), moves[taken as usize % moves.len()]) {
                pages.store_u32(GUARD + RSP_PROD, p);
            }
            if iterations > LOOP_BUDGET {
                break;
            }
        }
        Ok(())
    })();
    prop_assert!(iterations <= LOOP_BUDGET, "the front's loop did not end");
    prop_assert!(taken <= outstanding);
    if let Err(e) = ended {
        prop_assert!(matches!(e, RingError::RspOverflow { .. }), "{e:?}");
    }
    prop_assert!(canaries_intact(&pages, len));
    Ok(taken)
}

/// R10, R12: a stream consumer's loop (`while let Some(x) = rx.pop()?`, or
/// drains) against a producer that rewrites `prod` after each element.
fn stream_loop(cap: u32, start: u32, how: Take, moves: &[Option<u32>]) -> Result<u32, TestCaseError> {
    let len = stream_bytes::<u32>(cap);
    let pages = guarded(len);
    ring_protocol::init_stream::<u32>(&pages.mem_at(GUARD, len), start).unwrap();
    let mut rx = StreamConsumer::<u32>::attach(pages.mem_at(GUARD, len)).unwrap();
    pages.store_u32(GUARD + PROD, start.wrapping_add(1));
    let (mut taken, mut iterations) = (0u32, 0u32);
    let peer = |taken: u32| {
        if let Some(p) = prod_after(start.wrapping_add(taken), moves[taken as usize % moves.len()]) {
            pages.store_u32(GUARD + PROD, p);
        }
    };
    let ended: Result<(), RingError> = (|| {
        match how {
            Take::Pop | Take::Serve(_) => {
                while let Some(_x) = rx.pop()? {
                    iterations += 1;
                    taken += 1;
                    peer(taken);
                    if iterations > LOOP_BUDGET {
                        break;
                    }
                }
            }
            Take::Drain | Take::UpTo(_) => loop {
                iterations += 1;
                let it = match how {
                    Take::UpTo(n) => rx.drain_up_to(u32::from(n))?,
                    _ => rx.drain()?,
                };
                let n = it
                    .inspect(|_| {
                        taken += 1;
                        peer(taken);
                    })
                    .count();
                if n == 0 || iterations > LOOP_BUDGET {
                    break;
                }
            },
        }
        Ok(())
    })();
    prop_assert!(iterations <= LOOP_BUDGET, "{how:?}: the consumer's loop did not end");
    prop_assert!(taken <= cap);
    if let Err(e) = ended {
        prop_assert!(matches!(e, RingError::ProdOverflow { .. }), "{e:?}");
    }
    prop_assert!(canaries_intact(&pages, len));
    Ok(taken)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// R10: every consume loop in the docs ends within the ring size,
    /// whatever the peer does to its producer index meanwhile.
    #[test]
    fn r10_documented_loops_end_against_a_hostile_peer(
        cap in prop::sample::select(vec![1u32, 2, 4, 8]),
        start in prop_oneof![Just(0u32), (u32::MAX - 20)..=u32::MAX, any::<u32>()],
        how in take(),
        moves in prop::collection::vec(peer_move(), 1..40),
    ) {
        back_loop(cap, start, how, &moves)?;
        front_loop(cap, start, &moves)?;
        stream_loop(cap, start, how, &moves)?;
    }
}

/// R10 regression: a front that offers "one more request" every time the
/// back takes one kept the documented serve loop running forever while the
/// back's responses stayed unpublished. Each form of the loop now takes
/// exactly one ring of requests and then meets a latched violation.
#[test]
fn r10_serve_loop_ends_against_a_front_that_always_offers_one_more() {
    for how in [Take::Pop, Take::Drain, Take::UpTo(3), Take::Serve(1), Take::Serve(4)] {
        for start in [0, u32::MAX - 2] {
            let taken = back_loop(8, start, how, &[Some(1)]).unwrap();
            assert_eq!(taken, 8, "{how:?}");
        }
    }
}
