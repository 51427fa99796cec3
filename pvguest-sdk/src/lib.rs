//! # pvguest-sdk: write a Ringfence guest kernel
//!
//! A guest kernel is a `#![no_std] #![no_main]` binary that runs in ring 1
//! under the Ringfence hypervisor. The SDK gives it an entry point, the start
//! info, a console, typed hypercalls, and a panic handler that reports the
//! panic and shuts the domain down as crashed. Guest code needs no `unsafe`
//! for any of this.
//!
//! ## A complete guest
//! ```ignore
//! #![no_std]
//! #![no_main]
//! #![forbid(unsafe_code)]
//!
//! use pvguest_sdk::{println, StartInfo};
//!
//! pvguest_sdk::entry!(main);
//!
//! fn main(si: &'static StartInfo) {
//!     println!("hello from {} (domain {})", si.name(), si.domid);
//!     // Returning powers the domain off; so does `sched::poweroff()`.
//! }
//! ```
//! (This is `sample-guests/src/bin/hello.rs`, trimmed; the examples here are
//! built as sample guests rather than doctests, because a guest cannot link
//! into a host test binary.)
//!
//! ## Starting a guest
//! `cargo xtask new-guest NAME` makes a guest crate in `guests/NAME` (a
//! workspace member) that uses the console, a timer, a virtual disk and
//! the network in about 120 lines with no `unsafe`, and a manifest that
//! boots it beside dom0: `cargo xtask run --manifest
//! guests/NAME/manifest.toml` builds and boots it. Its `build.rs` and
//! `Cargo.toml` follow the contract below.
//!
//! ## Building
//! Guests are built for the host target with the SDK's linker script. Add a
//! `build.rs` to the guest crate:
//! ```ignore
//! fn main() {
//!     let script = std::env::var("DEP_PVGUEST_LINKER_SCRIPT").unwrap();
//!     for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie",
//!                 "-Wl,--gc-sections", &format!("-Wl,-T,{script}")] {
//!         println!("cargo:rustc-link-arg-bins={arg}");
//!     }
//! }
//! ```
//! and set `panic = "abort"` in the workspace profiles. `cargo xtask build`
//! then packs the guest into the boot bundle.
//!
//! ## The machine a guest sees
//! - Entry in ring 1 with `rsp` on a 64 KiB boot stack and the start info in
//!   `rsi`; the SDK copies the start info and calls your `main`.
//! - The domain's memory is mapped linearly at
//!   [`pvguest_abi::layout::GUEST_KERNEL_BASE`]; its page tables are
//!   read-only.
//! - Privileged instructions (`cli`, `hlt`, `mov cr3`, `wrmsr`, `in`/`out`,
//!   ...) fault; a fault with no handler crashes only this domain.
//! - FPU/SSE state is preserved across preemption.
//!
//! ## Layers
//! | module | what | unsafe? |
//! |---|---|---|
//! | [`hypercall`] | the raw `int 0x82` gate | yes, contained here |
//! | [`console`], [`sched`], [`version`] | typed hypercalls | no |
//! | [`cmdline`] | `key=value` arguments from the manifest | no |
//! | [`rt`] | entry point, start info, panic handler | contained here |
//! | [`diag`] | self-checks of the platform (FPU preservation) | contained here |
//! | [`trap`], [`event`] | trap handlers, event dispatch, masking | entry stubs only |
//! | [`time`], [`timer`] | clocks, real and virtual one-shot timers | seqlock reads only |
//! | [`mm`] | frames, validated page-table updates, address spaces | contained here |
//! | [`process`] | ring-3 processes, system calls | contained here |
//! | [`heap`] | a global allocator over free frames | no |
//! | [`pci`] | PCI configuration for dom0: filtered reads and writes, enumeration | the gate only |
//! | [`irq`] | device interrupts for dom0: map a GSI to a pirq, bind it to a port with a handler, EOI | the gate only |
//! | [`netfront`] | a domU's virtual NIC: whole Ethernet frames over two netif rings | no |
//! | [`tcpip`] | TCP/IP (smoltcp, re-exported) over a `netfront` NIC: static or DHCPv4 addressing, TCP, UDP and ICMP sockets, poll and wait | no |
//! | [`virtio_net`] | a virtio-net NIC for dom0: raw frames, buffers it owns, checked used-ring entries | the crate's buffer contracts |
#![no_std]

extern crate alloc;

extern crate freestanding;

pub mod blkfront;
pub mod channel;
pub mod check;
pub mod cmdline;
pub mod console;
pub mod diag;
pub mod dma;
pub mod domctl;
pub mod event;
pub mod grant;
pub mod heap;
pub mod hypercall;
pub mod ioport;
pub mod irq;
pub mod mm;
pub mod mmio;
pub mod netfront;
pub mod pci;
pub mod process;
pub mod rt;
pub mod sched;
mod shared;
pub mod store;
pub mod store_link;
pub mod tcpip;
pub mod time;
pub mod timer;
pub mod trap;
pub mod version;
pub mod virtio;
pub mod virtio_net;

/// The block protocol (`split-drivers`' `blkif`).
pub use split_drivers::blkif;
pub use split_drivers::netif;
/// The split-driver connection handshake (`split-drivers`' `state`).
pub use split_drivers::state as xenbus_state;
pub mod vmap;
pub mod xenbus;

pub use pvguest_abi as abi;
pub use pvguest_abi::{Errno, StartInfo};
pub use ring_protocol;
pub use rt::start_info;

/// Declares the guest's entry function: `fn(&'static StartInfo)`.
///
/// The SDK's `_start` calls it once the start info has been checked;
/// returning from it powers the domain off.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        #[doc(hidden)]
        pub fn __pvguest_main(si: &'static $crate::StartInfo) {
            let main: fn(&'static $crate::StartInfo) = $main;
            main(si)
        }
    };
}
