//! I/O ports for the privileged domain: emulated on #GP, as Xen does.
//!
//! Guests run with IOPL 0 and no I/O bitmap in the TSS, so every `in` and
//! `out` a guest executes raises #GP. The hypervisor then looks at the
//! faulting instruction (in the domain's own memory, through the validated
//! guest-memory accessor) and, for dom0 only, performs it if every port it
//! touches lies inside an I/O BAR of a PCI function given to dom0 that
//! decodes I/O ([`crate::pci::Pci::io_owner`]). Those BARs can never sit
//! on the hypervisor's ports: PCI rule 5 keeps them off the legacy chipset
//! ports (PIC, PIT, RTC, the debug exit), COM1 and PCI configuration
//! ([`crate::pci::IO_FORBIDDEN`]), and [`crate::pci::Pci::io_owner`]
//! checks that list again. Anything else (a domU, a port no given BAR
//! holds, an instruction that is not a plain `in`/`out`) is bounced to
//! the guest as the #GP it was, or crashes the domain if it has no
//! handler: the hypervisor and other domains are never touched.
//!
//! Why #GP emulation and not a per-domain TSS I/O bitmap: the bitmap
//! would need an 8 KiB bitmap per privileged domain swapped in on every
//! switch, and would let dom0 reach a port the moment a BAR moves onto it
//! (the bitmap must then be rebuilt on every BAR write). Emulation checks
//! the live BAR record on each access, costs nothing on switches, and
//! device register I/O through ports is rare (virtio uses memory BARs).
//!
//! Decoded: `in`/`out` with an 8-bit immediate port (`E4`-`E7`) or the port
//! in `dx` (`EC`-`EF`), byte or operand-sized (a `66` prefix makes it 16
//! bits; otherwise 32), with at most one `66` prefix. String forms
//! (`ins`/`outs`), `rep` and other prefixes are not emulated (#GP goes to
//! the guest). This module is pure: [`decode`] reads bytes the caller
//! copied out of guest memory and [`PortOp::complete_in`] merges a value
//! into `rax`; `crate::hv` does the rest.

/// An `in` or `out` instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortOp {
    /// `true` for `out` (guest to device).
    pub out: bool,
    /// Bytes moved: 1, 2 or 4.
    pub size: u8,
    /// The port, if an immediate (else it is in `dx`).
    pub imm_port: Option<u16>,
    /// Length of the instruction in bytes (what `rip` advances by).
    pub len: u8,
}

/// Longest instruction [`decode`] accepts (prefix, opcode, immediate).
pub const MAX_LEN: usize = 3;

/// Decodes the instruction starting at `bytes[0]` (`bytes` may be
/// shorter than [`MAX_LEN`] near the end of readable memory).
pub fn decode(bytes: &[u8]) -> Option<PortOp> {
    let (wide16, rest) = match bytes.first()? {
        0x66 => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    let prefix = u8::from(wide16);
    let op = *rest.first()?;
    let operand = if wide16 { 2 } else { 4 };
    let (out, size, imm) = match op {
        0xe4 => (false, 1, true),
        0xe5 => (false, operand, true),
        0xe6 => (true, 1, true),
        0xe7 => (true, operand, true),
        0xec => (false, 1, false),
        0xed => (false, operand, false),
        0xee => (true, 1, false),
        0xef => (true, operand, false),
        _ => return None,
    };
    if size == 1 && wide16 {
        return None; // a 66 prefix on a byte form: not something compilers emit
    }
    if imm {
        let port = *rest.get(1)?;
        Some(PortOp { out, size, imm_port: Some(u16::from(port)), len: prefix + 2 })
    } else {
        Some(PortOp { out, size, imm_port: None, len: prefix + 1 })
    }
}

impl PortOp {
    /// The port it touches, given the guest's `rdx`.
    pub fn port(&self, rdx: u64) -> u16 {
        self.imm_port.unwrap_or(rdx as u16)
    }

    /// The value an `out` writes, from the guest's `rax`.
    pub fn out_value(&self, rax: u64) -> u32 {
        match self.size {
            1 => rax as u8 as u32,
            2 => rax as u16 as u32,
            _ => rax as u32,
        }
    }

    /// `rax` after an `in` read `value`: `al` or `ax` replaced with the
    /// rest kept; a 32-bit read zero-extends into the whole register, as
    /// the CPU does.
    pub fn complete_in(&self, rax: u64, value: u32) -> u64 {
        match self.size {
            1 => (rax & !0xff) | u64::from(value & 0xff),
            2 => (rax & !0xffff) | u64::from(value & 0xffff),
            _ => u64::from(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plain_form_decodes() {
        let imm = |out, size, len| Some(PortOp { out, size, imm_port: Some(0x70), len });
        let dx = |out, size, len| Some(PortOp { out, size, imm_port: None, len });
        assert_eq!(decode(&[0xe4, 0x70]), imm(false, 1, 2));
        assert_eq!(decode(&[0xe5, 0x70]), imm(false, 4, 2));
        assert_eq!(decode(&[0x66, 0xe5, 0x70]), imm(false, 2, 3));
        assert_eq!(decode(&[0xe6, 0x70]), imm(true, 1, 2));
        assert_eq!(decode(&[0xe7, 0x70]), imm(true, 4, 2));
        assert_eq!(decode(&[0xec]), dx(false, 1, 1));
        assert_eq!(decode(&[0xed]), dx(false, 4, 1));
        assert_eq!(decode(&[0x66, 0xed]), dx(false, 2, 2));
        assert_eq!(decode(&[0xee]), dx(true, 1, 1));
        assert_eq!(decode(&[0x66, 0xef]), dx(true, 2, 2));
    }

    #[test]
    fn other_instructions_string_forms_and_truncation_are_not_emulated() {
        for bytes in [
            &[0x6c][..],         // insb
            &[0x6f],             // outsd
            &[0xf3, 0x6c],       // rep insb
            &[0xf3, 0xec],       // rep in: a prefix we do not take
            &[0x66, 0x66, 0xed], // two prefixes
            &[0x66, 0xec],       // 66 on a byte form
            &[0xe4],             // immediate missing
            &[0x66],             // nothing after the prefix
            &[],
            &[0x0f, 0x0b], // ud2
            &[0xfa],       // cli
        ] {
            assert_eq!(decode(bytes), None, "{bytes:02x?}");
        }
    }

    #[test]
    fn values_move_like_the_cpu_moves_them() {
        let b = decode(&[0xec]).unwrap();
        let w = decode(&[0x66, 0xed]).unwrap();
        let d = decode(&[0xed]).unwrap();
        let rax = 0x1122_3344_5566_7788;
        assert_eq!(b.complete_in(rax, 0xab), 0x1122_3344_5566_77ab);
        assert_eq!(w.complete_in(rax, 0xabcd), 0x1122_3344_5566_abcd);
        assert_eq!(d.complete_in(rax, 0xdead_beef), 0xdead_beef);
        assert_eq!(b.out_value(rax), 0x88);
        assert_eq!(w.out_value(rax), 0x7788);
        assert_eq!(d.out_value(rax), 0x5566_7788);
        assert_eq!(b.port(0xffff_0000_0000_0cf8), 0x0cf8);
        assert_eq!(decode(&[0xe4, 0x70]).unwrap().port(0x1234), 0x70);
    }
}
