//! `httpd`: a domU serving HTTP on its virtual NIC (`pvguest_sdk::tcpip`:
//! smoltcp over netfront), reached from the host through dom0's bridge,
//! its uplink and QEMU's user network (`hostfwd` to 10.0.2.15:80).
//!
//! - Addressing: `dhcp` (QEMU's user network hands out 10.0.2.15 first)
//!   or `ip=A.B.C.D/N gw=A.B.C.D`.
//! - `GET /` answers `200` with a line naming the domain and counting the
//!   requests; `GET /stop` answers `200 bye` and ends the domain once the
//!   answer is out; anything else is `404`, a request line longer than
//!   [`MAX_REQUEST`], malformed or cut short by the client's FIN `400`. Up
//!   to [`BACKLOG`] connections at once, every idle socket listening
//!   (HTTP/1.0: the server closes after each answer, and a client's next
//!   connection may come before that close is over). A connection reset,
//!   closed without a byte, or open [`IDLE_NS`] without a whole request
//!   gives its socket back to the backlog.
//! - `requests=N` (default 100) and `s=S` (default 60) bound the service;
//!   with `timed` (the demo), ending at `S` seconds without a `GET /stop`
//!   is as expected too.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use pvguest_sdk::check::Checks;
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::store::Store;
use pvguest_sdk::tcpip::{tcp, Addressing, Interface, Ipv4Address, Ipv4Cidr};
use pvguest_sdk::{heap, println, sched, time, StartInfo};

pvguest_sdk::entry!(main);

/// Bytes of a request read at most (the request line and headers).
const MAX_REQUEST: usize = 2048;
const PORT: u16 = 80;

/// Connections served at once; each socket listens between them.
const BACKLOG: usize = 4;

/// How long a connection may stay open without a whole request before its
/// socket is taken back (a slow or silent client cannot hold the backlog).
const IDLE_NS: u64 = 10_000_000_000;

/// One socket and the request it is reading.
struct Conn {
    sock: pvguest_sdk::tcpip::SocketHandle,
    req: alloc::boxed::Box<[u8; MAX_REQUEST]>,
    have: usize,
    answered: bool,
    /// When the connection left the listening state.
    since: Option<u64>,
}

impl Conn {
    fn new(sock: pvguest_sdk::tcpip::SocketHandle) -> Conn {
        Conn { sock, req: alloc::boxed::Box::new([0; MAX_REQUEST]), have: 0, answered: false, since: None }
    }
}

fn word<'a>(cmd: &'a str, key: &str) -> Option<&'a str> {
    cmd.split(' ').find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// What to answer to `request` (the bytes read so far, complete).
fn answer(request: &[u8], name: &str, served: u64) -> (String, bool) {
    let line = request.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = core::str::from_utf8(line).unwrap_or("").trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let reply = |code: &str, body: &str| {
        format!(
            "HTTP/1.0 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match (method, path) {
        ("GET", "/") => (reply("200 OK", &format!("Hello from {name}, a Ringfence domU (request {served})\n")), false),
        ("GET", "/stop") => (reply("200 OK", "bye\n"), true),
        ("GET", _) => (reply("404 Not Found", "no such page\n"), false),
        _ => (reply("400 Bad Request", "bad request\n"), false),
    }
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    heap::init(arg(cmd, "heap").unwrap_or(96)).expect("heap");
    let who = si.name();
    let mut c = Checks::new();
    let mut store = Store::open().unwrap_or_else(|e| {
        println!("httpd: no store: {e:?}");
        sched::crash()
    });
    let addressing = if cmd.split(' ').any(|w| w == "dhcp") {
        Addressing::Dhcp
    } else {
        let cidr = word(cmd, "ip").and_then(|s| s.parse::<Ipv4Cidr>().ok());
        let gateway = word(cmd, "gw").and_then(|s| s.parse::<Ipv4Address>().ok());
        match cidr {
            Some(cidr) => Addressing::Static { cidr, gateway },
            None => {
                c.holds(who, format_args!("dhcp, or ip=A.B.C.D/N on the command line"), false);
                c.verdict(who);
                return;
            }
        }
    };
    let mut net = match Interface::open(&mut store, 0, addressing) {
        Ok(n) => n,
        Err(e) => {
            println!("httpd: no NIC: {e:?}");
            sched::crash()
        }
    };
    let deadline = time::now_ns() + arg(cmd, "s").unwrap_or(60) * 1_000_000_000;
    let limit = arg(cmd, "requests").unwrap_or(100);
    // The address: at once if static, once the lease comes under DHCP.
    while net.ipv4().is_none() && time::now_ns() < deadline {
        if net.poll().and_then(|_| net.wait(deadline)).is_err() {
            break;
        }
    }
    let Some(addr) = net.ipv4() else {
        c.holds(who, format_args!("an address (DHCP lease or static)"), false);
        c.verdict(who);
        return;
    };
    if let Some(l) = net.lease() {
        println!("httpd: DHCP lease {} from {} (router {:?})", l.address, l.server, l.router);
    }
    // A backlog: every socket listens on the port, so a connection that
    // comes while another is still closing finds one (smoltcp gives each
    // SYN to a listening socket; with none it answers RST).
    let mut conns: alloc::vec::Vec<Conn> = (0..BACKLOG).map(|_| Conn::new(net.add_tcp(4096, 4096))).collect();
    for conn in &conns {
        if net.tcp_listen(conn.sock, PORT).is_err() {
            c.holds(who, format_args!("listening on port {PORT}"), false);
            c.verdict(who);
            return;
        }
    }
    println!("httpd: listening on {}:{PORT}", addr.address());
    let (mut served, mut stop, mut bad) = (0u64, false, 0u64);
    'serve: while time::now_ns() < deadline && served < limit {
        if let Err(e) = net.poll() {
            println!("httpd: the NIC failed: {e:?}");
            break;
        }
        let now = time::now_ns();
        for conn in conns.iter_mut() {
            let sock = net.tcp(conn.sock);
            // A connection's clock starts when it leaves the listening state.
            if sock.state() == tcp::State::Listen {
                conn.since = None;
            } else if conn.since.is_none() {
                conn.since = Some(now);
            }
            // Read the request until its blank line (or the cap).
            while sock.can_recv() && conn.have < conn.req.len() && !conn.answered {
                match sock.recv_slice(&mut conn.req[conn.have..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => conn.have += n,
                }
            }
            let complete = conn.req[..conn.have].windows(4).any(|w| w == b"\r\n\r\n");
            // The client sent all it will (its FIN came) without a whole
            // request, or kept the socket longer than IDLE_NS unanswered.
            let ended = sock.state() == tcp::State::CloseWait && !complete;
            let idle = !conn.answered && conn.since.is_some_and(|t| now.saturating_sub(t) > IDLE_NS);
            if !conn.answered && (idle || (ended && conn.have == 0)) {
                // Nothing to answer, or no more time for it: the socket
                // goes back to the backlog.
                sock.abort();
                conn.have = 0;
                conn.since = None;
                let _ = sock.listen(PORT);
                continue;
            }
            if !conn.answered && (complete || ended || conn.have == conn.req.len()) && sock.can_send() {
                let (text, last) = if complete {
                    answer(&conn.req[..conn.have], who, served + 1)
                } else {
                    bad += 1;
                    (String::from("HTTP/1.0 400 Bad Request\r\nConnection: close\r\n\r\n"), false)
                };
                let _ = sock.send_slice(text.as_bytes());
                sock.close();
                conn.answered = true;
                stop |= last;
                served += 1;
            }
            // The connection is over (closed, or reset by the client at any
            // point): listen for the next one.
            if matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) {
                sock.abort();
                conn.have = 0;
                conn.answered = false;
                conn.since = None;
                if stop {
                    break 'serve;
                }
                let _ = sock.listen(PORT);
            }
        }
        // Wake for the next idle limit too (smoltcp has no timer for it).
        let wake =
            conns.iter().filter(|c| !c.answered).filter_map(|c| c.since).map(|t| t.saturating_add(IDLE_NS)).min();
        if let Err(e) = net.wait(wake.map_or(deadline, |w| w.min(deadline))) {
            println!("httpd: the NIC failed: {e:?}");
            break;
        }
    }
    let _ = net.flush_tx(time::now_ns() + 1_000_000_000);
    let timed = cmd.split(' ').any(|w| w == "timed");
    c.holds(
        who,
        format_args!("served {served} requests ({bad} malformed), stopped by GET /stop: {stop}"),
        stop || timed,
    );
    c.verdict(who);
}
