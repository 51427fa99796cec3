//! A virtio-net NIC for dom0, raw Ethernet frames, without alloc and
//! without `unsafe` in the caller.
//!
//! [`Nic`] wraps `virtio-drivers`' [`VirtIONetRaw`] (the crate's
//! alloc-free driver) on the SDK's [`SdkHal`] and owns every buffer the
//! device touches, so that the crate's unsafe contracts (a posted buffer
//! is not touched until completed, and is completed with the same slice)
//! are kept in one place, here, and guest code (a smoltcp `phy::Device`,
//! say) stays safe.
//!
//! ## Buffers, and who owns them when
//! - [`QUEUE`] receive and [`QUEUE`] transmit buffers of [`BUF_LEN`]
//!   bytes each, taken once from the DMA pool at [`Nic::new`] and never
//!   given back. A buffer is 2 KiB aligned, so it lies in one page: the
//!   Hal shares it in place (its machine address, no bounce copy). The
//!   pool is handed out by a bump allocator, so no other owner exists.
//! - A receive buffer belongs to the **device** from `receive_begin`
//!   (every buffer is posted at start, and re-posted right after its frame
//!   is copied out) until the used ring returns its token; then, for the
//!   length of [`Nic::receive_into`], to the **driver**, which copies the
//!   frame out and posts the buffer again. The frame is read exactly once,
//!   into the caller's buffer: whatever parses it reads a copy that the
//!   device cannot change under it (no double fetch).
//! - A transmit buffer is **free** until [`Nic::tx_frame`] lends it to the
//!   caller to fill (after the virtio header) and [`TxFrame::send`] hands
//!   it to the device; it is the
//!   **device's** until the used ring returns its token
//!   ([`Nic::reclaim`]), then free again.
//!
//! ## What is checked
//! The frames the device delivers come from the network, a hostile peer's
//! bytes; the device itself is dom0's own (and DMA-trusted, there being no
//! IOMMU), but its used-ring entries are checked all the same. Nothing
//! here panics on what arrives: a used entry naming no buffer of ours, a
//! length shorter than the virtio header or longer than the buffer, a
//! frame shorter than an Ethernet header or longer than the caller's
//! buffer, and a segmentation-offload frame (never negotiated) are each
//! dropped, counted in [`NicStats`], and reported as a [`RxDrop`]
//! ([`check_frame`] holds the length checks). After a used entry naming
//! no buffer of ours, receiving stops (that entry can never be completed);
//! it is printed once, never looped on.
//!
//! ## Interrupts
//! The device raises its INTx line on used-ring updates (MSI-X stays off:
//! the hypervisor owns MSI). A driver binds the line with [`crate::irq`],
//! and on each interrupt, in its main flow: [`Nic::ack_interrupt`] (reads
//! the ISR, which lowers the level line), then the pirq's EOI, then drains
//! the rings ([`Nic::receive_into`] until `None`, [`Nic::reclaim`]). A
//! frame that arrives after the ISR read raises the line again, so none
//! waits for a later interrupt.
//!
//! ```ignore
//! use pvguest_sdk::{pci::Bdf, virtio_net::Nic};
//! let mut nic = Nic::new(Bdf::new(0, 3, 0))?;
//! let mut frame = [0u8; pvguest_sdk::virtio_net::MAX_FRAME];
//! while let Some(r) = nic.receive_into(&mut frame) {
//!     if let Ok(len) = r { /* frame[..len] */ }
//! }
//! nic.transmit(60, |f| f.fill(0))?;
//! ```

use crate::dma;
use crate::pci::Bdf;
use crate::virtio::{self, SdkHal, TransportError};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::PciTransport;

/// Descriptors per queue (and buffers per direction): a power of two.
pub const QUEUE: usize = 16;
/// Bytes of one buffer: the virtio header and the longest frame, with room
/// to spare (the crate wants at least 1526 for a receive buffer).
pub const BUF_LEN: usize = 2048;
/// The longest Ethernet frame without its FCS (1500-byte MTU).
pub const MAX_FRAME: usize = 1514;
/// The shortest frame passed on: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Offset of `gso_type` in the header.
const HDR_GSO_TYPE: usize = 1;
/// DMA pool bytes a [`Nic`] takes: its buffers and both queues' rings
/// (two pages each at this queue size).
pub const DMA_BYTES: u64 = (2 * QUEUE * BUF_LEN) as u64 + 4 * 4096;

/// Why [`Nic::new`] failed.
#[derive(Debug)]
pub enum NicError {
    /// The PCI transport could not be built.
    Transport(TransportError),
    /// The virtio crate refused the device.
    Virtio(virtio_drivers::Error),
    /// The DMA pool is too small (see [`DMA_BYTES`]).
    Dma(crate::Errno),
}

/// Why a received frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// The used ring named a descriptor that is no receive buffer of ours.
    /// The entry cannot be completed (the crate pops entries in order), so
    /// receiving stops here: [`Nic::receive_into`] returns `None` from now
    /// on, and [`Nic::rx_stopped`] says why.
    UnknownToken(u16),
    /// The device reported fewer bytes than the virtio header.
    ShortHeader,
    /// The device reported more bytes than the buffer holds.
    PastBuffer(usize),
    /// Shorter than an Ethernet header.
    Runt(usize),
    /// Longer than the caller's buffer.
    TooLong(usize),
    /// A segmentation-offload frame (`gso_type` set), never negotiated.
    Gso(u8),
}

/// Why [`Nic::transmit`] sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxError {
    /// Every transmit buffer is the device's: [`Nic::reclaim`] later.
    Busy,
    /// The frame is longer than [`MAX_FRAME`] (or empty).
    BadLength(usize),
    /// The device refused the buffer.
    Device,
}

/// The frame in receive buffer `buf` that the device says is `len` bytes
/// after a virtio header of `hdr` bytes, if it is well formed and fits in
/// `room` bytes of the caller's: the checks of the module docs, in order
/// (lengths against the buffer, offload type, Ethernet minimum, the
/// caller's room). Pure, so a guest can test it on made-up entries.
pub fn check_frame(buf: &[u8], hdr: usize, len: usize, room: usize) -> Result<&[u8], RxDrop> {
    let frame = buf.get(hdr..).and_then(|b| b.get(..len)).ok_or(RxDrop::PastBuffer(len))?;
    match buf.get(HDR_GSO_TYPE) {
        Some(&0) => {}
        Some(&gso) => return Err(RxDrop::Gso(gso)),
        None => return Err(RxDrop::ShortHeader),
    }
    if len < MIN_FRAME {
        return Err(RxDrop::Runt(len));
    }
    if len > room {
        return Err(RxDrop::TooLong(len));
    }
    Ok(frame)
}

/// Counters of a [`Nic`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    /// Frames received and passed on.
    pub rx_frames: u64,
    /// Frames dropped as malformed (every [`RxDrop`]).
    pub rx_dropped: u64,
    /// Frames handed to the device.
    pub tx_frames: u64,
    /// Transmissions the device completed.
    pub tx_completed: u64,
    /// Transmissions refused for want of a free buffer.
    pub tx_busy: u64,
    /// Interrupts acknowledged with a used-ring bit in the ISR.
    pub isr_used: u64,
    /// Interrupts acknowledged with nothing in the ISR (shared or spurious).
    pub isr_empty: u64,
}

/// A posted or free buffer.
struct Slot {
    buf: &'static mut [u8],
    /// The descriptor token while the device holds it, and (transmit) the
    /// length handed over.
    token: Option<(u16, usize)>,
}

/// A virtio-net device with its buffers (see the module docs).
pub struct Nic {
    raw: VirtIONetRaw<SdkHal, PciTransport, QUEUE>,
    rx: [Slot; QUEUE],
    tx: [Slot; QUEUE],
    stats: NicStats,
    /// Set when the device broke the receive ring ([`RxDrop::UnknownToken`]).
    rx_stopped: Option<RxDrop>,
}

/// `QUEUE` buffers of `BUF_LEN` bytes from the DMA pool.
fn pool_buffers() -> Result<[Slot; QUEUE], crate::Errno> {
    let area = dma::alloc((QUEUE * BUF_LEN) as u64, 4096)?;
    let mut k = 0;
    Ok(core::array::from_fn(|_| {
        let va = area.va() + (k * BUF_LEN) as u64;
        k += 1;
        // SAFETY: `va..va + BUF_LEN` lies inside `area`, which the pool's
        // bump allocator handed out once, to us, and which stays mapped
        // read-write for the domain's life; the `k`-th slice is disjoint
        // from every other. Only this `Nic` (and the device, under the
        // ownership rules of the module docs) touches it from here on.
        let buf = unsafe { core::slice::from_raw_parts_mut(va as *mut u8, BUF_LEN) };
        Slot { buf, token: None }
    }))
}

impl Nic {
    /// Brings up the virtio-net function at `bdf`: transport, feature
    /// negotiation and queues (the crate's), buffers from the DMA pool
    /// ([`DMA_BYTES`] in all), and every receive buffer posted.
    pub fn new(bdf: Bdf) -> Result<Nic, NicError> {
        let transport = virtio::transport(bdf).map_err(NicError::Transport)?;
        let raw = VirtIONetRaw::<SdkHal, PciTransport, QUEUE>::new(transport).map_err(NicError::Virtio)?;
        let rx = pool_buffers().map_err(NicError::Dma)?;
        let tx = pool_buffers().map_err(NicError::Dma)?;
        let mut nic = Nic { raw, rx, tx, stats: NicStats::default(), rx_stopped: None };
        for i in 0..QUEUE {
            nic.post(i).map_err(NicError::Virtio)?;
        }
        Ok(nic)
    }

    /// Hands receive buffer `i` to the device.
    fn post(&mut self, i: usize) -> Result<(), virtio_drivers::Error> {
        let slot = &mut self.rx[i];
        // SAFETY: the buffer is the device's from here until its token
        // comes back in the used ring; `receive_into` is the only code that
        // touches it, and only after that, with this same slice.
        let token = unsafe { self.raw.receive_begin(slot.buf)? };
        slot.token = Some((token, BUF_LEN));
        Ok(())
    }

    /// The MAC address from the device's configuration.
    pub fn mac(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    /// Reads (and so clears) the ISR, which lowers the device's interrupt
    /// line; whether it said the used rings changed.
    pub fn ack_interrupt(&mut self) -> bool {
        let used = self.raw.ack_interrupt().contains(virtio_drivers::transport::InterruptStatus::QUEUE_INTERRUPT);
        if used {
            self.stats.isr_used += 1;
        } else {
            self.stats.isr_empty += 1;
        }
        used
    }

    /// The next received frame, copied into `out` (its length), or why it
    /// was dropped; `None` when the device has returned no buffer. The
    /// buffer goes back to the device before this returns.
    pub fn receive_into(&mut self, out: &mut [u8]) -> Option<Result<usize, RxDrop>> {
        if self.rx_stopped.is_some() {
            return None;
        }
        let token = self.raw.poll_receive()?;
        let Some(i) = self.rx.iter().position(|s| s.token.is_some_and(|(t, _)| t == token)) else {
            self.stats.rx_dropped += 1;
            self.rx_stopped = Some(RxDrop::UnknownToken(token));
            crate::println!("virtio-net: the receive ring returned token {token}, no buffer of ours: receiving stops");
            return Some(Err(RxDrop::UnknownToken(token)));
        };
        let slot = &mut self.rx[i];
        // SAFETY: `slot.buf` is the very slice posted with this token (the
        // search above), and the device has returned it.
        let done = unsafe { self.raw.receive_complete(token, slot.buf) };
        slot.token = None;
        let r = match done {
            Err(_) => Err(RxDrop::ShortHeader),
            Ok((hdr, len)) => check_frame(slot.buf, hdr, len, out.len()).map(|frame| {
                out[..len].copy_from_slice(frame);
                len
            }),
        };
        match r {
            Ok(_) => self.stats.rx_frames += 1,
            Err(_) => self.stats.rx_dropped += 1,
        }
        if let Err(e) = self.post(i) {
            crate::println!("virtio-net: receive buffer {i} not posted again: {e}");
        }
        Some(r)
    }

    /// Why receiving stopped, if the device broke the receive ring.
    pub fn rx_stopped(&self) -> Option<RxDrop> {
        self.rx_stopped
    }

    /// Takes back the transmit buffers the device is done with; how many.
    pub fn reclaim(&mut self) -> usize {
        let mut n = 0;
        while let Some(token) = self.raw.poll_transmit() {
            let Some(slot) = self.tx.iter_mut().find(|s| s.token.is_some_and(|(t, _)| t == token)) else {
                crate::println!("virtio-net: the transmit ring returned token {token}, no buffer of ours");
                break;
            };
            let (_, len) = slot.token.take().expect("found by its token");
            // SAFETY: the same slice (buffer and length) that was handed
            // over with this token in `transmit`.
            if unsafe { self.raw.transmit_complete(token, &slot.buf[..len]) }.is_err() {
                crate::println!("virtio-net: completing transmit token {token} failed");
            }
            n += 1;
        }
        self.stats.tx_completed += n as u64;
        n
    }

    /// Transmit buffers the device still holds (after [`Nic::reclaim`]).
    pub fn tx_in_flight(&self) -> usize {
        self.tx.iter().filter(|s| s.token.is_some()).count()
    }

    /// Whether a transmit buffer is free (after [`Nic::reclaim`]).
    pub fn can_transmit(&self) -> bool {
        self.tx.iter().any(|s| s.token.is_none()) && self.raw.can_send()
    }

    /// A free transmit buffer for a frame of `len` bytes (its Ethernet
    /// header and payload, no FCS), zeroed; write the frame into it and
    /// [`TxFrame::send`] it. Dropping it unsent leaves the buffer free.
    pub fn tx_frame(&mut self, len: usize) -> Result<TxFrame<'_>, TxError> {
        if len == 0 || len > MAX_FRAME {
            return Err(TxError::BadLength(len));
        }
        let Some(slot) = self.tx.iter().position(|s| s.token.is_none()).filter(|_| self.raw.can_send()) else {
            self.stats.tx_busy += 1;
            return Err(TxError::Busy);
        };
        let buf = &mut *self.tx[slot].buf;
        let hdr = self.raw.fill_buffer_header(buf).map_err(|_| TxError::Device)?;
        buf[hdr..hdr + len].fill(0);
        Ok(TxFrame { nic: self, slot, hdr, len })
    }

    /// Sends a frame of `len` bytes that `fill` writes ([`Nic::tx_frame`]
    /// and [`TxFrame::send`]).
    pub fn transmit<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> Result<R, TxError> {
        let mut frame = self.tx_frame(len)?;
        let r = fill(&mut frame);
        frame.send().map(|()| r)
    }

    /// The counters.
    pub fn stats(&self) -> NicStats {
        self.stats
    }
}

/// A transmit buffer being filled ([`Nic::tx_frame`]): derefs to the
/// frame's bytes.
pub struct TxFrame<'a> {
    nic: &'a mut Nic,
    slot: usize,
    hdr: usize,
    len: usize,
}

impl TxFrame<'_> {
    /// Hands the frame to the device.
    pub fn send(self) -> Result<(), TxError> {
        let (hdr, len) = (self.hdr, self.len);
        let slot = &mut self.nic.tx[self.slot];
        // SAFETY: the buffer is the device's from here until `reclaim`
        // sees its token, which completes it with this same slice; nothing
        // else touches a slot whose token is set.
        let token = unsafe { self.nic.raw.transmit_begin(&slot.buf[..hdr + len]) }.map_err(|_| TxError::Device)?;
        slot.token = Some((token, hdr + len));
        self.nic.stats.tx_frames += 1;
        Ok(())
    }
}

impl core::ops::Deref for TxFrame<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.nic.tx[self.slot].buf[self.hdr..self.hdr + self.len]
    }
}

impl core::ops::DerefMut for TxFrame<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.nic.tx[self.slot].buf[self.hdr..self.hdr + self.len]
    }
}
