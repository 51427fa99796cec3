//! The network half of `serve` mode: each domU's virtual NICs, joined by
//! the software switch ([`net_bridge`]).
//!
//! # Command line
//! - `vif=NAME:VLANS:MAC` (MAC as six hex pairs joined by `-`): domain
//!   `NAME` gets a virtual NIC (vif 0) with that MAC on a bridge port of
//!   membership `VLANS` ([`PortKind::parse`]): a VLAN number (1 to 4094)
//!   for an access port, whose frames are untagged, or `trunk=LIST` for a
//!   trunk (a domU that tags its own frames, a router between VLANs, say):
//!   `LIST` is comma-separated VLANs and ranges `A-B`, carried tagged, and
//!   at most one VLAN marked `u`, carried untagged. The MAC is pinned to
//!   the port: the bridge drops the domU's frames from any other source
//!   address, and nobody else may send from it.
//! - `uplink=VLANS`: the real NIC joins the bridge on a port of that
//!   membership (`uplink=10`: its frames untagged on the wire, in VLAN 10;
//!   `uplink=trunk=10,20`: tagged, for a wire that carries 802.1Q, like a
//!   QEMU socket link to another machine's bridge).
//!
//! Bad words are reported, saying why, and skipped.
//!
//! # The loop's part
//! - When a domain with a NIC connects to the store, dom0 writes the vif's
//!   two directories (front `device/vif/0`, back `backend/vif/<d>/0`) with
//!   their permissions, as for a disk, and starts the handshake
//!   ([`split_drivers::state::Backend`]).
//! - Each pass takes the frames every connected front sent
//!   ([`NetBack::poll_tx`]), gives each to [`Bridge::ingress`] with its
//!   port, and delivers it (tag rewritten as the egress says) to every
//!   port of the decision. A frame is copied out of its sender's pages
//!   before the bridge sees it, so the sender cannot change it meanwhile.
//! - A dead domain's NIC is closed and its port removed (the bridge
//!   forgets what it learned there).

use crate::netback::NetBack;
use crate::served::{self, Handshake, Served};
use crate::uplink::Uplink;
use crate::xs::Xs as Store;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use net_bridge::{Bridge, Config, Decision, DropReason, Mac, PortConfig, PortId, PortKind};
use pvguest_sdk::event;
use pvguest_sdk::{println, time};
use split_drivers::netif::MAX_FRAME_LEN;
use split_drivers::state::{Event, State};

/// The uplink's bridge port (the last).
const UPLINK_PORT: u8 = (net_bridge::MAX_PORTS - 1) as u8;
/// dom0's own port (its management API's network stack), before it.
const LOCAL_PORT: u8 = (net_bridge::MAX_PORTS - 2) as u8;
/// Frames queued each way between the bridge and dom0's own stack.
pub const LOCAL_QUEUE: usize = 64;

/// Learning-table entries of dom0's bridge.
const FDB: usize = 128;

/// A virtual NIC from the command line.
#[derive(Clone, Debug)]
pub struct VifSpec {
    pub domain: String,
    pub kind: PortKind,
    pub mac: Mac,
}

/// Parses `aa-bb-cc-dd-ee-ff`.
pub(crate) fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split('-');
    for b in mac.iter_mut() {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(Mac(mac))
}

fn mac_string(m: Mac) -> String {
    let b = m.0;
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
}

/// What a port's membership reads as in dom0's lines: `VLAN 10`, or the
/// trunk's list.
pub fn describe(kind: &PortKind) -> String {
    match kind {
        PortKind::Access { vlan } => format!("VLAN {vlan}"),
        trunk => format!("{trunk}"),
    }
}

/// One `vif=` word's value: the spec, or why not.
fn parse_vif(w: &str) -> Result<VifSpec, String> {
    let f: Vec<&str> = w.split(':').collect();
    let [name, vlans, mac] = f.as_slice() else {
        return Err(String::from("not NAME:VLANS:MAC"));
    };
    if name.is_empty() {
        return Err(String::from("no domain name"));
    }
    let kind = PortKind::parse(vlans).map_err(|e| format!("VLANS `{vlans}`: {e}"))?;
    let mac = parse_mac(mac).filter(|m| m.is_valid_source()).ok_or_else(|| format!("`{mac}` is not a unicast MAC"))?;
    Ok(VifSpec { domain: (*name).into(), kind, mac })
}

/// The `vif=` words of `cmdline`; bad ones are reported and skipped.
pub fn parse_vifs(cmdline: &str) -> Vec<VifSpec> {
    let mut out: Vec<VifSpec> = Vec::new();
    for w in cmdline.split(' ').filter_map(|w| w.strip_prefix("vif=")) {
        let parsed = parse_vif(w).and_then(|v| {
            if out.iter().any(|o| o.domain == v.domain || o.mac == v.mac) {
                Err(String::from("a second NIC for its domain, or a MAC already taken"))
            } else {
                Ok(v)
            }
        });
        match parsed {
            Ok(v) => out.push(v),
            Err(e) => println!("serve: vif spec `{w}` skipped: {e}"),
        }
    }
    out
}

/// One domain's NIC: the handshake and, once connected, the backend.
struct Vif {
    spec: VifSpec,
    domid: u16,
    port: PortId,
    hs: Handshake,
    back: Option<NetBack>,
    /// The loop's handler, for the rings' ports.
    on_event: event::Handler,
}

impl Served for Vif {
    const WHAT: &'static str = "NIC";
    fn handshake(&mut self) -> &mut Handshake {
        &mut self.hs
    }
    fn connect(&mut self, store: &mut Store) -> Event {
        connect_rings(store, self)
    }
    fn disconnect(&mut self) {
        if let Some(b) = self.back.take() {
            b.close();
        }
    }
}

/// dom0's own port on the bridge: frames between the switch and dom0's
/// network stack (the management API, [`crate::api`]). The bridge loop
/// fills `to_stack` and drains `from_stack`; the stack does the opposite.
/// Each queue holds at most [`LOCAL_QUEUE`] frames; past that, frames are
/// dropped (the bridge counts a failed delivery; TCP retransmits).
#[derive(Default)]
pub struct LocalPort {
    pub to_stack: alloc::collections::VecDeque<Vec<u8>>,
    pub from_stack: alloc::collections::VecDeque<Vec<u8>>,
}

/// Every NIC and the switch between them.
pub struct Vifs {
    specs: Vec<VifSpec>,
    vifs: Vec<Vif>,
    /// The real NIC, on its port (`uplink=VLAN`: an access port of that
    /// VLAN, its frames untagged on the wire).
    uplink: Option<(Uplink, PortId)>,
    bridge: &'static mut Bridge<FDB>,
    on_event: event::Handler,
    /// dom0's own port, once [`Vifs::attach_local`] made it.
    local: Option<(PortId, LocalPort)>,
}

fn front_dir(domid: u16) -> String {
    format!("/local/domain/{domid}/device/vif/0")
}

fn back_dir(domid: u16) -> String {
    format!("/local/domain/0/backend/vif/{domid}/0")
}

impl Vifs {
    /// The NICs `cmdline` configures; `on_event` is the loop's handler for
    /// their ports.
    pub fn new(cmdline: &str, on_event: event::Handler) -> Vifs {
        let specs = parse_vifs(cmdline);
        if !specs.is_empty() {
            println!("serve: {} virtual NIC(s) configured", specs.len());
        }
        // `serve` makes its switch once, at its start.
        let bridge = BRIDGE.try_lock().map(spin::MutexGuard::leak).expect("one Vifs per dom0");
        let kind = cmdline
            .split(' ')
            .find_map(|w| w.strip_prefix("uplink="))
            .and_then(|v| PortKind::parse(v).map_err(|e| println!("serve: `uplink={v}` ignored: {e}")).ok());
        let uplink = kind.and_then(|kind| {
            let port = PortId::new(UPLINK_PORT).expect("a valid port");
            let what = describe(&kind);
            match Uplink::open() {
                Ok(u) => match bridge.set_port(port, PortConfig::new(kind)) {
                    Ok(()) => {
                        println!("serve: uplink on bridge port {UPLINK_PORT}, {what}");
                        Some((u, port))
                    }
                    Err(e) => {
                        println!("serve: uplink port refused: {e:?}");
                        None
                    }
                },
                Err(e) => {
                    println!("serve: no uplink: {e}");
                    None
                }
            }
        });
        Vifs { specs, vifs: Vec::new(), uplink, bridge, on_event, local: None }
    }

    /// Gives dom0's own stack a port of membership `kind` with `mac`
    /// pinned to it, as a domU's NIC has.
    pub fn attach_local(&mut self, kind: PortKind, mac: Mac) -> Result<(), String> {
        let port = PortId::new(LOCAL_PORT).expect("a valid port");
        let what = describe(&kind);
        self.bridge.set_port(port, PortConfig::new(kind).with_mac(mac)).map_err(|e| format!("{e:?}"))?;
        println!("serve: dom0's own port on bridge port {LOCAL_PORT}: MAC {}, {what}", mac_string(mac));
        self.local = Some((port, LocalPort::default()));
        Ok(())
    }

    /// dom0's own port's queues.
    pub fn local(&mut self) -> Option<&mut LocalPort> {
        self.local.as_mut().map(|(_, q)| q)
    }

    /// Offers a NIC to a domain that just connected, if it has one.
    pub fn connected(&mut self, store: &mut Store, domid: u16, name: &str) {
        let Some(spec) = self.specs.iter().find(|s| s.domain == name).cloned() else { return };
        let Some(port) = PortId::all()
            .find(|p| p.get() != UPLINK_PORT && p.get() != LOCAL_PORT && self.vifs.iter().all(|v| v.port != *p))
        else {
            println!("serve: dom{domid}: no bridge port left for its NIC");
            return;
        };
        if let Err(e) = self.bridge.set_port(port, PortConfig::new(spec.kind.clone()).with_mac(spec.mac)) {
            println!("serve: dom{domid}: bridge port refused: {e:?}");
            return;
        }
        match offer(store, domid, &spec) {
            Ok(()) => {
                let mut v = Vif {
                    spec,
                    domid,
                    port,
                    hs: Handshake::new(domid, front_dir(domid), back_dir(domid)),
                    back: None,
                    on_event: self.on_event,
                };
                served::offer(store, &mut v);
                println!(
                    "serve: dom{domid} ({}) offered vif 0: MAC {}, {}, bridge port {}",
                    v.spec.domain,
                    mac_string(v.spec.mac),
                    describe(&v.spec.kind),
                    port.get()
                );
                self.vifs.push(v);
            }
            Err(e) => {
                let _ = self.bridge.remove_port(port);
                println!("serve: dom{domid}: NIC not offered: {e}");
            }
        }
    }

    /// Closes the NICs of domains no longer alive.
    pub fn release(&mut self, alive: impl Fn(u16) -> bool) {
        let bridge = &mut self.bridge;
        self.vifs.retain_mut(|v| {
            if alive(v.domid) {
                return true;
            }
            if let Some(b) = v.back.take() {
                println!("serve: dom{}'s NIC closed: {:?}", v.domid, b.stats);
                b.close();
            }
            report(bridge, v);
            let _ = bridge.remove_port(v.port);
            false
        });
    }

    /// Whether a front sent frames (arming the notifications when not).
    pub fn pending(&mut self) -> bool {
        let mut any = self.uplink.as_ref().is_some_and(|(u, _)| u.ready());
        // dom0's own port: frames either way wait.
        any |= self.local.as_ref().is_some_and(|(_, q)| !q.from_stack.is_empty() || !q.to_stack.is_empty());
        for v in self.vifs.iter_mut() {
            if let Some(b) = v.back.as_mut() {
                any |= !matches!(b.pending(), Ok(false));
            }
        }
        any
    }

    /// One pass: the handshakes, then every front's frames through the
    /// bridge. Whether anything happened.
    pub fn drive(&mut self, store: &mut Store) -> bool {
        if self.vifs.is_empty() && self.uplink.is_none() {
            // No NIC served (a disk-only dom0): nothing to move.
            return false;
        }
        let mut work = false;
        for v in self.vifs.iter_mut() {
            work |= served::follow_front(store, v);
        }
        // Frames in, through the bridge, out.
        let now = time::now_ns();
        let mut frames: Vec<(PortId, Vec<u8>)> = Vec::new();
        for k in 0..self.vifs.len() {
            let port = self.vifs[k].port;
            let Some(b) = self.vifs[k].back.as_mut() else { continue };
            let r = b.poll_tx(|f| frames.push((port, f.to_vec())));
            match r {
                Ok(n) => work |= n > 0,
                Err(e) => self.disconnect(store, k, e),
            }
        }
        if let Some((u, port)) = self.uplink.as_mut() {
            let port = *port;
            work |= u.poll_rx(|f| frames.push((port, f.to_vec()))) > 0;
        }
        if let Some((port, q)) = self.local.as_mut() {
            work |= !q.from_stack.is_empty();
            frames.extend(q.from_stack.drain(..).map(|f| (*port, f)));
        }
        let mut out = [0u8; MAX_FRAME_LEN];
        for (from, bytes) in &frames {
            let Decision::Forward(f) = self.bridge.ingress(*from, bytes, now) else { continue };
            for &(to, egress) in f.egress.as_slice() {
                let Ok(n) = f.emit(egress, &mut out) else {
                    self.bridge.tx_failed(to);
                    continue;
                };
                if let Some((u, port)) = self.uplink.as_mut().filter(|(_, p)| *p == to) {
                    if !u.send(&out[..n]) {
                        self.bridge.tx_failed(*port);
                    }
                    continue;
                }
                if let Some((port, q)) = self.local.as_mut().filter(|(p, _)| *p == to) {
                    if q.to_stack.len() < LOCAL_QUEUE {
                        q.to_stack.push_back(out[..n].to_vec());
                    } else {
                        self.bridge.tx_failed(*port);
                    }
                    continue;
                }
                let Some(k) = self.vifs.iter().position(|v| v.port == to) else { continue };
                let Some(b) = self.vifs[k].back.as_mut() else {
                    self.bridge.tx_failed(to);
                    continue;
                };
                match b.deliver(&out[..n]) {
                    Ok(true) => {}
                    Ok(false) => self.bridge.tx_failed(to),
                    Err(e) => self.disconnect(store, k, e),
                }
            }
        }
        for k in 0..self.vifs.len() {
            if let Some(Err(e)) = self.vifs[k].back.as_mut().map(NetBack::publish) {
                self.disconnect(store, k, e);
            }
        }
        work
    }

    /// The bridge's counters of every NIC still here, printed (at the end
    /// of the service).
    pub fn report(&self) {
        for v in &self.vifs {
            report(self.bridge, v);
        }
    }

    fn disconnect(&mut self, store: &mut Store, k: usize, e: crate::netback::BackError) {
        let v = &mut self.vifs[k];
        println!("serve: dom{}: NIC ring broken: {e}; disconnecting", v.domid);
        v.disconnect();
        served::write_closed(store, v);
    }
}

/// Reads the front's ring details (allegations) and maps its rings.
fn connect_rings(store: &mut Store, v: &mut Vif) -> Event {
    let fd = front_dir(v.domid);
    let num = |store: &mut Store, k: &str| -> Option<u32> {
        let b = store.read(0, &format!("{fd}/{k}")).ok()?;
        core::str::from_utf8(&b).ok()?.parse().ok()
    };
    let details = (
        num(store, "tx-ring-ref"),
        num(store, "rx-ring-ref"),
        num(store, "event-channel-tx"),
        num(store, "event-channel-rx"),
    );
    let (Some(txg), Some(rxg), Some(txp), Some(rxp)) = details else {
        println!("serve: dom{}: NIC ring details missing or malformed", v.domid);
        return Event::LocalFailed;
    };
    match NetBack::connect(v.domid, txg, rxg, txp, rxp) {
        Ok(b) => {
            for p in b.ports() {
                let _ = event::set_handler(p, v.on_event);
                let _ = event::unmask(p);
            }
            println!("serve: dom{} ({}): NIC connected", v.domid, v.spec.domain);
            v.back = Some(b);
            Event::LocalReady
        }
        Err(e) => {
            println!("serve: dom{}: NIC not connected: {e}", v.domid);
            Event::LocalFailed
        }
    }
}

/// The bridge: built at compile time ([`Bridge::new`] is a `const fn`) in
/// dom0's data, never on its stack, and taken once by [`Vifs::new`].
static BRIDGE: spin::Mutex<Bridge<FDB>> = spin::Mutex::new(Bridge::new(Config::DEFAULT));

/// Prints the bridge's counters of `v`'s port.
fn report(bridge: &Bridge<FDB>, v: &Vif) {
    let p = bridge.stats().port(v.port);
    println!(
        "serve: bridge port {} (dom{} {}): rx {} tx {} dropped {} (spoofed {}, VLAN not a member {}, untagged without a native VLAN {}, tagged on an access port {})",
        v.port.get(),
        v.domid,
        v.spec.domain,
        p.rx_frames,
        p.tx_frames,
        p.dropped_total(),
        p.dropped(DropReason::Spoofed),
        p.dropped(DropReason::VlanNotMember),
        p.dropped(DropReason::NoNativeVlan),
        p.dropped(DropReason::TaggedOnAccess),
    );
}

/// Writes both directories of `domid`'s NIC and the backend's details.
fn offer(store: &mut Store, domid: u16, spec: &VifSpec) -> Result<(), String> {
    let (fd, bd) = (front_dir(domid), back_dir(domid));
    let w =
        |store: &mut Store, path: &str, v: &str| store.write(0, path, v.as_bytes()).map_err(|e| format!("{path}: {e}"));
    let dir = crate::serve::dir;
    let mac = mac_string(spec.mac);
    dir(store, &fd, &[format!("n{domid}"), String::from("r0")])?;
    w(store, &format!("{fd}/backend"), &bd)?;
    w(store, &format!("{fd}/backend-id"), "0")?;
    w(store, &format!("{fd}/mac"), &mac)?;
    w(store, &format!("{fd}/state"), State::Initialising.as_str())?;
    dir(store, &bd, &[String::from("n0"), format!("r{domid}")])?;
    w(store, &format!("{bd}/frontend"), &fd)?;
    w(store, &format!("{bd}/frontend-id"), &format!("{domid}"))?;
    w(store, &format!("{bd}/mac"), &mac)?;
    w(store, &format!("{bd}/handle"), "0")?;
    w(store, &format!("{bd}/feature-rx-copy"), "1")?;
    w(store, &format!("{bd}/feature-split-event-channels"), "1")?;
    Ok(())
}
