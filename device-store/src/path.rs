//! Path validation: the one place a client's path becomes a trusted,
//! absolute node path.
//!
//! # Rules
//! - P1. A path is absolute (`/local/domain/3/name`) or relative to the
//!   caller's home `/local/domain/<domid>` (`name` means
//!   `/local/domain/<domid>/name`).
//! - P2. Characters are `[A-Za-z0-9/_@-]` (Xen's set); no empty path, no
//!   `//`, no trailing `/` except the root `/` itself.
//! - P3. Absolute paths are at most [`ABS_PATH_MAX`] (3072) bytes,
//!   relative ones at most [`REL_PATH_MAX`] (2048), and a relative path is
//!   checked again against `ABS_PATH_MAX` once made absolute.
//! - P4. A node path never starts with `@`; the special watch paths
//!   [`INTRODUCE_DOMAIN`] and [`RELEASE_DOMAIN`] are accepted by WATCH and
//!   UNWATCH only ([`resolve_watch`]), exactly as spelled.
//! - P5. Every violation is `EINVAL` (Xen's answer to an invalid name,
//!   length included).
//!
//! After [`resolve`], the tree code handles only absolute, valid paths and
//! never re-validates; the helpers [`parent`] and [`is_under`] assume it.

use alloc::string::String;
use alloc::vec::Vec;

use crate::perms::DomId;
use crate::wire::{push_decimal, XsError};

/// Longest absolute path (Xen's `XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Longest relative path (Xen's `XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;
/// Special watch path: fires when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Special watch path: fires when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// A validated node path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The absolute path.
    pub abs: String,
    /// Whether the client wrote it relative to its home (watch events are
    /// then reported relative too, as Xen does).
    pub relative: bool,
}

/// The home of a domain, `/local/domain/<domid>`.
pub fn home(domid: DomId) -> String {
    let mut v: Vec<u8> = b"/local/domain/".to_vec();
    push_decimal(&mut v, u64::from(domid.get()));
    // Only ASCII went in.
    String::from_utf8(v).unwrap_or_default()
}

fn valid_chars(raw: &[u8]) -> bool {
    raw.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'@' | b'-'))
}

fn valid_shape(raw: &[u8]) -> bool {
    !raw.windows(2).any(|w| w == b"//") && (raw == b"/" || !raw.ends_with(b"/"))
}

/// Validate a node path for `domid` (P1–P5).
pub fn resolve(domid: DomId, raw: &[u8]) -> Result<Resolved, XsError> {
    if raw.is_empty() || raw[0] == b'@' || !valid_chars(raw) || !valid_shape(raw) {
        return Err(XsError::Inval);
    }
    // Only ASCII passed valid_chars.
    let text = core::str::from_utf8(raw).map_err(|_| XsError::Inval)?;
    if raw[0] == b'/' {
        if raw.len() > ABS_PATH_MAX {
            return Err(XsError::Inval);
        }
        return Ok(Resolved { abs: String::from(text), relative: false });
    }
    if raw.len() > REL_PATH_MAX {
        return Err(XsError::Inval);
    }
    let mut abs = home(domid);
    abs.push('/');
    abs.push_str(text);
    if abs.len() > ABS_PATH_MAX {
        return Err(XsError::Inval);
    }
    Ok(Resolved { abs, relative: true })
}

/// A validated watch path: a node path or a special one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchPath {
    /// A node path (it need not exist).
    Node(Resolved),
    /// `@introduceDomain` or `@releaseDomain`.
    Special(&'static str),
}

/// Validate a WATCH/UNWATCH path (P4).
pub fn resolve_watch(domid: DomId, raw: &[u8]) -> Result<WatchPath, XsError> {
    for special in [INTRODUCE_DOMAIN, RELEASE_DOMAIN] {
        if raw == special.as_bytes() {
            return Ok(WatchPath::Special(special));
        }
    }
    resolve(domid, raw).map(WatchPath::Node)
}

/// The parent of a valid absolute path; `None` for the root.
pub fn parent(abs: &str) -> Option<&str> {
    if abs == "/" {
        return None;
    }
    match abs.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&abs[..i]),
        None => None,
    }
}

/// The last component of a valid absolute path (empty for the root).
pub fn basename(abs: &str) -> &str {
    abs.rfind('/').map_or(abs, |i| &abs[i + 1..])
}

/// `parent/name`, for a valid absolute parent.
pub fn join(parent: &str, name: &str) -> String {
    let mut s = String::from(parent);
    if parent != "/" {
        s.push('/');
    }
    s.push_str(name);
    s
}

/// Whether `path` is `ancestor` or below it. Special paths (`@...`) are
/// under nothing but themselves.
pub fn is_under(path: &str, ancestor: &str) -> bool {
    if path == ancestor {
        return true;
    }
    if ancestor == "/" {
        return path.starts_with('/');
    }
    path.len() > ancestor.len() && path.starts_with(ancestor) && path.as_bytes()[ancestor.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    const D3: DomId = DomId::new(3);

    #[test]
    fn p1_relative_paths_are_under_home() {
        assert_eq!(resolve(D3, b"device/vbd").unwrap().abs, "/local/domain/3/device/vbd");
        assert!(resolve(D3, b"device/vbd").unwrap().relative);
        let a = resolve(D3, b"/local/domain/4").unwrap();
        assert_eq!((a.abs.as_str(), a.relative), ("/local/domain/4", false));
        assert_eq!(resolve(D3, b"/").unwrap().abs, "/");
    }

    #[test]
    fn p2_bad_characters_and_shapes_are_einval() {
        for bad in [&b""[..], b"a//b", b"/a/", b"a/", b"/a b", b"/a.b", b"/a\0", b"//", b"/\xff", b"a\n"] {
            assert_eq!(resolve(D3, bad), Err(XsError::Inval), "{bad:?}");
        }
        assert!(resolve(D3, b"/A-z_0@9").is_ok());
    }

    #[test]
    fn p3_length_limits() {
        let mut abs = alloc::vec![b'a'; ABS_PATH_MAX];
        abs[0] = b'/';
        assert!(resolve(D3, &abs).is_ok());
        abs.push(b'a');
        assert_eq!(resolve(D3, &abs), Err(XsError::Inval));
        let rel = alloc::vec![b'a'; REL_PATH_MAX];
        assert!(resolve(D3, &rel).is_ok());
        let rel = alloc::vec![b'a'; REL_PATH_MAX + 1];
        assert_eq!(resolve(D3, &rel), Err(XsError::Inval));
    }

    #[test]
    fn p4_special_paths_only_for_watches() {
        assert_eq!(resolve(D3, b"@releaseDomain"), Err(XsError::Inval));
        assert_eq!(resolve_watch(D3, b"@releaseDomain"), Ok(WatchPath::Special(RELEASE_DOMAIN)));
        assert_eq!(resolve_watch(D3, b"@other"), Err(XsError::Inval));
    }

    #[test]
    fn helpers() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert!(is_under("/a/b", "/a"));
        assert!(is_under("/a", "/a"));
        assert!(!is_under("/ab", "/a"));
        assert!(is_under("/a", "/"));
        assert!(!is_under("@releaseDomain", "/"));
        assert_eq!(home(DomId::new(65535)), "/local/domain/65535");
    }
}
