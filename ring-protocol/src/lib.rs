//! Shared-memory rings between domains, hardened against a hostile peer.
//!
//! Every byte of guest I/O crosses one of these rings: a frontend in a
//! guest and a backend in dom0 share a few granted pages and an event
//! channel. The ring is both the hot path and a security boundary, so the
//! protocol is written down here as numbered rules; the code cites them and
//! the tests are named after them (`r4_...`).
//!
//! Two kinds of ring:
//! - **request/response rings** ([`Front`], [`Back`]), as in Xen's
//!   `io/ring.h`: the front writes requests, the back answers each with a
//!   response in a slot it already consumed, in any order, matched by id
//!   ([`Descriptor`], [`Completion`], [`IdTable`]);
//! - **stream rings** ([`StreamProducer`], [`StreamConsumer`]): one-way
//!   `T` elements, e.g. bytes for a console ([`ByteChannel`], two streams
//!   in one page, as Xen's `xencons_interface`).
//!
//! # Using a ring
//! The hypervisor maps the granted pages; wrap them in a [`SharedMem`]
//! (unsafe: you promise the mapping stays valid) and take an endpoint:
//!
//! ```no_run
//! use ring_protocol::{Back, Completion, Descriptor, Front, SharedMem, PAGE_SIZE};
//! # let (page_va, mapped_va) = (0usize, 0usize);
//! // Front (guest): allocate and zero nothing yourself; init does it.
//! // SAFETY: `page_va` is our page, kept mapped while the ring exists and
//! // used only through this endpoint.
//! let mem = unsafe { SharedMem::new(page_va as *mut u8, PAGE_SIZE) }?;
//! let mut front = Front::<Descriptor, Completion>::init(mem)?;
//! // ... grant the page, advertise the grant and the event channel ...
//!
//! // Back (dom0), after mapping the grant at `mapped_va`:
//! // SAFETY: the grant stays mapped while the endpoint exists.
//! let mem = unsafe { SharedMem::new(mapped_va as *mut u8, PAGE_SIZE) }?;
//! let mut back = Back::<Descriptor, Completion>::attach(mem)?;
//! # Ok::<(), ring_protocol::LayoutError>(())
//! ```
//!
//! A back's main loop:
//!
//! ```no_run
//! # use ring_protocol::*;
//! # fn serve(back: &mut Back<'_, Descriptor, Completion>, notify: impl Fn(), sleep: impl Fn())
//! #     -> Result<(), RingError> {
//! loop {
//!     while let Some(req) = back.pop_request()? {
//!         // Validate `req` (an allegation) and do the work...
//!         let _ = back.try_push(Completion { id: req.id, status: 0, len: req.len });
//!     }
//!     if back.push_and_check_notify()? {
//!         notify(); // event channel send
//!     }
//!     if !back.final_check_for_requests()? {
//!         sleep(); // block until the front's notification
//!     }
//! }
//! # }
//! ```
//!
//! The front's is symmetric:
//!
//! ```no_run
//! # use ring_protocol::*;
//! # fn drive(front: &mut Front<'_, Descriptor, Completion>, ids: &mut IdTable<u32, 128>,
//! #     notify: impl Fn(), sleep: impl Fn()) -> Result<(), RingError> {
//! loop {
//!     while let Some(rsp) = front.pop_response()? {
//!         // The id is an allegation too (R11).
//!         let Ok(_state) = ids.complete(rsp.id) else {
//!             front.poison(RingError::BadId { id: rsp.id });
//!             return Err(RingError::BadId { id: rsp.id });
//!         };
//!         // ... finish that request ...
//!     }
//!     // ... queue new requests: `ids.insert(state)` for the id, then `front.try_push` ...
//!     if front.push_and_check_notify()? {
//!         notify();
//!     }
//!     if !front.final_check_for_responses()? {
//!         sleep(); // block until the back's notification
//!     }
//! }
//! # }
//! ```
//!
//! Each inner `while` loop ends within `capacity` iterations whatever the
//! peer writes (R10).
//!
//! # Slot types
//! A slot holds any [`Pod`] type: the fixed-width integers, arrays of them,
//! [`Descriptor`] and [`Completion`], or your own `#[repr(C)]` struct that
//! derives [`zerocopy`]'s `FromBytes`, `IntoBytes`,
//! `Immutable` and `KnownLayout`. The derives prove at compile time what a
//! slot type needs (any bit pattern is valid, no padding), so you write no
//! `unsafe`. This crate re-exports zerocopy as `ring_protocol::zerocopy`,
//! so you need no dependency of your own; the derives then need
//! `#[zerocopy(crate = "ring_protocol::zerocopy")]` to find it (leave that
//! attribute out if you depend on zerocopy 0.8 yourself):
//!
//! ```
//! use ring_protocol::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
//! use ring_protocol::{Back, Front, SharedMem};
//!
//! /// A block request: 8 + 8 + 4 + 2 + 1 + 1 = 24 bytes, no padding.
//! #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug)]
//! #[zerocopy(crate = "ring_protocol::zerocopy")]
//! #[repr(C)]
//! struct BlkReq {
//!     id: u64,
//!     sector: u64,
//!     gref: u32,
//!     nr_sectors: u16,
//!     op: u8,
//!     flags: u8,
//! }
//!
//! #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug)]
//! #[zerocopy(crate = "ring_protocol::zerocopy")]
//! #[repr(C)]
//! struct BlkRsp {
//!     id: u64,
//!     status: i32,
//!     _reserved: u32, // explicit, so there is no padding to leak
//! }
//!
//! # #[repr(C, align(4096))] struct Page([u8; 4096]);
//! # let mut page = Page([0; 4096]);
//! # let p = page.0.as_mut_ptr();
//! // SAFETY: `page` outlives both endpoints and is only used through them.
//! let mut front = Front::<BlkReq, BlkRsp>::init(unsafe { SharedMem::new(p, 4096) }?)?;
//! let mut back = Back::<BlkReq, BlkRsp>::attach(unsafe { SharedMem::new(p, 4096) }?)?;
//!
//! front.try_push(BlkReq { id: 1, sector: 2048, gref: 9, nr_sectors: 8, op: 0, flags: 0 })?;
//! front.publish()?;
//! let req = back.pop_request()?.expect("one request");
//! back.try_push(BlkRsp { id: req.id, status: 0, _reserved: 0 })?;
//! back.publish()?;
//! assert_eq!(front.pop_response()?.map(|r| r.id), Some(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A struct with padding or with a field that does not accept every bit
//! pattern (`bool`, an enum, a reference) does not derive, so it cannot
//! cross a ring; see [`Pod`].
//!
//! # The protocol
//!
//! **R1 — Layout.** A ring occupies one region: `[header | slots]`. The
//! header ([`RingHeader`], [`StreamHeader`], offsets const-asserted) is 256
//! bytes: two index lines 128 bytes apart ([`INDEX_SPACING`]), each a
//! 64-byte cache line of its own that also does not share x86's 128-byte
//! adjacent-line prefetch pair with the other. Slot 0 starts at 256 rounded
//! up to the slot alignment; a slot is `max(size_of Req, size_of Rsp)` rounded up to the
//! larger alignment. The slot count is the largest power of two that fits
//! the region ([`ring_capacity`], [`stream_capacity`], like Xen's
//! `__RING_SIZE`); each side computes it from the length *it* mapped, never
//! from shared memory. The region must start on a cache line (pages do).
//!
//! **R2 — Who writes what.** Request/response ring: the front writes
//! `req_prod` and `rsp_event` and the request slots; the back writes
//! `rsp_prod` and `req_event` and the response slots. `req_prod` and
//! `req_event` share the index line at offset 0, `rsp_prod` and `rsp_event`
//! the one at offset 128, so the two directions never share a line. The front initialises the whole
//! region (zeroes, all producer indices equal, events one past them) before
//! granting it; the back takes `rsp_prod` as its starting index when it
//! attaches. Stream ring: the producer writes `prod`, `cons_event` (offset
//! 0) and the slots; the consumer writes `cons`, `prod_event` (offset 128):
//! each index line has a single writer.
//!
//! **R3 — Indices.** Indices are free-running `u32`; an index names slot
//! `index & (capacity - 1)`. All distances are wrapping differences, and
//! capacity is at most 2^31, so any index may start anywhere (tests start
//! near `u32::MAX`).
//!
//! **R4 — Validation.** Each read of the peer's index is checked before
//! use, and the checks bound everything that follows:
//! - back: `req_prod - req_cons <= capacity - (req_cons - rsp_prod)`, where
//!   `rsp_prod` counts the responses the back has *published* (no more
//!   requests than slots the front can know are free, and not behind
//!   `req_cons`). A slot holding a response the back wrote but has not
//!   published is not free: accepting a request there would read the
//!   back's own response back as a request, and let a hostile front keep
//!   the back's consume loop running forever (R10);
//! - front: `rsp_prod - rsp_cons <= req_prod - rsp_cons` (no more responses
//!   than requests outstanding);
//! - stream consumer: `prod - cons <= capacity - (cons - released)`;
//! - stream producer: `cons - cons_seen <= prod - cons_seen` (monotonic, not
//!   past what we published).
//!
//! Event indices are not checked: any value only changes whether the
//! *peer* is notified.
//!
//! **R5 — Publishing.** A producer writes slots, then stores its producer
//! index with `Release`, once per batch. The consumer loads that index with
//! `Acquire` before reading slots: this pair orders the slot writes before
//! the reads (Xen's `wmb` before the index write / `rmb` after the index
//! read).
//!
//! **R6 — Copying out.** Each slot is copied out of shared memory exactly
//! once, with one volatile read of the whole value, and only the copy is
//! used; nothing is ever read twice (XSA-155). No Rust reference into shared
//! memory is formed except `&AtomicU32` for index words; slots are only
//! read and written with volatile copies (each byte exactly once, in pieces
//! of up to 16 bytes) into our own memory. Slot types are [`Pod`]
//! (zerocopy's `FromBytes + IntoBytes`): any bit pattern is valid, so the
//! copy is a valid value whatever the peer wrote, and there is no padding,
//! so a copy in never leaks stale bytes of ours.
//!
//! **R7 — Slot reuse.** A slot is overwritten only after its previous
//! content was copied out. Request/response ring: the back writes a
//! response only into a slot whose request it consumed
//! (`rsp_prod_pvt < req_cons`), and consumes a request only from a slot
//! whose response it published (`req_prod - rsp_prod <= capacity`, R4); the
//! front writes a request only into a slot
//! whose response it consumed (`req_prod_pvt - rsp_cons < capacity`). The
//! back's request copy precedes its `Release` store of `rsp_prod`, which
//! pairs with the front's `Acquire` load of `rsp_prod` before it reuses the
//! slot. Stream: the consumer's copies precede its `Release` store of
//! `cons`, which pairs with the producer's `Acquire` load of `cons`.
//!
//! **R8 — Notification with hold-off.** After publishing (old → new), the
//! producer issues a full `SeqCst` fence and reads the consumer's event
//! index; it notifies iff `new - event < new - old` (wrapping), i.e. iff
//! the event lies in `(old, new]` (Xen's
//! `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
//!
//! **R9 — Final check before sleeping.** A consumer that found nothing
//! sets its event index to `cons + k` (`k = 1`, or `k > 1` to be woken only
//! after `k` more items), issues a full `SeqCst` fence, and re-reads the
//! producer index; it sleeps only if fewer than `k` items are there (Xen's
//! `RING_FINAL_CHECK_FOR_REQUESTS`). The R8 and R9 fences pair: in their
//! single total order one comes first, so either the consumer's re-read
//! sees the new producer index or the producer's read sees the new event.
//! No wake-up is lost. The final check first publishes the caller's own
//! pending work (responses written, requests written, stream elements
//! written, stream elements consumed but not released), with the R8 check:
//! a caller that sleeps on work it never published would wait for a peer
//! that is waiting for it. If that publish owes the peer a notification,
//! the final check returns `true` (do not sleep yet) and the next
//! `push_and_check_notify` / `release_and_check_notify` returns `true` (so
//! the documented loops notify, then check again); `publish` / `release`
//! drop the owed notification. `k > 1` is only for a consumer that knows `k` more
//! will come (the front waiting for its own outstanding responses, where
//! `k` is clamped to them) or that has another wake-up source.
//!
//! **R10 — Violations latch.** A failed R4 check returns a [`RingError`]
//! and latches the endpoint: every later call returns the same error and
//! touches nothing. Nothing the peer writes can cause a panic, an
//! out-of-bounds access (slot indices are masked, capacities are local) or
//! an unbounded loop (every loop is bounded by the capacity or by the
//! caller's input). In particular each consume loop shown in these docs
//! (`while let Some(..) = pop_*()?`, and the batch forms `requests()`,
//! `requests_up_to`, `serve_up_to`, `drain`) takes at most `capacity`
//! entries between two of the caller's own publishes, whatever the peer
//! writes in the meantime, and then ends with `None` or a latched error:
//! the back only takes requests in slots whose responses it published
//! (R4), the front only responses to requests it published, a stream
//! consumer only elements in space it released.
//!
//! **R11 — Ids.** Requests carry an id and responses may complete out of
//! order. The front maps ids back with an [`IdTable`], which accepts each
//! id exactly once; an unknown, duplicate or stale id is a violation, which
//! the front latches with `poison(RingError::BadId { id })`. An id is a
//! `u64`, `generation << b | index` with `b = ceil(log2 N)` index bits;
//! generations never wrap: an index whose generation runs out is retired
//! for good, so no id is ever issued twice and a stale id can never match
//! (the table issues at least 2^63 ids before it has none left). Descriptors
//! name data by grant reference, offset and length, never carry it; the
//! back validates them ([`Descriptor::checked_range`]).
//!
//! **R12 — Streams.** A stream is R1–R10 for one direction: the producer's
//! space is `capacity - (prod_pvt - cons_seen)`; the consumer releases space
//! by publishing `cons` (`Release`, R7) and notifies a producer waiting for
//! space by R8 on `cons`/`cons_event`; the producer waits for space by R9 on
//! `cons_event` (armed at `prod - capacity + n` for `n` free slots).
//!
//! **R13 — Taken means consumed.** An entry is consumed the moment it is
//! handed to the caller: returned by `pop_*`, yielded by a [`Drain`] (which
//! stores its progress when dropped, also while unwinding), or passed to the
//! handler of [`Back::serve_up_to`] (whose counters advance before the
//! handler runs and as each response is written). Caller code that panics,
//! with the panic caught (`std::panic::catch_unwind` in a hosted backend),
//! never causes an entry to be delivered twice; a request whose handler
//! panicked is consumed and unanswered. (Forgetting a `Drain` with
//! `mem::forget` skips its drop and leaves its entries unconsumed.)
//!
//! **R14 — No zero-sized slots.** A zero-sized slot type (`()`, `[u8; 0]`,
//! a field-less struct) has no layout: every generic entry point that
//! computes one (the ring and stream constructors, [`Layout::ring`],
//! [`Layout::stream`], [`ring_capacity`], [`stream_capacity`],
//! [`ring_bytes`], [`stream_bytes`]) refuses it at compile time with a
//! post-monomorphisation `const` assertion, and [`Layout::new`] returns
//! `None` for size 0. Nothing panics at run time:
//!
//! ```compile_fail,E0080
//! # use ring_protocol::*;
//! # #[repr(C, align(4096))] struct Page([u8; 4096]);
//! # let mut page = Page([0; 4096]);
//! # // SAFETY: `page` outlives the endpoint and is only used through it.
//! let mem = unsafe { SharedMem::new(page.0.as_mut_ptr(), 4096) }?;
//! let rx = StreamConsumer::<[u8; 0]>::attach(mem)?; // error[E0080]: zero-sized (R14)
//! # Ok::<(), LayoutError>(())
//! ```
//!
//! # Verification
//! - `cargo test -p ring-protocol`: unit tests, proptest state machines
//!   against a `VecDeque` model with random interleavings at both ends and
//!   indices crossing `u32::MAX` (no lost wake-up, spurious notifications
//!   counted), a hostile-peer model (`tests/hostile.rs`, including every
//!   documented consume loop driven against a peer that rewrites its
//!   producer index after each entry taken, R10), careless-caller tests
//!   (`tests/caller.rs`: panicking handlers, R13; final checks with
//!   unpublished work, R9), compile-fail doctests for zero-sized slot types
//!   (R14) and for slot types zerocopy refuses (padding, `bool`, no
//!   derives; see [`Pod`]), slot-type tests (`tests/slot_types.rs`: derived
//!   structs of every alignment cross a ring byte for byte, R6), and a
//!   two-thread stress test that checks every sequence number.
//! - `RUSTFLAGS="--cfg loom" cargo test -p ring-protocol --release --test loom`:
//!   loom explores every interleaving of the R8/R9 handshake (and checks the
//!   slot orderings of R5/R7), including a final check that must publish
//!   the caller's pending responses; one test weakens the fences and
//!   expects loom to find the lost wake-up.
//! - Miri is not run: the `miri` component is not installed for this
//!   machine's stable toolchain and no nightly toolchain can be fetched
//!   here. The unsafe code is confined to `mem.rs`: the `SharedMem`
//!   constructor and its `Send` impl, the index words (`AtomicU32::from_ptr`)
//!   and the volatile loads and stores of slot pieces and zeroed bytes,
//!   each with a `SAFETY` argument. Every other module is under
//!   `deny(unsafe_code)`; turning bytes into values and back is zerocopy's
//!   safe conversions ([`Pod`] is a safe trait implemented by derives).
//!
//! # Design notes
//! - Hot path: each side caches the peer's index. `pop_*` and the
//!   `*_up_to(max)` batch reads re-read the peer's producer index only when
//!   fewer entries are known than wanted (`requests()`/`responses()`/
//!   `drain()` read it once per call); a stream producer re-reads `cons`
//!   only when its cached free space runs out; a front never reads
//!   anything to find free slots (they depend on its own `rsp_cons`). A
//!   batch costs one `Release` store of the producer index and a read and
//!   clear of the endpoint's owed-notification flag (R9) (plus, with
//!   `push_and_check_notify`, one SeqCst fence and one load of the event
//!   index); `publish` skips the notification check for peers that poll.
//! - Slots are copied with volatile accesses in the widest pieces the type's
//!   alignment allows (16-byte SSE2 moves for cache-line descriptors), not
//!   one scalar access per field: still one read of each byte, ~25% faster
//!   on 64-byte descriptors than a volatile read of the whole struct. The
//!   pieces go into (and come from) a local value viewed as bytes with
//!   zerocopy's `as_mut_bytes`/`as_bytes`; the compiler keeps the copy a
//!   straight run of 16-byte moves.
//! - Unlike Xen's `xencons_interface`, stream rings have event indices and
//!   keep the two indices on separate cache lines.
#![no_std]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod desc;
mod error;
mod layout;
// The one module with `unsafe`: every access to shared memory (R6).
#[allow(unsafe_code)]
mod mem;
mod pod;
mod ring;
mod stream;
mod sync;

pub use desc::{Completion, Descriptor, IdError, IdTable, PAGE_SIZE};
pub use error::{PushError, RingError};
pub use layout::{
    ring_bytes, ring_capacity, stream_bytes, stream_capacity, Layout, CACHE_LINE, HEADER_SIZE, INDEX_SPACING,
    MAX_CAPACITY,
};
#[cfg(not(loom))]
pub use layout::{RingHeader, StreamHeader};
pub use mem::{LayoutError, SharedMem};
pub use pod::Pod;
pub use ring::{Back, Drain, Front};
pub use stream::{init_stream, ByteChannel, StreamConsumer, StreamProducer};
#[cfg(loom)]
pub use sync::LoomShadow;
/// zerocopy 0.8, the byte-view mechanism behind [`Pod`]: derive its traits
/// on your slot types without a dependency of your own (see
/// [Slot types](crate#slot-types)).
pub use zerocopy;

// Endpoints may move to another thread (a backend's worker): they hold
// offsets and plain integers, and `SharedMem` is `Send`.
const _: () = {
    const fn send<T: Send>() {}
    send::<Front<'static, Descriptor, Completion>>();
    send::<Back<'static, Descriptor, Completion>>();
    send::<StreamProducer<'static, u8>>();
    send::<StreamConsumer<'static, u8>>();
    send::<ByteChannel<'static>>();
};
