//! The domain's console: `print!`, `println!` and [`write()`](fn@write).
//!
//! Output goes into the domain's console page (see
//! [`pvguest_abi::start_info::CONSOLE_RING`]): a `ring-protocol` byte
//! stream that the console backend drains: the hypervisor, or, for a
//! domain the device store serves, dom0's console daemon, which takes the
//! console over and hands the bytes back to the hypervisor. Either way the
//! hypervisor prints them, prefixing every line with the domain's name and
//! showing control characters escaped. A write copies bytes into the ring
//! and notifies the backend on the console port only when the ring's event
//! index asks for it (hold-off: a burst of lines costs one notification).
//! The hypervisor rate-limits each domain: a domain that prints faster than
//! its share loses lines, and a `(N bytes dropped)` line says so.
//!
//! When the ring is full, the writer notifies the backend and yields; the
//! backend drains on that notification. The writer never sleeps for space,
//! so the SDK keeps the console port masked. If the ring is unusable (no console
//! page, the ring latched an error, or the console is already in use
//! further up this CPU's stack, e.g. a panic or an event handler that
//! interrupted a `println!`), output goes through the `console_io`
//! hypercall instead, which is always available and bounded the same way.
//!
//! # Input
//! The page's second half carries console input to the domain: dom0's
//! console daemon writes what the operator types while attached to this
//! domain (the shell's `console DOM`). [`read`] takes what has come
//! without blocking; [`wait_input`] waits for it, bounded by a deadline
//! (it polls the console port, which stays masked). A domain whose console
//! the hypervisor drains gets no input; the privileged domain reads the
//! machine's console input (the serial port) instead.
//!
//! # Ownership
//! The SDK is the only user of the page in this domain: the producer of the
//! first half, the consumer of the second. The backend (the hypervisor, or
//! dom0's console daemon once it took the console over) owns the other
//! ends; nothing it writes is trusted (every index is validated by
//! `ring-protocol`).

use crate::hypercall::call_readonly;
use core::fmt;
use pvguest_abi::event::{self, Send as EvtSend};
use pvguest_abi::start_info::CONSOLE_RING;
use pvguest_abi::{console_io, hypercall, Errno};
use ring_protocol::{ByteChannel, SharedMem, StreamConsumer, StreamProducer};

/// Full-ring rounds (notify, yield, retry) before the rest of a write goes
/// through `console_io`.
const MAX_STALLS: u32 = 64;

struct Ring {
    tx: Option<StreamProducer<'static, u8>>,
    /// Console input (the page's second half).
    rx: Option<StreamConsumer<'static, u8>>,
    port: u32,
    attached: bool,
}

static RING: spin::Mutex<Ring> = spin::Mutex::new(Ring { tx: None, rx: None, port: 0, attached: false });

impl Ring {
    /// The producer, attaching to the console page on first use.
    fn producer(&mut self) -> Option<&mut StreamProducer<'static, u8>> {
        self.attach();
        self.tx.as_mut()
    }

    /// The input consumer, attaching on first use.
    fn consumer(&mut self) -> Option<&mut StreamConsumer<'static, u8>> {
        self.attach();
        self.rx.as_mut()
    }

    /// Reads waiting input into `buf` and frees its space (notifying the
    /// backend if it waits for room).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let port = self.port;
        let Some(rx) = self.consumer() else { return Ok(0) };
        let n = rx.read(buf).map_err(|_| Errno::EIO)?;
        if rx.release_and_check_notify().map_err(|_| Errno::EIO)? {
            notify(port);
        }
        Ok(n)
    }

    /// Whether input waits, arming the backend's notification if not.
    fn input_ready(&mut self) -> Result<bool, Errno> {
        let port = self.port;
        let Some(rx) = self.consumer() else { return Ok(false) };
        let ready = rx.final_check().map_err(|_| Errno::EIO)?;
        // A final check may owe the backend a notification of room.
        if rx.release_and_check_notify().map_err(|_| Errno::EIO)? {
            notify(port);
        }
        Ok(ready)
    }

    fn attach(&mut self) {
        if !self.attached {
            self.attached = true;
            let c = crate::rt::start_info().console;
            if c.kind == CONSOLE_RING && c.ring_va != 0 {
                // SAFETY: the builder maps the console page read-write at
                // `ring_va` in the domain's linear map for its whole life;
                // in this domain only this producer (and, later, an input
                // consumer built from the same channel) touches it, and only
                // through `ring-protocol`'s volatile and atomic accesses.
                let mem = unsafe { SharedMem::new(c.ring_va as *mut u8, 4096) };
                if let Ok(ch) = mem.and_then(ByteChannel::front_attach) {
                    self.tx = Some(ch.tx);
                    self.rx = Some(ch.rx);
                    self.port = c.evtchn;
                    // The writer never sleeps for space (it notifies and
                    // yields), so the backend's space notifications are of
                    // no use: the port stays masked, as every port starts
                    // (see `crate::event`), and never wakes a blocked domain.
                    // Input is waited for by polling it (`wait_input`).
                }
            }
        }
    }

    /// Writes all of `bytes` into the ring; returns how many went in (the
    /// rest needs the hypercall).
    fn write(&mut self, bytes: &[u8]) -> usize {
        if self.producer().is_none() {
            return 0;
        }
        let port = self.port;
        let Some(tx) = self.tx.as_mut() else { return 0 };
        let mut done = 0;
        let mut stalls = 0;
        while done < bytes.len() {
            let n = match tx.write(&bytes[done..]) {
                Ok(n) => n,
                Err(_) => break,
            };
            done += n;
            match tx.push_and_check_notify() {
                Ok(true) => notify(port),
                Ok(false) => {}
                Err(_) => break,
            }
            if n == 0 {
                // Full: make sure the backend knows, and let it drain.
                stalls += 1;
                if stalls > MAX_STALLS {
                    break;
                }
                notify(port);
                crate::sched::yield_now();
            }
        }
        if tx.error().is_some() {
            self.tx = None;
        }
        done
    }
}

fn notify(port: u32) {
    let send = EvtSend { port };
    call_readonly(hypercall::EVENT_CHANNEL_OP, [event::SEND, &raw const send as u64, 0, 0, 0]);
}

/// Writes `bytes` to the console through the `console_io` hypercall (early
/// boot, panics, or no console page); returns how many were written.
pub fn write_hypercall(bytes: &[u8]) -> Result<usize, Errno> {
    write_io(console_io::WRITE, 0, bytes)
}

/// `console_io` write `cmd` of all of `bytes`, `high` or'd into the length
/// argument: the hypervisor takes at least a byte a call (a bounded step
/// each), so the rest of a chunk goes in the next call.
fn write_io(cmd: u64, high: u64, bytes: &[u8]) -> Result<usize, Errno> {
    let mut done = 0;
    while done < bytes.len() {
        let chunk = &bytes[done..bytes.len().min(done + console_io::MAX_WRITE as usize)];
        let r = call_readonly(hypercall::CONSOLE_IO, [cmd, chunk.len() as u64 | high, chunk.as_ptr() as u64, 0, 0]);
        let n = Errno::decode(r)? as usize;
        if n == 0 {
            break;
        }
        done += n.min(chunk.len());
    }
    Ok(done)
}

/// Reads console input that is waiting, without blocking: how many bytes
/// went into `buf` (0: none).
///
/// A domain gets what dom0's console daemon writes into its console page
/// (the operator typing while attached: the shell's `console DOM`);
/// [`wait_input`] waits for it. `EIO` if the daemon broke the ring
/// protocol. The privileged domain reads the machine's console input (the
/// serial port, which is its alone) through `console_io`; nothing signals
/// that input's arrival, so it polls, e.g. on a timer (dom0's toolstack
/// shell reads every 20 ms).
///
/// ```ignore
/// let mut buf = [0u8; 64];
/// if pvguest_sdk::console::wait_input(pvguest_sdk::time::now_ns() + 1_000_000_000) {
///     let n = pvguest_sdk::console::read(&mut buf)?;
///     line.extend_from_slice(&buf[..n]);
/// }
/// ```
pub fn read(buf: &mut [u8]) -> Result<usize, Errno> {
    if crate::rt::start_info().flags & pvguest_abi::start_info::SIF_PRIVILEGED == 0 {
        // Held only for the copy; an event handler that prints meanwhile
        // goes through `console_io`.
        return match RING.try_lock() {
            Some(mut ring) => ring.read(buf),
            None => Ok(0),
        };
    }
    let len = buf.len().min(console_io::MAX_WRITE as usize);
    // SAFETY: the hypervisor writes at most `len` bytes at `buf`, a live
    // exclusive borrow at least that long, during the call only.
    let r = unsafe {
        crate::hypercall::raw(hypercall::CONSOLE_IO, [console_io::READ, len as u64, buf.as_mut_ptr() as u64, 0, 0])
    };
    Ok(Errno::decode(r)? as usize)
}

/// Waits until console input has come ([`read`] takes it) or system time
/// reaches `deadline_ns` (0: no deadline); whether input is there. It
/// sleeps in `SCHEDOP_poll` on the console port (kept masked), so it
/// needs no handler and leaves the domain's other events alone: they are
/// delivered when it returns. A domain without a console page, or whose
/// daemon broke the ring protocol, waits until the deadline (returns at
/// once with none). For the
/// privileged domain, whose input nothing signals, it returns `false` at
/// once.
pub fn wait_input(deadline_ns: u64) -> bool {
    if crate::rt::start_info().flags & pvguest_abi::start_info::SIF_PRIVILEGED != 0 {
        return false;
    }
    loop {
        let (ready, port) = match RING.try_lock() {
            Some(mut ring) => (ring.input_ready(), ring.port),
            None => (Ok(false), 0),
        };
        match ready {
            Ok(true) => return true,
            Ok(false) if port != 0 => {}
            // No ring: only the deadline ends the wait.
            _ => {
                let _ = crate::sched::poll(&[], deadline_ns);
                return false;
            }
        }
        if deadline_ns != 0 && crate::time::now_ns() >= deadline_ns {
            return false;
        }
        // Cleared before the check again, so an event after it ends the poll.
        crate::event::clear_pending(crate::event::Port(port));
        if RING.try_lock().is_some_and(|mut r| r.input_ready().unwrap_or(false)) {
            return true;
        }
        if crate::sched::poll(&[port], deadline_ns).is_err() {
            return false;
        }
    }
}

/// Writes `bytes` to the machine's console as domain `domid`'s output
/// (tagged with its name): the privileged domain's console daemon passing
/// on what it drained from a console it took over
/// ([`crate::domctl::console_takeover`]). How many were written.
pub fn write_as(domid: u16, bytes: &[u8]) -> Result<usize, Errno> {
    write_io(console_io::WRITE_AS, u64::from(domid) << 32, bytes)
}

/// Writes `bytes` to the console; returns how many were written.
pub fn write(bytes: &[u8]) -> Result<usize, Errno> {
    let done = match RING.try_lock() {
        Some(mut ring) => ring.write(bytes),
        None => 0,
    };
    if done == bytes.len() {
        return Ok(done);
    }
    Ok(done + write_hypercall(&bytes[done..])?)
}

/// A `fmt::Write` that batches output into one write per 256 bytes.
pub struct Console {
    buf: [u8; 256],
    len: usize,
}

impl Console {
    /// An empty writer.
    pub const fn new() -> Self {
        Console { buf: [0; 256], len: 0 }
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) {
        let _ = write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut c = Console::new();
    let _ = fmt::Write::write_fmt(&mut c, args);
}

/// Prints to the domain console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the domain console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
