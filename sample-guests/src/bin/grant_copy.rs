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
//!
//! With `mode=map` the peer maps the grants instead (`role=granter` grants
//! reference 8 read-write and 9 read-only; `role=mapper`):
//! 1. the mapper maps 8 writable after its own memory and writes a greeting
//!    into it, is refused a writable map of 9 (read-only grant), maps 9
//!    read-only, and cannot change the mapping with `update_va_mapping`;
//! 2. the granter reads the greeting in its page, and its revoke of 8 is
//!    refused while the mapping stands;
//! 3. the mapper unmaps both; the granter's revoke of 8 now succeeds.
//!
//! With `crash` as well, the mapper crashes instead of unmapping (once the
//! granter's revoke has been refused, which the granter tells it); the
//! granter sees the grant come free (the hypervisor tears a dead domain's
//! mappings down) and revokes it.
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

/// Blocks until more than `seen` events have arrived.
fn wait_past(seen: u64) {
    event::block_until(|| GOT.load(Ordering::SeqCst) > seen);
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
    let map_mode = cmd.contains("mode=map");
    match (cmd.contains("role=granter"), map_mode) {
        (true, false) => granter(peer),
        (true, true) => map_granter(peer, cmd.contains("crash")),
        (false, false) => reader(peer),
        (false, true) => mapper(peer, si, cmd.contains("crash")),
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
    let chan = EventChannel::connect_first_offered(peer, 1..16);
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

const GREETING: &[u8] = b"hello through a grant mapping";

fn map_granter(peer: u16, crash: bool) {
    let chan = EventChannel::offer(peer).expect("offer");
    chan.on_event(on_event).expect("handler");
    while !matches!(chan.status(), Ok(PortStatus::Connected { .. })) {
        sched::yield_now();
    }
    let mut table = GrantTable::setup(1).expect("grant table");
    let (rw, ro) = (mm::alloc_page().expect("page"), mm::alloc_page().expect("page"));
    mm::page_write(ro, 0, b"read-only page");
    let g8 = table.grant(peer, rw, false).expect("grant");
    let g9 = table.grant(peer, ro, true).expect("grant");
    chan.send().expect("send");
    wait_past(0);
    let mut got = [0u8; GREETING.len()];
    mm::page_read(rw, 0, &mut got);
    let (in_use, refused) = (table.in_use(&g8), table.revoke(g8));
    let g8 = match refused {
        Ok(()) => {
            println!("grant-map granter: revoked a grant in use");
            sched::crash();
        }
        Err((g, e)) => {
            println!(
                "grant-map granter: greeting seen: {}; in use while mapped: {in_use}; revoke while mapped: {e:?}",
                &got[..] == GREETING
            );
            g
        }
    };
    if crash {
        // Tell the mapper to crash now (not before: its mappings go with
        // its teardown, and the revoke above had to see them).
        chan.send().expect("send");
        let mut yields = 0u32;
        while table.in_use(&g8) && yields < 100_000 {
            sched::yield_now();
            yields += 1;
        }
        println!(
            "grant-map granter: after the mapper crashed: in use: {}; revoke: {:?}",
            table.in_use(&g8),
            table.revoke(g8).map_err(|(_, e)| e)
        );
        return;
    }
    chan.send().expect("send");
    wait_past(1);
    println!(
        "grant-map granter: after the unmap: in use: {}; revoke: {:?}",
        table.in_use(&g8),
        table.revoke(g8).map_err(|(_, e)| e)
    );
    let _ = table.revoke(g9);
}

fn mapper(peer: u16, si: &StartInfo, crash: bool) {
    let chan = EventChannel::connect_first_offered(peer, 1..16);
    chan.on_event(on_event).expect("handler");
    wait_past(0);
    let va = si.virt_base + si.nr_pages * 4096;
    let rw = grant::map(peer, 8, va, false).expect("map the writable grant");
    rw.write(0, GREETING);
    let denied = grant::map(peer, 9, va + 4096, false).err();
    let ro = grant::map(peer, 9, va + 4096, true).expect("map the read-only grant");
    let mut first = [0u8; 14];
    ro.read(0, &mut first);
    let remap = mm::update_va_mapping(va, mm::Pte(0)).err();
    println!("grant-map mapper: mapped at {:#x} (frame {:#x})", rw.va(), rw.machine_addr() >> 12);
    println!(
        "grant-map mapper: writable map of a read-only grant: {denied:?}; read-only page says {:?}; update_va_mapping over the mapping: {remap:?}",
        core::str::from_utf8(&first).unwrap_or("?")
    );
    chan.send().expect("send");
    wait_past(1);
    if crash {
        println!("grant-map mapper: crashing with both grants mapped");
        sched::crash();
    }
    let (a, b) = (rw.unmap().map_err(|(_, e)| e), ro.unmap().map_err(|(_, e)| e));
    println!("grant-map mapper: unmapped: {a:?} {b:?}");
    chan.send().expect("send");
}
