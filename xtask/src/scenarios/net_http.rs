//! `net-http`: a domU's HTTP server (`sample-guests/src/bin/httpd.rs`,
//! smoltcp over netfront) reached from the host with `curl`, through
//! QEMU's user network (`hostfwd` to 10.0.2.15:80, the address its DHCP
//! hands out first), dom0's real NIC as the bridge's uplink, the bridge
//! and netback.

use super::{entry, finish, need, Scenario};
use crate::qemu::devices::Proto;
use crate::qemu::Outcome;
use crate::Result;
use ringfence_bundle::Expect;
use ringfence_bundle_writer::BundleWriter;
use std::process::Command;
use std::time::Duration;

/// The line the server prints once it listens.
const LISTENING: &str = "[web] httpd: listening on 10.0.2.15:80";
/// Pages fetched before the stop.
const FETCHES: u32 = 3;
/// Connections opened and closed without a byte before the fetches (twice
/// the server's backlog of sockets: none may be lost to them).
const PROBES: u32 = 8;

/// `curl -s` of `url` (`http://127.0.0.1:PORT/PATH`): the body, or why
/// not. Without curl on the machine (`.ci/run` installs it), the same GET
/// by hand over a TCP socket, said so on stderr.
pub fn curl(url: &str) -> Result<String> {
    let out = match Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "--retry", "3", "--retry-connrefused", url])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("net-http: no curl on this machine: fetching {url} with a plain TCP client");
            return plain_get(url);
        }
        Err(e) => return Err(format!("running curl: {e}")),
    };
    if !out.status.success() {
        return Err(format!("curl {url}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("curl {url}: not UTF-8: {e}"))
}

/// An HTTP/1.0 GET of `url` over a TCP socket: the body.
fn plain_get(url: &str) -> Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http URL: {url}"))?;
    let (host, path) = rest.split_once('/').map_or((rest, String::from("/")), |(h, p)| (h, format!("/{p}")));
    let mut last = String::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect(host) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
                // One write: `write!` on a socket sends each piece of the
                // format on its own, and a server that answers after the
                // first piece and closes resets the connection.
                let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
                s.write_all(req.as_bytes()).map_err(|e| format!("{url}: {e}"))?;
                let mut reply = String::new();
                s.read_to_string(&mut reply).map_err(|e| format!("{url}: {e}"))?;
                return reply
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .ok_or_else(|| format!("{url}: no body in {reply:?}"));
            }
            Err(e) => {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Err(format!("{url}: {last}"))
}

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "net-http",
        what: "a domU serves HTTP (smoltcp over its netfront, its address from QEMU's DHCP through the bridge and dom0's uplink) and the host fetches pages from it with curl through QEMU's port forward, after 8 connections closed without a byte and beside 2 held open silently (none takes a socket from the server for good); each body names the domU and counts the requests, and GET /stop ends it",
        bundle: |imgs| {
            let mut w = BundleWriter::new();
            let cmdline = "serve uplink=10 vif=web:10:02-00-00-00-00-80";
            w.domain(super::net_split::net_dom0(imgs, cmdline)?);
            w.domain(entry(imgs, "web", "httpd", 1536, "dhcp s=90", Expect::Poweroff)?);
            finish(w, imgs)
        },
        append: "",
        icount: false,
        rig: Some(|rig| {
            rig.disk(4 << 20)?;
            let nic = rig.nic(&[(Proto::Tcp, 80)])?;
            let web = nic.host_addr(Proto::Tcp, 80)?;
            rig.after_line(LISTENING, Duration::from_secs(60), move || {
                // Port probes and idle clients first: twice the server's
                // backlog of connections closed at once without a byte,
                // and two held open, silent, while the pages are fetched.
                let connect = || std::net::TcpStream::connect(web).map_err(|e| format!("connecting to {web}: {e}"));
                for _ in 0..PROBES {
                    drop(connect()?);
                }
                let held = [connect()?, connect()?];
                std::thread::sleep(Duration::from_millis(300));
                let mut seen = Vec::new();
                for i in 1..=FETCHES {
                    let body = curl(&format!("http://{web}/"))?;
                    let want = format!("Hello from web, a Ringfence domU (request {i})");
                    if !body.contains(&want) {
                        return Err(format!("fetch {i}: wanted {want:?}, got {body:?}"));
                    }
                    seen.push(body.trim().to_string());
                }
                let missing = curl(&format!("http://{web}/nothing"))?;
                if !missing.contains("no such page") {
                    return Err(format!("GET /nothing: got {missing:?}"));
                }
                let bye = curl(&format!("http://{web}/stop"))?;
                if !bye.contains("bye") {
                    return Err(format!("GET /stop: got {bye:?}"));
                }
                drop(held);
                Ok(format!(
                    "curl fetched {FETCHES} pages from the domU after {PROBES} empty connections and beside 2 silent ones: {:?}, a 404 and the stop",
                    seen
                ))
            });
            Ok(())
        }),
        expect: Outcome::Pass,
        check: |out| {
            need(out, "[web] httpd: DHCP lease 10.0.2.15/24 from 10.0.2.2")?;
            need(out, LISTENING)?;
            need(out, &format!("[web] web: served {} requests (0 malformed), stopped by GET /stop: true: ok", FETCHES + 2))?;
            Ok(())
        },
    }]
}

#[cfg(test)]
mod tests {
    use super::plain_get;
    use std::io::{Read, Write};

    #[test]
    fn the_plain_client_gets_the_body() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // The whole request before the answer: closing with bytes
            // unread would reset the connection under the client.
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed before its request ended: {req:?}");
                req.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
            s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n").unwrap();
            line
        });
        assert_eq!(plain_get(&format!("http://{addr}/x")).unwrap(), "hello\n");
        assert_eq!(t.join().unwrap(), "GET /x HTTP/1.0");
        assert!(plain_get("ftp://nowhere").is_err());
    }
}
