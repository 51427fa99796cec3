//! Interrupt controller and timers: the legacy PIC is masked, the local APIC
//! timer drives preemption, and the PIT is used once at boot to calibrate the
//! TSC and the APIC timer.

use super::cpu::{inb, outb, rdmsr, rdtsc};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// The vectors (defined once, in the library).
pub use ringfence_kernel::hv::{SPURIOUS_VECTOR, TIMER_VECTOR};

const APIC_BASE_MSR: u32 = 0x1b;
const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INIT: u64 = 0x380;
const REG_TIMER_CUR: u64 = 0x390;
const REG_TIMER_DIV: u64 = 0x3e0;

/// Calibrated clock rates.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// APIC timer ticks per second (after the divide-by-16).
    pub apic_hz: u64,
    /// APIC ticks per ns, 32.32 fixed point (so arming needs no division).
    pub apic_per_ns: u64,
    /// TSC ticks per ns, 32.32 fixed point.
    pub tsc_per_ns: u64,
}

impl Rates {
    fn new(tsc_hz: u64, apic_hz: u64) -> Rates {
        let per_ns = |hz: u64| ((u128::from(hz) << 32) / 1_000_000_000).min(u128::from(u64::MAX)) as u64;
        Rates { tsc_hz, apic_hz, apic_per_ns: per_ns(apic_hz), tsc_per_ns: per_ns(tsc_hz) }
    }

    /// TSC ticks in `ns` (rounded down).
    pub fn tsc_ticks(&self, ns: u64) -> u64 {
        ((u128::from(ns) * u128::from(self.tsc_per_ns)) >> 32).min(u128::from(u64::MAX)) as u64
    }
}

/// The local APIC's physical base, read from its MSR once by [`init`]
/// (nothing moves it later), so a timer write is one store.
static APIC_BASE: AtomicU64 = AtomicU64::new(0);
/// The timer's LVT entry holds the one-shot vector, unmasked (set by the
/// first [`arm_oneshot`]; only [`init`] writes it otherwise).
static LVT_ARMED: AtomicBool = AtomicBool::new(false);

#[inline]
fn apic_base() -> u64 {
    match APIC_BASE.load(Relaxed) {
        0 => rdmsr(APIC_BASE_MSR) & 0xf_ffff_f000,
        b => b,
    }
}

#[inline]
fn apic_write(reg: u64, val: u32) {
    // SAFETY: the local APIC page is identity-mapped in the hypervisor view
    // (the boot map covers the first 4 GiB) and `reg` is a valid register.
    unsafe { ((apic_base() + reg) as *mut u32).write_volatile(val) }
}

fn apic_read(reg: u64) -> u32 {
    // SAFETY: as for `apic_write`.
    unsafe { ((apic_base() + reg) as *const u32).read_volatile() }
}

/// Remaps the 8259 PICs away from the exception vectors and masks them.
fn disable_pic() {
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, 0x20);
    outb(0xa1, 0x28);
    outb(0x21, 4);
    outb(0xa1, 2);
    outb(0x21, 1);
    outb(0xa1, 1);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// Waits 10 ms on PIT channel 2 and returns (TSC ticks, APIC ticks) elapsed.
fn measure_10ms() -> (u64, u64) {
    const PIT_HZ: u64 = 1_193_182;
    let count = (PIT_HZ / 100) as u16;
    // Gate on, speaker off.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    // Restart the count by toggling the gate.
    let g = inb(0x61);
    outb(0x61, g & !1);
    outb(0x61, g | 1);
    apic_write(REG_TIMER_INIT, u32::MAX);
    let t0 = rdtsc();
    let a0 = apic_read(REG_TIMER_CUR);
    let mut spins = 0u64;
    while inb(0x61) & 0x20 == 0 && spins < 1 << 32 {
        spins += 1;
    }
    let t1 = rdtsc();
    let a1 = apic_read(REG_TIMER_CUR);
    (t1 - t0, u64::from(a0 - a1))
}

/// Masks the PIC, enables the local APIC and calibrates the clocks.
pub fn init() -> Rates {
    disable_pic();
    APIC_BASE.store(rdmsr(APIC_BASE_MSR) & 0xf_ffff_f000, Relaxed);
    LVT_ARMED.store(false, Relaxed);
    apic_write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    apic_write(REG_TIMER_DIV, 0x3); // divide by 16
    apic_write(REG_LVT_TIMER, 1 << 16); // masked while calibrating
    let (tsc, apic) = measure_10ms();
    Rates::new(tsc * 100, apic.max(1) * 100)
}

/// Arms the one-shot timer to fire in `ns` nanoseconds (clamped to the
/// counter's range; at least one tick).
#[inline] // on every trip through the hypervisor
pub fn arm_oneshot(rates: &Rates, ns: u64) {
    let ticks = ((u128::from(ns) * u128::from(rates.apic_per_ns)) >> 32).clamp(1, u128::from(u32::MAX)) as u32;
    if !LVT_ARMED.load(Relaxed) {
        apic_write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
        LVT_ARMED.store(true, Relaxed);
    }
    // Writing the initial count (re)starts the one-shot count down.
    apic_write(REG_TIMER_INIT, ticks);
}

/// This CPU's local APIC id (where device interrupts are sent).
pub fn apic_id() -> u8 {
    (apic_read(REG_ID) >> 24) as u8
}

/// Acknowledges the interrupt being serviced.
#[inline] // on every trip through the hypervisor
pub fn eoi() {
    apic_write(REG_EOI, 0);
}
