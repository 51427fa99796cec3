//! The CMOS real-time clock, read once at boot for the wall clock.

use super::cpu::{inb, outb};
use ringfence_kernel::time::{rtc_field, unix_seconds};

fn reg(r: u8) -> u8 {
    outb(0x70, r);
    inb(0x71)
}

/// Seconds since the Unix epoch, from the RTC (UTC, as QEMU provides it).
pub fn read_unix_seconds() -> u64 {
    // Wait for an update not to be in progress, then read twice until two
    // reads agree (the RTC may tick between register reads).
    let read = || {
        let mut spins = 0;
        while reg(0x0a) & 0x80 != 0 && spins < 1_000_000 {
            spins += 1;
        }
        [reg(0x00), reg(0x02), reg(0x04), reg(0x07), reg(0x08), reg(0x09), reg(0x32)]
    };
    let mut a = read();
    for _ in 0..5 {
        let b = read();
        if a == b {
            break;
        }
        a = b;
    }
    let status_b = reg(0x0b);
    let binary = status_b & 0x04 != 0;
    let h24 = status_b & 0x02 != 0;
    let [s, m, h, d, mo, y, c] = a;
    let mut hour = rtc_field(h & 0x7f, binary);
    if !h24 && h & 0x80 != 0 {
        hour = (hour % 12) + 12;
    }
    let century = match rtc_field(c, binary) {
        19..=21 => rtc_field(c, binary),
        _ => 20,
    };
    unix_seconds(
        century * 100 + rtc_field(y, binary),
        rtc_field(mo, binary),
        rtc_field(d, binary),
        hour,
        rtc_field(m, binary),
        rtc_field(s, binary),
    )
}
