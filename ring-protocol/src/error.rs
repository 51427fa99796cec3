//! [`RingError`]: a peer broke the protocol (R10), and [`PushError`].

/// A protocol violation by the peer, detected by validating something it
/// wrote. The endpoint that saw it is *latched*: every later call returns
/// the same error, and nothing more is read from or written to the ring.
/// Tear the connection down (and tell the toolstack); never retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// R4: the peer's producer index claims more unconsumed entries than
    /// the ring can hold (or went backwards past our consumer index).
    ProdOverflow {
        /// Producer index read from shared memory.
        prod: u32,
        /// Our consumer index.
        cons: u32,
        /// Entries the ring could hold at most.
        limit: u32,
    },
    /// R4: the back published more responses than requests outstanding.
    RspOverflow {
        /// Response producer index read from shared memory.
        rsp_prod: u32,
        /// Our response consumer index.
        rsp_cons: u32,
        /// Requests we published.
        req_prod: u32,
    },
    /// R4 (streams): the consumer index moved backwards or past what we
    /// published.
    ConsOutOfRange {
        /// Consumer index read from shared memory.
        cons: u32,
        /// The consumer index we saw before.
        seen: u32,
        /// Our published producer index.
        prod: u32,
    },
    /// R11: a response named an id that is not in flight (unknown,
    /// duplicate or stale). Latched by the caller with `poison`.
    BadId {
        /// The id the peer sent.
        id: u64,
    },
    /// A higher-level protocol check failed (latched with `poison`).
    Protocol,
}

impl core::error::Error for RingError {}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            RingError::ProdOverflow { prod, cons, limit } => {
                write!(f, "peer producer index {prod} is more than {limit} ahead of consumer index {cons}")
            }
            RingError::RspOverflow { rsp_prod, rsp_cons, req_prod } => {
                write!(f, "response index {rsp_prod} (consumed {rsp_cons}) exceeds requests published ({req_prod})")
            }
            RingError::ConsOutOfRange { cons, seen, prod } => {
                write!(f, "peer consumer index {cons} outside [{seen}, {prod}]")
            }
            RingError::BadId { id } => write!(f, "response id {id:#x} is not in flight"),
            RingError::Protocol => write!(f, "peer violated the protocol"),
        }
    }
}

/// Why a push did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// No slot is free right now (the front: too many requests
    /// outstanding; the back: no consumed request left to answer; a
    /// stream: the consumer has not released space). Not an error of the
    /// peer: retry after consuming or after a wake-up.
    Full,
    /// The endpoint is latched (see [`RingError`]).
    Ring(RingError),
}

impl From<RingError> for PushError {
    fn from(e: RingError) -> Self {
        PushError::Ring(e)
    }
}

impl core::error::Error for PushError {}

impl core::fmt::Display for PushError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PushError::Full => write!(f, "ring full"),
            PushError::Ring(e) => e.fmt(f),
        }
    }
}
