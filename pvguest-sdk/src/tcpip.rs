//! TCP/IP for domU authors: [`smoltcp`] (re-exported: use the SDK's
//! version) over a virtual NIC ([`crate::netfront::NetDevice`]).
//!
//! [`Interface`] owns the NIC (as a smoltcp [`phy::Device`], [`NicPhy`]),
//! the smoltcp interface and a socket set on the heap. It is addressed
//! statically ([`Addressing::Static`]: an [`Ipv4Cidr`] and an optional
//! gateway) or by DHCPv4 ([`Addressing::Dhcp`]: smoltcp's dhcpv4 socket,
//! whose lease [`Interface::poll`] applies). The guest adds TCP, UDP and
//! ICMP sockets ([`Interface::add_tcp`], [`Interface::add_udp`],
//! [`Interface::add_icmp`]), uses them through [`Interface::tcp`] and its
//! siblings, and drives everything with [`Interface::poll`] and
//! [`Interface::wait`]. ARP, and answers to ICMP echo requests for its
//! address, are the interface's own (`auto-icmp-echo-reply`).
//!
//! ```ignore
//! use pvguest_sdk::tcpip::{Addressing, Interface, Ipv4Address, Ipv4Cidr, tcp};
//! let cidr: Ipv4Cidr = "10.0.3.2/24".parse().unwrap();
//! let mut net = Interface::open(&mut store, 0, Addressing::Static { cidr, gateway: None })?;
//! let s = net.add_tcp(16384, 16384);
//! net.tcp_connect(s, (Ipv4Address::new(10, 0, 3, 1), 7))?;
//! let deadline = time::now_ns() + 5_000_000_000;
//! while time::now_ns() < deadline {
//!     net.poll()?;
//!     let sock = net.tcp(s);
//!     if sock.can_send() { sock.send_slice(b"hello")?; }
//!     if sock.can_recv() { sock.recv(|d| { handle(d); (d.len(), ()) })?; }
//!     net.wait(deadline)?;                    // until a frame or smoltcp's next timer
//! }
//! ```
//! (`sample-guests/src/bin/tcpecho.rs` is a complete TCP echo server and
//! client.)
//!
//! # Who owns what
//! - The [`NetDevice`] is the [`Interface`]'s for its life (through
//!   [`NicPhy`]); guest code reaches it only through
//!   [`Interface::nic`] (its MAC and counters) and [`Interface::flush_tx`].
//!   The interface's hardware address is the NIC's MAC (the bridge drops
//!   frames from any other source).
//! - Sockets live in the interface's set; a [`SocketHandle`] names one of
//!   them. Their buffers are the heap's, sized by the caller when the
//!   socket is added. The caller drives the stack: nothing runs in event
//!   handlers (the NIC's ports wake the domain, nothing more).
//! - Under DHCP the dhcpv4 socket is the interface's own; the address,
//!   the default route and [`Interface::lease`] change only in
//!   [`Interface::poll`], as the lease comes, is renewed or is lost.
//!
//! # Frames and limits
//! - Every frame is copied: received ones out of the NIC's rx pages once
//!   into [`NicPhy`]'s receive buffer ([`MAX_FRAME_LEN`] bytes), sent ones
//!   from smoltcp's scratch buffer into a tx page ([`NetDevice::send`]).
//! - MTU 1500 (IP), [`FRAME_MTU`] bytes of Ethernet frame. smoltcp checks
//!   and parses every received frame with its checked wire types and
//!   verifies every checksum (no offload is claimed either way): anything
//!   from the network is hostile input, and what does not parse is
//!   dropped by smoltcp, not by us. Nothing here panics on input.
//! - The TCP window this side advertises is capped at [`MAX_BURST`]
//!   segments (smoltcp's `max_burst_size`), so that a peer filling it
//!   does not overrun the NIC's [`crate::netfront::RX_POOL`] posted rx
//!   pages (the backend drops a frame that finds none).
//! - Transmit back-pressure: when every tx page is in flight
//!   ([`NetError::Busy`]), the frame smoltcp just built waits in one
//!   deferred slot; while it waits, smoltcp is given no transmit token
//!   (it keeps its packets and retries on a later poll), and the slot is
//!   sent first once a tx page comes back. A reply built while the slot
//!   is full (one answering a received frame) is dropped and counted
//!   ([`PhyStats::tx_lost`]): TCP retransmits it.
//! - A NIC whose backend broke the protocol or went away fails every
//!   later [`Interface::poll`] and [`Interface::wait`] with that error.

#![forbid(unsafe_code)]

use crate::netfront::{NetDevice, NetError, NetStats};
use crate::netif::MAX_FRAME_LEN;
use crate::store::Store;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Context, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

pub use smoltcp;
pub use smoltcp::iface::{PollResult, SocketHandle};
pub use smoltcp::socket::{dhcpv4, icmp, tcp, udp};
pub use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint, Ipv4Address, Ipv4Cidr};

/// Bytes of the largest Ethernet frame sent (header and a 1500-byte IP
/// packet; smoltcp counts the Ethernet header in its MTU).
pub const FRAME_MTU: usize = 1514;
/// Segments a TCP peer may have in flight toward us (see the module docs).
pub const MAX_BURST: usize = crate::netfront::RX_POOL / 2;
/// The first local port [`Interface::tcp_connect`] picks (IANA's dynamic
/// range, 49152..=65535).
pub const EPHEMERAL_FIRST: u16 = 49152;

/// How long a wait lasts at most while a frame is deferred (the NIC's
/// answer to a sent frame wakes it sooner).
const DEFERRED_RECHECK_NS: u64 = 10_000_000;

const _: () = assert!(FRAME_MTU <= MAX_FRAME_LEN);

/// smoltcp's clock: the SDK's monotonic system time.
pub fn now() -> Instant {
    Instant::from_micros((crate::time::now_ns() / 1000) as i64)
}

/// Counters of the device layer, beside the NIC's own ([`NetStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhyStats {
    /// Frames that found every tx page in flight and waited in the
    /// deferred slot.
    pub tx_deferred: u64,
    /// Frames lost: built while the deferred slot was full, or refused by
    /// the NIC.
    pub tx_lost: u64,
    /// Received frames dropped before smoltcp saw them (longer than the
    /// receive buffer).
    pub rx_dropped: u64,
}

/// A [`NetDevice`] as smoltcp's [`phy::Device`] (see the module docs).
pub struct NicPhy {
    nic: NetDevice,
    /// One received frame, copied out of the rx pages.
    rx: Box<[u8; MAX_FRAME_LEN]>,
    /// smoltcp builds each frame to send here.
    tx: Box<[u8; MAX_FRAME_LEN]>,
    /// A built frame of this length waits in `deferred` for a tx page.
    deferred_len: Option<usize>,
    deferred: Box<[u8; MAX_FRAME_LEN]>,
    /// The first error that made the NIC unusable (sticky).
    broken: Option<NetError>,
    stats: PhyStats,
}

impl NicPhy {
    /// Wraps a connected NIC.
    pub fn new(nic: NetDevice) -> NicPhy {
        NicPhy {
            nic,
            rx: Box::new([0; MAX_FRAME_LEN]),
            tx: Box::new([0; MAX_FRAME_LEN]),
            deferred_len: None,
            deferred: Box::new([0; MAX_FRAME_LEN]),
            broken: None,
            stats: PhyStats::default(),
        }
    }

    /// The NIC.
    pub fn nic(&self) -> &NetDevice {
        &self.nic
    }

    /// The device layer's counters.
    pub fn stats(&self) -> PhyStats {
        self.stats
    }

    /// The error that made the NIC unusable, if one did.
    pub fn broken(&self) -> Option<&NetError> {
        self.broken.as_ref()
    }

    /// Whether a frame waits in the deferred slot.
    pub fn deferred(&self) -> bool {
        self.deferred_len.is_some()
    }

    fn note(&mut self, e: NetError) {
        note(&mut self.broken, e);
    }

    /// Sends the deferred frame if there is one: whether the slot is free
    /// now.
    fn flush_deferred(&mut self) -> bool {
        let Some(len) = self.deferred_len else { return true };
        if self.broken.is_some() {
            return false;
        }
        match self.nic.send(&self.deferred[..len]) {
            Ok(()) => {
                self.deferred_len = None;
                true
            }
            Err(NetError::Busy) => false,
            Err(e) => {
                self.stats.tx_lost += 1;
                self.deferred_len = None;
                self.note(e);
                self.broken.is_none()
            }
        }
    }
}

/// Keeps the first error after which the NIC is unusable (the backend
/// broke the protocol or went away); others concern one frame only.
fn note(broken: &mut Option<NetError>, e: NetError) {
    if matches!(e, NetError::Protocol | NetError::NotConnected) && broken.is_none() {
        *broken = Some(e);
    }
}

/// A received frame for smoltcp (borrowed from [`NicPhy`]'s buffer).
pub struct RxToken<'a> {
    frame: &'a [u8],
}

/// Room for one frame to send.
pub struct TxToken<'a> {
    phy: TxHalf<'a>,
}

/// What a [`TxToken`] needs of [`NicPhy`] (split from the rx buffer,
/// which an [`RxToken`] borrows at the same time).
struct TxHalf<'a> {
    nic: &'a mut NetDevice,
    tx: &'a mut [u8; MAX_FRAME_LEN],
    deferred_len: &'a mut Option<usize>,
    deferred: &'a mut [u8; MAX_FRAME_LEN],
    broken: &'a mut Option<NetError>,
    stats: &'a mut PhyStats,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let p = self.phy;
        // smoltcp never asks for more than the MTU; a longer request gets
        // the buffer's worth and the frame is counted lost.
        let room = len.min(MAX_FRAME_LEN);
        let r = f(&mut p.tx[..room]);
        if room != len || p.broken.is_some() {
            p.stats.tx_lost += 1;
            return r;
        }
        match p.nic.send(&p.tx[..len]) {
            Ok(()) => {}
            Err(NetError::Busy) if p.deferred_len.is_none() => {
                p.deferred[..len].copy_from_slice(&p.tx[..len]);
                *p.deferred_len = Some(len);
                p.stats.tx_deferred += 1;
            }
            Err(e) => {
                p.stats.tx_lost += 1;
                note(p.broken, e);
            }
        }
        r
    }
}

impl phy::Device for NicPhy {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.broken.is_some() {
            return None;
        }
        self.flush_deferred();
        let len = loop {
            match self.nic.recv(&mut self.rx[..]) {
                Ok(Some(n)) => break n,
                Ok(None) => return None,
                Err(NetError::BufferTooSmall(_)) => self.stats.rx_dropped += 1,
                Err(e) => {
                    self.note(e);
                    return None;
                }
            }
        };
        let NicPhy { nic, rx, tx, deferred_len, deferred, broken, stats } = self;
        let phy = TxHalf { nic, tx, deferred_len, deferred, broken, stats };
        Some((RxToken { frame: &rx[..len] }, TxToken { phy }))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        if self.broken.is_some() || !self.flush_deferred() {
            return None;
        }
        let NicPhy { nic, tx, deferred_len, deferred, broken, stats, .. } = self;
        Some(TxToken { phy: TxHalf { nic, tx, deferred_len, deferred, broken, stats } })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME_MTU;
        caps.max_burst_size = Some(MAX_BURST);
        caps
    }
}

/// How the interface gets its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// This address and prefix, and a default route through `gateway` if
    /// one is given.
    Static { cidr: Ipv4Cidr, gateway: Option<Ipv4Address> },
    /// A DHCPv4 lease (none until [`Interface::poll`] has applied one).
    Dhcp,
}

/// A DHCPv4 lease as applied to the interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Cidr,
    pub router: Option<Ipv4Address>,
    /// The server that granted it.
    pub server: Ipv4Address,
    pub dns_servers: Vec<Ipv4Address>,
}

/// Why a call through the [`Interface`] failed (with `From<NetError>`, so
/// that a guest's own function can `?` both [`Interface::poll`] and the
/// socket calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpipError {
    /// The NIC (opening it, or it broke).
    Net(NetError),
    /// smoltcp refused the connection (no address yet, a bad endpoint, or
    /// the socket is not closed).
    Connect(tcp::ConnectError),
    /// smoltcp refused to listen (a bad endpoint, or the socket is open).
    Listen(tcp::ListenError),
}

impl From<NetError> for TcpipError {
    fn from(e: NetError) -> Self {
        TcpipError::Net(e)
    }
}

/// A NIC with TCP/IP on it (see the module docs).
pub struct Interface {
    phy: NicPhy,
    iface: smoltcp::iface::Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    lease: Option<Lease>,
    next_port: u16,
}

impl Interface {
    /// Opens this domain's virtual NIC number `index`
    /// ([`NetDevice::open`]) and brings TCP/IP up on it.
    pub fn open(store: &mut Store, index: usize, addressing: Addressing) -> Result<Interface, NetError> {
        Ok(Interface::new(NetDevice::open(store, index)?, addressing))
    }

    /// Brings TCP/IP up on a connected NIC.
    pub fn new(nic: NetDevice, addressing: Addressing) -> Interface {
        let mut phy = NicPhy::new(nic);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(phy.nic.mac())));
        let seed = crate::time::tsc();
        config.random_seed = seed;
        let mut iface = smoltcp::iface::Interface::new(config, &mut phy, now());
        let mut sockets = SocketSet::new(Vec::new());
        let dhcp = match addressing {
            Addressing::Static { cidr, gateway } => {
                iface.update_ip_addrs(|a| {
                    // One address in an empty list: cannot overflow.
                    let _ = a.push(IpCidr::Ipv4(cidr));
                });
                if let Some(gw) = gateway {
                    // The route table is empty here: room for one.
                    let _ = iface.routes_mut().add_default_ipv4_route(gw);
                }
                None
            }
            Addressing::Dhcp => Some(sockets.add(dhcpv4::Socket::new())),
        };
        let span = u16::MAX - EPHEMERAL_FIRST;
        let next_port = EPHEMERAL_FIRST + (seed % u64::from(span)) as u16;
        Interface { phy, iface, sockets, dhcp, lease: None, next_port }
    }

    /// The NIC (its MAC and counters).
    pub fn nic(&self) -> &NetDevice {
        &self.phy.nic
    }

    /// The NIC's counters.
    pub fn nic_stats(&self) -> NetStats {
        self.phy.nic.stats()
    }

    /// The device layer's counters.
    pub fn phy_stats(&self) -> PhyStats {
        self.phy.stats
    }

    /// The interface's IPv4 address, if it has one (under DHCP: once a
    /// lease was applied).
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|a| match a {
            IpCidr::Ipv4(c) => Some(*c),
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }

    /// The DHCPv4 lease in use (always `None` when static).
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// smoltcp's interface, for what this type does not wrap (routes,
    /// more addresses).
    pub fn iface_mut(&mut self) -> &mut smoltcp::iface::Interface {
        &mut self.iface
    }

    /// smoltcp's context, which some socket calls take (TCP `connect`).
    pub fn context(&mut self) -> &mut Context {
        self.iface.context()
    }

    /// The socket set, for what this type does not wrap.
    pub fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// Adds a TCP socket with receive and send buffers of these sizes.
    pub fn add_tcp(&mut self, rx_bytes: usize, tx_bytes: usize) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0u8; rx_bytes]);
        let tx = tcp::SocketBuffer::new(vec![0u8; tx_bytes]);
        self.sockets.add(tcp::Socket::new(rx, tx))
    }

    /// Adds a UDP socket with room for `packets` datagrams of `bytes`
    /// bytes in all, each way.
    pub fn add_udp(&mut self, packets: usize, bytes: usize) -> SocketHandle {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; packets], vec![0u8; bytes]);
        self.sockets.add(udp::Socket::new(buf(), buf()))
    }

    /// Adds an ICMP socket with room for `packets` packets of `bytes`
    /// bytes in all, each way.
    pub fn add_icmp(&mut self, packets: usize, bytes: usize) -> SocketHandle {
        let buf = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; packets], vec![0u8; bytes]);
        self.sockets.add(icmp::Socket::new(buf(), buf()))
    }

    /// The interface's own DHCPv4 socket, under [`Addressing::Dhcp`]: to
    /// tune it (its retry timings: smoltcp's default waits 10 s before it
    /// asks again), never to poll it (the interface does, and applies the
    /// lease).
    pub fn dhcp_socket(&mut self) -> Option<&mut dhcpv4::Socket<'static>> {
        let h = self.dhcp?;
        Some(self.sockets.get_mut::<dhcpv4::Socket>(h))
    }

    /// Removes a socket (its buffers are freed). Panics if `h` names the
    /// interface's own DHCP socket.
    pub fn remove(&mut self, h: SocketHandle) {
        assert!(Some(h) != self.dhcp, "the DHCP socket is the interface's own");
        self.sockets.remove(h);
    }

    /// The TCP socket `h` (panics if `h` names another kind: a
    /// programming error).
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// The UDP socket `h` (panics if `h` names another kind).
    pub fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(h)
    }

    /// The ICMP socket `h` (panics if `h` names another kind).
    pub fn icmp(&mut self, h: SocketHandle) -> &mut icmp::Socket<'static> {
        self.sockets.get_mut::<icmp::Socket>(h)
    }

    /// Listens on TCP socket `h` for a connection to `port`.
    pub fn tcp_listen(&mut self, h: SocketHandle, port: u16) -> Result<(), TcpipError> {
        self.tcp(h).listen(port).map_err(TcpipError::Listen)
    }

    /// Connects TCP socket `h` to `remote` from a local port of the
    /// dynamic range (a different one each call).
    pub fn tcp_connect(&mut self, h: SocketHandle, remote: impl Into<IpEndpoint>) -> Result<(), TcpipError> {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { EPHEMERAL_FIRST } else { port + 1 };
        let (iface, sockets) = (&mut self.iface, &mut self.sockets);
        sockets.get_mut::<tcp::Socket>(h).connect(iface.context(), remote.into(), port).map_err(TcpipError::Connect)
    }

    /// Moves frames both ways and runs smoltcp's timers, then applies
    /// what the DHCP socket learnt: whether any socket's state may have
    /// changed. Fails once the NIC is unusable.
    pub fn poll(&mut self) -> Result<PollResult, NetError> {
        if let Some(e) = self.phy.broken.clone() {
            return Err(e);
        }
        let r = self.iface.poll(now(), &mut self.phy, &mut self.sockets);
        if let Some(e) = self.phy.broken.clone() {
            return Err(e);
        }
        self.apply_dhcp();
        Ok(r)
    }

    fn apply_dhcp(&mut self) {
        let Some(h) = self.dhcp else { return };
        let event = self.sockets.get_mut::<dhcpv4::Socket>(h).poll();
        match event {
            None => {}
            Some(dhcpv4::Event::Configured(c)) => {
                let lease = Lease {
                    address: c.address,
                    router: c.router,
                    server: c.server.address,
                    dns_servers: c.dns_servers.iter().copied().collect(),
                };
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(lease.address));
                });
                self.iface.routes_mut().remove_default_ipv4_route();
                if let Some(r) = lease.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                }
                self.lease = Some(lease);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|a| a.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                self.lease = None;
            }
        }
    }

    /// Sleeps until a frame may have arrived, a sent one was answered,
    /// smoltcp's next timer (`poll_delay`) or `deadline_ns` (monotonic),
    /// whichever is first. Returns at once if smoltcp has work now. Call
    /// [`Interface::poll`] after it.
    pub fn wait(&mut self, deadline_ns: u64) -> Result<(), NetError> {
        if let Some(e) = self.phy.broken.clone() {
            return Err(e);
        }
        let t = crate::time::now_ns();
        let mut until = deadline_ns;
        if self.phy.deferred() {
            // smoltcp holds packets back until a tx page comes back: its
            // poll delay is zero, but only the NIC's answer (which wakes
            // the wait) helps.
            until = until.min(t.saturating_add(DEFERRED_RECHECK_NS));
        } else if let Some(d) = self.iface.poll_delay(now(), &self.sockets) {
            until = until.min(t.saturating_add(d.total_micros().saturating_mul(1000)));
        }
        if until <= t {
            return Ok(());
        }
        self.phy.nic.wait(until).inspect_err(|e| self.phy.note(e.clone()))
    }

    /// Polls until every frame sent so far has been taken by the backend
    /// (the deferred one too), or `deadline_ns`: whether all were. A
    /// domain about to end calls it so that its last segments (a FIN, an
    /// ACK) are not lost with it.
    pub fn flush_tx(&mut self, deadline_ns: u64) -> Result<bool, NetError> {
        while self.phy.deferred() {
            self.poll()?;
            if crate::time::now_ns() >= deadline_ns {
                return Ok(false);
            }
            self.phy.nic.wait(deadline_ns.min(crate::time::now_ns().saturating_add(DEFERRED_RECHECK_NS)))?;
        }
        self.phy.nic.flush_tx(deadline_ns)
    }
}
