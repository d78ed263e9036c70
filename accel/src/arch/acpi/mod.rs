//! ACPI tables (built with rust-vmm's `acpi_tables`): how a guest learns its CPUs, its IOAPIC
//! and interrupt routing, the PCI host bridge, the power button and how to power off.
//!
//! The platform is a full (not hardware-reduced) ACPI PC: the FADT's PM1a event/control blocks
//! are I/O ports 0x600/0x604 as on QEMU's PIIX4 PM ([`crate::devices::acpi_pm`]), the SCI is
//! ISA IRQ 9, the power button is the fixed-feature button and `\_S5` gives the SLP_TYP that
//! turns a PM1a_CNT SLP_EN write into power-off. Why not hardware-reduced ACPI with a GED
//! (Firecracker, Cloud Hypervisor): that needs a GED device with an interrupt, `_EVT` AML and a
//! `PNP0C0C` device the AML notifies, plus sleep control/status registers; the fixed-feature
//! path needs one 6-byte register file and no AML beyond `\_S5`, and Linux handles it with
//! the code every PC uses (QEMU pc behaves the same way, which the tests compare against).
//!
//! Layout, from [`RSDP_START`] (0xe0000: inside the BIOS area Linux scans for "RSD PTR " and
//! the e820 map reserves up to 1 MiB; the MP table's EBDA below it is not used with ACPI):
//!
//! ```text
//! 0xe0000  RSDP (ACPI 2.0, 36 bytes)   -> XSDT
//! 0xe0040  FACS (64 bytes, 64-aligned)
//! 0xe0080  DSDT, FADT, MADT, MCFG (q35), XSDT (16-byte aligned, in that order)
//! ```
//!
//! MADT: one enabled local APIC per vCPU (APIC id = processor UID = index), the IOAPIC (id =
//! number of vCPUs, GSI base 0, like the MP table), the SCI override (ISA IRQ 9 -> GSI 9,
//! level, active high, as QEMU declares it: KVM's IOAPIC model ignores polarity, so the line is
//! driven high when asserted) and LINT1 as NMI on every CPU. ISA IRQ n is GSI n otherwise
//! (IRQ0 on pin 0: see [`crate::arch::mptable`] for why).

mod dsdt;
mod osc;
mod pcihp;

use acpi_tables::Aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};

use crate::arch::mptable::{IOAPIC_ADDR, LAPIC_ADDR, MAX_CPUS};
use crate::config::PlatformConfig;
use crate::devices::acpi_pm::{
    GPE0_BLK, GPE0_BLK_LEN, PM1_CNT_LEN, PM1_EVT_LEN, PM1A_CNT_BLK, PM1A_EVT_BLK, SCI_IRQ,
};

/// Guest-physical address of the RSDP.
pub const RSDP_START: u64 = 0xe_0000;
/// End (exclusive) of the area the tables must fit in.
pub const ACPI_LIMIT: u64 = 0x10_0000;
const FACS_START: u64 = RSDP_START + 0x40;
const TABLES_START: u64 = FACS_START + 0x40;

const OEM_ID: [u8; 6] = *b"ACCEL ";
const OEM_REVISION: u32 = 1;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
const MADT_REVISION: u8 = 1;
/// MADT flags: PCAT_COMPAT (there is an 8259 pair, KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
/// FADT IA-PC boot architecture flags: LEGACY_DEVICES (COM1, CMOS), 8042 (the reset port),
/// VGA not present, PCIe ASPM controls off. MSI is NOT declared unsupported (bit 3).
const IAPC_BOOT_ARCH: u16 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 4);

// MADT structure types not in acpi_tables 0.2.1.
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: active high (01) | level triggered (11 << 2).
const INTI_ACTIVE_HIGH_LEVEL: u16 = 0x000d;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need between 1 and {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    #[error("the ACPI tables ({size} bytes at {RSDP_START:#x}) do not fit below {ACPI_LIMIT:#x}")]
    TooBig { size: u64 },
    #[error("guest memory does not cover the ACPI tables at [{RSDP_START:#x}, {ACPI_LIMIT:#x})")]
    NotInGuestMemory,
    #[error("writing the ACPI tables to guest memory: {0}")]
    Write(#[source] GuestMemoryError),
}

/// One table and where it goes.
struct Placed {
    gpa: u64,
    bytes: Vec<u8>,
}

fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        *b"ACCELAPC",
        OEM_REVISION,
    );
    madt.write_u32(36, LAPIC_ADDR);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..num_cpus {
        madt.append_slice(&bytes_of(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&bytes_of(&IoApic::new(num_cpus, IOAPIC_ADDR, 0)));
    let mut sci_override = vec![MADT_INTERRUPT_OVERRIDE, 10, 0, SCI_IRQ as u8];
    sci_override.extend_from_slice(&SCI_IRQ.to_le_bytes());
    sci_override.extend_from_slice(&INTI_ACTIVE_HIGH_LEVEL.to_le_bytes());
    madt.append_slice(&sci_override);
    // Every processor (UID 0xff), flags "conform to the bus", LINT1.
    madt.append_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    madt.as_slice().to_vec()
}

fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"ACCELFCP", OEM_REVISION)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        // No fixed-feature sleep button. PwrButton stays clear: the power button IS the
        // fixed-feature one.
        .flag(Flags::SlpButton);
    // Addresses below 1 MiB: the 32-bit and 64-bit fields agree (ACPICA warns otherwise).
    f.dsdt = (dsdt as u32).into();
    f.x_dsdt = dsdt.into();
    f.firmware_ctrl = (facs as u32).into();
    f.x_firmware_ctrl = facs.into();
    f.sci_int = (SCI_IRQ as u16).into();
    // SMI_CMD = 0: no SMM, the platform is always in ACPI mode (PM1_CNT.SCI_EN reads 1).
    f.pm1a_evt_blk = u32::from(PM1A_EVT_BLK).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_BLK).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.x_pm1a_evt_blk = GAS::new(
        AddressSpace::SystemIo,
        PM1_EVT_LEN * 8,
        0,
        AccessSize::WordAccess,
        PM1A_EVT_BLK.into(),
    );
    f.x_pm1a_cnt_blk = GAS::new(
        AddressSpace::SystemIo,
        PM1_CNT_LEN * 8,
        0,
        AccessSize::WordAccess,
        PM1A_CNT_BLK.into(),
    );
    // GPE0 (status then enable, 2 bytes each): bit 1 is PCI hotplug, as on QEMU's pc.
    f.gpe0_blk = u32::from(GPE0_BLK).into();
    f.gpe0_blk_len = GPE0_BLK_LEN;
    f.x_gpe0_blk = GAS::new(
        AddressSpace::SystemIo,
        GPE0_BLK_LEN * 8,
        0,
        AccessSize::ByteAccess,
        GPE0_BLK.into(),
    );
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    bytes_of(&f.finalize())
}

/// MCFG (`-M q35`): the ECAM region of segment 0, buses 0-255.
fn mcfg() -> Vec<u8> {
    use crate::pci::ecam::{PCIE_ECAM_END_BUS, PCIE_ECAM_START};
    let mut mcfg = MCFG::new(OEM_ID, *b"ACCELMCF", OEM_REVISION);
    mcfg.add_ecam(PCIE_ECAM_START, 0, 0, PCIE_ECAM_END_BUS);
    bytes_of(&mcfg)
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// Builds every table for `num_cpus` vCPUs, placed from [`RSDP_START`].
fn build(num_cpus: u8, platform: &PlatformConfig) -> Result<Vec<Placed>, AcpiError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(AcpiError::CpuCount(num_cpus));
    }
    let mut placed = Vec::new();
    let mut next = TABLES_START;
    let mut place = |bytes: Vec<u8>| {
        let gpa = next;
        next = align16(gpa + bytes.len() as u64);
        placed.push(Placed { gpa, bytes });
        gpa
    };

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        *b"ACCELDSD",
        OEM_REVISION,
    );
    dsdt.append_slice(&dsdt::aml(platform));
    let dsdt_addr = place(dsdt.as_slice().to_vec());
    let fadt_addr = place(fadt(dsdt_addr, FACS_START));
    let madt_addr = place(madt(num_cpus));
    let mcfg_addr = platform.pcie.then(|| place(mcfg()));
    let mut xsdt = XSDT::new(OEM_ID, *b"ACCELXSD", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Some(mcfg) = mcfg_addr {
        xsdt.add_entry(mcfg);
    }
    let xsdt_addr = place(bytes_of(&xsdt));
    if next > ACPI_LIMIT {
        return Err(AcpiError::TooBig {
            size: next - RSDP_START,
        });
    }
    placed.push(Placed {
        gpa: FACS_START,
        bytes: bytes_of(&FACS::new()),
    });
    placed.push(Placed {
        gpa: RSDP_START,
        bytes: bytes_of(&Rsdp::new(OEM_ID, xsdt_addr)),
    });
    Ok(placed)
}

/// Writes the ACPI tables for `num_cpus` vCPUs (APIC ids 0..num_cpus) and the platform
/// devices the guest finds through the DSDT, from [`RSDP_START`].
pub fn setup_acpi(
    mem: &GuestMemoryMmap<AtomicBitmap>,
    num_cpus: u8,
    platform: &PlatformConfig,
) -> Result<(), AcpiError> {
    let tables = build(num_cpus, platform)?;
    if !mem.check_range(GuestAddress(RSDP_START), (ACPI_LIMIT - RSDP_START) as usize) {
        return Err(AcpiError::NotInGuestMemory);
    }
    for t in &tables {
        mem.write_slice(&t.bytes, GuestAddress(t.gpa))
            .map_err(AcpiError::Write)?;
    }
    log::debug!(
        "ACPI: {num_cpus} CPU(s), RSDP at {RSDP_START:#x}, {} tables",
        tables.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests;
