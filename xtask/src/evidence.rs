//! Evidence gathered on the host about what a guest did with its devices:
//! the contents of its disk image ([`pattern`]) and the answers of its
//! network services through QEMU's forward ([`udp`]).
//!
//! These never trust the guest's own report: a guest line says what it
//! claims to have done (which sectors, which seed), and the host checks the
//! image file or the datagrams itself.

pub mod pattern;
pub mod udp;
