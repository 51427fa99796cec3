//! Host-testable logic of the Ringfence hypervisor.
//!
//! Everything here is plain Rust with no hardware access, so `cargo test`
//! runs it on the host. The ring-0 image (`src/main.rs` and `src/arch/`) is a
//! thin layer that feeds these modules real memory and real traps.
//!
//! | module | owns |
//! |---|---|
//! | [`frames`] | who owns each machine frame and what it is used as |
//! | [`guest_mem`] | the one accessor that turns guest pointers into memory |
//! | [`elf`] | the one ELF loader: validation and load plan |
//! | [`builder`] | a domain's initial memory, page tables and start info |
//! | [`hypercall`] | the hypercall table, its argument validation and its budget |
//! | [`account`] | who is charged for each nanosecond of CPU time |
//! | [`bvt`] | the borrowed-virtual-time scheduler |
//! | [`domain`] | domain states, exits and the end-of-run verdict |
//! | [`console`] | per-domain line buffering and sanitising |
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod account;
pub mod builder;
pub mod bvt;
pub mod console;
pub mod domain;
pub mod elf;
pub mod evtchn;
pub mod frames;
pub mod guest_mem;
pub mod hypercall;
pub mod mm;
pub mod paging;
pub mod regs;
pub mod time;
pub mod trap;
pub mod vcpu;
