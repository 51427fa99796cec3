//! Little-endian field reads from fixed-size byte arrays.
//!
//! Every field offset is a const generic checked at compile time against the
//! array length, so a field read can never go out of bounds: the only
//! fallible step is getting the fixed-size array out of the input slice, and
//! that is done with `get` + `try_into` at each call site.

/// A fixed-size view of `N` bytes with compile-time checked field reads.
#[derive(Clone, Copy)]
pub(crate) struct Fixed<'a, const N: usize>(pub(crate) &'a [u8; N]);

impl<'a, const N: usize> Fixed<'a, N> {
    /// Views `bytes[start..start + N]`, or `None` if that is out of range.
    pub(crate) fn at(bytes: &'a [u8], start: usize) -> Option<Self> {
        let end = start.checked_add(N)?;
        let window: &'a [u8; N] = bytes.get(start..end)?.try_into().ok()?;
        Some(Fixed(window))
    }

    /// The `W` bytes at `OFF`.
    pub(crate) fn array<const OFF: usize, const W: usize>(self) -> [u8; W] {
        const { assert!(OFF + W <= N, "field outside the fixed-size view") };
        let mut out = [0u8; W];
        let mut i = 0;
        while i < W {
            out[i] = self.0[OFF + i];
            i += 1;
        }
        out
    }

    pub(crate) fn u16<const OFF: usize>(self) -> u16 {
        u16::from_le_bytes(self.array::<OFF, 2>())
    }

    pub(crate) fn u32<const OFF: usize>(self) -> u32 {
        u32::from_le_bytes(self.array::<OFF, 4>())
    }

    pub(crate) fn u64<const OFF: usize>(self) -> u64 {
        u64::from_le_bytes(self.array::<OFF, 8>())
    }

    /// The first offset in `OFF..OFF + W` holding a non-zero byte, if any.
    pub(crate) fn first_nonzero<const OFF: usize, const W: usize>(self) -> Option<usize> {
        let field = self.array::<OFF, W>();
        field.iter().position(|&b| b != 0).map(|i| OFF + i)
    }
}
