//! Loom models of the notification handshake (R8, R9) and of the slot
//! orderings (R5, R7), over the real endpoint code.
//!
//! Run with:
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p ring-protocol --release --test loom
//! ```
//!
//! Loom explores every interleaving (and every value a weak memory model
//! lets a load return) of two threads: exhaustively for the handshake
//! models, with at most 3 preemptions for the two models with loops. A side
//! that goes to sleep after a failed final check must always have been
//! notified by the other side's publish; in `r8_r9_blocking_back_always_wakes`
//! the back really blocks on a condvar, so a lost wake-up is a deadlock. Slot accesses go through per-slot loom cells, so loom also
//! checks that every slot write happens-before the read of it and the read
//! before the next write. `r9_weak_fences_lose_a_wakeup` shows that loom
//! finds the lost wake-up when the SeqCst fences are weakened, and
//! `r9_final_check_publishes_pending_work_before_sleeping` that a back that
//! forgot to publish still wakes a front waiting for its response.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use loom::thread;
use ring_protocol::{ring_bytes, stream_bytes, Back, Front, LoomShadow, SharedMem, StreamConsumer, StreamProducer};

/// Leak a zeroed, 64-byte aligned region and a shadow for `slots` slots:
/// loom threads need `'static` borrows.
fn region(len: usize, slots: usize, weak: bool) -> (&'static [Line], &'static LoomShadow) {
    let lines: &'static [Line] = Vec::leak((0..len.div_ceil(64)).map(|_| Line::default()).collect());
    let shadow = LoomShadow::new(slots);
    let shadow = if weak { shadow.weaken_full_fences() } else { shadow };
    (lines, Box::leak(Box::new(shadow)))
}

/// One cache line of the region. The words are (real, not loom) atomics
/// only so that the region may be written through a pointer derived from a
/// shared borrow; the endpoints access it with volatile copies, and loom
/// sees index words and slots through the shadow.
#[derive(Default)]
#[repr(C, align(64))]
struct Line([std::sync::atomic::AtomicU64; 8]);

fn mem(lines: &'static [Line], len: usize, shadow: &'static LoomShadow) -> SharedMem<'static> {
    assert!(len <= size_of_val(lines));
    // SAFETY: leaked, so valid forever, and interior-mutable, so writable
    // through this pointer; used only through endpoints.
    unsafe { SharedMem::new(lines.as_ptr().cast_mut().cast(), len) }.unwrap().with_loom_shadow(shadow)
}

/// Explore every interleaving (no preemption bound).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = None;
    b.check(f);
}

/// Explore interleavings with at most 3 preemptions: for the models with
/// loops, whose full state space takes hours. Bugs in practice need few
/// preemptions (the weak-fence bug needs one).
fn model_bounded(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// One round trip first, so the event indices are no longer at their
/// initial "wake me for the first item" values; then race a final check
/// against a publish.
fn warmed_ring(cap: u32, weak: bool) -> (Front<'static, u64, u64>, Back<'static, u64, u64>) {
    let len = ring_bytes::<u64, u64>(cap);
    let (words, shadow) = region(len, cap as usize, weak);
    let mut front = Front::<u64, u64>::init_at(mem(words, len, shadow), u32::MAX).unwrap();
    let mut back = Back::<u64, u64>::attach(mem(words, len, shadow)).unwrap();
    front.try_push(1).unwrap();
    assert!(front.push_and_check_notify().unwrap());
    assert_eq!(back.pop_request().unwrap(), Some(1));
    back.try_push(1).unwrap();
    assert!(back.push_and_check_notify().unwrap());
    assert_eq!(front.pop_response().unwrap(), Some(1));
    // Neither side has re-armed its event: a publish now notifies only if
    // the other side armed it again.
    front.try_push(2).unwrap();
    assert!(!front.push_and_check_notify().unwrap());
    assert_eq!(back.pop_request().unwrap(), Some(2));
    back.try_push(2).unwrap();
    assert!(!back.push_and_check_notify().unwrap());
    assert_eq!(front.pop_response().unwrap(), Some(2));
    (front, back)
}

fn request_wakeup(weak: bool) {
    let (mut front, mut back) = warmed_ring(2, weak);
    let notified: &'static _ = Box::leak(Box::new(AtomicBool::new(false)));
    let producer = thread::spawn(move || {
        front.try_push(3).unwrap();
        if front.push_and_check_notify().unwrap() {
            notified.store(true, SeqCst);
        }
    });
    let slept = !back.final_check_for_requests().unwrap();
    producer.join().unwrap();
    if slept {
        assert!(notified.load(SeqCst), "lost wake-up: back sleeps with a request pending");
    } else {
        assert_eq!(back.pop_request().unwrap(), Some(3));
    }
}

#[test]
fn r8_r9_request_wakeup_is_never_lost() {
    model(|| request_wakeup(false));
}

#[test]
#[should_panic(expected = "lost wake-up")]
fn r9_weak_fences_lose_a_wakeup() {
    model(|| request_wakeup(true));
}

#[test]
fn r8_r9_response_wakeup_is_never_lost() {
    model(|| {
        let (mut front, mut back) = warmed_ring(2, false);
        front.try_push(3).unwrap();
        front.push_and_check_notify().unwrap();
        assert_eq!(back.pop_request().unwrap(), Some(3));
        let notified: &'static _ = Box::leak(Box::new(AtomicBool::new(false)));
        let responder = thread::spawn(move || {
            back.try_push(30).unwrap();
            if back.push_and_check_notify().unwrap() {
                notified.store(true, SeqCst);
            }
        });
        let slept = !front.final_check_for_responses().unwrap();
        responder.join().unwrap();
        if slept {
            assert!(notified.load(SeqCst), "lost wake-up: front sleeps with a response pending");
        } else {
            assert_eq!(front.pop_response().unwrap(), Some(30));
        }
    });
}

/// R9: a back that wrote a response but forgot to publish it reaches its
/// final check while the front is going to sleep waiting for that
/// response. The final check publishes it; the back follows the documented
/// loop (on `true`, go round: `push_and_check_notify`, notify) and stops
/// when the check lets it sleep. The front blocks on a condvar, so if any
/// interleaving lets the back sleep without the front being woken, loom
/// reports a deadlock.
#[test]
fn r9_final_check_publishes_pending_work_before_sleeping() {
    model(|| {
        let (mut front, mut back) = warmed_ring(2, false);
        front.try_push(3).unwrap();
        front.push_and_check_notify().unwrap();
        assert_eq!(back.pop_request().unwrap(), Some(3));
        back.try_push(30).unwrap(); // not published
        let bell = Bell::new();
        let server = thread::spawn(move || {
            while back.final_check_for_requests().unwrap() {
                assert_eq!(back.pop_request().unwrap(), None);
                if back.push_and_check_notify().unwrap() {
                    bell.ring();
                }
            }
        });
        if !front.final_check_for_responses().unwrap() {
            bell.wait();
        }
        assert_eq!(front.pop_response().unwrap(), Some(30));
        server.join().unwrap();
    });
}

/// Batched wake-up (k = 2) against two separate publishes: the sleeper is
/// woken exactly when the second item lands, never by the first.
#[test]
fn r9_batched_wakeup_waits_for_k_items() {
    model(|| {
        let (mut front, mut back) = warmed_ring(2, false);
        let notifications: &'static _ = Box::leak(Box::new(AtomicU32::new(0)));
        let producer = thread::spawn(move || {
            for v in [3, 4] {
                front.try_push(v).unwrap();
                if front.push_and_check_notify().unwrap() {
                    notifications.fetch_add(1, SeqCst);
                }
            }
        });
        let slept = !back.final_check_for_requests_batched(2).unwrap();
        producer.join().unwrap();
        let n = notifications.load(SeqCst);
        assert!(n <= 1, "one armed event, {n} notifications");
        if slept {
            assert_eq!(n, 1, "lost wake-up: two requests pending");
        }
        assert_eq!(back.requests().unwrap().collect::<Vec<_>>(), [3, 4]);
    });
}

/// An event channel for loom: a pending flag under a mutex, and a condvar
/// to block on. A lost wake-up leaves the waiter blocked forever, which loom
/// reports as a deadlock.
struct Bell {
    pending: loom::sync::Mutex<bool>,
    cv: loom::sync::Condvar,
}

impl Bell {
    fn new() -> &'static Bell {
        Box::leak(Box::new(Bell { pending: loom::sync::Mutex::new(false), cv: loom::sync::Condvar::new() }))
    }

    fn ring(&self) {
        *self.pending.lock().unwrap() = true;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let mut p = self.pending.lock().unwrap();
        while !*p {
            p = self.cv.wait(p).unwrap();
        }
        *p = false;
    }
}

/// Several rounds of the full protocol with a back that really blocks:
/// the front publishes three requests one at a time, the back drains,
/// final-checks and sleeps until notified. Loom fails the test with a
/// deadlock if any interleaving loses a wake-up.
#[test]
fn r8_r9_blocking_back_always_wakes() {
    model_bounded(|| {
        let (mut front, mut back) = warmed_ring(4, false);
        let bell = Bell::new();
        let producer = thread::spawn(move || {
            for v in 10..13 {
                front.try_push(v).unwrap();
                if front.push_and_check_notify().unwrap() {
                    bell.ring();
                }
            }
        });
        let mut expect = 10;
        while expect < 13 {
            for v in back.requests().unwrap() {
                assert_eq!(v, expect);
                expect += 1;
            }
            if expect < 13 && !back.final_check_for_requests().unwrap() {
                bell.wait();
            }
        }
        producer.join().unwrap();
    });
}

/// R5/R7: three requests through a 2-slot ring, so slots are reused while
/// the other thread may still be reading them; loom's cell tracking checks
/// the happens-before edges, the values check the data.
#[test]
fn r5_r7_slot_reuse_is_ordered() {
    model_bounded(|| {
        let len = ring_bytes::<u64, u64>(2);
        let (words, shadow) = region(len, 2, false);
        let mut front = Front::<u64, u64>::init_at(mem(words, len, shadow), u32::MAX).unwrap();
        let mut back = Back::<u64, u64>::attach(mem(words, len, shadow)).unwrap();
        let server = thread::spawn(move || {
            let mut expect = 10;
            while expect < 13 {
                match back.pop_request().unwrap() {
                    Some(v) => {
                        assert_eq!(v, expect);
                        expect += 1;
                        back.try_push(v + 100).unwrap();
                        back.publish().unwrap();
                    }
                    None => thread::yield_now(),
                }
            }
        });
        let mut next = 10;
        let mut expect = 110;
        while expect < 113 {
            if next < 13 && front.free_requests() > 0 {
                front.try_push(next).unwrap();
                front.publish().unwrap();
                next += 1;
            }
            match front.pop_response().unwrap() {
                Some(v) => {
                    assert_eq!(v, expect);
                    expect += 1;
                }
                None => thread::yield_now(),
            }
        }
        server.join().unwrap();
    });
}

/// R12: the stream's data wake-up and space wake-up.
#[test]
fn r12_stream_wakeups_are_never_lost() {
    model(|| {
        let len = stream_bytes::<u64>(1);
        let (words, shadow) = region(len, 1, false);
        let mut tx = StreamProducer::<u64>::init(mem(words, len, shadow)).unwrap();
        let mut rx = StreamConsumer::<u64>::attach(mem(words, len, shadow)).unwrap();
        // Fill the one slot; the consumer has not released it yet.
        tx.try_push(1).unwrap();
        tx.push_and_check_notify().unwrap();
        let data_bell: &'static _ = Box::leak(Box::new(AtomicBool::new(false)));
        let space_bell: &'static _ = Box::leak(Box::new(AtomicBool::new(false)));
        let consumer = thread::spawn(move || {
            assert_eq!(rx.pop().unwrap(), Some(1));
            if rx.release_and_check_notify().unwrap() {
                space_bell.store(true, SeqCst);
            }
            let slept = !rx.final_check().unwrap();
            (rx, slept)
        });
        // The producer waits for space, then publishes a second element.
        let producer_slept = !tx.final_check_for_space(1).unwrap();
        let (mut rx, consumer_slept) = if producer_slept {
            let (rx, slept) = consumer.join().unwrap();
            assert!(space_bell.load(SeqCst), "lost wake-up: producer waits for space");
            (rx, slept)
        } else {
            tx.try_push(2).unwrap();
            if tx.push_and_check_notify().unwrap() {
                data_bell.store(true, SeqCst);
            }
            consumer.join().unwrap()
        };
        if !producer_slept && consumer_slept {
            assert!(data_bell.load(SeqCst), "lost wake-up: consumer sleeps with data pending");
        }
        if !producer_slept {
            assert_eq!(rx.pop().unwrap(), Some(2));
        }
    });
}
