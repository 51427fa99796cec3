//! Self-checks for test guests: count expected answers, print one line
//! per check, and end with a verdict line the QEMU scenarios assert on.
//!
//! Every line names who checks (`who`) and what, then the answer:
//! - [`Checks::refused`]: `who: what: EPERM (want EPERM) refused`, or
//!   `... (want EPERM) WRONG` for any other answer (success included);
//! - [`Checks::outcome`]: `who: what: EPERM as expected` (or `ok as
//!   expected`), or `... (want X) WRONG`;
//! - [`Checks::holds`]: `who: what: ok`, or `WRONG`.
//!
//! [`Checks::verdict`] prints `name: N/N checks as expected`, or `name: W of
//! N checks went wrong` and crashes the domain, so the manifest's expected
//! ending catches a wrong answer even if a scenario forgot to look for it.
//!
//! [`bad_pointer_call`] passes addresses the hypervisor must refuse as a
//! hypercall's argument pointer, from safe code: the SDK picks the
//! addresses ([`BadPointer`]), none of which is writable memory of the
//! domain, so whatever the hypervisor does cannot change this program's
//! memory.

use crate::println;
use core::fmt::{Arguments, Debug, Display};
use pvguest_abi::{layout, Errno};

/// Counts checks and wrong answers.
#[derive(Debug, Default)]
pub struct Checks {
    done: u32,
    wrong: u32,
}

impl Checks {
    /// No checks yet.
    pub const fn new() -> Checks {
        Checks { done: 0, wrong: 0 }
    }

    /// Checks done so far.
    pub fn done(&self) -> u32 {
        self.done
    }

    /// Checks that went wrong so far.
    pub fn wrong(&self) -> u32 {
        self.wrong
    }

    /// `got` must be `Err(want)`.
    pub fn refused<T: Debug>(&mut self, who: &str, what: Arguments<'_>, got: Result<T, Errno>, want: Errno) {
        self.done += 1;
        match got {
            Err(e) if e == want => println!("{who}: {what}: {} (want {}) refused", e.name(), want.name()),
            other => {
                self.wrong += 1;
                println!("{who}: {what}: {other:?} (want {}) WRONG", want.name());
            }
        }
    }

    /// `got` must be `want` (success or a given error); the value of a
    /// success is not compared.
    pub fn outcome<T>(&mut self, who: &str, what: impl Display, got: Result<T, Errno>, want: Result<(), Errno>) {
        self.done += 1;
        let got = got.map(|_| ());
        let name = |r: Result<(), Errno>| r.map_or_else(|e| e.name(), |()| "ok");
        if got == want {
            println!("{who}: {what}: {} as expected", name(got));
        } else {
            self.wrong += 1;
            println!("{who}: {what}: {} (want {}) WRONG", name(got), name(want));
        }
    }

    /// `ok` must hold.
    pub fn holds(&mut self, who: &str, what: Arguments<'_>, ok: bool) {
        self.done += 1;
        self.wrong += u32::from(!ok);
        println!("{who}: {what}: {}", if ok { "ok" } else { "WRONG" });
    }

    /// Prints the verdict for domain `name`; crashes the domain if any
    /// check went wrong (or none was made: a run that checked nothing
    /// proved nothing).
    pub fn verdict(&self, name: &str) {
        if self.wrong > 0 || self.done == 0 {
            println!("{name}: {} of {} checks went wrong", self.wrong, self.done);
            crate::sched::crash();
        }
        println!("{name}: {}/{} checks as expected", self.done, self.done);
    }
}

/// An argument pointer no hypercall may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPointer {
    /// Address 0 (never mapped).
    Null,
    /// A non-canonical address (bit 47 set, high bits clear).
    NonCanonical,
    /// The hypervisor's entry area (PML4 slot 511): mapped read-only for
    /// the CPU's sake, never the guest's memory.
    EntryArea,
    /// Four bytes below the entry area, so the struct runs into it.
    Straddling,
}

impl BadPointer {
    /// Every kind.
    pub const ALL: [BadPointer; 4] =
        [BadPointer::Null, BadPointer::NonCanonical, BadPointer::EntryArea, BadPointer::Straddling];

    /// The address.
    pub const fn addr(self) -> u64 {
        match self {
            BadPointer::Null => 0,
            BadPointer::NonCanonical => 0x0000_8000_0000_1000,
            BadPointer::EntryArea => layout::ENTRY_AREA_BASE,
            BadPointer::Straddling => layout::ENTRY_AREA_BASE - 4,
        }
    }

    /// A short name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            BadPointer::Null => "a null pointer",
            BadPointer::NonCanonical => "a non-canonical pointer",
            BadPointer::EntryArea => "a pointer into the hypervisor's entry area",
            BadPointer::Straddling => "a pointer straddling into the entry area",
        }
    }
}

/// A hypercall whose one argument pointer [`bad_pointer_call`] replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerOp {
    /// `physdev_op(cmd, ptr)`.
    Physdev(u64),
    /// `event_channel_op(cmd, ptr)`.
    EventChannel(u64),
    /// `console_io(CONSOLE_READ, 16, ptr)` (privileged).
    ConsoleRead,
}

/// Issues `op` with `ptr` as its argument pointer and returns the
/// hypervisor's answer.
pub fn bad_pointer_call(op: PointerOp, ptr: BadPointer) -> Result<u64, Errno> {
    use pvguest_abi::hypercall as nr;
    let args = match op {
        PointerOp::Physdev(cmd) => (nr::PHYSDEV_OP, [cmd, ptr.addr(), 0, 0, 0]),
        PointerOp::EventChannel(cmd) => (nr::EVENT_CHANNEL_OP, [cmd, ptr.addr(), 0, 0, 0]),
        PointerOp::ConsoleRead => (nr::CONSOLE_IO, [pvguest_abi::console_io::READ, 16, ptr.addr(), 0, 0]),
    };
    // SAFETY: each of these hypercalls takes exactly one pointer, which
    // is `ptr`, one of `BadPointer`'s addresses, none of which is memory
    // of this domain that it can write (null, non-canonical, the
    // hypervisor's read-only entry area, or the page below it, which the
    // SDK never maps: a domain's memory and windows end far lower); the
    // other arguments are plain numbers. So nothing the hypervisor does
    // with the call can change memory this program uses.
    let r = unsafe { crate::hypercall::raw(args.0, args.1) };
    Errno::decode(r)
}
