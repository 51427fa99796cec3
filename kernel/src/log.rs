//! The hypervisor's log on COM1, and symbolised addresses for fault reports.
//!
//! Hypervisor lines start with `(rf) `; guest console lines start with
//! `[name] ` (see `hv::DomEnv::console_write`).

use crate::arch::serial::Serial;
use core::fmt::Write;
use ringfence_bundle::Symbols;

static SYMBOLS: spin::Once<Symbols<'static>> = spin::Once::new();

/// Prints one hypervisor log line.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

/// Writes `(rf) <args>\n`.
pub fn line(args: core::fmt::Arguments<'_>) {
    let _ = writeln!(Serial, "(rf) {args}");
}

/// Installs the hypervisor's symbol table from the boot bundle.
pub fn set_symbols(s: Symbols<'static>) {
    SYMBOLS.call_once(|| s);
}

/// `addr` rendered as `0x… <symbol+0xoff>` when a symbol is known.
pub struct Sym(pub u64);

impl core::fmt::Display for Sym {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}", self.0)?;
        if let Some((name, off)) = SYMBOLS.get().and_then(|s| s.lookup(self.0)) {
            write!(f, " <{name}+{off:#x}>")?;
        }
        Ok(())
    }
}

/// Prints the frame-pointer chain starting at `rbp`, following only frames
/// inside the hypervisor's own stack.
pub fn backtrace(mut rbp: u64) {
    let (lo, hi) = crate::arch::cpu::hv_stack_bounds();
    for depth in 0..16 {
        if rbp < lo || rbp + 16 > hi || !rbp.is_multiple_of(8) {
            break;
        }
        // SAFETY: `rbp` lies inside the hypervisor stack, which is mapped.
        let (next, ret) = unsafe { ((rbp as *const u64).read(), ((rbp + 8) as *const u64).read()) };
        if ret == 0 {
            break;
        }
        line(format_args!("  #{depth} {}", Sym(ret)));
        if next <= rbp {
            break;
        }
        rbp = next;
    }
}
