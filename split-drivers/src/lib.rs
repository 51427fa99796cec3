//! The protocol logic shared by split-driver frontends and backends: pure
//! state machines and validators, no I/O, tested on the host.
//!
//! A split driver is a frontend in a domU and a backend in dom0, joined by
//! a `ring-protocol` ring in a granted page, an event channel, and a few
//! keys in the store. The guest SDK (`pvguest-sdk`) does the I/O (grants,
//! event channels, store reads, writes and watches); this crate decides
//! what to do:
//! - [`state`]: the connection handshake every frontend and backend runs
//!   (Xen's `XenbusState` numbering), as a [`state::Frontend`] and a
//!   [`state::Backend`] fed events and returning actions;
//! - [`blkif`]: the block protocol (Xen's `blkif.h` layout): requests built
//!   by the front, [`blkif::validate`]d by the back, answered, and checked
//!   against the front's [`blkif::Inflight`] shadow table;
//! - [`netif`]: the network protocol (Xen's `netif.h` layout): tx frames
//!   split into requests by the front's [`netif::TxInflight`] and
//!   reassembled and validated by the back's [`netif::TxAssembler`]; rx
//!   buffers posted by the front's [`netif::RxInflight`], filled through
//!   the back's [`netif::RxWriter`], and the responses checked by the front.
//!
//! Both peers are hostile to each other: every value that comes from the
//! other side (a state string, a request, a response) is an allegation, and
//! becomes trusted only through one function of this crate
//! ([`state::State::parse`], [`blkif::validate`], [`blkif::Inflight::complete`],
//! [`netif::TxAssembler::push`], [`netif::TxInflight::complete`],
//! [`netif::RxInflight::complete`]),
//! which never panics.
//!
//! # Example: a front builds a request, a back validates it
//! ```
//! use split_drivers::blkif::{self, Features, Inflight, Op, Piece, Request, Status, RING_SLOTS};
//!
//! // Front: 4 KiB from sector 2048 into two half pages granted as 7 and 9.
//! let mut inflight = Inflight::<RING_SLOTS>::with_salt(0x5eed);
//! let pieces = [Piece { gref: 7, offset: 2048, len: 2048 }, Piece { gref: 9, offset: 0, len: 2048 }];
//! let req = inflight.submit(Request::rw(Op::Read, 0, 2048, &pieces)?)?;
//! // ... push `req` on the ring, notify ...
//!
//! // Back: the request copied out of the ring is an allegation until validated.
//! let disk_sectors = 1 << 21; // 1 GiB
//! let valid = blkif::validate(&req, disk_sectors, &Features::default()).expect("valid");
//! assert_eq!(valid.op(), Op::Read);
//! assert_eq!(valid.sectors(), 8);
//! let seg = valid.segments()[0];
//! assert_eq!((seg.gref(), seg.range(), seg.sector()), (7, 2048..4096, 2048));
//! assert_eq!(valid.segments()[1].sector(), 2052);
//! // ... map the grants, do the I/O, then answer:
//! let rsp = valid.response(Status::Okay);
//!
//! // Front: the response is checked against the front's own record.
//! let done = inflight.complete(rsp)?;
//! assert_eq!((done.op, done.status), (Op::Read, Status::Okay));
//! assert_eq!(done.grants.as_slice(), [7, 9]); // end access to these first (rule G1)
//! assert!(inflight.complete(rsp).is_err()); // a second answer is refused
//!
//! // A hostile request is refused, and answered with an error.
//! let mut bad = req;
//! bad.seg[1].last_sect = 8; // past the page
//! let err = blkif::validate(&bad, disk_sectors, &Features::default()).unwrap_err();
//! assert_eq!(err.status(), Status::Error);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// `Display` as the variant's `Debug` form after a short context, and
/// `core::error::Error`, for the error types of the modules below (textual scope).
macro_rules! error_impls {
    ($($ty:ty => $what:literal),* $(,)?) => {$(
        impl core::fmt::Display for $ty {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!($what, ": {:?}"), self)
            }
        }
        impl core::error::Error for $ty {}
    )*};
}

pub mod blkif;
pub mod netif;
pub mod state;
