//! `serve` mode: dom0 as the service domain. It runs the device store
//! ([`device_store`]) for every other domain, and serves each domU the
//! virtual disk its manifest entry names (blkback over the real virtio
//! disk), until every domU has ended.
//!
//! # Command line
//! `serve vbd=NAME:KIND:LBA:SECTORS ...`: domain `NAME` gets a virtual disk
//! (vdev 51712, Linux's `xvda`) in the real disk's sectors
//! `LBA..LBA+SECTORS`; `KIND` is `raw` (a slice) or `image` (a sparse
//! image or an overlay, whose header names its base). xtask writes these
//! from the manifest; they are checked like any input (a bad one is
//! reported and skipped).
//!
//! The toolstack rides on this loop: `shell` ([`crate::toolstack`]) and
//! `api=PORT token=T` ([`crate::api`]; dom0's own port on the bridge);
//! with `stay`, dom0 serves until `shutdown` instead of until the others
//! have ended. `vtemplate=NAME:LBA:SECTORS` and `vpool=LBA:SECTORS` let it
//! make clones at run time ([`Services::prepare_clone`]): a copy-on-write
//! overlay of a template disk, formatted in the pool before the domain is
//! created and offered like the manifest's disks, but only to that
//! domain's id ([`VbdSpec::owner`]); the spec goes when the domain does.
//!
//! # Who writes what
//! - `specs` (the disks to offer): the command line's at the start, a
//!   clone's added by the toolstack's create and removed by the rescan
//!   that finds its domain dead.
//! - The toolstack's and the API's work runs inside the pass, bounded (a
//!   command, a churn cycle, a batch of spawns, a request); dom0's heap
//!   bounds the domains it serves (a store connection it has no room for
//!   is refused, and said once).
//!
//! # The loop
//! 1. Every domain with a store connection (`domctl` `GETDOMAININFO`) is
//!    connected ([`BackLink`]) and introduced to the store; then, if it
//!    has a disk, dom0 writes the frontend and backend directories with
//!    their permissions, as Xen's toolstack does, and the backend's
//!    features and size, and shows `InitWait`. Its console is taken over
//!    by dom0's console daemon ([`crate::consoled`]), which drains it from
//!    then on.
//! 2. Each pass moves every connection's bytes between its ring and the
//!    store, every console's output on, drives each disk's handshake
//!    ([`split_drivers::state::Backend`]) from the frontend's state node,
//!    and serves each connected disk's ring a batch at a time.
//! 3. After each pass dom0 blocks until something is ready (at once if
//!    something already is): an event (any connection's, any ring's, any
//!    console's, or `VIRQ_DOM_EXC`, which says a domain ended and makes
//!    dom0 rescan: a dead domain's connections are released, what it left
//!    on its console passed on, and its disk's mappings given back), a store connection's bytes to read or to send, a ring's
//!    requests, the disk's completions, the toolstack's timer (console
//!    input, `top`) or a churn under way. Only the NIC's and the API's
//!    paths take another pass straight after doing work.

use crate::blkback::{self, BlkBack, Dev};
use crate::consoled::Consoles;
use crate::served::{self, Handshake, Served};
use crate::xs::Xs as Store;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use disk_images::{Region, VirtualDisk};
use pvguest_sdk::abi::domctl::dominf;
use pvguest_sdk::abi::event::VIRQ_DOM_EXC;
use pvguest_sdk::domctl;
use pvguest_sdk::event::{self, Port};
use pvguest_sdk::println;
use pvguest_sdk::store_link::BackLink;
use pvguest_sdk::virtio::blk::Disk;
use split_drivers::state::{Event, State};

/// The vdev every disk gets (Xen's number for `xvda`).
pub const VDEV: u16 = 51712;
/// dom0's heap a new store connection leaves free at least.
const STORE_HEADROOM: usize = 32 * 1024;
/// Store bytes moved per connection per pass, each way.
const CHUNK: usize = 1024;

/// Something happened: a port fired.
static WORK: AtomicBool = AtomicBool::new(false);
/// A domain ended (`VIRQ_DOM_EXC`).
static RESCAN: AtomicBool = AtomicBool::new(true);

pub(crate) fn on_event(_: Port) {
    WORK.store(true, Ordering::SeqCst);
}

fn on_dom_exc(_: Port) {
    RESCAN.store(true, Ordering::SeqCst);
    WORK.store(true, Ordering::SeqCst);
}

/// A virtual disk from the command line, or a clone the toolstack made.
#[derive(Clone, Debug)]
pub struct VbdSpec {
    pub domain: String,
    pub image: bool,
    pub region: Region,
    /// A clone's: only this domain gets it (names may come back), and it
    /// goes with that domain. `None`: the command line's, by name.
    pub owner: Option<u16>,
}

/// The `vbd=` words of `cmdline`; bad ones are reported and skipped.
pub fn parse_vbds(cmdline: &str) -> Vec<VbdSpec> {
    let mut out = Vec::new();
    for w in cmdline.split(' ').filter_map(|w| w.strip_prefix("vbd=")) {
        let f: Vec<&str> = w.split(':').collect();
        let parsed = match f.as_slice() {
            [name, kind @ ("raw" | "image"), lba, sectors] if !name.is_empty() => {
                match (lba.parse::<u64>(), sectors.parse::<u64>()) {
                    (Ok(l), Ok(s)) if s > 0 && l.checked_add(s).is_some() => Some(VbdSpec {
                        domain: (*name).into(),
                        image: *kind == "image",
                        region: Region::new(l, s),
                        owner: None,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        match parsed {
            Some(v) => out.push(v),
            None => println!("serve: bad vbd spec `{w}`, skipped"),
        }
    }
    out
}

/// `vtemplate=NAME:LBA:SECTORS` words: read-only template disks (raw
/// slices) that the toolstack's `create ... from=NAME` makes copy-on-write
/// overlays on. Bad ones are reported and skipped.
pub fn parse_templates(cmdline: &str) -> Vec<(String, Region)> {
    let mut out = Vec::new();
    for w in cmdline.split(' ').filter_map(|w| w.strip_prefix("vtemplate=")) {
        let f: Vec<&str> = w.split(':').collect();
        match f.as_slice() {
            [name, lba, sectors] if !name.is_empty() => match (lba.parse::<u64>(), sectors.parse::<u64>()) {
                (Ok(l), Ok(s)) if s > 0 && l.checked_add(s).is_some() => out.push(((*name).into(), Region::new(l, s))),
                _ => println!("serve: bad vtemplate `{w}`, skipped"),
            },
            _ => println!("serve: bad vtemplate `{w}`, skipped"),
        }
    }
    out
}

/// The disk space clones are made in (`vpool=LBA:SECTORS`), handed out
/// from its start in whole MiB and not reused: a long-running dom0 with
/// many clones needs a larger pool (the manifest's `clone_mib`).
pub struct ClonePool {
    next: u64,
    end: u64,
}

/// Sectors per MiB.
const MIB_SECTORS: u64 = 2048;

impl ClonePool {
    /// The pool of `cmdline`'s `vpool=` word, if any.
    pub fn from_cmdline(cmdline: &str) -> Option<ClonePool> {
        let w = cmdline.split(' ').find_map(|w| w.strip_prefix("vpool="))?;
        match w.split_once(':').map(|(l, s)| (l.parse::<u64>(), s.parse::<u64>())) {
            Some((Ok(l), Ok(s))) if s > 0 && l.checked_add(s).is_some() => Some(ClonePool { next: l, end: l + s }),
            _ => {
                println!("serve: bad vpool `{w}`, no clones");
                None
            }
        }
    }

    fn take(&mut self, sectors: u64) -> Option<Region> {
        let sectors = sectors.div_ceil(MIB_SECTORS) * MIB_SECTORS;
        let end = self.next.checked_add(sectors).filter(|&e| e <= self.end)?;
        let r = Region::new(self.next, sectors);
        self.next = end;
        Some(r)
    }
}

/// What the toolstack needs of the serve loop: clones and the consoles
/// (see [`crate::toolstack::Services`]).
pub struct Services<'a> {
    pub disk: &'a mut Disk,
    pub specs: &'a mut Vec<VbdSpec>,
    pub templates: &'a [(String, Region)],
    pub pool: &'a mut Option<ClonePool>,
    pub consoles: &'a mut Consoles,
}

impl crate::toolstack::Services for Services<'_> {
    fn consoles(&mut self) -> &mut Consoles {
        self.consoles
    }

    fn prepare_clone(&mut self, name: &str, template: &str) -> Result<String, crate::toolstack::Failure> {
        use crate::toolstack::Failure;
        let Some((_, base)) = self.templates.iter().find(|(n, _)| n == template) else {
            let known: Vec<&str> = self.templates.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Failure::Missing(format!(
                "no template disk '{template}' (template disks: {})",
                if known.is_empty() { String::from("none") } else { known.join(", ") }
            )));
        };
        if self.specs.iter().any(|s| s.domain == name) {
            return Err(Failure::Refused(format!("'{name}' already has a disk")));
        }
        let pool = self.pool.as_mut().ok_or_else(|| {
            Failure::Refused(String::from("no disk space for clones: dom0 needs vpool= (the manifest's clone_mib)"))
        })?;
        // The overlay's header and map, and room for every block of its
        // base: one MiB more than the base.
        let region = pool.take(base.sectors + MIB_SECTORS).ok_or_else(|| {
            Failure::Refused(format!("the clone space is full ({} sectors left)", pool.end - pool.next))
        })?;
        disk_images::format_overlay(&mut Dev(self.disk), region, disk_images::BaseRef::Raw(*base), base.sectors)
            .map_err(|e| Failure::Refused(format!("formatting the overlay: {e:?}")))?;
        self.specs.push(VbdSpec { domain: name.into(), image: true, region, owner: None });
        Ok(format!("an overlay of '{template}' at LBA {}, {} sectors", region.lba, region.sectors))
    }

    fn settle_clone(&mut self, name: &str, domid: Option<u16>) {
        match domid {
            Some(id) => {
                if let Some(s) = self.specs.iter_mut().find(|s| s.domain == name && s.owner.is_none() && s.image) {
                    s.owner = Some(id);
                }
            }
            None => self.specs.retain(|s| !(s.domain == name && s.owner.is_none() && s.image)),
        }
    }
}

/// `vbdback=VICTIM:BACKEND` words: domain `BACKEND` (not dom0) serves
/// `VICTIM`'s disk (the hostile-backend scenario; Xen's driver domains).
pub fn parse_foreign_backs(cmdline: &str) -> Vec<(String, String)> {
    cmdline
        .split(' ')
        .filter_map(|w| w.strip_prefix("vbdback="))
        .filter_map(|w| w.split_once(':'))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty() && a != b)
        .map(|(a, b)| (a.into(), b.into()))
        .collect()
}

/// Writes the directories of a disk of `victim` served by domain `back`
/// (the toolstack's part; the backend writes its details and state).
fn offer_foreign(store: &mut Store, victim: u16, back: u16) -> Result<(), String> {
    let fd = front_dir(victim);
    let bd = format!("/local/domain/{back}/backend/vbd/{victim}/{VDEV}");
    let w =
        |store: &mut Store, path: &str, v: &str| store.write(0, path, v.as_bytes()).map_err(|e| format!("{path}: {e}"));
    dir(store, &fd, &[format!("n{victim}"), format!("r{back}")])?;
    w(store, &format!("{fd}/backend"), &bd)?;
    w(store, &format!("{fd}/backend-id"), &format!("{back}"))?;
    w(store, &format!("{fd}/state"), State::Initialising.as_str())?;
    dir(store, &bd, &[format!("n{back}"), format!("r{victim}")])?;
    w(store, &format!("{bd}/frontend"), &fd)?;
    w(store, &format!("{bd}/frontend-id"), &format!("{victim}"))?;
    println!("serve: dom{victim}'s disk is served by dom{back}");
    Ok(())
}

/// One domain's disk: the handshake and, once connected, the backend.
struct Vbd {
    spec: VbdSpec,
    domid: u16,
    hs: Handshake,
    back: Option<BlkBack>,
    /// A backend that ended with requests still at the device: it takes
    /// no more, and closes (giving back the virtual disk) when its last
    /// completion has come, so that nothing it accepted lands after what a
    /// new connection does, or after the final flush.
    draining: Option<BlkBack>,
    /// The domain is gone: the disk goes once nothing drains.
    dead: bool,
    vdisk: Option<VirtualDisk>,
}

impl Served for Vbd {
    const WHAT: &'static str = "disk";
    fn handshake(&mut self) -> &mut Handshake {
        &mut self.hs
    }
    fn connect(&mut self, store: &mut Store) -> Event {
        connect_ring(store, self)
    }
    fn disconnect(&mut self) {
        self.retire();
    }
}

impl Vbd {
    /// Ends the backend: closed at once if nothing of it is at the device,
    /// else left draining ([`Vbd::draining`]).
    fn retire(&mut self) {
        let Some(b) = self.back.take() else { return };
        if b.in_flight() == 0 {
            self.vdisk = Some(b.close());
        } else {
            self.draining = Some(b);
        }
    }

    /// Closes a draining backend whose last completion has come.
    fn drained(&mut self) {
        if self.draining.as_ref().is_some_and(|b| b.in_flight() == 0) {
            if let Some(b) = self.draining.take() {
                self.vdisk = Some(b.close());
            }
        }
    }
}

/// What the rescans counted: domains connected, and those not connected
/// for want of heap (each said once).
#[derive(Default)]
struct Tally {
    served: u32,
    refused: Vec<u16>,
}

/// One domain served.
struct Client {
    domid: u16,
    name: String,
    link: BackLink,
}

/// Runs the service until every domU has ended; `Ok` when it served every
/// one it found to its end.
pub fn run(disk: &mut Disk, cmdline: &str) -> Result<(), String> {
    let mut specs = parse_vbds(cmdline);
    let templates = parse_templates(cmdline);
    let mut pool = ClonePool::from_cmdline(cmdline);
    let mut native = None;
    if let Some(base) = pvguest_sdk::cmdline::arg(cmdline, "native_bench") {
        // The split-disk benchmark's other half: the same disk, from dom0
        // itself: all before any domU is served, or with `rounds=` its
        // single reads now and its passes in rounds the domU asks for.
        let e = |e| format!("native bench: {e}");
        if pvguest_sdk::cmdline::arg(cmdline, "rounds").is_some() {
            let mut b = crate::blk::Bench::new(cmdline, base, "native_").map_err(e)?;
            b.single(disk).map_err(e)?;
            native = Some(NativeRounds { bench: b, done: None, changes: u64::MAX, mark: None });
        } else {
            crate::blk::bench_at(disk, cmdline, base, "native_").map_err(e)?;
        }
    }
    let foreign = parse_foreign_backs(cmdline);
    let mut foreign_done: Vec<(String, String)> = Vec::new();
    println!("serve: {} virtual disk(s) configured", specs.len());
    let mut store = Store::new();
    let mut vifs = crate::vifs::Vifs::new(cmdline, on_event);
    event::bind_virq(VIRQ_DOM_EXC, on_dom_exc).map_err(|e| format!("VIRQ_DOM_EXC: {e}"))?;
    // The disk's port keeps the driver's own handler (it counts); the
    // loop below acknowledges the device and collects its completions.
    let mut clients: Vec<Client> = Vec::new();
    let mut vbds: Vec<Vbd> = Vec::new();
    let mut tally = Tally::default();
    let mut turn = 0usize;
    // The management shell, with `shell` on the command line.
    let mut ts = crate::toolstack::Toolstack::from_cmdline(cmdline);
    // Its HTTP/JSON API, with `api=` (dom0's own port on the bridge).
    let mut api = crate::api::Api::from_cmdline(cmdline, &mut vifs);
    // The console daemon: every domain served gets its console drained by
    // dom0 ([`crate::consoled`]).
    let mut consoles = Consoles::default();
    let mut others = usize::MAX;
    loop {
        if RESCAN.swap(false, Ordering::SeqCst) {
            others = rescan(&mut store, &mut clients, &mut vbds, &mut vifs, &mut specs, disk, &mut tally);
            consoles.sync(clients.iter().map(|c| (c.domid, c.name.as_str())));
            for (victim, back) in &foreign {
                let id = |n: &str| clients.iter().find(|c| c.name == n).map(|c| c.domid);
                if foreign_done.iter().any(|(v, _)| v == victim) {
                    continue;
                }
                if let (Some(v), Some(b)) = (id(victim), id(back)) {
                    if let Err(e) = offer_foreign(&mut store, v, b) {
                        println!("serve: {victim}'s disk: {e}");
                    }
                    foreign_done.push((victim.clone(), back.clone()));
                }
            }
        }
        // The API's last answers go out before dom0 ends.
        if others == 0 && !ts.as_ref().is_some_and(|t| t.keeps_dom0()) && !api.as_mut().is_some_and(|a| a.flushing()) {
            vifs.report();
            println!("serve: every domain served has ended ({}); done", tally.served);
            return Ok(());
        }
        if let Some(t) = ts.as_mut() {
            let consoles = &mut consoles;
            t.poll(&mut Services { disk, specs: &mut specs, templates: &templates, pool: &mut pool, consoles });
        }
        for c in clients.iter_mut() {
            pump(&mut store, c);
        }
        consoles.pump();
        complete(&mut store, &mut vbds, disk)?;
        if let Some(n) = native.as_mut() {
            n.answer(&mut store, &vbds, disk)?;
        }
        // The disk's request slots and descriptors are shared out among
        // the connected fronts, and each pass starts at the next one.
        let connected = vbds.iter().filter(|v| v.back.is_some()).count().max(1);
        let share = blkback::Share::of(connected);
        turn = turn.wrapping_add(1);
        let n = vbds.len();
        for i in 0..n {
            drive(&mut store, &mut vbds[(turn + i) % n], disk, share);
        }
        disk.kick();
        let nic_work = vifs.drive(&mut store);
        // dom0's own stack (the API): frames in and out, requests answered.
        let mut api_work = false;
        if let (Some(a), Some(t), Some(q)) = (api.as_mut(), ts.as_mut(), vifs.local()) {
            let svc = &mut Services {
                disk,
                specs: &mut specs,
                templates: &templates,
                pool: &mut pool,
                consoles: &mut consoles,
            };
            api_work = a.poll(q, t, svc);
        }
        // After a pass that did something, the next pass is needed only if
        // something is ready, which is what the wake-up condition checks:
        // so it decides at once (no empty pass per wake). The NIC's path
        // and the API's still take another pass after work.
        if !nic_work && !api_work {
            if let Some(t) = ts.as_mut() {
                t.arm(api.as_mut().map(|a| a.next_poll()));
            }
            event::block_until(|| {
                if ts.as_ref().is_some_and(|t| t.ready()) {
                    return true;
                }
                let mut ready = WORK.swap(false, Ordering::SeqCst) || disk.ready() || disk.has_completions();
                ready |= vifs.pending() || consoles.ready();
                for c in clients.iter_mut() {
                    // Bytes to read, or replies and watch events to send
                    // (this pass's writes fire watches).
                    ready |= !matches!(c.link.readable(), Ok(false)) || store.has_output(c.domid);
                }
                // A backend held back (its share or the disk full) waits
                // for a completion, not for its ring.
                for v in vbds.iter_mut() {
                    if let Some(b) = v.back.as_mut().filter(|b| b.can_take(disk, share)) {
                        ready |= !matches!(b.pending(), Ok(false));
                    }
                }
                ready
            });
        }
    }
}

/// The split-disk benchmark's native passes in rounds, between the
/// domU's: a connected domU writes `data/bench-round` = `r` in its store
/// directory, dom0 runs round `r` of its own passes on its region and
/// answers with `data/bench-native` = `r`. So both paths' figures come
/// from the same stretch of the run, interleaved, and a change of the
/// host's speed weighs on both. A new `data/bench-mark` gets a line with
/// the time dom0 has run (`blkbench: dom0_run mark=M run_ns=N`).
struct NativeRounds {
    bench: crate::blk::Bench,
    /// The last round run.
    done: Option<u64>,
    /// The store's change count when its nodes were last looked at.
    changes: u64,
    /// The last `data/bench-mark` seen.
    mark: Option<u64>,
}

impl NativeRounds {
    /// Runs a round a domU asked for (only with nothing of any front's
    /// at the disk: the driver's completions are then all the pass's);
    /// whether it ran one.
    fn answer(&mut self, store: &mut Store, vbds: &[Vbd], disk: &mut Disk) -> Result<bool, String> {
        if store.changes() == self.changes || vbds.iter().any(|v| v.back.as_ref().is_some_and(|b| b.in_flight() > 0)) {
            return Ok(false);
        }
        self.changes = store.changes();
        for v in vbds.iter().filter(|v| v.back.is_some()) {
            // A mark: how long dom0 has run, for the domU's figure of the
            // instructions a request costs both domains.
            let mark = store.read(0, &format!("/local/domain/{}/data/bench-mark", v.domid)).ok();
            let mark = mark.and_then(|b| core::str::from_utf8(&b).ok()?.parse::<u64>().ok());
            if mark.is_some() && mark != self.mark {
                self.mark = mark;
                println!("blkbench: dom0_run mark={} run_ns={}", mark.unwrap_or(0), pvguest_sdk::time::virtual_ns());
            }
            let asked = store.read(0, &format!("/local/domain/{}/data/bench-round", v.domid)).ok();
            let Some(r) = asked.and_then(|b| core::str::from_utf8(&b).ok()?.parse::<u64>().ok()) else { continue };
            if self.done.is_some_and(|d| d >= r) {
                continue;
            }
            let e = |e| format!("native bench round {r}: {e}");
            self.bench.sequential(disk, Some(r)).map_err(e)?;
            self.bench.random(disk, Some(r)).map_err(e)?;
            self.done = Some(r);
            let path = format!("/local/domain/{}/data/bench-native", v.domid);
            store.write(0, &path, format!("{r}").as_bytes()).map_err(|e| format!("{path}: {e}"))?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Connects new domains, releases dead ones; returns how many other
/// domains are still alive.
fn rescan(
    store: &mut Store,
    clients: &mut Vec<Client>,
    vbds: &mut Vec<Vbd>,
    vifs: &mut crate::vifs::Vifs,
    specs: &mut Vec<VbdSpec>,
    disk: &mut Disk,
    tally: &mut Tally,
) -> usize {
    let live: Vec<_> = domctl::domains().collect();
    // The dead and the gone first.
    let alive = |id: u16| live.iter().any(|i| i.domid == u32::from(id) && i.flags & dominf::DYING == 0);
    let mut k = 0;
    while k < clients.len() {
        if alive(clients[k].domid) {
            k += 1;
            continue;
        }
        let c = clients.swap_remove(k);
        println!("serve: dom{} ({}) ended: store connection released", c.domid, c.name);
        store.release(c.domid);
        c.link.close();
    }
    for v in vbds.iter_mut().filter(|v| !alive(v.domid) && !v.dead) {
        v.dead = true;
        if let Some(b) = v.back.as_ref() {
            println!("serve: dom{}'s disk closed: {:?}", v.domid, b.stats);
            let n = (b.stats.reads + b.stats.writes + b.stats.flushes).max(1);
            println!(
                "serve: dom{}'s disk: {} TSC ticks per request taken, {} per answer ({n} requests)",
                v.domid,
                b.stats.accept_tsc / n,
                b.stats.complete_tsc / n
            );
        }
        v.retire();
    }
    forget_dead(vbds, disk);
    // A clone goes with its domain (its space is not reused: ClonePool).
    specs.retain(|s| s.owner.is_none_or(|o| alive(o) || vbds.iter().any(|v| v.domid == o)));
    vifs.release(alive);
    for info in &live {
        let Ok(domid) = u16::try_from(info.domid) else { continue };
        if info.flags & dominf::STORE == 0 || info.flags & dominf::DYING != 0 {
            continue;
        }
        if clients.iter().any(|c| c.domid == domid) {
            continue;
        }
        // A store connection needs dom0's heap; out of it, dom0 would end.
        let (_, free) = pvguest_sdk::heap::stats();
        if free < STORE_HEADROOM || clients.try_reserve(1).is_err() {
            if !tally.refused.contains(&domid) {
                println!("serve: dom{domid}: not connected to the store: dom0's heap has {} KiB free", free / 1024);
                tally.refused.push(domid);
            }
            continue;
        }
        let link = match BackLink::connect(domid, info.store_evtchn) {
            Ok(l) => l,
            Err(e) => {
                println!("serve: dom{domid}: store connection refused: {e:?}");
                continue;
            }
        };
        let _ = event::set_handler(link.port(), on_event);
        let _ = event::unmask(link.port());
        store.introduce(domid);
        let name: String = info.name().into();
        println!("serve: dom{domid} ({name}) connected to the store");
        tally.served += 1;
        if let Some(spec) = specs.iter().find(|s| s.domain == name && s.owner.is_none_or(|o| o == domid)) {
            match offer_disk(store, domid, spec, disk) {
                Ok(v) => vbds.push(v),
                Err(e) => println!("serve: dom{domid}: disk not offered: {e}"),
            }
        }
        vifs.connected(store, domid, &name);
        clients.push(Client { domid, name, link });
    }
    live.iter().filter(|i| i.domid != 0 && i.flags & dominf::DYING == 0).count()
}

/// Makes directory `path` with permissions `perms` (a device's front or
/// back directory, made by the toolstack before its nodes).
pub(crate) fn dir(store: &mut Store, path: &str, perms: &[String]) -> Result<(), String> {
    store.mkdir(0, path).map_err(|e| format!("{path}: {e}"))?;
    store.set_perms(0, path, perms).map_err(|e| format!("{path}: perms: {e}"))
}

fn front_dir(domid: u16) -> String {
    format!("/local/domain/{domid}/device/vbd/{VDEV}")
}

fn back_dir(domid: u16) -> String {
    format!("/local/domain/0/backend/vbd/{domid}/{VDEV}")
}

/// Opens the disk's image and writes both directories (Xen's toolstack
/// part), the backend's details, and its first state.
fn offer_disk(store: &mut Store, domid: u16, spec: &VbdSpec, disk: &mut Disk) -> Result<Vbd, String> {
    let vdisk = if spec.image {
        let img = disk_images::open(&mut Dev(disk), spec.region).map_err(|e| format!("image: {e:?}"))?;
        VirtualDisk::Image(alloc::boxed::Box::new(img))
    } else {
        VirtualDisk::Raw(disk_images::RawSlice::new(disk.capacity(), spec.region).map_err(|e| format!("slice: {e:?}"))?)
    };
    let (fd, bd) = (front_dir(domid), back_dir(domid));
    let w =
        |store: &mut Store, path: &str, v: &str| store.write(0, path, v.as_bytes()).map_err(|e| format!("{path}: {e}"));
    // Each directory gets its permissions before its nodes, which inherit
    // them: the front's is its domain's, readable by its backend; the
    // back's is the backend's, readable by the front.
    dir(store, &fd, &[format!("n{domid}"), String::from("r0")])?;
    w(store, &format!("{fd}/backend"), &bd)?;
    w(store, &format!("{fd}/backend-id"), "0")?;
    w(store, &format!("{fd}/state"), State::Initialising.as_str())?;
    dir(store, &bd, &[String::from("n0"), format!("r{domid}")])?;
    w(store, &format!("{bd}/frontend"), &fd)?;
    w(store, &format!("{bd}/frontend-id"), &format!("{domid}"))?;
    w(store, &format!("{bd}/sectors"), &format!("{}", vdisk.virtual_sectors()))?;
    w(store, &format!("{bd}/sector-size"), "512")?;
    w(store, &format!("{bd}/info"), "0")?;
    w(store, &format!("{bd}/feature-flush-cache"), "1")?;
    w(store, &format!("{bd}/feature-fua"), "1")?;
    w(store, &format!("{bd}/feature-discard"), "1")?;
    w(store, &format!("{bd}/feature-persistent"), "1")?;
    w(
        store,
        &format!("{bd}/feature-max-indirect-segments"),
        &format!("{}", split_drivers::blkif::MAX_INDIRECT_SEGMENTS),
    )?;
    let mut v = Vbd {
        spec: spec.clone(),
        domid,
        hs: Handshake::new(domid, front_dir(domid), back_dir(domid)),
        back: None,
        draining: None,
        dead: false,
        vdisk: Some(vdisk),
    };
    // The device is open and the details are written.
    served::offer(store, &mut v);
    println!(
        "serve: dom{domid} ({}) offered vdev {VDEV}: {} sectors, {}",
        spec.domain,
        v.vdisk.as_ref().map_or(0, |d| d.virtual_sectors()),
        if spec.image { "image" } else { "raw slice" }
    );
    Ok(v)
}

/// Moves one connection's bytes between its ring and the store; whether
/// anything moved.
fn pump(store: &mut Store, c: &mut Client) -> bool {
    let mut buf = [0u8; CHUNK];
    let mut moved = false;
    // A client that does not read its replies gets no more of its bytes
    // read (the store's backpressure); its ring fills, it waits.
    let n = if store.accepting(c.domid) { c.link.recv(&mut buf) } else { Ok(0) };
    match n {
        Ok(n) if n > 0 => {
            moved = true;
            if let Err(e) = store.feed(c.domid, &buf[..n]) {
                println!("serve: dom{}: store connection broken: {e}", c.domid);
            }
        }
        Ok(_) => {}
        Err(e) => {
            println!("serve: dom{}: store ring broken: {e:?}", c.domid);
        }
    }
    while store.has_output(c.domid) {
        let n = store.peek_output(c.domid, &mut buf);
        if n == 0 {
            break;
        }
        match c.link.send(&buf[..n]) {
            Ok(sent) if sent > 0 => {
                store.consume_output(c.domid, sent);
                moved = true;
                if sent < n {
                    break;
                }
            }
            _ => break,
        }
    }
    moved
}

/// Drops the disks of dead domains once nothing of theirs is at the device,
/// flushing each (the writes it acknowledged are then on the disk).
fn forget_dead(vbds: &mut Vec<Vbd>, disk: &mut Disk) {
    vbds.retain_mut(|v| {
        if !v.dead || v.draining.is_some() {
            return true;
        }
        if let Some(mut vd) = v.vdisk.take() {
            let _ = vd.flush(&mut Dev(disk));
        }
        false
    });
}

/// Acknowledges the disk, and hands each finished device request to its
/// backend, which answers it (a closed backend's pages are unmapped).
/// Whether anything finished. A disk that broke its queue ends the
/// service.
fn complete(store: &mut Store, vbds: &mut Vec<Vbd>, disk: &mut Disk) -> Result<bool, String> {
    // Completions may also have been collected by a blocking call of the
    // synchronous path meanwhile: the queue is drained either way.
    if disk.ready() {
        disk.service().map_err(|e| format!("the disk: {e}"))?;
    }
    let mut any = false;
    while let Some(c) = disk.next_completion() {
        any = true;
        let serial = blkback::serial_of(c.cookie);
        let of = |b: &Option<BlkBack>| b.as_ref().is_some_and(|b| b.serial() == serial);
        let Some(v) = vbds.iter_mut().find(|v| of(&v.back) || of(&v.draining)) else {
            blkback::orphan(c);
            continue;
        };
        if let Some(b) = v.draining.as_mut().filter(|b| b.serial() == serial) {
            // Its answer may not reach a broken ring: that is fine.
            let _ = b.complete(c, disk);
            v.drained();
            continue;
        }
        let r = v.back.as_mut().map(|b| b.complete(c, disk));
        if let Some(Err(e)) = r {
            disconnect(store, v, e);
        }
    }
    for v in vbds.iter_mut() {
        if let Some(Err(e)) = v.back.as_mut().map(|b| b.publish()) {
            disconnect(store, v, e);
        }
        if let Some(b) = v.draining.as_mut() {
            let _ = b.publish();
        }
    }
    forget_dead(vbds, disk);
    Ok(any)
}

/// Ends a disk connection whose front broke the ring protocol.
fn disconnect(store: &mut Store, v: &mut Vbd, e: blkback::BackError) {
    println!("serve: dom{}: ring broken: {e}; disconnecting", v.domid);
    v.retire();
    served::write_closed(store, v);
}

/// Drives one disk: its handshake from the frontend's state node (read
/// again only when another domain's requests have reached the store),
/// then a batch of its ring.
fn drive(store: &mut Store, v: &mut Vbd, disk: &mut Disk, share: blkback::Share) -> bool {
    let mut work = served::follow_front(store, v);
    if let Some(b) = v.back.as_mut() {
        match b.serve(disk, share) {
            Ok(n) => work |= n > 0,
            Err(e) => disconnect(store, v, e),
        }
    }
    work
}

/// Reads the front's ring details (allegations) and maps its ring.
fn connect_ring(store: &mut Store, v: &mut Vbd) -> Event {
    let fd = front_dir(v.domid);
    let num = |store: &mut Store, k: &str| -> Option<u32> {
        let b = store.read(0, &format!("{fd}/{k}")).ok()?;
        core::str::from_utf8(&b).ok()?.parse().ok()
    };
    let (Some(gref), Some(port)) = (num(store, "ring-ref"), num(store, "event-channel")) else {
        println!("serve: dom{}: ring details missing or malformed", v.domid);
        return Event::LocalFailed;
    };
    let Some(vdisk) = v.vdisk.take() else { return Event::LocalFailed };
    // Persistent grants only if the front offered them (its pool pages
    // are granted once and never reused for other data).
    let persistent = num(store, "feature-persistent") == Some(1);
    match BlkBack::connect(v.domid, gref, port, vdisk, persistent) {
        Ok(b) => {
            let _ = event::set_handler(b.port(), on_event);
            let _ = event::unmask(b.port());
            println!(
                "serve: dom{} ({}): disk connected (ring-ref {gref}, port {port}{})",
                v.domid,
                v.spec.domain,
                if persistent { ", persistent grants" } else { "" }
            );
            v.back = Some(b);
            Event::LocalReady
        }
        Err((e, vdisk)) => {
            println!("serve: dom{}: ring not connected: {e}", v.domid);
            v.vdisk = Some(vdisk);
            Event::LocalFailed
        }
    }
}
