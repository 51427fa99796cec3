//! Host-testable logic of the Ringfence hypervisor.
//!
//! Everything here is plain Rust with no hardware access, so `cargo test`
//! runs it on the host. The ring-0 image (`src/main.rs` and `src/arch/`) is a
//! thin layer that feeds these modules real memory and real traps.
//!
//! The folders mirror the subsystems:
//!
//! | module | owns |
//! |---|---|
//! | [`mm`] | direct paging with validation; [`mm::frames`]: who owns each machine frame and what it is used as; [`mm::guest_mem`]: the one accessor that turns guest pointers into memory; [`mm::paging`]: page-table entry bits |
//! | [`sched`] | [`sched::bvt`]: the borrowed-virtual-time scheduler; [`sched::account`]: who is charged for each nanosecond of CPU time |
//! | [`event`] | event channels and the shared-info page |
//! | [`grant`] | grant tables v1: a granter's table and in-use records, a grantee's maptrack, validation of map and copy, revocation, quotas, teardown at death |
//! | [`domain`] | domain states, exits and the end-of-run verdict; [`domain::vcpu`]: per-vCPU state the guest registers |
//! | [`hv`] | the trap loop: domain lifecycle, trap handling, events, timers, console draining and scheduling, over a [`hv::Machine`] |
//! | [`hypercall`] | the hypercall table, its argument validation and its budget |
//! | [`irq`] | the IOAPIC's lines: dom0's pirqs, their ports, and masking until EOI |
//! | [`pci`] | PCI configuration for dom0: the functions it is given, the write filter, the BAR record |
//! | [`elf`] | the one ELF loader: validation and load plan |
//! | [`builder`] | a domain's initial memory, page tables and start info |
//! | [`console`] | per-domain line buffering, sanitising and rate limit |
//! | [`trap`], [`regs`] | bouncing traps to guests; the registers a guest may be returned to |
//! | [`time`] | TSC to system time |
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod builder;
pub mod console;
pub mod domain;
pub mod elf;
pub mod event;
pub mod grant;
pub mod hv;
pub mod hypercall;
pub mod ioport;
pub mod irq;
pub mod mm;
pub mod pci;
pub mod regs;
pub mod sched;
pub mod time;
pub mod trap;
