//! `SharedMem::read_bytes` / `write_bytes`: bulk volatile copies in and out
//! of a shared region, at any offset and length, bounds-checked.

#![cfg(not(loom))]

mod common;

use common::Pages;
use proptest::prelude::*;
use ring_protocol::LayoutError;

proptest! {
    /// Whatever the offset's alignment and the length, a write followed by
    /// a read gives the bytes back, and nothing outside the range changes.
    #[test]
    fn bytes_round_trip_at_any_offset(at in 0usize..4096, data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let pages = Pages::new(8192);
        let mem = pages.mem();
        let before = pages.read_bytes(0, 8192);
        let fits = at + data.len() <= 8192;
        prop_assert_eq!(mem.write_bytes(at, &data).is_ok(), fits);
        let mut back = vec![0u8; data.len()];
        prop_assert_eq!(mem.read_bytes(at, &mut back).is_ok(), fits);
        if fits {
            prop_assert_eq!(&back, &data);
            let after = pages.read_bytes(0, 8192);
            prop_assert_eq!(&after[..at], &before[..at]);
            prop_assert_eq!(&after[at + data.len()..], &before[at + data.len()..]);
        }
    }
}

#[test]
fn bytes_past_the_end_are_refused_and_nothing_is_written() {
    let pages = Pages::new(4096);
    let mem = pages.mem();
    assert_eq!(mem.write_bytes(4000, &[1; 97]), Err(LayoutError::OutOfRange { at: 4000, len: 97 }));
    assert_eq!(mem.write_bytes(usize::MAX, &[1]), Err(LayoutError::OutOfRange { at: usize::MAX, len: 1 }));
    let mut out = [0u8; 2];
    assert_eq!(mem.read_bytes(4095, &mut out), Err(LayoutError::OutOfRange { at: 4095, len: 2 }));
    assert!(pages.read_bytes(0, 4096).iter().all(|&b| b == 0));
    assert_eq!(mem.write_bytes(4096, &[]), Ok(()));
}
