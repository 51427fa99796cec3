//! The device store (xenstore-like): the logic dom0 runs, with no I/O.
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
