//! Counters.
//!
//! # What is counted
//! - `rx_frames`/`rx_bytes`: every frame [`Bridge::ingress`](crate::Bridge::ingress)
//!   was given on a configured port, valid or not. Each is then either
//!   dropped (exactly one [`DropReason`] counter of the ingress port goes up)
//!   or forwarded, so `rx_frames == forwarded + dropped_total()`.
//! - `flooded`: frames received on the port that were flooded (unknown
//!   unicast, broadcast, multicast), forwarded ones only.
//! - `tx_frames`/`tx_bytes`: frames (and their bytes as they leave, tag
//!   included or not) the bridge decided to send out of the port. The
//!   caller reports a send it could not do with
//!   [`Bridge::tx_failed`](crate::Bridge::tx_failed) (`tx_failed`).
//! - A frame given for a port that is not configured counts only in
//!   [`Stats::no_such_port`].
//!
//! Counters wrap (at 2^64; never in practice) rather than fail.

use crate::fdb::FdbStats;
use crate::port::{PortId, MAX_PORTS};
use crate::DropReason;

/// One port's counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PortStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Bytes sent, as they leave.
    pub tx_bytes: u64,
    /// Sends the caller could not do.
    pub tx_failed: u64,
    /// Received frames that were flooded.
    pub flooded: u64,
    drops: [u64; DropReason::COUNT],
}

impl PortStats {
    const ZERO: PortStats = PortStats {
        rx_frames: 0,
        rx_bytes: 0,
        tx_frames: 0,
        tx_bytes: 0,
        tx_failed: 0,
        flooded: 0,
        drops: [0; DropReason::COUNT],
    };

    /// Received frames dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(reason as usize).copied().unwrap_or(0)
    }

    /// Received frames dropped, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().fold(0, |a, &b| a.wrapping_add(b))
    }

    /// Received frames forwarded (to one port, to several, or to none when
    /// flooding found no other member).
    pub fn forwarded(&self) -> u64 {
        self.rx_frames.wrapping_sub(self.dropped_total())
    }

    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        if let Some(c) = self.drops.get_mut(reason as usize) {
            *c = c.wrapping_add(1);
        }
    }
}

/// The bridge's counters, from [`Bridge::stats`](crate::Bridge::stats).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Stats {
    ports: [PortStats; MAX_PORTS],
    /// Frames given for a port that is not configured.
    pub no_such_port: u64,
    /// The learning table.
    pub fdb: FdbStats,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// All zero.
    pub const fn new() -> Self {
        let fdb = FdbStats {
            entries: 0,
            learned: 0,
            moved: 0,
            evicted_port_limit: 0,
            evicted_full: 0,
            expired: 0,
            not_learned: 0,
        };
        Stats { ports: [PortStats::ZERO; MAX_PORTS], no_such_port: 0, fdb }
    }

    /// One port's counters.
    pub fn port(&self, port: PortId) -> &PortStats {
        self.ports.get(port.index()).unwrap_or(&PortStats::ZERO)
    }

    pub(crate) fn port_mut(&mut self, port: PortId) -> Option<&mut PortStats> {
        self.ports.get_mut(port.index())
    }
}
