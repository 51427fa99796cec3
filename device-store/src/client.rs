//! The client side: build requests, decode replies and watch events, so a
//! guest SDK is a thin transport wrapper around these helpers.
//!
//! A client trusts the server no more than the server trusts it: the
//! [`Decoder`] bounds what it buffers (W1–W2) and a malformed watch event is
//! an error, not a panic.

use alloc::vec::Vec;

use crate::perms::{DomId, Perms};
use crate::wire::{self, push_decimal, strings, Frame, FrameError, Framer, Header, Message, MsgType, XsError};

/// A request, borrowing its arguments. Paths are absolute or relative to
/// the caller's home; the server validates them.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// READ `path`.
    Read(&'a str),
    /// WRITE `path` = value.
    Write(&'a str, &'a [u8]),
    /// MKDIR `path`.
    Mkdir(&'a str),
    /// RM `path`.
    Rm(&'a str),
    /// DIRECTORY `path`.
    Directory(&'a str),
    /// DIRECTORY_PART `path` from byte offset.
    DirectoryPart(&'a str, u64),
    /// GET_PERMS `path`.
    GetPerms(&'a str),
    /// SET_PERMS `path`.
    SetPerms(&'a str, &'a Perms),
    /// WATCH `path` with a token.
    Watch(&'a str, &'a [u8]),
    /// UNWATCH `path` with a token.
    Unwatch(&'a str, &'a [u8]),
    /// TRANSACTION_START.
    TransactionStart,
    /// TRANSACTION_END: commit (true) or abort.
    TransactionEnd(bool),
    /// INTRODUCE (privileged).
    Introduce {
        /// The domain.
        domid: DomId,
        /// Its ring's frame.
        gfn: u64,
        /// Its event channel.
        port: u32,
    },
    /// RELEASE (privileged).
    Release(DomId),
    /// GET_DOMAIN_PATH.
    GetDomainPath(DomId),
    /// IS_DOMAIN_INTRODUCED (privileged).
    IsDomainIntroduced(DomId),
    /// RESET_WATCHES.
    ResetWatches,
}

fn dec(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    push_decimal(&mut out, v);
    out
}

impl Request<'_> {
    /// The wire type.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Read(_) => MsgType::Read,
            Request::Write(..) => MsgType::Write,
            Request::Mkdir(_) => MsgType::Mkdir,
            Request::Rm(_) => MsgType::Rm,
            Request::Directory(_) => MsgType::Directory,
            Request::DirectoryPart(..) => MsgType::DirectoryPart,
            Request::GetPerms(_) => MsgType::GetPerms,
            Request::SetPerms(..) => MsgType::SetPerms,
            Request::Watch(..) => MsgType::Watch,
            Request::Unwatch(..) => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd(_) => MsgType::TransactionEnd,
            Request::Introduce { .. } => MsgType::Introduce,
            Request::Release(_) => MsgType::Release,
            Request::GetDomainPath(_) => MsgType::GetDomainPath,
            Request::IsDomainIntroduced(_) => MsgType::IsDomainIntroduced,
            Request::ResetWatches => MsgType::ResetWatches,
        }
    }

    /// Append the request as one message. `EINVAL` if a string argument
    /// contains a NUL, `E2BIG` if the payload exceeds `PAYLOAD_MAX`.
    pub fn encode(&self, req_id: u32, tx_id: u32, out: &mut Vec<u8>) -> Result<(), XsError> {
        let nul: &[u8] = b"\0";
        let mut payload: Vec<u8> = Vec::new();
        let string = |s: &[u8], p: &mut Vec<u8>| -> Result<(), XsError> {
            if s.contains(&0) {
                return Err(XsError::Inval);
            }
            p.extend_from_slice(s);
            p.extend_from_slice(nul);
            Ok(())
        };
        match *self {
            Request::Read(p) | Request::Mkdir(p) | Request::Rm(p) | Request::Directory(p) | Request::GetPerms(p) => {
                string(p.as_bytes(), &mut payload)?
            }
            Request::Write(p, v) => {
                string(p.as_bytes(), &mut payload)?;
                payload.extend_from_slice(v);
            }
            Request::DirectoryPart(p, off) => {
                string(p.as_bytes(), &mut payload)?;
                string(&dec(off), &mut payload)?;
            }
            Request::SetPerms(p, perms) => {
                string(p.as_bytes(), &mut payload)?;
                perms.encode(&mut payload);
            }
            Request::Watch(p, t) | Request::Unwatch(p, t) => {
                string(p.as_bytes(), &mut payload)?;
                string(t, &mut payload)?;
            }
            Request::TransactionStart | Request::ResetWatches => payload.push(0),
            Request::TransactionEnd(commit) => string(if commit { b"T" } else { b"F" }, &mut payload)?,
            Request::Introduce { domid, gfn, port } => {
                string(&dec(u64::from(domid.get())), &mut payload)?;
                string(&dec(gfn), &mut payload)?;
                string(&dec(u64::from(port)), &mut payload)?;
            }
            Request::Release(d) | Request::GetDomainPath(d) | Request::IsDomainIntroduced(d) => {
                string(&dec(u64::from(d.get())), &mut payload)?
            }
        }
        wire::encode(out, self.msg_type() as u32, req_id, tx_id, &[&payload])
    }
}

/// A message from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A successful reply (its type is the request's).
    Ok {
        /// The header, with the request's `req_id`.
        header: Header,
        /// The payload (`"OK\0"`, a value, a listing...).
        payload: Vec<u8>,
    },
    /// An error reply; `error` is `None` for a name this crate does not know.
    Error {
        /// The header, with the request's `req_id`.
        header: Header,
        /// The error.
        error: Option<XsError>,
    },
    /// An asynchronous watch event.
    WatchEvent {
        /// The changed path (relative if the watch was).
        path: Vec<u8>,
        /// The watch's token.
        token: Vec<u8>,
    },
}

impl Reply {
    /// Classify a message; a watch event that is not `path\0token\0` is `EINVAL`.
    pub fn parse(m: Message) -> Result<Reply, XsError> {
        match m.header.msg_type() {
            Some(MsgType::Error) => Ok(Reply::Error { header: m.header, error: XsError::from_name(&m.payload) }),
            Some(MsgType::WatchEvent) => {
                let [p, t] = strings::<2>(&m.payload)?;
                Ok(Reply::WatchEvent { path: p.to_vec(), token: t.to_vec() })
            }
            _ => Ok(Reply::Ok { header: m.header, payload: m.payload }),
        }
    }
}

/// Incremental decoder of the server's byte stream.
#[derive(Clone, Debug)]
pub struct Decoder(Framer);

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for messages up to `PAYLOAD_MAX`.
    pub fn new() -> Self {
        Decoder(Framer::new(wire::PAYLOAD_MAX))
    }

    /// Feed bytes; returns how many were consumed and the message that
    /// completed, if any. A length over `PAYLOAD_MAX` is `E2BIG` and ends the stream.
    pub fn push(&mut self, bytes: &[u8]) -> (usize, Option<Result<Reply, XsError>>) {
        let (n, f) = self.0.push(bytes);
        let r = f.map(|f| match f {
            Ok(Frame::Message(m)) => Reply::parse(m),
            Ok(Frame::Oversized(_)) | Err(FrameError::TooLong(_)) => Err(XsError::TooBig),
        });
        (n, r)
    }

    /// Decode every complete message in `bytes` (partial tails are kept).
    pub fn push_all(&mut self, mut bytes: &[u8]) -> Vec<Result<Reply, XsError>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (n, r) = self.push(bytes);
            out.extend(r);
            if n == 0 {
                break;
            }
            bytes = &bytes[n..];
        }
        out
    }
}

/// The strings of a NUL-separated listing (a DIRECTORY reply).
pub fn split_list(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload.strip_suffix(b"\0").unwrap_or(payload).split(|&b| b == 0).filter(|s| !s.is_empty())
}

/// The id in a TRANSACTION_START reply.
pub fn parse_tx_id(payload: &[u8]) -> Result<u32, XsError> {
    let [s] = strings::<1>(payload)?;
    wire::parse_decimal(s).and_then(|v| u32::try_from(v).ok()).ok_or(XsError::Inval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn requests_encode_as_xs_wire() {
        let mut out = Vec::new();
        Request::Write("a/b", b"v\0x").encode(7, 3, &mut out).unwrap();
        let h = Header { ty: MsgType::Write as u32, req_id: 7, tx_id: 3, len: 7 };
        assert_eq!(&out[..16], &h.to_bytes());
        assert_eq!(&out[16..], b"a/b\0v\0x");
        out.clear();
        Request::Introduce { domid: DomId::new(5), gfn: 4096, port: 9 }.encode(1, 0, &mut out).unwrap();
        assert_eq!(&out[16..], b"5\x004096\x009\0");
        out.clear();
        Request::TransactionEnd(true).encode(1, 2, &mut out).unwrap();
        assert_eq!(&out[16..], b"T\0");
    }

    #[test]
    fn requests_with_nul_in_strings_are_einval() {
        let mut out = Vec::new();
        assert_eq!(Request::Read("a\0b").encode(1, 0, &mut out), Err(XsError::Inval));
        assert_eq!(Request::Watch("a", b"t\0").encode(1, 0, &mut out), Err(XsError::Inval));
        assert!(out.is_empty());
        let big = "a".repeat(5000);
        assert_eq!(Request::Read(&big).encode(1, 0, &mut out), Err(XsError::TooBig));
    }

    #[test]
    fn decoder_classifies_replies_errors_and_events() {
        let mut s = Vec::new();
        wire::encode(&mut s, MsgType::Read as u32, 1, 0, &[b"val"]).unwrap();
        wire::encode(&mut s, MsgType::Error as u32, 2, 0, &[b"EAGAIN\0"]).unwrap();
        wire::encode(&mut s, MsgType::WatchEvent as u32, 0, 0, &[b"p\0tok\0"]).unwrap();
        wire::encode(&mut s, MsgType::WatchEvent as u32, 0, 0, &[b"p\0tok"]).unwrap();
        let r = Decoder::new().push_all(&s);
        assert!(matches!(&r[0], Ok(Reply::Ok { payload, .. }) if payload == b"val"));
        assert!(matches!(&r[1], Ok(Reply::Error { error: Some(XsError::Again), .. })));
        assert_eq!(r[2], Ok(Reply::WatchEvent { path: b"p".to_vec(), token: b"tok".to_vec() }));
        assert_eq!(r[3], Err(XsError::Inval));
    }

    #[test]
    fn decoder_refuses_an_oversized_server_message() {
        let h = Header { ty: 2, req_id: 0, tx_id: 0, len: 1 << 20 };
        let r = Decoder::new().push_all(&h.to_bytes());
        assert_eq!(r, vec![Err(XsError::TooBig)]);
    }

    #[test]
    fn helpers_parse_listings_and_tx_ids() {
        assert_eq!(split_list(b"a\0bc\0").collect::<Vec<_>>(), vec![&b"a"[..], b"bc"]);
        assert_eq!(split_list(b"").count(), 0);
        assert_eq!(parse_tx_id(b"42\0"), Ok(42));
        assert_eq!(parse_tx_id(b"42"), Err(XsError::Inval));
        assert_eq!(parse_tx_id(b"99999999999\0"), Err(XsError::Inval));
    }
}
