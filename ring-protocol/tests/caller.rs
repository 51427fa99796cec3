//! A careless caller: handler code that panics (with the panic caught), and
//! callers that forget to publish before sleeping. Whatever the caller's own
//! code does, the endpoint must not deliver an entry twice (R13) and a final
//! check must not let the caller sleep on work it has not published (R9).
#![cfg(not(loom))]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::Pages;
use ring_protocol::{ring_bytes, stream_bytes, Back, Front, StreamConsumer, StreamProducer};

// Index word offsets (RingHeader / StreamHeader).
const REQ_PROD: usize = 0;
const RSP_PROD: usize = 128;
const PROD: usize = 0;
const CONS: usize = 128;

/// R13: the handler of `serve_up_to` panics on the third request and the
/// caller catches it. The two requests before it are answered, the third is
/// consumed and unanswered, and the next call serves the fourth: nothing is
/// delivered twice.
#[test]
fn r13_serve_up_to_does_not_redeliver_after_a_panic() {
    let len = ring_bytes::<u64, u64>(8);
    let pages = Pages::new(len);
    let mut front = Front::<u64, u64>::init_at(pages.mem(), u32::MAX - 1).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem()).unwrap();
    assert_eq!(front.push_iter(10..16).unwrap(), 6);
    front.push_and_check_notify().unwrap();

    let mut seen = Vec::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        back.serve_up_to(6, |req| {
            seen.push(req);
            assert!(req != 12, "handler failed");
            req + 100
        })
    }));
    assert!(r.is_err(), "the handler's panic reaches the caller");
    assert_eq!(seen, [10, 11, 12]);
    assert_eq!(back.unanswered(), 1, "the request whose handler panicked is consumed, unanswered");
    back.try_push(999).unwrap();

    assert_eq!(back.serve_up_to(6, |req| req + 100).unwrap(), 3);
    assert_eq!(back.pop_request().unwrap(), None, "nothing is delivered again");
    back.push_and_check_notify().unwrap();
    let rsps: Vec<u64> = front.responses().unwrap().collect();
    assert_eq!(rsps, [110, 111, 999, 113, 114, 115]);
}

/// R13: a panic while iterating a `Drain` (caught by the caller) consumes
/// exactly the entries yielded so far.
#[test]
fn r13_drain_does_not_redeliver_after_a_panic() {
    let len = ring_bytes::<u64, u64>(8);
    let pages = Pages::new(len);
    let mut front = Front::<u64, u64>::init(pages.mem()).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem()).unwrap();
    front.push_iter(0..5).unwrap();
    front.push_and_check_notify().unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        for req in back.requests().unwrap() {
            assert!(req != 1, "handler failed");
        }
    }));
    assert!(r.is_err());
    assert_eq!(back.unanswered(), 2);
    assert_eq!(back.requests().unwrap().collect::<Vec<_>>(), [2, 3, 4]);
}

/// R9: a back that wrote a response and forgot to publish it calls the
/// final check while the front sleeps waiting for that response. The check
/// publishes it, refuses to let the back sleep, and the next
/// `push_and_check_notify` says to notify; after that the back may sleep.
#[test]
fn r9_back_final_check_publishes_pending_responses() {
    let pages = Pages::new(ring_bytes::<u64, u64>(4));
    let mut front = Front::<u64, u64>::init_at(pages.mem(), u32::MAX).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem()).unwrap();
    front.try_push(1).unwrap();
    front.push_and_check_notify().unwrap();
    assert_eq!(back.pop_request().unwrap(), Some(1));
    assert!(!front.final_check_for_responses().unwrap(), "the front goes to sleep");

    back.try_push(11).unwrap(); // ... and no push_and_check_notify.
    assert!(back.final_check_for_requests().unwrap(), "must not sleep: the front is owed a notification");
    assert_eq!(pages.load_u32(RSP_PROD), u32::MAX.wrapping_add(1), "the response is published");
    assert!(back.final_check_for_requests().unwrap(), "still owed until notified");
    assert!(back.push_and_check_notify().unwrap(), "notify the front");
    assert!(!back.push_and_check_notify().unwrap(), "once");
    assert!(!back.final_check_for_requests().unwrap(), "now the back may sleep");
    assert_eq!(front.pop_response().unwrap(), Some(11));

    // Nobody waiting: the final check publishes and the back may sleep.
    front.try_push(2).unwrap();
    front.push_and_check_notify().unwrap();
    assert_eq!(back.pop_request().unwrap(), Some(2));
    back.try_push(12).unwrap();
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(front.pop_response().unwrap(), Some(12));
    assert!(!back.push_and_check_notify().unwrap());
}

/// R9: the same for a front that forgot to publish its request.
#[test]
fn r9_front_final_check_publishes_pending_requests() {
    let pages = Pages::new(ring_bytes::<u64, u64>(4));
    let mut front = Front::<u64, u64>::init(pages.mem()).unwrap();
    let mut back = Back::<u64, u64>::attach(pages.mem()).unwrap();
    assert!(!back.final_check_for_requests().unwrap(), "the back goes to sleep");
    front.try_push(1).unwrap(); // ... and no push_and_check_notify.
    assert!(front.final_check_for_responses().unwrap(), "must not sleep: the back is owed a notification");
    assert_eq!(pages.load_u32(REQ_PROD), 1, "the request is published");
    assert!(front.push_and_check_notify().unwrap(), "notify the back");
    assert!(!front.final_check_for_responses().unwrap(), "now the front may sleep, waiting for 1 response");
    assert_eq!(back.serve_up_to(1, |r| r + 10).unwrap(), 1);
    assert!(back.push_and_check_notify().unwrap(), "the front is woken");
    assert_eq!(front.pop_response().unwrap(), Some(11));
}

/// R9 for a stream producer waiting for space with its elements unpublished
/// (the consumer could never free that space).
#[test]
fn r9_stream_producer_final_check_publishes_pending_elements() {
    let pages = Pages::new(stream_bytes::<u32>(4));
    let mut tx = StreamProducer::<u32>::init(pages.mem()).unwrap();
    let mut rx = StreamConsumer::<u32>::attach(pages.mem()).unwrap();
    assert!(!rx.final_check().unwrap(), "the consumer goes to sleep");
    assert_eq!(tx.write(&[1, 2, 3, 4]).unwrap(), 4); // ... unpublished, ring full.
    assert!(tx.final_check_for_space(1).unwrap(), "must not sleep: the consumer is owed a notification");
    assert_eq!(pages.load_u32(PROD), 4);
    assert!(tx.push_and_check_notify().unwrap());
    assert!(!tx.final_check_for_space(1).unwrap(), "now the producer may sleep");
    assert_eq!(rx.drain().unwrap().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(rx.release_and_check_notify().unwrap(), "the producer is woken");
}

/// R9 for a stream consumer that consumed without releasing, while the
/// producer sleeps waiting for that space.
#[test]
fn r9_stream_consumer_final_check_releases_consumed_elements() {
    let pages = Pages::new(stream_bytes::<u32>(4));
    let mut tx = StreamProducer::<u32>::init(pages.mem()).unwrap();
    let mut rx = StreamConsumer::<u32>::attach(pages.mem()).unwrap();
    tx.write(&[1, 2, 3, 4]).unwrap();
    tx.push_and_check_notify().unwrap();
    assert!(!tx.final_check_for_space(2).unwrap(), "the producer goes to sleep");
    assert_eq!(rx.drain().unwrap().count(), 4); // ... and no release.
    assert!(rx.final_check().unwrap(), "must not sleep: the producer is owed a notification");
    assert_eq!(pages.load_u32(CONS), 4, "the space is released");
    assert!(rx.release_and_check_notify().unwrap());
    assert!(!rx.final_check().unwrap(), "now the consumer may sleep");
    assert!(tx.final_check_for_space(4).unwrap());
}
