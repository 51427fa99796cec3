//! The register frame saved on every entry to the hypervisor.
//!
//! The entry code (`arch::entry`) builds this on the entry stack: the stub
//! pushes the vector and (if the CPU did not) a zero error code, the CPU has
//! pushed `rip, cs, rflags, rsp, ss`, and `entry_common` pushes the fifteen
//! general-purpose registers. The hypervisor keeps one per domain as that
//! domain's saved state; guests never see another domain's frame.

/// Saved registers, in stack order (lowest address first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// Vector pushed by the entry stub.
    pub vector: u64,
    /// CPU error code, or 0.
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// The part of a frame that `iretq` consumes, in stack order: where and
/// how the guest resumes. The fast paths redirect and sanitise only this
/// part of the CPU-made frame, in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IretFrame {
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = {
    assert!(core::mem::size_of::<Regs>() == 176);
    assert!(core::mem::offset_of!(Regs, rip) + core::mem::size_of::<IretFrame>() == 176);
    assert!(core::mem::offset_of!(Regs, vector) == 15 * 8);
    assert!(core::mem::offset_of!(Regs, cs) == 18 * 8);
};

/// 512-byte FXSAVE area (x87, MMX, SSE state) of one domain: saved by the
/// entry code, restored on the way out.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct FxArea(pub [u8; 512]);

/// The fields of an FXSAVE area's header that [`FxArea::initial`] sets
/// (Intel SDM vol. 1, table 10-2).
#[derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout)]
#[repr(C)]
struct FxHeader {
    fcw: u16,
    fsw: u16,
    ftw: u8,
    reserved: u8,
    fop: u16,
    fip: u64,
    fdp: u64,
    mxcsr: u32,
    mxcsr_mask: u32,
}

const _: () = assert!(core::mem::offset_of!(FxHeader, mxcsr) == 24);

impl FxArea {
    /// The state after `fninit` with MXCSR at its reset value (all SIMD
    /// exceptions masked): FCW = 0x37f, MXCSR = 0x1f80. (MXCSR_MASK is left
    /// 0: `fxrstor` ignores it.)
    pub fn initial() -> FxArea {
        use zerocopy::{FromZeros, IntoBytes};
        let mut h = FxHeader::new_zeroed();
        h.fcw = 0x37f;
        h.mxcsr = 0x1f80;
        let mut a = [0u8; 512];
        a[..size_of::<FxHeader>()].copy_from_slice(h.as_bytes());
        FxArea(a)
    }
}

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS bit 1, always set.
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.DF.
pub const RFLAGS_DF: u64 = 1 << 10;
/// RFLAGS.NT.
pub const RFLAGS_NT: u64 = 1 << 14;
/// RFLAGS.AC.
pub const RFLAGS_AC: u64 = 1 << 18;
/// RFLAGS bits a guest may hold: CF PF AF ZF SF TF DF OF AC ID. IF is forced
/// on; IOPL, NT, RF, VM, VIF and VIP are forced off.
pub const GUEST_RFLAGS: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x4_0000 | 0x20_0000;

impl Regs {
    /// The privilege level the frame returns to.
    pub const fn ring(&self) -> u8 {
        (self.cs & 3) as u8
    }

    /// The `iretq` part of the frame.
    pub const fn iret(&self) -> IretFrame {
        IretFrame { rip: self.rip, cs: self.cs, rflags: self.rflags, rsp: self.rsp, ss: self.ss }
    }

    /// Replaces the `iretq` part of the frame.
    pub fn set_iret(&mut self, f: IretFrame) {
        (self.rip, self.cs, self.rflags, self.rsp, self.ss) = (f.rip, f.cs, f.rflags, f.rsp, f.ss);
    }

    /// Makes the frame safe to `iretq` to ([`IretFrame::sanitize`]).
    pub fn sanitize(&mut self) -> bool {
        let mut f = self.iret();
        let ok = f.sanitize();
        self.set_iret(f);
        ok
    }
}

impl IretFrame {
    /// The privilege level the frame returns to.
    pub const fn ring(&self) -> u8 {
        (self.cs & 3) as u8
    }

    /// Makes the frame safe to `iretq` to: guest selectors only (a guest can
    /// never return to ring 0), IOPL 0, interrupts enabled. Returns false if
    /// `rip` is not canonical: `iretq` would fault in ring 0, so the caller
    /// must not enter the guest with it. (A non-canonical `rsp` is fine:
    /// `iretq` does not check it, and the guest's first stack access then
    /// faults in the guest.)
    pub fn sanitize(&mut self) -> bool {
        use pvguest_abi::selectors;
        if self.cs & 3 == 3 {
            self.cs = u64::from(selectors::GUEST_USER_CS);
            self.ss = u64::from(selectors::GUEST_USER_SS);
        } else {
            self.cs = u64::from(selectors::GUEST_KERNEL_CS);
            self.ss = u64::from(selectors::GUEST_KERNEL_SS);
        }
        self.rflags = (self.rflags & GUEST_RFLAGS) | RFLAGS_IF | RFLAGS_FIXED;
        pvguest_abi::layout::is_canonical(self.rip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvguest_abi::selectors;

    #[test]
    fn sanitize_never_returns_to_ring0_or_raises_iopl() {
        let mut r = Regs { cs: 0x08, ss: 0x10, rflags: 0x3000 | 0x4000 | 0x2_0000, rip: 0x1000, ..Regs::default() };
        assert!(r.sanitize());
        assert_eq!(r.cs, u64::from(selectors::GUEST_KERNEL_CS));
        assert_eq!(r.ss, u64::from(selectors::GUEST_KERNEL_SS));
        assert_eq!(r.rflags, RFLAGS_IF | RFLAGS_FIXED);
        let mut u = Regs { cs: 0x33, rflags: 0x1 | 0x100, ..Regs::default() };
        assert!(u.sanitize());
        assert_eq!(u.cs, u64::from(selectors::GUEST_USER_CS));
        assert_eq!(u.rflags, 0x1 | 0x100 | RFLAGS_IF | RFLAGS_FIXED);
        let mut bad = Regs { rip: 0x0000_8000_0000_0000, ..Regs::default() };
        assert!(!bad.sanitize());
        let mut odd_stack = Regs { rip: 0x1000, rsp: 0x8000_0000_0000_0000, ..Regs::default() };
        assert!(odd_stack.sanitize(), "iretq does not check rsp");
    }
}
