//! `target/bench-dom0.json`: the dom0 device baselines, one top-level key
//! per benchmark, written read-modify-write so that separate benchmarks
//! (the block bench here, the UDP round trip of the net driver) each
//! [`record`] their own key without a JSON parser in the workspace.
//!
//! The file is the writer's own format, which is plain JSON: an object
//! with one `"key": value` entry per line (the value itself on that one
//! line). [`record`] keeps every other key's line as it was and replaces
//! or adds its own; a file it cannot read that way is replaced whole.

use crate::images;
use crate::Result;
use std::path::PathBuf;

/// The file's path.
pub fn path() -> PathBuf {
    images::target_dir().join("bench-dom0.json")
}

/// The entries of `text` as written by [`render`]: (key, value) per line.
fn parse(text: &str) -> Option<Vec<(String, String)>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(',').unwrap_or(line);
        let rest = line.strip_prefix('"')?;
        let (key, value) = rest.split_once("\": ")?;
        out.push((key.to_string(), value.to_string()));
    }
    Some(out)
}

fn render(entries: &[(String, String)]) -> String {
    let mut s = String::from("{\n");
    for (i, (k, v)) in entries.iter().enumerate() {
        s.push_str(&format!("  \"{k}\": {v}{}\n", if i + 1 < entries.len() { "," } else { "" }));
    }
    s.push_str("}\n");
    s
}

/// `text` with `key` set to `value` (one line of JSON).
fn with(text: &str, key: &str, value: &str) -> String {
    let mut entries = parse(text).unwrap_or_default();
    match entries.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = value.to_string(),
        None => entries.push((key.to_string(), value.to_string())),
    }
    render(&entries)
}

/// Sets `key` to `value` (a JSON value on one line) in the file, keeping
/// the other keys.
pub fn record(key: &str, value: &str) -> Result<()> {
    assert!(!value.contains('\n'), "a value is one line");
    let p = path();
    let old = std::fs::read_to_string(&p).unwrap_or_default();
    std::fs::write(&p, with(&old, key, value)).map_err(|e| format!("cannot write {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_added_replaced_and_kept() {
        let a = with("", "dom0_blk_seq_read", "{\"mb_per_s\": 10.5}");
        assert_eq!(a, "{\n  \"dom0_blk_seq_read\": {\"mb_per_s\": 10.5}\n}\n");
        let b = with(&a, "dom0_udp_rtt", "{\"us\": 80}");
        let c = with(&b, "dom0_blk_seq_read", "{\"mb_per_s\": 11}");
        assert_eq!(c, "{\n  \"dom0_blk_seq_read\": {\"mb_per_s\": 11},\n  \"dom0_udp_rtt\": {\"us\": 80}\n}\n");
        assert_eq!(parse(&c).unwrap().len(), 2);
        // Something else in the file is replaced whole.
        assert_eq!(with("garbage", "k", "1"), "{\n  \"k\": 1\n}\n");
    }
}
