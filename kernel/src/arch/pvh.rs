//! The PVH boot information (`hvm_start_info`, version 1) handed over by
//! QEMU in `ebx`: memory map, boot modules and command line.
//!
//! The firmware is trusted to be honest but not to be sane: every count is
//! bounded and every structure read with volatile copies from the identity
//! map, so a malformed block gives a clear boot error instead of a wild read.

const MAGIC: u32 = 0x336e_c578;

/// Upper bounds for what we accept.
const MAX_MEMMAP: usize = 64;
const MAX_MODULES: usize = 4;

/// One memory-map entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemRange {
    pub addr: u64,
    pub size: u64,
    /// 1 = usable RAM.
    pub kind: u32,
}

/// One boot module.
#[derive(Clone, Copy, Debug, Default)]
pub struct Module {
    pub paddr: u64,
    pub size: u64,
}

/// The parsed boot information.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub memmap: [MemRange; MAX_MEMMAP],
    pub memmap_len: usize,
    pub modules: [Module; MAX_MODULES],
    pub modules_len: usize,
    /// Physical address and length of the hypervisor command line.
    pub cmdline: (u64, usize),
}

fn rd<T: Copy>(pa: u64) -> T {
    // SAFETY: callers pass addresses inside the hvm_start_info block or the
    // tables it points to, which QEMU places in low RAM; the whole first
    // 4 GiB is identity-mapped, so the read cannot fault. A lying firmware
    // could only make us read garbage, which is then bounds-checked.
    unsafe { (pa as *const T).read_volatile() }
}

impl BootInfo {
    /// Parses the block at `pa`.
    pub fn parse(pa: u64) -> Result<BootInfo, &'static str> {
        if pa == 0 || pa >= 1 << 32 {
            return Err("no PVH start info (boot with QEMU -kernel, PVH note)");
        }
        if rd::<u32>(pa) != MAGIC {
            return Err("bad PVH start-info magic");
        }
        let version: u32 = rd(pa + 4);
        let nr_modules = rd::<u32>(pa + 12) as usize;
        let modlist: u64 = rd(pa + 16);
        let cmdline_pa: u64 = rd(pa + 24);
        let mut bi = BootInfo {
            memmap: [MemRange::default(); MAX_MEMMAP],
            memmap_len: 0,
            modules: [Module::default(); MAX_MODULES],
            modules_len: 0,
            cmdline: (0, 0),
        };
        if version < 1 {
            return Err("PVH start info version 0 has no memory map");
        }
        let memmap: u64 = rd(pa + 40);
        let entries = rd::<u32>(pa + 48) as usize;
        if entries == 0 || entries > MAX_MEMMAP {
            return Err("PVH memory map is empty or too long");
        }
        for i in 0..entries {
            let e = memmap + i as u64 * 24;
            bi.memmap[i] = MemRange { addr: rd(e), size: rd(e + 8), kind: rd(e + 16) };
        }
        bi.memmap_len = entries;
        if nr_modules > MAX_MODULES {
            return Err("too many boot modules");
        }
        for i in 0..nr_modules {
            let m = modlist + i as u64 * 32;
            bi.modules[i] = Module { paddr: rd(m), size: rd(m + 8) };
        }
        bi.modules_len = nr_modules;
        if cmdline_pa != 0 && cmdline_pa < 1 << 32 {
            let mut len = 0;
            while len < 1024 && rd::<u8>(cmdline_pa + len as u64) != 0 {
                len += 1;
            }
            bi.cmdline = (cmdline_pa, len);
        }
        Ok(bi)
    }

    /// The usable RAM ranges.
    pub fn ram(&self) -> impl Iterator<Item = MemRange> + '_ {
        self.memmap[..self.memmap_len].iter().copied().filter(|r| r.kind == 1)
    }

    /// The boot modules.
    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.modules_len]
    }

    /// The hypervisor command line.
    pub fn cmdline(&self) -> &'static str {
        if self.cmdline.1 == 0 {
            return "";
        }
        // SAFETY: the bytes were scanned above inside identity-mapped low
        // RAM that nothing writes after boot.
        let bytes = unsafe { core::slice::from_raw_parts(self.cmdline.0 as *const u8, self.cmdline.1) };
        core::str::from_utf8(bytes).unwrap_or("")
    }
}
