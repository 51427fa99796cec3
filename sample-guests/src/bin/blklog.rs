//! `blklog`: a domU that keeps an append-only log on its virtual disk,
//! through the SDK's [`BlockDevice`] (discovery in the store, the blkif
//! handshake, then blkback in dom0).
//!
//! The log: sector 0 holds a superblock (`RFLOG001`, the record count and
//! the seed); record `i` is sector `1 + i`, filled with the disk pattern of
//! the seed ([`disk_pattern`], keyed by the byte's offset on the virtual
//! disk, so a record read from the wrong place fails). An append writes the
//! records, flushes, then writes the superblock write-through (FUA): data
//! before the metadata that counts it, so after a crash the log holds at
//! least every record the last acknowledged superblock counts.
//!
//! Command line:
//! - `mode=append records=N seed=S`: checks the disk holds no log (a fresh
//!   slice reads as zeros: it sees no other domain's data), appends `N`
//!   records, reads them back, prints `blklog: appended N records (seed
//!   0x..), flushed` and ends; with `hold`, it then waits for ever instead
//!   (the durability scenario kills the machine on that line).
//! - `mode=verify records=N seed=S`: reads the superblock and every record
//!   back and checks them (after a reboot).
//! - `mode=overlay records=N seed=S template=T`: the disk is a
//!   copy-on-write overlay on a template filled with the pattern of `T`
//!   (keyed by the virtual offset): checks it reads the template, appends
//!   its own log over the first sectors, and checks that the rest still
//!   reads as the template.
//! - `mode=bench mib=M qd=Q rand4k=N reads4k=R rounds=K`: the split-disk
//!   benchmark's domU half: 64 KiB sequential writes (then a flush) and
//!   reads of `M` MiB through the copying calls (`copy_seq_*`, batches of
//!   `Q`), `R` single 4 KiB reads (the path length of one request), then
//!   `K` rounds (1 without `rounds=`) of the zero-copy passes, streamed
//!   with `Q` in flight all the time ([`BlockDevice::start`], [`IoBuf`]s of
//!   the device's pool): sequential writes (then a flush) and reads, and
//!   `N` random 4 KiB reads. With `rounds=`, each round sits beside one of
//!   dom0's native rounds, asked for in the store. Each pass checks what
//!   it read. Lines `blkbench: domu_<what> ... round=r` as dom0's
//!   `blkbench` prints them. The pool needs `Q * 17 + 16` pages (`pool=`).
//! - `mode=batch`: reads and writes through `run` with many requests in
//!   flight (random 4 KiB reads over the disk, checked against what it
//!   wrote).
//! - `mode=stream seed=S`: the streaming calls ([`BlockDevice::start`]):
//!   writes the whole disk in 64 KiB requests, 8 buffers kept in flight,
//!   each filled with the pattern of its place; a flush behind them is
//!   `Busy` until they are answered, a read behind the flush is `Busy`
//!   until it is; reads it all back streamed and checks every byte; 33
//!   single-page reads meet the 32-slot ring's `Busy`; a batch while
//!   streaming is `Busy`; a buffer of scattered pages (one run per page
//!   at the backend's device) writes and reads back its pattern. Needs `pool=` of at least 8 * 16 + 33 + 1 pages.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec;
use pvguest_sdk::blkfront::{BlkError, BlockDevice, Done, Io, IoBuf, StreamOp, SECTOR};
use pvguest_sdk::check::Checks;
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::store::Store;
use pvguest_sdk::{heap, println, sched, StartInfo};

pvguest_sdk::entry!(main);

const MAGIC: &[u8; 8] = b"RFLOG001";

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    heap::init(arg(cmd, "heap").unwrap_or(64)).expect("heap");
    let name = si.name();
    let mut c = Checks::new();
    let mut store = match Store::open() {
        Ok(s) => s,
        Err(e) => {
            println!("blklog: no store: {e:?}");
            sched::crash();
        }
    };
    if cmd.split(' ').any(|w| w == "mode=victim") {
        victim(&mut c, &mut store);
        c.verdict(name);
        return;
    }
    let pool = arg(cmd, "pool").unwrap_or(pvguest_sdk::blkfront::DEFAULT_POOL_PAGES as u64) as usize;
    let mut disk = match BlockDevice::open_with(&mut store, 0, pool) {
        Ok(d) => d,
        Err(e) => {
            println!("blklog: no disk: {e:?}");
            sched::crash();
        }
    };
    let info = disk.info();
    println!(
        "blklog: disk of {} sectors ({} KiB), flush {}, fua {}, discard {}",
        info.sectors,
        info.sectors / 2,
        info.features.flush,
        info.features.fua,
        info.features.discard
    );
    let records = arg(cmd, "records").unwrap_or(64);
    let seed = arg(cmd, "seed").unwrap_or(0x5eed);
    let mode = cmd.split(' ').find_map(|w| w.strip_prefix("mode=")).unwrap_or("append");
    match mode {
        "append" => append(&mut c, &mut disk, records, seed, cmd.split(' ').any(|w| w == "hold")),
        "verify" => verify(&mut c, &mut disk, records, seed),
        "batch" => batch(&mut c, &mut disk, seed),
        "stream" => stream_check(&mut c, &mut disk, seed),
        "bench" => bench(&mut c, &mut disk, &mut store, cmd),
        "overlay" => overlay(&mut c, &mut disk, records, seed, arg(cmd, "template").unwrap_or(0)),
        other => c.holds(name, format_args!("a known mode (got `{other}`)"), false),
    }
    c.verdict(name);
}

fn record(seed: u64, i: u64) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    disk_pattern::fill(&mut s, seed, (1 + i) * SECTOR as u64);
    s
}

fn superblock(records: u64, seed: u64) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    s[..8].copy_from_slice(MAGIC);
    s[8..16].copy_from_slice(&records.to_le_bytes());
    s[16..24].copy_from_slice(&seed.to_le_bytes());
    s
}

fn append(c: &mut Checks, disk: &mut BlockDevice, records: u64, seed: u64, hold: bool) {
    let who = "blklog";
    // A fresh slice: no log, and nothing of anyone else's.
    let mut head = vec![0u8; 64 * SECTOR];
    let fresh = disk.read(0, &mut head).is_ok() && head.iter().all(|&b| b == 0);
    c.holds(who, format_args!("its disk starts empty (64 sectors of zeros: no other domain's data)"), fresh);
    let mut data = vec![0u8; records as usize * SECTOR];
    for (i, s) in data.chunks_mut(SECTOR).enumerate() {
        s.copy_from_slice(&record(seed, i as u64));
    }
    // Data, flush, then the superblock write-through.
    let wrote = disk.write(1, &data).and_then(|()| disk.flush());
    c.holds(who, format_args!("{records} records written and flushed"), wrote.is_ok());
    let sb = disk.write_fua(0, &superblock(records, seed));
    c.holds(who, format_args!("superblock written through (FUA)"), sb.is_ok());
    let mut back = vec![0u8; data.len()];
    let same = disk.read(1, &mut back).is_ok() && back == data;
    c.holds(who, format_args!("the records read back intact"), same);
    if c.wrong() == 0 {
        println!("blklog: appended {records} records (seed {seed:#x}), flushed");
    }
    if hold {
        // Waiting to be killed: the durability scenario cuts power here.
        loop {
            sched::block();
        }
    }
}

fn verify(c: &mut Checks, disk: &mut BlockDevice, records: u64, seed: u64) {
    let who = "blklog";
    let mut sb = [0u8; SECTOR];
    let read = disk.read(0, &mut sb).is_ok();
    c.holds(who, format_args!("superblock read"), read);
    c.holds(who, format_args!("superblock holds {records} records of seed {seed:#x}"), sb == superblock(records, seed));
    let mut data = vec![0u8; records as usize * SECTOR];
    let ok = disk.read(1, &mut data).is_ok();
    let bad = data.chunks(SECTOR).enumerate().filter(|(i, s)| *s != record(seed, *i as u64)).count();
    c.holds(who, format_args!("all {records} records intact after the reboot ({bad} bad)"), ok && bad == 0);
    if c.wrong() == 0 {
        println!("blklog: verified {records} records (seed {seed:#x})");
    }
}

/// Many requests in flight: 64 writes of 4 KiB, then 256 random 4 KiB
/// reads checked, in batches of 32.
fn batch(c: &mut Checks, disk: &mut BlockDevice, seed: u64) {
    let who = "blklog";
    let blocks = (disk.sectors() / 8).min(64);
    let mut bufs = vec![[0u8; 4096]; blocks as usize];
    for (b, buf) in bufs.iter_mut().enumerate() {
        disk_pattern::fill(buf, seed, b as u64 * 4096);
    }
    let mut ios: alloc::vec::Vec<Io<'_>> =
        bufs.iter().enumerate().map(|(b, buf)| Io::Write { sector: b as u64 * 8, buf, fua: false }).collect();
    let wrote = disk.run(&mut ios);
    drop(ios);
    c.holds(who, format_args!("{blocks} writes of 4 KiB in flight together"), wrote.is_ok());
    let mut x = seed | 1;
    let mut bad = 0;
    let mut reads = vec![[0u8; 4096]; 32];
    for _ in 0..8 {
        let mut which = [0u64; 32];
        for w in which.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x % blocks;
        }
        let mut ios: alloc::vec::Vec<Io<'_>> =
            reads.iter_mut().zip(which).map(|(buf, b)| Io::Read { sector: b * 8, buf }).collect();
        if disk.run(&mut ios).is_err() {
            bad += 32;
        }
        drop(ios);
        for (buf, b) in reads.iter().zip(which) {
            if buf != &bufs[b as usize] {
                bad += 1;
            }
        }
    }
    c.holds(who, format_args!("256 random 4 KiB reads, 32 in flight at a time, all intact ({bad} bad)"), bad == 0);
}

fn overlay(c: &mut Checks, disk: &mut BlockDevice, records: u64, seed: u64, template: u64) {
    let who = "blklog";
    let span = (records + 1 + 64).min(disk.sectors());
    let mut before = vec![0u8; span as usize * SECTOR];
    let read = disk.read(0, &mut before).is_ok();
    let bad = disk_pattern::first_mismatch(&before, template, 0);
    c.holds(
        who,
        format_args!("its disk reads as the template ({span} sectors, first mismatch {bad:?})"),
        read && bad.is_none(),
    );
    let mut data = vec![0u8; records as usize * SECTOR];
    for (i, s) in data.chunks_mut(SECTOR).enumerate() {
        s.copy_from_slice(&record(seed, i as u64));
    }
    let wrote =
        disk.write(1, &data).and_then(|()| disk.flush()).and_then(|()| disk.write_fua(0, &superblock(records, seed)));
    c.holds(who, format_args!("{records} records and the superblock written over the template"), wrote.is_ok());
    let mut after = vec![0u8; span as usize * SECTOR];
    let read = disk.read(0, &mut after).is_ok();
    let tail = (records as usize + 1) * SECTOR;
    let own = after[SECTOR..tail] == data[..] && after[..SECTOR] == superblock(records, seed);
    let rest = disk_pattern::first_mismatch(&after[tail..], template, tail as u64).is_none();
    c.holds(
        who,
        format_args!("its writes read back, and the sectors it never wrote still read as the template"),
        read && own && rest,
    );
    if c.wrong() == 0 {
        println!("blklog: overlay holds {records} records (seed {seed:#x}) over template {template:#x}");
    }
}

/// Against a hostile backend: the first read works, the backend's
/// duplicate answer is a protocol error, and every later call fails at
/// once.
fn victim(c: &mut Checks, store: &mut Store) {
    let who = "blklog";
    let mut disk = match BlockDevice::open(store, 0) {
        Ok(d) => d,
        Err(e) => {
            c.holds(who, format_args!("connected to the (hostile) backend ({e:?})"), false);
            return;
        }
    };
    let mut s = [0u8; SECTOR];
    let first = disk.read(0, &mut s);
    c.holds(who, format_args!("the first read is answered ({first:?})"), first.is_ok());
    let second = disk.read(0, &mut s);
    let protocol = Err(pvguest_sdk::blkfront::BlkError::Protocol);
    c.holds(
        who,
        format_args!("an answer with an id never issued is a protocol error ({second:?})"),
        second == protocol,
    );
    let third = disk.flush();
    c.holds(
        who,
        format_args!("later calls fail at once ({third:?})"),
        third == Err(pvguest_sdk::blkfront::BlkError::Protocol),
    );
    if c.wrong() == 0 {
        println!("blklog: the hostile backend's lie was caught; the domain goes on");
    }
}

/// Bytes of one sequential request.
const CHUNK: usize = 64 * 1024;

/// A zero-copy buffer of the bench with its number (what it wrote names
/// the pattern: buffer `k` holds the pattern of seed 2 at `k * CHUNK`) and
/// the tag of the last request that carried it.
struct Lent {
    k: usize,
    buf: IoBuf,
    tag: Option<u64>,
}

/// `count` streamed requests, `write` or read, of the buffers in `free`
/// (at most 256), as many in flight as there are buffers (and the ring
/// allows): request `i` at `sector_of(i)`. Each completion goes to `seen`
/// (the request's number, the buffer's, the buffer) and its buffer back
/// to `free`; the first error ends the pass. Whether `seen` held for
/// every one.
fn stream(
    disk: &mut BlockDevice,
    free: &mut alloc::vec::Vec<Lent>,
    count: u64,
    write: bool,
    mut sector_of: impl FnMut(u64) -> u64,
    mut seen: impl FnMut(u64, usize, &IoBuf) -> bool,
) -> Result<bool, BlkError> {
    let (mut next, mut done, mut ok) = (0u64, 0u64, true);
    while done < count {
        while next < count {
            let Some(l) = free.pop() else { break };
            let sector = sector_of(next);
            let op = if write {
                StreamOp::Write { sector, buf: l.buf, fua: false }
            } else {
                StreamOp::Read { sector, buf: l.buf }
            };
            // The tag carries the request's number and the buffer's.
            match disk.start(op, (next << 8) | l.k as u64) {
                Ok(()) => next += 1,
                Err((e, op)) => {
                    if let Some(buf) = op.into_buf() {
                        free.push(Lent { buf, ..l });
                    }
                    if e == BlkError::Busy {
                        break;
                    }
                    return Err(e);
                }
            }
        }
        disk.kick()?;
        // Everything answered so far; sleep only when nothing was.
        let mut got = disk.next_done()?;
        if got.is_none() {
            got = disk.wait_done()?;
        }
        while let Some(d) = got {
            d.result?;
            let buf = d.buf.ok_or(BlkError::Protocol)?;
            let (i, k) = (d.tag >> 8, (d.tag & 0xff) as usize);
            ok &= seen(i, k, &buf);
            free.push(Lent { k, buf, tag: Some(i) });
            done += 1;
            got = disk.next_done()?;
        }
    }
    Ok(ok)
}

/// Whether the first word of `buf` is what buffer `k` wrote at `page`.
fn first_word_is(buf: &IoBuf, k: usize, page: usize) -> bool {
    let mut w = [0u8; 8];
    buf.read(0, &mut w);
    u64::from_le_bytes(w) == disk_pattern::pattern_word(2, ((k * CHUNK + page * 4096) / 8) as u64)
}

/// The split-disk benchmark's domU half (see the module docs): the copying
/// passes and the single reads once, then `rounds=` rounds of the
/// zero-copy passes (streamed, `qd=` in flight all the time), each round
/// beside a round of dom0's native passes: the domU asks for it in the
/// store (`data/bench-round`) and waits for dom0's `data/bench-native`,
/// native first in even rounds and last in odd ones (so a drift of the
/// host's speed over the run weighs on both paths alike).
fn bench(c: &mut Checks, disk: &mut BlockDevice, store: &mut Store, cmd: &str) {
    use pvguest_sdk::time;
    let who = "blklog";
    let bytes = arg(cmd, "mib").unwrap_or(8) << 20;
    let qd = (arg(cmd, "qd").unwrap_or(32) as usize).clamp(1, 32);
    let rounds = arg(cmd, "rounds");
    let chunks = (bytes / CHUNK as u64) as usize;
    let start = || (time::now_ns(), time::tsc());
    let report = |what: &str, t0: (u64, u64), n: u64, round: u64| {
        println!(
            "blkbench: domu_{what} bytes={n} ns={} tsc={} round={round}",
            time::now_ns() - t0.0,
            time::tsc() - t0.1
        );
    };
    let per = (CHUNK / SECTOR) as u64;
    let mut ok = true;

    // Copying calls: the caller's buffers, copied through the pool, in
    // batches of `qd`.
    let mut bufs = vec![vec![0u8; CHUNK]; qd];
    for (k, b) in bufs.iter_mut().enumerate() {
        disk_pattern::fill_words(b, 1, (k * CHUNK) as u64);
    }
    let t0 = start();
    for first in (0..chunks).step_by(qd) {
        let n = qd.min(chunks - first);
        let mut ios: alloc::vec::Vec<Io<'_>> = bufs[..n]
            .iter()
            .enumerate()
            .map(|(k, b)| Io::Write { sector: (first + k) as u64 * per, buf: b, fua: false })
            .collect();
        ok &= disk.run(&mut ios).is_ok();
    }
    ok &= disk.flush().is_ok();
    report("copy_seq_write", t0, bytes, 0);
    let t0 = start();
    for first in (0..chunks).step_by(qd) {
        let n = qd.min(chunks - first);
        let mut ios: alloc::vec::Vec<Io<'_>> = bufs[..n]
            .iter_mut()
            .enumerate()
            .map(|(k, b)| Io::Read { sector: (first + k) as u64 * per, buf: b })
            .collect();
        ok &= disk.run(&mut ios).is_ok();
    }
    report("copy_seq_read", t0, bytes, 0);
    // What the last batch read is what was written there.
    let last = (chunks - 1) / qd * qd;
    let intact = bufs[..chunks - last].iter().enumerate().all(|(k, b)| {
        let mut want = vec![0u8; CHUNK];
        disk_pattern::fill_words(&mut want, 1, (k * CHUNK) as u64);
        *b == want
    });
    c.holds(who, format_args!("the copying reads return what was written"), intact);
    drop(bufs);

    // Single 4 KiB reads, one at a time: the path length of one request.
    // With `rounds=`, marks in the store around them have dom0 print how
    // long it has run, so the time both domains ran for them is known.
    let reads = arg(cmd, "reads4k").unwrap_or(256);
    let mark_path = alloc::format!("{}/data/bench-mark", store.home());
    let marks = arg(cmd, "rounds").is_some();
    let mark = |store: &mut Store, m: u64| !marks || store.write(&mark_path, alloc::format!("{m}").as_bytes()).is_ok();
    ok &= mark(store, 1);
    let mut one = [0u8; 4096];
    let (mut best, t0, run0) = (u64::MAX, start(), time::virtual_ns());
    let mut read_ok = true;
    for i in 0..reads {
        let t = time::tsc();
        read_ok &= disk.read(i * 8, &mut one).is_ok();
        best = best.min(time::tsc() - t);
    }
    let run = time::virtual_ns() - run0;
    let (ns, tsc) = (time::now_ns() - t0.0, time::tsc() - t0.1);
    ok &= mark(store, 2) & read_ok;
    println!("blkbench: domu_read_4k count={reads} ns={ns} tsc={tsc} min_tsc={best} run_ns={run}");

    // Zero-copy: buffers of the device's pool, which the backend's device
    // reads and writes directly; buffer k holds the pattern of seed 2 at
    // k * CHUNK.
    let mut zbufs: alloc::vec::Vec<Lent> = alloc::vec::Vec::new();
    for k in 0..qd {
        match disk.alloc_buf(CHUNK / 4096) {
            Ok(mut buf) => {
                let mut pattern = vec![0u8; CHUNK];
                disk_pattern::fill_words(&mut pattern, 2, (k * CHUNK) as u64);
                buf.write(0, &pattern);
                zbufs.push(Lent { k, buf, tag: None });
            }
            Err(e) => {
                c.holds(who, format_args!("zero-copy buffer {k} ({e:?}: raise pool=)"), false);
                return;
            }
        }
    }
    let mut pages: alloc::vec::Vec<Lent> =
        (0..qd).filter_map(|k| disk.alloc_buf(1).ok().map(|buf| Lent { k, buf, tag: None })).collect();
    ok &= pages.len() == qd;
    let rand = arg(cmd, "rand4k").unwrap_or(1024);
    let blocks = bytes / 4096;
    // Which buffer wrote each chunk (in the last write pass).
    let mut writer = vec![0usize; chunks];
    let home = store.home();
    let (ask, answer) = (alloc::format!("{home}/data/bench-round"), alloc::format!("{home}/data/bench-native"));
    if rounds.is_some() && store.watch(&answer, "bench").is_err() {
        c.holds(who, format_args!("a watch on {answer}"), false);
        return;
    }
    // A round of dom0's native passes, asked for and waited for.
    let native = |store: &mut Store, r: u64| -> bool {
        if rounds.is_none() || store.write(&ask, alloc::format!("{r}").as_bytes()).is_err() {
            return rounds.is_none();
        }
        loop {
            if store.read_u64(&answer).is_ok_and(|v| v == r) {
                return true;
            }
            if store.wait_event().is_err() {
                return false;
            }
        }
    };
    let (mut streamed_ok, mut intact, mut rand_ok) = (true, true, true);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for r in 0..rounds.unwrap_or(1).max(1) {
        if r % 2 == 0 {
            ok &= native(store, r);
        }
        let t0 = start();
        let w = stream(
            disk,
            &mut zbufs,
            chunks as u64,
            true,
            |i| i * per,
            |tag, k, _| {
                writer[tag as usize] = k;
                true
            },
        );
        ok &= w.is_ok() && disk.flush().is_ok();
        report("seq_write", t0, bytes, r);
        for l in zbufs.iter_mut() {
            l.buf.write(0, &[0u8; 8]);
        }
        let t0 = start();
        // Each chunk's first word checked as it comes (cheap), every
        // byte of the last ones after the pass.
        let rd = stream(
            disk,
            &mut zbufs,
            chunks as u64,
            false,
            |i| i * per,
            |tag, _, buf| first_word_is(buf, writer[tag as usize], 0),
        );
        report("seq_read", t0, bytes, r);
        streamed_ok &= rd.as_ref().is_ok_and(|&good| good);
        intact &= zbufs.iter().all(|l| {
            let Some(tag) = l.tag else { return false };
            let k = writer[tag as usize];
            let mut got = vec![0u8; CHUNK];
            l.buf.read(0, &mut got);
            disk_pattern::first_mismatch(&got, 2, (k * CHUNK) as u64).is_none()
        });
        let mut block_of = alloc::vec::Vec::with_capacity(rand as usize);
        for _ in 0..rand {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block_of.push((x % blocks) as usize);
        }
        // Marks 100 + 2r and 101 + 2r: dom0's run time around the pass.
        ok &= mark(store, 100 + 2 * r);
        let (t0, run0) = (start(), time::virtual_ns());
        let rr = stream(
            disk,
            &mut pages,
            rand,
            false,
            |i| block_of[i as usize] as u64 * 8,
            |tag, _, buf| {
                let b = block_of[tag as usize];
                first_word_is(buf, writer[b / 16], b % 16)
            },
        );
        let (ns, tsc, run) = (time::now_ns() - t0.0, time::tsc() - t0.1, time::virtual_ns() - run0);
        ok &= mark(store, 101 + 2 * r);
        println!("blkbench: domu_randread_4k count={rand} ns={ns} tsc={tsc} run_ns={run} round={r}");
        rand_ok &= rr.as_ref().is_ok_and(|&good| good);
        if r % 2 == 1 {
            ok &= native(store, r);
        }
    }
    c.holds(who, format_args!("the streamed zero-copy reads return what was written (every chunk's first word, every byte of the last {qd})"), streamed_ok && intact);
    c.holds(who, format_args!("the streamed random reads return what was written (first word of each)"), rand_ok);
    println!("blklog: front after the benchmark: {:?}", disk.stats());
    for l in zbufs.drain(..).chain(pages.drain(..)) {
        disk.free_buf(l.buf);
    }
    c.holds(who, format_args!("every benchmark request succeeded ({} MiB per pass, {qd} in flight)", bytes >> 20), ok);
    println!("blkbench: done");
}

/// `mode=stream` (see the module docs).
fn stream_check(c: &mut Checks, disk: &mut BlockDevice, seed: u64) {
    let who = "blklog";
    const BUFS: usize = 8;
    let chunks = disk.sectors() / (CHUNK / SECTOR) as u64;
    let per = (CHUNK / SECTOR) as u64;
    let mut free: alloc::vec::Vec<IoBuf> = (0..BUFS).filter_map(|_| disk.alloc_buf(CHUNK / 4096).ok()).collect();
    c.holds(who, format_args!("{BUFS} zero-copy buffers of 64 KiB"), free.len() == BUFS);
    if free.len() < BUFS {
        return;
    }
    // A buffer of scattered pages (every other one of 16, freed in
    // turn): its pages are not consecutive, so the backend's device gets
    // one run per page (the driver's large chains); it writes another
    // pattern and reads it back (the writes below then cover it).
    let singles: alloc::vec::Vec<IoBuf> = (0..16).filter_map(|_| disk.alloc_buf(1).ok()).collect();
    let mut keep = alloc::vec::Vec::new();
    for (i, b) in singles.into_iter().enumerate() {
        if i % 2 == 0 {
            disk.free_buf(b);
        } else {
            keep.push(b);
        }
    }
    let scattered = disk.alloc_buf(8).ok();
    for b in keep.drain(..) {
        disk.free_buf(b);
    }
    let mut round_trip = false;
    if let Some(mut buf) = scattered {
        let mut want = vec![0u8; 8 * 4096];
        disk_pattern::fill_words(&mut want, seed ^ 0x5ca7, 0);
        buf.write(0, &want);
        let wrote = disk.start(StreamOp::Write { sector: 0, buf, fua: false }, 7).map_err(|(e, _)| e);
        let w = disk.wait_done();
        if let (Ok(()), Ok(Some(Done { buf: Some(mut buf), result: Ok(()), .. }))) = (wrote, w) {
            buf.write(0, &vec![0u8; 8 * 4096]);
            let read = disk.start(StreamOp::Read { sector: 0, buf }, 8).map_err(|(e, _)| e);
            if let (Ok(()), Ok(Some(Done { buf: Some(buf), result: Ok(()), .. }))) = (read, disk.wait_done()) {
                let mut got = vec![0u8; 8 * 4096];
                buf.read(0, &mut got);
                round_trip = got == want;
                disk.free_buf(buf);
            }
        }
    }
    c.holds(who, format_args!("a buffer of 8 scattered pages writes and reads back its pattern"), round_trip);
    let mut data = vec![0u8; CHUNK];
    let (mut next, mut done, mut most, mut failed) = (0u64, 0u64, 0usize, 0u64);
    // Writes, each buffer filled with the pattern of its place first.
    while done < chunks {
        while next < chunks {
            let Some(mut buf) = free.pop() else { break };
            disk_pattern::fill_words(&mut data, seed, next * CHUNK as u64);
            buf.write(0, &data);
            match disk.start(StreamOp::Write { sector: next * per, buf, fua: false }, next) {
                Ok(()) => next += 1,
                Err((e, op)) => {
                    free.extend(op.into_buf());
                    c.holds(who, format_args!("write {next} started ({e:?})"), false);
                    return;
                }
            }
        }
        most = most.max(disk.streaming());
        if free.is_empty() && done == 0 {
            // Every buffer in flight: a flush must wait for them.
            let r = disk.start(StreamOp::Flush, u64::MAX);
            let busy = matches!(r, Err((BlkError::Busy, StreamOp::Flush)));
            c.holds(who, format_args!("a flush started behind {} writes in flight is Busy", disk.streaming()), busy);
            let mut sector = [0u8; SECTOR];
            let batch = disk.read(0, &mut sector);
            c.holds(who, format_args!("a batch while streaming is Busy ({batch:?})"), batch == Err(BlkError::Busy));
        }
        match disk.wait_done() {
            Ok(Some(d)) => {
                failed += u64::from(d.result.is_err());
                free.extend(d.buf);
                done += 1;
            }
            other => {
                c.holds(who, format_args!("a write answered ({other:?})"), false);
                return;
            }
        }
    }
    c.holds(who, format_args!("{chunks} streamed writes of 64 KiB answered OKAY ({failed} failed)"), failed == 0);
    // The flush, now alone; a read behind it waits.
    let flushed = disk.start(StreamOp::Flush, 1 << 40).map_err(|(e, _)| e);
    c.holds(who, format_args!("the flush starts once nothing is in flight ({flushed:?})"), flushed.is_ok());
    let buf = free.pop().expect("every buffer is back");
    let behind = disk.start(StreamOp::Read { sector: 0, buf }, 0);
    let busy = matches!(behind, Err((BlkError::Busy, _)));
    if let Err((_, op)) = behind {
        free.extend(op.into_buf());
    }
    c.holds(who, format_args!("a read started behind the flush is Busy"), busy);
    let f = disk.wait_done();
    let flush_ok = matches!(&f, Ok(Some(d)) if d.tag == 1 << 40 && d.buf.is_none() && d.result.is_ok());
    c.holds(who, format_args!("the flush is answered OKAY, with its tag and no buffer"), flush_ok);
    // Reads, every byte checked as each comes back.
    let (mut next, mut done, mut bad, mut most_r) = (0u64, 0u64, 0u64, 0usize);
    while done < chunks {
        while next < chunks {
            let Some(mut buf) = free.pop() else { break };
            buf.write(0, &[0u8; 8]);
            match disk.start(StreamOp::Read { sector: next * per, buf }, next) {
                Ok(()) => next += 1,
                Err((e, op)) => {
                    free.extend(op.into_buf());
                    c.holds(who, format_args!("read {next} started ({e:?})"), false);
                    return;
                }
            }
        }
        most_r = most_r.max(disk.streaming());
        match disk.wait_done() {
            Ok(Some(d)) => {
                let Some(buf) = d.buf else { return c.holds(who, format_args!("a read's buffer back"), false) };
                buf.read(0, &mut data);
                if d.result.is_err() || disk_pattern::first_mismatch(&data, seed, d.tag * CHUNK as u64).is_some() {
                    bad += 1;
                }
                free.push(buf);
                done += 1;
            }
            other => {
                c.holds(who, format_args!("a read answered ({other:?})"), false);
                return;
            }
        }
    }
    c.holds(
        who,
        format_args!(
            "{chunks} streamed reads, every byte as written ({bad} bad), {} in flight at most",
            most.max(most_r)
        ),
        bad == 0 && most == BUFS && most_r == BUFS,
    );
    for b in free.drain(..) {
        disk.free_buf(b);
    }
    // 33 single pages: the 33rd meets the full ring.
    let mut pages: alloc::vec::Vec<IoBuf> = (0..33).filter_map(|_| disk.alloc_buf(1).ok()).collect();
    c.holds(who, format_args!("33 single pages"), pages.len() == 33);
    let mut started = 0;
    let mut refused = None;
    while let Some(buf) = pages.pop() {
        match disk.start(StreamOp::Read { sector: started * 8, buf }, started) {
            Ok(()) => started += 1,
            Err((e, op)) => {
                pages.extend(op.into_buf());
                refused = Some(e);
                break;
            }
        }
    }
    c.holds(
        who,
        format_args!("{started} single-page reads start, the next is {refused:?}"),
        started == 32 && refused == Some(BlkError::Busy),
    );
    while let Ok(Some(d)) = disk.wait_done() {
        pages.extend(d.buf);
    }
    c.holds(
        who,
        format_args!("every page came back ({} of 33)", pages.len()),
        pages.len() == 33 && disk.streaming() == 0,
    );
    for b in pages.drain(..) {
        disk.free_buf(b);
    }
    if c.wrong() == 0 {
        println!(
            "blklog: streamed {chunks} writes and {chunks} reads of 64 KiB, {BUFS} in flight, every byte as written"
        );
    }
}
