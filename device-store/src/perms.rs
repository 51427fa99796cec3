//! Permissions: Xen's list of `<letter><domid>` entries (`n`, `r`, `w`,
//! `b`); the first names the owner and everyone else's default. The owner
//! and the privileged domain are always allowed ([`allows`]).

use crate::{Error, PRIVILEGED};
use core::fmt;
use core::str::FromStr;

/// An access level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

/// One entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    pub dom: u16,
    pub access: Access,
}

impl Perm {
    /// `dom` owns it; nobody else has access.
    pub const fn owner(dom: u16) -> Perm {
        Perm { dom, access: Access::None }
    }
}

impl FromStr for Perm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Perm, Error> {
        let mut it = s.chars();
        let access = match it.next() {
            Some('n') => Access::None,
            Some('r') => Access::Read,
            Some('w') => Access::Write,
            Some('b') => Access::Both,
            _ => return Err(Error::Inval),
        };
        let dom: u16 = it.as_str().parse().map_err(|_| Error::Inval)?;
        if dom >= 0x7ff0 {
            return Err(Error::Inval);
        }
        Ok(Perm { dom, access })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        write!(f, "{c}{}", self.dom)
    }
}

/// Whether `dom` may `want` (Read or Write) under `perms`.
pub fn allows(perms: &[Perm], dom: u16, want: Access) -> bool {
    let Some(first) = perms.first() else { return dom == PRIVILEGED };
    if dom == PRIVILEGED || dom == first.dom {
        return true;
    }
    let a = perms[1..].iter().find(|p| p.dom == dom).map_or(first.access, |p| p.access);
    matches!((a, want), (Access::Both, _) | (Access::Read, Access::Read) | (Access::Write, Access::Write))
}
