//! Initial vCPU state for direct Linux boot: GDT, identity page tables, segment/control
//! registers (32-bit protected mode for PVH, long mode for the 64-bit boot protocol), general
//! registers, FPU, MSRs, LAPIC LINT pins. Also a guest page-table walker for crash dumps.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START, PML4_START};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot {what} to guest memory: {source}")]
    Write {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

/// Encodes a GDT descriptor from flags (G/DB/L/AVL in bits 15:12, access byte in 7:0), base and
/// limit, the way the CPU expects it in memory.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a GDT descriptor into the KVM segment (hidden part) it loads as selector `index*8`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if present == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Which entry protocol the boot CPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = zero page.
    Linux64,
}

/// The boot GDT: null, code, data, TSS. Code is 64-bit for `Linux64`, 32-bit for `Pvh`.
pub fn boot_gdt(mode: BootMode) -> [u64; 4] {
    let code = match mode {
        BootMode::Linux64 => gdt_entry(0xa09b, 0, 0xfffff),
        BootMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        gdt_entry(0, 0, 0),
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page tables: one PML4 entry → PDPT with 4 entries → 4 PDs of 2 MiB pages: the first 4 GiB
/// identity mapped (covers the kernel, zero page, command line and an initrd at the top of low RAM).
pub fn write_identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<u64, RegsError> {
    let pml4 = PML4_START;
    let pdpt = pml4 + 0x1000;
    let pd = pml4 + 0x2000;
    let w = |addr: u64, v: u64| {
        mem.write_obj(v, GuestAddress(addr))
            .map_err(|source| RegsError::Write {
                what: "page tables",
                source,
            })
    };
    w(pml4, pdpt | 0x3)?;
    for i in 0..4u64 {
        w(pdpt + i * 8, (pd + i * 0x1000) | 0x3)?;
        for j in 0..512u64 {
            let frame = ((i << 30) | (j << 21)) | 0x83; // present, writable, 2 MiB page
            w(pd + i * 0x1000 + j * 8, frame)?;
        }
    }
    Ok(pml4)
}

/// Writes the GDT and an empty IDT, and returns the special registers for `mode` based on
/// `sregs` (what KVM reported, so APIC base etc. are kept).
pub fn setup_sregs<M: GuestMemoryBackend>(
    mem: &M,
    mode: BootMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(mode);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|source| RegsError::Write {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| RegsError::Write {
            what: "IDT",
            source,
        })?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 0;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    match mode {
        BootMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootMode::Linux64 => {
            sregs.cr3 = write_identity_page_tables(mem)?;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// General registers for the boot CPU.
pub fn boot_regs(mode: BootMode, entry: u64, boot_info: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        BootMode::Pvh => regs.rbx = boot_info,
        BootMode::Linux64 => {
            regs.rsp = super::layout::BOOT_STACK_POINTER;
            regs.rbp = super::layout::BOOT_STACK_POINTER;
            regs.rsi = boot_info;
        }
    }
    regs
}

/// FPU at reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;

/// The MSRs every vCPU starts with (the usual Firecracker/Cloud Hypervisor set, plus the KVM
/// paravirt MSRs cleared so a rebooted guest does not inherit kvmclock/async-PF areas).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_TSC_DEADLINE, 0),
        e(MSR_IA32_MISC_ENABLE, 1),          // fast strings
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs enabled, default write-back
        e(MSR_KVM_SYSTEM_TIME_NEW, 0),
        e(MSR_KVM_WALL_CLOCK_NEW, 0),
        e(MSR_KVM_ASYNC_PF_EN, 0),
        e(MSR_KVM_STEAL_TIME, 0),
        e(MSR_KVM_PV_EOI_EN, 0),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT (the PIC's output, BSP only), LINT1 = NMI (all CPUs), as a BIOS leaves them.
pub fn configure_lint(lapic: &mut kvm_lapic_state, is_bsp: bool) {
    if is_bsp {
        let lvt0 = lapic_reg(lapic, APIC_LVT0);
        set_lapic_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    }
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Translates a linear address by walking the guest's page tables as the CPU would for the
/// given CR0/CR3/CR4/EFER (4-level, 5-level with LA57, PAE or 2-level). `read_u64` reads 8
/// bytes of guest-physical memory (32-bit tables are read as the low half).
pub fn translate(
    linear: u64,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    read_u64: impl Fn(u64) -> Option<u64>,
) -> Option<u64> {
    const PRESENT: u64 = 1;
    const HUGE: u64 = 1 << 7;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    if cr0 & X86_CR0_PG == 0 {
        return Some(linear);
    }
    if efer & EFER_LMA != 0 || cr4 & X86_CR4_PAE != 0 {
        let (levels, mut table) = if efer & EFER_LMA != 0 {
            (if cr4 & (1 << 12) != 0 { 5 } else { 4 }, cr3 & ADDR)
        } else {
            (3, cr3 & 0xffff_ffe0)
        };
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let idx = if levels == 3 && level == 3 {
                (linear >> 30) & 3
            } else {
                (linear >> shift) & 0x1ff
            };
            let pte = read_u64(table + idx * 8)?;
            if pte & PRESENT == 0 {
                return None;
            }
            if level == 1 || ((level == 2 || level == 3) && pte & HUGE != 0) {
                let page_mask = (1u64 << shift) - 1;
                return Some((pte & ADDR & !page_mask) | (linear & page_mask));
            }
            table = pte & ADDR;
        }
        None
    } else {
        let pde = read_u64((cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4)? & 0xffff_ffff;
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & HUGE != 0 && cr4 & (1 << 4) != 0 {
            return Some((pde & 0xffc0_0000) | (linear & 0x3f_ffff));
        }
        let pte = read_u64((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4)? & 0xffff_ffff;
        (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (linear & 0xfff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryMmap, bitmap::AtomicBitmap};

    #[test]
    fn gdt_encoding_matches_known_descriptors() {
        // The classic flat descriptors.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0x1234_5678, 0x67), 0x1280_8b34_5678_0067);
        assert_eq!(gdt_entry(0x008b, 0x1234_5678, 0x67), 0x1200_8b34_5678_0067);
        let cs = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (
                cs.selector,
                cs.type_,
                cs.present,
                cs.l,
                cs.db,
                cs.g,
                cs.s,
                cs.limit
            ),
            (8, 0xb, 1, 1, 0, 1, 1, 0xffff_ffff)
        );
        let tss = segment_from_gdt(gdt_entry(0x008b, 0x1234_5678, 0x67), 3);
        assert_eq!(
            (tss.base, tss.limit, tss.s, tss.g),
            (0x1234_5678, 0x67, 0, 0)
        );
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    fn mem() -> GuestMemoryMmap<AtomicBitmap> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    #[test]
    fn identity_tables_translate_to_themselves() {
        let m = mem();
        let sregs = setup_sregs(&m, BootMode::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.selector, 8);
        assert_eq!(sregs.tr.selector, 0x18);
        let read = |a: u64| m.read_obj::<u64>(GuestAddress(a)).ok();
        for addr in [0u64, 0x1000_0510, 0x7fff_ffff, 0xbfff_f123, 0xffff_ffff] {
            assert_eq!(
                translate(addr, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, read),
                Some(addr)
            );
        }
        assert_eq!(
            translate(1 << 32, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, read),
            None
        );
        // Paging off: identity.
        assert_eq!(translate(0x1234, 0x11, 0, 0, 0, read), Some(0x1234));
        let gdt: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn two_level_walk_with_4k_page() {
        let m = mem();
        // PD at 0x10000, PT at 0x11000; map linear 0x0040_3000 -> 0x15000.
        m.write_obj(0x11000u32 | 1, GuestAddress(0x10000 + 4))
            .unwrap();
        m.write_obj(0x15000u32 | 1, GuestAddress(0x11000 + 3 * 4))
            .unwrap();
        let read = |a: u64| m.read_obj::<u64>(GuestAddress(a)).ok();
        assert_eq!(
            translate(0x0040_3abc, X86_CR0_PG | 1, 0x10000, 0, 0, read),
            Some(0x15abc)
        );
        assert_eq!(
            translate(0x0040_4000, X86_CR0_PG | 1, 0x10000, 0, 0, read),
            None
        );
    }

    #[test]
    fn lint_pins() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x1_0000);
        configure_lint(&mut l, true);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x1_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x400);
        let mut ap = kvm_lapic_state::default();
        configure_lint(&mut ap, false);
        assert_eq!(lapic_reg(&ap, APIC_LVT0), 0);
    }
}
