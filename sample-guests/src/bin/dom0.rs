//! `dom0`: the privileged domain's first steps with real devices. It
//! enumerates PCI through the hypervisor and prints one line per function,
//! then tries writes the hypervisor must refuse (a BAR moved onto the
//! hypervisor, RAM or the APICs, the MSI capability, the host and ISA
//! bridges, identity registers, malformed addresses) beside ones it must
//! allow (decoding and bus mastering, BAR sizing), and checks each answer.
//! It crashes if any answer is wrong, so the verdict says so.
//!
//! Run unprivileged (`role=domu`), it shows that every PCI call is `EPERM`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::fmt::Arguments;
use pvguest_sdk::abi::physdev::{self, PciConfig};
use pvguest_sdk::abi::start_info::SIF_PRIVILEGED;
use pvguest_sdk::pci::{self, bar, cap, command, reg, status, Bdf};
use pvguest_sdk::{println, sched, Errno, StartInfo};

pvguest_sdk::entry!(main);

/// Where QEMU's q35 puts its AHCI controller, which dom0 is given.
const SATA: Bdf = Bdf::new(0, 0x1f, 2);
/// Its AHCI BAR (BAR5).
const ABAR: u16 = reg::BAR0 + 5 * 4;

/// Counts checks and wrong answers.
struct Checks {
    done: u32,
    wrong: u32,
}

impl Checks {
    /// `got` must be `Err(want)`.
    fn refused<T: core::fmt::Debug>(&mut self, who: &str, what: Arguments<'_>, got: Result<T, Errno>, want: Errno) {
        self.done += 1;
        match got {
            Err(e) if e == want => println!("{who}: {what}: {} (want {}) refused", e.name(), want.name()),
            other => {
                self.wrong += 1;
                println!("{who}: {what}: {other:?} (want {}) WRONG", want.name());
            }
        }
    }

    /// `ok` must hold.
    fn holds(&mut self, who: &str, what: Arguments<'_>, ok: bool) {
        self.done += 1;
        self.wrong += u32::from(!ok);
        println!("{who}: {what}: {}", if ok { "ok" } else { "WRONG" });
    }
}

fn main(si: &'static StartInfo) {
    let mut c = Checks { done: 0, wrong: 0 };
    if si.flags & SIF_PRIVILEGED == 0 {
        domu(&mut c);
    } else {
        dom0(&mut c);
    }
    if c.wrong > 0 {
        println!("{}: {} of {} checks went wrong", si.name(), c.wrong, c.done);
        sched::crash();
    }
    println!("{}: {}/{} checks as expected", si.name(), c.done, c.done);
}

fn domu(c: &mut Checks) {
    let who = "domU";
    c.refused(who, format_args!("pci::enumerate"), pci::enumerate().map(|_| ()), Errno::EPERM);
    c.refused(
        who,
        format_args!("read of 00:00.0's vendor id"),
        pci::read16(Bdf::new(0, 0, 0), reg::VENDOR_ID),
        Errno::EPERM,
    );
    c.refused(
        who,
        format_args!("write of 00:1f.2's command register"),
        pci::write16(SATA, reg::COMMAND, 0),
        Errno::EPERM,
    );
    // Even a malformed request is EPERM: the privilege comes first.
    let bad = PciConfig { dev: 99, size: 3, ..PciConfig::default() };
    c.refused(who, format_args!("malformed PCI read"), pci::config(physdev::PCI_CONFIG_READ, bad), Errno::EPERM);
    for (name, cmd) in [("eoi", physdev::EOI), ("map_pirq", physdev::MAP_PIRQ)] {
        c.refused(who, format_args!("physdev_op({name})"), pci::config(cmd, PciConfig::default()), Errno::EPERM);
    }
}

fn dom0(c: &mut Checks) {
    let who = "dom0";
    let functions = match pci::enumerate() {
        Ok(f) => f,
        Err(e) => {
            println!("{who}: PCI enumeration refused: {e}");
            sched::crash();
        }
    };
    let mut n = 0;
    let mut sata_found = false;
    for f in functions {
        n += 1;
        sata_found |= f.bdf == SATA && f.class == 0x01 && f.subclass == 0x06;
        println!(
            "pci {} {:04x}:{:04x} class {:02x}/{:02x}/{:02x} {}",
            f.bdf,
            f.vendor,
            f.device,
            f.class,
            f.subclass,
            f.prog_if,
            f.class_name()
        );
    }
    println!("{who}: {n} PCI functions");
    c.holds(who, format_args!("the AHCI controller is at 00:1f.2"), sata_found);
    if !sata_found {
        return;
    }

    // Decoding and bus mastering may be turned on.
    let cmd = pci::read16(SATA, reg::COMMAND).unwrap_or(0);
    let on = cmd | command::MEMORY_SPACE | command::BUS_MASTER;
    c.holds(
        who,
        format_args!("memory decoding and bus mastering of 00:1f.2 on"),
        pci::write16(SATA, reg::COMMAND, on).is_ok(),
    );
    c.refused(
        who,
        format_args!("MWI bit of 00:1f.2's command register"),
        pci::write16(SATA, reg::COMMAND, on | command::MWI),
        Errno::EPERM,
    );

    // A BAR is never moved onto memory that is not a device's.
    let abar = pci::read32(SATA, ABAR).unwrap_or(0);
    for (what, to) in [
        ("the hypervisor image (0x100000)", 0x0010_0000u32),
        ("RAM (0x2000000)", 0x0200_0000),
        ("the local APIC (0xfee00000)", 0xfee0_0000),
        ("the IOAPIC (0xfec00000)", 0xfec0_0000),
    ] {
        c.refused(who, format_args!("move BAR5 of 00:1f.2 onto {what}"), pci::write32(SATA, ABAR, to), Errno::EPERM);
    }
    c.holds(who, format_args!("BAR5 of 00:1f.2 still where the firmware put it"), pci::read32(SATA, ABAR) == Ok(abar));

    // Sizing: all ones, read back, restore.
    let sized = pci::write32(SATA, ABAR, u32::MAX).and_then(|()| pci::read32(SATA, ABAR));
    let restored = pci::write32(SATA, ABAR, abar).and_then(|()| pci::read32(SATA, ABAR));
    let size = sized.map(|v| (!(v & bar::MEM_ADDRESS_MASK)).wrapping_add(1)).unwrap_or(0);
    println!("{who}: BAR5 of 00:1f.2 sizes to {size} bytes; restored at {:#x}", restored.unwrap_or(0));
    c.holds(who, format_args!("BAR5 sizing works and the BAR is restored"), size >= 16 && restored == Ok(abar));

    // The MSI capability is the hypervisor's.
    match find_cap(SATA, cap::ID_MSI) {
        Some(msi) => {
            let ctl = msi + cap::msi::CONTROL;
            let v = pci::read16(SATA, ctl).unwrap_or(0) | cap::msi::CONTROL_ENABLE;
            c.refused(who, format_args!("enable MSI of 00:1f.2"), pci::write16(SATA, ctl, v), Errno::EPERM);
            let addr = msi + cap::msi::ADDRESS;
            c.refused(who, format_args!("MSI address of 00:1f.2"), pci::write32(SATA, addr, 0xfee0_0000), Errno::EPERM);
        }
        None => c.holds(who, format_args!("00:1f.2 has an MSI capability"), false),
    }

    // Functions dom0 is not given, and registers it may not write.
    c.refused(
        who,
        format_args!("command register of the host bridge 00:00.0"),
        pci::write16(Bdf::new(0, 0, 0), reg::COMMAND, 0),
        Errno::EPERM,
    );
    c.refused(
        who,
        format_args!("interrupt line of the ISA bridge 00:1f.0"),
        pci::write8(Bdf::new(0, 0x1f, 0), reg::INTERRUPT_LINE, 0),
        Errno::EPERM,
    );
    c.refused(who, format_args!("vendor id of 00:1f.2"), pci::write16(SATA, reg::VENDOR_ID, 0x1234), Errno::EPERM);
    c.refused(
        who,
        format_args!("expansion ROM BAR of 00:1f.2"),
        pci::write32(SATA, reg::ROM_ADDRESS, 0x0010_0001),
        Errno::EPERM,
    );
    c.holds(who, format_args!("interrupt line of 00:1f.2 written"), pci::write8(SATA, reg::INTERRUPT_LINE, 10).is_ok());

    // Malformed addresses.
    for (what, bdf, r, size) in [
        ("device 32", Bdf::new(0, 32, 0), 0, 4),
        ("function 8", Bdf::new(0, 0, 8), 0, 4),
        ("register 0x100", SATA, 0x100, 4),
        ("unaligned word at 0x05", SATA, 0x05, 2),
        ("size 3", SATA, 0x04, 3),
    ] {
        let a = PciConfig { seg: 0, bus: bdf.bus, dev: bdf.dev, func: bdf.func, size, reg: r, value: 0 };
        c.refused(who, format_args!("PCI read with {what}"), pci::config(physdev::PCI_CONFIG_READ, a), Errno::EINVAL);
    }

    // Reserved commands.
    c.refused(
        who,
        format_args!("physdev_op(eoi) (reserved)"),
        pci::config(physdev::EOI, PciConfig::default()),
        Errno::ENOSYS,
    );
    c.refused(
        who,
        format_args!("physdev_op(map_pirq) (reserved)"),
        pci::config(physdev::MAP_PIRQ, PciConfig::default()),
        Errno::ENOSYS,
    );
}

/// The offset of the first capability `id` of `bdf`, walking at most 48.
fn find_cap(bdf: Bdf, id: u8) -> Option<u16> {
    if pci::read16(bdf, reg::STATUS).ok()? & status::CAPABILITIES_LIST == 0 {
        return None;
    }
    let mut ptr = u16::from(pci::read8(bdf, reg::CAPABILITIES).ok()? & 0xfc);
    for _ in 0..48 {
        if ptr < reg::DEVICE_SPECIFIC {
            return None;
        }
        if pci::read8(bdf, ptr + cap::ID).ok()? == id {
            return Some(ptr);
        }
        ptr = u16::from(pci::read8(bdf, ptr + cap::NEXT).ok()? & 0xfc);
    }
    None
}
