//! `ring-bench`: ring-protocol against rtrb, crossbeam-queue's `ArrayQueue`
//! and `heapless::spsc::Queue`, on two threads.
//!
//! ```text
//! cargo run --release -p ring-bench -- [--smoke] [--json PATH]
//! ```
//!
//! Every case moves 64-byte, cache-line aligned descriptors through queues
//! of 1024 slots; ours lives in page-aligned heap memory standing in for 17
//! shared pages (64 KiB of slots plus the 128-byte header). Each
//! measurement is repeated (9 runs, 3 with `--smoke`), runs of different
//! queues are interleaved, and the median is reported. Ratios are
//! `rtrb_ns / ours_ns`: 1.0 or more means we are at least as fast.
//!
//! Cases:
//! - one-way throughput at batches 1, 8, 32 (each queue's own batch API
//!   where it has one: rtrb's `write_chunk_uninit`/`read_chunk`, our
//!   `push_iter`/`drain_up_to`; `ArrayQueue` and heapless push and pop per
//!   item). `ring-protocol` publishes without the notification check (a
//!   polling consumer, like the others); `ring-protocol+evt` pays for the
//!   event-index check (a SeqCst fence) on every batch.
//! - request/response throughput: our one ring (responses reuse request
//!   slots) against a pair of rtrb queues, at most 1024 in flight.
//! - round trip with one request in flight.
//! - notifications per million requests with event-index hold-off (batched
//!   wake-ups of 32 and final checks) and without (notify on every publish).
//!
//! The machine has 2 cores; threads are not pinned. `--smoke` runs every
//! case briefly and never gates on time.

mod cases;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use cases::{Candidate, WAKE_BATCH};

const BATCHES: [usize; 3] = [1, 8, 32];

struct Config {
    smoke: bool,
    json: PathBuf,
    runs: usize,
    one_way_items: u64,
    req_rsp_items: u64,
    round_trips: u64,
    notify_items: u64,
}

fn parse_args() -> Result<Config, String> {
    let mut smoke = false;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--json" => json = Some(PathBuf::from(args.next().ok_or("--json needs a path")?)),
            "-h" | "--help" => {
                return Err("usage: ring-bench [--smoke] [--json PATH]".into());
            }
            other => return Err(format!("unknown argument {other:?}; usage: ring-bench [--smoke] [--json PATH]")),
        }
    }
    let json = json.unwrap_or_else(|| {
        // The workspace's target directory, wherever we are run from.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2);
        root.unwrap_or(std::path::Path::new(".")).join("target/bench-rings.json")
    });
    Ok(if smoke {
        Config {
            smoke,
            json,
            runs: 3,
            one_way_items: 20_000,
            req_rsp_items: 20_000,
            round_trips: 5_000,
            notify_items: 20_000,
        }
    } else {
        Config {
            smoke,
            json,
            runs: 9,
            one_way_items: 2_000_000,
            req_rsp_items: 1_000_000,
            round_trips: 200_000,
            notify_items: 1_000_000,
        }
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

struct Results {
    /// [batch][queue] median ns/item.
    one_way: Vec<Vec<f64>>,
    /// [batch] (ours, rtrb pair) median ns/request.
    req_rsp: Vec<(f64, f64)>,
    /// (ours, rtrb pair) median ns/round trip.
    round_trip: (f64, f64),
    /// [batch] ((to_back, to_front) with hold-off, same without), per
    /// million requests (medians).
    notify: Vec<((f64, f64), (f64, f64))>,
}

fn measure(cfg: &Config) -> Results {
    let mut one_way = Vec::new();
    for &b in &BATCHES {
        let mut samples = vec![Vec::new(); Candidate::ALL.len()];
        for _ in 0..cfg.runs {
            for (i, &q) in Candidate::ALL.iter().enumerate() {
                samples[i].push(per(cases::one_way(q, cfg.one_way_items, b), cfg.one_way_items));
            }
        }
        one_way.push(samples.into_iter().map(median).collect());
    }

    let mut req_rsp = Vec::new();
    for &b in &BATCHES {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..cfg.runs {
            ours.push(per(cases::req_rsp(true, cfg.req_rsp_items, b), cfg.req_rsp_items));
            theirs.push(per(cases::req_rsp(false, cfg.req_rsp_items, b), cfg.req_rsp_items));
        }
        req_rsp.push((median(ours), median(theirs)));
    }

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..cfg.runs {
        ours.push(per(cases::round_trip(true, cfg.round_trips), cfg.round_trips));
        theirs.push(per(cases::round_trip(false, cfg.round_trips), cfg.round_trips));
    }
    let round_trip = (median(ours), median(theirs));

    let mut notify = Vec::new();
    let per_m = |c: u64| c as f64 * 1e6 / cfg.notify_items as f64;
    for &b in &BATCHES {
        let mut on = (Vec::new(), Vec::new());
        let mut off = (Vec::new(), Vec::new());
        for _ in 0..cfg.runs {
            let (_, c) = cases::notifications(cfg.notify_items, b, true);
            on.0.push(per_m(c.to_back));
            on.1.push(per_m(c.to_front));
            let (_, c) = cases::notifications(cfg.notify_items, b, false);
            off.0.push(per_m(c.to_back));
            off.1.push(per_m(c.to_front));
        }
        notify.push(((median(on.0), median(on.1)), (median(off.0), median(off.1))));
    }

    Results { one_way, req_rsp, round_trip, notify }
}

fn report(cfg: &Config, r: &Results) -> String {
    let rtrb = Candidate::ALL.iter().position(|&q| q == Candidate::Rtrb).unwrap();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ring-bench{}: 2 threads (2 cores, not pinned), 64-byte descriptors, 1024 slots, median of {} runs",
        if cfg.smoke { " --smoke" } else { "" },
        cfg.runs
    );
    let _ = writeln!(s, "\none-way throughput, ns/item (ratio = rtrb / ring-protocol, >= 1.0: we are as fast)");
    let _ = write!(s, "{:>6}", "batch");
    for q in Candidate::ALL {
        let _ = write!(s, " {:>21}", q.name());
    }
    let _ = writeln!(s, " {:>7} {:>9}", "ratio", "ratio+evt");
    for (bi, &b) in BATCHES.iter().enumerate() {
        let row = &r.one_way[bi];
        let _ = write!(s, "{b:>6}");
        for v in row {
            let _ = write!(s, " {v:>21.2}");
        }
        let _ = writeln!(s, " {:>7.2} {:>9.2}", row[rtrb] / row[0], row[rtrb] / row[1]);
    }

    let _ = writeln!(s, "\nrequest/response throughput, ns/request (one ring vs a pair of rtrb queues)");
    let _ = writeln!(s, "{:>6} {:>14} {:>10} {:>7}", "batch", "ring-protocol", "rtrb pair", "ratio");
    for (bi, &b) in BATCHES.iter().enumerate() {
        let (o, t) = r.req_rsp[bi];
        let _ = writeln!(s, "{b:>6} {o:>14.2} {t:>10.2} {:>7.2}", t / o);
    }

    let (o, t) = r.round_trip;
    let _ = writeln!(s, "\nround trip, one request in flight, ns/round trip");
    let _ = writeln!(s, "{:>14} {:>10} {:>7}", "ring-protocol", "rtrb pair", "ratio");
    let _ = writeln!(s, "{o:>14.1} {t:>10.1} {:>7.2}", t / o);

    let _ = writeln!(
        s,
        "\nnotifications per million requests (front->back / back->front); hold-off: event indices, wake after {WAKE_BATCH}"
    );
    let _ = writeln!(s, "{:>6} {:>24} {:>24}", "batch", "hold-off on", "hold-off off");
    for (bi, &b) in BATCHES.iter().enumerate() {
        let ((a, bb), (c, d)) = r.notify[bi];
        let _ = writeln!(s, "{b:>6} {:>24} {:>24}", format!("{a:.0} / {bb:.0}"), format!("{c:.0} / {d:.0}"));
    }

    let _ = writeln!(s, "\ntargets");
    let ratio = |bi: usize| r.one_way[bi][rtrb] / r.one_way[bi][0];
    let check = |ok: bool| if ok { "met" } else { "NOT met" };
    let _ = writeln!(s, "  batch 32 ratio >= 1.0:     {:.2} {}", ratio(2), check(ratio(2) >= 1.0));
    let _ = writeln!(s, "  batch 1 within 1.2x:       {:.2} {}", ratio(0), check(ratio(0) >= 1.0 / 1.2));
    let worst = r.notify.iter().map(|((a, b), _)| a + b).fold(0.0, f64::max);
    let _ = writeln!(
        s,
        "  <= 1 notification / 32:   worst {worst:.0} per million (limit {:.0}) {}",
        1e6 / 32.0,
        check(worst <= 1e6 / 32.0)
    );
    if cfg.smoke {
        let _ = writeln!(s, "  (smoke run: too short for the numbers to mean much)");
    }
    s
}

fn json(cfg: &Config, r: &Results) -> String {
    let rtrb = Candidate::ALL.iter().position(|&q| q == Candidate::Rtrb).unwrap();
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"smoke\": {},", cfg.smoke);
    let _ = writeln!(s, "  \"runs\": {},", cfg.runs);
    let _ = writeln!(s, "  \"threads\": 2,\n  \"pinned\": false,");
    let _ = writeln!(s, "  \"descriptor_bytes\": 64,\n  \"capacity\": {},", cases::CAPACITY);
    let _ = writeln!(s, "  \"one_way_ns_per_item\": [");
    for (bi, &b) in BATCHES.iter().enumerate() {
        let row = &r.one_way[bi];
        let _ = write!(s, "    {{\"batch\": {b}");
        for (q, v) in Candidate::ALL.iter().zip(row) {
            let _ = write!(s, ", \"{}\": {v:.3}", q.key());
        }
        let _ = write!(s, ", \"ratio_rtrb_over_ours\": {:.3}", row[rtrb] / row[0]);
        let _ = write!(s, ", \"ratio_rtrb_over_ours_evt\": {:.3}}}", row[rtrb] / row[1]);
        let _ = writeln!(s, "{}", if bi + 1 < BATCHES.len() { "," } else { "" });
    }
    let _ = writeln!(s, "  ],\n  \"req_rsp_ns_per_request\": [");
    for (bi, &b) in BATCHES.iter().enumerate() {
        let (o, t) = r.req_rsp[bi];
        let _ = writeln!(
            s,
            "    {{\"batch\": {b}, \"ring_protocol\": {o:.3}, \"rtrb_pair\": {t:.3}, \"ratio_rtrb_over_ours\": {:.3}}}{}",
            t / o,
            if bi + 1 < BATCHES.len() { "," } else { "" }
        );
    }
    let (o, t) = r.round_trip;
    let _ = writeln!(
        s,
        "  ],\n  \"round_trip_ns\": {{\"ring_protocol\": {o:.1}, \"rtrb_pair\": {t:.1}, \"ratio_rtrb_over_ours\": {:.3}}},",
        t / o
    );
    let _ = writeln!(s, "  \"notifications_per_million\": [");
    for (bi, &b) in BATCHES.iter().enumerate() {
        let ((a, bb), (c, d)) = r.notify[bi];
        let _ = writeln!(
            s,
            "    {{\"batch\": {b}, \"holdoff\": {{\"to_back\": {a:.1}, \"to_front\": {bb:.1}}}, \"no_holdoff\": {{\"to_back\": {c:.1}, \"to_front\": {d:.1}}}}}{}",
            if bi + 1 < BATCHES.len() { "," } else { "" }
        );
    }
    let _ = writeln!(s, "  ]\n}}");
    s
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let results = measure(&cfg);
    print!("{}", report(&cfg, &results));
    if let Some(dir) = cfg.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&cfg.json, json(&cfg, &results)) {
        Ok(()) => println!("\nwrote {}", cfg.json.display()),
        Err(e) => {
            eprintln!("ring-bench: cannot write {}: {e}", cfg.json.display());
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case runs to completion and checks every sequence number (the
    /// consumers assert); small enough for debug builds.
    #[test]
    fn every_case_moves_every_item() {
        for &b in &BATCHES {
            for q in Candidate::ALL {
                cases::one_way(q, 3_000, b);
            }
            cases::req_rsp(true, 3_000, b);
            cases::req_rsp(false, 3_000, b);
            for holdoff in [true, false] {
                let (_, c) = cases::notifications(3_000, b, holdoff);
                if !holdoff {
                    // Every publish notifies: at least one per batch.
                    assert!(c.to_back >= 3_000 / b as u64);
                }
            }
        }
        cases::round_trip(true, 500);
        cases::round_trip(false, 500);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
