//! Domain ids and node permissions (Xen's ACL model).
//!
//! # Rules
//! - A1. A node's permissions are a non-empty list of entries
//!   `{domid, access}`; on the wire each is `<c><domid>\0` with `c` one of
//!   `n` (none), `r` (read), `w` (write), `b` (both), e.g. `"n3\0r0\0"`.
//! - A2. The first entry names the **owner**, and its access is the default
//!   for every domain not listed later.
//! - A3. The owner and the privileged domain always have full access;
//!   another domain gets the access of its first later entry, else the
//!   default ([`Perms::access_for`]).
//! - A4. Parsing ([`Perms::parse`]) is the one validation: an unknown
//!   letter, an empty or non-decimal or out-of-range domid, or an empty list
//!   is `EINVAL`.

use alloc::vec::Vec;
use core::fmt;

use crate::wire::{parse_decimal, push_decimal, XsError};

/// A domain id as the store sees it (Xen's `domid_t`, 16 bits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DomId(u16);

impl DomId {
    /// The id `v`.
    pub const fn new(v: u16) -> Self {
        DomId(v)
    }

    /// The raw id.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// Parse a decimal domid as sent on the wire (`"3"`); `EINVAL` if it is
    /// not 1–5 digits or does not fit 16 bits.
    pub fn parse(s: &[u8]) -> Result<Self, XsError> {
        if s.len() > 5 {
            return Err(XsError::Inval);
        }
        let v = parse_decimal(s).ok_or(XsError::Inval)?;
        u16::try_from(v).map(DomId).map_err(|_| XsError::Inval)
    }
}

impl fmt::Debug for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

/// What an entry allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// Whether this access includes reading.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether this access includes writing.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }

    fn letter(self) -> u8 {
        match self {
            Access::None => b'n',
            Access::Read => b'r',
            Access::Write => b'w',
            Access::Both => b'b',
        }
    }

    fn from_letter(c: u8) -> Option<Self> {
        Some(match c {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return None,
        })
    }
}

/// One ACL entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermEntry {
    /// The domain.
    pub domid: DomId,
    /// What it may do.
    pub access: Access,
}

/// A node's permissions: never empty (A1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms(Vec<PermEntry>);

impl Perms {
    /// Permissions owned by `owner` with `default` for everyone else.
    pub fn owned_by(owner: DomId, default: Access) -> Self {
        Perms(alloc::vec![PermEntry { domid: owner, access: default }])
    }

    /// From entries; `None` if empty.
    pub fn from_entries(entries: Vec<PermEntry>) -> Option<Self> {
        if entries.is_empty() {
            None
        } else {
            Some(Perms(entries))
        }
    }

    /// The entries, owner first.
    pub fn entries(&self) -> &[PermEntry] {
        &self.0
    }

    /// The owner (A2).
    pub fn owner(&self) -> DomId {
        self.0[0].domid
    }

    /// Make `domid` the owner, keeping the default and the other entries.
    pub fn set_owner(&mut self, domid: DomId) {
        self.0[0].domid = domid;
    }

    /// Drop every non-owner entry naming `domid`.
    pub(crate) fn forget(&mut self, domid: DomId) -> bool {
        let before = self.0.len();
        let mut index = 0;
        self.0.retain(|e| {
            index += 1;
            index == 1 || e.domid != domid
        });
        self.0.len() != before
    }

    /// What `domid` may do here, given the privileged domain (A3).
    pub fn access_for(&self, domid: DomId, privileged: DomId) -> Access {
        if domid == privileged || domid == self.owner() {
            return Access::Both;
        }
        self.0[1..].iter().find(|e| e.domid == domid).map_or(self.0[0].access, |e| e.access)
    }

    /// Append the wire form (`"b0\0r3\0"`).
    pub fn encode(&self, out: &mut Vec<u8>) {
        for e in &self.0 {
            out.push(e.access.letter());
            push_decimal(out, u64::from(e.domid.get()));
            out.push(0);
        }
    }

    /// Parse one entry per NUL-terminated string in `payload` (A4); the
    /// final string must be terminated.
    pub fn parse(payload: &[u8]) -> Result<Self, XsError> {
        let body = payload.strip_suffix(b"\0").ok_or(XsError::Inval)?;
        let mut entries = Vec::new();
        for item in body.split(|&b| b == 0) {
            let (&c, digits) = item.split_first().ok_or(XsError::Inval)?;
            let access = Access::from_letter(c).ok_or(XsError::Inval)?;
            entries.push(PermEntry { domid: DomId::parse(digits)?, access });
        }
        Perms::from_entries(entries).ok_or(XsError::Inval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D0: DomId = DomId::new(0);

    #[test]
    fn a3_owner_and_privileged_have_full_access() {
        let p = Perms::parse(b"n3\0r4\0w5\0").unwrap();
        assert_eq!(p.access_for(DomId::new(3), D0), Access::Both);
        assert_eq!(p.access_for(D0, D0), Access::Both);
        assert_eq!(p.access_for(DomId::new(4), D0), Access::Read);
        assert_eq!(p.access_for(DomId::new(5), D0), Access::Write);
        assert_eq!(p.access_for(DomId::new(6), D0), Access::None);
    }

    #[test]
    fn a4_bad_perm_strings_are_einval() {
        for bad in [&b""[..], b"\0", b"x3\0", b"r\0", b"r3", b"r65536\0", b"r-1\0", b"r3\0\0"] {
            assert_eq!(Perms::parse(bad), Err(XsError::Inval), "{bad:?}");
        }
    }

    #[test]
    fn encode_parse_round_trip() {
        let p = Perms::parse(b"b0\0r3\0n65535\0").unwrap();
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(out, b"b0\0r3\0n65535\0");
    }

    #[test]
    fn forget_keeps_the_owner_entry() {
        let mut p = Perms::parse(b"n3\0r4\0r3\0b4\0").unwrap();
        assert!(p.forget(DomId::new(4)));
        assert_eq!(p, Perms::parse(b"n3\0r3\0").unwrap());
        let mut p = Perms::parse(b"n3\0r3\0").unwrap();
        assert!(p.forget(DomId::new(3)));
        assert_eq!(p, Perms::parse(b"n3\0").unwrap());
        assert!(!p.forget(DomId::new(9)));
    }
}
