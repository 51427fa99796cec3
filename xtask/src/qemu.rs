//! Running the hypervisor in QEMU (TCG only: KVM cannot run ring-0/ring-1
//! guests here) with a timeout, and reading its verdict.
//!
//! The hypervisor ends every run through QEMU's `isa-debug-exit` device:
//! exit status 33 means every domain ended as the manifest expected, 35 means
//! something did not. Any other status, including 0 (a triple fault with
//! `-no-reboot`), is a failure the hypervisor never reported.
//!
//! The machine is q35 with 512 MiB, a `qemu64` CPU, the serial port on
//! stdio and the exit device, plus exactly the [`devices`] a run asks for
//! (none by default: then the command line is the plain one, see
//! [`qemu_args`]).
//!
//! `RF_QEMU_EXTRA` (whitespace-separated) is appended to every QEMU command
//! line, for profiling: `RF_QEMU_EXTRA="-s -S" cargo xtask bench --paths`
//! waits for a gdb on :1234, which can then count and place every executed
//! instruction of a hot path by `stepi` (under `-icount` the only figure TCG
//! gives that means anything).
//!
//! While QEMU runs, its output is read line by line on its own threads, so
//! QEMU never blocks on a full pipe. A [`Watch`] starts a host-side action
//! (on a thread of its own) when a line containing its text appears within
//! its time; the run's result carries each watch's outcome, in order. An
//! action must end by itself (it has its own timeouts): after QEMU ends, the
//! run waits for every action that started.

pub mod devices;
mod install;

use crate::Result;
pub use devices::Devices;
pub use install::ensure_installed;
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// QEMU's exit status when the hypervisor reports success.
pub const STATUS_PASS: i32 = 33;
/// QEMU's exit status when the hypervisor reports failure.
pub const STATUS_FAIL: i32 = 35;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The hypervisor reported that every domain ended as expected.
    Pass,
    /// The hypervisor reported a failure (verdict or fatal error).
    Fail,
    /// QEMU ended without the hypervisor signalling (triple fault, crash).
    Unexpected(Option<i32>),
    /// The run exceeded its time limit and was killed.
    Timeout(u64),
    /// The run was killed hard (SIGKILL) on purpose when a console line
    /// contained [`RunOpts::kill_on`]: a power cut.
    Killed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => write!(f, "PASS (exit status {STATUS_PASS})"),
            Outcome::Fail => write!(f, "FAIL reported by the hypervisor (exit status {STATUS_FAIL})"),
            Outcome::Unexpected(Some(0)) => {
                write!(f, "QEMU exited with status 0: a triple fault or reset, the hypervisor never reported")
            }
            Outcome::Unexpected(Some(c)) => write!(f, "QEMU exited with unexpected status {c}"),
            Outcome::Unexpected(None) => write!(f, "QEMU was killed by a signal"),
            Outcome::Timeout(s) => write!(f, "timed out after {s} s"),
            Outcome::Killed => write!(f, "killed (SIGKILL) on its cue line, as planned"),
        }
    }
}

/// What to run.
pub struct RunOpts {
    /// The hypervisor ELF (`-kernel`).
    pub kernel: PathBuf,
    /// The boot bundle (`-initrd`).
    pub bundle: Option<PathBuf>,
    /// Hypervisor command line.
    pub append: String,
    /// Wall-clock time limit of the run, in seconds.
    pub timeout_s: u64,
    /// Print console lines as they arrive.
    pub stream: bool,
    /// Extra QEMU arguments.
    pub extra: Vec<String>,
    /// Devices beyond the plain machine ([`Devices::NONE`]: none).
    pub devices: Devices,
    /// Kill QEMU hard (SIGKILL, no shutdown of any kind) as soon as a
    /// console line contains this: [`Outcome::Killed`].
    pub kill_on: Option<String>,
    /// What the serial console gets as input.
    pub input: Input,
}

/// The serial console's input (QEMU's standard input, `-serial stdio`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Input {
    /// None (`/dev/null`).
    #[default]
    Nothing,
    /// Lines typed in order, each once a console line containing its cue
    /// has appeared after the one before it was typed (a script, as
    /// `expect` runs one).
    Script(Vec<Typed>),
    /// What xtask reads from its own standard input (`cargo xtask run`: a
    /// user at dom0's shell).
    Forward,
}

/// A line [`Input::Script`] types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Typed {
    /// Text a console line must contain first.
    pub after: String,
    /// What is typed (a newline is added).
    pub text: String,
}

/// A host-side action to start when a console line contains `line`.
pub struct Watch<T> {
    /// Text the line must contain (QEMU's own stderr lines, prefixed
    /// `qemu: `, count too).
    pub line: String,
    /// How long after QEMU starts the line may take to appear; later, the
    /// action does not run and the watch fails.
    pub within: Duration,
    /// The action; it runs on its own thread while QEMU goes on.
    pub action: Box<dyn FnOnce() -> Result<T> + Send>,
}

impl<T> Watch<T> {
    /// A watch that runs `action` once a line containing `line` appears
    /// within `within` of QEMU's start.
    pub fn new(line: &str, within: Duration, action: impl FnOnce() -> Result<T> + Send + 'static) -> Watch<T> {
        Watch { line: line.into(), within, action: Box::new(action) }
    }
}

/// The result of a run.
pub struct RunResult {
    pub outcome: Outcome,
    /// Everything QEMU printed (serial console), `\r` removed.
    pub output: String,
    pub wall: Duration,
}

/// QEMU's arguments for `o`: the plain machine, then `o.extra`, then the
/// devices (none when `o.devices` is [`Devices::NONE`]).
pub fn qemu_args(o: &RunOpts) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "-machine",
        "q35",
        "-cpu",
        "qemu64",
        "-m",
        "512M",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ]
    .map(OsString::from)
    .into();
    a.push(o.kernel.clone().into());
    if let Some(b) = &o.bundle {
        a.push("-initrd".into());
        a.push(b.clone().into());
    }
    if !o.append.is_empty() {
        a.push("-append".into());
        a.push(o.append.clone().into());
    }
    a.extend(o.extra.iter().map(OsString::from));
    a.extend(o.devices.qemu_args().into_iter().map(OsString::from));
    a
}

/// Boots QEMU and waits for it to end or time out.
pub fn run(o: &RunOpts) -> Result<RunResult> {
    run_watched(o, Vec::<Watch<()>>::new()).map(|(r, _)| r)
}

/// Boots QEMU, starts each watch's action when its line appears, and waits
/// for QEMU to end or time out and for the started actions to end. Returns
/// the run and each watch's outcome, in the order given.
pub fn run_watched<T: Send + 'static>(o: &RunOpts, watches: Vec<Watch<T>>) -> Result<(RunResult, Vec<Result<T>>)> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(qemu_args(o));
    if let Some(extra) = std::env::var_os("RF_QEMU_EXTRA") {
        cmd.args(extra.to_string_lossy().split_whitespace());
    }
    supervise(cmd, Duration::from_secs(o.timeout_s), o.stream, o.kill_on.as_deref(), &o.input, watches)
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))
}

/// A watch's state during a run.
enum Watching<T> {
    Waiting(Watch<T>),
    Started(JoinHandle<Result<T>>),
    Over(Result<T>),
}

/// Runs `cmd` (QEMU, or a stand-in in tests) to its end or `timeout`,
/// reading its output and serving the watches.
fn supervise<T: Send + 'static>(
    mut cmd: Command,
    timeout: Duration,
    stream: bool,
    kill_on: Option<&str>,
    input: &Input,
    watches: Vec<Watch<T>>,
) -> Result<(RunResult, Vec<Result<T>>)> {
    let stdin = if *input == Input::Nothing { Stdio::null() } else { Stdio::piped() };
    cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut typist = child.stdin.take();
    let mut script: std::collections::VecDeque<Typed> = match input {
        Input::Script(lines) => lines.iter().cloned().collect(),
        Input::Nothing => Default::default(),
        Input::Forward => {
            if let Some(mut to) = typist.take() {
                // A user's lines, as typed (the terminal echoes them).
                std::thread::spawn(move || std::io::copy(&mut std::io::stdin().lock(), &mut to));
            }
            Default::default()
        }
    };
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
            let line = String::from_utf8_lossy(&line).replace('\r', "");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if tx2.send(format!("qemu: {line}")).is_err() {
                break;
            }
        }
    });
    let mut watching: Vec<Watching<T>> = watches.into_iter().map(Watching::Waiting).collect();
    let deadline = start + timeout;
    let color = stream && std::io::stdout().is_terminal();
    let mut output = String::new();
    let outcome = loop {
        let now = Instant::now();
        // Watches whose line is late fail, and their action never runs.
        for w in &mut watching {
            if let Watching::Waiting(x) = w {
                if now >= start + x.within {
                    let e = format!("no line containing {:?} within {:.1} s", x.line, x.within.as_secs_f64());
                    *w = Watching::Over(Err(e));
                }
            }
        }
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::Timeout(timeout.as_secs());
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
            Ok(line) => {
                if stream {
                    print_line(&line, color);
                }
                for w in &mut watching {
                    if matches!(w, Watching::Waiting(x) if line.contains(&x.line)) {
                        if let Watching::Waiting(x) = std::mem::replace(w, Watching::Over(Err(String::new()))) {
                            *w = Watching::Started(std::thread::spawn(x.action));
                        }
                    }
                }
                if script.front().is_some_and(|t| line.contains(&t.after)) {
                    let t = script.pop_front().expect("a line is due");
                    if let Some(to) = typist.as_mut() {
                        // QEMU gone: the run ends on its own.
                        let _ = writeln!(to, "{}", t.text).and_then(|_| to.flush());
                    }
                }
                output.push_str(&line);
                output.push('\n');
                if kill_on.is_some_and(|k| line.contains(k)) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Outcome::Killed;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
                break match st.code() {
                    Some(STATUS_PASS) => Outcome::Pass,
                    Some(STATUS_FAIL) => Outcome::Fail,
                    c => Outcome::Unexpected(c),
                };
            }
        }
    };
    let ran = start.elapsed();
    let results = watching
        .into_iter()
        .map(|w| match w {
            Watching::Waiting(x) => Err(format!(
                "no line containing {:?}: the run ended after {:.1} s ({outcome})",
                x.line,
                ran.as_secs_f64()
            )),
            Watching::Started(h) => h.join().unwrap_or_else(|_| Err("the host-side action panicked".into())),
            Watching::Over(r) => r,
        })
        .collect();
    Ok((RunResult { outcome, output, wall: ran }, results))
}

/// Prints a console line, colouring the domain tag on a terminal.
fn print_line(line: &str, color: bool) {
    let mut out = std::io::stdout().lock();
    if !color {
        let _ = writeln!(out, "{line}");
        return;
    }
    const COLORS: [u8; 6] = [32, 33, 34, 35, 36, 91];
    if let Some(rest) = line.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let name = &rest[..end];
            let c = COLORS[name.bytes().map(usize::from).sum::<usize>() % COLORS.len()];
            let _ = writeln!(out, "\x1b[{c}m[{name}]\x1b[0m{}", &rest[end + 1..]);
            return;
        }
    }
    if line.starts_with("(rf)") {
        let _ = writeln!(out, "\x1b[1m{line}\x1b[0m");
    } else {
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(devices: Devices) -> RunOpts {
        RunOpts {
            kernel: "/k/ringfence".into(),
            bundle: Some("/b/demo.bundle".into()),
            append: "selftest=x".into(),
            timeout_s: 60,
            stream: false,
            extra: vec!["-icount".into(), "shift=0".into()],
            devices,
            kill_on: None,
            input: Input::Nothing,
        }
    }

    /// A script types each line after its cue, in order: the stand-in
    /// reads two lines and echoes them, and passes only if both came.
    #[test]
    fn a_script_types_each_line_after_its_cue() {
        let script = "echo 'shell ready'; read a; echo \"got $a\"; read b; echo \"got $b\"; \
                      [ \"$a $b\" = 'list destroy 3' ] && exit 33; exit 35";
        let input = Input::Script(vec![
            Typed { after: "shell ready".into(), text: "list".into() },
            Typed { after: "got list".into(), text: "destroy 3".into() },
        ]);
        let (r, _) = supervise(sh(script), secs(10.0), false, None, &input, Vec::<Watch<()>>::new()).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.output);
        assert!(r.output.contains("got list\ngot destroy 3\n"), "{}", r.output);
    }

    #[test]
    fn without_devices_the_command_line_is_the_plain_one() {
        // The command line every scenario had before devices existed.
        let plain = "-machine q35 -cpu qemu64 -m 512M -accel tcg -nodefaults -display none -serial stdio \
                     -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel /k/ringfence \
                     -initrd /b/demo.bundle -append selftest=x -icount shift=0";
        let got: Vec<String> = qemu_args(&opts(Devices::NONE)).iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(got.join(" "), plain);
    }

    #[test]
    fn devices_come_last_after_the_plain_line() {
        let nic = devices::Nic::user(&[(devices::Proto::Udp, 7)]).unwrap();
        let d = Devices { disk: None, nic: Some(nic) };
        let with = qemu_args(&opts(d.clone()));
        let plain = qemu_args(&opts(Devices::NONE));
        assert_eq!(with[..plain.len()], plain[..]);
        assert_eq!(with[plain.len()..], d.qemu_args().into_iter().map(OsString::from).collect::<Vec<_>>()[..]);
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_watch_acts_while_the_process_runs() {
        // The process passes (exit 33) only if the action ran while it was
        // still running, after "ready" and not before.
        let flag = std::env::temp_dir().join(format!("xtask-watch-{}", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        let f = flag.display().to_string();
        let script = format!(
            "[ -e {f} ] && exit 35; echo boot; echo 'dom0: ready now'; i=0; \
             while [ ! -e {f} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; [ -e {f} ] && exit 33; exit 35"
        );
        let flag2 = flag.clone();
        let w = Watch::new("ready now", secs(5.0), move || {
            std::fs::write(&flag2, b"").map_err(|e| e.to_string())?;
            Ok(7)
        });
        let (r, got) = supervise(sh(&script), secs(10.0), false, None, &Input::Nothing, vec![w]).unwrap();
        let _ = std::fs::remove_file(&flag);
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.output);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().ok(), Some(&7));
        assert!(r.output.contains("dom0: ready now\n"));
    }

    #[test]
    fn a_line_that_comes_late_or_never_fails_its_watch_and_the_action_never_runs() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r1, r2) = (ran.clone(), ran.clone());
        let late = Watch::new("ready", secs(0.2), move || {
            r1.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        let never = Watch::new("never printed", secs(30.0), move || {
            r2.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        let (r, got) = supervise(
            sh("sleep 0.6; echo ready; exit 33"),
            secs(10.0),
            false,
            None,
            &Input::Nothing,
            vec![late, never],
        )
        .unwrap();
        assert_eq!(r.outcome, Outcome::Pass);
        let e0 = got[0].as_ref().unwrap_err();
        assert!(e0.contains("no line containing \"ready\" within 0.2 s"), "{e0}");
        let e1 = got[1].as_ref().unwrap_err();
        assert!(e1.contains("\"never printed\": the run ended after"), "{e1}");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn an_action_error_is_reported_and_stderr_lines_count() {
        let w = Watch::new("qemu: warning", secs(5.0), || -> Result<()> { Err("no echo".into()) });
        let (r, got) =
            supervise(sh("echo warning >&2; exit 35"), secs(10.0), false, None, &Input::Nothing, vec![w]).unwrap();
        assert_eq!(r.outcome, Outcome::Fail);
        assert_eq!(got[0], Err("no echo".to_string()));
    }

    #[test]
    fn a_run_is_killed_hard_on_its_cue_line_and_nothing_after_it_is_read() {
        let t = Instant::now();
        let script = "echo up; echo 'power CUT now'; echo later; exec sleep 30";
        let (r, _) =
            supervise(sh(script), secs(10.0), false, Some("CUT"), &Input::Nothing, Vec::<Watch<()>>::new()).unwrap();
        assert_eq!(r.outcome, Outcome::Killed);
        assert!(t.elapsed() < secs(5.0), "killed at once, not at the time limit");
        assert_eq!(r.output, "up\npower CUT now\n");
    }

    #[test]
    fn a_run_past_its_time_is_killed() {
        let t = Instant::now();
        let (r, _) =
            supervise(sh("echo up; exec sleep 30"), secs(1.0), false, None, &Input::Nothing, Vec::<Watch<()>>::new())
                .unwrap();
        assert_eq!(r.outcome, Outcome::Timeout(1));
        assert!(t.elapsed() < secs(5.0));
        assert_eq!(r.output, "up\n");
    }
}
