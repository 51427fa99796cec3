//! The connection state machine every split-driver frontend and backend
//! runs: Xen's `XenbusState` values in each side's `state` node, and two
//! pure handshake drivers, [`Frontend`] and [`Backend`], that turn what the
//! driver observes ([`Event`]) into what it must do ([`Action`]).
//!
//! # Who writes what
//! Each side writes only its own `state` node (and its own details: the
//! back its features and disk size before `InitWait`, the front its
//! `ring-ref` and `event-channel` before `Initialised`), and watches the
//! peer's. A watch fires after the peer writes; the driver then reads the
//! peer's node **as it is now** and feeds [`Event::PeerState`] (or
//! [`Event::PeerGone`] if the node is absent). So intermediate states may
//! be missed (a peer may seem to jump from `InitWait` straight to
//! `Connected`, or to `Closed`), a value may be delivered twice, and the
//! value read is hostile: it becomes a [`State`] only through
//! [`State::parse`].
//!
//! # The handshake (Xen's blkfront/blkback, made explicit)
//! ```text
//!  back  Initialising --LocalReady (device open, features written)--> InitWait
//!  front Initialising --back InitWait--> PublishRing
//!                     --LocalReady (ring-ref, event-channel written)--> Initialised
//!  back  InitWait     --front Initialised or Connected--> ReadRingDetails
//!                     --LocalReady (ring mapped, channel bound)--> Connect, Connected
//!  front Initialised  --back Connected--> Connect, Connected
//! ```
//! Teardown:
//! - the side that closes ([`Event::LocalShutdown`]) disconnects, writes
//!   `Closing`, and writes `Closed` once the peer no longer uses the
//!   session (it shows `Closing`, `Closed`, has gone, or never connected);
//! - the side that sees its peer `Closing`, `Closed` or gone during a
//!   session disconnects and writes `Closed` at once (it holds nothing any
//!   more; Xen's blkback passes through `Closing`, which we accept too).
//!
//! Reconnection, without a new driver instance:
//! - a back that is `Closed` (not shut down) goes back to `InitWait` when
//!   the front shows `Initialising` again; a `Connected` back that sees the
//!   front `Initialising` (a restarted front) disconnects and goes straight
//!   back to `InitWait`;
//! - a front that is `Closed` (not shut down) starts over (`Reset`,
//!   `Initialising`, `PublishRing`) when the back shows `InitWait` again; a
//!   front in a session that sees the back `Initialising` (a restarted
//!   back) tears down to `Closed` and waits for that `InitWait`, and a
//!   `Connected` front that sees `InitWait` does both at once.
//!
//! # Rules
//! - **S1 — Connect once per session.** [`Action::Connect`] is returned
//!   only after the side's own ring step ([`Action::PublishRing`] /
//!   [`Action::ReadRingDetails`]) completed with [`Event::LocalReady`] in
//!   the same session, and [`Action::Disconnect`] is returned exactly once
//!   for every [`Action::PublishRing`] / [`Action::ReadRingDetails`],
//!   before any `WriteState(Closed)` of that session: a side never shows
//!   `Closed` while it still uses the ring.
//! - **S2 — Peer gone means session over.** A peer whose node vanished (or
//!   reads [`State::Unknown`]) is treated as `Closed`; a side with nothing
//!   to tear down just keeps waiting.
//! - **S3 — Hostile values are reported, never trusted.** A state string
//!   that is not one of the nine decimal values is a
//!   [`ParseStateError`] (feed nothing, or [`Event::PeerGone`]); a state
//!   the peer's role never writes (a back showing `Initialised`, a front
//!   showing `InitWait`, either showing `Reconfiguring`/`Reconfigured`,
//!   which we do not support) and a local event that is not expected now
//!   return [`Action::Error`] and change nothing. Nothing panics.
//!   (A local step that completes after [`Event::LocalShutdown`] is
//!   expected, and ignored silently.)
//! - **S4 — Shutdown is sticky.** After [`Event::LocalShutdown`] (or a
//!   front's [`Event::LocalFailed`], which is fatal for the front as Xen's
//!   `xenbus_dev_fatal`), the side ends `Closed` and never reconnects; make
//!   a new instance to start again.
//! - **S5 — Replacement peers.** A new instance of a dead peer must be
//!   created only after the survivor processed the death (it returned
//!   `Disconnect`, or held no session): the toolstack's job, as libxl waits
//!   for a device's `Closed` before re-creating it. Otherwise the store's
//!   coalescing could hide the death, and a new back could map a ring the
//!   front is tearing down. With that rule, both sides end `Connected` on
//!   the same ring, or neither is connected (property-tested against a fake
//!   store with arbitrary watch interleavings, deaths in every state and
//!   replacements).
//!
//! # End states
//! Once every watch has been delivered and every local step finished (the
//! property tests check each of these):
//! - neither side shut down or died: both `Connected`, on the same ring;
//! - a side shut down: it is `Closed`, and so is a peer that was in a
//!   session with it. A back that never mapped a ring stays in `InitWait`
//!   (waiting for a front, as Xen's blkback does for an online device), and
//!   a front that never published stays `Initialising`;
//! - a side died: the survivor holds nothing of the session (it is
//!   `Closed`, or still waiting as above) and is not connected; once the
//!   dead side is replaced (S5), the pair reconnects.
//!
//! Every call does a bounded amount of work: a handful of re-evaluations
//! of the latest peer state, at most [`Actions::CAPACITY`] actions.

use core::fmt;

/// A `XenbusState` (Xen's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum State {
    /// 0: the node is unreadable or not yet written.
    Unknown = 0,
    /// 1: starting.
    Initialising = 1,
    /// 2: early initialisation done, waiting for the peer (back: features
    /// published).
    InitWait = 2,
    /// 3: details for the peer published (front: ring and channel).
    Initialised = 3,
    /// 4: running.
    Connected = 4,
    /// 5: shutting down.
    Closing = 5,
    /// 6: shut down, holding nothing of the session.
    Closed = 6,
    /// 7: reconfiguring (not supported here).
    Reconfiguring = 7,
    /// 8: reconfigured (not supported here).
    Reconfigured = 8,
}

/// Why a store value is not a [`State`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseStateError {
    /// Not exactly one byte.
    Length {
        /// Bytes given.
        len: usize,
    },
    /// One byte, but not an ASCII digit `0..=8`.
    Value {
        /// The byte.
        byte: u8,
    },
}

impl State {
    const ALL: [State; 9] = [
        State::Unknown,
        State::Initialising,
        State::InitWait,
        State::Initialised,
        State::Connected,
        State::Closing,
        State::Closed,
        State::Reconfiguring,
        State::Reconfigured,
    ];

    /// Parse the store's value: exactly one ASCII digit `0`..=`8`. Nothing
    /// else is accepted: no sign, no leading zero, no whitespace, no
    /// terminating NUL (store values carry their length).
    ///
    /// # Errors
    /// [`ParseStateError`] for anything else.
    pub fn parse(value: &[u8]) -> Result<State, ParseStateError> {
        let [byte] = *value else {
            return Err(ParseStateError::Length { len: value.len() });
        };
        let digit = byte.wrapping_sub(b'0');
        State::from_code(digit).ok_or(ParseStateError::Value { byte })
    }

    /// The state with number `code`.
    pub fn from_code(code: u8) -> Option<State> {
        State::ALL.get(usize::from(code)).copied()
    }

    /// The number.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The value to write to the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "0",
            State::Initialising => "1",
            State::InitWait => "2",
            State::Initialised => "3",
            State::Connected => "4",
            State::Closing => "5",
            State::Closed => "6",
            State::Reconfiguring => "7",
            State::Reconfigured => "8",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, self.code())
    }
}

/// What the driver observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer's node reads this state (after a watch fired).
    PeerState(State),
    /// The peer's node is absent (removed, or not yet created).
    PeerGone,
    /// The local step asked for last is done: the device is open and the
    /// features written (back, first), the ring and channel published
    /// ([`Action::PublishRing`], front), the ring mapped and channel bound
    /// ([`Action::ReadRingDetails`], back). Never feed it for a step that a
    /// later [`Action::Disconnect`] or [`Action::Reset`] cancelled.
    LocalReady,
    /// The local step failed: the device cannot be opened (back; closes for
    /// good), the front's details cannot be mapped (back; it stays in
    /// `InitWait` and retries once the front writes its node again), or the front cannot publish or found the back
    /// broken (front; closes for good, S4).
    LocalFailed,
    /// Close for good (device removed, domain shutting down).
    LocalShutdown,
}

/// What the driver must do, in the order returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this value to our `state` node.
    WriteState(State),
    /// Front: allocate and grant the ring, bind an unbound event channel,
    /// write `ring-ref` and `event-channel`; then feed [`Event::LocalReady`].
    PublishRing,
    /// Back: read the front's `ring-ref` and `event-channel` (allegations),
    /// map the ring, bind the channel; then feed [`Event::LocalReady`] (or
    /// [`Event::LocalFailed`]).
    ReadRingDetails,
    /// Start I/O. Front: read the back's details (sectors, features) first.
    Connect,
    /// Stop I/O and release the session: the ring, its grants (or
    /// mapping) and the channel (front: [`crate::blkif::Inflight::abandon_next`]
    /// and grant rule G1).
    Disconnect,
    /// Forget the old session's details before starting a new one.
    Reset,
    /// The peer (or the driver) broke the protocol; nothing changed. Log it.
    Error(Violation),
}

/// A protocol violation reported by [`Action::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The peer showed a state its role never writes, or one we do not
    /// support (`Reconfiguring`, `Reconfigured`); ignored.
    PeerState {
        /// What the peer showed.
        peer: State,
        /// Our state.
        local: State,
    },
    /// [`Event::LocalReady`] or [`Event::LocalFailed`] with no local step
    /// outstanding; ignored.
    UnexpectedLocal {
        /// Our state.
        local: State,
    },
    /// The back could not map what the front published; the back stays in
    /// `InitWait` and tries again only after the front writes its node.
    BadRingDetails,
}

/// The actions for one event: at most [`Actions::CAPACITY`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actions {
    list: [Option<Action>; Actions::CAPACITY],
    len: usize,
}

impl Actions {
    /// The most actions one event returns.
    pub const CAPACITY: usize = 8;

    const fn new() -> Actions {
        Actions { list: [None; Actions::CAPACITY], len: 0 }
    }

    fn push(&mut self, action: Action) {
        // Never full: an event pushes at most 2 actions itself (or one
        // error, and then nothing else), and at most 3 transitions of at
        // most 2 actions each follow (`SETTLE_ROUNDS`); tested.
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = Some(action);
            self.len += 1;
        }
    }

    /// The actions, in order.
    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        self.list[..self.len].iter().flatten().copied()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl IntoIterator for Actions {
    type Item = Action;
    type IntoIter = core::iter::Flatten<core::iter::Take<core::array::IntoIter<Option<Action>, { Actions::CAPACITY }>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter().take(self.len).flatten()
    }
}

/// The peer as last seen: `None` when gone (or [`State::Unknown`], S2).
type Peer = Option<State>;

fn seen(state: State) -> Peer {
    (state != State::Unknown).then_some(state)
}

/// Re-evaluate until nothing changes. The longest chain is three
/// transitions (a front's teardown, restart and publish when a connected
/// front sees `InitWait`); a fourth round finds nothing to do (tested).
const SETTLE_ROUNDS: usize = 4;

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrontPhase {
    /// `Initialising`, nothing published; waiting for the back's `InitWait`.
    Init,
    /// `Initialising`, `PublishRing` outstanding.
    Publishing,
    /// `Initialised`; waiting for the back's `Connected`.
    Initialised,
    /// `Connected`.
    Connected,
    /// `Closing` (shutting down); waiting for the back to stop.
    Closing,
    /// `Closed`.
    Closed,
}

/// The frontend's half of the handshake.
#[derive(Clone, Debug)]
pub struct Frontend {
    phase: FrontPhase,
    peer: Peer,
    /// A `PublishRing` was returned and not yet its `Disconnect` (S1).
    holds: bool,
    /// Shut down for good (S4).
    shutdown: bool,
}

impl Default for Frontend {
    fn default() -> Self {
        Self::new()
    }
}

impl Frontend {
    /// A front about to announce itself: do [`Frontend::start`]'s actions,
    /// then watch the back's node.
    pub fn new() -> Frontend {
        Frontend { phase: FrontPhase::Init, peer: None, holds: false, shutdown: false }
    }

    /// The first actions: write `Initialising`.
    pub fn start(&self) -> Actions {
        let mut out = Actions::new();
        out.push(Action::WriteState(State::Initialising));
        out
    }

    /// The state we last asked to write.
    pub fn state(&self) -> State {
        match self.phase {
            FrontPhase::Init | FrontPhase::Publishing => State::Initialising,
            FrontPhase::Initialised => State::Initialised,
            FrontPhase::Connected => State::Connected,
            FrontPhase::Closing => State::Closing,
            FrontPhase::Closed => State::Closed,
        }
    }

    /// Whether I/O is running (between `Connect` and `Disconnect`).
    pub fn is_connected(&self) -> bool {
        self.phase == FrontPhase::Connected
    }

    /// Whether a ring is published or being published (a `Disconnect` is
    /// still owed).
    pub fn holds_session(&self) -> bool {
        self.holds
    }

    /// Whether it shut down for good (S4): it will never connect again.
    pub fn is_shut_down(&self) -> bool {
        self.shutdown
    }

    /// Feed one event; do the returned actions in order.
    pub fn handle(&mut self, event: Event) -> Actions {
        let mut out = Actions::new();
        match event {
            Event::PeerState(s @ (State::Initialised | State::Reconfiguring | State::Reconfigured)) => {
                out.push(Action::Error(Violation::PeerState { peer: s, local: self.state() }));
                return out;
            }
            Event::PeerState(s) => self.peer = seen(s),
            Event::PeerGone => self.peer = None,
            // S4: a step still in flight when we shut down finishes late.
            Event::LocalReady | Event::LocalFailed if self.shutdown => return out,
            Event::LocalReady => {
                if self.phase != FrontPhase::Publishing {
                    out.push(Action::Error(Violation::UnexpectedLocal { local: self.state() }));
                    return out;
                }
                self.phase = FrontPhase::Initialised;
                out.push(Action::WriteState(State::Initialised));
            }
            Event::LocalFailed => {
                if self.phase != FrontPhase::Publishing && self.phase != FrontPhase::Connected {
                    out.push(Action::Error(Violation::UnexpectedLocal { local: self.state() }));
                    return out;
                }
                self.close(&mut out);
            }
            Event::LocalShutdown => self.close(&mut out),
        }
        for _ in 0..SETTLE_ROUNDS {
            if !self.react(&mut out) {
                break;
            }
        }
        out
    }

    /// S4: disconnect, then `Closing`, for good.
    fn close(&mut self, out: &mut Actions) {
        if self.shutdown {
            return;
        }
        self.shutdown = true;
        if self.phase == FrontPhase::Closed {
            return;
        }
        self.release(out);
        self.phase = FrontPhase::Closing;
        out.push(Action::WriteState(State::Closing));
    }

    fn release(&mut self, out: &mut Actions) {
        if self.holds {
            self.holds = false;
            out.push(Action::Disconnect);
        }
    }

    /// The session is over on the back's side: release and show `Closed`.
    fn teardown(&mut self, out: &mut Actions) {
        self.release(out);
        self.phase = FrontPhase::Closed;
        out.push(Action::WriteState(State::Closed));
    }

    /// Apply the rule for the current phase and the latest peer state;
    /// `true` if the phase changed.
    fn react(&mut self, out: &mut Actions) -> bool {
        use State::*;
        let peer = self.peer;
        match self.phase {
            FrontPhase::Init => {
                if peer != Some(InitWait) {
                    return false;
                }
                self.holds = true;
                self.phase = FrontPhase::Publishing;
                out.push(Action::PublishRing);
            }
            // The back left the `InitWait` we answered: it closed, died or
            // restarted. (`Connected` cannot be for this ring before we
            // show `Initialised`; wait for LocalReady.)
            FrontPhase::Publishing => match peer {
                Some(Closing | Closed | Initialising) | None => self.teardown(out),
                _ => return false,
            },
            FrontPhase::Initialised => match peer {
                Some(Connected) => {
                    self.phase = FrontPhase::Connected;
                    out.push(Action::Connect);
                    out.push(Action::WriteState(Connected));
                }
                Some(Closing | Closed | Initialising) | None => self.teardown(out),
                _ => return false,
            },
            // `InitWait` or `Initialising` again: the back restarted.
            FrontPhase::Connected => match peer {
                Some(Closing | Closed | Initialising | InitWait) | None => self.teardown(out),
                _ => return false,
            },
            // Closed once the back no longer uses our ring.
            FrontPhase::Closing => match peer {
                Some(Connected) => return false,
                _ => {
                    self.phase = FrontPhase::Closed;
                    out.push(Action::WriteState(Closed));
                }
            },
            FrontPhase::Closed => {
                if self.shutdown || peer != Some(InitWait) {
                    return false;
                }
                out.push(Action::Reset);
                out.push(Action::WriteState(Initialising));
                self.phase = FrontPhase::Init;
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackPhase {
    /// `Initialising`; waiting for the device (LocalReady).
    Opening,
    /// `InitWait`; waiting for the front's `Initialised`.
    Waiting,
    /// `InitWait`, `ReadRingDetails` outstanding.
    Mapping,
    /// `Connected`.
    Connected,
    /// `Closing` (shutting down); waiting for the front to stop.
    Closing,
    /// `Closed`.
    Closed,
}

/// The backend's half of the handshake.
#[derive(Clone, Debug)]
pub struct Backend {
    phase: BackPhase,
    peer: Peer,
    /// A `ReadRingDetails` was returned and not yet its `Disconnect` (S1).
    holds: bool,
    /// Shut down for good (S4).
    shutdown: bool,
    /// The front's publication could not be mapped: do not retry it until
    /// the front's node is written again (the next `PeerState`).
    refused: bool,
}

impl Default for Backend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend {
    /// A back about to open its device: do [`Backend::start`]'s actions,
    /// open the device, write the features, feed [`Event::LocalReady`], and
    /// watch the front's node.
    pub fn new() -> Backend {
        Backend { phase: BackPhase::Opening, peer: None, holds: false, shutdown: false, refused: false }
    }

    /// The first actions: write `Initialising`.
    pub fn start(&self) -> Actions {
        let mut out = Actions::new();
        out.push(Action::WriteState(State::Initialising));
        out
    }

    /// The state we last asked to write.
    pub fn state(&self) -> State {
        match self.phase {
            BackPhase::Opening => State::Initialising,
            BackPhase::Waiting | BackPhase::Mapping => State::InitWait,
            BackPhase::Connected => State::Connected,
            BackPhase::Closing => State::Closing,
            BackPhase::Closed => State::Closed,
        }
    }

    /// Whether I/O is being served (between `Connect` and `Disconnect`).
    pub fn is_connected(&self) -> bool {
        self.phase == BackPhase::Connected
    }

    /// Whether the front's ring is mapped or being mapped (a `Disconnect`
    /// is still owed).
    pub fn holds_session(&self) -> bool {
        self.holds
    }

    /// Feed one event; do the returned actions in order.
    pub fn handle(&mut self, event: Event) -> Actions {
        let mut out = Actions::new();
        match event {
            Event::PeerState(s @ (State::InitWait | State::Reconfiguring | State::Reconfigured)) => {
                out.push(Action::Error(Violation::PeerState { peer: s, local: self.state() }));
                return out;
            }
            // Any news from the front lifts a refusal: map again only when
            // the front wrote something (never in a loop of our own).
            Event::PeerState(s) => (self.peer, self.refused) = (seen(s), false),
            Event::PeerGone => (self.peer, self.refused) = (None, false),
            // S4: a step still in flight when we shut down finishes late.
            Event::LocalReady | Event::LocalFailed if self.shutdown => return out,
            Event::LocalReady => match self.phase {
                BackPhase::Opening => {
                    self.phase = BackPhase::Waiting;
                    out.push(Action::WriteState(State::InitWait));
                }
                BackPhase::Mapping => {
                    self.phase = BackPhase::Connected;
                    out.push(Action::Connect);
                    out.push(Action::WriteState(State::Connected));
                }
                _ => {
                    out.push(Action::Error(Violation::UnexpectedLocal { local: self.state() }));
                    return out;
                }
            },
            Event::LocalFailed => match self.phase {
                BackPhase::Opening => self.close(&mut out),
                BackPhase::Mapping => {
                    self.release(&mut out);
                    self.phase = BackPhase::Waiting;
                    self.refused = true;
                    out.push(Action::Error(Violation::BadRingDetails));
                }
                _ => {
                    out.push(Action::Error(Violation::UnexpectedLocal { local: self.state() }));
                    return out;
                }
            },
            Event::LocalShutdown => self.close(&mut out),
        }
        for _ in 0..SETTLE_ROUNDS {
            if !self.react(&mut out) {
                break;
            }
        }
        out
    }

    fn close(&mut self, out: &mut Actions) {
        if self.shutdown {
            return;
        }
        self.shutdown = true;
        if self.phase == BackPhase::Closed {
            return;
        }
        self.release(out);
        self.phase = BackPhase::Closing;
        out.push(Action::WriteState(State::Closing));
    }

    fn release(&mut self, out: &mut Actions) {
        if self.holds {
            self.holds = false;
            out.push(Action::Disconnect);
        }
    }

    fn teardown(&mut self, out: &mut Actions) {
        self.release(out);
        self.phase = BackPhase::Closed;
        out.push(Action::WriteState(State::Closed));
    }

    fn react(&mut self, out: &mut Actions) -> bool {
        use State::*;
        let peer = self.peer;
        match self.phase {
            BackPhase::Opening => return false,
            // A front that shows `Connected` has published too (a skipped
            // `Initialised`). A front that is closed or gone: keep waiting
            // for the next one.
            BackPhase::Waiting => {
                if self.refused || !matches!(peer, Some(Initialised | Connected)) {
                    return false;
                }
                self.holds = true;
                self.phase = BackPhase::Mapping;
                out.push(Action::ReadRingDetails);
            }
            BackPhase::Mapping => match peer {
                Some(Closing | Closed) | None => self.teardown(out),
                // The front restarted under us: drop the mapping, stay in
                // `InitWait` for its next publication.
                Some(Initialising) => {
                    self.release(out);
                    self.phase = BackPhase::Waiting;
                }
                _ => return false,
            },
            BackPhase::Connected => match peer {
                Some(Closing | Closed) | None => self.teardown(out),
                Some(Initialising) => {
                    self.release(out);
                    self.phase = BackPhase::Waiting;
                    out.push(Action::WriteState(InitWait));
                }
                _ => return false,
            },
            BackPhase::Closing => match peer {
                Some(Initialised | Connected) => return false,
                _ => {
                    self.phase = BackPhase::Closed;
                    out.push(Action::WriteState(Closed));
                }
            },
            BackPhase::Closed => {
                if self.shutdown || peer != Some(Initialising) {
                    return false;
                }
                out.push(Action::Reset);
                out.push(Action::WriteState(InitWait));
                self.phase = BackPhase::Waiting;
            }
        }
        true
    }
}

error_impls! {
    ParseStateError => "invalid state value",
}

#[cfg(test)]
mod tests;
