//! The PCI write filter against a fake bus shaped like QEMU's q35 (host
//! bridge, LPC, SATA, SMBus) plus a virtio-like device with a 64-bit BAR
//! and MSI-X, a PCI-to-PCI bridge with a device behind it, and a device
//! whose capability list loops. Tests are named after the module's rules.

use super::*;
use std::collections::BTreeMap;
use std::vec::Vec;

const RAM_END: u64 = 1 << 30;

/// One fake function: 256 bytes of configuration space, BAR sizes
/// (0: unimplemented; a 64-bit BAR's high half has the pair's size) and
/// which BARs are 64-bit high halves.
#[derive(Clone)]
struct FakeFn {
    cfg: [u8; 256],
    bar_size: [u64; 6],
    high: [bool; 6],
}

impl FakeFn {
    fn new(vendor: u16, device: u16, class: [u8; 3], header_type: u8) -> FakeFn {
        let mut f = FakeFn { cfg: [0; 256], bar_size: [0; 6], high: [false; 6] };
        f.put(0, 2, u32::from(vendor));
        f.put(2, 2, u32::from(device));
        f.cfg[9] = class[2];
        f.cfg[10] = class[1];
        f.cfg[11] = class[0];
        f.cfg[14] = header_type;
        f
    }
    fn put(&mut self, r: usize, n: usize, v: u32) {
        for k in 0..n {
            self.cfg[r + k] = (v >> (8 * k)) as u8;
        }
    }
    fn get(&self, r: usize, n: usize) -> u32 {
        (0..n).fold(0, |acc, k| acc | u32::from(self.cfg[r + k]) << (8 * k))
    }
    /// A 32-bit memory BAR (or I/O when `io`) at `base`.
    fn bar(mut self, i: usize, size: u64, base: u32, io: bool) -> FakeFn {
        self.bar_size[i] = size;
        self.put(0x10 + 4 * i, 4, base | u32::from(io));
        self
    }
    /// A 64-bit memory BAR at `base` in BARs `i` and `i + 1`.
    fn bar64(mut self, i: usize, size: u64, base: u64) -> FakeFn {
        self.bar_size[i] = size;
        self.bar_size[i + 1] = size;
        self.high[i + 1] = true;
        self.put(0x10 + 4 * i, 4, base as u32 | bar::MEM_TYPE_64 | bar::MEM_PREFETCHABLE);
        self.put(0x14 + 4 * i, 4, (base >> 32) as u32);
        self
    }
    /// Adds a capability `id` at `at` with `body` after its header, linked
    /// at the front of the list.
    fn cap(mut self, at: usize, id: u8, body: &[u8]) -> FakeFn {
        let next = self.cfg[0x34];
        self.cfg[at] = id;
        self.cfg[at + 1] = next;
        self.cfg[at + 2..at + 2 + body.len()].copy_from_slice(body);
        self.cfg[0x34] = at as u8;
        self.cfg[6] |= status::CAPABILITIES_LIST as u8;
        self
    }
    fn cmd(mut self, c: u16) -> FakeFn {
        self.put(4, 2, u32::from(c));
        self
    }
    fn write(&mut self, r: usize, n: usize, v: u32) {
        if (0x10..0x28).contains(&r) {
            let i = (r - 0x10) / 4;
            assert_eq!(n, 4, "the fake takes BAR writes whole");
            let size = self.bar_size[i];
            let stored = if size == 0 {
                0
            } else if self.high[i] {
                v & (!(size - 1) >> 32) as u32
            } else {
                let flags = self.get(r, 4) & 0xf;
                let io = flags & 1 != 0;
                let addr_mask = if io { bar::IO_ADDRESS_MASK } else { bar::MEM_ADDRESS_MASK };
                (v & addr_mask & !(size - 1) as u32) | if io { flags & 1 } else { flags }
            };
            self.put(r, 4, stored);
            return;
        }
        for k in 0..n {
            let at = r + k;
            let read_only = matches!(at, 0x00..=0x03 | 0x08..=0x0b | 0x0e | 0x34 | 0x3d..=0x3f);
            if at == 6 {
                // Capability list and the like: read-only here.
            } else if at == 7 {
                // Error bits: write one to clear.
                self.cfg[at] &= !((v >> (8 * k)) as u8);
            } else if !read_only {
                self.cfg[at] = (v >> (8 * k)) as u8;
            }
        }
    }
}

#[derive(Default)]
struct FakeBus {
    fns: BTreeMap<(u8, u8, u8), FakeFn>,
    /// Every write that reached the bus.
    writes: Vec<(Bdf, u16, u8, u32)>,
}

impl ConfigSpace for FakeBus {
    fn read(&mut self, at: ConfigAddr) -> u32 {
        let b = at.bdf();
        match self.fns.get(&(b.bus(), b.dev(), b.func())) {
            Some(f) => f.get(usize::from(at.reg()), usize::from(at.size())),
            None => at.mask(),
        }
    }
    fn write(&mut self, at: ConfigAddr, value: u32) {
        let b = at.bdf();
        self.writes.push((b, at.reg(), at.size(), value));
        if let Some(f) = self.fns.get_mut(&(b.bus(), b.dev(), b.func())) {
            f.write(usize::from(at.reg()), usize::from(at.size()), value);
        }
    }
}

const MEM_IO: u16 = command::MEMORY_SPACE | command::IO_SPACE;

fn bdf(b: u8, d: u8, f: u8) -> Bdf {
    Bdf::new(b, d, f).unwrap()
}
const HOST: (u8, u8, u8) = (0, 0, 0);
const VIRTIO: (u8, u8, u8) = (0, 2, 0);
const BRIDGE: (u8, u8, u8) = (0, 3, 0);
const LOOPY: (u8, u8, u8) = (0, 4, 0);
const LPC: (u8, u8, u8) = (0, 0x1f, 0);
const SATA: (u8, u8, u8) = (0, 0x1f, 2);
const SMBUS: (u8, u8, u8) = (0, 0x1f, 3);
const BEHIND: (u8, u8, u8) = (1, 0, 0);
/// SATA's MSI capability (64-bit, with masking: 24 bytes) and the vendor
/// capability before it in the list.
const SATA_MSI: u16 = 0x80;
const SATA_VENDOR: u16 = 0x60;
const VIRTIO_MSIX: u16 = 0x98;
const SATA_ABAR: u32 = 0xfebf_1000;
const VIRTIO_BAR: u64 = 0x8_0000_0000;

fn q35() -> FakeBus {
    let mut bus = FakeBus::default();
    let mut put = |k: (u8, u8, u8), f: FakeFn| {
        bus.fns.insert(k, f);
    };
    put(HOST, FakeFn::new(0x8086, 0x29c0, [6, 0, 0], 0));
    put(LPC, FakeFn::new(0x8086, 0x2918, [6, 1, 0], 0x80));
    put(
        SATA,
        FakeFn::new(0x8086, 0x2922, [1, 6, 1], 0)
            .bar(4, 32, 0xc040, true)
            .bar(5, 4096, SATA_ABAR, false)
            .cap(SATA_MSI as usize, cap::ID_MSI, &[0x80, 0x01])
            .cap(SATA_VENDOR as usize, cap::ID_VENDOR, &[4, 0])
            .cmd(MEM_IO | command::BUS_MASTER),
    );
    put(SMBUS, FakeFn::new(0x8086, 0x2930, [0x0c, 5, 0], 0).bar(4, 64, 0x0700, true).cmd(command::IO_SPACE));
    put(
        VIRTIO,
        FakeFn::new(0x1af4, 0x1041, [2, 0, 0], 0)
            .bar(1, 4096, 0xfebf_0000, false)
            .bar64(4, 16384, VIRTIO_BAR)
            .cap(VIRTIO_MSIX as usize, cap::ID_MSIX, &[0x02, 0x00, 0x01, 0, 0, 0, 0x01, 0x08, 0, 0])
            .cmd(command::MEMORY_SPACE),
    );
    let mut bridge = FakeFn::new(0x1b36, 0x0001, [6, 4, 0], 1);
    bridge.cfg[usize::from(reg::SECONDARY_BUS)] = 1;
    put(BRIDGE, bridge);
    put(BEHIND, FakeFn::new(0x1af4, 0x1042, [1, 0, 0], 0).bar(0, 4096, 0xfe00_0000, false).cmd(command::MEMORY_SPACE));
    // A capability that points at itself.
    let mut loopy = FakeFn::new(0x1234, 0x5678, [0xff, 0, 0], 0).cap(0x40, cap::ID_VENDOR, &[]);
    loopy.cfg[0x41] = 0x40;
    put(LOOPY, loopy);
    bus
}

fn setup() -> (Pci, FakeBus) {
    let mut bus = q35();
    let pci = Pci::scan(&mut bus, Forbidden::new(RAM_END));
    bus.writes.clear();
    (pci, bus)
}

fn privilege() -> Privilege {
    Privilege::of_domain(true).unwrap()
}

fn at(f: (u8, u8, u8), r: u16, size: u8) -> ConfigAddr {
    ConfigAddr::new(bdf(f.0, f.1, f.2), r, size).unwrap()
}

fn write(pci: &mut Pci, bus: &mut FakeBus, f: (u8, u8, u8), r: u16, size: u8, v: u32) -> Result<(), Errno> {
    let before = bus.writes.len();
    let res = pci.write(privilege(), bus, at(f, r, size), v);
    if res.is_err() {
        assert_eq!(bus.writes.len(), before, "a refused write reached the device");
    }
    res
}

fn read(pci: &Pci, bus: &mut FakeBus, f: (u8, u8, u8), r: u16, size: u8) -> u32 {
    pci.read(privilege(), bus, at(f, r, size))
}

fn raw(bus: u8, dev: u8, func: u8, r: u16, size: u8) -> PciConfig {
    PciConfig { seg: 0, bus, dev, func, size, reg: r, value: 0 }
}

fn record(pci: &Pci, f: (u8, u8, u8)) -> Function {
    *pci.functions().iter().find(|x| x.bdf == bdf(f.0, f.1, f.2)).unwrap()
}

#[test]
fn rule1_decode_refuses_bad_addresses_and_sizes() {
    let ok = raw(0, 0x1f, 2, 0x10, 4);
    assert!(ConfigAddr::decode(&ok).is_ok());
    for bad in [
        PciConfig { seg: 1, ..ok },
        PciConfig { dev: 32, ..ok },
        PciConfig { func: 8, ..ok },
        PciConfig { size: 0, ..ok },
        PciConfig { size: 3, ..ok },
        PciConfig { size: 8, ..ok },
        PciConfig { reg: 0x100, ..ok },
        PciConfig { reg: 0xfff, ..ok },
        PciConfig { reg: 0x11, ..ok },
        PciConfig { reg: 0x12, ..ok },
        PciConfig { reg: 0x05, size: 2, ..ok },
    ] {
        assert_eq!(ConfigAddr::decode(&bad), Err(Errno::EINVAL), "{bad:?}");
    }
    // Bytes anywhere, words on even registers, up to 0xff.
    assert!(ConfigAddr::decode(&PciConfig { reg: 0xff, size: 1, ..ok }).is_ok());
    assert!(ConfigAddr::decode(&PciConfig { reg: 0xfe, size: 2, ..ok }).is_ok());
    // A written value must fit its size.
    let w = PciConfig { reg: 0x0c, size: 1, value: 0x100, ..ok };
    assert_eq!(ConfigAddr::decode_write(&w), Err(Errno::EINVAL));
    assert!(ConfigAddr::decode_write(&PciConfig { value: 0xff, ..w }).is_ok());
    assert!(ConfigAddr::decode_write(&PciConfig { value: u32::MAX, ..ok }).is_ok());
}

#[test]
fn rule1_mechanism_1_address() {
    let a = at((0x12, 0x1f, 7), 0x3e, 2);
    assert_eq!(a.mech1_address(), 0x8000_0000 | 0x12 << 16 | 0x1f << 11 | 7 << 8 | 0x3c);
    assert_eq!(a.data_offset(), 2);
    assert_eq!(a.mask(), 0xffff);
}

#[test]
fn scan_finds_every_function_and_follows_bridges() {
    let (pci, _) = setup();
    let mut found: Vec<_> = pci.functions().iter().map(|f| (f.bdf, f.vendor, f.device, f.given)).collect();
    found.sort();
    assert_eq!(
        found,
        [
            (bdf(0, 0, 0), 0x8086, 0x29c0, false),
            (bdf(0, 2, 0), 0x1af4, 0x1041, true),
            (bdf(0, 3, 0), 0x1b36, 0x0001, false),
            (bdf(0, 4, 0), 0x1234, 0x5678, true),
            (bdf(0, 0x1f, 0), 0x8086, 0x2918, false),
            (bdf(0, 0x1f, 2), 0x8086, 0x2922, true),
            (bdf(0, 0x1f, 3), 0x8086, 0x2930, true),
            (bdf(1, 0, 0), 0x1af4, 0x1042, true),
        ]
    );
}

#[test]
fn scan_records_bar_sizes_and_restores_the_device() {
    let mut bus = q35();
    let before = bus.fns.clone();
    let pci = Pci::scan(&mut bus, Forbidden::new(RAM_END));
    for (k, f) in &before {
        assert_eq!(bus.fns[k].cfg, f.cfg, "{k:?} not restored after sizing");
    }
    let sata = record(&pci, SATA);
    assert_eq!(sata.bars[4], Bar { kind: BarKind::Io, size: 32, base: 0xc040 });
    assert_eq!(sata.bars[5], Bar { kind: BarKind::Mem32, size: 4096, base: u64::from(SATA_ABAR) });
    assert_eq!(sata.bars[0].kind, BarKind::Unused);
    let v = record(&pci, VIRTIO);
    assert_eq!(v.bars[4], Bar { kind: BarKind::Mem64, size: 16384, base: VIRTIO_BAR });
    assert_eq!(v.bars[5].kind, BarKind::Mem64High);
    // Functions dom0 is not given are not sized (no write reached them).
    assert!(bus.writes.iter().all(|w| w.0 != bdf(0, 0, 0) && w.0 != bdf(0, 0x1f, 0)));
    assert_eq!(record(&pci, HOST).bars, [Bar::UNUSED; 6]);
}

#[test]
fn rule2_only_given_functions_may_be_written() {
    let (mut pci, mut bus) = setup();
    for f in [HOST, LPC, BRIDGE, (0, 9, 0), (7, 0, 0)] {
        assert_eq!(write(&mut pci, &mut bus, f, reg::COMMAND, 2, 0), Err(Errno::EPERM), "{f:?}");
        assert_eq!(write(&mut pci, &mut bus, f, 0x40, 1, 0), Err(Errno::EPERM), "{f:?}");
    }
    // Reads of every function are fine, absent ones read all ones.
    assert_eq!(read(&pci, &mut bus, HOST, reg::VENDOR_ID, 4), 0x29c0_8086);
    assert_eq!(read(&pci, &mut bus, (0, 9, 0), reg::VENDOR_ID, 2), 0xffff);
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::INTERRUPT_LINE, 1, 11), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, BEHIND, reg::INTERRUPT_LINE, 1, 11), Ok(()));
}

#[test]
fn rule2_an_empty_record_refuses_every_write() {
    let mut pci = Pci::empty();
    let mut bus = q35();
    assert_eq!(pci.write(privilege(), &mut bus, at(SATA, reg::INTERRUPT_LINE, 1), 1), Err(Errno::EPERM));
    assert!(bus.writes.is_empty());
}

#[test]
fn rule3_header_registers_other_than_the_writable_ones_are_refused() {
    let (mut pci, mut bus) = setup();
    for (r, size) in [
        (reg::VENDOR_ID, 2),
        (reg::DEVICE_ID, 2),
        (reg::REVISION, 1),
        (reg::CLASS, 1),
        (reg::HEADER_TYPE, 1),
        (reg::BIST, 1),
        (reg::CACHE_LINE_SIZE, 4), // covers the header type and BIST
        (0x28, 4),
        (reg::SUBSYSTEM_VENDOR_ID, 2),
        (reg::ROM_ADDRESS, 4),
        (reg::CAPABILITIES, 1),
        (0x38, 4),
        (reg::INTERRUPT_LINE, 2), // covers the pin
        (reg::INTERRUPT_PIN, 1),
        (0x3e, 2),
    ] {
        assert_eq!(write(&mut pci, &mut bus, SATA, r, size, 0), Err(Errno::EPERM), "{r:#x}/{size}");
    }
    for (r, size, v) in [
        (reg::CACHE_LINE_SIZE, 1, 0x10),
        (reg::LATENCY_TIMER, 1, 0x20),
        (reg::CACHE_LINE_SIZE, 2, 0x2010),
        (reg::INTERRUPT_LINE, 1, 10),
        (reg::STATUS, 2, 0xffff),
    ] {
        assert_eq!(write(&mut pci, &mut bus, SATA, r, size, v), Ok(()), "{r:#x}/{size}");
    }
}

#[test]
fn rule3_bars_are_written_whole() {
    let (mut pci, mut bus) = setup();
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 2, 0), Err(Errno::EINVAL));
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x26, 1, 0), Err(Errno::EINVAL));
}

#[test]
fn rule4_command_bits_dom0_may_change() {
    let (mut pci, mut bus) = setup();
    let cur = read(&pci, &mut bus, SATA, reg::COMMAND, 2);
    for bits in [0, command::BUS_MASTER, COMMAND_WRITABLE, MEM_IO] {
        assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, u32::from(bits)), Ok(()), "{bits:#x}");
        assert_eq!(record(&pci, SATA).command, bits);
    }
    for bad in [command::SPECIAL_CYCLES, command::MWI, command::VGA_SNOOP, command::FAST_BACK_TO_BACK, 1 << 11] {
        let v = u32::from(MEM_IO | bad);
        assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, v), Err(Errno::EPERM), "{bad:#x}");
    }
    // A byte write to the high half changes only that half.
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND + 1, 1, 0x04), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND + 1, 1, 0x02), Err(Errno::EPERM));
    // A dword write covers command and status (status bits clear on one).
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 4, cur | 0xffff_0000), Ok(()));
}

#[test]
fn rule4_bits_it_may_not_change_can_be_written_back_unchanged() {
    let (mut pci, mut bus) = setup();
    bus.fns.get_mut(&SATA).unwrap().put(4, 2, u32::from(MEM_IO | command::MWI));
    let v = u32::from(MEM_IO | command::MWI | command::BUS_MASTER);
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, v), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, u32::from(MEM_IO)), Err(Errno::EPERM));
}

#[test]
fn rule4_decoding_turns_on_only_with_every_bar_in_an_allowed_place() {
    let (mut pci, mut bus) = setup();
    // With decoding off, a BAR may hold anything...
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, 0), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, 0x0010_0000), Ok(()));
    // ... but memory decoding stays off while it sits on RAM.
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, u32::from(command::MEMORY_SPACE)), Err(Errno::EPERM));
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, u32::from(command::IO_SPACE)), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, SATA_ABAR), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, u32::from(MEM_IO)), Ok(()));
    // The same for an I/O BAR moved onto the hypervisor's ports.
    assert_eq!(write(&mut pci, &mut bus, SMBUS, reg::COMMAND, 2, 0), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SMBUS, 0x20, 4, 0x0cc0 | 1), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SMBUS, reg::COMMAND, 2, u32::from(command::IO_SPACE)), Err(Errno::EPERM));
    // And a 64-bit BAR whose halves land on the APIC together.
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, reg::COMMAND, 2, 0), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x24, 4, 0), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x20, 4, 0xfee0_0000), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, reg::COMMAND, 2, u32::from(command::MEMORY_SPACE)), Err(Errno::EPERM));
}

#[test]
fn rule5_a_memory_bar_is_not_moved_onto_ram_the_hypervisor_or_the_apics() {
    let (mut pci, mut bus) = setup();
    for target in [0x0010_0000u32, 0x0100_0000, 0x3fff_f000, 0xfec0_0000, 0xfecf_f000, 0xfee0_0000, 0xfeef_f000, 0] {
        assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, target), Err(Errno::EPERM), "{target:#x}");
    }
    assert_eq!(record(&pci, SATA).bars[5].base, u64::from(SATA_ABAR));
    // Just past RAM and between the APICs is fine, and the record follows.
    for target in [RAM_END as u32, 0xfed0_0000, 0xfef0_0000] {
        assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, target), Ok(()), "{target:#x}");
        assert_eq!(record(&pci, SATA).bars[5].base, u64::from(target));
    }
    // A 64-bit BAR: the low half moved under a high half of 0 lands in RAM.
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x24, 4, 0), Err(Errno::EPERM));
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x20, 4, 0x0020_0000), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x24, 4, 0), Err(Errno::EPERM));
    assert_eq!(record(&pci, VIRTIO).bars[4].base, 0x8_0020_0000);
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x24, 4, 1), Ok(()));
    assert_eq!(record(&pci, VIRTIO).bars[4].base, 0x1_0020_0000);
    assert_eq!(record(&pci, VIRTIO).bars[5].base, 0x1_0020_0000);
}

#[test]
fn rule5_an_io_bar_stays_off_the_hypervisors_ports() {
    let (mut pci, mut bus) = setup();
    for port in [0x0cf8u32, 0x0cc0, 0x0d00 - 0x40, 0x03f8, 0x03c0, 0x00f4, 0x0070, 0, 0x1_0cc0] {
        assert_eq!(write(&mut pci, &mut bus, SMBUS, 0x20, 4, port | 1), Err(Errno::EPERM), "{port:#x}");
    }
    for port in [0xc000u32, 0x0100, 0x0400, 0x0d00, 0x0700, 0xffc0] {
        assert_eq!(write(&mut pci, &mut bus, SMBUS, 0x20, 4, port | 1), Ok(()), "{port:#x}");
        assert_eq!(record(&pci, SMBUS).bars[4].base, u64::from(port));
    }
}

#[test]
fn rule5_sizing_with_all_ones_still_works() {
    let (mut pci, mut bus) = setup();
    // Decoding on, as virtio-drivers leaves it: a 4 KiB BAR sizes at the
    // top of the 32-bit space.
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, u32::MAX), Ok(()));
    assert_eq!(read(&pci, &mut bus, SATA, 0x24, 4), 0xffff_f000);
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, SATA_ABAR), Ok(()));
    assert_eq!(record(&pci, SATA).bars[5].base, u64::from(SATA_ABAR));
    // I/O BAR.
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x20, 4, u32::MAX), Ok(()));
    assert_eq!(read(&pci, &mut bus, SATA, 0x20, 4) & 0xffff, 0xffe1);
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x20, 4, 0xc041), Ok(()));
    // A 64-bit BAR, Linux's order: low, high, then both restored.
    let (lo, hi) = (VIRTIO_BAR as u32 | 0xc, (VIRTIO_BAR >> 32) as u32);
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x20, 4, u32::MAX), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x24, 4, u32::MAX), Ok(()));
    let size_mask = u64::from(read(&pci, &mut bus, VIRTIO, 0x24, 4)) << 32
        | u64::from(read(&pci, &mut bus, VIRTIO, 0x20, 4) & bar::MEM_ADDRESS_MASK);
    assert_eq!((!size_mask).wrapping_add(1), 16384);
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x20, 4, lo), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x24, 4, hi), Ok(()));
    assert_eq!(record(&pci, VIRTIO).bars[4].base, VIRTIO_BAR);
    // An unimplemented BAR takes the probe and reads zero.
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x10, 4, u32::MAX), Ok(()));
    assert_eq!(read(&pci, &mut bus, SATA, 0x10, 4), 0);
}

#[test]
fn rule5_a_large_bar_is_sized_with_decoding_off() {
    let mut bus = q35();
    bus.fns.insert((0, 5, 0), FakeFn::new(0x1234, 1, [3, 0, 0], 0).bar(0, 64 << 20, 0xe000_0000, false).cmd(MEM_IO));
    let mut pci = Pci::scan(&mut bus, Forbidden::new(RAM_END));
    let f = (0, 5, 0);
    // 64 MiB at 4 GiB - 64 MiB would cover both APICs.
    assert_eq!(write(&mut pci, &mut bus, f, 0x10, 4, u32::MAX), Err(Errno::EPERM));
    assert_eq!(write(&mut pci, &mut bus, f, reg::COMMAND, 2, 0), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, f, 0x10, 4, u32::MAX), Ok(()));
    assert_eq!(read(&pci, &mut bus, f, 0x10, 4), 0xfc00_0000);
    assert_eq!(write(&mut pci, &mut bus, f, reg::COMMAND, 2, u32::from(MEM_IO)), Err(Errno::EPERM));
    assert_eq!(write(&mut pci, &mut bus, f, 0x10, 4, 0xe000_0000), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, f, reg::COMMAND, 2, u32::from(MEM_IO)), Ok(()));
}

#[test]
fn rule5_a_bar_wrapping_the_address_space_is_refused() {
    let f = Forbidden::new(RAM_END);
    assert!(f.hit(u64::MAX - 4095, 8192).is_some());
    assert!(f.hit(u64::MAX - 4095, 4096).is_none());
    assert_eq!(f.hit(0xfee0_0000, 16), Some("the local APIC"));
    assert_eq!(f.hit(0xfebf_f000, 0x2000), Some("the IOAPIC"));
    assert_eq!(f.hit(RAM_END - 1, 2), Some("RAM or the hypervisor"));
}

#[test]
fn rule6_msi_and_msix_capabilities_cannot_be_written() {
    let (mut pci, mut bus) = setup();
    // SATA's MSI: 64-bit with masking, 24 bytes from 0x80.
    for (r, size) in [
        (SATA_MSI, 4),
        (SATA_MSI + 2, 2),
        (SATA_MSI + 4, 4),
        (SATA_MSI + 8, 4),
        (SATA_MSI + 0xc, 2),
        (SATA_MSI + 0x10, 4),
        (SATA_MSI + 0x17, 1),
    ] {
        assert_eq!(write(&mut pci, &mut bus, SATA, r, size, 0), Err(Errno::EPERM), "MSI {r:#x}");
    }
    // Past it, and the vendor capability before it, are the device's.
    assert_eq!(write(&mut pci, &mut bus, SATA, SATA_MSI + 0x18, 4, 1), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SATA, SATA_VENDOR + 2, 2, 1), Ok(()));
    assert_eq!(write(&mut pci, &mut bus, SATA, SATA_MSI - 1, 1, 1), Ok(()));
    // MSI-X: 12 bytes.
    for r in [VIRTIO_MSIX, VIRTIO_MSIX + 2, VIRTIO_MSIX + 4, VIRTIO_MSIX + 8] {
        assert_eq!(write(&mut pci, &mut bus, VIRTIO, r, 2, 0), Err(Errno::EPERM), "MSI-X {r:#x}");
    }
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, VIRTIO_MSIX + 12, 4, 0), Ok(()));
}

#[test]
fn rule6_msi_length_follows_its_control_register() {
    assert_eq!(msi_len(0), 10);
    assert_eq!(msi_len(cap::msi::CONTROL_64BIT), 14);
    assert_eq!(msi_len(cap::msi::CONTROL_MASKING), 20);
    assert_eq!(msi_len(cap::msi::CONTROL_64BIT | cap::msi::CONTROL_MASKING), 24);
    let (mut pci, mut bus) = setup();
    // A 32-bit MSI without masking ends at 0x8a.
    bus.fns.get_mut(&SATA).unwrap().put(usize::from(SATA_MSI) + 2, 2, 0);
    assert_eq!(write(&mut pci, &mut bus, SATA, SATA_MSI + 8, 2, 0), Err(Errno::EPERM));
    assert_eq!(write(&mut pci, &mut bus, SATA, SATA_MSI + 0xa, 2, 0), Ok(()));
}

#[test]
fn rule6_a_malformed_capability_list_locks_the_device_specific_space() {
    let (mut pci, mut bus) = setup();
    assert_eq!(write(&mut pci, &mut bus, LOOPY, 0x80, 4, 0), Err(Errno::EPERM));
    // The header is still writable.
    assert_eq!(write(&mut pci, &mut bus, LOOPY, reg::INTERRUPT_LINE, 1, 3), Ok(()));
    // A list pointing into the header is malformed too.
    let sata = bus.fns.get_mut(&SATA).unwrap();
    sata.cfg[usize::from(SATA_VENDOR) + 1] = 0x10;
    assert_eq!(write(&mut pci, &mut bus, SATA, 0xf0, 4, 0), Err(Errno::EPERM));
    // Without the capability-list bit there is no list to walk.
    bus.fns.get_mut(&LOOPY).unwrap().cfg[6] = 0;
    assert_eq!(write(&mut pci, &mut bus, LOOPY, 0x80, 4, 0), Ok(()));
}

#[test]
fn device_mmio_is_a_given_decoding_bar_and_nothing_forbidden() {
    let (mut pci, mut bus) = setup();
    let abar = u64::from(SATA_ABAR) / 4096;
    assert_eq!(pci.mmio_owner(abar), Some(bdf(0, 0x1f, 2)));
    assert!(pci.is_device_mmio(VIRTIO_BAR / 4096 + 3));
    assert!(!pci.is_device_mmio(VIRTIO_BAR / 4096 + 4));
    assert!(!pci.is_device_mmio(0x100));
    assert!(!pci.is_device_mmio(0xfee00));
    assert!(!pci.is_device_mmio(0xfec00));
    // The record follows a move, and decoding off gives no frames.
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, 0xfd00_0000), Ok(()));
    assert!(!pci.is_device_mmio(abar));
    assert!(pci.is_device_mmio(0xfd000));
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, 0), Ok(()));
    assert!(!pci.is_device_mmio(0xfd000));
    // A BAR placed over RAM while decoding is off never gives RAM frames.
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, 0x0100_0000), Ok(()));
    assert!(!pci.is_device_mmio(0x1000));
    // Frames of functions dom0 is not given, and absurd frames, are not.
    assert!(!pci.is_device_mmio(u64::MAX));
}

#[test]
fn intx_pins_route_by_the_q35_rule_and_only_given_functions_count() {
    let mut bus = q35();
    // virtio at 00:02.0 pin A; SATA pin A (chipset-routed); the device
    // behind the bridge pin A (swizzled: not routed); the host bridge pin A
    // (not given).
    for k in [VIRTIO, SATA, BEHIND, HOST] {
        bus.fns.get_mut(&k).unwrap().cfg[usize::from(reg::INTERRUPT_PIN)] = 1;
    }
    // A firmware "IRQ 11" in the interrupt line: ignored.
    bus.fns.get_mut(&VIRTIO).unwrap().cfg[usize::from(reg::INTERRUPT_LINE)] = 11;
    let pci = Pci::scan(&mut bus, Forbidden::new(RAM_END));
    assert_eq!(record(&pci, VIRTIO).gsi(), Some(22), "pin A of slot 2 is GSI 22 (measured)");
    assert_eq!(record(&pci, SATA).gsi(), None, "slot 0x1f is routed by the chipset");
    assert_eq!(record(&pci, BEHIND).gsi(), None, "behind a bridge");
    assert_eq!(pci.dom0_gsis(), 1 << 22, "the host bridge is not dom0's");
    assert!(format!("{}", record(&pci, VIRTIO)).ends_with(", INTx A -> GSI 22"));
    assert!(format!("{}", record(&pci, SATA)).ends_with(", INTx A (routed by the chipset: not mappable)"));
    for (slot, pin, gsi) in [(2, 1, 22), (3, 1, 23), (4, 1, 20), (5, 1, 21), (2, 2, 23), (2, 4, 21), (0x18, 1, 20)] {
        assert_eq!(intx_gsi(bdf(0, slot, 0), pin), Some(gsi), "slot {slot} pin {pin}");
    }
    assert_eq!(intx_gsi(bdf(0, 2, 0), 0), None);
    assert_eq!(intx_gsi(bdf(0, 2, 0), 5), None);
}

fn io_get(pci: &mut Pci, mfn: Mfn, writable: bool) -> Result<(), Errno> {
    use crate::mm::DeviceMemory;
    Dom0Mmio::new(privilege(), pci).get(mfn, writable)
}

fn io_put(pci: &mut Pci, mfn: Mfn) {
    use crate::mm::DeviceMemory;
    Dom0Mmio::new(privilege(), pci).put(mfn)
}

#[test]
fn scan_records_msix_table_and_pba() {
    let (pci, _) = setup();
    let m = record(&pci, VIRTIO).msix.expect("virtio has MSI-X");
    // Control 0x0002: 3 entries of 16 bytes; PBA one qword; both in BAR1.
    assert_eq!(m.table, BarRange { bar: 1, offset: 0, len: 48 });
    assert_eq!(m.pba, BarRange { bar: 1, offset: 0x800, len: 8 });
    assert_eq!(record(&pci, SATA).msix, None);
}

#[test]
fn device_memory_only_frames_of_given_decoding_bars() {
    let (mut pci, mut bus) = setup();
    let abar = u64::from(SATA_ABAR) / 4096;
    assert_eq!(io_get(&mut pci, abar, true), Ok(()));
    assert_eq!(io_get(&mut pci, VIRTIO_BAR / 4096 + 3, true), Ok(()));
    // RAM, the hypervisor, the APICs, past a BAR, nonsense: EPERM.
    for m in [0, 0x100, RAM_END / 4096 - 1, 0xfee00, 0xfec00, VIRTIO_BAR / 4096 + 4, u64::MAX / 4096, u64::MAX] {
        assert_eq!(io_get(&mut pci, m, false), Err(Errno::EPERM), "frame {m:#x}");
    }
    // A function dom0 is not given: the LPC, here with a decoding BAR.
    let mut other = q35();
    let lpc = other.fns.remove(&LPC).unwrap().bar(0, 4096, 0xfeb0_0000, false).cmd(command::MEMORY_SPACE);
    other.fns.insert(LPC, lpc);
    let mut other_pci = Pci::scan(&mut other, Forbidden::new(RAM_END));
    assert_eq!(io_get(&mut other_pci, 0xfeb00, false), Err(Errno::EPERM));
    assert_eq!(io_get(&mut other_pci, 0xfe000, false), Ok(()), "behind the bridge: given");
    // A function that stopped decoding gives no frames.
    io_put(&mut pci, abar);
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, u32::from(command::IO_SPACE)), Ok(()));
    assert_eq!(io_get(&mut pci, abar, false), Err(Errno::EPERM));
}

#[test]
fn device_memory_msix_frames_are_read_only() {
    let (mut pci, _) = setup();
    let table = 0xfebf0;
    assert_eq!(pci.mmio_frame(table).map(|f| (f.bar, f.msix)), Some((1, true)));
    assert_eq!(io_get(&mut pci, table, true), Err(Errno::EPERM));
    assert_eq!(io_get(&mut pci, table, false), Ok(()));
    // The other BAR holds no MSI-X structure.
    assert_eq!(pci.mmio_frame(VIRTIO_BAR / 4096).map(|f| (f.bar, f.msix)), Some((4, false)));
}

#[test]
fn rule7_a_mapped_bar_cannot_move_or_stop_decoding() {
    let (mut pci, mut bus) = setup();
    let abar = u64::from(SATA_ABAR) / 4096;
    io_get(&mut pci, abar, true).unwrap();
    io_get(&mut pci, abar, false).unwrap();
    assert_eq!(record(&pci, SATA).mapped[5], 2);
    // Moved, sized, or decoding off: EBUSY, and nothing reaches the device.
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, 0xfd00_0000), Err(Errno::EBUSY));
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, u32::MAX), Err(Errno::EBUSY));
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, u32::from(command::IO_SPACE)), Err(Errno::EBUSY));
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 1, u32::from(command::IO_SPACE)), Err(Errno::EBUSY));
    // Other BARs and other command bits still work.
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x20, 4, 0xc080), Ok(()));
    let keep = u32::from(MEM_IO);
    assert_eq!(write(&mut pci, &mut bus, SATA, reg::COMMAND, 2, keep), Ok(()));
    // Both halves of a mapped 64-bit BAR are held.
    io_get(&mut pci, VIRTIO_BAR / 4096, true).unwrap();
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x20, 4, 0), Err(Errno::EBUSY));
    assert_eq!(write(&mut pci, &mut bus, VIRTIO, 0x24, 4, 9), Err(Errno::EBUSY));
    // Once every mapping is given back, the BAR moves again.
    io_put(&mut pci, abar);
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, 0xfd00_0000), Err(Errno::EBUSY));
    io_put(&mut pci, abar);
    assert_eq!(write(&mut pci, &mut bus, SATA, 0x24, 4, 0xfd00_0000), Ok(()));
    assert_eq!(record(&pci, SATA).mapped[5], 0);
}

#[test]
fn io_owner_names_only_given_decoding_io_bars_and_never_the_hypervisors_ports() {
    let (mut pci, mut bus) = setup();
    let p = privilege();
    let b = |(bus, dev, func): (u8, u8, u8)| Bdf::new(bus, dev, func).unwrap();
    // SATA's BAR4 (0xc040+32) and SMBus's (0x700+64): byte, word, dword.
    assert_eq!(pci.io_owner(p, 0xc040, 1), Some(b(SATA)));
    assert_eq!(pci.io_owner(p, 0xc05c, 4), Some(b(SATA)));
    assert_eq!(pci.io_owner(p, 0x0700, 2), Some(b(SMBUS)));
    assert_eq!(pci.io_owner(p, 0x073f, 1), Some(b(SMBUS)));
    // Across a BAR's end, past it, before it.
    assert_eq!(pci.io_owner(p, 0xc05e, 4), None);
    assert_eq!(pci.io_owner(p, 0xc060, 1), None);
    assert_eq!(pci.io_owner(p, 0xc03f, 1), None);
    assert_eq!(pci.io_owner(p, 0x073e, 4), None);
    // The hypervisor's ports, and the top of the port space.
    for port in [0x3f8, 0x3fc, 0xcf8, 0xcfc, 0xf4, 0x20, 0x60, 0x70, 0x80] {
        assert_eq!(pci.io_owner(p, port, 1), None, "port {port:#x}");
    }
    assert_eq!(pci.io_owner(p, 0xffff, 2), None);
    assert_eq!(pci.io_owner(p, 0xfffe, 4), None);
    // A function not decoding I/O owns no port.
    assert_eq!(write(&mut pci, &mut bus, SMBUS, reg::COMMAND, 2, 0), Ok(()));
    assert_eq!(pci.io_owner(p, 0x0700, 1), None);
    // The host bridge (not given) owns nothing, whatever it decodes.
    assert!((0..0x1_0000u32).step_by(0x40).all(|port| pci.io_owner(p, port as u16, 1) != Some(b(HOST))));
}
