//! Proptest state machines: random interleavings of push, publish, consume
//! and sleep (final check) at both ends, checked step by step against a
//! `VecDeque` reference model, with indices starting near `u32::MAX`.
//!
//! Notification correctness (R8, R9): a side that went to sleep after a
//! failed final check is modelled as asleep with its wake threshold `k`.
//! When the other side publishes and the sleeper's threshold is reached, the
//! publish *must* report notify = true (a lost wake-up fails the test). A
//! notification nobody needed is counted as spurious; a side that acts
//! while "asleep" woke up by itself (a timeout), and can cause at most one
//! spurious notification for the event it left armed.
#![cfg(not(loom))]

mod common;

use std::collections::VecDeque;

use common::Pages;
use proptest::prelude::*;
use ring_protocol::{ring_bytes, stream_bytes, Back, Front, IdTable, PushError, StreamConsumer, StreamProducer};

type Msg = [u64; 2]; // [id, seq]

#[derive(Clone, Copy, Debug)]
enum Op {
    FrontPush(u8),
    FrontPublish,
    /// Consume up to n responses: one by one (odd n), with `responses_up_to`
    /// (even n), or all with `responses` (0).
    FrontConsume(u8),
    FrontSleep(u8),
    BackConsume(u8),
    /// Answer n consumed requests, picking which with the seed (out of order).
    BackRespond(u8, u8),
    BackPublish,
    BackSleep(u8),
    /// Serve up to n requests in order with `serve_up_to`.
    BackServe(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..6).prop_map(Op::FrontPush),
        Just(Op::FrontPublish),
        (0u8..6).prop_map(Op::FrontConsume),
        (1u8..10).prop_map(Op::FrontSleep),
        (0u8..6).prop_map(Op::BackConsume),
        (1u8..6).prop_map(Op::BackServe),
        (1u8..4, any::<u8>()).prop_map(|(n, s)| Op::BackRespond(n, s)),
        Just(Op::BackPublish),
        (1u8..10).prop_map(Op::BackSleep),
    ]
}

fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), (u32::MAX - 40)..=u32::MAX, any::<u32>()]
}

#[derive(Default, Debug)]
struct Counts {
    notifications: u32,
    spurious: u32,
    arms: u32,
    own_wakeups: u32,
}

/// The reference model of a request/response ring.
struct RingModel {
    cap: u32,
    next_seq: u64,
    ids: IdTable<u64, 16>,
    req_written: VecDeque<Msg>,
    req_published: VecDeque<Msg>,
    back_pending: Vec<Msg>,
    rsp_written: VecDeque<Msg>,
    rsp_published: VecDeque<Msg>,
    /// Wake thresholds of sleeping sides. Both start "asleep" for one item:
    /// the front initialises both events to start + 1, as Xen does.
    back_asleep: Option<u32>,
    front_asleep: Option<u32>,
    /// A final check published pending work since the side's last
    /// `push_and_check_notify`: it may owe the peer a notification (R9).
    front_may_owe: bool,
    back_may_owe: bool,
    counts: Counts,
}

impl RingModel {
    fn outstanding(&self) -> u32 {
        (self.req_written.len()
            + self.req_published.len()
            + self.back_pending.len()
            + self.rsp_written.len()
            + self.rsp_published.len()) as u32
    }

    fn wake_front(&mut self) {
        if self.front_asleep.take().is_some() {
            self.counts.own_wakeups += 1;
        }
    }

    fn wake_back(&mut self) {
        if self.back_asleep.take().is_some() {
            self.counts.own_wakeups += 1;
        }
    }
}

/// Check a publish's notify result against the sleeper's threshold.
fn check_notify(
    notify: bool,
    asleep: &mut Option<u32>,
    avail_after: usize,
    counts: &mut Counts,
) -> Result<(), TestCaseError> {
    let required = asleep.is_some_and(|k| avail_after >= k as usize);
    if required {
        prop_assert!(notify, "lost wake-up: sleeper needs {asleep:?}, {avail_after} available");
        *asleep = None;
    }
    if notify {
        counts.notifications += 1;
        if !required {
            counts.spurious += 1;
        }
    }
    Ok(())
}

fn run_ring(cap: u32, extra: usize, start: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let len = ring_bytes::<Msg, Msg>(cap) + extra;
    let pages = Pages::new(len);
    let mut front = Front::<Msg, Msg>::init_at(pages.mem(), start).unwrap();
    let mut back = Back::<Msg, Msg>::attach(pages.mem()).unwrap();
    prop_assert_eq!(front.capacity(), cap);
    prop_assert_eq!(back.capacity(), cap);
    let mut m = RingModel {
        cap,
        next_seq: 0,
        ids: IdTable::new(),
        req_written: VecDeque::new(),
        req_published: VecDeque::new(),
        back_pending: Vec::new(),
        rsp_written: VecDeque::new(),
        rsp_published: VecDeque::new(),
        back_asleep: Some(1),
        front_asleep: Some(1),
        front_may_owe: false,
        back_may_owe: false,
        counts: Counts::default(),
    };

    for &op in ops {
        match op {
            Op::FrontPush(n) => {
                m.wake_front();
                for _ in 0..n {
                    let full = m.outstanding() == m.cap;
                    prop_assert_eq!(front.free_requests(), m.cap - m.outstanding());
                    if full {
                        prop_assert_eq!(front.try_push([0, 0]), Err(PushError::Full));
                        continue;
                    }
                    let seq = m.next_seq;
                    m.next_seq += 1;
                    let id = m.ids.insert(seq).unwrap();
                    front.try_push([id, seq]).unwrap();
                    m.req_written.push_back([id, seq]);
                }
            }
            Op::FrontPublish => {
                m.wake_front();
                let notify = front.push_and_check_notify().unwrap();
                m.req_published.extend(m.req_written.drain(..));
                let avail = m.req_published.len();
                check_notify(notify, &mut m.back_asleep, avail, &mut m.counts)?;
                m.front_may_owe = false;
            }
            Op::FrontConsume(n) => {
                m.wake_front();
                let got: Vec<Msg> = if n == 0 {
                    front.responses().unwrap().collect()
                } else if n % 2 == 0 {
                    front.responses_up_to(u32::from(n)).unwrap().collect()
                } else {
                    let mut v = Vec::new();
                    for _ in 0..n {
                        match front.pop_response().unwrap() {
                            Some(r) => v.push(r),
                            None => break,
                        }
                    }
                    v
                };
                let want = if n == 0 { m.rsp_published.len() } else { m.rsp_published.len().min(n as usize) };
                prop_assert_eq!(got.len(), want);
                for rsp in got {
                    prop_assert_eq!(Some(rsp), m.rsp_published.pop_front());
                    // R11: the id maps back to the request's state, once.
                    prop_assert_eq!(m.ids.complete(rsp[0]), Ok(rsp[1]));
                }
            }
            Op::FrontSleep(k) => {
                m.wake_front();
                // R9: the final check publishes our written requests first;
                // if the sleeping back needs them, it must not let us sleep
                // (the back is still asleep until we notify it).
                let pending = !m.req_written.is_empty();
                m.req_published.extend(m.req_written.drain(..));
                m.front_may_owe |= pending;
                let required = pending && m.back_asleep.is_some_and(|k| m.req_published.len() >= k as usize);
                let k_eff = u32::from(k).min(m.outstanding()).max(1);
                let avail = m.rsp_published.len() as u32;
                let more = front.final_check_for_responses_batched(u32::from(k)).unwrap();
                prop_assert!(more || !required, "front sleeps owing the back a notification");
                prop_assert!(more || avail < k_eff);
                prop_assert!(!more || avail >= k_eff || m.front_may_owe, "no response, nothing owed, yet `true`");
                if !more {
                    m.front_asleep = Some(k_eff);
                    m.counts.arms += 1;
                }
            }
            Op::BackConsume(n) => {
                m.wake_back();
                let got: Vec<Msg> = if n == 0 {
                    back.requests().unwrap().collect()
                } else if n % 2 == 0 {
                    back.requests_up_to(u32::from(n)).unwrap().collect()
                } else {
                    let mut v = Vec::new();
                    for _ in 0..n {
                        match back.pop_request().unwrap() {
                            Some(r) => v.push(r),
                            None => break,
                        }
                    }
                    v
                };
                let want = if n == 0 { m.req_published.len() } else { m.req_published.len().min(n as usize) };
                prop_assert_eq!(got.len(), want);
                for req in got {
                    prop_assert_eq!(Some(req), m.req_published.pop_front());
                    m.back_pending.push(req);
                }
            }
            Op::BackRespond(n, seed) => {
                m.wake_back();
                for i in 0..n {
                    prop_assert_eq!(back.unanswered() as usize, m.back_pending.len());
                    if m.back_pending.is_empty() {
                        prop_assert_eq!(back.try_push([0, 0]), Err(PushError::Full));
                        continue;
                    }
                    let at = (seed as usize + i as usize) % m.back_pending.len();
                    let req = m.back_pending.swap_remove(at);
                    back.try_push(req).unwrap();
                    m.rsp_written.push_back(req);
                }
            }
            Op::BackServe(n) => {
                m.wake_back();
                let mut seen = Vec::new();
                let served = back
                    .serve_up_to(u32::from(n), |req| {
                        seen.push(req);
                        req
                    })
                    .unwrap();
                prop_assert_eq!(served as usize, m.req_published.len().min(n as usize));
                for req in seen {
                    prop_assert_eq!(Some(req), m.req_published.pop_front());
                    m.rsp_written.push_back(req);
                }
            }
            Op::BackPublish => {
                m.wake_back();
                let notify = back.push_and_check_notify().unwrap();
                m.rsp_published.extend(m.rsp_written.drain(..));
                let avail = m.rsp_published.len();
                check_notify(notify, &mut m.front_asleep, avail, &mut m.counts)?;
                m.back_may_owe = false;
            }
            Op::BackSleep(k) => {
                m.wake_back();
                // R9: the final check publishes our written responses first.
                let pending = !m.rsp_written.is_empty();
                m.rsp_published.extend(m.rsp_written.drain(..));
                m.back_may_owe |= pending;
                let required = pending && m.front_asleep.is_some_and(|k| m.rsp_published.len() >= k as usize);
                let room = m.cap - m.back_pending.len() as u32;
                let k_eff = u32::from(k).min(room).max(1);
                let avail = m.req_published.len() as u32;
                let more = back.final_check_for_requests_batched(u32::from(k)).unwrap();
                prop_assert!(more || !required, "back sleeps owing the front a notification");
                prop_assert!(more || avail < k_eff);
                prop_assert!(!more || avail >= k_eff || m.back_may_owe, "no request, nothing owed, yet `true`");
                if !more {
                    m.back_asleep = Some(k_eff);
                    m.counts.arms += 1;
                }
            }
        }
        prop_assert!(front.error().is_none() && back.error().is_none());
    }

    // Each armed event (plus the two initial ones) causes at most one
    // notification, needed or not.
    prop_assert!(m.counts.notifications <= m.counts.arms + 2, "{:?}", m.counts);
    prop_assert!(m.counts.spurious <= m.counts.own_wakeups + 2, "{:?}", m.counts);

    // Drain everything: every request is answered exactly once.
    front.push_and_check_notify().unwrap();
    m.req_published.extend(m.req_written.drain(..));
    while back.pop_request().unwrap().is_some() {}
    m.back_pending.extend(m.req_published.drain(..));
    while back.unanswered() > 0 {
        let req = m.back_pending.pop().unwrap();
        back.try_push(req).unwrap();
        m.rsp_written.push_back(req);
    }
    back.push_and_check_notify().unwrap();
    m.rsp_published.extend(m.rsp_written.drain(..));
    for rsp in front.responses().unwrap() {
        prop_assert_eq!(Some(rsp), m.rsp_published.pop_front());
        prop_assert_eq!(m.ids.complete(rsp[0]), Ok(rsp[1]));
    }
    prop_assert_eq!(m.ids.in_flight(), 0);
    prop_assert_eq!(front.outstanding(), 0);
    prop_assert_eq!(front.free_requests(), cap);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// R3, R4, R5, R7, R8, R9, R11 on a request/response ring.
    #[test]
    fn r8_r9_ring_matches_model_and_never_loses_a_wakeup(
        cap in prop::sample::select(vec![1u32, 2, 4, 8]),
        extra in 0usize..16,
        start in start_index(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        run_ring(cap, extra, start, &ops)?;
    }
}

#[derive(Clone, Copy, Debug)]
enum StreamOp {
    Push(u8),
    Publish,
    ProducerSleep(u8),
    /// Consume up to n elements (0: all, with `drain`).
    Consume(u8),
    Release,
    ConsumerSleep(u8),
}

fn stream_op() -> impl Strategy<Value = StreamOp> {
    prop_oneof![
        (1u8..7).prop_map(StreamOp::Push),
        Just(StreamOp::Publish),
        (1u8..10).prop_map(StreamOp::ProducerSleep),
        (0u8..5).prop_map(StreamOp::Consume),
        Just(StreamOp::Release),
        (1u8..10).prop_map(StreamOp::ConsumerSleep),
    ]
}

fn run_stream(cap: u32, start: u32, ops: &[StreamOp]) -> Result<(), TestCaseError> {
    let pages = Pages::new(stream_bytes::<u32>(cap));
    ring_protocol::init_stream::<u32>(&pages.mem(), start).unwrap();
    let mut tx = StreamProducer::<u32>::attach(pages.mem()).unwrap();
    let mut rx = StreamConsumer::<u32>::attach(pages.mem()).unwrap();
    let mut next = 0u32;
    let mut written: VecDeque<u32> = VecDeque::new();
    let mut published: VecDeque<u32> = VecDeque::new();
    let mut unreleased = 0u32;
    let mut counts = Counts::default();
    let mut consumer_asleep = Some(1);
    let mut producer_asleep: Option<u32> = None;
    let mut expect_next = 0u32;
    // A final check published / released pending work since the last
    // push_and_check_notify / release_and_check_notify (R9).
    let mut producer_may_owe = false;
    let mut consumer_may_owe = false;

    for &op in ops {
        let used = (written.len() + published.len()) as u32 + unreleased;
        match op {
            StreamOp::Push(n) => {
                producer_asleep = None;
                let free = cap - used;
                let items: Vec<u32> = (next..next + u32::from(n)).collect();
                let pushed = tx.push_iter(items.iter().copied()).unwrap();
                prop_assert_eq!(pushed, free.min(u32::from(n)));
                written.extend(&items[..pushed as usize]);
                next += pushed;
            }
            StreamOp::Publish => {
                producer_asleep = None;
                let notify = tx.push_and_check_notify().unwrap();
                published.extend(written.drain(..));
                check_notify(notify, &mut consumer_asleep, published.len(), &mut counts)?;
                producer_may_owe = false;
            }
            StreamOp::ProducerSleep(n) => {
                // R9: the final check publishes our written elements first.
                let pending = !written.is_empty();
                published.extend(written.drain(..));
                producer_may_owe |= pending;
                let required = pending && consumer_asleep.is_some_and(|k| published.len() >= k as usize);
                let n_eff = u32::from(n).clamp(1, cap);
                let room = tx.final_check_for_space(u32::from(n)).unwrap();
                prop_assert!(room || !required, "producer sleeps owing the consumer a notification");
                prop_assert!(room || cap - used < n_eff);
                prop_assert!(!room || cap - used >= n_eff || producer_may_owe);
                producer_asleep = (!room).then_some(n_eff);
            }
            StreamOp::Consume(n) => {
                consumer_asleep = None;
                let got: Vec<u32> = if n == 0 {
                    rx.drain().unwrap().collect()
                } else {
                    let mut buf = vec![0; n as usize];
                    let k = rx.read(&mut buf).unwrap();
                    buf.truncate(k);
                    buf
                };
                let want = if n == 0 { published.len() } else { published.len().min(n as usize) };
                prop_assert_eq!(got.len(), want);
                for v in got {
                    prop_assert_eq!(Some(v), published.pop_front());
                    prop_assert_eq!(v, expect_next);
                    expect_next += 1;
                    unreleased += 1;
                }
            }
            StreamOp::Release => {
                consumer_asleep = None;
                let notify = rx.release_and_check_notify().unwrap();
                unreleased = 0;
                let free = cap - (written.len() + published.len()) as u32;
                check_notify(notify, &mut producer_asleep, free as usize, &mut counts)?;
                consumer_may_owe = false;
            }
            StreamOp::ConsumerSleep(k) => {
                // R9: the final check releases what we consumed first.
                let pending = unreleased > 0;
                unreleased = 0;
                consumer_may_owe |= pending;
                let free = cap - (written.len() + published.len()) as u32;
                let required = pending && producer_asleep.is_some_and(|n| free >= n);
                let k_eff = u32::from(k).min(cap).max(1);
                let avail = published.len() as u32;
                let more = rx.final_check_batched(u32::from(k)).unwrap();
                prop_assert!(more || !required, "consumer sleeps owing the producer a notification");
                prop_assert!(more || avail < k_eff);
                prop_assert!(!more || avail >= k_eff || consumer_may_owe);
                consumer_asleep = (!more).then_some(k_eff);
            }
        }
        prop_assert!(tx.error().is_none() && rx.error().is_none());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// R3, R4, R5, R7, R8, R9, R12 on a stream.
    #[test]
    fn r12_stream_matches_model_and_never_loses_a_wakeup(
        cap in prop::sample::select(vec![1u32, 2, 4, 8, 16]),
        start in start_index(),
        ops in prop::collection::vec(stream_op(), 1..300),
    ) {
        run_stream(cap, start, &ops)?;
    }
}
