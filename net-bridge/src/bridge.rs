//! The bridge: ports, learning table, counters, and the forwarding decision.
//!
//! # Ingress, in order
//! [`Bridge::ingress`] takes one frame from one port and decides, applying
//! these steps in order; the first that fails drops the frame with its
//! [`DropReason`], counted on the ingress port:
//!
//! 1. The port is configured (else `NoSuchPort`, counted bridge-wide).
//! 2. The bytes are a frame ([`Frame::parse`]): `Runt`, `Oversized`,
//!    `ReservedVid`, `DoubleTag`.
//! 3. The source MAC can send: not multicast, broadcast or zero
//!    (`InvalidSource`); the port's assigned MAC if it has one, and no other
//!    port's assigned MAC (`Spoofed`).
//! 4. The frame's VLAN, from the port's kind and the tag
//!    ([`PortKind::classify`](crate::PortKind::classify)): `TaggedOnAccess`,
//!    `VlanNotMember`, `NoNativeVlan`.
//! 5. The destination is not 802.1D link-local (`LinkLocal`): STP, pause,
//!    LACP and 802.1X frames stop at the bridge.
//! 6. Learning: (VLAN, source) → ingress port, unless the port has an
//!    assigned MAC (which is pinned instead).
//! 7. Destination: a unicast MAC that is the assigned MAC of a port member of
//!    the VLAN, or that has a live table entry in the VLAN, goes to that one
//!    port (`SamePort` if that is the ingress port: never sent back). Any
//!    other destination (unknown unicast, broadcast, multicast) is flooded to
//!    every other configured port that is a member of the VLAN.
//!
//! # Isolation
//! Every egress port is a member of the frame's VLAN: both the unicast and
//! the flood step take the egress from
//! [`PortKind::egress`](crate::PortKind::egress), which is `None` for a
//! non-member, and table entries of a port are flushed whenever its
//! configuration changes. The ingress port is never an egress.
//!
//! # Memory
//! A `Bridge<N>` holds everything inline: about `60 * N` bytes of table and
//! 22 KiB of port configurations and counters (some 82 KiB at the default
//! `N` = 1024). It never allocates; [`Bridge::new`] is a `const fn`, so put
//! it in a `static` (or a `Box`).

use core::fmt;

use crate::ethernet::{Egress, Frame, FrameError, Mac, Vid};
use crate::fdb::{Fdb, FdbEntry};
use crate::port::{PortConfig, PortId, MAX_PORTS};
use crate::stats::Stats;

/// The default learning-table capacity.
pub const DEFAULT_FDB_CAPACITY: usize = 1024;
/// The default ageing time: 300 s, in ns (802.1D's default).
pub const DEFAULT_AGEING_NS: u64 = 300_000_000_000;

/// Why a frame was dropped. Each has a per-port counter
/// ([`PortStats::dropped`](crate::PortStats::dropped)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum DropReason {
    /// The ingress port is not configured (counted in
    /// [`Stats::no_such_port`] only).
    NoSuchPort,
    /// Shorter than its header.
    Runt,
    /// Longer than 1514 bytes untagged or 1518 tagged.
    Oversized,
    /// A tag with VID `0xFFF`.
    ReservedVid,
    /// An S-tag or a second tag.
    DoubleTag,
    /// A multicast, broadcast or zero source MAC.
    InvalidSource,
    /// A source MAC other than the port's assigned MAC, or the assigned MAC
    /// of another port.
    Spoofed,
    /// A tagged (or priority-tagged) frame on an access port.
    TaggedOnAccess,
    /// A tag of a VLAN the trunk is not a member of.
    VlanNotMember,
    /// An untagged frame on a trunk without a native VLAN.
    NoNativeVlan,
    /// A destination in `01:80:c2:00:00:00`–`0f`.
    LinkLocal,
    /// A known unicast whose port is the ingress port.
    SamePort,
}

impl DropReason {
    /// The number of reasons.
    pub const COUNT: usize = 12;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::NoSuchPort,
        DropReason::Runt,
        DropReason::Oversized,
        DropReason::ReservedVid,
        DropReason::DoubleTag,
        DropReason::InvalidSource,
        DropReason::Spoofed,
        DropReason::TaggedOnAccess,
        DropReason::VlanNotMember,
        DropReason::NoNativeVlan,
        DropReason::LinkLocal,
        DropReason::SamePort,
    ];

    /// A short name, for logs and the dom0 shell.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoSuchPort => "no-such-port",
            DropReason::Runt => "runt",
            DropReason::Oversized => "oversized",
            DropReason::ReservedVid => "reserved-vid",
            DropReason::DoubleTag => "double-tag",
            DropReason::InvalidSource => "invalid-source",
            DropReason::Spoofed => "spoofed",
            DropReason::TaggedOnAccess => "tagged-on-access",
            DropReason::VlanNotMember => "vlan-not-member",
            DropReason::NoNativeVlan => "no-native-vlan",
            DropReason::LinkLocal => "link-local",
            DropReason::SamePort => "same-port",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<FrameError> for DropReason {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Runt { .. } => DropReason::Runt,
            FrameError::Oversized { .. } => DropReason::Oversized,
            FrameError::ReservedVid => DropReason::ReservedVid,
            FrameError::DoubleTag { .. } => DropReason::DoubleTag,
        }
    }
}

/// Bridge-wide settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config {
    /// How long a learned entry stays live after its MAC was last seen, in
    /// ns. Default [`DEFAULT_AGEING_NS`].
    pub ageing_ns: u64,
    /// The learn limit of a port whose [`PortConfig::learn_limit`] is `None`.
    /// `None` here: `N / MAX_PORTS` (at least 1 if `N > 0`), so that the
    /// limits of all ports add up to at most the capacity `N` and no port can
    /// evict another's entries (see [`fdb`](crate::fdb)).
    pub port_learn_limit: Option<usize>,
    /// The seed of the learning table's hash. dom0 should draw it at random
    /// at boot, so that a sender cannot aim its source MACs at one bucket
    /// (even so, it fills a bucket with at most its learn limit; see
    /// [`fdb`](crate::fdb)).
    pub hash_seed: u64,
}

impl Config {
    /// The defaults, as a constant (for a `static` bridge).
    pub const DEFAULT: Config =
        Config { ageing_ns: DEFAULT_AGEING_NS, port_learn_limit: None, hash_seed: 0x5167_6e61_6c6c_6564 };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A configuration dom0 gave that the bridge refuses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigError {
    /// The assigned MAC is multicast, broadcast or zero.
    InvalidMac,
    /// Another port already has this assigned MAC.
    DuplicateMac {
        /// That port.
        port: PortId,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidMac => f.write_str("assigned MAC cannot be a source (multicast or zero)"),
            ConfigError::DuplicateMac { port } => write!(f, "assigned MAC already assigned to port {port}"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// How a forwarded frame was addressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Delivery {
    /// A known unicast: one egress port.
    Unicast,
    /// Unknown unicast, broadcast or multicast: every other member port.
    Flood,
}

/// The ports a frame leaves on, each with its tagging; at most
/// `MAX_PORTS - 1`, in increasing port order, never the ingress port.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EgressList {
    items: [(PortId, Egress); MAX_PORTS],
    len: usize,
}

impl EgressList {
    const EMPTY: EgressList = EgressList { items: [(PortId::FIRST, Egress::Untagged); MAX_PORTS], len: 0 };

    fn push(&mut self, port: PortId, egress: Egress) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (port, egress);
            self.len += 1;
        }
    }

    /// The egress ports and tagging.
    pub fn as_slice(&self) -> &[(PortId, Egress)] {
        self.items.get(..self.len).unwrap_or(&[])
    }

    /// The tagging for `port`, if the frame leaves on it.
    pub fn get(&self, port: PortId) -> Option<Egress> {
        self.as_slice().iter().find(|(p, _)| *p == port).map(|&(_, e)| e)
    }
}

/// A frame the bridge forwards.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Forward<'a> {
    /// The parsed ingress frame (its payload borrows the caller's bytes).
    pub frame: Frame<'a>,
    /// The VLAN it belongs to.
    pub vlan: Vid,
    /// Unicast or flood.
    pub delivery: Delivery,
    /// Where it leaves.
    pub egress: EgressList,
}

impl Forward<'_> {
    /// Writes the frame as it leaves with `egress` into `out` (see
    /// [`Frame::emit`]).
    pub fn emit(&self, egress: Egress, out: &mut [u8]) -> Result<usize, crate::BufferTooSmall> {
        self.frame.emit(egress, out)
    }
}

/// What to do with an ingress frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[expect(clippy::large_enum_variant, reason = "no allocation: the egress list is inline, one decision per frame")]
pub enum Decision<'a> {
    /// Send it out of these ports.
    Forward(Forward<'a>),
    /// Drop it, for this reason (already counted).
    Drop(DropReason),
}

impl Decision<'_> {
    /// The egress ports and tagging; empty for a drop.
    pub fn egress(&self) -> &[(PortId, Egress)] {
        match self {
            Decision::Forward(f) => f.egress.as_slice(),
            Decision::Drop(_) => &[],
        }
    }

    /// The drop reason, if dropped.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            Decision::Forward(_) => None,
            Decision::Drop(r) => Some(*r),
        }
    }
}

/// The software switch: up to [`MAX_PORTS`] ports and a learning table of
/// `N` entries. Owned by dom0's network loop; see the module docs for the
/// rules.
pub struct Bridge<const N: usize = DEFAULT_FDB_CAPACITY> {
    config: Config,
    ports: [Option<PortConfig>; MAX_PORTS],
    fdb: Fdb<N>,
    stats: Stats,
}

impl<const N: usize> Default for Bridge<N> {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl<const N: usize> Bridge<N> {
    /// A bridge with no port. A `const fn`, so that dom0 can keep the bridge
    /// in a `static` (for example `spin::Mutex<Bridge>`) rather than build it
    /// on a small stack.
    pub const fn new(config: Config) -> Self {
        Bridge {
            config,
            ports: [const { None }; MAX_PORTS],
            fdb: Fdb::new(config.ageing_ns, config.hash_seed),
            stats: Stats::new(),
        }
    }

    /// The bridge-wide settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Configures port `id` (adding it or replacing its configuration). The
    /// port's learned entries, and entries of other ports for its assigned
    /// MAC, are flushed; its counters are kept.
    pub fn set_port(&mut self, id: PortId, config: PortConfig) -> Result<(), ConfigError> {
        if let Some(mac) = config.mac {
            if !mac.is_valid_source() {
                return Err(ConfigError::InvalidMac);
            }
            if let Some(port) = self.pinned_port(mac).filter(|&p| p != id) {
                return Err(ConfigError::DuplicateMac { port });
            }
        }
        let mac = config.mac;
        self.fdb.remove_where(&mut self.stats.fdb, |s| s.port == id || Some(s.mac) == mac);
        if let Some(slot) = self.ports.get_mut(id.index()) {
            *slot = Some(config);
        }
        Ok(())
    }

    /// Removes port `id`, its learned entries and its counters; returns its
    /// configuration.
    pub fn remove_port(&mut self, id: PortId) -> Option<PortConfig> {
        let old = self.ports.get_mut(id.index())?.take()?;
        self.fdb.remove_where(&mut self.stats.fdb, |s| s.port == id);
        if let Some(s) = self.stats.port_mut(id) {
            *s = Default::default();
        }
        Some(old)
    }

    /// Port `id`'s configuration.
    pub fn port(&self, id: PortId) -> Option<&PortConfig> {
        self.ports.get(id.index())?.as_ref()
    }

    /// The configured ports.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &PortConfig)> {
        PortId::all().filter_map(|id| Some((id, self.port(id)?)))
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Zeroes every counter (the table's `entries` stays true).
    pub fn reset_stats(&mut self) {
        self.stats = Stats::new();
        self.stats.fdb.entries = self.fdb.len();
    }

    /// The caller could not send a frame the bridge gave for `port` (for
    /// example, the domU's receive ring was full).
    pub fn tx_failed(&mut self, port: PortId) {
        if let Some(s) = self.stats.port_mut(port) {
            s.tx_failed = s.tx_failed.wrapping_add(1);
        }
    }

    /// The learned entries, live or not at `now`.
    pub fn fdb_entries(&self, now: u64) -> impl Iterator<Item = FdbEntry> + '_ {
        self.fdb.entries(now)
    }

    /// Entries in the table, live or expired. At most `N`.
    pub fn fdb_len(&self) -> usize {
        self.fdb.len()
    }

    /// Frees every entry expired at `now`; returns how many. Optional: an
    /// expired entry is ignored anyway and reused first.
    pub fn expire(&mut self, now: u64) -> usize {
        self.fdb.expire(now, &mut self.stats.fdb)
    }

    /// Forgets every learned entry.
    pub fn flush(&mut self) {
        self.fdb.remove_where(&mut self.stats.fdb, |_| true);
    }

    /// Where a unicast to `mac` in `vlan` goes at `now`: the port it is
    /// assigned to (if a member of `vlan`), else its live entry.
    pub fn lookup(&self, vlan: Vid, mac: Mac, now: u64) -> Option<PortId> {
        self.ports()
            .find(|(_, c)| c.mac == Some(mac) && c.kind.is_member(vlan))
            .map(|(id, _)| id)
            .or_else(|| self.fdb.lookup(vlan, mac, now))
    }

    fn pinned_port(&self, mac: Mac) -> Option<PortId> {
        self.ports().find(|(_, c)| c.mac == Some(mac)).map(|(id, _)| id)
    }

    fn learn_limit(&self, config: &PortConfig) -> usize {
        let default = self.config.port_learn_limit.unwrap_or(if N == 0 { 0 } else { (N / MAX_PORTS).max(1) });
        config.learn_limit.unwrap_or(default).min(N)
    }

    /// Checks the learning table's structural invariants (tests only).
    #[cfg(test)]
    pub(crate) fn check_fdb(&self) {
        self.fdb.check();
    }

    /// Decides what to do with `bytes`, received on `port` at `now` (the
    /// caller's monotonic clock, in ns), learns its source, and counts it.
    /// Never panics, whatever the bytes.
    pub fn ingress<'a>(&mut self, port: PortId, bytes: &'a [u8], now: u64) -> Decision<'a> {
        if self.port(port).is_none() {
            self.stats.no_such_port = self.stats.no_such_port.wrapping_add(1);
            return Decision::Drop(DropReason::NoSuchPort);
        }
        if let Some(s) = self.stats.port_mut(port) {
            s.rx_frames = s.rx_frames.wrapping_add(1);
            s.rx_bytes = s.rx_bytes.wrapping_add(bytes.len() as u64);
        }
        match self.decide(port, bytes, now) {
            Ok(fwd) => {
                if fwd.delivery == Delivery::Flood {
                    if let Some(s) = self.stats.port_mut(port) {
                        s.flooded = s.flooded.wrapping_add(1);
                    }
                }
                for &(out, egress) in fwd.egress.as_slice() {
                    if let Some(s) = self.stats.port_mut(out) {
                        s.tx_frames = s.tx_frames.wrapping_add(1);
                        s.tx_bytes = s.tx_bytes.wrapping_add(fwd.frame.egress_len(egress) as u64);
                    }
                }
                Decision::Forward(fwd)
            }
            Err(reason) => {
                if let Some(s) = self.stats.port_mut(port) {
                    s.count_drop(reason);
                }
                Decision::Drop(reason)
            }
        }
    }

    /// Steps 2 to 7 of the module docs.
    fn decide<'a>(&mut self, port: PortId, bytes: &'a [u8], now: u64) -> Result<Forward<'a>, DropReason> {
        let config = self.port(port).ok_or(DropReason::NoSuchPort)?;
        let frame = Frame::parse(bytes)?;
        if !frame.src.is_valid_source() {
            return Err(DropReason::InvalidSource);
        }
        match config.mac {
            Some(mac) if mac != frame.src => return Err(DropReason::Spoofed),
            Some(_) => {}
            None if self.pinned_port(frame.src).is_some() => return Err(DropReason::Spoofed),
            None => {}
        }
        let vlan = config.kind.classify(frame.tag)?;
        if frame.dst.is_link_local() {
            return Err(DropReason::LinkLocal);
        }
        let (learns, limit) = (config.mac.is_none(), self.learn_limit(config));
        if learns {
            self.fdb.learn(vlan, frame.src, port, now, limit, &mut self.stats.fdb);
        }

        let mut egress = EgressList::EMPTY;
        let known = if frame.dst.is_multicast() { None } else { self.lookup(vlan, frame.dst, now) };
        let known = known.and_then(|p| Some((p, self.port(p)?.kind.egress(vlan)?)));
        let delivery = match known {
            Some((out, _)) if out == port => return Err(DropReason::SamePort),
            Some((out, how)) => {
                egress.push(out, how);
                Delivery::Unicast
            }
            None => {
                for (out, c) in self.ports() {
                    if out == port {
                        continue;
                    }
                    if let Some(how) = c.kind.egress(vlan) {
                        egress.push(out, how);
                    }
                }
                Delivery::Flood
            }
        };
        Ok(Forward { frame, vlan, delivery, egress })
    }
}
