//! QEMU scenarios: each boots the real hypervisor with real guests and
//! asserts on the console and on QEMU's exit status. Every scenario has a
//! timeout, and exit status 0 (a triple fault) never counts as success.
//!
//! A scenario may have a [`Rig`]: devices for its machine (a virtio disk on
//! an image file, a virtio NIC with host forwards), host-side actions while
//! QEMU runs, and host-side checks after it (see [`rig`]).

mod blk;
pub mod dom0_net;
mod net_attack;
mod net_http;
pub mod net_split;
mod new_guest;
pub mod rig;
mod toolstack;

use crate::evidence::pattern::{check_pattern, write_pattern, Region};
use crate::images::{self, add_symbols, Images};
use crate::manifest::Manifest;
use crate::qemu::devices::Proto;
use crate::qemu::{self, Outcome, RunOpts};
use crate::{root, Result};
use rig::Rig;
use ringfence_bundle::Expect;
use ringfence_bundle_writer::{BundleWriter, DomainEntry};
use std::time::{Duration, Instant};

/// Domains in `thousand-domains`.
const THOUSAND: usize = 1000;

/// Default time limit of one scenario.
const TIMEOUT_S: u64 = 60;

/// A scenario: what to boot and what must be seen.
struct Scenario {
    name: &'static str,
    what: &'static str,
    /// Builds the bundle (None: boot without one).
    bundle: fn(&Images) -> Result<Option<Vec<u8>>>,
    /// Hypervisor command line.
    append: &'static str,
    /// Run under `-icount shift=0` (time = instructions): for measurements
    /// that must not depend on how busy the host is.
    icount: bool,
    /// Devices and host-side work (None: the plain machine).
    rig: Option<fn(&mut Rig) -> Result<()>>,
    expect: Outcome,
    /// Extra checks on the console output.
    check: fn(&str) -> Result<()>,
}

fn guest(imgs: &Images, name: &str) -> Result<Vec<u8>> {
    imgs.guest(name, &root())
}

fn entry(imgs: &Images, name: &str, image: &str, kib: u32, cmdline: &str, expect: Expect) -> Result<DomainEntry> {
    Ok(DomainEntry::new(name, guest(imgs, image)?, kib).cmdline(cmdline).expect(expect))
}

fn finish(mut w: BundleWriter, imgs: &Images) -> Result<Option<Vec<u8>>> {
    add_symbols(&mut w, imgs)?;
    Ok(Some(w.finish()))
}

/// The device scenarios' bundle: a privileged `dom0` (1.5 MiB, `cmdline`,
/// a DMA pool of `dma_kib`) and an ordinary `domu` (768 KiB, `role=domu`),
/// both running `image`.
fn dom0_and_domu(imgs: &Images, image: &str, cmdline: &str, dma_kib: u32) -> Result<Option<Vec<u8>>> {
    let mut w = BundleWriter::new();
    w.domain(entry(imgs, "dom0", image, 1536, cmdline, Expect::Poweroff)?.privileged(true).dma_kib(dma_kib));
    w.domain(entry(imgs, "domu", image, 1024, "role=domu", Expect::Poweroff)?);
    finish(w, imgs)
}

/// A virtio disk (64 MiB image) at 00:02.0 and a virtio NIC (UDP port 7
/// forwarded) at 00:03.0.
fn virtio_disk_and_nic(rig: &mut Rig) -> Result<()> {
    rig.disk(64 << 20)?;
    rig.nic(&[(Proto::Udp, 7)])?;
    Ok(())
}

/// Every `spy` attempt that must crash the spy, and the fault it must get.
const SPY_ATTEMPTS: &[(&str, &str)] = &[
    ("read-hv", "#PF (page fault) in ring 1 at rip 0x"),
    ("write-hv", "#PF (page fault) in ring 1"),
    ("write-idt", "write to a read-only page"),
    ("write-gdt", "write to a read-only page"),
    ("load-ring0-selector", "error code 0x10 (selector 0x10)"),
    ("far-jump-ring0", "error code 0x8 (selector 0x8)"),
    ("iret-ring0", "#GP (general protection) in ring 1"),
    ("cli", "#GP (general protection) in ring 1"),
    ("hlt", "#GP (general protection) in ring 1"),
    ("mov-cr3", "#GP (general protection) in ring 1"),
    ("wrmsr", "#GP (general protection) in ring 1"),
    ("rdmsr", "#GP (general protection) in ring 1"),
    ("lgdt", "#GP (general protection) in ring 1"),
    ("lidt", "#GP (general protection) in ring 1"),
    ("in", "#GP (general protection) in ring 1"),
    ("out", "#GP (general protection) in ring 1"),
    ("int-timer", "(an IDT gate)"),
    ("int-pagefault", "(an IDT gate)"),
    ("syscall", "#UD (invalid opcode) in ring 1"),
    ("canonical-hole", "trap from the last bytes below the canonical hole: return address 0x800000000000"),
    (
        "canonical-hole-hypercall",
        "trap from the last bytes below the canonical hole: return address 0x800000000000 (vector 0x82)",
    ),
];

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "demo",
            what: "the `cargo xtask run` demo passes with every domain as expected, among them three domUs on virtual disks dom0 serves from the manifest (a raw-slice log, two overlays on one template), whose logs the host finds on the image with the template intact, and a web server domU behind dom0's bridge and uplink whose page the host fetches with curl",
            bundle: |imgs| {
                let m = Manifest::load(&root().join("sample-guests/manifests/demo.toml"))?;
                let p = images::pack_manifest(imgs, &m)?;
                Ok(Some(std::fs::read(p).map_err(|e| e.to_string())?))
            },
            append: "",
            icount: false,
            rig: Some(demo_rig),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "(rf) Ringfence 0.1.0 hypervisor (x86_64, ring 0)")?;
                need(out, "[hello] Hello from hello (domain 1), ring 1, ABI 0.1")?;
                need(out, "[hello] features: fpu-preserved=true isolated-entry=true")?;
                need(out, "[spy-hypercalls] spy: 25/25 bad hypercalls refused with the right error")?;
                // dom0 brings up its disk beside the demo domains.
                need(out, "[dom0] blk: virtio-blk at 00:02.0: 131072 sectors (64 MiB), GSI 22, port ")?;
                need(out, "[dom0] blk: wrote 384 sectors at LBA 8192 (seed 0xd00b1c), flushed")?;
                demo_disks(out)?;
                // The web domU, reached by the host's curl (demo_rig).
                need(out, "[web] httpd: listening on 10.0.2.15:80")?;
                need(out, "[web] web: served 2 requests (0 malformed), stopped by GET /stop: true: ok")?;
                // dom0's toolstack: its shell and API are up, and the API
                // made a domain from a template (demo_rig).
                need(out, "[dom0] toolstack: shell ready, 4 template(s): greet, spin, sleeper, ovl; type `help`")?;
                need(out, "[dom0] api: created dom")?;
                need(out, "[hello-api] hello round 1/1: sse registers intact: true")?;
                need(out, "(rf) verdict: PASS")?;
                interleaved(out, "[hello] hello round", "[ticker] tick ")?;
                sse_intact(out, "[hello] hello round", 4)?;
                sse_intact(out, "[ticker] tick ", 4)
            },
        },
        Scenario {
            name: "isolation",
            what: "every spy attempt crashes only the spy; hello finishes beside them",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hello", "hello", 1024, "rounds=3", Expect::Poweroff)?);
                for (a, _) in SPY_ATTEMPTS {
                    w.domain(entry(imgs, &format!("spy-{a}"), "spy", 512, &format!("attempt={a}"), Expect::Crash)?);
                }
                w.domain(entry(imgs, "spy-hypercalls", "spy", 512, "attempt=hypercalls", Expect::Poweroff)?);
                w.domain(entry(imgs, "spy-df", "spy", 512, "attempt=direction-flag", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                for (a, fault) in SPY_ATTEMPTS {
                    let tag = format!("[spy-{a}] spy: attempting {a}");
                    need(out, &tag)?;
                    let line = find_line(out, &format!("(spy-{a}) crashed: "))?;
                    if !line.contains(fault) {
                        return Err(format!("spy attempt {a}: expected a crash with '{fault}', got: {line}"));
                    }
                    deny(out, &format!("[spy-{a}] spy: attempt {a} was NOT stopped"))?;
                }
                need(out, "[spy-hypercalls] spy: 25/25 bad hypercalls refused with the right error")?;
                need(out, "(spy-hypercalls) exited: poweroff")?;
                need(out, "[spy-df] spy: console write with DF set returned 19, DF still set afterwards: true")?;
                need(out, "[spy-df] spy: the hypervisor survived DF")?;
                need(out, "[hello] goodbye")?;
                sse_intact(out, "[hello] hello round", 3)?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "guest-faults",
            what: "a guest kernel's own faults crash only that guest, each reported after its last output",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                for f in ["panic", "pagefault", "ud2", "divide", "flood"] {
                    w.domain(entry(imgs, &format!("faulty-{f}"), "faulty", 512, &format!("fault={f}"), Expect::Crash)?);
                }
                w.domain(entry(imgs, "ticker", "ticker", 1024, "", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[faulty-panic] PANIC: panicked at")?;
                need(out, "(faulty-panic) exited: crash (guest request)")?;
                need(out, "(faulty-pagefault) crashed: #PF (page fault) in ring 1")?;
                need(out, "read of an unmapped page")?;
                need(out, "(faulty-ud2) crashed: #UD (invalid opcode) in ring 1")?;
                need(out, "(faulty-divide) crashed: #DE (divide error) in ring 1")?;
                deny(out, "faulty: still alive")?;
                // A domain's leftover console output comes out whole, before
                // the report of its end.
                let last = out.find("[faulty-flood] flood line 40 of 40").ok_or("the flood's last line is missing")?;
                let ended = out.find("(faulty-flood) exited: crash (guest request)").ok_or("no report of the flood's end")?;
                if last > ended {
                    return Err("the flood's last line came after the report of its end".into());
                }
                for n in 1..=40 {
                    need(out, &format!("[faulty-flood] flood line {n:2} of 40 ..."))?;
                }
                need(out, "[ticker] ticker done")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "pt-attacker",
            what: "every page-table attack of a hostile guest is refused with the documented errno; work per hypercall is bounded",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "pt-attacker", "pt-attacker", 1024, "", Expect::Poweroff)?);
                w.domain(entry(imgs, "hello", "hello", 1024, "rounds=1", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            // Its latency probe is read in instructions, not host time.
            icount: true,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                let p = "[pt-attacker] pt-attacker: ";
                let summary = find_line(out, " attacks refused with the right error")?;
                let (got, of) = (num_after(summary, p)?, num_after(summary, "/")?);
                if got != of || of < 100 {
                    return Err(format!("not every page-table attack was refused rightly: {summary}"));
                }
                let checks = find_line(out, " consistency checks passed")?;
                if num_after(checks, p)? != num_after(checks, "/")? {
                    return Err(format!("a consistency check failed: {checks}"));
                }
                deny(out, ") WRONG")?;
                deny(out, ": FAILED")?;
                for line in [
                    "mmu_update: map its page table (L1) writable: EBUSY (want EBUSY) refused",
                    "update_va_mapping: remap its PML4 writable at its own address: EBUSY (want EBUSY) refused",
                    "update_va_mapping: map the hypervisor image (mfn 0x100): EPERM (want EPERM) refused",
                    "update_va_mapping: map an absurd mfn (1 << 39): EPERM (want EPERM) refused",
                    "pin an L1 whose entries map another domain's frames: EPERM (want EPERM) refused",
                    "pin a page that is still mapped writable as an L1: EBUSY (want EBUSY) refused",
                    "pin the shared-info page (mapped read-only) as an L1: EBUSY (want EBUSY) refused",
                    "unpin its live L1 (still linked by its L2): EBUSY (want EBUSY) refused",
                    "mmu_update batch of 513 requests: E2BIG (want E2BIG) refused",
                    "check: done = 333 (want 333): ok",
                    "mmu_update of PML4 slot 511 with its current value: EPERM (want EPERM) refused",
                    "L2 entry with PS: a 2 MiB page over its own memory: EINVAL (want EINVAL) refused",
                    "mmu_update unknown command (ptr | 1): ENOSYS (want ENOSYS) refused",
                    "check: its page tables are exactly as at boot (0 entries differ): ok",
                    "still alive, memory intact",
                ] {
                    need(out, &format!("{p}{line}"))?;
                }
                // The tree's size follows the guest's free memory.
                let storm = find_line(out, &format!("{p}latency: 512 link/unlink of an unpinned "))?;
                if !storm.ends_with("-table tree in one batch: EINVAL (want EINVAL) refused") {
                    return Err(format!("the unpinned-tree storm was not refused rightly: {storm}"));
                }
                let lat = find_line(out, "latency: worst single page-table hypercall took ")?;
                println!("  {}", lat.trim_start_matches(p));
                need(out, "us is below the bound of 100000 us: ok")?;
                need(out, "(rf) dom1 (pt-attacker) exited: poweroff")?;
                need(out, "[hello] goodbye")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "evtchn-ping",
            what: "two domains bounce 10000 events over an interdomain channel (the first sent before the back set its handler, and held); an intruder cannot bind it; a close reverts the peer's end",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "ping-back", "evtchn-ping", 512, "role=back peer=2", Expect::Poweroff)?);
                w.domain(entry(imgs, "ping-front", "evtchn-ping", 512, "role=front peer=1 rounds=10000", Expect::Poweroff)?);
                w.domain(entry(imgs, "intruder", "evtchn-ping", 512, "role=intruder peer=1", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                let offered = find_line(out, "[ping-back] evtchn-ping back: offered port ")?;
                let port = num_after(offered, "offered port ")?;
                // An event sent before the handler was set is held, not lost.
                need(out, "[ping-back] evtchn-ping back: the front's first event waited, pending, for the handler: got 1")?;
                let front = find_line(out, "[ping-front] evtchn-ping front: ")?;
                if num_after(front, "front: ")? != 10_000 || num_after(front, "(peer port ")? != port {
                    return Err(format!("the front did not complete its round trips on the offered port: {front}"));
                }
                let back = find_line(out, "[ping-back] evtchn-ping back: answered ")?;
                if num_after(back, "answered ")? != 10_000 || !back.ends_with(&format!("port {port} is unbound for dom2")) {
                    return Err(format!("the back did not answer every event and see the close: {back}"));
                }
                need(out, "[intruder] evtchn-ping intruder: 63 of 63 ports of dom1 refused (EINVAL); send on an unbound port: Err(ENOTCONN); port 60 closed: Ok(true)")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "grant-copy",
            what: "a page granted read-only is copied out intact through the grant; misuse is refused with the documented status; a revoked grant copies nothing",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "granter", "grant-copy", 512, "role=granter peer=2", Expect::Poweroff)?);
                w.domain(entry(imgs, "reader", "grant-copy", 512, "role=reader peer=1", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[granter] grant-copy granter: page granted read-only to dom2 as reference 8")?;
                // Statuses: permission denied (write through a read-only
                // grant), bad reference, bad copy argument (across the page
                // end), bad domain, bad page (a frame not the reader's).
                need(out, "[reader] grant-copy reader: copied 4096 bytes intact: true; refused: [-8, -3, -10, -2, -9]; after revoke: -3")?;
                need(out, "[granter] grant-copy granter: in use after the copies: false; revoke: Ok(())")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "grant-map",
            what: "a grant mapped writable is written by the grantee and read by the granter; a read-only grant is never mapped writable; a mapping cannot be changed with update_va_mapping; a grant cannot be revoked while mapped, and comes free when its mapper dies",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "granter", "grant-copy", 512, "mode=map role=granter peer=2", Expect::Poweroff)?);
                w.domain(entry(imgs, "mapper", "grant-copy", 512, "mode=map role=mapper peer=1", Expect::Poweroff)?);
                w.domain(entry(imgs, "granter-2", "grant-copy", 512, "mode=map crash role=granter peer=4", Expect::Poweroff)?);
                w.domain(entry(imgs, "mapper-crash", "grant-copy", 512, "mode=map crash role=mapper peer=3", Expect::Crash)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[mapper] grant-map mapper: mapped at 0x")?;
                need(out, "[mapper] grant-map mapper: writable map of a read-only grant: Some(Status(-8)); read-only page says \"read-only page\"; update_va_mapping over the mapping: Some(EBUSY)")?;
                need(out, "[granter] grant-map granter: greeting seen: true; in use while mapped: true; revoke while mapped: Call(EBUSY)")?;
                need(out, "[mapper] grant-map mapper: unmapped: Ok(()) Ok(())")?;
                need(out, "[granter] grant-map granter: after the unmap: in use: false; revoke: Ok(())")?;
                // The same, but the mapper crashes with both grants mapped:
                // its teardown releases them.
                need(out, "[mapper-crash] grant-map mapper: crashing with both grants mapped")?;
                need(out, "[granter-2] grant-map granter: after the mapper crashed: in use: false; revoke: Ok(())")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "pingpong",
            what: "a million requests over an SDK channel (a ring in a granted page plus an event channel), answered out of order in batches, each response checked by id, value and sequence",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "front", "pingpong", 512, "role=front peer=2 requests=1000000", Expect::Poweroff)?);
                w.domain(entry(imgs, "back", "pingpong", 512, "role=back peer=1 batch=16", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[front] pingpong front: ring granted as reference 8 on port ")?;
                let front = find_line(out, "[front] pingpong front: 1000000 requests answered; bad responses 0; sequence sum ok: true; out of order: ")?;
                if num_after(front, "out of order: ")? == 0 {
                    return Err(format!("the back answers batches in reverse, yet every response came in order: {front}"));
                }
                // Notification hold-off: far fewer events than requests.
                if num_after(front, "notifications sent ")? > 1_000_000 / 16 {
                    return Err(format!("the front notified more than once per 16 requests: {front}"));
                }
                let back = find_line(out, "[back] pingpong back: answered 1000001 requests in ")?;
                let batches = num_after(back, " requests in ")?;
                if batches < 1_000_001 / 16 || num_after(back, "batches (")? == 0 {
                    return Err(format!("the back did not batch (at most 16) and reorder: {back}"));
                }
                if num_after(back, "notifications sent ")? > 1_000_001 / 16 {
                    return Err(format!("the back notified more than once per 16 requests: {back}"));
                }
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "grant-attacker",
            what: "a hostile grantee beside a victim and a bystander: forged, foreign and out-of-range refs, misuse, both quotas, ports not offered, an event storm and the granter crashing while mapped; each refused with its documented status, and the victim finishes",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "victim", "grant-attacker", 1024, "role=victim peer=2 bystander=3", Expect::Poweroff)?);
                w.domain(entry(imgs, "attacker", "grant-attacker", 8192, "role=attacker peer=1 bystander=3", Expect::Crash)?);
                w.domain(entry(imgs, "bystander", "grant-attacker", 512, "role=bystander peer=1", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[victim] grant-attacker victim: granted 8 9 10..14 15")?;
                need(out, "[bystander] grant-attacker bystander: reference 9 says \"for the bystander only\"; unmap: Ok(())")?;
                need(out, "[attacker] grant-attacker attacker: forged refs [-3, -3, -3, -3, -3]; another domain's ref [-8, -8]; writable map of a read-only grant -8; copy across the page end -10")?;
                need(out, "[attacker] grant-attacker attacker: grant table beyond the quota: -13")?;
                need(out, "[attacker] grant-attacker attacker: one frame mapped 255 times, then refused -13; 1024 mappings in all, then refused -13; 0 unmaps failed")?;
                need(out, "[attacker] grant-attacker attacker: 63 of 63 victim ports and 63 of 63 bystander ports refused; send on an unbound port: Err(ENOTCONN); on a closed port: Err(EINVAL)")?;
                need(out, "[victim] grant-attacker victim: revoke while mapped: Call(EBUSY)")?;
                need(out, "[attacker] grant-attacker attacker: unmap of 15: Ok(()); map after the revoke: -3")?;
                need(out, "[victim] grant-attacker victim: revoke after the unmap: Ok(())")?;
                need(out, "[attacker] grant-attacker attacker: storm of 200000 sends done (0 refused)")?;
                need(out, "[attacker] grant-attacker attacker: reference 8 mapped by the victim: true; crashing")?;
                need(out, "[victim] grant-attacker victim: storm events seen: some; after the granter died: pattern intact: true; write read back: true; unmap: Ok(())")?;
                need(out, "[victim] grant-attacker victim: finished; revoked 8 and 9: [true, true]")?;
                need(out, "[bystander] grant-attacker bystander: the victim has gone; finished")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "dom0-mmio",
            what: "dom0 maps virtio-blk's BAR uncached through the validated page-table path and reads the disk's capacity from its device configuration; the MSI-X BAR maps read-only only; RAM, the hypervisor, the APICs, a frame no BAR holds and a cached entry are refused, and the mapped BAR cannot move or stop decoding; dom0 takes a buffer from its machine-contiguous DMA pool; a domU gets EPERM",
            bundle: |imgs| dom0_and_domu(imgs, "dom0_mmio", "", 64),
            append: "",
            icount: false,
            rig: Some(|rig| {
                rig.disk(64 << 20)?;
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[dom0] mmio: virtio-blk at 00:02.0")?;
                need(out, "[dom0] mmio: virtio common cfg in BAR4 at 0x")?;
                need(out, "[dom0] mmio: virtio device cfg in BAR4 at 0x")?;
                need(out, "[dom0] mmio: virtio-blk capacity through MMIO: 131072 sectors")?;
                for line in [
                    "move the mapped BAR: EBUSY as expected",
                    "turn memory decoding off while mapped: EBUSY as expected",
                    "map the MSI-X table writable: EPERM as expected",
                    "map the MSI-X table read-only: ok as expected",
                    "map the hypervisor's RAM (0x100000): EPERM as expected",
                    "map frame 0: EPERM as expected",
                    "map the local APIC (0xfee00000): EPERM as expected",
                    "map the IOAPIC (0xfec00000): EPERM as expected",
                    "map a frame no BAR holds (0xfe000000): EPERM as expected",
                    "map the BAR cached: EINVAL as expected",
                    "turn memory decoding off once unmapped: ok as expected",
                    "the buffer's machine address matches the frame list: ok",
                    "the buffer reads back: ok",
                ] {
                    need(out, &format!("[dom0] mmio: {line}"))?;
                }
                need(out, "[dom0] mmio: DMA pool: 16 pages at va 0x")?;
                need(out, "[dom0] mmio: DMA buffer: 8192 bytes at machine 0x")?;
                need(out, "[dom0] dom0: ")?;
                need(out, "[domu] mmio: domU maps a device frame: EPERM as expected")?;
                need(out, "[domu] mmio: domU maps the local APIC: EPERM as expected")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "dom0-pci",
            what: "the privileged dom0 enumerates PCI through the hypervisor (the q35 host bridge among the functions) and its forbidden configuration writes are refused (a BAR onto the hypervisor, RAM or the APICs; MSI; the host and ISA bridges) while decoding, bus mastering and BAR sizing work; dom0's in/out on its SMBus I/O BAR is emulated and every hypervisor port (COM1, PCI configuration, the debug exit, the legacy chipset) is refused with a #GP it catches; a domU gets EPERM and #GP for every port",
            bundle: |imgs| dom0_and_domu(imgs, "dom0", "", 0),
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                // The hypervisor's view: what dom0 is given.
                need(out, "(rf) pci 00:00.0 8086:29c0 class 06/00/00: not given")?;
                need(out, "(rf) pci 00:1f.0 8086:2918 class 06/01/00: not given")?;
                need(out, "(rf) pci 00:1f.2 8086:2922 class 01/06/01: dom0's, BAR4 io 0x")?;
                // dom0's enumeration, one line per function.
                need(out, "[dom0] pci 00:00.0 8086:29c0 class 06/00/00 host bridge")?;
                need(out, "[dom0] pci 00:1f.0 8086:2918 class 06/01/00 ISA bridge")?;
                need(out, "[dom0] pci 00:1f.2 8086:2922 class 01/06/01 SATA controller")?;
                need(out, "[dom0] pci 00:1f.3 8086:2930 class 0c/05/00 SMBus controller")?;
                need(out, "[dom0] dom0: 4 PCI functions")?;
                for line in [
                    "memory decoding and bus mastering of 00:1f.2 on: ok",
                    "MWI bit of 00:1f.2's command register: EPERM (want EPERM) refused",
                    "move BAR5 of 00:1f.2 onto the hypervisor image (0x100000): EPERM (want EPERM) refused",
                    "move BAR5 of 00:1f.2 onto RAM (0x2000000): EPERM (want EPERM) refused",
                    "move BAR5 of 00:1f.2 onto the local APIC (0xfee00000): EPERM (want EPERM) refused",
                    "move BAR5 of 00:1f.2 onto the IOAPIC (0xfec00000): EPERM (want EPERM) refused",
                    "BAR5 of 00:1f.2 still where the firmware put it: ok",
                    "BAR5 of 00:1f.2 sizes to 4096 bytes; restored at 0x",
                    "enable MSI of 00:1f.2: EPERM (want EPERM) refused",
                    "MSI address of 00:1f.2: EPERM (want EPERM) refused",
                    "command register of the host bridge 00:00.0: EPERM (want EPERM) refused",
                    "interrupt line of the ISA bridge 00:1f.0: EPERM (want EPERM) refused",
                    "PCI read with device 32: EINVAL (want EINVAL) refused",
                    "PCI read with size 3: EINVAL (want EINVAL) refused",
                    "map_pirq of GSI 22 (no device of dom0's): EPERM (want EPERM) refused",
                    "eoi of pirq 22 (not its line): EPERM (want EPERM) refused",
                ] {
                    need(out, &format!("[dom0] dom0: {line}"))?;
                }
                // Port I/O: emulated for dom0's own I/O BARs, refused
                // (a #GP the guest catches) everywhere else.
                need(out, "[dom0] dom0: SMBus BAR4 is an I/O BAR at 0x")?;
                need(out, "[dom0] dom0: in from the SMBus host status port: Ok(")?;
                need(out, "[dom0] dom0: 16-bit in from the SMBus BAR: ok")?;
                need(out, "[dom0] dom0: in of 32 bits across the SMBus BAR's end refused: ok")?;
                need(out, "[domu] domU: in from the SMBus port 0x700 refused: ok")?;
                for who in ["[dom0] dom0", "[domu] domU"] {
                    for what in [
                        "in from COM1 (port 0x3f8) refused",
                        "in from PCI configuration data (port 0xcfc) refused",
                        "in from the keyboard controller (port 0x60) refused",
                        "in from a port no BAR holds (port 0x1000) refused",
                        "out to COM1 refused",
                        "out to the debug exit refused",
                    ] {
                        need(out, &format!("{who}: {what}: ok"))?;
                    }
                }
                need(out, "[dom0] dom0: 33/33 checks as expected")?;
                need(out, "[domu] domU: pci::enumerate: EPERM (want EPERM) refused")?;
                need(out, "[domu] domU: write of 00:1f.2's command register: EPERM (want EPERM) refused")?;
                need(out, "[domu] domu: 14/14 checks as expected")?;
                deny(out, "WRONG")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "dom0-irq",
            what: "with a virtio disk and NIC attached, the hypervisor masks every IOAPIC entry at boot and offers dom0 exactly the GSIs their INTx pins route to (22, 23); dom0 maps and binds both to ports (programmed level-triggered, active low), EOIs them, and its bad requests (double map and bind, foreign GSIs and pirqs, MSI, another domain) get their documented errors; closing a port unbinds the line; a read through the virtio-blk driver brings a real device interrupt (the hypervisor's first on GSI 22; ISR read, then EOI); a domU gets EPERM",
            bundle: |imgs| dom0_and_domu(imgs, "dom0", "irq", 64),
            append: "",
            icount: false,
            rig: Some(virtio_disk_and_nic),
            expect: Outcome::Pass,
            check: |out| {
                // The hypervisor's view: the routing and the IOAPIC.
                need(out, ", INTx A -> GSI 22")?;
                need(out, ", INTx A -> GSI 23")?;
                need(out, "(rf) ioapic: 24 redirection entries, all masked; dom0 may map GSI(s) [22, 23]")?;
                need(out, "(rf) dom0: GSI 22 mapped to pirq 22")?;
                need(out, "(rf) dom0: GSI 23 mapped to pirq 23")?;
                need(out, "(vector 0xe6, level, active low, unmasked)")?;
                need(out, "(vector 0xe7, level, active low, unmasked)")?;
                for line in [
                    "virtio-blk at 00:02.0: INTx pin A -> GSI 22",
                    "virtio-net at 00:03.0: INTx pin A -> GSI 23",
                    "virtio-blk's GSI 22 is a q35 PCI INTx GSI (16-23): ok",
                    "map_pirq of GSI 22 (virtio-blk) gives pirq 22: ok",
                    "map_pirq of GSI 23 (virtio-net) gives pirq 23: ok",
                    "map_pirq of GSI 22 again: EEXIST (want EEXIST) refused",
                    "bind_pirq of pirq 23 again: EEXIST (want EEXIST) refused",
                    "eoi of pirq 22 with nothing in flight: ok",
                    "virtio-blk: device interrupt on port 2 (ISR read, then EOI): 1 for a read of sector 0: ok",
                    "map_pirq of GSI 21 (no device of dom0's): EPERM (want EPERM) refused",
                    "map_pirq of GSI 24 (past the IOAPIC): EINVAL (want EINVAL) refused",
                    "map_pirq of an MSI: EOPNOTSUPP (want EOPNOTSUPP) refused",
                    "map_pirq of GSI 22 for domain 2 (the domU): EPERM (want EPERM) refused",
                    "bind_pirq of pirq 20 (not mapped): EPERM (want EPERM) refused",
                    "eoi of pirq 21 (not its line): EPERM (want EPERM) refused",
                    "eoi of pirq 22 after close: EPERM (want EPERM) refused",
                    "pirq 22 binds again after close: ok",
                ] {
                    need(out, &format!("[dom0] dom0: {line}"))?;
                }
                need(out, "[dom0] dom0: 24/24 checks as expected")?;
                need(out, "[dom0] dom0: 1 device interrupt(s) taken")?;
                // The hypervisor saw the device's line, the real thing.
                need(out, "(rf) GSI 22: first interrupt (vector 0xe6, remote IRR 1, level): raising dom0's port 2; line masked until EOI")?;
                for line in ["physdev_op(eoi)", "physdev_op(map_pirq)", "bind_pirq of pirq 22"] {
                    need(out, &format!("[domu] domU: {line}: EPERM (want EPERM) refused"))?;
                }
                need(out, "[domu] domu: 14/14 checks as expected")?;
                // dom0 powered off: its lines were masked and freed.
                need(out, "(rf) dom0: 2 interrupt line(s) masked and freed")?;
                deny(out, "WRONG")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "dom0-attacker",
            what: "a hostile dom0 (virtio disk and NIC attached) has every device attack refused with its errno (RAM, the hypervisor and the APICs as device memory, the MSI-X table writable, BARs onto RAM or the hypervisor or moved while mapped, pirqs not given or bound twice, EOIs of lines not its own, garbage numbers, bad argument pointers: EFAULT); a domU beside it gets EPERM from every dom0-only call and keeps ticking after the attacks (the device interrupt storm is its companion scenario dom0-storm, run under icount to measure CPU shares)",
            bundle: |imgs| dom0_and_domu(imgs, "dom0_attacker", "", 64),
            append: "",
            icount: false,
            rig: Some(virtio_disk_and_nic),
            expect: Outcome::Pass,
            check: check_dom0_attacker,
        },
        Scenario {
            name: "dom0-devices",
            what: "dom0 enumerates PCI, brings up virtio-blk with its interrupt-driven driver, checks every byte of the pattern xtask wrote, writes its own pattern and flushes; on the host the image holds exactly what dom0 acknowledged as flushed and the pre-written region is intact; then it brings up virtio-net under smoltcp and the host's UDP datagrams through QEMU's forward come back intact (dom0-net's checks: ARP, ICMP, counters)",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                let cmdline = format!("devices {}", dom0_net::CMDLINE);
                // 2 MiB: a whole boot page-table page of memory, so no
                // slot of it is left for device memory and the BARs go to
                // the foreign-mapping window.
                w.domain(entry(imgs, "dom0", "dom0", 2048, &cmdline, Expect::Poweroff)?.privileged(true).dma_kib(512 + dom0_net::DMA_KIB));
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: Some(|rig| {
                let image = rig.disk(64 << 20)?;
                let read = region_of(disk_pattern::dom0::READ);
                write_pattern(&image, read, disk_pattern::dom0::READ.seed)?;
                // The NIC with its forwards, and the host side of the echo.
                dom0_net::rig(rig)?;
                rig.after_run(move |out| {
                    // What dom0 said it wrote and flushed, checked in the file.
                    let line = find_line(out, "[dom0] blk: wrote ")?;
                    let (sectors, lba) = (num_after(line, "blk: wrote ")?, num_after(line, " at LBA ")?);
                    let seed = hex_after(line, "(seed 0x")?;
                    if !line.ends_with("), flushed") {
                        return Err(format!("dom0 did not acknowledge a flush: {line}"));
                    }
                    let flushed = Region { first_sector: lba, sectors };
                    check_pattern(&image, flushed, seed)?;
                    // Nothing around it, and xtask's region unclobbered.
                    for s in [lba - 1, lba + sectors] {
                        check_zero(&image, s)?;
                    }
                    check_pattern(&image, read, disk_pattern::dom0::READ.seed)?;
                    println!("  image: sectors {lba}..{} hold seed {seed:#x} as dom0 flushed; {}..{} intact", lba + sectors, read.first_sector, read.first_sector + read.sectors);
                    Ok(())
                });
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[dom0] pci 00:02.0 1af4:1042 class 01/00/00")?;
                need(out, "[dom0] pci 00:03.0 1af4:1041 class 02/00/00")?;
                need(out, "[dom0] blk: virtio-blk at 00:02.0: 131072 sectors (64 MiB), GSI 22, port ")?;
                need(out, "[dom0] blk: read 256 sectors at LBA 2048: every byte is the pattern of seed 0xd15c5eed (131072 bytes)")?;
                need(out, "[dom0] blk: wrote 384 sectors at LBA 8192 (seed 0xd00b1c), flushed")?;
                need(out, "[dom0] blk: read back 384 sectors at LBA 8192: as written")?;
                need(out, "[dom0] blk: a read past the end refused before the device: sectors 131071..131073 are past the disk's end (131072 sectors)")?;
                need(out, "[dom0] blk: a read of 100 bytes refused before the device: a data length of 100 bytes is not whole sectors")?;
                // One interrupt per request: 2 reads, 3 writes, the flush, 3 reads back.
                let irqs = find_line(out, " device interrupt(s) for these requests (each: ISR read, then EOI)")?;
                let n = num_after(irqs, "[dom0] blk: ")?;
                if n != 9 {
                    return Err(format!("not one device interrupt for each of the 9 requests: {irqs}"));
                }
                // The network: the host's echoes, checked byte by byte
                // (dom0-net's checks), then the service told to stop.
                dom0_net::check(out)?;
                need(out, "[dom0] dom0: the network service ran until told to stop: ok")?;
                deny(out, "MISMATCH")?;
                deny(out, "WRONG")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "dom0-storm",
            what: "dom0's disk storms interrupts (its handler EOIs without reading the ISR, so the level line fires again at every EOI) for 1.2 s beside a CPU-bound domU of equal weight: dom0 takes many interrupts, the domU still gets its half of the CPU, the device is quiet again after an ISR read, and the hypervisor runs on",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "dom0", "dom0", 1536, "storm storm_ms=1200", Expect::Poweroff)?.privileged(true).dma_kib(512));
                w.domain(entry(imgs, "hog", "hog", 512, "millis=1000", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            // Shares are read in instructions, not host time (as bvt-hog).
            icount: true,
            rig: Some(|rig| {
                let image = rig.disk(64 << 20)?;
                let read = region_of(disk_pattern::dom0::READ);
                write_pattern(&image, read, disk_pattern::dom0::READ.seed)?;
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[dom0] storm: 1200 ms of a device interrupt storm (handler EOIs without reading the ISR)")?;
                let storm = find_line(out, "[dom0] storm: interrupts=")?;
                let n = num_after(storm, "interrupts=")?;
                // The hog's share while it was runnable, from its run-state
                // accounting: equal weights give each half; the storm is
                // dom0's, charged to dom0.
                let line = find_line(out, "[hog] hog: cpu_ns=")?;
                let (cpu, wait) = (num_after(line, "cpu_ns=")?, num_after(line, "wait_ns=")?);
                let share = cpu as f64 / (cpu + wait) as f64;
                println!("  storm: {n} device interrupts to dom0; the hog's share of the CPU while runnable: {share:.3} (fair: 0.5)");
                if n < 10_000 {
                    return Err(format!("no storm: only {n} interrupts: {storm}"));
                }
                if share < 0.45 {
                    return Err(format!("the storm starved the hog: it got {share:.3} of the CPU while runnable"));
                }
                need(out, "[dom0] storm: device quiet again: a read after the storm took 1 interrupt(s), pattern intact")?;
                need(out, "[dom0] dom0: interrupt storm survived: ok")?;
                need(out, "(rf) dom1 (hog) exited: poweroff")?;
                need(out, "(rf) dom0 (dom0) exited: poweroff")?;
                deny(out, "WRONG")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "dom0-blkbench-smoke",
            what: "the dom0 disk benchmark of `cargo xtask bench` on a small run (1 MiB each way, eight 4 KiB reads): it completes and prints every figure the bench parses, so the bench cannot rot unnoticed",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                // The bench's own dom0 entry, less data.
                let e = entry(imgs, "dom0", "dom0", 2048, "blkbench mib=1 reads4k=8", Expect::Poweroff)?;
                w.domain(e.privileged(true).dma_kib(768));
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: Some(|rig| {
                rig.disk(64 << 20)?;
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[dom0] blkbench: done (")?;
                for (name, k) in [
                    ("seq_read", "bytes"),
                    ("seq_read", "ns"),
                    ("seq_read", "tsc"),
                    ("seq_write", "bytes"),
                    ("seq_write", "ns"),
                    ("memcpy", "bytes"),
                    ("memcpy", "ns"),
                    ("read_4k", "count"),
                    ("read_4k", "min_tsc"),
                ] {
                    let v = crate::bench::blk_figure(out, name, k)?;
                    if v.is_nan() || v <= 0.0 {
                        return Err(format!("blkbench {name} {k}={v}: not a positive figure"));
                    }
                }
                if crate::bench::blk_figure(out, "seq_read", "bytes")? != f64::from(1u32 << 20) {
                    return Err("blkbench did not read 1 MiB".into());
                }
                deny(out, "WRONG")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "dom0-net",
            what: "dom0 drives virtio-net, interrupt-driven, under smoltcp: the host's UDP datagrams through QEMU's forward come back intact from its echo port (full-size and empty ones too; a fragmented one is dropped); slirp's ARP is answered, dom0's pings of the gateway are answered, an echo request injected below smoltcp is answered on the wire, malformed used-ring entries are refused, and dom0's counters match what the host sent",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                let e = entry(imgs, "dom0", "dom0", 1536, dom0_net::CMDLINE, Expect::Poweroff)?;
                w.domain(e.privileged(true).dma_kib(dom0_net::DMA_KIB));
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: Some(dom0_net::rig),
            expect: Outcome::Pass,
            check: |out| {
                dom0_net::check(out)?;
                need(out, "[dom0] dom0: the network service ran until told to stop: ok")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "thousand-domains",
            what: "1000 small domains built from one shared image and alive at once: each greets with its own id and powers off, all are reaped, and no stretch in the hypervisor passes 200000 instructions",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                let image = guest(imgs, "hello")?;
                for i in 0..THOUSAND {
                    w.domain(DomainEntry::new(format!("d{i}"), image.clone(), 256).cmdline("rounds=0").expect(Expect::Poweroff));
                }
                finish(w, imgs)
            },
            append: "",
            icount: true,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                // Every domain greeted under its own name with its own id
                // (ids are handed out in bundle order from 1).
                let greeted = (0..THOUSAND)
                    .filter(|i| out.contains(&format!("[d{i}] Hello from d{i} (domain {}), ring 1", i + 1)))
                    .count();
                if greeted != THOUSAND {
                    return Err(format!("{greeted} of {THOUSAND} domains greeted with their own name and id"));
                }
                need(out, &format!("(rf) boot bundle: {THOUSAND} domain(s)"))?;
                need(out, &format!("(rf) dom{THOUSAND} (d{}) exited: poweroff", THOUSAND - 1))?;
                // Under icount a TSC tick is an instruction: with a thousand
                // domains no stretch in the hypervisor may pass the bound
                // `cargo xtask bench` holds for two (no per-trip scan of
                // every domain).
                let stretch = num_after(find_line(out, "longest stretch in the hypervisor: ")?, "hypervisor: ")?;
                if stretch > 200_000 {
                    return Err(format!("longest stretch in the hypervisor {stretch} instructions with {THOUSAND} domains (bound 200000)"));
                }
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "timers",
            what: "wall clock, periodic and one-shot timers, virtual-time alarm, masked events held",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "timers", "timers", 1024, "", Expect::Poweroff)?);
                w.domain(entry(imgs, "hog", "hog", 512, "millis=800", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                let wc = find_line(out, "[timers] wall clock: ")?;
                let year: u32 = wc["[timers] wall clock: ".len()..][..4].parse().map_err(|_| format!("no year in {wc}"))?;
                if year < 2024 {
                    return Err(format!("implausible wall clock: {wc}"));
                }
                need(out, "[timers] periodic: 10 ticks of 10 ms in")?;
                need(out, ", early 0, worst lateness")?;
                need(out, "(not early: true)")?;
                let v = find_line(out, "[timers] virtual-time alarm: fired after ")?;
                if !v.ends_with("(virtual not early: true)") {
                    return Err(format!("virtual alarm fired early: {v}"));
                }
                let vt = num_after(v, "fired after ")?;
                let rt = num_after(v, "virtual time and ")?;
                if rt <= vt {
                    return Err(format!("next to a hog, real time should exceed virtual time: {v}"));
                }
                need(out, "[timers] masked timer event: held while masked: true, delivered on unmask: true")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "userland",
            what: "ring-3 apps make direct and bounced system calls; faulting apps are killed, the kernel goes on",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "userland", "userland", 1024, "", Expect::Poweroff)?);
                w.domain(entry(imgs, "ticker", "ticker", 1024, "", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[userland] app 1 says (int 0x80): hello from ring 3 (gate)")?;
                need(out, "[userland] app 1 says (syscall): hello again via syscall insn..")?;
                need(out, "[userland] process 1 (hello) exited with code 7")?;
                need(out, "[userland] process 2 (snoop) killed: #PF in ring 3 at rip 0x40001d, cr2 0xffff800000000000")?;
                need(out, "[userland] app 3 says (int 0x80): written with the direction flag.")?;
                need(out, "[userland] app 3 says (syscall): written with the direction flag.")?;
                need(out, "[userland] process 3 (backwards) exited with code 3")?;
                need(out, "[userland] process 4 (priv) killed: #GP in ring 3 at rip 0x400000")?;
                need(out, "[userland] userland done: 4 processes, 2 killed, kernel still running")?;
                need(out, "[ticker] ticker done")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "bvt-shares",
            what: "three CPU-bound domains with weights 1:2:4 get 1/7, 2/7, 4/7 of the CPU (within 5%)",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                for (name, weight) in [("hog-w1", 100), ("hog-w2", 200), ("hog-w4", 400)] {
                    w.domain(entry(imgs, name, "hog", 512, "millis=3000", Expect::Poweroff)?.weight(weight));
                }
                finish(w, imgs)
            },
            append: "",
            icount: true,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                let cpu = |n: &str| -> Result<f64> {
                    num_after(find_line(out, &format!("[{n}] hog: cpu_ns="))?, "cpu_ns=").map(|v| v as f64)
                };
                let (a, b, c) = (cpu("hog-w1")?, cpu("hog-w2")?, cpu("hog-w4")?);
                let total = a + b + c;
                let shares = [a / total, b / total, c / total];
                println!(
                    "  measured BVT shares: {:.4} {:.4} {:.4} (want {:.4} {:.4} {:.4})",
                    shares[0], shares[1], shares[2], 1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0
                );
                for (got, want) in shares.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]) {
                    if (got - want).abs() > 0.05 * want {
                        return Err(format!("share {got:.4} is not within 5% of {want:.4}"));
                    }
                }
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "bvt-warp",
            what: "a warped interactive domain wakes with lower latency than an unwarped one under load",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hog-a", "hog", 512, "millis=1200", Expect::Poweroff)?);
                w.domain(entry(imgs, "hog-b", "hog", 512, "millis=1200", Expect::Poweroff)?);
                w.domain(entry(imgs, "warped", "pinger", 512, "rounds=60", Expect::Poweroff)?.warp_us(20_000));
                w.domain(entry(imgs, "unwarped", "pinger", 512, "rounds=60", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: true,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                let mean = |n: &str| num_after(find_line(out, &format!("[{n}] pinger: mean_ns="))?, "mean_ns=");
                let (w, u) = (mean("warped")?, mean("unwarped")?);
                println!("  mean wake-up latency: warped {} us, unwarped {} us", w / 1000, u / 1000);
                if w >= u {
                    return Err(format!("warped latency {w} ns is not below unwarped {u} ns"));
                }
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "bvt-hog",
            what: "a CPU hog cannot starve a domain of equal weight",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hog", "hog", 512, "millis=1500", Expect::Poweroff)?);
                w.domain(entry(imgs, "worker", "hog", 512, "mode=burst burst_ms=20 sleep_ms=20 millis=1500", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: true,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                let line = find_line(out, "[worker] hog: cpu_ns=")?;
                let (cpu, wait) = (num_after(line, "cpu_ns=")?, num_after(line, "wait_ns=")?);
                let share = cpu as f64 / (cpu + wait) as f64;
                println!("  worker's share of the CPU while runnable, next to a hog: {share:.3}");
                if share < 0.45 {
                    return Err(format!("the worker got only {share:.3} of the CPU while runnable"));
                }
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "bench-smoke",
            what: "the path-length benchmark guest runs every measurement (no gate on numbers)",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "bench", "bench", 2048, "mode=all", Expect::Poweroff)?);
                w.domain(entry(imgs, "partner", "bench", 512, "mode=partner", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                for key in [
                    "bare_trap",
                    "null_hypercall",
                    "locked_hypercall",
                    "direct_syscall",
                    "bounced_syscall",
                    "event_upcall",
                    "mmu_update_single",
                    "mmu_update_batched_per_entry",
                    "domain_switch",
                ] {
                    need(out, &format!("[bench] bench: {key} "))?;
                }
                need(out, "[bench] bench: done")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "bad-images",
            what: "bad images are refused with a clear reason; the good domain still runs",
            bundle: |imgs| {
                let hello = guest(imgs, "hello")?;
                let mut wx = hello.clone();
                set_phdr_flags(&mut wx, 0, 7)?;
                let mut low = hello.clone();
                set_phdr_vaddr(&mut low, 0, 0x40_0000)?;
                let host = std::fs::read(std::env::current_exe().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                let mut w = BundleWriter::new();
                let rej = |name: &str, image: Vec<u8>, kib: u32| DomainEntry::new(name, image, kib).expect(Expect::Rejected);
                w.domain(rej("not-elf", b"this is not an ELF image at all".repeat(4), 512));
                w.domain(rej("truncated", hello[..100].to_vec(), 512));
                w.domain(rej("host-binary", host, 4096));
                w.domain(rej("writable-text", wx, 1024));
                w.domain(rej("below-base", low, 1024));
                w.domain(rej("too-small", hello.clone(), 80));
                w.domain(entry(imgs, "hello", "hello", 1024, "rounds=1", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                need(out, "(not-elf): not started: bad ELF image:")?;
                need(out, "(truncated): not started: bad ELF image:")?;
                need(out, "(host-binary): not started: bad ELF image:")?;
                need(out, "(writable-text): not started: bad ELF image:")?;
                need(out, "(below-base): not started: bad ELF image:")?;
                need(out, "(too-small): not started: memory too small")?;
                need(out, "[hello] goodbye")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "bad-manifest",
            what: "a malformed manifest entry is reported, the rest still boots, the verdict fails",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hello", "hello", 1024, "rounds=1", Expect::Poweroff)?);
                w.domain(DomainEntry::new("zero-memory", guest(imgs, "hello")?, 0));
                w.domain(DomainEntry::new("bad name!", guest(imgs, "hello")?, 512));
                w.domain(entry(imgs, "ticker", "ticker", 1024, "", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Fail,
            check: |out| {
                need(out, "bad manifest entry, not started: domain record 1 (\"zero-memory\")")?;
                need(out, "bad manifest entry, not started: domain record 2")?;
                need(out, "[hello] goodbye")?;
                need(out, "[ticker] ticker done")?;
                need(out, "(rf) verdict: FAIL")
            },
        },
        Scenario {
            name: "two-dom0",
            what: "a bundle with two privileged domains is refused whole by the hypervisor's loader, naming both; no domain starts",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "dom0", "dom0", 1536, "", Expect::Poweroff)?.privileged(true));
                w.domain(entry(imgs, "hello", "hello", 1024, "rounds=1", Expect::Poweroff)?);
                w.domain(entry(imgs, "rogue", "dom0", 1024, "", Expect::Poweroff)?.privileged(true));
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Fail,
            check: |out| {
                need(
                    out,
                    "(rf) FATAL: bad boot bundle: boot bundle has more than one privileged domain: domain record 0 (\"dom0\") and domain record 2 (\"rogue\") are both privileged; there is exactly one dom0",
                )?;
                deny(out, "[dom0]")?;
                deny(out, "[hello]")?;
                deny(out, "[rogue]")
            },
        },
        Scenario {
            name: "deadlock",
            what: "a domain blocked with nothing to wake it is reported, not hung on",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "blocker", "faulty", 512, "fault=block", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Fail,
            check: |out| {
                need(out, "every live domain is blocked and nothing can wake them: deadlock")?;
                need(out, "(rf) the run ended after ")?;
                need(out, " with 1 domain(s) still alive:")?;
                let row = find_line(out, " blocker ")?;
                if !row.contains(" NO ") || !row.ends_with("still blocked (never ended)") {
                    return Err(format!("the report does not show the blocked domain as such: {row}"));
                }
                deny(out, "all domains have ended")
            },
        },
        Scenario {
            name: "hv-fault",
            what: "a fault inside the hypervisor is reported with registers, CR2 and symbols",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hello", "hello", 1024, "", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "selftest=hv-pagefault",
            icount: false,
            rig: None,
            expect: Outcome::Fail,
            check: |out| {
                need(out, "(rf) FATAL: hypervisor fault #PF (page fault), error code 0x0")?;
                need(out, "cr2 0x7f0000000000")?;
                need(out, "<ringfence::selftest_hv_pagefault+")?;
                need(out, "backtrace:")?;
                deny(out, "the fault was not caught")
            },
        },
        Scenario {
            name: "hv-stack-overflow",
            what: "a hypervisor stack overflow hits the guard page and is reported as a double fault",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hello", "hello", 1024, "", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "selftest=hv-stack-overflow",
            icount: false,
            rig: None,
            expect: Outcome::Fail,
            check: |out| {
                need(out, "(rf) FATAL: hypervisor fault #DF (double fault)")?;
                need(out, "halting: the hypervisor itself faulted")
            },
        },
        Scenario {
            name: "hv-write-text",
            what: "the hypervisor's code is read-only to itself (W^X in its own view)",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hello", "hello", 1024, "", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "selftest=hv-write-text",
            icount: false,
            rig: None,
            expect: Outcome::Fail,
            check: |out| {
                // Error code 0x3: a write to a present (read-only) page.
                need(out, "(rf) FATAL: hypervisor fault #PF (page fault), error code 0x3")?;
                need(out, "halting: the hypervisor itself faulted")?;
                deny(out, "the write to code was not caught")
            },
        },
        Scenario {
            name: "hv-panic",
            what: "a hypervisor panic is reported and fails the run",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hello", "hello", 1024, "", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "selftest=hv-panic",
            icount: false,
            rig: None,
            expect: Outcome::Fail,
            check: |out| need(out, "(rf) PANIC: panicked at kernel/src/main.rs"),
        },
        Scenario {
            name: "devices-attached",
            what: "with a virtio disk and NIC attached the machine boots as before; QEMU serves the host forwards; the image keeps its pattern",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hello", "hello", 1024, "rounds=1", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: Some(|rig| {
                const SEED: u64 = 0xD15C_5EED;
                let image = rig.disk(64 << 20)?;
                let region = Region { first_sector: 2048, sectors: 256 };
                write_pattern(&image, region, SEED)?;
                let nic = rig.nic(&[(Proto::Udp, 7), (Proto::Tcp, 80)])?;
                let (udp, tcp) = (nic.host_addr(Proto::Udp, 7)?, nic.host_addr(Proto::Tcp, 80)?);
                rig.after_line("[hello] Hello from hello", Duration::from_secs(30), move || {
                    // QEMU holds both forwards while it runs.
                    if std::net::UdpSocket::bind(udp).is_ok() {
                        return Err(format!("nothing holds the UDP forward's port {udp}"));
                    }
                    std::net::TcpStream::connect_timeout(&tcp, Duration::from_secs(5))
                        .map_err(|e| format!("the TCP forward {tcp} does not accept: {e}"))?;
                    Ok(format!("QEMU serves udp {udp} -> guest :7 and tcp {tcp} -> guest :80"))
                });
                rig.after_run(move |_| check_pattern(&image, region, SEED));
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[hello] goodbye")?;
                deny(out, "qemu: ")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "no-bundle",
            what: "booting without a bundle says how to pass one",
            bundle: |_| Ok(None),
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Fail,
            check: |out| need(out, "(rf) FATAL: no boot bundle: pass one with QEMU -initrd"),
        },
    ]
}

/// Builds everything and runs the scenarios whose name contains `filter`;
/// `show`: print each scenario's console, passed or not.
pub fn run_all(filter: Option<&str>, show: bool) -> Result<()> {
    let imgs = images::build()?;
    let list: Vec<Scenario> = scenarios()
        .into_iter()
        .chain(cpu_scenarios())
        .chain(blk::scenarios())
        .chain(net_split::scenarios())
        .chain(net_attack::scenarios())
        .chain(net_http::scenarios())
        .chain(toolstack::scenarios())
        .chain(new_guest::scenarios())
        .filter(|s| filter.is_none_or(|f| s.name.contains(f)))
        .collect();
    // The isolation experiment boots two runs, so it is not a `Scenario`.
    let isolation = filter.is_none_or(|f| crate::isolation::NAME.contains(f));
    if list.is_empty() && !isolation {
        return Err(format!("no QEMU scenario matches '{}'", filter.unwrap_or("")));
    }
    println!("== QEMU scenarios ({})", list.len() + usize::from(isolation));
    let (mut passed, mut failed) = (0, 0);
    let t0 = Instant::now();
    for s in &list {
        let r = run_one(&imgs, s);
        match r {
            Ok((secs, out)) => {
                passed += 1;
                println!("scenario {:<14} ok ({secs:.2} s): {}", s.name, s.what);
                if show {
                    print!("{}", indent(&out));
                }
            }
            Err(e) => {
                failed += 1;
                println!("scenario {:<14} FAILED: {}\n{e}", s.name, s.what);
            }
        }
    }
    if isolation {
        // Self-contained: see xtask/src/isolation.rs.
        let (name, what) = (crate::isolation::NAME, crate::isolation::WHAT);
        match crate::isolation::scenario(&imgs) {
            Ok(secs) => {
                passed += 1;
                println!("scenario {name:<14} ok ({secs:.2} s): {what}");
            }
            Err(e) => {
                failed += 1;
                println!("scenario {name:<14} FAILED: {what}\n{e}");
            }
        }
    }
    println!("QEMU scenarios: {:.1} s in all", t0.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        Err(format!("{failed} QEMU scenario(s) failed"))
    } else {
        Ok(())
    }
}

fn run_one(imgs: &Images, s: &Scenario) -> Result<(f64, String)> {
    let bundle = match (s.bundle)(imgs)? {
        Some(bytes) => Some(images::write_bundle(s.name, &bytes)?),
        None => None,
    };
    let mut rig = Rig::new(s.name);
    if let Some(f) = s.rig {
        f(&mut rig)?;
    }
    let (kill_on, reboot) = rig.take_power();
    let input = rig.take_input();
    let (devices, watches, after) = rig.into_parts();
    let second_devices = devices.clone();
    let mut opts = RunOpts {
        kernel: imgs.hypervisor.clone(),
        bundle,
        append: s.append.into(),
        timeout_s: TIMEOUT_S,
        stream: false,
        extra: if s.icount { vec!["-icount".into(), "shift=0".into()] } else { vec![] },
        devices,
        kill_on,
        input,
    };
    opts.extra.extend(cpu_model_args(s.name));
    let (r, host) = qemu::run_watched(&opts, watches)?;
    let fail = |why: String| Err(format!("  {why}\n  --- console ---\n{}", indent(&r.output)));
    // The host's evidence first: its reason is the most specific (a
    // guest left waiting by a failed host action ends in a time-out).
    let mut lines = Vec::new();
    for h in host {
        match h {
            Ok(line) => lines.push(line),
            Err(e) => return fail(format!("host side: {e}")),
        }
    }
    if r.outcome != s.expect {
        return fail(format!("expected {}, got {}", s.expect, r.outcome));
    }
    if let Err(e) = (s.check)(&r.output) {
        return fail(e);
    }
    lines.iter().for_each(|l| println!("  {l}"));
    for check in after {
        if let Err(e) = check(&r.output) {
            return fail(format!("after the run: {e}"));
        }
    }
    let Some(again) = reboot else { return Ok((r.wall.as_secs_f64(), r.output)) };
    // The second boot, on the disk as the first left it.
    let bundle = match (again.bundle)(imgs)? {
        Some(bytes) => Some(images::write_bundle(&format!("{}-reboot", s.name), &bytes)?),
        None => None,
    };
    let opts = RunOpts { bundle, devices: second_devices, kill_on: None, input: Default::default(), ..opts };
    let r2 = qemu::run(&opts)?;
    let fail2 = |why: String| {
        Err(format!(
            "  second boot: {why}\n  --- first boot ---\n{}\n  --- second boot ---\n{}",
            indent(&r.output),
            indent(&r2.output)
        ))
    };
    if r2.outcome != again.expect {
        return fail2(format!("expected {}, got {}", again.expect, r2.outcome));
    }
    if let Err(e) = (again.check)(&r2.output) {
        return fail2(e);
    }
    Ok(((r.wall + r2.wall).as_secs_f64(), format!("{}\n{}", r.output, r2.output)))
}

// ---- CPU protections (SMEP, SMAP, UMIP) and the entry-area leak check ----
//
// Every boot checks that the guest-visible entry area holds no hypervisor
// physical address and that the hypervisor view maps no user page (it fails
// otherwise); these scenarios assert the log lines of those checks and the
// CPU protections under QEMU's default model (none offered) and under
// `-cpu max` (TCG offers SMEP, SMAP and UMIP).

/// Scenarios run under a CPU model other than the default `qemu64` (a
/// later `-cpu` wins over the default in QEMU's command line).
const CPU_MODELS: &[(&str, &str)] = &[("cpu-max", "max")];

fn cpu_model_args(scenario: &str) -> Vec<String> {
    CPU_MODELS.iter().filter(|(n, _)| *n == scenario).flat_map(|(_, m)| ["-cpu".to_string(), m.to_string()]).collect()
}

const LEAK_CHECK_LINE: &str = "guest-visible, no hypervisor physical address in it (scanner caught 4/4 planted leaks)";
const NO_USER_LINE: &str = "(rf) hypervisor view: no user (U=1) entry in its ";

fn spy_domain(name: &str, attempt: &str, expect: &str) -> crate::manifest::DomainToml {
    crate::manifest::DomainToml {
        name: name.into(),
        image: "spy".into(),
        mem_kib: 512,
        cmdline: format!("attempt={attempt}"),
        weight: 100,
        warp_us: 0,
        privileged: false,
        dma_kib: 0,
        expect: expect.into(),
        disk: None,
    }
}

fn cpu_scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "cpu-max",
            what: "under -cpu max SMEP, SMAP (ring 0) and UMIP are on, sgdt/sidt fault in ring 1, the demo passes",
            bundle: |imgs| {
                let mut m = Manifest::load(&root().join("sample-guests/manifests/demo.toml"))?;
                m.domain.push(spy_domain("spy-sgdt", "sgdt", "crash"));
                m.domain.push(spy_domain("spy-sidt", "sidt", "crash"));
                let p = images::pack_manifest(imgs, &m)?;
                Ok(Some(std::fs::read(p).map_err(|e| e.to_string())?))
            },
            append: "",
            icount: false,
            rig: Some(demo_rig),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "(rf) cpu: SMEP on, SMAP on (ring 0; guest rings run without it), UMIP on")?;
                need(out, LEAK_CHECK_LINE)?;
                need(out, NO_USER_LINE)?;
                for a in ["sgdt", "sidt"] {
                    let line = find_line(out, &format!("(spy-{a}) crashed: "))?;
                    if !line.contains("#GP (general protection) in ring 1") {
                        return Err(format!("{a} under UMIP: expected #GP in ring 1, got: {line}"));
                    }
                    deny(out, &format!("[spy-{a}] spy: {a} read base"))?;
                }
                // The ring-1 kernel reads its processes' (U=1) pages: SMAP
                // must be off in guest rings.
                need(out, "[userland] userland done: 4 processes, 2 killed, kernel still running")?;
                need(out, "[spy-hypercalls] spy: 25/25 bad hypercalls refused with the right error")?;
                need(out, "(rf) verdict: PASS")
            },
        },
        Scenario {
            name: "cpu-default",
            what: "under the default CPU the probe reports SMEP, SMAP and UMIP absent and boot carries on",
            bundle: |imgs| {
                let mut w = BundleWriter::new();
                w.domain(entry(imgs, "hello", "hello", 1024, "rounds=1", Expect::Poweroff)?);
                w.domain(entry(imgs, "spy-sgdt", "spy", 512, "attempt=sgdt", Expect::Poweroff)?);
                finish(w, imgs)
            },
            append: "",
            icount: false,
            rig: None,
            expect: Outcome::Pass,
            check: |out| {
                need(out, "(rf) cpu: SMEP off (not offered), SMAP off (not offered), UMIP off (not offered)")?;
                need(out, LEAK_CHECK_LINE)?;
                need(out, NO_USER_LINE)?;
                // Without UMIP sgdt works, and shows only the ABI's alias.
                need(out, "[spy-sgdt] spy: sgdt read base 0xffffff8000000000 limit 0x7f (no UMIP)")?;
                need(out, "(rf) verdict: PASS")
            },
        },
    ]
}

/// Every refusal `dom0-attacker`'s dom0 must print (after `[dom0] dom0: `).
const DOM0_ATTACKER_REFUSALS: &[&str] = &[
    "move BAR4 of 00:02.0 onto RAM (0x2000000): EPERM (want EPERM) refused",
    "move BAR4 of 00:02.0 onto the hypervisor image (0x100000): EPERM (want EPERM) refused",
    "move BAR4 of 00:02.0 onto the local APIC (0xfee00000): EPERM (want EPERM) refused",
    "move BAR4 while it is mapped: EBUSY (want EBUSY) refused",
    "map the MSI-X table frame writable: EPERM (want EPERM) refused",
    "map BAR4 cached: EINVAL (want EINVAL) refused",
    "map its own RAM uncached read-only (an ordinary RAM mapping): ok as expected",
    "map its own L4 page table uncached writable: EBUSY (want EBUSY) refused",
    "map the hypervisor's RAM (0x100000) uncached: EPERM (want EPERM) refused",
    "map the local APIC (0xfee00000) uncached: EPERM (want EPERM) refused",
    "map the IOAPIC (0xfec00000) uncached: EPERM (want EPERM) refused",
    "map a frame past all memory (mfn 1 << 39) uncached: EPERM (want EPERM) refused",
    "map_pirq of GSI 22 (virtio-blk) gives pirq 22: ok",
    "map_pirq of GSI 22 twice: EEXIST (want EEXIST) refused",
    "bind_pirq of pirq 22: ok",
    "bind_pirq of pirq 22 twice: EEXIST (want EEXIST) refused",
    "bind_pirq of pirq 21 (not given): EPERM (want EPERM) refused",
    "bind_pirq of pirq 23 (given, never mapped): EPERM (want EPERM) refused",
    "bind_pirq of pirq 4096: EINVAL (want EINVAL) refused",
    "bind_pirq of pirq 0xffffffff: EINVAL (want EINVAL) refused",
    "eoi of pirq 21 (not its line): EPERM (want EPERM) refused",
    "eoi of pirq 23 (never mapped): EPERM (want EPERM) refused",
    "eoi of pirq 0xffffffff: EINVAL (want EINVAL) refused",
    "map_pirq of GSI 2 (the PIT, a legacy ISA line): EPERM (want EPERM) refused",
    "map_pirq of GSI 4 (COM1): EPERM (want EPERM) refused",
    "map_pirq of GSI 0x7fffffff: EINVAL (want EINVAL) refused",
    "map_pirq of GSI -1: EINVAL (want EINVAL) refused",
    "eoi of its own pirq 22: ok as expected",
];

/// Every refusal `dom0-attacker`'s domU must print (after `[domu] domU: `).
const DOMU_REFUSALS: &[&str] = &[
    "PCI config read: EPERM (want EPERM) refused",
    "PCI config write: EPERM (want EPERM) refused",
    "map_pirq of GSI 22: EPERM (want EPERM) refused",
    "bind_pirq of pirq 22: EPERM (want EPERM) refused",
    "eoi of pirq 22: EPERM (want EPERM) refused",
    "physdev_op 0x0 (no such command): EPERM (want EPERM) refused",
    "physdev_op 0xffffffffffffffff (no such command): EPERM (want EPERM) refused",
    "console input: EPERM (want EPERM) refused",
    "uncached mapping of each of the 3072 frames of the PCI hole (0 not EPERM): EPERM (want EPERM) refused",
    "uncached mapping of the local APIC: EPERM (want EPERM) refused",
    "uncached mapping of the IOAPIC: EPERM (want EPERM) refused",
    "no DMA pool in start info: ok",
    "dma::alloc: ENOMEM (want ENOMEM) refused",
];

/// The device sub-ops with an argument pointer, and the bad pointers
/// (`pvguest_sdk::check`): dom0 gets EFAULT for each, the domU EPERM.
const POINTER_OPS: &[&str] = &["PCI config read", "PCI config write", "map_pirq", "eoi", "bind_pirq"];
const BAD_POINTERS: &[&str] = &[
    "a null pointer",
    "a non-canonical pointer",
    "a pointer into the hypervisor's entry area",
    "a pointer straddling into the entry area",
];

fn check_dom0_attacker(out: &str) -> Result<()> {
    need(out, "(rf) ioapic: 24 redirection entries, all masked; dom0 may map GSI(s) [22, 23]")?;
    need(out, "[dom0] dom0: virtio-blk at 00:02.0, BAR4 at 0x")?;
    for line in DOM0_ATTACKER_REFUSALS {
        need(out, &format!("[dom0] dom0: {line}"))?;
    }
    for line in DOMU_REFUSALS {
        need(out, &format!("[domu] domU: {line}"))?;
    }
    for op in POINTER_OPS {
        for p in BAD_POINTERS {
            need(out, &format!("[dom0] dom0: {op} with {p}: EFAULT (want EFAULT) refused"))?;
            need(out, &format!("[domu] domU: {op} with {p}: EPERM (want EPERM) refused"))?;
        }
    }
    // dom0's "another domain's RAM" is the domU's, by the domU's own list.
    let owns = find_line(out, "[domu] domU: owns mfns ")?;
    let range = owns.rsplit(' ').next().unwrap_or("");
    let (lo, hi) = range.split_once("..=").ok_or_else(|| format!("no mfn range in {owns:?}"))?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"));
    let (lo, hi) = (hex(lo)?, hex(hi)?);
    let aimed = find_line(out, "[dom0] dom0: map another domain's RAM (mfn ")?;
    let mfn = hex(aimed.split("(mfn ").nth(1).and_then(|t| t.split(')').next()).unwrap_or(""))?;
    if !(lo..=hi).contains(&mfn) {
        return Err(format!("dom0 aimed at mfn {mfn:#x}, not one of the domU's ({lo:#x}..={hi:#x})"));
    }
    need(aimed, "uncached: EPERM (want EPERM) refused")?;
    // Both verdicts (the counts pin the number of checks), and progress
    // by the domU after dom0's last attack.
    need(out, "[dom0] dom0: 50/50 checks as expected")?;
    need(out, "[domu] domu: 35/35 checks as expected")?;
    let dom0_done = out.lines().position(|l| l.starts_with("[dom0] dom0: 50/50 checks")).unwrap_or(usize::MAX);
    let ticks_after = out.lines().skip(dom0_done).filter(|l| l.starts_with("[domu] domu: tick ")).count();
    if ticks_after < 2 {
        return Err(format!("the domU printed {ticks_after} tick(s) after dom0's attacks ended, want at least 2"));
    }
    need(out, "[domu] domu: tick 150")?;
    deny(out, "WRONG")?;
    deny(out, "PANIC")?;
    deny(out, "FATAL")?;
    need(out, "(rf) verdict: PASS")
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  | {l}\n")).collect()
}

fn need(out: &str, text: &str) -> Result<()> {
    if out.contains(text) {
        Ok(())
    } else {
        Err(format!("missing from the console: {text:?}"))
    }
}

fn deny(out: &str, text: &str) -> Result<()> {
    if out.contains(text) {
        Err(format!("must not appear on the console: {text:?}"))
    } else {
        Ok(())
    }
}

fn find_line<'a>(out: &'a str, text: &str) -> Result<&'a str> {
    out.lines().find(|l| l.contains(text)).ok_or_else(|| format!("no console line contains {text:?}"))
}

/// Both domains' progress lines must interleave: each prints between the
/// other's first and last line (they ran concurrently under preemption).
/// Whether the lines starting with `a` and those starting with `b` ran
/// interleaved in time (preemption between them): each ends `(at N us)`,
/// the system time it ran at, so the check holds whatever order their
/// console path (the hypervisor's, or dom0's daemon's) printed them in.
fn interleaved(out: &str, a: &str, b: &str) -> Result<()> {
    let at = |l: &str| -> Option<u64> { l.rsplit_once("(at ")?.1.strip_suffix(" us)")?.parse().ok() };
    let idx = |p: &str| -> Result<Vec<u64>> {
        out.lines()
            .filter(|l| l.starts_with(p))
            .map(|l| at(l).ok_or_else(|| format!("no time at the end of {l:?}")))
            .collect()
    };
    let (mut ia, mut ib) = (idx(a)?, idx(b)?);
    ia.sort_unstable();
    ib.sort_unstable();
    let (Some(&a0), Some(&a1), Some(&b0), Some(&b1)) = (ia.first(), ia.last(), ib.first(), ib.last()) else {
        return Err(format!("no lines starting with {a:?} or {b:?}"));
    };
    if ib.iter().any(|&i| i > a0 && i < a1) && ia.iter().any(|&i| i > b0 && i < b1) {
        Ok(())
    } else {
        Err(format!("lines {a:?} and {b:?} did not interleave (no preemption between them)"))
    }
}

/// `count` lines starting with `prefix`, each reporting intact SSE state.
fn sse_intact(out: &str, prefix: &str, count: usize) -> Result<()> {
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(prefix)).collect();
    if lines.len() != count {
        return Err(format!("expected {count} lines starting with {prefix:?}, found {}", lines.len()));
    }
    match lines.iter().find(|l| !l.contains("sse registers intact: true")) {
        Some(l) => Err(format!("SSE state was not preserved: {l}")),
        None => Ok(()),
    }
}

/// The decimal number that follows `key` in `line`.
/// The devices of the demo manifest (`[devices]` of demo.toml): its disk,
/// prepared as `cargo xtask run` prepares it (the region dom0 checks
/// filled in, the virtual disks formatted and the templates filled), and
/// its NIC. After the run, the host reads the domUs' logs back off the
/// image ([`blk::check_manifest_disks`]).
fn demo_rig(rig: &mut Rig) -> Result<()> {
    let m = Manifest::load(&root().join("sample-guests/manifests/demo.toml"))?;
    let ports = m.devices.forwards();
    if m.devices.wants_nic() {
        let nic = rig.nic_at(&m.devices.forwards_at())?;
        // dom0's API: a domain from a template, as `cargo xtask ctl` makes one.
        if let (Some(port), Some((_, token))) = (m.devices.dom0_api, m.api()) {
            let api = nic.host_addr(Proto::Tcp, port)?;
            rig.after_line("[dom0] api: listening", std::time::Duration::from_secs(90), move || {
                let c = crate::ctl::Client::new(&api.to_string(), &token)?;
                // Made paused, so that it is still there to be listed
                // (running, it ends within a round).
                let body =
                    serde_json::json!({"template": "greet", "name": "hello-api", "cmdline": "rounds=1", "paused": true});
                let r = c.request("POST", "/v1/domains", Some(&body))?;
                if r.status != 201 {
                    return Err(format!("the demo's API: create: {} {}", r.status, r.body));
                }
                let list = c.request("GET", "/v1/domains", None)?;
                let doms = list.body["domains"].as_array().cloned().unwrap_or_default();
                let names: Vec<String> = doms.iter().filter_map(|d| d["name"].as_str().map(String::from)).collect();
                if !doms.iter().any(|d| d["name"] == "hello-api" && d["state"] == "paused") {
                    return Err(format!("the demo's API does not list hello-api paused: {names:?}"));
                }
                let r = c.request("POST", "/v1/domains/hello-api/unpause", None)?;
                if r.status != 200 {
                    return Err(format!("the demo's API: unpause: {} {}", r.status, r.body));
                }
                Ok(format!("the demo's API created hello-api from a template; it lists {} domains", names.len()))
            });
        }
        // The demo's web domU: fetch its page from the host, as a user
        // would with curl, then end it.
        if ports.contains(&(Proto::Tcp, 80)) {
            let web = nic.host_addr(Proto::Tcp, 80)?;
            rig.after_line("[web] httpd: listening on ", std::time::Duration::from_secs(90), move || {
                let body = net_http::curl(&format!("http://{web}/"))?;
                if !body.contains("Hello from web, a Ringfence domU") {
                    return Err(format!("the demo's web page: {body:?}"));
                }
                net_http::curl(&format!("http://{web}/stop"))?;
                Ok(format!("curl fetched the demo's web page: {:?}", body.trim()))
            });
        }
    }
    if m.devices.disk_mib > 0 {
        let image = rig.disk(m.devices.disk_mib << 20)?;
        images::prepare_disk(&m, &image)?;
        if !m.disks.vbds.is_empty() {
            rig.after_run(move |_| blk::check_manifest_disks(&m, &image));
        }
    }
    Ok(())
}

/// The console lines of demo.toml's disk domUs: dom0 serves the three
/// virtual disks after its own proof, the raw slice's log is appended and
/// read back, and each overlay holds its own log over the shared template.
/// (The host's own reading of the image is [`blk::check_manifest_disks`].)
fn demo_disks(out: &str) -> Result<()> {
    need(out, "[dom0] serve: 3 virtual disk(s) configured")?;
    for name in ["blk-log", "blk-ovl-a", "blk-ovl-b"] {
        need(out, &format!("[dom0] serve: dom{} ({name}): disk connected", domid_of(out, name)?))?;
    }
    need(out, "[blk-log] blklog: disk of 8192 sectors (4096 KiB), flush true, fua true, discard true")?;
    need(out, "[blk-log] blklog: its disk starts empty")?;
    need(out, "[blk-log] blklog: appended 32 records (seed 0x65), flushed")?;
    for (name, seed) in [("blk-ovl-a", 201), ("blk-ovl-b", 202)] {
        need(out, &format!("[{name}] blklog: disk of 4096 sectors (2048 KiB)"))?;
        need(out, &format!("[{name}] blklog: overlay holds 16 records (seed {seed:#x}) over template {:#x}", 4242))?;
    }
    need(out, "[dom0] serve: every domain served has ended (")?;
    Ok(())
}

/// The domain id the console gives domain `name`, from dom0's line when
/// it connects it to the store.
fn domid_of(out: &str, name: &str) -> Result<u64> {
    let line = find_line(out, &format!(" ({name}) connected to the store"))?;
    num_after(line, "serve: dom")
}

/// The `Region` of a `disk_pattern::dom0` region.
fn region_of(r: disk_pattern::dom0::Region) -> Region {
    Region { first_sector: r.lba, sectors: r.sectors }
}

/// Sector `s` of the image is all zeros (never written).
fn check_zero(image: &std::path::Path, s: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut buf = [0u8; 512];
    f.seek(SeekFrom::Start(s * 512))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| format!("{}: {e}", image.display()))?;
    if buf.iter().any(|&b| b != 0) {
        return Err(format!("sector {s} of {} was written, though dom0 wrote no such sector", image.display()));
    }
    Ok(())
}

/// The hexadecimal number right after `key` in `line`.
fn hex_after(line: &str, key: &str) -> Result<u64> {
    let rest = line.split_once(key).ok_or_else(|| format!("no '{key}' in: {line}"))?.1;
    let end = rest.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(rest.len());
    u64::from_str_radix(&rest[..end], 16).map_err(|e| format!("bad hex after '{key}' in {line}: {e}"))
}

fn num_after(line: &str, key: &str) -> Result<u64> {
    let rest = line.split_once(key).ok_or_else(|| format!("no {key:?} in {line:?}"))?.1;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().map_err(|_| format!("no number after {key:?} in {line:?}"))
}

fn phdr(image: &[u8], i: usize) -> Result<usize> {
    let phoff = u64::from_le_bytes(image.get(32..40).ok_or("short ELF")?.try_into().expect("8 bytes")) as usize;
    Ok(phoff + i * 56)
}

/// Sets the flags of program header `i` (for building bad images).
fn set_phdr_flags(image: &mut [u8], i: usize, flags: u32) -> Result<()> {
    let p = phdr(image, i)?;
    image[p + 4..p + 8].copy_from_slice(&flags.to_le_bytes());
    Ok(())
}

/// Sets the virtual address of program header `i` (for building bad images).
fn set_phdr_vaddr(image: &mut [u8], i: usize, vaddr: u64) -> Result<()> {
    let p = phdr(image, i)?;
    image[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
    Ok(())
}
