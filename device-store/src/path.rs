//! Store paths: the one place a client's path becomes a trusted absolute
//! one ([`absolute`]). Rules (Xen's): characters `[A-Za-z0-9-/_@]` only; an
//! absolute path starts with `/`, a relative one is taken below the
//! client's home; no empty component (`//`), no trailing `/` except the
//! root; at most [`MAX_ABS`] bytes absolute, [`MAX_REL`] relative.

use crate::Error;
use alloc::format;
use alloc::string::String;

/// Longest absolute path (Xen's `XENSTORE_ABS_PATH_MAX`).
pub const MAX_ABS: usize = 3072;
/// Longest relative path (Xen's `XENSTORE_REL_PATH_MAX`).
pub const MAX_REL: usize = 2048;

fn valid_chars(p: &str) -> bool {
    p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b))
}

/// `p` as an absolute path (`home` is the client's home, absolute).
pub fn absolute(p: &str, home: &str) -> Result<String, Error> {
    if p.is_empty() || !valid_chars(p) {
        return Err(Error::Inval);
    }
    let abs = if p.starts_with('/') {
        if p.len() > MAX_ABS {
            return Err(Error::TooBig);
        }
        String::from(p)
    } else {
        if p.len() > MAX_REL {
            return Err(Error::TooBig);
        }
        format!("{home}/{p}")
    };
    if abs != "/" && (abs.ends_with('/') || abs.contains("//")) {
        return Err(Error::Inval);
    }
    if abs.len() > MAX_ABS {
        return Err(Error::TooBig);
    }
    Ok(abs)
}

/// The parent of an absolute path (the root's is the root).
pub fn parent(p: &str) -> String {
    match p.rfind('/') {
        Some(0) | None => String::from("/"),
        Some(i) => String::from(&p[..i]),
    }
}

/// The last component.
pub fn last(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or("")
}

/// The components of an absolute path.
pub fn components(p: &str) -> impl Iterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty())
}

/// Whether `p` is `at` or below it.
pub fn is_at_or_below(p: &str, at: &str) -> bool {
    at == "/" || p == at || (p.starts_with(at) && p.as_bytes().get(at.len()) == Some(&b'/'))
}
