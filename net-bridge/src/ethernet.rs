//! Ethernet II and 802.1Q framing: one validating parser and one writer.
//!
//! A frame is given as the bytes a domU's netfront (or the uplink NIC) put in
//! a buffer, **without the FCS** (virtio-net and netif never carry it). The
//! domU controls every byte, so [`Frame::parse`] is the only way bytes become
//! a [`Frame`], and it checks, in this order (one [`FrameError`] per check):
//!
//! 1. `len < 14` ([`HEADER_LEN`]): [`FrameError::Runt`].
//! 2. `len > 1518` ([`MAX_TAGGED_LEN`]): [`FrameError::Oversized`].
//! 3. Type `0x8100` ([`TPID_8021Q`]): a C-tag follows. Fewer than 18 bytes in
//!    all is a [`FrameError::Runt`]; VID `0xFFF` is [`FrameError::ReservedVid`].
//!    VID 0 is a *priority tag*: the frame carries a PCP but no VLAN.
//! 4. A type, outer or after the one C-tag, that is a tag protocol identifier
//!    (`0x88a8` S-tag, [`TPID_8021AD`]; `0x9100`, [`TPID_QINQ_LEGACY`]; or a
//!    second `0x8100`): [`FrameError::DoubleTag`]. Stacked tags are **refused**,
//!    not carried as payload: the classic VLAN-hopping attack sends a frame
//!    whose outer tag is the native VLAN, which a trunk strips, so that the
//!    next switch reads the inner tag as the frame's VLAN. Nothing in dom0
//!    needs Q-in-Q.
//! 5. Payload over 1500 bytes ([`MTU`]): [`FrameError::Oversized`]. So an
//!    untagged frame has at most 1514 bytes ([`MAX_UNTAGGED_LEN`]) and a tagged
//!    one 1518 ([`MAX_TAGGED_LEN`]).
//!
//! There is no minimum beyond the header: netfront and virtio-net do not pad
//! to 60 bytes, and the NIC pads on the wire. The type/length field is carried
//! as it is (an 802.3 length below `0x0600` is forwarded like any type).
//!
//! The PCP and DEI of an ingress tag are kept in [`Tag`] and written again
//! when the frame leaves tagged ([`Frame::emit`]); a frame that arrived
//! untagged leaves tagged with PCP 0 and DEI 0.

use core::fmt;

/// Destination, source and type: the untagged header.
pub const HEADER_LEN: usize = 14;
/// An 802.1Q tag: TPID and TCI.
pub const TAG_LEN: usize = 4;
/// The largest payload (IP MTU) a frame may carry.
pub const MTU: usize = 1500;
/// The largest untagged frame, without FCS.
pub const MAX_UNTAGGED_LEN: usize = HEADER_LEN + MTU;
/// The largest tagged frame, without FCS.
pub const MAX_TAGGED_LEN: usize = MAX_UNTAGGED_LEN + TAG_LEN;
/// The 802.1Q customer tag (C-tag) protocol identifier.
pub const TPID_8021Q: u16 = 0x8100;
/// The 802.1ad service tag (S-tag) protocol identifier.
pub const TPID_8021AD: u16 = 0x88a8;
/// The pre-standard Q-in-Q tag protocol identifier.
pub const TPID_QINQ_LEGACY: u16 = 0x9100;

/// A 48-bit MAC address, in wire order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// `00:00:00:00:00:00`.
    pub const ZERO: Mac = Mac([0; 6]);

    /// Group bit set: multicast, broadcast included.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// `ff:ff:ff:ff:ff:ff`.
    pub const fn is_broadcast(self) -> bool {
        matches!(self.0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    }

    /// `01:80:c2:00:00:00` to `01:80:c2:00:00:0f`: the 802.1D reserved
    /// link-local group (STP BPDUs, pause frames, LACP, 802.1X), which a
    /// bridge must not forward.
    pub const fn is_link_local(self) -> bool {
        matches!(self.0, [0x01, 0x80, 0xc2, 0x00, 0x00, x] if x <= 0x0f)
    }

    /// A possible sender: neither multicast (nor broadcast) nor all zeros.
    pub const fn is_valid_source(self) -> bool {
        !self.is_multicast() && !matches!(self.0, [0, 0, 0, 0, 0, 0])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A VLAN id a frame can belong to: 1 to 4094. VID 0 (priority tag, no
/// VLAN) and VID 4095 (reserved) are not VLANs, so no `Vid` holds them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Vid(u16);

impl Vid {
    /// The lowest VLAN id.
    pub const MIN: Vid = Vid(1);
    /// The highest VLAN id.
    pub const MAX: Vid = Vid(4094);

    /// `Some` for 1 to 4094.
    pub const fn new(vid: u16) -> Option<Vid> {
        if vid >= Self::MIN.0 && vid <= Self::MAX.0 {
            Some(Vid(vid))
        } else {
            None
        }
    }

    /// The id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Vid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An 802.1Q tag as parsed: never VID `0xFFF`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Tag {
    /// Priority code point, 0 to 7.
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// 0 (a priority tag: no VLAN) or a VLAN, 1 to 4094.
    pub vid: u16,
}

impl Tag {
    /// The VLAN the tag names; `None` for a priority tag.
    pub const fn vlan(self) -> Option<Vid> {
        Vid::new(self.vid)
    }

    fn tci(self) -> u16 {
        (u16::from(self.pcp & 7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff)
    }
}

/// Why bytes are not a frame the bridge accepts. See the module docs for the
/// check order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameError {
    /// Shorter than the header (14 bytes, or 18 with a tag).
    Runt {
        /// The frame's length.
        len: usize,
    },
    /// Over [`MAX_TAGGED_LEN`] in all, or a payload over [`MTU`].
    Oversized {
        /// The frame's length.
        len: usize,
    },
    /// A tag with VID `0xFFF`.
    ReservedVid,
    /// An S-tag or a second tag (Q-in-Q): refused.
    DoubleTag {
        /// The offending tag protocol identifier.
        tpid: u16,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Runt { len } => write!(f, "runt frame of {len} bytes"),
            FrameError::Oversized { len } => write!(f, "oversized frame of {len} bytes"),
            FrameError::ReservedVid => f.write_str("VLAN id 0xfff is reserved"),
            FrameError::DoubleTag { tpid } => write!(f, "stacked VLAN tag (type {tpid:#06x}) refused"),
        }
    }
}

impl core::error::Error for FrameError {}

/// How a frame leaves a port.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Egress {
    /// Without a tag (access ports; a trunk's native VLAN).
    Untagged,
    /// With an 802.1Q tag of this VLAN (a trunk's other VLANs).
    Tagged(Vid),
}

/// The caller's buffer cannot hold the frame as it leaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BufferTooSmall {
    /// Bytes the egress frame has.
    pub needed: usize,
    /// Bytes the buffer has.
    pub available: usize,
}

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "egress frame needs {} bytes, buffer has {}", self.needed, self.available)
    }
}

impl core::error::Error for BufferTooSmall {}

/// Why [`rewrite`] wrote nothing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RewriteError {
    /// The input is not a valid frame.
    Frame(FrameError),
    /// The output buffer is too small.
    BufferTooSmall(BufferTooSmall),
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::Frame(e) => e.fmt(f),
            RewriteError::BufferTooSmall(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for RewriteError {}

impl From<FrameError> for RewriteError {
    fn from(e: FrameError) -> Self {
        RewriteError::Frame(e)
    }
}

impl From<BufferTooSmall> for RewriteError {
    fn from(e: BufferTooSmall) -> Self {
        RewriteError::BufferTooSmall(e)
    }
}

/// A validated frame, borrowing its payload from the input bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Frame<'a> {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC (not yet checked: see the bridge's source rules).
    pub src: Mac,
    /// The one 802.1Q tag, if any.
    pub tag: Option<Tag>,
    /// The type (or 802.3 length) after the tag.
    pub ethertype: u16,
    /// Everything after the type: at most [`MTU`] bytes.
    pub payload: &'a [u8],
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

fn mac_at(bytes: &[u8], at: usize) -> Option<Mac> {
    let b: [u8; 6] = bytes.get(at..at.checked_add(6)?)?.try_into().ok()?;
    Some(Mac(b))
}

const fn is_tpid(t: u16) -> bool {
    matches!(t, TPID_8021Q | TPID_8021AD | TPID_QINQ_LEGACY)
}

impl<'a> Frame<'a> {
    /// Validates `bytes` as one frame without FCS (checks in the module docs'
    /// order).
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let len = bytes.len();
        let runt = FrameError::Runt { len };
        if len < HEADER_LEN {
            return Err(runt);
        }
        if len > MAX_TAGGED_LEN {
            return Err(FrameError::Oversized { len });
        }
        let dst = mac_at(bytes, 0).ok_or(runt)?;
        let src = mac_at(bytes, 6).ok_or(runt)?;
        let outer = be16(bytes, 12).ok_or(runt)?;
        let (tag, ethertype, header) = if outer == TPID_8021Q {
            let tci = be16(bytes, 14).ok_or(runt)?;
            let ethertype = be16(bytes, 16).ok_or(runt)?;
            let vid = tci & 0x0fff;
            if vid == 0x0fff {
                return Err(FrameError::ReservedVid);
            }
            if is_tpid(ethertype) {
                return Err(FrameError::DoubleTag { tpid: ethertype });
            }
            let tag = Tag { pcp: (tci >> 13) as u8, dei: tci & 0x1000 != 0, vid };
            (Some(tag), ethertype, HEADER_LEN + TAG_LEN)
        } else if is_tpid(outer) {
            return Err(FrameError::DoubleTag { tpid: outer });
        } else {
            (None, outer, HEADER_LEN)
        };
        let payload = bytes.get(header..).ok_or(runt)?;
        if payload.len() > MTU {
            return Err(FrameError::Oversized { len });
        }
        Ok(Frame { dst, src, tag, ethertype, payload })
    }

    /// The frame's length as parsed.
    pub fn len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Never: a frame has at least its header. (For clippy's `len` rule.)
    pub fn is_empty(&self) -> bool {
        false
    }

    fn header_len(&self) -> usize {
        HEADER_LEN + if self.tag.is_some() { TAG_LEN } else { 0 }
    }

    /// The frame's length once it leaves with `egress`: at most
    /// [`MAX_TAGGED_LEN`].
    pub fn egress_len(&self, egress: Egress) -> usize {
        let tag = match egress {
            Egress::Untagged => 0,
            Egress::Tagged(_) => TAG_LEN,
        };
        HEADER_LEN + tag + self.payload.len()
    }

    /// Whether the frame leaves with `egress` byte for byte as it arrived, so
    /// the caller may send (or grant-copy) the ingress bytes themselves
    /// instead of [`emit`](Frame::emit)ting a copy: untagged to untagged, or
    /// tagged to tagged with the same VID (PCP and DEI are kept).
    pub fn emits_unchanged(&self, egress: Egress) -> bool {
        match (self.tag, egress) {
            (None, Egress::Untagged) => true,
            (Some(t), Egress::Tagged(vid)) => t.vid == vid.get(),
            _ => false,
        }
    }

    /// Writes the frame as it leaves with `egress` to the front of `out`, and
    /// returns its length; writes nothing if it does not fit. A tagged egress
    /// keeps the ingress tag's PCP and DEI (0 for an untagged ingress).
    pub fn emit(&self, egress: Egress, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let needed = self.egress_len(egress);
        let too_small = BufferTooSmall { needed, available: out.len() };
        let out = out.get_mut(..needed).ok_or(too_small)?;
        let mut w = Writer { buf: out, at: 0 };
        w.put(&self.dst.0);
        w.put(&self.src.0);
        if let Egress::Tagged(vid) = egress {
            let (pcp, dei) = self.tag.map_or((0, false), |t| (t.pcp, t.dei));
            w.put(&TPID_8021Q.to_be_bytes());
            w.put(&Tag { pcp, dei, vid: vid.get() }.tci().to_be_bytes());
        }
        w.put(&self.ethertype.to_be_bytes());
        w.put(self.payload);
        // `needed` is exactly the sum of the pieces, so `w.at == needed`.
        Ok(needed)
    }
}

/// Appends to a buffer sized beforehand; a piece that would not fit is not
/// written (it cannot happen in [`Frame::emit`], and never panics).
struct Writer<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let Some(end) = self.at.checked_add(bytes.len()) else { return };
        if let Some(dst) = self.buf.get_mut(self.at..end) {
            dst.copy_from_slice(bytes);
            self.at = end;
        }
    }
}

/// Parses `frame` and writes it as it leaves with `egress` into `out`
/// (inserting, replacing or removing the 4-byte tag); returns the length
/// written. Nothing is written on error.
pub fn rewrite(frame: &[u8], egress: Egress, out: &mut [u8]) -> Result<usize, RewriteError> {
    Ok(Frame::parse(frame)?.emit(egress, out)?)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const A: Mac = Mac([0x02, 0, 0, 0, 0, 0xaa]);
    const B: Mac = Mac([0x02, 0, 0, 0, 0, 0xbb]);

    fn untagged(payload: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&B.0);
        f.extend_from_slice(&A.0);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    fn tagged(tci: u16, ethertype: u16, payload: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&B.0);
        f.extend_from_slice(&A.0);
        f.extend_from_slice(&TPID_8021Q.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    #[test]
    fn parses_untagged() {
        let bytes = untagged(46);
        let f = Frame::parse(&bytes).unwrap();
        assert_eq!((f.dst, f.src, f.tag, f.ethertype, f.payload.len()), (B, A, None, 0x0800, 46));
        assert_eq!(f.len(), 60);
    }

    #[test]
    fn parses_tag_keeping_pcp_and_dei() {
        let bytes = tagged(0xb000 | 42, 0x86dd, 10);
        let f = Frame::parse(&bytes).unwrap();
        assert_eq!(f.tag, Some(Tag { pcp: 5, dei: true, vid: 42 }));
        assert_eq!(f.tag.unwrap().vlan(), Vid::new(42));
        assert_eq!(f.ethertype, 0x86dd);
        assert_eq!(f.payload.len(), 10);
    }

    #[test]
    fn priority_tag_has_no_vlan() {
        let bytes = tagged(0x6000, 0x0800, 0);
        let f = Frame::parse(&bytes).unwrap();
        assert_eq!(f.tag.unwrap().vid, 0);
        assert_eq!(f.tag.unwrap().vlan(), None);
    }

    #[test]
    fn runts() {
        for len in 0..HEADER_LEN {
            assert_eq!(Frame::parse(&untagged(0)[..len]), Err(FrameError::Runt { len }));
        }
        let t = tagged(5, 0x0800, 0);
        for len in HEADER_LEN..HEADER_LEN + TAG_LEN {
            assert_eq!(Frame::parse(&t[..len]), Err(FrameError::Runt { len }));
        }
        assert!(Frame::parse(&untagged(0)).is_ok());
        assert!(Frame::parse(&t).is_ok());
    }

    #[test]
    fn oversized() {
        assert!(Frame::parse(&untagged(MTU)).is_ok());
        assert_eq!(untagged(MTU).len(), MAX_UNTAGGED_LEN);
        assert_eq!(Frame::parse(&untagged(MTU + 1)), Err(FrameError::Oversized { len: MAX_UNTAGGED_LEN + 1 }));
        assert!(Frame::parse(&tagged(7, 0x0800, MTU)).is_ok());
        assert_eq!(Frame::parse(&tagged(7, 0x0800, MTU + 1)), Err(FrameError::Oversized { len: MAX_TAGGED_LEN + 1 }));
        assert_eq!(Frame::parse(&untagged(9000)), Err(FrameError::Oversized { len: 9014 }));
    }

    #[test]
    fn reserved_vid() {
        assert_eq!(Frame::parse(&tagged(0x0fff, 0x0800, 0)), Err(FrameError::ReservedVid));
        assert_eq!(Frame::parse(&tagged(0xefff, 0x0800, 0)), Err(FrameError::ReservedVid));
        assert!(Frame::parse(&tagged(0x0ffe, 0x0800, 0)).is_ok());
    }

    #[test]
    fn double_tags_are_refused() {
        for tpid in [TPID_8021Q, TPID_8021AD, TPID_QINQ_LEGACY] {
            assert_eq!(Frame::parse(&tagged(5, tpid, 4)), Err(FrameError::DoubleTag { tpid }));
        }
        for tpid in [TPID_8021AD, TPID_QINQ_LEGACY] {
            let mut f = untagged(10);
            f[12..14].copy_from_slice(&tpid.to_be_bytes());
            assert_eq!(Frame::parse(&f), Err(FrameError::DoubleTag { tpid }));
        }
    }

    #[test]
    fn emit_removes_inserts_and_replaces_the_tag() {
        let v9 = Vid::new(9).unwrap();
        let t = tagged(0xa000 | 7, 0x0800, 20);
        let u = untagged(20);
        let mut out = [0u8; MAX_TAGGED_LEN];

        let n = rewrite(&t, Egress::Untagged, &mut out).unwrap();
        assert_eq!(&out[..n], &u[..]);

        let n = rewrite(&u, Egress::Tagged(v9), &mut out).unwrap();
        assert_eq!(&out[..n], &tagged(9, 0x0800, 20)[..]);

        // PCP/DEI kept, VID replaced.
        let n = rewrite(&t, Egress::Tagged(v9), &mut out).unwrap();
        assert_eq!(&out[..n], &tagged(0xa000 | 9, 0x0800, 20)[..]);

        let n = rewrite(&u, Egress::Untagged, &mut out).unwrap();
        assert_eq!(&out[..n], &u[..]);
    }

    #[test]
    fn emits_unchanged_exactly_when_the_bytes_are_the_same() {
        let v = |n| Vid::new(n).unwrap();
        let mut out = [0u8; MAX_TAGGED_LEN];
        for bytes in [untagged(7), tagged(0xa000 | 9, 0x0800, 7), tagged(0x2000, 0x0800, 7)] {
            let f = Frame::parse(&bytes).unwrap();
            for e in [Egress::Untagged, Egress::Tagged(v(9)), Egress::Tagged(v(10))] {
                let n = f.emit(e, &mut out).unwrap();
                assert_eq!(f.emits_unchanged(e), out[..n] == bytes[..], "{f:?} {e:?}");
            }
        }
    }

    #[test]
    fn emit_refuses_a_small_buffer_and_writes_nothing() {
        let u = untagged(20);
        let mut out = [0x55u8; 37];
        assert_eq!(
            rewrite(&u, Egress::Tagged(Vid::MIN), &mut out),
            Err(RewriteError::BufferTooSmall(BufferTooSmall { needed: 38, available: 37 }))
        );
        assert!(out.iter().all(|&b| b == 0x55));
        assert_eq!(rewrite(&u[..3], Egress::Untagged, &mut out), Err(RewriteError::Frame(FrameError::Runt { len: 3 })));
    }

    #[test]
    fn macs() {
        assert!(Mac::BROADCAST.is_multicast() && Mac::BROADCAST.is_broadcast());
        assert!(!Mac::BROADCAST.is_valid_source());
        assert!(!Mac::ZERO.is_valid_source());
        assert!(!Mac([0x01, 0, 0x5e, 0, 0, 1]).is_valid_source());
        assert!(A.is_valid_source());
        assert!(Mac([0x01, 0x80, 0xc2, 0, 0, 0]).is_link_local());
        assert!(Mac([0x01, 0x80, 0xc2, 0, 0, 0x0f]).is_link_local());
        assert!(!Mac([0x01, 0x80, 0xc2, 0, 0, 0x10]).is_link_local());
        assert_eq!(std::format!("{A}"), "02:00:00:00:00:aa");
    }

    #[test]
    fn vids() {
        assert_eq!(Vid::new(0), None);
        assert_eq!(Vid::new(4095), None);
        assert_eq!(Vid::new(1), Some(Vid::MIN));
        assert_eq!(Vid::new(4094), Some(Vid::MAX));
    }
}
