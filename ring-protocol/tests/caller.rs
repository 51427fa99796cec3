//! A careless caller: handler code that panics (with the panic caught), and
//! callers that forget to publish before sleeping. Whatever the caller's own
//! code does, the endpoint must not deliver an entry twice (R13) and a final
//! check must not let the caller sleep on work it has not published (R9).
#![cfg(not(loom))]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::Pages;
use ring_protocol::{ring_bytes, Back, Front};

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
