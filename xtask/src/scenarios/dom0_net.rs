//! The host side of dom0's network service (`sample-guests/src/bin/dom0/
//! net.rs`): the checks of scenario `dom0-net` (for `dom0-devices` to call
//! as well) and the `dom0_udp_rtt` measurement of `cargo xtask bench`.
//!
//! dom0 serves UDP echo on guest port [`ECHO_PORT`] and a control port
//! [`CONTROL_PORT`] (`stats`, `ping`, `stop`), both reached through QEMU's
//! user-network forwards on 127.0.0.1 ([`FORWARDS`]). The host:
//! 1. sends datagrams to the echo port and checks every echo's bytes
//!    ([`udp_echo`]): 16 of 256 bytes, then 4 of [`MAX_UNFRAGMENTED`] bytes
//!    (a full 1514-byte frame each way);
//! 2. sends one datagram too long for one frame ([`OVERSIZED`] bytes: QEMU
//!    splits it into IP fragments, which dom0's stack, built without
//!    reassembly, drops) and checks that no echo comes and the service
//!    still answers; sends an empty datagram, and gets an empty echo;
//! 3. asks dom0 to ping the gateway, and to inject an echo request as if
//!    from the gateway, and reads its counters until the pings are
//!    answered and the injected request too; checks them against what it
//!    sent (every datagram echoed, none dropped, ARP answered, no
//!    malformed frame);
//! 4. tells it to stop; dom0 prints its counters and powers off, and the
//!    console checks ([`check`]) read that line again.
//!
//! What QEMU's user network cannot exercise (see the guest's module docs):
//! an ICMP echo request *to* dom0 (slirp never sends one, and a forward
//! carries only TCP and UDP). So dom0's ICMP is checked as a client (pings
//! of slirp's own address, answered inside QEMU), and its answering with a
//! request injected below smoltcp, at the device layer (its answer leaves
//! through the NIC for real); the malformed-frame paths of the driver,
//! which slirp's well-formed frames never take, by dom0's self-test of its
//! receive checks on made-up used-ring entries.

use super::rig::Rig;
use super::{need, num_after};
use crate::evidence::udp::{udp_echo, EchoPlan, EchoReport};
use crate::qemu::devices::{Proto, GUEST_IP, GUEST_MAC};
use crate::Result;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// dom0's UDP echo port.
pub const ECHO_PORT: u16 = 7;
/// dom0's UDP control port.
pub const CONTROL_PORT: u16 = 7007;
/// The forwards the NIC needs.
pub const FORWARDS: [(Proto, u16); 2] = [(Proto::Udp, ECHO_PORT), (Proto::Udp, CONTROL_PORT)];
/// dom0's command-line words for the service (its time limit in seconds
/// after `net_s=`: past it dom0 reports a failure).
pub const CMDLINE: &str = "net net_s=50";
/// DMA pool dom0 needs for the NIC (its buffers and rings: 80 KiB), with
/// room to spare.
pub const DMA_KIB: u32 = 128;
/// The console line that says the service is up.
pub const READY_LINE: &str = "[dom0] net: virtio-net at ";
/// The longest UDP payload in one 1500-byte IP packet.
pub const MAX_UNFRAGMENTED: usize = 1472;
/// A datagram QEMU must fragment.
pub const OVERSIZED: usize = 3000;
/// How long after QEMU starts the service must be up.
const READY_WITHIN: Duration = Duration::from_secs(40);

/// The NIC with [`FORWARDS`] and the host-side checks, on `rig`. A
/// scenario using it boots dom0 with [`CMDLINE`] and [`DMA_KIB`], and
/// calls [`check`] on the console.
pub fn rig(rig: &mut Rig) -> Result<()> {
    let nic = rig.nic(&FORWARDS)?;
    let echo = nic.host_addr(Proto::Udp, ECHO_PORT)?;
    let control = nic.host_addr(Proto::Udp, CONTROL_PORT)?;
    rig.after_line(READY_LINE, READY_WITHIN, move || {
        let r = exercise(echo, control);
        if r.is_err() {
            // End the run now rather than at dom0's time limit.
            let _ = ask(control, "stop", "rf-net stopping");
        }
        r
    });
    Ok(())
}

/// Steps 1–4 of the module docs; a summary line.
fn exercise(echo: SocketAddr, control: SocketAddr) -> Result<String> {
    let small = udp_echo(echo, &EchoPlan::default())?;
    let full = udp_echo(
        echo,
        &EchoPlan {
            datagrams: 4,
            payload: MAX_UNFRAGMENTED,
            ready_within: Duration::from_secs(5),
            ..EchoPlan::default()
        },
    )?;
    oversized_is_dropped(echo)?;
    empty_is_echoed(echo)?;
    let after = udp_echo(
        echo,
        &EchoPlan { datagrams: 2, payload: 64, ready_within: Duration::from_secs(5), ..EchoPlan::default() },
    )?;
    // And the empty datagram.
    let echoed = [&small, &full, &after].iter().map(|r| r.rtts.len() as u64).sum::<u64>() + 1;

    ask(control, "ping", "rf-net pinging 10.0.2.2")?;
    ask(control, "inject-ping", "rf-net injected an echo request from 10.0.2.2")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let s = ask(control, "stats", "rf-net stats ")?;
        let done = num_after(&s, "pings_answered=")? >= 3 && num_after(&s, "icmp_rep_out=")? >= 1;
        if done || Instant::now() >= deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    check_counters(&stats, echoed)?;
    ask(control, "stop", "rf-net stopping")?;
    Ok(format!(
        "{}; {} full-size ({MAX_UNFRAGMENTED} B) echoed intact; a fragmented {OVERSIZED} B datagram dropped; \
         dom0 says: {}",
        small.summary(),
        full.rtts.len(),
        stats.trim_start_matches("rf-net stats ")
    ))
}

/// Sends one [`OVERSIZED`] datagram; no echo may come within a second.
fn oversized_is_dropped(echo: SocketAddr) -> Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("udp: bind: {e}"))?;
    sock.connect(echo).map_err(|e| format!("udp: connect {echo}: {e}"))?;
    let d: Vec<u8> = (0..OVERSIZED).map(|i| b'A' + (i % 26) as u8).collect();
    sock.send(&d).map_err(|e| format!("udp: send {OVERSIZED} bytes: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536];
    match sock.recv(&mut buf) {
        Ok(n) => Err(format!("a {OVERSIZED}-byte datagram (IP fragments) got an answer of {n} bytes; dom0's stack has no reassembly, so it must drop fragments")),
        Err(_) => Ok(()),
    }
}

/// Sends an empty datagram; an empty echo must come back.
fn empty_is_echoed(echo: SocketAddr) -> Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("udp: bind: {e}"))?;
    sock.connect(echo).map_err(|e| format!("udp: connect {echo}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        sock.send(&[]).map_err(|e| format!("udp: send an empty datagram: {e}"))?;
        match sock.recv(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => return Err(format!("an empty datagram was answered with {n} bytes")),
            Err(_) => continue,
        }
    }
    Err("an empty datagram got no echo in 3 tries of 1 s".into())
}

/// Sends `command` to the control port and returns the answer, which must
/// start with `want` (3 tries of 2 s).
pub fn ask(control: SocketAddr, command: &str, want: &str) -> Result<String> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("control: bind: {e}"))?;
    sock.connect(control).map_err(|e| format!("control: connect {control}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1024];
    for _ in 0..3 {
        sock.send(command.as_bytes()).map_err(|e| format!("control: send {command:?}: {e}"))?;
        if let Ok(n) = sock.recv(&mut buf) {
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            return if answer.starts_with(want) {
                Ok(answer)
            } else {
                Err(format!("control: {command:?} answered {answer:?}, want {want:?}..."))
            };
        }
    }
    Err(format!("control: no answer to {command:?} from {control} in 3 tries of 2 s"))
}

/// Checks dom0's counters line (`key=value` words) after the host's
/// traffic: at least `echoed` datagrams echoed, none dropped, no
/// malformed frame or lost transmission, dom0 ARPed for and answered, the
/// gateway's pings answered, interrupts taken.
fn check_counters(line: &str, echoed: u64) -> Result<()> {
    let get = |k: &str| num_after(line, &format!(" {k}="));
    let mut wrong = Vec::new();
    let mut want = |what: &str, ok: bool| {
        if !ok {
            wrong.push(what.to_string());
        }
    };
    want(&format!("udp_echoed >= {echoed} (the host got that many echoes)"), get("udp_echoed")? >= echoed);
    want("udp_dropped = 0", get("udp_dropped")? == 0);
    want("rx_dropped = 0 (no malformed frame)", get("rx_dropped")? == 0);
    want("tx_lost = 0", get("tx_lost")? == 0);
    want("arp_req_in >= 1 (slirp ARPed for dom0)", get("arp_req_in")? >= 1);
    want("arp_rep_out >= arp_req_in (each ARP request answered)", get("arp_rep_out")? >= get("arp_req_in")?);
    want("pings_sent = 3", get("pings_sent")? == 3);
    want("pings_answered = 3", get("pings_answered")? == 3);
    want("icmp_req_in = 1 (the injected echo request)", get("icmp_req_in")? == 1);
    want("icmp_rep_out = 1 (smoltcp answered it)", get("icmp_rep_out")? == 1);
    want("interrupts >= 1", get("interrupts")? >= 1);
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("dom0's counters are off: {}; line: {line}", wrong.join(", ")))
    }
}

/// The console checks: the bring-up line (MAC, address, ports), the
/// counters at the stop (as [`rig`]'s checks want them; at least 23
/// datagrams echoed), the receive checks' self-test, and nothing malformed
/// or failed.
pub fn check(out: &str) -> Result<()> {
    for case in [
        "a 60-byte frame: Ok(60)",
        "a full 1514-byte frame: Ok(1514)",
        "a length past the buffer: Err(PastBuffer(2037))",
        "a length of usize::MAX: Err(PastBuffer(18446744073709551615))",
        "a header past the buffer: Err(PastBuffer(60))",
        "a 13-byte runt: Err(Runt(13))",
        "a 1600-byte frame for 1514 bytes of room: Err(TooLong(1600))",
        "a segmentation-offload frame: Err(Gso(4))",
    ] {
        need(out, &format!("[dom0] net: receive check: {case}: as expected"))?;
    }
    need(out, "[dom0] net: receive checks: 8 of 8 as expected")?;
    need(out, &format!("{READY_LINE}00:03.0, MAC {GUEST_MAC}, GSI 23 (pirq 23, port "))?;
    need(out, &format!("; {GUEST_IP}/24 via 10.0.2.2; udp echo on port {ECHO_PORT}, control on port {CONTROL_PORT}"))?;
    // The counters come on two lines.
    let line: String =
        out.lines().filter_map(|l| l.split_once("[dom0] net: stop asked: ").map(|(_, r)| format!(" {r}"))).collect();
    if line.is_empty() {
        return Err("no '[dom0] net: stop asked: ' line (the service did not stop when told)".into());
    }
    check_counters(&line, 23)?;
    for bad in ["net: FAILED", "net: malformed frame", "net: frame of", "net: eoi of pirq", "virtio-net: ", "WRONG"] {
        if out.contains(bad) {
            return Err(format!("must not appear on the console: {bad:?}"));
        }
    }
    Ok(())
}

/// The UDP round trips of one measurement ([`measure_rtt`]).
pub struct RttFigures {
    /// Round trips to dom0 through QEMU's forward.
    pub dom0: EchoReport,
    /// Round trips to an echo thread on the host's loopback, measured the
    /// same way in the same run.
    pub loopback: EchoReport,
}

/// The `p`-th percentile of `r`'s round trips, in µs.
pub fn percentile_us(r: &EchoReport, p: f64) -> f64 {
    let mut v: Vec<Duration> = r.rtts.clone();
    v.sort();
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e6
}

/// `n` UDP echo round trips of `payload` bytes to dom0 (echo port behind
/// `echo`), then the same against a host loopback echo thread; then tells
/// dom0 to stop. For the bench's watch action.
pub fn measure_rtt(echo: SocketAddr, control: SocketAddr, n: usize, payload: usize) -> Result<RttFigures> {
    let plan = EchoPlan { datagrams: n, payload, ..EchoPlan::default() };
    let dom0 = udp_echo(echo, &plan);
    let loopback = loopback_echo(&plan);
    let stopped = ask(control, "stop", "rf-net stopping");
    let (dom0, loopback) = (dom0?, loopback?);
    stopped?;
    Ok(RttFigures { dom0, loopback })
}

/// [`udp_echo`] against an echo thread on 127.0.0.1 (the floor: the host's
/// UDP path without QEMU or dom0).
fn loopback_echo(plan: &EchoPlan) -> Result<EchoReport> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("loopback echo: bind: {e}"))?;
    let addr = sock.local_addr().map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    let r = udp_echo(addr, plan);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = t.join();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = " arp_req_in=1 arp_rep_out=1 arp_req_out=0 arp_rep_in=0 icmp_req_in=1 icmp_rep_out=1 \
                        pings_sent=3 pings_answered=3 udp_echoed=25 udp_dropped=0 rx=40 tx=40 rx_dropped=0 \
                        tx_lost=0 interrupts=50";

    #[test]
    fn counters_as_expected_pass() {
        check_counters(GOOD, 22).unwrap();
    }

    #[test]
    fn counters_that_are_off_fail_with_the_reason() {
        let e = check_counters(GOOD, 26).unwrap_err();
        assert!(e.contains("udp_echoed >= 26"), "{e}");
        let e = check_counters(&GOOD.replace("rx_dropped=0", "rx_dropped=2"), 22).unwrap_err();
        assert!(e.contains("no malformed frame"), "{e}");
        let e = check_counters(&GOOD.replace("arp_req_in=1", "arp_req_in=0"), 22).unwrap_err();
        assert!(e.contains("slirp ARPed"), "{e}");
        let e = check_counters(&GOOD.replace("pings_answered=3", "pings_answered=1"), 22).unwrap_err();
        assert!(e.contains("pings_answered = 3"), "{e}");
        assert!(check_counters(" udp_echoed=3", 1).is_err(), "a line without a key fails");
    }

    #[test]
    fn percentiles_pick_the_right_rank() {
        let r = EchoReport {
            rtts: (1..=100).rev().map(Duration::from_micros).collect(),
            ready_after: Duration::ZERO,
            retries: 0,
        };
        assert_eq!(percentile_us(&r, 0.5).round(), 50.0);
        assert_eq!(percentile_us(&r, 0.99).round(), 99.0);
        assert_eq!(percentile_us(&r, 1.0).round(), 100.0);
    }

    #[test]
    fn the_loopback_baseline_echoes() {
        let plan = EchoPlan { datagrams: 5, payload: 64, ..EchoPlan::default() };
        assert_eq!(loopback_echo(&plan).unwrap().rtts.len(), 5);
    }
}

/// Round trips measured by `cargo xtask bench` (`dom0_udp_rtt`).
pub const BENCH_ROUND_TRIPS: usize = 500;
/// Their payload (the echo client's shortest datagram).
pub const BENCH_PAYLOAD: usize = crate::evidence::udp::MIN_PAYLOAD;

/// `dom0_udp_rtt`: boots dom0's network service alone (TCG, no icount:
/// this is host wall time), measures [`BENCH_ROUND_TRIPS`] UDP echo round
/// trips from the host and the same against a host loopback echo in the
/// same run, prints them, and merges the figures into
/// `target/bench-dom0.json` (flat keys, numbers only: `dom0_udp_rtt` is
/// the median in µs; `dom0_udp_rtt_p99_us`, `_min_us`, `_n`,
/// `_payload_bytes`, `_loopback_median_us`, `_loopback_p99_us`,
/// `_ratio_to_loopback` beside it).
pub fn bench(imgs: &crate::images::Images) -> Result<()> {
    use crate::qemu::{self, Outcome, RunOpts, Watch};
    use ringfence_bundle::Expect;
    use ringfence_bundle_writer::{BundleWriter, DomainEntry};

    let mut w = BundleWriter::new();
    let image = imgs.guest("dom0", &crate::root())?;
    w.domain(
        DomainEntry::new("dom0", image, 1536)
            .cmdline("net net_s=110")
            .expect(Expect::Poweroff)
            .privileged(true)
            .dma_kib(DMA_KIB),
    );
    crate::images::add_symbols(&mut w, imgs)?;
    let bundle = crate::images::write_bundle("bench-dom0-net", &w.finish())?;
    let mut rig = Rig::new("bench-dom0-net");
    let nic = rig.nic(&FORWARDS)?;
    let (echo, control) = (nic.host_addr(Proto::Udp, ECHO_PORT)?, nic.host_addr(Proto::Udp, CONTROL_PORT)?);
    let (devices, _, _) = rig.into_parts();
    let opts = RunOpts {
        kernel: imgs.hypervisor.clone(),
        bundle: Some(bundle),
        append: String::new(),
        timeout_s: 120,
        stream: false,
        extra: Vec::new(),
        devices,
        kill_on: None,
        input: Default::default(),
    };
    let watch =
        Watch::new(READY_LINE, READY_WITHIN, move || measure_rtt(echo, control, BENCH_ROUND_TRIPS, BENCH_PAYLOAD));
    let (r, mut got) = qemu::run_watched(&opts, vec![watch])?;
    let figures = got.pop().ok_or("the measurement never started")??;
    if r.outcome != Outcome::Pass {
        return Err(format!("the dom0 network benchmark run did not pass: {}\n{}", r.outcome, r.output));
    }
    let (d, l) = (&figures.dom0, &figures.loopback);
    let (median, p99, min) = (percentile_us(d, 0.5), percentile_us(d, 0.99), percentile_us(d, 0.0));
    let (lmedian, lp99) = (percentile_us(l, 0.5), percentile_us(l, 0.99));
    println!(
        "\ndom0 UDP echo round trip from the host ({} x {BENCH_PAYLOAD} B, QEMU TCG wall time, through the user-network forward)",
        d.rtts.len()
    );
    println!("{:<44} {:>10} {:>10} {:>10}", "", "median us", "p99 us", "min us");
    println!("{:<44} {median:>10.1} {p99:>10.1} {min:>10.1}", "dom0 (virtio-net, smoltcp, interrupts)");
    println!("{:<44} {lmedian:>10.1} {lp99:>10.1} {:>10.1}", "host loopback echo (the floor)", percentile_us(l, 0.0));
    println!("{:<44} {:>10.1}", "ratio of the medians (dom0 / loopback)", median / lmedian);
    let path = crate::images::target_dir().join("bench-dom0.json");
    let entries = [
        ("dom0_udp_rtt", median),
        ("dom0_udp_rtt_p99_us", p99),
        ("dom0_udp_rtt_min_us", min),
        ("dom0_udp_rtt_n", d.rtts.len() as f64),
        ("dom0_udp_rtt_payload_bytes", BENCH_PAYLOAD as f64),
        ("dom0_udp_rtt_retries", f64::from(d.retries)),
        ("dom0_udp_rtt_loopback_median_us", lmedian),
        ("dom0_udp_rtt_loopback_p99_us", lp99),
        ("dom0_udp_rtt_ratio_to_loopback", median / lmedian),
    ];
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let json = merge_json(&old, &entries.map(|(k, v)| (k, json_number(v))))
        .map_err(|e| format!("{} is not the flat JSON object expected ({e}); remove it", path.display()))?;
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("JSON: {} (dom0_udp_rtt merged)", path.display());
    Ok(())
}

/// A JSON number (a whole one without decimals), or `null` for what JSON
/// cannot hold (NaN, infinity).
fn json_number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.is_finite() {
        format!("{v:.2}")
    } else {
        "null".into()
    }
}

/// The top-level members of a JSON object, each value as its raw text
/// (scalars, or nested objects and arrays, kept as they are).
fn members(json: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let s = json.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let body = s.strip_prefix('{').and_then(|b| b.strip_suffix('}')).ok_or("not an object")?;
    let bytes = body.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // The end of the string that starts at `i` (a '"'), past its quote.
    let string_end = |mut i: usize| -> std::result::Result<usize, String> {
        i += 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => return Ok(i + 1),
                _ => i += 1,
            }
        }
        Err("unterminated string".into())
    };
    loop {
        skip_ws(&mut i);
        if i == bytes.len() {
            break;
        }
        if bytes[i] != b'"' {
            return Err(format!("a key expected at byte {i}"));
        }
        let kend = string_end(i)?;
        let key = body[i + 1..kend - 1].to_string();
        i = kend;
        skip_ws(&mut i);
        if bytes.get(i) != Some(&b':') {
            return Err(format!("':' expected after key {key:?}"));
        }
        i += 1;
        skip_ws(&mut i);
        let start = i;
        let mut depth = 0i32;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    i = string_end(i)?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            if depth < 0 {
                return Err("unbalanced brackets".into());
            }
            i += 1;
        }
        let value = body[start..i].trim_end().to_string();
        if value.is_empty() || depth != 0 {
            return Err(format!("no value for key {key:?}"));
        }
        out.push((key, value));
        if i < bytes.len() {
            i += 1; // the ','
        }
    }
    Ok(out)
}

/// `old` (a JSON object, or empty) with each of `entries` set: an existing
/// key keeps its place, a new one is appended; other members are kept as
/// they were. One member per line.
pub fn merge_json(old: &str, entries: &[(&str, String)]) -> std::result::Result<String, String> {
    let mut m = members(old)?;
    for (k, v) in entries {
        match m.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => m.push((k.to_string(), v.clone())),
        }
    }
    let body: Vec<String> = m.iter().map(|(k, v)| format!("  \"{k}\": {v}")).collect();
    Ok(format!("{{\n{}\n}}\n", body.join(",\n")))
}

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn merging_keeps_other_members_and_replaces_ours() {
        let old = "{\n  \"dom0_blk_seq_read\": 41.5,\n  \"dom0_blk_seq_write\": {\"mb_s\": 3, \"note\": \"a, b}\"},\n  \"dom0_udp_rtt\": 1\n}\n";
        let new = merge_json(old, &[("dom0_udp_rtt", "130.25".into()), ("dom0_udp_rtt_n", "500.00".into())]).unwrap();
        assert_eq!(
            new,
            "{\n  \"dom0_blk_seq_read\": 41.5,\n  \"dom0_blk_seq_write\": {\"mb_s\": 3, \"note\": \"a, b}\"},\n  \
             \"dom0_udp_rtt\": 130.25,\n  \"dom0_udp_rtt_n\": 500.00\n}\n"
        );
        // Merging again changes nothing but our values.
        assert_eq!(merge_json(&new, &[("dom0_udp_rtt", "130.25".into())]).unwrap(), new);
    }

    #[test]
    fn an_empty_or_missing_file_starts_an_object() {
        assert_eq!(merge_json("", &[("a", "1".into())]).unwrap(), "{\n  \"a\": 1\n}\n");
        assert_eq!(merge_json("{}", &[("a", "null".into())]).unwrap(), "{\n  \"a\": null\n}\n");
    }

    #[test]
    fn what_is_no_object_is_refused() {
        assert!(merge_json("[1, 2]", &[]).is_err());
        assert!(merge_json("{\"a\" 1}", &[]).is_err());
        assert!(merge_json("{\"a\": }", &[]).is_err());
        assert!(merge_json("{\"a\": \"open}", &[]).is_err());
    }

    #[test]
    fn json_numbers_are_finite_or_null() {
        assert_eq!(json_number(1.0 / 3.0), "0.33");
        assert_eq!(json_number(f64::NAN), "null");
        assert_eq!(json_number(500.0), "500");
    }
}
