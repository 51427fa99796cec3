//! `blk-attacker`: hostile ends of the block protocol.
//!
//! `role=front` (a hostile blkfront): it connects to its disk like any
//! front (the store's directories, the handshake), but over a ring it
//! drives by hand, and sends dom0's blkback what a front must not: grant
//! references it never granted, or granted to someone else, or granted
//! read-only for a read; sectors past its disk; too many segments;
//! `first_sect > last_sect`; `last_sect` past the page; an unknown
//! operation; indirect requests with a page never granted, a bad
//! operation, too many segments, or a segment list that is reversed or
//! names a grant never granted (after a good one); then a flood of
//! requests; last, a lie about the ring's
//! producer index. Each request must be answered with `BLKIF_RSP_ERROR`
//! (or `EOPNOTSUPP`), the flood served, and the lie make dom0 drop the
//! connection (its backend state `Closed`); meanwhile the victim domU's
//! disk keeps working.
//!
//! With `persistent`, the hostile front offers persistent grants, so its
//! requests go through blkback's cache of mapped grants instead.
//!
//! `role=back` (a hostile blkback): the store names it as the backend of
//! the victim's disk. It tries to map the victim's store page (granted to
//! dom0 only) and a reference past its table (the hypervisor refuses
//! both), then answers the victim's first request right and its second
//! with an id it never issued. The victim's SDK front must take the first
//! answer, report the lie as a protocol error, and fail every later call
//! at once instead of hanging or misreading; when the hostile backend then
//! ends, nothing waits on it (the other lies, a duplicate, a wrong
//! operation, a status that does not exist, are `split-drivers`' host
//! tests of the same shadow table).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use pvguest_sdk::blkif::{op, Op, Request, Response, Segment, Status, MAX_SEGMENTS};
const OKAY: i16 = Status::OKAY;
const ERROR: i16 = Status::ERROR;
const NOTSUPP: i16 = Status::NOTSUPP;
use pvguest_sdk::check::Checks;
use pvguest_sdk::event::{self, EventChannel, Port};
use pvguest_sdk::grant::{self, GrantError};
use pvguest_sdk::store::Store;
use pvguest_sdk::xenbus_state::State;
use pvguest_sdk::{heap, mm, println, sched, vmap, StartInfo};
use ring_protocol::{Back, Front, SharedMem};

pvguest_sdk::entry!(main);

fn wake(_: Port) {}

fn main(si: &'static StartInfo) {
    heap::init(64).expect("heap");
    let mut c = Checks::new();
    let mut store = Store::open().unwrap_or_else(|e| {
        println!("blk-attacker: no store: {e:?}");
        sched::crash()
    });
    if si.cmdline().split(' ').any(|w| w == "role=back") {
        back(&mut c, &mut store);
    } else {
        front(&mut c, &mut store, si.cmdline().split(' ').any(|w| w == "persistent"));
    }
    c.verdict(si.name());
}

fn num(store: &mut Store, path: &str) -> u64 {
    store.read_u64(path).unwrap_or_else(|e| {
        println!("blk-attacker: {path}: {e:?}");
        sched::crash()
    })
}

/// Waits until `path` reads as `want` (a watch on it).
fn wait_state(store: &mut Store, path: &str, want: &[State]) -> State {
    let _ = store.watch(path, "st");
    loop {
        if let Ok(Ok(s)) = store.read(path).map(|v| State::parse(&v)) {
            if want.contains(&s) {
                let _ = store.unwatch(path, "st");
                return s;
            }
        }
        let _ = store.wait_event();
    }
}

/// Sleeps until responses come. A final check that says "not yet" because
/// a notification is owed (ring-protocol R9) is answered by sending it, so
/// the wait never spins.
fn wait(ring: &mut Front<'_, Request, Response>, chan: &EventChannel) {
    if matches!(ring.push_and_check_notify(), Ok(true)) {
        let _ = chan.send();
    }
    event::clear_pending(chan.port());
    if matches!(ring.final_check_for_responses(), Ok(false)) {
        let _ = pvguest_sdk::sched::poll(&[chan.port().0], 0);
    }
}

fn seg(gref: u32, first: u8, last: u8) -> Segment {
    Segment { gref, first_sect: first, last_sect: last, _pad: 0 }
}

fn front(c: &mut Checks, store: &mut Store, persistent: bool) {
    let who = "blk-attacker";
    let dir = format!("{}/device/vbd/51712", store.home());
    let back: String = store.read_string(&format!("{dir}/backend")).expect("backend path");
    let back_id = num(store, &format!("{dir}/backend-id")) as u16;
    let sectors = num(store, &format!("{back}/sectors"));
    wait_state(store, &format!("{back}/state"), &[State::InitWait]);
    // The ring, by hand: our page, our grant, our port.
    let table = grant::shared().expect("grant table");
    let page = mm::alloc_page().expect("page");
    // SAFETY: the page is ours for the domain's life and used only as
    // this ring (and, at the end, for the one raw index write below).
    let mem = unsafe { SharedMem::new(page.va() as *mut u8, 4096) }.expect("page");
    let mut ring = Front::<Request, Response>::init(mem).expect("ring");
    let gref = table.lock().grant(back_id, page, false).expect("grant").gref();
    let chan = EventChannel::offer(back_id).expect("port");
    chan.on_event(wake).expect("handler");
    store.write(&format!("{dir}/ring-ref"), format!("{gref}").as_bytes()).expect("ring-ref");
    store.write(&format!("{dir}/event-channel"), format!("{}", chan.port().0).as_bytes()).expect("port");
    if persistent {
        // Every attack below then goes through blkback's persistent maps.
        store.write(&format!("{dir}/feature-persistent"), b"1").expect("feature-persistent");
    }
    store.write(&format!("{dir}/state"), b"3").expect("state");
    wait_state(store, &format!("{back}/state"), &[State::Connected]);
    println!("{who}: connected by hand to dom{back_id}'s blkback ({sectors} sectors)");

    // Pages: a data page granted to the backend, one granted read-only,
    // one granted to nobody it knows (domain 0x7000).
    let data = mm::alloc_page().expect("page");
    let ro = mm::alloc_page().expect("page");
    let other = mm::alloc_page().expect("page");
    let (g_data, g_ro, g_other) = {
        let mut t = table.lock();
        let a = t.grant(back_id, data, false).expect("grant").gref();
        let b = t.grant(back_id, ro, true).expect("grant").gref();
        let d = t.grant(0x7000, other, false).expect("grant").gref();
        (a, b, d)
    };
    let mut id = 0u64;
    let mut ask = |ring: &mut Front<'_, Request, Response>, req: Request| -> Option<Response> {
        id += 1;
        let req = Request { id, ..req };
        ring.try_push(req).ok()?;
        if ring.push_and_check_notify().ok()? {
            let _ = chan.send();
        }
        loop {
            match ring.pop_response() {
                Ok(Some(r)) => return Some(r),
                Ok(None) => wait(ring, &chan),
                Err(_) => return None,
            }
        }
    };
    let rw = |operation: u8, sector: u64, segs: &[Segment]| {
        let mut seg_arr = [seg(0, 0, 0); MAX_SEGMENTS];
        seg_arr[..segs.len()].copy_from_slice(segs);
        Request {
            operation,
            nr_segments: segs.len() as u8,
            handle: 0,
            _pad: 0,
            id: 0,
            sector_number: sector,
            seg: seg_arr,
        }
    };
    let ok = ask(&mut ring, rw(op::READ, 0, &[seg(g_data, 0, 7)]));
    c.holds(who, format_args!("a good read is answered OKAY (the ring works)"), ok.is_some_and(|r| r.status == OKAY));
    let attacks: [(&str, Request); 9] = [
        ("a grant reference never granted (4000)", rw(op::READ, 0, &[seg(4000, 0, 7)])),
        ("a grant reference granted to another domain", rw(op::READ, 0, &[seg(g_other, 0, 7)])),
        ("a read into a page granted read-only", rw(op::READ, 0, &[seg(g_ro, 0, 7)])),
        ("a sector past the end of its disk", rw(op::READ, sectors, &[seg(g_data, 0, 0)])),
        ("a range that wraps past 2^64", rw(op::WRITE, u64::MAX - 2, &[seg(g_data, 0, 7)])),
        ("first_sect > last_sect", rw(op::READ, 0, &[seg(g_data, 5, 2)])),
        ("last_sect past the page (8)", rw(op::READ, 0, &[seg(g_data, 0, 8)])),
        ("no segments for a read", rw(op::READ, 0, &[])),
        ("an unknown operation (0x42)", rw(0x42, 0, &[seg(g_data, 0, 7)])),
    ];
    for (what, req) in attacks {
        let got = ask(&mut ring, req).map(|r| r.status);
        c.holds(
            who,
            format_args!("{what}: answered with an error ({got:?})"),
            matches!(got, Some(ERROR) | Some(NOTSUPP)),
        );
    }
    // Twelve segments: the count alone is refused.
    let mut twelve = rw(op::READ, 0, &[seg(g_data, 0, 0)]);
    twelve.nr_segments = 12;
    let got = ask(&mut ring, twelve).map(|r| r.status);
    c.holds(who, format_args!("12 segments: answered with an error ({got:?})"), got == Some(ERROR));
    // Indirect requests: the segment list in a page of ours, granted
    // read-only to the backend, which copies it out once and checks it.
    let list = mm::alloc_page().expect("page");
    let g_list = table.lock().grant(back_id, list, true).expect("grant").gref();
    // SAFETY: the page is ours for the domain's life, used only as this
    // segment list, which the backend may only read.
    let list_mem = unsafe { SharedMem::new(list.va() as *mut u8, 4096) }.expect("page");
    let write_list = |segs: &[Segment]| {
        for (i, s) in segs.iter().enumerate() {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&s.gref.to_le_bytes());
            b[4] = s.first_sect;
            b[5] = s.last_sect;
            let _ = list_mem.write_bytes(i * 8, &b);
        }
    };
    let indirect = |nr: usize, gref: u32| Request::indirect(Op::Read, 0, 0, nr, gref).expect("indirect request");
    write_list(&[seg(g_data, 0, 7), seg(g_data, 0, 7)]);
    let got = ask(&mut ring, indirect(2, g_list)).map(|r| (r.status, r.operation));
    c.holds(
        who,
        format_args!("a good indirect read of 2 segments is answered OKAY, as the read it carried ({got:?})"),
        got == Some((OKAY, op::READ)),
    );
    let mut bad_op = indirect(2, g_list).as_indirect();
    bad_op.indirect_op = 0x42;
    let mut too_many = indirect(2, g_list).as_indirect();
    too_many.nr_segments = 33;
    let indirect_attacks: [(&str, Request, Option<&[Segment]>); 5] = [
        ("an indirect page never granted (4001)", indirect(2, 4001), None),
        ("an indirect request carrying an unknown operation", bad_op.into_request(), None),
        ("an indirect request of 33 segments", too_many.into_request(), None),
        (
            "an indirect list with first_sect > last_sect",
            indirect(2, g_list),
            Some(&[seg(g_data, 0, 7), seg(g_data, 6, 1)]),
        ),
        (
            "an indirect list naming a grant never granted",
            indirect(2, g_list),
            Some(&[seg(g_data, 0, 7), seg(4002, 0, 7)]),
        ),
    ];
    for (what, req, list) in indirect_attacks {
        if let Some(l) = list {
            write_list(l);
        }
        let got = ask(&mut ring, req).map(|r| r.status);
        c.holds(who, format_args!("{what}: answered with an error ({got:?})"), got == Some(ERROR));
    }
    // A flood: 4000 requests, 32 at a time, as fast as it can.
    let mut answered = 0u32;
    for _ in 0..125 {
        for _ in 0..32 {
            id += 1;
            let _ = ring.try_push(Request { id, ..rw(op::READ, 0, &[seg(g_data, 0, 0)]) });
        }
        if matches!(ring.push_and_check_notify(), Ok(true)) {
            let _ = chan.send();
        }
        let mut got = 0;
        while got < 32 {
            match ring.pop_response() {
                Ok(Some(_)) => got += 1,
                Ok(None) => wait(&mut ring, &chan),
                Err(_) => break,
            }
        }
        answered += got;
    }
    c.holds(who, format_args!("a flood of 4000 requests all answered ({answered})"), answered == 4000);
    // Last: the producer index jumps far past the ring.
    // SAFETY: the ring page is ours (above); one volatile write of the
    // request producer index at its header offset 0, the lie under test.
    unsafe { (page.va() as *mut u32).write_volatile(0x7fff_0000) };
    let _ = chan.send();
    let s = wait_state(store, &format!("{back}/state"), &[State::Closing, State::Closed]);
    c.holds(who, format_args!("a producer index past the ring: dom0 drops the connection (backend {s})"), true);
    if c.wrong() == 0 {
        println!("{who}: every hostile request refused, the flood served, the index lie disconnected");
    }
}

/// A hostile backend for the victim's disk.
fn back(c: &mut Checks, store: &mut Store) {
    let who = "blk-attacker";
    let victim = store.directory(&format!("{}/backend/vbd", store.home())).expect("backend dir");
    let victim: u16 = victim.first().and_then(|v| v.parse().ok()).expect("a victim");
    let bd = format!("{}/backend/vbd/{victim}/51712", store.home());
    let fd = store.read_string(&format!("{bd}/frontend")).expect("frontend path");
    for (k, v) in [("sectors", "8192"), ("info", "0"), ("feature-flush-cache", "1"), ("state", "2")] {
        store.write(&format!("{bd}/{k}"), v.as_bytes()).expect("write");
    }
    wait_state(store, &format!("{fd}/state"), &[State::Initialised]);
    let gref = num(store, &format!("{fd}/ring-ref")) as u32;
    let port = num(store, &format!("{fd}/event-channel")) as u32;
    // The pages it was not given: the victim's store page (granted to dom0
    // only) and a reference past its table.
    for (what, g) in [("the victim's store page (granted to dom0 only)", 1u32), ("a reference past its table", 100_000)]
    {
        let va = vmap::alloc(1).expect("slot");
        let r = grant::map(victim, g, va, false);
        let refused = matches!(r, Err(GrantError::Status(_)));
        c.holds(who, format_args!("mapping {what} writable is refused ({:?})", r.as_ref().err()), refused);
        if let Ok(m) = r {
            let _ = m.unmap();
        }
    }
    let va = vmap::alloc(1).expect("slot");
    let chan = EventChannel::connect(victim, port).expect("bind");
    chan.on_event(wake).expect("handler");
    let m = grant::map(victim, gref, va, false).expect("map the ring");
    // SAFETY: the victim's ring page is mapped at `va` for the rest of
    // this domain's life (never unmapped).
    let mem = unsafe { SharedMem::new(va as *mut u8, 4096) }.expect("ring");
    let mut ring = Back::<Request, Response>::attach(mem).expect("attach");
    store.write(&format!("{bd}/state"), b"4").expect("state");
    println!("{who}: serving dom{victim}'s disk, badly");
    // The first request is answered correctly, and then once more (a
    // duplicate); every later one with a lie: an unknown id, the wrong
    // operation, a status that does not exist.
    let mut n = 0u32;
    while n < 4 {
        let Ok(Some(req)) = ring.pop_request() else {
            event::block_until(|| !matches!(ring.final_check_for_requests(), Ok(false)));
            continue;
        };
        let good = Response::to_invalid(&req, Status::Okay);
        let rsp = match n {
            0 => good,
            1 => Response { id: req.id ^ 0xdead_beef, ..good },
            // Not reached: the victim stops at the first lie.
            2 => Response { operation: req.operation ^ 1, ..good },
            _ => Response { status: 77, ..good },
        };
        let _ = ring.try_push(rsp);
        if matches!(ring.push_and_check_notify(), Ok(true)) {
            let _ = chan.send();
        }
        n += 1;
        println!(
            "{who}: answered request {n} {}",
            ["right", "with an unknown id", "with the wrong operation", "with status 77"][n as usize - 1]
        );
        if n == 2 {
            // The victim's SDK now fails every call: nothing more comes.
            break;
        }
    }
    let _ = m;
    c.holds(who, format_args!("answered the victim's first request, then lied about the second's id"), n == 2);
}
