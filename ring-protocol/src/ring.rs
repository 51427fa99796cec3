//! Request/response rings: [`Front`] and [`Back`] (R1–R11).
//!
//! The front (the guest's driver, e.g. blkfront) writes requests; the back
//! (dom0's blkback) consumes them and writes one response per request into
//! slots it has already consumed, in whatever order requests complete. Each
//! side keeps its own counters privately and trusts nothing it reads from
//! shared memory:
//!
//! | counter          | owner | meaning                                            |
//! |------------------|-------|----------------------------------------------------|
//! | `req_prod_pvt`   | front | requests written (maybe not yet published)         |
//! | `req_prod`       | front | requests published (our copy of the shared word)   |
//! | `rsp_cons`       | front | responses consumed                                 |
//! | `rsp_prod_seen`  | front | last *validated* shared `rsp_prod`                 |
//! | `req_cons`       | back  | requests consumed                                  |
//! | `req_prod_seen`  | back  | last *validated* shared `req_prod`                 |
//! | `rsp_prod_pvt`   | back  | responses written (maybe not yet published)        |
//! | `rsp_prod`       | back  | responses published                                |
//!
//! Invariants, all in wrapping `u32` arithmetic, `cap` the slot count:
//! - front: `rsp_cons <= rsp_prod_seen <= req_prod <= req_prod_pvt <= rsp_cons + cap`;
//! - back: `rsp_prod <= rsp_prod_pvt <= req_cons <= req_prod_seen <= rsp_prod + cap`.
//!
//! The back's bound is `rsp_prod + cap`, its *published* responses, not
//! `rsp_prod_pvt`: a slot whose response is written but unpublished still
//! belongs to the back (an honest front cannot have reused it, R7), so a
//! `req_prod` that claims it is a violation. This also bounds every consume
//! loop: between two publishes the back takes at most `cap` requests (R10).
//!
//! The only values read from shared memory are the peer's producer index
//! (validated before use, R4), the peer's event index (any value is
//! harmless: it only decides whether *the peer* gets a notification) and
//! slot contents (copied once, R6).

use core::marker::PhantomData;

use crate::layout::{off, Layout, HEADER_SIZE};
use crate::mem::{LayoutError, SharedMem, Slots};
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use crate::{Pod, PushError, RingError};

/// R8: publish producer index `new` (previously `old`), then tell whether
/// the consumer asked to be woken for an index in `(old, new]`.
///
/// The Release store pairs with the consumer's Acquire load of the same
/// word (R5). The SeqCst fence pairs with the consumer's fence in
/// [`arm_event`] (R9).
#[inline(always)]
pub(crate) fn publish_and_check(mem: &SharedMem<'_>, prod_off: usize, event_off: usize, old: u32, new: u32) -> bool {
    mem.index(prod_off).store(new, Release);
    mem.full_fence();
    let event = mem.index(event_off).load(Relaxed);
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// R9: ask to be woken once the producer index reaches `event`; the caller
/// then re-reads the producer index. The SeqCst fence pairs with the
/// producer's fence in [`publish_and_check`]: either the re-read sees the
/// producer's new index, or the producer sees this event value.
#[inline(always)]
pub(crate) fn arm_event(mem: &SharedMem<'_>, event_off: usize, event: u32) {
    mem.index(event_off).store(event, Relaxed);
    mem.full_fence();
}

/// Copies of the entries that were available when the iterator was made,
/// each slot read exactly once (R6), in order.
///
/// Consumption advances as items are taken: dropping the iterator early
/// leaves the rest unconsumed. For a stream consumer, taken items still
/// need a `release`.
pub struct Drain<'r, T: Pod> {
    mem: &'r SharedMem<'r>,
    slots: Slots,
    /// The endpoint's consumer counter, updated when the iterator drops.
    cons_out: &'r mut u32,
    cons: u32,
    end: u32,
    _item: PhantomData<T>,
}

impl<T: Pod> Iterator for Drain<'_, T> {
    type Item = T;

    #[inline(always)]
    fn next(&mut self) -> Option<T> {
        if self.cons == self.end {
            return None;
        }
        let item = self.slots.read::<T>(self.mem, self.cons);
        self.cons = self.cons.wrapping_add(1);
        Some(item)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end.wrapping_sub(self.cons) as usize;
        (n, Some(n))
    }
}

impl<T: Pod> ExactSizeIterator for Drain<'_, T> {}

impl<T: Pod> Drop for Drain<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        *self.cons_out = self.cons;
    }
}

impl<'r, T: Pod> Drain<'r, T> {
    /// Entries `[*cons, end)`; the caller has validated `end` (R4).
    #[inline(always)]
    pub(crate) fn new(mem: &'r SharedMem<'r>, slots: Slots, cons: &'r mut u32, end: u32) -> Self {
        Drain { mem, slots, cons: *cons, cons_out: cons, end, _item: PhantomData }
    }
}

/// Write items from `iter` into slots `pvt, pvt + 1, ...`, at most `free`
/// of them; returns how many were written. Pulls no item it cannot write.
#[inline(always)]
pub(crate) fn fill<T: Pod, I: Iterator<Item = T>>(
    mem: &SharedMem<'_>,
    slots: &Slots,
    pvt: u32,
    free: u32,
    iter: &mut I,
) -> u32 {
    let mut n = 0;
    while n < free {
        match iter.next() {
            Some(item) => {
                slots.write(mem, pvt.wrapping_add(n), item);
                n += 1;
            }
            None => break,
        }
    }
    n
}

/// The frontend's end of a request/response ring.
///
/// ```
/// # use ring_protocol::*;
/// # #[repr(C, align(4096))] struct Page([u8; 4096]);
/// # let mut page = Page([0; 4096]);
/// # let p = page.0.as_mut_ptr();
/// // SAFETY: `page` outlives both endpoints and is only used through them.
/// let mut front = Front::<Descriptor, Completion>::init(unsafe { SharedMem::new(p, 4096) }?)?;
/// let mut back = Back::<Descriptor, Completion>::attach(unsafe { SharedMem::new(p, 4096) }?)?;
///
/// front.try_push(Descriptor { id: 7, gref: 12, offset: 0, len: 512, op: 1, flags: 0 })?;
/// let notify = front.push_and_check_notify()?; // true: the back never slept yet
/// # assert!(notify);
///
/// while let Some(req) = back.pop_request()? {
///     back.try_push(Completion { id: req.id, status: 0, len: req.len })?;
/// }
/// back.push_and_check_notify()?;
///
/// let rsp = front.pop_response()?.unwrap();
/// assert_eq!(rsp.id, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Front<'a, Req: Pod, Rsp: Pod> {
    mem: SharedMem<'a>,
    slots: Slots,
    req_prod_pvt: u32,
    req_prod: u32,
    rsp_cons: u32,
    rsp_prod_seen: u32,
    /// A final check published requests the back must be told about (R9);
    /// the next `push_and_check_notify` reports it.
    notify_owed: bool,
    error: Option<RingError>,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<'a, Req: Pod, Rsp: Pod> Front<'a, Req, Rsp> {
    /// Initialise the shared region as an empty ring (Xen's
    /// `SHARED_RING_INIT` + `FRONT_RING_INIT`) and take the front's end.
    /// Call before granting the pages to the back.
    ///
    /// Zero-sized slot types do not compile (R14):
    /// ```compile_fail,E0080
    /// # use ring_protocol::*;
    /// # #[repr(C, align(4096))] struct Page([u8; 4096]);
    /// # let mut page = Page([0; 4096]);
    /// # // SAFETY: `page` outlives the endpoint and is only used through it.
    /// # let mem = unsafe { SharedMem::new(page.0.as_mut_ptr(), 4096) }?;
    /// let front = Front::<[u64; 0], u64>::init(mem)?;
    /// # Ok::<(), LayoutError>(())
    /// ```
    ///
    /// # Errors
    /// [`LayoutError`] if not even one slot fits or the region is not
    /// aligned for the slot types.
    pub fn init(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        Self::init_at(mem, 0)
    }

    /// Like [`Front::init`], but start all indices at `start` instead of 0.
    /// Nothing depends on indices starting at 0; tests use this to cross
    /// `u32::MAX` quickly.
    ///
    /// # Errors
    /// As [`Front::init`].
    pub fn init_at(mem: SharedMem<'a>, start: u32) -> Result<Self, LayoutError> {
        let layout = mem.check(Layout::ring::<Req, Rsp>(mem.len()))?;
        mem.zero_header_padding();
        mem.zero_from(HEADER_SIZE);
        mem.index(off::REQ_PROD).store(start, Release);
        mem.index(off::RSP_PROD).store(start, Release);
        mem.index(off::REQ_EVENT).store(start.wrapping_add(1), Release);
        mem.index(off::RSP_EVENT).store(start.wrapping_add(1), Release);
        Ok(Front {
            mem,
            slots: Slots::new(&layout),
            req_prod_pvt: start,
            req_prod: start,
            rsp_cons: start,
            rsp_prod_seen: start,
            notify_owed: false,
            error: None,
            _types: PhantomData,
        })
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// The latched error, if the back broke the protocol.
    pub fn error(&self) -> Option<RingError> {
        self.error
    }

    /// Latch `err` (for violations found above the ring, such as an
    /// unknown response id, R11). Keeps an earlier error if there is one.
    pub fn poison(&mut self, err: RingError) {
        self.error.get_or_insert(err);
    }

    #[inline(always)]
    fn ok(&self) -> Result<(), RingError> {
        match self.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    #[cold]
    fn latch(&mut self, err: RingError) -> RingError {
        *self.error.get_or_insert(err)
    }

    /// Slots free for new requests: `cap - (req_prod_pvt - rsp_cons)`.
    /// Depends on private counters only (R7), so it never touches shared
    /// memory.
    #[inline]
    pub fn free_requests(&self) -> u32 {
        self.capacity().saturating_sub(self.req_prod_pvt.wrapping_sub(self.rsp_cons))
    }

    /// Requests written whose responses we have not consumed.
    #[inline]
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Write one request into the next free slot without publishing it.
    ///
    /// # Errors
    /// [`PushError::Full`] if [`Front::free_requests`] is 0,
    /// [`PushError::Ring`] if latched.
    #[inline]
    pub fn try_push(&mut self, req: Req) -> Result<(), PushError> {
        self.ok()?;
        if self.free_requests() == 0 {
            return Err(PushError::Full);
        }
        self.slots.write(&self.mem, self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Write requests from `iter` until it ends or the ring is full, without
    /// publishing; returns how many were written. Items the ring has no room
    /// for stay in the iterator (pass `&mut iter` to keep them).
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn push_iter<I: IntoIterator<Item = Req>>(&mut self, iter: I) -> Result<u32, RingError> {
        self.ok()?;
        let n = fill(&self.mem, &self.slots, self.req_prod_pvt, self.free_requests(), &mut iter.into_iter());
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(n);
        Ok(n)
    }

    /// Publish every written request with one Release store (R5), then
    /// report whether the back must be notified (R8; Xen's
    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`). Also `true` if a final check
    /// published requests the back was waiting for and this is the first
    /// call since (R9).
    ///
    /// # Errors
    /// The latched [`RingError`] (nothing is published then).
    #[inline]
    pub fn push_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.ok()?;
        let owed = core::mem::take(&mut self.notify_owed);
        if self.req_prod_pvt == self.req_prod {
            return Ok(owed);
        }
        let old = self.req_prod;
        self.req_prod = self.req_prod_pvt;
        Ok(publish_and_check(&self.mem, off::REQ_PROD, off::REQ_EVENT, old, self.req_prod) | owed)
    }

    /// Publish every written request without the notification check (no
    /// fence). Only for a back that never sleeps (polls); otherwise use
    /// [`Front::push_and_check_notify`]. Drops a notification owed by a
    /// final check (R9): a polling back needs none.
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn publish(&mut self) -> Result<(), RingError> {
        self.ok()?;
        self.notify_owed = false;
        self.req_prod = self.req_prod_pvt;
        self.mem.index(off::REQ_PROD).store(self.req_prod, Release);
        Ok(())
    }

    /// Re-read and validate the back's `rsp_prod` (R4); returns how many
    /// responses are available.
    ///
    /// # Errors
    /// [`RingError::RspOverflow`] (latched) if the back claims more
    /// responses than requests we published.
    #[inline]
    pub fn poll_responses(&mut self) -> Result<u32, RingError> {
        self.ok()?;
        let prod = self.mem.index(off::RSP_PROD).load(Acquire);
        let avail = prod.wrapping_sub(self.rsp_cons);
        if avail > self.req_prod.wrapping_sub(self.rsp_cons) {
            return Err(self.latch(RingError::RspOverflow {
                rsp_prod: prod,
                rsp_cons: self.rsp_cons,
                req_prod: self.req_prod,
            }));
        }
        self.rsp_prod_seen = prod;
        Ok(avail)
    }

    /// Responses known to be available without reading shared memory.
    #[inline(always)]
    fn cached_responses(&self) -> u32 {
        self.rsp_prod_seen.wrapping_sub(self.rsp_cons)
    }

    /// Consume one response, re-reading `rsp_prod` only when every
    /// response seen before has been consumed.
    ///
    /// # Errors
    /// As [`Front::poll_responses`].
    #[inline]
    pub fn pop_response(&mut self) -> Result<Option<Rsp>, RingError> {
        self.ok()?;
        if self.cached_responses() == 0 && self.poll_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.slots.read::<Rsp>(&self.mem, self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Every response available now, as copies: one read of `rsp_prod`
    /// for the whole batch.
    ///
    /// # Errors
    /// As [`Front::poll_responses`].
    #[inline]
    pub fn responses(&mut self) -> Result<Drain<'_, Rsp>, RingError> {
        self.poll_responses()?;
        Ok(Drain::new(&self.mem, self.slots, &mut self.rsp_cons, self.rsp_prod_seen))
    }

    /// At most `max` available responses, as copies. Re-reads `rsp_prod`
    /// only if fewer than `max` are known to be available, so a consumer
    /// taking small batches does not touch the back's cache line each time.
    ///
    /// # Errors
    /// As [`Front::poll_responses`].
    #[inline]
    pub fn responses_up_to(&mut self, max: u32) -> Result<Drain<'_, Rsp>, RingError> {
        self.ok()?;
        let mut avail = self.cached_responses();
        if avail < max {
            avail = self.poll_responses()?;
        }
        let end = self.rsp_cons.wrapping_add(avail.min(max));
        Ok(Drain::new(&self.mem, self.slots, &mut self.rsp_cons, end))
    }

    /// R9 (Xen's `RING_FINAL_CHECK_FOR_RESPONSES`): call when out of
    /// responses, before sleeping. Returns `true` if a response is
    /// available (do not sleep); `false` means the back will be told to
    /// notify us for the next one.
    ///
    /// Requests written but not published are published first (R9): the
    /// back cannot answer what it cannot see. If the back must be notified
    /// of them, this returns `true` (do not sleep yet) and the next
    /// [`Front::push_and_check_notify`] returns `true`: notify, then check
    /// again.
    ///
    /// # Errors
    /// As [`Front::poll_responses`].
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        self.final_check_for_responses_batched(1)
    }

    /// R9 with batched wake-up: ask to be notified only once `k` responses
    /// are available. `k` is clamped to `1..=` the requests outstanding at
    /// the back, so the wake-up always comes once the back answers them.
    /// Returns `true` if `k` responses are already available.
    ///
    /// # Errors
    /// As [`Front::poll_responses`].
    pub fn final_check_for_responses_batched(&mut self, k: u32) -> Result<bool, RingError> {
        self.ok()?;
        if self.publish_before_sleeping() {
            return Ok(true);
        }
        let k = k.min(self.req_prod.wrapping_sub(self.rsp_cons)).max(1);
        if self.cached_responses() >= k || self.poll_responses()? >= k {
            return Ok(true);
        }
        arm_event(&self.mem, off::RSP_EVENT, self.rsp_cons.wrapping_add(k));
        Ok(self.poll_responses()? >= k)
    }

    /// R9: publish requests written but not published (with the R8 check);
    /// `true` while the back is owed a notification, which the caller must
    /// deliver (through [`Front::push_and_check_notify`]) before sleeping.
    fn publish_before_sleeping(&mut self) -> bool {
        if self.req_prod_pvt != self.req_prod {
            let old = self.req_prod;
            self.req_prod = self.req_prod_pvt;
            self.notify_owed |= publish_and_check(&self.mem, off::REQ_PROD, off::REQ_EVENT, old, self.req_prod);
        }
        self.notify_owed
    }
}

/// The backend's end of a request/response ring.
///
/// Consume requests, then answer each with one response (in any order:
/// responses carry the request's id). A response goes into a slot whose
/// request was already consumed, so [`Back::try_push`] fails with
/// [`PushError::Full`] only if every consumed request has been answered.
pub struct Back<'a, Req: Pod, Rsp: Pod> {
    mem: SharedMem<'a>,
    slots: Slots,
    req_cons: u32,
    req_prod_seen: u32,
    rsp_prod_pvt: u32,
    rsp_prod: u32,
    /// A final check published responses the front must be told about
    /// (R9); the next `push_and_check_notify` reports it.
    notify_owed: bool,
    error: Option<RingError>,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<'a, Req: Pod, Rsp: Pod> Back<'a, Req, Rsp> {
    /// Take the back's end of a ring the front initialised (Xen's
    /// `BACK_RING_ATTACH`): the current `rsp_prod` becomes our starting
    /// index. A hostile front can only choose where we start; every later
    /// `req_prod` is checked against it (R4).
    ///
    /// Zero-sized slot types do not compile (R14):
    /// ```compile_fail,E0080
    /// # use ring_protocol::*;
    /// # #[repr(C, align(4096))] struct Page([u8; 4096]);
    /// # let mut page = Page([0; 4096]);
    /// # // SAFETY: `page` outlives the endpoint and is only used through it.
    /// # let mem = unsafe { SharedMem::new(page.0.as_mut_ptr(), 4096) }?;
    /// let back = Back::<u64, [u32; 0]>::attach(mem)?;
    /// # Ok::<(), LayoutError>(())
    /// ```
    ///
    /// # Errors
    /// [`LayoutError`] if not even one slot fits or the region is not
    /// aligned for the slot types.
    pub fn attach(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        let layout = mem.check(Layout::ring::<Req, Rsp>(mem.len()))?;
        let start = mem.index(off::RSP_PROD).load(Acquire);
        Ok(Back {
            mem,
            slots: Slots::new(&layout),
            req_cons: start,
            req_prod_seen: start,
            rsp_prod_pvt: start,
            rsp_prod: start,
            notify_owed: false,
            error: None,
            _types: PhantomData,
        })
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// The latched error, if the front broke the protocol.
    pub fn error(&self) -> Option<RingError> {
        self.error
    }

    /// Latch `err` (for violations found above the ring, such as a
    /// descriptor that fails validation). Keeps an earlier error.
    pub fn poison(&mut self, err: RingError) {
        self.error.get_or_insert(err);
    }

    #[inline(always)]
    fn ok(&self) -> Result<(), RingError> {
        match self.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    #[cold]
    fn latch(&mut self, err: RingError) -> RingError {
        *self.error.get_or_insert(err)
    }

    /// Requests consumed but not yet answered: the number of responses we
    /// may still write.
    #[inline]
    pub fn unanswered(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Re-read and validate the front's `req_prod` (R4); returns how many
    /// requests are available.
    ///
    /// A request slot is free for the front only once the back has
    /// *published* the response written into it, so the bound is
    /// `req_prod - rsp_prod <= capacity`, not `req_prod - rsp_prod_pvt`:
    /// a front that claims a slot still holding one of our unpublished
    /// responses is refused, and a consume loop takes at most `capacity`
    /// requests between two publishes whatever the front writes (R10).
    ///
    /// # Errors
    /// [`RingError::ProdOverflow`] (latched) if the front claims more
    /// requests than free slots, or moved `req_prod` behind our consumer
    /// index.
    #[inline]
    pub fn poll_requests(&mut self) -> Result<u32, RingError> {
        self.ok()?;
        let prod = self.mem.index(off::REQ_PROD).load(Acquire);
        let avail = prod.wrapping_sub(self.req_cons);
        // `req_cons - rsp_prod <= cap` (invariant), so this only saturates
        // for a ring that is already full of our own entries.
        let limit = self.capacity().saturating_sub(self.req_cons.wrapping_sub(self.rsp_prod));
        if avail > limit {
            return Err(self.latch(RingError::ProdOverflow { prod, cons: self.req_cons, limit }));
        }
        self.req_prod_seen = prod;
        Ok(avail)
    }

    #[inline(always)]
    fn cached_requests(&self) -> u32 {
        self.req_prod_seen.wrapping_sub(self.req_cons)
    }

    /// Consume one request (Xen's `RING_COPY_REQUEST`), re-reading
    /// `req_prod` only when every request seen before has been consumed.
    ///
    /// # Errors
    /// As [`Back::poll_requests`].
    #[inline]
    pub fn pop_request(&mut self) -> Result<Option<Req>, RingError> {
        self.ok()?;
        if self.cached_requests() == 0 && self.poll_requests()? == 0 {
            return Ok(None);
        }
        let req = self.slots.read::<Req>(&self.mem, self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Every request available now, as copies: one read of `req_prod` for
    /// the whole batch.
    ///
    /// # Errors
    /// As [`Back::poll_requests`].
    #[inline]
    pub fn requests(&mut self) -> Result<Drain<'_, Req>, RingError> {
        self.poll_requests()?;
        Ok(Drain::new(&self.mem, self.slots, &mut self.req_cons, self.req_prod_seen))
    }

    /// At most `max` available requests, as copies. Re-reads `req_prod`
    /// only if fewer than `max` are known to be available.
    ///
    /// # Errors
    /// As [`Back::poll_requests`].
    #[inline]
    pub fn requests_up_to(&mut self, max: u32) -> Result<Drain<'_, Req>, RingError> {
        self.ok()?;
        let mut avail = self.cached_requests();
        if avail < max {
            avail = self.poll_requests()?;
        }
        let end = self.req_cons.wrapping_add(avail.min(max));
        Ok(Drain::new(&self.mem, self.slots, &mut self.req_cons, end))
    }

    /// Serve up to `max` requests in order, synchronously: copy each request
    /// out and write `f(request)` as its response into the next response
    /// slot (R7). Responses are not published; returns how many were served.
    /// Re-reads `req_prod` only if fewer than `max` are known. Backends that
    /// complete out of order use [`Back::pop_request`] and
    /// [`Back::try_push`] instead.
    ///
    /// R13: each request is consumed before `f` sees it, and each response
    /// counted as soon as it is written. If `f` panics and the caller
    /// catches the panic, the request `f` was handling is consumed and
    /// unanswered ([`Back::unanswered`] counts it: answer it with
    /// [`Back::try_push`]); it is never handed out again.
    ///
    /// # Errors
    /// As [`Back::poll_requests`].
    #[inline]
    pub fn serve_up_to(&mut self, max: u32, mut f: impl FnMut(Req) -> Rsp) -> Result<u32, RingError> {
        self.ok()?;
        let mut avail = self.cached_requests();
        if avail < max {
            avail = self.poll_requests()?;
        }
        let n = avail.min(max);
        for _ in 0..n {
            let req = self.slots.read::<Req>(&self.mem, self.req_cons);
            // R13: taken, so consumed, before the handler runs.
            self.req_cons = self.req_cons.wrapping_add(1);
            let rsp = f(req);
            // R7: `rsp_prod_pvt < req_cons`, so this slot's request is
            // already copied.
            self.slots.write(&self.mem, self.rsp_prod_pvt, rsp);
            self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        }
        Ok(n)
    }

    /// Write one response without publishing it.
    ///
    /// # Errors
    /// [`PushError::Full`] if every consumed request is answered already,
    /// [`PushError::Ring`] if latched.
    #[inline]
    pub fn try_push(&mut self, rsp: Rsp) -> Result<(), PushError> {
        self.ok()?;
        if self.unanswered() == 0 {
            return Err(PushError::Full);
        }
        self.slots.write(&self.mem, self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Write responses from `iter` until it ends or every consumed request
    /// is answered, without publishing; returns how many were written.
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn push_iter<I: IntoIterator<Item = Rsp>>(&mut self, iter: I) -> Result<u32, RingError> {
        self.ok()?;
        let n = fill(&self.mem, &self.slots, self.rsp_prod_pvt, self.unanswered(), &mut iter.into_iter());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(n);
        Ok(n)
    }

    /// Publish every written response with one Release store, then report
    /// whether the front must be notified (R8; Xen's
    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`). Also `true` if a final
    /// check published responses the front was waiting for and this is the
    /// first call since (R9).
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn push_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.ok()?;
        let owed = core::mem::take(&mut self.notify_owed);
        if self.rsp_prod_pvt == self.rsp_prod {
            return Ok(owed);
        }
        let old = self.rsp_prod;
        self.rsp_prod = self.rsp_prod_pvt;
        Ok(publish_and_check(&self.mem, off::RSP_PROD, off::RSP_EVENT, old, self.rsp_prod) | owed)
    }

    /// Publish every written response without the notification check. Only
    /// for a front that never sleeps. Drops a notification owed by a final
    /// check (R9): a polling front needs none.
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn publish(&mut self) -> Result<(), RingError> {
        self.ok()?;
        self.notify_owed = false;
        self.rsp_prod = self.rsp_prod_pvt;
        self.mem.index(off::RSP_PROD).store(self.rsp_prod, Release);
        Ok(())
    }

    /// R9 (Xen's `RING_FINAL_CHECK_FOR_REQUESTS`): call when out of
    /// requests, before sleeping. `true`: a request is available, do not
    /// sleep; `false`: the front will notify us for the next one.
    ///
    /// Responses written but not published are published first (R9): a
    /// front waiting for them would otherwise wait forever. If the front
    /// must be notified of them, this returns `true` (do not sleep yet) and
    /// the next [`Back::push_and_check_notify`] returns `true`: notify, then
    /// check again.
    ///
    /// # Errors
    /// As [`Back::poll_requests`].
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.final_check_for_requests_batched(1)
    }

    /// R9 with batched wake-up: ask to be notified only once `k` requests
    /// are available (Xen netback's `req_event = req_cons + needed`). `k` is
    /// clamped to `1..=` the slots the front can still fill. Only sound if
    /// the front will eventually publish `k` more (or something else wakes
    /// us, such as a timeout): a front that stops early is not noticed.
    ///
    /// # Errors
    /// As [`Back::poll_requests`].
    pub fn final_check_for_requests_batched(&mut self, k: u32) -> Result<bool, RingError> {
        self.ok()?;
        if self.publish_before_sleeping() {
            return Ok(true);
        }
        let room = self.capacity().saturating_sub(self.req_cons.wrapping_sub(self.rsp_prod));
        let k = k.min(room).max(1);
        if self.cached_requests() >= k || self.poll_requests()? >= k {
            return Ok(true);
        }
        arm_event(&self.mem, off::REQ_EVENT, self.req_cons.wrapping_add(k));
        Ok(self.poll_requests()? >= k)
    }

    /// R9: publish responses written but not published (with the R8
    /// check); `true` while the front is owed a notification, which the
    /// caller must deliver (through [`Back::push_and_check_notify`]) before
    /// sleeping.
    fn publish_before_sleeping(&mut self) -> bool {
        if self.rsp_prod_pvt != self.rsp_prod {
            let old = self.rsp_prod;
            self.rsp_prod = self.rsp_prod_pvt;
            self.notify_owed |= publish_and_check(&self.mem, off::RSP_PROD, off::RSP_EVENT, old, self.rsp_prod);
        }
        self.notify_owed
    }
}
