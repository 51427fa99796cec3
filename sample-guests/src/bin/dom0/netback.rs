//! The network backend (netback): one domU's virtual NIC, over the two
//! netif rings ([`split_drivers::netif`]) its front granted, by grant
//! copy: dom0 never maps the front's frame pages.
//!
//! # Where validation happens
//! - Transmit: each request is copied out of the tx ring once (ring-protocol
//!   R6) and fed to [`TxAssembler`], the one place a chain of requests
//!   becomes a frame ([`split_drivers::netif::ValidTxFrame`]: slots inside
//!   their pages, lengths that add up, at most 18 slots, 14 to 1522
//!   bytes). Refused chains are answered `ERROR` and counted. A valid
//!   frame is grant-copied into dom0's own page (the hypervisor checks
//!   each grant: one the front never gave is a failed copy, answered
//!   `ERROR`), and only then handed on (to the bridge), which parses it
//!   as hostile bytes again. Every request taken off the ring gets exactly
//!   one response.
//! - Receive: a frame for the domU is grant-copied into the buffers it
//!   posted (the placements [`RxWriter`] computes); a frame with no posted
//!   buffer is dropped and counted, never queued without bound.
//!
//! # Who owns what
//! dom0's two bounce pages (from its DMA pool: machine addresses known,
//! reached with volatile copies) hold one frame each at a time: the one
//! just copied out of a tx ring, and the one being delivered. The rings
//! are mapped at foreign-mapping slots for the connection's life.
//!
//! # Work per call
//! [`NetBack::poll_tx`] takes at most [`BATCH`] requests, so one busy
//! front cannot keep dom0 from its other ports.

use pvguest_sdk::channel::{BackChannel, ChannelError};
use pvguest_sdk::dma::{self, DmaBuffer};
use pvguest_sdk::grant;
use pvguest_sdk::mm::{self, Page};
use pvguest_sdk::vmap;
use ring_protocol::RingError;
use split_drivers::netif::{
    RxFlags, RxRequest, RxResponse, RxStatus, RxWriter, TxAssembler, TxRequest, TxResponse, TxStatus, TxStep, PAGE_SIZE,
};

/// Tx requests one [`NetBack::poll_tx`] call takes at most.
pub const BATCH: usize = 64;

/// Counters of one backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Frames the front sent, handed on.
    pub tx_frames: u64,
    /// Chains refused by the assembler, and frames whose copy failed.
    pub tx_refused: u64,
    pub tx_copy_failed: u64,
    /// Frames delivered to the front, and dropped for want of a posted
    /// buffer or because the copy failed.
    pub rx_frames: u64,
    pub rx_no_buffer: u64,
    pub rx_copy_failed: u64,
}

/// Why a backend stopped.
#[derive(Clone, Copy, Debug)]
pub enum BackError {
    Connect(ChannelError),
    NoSlot,
    NoBuffer,
    /// The front broke the ring protocol: the connection is dead.
    Ring(RingError),
    NoRoom,
}

impl core::fmt::Display for BackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BackError::Connect(e) => write!(f, "connecting to the front's rings: {e:?}"),
            BackError::NoSlot => write!(f, "no free slot to map a ring"),
            BackError::NoBuffer => write!(f, "no DMA page for the bounce buffers"),
            BackError::Ring(e) => write!(f, "the front broke the ring protocol: {e}"),
            BackError::NoRoom => write!(f, "no room for a response"),
        }
    }
}

/// A page of dom0's DMA pool, as the grant-copy interface names it.
struct Bounce {
    buf: DmaBuffer,
    page: Page,
}

impl Bounce {
    fn new() -> Result<Bounce, BackError> {
        let buf = dma::alloc(PAGE_SIZE as u64, PAGE_SIZE as u64).map_err(|_| BackError::NoBuffer)?;
        let pfn = mm::pfn_of_va(buf.va()).ok_or(BackError::NoBuffer)?;
        Ok(Bounce { buf, page: Page { pfn, mfn: buf.machine_addr() / PAGE_SIZE as u64 } })
    }
}

/// One domU's virtual NIC, connected.
pub struct NetBack {
    pub domid: u16,
    tx: BackChannel<TxRequest, TxResponse>,
    rx: BackChannel<RxRequest, RxResponse>,
    /// The slots the rings are mapped at.
    tx_va: u64,
    rx_va: u64,
    asm: TxAssembler,
    inbound: Bounce,
    outbound: Bounce,
    pub stats: Stats,
    tx_unpublished: bool,
    rx_unpublished: bool,
}

impl NetBack {
    /// Connects to `domid`'s rings (`tx_gref`/`rx_gref`, ports from the
    /// store).
    pub fn connect(domid: u16, tx_gref: u32, rx_gref: u32, tx_port: u32, rx_port: u32) -> Result<NetBack, BackError> {
        let (inbound, outbound) = (Bounce::new()?, Bounce::new()?);
        let tx_va = vmap::alloc(1).map_err(|_| BackError::NoSlot)?;
        let tx = match BackChannel::connect(domid, tx_gref, tx_port, tx_va) {
            Ok(c) => c,
            Err(e) => {
                vmap::free(tx_va, 1);
                return Err(BackError::Connect(e));
            }
        };
        let Ok(rx_va) = vmap::alloc(1) else {
            if tx.close().is_ok() {
                vmap::free(tx_va, 1);
            }
            return Err(BackError::NoSlot);
        };
        let rx = match BackChannel::connect(domid, rx_gref, rx_port, rx_va) {
            Ok(c) => c,
            Err(e) => {
                vmap::free(rx_va, 1);
                if tx.close().is_ok() {
                    vmap::free(tx_va, 1);
                }
                return Err(BackError::Connect(e));
            }
        };
        Ok(NetBack {
            domid,
            tx,
            rx,
            tx_va,
            rx_va,
            asm: TxAssembler::new(),
            inbound,
            outbound,
            stats: Stats::default(),
            tx_unpublished: false,
            rx_unpublished: false,
        })
    }

    /// Ends the connection: both rings unmapped, both ports closed.
    pub fn close(self) {
        let NetBack { tx, rx, tx_va, rx_va, .. } = self;
        if tx.close().is_ok() {
            vmap::free(tx_va, 1);
        }
        if rx.close().is_ok() {
            vmap::free(rx_va, 1);
        }
    }

    /// The two local event ports.
    pub fn ports(&self) -> [pvguest_sdk::event::Port; 2] {
        [self.tx.port(), self.rx.port()]
    }

    /// Whether the front has sent requests (arming its notification when
    /// not).
    pub fn pending(&mut self) -> Result<bool, BackError> {
        self.tx.ring.final_check_for_requests().map_err(BackError::Ring)
    }

    fn respond_tx(&mut self, rsp: TxResponse) -> Result<(), BackError> {
        // A slot is free: the request answered left one.
        self.tx.ring.try_push(rsp).map_err(|_| BackError::NoRoom)?;
        self.tx_unpublished = true;
        Ok(())
    }

    /// Takes up to [`BATCH`] tx requests and calls `frame` with each valid
    /// frame's bytes (in dom0's bounce page, copied out for the call).
    /// Returns how many requests it took.
    pub fn poll_tx(&mut self, mut frame: impl FnMut(&[u8])) -> Result<usize, BackError> {
        let mut taken = 0;
        let mut bytes = [0u8; split_drivers::netif::MAX_FRAME_LEN];
        while taken < BATCH {
            let Some(req) = self.tx.ring.pop_request().map_err(BackError::Ring)? else { break };
            taken += 1;
            match self.asm.push(&req) {
                TxStep::NeedMore => {}
                TxStep::Refused(r) => {
                    self.stats.tx_refused += 1;
                    for rsp in r.responses() {
                        self.respond_tx(rsp)?;
                    }
                }
                TxStep::Frame(f) => {
                    let mut at = 0usize;
                    let mut ok = true;
                    for s in f.slots() {
                        ok &= grant::copy_from_grant(
                            self.domid,
                            s.gref(),
                            s.offset() as u16,
                            self.inbound.page,
                            at as u16,
                            s.len() as u16,
                        )
                        .is_ok();
                        at += s.len();
                    }
                    let status = if ok { TxStatus::Okay } else { TxStatus::Error };
                    let len = f.len();
                    for rsp in f.responses(status) {
                        self.respond_tx(rsp)?;
                    }
                    if ok {
                        self.inbound.buf.read(0, &mut bytes[..len]);
                        self.stats.tx_frames += 1;
                        frame(&bytes[..len]);
                    } else {
                        self.stats.tx_copy_failed += 1;
                    }
                }
            }
        }
        self.publish()?;
        Ok(taken)
    }

    /// Delivers `frame` into buffers the front posted; `false` if it had
    /// none (the frame is dropped and counted) or the copy failed.
    pub fn deliver(&mut self, frame: &[u8]) -> Result<bool, BackError> {
        let Ok(mut w) = RxWriter::new(frame.len(), 0, RxFlags::default()) else {
            return Ok(false);
        };
        // Take only what is there: a frame needs `w.slots()` buffers.
        if self.rx.ring.poll_requests().map_err(BackError::Ring)? < w.slots() as u32 {
            self.stats.rx_no_buffer += 1;
            return Ok(false);
        }
        self.outbound.buf.write(0, frame);
        let mut ok = true;
        while w.remaining_slots() > 0 {
            let Some(req) = self.rx.ring.pop_request().map_err(BackError::Ring)? else { break };
            let Some(p) = w.place(&req) else { break };
            let r = p.frame_range();
            let copied = ok
                && grant::copy_to_grant(
                    self.outbound.page,
                    r.start as u16,
                    self.domid,
                    p.gref(),
                    p.range().start as u16,
                    r.len() as u16,
                )
                .is_ok();
            ok &= copied;
            let rsp = if copied { p.response() } else { p.failed(RxStatus::Error) };
            self.rx.ring.try_push(rsp).map_err(|_| BackError::NoRoom)?;
            self.rx_unpublished = true;
        }
        if ok {
            self.stats.rx_frames += 1;
        } else {
            self.stats.rx_copy_failed += 1;
        }
        Ok(ok)
    }

    /// Makes the responses pushed so far visible, notifying the front if
    /// it asked.
    pub fn publish(&mut self) -> Result<(), BackError> {
        if core::mem::take(&mut self.tx_unpublished) && self.tx.ring.push_and_check_notify().map_err(BackError::Ring)? {
            let _ = self.tx.notify();
        }
        if core::mem::take(&mut self.rx_unpublished) && self.rx.ring.push_and_check_notify().map_err(BackError::Ring)? {
            let _ = self.rx.notify();
        }
        Ok(())
    }
}
