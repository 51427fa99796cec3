//! One-way stream rings (R12): [`StreamProducer`] and [`StreamConsumer`],
//! and [`ByteChannel`], a console-style pair of byte streams.
//!
//! A stream carries `T: Pod` elements one way (bytes for a console, or
//! fixed-size records). Unlike a request/response ring, the consumer frees
//! space explicitly by publishing its consumer index `cons`, so both indices
//! are shared and both are validated:
//!
//! | counter      | owner    | meaning                                           |
//! |--------------|----------|---------------------------------------------------|
//! | `prod_pvt`   | producer | elements written (maybe not yet published)        |
//! | `prod`       | producer | elements published (our copy of the shared word)  |
//! | `cons_seen`  | producer | last *validated* shared `cons`                    |
//! | `cons`       | consumer | elements consumed (copied out)                    |
//! | `released`   | consumer | elements released (our copy of the shared `cons`) |
//! | `prod_seen`  | consumer | last *validated* shared `prod`                    |
//!
//! Invariants (wrapping `u32`, `cap` the element count):
//! - producer: `cons_seen <= prod <= prod_pvt <= cons_seen + cap`;
//! - consumer: `released <= cons <= prod_seen <= released + cap`.
//!
//! Hardening is the same as for request/response rings: each element is
//! copied once with a volatile read (R6), each index read is range-checked
//! (R4) and a violation latches the endpoint (R10).

use core::marker::PhantomData;

use crate::layout::{off, Layout, HEADER_SIZE};
use crate::mem::{LayoutError, SharedMem, Slots};
use crate::ring::{arm_event, fill, publish_and_check, Drain};
use crate::sync::Ordering::{Acquire, Release};
use crate::{Pod, PushError, RingError};

/// Initialise `mem` as an empty stream of `T` starting at index `start`:
/// zero it, set `prod = cons = start` and both events to `start + 1`. The
/// side that allocates the pages calls this once, before granting them.
///
/// A zero-sized `T` does not compile (R14):
/// ```compile_fail,E0080
/// # use ring_protocol::*;
/// # #[repr(C, align(4096))] struct Page([u8; 4096]);
/// # let mut page = Page([0; 4096]);
/// # // SAFETY: `page` outlives the endpoint and is only used through it.
/// # let mem = unsafe { SharedMem::new(page.0.as_mut_ptr(), 4096) }?;
/// init_stream::<[u8; 0]>(&mem, 0)?;
/// # Ok::<(), LayoutError>(())
/// ```
///
/// # Errors
/// [`LayoutError`] if not even one element fits or `mem` is misaligned.
pub fn init_stream<T: Pod>(mem: &SharedMem<'_>, start: u32) -> Result<(), LayoutError> {
    mem.check(Layout::stream::<T>(mem.len()))?;
    mem.zero_header_padding();
    mem.zero_from(HEADER_SIZE);
    mem.index(off::PROD).store(start, Release);
    mem.index(off::CONS).store(start, Release);
    mem.index(off::PROD_EVENT).store(start.wrapping_add(1), Release);
    mem.index(off::CONS_EVENT).store(start.wrapping_add(1), Release);
    Ok(())
}

/// The writing end of a one-way stream.
pub struct StreamProducer<'a, T: Pod> {
    mem: SharedMem<'a>,
    slots: Slots,
    prod_pvt: u32,
    prod: u32,
    cons_seen: u32,
    /// A final check published elements the consumer must be told about
    /// (R9); the next `push_and_check_notify` reports it.
    notify_owed: bool,
    error: Option<RingError>,
    _item: PhantomData<fn(T)>,
}

impl<'a, T: Pod> StreamProducer<'a, T> {
    /// [`init_stream`] at index 0, then [`StreamProducer::attach`].
    ///
    /// # Errors
    /// As [`init_stream`].
    pub fn init(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        init_stream::<T>(&mem, 0)?;
        Self::attach(mem)
    }

    /// Take the producing end of an initialised stream. We start at the
    /// shared `prod` and assume the ring is full until we have read and
    /// validated `cons`, so a peer that initialised garbage gains nothing.
    ///
    /// A zero-sized `T` does not compile (R14):
    /// ```compile_fail,E0080
    /// # use ring_protocol::*;
    /// # #[repr(C, align(4096))] struct Page([u8; 4096]);
    /// # let mut page = Page([0; 4096]);
    /// # // SAFETY: `page` outlives the endpoint and is only used through it.
    /// # let mem = unsafe { SharedMem::new(page.0.as_mut_ptr(), 4096) }?;
    /// let tx = StreamProducer::<[u32; 0]>::attach(mem)?;
    /// # Ok::<(), LayoutError>(())
    /// ```
    ///
    /// # Errors
    /// As [`init_stream`].
    pub fn attach(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        let layout = mem.check(Layout::stream::<T>(mem.len()))?;
        let start = mem.index(off::PROD).load(Acquire);
        Ok(StreamProducer {
            mem,
            slots: Slots::new(&layout),
            prod_pvt: start,
            prod: start,
            cons_seen: start.wrapping_sub(layout.capacity),
            notify_owed: false,
            error: None,
            _item: PhantomData,
        })
    }

    /// Number of elements the ring holds.
    pub fn capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// The latched error, if the consumer broke the protocol.
    pub fn error(&self) -> Option<RingError> {
        self.error
    }

    /// Latch `err`. Keeps an earlier error.
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

    #[inline(always)]
    fn cached_free(&self) -> u32 {
        self.capacity().saturating_sub(self.prod_pvt.wrapping_sub(self.cons_seen))
    }

    /// Re-read and validate the consumer's `cons` (R4); returns the free
    /// space.
    ///
    /// # Errors
    /// [`RingError::ConsOutOfRange`] (latched) if `cons` went backwards or
    /// past what we published.
    #[inline]
    pub fn poll_space(&mut self) -> Result<u32, RingError> {
        self.ok()?;
        let cons = self.mem.index(off::CONS).load(Acquire);
        if cons.wrapping_sub(self.cons_seen) > self.prod.wrapping_sub(self.cons_seen) {
            return Err(self.latch(RingError::ConsOutOfRange { cons, seen: self.cons_seen, prod: self.prod }));
        }
        self.cons_seen = cons;
        Ok(self.cached_free())
    }

    /// Free space, re-reading `cons` only if the cached value shows none.
    #[inline(always)]
    fn free(&mut self) -> Result<u32, RingError> {
        match self.cached_free() {
            0 => self.poll_space(),
            n => Ok(n),
        }
    }

    /// Write one element without publishing it.
    ///
    /// # Errors
    /// [`PushError::Full`] if the consumer has not released space,
    /// [`PushError::Ring`] if latched.
    #[inline]
    pub fn try_push(&mut self, item: T) -> Result<(), PushError> {
        self.ok()?;
        if self.free()? == 0 {
            return Err(PushError::Full);
        }
        self.slots.write(&self.mem, self.prod_pvt, item);
        self.prod_pvt = self.prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Write elements from `iter` until it ends or the ring is full, without
    /// publishing; returns how many were written.
    ///
    /// # Errors
    /// The latched [`RingError`], or one found re-reading `cons`.
    #[inline]
    pub fn push_iter<I: IntoIterator<Item = T>>(&mut self, iter: I) -> Result<u32, RingError> {
        self.ok()?;
        let mut iter = iter.into_iter();
        let mut total = 0;
        loop {
            let free = self.free()?;
            if free == 0 {
                return Ok(total);
            }
            let n = fill(&self.mem, &self.slots, self.prod_pvt, free, &mut iter);
            self.prod_pvt = self.prod_pvt.wrapping_add(n);
            total += n;
            if n < free {
                return Ok(total);
            }
        }
    }

    /// Copy as much of `items` as fits, without publishing; returns how
    /// many were written.
    ///
    /// # Errors
    /// As [`StreamProducer::push_iter`].
    #[inline]
    pub fn write(&mut self, items: &[T]) -> Result<usize, RingError> {
        self.push_iter(items.iter().copied()).map(|n| n as usize)
    }

    /// Publish everything written with one Release store, then report
    /// whether the consumer must be notified (R8). Also `true` if a final
    /// check published elements the consumer was waiting for and this is
    /// the first call since (R9).
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn push_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.ok()?;
        let owed = core::mem::take(&mut self.notify_owed);
        if self.prod_pvt == self.prod {
            return Ok(owed);
        }
        let old = self.prod;
        self.prod = self.prod_pvt;
        Ok(publish_and_check(&self.mem, off::PROD, off::PROD_EVENT, old, self.prod) | owed)
    }

    /// Publish without the notification check: only for a consumer that
    /// never sleeps. Drops a notification owed by a final check (R9).
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn publish(&mut self) -> Result<(), RingError> {
        self.ok()?;
        self.notify_owed = false;
        self.prod = self.prod_pvt;
        self.mem.index(off::PROD).store(self.prod, Release);
        Ok(())
    }

    /// R9 for space: call when the ring is too full, before sleeping.
    /// Returns `true` if `n` elements fit now; `false` means the consumer
    /// will notify us once they do (`n` is clamped to `1..=capacity`).
    ///
    /// Elements written but not published are published first (R9): the
    /// consumer cannot free space it cannot read. If the consumer must be
    /// notified of them, this returns `true` (do not sleep yet) and the next
    /// [`StreamProducer::push_and_check_notify`] returns `true`.
    ///
    /// # Errors
    /// As [`StreamProducer::poll_space`].
    pub fn final_check_for_space(&mut self, n: u32) -> Result<bool, RingError> {
        self.ok()?;
        if self.publish_before_sleeping() {
            return Ok(true);
        }
        let cap = self.capacity();
        let n = n.clamp(1, cap);
        if self.cached_free() >= n || self.poll_space()? >= n {
            return Ok(true);
        }
        // `n` free means cons >= prod_pvt - cap + n.
        arm_event(&self.mem, off::CONS_EVENT, self.prod_pvt.wrapping_sub(cap).wrapping_add(n));
        Ok(self.poll_space()? >= n)
    }

    /// R9: publish elements written but not published (with the R8 check);
    /// `true` while the consumer is owed a notification.
    fn publish_before_sleeping(&mut self) -> bool {
        if self.prod_pvt != self.prod {
            let old = self.prod;
            self.prod = self.prod_pvt;
            self.notify_owed |= publish_and_check(&self.mem, off::PROD, off::PROD_EVENT, old, self.prod);
        }
        self.notify_owed
    }
}

/// The reading end of a one-way stream.
pub struct StreamConsumer<'a, T: Pod> {
    mem: SharedMem<'a>,
    slots: Slots,
    cons: u32,
    released: u32,
    prod_seen: u32,
    /// A final check released space the producer must be told about (R9);
    /// the next `release_and_check_notify` reports it.
    notify_owed: bool,
    error: Option<RingError>,
    _item: PhantomData<fn() -> T>,
}

impl<'a, T: Pod> StreamConsumer<'a, T> {
    /// [`init_stream`] at index 0, then [`StreamConsumer::attach`].
    ///
    /// # Errors
    /// As [`init_stream`].
    pub fn init(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        init_stream::<T>(&mem, 0)?;
        Self::attach(mem)
    }

    /// Take the consuming end of an initialised stream, starting at the
    /// shared `cons`. Every `prod` is checked against it before use (R4).
    ///
    /// A zero-sized `T` does not compile (R14):
    /// ```compile_fail,E0080
    /// # use ring_protocol::*;
    /// # #[repr(C, align(4096))] struct Page([u8; 4096]);
    /// # let mut page = Page([0; 4096]);
    /// # // SAFETY: `page` outlives the endpoint and is only used through it.
    /// # let mem = unsafe { SharedMem::new(page.0.as_mut_ptr(), 4096) }?;
    /// let rx = StreamConsumer::<[u8; 0]>::attach(mem)?;
    /// # Ok::<(), LayoutError>(())
    /// ```
    ///
    /// # Errors
    /// As [`init_stream`].
    pub fn attach(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        let layout = mem.check(Layout::stream::<T>(mem.len()))?;
        let start = mem.index(off::CONS).load(Acquire);
        Ok(StreamConsumer {
            mem,
            slots: Slots::new(&layout),
            cons: start,
            released: start,
            prod_seen: start,
            notify_owed: false,
            error: None,
            _item: PhantomData,
        })
    }

    /// Number of elements the ring holds.
    pub fn capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// The latched error, if the producer broke the protocol.
    pub fn error(&self) -> Option<RingError> {
        self.error
    }

    /// Latch `err`. Keeps an earlier error.
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

    #[inline(always)]
    fn cached_available(&self) -> u32 {
        self.prod_seen.wrapping_sub(self.cons)
    }

    /// Re-read and validate the producer's `prod` (R4); returns how many
    /// elements are available.
    ///
    /// # Errors
    /// [`RingError::ProdOverflow`] (latched) if `prod` claims more than the
    /// space we released, or went behind our consumer index.
    #[inline]
    pub fn poll(&mut self) -> Result<u32, RingError> {
        self.ok()?;
        let prod = self.mem.index(off::PROD).load(Acquire);
        let avail = prod.wrapping_sub(self.cons);
        let limit = self.capacity().saturating_sub(self.cons.wrapping_sub(self.released));
        if avail > limit {
            return Err(self.latch(RingError::ProdOverflow { prod, cons: self.cons, limit }));
        }
        self.prod_seen = prod;
        Ok(avail)
    }

    /// Consume one element (it still needs a `release`).
    ///
    /// # Errors
    /// As [`StreamConsumer::poll`].
    #[inline]
    pub fn pop(&mut self) -> Result<Option<T>, RingError> {
        self.ok()?;
        if self.cached_available() == 0 && self.poll()? == 0 {
            return Ok(None);
        }
        let item = self.slots.read::<T>(&self.mem, self.cons);
        self.cons = self.cons.wrapping_add(1);
        Ok(Some(item))
    }

    /// Every element available now, as copies (they still need a
    /// `release`): one read of `prod` for the whole batch.
    ///
    /// # Errors
    /// As [`StreamConsumer::poll`].
    #[inline]
    pub fn drain(&mut self) -> Result<Drain<'_, T>, RingError> {
        self.poll()?;
        Ok(Drain::new(&self.mem, self.slots, &mut self.cons, self.prod_seen))
    }

    /// At most `max` available elements, as copies (they still need a
    /// `release`). Re-reads `prod` only if fewer than `max` are known to be
    /// available.
    ///
    /// # Errors
    /// As [`StreamConsumer::poll`].
    #[inline]
    pub fn drain_up_to(&mut self, max: u32) -> Result<Drain<'_, T>, RingError> {
        self.ok()?;
        let mut avail = self.cached_available();
        if avail < max {
            avail = self.poll()?;
        }
        let end = self.cons.wrapping_add(avail.min(max));
        Ok(Drain::new(&self.mem, self.slots, &mut self.cons, end))
    }

    /// Copy up to `out.len()` available elements into `out`; returns how
    /// many. They still need a `release`.
    ///
    /// # Errors
    /// As [`StreamConsumer::poll`].
    #[inline]
    pub fn read(&mut self, out: &mut [T]) -> Result<usize, RingError> {
        let max = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let mut n = 0;
        for (dst, src) in out.iter_mut().zip(self.drain_up_to(max)?) {
            *dst = src;
            n += 1;
        }
        Ok(n)
    }

    /// Publish our consumer index with one Release store (R7: it orders our
    /// slot copies before the producer may overwrite them), then report
    /// whether the producer is waiting for the space (R8). Also `true` if a
    /// final check released space the producer was waiting for and this is
    /// the first call since (R9).
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn release_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.ok()?;
        let owed = core::mem::take(&mut self.notify_owed);
        if self.cons == self.released {
            return Ok(owed);
        }
        let old = self.released;
        self.released = self.cons;
        Ok(publish_and_check(&self.mem, off::CONS, off::CONS_EVENT, old, self.cons) | owed)
    }

    /// Publish our consumer index without the notification check: only for
    /// a producer that never sleeps. Drops a notification owed by a final
    /// check (R9).
    ///
    /// # Errors
    /// The latched [`RingError`].
    #[inline]
    pub fn release(&mut self) -> Result<(), RingError> {
        self.ok()?;
        self.notify_owed = false;
        self.released = self.cons;
        self.mem.index(off::CONS).store(self.cons, Release);
        Ok(())
    }

    /// R9: call when out of data, before sleeping. `true`: data is
    /// available; `false`: the producer will notify us for the next element.
    ///
    /// Elements consumed but not released are released first (R9): a
    /// producer waiting for that space would otherwise wait forever. If the
    /// producer must be notified, this returns `true` (do not sleep yet) and
    /// the next [`StreamConsumer::release_and_check_notify`] returns `true`.
    ///
    /// # Errors
    /// As [`StreamConsumer::poll`].
    pub fn final_check(&mut self) -> Result<bool, RingError> {
        self.final_check_batched(1)
    }

    /// R9 with batched wake-up: be notified only once `k` elements are
    /// available (`k` clamped to `1..=` the space we released). Only sound if
    /// the producer will publish `k` more or something else wakes us.
    ///
    /// # Errors
    /// As [`StreamConsumer::poll`].
    pub fn final_check_batched(&mut self, k: u32) -> Result<bool, RingError> {
        self.ok()?;
        if self.release_before_sleeping() {
            return Ok(true);
        }
        let room = self.capacity().saturating_sub(self.cons.wrapping_sub(self.released));
        let k = k.min(room).max(1);
        if self.cached_available() >= k || self.poll()? >= k {
            return Ok(true);
        }
        arm_event(&self.mem, off::PROD_EVENT, self.cons.wrapping_add(k));
        Ok(self.poll()? >= k)
    }

    /// R9: release elements consumed but not released (with the R8 check);
    /// `true` while the producer is owed a notification.
    fn release_before_sleeping(&mut self) -> bool {
        if self.cons != self.released {
            let old = self.released;
            self.released = self.cons;
            self.notify_owed |= publish_and_check(&self.mem, off::CONS, off::CONS_EVENT, old, self.cons);
        }
        self.notify_owed
    }
}

/// A console-style bidirectional byte channel in one region (Xen's
/// `xencons_interface`, with event indices and the hardening above): the
/// first half of the region is the stream from the front (guest) to the
/// back, the second half the stream from the back to the front. One 4 KiB
/// page gives 1920 bytes per direction, rounded down to 1024.
pub struct ByteChannel<'a> {
    /// Bytes we send.
    pub tx: StreamProducer<'a, u8>,
    /// Bytes we receive.
    pub rx: StreamConsumer<'a, u8>,
}

impl<'a> ByteChannel<'a> {
    fn halves(mem: SharedMem<'a>) -> Result<(SharedMem<'a>, SharedMem<'a>), LayoutError> {
        let half = (mem.len() / 2) & !(crate::layout::CACHE_LINE - 1);
        mem.split_at(half)
    }

    /// Initialise both streams and take the front's end (transmits on the
    /// first half).
    ///
    /// # Errors
    /// [`LayoutError`] if a half cannot hold a stream.
    pub fn front_init(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        let (out, inp) = Self::halves(mem)?;
        Ok(ByteChannel { tx: StreamProducer::init(out)?, rx: StreamConsumer::init(inp)? })
    }

    /// Take the front's end of a channel someone else initialised (a
    /// console page the domain builder prepared): transmits on the first
    /// half. Every index is validated as for any attach.
    ///
    /// # Errors
    /// [`LayoutError`] if a half cannot hold a stream.
    pub fn front_attach(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        let (out, inp) = Self::halves(mem)?;
        Ok(ByteChannel { tx: StreamProducer::attach(out)?, rx: StreamConsumer::attach(inp)? })
    }

    /// Take the back's end of a channel the front initialised (transmits on
    /// the second half).
    ///
    /// # Errors
    /// [`LayoutError`] if a half cannot hold a stream.
    pub fn back_attach(mem: SharedMem<'a>) -> Result<Self, LayoutError> {
        let (out, inp) = Self::halves(mem)?;
        Ok(ByteChannel { tx: StreamProducer::attach(inp)?, rx: StreamConsumer::attach(out)? })
    }
}
