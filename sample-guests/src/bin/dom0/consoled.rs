//! dom0's console daemon: it drains the other domains' console rings
//! instead of the hypervisor, and carries what the operator types to the
//! one domain the shell is attached to (`console DOM`; `~.` detaches).
//!
//! # Who owns what
//! - A domain's console page is its own frame, granted to dom0 under
//!   [`pvguest_sdk::abi::grant::GNTTAB_RESERVED_CONSOLE`].
//!   [`BackLink::console`] maps it, takes the console over from the
//!   hypervisor (`CONSOLE_TAKEOVER`: from then on the hypervisor never
//!   reads the ring, and the domain's console port is connected to a port
//!   of dom0's) and attaches as the ring's back: dom0 consumes the first
//!   half (output) and produces the second (input). Every index the domain
//!   writes is validated by `ring-protocol`; one that breaks the protocol
//!   cuts its console off (said once), nothing else.
//! - Output goes to the machine's console through `console_io`
//!   `WRITE_AS` ([`console::write_as`]): the hypervisor still owns the
//!   UART, tags each line with the domain's name, escapes control bytes
//!   and holds each domain to its output rate, so a flooding domain loses
//!   only its own lines. The bytes are passed on before their space in the
//!   ring is freed ([`BackLink::recv_with`]), so the hypervisor, which
//!   holds a dead domain's exit report until its ring is empty, reports
//!   after its last line.
//! - The serve loop owns the [`Consoles`]: [`Consoles::sync`] after each
//!   rescan adopts the new domains with a store connection and, for the
//!   domains that ended, drains what they left and lets go (unmap, close);
//!   [`Consoles::pump`] moves at most [`CHUNK`] bytes of each console a
//!   pass; the shell calls [`Consoles::attach`], [`Consoles::detach`] and
//!   [`Consoles::type_line`] through [`crate::toolstack::Services`].
//!
//! # Attached
//! While the shell is attached to a domain, only that domain's console is
//! drained: the others' output is held in their rings (2 KiB each) and
//! comes out, in order, after the detach. A domain whose ring stays full
//! long enough writes through `console_io` instead (the SDK's fallback),
//! which the hypervisor prints at once. Typed lines go into the attached
//! domain's input ring whole, or not at all (a full ring: the line is
//! dropped, and the shell says so).

use alloc::string::String;
use alloc::vec::Vec;
use pvguest_sdk::store_link::{BackError, BackLink};
use pvguest_sdk::{console, println};

/// Output bytes taken from one console per pass.
pub const CHUNK: usize = 512;
/// Bytes a console ring's half holds: what a dead domain can have left.
const RING_HALF: usize = 2048;

/// One domain's console.
struct Tty {
    domid: u16,
    name: String,
    link: BackLink,
    /// Broke the ring protocol: no longer read.
    broken: bool,
}

impl Tty {
    /// Passes on at most `max` bytes of output; whether any came.
    fn drain(&mut self, max: usize) -> bool {
        let mut buf = [0u8; CHUNK];
        let id = self.domid;
        let r = self.link.recv_with(&mut buf[..max.min(CHUNK)], |b| {
            if !b.is_empty() {
                // Only a reaped domain is refused, and its bytes go with it.
                let _ = console::write_as(id, b);
            }
        });
        match r {
            Ok(n) => n > 0,
            Err(e) => {
                println!("console: dom{id} ({}) broke its console ring ({e:?}): its console is cut off", self.name);
                self.broken = true;
                false
            }
        }
    }
}

/// Why the daemon refused: the domain's console is not its to use.
#[derive(Debug)]
pub struct Refused(pub String);

impl From<Refused> for String {
    fn from(r: Refused) -> String {
        r.0
    }
}

/// The consoles dom0 drains, by domain id (ascending).
#[derive(Default)]
pub struct Consoles {
    ttys: Vec<Tty>,
    /// The domain the shell is attached to.
    attached: Option<u16>,
    /// Domains whose console could not be taken over (said once each).
    refused: Vec<u16>,
}

impl Consoles {
    /// Matches the consoles to `clients` (the domains served, with their
    /// names): adopts each new one, and drains and lets go of each one no
    /// longer listed (its domain ended).
    pub fn sync<'a>(&mut self, clients: impl Iterator<Item = (u16, &'a str)>) {
        let mut live: Vec<(u16, &str)> = clients.collect();
        live.sort_unstable_by_key(|&(id, _)| id);
        let listed = |id: u16| live.binary_search_by_key(&id, |&(d, _)| d).is_ok();
        let gone: Vec<Tty> = self.ttys.extract_if(.., |t| !listed(t.domid)).collect();
        for t in gone {
            self.release(t);
        }
        self.refused.retain(|&r| listed(r));
        for (id, name) in live {
            let Err(at) = self.ttys.binary_search_by_key(&id, |t| t.domid) else { continue };
            if self.refused.contains(&id) {
                continue;
            }
            if self.ttys.try_reserve(1).is_err() {
                println!("console: dom{id} ({name}): dom0's heap is full; the hypervisor keeps its console");
                self.refused.push(id);
                continue;
            }
            match BackLink::console(id) {
                Ok(link) => {
                    let _ = pvguest_sdk::event::set_handler(link.port(), crate::serve::on_event);
                    let _ = pvguest_sdk::event::unmask(link.port());
                    self.ttys.insert(at, Tty { domid: id, name: name.into(), link, broken: false });
                }
                Err(e @ BackError::Link(_)) => {
                    // Taken over, but its page holds no ring: the domain
                    // broke it, and only its own console suffers (its
                    // writes fall back to `console_io`).
                    println!("console: dom{id} ({name}): its console page holds no valid ring ({e:?}): cut off");
                    self.refused.push(id);
                }
                Err(e) => {
                    println!("console: dom{id} ({name}): not taken over ({e:?}); the hypervisor keeps it");
                    self.refused.push(id);
                }
            }
        }
    }

    /// A dead domain's console: what it left in the ring goes out (its
    /// exit report waits for that), then the mapping and the port go.
    fn release(&mut self, mut t: Tty) {
        let mut left = RING_HALF;
        while left > 0 && !t.broken && t.drain(left) {
            left = left.saturating_sub(CHUNK);
        }
        if self.attached == Some(t.domid) {
            self.attached = None;
            println!("console: dom{} ({}) has ended; detached", t.domid, t.name);
        }
        t.link.close();
    }

    /// Moves each console's output on (the attached one's only, while
    /// attached), at most [`CHUNK`] bytes each; whether any moved.
    pub fn pump(&mut self) -> bool {
        let held = self.attached;
        let mut work = false;
        for t in self.ttys.iter_mut().filter(|t| !t.broken && held.is_none_or(|a| a == t.domid)) {
            work |= t.drain(CHUNK);
        }
        work
    }

    /// Whether a console the pump would read has output waiting, arming
    /// its domain's notification if not (called before dom0 blocks).
    pub fn ready(&mut self) -> bool {
        let held = self.attached;
        let mut ready = false;
        for t in self.ttys.iter_mut().filter(|t| !t.broken && held.is_none_or(|a| a == t.domid)) {
            ready |= !matches!(t.link.readable(), Ok(false));
        }
        ready
    }

    /// Attaches the shell to domain `domid`'s console; its name.
    pub fn attach(&mut self, domid: u16) -> Result<String, Refused> {
        let t = self.tty(domid)?;
        let name = t.name.clone();
        self.attached = Some(domid);
        Ok(name)
    }

    /// Domain `domid`'s console, if the daemon drains it.
    fn tty(&mut self, domid: u16) -> Result<&mut Tty, Refused> {
        let Ok(k) = self.ttys.binary_search_by_key(&domid, |t| t.domid) else {
            return Err(Refused(alloc::format!(
                "dom{domid}'s console is not the daemon's (only the consoles of domains with a store connection are)"
            )));
        };
        let t = &mut self.ttys[k];
        if t.broken {
            return Err(Refused(alloc::format!("dom{domid}'s console was cut off: it broke the ring protocol")));
        }
        Ok(t)
    }

    /// Detaches the shell; the domain it was attached to, if any.
    pub fn detach(&mut self) -> Option<u16> {
        self.attached.take()
    }

    /// The domain the shell is attached to.
    pub fn attached(&self) -> Option<u16> {
        self.attached
    }

    /// Sends `line` (its line end included) to the attached domain's
    /// input ring, whole or not at all.
    pub fn type_line(&mut self, line: &[u8]) -> Result<(), String> {
        let id = self.attached.ok_or_else(|| String::from("not attached"))?;
        Ok(self.send_to(id, line)?)
    }

    /// Sends `bytes` to domain `domid`'s console input, whole or not at
    /// all (the API's console input; no attach needed).
    pub fn send_to(&mut self, domid: u16, bytes: &[u8]) -> Result<(), Refused> {
        let t = self.tty(domid)?;
        let n = t.link.send_whole(bytes).map_err(|e| Refused(alloc::format!("dom{domid}'s console: {e:?}")))?;
        if n < bytes.len() {
            return Err(Refused(alloc::format!(
                "dom{domid}'s console input has no room for {} bytes (it reads none): dropped",
                bytes.len()
            )));
        }
        Ok(())
    }
}
