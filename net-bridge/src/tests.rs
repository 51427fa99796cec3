//! Bridge tests, named after the ingress steps and rules of the module docs
//! ([`crate::bridge`], [`crate::port`], [`crate::fdb`], [`crate::stats`]),
//! then the properties: no input panics, VLAN isolation, learned unicast,
//! table bounds.

extern crate std;

use std::boxed::Box;
use std::collections::BTreeSet;
use std::vec::Vec;

use proptest::prelude::*;

use crate::ethernet::TPID_8021Q;
use crate::*;

const SEC: u64 = 1_000_000_000;

fn v(n: u16) -> Vid {
    Vid::new(n).unwrap()
}
fn p(n: u8) -> PortId {
    PortId::new(n).unwrap()
}
fn mac(n: u16) -> Mac {
    let [a, b] = n.to_be_bytes();
    Mac([0x02, 0, 0, 0, a, b])
}
fn vlans(ids: &[u16]) -> VlanSet {
    ids.iter().map(|&i| v(i)).collect()
}

/// A frame; `tci` adds an 802.1Q tag.
fn frame(dst: Mac, src: Mac, tci: Option<u16>, payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    if let Some(tci) = tci {
        f.extend_from_slice(&TPID_8021Q.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend((0..payload).map(|i| i as u8));
    f
}

const MC: Mac = Mac([0x01, 0x00, 0x5e, 0, 0, 1]);

/// vif0: access 10, mac 1; vif1: access 10, mac 2; vif2: access 20, mac 3;
/// port 3: trunk {10, 20, 30}, native 1 (the uplink, learns).
fn lab() -> Box<Bridge> {
    let mut b = Box::new(Bridge::new(Config::default()));
    b.set_port(p(0), PortConfig::access(v(10)).with_mac(mac(1))).unwrap();
    b.set_port(p(1), PortConfig::access(v(10)).with_mac(mac(2))).unwrap();
    b.set_port(p(2), PortConfig::access(v(20)).with_mac(mac(3))).unwrap();
    b.set_port(p(3), PortConfig::trunk(vlans(&[10, 20, 30]), Some(v(1)))).unwrap();
    b
}

fn drop_of(b: &mut Bridge, port: u8, f: &[u8]) -> Option<DropReason> {
    b.ingress(p(port), f, 0).drop_reason()
}

#[test]
fn step1_unconfigured_port_is_dropped_and_counted_bridge_wide() {
    let mut b = lab();
    let f = frame(Mac::BROADCAST, mac(1), None, 10);
    assert_eq!(drop_of(&mut b, 9, &f), Some(DropReason::NoSuchPort));
    assert_eq!(b.stats().no_such_port, 1);
    assert_eq!(b.stats().port(p(9)).rx_frames, 0);
}

#[test]
fn step2_bad_frames_are_dropped_by_reason() {
    let mut b = lab();
    let good = frame(Mac::BROADCAST, mac(100), Some(10), 10);
    assert_eq!(drop_of(&mut b, 3, &good[..13]), Some(DropReason::Runt));
    assert_eq!(drop_of(&mut b, 3, &frame(mac(1), mac(100), None, 1501)), Some(DropReason::Oversized));
    assert_eq!(drop_of(&mut b, 3, &frame(mac(1), mac(100), Some(0xfff), 10)), Some(DropReason::ReservedVid));
    let mut double = frame(mac(1), mac(100), Some(1), 10);
    double[16..18].copy_from_slice(&TPID_8021Q.to_be_bytes());
    assert_eq!(drop_of(&mut b, 3, &double), Some(DropReason::DoubleTag));
    let s = b.stats().port(p(3));
    for r in [DropReason::Runt, DropReason::Oversized, DropReason::ReservedVid, DropReason::DoubleTag] {
        assert_eq!(s.dropped(r), 1, "{r}");
    }
    assert_eq!((s.rx_frames, s.dropped_total(), s.forwarded()), (4, 4, 0));
    assert_eq!(b.fdb_len(), 0, "nothing learned from a dropped frame");
}

#[test]
fn step3_multicast_broadcast_or_zero_source_is_invalid() {
    let mut b = lab();
    for src in [MC, Mac::BROADCAST, Mac::ZERO] {
        assert_eq!(drop_of(&mut b, 3, &frame(mac(1), src, Some(10), 0)), Some(DropReason::InvalidSource));
    }
    assert_eq!(b.stats().port(p(3)).dropped(DropReason::InvalidSource), 3);
}

#[test]
fn step3_a_port_with_an_assigned_mac_sends_only_from_it() {
    let mut b = lab();
    assert_eq!(drop_of(&mut b, 0, &frame(Mac::BROADCAST, mac(99), None, 0)), Some(DropReason::Spoofed));
    assert_eq!(drop_of(&mut b, 0, &frame(Mac::BROADCAST, mac(2), None, 0)), Some(DropReason::Spoofed));
    assert_eq!(drop_of(&mut b, 0, &frame(Mac::BROADCAST, mac(1), None, 0)), None);
    assert_eq!(b.stats().port(p(0)).dropped(DropReason::Spoofed), 2);
}

#[test]
fn step3_an_assigned_mac_is_pinned_no_other_port_sends_from_it() {
    let mut b = lab();
    // The uplink claims vif0's MAC, to steal its traffic: refused.
    assert_eq!(drop_of(&mut b, 3, &frame(Mac::BROADCAST, mac(1), Some(10), 0)), Some(DropReason::Spoofed));
    let bytes = frame(mac(1), mac(2), None, 0);
    let d = b.ingress(p(1), &bytes, 0);
    assert_eq!(d.egress(), &[(p(0), Egress::Untagged)]);
}

#[test]
fn step4_tagged_frames_on_an_access_port_are_dropped() {
    let mut b = lab();
    assert_eq!(drop_of(&mut b, 0, &frame(Mac::BROADCAST, mac(1), Some(10), 0)), Some(DropReason::TaggedOnAccess));
    assert_eq!(drop_of(&mut b, 0, &frame(Mac::BROADCAST, mac(1), Some(0), 0)), Some(DropReason::TaggedOnAccess));
    assert_eq!(drop_of(&mut b, 0, &frame(Mac::BROADCAST, mac(1), Some(20), 0)), Some(DropReason::TaggedOnAccess));
    assert_eq!(b.stats().port(p(0)).dropped(DropReason::TaggedOnAccess), 3);
}

#[test]
fn step4_trunk_vlan_not_member_and_no_native() {
    let mut b = lab();
    assert_eq!(drop_of(&mut b, 3, &frame(Mac::BROADCAST, mac(100), Some(40), 0)), Some(DropReason::VlanNotMember));
    b.set_port(p(4), PortConfig::trunk(vlans(&[10]), None)).unwrap();
    assert_eq!(drop_of(&mut b, 4, &frame(Mac::BROADCAST, mac(100), None, 0)), Some(DropReason::NoNativeVlan));
    assert_eq!(drop_of(&mut b, 4, &frame(Mac::BROADCAST, mac(100), Some(0x2000), 0)), Some(DropReason::NoNativeVlan));
    assert_eq!(b.stats().port(p(3)).dropped(DropReason::VlanNotMember), 1);
    assert_eq!(b.stats().port(p(4)).dropped(DropReason::NoNativeVlan), 2);
}

#[test]
fn step4_trunk_untagged_and_priority_tagged_frames_go_to_the_native_vlan() {
    let mut b = lab();
    b.set_port(p(5), PortConfig::access(v(1))).unwrap();
    let bytes = frame(Mac::BROADCAST, mac(100), None, 0);
    let d = b.ingress(p(3), &bytes, 0);
    assert_eq!(d.egress(), &[(p(5), Egress::Untagged)]);
    let bytes = frame(Mac::BROADCAST, mac(100), Some(0xa000), 0);
    let Decision::Forward(f) = b.ingress(p(3), &bytes, 0) else { panic!() };
    assert_eq!((f.vlan, f.egress.as_slice()), (v(1), &[(p(5), Egress::Untagged)][..]));
}

#[test]
fn step5_link_local_destinations_stop_at_the_bridge() {
    let mut b = lab();
    let stp = Mac([0x01, 0x80, 0xc2, 0, 0, 0]);
    assert_eq!(drop_of(&mut b, 0, &frame(stp, mac(1), None, 0)), Some(DropReason::LinkLocal));
    assert_eq!(drop_of(&mut b, 3, &frame(stp, mac(100), None, 0)), Some(DropReason::LinkLocal));
}

#[test]
fn step6_learning_is_per_vlan_and_not_for_pinned_ports() {
    let mut b = lab();
    b.ingress(p(0), &frame(Mac::BROADCAST, mac(1), None, 0), 0);
    assert_eq!(b.fdb_len(), 0, "a pinned MAC takes no entry");
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(100), Some(10), 0), 0);
    assert_eq!(b.lookup(v(10), mac(100), 0), Some(p(3)));
    assert_eq!(b.lookup(v(20), mac(100), 0), None);
    let e: Vec<_> = b.fdb_entries(0).collect();
    assert_eq!(e, [FdbEntry { vlan: v(10), mac: mac(100), port: p(3), last_seen: 0, live: true }]);
    assert_eq!((b.stats().fdb.entries, b.stats().fdb.learned), (1, 1));
}

#[test]
fn step7_known_unicast_goes_to_one_port() {
    let mut b = lab();
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(100), Some(10), 0), 0);
    let bytes = frame(mac(100), mac(1), None, 0);
    let Decision::Forward(f) = b.ingress(p(0), &bytes, 1) else { panic!() };
    assert_eq!(f.delivery, Delivery::Unicast);
    assert_eq!(f.egress.as_slice(), &[(p(3), Egress::Tagged(v(10)))]);
}

#[test]
fn step7_never_back_out_of_the_ingress_port() {
    let mut b = lab();
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(100), Some(10), 0), 0);
    assert_eq!(b.ingress(p(3), &frame(mac(100), mac(101), Some(10), 0), 1).drop_reason(), Some(DropReason::SamePort));
    assert_eq!(b.ingress(p(0), &frame(mac(1), mac(1), None, 0), 1).drop_reason(), Some(DropReason::SamePort));
    // A flood never includes the ingress port either.
    let bytes = frame(Mac::BROADCAST, mac(1), None, 0);
    let d = b.ingress(p(0), &bytes, 1);
    assert_eq!(d.egress(), &[(p(1), Egress::Untagged), (p(3), Egress::Tagged(v(10)))]);
}

#[test]
fn step7_unknown_unicast_broadcast_multicast_flood_to_vlan_members_only() {
    let mut b = lab();
    for dst in [mac(555), Mac::BROADCAST, MC] {
        let bytes = frame(dst, mac(1), None, 0);
        let Decision::Forward(f) = b.ingress(p(0), &bytes, 0) else { panic!() };
        assert_eq!(f.delivery, Delivery::Flood);
        assert_eq!(f.egress.as_slice(), &[(p(1), Egress::Untagged), (p(3), Egress::Tagged(v(10)))]);
    }
    assert_eq!(b.stats().port(p(0)).flooded, 3);
    // VLAN 20: vif2 and the uplink only.
    let bytes = frame(Mac::BROADCAST, mac(100), Some(20), 0);
    let d = b.ingress(p(3), &bytes, 0);
    assert_eq!(d.egress(), &[(p(2), Egress::Untagged)]);
    // VLAN 30: no other member; forwarded nowhere, not a drop.
    let bytes = frame(Mac::BROADCAST, mac(100), Some(30), 0);
    let d = b.ingress(p(3), &bytes, 0);
    assert_eq!((d.drop_reason(), d.egress()), (None, &[][..]));
}

#[test]
fn isolation_a_unicast_to_another_vlans_mac_is_not_delivered_there() {
    let mut b = lab();
    // vif0 (VLAN 10) sends to vif2's MAC (VLAN 20): flooded in VLAN 10 only.
    let bytes = frame(mac(3), mac(1), None, 0);
    let Decision::Forward(f) = b.ingress(p(0), &bytes, 0) else { panic!() };
    assert_eq!(f.delivery, Delivery::Flood);
    assert_eq!(f.egress.get(p(2)), None);
}

#[test]
fn trunk_egress_tags_all_but_the_native_vlan() {
    let mut b = lab();
    b.set_port(p(5), PortConfig::access(v(1))).unwrap();
    let bytes = frame(Mac::BROADCAST, mac(200), None, 0);
    let d = b.ingress(p(5), &bytes, 0);
    assert_eq!(d.egress(), &[(p(3), Egress::Untagged)]);
    let bytes = frame(Mac::BROADCAST, mac(3), None, 0);
    let d = b.ingress(p(2), &bytes, 0);
    assert_eq!(d.egress(), &[(p(3), Egress::Tagged(v(20)))]);
}

#[test]
fn tagged_ingress_keeps_pcp_on_a_tagged_egress() {
    let mut b = lab();
    b.set_port(p(4), PortConfig::trunk(vlans(&[10]), None)).unwrap();
    let bytes = frame(Mac::BROADCAST, mac(100), Some(0xe000 | 10), 4);
    let Decision::Forward(f) = b.ingress(p(3), &bytes, 0) else { panic!() };
    let mut out = [0; MAX_TAGGED_LEN];
    let n = f.emit(f.egress.get(p(4)).unwrap(), &mut out).unwrap();
    assert_eq!(&out[..n], &frame(Mac::BROADCAST, mac(100), Some(0xe000 | 10), 4)[..]);
    let n = f.emit(f.egress.get(p(0)).unwrap(), &mut out).unwrap();
    assert_eq!(&out[..n], &frame(Mac::BROADCAST, mac(100), None, 4)[..]);
}

#[test]
fn counters_rx_tx_bytes_as_they_leave() {
    let mut b = lab();
    let f = frame(Mac::BROADCAST, mac(1), None, 46);
    b.ingress(p(0), &f, 0);
    let s = b.stats();
    assert_eq!((s.port(p(0)).rx_frames, s.port(p(0)).rx_bytes, s.port(p(0)).forwarded()), (1, 60, 1));
    assert_eq!((s.port(p(1)).tx_frames, s.port(p(1)).tx_bytes), (1, 60));
    assert_eq!((s.port(p(3)).tx_frames, s.port(p(3)).tx_bytes), (1, 64));
    assert_eq!(s.port(p(2)).tx_frames, 0);
    b.tx_failed(p(3));
    assert_eq!(b.stats().port(p(3)).tx_failed, 1);
    b.reset_stats();
    assert_eq!(b.stats().port(p(0)).rx_frames, 0);
}

#[test]
fn a_mac_moving_between_ports_updates_its_entry() {
    let mut b = lab();
    b.set_port(p(4), PortConfig::trunk(vlans(&[10]), None)).unwrap();
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(100), Some(10), 0), 0);
    b.ingress(p(4), &frame(Mac::BROADCAST, mac(100), Some(10), 0), 5);
    let bytes = frame(mac(100), mac(1), None, 0);
    let d = b.ingress(p(0), &bytes, 6);
    assert_eq!(d.egress(), &[(p(4), Egress::Tagged(v(10)))]);
    assert_eq!((b.fdb_len(), b.stats().fdb.moved), (1, 1));
}

#[test]
fn ageing_after_300_s_a_learned_mac_is_unknown_again() {
    let mut b = lab();
    let t0 = 1_000 * SEC;
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(100), Some(10), 0), t0);
    let to100 = frame(mac(100), mac(1), None, 0);
    assert_eq!(b.ingress(p(0), &to100, t0 + 300 * SEC).egress(), &[(p(3), Egress::Tagged(v(10)))]);
    let d = b.ingress(p(0), &to100, t0 + 300 * SEC + 1);
    assert_eq!(d.egress().len(), 2, "flooded again");
    assert_eq!(b.expire(t0 + 300 * SEC + 1), 1);
    assert_eq!(b.fdb_len(), 0);
    // A pinned MAC never ages.
    assert_eq!(b.ingress(p(3), &frame(mac(1), mac(100), Some(10), 0), u64::MAX).egress(), &[(p(0), Egress::Untagged)]);
}

#[test]
fn config_refuses_bad_and_duplicate_macs() {
    let mut b = lab();
    assert_eq!(b.set_port(p(5), PortConfig::access(v(1)).with_mac(MC)), Err(ConfigError::InvalidMac));
    assert_eq!(b.set_port(p(5), PortConfig::access(v(1)).with_mac(Mac::ZERO)), Err(ConfigError::InvalidMac));
    assert_eq!(
        b.set_port(p(5), PortConfig::access(v(1)).with_mac(mac(1))),
        Err(ConfigError::DuplicateMac { port: p(0) })
    );
    // Re-configuring a port with its own MAC is fine.
    assert_eq!(b.set_port(p(0), PortConfig::access(v(20)).with_mac(mac(1))), Ok(()));
    assert!(b.port(p(5)).is_none());
}

#[test]
fn set_port_flushes_the_ports_entries_and_entries_of_its_new_mac() {
    let mut b = lab();
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(100), Some(10), 0), 0);
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(101), Some(20), 0), 0);
    assert_eq!(b.fdb_len(), 2);
    // mac(101) becomes a domU's assigned MAC: its old entry goes.
    b.set_port(p(5), PortConfig::access(v(20)).with_mac(mac(101))).unwrap();
    assert_eq!(b.fdb_len(), 1);
    b.set_port(p(3), PortConfig::trunk(vlans(&[20]), None)).unwrap();
    assert_eq!(b.fdb_len(), 0);
}

#[test]
fn remove_port_forgets_it() {
    let mut b = lab();
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(100), Some(10), 0), 0);
    assert!(b.remove_port(p(3)).is_some());
    assert!(b.remove_port(p(3)).is_none());
    assert_eq!(b.fdb_len(), 0);
    assert_eq!(b.stats().port(p(3)).rx_frames, 0);
    let bytes = frame(mac(100), mac(1), None, 0);
    let d = b.ingress(p(0), &bytes, 0);
    assert_eq!(d.egress(), &[(p(1), Egress::Untagged)]);
}

#[test]
fn learn_limit_a_flooding_uplink_cannot_evict_another_ports_entries() {
    let mut b = lab();
    b.set_port(p(4), PortConfig::trunk(vlans(&[10]), None)).unwrap();
    b.ingress(p(4), &frame(Mac::BROADCAST, mac(7), Some(10), 0), 0);
    // The uplink sends from 10 000 random MACs: it holds at most its limit.
    for i in 0..10_000u16 {
        b.ingress(p(3), &frame(Mac::BROADCAST, mac(1000 + i), Some(10), 0), u64::from(i));
    }
    let limit = DEFAULT_FDB_CAPACITY / MAX_PORTS;
    assert_eq!(b.fdb_entries(0).filter(|e| e.port == p(3)).count(), limit);
    assert_eq!(b.lookup(v(10), mac(7), 10_000), Some(p(4)));
    assert_eq!(b.stats().fdb.evicted_full, 0);
    assert_eq!(b.stats().fdb.evicted_port_limit, 10_000 - limit as u64);
}

#[test]
fn learn_limit_zero_never_learns_and_floods() {
    let mut b = lab();
    b.set_port(p(3), PortConfig::trunk(vlans(&[10]), None).with_learn_limit(0)).unwrap();
    b.ingress(p(3), &frame(Mac::BROADCAST, mac(100), Some(10), 0), 0);
    assert_eq!(b.fdb_len(), 0);
    assert_eq!(b.stats().fdb.not_learned, 1);
    assert_eq!(b.ingress(p(0), &frame(mac(100), mac(1), None, 0), 0).egress().len(), 2);
}

#[test]
fn full_table_evicts_the_oldest_when_limits_oversubscribe() {
    let mut b: Box<Bridge<4>> = Box::new(Bridge::new(Config { port_learn_limit: Some(4), ..Config::default() }));
    b.set_port(p(0), PortConfig::trunk(vlans(&[10]), None)).unwrap();
    b.set_port(p(1), PortConfig::trunk(vlans(&[10]), None)).unwrap();
    b.ingress(p(1), &frame(Mac::BROADCAST, mac(1), Some(10), 0), 0);
    for i in 0..4 {
        b.ingress(p(0), &frame(Mac::BROADCAST, mac(100 + i), Some(10), 0), 1 + u64::from(i));
    }
    assert_eq!(b.fdb_len(), 4);
    assert_eq!(b.lookup(v(10), mac(1), 10), None, "the oldest went");
    assert_eq!(b.stats().fdb.evicted_full, 1);
}

#[test]
fn drop_reasons_are_distinct_counters() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
    }
    let names: BTreeSet<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), DropReason::COUNT);
}

// ---- properties ----

const VLANS: u16 = 4;
const PORTS: u8 = 8;

#[derive(Clone, Debug)]
struct Setup {
    ports: Vec<(u8, PortConfig)>,
}

fn kind() -> impl Strategy<Value = PortKind> {
    prop_oneof![
        (1..=VLANS).prop_map(|n| PortKind::Access { vlan: v(n) }),
        (proptest::collection::vec(1..=VLANS + 1, 0..4), proptest::option::of(1..=VLANS))
            .prop_map(|(a, n)| { PortKind::Trunk { allowed: a.into_iter().map(v).collect(), native: n.map(v) } }),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    proptest::collection::btree_map(
        0..PORTS,
        (kind(), any::<bool>(), proptest::option::of(0..3usize)),
        1..=PORTS as usize,
    )
    .prop_map(|m| Setup {
        ports: m
            .into_iter()
            .map(|(id, (kind, pinned, limit))| {
                let mac = pinned.then(|| mac(u16::from(id) + 1));
                (id, PortConfig { kind, mac, learn_limit: limit })
            })
            .collect(),
    })
}

fn build<const N: usize>(s: &Setup) -> Box<Bridge<N>> {
    let mut b = Box::new(Bridge::new(Config { ageing_ns: 100 * SEC, ..Config::default() }));
    for (id, c) in &s.ports {
        b.set_port(p(*id), c.clone()).unwrap();
    }
    b
}

/// Mostly well-formed frames over a small address space (so learning,
/// unicast and spoofing all happen), some raw bytes.
fn input() -> impl Strategy<Value = (u8, Vec<u8>, u64)> {
    let addr = prop_oneof![
        4 => (1..=PORTS as u16 + 4).prop_map(mac),
        1 => Just(Mac::BROADCAST),
        1 => Just(MC),
        1 => any::<[u8; 6]>().prop_map(Mac),
    ];
    let tci = proptest::option::of(prop_oneof![8 => 0..=VLANS + 1, 1 => any::<u16>()]);
    let structured = (addr.clone(), addr, tci, 0..64usize).prop_map(|(d, s, t, n)| frame(d, s, t, n)).boxed();
    let raw = proptest::collection::vec(any::<u8>(), 0..1600).boxed();
    (0..PORTS + 1, prop_oneof![6 => structured, 1 => raw], 0..300 * SEC)
}

/// Every decision obeys isolation; returns whether it forwarded.
fn check_decision<const N: usize>(b: &Bridge<N>, ingress: u8, d: &Decision<'_>) -> Result<(), TestCaseError> {
    if let Decision::Forward(f) = d {
        let in_cfg = b.port(p(ingress)).expect("forwarded from an unconfigured port");
        prop_assert!(in_cfg.kind.is_member(f.vlan), "ingress port not a member of the frame's VLAN");
        let mut seen = BTreeSet::new();
        for &(out, how) in f.egress.as_slice() {
            prop_assert!(out != p(ingress), "egress on the ingress port");
            prop_assert!(seen.insert(out), "port twice");
            let c = b.port(out);
            prop_assert!(c.is_some(), "egress on an unconfigured port");
            let c = c.unwrap();
            prop_assert!(c.kind.is_member(f.vlan), "egress on a non-member port");
            prop_assert_eq!(c.kind.egress(f.vlan), Some(how));
        }
        if f.delivery == Delivery::Unicast {
            prop_assert_eq!(f.egress.as_slice().len(), 1);
        }
    }
    Ok(())
}

/// A frame that `port` (configured as `c`) accepts, from `src`, to `dst`.
fn accepted_frame(c: &PortConfig, vlan: Vid, dst: Mac, src: Mac) -> Vec<u8> {
    match &c.kind {
        PortKind::Trunk { native: Some(n), .. } if *n == vlan => frame(dst, src, None, 8),
        PortKind::Trunk { .. } => frame(dst, src, Some(vlan.get()), 8),
        PortKind::Access { .. } => frame(dst, src, None, 8),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) No input panics: random configurations, random bytes and frames,
    /// random ports (configured or not) and times, several table sizes.
    #[test]
    fn no_input_panics(s in setup(), inputs in proptest::collection::vec(input(), 1..64)) {
        let mut b0 = build::<0>(&s);
        let mut b3 = build::<3>(&s);
        let mut b = build::<DEFAULT_FDB_CAPACITY>(&s);
        let mut out = [0u8; MAX_TAGGED_LEN];
        let mut small = [0u8; 20];
        for (port, bytes, now) in &inputs {
            let Some(port) = PortId::new(*port) else { continue };
            b0.ingress(port, bytes, *now);
            b3.ingress(port, bytes, *now);
            if let Decision::Forward(f) = b.ingress(port, bytes, *now) {
                for &(_, how) in f.egress.as_slice() {
                    let n = f.emit(how, &mut out).unwrap();
                    prop_assert_eq!(n, f.frame.egress_len(how));
                    prop_assert_eq!(f.frame.emits_unchanged(how), out[..n] == bytes[..]);
                    prop_assert_eq!(Frame::parse(&out[..n]).map(|g| g.payload), Ok(f.frame.payload));
                    let _ = f.emit(how, &mut small);
                }
            }
            let _ = rewrite(bytes, Egress::Tagged(Vid::MAX), &mut out);
            let _ = rewrite(bytes, Egress::Untagged, &mut small);
            b.expire(*now);
        }
    }

    /// (b) VLAN isolation: no egress on a non-member or unconfigured port,
    /// never the ingress port, tagging as the port's kind says; and the
    /// counters add up.
    #[test]
    fn vlan_isolation(s in setup(), inputs in proptest::collection::vec(input(), 1..128)) {
        let mut b = build::<DEFAULT_FDB_CAPACITY>(&s);
        let mut t = 0u64;
        for (port, bytes, dt) in &inputs {
            t = t.saturating_add(dt / 64);
            let d = b.ingress(p(*port), bytes, t);
            check_decision(&b, *port, &d)?;
        }
        for id in PortId::all() {
            let st = b.stats().port(id);
            prop_assert_eq!(st.rx_frames, st.forwarded() + st.dropped_total());
            prop_assert!(st.flooded <= st.forwarded());
        }
    }

    /// (c) After an accepted frame from `m` on `p`, a unicast to `m` in the
    /// same VLAN from any other member port goes only to `p`, whatever other
    /// traffic (not from `m`) happens in between, until ageing; after ageing
    /// it floods again, unless `m` is pinned to `p`.
    #[test]
    fn learned_unicast_goes_only_to_its_port_until_ageing(
        s in setup(),
        pick in any::<proptest::sample::Index>(),
        vpick in any::<proptest::sample::Index>(),
        noise in proptest::collection::vec(input(), 0..64),
        dt in 0..=100 * SEC,
    ) {
        let mut b = build::<DEFAULT_FDB_CAPACITY>(&s);
        let (pid, pc) = pick.get(&s.ports).clone();
        let member: Vec<Vid> = (1..=VLANS + 1).map(v).filter(|&x| pc.kind.is_member(x)).collect();
        prop_assume!(!member.is_empty());
        let vlan = *vpick.get(&member);
        let m = pc.mac.unwrap_or(mac(500));
        let learn_frame = accepted_frame(&pc, vlan, Mac::BROADCAST, m);
        let t0 = 1_000 * SEC;
        prop_assert!(b.ingress(p(pid), &learn_frame, t0).drop_reason().is_none());
        if pc.learn_limit == Some(0) && pc.mac.is_none() {
            return Ok(()); // A port that does not learn: floods are right.
        }
        for (port, bytes, _) in &noise {
            // Other ports' traffic, not from m (p's own churn is its share).
            if *port == pid || Frame::parse(bytes).is_ok_and(|f| f.src == m) {
                continue;
            }
            b.ingress(p(*port), bytes, t0 + dt / 2);
        }
        for (qid, qc) in &s.ports {
            if *qid == pid || !qc.kind.is_member(vlan) {
                continue;
            }
            let src = qc.mac.unwrap_or(mac(600));
            let f = accepted_frame(qc, vlan, m, src);
            let d = b.ingress(p(*qid), &f, t0 + dt);
            prop_assert_eq!(d.egress(), &[(p(pid), pc.kind.egress(vlan).unwrap())]);
            let d = b.ingress(p(*qid), &f, t0 + 100 * SEC + 1);
            if pc.mac.is_some() {
                prop_assert_eq!(d.egress(), &[(p(pid), pc.kind.egress(vlan).unwrap())]);
            } else {
                let Decision::Forward(fw) = d else { panic!("dropped: {d:?}") };
                prop_assert_eq!(fw.delivery, Delivery::Flood);
            }
        }
    }

    /// (d) The table never exceeds its capacity nor a port its learn limit,
    /// holds one entry per (VLAN, MAC), and its count is what the stats say.
    #[test]
    fn table_stays_within_capacity_and_limits(
        s in setup(),
        srcs in proptest::collection::vec((0..PORTS, 0..200u16, 1..=VLANS, 0..10 * SEC), 1..300),
    ) {
        let mut b = build::<16>(&s);
        let mut t = 0u64;
        for (port, src, vlan, dt) in srcs {
            t += dt;
            let Some(c) = b.port(p(port)).cloned() else { continue };
            if c.kind.is_member(v(vlan)) {
                b.ingress(p(port), &accepted_frame(&c, v(vlan), Mac::BROADCAST, mac(1000 + src)), t);
            }
            b.check_fdb();
            prop_assert!(b.fdb_len() <= 16);
            prop_assert_eq!(b.stats().fdb.entries, b.fdb_len());
            let entries: Vec<_> = b.fdb_entries(t).collect();
            prop_assert_eq!(entries.len(), b.fdb_len());
            let keys: BTreeSet<_> = entries.iter().map(|e| (e.vlan, e.mac)).collect();
            prop_assert_eq!(keys.len(), entries.len());
            for (id, c) in b.ports() {
                // The default for N = 16: N / MAX_PORTS, at least 1.
                let limit = c.learn_limit.unwrap_or(1).min(16);
                prop_assert!(entries.iter().filter(|e| e.port == id).count() <= limit);
            }
        }
    }
}

/// A bridge can be a `static`, built at compile time.
static STATIC_BRIDGE: std::sync::Mutex<Bridge> = std::sync::Mutex::new(Bridge::new(Config::DEFAULT));

#[test]
fn a_static_bridge_works() {
    let mut b = STATIC_BRIDGE.lock().unwrap();
    b.set_port(p(0), PortConfig::access(v(1))).unwrap();
    b.set_port(p(1), PortConfig::access(v(1))).unwrap();
    let f = frame(Mac::BROADCAST, mac(9), None, 0);
    assert_eq!(b.ingress(p(0), &f, 0).egress(), &[(p(1), Egress::Untagged)]);
    assert_eq!(b.lookup(v(1), mac(9), 0), Some(p(0)));
}

#[test]
fn egress_list_holds_every_other_port() {
    let mut b = Box::new(Bridge::<8>::new(Config::default()));
    for id in PortId::all() {
        b.set_port(id, PortConfig::access(v(1))).unwrap();
    }
    let bytes = frame(Mac::BROADCAST, mac(1), None, 0);
    let d = b.ingress(p(31), &bytes, 0);
    assert_eq!(d.egress().len(), MAX_PORTS - 1);
    assert!(d.egress().iter().all(|&(q, e)| q != p(31) && e == Egress::Untagged));
}

#[test]
fn memory_is_as_documented() {
    // bridge.rs: ~60 bytes per entry plus ~22 KiB; ~82 KiB at the default N.
    let fixed = core::mem::size_of::<Bridge<0>>();
    let per_entry = (core::mem::size_of::<Bridge<1024>>() - fixed) / 1024;
    assert!(fixed <= 23 * 1024, "{fixed}");
    assert!(per_entry <= 60, "{per_entry}");
    assert!(core::mem::size_of::<Bridge>() <= 84 * 1024);
}
