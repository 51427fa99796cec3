//! Two real threads on two cores hammer a ring and check every item's
//! sequence number, in both directions, using the sleep/notify protocol
//! (R8, R9) with doorbell flags standing in for event channels. A lost
//! wake-up shows up as a sleeper that times out.
//!
//! A few million items in release builds; small enough for well under 5 s
//! in debug builds.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Pages;
use ring_protocol::{
    stream_bytes, Back, ByteChannel, Completion, Descriptor, Front, IdTable, StreamConsumer, StreamProducer, PAGE_SIZE,
};

const ITEMS: u64 = if cfg!(debug_assertions) { 200_000 } else { 4_000_000 };
const TIMEOUT: Duration = Duration::from_secs(20);

/// An event channel: `ring` sets it, `wait` sleeps until it is set.
struct Doorbell(AtomicBool);

impl Doorbell {
    const fn new() -> Self {
        Doorbell(AtomicBool::new(false))
    }

    fn ring(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn wait(&self, who: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let mut spins = 0u32;
        while !self.0.swap(false, Ordering::Acquire) {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
                assert!(Instant::now() < deadline, "{who}: lost wake-up");
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

fn descriptor(id: u64, seq: u64) -> Descriptor {
    Descriptor {
        id,
        gref: seq as u32,
        offset: (seq >> 32) as u32,
        len: (seq as u32).wrapping_mul(2_654_435_761),
        op: (seq % 7) as u16,
        flags: 0xa5a5,
    }
}

fn seq_of(d: &Descriptor) -> u64 {
    let seq = u64::from(d.gref) | u64::from(d.offset) << 32;
    assert_eq!(d.len, (seq as u32).wrapping_mul(2_654_435_761), "torn descriptor");
    assert_eq!((d.op, d.flags), ((seq % 7) as u16, 0xa5a5), "torn descriptor");
    seq
}

/// R5, R7, R8, R9, R11 under real concurrency: requests in order, responses
/// out of order (each batch answered in reverse), ids mapped back through an
/// `IdTable`, every sequence number seen exactly once on each side.
#[test]
fn r5_r9_two_thread_request_response_stress() {
    let len = PAGE_SIZE;
    let pages = Pages::new(len);
    let mut front = Front::<Descriptor, Completion>::init_at(pages.mem(), u32::MAX - 1000).unwrap();
    let mut back = Back::<Descriptor, Completion>::attach(pages.mem()).unwrap();
    assert_eq!(front.capacity(), 128);
    let to_back = Doorbell::new();
    let to_front = Doorbell::new();

    std::thread::scope(|s| {
        s.spawn(|| {
            let mut expect = 0u64;
            let mut batch: Vec<Descriptor> = Vec::new();
            while expect < ITEMS {
                batch.extend(back.requests().unwrap());
                for req in &batch {
                    assert_eq!(seq_of(req), expect, "request out of sequence");
                    expect += 1;
                }
                for req in batch.drain(..).rev() {
                    back.try_push(Completion { id: req.id, status: 0, len: req.gref }).unwrap();
                }
                if back.push_and_check_notify().unwrap() {
                    to_front.ring();
                }
                if expect < ITEMS && !back.final_check_for_requests().unwrap() {
                    to_back.wait("back");
                }
            }
        });

        let mut ids = IdTable::<u64, 128>::new();
        let mut done = vec![false; ITEMS as usize];
        let mut next = 0u64;
        let mut completed = 0u64;
        while completed < ITEMS {
            // Push a batch of varying size.
            let want = (next % 37 + 1).min(ITEMS - next);
            let mut pushed = 0;
            while pushed < want && front.free_requests() > 0 {
                let id = ids.insert(next).unwrap();
                front.try_push(descriptor(id, next)).unwrap();
                next += 1;
                pushed += 1;
            }
            if front.push_and_check_notify().unwrap() {
                to_back.ring();
            }
            let mut got = 0;
            for rsp in front.responses().unwrap() {
                let seq = ids.complete(rsp.id).expect("bad response id");
                assert_eq!(rsp.len, seq as u32);
                assert!(!std::mem::replace(&mut done[seq as usize], true), "duplicate");
                completed += 1;
                got += 1;
            }
            // Sleep only if we can neither push nor reap: wait for a batch
            // of up to 16 responses (clamped to what is outstanding).
            let stuck = pushed == 0 && got == 0 && (front.free_requests() == 0 || next == ITEMS);
            if stuck && completed < ITEMS && !front.final_check_for_responses_batched(16).unwrap() {
                to_front.wait("front");
            }
        }
        assert!(done.iter().all(|&d| d));
    });
    assert!(front.error().is_none() && back.error().is_none());
}

/// R12 under real concurrency: a stream of sequence numbers, the producer
/// sleeping for space and the consumer for data.
#[test]
fn r12_two_thread_stream_stress() {
    let pages = Pages::new(stream_bytes::<u64>(256));
    let mut tx = StreamProducer::<u64>::init(pages.mem()).unwrap();
    let mut rx = StreamConsumer::<u64>::attach(pages.mem()).unwrap();
    let data = Doorbell::new();
    let space = Doorbell::new();

    std::thread::scope(|s| {
        s.spawn(|| {
            let mut expect = 0u64;
            while expect < ITEMS {
                for v in rx.drain().unwrap() {
                    assert_eq!(v, expect, "stream out of sequence");
                    expect += 1;
                }
                if rx.release_and_check_notify().unwrap() {
                    space.ring();
                }
                // Batched wake-up: at most 8 at a time, fewer at the end.
                let k = (ITEMS - expect).min(8) as u32;
                if expect < ITEMS && !rx.final_check_batched(k).unwrap() {
                    data.wait("consumer");
                }
            }
        });

        let mut next = 0u64;
        while next < ITEMS {
            let want = (next % 53 + 1).min(ITEMS - next);
            let n = u64::from(tx.push_iter(next..next + want).unwrap());
            next += n;
            if tx.push_and_check_notify().unwrap() {
                data.ring();
            }
            if n < want && !tx.final_check_for_space(want as u32 - n as u32).unwrap() {
                space.wait("producer");
            }
        }
    });
    assert!(tx.error().is_none() && rx.error().is_none());
}

/// A console-style byte channel: the front sends a pattern, the back echoes
/// it, both through one page.
#[test]
fn r12_byte_channel_echo() {
    const BYTES: usize = if cfg!(debug_assertions) { 200_000 } else { 4_000_000 };
    let pages = Pages::new(PAGE_SIZE);
    let mut front = ByteChannel::front_init(pages.mem()).unwrap();
    let mut back = ByteChannel::back_attach(pages.mem()).unwrap();
    assert_eq!(front.tx.capacity(), 1024);
    let pattern = |i: usize| (i * 7 + i / 251) as u8;

    std::thread::scope(|s| {
        s.spawn(|| {
            // Echo: read what we can, write it back.
            let mut buf = [0u8; 300];
            let mut pending: &[u8] = &[];
            let mut held = [0u8; 300];
            let mut echoed = 0;
            while echoed < BYTES {
                if pending.is_empty() {
                    let n = back.rx.read(&mut buf).unwrap();
                    back.rx.release().unwrap();
                    held[..n].copy_from_slice(&buf[..n]);
                    pending = &held[..n];
                }
                let n = back.tx.write(pending).unwrap();
                back.tx.publish().unwrap();
                pending = &pending[n..];
                echoed += n;
                std::hint::spin_loop();
            }
        });

        let out: Vec<u8> = (0..BYTES).map(pattern).collect();
        let mut sent = 0;
        let mut received = 0;
        let mut buf = [0u8; 512];
        while received < BYTES {
            if sent < BYTES {
                sent += front.tx.write(&out[sent..]).unwrap();
                front.tx.publish().unwrap();
            }
            let n = front.rx.read(&mut buf).unwrap();
            front.rx.release().unwrap();
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, pattern(received + k), "echo corrupted at {}", received + k);
            }
            received += n;
        }
    });
}

/// R12: a console page initialised by a third party (the domain builder)
/// can be attached by both ends, and bytes flow both ways.
#[test]
fn r12_byte_channel_front_attach_to_a_prepared_page() {
    let pages = Pages::new(PAGE_SIZE);
    ByteChannel::front_init(pages.mem()).unwrap();
    let mut back = ByteChannel::back_attach(pages.mem()).unwrap();
    let mut front = ByteChannel::front_attach(pages.mem()).unwrap();
    assert_eq!(front.tx.write(b"out").unwrap(), 3);
    assert!(front.tx.push_and_check_notify().unwrap(), "a fresh stream asks for the first notification");
    let mut buf = [0u8; 8];
    assert_eq!(back.rx.read(&mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"out");
    back.rx.release().unwrap();
    assert_eq!(back.tx.write(b"in").unwrap(), 2);
    back.tx.publish().unwrap();
    assert_eq!(front.rx.read(&mut buf).unwrap(), 2);
    assert_eq!(&buf[..2], b"in");
}
