//! `evtchn-ping`: two domains bounce an event back and forth over an
//! interdomain event channel.
//!
//! Command line: `role=back peer=<domid>`, `role=front peer=<domid>` (plus
//! `rounds=<n>`, default 10000) or `role=intruder peer=<domid>`.
//! - The back offers a port to its peer (`EventChannel::offer`), waits
//!   until the front's first event is pending on it before it sets its
//!   handler (a port starts masked, so that event waits and `on_event`
//!   delivers it), and answers every event with one of its own. When the
//!   front has closed its end, the back's end is unbound again: it sees
//!   that, reports and powers off.
//! - The front finds the offered port (without a store, by trying to
//!   connect to the back's low ports: only a port offered to it can be
//!   bound), then sends `rounds` events, waiting for each answer, and
//!   closes its end.
//! - The intruder tries to connect to every low port of `peer` (none was
//!   offered to it) and to send on ports it does not have; each attempt
//!   must be refused.
//!
//! Prints (front, then back):
//! ```text
//! evtchn-ping back: the front's first event waited, pending, for the handler: got 1
//! evtchn-ping front: <rounds> round trips on port <p> (peer port <q>)
//! evtchn-ping back: answered <n> events; peer closed: port <q> is unbound for dom<front>
//! ```
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::cmdline::{arg, arg_or};
use pvguest_sdk::event::{self, EventChannel, Port, PortStatus};
use pvguest_sdk::{println, sched, time, StartInfo};

pvguest_sdk::entry!(main);

/// Events received from the peer.
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

fn main(si: &'static StartInfo) {
    let cmd = si.cmdline();
    let Some(peer) = arg(cmd, "peer").map(|p| p as u16) else {
        println!("evtchn-ping: no peer= on the command line");
        sched::crash();
    };
    event::init();
    event::enable();
    if cmd.contains("role=back") {
        back(peer)
    } else if cmd.contains("role=intruder") {
        intruder(peer)
    } else {
        front(peer, arg_or(cmd, "rounds", 10_000))
    }
}

fn intruder(peer: u16) {
    // Give the back time to offer its port first.
    for _ in 0..20 {
        sched::yield_now();
    }
    let refused =
        (1..64).filter(|&p| matches!(EventChannel::connect(peer, p), Err(pvguest_sdk::Errno::EINVAL))).count();
    let offered = EventChannel::offer(peer).expect("offer");
    let unbound = offered.send();
    let closed = event::status(Port(60)).map(|s| s == PortStatus::Closed);
    println!(
        "evtchn-ping intruder: {refused} of 63 ports of dom{peer} refused (EINVAL); send on an unbound port: {unbound:?}; port 60 closed: {closed:?}"
    );
}

fn back(peer: u16) {
    let chan = EventChannel::offer(peer).expect("offer a port");
    println!("evtchn-ping back: offered port {} to dom{peer}", chan.port().0);
    // Set the handler only after the front's first event has come: a port
    // starts masked, so that event waits, pending, and unmasking it in
    // `on_event` delivers it (the front sends at once after connecting).
    while !event::is_pending(chan.port()) {
        let _ = sched::poll(&[chan.port().0], time::now_ns() + 5_000_000);
    }
    chan.on_event(on_event).expect("handler");
    println!(
        "evtchn-ping back: the front's first event waited, pending, for the handler: got {}",
        GOT.load(Ordering::SeqCst)
    );
    let (mut answered, mut connected) = (0, false);
    loop {
        let n = GOT.load(Ordering::SeqCst);
        if n > answered {
            for _ in answered..n {
                chan.send().expect("answer");
            }
            answered = n;
            continue;
        }
        // A peer that closes its end sends nothing: our end just reverts
        // to unbound. Look every few milliseconds (once it had connected).
        match chan.status() {
            Ok(PortStatus::Connected { .. }) => connected = true,
            Ok(PortStatus::Unbound { remote }) if connected => {
                println!(
                    "evtchn-ping back: answered {answered} events; peer closed: port {} is unbound for dom{remote}",
                    chan.port().0
                );
                return;
            }
            _ => {}
        }
        let _ = sched::poll(&[chan.port().0], time::now_ns() + 5_000_000);
    }
}

fn front(peer: u16, rounds: u64) {
    let chan = EventChannel::connect_first_offered(peer, 1..64);
    chan.on_event(on_event).expect("handler");
    let PortStatus::Connected { port: theirs, .. } = chan.status().expect("status") else {
        println!("evtchn-ping front: not connected after connect");
        sched::crash();
    };
    for i in 0..rounds {
        chan.send().expect("send");
        wait_past(i);
    }
    println!("evtchn-ping front: {rounds} round trips on port {} (peer port {theirs})", chan.port().0);
    chan.close().expect("close");
}
