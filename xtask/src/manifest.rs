//! Boot manifests: the human-written TOML that `cargo xtask run` packs into
//! the boot bundle.
//!
//! ```toml
//! [[domain]]
//! name = "hello"          # 1..=31 of [A-Za-z0-9._-], unique
//! image = "hello"         # a binary of sample-guests, or a path to an ELF
//! mem_kib = 1024          # multiple of 4
//! cmdline = "rounds=4"    # optional
//! weight = 100            # optional, BVT weight 1..=10000 (default 100)
//! warp_us = 0             # optional
//! privileged = false      # optional
//! dma_kib = 0             # optional: dom0's DMA pool, part of mem_kib (multiple of 4, <= 16384)
//! expect = "poweroff"     # "poweroff" | "crash" | "rejected"
//! disk = { kind = "overlay", mib = 3, template = "base" }
//!                         # optional, domUs only: a virtual disk served by dom0
//!                         # kind "raw" (a slice) | "sparse" | "overlay" (needs template)
//!
//! [[template]]            # optional: a read-only base that overlays share
//! name = "base"           # unique, named by a disk's template
//! mib = 2                 # its size (the overlays' virtual size)
//! seed = 0x7e4a           # its contents: the disk pattern of this seed
//!
//! [[image]]               # optional: a template dom0's toolstack creates domains
//! name = "hello"          # from (`create hello`); not started at boot
//! image = "hello"         # as a domain's; packed trimmed to its loadable bytes
//! mem_kib = 1024          # the defaults a create may override
//! cmdline = "rounds=4"    # optional
//! weight = 100            # optional
//! warp_us = 0             # optional
//!
//! [devices]
//! disk_mib = 64           # the real disk; a virtual disk needs one
//! nic_tcp = [80]          # optional: a NIC on QEMU's user network, these guest
//! nic_udp = [7]           # ports forwarded from the host
//! nic = true              # optional: the NIC even with no port forwarded
//! ```
//! Mistakes are reported here with the file and domain named; the bundle
//! writer then checks every record again with the hypervisor's own reader.
//!
//! # Virtual disks
//! The disks of the domains (and the templates) become one [`Plan`] on the
//! real disk, laid out from [`MANIFEST_FIRST_LBA`] (16 MiB: dom0's own
//! proof regions lie below it) in manifest order, templates first. The
//! invariants, all checked by [`Manifest::parse`]:
//! - a disk's kind is known, its size is 1..=[`MAX_DISK_MIB`] MiB, and an
//!   overlay (and only an overlay) names a template of the manifest;
//! - every template is used by some overlay, unless `[devices] clone_mib`
//!   gives dom0 space for run-time clones (`create ... --from TEMPLATE`),
//!   which then follows the disks (dom0 gets `vtemplate=` and `vpool=`);
//! - no disk is the privileged domain's (it serves them), and there is one
//!   to serve them (the sample `dom0` in its `devices` or `serve` mode),
//!   whose command line still fits the bundle with the `vbd=` words
//!   appended;
//! - the plan fits `[devices] disk_mib`.
//!
//! xtask appends the plan's `vbd=` words to the privileged domain's
//! command line ([`Manifest::cmdline_of`]) and formats the image before
//! QEMU starts (`images::prepare_disk`).

use crate::vbd::{Kind, Plan, MANIFEST_FIRST_LBA, MIB};
use crate::Result;
use serde::Deserialize;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// A parsed manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The domains, in boot order.
    pub domain: Vec<DomainToml>,
    /// The machine's devices (none by default).
    #[serde(default)]
    pub devices: DevicesToml,
    /// Templates the overlays share.
    #[serde(default)]
    pub template: Vec<TemplateToml>,
    /// Images dom0's toolstack creates domains from.
    #[serde(default)]
    pub image: Vec<ImageToml>,
    #[serde(skip)]
    pub dir: PathBuf,
    /// The virtual disks on the real disk (empty: none), from the domains'
    /// `disk` and the templates.
    #[serde(skip)]
    pub disks: Plan,
}

/// One `[[domain]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainToml {
    pub name: String,
    pub image: String,
    pub mem_kib: u32,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub warp_us: u32,
    #[serde(default)]
    pub privileged: bool,
    /// dom0's machine-contiguous DMA pool in KiB, part of `mem_kib` (0:
    /// none; the bundle reader enforces the rules).
    #[serde(default)]
    pub dma_kib: u32,
    #[serde(default = "default_expect")]
    pub expect: String,
    /// The domain's virtual disk (none by default).
    #[serde(default)]
    pub disk: Option<DiskToml>,
}

/// A domain's `disk = { kind, mib, template }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskToml {
    /// `"raw"`, `"sparse"` or `"overlay"`.
    pub kind: String,
    /// Its region on the real disk in MiB (for a raw slice or a sparse
    /// image, also its virtual size; an overlay's is its template's).
    pub mib: u64,
    /// An overlay's template, by name.
    #[serde(default)]
    pub template: Option<String>,
}

/// One `[[image]]` table: a template record of the bundle, which the
/// hypervisor does not start and dom0's toolstack creates domains from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageToml {
    pub name: String,
    pub image: String,
    pub mem_kib: u32,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub warp_us: u32,
}

/// One `[[template]]` table: a read-only base filled with the disk pattern
/// of `seed`, keyed by the offset in the template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateToml {
    pub name: String,
    pub mib: u64,
    pub seed: u64,
}

/// The largest virtual disk or template a manifest may ask for (1 GiB).
pub const MAX_DISK_MIB: u64 = 1024;

/// `[devices]`: what the machine gets beyond the plain one (for dom0).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesToml {
    /// A virtio-blk disk of this many MiB (0: none) on a fresh sparse
    /// image `target/ringfence/<manifest stem>.img`, with the region dom0
    /// checks (`disk_pattern::dom0::READ`) filled in.
    #[serde(default)]
    pub disk_mib: u64,
    /// A virtio-net NIC on QEMU's user network with a host forward to each
    /// of these guest UDP ports (no NIC if both lists are empty and `nic`
    /// is not set).
    #[serde(default)]
    pub nic_udp: Vec<u16>,
    /// The same for guest TCP ports (a domU's web server behind dom0's
    /// bridge, say).
    #[serde(default)]
    pub nic_tcp: Vec<u16>,
    /// The NIC even with no forward (a domU that reaches out through
    /// dom0's uplink, and that nothing on the host calls).
    #[serde(default)]
    pub nic: bool,
    /// MiB of the real disk for the clones dom0's toolstack makes at run
    /// time (`create ... --from TEMPLATE`: copy-on-write overlays of the
    /// manifest's `[[template]]`s); 0: none.
    #[serde(default)]
    pub clone_mib: u64,
    /// A host forward to dom0's management API: the TCP port of its
    /// `api=PORT` (dom0 listens at `DOM0_API_IP`, its own bridge port;
    /// `cargo xtask run` prints the host address, `cargo xtask ctl` uses it).
    #[serde(default)]
    pub dom0_api: Option<u16>,
}

impl DevicesToml {
    /// Every host forward the NIC gets: the UDP ports, then the TCP ones.
    pub fn forwards(&self) -> Vec<(crate::qemu::devices::Proto, u16)> {
        use crate::qemu::devices::Proto;
        let udp = self.nic_udp.iter().map(|&p| (Proto::Udp, p));
        udp.chain(self.nic_tcp.iter().map(|&p| (Proto::Tcp, p))).collect()
    }

    /// Every forward with the guest address it goes to: the domU ports
    /// at `GUEST_IP`, then dom0's API at `DOM0_API_IP`.
    pub fn forwards_at(&self) -> Vec<(crate::qemu::devices::Proto, std::net::Ipv4Addr, u16)> {
        use crate::qemu::devices::{Proto, DOM0_API_IP, GUEST_IP};
        let mut all: Vec<_> = self.forwards().into_iter().map(|(p, port)| (p, GUEST_IP, port)).collect();
        all.extend(self.dom0_api.map(|port| (Proto::Tcp, DOM0_API_IP, port)));
        all
    }

    /// Whether the machine gets a NIC: `nic = true` or any forward.
    pub fn wants_nic(&self) -> bool {
        self.nic || !self.nic_udp.is_empty() || !self.nic_tcp.is_empty() || self.dom0_api.is_some()
    }
}

fn default_weight() -> u32 {
    100
}

fn default_expect() -> String {
    "poweroff".into()
}

impl Manifest {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read manifest {}: {e}", path.display()))?;
        Manifest::parse(&text, path)
    }

    /// Parses and checks manifest `text` (read from `path`, which names it
    /// in errors and locates relative images).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| format!("manifest {}: {e}", path.display()))?;
        if m.domain.is_empty() {
            return Err(format!("manifest {}: no [[domain]] entries", path.display()));
        }
        for d in &m.domain {
            parse_expect(&d.expect).map_err(|e| format!("manifest {}: domain '{}': {e}", path.display(), d.name))?;
        }
        one_privileged(&m.domain).map_err(|e| format!("manifest {}: {e}", path.display()))?;
        unique_images(&m.image, &m.domain).map_err(|e| format!("manifest {}: {e}", path.display()))?;
        if let Some(port) = m.devices.dom0_api {
            m.api().filter(|(p, _)| *p == port).ok_or_else(|| {
                format!(
                    "manifest {}: [devices] dom0_api = {port} needs `api={port} token=TOKEN` on the privileged domain's cmdline",
                    path.display()
                )
            })?;
        }
        m.disks = plan(&m).map_err(|e| format!("manifest {}: {e}", path.display()))?;
        m.dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(m)
    }

    /// dom0's management API, if its command line turns it on: its port
    /// and token (`api=PORT token=TOKEN`).
    pub fn api(&self) -> Option<(u16, String)> {
        let dom0 = self.domain.iter().find(|d| d.privileged)?;
        let word = |k: &str| dom0.cmdline.split(' ').find_map(|w| w.strip_prefix(k));
        Some((word("api=")?.parse().ok()?, word("token=")?.to_string()))
    }

    /// The command line `d` boots with: the privileged domain's gets the
    /// plan's `vbd=` words appended (dom0 serves those disks).
    pub fn cmdline_of<'a>(&self, d: &'a DomainToml) -> Cow<'a, str> {
        if !d.privileged || self.disks.vbds.is_empty() {
            return Cow::Borrowed(&d.cmdline);
        }
        Cow::Owned(with_words(&d.cmdline, self.disks.cmdline()))
    }
}

/// Lays out the templates and the domains' disks (see the module docs for
/// what is checked); errors name the domain or template.
fn plan(m: &Manifest) -> Result<Plan> {
    let mut p = Plan::starting_at(MANIFEST_FIRST_LBA);
    let size = |mib: u64| -> Result<u64> {
        if mib == 0 || mib > MAX_DISK_MIB {
            return Err(format!("mib = {mib} is not 1..={MAX_DISK_MIB}"));
        }
        Ok(mib)
    };
    let mut templates: Vec<(&str, usize)> = Vec::new();
    for t in &m.template {
        let err = |e: String| format!("template '{}': {e}", t.name);
        if !valid_name(&t.name) {
            return Err(err("a name is 1..=31 of [A-Za-z0-9._-]".into()));
        }
        if templates.iter().any(|(n, _)| *n == t.name) {
            return Err(err("defined twice".into()));
        }
        let mib = size(t.mib).map_err(err)?;
        templates.push((&t.name, p.add(&t.name, Kind::Template(t.seed), mib)));
    }
    let mut used = vec![false; templates.len()];
    for d in &m.domain {
        let Some(disk) = &d.disk else { continue };
        let err = |e: String| format!("domain '{}': disk: {e}", d.name);
        if d.privileged {
            return Err(err("the privileged domain serves the virtual disks and gets none; give it to a domU".into()));
        }
        if !valid_name(&d.name) {
            return Err(err("the domain's name is not 1..=31 of [A-Za-z0-9._-]".into()));
        }
        let mib = size(disk.mib).map_err(err)?;
        let kind = match (disk.kind.as_str(), &disk.template) {
            ("raw", None) => Kind::Raw,
            ("sparse", None) => Kind::Sparse,
            ("raw" | "sparse", Some(_)) => return Err(err("template = ... is only for kind = \"overlay\"".into())),
            ("overlay", None) => {
                return Err(err("kind = \"overlay\" needs template = \"<a [[template]]'s name>\"".into()))
            }
            ("overlay", Some(name)) => {
                let k = templates.iter().position(|(n, _)| n == name).ok_or_else(|| {
                    let known: Vec<&str> = templates.iter().map(|(n, _)| *n).collect();
                    err(format!("template '{name}' is not a [[template]] of the manifest (known: {})", list(&known)))
                })?;
                used[k] = true;
                Kind::Overlay(templates[k].1)
            }
            (other, _) => return Err(err(format!("kind = '{other}' is not \"raw\", \"sparse\" or \"overlay\""))),
        };
        p.add(&d.name, kind, mib);
    }
    // Clone space: dom0's toolstack makes overlays of the templates there
    // at run time, so a template no overlay names is of use too.
    if m.devices.clone_mib > 0 {
        let mib = size(m.devices.clone_mib).map_err(|e| format!("[devices] clone_mib: {e}"))?;
        if templates.is_empty() {
            return Err(String::from("[devices] clone_mib: there is no [[template]] to clone"));
        }
        p.add("", Kind::Pool, mib);
    } else if let Some(k) = used.iter().position(|u| !u) {
        return Err(format!(
            "template '{}' is named by no overlay's disk (or set [devices] clone_mib for run-time clones)",
            templates[k].0
        ));
    }
    // (With no disk, there is no template either: each must be used.)
    let Some(first) = p.vbds.iter().find(|v| !matches!(v.kind, Kind::Template(_))) else { return Ok(p) };
    let Some(dom0) = m.domain.iter().find(|d| d.privileged) else {
        return Err(format!("domain '{}': disk: no privileged domain to serve it", first.domain));
    };
    // The sample dom0 serves disks only in these modes; in any other, the
    // domUs would wait for their disks for ever.
    let has = |w: &str| dom0.cmdline.split(' ').any(|x| x == w);
    if dom0.image == "dom0" && !has("devices") && !has("serve") {
        return Err(format!(
            "domain '{}': disk: the privileged domain '{}' serves disks only with `devices` or `serve` on its cmdline (it has \"{}\")",
            first.domain, dom0.name, dom0.cmdline
        ));
    }
    let len = with_words(&dom0.cmdline, p.cmdline()).len();
    let max = ringfence_bundle::layout::MAX_CMDLINE_LEN as usize;
    if len >= max {
        return Err(format!(
            "domain '{}': with the vbd= words of its {} disks its command line is {len} bytes; it must be shorter than {max} (fewer disks or shorter domain names)",
            dom0.name,
            p.vbds.iter().filter(|v| !matches!(v.kind, Kind::Template(_))).count()
        ));
    }
    let need_mib = p.disk_sectors() / MIB;
    if m.devices.disk_mib == 0 {
        return Err(format!(
            "domain '{}': disk: the machine has no disk to hold it: set [devices] disk_mib (at least {need_mib})",
            first.domain
        ));
    }
    if need_mib > m.devices.disk_mib {
        let last = p.vbds.last().expect("a disk was added");
        return Err(format!(
            "domain '{}': disk: the virtual disks need a real disk of {need_mib} MiB ({} MiB kept for dom0's own, then the templates and disks in order), [devices] disk_mib is {}",
            last.domain,
            MANIFEST_FIRST_LBA / MIB,
            m.devices.disk_mib
        ));
    }
    Ok(p)
}

/// `cmdline` with `words` appended.
fn with_words(cmdline: &str, words: String) -> String {
    if cmdline.is_empty() {
        words
    } else {
        format!("{cmdline} {words}")
    }
}

/// A domain or template name the bundle (and dom0's `vbd=` words) accept.
fn valid_name(n: &str) -> bool {
    (1..=31).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
    }
}

/// There is at most one privileged domain (dom0): the hypervisor's bundle
/// reader refuses a bundle with two, and this says so first, naming them.
fn one_privileged(domains: &[DomainToml]) -> Result<()> {
    let named: Vec<String> = domains.iter().filter(|d| d.privileged).map(|d| format!("'{}'", d.name)).collect();
    if named.len() > 1 {
        return Err(format!(
            "{} domains are privileged ({}); there is exactly one dom0: keep privileged = true on one",
            named.len(),
            named.join(", ")
        ));
    }
    Ok(())
}

/// Every `[[image]]` has a name the toolstack can type, and no two share
/// one (`create NAME` picks by it).
fn unique_images(images: &[ImageToml], domains: &[DomainToml]) -> Result<()> {
    for (i, t) in images.iter().enumerate() {
        if domains.iter().any(|d| d.name == t.name) {
            return Err(format!("image '{}': a [[domain]] has that name (names are unique among both)", t.name));
        }
        if !valid_name(&t.name) {
            return Err(format!("image '{}': a name is 1..=31 of [A-Za-z0-9._-]", t.name));
        }
        if images[..i].iter().any(|o| o.name == t.name) {
            return Err(format!("image '{}': defined twice", t.name));
        }
    }
    Ok(())
}

/// The bundle's `Expect` for a manifest string.
pub fn parse_expect(s: &str) -> Result<ringfence_bundle::Expect> {
    match s {
        "poweroff" => Ok(ringfence_bundle::Expect::Poweroff),
        "crash" => Ok(ringfence_bundle::Expect::Crash),
        "rejected" => Ok(ringfence_bundle::Expect::Rejected),
        other => Err(format!("expect = '{other}' is not \"poweroff\", \"crash\" or \"rejected\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text, Path::new("m.toml"))
    }

    const DOMU: &str = "[[domain]]\nname = \"domu\"\nimage = \"hello\"\nmem_kib = 512\n";

    fn dom0(name: &str) -> String {
        format!("[[domain]]\nname = \"{name}\"\nimage = \"dom0\"\nmem_kib = 1024\nprivileged = true\ncmdline = \"devices\"\n")
    }

    /// dom0 on a 64 MiB disk, a template `base` (2 MiB, seed 0x7e4a), and
    /// `domus`.
    fn with_disks(domus: &str) -> Result<Manifest> {
        parse(&format!(
            "[devices]\ndisk_mib = 64\n\n[[template]]\nname = \"base\"\nmib = 2\nseed = 0x7e4a\n\n{}{domus}",
            dom0("dom0")
        ))
    }

    fn domu(name: &str, disk: &str) -> String {
        format!("[[domain]]\nname = \"{name}\"\nimage = \"blklog\"\nmem_kib = 1024\ndisk = {{ {disk} }}\n")
    }

    fn overlay(name: &str) -> String {
        domu(name, "kind = \"overlay\", mib = 3, template = \"base\"")
    }

    #[test]
    fn disks_are_laid_out_past_dom0s_regions_templates_first_and_dom0_is_told() {
        let m = with_disks(&format!(
            "{}{}{}{}",
            domu("log", "kind = \"raw\", mib = 4"),
            overlay("ovl-a"),
            domu("sp", "kind = \"sparse\", mib = 8"),
            overlay("ovl-b")
        ))
        .unwrap();
        let got: Vec<(&str, Kind, u64, u64)> =
            m.disks.vbds.iter().map(|v| (v.domain.as_str(), v.kind, v.region.lba, v.region.sectors)).collect();
        let mib = |n: u64| n * 2048;
        assert_eq!(
            got,
            [
                ("base", Kind::Template(0x7e4a), mib(16), mib(2)),
                ("log", Kind::Raw, mib(18), mib(4)),
                ("ovl-a", Kind::Overlay(0), mib(22), mib(3)),
                ("sp", Kind::Sparse, mib(25), mib(8)),
                ("ovl-b", Kind::Overlay(0), mib(33), mib(3)),
            ]
        );
        let dom0 = m.domain.iter().find(|d| d.privileged).unwrap();
        assert_eq!(
            m.cmdline_of(dom0),
            "devices vbd=log:raw:36864:8192 vbd=ovl-a:image:45056:6144 vbd=sp:image:51200:16384 vbd=ovl-b:image:67584:6144"
        );
        let log = m.domain.iter().find(|d| d.name == "log").unwrap();
        assert_eq!(m.cmdline_of(log), "");
    }

    #[test]
    fn dom0s_api_forward_needs_its_api_word() {
        let dom0 = |words: &str| {
            format!("[devices]\ndisk_mib = 32\ndom0_api = 8080\n[[domain]]\nname = \"dom0\"\nimage = \"dom0\"\nmem_kib = 2048\nprivileged = true\ncmdline = \"devices {words}\"\n")
        };
        let m = parse(&dom0("api=8080 token=abcdefgh")).unwrap();
        assert_eq!(m.api(), Some((8080, "abcdefgh".into())));
        assert!(m.devices.wants_nic());
        let at = m.devices.forwards_at();
        assert_eq!(at, [(crate::qemu::devices::Proto::Tcp, crate::qemu::devices::DOM0_API_IP, 8080)]);
        let e = parse(&dom0("api=9090 token=abcdefgh")).unwrap_err();
        assert!(e.contains("needs `api=8080 token=TOKEN`"), "{e}");
        assert!(parse(&dom0("")).is_err());
    }

    #[test]
    fn clone_space_follows_the_disks_and_names_the_templates() {
        let text = format!(
            "[devices]\ndisk_mib = 64\nclone_mib = 8\n\n[[template]]\nname = \"base\"\nmib = 2\nseed = 1\n\n{}",
            dom0("dom0")
        );
        let m = parse(&text).unwrap();
        let priv_dom = m.domain.iter().find(|d| d.privileged).unwrap();
        assert_eq!(m.cmdline_of(priv_dom), "devices vtemplate=base:32768:4096 vpool=36864:16384");
        let e = parse(&text.replace("clone_mib = 8", "clone_mib = 2000")).unwrap_err();
        assert!(e.contains("clone_mib: mib = 2000 is not 1..=1024"), "{e}");
        let none = format!("[devices]\ndisk_mib = 64\nclone_mib = 8\n{}", dom0("dom0"));
        assert!(parse(&none).unwrap_err().contains("there is no [[template]] to clone"));
    }

    #[test]
    fn images_are_named_once_each() {
        let img = |n: &str| format!("[[image]]\nname = \"{n}\"\nimage = \"hello\"\nmem_kib = 512\n");
        let m = parse(&format!("{DOMU}{}{}", img("a"), img("b"))).unwrap();
        assert_eq!(m.image.iter().map(|i| (i.name.as_str(), i.weight)).collect::<Vec<_>>(), [("a", 100), ("b", 100)]);
        let e = parse(&format!("{DOMU}{}{}", img("a"), img("a"))).unwrap_err();
        assert_eq!(e, "manifest m.toml: image 'a': defined twice");
        let e = parse(&format!("{DOMU}{}", img("domu"))).unwrap_err();
        assert_eq!(e, "manifest m.toml: image 'domu': a [[domain]] has that name (names are unique among both)");
        let e = parse(&format!("{DOMU}{}", img("no spaces"))).unwrap_err();
        assert_eq!(e, "manifest m.toml: image 'no spaces': a name is 1..=31 of [A-Za-z0-9._-]");
    }

    #[test]
    fn dom0s_own_words_come_first_and_no_disks_leave_its_cmdline_alone() {
        let text = "[devices]\ndisk_mib = 32\n[[domain]]\nname = \"dom0\"\nimage = \"dom0\"\nmem_kib = 2048\nprivileged = true\ncmdline = \"devices net\"\n";
        let m = parse(text).unwrap();
        assert!(m.disks.vbds.is_empty());
        assert_eq!(m.cmdline_of(&m.domain[0]), "devices net");
        let m = parse(&format!("{text}{}", domu("log", "kind = \"raw\", mib = 1"))).unwrap();
        assert_eq!(m.cmdline_of(&m.domain[0]), "devices net vbd=log:raw:32768:2048");
    }

    #[test]
    fn a_bad_disk_is_refused_naming_the_file_and_domain() {
        let cases = [
            (
                domu("x", "kind = \"qcow2\", mib = 4"),
                "manifest m.toml: domain 'x': disk: kind = 'qcow2' is not \"raw\", \"sparse\" or \"overlay\"",
            ),
            (domu("x", "kind = \"raw\", mib = 0"), "manifest m.toml: domain 'x': disk: mib = 0 is not 1..=1024"),
            (domu("x", "kind = \"sparse\", mib = 4096"), "manifest m.toml: domain 'x': disk: mib = 4096 is not 1..=1024"),
            (
                domu("x", "kind = \"overlay\", mib = 3, template = \"bsae\""),
                "manifest m.toml: domain 'x': disk: template 'bsae' is not a [[template]] of the manifest (known: 'base')",
            ),
            (
                domu("x", "kind = \"overlay\", mib = 3"),
                "manifest m.toml: domain 'x': disk: kind = \"overlay\" needs template = \"<a [[template]]'s name>\"",
            ),
            (
                domu("x", "kind = \"raw\", mib = 3, template = \"base\""),
                "manifest m.toml: domain 'x': disk: template = ... is only for kind = \"overlay\"",
            ),
            (
                format!("{}{}", overlay("x"), domu("big", "kind = \"raw\", mib = 44")),
                "manifest m.toml: domain 'big': disk: the virtual disks need a real disk of 65 MiB (16 MiB kept for dom0's own, then the templates and disks in order), [devices] disk_mib is 64",
            ),
            (
                domu("x", "kind = \"raw\", mib = 4"),
                "manifest m.toml: template 'base' is named by no overlay's disk (or set [devices] clone_mib for run-time clones)",
            ),
        ];
        for (domus, want) in cases {
            assert_eq!(with_disks(&domus).unwrap_err(), want);
        }
        // The same disk fits when it is one MiB smaller.
        assert!(with_disks(&format!("{}{}", overlay("x"), domu("big", "kind = \"raw\", mib = 43"))).is_ok());
    }

    #[test]
    fn a_disk_needs_a_domu_a_dom0_to_serve_it_and_a_real_disk() {
        let privileged = "[devices]\ndisk_mib = 64\n[[domain]]\nname = \"dom0\"\nimage = \"dom0\"\nmem_kib = 2048\nprivileged = true\ndisk = { kind = \"raw\", mib = 4 }\n";
        assert_eq!(
            parse(privileged).unwrap_err(),
            "manifest m.toml: domain 'dom0': disk: the privileged domain serves the virtual disks and gets none; give it to a domU"
        );
        let log = domu("log", "kind = \"raw\", mib = 4");
        assert_eq!(
            parse(&format!("[devices]\ndisk_mib = 64\n{log}")).unwrap_err(),
            "manifest m.toml: domain 'log': disk: no privileged domain to serve it"
        );
        assert_eq!(
            parse(&format!("{}{log}", dom0("dom0"))).unwrap_err(),
            "manifest m.toml: domain 'log': disk: the machine has no disk to hold it: set [devices] disk_mib (at least 20)"
        );
        // A dom0 in a mode that serves no disks.
        let idle = "[devices]\ndisk_mib = 64\n[[domain]]\nname = \"dom0\"\nimage = \"dom0\"\nmem_kib = 2048\nprivileged = true\ncmdline = \"net\"\n";
        assert_eq!(
            parse(&format!("{idle}{log}")).unwrap_err(),
            "manifest m.toml: domain 'log': disk: the privileged domain 'dom0' serves disks only with `devices` or `serve` on its cmdline (it has \"net\")"
        );
        // With a template laid out first, the domain is still the one named.
        let base = "[[template]]\nname = \"base\"\nmib = 2\nseed = 1\n";
        assert_eq!(
            parse(&format!("{base}{}", overlay("ovl"))).unwrap_err(),
            "manifest m.toml: domain 'ovl': disk: no privileged domain to serve it"
        );
        assert_eq!(
            parse(&format!("{base}{}{}", dom0("dom0"), overlay("ovl"))).unwrap_err(),
            "manifest m.toml: domain 'ovl': disk: the machine has no disk to hold it: set [devices] disk_mib (at least 21)"
        );
    }

    #[test]
    fn too_many_disks_for_dom0s_command_line_are_refused() {
        let name = |k: usize| format!("a-long-domain-name-number-{k:05}");
        let domus: String = (0..40).map(|k| domu(&name(k), "kind = \"raw\", mib = 1")).collect();
        let text = format!("[devices]\ndisk_mib = 1024\n{}{domus}", dom0("dom0"));
        assert_eq!(
            parse(&text).unwrap_err(),
            "manifest m.toml: domain 'dom0': with the vbd= words of its 40 disks its command line is 2054 bytes; it must be shorter than 1024 (fewer disks or shorter domain names)"
        );
        let domus: String = (0..16).map(|k| domu(&name(k), "kind = \"raw\", mib = 1")).collect();
        assert!(parse(&format!("[devices]\ndisk_mib = 1024\n{}{domus}", dom0("dom0"))).is_ok());
    }

    #[test]
    fn a_bad_template_is_refused_naming_it() {
        let t = |name: &str, mib: u64| format!("[[template]]\nname = \"{name}\"\nmib = {mib}\nseed = 1\n");
        let cases = [
            (t("base", 1), "manifest m.toml: template 'base': defined twice"),
            (t("other", 0), "manifest m.toml: template 'other': mib = 0 is not 1..=1024"),
            (t("a b", 1), "manifest m.toml: template 'a b': a name is 1..=31 of [A-Za-z0-9._-]"),
            (
                t("spare", 1),
                "manifest m.toml: template 'spare' is named by no overlay's disk (or set [devices] clone_mib for run-time clones)",
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(with_disks(&format!("{extra}{}", overlay("x"))).unwrap_err(), want);
        }
        // Unknown fields are refused by the parser, with the file named.
        let e = with_disks(&domu("x", "kind = \"raw\", mib = 1, size = 3")).unwrap_err();
        assert!(e.starts_with("manifest m.toml: ") && e.contains("unknown field `size`"), "{e}");
    }

    #[test]
    fn the_demo_manifest_gives_three_domus_disks_clear_of_dom0s_regions() {
        let m = Manifest::load(&crate::root().join("sample-guests/manifests/demo.toml")).unwrap();
        let disks: Vec<(&str, Kind)> = m.disks.vbds.iter().map(|v| (v.domain.as_str(), v.kind)).collect();
        assert_eq!(
            disks,
            [
                ("base", Kind::Template(4242)),
                ("blk-log", Kind::Raw),
                ("blk-ovl-a", Kind::Overlay(0)),
                ("blk-ovl-b", Kind::Overlay(0)),
                ("", Kind::Pool)
            ]
        );
        let dom0_end = [disk_pattern::dom0::READ, disk_pattern::dom0::WRITE].map(|r| r.lba + r.sectors);
        assert!(m.disks.vbds.iter().all(|v| dom0_end.iter().all(|&e| v.region.lba >= e)));
        assert!(m.disks.disk_sectors() <= m.devices.disk_mib * MIB);
        let dom0 = m.domain.iter().find(|d| d.privileged).unwrap();
        assert!(
            m.cmdline_of(dom0).starts_with(&format!("{} vbd=blk-log:raw:", dom0.cmdline)),
            "{}",
            m.cmdline_of(dom0)
        );
    }

    #[test]
    fn no_or_one_privileged_domain_is_fine() {
        assert!(parse(DOMU).is_ok());
        assert!(parse(&format!("{DOMU}{}", dom0("dom0"))).is_ok());
    }

    #[test]
    fn a_second_privileged_domain_is_refused_naming_both() {
        let e = parse(&format!("{}{DOMU}{}", dom0("dom0"), dom0("rogue"))).unwrap_err();
        assert_eq!(
            e,
            "manifest m.toml: 2 domains are privileged ('dom0', 'rogue'); there is exactly one dom0: keep privileged = true on one"
        );
        let e = parse(&format!("{}{}{}", dom0("a"), dom0("b"), dom0("c"))).unwrap_err();
        assert!(e.contains("3 domains are privileged ('a', 'b', 'c')"), "{e}");
    }
}
