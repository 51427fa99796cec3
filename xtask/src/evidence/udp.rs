//! A UDP echo client for a guest's echo service behind QEMU's forward, and
//! the round-trip times it measured.
//!
//! Protocol (what the guest must do): send every datagram back to its
//! sender unchanged. Each datagram the client sends is
//! `rf-echo <nonce> <seq> <try> ` (decimal fields; sequence number 0 for
//! the warm-up probes) padded to the planned length with the letters a–z,
//! so that an echo is matched to the one try that it answers.
//!
//! Rules:
//! 1. Warm-up: QEMU's user network and the guest's stack take a moment, and
//!    the guest may not listen yet. The client sends probes every
//!    `reply_timeout` until one is echoed or `ready_within` has passed;
//!    "connection refused" (nothing bound yet) counts as no echo.
//! 2. Then it sends `datagrams` datagrams one at a time. Each gets up to
//!    `tries` tries of `reply_timeout` each; a lost datagram is retried, a
//!    datagram that got no echo after every try fails the run.
//! 3. An echo of an earlier try or probe (late, duplicated) is skipped; one
//!    whose header matches the datagram in flight but whose bytes differ is
//!    a corrupted echo and fails the run; anything else is an unexpected
//!    datagram and fails the run.
//! 4. A round-trip time is measured from the send of the try that was
//!    answered to the arrival of its echo.

use crate::Result;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the client talks to the echo service.
#[derive(Clone, Debug)]
pub struct EchoPlan {
    /// Datagrams to measure (after the warm-up).
    pub datagrams: usize,
    /// Bytes in each datagram (at least [`MIN_PAYLOAD`]).
    pub payload: usize,
    /// How long to wait for one echo.
    pub reply_timeout: Duration,
    /// Tries per datagram.
    pub tries: u32,
    /// How long the warm-up may take before the service counts as absent.
    pub ready_within: Duration,
}

/// The shortest datagram the client sends (room for its header).
pub const MIN_PAYLOAD: usize = 64;

impl Default for EchoPlan {
    fn default() -> Self {
        EchoPlan {
            datagrams: 16,
            payload: 256,
            reply_timeout: Duration::from_millis(500),
            tries: 4,
            ready_within: Duration::from_secs(20),
        }
    }
}

/// What the client measured.
#[derive(Clone, Debug)]
pub struct EchoReport {
    /// The round-trip time of each measured datagram, in order.
    pub rtts: Vec<Duration>,
    /// From the first probe to the first echo.
    pub ready_after: Duration,
    /// Tries that got no echo in time (and were sent again).
    pub retries: u32,
}

impl EchoReport {
    /// The median round-trip time.
    pub fn median(&self) -> Duration {
        let mut v = self.rtts.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    /// One line for a scenario's report.
    pub fn summary(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (min, max) = (self.rtts.iter().min().copied(), self.rtts.iter().max().copied());
        format!(
            "udp echo: {} datagrams echoed intact, rtt min/median/max {:.0}/{:.0}/{:.0} us, {} retries, ready after {:.2} s",
            self.rtts.len(),
            us(min.unwrap_or_default()),
            us(self.median()),
            us(max.unwrap_or_default()),
            self.retries,
            self.ready_after.as_secs_f64()
        )
    }
}

fn datagram(nonce: u64, seq: u64, attempt: u32, len: usize) -> Vec<u8> {
    let mut d = format!("rf-echo {nonce} {seq} {attempt} ").into_bytes();
    let fill = d.len()..len.max(d.len());
    d.extend(fill.map(|i| b'a' + (i % 26) as u8));
    d
}

/// The `(seq, try)` of one of our datagrams from this nonce, if it is one.
fn header(d: &[u8], nonce: u64) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(d.get(..MIN_PAYLOAD.min(d.len()))?).ok()?;
    let mut f = s.strip_prefix("rf-echo ")?.split(' ');
    if f.next()?.parse::<u64>().ok()? != nonce {
        return None;
    }
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// What waiting for one echo gave.
enum Reply {
    Echo(Instant),
    NoEcho,
}

/// Waits up to `timeout` for the echo of `sent`, skipping stale echoes
/// (rule 3).
fn await_echo(sock: &UdpSocket, sent: &[u8], nonce: u64, timeout: Duration) -> Result<Reply> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    let want = header(sent, nonce).expect("our own datagram");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Reply::NoEcho);
        }
        sock.set_read_timeout(Some(left)).map_err(|e| format!("udp echo: {e}"))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(Reply::NoEcho),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                // Nothing listens yet (an ICMP port unreachable came back).
                std::thread::sleep(left.min(Duration::from_millis(20)));
                continue;
            }
            Err(e) => return Err(format!("udp echo: receive: {e}")),
        };
        let at = Instant::now();
        let got = &buf[..n];
        match header(got, nonce) {
            Some(h) if h == want && got == sent => return Ok(Reply::Echo(at)),
            Some(h) if h == want => {
                return Err(format!(
                    "udp echo: corrupted echo of datagram {} try {}: sent {} bytes, got {n} bytes that differ",
                    h.0,
                    h.1,
                    sent.len()
                ))
            }
            Some(_) => continue, // an earlier try's or probe's late echo
            None => {
                return Err(format!(
                    "udp echo: unexpected datagram of {n} bytes: {:?}",
                    String::from_utf8_lossy(&got[..n.min(48)])
                ))
            }
        }
    }
}

/// Sends datagrams to the echo service at `target` and checks the echoes
/// (rules 1–4); returns the round-trip times.
pub fn udp_echo(target: SocketAddr, plan: &EchoPlan) -> Result<EchoReport> {
    if plan.payload < MIN_PAYLOAD || plan.payload > 65507 || plan.datagrams == 0 || plan.tries == 0 {
        return Err(format!("udp echo: bad plan {plan:?}"));
    }
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("udp echo: bind: {e}"))?;
    sock.connect(target).map_err(|e| format!("udp echo: connect {target}: {e}"))?;
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        ^ u64::from(std::process::id()) << 32;
    let send = |d: &[u8]| -> Result<Instant> {
        let at = Instant::now();
        match sock.send(d) {
            Ok(_) => Ok(at),
            // Refused: an earlier datagram met nothing bound; still "sent".
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(at),
            Err(e) => Err(format!("udp echo: send to {target}: {e}")),
        }
    };
    // Rule 1: warm-up probes (sequence number 0).
    let start = Instant::now();
    let mut probe = 0u32;
    loop {
        let d = datagram(nonce, 0, probe, plan.payload);
        send(&d)?;
        if let Reply::Echo(_) = await_echo(&sock, &d, nonce, plan.reply_timeout)? {
            break;
        }
        if start.elapsed() >= plan.ready_within {
            return Err(format!(
                "udp echo: no echo from {target} within {:.1} s ({} probes): the guest's echo service is not answering",
                plan.ready_within.as_secs_f64(),
                probe + 1
            ));
        }
        probe += 1;
    }
    let ready_after = start.elapsed();
    // Rules 2 and 4.
    let (mut rtts, mut retries) = (Vec::with_capacity(plan.datagrams), 0);
    for seq in 1..=plan.datagrams as u64 {
        let mut echoed = None;
        for attempt in 0..plan.tries {
            let d = datagram(nonce, seq, attempt, plan.payload);
            let sent = send(&d)?;
            match await_echo(&sock, &d, nonce, plan.reply_timeout)? {
                Reply::Echo(at) => {
                    echoed = Some(at - sent);
                    break;
                }
                Reply::NoEcho => retries += 1,
            }
        }
        match echoed {
            Some(rtt) => rtts.push(rtt),
            None => {
                return Err(format!(
                    "udp echo: datagram {seq} of {} got no echo from {target} in {} tries of {} ms",
                    plan.datagrams,
                    plan.tries,
                    plan.reply_timeout.as_millis()
                ))
            }
        }
    }
    Ok(EchoReport { rtts, ready_after, retries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A test echo service: answers each datagram through `answer`
    /// (`None`: drop it) until dropped.
    struct Service {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        seen: Arc<AtomicUsize>,
    }

    impl Drop for Service {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn service_on(sock: UdpSocket, answer: impl Fn(usize, &[u8]) -> Option<Vec<u8>> + Send + 'static) -> Service {
        let addr = sock.local_addr().unwrap();
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (s2, n2) = (stop.clone(), seen.clone());
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let i = n2.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = answer(i, &buf[..n]) {
                        let _ = sock.send_to(&reply, from);
                    }
                }
            }
        });
        Service { addr, stop, seen }
    }

    fn service(answer: impl Fn(usize, &[u8]) -> Option<Vec<u8>> + Send + 'static) -> Service {
        service_on(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(), answer)
    }

    fn quick() -> EchoPlan {
        EchoPlan {
            datagrams: 8,
            payload: 100,
            reply_timeout: Duration::from_millis(250),
            tries: 3,
            ready_within: Duration::from_secs(2),
        }
    }

    #[test]
    fn rule4_a_faithful_service_gives_one_rtt_per_datagram() {
        let s = service(|_, d| Some(d.to_vec()));
        let r = udp_echo(s.addr, &quick()).unwrap();
        assert_eq!(r.rtts.len(), 8);
        assert_eq!(r.retries, 0);
        // One probe and eight datagrams, nothing more.
        assert_eq!(s.seen.load(Ordering::Relaxed), 9);
        assert!(r.summary().starts_with("udp echo: 8 datagrams echoed intact"), "{}", r.summary());
    }

    #[test]
    fn rule1_a_service_that_comes_up_late_is_waited_for() {
        // Reserve a port, free it, and bind it again 300 ms later.
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            service_on(UdpSocket::bind(addr).unwrap(), |_, d| Some(d.to_vec()))
        });
        let r = udp_echo(addr, &quick()).unwrap();
        let _s = late.join().unwrap();
        assert!(r.ready_after >= Duration::from_millis(250), "ready after {:?}", r.ready_after);
        assert_eq!(r.rtts.len(), 8);
    }

    #[test]
    fn rule1_an_absent_service_fails_after_ready_within() {
        let s = service(|_, _| None);
        let t = Instant::now();
        let e = udp_echo(s.addr, &EchoPlan { ready_within: Duration::from_millis(400), ..quick() }).unwrap_err();
        assert!(e.contains("not answering"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn rule2_lost_datagrams_are_retried() {
        // Drops every third datagram it gets.
        let s = service(|i, d| (i % 3 != 2).then(|| d.to_vec()));
        let r = udp_echo(s.addr, &quick()).unwrap();
        assert_eq!(r.rtts.len(), 8);
        assert!(r.retries >= 2, "{} retries", r.retries);
    }

    #[test]
    fn rule2_a_service_that_stops_answering_fails_the_run() {
        let s = service(|i, d| (i < 3).then(|| d.to_vec()));
        let e = udp_echo(s.addr, &quick()).unwrap_err();
        assert!(e.contains("datagram 3 of 8 got no echo"), "{e}");
    }

    #[test]
    fn rule3_a_corrupted_echo_fails_the_run() {
        let s = service(|i, d| {
            let mut d = d.to_vec();
            if i == 4 {
                *d.last_mut().unwrap() ^= 1;
            }
            Some(d)
        });
        let e = udp_echo(s.addr, &quick()).unwrap_err();
        assert!(e.contains("corrupted echo of datagram 4"), "{e}");
    }

    #[test]
    fn rule3_late_duplicates_are_skipped_and_strangers_fail() {
        // Answers each datagram twice: the second copy arrives while the
        // next datagram is in flight and must be skipped.
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut last: Option<(Vec<u8>, SocketAddr)> = None;
            for _ in 0..9 {
                let (n, from) = sock.recv_from(&mut buf).unwrap();
                if let Some((d, f)) = last.take() {
                    sock.send_to(&d, f).unwrap(); // the previous one, again
                }
                sock.send_to(&buf[..n], from).unwrap();
                last = Some((buf[..n].to_vec(), from));
            }
        });
        let r = udp_echo(addr, &quick()).unwrap();
        assert_eq!((r.rtts.len(), r.retries), (8, 0));

        let s = service(|_, _| Some(b"hello from someone else".to_vec()));
        let e = udp_echo(s.addr, &quick()).unwrap_err();
        assert!(e.contains("unexpected datagram"), "{e}");
    }

    #[test]
    fn a_bad_plan_is_refused() {
        let a = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        assert!(udp_echo(a, &EchoPlan { payload: 10, ..quick() }).is_err());
        assert!(udp_echo(a, &EchoPlan { datagrams: 0, ..quick() }).is_err());
        assert!(udp_echo(a, &EchoPlan { tries: 0, ..quick() }).is_err());
    }
}
