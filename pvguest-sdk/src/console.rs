//! The domain's console: `print!`, `println!` and [`write()`](fn@write).
//!
//! Output goes through the `console_io` hypercall. The hypervisor prefixes
//! every line with the domain's name and shows control characters escaped.

use crate::hypercall::call_readonly;
use core::fmt;
use pvguest_abi::{console_io, hypercall, Errno};

/// Writes `bytes` to the console; returns how many were written.
pub fn write(bytes: &[u8]) -> Result<usize, Errno> {
    let mut done = 0;
    for chunk in bytes.chunks(console_io::MAX_WRITE as usize) {
        let r =
            call_readonly(hypercall::CONSOLE_IO, [console_io::WRITE, chunk.len() as u64, chunk.as_ptr() as u64, 0, 0]);
        done += Errno::decode(r)? as usize;
    }
    Ok(done)
}

/// A `fmt::Write` that batches output into one hypercall per 256 bytes.
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
