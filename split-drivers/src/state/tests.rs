//! Tests of the handshake: parsing, scripted sequences (happy path,
//! skipped states, teardown, reconnection, violations), and a proptest of
//! a front and a back talking through a fake store with arbitrary watch
//! interleavings, deaths, shutdowns and replacements (S1-S5).

extern crate std;

use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use Action::*;
use State::*;

fn acts(a: Actions) -> Vec<Action> {
    a.into_iter().collect()
}

// --- Parsing -----------------------------------------------------------------

#[test]
fn parse_accepts_exactly_the_nine_digits() {
    for code in 0..=8u8 {
        let s = State::from_code(code).unwrap();
        assert_eq!(s.code(), code);
        assert_eq!(State::parse(s.as_str().as_bytes()), Ok(s));
        assert_eq!(s.as_str().as_bytes(), [b'0' + code]);
    }
    assert_eq!(State::from_code(9), None);
}

#[test]
fn s3_parse_refuses_everything_else() {
    for bad in [&b""[..], b"9", b"04", b"4 ", b" 4", b"4\n", b"4\0", b"-1", b"+4", b"x", b"\xff", b"44", b"\x34\x00"] {
        assert!(State::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(State::parse(b""), Err(ParseStateError::Length { len: 0 }));
    assert_eq!(State::parse(b"12"), Err(ParseStateError::Length { len: 2 }));
    assert_eq!(State::parse(b"9"), Err(ParseStateError::Value { byte: b'9' }));
    assert_eq!(State::parse(b"/"), Err(ParseStateError::Value { byte: b'/' }));
    assert_eq!(State::parse(&[0]), Err(ParseStateError::Value { byte: 0 }));
}

proptest! {
    #[test]
    fn s3_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4)) {
        if let Ok(s) = State::parse(&bytes) {
            prop_assert_eq!(s.as_str().as_bytes(), &bytes[..]);
        }
    }
}

// --- Scripted sequences ------------------------------------------------------

/// Front and back through the whole handshake, one event at a time.
fn connected_pair() -> (Frontend, Backend) {
    let mut f = Frontend::new();
    let mut b = Backend::new();
    assert_eq!(acts(f.start()), [WriteState(Initialising)]);
    assert_eq!(acts(b.start()), [WriteState(Initialising)]);
    assert_eq!(acts(f.handle(Event::PeerState(Initialising))), []);
    assert_eq!(acts(b.handle(Event::PeerState(Initialising))), []);
    assert_eq!(acts(b.handle(Event::LocalReady)), [WriteState(InitWait)]);
    assert_eq!(acts(f.handle(Event::PeerState(InitWait))), [PublishRing]);
    assert!(f.holds_session() && f.state() == Initialising);
    assert_eq!(acts(f.handle(Event::LocalReady)), [WriteState(Initialised)]);
    assert_eq!(acts(b.handle(Event::PeerState(Initialised))), [ReadRingDetails]);
    assert_eq!(acts(b.handle(Event::LocalReady)), [Connect, WriteState(Connected)]);
    assert_eq!(acts(f.handle(Event::PeerState(Connected))), [Connect, WriteState(Connected)]);
    assert_eq!(acts(b.handle(Event::PeerState(Connected))), []);
    assert!(f.is_connected() && b.is_connected());
    (f, b)
}

#[test]
fn happy_path() {
    let (f, b) = connected_pair();
    assert_eq!((f.state(), b.state()), (Connected, Connected));
}

#[test]
fn duplicate_watches_change_nothing() {
    let (mut f, mut b) = connected_pair();
    for _ in 0..3 {
        assert!(f.handle(Event::PeerState(Connected)).is_empty());
        assert!(b.handle(Event::PeerState(Connected)).is_empty());
    }
    let mut b = Backend::new();
    b.handle(Event::LocalReady);
    assert_eq!(acts(b.handle(Event::PeerState(Initialised))), [ReadRingDetails]);
    assert!(b.handle(Event::PeerState(Initialised)).is_empty(), "mapping once");
}

#[test]
fn skipped_states_back_seen_only_connected() {
    // The front missed InitWait? It cannot: it publishes on InitWait. But
    // once published, a back that jumps to Connected is taken as is.
    let mut f = Frontend::new();
    f.handle(Event::PeerState(InitWait));
    f.handle(Event::LocalReady);
    assert_eq!(acts(f.handle(Event::PeerState(Connected))), [Connect, WriteState(Connected)]);
    // A back Connected before we published is a stale session: wait.
    let mut f = Frontend::new();
    assert!(f.handle(Event::PeerState(Connected)).is_empty());
    assert!(!f.holds_session());
}

#[test]
fn skipped_states_front_seen_only_connected() {
    let mut b = Backend::new();
    b.handle(Event::LocalReady);
    assert_eq!(acts(b.handle(Event::PeerState(Connected))), [ReadRingDetails]);
    assert_eq!(acts(b.handle(Event::LocalReady)), [Connect, WriteState(Connected)]);
}

#[test]
fn skipped_states_front_initialised_before_back_ready() {
    let mut b = Backend::new();
    assert!(b.handle(Event::PeerState(Initialised)).is_empty(), "device not open yet");
    assert_eq!(acts(b.handle(Event::LocalReady)), [WriteState(InitWait), ReadRingDetails]);
}

#[test]
fn front_initiated_close() {
    let (mut f, mut b) = connected_pair();
    assert_eq!(acts(f.handle(Event::LocalShutdown)), [Disconnect, WriteState(Closing)]);
    assert_eq!(acts(b.handle(Event::PeerState(Closing))), [Disconnect, WriteState(Closed)]);
    assert_eq!(acts(f.handle(Event::PeerState(Closed))), [WriteState(Closed)]);
    assert!(b.handle(Event::PeerState(Closed)).is_empty());
    assert_eq!((f.state(), b.state()), (Closed, Closed));
    // S4: the front does not come back by itself.
    assert!(f.handle(Event::PeerState(InitWait)).is_empty());
    assert!(f.handle(Event::LocalShutdown).is_empty());
}

#[test]
fn back_initiated_close() {
    let (mut f, mut b) = connected_pair();
    assert_eq!(acts(b.handle(Event::LocalShutdown)), [Disconnect, WriteState(Closing)]);
    assert_eq!(acts(f.handle(Event::PeerState(Closing))), [Disconnect, WriteState(Closed)]);
    assert_eq!(acts(b.handle(Event::PeerState(Closed))), [WriteState(Closed)]);
    assert_eq!((f.state(), b.state()), (Closed, Closed));
    // S4: the back does not come back, even for a new front.
    assert!(b.handle(Event::PeerState(Initialising)).is_empty());
}

#[test]
fn both_close_at_once() {
    let (mut f, mut b) = connected_pair();
    f.handle(Event::LocalShutdown);
    b.handle(Event::LocalShutdown);
    assert_eq!(acts(f.handle(Event::PeerState(Closing))), [WriteState(Closed)]);
    assert_eq!(acts(b.handle(Event::PeerState(Closing))), [WriteState(Closed)]);
}

#[test]
fn s2_peer_gone_in_each_state_releases_the_session() {
    // Front: the back vanishes (or shows Closed, or Unknown) in each of the
    // front's states.
    for gone in [Event::PeerGone, Event::PeerState(Closed), Event::PeerState(Unknown), Event::PeerState(Closing)] {
        let mut f = Frontend::new();
        f.handle(gone);
        assert!(!f.holds_session() && f.state() == Initialising, "nothing to tear down");

        let mut f = Frontend::new();
        f.handle(Event::PeerState(InitWait));
        assert_eq!(acts(f.handle(gone)), [Disconnect, WriteState(Closed)], "publishing, {gone:?}");
        assert!(f.handle(Event::LocalReady).iter().all(|a| matches!(a, Error(_))), "cancelled step");

        let mut f = Frontend::new();
        f.handle(Event::PeerState(InitWait));
        f.handle(Event::LocalReady);
        assert_eq!(acts(f.handle(gone)), [Disconnect, WriteState(Closed)], "initialised, {gone:?}");

        let (mut f, _) = connected_pair();
        assert_eq!(acts(f.handle(gone)), [Disconnect, WriteState(Closed)], "connected, {gone:?}");
        assert!(!f.is_connected() && !f.holds_session());
    }
    // Back: the front vanishes (or shows Closed) in each of the back's states.
    for gone in [Event::PeerGone, Event::PeerState(Closed), Event::PeerState(Unknown), Event::PeerState(Closing)] {
        let mut b = Backend::new();
        assert!(b.handle(gone).is_empty());
        assert_eq!(acts(b.handle(Event::LocalReady)), [WriteState(InitWait)]);
        assert!(b.handle(gone).is_empty(), "waiting: nothing to tear down");

        let mut b = Backend::new();
        b.handle(Event::LocalReady);
        b.handle(Event::PeerState(Initialised));
        assert_eq!(acts(b.handle(gone)), [Disconnect, WriteState(Closed)], "mapping, {gone:?}");

        let (_, mut b) = connected_pair();
        assert_eq!(acts(b.handle(gone)), [Disconnect, WriteState(Closed)], "connected, {gone:?}");
        assert!(!b.is_connected() && !b.holds_session());
    }
}

#[test]
fn reconnect_after_front_restarts() {
    let (mut f, mut b) = connected_pair();
    // The front's node vanishes; a new front instance comes up.
    assert_eq!(acts(b.handle(Event::PeerGone)), [Disconnect, WriteState(Closed)]);
    drop(f.clone());
    f = Frontend::new();
    f.start();
    assert!(f.handle(Event::PeerState(Closed)).is_empty());
    assert_eq!(acts(b.handle(Event::PeerState(Initialising))), [Reset, WriteState(InitWait)]);
    assert_eq!(acts(f.handle(Event::PeerState(InitWait))), [PublishRing]);
    f.handle(Event::LocalReady);
    assert_eq!(acts(b.handle(Event::PeerState(Initialised))), [ReadRingDetails]);
    b.handle(Event::LocalReady);
    f.handle(Event::PeerState(Connected));
    assert!(f.is_connected() && b.is_connected());
}

#[test]
fn reconnect_when_connected_back_sees_a_restarted_front() {
    let (_, mut b) = connected_pair();
    assert_eq!(acts(b.handle(Event::PeerState(Initialising))), [Disconnect, WriteState(InitWait)]);
    assert_eq!(acts(b.handle(Event::PeerState(Initialised))), [ReadRingDetails]);
}

#[test]
fn reconnect_after_back_restarts() {
    let (mut f, _) = connected_pair();
    // The store coalesced Gone -> Initialising -> InitWait into InitWait.
    assert_eq!(
        acts(f.handle(Event::PeerState(InitWait))),
        [Disconnect, WriteState(Closed), Reset, WriteState(Initialising), PublishRing]
    );
    let (mut f, _) = connected_pair();
    assert_eq!(acts(f.handle(Event::PeerGone)), [Disconnect, WriteState(Closed)]);
    assert!(f.handle(Event::PeerState(Initialising)).is_empty());
    assert_eq!(acts(f.handle(Event::PeerState(InitWait))), [Reset, WriteState(Initialising), PublishRing]);
}

#[test]
fn back_map_failure_waits_for_the_front() {
    let mut b = Backend::new();
    b.handle(Event::LocalReady);
    b.handle(Event::PeerState(Initialised));
    assert_eq!(acts(b.handle(Event::LocalFailed)), [Disconnect, Error(Violation::BadRingDetails)]);
    assert_eq!(b.state(), InitWait);
    // Retried only when the front writes again.
    assert_eq!(acts(b.handle(Event::PeerState(Initialised))), [ReadRingDetails]);
}

#[test]
fn front_failure_is_fatal() {
    let (mut f, _) = connected_pair();
    assert_eq!(acts(f.handle(Event::LocalFailed)), [Disconnect, WriteState(Closing)]);
    assert_eq!(acts(f.handle(Event::PeerState(Closed))), [WriteState(Closed)]);
    assert!(f.handle(Event::PeerState(InitWait)).is_empty());
}

#[test]
fn back_open_failure_is_fatal() {
    let mut b = Backend::new();
    // No front yet: nothing uses the session, so straight on to Closed.
    assert_eq!(acts(b.handle(Event::LocalFailed)), [WriteState(Closing), WriteState(Closed)]);
    assert!(b.handle(Event::PeerState(Initialising)).is_empty());
    // A late completion after shutdown is ignored (S4).
    assert!(b.handle(Event::LocalReady).is_empty());
}

#[test]
fn s3_states_the_peer_never_writes_are_errors() {
    let (mut f, mut b) = connected_pair();
    for s in [Initialised, Reconfiguring, Reconfigured] {
        assert_eq!(acts(f.handle(Event::PeerState(s))), [Error(Violation::PeerState { peer: s, local: Connected })]);
    }
    for s in [InitWait, Reconfiguring, Reconfigured] {
        assert_eq!(acts(b.handle(Event::PeerState(s))), [Error(Violation::PeerState { peer: s, local: Connected })]);
    }
    assert!(f.is_connected() && b.is_connected(), "ignored");
}

#[test]
fn s3_unexpected_local_events_are_errors() {
    let (mut f, mut b) = connected_pair();
    let e = Error(Violation::UnexpectedLocal { local: Connected });
    assert_eq!(acts(f.handle(Event::LocalReady)), [e]);
    assert_eq!(acts(b.handle(Event::LocalReady)), [e]);
    assert_eq!(acts(b.handle(Event::LocalFailed)), [e]);
    let mut f = Frontend::new();
    assert_eq!(acts(f.handle(Event::LocalFailed)), [Error(Violation::UnexpectedLocal { local: Initialising })]);
}

/// Every event in every reachable state: never a panic, never more than
/// the capacity, and the S1 bookkeeping holds.
#[test]
fn s1_every_event_in_every_state() {
    let events: Vec<Event> = (0..=8)
        .map(|c| Event::PeerState(State::from_code(c).unwrap()))
        .chain([Event::PeerGone, Event::LocalReady, Event::LocalFailed, Event::LocalShutdown])
        .collect();
    // Breadth-first over event sequences up to length 5 (13^5 each),
    // deduplicated by machine state.
    let mut fronts = std::vec![Frontend::new()];
    let mut backs = std::vec![Backend::new()];
    for _ in 0..5 {
        let mut nf = Vec::new();
        let mut nb = Vec::new();
        for f in &fronts {
            for &e in &events {
                let mut f = f.clone();
                let before = f.holds_session();
                let out = f.handle(e);
                assert!(out.len() < Actions::CAPACITY, "capacity reached: {out:?}");
                assert!(!f.clone().react(&mut Actions::new()), "not settled after {e:?}: {f:?}");
                check_s1(before, f.holds_session(), &out);
                nf.push(f);
            }
        }
        for b in &backs {
            for &e in &events {
                let mut b = b.clone();
                let before = b.holds_session();
                let out = b.handle(e);
                assert!(out.len() < Actions::CAPACITY, "capacity reached: {out:?}");
                assert!(!b.clone().react(&mut Actions::new()), "not settled after {e:?}: {b:?}");
                check_s1(before, b.holds_session(), &out);
                nb.push(b);
            }
        }
        nf.sort_by_key(|f| std::format!("{f:?}"));
        nf.dedup_by_key(|f| std::format!("{f:?}"));
        nb.sort_by_key(|b| std::format!("{b:?}"));
        nb.dedup_by_key(|b| std::format!("{b:?}"));
        fronts = nf;
        backs = nb;
    }
    // Every phase was reached.
    for s in [Initialising, Initialised, Connected, Closing, Closed] {
        assert!(fronts.iter().any(|f| f.state() == s), "front never {s:?}");
    }
    for s in [Initialising, InitWait, Connected, Closing, Closed] {
        assert!(backs.iter().any(|b| b.state() == s), "back never {s:?}");
    }
}

fn check_s1(before: bool, after: bool, out: &Actions) {
    let mut holds = before;
    for a in out.iter() {
        match a {
            PublishRing | ReadRingDetails => {
                assert!(!holds, "a second session before the first was released: {out:?}");
                holds = true;
            }
            Disconnect => {
                assert!(holds, "Disconnect without a session: {out:?}");
                holds = false;
            }
            WriteState(Closed) => assert!(!holds, "Closed while holding the ring: {out:?}"),
            Connect => assert!(holds, "Connect without a ring: {out:?}"),
            _ => {}
        }
    }
    assert_eq!(holds, after, "{out:?}");
}

// --- The fake store model ----------------------------------------------------

/// A pending local step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Open,
    Publish,
    Map,
}

#[derive(Default)]
struct Side<M> {
    machine: Option<M>,
    node: Option<State>,
    /// The peer's node changed (or the watch was just set): deliver.
    watch: bool,
    work: Option<Work>,
    /// Front: the ring it published; back: the ring it mapped.
    ring: Option<u64>,
    /// The ring it connected on.
    conn: Option<u64>,
    shutdown: bool,
    dead: bool,
    ever_dead: bool,
}

#[derive(Default)]
struct World {
    front: Side<Frontend>,
    back: Side<Backend>,
    next_ring: u64,
    map_failures: usize,
    steps: usize,
}

/// What the scheduler may do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    DeliverFront,
    DeliverBack,
    WorkFront,
    WorkBack,
    SpuriousFront,
    SpuriousBack,
    KillFront,
    KillBack,
    ShutdownFront,
    ShutdownBack,
    RespawnFront,
    RespawnBack,
}

impl World {
    fn new() -> World {
        let mut w = World::default();
        w.spawn_front();
        w.spawn_back();
        w
    }

    fn spawn_front(&mut self) {
        let f = Frontend::new();
        let a = f.start();
        self.front = Side { machine: Some(f), watch: true, ever_dead: self.front.ever_dead, ..Side::default() };
        self.apply_front(a);
    }

    fn spawn_back(&mut self) {
        let b = Backend::new();
        let a = b.start();
        self.back = Side {
            machine: Some(b),
            watch: true,
            work: Some(Work::Open),
            ever_dead: self.back.ever_dead,
            ..Side::default()
        };
        self.apply_back(a);
    }

    fn apply_front(&mut self, actions: Actions) {
        for a in actions {
            match a {
                WriteState(s) => {
                    self.front.node = Some(s);
                    self.back.watch = true;
                }
                PublishRing => {
                    assert_eq!(self.front.work, None);
                    self.front.work = Some(Work::Publish);
                }
                Connect => {
                    assert!(self.front.ring.is_some(), "front connects without a ring");
                    self.front.conn = self.front.ring;
                }
                Disconnect => {
                    self.front.work = None;
                    self.front.ring = None;
                    self.front.conn = None;
                }
                Reset => assert!(self.front.ring.is_none() && self.front.work.is_none()),
                ReadRingDetails => panic!("front asked to read ring details"),
                Error(v) => panic!("front reported {v:?} in an honest run"),
            }
        }
    }

    fn apply_back(&mut self, actions: Actions) {
        for a in actions {
            match a {
                WriteState(s) => {
                    self.back.node = Some(s);
                    self.front.watch = true;
                }
                ReadRingDetails => {
                    assert_eq!(self.back.work, None);
                    self.back.work = Some(Work::Map);
                }
                Connect => {
                    assert!(self.back.ring.is_some(), "back connects without a mapping");
                    self.back.conn = self.back.ring;
                }
                Disconnect => {
                    self.back.work = None;
                    self.back.ring = None;
                    self.back.conn = None;
                }
                Reset => assert!(self.back.ring.is_none() && self.back.work.is_none()),
                PublishRing => panic!("back asked to publish a ring"),
                Error(Violation::BadRingDetails) => self.map_failures += 1,
                Error(v) => panic!("back reported {v:?} in an honest run"),
            }
        }
    }

    fn moves(&self, faults: bool) -> Vec<Move> {
        let mut m = Vec::new();
        let (f, b) = (&self.front, &self.back);
        if f.machine.is_some() && f.watch {
            m.push(Move::DeliverFront);
        }
        if b.machine.is_some() && b.watch {
            m.push(Move::DeliverBack);
        }
        if f.machine.is_some() && f.work.is_some() {
            m.push(Move::WorkFront);
        }
        if b.machine.is_some() && b.work.is_some() {
            m.push(Move::WorkBack);
        }
        if faults {
            m.extend([Move::SpuriousFront, Move::SpuriousBack]);
            if f.machine.is_some() {
                m.extend([Move::KillFront, Move::ShutdownFront]);
            }
            if b.machine.is_some() {
                m.extend([Move::KillBack, Move::ShutdownBack]);
            }
            // S5: a replacement only once the survivor let go.
            if f.dead && b.machine.as_ref().is_none_or(|b| !b.holds_session()) {
                m.push(Move::RespawnFront);
            }
            if b.dead && f.machine.as_ref().is_none_or(|f| !f.holds_session()) {
                m.push(Move::RespawnBack);
            }
        }
        m
    }

    fn deliver_front(&mut self) {
        self.front.watch = false;
        let ev = self.back.node.map_or(Event::PeerGone, Event::PeerState);
        let a = self.front.machine.as_mut().unwrap().handle(ev);
        self.apply_front(a);
    }

    fn deliver_back(&mut self) {
        self.back.watch = false;
        let ev = self.front.node.map_or(Event::PeerGone, Event::PeerState);
        let a = self.back.machine.as_mut().unwrap().handle(ev);
        self.apply_back(a);
    }

    fn play(&mut self, m: Move) {
        self.steps += 1;
        match m {
            Move::DeliverFront => self.deliver_front(),
            Move::DeliverBack => self.deliver_back(),
            Move::WorkFront => {
                let work = self.front.work.take().unwrap();
                assert_eq!(work, Work::Publish);
                self.next_ring += 1;
                self.front.ring = Some(self.next_ring);
                let a = self.front.machine.as_mut().unwrap().handle(Event::LocalReady);
                self.apply_front(a);
            }
            Move::WorkBack => {
                let work = self.back.work.take().unwrap();
                let ev = match work {
                    Work::Open => Event::LocalReady,
                    // Map the ring the front has published now, if any.
                    Work::Map => match self.front.ring {
                        Some(r) if self.front.work.is_none() => {
                            self.back.ring = Some(r);
                            Event::LocalReady
                        }
                        _ => Event::LocalFailed,
                    },
                    Work::Publish => unreachable!(),
                };
                let a = self.back.machine.as_mut().unwrap().handle(ev);
                self.apply_back(a);
            }
            Move::SpuriousFront => self.front.watch = self.front.machine.is_some(),
            Move::SpuriousBack => self.back.watch = self.back.machine.is_some(),
            Move::KillFront => {
                // The domain dies: its node is removed, its grants are
                // revoked once unmapped (the back's mapping stays valid
                // until it disconnects).
                self.front = Side { dead: true, ever_dead: true, shutdown: self.front.shutdown, ..Side::default() };
                self.back.watch = true;
            }
            Move::KillBack => {
                self.back = Side { dead: true, ever_dead: true, shutdown: self.back.shutdown, ..Side::default() };
                self.front.watch = true;
            }
            Move::ShutdownFront => {
                self.front.shutdown = true;
                let a = self.front.machine.as_mut().unwrap().handle(Event::LocalShutdown);
                self.apply_front(a);
            }
            Move::ShutdownBack => {
                self.back.shutdown = true;
                let a = self.back.machine.as_mut().unwrap().handle(Event::LocalShutdown);
                self.apply_back(a);
            }
            Move::RespawnFront => {
                self.front.shutdown = false;
                self.spawn_front();
            }
            Move::RespawnBack => {
                self.back.shutdown = false;
                self.spawn_back();
            }
        }
        self.check_always();
    }

    /// Safety at every step: each side is connected only on its own ring,
    /// and two connected sides share one.
    fn check_always(&self) {
        let (f, b) = (&self.front, &self.back);
        if let Some(r) = f.conn {
            assert_eq!(f.ring, Some(r));
            assert!(f.machine.as_ref().unwrap().is_connected());
        }
        if let Some(r) = b.conn {
            assert_eq!(b.ring, Some(r));
            assert!(b.machine.as_ref().unwrap().is_connected());
        }
        if let (Some(x), Some(y)) = (f.conn, b.conn) {
            assert_eq!(x, y, "connected on different rings");
        }
        if let Some(m) = &f.machine {
            assert_eq!(f.node, Some(m.state()));
        }
        if let Some(m) = &b.machine {
            assert_eq!(b.node, Some(m.state()));
        }
    }

    /// At quiescence (nothing left to deliver or finish).
    fn check_end(&self) {
        let (f, b) = (&self.front, &self.back);
        let (fa, ba) = (f.machine.as_ref(), b.machine.as_ref());
        // Never one side connected while the other is gone or not connected.
        assert_eq!(
            f.conn.is_some(),
            b.conn.is_some(),
            "one side connected alone: front {:?} back {:?}",
            f.node,
            b.node
        );
        if let (Some(x), Some(y)) = (f.conn, b.conn) {
            assert_eq!(x, y);
        }
        // Liveness: two live sides that want to talk end Connected.
        if fa.is_some() && ba.is_some() && !f.shutdown && !b.shutdown {
            assert!(f.conn.is_some(), "stuck: front {:?} back {:?}", f.node, b.node);
            assert_eq!((f.node, b.node), (Some(Connected), Some(Connected)));
        }
        // A side that shut down ends Closed, and so does a peer that had a
        // session with it; no survivor holds anything of a dead peer.
        for (side, alive, holds) in [
            (f.shutdown, fa.is_some(), fa.is_some_and(|m| m.holds_session())),
            (b.shutdown, ba.is_some(), ba.is_some_and(|m| m.holds_session())),
        ] {
            if side && alive {
                assert!(!holds);
            }
        }
        if f.shutdown && fa.is_some() {
            assert_eq!(f.node, Some(Closed));
        }
        if b.shutdown && ba.is_some() {
            assert_eq!(b.node, Some(Closed));
        }
        if fa.is_none() || f.shutdown {
            assert!(b.conn.is_none() && ba.is_none_or(|m| !m.holds_session()));
            if let Some(s) = b.node {
                assert!(matches!(s, Closed | InitWait | Initialising), "back left in {s:?}");
            }
        }
        if ba.is_none() || b.shutdown {
            assert!(f.conn.is_none() && fa.is_none_or(|m| !m.holds_session()));
            if let Some(s) = f.node {
                assert!(matches!(s, Closed | Initialising), "front left in {s:?}");
            }
        }
    }

    /// Run to quiescence with no more faults, in a fixed order.
    fn settle(&mut self) {
        for _ in 0..200 {
            let m = self.moves(false);
            let Some(&first) = m.first() else { return };
            self.play(first);
        }
        panic!("no quiescence after 200 steps: livelock");
    }
}

fn run(script: &[(u8, bool)]) -> World {
    run_then(script, &[])
}

/// `script`, settle and check; then replace every dead side, play
/// `after` (honest moves only, arbitrary order), settle and check again.
fn run_then(script: &[(u8, bool)], after: &[u8]) -> World {
    let mut w = World::new();
    let mut faults = 0;
    for &(pick, fault) in script {
        let allow = fault && faults < 4;
        let m = w.moves(allow);
        if m.is_empty() {
            break;
        }
        let mv = m[usize::from(pick) % m.len()];
        if !matches!(mv, Move::DeliverFront | Move::DeliverBack | Move::WorkFront | Move::WorkBack) {
            faults += 1;
        }
        w.play(mv);
    }
    w.settle();
    w.check_end();
    if after.is_empty() {
        return w;
    }
    let respawned = w.front.dead || w.back.dead;
    if w.front.dead {
        w.play(Move::RespawnFront);
    }
    if w.back.dead {
        w.play(Move::RespawnBack);
    }
    for &pick in after {
        let m = w.moves(false);
        if m.is_empty() {
            break;
        }
        w.play(m[usize::from(pick) % m.len()]);
    }
    w.settle();
    w.check_end();
    if respawned && !w.front.shutdown && !w.back.shutdown {
        assert_eq!((w.front.node, w.back.node), (Some(Connected), Some(Connected)), "no reconnection");
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary interleavings of watch deliveries and local steps, with
    /// up to four faults (a side dies or shuts down, a replacement comes
    /// up, a watch fires spuriously) at arbitrary points: S1-S5 hold.
    #[test]
    fn prop_handshake_through_a_fake_store(
        script in proptest::collection::vec((any::<u8>(), proptest::bool::weighted(0.15)), 0..80),
    ) {
        run(&script);
    }

    /// As above, then every dead side is replaced (S5): the pair
    /// reconnects unless a survivor shut down.
    #[test]
    fn prop_reconnection_after_replacement(
        script in proptest::collection::vec((any::<u8>(), proptest::bool::weighted(0.2)), 0..80),
        after in proptest::collection::vec(any::<u8>(), 1..40),
    ) {
        run_then(&script, &after);
    }

    /// Without faults every interleaving ends both Connected.
    #[test]
    fn prop_happy_path_any_interleaving(script in proptest::collection::vec(any::<u8>(), 0..40)) {
        let script: Vec<(u8, bool)> = script.into_iter().map(|p| (p, false)).collect();
        let w = run(&script);
        prop_assert_eq!((w.front.node, w.back.node), (Some(Connected), Some(Connected)));
    }
}

#[test]
fn model_peer_dies_in_each_state() {
    // Kill each side after each number of honest steps (0..12 covers
    // every state of both), then let the survivor settle; then replace it.
    for kill_front in [false, true] {
        for after in 0..12 {
            let mut w = World::new();
            for _ in 0..after {
                if let Some(&m) = w.moves(false).first() {
                    w.play(m);
                }
            }
            w.play(if kill_front { Move::KillFront } else { Move::KillBack });
            w.settle();
            w.check_end();
            if kill_front {
                assert!(w.back.conn.is_none());
                w.play(Move::RespawnFront);
            } else {
                assert!(w.front.conn.is_none());
                w.play(Move::RespawnBack);
            }
            w.settle();
            w.check_end();
            assert_eq!((w.front.node, w.back.node), (Some(Connected), Some(Connected)), "after {after}");
        }
    }
}

#[test]
fn model_peer_shuts_down_in_each_state() {
    for front in [false, true] {
        for after in 0..12 {
            let mut w = World::new();
            for _ in 0..after {
                if let Some(&m) = w.moves(false).first() {
                    w.play(m);
                }
            }
            let connected = w.front.conn.is_some();
            w.play(if front { Move::ShutdownFront } else { Move::ShutdownBack });
            w.settle();
            w.check_end();
            if connected {
                assert_eq!((w.front.node, w.back.node), (Some(Closed), Some(Closed)), "after {after}");
            }
        }
    }
}
