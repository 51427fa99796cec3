//! xs_wire-compatible framing: headers, message types, error names, the
//! incremental [`Framer`] and the encoding helpers.
//!
//! # The frame
//! Every message, in both directions, is a 16-byte header followed by
//! `len` payload bytes:
//!
//! ```text
//! offset 0  type   u32 LE   one of MsgType (Xen's enum xsd_sockmsg_type)
//! offset 4  req_id u32 LE   chosen by the client, echoed in the reply
//! offset 8  tx_id  u32 LE   0, or a transaction id from TRANSACTION_START
//! offset 12 len    u32 LE   payload length, at most PAYLOAD_MAX (4096)
//! ```
//!
//! Payloads are NUL-terminated strings where the protocol says so (paths,
//! tokens, domids, perms); the value of a WRITE and the reply to a READ are
//! raw bytes. Errors travel as an `ERROR` message whose payload is the
//! error's name and a NUL, e.g. `"ENOENT\0"` ([`XsError::name`]).
//!
//! # Framing rules (what the [`Framer`] guarantees)
//! - W1. The framer is fed arbitrary chunks (one byte at a time or many
//!   messages at once) and yields each complete frame exactly once; it never
//!   holds more than one header and one payload (`HEADER_LEN + limit`
//!   bytes), whatever the peer sends.
//! - W2. `len > PAYLOAD_MAX` cannot be resynchronised (the length is the
//!   only delimiter, and Xen's header calls violating it "very bad"): the
//!   framer yields [`FrameError::TooLong`] and is broken from then on; it
//!   consumes nothing more. The store answers `E2BIG` once and marks the
//!   connection broken — the peer's own problem, nobody else's.
//! - W3. `limit < len <= PAYLOAD_MAX` (a connection configured with a smaller
//!   message quota) is skipped without being stored and yields
//!   [`Frame::Oversized`]; the store answers `E2BIG` and carries on.
//! - W4. The type is *not* checked here: an unknown type is a complete,
//!   well-delimited frame, and the store answers it with `EINVAL` (as Xen
//!   does) and carries on.

use alloc::vec::Vec;
use core::fmt;

/// Size of the message header.
pub const HEADER_LEN: usize = 16;
/// Largest payload of any message (Xen's `XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Largest message on the wire: a header and a full payload.
pub const MSG_MAX: usize = HEADER_LEN + PAYLOAD_MAX;

/// Message types, with Xen's numbering (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`): not served, `ENOSYS`.
    Control = 0,
    /// List a node's children.
    Directory = 1,
    /// Read a node's value.
    Read = 2,
    /// Read a node's permissions.
    GetPerms = 3,
    /// Register a watch.
    Watch = 4,
    /// Remove a watch.
    Unwatch = 5,
    /// Open a transaction.
    TransactionStart = 6,
    /// Commit (`"T"`) or abort (`"F"`) a transaction.
    TransactionEnd = 7,
    /// Privileged: a new domain's connection exists.
    Introduce = 8,
    /// Privileged: a domain's connection is gone.
    Release = 9,
    /// The home path of a domain.
    GetDomainPath = 10,
    /// Write a node's value, creating it and missing parents.
    Write = 11,
    /// Create a node (and missing parents) with an empty value.
    Mkdir = 12,
    /// Remove a subtree.
    Rm = 13,
    /// Replace a node's permissions.
    SetPerms = 14,
    /// Server to client: a watch fired.
    WatchEvent = 15,
    /// Server to client: the request failed.
    Error = 16,
    /// Privileged: is this domain introduced?
    IsDomainIntroduced = 17,
    /// Not served, `ENOSYS`.
    Resume = 18,
    /// Not served, `ENOSYS`.
    SetTarget = 19,
    /// `XS_RESTRICT` (obsolete in Xen): not served, `ENOSYS`.
    Restrict = 20,
    /// Remove all of the caller's watches and transactions.
    ResetWatches = 21,
    /// A slice of a long children listing.
    DirectoryPart = 22,
}

impl MsgType {
    /// The type with this wire number, if there is one.
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            20 => Restrict,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// An error as it travels in an `ERROR` reply, by name (Xen's `xsd_errors`).
///
/// Which error answers which input is listed in the crate docs; in short:
/// malformed input is `EINVAL`, a permission is `EACCES`, a quota is
/// `ENOSPC`, a message over the size limit is `E2BIG`, a transaction
/// conflict is `EAGAIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum XsError {
    /// Malformed request: bad path, unterminated string, bad argument, unknown type.
    Inval,
    /// The caller's permissions do not allow this.
    Acces,
    /// Already exists (a duplicate watch).
    Exist,
    /// Is a directory (not produced by this store; decoded for clients).
    IsDir,
    /// No such node, watch or transaction.
    NoEnt,
    /// Out of memory (not produced by this store; decoded for clients).
    NoMem,
    /// A quota is exhausted (nodes, value size, watches, transactions, transaction size).
    NoSpc,
    /// I/O error (not produced by this store; decoded for clients).
    Io,
    /// Not empty (not produced by this store; decoded for clients).
    NotEmpty,
    /// The operation is not implemented.
    NoSys,
    /// Read-only (not produced by this store; decoded for clients).
    RoFs,
    /// A transaction start inside a transaction.
    Busy,
    /// The transaction conflicted with a change made since it started; retry it.
    Again,
    /// Already connected (not produced by this store; decoded for clients).
    IsConn,
    /// A message, listing, token or reply is over its size limit.
    TooBig,
    /// An unprivileged domain tried to give a node away (change its owner).
    Perm,
}

impl XsError {
    /// Every error, in `xsd_errors` order (with `EPERM` last).
    pub const ALL: [XsError; 16] = [
        XsError::Inval,
        XsError::Acces,
        XsError::Exist,
        XsError::IsDir,
        XsError::NoEnt,
        XsError::NoMem,
        XsError::NoSpc,
        XsError::Io,
        XsError::NotEmpty,
        XsError::NoSys,
        XsError::RoFs,
        XsError::Busy,
        XsError::Again,
        XsError::IsConn,
        XsError::TooBig,
        XsError::Perm,
    ];

    /// The error's name as on the wire, without the NUL.
    pub fn name(self) -> &'static str {
        match self {
            XsError::Inval => "EINVAL",
            XsError::Acces => "EACCES",
            XsError::Exist => "EEXIST",
            XsError::IsDir => "EISDIR",
            XsError::NoEnt => "ENOENT",
            XsError::NoMem => "ENOMEM",
            XsError::NoSpc => "ENOSPC",
            XsError::Io => "EIO",
            XsError::NotEmpty => "ENOTEMPTY",
            XsError::NoSys => "ENOSYS",
            XsError::RoFs => "EROFS",
            XsError::Busy => "EBUSY",
            XsError::Again => "EAGAIN",
            XsError::IsConn => "EISCONN",
            XsError::TooBig => "E2BIG",
            XsError::Perm => "EPERM",
        }
    }

    /// The error named by an `ERROR` payload (with or without its NUL).
    pub fn from_name(payload: &[u8]) -> Option<Self> {
        let name = payload.strip_suffix(b"\0").unwrap_or(payload);
        XsError::ALL.into_iter().find(|e| e.name().as_bytes() == name)
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message header (`struct xsd_sockmsg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// The wire type number (see [`MsgType`]); may be unknown.
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// The 16 wire bytes of the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decode 16 wire bytes.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header { ty: word(0), req_id: word(4), tx_id: word(8), len: word(12) }
    }

    /// The message type, if the number is known.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.ty)
    }
}

/// A complete message: header and payload (`payload.len() == header.len`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The header as received.
    pub header: Header,
    /// The payload, at most the framer's limit.
    pub payload: Vec<u8>,
}

/// What the framer yields for one well-delimited frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete message within the limit.
    Message(Message),
    /// A frame whose payload was over the framer's limit but within
    /// `PAYLOAD_MAX`; its payload was skipped (W3).
    Oversized(Header),
}

/// A framing error: the stream cannot be delimited any more (W2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The header announced more than `PAYLOAD_MAX` bytes.
    TooLong(Header),
}

/// Incremental per-connection frame decoder (W1–W4).
#[derive(Clone, Debug)]
pub struct Framer {
    limit: usize,
    hdr: [u8; HEADER_LEN],
    hdr_fill: usize,
    header: Header,
    payload: Vec<u8>,
    /// Payload bytes still to come for the current frame.
    remaining: usize,
    skipping: bool,
    broken: bool,
}

impl Framer {
    /// A framer that stores payloads up to `limit` bytes (clamped to `PAYLOAD_MAX`).
    pub fn new(limit: usize) -> Self {
        Framer {
            limit: limit.min(PAYLOAD_MAX),
            hdr: [0; HEADER_LEN],
            hdr_fill: 0,
            header: Header::default(),
            payload: Vec::new(),
            remaining: 0,
            skipping: false,
            broken: false,
        }
    }

    /// Whether a [`FrameError`] ended this stream.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes held for the frame in progress (at most `HEADER_LEN + limit`).
    pub fn buffered(&self) -> usize {
        self.hdr_fill + self.payload.len()
    }

    /// Feed bytes; returns how many were consumed and, if a frame completed
    /// (or the stream broke), what it was. Stops right after one frame so
    /// the caller can act on it before feeding the rest. A broken framer
    /// consumes nothing.
    pub fn push(&mut self, bytes: &[u8]) -> (usize, Option<Result<Frame, FrameError>>) {
        if self.broken {
            return (0, None);
        }
        let mut used = 0;
        {
            if self.hdr_fill < HEADER_LEN {
                let n = (HEADER_LEN - self.hdr_fill).min(bytes.len() - used);
                self.hdr[self.hdr_fill..self.hdr_fill + n].copy_from_slice(&bytes[used..used + n]);
                self.hdr_fill += n;
                used += n;
                if self.hdr_fill < HEADER_LEN {
                    return (used, None);
                }
                let h = Header::from_bytes(&self.hdr);
                let len = h.len as usize;
                if len > PAYLOAD_MAX {
                    self.broken = true;
                    self.hdr_fill = 0;
                    return (used, Some(Err(FrameError::TooLong(h))));
                }
                self.header = h;
                self.remaining = len;
                self.skipping = len > self.limit;
                if !self.skipping {
                    self.payload.reserve_exact(len);
                }
            }
            let n = self.remaining.min(bytes.len() - used);
            if !self.skipping {
                self.payload.extend_from_slice(&bytes[used..used + n]);
            }
            self.remaining -= n;
            used += n;
            if self.remaining > 0 {
                return (used, None);
            }
            // Frame complete.
            self.hdr_fill = 0;
            let header = self.header;
            let frame = if self.skipping {
                self.skipping = false;
                Frame::Oversized(header)
            } else {
                Frame::Message(Message { header, payload: core::mem::take(&mut self.payload) })
            };
            (used, Some(Ok(frame)))
        }
    }
}

/// Append one message made of `parts` (concatenated) to `out`.
///
/// Fails with `E2BIG` (and appends nothing) if the payload would exceed
/// `PAYLOAD_MAX`.
pub fn encode(out: &mut Vec<u8>, ty: u32, req_id: u32, tx_id: u32, parts: &[&[u8]]) -> Result<(), XsError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > PAYLOAD_MAX {
        return Err(XsError::TooBig);
    }
    let h = Header { ty, req_id, tx_id, len: len as u32 };
    out.extend_from_slice(&h.to_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(())
}

/// Split a payload into exactly `N` NUL-terminated strings (without their
/// NULs). Anything else — a missing final NUL, fewer or more strings — is
/// `EINVAL`.
pub fn strings<const N: usize>(payload: &[u8]) -> Result<[&[u8]; N], XsError> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut rest = payload;
    for slot in out.iter_mut() {
        let end = rest.iter().position(|&b| b == 0).ok_or(XsError::Inval)?;
        *slot = &rest[..end];
        rest = &rest[end + 1..];
    }
    if rest.is_empty() {
        Ok(out)
    } else {
        Err(XsError::Inval)
    }
}

/// Split a payload into one NUL-terminated string and the raw bytes after
/// it (WRITE's `path\0value`). A missing NUL is `EINVAL`.
pub fn string_then_rest(payload: &[u8]) -> Result<(&[u8], &[u8]), XsError> {
    let end = payload.iter().position(|&b| b == 0).ok_or(XsError::Inval)?;
    Ok((&payload[..end], &payload[end + 1..]))
}

/// Append the decimal digits of `v`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    let mut v = v;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend(digits[..n].iter().rev());
}

/// Parse a decimal number of at most 20 digits, no sign, no spaces.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn msg(ty: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, ty, 7, 0, &[payload]).unwrap();
        v
    }

    #[test]
    fn w1_byte_at_a_time_yields_each_frame_once() {
        let mut stream = msg(2, b"a\0");
        stream.extend(msg(1, b""));
        let mut f = Framer::new(PAYLOAD_MAX);
        let mut frames = Vec::new();
        for b in &stream {
            let (n, fr) = f.push(core::slice::from_ref(b));
            assert_eq!(n, 1);
            if let Some(fr) = fr {
                frames.push(fr.unwrap());
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[0],
            Frame::Message(Message { header: Header { ty: 2, req_id: 7, tx_id: 0, len: 2 }, payload: vec![b'a', 0] })
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn w1_push_stops_after_one_frame() {
        let mut stream = msg(2, b"a\0");
        let first = stream.len();
        stream.extend(msg(2, b"b\0"));
        let mut f = Framer::new(PAYLOAD_MAX);
        let (n, fr) = f.push(&stream);
        assert_eq!(n, first);
        assert!(matches!(fr, Some(Ok(Frame::Message(_)))));
    }

    #[test]
    fn w2_oversized_len_breaks_the_stream() {
        let h = Header { ty: 2, req_id: 1, tx_id: 0, len: PAYLOAD_MAX as u32 + 1 };
        let mut f = Framer::new(PAYLOAD_MAX);
        let (n, fr) = f.push(&h.to_bytes());
        assert_eq!(n, HEADER_LEN);
        assert_eq!(fr, Some(Err(FrameError::TooLong(h))));
        assert!(f.is_broken());
        assert_eq!(f.push(&msg(2, b"a\0")), (0, None));
    }

    #[test]
    fn w3_over_limit_payload_is_skipped_not_stored() {
        let mut f = Framer::new(8);
        let big = msg(11, &[b'x'; 100]);
        let (n, fr) = f.push(&big[..50]);
        assert_eq!((n, fr), (50, None));
        assert_eq!(f.buffered(), HEADER_LEN);
        let (_, fr) = f.push(&big[50..]);
        assert!(matches!(fr, Some(Ok(Frame::Oversized(h))) if h.len == 100));
    }

    #[test]
    fn w4_unknown_type_is_still_a_frame() {
        let mut f = Framer::new(PAYLOAD_MAX);
        let (_, fr) = f.push(&msg(999, b"x"));
        assert!(matches!(fr, Some(Ok(Frame::Message(m))) if m.header.msg_type().is_none()));
    }

    #[test]
    fn strings_require_exact_nul_termination() {
        assert_eq!(strings::<2>(b"a\0b\0"), Ok([&b"a"[..], &b"b"[..]]));
        assert_eq!(strings::<1>(b"a"), Err(XsError::Inval));
        assert_eq!(strings::<1>(b"a\0b"), Err(XsError::Inval));
        assert_eq!(strings::<2>(b"a\0"), Err(XsError::Inval));
        assert_eq!(string_then_rest(b"p\0v\0w"), Ok((&b"p"[..], &b"v\0w"[..])));
        assert_eq!(string_then_rest(b"p"), Err(XsError::Inval));
    }

    #[test]
    fn error_names_round_trip() {
        for e in XsError::ALL {
            assert_eq!(XsError::from_name(e.name().as_bytes()), Some(e));
        }
        assert_eq!(XsError::from_name(b"ENOENT\0"), Some(XsError::NoEnt));
        assert_eq!(XsError::from_name(b"EWHAT\0"), None);
    }

    #[test]
    fn decimal_round_trip() {
        for v in [0u64, 9, 10, 65535, u64::MAX] {
            let mut s = Vec::new();
            push_decimal(&mut s, v);
            assert_eq!(parse_decimal(&s), Some(v));
        }
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
    }

    #[test]
    fn encode_refuses_oversized_payload() {
        let mut out = Vec::new();
        assert_eq!(encode(&mut out, 2, 0, 0, &[&[0u8; PAYLOAD_MAX + 1]]), Err(XsError::TooBig));
        assert!(out.is_empty());
    }
}
