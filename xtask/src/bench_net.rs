//! The split network against dom0-native, from the host, in three boots
//! (TCG wall time; the ratios are what counts, the host's speed cancels
//! in them):
//!
//! 1. dom0-native: dom0's own smoltcp on the real NIC (`net tcp_echo`),
//!    a UDP echo and a TCP echo at 10.0.2.15 behind QEMU's forwards.
//! 2. domU: the same services from a domU (`tcpecho` server at 10.0.2.15)
//!    behind dom0's netback, bridge and uplink, through the same forwards.
//!    The host measures, on each: the UDP round trip (median of
//!    [`ROUND_TRIPS`]) and the TCP echo throughput of [`TCP_BYTES`] (sent
//!    and echoed back, so both directions: domU to host included).
//! 3. domU to domU: `tcpecho` client and server on one VLAN; the client's
//!    own timing of a [`TCP_BYTES`] echo.
//!
//! Keys in `target/bench-dom0.json`: `net_domu_host_ratio` (domU's TCP
//! echo throughput over native's; target 0.8), `net_udp_rtt_ratio`
//! (native's median round trip over the domU's: 1 is as fast), and
//! `net_domu_domu_mbps`.

use crate::evidence::udp::{udp_echo, EchoPlan};
use crate::images::{self, add_symbols, Images};
use crate::qemu::devices::Proto;
use crate::qemu::{self, Outcome, RunOpts, Watch};
use crate::scenarios::dom0_net::{self, percentile_us};
use crate::scenarios::net_split::{tcp_echo_timed, CLIENT, SERVER};
use crate::scenarios::rig::Rig;
use crate::{root, Result};
use ringfence_bundle::Expect;
use ringfence_bundle_writer::{BundleWriter, DomainEntry};
use std::time::Duration;

/// UDP round trips measured per boot.
const ROUND_TRIPS: usize = 200;
/// Bytes through each TCP echo.
const TCP_BYTES: usize = 2 * 1024 * 1024;
const FORWARDS: [(Proto, u16); 3] =
    [(Proto::Udp, dom0_net::ECHO_PORT), (Proto::Udp, dom0_net::CONTROL_PORT), (Proto::Tcp, dom0_net::ECHO_PORT)];

/// What the host measured against one echo service.
struct Figures {
    udp_median_us: f64,
    tcp_mbps: f64,
}

fn pattern() -> Vec<u8> {
    (0..TCP_BYTES).map(|i| (i * 13 + i / 509) as u8).collect()
}

fn measure(udp: std::net::SocketAddr, tcp: std::net::SocketAddr) -> Result<Figures> {
    let plan = EchoPlan { datagrams: ROUND_TRIPS, payload: 64, ..EchoPlan::default() };
    let r = udp_echo(udp, &plan)?;
    let (took, n) = tcp_echo_timed(tcp, &pattern(), Duration::from_secs(60))?;
    Ok(Figures { udp_median_us: percentile_us(&r, 0.5), tcp_mbps: n as f64 * 8.0 / took.as_secs_f64() / 1e6 })
}

/// How every boot of this benchmark runs: quietly, 180 s at most.
fn run_opts(imgs: &Images, bundle: std::path::PathBuf, devices: crate::qemu::Devices) -> RunOpts {
    RunOpts {
        kernel: imgs.hypervisor.clone(),
        bundle: Some(bundle),
        append: String::new(),
        timeout_s: 180,
        stream: false,
        extra: Vec::new(),
        devices,
        kill_on: None,
        input: Default::default(),
    }
}

/// Boots `bundle` with the NIC and a disk, measures once `line` appears
/// (then `after`), and checks the run passed.
fn boot(name: &'static str, imgs: &Images, w: BundleWriter, line: &str, stop: bool) -> Result<Figures> {
    let mut w = w;
    add_symbols(&mut w, imgs)?;
    let bundle = images::write_bundle(name, &w.finish())?;
    let mut rig = Rig::new(name);
    let nic = rig.nic(&FORWARDS)?;
    rig.disk(4 << 20)?;
    let udp = nic.host_addr(Proto::Udp, dom0_net::ECHO_PORT)?;
    let tcp = nic.host_addr(Proto::Tcp, dom0_net::ECHO_PORT)?;
    let control = nic.host_addr(Proto::Udp, dom0_net::CONTROL_PORT)?;
    let (devices, _, _) = rig.into_parts();
    let opts = run_opts(imgs, bundle, devices);
    let watch = Watch::new(line, Duration::from_secs(60), move || {
        let f = measure(udp, tcp);
        if stop {
            let _ = dom0_net::ask(control, "stop", "rf-net stopping");
        }
        f
    });
    let (r, mut got) = qemu::run_watched(&opts, vec![watch])?;
    let _ = std::fs::write(images::target_dir().join("ringfence").join(format!("{name}.log")), &r.output);
    let figures = got.pop().ok_or("the measurement never started")??;
    if r.outcome != Outcome::Pass {
        return Err(format!("{name}: the run did not pass: {}\n{}", r.outcome, r.output));
    }
    Ok(figures)
}

/// The domU-to-domU echo: the client's `TCP 1: ... in MS ms` line.
fn domu_domu(imgs: &Images) -> Result<f64> {
    let mut w = BundleWriter::new();
    let dom0 = format!("serve vif=server:30:{SERVER} vif=client:30:{CLIENT}");
    w.domain(
        DomainEntry::new("dom0", imgs.guest("dom0", &root())?, 2560)
            .cmdline(dom0.as_bytes())
            .privileged(true)
            .dma_kib(512),
    );
    let server = "role=server ip=10.0.3.1/24 port=7 conns=1 ms=60000";
    w.domain(DomainEntry::new("server", imgs.guest("tcpecho", &root())?, 2048).cmdline(server.as_bytes()));
    let client = format!("role=client ip=10.0.3.2/24 server=10.0.3.1 port=7 bytes={TCP_BYTES} ms=60000 pings=1");
    w.domain(DomainEntry::new("client", imgs.guest("tcpecho", &root())?, 2048).cmdline(client.as_bytes()));
    add_symbols(&mut w, imgs)?;
    let bundle = images::write_bundle("bench-net-domu", &w.finish())?;
    let mut rig = Rig::new("bench-net-domu");
    rig.disk(4 << 20)?;
    let (devices, _, _) = rig.into_parts();
    let opts = run_opts(imgs, bundle, devices);
    let r = qemu::run(&opts)?;
    let _ = std::fs::write(images::target_dir().join("ringfence").join("bench-net-domu.log"), &r.output);
    if r.outcome != Outcome::Pass {
        return Err(format!("bench-net-domu: the run did not pass: {}\n{}", r.outcome, r.output));
    }
    let line = r
        .output
        .lines()
        .find(|l| l.contains("[client] client: TCP 1: sent "))
        .ok_or("bench-net-domu: no TCP line from the client")?;
    let ms: f64 = line
        .split(", in ")
        .nth(1)
        .and_then(|t| t.split(" ms").next())
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| format!("bench-net-domu: no time in {line:?}"))?;
    Ok(TCP_BYTES as f64 * 8.0 / (ms.max(1.0) / 1e3) / 1e6)
}

pub fn run(imgs: &Images) -> Result<()> {
    let mut w = BundleWriter::new();
    w.domain(
        DomainEntry::new("dom0", imgs.guest("dom0", &root())?, 2048)
            .cmdline(b"net net_s=150 tcp_echo")
            .expect(Expect::Poweroff)
            .privileged(true)
            .dma_kib(dom0_net::DMA_KIB),
    );
    let native = boot("bench-net-native", imgs, w, dom0_net::READY_LINE, true)?;

    let mut w = BundleWriter::new();
    w.domain(
        DomainEntry::new("dom0", imgs.guest("dom0", &root())?, 2560)
            .cmdline(format!("serve uplink=10 vif=echo:10:{SERVER}").as_bytes())
            .privileged(true)
            .dma_kib(512 + dom0_net::DMA_KIB),
    );
    let echo = "role=server ip=10.0.2.15/24 port=7 conns=1 ms=150000";
    w.domain(DomainEntry::new("echo", imgs.guest("tcpecho", &root())?, 2048).cmdline(echo.as_bytes()));
    let domu = boot("bench-net-uplink", imgs, w, "[echo] tcpecho: echo up at 10.0.2.15/24", false)?;
    let dd = domu_domu(imgs)?;

    let tcp_ratio = domu.tcp_mbps / native.tcp_mbps;
    let rtt_ratio = native.udp_median_us / domu.udp_median_us;
    println!("split network vs dom0-native, from the host through QEMU's forwards (TCG wall time)");
    println!("  {:<40} {:>12} {:>12} {:>8}   target", "", "dom0-native", "domU", "ratio");
    println!(
        "  {:<40} {:>7.1} Mb/s {:>7.1} Mb/s {tcp_ratio:>8.3}   >= 0.8 {}",
        format!("TCP echo of {} MiB, host <-> guest", TCP_BYTES >> 20),
        native.tcp_mbps,
        domu.tcp_mbps,
        if tcp_ratio >= 0.8 { "met" } else { "NOT met" }
    );
    println!(
        "  {:<40} {:>9.1} us {:>9.1} us {rtt_ratio:>8.3}   (native / domU)",
        "UDP round trip, 64 B, median", native.udp_median_us, domu.udp_median_us
    );
    println!("  domU <-> domU TCP echo of {} MiB: {dd:.1} Mb/s (sent bytes over the client's time)", TCP_BYTES >> 20);
    crate::bench_json::record(
        "net_domu_host_ratio",
        &format!("{{\"ratio\": {tcp_ratio:.4}, \"native_mbps\": {:.2}, \"domu_mbps\": {:.2}, \"bytes\": {TCP_BYTES}, \"what\": \"TCP echo host<->guest\", \"target\": 0.8}}", native.tcp_mbps, domu.tcp_mbps),
    )?;
    crate::bench_json::record(
        "net_udp_rtt_ratio",
        &format!("{{\"ratio\": {rtt_ratio:.4}, \"native_median_us\": {:.2}, \"domu_median_us\": {:.2}, \"round_trips\": {ROUND_TRIPS}}}", native.udp_median_us, domu.udp_median_us),
    )?;
    crate::bench_json::record("net_domu_domu_mbps", &format!("{dd:.2}"))?;
    println!("JSON: {}", crate::bench_json::path().display());
    Ok(())
}
