//! An indexed binary min-heap over slots `0..N`: each slot is in the heap
//! at most once, with a key, and can be inserted, re-keyed or removed in
//! O(log N) by its slot number.
//!
//! The scheduler and the hypervisor's timers use it so that no scheduling
//! decision or deadline look-up scans every domain: with 1 024 domains a
//! scan per trip cost more than the whole budget of a hypercall.
//! Hand-written because it must be `const`-constructible (it lives in the
//! hypervisor's static state), allocation-free and indexed by slot, which
//! `heapless::BinaryHeap` is not (it cannot remove or re-key an element).
//!
//! Invariants (checked by `IndexedHeap::check` in the tests):
//! - `heap[..len]` is a min-heap by key (ties are broken by the key itself:
//!   callers make keys unique by including the slot);
//! - `pos[s] == Some(i)` exactly when `heap[i].1 == s` for `i < len`.

/// A min-heap of `(key, slot)` with at most one entry per slot `0..N`.
#[derive(Clone, Debug)]
pub struct IndexedHeap<K: Copy + Ord, const N: usize> {
    heap: [(K, usize); N],
    /// Where each slot sits in `heap` (`NONE`: not in the heap).
    pos: [u32; N],
    len: usize,
}

const NONE: u32 = u32::MAX;

impl<K: Copy + Ord, const N: usize> IndexedHeap<K, N> {
    /// An empty heap; `fill` is any key (it fills the unused entries).
    pub const fn new(fill: K) -> Self {
        IndexedHeap { heap: [(fill, 0); N], pos: [NONE; N], len: 0 }
    }

    /// How many slots are in the heap.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the heap is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `slot` is in the heap.
    pub fn contains(&self, slot: usize) -> bool {
        self.pos.get(slot).is_some_and(|&p| p != NONE)
    }

    /// The least entry.
    #[inline]
    pub fn peek(&self) -> Option<(K, usize)> {
        (self.len > 0).then(|| self.heap[0])
    }

    /// The least entry whose slot is not `exclude`: the root, or else the
    /// lesser of the root's children.
    #[inline]
    pub fn peek_excluding(&self, exclude: usize) -> Option<(K, usize)> {
        let root = self.peek()?;
        if root.1 != exclude {
            return Some(root);
        }
        self.heap[1.min(self.len)..3.min(self.len)].iter().copied().min()
    }

    /// Puts `slot` in the heap with `key`, or changes its key. A slot out
    /// of range is ignored.
    #[inline(always)]
    pub fn set(&mut self, slot: usize, key: K) {
        let Some(&p) = self.pos.get(slot) else { return };
        if p == NONE {
            let i = self.len;
            self.len += 1;
            self.heap[i] = (key, slot);
            self.pos[slot] = i as u32;
            self.up(i);
        } else {
            let i = p as usize;
            let old = self.heap[i].0;
            if key == old {
                return;
            }
            self.heap[i].0 = key;
            if key < old {
                self.up(i);
            } else {
                self.down(i);
            }
        }
    }

    /// Applies `f` to every key in place. `f` must keep the keys' order
    /// (`a < b` implies `f(a) < f(b)`), as a common shift does, so the heap
    /// stays a heap without re-sorting. O(len).
    pub fn shift_keys(&mut self, f: impl Fn(K) -> K) {
        for e in &mut self.heap[..self.len] {
            e.0 = f(e.0);
        }
    }

    /// Takes `out` out of the heap and puts `slot` in with `key`: the same
    /// as [`IndexedHeap::remove`] of `out` then [`IndexedHeap::set`] of
    /// `slot`, but when `out` is in the heap and `slot` is not (a domain
    /// switch: the one picked leaves, the one that ran goes back) `slot`
    /// takes `out`'s place and is sifted once, with no removal and no
    /// insertion (O(1) for a heap of one).
    #[inline(always)]
    pub fn replace(&mut self, out: usize, slot: usize, key: K) {
        match (self.pos.get(out), self.pos.get(slot)) {
            (Some(&p), Some(&NONE)) if p != NONE => {
                let i = p as usize;
                let old = self.heap[i];
                self.heap[i] = (key, slot);
                self.pos[out] = NONE;
                self.pos[slot] = p;
                if self.len == 1 {
                    // Alone in the heap: nothing to sift.
                } else if self.heap[i] < old {
                    self.up(i);
                } else {
                    self.down(i);
                }
            }
            _ => {
                self.remove(out);
                self.set(slot, key);
            }
        }
    }

    /// Takes `slot` out of the heap (a no-op if it is not in it).
    #[inline(always)]
    pub fn remove(&mut self, slot: usize) {
        let Some(&p) = self.pos.get(slot) else { return };
        if p == NONE {
            return;
        }
        let i = p as usize;
        self.pos[slot] = NONE;
        self.len -= 1;
        if i == self.len {
            return;
        }
        self.heap[i] = self.heap[self.len];
        self.pos[self.heap[i].1] = i as u32;
        self.up(i);
        self.down(i);
    }

    #[inline]
    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1] = a as u32;
        self.pos[self.heap[b].1] = b as u32;
    }

    #[inline]
    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] >= self.heap[parent] {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    #[inline]
    fn down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.len && self.heap[l] < self.heap[least] {
                least = l;
            }
            if r < self.len && self.heap[r] < self.heap[least] {
                least = r;
            }
            if least == i {
                return;
            }
            self.swap(i, least);
            i = least;
        }
    }

    /// Asserts the invariants (tests only).
    #[cfg(test)]
    pub fn check(&self) {
        for i in 1..self.len {
            assert!(self.heap[(i - 1) / 2] <= self.heap[i], "heap order broken at {i}");
        }
        for (s, &p) in self.pos.iter().enumerate() {
            if p != NONE {
                assert!((p as usize) < self.len && self.heap[p as usize].1 == s, "pos of slot {s} is stale");
            }
        }
        assert_eq!(self.pos.iter().filter(|&&p| p != NONE).count(), self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::IndexedHeap;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_operations_match_a_linear_model() {
        const N: usize = 37;
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut h: IndexedHeap<(u64, usize), N> = IndexedHeap::new((0, 0));
        let mut model: [Option<u64>; N] = [None; N];
        for _ in 0..20_000 {
            let slot = (rng.next() % (N as u64 + 2)) as usize; // out of range too
            match rng.next() % 4 {
                3 => {
                    let out = (rng.next() % (N as u64 + 2)) as usize;
                    let k = rng.next() % 50;
                    h.replace(out, slot, (k, slot));
                    if out < N {
                        model[out] = None;
                    }
                    if slot < N {
                        model[slot] = Some(k);
                    }
                }
                0 | 1 => {
                    let k = rng.next() % 50;
                    h.set(slot, (k, slot));
                    if slot < N {
                        model[slot] = Some(k);
                    }
                }
                _ => {
                    h.remove(slot);
                    if slot < N {
                        model[slot] = None;
                    }
                }
            }
            h.check();
            let best = (0..N).filter_map(|s| model[s].map(|k| ((k, s), s))).min();
            assert_eq!(h.peek(), best);
            let ex = (rng.next() % N as u64) as usize;
            let best_ex = (0..N).filter(|&s| s != ex).filter_map(|s| model[s].map(|k| ((k, s), s))).min();
            assert_eq!(h.peek_excluding(ex), best_ex);
            assert_eq!(h.len(), model.iter().flatten().count());
            assert_eq!(h.contains(slot), slot < N && model[slot].is_some());
        }
    }
}
