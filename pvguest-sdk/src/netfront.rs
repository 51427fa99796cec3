//! The network front: a domU's virtual NIC, served by dom0's netback over
//! two netif rings ([`crate::netif`]) in pages this domain grants, one for
//! the frames it sends (tx) and one for the buffers it posts for frames to
//! receive (rx), each with its own event channel (Xen's split event
//! channels). [`NetDevice`] is what guest code uses: [`NetDevice::send`]
//! and [`NetDevice::recv`] move whole Ethernet frames (no FCS), and
//! [`NetDevice::wait`] sleeps until something arrives or a deadline.
//!
//! ```ignore
//! use pvguest_sdk::netfront::NetDevice;
//! let mut nic = NetDevice::open(&mut store, 0)?;      // the first vif
//! println!("my MAC is {:02x?}", nic.mac());
//! nic.send(&frame)?;
//! let mut buf = [0u8; pvguest_sdk::netif::MAX_FRAME_LEN];
//! loop {
//!     if let Some(n) = nic.recv(&mut buf)? { handle(&buf[..n]); }
//!     nic.wait(time::now_ns() + 10_000_000)?;
//! }
//! ```
//!
//! # Who owns what
//! - The two ring pages and two pools of pages are this domain's, each
//!   granted once to the backend domain for the device's life: tx pages
//!   read-only (the backend copies a frame out of them), rx pages
//!   read-write (it copies a frame into them). A tx page carries one frame
//!   at a time and nothing else; a posted rx page is the backend's to
//!   write until its response comes, and only a frame's bytes are read
//!   back from it, by single volatile copies
//!   ([`ring_protocol::SharedMem::read_bytes`]). The caller's buffers are
//!   never granted.
//! - Requests are stamped, and responses checked, only by the shadow
//!   tables [`crate::netif::TxInflight`] and [`crate::netif::RxInflight`]: an unknown or
//!   duplicate id, a status not in the protocol, a length or offset past
//!   the page, a chain too long: the backend broke the protocol
//!   ([`NetError::Protocol`]) and every later call fails with it.
//! - A frame is sent in one slot (a frame is at most
//!   [`crate::netif::MAX_FRAME_LEN`] bytes, written at the start of its page); a
//!   received one may span several posted pages (`more_data`) and is
//!   copied out whole.

use crate::channel::{ChannelError, FrontChannel};
use crate::event::Port;
use crate::grant::{self, GrantError, GrantedPage, PoolError};
use crate::netif::{
    RxInflight, RxRequest, RxResponse, RxStep, TxFlags, TxInflight, TxPiece, TxRequest, TxResponse, TxStatus,
    MAX_FRAME_LEN, MIN_FRAME_LEN, RX_RING_SLOTS, TX_RING_SLOTS,
};
use crate::store::{Store, StoreError};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;
use ring_protocol::RingError;

/// Pages for frames being sent (frames in flight at most).
pub const TX_POOL: usize = 32;
/// Pages posted for frames to receive.
pub const RX_POOL: usize = 64;
const _: () = assert!(TX_POOL <= TX_RING_SLOTS && RX_POOL <= RX_RING_SLOTS);
/// How often a front waiting for frames checks that its backend is still
/// there (ns).
pub const IDLE_CHECK_NS: u64 = 50_000_000;

/// Why a network call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetError {
    /// A frame shorter than an Ethernet header or longer than
    /// [`MAX_FRAME_LEN`].
    BadLength(usize),
    /// Every tx page is in flight: call [`NetDevice::recv`] or
    /// [`NetDevice::wait`] and send again.
    Busy,
    /// The backend answered the frame with an error or dropped it.
    Dropped,
    /// The caller's buffer is shorter than the frame received (the frame
    /// is dropped).
    BufferTooSmall(usize),
    /// The backend broke the protocol: the device is unusable.
    Protocol,
    /// Setting up a ring, its grant or its event channel.
    Channel(ChannelError),
    /// Granting the pool pages.
    Grant(GrantError),
    /// No memory for the pools.
    NoMemory,
    /// Discovery or the handshake in the store.
    Store(StoreError),
    /// The backend did not connect, or went away.
    NotConnected,
}

impl From<StoreError> for NetError {
    fn from(e: StoreError) -> Self {
        NetError::Store(e)
    }
}

/// Counters of a [`NetDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames sent, and answered with an error or dropped.
    pub tx_frames: u64,
    pub tx_errors: u64,
    /// Frames received, and dropped (an error status, or the caller's
    /// buffer too small).
    pub rx_frames: u64,
    pub rx_dropped: u64,
}

/// A connected virtual NIC (see the module docs).
pub struct NetDevice {
    tx: FrontChannel<TxRequest, TxResponse>,
    rx: FrontChannel<RxRequest, RxResponse>,
    /// Shadow tables sized by the pools (a page per request in flight).
    tx_ids: TxInflight<TX_POOL>,
    rx_ids: RxInflight<RX_POOL>,
    tx_pages: Vec<GrantedPage>,
    tx_free: Vec<u16>,
    rx_pages: Vec<GrantedPage>,
    /// Pool page of each grant reference (tx and rx grants differ).
    by_gref: BTreeMap<u32, u16>,
    mac: [u8; 6],
    stats: NetStats,
    broken: bool,
}

fn wake(_: Port) {}

/// Store keys of a virtual NIC, as Xen's netif names them.
mod key {
    pub const BACKEND: &str = "backend";
    pub const BACKEND_ID: &str = "backend-id";
    pub const MAC: &str = "mac";
    pub const TX_RING_REF: &str = "tx-ring-ref";
    pub const RX_RING_REF: &str = "rx-ring-ref";
    pub const EVENT_CHANNEL_TX: &str = "event-channel-tx";
    pub const EVENT_CHANNEL_RX: &str = "event-channel-rx";
    pub const REQUEST_RX_COPY: &str = "request-rx-copy";
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl From<PoolError> for NetError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::NoMemory => NetError::NoMemory,
            PoolError::Grant(g) => NetError::Grant(g),
        }
    }
}

impl NetDevice {
    /// Sets up the front's half for backend domain `backend`: both rings
    /// and both pools, granted to it, and two event ports it may bind.
    /// Every rx page is posted at once. Usable once the backend has
    /// connected (the handshake in [`NetDevice::open`] waits for that).
    pub fn attach(backend: u16, mac: [u8; 6]) -> Result<NetDevice, NetError> {
        let table = grant::shared().map_err(NetError::Grant)?;
        let mut table = table.lock();
        let tx = FrontChannel::offer(backend, &mut table).map_err(NetError::Channel)?;
        let rx = FrontChannel::offer(backend, &mut table).map_err(NetError::Channel)?;
        for ch in [tx.on_event(wake), rx.on_event(wake)] {
            ch.map_err(|e| NetError::Channel(ChannelError::Event(e)))?;
        }
        let tx_pages = grant::granted_pages(&mut table, backend, TX_POOL, true)?;
        let rx_pages = grant::granted_pages(&mut table, backend, RX_POOL, false)?;
        drop(table);
        let mut by_gref = BTreeMap::new();
        for (k, p) in tx_pages.iter().enumerate().chain(rx_pages.iter().enumerate()) {
            by_gref.insert(p.gref, k as u16);
        }
        let salt = crate::time::tsc() as u16;
        let mut dev = NetDevice {
            tx,
            rx,
            tx_ids: TxInflight::with_salt(salt),
            rx_ids: RxInflight::with_salt(salt ^ 0x5a5a),
            tx_free: (0..TX_POOL as u16).rev().collect(),
            tx_pages,
            rx_pages,
            by_gref,
            mac,
            stats: NetStats::default(),
            broken: false,
        };
        for k in 0..dev.rx_pages.len() {
            dev.post(k)?;
        }
        dev.publish_rx()?;
        Ok(dev)
    }

    /// Finds this domain's virtual NIC number `index` in the store and
    /// connects to its backend through the handshake.
    pub fn open(store: &mut Store, index: usize) -> Result<NetDevice, NetError> {
        let dir = format!("{}/device/vif/{index}", store.home());
        let back = store.read_string(&format!("{dir}/{}", key::BACKEND))?;
        let back_id = u16::try_from(store.read_u64(&format!("{dir}/{}", key::BACKEND_ID))?)
            .map_err(|_| NetError::Store(StoreError::BadValue))?;
        let mac = parse_mac(&store.read_string(&format!("{dir}/{}", key::MAC))?)
            .ok_or(NetError::Store(StoreError::BadValue))?;
        let published = crate::xenbus::connect_front(
            store,
            &dir,
            &back,
            |store| {
                let d = NetDevice::attach(back_id, mac)?;
                let tx = store.transaction_start()?;
                let w = |store: &mut Store, k: &str, v: u32| {
                    store.write_tx(tx, &format!("{dir}/{k}"), format!("{v}").as_bytes())
                };
                w(store, key::TX_RING_REF, d.tx.gref())?;
                w(store, key::RX_RING_REF, d.rx.gref())?;
                w(store, key::EVENT_CHANNEL_TX, d.tx.port().0)?;
                w(store, key::EVENT_CHANNEL_RX, d.rx.port().0)?;
                w(store, key::REQUEST_RX_COPY, 1)?;
                store.transaction_end(tx, true)?;
                Ok(d)
            },
            |_, _| Ok::<(), NetError>(()),
        )?;
        published.ok_or(NetError::NotConnected)
    }

    /// The NIC's MAC address (the toolstack's; the bridge drops frames
    /// from any other source address).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The device's counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The tx and rx event ports (to wait on beside others).
    pub fn ports(&self) -> [Port; 2] {
        [self.tx.port(), self.rx.port()]
    }

    fn fail(&mut self, _: RingError) -> NetError {
        self.broken = true;
        NetError::Protocol
    }

    /// Posts rx page `k` (published by [`NetDevice::publish_rx`]).
    fn post(&mut self, k: usize) -> Result<(), NetError> {
        let req = self.rx_ids.post(self.rx_pages[k].gref).map_err(|_| NetError::NoMemory)?;
        if self.rx.ring.try_push(req).is_err() {
            // Cannot happen: at most RX_POOL < RX_RING_SLOTS are posted.
            self.broken = true;
            return Err(NetError::Protocol);
        }
        Ok(())
    }

    fn publish_rx(&mut self) -> Result<(), NetError> {
        if self.rx.ring.push_and_check_notify().map_err(|e| self.fail(e))? {
            let _ = self.rx.notify();
        }
        Ok(())
    }

    /// Takes the answers to frames sent, freeing their pages.
    fn reap_tx(&mut self) -> Result<(), NetError> {
        while let Some(rsp) = self.tx.ring.pop_response().map_err(|e| self.fail(e))? {
            let done = self.tx_ids.complete(rsp).map_err(|_| {
                self.broken = true;
                NetError::Protocol
            })?;
            if done.status != TxStatus::Okay {
                self.stats.tx_errors += 1;
            }
            match self.by_gref.get(&done.gref) {
                Some(&k) => self.tx_free.push(k),
                None => {
                    self.broken = true;
                    return Err(NetError::Protocol);
                }
            }
        }
        Ok(())
    }

    /// Sends one Ethernet frame (copied into a tx page; `frame` is the
    /// caller's again when this returns). [`NetError::Busy`] when every tx
    /// page is in flight.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        if self.broken {
            return Err(NetError::Protocol);
        }
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()) {
            return Err(NetError::BadLength(frame.len()));
        }
        self.reap_tx()?;
        let k = self.tx_free.pop().ok_or(NetError::Busy)?;
        let page = &self.tx_pages[usize::from(k)];
        let _ = page.shared().write_bytes(0, frame);
        let piece = TxPiece { gref: page.gref, offset: 0, len: frame.len() as u16 };
        let reqs = match self.tx_ids.submit_frame(&[piece], TxFlags::default()) {
            Ok(r) => r,
            Err(_) => {
                self.tx_free.push(k);
                return Err(NetError::Busy);
            }
        };
        for r in reqs.as_slice() {
            if self.tx.ring.try_push(*r).is_err() {
                self.broken = true;
                return Err(NetError::Protocol);
            }
        }
        self.stats.tx_frames += 1;
        if self.tx.ring.push_and_check_notify().map_err(|e| self.fail(e))? {
            let _ = self.tx.notify();
        }
        Ok(())
    }

    /// Receives one frame into `buf` if one has arrived: its length.
    /// Frames answered with an error are dropped (counted); a frame longer
    /// than `buf` is dropped with [`NetError::BufferTooSmall`].
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        if self.broken {
            return Err(NetError::Protocol);
        }
        self.reap_tx()?;
        let mut result = Ok(None);
        let mut reposted = false;
        while let Some(rsp) = self.rx.ring.pop_response().map_err(|e| self.fail(e))? {
            let step = self.rx_ids.complete(rsp).map_err(|_| {
                self.broken = true;
                NetError::Protocol
            })?;
            let grefs: Vec<u32> = match step {
                RxStep::More => continue,
                RxStep::Dropped(d) => {
                    self.stats.rx_dropped += 1;
                    d.grefs.as_slice().to_vec()
                }
                RxStep::Frame(f) => {
                    let len = f.len();
                    if len > buf.len() {
                        self.stats.rx_dropped += 1;
                        result = Err(NetError::BufferTooSmall(len));
                    } else {
                        let mut at = 0;
                        for c in f.chunks() {
                            let Some(&k) = self.by_gref.get(&c.gref) else {
                                self.broken = true;
                                return Err(NetError::Protocol);
                            };
                            let n = usize::from(c.len);
                            let _ = self.rx_pages[usize::from(k)]
                                .shared()
                                .read_bytes(c.range().start, &mut buf[at..at + n]);
                            at += n;
                        }
                        self.stats.rx_frames += 1;
                        result = Ok(Some(len));
                    }
                    f.chunks().iter().map(|c| c.gref).collect()
                }
            };
            for g in grefs {
                let Some(&k) = self.by_gref.get(&g) else {
                    self.broken = true;
                    return Err(NetError::Protocol);
                };
                self.post(usize::from(k))?;
                reposted = true;
            }
            if !matches!(result, Ok(None)) {
                break;
            }
        }
        if reposted {
            self.publish_rx()?;
        }
        result
    }

    /// Waits until every frame sent so far has been answered by the
    /// backend (taken off the ring and handed on, or refused), or
    /// `deadline_ns` passes: whether all were. A domain about to end calls
    /// it so that its last frames are not lost with it.
    pub fn flush_tx(&mut self, deadline_ns: u64) -> Result<bool, NetError> {
        loop {
            self.reap_tx()?;
            if self.tx_ids.in_flight() == 0 {
                return Ok(true);
            }
            if crate::time::now_ns() >= deadline_ns {
                return Ok(false);
            }
            self.wait(deadline_ns)?;
        }
    }

    /// Sleeps until a frame may have arrived, a sent one was answered, or
    /// `deadline_ns` (monotonic) passes. A backend that went away is
    /// [`NetError::NotConnected`].
    pub fn wait(&mut self, deadline_ns: u64) -> Result<(), NetError> {
        let ports = self.ports();
        for p in ports {
            crate::event::clear_pending(p);
        }
        let rx = self.rx.ring.final_check_for_responses().map_err(|e| self.fail(e))?;
        let tx = self.tx.ring.final_check_for_responses().map_err(|e| self.fail(e))?;
        if rx || tx {
            return Ok(());
        }
        if !self.rx.connected() || !self.tx.connected() {
            self.broken = true;
            return Err(NetError::NotConnected);
        }
        let until = deadline_ns.min(crate::time::now_ns().saturating_add(IDLE_CHECK_NS));
        let _ = crate::sched::poll(&[ports[0].0, ports[1].0], until);
        Ok(())
    }
}
