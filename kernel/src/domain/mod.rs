//! Domain lifecycle and the end-of-run verdict.
//!
//! A domain is `Runnable`, `Blocked` (waiting for an event, using no CPU),
//! `Paused` (by the toolstack) or `Dead` with an [`Exit`]. The scheduler only ever picks runnable domains;
//! a dead domain never runs again and its frames go back to the pool.
//!
//! When the last domain is dead the hypervisor compares every domain's exit
//! with what the boot manifest expected ([`Expect`]) and reports one line per
//! domain; QEMU's exit status says whether all matched.

pub mod table;
pub mod vcpu;

pub use table::{DomId, DomainTable};

/// The capability to use the privileged operations (dom0's: the console's
/// input today; the toolstack's, device access and foreign mappings
/// later). It is made in one place, [`Privilege::of_domain`], from the
/// privileged flag that the boot bundle gives a domain, and every
/// privileged operation takes one as an argument, so no handler can
/// forget the check: without the value it cannot call the operation.
/// At most one domain ever has it: the hypervisor builds domains only
/// from a parsed [`ringfence_bundle::Bundle`], and the reader refuses a
/// bundle with two privileged records
/// ([`ringfence_bundle::BundleError::SeveralPrivileged`]), which the boot
/// path reports as a fatal "bad boot bundle".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privilege(());

impl Privilege {
    /// The capability of a domain created with the privileged flag
    /// `privileged` (`None` for an ordinary domain).
    pub fn of_domain(privileged: bool) -> Option<Privilege> {
        privileged.then_some(Privilege(()))
    }
}

use crate::hypercall::ShutdownReason;
use core::fmt;

/// What the manifest expects a domain to end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A clean `sched_op(shutdown, poweroff)`.
    Poweroff,
    /// A crash (fault without a handler, or `shutdown(crash)`).
    Crash,
    /// The domain must be refused at build time (bad image or manifest
    /// entry).
    Rejected,
    /// Created by the toolstack, which decides its end: any exit is right.
    Managed,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Expect::Poweroff => "poweroff",
            Expect::Crash => "crash",
            Expect::Rejected => "rejected",
            Expect::Managed => "managed",
        })
    }
}

/// A CPU exception taken by a guest that had no handler for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Exception vector.
    pub vector: u8,
    /// Error code pushed by the CPU (0 if none).
    pub error: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// CR2 for page faults.
    pub cr2: u64,
    /// Privilege level the guest was in (1 = kernel, 3 = app).
    pub ring: u8,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) in ring {} at rip {:#x}",
            vector_mnemonic(self.vector),
            vector_name(self.vector),
            self.ring,
            self.rip
        )?;
        if self.vector == 14 {
            write!(f, ", cr2 {:#x}, {}", self.cr2, describe_pf(self.error))?;
        } else if has_error_code(self.vector) {
            write!(f, ", error code {:#x}", self.error)?;
            if matches!(self.vector, 10..=13) && self.error != 0 {
                if self.error & 2 != 0 {
                    // The index encoding differs between CPUs and QEMU
                    // (vector * 8 vs * 16), so only the kind is decoded.
                    f.write_str(" (an IDT gate)")?;
                } else {
                    write!(f, " (selector {:#x})", self.error & !7)?;
                }
            }
        }
        Ok(())
    }
}

fn describe_pf(err: u64) -> &'static str {
    match (err & 1 != 0, err & 2 != 0, err & 16 != 0) {
        (_, _, true) => "instruction fetch",
        (false, false, false) => "read of an unmapped page",
        (false, true, false) => "write to an unmapped page",
        (true, false, false) => "read protection violation",
        (true, true, false) => "write to a read-only page",
    }
}

/// Why a domain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The domain shut itself down.
    Shutdown(ShutdownReason),
    /// The domain faulted with no handler and was crashed.
    Faulted(Fault),
    /// The hypervisor crashed the domain for the reason given (a trap that
    /// could not be delivered, a `syscall` with no callback, ...).
    Crashed(&'static str),
    /// The domain was never started (its image or manifest entry was bad).
    Rejected,
    /// The toolstack destroyed it (`domctl` `DESTROYDOMAIN`).
    Destroyed,
}

impl Exit {
    /// Whether this exit satisfies `expect`.
    pub fn matches(&self, expect: Expect) -> bool {
        matches!(
            (self, expect),
            (Exit::Shutdown(ShutdownReason::Poweroff), Expect::Poweroff)
                | (Exit::Shutdown(ShutdownReason::Crash) | Exit::Faulted(_) | Exit::Crashed(_), Expect::Crash)
                | (Exit::Rejected, Expect::Rejected)
                | (_, Expect::Managed)
        )
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Shutdown(ShutdownReason::Poweroff) => f.write_str("poweroff"),
            Exit::Shutdown(ShutdownReason::Reboot) => f.write_str("reboot"),
            Exit::Shutdown(ShutdownReason::Crash) => f.write_str("crash (guest request)"),
            Exit::Faulted(fault) => write!(f, "crash: {fault}"),
            Exit::Crashed(why) => write!(f, "crash: {why}"),
            Exit::Rejected => f.write_str("rejected at build"),
            Exit::Destroyed => f.write_str("destroyed by the toolstack"),
        }
    }
}

/// Scheduling state (the order domains run in is [`crate::sched::bvt`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// May run.
    Runnable,
    /// Waiting for an event.
    Blocked,
    /// Paused by the toolstack: not scheduled, whatever arrives (events
    /// are left pending), until unpaused.
    Paused,
    /// Finished.
    Dead(Exit),
}

/// Short mnemonic of an exception vector ("#GP").
pub fn vector_mnemonic(v: u8) -> &'static str {
    const M: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS", "#GP", "#PF",
        "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX",
        "#31",
    ];
    M.get(v as usize).copied().unwrap_or("IRQ")
}

/// Name of an exception vector ("general protection").
pub fn vector_name(v: u8) -> &'static str {
    match v {
        0 => "divide error",
        1 => "debug",
        2 => "non-maskable interrupt",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        21 => "control protection",
        _ => "interrupt",
    }
}

/// Whether the CPU pushes an error code for vector `v`.
pub const fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn verdict_matching() {
        let gp = Exit::Faulted(Fault { vector: 13, error: 0, rip: 1, cr2: 0, ring: 1 });
        assert!(gp.matches(Expect::Crash));
        assert!(!gp.matches(Expect::Poweroff));
        assert!(Exit::Shutdown(ShutdownReason::Poweroff).matches(Expect::Poweroff));
        assert!(!Exit::Shutdown(ShutdownReason::Poweroff).matches(Expect::Crash));
        assert!(Exit::Shutdown(ShutdownReason::Crash).matches(Expect::Crash));
        assert!(!Exit::Shutdown(ShutdownReason::Reboot).matches(Expect::Poweroff));
        assert!(Exit::Rejected.matches(Expect::Rejected));
        assert!(!Exit::Rejected.matches(Expect::Poweroff));
    }

    #[test]
    fn fault_reports_are_readable() {
        let pf = Fault { vector: 14, error: 2, rip: 0x10, cr2: 0x100000, ring: 1 };
        assert_eq!(
            format!("{}", Exit::Faulted(pf)),
            "crash: #PF (page fault) in ring 1 at rip 0x10, cr2 0x100000, write to an unmapped page"
        );
        let gp = Fault { vector: 13, error: 0x10, rip: 0x20, cr2: 0, ring: 1 };
        assert_eq!(format!("{gp}"), "#GP (general protection) in ring 1 at rip 0x20, error code 0x10 (selector 0x10)");
        assert_eq!(vector_mnemonic(200), "IRQ");
        let idt = Fault { vector: 13, error: 0xf02, rip: 0x20, cr2: 0, ring: 1 };
        assert!(format!("{idt}").ends_with("error code 0xf02 (an IDT gate)"));
        assert_eq!(format!("{:<9}|", Expect::Crash), "crash    |");
    }
}
