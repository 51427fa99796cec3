//! `grant-attacker`: a hostile grantee (and then granter) beside a victim
//! and a bystander. Every attempt must be refused with its documented
//! status, and the victim and the bystander must finish.
//!
//! Command line: `role=victim peer=<attacker> bystander=<domid>`,
//! `role=attacker peer=<victim> bystander=<domid>` or
//! `role=bystander peer=<victim>`. The victim and the attacker step each
//! other along an event channel the victim offers.
//!
//! 1. The victim grants, from a one-frame table: reference 8 read-only to
//!    the attacker (a page with a pattern), 9 read-write to the bystander,
//!    10 to 14 read-only to the attacker (five more pages), 15 read-write to
//!    the attacker. The bystander maps 9 and reads the victim's greeting.
//! 2. The attacker tries, and prints each status:
//!    - forged references: out of range (5000, `u32::MAX`) and in range
//!      but never granted (100), by map and by copy: `GNTST_bad_gntref` (−3);
//!    - the bystander's reference 9, by map and by copy:
//!      `GNTST_permission_denied` (−8);
//!    - a writable map of read-only reference 8: −8;
//!    - a copy across the page end: `GNTST_bad_copy_arg` (−10);
//!    - a grant table bigger than its quota (5 frames): `GNTST_no_space`
//!      (−13);
//!    - one frame mapped until refused (the per-frame limit, 255), then
//!      references 9 to 14 mapped until the maptrack quota (1024) refuses
//!      one more (−13); all unmapped again;
//!    - binding the victim's and the bystander's ports that were not
//!      offered to it (`EINVAL`), sending on a closed port (`EINVAL`) and
//!      on an unbound one (`ENOTCONN`).
//! 3. It maps 15 writable; the victim's revoke of 15 is refused while the
//!    mapping stands (`EBUSY`); the attacker unmaps, the victim revokes, and
//!    the attacker's map after the revoke is −3.
//!
//! The bystander offers the victim a port at the start (the attacker's
//! binds of it are refused) and stays until the victim has connected to
//! it and gone.
//! 4. An event storm: 200 000 sends at the victim, which counts them as it
//!    goes on.
//! 5. The attacker grants the victim a page of its own with a pattern; the
//!    victim maps it; the attacker crashes. The victim's mapping stays
//!    valid (the frame is freed only after the last unmap): the pattern is
//!    intact, a write reads back, and the unmap succeeds.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::abi::grant::{SetupTable, SETUP_TABLE};
use pvguest_sdk::abi::{hypercall, Errno, DOMID_SELF};
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::event::{self, EventChannel, Port, PortStatus};
use pvguest_sdk::grant::{self, GrantError, GrantTable, Mapping};
use pvguest_sdk::mm::{self, Pte};
use pvguest_sdk::{println, sched, StartInfo};

pvguest_sdk::entry!(main);

static GOT: AtomicU64 = AtomicU64::new(0);

fn on_event(_: Port) {
    GOT.fetch_add(1, Ordering::SeqCst);
}

/// Blocks until more than `seen` events have arrived; returns the count
/// seen by the check that ended the wait.
fn wait_past(seen: u64) -> u64 {
    let mut n = 0;
    event::block_until(|| {
        n = GOT.load(Ordering::SeqCst);
        n > seen
    });
    n
}

fn pattern(i: usize) -> u8 {
    (i * 13 + 5) as u8
}

fn filled() -> [u8; 4096] {
    let mut b = [0u8; 4096];
    for (i, x) in b.iter_mut().enumerate() {
        *x = pattern(i);
    }
    b
}

/// The status of a grant operation: 0, a `GNTST_*`, or 1 for a failed
/// call.
fn st<T>(r: Result<T, GrantError>) -> i16 {
    match r {
        Ok(_) => 0,
        Err(GrantError::Status(s)) => s,
        Err(GrantError::Call(_)) => 1,
    }
}

const GREETING: &[u8] = b"for the bystander only";
/// Holes the attacker makes for its mappings: more than the maptrack quota
/// (1024).
const HOLES: usize = 1050;
/// Sends the attacker makes at the victim in the storm.
const STORM: u64 = 200_000;

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let Some(peer) = arg(cmd, "peer").map(|p| p as u16) else {
        println!("grant-attacker: no peer= on the command line");
        sched::crash();
    };
    let bystander = arg(cmd, "bystander").unwrap_or(0) as u16;
    event::init();
    event::enable();
    if cmd.contains("role=victim") {
        victim(peer, bystander, si)
    } else if cmd.contains("role=attacker") {
        attacker(peer, bystander)
    } else {
        bystander_role(peer, si)
    }
}

/// The first address past this domain's memory (entries exist there, not
/// present).
fn spare_va(si: &StartInfo) -> u64 {
    si.virt_base + si.nr_pages * 4096
}

fn victim(attacker: u16, bystander: u16, si: &StartInfo) {
    let chan = EventChannel::offer(attacker).expect("offer");
    chan.on_event(on_event).expect("handler");
    let mut table = GrantTable::setup(1).expect("grant table");
    let page = |bytes: &[u8]| {
        let p = mm::alloc_page().expect("page");
        mm::page_write(p, 0, bytes);
        p
    };
    let g8 = table.grant(attacker, page(&filled()), true).expect("grant 8");
    let g9 = table.grant(bystander, page(GREETING), false).expect("grant 9");
    let more: [_; 5] = core::array::from_fn(|_| table.grant(attacker, page(b"quota"), true).expect("grant 10-14"));
    let g15 = table.grant(attacker, page(b"revocable"), false).expect("grant 15");
    println!(
        "grant-attacker victim: granted {} {} {}..{} {}",
        g8.gref(),
        g9.gref(),
        more[0].gref(),
        more[4].gref(),
        g15.gref()
    );
    while !matches!(chan.status(), Ok(PortStatus::Connected { .. })) {
        sched::yield_now();
    }
    chan.send().expect("send");
    // Step 3: the attacker has mapped 15.
    let seen = wait_past(0);
    let busy = table.revoke(g15);
    let g15 = match busy {
        Ok(()) => {
            println!("grant-attacker victim: revoked a grant while it was mapped");
            sched::crash();
        }
        Err((g, e)) => {
            println!("grant-attacker victim: revoke while mapped: {e:?}");
            g
        }
    };
    chan.send().expect("send");
    let seen = wait_past(seen);
    println!("grant-attacker victim: revoke after the unmap: {:?}", table.revoke(g15).map_err(|(_, e)| e));
    chan.send().expect("send");
    // Step 4 and 5: the storm, then the attacker's grant (reference 8 of
    // its table) and its crash. Whatever the storm sends, we go on: map its
    // grant once it is offered.
    let va = spare_va(si);
    let mut tries = 0u32;
    let m = loop {
        match grant::map(attacker, 8, va, false) {
            Ok(m) => break m,
            Err(_) if tries < 1_000_000 => {
                tries += 1;
                sched::yield_now();
            }
            Err(e) => {
                println!("grant-attacker victim: the attacker's grant never came: {e:?}");
                sched::crash();
            }
        }
    };
    let storm = GOT.load(Ordering::SeqCst) - seen;
    chan.send().expect("send");
    // The attacker crashes now; its end of our channel reverts to unbound.
    while matches!(chan.status(), Ok(PortStatus::Connected { .. })) {
        sched::yield_now();
    }
    let mut got = [0u8; 4096];
    m.read(0, &mut got);
    let intact = got == filled();
    m.write(0, b"still mine");
    let mut back = [0u8; 10];
    m.read(0, &mut back);
    println!(
        "grant-attacker victim: storm events seen: {}; after the granter died: pattern intact: {intact}; write read back: {}; unmap: {:?}",
        if storm > 0 { "some" } else { "none" },
        &back == b"still mine",
        m.unmap().map_err(|(_, e)| e)
    );
    // Reference 8 and the quota grants are still ours; the bystander's 9
    // was unmapped by it.
    let freed = [table.revoke(g8).is_ok(), table.revoke(g9).is_ok()];
    // Tell the bystander we are done: connect to the port it offered us
    // (our exit then unbinds it).
    let _bye = EventChannel::connect_first_offered(bystander, 1..16);
    println!("grant-attacker victim: finished; revoked 8 and 9: {freed:?}");
}

fn bystander_role(victim: u16, si: &StartInfo) {
    // A port offered to the victim (not to the attacker, which tries to
    // bind it); we stay until the victim has connected and gone.
    let chan = EventChannel::offer(victim).expect("offer");
    let va = spare_va(si);
    let mut tries = 0u32;
    let m = loop {
        match grant::map(victim, 9, va, false) {
            Ok(m) => break m,
            Err(_) if tries < 100_000 => {
                tries += 1;
                sched::yield_now();
            }
            Err(e) => {
                println!("grant-attacker bystander: cannot map reference 9: {e:?}");
                sched::crash();
            }
        }
    };
    let mut got = [0u8; GREETING.len()];
    m.read(0, &mut got);
    println!(
        "grant-attacker bystander: reference 9 says {:?}; unmap: {:?}",
        core::str::from_utf8(&got).unwrap_or("?"),
        m.unmap().map_err(|(_, e)| e)
    );
    let mut connected = false;
    loop {
        match chan.status() {
            Ok(PortStatus::Connected { .. }) => connected = true,
            Ok(PortStatus::Unbound { .. }) if connected => break,
            _ => {}
        }
        sched::yield_now();
    }
    println!("grant-attacker bystander: the victim has gone; finished");
}

/// `GNTTABOP_setup_table` for `nr_frames` frames, past the SDK (which never
/// asks for more than its own limit).
fn raw_setup(nr_frames: u32) -> i16 {
    let mut frames = [0u64; 8];
    let mut s = SetupTable {
        dom: DOMID_SELF as u16,
        nr_frames,
        frame_list: frames.as_mut_ptr() as u64,
        ..SetupTable::default()
    };
    // SAFETY: `s` and `frames` are live locals; the hypervisor writes only
    // `s.status` and at most `nr_frames` entries of `frames` (here it
    // refuses before writing any: 5 is beyond the quota, and 8 entries are
    // there anyway).
    let r = unsafe {
        pvguest_sdk::hypercall::raw(hypercall::GRANT_TABLE_OP, [SETUP_TABLE, &mut s as *mut _ as u64, 1, 0, 0])
    };
    if r < 0 {
        1
    } else {
        s.status
    }
}

fn attacker(victim: u16, bystander: u16) {
    let chan = EventChannel::connect_first_offered(victim, 1..16);
    chan.on_event(on_event).expect("handler");
    let seen = wait_past(0);
    let mine = mm::alloc_page().expect("page");
    // A hole in our linear map to map grants at (past our memory there is
    // no page table: our memory fills its tables).
    let va = mm::alloc_page().expect("page").va();
    mm::update_va_mapping(va, Pte(0)).expect("make a hole");
    // Forged, out-of-range and never-granted references.
    let forged = [
        st(grant::map(victim, 5000, va, true)),
        st(grant::map(victim, u32::MAX, va, true)),
        st(grant::map(victim, 100, va, true)),
        st(grant::copy_from_grant(victim, 5000, 0, mine, 0, 8)),
        st(grant::copy_from_grant(victim, 100, 0, mine, 0, 8)),
    ];
    // Another domain's reference.
    let others = [st(grant::map(victim, 9, va, true)), st(grant::copy_from_grant(victim, 9, 0, mine, 0, 8))];
    let writable_ro = st(grant::map(victim, 8, va, false));
    let across = st(grant::copy_from_grant(victim, 8, 4000, mine, 0, 200));
    println!("grant-attacker attacker: forged refs {forged:?}; another domain's ref {others:?}; writable map of a read-only grant {writable_ro}; copy across the page end {across}");
    println!("grant-attacker attacker: grant table beyond the quota: {}", raw_setup(5));
    quotas(victim);
    ports(victim, bystander, &chan);
    // Step 3: map 15, let the victim try to revoke it, unmap.
    let m15 = grant::map(victim, 15, va, false).expect("map 15");
    chan.send().expect("send");
    let seen = wait_past(seen);
    let unmapped = m15.unmap().map_err(|(_, e)| e);
    chan.send().expect("send");
    let seen = wait_past(seen);
    let after = st(grant::map(victim, 15, va, false));
    println!("grant-attacker attacker: unmap of 15: {unmapped:?}; map after the revoke: {after}");
    // Step 4: the storm.
    let mut refused = 0u64;
    for _ in 0..STORM {
        refused += u64::from(chan.send().is_err());
    }
    println!("grant-attacker attacker: storm of {STORM} sends done ({refused} refused)");
    // Step 5: grant the victim a page of ours, wait for its map, crash.
    let mut table = GrantTable::setup(1).expect("grant table");
    let page = mm::alloc_page().expect("page");
    mm::page_write(page, 0, &filled());
    let g = table.grant(victim, page, false).expect("grant");
    let _ = wait_past(seen);
    println!("grant-attacker attacker: reference {} mapped by the victim: {}; crashing", g.gref(), table.in_use(&g));
    sched::crash();
}

/// Exhausts the per-frame mapping limit and the maptrack quota, then
/// unmaps everything. Holes for the mappings: pages of our own memory,
/// taken out of our linear map.
fn quotas(victim: u16) {
    let base = mm::alloc_pages(HOLES as u64).expect("pages for the holes");
    for i in 0..HOLES as u64 {
        mm::update_va_mapping(base.va() + i * 4096, Pte(0)).expect("make a hole");
    }
    // The SDK heap holds the handles (16 pages: 1 050 mappings of 24 bytes).
    pvguest_sdk::heap::init(16).expect("heap");
    let mut maps: Vec<Mapping> = Vec::with_capacity(HOLES);
    // References 10 to 14 (five frames) in turn, each until refused: the
    // first refusal of each is the per-frame limit, until one comes before
    // that limit: the maptrack quota.
    let (mut per_frame, mut frame_refusal, mut maptrack_refusal) = (0, 0, 0);
    'all: for gref in 10..=14 {
        let mut n = 0;
        loop {
            if maps.len() == HOLES {
                break 'all;
            }
            match grant::map(victim, gref, base.va() + maps.len() as u64 * 4096, true) {
                Ok(m) => {
                    maps.push(m);
                    n += 1;
                }
                Err(e) => {
                    if gref == 10 {
                        (per_frame, frame_refusal) = (n, st::<()>(Err(e)));
                    }
                    if n < per_frame {
                        maptrack_refusal = st::<()>(Err(e));
                        break 'all;
                    }
                    break;
                }
            }
        }
    }
    let total = maps.len();
    let mut unmap_failures = 0;
    while let Some(m) = maps.pop() {
        unmap_failures += usize::from(m.unmap().is_err());
    }
    println!(
        "grant-attacker attacker: one frame mapped {per_frame} times, then refused {frame_refusal}; {total} mappings in all, then refused {maptrack_refusal}; {unmap_failures} unmaps failed"
    );
}

fn ports(victim: u16, bystander: u16, chan: &EventChannel) {
    let mine = chan.port().0;
    let victims = (1..64).filter(|&p| matches!(EventChannel::connect(victim, p), Err(Errno::EINVAL))).count();
    let bystanders = (1..64).filter(|&p| matches!(EventChannel::connect(bystander, p), Err(Errno::EINVAL))).count();
    let spare = EventChannel::offer(victim).expect("offer");
    let unbound = spare.send();
    let closed_port = spare.port();
    spare.close().expect("close");
    let closed = event::send(closed_port);
    println!(
        "grant-attacker attacker: {victims} of 63 victim ports and {bystanders} of 63 bystander ports refused; send on an unbound port: {unbound:?}; on a closed port: {closed:?} (our channel is port {mine})"
    );
}
