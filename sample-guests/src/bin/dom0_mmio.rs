//! `dom0-mmio`: dom0 maps a virtio-blk device's registers and uses its
//! DMA pool. It finds the disk (1af4:1042), turns on memory decoding,
//! finds the virtio PCI capabilities (common, notify, ISR, device
//! configuration), maps BAR4 uncached through the validated page-table
//! path and reads the disk's capacity from the device configuration; it
//! maps the MSI-X BAR read-only (writable is refused), tries the
//! forbidden mappings (another domain's or the hypervisor's RAM, the local
//! APIC, the IOAPIC, a cached entry, a frame no BAR holds) and moving or
//! disabling the mapped BAR, and takes a buffer from its DMA pool.
//!
//! Run unprivileged (`role=domu`), every device mapping is `EPERM`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use pvguest_sdk::abi::start_info::SIF_PRIVILEGED;
use pvguest_sdk::check::Checks;
use pvguest_sdk::mm::Pte;
use pvguest_sdk::mmio::{uncached, Mmio};
use pvguest_sdk::pci::{self, cap, command, reg, status};
use pvguest_sdk::{dma, println, Errno, StartInfo};

pvguest_sdk::entry!(main);

/// Virtio vendor capability types (virtio 1.x, 4.1.4).
const VIRTIO_CAP_NAMES: [&str; 6] = ["?", "common", "notify", "isr", "device", "pci-access"];
const VIRTIO_DEVICE_CFG: u8 = 4;
const VIRTIO_COMMON_CFG: u8 = 1;
/// `num_queues` in the common configuration.
const COMMON_NUM_QUEUES: u64 = 0x12;

fn main(si: &'static StartInfo) {
    let mut c = Checks::new();
    if si.flags & SIF_PRIVILEGED == 0 {
        // Where QEMU's firmware put virtio-blk's BAR4 (the domU cannot ask).
        c.outcome("mmio", "domU maps a device frame", Mmio::probe(0xfebf_4000, uncached(false)), Err(Errno::EPERM));
        c.outcome("mmio", "domU maps the local APIC", Mmio::probe(0xfee0_0000, uncached(false)), Err(Errno::EPERM));
    } else if let Err(e) = dom0(&mut c) {
        c.holds("mmio", format_args!("device bring-up failed: {}", e.name()), false);
    }
    c.verdict(si.name());
}

fn dom0(c: &mut Checks) -> Result<(), Errno> {
    let blk = pci::enumerate()?.find(|f| f.vendor == 0x1af4 && f.device == 0x1042).ok_or(Errno::ENOMEM)?;
    let bdf = blk.bdf;
    println!("mmio: virtio-blk at {bdf}");
    let cmd = pci::read16(bdf, reg::COMMAND)?;
    pci::write16(bdf, reg::COMMAND, cmd | command::MEMORY_SPACE | command::BUS_MASTER)?;

    // The virtio capabilities: (type, bar, offset, length).
    let mut device_cfg = None;
    let mut common_cfg = None;
    if pci::read16(bdf, reg::STATUS)? & status::CAPABILITIES_LIST != 0 {
        let mut ptr = u16::from(pci::read8(bdf, reg::CAPABILITIES)? & 0xfc);
        for _ in 0..48 {
            if ptr < 0x40 {
                break;
            }
            if pci::read8(bdf, ptr + cap::ID)? == cap::ID_VENDOR {
                let ty = pci::read8(bdf, ptr + 3)?;
                let bar = pci::read8(bdf, ptr + 4)?;
                let off = pci::read32(bdf, ptr + 8)?;
                let len = pci::read32(bdf, ptr + 12)?;
                let name = VIRTIO_CAP_NAMES.get(usize::from(ty)).copied().unwrap_or("other");
                println!("mmio: virtio {name} cfg in BAR{bar} at {off:#x}+{len:#x}");
                if ty == VIRTIO_DEVICE_CFG {
                    device_cfg = Some((bar, off));
                }
                if ty == VIRTIO_COMMON_CFG {
                    common_cfg = Some((bar, off));
                }
            }
            ptr = u16::from(pci::read8(bdf, ptr + cap::NEXT)? & 0xfc);
        }
    }
    let (dbar, doff) = device_cfg.ok_or(Errno::EINVAL)?;
    let (cbar, coff) = common_cfg.ok_or(Errno::EINVAL)?;
    let base = pci::bar_base(bdf, u16::from(dbar))?;
    println!("mmio: BAR{dbar} at {base:#x}");
    let regs = Mmio::map(base, 0x4000, true)?;
    let capacity = regs.read64(u64::from(doff));
    println!("mmio: virtio-blk capacity through MMIO: {capacity} sectors");
    c.holds("mmio", format_args!("capacity is 131072 sectors (64 MiB)"), capacity == 131072);
    if cbar == dbar {
        println!("mmio: virtio common cfg num_queues: {}", regs.read16(u64::from(coff) + COMMON_NUM_QUEUES));
    }

    // The mapped BAR holds still.
    let breg = reg::BAR0 + 4 * u16::from(dbar);
    let lo = pci::read32(bdf, breg)?;
    c.outcome("mmio", "move the mapped BAR", pci::write32(bdf, breg, lo ^ 0x10_0000), Err(Errno::EBUSY));
    c.outcome(
        "mmio",
        "turn memory decoding off while mapped",
        pci::write16(bdf, reg::COMMAND, cmd & !command::MEMORY_SPACE),
        Err(Errno::EBUSY),
    );

    // MSI-X lives in BAR1 on QEMU's virtio-pci: read-only only.
    let msix = pci::bar_base(bdf, 1)?;
    c.outcome("mmio", "map the MSI-X table writable", Mmio::probe(msix, uncached(true)), Err(Errno::EPERM));
    c.outcome("mmio", "map the MSI-X table read-only", Mmio::probe(msix, uncached(false)), Ok(()));

    // Forbidden frames.
    c.outcome(
        "mmio",
        "map the hypervisor's RAM (0x100000)",
        Mmio::probe(0x10_0000, uncached(false)),
        Err(Errno::EPERM),
    );
    c.outcome("mmio", "map frame 0", Mmio::probe(0, uncached(false)), Err(Errno::EPERM));
    c.outcome("mmio", "map the local APIC (0xfee00000)", Mmio::probe(0xfee0_0000, uncached(true)), Err(Errno::EPERM));
    c.outcome("mmio", "map the IOAPIC (0xfec00000)", Mmio::probe(0xfec0_0000, uncached(true)), Err(Errno::EPERM));
    c.outcome(
        "mmio",
        "map a frame no BAR holds (0xfe000000)",
        Mmio::probe(0xfe00_0000, uncached(false)),
        Err(Errno::EPERM),
    );
    c.outcome("mmio", "map the BAR cached", Mmio::probe(base, Pte::WRITABLE | Pte::NO_EXECUTE), Err(Errno::EINVAL));

    // Unmapped, the BAR may be disabled and re-enabled.
    regs.unmap()?;
    c.outcome(
        "mmio",
        "turn memory decoding off once unmapped",
        pci::write16(bdf, reg::COMMAND, cmd & !command::MEMORY_SPACE),
        Ok(()),
    );
    pci::write16(bdf, reg::COMMAND, cmd | command::MEMORY_SPACE | command::BUS_MASTER)?;

    // The DMA pool.
    let pool = dma::pool().ok_or(Errno::ENOMEM)?;
    println!("mmio: DMA pool: {} pages at va {:#x}, machine {:#x}", pool.pages, pool.va, pool.mfn * 4096);
    let buf = dma::alloc(8192, 4096)?;
    println!("mmio: DMA buffer: 8192 bytes at machine {:#x}", buf.machine_addr());
    c.holds(
        "mmio",
        format_args!("the buffer's machine address matches the frame list"),
        dma::machine_of(buf.va()) == Some(buf.machine_addr())
            && dma::machine_of(buf.va() + 4096) == Some(buf.machine_addr() + 4096),
    );
    buf.write(0, b"dma");
    let mut back = [0u8; 3];
    buf.read(0, &mut back);
    c.holds("mmio", format_args!("the buffer reads back"), &back == b"dma");
    Ok(())
}
