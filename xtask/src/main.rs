//! `cargo xtask`: the one entry point that builds, packs, runs, tests and
//! benchmarks Ringfence.
//!
//! | command | what it does |
//! |---|---|
//! | `build` | builds the hypervisor and the sample guests, packs the demo bundle |
//! | `run [--manifest M] [--timeout S] [--stay]` | builds, boots the demo in QEMU, streams the console (and forwards what you type to dom0's shell), exits with the hypervisor's verdict |
//! | `test [--host] [--qemu] [--show] [FILTER]` | host tests plus QEMU scenarios (all by default; `--show` prints each console) |
//! | `ctl [--api A] [--token T] [--json] COMMAND` | dom0's management API from the host ([`ctl`]) |
//! | `gdb [--manifest M]` | starts QEMU paused with a gdb stub and prints how to attach |
//! | `bench` | hypervisor path lengths under QEMU `-icount shift=0` (table + `target/bench.json`) |
//! | `bench-rings [--smoke]` | ring-protocol benchmark against rtrb, crossbeam and heapless |
//! | `new-guest NAME [--dir DIR]` | a new domU crate (console, timer, disk, network) and a manifest that boots it, in `guests/NAME` (see [`new_guest`]) |
#![forbid(unsafe_code)]

mod bench;
mod bench_blk;
mod bench_json;
mod bench_net;
mod bench_toolstack;
mod ctl;
mod evidence;
mod images;
mod isolation;
mod manifest;
mod new_guest;
mod qemu;
mod scenarios;
mod vbd;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let r = match cmd {
        "build" => build(rest),
        "run" => run(rest),
        "test" => test(rest),
        "gdb" => gdb(rest),
        "ctl" => ctl::main(rest),
        "bench-rings" => bench_rings(rest),
        "bench" => qemu::ensure_installed().and_then(|_| bench::run(rest)),
        "new-guest" => new_guest::main(rest),
        "help" | "--help" | "-h" => {
            help();
            Ok(())
        }
        other => Err(format!("unknown command '{other}'; try `cargo xtask help`")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn help() {
    println!(
        "cargo xtask <command>\n\n\
         build                     build the hypervisor and sample guests, pack the demo bundle\n\
         run [--manifest M] [--timeout S] [--stay]\n\
         \x20                         boot the demo (or manifest M) in QEMU and stream the console;\n\
         \x20                         what you type goes to dom0's shell (--stay: it stays up until `shutdown`)\n\
         test [--host] [--qemu] [--show] [FILTER]\n\
         \x20                         run host tests and QEMU scenarios (both by default)\n\
         gdb [--manifest M]        start QEMU paused with a gdb stub on :1234\n\
         ctl [--api A] [--token T] [--json] COMMAND\n\
         \x20                         dom0's management API from the host: list, create, destroy, ...\n\
         \x20                         (RF_API, RF_TOKEN: `cargo xtask run` prints them)\n\
         bench [--paths]           hypervisor path lengths under QEMU -icount (writes target/bench.json;\n\
         \x20                         --paths: only the path-length run, printed; --toolstack: domain create/destroy)\n\
         bench-rings [--smoke] [--json PATH]\n\
         \x20                         benchmark ring-protocol against rtrb, crossbeam-queue, heapless\n\
         new-guest NAME [--dir DIR]\n\
         \x20                         make a domU crate in guests/NAME (or DIR/NAME) that uses the console, a\n\
         \x20                         timer, a virtual disk and the network, with a manifest that boots it:\n\
         \x20                         `cargo xtask run --manifest guests/NAME/manifest.toml` builds and boots it"
    );
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs a command with inherited output; fails unless it exits 0.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().map_err(|e| format!("cannot start {shown}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({st})"))
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1).cloned())
}

fn build(_args: &[String]) -> Result<()> {
    let imgs = images::build()?;
    let m = manifest::Manifest::load(&root().join("sample-guests/manifests/demo.toml"))?;
    let out = images::pack_manifest(&imgs, &m)?;
    println!("hypervisor: {}", imgs.hypervisor.display());
    println!("bundle:     {}", out.display());
    Ok(())
}

/// The devices of manifest `m` (at `path`): a fresh disk image with the
/// dom0 pattern written and the virtual disks formatted, and the NIC;
/// printed where they are.
fn manifest_devices(m: &manifest::Manifest, path: &std::path::Path) -> Result<qemu::Devices> {
    use qemu::devices::{Disk, Nic, Proto};
    let mut d = qemu::Devices::NONE;
    if m.devices.disk_mib > 0 {
        let stem = path.file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
        let image = images::target_dir().join("ringfence").join(format!("{stem}.img"));
        d.disk = Some(Disk::create(&image, m.devices.disk_mib << 20)?);
        images::prepare_disk(m, &image)?;
        let r = disk_pattern::dom0::READ;
        eprintln!(
            "xtask: disk {} ({} MiB, pattern of seed {:#x} at LBA {})",
            image.display(),
            m.devices.disk_mib,
            r.seed,
            r.lba
        );
        for v in &m.disks.vbds {
            let what = match v.kind {
                vbd::Kind::Raw => format!("{}'s raw slice", v.domain),
                vbd::Kind::Sparse => format!("{}'s sparse image", v.domain),
                vbd::Kind::Overlay(t) => {
                    format!("{}'s overlay on the template at LBA {}", v.domain, m.disks.vbds[t].region.lba)
                }
                vbd::Kind::Template(seed) => format!("template '{}' (pattern of seed {seed:#x})", v.domain),
                vbd::Kind::Pool => String::from("the space dom0 makes clones in (`create ... --from TEMPLATE`)"),
            };
            eprintln!("xtask: disk: {what}: LBA {}, {} sectors", v.region.lba, v.region.sectors);
        }
    }
    let ports = m.devices.forwards_at();
    if m.devices.wants_nic() {
        let nic = Nic::user_at(&ports)?;
        for &(proto, ip, p) in &ports {
            let addr = nic.host_addr(proto, p)?;
            eprintln!("xtask: NIC: {} {addr} -> {ip}:{p}", proto.qemu_name());
            if (proto, p) == (Proto::Tcp, 80) {
                eprintln!("xtask: while it runs: curl http://{addr}/   (curl http://{addr}/stop ends the web domU)");
            }
        }
        if let (Some(port), Some((_, token))) = (m.devices.dom0_api, m.api()) {
            let addr = nic.host_addr(Proto::Tcp, port)?;
            eprintln!("xtask: dom0's API: export RF_API={addr} RF_TOKEN={token}; then e.g. `cargo xtask ctl list`");
        }
        d.nic = Some(nic);
    }
    Ok(d)
}

fn run(args: &[String]) -> Result<()> {
    let manifest_path = flag_value(args, "--manifest")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("sample-guests/manifests/demo.toml"));
    // `--stay`: dom0's shell stays up after the other domains have ended,
    // until `shutdown` (or the time limit, an hour by default).
    let stay = args.iter().any(|a| a == "--stay");
    let timeout = flag_value(args, "--timeout").and_then(|t| t.parse().ok()).unwrap_or(if stay { 3600 } else { 120 });
    qemu::ensure_installed()?;
    let imgs = images::build()?;
    let mut m = manifest::Manifest::load(&manifest_path)?;
    images::build_crate_of(&m.dir)?;
    if stay {
        let dom0 = m.domain.iter_mut().find(|d| d.privileged).ok_or("--stay: the manifest has no privileged domain")?;
        for w in ["shell", "stay"] {
            if !dom0.cmdline.split(' ').any(|x| x == w) {
                dom0.cmdline = if dom0.cmdline.is_empty() { w.into() } else { format!("{} {w}", dom0.cmdline) };
            }
        }
    }
    if m.domain.iter().any(|d| d.privileged && d.cmdline.split(' ').any(|w| w == "shell")) {
        eprintln!(
            "xtask: dom0's shell reads what you type here: `help` lists its commands{}",
            if stay { ", `shutdown` ends the run" } else { "" }
        );
    }
    let bundle = images::pack_manifest(&imgs, &m)?;
    let opts = qemu::RunOpts {
        kernel: imgs.hypervisor.clone(),
        bundle: Some(bundle),
        append: String::new(),
        timeout_s: timeout,
        stream: true,
        extra: vec![],
        devices: manifest_devices(&m, &manifest_path)?,
        kill_on: None,
        input: qemu::Input::Forward,
    };
    let r = qemu::run(&opts)?;
    eprintln!("xtask: QEMU ran for {:.2} s (TCG wall time): {}", r.wall.as_secs_f64(), r.outcome);
    match r.outcome {
        qemu::Outcome::Pass => Ok(()),
        other => Err(format!("the run did not pass: {other}")),
    }
}

fn test(args: &[String]) -> Result<()> {
    let host = args.iter().any(|a| a == "--host");
    let qemu_only = args.iter().any(|a| a == "--qemu");
    let (do_host, do_qemu) = match (host, qemu_only) {
        (false, false) => (true, true),
        (h, q) => (h, q),
    };
    let filter = args.iter().find(|a| !a.starts_with("--")).cloned();
    if do_host {
        println!("== formatting and lints");
        let has =
            |sub: &str| Command::new(env!("CARGO")).args([sub, "--version"]).output().is_ok_and(|o| o.status.success());
        if has("fmt") {
            run_cmd(Command::new(env!("CARGO")).current_dir(root()).args(["fmt", "--all", "--check"]))?;
            // The guest template is no crate of the workspace: its files by name.
            run_cmd(Command::new("rustfmt").current_dir(root()).args([
                "--edition",
                "2021",
                "--check",
                "xtask/template/src/main.rs",
                "xtask/template/build.rs",
            ]))?;
        } else {
            println!("(rustfmt is not installed: `rustup component add rustfmt`; format check skipped)");
        }
        if has("clippy") {
            run_cmd(Command::new(env!("CARGO")).current_dir(root()).args([
                "clippy",
                "--workspace",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ]))?;
        } else {
            println!("(clippy is not installed: `rustup component add clippy`; lints skipped)");
        }
        println!("== docs (broken intra-doc links are errors)");
        run_cmd(Command::new(env!("CARGO")).current_dir(root()).env("RUSTDOCFLAGS", "-D warnings").args([
            "doc",
            "--no-deps",
            "--quiet",
            "-p",
            "pvguest-sdk",
            "-p",
            "pvguest-abi",
            "-p",
            "ringfence-kernel",
            "-p",
            "ring-protocol",
            "-p",
            "ringfence-bundle",
            "-p",
            "ringfence-bundle-writer",
            "-p",
            "split-drivers",
            "-p",
            "device-store",
            "-p",
            "disk-images",
            "-p",
            "net-bridge",
        ]))?;
        println!("== host tests");
        run_cmd(Command::new(env!("CARGO")).current_dir(root()).args(["test", "--workspace"]))?;
        println!("== ring-protocol loom models (exhaustive interleavings of the notify handshake)");
        run_cmd(
            Command::new(env!("CARGO"))
                .current_dir(root())
                .env("RUSTFLAGS", "--cfg loom")
                .env("CARGO_TARGET_DIR", images::target_dir().join("loom"))
                .args(["test", "-p", "ring-protocol", "--release", "--test", "loom"]),
        )?;
        println!("== ring benchmark, smoke pass (no gate on time)");
        run_cmd(Command::new(env!("CARGO")).current_dir(root()).args([
            "run",
            "--release",
            "-p",
            "ring-bench",
            "--",
            "--smoke",
        ]))?;
    }
    if do_qemu {
        qemu::ensure_installed()?;
        scenarios::run_all(filter.as_deref(), args.iter().any(|a| a == "--show"))?;
    }
    Ok(())
}

fn gdb(args: &[String]) -> Result<()> {
    let manifest_path = flag_value(args, "--manifest")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("sample-guests/manifests/demo.toml"));
    qemu::ensure_installed()?;
    let imgs = images::build()?;
    let m = manifest::Manifest::load(&manifest_path)?;
    images::build_crate_of(&m.dir)?;
    let bundle = images::pack_manifest(&imgs, &m)?;
    println!("QEMU is paused with a gdb stub on localhost:1234. In another terminal:");
    println!("  gdb {} -ex 'target remote :1234' -ex 'break kmain' -ex continue", imgs.hypervisor.display());
    println!("Guest symbols: add-symbol-file {}/<guest>", imgs.guests_dir.display());
    println!("(the hypervisor is linked at its physical addresses, so its symbols need no offset; stop QEMU with Ctrl-C here)");
    let opts = qemu::RunOpts {
        kernel: imgs.hypervisor.clone(),
        bundle: Some(bundle),
        append: String::new(),
        timeout_s: 24 * 3600,
        stream: true,
        extra: vec!["-s".into(), "-S".into()],
        devices: manifest_devices(&m, &manifest_path)?,
        kill_on: None,
        input: qemu::Input::Forward,
    };
    qemu::run(&opts).map(|_| ())
}

fn bench_rings(args: &[String]) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args(["run", "--release", "-p", "ring-bench", "--"]).args(args);
    run_cmd(&mut cmd)
}
