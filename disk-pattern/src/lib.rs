//! The disk pattern: known bytes that xtask writes into a disk image before
//! a run, that a guest computes to check what it reads and to write a new
//! region, and that xtask checks in the image after the run. One
//! definition, used by both sides (xtask's `evidence::pattern` and the
//! `dom0` guest), so they cannot drift.
//!
//! # The pattern
//!
//! The byte at absolute image offset `o` (bytes from the start of the
//! image, not of a region) under the 64-bit seed `s` is, in wrapping
//! (mod 2^64) arithmetic:
//!
//! ```text
//! w = o / 8                                  (the 8-byte word's index)
//! z = s + (w + 1) * 0x9E37_79B9_7F4A_7C15
//! z = (z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9
//! z = (z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB
//! z =  z ^ (z >> 31)
//! pattern_byte(s, o) = (z >> (8 * (o % 8))) & 0xff
//! ```
//!
//! That is, the little-endian 64-bit word at offset `8w` is
//! [`pattern_word`]`(s, w)`, the `(w + 1)`-th output of SplitMix64 started
//! from state `s`. Test vectors (checked below):
//! `pattern_word(0, 0) = 0xE220A8397B1DCDAF`,
//! `pattern_word(0, 1) = 0x6E789E6AA1B965F4`,
//! `pattern_word(0x5EED, 64) = 0xF2CF4B807CD13CCB`.
//!
//! Why this shape: keyed by the absolute offset, so a sector written at the
//! wrong LBA, or a sector's bytes shifted, fail the check; keyed by the seed,
//! so stale data (xtask's own pre-fill, a previous run's) fails it too; and
//! cheap (a few multiplies per 8 bytes) for a guest to compute.
#![no_std]
#![forbid(unsafe_code)]

/// The size of a disk sector, in bytes.
pub const SECTOR: u64 = 512;

/// The regions of the `dom0-devices` scenario, which xtask and the dom0
/// guest must agree on: xtask fills [`dom0::READ`] before the run, dom0
/// checks it and writes [`dom0::WRITE`] (another seed, so stale data
/// fails), and xtask checks both in the image afterwards.
pub mod dom0 {
    /// A run of sectors with the seed of its pattern.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Region {
        /// The first sector.
        pub lba: u64,
        /// How many sectors.
        pub sectors: u64,
        /// The pattern's seed.
        pub seed: u64,
    }

    /// What xtask writes and dom0 reads.
    pub const READ: Region = Region { lba: 2048, sectors: 256, seed: 0xD15C_5EED };
    /// What dom0 writes and flushes.
    pub const WRITE: Region = Region { lba: 8192, sectors: 384, seed: 0xD0_0B1C };
}

/// The pattern's little-endian word at byte offset `8 * word` under `seed`.
pub fn pattern_word(seed: u64, word: u64) -> u64 {
    let mut z = seed.wrapping_add(word.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pattern's byte at absolute image offset `offset` under `seed`.
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    (pattern_word(seed, offset / 8) >> (8 * (offset % 8))) as u8
}

/// Fills `buf` with the pattern of `seed` as it lies at absolute image
/// offset `offset` (any offset and length; whole words are the fast case).
pub fn fill(buf: &mut [u8], seed: u64, offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, offset + i as u64);
    }
}

/// Fills `buf` (a multiple of 8 bytes) with the pattern at offset
/// `offset` (a multiple of 8), a word at a time.
///
/// # Panics
/// If `offset` or `buf.len()` is not a multiple of 8.
pub fn fill_words(buf: &mut [u8], seed: u64, offset: u64) {
    assert!(offset.is_multiple_of(8) && buf.len().is_multiple_of(8), "fill_words: not word-aligned");
    let first = offset / 8;
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern_word(seed, first + i as u64).to_le_bytes());
    }
}

/// The first byte of `buf` (lying at absolute offset `offset`) that
/// differs from the pattern of `seed`: its index in `buf`, what was
/// wanted and what was found; `None` if every byte matches.
pub fn first_mismatch(buf: &[u8], seed: u64, offset: u64) -> Option<(usize, u8, u8)> {
    buf.iter().enumerate().find_map(|(i, &got)| {
        let want = pattern_byte(seed, offset + i as u64);
        (got != want).then_some((i, want, got))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_test_vectors_hold() {
        assert_eq!(pattern_word(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(pattern_word(0, 1), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(pattern_word(0x5EED, 64), 0xF2CF_4B80_7CD1_3CCB);
    }

    #[test]
    fn bytes_are_the_words_little_endian() {
        for o in 0..64u64 {
            assert_eq!(
                pattern_byte(7, 1000 + o),
                pattern_word(7, (1000 + o) / 8).to_le_bytes()[((1000 + o) % 8) as usize]
            );
        }
    }

    #[test]
    fn fill_and_fill_words_agree_and_mismatches_are_found() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill(&mut a, 9, 4096);
        fill_words(&mut b, 9, 4096);
        assert_eq!(a, b);
        assert_eq!(first_mismatch(&a, 9, 4096), None);
        assert!(first_mismatch(&a, 9, 4104).is_some(), "shifted by a word");
        assert!(first_mismatch(&a, 10, 4096).is_some(), "another seed");
        a[17] ^= 1;
        assert_eq!(first_mismatch(&a, 9, 4096), Some((17, b[17], b[17] ^ 1)));
    }
}
