//! Installing QEMU where it is missing, without removing the machine's
//! other QEMU tools.
//!
//! What we know of the machines (Debian 12 "bookworm"): QEMU 7.2 from
//! bookworm, TCG only (no KVM). A fresh machine may come with a newer
//! `qemu-utils` than bookworm's `qemu-system-x86`; a plain
//! `apt-get install qemu-system-x86` then removes that `qemu-utils` to
//! satisfy the exact-version dependencies the two share.
//!
//! Rules:
//! 1. We install only when `qemu-system-x86_64` is missing; a machine that
//!    has it is never changed.
//! 2. We install a consistent pair from one release:
//!    `apt-get install -y --allow-downgrades qemu-system-x86 qemu-utils/bookworm`
//!    (the downgrade is what keeps `qemu-utils` instead of removing it).
//! 3. Only if apt knows no release [`RELEASE`] (not a Debian 12 machine) do
//!    we fall back to plain `qemu-system-x86`, and say so.
//! 4. Every failure says what to run by hand. `.ci/run` does the same in
//!    shell, with the same package list; keep the two in step.

use crate::Result;
use std::process::{Command, Output};

/// The release both packages come from.
pub const RELEASE: &str = "bookworm";

/// The `apt-get` arguments that install QEMU: the pair from [`RELEASE`]
/// (rule 2), or with `None` the plain fallback (rule 3).
pub fn apt_install_args(release: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = ["install", "-y", "-qq"].map(String::from).into();
    match release {
        Some(r) => {
            a.push("--allow-downgrades".into());
            a.push("qemu-system-x86".into());
            a.push(format!("qemu-utils/{r}"));
        }
        None => a.push("qemu-system-x86".into()),
    }
    a
}

/// Whether apt's error output says it knows no release `release` for
/// `qemu-utils` (apt prints `E: Release 'bookworm' for 'qemu-utils' was not
/// found`; it then changes nothing).
pub fn release_unknown(apt_stderr: &str, release: &str) -> bool {
    apt_stderr.contains(&format!("Release '{release}' for 'qemu-utils' was not found"))
}

fn qemu_present() -> bool {
    Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success())
}

const BY_HAND: &str = "install it by hand (Debian 12):\n  \
     sudo apt-get update && sudo apt-get install -y --allow-downgrades qemu-system-x86 qemu-utils/bookworm\n\
     elsewhere: sudo apt-get install qemu-system-x86 (Debian/Ubuntu), sudo dnf install qemu-system-x86 (Fedora)";

/// Makes sure `qemu-system-x86_64` exists, installing it with apt-get (as
/// root, or through passwordless sudo) when it is missing.
pub fn ensure_installed() -> Result<()> {
    if qemu_present() {
        return Ok(());
    }
    if !Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Err(format!("qemu-system-x86_64 is not installed and there is no apt-get here; {BY_HAND}"));
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    let sudo = !root && Command::new("sudo").args(["-n", "true"]).output().is_ok_and(|o| o.status.success());
    if !root && !sudo {
        return Err(format!("qemu-system-x86_64 is not installed and this user cannot run apt-get; {BY_HAND}"));
    }
    let apt = |args: &[String]| -> Result<Output> {
        let mut c = if sudo { Command::new("sudo") } else { Command::new("env") };
        if sudo {
            c.arg("env");
        }
        c.arg("DEBIAN_FRONTEND=noninteractive").arg("apt-get").args(args);
        c.output().map_err(|e| format!("cannot start apt-get: {e}"))
    };
    eprintln!("xtask: qemu-system-x86_64 not found; installing qemu-system-x86 and qemu-utils from {RELEASE}");
    let up = apt(&["update".into(), "-qq".into()])?;
    if !up.status.success() {
        return Err(format!("apt-get update failed:\n{}\n{BY_HAND}", String::from_utf8_lossy(&up.stderr)));
    }
    let pair = apt(&apt_install_args(Some(RELEASE)))?;
    let installed = if pair.status.success() {
        pair
    } else if release_unknown(&String::from_utf8_lossy(&pair.stderr), RELEASE) {
        eprintln!(
            "xtask: apt knows no '{RELEASE}' release (not Debian 12?); installing plain qemu-system-x86, \
             which may replace the machine's other QEMU packages with its own version"
        );
        apt(&apt_install_args(None))?
    } else {
        pair
    };
    if !installed.status.success() {
        return Err(format!(
            "apt-get could not install QEMU:\n{}\n{BY_HAND}",
            String::from_utf8_lossy(&installed.stderr).trim_end()
        ));
    }
    if !qemu_present() {
        return Err(format!("apt-get finished but qemu-system-x86_64 still does not run; {BY_HAND}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule2_the_pair_comes_from_one_release_with_downgrades_allowed() {
        assert_eq!(
            apt_install_args(Some("bookworm")),
            ["install", "-y", "-qq", "--allow-downgrades", "qemu-system-x86", "qemu-utils/bookworm"]
        );
    }

    #[test]
    fn rule3_the_fallback_is_plain_qemu_system_x86() {
        assert_eq!(apt_install_args(None), ["install", "-y", "-qq", "qemu-system-x86"]);
    }

    #[test]
    fn rule3_falls_back_only_on_an_unknown_release() {
        // apt-get 2.6's words, as seen with `apt-get install -s qemu-utils/nonexistent`.
        assert!(release_unknown("E: Release 'bookworm' for 'qemu-utils' was not found\n", "bookworm"));
        assert!(!release_unknown("E: Unable to locate package qemu-system-x86\n", "bookworm"));
        assert!(!release_unknown("E: Could not get lock /var/lib/dpkg/lock-frontend\n", "bookworm"));
    }
}
