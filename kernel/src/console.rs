//! Per-domain console lines.
//!
//! Guest output is buffered per domain until a newline (or until the line is
//! full) and then printed whole, prefixed with the domain's name, so lines
//! from different domains never interleave mid-line. Guest bytes are hostile:
//! control characters (including terminal escape sequences) are shown as
//! `\xNN` and never reach the operator's terminal raw.

/// Longest line kept before it is flushed with a continuation mark.
pub const LINE_MAX: usize = 200;

/// A partial line of one domain.
pub struct LineBuffer {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuffer {
    /// An empty buffer.
    pub const fn new() -> Self {
        LineBuffer { buf: [0; LINE_MAX], len: 0 }
    }

    /// Appends guest bytes, calling `emit` with every completed line (without
    /// its newline, already sanitised to printable ASCII).
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&str)) {
        for &b in bytes {
            match b {
                b'\n' => self.flush(&mut emit),
                b'\r' => {}
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    let esc = [b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]];
                    let shown: &[u8] =
                        if b == b'\t' || (0x20..0x7f).contains(&b) { core::slice::from_ref(&b) } else { &esc };
                    if self.len + shown.len() > LINE_MAX {
                        self.flush(&mut emit);
                    }
                    self.buf[self.len..self.len + shown.len()].copy_from_slice(shown);
                    self.len += shown.len();
                }
            }
        }
    }

    /// Emits whatever is buffered (used when a domain ends mid-line).
    pub fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        // Only printable ASCII is ever stored, so this cannot fail.
        let line = core::str::from_utf8(&self.buf[..self.len]).unwrap_or("");
        emit(line);
        self.len = 0;
    }

    /// Whether a partial line is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn run(chunks: &[&[u8]]) -> Vec<String> {
        let mut lb = LineBuffer::new();
        let mut out = Vec::new();
        for c in chunks {
            lb.push(c, |l| out.push(String::from(l)));
        }
        out
    }

    #[test]
    fn joins_partial_writes() {
        assert_eq!(run(&[b"hel", b"lo\nwor", b"ld\n"]), ["hello", "world"]);
    }

    #[test]
    fn escapes_control_bytes() {
        assert_eq!(run(&[b"a\x1b[2Jb\x00\xff\r\n"]), ["a\\x1b[2Jb\\x00\\xff"]);
    }

    #[test]
    fn splits_overlong_lines() {
        let long = [b'x'; LINE_MAX + 5];
        let out = run(&[&long, b"\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(out[1].len(), 5);
    }
}
