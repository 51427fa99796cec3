//! Xen's `xs_wire` framing: a 16-byte header `{type, req_id, tx_id, len}`
//! (little-endian u32s), then `len` payload bytes; strings in a payload end
//! with NUL; an error reply is type [`msg::ERROR`] with the error's name.
//!
//! Parsing here is the first check of every request: [`Header::parse`]
//! takes whatever bytes arrived, and the payload helpers refuse strings
//! without their NUL or that are not UTF-8 ([`crate::Error::Inval`]).

use crate::Error;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Bytes of a header.
pub const HEADER: usize = 16;
/// Largest payload (Xen's `XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// Message types (Xen's `xsd_sockmsg_type` numbers).
pub mod msg {
    pub const CONTROL: u32 = 0;
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const GET_PERMS: u32 = 3;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const INTRODUCE: u32 = 8;
    pub const RELEASE: u32 = 9;
    pub const GET_DOMAIN_PATH: u32 = 10;
    pub const WRITE: u32 = 11;
    pub const MKDIR: u32 = 12;
    pub const RM: u32 = 13;
    pub const SET_PERMS: u32 = 14;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
    pub const IS_DOMAIN_INTRODUCED: u32 = 17;
    pub const RESUME: u32 = 18;
    pub const SET_TARGET: u32 = 19;
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    /// The header at the start of `b`, if 16 bytes are there.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        (b.len() >= HEADER).then(|| Header { ty: w(0), req_id: w(4), tx_id: w(8), len: w(12) })
    }
}

/// Appends a message to `out`.
pub fn push(out: &mut VecDeque<u8>, ty: u32, req_id: u32, tx_id: u32, body: &[u8]) {
    for w in [ty, req_id, tx_id, body.len() as u32] {
        out.extend(w.to_le_bytes());
    }
    out.extend(body.iter().copied());
}

/// Appends the error reply `name` to the request `h`.
pub fn push_error(out: &mut VecDeque<u8>, h: &Header, name: &str) {
    let mut body = Vec::with_capacity(name.len() + 1);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    push(out, ERROR_TYPE, h.req_id, h.tx_id, &body);
}

const ERROR_TYPE: u32 = msg::ERROR;

/// The NUL-terminated strings of `p` (the last must end with NUL).
pub fn strings(p: &[u8]) -> Result<Vec<&str>, Error> {
    if p.last() != Some(&0) {
        return Err(Error::Inval);
    }
    p[..p.len() - 1].split(|&b| b == 0).map(|s| core::str::from_utf8(s).map_err(|_| Error::Inval)).collect()
}

/// The payload as exactly one NUL-terminated string.
pub fn one_string(p: &[u8]) -> Result<&str, Error> {
    match strings(p)?.as_slice() {
        [s] => Ok(s),
        _ => Err(Error::Inval),
    }
}

/// A NUL-terminated string, then raw bytes (`WRITE`'s path and value).
pub fn string_then_bytes(p: &[u8]) -> Result<(&str, &[u8]), Error> {
    let nul = p.iter().position(|&b| b == 0).ok_or(Error::Inval)?;
    let s = core::str::from_utf8(&p[..nul]).map_err(|_| Error::Inval)?;
    Ok((s, &p[nul + 1..]))
}
