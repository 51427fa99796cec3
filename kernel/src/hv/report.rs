//! Reports: a domain's end (its exit, a crash's registers, its worst
//! timer wake-ups), and the final report of the run with its verdict. Kept
//! apart from the trap loop's policy; nothing here decides anything.

use super::{tagged_line, Domain, Hv, Machine};
use crate::domain::{Exit, RunState};
use crate::hvlog;
use core::fmt::Write as _;
use pvguest_abi::vcpu::runstate;

impl<M: Machine> Hv<M> {
    /// The last of a dead domain's console (its partial line), then its exit
    /// report; the console page is not looked at again.
    pub(super) fn report_end(&mut self, i: usize) {
        let now = self.now();
        let d = &mut self.domains[i];
        d.console_ring = None;
        let name = &d.name;
        let m = &mut self.m;
        d.console.flush(now, |l: &str| tagged_line(m, name, l));
        let RunState::Dead(exit) = d.state else { return };
        if !core::mem::take(&mut d.report_pending) {
            return;
        }
        wake_report(&mut self.m, d);
        match exit {
            Exit::Faulted(fault) => {
                let r = &d.regs;
                hvlog!(self.m, "dom{} ({}) crashed: {fault}", d.id, d.name);
                hvlog!(
                    self.m,
                    "  rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rsp {:#x} rbp {:#x}",
                    r.rax,
                    r.rbx,
                    r.rcx,
                    r.rdx,
                    r.rsi,
                    r.rdi,
                    r.rsp,
                    r.rbp
                );
            }
            _ => hvlog!(self.m, "dom{} ({}) exited: {exit}", d.id, d.name),
        }
    }

    /// Prints the end-of-run report and ends the run.
    pub(super) fn finish(&mut self, clean: bool) -> ! {
        // Dead domains' leftover output and exit reports, whole: the run
        // is over, nobody waits.
        for i in 0..self.domains.slot_bound() {
            if self.domains.at(i).is_some_and(|(_, d)| matches!(d.state, RunState::Dead(_))) {
                while self.console_step(i, self.now()) {}
                self.report_end(i);
            }
        }
        let elapsed_ms = self.now() / 1_000_000;
        let alive = self.domains.iter().filter(|(_, _, d)| !matches!(d.state, RunState::Dead(_))).count();
        if alive == 0 {
            hvlog!(self.m, "all domains have ended after {elapsed_ms} ms:");
        } else {
            hvlog!(self.m, "the run ended after {elapsed_ms} ms with {alive} domain(s) still alive:");
        }
        hvlog!(self.m, "  {:<4} {:<16} {:<9} {:<4} {:>8} {}", "dom", "name", "expected", "ok", "cpu ms", "exit");
        let mut all_ok = clean && self.unrecorded.1 == 0;
        for r in &self.records {
            let mut exit: heapless::String<64> = heapless::String::new();
            let live = self.domains.get(r.id).filter(|d| !matches!(d.state, RunState::Dead(_)));
            let (ok, cpu_ms) = match (r.exit, live) {
                (Some(e), _) => {
                    let _ = write!(exit, "{e}");
                    (e.matches(r.expect), r.cpu_ms)
                }
                (None, Some(d)) => {
                    let _ = exit.push_str(match d.state {
                        RunState::Blocked => "still blocked (never ended)",
                        RunState::Paused => "still paused (never ended)",
                        _ => "still runnable (never ended)",
                    });
                    (false, d.runstate.time[runstate::RUNNING as usize] / 1_000_000)
                }
                (None, None) => {
                    let _ = exit.push_str("lost track of it (a hypervisor bug)");
                    (false, 0)
                }
            };
            all_ok &= ok;
            hvlog!(
                self.m,
                "  {:<4} {:<16} {:<9} {:<4} {:>8} {}",
                r.id,
                r.name.as_str(),
                r.expect,
                if ok { "yes" } else { "NO" },
                cpu_ms,
                exit
            );
        }
        if self.unrecorded.0 > 0 {
            hvlog!(
                self.m,
                "  and {} more domain(s) not listed, {} of them not as expected",
                self.unrecorded.0,
                self.unrecorded.1
            );
        }
        self.m.stretch_report();
        for (_, _, d) in self.domains.iter() {
            if !matches!(d.state, RunState::Dead(_)) {
                wake_report(&mut self.m, d);
            }
        }
        if all_ok {
            hvlog!(self.m, "verdict: PASS: every domain ended as the manifest expected");
            self.m.exit(true)
        } else {
            hvlog!(self.m, "verdict: FAIL: some domain did not end as the manifest expected");
            self.m.exit(false)
        }
    }
}

/// A domain's worst timer wake-ups and what delayed them (see [`Wakes`]).
fn wake_report<M: Machine>(m: &mut M, d: &Domain) {
    if let Some((late, fired, [vector, rax, _, dom], into)) = d.wakes.worst {
        hvlog!(m,
            "dom{} ({}): {} timer wake-ups, the latest entered {late} ns after its deadline (fired after {fired} ns, {into} TSC ticks into a stretch entered from dom{dom} by vector {vector:#x}, rax {rax:#x})",
            d.id,
            d.name,
            d.wakes.count
        );
    }
    if let Some((t, outs, to)) = d.wakes.worst_served {
        match to {
            Some(to) => hvlog!(m, "dom{} ({}): the slowest wake-up blocked again {t} ns after its deadline, switched out {outs} time(s), last to dom{to}", d.id, d.name),
            None => hvlog!(m, "dom{} ({}): the slowest wake-up blocked again {t} ns after its deadline, never switched out", d.id, d.name),
        }
    }
}
