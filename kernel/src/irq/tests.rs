//! The invariants of [`super`] against the fake IOAPIC; tests are named
//! after them.

use super::fake::FakeIoapic;
use super::*;

const DOM0: DomId = DomId::of(0);
const OTHER: DomId = DomId::of(5);
/// GSIs 22 and 23 (virtio-blk at 00:02.0 and virtio-net at 00:03.0 on q35).
const GIVEN: u32 = 1 << 22 | 1 << 23;

fn p() -> Privilege {
    Privilege::of_domain(true).expect("privileged")
}

fn setup() -> (FakeIoapic, Irqs) {
    let mut io = FakeIoapic::unmasked_by_firmware();
    let irqs = Irqs::init(&mut io, GIVEN, 0);
    (io, irqs)
}

/// dom0 maps and binds GSI `g` to port `port`.
fn bound(io: &mut FakeIoapic, irqs: &mut Irqs, g: u32, port: u32) {
    assert_eq!(irqs.map_gsi(p(), DOM0, g as i32, -1), Ok(g));
    irqs.bind(io, p(), DOM0, g, port).expect("bind");
}

#[test]
fn rule1_every_entry_is_masked_at_boot() {
    let (io, irqs) = setup();
    assert_eq!(irqs.entries(), 24);
    assert!((0..24).all(|g| io.masked(g)), "every entry masked: {:?}", io.redir);
    assert_eq!(irqs.given(), GIVEN);
}

#[test]
fn rule1_an_ioapic_with_more_entries_has_all_masked_but_manages_24() {
    let mut io = FakeIoapic { version: 0x0027_0020, ..FakeIoapic::default() };
    let irqs = Irqs::init(&mut io, u32::MAX, 0);
    assert_eq!(irqs.entries(), 24);
    let masked: Vec<u8> = io.writes.iter().filter(|w| w.1 == reg::MASKED).map(|w| w.0).collect();
    assert_eq!(masked.len(), 40, "all 40 entries masked");
    assert_eq!(irqs.line(24), None);
}

#[test]
fn rule2_only_gsis_of_dom0s_functions_may_be_mapped() {
    let (_, mut irqs) = setup();
    assert_eq!(irqs.map_gsi(p(), DOM0, 21, -1), Err(Errno::EPERM), "no function of dom0 is on GSI 21");
    assert_eq!(irqs.map_gsi(p(), DOM0, 2, -1), Err(Errno::EPERM), "the legacy timer line");
    assert_eq!(irqs.map_gsi(p(), DOM0, 24, -1), Err(Errno::EINVAL), "past the IOAPIC's inputs");
    assert_eq!(irqs.map_gsi(p(), DOM0, -1, -1), Err(Errno::EINVAL));
    assert_eq!(irqs.map_gsi(p(), DOM0, i32::MIN, -1), Err(Errno::EINVAL));
    assert_eq!(irqs.map_gsi(p(), DOM0, 22, 7), Err(Errno::EINVAL), "the pirq of a GSI is the GSI");
    assert_eq!(irqs.map_gsi(p(), DOM0, 22, 22), Ok(22));
    assert_eq!(irqs.map_gsi(p(), DOM0, 22, -1), Err(Errno::EEXIST), "a double map");
    assert_eq!(irqs.map_gsi(p(), DOM0, 23, -1), Ok(23));
}

#[test]
fn rule2_mask_of_given_gsis_is_cut_to_the_ioapic() {
    let mut io = FakeIoapic { version: 0x0007_0020, ..FakeIoapic::default() };
    let mut irqs = Irqs::init(&mut io, GIVEN | 1 << 3, 0);
    assert_eq!(irqs.entries(), 8);
    assert_eq!(irqs.given(), 1 << 3);
    assert_eq!(irqs.map_gsi(p(), DOM0, 22, -1), Err(Errno::EINVAL));
}

#[test]
fn rule3_a_bound_line_is_level_active_low_fixed_to_the_boot_cpu() {
    let mut io = FakeIoapic::default();
    let mut irqs = Irqs::init(&mut io, GIVEN, 3);
    bound(&mut io, &mut irqs, 22, 9);
    let (lo, hi) = io.redir[22];
    assert_eq!(lo as u8, vector_of(22));
    assert_eq!(lo & 0x700, 0, "fixed delivery");
    assert_eq!(lo & 0x800, 0, "physical destination");
    assert_ne!(lo & reg::LEVEL, 0, "level-triggered");
    assert_ne!(lo & reg::ACTIVE_LOW, 0, "active low");
    assert_eq!(lo & reg::MASKED, 0, "unmasked once bound");
    assert_eq!(hi >> 24, 3, "to local APIC 3");
    assert!(io.masked(23), "a line mapped nowhere stays masked");
}

#[test]
fn bind_checks_ownership_and_double_binds() {
    let (mut io, mut irqs) = setup();
    assert_eq!(irqs.check_bind(p(), DOM0, 22), Err(Errno::EPERM), "not mapped");
    assert_eq!(irqs.check_bind(p(), DOM0, 21), Err(Errno::EPERM), "not dom0's");
    assert_eq!(irqs.check_bind(p(), DOM0, 99), Err(Errno::EINVAL));
    irqs.map_gsi(p(), DOM0, 22, -1).unwrap();
    assert_eq!(irqs.check_bind(p(), OTHER, 22), Err(Errno::EPERM), "mapped by another");
    irqs.bind(&mut io, p(), DOM0, 22, 4).unwrap();
    assert_eq!(irqs.bind(&mut io, p(), DOM0, 22, 5), Err(Errno::EEXIST));
    assert_eq!(irqs.line(22).unwrap().port, Some(4));
}

#[test]
fn rule4_a_firing_line_is_masked_until_eoi_and_reasserts_while_held() {
    let (mut io, mut irqs) = setup();
    bound(&mut io, &mut irqs, 22, 9);
    io.set_line(22, true);
    let v = io.deliver().expect("the asserted line delivers");
    assert_eq!(v, vector_of(22));
    assert_ne!(io.redir[22].0 & reg::REMOTE_IRR, 0, "remote IRR set for a level delivery");
    let f = irqs.interrupt(&mut io, u64::from(v)).expect("a bound line names its port");
    assert_eq!(f, Fired { gsi: 22, owner: DOM0, port: 9 });
    assert!(io.masked(22), "masked before the local APIC's EOI");
    io.eoi_broadcast(v);
    assert_eq!(io.redir[22].0 & reg::REMOTE_IRR, 0);
    assert_eq!(io.deliver(), None, "masked: no second delivery while dom0 has not EOId");
    // dom0 EOIs without quieting the device: the line fires again at once.
    irqs.eoi(&mut io, p(), DOM0, 22).unwrap();
    assert!(!io.masked(22));
    assert_eq!(io.deliver(), Some(v), "level: re-asserted after EOI while the device holds it");
    assert!(irqs.interrupt(&mut io, u64::from(v)).is_some());
    io.eoi_broadcast(v);
    // dom0 quiets the device, then EOIs: nothing more.
    io.set_line(22, false);
    irqs.eoi(&mut io, p(), DOM0, 22).unwrap();
    assert_eq!(io.deliver(), None);
    assert_eq!(irqs.line(22).unwrap().fired, 2);
}

#[test]
fn rule4_storm_a_line_held_forever_without_eoi_costs_one_interrupt() {
    let (mut io, mut irqs) = setup();
    bound(&mut io, &mut irqs, 23, 3);
    io.set_line(23, true);
    let mut taken = 0;
    for _ in 0..10_000 {
        if let Some(v) = io.deliver() {
            taken += 1;
            irqs.interrupt(&mut io, u64::from(v));
            io.eoi_broadcast(v);
        }
    }
    assert_eq!(taken, 1, "one interrupt, not a storm");
    assert!(irqs.line(23).unwrap().in_flight);
}

#[test]
fn rule4_an_unbound_or_stale_vector_is_masked_and_dropped() {
    let (mut io, mut irqs) = setup();
    irqs.map_gsi(p(), DOM0, 22, -1).unwrap();
    // Mapped but not bound: never unmasked, but a stale delivery is dropped.
    assert_eq!(irqs.interrupt(&mut io, u64::from(vector_of(22))), None);
    assert!(io.masked(22));
    assert_eq!(irqs.interrupt(&mut io, u64::from(TIMER_LIKE)), None, "not a line's vector");
    assert_eq!(irqs.interrupt(&mut io, u64::from(vector_of(0)) - 1), None);
}
const TIMER_LIKE: u8 = 0xf0;

#[test]
fn rule5_only_the_owner_of_a_bound_line_may_eoi() {
    let (mut io, mut irqs) = setup();
    assert_eq!(irqs.eoi(&mut io, p(), DOM0, 22), Err(Errno::EPERM), "not mapped");
    irqs.map_gsi(p(), DOM0, 22, -1).unwrap();
    assert_eq!(irqs.eoi(&mut io, p(), DOM0, 22), Err(Errno::EPERM), "mapped, not bound");
    assert!(io.masked(22), "a refused EOI unmasks nothing");
    irqs.bind(&mut io, p(), DOM0, 22, 9).unwrap();
    assert_eq!(irqs.eoi(&mut io, p(), OTHER, 22), Err(Errno::EPERM), "another domain's line");
    assert_eq!(irqs.eoi(&mut io, p(), DOM0, 21), Err(Errno::EPERM), "a line no one has");
    assert_eq!(irqs.eoi(&mut io, p(), DOM0, 24), Err(Errno::EINVAL));
    assert_eq!(irqs.eoi(&mut io, p(), DOM0, u32::MAX), Err(Errno::EINVAL));
    let writes = io.writes.len();
    assert_eq!(irqs.eoi(&mut io, p(), DOM0, 22), Ok(()), "an EOI with nothing in flight is harmless");
    assert_eq!(io.writes.len(), writes, "and touches nothing");
}

#[test]
fn rule6_closing_the_port_masks_and_unbinds_and_death_frees() {
    let (mut io, mut irqs) = setup();
    bound(&mut io, &mut irqs, 22, 9);
    bound(&mut io, &mut irqs, 23, 10);
    io.set_line(22, true);
    irqs.unbind(&mut io, OTHER, 22);
    assert!(!io.masked(22), "a stranger's unbind changes nothing");
    irqs.unbind(&mut io, DOM0, 22);
    assert!(io.masked(22));
    assert_eq!(io.deliver(), None, "a held line stays quiet once its port is closed");
    assert_eq!(irqs.line(22).unwrap().owner, Some(DOM0), "still mapped");
    assert_eq!(irqs.eoi(&mut io, p(), DOM0, 22), Err(Errno::EPERM), "no EOI of an unbound line");
    irqs.bind(&mut io, p(), DOM0, 22, 11).unwrap();
    assert_eq!(irqs.release(&mut io, DOM0), 2);
    assert!(io.masked(22) && io.masked(23));
    assert_eq!(irqs.line(22), Some(&Line::default()));
    assert_eq!(irqs.map_gsi(p(), DOM0, 22, -1), Ok(22), "free again");
}

#[test]
fn vectors_name_lines_one_to_one() {
    for g in 0..MAX_GSIS {
        assert_eq!(gsi_of_vector(u64::from(vector_of(g))), Some(g));
    }
    assert_eq!(gsi_of_vector(u64::from(VECTOR_BASE) - 1), None);
    assert_eq!(gsi_of_vector(u64::from(VECTOR_BASE) + 24), None);
    assert!(u32::from(vector_of(MAX_GSIS - 1)) < u32::from(crate::hv::TIMER_VECTOR));
}

#[test]
fn armed_while_a_bound_line_can_fire_so_a_blocked_driver_is_no_deadlock() {
    let (mut io, mut irqs) = setup();
    assert!(!irqs.armed(), "no line bound: nothing can wake anyone");
    assert_eq!(irqs.map_gsi(p(), DOM0, 22, -1), Ok(22));
    assert!(!irqs.armed(), "mapped but not bound: no port to raise");
    irqs.bind(&mut io, p(), DOM0, 22, 9).unwrap();
    assert!(irqs.armed(), "bound and unmasked: the device can wake dom0");
    io.set_line(22, true);
    let v = io.deliver().unwrap();
    irqs.interrupt(&mut io, u64::from(v)).unwrap();
    assert!(!irqs.armed(), "fired and masked until the EOI: it cannot fire again");
    io.set_line(22, false);
    irqs.eoi(&mut io, p(), DOM0, 22).unwrap();
    assert!(irqs.armed());
    irqs.unbind(&mut io, DOM0, 22);
    assert!(!irqs.armed(), "unbound");
}
