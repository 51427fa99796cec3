//! dom0's network: the virtio-net NIC under smoltcp, answering ARP and
//! ICMP echo for its address and running a UDP echo service.
//!
//! ## Services
//! - Address [`IP`]/24 on QEMU's user network, gateway [`GATEWAY`]; the
//!   NIC's MAC comes from its configuration (QEMU is given
//!   52:54:00:12:34:56).
//! - ARP and ICMP echo: smoltcp's interface answers both for its own
//!   address (`auto-icmp-echo-reply`).
//! - UDP echo on port [`ECHO_PORT`] (7, RFC 862): every datagram goes back
//!   to its sender unchanged.
//! - UDP control on port [`CONTROL_PORT`] (7007): `stats` is answered
//!   `rf-net stats ` and the counters line (`key=value` words, see
//!   [`Counters`]); `ping` with `rf-net pinging 10.0.2.2`, after which dom0
//!   sends [`PINGS`] echo requests to the gateway; `inject-ping` with
//!   `rf-net injected an echo request from 10.0.2.2` (see below); `stop`
//!   with `rf-net stopping`, after which the service prints its counters
//!   and [`run`] returns. Anything else is answered `rf-net what?`. The
//!   control port is for the test host; it changes nothing but counters.
//!
//! ## What QEMU's user network can exercise
//! - ARP answers: yes, if dom0 has sent nothing before the host's first
//!   datagram, QEMU (slirp) does not know dom0's MAC and ARPs for it
//!   before it forwards (`arp_req_in`, `arp_rep_out`). Once dom0 has asked
//!   slirp something, slirp learns the MAC from that request instead.
//! - ICMP echo answers: not from the wire. slirp never sends echo requests
//!   to the guest, and the host cannot ping a guest through a port
//!   forward. So `inject-ping` puts an echo request "from 10.0.2.2" into
//!   the device layer below smoltcp, as if received ([`inject_ping`]), and
//!   smoltcp's answer goes out through the NIC for real (`icmp_req_in`,
//!   `icmp_rep_out`; slirp drops the reply it never asked for). And ICMP
//!   through the NIC both ways is checked as a client: slirp answers pings
//!   to its own address (10.0.2.2) inside QEMU, never leaving the machine
//!   (`pings_answered`).
//! - Malformed frames: slirp sends none, so the driver's receive checks
//!   run on made-up used-ring entries at bring-up ([`frame_checks`]).
//! - UDP: every datagram the host sends to the forward.
//!
//! ## Interrupts, not polling
//! The NIC's INTx line is a pirq bound to a port whose handler only sets
//! [`NIC_IRQ`]; the real-time one-shot timer's handler sets [`TIMER`]. The
//! main loop blocks the domain until either is set
//! ([`event::block_until`]), with the timer armed for the earliest of
//! smoltcp's `poll_delay`, the next ping, the next counters line and the
//! service's time limit. On an interrupt it reads the device's ISR (which
//! lowers the level line), EOIs the pirq (the line stays masked until
//! then), and lets smoltcp drain the rings. Handlers touch no device state:
//! the NIC, the interface and the sockets belong to the main flow alone.
//!
//! ## Hostile input
//! Every frame comes from the network. [`Nic::receive_into`] copies each
//! frame once out of the device's buffer after checking its lengths (see
//! [`pvguest_sdk::virtio_net`]); a malformed one is dropped, counted, and
//! printed (the first [`DROPS_PRINTED`] of them: a flood prints no more).
//! smoltcp parses the copy with its checked wire types; the counters here
//! parse it with the same checked types, and ignore what does not parse.
//! A datagram too long for the echo buffer is dropped and counted, never
//! truncated. Nothing here panics on input.
//!
//! ## Buffers
//! All statically sized, on this function's stack: the socket buffers
//! (smoltcp's, no alloc), one receive copy and one scratch frame. The
//! device's buffers are the NIC's (DMA pool,
//! [`pvguest_sdk::virtio_net::DMA_BYTES`]).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use pvguest_sdk::abi::event::VIRQ_TIMER;
use pvguest_sdk::event::{self, Port};
use pvguest_sdk::pci::{self, Bdf};
use pvguest_sdk::virtio_net::{check_frame, Nic, NicError, NicStats, RxDrop, BUF_LEN, MAX_FRAME};
use pvguest_sdk::{cmdline, irq, println, sched, time, timer, Errno, StartInfo};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress,
    Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
};

/// dom0's address on QEMU's user network.
pub const IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
/// QEMU's user-network gateway (and host alias).
pub const GATEWAY: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
/// The UDP echo service's port.
pub const ECHO_PORT: u16 = 7;
/// The UDP control port (`stats`, `stop`).
pub const CONTROL_PORT: u16 = 7007;
/// Echo requests sent to the gateway at bring-up.
pub const PINGS: u16 = 3;
/// Malformed frames printed one by one (later ones are only counted).
pub const DROPS_PRINTED: u64 = 8;
/// virtio-net's PCI ids (modern device).
pub const VIRTIO_NET: (u16, u16) = (0x1af4, 0x1041);
/// TCP echo buffer bytes each way (tcpecho's, for a fair comparison).
const TCP_ECHO_BUF: usize = 16 * 1024;
/// The ICMP identifier of dom0's pings.
const PING_IDENT: u16 = 0x5246;
/// How often the counters line is printed while serving.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Set by the NIC's interrupt handler, cleared by the main loop.
static NIC_IRQ: AtomicBool = AtomicBool::new(false);
/// Interrupts taken on the NIC's port.
static NIC_IRQS: AtomicU64 = AtomicU64::new(0);
/// Set by the timer's handler, cleared by the main loop before it arms it.
static TIMER: AtomicBool = AtomicBool::new(false);

fn on_nic(_: Port) {
    NIC_IRQS.fetch_add(1, Ordering::SeqCst);
    NIC_IRQ.store(true, Ordering::SeqCst);
}

fn on_timer(_: Port) {
    TIMER.store(true, Ordering::SeqCst);
}

/// Why the network service did not run to its `stop`.
#[derive(Debug)]
pub enum NetError {
    /// No virtio-net function among dom0's PCI functions.
    NoNic,
    /// PCI, interrupt or timer setup refused.
    Setup(&'static str, Errno),
    /// The NIC did not come up.
    Nic(NicError),
    /// Its INTx pin routes to no GSI.
    NoGsi,
    /// No `stop` came within the time limit (`net_s=`).
    TimedOut(u64),
    /// The receive checks let a malformed entry through (or refused a
    /// good one): this many of the self-test's cases went wrong.
    FrameChecks(u32),
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::NoNic => {
                write!(f, "no virtio-net function ({:04x}:{:04x}) among dom0's", VIRTIO_NET.0, VIRTIO_NET.1)
            }
            NetError::Setup(what, e) => write!(f, "{what}: {}", e.name()),
            NetError::Nic(e) => write!(f, "the NIC did not come up: {e:?}"),
            NetError::NoGsi => write!(f, "the NIC's INTx pin routes to no GSI"),
            NetError::TimedOut(s) => write!(f, "no stop datagram within {s} s"),
            NetError::FrameChecks(n) => write!(f, "{n} receive-check case(s) went wrong"),
        }
    }
}

/// What the service saw, beside the NIC's own counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// ARP requests received for our address.
    pub arp_req_in: u64,
    /// ARP replies sent.
    pub arp_rep_out: u64,
    /// ARP requests sent (to resolve the gateway).
    pub arp_req_out: u64,
    /// ARP replies received.
    pub arp_rep_in: u64,
    /// ICMP echo requests received for us.
    pub icmp_req_in: u64,
    /// ICMP echo replies sent (answers to requests).
    pub icmp_rep_out: u64,
    /// Echo replies to our pings of the gateway.
    pub pings_answered: u64,
    /// Pings of the gateway sent.
    pub pings_sent: u64,
    /// UDP datagrams echoed.
    pub udp_echoed: u64,
    /// UDP datagrams dropped (too long, or no room to send).
    pub udp_dropped: u64,
    /// Frames the stack could not send (no transmit buffer at the time).
    pub tx_lost: u64,
}

/// Which counters a [`Line`] shows: all (the `stats` answer), or one
/// half (a console line holds 200 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    All,
    ArpIcmp,
    UdpFrames,
}

/// The counters line (the `stats` answer, and the console's two), in
/// `key=value` words.
struct Line<'a>(&'a Counters, NicStats, u64, Part);

impl core::fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (c, n, irqs, part) = (self.0, self.1, self.2, self.3);
        if part != Part::UdpFrames {
            write!(
                f,
                "arp_req_in={} arp_rep_out={} arp_req_out={} arp_rep_in={} icmp_req_in={} icmp_rep_out={} \
                 pings_sent={} pings_answered={}",
                c.arp_req_in,
                c.arp_rep_out,
                c.arp_req_out,
                c.arp_rep_in,
                c.icmp_req_in,
                c.icmp_rep_out,
                c.pings_sent,
                c.pings_answered,
            )?;
        }
        if part == Part::All {
            f.write_str(" ")?;
        }
        if part != Part::ArpIcmp {
            write!(
                f,
                "udp_echoed={} udp_dropped={} rx={} tx={} rx_dropped={} tx_lost={} interrupts={irqs}",
                c.udp_echoed, c.udp_dropped, n.rx_frames, n.tx_frames, n.rx_dropped, c.tx_lost,
            )?;
        }
        Ok(())
    }
}

/// Prints the counters on two console lines, each starting with `what`.
fn print_counters(what: &str, c: &Counters, n: NicStats) {
    let irqs = NIC_IRQS.load(Ordering::SeqCst);
    println!("net: {what}: {}", Line(c, n, irqs, Part::ArpIcmp));
    println!("net: {what}: {}", Line(c, n, irqs, Part::UdpFrames));
}

/// Direction of a frame, for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

/// Counts the ARP and ICMP echo frames among `frame` (checked parsing;
/// what does not parse is not counted).
fn classify(frame: &[u8], dir: Dir, c: &mut Counters) {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return };
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let Ok(p) = ArpPacket::new_checked(eth.payload()) else { return };
            let Ok(ArpRepr::EthernetIpv4 { operation, target_protocol_addr, .. }) = ArpRepr::parse(&p) else {
                return;
            };
            match (dir, operation) {
                (Dir::In, ArpOperation::Request) if target_protocol_addr == IP => c.arp_req_in += 1,
                (Dir::In, ArpOperation::Reply) if target_protocol_addr == IP => c.arp_rep_in += 1,
                (Dir::Out, ArpOperation::Reply) => c.arp_rep_out += 1,
                (Dir::Out, ArpOperation::Request) => c.arp_req_out += 1,
                _ => {}
            }
        }
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else { return };
            if ip.next_header() != IpProtocol::Icmp {
                return;
            }
            let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else { return };
            match (dir, icmp.msg_type()) {
                (Dir::In, Icmpv4Message::EchoRequest) if ip.dst_addr() == IP => c.icmp_req_in += 1,
                (Dir::Out, Icmpv4Message::EchoReply) => c.icmp_rep_out += 1,
                (Dir::In, Icmpv4Message::EchoReply) if ip.src_addr() == GATEWAY => c.pings_answered += 1,
                _ => {}
            }
        }
        _ => {}
    }
}

/// smoltcp's device: the NIC, one receive copy, one scratch frame, and
/// the counters.
struct Phy {
    nic: Nic,
    /// A frame of this length waits in `rx`, put there by [`inject_ping`]
    /// rather than received: the next `receive` hands it to smoltcp.
    injected: Option<usize>,
    rx: [u8; MAX_FRAME],
    scratch: [u8; MAX_FRAME],
    counters: Counters,
}

struct RxToken<'a> {
    frame: &'a [u8],
}

struct TxToken<'a> {
    nic: &'a mut Nic,
    scratch: &'a mut [u8; MAX_FRAME],
    counters: &'a mut Counters,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self.nic.tx_frame(len) {
            Ok(mut frame) => {
                let r = f(&mut frame);
                classify(&frame, Dir::Out, self.counters);
                if let Err(e) = frame.send() {
                    self.counters.tx_lost += 1;
                    println!("net: frame of {len} bytes not sent: {e:?}");
                }
                r
            }
            Err(e) => {
                // smoltcp wants its answer all the same: build the frame
                // into the scratch buffer, and count it lost.
                self.counters.tx_lost += 1;
                println!("net: frame of {len} bytes not sent: {e:?}");
                f(&mut self.scratch[..len.min(MAX_FRAME)])
            }
        }
    }
}

impl Device for Phy {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.nic.reclaim();
        // An answer needs a transmit buffer: leave the frame in the ring
        // until one is free (a transmit completion interrupts).
        if !self.nic.can_transmit() {
            return None;
        }
        let len = match self.injected.take() {
            Some(len) => len,
            None => loop {
                match self.nic.receive_into(&mut self.rx)? {
                    Ok(len) => break len,
                    Err(why) => report_drop(why, self.nic.stats().rx_dropped),
                }
            },
        };
        classify(&self.rx[..len], Dir::In, &mut self.counters);
        let Phy { nic, rx, scratch, counters, .. } = self;
        Some((RxToken { frame: &rx[..len] }, TxToken { nic, scratch, counters }))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        self.nic.reclaim();
        if !self.nic.can_transmit() {
            return None;
        }
        Some(TxToken { nic: &mut self.nic, scratch: &mut self.scratch, counters: &mut self.counters })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(1);
        caps
    }
}

/// Prints a dropped frame's reason (the first [`DROPS_PRINTED`] of them).
fn report_drop(why: RxDrop, dropped: u64) {
    if dropped <= DROPS_PRINTED {
        println!("net: malformed frame dropped ({dropped} so far): {why:?}");
    } else if dropped == DROPS_PRINTED + 1 {
        println!("net: more malformed frames dropped; only counting them from here on");
    }
}

/// The first virtio-net function dom0 was given.
fn find_nic() -> Result<Bdf, NetError> {
    let mut fs = pci::enumerate().map_err(|e| NetError::Setup("PCI enumeration", e))?;
    fs.find(|f| (f.vendor, f.device) == VIRTIO_NET).map(|f| f.bdf).ok_or(NetError::NoNic)
}

/// How long the end waits for the device to take the last frames.
const TX_DRAIN: Duration = Duration::from_millis(200);

fn now() -> Instant {
    Instant::from_micros((time::now_ns() / 1000) as i64)
}

/// What a control datagram asks for.
enum Command {
    Stats,
    Ping,
    Inject,
    Stop,
    Unknown,
}

fn command(d: &[u8]) -> Command {
    match d.trim_ascii() {
        b"stats" => Command::Stats,
        b"ping" => Command::Ping,
        b"inject-ping" => Command::Inject,
        b"stop" => Command::Stop,
        _ => Command::Unknown,
    }
}

/// Brings the NIC up and serves ARP, ICMP echo, UDP echo on
/// [`ECHO_PORT`] and the control port until a `stop` datagram comes (see
/// the module docs), or `net_s=` seconds (command line; default 60) have
/// passed, which is an error (with `net_serve_s=N` instead: N seconds,
/// then it ends normally, as in the demo). Prints a bring-up line and the counters at
/// intervals and at the end; returns the final counters.
///
/// It registers the SDK's event upcall ([`event::init`]) and binds
/// `VIRQ_TIMER` itself: a caller that already bound `VIRQ_TIMER` gets
/// [`NetError::Setup`]. Its NIC takes [`pvguest_sdk::virtio_net::DMA_BYTES`]
/// of the DMA pool (the manifest's `dma_kib`: 128 is enough).
pub fn run(si: &StartInfo) -> Result<Counters, NetError> {
    let r = serve(si);
    if let Err(e) = &r {
        println!("net: FAILED: {e}");
    }
    r
}

fn serve(si: &StartInfo) -> Result<Counters, NetError> {
    // `net_serve_s=N` (the demo): serve N seconds, then end normally.
    let serve_s = cmdline::arg(si.cmdline(), "net_serve_s");
    let limit_s = serve_s.unwrap_or_else(|| cmdline::arg_or(si.cmdline(), "net_s", 60));
    let wrong = frame_checks();
    if wrong > 0 {
        return Err(NetError::FrameChecks(wrong));
    }
    let bdf = find_nic()?;
    let nic = Nic::new(bdf).map_err(NetError::Nic)?;
    let mac = nic.mac();

    // Interrupts: the NIC's INTx line as a pirq, and the one-shot timer.
    event::init();
    let gsi = irq::gsi_of(bdf).map_err(|e| NetError::Setup("interrupt pin", e))?.ok_or(NetError::NoGsi)?;
    let pirq = irq::map_gsi(gsi).map_err(|e| NetError::Setup("map_pirq", e))?;
    let chan = irq::bind(pirq).map_err(|e| NetError::Setup("bind_pirq", e))?;
    chan.on_interrupt(on_nic).map_err(|e| NetError::Setup("NIC handler", e))?;
    event::bind_virq(VIRQ_TIMER, on_timer).map_err(|e| NetError::Setup("VIRQ_TIMER", e))?;
    event::enable();

    let mut phy =
        Phy { nic, injected: None, rx: [0; MAX_FRAME], scratch: [0; MAX_FRAME], counters: Counters::default() };
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    let mut iface = Interface::new(config, &mut phy, now());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(IP), 24));
    });
    iface.routes_mut().add_default_ipv4_route(GATEWAY).map_err(|_| NetError::Setup("route", Errno::ENOMEM))?;

    let (mut echo_rx_meta, mut echo_tx_meta) = ([udp::PacketMetadata::EMPTY; 8], [udp::PacketMetadata::EMPTY; 8]);
    let (mut echo_rx, mut echo_tx) = ([0u8; 8192], [0u8; 8192]);
    let (mut ctl_rx_meta, mut ctl_tx_meta) = ([udp::PacketMetadata::EMPTY; 2], [udp::PacketMetadata::EMPTY; 2]);
    let (mut ctl_rx, mut ctl_tx) = ([0u8; 512], [0u8; 512]);
    let (mut icmp_rx_meta, mut icmp_tx_meta) = ([icmp::PacketMetadata::EMPTY; 4], [icmp::PacketMetadata::EMPTY; 4]);
    let (mut icmp_rx, mut icmp_tx) = ([0u8; 512], [0u8; 512]);
    let mut storage = [SocketStorage::EMPTY; 4];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut echo = udp::Socket::new(
        udp::PacketBuffer::new(&mut echo_rx_meta[..], &mut echo_rx[..]),
        udp::PacketBuffer::new(&mut echo_tx_meta[..], &mut echo_tx[..]),
    );
    let mut ctl = udp::Socket::new(
        udp::PacketBuffer::new(&mut ctl_rx_meta[..], &mut ctl_rx[..]),
        udp::PacketBuffer::new(&mut ctl_tx_meta[..], &mut ctl_tx[..]),
    );
    let mut ping = icmp::Socket::new(
        icmp::PacketBuffer::new(&mut icmp_rx_meta[..], &mut icmp_rx[..]),
        icmp::PacketBuffer::new(&mut icmp_tx_meta[..], &mut icmp_tx[..]),
    );
    echo.bind(ECHO_PORT).map_err(|_| NetError::Setup("bind udp echo", Errno::EINVAL))?;
    ctl.bind(CONTROL_PORT).map_err(|_| NetError::Setup("bind udp control", Errno::EINVAL))?;
    ping.bind(icmp::Endpoint::Ident(PING_IDENT)).map_err(|_| NetError::Setup("bind icmp", Errno::EINVAL))?;
    let (echo, ctl, ping) = (sockets.add(echo), sockets.add(ctl), sockets.add(ping));
    // `tcp_echo` (the network benchmark's dom0-native half): a TCP echo
    // on the UDP echo's port number, with the buffers the domU's echo
    // server has (tcpecho's), from a small heap.
    let tcp_echo = if si.cmdline().split(' ').any(|w| w == "tcp_echo") && pvguest_sdk::heap::init(16).is_ok() {
        let buf = || alloc::vec![0u8; TCP_ECHO_BUF];
        let mut t = tcp::Socket::new(tcp::SocketBuffer::new(buf()), tcp::SocketBuffer::new(buf()));
        t.listen(ECHO_PORT).map_err(|_| NetError::Setup("listen tcp echo", Errno::EINVAL))?;
        Some(sockets.add(t))
    } else {
        None
    };

    println!(
        "net: virtio-net at {bdf}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, GSI {gsi} (pirq {}, port {}); \
         {IP}/24 via {GATEWAY}; udp echo on port {ECHO_PORT}, control on port {CONTROL_PORT}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        pirq.0,
        chan.port().0
    );

    let start = now();
    let end = start + Duration::from_secs(limit_s);
    let mut next_stats = start + STATS_EVERY;
    let (mut pings_wanted, mut pings_sent, mut next_ping) = (0u16, 0u16, start);
    let mut stopping = false;
    let mut buf = [0u8; MAX_FRAME];
    let irqs = || NIC_IRQS.load(Ordering::SeqCst);
    loop {
        // The interrupt: ISR read (lowers the line), then EOI, then the
        // rings are drained by the poll below.
        if NIC_IRQ.swap(false, Ordering::SeqCst) {
            phy.nic.ack_interrupt();
            if let Err(e) = chan.eoi() {
                println!("net: eoi of pirq {}: {e}", pirq.0);
            }
        }
        let t = now();
        iface.poll(t, &mut phy, &mut sockets);

        // UDP echo: each datagram back to its sender, unchanged.
        let s = sockets.get_mut::<udp::Socket>(echo);
        while s.can_recv() && s.can_send() {
            match s.recv_slice(&mut buf) {
                Ok((n, meta)) => match s.send_slice(&buf[..n], meta) {
                    Ok(()) => phy.counters.udp_echoed += 1,
                    Err(_) => phy.counters.udp_dropped += 1,
                },
                Err(udp::RecvError::Truncated) => phy.counters.udp_dropped += 1,
                Err(udp::RecvError::Exhausted) => break,
            }
        }

        // TCP echo, when asked for: what came in goes out; a connection
        // that ended is answered with our FIN, then listened for again.
        if let Some(h) = tcp_echo {
            let s = sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(buf.len());
                let Ok(n) = s.recv_slice(&mut buf[..room]) else { break };
                if n == 0 {
                    break;
                }
                let _ = s.send_slice(&buf[..n]);
            }
            if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 && s.send_queue() == 0 {
                s.close();
            }
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
                s.abort();
                let _ = s.listen(ECHO_PORT);
            }
        }

        // Control.
        let s = sockets.get_mut::<udp::Socket>(ctl);
        while s.can_recv() && s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut buf) else { break };
            let mut reply = Reply::default();
            match command(&buf[..n]) {
                Command::Stats => {
                    let _ = core::fmt::write(
                        &mut reply,
                        format_args!("rf-net stats {}", Line(&phy.counters, phy.nic.stats(), irqs(), Part::All)),
                    );
                }
                Command::Ping => {
                    pings_wanted = pings_wanted.saturating_add(PINGS);
                    next_ping = t;
                    let _ = core::fmt::write(&mut reply, format_args!("rf-net pinging {GATEWAY}"));
                }
                Command::Inject => {
                    let answer = match inject_ping(&mut phy, mac) {
                        true => "rf-net injected an echo request from 10.0.2.2",
                        false => "rf-net cannot inject now",
                    };
                    let _ = core::fmt::write(&mut reply, format_args!("{answer}"));
                }
                Command::Stop => {
                    stopping = true;
                    let _ = core::fmt::write(&mut reply, format_args!("rf-net stopping"));
                }
                Command::Unknown => {
                    let _ = core::fmt::write(&mut reply, format_args!("rf-net what?"));
                }
            }
            let _ = s.send_slice(reply.as_bytes(), meta);
        }

        // Pings of the gateway, when asked.
        let s = sockets.get_mut::<icmp::Socket>(ping);
        while s.recv().is_ok() {}
        if pings_sent < pings_wanted && t >= next_ping && s.can_send() {
            let req = Icmpv4Repr::EchoRequest { ident: PING_IDENT, seq_no: pings_sent, data: b"ringfence dom0 ping" };
            if let Ok(b) = s.send(req.buffer_len(), IpAddress::Ipv4(GATEWAY)) {
                req.emit(&mut Icmpv4Packet::new_unchecked(b), &phy::ChecksumCapabilities::default());
                pings_sent += 1;
                phy.counters.pings_sent += 1;
            }
            next_ping = t + Duration::from_millis(200);
        }

        // Send what was queued above now, not at the next wake-up.
        iface.poll(t, &mut phy, &mut sockets);

        if stopping && sockets.get::<udp::Socket>(ctl).send_queue() == 0 {
            // The answer to `stop` is queued on the NIC: let the device
            // take it before the domain ends (a bounded wait, at the end
            // only), or the host may never see it.
            let until = now() + TX_DRAIN;
            phy.nic.reclaim();
            while phy.nic.tx_in_flight() > 0 && now() < until {
                sched::yield_now();
                phy.nic.reclaim();
            }
            print_counters("stop asked", &phy.counters, phy.nic.stats());
            return Ok(phy.counters);
        }
        if t >= end && serve_s.is_some() {
            phy.nic.reclaim();
            print_counters("served its time", &phy.counters, phy.nic.stats());
            return Ok(phy.counters);
        }
        if t >= end {
            print_counters("no stop in time", &phy.counters, phy.nic.stats());
            return Err(NetError::TimedOut(limit_s));
        }
        if t >= next_stats {
            print_counters("counters", &phy.counters, phy.nic.stats());
            next_stats = t + STATS_EVERY;
        }

        // Sleep until the NIC interrupts or the next deadline.
        let mut wake = end.min(next_stats);
        if pings_sent < pings_wanted {
            wake = wake.min(next_ping);
        }
        if let Some(d) = iface.poll_delay(t, &sockets) {
            wake = wake.min(t + d);
        }
        if stopping {
            wake = t; // the answer is still in the socket: poll again
        }
        if wake <= t {
            continue;
        }
        TIMER.store(false, Ordering::SeqCst);
        if let Err(e) = timer::set_oneshot(wake.total_micros() as u64 * 1000) {
            println!("net: timer: {e}");
        }
        event::block_until(|| NIC_IRQ.load(Ordering::SeqCst) || TIMER.load(Ordering::SeqCst));
    }
}

/// A control answer, built in place.
struct Reply {
    buf: [u8; 400],
    len: usize,
}

impl Default for Reply {
    fn default() -> Self {
        Reply { buf: [0; 400], len: 0 }
    }
}

impl Reply {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Write for Reply {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).filter(|&e| e <= self.buf.len()).ok_or(core::fmt::Error)?;
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The receive checks ([`check_frame`]) on made-up used-ring entries, each
/// printed; how many went wrong.
fn frame_checks() -> u32 {
    let mut buf = [0u8; BUF_LEN];
    let room = MAX_FRAME;
    let hdr = 12;
    let cases: [(&str, usize, usize, Result<usize, RxDrop>); 7] = [
        ("a 60-byte frame", hdr, 60, Ok(60)),
        ("a full 1514-byte frame", hdr, MAX_FRAME, Ok(MAX_FRAME)),
        ("a length past the buffer", hdr, BUF_LEN - hdr + 1, Err(RxDrop::PastBuffer(BUF_LEN - hdr + 1))),
        ("a length of usize::MAX", hdr, usize::MAX, Err(RxDrop::PastBuffer(usize::MAX))),
        ("a header past the buffer", BUF_LEN + 1, 60, Err(RxDrop::PastBuffer(60))),
        ("a 13-byte runt", hdr, 13, Err(RxDrop::Runt(13))),
        ("a 1600-byte frame for 1514 bytes of room", hdr, 1600, Err(RxDrop::TooLong(1600))),
    ];
    let mut wrong = 0;
    let mut judge = |what: &str, got: Result<usize, RxDrop>, want: Result<usize, RxDrop>| {
        let ok = got == want;
        wrong += u32::from(!ok);
        println!("net: receive check: {what}: {got:?}: {}", if ok { "as expected" } else { "WRONG" });
    };
    for (what, h, len, want) in cases {
        judge(what, check_frame(&buf, h, len, room).map(<[u8]>::len), want);
    }
    buf[1] = 4; // gso_type TCPv6
    judge("a segmentation-offload frame", check_frame(&buf, hdr, 60, room).map(<[u8]>::len), Err(RxDrop::Gso(4)));
    println!("net: receive checks: {} of 8 as expected", 8 - wrong);
    wrong
}

/// QEMU's gateway's MAC (slirp's `52:55:` and the address).
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);

/// Puts an ICMP echo request from the gateway to us in the receive copy,
/// as if the NIC had received it, for smoltcp's next `receive` (QEMU's
/// user network never sends one). smoltcp's answer goes out through the
/// NIC for real (slirp drops the unasked-for reply). False if a frame
/// waits there already.
fn inject_ping(phy: &mut Phy, mac: [u8; 6]) -> bool {
    if phy.injected.is_some() {
        return false;
    }
    let data = b"ringfence injected echo request";
    let icmp = Icmpv4Repr::EchoRequest { ident: 0x494a, seq_no: 1, data };
    let ip = Ipv4Repr {
        src_addr: GATEWAY,
        dst_addr: IP,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr { src_addr: GATEWAY_MAC, dst_addr: EthernetAddress(mac), ethertype: EthernetProtocol::Ipv4 };
    let len = eth.buffer_len() + ip.buffer_len() + icmp.buffer_len();
    let caps = phy::ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut phy.rx[..len]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    icmp.emit(&mut Icmpv4Packet::new_unchecked(packet.payload_mut()), &caps);
    phy.injected = Some(len);
    true
}
