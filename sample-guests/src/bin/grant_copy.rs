//! `grant-copy`: one domain grants a page read-only to another, which
//! copies it out through the grant; then the grant is revoked.
//!
//! Command line: `role=granter peer=<domid>` or `role=reader peer=<domid>`.
//! The two step each other along an interdomain event channel (the granter
//! offers it):
//! 1. the granter sets up its grant table, fills a page with a pattern and
//!    grants it read-only to the reader (reference 8, the first one the SDK
//!    hands out), then sends;
//! 2. the reader copies the page through the grant and checks every byte,
//!    then tries what must be refused (writing through the read-only grant,
//!    a reference never granted, a copy across the page end, a domain that
//!    does not exist, a destination frame that is not its own), and sends;
//! 3. the granter checks the grant is not in use and revokes it, and sends;
//! 4. the reader's copy through the revoked reference must fail.
//!
//! Prints (reader): `grant-copy reader: copied 4096 bytes intact: true;
//! refused: <statuses>; after revoke: <status>`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::event::{self, EventChannel, Port, PortStatus};
use pvguest_sdk::grant::{self, GrantError, GrantTable};
use pvguest_sdk::{mm, println, sched, StartInfo};

pvguest_sdk::entry!(main);

static GOT: AtomicU64 = AtomicU64::new(0);

fn on_event(_: Port) {
    GOT.fetch_add(1, Ordering::SeqCst);
}

/// Blocks until more than `seen` events have arrived (see `evtchn-ping`).
fn wait_past(seen: u64) {
    loop {
        event::disable();
        if GOT.load(Ordering::SeqCst) > seen {
            event::enable();
            return;
        }
        event::block();
    }
}

fn pattern(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let Some(peer) = arg(cmd, "peer").map(|p| p as u16) else {
        println!("grant-copy: no peer= on the command line");
        sched::crash();
    };
    event::init();
    event::enable();
    if cmd.contains("role=granter") {
        granter(peer);
    } else {
        reader(peer);
    }
}

fn granter(peer: u16) {
    let chan = EventChannel::offer(peer).expect("offer");
    chan.on_event(on_event).expect("handler");
    while !matches!(chan.status(), Ok(PortStatus::Connected { .. })) {
        sched::yield_now();
    }
    let mut table = GrantTable::setup(1).expect("grant table");
    let page = mm::alloc_page().expect("page");
    let mut bytes = [0u8; 4096];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = pattern(i);
    }
    mm::page_write(page, 0, &bytes);
    let g = table.grant(peer, page, true).expect("grant");
    println!("grant-copy granter: page granted read-only to dom{peer} as reference {}", g.gref());
    chan.send().expect("send");
    wait_past(0);
    let busy = table.in_use(&g);
    let revoked = table.revoke(g).map_err(|(_, e)| e);
    println!("grant-copy granter: in use after the copies: {busy}; revoke: {revoked:?}");
    chan.send().expect("send");
    wait_past(1);
}

fn reader(peer: u16) {
    let chan = loop {
        if let Some(c) = (1..16).find_map(|p| EventChannel::connect(peer, p).ok()) {
            break c;
        }
        sched::yield_now();
    };
    chan.on_event(on_event).expect("handler");
    wait_past(0);
    let mine = mm::alloc_page().expect("page");
    let copied = grant::copy_from_grant(peer, 8, 0, mine, 0, 4096);
    let mut got = [0u8; 4096];
    mm::page_read(mine, 0, &mut got);
    let intact = copied.is_ok() && got.iter().enumerate().all(|(i, &b)| b == pattern(i));
    let status = |r: Result<(), GrantError>| match r {
        Ok(()) => 0,
        Err(GrantError::Status(s)) => s,
        Err(GrantError::Call(_)) => 1,
    };
    let refused = [
        status(grant::copy_to_grant(mine, 0, peer, 8, 0, 16)),
        status(grant::copy_from_grant(peer, 9, 0, mine, 0, 16)),
        status(grant::copy_from_grant(peer, 8, 4000, mine, 0, 200)),
        status(grant::copy_from_grant(77, 8, 0, mine, 0, 16)),
        status(grant::copy_from_grant(peer, 8, 0, mm::Page { pfn: 0, mfn: 0x100 }, 0, 16)),
    ];
    chan.send().expect("send");
    wait_past(1);
    let after = status(grant::copy_from_grant(peer, 8, 0, mine, 0, 16));
    println!("grant-copy reader: copied 4096 bytes intact: {intact}; refused: {refused:?}; after revoke: {after}");
    chan.send().expect("send");
}
