//! The seed's isolation experiment: the classic Xen result that benchmark
//! domains are degraded only a few per cent next to a fork bomb and a
//! hostile domain, reproduced on Ringfence.
//!
//! Two QEMU runs under `-icount shift=0` (time = instructions, so every
//! figure is deterministic), each with five domains, all of weight 100:
//! - **A, antagonists**: two `iso-bench` benchmark domains, a `forkbomb`
//!   (ring-3 processes spawned without end), a `hostile` domain (page-table
//!   batch storms, maximum-length console floods of control bytes, 1 ns
//!   timer storms), and a warped `iso-latency` domain that measures its
//!   timer wake-up latency.
//! - **B, baseline**: the same, with the fork bomb and the hostile domain
//!   replaced by plain CPU hogs (`hog`).
//!
//! Every guest works in the same window of system time,
//! `[START_MS, END_MS)`; the antagonists and hogs stop at its end and power
//! off, so each run ends with the hypervisor's verdict. From the guests'
//! reports:
//! - `isolation_degradation` = the worse of the two benchmark domains'
//!   `1 - iterations_A / iterations_B` (target ≤ [`MAX_DEGRADATION`]);
//! - `isolation_latency_ratio` = worst wake-up latency in A / in B
//!   (target ≤ [`MAX_LATENCY_RATIO`]).
//!
//! [`scenario`] is the `isolation-seed` QEMU scenario of `cargo xtask test`
//! (it fails when a target is missed, a domain did not do its part, or a
//! run did not end with PASS); [`measure`] feeds the rows of
//! `cargo xtask bench`.

use crate::images::{self, add_symbols, Images};
use crate::qemu::{self, Devices, Outcome, RunOpts};
use crate::{root, Result};
use ringfence_bundle::Expect;
use ringfence_bundle_writer::{BundleWriter, DomainEntry};

/// The scenario's name in `cargo xtask test`.
pub const NAME: &str = "isolation-seed";
/// What the scenario checks.
pub const WHAT: &str =
    "benchmark domains next to a fork bomb and a hostile domain: degradation <= 2%, warped wake-up latency <= 2x";
/// Start of the measured window, in ms of system time (boot and warm-up
/// come before it).
pub const START_MS: u64 = 100;
/// End of the measured window; the antagonists stop here.
pub const END_MS: u64 = 1100;
/// Target: worst benchmark domain's throughput loss.
pub const MAX_DEGRADATION: f64 = 0.02;
/// Target: worst wake-up latency next to the antagonists, over the baseline.
pub const MAX_LATENCY_RATIO: f64 = 2.0;
/// Time limit of one QEMU run (wall-clock seconds).
const RUN_TIMEOUT_S: u64 = 120;
/// Warp of the latency domain (as in the `bvt-warp` scenario).
const WARP_US: u32 = 20_000;
/// The benchmark domains.
const BENCH: [&str; 2] = ["bench-1", "bench-2"];

/// Which of the two runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// A: the fork bomb and the hostile domain.
    Antagonists,
    /// B: two CPU hogs in their place.
    Baseline,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Antagonists => "antagonists",
            Run::Baseline => "baseline",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunFigures {
    pub run: Run,
    /// Iterations of each benchmark domain in the window.
    pub iterations: [u64; 2],
    /// CPU time each benchmark domain was charged in the window.
    pub cpu_ns: [u64; 2],
    pub wakeups: u64,
    pub mean_latency_ns: u64,
    pub worst_latency_ns: u64,
    /// The antagonists' (or hogs') report lines.
    pub evidence: Vec<String>,
    /// Wall time of the QEMU run, seconds.
    pub wall_s: f64,
}

/// Both runs and the figures derived from them.
#[derive(Clone, Debug)]
pub struct Isolation {
    pub a: RunFigures,
    pub b: RunFigures,
    pub degradation: f64,
    pub latency_ratio: f64,
}

/// One derived figure against its target.
pub struct Row {
    pub key: &'static str,
    pub label: &'static str,
    pub value: f64,
    pub max: f64,
}

impl Row {
    pub fn met(&self) -> bool {
        self.value <= self.max
    }
}

impl Isolation {
    /// The two figures with their targets.
    pub fn rows(&self) -> [Row; 2] {
        [
            Row {
                key: "isolation_degradation",
                label: "benchmark throughput lost next to antagonists",
                value: self.degradation,
                max: MAX_DEGRADATION,
            },
            Row {
                key: "isolation_latency_ratio",
                label: "worst wake-up latency, antagonists / baseline",
                value: self.latency_ratio,
                max: MAX_LATENCY_RATIO,
            },
        ]
    }

    /// Human-readable figures, one per line.
    pub fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (i, name) in BENCH.iter().enumerate() {
            let (a, b) = (self.a.iterations[i], self.b.iterations[i]);
            v.push(format!(
                "{name}: {a} iterations next to antagonists, {b} in the baseline ({:+.2}%); cpu {} ms vs {} ms",
                (a as f64 / b as f64 - 1.0) * 100.0,
                self.a.cpu_ns[i] / 1_000_000,
                self.b.cpu_ns[i] / 1_000_000
            ));
        }
        for f in [&self.a, &self.b] {
            v.push(format!(
                "latency ({}): {} wake-ups, mean {} ns, worst {} ns",
                f.run.name(),
                f.wakeups,
                f.mean_latency_ns,
                f.worst_latency_ns
            ));
        }
        for f in [&self.a, &self.b] {
            for e in &f.evidence {
                v.push(format!("{} run: {e}", f.run.name()));
            }
        }
        v.push(format!("wall time: antagonists {:.1} s, baseline {:.1} s", self.a.wall_s, self.b.wall_s));
        v
    }
}

fn entry(imgs: &Images, name: &str, image: &str, kib: u32, cmdline: &str) -> Result<DomainEntry> {
    Ok(DomainEntry::new(name, imgs.guest(image, &root())?, kib).cmdline(cmdline).expect(Expect::Poweroff))
}

/// The bundle of one run. All five domains have the default weight (100).
fn bundle(imgs: &Images, run: Run) -> Result<Vec<u8>> {
    let window = format!("start_ms={START_MS} end_ms={END_MS}");
    let mut w = BundleWriter::new();
    for name in BENCH {
        w.domain(entry(imgs, name, "iso-bench", 1024, &window)?);
    }
    match run {
        Run::Antagonists => {
            w.domain(entry(imgs, "forkbomb", "forkbomb", 2048, &format!("end_ms={END_MS}"))?);
            w.domain(entry(imgs, "hostile", "hostile", 1024, &format!("end_ms={END_MS}"))?);
        }
        Run::Baseline => {
            // A hog counts its time from its own start, so it outlives the
            // window.
            for name in ["hog-1", "hog-2"] {
                w.domain(entry(imgs, name, "hog", 512, &format!("millis={END_MS}"))?);
            }
        }
    }
    w.domain(entry(imgs, "latency", "iso-latency", 512, &window)?.warp_us(WARP_US));
    add_symbols(&mut w, imgs)?;
    Ok(w.finish())
}

/// The first line containing `text`.
fn line<'a>(out: &'a str, text: &str) -> Result<&'a str> {
    out.lines().find(|l| l.contains(text)).ok_or_else(|| format!("no console line contains {text:?}"))
}

/// The decimal number after `key` in `line`.
fn num(line: &str, key: &str) -> Result<u64> {
    let rest = line.split_once(key).ok_or_else(|| format!("no {key:?} in {line:?}"))?.1;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().map_err(|_| format!("no number after {key:?} in {line:?}"))
}

fn need(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// Reads one run's console: the figures, and whether every domain did
/// what it should.
fn parse(run: Run, out: &str) -> Result<RunFigures> {
    let mut iterations = [0; 2];
    let mut cpu_ns = [0; 2];
    for (i, name) in BENCH.iter().enumerate() {
        let l = line(out, &format!("[{name}] iso-bench: iterations="))?;
        iterations[i] = num(l, "iterations=")?;
        cpu_ns[i] = num(l, "cpu_ns=")?;
        need(iterations[i] > 0, || format!("{name} completed no iteration in the window: {l}"))?;
        need(num(l, "sleeps=")? > 0, || format!("{name} never slept on its timer: {l}"))?;
    }
    let lat = line(out, "[latency] iso-latency: wakeups=")?;
    let (wakeups, mean, worst) = (num(lat, "wakeups=")?, num(lat, "mean_ns=")?, num(lat, "worst_ns=")?);
    need(wakeups > 0, || format!("the latency domain never woke in the window: {lat}"))?;
    let mut evidence = Vec::new();
    let mut names: Vec<&str> = BENCH.to_vec();
    names.push("latency");
    match run {
        Run::Antagonists => {
            let oom = line(out, "[forkbomb] forkbomb: out of memory after ")?;
            need(num(oom, "out of memory after ")? > 0, || format!("the fork bomb spawned nothing: {oom}"))?;
            let fb = line(out, "[forkbomb] forkbomb: spawned=")?;
            let (spawned, new) = (num(fb, "spawned=")?, num(fb, "new=")?);
            need(num(fb, "recycled=")? > 0 && spawned > new, || {
                format!("the fork bomb never reaped and respawned after running out of memory: {fb}")
            })?;
            need(num(fb, "exited=")? > 0 && num(fb, "killed=")? > 0, || {
                format!("the fork bomb's processes did not both exit and get killed: {fb}")
            })?;
            need(num(fb, "forks=")? > 0 && num(fb, "syscalls=")? > spawned, || {
                format!("the fork bomb's processes made no system calls: {fb}")
            })?;
            let h = line(out, "[hostile] hostile: rounds=")?;
            need(num(h, "pt_calls=")? > 0 && num(h, "pt_ops=")? > 0, || format!("no page-table storm: {h}"))?;
            need(num(h, "pt_errors=")? == 0, || format!("the hypervisor refused page-table storm requests: {h}"))?;
            let floods = num(h, "floods=")?;
            need(floods > 0 && num(h, "console_bytes=")? == floods * 4096, || {
                format!("no console flood of full 4096-byte writes: {h}")
            })?;
            need(out.contains("[hostile] \\x00\\x01\\x02\\x03"), || {
                "the console flood's escaped control bytes never reached the console".into()
            })?;
            let armed = num(h, "timers_armed=")?;
            need(armed > 0 && num(h, "timers_fired=")? >= armed, || format!("no timer storm: {h}"))?;
            evidence.push(oom.to_string());
            evidence.push(fb.to_string());
            evidence.push(h.to_string());
            names.extend(["forkbomb", "hostile"]);
        }
        Run::Baseline => {
            for hog in ["hog-1", "hog-2"] {
                let l = line(out, &format!("[{hog}] hog: cpu_ns="))?;
                need(num(l, "cpu_ns=")? > 0, || format!("{hog} did not run: {l}"))?;
                evidence.push(l.to_string());
                names.push(hog);
            }
        }
    }
    for n in names {
        need(out.contains(&format!("({n}) exited: poweroff")), || format!("domain {n} did not power off"))?;
    }
    need(out.contains("(rf) verdict: PASS"), || "no PASS verdict from the hypervisor".into())?;
    Ok(RunFigures {
        run,
        iterations,
        cpu_ns,
        wakeups,
        mean_latency_ns: mean,
        worst_latency_ns: worst,
        evidence,
        wall_s: 0.0,
    })
}

/// The end of a console, without the console flood's lines.
fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with("[hostile] \\x")).collect();
    let flood = out.lines().count() - lines.len();
    let mut s = format!("  --- console: last lines ({flood} lines of console flood left out) ---\n");
    for l in &lines[lines.len().saturating_sub(60)..] {
        s.push_str(&format!("  | {l}\n"));
    }
    s
}

/// Boots one run and reads its figures.
pub fn run(imgs: &Images, run: Run) -> Result<RunFigures> {
    let bundle = images::write_bundle(&format!("{NAME}-{}", run.name()), &bundle(imgs, run)?)?;
    let opts = RunOpts {
        kernel: imgs.hypervisor.clone(),
        bundle: Some(bundle),
        append: String::new(),
        timeout_s: RUN_TIMEOUT_S,
        stream: false,
        extra: vec!["-icount".into(), "shift=0".into()],
        devices: Devices::NONE,
        kill_on: None,
        input: Default::default(),
    };
    let r = qemu::run(&opts)?;
    let wall_s = r.wall.as_secs_f64();
    // The whole console, for reading what the report lines summarise
    // (each domain's worst timer wake-up and what delayed it).
    let log = root().join(format!("target/{NAME}-{}.log", run.name()));
    let _ = std::fs::write(&log, &r.output);
    if r.outcome != Outcome::Pass {
        return Err(format!(
            "{} run: expected PASS, got {} after {wall_s:.1} s\n{}",
            run.name(),
            r.outcome,
            tail(&r.output)
        ));
    }
    let mut f = parse(run, &r.output).map_err(|e| format!("{} run: {e}\n{}", run.name(), tail(&r.output)))?;
    f.wall_s = wall_s;
    Ok(f)
}

/// The derived figures of two runs.
pub fn derive(a: RunFigures, b: RunFigures) -> Isolation {
    let degradation =
        (0..2).map(|i| 1.0 - a.iterations[i] as f64 / b.iterations[i].max(1) as f64).fold(f64::NEG_INFINITY, f64::max);
    let latency_ratio = a.worst_latency_ns as f64 / b.worst_latency_ns.max(1) as f64;
    Isolation { a, b, degradation, latency_ratio }
}

/// Runs A and B and derives the figures.
pub fn measure(imgs: &Images) -> Result<Isolation> {
    let a = run(imgs, Run::Antagonists)?;
    let b = run(imgs, Run::Baseline)?;
    Ok(derive(a, b))
}

/// The `isolation-seed` scenario: both runs, every domain as expected, both
/// targets met. Returns the wall time of the two runs.
pub fn scenario(imgs: &Images) -> Result<f64> {
    let iso = measure(imgs)?;
    for l in iso.describe() {
        println!("  {l}");
    }
    let mut missed = Vec::new();
    for r in iso.rows() {
        let verdict = if r.met() { "met" } else { "NOT MET" };
        println!("  {} = {:.4} ({}; target <= {}): {verdict}", r.key, r.value, r.label, r.max);
        if !r.met() {
            missed.push(format!("{} = {:.4} is above {}", r.key, r.value, r.max));
        }
    }
    if missed.is_empty() {
        Ok(iso.a.wall_s + iso.b.wall_s)
    } else {
        Err(format!("  isolation targets missed: {}", missed.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH_LINES: &str = "[bench-1] iso-bench: iterations=1000 window_ms=1000 cpu_ns=250000000 sleeps=60\n\
        [bench-2] iso-bench: iterations=900 window_ms=1000 cpu_ns=240000000 sleeps=56\n\
        [latency] iso-latency: wakeups=190 mean_ns=4000 worst_ns=9000\n\
        (rf) dom1 (bench-1) exited: poweroff\n(rf) dom2 (bench-2) exited: poweroff\n\
        (rf) dom5 (latency) exited: poweroff\n";

    fn baseline() -> String {
        format!(
            "{BENCH_LINES}[hog-1] hog: cpu_ns=5 wait_ns=1 bursts=0\n[hog-2] hog: cpu_ns=5 wait_ns=1 bursts=0\n\
             (rf) dom3 (hog-1) exited: poweroff\n(rf) dom4 (hog-2) exited: poweroff\n(rf) verdict: PASS: every domain\n"
        )
    }

    #[test]
    fn parses_a_baseline_and_derives_figures() {
        let b = parse(Run::Baseline, &baseline()).expect("parses");
        assert_eq!(b.iterations, [1000, 900]);
        assert_eq!(b.worst_latency_ns, 9000);
        let mut a = b.clone();
        a.iterations = [990, 810];
        a.worst_latency_ns = 27000;
        let iso = derive(a, b);
        assert!((iso.degradation - 0.1).abs() < 1e-9, "the worse of 1% and 10%");
        assert!((iso.latency_ratio - 3.0).abs() < 1e-9);
        let rows = iso.rows();
        assert!(!rows[0].met() && !rows[1].met());
    }

    #[test]
    fn a_missing_verdict_or_domain_fails() {
        let out = baseline();
        assert!(parse(Run::Baseline, &out.replace("(rf) verdict: PASS", "(rf) verdict: FAIL")).is_err());
        assert!(parse(Run::Baseline, &out.replace("(hog-2) exited: poweroff", "(hog-2) crashed")).is_err());
        assert!(parse(Run::Baseline, &out.replace("iterations=900", "iterations=0")).is_err());
    }

    #[test]
    fn antagonists_must_show_their_storms() {
        let storms = "[forkbomb] forkbomb: out of memory after 70 processes (ENOMEM); reaping and respawning\n\
            [forkbomb] forkbomb: spawned=500 new=70 recycled=430 exited=375 killed=125 forks=16000 syscalls=40000\n\
            [hostile] \\x00\\x01\\x02\\x03\\x04\n\
            [hostile] hostile: rounds=3 pt_calls=12 pt_ops=6144 pt_errors=0 floods=3 console_bytes=12288 timers_armed=192 timers_fired=192\n\
            (rf) dom3 (forkbomb) exited: poweroff\n(rf) dom4 (hostile) exited: poweroff\n(rf) verdict: PASS\n";
        let out = format!("{BENCH_LINES}{storms}");
        let a = parse(Run::Antagonists, &out).expect("parses");
        assert_eq!(a.evidence.len(), 3);
        for (from, to) in [
            ("recycled=430", "recycled=0"),
            ("killed=125", "killed=0"),
            ("floods=3", "floods=0"),
            ("console_bytes=12288", "console_bytes=100"),
            ("timers_fired=192", "timers_fired=10"),
            ("pt_errors=0", "pt_errors=1"),
            ("[hostile] \\x00", "[hostile] x"),
            ("(hostile) exited: poweroff", "(hostile) crashed"),
        ] {
            assert!(parse(Run::Antagonists, &out.replace(from, to)).is_err(), "{from} -> {to} must fail");
        }
    }
}
