//! The Ringfence ABI: the single source of truth shared by the hypervisor
//! (`kernel/`) and guest kernels (`pvguest-sdk`).
//!
//! This crate holds numbers and `#[repr(C)]` layouts only, no logic beyond
//! trivial conversions. Every shared structure has compile-time size and
//! offset assertions, so a change that moves a field fails the build instead
//! of corrupting a guest.
//!
//! # Calling convention
//! A guest kernel (ring 1) enters the hypervisor with `int 0x82`
//! ([`HYPERCALL_VECTOR`]). The gate's DPL is 1, so ring 3 cannot use it.
//! - `rax`: hypercall number ([`hypercall`]), numbered as Xen numbers the
//!   corresponding operation.
//! - arguments in `rdi`, `rsi`, `rdx`, `r10`, `r8` (in that order);
//! - result in `rax`: `>= 0` on success, `-errno` ([`Errno`]) on failure.
//! - Every other general-purpose register and the FPU/SSE state are preserved.
//!
//! # Who trusts what
//! Nothing a guest passes is trusted: the hypervisor validates every number,
//! pointer and length and answers bad input with an [`Errno`] or by crashing
//! only the offending domain. Structures the hypervisor writes into guest
//! memory (start info) are the guest's to read and then to overwrite at will;
//! the hypervisor never reads them back.
#![no_std]
#![forbid(unsafe_code)]

pub mod errno;
pub mod layout;
pub mod shared_info;
pub mod start_info;

pub use errno::Errno;
pub use start_info::StartInfo;

/// `int` vector of the hypercall gate (DPL 1: ring 1 only).
pub const HYPERCALL_VECTOR: u8 = 0x82;

/// Hypercall numbers. Where an operation corresponds to a Xen hypercall it
/// carries Xen's number (`xen/include/public/xen.h`).
pub mod hypercall {
    /// Write to or read from the hypervisor console: see [`crate::console_io`].
    pub const CONSOLE_IO: u64 = 18;
    /// Version and feature queries: see [`crate::version`].
    pub const XEN_VERSION: u64 = 17;
    /// Scheduler operations: see [`crate::sched_op`].
    pub const SCHED_OP: u64 = 29;
}

/// `console_io` sub-commands (`cmd` in `rdi`).
pub mod console_io {
    /// `console_io(WRITE, len, buf)`: write `len` bytes from guest address
    /// `buf`. Returns the number of bytes written.
    pub const WRITE: u64 = 0;
    /// Largest single write; longer writes return `-EINVAL`.
    pub const MAX_WRITE: u64 = 4096;
}

/// `sched_op` sub-commands (`cmd` in `rdi`, argument in `rsi`).
pub mod sched_op {
    /// Give up the rest of the time slice. Returns 0.
    pub const YIELD: u64 = 0;
    /// Sleep until an event is delivered. Returns 0.
    pub const BLOCK: u64 = 1;
    /// Shut the calling domain down. `rsi` is the reason
    /// ([`crate::shutdown_reason`]); unlike Xen it is passed by value, so
    /// there is no pointer to validate. Does not return.
    pub const SHUTDOWN: u64 = 2;
}

/// Shutdown reasons for [`sched_op::SHUTDOWN`] (Xen's `SHUTDOWN_*`).
pub mod shutdown_reason {
    /// The domain finished normally.
    pub const POWEROFF: u64 = 0;
    /// The domain asks to be restarted (reported like poweroff for now).
    pub const REBOOT: u64 = 1;
    /// The domain crashed (for instance, its kernel panicked).
    pub const CRASH: u64 = 3;
}

/// Version and feature queries (`cmd` in `rdi`).
pub mod version {
    /// Returns `(major << 16) | minor` of the ABI.
    pub const VERSION: u64 = 0;
    /// Returns the feature bitmap ([`crate::features`]).
    pub const GET_FEATURES: u64 = 6;
    /// ABI major version: bumped on incompatible changes.
    pub const ABI_MAJOR: u64 = 0;
    /// ABI minor version: bumped when features are added.
    pub const ABI_MINOR: u64 = 1;
}

/// Feature bits returned by [`version::GET_FEATURES`].
pub mod features {
    /// `console_io(WRITE)` is available.
    pub const CONSOLE_WRITE: u64 = 1 << 0;
    /// `sched_op` yield/block/shutdown are available.
    pub const SCHED_OP: u64 = 1 << 1;
    /// Guest FPU/SSE state is preserved across every entry and switch.
    pub const FPU_PRESERVED: u64 = 1 << 2;
    /// The hypervisor is unmapped from the guest view except the entry area.
    pub const ISOLATED_ENTRY: u64 = 1 << 3;
}

/// Guest-visible segment selectors. The GDT is owned by the hypervisor and
/// mapped read-only in every guest view.
pub mod selectors {
    /// 64-bit code, DPL 1: the guest kernel's `cs`.
    pub const GUEST_KERNEL_CS: u16 = 0x18 | 1;
    /// Data, DPL 1: the guest kernel's `ss` (and `ds`/`es` if it loads them).
    pub const GUEST_KERNEL_SS: u16 = 0x20 | 1;
    /// Data, DPL 3: a guest application's `ss`.
    pub const GUEST_USER_SS: u16 = 0x28 | 3;
    /// 64-bit code, DPL 3: a guest application's `cs`.
    pub const GUEST_USER_CS: u16 = 0x30 | 3;
}
