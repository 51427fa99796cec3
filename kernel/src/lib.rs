//! Host-testable logic of the Ringfence hypervisor.
//!
//! Everything here is plain Rust with no hardware access, so `cargo test`
//! runs it on the host. The ring-0 image (`src/main.rs` and `src/arch/`) is a
//! thin layer that feeds these modules real memory and real traps.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod elf;
