//! `new-guest`: what `cargo xtask new-guest` makes, made, built and booted
//! as an SDK user would, and asserted on.
//!
//! The crate is generated into `target/new-guest/` (a workspace of its
//! own, sharing this target directory, profile and lock file: see
//! [`crate::new_guest`]), so the source tree stays as it was; its line
//! count is checked against [`new_guest::MAX_LINES`]; it is built with the
//! command `new-guest` prints; and its own `manifest.toml` is packed and
//! booted on the machine it asks for (the real disk dom0 serves the
//! guest's virtual disk from, and the NIC that is its bridge's uplink).
//! The guest's console lines prove each part: the console, the timer, the
//! disk's write, flush and read-back, and the network (a DHCP lease from
//! QEMU's user network and a ping of its router, both through dom0's
//! bridge and uplink); after the run the host finds the guest's sectors
//! on the disk image, in its slice.

use super::rig::Rig;
use super::{need, Scenario};
use crate::images::{self, Images};
use crate::manifest::Manifest;
use crate::new_guest;
use crate::qemu::Outcome;
use crate::{root, Result};
use std::path::PathBuf;
use std::time::Instant;

/// The generated guest's name (its crate, binary and domain).
const NAME: &str = "sdk-guest";

/// Sectors the template writes at the start of its disk, and their bytes.
const SECTORS: usize = 8;
fn pattern(i: usize) -> u8 {
    (i * 7 + i / 251) as u8
}

/// Where the scenario generates the crate.
fn scratch() -> PathBuf {
    images::target_dir().join("new-guest")
}

/// Generates the crate afresh (an earlier run's is removed first), builds
/// it and packs its manifest.
fn bundle(imgs: &Images) -> Result<Option<Vec<u8>>> {
    let dir = scratch().join(NAME);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    let made = new_guest::generate(&root(), &scratch(), NAME)?;
    if made.lines > new_guest::MAX_LINES {
        return Err(format!("the generated guest has {} lines of code (at most {})", made.lines, new_guest::MAX_LINES));
    }
    if !made.standalone {
        return Err(format!(
            "{} was made a member of the workspace; under target/ it must be its own",
            made.dir.display()
        ));
    }
    let t0 = Instant::now();
    if !images::build_crate_of(&made.dir)? {
        return Err(format!("no crate was built beside {}", made.manifest.display()));
    }
    println!(
        "  new-guest: {} generated ({} lines of its own code), built in {:.1} s",
        made.dir.display(),
        made.lines,
        t0.elapsed().as_secs_f64()
    );
    let m = Manifest::load(&made.manifest)?;
    let p = images::pack_manifest(imgs, &m)?;
    Ok(Some(std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?))
}

/// The machine the generated manifest asks for, as `cargo xtask run` gives
/// it; after the run, the guest's sectors must be in its slice of the disk.
fn rig(rig: &mut Rig) -> Result<()> {
    let m = Manifest::load(&scratch().join(NAME).join("manifest.toml"))?;
    if !m.devices.wants_nic() || m.devices.disk_mib == 0 {
        return Err("the generated manifest asks for no NIC or no disk".into());
    }
    rig.nic(&m.devices.forwards())?;
    let image = rig.disk(m.devices.disk_mib << 20)?;
    images::prepare_disk(&m, &image)?;
    rig.after_run(move |_| {
        let v = m.disks.of(NAME).ok_or("the generated manifest gives the guest no disk")?;
        let mut got = vec![0u8; SECTORS * 512];
        crate::vbd::read_virtual(&image, v, 0, &mut got)?;
        match (0..got.len()).find(|&i| got[i] != pattern(i)) {
            None => Ok(()),
            Some(i) => {
                Err(format!("the guest's sectors are not on the image at LBA {}: byte {i} differs", v.region.lba))
            }
        }
    });
    Ok(())
}

fn check(out: &str) -> Result<()> {
    let line = |s: &str| format!("[{NAME}] {s}");
    need(out, &line(&format!("console: hello from {NAME} (domain ")))?;
    let timer = super::find_line(out, &line("timer: fired after "))?;
    if !timer.ends_with(", asked for 20000 us: ok") {
        return Err(format!("the timer fired early: {timer}"));
    }
    need(out, &line("disk: 8192 sectors of 512 bytes"))?;
    need(out, &line("disk: 8 sectors written and flushed: ok"))?;
    need(out, &line("disk: 8 sectors read back intact: ok"))?;
    need(out, &line("net: DHCP lease 10.0.2.15/24 from 10.0.2.2: ok"))?;
    need(out, &line("net: 10.0.2.2 answered a ping: ok"))?;
    need(out, &line(&format!("{NAME}: 5/5 checks as expected")))?;
    need(out, &format!("({NAME}) exited: poweroff"))?;
    need(out, "(rf) verdict: PASS")
}

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "new-guest",
        what: "`cargo xtask new-guest`'s crate (at most 150 lines of its own code, no unsafe), generated under target/, built and booted by its own manifest: its console line, its timer fired not early, 8 sectors of its virtual disk written, flushed and read back intact (and found by the host in its slice of the image), and a DHCP lease from QEMU's network and a ping of the router answered, through dom0's bridge and uplink",
        bundle,
        append: "",
        icount: false,
        rig: Some(rig),
        expect: Outcome::Pass,
        check,
    }]
}
