//! dom0's software Ethernet switch: the logic, with no I/O.
//!
//! # Where it runs
//! In dom0's network loop, between the netback ports (one per domU virtual
//! NIC: frames the domU's netfront put on its transmit ring, and the domU's
//! receive ring) and the uplink, dom0's virtio-net NIC. The loop gives each
//! received frame to [`Bridge::ingress`] with the port it came from and the
//! time, and copies (or rewrites, [`Frame::emit`]) it to every port of the
//! [`Decision`]. This crate does no NAT, no IP, no ARP: under QEMU the
//! uplink is QEMU's user network (slirp), which NATs the guests' traffic to
//! the host's network and answers DHCP and DNS itself; the bridge only
//! switches Ethernet frames.
//!
//! # Trust
//! Every frame is hostile input: a domU controls all its bytes, the uplink
//! carries whatever the outside sends. Nothing here panics or allocates, on
//! any input; all state has a fixed capacity ([`MAX_PORTS`] ports, `N`
//! learning entries, [`MAX_TAGGED_LEN`]-byte frames). Port configuration
//! comes only from dom0 ([`Bridge::set_port`]).
//!
//! # Modules, and the rules each states
//! - [`ethernet`]: the one frame parser (check order, size limits, tags) and
//!   the egress writer.
//! - [`port`]: access and trunk VLAN rules, anti-spoofing with pinned MACs.
//! - [`fdb`]: the learning table, ageing, replacement, per-port limits.
//! - [`bridge`]: the ingress steps, in order, and VLAN isolation.
//! - [`stats`]: what each counter counts.
//!
//! # Two domUs and an uplink
//! ```
//! use net_bridge::{Bridge, Config, Decision, Delivery, Egress, Mac, PortConfig, PortId, Vid, VlanSet};
//!
//! let v10 = Vid::new(10).unwrap();
//! let v20 = Vid::new(20).unwrap();
//! let (vif1, vif2, uplink) = (PortId::new(0).unwrap(), PortId::new(1).unwrap(), PortId::new(2).unwrap());
//! let mac1 = Mac([0x02, 0, 0, 0, 0, 1]);
//! let mac2 = Mac([0x02, 0, 0, 0, 0, 2]);
//! let gateway = Mac([0x52, 0x55, 0x0a, 0, 2, 2]);
//!
//! let mut bridge: Box<Bridge> = Box::new(Bridge::new(Config::default()));
//! bridge.set_port(vif1, PortConfig::access(v10).with_mac(mac1))?;
//! bridge.set_port(vif2, PortConfig::access(v20).with_mac(mac2))?;
//! // The uplink carries VLAN 20 tagged and VLAN 10 untagged (native).
//! let allowed: VlanSet = [v20].into_iter().collect();
//! bridge.set_port(uplink, PortConfig::trunk(allowed, Some(v10)))?;
//!
//! // domU 1 broadcasts (an ARP request): it leaves on the uplink only,
//! // untagged (VLAN 10 is native there); domU 2, in VLAN 20, never sees it.
//! let mut arp = [0u8; 42];
//! arp[..6].copy_from_slice(&Mac::BROADCAST.0);
//! arp[6..12].copy_from_slice(&mac1.0);
//! arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
//! let d = bridge.ingress(vif1, &arp, 1_000);
//! assert_eq!(d.egress(), &[(uplink, Egress::Untagged)]);
//!
//! // domU 2's frame to the gateway (not yet learned) leaves on the uplink
//! // with a VLAN 20 tag, which the bridge inserts.
//! let mut ip = [0u8; 60];
//! ip[..6].copy_from_slice(&gateway.0);
//! ip[6..12].copy_from_slice(&mac2.0);
//! ip[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
//! let Decision::Forward(f) = bridge.ingress(vif2, &ip, 2_000) else { panic!() };
//! assert_eq!(f.delivery, Delivery::Flood);
//! assert_eq!(f.egress.as_slice(), &[(uplink, Egress::Tagged(v20))]);
//! let mut out = [0u8; 1518];
//! let n = f.emit(Egress::Tagged(v20), &mut out)?;
//! assert_eq!((n, &out[12..16]), (64, &[0x81, 0x00, 0x00, 20][..]));
//!
//! // The gateway answers, tagged; the bridge strips the tag for domU 2.
//! let n = net_bridge::rewrite(&ip, Egress::Tagged(v20), &mut out)?;
//! out[..6].copy_from_slice(&mac2.0);
//! out[6..12].copy_from_slice(&gateway.0);
//! let Decision::Forward(f) = bridge.ingress(uplink, &out[..n], 3_000) else { panic!() };
//! assert_eq!(f.delivery, Delivery::Unicast);
//! assert_eq!(f.egress.as_slice(), &[(vif2, Egress::Untagged)]);
//!
//! // A domU cannot send as another.
//! arp[6..12].copy_from_slice(&mac2.0);
//! assert_eq!(bridge.ingress(vif1, &arp, 4_000), Decision::Drop(net_bridge::DropReason::Spoofed));
//! assert_eq!(bridge.stats().port(vif1).dropped(net_bridge::DropReason::Spoofed), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bridge;
pub mod ethernet;
pub mod fdb;
pub mod port;
pub mod stats;
pub mod vlan;

#[cfg(test)]
mod tests;

pub use bridge::{
    Bridge, Config, ConfigError, Decision, Delivery, DropReason, EgressList, Forward, DEFAULT_AGEING_NS,
    DEFAULT_FDB_CAPACITY,
};
pub use ethernet::{
    rewrite, BufferTooSmall, Egress, Frame, FrameError, Mac, RewriteError, Tag, Vid, MAX_TAGGED_LEN, MAX_UNTAGGED_LEN,
    MTU,
};
pub use fdb::{FdbEntry, FdbStats};
pub use port::{MembershipError, PortConfig, PortId, PortKind, MAX_PORTS};
pub use stats::{PortStats, Stats};
pub use vlan::VlanSet;
