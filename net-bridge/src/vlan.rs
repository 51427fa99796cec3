//! A set of VLANs: a 4096-bit map (512 bytes), one bit per VID. Only VLANs
//! 1 to 4094 can be members, since only they are [`Vid`]s.

use crate::ethernet::Vid;

/// A set of VLANs (a trunk's allowed list).
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet {
    bits: [u64; 64],
}

impl Default for VlanSet {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter().map(Vid::get)).finish()
    }
}

impl VlanSet {
    /// No VLAN.
    pub const fn new() -> Self {
        VlanSet { bits: [0; 64] }
    }

    /// Every VLAN, 1 to 4094.
    pub fn all() -> Self {
        let mut s = VlanSet { bits: [u64::MAX; 64] };
        s.bits[0] &= !1; // VID 0
        s.bits[63] &= !(1 << 63); // VID 4095
        s
    }

    fn slot(vid: Vid) -> (usize, u64) {
        let v = usize::from(vid.get());
        (v / 64, 1 << (v % 64))
    }

    /// Adds `vid`; returns whether it was new.
    pub fn insert(&mut self, vid: Vid) -> bool {
        let (i, bit) = Self::slot(vid);
        match self.bits.get_mut(i) {
            Some(w) => {
                let new = *w & bit == 0;
                *w |= bit;
                new
            }
            None => false,
        }
    }

    /// Removes `vid`; returns whether it was present.
    pub fn remove(&mut self, vid: Vid) -> bool {
        let (i, bit) = Self::slot(vid);
        match self.bits.get_mut(i) {
            Some(w) => {
                let was = *w & bit != 0;
                *w &= !bit;
                was
            }
            None => false,
        }
    }

    /// Whether `vid` is a member.
    pub fn contains(&self, vid: Vid) -> bool {
        let (i, bit) = Self::slot(vid);
        self.bits.get(i).is_some_and(|w| w & bit != 0)
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// No member.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// The members, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = Vid> + '_ {
        (Vid::MIN.get()..=Vid::MAX.get()).filter_map(Vid::new).filter(|&v| self.contains(v))
    }
}

impl FromIterator<Vid> for VlanSet {
    fn from_iter<I: IntoIterator<Item = Vid>>(iter: I) -> Self {
        let mut s = VlanSet::new();
        s.extend(iter);
        s
    }
}

impl Extend<Vid> for VlanSet {
    fn extend<I: IntoIterator<Item = Vid>>(&mut self, iter: I) {
        for v in iter {
            self.insert(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_contains() {
        let v = |n| Vid::new(n).unwrap();
        let mut s = VlanSet::new();
        assert!(s.is_empty());
        assert!(s.insert(v(1)) && s.insert(v(4094)) && s.insert(v(64)));
        assert!(!s.insert(v(64)));
        assert!(s.contains(v(1)) && s.contains(v(64)) && s.contains(v(4094)) && !s.contains(v(63)));
        assert_eq!(s.len(), 3);
        assert!(s.iter().eq([v(1), v(64), v(4094)]));
        assert!(s.remove(v(64)) && !s.remove(v(64)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn all_has_exactly_the_vlans() {
        let s = VlanSet::all();
        assert_eq!(s.len(), 4094);
        assert!(s.contains(Vid::MIN) && s.contains(Vid::MAX));
    }
}
