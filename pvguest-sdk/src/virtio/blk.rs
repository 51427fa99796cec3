//! An interrupt-driven virtio-blk driver (dom0): the crate's `VirtIOBlk`
//! over [`SdkHal`] and a PCI transport, woken by the device's INTx line
//! bound to an event channel.
//!
//! # How a request goes
//! 1. The request is queued with the crate's non-blocking API
//!    (`read_blocks_nb` / `write_blocks_nb`), which notifies the device.
//! 2. The domain blocks ([`event::block_until`]) until the interrupt's
//!    handler has counted a new interrupt. The handler only counts: it
//!    runs with events masked, on the interrupted stack, and touches no
//!    driver state.
//! 3. Back in the main flow: `ack_interrupt` reads the ISR (which lowers
//!    the level-triggered line), then [`IrqChannel::eoi`] unmasks the line
//!    at the IOAPIC. In that order: an EOI before the ISR read would let
//!    the still-raised line fire again at once.
//! 4. When the used ring holds our token, `complete_*_blocks` pops it. The
//!    crate checks that the device used the chain we queued (`WrongToken`
//!    otherwise) and turns the status byte the device wrote into a result:
//!    `IO_ERR` is [`BlkError::Device`] with `IoError`, `UNSUPP` with
//!    `Unsupported`, and a status byte the device never wrote (still the
//!    crate's not-ready value) with `NotReady`. Any interrupt that leaves
//!    our token unused (a configuration change, a spurious one) is acked
//!    and waited past.
//!
//! # Flush
//! `virtio-drivers` 0.13 has no non-blocking flush, and the request
//! header type's fields are private, so a flush cannot be queued through
//! the `_nb` calls. Its blocking `flush` queues the request, notifies the
//! device through the transport, and then spins on the used ring. The
//! transport here ([`IrqTransport`]) is the PCI transport with one
//! addition: while a flush is under way, its `notify` does not return
//! until the device's interrupt has come (steps 2 and 3 above), so by the
//! time the crate looks at the used ring the completion is there, and the
//! spin ends at its first check. The wait is the interrupt, not a poll,
//! and the crate still does the request's formatting and status checks.
//! (The alternative, a hand-written request on the raw `VirtQueue`, would
//! need a second queue or would duplicate what `VirtIOBlk` already does.)
//! A flush is issued only with no other request in flight (every call of
//! this driver waits for its own completion), so the interrupt it waits
//! for is the flush's. If the device suppressed the notification (its
//! `avail_event`), the crate's spin is the fallback; that does not happen
//! on an idle queue.
//!
//! # Buffers: who owns what, and when the device may write
//! - The virtqueue (descriptor table, available and used rings) lives in
//!   DMA-pool pages the crate took through `Hal::dma_alloc` of [`SdkHal`], for the
//!   driver's life; the device writes the used ring at any time.
//! - A request's header and status byte live on the caller's stack frame
//!   in this module, and its data in the caller's buffer, which each call
//!   borrows exclusively (`&mut [u8]` for reads, `&[u8]` for writes). The
//!   device may read or write them only between the `_nb` call and the
//!   matching `complete_*` call, and every call here returns only after
//!   that `complete_*` (or panics, which crashes dom0 and leaves the
//!   buffers to nobody): no buffer is ever handed back while the device
//!   may still touch it. There is no time-out for a device that never
//!   answers: the request's buffers could not be reused safely before a
//!   device reset, so the domain stays blocked (the scenario's time limit
//!   reports it).
//! - Buffers from [`IoBuffer`] (the DMA pool) are machine-contiguous and
//!   shared in place; any other buffer is shared in place if its frames
//!   are contiguous and bounced otherwise (see [`SdkHal`]).
//! - Lengths: a request's data length must be a non-zero multiple of
//!   [`SECTOR`] and fit in the disk from its LBA (checked here before
//!   anything is queued: [`BlkError::BadRequest`], [`BlkError::OutOfRange`]);
//!   a read-only disk refuses writes ([`BlkError::ReadOnly`]). The
//!   crate's `complete_*` calls do not return the used length the device
//!   wrote (a block device returns no partial data: the status byte says
//!   whether the whole request was done), so the status byte is the
//!   device's answer that is checked.
//!
//! The device is dom0's own (no IOMMU: dom0 is DMA-trusted), so these
//! checks guard against a failing device and a buggy driver, not a hostile
//! peer.
//!
//! ```ignore
//! use pvguest_sdk::{pci::Bdf, virtio::blk::{Disk, IoBuffer}};
//!
//! let mut disk = Disk::open(Bdf::new(0, 2, 0))?;
//! let mut buf = IoBuffer::new(64 * 1024)?;
//! disk.read(0, buf.as_mut_slice())?;
//! disk.write(2048, buf.as_slice())?;
//! disk.flush()?;
//! ```

use super::{transport, SdkHal, TransportError};
use crate::dma;
use crate::event::{self, Port};
use crate::irq::{self, IrqChannel, Pirq};
use crate::pci::Bdf;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use pvguest_abi::zerocopy::{FromBytes, Immutable, IntoBytes};
use pvguest_abi::Errno;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;

/// The size of a sector, in bytes.
pub const SECTOR: usize = virtio_drivers::device::blk::SECTOR_SIZE;

/// Interrupts taken on the disk's port (counted by [`on_interrupt`]).
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Interrupts the main flow has acknowledged (ISR read, EOI).
static SEEN: AtomicU64 = AtomicU64::new(0);
/// Whether a [`Disk`] is open (the interrupt state is one per domain).
static OPEN: AtomicBool = AtomicBool::new(false);
/// Set around the crate's blocking `flush`: [`IrqTransport`]'s `notify`
/// then waits for the interrupt.
static WAIT_IN_NOTIFY: AtomicBool = AtomicBool::new(false);

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
    /// The device, or the crate on its answer, reported an error: `IoError`
    /// (status IO_ERR), `Unsupported` (UNSUPP), `NotReady` (no status
    /// written), `WrongToken` (the device used another chain), ...
    Device(virtio_drivers::Error),
    /// A data length that is zero or not a multiple of [`SECTOR`].
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
}

impl core::fmt::Display for BlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlkError::Transport(TransportError::Config(e)) => write!(f, "PCI configuration refused: {}", e.name()),
            BlkError::Transport(TransportError::Virtio(e)) => write!(f, "not a usable virtio function: {e}"),
            BlkError::NoInterrupt => write!(f, "the function's INTx pin routes to no GSI"),
            BlkError::Irq(e) => write!(f, "interrupt setup refused: {}", e.name()),
            BlkError::Device(e) => write!(f, "device error: {e}"),
            BlkError::BadRequest { len } => write!(f, "a data length of {len} bytes is not whole sectors"),
            BlkError::OutOfRange { lba, sectors, capacity } => {
                write!(f, "sectors {lba}..{} are past the disk's end ({capacity} sectors)", lba + sectors)
            }
            BlkError::ReadOnly => write!(f, "the disk is read-only"),
            BlkError::AlreadyOpen => write!(f, "a disk is already open in this domain"),
            BlkError::Dma(e) => write!(f, "DMA pool: {}", e.name()),
        }
    }
}

impl From<virtio_drivers::Error> for BlkError {
    fn from(e: virtio_drivers::Error) -> Self {
        BlkError::Device(e)
    }
}

/// Blocks until an interrupt not yet acknowledged has come, then acks the
/// device with `ack` (reads the ISR, lowering the line) and EOIs `pirq`.
fn wait_interrupt(pirq: Pirq, ack: impl FnOnce() -> InterruptStatus) -> Result<(), BlkError> {
    let seen = SEEN.load(Ordering::SeqCst);
    event::block_until(|| INTERRUPTS.load(Ordering::SeqCst) > seen);
    SEEN.store(INTERRUPTS.load(Ordering::SeqCst), Ordering::SeqCst);
    let _status = ack();
    irq::eoi(pirq).map_err(BlkError::Irq)
}

/// The PCI transport, with `notify` that waits for the device's
/// interrupt while a flush is under way (see the module docs); every other
/// call is the PCI transport's own.
#[derive(Debug)]
pub struct IrqTransport {
    inner: PciTransport,
    pirq: Pirq,
}

impl Transport for IrqTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue);
        if WAIT_IN_NOTIFY.load(Ordering::SeqCst) {
            let (inner, pirq) = (&mut self.inner, self.pirq);
            // A failed EOI leaves the line masked: the next wait would
            // never end, so it is fatal here (no way to return it).
            if let Err(e) = wait_interrupt(pirq, || inner.ack_interrupt()) {
                panic!("virtio-blk: flush: {e}");
            }
        }
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner.queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(&mut self, offset: usize, value: T) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
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
        // slice's life, and the device writes them only inside a
        // `Disk::read`, which holds the `&mut`.
        unsafe { core::slice::from_raw_parts(self.buf.as_ptr().as_ptr(), self.buf.len() as usize) }
    }

    /// Its bytes, to fill or to read into.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only
        // reference for the slice's life.
        unsafe { core::slice::from_raw_parts_mut(self.buf.as_ptr().as_ptr(), self.buf.len() as usize) }
    }

    /// Its machine address.
    pub fn machine_addr(&self) -> u64 {
        self.buf.machine_addr()
    }
}

/// An open virtio-blk disk with its interrupt bound.
pub struct Disk {
    blk: VirtIOBlk<SdkHal, IrqTransport>,
    chan: IrqChannel,
    bdf: Bdf,
    gsi: u32,
}

impl core::fmt::Debug for Disk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Disk").field("bdf", &self.bdf).field("gsi", &self.gsi).finish_non_exhaustive()
    }
}

impl Disk {
    /// Brings up the virtio-blk function at `bdf`: the transport (BARs
    /// mapped, decoding and bus mastering on), the crate's driver
    /// (features, one queue), its GSI mapped to a pirq and bound to a
    /// port with this module's handler, and device interrupts enabled.
    /// Calls [`event::init`] if nothing did (harmless twice) and enables
    /// events.
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
        let inner = transport(bdf).map_err(BlkError::Transport)?;
        let mut blk = VirtIOBlk::<SdkHal, _>::new(IrqTransport { inner, pirq: chan.pirq() })?;
        blk.enable_interrupts();
        SEEN.store(INTERRUPTS.load(Ordering::SeqCst), Ordering::SeqCst);
        event::init();
        chan.on_interrupt(on_interrupt).map_err(BlkError::Irq)?;
        event::enable();
        Ok(Disk { blk, chan, bdf, gsi })
    }

    /// Stops the driver (the crate resets the queue) and gives back its
    /// interrupt channel, masked, with no handler of the driver's.
    pub fn into_channel(self) -> IrqChannel {
        let Disk { blk, chan, .. } = self;
        drop(blk);
        event::mask(chan.port());
        let _ = event::set_handler(chan.port(), |_| {});
        OPEN.store(false, Ordering::SeqCst);
        chan
    }

    /// The disk's capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    /// Whether the disk is read-only.
    pub fn readonly(&self) -> bool {
        self.blk.readonly()
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

    fn check(&self, lba: u64, len: usize) -> Result<(), BlkError> {
        if len == 0 || !len.is_multiple_of(SECTOR) {
            return Err(BlkError::BadRequest { len });
        }
        let sectors = (len / SECTOR) as u64;
        if lba.checked_add(sectors).is_none_or(|end| end > self.capacity()) {
            return Err(BlkError::OutOfRange { lba, sectors, capacity: self.capacity() });
        }
        Ok(())
    }

    /// Waits for the device's interrupt (one per completion: the crate
    /// moves `used_event` past each popped entry, and one request is in
    /// flight at a time) until the used ring holds `token`. An extra
    /// interrupt (a configuration change) is acked and waited past; a
    /// foreign token is the device's error.
    fn wait_for(&mut self, token: u16) -> Result<(), BlkError> {
        let pirq = self.chan.pirq();
        loop {
            let blk = &mut self.blk;
            wait_interrupt(pirq, || blk.ack_interrupt())?;
            match self.blk.peek_used() {
                Some(t) if t == token => return Ok(()),
                Some(_) => return Err(BlkError::Device(virtio_drivers::Error::WrongToken)),
                None => {}
            }
        }
    }

    /// Reads `buf.len()` bytes (whole sectors) from sector `lba` into
    /// `buf`, waiting for the device's interrupt.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.check(lba, buf.len())?;
        let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
        // SAFETY: `req`, `buf` and `resp` stay borrowed by this frame and
        // untouched until `complete_read_blocks` below, which is reached
        // on every path that queued them (`wait_for` returns only once the
        // device has used the chain, or with WrongToken, in which case the
        // queue is unusable and dom0 crashes rather than reuse them).
        let token = unsafe { self.blk.read_blocks_nb(lba as usize, &mut req, buf, &mut resp) }?;
        if let Err(e) = self.wait_for(token) {
            panic!("virtio-blk: read of sector {lba}: {e} (buffers still lent to the device)");
        }
        // SAFETY: the same buffers as queued above; the device is done
        // with them (it used the chain).
        unsafe { self.blk.complete_read_blocks(token, &req, buf, &mut resp) }?;
        Ok(())
    }

    /// Writes `buf` (whole sectors) at sector `lba`, waiting for the
    /// device's interrupt. Done means the device has it; durable only
    /// after [`Disk::flush`] (for a write-back cache).
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlkError> {
        if self.readonly() {
            return Err(BlkError::ReadOnly);
        }
        self.check(lba, buf.len())?;
        let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
        // SAFETY: as in `read`.
        let token = unsafe { self.blk.write_blocks_nb(lba as usize, &mut req, buf, &mut resp) }?;
        if let Err(e) = self.wait_for(token) {
            panic!("virtio-blk: write of sector {lba}: {e} (buffers still lent to the device)");
        }
        // SAFETY: as in `read`.
        unsafe { self.blk.complete_write_blocks(token, &req, buf, &mut resp) }?;
        Ok(())
    }

    /// Flushes the device's write cache: every write completed before is
    /// durable when this returns `Ok` (see the module docs for how it
    /// waits on the interrupt). A device without the flush feature has no
    /// volatile cache to flush (the crate then returns at once).
    pub fn flush(&mut self) -> Result<(), BlkError> {
        WAIT_IN_NOTIFY.store(true, Ordering::SeqCst);
        let r = self.blk.flush();
        WAIT_IN_NOTIFY.store(false, Ordering::SeqCst);
        Ok(r?)
    }

    /// Reads like [`Disk::read`], but this request's interrupts go to
    /// `handler` instead of the driver's, and the device is acked only
    /// once `done()` holds (checked each time the domain wakes). For the
    /// interrupt-storm test: a `handler` that EOIs the line
    /// ([`irq::eoi`] of [`Disk::pirq`]) without the ISR read leaves the
    /// level line asserted, so it fires again at every EOI. The driver's
    /// handler is back when this returns.
    pub fn read_with_handler(
        &mut self,
        lba: u64,
        buf: &mut [u8],
        handler: event::Handler,
        mut done: impl FnMut() -> bool,
    ) -> Result<(), BlkError> {
        self.check(lba, buf.len())?;
        let port = self.chan.port();
        event::set_handler(port, handler).map_err(BlkError::Irq)?;
        let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
        // SAFETY: as in `read`: the buffers stay in this frame, untouched,
        // until `complete_read_blocks`.
        let token = unsafe { self.blk.read_blocks_nb(lba as usize, &mut req, buf, &mut resp) }?;
        event::block_until(&mut done);
        // Quiet the device, give the driver its handler back, and EOI
        // whatever the test handler left masked (an EOI of an unmasked
        // line is harmless).
        let _ = self.blk.ack_interrupt();
        event::set_handler(port, on_interrupt).map_err(BlkError::Irq)?;
        SEEN.store(INTERRUPTS.load(Ordering::SeqCst), Ordering::SeqCst);
        self.chan.eoi().map_err(BlkError::Irq)?;
        while self.blk.peek_used() != Some(token) {
            if self.blk.peek_used().is_some() {
                panic!("virtio-blk: storm read of sector {lba}: the device used a foreign chain");
            }
            let blk = &mut self.blk;
            if let Err(e) = wait_interrupt(self.chan.pirq(), || blk.ack_interrupt()) {
                panic!("virtio-blk: storm read of sector {lba}: {e}");
            }
        }
        // SAFETY: as in `read`.
        unsafe { self.blk.complete_read_blocks(token, &req, buf, &mut resp) }?;
        Ok(())
    }

    /// The disk's pirq.
    pub fn pirq(&self) -> Pirq {
        self.chan.pirq()
    }
}
