//! PCI configuration space for the privileged domain: which functions dom0
//! is given, the filter every configuration write passes, and the record of
//! each given function's BARs.
//!
//! # Who owns what
//! - The hardware access is the machine's ([`ConfigSpace`], behind
//!   [`crate::hv::Machine::pci_config`]): in the ring-0 image, mechanism #1
//!   (an address written to port `0xCF8`, then data through `0xCFC..=0xCFF`).
//!   The address latch at `0xCF8` is the hypervisor's alone: its driver
//!   (`arch::pci`) is the only code that writes it, it holds its latch lock
//!   from the address write to the data access, guests run with IOPL 0 and
//!   no I/O bitmap, and the only ports dom0 reaches are those of its given
//!   functions' I/O BARs, emulated on #GP ([`crate::ioport`],
//!   [`Pci::io_owner`]), which never include `0xCF8..=0xCFF` (rule 5 and
//!   [`IO_FORBIDDEN`]).
//! - The policy and the record ([`Pci`]) are this module's, owned by the
//!   hypervisor state and reached only through the `physdev_op` hypercall
//!   handlers, which need the caller's [`Privilege`]: without that value no
//!   code can call [`Pci::read`] or [`Pci::write`].
//!
//! # Where validation happens
//! [`ConfigAddr::decode`] is the one function that turns a guest's
//! [`PciConfig`] into an address (rule 1); [`Pci::write`] applies rules 2-6
//! to every write, reading the device's current registers from the hardware
//! (not from a cache) where a rule depends on them. A refused write reaches
//! no device. Everything dom0 passes is treated as hostile, privileged or
//! not: dom0 is trusted with its devices (and, without an IOMMU, with their
//! DMA), not with the hypervisor or other domains' memory.
//!
//! # Which functions dom0 is given
//! Every function found at boot (bus 0 and the buses behind PCI-to-PCI
//! bridges) with a type 0 header, except the host bridge (class 06/00) and
//! the ISA bridge (06/01, the LPC: it routes legacy I/O, ACPI and firmware
//! ranges). PCI-to-PCI bridges (type 1 headers) are not given in this slice:
//! their bus numbers and forwarding windows would let dom0 reroute
//! configuration cycles and MMIO. dom0 may *read* every function; only
//! given ones may be written. On q35 without extra devices, dom0 is given
//! the SATA (00:1f.2) and SMBus (00:1f.3) controllers.
//!
//! # Write rules
//! Policy refusals are `EPERM`; malformed requests `EINVAL`.
//! 1. **Decode.** Segment 0; device below 32, function below 8; size 1, 2
//!    or 4 with the register aligned to it (so a write never crosses a
//!    dword); register below 0x100 (mechanism #1 reaches no extended space);
//!    a written value fits in its size. Else `EINVAL`.
//! 2. **Given functions only.** A write to a function not given to dom0, or
//!    not found at boot, is `EPERM`.
//! 3. **Header registers.** In the header (0x00..0x40) only these bytes
//!    may be written: the command register (rule 4), the status register
//!    (its bits are write-one-to-clear), the cache line size and latency
//!    timer (0x0C, 0x0D), the BARs (rule 5) and the interrupt line (0x3C).
//!    Every other header byte (ids, class, header type, BIST, subsystem ids,
//!    the expansion ROM BAR, the capability pointer, interrupt pin,
//!    min/max) is `EPERM`, and so is a write that covers one of them along
//!    with allowed bytes.
//! 4. **Command register.** dom0 may change I/O space, memory space, bus
//!    master (DMA: dom0 is DMA-trusted, there is no IOMMU), parity error
//!    response, SERR# and INTx disable. A write that changes any other bit
//!    (special cycles, MWI, VGA snoop, fast back-to-back) is `EPERM`;
//!    writing those bits back unchanged is fine, so read-modify-write
//!    works. A write that leaves memory (I/O) decoding on is refused unless
//!    every memory (I/O) BAR of the function sits where rule 5 allows.
//! 5. **BARs.** Written whole (size 4, else `EINVAL`). Invariant: while a
//!    function decodes memory, none of its memory BARs overlaps RAM or the
//!    hypervisor (every frame the frame table covers: `[0, ram_end)`), the
//!    IOAPIC (`0xFEC00000..0xFED00000`) or the local APIC and MSI window
//!    (`0xFEE00000..0xFEF00000`); while it decodes I/O, its I/O BARs lie
//!    below `0x10000` and off the hypervisor's ports ([`IO_FORBIDDEN`]: the
//!    legacy chipset ports `0x00..0x100` (PIC, PIT, RTC, the debug exit),
//!    COM1 and `0xCF8..0xD00`; firmware puts q35's SMBus at `0x700`, so a
//!    plain "above `0x1000`" would not do). So with decoding on, a BAR
//!    write is checked at the place it would put the BAR (the other half of
//!    a 64-bit BAR taken as the device holds it now), and `EPERM` if that
//!    breaks the invariant; with decoding off any value is accepted, and
//!    rule 4 checks the placement when decoding is turned on. Sizing (write
//!    all ones, read back, restore) is a write like the others: all ones
//!    puts a 32-bit BAR at `4 GiB - size`, allowed for BARs up to 16 MiB
//!    with decoding on; larger ones must be sized with decoding off, as
//!    Linux does. A BAR the boot scan found unimplemented reads as zero
//!    whatever is written, and writes to it pass (drivers probe all six).
//! 6. **MSI and MSI-X.** A write overlapping an MSI capability (10 to 24
//!    bytes, by its control register) or an MSI-X capability (12 bytes),
//!    found by walking the capability list live on every write into
//!    0x40..0x100, is `EPERM`: interrupts reach dom0 only through the
//!    hypervisor (`PHYSDEVOP_map_pirq`, later). A list that loops (more
//!    than 48 entries) or points into the header is malformed, and every
//!    write into 0x40..0x100 of that function is then `EPERM`. Other
//!    device-specific registers may be written.
//!
//! 7. **Mapped BARs stay put.** While dom0 maps a frame of a memory BAR
//!    (its mapping count is above 0, see below), a write to that BAR's
//!    registers (either half of a 64-bit BAR, sizing included) is `EBUSY`,
//!    and so is a command write that turns the function's memory decoding
//!    off. So a device-memory mapping always names the device it was made
//!    for: it can never come to name RAM, another device, or nothing.
//!    Unmap first, then move or disable (sizes are in the boot record).
//!
//! # The BAR record
//! The boot scan sizes every BAR of every given function (memory and I/O
//! decoding off meanwhile, then restored) and records kind, size and base;
//! each allowed write to a BAR or the command register updates the record
//! from what the device then holds. It also records where the function's
//! MSI-X table and pending-bit array are (BAR and byte range; those
//! registers are read-only in hardware and rule 6 keeps the capability
//! unwritten). [`Pci::is_device_mmio`] answers from it which frames dom0
//! may map as device memory.
//!
//! # Device memory (dom0's MMIO mappings)
//! dom0 maps device memory with ordinary page-table updates whose level-1
//! entry names a machine frame beyond the frame table; the page-table
//! validator ([`crate::mm`], rule 9) asks `Pci::map_mmio` when such an
//! entry is installed and calls `Pci::unmap_mmio` when it goes (the
//! entry overwritten, or its table unpinned). Both go through
//! [`Dom0Mmio`], which only the holder of the [`Privilege`] can make.
//! - A frame may be mapped only if [`Pci::mmio_owner`] names its function:
//!   wholly inside a recorded memory BAR of a function given to dom0 that
//!   decodes memory, and overlapping no RAM, hypervisor memory, IOAPIC or
//!   local APIC. Else `EPERM`.
//! - A frame overlapping the function's MSI-X table or pending-bit array
//!   may be mapped read-only only (a writable mapping is `EPERM`): writing
//!   the table would let dom0 aim interrupts at any vector of any CPU.
//!   Reading it is harmless.
//! - Each memory BAR counts the entries that map its frames (`u32`; a
//!   frame's entries are bounded by dom0's level-1 entries, far below
//!   2^32, and an overflow is `EBUSY` anyway). Rule 7 holds the BAR still
//!   while the count is above 0.
//! - The frames are the device's: they are no frame-table frames, so they
//!   have no owner, type or reference count there; they can never become a
//!   page table (every table operation needs an owned frame), and the
//!   guest-memory accessor refuses them (hypercall buffers must be RAM).
//! - A dead dom0's counts are not given back (its tables are freed with its
//!   frames): its BARs then stay where they are, and no domain can write
//!   PCI configuration again (there is one privileged domain, never
//!   rebuilt).
//!
//! # Bounded work
//! A write costs at most 48 capability steps of 3 reads each plus a dozen
//! register reads; the boot scan reads every device slot of every bus it
//! finds (at most 256 buses, each visited once).

#[cfg(test)]
mod tests;

use crate::domain::Privilege;
use crate::mm::frames::Mfn;
use core::fmt;
use pvguest_abi::pci::{bar, cap, class, command, header, reg, status, BARS_TYPE0};
use pvguest_abi::physdev::PciConfig;
use pvguest_abi::Errno;

/// Most functions the record holds (later ones are neither given nor
/// recorded, and the boot log says how many).
pub const MAX_FUNCTIONS: usize = 64;
/// Most capabilities one walk follows before it calls the list malformed
/// (a list without loops has at most 48 in 0x40..0x100).
pub const MAX_CAPS: usize = 48;

/// A function's address: bus, device (below 32) and function (below 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    bus: u8,
    dev: u8,
    func: u8,
}

impl Bdf {
    /// The function `bus:dev.func`, if `dev` and `func` are in range.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Option<Bdf> {
        if dev < 32 && func < 8 {
            Some(Bdf { bus, dev, func })
        } else {
            None
        }
    }
    /// Bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }
    /// Device number.
    pub const fn dev(self) -> u8 {
        self.dev
    }
    /// Function number.
    pub const fn func(self) -> u8 {
        self.func
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// A validated configuration access: one register of one function, 1, 2
/// or 4 bytes, aligned, below 0x100 (rule 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddr {
    bdf: Bdf,
    reg: u16,
    size: u8,
}

impl ConfigAddr {
    /// The access of `size` bytes at `reg` of `bdf`, if valid.
    pub const fn new(bdf: Bdf, reg: u16, size: u8) -> Option<ConfigAddr> {
        if matches!(size, 1 | 2 | 4) && reg < reg::CONFIG_SPACE_SIZE && reg.is_multiple_of(size as u16) {
            Some(ConfigAddr { bdf, reg, size })
        } else {
            None
        }
    }

    /// Rule 1: the one place a guest's [`PciConfig`] becomes an address
    /// (`EINVAL` for anything out of range, misaligned or of a bad size).
    pub fn decode(raw: &PciConfig) -> Result<ConfigAddr, Errno> {
        if raw.seg != 0 {
            return Err(Errno::EINVAL);
        }
        let bdf = Bdf::new(raw.bus, raw.dev, raw.func).ok_or(Errno::EINVAL)?;
        ConfigAddr::new(bdf, raw.reg, raw.size).ok_or(Errno::EINVAL)
    }

    /// Rule 1 for a write: the address and the value, which must fit in
    /// the access's size.
    pub fn decode_write(raw: &PciConfig) -> Result<(ConfigAddr, u32), Errno> {
        let at = ConfigAddr::decode(raw)?;
        if raw.value & !at.mask() != 0 {
            return Err(Errno::EINVAL);
        }
        Ok((at, raw.value))
    }

    /// The function.
    pub const fn bdf(self) -> Bdf {
        self.bdf
    }
    /// The register offset.
    pub const fn reg(self) -> u16 {
        self.reg
    }
    /// The access size in bytes.
    pub const fn size(self) -> u8 {
        self.size
    }
    /// All ones in the access's bytes.
    pub const fn mask(self) -> u32 {
        u32::MAX >> (32 - 8 * self.size as u32)
    }
    /// The value mechanism #1 writes to port `0xCF8` for this access: enable
    /// bit, bus, device, function and the register's dword.
    pub const fn mech1_address(self) -> u32 {
        0x8000_0000
            | (self.bdf.bus as u32) << 16
            | (self.bdf.dev as u32) << 11
            | (self.bdf.func as u32) << 8
            | (self.reg as u32 & 0xfc)
    }
    /// The byte of the data window (`0xCFC` plus this) the access uses.
    pub const fn data_offset(self) -> u16 {
        self.reg & 3
    }
    /// An access the hypervisor makes itself (offsets from the ABI).
    fn at(bdf: Bdf, reg: u16, size: u8) -> ConfigAddr {
        let a = ConfigAddr::new(bdf, reg, size);
        debug_assert!(a.is_some(), "hypervisor config access {bdf} {reg:#x}/{size}");
        a.unwrap_or(ConfigAddr { bdf, reg: 0, size: 1 })
    }
}

/// The machine's configuration space (mechanism #1 in the ring-0 image, a
/// fake bus in host tests).
pub trait ConfigSpace {
    /// Reads `at.size()` bytes at `at`, in the low bytes of the result (all
    /// ones from a function that does not exist).
    fn read(&mut self, at: ConfigAddr) -> u32;
    /// Writes the low `at.size()` bytes of `value` at `at`.
    fn write(&mut self, at: ConfigAddr, value: u32);
}

/// A machine without PCI: every read is all ones, writes go nowhere.
pub struct Absent;

impl ConfigSpace for Absent {
    fn read(&mut self, at: ConfigAddr) -> u32 {
        at.mask()
    }
    fn write(&mut self, _: ConfigAddr, _: u32) {}
}

fn read8<C: ConfigSpace>(c: &mut C, bdf: Bdf, r: u16) -> u8 {
    c.read(ConfigAddr::at(bdf, r, 1)) as u8
}
fn read16<C: ConfigSpace>(c: &mut C, bdf: Bdf, r: u16) -> u16 {
    c.read(ConfigAddr::at(bdf, r, 2)) as u16
}
fn read32<C: ConfigSpace>(c: &mut C, bdf: Bdf, r: u16) -> u32 {
    c.read(ConfigAddr::at(bdf, r, 4))
}
fn write16<C: ConfigSpace>(c: &mut C, bdf: Bdf, r: u16, v: u16) {
    c.write(ConfigAddr::at(bdf, r, 2), u32::from(v));
}
fn write32<C: ConfigSpace>(c: &mut C, bdf: Bdf, r: u16, v: u32) {
    c.write(ConfigAddr::at(bdf, r, 4), v);
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Not implemented (reads as zero).
    Unused,
    /// I/O space.
    Io,
    /// 32-bit memory.
    Mem32,
    /// The low half of a 64-bit memory BAR.
    Mem64,
    /// The high half of the 64-bit memory BAR before it.
    Mem64High,
}

/// One BAR as recorded: kind, size (a power of two) and where the device
/// holds it now. A [`BarKind::Mem64High`] repeats its pair's size and base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// Bytes it decodes (0 if unused).
    pub size: u64,
    /// Its address (memory) or port (I/O).
    pub base: u64,
}

impl Bar {
    const UNUSED: Bar = Bar { kind: BarKind::Unused, size: 0, base: 0 };

    /// Where the registers `lo` and `hi` (the high half, for a 64-bit BAR)
    /// put this BAR.
    fn placement(&self, lo: u32, hi: u32) -> u64 {
        let align = !(self.size.max(1) - 1);
        match self.kind {
            BarKind::Unused => 0,
            BarKind::Io => u64::from(lo & bar::IO_ADDRESS_MASK & 0xffff) & align,
            BarKind::Mem32 => u64::from(lo & bar::MEM_ADDRESS_MASK) & align,
            BarKind::Mem64 | BarKind::Mem64High => {
                (u64::from(hi) << 32 | u64::from(lo & bar::MEM_ADDRESS_MASK)) & align
            }
        }
    }

    fn is_memory(&self) -> bool {
        matches!(self.kind, BarKind::Mem32 | BarKind::Mem64)
    }
}

/// One function found at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class, subclass and programming interface.
    pub class: [u8; 3],
    /// Header layout ([`header::TYPE_NORMAL`], [`header::TYPE_BRIDGE`]).
    pub layout: u8,
    /// Whether dom0 is given it (see the module docs).
    pub given: bool,
    /// Its BARs (recorded for given functions only; all unused otherwise).
    pub bars: [Bar; BARS_TYPE0],
    /// Its command register as last seen.
    pub command: u16,
    /// Its interrupt pin (0: none, 1-4: INTA#-INTD#), read at boot: dom0
    /// cannot write it (rule 3).
    pub pin: u8,
    /// Where its MSI-X table and pending-bit array are, if it has MSI-X.
    pub msix: Option<Msix>,
    /// Per BAR (by its first register): level-1 entries that map one of its
    /// frames as device memory (rule 7).
    pub mapped: [u32; BARS_TYPE0],
}

/// The q35 slots whose INTx the chipset routes by its own configuration
/// registers (D25IR-D31IR: the LPC, SATA, SMBus, USB, HD audio): not
/// the rule of [`intx_gsi`].
pub const Q35_CHIPSET_SLOTS: core::ops::RangeInclusive<u8> = 0x19..=0x1f;

/// The GSI that q35 routes INTx pin `pin` (1-4) of function `bdf` to:
/// pin `p` of root-bus slot `s` goes to PIRQ E-H, that is GSI
/// `20 + (s + p - 1) % 4` (measured on QEMU 7.2: virtio-blk at 00:02.0,
/// pin A, is GSI 22; virtio-net at 00:03.0 is GSI 23). `None` for no pin,
/// a function behind a bridge (its pin is swizzled through the bridge:
/// not routed in this slice) and the chipset slots
/// ([`Q35_CHIPSET_SLOTS`]).
pub fn intx_gsi(bdf: Bdf, pin: u8) -> Option<u32> {
    debug_assert!(*Q35_CHIPSET_SLOTS.start() == 0x19 && *Q35_CHIPSET_SLOTS.end() == 0x1f);
    pvguest_abi::physdev::q35_intx_gsi(bdf.bus(), bdf.dev(), pin)
}

impl Function {
    /// The GSI its INTx pin is routed to ([`intx_gsi`]).
    pub fn gsi(&self) -> Option<u32> {
        intx_gsi(self.bdf, self.pin)
    }
}

/// A byte range inside one of a function's BARs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRange {
    /// The BAR (its first register, as MSI-X's BIR counts).
    pub bar: u8,
    /// Offset of the first byte in the BAR.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

impl BarRange {
    /// Whether the frame at `first` of BAR `bar` based at `base` overlaps it.
    fn overlaps(&self, bar: usize, base: u64, first: u64) -> bool {
        let start = base.saturating_add(self.offset);
        usize::from(self.bar) == bar && first < start.saturating_add(self.len) && first.saturating_add(4096) > start
    }
}

/// An MSI-X capability's structures, as the boot scan found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msix {
    /// The vector table.
    pub table: BarRange,
    /// The pending-bit array.
    pub pba: BarRange,
}

/// A device-memory frame as the record places it: function and BAR, and
/// whether it holds MSI-X structures (read-only mappings only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioFrame {
    /// The function.
    pub bdf: Bdf,
    /// Index of the function in the record.
    function: usize,
    /// The BAR (its first register).
    pub bar: usize,
    /// Whether the frame overlaps the MSI-X table or pending-bit array.
    pub msix: bool,
}

/// dom0's right to map device memory: the [`crate::mm`] validator calls
/// these through [`crate::mm::DeviceMemory`]. Made only from a
/// [`Privilege`].
pub struct Dom0Mmio<'a> {
    pci: &'a mut Pci,
}

impl<'a> Dom0Mmio<'a> {
    /// The right of the holder of `privilege` over `pci`'s device memory.
    pub fn new(_privilege: Privilege, pci: &'a mut Pci) -> Dom0Mmio<'a> {
        Dom0Mmio { pci }
    }
}

impl crate::mm::DeviceMemory for Dom0Mmio<'_> {
    fn get(&mut self, mfn: Mfn, writable: bool) -> Result<(), Errno> {
        self.pci.map_mmio(mfn, writable)
    }
    fn put(&mut self, mfn: Mfn) {
        self.pci.unmap_mmio(mfn);
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [c, s, p] = self.class;
        write!(f, "{} {:04x}:{:04x} class {c:02x}/{s:02x}/{p:02x}", self.bdf, self.vendor, self.device)?;
        if !self.given {
            return f.write_str(": not given");
        }
        f.write_str(": dom0's")?;
        for (i, b) in self.bars.iter().enumerate() {
            match b.kind {
                BarKind::Io => write!(f, ", BAR{i} io {:#x}+{:#x}", b.base, b.size)?,
                BarKind::Mem32 | BarKind::Mem64 => write!(f, ", BAR{i} mem {:#x}+{:#x}", b.base, b.size)?,
                BarKind::Unused | BarKind::Mem64High => {}
            }
        }
        if (1..=4).contains(&self.pin) {
            let pin = char::from(b'A' + self.pin - 1);
            match self.gsi() {
                Some(g) => write!(f, ", INTx {pin} -> GSI {g}")?,
                None => write!(f, ", INTx {pin} (routed by the chipset: not mappable)")?,
            }
        }
        Ok(())
    }
}

/// Whether dom0 is given a function of this class and header layout.
pub fn given_to_dom0(class_code: u8, subclass: u8, layout: u8) -> bool {
    let chipset = class_code == class::BRIDGE && matches!(subclass, class::BRIDGE_HOST | class::BRIDGE_ISA);
    layout == header::TYPE_NORMAL && !chipset
}

/// A physical range no device may decode while dom0 drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub start: u64,
    /// First address past it.
    pub end: u64,
    /// What is there.
    pub what: &'static str,
}

/// The IOAPIC's range (`0xFEC00000`, 1 MiB reserved as chipsets do).
pub const IOAPIC: Range = Range { start: 0xfec0_0000, end: 0xfed0_0000, what: "the IOAPIC" };
/// The local APIC and the MSI address window.
pub const LAPIC: Range = Range { start: 0xfee0_0000, end: 0xfef0_0000, what: "the local APIC" };
/// Ports no I/O BAR may decode while its function decodes I/O (rule 5):
/// the hypervisor's.
pub const IO_FORBIDDEN: [Range; 3] = [
    Range { start: 0, end: 0x100, what: "the legacy chipset ports" },
    Range { start: 0x3f8, end: 0x400, what: "COM1" },
    Range { start: 0xcf8, end: 0xd00, what: "PCI configuration" },
];
/// Ports past the last one x86 has.
pub const IO_END: u64 = 0x1_0000;

/// The memory no BAR may overlap while its function decodes memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forbidden {
    ranges: [Range; 3],
}

impl Forbidden {
    /// RAM and the hypervisor below `ram_end` (every frame the frame table
    /// covers, reserved ones included: low memory, the image, heap and
    /// tables, the boot modules), the IOAPIC and the local APIC.
    pub const fn new(ram_end: u64) -> Forbidden {
        Forbidden { ranges: [Range { start: 0, end: ram_end, what: "RAM or the hypervisor" }, IOAPIC, LAPIC] }
    }

    /// What `[base, base + size)` overlaps, if anything (a range that wraps
    /// past the top of the address space overlaps everything).
    pub fn hit(&self, base: u64, size: u64) -> Option<&'static str> {
        let Some(last) = base.checked_add(size.max(1) - 1) else {
            return Some("the top of the address space");
        };
        self.ranges.iter().find(|r| base < r.end && last >= r.start).map(|r| r.what)
    }
}

/// The PCI state: the functions found at boot, with their policy and BAR
/// record.
pub struct Pci {
    functions: heapless::Vec<Function, MAX_FUNCTIONS>,
    forbidden: Forbidden,
    /// Functions found past [`MAX_FUNCTIONS`].
    pub unrecorded: usize,
}

impl Pci {
    /// No functions (before the boot scan): every write is refused.
    pub const fn empty() -> Pci {
        Pci { functions: heapless::Vec::new(), forbidden: Forbidden::new(u64::MAX), unrecorded: 0 }
    }

    /// Scans bus 0 and every bus behind a bridge found, records each
    /// function, and sizes the BARs of those dom0 is given.
    pub fn scan<C: ConfigSpace>(cfg: &mut C, forbidden: Forbidden) -> Pci {
        let mut pci = Pci { forbidden, ..Pci::empty() };
        let mut visited = [false; 256];
        let mut pending: heapless::Vec<u8, 256> = heapless::Vec::new();
        let _ = pending.push(0);
        visited[0] = true;
        while let Some(b) = pending.pop() {
            for dev in 0..32 {
                let Some(f0) = Bdf::new(b, dev, 0) else { continue };
                if read16(cfg, f0, reg::VENDOR_ID) == 0xffff {
                    continue;
                }
                let funcs = if read8(cfg, f0, reg::HEADER_TYPE) & header::MULTI_FUNCTION != 0 { 8 } else { 1 };
                for func in 0..funcs {
                    let Some(bdf) = Bdf::new(b, dev, func) else { continue };
                    let Some(f) = pci.probe(cfg, bdf) else { continue };
                    if f.layout == header::TYPE_BRIDGE {
                        let secondary = read8(cfg, bdf, reg::SECONDARY_BUS);
                        if !visited[usize::from(secondary)] {
                            visited[usize::from(secondary)] = true;
                            let _ = pending.push(secondary);
                        }
                    }
                    if pci.functions.push(f).is_err() {
                        pci.unrecorded += 1;
                    }
                }
            }
        }
        pci
    }

    /// Reads a function's identity and, if dom0 is given it, sizes its BARs.
    fn probe<C: ConfigSpace>(&self, cfg: &mut C, bdf: Bdf) -> Option<Function> {
        let vendor = read16(cfg, bdf, reg::VENDOR_ID);
        if vendor == 0xffff {
            return None;
        }
        let class_code = [read8(cfg, bdf, reg::CLASS), read8(cfg, bdf, reg::SUBCLASS), read8(cfg, bdf, reg::PROG_IF)];
        let layout = read8(cfg, bdf, reg::HEADER_TYPE) & header::LAYOUT_MASK;
        let given = given_to_dom0(class_code[0], class_code[1], layout);
        let bars = if given { size_bars(cfg, bdf) } else { [Bar::UNUSED; BARS_TYPE0] };
        let msix = if given { find_msix(cfg, bdf) } else { None };
        Some(Function {
            bdf,
            vendor,
            device: read16(cfg, bdf, reg::DEVICE_ID),
            class: class_code,
            layout,
            given,
            bars,
            command: read16(cfg, bdf, reg::COMMAND),
            pin: if layout == header::TYPE_NORMAL { read8(cfg, bdf, reg::INTERRUPT_PIN) } else { 0 },
            msix,
            mapped: [0; BARS_TYPE0],
        })
    }

    /// The functions found at boot.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// The GSIs dom0 may map as pirqs (bit `g`: GSI `g`): those the INTx
    /// pins of the functions it is given are routed to ([`intx_gsi`]; see
    /// [`crate::irq`] invariant 2).
    pub fn dom0_gsis(&self) -> u32 {
        self.functions.iter().filter(|f| f.given).filter_map(Function::gsi).fold(0, |m, g| m | 1 << g)
    }

    /// The forbidden memory ranges.
    pub fn forbidden(&self) -> &Forbidden {
        &self.forbidden
    }

    /// A configuration read for dom0 (holder of `privilege`): every
    /// function may be read; the value is what the hardware answers.
    pub fn read<C: ConfigSpace>(&self, _privilege: Privilege, cfg: &mut C, at: ConfigAddr) -> u32 {
        cfg.read(at) & at.mask()
    }

    /// A configuration write for dom0 (holder of `privilege`), under rules
    /// 2-6 (`at` and `value` come from [`ConfigAddr::decode_write`], rule
    /// 1). A refused write reaches no device.
    pub fn write<C: ConfigSpace>(
        &mut self,
        _privilege: Privilege,
        cfg: &mut C,
        at: ConfigAddr,
        value: u32,
    ) -> Result<(), Errno> {
        // Rule 2.
        let i = self.functions.iter().position(|f| f.bdf == at.bdf() && f.given).ok_or(Errno::EPERM)?;
        let f = self.functions[i];
        let (start, end) = (at.reg(), at.reg() + u16::from(at.size()));
        check_mapped(cfg, &f, at, value)?;
        if start >= reg::DEVICE_SPECIFIC {
            // Rule 6.
            if touches_msi(cfg, f.bdf, start, end) != Ok(false) {
                return Err(Errno::EPERM);
            }
        } else {
            self.check_header(cfg, &f, at, value)?;
        }
        cfg.write(at, value);
        self.refresh(cfg, i, start, end);
        Ok(())
    }

    /// Rules 3-5 for a write inside the header.
    fn check_header<C: ConfigSpace>(&self, cfg: &mut C, f: &Function, at: ConfigAddr, value: u32) -> Result<(), Errno> {
        let (start, end) = (at.reg(), at.reg() + u16::from(at.size()));
        let inside = |lo: u16, hi: u16| start >= lo && end <= hi;
        let bars_end = reg::BAR0 + 4 * BARS_TYPE0 as u16;
        if inside(reg::COMMAND, reg::STATUS + 2) {
            if start < reg::STATUS {
                // Bytes of the command register the write replaces.
                let cur = read16(cfg, f.bdf, reg::COMMAND);
                let new = merge16(cur, reg::COMMAND, start, at.size(), value);
                self.check_command(cfg, f, cur, new)?;
            }
            Ok(())
        } else if inside(reg::CACHE_LINE_SIZE, reg::LATENCY_TIMER + 1)
            || inside(reg::INTERRUPT_LINE, reg::INTERRUPT_LINE + 1)
        {
            Ok(())
        } else if inside(reg::BAR0, bars_end) {
            if at.size() != 4 {
                return Err(Errno::EINVAL);
            }
            self.check_bar(cfg, f, usize::from((start - reg::BAR0) / 4), value)
        } else {
            Err(Errno::EPERM)
        }
    }

    /// Rule 4: the command register going from `cur` to `new`.
    fn check_command<C: ConfigSpace>(&self, cfg: &mut C, f: &Function, cur: u16, new: u16) -> Result<(), Errno> {
        if (cur ^ new) & !COMMAND_WRITABLE != 0 {
            return Err(Errno::EPERM);
        }
        for (i, b) in f.bars.iter().enumerate() {
            let on = match b.kind {
                BarKind::Io => new & command::IO_SPACE != 0,
                BarKind::Mem32 | BarKind::Mem64 => new & command::MEMORY_SPACE != 0,
                BarKind::Unused | BarKind::Mem64High => false,
            };
            if on {
                let (lo, hi) = bar_registers(cfg, f, i);
                self.placement_allowed(b, b.placement(lo, hi))?;
            }
        }
        Ok(())
    }

    /// Rule 5: BAR `i` of `f` written with `value`.
    fn check_bar<C: ConfigSpace>(&self, cfg: &mut C, f: &Function, i: usize, value: u32) -> Result<(), Errno> {
        let b = f.bars[i];
        let cmd = read16(cfg, f.bdf, reg::COMMAND);
        let decoding = match b.kind {
            BarKind::Unused => false,
            BarKind::Io => cmd & command::IO_SPACE != 0,
            BarKind::Mem32 | BarKind::Mem64 | BarKind::Mem64High => cmd & command::MEMORY_SPACE != 0,
        };
        if !decoding {
            return Ok(());
        }
        let (lo, hi) = match b.kind {
            BarKind::Mem64 => (value, read32(cfg, f.bdf, bar_reg(i + 1))),
            BarKind::Mem64High => (read32(cfg, f.bdf, bar_reg(i - 1)), value),
            _ => (value, 0),
        };
        self.placement_allowed(&b, b.placement(lo, hi))
    }

    /// Whether BAR `b` may decode at `base` (rule 5's invariant).
    fn placement_allowed(&self, b: &Bar, base: u64) -> Result<(), Errno> {
        let ok = match b.kind {
            BarKind::Io => {
                let end = base.saturating_add(b.size);
                end <= IO_END && IO_FORBIDDEN.iter().all(|r| end <= r.start || base >= r.end)
            }
            BarKind::Mem32 | BarKind::Mem64 | BarKind::Mem64High => self.forbidden.hit(base, b.size).is_none(),
            BarKind::Unused => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }

    /// Brings the record of function `i` up to date after a write to
    /// `[start, end)`: the command register and the BARs, as the device now
    /// holds them.
    fn refresh<C: ConfigSpace>(&mut self, cfg: &mut C, i: usize, start: u16, end: u16) {
        let f = &mut self.functions[i];
        if start < reg::STATUS && end > reg::COMMAND {
            f.command = read16(cfg, f.bdf, reg::COMMAND);
        }
        if (reg::BAR0..reg::BAR0 + 4 * BARS_TYPE0 as u16).contains(&start) {
            let k = usize::from((start - reg::BAR0) / 4);
            let first = if f.bars[k].kind == BarKind::Mem64High { k - 1 } else { k };
            let (lo, hi) = bar_registers(cfg, f, first);
            let base = f.bars[first].placement(lo, hi);
            f.bars[first].base = base;
            if f.bars[first].kind == BarKind::Mem64 {
                f.bars[first + 1].base = base;
            }
        }
    }

    /// The function whose recorded memory BAR holds all of frame `mfn`,
    /// if dom0 is given it, it decodes memory, and the frame overlaps
    /// nothing forbidden (RAM, the hypervisor, the APICs): the frames dom0
    /// may map as device memory. A BAR smaller than a page gives no frame.
    pub fn mmio_owner(&self, mfn: Mfn) -> Option<Bdf> {
        let first = mfn.checked_mul(4096)?;
        let last = first.checked_add(4095)?;
        if self.forbidden.hit(first, 4096).is_some() {
            return None;
        }
        self.functions
            .iter()
            .filter(|f| f.given && f.command & command::MEMORY_SPACE != 0)
            .find(|f| {
                f.bars.iter().any(|b| {
                    b.is_memory()
                        && b.size >= 4096
                        && b.base <= first
                        && b.base.checked_add(b.size - 1).is_some_and(|e| last <= e)
                })
            })
            .map(|f| f.bdf)
    }

    /// The given function whose I/O BAR holds every port of
    /// `[port, port + size)`, if its I/O decoding is on and no port of the
    /// range is the hypervisor's ([`IO_FORBIDDEN`], checked again here
    /// whatever the record says): where dom0's `in`/`out` may go
    /// ([`crate::ioport`]). Only the holder of the [`Privilege`] asks.
    pub fn io_owner(&self, _privilege: Privilege, port: u16, size: u8) -> Option<Bdf> {
        let first = u64::from(port);
        let end = first + u64::from(size.max(1));
        if end > IO_END || IO_FORBIDDEN.iter().any(|r| first < r.end && r.start < end) {
            return None;
        }
        self.functions
            .iter()
            .filter(|f| f.given && f.command & command::IO_SPACE != 0)
            .find(|f| {
                f.bars.iter().any(|b| {
                    b.kind == BarKind::Io && b.size > 0 && b.base <= first && end <= b.base.saturating_add(b.size)
                })
            })
            .map(|f| f.bdf)
    }

    /// Whether dom0 may map frame `mfn` as device memory
    /// ([`Pci::mmio_owner`]).
    pub fn is_device_mmio(&self, mfn: Mfn) -> bool {
        self.mmio_owner(mfn).is_some()
    }

    /// Where the record places device-memory frame `mfn`: as
    /// [`Pci::mmio_owner`], with its BAR and whether it holds MSI-X
    /// structures.
    pub fn mmio_frame(&self, mfn: Mfn) -> Option<MmioFrame> {
        let bdf = self.mmio_owner(mfn)?;
        let first = mfn * 4096;
        let function = self.functions.iter().position(|f| f.bdf == bdf)?;
        let f = &self.functions[function];
        let bar = f
            .bars
            .iter()
            .position(|b| b.is_memory() && b.size >= 4096 && b.base <= first && first - b.base <= b.size - 4096)?;
        let base = f.bars[bar].base;
        let msix = f.msix.is_some_and(|m| m.table.overlaps(bar, base, first) || m.pba.overlaps(bar, base, first));
        Some(MmioFrame { bdf, function, bar, msix })
    }

    /// Takes a mapping of device-memory frame `mfn` for dom0 (see the
    /// module docs): `EPERM` unless [`Pci::mmio_frame`] places it, or if
    /// `writable` and it holds MSI-X structures; `EBUSY` if its BAR's count
    /// would overflow. Reached only through [`Dom0Mmio`].
    fn map_mmio(&mut self, mfn: Mfn, writable: bool) -> Result<(), Errno> {
        let at = self.mmio_frame(mfn).ok_or(Errno::EPERM)?;
        if writable && at.msix {
            return Err(Errno::EPERM);
        }
        let n = &mut self.functions[at.function].mapped[at.bar];
        *n = n.checked_add(1).ok_or(Errno::EBUSY)?;
        Ok(())
    }

    /// Gives back a mapping taken by [`Pci::map_mmio`]. The BAR cannot have
    /// moved or stopped decoding meanwhile (rule 7), so the frame is still
    /// placed the same way.
    fn unmap_mmio(&mut self, mfn: Mfn) {
        let Some(at) = self.mmio_frame(mfn) else {
            debug_assert!(false, "device-memory frame {mfn:#x} unmapped but not placed");
            return;
        };
        let n = &mut self.functions[at.function].mapped[at.bar];
        debug_assert!(*n > 0, "device-memory frame {mfn:#x} unmapped more often than mapped");
        *n = n.saturating_sub(1);
    }
}

/// Rule 7: a write to `at` of function `f` that would move a mapped BAR or
/// turn memory decoding off while a BAR is mapped is `EBUSY`.
fn check_mapped<C: ConfigSpace>(cfg: &mut C, f: &Function, at: ConfigAddr, value: u32) -> Result<(), Errno> {
    if f.mapped.iter().all(|&n| n == 0) {
        return Ok(());
    }
    let (start, end) = (at.reg(), at.reg() + u16::from(at.size()));
    if start < reg::STATUS && end > reg::COMMAND {
        let cur = read16(cfg, f.bdf, reg::COMMAND);
        let new = merge16(cur, reg::COMMAND, start, at.size(), value);
        if new & command::MEMORY_SPACE == 0 {
            return Err(Errno::EBUSY);
        }
    }
    for (i, b) in f.bars.iter().enumerate() {
        let first = if b.kind == BarKind::Mem64High { i - 1 } else { i };
        let r = bar_reg(i);
        if f.mapped[first] > 0 && start < r + 4 && end > r {
            return Err(Errno::EBUSY);
        }
    }
    Ok(())
}

/// The MSI-X structures of `bdf`, if it has the capability (a malformed
/// list gives none: rule 6 then locks the capability space anyway, and the
/// BARs' frames may be mapped; such a device's MSI-X, if any, is then
/// unknown, which is why the walk is the same one rule 6 trusts).
fn find_msix<C: ConfigSpace>(cfg: &mut C, bdf: Bdf) -> Option<Msix> {
    if read16(cfg, bdf, reg::STATUS) & status::CAPABILITIES_LIST == 0 {
        return None;
    }
    let mut ptr = u16::from(read8(cfg, bdf, reg::CAPABILITIES) & 0xfc);
    for _ in 0..MAX_CAPS {
        if ptr < reg::DEVICE_SPECIFIC {
            return None;
        }
        if read8(cfg, bdf, ptr + cap::ID) == cap::ID_MSIX {
            let entries = u32::from(read16(cfg, bdf, ptr + cap::msix::CONTROL) & cap::msix::CONTROL_TABLE_SIZE) + 1;
            let range = |r: u32, len: u32| BarRange {
                bar: (r & cap::msix::BIR_MASK) as u8,
                offset: u64::from(r & !cap::msix::BIR_MASK),
                len: u64::from(len),
            };
            let table = range(read32(cfg, bdf, ptr + cap::msix::TABLE), entries * cap::msix::ENTRY_SIZE);
            let pba = range(read32(cfg, bdf, ptr + cap::msix::PBA), entries.div_ceil(64) * 8);
            return Some(Msix { table, pba });
        }
        ptr = u16::from(read8(cfg, bdf, ptr + cap::NEXT) & 0xfc);
    }
    None
}

/// Command bits dom0 may change (rule 4).
pub const COMMAND_WRITABLE: u16 = command::IO_SPACE
    | command::MEMORY_SPACE
    | command::BUS_MASTER
    | command::PARITY_ERROR_RESPONSE
    | command::SERR
    | command::INTX_DISABLE;

const fn bar_reg(i: usize) -> u16 {
    reg::BAR0 + 4 * i as u16
}

/// The registers (low, high) of the BAR starting at `i` as the device
/// holds them (high is 0 unless the BAR is 64-bit).
fn bar_registers<C: ConfigSpace>(cfg: &mut C, f: &Function, i: usize) -> (u32, u32) {
    let lo = read32(cfg, f.bdf, bar_reg(i));
    let hi = if f.bars[i].kind == BarKind::Mem64 { read32(cfg, f.bdf, bar_reg(i + 1)) } else { 0 };
    (lo, hi)
}

/// The 16-bit register at `r` after a write of `size` bytes of `value` at
/// `start` (only the bytes the write covers change).
fn merge16(cur: u16, r: u16, start: u16, size: u8, value: u32) -> u16 {
    let mut out = cur;
    for k in 0..u16::from(size) {
        let at = start + k;
        if (r..r + 2).contains(&at) {
            let byte = (value >> (8 * k)) as u8;
            let shift = 8 * (at - r);
            out = (out & !(0xff << shift)) | (u16::from(byte) << shift);
        }
    }
    out
}

/// Sizes the BARs of a type 0 function (memory and I/O decoding off
/// meanwhile; the BARs and the command register are restored).
fn size_bars<C: ConfigSpace>(cfg: &mut C, bdf: Bdf) -> [Bar; BARS_TYPE0] {
    let mut bars = [Bar::UNUSED; BARS_TYPE0];
    let cmd = read16(cfg, bdf, reg::COMMAND);
    write16(cfg, bdf, reg::COMMAND, cmd & !(command::IO_SPACE | command::MEMORY_SPACE));
    let mut probe = |i: usize| {
        let orig = read32(cfg, bdf, bar_reg(i));
        write32(cfg, bdf, bar_reg(i), u32::MAX);
        let got = read32(cfg, bdf, bar_reg(i));
        write32(cfg, bdf, bar_reg(i), orig);
        (orig, got)
    };
    let mut i = 0;
    while i < BARS_TYPE0 {
        let (orig, got) = probe(i);
        if orig & bar::IO != 0 {
            let mask = got & bar::IO_ADDRESS_MASK & 0xffff;
            if mask != 0 {
                let size = u64::from((!mask & 0xffff) + 1);
                let b = Bar { kind: BarKind::Io, size, base: 0 };
                bars[i] = Bar { base: b.placement(orig, 0), ..b };
            }
        } else if orig & bar::MEM_TYPE_MASK == bar::MEM_TYPE_64 && i + 1 < BARS_TYPE0 {
            let (orig_hi, got_hi) = probe(i + 1);
            let mask = u64::from(got_hi) << 32 | u64::from(got & bar::MEM_ADDRESS_MASK);
            if mask != 0 {
                let b = Bar { kind: BarKind::Mem64, size: (!mask).wrapping_add(1), base: 0 };
                let base = b.placement(orig, orig_hi);
                bars[i] = Bar { base, ..b };
                bars[i + 1] = Bar { kind: BarKind::Mem64High, base, ..b };
            }
            i += 2;
            continue;
        } else {
            let mask = got & bar::MEM_ADDRESS_MASK;
            if mask != 0 {
                let b = Bar { kind: BarKind::Mem32, size: u64::from((!mask).wrapping_add(1)), base: 0 };
                bars[i] = Bar { base: b.placement(orig, 0), ..b };
            }
        }
        i += 1;
    }
    write16(cfg, bdf, reg::COMMAND, cmd);
    bars
}

/// Why a capability walk stopped short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedCaps;

/// Rule 6: whether `[start, end)` overlaps an MSI or MSI-X capability of
/// `bdf`, walking its list live.
fn touches_msi<C: ConfigSpace>(cfg: &mut C, bdf: Bdf, start: u16, end: u16) -> Result<bool, MalformedCaps> {
    if read16(cfg, bdf, reg::STATUS) & status::CAPABILITIES_LIST == 0 {
        return Ok(false);
    }
    let mut ptr = u16::from(read8(cfg, bdf, reg::CAPABILITIES) & 0xfc);
    for _ in 0..MAX_CAPS {
        if ptr == 0 {
            return Ok(false);
        }
        if ptr < reg::DEVICE_SPECIFIC {
            return Err(MalformedCaps);
        }
        let len = match read8(cfg, bdf, ptr + cap::ID) {
            cap::ID_MSI => msi_len(read16(cfg, bdf, ptr + cap::msi::CONTROL)),
            cap::ID_MSIX => cap::msix::LEN,
            _ => 0,
        };
        if len > 0 && start < ptr + len && end > ptr {
            return Ok(true);
        }
        ptr = u16::from(read8(cfg, bdf, ptr + cap::NEXT) & 0xfc);
    }
    Err(MalformedCaps)
}

/// Length of an MSI capability with message control `control`.
fn msi_len(control: u16) -> u16 {
    match (control & cap::msi::CONTROL_64BIT != 0, control & cap::msi::CONTROL_MASKING != 0) {
        (false, false) => cap::msi::LEN_32,
        (true, false) => cap::msi::LEN_64,
        (false, true) => cap::msi::LEN_32_MASKING,
        (true, true) => cap::msi::LEN_64_MASKING,
    }
}
