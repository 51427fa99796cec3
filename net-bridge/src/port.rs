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

/// Why a port's VLAN membership did not parse ([`PortKind::parse`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MembershipError {
    /// Nothing given (an empty word or an empty `trunk=` list).
    Empty,
    /// A VLAN that is not a number from 1 to 4094.
    BadVid,
    /// A range whose first VLAN is above its last.
    BackwardsRange,
    /// More than one VLAN marked native (`u`), or a native range.
    TwoNatives,
    /// The native VLAN is also in the tagged list.
    NativeAlsoTagged,
}

impl core::fmt::Display for MembershipError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MembershipError::Empty => "no VLAN given",
            MembershipError::BadVid => "a VLAN is not a number from 1 to 4094",
            MembershipError::BackwardsRange => "a VLAN range runs backwards",
            MembershipError::TwoNatives => "a trunk has at most one native (`u`) VLAN, and not a range",
            MembershipError::NativeAlsoTagged => "the native (`u`) VLAN is also in the tagged list",
        })
    }
}

impl PortKind {
    /// Parses the VLAN membership of a port as dom0's command line writes
    /// it:
    /// - `N`: an access port of VLAN `N` (1 to 4094);
    /// - `trunk=LIST`: a trunk; `LIST` is comma-separated VLANs and ranges
    ///   `A-B`, carried tagged; one plain VLAN may end in `u` and is then
    ///   the native VLAN, carried untagged (without one, untagged frames
    ///   are dropped).
    ///
    /// ```
    /// use net_bridge::{PortKind, Vid};
    /// let v = |n| Vid::new(n).unwrap();
    /// assert_eq!(PortKind::parse("10"), Ok(PortKind::Access { vlan: v(10) }));
    /// let PortKind::Trunk { allowed, native } = PortKind::parse("trunk=10,20-22,1u").unwrap() else { panic!() };
    /// assert_eq!(allowed.iter().map(Vid::get).collect::<Vec<_>>(), [10, 20, 21, 22]);
    /// assert_eq!(native, Some(v(1)));
    /// assert!(PortKind::parse("trunk=").is_err());
    /// ```
    ///
    /// # Errors
    /// [`MembershipError`] saying what is wrong.
    pub fn parse(s: &str) -> Result<PortKind, MembershipError> {
        // Decimal digits only (`u16::from_str` would take a `+`).
        let vid = |t: &str| -> Result<Vid, MembershipError> {
            let digits = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| t.parse::<u16>().ok()).flatten().and_then(Vid::new).ok_or(MembershipError::BadVid)
        };
        let Some(list) = s.strip_prefix("trunk=") else {
            return if s.is_empty() { Err(MembershipError::Empty) } else { Ok(PortKind::Access { vlan: vid(s)? }) };
        };
        let (mut allowed, mut native) = (VlanSet::new(), None);
        if list.is_empty() {
            return Err(MembershipError::Empty);
        }
        for item in list.split(',') {
            if let Some(n) = item.strip_suffix('u') {
                if native.is_some() || n.contains('-') {
                    return Err(MembershipError::TwoNatives);
                }
                native = Some(vid(n)?);
            } else if let Some((a, b)) = item.split_once('-') {
                let (a, b) = (vid(a)?, vid(b)?);
                if a.get() > b.get() {
                    return Err(MembershipError::BackwardsRange);
                }
                for n in a.get()..=b.get() {
                    allowed.insert(vid_unchecked(n));
                }
            } else {
                allowed.insert(vid(item)?);
            }
        }
        if native.is_some_and(|n| allowed.contains(n)) {
            return Err(MembershipError::NativeAlsoTagged);
        }
        Ok(PortKind::Trunk { allowed, native })
    }
}

/// A VID known to lie between two valid ones.
fn vid_unchecked(n: u16) -> Vid {
    Vid::new(n).unwrap_or(Vid::MIN)
}

impl core::fmt::Display for PortKind {
    /// The form [`PortKind::parse`] reads, runs of three or more VLANs as
    /// ranges (`trunk=1-4094` stays short).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PortKind::Access { vlan } => write!(f, "{vlan}"),
            PortKind::Trunk { allowed, native } => {
                f.write_str("trunk=")?;
                let mut sep = "";
                let mut run: Option<(u16, u16)> = None;
                let put = |f: &mut core::fmt::Formatter<'_>, (a, b): (u16, u16), sep: &mut &str| {
                    let r = match b - a {
                        0 => write!(f, "{sep}{a}"),
                        1 => write!(f, "{sep}{a},{b}"),
                        _ => write!(f, "{sep}{a}-{b}"),
                    };
                    *sep = ",";
                    r
                };
                for v in allowed.iter().map(Vid::get) {
                    run = match run {
                        Some((a, b)) if b + 1 == v => Some((a, v)),
                        Some(r) => {
                            put(f, r, &mut sep)?;
                            Some((v, v))
                        }
                        None => Some((v, v)),
                    };
                }
                if let Some(r) = run {
                    put(f, r, &mut sep)?;
                }
                if let Some(n) = native {
                    write!(f, "{sep}{n}u")?;
                }
                Ok(())
            }
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
        Self::new(PortKind::Access { vlan })
    }

    /// A trunk port, no assigned MAC, the default learn limit.
    pub fn trunk(allowed: VlanSet, native: Option<Vid>) -> Self {
        Self::new(PortKind::Trunk { allowed, native })
    }

    /// A port of membership `kind` (as [`PortKind::parse`] reads it), no
    /// assigned MAC, the default learn limit.
    pub fn new(kind: PortKind) -> Self {
        PortConfig { kind, mac: None, learn_limit: None }
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
    fn membership_parses_access_and_trunks_and_says_what_is_wrong() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(PortKind::parse("4094"), Ok(PortKind::Access { vlan: v(4094) }));
        let k = PortKind::parse("trunk=20,10").unwrap();
        assert_eq!(k, PortKind::Trunk { allowed: [v(10), v(20)].into_iter().collect(), native: None });
        assert_eq!(k.to_string(), "trunk=10,20");
        let k = PortKind::parse("trunk=5u,100-102,7,8,10").unwrap();
        assert_eq!(k.to_string(), "trunk=7,8,10,100-102,5u");
        assert_eq!(PortKind::parse(&k.to_string()), Ok(k));
        let k = PortKind::parse("trunk=1-4094").unwrap();
        assert!(matches!(k, PortKind::Trunk { ref allowed, native: None } if allowed.len() == 4094));
        assert_eq!(k.to_string(), "trunk=1-4094");
        for text in ["trunk=1,2", "trunk=1-3", "trunk=4093,4094", "trunk=1,3-5,7,9-4094", "trunk=2-4,1u", "trunk=4094u"]
        {
            let k = PortKind::parse(text).unwrap();
            assert_eq!(k.to_string(), text);
            assert_eq!(PortKind::parse(&k.to_string()), Ok(k));
        }
        assert_eq!(PortKind::parse("trunk=7u"), Ok(PortKind::Trunk { allowed: VlanSet::new(), native: Some(v(7)) }));
        for (bad, e) in [
            ("", MembershipError::Empty),
            ("trunk=", MembershipError::Empty),
            ("0", MembershipError::BadVid),
            ("4095", MembershipError::BadVid),
            ("ten", MembershipError::BadVid),
            ("-1", MembershipError::BadVid),
            ("10u", MembershipError::BadVid),
            ("trunk=10,,20", MembershipError::BadVid),
            ("trunk=10,", MembershipError::BadVid),
            ("trunk=0-5", MembershipError::BadVid),
            ("trunk=9-4095", MembershipError::BadVid),
            ("trunk=20-10", MembershipError::BackwardsRange),
            ("trunk=1u,2u", MembershipError::TwoNatives),
            ("trunk=1-3u", MembershipError::TwoNatives),
            ("trunk=99999999999", MembershipError::BadVid),
            ("+10", MembershipError::BadVid),
            ("trunk=+5", MembershipError::BadVid),
            ("trunk=10,10u", MembershipError::NativeAlsoTagged),
            ("trunk=5-9,7u", MembershipError::NativeAlsoTagged),
        ] {
            assert_eq!(PortKind::parse(bad), Err(e), "{bad:?}");
        }
    }

    #[test]
    fn port_ids() {
        assert_eq!(PortId::new(31).map(PortId::get), Some(31));
        assert_eq!(PortId::new(32), None);
        assert_eq!(PortId::all().count(), MAX_PORTS);
    }
}
