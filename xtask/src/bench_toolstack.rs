//! `cargo xtask bench --toolstack`: what domains cost to make and to end,
//! measured by dom0's toolstack itself (its shell, typed at by a script).
//!
//! One boot under `-icount shift=0` (system time is instructions) and one
//! without (TCG wall time), each:
//! 1. `churn 40 first timed`: 40 cycles of create, run until blocked,
//!    destroy, reap. Each domain's first line says how long after its
//!    create began it printed (dom0 passes the start on its command line):
//!    the median is `domain_create_to_first_line`. dom0 times destroy to
//!    reaped: `domain_destroy`.
//! 2. `spawn 1000 quiet`: 1000 domains made one after another and alive at
//!    once, then all destroyed: how many ran at once, and the create rate.
//!
//! Both end with the toolstack's leak check, which must find nothing lost.

use crate::images::{self, loadable, Images};
use crate::qemu::{self, Outcome, RunOpts};
use crate::scenarios::rig::Rig;
use crate::Result;
use ringfence_bundle_writer::{BundleWriter, DomainEntry};

/// Domains the spawn holds at once.
pub const AT_ONCE: u32 = 1000;
/// Timed churn cycles.
const CYCLES: u32 = 40;

/// One boot's figures.
#[derive(Debug)]
struct Figures {
    /// ns (instructions under icount).
    first_line: f64,
    destroy: f64,
    at_once: f64,
    creates_per_s: f64,
    destroys_per_s: f64,
}

/// The number right after `key` in the first line of `out` containing it.
fn after(out: &str, key: &str) -> Result<f64> {
    let line = out.lines().find(|l| l.contains(key)).ok_or_else(|| format!("no line with {key:?}"))?;
    let rest = &line[line.find(key).expect("found") + key.len()..];
    let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().map_err(|_| format!("no number after {key:?} in {line:?}"))
}

/// The figures of a boot's console (see the module docs).
fn figures(out: &str) -> Result<Figures> {
    let mut firsts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split_once("] first line: ").map(|(_, r)| r))
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .collect();
    if firsts.len() < CYCLES as usize {
        return Err(format!("{} first lines of {CYCLES}", firsts.len()));
    }
    firsts.sort_by(f64::total_cmp);
    let line = |key: &str| out.lines().find(|l| l.contains(key)).ok_or_else(|| format!("no line with {key:?}"));
    let (made, ended) = (line("domains running at once")?, line("destroyed and reaped in")?);
    let leaks = out.lines().filter(|l| l.contains(": leak check: ")).collect::<Vec<_>>();
    if leaks.len() != 2 || !leaks.iter().all(|l| l.ends_with(": no leak")) {
        return Err(format!("the leak checks: {leaks:?}"));
    }
    Ok(Figures {
        first_line: firsts[firsts.len() / 2],
        destroy: after(out, "destroy to reaped median")?,
        at_once: after(made, "[dom0] spawn:")?,
        creates_per_s: after(made, " ms: ")?,
        destroys_per_s: after(ended, " ms: ")?,
    })
}

fn boot(imgs: &Images, icount: bool) -> Result<(Figures, f64)> {
    let mut w = BundleWriter::new();
    // dom0 holds a store connection for each of the 1000: 12 MiB of heap.
    let dom0 = DomainEntry::new("dom0", imgs.guest("dom0", &crate::root())?, 16 * 1024)
        .cmdline("serve shell stay heap=3072")
        .privileged(true)
        .dma_kib(512);
    w.domain(dom0);
    let hello = loadable(&imgs.guest("hello", &crate::root())?)?;
    w.domain(DomainEntry::new("first", hello.clone(), 256).cmdline("quiet linger").template(true));
    w.domain(DomainEntry::new("quiet", hello, 256).cmdline("quiet linger").template(true));
    images::add_symbols(&mut w, imgs)?;
    let name = if icount { "bench-toolstack-icount" } else { "bench-toolstack" };
    let bundle = images::write_bundle(name, &w.finish())?;
    let mut rig = Rig::new(if icount { "bench-toolstack-icount" } else { "bench-toolstack" });
    rig.disk(4 << 20)?;
    rig.type_after("[dom0] toolstack: shell ready", &format!("churn {CYCLES} first timed"));
    rig.type_after("churn: leak check", &format!("spawn {AT_ONCE} quiet"));
    rig.type_after("spawn: leak check", "shutdown");
    let input = rig.take_input();
    let (devices, _, _) = rig.into_parts();
    let opts = RunOpts {
        kernel: imgs.hypervisor.clone(),
        bundle: Some(bundle),
        append: String::new(),
        timeout_s: 400,
        stream: false,
        extra: if icount { vec!["-icount".into(), "shift=0".into()] } else { vec![] },
        devices,
        kill_on: None,
        input,
    };
    let r = qemu::run(&opts)?;
    if r.outcome != Outcome::Pass {
        return Err(format!("the toolstack benchmark run did not pass: {}\n{}", r.outcome, r.output));
    }
    let f = figures(&r.output).map_err(|e| format!("toolstack benchmark: {e}\n{}", r.output))?;
    Ok((f, r.wall.as_secs_f64()))
}

/// Runs both boots and prints the table; the figures for `bench.json`.
pub fn run(imgs: &Images) -> Result<Vec<(&'static str, f64)>> {
    let (i, _) = boot(imgs, true)?;
    let (w, wall) = boot(imgs, false)?;
    println!("Toolstack: domains made and ended by dom0 ({CYCLES} timed cycles, then {AT_ONCE} at once; medians)");
    println!("{:<44} {:>14} {:>16}", "", "instructions", "TCG wall");
    println!("{:<44} {:>14.0} {:>13.0} us", "create to the domain's first line", i.first_line, w.first_line / 1000.0);
    println!("{:<44} {:>14.0} {:>13.0} us", "destroy to reaped", i.destroy, w.destroy / 1000.0);
    println!("{:<44} {:>14} {:>16.0}", "domains alive at once (target >= 1000)", "", w.at_once);
    println!("{:<44} {:>14} {:>12.0} /s", "create rate", "", w.creates_per_s);
    println!("{:<44} {:>14} {:>12.0} /s", "destroy rate", "", w.destroys_per_s);
    println!("(the wall-time boot took {wall:.1} s; LightVM reports 2.3 ms a create on hardware)");
    Ok(vec![
        ("domain_create_to_first_line", i.first_line),
        ("domain_destroy", i.destroy),
        ("domain_create_to_first_line_wall_us", w.first_line / 1000.0),
        ("domain_destroy_wall_us", w.destroy / 1000.0),
        ("domains_at_once", w.at_once),
        ("domain_create_rate_per_s", w.creates_per_s),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_come_from_the_toolstacks_lines() {
        let mut out = String::new();
        for k in 0..CYCLES {
            out += &format!("[churn-{k}] first line: {} ns after its create began\n", 1000 + k);
        }
        out += "[dom0] churn: timed: create hypercall median 900 ns, destroy to reaped median 5000 ns (40 cycles)\n";
        out += "[dom0] churn: leak check: frames free 1 -> 1 (0 lost), ports in use 4 -> 4 (0 lost), hypervisor heap 1 -> 1 B, domains 1 -> 1: no leak\n";
        out += "[dom0] spawn: 1000 domains running at once (1001 in the machine, 5 frames free), made in 2000 ms: 500 creates/s\n";
        out += "[dom0] spawn: 1000 domains destroyed and reaped in 100 ms: 10000 destroys/s\n";
        out += "[dom0] spawn: leak check: ... : no leak\n";
        let f = figures(&out).unwrap();
        assert_eq!(
            (f.first_line, f.destroy, f.at_once, f.creates_per_s, f.destroys_per_s),
            (1020.0, 5000.0, 1000.0, 500.0, 10000.0)
        );
        assert!(figures(&out.replace(": no leak", ": LEAK")).is_err());
        assert!(figures("").is_err());
    }
}
