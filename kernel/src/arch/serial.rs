//! COM1 (16550 UART at I/O port 0x3f8), polled output only.
//!
//! The hypervisor owns COM1; guests write through `console_io` and the
//! hypervisor prefixes their lines with the domain's name.

use super::cpu::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3f8;

/// Programs 115200 8N1 with FIFOs enabled and interrupts off.
pub fn init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x03);
}

/// Bytes the transmitter FIFO holds (16550A, enabled by [`init`]).
const TX_FIFO: usize = 16;

/// Waits until the transmitter FIFO is empty (line status bit 5: with
/// FIFOs enabled it is set once the whole FIFO has drained), or gives up
/// after a bound (a UART that never drains must not hang the hypervisor).
fn wait_tx_empty() {
    let mut spins = 0u32;
    while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
        spins += 1;
    }
}

/// Writes bytes, turning `\n` into `\r\n`. The line status is read once
/// per [`TX_FIFO`] bytes, not once per byte: guest console output is
/// hypervisor time (see `console`), and this halves its cost per byte.
pub fn write_bytes(bytes: &[u8]) {
    let mut room = 0;
    let mut put = |b: u8| {
        if room == 0 {
            wait_tx_empty();
            room = TX_FIFO;
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
