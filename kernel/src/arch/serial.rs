//! COM1 (16550 UART at I/O port 0x3f8), polled output only.
//!
//! The hypervisor owns COM1; guests write through `console_io` and the
//! hypervisor prefixes their lines with the domain's name.

use super::cpu::{inb, outb};
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const COM1: u16 = 0x3f8;

/// Programs 115200 8N1 with FIFOs enabled and interrupts off, and checks
/// that the FIFOs are there (a 16550A reads back `11` in the interrupt
/// identification register's bits 7:6; an 8250 or 16450 has none).
pub fn init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x03);
    let fifo = if inb(COM1 + 2) & 0xc0 == 0xc0 { TX_FIFO } else { 1 };
    BURST.store(fifo, Relaxed);
}

/// Bytes a 16550A's transmitter FIFO holds.
const TX_FIFO: usize = 16;

/// Bytes the transmitter takes once it reports empty: [`TX_FIFO`] if
/// [`init`] found the FIFOs, else one (the holding register).
static BURST: AtomicUsize = AtomicUsize::new(1);
/// Bytes that still fit since it last reported empty: a lower bound, since
/// it only drains meanwhile. Kept across calls (the hypervisor writes with
/// interrupts off, on one CPU).
static ROOM: AtomicUsize = AtomicUsize::new(0);

/// Waits until the transmitter is empty (line status bit 5: with FIFOs
/// enabled it is set once the whole FIFO has drained), or gives up after a
/// bound (a UART that never drains must not hang the hypervisor).
fn wait_tx_empty() {
    let mut spins = 0u32;
    while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
        spins += 1;
    }
}

/// Writes bytes, turning `\n` into `\r\n`. The line status is read once
/// per FIFO's worth of bytes ([`BURST`]), not once per byte: guest console
/// output is hypervisor time (see `console`).
pub fn write_bytes(bytes: &[u8]) {
    let mut room = ROOM.load(Relaxed);
    let mut put = |b: u8| {
        if room == 0 {
            wait_tx_empty();
            room = BURST.load(Relaxed);
        }
        outb(COM1, b);
        room -= 1;
    };
    for &b in bytes {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
    ROOM.store(room, Relaxed);
}

/// `core::fmt` adapter over COM1.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Reads one byte of console input, if the UART has one.
pub fn read_byte() -> Option<u8> {
    if inb(COM1 + 5) & 1 != 0 {
        Some(inb(COM1))
    } else {
        None
    }
}
