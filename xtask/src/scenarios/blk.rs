//! The split block device scenarios: domUs' virtual disks served by dom0's
//! blkback (`serve` mode) out of the machine's one real disk, laid out by
//! [`crate::vbd`].
//!
//! - `blk-durability`: a domU appends a log to its sparse image, flushes,
//!   writes its superblock write-through, and says so; the test cuts the
//!   power (SIGKILL) on that line. The machine boots again on the same
//!   image: the log is all there, read back by the domU through dom0 and by
//!   the host through the image's map; a second domU on another slice
//!   starts from an empty disk (it never sees the first one's data) and
//!   writes its own.
//!
//! - `blk-stream`: a domU streams its disk through the SDK's streaming
//!   calls (start, kick, wait_done), with the flush's barrier and the
//!   ring's `Busy` checked; the host reads its pattern off the image.
//!
//! The demo manifest's disks (`disk = ...` in demo.toml) get the same
//! host-side reading after its run: [`check_manifest_disks`].

use super::{entry, find_line, finish, need, Scenario};
use crate::images::{self, Images};
use crate::manifest::Manifest;
use crate::qemu::Outcome;
use crate::vbd::{self, Kind, Plan};
use crate::Result;
use ringfence_bundle::Expect;
use ringfence_bundle_writer::BundleWriter;

/// dom0's memory and DMA pool in the block scenarios (KiB).
const DOM0_KIB: u32 = 2048 + 512;
const DOM0_DMA_KIB: u32 = 512;

/// The durability scenario's disks: `log-a` on a sparse image (so its
/// allocation map must reach the disk too), `log-b` on a raw slice.
fn durability_plan() -> Plan {
    let mut p = Plan::default();
    p.add("log-a", Kind::Sparse, 4);
    p.add("log-b", Kind::Raw, 4);
    p
}

const A_RECORDS: u64 = 64;
const A_SEED: u64 = 0xa11ce;
const B_RECORDS: u64 = 32;
const B_SEED: u64 = 0xb0b;

fn image_path(scenario: &str) -> std::path::PathBuf {
    images::target_dir().join("ringfence").join(format!("{scenario}.img"))
}

/// dom0 serving `plan`, then each `(name, cmdline)` domU running blklog.
fn bundle(imgs: &Images, plan: &Plan, domus: &[(&str, String)]) -> Result<Option<Vec<u8>>> {
    let mut w = BundleWriter::new();
    let cmdline = format!("serve {}", plan.cmdline());
    w.domain(entry(imgs, "dom0", "dom0", DOM0_KIB, &cmdline, Expect::Poweroff)?.privileged(true).dma_kib(DOM0_DMA_KIB));
    for (name, cmd) in domus {
        w.domain(entry(imgs, name, "blklog", 1024, cmd, Expect::Poweroff)?);
    }
    finish(w, imgs)
}

/// The images scenario's disks: a raw slice, a sparse image, and two
/// overlays sharing one template.
fn images_plan() -> Plan {
    let mut p = Plan::default();
    p.add("img-raw", Kind::Raw, 2);
    p.add("img-sparse", Kind::Sparse, 8);
    let t = p.add("", Kind::Template(TEMPLATE_SEED), 2);
    p.add("img-ovl-1", Kind::Overlay(t), 3);
    p.add("img-ovl-2", Kind::Overlay(t), 3);
    p
}

const TEMPLATE_SEED: u64 = 0x7e4a;
const IMG_RECORDS: u64 = 24;

fn images_scenario() -> Scenario {
    Scenario {
        name: "blk-images",
        what: "four domUs on the kinds of virtual disk at once: a raw slice, a sparse image (unwritten blocks read as zeros, a block allocated on its first write), and two copy-on-write overlays on one read-only template (each reads the template, writes its own log over it, and sees the rest unchanged); on the host the template is untouched, each overlay holds only its own writes, and the sparse image allocated no more blocks than were written",
        bundle: |imgs| {
            let log = |seed: u64| format!("mode=append records={IMG_RECORDS} seed={seed}");
            let ovl = |seed: u64| format!("mode=overlay records={IMG_RECORDS} seed={seed} template={TEMPLATE_SEED}");
            bundle(
                imgs,
                &images_plan(),
                &[("img-raw", log(0x1)), ("img-sparse", log(0x2)), ("img-ovl-1", ovl(0x3)), ("img-ovl-2", ovl(0x4))],
            )
        },
        append: "",
        icount: false,
        rig: Some(|rig| {
            let plan = images_plan();
            let image = rig.disk(plan.disk_sectors() * 512)?;
            plan.format(&image)?;
            rig.after_run(move |_| {
                let plan = images_plan();
                for (k, seed) in [(0, 0x1), (1, 0x2), (3, 0x3), (4, 0x4)] {
                    check_log(&image, &plan.vbds[k], IMG_RECORDS, seed)?;
                }
                // The template: every byte as xtask wrote it.
                let t = &plan.vbds[2];
                let mut buf = vec![0u8; t.region.sectors as usize * 512];
                vbd::read_virtual(&image, t, 0, &mut buf)?;
                if let Some((at, ..)) = disk_pattern::first_mismatch(&buf, TEMPLATE_SEED, 0) {
                    return Err(format!("the template changed at byte {at}: an overlay wrote its base"));
                }
                // Each overlay past its own log still reads the template.
                for k in [3, 4] {
                    let v = &plan.vbds[k];
                    let from = IMG_RECORDS + 1;
                    let mut rest = vec![0u8; (v.region.sectors.min(t.region.sectors) - from) as usize * 512];
                    vbd::read_virtual(&image, v, from, &mut rest)?;
                    if disk_pattern::first_mismatch(&rest, TEMPLATE_SEED, from * 512).is_some() {
                        return Err(format!("{}: a sector it never wrote does not read as the template", v.domain));
                    }
                }
                // The sparse image: only the blocks written.
                let sparse = &plan.vbds[1];
                let blocks = vbd::allocated_blocks(&image, sparse)?;
                let written = (IMG_RECORDS + 1).div_ceil(8);
                if blocks > written {
                    return Err(format!("the sparse image allocated {blocks} blocks for {written} written"));
                }
                println!("  image: template intact, overlays hold only their own writes, the sparse image allocated {blocks} of {} blocks", sparse.region.sectors / 8);
                Ok(())
            });
            Ok(())
        }),
        expect: Outcome::Pass,
        check: |out| {
            for name in ["img-raw", "img-sparse"] {
                need(out, &format!("[{name}] blklog: appended {IMG_RECORDS} records"))?;
                need(out, &format!("[{name}] blklog: its disk starts empty"))?;
            }
            for (name, seed) in [("img-ovl-1", 3), ("img-ovl-2", 4)] {
                need(out, &format!("[{name}] blklog: overlay holds {IMG_RECORDS} records (seed {seed:#x}) over template {TEMPLATE_SEED:#x}"))?;
            }
            need(out, "serve: every domain served has ended (4); done")?;
            Ok(())
        },
    }
}

fn attacker_plan() -> Plan {
    let mut p = Plan::default();
    p.add("evil-front", Kind::Raw, 1);
    p.add("bystander", Kind::Raw, 2);
    p.add("evil-persist", Kind::Raw, 1);
    p
}

fn attacker_scenario() -> Scenario {
    Scenario {
        name: "blk-attacker",
        what: "a hostile blkfront sends dom0's blkback bad grant references (never granted, granted to another domain, read-only for a read), sectors past its disk and wrapping past 2^64, too many or no segments, first_sect > last_sect, last_sect past the page, an unknown operation, indirect requests (a good one, then a page never granted, a bad operation, 33 segments, a reversed or ungranted segment in the list), a flood of 4000 requests and finally a producer index past the ring, once over per-request maps and once over blkback's persistent-grant cache: every request is answered with an error, the flood is served, the lie gets it disconnected, and a bystander domU's disk keeps working throughout; a hostile backend of another domU's disk is refused the pages it was not granted, and its answer with an id never issued is caught by the SDK's front, which fails every later call at once instead of misreading or hanging",
        bundle: |imgs| {
            let mut w = BundleWriter::new();
            let cmdline = format!("serve {} vbdback=victim:evil-back", attacker_plan().cmdline());
            w.domain(entry(imgs, "dom0", "dom0", DOM0_KIB, &cmdline, Expect::Poweroff)?.privileged(true).dma_kib(DOM0_DMA_KIB));
            w.domain(entry(imgs, "evil-front", "blk_attacker", 1024, "role=front", Expect::Poweroff)?);
            // Heap pages: its 96 pages of buffers and room to spare, with
            // the image and the disk's pool still inside 1024 KiB.
            w.domain(entry(imgs, "bystander", "blklog", 1024, "mode=batch seed=77 heap=144", Expect::Poweroff)?);
            w.domain(entry(imgs, "evil-back", "blk_attacker", 1024, "role=back", Expect::Poweroff)?);
            w.domain(entry(imgs, "victim", "blklog", 1024, "mode=victim", Expect::Poweroff)?);
            // The same attacks through blkback's persistent-grant cache.
            w.domain(entry(imgs, "evil-persist", "blk_attacker", 1024, "role=front persistent", Expect::Poweroff)?);
            finish(w, imgs)
        },
        append: "",
        icount: false,
        rig: Some(|rig| {
            let plan = attacker_plan();
            let image = rig.disk(plan.disk_sectors() * 512)?;
            plan.format(&image)?;
            Ok(())
        }),
        expect: Outcome::Pass,
        check: |out| {
            need(out, "[evil-front] blk-attacker: every hostile request refused, the flood served, the index lie disconnected")?;
            need(out, "[evil-front] blk-attacker: a good indirect read of 2 segments is answered OKAY, as the read it carried (Some((0, 0))): ok")?;
            need(out, "[evil-front] blk-attacker: an indirect list naming a grant never granted: answered with an error (Some(-1)): ok")?;
            need(out, "[bystander] blklog: 256 random 4 KiB reads, 32 in flight at a time, all intact (0 bad): ok")?;
            need(out, "[evil-back] blk-attacker: mapping the victim's store page (granted to dom0 only) writable is refused")?;
            need(out, "[victim] blklog: the hostile backend's lie was caught; the domain goes on")?;
            need(out, "[evil-persist] blk-attacker: every hostile request refused, the flood served, the index lie disconnected")?;
            need(out, "[dom0] serve: dom5 (evil-persist): disk connected (ring-ref ")?;
            need(out, ", persistent grants)")?;
            need(out, "serve: dom5: ring broken: ")?;
            need(out, "serve: dom1: ring broken: ")?;
            need(out, "blkback: dom1: request ")?;
            Ok(())
        },
    }
}

/// The streaming scenario's disk: 2 MiB, 32 requests of 64 KiB.
fn stream_plan() -> Plan {
    let mut p = Plan::default();
    p.add("streamer", Kind::Raw, 2);
    p
}

const STREAM_SEED: u64 = 0x57ea;

fn stream_scenario() -> Scenario {
    Scenario {
        name: "blk-stream",
        what: "a domU streams its disk through the SDK's BlockDevice::start/wait_done: 32 writes of 64 KiB from 8 zero-copy buffers kept in flight, a flush behind them refused Busy until they are answered and a read behind the flush Busy until it is, then 32 streamed reads with every byte checked; a batch while streaming is Busy, a buffer of 8 scattered pages (one device run per page) writes and reads back its pattern, and the 33rd single-page read meets the 32-slot ring's Busy; on the host the image holds every chunk's pattern",
        bundle: |imgs| {
            // 8 buffers of 16 pages and 33 single pages from the pool.
            let cmd = format!("mode=stream seed={STREAM_SEED} pool=192");
            let mut w = BundleWriter::new();
            let cmdline = format!("serve {}", stream_plan().cmdline());
            w.domain(entry(imgs, "dom0", "dom0", DOM0_KIB, &cmdline, Expect::Poweroff)?.privileged(true).dma_kib(DOM0_DMA_KIB));
            w.domain(entry(imgs, "streamer", "blklog", 2048, &cmd, Expect::Poweroff)?);
            finish(w, imgs)
        },
        append: "",
        icount: false,
        rig: Some(|rig| {
            let plan = stream_plan();
            let image = rig.disk(plan.disk_sectors() * 512)?;
            plan.format(&image)?;
            rig.after_run(move |_| {
                let v = &stream_plan().vbds[0];
                let mut buf = vec![0u8; v.region.sectors as usize * 512];
                vbd::read_virtual(&image, v, 0, &mut buf)?;
                if let Some((at, want, got)) = disk_pattern::first_mismatch(&buf, STREAM_SEED, 0) {
                    return Err(format!("the streamed writes: byte {at} is {got:#04x}, not {want:#04x}"));
                }
                println!("  image: the streamer's {} bytes are its pattern", buf.len());
                Ok(())
            });
            Ok(())
        }),
        expect: Outcome::Pass,
        check: |out| {
            for line in [
                "[streamer] blklog: 8 zero-copy buffers of 64 KiB: ok",
                "[streamer] blklog: a flush started behind 8 writes in flight is Busy: ok",
                "[streamer] blklog: a batch while streaming is Busy (Err(Busy)): ok",
                "[streamer] blklog: 32 streamed writes of 64 KiB answered OKAY (0 failed): ok",
                "[streamer] blklog: the flush starts once nothing is in flight (Ok(())): ok",
                "[streamer] blklog: a read started behind the flush is Busy: ok",
                "[streamer] blklog: the flush is answered OKAY, with its tag and no buffer: ok",
                "[streamer] blklog: 32 streamed reads, every byte as written (0 bad), 8 in flight at most: ok",
                "[streamer] blklog: a buffer of 8 scattered pages writes and reads back its pattern: ok",
                "[streamer] blklog: 32 single-page reads start, the next is Some(Busy): ok",
                "[streamer] blklog: every page came back (33 of 33): ok",
                "[streamer] blklog: streamed 32 writes and 32 reads of 64 KiB, 8 in flight, every byte as written",
                "serve: every domain served has ended (1); done",
            ] {
                need(out, line)?;
            }
            Ok(())
        },
    }
}

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![images_scenario(), attacker_scenario(), stream_scenario(), Scenario {
        name: "blk-durability",
        what: "a domU appends a log to its sparse virtual disk (records, flush, superblock write-through) and the power is cut (SIGKILL) on its acknowledgement; after a reboot on the same image the domU reads every record back through dom0's blkback, the host finds them through the image's map, and a second domU on another slice starts from an empty disk",
        bundle: |imgs| {
            let a = format!("mode=append records={A_RECORDS} seed={A_SEED} hold");
            bundle(imgs, &durability_plan(), &[("log-a", a)])
        },
        append: "",
        icount: false,
        rig: Some(|rig| {
            let plan = durability_plan();
            let image = rig.disk(plan.disk_sectors() * 512)?;
            plan.format(&image)?;
            rig.kill_on(&format!("[log-a] blklog: appended {A_RECORDS} records"));
            rig.reboot(super::rig::Reboot {
                bundle: |imgs| {
                    let a = format!("mode=verify records={A_RECORDS} seed={A_SEED}");
                    let b = format!("mode=append records={B_RECORDS} seed={B_SEED}");
                    bundle(imgs, &durability_plan(), &[("log-a", a), ("log-b", b)])
                },
                expect: Outcome::Pass,
                check: |out| {
                    need(out, &format!("[log-a] blklog: verified {A_RECORDS} records (seed {A_SEED:#x})"))?;
                    need(out, &format!("[log-b] blklog: appended {B_RECORDS} records (seed {B_SEED:#x}), flushed"))?;
                    need(out, "serve: every domain served has ended")?;
                    // The host's own reading of both disks.
                    let plan = durability_plan();
                    let image = image_path("blk-durability");
                    check_log(&image, &plan.vbds[0], A_RECORDS, A_SEED)?;
                    check_log(&image, &plan.vbds[1], B_RECORDS, B_SEED)?;
                    Ok(())
                },
            });
            Ok(())
        }),
        expect: Outcome::Killed,
        check: |out| {
            let line = find_line(out, "[log-a] blklog: appended ")?;
            if !line.ends_with("flushed") {
                return Err(format!("the acknowledgement is incomplete: {line}"));
            }
            need(out, "serve: dom1 (log-a): disk connected")?;
            Ok(())
        },
    }]
}

/// The host's evidence for a manifest's blklog domUs, read off `image`
/// through each disk's map: every `mode=append` and `mode=overlay` log is
/// there as its command line (`records=`, `seed=`) says, each overlay's
/// sectors past its log still read as its template, and every template is
/// byte for byte as xtask filled it (no overlay wrote its base). Domains
/// of other images or modes are not read.
pub(super) fn check_manifest_disks(m: &Manifest, image: &std::path::Path) -> Result<()> {
    let arg = |cmd: &str, key: &str| -> Option<u64> {
        cmd.split(' ').find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).and_then(|v| v.parse().ok())
    };
    let mut checked = 0;
    for d in m.domain.iter().filter(|d| d.image == "blklog") {
        let Some(v) = m.disks.of(&d.name) else { continue };
        let mode = d.cmdline.split(' ').find_map(|w| w.strip_prefix("mode=")).unwrap_or("append");
        if mode != "append" && mode != "overlay" {
            continue;
        }
        let records = arg(&d.cmdline, "records").unwrap_or(64);
        let seed = arg(&d.cmdline, "seed").unwrap_or(0x5eed);
        check_log(image, v, records, seed)?;
        if let Kind::Overlay(t) = v.kind {
            let (base, Kind::Template(tseed)) = (&m.disks.vbds[t], m.disks.vbds[t].kind) else {
                return Err(format!("{}'s overlay has no template in the plan", d.name));
            };
            let from = records + 1;
            let mut rest = vec![0u8; base.region.sectors.saturating_sub(from) as usize * 512];
            vbd::read_virtual(image, v, from, &mut rest)?;
            if let Some((at, ..)) = disk_pattern::first_mismatch(&rest, tseed, from * 512) {
                return Err(format!("{}: byte {at} past its log does not read as its template", d.name));
            }
        }
        checked += 1;
    }
    for t in m.disks.vbds.iter() {
        let Kind::Template(seed) = t.kind else { continue };
        let mut buf = vec![0u8; t.region.sectors as usize * 512];
        vbd::read_virtual(image, t, 0, &mut buf)?;
        if let Some((at, ..)) = disk_pattern::first_mismatch(&buf, seed, 0) {
            return Err(format!(
                "the template at LBA {} changed at byte {at}: an overlay wrote its base",
                t.region.lba
            ));
        }
        println!("  image: the template at LBA {} (seed {seed:#x}) is intact", t.region.lba);
    }
    if checked == 0 {
        return Err("the manifest has disks but no blklog log to read back".into());
    }
    Ok(())
}

/// Checks a blklog log on `v`'s virtual disk from the host, through the
/// image's map as dom0 reads it.
pub(super) fn check_log(image: &std::path::Path, v: &vbd::Vbd, records: u64, seed: u64) -> Result<()> {
    let mut sb = [0u8; 512];
    vbd::read_virtual(image, v, 0, &mut sb)?;
    if &sb[..8] != b"RFLOG001"
        || u64::from_le_bytes(sb[8..16].try_into().expect("8 bytes")) != records
        || u64::from_le_bytes(sb[16..24].try_into().expect("8 bytes")) != seed
    {
        return Err(format!("{}'s superblock on the image is not {records} records of seed {seed:#x}", v.domain));
    }
    let mut data = vec![0u8; records as usize * 512];
    vbd::read_virtual(image, v, 1, &mut data)?;
    if let Some((at, got, want)) = disk_pattern::first_mismatch(&data, seed, 512) {
        return Err(format!("{}'s record bytes differ on the image at byte {at}: {got:#x}, want {want:#x}", v.domain));
    }
    println!("  image: {}'s {records} records (seed {seed:#x}) read back by the host through its map", v.domain);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_images::Device;
    use std::path::Path;

    /// dom0, a raw-slice log and an overlay log, as in demo.toml.
    const MANIFEST: &str = r#"
[devices]
disk_mib = 32
[[template]]
name = "base"
mib = 1
seed = 9
[[domain]]
name = "log"
image = "blklog"
mem_kib = 1024
cmdline = "mode=append records=4 seed=5"
disk = { kind = "raw", mib = 1 }
[[domain]]
name = "ovl"
image = "blklog"
mem_kib = 1024
cmdline = "mode=overlay records=2 seed=6 template=9"
disk = { kind = "overlay", mib = 2, template = "base" }
[[domain]]
name = "dom0"
image = "dom0"
mem_kib = 3072
privileged = true
cmdline = "devices"
"#;

    /// A fresh image of `m`'s disk, prepared as for a run.
    fn prepared(m: &Manifest, name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("xtask-{name}-{}.img", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(m.devices.disk_mib << 20).unwrap();
        images::prepare_disk(m, &path).unwrap();
        path
    }

    /// Writes a blklog log of `records` of `seed` onto `v`'s raw slice.
    fn write_raw_log(image: &Path, v: &vbd::Vbd, records: u64, seed: u64) {
        let mut dev = vbd::FileDevice::open(image).unwrap();
        let mut sb = [0u8; 512];
        sb[..8].copy_from_slice(b"RFLOG001");
        sb[8..16].copy_from_slice(&records.to_le_bytes());
        sb[16..24].copy_from_slice(&seed.to_le_bytes());
        dev.write(v.region.lba, &sb).unwrap();
        let mut data = vec![0u8; records as usize * 512];
        disk_pattern::fill(&mut data, seed, 512);
        dev.write(v.region.lba + 1, &data).unwrap();
    }

    #[test]
    fn the_manifest_check_wants_every_log_on_the_image_and_the_template_intact() {
        let m = Manifest::parse(MANIFEST, Path::new("t.toml")).unwrap();
        let image = prepared(&m, "manifest-disks");
        // Nothing written yet: the raw slice's log is missing.
        let e = check_manifest_disks(&m, &image).unwrap_err();
        assert_eq!(e, "log's superblock on the image is not 4 records of seed 0x5");
        write_raw_log(&image, m.disks.of("log").unwrap(), 4, 5);
        // A fresh overlay reads as its template: no superblock there.
        let e = check_manifest_disks(&m, &image).unwrap_err();
        assert_eq!(e, "ovl's superblock on the image is not 2 records of seed 0x6");
        // A record one byte off is caught.
        let v = m.disks.of("log").unwrap().clone();
        let mut dev = vbd::FileDevice::open(&image).unwrap();
        let mut s = [0u8; 512];
        dev.read(v.region.lba + 2, &mut s).unwrap();
        s[7] ^= 1;
        dev.write(v.region.lba + 2, &s).unwrap();
        let e = check_manifest_disks(&m, &image).unwrap_err();
        assert!(e.starts_with("log's record bytes differ on the image at byte 519: "), "{e}");
        // dom0's proof region is as xtask wrote it, below the disks.
        let r = disk_pattern::dom0::READ;
        let region = crate::evidence::pattern::Region { first_sector: r.lba, sectors: r.sectors };
        crate::evidence::pattern::check_pattern(&image, region, r.seed).unwrap();
        std::fs::remove_file(image).unwrap();
    }

    #[test]
    fn a_template_an_overlay_wrote_through_is_caught() {
        let m = Manifest::parse(MANIFEST, Path::new("t.toml")).unwrap();
        let image = prepared(&m, "manifest-template");
        write_raw_log(&image, m.disks.of("log").unwrap(), 4, 5);
        // The overlay's log written straight onto its base (what a broken
        // copy-on-write would do): the overlay reads it, the template is
        // no longer the pattern.
        let t = m.disks.vbds.iter().find(|v| matches!(v.kind, Kind::Template(_))).unwrap().clone();
        let mut tv = t.clone();
        tv.domain = "ovl".into();
        write_raw_log(&image, &tv, 2, 6);
        let e = check_manifest_disks(&m, &image).unwrap_err();
        assert_eq!(e, format!("the template at LBA {} changed at byte 0: an overlay wrote its base", t.region.lba));
        std::fs::remove_file(image).unwrap();
    }
}
