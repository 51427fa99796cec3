//! Error codes returned by hypercalls: `rax = -errno`, Linux/Xen numbering.

/// A hypercall failure. Hypercalls return `-(errno as i64)` in `rax`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Errno {
    /// The caller lacks the privilege for the operation.
    EPERM = 1,
    /// No such object (port, grant, key).
    ENOENT = 2,
    /// No such domain.
    ESRCH = 3,
    /// Input/output error.
    EIO = 5,
    /// Argument list (batch) too long.
    E2BIG = 7,
    /// Bad handle (for instance, a closed port).
    EBADF = 9,
    /// Try again.
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Access denied by policy.
    EACCES = 13,
    /// A guest pointer or length does not lie in memory the guest may access.
    EFAULT = 14,
    /// The object is in use.
    EBUSY = 16,
    /// The object already exists.
    EEXIST = 17,
    /// An argument is out of range or malformed.
    EINVAL = 22,
    /// A quota is exhausted.
    ENOSPC = 28,
    /// A value is out of range.
    ERANGE = 34,
    /// No such hypercall or sub-command.
    ENOSYS = 38,
    /// The operation exists but this kind of it is not offered (an MSI
    /// passed to `PHYSDEVOP_map_pirq`).
    EOPNOTSUPP = 95,
    /// The port (or endpoint) is not connected.
    ENOTCONN = 107,
    /// The wait timed out.
    ETIMEDOUT = 110,
}

impl Errno {
    /// Every code, for tables and tests.
    pub const ALL: [Errno; 19] = [
        Errno::EPERM,
        Errno::ENOENT,
        Errno::ESRCH,
        Errno::EIO,
        Errno::E2BIG,
        Errno::EBADF,
        Errno::EAGAIN,
        Errno::ENOMEM,
        Errno::EACCES,
        Errno::EFAULT,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::EINVAL,
        Errno::ENOSPC,
        Errno::ERANGE,
        Errno::ENOSYS,
        Errno::EOPNOTSUPP,
        Errno::ENOTCONN,
        Errno::ETIMEDOUT,
    ];

    /// The value the hypervisor puts in `rax`.
    pub const fn to_ret(self) -> i64 {
        -(self as i64)
    }

    /// The errno for a positive code, if it is one of ours.
    pub fn from_code(code: i64) -> Option<Errno> {
        Errno::ALL.iter().copied().find(|e| *e as i64 == code)
    }

    /// Decodes a raw hypercall result: `Ok(value)` for `rax >= 0`, otherwise
    /// the errno. A negative value that is not a known errno decodes as
    /// `EINVAL` so that callers never see an unnamed error.
    pub fn decode(rax: i64) -> Result<u64, Errno> {
        if rax >= 0 {
            Ok(rax as u64)
        } else {
            Err(Errno::from_code(rax.wrapping_neg()).unwrap_or(Errno::EINVAL))
        }
    }

    /// The conventional symbolic name, e.g. `"EFAULT"`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::ESRCH => "ESRCH",
            Errno::EIO => "EIO",
            Errno::E2BIG => "E2BIG",
            Errno::EBADF => "EBADF",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ERANGE => "ERANGE",
            Errno::ENOSYS => "ENOSYS",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
            Errno::ENOTCONN => "ENOTCONN",
            Errno::ETIMEDOUT => "ETIMEDOUT",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_ret())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_code() {
        for e in Errno::ALL {
            assert_eq!(Errno::decode(e.to_ret()), Err(e));
        }
        assert_eq!(Errno::decode(0), Ok(0));
        assert_eq!(Errno::decode(12345), Ok(12345));
        assert_eq!(Errno::decode(-9999), Err(Errno::EINVAL));
        assert_eq!(Errno::decode(i64::MIN), Err(Errno::EINVAL));
    }

    #[test]
    fn xen_numbering() {
        assert_eq!(Errno::EFAULT.to_ret(), -14);
        assert_eq!(Errno::ENOSYS.to_ret(), -38);
        assert_eq!(Errno::EINVAL.to_ret(), -22);
    }
}
