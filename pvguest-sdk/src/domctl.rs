//! Domain control for the privileged domain ([`pvguest_abi::domctl`]):
//! which domains exist, how to reach their store connection, and the
//! toolstack's commands: create, destroy, pause, unpause, scheduling
//! parameters, the machine's figures and the boot bundle's templates.
//!
//! ```ignore
//! use pvguest_sdk::domctl::{self, Create};
//! for info in domctl::domains() {
//!     println!("dom{} {} store port {}", info.domid, info.name(), info.store_evtchn);
//! }
//! // A domain from the bundle's template "hello", with 1 MiB.
//! let t = domctl::templates().find(|t| t.name() == "hello").unwrap();
//! let image = domctl::read_template(&t)?;
//! let id = Create::new("hello-2", &image).mem_kib(1024).cmdline(t.cmdline()).run()?;
//! domctl::pause(id)?;
//! domctl::destroy(id)?;
//! ```
//!
//! Any other domain gets `EPERM` from every call, and [`domains`] yields
//! nothing for it. Every argument is checked by the hypervisor; a refused
//! create says why in words ([`CreateError::reason`]).

use crate::hypercall::raw;
use alloc::vec::Vec;
use core::fmt;
use pvguest_abi::domctl::{self as abi, BootImage, CreateDomain, DomainInfo, PhysInfo, ReadBootImage, SchedParams};
use pvguest_abi::domctl::{BOOTIMAGE_CHUNK, GETDOMAININFO};
use pvguest_abi::start_info::fill_c_str;
use pvguest_abi::{hypercall, Errno};

pub use pvguest_abi::domctl::dominf;

/// `domctl(cmd, arg, 0)` on an argument the hypervisor reads or writes.
fn ctl<T>(cmd: u64, arg: &mut T) -> Result<u64, Errno> {
    // SAFETY: `arg` is a live, exclusively borrowed value of the layout
    // `cmd` reads and writes (the ABI's size asserts); the hypervisor
    // touches only its bytes, and only during the call.
    let r = unsafe { raw(hypercall::DOMCTL, [cmd, arg as *mut T as u64, 0, 0, 0]) };
    Errno::decode(r)
}

/// `domctl(cmd, domid, 0)`: a command naming a domain.
fn on_domain(cmd: u64, domid: u32) -> Result<(), Errno> {
    // SAFETY: the argument is a plain id; nothing is read or written.
    let r = unsafe { raw(hypercall::DOMCTL, [cmd, u64::from(domid), 0, 0, 0]) };
    Errno::decode(r).map(drop)
}

/// The live domain with the smallest id at or above `from` (`ESRCH`: none).
pub fn domain_info(from: u32) -> Result<DomainInfo, Errno> {
    let mut info = DomainInfo { domid: from, ..DomainInfo::default() };
    ctl(GETDOMAININFO, &mut info)?;
    Ok(info)
}

/// Every live domain (dead ones until reaped: [`dominf::DYING`]), in id
/// order. Ends at the first error (for an unprivileged caller, at once).
pub fn domains() -> impl Iterator<Item = DomainInfo> {
    let mut next = Some(0u32);
    core::iter::from_fn(move || {
        let info = domain_info(next?).ok();
        next = info.and_then(|i| i.domid.checked_add(1));
        info
    })
}

/// A domain to build ([`abi::CREATEDOMAIN`]): a name, an ELF image in this
/// domain's memory, and defaults for the rest (256 KiB, the default weight,
/// no warp, an empty command line, running at once).
#[derive(Clone, Copy, Debug)]
pub struct Create<'a> {
    name: &'a str,
    image: &'a [u8],
    cmdline: &'a str,
    mem_kib: u32,
    weight: u32,
    warp_us: u32,
    paused: bool,
}

/// Why a create was refused: the error, and the hypervisor's reason in
/// words (empty when the request itself could not be read).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CreateError {
    pub errno: Errno,
    reason: [u8; 96],
}

impl CreateError {
    /// The hypervisor's reason (e.g. "not an ELF image").
    pub fn reason(&self) -> &str {
        let n = self.reason.iter().position(|&b| b == 0).unwrap_or(self.reason.len());
        core::str::from_utf8(&self.reason[..n]).unwrap_or("")
    }
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            "" => write!(f, "{}", self.errno),
            why => write!(f, "{}: {why}", self.errno),
        }
    }
}

impl fmt::Debug for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'a> Create<'a> {
    /// A domain called `name` (1..=31 bytes of `[A-Za-z0-9._-]`) from
    /// `image` (the bytes the ELF loader reads).
    pub fn new(name: &'a str, image: &'a [u8]) -> Create<'a> {
        Create { name, image, cmdline: "", mem_kib: 256, weight: 0, warp_us: 0, paused: false }
    }
    /// Its command line (at most [`abi::MAX_CMDLINE`] bytes).
    pub fn cmdline(mut self, cmdline: &'a str) -> Self {
        self.cmdline = cmdline;
        self
    }
    /// Its memory in KiB (a multiple of 4, at most [`abi::MAX_CREATE_MEM_KIB`]).
    pub fn mem_kib(mut self, kib: u32) -> Self {
        self.mem_kib = kib;
        self
    }
    /// Its BVT weight (`1..=10_000`; 0 is the default).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
    /// Its BVT warp in microseconds.
    pub fn warp_us(mut self, warp_us: u32) -> Self {
        self.warp_us = warp_us;
        self
    }
    /// Built paused: it runs after [`unpause`].
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }
    /// Builds it: the new domain's id. The image is copied by the
    /// hypervisor in bounded pieces (the call continues itself), so a
    /// large image does not stall the machine.
    pub fn run(&self) -> Result<u32, CreateError> {
        let mut req = CreateDomain {
            image: self.image.as_ptr() as u64,
            image_len: self.image.len() as u64,
            cmdline: if self.cmdline.is_empty() { 0 } else { self.cmdline.as_ptr() as u64 },
            cmdline_len: u32::try_from(self.cmdline.len()).unwrap_or(u32::MAX),
            mem_kib: self.mem_kib,
            weight: self.weight,
            warp_us: self.warp_us,
            flags: if self.paused { abi::create::PAUSED } else { 0 },
            ..CreateDomain::default()
        };
        // A name too long for the field is refused, not cut short.
        if self.name.len() >= req.name.len() {
            let mut e = CreateError { errno: Errno::EINVAL, reason: [0; 96] };
            fill_c_str(&mut e.reason, "the name is longer than 31 bytes");
            return Err(e);
        }
        fill_c_str(&mut req.name, self.name);
        match ctl(abi::CREATEDOMAIN, &mut req) {
            Ok(_) => Ok(req.domid),
            Err(errno) => Err(CreateError { errno, reason: req.reason }),
        }
    }
}

/// Ends domain `domid` now; its resources are reclaimed in bounded steps
/// (`VIRQ_DOM_EXC` when it has ended and again when it is gone). A domain
/// already ending is not an error; this domain itself is `EINVAL`, an id
/// that names no domain `ESRCH`.
pub fn destroy(domid: u32) -> Result<(), Errno> {
    on_domain(abi::DESTROYDOMAIN, domid)
}

/// Takes domain `domid`'s console over: the hypervisor drains its ring no
/// more, and its console port is connected to the channel returned (the
/// domain's notifications of output come there; send on it after
/// writing input). The caller maps the page (grant
/// [`pvguest_abi::grant::GNTTAB_RESERVED_CONSOLE`]), drains it and passes
/// the bytes on with [`crate::console::write_as`];
/// [`crate::store_link::BackLink::console`] does all of it. `EBUSY` once
/// taken, `ENOENT` if the domain closed its console port, `ESRCH` if it
/// has ended.
pub fn console_takeover(domid: u32) -> Result<crate::event::EventChannel, Errno> {
    // SAFETY: the argument is a plain id; nothing is read or written.
    let r = unsafe { raw(hypercall::DOMCTL, [abi::CONSOLE_TAKEOVER, u64::from(domid), 0, 0, 0]) };
    let port = u32::try_from(Errno::decode(r)?).map_err(|_| Errno::EINVAL)?;
    Ok(crate::event::EventChannel::bound(port))
}

/// Stops scheduling domain `domid` (its events stay pending).
pub fn pause(domid: u32) -> Result<(), Errno> {
    on_domain(abi::PAUSEDOMAIN, domid)
}

/// Resumes a paused domain (one blocked when paused sees its block return).
pub fn unpause(domid: u32) -> Result<(), Errno> {
    on_domain(abi::UNPAUSEDOMAIN, domid)
}

/// Sets domain `domid`'s BVT weight (`1..=10_000`) and warp (µs, at most
/// one second).
pub fn set_sched(domid: u32, weight: u32, warp_us: u32) -> Result<(), Errno> {
    let mut p = SchedParams { domid, weight, warp_us, reserved: 0 };
    ctl(abi::SCHEDOP, &mut p).map(drop)
}

/// The machine's figures: frames, heap, ports and domains in use.
pub fn phys_info() -> Result<PhysInfo, Errno> {
    let mut p = PhysInfo::default();
    ctl(abi::PHYSINFO, &mut p)?;
    Ok(p)
}

/// The boot bundle's template `index` (`ESRCH` past the last).
pub fn template(index: u32) -> Result<BootImage, Errno> {
    let mut t = BootImage { index, ..BootImage::default() };
    ctl(abi::BOOTIMAGE_INFO, &mut t)?;
    Ok(t)
}

/// Every template of the boot bundle, in order.
pub fn templates() -> impl Iterator<Item = BootImage> {
    (0u32..).map_while(|i| template(i).ok())
}

/// Copies `buf.len()` bytes of template `index`'s image from `offset`
/// (at most [`BOOTIMAGE_CHUNK`] a call: longer reads are split here).
pub fn read_template_at(index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let mut done = 0usize;
    while done < buf.len() {
        let piece = &mut buf[done..];
        let len = piece.len().min(BOOTIMAGE_CHUNK as usize);
        let mut r =
            ReadBootImage { index, len: len as u32, offset: offset + done as u64, buf: piece.as_mut_ptr() as u64 };
        ctl(abi::BOOTIMAGE_READ, &mut r)?;
        done += len;
    }
    Ok(())
}

/// Template `t`'s whole image, read into a new buffer.
pub fn read_template(t: &BootImage) -> Result<Vec<u8>, Errno> {
    let len = usize::try_from(t.image_len).map_err(|_| Errno::E2BIG)?;
    let mut image = Vec::new();
    image.try_reserve_exact(len).map_err(|_| Errno::ENOMEM)?;
    image.resize(len, 0);
    read_template_at(t.index, 0, &mut image)?;
    Ok(image)
}
