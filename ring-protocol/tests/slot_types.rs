//! Slot types (R6): user structs that derive zerocopy's traits through the
//! re-export cross a ring byte for byte, for every piece width the slot
//! copies use (1, 2, 4 and 8 bytes, and 16 for 16-byte aligned types).
//! The write side puts exactly the value's bytes into the slot; the read
//! side returns exactly the bytes the peer left there, whatever they are.
#![cfg(not(loom))]

mod common;

use std::fmt::Debug;

use common::Pages;
use ring_protocol::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use ring_protocol::{stream_bytes, Descriptor, Layout, Pod, StreamConsumer, StreamProducer};

// Index word offsets (StreamHeader).
const PROD: usize = 0;

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
#[repr(C)]
struct Bytes3([u8; 3]);

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
#[repr(C)]
struct Align2 {
    a: u16,
    b: [u8; 4],
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
#[repr(C)]
struct Align4 {
    a: u32,
    b: i16,
    c: [u8; 2],
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
#[repr(C, align(16))]
struct Align16 {
    a: u64,
    b: u32,
    c: [u16; 2],
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
#[repr(C, align(64))]
struct Line {
    seq: u64,
    words: [u64; 7],
}

/// A value of `T` whose bytes are `seed, seed + 1, ...` (wrapping).
fn patterned<T: Pod>(seed: u8) -> T {
    let bytes: Vec<u8> = (0..size_of::<T>()).map(|i| seed.wrapping_add(i as u8)).collect();
    T::read_from_bytes(&bytes).unwrap()
}

/// Push values, check the slot bytes; scribble slots as a peer, check what
/// pops out; across the index wrap.
fn round_trip<T: Pod + PartialEq + Debug>() {
    const CAP: u32 = 4;
    let len = stream_bytes::<T>(CAP);
    let pages = Pages::new(len);
    let layout = Layout::stream::<T>(len).unwrap();
    assert_eq!(layout.capacity, CAP);
    let slot = |i: u32| layout.slots_offset + (i % CAP) as usize * layout.stride;

    // Our endpoints: the producer and a consumer, dropped before the peer
    // takes the producer's role.
    {
        let mut tx = StreamProducer::<T>::init(pages.mem()).unwrap();
        let mut rx = StreamConsumer::<T>::attach(pages.mem()).unwrap();
        for round in 0..3u32 {
            // Our writes: exactly the value's bytes, in the slot the index names.
            for i in 0..CAP {
                let v: T = patterned(((round * CAP + i) as u8).wrapping_mul(17));
                tx.try_push(v).unwrap();
                assert_eq!(pages.read_bytes(slot(round * CAP + i), size_of::<T>()), v.as_bytes());
            }
            tx.publish().unwrap();
            for i in 0..CAP {
                let want: T = patterned(((round * CAP + i) as u8).wrapping_mul(17));
                assert_eq!(rx.pop().unwrap(), Some(want));
            }
            rx.release().unwrap();
        }
    }

    // The peer's writes: whatever bytes it leaves are what we read.
    let mut rx = StreamConsumer::<T>::attach(pages.mem()).unwrap();
    let start = pages.load_u32(PROD);
    for i in 0..CAP {
        let bytes: Vec<u8> = (0..size_of::<T>()).map(|k| (k as u8).wrapping_mul(29) ^ (0xa5 + i as u8)).collect();
        pages.write_bytes(slot(start.wrapping_add(i)), &bytes);
    }
    pages.store_u32(PROD, start.wrapping_add(CAP));
    for i in 0..CAP {
        let got = rx.pop().unwrap().expect("the peer published CAP slots");
        let bytes: Vec<u8> = (0..size_of::<T>()).map(|k| (k as u8).wrapping_mul(29) ^ (0xa5 + i as u8)).collect();
        assert_eq!(got.as_bytes(), &bytes[..]);
    }
}

#[test]
fn r6_slots_copy_exactly_the_value_bytes_at_every_alignment() {
    round_trip::<u8>();
    round_trip::<Bytes3>();
    round_trip::<Align2>();
    round_trip::<Align4>();
    round_trip::<Descriptor>();
    round_trip::<Align16>();
    round_trip::<Line>();
    round_trip::<[u32; 5]>();
}
