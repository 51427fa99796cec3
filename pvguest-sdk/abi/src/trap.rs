//! Trap bouncing: how exceptions, events and bounced system calls reach the
//! guest kernel.
//!
//! A guest kernel registers handlers with `set_trap_table` (an array of
//! [`TrapInfo`], terminated by an entry whose `address` is 0). When the guest
//! (ring 1 or its ring-3 application) takes an exception, the hypervisor
//! writes a [`BounceFrame`] on the guest kernel stack and enters the handler
//! in ring 1 with `rsp` pointing at the frame and every general-purpose
//! register as it was at the fault.
//!
//! # Which stack
//! - From ring 1: the current stack, below a 128-byte red zone, aligned down
//!   to 16 bytes.
//! - From ring 3: the kernel stack set with `stack_switch`.
//!
//! If the frame cannot be written (stack unmapped or read-only), or no
//! handler is registered, the domain is crashed and the reason reported.
//!
//! # Returning
//! The last five words of the frame are an `iretq` frame, so a handler
//! returns with `add rsp, 24; iretq` (the direct-return path; ring 1 may
//! `iretq` to ring 1 or 3). There is no `iret` hypercall.
//!
//! # Direct system calls
//! A [`TrapInfo`] for vector [`SYSCALL_GATE_VECTOR`] with DPL 3 installs a
//! gate that takes ring-3 `int 0x80` straight to the guest kernel in ring 1
//! (on the `stack_switch` stack), with no hypervisor on the path. That entry
//! pushes a plain CPU frame (`rip, cs, rflags, rsp, ss`), not a
//! [`BounceFrame`].

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// One `set_trap_table` entry (Xen's `trap_info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TrapInfo {
    /// Exception vector (0..=31), or [`SYSCALL_GATE_VECTOR`].
    pub vector: u8,
    /// Bits 0-1: the DPL (must be 3 for the syscall gate, ignored otherwise);
    /// [`TI_MASK_EVENTS`]: mask events on entry.
    pub flags: u8,
    /// Code selector: 0 or `GUEST_KERNEL_CS`.
    pub cs: u16,
    /// Padding.
    pub pad: u32,
    /// Handler address in the guest kernel; 0 ends the table.
    pub address: u64,
}

const _: () = assert!(size_of::<TrapInfo>() == 16);

/// [`TrapInfo::flags`]: set the event mask (`evtchn_upcall_mask`) on entry.
pub const TI_MASK_EVENTS: u8 = 1 << 2;

/// The one vector a guest may turn into a direct ring-3 → ring-1 gate.
pub const SYSCALL_GATE_VECTOR: u8 = 0x80;

/// Largest trap table accepted in one call.
pub const MAX_TRAP_TABLE: usize = 64;

/// [`BounceFrame::vector`] of an event upcall (not a CPU vector).
pub const UPCALL_VECTOR: u32 = 0x100;
/// [`BounceFrame::vector`] of a bounced `syscall` instruction.
pub const SYSCALL_VECTOR: u32 = 0x101;

/// What the hypervisor writes on the guest kernel stack for a bounced trap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BounceFrame {
    /// Exception vector, [`UPCALL_VECTOR`] or [`SYSCALL_VECTOR`].
    pub vector: u32,
    /// The event mask before this entry (restore it before returning).
    pub saved_upcall_mask: u32,
    /// CPU error code, or 0.
    pub error: u64,
    /// Faulting address for page faults, else 0.
    pub cr2: u64,
    /// Interrupted instruction (for `syscall`: the instruction after it).
    pub rip: u64,
    /// Interrupted code selector (RPL 1 or 3).
    pub cs: u64,
    /// Interrupted flags.
    pub rflags: u64,
    /// Interrupted stack pointer.
    pub rsp: u64,
    /// Interrupted stack selector.
    pub ss: u64,
}

const _: () = {
    assert!(size_of::<BounceFrame>() == 64);
    assert!(offset_of!(BounceFrame, rip) == 24);
    assert!(offset_of!(BounceFrame, ss) == 56);
};
