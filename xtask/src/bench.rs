//! `cargo xtask bench`: path-length benchmarks of the hypervisor, run by the
//! `bench` guest under QEMU `-icount shift=0`, where `rdtsc` counts executed
//! instructions and every run gives the same numbers.

use crate::images::{self, add_symbols};
use crate::qemu::{self, Outcome, RunOpts};
use crate::{root, Result};
use ringfence_bundle_writer::{BundleWriter, DomainEntry};
use std::fmt::Write as _;

/// A target: `name` ≤ `factor` × `of`.
struct Target {
    name: &'static str,
    of: &'static str,
    factor: f64,
}

const TARGETS: &[Target] = &[
    Target { name: "null_hypercall", of: "bare_trap", factor: 1.3 },
    Target { name: "direct_syscall", of: "bare_trap", factor: 1.1 },
    Target { name: "direct_syscall", of: "bounced_syscall", factor: 0.5 },
    Target { name: "mmu_update_batched_per_entry", of: "mmu_update_single", factor: 0.3 },
];

/// An absolute target: `name` ≤ `max` instructions.
struct Bound {
    name: &'static str,
    max: f64,
}

/// `worst_hypercall`: the longest uninterrupted stretch in the hypervisor a
/// guest can cause (its budget is 50 000 instructions plus one unit of
/// work; see `kernel/src/hypercall.rs`).
const BOUNDS: &[Bound] = &[Bound { name: "worst_hypercall", max: 200_000.0 }];

/// The hypervisor's final-report line with its longest stretch.
fn longest_stretch(output: &str) -> Option<f64> {
    output.lines().find_map(|l| {
        let rest = l.split_once("longest stretch in the hypervisor: ")?.1;
        rest.split_once(" TSC ticks")?.0.parse().ok()
    })
}

const ROWS: &[(&str, &str)] = &[
    ("bare_trap", "bare trap round trip (null trap, the floor)"),
    ("null_hypercall", "null hypercall (xen_version, lock-free)"),
    ("locked_hypercall", "memory_op query (takes the hv lock)"),
    ("direct_syscall", "ring-3 syscall, direct gate (int 0x80)"),
    ("bounced_syscall", "ring-3 syscall, bounced (syscall insn)"),
    ("event_upcall", "null hypercall + event upcall delivery"),
    ("domain_switch", "domain switch (yield to another domain)"),
    ("mmu_update_single", "mmu_update, 1 entry per call"),
    ("mmu_update_batched_per_entry", "mmu_update, 32 per call, per entry"),
];

pub fn run(args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let imgs = images::build()?;
    let mut w = BundleWriter::new();
    w.domain(DomainEntry::new("bench", imgs.guest("bench", &root())?, 2048).cmdline("mode=all"));
    w.domain(DomainEntry::new("partner", imgs.guest("bench", &root())?, 512).cmdline("mode=partner"));
    add_symbols(&mut w, &imgs)?;
    let bundle = images::write_bundle("bench", &w.finish())?;
    let opts = RunOpts {
        kernel: imgs.hypervisor.clone(),
        bundle: Some(bundle),
        append: String::new(),
        timeout_s: 300,
        stream: false,
        extra: vec!["-icount".into(), "shift=0".into()],
    };
    let r = qemu::run(&opts)?;
    if r.outcome != Outcome::Pass {
        return Err(format!("the benchmark run did not pass: {}\n{}", r.outcome, r.output));
    }
    // The worst stretch: the longest hypercalls and page-table storms
    // guests can make, beside a victim.
    let mut w = BundleWriter::new();
    w.domain(DomainEntry::new("storm", imgs.guest("bench", &root())?, 2048).cmdline("mode=storm"));
    w.domain(DomainEntry::new("pt-attacker", imgs.guest("pt-attacker", &root())?, 1024));
    w.domain(DomainEntry::new("hello", imgs.guest("hello", &root())?, 1024).cmdline("rounds=2"));
    add_symbols(&mut w, &imgs)?;
    let storm = RunOpts { bundle: Some(images::write_bundle("bench-storm", &w.finish())?), ..opts };
    let rs = qemu::run(&storm)?;
    if rs.outcome != Outcome::Pass || !rs.output.contains("[storm] storm: timer storm done") {
        return Err(format!("the storm run did not pass: {}\n{}", rs.outcome, rs.output));
    }
    let worst = [longest_stretch(&r.output), longest_stretch(&rs.output)]
        .into_iter()
        .flatten()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        .ok_or("no 'longest stretch' line in the hypervisor's reports")?;
    let get = |name: &str| -> Option<f64> {
        r.output.lines().find_map(|l| {
            let rest = l.strip_prefix("[bench] bench: ")?;
            let (n, v) = rest.split_once(' ')?;
            (n == name).then(|| v.parse().ok()).flatten()
        })
    };
    println!("Ringfence path lengths (instructions per operation, QEMU TCG -icount shift=0, min of 5 x 1000)");
    println!("{:<44} {:>12} {:>10}", "operation", "instructions", "x floor");
    let floor = get("bare_trap").ok_or("no bare_trap figure in the output")?;
    let mut json = String::from("{\n  \"unit\": \"instructions\",\n  \"results\": {\n");
    for (key, label) in ROWS {
        let v = get(key).ok_or_else(|| format!("no {key} figure in the output:\n{}", r.output))?;
        println!("{label:<44} {v:>12.1} {:>10.2}", v / floor);
        let _ = writeln!(json, "    \"{key}\": {v:.2},");
    }
    println!("{:<44} {worst:>12.0} {:>10.2}", "worst uninterrupted stretch (storms)", worst / floor);
    let _ = writeln!(json, "    \"worst_hypercall\": {worst:.0}");
    json.push_str("  },\n  \"targets\": [\n");
    println!();
    let mut all_met = true;
    for (i, t) in TARGETS.iter().enumerate() {
        let (a, b) = (get(t.name).unwrap_or(f64::NAN), get(t.of).unwrap_or(f64::NAN));
        let ratio = a / b;
        let met = ratio <= t.factor;
        all_met &= met;
        println!(
            "target {:<30} <= {:.1} x {:<17} measured {:.3}  {}",
            t.name,
            t.factor,
            t.of,
            ratio,
            if met { "met" } else { "NOT MET" }
        );
        let _ = writeln!(
            json,
            "    {{\"name\": \"{}\", \"of\": \"{}\", \"max_ratio\": {}, \"ratio\": {ratio:.4}, \"met\": {met}}}{}",
            t.name,
            t.of,
            t.factor,
            if i + 1 < TARGETS.len() { "," } else { "" }
        );
    }
    json.push_str("  ],\n  \"bounds\": [\n");
    for (i, b) in BOUNDS.iter().enumerate() {
        let v = if b.name == "worst_hypercall" { worst } else { get(b.name).unwrap_or(f64::NAN) };
        let met = v <= b.max;
        all_met &= met;
        println!("target {:<30} <= {:<24} measured {v:.0}  {}", b.name, b.max, if met { "met" } else { "NOT MET" });
        let _ = writeln!(
            json,
            "    {{\"name\": \"{}\", \"max\": {}, \"value\": {v:.0}, \"met\": {met}}}{}",
            b.name,
            b.max,
            if i + 1 < BOUNDS.len() { "," } else { "" }
        );
    }
    json.push_str("  ]\n}\n");
    let path = images::target_dir().join("bench.json");
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("\nJSON: {}", path.display());
    if !all_met && !smoke {
        eprintln!("xtask: some path-length targets are not met (see above)");
    }
    Ok(())
}
