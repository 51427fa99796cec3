//! The measured cases. Each function runs one measurement on two fresh
//! threads and returns the elapsed wall time (and, for notification runs,
//! the counts). Every consumer checks every item's sequence number and folds
//! all of its words into a sink, so no queue can skip reading what it moved.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use ring_protocol::zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use ring_protocol::{ring_bytes, stream_bytes, Back, Front, SharedMem, StreamConsumer, StreamProducer};

/// Slots in every queue.
pub const CAPACITY: usize = 1024;

/// A 64-byte, cache-line aligned descriptor. A slot type (`Pod`) by
/// zerocopy's derives, through ring-protocol's re-export: they check that
/// there is no padding (8 + 4 + 4 + 4 + 2 + 2 + 40 = 64 = size) and that
/// every field accepts any bit pattern.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[zerocopy(crate = "ring_protocol::zerocopy")]
pub struct Desc64 {
    seq: u64,
    gref: u32,
    offset: u32,
    len: u32,
    op: u16,
    flags: u16,
    extra: [u64; 5],
}

const _: () = assert!(std::mem::size_of::<Desc64>() == 64);

impl Desc64 {
    #[inline(always)]
    fn new(seq: u64) -> Self {
        Desc64 { seq, gref: seq as u32, offset: 0, len: 4096, op: 1, flags: 0, extra: [seq; 5] }
    }

    /// Check the sequence number and fold every word into `sink`.
    #[inline(always)]
    fn check(&self, expect: u64, sink: &mut u64) {
        assert_eq!(self.seq, expect, "item out of sequence");
        *sink = sink.wrapping_add(
            self.seq
                ^ u64::from(self.gref)
                ^ u64::from(self.offset) << 32
                ^ u64::from(self.len)
                ^ u64::from(self.op) << 16
                ^ u64::from(self.flags) << 48
                ^ self.extra.iter().fold(0, |a, &e| a ^ e),
        );
    }
}

/// Page-aligned heap memory standing in for the shared pages.
pub struct Pages {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: plain heap memory, shared between the two threads only through
// ring endpoints.
unsafe impl Sync for Pages {}

impl Pages {
    fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes.next_multiple_of(4096), 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Pages { ptr, layout }
    }

    fn mem(&self) -> SharedMem<'_> {
        // SAFETY: the allocation outlives the borrow and is only used
        // through the endpoints made from it.
        unsafe { SharedMem::new(self.ptr, self.layout.size()) }.unwrap()
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// Run `a` and `b` on two threads released together; the time from the
/// first start to the last end, measured on the workers themselves (the
/// spawning thread may not even be scheduled: there are only 2 cores).
fn timed<A, B>(a: A, b: B) -> Duration
where
    A: FnOnce() + Send,
    B: FnOnce() + Send,
{
    let go = Barrier::new(2);
    thread::scope(|s| {
        let ha = s.spawn(|| {
            go.wait();
            let start = Instant::now();
            a();
            (start, Instant::now())
        });
        let hb = s.spawn(|| {
            go.wait();
            let start = Instant::now();
            b();
            (start, Instant::now())
        });
        let (sa, ea) = ha.join().unwrap();
        let (sb, eb) = hb.join().unwrap();
        ea.max(eb) - sa.min(sb)
    })
}

/// The queues compared one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// Our stream ring, publishing without the notification check.
    Ours,
    /// Our stream ring with `push_and_check_notify` on every batch.
    OursEvt,
    Rtrb,
    ArrayQueue,
    Heapless,
}

impl Candidate {
    pub const ALL: [Candidate; 5] =
        [Candidate::Ours, Candidate::OursEvt, Candidate::Rtrb, Candidate::ArrayQueue, Candidate::Heapless];

    pub fn name(self) -> &'static str {
        match self {
            Candidate::Ours => "ring-protocol",
            Candidate::OursEvt => "ring-protocol+evt",
            Candidate::Rtrb => "rtrb",
            Candidate::ArrayQueue => "crossbeam ArrayQueue",
            Candidate::Heapless => "heapless spsc",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Candidate::Ours => "ring_protocol",
            Candidate::OursEvt => "ring_protocol_evt",
            Candidate::Rtrb => "rtrb",
            Candidate::ArrayQueue => "crossbeam_array_queue",
            Candidate::Heapless => "heapless_spsc",
        }
    }
}

/// One-way throughput: `n` items, producer batches of `batch`, consumer
/// takes at most `batch` per round.
pub fn one_way(q: Candidate, n: u64, batch: usize) -> Duration {
    match q {
        Candidate::Ours => one_way_ours(n, batch, false),
        Candidate::OursEvt => one_way_ours(n, batch, true),
        Candidate::Rtrb => one_way_rtrb(n, batch),
        Candidate::ArrayQueue => one_way_array_queue(n),
        Candidate::Heapless => one_way_heapless(n),
    }
}

fn one_way_ours(n: u64, batch: usize, evt: bool) -> Duration {
    let pages = Pages::new(stream_bytes::<Desc64>(CAPACITY as u32));
    let mut tx = StreamProducer::<Desc64>::init(pages.mem()).unwrap();
    let mut rx = StreamConsumer::<Desc64>::attach(pages.mem()).unwrap();
    assert_eq!(tx.capacity() as usize, CAPACITY);
    let b = batch as u64;
    timed(
        move || {
            let mut seq = 0;
            while seq < n {
                let want = b.min(n - seq);
                let pushed = u64::from(tx.push_iter((seq..seq + want).map(Desc64::new)).unwrap());
                if pushed == 0 {
                    spin_loop();
                    continue;
                }
                seq += pushed;
                if evt {
                    black_box(tx.push_and_check_notify().unwrap());
                } else {
                    tx.publish().unwrap();
                }
            }
        },
        move || {
            let mut expect = 0;
            let mut sink = 0;
            while expect < n {
                let before = expect;
                for d in rx.drain_up_to(batch as u32).unwrap() {
                    d.check(expect, &mut sink);
                    expect += 1;
                }
                if expect == before {
                    spin_loop();
                    continue;
                }
                if evt {
                    black_box(rx.release_and_check_notify().unwrap());
                } else {
                    rx.release().unwrap();
                }
            }
            black_box(sink);
        },
    )
}

fn one_way_rtrb(n: u64, batch: usize) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<Desc64>::new(CAPACITY);
    timed(
        move || {
            let mut seq = 0;
            while seq < n {
                let want = (batch as u64).min(n - seq) as usize;
                let chunk = match tx.write_chunk_uninit(want) {
                    Ok(c) => c,
                    Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => {
                        spin_loop();
                        continue;
                    }
                    Err(rtrb::chunks::ChunkError::TooFewSlots(k)) => tx.write_chunk_uninit(k).unwrap(),
                };
                let k = chunk.len() as u64;
                chunk.fill_from_iter((seq..seq + k).map(Desc64::new));
                seq += k;
            }
        },
        move || {
            let mut expect = 0;
            let mut sink = 0;
            while expect < n {
                let chunk = match rx.read_chunk(batch) {
                    Ok(c) => c,
                    Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => {
                        spin_loop();
                        continue;
                    }
                    Err(rtrb::chunks::ChunkError::TooFewSlots(k)) => rx.read_chunk(k).unwrap(),
                };
                for d in chunk {
                    d.check(expect, &mut sink);
                    expect += 1;
                }
            }
            black_box(sink);
        },
    )
}

fn one_way_array_queue(n: u64) -> Duration {
    let q = crossbeam_queue::ArrayQueue::<Desc64>::new(CAPACITY);
    let q = &q;
    timed(
        move || {
            for seq in 0..n {
                let mut d = Desc64::new(seq);
                while let Err(back) = q.push(d) {
                    d = back;
                    spin_loop();
                }
            }
        },
        move || {
            let mut expect = 0;
            let mut sink = 0;
            while expect < n {
                match q.pop() {
                    Some(d) => {
                        d.check(expect, &mut sink);
                        expect += 1;
                    }
                    None => spin_loop(),
                }
            }
            black_box(sink);
        },
    )
}

fn one_way_heapless(n: u64) -> Duration {
    // heapless 0.8 holds N - 1 items: 1023 here.
    let mut q: Box<heapless::spsc::Queue<Desc64, CAPACITY>> = Box::default();
    let (mut tx, mut rx) = q.split();
    timed(
        move || {
            for seq in 0..n {
                let mut d = Desc64::new(seq);
                while let Err(back) = tx.enqueue(d) {
                    d = back;
                    spin_loop();
                }
            }
        },
        move || {
            let mut expect = 0;
            let mut sink = 0;
            while expect < n {
                match rx.dequeue() {
                    Some(d) => {
                        d.check(expect, &mut sink);
                        expect += 1;
                    }
                    None => spin_loop(),
                }
            }
            black_box(sink);
        },
    )
}

/// Request/response throughput: `n` requests in batches of `batch`, each
/// answered by a response carrying the same sequence number. Ours uses one
/// ring (responses reuse the request slots); rtrb uses a pair of queues.
pub fn req_rsp(ours: bool, n: u64, batch: usize) -> Duration {
    if ours {
        req_rsp_ours(n, batch)
    } else {
        req_rsp_rtrb(n, batch)
    }
}

fn req_rsp_ours(n: u64, batch: usize) -> Duration {
    let pages = Pages::new(ring_bytes::<Desc64, Desc64>(CAPACITY as u32));
    let mut front = Front::<Desc64, Desc64>::init(pages.mem()).unwrap();
    let mut back = Back::<Desc64, Desc64>::attach(pages.mem()).unwrap();
    assert_eq!(front.capacity() as usize, CAPACITY);
    let b = batch as u64;
    timed(
        move || {
            let (mut seq, mut expect, mut sink) = (0, 0, 0);
            while expect < n {
                let want = b.min(n - seq);
                if want > 0 {
                    let k = u64::from(front.push_iter((seq..seq + want).map(Desc64::new)).unwrap());
                    if k > 0 {
                        seq += k;
                        front.publish().unwrap();
                    }
                }
                for d in front.responses_up_to(batch as u32).unwrap() {
                    d.check(expect, &mut sink);
                    expect += 1;
                }
            }
            black_box(sink);
        },
        move || {
            let mut served = 0;
            while served < n {
                let k = back.serve_up_to(batch as u32, |d| d).unwrap();
                if k == 0 {
                    spin_loop();
                    continue;
                }
                served += u64::from(k);
                back.publish().unwrap();
            }
        },
    )
}

fn req_rsp_rtrb(n: u64, batch: usize) -> Duration {
    use rtrb::chunks::ChunkError::TooFewSlots;
    let (mut req_tx, mut req_rx) = rtrb::RingBuffer::<Desc64>::new(CAPACITY);
    let (mut rsp_tx, mut rsp_rx) = rtrb::RingBuffer::<Desc64>::new(CAPACITY);
    timed(
        move || {
            let (mut seq, mut expect, mut sink) = (0u64, 0u64, 0u64);
            while expect < n {
                // At most CAPACITY outstanding, as on a shared ring.
                let room = CAPACITY as u64 - (seq - expect);
                let want = (batch as u64).min(n - seq).min(room) as usize;
                if want > 0 {
                    let chunk = match req_tx.write_chunk_uninit(want) {
                        Ok(c) => Some(c),
                        Err(TooFewSlots(0)) => None,
                        Err(TooFewSlots(k)) => Some(req_tx.write_chunk_uninit(k).unwrap()),
                    };
                    if let Some(chunk) = chunk {
                        let k = chunk.len() as u64;
                        chunk.fill_from_iter((seq..seq + k).map(Desc64::new));
                        seq += k;
                    }
                }
                let chunk = match rsp_rx.read_chunk(batch) {
                    Ok(c) => Some(c),
                    Err(TooFewSlots(0)) => None,
                    Err(TooFewSlots(k)) => Some(rsp_rx.read_chunk(k).unwrap()),
                };
                for d in chunk.into_iter().flatten() {
                    d.check(expect, &mut sink);
                    expect += 1;
                }
            }
            black_box(sink);
        },
        move || {
            let mut served = 0u64;
            while served < n {
                let chunk = match req_rx.read_chunk(batch) {
                    Ok(c) => c,
                    Err(TooFewSlots(0)) => {
                        spin_loop();
                        continue;
                    }
                    Err(TooFewSlots(k)) => req_rx.read_chunk(k).unwrap(),
                };
                let k = chunk.len();
                // Room is guaranteed: the front keeps at most CAPACITY outstanding.
                let out = rsp_tx.write_chunk_uninit(k).unwrap();
                out.fill_from_iter(chunk);
                served += k as u64;
            }
        },
    )
}

/// Round trips with one request in flight: the front sends a request and
/// spins for its response; the back spins for the request and answers.
pub fn round_trip(ours: bool, n: u64) -> Duration {
    if ours {
        let pages = Pages::new(ring_bytes::<Desc64, Desc64>(CAPACITY as u32));
        let mut front = Front::<Desc64, Desc64>::init(pages.mem()).unwrap();
        let mut back = Back::<Desc64, Desc64>::attach(pages.mem()).unwrap();
        timed(
            move || {
                let mut sink = 0;
                for seq in 0..n {
                    front.try_push(Desc64::new(seq)).unwrap();
                    front.publish().unwrap();
                    loop {
                        if let Some(d) = front.pop_response().unwrap() {
                            d.check(seq, &mut sink);
                            break;
                        }
                        spin_loop();
                    }
                }
                black_box(sink);
            },
            move || {
                let mut served = 0;
                while served < n {
                    if back.serve_up_to(1, |d| d).unwrap() == 1 {
                        back.publish().unwrap();
                        served += 1;
                    } else {
                        spin_loop();
                    }
                }
            },
        )
    } else {
        let (mut req_tx, mut req_rx) = rtrb::RingBuffer::<Desc64>::new(CAPACITY);
        let (mut rsp_tx, mut rsp_rx) = rtrb::RingBuffer::<Desc64>::new(CAPACITY);
        timed(
            move || {
                let mut sink = 0;
                for seq in 0..n {
                    req_tx.push(Desc64::new(seq)).unwrap();
                    loop {
                        if let Ok(d) = rsp_rx.pop() {
                            d.check(seq, &mut sink);
                            break;
                        }
                        spin_loop();
                    }
                }
                black_box(sink);
            },
            move || {
                let mut served = 0;
                while served < n {
                    if let Ok(d) = req_rx.pop() {
                        rsp_tx.push(d).unwrap();
                        served += 1;
                    } else {
                        spin_loop();
                    }
                }
            },
        )
    }
}

/// Notification counts of one request/response run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Notifications {
    /// Front to back (requests published while the back slept).
    pub to_back: u64,
    /// Back to front.
    pub to_front: u64,
}

/// An event channel: `ring` sets the pending flag, `wait` spins until it is
/// set and clears it (a real guest would block in the hypervisor).
struct Doorbell(AtomicBool);

impl Doorbell {
    fn ring(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn wait(&self) {
        while !self.0.swap(false, Ordering::Acquire) {
            spin_loop();
        }
    }
}

/// Batched wake-up threshold used with hold-off.
pub const WAKE_BATCH: u32 = 32;

/// Request/response run with sleeping peers. With `holdoff`, a side that
/// runs dry does the final check asking to be woken after `WAKE_BATCH`
/// more items (the front: at most what it has outstanding) and the other
/// side notifies only when `push_and_check_notify` says so; the front
/// rings once more after its last request, because a back waiting for a
/// batch would otherwise miss the tail. Without `holdoff`, every publish
/// notifies and sleepers ask for the next single item.
pub fn notifications(n: u64, batch: usize, holdoff: bool) -> (Duration, Notifications) {
    let pages = Pages::new(ring_bytes::<Desc64, Desc64>(CAPACITY as u32));
    let mut front = Front::<Desc64, Desc64>::init(pages.mem()).unwrap();
    let mut back = Back::<Desc64, Desc64>::attach(pages.mem()).unwrap();
    let to_back = Doorbell(AtomicBool::new(false));
    let to_front = Doorbell(AtomicBool::new(false));
    let k = if holdoff { WAKE_BATCH } else { 1 };
    let mut counts = Notifications::default();
    let (cf, cb) = (&mut counts.to_back, &mut counts.to_front);
    let (to_back, to_front) = (&to_back, &to_front);
    let b = batch as u64;
    let took = timed(
        move || {
            let (mut seq, mut expect, mut sink) = (0, 0, 0);
            let mut flushed = false;
            while expect < n {
                let want = b.min(n - seq);
                let mut pushed = 0;
                if want > 0 {
                    pushed = u64::from(front.push_iter((seq..seq + want).map(Desc64::new)).unwrap());
                    seq += pushed;
                    let notify = front.push_and_check_notify().unwrap();
                    if pushed > 0 && (notify || !holdoff) {
                        to_back.ring();
                        *cf += 1;
                    }
                }
                if seq == n && holdoff && !flushed {
                    to_back.ring();
                    *cf += 1;
                    flushed = true;
                }
                let before = expect;
                for d in front.responses_up_to(batch as u32).unwrap() {
                    d.check(expect, &mut sink);
                    expect += 1;
                }
                if pushed == 0 && expect == before && expect < n && !front.final_check_for_responses_batched(k).unwrap()
                {
                    to_front.wait();
                }
            }
            black_box(sink);
        },
        move || {
            let mut served = 0;
            while served < n {
                let got = back.serve_up_to(u32::MAX, |d| d).unwrap();
                served += u64::from(got);
                let notify = back.push_and_check_notify().unwrap();
                if got > 0 && (notify || !holdoff) {
                    to_front.ring();
                    *cb += 1;
                }
                if got == 0 && served < n && !back.final_check_for_requests_batched(k).unwrap() {
                    to_back.wait();
                }
            }
        },
    );
    (took, counts)
}
