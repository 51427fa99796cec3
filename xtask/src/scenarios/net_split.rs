//! The split network scenarios: domUs' virtual NICs served by dom0's
//! netback (`serve` mode, `vif=` words) and switched by its bridge
//! (`net-bridge`).
//!
//! - `net-bridge`: `alice` pings `bob` with raw Ethernet frames across the
//!   bridge (both on VLAN 10) and every answer comes back intact, unicast;
//!   `mallory` on VLAN 10 broadcasts frames posing as bob, which the bridge
//!   drops and counts as spoofed (alice never sees one); `trudy`, on a
//!   trunk port of VLANs 10 and 20 (no native VLAN), pings `dave` (an
//!   access port of VLAN 20) with tagged frames and gets every pong back
//!   tagged 20, then sends frames tagged 30 and untagged ones, which the
//!   bridge drops and counts; `carol` on VLAN 30 hears none of it.
//! - `net-tcp`: TCP/IP between two domUs on the SDK's `tcpip` (smoltcp
//!   over `netfront`): `client` takes its address by DHCP from `server`
//!   (which has one to give), pings it (ICMP echo, answered by smoltcp's
//!   interface), has UDP datagrams echoed (three sizes, then a burst of
//!   64 queued at once: more than the NIC's tx pages), then sends
//!   [`ECHO_BYTES`] bytes of a known pattern over TCP and checks every
//!   echoed byte, and both sides close; then a second connection (the
//!   server listens again) does the same with a tenth of the bytes.

//! - `net-uplink`: dom0's real NIC is the bridge's uplink; a domU's ARP
//!   request for QEMU's gateway leaves through it and slirp answers.
use super::{entry, finish, need, Scenario};
use crate::images::Images;
use crate::qemu::Outcome;
use ringfence_bundle::Expect;
use ringfence_bundle_writer::{BundleWriter, DomainEntry};

const ALICE: &str = "02-00-00-00-00-0a";
const BOB: &str = "02-00-00-00-00-0b";
const CAROL: &str = "02-00-00-00-00-0c";
const MALLORY: &str = "02-00-00-00-00-0d";
const DAVE: &str = "02-00-00-00-00-0e";
const TRUDY: &str = "02-00-00-00-00-0f";
const PINGS: u32 = 16;

fn bridge_scenario() -> Scenario {
    Scenario {
        name: "net-bridge",
        what: "two domUs on VLAN 10 exchange raw Ethernet frames through dom0's netback and bridge (16 pings, each answered intact and unicast); a domU broadcasting frames posing as another's MAC has every one dropped by the bridge and counted as spoofed, and none reaches anyone; a domU on a trunk port of VLANs 10 and 20 (from dom0's command line) pings a VLAN-20 domU with 802.1Q-tagged frames and every pong comes back tagged 20, and its frames tagged with VLAN 30 or untagged are dropped and counted; a domU on VLAN 30 receives nothing",
        bundle: |imgs| {
            let mut w = BundleWriter::new();
            let cmdline = format!(
                "serve vif=alice:10:{ALICE} vif=bob:10:{BOB} vif=carol:30:{CAROL} vif=mallory:10:{MALLORY} vif=dave:20:{DAVE} vif=trudy:trunk=10,20:{TRUDY}"
            );
            w.domain(net_dom0(imgs, &cmdline)?);
            w.domain(entry(imgs, "alice", "netpeer", 1024, &format!("role=ping count={PINGS}"), Expect::Poweroff)?);
            w.domain(entry(imgs, "bob", "netpeer", 1024, &format!("role=echo count={PINGS}"), Expect::Poweroff)?);
            w.domain(entry(imgs, "carol", "netpeer", 1024, "role=listen ms=6000", Expect::Poweroff)?);
            w.domain(entry(imgs, "mallory", "netpeer", 1024, &format!("role=spoof count=8 as={BOB}"), Expect::Poweroff)?);
            w.domain(entry(imgs, "dave", "netpeer", 1024, &format!("role=echo count={PINGS}"), Expect::Poweroff)?);
            let trunk = format!("role=trunk vlan=20 carry=10,20 deny=30 count={PINGS}");
            w.domain(entry(imgs, "trudy", "netpeer", 1024, &trunk, Expect::Poweroff)?);
            finish(w, imgs)
        },
        append: "",
        icount: false,
        rig: Some(serve_disk),
        expect: Outcome::Pass,
        check: |out| {
            need(out, &format!("[alice] alice: {PINGS}/{PINGS} pings answered, intact, by Some([02, 00, 00, 00, 00, 0b]): ok"))?;
            need(out, "[alice] alice: no frame from a spoofed source reached it (0): ok")?;
            need(out, &format!("[bob] bob: answered {PINGS} pings: ok"))?;
            need(out, "[carol] carol: nothing from another VLAN reached it (0 frames): ok")?;
            need(out, "[mallory] mallory: sent 8 frames posing as")?;
            need(out, "(dom4 mallory): rx 8 tx ")?;
            need(out, " dropped 8 (spoofed 8, ")?;
            need(out, "[bob] bob: every frame it sent was taken by the backend: ok")?;
            need(out, "[dom0] serve: dom6 (trudy) offered vif 0: MAC 02:00:00:00:00:0f, trunk=10,20, bridge port")?;
            need(out, &format!("[dave] dave: answered {PINGS} pings: ok"))?;
            need(
                out,
                &format!("[trudy] trudy: {PINGS}/{PINGS} pings tagged 20 answered, intact, by Some([02, 00, 00, 00, 00, 0e]): ok"),
            )?;
            need(
                out,
                "[trudy] trudy: every frame reaching its trunk was tagged with a VLAN it carries (0 untagged, 0 of other VLANs), every pong tagged 20: ok",
            )?;
            need(out, &format!("[trudy] trudy: sent {PINGS} frames tagged 30 and {PINGS} untagged, for the bridge to drop: ok"))?;
            let port = out
                .lines()
                .find(|l| l.contains("[dom0] serve: bridge port ") && l.contains("(dom6 trudy): rx "))
                .ok_or("no bridge counters for trudy's port")?;
            let want = format!(
                "dropped {} (spoofed 0, VLAN not a member {PINGS}, untagged without a native VLAN {PINGS}, tagged on an access port 0)",
                2 * PINGS
            );
            if !port.contains(&want) {
                return Err(format!("trudy's port: wanted {want:?} in {port:?}"));
            }
            // carol listened past trudy's denied frames (else hearing none
            // of them would prove nothing).
            let sent = out.find("for the bridge to drop: ok").ok_or("trudy sent no denied frames")?;
            let heard = out.find("[carol] carol: nothing from another VLAN reached it").ok_or("carol did not report")?;
            if heard < sent {
                return Err("carol stopped listening before trudy sent its denied frames".into());
            }
            Ok(())
        },
    }
}

/// dom0's real NIC as the bridge's uplink: a domU's ARP request for QEMU's
/// user-network gateway goes out through it and the gateway's reply comes
/// back to the domU.
fn uplink_scenario() -> Scenario {
    Scenario {
        name: "net-uplink",
        what: "dom0's virtio-net NIC is the bridge's uplink (an access port of VLAN 10): a domU on VLAN 10 asks by ARP for QEMU's user-network gateway 10.0.2.2, the request leaves through the real NIC and slirp's reply comes back to the domU's virtual NIC",
        bundle: |imgs| {
            let mut w = BundleWriter::new();
            let cmdline = format!("serve uplink=10 vif=alice:10:{ALICE}");
            w.domain(net_dom0(imgs, &cmdline)?);
            w.domain(entry(imgs, "alice", "netpeer", 1024, "role=arp ip=10.0.2.16 target=10.0.2.2", Expect::Poweroff)?);
            finish(w, imgs)
        },
        append: "",
        icount: false,
        rig: Some(|rig| {
            rig.disk(4 << 20)?;
            rig.nic(&[])?;
            Ok(())
        }),
        expect: Outcome::Pass,
        check: |out| {
            need(out, "[dom0] serve: uplink on bridge port 31, VLAN 10")?;
            need(out, "[alice] alice: 10.0.2.2 is at Some([52, 55, 0a, 00, 02, 02]) (an ARP reply through the uplink): ok")?;
            Ok(())
        },
    }
}

/// dom0 serving NICs (`serve` mode; the `vif=` and `uplink=` words are in
/// `cmdline`): privileged, with the DMA pool its disk takes and, with an
/// `uplink=`, the real NIC's as well.
pub(crate) fn net_dom0(imgs: &Images, cmdline: &str) -> crate::Result<DomainEntry> {
    let uplink = cmdline.split(' ').any(|w| w.starts_with("uplink="));
    let dma = 512 + if uplink { super::dom0_net::DMA_KIB } else { 0 };
    Ok(entry(imgs, "dom0", "dom0", 2560, cmdline, Expect::Poweroff)?.privileged(true).dma_kib(dma))
}

/// The rig of a scenario whose dom0 serves only NICs: `serve` mode still
/// brings up its disk, so the machine gets a small one.
pub(super) fn serve_disk(rig: &mut super::rig::Rig) -> crate::Result<()> {
    rig.disk(4 << 20)?;
    Ok(())
}

pub const SERVER: &str = "02-00-00-00-03-01";
pub const CLIENT: &str = "02-00-00-00-03-02";
/// Bytes the client sends through the TCP echo.
const ECHO_BYTES: u64 = 1024 * 1024;

fn echo_scenario() -> Scenario {
    Scenario {
        name: "net-tcp",
        what: "two domUs on VLAN 30 talk TCP/IP through dom0's netback and bridge on the SDK's tcpip (smoltcp over netfront): the client takes its address by DHCPv4 from the server, pings the server (ICMP echo answered by smoltcp), has UDP datagrams of 1, 512 and 1472 bytes echoed, and a burst of 64 full-size ones queued at once (more than the NIC's tx pages) with every echo intact, then sends 1 MiB over TCP to an echo server and gets every byte back intact, both sides close the connection, and a second connection (the server listens again) echoes 100 KiB the same way",
        bundle: |imgs| {
            let mut w = BundleWriter::new();
            let cmdline = format!("serve vif=server:30:{SERVER} vif=client:30:{CLIENT}");
            w.domain(net_dom0(imgs, &cmdline)?);
            w.domain(entry(imgs, "server", "tcpecho", 2048, "role=server ip=10.0.3.1/24 port=7 conns=2 dhcp=10.0.3.2 ms=20000", Expect::Poweroff)?);
            w.domain(entry(
                imgs,
                "client",
                "tcpecho",
                2048,
                &format!("role=client ip=dhcp server=10.0.3.1 port=7 bytes={ECHO_BYTES} conns=2 ms=20000"),
                Expect::Poweroff,
            )?);
            finish(w, imgs)
        },
        append: "",
        icount: false,
        rig: Some(serve_disk),
        expect: Outcome::Pass,
        check: |out| {
            need(out, "[client] client: DHCP lease of 10.0.3.2/24 from 10.0.3.1 applied to the interface")?;
            need(out, "[server] server: DHCP: offered 10.0.3.2 ")?;
            need(out, ", refused 0: ok")?;
            need(out, "[client] client: 3/3 pings of 10.0.3.1 answered, intact")?;
            need(out, "[client] client: 3/3 UDP datagrams ([1, 512, 1472] bytes) echoed intact: ok")?;
            need(out, "[client] client: UDP burst: 64/64 queued, ")?;
            need(out, "echoed intact, 0 wrong (")?;
            need(out, " lost at the NIC): ok")?;
            need(out, &format!("[client] client: TCP 1: sent {ECHO_BYTES} bytes, {ECHO_BYTES} echoed, 0 wrong (first at None)"))?;
            need(out, "[client] client: TCP 1: closed both ways")?;
            let second = ECHO_BYTES / 10;
            need(out, &format!("[client] client: TCP 2: sent {second} bytes, {second} echoed, 0 wrong (first at None)"))?;
            need(out, "[client] client: TCP 2: closed both ways")?;
            need(out, &format!("[server] server: served 2/2 connections, echoed {} bytes: ok", ECHO_BYTES + second))?;
            need(out, "[server] server: every frame it sent was taken by the backend: ok")?;
            need(out, "[client] client: every frame it sent was taken by the backend: ok")?;
            Ok(())
        },
    }
}

/// Bytes the host sends through the domU's TCP echo server.
const HOST_ECHO_BYTES: usize = 256 * 1024;

/// The host's side of `net-echo`: connects to the domU's echo server
/// through QEMU's forward (retrying while the guest is not listening yet:
/// slirp accepts first and closes if the guest refuses), sends
/// [`HOST_ECHO_BYTES`] of a pattern, and checks every byte that comes back.
fn host_echo(addr: std::net::SocketAddr) -> crate::Result<String> {
    let pattern: Vec<u8> = (0..HOST_ECHO_BYTES).map(|i| (i * 7 + i / 251) as u8).collect();
    let (_, n) = tcp_echo_timed(addr, &pattern, std::time::Duration::from_secs(40))?;
    Ok(format!("host: {n} bytes echoed by the domU, every one intact"))
}

/// Connects to the TCP echo server at `addr` (retrying while the guest is
/// not listening yet: slirp accepts first and closes if the guest
/// refuses, until `within`), sends `pattern` while reading the echo, and
/// checks every byte: the time from the connection to the last byte back,
/// and the bytes.
pub fn tcp_echo_timed(
    addr: std::net::SocketAddr,
    pattern: &[u8],
    within: std::time::Duration,
) -> crate::Result<(std::time::Duration, usize)> {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let until = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < until {
        let attempt = (|| -> std::result::Result<(Duration, Vec<u8>), String> {
            let mut s =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
            let mut w = s.try_clone().map_err(|e| e.to_string())?;
            let data = pattern.to_vec();
            let writer = std::thread::spawn(move || -> std::result::Result<(), String> {
                w.write_all(&data).map_err(|e| e.to_string())?;
                w.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())
            });
            let mut back = Vec::new();
            s.read_to_end(&mut back).map_err(|e| e.to_string())?;
            let took = t0.elapsed();
            writer.join().map_err(|_| "writer panicked".to_string())??;
            Ok((took, back))
        })();
        match attempt {
            Ok((_, back)) if back.is_empty() => last = String::from("closed at once (not listening yet?)"),
            Ok((took, back)) => {
                if back == pattern {
                    return Ok((took, back.len()));
                }
                let first = back.iter().zip(pattern).position(|(a, b)| a != b);
                return Err(format!("{} bytes came back of {}, first wrong at {first:?}", back.len(), pattern.len()));
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("the echo server at {addr} never answered: {last}"))
}

/// `net-echo`: a domU's TCP echo server reached by the test's socket
/// client through QEMU's forward and dom0's uplink.
fn host_echo_scenario() -> Scenario {
    Scenario {
        name: "net-echo",
        what: "a domU's TCP echo server (tcpecho on the SDK's tcpip, at 10.0.2.15 behind dom0's uplink) is reached by a socket client in the test through QEMU's port forward: 256 KiB go out and every byte comes back intact, and the domU sees the connection close",
        bundle: |imgs| {
            let mut w = BundleWriter::new();
            let cmdline = format!("serve uplink=10 vif=echo:10:{SERVER}");
            w.domain(net_dom0(imgs, &cmdline)?);
            w.domain(entry(imgs, "echo", "tcpecho", 2048, "role=server ip=10.0.2.15/24 port=7 conns=1 ms=60000", Expect::Poweroff)?);
            finish(w, imgs)
        },
        append: "",
        icount: false,
        rig: Some(|rig| {
            rig.disk(4 << 20)?;
            let nic = rig.nic(&[(crate::qemu::devices::Proto::Tcp, 7)])?;
            let addr = nic.host_addr(crate::qemu::devices::Proto::Tcp, 7)?;
            rig.after_line("[echo] tcpecho: echo up at 10.0.2.15/24", std::time::Duration::from_secs(60), move || host_echo(addr));
            Ok(())
        }),
        expect: Outcome::Pass,
        check: |out| {
            need(out, &format!("[echo] echo: served 1/1 connections, echoed {HOST_ECHO_BYTES} bytes: ok"))?;
            Ok(())
        },
    }
}

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![bridge_scenario(), uplink_scenario(), echo_scenario(), host_echo_scenario()]
}
