//! `cargo xtask ctl`: the host's client of dom0's management API (HTTP/JSON,
//! see `sample-guests/src/bin/dom0/api.rs`), with the shell's commands.
//!
//! ```text
//! $ export RF_API=127.0.0.1:40123 RF_TOKEN=ringfence-demo   # `cargo xtask run` prints both
//! $ cargo xtask ctl create hog name=busy
//! created dom1 'busy' (512 KiB)
//! $ cargo xtask ctl list
//!   id name                     state     mem KiB    cpu ms weight warp us
//!    0 dom0                     running      3072       123    100       0
//!    1 busy                     ready         512        40    100       0
//! $ cargo xtask ctl destroy busy
//! destroyed dom1
//! ```
//! `--api ADDR` and `--token T` stand for the variables; `--json` prints
//! the API's answer as it came. A refused request prints the API's status
//! and reason and fails.

use crate::Result;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A connection's settings: where the API is and its token.
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub token: String,
}

/// An answer: its status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The API's `error`, if it gave one.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }
}

impl Client {
    /// A client of the API at `addr` (`HOST:PORT`) with `token`.
    pub fn new(addr: &str, token: &str) -> Result<Client> {
        let addr = addr
            .to_socket_addrs()
            .map_err(|e| format!("API address '{addr}': {e}"))?
            .next()
            .ok_or_else(|| format!("API address '{addr}' resolves to nothing"))?;
        Ok(Client { addr, token: token.into() })
    }

    /// Sends one request (`body`, if any, as JSON) and reads the answer.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        );
        self.raw(format!("{head}{body}").as_bytes())
    }

    /// Sends `bytes` as they are (a malformed request, say) and reads the
    /// answer.
    pub fn raw(&self, bytes: &[u8]) -> Result<Reply> {
        let what = |e: std::io::Error| format!("the API at {}: {e}", self.addr);
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10)).map_err(what)?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(what)?;
        s.write_all(bytes).map_err(what)?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).map_err(what)?;
        let line = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).lines().next().unwrap_or("").to_string();
        parse_reply(&got).map_err(|e| format!("{line}: {e}"))
    }
}

/// The status and JSON body of an HTTP response.
pub fn parse_reply(got: &[u8]) -> Result<Reply> {
    let text = String::from_utf8_lossy(got);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in the answer: {head:?}"))?;
    let body =
        serde_json::from_str(body.trim()).map_err(|e| format!("the answer's body is not JSON ({e}): {body:?}"))?;
    Ok(Reply { status, body })
}

/// The request a shell-style command line makes: method, path, body.
pub fn request_of(words: &[String]) -> Result<(&'static str, String, Option<Value>)> {
    let usage = "commands: list, templates, info, create TEMPLATE [name= mem= weight= warp= cmdline= paused], destroy DOM, pause DOM, unpause DOM, set-weight DOM WEIGHT [WARP], console DOM TEXT... (a line for its console input), shutdown [force]";
    let (cmd, args) = words.split_first().ok_or(usage)?;
    let one = |what: &str| -> Result<String> {
        match args {
            [d] => Ok(d.clone()),
            _ => Err(format!("usage: {what} DOM (an id or a name)")),
        }
    };
    Ok(match cmd.as_str() {
        "list" => ("GET", "/v1/domains".into(), None),
        "templates" => ("GET", "/v1/templates".into(), None),
        "info" => ("GET", "/v1/info".into(), None),
        "destroy" => ("DELETE", format!("/v1/domains/{}", one("destroy")?), None),
        "pause" => ("POST", format!("/v1/domains/{}/pause", one("pause")?), None),
        "unpause" => ("POST", format!("/v1/domains/{}/unpause", one("unpause")?), None),
        "set-weight" => {
            let (dom, w, x) = match args {
                [d, w] => (d, w, None),
                [d, w, x] => (d, w, Some(x)),
                _ => return Err("usage: set-weight DOM WEIGHT [WARP_US]".into()),
            };
            let num = |v: &str, what: &str| v.parse::<u32>().map_err(|_| format!("{what} = '{v}' is not a number"));
            let mut b = json!({ "weight": num(w, "WEIGHT")? });
            if let Some(x) = x {
                b["warp_us"] = json!(num(x, "WARP_US")?);
            }
            ("PUT", format!("/v1/domains/{dom}/sched"), Some(b))
        }
        "create" => {
            let (t, opts) = args
                .split_first()
                .ok_or("usage: create TEMPLATE [name=N] [mem=KiB|NM] [weight=W] [warp=US] [cmdline=...] [paused]")?;
            let mut b = json!({ "template": t });
            for o in opts {
                let num = |v: &str| v.parse::<u32>().map_err(|_| format!("'{o}': not a number"));
                match o.split_once('=') {
                    Some(("name", v)) => b["name"] = json!(v),
                    Some(("mem", v)) => {
                        let kib = match v.strip_suffix(['M', 'm']) {
                            Some(m) => num(m)?.checked_mul(1024).ok_or(format!("'{o}': too large"))?,
                            None => num(v.strip_suffix(['K', 'k']).unwrap_or(v))?,
                        };
                        b["mem_kib"] = json!(kib);
                    }
                    Some(("weight", v)) => b["weight"] = json!(num(v)?),
                    Some(("warp", v)) => b["warp_us"] = json!(num(v)?),
                    Some(("cmdline", v)) => b["cmdline"] = json!(v),
                    Some(("from", v)) => b["from"] = json!(v),
                    None if o == "paused" => b["paused"] = json!(true),
                    _ => {
                        return Err(format!(
                            "unknown option '{o}' (name=, mem=, weight=, warp=, cmdline=, paused, from=)"
                        ))
                    }
                }
            }
            ("POST", "/v1/domains".into(), Some(b))
        }
        "console" => match args {
            [dom, text @ ..] if !text.is_empty() => (
                "POST",
                format!("/v1/domains/{dom}/console"),
                Some(json!({ "input": format!("{}\n", text.join(" ")) })),
            ),
            _ => return Err("usage: console DOM TEXT... (sent as one line to its console input)".into()),
        },
        "shutdown" => match args {
            [] => ("POST", "/v1/shutdown".into(), None),
            [f] if f == "force" => ("POST", "/v1/shutdown".into(), Some(json!({ "force": true }))),
            _ => return Err("usage: shutdown [force]".into()),
        },
        other => return Err(format!("unknown command '{other}'; {usage}")),
    })
}

/// What the shell would print for `cmd`'s successful answer `body`.
pub fn show(cmd: &str, body: &Value) -> String {
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    match cmd {
        "list" => {
            let mut out = format!(
                "  {:>4} {:<24} {:<8} {:>8} {:>9} {:>6} {:>7}\n",
                "id", "name", "state", "mem KiB", "cpu ms", "weight", "warp us"
            );
            for d in body["domains"].as_array().into_iter().flatten() {
                out += &format!(
                    "  {:>4} {:<24} {:<8} {:>8} {:>9} {:>6} {:>7}\n",
                    n(d, "id"),
                    s(d, "name"),
                    s(d, "state"),
                    n(d, "mem_kib"),
                    n(d, "cpu_ms"),
                    n(d, "weight"),
                    n(d, "warp_us")
                );
            }
            out
        }
        "templates" => body["templates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!("  {:<16} {:>6} KiB  cmdline \"{}\"\n", s(t, "name"), n(t, "mem_kib"), s(t, "cmdline")))
            .collect(),
        "create" => format!(
            "created dom{} '{}' ({} KiB{})\n",
            n(body, "id"),
            s(body, "name"),
            n(body, "mem_kib"),
            if body["paused"] == json!(true) { ", paused" } else { "" }
        ),
        "destroy" => format!("destroyed dom{}\n", n(body, "destroyed")),
        "pause" => format!("paused dom{}\n", n(body, "paused")),
        "console" => format!("sent {} bytes to dom{}'s console\n", n(body, "sent"), n(body, "id")),
        "unpause" => format!("unpaused dom{}\n", n(body, "unpaused")),
        "set-weight" => {
            format!("dom{}: weight {}, warp {} us\n", n(body, "id"), n(body, "weight"), n(body, "warp_us"))
        }
        _ => format!("{body:#}\n"),
    }
}

/// `cargo xtask ctl [--api ADDR] [--token T] [--json] COMMAND ARGS...`
pub fn main(args: &[String]) -> Result<()> {
    let mut words = Vec::new();
    let (mut api, mut token, mut raw) = (std::env::var("RF_API").ok(), std::env::var("RF_TOKEN").ok(), false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--api" => api = it.next().cloned(),
            "--token" => token = it.next().cloned(),
            "--json" => raw = true,
            _ => words.push(a.clone()),
        }
    }
    if words.is_empty() || words[0] == "help" {
        println!(
            "cargo xtask ctl [--api HOST:PORT] [--token T] [--json] COMMAND [ARGS]\n{}",
            request_of(&[]).unwrap_err()
        );
        return Ok(());
    }
    let api = api.ok_or("no API address: set RF_API=HOST:PORT or pass --api (`cargo xtask run` prints it)")?;
    let token = token.ok_or("no token: set RF_TOKEN or pass --token (dom0's token= word)")?;
    let (method, path, body) = request_of(&words)?;
    let r = Client::new(&api, &token)?.request(method, &path, body.as_ref())?;
    if !(200..300).contains(&r.status) {
        return Err(format!("{} {path}: {}: {}", method, r.status, r.error().unwrap_or("(no reason given)")));
    }
    if raw {
        println!("{}", r.body);
    } else {
        print!("{}", show(&words[0], &r.body));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn commands_become_requests() {
        let (m, p, b) = request_of(&w("create hog name=busy mem=2M paused")).unwrap();
        assert_eq!((m, p.as_str()), ("POST", "/v1/domains"));
        assert_eq!(b.unwrap(), json!({"template":"hog","name":"busy","mem_kib":2048,"paused":true}));
        let (m, p, b) = request_of(&w("set-weight idle 200 50")).unwrap();
        assert_eq!((m, p.as_str(), b.unwrap()), ("PUT", "/v1/domains/idle/sched", json!({"weight":200,"warp_us":50})));
        assert_eq!(request_of(&w("destroy 3")).unwrap().1, "/v1/domains/3");
        assert!(request_of(&w("create hog mem=lots")).unwrap_err().contains("not a number"));
        assert!(request_of(&w("frobnicate")).unwrap_err().starts_with("unknown command 'frobnicate'"));
        assert!(request_of(&w("destroy")).unwrap_err().starts_with("usage: destroy"));
        let (m, p, b) = request_of(&w("console talk hello there")).unwrap();
        assert_eq!((m, p.as_str(), b.unwrap()), ("POST", "/v1/domains/talk/console", json!({"input":"hello there\n"})));
        assert!(request_of(&w("console talk")).unwrap_err().starts_with("usage: console"));
    }

    #[test]
    fn answers_are_parsed_and_shown() {
        let r = parse_reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\n{\"error\":\"no such\"}\n").unwrap();
        assert_eq!((r.status, r.error()), (404, Some("no such")));
        assert!(parse_reply(b"garbage").is_err());
        let list = json!({"domains":[{"id":0,"name":"dom0","state":"running","mem_kib":2560,"cpu_ms":5,"weight":100,"warp_us":0}]});
        assert!(show("list", &list).contains("   0 dom0                     running      2560"));
    }
}
