//! Bouncing traps, events and system calls into the guest kernel.
//!
//! [`bounce`] is the one place that redirects a domain's saved registers to a
//! guest handler ([`bounce_iret`] is its core, on the `iretq` part of a frame
//! only, which the fast paths use on the CPU-made frame in place): it picks
//! the stack (current ring-1 stack below the red zone, or the `stack_switch`
//! stack when coming from ring 3), writes a
//! [`BounceFrame`] there through the guest-memory accessor, and points the
//! registers at the handler in ring 1. The write is checked like any other
//! guest access, so a guest with a broken stack cannot make the hypervisor
//! write anywhere else: the bounce fails and the caller crashes the domain.

use crate::mm::guest_mem::{GuestVa, GuestView, PhysMem, Remembered};
use crate::regs::{IretFrame, Regs, RFLAGS_AC, RFLAGS_DF, RFLAGS_NT, RFLAGS_TF};
use core::fmt;
use pvguest_abi::selectors::{GUEST_KERNEL_CS, GUEST_KERNEL_SS};
use pvguest_abi::trap::BounceFrame;
use zerocopy::IntoBytes;

/// Bytes below a ring-1 `rsp` that are never touched (the x86-64 SysV red
/// zone, which the precompiled `core` uses).
pub const RED_ZONE: u64 = 128;

/// Why a bounce could not be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BounceError {
    /// The guest registered no handler for this.
    NoHandler,
    /// From ring 3 with no kernel stack set (`stack_switch`).
    NoKernelStack,
    /// The frame could not be written at this address.
    StackFault(u64),
}

impl fmt::Display for BounceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BounceError::NoHandler => f.write_str("no handler registered"),
            BounceError::NoKernelStack => f.write_str("trap from ring 3 but no kernel stack set (stack_switch)"),
            BounceError::StackFault(a) => write!(f, "cannot write the trap frame to the kernel stack at {a:#x}"),
        }
    }
}

/// What is being bounced.
#[derive(Clone, Copy, Debug)]
pub struct Bounce {
    /// Handler address (already validated by [`crate::domain::vcpu`]).
    pub handler: u64,
    /// `BounceFrame::vector`.
    pub vector: u32,
    /// Error code.
    pub error: u64,
    /// CR2 for page faults.
    pub cr2: u64,
    /// Event mask before entry (reported in the frame).
    pub saved_upcall_mask: u32,
}

/// Redirects `regs` to `b.handler` with a [`BounceFrame`] on the guest kernel
/// stack. On error `regs` is unchanged.
pub fn bounce<M: PhysMem>(
    regs: &mut Regs,
    b: &Bounce,
    kernel_sp: Option<u64>,
    view: &mut GuestView<'_, M>,
) -> Result<(), BounceError> {
    let mut f = regs.iret();
    bounce_iret(&mut f, b, kernel_sp, view)?;
    regs.set_iret(f);
    Ok(())
}

/// [`bounce`] on the `iretq` part of a frame only (the general registers
/// are not read or changed by a bounce): what the fast paths use on the
/// CPU-made frame. On error `regs` is unchanged.
pub fn bounce_iret<M: PhysMem>(
    regs: &mut IretFrame,
    b: &Bounce,
    kernel_sp: Option<u64>,
    view: &mut GuestView<'_, M>,
) -> Result<(), BounceError> {
    bounce_iret_remembered(regs, b, kernel_sp, view, &mut None)
}

/// [`bounce_iret`], writing the frame through
/// [`GuestView::copy_to_remembered`] with `memo` (see
/// [`crate::mm::guest_mem`] for when a memo may be kept).
#[inline(always)] // every upcall and bounced syscall
pub fn bounce_iret_remembered<M: PhysMem>(
    regs: &mut IretFrame,
    b: &Bounce,
    kernel_sp: Option<u64>,
    view: &mut GuestView<'_, M>,
    memo: &mut Option<Remembered>,
) -> Result<(), BounceError> {
    if b.handler == 0 {
        return Err(BounceError::NoHandler);
    }
    let sp =
        if regs.ring() == 3 { kernel_sp.ok_or(BounceError::NoKernelStack)? } else { regs.rsp.wrapping_sub(RED_ZONE) }
            & !15;
    let frame_at = sp.wrapping_sub(64);
    let frame = BounceFrame {
        vector: b.vector,
        saved_upcall_mask: b.saved_upcall_mask,
        error: b.error,
        cr2: b.cr2,
        rip: regs.rip,
        cs: regs.cs,
        rflags: regs.rflags,
        rsp: regs.rsp,
        ss: regs.ss,
    };
    if frame_at > sp {
        return Err(BounceError::StackFault(frame_at));
    }
    view.copy_to_remembered(GuestVa(frame_at), frame.as_bytes(), memo)
        .map_err(|_| BounceError::StackFault(frame_at))?;
    regs.rip = b.handler;
    regs.cs = u64::from(GUEST_KERNEL_CS);
    regs.ss = u64::from(GUEST_KERNEL_SS);
    regs.rsp = frame_at;
    // The handler starts with clean flags (the frame keeps the originals for
    // the return): no single-step, DF clear (the ABI's string direction),
    // no nested-task or alignment-check surprises.
    regs.rflags &= !(RFLAGS_TF | RFLAGS_DF | RFLAGS_NT | RFLAGS_AC);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomId;
    use crate::mm::frames::{FrameInfo, FrameTable, Owner};
    use crate::mm::guest_mem::fake::FakeMem;
    use crate::mm::guest_mem::Access;
    use crate::mm::paging::{Pte, PteFlags};
    use pvguest_abi::layout::GUEST_KERNEL_BASE;

    /// Maps GUEST_KERNEL_BASE + [0, 8 pages) read-write to frames 10.. and
    /// page 8 read-only.
    fn setup(mem: &mut FakeMem) {
        let rw = PteFlags::PRESENT | PteFlags::WRITABLE;
        mem.write_u64(4096 + 256 * 8, Pte::new(2, rw).0);
        mem.write_u64(2 * 4096, Pte::new(3, rw).0);
        mem.write_u64(3 * 4096, Pte::new(4, rw).0);
        for i in 0..8 {
            mem.write_u64(4 * 4096 + i * 8, Pte::new(10 + i, rw).0);
        }
        mem.write_u64(4 * 4096 + 8 * 8, Pte::new(18, PteFlags::PRESENT).0);
    }

    fn frames(store: &mut [FrameInfo]) -> FrameTable<'_> {
        let mut t = FrameTable::new(store);
        t.add_free_range(0, 32);
        for _ in 0..32 {
            t.alloc(Owner::Domain(DomId::of(1))).unwrap();
        }
        t
    }

    const B: Bounce =
        Bounce { handler: GUEST_KERNEL_BASE + 0x42, vector: 14, error: 2, cr2: 0xdead, saved_upcall_mask: 0 };

    #[test]
    fn ring1_bounce_skips_red_zone_and_writes_iret_frame() {
        let mut mem = FakeMem::default();
        setup(&mut mem);
        let mut store = [FrameInfo::RESERVED; 32];
        let t = frames(&mut store);
        let mut view = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        let rsp = GUEST_KERNEL_BASE + 0x4008;
        let mut r = Regs { rip: 0x1234, cs: 0x19, rflags: 0x302, rsp, ss: 0x21, rax: 7, ..Regs::default() };
        bounce(&mut r, &B, None, &mut view).unwrap();
        assert_eq!(r.rip, B.handler);
        assert_eq!(r.rsp, ((rsp - RED_ZONE) & !15) - 64);
        assert_eq!(r.rflags, 0x202, "TF cleared, IF kept");
        let mut d = Regs {
            rip: 0x1234,
            cs: 0x19,
            rflags: 0x202 | RFLAGS_DF | RFLAGS_AC | RFLAGS_NT,
            rsp,
            ss: 0x21,
            ..Regs::default()
        };
        bounce(&mut d, &B, None, &mut view).unwrap();
        assert_eq!(d.rflags, 0x202, "DF, AC and NT cleared for the handler");
        assert_eq!(r.rax, 7, "general registers untouched");
        let mut f = [0u8; 64];
        view.copy_from(GuestVa(r.rsp), &mut f).unwrap();
        assert_eq!(u32::from_le_bytes(f[0..4].try_into().unwrap()), 14);
        assert_eq!(u64::from_le_bytes(f[16..24].try_into().unwrap()), 0xdead);
        assert_eq!(u64::from_le_bytes(f[24..32].try_into().unwrap()), 0x1234);
        assert_eq!(u64::from_le_bytes(f[48..56].try_into().unwrap()), rsp);
    }

    #[test]
    fn ring3_bounce_uses_kernel_stack_or_fails() {
        let mut mem = FakeMem::default();
        setup(&mut mem);
        let mut store = [FrameInfo::RESERVED; 32];
        let t = frames(&mut store);
        let mut view = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        let mut r = Regs { rip: 0x400000, cs: 0x33, rsp: 0x7000, ss: 0x2b, ..Regs::default() };
        let before = r;
        assert_eq!(bounce(&mut r, &B, None, &mut view), Err(BounceError::NoKernelStack));
        assert_eq!(r, before);
        bounce(&mut r, &B, Some(GUEST_KERNEL_BASE + 0x8000), &mut view).unwrap();
        assert_eq!(r.rsp, GUEST_KERNEL_BASE + 0x8000 - 64);
        assert_eq!(r.cs, u64::from(GUEST_KERNEL_CS));
    }

    #[test]
    fn a_remembered_stack_page_gives_the_same_bounce_and_is_used_only_for_its_view() {
        let mut mem = FakeMem::default();
        setup(&mut mem);
        let mut store = [FrameInfo::RESERVED; 32];
        let t = frames(&mut store);
        let sp = Some(GUEST_KERNEL_BASE + 0x8000);
        let user = Regs { rip: 0x400000, cs: 0x33, rsp: 0x7000, ss: 0x2b, ..Regs::default() }.iret();
        let mut memo = None;
        let mut view = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        let (mut a, mut b) = (user, user);
        bounce_iret(&mut a, &B, sp, &mut view).unwrap();
        bounce_iret_remembered(&mut b, &B, sp, &mut view, &mut memo).unwrap();
        assert_eq!(a, b);
        let m = memo.expect("the walk was remembered");
        let mut c = user;
        bounce_iret_remembered(&mut c, &B, sp, &mut view, &mut memo).unwrap();
        assert_eq!((c, memo), (a, Some(m)), "answered from the memo");
        // Another domain's view (same root number) does not use it: its walk
        // fails on ownership.
        let mut other = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(2) };
        let mut d = user;
        assert!(bounce_iret_remembered(&mut d, &B, sp, &mut other, &mut memo).is_err());
        assert_eq!(d, user);
        // Nor does a read-only access of the same page answer a write.
        let mut view = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        let mut ro = None;
        view.translate_remembered(GuestVa(GUEST_KERNEL_BASE + 8 * 4096), Access::KERNEL_READ, &mut ro).unwrap();
        let mut e = Regs { cs: 0x19, rsp: GUEST_KERNEL_BASE + 9 * 4096 - 8, ..Regs::default() }.iret();
        let frame_page = ((e.rsp - RED_ZONE) & !15) - 64;
        assert_eq!(
            frame_page >> 12,
            (GUEST_KERNEL_BASE + 8 * 4096) >> 12,
            "the frame would land in the read-only page"
        );
        assert!(bounce_iret_remembered(&mut e, &B, None, &mut view, &mut ro).is_err(), "page 8 is read-only");
    }

    #[test]
    fn unwritable_stacks_fail_without_side_effects() {
        let mut mem = FakeMem::default();
        setup(&mut mem);
        let mut store = [FrameInfo::RESERVED; 32];
        let t = frames(&mut store);
        let mut view = GuestView { mem: &mut mem, frames: &t, root: 1, dom: DomId::of(1) };
        for rsp in [GUEST_KERNEL_BASE + 9 * 4096 + 200, GUEST_KERNEL_BASE + 0x20, 0, 0xffff_ff80_0000_0100] {
            let mut r = Regs { rip: 1, cs: 0x19, rsp, ss: 0x21, ..Regs::default() };
            let before = r;
            assert!(matches!(bounce(&mut r, &B, None, &mut view), Err(BounceError::StackFault(_))), "rsp {rsp:#x}");
            assert_eq!(r, before);
        }
        let mut r = Regs { cs: 0x19, rsp: GUEST_KERNEL_BASE + 0x4000, ..Regs::default() };
        let nohandler = Bounce { handler: 0, ..B };
        assert_eq!(bounce(&mut r, &nohandler, None, &mut view), Err(BounceError::NoHandler));
    }
}
