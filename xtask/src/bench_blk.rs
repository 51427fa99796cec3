//! The split block device against dom0-native on the same disk, in one
//! boot: dom0 (`serve native_bench=LBA rounds=R`) measures its own
//! virtio-blk path on a region of the disk (32 requests in flight, as the
//! domU keeps) and serves a domU (`blklog mode=bench`) its raw slice,
//! which measures the same things through blkfront (streamed: 32 in
//! flight all the time), the ring, the grant maps and blkback. The
//! sequential and random passes run in [`ROUNDS`] rounds, each domU round
//! beside a native one (native first in even rounds, last in odd ones:
//! the domU asks for dom0's through the store), so both paths' figures
//! come from the same stretch of the run; a path's rate is its bytes (or
//! requests) over its time summed over the rounds, and a ratio is the
//! median of the rounds' ratios. Twice: in plain TCG
//! (MB/s and IOPS of wall time; the ratios are what counts, the host's
//! speed cancels in them) and under `-icount shift=0` (instructions per
//! 4 KiB request, both paths). Keys `blk_seq_read_ratio`,
//! `blk_seq_write_ratio`, `blk_randread_ratio` (each the median of the
//! per-round ratios, with the rounds and the ratio of the totals) and
//! `blk_instructions_per_4k` (the best single read's TSC, and the
//! instructions the domains ran per read) of `target/bench-dom0.json`.

use crate::bench::blk_figure;
use crate::images::{self, add_symbols, Images};
use crate::qemu::{self, devices::Disk, devices::DiskCache, Devices, Outcome, RunOpts};
use crate::vbd::{Kind, Plan};
use crate::{root, Result};
use ringfence_bundle_writer::{BundleWriter, DomainEntry};

/// MiB each sequential pass moves.
const MIB: u64 = 16;
/// Rounds of the sequential and random passes per path.
const ROUNDS: u64 = 8;
/// Requests the domU keeps in flight.
const QD: u64 = 32;
/// Random 4 KiB reads per path.
const RAND: u64 = 1024;

pub fn run(imgs: &Images) -> Result<()> {
    let mut plan = Plan::default();
    plan.add("bench", Kind::Raw, MIB + 1);
    let native = plan.disk_sectors();
    let disk_bytes = (native + (MIB + 1) * 2048) * 512;
    let mut w = BundleWriter::new();
    // Both paths keep QD requests in flight.
    let common = format!("mib={MIB} rand4k={RAND} reads4k=256 qd={QD} rounds={ROUNDS}");
    let dom0 = format!("serve native_bench={native} {common} heap=160 {}", plan.cmdline());
    w.domain(
        // The native pass's 32 buffers of 64 KiB come from the DMA pool.
        DomainEntry::new("dom0", imgs.guest("dom0", &root())?, 4608)
            .cmdline(dom0.as_bytes())
            .privileged(true)
            .dma_kib(2560),
    );
    // 32 requests of 64 KiB in flight: 512 pool pages, 2 MiB of buffers.
    // Copying passes: the pool carries 32 requests of 64 KiB; zero-copy
    // ones: 32 buffers of 16 pages and 32 single pages (the random pass)
    // lent from it, and pages to spare.
    let domu = format!("mode=bench pool={} heap=700 {common}", QD * 17 + 16);
    w.domain(DomainEntry::new("bench", imgs.guest("blklog", &root())?, 6144).cmdline(domu.as_bytes()));
    add_symbols(&mut w, imgs)?;
    let bundle = images::write_bundle("bench-blk", &w.finish())?;
    let boot = |icount: bool| -> Result<String> {
        let image = images::target_dir().join("ringfence").join("bench-blk.img");
        let mut disk = Disk::create(&image, disk_bytes)?;
        disk.cache = DiskCache::WriteBack;
        // Every block allocated on the host before the run: on a sparse
        // image the first path to write a region would also pay for the
        // host file system's allocation, and the two paths write
        // different regions.
        std::fs::write(&image, vec![0u8; disk_bytes as usize]).map_err(|e| format!("{}: {e}", image.display()))?;
        let opts = RunOpts {
            kernel: imgs.hypervisor.clone(),
            bundle: Some(bundle.clone()),
            append: String::new(),
            timeout_s: 600,
            stream: false,
            extra: if icount { vec!["-icount".into(), "shift=0".into()] } else { vec![] },
            devices: Devices { disk: Some(disk), nic: None },
            kill_on: None,
            input: Default::default(),
        };
        let r = qemu::run(&opts)?;
        let log = images::target_dir().join("ringfence").join(if icount {
            "bench-blk-icount.log"
        } else {
            "bench-blk-wall.log"
        });
        let _ = std::fs::write(&log, &r.output);
        if r.outcome != Outcome::Pass || !r.output.contains("[bench] blkbench: done") {
            return Err(format!("the split block benchmark did not pass: {}\n{}", r.outcome, r.output));
        }
        Ok(r.output)
    };
    let wall = boot(false)?;
    let icount = boot(true)?;
    let rate = |name: &str, k: &str| -> Result<f64> { total_rate(&wall, name, k) };
    let (nr, dr) = (rate("native_seq_read", "bytes")? / 1e6, rate("domu_seq_read", "bytes")? / 1e6);
    let (nw, dw) = (rate("native_seq_write", "bytes")? / 1e6, rate("domu_seq_write", "bytes")? / 1e6);
    let (ni, di) = (rate("native_randread_4k", "count")?, rate("domu_randread_4k", "count")?);
    // The same three under -icount shift=0: virtual time, in which the
    // guests' instructions and the waits for the device are counted
    // reproducibly (the wall-time ratios move with the host's load).
    let vrate = |name: &str, k: &str| -> Result<f64> { total_rate(&icount, name, k) };
    let v_read = vrate("domu_seq_read", "bytes")? / vrate("native_seq_read", "bytes")?;
    let v_copy = vrate("domu_copy_seq_read", "bytes")? / vrate("native_seq_read", "bytes")?;
    let v_write = vrate("domu_seq_write", "bytes")? / vrate("native_seq_write", "bytes")?;
    let v_rand = vrate("domu_randread_4k", "count")? / vrate("native_randread_4k", "count")?;
    let (n4, d4) = (blk_figure(&icount, "native_read_4k", "min_tsc")?, blk_figure(&icount, "domu_read_4k", "min_tsc")?);
    // The instructions the domains ran per single read (their run time
    // under icount, without the waits for the device): dom0's own for the
    // native path; the domU's and dom0's between the domU's marks for the
    // split one.
    let count = blk_figure(&icount, "domu_read_4k", "count")?;
    let n_run = blk_figure(&icount, "native_read_4k", "run_ns")? / blk_figure(&icount, "native_read_4k", "count")?;
    let dom0_run = |m: u64| -> Result<f64> {
        icount
            .lines()
            .filter_map(|l| l.split_once("blkbench: dom0_run ").map(|(_, r)| r))
            .find(|r| r.starts_with(&format!("mark={m} ")))
            .and_then(|r| r.split(' ').find_map(|w| w.strip_prefix("run_ns=")?.parse().ok()))
            .ok_or_else(|| format!("no 'blkbench: dom0_run mark={m}' line"))
    };
    let d_guest = blk_figure(&icount, "domu_read_4k", "run_ns")? / count;
    let d_dom0 = (dom0_run(2)? - dom0_run(1)?) / count;
    let d_run = d_guest + d_dom0;
    // The same for the streamed random reads (32 in flight), over every
    // round: dom0's run time between the domU's marks 100 + 2r and
    // 101 + 2r.
    let rand_count = total_of(&icount, "domu_randread_4k", "count")?;
    let rn_run = total_of(&icount, "native_randread_4k", "run_ns")? / total_of(&icount, "native_randread_4k", "count")?;
    let rd_guest = total_of(&icount, "domu_randread_4k", "run_ns")? / rand_count;
    let mut rd_dom0 = 0.0;
    for r in 0..ROUNDS {
        rd_dom0 += dom0_run(101 + 2 * r)? - dom0_run(100 + 2 * r)?;
    }
    let rd_dom0 = rd_dom0 / rand_count;
    let rd_run = rd_guest + rd_dom0;
    println!(
        "split block device vs dom0-native, same disk, same boot, {ROUNDS} interleaved rounds (TCG wall time; write-back disk; {QD} requests in flight on both paths)"
    );
    // Each round's domU rate over the same round's native one; the
    // median of the rounds is the figure (a load spike on the host that
    // hits one round of one path moves a sum, not the median).
    let mut rounds = Vec::new();
    for (pass, k) in [("seq_read", "bytes"), ("seq_write", "bytes"), ("randread_4k", "count")] {
        rounds.push(round_ratios(&wall, pass, k)?);
    }
    println!(
        "  {:<26} {:>12} {:>12} {:>8} {:>8}   target (on the median)",
        "", "dom0-native", "domU", "median", "totals"
    );
    let row = |what: &str, n: f64, d: f64, unit: &str, r: Option<&[f64]>| {
        let m = r.map_or(d / n, median);
        println!(
            "  {what:<26} {n:>9.1} {unit} {d:>9.1} {unit} {:>8} {:>8.3}   >= 0.9 {}",
            r.map_or("-".to_string(), |_| format!("{m:.3}")),
            d / n,
            if m >= 0.9 { "met" } else { "NOT met" }
        );
    };
    row("64 KiB sequential read", nr, dr, "MB/s", Some(&rounds[0]));
    row("64 KiB sequential write", nw, dw, "MB/s", Some(&rounds[1]));
    row("4 KiB random read", ni, di, "IOPS", Some(&rounds[2]));
    // The copying calls (the caller's own buffers, copied through the
    // pool, once, not interleaved), for comparison: the rows above are
    // zero-copy.
    let (cr, cw) = (rate("domu_copy_seq_read", "bytes")? / 1e6, rate("domu_copy_seq_write", "bytes")? / 1e6);
    row("  copying read", nr, cr, "MB/s", None);
    row("  copying write", nw, cw, "MB/s", None);
    println!(
        "  the same under -icount shift=0 (virtual time, still moved by the device's waits): read {v_read:.3} (copying {v_copy:.3}), write {v_write:.3}, random read {v_rand:.3}"
    );
    println!(
        "  instructions per 4 KiB read (-icount shift=0, best of 256): dom0-native {n4:.0}, domU {d4:.0} ({:.2}x)",
        d4 / n4
    );
    for (what, r) in ["sequential read", "sequential write", "random read"].iter().zip(&rounds) {
        let shown: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
        println!("  per round, {what}: {} (median {:.3})", shown.join(" "), median(r));
    }
    let rec = |key: &str, n: f64, d: f64, unit: &str, rounds: &[f64]| {
        let list: Vec<String> = rounds.iter().map(|x| format!("{x:.4}")).collect();
        crate::bench_json::record(
            key,
            &format!("{{\"ratio\": {:.4}, \"ratio_of_totals\": {:.4}, \"native\": {n:.2}, \"domu\": {d:.2}, \"unit\": \"{unit}\", \"queue_depth\": {QD}, \"rounds\": [{}], \"target\": 0.9}}", median(rounds), d / n, list.join(", ")),
        )
    };
    rec("blk_seq_read_ratio", nr, dr, "MB/s", &rounds[0])?;
    rec("blk_seq_write_ratio", nw, dw, "MB/s", &rounds[1])?;
    rec("blk_randread_ratio", ni, di, "IOPS", &rounds[2])?;
    crate::bench_json::record(
        "blk_ratios_icount",
        &format!("{{\"seq_read\": {v_read:.4}, \"seq_write\": {v_write:.4}, \"randread\": {v_rand:.4}, \"copying_seq_read\": {v_copy:.4}, \"queue_depth\": {QD}}}"),
    )?;
    println!(
        "  instructions the domains ran per 4 KiB read (-icount shift=0, run time over 256, no device waits): dom0-native {n_run:.0}, split {d_run:.0} (domU {d_guest:.0} + dom0 {d_dom0:.0}; {:.2}x)",
        d_run / n_run
    );
    println!(
        "  the same per streamed random 4 KiB read (32 in flight, {ROUNDS} rounds): dom0-native {rn_run:.0}, split {rd_run:.0} (domU {rd_guest:.0} + dom0 {rd_dom0:.0}; {:.2}x)",
        rd_run / rn_run
    );
    crate::bench_json::record(
        "blk_instructions_per_4k",
        &format!("{{\"native\": {n4:.0}, \"domu\": {d4:.0}, \"ratio\": {:.3}, \"run_native\": {n_run:.0}, \"run_split\": {d_run:.0}, \"run_split_domu\": {d_guest:.0}, \"run_split_dom0\": {d_dom0:.0}, \"run_randread_native\": {rn_run:.0}, \"run_randread_split\": {rd_run:.0}, \"run_randread_split_domu\": {rd_guest:.0}, \"run_randread_split_dom0\": {rd_dom0:.0}}}", d4 / n4),
    )?;
    println!("JSON: {}", crate::bench_json::path().display());
    Ok(())
}

/// The `round=` of a `blkbench:` line (0 for a line without one).
fn round_of(line: &str) -> u64 {
    line.split(' ').find_map(|w| w.strip_prefix("round=")?.parse().ok()).unwrap_or(0)
}

/// Every `blkbench: NAME ...` line's `k=` and `ns=`, by round.
fn figures(out: &str, name: &str, k: &str) -> Result<Vec<(u64, f64, f64)>> {
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("blkbench: ").map(|(_, r)| r))
        .filter(|r| r.starts_with(&format!("{name} ")))
        .collect();
    if lines.is_empty() {
        return Err(format!("no 'blkbench: {name}' line in the output:\n{out}"));
    }
    lines
        .iter()
        .map(|l| {
            let num = |key: &str| -> Result<f64> {
                l.split(' ')
                    .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("no {key}= in 'blkbench: {l}'"))
            };
            Ok((round_of(l), num(k)?, num("ns")?))
        })
        .collect()
}

/// A pass's `k` summed over every round.
fn total_of(out: &str, name: &str, k: &str) -> Result<f64> {
    Ok(figures(out, name, k)?.iter().map(|f| f.1).sum())
}

/// A pass's rate over every round: its `k` summed over its time summed
/// (per second).
fn total_rate(out: &str, name: &str, k: &str) -> Result<f64> {
    let f = figures(out, name, k)?;
    let (n, ns) = f.iter().fold((0.0, 0.0), |(n, ns), &(_, a, b)| (n + a, ns + b));
    Ok(n / (ns / 1e9))
}

/// The domU's rate over the native one, round by round.
fn round_ratios(out: &str, pass: &str, k: &str) -> Result<Vec<f64>> {
    let (n, d) = (figures(out, &format!("native_{pass}"), k)?, figures(out, &format!("domu_{pass}"), k)?);
    let mut r = Vec::new();
    for &(round, a, b) in &d {
        let Some(&(_, na, nb)) = n.iter().find(|x| x.0 == round) else {
            return Err(format!("no native_{pass} line of round {round}"));
        };
        r.push((a / b) / (na / nb));
    }
    Ok(r)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "\
[dom0] blkbench: native_seq_read bytes=100 ns=1000000000 tsc=1 qd=32 round=0
[bench] blkbench: domu_seq_read bytes=90 ns=1000000000 tsc=1 round=0
[bench] blkbench: domu_seq_read bytes=40 ns=1000000000 tsc=1 round=1
[dom0] blkbench: native_seq_read bytes=50 ns=1000000000 tsc=1 qd=32 round=1
";

    #[test]
    fn rates_sum_over_rounds_and_ratios_pair_rounds() {
        assert_eq!(total_rate(OUT, "native_seq_read", "bytes").unwrap(), 75.0);
        assert_eq!(total_rate(OUT, "domu_seq_read", "bytes").unwrap(), 65.0);
        let r = round_ratios(OUT, "seq_read", "bytes").unwrap();
        assert_eq!(r, [0.9, 0.8]);
        assert!((median(&r) - 0.85).abs() < 1e-12);
        assert!(round_ratios(OUT, "randread_4k", "count").is_err(), "no lines is an error, not a ratio");
    }
}
