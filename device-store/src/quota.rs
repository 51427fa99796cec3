//! Per-domain quotas and the store's configuration.
//!
//! # Bounds (what keeps memory finite whatever a client sends)
//! - Q1. Nodes owned by an unprivileged domain: at most [`Quotas::nodes`]
//!   (checked when the domain creates nodes, directly or at commit).
//! - Q2. Node value: at most [`Quotas::value_bytes`] for everyone.
//! - Q3. Watches of an unprivileged domain: at most [`Quotas::watches`],
//!   each path at most 3072 bytes and token at most [`TOKEN_MAX`].
//! - Q4. Open transactions of an unprivileged domain: at most
//!   [`Quotas::transactions`]; each at most [`Quotas::tx_ops`] requests and
//!   [`Quotas::tx_nodes`] distinct nodes touched (read set), so its overlay
//!   is at most `tx_nodes` nodes.
//! - Q5. Message payload: at most [`Quotas::payload`] (≤ `PAYLOAD_MAX`);
//!   the framer holds at most one header and one payload.
//! - Q6. Outbox: at most [`Quotas::outbox_bytes`]. One `MSG_MAX` of it is
//!   reserved for the next reply: a request is taken from the input only
//!   when the reserve is free (else `feed` stops and leaves the rest in the
//!   client's ring — back-pressure on that client only), and a watch event
//!   that would eat into the reserve is **dropped and counted**
//!   (`events_dropped`). A client that never reads therefore costs at most
//!   `outbox_bytes` and stalls only itself.
//!
//! Every quota hit is `ENOSPC` (one error for "a limit of yours is
//! exhausted"; Xen mixes E2BIG, ENOSPC and EQUOTA). `E2BIG` is kept for
//! size limits of single messages: payload over the limit, a token over
//! `TOKEN_MAX`, a listing that does not fit a reply. The privileged domain is
//! exempt from Q1, Q3 and Q4 (as in Xen) but not from Q2, Q5, Q6.

use crate::path::ABS_PATH_MAX;
use crate::perms::DomId;
use crate::wire::{MSG_MAX, PAYLOAD_MAX};

/// Longest watch token: a watch event `path\0token\0` must fit one payload.
pub const TOKEN_MAX: usize = PAYLOAD_MAX - ABS_PATH_MAX - 2;

/// Per-domain limits (see the module docs for what each bounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes an unprivileged domain may own (default 1000, Xen's).
    pub nodes: usize,
    /// Bytes in one node value (default 2048, Xen's `quota-max-entry-size`).
    pub value_bytes: usize,
    /// Watches per unprivileged domain (default 128, Xen's).
    pub watches: usize,
    /// Open transactions per unprivileged domain (default 10, Xen's).
    pub transactions: usize,
    /// Requests inside one transaction (default 1024).
    pub tx_ops: u32,
    /// Distinct nodes one transaction may touch (default 1024).
    pub tx_nodes: usize,
    /// Largest request payload accepted (default and maximum `PAYLOAD_MAX`).
    pub payload: usize,
    /// Outbox bytes per connection (default 64 KiB, at least `2 * MSG_MAX`).
    pub outbox_bytes: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes: 1000,
            value_bytes: 2048,
            watches: 128,
            transactions: 10,
            tx_ops: 1024,
            tx_nodes: 1024,
            payload: PAYLOAD_MAX,
            outbox_bytes: 64 * 1024,
        }
    }
}

impl Quotas {
    /// The quotas with out-of-range values brought into range.
    pub fn clamped(mut self) -> Self {
        self.payload = self.payload.min(PAYLOAD_MAX);
        self.value_bytes = self.value_bytes.min(PAYLOAD_MAX);
        self.outbox_bytes = self.outbox_bytes.max(2 * MSG_MAX);
        self
    }
}

/// The store's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The privileged domain (default 0): full access, exempt from counting quotas.
    pub privileged: DomId,
    /// Quotas for every domain.
    pub quotas: Quotas,
    /// Notices kept for the transport before the oldest is dropped (default 64).
    pub max_notices: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { privileged: DomId::new(0), quotas: Quotas::default(), max_notices: 64 }
    }
}
