//! `dom0`: the privileged domain's first steps with real devices. It
//! enumerates PCI through the hypervisor and prints one line per function,
//! then tries writes the hypervisor must refuse (a BAR moved onto the
//! hypervisor, RAM or the APICs, the MSI capability, the host and ISA
//! bridges, identity registers, malformed addresses) beside ones it must
//! allow (decoding and bus mastering, BAR sizing), and checks each answer.
//! It crashes if any answer is wrong, so the verdict says so.
//!
//! With `irq` on its command line (the `dom0-irq` scenario, virtio disk
//! and NIC attached), it maps the GSIs of both virtio functions to pirqs,
//! binds them to ports with handlers and EOIs them, and checks the
//! refusals (double map and bind, GSIs and pirqs not its own, MSI).
//!
//! With `devices` (the `dom0-devices` scenario and `cargo xtask run`), it
//! enumerates PCI, brings up the virtio disk with its interrupt-driven
//! driver and proves it (reads xtask's pattern, writes its own, flushes:
//! [`blk`]), then the network; with `vbd=` words too (a manifest that gives
//! domUs disks), it then serves them and the store on that same disk, as
//! `serve` does. `storm` makes the disk storm interrupts
//! beside a domU (`dom0-storm`); `blkbench` measures the disk
//! (`cargo xtask bench`).
//!
//! Run unprivileged (`role=domu`), it shows that every PCI and interrupt
//! call is `EPERM`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use core::sync::atomic::{AtomicU32, Ordering};
use pvguest_sdk::abi::event::BIND_PIRQ_WILL_SHARE;
use pvguest_sdk::abi::physdev::{self, PciConfig};
use pvguest_sdk::abi::physdev::{map_pirq_type, MapPirq};
use pvguest_sdk::abi::start_info::SIF_PRIVILEGED;
use pvguest_sdk::check::Checks;
use pvguest_sdk::event::{self, Port};
use pvguest_sdk::ioport;
use pvguest_sdk::irq::{self, Pirq};
use pvguest_sdk::pci::{self, bar, cap, command, reg, status, Bdf};
use pvguest_sdk::virtio::blk::BlkError;
use pvguest_sdk::{println, sched, Errno, StartInfo};

mod api;
mod blk;
mod blkback;
mod consoled;
mod net;
mod netback;
mod serve;
mod served;
mod toolstack;
mod uplink;
mod vifs;
mod xs;

pvguest_sdk::entry!(main);

/// Where QEMU's q35 puts its AHCI controller, which dom0 is given.
const SATA: Bdf = Bdf::new(0, 0x1f, 2);
/// Its AHCI BAR (BAR5).
const ABAR: u16 = reg::BAR0 + 5 * 4;

fn main(si: &'static StartInfo) {
    let mut c = Checks::new();
    if si.flags & SIF_PRIVILEGED == 0 {
        domu(&mut c);
    } else if has_word(si.cmdline(), "serve") {
        serve_mode(&mut c, si.cmdline());
    } else if has_word(si.cmdline(), "irq") {
        dom0_irq(&mut c);
    } else if has_word(si.cmdline(), "devices") {
        devices(&mut c, si.cmdline());
    } else if has_word(si.cmdline(), "storm") || has_word(si.cmdline(), "blkbench") {
        disk_mode(&mut c, si.cmdline());
    } else if has_word(si.cmdline(), "net") {
        c.holds("dom0", format_args!("the network service ran until told to stop"), net::run(si).is_ok());
    } else {
        dom0(&mut c);
    }
    c.verdict(si.name());
}

fn has_word(cmdline: &str, word: &str) -> bool {
    cmdline.split(' ').any(|w| w == word)
}

/// Prints every PCI function dom0 is shown; how many.
fn list_pci(who: &str) -> usize {
    let functions = match pci::enumerate() {
        Ok(f) => f,
        Err(e) => {
            println!("{who}: PCI enumeration refused: {e}");
            sched::crash();
        }
    };
    let mut n = 0;
    for f in functions {
        n += 1;
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
    n
}

/// `devices`: enumerate PCI, bring up the disk and prove it, then the
/// network; then, if the command line has `vbd=` words (xtask writes them
/// from the manifest's disks), serve the domUs' virtual disks and the
/// store on the same open disk until every other domain has ended.
fn devices(c: &mut Checks, cmdline: &str) {
    let who = "dom0";
    list_pci(who);
    let mut disk = match blk::open() {
        Ok(mut disk) => {
            let r = blk::prove(&mut disk);
            if let Err(e) = &r {
                println!("blk: {e}");
            }
            c.holds(who, format_args!("virtio-blk proved (read, write, flush)"), r.is_ok());
            Some(disk)
        }
        Err(e) => {
            c.holds(who, format_args!("virtio-blk brought up ({e})"), false);
            None
        }
    };
    if has_word(cmdline, "net") {
        let ok = net::run(pvguest_sdk::start_info()).is_ok();
        c.holds(who, format_args!("the network service ran until told to stop"), ok);
    } else if !cmdline.split(' ').any(|w| w.starts_with("uplink=")) {
        println!("{who}: no `net` or `uplink=` on the command line: the NIC is left alone");
    }
    if !cmdline.split(' ').any(|w| w.starts_with("vbd=") || w.starts_with("vif=")) {
        return;
    }
    // The disk can be opened once: the one proved above is served.
    match disk.as_mut() {
        Some(disk) if init_heap(c, cmdline) => serve_all(c, disk, cmdline),
        Some(_) => {}
        None => c.holds(who, format_args!("the domUs' virtual disks served (no disk to serve them from)"), false),
    }
}

/// `serve`: the store and the domUs' disks (see [`serve`]).
fn serve_mode(c: &mut Checks, cmdline: &str) {
    if !init_heap(c, cmdline) {
        return;
    }
    let mut disk = match blk::open() {
        Ok(d) => d,
        Err(e) => {
            c.holds("dom0", format_args!("virtio-blk brought up ({e})"), false);
            return;
        }
    };
    serve_all(c, &mut disk, cmdline);
}

/// The heap serving needs: `heap=` pages (128 by default); whether it is
/// there.
fn init_heap(c: &mut Checks, cmdline: &str) -> bool {
    let heap = pvguest_sdk::cmdline::arg_or(cmdline, "heap", 128);
    let r = pvguest_sdk::heap::init(heap);
    if let Err(e) = &r {
        c.holds("dom0", format_args!("a heap of {heap} pages ({e})"), false);
    }
    r.is_ok()
}

/// Runs the store and the `vbd=` disks of `cmdline` on `disk` until every
/// other domain has ended ([`serve::run`]).
fn serve_all(c: &mut Checks, disk: &mut pvguest_sdk::virtio::blk::Disk, cmdline: &str) {
    let r = serve::run(disk, cmdline);
    if let Err(e) = &r {
        println!("serve: {e}");
    }
    c.holds("dom0", format_args!("served every domain to its end"), r.is_ok());
}

/// `storm` or `blkbench`: the disk alone.
fn disk_mode(c: &mut Checks, cmdline: &str) {
    let who = "dom0";
    let mut disk = match blk::open() {
        Ok(d) => d,
        Err(e) => {
            c.holds(who, format_args!("virtio-blk brought up ({e})"), false);
            return;
        }
    };
    let (what, r) = if has_word(cmdline, "storm") {
        ("interrupt storm survived", blk::storm(&mut disk, cmdline))
    } else {
        ("block benchmark ran", blk::bench(&mut disk, cmdline))
    };
    if let Err(e) = &r {
        println!("blk: {e}");
    }
    c.holds(who, format_args!("{what}"), r.is_ok());
}

/// q35's SMBus controller (given to dom0): its BAR4 is an I/O BAR.
const SMBUS: Bdf = Bdf::new(0, 0x1f, 3);

/// Port I/O: dom0 reaches its devices' I/O BARs (the hypervisor emulates
/// the `in`/`out`), never the hypervisor's ports; a domU reaches none.
fn io_ports(c: &mut Checks, who: &str, privileged: bool) {
    if privileged {
        let bar4 = pci::read32(SMBUS, reg::BAR0 + 16).unwrap_or(0);
        let smbus = (bar4 & !3) as u16;
        c.holds(who, format_args!("SMBus BAR4 is an I/O BAR at {smbus:#x}"), bar4 & 1 == 1 && smbus >= 0x100);
        let status = ioport::read8(smbus);
        c.holds(who, format_args!("in from the SMBus host status port: {status:?}"), status.is_ok());
        let wide = ioport::read16(smbus + 2);
        c.holds(who, format_args!("16-bit in from the SMBus BAR"), wide.is_ok());
        c.holds(
            who,
            format_args!("in of 32 bits across the SMBus BAR's end refused"),
            ioport::read32(smbus + 0x3e).is_err(),
        );
    } else {
        c.holds(who, format_args!("in from the SMBus port 0x700 refused"), ioport::read8(0x700).is_err());
    }
    for (port, what) in [
        (0x3f8u16, "COM1"),
        (0xcfc, "PCI configuration data"),
        (0x60, "the keyboard controller"),
        (0x1000, "a port no BAR holds"),
    ] {
        c.holds(who, format_args!("in from {what} (port {port:#x}) refused"), ioport::read8(port).is_err());
    }
    c.holds(who, format_args!("out to COM1 refused"), ioport::write8(0x3f8, b'!').is_err());
    c.holds(who, format_args!("out to the debug exit refused"), ioport::write8(0xf4, 0x10).is_err());
}

fn domu(c: &mut Checks) {
    let who = "domU";
    io_ports(c, who, false);
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
    c.refused(who, format_args!("bind_pirq of pirq 22"), irq::bind_raw(22, 0), Errno::EPERM);
}

/// Interrupts taken, and the port of the last.
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);
static LAST_PORT: AtomicU32 = AtomicU32::new(0);

fn on_interrupt(port: Port) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    LAST_PORT.store(port.0, Ordering::SeqCst);
}

/// Makes the virtio function named `name` raise its INTx line through
/// its driver, on `chan` (already mapped, bound and EOId): for the disk, the
/// driver reads sector 0 and waits for the device's interrupt (its handler
/// counts it; the driver reads the ISR, then EOIs). Gives the channel back,
/// and the device interrupts that came (`None`: no driver here for that
/// device yet).
fn provoke_interrupt(name: &str, chan: irq::IrqChannel) -> (irq::IrqChannel, Option<Result<u64, BlkError>>) {
    if name != "virtio-blk" {
        return (chan, None);
    }
    let (chan, r) = blk::provoke(chan);
    (chan, Some(r))
}

fn dom0_irq(c: &mut Checks) {
    let who = "dom0";
    event::init();
    let mut channels: [Option<irq::IrqChannel>; 2] = [None, None];
    for (k, (name, device)) in [("virtio-blk", 0x1042u16), ("virtio-net", 0x1041)].into_iter().enumerate() {
        let Some(f) = pci::enumerate().ok().and_then(|mut fs| fs.find(|f| f.vendor == 0x1af4 && f.device == device))
        else {
            c.holds(who, format_args!("a {name} function is attached"), false);
            continue;
        };
        let pin = pci::read8(f.bdf, reg::INTERRUPT_PIN).unwrap_or(0);
        let gsi = match irq::gsi_of(f.bdf) {
            Ok(Some(g)) => g,
            other => {
                c.holds(who, format_args!("{name} at {}: its INTx pin is routed ({other:?})", f.bdf), false);
                continue;
            }
        };
        println!("{who}: {name} at {}: INTx pin {} -> GSI {gsi}", f.bdf, char::from(b'@' + pin));
        c.holds(who, format_args!("{name}'s GSI {gsi} is a q35 PCI INTx GSI (16-23)"), (16..=23).contains(&gsi));
        let pirq = match irq::map_gsi(gsi) {
            Ok(p) => p,
            Err(e) => {
                c.holds(who, format_args!("map_pirq of GSI {gsi} ({name}): {e}"), false);
                continue;
            }
        };
        c.holds(who, format_args!("map_pirq of GSI {gsi} ({name}) gives pirq {}", pirq.0), pirq.0 == gsi);
        c.refused(who, format_args!("map_pirq of GSI {gsi} again"), irq::map_gsi(gsi), Errno::EEXIST);
        let chan = match irq::bind(pirq) {
            Ok(ch) => ch,
            Err(e) => {
                c.holds(who, format_args!("bind_pirq of pirq {}: {e}", pirq.0), false);
                continue;
            }
        };
        println!("{who}: pirq {} bound to port {}", pirq.0, chan.port().0);
        c.refused(who, format_args!("bind_pirq of pirq {} again", pirq.0), irq::bind_raw(pirq.0, 0), Errno::EEXIST);
        c.holds(who, format_args!("handler set on port {}", chan.port().0), chan.on_interrupt(on_interrupt).is_ok());
        c.holds(who, format_args!("eoi of pirq {} with nothing in flight", pirq.0), chan.eoi().is_ok());
        let port = chan.port().0;
        let (chan, provoked) = provoke_interrupt(name, chan);
        match provoked {
            Some(Ok(n)) => c.holds(
                who,
                format_args!(
                    "{name}: device interrupt on port {port} (ISR read, then EOI): {n} for a read of sector 0"
                ),
                n >= 1,
            ),
            Some(Err(e)) => c.holds(who, format_args!("{name}: a read of sector 0 through its driver: {e}"), false),
            None => println!("{who}: {name}: no interrupt provoked (no driver of it in this mode)"),
        }
        channels[k] = Some(chan);
    }

    // Refusals.
    c.refused(who, format_args!("map_pirq of GSI 21 (no device of dom0's)"), irq::map_gsi(21), Errno::EPERM);
    c.refused(who, format_args!("map_pirq of GSI 24 (past the IOAPIC)"), irq::map_gsi(24), Errno::EINVAL);
    let msi = MapPirq { domid: 0x7ff0, type_: map_pirq_type::MSI, index: 0, pirq: -1, ..MapPirq::default() };
    c.refused(who, format_args!("map_pirq of an MSI"), irq::map_raw(msi), Errno::EOPNOTSUPP);
    let other = MapPirq { domid: 2, type_: map_pirq_type::GSI, index: 22, pirq: -1, ..MapPirq::default() };
    c.refused(who, format_args!("map_pirq of GSI 22 for domain 2 (the domU)"), irq::map_raw(other), Errno::EPERM);
    c.refused(who, format_args!("bind_pirq of pirq 20 (not mapped)"), irq::bind_raw(20, 0), Errno::EPERM);
    c.refused(
        who,
        format_args!("bind_pirq with unknown flags"),
        irq::bind_raw(22, 2 | BIND_PIRQ_WILL_SHARE),
        Errno::EINVAL,
    );
    c.refused(who, format_args!("eoi of pirq 21 (not its line)"), irq::eoi(Pirq(21)), Errno::EPERM);
    c.refused(who, format_args!("eoi of pirq 4000"), irq::eoi(Pirq(4000)), Errno::EINVAL);

    // Closing the port unbinds the line; the pirq stays mapped.
    if let Some(chan) = channels[0].take() {
        let pirq = chan.pirq();
        c.holds(who, format_args!("close of pirq {}'s port", pirq.0), chan.close().is_ok());
        c.refused(who, format_args!("eoi of pirq {} after close", pirq.0), irq::eoi(pirq), Errno::EPERM);
        let again = irq::bind(pirq);
        c.holds(who, format_args!("pirq {} binds again after close", pirq.0), again.is_ok());
    }
    println!(
        "{who}: {} device interrupt(s) taken",
        u64::from(INTERRUPTS.load(Ordering::SeqCst)) + pvguest_sdk::virtio::blk::interrupts()
    );
}

fn dom0(c: &mut Checks) {
    let who = "dom0";
    io_ports(c, who, true);
    list_pci(who);
    let sata = pci::function(SATA).ok().flatten();
    let sata_found = sata.is_some_and(|f| f.class == 0x01 && f.subclass == 0x06);
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

    // Interrupts: no function of dom0's is on GSI 22 here (no virtio
    // devices attached), so there is nothing to map or EOI.
    c.refused(who, format_args!("map_pirq of GSI 22 (no device of dom0's)"), irq::map_gsi(22), Errno::EPERM);
    c.refused(who, format_args!("eoi of pirq 22 (not its line)"), irq::eoi(Pirq(22)), Errno::EPERM);
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
