//! Running the hypervisor in QEMU (TCG only: KVM cannot run ring-0/ring-1
//! guests here) with a timeout, and reading its verdict.
//!
//! The hypervisor ends every run through QEMU's `isa-debug-exit` device:
//! exit status 33 means every domain ended as the manifest expected, 35 means
//! something did not. Any other status, including 0 (a triple fault with
//! `-no-reboot`), is a failure the hypervisor never reported.

mod install;

use crate::Result;
pub use install::ensure_installed;
use std::fmt;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
        }
    }
}

/// What to run.
pub struct RunOpts {
    pub kernel: PathBuf,
    pub bundle: Option<PathBuf>,
    /// Hypervisor command line.
    pub append: String,
    pub timeout_s: u64,
    /// Print console lines as they arrive.
    pub stream: bool,
    /// Extra QEMU arguments.
    pub extra: Vec<String>,
}

/// The result of a run.
pub struct RunResult {
    pub outcome: Outcome,
    /// Everything QEMU printed (serial console), `\r` removed.
    pub output: String,
    pub wall: Duration,
}

/// Boots QEMU and waits for it to end or time out.
pub fn run(o: &RunOpts) -> Result<RunResult> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-cpu", "qemu64", "-m", "512M", "-accel", "tcg"])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(&o.kernel);
    if let Some(b) = &o.bundle {
        cmd.arg("-initrd").arg(b);
    }
    if !o.append.is_empty() {
        cmd.args(["-append", &o.append]);
    }
    cmd.args(&o.extra);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
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
    let deadline = start + Duration::from_secs(o.timeout_s);
    let color = o.stream && std::io::stdout().is_terminal();
    let mut output = String::new();
    let outcome = loop {
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::Timeout(o.timeout_s);
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
            Ok(line) => {
                if o.stream {
                    print_line(&line, color);
                }
                output.push_str(&line);
                output.push('\n');
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
    Ok(RunResult { outcome, output, wall: start.elapsed() })
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
