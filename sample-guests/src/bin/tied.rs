//! `tied`: two domains bound by grants both ways and an event channel, so
//! that destroying one shows what its peer sees (the
//! `toolstack-destroy-busy` scenario).
//!
//! - `role=peer victim=V`: grants a page to V (reference 8, byte 0 set to
//!   `0xAA`) and offers V a port; once V has connected, maps V's page
//!   (V's reference 8) and reads it. Then it waits for V to go: its page's
//!   byte 0 cleared and an event on its port (the unmap notification V
//!   asked for), and its port unbound again (V's end closed). It reads V's
//!   page once more through its own mapping (the frame stays until the
//!   mapping goes), unmaps it, revokes its grant (nobody maps it any more)
//!   and powers off.
//! - `role=victim peer=P`: grants P a page with a pattern (reference 8),
//!   connects to P's port, maps P's page with an unmap notification
//!   (clear byte 0, send an event on the channel), and waits until it is
//!   destroyed.
//!
//! Both learn the other's id from the command line: the toolstack creates
//! the victim first, and ids are handed out in order.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, Ordering};
use pvguest_sdk::cmdline::arg;
use pvguest_sdk::event::{self, EventChannel, PortStatus};
use pvguest_sdk::grant::{self, GrantTable};
use pvguest_sdk::{mm, println, sched, time, StartInfo};

pvguest_sdk::entry!(main);

/// What the victim's page holds.
const PATTERN: &[u8] = b"the victim's page, mapped by its peer";
/// Events on the peer's port.
static EVENTS: AtomicU32 = AtomicU32::new(0);
/// How long the peer waits for each step.
const WAIT_NS: u64 = 30_000_000_000;

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let va = si.virt_base + si.nr_pages * 4096;
    match (cmd.split(' ').find(|w| w.starts_with("role=")), arg(cmd, "peer"), arg(cmd, "victim")) {
        (Some("role=victim"), Some(peer), _) => victim(peer as u16, va),
        (Some("role=peer"), _, Some(victim)) => peer(victim as u16, va),
        _ => {
            println!("tied: usage: role=victim peer=ID | role=peer victim=ID (got '{cmd}')");
            sched::crash();
        }
    }
}

fn victim(peer: u16, va: u64) {
    let mut table = GrantTable::setup(1).expect("grant table");
    let page = mm::alloc_page().expect("page");
    mm::page_write(page, 0, PATTERN);
    let gref = table.grant(peer, page, false).expect("grant").gref();
    let chan = EventChannel::connect_first_offered(peer, 1..64);
    let m = loop {
        match grant::map(peer, 8, va, false) {
            Ok(m) => break m,
            Err(_) => sched::yield_now(),
        }
    };
    m.set_unmap_notify(Some(0), Some(chan.port())).expect("unmap notification");
    println!(
        "victim: tied to dom{peer}: granted our page (ref {gref}), port {} connected, its page mapped with an unmap notification",
        chan.port().0
    );
    // No handler is bound: it sleeps until the toolstack destroys it.
    loop {
        sched::block();
    }
}

fn peer(victim: u16, va: u64) {
    let mut table = GrantTable::setup(1).expect("grant table");
    let page = mm::alloc_page().expect("page");
    mm::page_write(page, 0, &[0xAA]);
    let g = table.grant(victim, page, false).expect("grant");
    let chan = EventChannel::offer(victim).expect("offer a port");
    let port = chan.port();
    chan.on_event(|_| {
        EVENTS.fetch_add(1, Ordering::SeqCst);
    })
    .expect("handler");
    event::unmask(port).expect("unmask");
    event::enable();
    wait("the victim's connection", || matches!(event::status(port), Ok(PortStatus::Connected { .. })));
    let mut m = None;
    wait("the victim's grant", || {
        m = grant::map(victim, 8, va, true).ok();
        m.is_some()
    });
    let m = m.expect("mapped");
    let mut got = [0u8; PATTERN.len()];
    m.read(0, &mut got);
    let shows = core::str::from_utf8(&got).unwrap_or("?");
    println!("peer: tied to dom{victim}: port {} connected, mapped its page (ref 8): \"{shows}\"", port.0);
    println!("peer: waiting for dom{victim} to go");
    let byte = || {
        let mut b = [0u8];
        mm::page_read(page, 0, &mut b);
        b[0]
    };
    wait("the unmap notification", || byte() == 0 && EVENTS.load(Ordering::SeqCst) > 0);
    println!(
        "peer: dom{victim}'s mapping of our page went away: byte 0 cleared, {} event(s) on port {}",
        EVENTS.load(Ordering::SeqCst),
        port.0
    );
    wait("the closed port", || matches!(event::status(port), Ok(PortStatus::Unbound { .. })));
    println!("peer: port {} is unbound again: dom{victim}'s end is closed", port.0);
    m.read(0, &mut got);
    println!("peer: dom{victim}'s page, read after its end through our mapping: intact {}", got == PATTERN);
    if m.unmap().is_err() {
        println!("peer: unmapping dom{victim}'s page failed");
        sched::crash();
    }
    match table.revoke(g) {
        Ok(()) => println!("peer: unmapped dom{victim}'s page and revoked our grant: done"),
        Err(_) => {
            println!("peer: our grant is still mapped after dom{victim}'s end");
            sched::crash();
        }
    }
}

/// Yields until `done`, or crashes after [`WAIT_NS`] naming `what`.
fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let until = time::now_ns() + WAIT_NS;
    while !done() {
        if time::now_ns() > until {
            println!("peer: no {what} within {} s", WAIT_NS / 1_000_000_000);
            sched::crash();
        }
        sched::yield_now();
    }
}
