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
//! - The argument registers may come back changed (a long batch that the
//!   hypervisor preempts resumes itself by re-executing `int 0x82` with
//!   updated arguments, as Xen's continuations do); every other
//!   general-purpose register and the FPU/SSE state are preserved.
//!
//! # Who trusts what
//! Nothing a guest passes is trusted: the hypervisor validates every number,
//! pointer and length and answers bad input with an [`Errno`] or by crashing
//! only the offending domain. Structures the hypervisor writes into guest
//! memory (start info) are the guest's to read and then to overwrite at will;
//! the hypervisor never reads them back.
#![no_std]
#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod domctl;
pub mod errno;
pub mod event;
pub mod grant;
pub mod layout;
pub mod memory;
pub mod mmu;
pub mod pci;
pub mod physdev;
pub mod shared_info;
pub mod start_info;
pub mod trap;
pub mod vcpu;

pub use errno::Errno;
pub use start_info::StartInfo;
/// The byte-view traits every guest-visible structure derives (re-exported so
/// that users of the ABI need no dependency of their own).
pub use zerocopy;

/// `int` vector of the hypercall gate (DPL 1: ring 1 only).
pub const HYPERCALL_VECTOR: u8 = 0x82;

/// `int` vector of the null trap (DPL 1): enters the hypervisor and returns
/// at once, changing nothing. It exists to measure the bare cost of the
/// entry/exit path, the floor under every hypercall.
pub const NULL_TRAP_VECTOR: u8 = 0x83;

/// Hypercall numbers. Where an operation corresponds to a Xen hypercall it
/// carries Xen's number (`xen/include/public/xen.h`).
pub mod hypercall {
    /// Register trap handlers: `set_trap_table(ptr to [TrapInfo], terminated
    /// by address 0)`. See [`crate::trap`].
    pub const SET_TRAP_TABLE: u64 = 0;
    /// Batched page-table updates: `mmu_update(ptr to [MmuUpdate], count,
    /// done_ptr or 0, DOMID_SELF)`. See [`crate::mmu`].
    pub const MMU_UPDATE: u64 = 1;
    /// Set the guest-kernel stack used for traps and events from ring 3 and
    /// for the direct syscall gate: `stack_switch(ss, rsp)`.
    pub const STACK_SWITCH: u64 = 3;
    /// `set_callbacks(event, failsafe, syscall)`: guest addresses of the event
    /// upcall, the failsafe callback and the bounced-`syscall` entry.
    pub const SET_CALLBACKS: u64 = 4;
    /// Memory reservation and memory-map queries: see [`crate::memory`].
    pub const MEMORY_OP: u64 = 12;
    /// `multicall(ptr to [MulticallEntry], count)`: see [`crate::MulticallEntry`].
    pub const MULTICALL: u64 = 13;
    /// `update_va_mapping(va, new_pte, flags)`: see [`crate::mmu`].
    pub const UPDATE_VA_MAPPING: u64 = 14;
    /// `set_timer_op(deadline_ns)`: one-shot timer in system time (0 cancels);
    /// fires `VIRQ_TIMER`.
    pub const SET_TIMER_OP: u64 = 15;
    /// Version and feature queries: see [`crate::version`].
    pub const XEN_VERSION: u64 = 17;
    /// Grant-table operations: `grant_table_op(cmd, ptr to an array of the
    /// command's struct, count)`. See [`crate::grant`].
    pub const GRANT_TABLE_OP: u64 = 20;
    /// Write to or read from the hypervisor console: see [`crate::console_io`].
    pub const CONSOLE_IO: u64 = 18;
    /// Per-vCPU operations (timers, run-state): see [`crate::vcpu`].
    pub const VCPU_OP: u64 = 24;
    /// `set_segment_base(which, base)`: see [`crate::segbase`].
    pub const SET_SEGMENT_BASE: u64 = 25;
    /// Extended MMU operations: `mmuext_op(ptr to [MmuextOp], count,
    /// done_ptr or 0, DOMID_SELF)`. See [`crate::mmu`].
    pub const MMUEXT_OP: u64 = 26;
    /// Scheduler operations: see [`crate::sched_op`].
    pub const SCHED_OP: u64 = 29;
    /// Event-channel operations: see [`crate::event`].
    pub const EVENT_CHANNEL_OP: u64 = 32;
    /// Physical-device operations (dom0 only): `physdev_op(cmd, ptr to
    /// the command's struct)`. See [`crate::physdev`].
    pub const PHYSDEV_OP: u64 = 33;
    /// Domain control (privileged): `domctl(cmd, ptr to the command's
    /// struct)`. See [`crate::domctl`].
    pub const DOMCTL: u64 = 36;
}

/// Domain id meaning "the calling domain" (Xen's `DOMID_SELF`).
pub const DOMID_SELF: u64 = 0x7ff0;

/// One call of a [`hypercall::MULTICALL`] batch (Xen's `multicall_entry`).
/// The hypervisor writes `result`; a nested multicall fails with `EINVAL`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: u64,
    /// Written by the hypervisor: the call's `rax`.
    pub result: u64,
    /// Arguments (the first five are used).
    pub args: [u64; 6],
}

const _: () = assert!(core::mem::size_of::<MulticallEntry>() == 64);

/// Most entries in one multicall.
pub const MULTICALL_MAX: u64 = 64;

/// `set_segment_base` selectors (Xen's `SEGBASE_*` numbering).
///
/// Each domain has one FS base and one GS base, kept by the hypervisor across
/// switches. Ring 1 cannot execute `swapgs` and returns to ring 3 without
/// the hypervisor, so there is no separate kernel GS base: a guest kernel
/// that wants per-process values sets them when it switches processes.
pub mod segbase {
    /// FS base.
    pub const FS: u64 = 0;
    /// GS base.
    pub const GS: u64 = 1;
}

/// `console_io` sub-commands (`cmd` in `rdi`).
pub mod console_io {
    /// `console_io(WRITE, len, buf)`: write `len` bytes from guest address
    /// `buf`. Returns the number of bytes written.
    pub const WRITE: u64 = 0;
    /// `console_io(READ, len, buf)`: read up to `len` bytes of console input
    /// into `buf` without blocking; returns the count. Privileged domains
    /// only (`-EPERM` otherwise).
    pub const READ: u64 = 1;
    /// `console_io(WRITE_AS, len | domid << 32, buf)`: as `WRITE`, as the
    /// output of domain `domid` (tagged with its name, within its rate):
    /// the privileged domain's console daemon passing on what it drained
    /// from a console it took over (`domctl` `CONSOLE_TAKEOVER`; any other
    /// domain is `-EINVAL`, an unprivileged caller `-EPERM`).
    pub const WRITE_AS: u64 = 2;
    /// Largest single write; longer writes return `-EINVAL`.
    pub const MAX_WRITE: u64 = 4096;
}

/// `sched_op` sub-commands (`cmd` in `rdi`, argument in `rsi`).
pub mod sched_op {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
    /// Give up the rest of the time slice. Returns 0.
    pub const YIELD: u64 = 0;
    /// Sleep until an event is delivered. Returns 0.
    pub const BLOCK: u64 = 1;
    /// Shut the calling domain down. `rsi` is the reason
    /// ([`crate::shutdown_reason`]); unlike Xen it is passed by value, so
    /// there is no pointer to validate. Does not return.
    pub const SHUTDOWN: u64 = 2;
    /// Wait until one of a set of ports is pending, or a timeout:
    /// `rsi` points to a [`SchedPoll`]. Returns 0 (a port is pending or the
    /// timeout passed). With no ports it sleeps until the timeout (which
    /// must then be set: `EINVAL` otherwise).
    pub const POLL: u64 = 3;

    /// Argument of [`POLL`] (Xen's `sched_poll`).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct SchedPoll {
        /// Guest address of an array of u32 ports.
        pub ports: u64,
        /// Number of ports (at most [`POLL_MAX_PORTS`]).
        pub nr_ports: u32,
        /// Padding.
        pub pad: u32,
        /// Absolute system time (ns) at which to give up; 0 = never.
        pub timeout: u64,
    }

    const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);

    /// Most ports one poll may name.
    pub const POLL_MAX_PORTS: u32 = 128;
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
    /// Traps are bounced to handlers registered with `set_trap_table`.
    pub const TRAP_BOUNCE: u64 = 1 << 4;
    /// Events are delivered by upcall; `event_channel_op` binds VIRQs.
    pub const EVENTS: u64 = 1 << 5;
    /// Page tables are guest-managed under validation (`mmu_update`,
    /// `mmuext_op`, `update_va_mapping`).
    pub const DIRECT_PAGING: u64 = 1 << 6;
    /// Real-time and virtual-time one-shot timers.
    pub const TIMERS: u64 = 1 << 7;
    /// Ring-3 `int 0x80` goes straight to the guest kernel (no hypervisor),
    /// and `syscall` is bounced.
    pub const DIRECT_SYSCALL: u64 = 1 << 8;
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
