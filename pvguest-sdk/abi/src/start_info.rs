//! The start-info page: what the hypervisor tells a guest kernel at entry.
//!
//! The domain builder fills one page of the domain's own memory with a
//! [`StartInfo`] and enters the guest kernel at its ELF entry point in ring 1
//! with:
//! - `rsi` = guest virtual address of the start-info page,
//! - `rsp` = top of a boot stack (16-byte aligned, inside the domain's memory),
//! - interrupts (events) masked, FPU/SSE initialised (MXCSR = 0x1f80).
//!
//! The page belongs to the guest; the hypervisor writes it once at build time
//! and never reads it back.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Value of [`StartInfo::magic`]: identifies the ABI family and version.
pub const START_INFO_MAGIC: [u8; 32] = *b"ringfence-0.1-x86_64\0\0\0\0\0\0\0\0\0\0\0\0";

/// Maximum command-line length, including the terminating NUL.
pub const MAX_CMDLINE: usize = 1024;

/// Maximum domain-name length, including the terminating NUL.
pub const MAX_NAME: usize = 32;

/// [`StartInfo::flags`]: the domain is privileged (dom0).
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// [`StartInfo::flags`]: the domain is the initial domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// [`ConsoleInfo::kind`]: output goes through the `console_io` hypercall.
pub const CONSOLE_HYPERCALL: u32 = 1;
/// [`ConsoleInfo::kind`]: a console page (like Xen's): one page holding two
/// `ring-protocol` byte streams, made by `ByteChannel`: the first half
/// carries output from the guest (the guest produces, the console backend
/// consumes), the second half input to the guest. The page is initialised
/// before the guest starts; the guest attaches as the front
/// (`ByteChannel::front_attach`) and notifies the backend on
/// [`ConsoleInfo::evtchn`] (`EVTCHNOP_send`), honouring the ring's event
/// index (hold-off). The backend is the hypervisor, which drains the output
/// in bounded, rate-limited chunks charged to the guest, until dom0's
/// console daemon takes the console over (`domctl` `CONSOLE_TAKEOVER`,
/// for every domain the device store serves): from then on the daemon
/// drains the page, writes the guest's input into its second half, and the
/// event channel connects the guest to it (the port keeps its number).
/// `console_io` still works (early boot, panics).
pub const CONSOLE_RING: u32 = 2;

/// How the guest reaches its console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ConsoleInfo {
    /// One of the `CONSOLE_*` kinds.
    pub kind: u32,
    /// Event-channel port of a console ring (0 when `kind` has no ring),
    /// bound to the console backend.
    pub evtchn: u32,
    /// Machine frame of a console ring (0 when `kind` has no ring).
    pub ring_mfn: u64,
    /// Guest virtual address of the console page in the initial mapping (0
    /// when `kind` has no ring).
    pub ring_va: u64,
}

/// dom0's DMA pool ([`StartInfo::dma`]): machine-contiguous frames the
/// domain owns, mapped read-write (no-execute) in its initial mapping at
/// `va`, covering pfns `pfn..pfn + pages`, which lie below
/// [`StartInfo::first_free_pfn`] (the guest's frame allocator never hands
/// them out). Machine address of byte `k` of the pool is
/// `mfn * 4096 + k`. All zero when there is no pool (every domU; dom0
/// unless its manifest entry sets `dma_kib`). There is no IOMMU: a device
/// dom0 points at any machine address reaches it, so dom0 is DMA-trusted,
/// as in Xen; the pool only spares it hunting for contiguous frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmaPoolInfo {
    /// Guest virtual address of the pool's first byte.
    pub va: u64,
    /// First machine frame (the pool is `pages` consecutive frames).
    pub mfn: u64,
    /// First pfn of the pool.
    pub pfn: u64,
    /// Size in pages (0: no pool).
    pub pages: u64,
}

/// The domain's connection to the device store ([`StartInfo::store`]), as
/// Xen's `store_mfn`/`store_evtchn`: one page of the domain's own memory
/// holding a `ring-protocol` `ByteChannel` (requests from the domain on the
/// first half, replies and watch events on the second), already
/// initialised by the domain builder, so the domain attaches as the front
/// (`ByteChannel::front_attach`). The builder also grants the page
/// read-write to the store's domain under grant reference
/// [`crate::grant::GNTTAB_RESERVED_XENSTORE`] (the domain's grant table
/// then already has its first frame) and allocates an event port unbound
/// to the store's domain, which binds it (`EVTCHNOP_bind_interdomain`)
/// when it learns of the domain through `domctl` `GETDOMAININFO`. All zero
/// when there is no store: the privileged domain runs the store, so it has
/// none itself, and a bundle without a privileged domain has none at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StoreInfo {
    /// Machine frame of the store page (0: no store).
    pub mfn: u64,
    /// Guest virtual address of the store page in the initial mapping.
    pub va: u64,
    /// The domain's event port to the store.
    pub evtchn: u32,
    /// Domain id of the store (the privileged domain).
    pub backend: u32,
}

impl StoreInfo {
    /// Whether the domain has a store connection.
    pub const fn present(&self) -> bool {
        self.mfn != 0
    }
}

/// The start-info page (the first bytes of it; the rest of the page is zero).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: [u8; 32],
    /// Number of frames the domain owns (its pfns are `0..nr_pages`).
    pub nr_pages: u64,
    /// Guest virtual address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// The domain's id.
    pub domid: u32,
    /// Guest virtual address of the active top-level page table (read-only
    /// to the guest).
    pub pt_base: u64,
    /// Number of frames used by the boot page tables (they follow the
    /// bootstrap structures in pfn order).
    pub nr_pt_frames: u64,
    /// Guest virtual address of the frame list: `nr_pages` u64 machine frame
    /// numbers indexed by pfn.
    pub mfn_list: u64,
    /// First pfn that is neither image, bootstrap structure, page table nor
    /// boot stack: everything from here to `nr_pages` is free for the guest.
    pub first_free_pfn: u64,
    /// Guest virtual address at which pfn 0 is mapped
    /// ([`crate::layout::GUEST_KERNEL_BASE`]).
    pub virt_base: u64,
    /// Console details.
    pub console: ConsoleInfo,
    /// NUL-terminated domain name from the boot manifest.
    pub name: [u8; MAX_NAME],
    /// NUL-terminated command line from the boot manifest.
    pub cmdline: [u8; MAX_CMDLINE],
    /// The DMA pool (dom0's; all zero for none).
    pub dma: DmaPoolInfo,
    /// The device store (all zero for none).
    pub store: StoreInfo,
}

const _: () = {
    assert!(size_of::<ConsoleInfo>() == 24);
    assert!(offset_of!(StartInfo, magic) == 0);
    assert!(offset_of!(StartInfo, nr_pages) == 32);
    assert!(offset_of!(StartInfo, shared_info) == 40);
    assert!(offset_of!(StartInfo, flags) == 48);
    assert!(offset_of!(StartInfo, domid) == 52);
    assert!(offset_of!(StartInfo, pt_base) == 56);
    assert!(offset_of!(StartInfo, nr_pt_frames) == 64);
    assert!(offset_of!(StartInfo, mfn_list) == 72);
    assert!(offset_of!(StartInfo, first_free_pfn) == 80);
    assert!(offset_of!(StartInfo, virt_base) == 88);
    assert!(offset_of!(StartInfo, console) == 96);
    assert!(offset_of!(StartInfo, name) == 120);
    assert!(offset_of!(StartInfo, cmdline) == 152);
    assert!(offset_of!(StartInfo, dma) == 152 + MAX_CMDLINE);
    assert!(size_of::<DmaPoolInfo>() == 32);
    assert!(offset_of!(DmaPoolInfo, va) == 0);
    assert!(offset_of!(DmaPoolInfo, mfn) == 8);
    assert!(offset_of!(DmaPoolInfo, pfn) == 16);
    assert!(offset_of!(DmaPoolInfo, pages) == 24);
    assert!(offset_of!(StartInfo, store) == 152 + MAX_CMDLINE + 32);
    assert!(size_of::<StoreInfo>() == 24);
    assert!(offset_of!(StoreInfo, mfn) == 0);
    assert!(offset_of!(StoreInfo, va) == 8);
    assert!(offset_of!(StoreInfo, evtchn) == 16);
    assert!(offset_of!(StoreInfo, backend) == 20);
    assert!(size_of::<StartInfo>() == 152 + MAX_CMDLINE + 32 + 24);
    assert!(size_of::<StartInfo>() <= 4096);
};

impl StartInfo {
    /// An all-zero start info with the magic set.
    pub const fn new() -> Self {
        StartInfo {
            magic: START_INFO_MAGIC,
            nr_pages: 0,
            shared_info: 0,
            flags: 0,
            domid: 0,
            pt_base: 0,
            nr_pt_frames: 0,
            mfn_list: 0,
            first_free_pfn: 0,
            virt_base: 0,
            console: ConsoleInfo { kind: 0, evtchn: 0, ring_mfn: 0, ring_va: 0 },
            name: [0; MAX_NAME],
            cmdline: [0; MAX_CMDLINE],
            dma: DmaPoolInfo { va: 0, mfn: 0, pfn: 0, pages: 0 },
            store: StoreInfo { mfn: 0, va: 0, evtchn: 0, backend: 0 },
        }
    }

    /// Whether the magic matches this ABI.
    pub fn magic_ok(&self) -> bool {
        self.magic == START_INFO_MAGIC
    }

    /// The command line up to its NUL (empty if it is not UTF-8).
    pub fn cmdline(&self) -> &str {
        c_str(&self.cmdline)
    }

    /// The domain name up to its NUL (empty if it is not UTF-8).
    pub fn name(&self) -> &str {
        c_str(&self.name)
    }
}

impl Default for StartInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// Copies `s` into a NUL-terminated fixed buffer, truncating at a char
/// boundary so the result stays valid UTF-8.
pub fn fill_c_str<const N: usize>(dst: &mut [u8; N], s: &str) {
    *dst = [0; N];
    let mut len = s.len().min(N - 1);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    dst[..len].copy_from_slice(&s.as_bytes()[..len]);
}

fn c_str(b: &[u8]) -> &str {
    let len = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    core::str::from_utf8(&b[..len]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_match_field_offsets() {
        let mut si = StartInfo::new();
        si.nr_pages = 0x1122;
        si.domid = 7;
        si.console.ring_mfn = 0xabcd;
        fill_c_str(&mut si.cmdline, "mode=cli");
        fill_c_str(&mut si.name, "spy-cli");
        let b = si.as_bytes();
        assert_eq!(&b[..20], b"ringfence-0.1-x86_64");
        assert_eq!(u64::from_le_bytes(b[32..40].try_into().unwrap()), 0x1122);
        assert_eq!(u32::from_le_bytes(b[52..56].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(b[104..112].try_into().unwrap()), 0xabcd);
        assert_eq!(&b[152..160], b"mode=cli");
        si.dma.mfn = 0x4242;
        assert_eq!(u64::from_le_bytes(si.as_bytes()[1184..1192].try_into().unwrap()), 0x4242);
        assert_eq!(si.cmdline(), "mode=cli");
        assert_eq!(si.name(), "spy-cli");
    }

    #[test]
    fn c_str_truncates_on_char_boundary() {
        let mut buf = [0u8; 4];
        fill_c_str(&mut buf, "aé€");
        assert_eq!(c_str(&buf), "aé");
        fill_c_str(&mut buf, "");
        assert_eq!(c_str(&buf), "");
    }
}
