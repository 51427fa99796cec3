//! Per-domain console lines and their rate limit.
//!
//! Guest output is buffered per domain until a newline (or until the line is
//! full) and then printed whole, prefixed with the domain's name, so lines
//! from different domains never interleave mid-line. Guest bytes are hostile:
//! control characters (including terminal escape sequences) are shown as
//! `\xNN` and never reach the operator's terminal raw.
//!
//! # Rate limit
//! Writing to the UART is the hypervisor's time, so each domain has a token
//! bucket ([`ConsoleOut`]): [`BURST_BYTES`] of output at once and
//! [`RATE_BYTES_PER_S`] after that, counted in bytes as written to the UART
//! (escapes, the domain tag and the line end included). A line that does
//! not fit is dropped whole and counted; the next line that fits is
//! preceded by `(N bytes dropped)`, so a flooding domain loses only its own
//! output and the operator sees that it did. The caller charges the work to
//! the writing domain (see [`crate::sched::account`]).
//!
//! # Bounded steps
//! Output is taken in steps of at most [`STEP_WORK`] units of work, about
//! ten instructions each: [`BYTE_WORK`] per guest byte taken (out of the
//! ring, escaped into the line) and one per UART byte written
//! ([`ConsoleOut::push_bounded`]). Before it takes a byte, a step that has
//! done work checks that the byte's worst case (the buffered line it may
//! complete, with its tag and a pending dropped-bytes notice, if the bucket
//! can pay for the line) still fits the budget, and ends otherwise. So a step never exceeds
//! `max(STEP_WORK, MAX_BYTE_WORK)` units, whatever the guest writes: a
//! newline flood, a line of control bytes and a long line cost the same
//! per unit. No byte is taken and then left unprocessed. The hypervisor
//! checks for other due work (a deadline) between steps, so these bounds,
//! in instructions, are the longest a guest's console output can hold up
//! another domain. (In time they assume a UART that takes bytes as fast as
//! it is given them, as QEMU's does; a real one at 115200 baud would spin
//! about 28 ms on a step's 326 bytes.)

/// Work units a console step may do (see the module docs): about 2500
/// instructions.
pub const STEP_WORK: usize = 256;

/// Work units of taking one guest byte (a ring read, the escape and line
/// checks: some 40 instructions, four UART bytes' worth).
pub const BYTE_WORK: usize = 4;

/// Most work one guest byte can cause: taking it, a dropped-bytes notice
/// and one full line, each line with the longest tag and its line end.
pub const MAX_BYTE_WORK: usize = BYTE_WORK + NOTICE_MAX + LINE_MAX + 2 * (TAG_MAX + 2);

/// Longest domain tag (`[name] `) a line carries.
pub const TAG_MAX: usize = 32 + 3;

/// Longest dropped-bytes notice.
pub const NOTICE_MAX: usize = 48;

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
            self.push_byte(b, &mut emit);
        }
    }

    /// Appends one guest byte; emits at most one line.
    pub fn push_byte(&mut self, b: u8, emit: &mut impl FnMut(&str)) {
        self.push_raw(b, &mut |line| emit(as_text(line)));
    }

    /// [`LineBuffer::push_byte`] with the completed line as bytes (printable
    /// ASCII), so a line that is dropped is never converted.
    #[inline]
    fn push_raw(&mut self, b: u8, emit: &mut impl FnMut(&[u8])) {
        match b {
            b'\n' => self.flush_raw(emit),
            b'\r' => {}
            b'\t' | 0x20..0x7f => {
                if self.len == LINE_MAX {
                    self.flush_raw(emit);
                }
                self.buf[self.len] = b;
                self.len += 1;
            }
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                if self.len + 4 > LINE_MAX {
                    self.flush_raw(emit);
                }
                // One 4-byte store (a slice copy would be a call).
                if let Some(dst) =
                    self.buf.get_mut(self.len..self.len + 4).and_then(|d| <&mut [u8; 4]>::try_from(d).ok())
                {
                    *dst = [b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]];
                    self.len += 4;
                }
            }
        }
    }

    /// Emits whatever is buffered (used when a domain ends mid-line).
    pub fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        self.flush_raw(&mut |line| emit(as_text(line)));
    }

    fn flush_raw(&mut self, emit: &mut impl FnMut(&[u8])) {
        emit(&self.buf[..self.len]);
        self.len = 0;
    }

    /// Whether a partial line is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A buffered line as text: only printable ASCII is ever stored, so the
/// conversion cannot fail (an empty line if it somehow did).
fn as_text(line: &[u8]) -> &str {
    core::str::from_utf8(line).unwrap_or("")
}

/// Work units a line's tag and line end count for (`per_line` UART
/// bytes, at most the longest tag's).
fn tag_work(per_line: u64) -> usize {
    per_line.min(TAG_MAX as u64 + 2) as usize
}

/// Output bytes a domain may print at once.
pub const BURST_BYTES: u64 = 64 * 1024;
/// Output bytes per second a domain may print after its burst.
pub const RATE_BYTES_PER_S: u64 = 32 * 1024;

/// One domain's console output: line assembly plus the rate limit.
pub struct ConsoleOut {
    line: LineBuffer,
    /// UART bytes each line costs besides its text (tag and line end).
    per_line: u64,
    tokens: u64,
    /// Time up to which tokens have been added.
    refilled_at: u64,
    /// Token-nanoseconds not yet worth a whole token.
    frac: u64,
    /// Guest bytes dropped since the last notice.
    dropped: u64,
}

impl ConsoleOut {
    /// A full bucket at time `now`, for lines that each cost `per_line`
    /// UART bytes besides their text (the domain tag and the line end; at
    /// most [`TAG_MAX`] + 2 count toward a step).
    pub const fn new(now: u64, per_line: u64) -> Self {
        ConsoleOut { line: LineBuffer::new(), per_line, tokens: BURST_BYTES, refilled_at: now, frac: 0, dropped: 0 }
    }

    fn refill(&mut self, now: u64) {
        let dt = now.saturating_sub(self.refilled_at);
        self.refilled_at = self.refilled_at.max(now);
        // Exact: credit is kept in token-nanoseconds, the remainder carried.
        let credit = u128::from(dt) * u128::from(RATE_BYTES_PER_S) + u128::from(self.frac);
        let add = credit / 1_000_000_000;
        self.frac = (credit % 1_000_000_000) as u64;
        self.tokens = (u128::from(self.tokens) + add).min(u128::from(BURST_BYTES)) as u64;
        if self.tokens == BURST_BYTES {
            self.frac = 0;
        }
    }

    /// Takes guest bytes at time `now`; `emit` gets each line to show
    /// (sanitised, without the domain tag), a dropped-bytes notice first
    /// when output was lost.
    pub fn push(&mut self, bytes: &[u8], now: u64, mut emit: impl FnMut(&str)) {
        let mut input = bytes.iter().copied();
        while !self.push_bounded(&mut input, now, usize::MAX, &mut emit).1 {}
    }

    /// One bounded step (see the module docs): takes guest bytes from
    /// `input` at time `now` until it ends or `budget` units of work are
    /// done, checked before each byte is taken, so no byte is taken and
    /// lost. Returns the units done and whether `input` ended.
    pub fn push_bounded(
        &mut self,
        input: &mut impl Iterator<Item = u8>,
        now: u64,
        budget: usize,
        mut emit: impl FnMut(&str),
    ) -> (usize, bool) {
        self.refill(now);
        let (tokens, dropped, per_line) = (&mut self.tokens, &mut self.dropped, self.per_line);
        let tag = tag_work(per_line);
        let mut work = 0usize;
        while work < budget {
            // The most the next byte can cost: taking it, and emitting the
            // buffered line (and a pending notice) if it completes it and
            // the bucket can pay for it (a line it cannot pay for is
            // dropped, at no cost; the bucket does not refill within a
            // step).
            let len = self.line.len;
            let shown = *tokens >= len as u64 + per_line;
            let line = if shown { len + tag + if *dropped > 0 { NOTICE_MAX + tag } else { 0 } } else { 0 };
            let worst = BYTE_WORK + line;
            if work > 0 && work + worst > budget {
                return (work, false);
            }
            let Some(b) = input.next() else { return (work, true) };
            work += BYTE_WORK;
            self.line.push_raw(b, &mut |l| work += Self::admit(tokens, dropped, per_line, l, &mut emit));
        }
        (work, false)
    }

    /// Shows what is buffered and any pending dropped-bytes notice (the
    /// domain ended), within the limit.
    pub fn flush(&mut self, now: u64, mut emit: impl FnMut(&str)) {
        self.refill(now);
        if !self.line.is_empty() {
            let (tokens, dropped, per_line) = (&mut self.tokens, &mut self.dropped, self.per_line);
            self.line.flush_raw(&mut |l| {
                Self::admit(tokens, dropped, per_line, l, &mut emit);
            });
        }
        if self.dropped > 0 {
            Self::notice(&mut self.dropped, &mut emit);
        }
    }

    /// Shows `line` if the bucket allows; returns the UART bytes written.
    /// A dropped line costs a comparison: it is not even converted.
    fn admit(tokens: &mut u64, dropped: &mut u64, per_line: u64, line: &[u8], emit: &mut impl FnMut(&str)) -> usize {
        let cost = line.len() as u64 + per_line;
        if *tokens < cost {
            *dropped += cost;
            return 0;
        }
        *tokens -= cost;
        let mut shown = 0;
        if *dropped > 0 {
            shown += Self::notice(dropped, emit) + tag_work(per_line);
        }
        emit(as_text(line));
        shown + line.len() + tag_work(per_line)
    }

    /// Emits the dropped-bytes notice; returns its length.
    fn notice(dropped: &mut u64, emit: &mut impl FnMut(&str)) -> usize {
        let mut msg: heapless::String<NOTICE_MAX> = heapless::String::new();
        let _ = core::fmt::Write::write_fmt(&mut msg, format_args!("({} bytes dropped)", *dropped));
        emit(&msg);
        *dropped = 0;
        msg.len()
    }

    /// Bytes dropped since the last notice.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn a_flood_loses_only_what_exceeds_the_bucket_and_says_so() {
        let mut c = ConsoleOut::new(0, 1);
        let mut out: Vec<String> = Vec::new();
        let line = [b'y'; 99];
        let mut shown = 0u64;
        for _ in 0..2_000 {
            c.push(&line, 0, |l| out.push(String::from(l)));
            c.push(b"\n", 0, |l| out.push(String::from(l)));
        }
        shown += out.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        assert_eq!(out.len() as u64, BURST_BYTES / 100, "the burst, in whole lines");
        assert!(shown <= BURST_BYTES);
        assert_eq!(c.dropped(), (2_000 - BURST_BYTES / 100) * 100);
        // One second later the rate allows RATE_BYTES_PER_S more; the notice
        // comes first.
        out.clear();
        c.push(b"after\n", 1_000_000_000, |l| out.push(String::from(l)));
        assert_eq!(out, [std::format!("({} bytes dropped)", (2_000 - BURST_BYTES / 100) * 100), "after".into()]);
        assert_eq!(c.dropped(), 0);
    }

    #[test]
    fn refill_is_exact_over_many_small_steps() {
        let mut c = ConsoleOut::new(0, 1);
        c.tokens = 0;
        // 1000 steps of 1 ms: exactly one second of tokens.
        for i in 1..=1000u64 {
            c.refill(i * 1_000_000);
        }
        assert_eq!(c.tokens, RATE_BYTES_PER_S);
    }

    #[test]
    fn flush_shows_a_partial_line_and_a_pending_notice() {
        let mut c = ConsoleOut::new(0, 1);
        c.tokens = 10;
        let mut out: Vec<String> = Vec::new();
        c.push(b"this line is too long\nok", 0, |l| out.push(String::from(l)));
        assert!(out.is_empty());
        c.flush(0, |l| out.push(String::from(l)));
        assert_eq!(out, ["(22 bytes dropped)", "ok"]);
    }

    /// Steps are bounded whatever the input (newline floods, control
    /// bytes, long lines, drops), and stepping loses or reorders nothing.
    #[test]
    fn bounded_steps_end_within_their_budget_and_lose_nothing() {
        let mut inputs: Vec<Vec<u8>> = vec![vec![b'\n'; 3000], vec![0x1b; 3000], vec![b'x'; 3000]];
        inputs.push((0..3000u32).map(|i| if i % 64 == 63 { b'\n' } else { (i % 32) as u8 }).collect());
        for input in inputs {
            let mut whole: Vec<String> = Vec::new();
            let mut c = ConsoleOut::new(0, 12);
            c.push(&input, 0, |l| whole.push(l.into()));
            let mut stepped: Vec<String> = Vec::new();
            let mut c = ConsoleOut::new(0, 12);
            let mut it = input.iter().copied();
            let mut steps = 0;
            loop {
                let (work, ended) = c.push_bounded(&mut it, 0, STEP_WORK, |l| stepped.push(l.into()));
                assert!(work <= STEP_WORK.max(MAX_BYTE_WORK), "a step did {work} units");
                steps += 1;
                if ended {
                    break;
                }
            }
            assert_eq!(stepped, whole);
            assert!(steps > 1, "3000 bytes take more than one step");
        }
    }

    #[test]
    fn a_throttled_domain_s_long_lines_take_whole_steps() {
        // An empty bucket: every line is dropped (counted), so it costs
        // nothing to emit and steps are not cut short for it.
        let mut c = ConsoleOut::new(0, 37);
        c.tokens = 0;
        c.dropped = 1;
        let input: Vec<u8> = (0..2002).map(|i| if i % 200 == 199 { b'\n' } else { b'y' }).collect();
        let mut it = input.iter().copied();
        let mut steps = 0;
        while !c.push_bounded(&mut it, 0, STEP_WORK, |_| panic!("nothing is shown")).1 {
            steps += 1;
        }
        assert!(steps <= 2002 * BYTE_WORK / STEP_WORK + 1, "{steps} steps for 2002 dropped bytes");
        assert!(c.dropped() > 2000);
    }

    #[test]
    fn a_step_bills_uart_bytes_tags_included() {
        let mut c = ConsoleOut::new(0, 12);
        let mut it = b"\n\n\n".iter().copied();
        let (work, ended) = c.push_bounded(&mut it, 0, usize::MAX, |_| {});
        assert!(ended);
        assert_eq!(work, 3 * BYTE_WORK + 3 * 12);
        assert_eq!(c.tokens, BURST_BYTES - 3 * 12);
    }

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
