//! `netpeer`: a domU on its virtual NIC (`pvguest_sdk::netfront`), moving
//! raw Ethernet frames (EtherType 0x88b5, the IEEE's local experimental
//! one) through dom0's netback and bridge.
//!
//! - `role=ping count=N`: broadcasts `ping <seq>` frames, each until a
//!   `pong <seq>` addressed to it comes back (resent every 100 ms, 50
//!   tries), and checks every pong's bytes; any `spof` frame it sees is
//!   wrong (the bridge must drop a domU's frames from a MAC not its own).
//! - `role=echo count=N`: answers every ping with a pong to the sender's
//!   MAC, unicast, until it has answered `N` distinct ones (and half a
//!   second more, for a ping resent because its pong was lost).
//! - `role=listen ms=T`: counts what reaches it for `T` ms after it is
//!   connected: nothing must (it sits on another VLAN).
//! - `role=spoof count=N as=MAC`: broadcasts `N` `spof` frames whose
//!   source is `MAC` (another domain's, given as `aa-bb-cc-dd-ee-ff`).
//! - `role=trunk vlan=V carry=A,B,.. deny=D count=N`, on a trunk port of
//!   VLANs `A,B,..`: pings as `ping` does, with 802.1Q-tagged frames of
//!   VLAN `V`, and checks that every frame reaching it is tagged (the trunk
//!   has no native VLAN) with a VLAN it carries, and every pong is tagged
//!   `V`; then sends `N` frames tagged `D` (a VLAN its trunk does not
//!   carry) and `N` untagged ones, all of which the bridge must drop.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use pvguest_sdk::check::Checks;
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::netfront::NetDevice;
use pvguest_sdk::netif::MAX_FRAME_LEN;
use pvguest_sdk::store::Store;
use pvguest_sdk::{heap, println, sched, time, StartInfo};

pvguest_sdk::entry!(main);

const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const BROADCAST: [u8; 6] = [0xff; 6];
/// Bytes of every test frame (header and payload; under the 60-byte
/// minimum a real NIC pads to, which a virtual one need not).
const LEN: usize = 64;

fn frame(dst: [u8; 6], src: [u8; 6], kind: &[u8; 4], seq: u32) -> [u8; LEN] {
    let mut f = [0u8; LEN];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE);
    f[14..18].copy_from_slice(kind);
    f[18..22].copy_from_slice(&seq.to_le_bytes());
    // The rest a pattern of the sequence number, checked on arrival.
    for (i, b) in f[22..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    f
}

/// The kind and sequence number of one of our frames, if it is one and
/// its pattern is intact.
fn parse(f: &[u8]) -> Option<([u8; 4], u32, [u8; 6])> {
    if f.len() != LEN || f[12..14] != ETHERTYPE {
        return None;
    }
    let kind: [u8; 4] = f[14..18].try_into().ok()?;
    let seq = u32::from_le_bytes(f[18..22].try_into().ok()?);
    let intact = f[22..].iter().enumerate().all(|(i, &b)| b == (seq as u8).wrapping_mul(31).wrapping_add(i as u8));
    let src: [u8; 6] = f[6..12].try_into().ok()?;
    intact.then_some((kind, seq, src))
}

/// The 802.1Q tag protocol identifier.
const TPID: [u8; 2] = [0x81, 0x00];

/// `f` with an 802.1Q tag of VLAN `vid` (priority 0) after its addresses.
fn tagged(f: &[u8; LEN], vid: u16) -> [u8; LEN + 4] {
    let mut t = [0u8; LEN + 4];
    t[..12].copy_from_slice(&f[..12]);
    t[12..14].copy_from_slice(&TPID);
    t[14..16].copy_from_slice(&(vid & 0xfff).to_be_bytes());
    t[16..].copy_from_slice(&f[12..]);
    t
}

/// Removes the 802.1Q tag of the frame in `buf[..n]`, if it has one;
/// returns the untagged length and the tag's VLAN.
fn untag(buf: &mut [u8], n: usize) -> (usize, Option<u16>) {
    if n < 18 || buf[12..14] != TPID {
        return (n, None);
    }
    let vid = u16::from_be_bytes([buf[14], buf[15]]) & 0xfff;
    buf.copy_within(16..n, 12);
    (n - 4, Some(vid))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split('-');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

/// What a run of pings saw.
struct Pinged {
    pongs: u32,
    peer: Option<[u8; 6]>,
    spoofs: u32,
    /// Frames that arrived untagged, when pinging tagged.
    untagged: u32,
    /// Frames that arrived tagged with a VLAN not in `carry`.
    foreign: u32,
    /// Pongs tagged with another VLAN, or tagged when pinging untagged.
    wrong_tag: u32,
}

/// Broadcasts `count` pings (tagged `tag`, if given), each until its pong
/// comes back (resent every 100 ms, 50 tries).
/// (`carry`: the VLANs a tagged frame may arrive with.)
fn ping(nic: &mut NetDevice, mac: [u8; 6], count: u32, tag: Option<u16>, carry: &[u16], buf: &mut [u8]) -> Pinged {
    let mut p = Pinged { pongs: 0, peer: None, spoofs: 0, untagged: 0, foreign: 0, wrong_tag: 0 };
    for seq in 0..count {
        let mut answered = false;
        for _try in 0..50 {
            let f = frame(BROADCAST, mac, b"ping", seq);
            let _ = match tag {
                Some(vid) => nic.send(&tagged(&f, vid)),
                None => nic.send(&f),
            };
            let until = time::now_ns() + 100_000_000;
            while !answered && time::now_ns() < until {
                match nic.recv(buf) {
                    Ok(Some(n)) => {
                        let (n, got) = untag(buf, n);
                        if tag.is_some() && got.is_none() {
                            p.untagged += 1;
                        }
                        if got.is_some_and(|v| !carry.contains(&v)) {
                            p.foreign += 1;
                        }
                        match parse(&buf[..n]) {
                            Some((k, s, src)) if &k == b"pong" && s == seq && buf[..6] == mac => {
                                answered = true;
                                p.peer = Some(src);
                                p.wrong_tag += u32::from(got != tag);
                            }
                            Some((k, _, _)) if &k == b"spof" => p.spoofs += 1,
                            _ => {}
                        }
                    }
                    Ok(None) => {
                        let _ = nic.wait(until);
                    }
                    Err(e) => {
                        println!("netpeer: recv: {e:?}");
                        break;
                    }
                }
            }
            if answered {
                break;
            }
        }
        p.pongs += u32::from(answered);
    }
    p
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    heap::init(arg(cmd, "heap").unwrap_or(64)).expect("heap");
    let who = si.name();
    let mut c = Checks::new();
    let mut store = Store::open().unwrap_or_else(|e| {
        println!("netpeer: no store: {e:?}");
        sched::crash()
    });
    let mut nic = match NetDevice::open(&mut store, 0) {
        Ok(n) => n,
        Err(e) => {
            println!("netpeer: no NIC: {e:?}");
            sched::crash()
        }
    };
    let mac = nic.mac();
    println!("netpeer: NIC up, MAC {:02x?}", mac);
    let count = arg(cmd, "count").unwrap_or(8) as u32;
    let role = cmd.split(' ').find_map(|w| w.strip_prefix("role=")).unwrap_or("ping");
    let mut buf = [0u8; MAX_FRAME_LEN];
    match role {
        "ping" => {
            let p = ping(&mut nic, mac, count, None, &[], &mut buf);
            c.holds(
                who,
                format_args!("{}/{count} pings answered, intact, by {:02x?}", p.pongs, p.peer),
                p.pongs == count,
            );
            c.holds(who, format_args!("no frame from a spoofed source reached it ({})", p.spoofs), p.spoofs == 0);
        }
        "trunk" => {
            let vid = |k: &str| arg(cmd, k).and_then(|v| u16::try_from(v).ok()).filter(|v| (1..4095).contains(v));
            let (Some(vlan), Some(deny)) = (vid("vlan"), vid("deny")) else {
                c.holds(who, format_args!("vlan= and deny= VLANs"), false);
                c.verdict(who);
                return;
            };
            let carry: alloc::vec::Vec<u16> = cmd
                .split(' ')
                .find_map(|w| w.strip_prefix("carry="))
                .map(|l| l.split(',').filter_map(|v| v.parse().ok()).collect())
                .unwrap_or_default();
            let p = ping(&mut nic, mac, count, Some(vlan), &carry, &mut buf);
            c.holds(
                who,
                format_args!("{}/{count} pings tagged {vlan} answered, intact, by {:02x?}", p.pongs, p.peer),
                p.pongs == count,
            );
            c.holds(
                who,
                format_args!(
                    "every frame reaching its trunk was tagged with a VLAN it carries ({} untagged, {} of other VLANs), every pong tagged {vlan}",
                    p.untagged, p.foreign
                ),
                p.untagged == 0 && p.foreign == 0 && p.wrong_tag == 0,
            );
            let mut sent = 0;
            for seq in 0..count {
                let f = frame(BROADCAST, mac, b"deny", seq);
                sent += u32::from(nic.send(&tagged(&f, deny)).is_ok());
                sent += u32::from(nic.send(&f).is_ok());
                let _ = nic.wait(time::now_ns() + 10_000_000);
            }
            c.holds(
                who,
                format_args!("sent {count} frames tagged {deny} and {count} untagged, for the bridge to drop"),
                sent == 2 * count,
            );
        }
        "echo" => {
            // Pings are resent until answered, so duplicates come: answer
            // every one, count the distinct ones, and stay a little after
            // the last (its pong may have been lost and the ping resent).
            let mut seen = alloc::vec![false; count as usize];
            let mut answered = 0;
            let mut linger_until = None;
            loop {
                if linger_until.is_some_and(|t| time::now_ns() >= t) {
                    break;
                }
                match nic.recv(&mut buf) {
                    Ok(Some(n)) => {
                        if let Some((k, seq, src)) = parse(&buf[..n]) {
                            if &k == b"ping" {
                                let _ = nic.send(&frame(src, mac, b"pong", seq));
                                if let Some(s) = seen.get_mut(seq as usize).filter(|s| !**s) {
                                    *s = true;
                                    answered += 1;
                                }
                                if answered == count && linger_until.is_none() {
                                    linger_until = Some(time::now_ns() + 500_000_000);
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = nic.wait(linger_until.unwrap_or(time::now_ns() + 100_000_000));
                    }
                    Err(e) => {
                        println!("netpeer: recv: {e:?}");
                        break;
                    }
                }
            }
            c.holds(who, format_args!("answered {answered} pings"), answered == count);
        }
        "listen" => {
            let until = time::now_ns() + arg(cmd, "ms").unwrap_or(2000) * 1_000_000;
            let mut got = 0;
            while time::now_ns() < until {
                match nic.recv(&mut buf) {
                    Ok(Some(_)) => got += 1,
                    Ok(None) => {
                        let _ = nic.wait(until);
                    }
                    Err(_) => break,
                }
            }
            c.holds(who, format_args!("nothing from another VLAN reached it ({got} frames)"), got == 0);
        }
        "spoof" => {
            let Some(as_mac) = cmd.split(' ').find_map(|w| w.strip_prefix("as=")).and_then(parse_mac) else {
                c.holds(who, format_args!("an as=MAC to pose as"), false);
                c.verdict(who);
                return;
            };
            let mut sent = 0;
            for seq in 0..count {
                if nic.send(&frame(BROADCAST, as_mac, b"spof", seq)).is_ok() {
                    sent += 1;
                }
                let _ = nic.wait(time::now_ns() + 20_000_000);
            }
            c.holds(who, format_args!("sent {sent} frames posing as {as_mac:02x?}"), sent == count);
        }
        "arp" => {
            let ip = |k: &str| -> Option<[u8; 4]> {
                let v = cmd.split(' ').find_map(|w| w.strip_prefix(k))?;
                let mut a = [0u8; 4];
                let mut parts = v.split('.');
                for b in a.iter_mut() {
                    *b = parts.next()?.parse().ok()?;
                }
                Some(a)
            };
            let (Some(me), Some(target)) = (ip("ip="), ip("target=")) else {
                c.holds(who, format_args!("ip= and target= addresses"), false);
                c.verdict(who);
                return;
            };
            let mut req = [0u8; 42];
            req[..6].copy_from_slice(&BROADCAST);
            req[6..12].copy_from_slice(&mac);
            req[12..14].copy_from_slice(&[0x08, 0x06]);
            // Ethernet, IPv4, 6 and 4 bytes, request.
            req[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            req[22..28].copy_from_slice(&mac);
            req[28..32].copy_from_slice(&me);
            req[38..42].copy_from_slice(&target);
            let mut answer = None;
            for _try in 0..20 {
                let _ = nic.send(&req);
                let until = time::now_ns() + 100_000_000;
                while answer.is_none() && time::now_ns() < until {
                    match nic.recv(&mut buf) {
                        Ok(Some(n)) => {
                            let f = &buf[..n];
                            let reply = n >= 42
                                && f[12..14] == [0x08, 0x06]
                                && f[20..22] == [0, 2]
                                && f[28..32] == target
                                && f[32..38] == mac
                                && f[38..42] == me;
                            if reply {
                                answer = Some(<[u8; 6]>::try_from(&f[22..28]).unwrap_or_default());
                            }
                        }
                        Ok(None) => {
                            let _ = nic.wait(until);
                        }
                        Err(_) => break,
                    }
                }
                if answer.is_some() {
                    break;
                }
            }
            c.holds(
                who,
                format_args!(
                    "{}.{}.{}.{} is at {answer:02x?} (an ARP reply through the uplink)",
                    target[0], target[1], target[2], target[3]
                ),
                answer.is_some(),
            );
        }
        other => c.holds(who, format_args!("a known role (got `{other}`)"), false),
    }
    let flushed = nic.flush_tx(time::now_ns() + 2_000_000_000);
    c.holds(who, format_args!("every frame it sent was taken by the backend"), matches!(flushed, Ok(true)));
    println!("netpeer: {:?}", nic.stats());
    c.verdict(who);
}
