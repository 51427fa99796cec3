//! `cargo xtask new-guest NAME [--dir DIR]`: a new domU crate for SDK users,
//! from the template in `xtask/template/`.
//!
//! # What it writes
//! `NAME/` holds `Cargo.toml` (one dependency: `pvguest-sdk`, by path),
//! `build.rs` (the SDK's link contract), `src/main.rs` (a guest that uses
//! the console, a timer, its virtual disk and its virtual NIC, with
//! `#![forbid(unsafe_code)]`), `manifest.toml` (the guest beside the
//! sample dom0, which serves its disk and NIC) and `README.md` (how to
//! build and boot it). The `.rs` files are the author's own code: at most
//! [`MAX_LINES`] lines together, which a host test and the QEMU scenario
//! `new-guest` both assert, and `new-guest` prints.
//!
//! # Where
//! - By default `guests/NAME`: a member of the workspace (the top
//!   `Cargo.toml`'s `guests/*` glob), so it shares the workspace's lock
//!   file and target directory; `cargo build --release -p NAME` builds only
//!   the new crate on top of what the sample guests built.
//! - With `--dir DIR`, `DIR/NAME`: a crate with a `[workspace]` of its own
//!   (it is nobody's member), Ringfence's release profile and a copy of
//!   its lock file (the same versions of smoltcp and the rest), built with
//!   `--target-dir` into Ringfence's target directory. The `new-guest`
//!   scenario generates so into `target/`, keeping the source tree clean.
//!
//! Either way the binary lands in `target/release/NAME`, where the
//! manifest's bare `image = "NAME"` finds it (`images::Images::guest`),
//! and `cargo xtask run --manifest NAME/manifest.toml` builds the crate
//! first, because the manifest lies next to its `Cargo.toml`
//! ([`crate::images::build_crate_of`]).
//!
//! # Names
//! A NAME is a crate name, a binary name in `target/release` and a domain
//! name at once ([`check_name`]): 1..=31 bytes of `[a-z0-9_-]`, starting
//! with a letter; no Rust keyword or name cargo reserves; no name a package
//! or binary of the workspace already has (its binary would overwrite
//! theirs). An existing `NAME/` directory is refused, never overwritten.

use crate::{images, root, Result};
use std::path::{Path, PathBuf};

/// Lines of the author's own code (the template's `.rs` files) at most.
pub const MAX_LINES: usize = 150;

/// The template, as `(path in the crate, text)`; `@NAME@`, `@SDK@`,
/// `@BUILD@` and `@MANIFEST@` are filled in. The `.rs` files are copied
/// as they are (the guest learns its name at run time).
const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../template/Cargo.toml.in")),
    ("build.rs", include_str!("../template/build.rs")),
    ("src/main.rs", include_str!("../template/src/main.rs")),
    ("manifest.toml", include_str!("../template/manifest.toml")),
    ("README.md", include_str!("../template/README.md")),
];

/// Appended to `Cargo.toml` when the crate is its own workspace.
const STANDALONE: &str = include_str!("../template/standalone.toml.in");

/// Rust's keywords (strict, reserved and edition ones): not crate names.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do", "dyn", "else",
    "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro", "match", "mod",
    "move", "mut", "override", "priv", "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true",
    "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Names cargo refuses or that clash with its own: the standard crates,
/// and the directories of a profile's output (`target/release/deps`, ...).
const RESERVED: &[&str] =
    &["alloc", "core", "proc-macro", "proc_macro", "std", "test", "build", "deps", "examples", "incremental"];

/// Checks `name` (see the module docs); `taken` are the workspace's
/// package and binary names.
pub fn check_name(name: &str, taken: &[String]) -> Result<()> {
    let why = if name.is_empty() || name.len() > 31 {
        "is not 1..=31 bytes long (a domain name's limit)"
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        "does not start with a lowercase letter"
    } else if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        "has a byte outside [a-z0-9_-]"
    } else if KEYWORDS.contains(&name.replace('-', "_").as_str()) {
        "is a Rust keyword"
    } else if RESERVED.contains(&name) {
        "is reserved by cargo"
    } else if taken.iter().any(|t| t == name || t.replace('-', "_") == name.replace('-', "_")) {
        "is taken by a package or binary of the workspace (its binary would overwrite that one in target/release)"
    } else {
        return Ok(());
    };
    Err(format!("new-guest: '{name}' {why}; a guest's name is a crate, binary and domain name: 1..=31 of [a-z0-9_-], starting with a letter"))
}

/// The package and binary names of the workspace at `root`: each
/// member's package name, its `[[bin]]` names and its `src/bin/*.rs`.
pub fn taken_names(root: &Path) -> Result<Vec<String>> {
    let read = |p: &Path| -> Result<toml::Table> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        text.parse().map_err(|e| format!("{}: {e}", p.display()))
    };
    let top = read(&root.join("Cargo.toml"))?;
    let members = top.get("workspace").and_then(|w| w.get("members")).and_then(|m| m.as_array()).cloned();
    let mut dirs = Vec::new();
    for m in members.unwrap_or_default().iter().filter_map(|m| m.as_str()) {
        match m.strip_suffix("/*") {
            Some(parent) => {
                let Ok(entries) = std::fs::read_dir(root.join(parent)) else { continue };
                dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.join("Cargo.toml").is_file()));
            }
            None => dirs.push(root.join(m)),
        }
    }
    let mut names = Vec::new();
    for dir in dirs {
        let t = read(&dir.join("Cargo.toml"))?;
        names.extend(t.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()).map(String::from));
        let bins = t.get("bin").and_then(|b| b.as_array()).cloned().unwrap_or_default();
        names.extend(bins.iter().filter_map(|b| b.get("name")?.as_str()).map(String::from));
        let Ok(entries) = std::fs::read_dir(dir.join("src/bin")) else { continue };
        for p in entries.flatten().map(|e| e.path()) {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
            names.extend(stem.filter(|_| p.extension().is_some_and(|x| x == "rs") || p.is_dir()));
        }
    }
    Ok(names)
}

/// The crate's files for guest `name`: `sdk` is the path from the crate
/// to `pvguest-sdk`, `build` and `manifest` the commands' words the
/// README shows; `standalone` makes it its own workspace.
pub fn render(name: &str, sdk: &str, build: &str, manifest: &str, standalone: bool) -> Vec<(&'static str, String)> {
    TEMPLATE
        .iter()
        .map(|&(path, text)| {
            let mut text = text.to_string();
            if path == "Cargo.toml" && standalone {
                text.push_str(STANDALONE);
            }
            if !path.ends_with(".rs") {
                text = text
                    .replace("@NAME@", name)
                    .replace("@SDK@", sdk)
                    .replace("@BUILD@", build)
                    .replace("@MANIFEST@", manifest);
            }
            (path, text)
        })
        .collect()
}

/// Lines of the author's own code among `files`: every line of the `.rs`
/// files, comments and blank lines included.
pub fn own_lines(files: &[(&str, String)]) -> usize {
    files.iter().filter(|(p, _)| p.ends_with(".rs")).map(|(_, t)| t.lines().count()).sum()
}

/// What [`generate`] made.
pub struct Created {
    /// The crate's directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Lines of its `.rs` files.
    pub lines: usize,
    /// The `.rs` files and their lines.
    pub rs_files: Vec<(&'static str, usize)>,
    /// The command that builds it.
    pub build: String,
    /// Whether it is its own workspace (not a member of Ringfence's).
    pub standalone: bool,
}

/// `path` relative to `base` (both absolute and canonical).
fn relative(path: &Path, base: &Path) -> PathBuf {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out: PathBuf = b[common..].iter().map(|_| "..").collect();
    out.extend(&p[common..]);
    out
}

/// How `dir` reads in a command typed at the workspace `root`.
fn shown(dir: &Path, root: &Path) -> String {
    dir.strip_prefix(root).unwrap_or(dir).display().to_string()
}

/// Generates guest `name` into `parent/name` for the workspace at `root`
/// (a member if `parent` is `root/guests`, else its own workspace);
/// refuses a bad name or an existing directory. On a failure half-way the
/// directory is removed again (a member directory without a `Cargo.toml`
/// would break the workspace).
pub fn generate(root: &Path, parent: &Path, name: &str) -> Result<Created> {
    check_name(name, &[])?;
    std::fs::create_dir_all(parent).map_err(|e| format!("new-guest: cannot create {}: {e}", parent.display()))?;
    let canon = |p: &Path| p.canonicalize().map_err(|e| format!("new-guest: {}: {e}", p.display()));
    let (root, parent) = (canon(root)?, canon(parent)?);
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!("new-guest: {} already exists; pick another NAME or remove it", dir.display()));
    }
    check_name(name, &taken_names(&root)?)?;
    let standalone = parent != root.join("guests");
    // Relative inside the checkout (it moves with it), absolute outside.
    let sdk = root.join("pvguest-sdk");
    let sdk = if dir.starts_with(&root) { relative(&sdk, &dir) } else { sdk }.display().to_string();
    let manifest = dir.join("manifest.toml");
    let build = if standalone {
        format!(
            "cargo build --release --manifest-path {}/Cargo.toml --target-dir {}",
            shown(&dir, &root),
            images::target_dir().display()
        )
    } else {
        format!("cargo build --release -p {name}")
    };
    let files = render(name, &sdk, &build, &shown(&manifest, &root), standalone);
    let write = || -> Result<()> {
        std::fs::create_dir_all(dir.join("src")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (path, text) in &files {
            let p = dir.join(path);
            std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        if standalone {
            let (from, to) = (root.join("Cargo.lock"), dir.join("Cargo.lock"));
            std::fs::copy(&from, &to)
                .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("new-guest: {e}"));
    }
    let rs_files = files.iter().filter(|(p, _)| p.ends_with(".rs")).map(|(p, t)| (*p, t.lines().count())).collect();
    Ok(Created { lines: own_lines(&files), rs_files, dir, manifest, build, standalone })
}

/// The command: generates the crate and says what it made and how to
/// build and boot it.
pub fn main(args: &[String]) -> Result<()> {
    let mut rest = args.iter();
    let (mut name, mut parent) = (None, root().join("guests"));
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--dir" => parent = PathBuf::from(rest.next().ok_or("new-guest: --dir needs a directory")?),
            flag if flag.starts_with('-') => return Err(format!("new-guest: unknown option '{flag}'")),
            n if name.is_none() => name = Some(n.to_string()),
            extra => return Err(format!("new-guest: one NAME only (got '{extra}' too)")),
        }
    }
    let name = name.ok_or("usage: cargo xtask new-guest NAME [--dir DIR]")?;
    let made = generate(&root(), &parent, &name)?;
    let root = root().canonicalize().map_err(|e| e.to_string())?;
    println!(
        "created {} ({}):",
        made.dir.display(),
        if made.standalone { "a workspace of its own" } else { "a member of the workspace" }
    );
    for (path, _) in TEMPLATE {
        println!("  {path}");
    }
    if made.standalone {
        println!("  Cargo.lock (the workspace's, so that it builds with the same versions)");
    }
    let each: Vec<String> = made.rs_files.iter().map(|(p, n)| format!("{p} {n}")).collect();
    println!("{} lines of your own code ({}; at most {MAX_LINES}), no unsafe", made.lines, each.join(", "));
    println!("build it (from {}):\n  {}", root.display(), made.build);
    println!("boot it in QEMU (builds it too):\n  cargo xtask run --manifest {}", shown(&made.manifest, &root));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken() -> Vec<String> {
        taken_names(&root()).unwrap()
    }

    #[test]
    fn good_names_pass() {
        for n in ["myguest", "web-2", "a", "log_keeper", "abcdefghijklmnopqrstuvwxyz01234"] {
            check_name(n, &taken()).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let t = taken();
        for (n, why) in [
            ("", "1..=31 bytes"),
            ("abcdefghijklmnopqrstuvwxyz012345", "1..=31 bytes"),
            ("9lives", "lowercase letter"),
            ("-x", "lowercase letter"),
            ("Web", "lowercase letter"),
            ("my.guest", "outside [a-z0-9_-]"),
            ("my guest", "outside [a-z0-9_-]"),
            ("a:b", "outside [a-z0-9_-]"),
            ("../x", "lowercase letter"),
            ("fn", "keyword"),
            ("self", "keyword"),
            ("deps", "reserved"),
            ("test", "reserved"),
            ("dom0", "taken"),
            ("hello", "taken"),
            ("pvguest-sdk", "taken"),
            ("pvguest_sdk", "taken"),
            ("xtask", "taken"),
            ("ringfence", "taken"),
        ] {
            let e = check_name(n, &t).expect_err(n);
            assert!(e.contains(why), "{n:?}: {e}");
        }
    }

    /// The template's own code stays within its budget and forbids unsafe.
    #[test]
    fn the_template_is_at_most_150_lines_without_unsafe() {
        let files = render("t", "../pvguest-sdk", "b", "m", false);
        let lines = own_lines(&files);
        assert!(lines <= MAX_LINES, "{lines} lines");
        assert!(lines > 50, "{lines}: the count reads the .rs files");
        let main = &files.iter().find(|(p, _)| *p == "src/main.rs").unwrap().1;
        assert!(main.contains("#![forbid(unsafe_code)]"));
        // No `unsafe` keyword at all (blocks, fns, impls); `unsafe_code`
        // in the forbid attribute is another word.
        for (p, t) in files.iter().filter(|(p, _)| p.ends_with(".rs")) {
            let words = t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            assert!(!words.into_iter().any(|w| w == "unsafe"), "{p} has unsafe code");
        }
        assert!(files.iter().all(|(_, t)| !t.contains('@')), "every placeholder is filled");
    }

    #[test]
    fn a_member_and_a_standalone_crate() {
        let dir = std::env::temp_dir().join(format!("xtask-new-guest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = generate(&root(), &dir, "myguest").unwrap();
        assert!(made.standalone);
        let cargo = std::fs::read_to_string(made.dir.join("Cargo.toml")).unwrap();
        let t: toml::Table = cargo.parse().unwrap();
        assert_eq!(t["package"]["name"].as_str(), Some("myguest"));
        assert!(t.contains_key("workspace") && t["profile"]["release"]["panic"].as_str() == Some("abort"));
        let sdk = made.dir.join(t["dependencies"]["pvguest-sdk"]["path"].as_str().unwrap());
        assert!(sdk.join("Cargo.toml").is_file(), "{}", sdk.display());
        assert!(made.dir.join("Cargo.lock").is_file() && made.dir.join("src/main.rs").is_file());
        assert_eq!(made.lines, made.rs_files.iter().map(|(_, n)| n).sum::<usize>());
        let m = crate::manifest::Manifest::load(&made.manifest).unwrap();
        assert_eq!(m.domain[0].image, "myguest");
        assert!(m.disks.of("myguest").is_some() && m.devices.nic);
        let again = generate(&root(), &dir, "myguest").err().unwrap();
        assert!(again.contains("already exists"), "{again}");
        std::fs::remove_dir_all(&dir).unwrap();
        // In the workspace's guests/: a member, built with -p.
        let files = render("g", "../../pvguest-sdk", "cargo build --release -p g", "guests/g/manifest.toml", false);
        let t: toml::Table = files[0].1.parse().unwrap();
        assert!(!t.contains_key("workspace") && !t.contains_key("profile"));
        assert_eq!(relative(Path::new("/r/pvguest-sdk"), Path::new("/r/guests/g")), Path::new("../../pvguest-sdk"));
    }
}
