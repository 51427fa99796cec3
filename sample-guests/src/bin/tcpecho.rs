//! `tcpecho`: TCP/IP between domUs, on the SDK's `tcpip` (smoltcp over
//! the virtual NIC, `netfront`), through dom0's netback and bridge.
//!
//! - `role=server ip=CIDR port=P conns=C [dhcp=IP]`: a TCP echo server on
//!   port `P` (every byte received goes back on the same connection; a
//!   peer's FIN is answered with ours once all is echoed) and a UDP echo
//!   service on the same port number. It ends after `C` connections
//!   (default 1) have closed. ARP and ICMP echo requests are answered by
//!   the interface itself. With `dhcp=IP` it is also a DHCP server with
//!   that one address to give (in its own subnet, no router).
//! - `role=client ip=CIDR|dhcp server=IP port=P bytes=N conns=C`: (with
//!   `ip=dhcp`, first takes a lease and checks it was applied) pings the server
//!   (ICMP echo, `pings=` of them, default 3; the first also resolves its
//!   MAC by ARP), has UDP datagrams of 1, 512 and 1472 bytes echoed and
//!   then a burst of 64 full-size ones at once (more than the NIC has tx
//!   pages: every echo that comes back must be intact), then
//!   connects over TCP, sends `N` bytes of a known pattern, checks every
//!   echoed byte against it, closes, and waits for the server's FIN; then
//!   does the same `C - 1` more times (default `C` 1) with `N / 10`
//!   bytes, each from a new local port. It prints one result line per
//!   check.
//!
//! Both take `ms=T` (default 20000): the time limit of the whole run. Every
//! byte that arrives is the network's: the checks compare it with what was
//! sent and count what differs, they never trust a length or an offset
//! from it.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use pvguest_sdk::check::Checks;
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::store::Store;
use pvguest_sdk::tcpip::smoltcp::phy::ChecksumCapabilities;
use pvguest_sdk::tcpip::smoltcp::time::Duration;
use pvguest_sdk::tcpip::smoltcp::wire::{
    DhcpMessageType, DhcpPacket, DhcpRepr, Icmpv4Packet, Icmpv4Repr, DHCP_CLIENT_PORT, DHCP_SERVER_PORT,
};
use pvguest_sdk::tcpip::{dhcpv4, icmp, tcp, udp, Addressing, Interface, IpAddress, IpEndpoint, Ipv4Address, Ipv4Cidr};
use pvguest_sdk::{heap, println, sched, time, StartInfo};

pvguest_sdk::entry!(main);

/// The byte at offset `i` of the client's stream (not periodic in any
/// small power of two, so a dropped, doubled or reordered segment shows).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// TCP buffer bytes each way.
const TCP_BUF: usize = 16 * 1024;
/// The ICMP identifier of the client's pings.
const PING_IDENT: u16 = 0x7463;
/// Sizes of the UDP datagrams the client has echoed (1472: a full
/// 1500-byte IP packet).
const DATAGRAMS: [usize; 3] = [1, 512, 1472];
/// How long the client waits for one answer before asking again (ns).
const RETRY_NS: u64 = 100_000_000;
/// Datagrams in the client's UDP burst (twice the NIC's tx pages).
const BURST: usize = 2 * pvguest_sdk::netfront::TX_POOL;
/// How long the client waits for the burst's echoes (ns).
const BURST_WAIT_NS: u64 = 1_000_000_000;
/// How long the client keeps polling after the TCP exchange (ns).
const LINGER_NS: u64 = 50_000_000;
/// How often it asks (pings, datagrams, connection attempts).
const TRIES: u32 = 50;

/// The value of `key=` on the command line.
fn word<'a>(cmd: &'a str, key: &str) -> Option<&'a str> {
    cmd.split(' ').find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    heap::init(arg(cmd, "heap").unwrap_or(128)).expect("heap");
    let who = si.name();
    let mut c = Checks::new();
    let addressing = match word(cmd, "ip") {
        Some("dhcp") => Some(Addressing::Dhcp),
        Some(s) => s.parse::<Ipv4Cidr>().ok().map(|cidr| Addressing::Static { cidr, gateway: None }),
        None => None,
    };
    let Some(addressing) = addressing else {
        c.holds(who, format_args!("ip=A.B.C.D/N or ip=dhcp on the command line"), false);
        c.verdict(who);
        return;
    };
    let port = arg(cmd, "port").and_then(|p| u16::try_from(p).ok()).unwrap_or(7);
    let deadline = time::now_ns() + arg(cmd, "ms").unwrap_or(20_000) * 1_000_000;
    let mut store = Store::open().unwrap_or_else(|e| {
        println!("tcpecho: no store: {e:?}");
        sched::crash()
    });
    let mut net = match Interface::open(&mut store, 0, addressing) {
        Ok(n) => n,
        Err(e) => {
            println!("tcpecho: no NIC: {e:?}");
            sched::crash()
        }
    };
    if addressing == Addressing::Dhcp && !lease(&mut net, &mut c, who, deadline) {
        c.verdict(who);
        return;
    }
    // The address in use (static, or the lease's): tests wait for this line.
    if let Some(cidr) = net.ipv4() {
        println!("tcpecho: {} up at {cidr}, MAC {:02x?}", who, net.nic().mac());
    }
    match word(cmd, "role").unwrap_or("") {
        "server" => {
            let offer = word(cmd, "dhcp").and_then(|s| s.parse::<Ipv4Address>().ok());
            server(&mut net, &mut c, who, (port, offer), arg(cmd, "conns").unwrap_or(1), deadline)
        }
        "client" => match word(cmd, "server").and_then(|s| s.parse::<Ipv4Address>().ok()) {
            Some(peer) => client(&mut net, &mut c, who, cmd, (peer, port), deadline),
            None => c.holds(who, format_args!("a server=A.B.C.D on the command line"), false),
        },
        other => c.holds(who, format_args!("a known role (got `{other}`)"), false),
    }
    let flushed = net.flush_tx(time::now_ns() + 2_000_000_000);
    c.holds(who, format_args!("every frame it sent was taken by the backend"), matches!(flushed, Ok(true)));
    println!("tcpecho: {:?} {:?}", net.nic_stats(), net.phy_stats());
    c.verdict(who);
}

/// The client's burst: [`BURST`] full-size datagrams queued at once, more
/// than the NIC's [`pvguest_sdk::netfront::TX_POOL`] tx pages, so that the
/// device layer's back-pressure (its deferred slot) may come into play;
/// every echo that comes back must be intact and unique. UDP may lose
/// datagrams (a receiver without room drops them): the check is on what
/// arrives, and at least half must.
fn burst(net: &mut Interface, c: &mut Checks, who: &str, to: (Ipv4Address, u16), deadline: u64) {
    const LEN: usize = 1472;
    let b = net.add_udp(BURST, BURST * LEN);
    let _ = net.udp(b).bind(40008);
    let before = net.phy_stats();
    let mut dgram = [0u8; LEN];
    let mut queued = 0;
    for k in 0..BURST as u32 {
        dgram[..4].copy_from_slice(&k.to_le_bytes());
        for (i, x) in dgram[4..].iter_mut().enumerate() {
            *x = pattern(i as u64 + u64::from(k) * 7919);
        }
        queued += u32::from(net.udp(b).send_slice(&dgram, IpEndpoint::from(to)).is_ok());
    }
    let (mut seen, mut intact, mut wrong) = ([false; BURST], 0u32, 0u32);
    let until = (time::now_ns() + BURST_WAIT_NS).min(deadline);
    let mut buf = [0u8; 2048];
    while time::now_ns() < until && intact < queued {
        if !step(net, until) {
            return;
        }
        while let Ok((n, _)) = net.udp(b).recv_slice(&mut buf) {
            let k = buf.get(..4).map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
            let ok = n == LEN
                && k.is_some_and(|k| {
                    k < BURST
                        && !seen[k]
                        && buf[4..n].iter().enumerate().all(|(i, &x)| x == pattern(i as u64 + k as u64 * 7919))
                });
            match (ok, k) {
                (true, Some(k)) => {
                    seen[k] = true;
                    intact += 1;
                }
                _ => wrong += 1,
            }
        }
    }
    let after = net.phy_stats();
    let (deferred, lost) = (after.tx_deferred - before.tx_deferred, after.tx_lost - before.tx_lost);
    c.holds(
        who,
        format_args!(
            "UDP burst: {queued}/{BURST} queued, {intact} echoed intact, {wrong} wrong ({deferred} deferred, {lost} \
             lost at the NIC)"
        ),
        queued == BURST as u32 && wrong == 0 && intact >= queued / 2,
    );
    net.remove(b);
}

/// Waits for a DHCP lease: whether one came.
fn lease(net: &mut Interface, c: &mut Checks, who: &str, deadline: u64) -> bool {
    // Ask again every 250 ms, not smoltcp's 10 s: the server may come up
    // after our first DISCOVER.
    if let Some(d) = net.dhcp_socket() {
        let mut retry = dhcpv4::RetryConfig::default();
        retry.discover_timeout = Duration::from_millis(250);
        retry.initial_request_timeout = Duration::from_millis(250);
        d.set_retry_config(retry);
    }
    let started = time::now_ns();
    while net.lease().is_none() && time::now_ns() < deadline {
        if !step(net, deadline) {
            return false;
        }
    }
    let ms = (time::now_ns() - started) / 1_000_000;
    let Some((address, server)) = net.lease().map(|l| (l.address, l.server)) else {
        c.holds(who, format_args!("a DHCP lease within the time limit"), false);
        return false;
    };
    let applied = net.ipv4() == Some(address);
    c.holds(who, format_args!("DHCP lease of {address} from {server} applied to the interface ({ms} ms)"), applied);
    applied
}

/// Polls, then waits until the next frame, smoltcp's next timer or
/// `until`; false (and a printed reason) once the NIC is unusable.
fn step(net: &mut Interface, until: u64) -> bool {
    if let Err(e) = net.poll().and_then(|_| net.wait(until)) {
        println!("tcpecho: NIC unusable: {e:?}");
        return false;
    }
    true
}

fn server(
    net: &mut Interface,
    c: &mut Checks,
    who: &str,
    (port, offer): (u16, Option<Ipv4Address>),
    conns: u64,
    deadline: u64,
) {
    let mut dhcp = offer.map(|ip| {
        let h = net.add_udp(4, 4 * 600);
        let _ = net.udp(h).bind(DHCP_SERVER_PORT);
        (h, ip, DhcpCounts::default())
    });
    let s = net.add_tcp(TCP_BUF, TCP_BUF);
    let u = net.add_udp(BURST, BURST * 1500);
    if let Err(e) = net.udp(u).bind(port) {
        c.holds(who, format_args!("UDP port {port} bound ({e:?})"), false);
        return;
    }
    if let Err(e) = net.tcp_listen(s, port) {
        c.holds(who, format_args!("listening on TCP port {port} ({e:?})"), false);
        return;
    }
    let (mut served, mut echoed, mut udp_echoed, mut open) = (0u64, 0u64, 0u64, false);
    let mut buf = [0u8; 2048];
    while served < conns && time::now_ns() < deadline {
        if net.poll().is_err() {
            break;
        }
        // UDP: each datagram back to its sender.
        let sock = net.udp(u);
        while sock.can_recv() && sock.can_send() {
            match sock.recv_slice(&mut buf) {
                Ok((n, meta)) => {
                    if sock.send_slice(&buf[..n], meta).is_ok() {
                        udp_echoed += 1;
                    }
                }
                Err(udp::RecvError::Truncated) => {}
                Err(udp::RecvError::Exhausted) => break,
            }
        }
        if let Some((h, ip, counts)) = dhcp.as_mut() {
            dhcp_serve(net, *h, *ip, counts);
        }
        // TCP: what came in goes out, as far as the send buffer has room.
        let sock = net.tcp(s);
        if sock.is_active() && !open {
            open = true;
            println!("tcpecho: connection from {:?}", sock.remote_endpoint());
        }
        while sock.can_recv() && sock.can_send() {
            let room = (sock.send_capacity() - sock.send_queue()).min(buf.len());
            if room == 0 {
                break;
            }
            let Ok(n) = sock.recv_slice(&mut buf[..room]) else { break };
            if n == 0 {
                break;
            }
            // Room was checked: the whole slice is queued.
            let sent = sock.send_slice(&buf[..n]).unwrap_or(0);
            echoed += sent as u64;
        }
        // The peer is done sending and all is echoed: our FIN.
        if sock.state() == tcp::State::CloseWait && sock.recv_queue() == 0 && sock.send_queue() == 0 {
            sock.close();
        }
        if open && matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) {
            open = false;
            served += 1;
            println!("tcpecho: connection {served} closed, {echoed} bytes echoed so far");
            if served < conns {
                sock.abort();
                let _ = sock.listen(port);
            }
        }
        if net.poll().is_err() || net.wait(deadline).is_err() {
            break;
        }
    }
    c.holds(who, format_args!("served {served}/{conns} connections, echoed {echoed} bytes"), served == conns);
    println!("tcpecho: {who} echoed {udp_echoed} UDP datagrams");
    if let Some((_, ip, n)) = dhcp {
        c.holds(
            who,
            format_args!(
                "DHCP: offered {ip} {} time(s), acknowledged {} request(s), refused {}",
                n.offers, n.acks, n.naks
            ),
            n.offers >= 1 && n.acks >= 1 && n.naks == 0,
        );
    }
}

/// What the DHCP service answered.
#[derive(Default)]
struct DhcpCounts {
    offers: u32,
    acks: u32,
    naks: u32,
}

/// A DHCP server with one address to give (`dhcp=IP`): it offers `ip` to
/// any DISCOVER, acknowledges a REQUEST for it (and refuses one for any
/// other), every answer broadcast. Datagrams that do not parse as DHCP
/// are ignored (checked parsing only).
fn dhcp_serve(net: &mut Interface, h: pvguest_sdk::tcpip::SocketHandle, ip: Ipv4Address, n: &mut DhcpCounts) {
    let Some(me) = net.ipv4() else { return };
    let mut buf = [0u8; 600];
    loop {
        let sock = net.udp(h);
        if !sock.can_send() {
            return;
        }
        let Ok((len, _)) = sock.recv_slice(&mut buf) else { return };
        let Ok(pkt) = DhcpPacket::new_checked(&buf[..len]) else { continue };
        let Ok(req) = DhcpRepr::parse(&pkt) else { continue };
        let (kind, yours) = match req.message_type {
            DhcpMessageType::Discover => (DhcpMessageType::Offer, ip),
            DhcpMessageType::Request => {
                let wanted = req.requested_ip.unwrap_or(req.client_ip);
                let ours = req.server_identifier.is_none_or(|s| s == me.address());
                if !ours {
                    continue; // another server's offer was taken
                }
                if wanted == ip {
                    (DhcpMessageType::Ack, ip)
                } else {
                    (DhcpMessageType::Nak, Ipv4Address::UNSPECIFIED)
                }
            }
            _ => continue,
        };
        let answer = DhcpRepr {
            message_type: kind,
            transaction_id: req.transaction_id,
            secs: 0,
            client_hardware_address: req.client_hardware_address,
            client_ip: Ipv4Address::UNSPECIFIED,
            your_ip: yours,
            server_ip: me.address(),
            router: None,
            subnet_mask: Some(me.netmask()),
            relay_agent_ip: Ipv4Address::UNSPECIFIED,
            broadcast: true,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(me.address()),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: Some(3600),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let to = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::BROADCAST), DHCP_CLIENT_PORT);
        let Ok(out) = net.udp(h).send(answer.buffer_len(), to) else { return };
        out.fill(0);
        if answer.emit(&mut DhcpPacket::new_unchecked(out)).is_ok() {
            match kind {
                DhcpMessageType::Offer => n.offers += 1,
                DhcpMessageType::Ack => n.acks += 1,
                _ => n.naks += 1,
            }
        }
    }
}

fn client(net: &mut Interface, c: &mut Checks, who: &str, cmd: &str, peer: (Ipv4Address, u16), deadline: u64) {
    let (server, port) = peer;
    let pings = arg(cmd, "pings").unwrap_or(3) as u16;
    let bytes = arg(cmd, "bytes").unwrap_or(64 * 1024);

    // ICMP echo: answered by the server's interface itself.
    let ic = net.add_icmp(4, 1024);
    let _ = net.icmp(ic).bind(icmp::Endpoint::Ident(PING_IDENT));
    let started = time::now_ns();
    let mut answered = 0u16;
    for seq in 0..pings {
        let data = [seq as u8; 56];
        let mut got = false;
        for _ in 0..TRIES {
            let req = Icmpv4Repr::EchoRequest { ident: PING_IDENT, seq_no: seq, data: &data };
            let sock = net.icmp(ic);
            if let Ok(b) = sock.send(req.buffer_len(), IpAddress::Ipv4(server)) {
                req.emit(&mut Icmpv4Packet::new_unchecked(b), &ChecksumCapabilities::default());
            }
            let until = (time::now_ns() + RETRY_NS).min(deadline);
            while !got && time::now_ns() < until {
                if !step(net, until) {
                    return;
                }
                let sock = net.icmp(ic);
                while let Ok((p, from)) = sock.recv() {
                    let Ok(pkt) = Icmpv4Packet::new_checked(p) else { continue };
                    let Ok(repr) = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default()) else { continue };
                    if let Icmpv4Repr::EchoReply { ident, seq_no, data: d } = repr {
                        got |= from == IpAddress::Ipv4(server) && ident == PING_IDENT && seq_no == seq && d == data;
                    }
                }
            }
            if got {
                break;
            }
        }
        answered += u16::from(got);
    }
    let ms = (time::now_ns() - started) / 1_000_000;
    c.holds(who, format_args!("{answered}/{pings} pings of {server} answered, intact ({ms} ms)"), answered == pings);

    // UDP echo: each size once, each datagram until its echo is back.
    let u = net.add_udp(4, 4 * 1500);
    let _ = net.udp(u).bind(40007);
    let mut buf = [0u8; 2048];
    let mut intact = 0;
    for (k, &len) in DATAGRAMS.iter().enumerate() {
        let dgram: alloc::vec::Vec<u8> = (0..len as u64).map(|i| pattern(i + k as u64 * 7919)).collect();
        let mut got = false;
        for _ in 0..TRIES {
            let _ = net.udp(u).send_slice(&dgram, IpEndpoint::from((server, port)));
            let until = (time::now_ns() + RETRY_NS).min(deadline);
            while !got && time::now_ns() < until {
                if !step(net, until) {
                    return;
                }
                while let Ok((n, _)) = net.udp(u).recv_slice(&mut buf) {
                    got |= buf[..n] == dgram[..];
                }
            }
            if got {
                break;
            }
        }
        intact += u32::from(got);
    }
    c.holds(
        who,
        format_args!("{intact}/{} UDP datagrams ({DATAGRAMS:?} bytes) echoed intact", DATAGRAMS.len()),
        intact == DATAGRAMS.len() as u32,
    );

    burst(net, c, who, (server, port), deadline);

    // TCP echo: the first connection carries `bytes`, any later one (to
    // check that the server listens again) a tenth of that.
    let conns = arg(cmd, "conns").unwrap_or(1);
    for k in 1..=conns {
        let n = if k == 1 { bytes } else { bytes / 10 };
        tcp_echo(net, c, who, k, (server, port), n, deadline);
    }
}

/// TCP connection number `k` to the echo server: `bytes` of the pattern
/// out, every echoed one checked, both sides closed.
fn tcp_echo(net: &mut Interface, c: &mut Checks, who: &str, k: u64, to: (Ipv4Address, u16), bytes: u64, deadline: u64) {
    let (server, port) = to;
    let s = net.add_tcp(TCP_BUF, TCP_BUF);
    let started = time::now_ns();
    let (mut sent, mut received, mut bad, mut first_bad) = (0u64, 0u64, 0u64, None);
    let (mut attempts, mut closing, mut connected) = (0u32, false, false);
    let mut chunk = [0u8; 2048];
    while time::now_ns() < deadline {
        let state = net.tcp(s).state();
        if state == tcp::State::Closed && !connected {
            // Not yet connected (the first try, or refused because the
            // server was not listening yet): connect again, a while later.
            if attempts >= TRIES {
                break;
            }
            if attempts > 0 {
                let until = time::now_ns() + RETRY_NS;
                while time::now_ns() < until {
                    if !step(net, until) {
                        return;
                    }
                }
            }
            attempts += 1;
            if let Err(e) = net.tcp_connect(s, (server, port)) {
                println!("tcpecho: connect: {e:?}");
                break;
            }
        }
        if !step(net, deadline) {
            return;
        }
        let sock = net.tcp(s);
        connected |= sock.may_send();
        while sent < bytes && sock.can_send() {
            let n = (bytes - sent).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            match sock.send_slice(&chunk[..n]) {
                Ok(0) | Err(_) => break,
                Ok(k) => sent += k as u64,
            }
        }
        while sock.can_recv() {
            let Ok(n) = sock.recv_slice(&mut chunk) else { break };
            if n == 0 {
                break;
            }
            for (i, &b) in chunk[..n].iter().enumerate() {
                let at = received + i as u64;
                if b != pattern(at) {
                    bad += 1;
                    first_bad.get_or_insert(at);
                }
            }
            received += n as u64;
        }
        if sent == bytes && !closing && sock.send_queue() == 0 {
            sock.close();
            closing = true;
        }
        // Done once the server's FIN has come after all its bytes.
        if connected && !sock.may_recv() {
            break;
        }
    }
    let ms = (time::now_ns() - started) / 1_000_000;
    // Linger a little: the ACK of the server's FIN goes out, and is sent
    // again should the server repeat its FIN.
    let until = time::now_ns() + LINGER_NS;
    while time::now_ns() < until {
        if !step(net, until) {
            return;
        }
    }
    let state = net.tcp(s).state();
    c.holds(
        who,
        format_args!("TCP {k}: sent {sent} bytes, {received} echoed, {bad} wrong (first at {first_bad:?}), in {ms} ms"),
        sent == bytes && received == bytes && bad == 0,
    );
    c.holds(
        who,
        format_args!("TCP {k}: closed both ways (state {state}, {attempts} connection attempt(s))"),
        closing && matches!(state, tcp::State::TimeWait | tcp::State::Closed),
    );
    // The socket's TIME-WAIT is ours to drop: the server has its final ACK.
    net.remove(s);
}
