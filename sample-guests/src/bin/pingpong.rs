//! `pingpong`: request/response traffic over an SDK channel (a
//! `ring-protocol` ring in a granted page plus an event channel), checked
//! end to end.
//!
//! Command line: `role=front peer=<domid>` (plus `requests=<n>`, default
//! 1 000 000) or `role=back peer=<domid>` (plus `batch=<k>`, default 16).
//! - The front offers the channel ([`FrontChannel::offer`]): the ring page
//!   is its first grant, reference 8. Each request carries a sequence
//!   number (`offset`) and a value (`len`) and gets its id from an
//!   [`IdTable`], which remembers both. The front keeps the ring full and
//!   sleeps only when no response is waiting.
//! - The back finds the offered port by trying the front's low ports
//!   ([`BackChannel::connect`] binds the port before it maps anything), then
//!   takes up to `batch` requests at a time and answers each batch in
//!   reverse order, so responses come back out of order. Its answer to a
//!   value `v` is `answer(v)`.
//! - The front checks every response: its id must be in flight (the id
//!   table refuses duplicates and replays), its status 0 and its length
//!   `answer` of the value it sent. It also sums the sequence numbers of the
//!   answered requests, which must come to `n (n - 1) / 2`: every request
//!   answered exactly once. Finally it sends a stop request; the back
//!   answers it and reports.
//!
//! Prints (front, then back):
//! ```text
//! pingpong front: <n> requests answered; bad responses 0; sequence sum ok: true; out of order: <k>; notifications sent <f>; <ns> ns per request
//! pingpong back: answered <n + 1> requests in <b> batches (<r> answered out of order); notifications sent <g>
//! ```
//!
//! Notification hold-off: each side notifies only when the ring says the
//! peer asked for it (it set its event index before sleeping), so both
//! counts stay far below the number of requests; the scenario holds them
//! under one per 16 requests.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use pvguest_sdk::channel::{BackChannel, ChannelError, FrontChannel};
use pvguest_sdk::cmdline::{arg, arg_or};
use pvguest_sdk::event::{self, Port};
use pvguest_sdk::grant::GrantTable;
use pvguest_sdk::ring_protocol::{Completion, Descriptor, IdTable, PushError, RingError};
use pvguest_sdk::{println, sched, time, StartInfo};

pvguest_sdk::entry!(main);

/// An ordinary request: answer `answer(len)`.
const OP_ECHO: u16 = 1;
/// The last request: answer it, report and stop.
const OP_STOP: u16 = 2;
/// The grant reference of the ring page: the front's first grant.
const RING_GREF: u32 = 8;
/// Requests in flight at most (the ring holds more).
const IN_FLIGHT: usize = 64;

fn on_event(_: Port) {}

/// The back's answer to a value (any function the front can check).
fn answer(v: u32) -> u32 {
    v.wrapping_mul(0x9e37_79b9).rotate_left(7) ^ 0x5a5a_a5a5
}

/// The value the front sends with request `seq`.
fn value(seq: u32) -> u32 {
    seq.wrapping_mul(2_654_435_761).wrapping_add(12_345)
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let Some(peer) = arg(cmd, "peer").map(|p| p as u16) else {
        println!("pingpong: no peer= on the command line");
        sched::crash();
    };
    event::init();
    event::enable();
    if cmd.contains("role=back") {
        back(peer, si, arg_or(cmd, "batch", 16).clamp(1, 64) as usize)
    } else {
        front(peer, arg_or(cmd, "requests", 1_000_000).min(u32::MAX as u64 - 1) as u32)
    }
}

/// Reports a broken ring and crashes (the peer broke the protocol, or we
/// did).
fn broken(who: &str, e: RingError) -> ! {
    println!("pingpong {who}: ring broken: {e}");
    sched::crash();
}

/// A push that cannot be refused for room (the caller checked, or answers
/// a request it consumed): any refusal is a broken ring.
fn must_push(who: &str, r: Result<(), PushError>) {
    match r {
        Ok(()) => {}
        Err(PushError::Ring(e)) => broken(who, e),
        Err(PushError::Full) => broken(who, RingError::Protocol),
    }
}

fn front(peer: u16, total: u32) {
    let mut table = GrantTable::setup(1).expect("grant table");
    let mut ch = match FrontChannel::<Descriptor, Completion>::offer(peer, &mut table) {
        Ok(c) => c,
        Err(e) => {
            println!("pingpong front: cannot offer the channel: {e:?}");
            sched::crash();
        }
    };
    ch.on_event(on_event).expect("handler");
    println!("pingpong front: ring granted as reference {} on port {}", ch.gref(), ch.port().0);
    while !ch.connected() {
        sched::yield_now();
    }
    let mut ids: IdTable<(u32, u32), IN_FLIGHT> = IdTable::new();
    let (mut next, mut done, mut bad, mut ooo) = (0u32, 0u32, 0u32, 0u32);
    let mut notified = 0u32;
    let mut seq_sum = 0u64;
    let mut expect_seq = 0u32;
    let mut stop_id = None;
    let t0 = time::now_ns();
    loop {
        // Fill: keep as many requests in flight as the id table allows.
        while next < total && !ids.is_full() && ch.ring.free_requests() > 0 {
            let v = value(next);
            let Ok(id) = ids.insert((next, v)) else { break };
            let req = Descriptor { id, offset: next, len: v, op: OP_ECHO, ..Default::default() };
            must_push("front", ch.ring.try_push(req));
            next += 1;
        }
        if next == total && done == total && stop_id.is_none() {
            let Ok(id) = ids.insert((u32::MAX, 0)) else { unreachable!("the table is empty") };
            let req = Descriptor { id, op: OP_STOP, ..Default::default() };
            must_push("front", ch.ring.try_push(req));
            stop_id = Some(id);
        }
        match ch.ring.push_and_check_notify() {
            Ok(true) => {
                ch.notify().expect("notify");
                notified += 1;
            }
            Ok(false) => {}
            Err(e) => broken("front", e),
        }
        // Drain every response there is.
        let mut got = 0u32;
        loop {
            let rsp = match ch.ring.pop_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => broken("front", e),
            };
            got += 1;
            let (seq, v) = match ids.complete(rsp.id) {
                Ok(entry) => entry,
                Err(e) => {
                    println!("pingpong front: response with an id not in flight: {:#x} ({e:?})", rsp.id);
                    ch.ring.poison(RingError::BadId { id: rsp.id });
                    sched::crash();
                }
            };
            if Some(rsp.id) == stop_id {
                let ns = time::now_ns().saturating_sub(t0) / u64::from(total.max(1));
                let sum_ok = seq_sum == u64::from(total) * u64::from(total).saturating_sub(1) / 2;
                println!(
                    "pingpong front: {done} requests answered; bad responses {bad}; sequence sum ok: {sum_ok}; out of order: {ooo}; notifications sent {notified}; {ns} ns per request"
                );
                return;
            }
            if rsp.status != 0 || rsp.len != answer(v) {
                bad += 1;
            }
            if seq != expect_seq {
                ooo += 1;
            }
            expect_seq = seq.wrapping_add(1);
            seq_sum += u64::from(seq);
            done += 1;
        }
        if got > 0 {
            continue;
        }
        // Nothing to do: sleep until the back answers.
        event::block_until(|| ch.ring.final_check_for_responses().unwrap_or_else(|e| broken("front", e)));
    }
}

fn back(peer: u16, si: &StartInfo, batch: usize) {
    // The ring is mapped just past our own memory.
    let va = si.virt_base + si.nr_pages * 4096;
    let mut ch = 'found: loop {
        for port in 1..16 {
            match BackChannel::<Descriptor, Completion>::connect(peer, RING_GREF, port, va) {
                Ok(c) => break 'found c,
                Err(ChannelError::Event(_)) => {}
                Err(e) => {
                    println!("pingpong back: port {port} bound but the channel failed: {e:?}");
                    sched::crash();
                }
            }
        }
        sched::yield_now();
    };
    ch.on_event(on_event).expect("handler");
    let (mut answered, mut batches, mut reordered, mut notified) = (0u64, 0u64, 0u64, 0u64);
    let mut held = [Descriptor::default(); 64];
    loop {
        let n = match ch.ring.requests_up_to(batch as u32) {
            Ok(reqs) => {
                let mut n = 0;
                for r in reqs {
                    held[n] = r;
                    n += 1;
                }
                n
            }
            Err(e) => broken("back", e),
        };
        if n == 0 {
            event::block_until(|| ch.ring.final_check_for_requests().unwrap_or_else(|e| broken("back", e)));
            continue;
        }
        // Out of order: the newest request of the batch first.
        let mut stop = false;
        for r in held[..n].iter().rev() {
            let rsp = match r.op {
                OP_ECHO => Completion { id: r.id, status: 0, len: answer(r.len) },
                OP_STOP => {
                    stop = true;
                    Completion { id: r.id, status: 0, len: 0 }
                }
                _ => Completion { id: r.id, status: -(pvguest_sdk::Errno::EINVAL as i32), len: 0 },
            };
            must_push("back", ch.ring.try_push(rsp));
        }
        answered += n as u64;
        batches += 1;
        if n > 1 {
            reordered += n as u64;
        }
        match ch.ring.push_and_check_notify() {
            Ok(true) => {
                ch.notify().expect("notify");
                notified += 1;
            }
            Ok(false) => {}
            Err(e) => broken("back", e),
        }
        if stop {
            println!(
                "pingpong back: answered {answered} requests in {batches} batches ({reordered} answered out of order); notifications sent {notified}"
            );
            return;
        }
    }
}
