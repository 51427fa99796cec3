//! PCI configuration space, for the privileged domain (dom0).
//!
//! dom0 reaches configuration space only through the hypervisor
//! (`physdev_op` with [`physdev::PCI_CONFIG_READ`] /
//! [`physdev::PCI_CONFIG_WRITE`]): it may read every function, and write
//! the functions it was given, where the hypervisor refuses writes that
//! would redirect a device (a BAR onto RAM, the hypervisor or the APICs;
//! the MSI and MSI-X capabilities; identity and bridge registers) with
//! `EPERM`. Any other domain gets `EPERM` from every call. A bad address
//! (device 32 or more, function 8 or more, register 0x100 or more, or not
//! aligned to its size) is `EINVAL`.
//!
//! ```ignore
//! use pvguest_sdk::{pci, println};
//!
//! for f in pci::enumerate()? {
//!     println!("{} {:04x}:{:04x} class {:02x}/{:02x}", f.bdf, f.vendor, f.device, f.class, f.subclass);
//! }
//! // Turn on memory decoding and bus mastering of a device we were given.
//! let bdf = pci::Bdf::new(0, 0x1f, 2);
//! let cmd = pci::read16(bdf, pci::reg::COMMAND)?;
//! pci::write16(bdf, pci::reg::COMMAND, cmd | pci::command::MEMORY_SPACE | pci::command::BUS_MASTER)?;
//! // Size a BAR: write all ones, read back, restore.
//! let bar5 = pci::reg::BAR0 + 5 * 4;
//! let old = pci::read32(bdf, bar5)?;
//! pci::write32(bdf, bar5, u32::MAX)?;
//! let size = !(pci::read32(bdf, bar5)? & pci::bar::MEM_ADDRESS_MASK) + 1;
//! pci::write32(bdf, bar5, old)?;
//! ```

use core::fmt;
use pvguest_abi::hypercall::PHYSDEV_OP;
pub use pvguest_abi::pci::{bar, cap, class, command, header, reg, status};
use pvguest_abi::physdev::{self, PciConfig};
use pvguest_abi::Errno;

/// A function's address: bus, device (0-31) and function (0-7), in
/// segment 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0-31; the hypervisor refuses others with `EINVAL`).
    pub dev: u8,
    /// Function number (0-7).
    pub func: u8,
}

impl Bdf {
    /// `bus:dev.func`.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Bdf {
        Bdf { bus, dev, func }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Performs the `physdev_op` sub-command `cmd` on `arg` as given, and
/// returns it as the hypervisor left it (a read's `value` filled in). The
/// typed functions below are the normal way in; this one exists for tests
/// that pass malformed requests.
pub fn config(cmd: u64, arg: PciConfig) -> Result<PciConfig, Errno> {
    let mut a = arg;
    // SAFETY: `a` is a local that nothing else refers to during the call;
    // the hypervisor reads it and writes only its `value` field (a u32, so
    // any bytes are a valid value).
    let r = unsafe { crate::hypercall::raw(PHYSDEV_OP, [cmd, &mut a as *mut PciConfig as u64, 0, 0, 0]) };
    Errno::decode(r).map(|_| a)
}

fn at(bdf: Bdf, reg: u16, size: u8, value: u32) -> PciConfig {
    PciConfig { seg: 0, bus: bdf.bus, dev: bdf.dev, func: bdf.func, size, reg, value }
}

fn read(bdf: Bdf, reg: u16, size: u8) -> Result<u32, Errno> {
    config(physdev::PCI_CONFIG_READ, at(bdf, reg, size, 0)).map(|a| a.value)
}

fn write(bdf: Bdf, reg: u16, size: u8, value: u32) -> Result<(), Errno> {
    config(physdev::PCI_CONFIG_WRITE, at(bdf, reg, size, value)).map(|_| ())
}

/// Reads the byte at `reg` of `bdf`.
pub fn read8(bdf: Bdf, reg: u16) -> Result<u8, Errno> {
    read(bdf, reg, 1).map(|v| v as u8)
}
/// Reads the 16-bit register at `reg` (even) of `bdf`.
pub fn read16(bdf: Bdf, reg: u16) -> Result<u16, Errno> {
    read(bdf, reg, 2).map(|v| v as u16)
}
/// Reads the 32-bit register at `reg` (a multiple of 4) of `bdf`.
pub fn read32(bdf: Bdf, reg: u16) -> Result<u32, Errno> {
    read(bdf, reg, 4)
}
/// Writes the byte at `reg` of `bdf` (filtered by the hypervisor).
pub fn write8(bdf: Bdf, reg: u16, v: u8) -> Result<(), Errno> {
    write(bdf, reg, 1, u32::from(v))
}
/// Writes the 16-bit register at `reg` (even) of `bdf`.
pub fn write16(bdf: Bdf, reg: u16, v: u16) -> Result<(), Errno> {
    write(bdf, reg, 2, u32::from(v))
}
/// Writes the 32-bit register at `reg` (a multiple of 4) of `bdf`.
pub fn write32(bdf: Bdf, reg: u16, v: u32) -> Result<(), Errno> {
    write(bdf, reg, 4, v)
}

/// The base address of memory BAR `i` (0-5) of `bdf`: both halves of a
/// 64-bit BAR, the type bits masked off. (An I/O BAR's value is not an
/// address this answers.)
pub fn bar_base(bdf: Bdf, i: u16) -> Result<u64, Errno> {
    let lo = read32(bdf, reg::BAR0 + 4 * i)?;
    let hi = if lo & bar::MEM_TYPE_MASK == bar::MEM_TYPE_64 { read32(bdf, reg::BAR0 + 4 * (i + 1))? } else { 0 };
    Ok(u64::from(hi) << 32 | u64::from(lo & bar::MEM_ADDRESS_MASK))
}

/// One function found by [`enumerate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code.
    pub class: u8,
    /// Subclass.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Header type (bit 7: a multi-function device).
    pub header_type: u8,
}

impl Function {
    /// Whether it is a PCI-to-PCI bridge (its secondary bus is
    /// enumerated too).
    pub fn is_bridge(&self) -> bool {
        self.header_type & header::LAYOUT_MASK == header::TYPE_BRIDGE
    }

    /// A short name for its class, for logs.
    pub fn class_name(&self) -> &'static str {
        match (self.class, self.subclass) {
            (0x01, 0x01) => "IDE controller",
            (0x01, 0x06) => "SATA controller",
            (0x01, _) => "storage controller",
            (0x02, _) => "network controller",
            (0x03, _) => "display controller",
            (0x06, 0x00) => "host bridge",
            (0x06, 0x01) => "ISA bridge",
            (0x06, 0x04) => "PCI bridge",
            (0x06, _) => "bridge",
            (0x0c, 0x03) => "USB controller",
            (0x0c, 0x05) => "SMBus controller",
            _ => "device",
        }
    }
}

/// Reads the identity of `bdf` (`None` if no function is there).
pub fn function(bdf: Bdf) -> Result<Option<Function>, Errno> {
    let vendor = read16(bdf, reg::VENDOR_ID)?;
    if vendor == 0xffff {
        return Ok(None);
    }
    let [_, prog_if, subclass, class] = read32(bdf, reg::REVISION)?.to_le_bytes();
    Ok(Some(Function {
        bdf,
        vendor,
        device: read16(bdf, reg::DEVICE_ID)?,
        class,
        subclass,
        prog_if,
        header_type: read8(bdf, reg::HEADER_TYPE)?,
    }))
}

/// Enumerates every function on bus 0 and behind its bridges, in order of
/// bus (depth first), device and function. `EPERM` at once for a domain
/// that may not reach configuration space.
pub fn enumerate() -> Result<Functions, Errno> {
    read16(Bdf::new(0, 0, 0), reg::VENDOR_ID)?;
    let mut visited = [0u64; 4];
    visited[0] = 1;
    Ok(Functions { bus: Some(0), dev: 0, func: 0, pending: [0; 16], nr_pending: 0, visited, error: None })
}

/// The iterator of [`enumerate`]. A call that fails part-way (it should
/// not, once the first has succeeded) ends the iteration; [`Functions::error`]
/// says why.
pub struct Functions {
    bus: Option<u8>,
    dev: u8,
    func: u8,
    /// Buses found behind bridges and not yet scanned.
    pending: [u8; 16],
    nr_pending: usize,
    visited: [u64; 4],
    error: Option<Errno>,
}

impl Functions {
    /// Why the iteration ended early, if it did.
    pub fn error(&self) -> Option<Errno> {
        self.error
    }

    fn add_bus(&mut self, bus: u8) {
        let (w, b) = (usize::from(bus / 64), bus % 64);
        if self.visited[w] & (1 << b) == 0 && self.nr_pending < self.pending.len() {
            self.visited[w] |= 1 << b;
            self.pending[self.nr_pending] = bus;
            self.nr_pending += 1;
        }
    }
}

impl Iterator for Functions {
    type Item = Function;

    fn next(&mut self) -> Option<Function> {
        loop {
            let bus = self.bus?;
            if self.dev >= 32 {
                self.bus = self.nr_pending.checked_sub(1).map(|n| {
                    self.nr_pending = n;
                    self.pending[n]
                });
                (self.dev, self.func) = (0, 0);
                continue;
            }
            let bdf = Bdf::new(bus, self.dev, self.func);
            let found = match function(bdf) {
                Ok(f) => f,
                Err(e) => {
                    self.error = Some(e);
                    self.bus = None;
                    return None;
                }
            };
            let multi = found.is_some_and(|f| f.header_type & header::MULTI_FUNCTION != 0);
            if self.func == 7 || (self.func == 0 && !multi) {
                (self.dev, self.func) = (self.dev + 1, 0);
            } else {
                self.func += 1;
            }
            if let Some(f) = found {
                if f.is_bridge() {
                    match read8(bdf, reg::SECONDARY_BUS) {
                        Ok(secondary) => self.add_bus(secondary),
                        Err(e) => self.error = Some(e),
                    }
                }
                return Some(f);
            }
        }
    }
}
