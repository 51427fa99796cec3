//! A Ringfence domU made by `cargo xtask new-guest`: the console, a timer,
//! a virtual disk and a virtual NIC, one function each. Every check prints
//! one line (`what: ok` or `what: WRONG`); the verdict at the end crashes
//! the domain if any went wrong. README.md says how to build and boot it.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use pvguest_sdk::abi::event::VIRQ_TIMER;
use pvguest_sdk::blkfront::{BlockDevice, SECTOR};
use pvguest_sdk::check::Checks;
use pvguest_sdk::store::Store;
use pvguest_sdk::tcpip::smoltcp::phy::ChecksumCapabilities;
use pvguest_sdk::tcpip::smoltcp::wire::{Icmpv4Packet, Icmpv4Repr};
use pvguest_sdk::tcpip::{icmp, Addressing, Interface, IpAddress};
use pvguest_sdk::{event, heap, println, time, timer, StartInfo};

pvguest_sdk::entry!(main);

const MS: u64 = 1_000_000;

fn main(si: &'static StartInfo) {
    // The console: each line is tagged with this domain's name.
    println!("console: hello from {} (domain {}), cmdline '{}'", si.name(), si.domid, si.cmdline());
    heap::init(128).expect("a heap of 128 pages");
    let mut c = Checks::new();
    alarm(&mut c);
    // The store is where dom0 offers this domain its devices.
    let mut store = Store::open().expect("the device store");
    disk(&mut c, &mut store);
    network(&mut c, &mut store);
    c.verdict(si.name());
}

/// When the timer fired (0: not yet); set by the event handler.
static FIRED_AT: AtomicU64 = AtomicU64::new(0);

fn on_timer(_: event::Port) {
    FIRED_AT.store(time::now_ns(), Ordering::SeqCst);
}

/// A timer: a one-shot alarm 20 ms from now, slept on until it fires.
fn alarm(c: &mut Checks) {
    event::bind_virq(VIRQ_TIMER, on_timer).expect("bind the timer's virtual IRQ");
    event::enable();
    let t0 = time::now_ns();
    timer::set_oneshot(t0 + 20 * MS).expect("arm the timer");
    event::block_until(|| FIRED_AT.load(Ordering::SeqCst) != 0);
    let us = (FIRED_AT.load(Ordering::SeqCst) - t0) / 1000;
    c.holds("timer", format_args!("fired after {us} us, asked for 20000 us"), us >= 20_000);
}

/// The virtual disk dom0 serves: 8 sectors written, flushed, read back.
fn disk(c: &mut Checks, store: &mut Store) {
    let mut disk = match BlockDevice::open(store, 0) {
        Ok(d) => d,
        Err(e) => return c.holds("disk", format_args!("open ({e:?})"), false),
    };
    println!("disk: {} sectors of {SECTOR} bytes", disk.sectors());
    let data: Vec<u8> = (0..8 * SECTOR).map(|i| (i * 7 + i / 251) as u8).collect();
    let wrote = disk.write(0, &data).and_then(|()| disk.flush());
    c.holds("disk", format_args!("8 sectors written and flushed"), wrote.is_ok());
    let mut back = alloc::vec![0u8; data.len()];
    let read = disk.read(0, &mut back);
    c.holds("disk", format_args!("8 sectors read back intact"), read.is_ok() && back == data);
}

/// The virtual NIC on dom0's bridge: an address by DHCP, then a ping of
/// the router (through dom0's uplink: QEMU's user network answers).
fn network(c: &mut Checks, store: &mut Store) {
    let mut net = match Interface::open(store, 0, Addressing::Dhcp) {
        Ok(n) => n,
        Err(e) => return c.holds("net", format_args!("open ({e:?})"), false),
    };
    let deadline = time::now_ns() + 30_000 * MS;
    while net.lease().is_none() && time::now_ns() < deadline && step(&mut net, deadline) {}
    let Some(lease) = net.lease().cloned() else {
        return c.holds("net", format_args!("a DHCP lease within 30 s"), false);
    };
    c.holds("net", format_args!("DHCP lease {} from {}", lease.address, lease.server), true);
    let router = lease.router.unwrap_or(lease.server);
    let ping = net.add_icmp(4, 1024);
    let bound = net.icmp(ping).bind(icmp::Endpoint::Ident(0x4e47)).is_ok();
    let mut answered = false;
    // A few tries: the first may wait for ARP to find the router.
    for seq in 0..5 {
        let req = Icmpv4Repr::EchoRequest { ident: 0x4e47, seq_no: seq, data: b"ringfence" };
        if let Ok(b) = net.icmp(ping).send(req.buffer_len(), IpAddress::Ipv4(router)) {
            req.emit(&mut Icmpv4Packet::new_unchecked(b), &ChecksumCapabilities::default());
        }
        let until = time::now_ns() + 1000 * MS;
        while !answered && time::now_ns() < until && step(&mut net, until) {
            while let Ok((p, from)) = net.icmp(ping).recv() {
                let reply = Icmpv4Packet::new_checked(p).and_then(|p| Icmpv4Repr::parse(&p, &Default::default()));
                answered |= from == IpAddress::Ipv4(router)
                    && matches!(reply, Ok(Icmpv4Repr::EchoReply { ident: 0x4e47, seq_no, .. }) if seq_no == seq);
            }
        }
        if answered {
            break;
        }
    }
    c.holds("net", format_args!("{router} answered a ping"), bound && answered);
}

/// Lets smoltcp work, then sleeps until the NIC has news or `until`:
/// whether the NIC still works.
fn step(net: &mut Interface, until: u64) -> bool {
    net.poll().is_ok() && net.wait(until).is_ok()
}
