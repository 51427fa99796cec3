//! `api`: dom0's management API, the shell's operations over HTTP/JSON
//! ([`crate::toolstack`] carries them out), reached from the host through
//! QEMU's port forward and the bridge's uplink. `cargo xtask ctl` is its
//! client.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /v1/domains` | | `{"domains":[DOMAIN...]}` |
//! | `GET /v1/domains/DOM` | | `DOMAIN` |
//! | `POST /v1/domains` | `{"template":T, "name"?, "mem_kib"?, "weight"?, "warp_us"?, "cmdline"?, "paused"?, "from"?}` (`from`: a template disk its disk is a copy-on-write overlay of) | 201 `{"id":N,"name":S,"mem_kib":N,"paused":B}` |
//! | `DELETE /v1/domains/DOM` | | `{"destroyed":N}` |
//! | `POST /v1/domains/DOM/pause`, `.../unpause` | | `{"paused":N}` / `{"unpaused":N}` |
//! | `PUT /v1/domains/DOM/sched` | `{"weight":W, "warp_us"?}` | `{"id":N,"weight":W,"warp_us":U}` |
//! | `POST /v1/domains/DOM/console` | `{"input":S}` (at most `MAX_STRING` bytes: bytes for its console input, as typed while attached; 409 if its console is not the daemon's or its input ring has no room) | `{"id":N,"sent":N}` |
//! | `GET /v1/templates` | | `{"templates":[{"name","mem_kib","weight","warp_us","image_bytes","cmdline"}...]}` |
//! | `GET /v1/info` | | the machine's figures (`PHYSINFO`) |
//! | `POST /v1/shutdown` | `{"force"?:B}` | `{"destroyed":[N...]}` |
//!
//! `DOM` is an id or a name; `DOMAIN` is
//! `{"id","name","state","mem_kib","cpu_ms","weight","warp_us"}`.
//!
//! # Trust
//! Every request is hostile input until it proves otherwise:
//! - It must carry `Authorization: Bearer TOKEN`, the token set at boot
//!   (`token=` on dom0's command line), compared in constant time: else
//!   401, and nothing else of it is looked at.
//! - Head and body together are at most [`MAX_REQUEST`] bytes (413), read
//!   within [`IDLE_NS`] of the connection's start (else it is dropped), on
//!   one of [`CONNS`] sockets: a client that holds them all only delays
//!   the others.
//! - httparse reads the head; [`toolstack_api`]'s strict, bounded reader
//!   reads the body into typed requests that refuse unknown fields. What
//!   does not parse is a 400 saying why. Everything the hypervisor gets is
//!   checked there again.
//! - Bad requests get a 4xx and `{"error":"why"}`: 400 malformed, 401 no
//!   or a wrong token, 404 no such path, domain or template, 405 a method
//!   the path does not take, 409 refused by the hypervisor or the
//!   machine's state, 413 too large.
//!
//! # Command line
//! `api=PORT token=TOKEN` turns it on; `api_ip=A.B.C.D/N` (10.0.2.16/24),
//! `api_gw=A.B.C.D` (10.0.2.2), `api_vlan=V` (10) and `api_mac=MAC`
//! (02-00-00-00-00-fe) place dom0's own port on the bridge.
//!
//! The replies' JSON is written here (a few fixed shapes; strings escaped
//! by [`json_str`]).

use crate::toolstack::{self, Act, CreateArgs, Failure, Services, Toolstack};
use crate::vifs::{LocalPort, Vifs, LOCAL_QUEUE};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use net_bridge::{Mac, PortKind};
use pvguest_sdk::abi::domctl::DomainInfo;
use pvguest_sdk::{domctl, println, time};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use toolstack_api::{json_str, ConsoleBody, CreateBody, SchedBody, ShutdownBody};

/// Sockets serving requests at once.
pub const CONNS: usize = 4;
/// The largest request, head and body.
pub const MAX_REQUEST: usize = 8192;
/// How long a connection may take to send its request.
pub const IDLE_NS: u64 = 10_000_000_000;
/// Each socket's buffers.
const SOCKET_BUF: usize = 16 * 1024;

/// The API's settings, from dom0's command line.
struct Settings {
    port: u16,
    token: String,
    cidr: (Ipv4Address, u8),
    gateway: Ipv4Address,
    mac: Mac,
    vlan: u16,
}

fn settings(cmdline: &str) -> Option<Result<Settings, String>> {
    let word = |k: &str| cmdline.split(' ').find_map(|w| w.strip_prefix(k).and_then(|w| w.strip_prefix('=')));
    let port = word("api")?;
    Some((|| {
        let port: u16 = port.parse().ok().filter(|&p| p > 0).ok_or(format!("api={port} is not a TCP port"))?;
        let token = word("token").ok_or("api= needs token= (8 to 64 of [A-Za-z0-9._-])")?;
        if !(8..=64).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(String::from("token= must be 8 to 64 of [A-Za-z0-9._-]"));
        }
        let ip = |s: &str| s.parse::<Ipv4Address>().map_err(|_| format!("'{s}' is not an IPv4 address"));
        let cidr = match word("api_ip").unwrap_or("10.0.2.16/24").split_once('/') {
            Some((a, n)) => (ip(a)?, n.parse().ok().filter(|&n| (1..=32).contains(&n)).ok_or("api_ip=: bad prefix")?),
            None => return Err(String::from("api_ip= is A.B.C.D/N")),
        };
        let gateway = ip(word("api_gw").unwrap_or("10.0.2.2"))?;
        let mac = crate::vifs::parse_mac(word("api_mac").unwrap_or("02-00-00-00-00-fe")).ok_or("api_mac=: bad MAC")?;
        let vlan = word("api_vlan").unwrap_or("10").parse().map_err(|_| String::from("api_vlan=: bad VLAN"))?;
        Ok(Settings { port, token: String::from(token), cidr, gateway, mac, vlan })
    })())
}

/// smoltcp's device: dom0's own bridge port's queues.
struct QueuePhy<'a>(&'a mut LocalPort);

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // A full queue drops the frame: TCP sends it again.
        if self.0.len() < LOCAL_QUEUE {
            self.0.push_back(frame);
        }
        r
    }
}

impl Device for QueuePhy<'_> {
    type RxToken<'b>
        = Rx
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.0.to_stack.pop_front()?;
        Some((Rx(f), Tx(&mut self.0.from_stack)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        (self.0.from_stack.len() < LOCAL_QUEUE).then_some(Tx(&mut self.0.from_stack))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(8);
        caps
    }
}

/// One socket's request and answer.
struct Conn {
    handle: SocketHandle,
    req: Vec<u8>,
    /// When its connection began (0: none yet).
    since: u64,
    /// The answer's bytes not yet sent, once there is one.
    out: Option<Vec<u8>>,
    sent: usize,
}

/// The API (see the module docs).
pub struct Api {
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    port: u16,
    token: String,
    requests: u32,
}

fn now() -> Instant {
    Instant::from_micros((time::now_ns() / 1000) as i64)
}

impl Api {
    /// The API, if `cmdline` has `api=`: dom0's own port is added to the
    /// bridge. A bad setting is reported and leaves it off.
    pub fn from_cmdline(cmdline: &str, vifs: &mut Vifs) -> Option<Api> {
        let s = match settings(cmdline)? {
            Ok(s) => s,
            Err(e) => {
                println!("api: off: {e}");
                return None;
            }
        };
        let kind = match PortKind::parse(&format!("{}", s.vlan)) {
            Ok(k) => k,
            Err(e) => {
                println!("api: off: api_vlan={}: {e}", s.vlan);
                return None;
            }
        };
        if let Err(e) = vifs.attach_local(kind, s.mac) {
            println!("api: off: no bridge port: {e}");
            return None;
        }
        let q = vifs.local().expect("just attached");
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(s.mac.0)));
        let mut iface = Interface::new(config, &mut QueuePhy(q), now());
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(s.cidr.0), s.cidr.1));
        });
        if iface.routes_mut().add_default_ipv4_route(s.gateway).is_err() {
            println!("api: off: no route");
            return None;
        }
        let mut sockets = SocketSet::new(Vec::new());
        let mut conns = Vec::new();
        for _ in 0..CONNS {
            let rx = tcp::SocketBuffer::new(vec![0u8; SOCKET_BUF]);
            let tx = tcp::SocketBuffer::new(vec![0u8; SOCKET_BUF]);
            let handle = sockets.add(tcp::Socket::new(rx, tx));
            conns.push(Conn { handle, req: Vec::new(), since: 0, out: None, sent: 0 });
        }
        println!("api: listening on {}:{} (HTTP/JSON, {CONNS} connections, bearer token required)", s.cidr.0, s.port);
        Some(Api { iface, sockets, conns, port: s.port, token: s.token, requests: 0 })
    }

    /// One pass: frames in and out, each connection's request read and
    /// answered. Whether anything happened.
    pub fn poll(&mut self, q: &mut LocalPort, ts: &mut Toolstack, svc: &mut dyn Services) -> bool {
        let had = !q.to_stack.is_empty();
        let t = now();
        let mut work = self.iface.poll(t, &mut QueuePhy(q), &mut self.sockets) != smoltcp::iface::PollResult::None;
        work |= had;
        let ns = time::now_ns();
        for k in 0..self.conns.len() {
            work |= self.serve(k, ns, ts, svc);
        }
        let _ = self.iface.poll(now(), &mut QueuePhy(q), &mut self.sockets);
        work
    }

    /// Whether an answer is still on its way out (dom0 waits for it before
    /// it ends: at most [`IDLE_NS`] from its connection's start).
    pub fn flushing(&mut self) -> bool {
        self.conns.iter().any(|c| {
            let s = self.sockets.get::<tcp::Socket>(c.handle);
            c.out.as_ref().is_some_and(|o| c.sent < o.len() || s.send_queue() > 0) && s.is_open()
        })
    }

    /// When smoltcp next needs a poll (its retransmit and keep-alive
    /// timers), in system time; at most 100 ms away.
    pub fn next_poll(&mut self) -> u64 {
        let ns = time::now_ns();
        let wait = self.iface.poll_delay(now(), &self.sockets).map_or(100_000_000, |d| d.total_micros() * 1000);
        ns + wait.min(100_000_000)
    }

    fn serve(&mut self, k: usize, ns: u64, ts: &mut Toolstack, svc: &mut dyn Services) -> bool {
        let c = &mut self.conns[k];
        let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
        if !s.is_open() {
            // Closed (or never opened): listen again, afresh.
            c.req.clear();
            c.out = None;
            c.sent = 0;
            c.since = 0;
            let _ = s.listen(self.port);
            return false;
        }
        if !s.is_active() {
            return false;
        }
        if c.since == 0 {
            c.since = ns;
        }
        if ns.saturating_sub(c.since) > IDLE_NS {
            s.abort();
            return true;
        }
        let mut work = false;
        if c.out.is_none() && s.can_recv() {
            let room = MAX_REQUEST + 1 - c.req.len().min(MAX_REQUEST + 1);
            let req = &mut c.req;
            let _ = s.recv(|d| {
                let n = d.len().min(room);
                req.extend_from_slice(&d[..n]);
                (d.len(), ())
            });
            work = true;
            if let Some((status, body)) = answer(&c.req, &self.token, ts, svc) {
                self.requests += 1;
                c.out = Some(response(status, &body));
                c.sent = 0;
            }
        }
        if let Some(out) = c.out.as_ref() {
            if c.sent < out.len() && s.can_send() {
                c.sent += s.send_slice(&out[c.sent..]).unwrap_or(0);
                work = true;
            }
            if c.sent >= out.len() {
                s.close();
            }
        }
        work
    }
}

/// The answer to the request in `req` (head and body so far), or `None`
/// while it is incomplete.
fn answer(req: &[u8], token: &str, ts: &mut Toolstack, svc: &mut dyn Services) -> Option<(u16, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Request::new(&mut headers);
    let refused = |status: u16, why: String| {
        println!("api: refused a request: {status} {why}");
        Some(error(status, why))
    };
    let head = match r.parse(req) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if req.len() <= MAX_REQUEST => return None,
        Ok(httparse::Status::Partial) => return refused(413, format!("a request is at most {MAX_REQUEST} bytes")),
        Err(e) => return refused(400, format!("malformed request: {e}")),
    };
    let (Some(method), Some(path)) = (r.method, r.path) else {
        return Some(error(400, String::from("no method or path")));
    };
    let header = |name: &str| r.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let len = match header("content-length")
        .map(|v| core::str::from_utf8(v).ok().and_then(|v| v.trim().parse::<usize>().ok()))
    {
        None => 0,
        Some(Some(n)) => n,
        Some(None) => return refused(400, String::from("a bad Content-Length")),
    };
    if head.saturating_add(len) > MAX_REQUEST {
        return refused(413, format!("a request is at most {MAX_REQUEST} bytes"));
    }
    if req.len() < head + len {
        return None;
    }
    let body = &req[head..head + len];
    let authorized =
        header("authorization").and_then(|v| v.strip_prefix(b"Bearer ")).is_some_and(|t| same(t, token.as_bytes()));
    let reply =
        if authorized { route(method, path, body, ts, svc) } else { error(401, String::from("no or a wrong token")) };
    println!("api: {method} {} -> {}", printable(path), reply.0);
    Some(reply)
}

/// Whether `a` and `b` are equal, in time that depends only on their
/// lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `path` for dom0's console: at most 64 bytes, nothing unprintable.
fn printable(path: &str) -> String {
    path.chars().take(64).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// A body's parse, or a 400 saying why.
fn body_of<T>(r: Result<T, toolstack_api::JsonError>) -> Result<T, (u16, String)> {
    r.map_err(|e| error(400, format!("bad JSON body: {e}")))
}

fn route(method: &str, path: &str, body: &[u8], ts: &mut Toolstack, svc: &mut dyn Services) -> (u16, String) {
    let path = path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let r = match (method, parts.as_slice()) {
        ("GET", ["v1", "domains"]) => Ok((200, domains())),
        ("GET", ["v1", "domains", dom]) => toolstack::resolve(dom).map(|d| (200, domain_json(&d))).map_err(fail),
        ("POST", ["v1", "domains"]) => create(body, ts, svc),
        ("DELETE", ["v1", "domains", dom]) => acted(dom, Act::Destroy, "destroyed"),
        ("POST", ["v1", "domains", dom, "pause"]) => acted(dom, Act::Pause, "paused"),
        ("POST", ["v1", "domains", dom, "unpause"]) => acted(dom, Act::Unpause, "unpaused"),
        ("PUT", ["v1", "domains", dom, "sched"]) => body_of(SchedBody::parse(body)).and_then(|b| {
            let (d, warp) = toolstack::set_sched(dom, b.weight, b.warp_us).map_err(fail)?;
            Ok((200, format!("{{\"id\":{},\"weight\":{},\"warp_us\":{warp}}}", d.domid, b.weight)))
        }),
        ("POST", ["v1", "domains", dom, "console"]) => console_input(dom, body, svc),
        ("GET", ["v1", "templates"]) => Ok((200, templates(ts))),
        ("GET", ["v1", "info"]) => Ok((200, info())),
        ("POST", ["v1", "shutdown"]) => shutdown(body, ts),
        (_, ["v1", "domains"] | ["v1", "domains", _] | ["v1", "templates"] | ["v1", "info"] | ["v1", "shutdown"])
        | (_, ["v1", "domains", _, "pause" | "unpause" | "sched" | "console"]) => {
            Err(error(405, format!("{} does not take {method}", printable(path))))
        }
        _ => Err(error(404, format!("no such path: {}", printable(path)))),
    };
    r.unwrap_or_else(|e| e)
}

fn fail(f: Failure) -> (u16, String) {
    error(f.status(), format!("{f}"))
}

fn error(status: u16, why: String) -> (u16, String) {
    (status, format!("{{\"error\":{}}}", json_str(&why)))
}

fn acted(dom: &str, what: Act, key: &str) -> Result<(u16, String), (u16, String)> {
    let d = toolstack::act(dom, what).map_err(fail)?;
    Ok((200, format!("{{\"{key}\":{}}}", d.domid)))
}

fn create(body: &[u8], ts: &mut Toolstack, svc: &mut dyn Services) -> Result<(u16, String), (u16, String)> {
    let a: CreateArgs = body_of(CreateBody::parse(body))?;
    let c = ts.create_domain(&a, svc).map_err(fail)?;
    println!("api: created dom{} '{}' from template '{}'", c.domid, c.name, a.template);
    Ok((
        201,
        format!(
            "{{\"id\":{},\"name\":{},\"mem_kib\":{},\"paused\":{}}}",
            c.domid,
            json_str(&c.name),
            c.mem_kib,
            c.paused
        ),
    ))
}

/// Console input: at most [`toolstack_api::MAX_STRING`] bytes a request
/// (the reader refuses a longer string), which the domain's 2 KiB input
/// ring takes whole or not at all.
fn console_input(dom: &str, body: &[u8], svc: &mut dyn Services) -> Result<(u16, String), (u16, String)> {
    let b = body_of(ConsoleBody::parse(body))?;
    let d = toolstack::resolve(dom).map_err(fail)?;
    let id = u16::try_from(d.domid).map_err(|_| error(404, format!("no domain {}", d.domid)))?;
    svc.consoles().send_to(id, b.input.as_bytes()).map_err(|r| error(409, r.0))?;
    Ok((200, format!("{{\"id\":{id},\"sent\":{}}}", b.input.len())))
}

fn shutdown(body: &[u8], ts: &mut Toolstack) -> Result<(u16, String), (u16, String)> {
    let b = body_of(ShutdownBody::parse(body))?;
    let gone = ts.shutdown(b.force).map_err(fail)?;
    let ids: Vec<String> = gone.iter().filter(|(_, r)| r.is_ok()).map(|(d, _)| format!("{}", d.domid)).collect();
    println!("api: shutdown: dom0 ends once every other domain has");
    Ok((200, format!("{{\"destroyed\":[{}]}}", ids.join(","))))
}

fn domain_json(d: &DomainInfo) -> String {
    format!(
        "{{\"id\":{},\"name\":{},\"state\":\"{}\",\"mem_kib\":{},\"cpu_ms\":{},\"weight\":{},\"warp_us\":{}}}",
        d.domid,
        json_str(d.name()),
        toolstack::state(d),
        d.nr_pages * 4,
        d.cpu_time_ns / 1_000_000,
        d.weight,
        d.warp_us
    )
}

fn domains() -> String {
    let all: Vec<String> = domctl::domains().map(|d| domain_json(&d)).collect();
    format!("{{\"domains\":[{}]}}", all.join(","))
}

fn templates(ts: &Toolstack) -> String {
    let all: Vec<String> = ts
        .templates()
        .iter()
        .map(|t| {
            format!(
                "{{\"name\":{},\"mem_kib\":{},\"weight\":{},\"warp_us\":{},\"image_bytes\":{},\"cmdline\":{}}}",
                json_str(t.name()),
                t.mem_kib,
                t.weight,
                t.warp_us,
                t.image_len,
                json_str(t.cmdline())
            )
        })
        .collect();
    format!("{{\"templates\":[{}]}}", all.join(","))
}

fn info() -> String {
    let p = domctl::phys_info().unwrap_or_default();
    format!(
        "{{\"total_frames\":{},\"free_frames\":{},\"heap_used\":{},\"ports_in_use\":{},\"domains\":{},\"max_domains\":{},\"dying\":{}}}",
        p.total_frames, p.free_frames, p.heap_used, p.ports_in_use, p.domains, p.max_domains, p.dying
    )
}

/// An HTTP/1.1 response with a JSON body; the connection closes after it.
fn response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len() + 1
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out.push(b'\n');
    out
}
