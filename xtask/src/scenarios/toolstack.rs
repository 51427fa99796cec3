//! The toolstack's scenarios: dom0's shell on the serial console, driven by
//! a script that types each command after the line that ends the one
//! before ([`super::rig::Rig::type_after`]); the checks read the replies,
//! the domains' own lines and the store's.
//!
//! Every domain but dom0 comes from a template of the bundle (the
//! manifest's `[[image]]`): `hog` (spins for ten minutes), `sleeper`
//! (greets, then waits to be destroyed), `quiet` (waits at once; the
//! churn's).

use super::{finish, guest, need, Scenario};
use crate::images::{loadable, Images};
use crate::qemu::Outcome;
use crate::Result;
use ringfence_bundle_writer::{BundleWriter, DomainEntry};
use std::time::Duration;

/// dom0's first line once its shell reads input.
const READY: &str = "[dom0] toolstack: shell ready";
/// Cycles of the churn (the leak check asks for 1000).
const CHURN: u32 = 1000;

/// The API's token in `toolstack-api`.
const TOKEN: &str = "scenario-token-7f3a";
/// The API's port in dom0.
const API_PORT: u16 = 8080;

/// dom0 serving with its shell on until `shutdown`, and the templates.
fn bundle(imgs: &Images) -> Result<Option<Vec<u8>>> {
    with_dom0(imgs, "serve shell stay")
}

/// dom0 with `cmdline`, and the templates.
fn with_dom0(imgs: &Images, cmdline: &str) -> Result<Option<Vec<u8>>> {
    with_dom0_and(imgs, cmdline, None)
}

/// As [`with_dom0`], with one more template.
fn with_dom0_and(imgs: &Images, cmdline: &str, extra: Option<DomainEntry>) -> Result<Option<Vec<u8>>> {
    let mut w = BundleWriter::new();
    w.domain(super::net_split::net_dom0(imgs, cmdline)?);
    let template = |name: &str, image: &str, kib: u32, cmdline: &str| -> Result<DomainEntry> {
        Ok(DomainEntry::new(name, loadable(&guest(imgs, image)?)?, kib).cmdline(cmdline).template(true))
    };
    w.domain(template("hog", "hog", 512, "millis=600000")?);
    w.domain(template("sleeper", "hello", 512, "rounds=1 linger")?);
    w.domain(template("quiet", "hello", 256, "quiet linger")?);
    w.domain(template("tied", "tied", 512, "")?);
    if let Some(e) = extra {
        w.domain(e);
    }
    finish(w, imgs)
}

/// The pattern of the clone scenario's template disk.
const CLONE_SEED: u64 = 4242;
/// Records each clone logs over its overlay.
const CLONE_RECORDS: u64 = 8;

/// The clone scenario's real disk: the template disk, then the space
/// clones are made in (left as it is: dom0 formats each overlay).
fn clone_plan() -> crate::vbd::Plan {
    use crate::vbd::{Kind, Plan};
    let mut p = Plan::default();
    p.add("", Kind::Template(CLONE_SEED), 2);
    p.add("", Kind::Raw, 8);
    p
}

/// dom0's words for the plan: the template disk and the clone space.
fn clone_words() -> String {
    let p = clone_plan();
    let (t, pool) = (p.vbds[0].region, p.vbds[1].region);
    format!("vtemplate=base:{}:{} vpool={}:{}", t.lba, t.sectors, pool.lba, pool.sectors)
}

/// A clone's overlay, as dom0 said where it made it in its `created`
/// line: `its disk an overlay of 'base' at LBA L, N sectors`.
fn clone_of(out: &str, name: &str) -> Result<crate::vbd::Vbd> {
    let line = out
        .lines()
        .find(|l| l.contains(&format!("'{name}' from template")) && l.contains("its disk an overlay of"))
        .ok_or_else(|| format!("no created line for clone '{name}'"))?;
    let bad = || format!("no LBA and size in {line:?}");
    let at = &line[line.find("at LBA ").ok_or_else(bad)? + "at LBA ".len()..];
    let (lba, rest) = at.split_once(", ").ok_or_else(bad)?;
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u64>();
    let (lba, sectors) = (digits(lba).map_err(|_| bad())?, digits(rest).map_err(|_| bad())?);
    Ok(crate::vbd::Vbd {
        domain: name.into(),
        kind: crate::vbd::Kind::Overlay(0),
        region: disk_images::Region::new(lba, sectors),
    })
}

/// The figures of the `info` lines in `out`, in order: (frames free,
/// hypervisor heap, ports in use, domains, dying).
fn infos(out: &str) -> Vec<[u64; 5]> {
    dom0_lines(out)
        .filter_map(|l| l.strip_prefix("frames: "))
        .map(|l| {
            let n: Vec<u64> = l.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
            // free, total, heap, ports, domains, max, dying
            [n[0], n[2], n[3], n[4], n[6]]
        })
        .collect()
}

/// The lines of `out` that `dom0` printed, tag removed.
fn dom0_lines(out: &str) -> impl Iterator<Item = &str> {
    out.lines().filter_map(|l| l.strip_prefix("[dom0] "))
}

/// The row of `list` or `top` output for domain `name`, in the stretch of
/// `out` after `from`.
fn row<'a>(out: &'a str, from: &str, name: &str) -> Result<&'a str> {
    let at = out.find(from).ok_or_else(|| format!("missing from the console: {from:?}"))?;
    dom0_lines(&out[at..])
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .ok_or_else(|| format!("no row for '{name}' after {from:?}"))
}

/// `text` appears, and after `before`.
fn after(out: &str, before: &str, text: &str) -> Result<()> {
    let b = out.find(before).ok_or_else(|| format!("missing from the console: {before:?}"))?;
    if out[b..].contains(text) {
        Ok(())
    } else {
        Err(format!("{text:?} does not come after {before:?}"))
    }
}

/// `toolstack-api`'s host side: every operation and refusal through the
/// API, half through the client library and half through the real
/// `cargo xtask ctl` command line; the summary, or the first thing wrong.
fn api_session(addr: std::net::SocketAddr) -> Result<String> {
    use crate::ctl::{Client, Reply};
    use serde_json::{json, Value};
    let c = Client::new(&addr.to_string(), TOKEN)?;
    // The first answer waits for dom0's stack to learn the gateway.
    let start = std::time::Instant::now();
    let first = loop {
        match c.request("GET", "/v1/info", None) {
            Ok(r) => break r,
            Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(format!("no answer in 30 s: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let want = |r: &Reply, status: u16, what: &str| -> Result<()> {
        if r.status == status {
            Ok(())
        } else {
            Err(format!("{what}: wanted {status}, got {} {}", r.status, r.body))
        }
    };
    want(&first, 200, "GET /v1/info")?;
    let free = first.body["free_frames"].as_u64().ok_or("info without free_frames")?;
    // Without the token, or with a wrong one: 401, nothing done.
    let anon = Client::new(&addr.to_string(), "not-the-token")?;
    want(&anon.request("POST", "/v1/domains", Some(&json!({"template":"hog"})))?, 401, "a wrong token")?;
    let bare = c.raw(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n")?;
    want(&bare, 401, "no token")?;
    let r = c.request("POST", "/v1/domains", Some(&json!({"template":"hog","name":"busy"})))?;
    want(&r, 201, "create busy")?;
    if r.body["id"] != json!(1) || r.body["name"] != json!("busy") {
        return Err(format!("create busy: {}", r.body));
    }
    let r = c.request(
        "POST",
        "/v1/domains",
        Some(&json!({"template":"sleeper","name":"idle","mem_kib":1024,"paused":true})),
    )?;
    want(&r, 201, "create idle")?;
    if r.body["paused"] != json!(true) || r.body["mem_kib"] != json!(1024) {
        return Err(format!("create idle: {}", r.body));
    }
    let find = |name: &str| -> Result<Value> {
        let r = c.request("GET", "/v1/domains", None)?;
        want(&r, 200, "list")?;
        Ok(r.body["domains"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["name"] == json!(name))
            .cloned()
            .unwrap_or(Value::Null))
    };
    if find("idle")?["state"] != json!("paused") {
        return Err(format!("idle is not paused: {}", find("idle")?));
    }
    want(&c.request("POST", "/v1/domains/busy/pause", None)?, 200, "pause busy")?;
    if find("busy")?["state"] != json!("paused") {
        return Err(format!("busy is not paused: {}", find("busy")?));
    }
    want(&c.request("POST", "/v1/domains/idle/unpause", None)?, 200, "unpause idle")?;
    let r = c.request("PUT", "/v1/domains/idle/sched", Some(&json!({"weight":200,"warp_us":50})))?;
    want(&r, 200, "set idle's weight")?;
    let idle = c.request("GET", "/v1/domains/idle", None)?;
    if idle.body["weight"] != json!(200) || idle.body["warp_us"] != json!(50) || idle.body["state"] == json!("paused") {
        return Err(format!("idle after unpause and set-weight: {}", idle.body));
    }
    // Console input: a domain that echoes it, sent a line through the API
    // (once dom0's daemon has its console) and `bye` through ctl below.
    let r = c.request("POST", "/v1/domains", Some(&json!({"template":"sleeper","name":"talk","cmdline":"echo"})))?;
    want(&r, 201, "create talk")?;
    let line = json!({"input":"ping from the host\n"});
    let sent = loop {
        let r = c.request("POST", "/v1/domains/talk/console", Some(&line))?;
        if r.status != 409 || start.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    want(&sent, 200, "console input to talk")?;
    if sent.body["sent"] != json!(19) {
        return Err(format!("console input to talk: {}", sent.body));
    }
    // Each refusal with its status and a reason.
    // Longer than the API reads in a string (toolstack-api's MAX_STRING, 1024).
    let too_long = json!({ "input": "x".repeat(1025) });
    let refusals: [(&str, &str, Option<Value>, u16, &str); 11] = [
        ("POST", "/v1/domains/talk/console", Some(too_long), 400, "a string is too long"),
        ("POST", "/v1/domains/0/console", Some(json!({"input":"x"})), 409, "is not the daemon's"),
        ("GET", "/v1/domains/talk/console", None, 405, "does not take GET"),
        ("POST", "/v1/domains", Some(json!({"template":"nosuch"})), 404, "no template 'nosuch'"),
        ("POST", "/v1/domains", Some(json!({"template":"hog","mem_kib":"abc"})), 400, "bad JSON body"),
        ("POST", "/v1/domains", Some(json!({"template":"hog","bogus":1})), 400, "bad JSON body"),
        ("POST", "/v1/domains", Some(json!({"template":"hog","name":"bad name"})), 400, "the name may hold only"),
        ("DELETE", "/v1/domains/999", None, 404, "no domain 999"),
        ("DELETE", "/v1/domains/0", None, 409, "dom0 is the toolstack's own domain"),
        ("PATCH", "/v1/domains", None, 405, "does not take PATCH"),
        ("GET", "/v1/nothing", None, 404, "no such path"),
    ];
    for (m, p, b, status, why) in refusals {
        let r = c.request(m, p, b.as_ref())?;
        want(&r, status, &format!("{m} {p}"))?;
        if !r.error().is_some_and(|e| e.contains(why)) {
            return Err(format!("{m} {p}: the reason {:?} does not say {why:?}", r.error()));
        }
    }
    let r = c.raw(b"GARBAGE\r\n\r\n")?;
    want(&r, 400, "a malformed request")?;
    let big = format!(
        "POST /v1/domains HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 9000\r\n\r\n{}",
        "x".repeat(9000)
    );
    want(&c.raw(big.as_bytes())?, 413, "a 9000-byte body")?;
    // The command-line client, as a user runs it.
    let ctl = |args: &[&str], token: &str| -> Result<(bool, String)> {
        let out = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .arg("ctl")
            .args(["--api", &addr.to_string(), "--token", token])
            .args(args)
            .output()
            .map_err(|e| format!("running ctl: {e}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    };
    let (ok, list) = ctl(&["list"], TOKEN)?;
    if !ok || !list.contains(" idle ") || !list.contains(" busy ") {
        return Err(format!("`ctl list`: {list}"));
    }
    let (ok, text) = ctl(&["destroy", "busy"], TOKEN)?;
    if !ok || !text.contains("destroyed dom1") {
        return Err(format!("`ctl destroy busy`: {text}"));
    }
    let (ok, text) = ctl(&["console", "talk", "bye"], TOKEN)?;
    if !ok || !text.contains("sent 4 bytes to dom3's console") {
        return Err(format!("`ctl console talk bye`: {text}"));
    }
    // It ends on `bye`.
    while !find("talk")?.is_null() {
        if start.elapsed() > Duration::from_secs(90) {
            return Err(format!("talk is still there after its bye: {}", find("talk")?));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, text) = ctl(&["list"], "wrong-token-123")?;
    if ok || !text.contains("401") {
        return Err(format!("`ctl list` with a wrong token: {text}"));
    }
    let gone = find("busy")?;
    if !(gone.is_null() || gone["state"] == json!("dying")) {
        return Err(format!("busy after its destroy: {gone}"));
    }
    let r = c.request("POST", "/v1/shutdown", None)?;
    want(&r, 409, "shutdown with idle running")?;
    let r = c.request("POST", "/v1/shutdown", Some(&json!({"force":true})))?;
    want(&r, 200, "shutdown force")?;
    if r.body["destroyed"] != json!([2]) {
        return Err(format!("shutdown force: {}", r.body));
    }
    Ok(format!(
        "the API created, listed, paused, unpaused, reweighted, sent console input, destroyed and shut down, and refused 17 bad requests with their statuses and reasons (first answer after {:.1} s, {free} frames free); `cargo xtask ctl` listed, sent a console line, destroyed and failed on a wrong token",
        start.elapsed().as_secs_f64()
    ))
}

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "toolstack-shell",
            what: "dom0's shell, typed at on the serial console: help, templates, create (running and paused), list, top (the hog's CPU share), pause, unpause, set-weight, destroy (the store connection released), clear errors for bad commands and arguments (the hypervisor's reason for a bad name), a spawn of more domains than dom0's heap can serve (stopped with the reason, dom0 goes on), and shutdown",
            bundle,
            append: "",
            icount: false,
            rig: Some(|rig| {
                super::net_split::serve_disk(rig)?;
                for (cue, text) in [
                    (READY, "help"),
                    ("help                          this", "templates"),
                    ("  tied ", "create hog name=busy"),
                    ("'busy' from template 'hog'", "create sleeper name=idle mem=1M paused"),
                    ("'idle' from template 'sleeper'", "list"),
                    (" idle ", "top rounds=2 ms=500"),
                    ("top: ended", "unpause idle"),
                    ("unpaused 'idle'", "pause busy"),
                    ("paused 'busy'", "set-weight idle 200 50"),
                    ("weight 200, warp 50 us", "list"),
                    (" idle ", "destroy busy"),
                    ("destroyed 'busy'", "frobnicate"),
                    ("unknown command 'frobnicate'", "create nosuch"),
                    ("no template 'nosuch'", "create hog mem=abc"),
                    ("is not a size", "destroy 0"),
                    ("the toolstack's own domain", "destroy 999"),
                    ("no domain 999", "create hog name=\"bad name\""),
                    ("refused:", "set-weight idle 0"),
                    ("a weight is 1..=10000", "info"),
                    ("frames:", "list"),
                    // More domains than dom0's heap can serve: refused
                    // with the reason, and dom0 goes on.
                    (" idle ", "spawn 1000 quiet"),
                    ("dom0's heap is nearly full", "list"),
                    (" idle ", "shutdown"),
                    ("still run", "shutdown force"),
                ] {
                    rig.type_after(cue, text);
                }
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[dom0] toolstack: shell ready, 4 template(s): hog, sleeper, quiet, tied; type `help`")?;
                need(out, "[dom0]   spawn N [TEMPLATE] [mem=KiB]  N domains at once, then all destroyed; rates and the leak check")?;
                need(out, "[dom0]   sleeper             512 KiB  weight   100  image")?;
                need(out, "[dom0] created dom1 'busy' from template 'hog' (512 KiB)")?;
                need(out, "[dom0] created dom2 'idle' from template 'sleeper' (1024 KiB, paused)")?;
                // The store serves created domains as it does boot ones.
                need(out, "[dom0] serve: dom1 (busy) connected to the store")?;
                // The first list: busy runs (or waits for the CPU), idle is paused.
                let busy = row(out, "[dom0] > list", "busy")?;
                if !busy.contains("ready") && !busy.contains("running") {
                    return Err(format!("busy is not runnable in the first list: {busy:?}"));
                }
                let idle = row(out, "[dom0] > list", "idle")?;
                if !idle.contains("paused") || !idle.contains(" 1024 ") {
                    return Err(format!("idle is not paused with 1024 KiB in the first list: {idle:?}"));
                }
                // A paused domain runs nothing until unpaused.
                after(out, "[dom0] unpaused 'idle' (dom2)", "[idle] Hello from idle (domain 2)")?;
                if out.find("[idle] Hello").unwrap_or(0) < out.find("[dom0] unpaused 'idle'").unwrap_or(usize::MAX) {
                    return Err("idle printed before it was unpaused".into());
                }
                // top's second frame: the hog has most of the CPU.
                let second = out.match_indices("[dom0] top: at ").nth(1).map(|(i, _)| i).ok_or("top drew no second frame")?;
                let hog = row(&out[second..], "top: at", "busy")?;
                let share: f64 = hog.split_whitespace().nth(2).and_then(|v| v.parse().ok()).ok_or("no CPU share")?;
                if share < 50.0 {
                    return Err(format!("the hog had {share}% of the CPU in top's second frame: {hog:?}"));
                }
                need(out, "[dom0] paused 'busy' (dom1)")?;
                let busy = row(out, "[dom0] 'idle' (dom2): weight 200, warp 50 us", "busy")?;
                if !busy.contains("paused") {
                    return Err(format!("busy is not paused in the second list: {busy:?}"));
                }
                let idle = row(out, "[dom0] 'idle' (dom2): weight 200, warp 50 us", "idle")?;
                if !idle.trim_end().ends_with("200      50") {
                    return Err(format!("idle's weight and warp are not 200 and 50: {idle:?}"));
                }
                need(out, "[dom0] destroyed 'busy' (dom1)")?;
                need(out, "[dom0] serve: dom1 (busy) ended: store connection released")?;
                // The errors, each naming what is wrong.
                need(out, "[dom0] frobnicate: error: unknown command 'frobnicate'; `help` lists them")?;
                need(out, "[dom0] create: error: no template 'nosuch' (templates: hog, sleeper, quiet, tied)")?;
                need(out, "[dom0] create: error: mem = 'abc' is not a size (KiB, or NM for MiB)")?;
                need(out, "[dom0] destroy: error: dom0 is the toolstack's own domain (EINVAL")?;
                need(out, "[dom0] destroy: error: no domain 999")?;
                need(out, "[dom0] create: error: refused: EINVAL (-22): the name may hold only")?;
                need(out, "[dom0] set-weight: error: dom2: EINVAL (-22) (a weight is 1..=10000")?;
                need(out, "[dom0] frames: ")?;
                // The last list has no busy; shutdown wants the others gone.
                let last = out.rfind("[dom0] > list").ok_or("no list")?;
                if row(&out[last..], "> list", "busy").is_ok_and(|r| !r.contains("dying")) {
                    return Err("busy is still listed alive after its destroy".into());
                }
                need(out, "[dom0] spawn: 1000 domains of template 'quiet'")?;
                let stop = dom0_lines(out).find(|l| l.starts_with("spawn: step ")).ok_or("the spawn did not stop")?;
                if !stop.ends_with("KiB to serve the domains it has): give dom0 more heap= pages; stopped") {
                    return Err(format!("the spawn stopped for another reason: {stop:?}"));
                }
                need(out, "[dom0] shutdown: error: 1 other domain(s) still run; destroy them first, or `shutdown force`")?;
                need(out, "[dom0] destroyed 'idle' (dom2)")?;
                need(out, "[dom0] serve: every domain served has ended")?;
                Ok(())
            },
        },
        Scenario {
            name: "toolstack-destroy-busy",
            what: "destroying a domain that maps its peer's page with an unmap notification, has its own page mapped by the peer and an event channel to it: the peer sees the notification (byte cleared, event), its port unbound, reads the dead domain's page intact through its mapping, unmaps it and revokes its own grant; afterwards the machine has the frames and ports it had before, and a second round leaves frames, ports and the hypervisor's heap exactly as the first did",
            bundle,
            append: "",
            icount: false,
            rig: Some(|rig| {
                super::net_split::serve_disk(rig)?;
                // Two rounds: dom0's own tables grow to hold its store
                // mappings in the first; the second must leave everything
                // exactly as the first left it.
                rig.type_after(READY, "info");
                for (victim, peer, v, p) in [("victim", "peer", 1, 2), ("victim2", "peer2", 3, 4)] {
                    let cmd = |name: &str, line: String| format!("create tied name={name} cmdline=\"{line}\"");
                    rig.type_after("[dom0] frames:", &cmd(victim, format!("role=victim peer={p}")));
                    rig.type_after(&format!("'{victim}' from template"), &cmd(peer, format!("role=peer victim={v}")));
                    rig.type_after(&format!("[{peer}] peer: waiting for dom{v} to go"), &format!("destroy {victim}"));
                    rig.type_after(&format!("destroyed '{victim}'"), &format!("wait {p}"));
                    rig.type_after(&format!("dom{p} is gone"), "info");
                }
                rig.type_after("[dom0] frames:", "shutdown");
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[victim] victim: tied to dom2: granted our page (ref 8), port ")?;
                need(out, "[peer] peer: tied to dom1: port ")?;
                need(out, "mapped its page (ref 8): \"the victim's page, mapped by its peer\"")?;
                need(out, "[dom0] destroyed 'victim' (dom1)")?;
                after(out, "[dom0] destroyed 'victim'", "[peer] peer: dom1's mapping of our page went away: byte 0 cleared, 1 event(s) on port ")?;
                after(out, "went away: byte 0 cleared", "[peer] peer: port ")?;
                need(out, "is unbound again: dom1's end is closed")?;
                need(out, "[peer] peer: dom1's page, read after its end through our mapping: intact true")?;
                need(out, "[peer] peer: unmapped dom1's page and revoked our grant: done")?;
                need(out, "[dom0] serve: dom1 (victim) ended: store connection released")?;
                let i = infos(out);
                let [first, after1, after2] = i.as_slice() else {
                    return Err(format!("wanted three info lines, got {i:?}"));
                };
                // (frames free, heap, ports, domains, dying)
                if after1 != after2 {
                    return Err(format!(
                        "the second round changed the machine: after the first {after1:?}, after the second {after2:?}"
                    ));
                }
                let same = |k: usize| first[k] == after1[k];
                if !(same(0) && same(2) && same(3) && same(4)) {
                    return Err(format!("before the first round {first:?}, after it {after1:?}"));
                }
                need(out, "[peer2] peer: unmapped dom3's page and revoked our grant: done")?;
                need(out, "[dom0] serve: every domain served has ended")?;
                Ok(())
            },
        },
        Scenario {
            name: "toolstack-api",
            what: "the shell's operations over dom0's HTTP/JSON API, from the host through QEMU's forward and dom0's bridge, with `cargo xtask ctl` and its client: create (running, paused), list, get, pause, unpause, set weight and warp, console input (a domain echoes it), destroy, shutdown; 401 without or with a wrong token, 400 for malformed requests, bad JSON, unknown fields and a name the hypervisor refuses (its reason), 404, 405, 409, 413",
            bundle: |imgs| with_dom0(imgs, &format!("serve stay uplink=10 api={API_PORT} token={TOKEN}")),
            append: "",
            icount: false,
            rig: Some(|rig| {
                use crate::qemu::devices::{Proto, DOM0_API_IP};
                rig.disk(4 << 20)?;
                let nic = rig.nic_at(&[(Proto::Tcp, DOM0_API_IP, API_PORT)])?;
                let addr = nic.host_addr(Proto::Tcp, API_PORT)?;
                rig.after_line("[dom0] api: listening", Duration::from_secs(60), move || api_session(addr));
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[dom0] api: listening on 10.0.2.16:8080 (HTTP/JSON, 4 connections, bearer token required)")?;
                need(out, "[dom0] serve: dom0's own port on bridge port ")?;
                need(out, "[dom0] api: created dom1 'busy' from template 'hog'")?;
                need(out, "[dom0] api: POST /v1/domains -> 201")?;
                need(out, "[dom0] api: GET /v1/info -> 401")?;
                need(out, "[dom0] api: refused a request: 400 malformed request: ")?;
                need(out, "[dom0] api: refused a request: 413 a request is at most 8192 bytes")?;
                need(out, "[dom0] serve: dom1 (busy) ended: store connection released")?;
                // The API's console input reached the domain's echo.
                need(out, "[talk] echo: ping from the host")?;
                need(out, "[talk] echo: bye")?;
                need(out, "[dom0] api: shutdown: dom0 ends once every other domain has")?;
                need(out, "[dom0] serve: every domain served has ended")?;
                Ok(())
            },
        },
        Scenario {
            name: "toolstack-clone",
            what: "`create ovl --from base` twice from dom0's shell: each new domain gets a copy-on-write overlay of one template disk, made by dom0 at run time and served by its blkback; each writes its own log over the template and reads the template through the rest; on the host each overlay holds its domain's log and the template is untouched; a clone of a template disk that does not exist is refused",
            bundle: |imgs| {
                let cmd = format!("mode=overlay records={CLONE_RECORDS} seed=1 template={CLONE_SEED}");
                let ovl = DomainEntry::new("ovl", loadable(&guest(imgs, "blklog")?)?, 1024).cmdline(cmd).template(true);
                with_dom0_and(imgs, &format!("serve shell stay {}", clone_words()), Some(ovl))
            },
            append: "",
            icount: false,
            rig: Some(|rig| {
                let plan = clone_plan();
                let image = rig.disk(plan.disk_sectors() * 512)?;
                plan.format(&image)?;
                let cmd = |name: &str, seed: u64, from: &str| {
                    format!("create ovl name={name} {from} cmdline=\"mode=overlay records={CLONE_RECORDS} seed={seed} template={CLONE_SEED}\"")
                };
                rig.type_after(READY, &cmd("c1", 401, "--from base"));
                rig.type_after("[c1] blklog: overlay holds", &cmd("c2", 402, "from=base"));
                rig.type_after("[c2] blklog: overlay holds", &cmd("c3", 403, "--from nosuch"));
                rig.type_after("no template disk 'nosuch'", "wait 2");
                rig.type_after("dom2 is gone", "shutdown");
                rig.after_run(move |out| {
                    for (name, seed) in [("c1", 401), ("c2", 402)] {
                        let v = clone_of(out, name)?;
                        super::blk::check_log(&image, &v, CLONE_RECORDS, seed)?;
                        // Past its log, it reads the template.
                        let from = CLONE_RECORDS + 1;
                        let size = clone_plan().vbds[0].region.sectors;
                        let mut rest = vec![0u8; (size - from) as usize * 512];
                        crate::vbd::read_virtual(&image, &v, from, &mut rest)?;
                        if let Some((at, ..)) = disk_pattern::first_mismatch(&rest, CLONE_SEED, from * 512) {
                            return Err(format!("{name}: byte {at} past its log does not read as the template"));
                        }
                    }
                    let t = &clone_plan().vbds[0];
                    let mut all = vec![0u8; t.region.sectors as usize * 512];
                    crate::vbd::read_virtual(&image, t, 0, &mut all)?;
                    if let Some((at, ..)) = disk_pattern::first_mismatch(&all, CLONE_SEED, 0) {
                        return Err(format!("the template disk changed at byte {at}"));
                    }
                    Ok(())
                });
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, "[dom0] created dom1 'c1' from template 'ovl' (1024 KiB, its disk an overlay of 'base' at LBA ")?;
                need(out, "[dom0] created dom2 'c2' from template 'ovl' (1024 KiB, its disk an overlay of 'base' at LBA ")?;
                for (id, name, seed) in [(1, "c1", 401), (2, "c2", 402)] {
                    need(out, &format!("[dom0] serve: dom{id} ({name}): disk connected"))?;
                    need(out, &format!("[{name}] blklog: overlay holds {CLONE_RECORDS} records (seed {seed:#x}) over template {CLONE_SEED:#x}"))?;
                }
                need(out, "[dom0] create: error: no template disk 'nosuch' (template disks: base)")?;
                need(out, "[dom0] serve: every domain served has ended")?;
                Ok(())
            },
        },
        Scenario {
            name: "toolstack-console",
            what: "dom0's console daemon drains the domUs' consoles (each taken over from the hypervisor): their lines come out tagged; `console talk` attaches the shell to one domain, whose echo answers the lines typed (a shell command among them goes to the domain, not the shell) while another domain's ticks are held in its ring and come out after `~.` detaches, none lost; a domain's last line comes out before the report of its end, and the shell detaches when it ends; bad attaches are refused with the reason",
            bundle,
            append: "",
            icount: false,
            rig: Some(|rig| {
                super::net_split::serve_disk(rig)?;
                rig.type_after(READY, "create sleeper name=ticks cmdline=\"ticks=40\"");
                rig.type_after("[ticks] tick 3", "create sleeper name=talk cmdline=\"echo\"");
                rig.type_after("[talk] echo: ready", "console talk");
                rig.type_after("console: attached to dom2 (talk)", "hello there");
                rig.type_after("[talk] echo: hello there", "list");
                rig.type_after("[talk] echo: list", "~.");
                rig.type_after("console: detached from dom2", "console 0");
                rig.type_after("[dom0] console: error:", "console nosuch");
                rig.type_after("[dom0] console: error: no domain called", "console talk");
                rig.type_after("console: attached to dom2 (talk)", "bye");
                rig.type_after("has ended; detached", "destroy ticks");
                rig.type_after("destroyed 'ticks'", "wait 1");
                rig.type_after("dom1 is gone", "shutdown");
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                for (id, name) in [(1, "ticks"), (2, "talk")] {
                    need(out, &format!("dom{id} ({name}): console taken over by dom0"))?;
                }
                need(out, "[talk] echo: hello there")?;
                need(out, "[talk] echo: list")?;
                // Attached: the typed `list` went to the domain, and the
                // other domain's output waited.
                let at = out.find("[dom0] console: attached to dom2 (talk)").ok_or("never attached")?;
                let off = at + out[at..].find("[dom0] console: detached from dom2").ok_or("never detached")?;
                let attached = &out[at..off];
                if attached.contains("[dom0]   id name") {
                    return Err("`list` typed while attached ran in the shell".into());
                }
                if let Some(l) = attached.lines().find(|l| l.starts_with("[ticks] ")) {
                    return Err(format!("another domain's line came out while attached: {l:?}"));
                }
                if !out[off..].contains("[ticks] tick ") {
                    return Err("no ticks after the detach: the held output never came".into());
                }
                // None lost: every tick from the first to the last, once.
                let ticks: Vec<u64> =
                    out.lines().filter_map(|l| l.strip_prefix("[ticks] tick ")?.trim().parse().ok()).collect();
                let last = *ticks.last().ok_or("no ticks")?;
                if ticks != (1..=last).collect::<Vec<_>>() {
                    return Err(format!("ticks lost, repeated or out of order: {ticks:?}"));
                }
                need(out, "[dom0] console: error: dom0's console is not the daemon's")?;
                need(out, "[dom0] console: error: no domain called 'nosuch'")?;
                // Its last line, then the report of its end.
                let bye = out.find("[talk] echo: bye").ok_or("no bye")?;
                let ended = out.find("dom2 (talk) exited: poweroff").ok_or("no report of talk's end")?;
                if bye > ended {
                    return Err("talk's last line came after the report of its end".into());
                }
                need(out, "[dom0] console: dom2 (talk) has ended; detached")?;
                need(out, "[dom0] serve: every domain served has ended")?;
                Ok(())
            },
        },
        Scenario {
            name: "toolstack-churn",
            what: "1000 create/destroy cycles from dom0's shell (`churn`), each domain reaped before the next is made; the leak check finds 0 frames and 0 ports lost, the hypervisor's heap and domain count as before",
            bundle,
            append: "",
            icount: false,
            rig: Some(|rig| {
                super::net_split::serve_disk(rig)?;
                rig.type_after(READY, &format!("churn {CHURN} quiet"));
                rig.type_after("churn: leak check", "shutdown");
                Ok(())
            }),
            expect: Outcome::Pass,
            check: |out| {
                need(out, &format!("[dom0] churn: {CHURN} cycles of template 'quiet'"))?;
                need(out, &format!("[dom0] churn: {CHURN} cycles in "))?;
                let check = dom0_lines(out).find(|l| l.starts_with("churn: leak check")).ok_or("no leak check")?;
                for want in ["(0 lost), ports", "(0 lost), hypervisor", ": no leak"] {
                    if !check.contains(want) {
                        return Err(format!("the leak check wants {want:?}: {check:?}"));
                    }
                }
                need(out, "[dom0] serve: every domain served has ended")?;
                Ok(())
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::{after, infos, row};

    #[test]
    fn a_clones_place_comes_from_its_created_line() {
        let out = "[dom0] created dom1 'c1' from template 'ovl' (1024 KiB, its disk an overlay of 'base' at LBA 38912, 6144 sectors)\n";
        let v = super::clone_of(out, "c1").unwrap();
        assert_eq!((v.region.lba, v.region.sectors), (38912, 6144));
        assert!(super::clone_of(out, "c2").is_err());
    }

    #[test]
    fn info_lines_give_their_figures() {
        let out = "[dom0] frames: 121947 free of 262144; hypervisor heap: 20496 B in use; ports in use: 7; domains: 2 of 1024 (0 dying)\n";
        assert_eq!(infos(out), [[121947, 20496, 7, 2, 0]]);
    }

    const OUT: &str =
        "[dom0] > list\n[dom0]     id name   state\n[dom0]      1 busy   ready\n[dom0]      2 idle   paused\n";

    #[test]
    fn rows_are_found_by_name_after_their_command() {
        assert_eq!(row(OUT, "> list", "idle").unwrap(), "     2 idle   paused");
        assert!(row(OUT, "> list", "nobody").is_err());
        assert!(row(OUT, "> top", "idle").is_err());
        assert!(after(OUT, "> list", "busy").is_ok());
        assert!(after(OUT, "2 idle", "busy").is_err());
    }
}
