//! `dom0-attacker`: a hostile privileged domain beside an ordinary one.
//!
//! Privileged (the scenario's dom0, virtio disk and NIC attached), it
//! attacks the device interface with every request the hypervisor must
//! refuse, and checks each errno:
//! - device memory: its own RAM (an ordinary mapping, and its L4 page
//!   table writable), the next domain's RAM, the hypervisor's, the local
//!   APIC and IOAPIC, a frame past all memory, the MSI-X table writable, a
//!   BAR cached;
//! - BARs: moved onto RAM, the hypervisor or the local APIC, and a mapped
//!   BAR moved at all;
//! - interrupts: a pirq it was not given, one never mapped, one bound or
//!   mapped twice, EOIs of lines it does not own, huge and negative
//!   numbers;
//! - bad argument pointers to every device sub-op: `EFAULT`.
//!
//! Unprivileged (`role=domu`), it calls every dom0-only operation (PCI
//! configuration read and write, map_pirq, bind_pirq, eoi, unknown
//! physdev commands, an uncached mapping of every frame of the PCI hole,
//! console input, the DMA pool) and gets `EPERM` (or, for the pool, has
//! none); then it keeps ticking, so the scenario sees it make progress
//! after dom0's attacks.
//!
//! Add a case: one `c.refused`/`c.outcome` line here and its printed line
//! in the scenario's list (`xtask/src/scenarios.rs`, `dom0-attacker`).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use pvguest_sdk::abi::event::BIND_PIRQ;
use pvguest_sdk::abi::physdev::{self, map_pirq_type, MapPirq, PciConfig};
use pvguest_sdk::abi::start_info::SIF_PRIVILEGED;
use pvguest_sdk::abi::DOMID_SELF;
use pvguest_sdk::check::{bad_pointer_call, BadPointer, Checks, PointerOp};
use pvguest_sdk::irq::{self, Pirq};
use pvguest_sdk::mm::{self, Pte};
use pvguest_sdk::mmio::{uncached, Mmio};
use pvguest_sdk::pci::{self, command, reg, Bdf};
use pvguest_sdk::{dma, event, println, sched, time, Errno, StartInfo};

pvguest_sdk::entry!(main);

/// The PCI MMIO hole below the IOAPIC on q35, where firmware puts BARs.
const PCI_HOLE: (u64, u64) = (0xfe00_0000, 0xfec0_0000);

/// Every device sub-op that takes an argument pointer.
const POINTER_OPS: [(&str, PointerOp); 5] = [
    ("PCI config read", PointerOp::Physdev(physdev::PCI_CONFIG_READ)),
    ("PCI config write", PointerOp::Physdev(physdev::PCI_CONFIG_WRITE)),
    ("map_pirq", PointerOp::Physdev(physdev::MAP_PIRQ)),
    ("eoi", PointerOp::Physdev(physdev::EOI)),
    ("bind_pirq", PointerOp::EventChannel(BIND_PIRQ)),
];

fn main(si: &'static StartInfo) {
    let mut c = Checks::new();
    if si.flags & SIF_PRIVILEGED == 0 {
        domu(si, &mut c);
        c.verdict(si.name());
        tick(si);
    } else {
        if let Err(e) = dom0(si, &mut c) {
            c.holds("dom0", format_args!("device set-up failed: {e}"), false);
        }
        c.verdict(si.name());
    }
}

fn domu(si: &StartInfo, c: &mut Checks) {
    let who = "domU";
    // Which frames are ours (dom0 aims at them; the scenario compares).
    let mfns = (0..si.nr_pages).map(mm::mfn_of_pfn);
    let (lo, hi) = mfns.fold((u64::MAX, 0), |(l, h), m| (l.min(m), h.max(m)));
    println!("{who}: owns mfns {lo:#x}..={hi:#x}");
    let sata = Bdf::new(0, 0x1f, 2);
    c.refused(who, format_args!("PCI config read"), pci::read16(Bdf::new(0, 0, 0), reg::VENDOR_ID), Errno::EPERM);
    c.refused(who, format_args!("PCI config write"), pci::write16(sata, reg::COMMAND, 0), Errno::EPERM);
    c.refused(who, format_args!("map_pirq of GSI 22"), irq::map_gsi(22), Errno::EPERM);
    c.refused(who, format_args!("bind_pirq of pirq 22"), irq::bind_raw(22, 0), Errno::EPERM);
    c.refused(who, format_args!("eoi of pirq 22"), irq::eoi(Pirq(22)), Errno::EPERM);
    for cmd in [0, 77, physdev::RF_BASE + 2, u64::MAX] {
        let r = pci::config(cmd, PciConfig::default());
        c.refused(who, format_args!("physdev_op {cmd:#x} (no such command)"), r, Errno::EPERM);
    }
    // The privilege comes before the argument: a bad pointer is EPERM too.
    for (name, op) in POINTER_OPS {
        for p in BadPointer::ALL {
            c.refused(who, format_args!("{name} with {}", p.name()), bad_pointer_call(op, p), Errno::EPERM);
        }
    }
    c.refused(
        who,
        format_args!("console input"),
        bad_pointer_call(PointerOp::ConsoleRead, BadPointer::Null),
        Errno::EPERM,
    );
    // Device memory: every frame of the PCI hole, whichever holds a BAR.
    let mut wrong = 0u64;
    let mut last = Ok(());
    let frames = (PCI_HOLE.1 - PCI_HOLE.0) / 4096;
    let swept = Mmio::probe_each(PCI_HOLE.0, frames, uncached(true), |_, r| {
        if r != Err(Errno::EPERM) {
            wrong += 1;
            last = r;
        }
    });
    if let Err(e) = swept {
        (wrong, last) = (frames, Err(e));
    }
    let r = if wrong == 0 { Err(Errno::EPERM) } else { last };
    c.refused(
        who,
        format_args!("uncached mapping of each of the {frames} frames of the PCI hole ({wrong} not EPERM)"),
        r,
        Errno::EPERM,
    );
    c.refused(
        who,
        format_args!("uncached mapping of the local APIC"),
        Mmio::probe(0xfee0_0000, uncached(true)),
        Errno::EPERM,
    );
    c.refused(
        who,
        format_args!("uncached mapping of the IOAPIC"),
        Mmio::probe(0xfec0_0000, uncached(true)),
        Errno::EPERM,
    );
    // No DMA pool, and no hypercall hands out machine memory.
    c.holds(who, format_args!("no DMA pool in start info"), dma::pool().is_none());
    c.refused(who, format_args!("dma::alloc"), dma::alloc(4096, 4096), Errno::ENOMEM);
}

/// Progress after the attacks: a tick every 20 ms for 3 s, then power off.
fn tick(si: &StartInfo) {
    for n in 1..=150u32 {
        let until = time::now_ns() + 20_000_000;
        while time::now_ns() < until {
            sched::yield_now();
        }
        if n % 10 == 0 {
            println!("{}: tick {n}", si.name());
        }
    }
}

fn dom0(si: &StartInfo, c: &mut Checks) -> Result<(), Errno> {
    let who = "dom0";
    let blk = pci::enumerate()?.find(|f| f.vendor == 0x1af4 && f.device == 0x1042).ok_or(Errno::ENOENT)?;
    let bdf = blk.bdf;
    let cmd = pci::read16(bdf, reg::COMMAND)?;
    pci::write16(bdf, reg::COMMAND, cmd | command::MEMORY_SPACE | command::BUS_MASTER)?;
    let bar4 = pci::bar_base(bdf, 4)?;
    println!("{who}: virtio-blk at {bdf}, BAR4 at {bar4:#x}");

    // ---- BARs: never onto memory that is not a device's ----
    let breg = reg::BAR0 + 4 * 4;
    let lo = pci::read32(bdf, breg)?;
    for (what, to) in [
        ("RAM (0x2000000)", 0x0200_0000u32),
        ("the hypervisor image (0x100000)", 0x0010_0000),
        ("the local APIC (0xfee00000)", 0xfee0_0000),
    ] {
        c.refused(
            who,
            format_args!("move BAR4 of {bdf} onto {what}"),
            pci::write32(bdf, breg, to | (lo & 0xf)),
            Errno::EPERM,
        );
    }
    c.holds(who, format_args!("BAR4 of {bdf} still at {bar4:#x}"), pci::bar_base(bdf, 4) == Ok(bar4));

    // ---- Device memory ----
    let regs = Mmio::map(bar4, 0x1000, true)?;
    c.refused(who, format_args!("move BAR4 while it is mapped"), pci::write32(bdf, breg, lo ^ 0x10_0000), Errno::EBUSY);
    let msix = pci::bar_base(bdf, 1)?;
    c.refused(who, format_args!("map the MSI-X table frame writable"), Mmio::probe(msix, uncached(true)), Errno::EPERM);
    c.refused(who, format_args!("map BAR4 cached"), Mmio::probe(bar4, Pte::WRITABLE | Pte::NO_EXECUTE), Errno::EINVAL);
    // Its own RAM is RAM: mapped uncached it is an ordinary mapping of an
    // owned frame (cache bits are the guest's, mm rule 6), never device
    // memory; as a page table it stays unwritable whatever the bits.
    let page = mm::alloc_page().ok_or(Errno::ENOMEM)?;
    c.outcome(
        who,
        "map its own RAM uncached read-only (an ordinary RAM mapping)",
        Mmio::probe(page.mfn * 4096, uncached(false)),
        Ok(()),
    );
    let root = mm::kernel_root();
    c.refused(
        who,
        format_args!("map its own L4 page table uncached writable"),
        Mmio::probe(root.mfn * 4096, uncached(true)),
        Errno::EBUSY,
    );
    // The next domain's frames follow dom0's in allocation order.
    let next = (0..si.nr_pages).map(mm::mfn_of_pfn).max().unwrap_or(0) + 1;
    c.refused(
        who,
        format_args!("map another domain's RAM (mfn {next:#x}) uncached"),
        Mmio::probe(next * 4096, uncached(true)),
        Errno::EPERM,
    );
    for (what, addr) in [
        ("the hypervisor's RAM (0x100000)", 0x10_0000u64),
        ("the local APIC (0xfee00000)", 0xfee0_0000),
        ("the IOAPIC (0xfec00000)", 0xfec0_0000),
        ("a frame past all memory (mfn 1 << 39)", 1 << 51),
    ] {
        c.refused(who, format_args!("map {what} uncached"), Mmio::probe(addr, uncached(true)), Errno::EPERM);
    }
    regs.unmap()?;

    // ---- Interrupts ----
    event::init();
    let pirq = irq::map_gsi(22);
    c.holds(who, format_args!("map_pirq of GSI 22 (virtio-blk) gives pirq 22"), pirq == Ok(Pirq(22)));
    c.refused(who, format_args!("map_pirq of GSI 22 twice"), irq::map_gsi(22), Errno::EEXIST);
    let chan = irq::bind(Pirq(22));
    c.holds(who, format_args!("bind_pirq of pirq 22"), chan.is_ok());
    c.refused(who, format_args!("bind_pirq of pirq 22 twice"), irq::bind_raw(22, 0), Errno::EEXIST);
    c.refused(who, format_args!("bind_pirq of pirq 21 (not given)"), irq::bind_raw(21, 0), Errno::EPERM);
    c.refused(who, format_args!("bind_pirq of pirq 23 (given, never mapped)"), irq::bind_raw(23, 0), Errno::EPERM);
    c.refused(who, format_args!("bind_pirq of pirq 4096"), irq::bind_raw(4096, 0), Errno::EINVAL);
    c.refused(who, format_args!("bind_pirq of pirq 0xffffffff"), irq::bind_raw(u32::MAX, 0), Errno::EINVAL);
    c.refused(who, format_args!("eoi of pirq 21 (not its line)"), irq::eoi(Pirq(21)), Errno::EPERM);
    c.refused(who, format_args!("eoi of pirq 23 (never mapped)"), irq::eoi(Pirq(23)), Errno::EPERM);
    c.refused(who, format_args!("eoi of pirq 0xffffffff"), irq::eoi(Pirq(u32::MAX)), Errno::EINVAL);
    for (what, gsi) in [("2 (the PIT, a legacy ISA line)", 2), ("4 (COM1)", 4), ("0x7fffffff", i32::MAX), ("-1", -1)] {
        let m =
            MapPirq { domid: DOMID_SELF as u16, type_: map_pirq_type::GSI, index: gsi, pirq: -1, ..MapPirq::default() };
        let want = if (0..24).contains(&gsi) { Errno::EPERM } else { Errno::EINVAL };
        c.refused(who, format_args!("map_pirq of GSI {what}"), irq::map_raw(m), want);
    }
    if let Ok(ch) = &chan {
        c.outcome(who, "eoi of its own pirq 22", ch.eoi(), Ok(()));
    }

    // ---- Bad argument pointers: EFAULT, never a hypervisor fault ----
    for (name, op) in POINTER_OPS {
        for p in BadPointer::ALL {
            c.refused(who, format_args!("{name} with {}", p.name()), bad_pointer_call(op, p), Errno::EFAULT);
        }
    }
    Ok(())
}
