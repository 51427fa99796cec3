//! GDT, TSS and IDT contents, and the entry-area mappings of both views.
//!
//! # GDT (read-only to guests, so every descriptor has its accessed bit
//! preset: the CPU would otherwise write it when loading a selector)
//! | selector | segment |
//! |---|---|
//! | 0x08 | hypervisor code, 64-bit, DPL 0 |
//! | 0x10 | hypervisor data, DPL 0 |
//! | 0x18 | guest kernel code, 64-bit, DPL 1 (`GUEST_KERNEL_CS` = 0x19) |
//! | 0x20 | guest kernel data, DPL 1 (`GUEST_KERNEL_SS` = 0x21) |
//! | 0x28 | guest user data, DPL 3 (`GUEST_USER_SS` = 0x2b) |
//! | 0x30 | guest user code, 64-bit, DPL 3 (`GUEST_USER_CS` = 0x33) |
//! | 0x38 | TSS (16 bytes) |
//!
//! # IDT
//! Every gate is an interrupt gate (IF cleared on entry) to hypervisor code
//! selector 0x08. DPL 0 everywhere except: the hypercall gate
//! (`HYPERCALL_VECTOR`) and the null trap (`NULL_TRAP_VECTOR`), both DPL 1
//! so ring 3 cannot use them, and `#BP`/`#OF`
//! (DPL 3, so `int3`/`into` reach the guest's own handlers). Vectors whose
//! CPU pushes an error code are DPL 0, so software `int` can never forge one.
//! `#DF`, NMI and `#MC` use IST1, IST2 and IST3.
//!
//! # TSS
//! RSP0 is the entry stack; IST1 the fault stack; the I/O bitmap offset lies
//! beyond the limit, so every `in`/`out` from ring 1 or 3 faults.
//!
//! # Entry-area mappings
//! Slot 511 has two sets of tables: the hypervisor view's (`HV_ENTRY_*`) and
//! one set shared by every guest view (`GUEST_ENTRY_*`, installed by the
//! domain builder through [`guest_entry_pml4e`]). Both map the entry area
//! page for page; only the hypervisor's also map the private page
//! ([`entry::ENTRY_PRIVATE`]) in the slot right after it. All these tables
//! live in ordinary hypervisor memory, outside the entry area, so no guest
//! can read the physical addresses they hold.

use super::cpu;
use super::entry::{self, EntryRegion, GDT, IDT, TSS};
use core::arch::asm;
use pvguest_abi::layout::ENTRY_AREA_PML4_SLOT;
use pvguest_abi::{HYPERCALL_VECTOR, NULL_TRAP_VECTOR};
use ringfence_kernel::mm::paging::{Pte, PteFlags};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Hypervisor code selector.
pub const HV_CS: u16 = 0x08;
/// Hypervisor data selector.
pub const HV_DS: u16 = 0x10;
/// The 64-bit task-state segment (Intel SDM vol. 3, 8.7): the stacks the
/// CPU switches to. Written once at boot into the entry area's `TSS`.
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    /// RSP0..RSP2: the stacks for entries to rings 0..2.
    rsp: [u64; 3],
    reserved1: u64,
    /// IST1..IST7.
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap.
    iomap_base: u16,
}

const _: () = {
    assert!(core::mem::size_of::<Tss>() == 104);
    assert!(core::mem::offset_of!(Tss, rsp) == 4);
    assert!(core::mem::offset_of!(Tss, ist) == 36);
    assert!(core::mem::offset_of!(Tss, iomap_base) == 102);
};

/// TSS selector.
pub const TSS_SEL: u16 = 0x38;

const GDT_ENTRIES: [u64; 7] = [
    0,
    0x00af_9b00_0000_ffff, // hv code: P, DPL0, code, accessed, L
    0x00cf_9300_0000_ffff, // hv data: P, DPL0, data rw, accessed
    0x00af_bb00_0000_ffff, // guest kernel code: DPL1
    0x00cf_b300_0000_ffff, // guest kernel data: DPL1
    0x00cf_f300_0000_ffff, // user data: DPL3
    0x00af_fb00_0000_ffff, // user code: DPL3
];

#[repr(C, align(4096))]
struct Table([u64; 512]);

/// Entry-area page tables of the hypervisor view (slot 511).
static HV_ENTRY_PDPT: entry::EntryCell<Table> = entry::EntryCell::new(Table([0; 512]));
static HV_ENTRY_PD: entry::EntryCell<Table> = entry::EntryCell::new(Table([0; 512]));
static HV_ENTRY_PT: entry::EntryCell<Table> = entry::EntryCell::new(Table([0; 512]));
/// Entry-area page tables shared by every guest view (slot 511).
static GUEST_ENTRY_PDPT: entry::EntryCell<Table> = entry::EntryCell::new(Table([0; 512]));
static GUEST_ENTRY_PD: entry::EntryCell<Table> = entry::EntryCell::new(Table([0; 512]));
static GUEST_ENTRY_PT: entry::EntryCell<Table> = entry::EntryCell::new(Table([0; 512]));

extern "C" {
    static hv_pml4: u8;
}

/// Physical address of the hypervisor's PML4 (its CR3).
pub fn hv_cr3() -> u64 {
    &raw const hv_pml4 as u64
}

/// No mapping here is global: the two views give the same addresses
/// different permissions, so a global TLB entry from the hypervisor view
/// would leak write access into a guest view.
///
/// The hypervisor view also maps the private page ([`entry::ENTRY_PRIVATE`])
/// right after the area, read-only; guest views leave that slot empty.
fn fill_entry_tables(pdpt: *mut Table, pd: *mut Table, pt: *mut Table, r: &EntryRegion, guest: bool) {
    let inner = PteFlags::PRESENT | PteFlags::WRITABLE;
    // SAFETY: the tables are statics of this module, written only here,
    // once, during boot with interrupts disabled.
    unsafe {
        (*pdpt).0[0] = Pte::new(pd as u64 >> 12, inner).0;
        (*pd).0[0] = Pte::new(pt as u64 >> 12, inner).0;
        let mut pa = r.start;
        let mut i = 0;
        while pa < r.end {
            let flags = if pa >= r.stacks {
                PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE
            } else if pa >= r.text {
                PteFlags::PRESENT
            } else if guest {
                PteFlags::PRESENT | PteFlags::NO_EXECUTE
            } else {
                PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE
            };
            (*pt).0[i] = Pte::new(pa >> 12, flags).0;
            pa += 4096;
            i += 1;
        }
        if !guest {
            let private = entry::ENTRY_PRIVATE.get() as u64;
            (*pt).0[i] = Pte::new(private >> 12, PteFlags::PRESENT | PteFlags::NO_EXECUTE).0;
        }
    }
}

/// Physical address of the hypervisor view's slot-511 PDPT.
pub fn hv_entry_pdpt() -> u64 {
    HV_ENTRY_PDPT.get() as u64
}

/// The PML4 entry every guest view installs in slot 511.
pub fn guest_entry_pml4e() -> u64 {
    Pte::new(GUEST_ENTRY_PDPT.get() as u64 >> 12, PteFlags::PRESENT | PteFlags::WRITABLE).0
}

/// Enables SMEP, SMAP and UMIP where the CPU offers them (SMAP only while
/// the hypervisor runs: see [`entry`]'s docs), builds the entry-area
/// mappings, publishes the hypervisor's CR3 to the entry code, loads GDT,
/// TSS and IDT at their alias addresses, and checks that the guest-visible
/// area names no hypervisor physical address ([`super::leakcheck`]).
pub fn init() {
    let prot = enable_protections();
    let r = entry::region();
    // One page-table page covers the area plus the private page after it.
    assert!(r.end - r.start < 512 * 4096, "entry area exceeds one page table");
    // SAFETY: `hv_cr3` is the boot PML4 in .bss (below 4 GiB); CR4.SMAP was
    // set just above when `prot.smap`; no entry can happen yet (the IDT is
    // loaded below).
    unsafe { entry::init(hv_cr3(), prot.smap) };
    fill_entry_tables(HV_ENTRY_PDPT.get(), HV_ENTRY_PD.get(), HV_ENTRY_PT.get(), &r, false);
    fill_entry_tables(GUEST_ENTRY_PDPT.get(), GUEST_ENTRY_PD.get(), GUEST_ENTRY_PT.get(), &r, true);
    let pml4 = hv_cr3() as *mut u64;
    // SAFETY: `hv_pml4` is the live PML4 built by the boot stub; slot 511 is
    // unused by the identity map, and adding an entry does not disturb any
    // current translation.
    unsafe {
        pml4.add(ENTRY_AREA_PML4_SLOT)
            .write_volatile(Pte::new(HV_ENTRY_PDPT.get() as u64 >> 12, PteFlags::PRESENT | PteFlags::WRITABLE).0);
    }

    // GDT with the TSS descriptor.
    let tss_base = entry::alias(TSS.get());
    let tss_limit = 103u64;
    let tss_lo = (tss_limit & 0xffff)
        | ((tss_base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, DPL 0, 64-bit available TSS
        | (((tss_limit >> 16) & 0xf) << 48)
        | (((tss_base >> 24) & 0xff) << 56);
    let tss_hi = tss_base >> 32;
    // SAFETY: boot-time, single CPU, interrupts off: nothing else uses the
    // tables yet.
    unsafe {
        let gdt = &mut (*GDT.get()).0;
        gdt[..GDT_ENTRIES.len()].copy_from_slice(&GDT_ENTRIES);
        gdt[7] = tss_lo;
        gdt[8] = tss_hi;

        let mut t = Tss::new_zeroed();
        t.rsp = [entry::entry_stack_top(), 0, 0];
        let mut ist = [0u64; 7];
        for (slot, top) in ist.iter_mut().zip(entry::ist_tops()) {
            *slot = top;
        }
        // Whole-field writes: the struct is packed, so no references.
        t.ist = ist;
        // No I/O permission bitmap: the base lies beyond the TSS limit.
        // (0xffff rather than 104: an unaligned qword read of the area then
        // shows no value that looks like a hypervisor address to the
        // boot leak check.)
        t.iomap_base = 0xffff;
        (*TSS.get()).0.copy_from_slice(t.as_bytes());

        let idt = &mut (*IDT.get()).0;
        for v in 0..=255u8 {
            let dpl = match v {
                3 | 4 => 3,
                HYPERCALL_VECTOR | NULL_TRAP_VECTOR => 1,
                _ => 0,
            };
            let ist = match v {
                8 => 1,
                2 => 2,
                18 => 3,
                _ => 0,
            };
            idt[v as usize] = gate(entry::stub_alias(v), HV_CS, dpl, 0xe, ist);
        }
    }

    #[repr(C, packed)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let gdtr = Ptr { limit: 16 * 8 - 1, base: entry::alias(GDT.get()) };
    init_syscall();
    let idtr = Ptr { limit: 256 * 16 - 1, base: entry::alias(IDT.get()) };
    // SAFETY: the tables are fully initialised and mapped at their alias in
    // the current (hypervisor) view. Reloading CS via a far return and the
    // data segments switches to the final GDT's identical flat segments; the
    // TSS descriptor is "available", so `ltr` marks it busy (the GDT is
    // writable in this view).
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {ds:x}",
            "xor {tmp:e}, {tmp:e}",
            "mov ds, {tmp:x}",
            "mov es, {tmp:x}",
            "mov fs, {tmp:x}",
            "mov gs, {tmp:x}",
            "ltr {tss:x}",
            "lidt [{idtr}]",
            gdtr = in(reg) &gdtr,
            idtr = in(reg) &idtr,
            cs = in(reg) u64::from(HV_CS),
            ds = in(reg) u64::from(HV_DS),
            tss = in(reg) u64::from(TSS_SEL),
            tmp = out(reg) _,
        );
    }
    let (bytes, plants) = super::leakcheck::check(hv_cr3());
    crate::log!(
        "entry area: {} KiB guest-visible, no hypervisor physical address in it (scanner caught {plants}/{plants} planted leaks)",
        bytes / 1024
    );
}

/// Sets CR4.SMEP, CR4.UMIP and CR4.SMAP where CPUID offers them and logs
/// which are on. SMEP and UMIP then hold in every ring; the entry code
/// keeps SMAP for ring 0 only, clearing it on each exit to a guest.
fn enable_protections() -> cpu::Protections {
    let p = cpu::Protections::probe();
    let mut bits = 0;
    for (offered, bit) in [(p.smep, cpu::cr4::SMEP), (p.smap, cpu::cr4::SMAP), (p.umip, cpu::cr4::UMIP)] {
        if offered {
            bits |= bit;
        }
    }
    // SAFETY: only bits CPUID reports are set. SMEP and SMAP cannot fault
    // the hypervisor: its view maps no user page (`mm::harden` checks), and
    // it runs under a guest CR3 only in the entry text, which touches only
    // the entry area (supervisor pages). UMIP affects rings 1-3 only.
    unsafe { cpu::write_cr4(cpu::read_cr4() | bits) };
    let state = |offered: bool| if offered { "on" } else { "off (not offered)" };
    crate::log!(
        "cpu: SMEP {}, SMAP {}{}, UMIP {}",
        state(p.smep),
        state(p.smap),
        if p.smap { " (ring 0; guest rings run without it)" } else { "" },
        state(p.umip)
    );
    p
}

/// Enables the `syscall` instruction for guests: it enters `syscall_entry`
/// in ring 0 with interrupts, TF, DF, NT and AC cleared, and the hypervisor
/// bounces it to the guest kernel's syscall callback.
fn init_syscall() {
    use crate::arch::cpu::{msr, rdmsr, wrmsr};
    // SAFETY: STAR's kernel selectors are the hypervisor's code/data
    // selectors; its user base makes sysret (never used) target the user
    // selectors; LSTAR is the entry-area alias of `syscall_entry`, mapped
    // in every view; FMASK clears IF so the stub runs with interrupts off.
    unsafe {
        wrmsr(msr::STAR, (u64::from(0x20u16 | 3) << 48) | (u64::from(HV_CS) << 32));
        wrmsr(msr::LSTAR, entry::syscall_entry_alias());
        wrmsr(msr::FMASK, 0x4_0000 | 0x4000 | 0x400 | 0x200 | 0x100);
        wrmsr(msr::EFER, rdmsr(msr::EFER) | 1);
    }
}

/// IDT value of a gate to `target` in `selector` with the given DPL and
/// type (0xE interrupt, 0xF trap).
fn gate(target: u64, selector: u16, dpl: u8, kind: u8, ist: u8) -> u128 {
    let off = u128::from(target);
    (off & 0xffff)
        | (u128::from(selector) << 16)
        | (u128::from(ist) << 32)
        | (u128::from(0x80 | (dpl << 5) | kind) << 40)
        | (((off >> 16) & 0xffff) << 48)
        | ((off >> 32) << 64)
}

/// Points vector 0x80 at a guest kernel's syscall handler (a DPL 3 trap gate
/// into the guest kernel code segment: ring 3 enters ring 1 directly, on
/// TSS.RSP1, with no hypervisor on the path), or back at the hypervisor's
/// DPL 0 stub when `target` is `None` (so `int 0x80` raises #GP).
#[inline] // on every trip through the hypervisor
pub fn set_syscall_gate(target: Option<u64>) {
    use pvguest_abi::selectors::GUEST_KERNEL_CS;
    let v = pvguest_abi::trap::SYSCALL_GATE_VECTOR;
    let value = match target {
        Some(t) => gate(t, GUEST_KERNEL_CS & !3, 3, 0xf, 0),
        None => gate(entry::stub_alias(v), HV_CS, 0, 0xe, 0),
    };
    // SAFETY: single CPU with interrupts off; the IDT is writable in the
    // hypervisor view and the entry is replaced whole. The target was
    // validated as a guest address by `vcpu::TrapTable::set`.
    unsafe { (*IDT.get()).0[usize::from(v)] = value };
}

/// Sets TSS.RSP1: the stack ring 3 switches to when it takes the direct
/// syscall gate into ring 1.
#[inline] // on every trip through the hypervisor
pub fn set_rsp1(sp: u64) {
    // SAFETY: single CPU with interrupts off; the TSS is writable in the
    // hypervisor view and RSP1 is read by the CPU only on a ring change.
    unsafe { (&mut (*TSS.get()).0)[12..20].copy_from_slice(&sp.to_le_bytes()) };
}
