//! The toolstack's shell: dom0 manages domains from its serial console,
//! modelled on Xen's `xl` (`list`, `create`, `destroy`, `pause`,
//! `unpause`, `top`, `set-weight`, ...). `help` lists the commands.
//!
//! ```text
//! > create hello name=hi mem=1024
//! created dom3 'hi' from template 'hello' (1024 KiB)
//! > list
//!   id name                      state    mem KiB    cpu ms weight warp us
//!    0 dom0                      running     3072       123    100       0
//!    3 hi                        blocked     1024         2    100       0
//! > destroy hi
//! destroyed 'hi' (dom3)
//! ```
//!
//! # Where things happen
//! - Input is the machine's console input, which only dom0 may read
//!   ([`pvguest_sdk::console::read`]). Nothing signals it, so the shell
//!   reads it when its timer ([`POLL_NS`]) fires or the serve loop passes
//!   by anyway. A line ends at `\r` or `\n`; backspace edits it; a line
//!   longer than [`MAX_LINE`] is dropped with an error.
//! - Every command is a `domctl` hypercall ([`pvguest_sdk::domctl`]); the
//!   hypervisor checks every argument again and says why it refuses a
//!   create. What the shell checks first is only for clearer errors.
//! - Domains come from the boot bundle's templates (the manifest's
//!   `[[image]]` entries), whose images the shell reads once and keeps.
//! - `console DOM` attaches the shell to a domain's console, which dom0's
//!   console daemon drains ([`crate::consoled`]): the lines typed go to
//!   that domain (a command too) until `~.` detaches.
//! - The shell runs inside dom0's serve loop ([`crate::serve`]): a command
//!   does a bounded amount of work per pass (one churn cycle, one `top`
//!   frame), so the store and the disks keep being served.
//!
//! # Command line
//! `shell` turns the shell on. dom0 then serves until every other domain
//! has ended, as without it; with `stay` too, until `shutdown`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use pvguest_sdk::abi::domctl::{dominf, BootImage, DomainInfo, PhysInfo};
use pvguest_sdk::abi::event::VIRQ_TIMER;
use pvguest_sdk::domctl::{self, Create};
use pvguest_sdk::event::{self, Port};
use pvguest_sdk::{console, println, sched, time, timer, Errno};

/// How often console input is read while nothing else wakes dom0.
pub const POLL_NS: u64 = 20_000_000;
/// The longest command line.
pub const MAX_LINE: usize = 512;
/// How long a churn cycle waits for its domain to be reaped.
const REAP_WAIT_NS: u64 = 5_000_000_000;
/// How long `wait` waits.
const WAIT_NS: u64 = 30_000_000_000;
/// dom0's heap a create leaves free at least: dom0 serves every domain it
/// makes (a store connection, perhaps a disk and a NIC), and a heap that
/// runs out would end dom0 itself.
pub const HEAP_HEADROOM: usize = 96 * 1024;

/// `Ok` if dom0's heap has room to serve one more domain.
fn heap_room() -> Result<(), String> {
    let (used, free) = pvguest_sdk::heap::stats();
    if free < HEAP_HEADROOM {
        return Err(format!(
            "dom0's heap is nearly full ({} KiB free of {} KiB; it keeps {} KiB to serve the domains it has): give dom0 more heap= pages",
            free / 1024,
            (used + free) / 1024,
            HEAP_HEADROOM / 1024
        ));
    }
    Ok(())
}

/// Domains a spawn creates per pass of the serve loop.
const SPAWN_BATCH: usize = 16;
/// Lines kept while a `wait` lasts.
const MAX_QUEUED: usize = 16;

/// The shell's timer fired.
static TICK: AtomicBool = AtomicBool::new(false);

fn on_tick(_: Port) {
    TICK.store(true, Ordering::SeqCst);
}

/// Why a toolstack operation failed; the API answers with [`Failure::status`].
#[derive(Debug)]
pub enum Failure {
    /// The request itself is wrong (400).
    Bad(String),
    /// It names no such domain or template (404).
    Missing(String),
    /// The hypervisor refused it, or the machine's state does (409).
    Refused(String),
}

impl Failure {
    /// The HTTP status for it.
    pub fn status(&self) -> u16 {
        match self {
            Failure::Bad(_) => 400,
            Failure::Missing(_) => 404,
            Failure::Refused(_) => 409,
        }
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (Failure::Bad(s) | Failure::Missing(s) | Failure::Refused(s)) = self;
        f.write_str(s)
    }
}

impl From<Failure> for String {
    fn from(f: Failure) -> String {
        match f {
            Failure::Bad(s) | Failure::Missing(s) | Failure::Refused(s) => s,
        }
    }
}

/// A create, as the shell's options or the API's JSON give it (the API's
/// request body, [`toolstack_api::CreateBody`]): `None`s take the
/// template's defaults.
pub type CreateArgs = toolstack_api::CreateBody;

/// A domain made.
#[derive(Debug)]
pub struct Created {
    pub domid: u32,
    pub name: String,
    pub mem_kib: u32,
    pub paused: bool,
    /// Its disk, if it got a clone: where.
    pub disk: Option<String>,
}

/// What the toolstack needs of dom0's serve loop: clones of template
/// disks (`create ... --from DISK`), served by dom0's blkback like the
/// manifest's disks, and the consoles dom0's daemon drains
/// ([`crate::consoled`]: `console DOM`).
pub trait Services {
    /// Makes a copy-on-write overlay of template disk `template` for the
    /// domain about to be created as `name`; says where.
    fn prepare_clone(&mut self, name: &str, template: &str) -> Result<String, Failure>;
    /// That domain is `domid` (its disk is offered when it connects), or
    /// its create failed (`None`: the clone is given up).
    fn settle_clone(&mut self, name: &str, domid: Option<u16>);
    /// The consoles.
    fn consoles(&mut self) -> &mut crate::consoled::Consoles;
}

/// A domain [`Toolstack::shutdown`] destroyed, and how that went.
pub type Destroyed = (DomainInfo, Result<(), Errno>);

/// What [`act`] does to a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Destroy,
    Pause,
    Unpause,
}

impl Act {
    /// The past tense, for replies.
    pub fn done(self) -> &'static str {
        match self {
            Act::Destroy => "destroyed",
            Act::Pause => "paused",
            Act::Unpause => "unpaused",
        }
    }
}

/// The shell's state (see the module docs).
pub struct Toolstack {
    /// Console input is read (`shell`).
    shell: bool,
    line: Vec<u8>,
    /// A line grew past [`MAX_LINE`]: the rest of it is dropped.
    overlong: bool,
    templates: Vec<BootImage>,
    /// Each template's image, once read.
    images: Vec<Option<Vec<u8>>>,
    top: Option<Top>,
    churn: Option<Churn>,
    /// `wait`: the domain, its name, and when to give up.
    waiting: Option<(u32, String, u64)>,
    /// Lines typed during a `wait`, run after it.
    queued: Vec<String>,
    stay: bool,
    shutdown: bool,
    /// Domains created, for default names.
    created: u32,
    next_read: u64,
}

/// `top`: a frame every `interval` until `rounds` are shown or a line is
/// typed.
struct Top {
    interval: u64,
    rounds: Option<u32>,
    next: u64,
    last: (u64, Vec<(u32, u64)>),
}

/// `churn`: create-and-destroy cycles, then the leak check.
struct Churn {
    template: usize,
    mem_kib: u32,
    cycles: u32,
    done: u32,
    before: PhysInfo,
    started: u64,
    /// `timed`: each domain is told when its create began (`t0=` on its
    /// command line, for its first line), runs until it blocks, and the
    /// create hypercall and destroy-to-reaped times are kept.
    timed: Option<Timings>,
    /// `spawn`: all domains are made first, kept alive together, then
    /// destroyed together: the domains it holds.
    spawned: Option<Vec<u32>>,
    /// A spawn's reaping: domains left, and when that last changed.
    progress: (usize, u64),
}

/// A timed churn's figures, in ns of system time (instructions under
/// `-icount shift=0`).
#[derive(Default)]
struct Timings {
    create: Vec<u64>,
    destroy: Vec<u64>,
}

/// The median of `v` (sorted here), or 0.
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

impl Toolstack {
    /// The toolstack, if `cmdline` has `shell` or `api=` (the API's
    /// requests are carried out here too).
    pub fn from_cmdline(cmdline: &str) -> Option<Toolstack> {
        let has = |w: &str| cmdline.split(' ').any(|x| x == w);
        let shell = has("shell");
        if !shell && !cmdline.split(' ').any(|w| w.starts_with("api=")) {
            return None;
        }
        if let Err(e) = event::bind_virq(VIRQ_TIMER, on_tick) {
            println!("toolstack: VIRQ_TIMER: {e}: it runs only when dom0 has other work");
        }
        let templates: Vec<BootImage> = domctl::templates().collect();
        let names: Vec<&str> = templates.iter().map(|t| t.name()).collect();
        if shell {
            println!("toolstack: shell ready, {} template(s): {}; type `help`", templates.len(), names.join(", "));
        }
        Some(Toolstack {
            shell,
            line: Vec::new(),
            overlong: false,
            images: templates.iter().map(|_| None).collect(),
            templates,
            top: None,
            churn: None,
            waiting: None,
            queued: Vec::new(),
            stay: has("stay"),
            shutdown: false,
            created: 0,
            next_read: 0,
        })
    }

    /// Whether dom0 must go on serving with no other domain left.
    pub fn keeps_dom0(&self) -> bool {
        (self.stay && !self.shutdown) || self.churn.is_some()
    }

    /// Whether the shell has work without waiting (its timer fired, or a
    /// churn is under way).
    pub fn ready(&self) -> bool {
        TICK.load(Ordering::SeqCst) || self.churn.is_some()
    }

    /// Arms the timer for the next time the toolstack needs to run (or
    /// `at`, if sooner: the API's network timers); called before dom0
    /// blocks.
    pub fn arm(&mut self, at: Option<u64>) {
        let mut next = if self.shell { self.next_read } else { u64::MAX };
        if let Some(t) = &self.top {
            next = next.min(t.next);
        }
        if let Some(a) = at {
            next = next.min(a);
        }
        if next != u64::MAX {
            let _ = timer::set_oneshot(next);
        }
    }

    /// One pass: reads input, runs the commands it completes, and moves a
    /// `top` or `churn` on. Whether it did anything.
    pub fn poll(&mut self, svc: &mut dyn Services) -> bool {
        let now = time::now_ns();
        let mut work = false;
        if (TICK.swap(false, Ordering::SeqCst) || now >= self.next_read) && self.shell {
            self.next_read = now + POLL_NS;
            work |= self.read_input(svc);
        }
        if self.top.as_ref().is_some_and(|t| now >= t.next) {
            self.top_frame(now);
            work = true;
        }
        if self.churn.is_some() {
            self.churn_cycle();
            work = true;
        }
        if let Some((id, name, until)) = self.waiting.take() {
            let gone = listed(id).is_none();
            if gone || now > until {
                if gone {
                    println!("dom{id} is gone ('{name}')");
                } else {
                    println!("wait: error: '{name}' (dom{id}) is still there after {} s", WAIT_NS / 1_000_000_000);
                }
                for line in core::mem::take(&mut self.queued) {
                    self.line_typed(line.as_bytes(), svc);
                }
                work = true;
            } else {
                self.waiting = Some((id, name, until));
            }
        }
        work
    }

    /// Reads what console input waits and runs each line it completes.
    fn read_input(&mut self, svc: &mut dyn Services) -> bool {
        let mut buf = [0u8; 64];
        let mut any = false;
        loop {
            let n = match console::read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    println!("toolstack: console input: {e}");
                    0
                }
            };
            if n == 0 {
                return any;
            }
            any = true;
            for &b in &buf[..n] {
                self.byte(b, svc);
            }
        }
    }

    fn byte(&mut self, b: u8, svc: &mut dyn Services) {
        match b {
            b'\r' | b'\n' => {
                let line = core::mem::take(&mut self.line);
                if core::mem::take(&mut self.overlong) {
                    println!("error: a command is at most {MAX_LINE} bytes: line dropped");
                } else {
                    self.line_typed(&line, svc);
                }
            }
            0x08 | 0x7f => {
                self.line.pop();
            }
            _ if self.line.len() >= MAX_LINE => self.overlong = true,
            _ => self.line.push(b),
        }
    }

    fn line_typed(&mut self, line: &[u8], svc: &mut dyn Services) {
        let Ok(line) = core::str::from_utf8(line) else {
            println!("error: the line is not UTF-8");
            return;
        };
        if svc.consoles().attached().is_some() {
            self.console_input(line, svc);
            return;
        }
        let line = line.trim();
        if self.top.take().is_some() {
            println!("top: ended");
            if line.is_empty() || line == "q" {
                return;
            }
        }
        if line.is_empty() {
            return;
        }
        if self.waiting.is_some() {
            if self.queued.len() < MAX_QUEUED {
                self.queued.push(String::from(line));
            } else {
                println!("error: {MAX_QUEUED} lines already wait for the `wait`: '{line}' dropped");
            }
            return;
        }
        println!("> {line}");
        if self.churn.is_some() && line != "stop" {
            println!("error: a churn is under way; `stop` ends it");
            return;
        }
        let words = match split(line) {
            Ok(w) => w,
            Err(e) => {
                println!("error: {e}");
                return;
            }
        };
        let (cmd, args) = words.split_first().expect("the line is not empty");
        let r = match cmd.as_str() {
            "help" => {
                help();
                Ok(())
            }
            "list" => list(),
            "templates" => {
                self.list_templates();
                Ok(())
            }
            "create" => self.create(args, svc),
            "destroy" => on_domain(args, Act::Destroy),
            "pause" => on_domain(args, Act::Pause),
            "unpause" => on_domain(args, Act::Unpause),
            "set-weight" => set_weight(args),
            "info" => info(),
            "wait" => self.start_wait(args),
            "top" => self.start_top(args),
            "churn" => self.start_churn(args, false),
            "spawn" => self.start_churn(args, true),
            "stop" => self.stop_churn(),
            "console" => console_attach(args, svc),
            "shutdown" => self.shut_down(args),
            other => Err(format!("unknown command '{other}'; `help` lists them")),
        };
        if let Err(e) = r {
            println!("{cmd}: error: {e}");
        }
    }

    /// A line typed while attached to a console: `~.` detaches, any
    /// other goes to the domain, its line end with it.
    fn console_input(&mut self, line: &str, svc: &mut dyn Services) {
        let c = svc.consoles();
        if line.trim() == "~." {
            if let Some(id) = c.detach() {
                println!("console: detached from dom{id}");
            }
            return;
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Err(e) = c.type_line(&bytes) {
            println!("console: {e}");
        }
    }

    fn list_templates(&self) {
        if self.templates.is_empty() {
            println!("no templates: add [[image]] entries to the manifest");
        }
        for t in &self.templates {
            println!(
                "  {:<16} {:>6} KiB  weight {:>5}  image {:>7} B  cmdline \"{}\"",
                t.name(),
                t.mem_kib,
                t.weight,
                t.image_len,
                t.cmdline()
            );
        }
    }

    /// The boot bundle's templates.
    pub fn templates(&self) -> &[BootImage] {
        &self.templates
    }

    /// The template called `name`.
    fn template(&self, name: &str) -> Result<usize, Failure> {
        self.templates.iter().position(|t| t.name() == name).ok_or_else(|| {
            let known: Vec<&str> = self.templates.iter().map(|t| t.name()).collect();
            Failure::Missing(format!(
                "no template '{name}' (templates: {})",
                if known.is_empty() { String::from("none") } else { known.join(", ") }
            ))
        })
    }

    /// Template `k`'s image, read from the bundle on first use.
    fn image(&mut self, k: usize) -> Result<&[u8], Failure> {
        if self.images[k].is_none() {
            let img = domctl::read_template(&self.templates[k])
                .map_err(|e| Failure::Refused(format!("reading template '{}': {e}", self.templates[k].name())))?;
            self.images[k] = Some(img);
        }
        Ok(self.images[k].as_deref().unwrap_or(&[]))
    }

    /// `create TEMPLATE [name=N] [mem=KiB] [weight=W] [warp=US] [cmdline=...] [paused]`
    fn create(&mut self, args: &[String], svc: &mut dyn Services) -> Result<(), String> {
        let (tname, opts) = args.split_first().ok_or(
            "usage: create TEMPLATE [name=N] [mem=KiB] [weight=W] [warp=US] [cmdline=\"...\"] [paused] [--from DISK]",
        )?;
        let mut a = CreateArgs { template: tname.clone(), ..CreateArgs::default() };
        let mut opts = opts.iter();
        while let Some(o) = opts.next() {
            if o == "--from" {
                a.from = Some(opts.next().ok_or("--from needs a template disk's name")?.clone());
                continue;
            }
            match o.split_once('=') {
                Some(("from", v)) => a.from = Some(v.into()),
                Some(("name", v)) => a.name = Some(v.into()),
                Some(("mem", v)) => a.mem_kib = Some(kib(v)?),
                Some(("weight", v)) => a.weight = Some(number(v, "weight")?),
                Some(("warp", v)) => a.warp_us = Some(number(v, "warp")?),
                Some(("cmdline", v)) => a.cmdline = Some(v.into()),
                None if o == "paused" => a.paused = true,
                _ => {
                    return Err(format!(
                        "unknown option '{o}' (name=, mem=, weight=, warp=, cmdline=, paused, --from DISK)"
                    ))
                }
            }
        }
        let c = self.create_domain(&a, svc)?;
        println!(
            "created dom{} '{}' from template '{tname}' ({} KiB{}{})",
            c.domid,
            c.name,
            c.mem_kib,
            if c.paused { ", paused" } else { "" },
            c.disk.as_deref().map(|d| format!(", its disk {d}")).unwrap_or_default()
        );
        Ok(())
    }

    /// Creates a domain from a template (the shell's `create`, the API's
    /// `POST /v1/domains`).
    /// With `from`, the domain's disk is a copy-on-write overlay of that
    /// template disk, made first ([`Services::prepare_clone`]).
    pub fn create_domain(&mut self, a: &CreateArgs, svc: &mut dyn Services) -> Result<Created, Failure> {
        let k = self.template(&a.template)?;
        let t = self.templates[k];
        let name = a.name.clone().unwrap_or_else(|| format!("{}-{}", t.name(), self.created + 1));
        let disk = match &a.from {
            Some(from) => Some(svc.prepare_clone(&name, from)?),
            None => None,
        };
        let r = self.create_from(k, &name, a);
        if disk.is_some() {
            svc.settle_clone(&name, r.as_ref().ok().and_then(|&id| u16::try_from(id).ok()));
        }
        let domid = r?;
        self.created += 1;
        Ok(Created { domid, name, mem_kib: a.mem_kib.unwrap_or(t.mem_kib), paused: a.paused, disk })
    }

    /// The create hypercall for template `k`: the new domain's id.
    fn create_from(&mut self, k: usize, name: &str, a: &CreateArgs) -> Result<u32, Failure> {
        heap_room().map_err(Failure::Refused)?;
        let t = self.templates[k];
        let mem = a.mem_kib.unwrap_or(t.mem_kib);
        let cmdline = a.cmdline.as_deref().unwrap_or(t.cmdline());
        let image = self.image(k)?;
        Create::new(name, image)
            .mem_kib(mem)
            .weight(a.weight.unwrap_or(t.weight))
            .warp_us(a.warp_us.unwrap_or(t.warp_us))
            .cmdline(cmdline)
            .paused(a.paused)
            .run()
            .map_err(|e| match e.errno {
                Errno::EINVAL => Failure::Bad(format!("refused: {e}")),
                _ => Failure::Refused(format!("refused: {e}")),
            })
    }

    /// `wait DOM`: until the domain has left the table (reaped).
    fn start_wait(&mut self, args: &[String]) -> Result<(), String> {
        let [dom] = args else { return Err(String::from("usage: wait DOM (an id or a name)")) };
        match (resolve_any(dom), dom.parse::<u32>()) {
            (Ok(d), _) => self.waiting = Some((d.domid, String::from(d.name()), time::now_ns() + WAIT_NS)),
            // Ids are never handed out twice: one not listed has gone.
            (Err(_), Ok(id)) => println!("dom{id} is gone"),
            (Err(e), Err(_)) => return Err(e.into()),
        }
        Ok(())
    }

    /// `top [rounds=N] [ms=INTERVAL]`
    fn start_top(&mut self, args: &[String]) -> Result<(), String> {
        let (mut rounds, mut ms) = (None, 1000u64);
        for a in args {
            match a.split_once('=') {
                Some(("rounds", v)) => rounds = Some(number(v, "rounds")?.max(1)),
                Some(("ms", v)) => ms = u64::from(number(v, "ms")?.clamp(100, 60_000)),
                _ => return Err(format!("unknown option '{a}' (rounds=N, ms=INTERVAL)")),
            }
        }
        let now = time::now_ns();
        self.top = Some(Top { interval: ms * 1_000_000, rounds, next: now, last: (0, Vec::new()) });
        println!("top: every {ms} ms{}; type a line to end it", if rounds.is_some() { "" } else { " until ended" });
        Ok(())
    }

    fn top_frame(&mut self, now: u64) {
        let Some(t) = self.top.as_mut() else { return };
        let doms: Vec<DomainInfo> = domctl::domains().collect();
        let phys = domctl::phys_info().unwrap_or_default();
        println!(
            "top: at {}.{:03} s: {} domains, {} of {} frames free",
            now / 1_000_000_000,
            now / 1_000_000 % 1000,
            doms.len(),
            phys.free_frames,
            phys.total_frames
        );
        println!("  {:>4} {:<24} {:>6} {:>9} {:>9}", "id", "name", "cpu %", "mem KiB", "state");
        let span = now.saturating_sub(t.last.0).max(1);
        for d in &doms {
            let before = t.last.1.iter().find(|(id, _)| *id == d.domid).map_or(0, |&(_, c)| c);
            let used = d.cpu_time_ns.saturating_sub(before);
            let tenths = used.saturating_mul(1000) / span;
            println!(
                "  {:>4} {:<24} {:>4}.{} {:>9} {:>9}",
                d.domid,
                d.name(),
                tenths / 10,
                tenths % 10,
                d.nr_pages * 4,
                state(d)
            );
        }
        t.last = (now, doms.iter().map(|d| (d.domid, d.cpu_time_ns)).collect());
        t.next = now + t.interval;
        if let Some(r) = t.rounds.as_mut() {
            *r -= 1;
            if *r == 0 {
                self.top = None;
                println!("top: ended");
            }
        }
    }

    /// `churn N [TEMPLATE] [mem=KiB] [timed]` and `spawn N [TEMPLATE] [mem=KiB]`
    fn start_churn(&mut self, args: &[String], spawn: bool) -> Result<(), String> {
        let what = if spawn { "spawn" } else { "churn" };
        let usage = format!("usage: {what} N [TEMPLATE] [mem=KiB]{}", if spawn { "" } else { " [timed]" });
        let (n, rest) = args.split_first().ok_or(usage.as_str())?;
        let cycles = number(n, "N")?;
        if cycles == 0 {
            return Err(usage);
        }
        let (mut template, mut mem, mut timed) = (None, None, None);
        for a in rest {
            match a.split_once('=') {
                Some(("mem", v)) => mem = Some(kib(v)?),
                None if a == "timed" && !spawn => timed = Some(Timings::default()),
                None if template.is_none() => template = Some(self.template(a)?),
                _ => return Err(format!("unknown option '{a}'; {usage}")),
            }
        }
        let template = match template {
            Some(k) => k,
            None if !self.templates.is_empty() => 0,
            None => return Err(String::from("no templates: add [[image]] entries to the manifest")),
        };
        // The image is read (and kept) before the first count.
        self.image(template)?;
        let before = domctl::phys_info().map_err(|e| format!("physinfo: {e}"))?;
        let t = &self.templates[template];
        println!("{what}: {cycles} {} of template '{}'", if spawn { "domains" } else { "cycles" }, t.name());
        let mem_kib = mem.unwrap_or(t.mem_kib);
        let spawned = spawn.then(Vec::new);
        let started = time::now_ns();
        self.churn = Some(Churn {
            template,
            mem_kib,
            cycles,
            done: 0,
            before,
            started,
            timed,
            spawned,
            progress: (usize::MAX, started),
        });
        Ok(())
    }

    fn stop_churn(&mut self) -> Result<(), String> {
        let c = self.churn.take().ok_or("no churn is under way")?;
        println!("churn: stopped after {} of {} cycles", c.done, c.cycles);
        for id in c.spawned.unwrap_or_default() {
            let _ = domctl::destroy(id);
        }
        Ok(())
    }

    /// One step of a churn or spawn (see [`Toolstack::churn_cycle_of`]);
    /// after the last, the figures and the leak check.
    fn churn_cycle(&mut self) {
        let Some(mut c) = self.churn.take() else { return };
        if let Err(e) = self.churn_cycle_of(&mut c) {
            let what = if c.spawned.is_some() { "spawn" } else { "churn" };
            println!("{what}: step {}: {e}; stopped", c.done + 1);
            for &id in c.spawned.iter().flatten() {
                let _ = domctl::destroy(id);
            }
            return;
        }
        // A spawn's steps: its creates, the destroy, the wait, one more.
        let total = if c.spawned.is_some() { c.cycles + 3 } else { c.cycles };
        if c.done < total {
            if c.spawned.is_none() && c.done % 250 == 0 {
                println!("churn: {} cycles", c.done);
            }
            self.churn = Some(c);
            return;
        }
        self.churn_report(c);
    }

    /// A churn cycle: create a domain, let it run (a timed one until it
    /// blocks), destroy it, wait until it is reaped. A spawn step: create
    /// the next domain; once all are there, destroy all and wait until
    /// every one is reaped.
    fn churn_cycle_of(&mut self, c: &mut Churn) -> Result<(), String> {
        let t = self.templates[c.template];
        let n = c.done;
        let image = self.image(c.template)?;
        let t0 = time::now_ns();
        let cmdline = match c.timed {
            Some(_) => format!("{} t0={t0}", t.cmdline()),
            None => String::from(t.cmdline()),
        };
        if let Some(ids) = c.spawned.as_mut().filter(|ids| (ids.len() as u32) < c.cycles) {
            // Up to SPAWN_BATCH creates a pass: the serve loop connects
            // each batch's domains to the store in one rescan.
            for _ in 0..SPAWN_BATCH {
                if ids.len() as u32 == c.cycles {
                    break;
                }
                let id = churn_create(&format!("spawn-{}", ids.len()), image, c.mem_kib, &cmdline, t.weight)?;
                ids.push(id);
                c.done += 1;
            }
            if ids.len() as u32 == c.cycles {
                let spent = time::now_ns().saturating_sub(c.started);
                let p = domctl::phys_info().unwrap_or_default();
                println!(
                    "spawn: {} domains running at once ({} in the machine, {} frames free), made in {} ms: {} creates/s",
                    ids.len(),
                    p.domains,
                    p.free_frames,
                    spent / 1_000_000,
                    u64::from(c.cycles) * 1_000_000_000 / spent.max(1)
                );
                c.started = time::now_ns();
            }
            return Ok(());
        }
        if let Some(ids) = c.spawned.as_mut() {
            // All made: destroy them all (one pass), then, pass by pass,
            // wait until every one is reaped, then one pass more, so the
            // serve loop has let go of their store connections before the
            // leak check counts.
            match c.done - c.cycles {
                0 => {
                    for &id in ids.iter() {
                        domctl::destroy(id).map_err(|e| format!("destroy dom{id}: {e}"))?;
                    }
                    c.done += 1;
                }
                1 => {
                    let left = ids.iter().filter(|&&id| listed(id).is_some()).count();
                    // It fails only if no domain was reaped for WAIT_NS.
                    let now = time::now_ns();
                    if c.progress.0 != left {
                        c.progress = (left, now);
                    }
                    if left == 0 {
                        let spent = time::now_ns().saturating_sub(c.started);
                        println!(
                            "spawn: {} domains destroyed and reaped in {} ms: {} destroys/s",
                            ids.len(),
                            spent / 1_000_000,
                            u64::from(c.cycles) * 1_000_000_000 / spent.max(1)
                        );
                        c.done += 1;
                    } else if now.saturating_sub(c.progress.1) > WAIT_NS {
                        return Err(format!("{left} domains not reaped, none for {} s", WAIT_NS / 1_000_000_000));
                    } else {
                        sched::yield_now();
                    }
                }
                _ => c.done = c.cycles + 3,
            }
            return Ok(());
        }
        let id = churn_create(&format!("churn-{}", n % 1000), image, c.mem_kib, &cmdline, t.weight)?;
        let made = time::now_ns();
        if c.timed.is_some() {
            // It prints its first line, then blocks: wait for that.
            let until = made + REAP_WAIT_NS;
            while listed(id).is_none_or(|i| i.flags & dominf::BLOCKED == 0) {
                if time::now_ns() > until {
                    return Err(format!("dom{id} did not block within {} s", REAP_WAIT_NS / 1_000_000_000));
                }
                sched::yield_now();
            }
        } else {
            sched::yield_now();
        }
        let d0 = time::now_ns();
        domctl::destroy(id).map_err(|e| format!("destroy dom{id}: {e}"))?;
        wait_gone(id)?;
        if let Some(tm) = c.timed.as_mut() {
            tm.create.push(made - t0);
            tm.destroy.push(time::now_ns() - d0);
        }
        c.done += 1;
        Ok(())
    }

    /// A finished churn's or spawn's figures and leak check.
    fn churn_report(&mut self, mut c: Churn) {
        let what = if c.spawned.is_some() { "spawn" } else { "churn" };
        let spent = time::now_ns().saturating_sub(c.started);
        if c.spawned.is_none() {
            println!(
                "churn: {} cycles in {} ms ({} us each, {} creates/s)",
                c.done,
                spent / 1_000_000,
                spent / 1000 / u64::from(c.done),
                u64::from(c.done) * 1_000_000_000 / spent.max(1)
            );
        }
        if let Some(tm) = c.timed.as_mut() {
            println!(
                "churn: timed: create hypercall median {} ns, destroy to reaped median {} ns ({} cycles)",
                median(&mut tm.create),
                median(&mut tm.destroy),
                tm.create.len()
            );
        }
        let after = domctl::phys_info().unwrap_or_default();
        let (b, a) = (c.before, after);
        let lost_frames = b.free_frames.saturating_sub(a.free_frames);
        let lost_ports = a.ports_in_use.saturating_sub(b.ports_in_use);
        println!(
            "{what}: leak check: frames free {} -> {} ({lost_frames} lost), ports in use {} -> {} ({lost_ports} lost), hypervisor heap {} -> {} B, domains {} -> {}: {}",
            b.free_frames,
            a.free_frames,
            b.ports_in_use,
            a.ports_in_use,
            b.heap_used,
            a.heap_used,
            b.domains,
            a.domains,
            if lost_frames == 0 && lost_ports == 0 && a.domains == b.domains {
                "no leak"
            } else {
                "LEAK"
            }
        );
        if a.heap_used > b.heap_used {
            // dom0's own tables (its grant maptrack, its ports) keep the
            // room they grew to for its store connections.
            println!(
                "{what}: the hypervisor's heap grew {} B: dom0's own tables, kept for reuse",
                a.heap_used - b.heap_used
            );
        }
    }

    /// `shutdown [force]`
    fn shut_down(&mut self, args: &[String]) -> Result<(), String> {
        let force = match args {
            [] => false,
            [f] if f == "force" => true,
            _ => return Err(String::from("usage: shutdown [force]")),
        };
        for (d, r) in self.shutdown(force)? {
            match r {
                Ok(()) => println!("destroyed '{}' (dom{})", d.name(), d.domid),
                Err(e) => println!("shutdown: destroy dom{}: {e}", d.domid),
            }
        }
        println!("shutdown: dom0 ends once every other domain has");
        Ok(())
    }

    /// Ends dom0's service once the other domains have ended; `force`
    /// destroys them first (each with its result). Without it, other
    /// domains still running refuse the shutdown.
    pub fn shutdown(&mut self, force: bool) -> Result<Vec<Destroyed>, Failure> {
        let others: Vec<DomainInfo> =
            domctl::domains().filter(|d| d.domid != 0 && d.flags & dominf::DYING == 0).collect();
        if !others.is_empty() && !force {
            return Err(Failure::Refused(format!(
                "{} other domain(s) still run; destroy them first, or `shutdown force`",
                others.len()
            )));
        }
        self.churn = None;
        self.shutdown = true;
        self.stay = false;
        Ok(others.into_iter().map(|d| (d, domctl::destroy(d.domid))).collect())
    }
}

/// A churn's or spawn's create: the new domain's id.
fn churn_create(name: &str, image: &[u8], mem_kib: u32, cmdline: &str, weight: u32) -> Result<u32, String> {
    heap_room()?;
    Create::new(name, image).mem_kib(mem_kib).cmdline(cmdline).weight(weight).run().map_err(|e| format!("create: {e}"))
}

/// Domain `id`, if it is in the table (alive, or dead and not yet reaped).
fn listed(id: u32) -> Option<DomainInfo> {
    domctl::domain_info(id).ok().filter(|i| i.domid == id)
}

/// Waits (yielding, so the hypervisor's teardown steps run) until domain
/// `id` has left the table.
fn wait_gone(id: u32) -> Result<(), String> {
    let until = time::now_ns() + REAP_WAIT_NS;
    while listed(id).is_some() {
        if time::now_ns() > until {
            return Err(format!("dom{id} not reaped within {} s", REAP_WAIT_NS / 1_000_000_000));
        }
        sched::yield_now();
    }
    Ok(())
}

fn help() {
    for l in [
        "commands:",
        "  list                          the domains: id, name, state, memory, CPU time, weight, warp",
        "  templates                     the images domains are created from (the manifest's [[image]])",
        "  create TEMPLATE [k=v ...]     a new domain: name=N mem=KiB|NM weight=1..10000 warp=US",
        "                                cmdline=\"...\" paused --from DISK (its disk: a copy-on-write",
        "                                overlay of that template disk)",
        "  destroy DOM                   end a domain and reclaim all it holds (DOM: an id or a name)",
        "  pause DOM / unpause DOM       stop or resume scheduling it",
        "  set-weight DOM WEIGHT [WARP]  its BVT weight (and warp in us)",
        "  top [rounds=N] [ms=T]         CPU share and memory per domain every T ms; a line ends it",
        "  info                          frames, hypervisor heap, ports and domains in use",
        "  wait DOM                      until the domain has ended and is reaped (lines typed meanwhile wait)",
        "                                (an id not listed has gone: ids are never reused)",
        "  churn N [TEMPLATE] [mem=KiB] [timed]",
        "                                N create/destroy cycles, then the leak check (timed: the",
        "                                domains print their first line's delay; medians of both)",
        "  spawn N [TEMPLATE] [mem=KiB]  N domains at once, then all destroyed; rates and the leak check",
        "  console DOM                   attach to its console: lines typed go to it, the others'",
        "                                output waits; ~. on a line of its own detaches",
        "  shutdown [force]              end dom0 once the others have ended (force: destroy them)",
        "  help                          this",
    ] {
        println!("{l}");
    }
}

fn list() -> Result<(), String> {
    println!(
        "  {:>4} {:<24} {:<8} {:>8} {:>9} {:>6} {:>7}",
        "id", "name", "state", "mem KiB", "cpu ms", "weight", "warp us"
    );
    for d in domctl::domains() {
        println!(
            "  {:>4} {:<24} {:<8} {:>8} {:>9} {:>6} {:>7}",
            d.domid,
            d.name(),
            state(&d),
            d.nr_pages * 4,
            d.cpu_time_ns / 1_000_000,
            d.weight,
            d.warp_us
        );
    }
    Ok(())
}

/// A domain's state in a word.
pub fn state(d: &DomainInfo) -> &'static str {
    let f = d.flags;
    if f & dominf::DYING != 0 {
        "dying"
    } else if f & dominf::PAUSED != 0 {
        "paused"
    } else if f & dominf::RUNNING != 0 {
        "running"
    } else if f & dominf::BLOCKED != 0 {
        "blocked"
    } else {
        "ready"
    }
}

fn info() -> Result<(), String> {
    let p = domctl::phys_info().map_err(|e| format!("{e}"))?;
    println!(
        "frames: {} free of {}; hypervisor heap: {} B in use; ports in use: {}; domains: {} of {} ({} dying)",
        p.free_frames, p.total_frames, p.heap_used, p.ports_in_use, p.domains, p.max_domains, p.dying
    );
    Ok(())
}

/// The live domain `arg` names: an id, or a name no other live domain has.
pub fn resolve(arg: &str) -> Result<DomainInfo, Failure> {
    find(arg, false)
}

/// As [`resolve`], a dying domain too.
fn resolve_any(arg: &str) -> Result<DomainInfo, Failure> {
    find(arg, true)
}

fn find(arg: &str, dying: bool) -> Result<DomainInfo, Failure> {
    let live: Vec<DomainInfo> = domctl::domains().collect();
    if let Ok(id) = arg.parse::<u32>() {
        return live.into_iter().find(|d| d.domid == id).ok_or_else(|| Failure::Missing(format!("no domain {id}")));
    }
    let mut named = live.into_iter().filter(|d| d.name() == arg && (dying || d.flags & dominf::DYING == 0));
    match (named.next(), named.next()) {
        (Some(d), None) => Ok(d),
        (None, _) => Err(Failure::Missing(format!("no domain called '{arg}' (`list` shows them)"))),
        (Some(a), Some(b)) => {
            Err(Failure::Bad(format!("'{arg}' names dom{} and dom{}: give the id", a.domid, b.domid)))
        }
    }
}

/// Destroys, pauses or unpauses the domain `dom` names; which one.
pub fn act(dom: &str, what: Act) -> Result<DomainInfo, Failure> {
    let d = resolve(dom)?;
    let op = match what {
        Act::Destroy => domctl::destroy,
        Act::Pause => domctl::pause,
        Act::Unpause => domctl::unpause,
    };
    op(d.domid).map_err(|e| match e {
        Errno::EINVAL if d.domid == 0 => Failure::Refused(format!("dom0 is the toolstack's own domain ({e})")),
        e => Failure::Refused(format!("dom{}: {e}", d.domid)),
    })?;
    Ok(d)
}

/// `console DOM`: attaches the shell to the domain's console.
fn console_attach(args: &[String], svc: &mut dyn Services) -> Result<(), String> {
    let [dom] = args else { return Err(String::from("usage: console DOM (an id or a name)")) };
    let d = resolve(dom)?;
    let id = u16::try_from(d.domid).map_err(|_| format!("no domain {}", d.domid))?;
    let name = svc.consoles().attach(id)?;
    println!("console: attached to dom{id} ({name}); other domains' output waits; ~. on a line of its own detaches");
    Ok(())
}

/// `destroy|pause|unpause DOM`
fn on_domain(args: &[String], what: Act) -> Result<(), String> {
    let [dom] = args else { return Err(String::from("usage: destroy|pause|unpause DOM (an id or a name)")) };
    let d = act(dom, what)?;
    println!("{} '{}' (dom{})", what.done(), d.name(), d.domid);
    Ok(())
}

/// Sets the BVT weight (and warp; `None` keeps it) of the domain `dom`
/// names: the domain and the warp it now has.
pub fn set_sched(dom: &str, weight: u32, warp: Option<u32>) -> Result<(DomainInfo, u32), Failure> {
    let d = resolve(dom)?;
    let warp = warp.unwrap_or(d.warp_us);
    domctl::set_sched(d.domid, weight, warp).map_err(|e| match e {
        Errno::EINVAL => {
            Failure::Bad(format!("dom{}: {e} (a weight is 1..=10000, a warp at most 1000000 us)", d.domid))
        }
        e => Failure::Refused(format!("dom{}: {e}", d.domid)),
    })?;
    Ok((d, warp))
}

/// `set-weight DOM WEIGHT [WARP_US]`
fn set_weight(args: &[String]) -> Result<(), String> {
    let usage = "usage: set-weight DOM WEIGHT [WARP_US]";
    let (dom, weight, warp) = match args {
        [d, w] => (d, w, None),
        [d, w, x] => (d, w, Some(x)),
        _ => return Err(String::from(usage)),
    };
    let weight = number(weight, "WEIGHT")?;
    let warp = warp.map(|x| number(x, "WARP_US")).transpose()?;
    let (d, warp) = set_sched(dom, weight, warp)?;
    println!("'{}' (dom{}): weight {weight}, warp {warp} us", d.name(), d.domid);
    Ok(())
}

fn number(v: &str, what: &str) -> Result<u32, String> {
    v.parse().map_err(|_| format!("{what} = '{v}' is not a number"))
}

/// A memory size: KiB, or `NM` for MiB.
fn kib(v: &str) -> Result<u32, String> {
    let (digits, scale) = match v.strip_suffix(['M', 'm']) {
        Some(d) => (d, 1024),
        None => (v.strip_suffix(['K', 'k']).unwrap_or(v), 1),
    };
    digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("mem = '{v}' is not a size (KiB, or NM for MiB)"))
}

/// Splits a command line into words; a `"..."` quotes spaces (also after
/// `key=`), `\"` and `\\` escape.
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut started) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '\\' if quoted => match chars.next() {
                Some(e @ ('"' | '\\')) => cur.push(e),
                Some(e) => {
                    cur.push('\\');
                    cur.push(e);
                }
                None => return Err(String::from("the line ends inside quotes")),
            },
            ' ' | '\t' if !quoted => {
                if started {
                    words.push(core::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if quoted {
        return Err(String::from("a quote is not closed"));
    }
    if started {
        words.push(cur);
    }
    Ok(words)
}
