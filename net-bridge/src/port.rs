//! Ports and their VLAN membership.
//!
//! A bridge has at most [`MAX_PORTS`] (32) ports, named by a [`PortId`]
//! below that. dom0 chooses the numbering (one port per netback vif, one for
//! the uplink) and owns every [`PortConfig`]; nothing a domU sends changes a
//! port's configuration.
//!
//! # VLAN rules
//! - **Access** `{ vlan }`: member of `vlan` only. An untagged frame belongs
//!   to `vlan`; a tagged one (priority tags included) is dropped
//!   ([`DropReason::TaggedOnAccess`]): a
//!   domU chooses neither its VLAN nor its priority. Frames leave untagged.
//! - **Trunk** `{ allowed, native }`: member of `allowed` and of `native`.
//!   A tagged frame belongs to its VID if the port is a member of it
//!   (else `VlanNotMember`); an untagged or priority-tagged frame belongs to
//!   `native` (none: `NoNativeVlan`). Frames of `native` leave untagged, of
//!   the other VLANs tagged.
//!
//! # Anti-spoofing
//! A port may have an assigned MAC (the domU's NIC, from its configuration).
//! Such a port sends only frames from that MAC (else `Spoofed`), and the MAC
//! is *pinned*: a frame from it arriving on any other port is `Spoofed` too,
//! and a unicast to it, in a VLAN of the port, goes to the port without
//! learning (so no other port can steal its traffic, and it takes no entry in
//! the learning table).

use crate::ethernet::{Egress, Mac, Tag, Vid};
use crate::vlan::VlanSet;
use crate::DropReason;

/// The most ports a bridge has.
pub const MAX_PORTS: usize = 32;

/// A port number, below [`MAX_PORTS`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PortId(u8);

impl PortId {
    pub(crate) const FIRST: PortId = PortId(0);

    /// `Some` below [`MAX_PORTS`].
    pub const fn new(id: u8) -> Option<PortId> {
        if (id as usize) < MAX_PORTS {
            Some(PortId(id))
        } else {
            None
        }
    }

    /// The number.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Every port id, in increasing order.
    pub fn all() -> impl Iterator<Item = PortId> {
        (0..MAX_PORTS as u8).map(PortId)
    }

    pub(crate) const fn index(self) -> usize {
        self.0 as usize
    }
}

impl core::fmt::Display for PortId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

/// A port's VLAN mode (rules in the module docs).
#[derive(Clone, PartialEq, Eq, Debug)]
#[expect(clippy::large_enum_variant, reason = "no allocation: a trunk's VLAN set (512 bytes) is inline")]
pub enum PortKind {
    /// One VLAN, untagged.
    Access {
        /// The port's VLAN.
        vlan: Vid,
    },
    /// Several VLANs, tagged, and optionally one untagged.
    Trunk {
        /// The tagged VLANs.
        allowed: VlanSet,
        /// The VLAN of untagged frames, which leave untagged.
        native: Option<Vid>,
    },
}

impl PortKind {
    /// Whether frames of `vid` may enter and leave this port.
    pub fn is_member(&self, vid: Vid) -> bool {
        match self {
            PortKind::Access { vlan } => *vlan == vid,
            PortKind::Trunk { allowed, native } => *native == Some(vid) || allowed.contains(vid),
        }
    }

    /// How a frame of `vid` leaves; `None` if the port is not a member.
    pub fn egress(&self, vid: Vid) -> Option<Egress> {
        match self {
            PortKind::Access { vlan } => (*vlan == vid).then_some(Egress::Untagged),
            PortKind::Trunk { native: Some(n), .. } if *n == vid => Some(Egress::Untagged),
            PortKind::Trunk { allowed, .. } => allowed.contains(vid).then_some(Egress::Tagged(vid)),
        }
    }

    /// The VLAN of a frame arriving with `tag`.
    pub fn classify(&self, tag: Option<Tag>) -> Result<Vid, DropReason> {
        match (self, tag) {
            (PortKind::Access { vlan }, None) => Ok(*vlan),
            (PortKind::Access { .. }, Some(_)) => Err(DropReason::TaggedOnAccess),
            (PortKind::Trunk { .. }, Some(t)) => match t.vlan() {
                Some(vid) if self.is_member(vid) => Ok(vid),
                Some(_) => Err(DropReason::VlanNotMember),
                None => self.native().ok_or(DropReason::NoNativeVlan),
            },
            (PortKind::Trunk { native, .. }, None) => native.ok_or(DropReason::NoNativeVlan),
        }
    }

    fn native(&self) -> Option<Vid> {
        match self {
            PortKind::Access { .. } => None,
            PortKind::Trunk { native, .. } => *native,
        }
    }
}

/// One port's configuration, owned by dom0.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PortConfig {
    /// Access or trunk.
    pub kind: PortKind,
    /// The assigned (pinned) MAC, for a domU's NIC; `None` for the uplink
    /// and for trunks that carry many senders.
    pub mac: Option<Mac>,
    /// The most learning-table entries the port may hold; `None` takes the
    /// bridge's [`Config::port_learn_limit`](crate::Config::port_learn_limit).
    /// 0: the port never learns (unicasts to its senders are flooded).
    pub learn_limit: Option<usize>,
}

impl PortConfig {
    /// An access port of `vlan`, no assigned MAC, the default learn limit.
    pub fn access(vlan: Vid) -> Self {
        PortConfig { kind: PortKind::Access { vlan }, mac: None, learn_limit: None }
    }

    /// A trunk port, no assigned MAC, the default learn limit.
    pub fn trunk(allowed: VlanSet, native: Option<Vid>) -> Self {
        PortConfig { kind: PortKind::Trunk { allowed, native }, mac: None, learn_limit: None }
    }

    /// With the assigned MAC `mac`.
    pub fn with_mac(mut self, mac: Mac) -> Self {
        self.mac = Some(mac);
        self
    }

    /// With a learn limit of `limit` entries.
    pub fn with_learn_limit(mut self, limit: usize) -> Self {
        self.learn_limit = Some(limit);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u16) -> Vid {
        Vid::new(n).unwrap()
    }

    fn tag(vid: u16) -> Option<Tag> {
        Some(Tag { pcp: 0, dei: false, vid })
    }

    #[test]
    fn access_classifies_untagged_and_drops_tagged() {
        let k = PortKind::Access { vlan: v(10) };
        assert_eq!(k.classify(None), Ok(v(10)));
        assert_eq!(k.classify(tag(10)), Err(DropReason::TaggedOnAccess));
        assert_eq!(k.classify(tag(0)), Err(DropReason::TaggedOnAccess));
        assert_eq!(k.egress(v(10)), Some(Egress::Untagged));
        assert_eq!(k.egress(v(11)), None);
    }

    #[test]
    fn trunk_classifies_by_tag_and_native() {
        let k = PortKind::Trunk { allowed: [v(10), v(20)].into_iter().collect(), native: Some(v(1)) };
        assert_eq!(k.classify(tag(20)), Ok(v(20)));
        assert_eq!(k.classify(tag(30)), Err(DropReason::VlanNotMember));
        assert_eq!(k.classify(None), Ok(v(1)));
        assert_eq!(k.classify(tag(0)), Ok(v(1)));
        assert_eq!(k.classify(tag(1)), Ok(v(1)));
        assert_eq!(k.egress(v(1)), Some(Egress::Untagged));
        assert_eq!(k.egress(v(10)), Some(Egress::Tagged(v(10))));
        assert_eq!(k.egress(v(30)), None);

        let k = PortKind::Trunk { allowed: [v(10)].into_iter().collect(), native: None };
        assert_eq!(k.classify(None), Err(DropReason::NoNativeVlan));
        assert_eq!(k.classify(tag(0)), Err(DropReason::NoNativeVlan));
    }

    #[test]
    fn port_ids() {
        assert_eq!(PortId::new(31).map(PortId::get), Some(31));
        assert_eq!(PortId::new(32), None);
        assert_eq!(PortId::all().count(), MAX_PORTS);
    }
}
