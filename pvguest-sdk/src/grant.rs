//! Grant tables: giving another domain access to one of our frames, and
//! copying through grants.
//!
//! A domain that shares a page sets up its grant table once
//! ([`GrantTable::setup`]: the hypervisor hands it frames of its own, which
//! this module maps writable), then writes an entry per grant
//! ([`GrantTable::grant`]): "domain D may read (or write) frame F". The
//! peer names the grant by the granting domain and the entry's index, the
//! grant reference, and either copies through it ([`copy_from_grant`],
//! [`copy_to_grant`]) or maps it into its own address space ([`map`]),
//! which gives a [`Mapping`] whose [`Mapping::shared`] is the page as
//! `ring-protocol` memory. The hypervisor sets `GTF_reading` / `GTF_writing` in
//! the entry while it uses a grant, and a [`Grant`] refuses to be revoked
//! until they are clear, so a frame is never taken back while in use.
//!
//! ```ignore
//! use pvguest_sdk::{grant::{self, GrantTable}, mm};
//!
//! // Domain 1 lets domain 2 read a page:
//! let mut table = GrantTable::setup(1)?;
//! let page = mm::alloc_page().unwrap();
//! let g = table.grant(2, page, true)?;          // tell domain 2 g.gref()
//!
//! // Domain 2 copies it into a page of its own:
//! let mine = mm::alloc_page().unwrap();
//! grant::copy_from_grant(1, gref, 0, mine, 0, 4096)?;
//!
//! // Domain 1, later:
//! table.revoke(g).map_err(|(_, e)| e)?;        // EBUSY while in use
//! ```
//!
//! Mapping a grant instead of copying it (the page then appears at an
//! address of the grantee whose page-table entry exists and is not
//! present, e.g. just past its memory):
//!
//! ```ignore
//! use pvguest_sdk::grant;
//!
//! // Domain 2 maps domain 1's writable grant `gref`:
//! let va = si.virt_base + si.nr_pages * 4096;
//! let m = grant::map(1, gref, va, false)?;
//! m.write(0, b"hello");                         // volatile copies, no &T
//! let mut buf = [0u8; 5];
//! m.read(0, &mut buf);
//! let ring_mem = m.shared();                    // or a ring-protocol ring
//! m.unmap().map_err(|(_, e)| e)?;               // domain 1 may revoke now
//! ```
//!
//! # Who writes what
//! The granter writes an entry's `frame` and `domid`, then its flags (in
//! that order, so the hypervisor never sees a valid type with stale
//! fields); the hypervisor only sets and clears `GTF_reading` /
//! `GTF_writing`. Entries are reached through volatile accesses: the
//! hypervisor changes them from outside the program.

use crate::mm::{self, Page, Pte};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, Ordering};
use pvguest_abi::grant::{
    gntcopy, gntmap, gntst, gtf, CopyPtr, GnttabCopy, GrantEntryV1, MapGrantRef, QuerySize, SetupTable, UnmapGrantRef,
    COPY, ENTRIES_PER_FRAME, MAP_GRANT_REF, NR_RESERVED_ENTRIES, QUERY_SIZE, SETUP_TABLE, UNMAP_GRANT_REF,
};
use pvguest_abi::{hypercall, Errno, DOMID_SELF};

/// Most grant-table frames this module sets up.
pub const MAX_FRAMES: usize = 4;

/// A grant-table status (`GNTST_*`) as an error: the hypercall ran, the
/// operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The hypercall itself failed.
    Call(Errno),
    /// The operation's status, a negative `GNTST_*`.
    Status(i16),
}

/// `grant_table_op(cmd, arg, count)`.
fn op<T>(cmd: u64, arg: &mut T, count: u64) -> Result<(), GrantError> {
    // SAFETY: `arg` is a live local of the layout `cmd` expects (each
    // caller pairs a command with its ABI struct), `count` of them; the
    // hypervisor writes only their out fields.
    let r = unsafe { crate::hypercall::raw(hypercall::GRANT_TABLE_OP, [cmd, arg as *mut T as u64, count, 0, 0]) };
    Errno::decode(r).map(|_| ()).map_err(GrantError::Call)
}

/// This domain's grant table, mapped writable.
#[derive(Debug)]
pub struct GrantTable {
    /// Where the table's entries are mapped (frame after frame).
    entries: u64,
    nr_entries: u32,
    /// The next reference to hand out (0 to 7 are kept back, as Xen keeps
    /// them for the toolstack).
    next: u32,
}

/// A grant of one of our frames to another domain (see the module docs).
#[derive(Debug)]
#[must_use = "a grant stays in force until it is revoked"]
pub struct Grant {
    gref: u32,
}

impl Grant {
    /// The grant reference to tell the peer.
    pub fn gref(&self) -> u32 {
        self.gref
    }
}

/// References kept back from [`GrantTable::grant`]: the domain builder's
/// (the store page's grant is reference 1).
const RESERVED_REFS: u32 = NR_RESERVED_ENTRIES;

static SHARED: spin::Once<Result<spin::Mutex<GrantTable>, GrantError>> = spin::Once::new();

/// The domain's one grant table, set up with [`MAX_FRAMES`] frames on
/// first use, for every part of the domain that grants pages (the SDK's
/// block front among them). Use this rather than [`GrantTable::setup`]
/// when more than one part of a guest grants: two tables set up
/// separately would hand out the same references.
pub fn shared() -> Result<&'static spin::Mutex<GrantTable>, GrantError> {
    SHARED.call_once(|| GrantTable::setup(MAX_FRAMES as u32).map(spin::Mutex::new)).as_ref().map_err(|e| *e)
}

/// The machine frames of this domain's grant table as it stands (the
/// domain builder may already have made its first frame, for the store
/// page's grant), into `out`; returns how many. Nothing grows.
pub fn table_frames(out: &mut [u64; MAX_FRAMES]) -> Result<usize, GrantError> {
    let mut q = QuerySize { dom: DOMID_SELF as u16, ..QuerySize::default() };
    op(QUERY_SIZE, &mut q, 1)?;
    status(q.status)?;
    let n = (q.nr_frames as usize).min(MAX_FRAMES);
    if n == 0 {
        return Ok(0);
    }
    let mut st = SetupTable {
        dom: DOMID_SELF as u16,
        nr_frames: n as u32,
        frame_list: out.as_mut_ptr() as u64,
        ..SetupTable::default()
    };
    op(SETUP_TABLE, &mut st, 1)?;
    status(st.status)?;
    Ok(n)
}

impl GrantTable {
    /// Sets up a table of `nr_frames` frames (at most [`MAX_FRAMES`]) and
    /// maps them writable over freshly allocated pages' linear addresses.
    pub fn setup(nr_frames: u32) -> Result<GrantTable, GrantError> {
        if nr_frames == 0 || nr_frames as usize > MAX_FRAMES {
            return Err(GrantError::Call(Errno::EINVAL));
        }
        let mut frames = [0u64; MAX_FRAMES];
        let mut st = SetupTable {
            dom: DOMID_SELF as u16,
            nr_frames,
            frame_list: frames.as_mut_ptr() as u64,
            ..SetupTable::default()
        };
        op(SETUP_TABLE, &mut st, 1)?;
        if st.status != gntst::OKAY {
            return Err(GrantError::Status(st.status));
        }
        // The table's frames are ours but not in our linear map: put them
        // where fresh pages were (those pages are given up for it).
        let base = mm::alloc_pages(u64::from(nr_frames)).ok_or(GrantError::Call(Errno::ENOMEM))?;
        for (i, &mfn) in frames[..nr_frames as usize].iter().enumerate() {
            let va = base.va() + i as u64 * 4096;
            mm::update_va_mapping(va, Pte::new(mfn, Pte::WRITABLE | Pte::NO_EXECUTE)).map_err(GrantError::Call)?;
        }
        Ok(GrantTable { entries: base.va(), nr_entries: nr_frames * ENTRIES_PER_FRAME, next: RESERVED_REFS })
    }

    /// The flags word of entry `gref`.
    fn flags(&self, gref: u32) -> &AtomicU16 {
        // SAFETY: `gref < nr_entries`, checked by every caller, and the
        // table stays mapped for this value's life; the word is shared with
        // the hypervisor, which changes it atomically, hence the atomic.
        unsafe { &*((self.entries + u64::from(gref) * 8) as *const AtomicU16) }
    }

    /// Grants `to` access to `page` (read-only if `readonly`).
    pub fn grant(&mut self, to: u16, page: Page, readonly: bool) -> Result<Grant, GrantError> {
        let gref = self.next;
        if gref >= self.nr_entries {
            return Err(GrantError::Call(Errno::ENOSPC));
        }
        let frame = u32::try_from(page.mfn).map_err(|_| GrantError::Call(Errno::ERANGE))?;
        let entry = (self.entries + u64::from(gref) * 8) as *mut GrantEntryV1;
        // SAFETY: `gref < nr_entries` (above), so `entry` lies in the
        // mapped table; domid and frame are written before the flags
        // (release order below), so no reader sees a type with stale ones.
        unsafe {
            (&raw mut (*entry).domid).write_volatile(to);
            (&raw mut (*entry).frame).write_volatile(frame);
        }
        let flags = gtf::PERMIT_ACCESS | if readonly { gtf::READONLY } else { 0 };
        self.flags(gref).store(flags, Ordering::Release);
        self.next += 1;
        Ok(Grant { gref })
    }

    /// Whether the hypervisor is using `grant` (reading or writing through
    /// it) right now.
    pub fn in_use(&self, grant: &Grant) -> bool {
        self.flags(grant.gref).load(Ordering::Acquire) & (gtf::READING | gtf::WRITING) != 0
    }

    /// Ends `grant`: clears its entry, unless the hypervisor is using it
    /// (then `EBUSY`, and the grant is handed back).
    pub fn revoke(&mut self, grant: Grant) -> Result<(), (Grant, GrantError)> {
        let f = self.flags(grant.gref);
        let cur = f.load(Ordering::Acquire);
        if cur & (gtf::READING | gtf::WRITING) != 0 {
            return Err((grant, GrantError::Call(Errno::EBUSY)));
        }
        // The hypervisor sets its bits with a compare-exchange on the whole
        // entry: clearing the flags the same way loses no race.
        match f.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(_) => Err((grant, GrantError::Call(Errno::EBUSY))),
        }
    }
}

/// Copies `len` bytes from offset `src_off` of `granter`'s grant `gref`
/// into offset `dst_off` of our `page` (neither range may leave its page).
pub fn copy_from_grant(
    granter: u16,
    gref: u32,
    src_off: u16,
    page: Page,
    dst_off: u16,
    len: u16,
) -> Result<(), GrantError> {
    let mut c = GnttabCopy {
        source: CopyPtr { u: u64::from(gref), domid: granter, offset: src_off, pad: 0 },
        dest: CopyPtr { u: page.mfn, domid: DOMID_SELF as u16, offset: dst_off, pad: 0 },
        len,
        flags: gntcopy::SOURCE_GREF,
        ..GnttabCopy::default()
    };
    copy(core::slice::from_mut(&mut c))?;
    status(c.status)
}

/// Copies `len` bytes from offset `src_off` of our `page` into offset
/// `dst_off` of `granter`'s (writable) grant `gref`.
pub fn copy_to_grant(
    page: Page,
    src_off: u16,
    granter: u16,
    gref: u32,
    dst_off: u16,
    len: u16,
) -> Result<(), GrantError> {
    let mut c = GnttabCopy {
        source: CopyPtr { u: page.mfn, domid: DOMID_SELF as u16, offset: src_off, pad: 0 },
        dest: CopyPtr { u: u64::from(gref), domid: granter, offset: dst_off, pad: 0 },
        len,
        flags: gntcopy::DEST_GREF,
        ..GnttabCopy::default()
    };
    copy(core::slice::from_mut(&mut c))?;
    status(c.status)
}

/// Runs a batch of copies; each element's outcome is in its `status`.
pub fn copy(ops: &mut [GnttabCopy]) -> Result<(), GrantError> {
    if ops.is_empty() {
        return Ok(());
    }
    // SAFETY: as in `op`, for `ops.len()` consecutive elements.
    let r = unsafe {
        crate::hypercall::raw(hypercall::GRANT_TABLE_OP, [COPY, ops.as_mut_ptr() as u64, ops.len() as u64, 0, 0])
    };
    Errno::decode(r).map(|_| ()).map_err(GrantError::Call)
}

fn status(s: i16) -> Result<(), GrantError> {
    if s == gntst::OKAY {
        Ok(())
    } else {
        Err(GrantError::Status(s))
    }
}

/// A peer's grant mapped into this domain's address space (see [`map`]).
/// Unmapping it ([`Mapping::unmap`]) gives the page back; while it is
/// mapped, the peer cannot revoke the grant.
#[derive(Debug)]
#[must_use = "a mapping holds the peer's page until it is unmapped"]
pub struct Mapping {
    va: u64,
    handle: u32,
    bus: u64,
}

/// Maps `granter`'s grant `gref` at `va` (a page-aligned kernel address
/// whose page-table entry exists and is not present: the page after the
/// domain's memory, for one), read-only if `readonly`.
pub fn map(granter: u16, gref: u32, va: u64, readonly: bool) -> Result<Mapping, GrantError> {
    let mut m = MapGrantRef {
        host_addr: va,
        flags: gntmap::HOST_MAP | if readonly { gntmap::READONLY } else { 0 },
        gref,
        dom: granter,
        ..MapGrantRef::default()
    };
    op(MAP_GRANT_REF, &mut m, 1)?;
    status(m.status)?;
    Ok(Mapping { va, handle: m.handle, bus: m.dev_bus_addr })
}

impl Mapping {
    /// Where the page is mapped.
    pub fn va(&self) -> u64 {
        self.va
    }

    /// The page's machine address (for DMA).
    pub fn machine_addr(&self) -> u64 {
        self.bus
    }

    /// The page as shared memory for `ring-protocol`, for as long as this
    /// mapping lives.
    pub fn shared(&self) -> ring_protocol::SharedMem<'_> {
        // SAFETY: the page is mapped at `va` until `unmap` consumes `self`,
        // which the returned lifetime forbids while it is borrowed; the peer
        // writes it concurrently, which `SharedMem` is built for (single
        // volatile copies, never references).
        unsafe { ring_protocol::SharedMem::new(self.va as *mut u8, 4096) }
            .expect("a mapped page is valid shared memory")
    }

    /// Copies `data` into the page at `offset` (clamped to the page), by
    /// volatile byte writes: the peer shares the page.
    pub fn write(&self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate().take(4096usize.saturating_sub(offset)) {
            // SAFETY: `offset + i < 4096`, inside the page mapped at `va`
            // while `self` lives; a volatile write of our own byte.
            unsafe { ((self.va + (offset + i) as u64) as *mut u8).write_volatile(b) };
        }
    }

    /// Copies bytes of the page from `offset` into `out` (clamped), by
    /// volatile byte reads.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate().take(4096usize.saturating_sub(offset)) {
            // SAFETY: as for `write`; one volatile read per byte into our
            // own memory, never a reference into the shared page.
            *b = unsafe { ((self.va + (offset + i) as u64) as *const u8).read_volatile() };
        }
    }

    /// Asks for a notification when this mapping goes away, by
    /// [`Mapping::unmap`] or by this domain's end (destroyed, crashed):
    /// byte `clear` of the page is cleared (the mapping must be writable)
    /// and/or an event is sent on this domain's `port` (an interdomain port
    /// to the granter, say). The granter learns that its peer is gone
    /// without polling, as Linux's gntdev offers vchan. `None, None`
    /// cancels.
    ///
    /// ```ignore
    /// let m = grant::map(peer, gref, va, false)?;
    /// m.set_unmap_notify(Some(0), Some(chan.port()))?;
    /// ```
    pub fn set_unmap_notify(&self, clear: Option<u16>, port: Option<crate::event::Port>) -> Result<(), GrantError> {
        use pvguest_abi::grant::{notify, SetUnmapNotify, SET_UNMAP_NOTIFY};
        let mut n = SetUnmapNotify {
            handle: self.handle,
            offset: clear.unwrap_or(0),
            action: if clear.is_some() { notify::CLEAR_BYTE } else { 0 }
                | if port.is_some() { notify::SEND_EVENT } else { 0 },
            port: port.map_or(0, |p| p.0),
            ..SetUnmapNotify::default()
        };
        op(SET_UNMAP_NOTIFY, &mut n, 1)?;
        status(n.status)
    }

    /// Unmaps the page (the TLB is flushed before the call returns).
    pub fn unmap(self) -> Result<(), (Mapping, GrantError)> {
        let mut u = UnmapGrantRef { host_addr: self.va, handle: self.handle, ..UnmapGrantRef::default() };
        match op(UNMAP_GRANT_REF, &mut u, 1).and_then(|()| status(u.status)) {
            Ok(()) => Ok(()),
            Err(e) => Err((self, e)),
        }
    }
}

/// Most pages one [`MappedPages`] or [`GrantSet`] holds (a block
/// request's segments, an indirect one's included).
pub const MAX_MAPPED: usize = 32;

/// A batch of one peer's grants mapped at consecutive [`crate::vmap`]
/// slots, for a backend that lets a device DMA straight into the peer's
/// pages: one `map_grant_ref` hypercall for the batch, one to unmap it.
/// Each page's machine address is recorded with the slot, so DMA code
/// translates the mapped addresses like its own memory
/// ([`crate::dma::machine_of`]).
#[derive(Debug)]
#[must_use = "the mappings hold the peer's pages until unmapped"]
pub struct MappedPages {
    va: u64,
    n: usize,
    handles: [u32; MAX_MAPPED],
    machine: [u64; MAX_MAPPED],
}

impl MappedPages {
    /// Maps `grefs` of `granter` (1 to [`MAX_MAPPED`]), read-only if
    /// `readonly` (a device that only reads them: a disk write). All or
    /// nothing: if any element is refused, the others are unmapped again
    /// and the first refusal is returned with its index.
    pub fn map(granter: u16, grefs: &[u32], readonly: bool) -> Result<MappedPages, (usize, GrantError)> {
        let n = grefs.len();
        if n == 0 || n > MAX_MAPPED {
            return Err((0, GrantError::Call(Errno::EINVAL)));
        }
        let va = crate::vmap::alloc(n).map_err(|e| (0, GrantError::Call(e)))?;
        let flags = gntmap::HOST_MAP | if readonly { gntmap::READONLY } else { 0 };
        let mut ops = [MapGrantRef::default(); MAX_MAPPED];
        for (i, (o, &gref)) in ops.iter_mut().zip(grefs).enumerate() {
            *o = MapGrantRef { host_addr: va + i as u64 * 4096, flags, gref, dom: granter, ..MapGrantRef::default() };
        }
        let r = op(MAP_GRANT_REF, &mut ops, n as u64);
        let mut pages = MappedPages { va, n: 0, handles: [0; MAX_MAPPED], machine: [0; MAX_MAPPED] };
        let mut failed = r.err().map(|e| (0, e));
        for (i, o) in ops[..n].iter().enumerate() {
            if o.status == gntst::OKAY && r.is_ok() {
                pages.handles[i] = o.handle;
                pages.machine[i] = o.dev_bus_addr;
                crate::vmap::set_machine(va + i as u64 * 4096, o.dev_bus_addr);
            } else if failed.is_none() {
                failed = Some((i, GrantError::Status(o.status)));
            }
        }
        if let Some(f) = failed {
            // Undo the elements that were mapped.
            for i in (0..n).filter(|&i| ops[i].status == gntst::OKAY && r.is_ok()) {
                let mut u =
                    UnmapGrantRef { host_addr: va + i as u64 * 4096, handle: ops[i].handle, ..Default::default() };
                let _ = op(UNMAP_GRANT_REF, &mut u, 1);
            }
            crate::vmap::free(va, n);
            return Err(f);
        }
        pages.n = n;
        Ok(pages)
    }

    /// Pages mapped.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether nothing is mapped (never, for a batch that mapped).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Machine address of page `i`.
    pub fn machine_addr(&self, i: usize) -> Option<u64> {
        (i < self.n).then(|| self.machine[i])
    }

    /// Where page `i` is mapped.
    pub fn va(&self, i: usize) -> Option<u64> {
        (i < self.n).then(|| self.va + i as u64 * 4096)
    }

    /// Copies bytes `at..` of the batch (page `k` at `k * 4096`) into
    /// `out` with single volatile reads (the peer may be writing them);
    /// `false` if out of range.
    pub fn read(&self, at: usize, out: &mut [u8]) -> bool {
        if at.checked_add(out.len()).is_none_or(|end| end > self.n * 4096) {
            return false;
        }
        // SAFETY: the range lies in the batch's pages, mapped at
        // consecutive addresses from `va` while `self` lives; `SharedMem`
        // reads it only with volatile copies.
        let mem = unsafe { ring_protocol::SharedMem::new(self.va as *mut u8, self.n * 4096) };
        mem.is_ok_and(|m| m.read_bytes(at, out).is_ok())
    }

    /// Bytes `start..end` of the batch's address range (page `k` at
    /// `k * 4096`) as a buffer to hand to a device driver, which gives the
    /// device its machine address (in place when the pages are
    /// machine-contiguous). `None` if out of range or empty.
    ///
    /// The peer owns the pages and may change them at any moment: the
    /// buffer is for a device's DMA, and the caller must not read or write
    /// it itself (the driver only translates it to machine addresses).
    pub fn dma_buffer(&mut self, start: usize, end: usize) -> Option<&mut [u8]> {
        if start >= end || end > self.n * 4096 {
            return None;
        }
        // SAFETY: `start..end` lies inside the batch's pages, mapped at
        // consecutive addresses from `va` until `unmap` consumes `self`
        // (which the borrow forbids meanwhile); the exclusive borrow of
        // `self` makes this the only Rust view of them in this domain. The
        // peer may write the pages concurrently; this domain never reads
        // or writes through the slice (the contract above): it only hands
        // it to a device by machine address, so no Rust-level access races
        // with the peer.
        Some(unsafe { core::slice::from_raw_parts_mut((self.va as usize + start) as *mut u8, end - start) })
    }

    /// Zero-fills bytes `start..end` of the batch (a read of sectors the
    /// disk never wrote), by volatile writes: the peer shares the pages.
    /// `false` if out of range.
    pub fn zero(&mut self, start: usize, end: usize) -> bool {
        if start > end || end > self.n * 4096 {
            return false;
        }
        for off in start..end {
            // SAFETY: `off` lies inside the batch's pages, mapped writable
            // (a read's pages are) at consecutive addresses from `va` while
            // `self` lives; a volatile byte store, never a reference into
            // the shared pages. A read-only batch faults here, which only
            // a caller that zero-fills a write's pages could cause.
            unsafe { ((self.va as usize + off) as *mut u8).write_volatile(0) };
        }
        true
    }

    /// Unmaps every page (one hypercall; the TLB is flushed before it
    /// returns) and gives the slots back. A page whose unmap failed keeps
    /// its slot (never reused while something may be mapped there).
    pub fn unmap(self) -> Result<(), GrantError> {
        let mut ops = [UnmapGrantRef::default(); MAX_MAPPED];
        for (i, o) in ops[..self.n].iter_mut().enumerate() {
            *o = UnmapGrantRef { host_addr: self.va + i as u64 * 4096, handle: self.handles[i], ..Default::default() };
        }
        let r = op(UNMAP_GRANT_REF, &mut ops, self.n as u64);
        let mut first = r.err();
        for (i, o) in ops[..self.n].iter().enumerate() {
            if o.status == gntst::OKAY && r.is_ok() {
                crate::vmap::free(self.va + i as u64 * 4096, 1);
            } else if first.is_none() {
                first = Some(GrantError::Status(o.status));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// One of a peer's grants mapped read-write at a [`crate::vmap`] slot of
/// its own, for as long as a backend keeps it: the building block of
/// persistent grants, where a front grants a pool of pages once and the
/// backend maps each the first time it sees it and keeps the mapping for
/// the connection's life (no map or unmap per request). The machine
/// address is recorded with the slot, so DMA code translates the mapped
/// address like its own memory ([`crate::dma::machine_of`]).
#[derive(Debug)]
#[must_use = "the mapping holds the peer's page until unmapped"]
pub struct MappedGrant {
    map: Mapping,
    gref: u32,
}

impl MappedGrant {
    /// Maps `granter`'s grant `gref` read-write at a fresh slot.
    pub fn map(granter: u16, gref: u32) -> Result<MappedGrant, GrantError> {
        let va = crate::vmap::alloc(1).map_err(GrantError::Call)?;
        MappedGrant::map_at(granter, gref, va).inspect_err(|_| crate::vmap::free(va, 1))
    }

    /// Maps `granter`'s grant `gref` read-write at `va`, a [`crate::vmap`]
    /// slot the caller holds (allocated, nothing mapped there). On success
    /// the slot becomes the mapping's (given back by
    /// [`MappedGrant::unmap`]); on failure it stays the caller's. For a
    /// backend that lays a peer's grants out at addresses of its choosing
    /// (consecutive grants at consecutive addresses).
    pub fn map_at(granter: u16, gref: u32, va: u64) -> Result<MappedGrant, GrantError> {
        let m = map(granter, gref, va, false)?;
        crate::vmap::set_machine(va, m.machine_addr());
        Ok(MappedGrant { map: m, gref })
    }

    /// The grant reference it maps.
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// Where the page is mapped.
    pub fn va(&self) -> u64 {
        self.map.va()
    }

    /// The page's machine address.
    pub fn machine_addr(&self) -> u64 {
        self.map.machine_addr()
    }

    /// Copies bytes `at..` of the page into `out` with single volatile
    /// reads (the peer may be writing it); `false` if past the page.
    pub fn read(&self, at: usize, out: &mut [u8]) -> bool {
        self.map.shared().read_bytes(at, out).is_ok()
    }

    /// Unmaps the page and gives its slot back (a slot whose unmap failed
    /// is never reused).
    pub fn unmap(self) -> Result<(), GrantError> {
        let va = self.map.va();
        match self.map.unmap() {
            Ok(()) => {
                crate::vmap::free(va, 1);
                Ok(())
            }
            Err((_, e)) => Err(e),
        }
    }
}

/// Up to [`MAX_MAPPED`] [`MappedGrant`]s lent together, page `k` of the
/// set at byte `k * 4096` of its data (a block request's pages, from a
/// backend's persistent mappings, handed to a device driver and back).
#[derive(Debug, Default)]
pub struct GrantSet {
    grants: [Option<MappedGrant>; MAX_MAPPED],
    n: usize,
}

impl GrantSet {
    /// An empty set.
    pub fn new() -> GrantSet {
        GrantSet::default()
    }

    /// Adds a page at the end; a full set gives it back.
    pub fn push(&mut self, g: MappedGrant) -> Result<(), MappedGrant> {
        match self.grants.get_mut(self.n) {
            Some(slot) => {
                *slot = Some(g);
                self.n += 1;
                Ok(())
            }
            None => Err(g),
        }
    }

    /// Pages in the set.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Where page `k` is mapped.
    pub fn va(&self, k: usize) -> Option<u64> {
        self.grants.get(k)?.as_ref().map(MappedGrant::va)
    }

    /// Takes the last page out.
    pub fn pop(&mut self) -> Option<MappedGrant> {
        let k = self.n.checked_sub(1)?;
        self.n = k;
        self.grants[k].take()
    }
}

/// A page of ours granted to a peer for good: a front's pool page (its
/// data pages, segment lists, frame buffers), used for nothing else, so the
/// peer may keep it mapped (persistent grants).
#[derive(Clone, Copy, Debug)]
pub struct GrantedPage {
    /// The page.
    pub page: Page,
    /// Its grant to the peer.
    pub gref: u32,
}

impl GrantedPage {
    /// The page as shared memory: the peer may write it at any time (or
    /// read it), so it is reached only by `SharedMem`'s volatile copies.
    pub fn shared(&self) -> ring_protocol::SharedMem<'_> {
        // SAFETY: the page is ours, mapped read-write at its linear address
        // for the domain's life (the SDK's allocator never frees), used only
        // as this pool page, which the peer shares: only ever touched
        // through `SharedMem`'s volatile copies.
        unsafe { ring_protocol::SharedMem::new(self.page.va() as *mut u8, 4096) }.expect("a page is a valid region")
    }
}

/// Why [`granted_pages`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// No memory for the pages or their list.
    NoMemory,
    /// A grant was refused (the table is full).
    Grant(GrantError),
}

/// `n` fresh consecutive pages of ours, each granted (read-only if
/// `readonly`) to domain `to` for the domain's life, in order: their grant
/// references are then usually consecutive too, which a backend that
/// lays its mappings out by reference can use.
pub fn granted_pages(table: &mut GrantTable, to: u16, n: usize, readonly: bool) -> Result<Vec<GrantedPage>, PoolError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| PoolError::NoMemory)?;
    let first = mm::alloc_pages(n as u64).ok_or(PoolError::NoMemory)?;
    for k in 0..n as u64 {
        let page = Page { pfn: first.pfn + k, mfn: mm::mfn_of_pfn(first.pfn + k) };
        let gref = table.grant(to, page, readonly).map_err(PoolError::Grant)?.gref();
        v.push(GrantedPage { page, gref });
    }
    Ok(v)
}
