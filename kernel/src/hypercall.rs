//! The hypercall table: decoding and validating every hypercall.
//!
//! The trap layer saves the guest's registers, calls [`dispatch`] with the
//! number (`rax`) and the five argument registers, and carries out the
//! returned [`Action`]. Everything a hypercall needs from the machine goes
//! through [`Env`], so each hypercall and all its bad inputs are tested on
//! the host.
//!
//! # Validation rules
//! - An unknown hypercall number or sub-command returns `-ENOSYS`.
//! - A guest pointer is copied through [`Env::copy_from_guest`] (the one
//!   guest-memory accessor); any unmapped, foreign or hypervisor address
//!   returns `-EFAULT` and has no other effect.
//! - Lengths are bounded before any copy; out-of-range values return
//!   `-EINVAL`.

use pvguest_abi::{console_io, features, hypercall, sched_op, shutdown_reason, version, Errno};

/// Why a domain shut itself down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// Normal completion.
    Poweroff,
    /// Asked for a restart.
    Reboot,
    /// The guest declared itself crashed.
    Crash,
}

/// What the trap layer must do after a hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Return `value` in `rax` and resume the caller.
    Return(i64),
    /// Return 0 and let the scheduler pick another domain.
    Yield,
    /// Return 0 once an event is pending; until then the domain uses no CPU.
    Block,
    /// The domain is finished.
    Shutdown(ShutdownReason),
}

/// The machine as a hypercall sees it.
pub trait Env {
    /// Copies from the calling domain's memory (see [`crate::guest_mem`]).
    fn copy_from_guest(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Appends bytes to the calling domain's console.
    fn console_write(&mut self, bytes: &[u8]);
}

/// Decodes and performs hypercall `nr` with arguments `a` (rdi, rsi, rdx,
/// r10, r8).
pub fn dispatch<E: Env>(env: &mut E, nr: u64, a: [u64; 5]) -> Action {
    match nr {
        hypercall::CONSOLE_IO => ret(console(env, a[0], a[1], a[2])),
        hypercall::SCHED_OP => sched(a[0], a[1]),
        hypercall::XEN_VERSION => ret(xen_version(a[0])),
        _ => Action::Return(Errno::ENOSYS.to_ret()),
    }
}

fn ret(r: Result<u64, Errno>) -> Action {
    Action::Return(match r {
        Ok(v) => v as i64,
        Err(e) => e.to_ret(),
    })
}

fn console<E: Env>(env: &mut E, cmd: u64, len: u64, buf: u64) -> Result<u64, Errno> {
    match cmd {
        console_io::WRITE => {
            if len > console_io::MAX_WRITE {
                return Err(Errno::EINVAL);
            }
            let mut bytes = [0u8; console_io::MAX_WRITE as usize];
            let bytes = &mut bytes[..len as usize];
            env.copy_from_guest(buf, bytes)?;
            env.console_write(bytes);
            Ok(len)
        }
        _ => Err(Errno::ENOSYS),
    }
}

fn sched(cmd: u64, arg: u64) -> Action {
    match cmd {
        sched_op::YIELD => Action::Yield,
        sched_op::BLOCK => Action::Block,
        sched_op::SHUTDOWN => match arg {
            shutdown_reason::POWEROFF => Action::Shutdown(ShutdownReason::Poweroff),
            shutdown_reason::REBOOT => Action::Shutdown(ShutdownReason::Reboot),
            shutdown_reason::CRASH => Action::Shutdown(ShutdownReason::Crash),
            _ => Action::Return(Errno::EINVAL.to_ret()),
        },
        _ => Action::Return(Errno::ENOSYS.to_ret()),
    }
}

fn xen_version(cmd: u64) -> Result<u64, Errno> {
    match cmd {
        version::VERSION => Ok((version::ABI_MAJOR << 16) | version::ABI_MINOR),
        version::GET_FEATURES => Ok(features::CONSOLE_WRITE
            | features::SCHED_OP
            | features::FPU_PRESERVED
            | features::ISOLATED_ENTRY),
        _ => Err(Errno::ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Guest memory is one readable window `[base, base + data.len())`.
    struct FakeEnv {
        base: u64,
        data: Vec<u8>,
        console: Vec<u8>,
    }

    impl Env for FakeEnv {
        fn copy_from_guest(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
            if buf.is_empty() {
                return Ok(()); // as GuestView::copy_from: nothing to translate
            }
            let off = va.checked_sub(self.base).ok_or(Errno::EFAULT)? as usize;
            let end = off.checked_add(buf.len()).ok_or(Errno::EFAULT)?;
            buf.copy_from_slice(self.data.get(off..end).ok_or(Errno::EFAULT)?);
            Ok(())
        }
        fn console_write(&mut self, bytes: &[u8]) {
            self.console.extend_from_slice(bytes);
        }
    }

    fn env() -> FakeEnv {
        FakeEnv { base: 0x1000, data: b"hello, world".to_vec(), console: Vec::new() }
    }

    #[test]
    fn console_write_copies_and_returns_length() {
        let mut e = env();
        assert_eq!(dispatch(&mut e, hypercall::CONSOLE_IO, [0, 5, 0x1000, 0, 0]), Action::Return(5));
        assert_eq!(e.console, b"hello");
        assert_eq!(dispatch(&mut e, hypercall::CONSOLE_IO, [0, 0, 0, 0, 0]), Action::Return(0));
    }

    #[test]
    fn console_write_bad_pointer_is_efault_and_writes_nothing() {
        let mut e = env();
        for (len, ptr) in [(5, 0), (5, 0x1000 + 10), (1, u64::MAX), (4096, 0x1000), (8, 0xffff_ff80_0000_0000)] {
            assert_eq!(
                dispatch(&mut e, hypercall::CONSOLE_IO, [0, len, ptr, 0, 0]),
                Action::Return(Errno::EFAULT.to_ret()),
                "len {len} ptr {ptr:#x}"
            );
        }
        assert!(e.console.is_empty());
    }

    #[test]
    fn console_write_too_long_is_einval() {
        let mut e = env();
        for len in [4097, u64::MAX, 1 << 40] {
            assert_eq!(
                dispatch(&mut e, hypercall::CONSOLE_IO, [0, len, 0x1000, 0, 0]),
                Action::Return(Errno::EINVAL.to_ret())
            );
        }
    }

    #[test]
    fn unknown_numbers_and_subcommands_are_enosys() {
        let mut e = env();
        let enosys = Action::Return(Errno::ENOSYS.to_ret());
        for nr in [0, 1, 16, 30, 999, u64::MAX] {
            assert_eq!(dispatch(&mut e, nr, [0; 5]), enosys, "nr {nr}");
        }
        assert_eq!(dispatch(&mut e, hypercall::CONSOLE_IO, [7, 1, 0x1000, 0, 0]), enosys);
        assert_eq!(dispatch(&mut e, hypercall::SCHED_OP, [99, 0, 0, 0, 0]), enosys);
        assert_eq!(dispatch(&mut e, hypercall::XEN_VERSION, [u64::MAX, 0, 0, 0, 0]), enosys);
    }

    #[test]
    fn sched_op_commands() {
        let mut e = env();
        assert_eq!(dispatch(&mut e, hypercall::SCHED_OP, [0, 0, 0, 0, 0]), Action::Yield);
        assert_eq!(dispatch(&mut e, hypercall::SCHED_OP, [1, 0, 0, 0, 0]), Action::Block);
        assert_eq!(
            dispatch(&mut e, hypercall::SCHED_OP, [2, 0, 0, 0, 0]),
            Action::Shutdown(ShutdownReason::Poweroff)
        );
        assert_eq!(
            dispatch(&mut e, hypercall::SCHED_OP, [2, 3, 0, 0, 0]),
            Action::Shutdown(ShutdownReason::Crash)
        );
        for bad in [2, 4, 5, u64::MAX] {
            assert_eq!(
                dispatch(&mut e, hypercall::SCHED_OP, [2, bad, 0, 0, 0]),
                Action::Return(Errno::EINVAL.to_ret()),
                "reason {bad}"
            );
        }
    }

    #[test]
    fn version_and_features() {
        let mut e = env();
        assert_eq!(dispatch(&mut e, hypercall::XEN_VERSION, [0; 5]), Action::Return(1));
        let Action::Return(f) = dispatch(&mut e, hypercall::XEN_VERSION, [6, 0, 0, 0, 0]) else {
            panic!("features must return a value");
        };
        assert_ne!(f as u64 & features::FPU_PRESERVED, 0);
    }
}
