//! I/O ports (dom0): `in` and `out` on the ports of its devices.
//!
//! Guests run with IOPL 0, so every `in`/`out` traps (#GP) into the
//! hypervisor, which performs it for dom0 when every port it touches lies
//! in an I/O BAR of a PCI function given to dom0 that decodes I/O, and
//! resumes after it. Any other access (a domU's, a port no given BAR holds,
//! the hypervisor's own ports: the legacy chipset ports `0x00..0x100`
//! including the debug exit, COM1, PCI configuration `0xCF8..0xD00`) comes
//! back to the guest as the #GP it was. [`read8`] and friends return
//! `Err(Refused)` then (they catch that #GP), so a driver gets an error,
//! not a crash.
//!
//! ```ignore
//! use pvguest_sdk::ioport;
//! let smbus = 0x700; // from the function's I/O BAR
//! let status = ioport::read8(smbus)?;
//! assert!(ioport::read8(0x3f8).is_err()); // COM1 is the hypervisor's
//! ```
//!
//! Catching installs the SDK's trap table ([`crate::trap::install`]) and a
//! #GP handler that resumes only a port access of this module (by its
//! address); any other #GP crashes the domain as before.

use crate::trap::{self, Resolution, TrapContext, Vector};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The hypervisor refused the access (#GP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// Set by the #GP handler when it skipped one of our accesses.
static REFUSED: AtomicBool = AtomicBool::new(false);
/// Whether our #GP handler is installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Where the access in flight is (0: none).
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
/// Its length: 1 (the `dx` forms), 2 with the 16-bit prefix.
static IN_LEN: AtomicU64 = AtomicU64::new(1);

fn on_gp(ctx: &mut TrapContext) -> Resolution {
    let f = IN_FLIGHT.load(Ordering::SeqCst);
    if f != 0 && ctx.rip == f {
        REFUSED.store(true, Ordering::SeqCst);
        ctx.rip += IN_LEN.load(Ordering::SeqCst);
        return Resolution::Resume;
    }
    trap::print_context("#GP", ctx);
    Resolution::Crash
}

fn ensure_handler() {
    if !INSTALLED.swap(true, Ordering::SeqCst) {
        trap::set_handler(Vector::GeneralProtection, on_gp);
        trap::install();
    }
}

/// Runs the port instruction `$insn` (length `$len`, port in `dx`, data
/// in `eax` both ways) under the #GP guard: `Err(Refused)` if the
/// hypervisor refused it.
macro_rules! guarded {
    ($insn:literal, $len:literal, $port:expr, $eax:expr) => {{
        ensure_handler();
        REFUSED.store(false, Ordering::SeqCst);
        IN_LEN.store($len, Ordering::SeqCst);
        let mut eax: u32 = $eax;
        // SAFETY: a port access touches no memory of ours; the hypervisor
        // performs it only on dom0's own device ports, and otherwise the
        // #GP comes to `on_gp`, which skips exactly this instruction (its
        // address is stored with `lea` just before it).
        unsafe {
            core::arch::asm!(
                "lea {tmp}, [rip + 2f]",
                "mov [{slot}], {tmp}",
                "2:",
                $insn,
                "mov qword ptr [{slot}], 0",
                tmp = out(reg) _,
                slot = in(reg) IN_FLIGHT.as_ptr(),
                in("dx") $port,
                inout("eax") eax,
                options(nostack),
            );
        }
        if REFUSED.load(Ordering::SeqCst) { Err(Refused) } else { Ok(eax) }
    }};
}

/// Reads a byte from `port`; `Err(Refused)` if the hypervisor refused.
pub fn read8(port: u16) -> Result<u8, Refused> {
    guarded!("in al, dx", 1, port, 0).map(|v| v as u8)
}
/// Reads 16 bits from `port`; `Err(Refused)` if the hypervisor refused.
pub fn read16(port: u16) -> Result<u16, Refused> {
    guarded!("in ax, dx", 2, port, 0).map(|v| v as u16)
}
/// Reads 32 bits from `port`; `Err(Refused)` if the hypervisor refused.
pub fn read32(port: u16) -> Result<u32, Refused> {
    guarded!("in eax, dx", 1, port, 0)
}
/// Writes a byte to `port`; `Err(Refused)` if the hypervisor refused.
pub fn write8(port: u16, value: u8) -> Result<(), Refused> {
    guarded!("out dx, al", 1, port, u32::from(value)).map(|_| ())
}
/// Writes 16 bits to `port`; `Err(Refused)` if the hypervisor refused.
pub fn write16(port: u16, value: u16) -> Result<(), Refused> {
    guarded!("out dx, ax", 2, port, u32::from(value)).map(|_| ())
}
/// Writes 32 bits to `port`; `Err(Refused)` if the hypervisor refused.
pub fn write32(port: u16, value: u32) -> Result<(), Refused> {
    guarded!("out dx, eax", 1, port, value).map(|_| ())
}
