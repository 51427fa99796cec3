//! An interrupt-driven virtio-blk driver (dom0) with many requests in
//! flight: virtio-blk requests built here on the `virtio-drivers` crate's
//! split virtqueue ([`VirtQueue`]) and PCI transport, scatter-gather, woken
//! by the device's INTx line bound to an event channel.
//!
//! # Why the requests are ours
//! The crate's `VirtIOBlk` gives each request one data buffer, a queue of
//! 16 descriptors and a flush that spins until the device answers. A
//! backend serving a peer's granted pages needs a request to carry several
//! machine-discontiguous pages (one device request per blkif request, not
//! one per page), dozens of requests in flight, and a flush that waits on
//! the interrupt like every other request. The request layout is the
//! virtio spec's (a 16-byte header the device reads, the data, a status
//! byte it writes) and small; the queue itself (descriptors, available
//! and used rings, notification suppression with `EVENT_IDX`) stays the
//! crate's.
//!
//! # How a request goes
//! 1. [`Disk::submit`] (or a blocking call) takes a slot of the slot
//!    table, writes the slot's header, splits the data into
//!    machine-contiguous runs (one descriptor each, so nothing is ever
//!    bounced) and adds the chain to the queue. [`Disk::kick`] notifies
//!    the device once for a batch (unless it suppressed notifications).
//! 2. The device's interrupt handler only counts. [`Disk::service`] (the
//!    main flow) reads the ISR, which lowers the level-triggered line,
//!    then EOIs the line at the IOAPIC, in that order (an EOI first would
//!    let the still-raised line fire again at once), and pops every used
//!    chain: the status byte the device wrote becomes the result (`IO_ERR`
//!    is [`BlkError::Device`] with `IoError`, `UNSUPP` with `Unsupported`,
//!    a byte never written with `NotReady`).
//! 3. A submission's memory comes back with its [`Completion`]
//!    ([`Disk::next_completion`]); a blocking call returns when its own
//!    request is done, leaving the others' completions queued.
//!
//! # Who owns what, and when the device may touch it
//! - The virtqueue lives in DMA-pool pages the crate took through
//!   [`SdkHal`] for the driver's life; the device writes the used ring at
//!   any time. The slot table's headers and status bytes live in one
//!   DMA-pool page of this driver's; slot `k` owns bytes `32k..32k + 17`
//!   of it while its request is in flight, and nobody else touches them.
//! - A [`Submission`]'s memory ([`Memory`]: a pool [`IoBuffer`], a
//!   peer's [`MappedPages`], or a [`GrantSet`] of a backend's persistent
//!   mappings) is owned by the driver from `submit` until
//!   its completion hands it back: the device may read or write it only in
//!   between, and no Rust code of the domain holds it meanwhile. That
//!   ownership is what makes the asynchronous calls safe.
//! - A blocking call ([`Disk::read`], [`Disk::write`], [`Disk::flush`])
//!   borrows the caller's buffer and returns only after the device has
//!   used the chain (or panics, which crashes dom0 and leaves the buffer
//!   to nobody). There is no time-out for a device that never answers: the
//!   memory could not be reused safely before a device reset.
//! - Lengths are checked before anything is queued: a non-zero multiple of
//!   [`SECTOR`], inside the disk ([`BlkError::BadRequest`],
//!   [`BlkError::OutOfRange`]); a read-only disk refuses writes.
//! - A used-ring entry naming no chain in flight means the device broke
//!   the queue: the driver is then `broken` and refuses everything (the
//!   memory of the chains still in flight is never handed back).
//!
//! The device is dom0's own (no IOMMU: dom0 is DMA-trusted), so these
//! checks guard against a failing device and a buggy driver, not a hostile
//! peer; the peer's requests are checked by the backend before they
//! become submissions.
//!
//! ```ignore
//! use pvguest_sdk::{pci::Bdf, virtio::blk::{Disk, IoBuffer, Memory, Op, Submission}};
//!
//! let mut disk = Disk::open(Bdf::new(0, 2, 0))?;
//! let mut buf = IoBuffer::new(64 * 1024)?;
//! disk.read(0, buf.as_mut_slice())?;            // blocking
//! disk.flush()?;
//! // Asynchronous: the buffer travels with the request and comes back.
//! let len = 64 * 1024;
//! let descriptors = disk
//!     .submit(Submission { op: Op::Read, lba: 128, mem: Memory::Buffer(buf), range: 0..len, cookie: 7 })
//!     .map_err(|(e, _)| e)?;
//! assert!(descriptors >= 3); // header, the data's runs, status
//! disk.kick();
//! let done = loop {
//!     if let Some(c) = disk.next_completion() { break c; }
//!     disk.wait()?;
//! };
//! assert_eq!(done.cookie, 7);
//! ```

use super::{transport, SdkHal, TransportError};
use crate::dma;
use crate::event::{self, Port};
use crate::grant::{GrantSet, MappedPages, MAX_MAPPED};
use crate::irq::{self, IrqChannel, Pirq};
use crate::pci::Bdf;
use alloc::boxed::Box;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use pvguest_abi::Errno;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, Transport};

/// The size of a sector, in bytes.
pub const SECTOR: usize = 512;
/// Descriptors of the queue (QEMU's virtio-blk offers 256).
pub const QUEUE_SIZE: usize = 256;
/// Requests in flight at most.
pub const MAX_IN_FLIGHT: usize = 64;
/// Machine-contiguous data runs one request carries at most (a 64 KiB
/// buffer on discontiguous frames, not page-aligned, has 17; a backend's
/// 32 scattered mapped pages, 32).
pub const MAX_RUNS: usize = 33;
/// [`Chain`] sizes: room for 3 data runs (a request of up to 8 KiB, or
/// one on machine-contiguous pages), and for [`MAX_RUNS`].
const SMALL_CHAIN: usize = 4;
const BIG_CHAIN: usize = MAX_RUNS + 1;
/// Bytes one request of a blocking call carries at most (longer calls are
/// split).
const CALL_CHUNK: usize = 64 * 1024;
const QUEUE: u16 = 0;
/// Bytes of a slot in the header page: the 16-byte header, the status.
const SLOT_BYTES: usize = 32;
const STATUS_AT: usize = 16;

bitflags::bitflags! {
    /// The feature bits this driver negotiates (virtio 1.2, 5.2.3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Feature: u64 {
        const RO = 1 << 5;
        const FLUSH = 1 << 9;
        const RING_EVENT_IDX = 1 << 29;
        const VERSION_1 = 1 << 32;
    }
}

/// Request types (virtio 1.2, 5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
/// Status bytes.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Written before queueing: a status the device never wrote.
const S_UNSET: u8 = 0xff;
/// `token_slot` entry of a descriptor that heads no chain.
const NO_SLOT: u8 = u8::MAX;

/// Interrupts taken on the disk's port (counted by [`on_interrupt`]).
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Interrupts the main flow has acknowledged (ISR read, EOI).
static SEEN: AtomicU64 = AtomicU64::new(0);
/// Whether a [`Disk`] is open (the interrupt state is one per domain).
static OPEN: AtomicBool = AtomicBool::new(false);

/// The disk's interrupt handler: counts, nothing else (the main flow acks
/// the device and EOIs).
fn on_interrupt(_port: Port) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

/// Interrupts taken on the disk's port so far.
pub fn interrupts() -> u64 {
    INTERRUPTS.load(Ordering::SeqCst)
}

/// Why a block operation failed.
#[derive(Debug)]
pub enum BlkError {
    /// The PCI transport could not be built.
    Transport(TransportError),
    /// The function has no INTx pin routed to a GSI.
    NoInterrupt,
    /// Mapping or binding its interrupt failed.
    Irq(Errno),
    /// The device, or the queue on its answer, reported an error: `IoError`
    /// (status IO_ERR), `Unsupported` (UNSUPP), `NotReady` (no status
    /// written), `WrongToken` (the device used a chain not in flight),
    /// `InvalidParam` (a queue smaller than [`QUEUE_SIZE`]), ...
    Device(virtio_drivers::Error),
    /// A data length that is zero or not a multiple of [`SECTOR`], or a
    /// range outside its memory.
    BadRequest {
        /// The length given.
        len: usize,
    },
    /// Sectors past the end of the disk.
    OutOfRange {
        /// The first sector asked for.
        lba: u64,
        /// How many.
        sectors: u64,
        /// The disk's capacity in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    ReadOnly,
    /// A second [`Disk`] in this domain (the interrupt state is one).
    AlreadyOpen,
    /// The DMA pool could not give a buffer.
    Dma(Errno),
    /// No slot or not enough descriptors free: submit again after a
    /// completion.
    Busy,
    /// Memory with a page that has no machine address, or with more than
    /// [`MAX_RUNS`] machine-contiguous runs.
    NotDmaable,
    /// The device broke the queue earlier; the driver refuses everything.
    Broken,
}

impl core::fmt::Display for BlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlkError::Transport(TransportError::Config(e)) => write!(f, "PCI configuration refused: {}", e.name()),
            BlkError::Transport(TransportError::Virtio(e)) => write!(f, "not a usable virtio function: {e}"),
            BlkError::NoInterrupt => write!(f, "the function's INTx pin routes to no GSI"),
            BlkError::Irq(e) => write!(f, "interrupt setup refused: {}", e.name()),
            BlkError::Device(virtio_drivers::Error::InvalidParam) => {
                write!(f, "the device's queue is smaller than the driver's {QUEUE_SIZE} descriptors")
            }
            BlkError::Device(e) => write!(f, "device error: {e}"),
            BlkError::BadRequest { len } => write!(f, "a data length of {len} bytes is not whole sectors"),
            BlkError::OutOfRange { lba, sectors, capacity } => {
                write!(f, "sectors {lba}..{} are past the disk's end ({capacity} sectors)", lba + sectors)
            }
            BlkError::ReadOnly => write!(f, "the disk is read-only"),
            BlkError::AlreadyOpen => write!(f, "a disk is already open in this domain"),
            BlkError::Dma(e) => write!(f, "DMA pool: {}", e.name()),
            BlkError::Busy => write!(f, "every request slot is in flight"),
            BlkError::NotDmaable => write!(f, "memory the device cannot reach in {MAX_RUNS} runs"),
            BlkError::Broken => write!(f, "the device broke its queue earlier"),
        }
    }
}

impl From<virtio_drivers::Error> for BlkError {
    fn from(e: virtio_drivers::Error) -> Self {
        BlkError::Device(e)
    }
}

/// A buffer for disk I/O from the DMA pool: machine-contiguous, so the
/// device reads and writes it in place (zero copy). Owned: the pool
/// hands each buffer out once, and only this value reaches it.
#[derive(Debug)]
pub struct IoBuffer {
    buf: dma::DmaBuffer,
}

impl IoBuffer {
    /// `len` zeroed bytes (page-aligned) from the DMA pool.
    pub fn new(len: usize) -> Result<IoBuffer, BlkError> {
        dma::alloc(len as u64, 4096).map(|buf| IoBuffer { buf }).map_err(BlkError::Dma)
    }

    /// Its bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the pool gave these `len` bytes (mapped read-write for
        // the domain's life, zeroed when built) to this buffer alone and
        // never hands them out again; `&self` excludes a `&mut` for the
        // slice's life, and the device writes them only while the driver
        // owns the buffer (a submission) or holds the `&mut` (a blocking
        // read).
        unsafe { core::slice::from_raw_parts(self.buf.as_ptr().as_ptr(), self.buf.len() as usize) }
    }

    /// Its bytes, to fill or to read into.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only
        // reference for the slice's life.
        unsafe { core::slice::from_raw_parts_mut(self.buf.as_ptr().as_ptr(), self.buf.len() as usize) }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len() as usize
    }

    /// Whether it is empty (never: the pool refuses that).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Its machine address.
    pub fn machine_addr(&self) -> u64 {
        self.buf.machine_addr()
    }
}

/// The memory a [`Submission`] moves data in or out of, owned by the
/// driver while the request is in flight.
#[derive(Debug, Default)]
pub enum Memory {
    /// No data (a flush).
    #[default]
    None,
    /// A buffer of the DMA pool.
    Buffer(IoBuffer),
    /// A peer's granted pages, mapped by a backend (the device DMAs
    /// straight into or out of them: zero copy). Boxed, as is `Set`: a
    /// request's memory moves through the driver and back several times.
    Grants(Box<MappedPages>),
    /// A peer's granted pages from a backend's persistent mappings, each
    /// at its own address: page `k` is byte `k * 4096` of the data (a
    /// backend recycles the boxes).
    Set(Box<GrantSet>),
}

impl Memory {
    /// Where bytes `range` of the memory lie, or `None` if they do not.
    fn data(&self, range: &Range<usize>) -> Option<Data> {
        if range.start >= range.end {
            return None;
        }
        let (va, total) = match self {
            Memory::None => return None,
            Memory::Buffer(b) => (b.buf.va(), b.len()),
            Memory::Grants(p) => (p.va(0)?, p.len() * 4096),
            Memory::Set(set) => {
                if range.end > set.len() * 4096 {
                    return None;
                }
                // Pages at consecutive addresses (a backend that lays its
                // mappings out so) are one span: fewer, longer runs. Looked
                // at first, without the list of addresses.
                let first = set.va(0)?;
                let mut consecutive = true;
                for k in 1..set.len() {
                    if set.va(k)? != first + k as u64 * 4096 {
                        consecutive = false;
                        break;
                    }
                }
                if consecutive {
                    return Some(Data::Span { va: first + range.start as u64, len: range.len() });
                }
                let mut vas = [0u64; MAX_MAPPED];
                for (k, va) in vas.iter_mut().enumerate().take(set.len()) {
                    *va = set.va(k)?;
                }
                return Some(Data::Pages { vas, start: range.start, end: range.end });
            }
        };
        (range.end <= total).then(|| Data::Span { va: va + range.start as u64, len: range.len() })
    }
}

/// Where a request's data lies (derived again, identically, when its
/// chain is popped: held memory does not move).
// Plain data kept in the static slot table (boxing the page list would
// allocate per request).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug)]
enum Data {
    /// No data (a flush).
    None,
    /// One range of addresses (split into machine-contiguous runs).
    Span { va: u64, len: usize },
    /// Bytes `start..end` of pages mapped each at its own address.
    Pages { vas: [u64; MAX_MAPPED], start: usize, end: usize },
}

impl Data {
    fn len(&self) -> usize {
        match *self {
            Data::None => 0,
            Data::Span { len, .. } => len,
            Data::Pages { start, end, .. } => end - start,
        }
    }

    /// The machine-contiguous runs of the data: how many, in `out`
    /// ([`BlkError::NotDmaable`] if they do not fit).
    fn runs(&self, out: &mut [(u64, usize)]) -> Result<usize, BlkError> {
        match *self {
            Data::None => Ok(0),
            Data::Span { va, len } => runs(va, len, out),
            Data::Pages { vas, start, end } => {
                let mut n = 0;
                for (k, &va) in vas.iter().enumerate() {
                    let (lo, hi) = (start.max(k * 4096), end.min((k + 1) * 4096));
                    if lo >= hi {
                        continue;
                    }
                    // Within one page: machine-contiguous by itself.
                    let slot = out.get_mut(n).ok_or(BlkError::NotDmaable)?;
                    *slot = (va + (lo - k * 4096) as u64, hi - lo);
                    n += 1;
                }
                Ok(n)
            }
        }
    }
}

/// An operation of a [`Submission`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The device writes the memory with the disk's sectors.
    Read,
    /// The device writes the memory's bytes to the disk.
    Write,
    /// Every write completed before this one is durable when it completes
    /// (no data).
    Flush,
}

/// An asynchronous request: bytes `range` of `mem` to or from sectors from
/// `lba`. `cookie` is the caller's, returned with the completion.
#[derive(Debug)]
pub struct Submission {
    pub op: Op,
    pub lba: u64,
    pub mem: Memory,
    pub range: Range<usize>,
    pub cookie: u64,
}

/// A finished [`Submission`]: its cookie, its memory back, its result.
#[derive(Debug)]
pub struct Completion {
    pub cookie: u64,
    pub mem: Memory,
    pub result: Result<(), BlkError>,
}

/// Where a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// Queued; the device may use its chain.
    InFlight,
    /// A blocking call's request, used by the device: its result waits in
    /// the slot for that call.
    Done,
}

/// One request of the slot table.
#[derive(Debug)]
struct Slot {
    state: State,
    op: Op,
    /// Where its data lies.
    data: Data,
    /// A submission's (owned) or a blocking call's (borrowed: `None`).
    owned: Option<(Memory, u64)>,
    result: Option<Result<(), BlkError>>,
}

const FREE: Slot = Slot { state: State::Free, op: Op::Flush, data: Data::None, owned: None, result: None };

/// The machine-contiguous runs of `[va, va + len)`: how many, written to
/// `out` as (virtual address, length). Deterministic for memory that does
/// not move, so a chain's buffers can be named again when it is popped.
fn runs(va: u64, len: usize, out: &mut [(u64, usize)]) -> Result<usize, BlkError> {
    let end = va.checked_add(len as u64).ok_or(BlkError::NotDmaable)?;
    let mut n = 0;
    let mut at = va;
    while at < end {
        let start = at;
        let first = dma::machine_of(start).ok_or(BlkError::NotDmaable)?;
        at = ((start & !4095) + 4096).min(end);
        // `at` is page-aligned from here on.
        while at < end {
            if dma::machine_of(at).ok_or(BlkError::NotDmaable)? != first + (at - start) {
                break;
            }
            at = (at + 4096).min(end);
        }
        let slot = out.get_mut(n).ok_or(BlkError::NotDmaable)?;
        *slot = (start, (at - start) as usize);
        n += 1;
    }
    Ok(n)
}

/// The slot table: one per domain, like the disk (a static, so the
/// [`Disk`] handle stays small on the stack).
struct Table {
    slots: [Slot; MAX_IN_FLIGHT],
    /// Slots of finished submissions, in completion order.
    fifo: [u8; MAX_IN_FLIGHT],
    fifo_head: usize,
    fifo_len: usize,
}

impl Table {
    const EMPTY: Table = Table { slots: [FREE; MAX_IN_FLIGHT], fifo: [0; MAX_IN_FLIGHT], fifo_head: 0, fifo_len: 0 };
}

static TABLE: spin::Mutex<Table> = spin::Mutex::new(Table::EMPTY);

/// Slots a submission may not take: a blocking call (one request at a
/// time) always finds one, even while every other slot holds a
/// completion its owner has not collected yet.
const RESERVED: usize = 2;
/// Requests of [`Disk::submit`] in flight at most (the slots less the
/// ones kept for blocking calls).
pub const SUBMISSION_SLOTS: usize = MAX_IN_FLIGHT - RESERVED;

/// An open virtio-blk disk with its interrupt bound.
pub struct Disk {
    transport: PciTransport,
    queue: VirtQueue<SdkHal, QUEUE_SIZE>,
    capacity: u64,
    readonly: bool,
    flush_cache: bool,
    chan: IrqChannel,
    bdf: Bdf,
    gsi: u32,
    /// The slots' headers and status bytes (see the module docs).
    headers: dma::DmaBuffer,
    /// The slot whose chain each head descriptor starts.
    token_slot: [u8; QUEUE_SIZE],
    /// Slots not free (in flight, or holding a completion).
    busy: usize,
    /// Chains the device holds.
    in_flight: usize,
    /// Chains added since the last [`Disk::kick`].
    queued: bool,
    broken: bool,
}

impl core::fmt::Debug for Disk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Disk")
            .field("bdf", &self.bdf)
            .field("gsi", &self.gsi)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// The buffers of a chain, as the queue takes them: the device-readable
/// ones (`ins`) and the device-writable ones (`outs`), each list's used
/// length; room for `N - 1` data runs (besides the header and the
/// status). Built on the stack twice per request (to add it and to pop
/// it), so a small request gets a small one ([`SMALL_CHAIN`]).
struct Chain<'a, const N: usize> {
    ins: [&'a [u8]; N],
    outs: [&'a mut [u8]; N],
    nins: usize,
    nouts: usize,
}

impl Disk {
    /// Brings up the virtio-blk function at `bdf`: the transport (BARs
    /// mapped, decoding and bus mastering on), the features and the one
    /// queue, its GSI mapped to a pirq and bound to a port with this
    /// module's handler, and device interrupts enabled.
    pub fn open(bdf: Bdf) -> Result<Disk, BlkError> {
        let gsi = irq::gsi_of(bdf).map_err(BlkError::Irq)?.ok_or(BlkError::NoInterrupt)?;
        let pirq = irq::map_gsi(gsi).map_err(BlkError::Irq)?;
        let chan = irq::bind(pirq).map_err(BlkError::Irq)?;
        Self::open_with_channel(bdf, chan)
    }

    /// [`Disk::open`] on an interrupt channel the caller has already
    /// mapped and bound (its handler is replaced by the driver's);
    /// [`Disk::into_channel`] gives it back.
    pub fn open_with_channel(bdf: Bdf, chan: IrqChannel) -> Result<Disk, BlkError> {
        if OPEN.swap(true, Ordering::SeqCst) {
            return Err(BlkError::AlreadyOpen);
        }
        let r = Self::bring_up(bdf, chan);
        if r.is_err() {
            OPEN.store(false, Ordering::SeqCst);
        }
        r
    }

    fn bring_up(bdf: Bdf, chan: IrqChannel) -> Result<Disk, BlkError> {
        let gsi = irq::gsi_of(bdf).map_err(BlkError::Irq)?.ok_or(BlkError::NoInterrupt)?;
        let mut transport = transport(bdf).map_err(BlkError::Transport)?;
        let features =
            transport.begin_init(Feature::RO | Feature::FLUSH | Feature::RING_EVENT_IDX | Feature::VERSION_1);
        let capacity = transport.read_consistent(|| {
            let low: u32 = transport.read_config_space(0)?;
            let high: u32 = transport.read_config_space(4)?;
            Ok(u64::from(low) | (u64::from(high) << 32))
        })?;
        let queue = VirtQueue::new(&mut transport, QUEUE, false, features.contains(Feature::RING_EVENT_IDX))?;
        transport.finish_init();
        let headers = dma::alloc(4096, 4096).map_err(BlkError::Dma)?;
        *TABLE.lock() = Table::EMPTY;
        SEEN.store(INTERRUPTS.load(Ordering::SeqCst), Ordering::SeqCst);
        chan.on_interrupt(on_interrupt).map_err(BlkError::Irq)?;
        event::enable();
        Ok(Disk {
            transport,
            queue,
            capacity,
            readonly: features.contains(Feature::RO),
            flush_cache: features.contains(Feature::FLUSH),
            chan,
            bdf,
            gsi,
            headers,
            token_slot: [NO_SLOT; QUEUE_SIZE],
            busy: 0,
            in_flight: 0,
            queued: false,
            broken: false,
        })
    }

    /// Stops the device (a reset: it forgets the queue and touches no
    /// memory after it) and gives back its interrupt channel, masked, with
    /// no handler of the driver's. Requests still in flight are dropped
    /// with their memory (a peer's mapped pages stay mapped: collect every
    /// completion first).
    pub fn into_channel(mut self) -> IrqChannel {
        self.transport.set_status(DeviceStatus::empty());
        self.transport.queue_unset(QUEUE);
        *TABLE.lock() = Table::EMPTY;
        event::mask(self.chan.port());
        let _ = event::set_handler(self.chan.port(), |_| {});
        OPEN.store(false, Ordering::SeqCst);
        self.chan
    }

    /// The disk's capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the disk is read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Its PCI function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The GSI its interrupts come on.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// The port its interrupts arrive on.
    pub fn port(&self) -> Port {
        self.chan.port()
    }

    /// The disk's pirq.
    pub fn pirq(&self) -> Pirq {
        self.chan.pirq()
    }

    /// Requests the device holds.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a submission would find a slot and the descriptors for a
    /// request of `runs` data runs (a hint: [`Disk::submit`] says for sure).
    pub fn has_room(&self, runs: usize) -> bool {
        self.busy + RESERVED < MAX_IN_FLIGHT && self.queue.available_desc() >= runs + 2
    }

    fn check(&self, op: Op, lba: u64, len: usize) -> Result<(), BlkError> {
        if self.broken {
            return Err(BlkError::Broken);
        }
        if op == Op::Flush {
            return Ok(());
        }
        if op == Op::Write && self.readonly {
            return Err(BlkError::ReadOnly);
        }
        if len == 0 || !len.is_multiple_of(SECTOR) {
            return Err(BlkError::BadRequest { len });
        }
        let sectors = (len / SECTOR) as u64;
        if lba.checked_add(sectors).is_none_or(|end| end > self.capacity) {
            return Err(BlkError::OutOfRange { lba, sectors, capacity: self.capacity });
        }
        Ok(())
    }

    /// The buffers of slot `k`'s chain: its header, its data runs, its
    /// status byte.
    ///
    /// # Safety
    /// The slot's `data` must be memory the driver holds for
    /// the request (a submission's, or a blocking call's borrow), and the
    /// returned slices may be used only to add or pop that one chain.
    ///
    /// A request of more than `N - 1` runs is [`BlkError::NotDmaable`]:
    /// callers try [`SMALL_CHAIN`] first, then [`BIG_CHAIN`], which is
    /// deterministic for held memory (its runs do not change), so a chain
    /// is popped with the same buffers it was added with.
    unsafe fn chain<'c, const N: usize>(&self, k: usize, op: Op, d: Data) -> Result<Chain<'c, N>, BlkError> {
        let mut data = [(0u64, 0usize); N];
        let n = if op == Op::Flush { 0 } else { d.runs(&mut data[..N - 1])? };
        let base = self.headers.va() as usize + k * SLOT_BYTES;
        // SAFETY: slot `k`'s header and status bytes lie in the header
        // page (k < MAX_IN_FLIGHT, 64 * 32 bytes), which this driver
        // owns and the slot owns while its request is in flight.
        let (header, status) = unsafe {
            (
                core::slice::from_raw_parts(base as *const u8, 16),
                core::slice::from_raw_parts_mut((base + STATUS_AT) as *mut u8, 1),
            )
        };
        let mut c = Chain { ins: [&[]; N], outs: core::array::from_fn(|_| <&mut [u8]>::default()), nins: 1, nouts: 0 };
        c.ins[0] = header;
        for &(va, len) in &data[..n] {
            if op == Op::Write {
                // SAFETY: the caller's contract: memory held for the
                // request; the device only reads it.
                c.ins[c.nins] = unsafe { core::slice::from_raw_parts(va as *const u8, len) };
                c.nins += 1;
            } else {
                // SAFETY: as above; the device writes it.
                c.outs[c.nouts] = unsafe { core::slice::from_raw_parts_mut(va as *mut u8, len) };
                c.nouts += 1;
            }
        }
        c.outs[c.nouts] = status;
        c.nouts += 1;
        Ok(c)
    }

    /// Queues slot `k`'s request. The caller has checked it. Returns the
    /// descriptors its chain holds (header, data runs, status).
    fn start(&mut self, k: usize, op: Op, lba: u64, d: Data) -> Result<usize, BlkError> {
        // The header and the status byte are written before any reference
        // to them exists (the chain's slices below), and not touched again
        // until the chain is popped.
        let kind = match op {
            Op::Read => T_IN,
            Op::Write => T_OUT,
            Op::Flush => T_FLUSH,
        };
        let at = (k * SLOT_BYTES) as u64;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&lba.to_le_bytes());
        self.headers.write(at, &header);
        self.headers.write(at + STATUS_AT as u64, &[S_UNSET]);
        // SAFETY: the slot's memory is held (the callers' contracts).
        match unsafe { self.chain::<SMALL_CHAIN>(k, op, d) } {
            Ok(mut c) => self.add(k, &mut c),
            // SAFETY: as above.
            Err(_) => self.add(k, &mut unsafe { self.chain::<BIG_CHAIN>(k, op, d)? }),
        }
    }

    /// Pops the used chain `token` of slot `k` (its buffers named again
    /// in a chain of size `N`: [`BlkError::NotDmaable`] if they do not
    /// fit, before anything is popped).
    ///
    /// # Safety
    /// As [`Disk::chain`]'s, and the device has used the chain.
    unsafe fn pop_chain<const N: usize>(
        &mut self,
        token: u16,
        k: usize,
        op: Op,
        d: Data,
    ) -> Result<Result<(), virtio_drivers::Error>, BlkError> {
        // SAFETY: the caller's contract.
        let mut c = unsafe { self.chain::<N>(k, op, d)? };
        // SAFETY: the caller's contract: the same buffers as the chain was
        // added with, and the device is done with them.
        Ok(unsafe { self.queue.pop_used(token, &c.ins[..c.nins], &mut c.outs[..c.nouts]) }.map(|_| ()))
    }

    /// Adds slot `k`'s chain `c` to the queue; the descriptors it holds.
    fn add<const N: usize>(&mut self, k: usize, c: &mut Chain<'_, N>) -> Result<usize, BlkError> {
        if self.queue.available_desc() < c.nins + c.nouts {
            return Err(BlkError::Busy);
        }
        // SAFETY: the buffers stay valid and untouched by this domain
        // until the chain is popped in `harvest`: the header and status
        // belong to the slot, the data to the submission or the blocking
        // call, which waits for the slot. (Data in a peer's pages is
        // `&mut [u8]` here because the crate's API takes slices; the peer
        // may change it meanwhile, and this domain never reads or writes
        // through those slices: they only carry addresses to the device.)
        let token = unsafe { self.queue.add(&c.ins[..c.nins], &mut c.outs[..c.nouts]) }?;
        self.token_slot[usize::from(token)] = k as u8;
        self.in_flight += 1;
        self.queued = true;
        Ok(c.nins + c.nouts)
    }

    /// Queues `s` (the device starts on it at the next [`Disk::kick`]).
    /// Its memory is the driver's until its [`Completion`]; a refused
    /// submission comes back with the error. [`BlkError::Busy`] means:
    /// collect a completion and submit again.
    ///
    /// Returns the queue descriptors the request holds until it completes
    /// (its header, one per machine-contiguous data run, its status; 0 for
    /// a flush the device needs no request for), so a caller sharing the
    /// queue out can charge each request what it really takes: a 64 KiB
    /// request on machine-contiguous pages holds 3, not one per page.
    // The refused submission comes back whole: it owns memory (a peer's
    // mapped pages) that must not be lost, and there may be no heap to box it.
    #[allow(clippy::result_large_err)]
    pub fn submit(&mut self, s: Submission) -> Result<usize, (BlkError, Submission)> {
        let d = match s.op {
            Op::Flush => Data::None,
            _ => match s.mem.data(&s.range) {
                Some(d) => d,
                None => return Err((BlkError::BadRequest { len: s.range.len() }, s)),
            },
        };
        let len = d.len();
        if let Err(e) = self.check(s.op, s.lba, len) {
            return Err((e, s));
        }
        if self.busy + RESERVED >= MAX_IN_FLIGHT {
            return Err((BlkError::Busy, s));
        }
        let mut t = TABLE.lock();
        let Some(k) = t.slots.iter().position(|x| x.state == State::Free) else {
            return Err((BlkError::Busy, s));
        };
        if s.op == Op::Flush && !self.flush_cache {
            // No volatile cache: nothing to flush, done at once.
            t.slots[k] = Slot { state: State::Free, op: s.op, data: Data::None, owned: None, result: None };
            drop(t);
            self.busy += 1;
            self.finished(k, Some((s.mem, s.cookie)), Ok(()));
            return Ok(0);
        }
        drop(t);
        match self.start(k, s.op, s.lba, d) {
            Ok(descriptors) => {
                let mut t = TABLE.lock();
                t.slots[k] =
                    Slot { state: State::InFlight, op: s.op, data: d, owned: Some((s.mem, s.cookie)), result: None };
                self.busy += 1;
                Ok(descriptors)
            }
            Err(e) => Err((e, s)),
        }
    }

    /// Tells the device about everything queued since the last kick
    /// (unless it suppressed notifications).
    pub fn kick(&mut self) {
        // Nothing queued since the last kick: the device was told (or
        // asked not to be) about everything already.
        if core::mem::take(&mut self.queued) && self.queue.should_notify() {
            self.transport.notify(QUEUE);
        }
    }

    /// Whether the main flow has something to do for the disk: an
    /// interrupt not yet acknowledged, or used chains to pop (for an event
    /// loop's wake-up condition; [`Disk::service`] does it).
    pub fn ready(&self) -> bool {
        INTERRUPTS.load(Ordering::SeqCst) > SEEN.load(Ordering::SeqCst) || self.queue.can_pop()
    }

    /// Acknowledges a pending interrupt (ISR read, then EOI) and pops
    /// every used chain. Completions of submissions are then queued for
    /// [`Disk::next_completion`].
    pub fn service(&mut self) -> Result<(), BlkError> {
        let seen = INTERRUPTS.load(Ordering::SeqCst);
        if seen > SEEN.load(Ordering::SeqCst) {
            SEEN.store(seen, Ordering::SeqCst);
            let _status = self.transport.ack_interrupt();
            irq::eoi(self.chan.pirq()).map_err(BlkError::Irq)?;
        }
        self.harvest()
    }

    /// Blocks until [`Disk::ready`], then [`Disk::service`].
    pub fn wait(&mut self) -> Result<(), BlkError> {
        if self.broken {
            return Err(BlkError::Broken);
        }
        let queue = &self.queue;
        event::block_until(|| INTERRUPTS.load(Ordering::SeqCst) > SEEN.load(Ordering::SeqCst) || queue.can_pop());
        self.service()
    }

    /// Whether finished submissions wait for [`Disk::next_completion`].
    pub fn has_completions(&self) -> bool {
        TABLE.lock().fifo_len > 0
    }

    /// The next finished submission, if any (call [`Disk::service`] or
    /// [`Disk::wait`] to collect the device's).
    pub fn next_completion(&mut self) -> Option<Completion> {
        let mut t = TABLE.lock();
        if t.fifo_len == 0 {
            return None;
        }
        let k = usize::from(t.fifo[t.fifo_head]);
        t.fifo_head = (t.fifo_head + 1) % MAX_IN_FLIGHT;
        t.fifo_len -= 1;
        let slot = core::mem::replace(&mut t.slots[k], FREE);
        drop(t);
        self.busy -= 1;
        let (mem, cookie) = slot.owned.unwrap_or_default();
        Some(Completion { cookie, mem, result: slot.result.unwrap_or(Err(BlkError::Broken)) })
    }

    /// Records slot `k`'s result: a submission's goes to the completion
    /// queue, a blocking call's waits in the slot.
    fn finished(&mut self, k: usize, owned: Option<(Memory, u64)>, result: Result<(), BlkError>) {
        let mut t = TABLE.lock();
        let slot = &mut t.slots[k];
        slot.result = Some(result);
        slot.state = State::Done;
        if owned.is_some() {
            slot.owned = owned;
        }
        if slot.owned.is_some() {
            let at = (t.fifo_head + t.fifo_len) % MAX_IN_FLIGHT;
            t.fifo[at] = k as u8;
            t.fifo_len += 1;
        }
    }

    /// Pops every used chain.
    fn harvest(&mut self) -> Result<(), BlkError> {
        while let Some(token) = self.queue.peek_used() {
            let k = self.token_slot.get(usize::from(token)).copied().unwrap_or(NO_SLOT);
            let (op, d) = {
                let t = TABLE.lock();
                match t.slots.get(usize::from(k)) {
                    Some(s) if s.state == State::InFlight => (s.op, s.data),
                    _ => {
                        self.broken = true;
                        return Err(BlkError::Device(virtio_drivers::Error::WrongToken));
                    }
                }
            };
            let k = usize::from(k);
            // The chain's slices live only inside this block: the status is
            // read below through the raw page, once they are gone.
            let popped = {
                // SAFETY: the same buffers as the chain was added with (the
                // slot's, still held); `runs` names them again identically,
                // since held memory does not move, and the same size of
                // chain is chosen for them (small if they fit).
                let chain = match unsafe { self.pop_chain::<SMALL_CHAIN>(token, k, op, d) } {
                    // SAFETY: as above.
                    Err(_) => unsafe { self.pop_chain::<BIG_CHAIN>(token, k, op, d) },
                    small => small,
                };
                match chain {
                    Ok(p) => p,
                    Err(e) => {
                        // Cannot happen for held memory; the queue cannot
                        // be popped past it, so the driver is done.
                        self.broken = true;
                        return Err(e);
                    }
                }
            };
            if let Err(e) = popped {
                self.broken = true;
                return Err(BlkError::Device(e));
            }
            self.token_slot[usize::from(token)] = NO_SLOT;
            self.in_flight -= 1;
            let mut status = [0u8];
            self.headers.read((k * SLOT_BYTES + STATUS_AT) as u64, &mut status);
            let result = match status[0] {
                S_OK => Ok(()),
                S_IOERR => Err(BlkError::Device(virtio_drivers::Error::IoError)),
                S_UNSUPP => Err(BlkError::Device(virtio_drivers::Error::Unsupported)),
                _ => Err(BlkError::Device(virtio_drivers::Error::NotReady)),
            };
            self.finished(k, None, result);
        }
        Ok(())
    }

    /// Runs one request of a blocking call on memory it borrows, waiting
    /// for its own completion (others' completions are queued meanwhile).
    fn blocking(&mut self, op: Op, lba: u64, va: u64, len: usize) -> Result<(), BlkError> {
        self.check(op, lba, len)?;
        if op == Op::Flush && !self.flush_cache {
            return Ok(());
        }
        let k = loop {
            let free = TABLE.lock().slots.iter().position(|x| x.state == State::Free);
            if let Some(k) = free {
                break k;
            }
            // Cannot happen: submissions leave RESERVED slots free. Wait
            // for one all the same rather than fail.
            self.kick();
            self.wait()?;
        };
        let d = if op == Op::Flush { Data::None } else { Data::Span { va, len } };
        TABLE.lock().slots[k] = Slot { state: State::InFlight, op, data: d, owned: None, result: None };
        self.busy += 1;
        loop {
            let waited = match self.start(k, op, lba, d) {
                Ok(_) => break,
                Err(BlkError::Busy) if self.in_flight > 0 => {
                    // What was queued before must reach the device, or
                    // nothing completes.
                    self.kick();
                    self.wait()
                }
                Err(e) => Err(e),
            };
            if let Err(e) = waited {
                TABLE.lock().slots[k] = FREE;
                self.busy -= 1;
                return Err(e);
            }
        }
        self.kick();
        loop {
            if TABLE.lock().slots[k].state == State::Done {
                break;
            }
            if let Err(e) = self.wait() {
                panic!("virtio-blk: waiting for sector {lba}: {e} (buffers still lent to the device)");
            }
        }
        let slot = core::mem::replace(&mut TABLE.lock().slots[k], FREE);
        self.busy -= 1;
        slot.result.unwrap_or(Err(BlkError::Broken))
    }

    /// Reads `buf.len()` bytes (whole sectors) from sector `lba` into
    /// `buf`, waiting for the device's interrupt. Any buffer: it goes to
    /// the device in machine-contiguous runs, in place.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.check(Op::Read, lba, buf.len())?;
        for (i, chunk) in buf.chunks_mut(CALL_CHUNK).enumerate() {
            let at = lba + (i * CALL_CHUNK / SECTOR) as u64;
            // The borrow of `chunk` lasts the call, which returns only
            // once the device is done with it.
            self.blocking(Op::Read, at, chunk.as_mut_ptr() as u64, chunk.len())?;
        }
        Ok(())
    }

    /// Writes `buf` (whole sectors) at sector `lba`, waiting for the
    /// device's interrupt. Done means the device has it; durable only
    /// after [`Disk::flush`] (for a write-back cache).
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.check(Op::Write, lba, buf.len())?;
        for (i, chunk) in buf.chunks(CALL_CHUNK).enumerate() {
            let at = lba + (i * CALL_CHUNK / SECTOR) as u64;
            self.blocking(Op::Write, at, chunk.as_ptr() as u64, chunk.len())?;
        }
        Ok(())
    }

    /// Flushes the device's write cache: every write completed before is
    /// durable when this returns `Ok`. A device without the flush feature
    /// has no volatile cache to flush (this returns at once).
    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.blocking(Op::Flush, 0, 0, 0)
    }

    /// Reads like [`Disk::read`] (one request, at most 64 KiB), but this
    /// request's interrupts go to `handler` instead of the driver's, and
    /// the device is acked only once `done()` holds (checked each time the
    /// domain wakes). For the interrupt-storm test: a `handler` that EOIs
    /// the line ([`irq::eoi`] of [`Disk::pirq`]) without the ISR read
    /// leaves the level line asserted, so it fires again at every EOI. The
    /// driver's handler is back when this returns. Only with nothing else
    /// in flight.
    pub fn read_with_handler(
        &mut self,
        lba: u64,
        buf: &mut [u8],
        handler: event::Handler,
        mut done: impl FnMut() -> bool,
    ) -> Result<(), BlkError> {
        self.check(Op::Read, lba, buf.len())?;
        if buf.len() > CALL_CHUNK || self.busy > 0 {
            return Err(BlkError::Busy);
        }
        let port = self.chan.port();
        event::set_handler(port, handler).map_err(BlkError::Irq)?;
        let k = 0;
        let (va, len) = (buf.as_mut_ptr() as u64, buf.len());
        let d = Data::Span { va, len };
        TABLE.lock().slots[k] = Slot { state: State::InFlight, op: Op::Read, data: d, owned: None, result: None };
        self.busy += 1;
        if let Err(e) = self.start(k, Op::Read, lba, d) {
            TABLE.lock().slots[k] = FREE;
            self.busy -= 1;
            let _ = event::set_handler(port, on_interrupt);
            return Err(e);
        }
        self.kick();
        event::block_until(&mut done);
        // Quiet the device, give the driver its handler back, and EOI
        // whatever the test handler left masked (an EOI of an unmasked
        // line is harmless).
        let _ = self.transport.ack_interrupt();
        event::set_handler(port, on_interrupt).map_err(BlkError::Irq)?;
        SEEN.store(INTERRUPTS.load(Ordering::SeqCst), Ordering::SeqCst);
        self.chan.eoi().map_err(BlkError::Irq)?;
        loop {
            if let Err(e) = self.harvest() {
                panic!("virtio-blk: storm read of sector {lba}: {e}");
            }
            if TABLE.lock().slots[k].state == State::Done {
                break;
            }
            if let Err(e) = self.wait() {
                panic!("virtio-blk: storm read of sector {lba}: {e}");
            }
        }
        let slot = core::mem::replace(&mut TABLE.lock().slots[k], FREE);
        self.busy -= 1;
        slot.result.unwrap_or(Err(BlkError::Broken))
    }
}
