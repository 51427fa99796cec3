//! The device store (xenstore-like): the logic dom0 runs, with no I/O.
//!
//! A hierarchical tree of keys with per-domain permissions, watches,
//! transactions and quotas, spoken over Xen's `xs_wire` framing. The
//! transport (byte-stream rings, event channels) lives elsewhere: it feeds
//! a domain's request bytes to [`Store::feed`] and copies
//! [`Store::take_output`] into the domain's response ring. Nothing here
//! panics on any input, and one client can stall only itself.
//!
//! # Round trip
//! ```
//! use device_store::client::{Decoder, Reply, Request};
//! use device_store::{Config, DomId, Store};
//!
//! let mut store = Store::new(Config::default());
//! let guest = DomId::new(1);
//! store.introduce(guest); // creates /local/domain/1, owned by domain 1
//!
//! // The guest's SDK encodes requests into its request ring...
//! let mut ring = Vec::new();
//! Request::Write("name", b"vm1").encode(1, 0, &mut ring)?; // relative to its home
//! Request::Read("/local/domain/1/name").encode(2, 0, &mut ring)?;
//! Request::Read("/local/domain/0").encode(3, 0, &mut ring)?;
//!
//! // ...dom0's loop feeds them to the store and moves the replies back.
//! assert_eq!(store.feed(guest, &ring)?, ring.len());
//! let mut rsp = [0u8; 1024];
//! let n = store.take_output(guest, &mut rsp);
//!
//! let replies = Decoder::new().push_all(&rsp[..n]);
//! assert!(matches!(&replies[0], Ok(Reply::Ok { payload, .. }) if payload == b"OK\0"));
//! assert!(matches!(&replies[1], Ok(Reply::Ok { payload, .. }) if payload == b"vm1"));
//! assert!(matches!(
//!     &replies[2],
//!     Ok(Reply::Error { error: Some(device_store::XsError::Acces), .. })
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where validation happens
//! - Framing: [`wire::Framer`] (rules W1–W4), one per connection.
//! - Strings and arguments: [`wire::strings`], [`perms::Perms::parse`],
//!   [`perms::DomId::parse`], called by the dispatcher before any work.
//! - Paths: [`path::resolve`] (rules P1–P5) is the only way a client path
//!   becomes a node path.
//! - Permissions (rules A1–A3) and quotas (Q1–Q6, [`quota`]): in the tree
//!   operations, on the caller's domid, which the transport supplies (the
//!   ring it read from), never the client.
//!
//! # Error for each bad input
//! | input | error |
//! |---|---|
//! | header `len > PAYLOAD_MAX` | `E2BIG`, then the connection is broken ([`ConnError::Broken`]) |
//! | `len` over the payload quota | `E2BIG`, payload skipped, stream continues |
//! | unknown type, WATCH_EVENT/ERROR from a client | `EINVAL` |
//! | CONTROL, RESUME, SET_TARGET, RESTRICT | `ENOSYS` |
//! | unterminated or extra strings, bad path, domid, perms, offset, `T`/`F` | `EINVAL` |
//! | INTRODUCE, RELEASE, IS_DOMAIN_INTRODUCED from an unprivileged domain | `EACCES` |
//! | no permission; missing node under an unreadable ancestor | `EACCES` |
//! | missing node, watch, transaction id | `ENOENT` |
//! | unprivileged owner changes a node's owner | `EPERM` |
//! | duplicate watch | `EEXIST` |
//! | TRANSACTION_START inside a transaction | `EBUSY` |
//! | commit after a conflicting change | `EAGAIN` (nothing applied; retry) |
//! | any quota (nodes, value size, watches, transactions, transaction size) | `ENOSPC` |
//! | token over [`TOKEN_MAX`], listing over one payload | `E2BIG` |
//! | RM of `/` | `EINVAL` |
//!
//! # Bounds
//! Memory is bounded by the quotas ([`quota`] Q1–Q6): nodes by the per-domain
//! node quota (dom0 is trusted), each connection by one framed message, its
//! outbox, its watches and its transactions' overlays. Work per `feed` is
//! proportional to the bytes given plus the watches each change fires;
//! removing a subtree is proportional to its size.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod client;
pub mod path;
pub mod perms;
pub mod quota;
mod store;
pub mod wire;

pub use perms::{Access, DomId, PermEntry, Perms};
pub use quota::{Config, Quotas, TOKEN_MAX};
pub use store::{ConnError, ConnStats, Notice, Stats, Store};
pub use wire::{MsgType, XsError, PAYLOAD_MAX};
