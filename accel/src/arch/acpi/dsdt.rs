//! The DSDT's AML: the PCI host bridge with the resources accel decodes, and `\_S5`.
//!
//! ```text
//! Name (\_S5, Package () { S5_SLP_TYP, S5_SLP_TYP, 0, 0 })
//! Scope (\_SB) {
//!   Device (PCI0) {
//!     Name (_HID, EisaId ("PNP0A03"))  Name (_ADR, 0)  Name (_SEG, 0)  Name (_UID, 0)
//!     (q35: Name (_HID, EisaId ("PNP0A08")) Name (_CID, EisaId ("PNP0A03")): PCI Express)
//!     Name (_CRS, ResourceTemplate () {
//!       WordBusNumber  0x00-0xFF                     buses behind bridges (and ECAM's)
//!       IO             0x0CF8, 8 ports               configuration mechanism #1
//!       WordIO         0x0000-0x0CF7, 0x0D00-0xFFFF  forwarded I/O (as QEMU's pc)
//!       DWordMemory    0xC0000000-0xDFFFFFFF         the 32-bit window BARs come from
//!     })
//!   }
//!   Device (PCI0.MRES) { q35: _HID PNP0C02, _CRS Memory32Fixed (the ECAM region) }
//!   PCI0._OSC: q35 only, grants the OS native PCIe hot-plug (see [`super::osc`])
//! }
//! ```
//!
//! On q35 the ECAM region (MCFG table) is reserved as a motherboard resource, which is where
//! Linux looks before it uses MMCONFIG ("MMCONFIG at ... reserved as ACPI motherboard
//! resource").
//!
//! With `-device pvpanic`, `\_SB.PEVT` (`_HID` QEMU0001, `_CRS` its one I/O port, `_STA`
//! present) is where Linux's pvpanic driver finds the port, as on QEMU's pc.
//!
//! There is no power-button device: the power button is ACPI's fixed-feature button (FADT
//! PWR_BUTTON flag clear, PWRBTN_STS in PM1a), which is what QEMU's pc does too, so no GPE, no
//! `Notify` and no `PNP0C0C` object are needed. There is no `_PRT`: accel's PCI functions have
//! no INTx pin (MSI-X only).
//!
//! PCI0 also holds the ACPI PCI hotplug slots and `\\_GPE._E01` (see [`super::pcihp`]).

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Memory32Fixed, Name, Package, Path,
    ResourceTemplate, Scope, ZERO,
};

use crate::config::PlatformConfig;
use crate::devices::acpi_pm::S5_SLP_TYP;
use crate::pci::ecam::{PCIE_ECAM_END_BUS, PCIE_ECAM_SIZE, PCIE_ECAM_START};
use crate::pci::{
    PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PCI_MMIO_WINDOW_END, PCI_MMIO_WINDOW_START,
};

/// The DSDT's definition block (the AML after the table header).
pub(super) fn aml(platform: &PlatformConfig) -> Vec<u8> {
    let mut out = Vec::new();

    let s5 = S5_SLP_TYP as u8;
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&s5, &s5, &ZERO, &ZERO]),
    )
    .to_aml_bytes(&mut out);

    let config_base = PCI_CONFIG_IO_BASE as u16;
    let bus = AddressSpace::<u16>::new_bus_number(0, u16::from(PCIE_ECAM_END_BUS));
    let config_ports = IO::new(config_base, config_base, 1, PCI_CONFIG_IO_LEN as u8);
    let io_low = AddressSpace::<u16>::new_io(0, config_base - 1, None);
    let io_high = AddressSpace::<u16>::new_io(config_base + 8, 0xffff, None);
    // Both ends are below 4 GiB (the window ends at the IOAPIC).
    let mmio = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_WINDOW_START as u32,
        (PCI_MMIO_WINDOW_END - 1) as u32,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &config_ports, &io_low, &io_high, &mmio]);
    let hid = EISAName::new(if platform.pcie { "PNP0A08" } else { "PNP0A03" });
    let cid = EISAName::new("PNP0A03");
    let mut names = vec![
        Name::new(Path::new("_HID"), &hid),
        Name::new(Path::new("_ADR"), &ZERO),
        Name::new(Path::new("_SEG"), &ZERO),
        Name::new(Path::new("_UID"), &ZERO),
        Name::new(Path::new("_CRS"), &crs),
    ];
    if platform.pcie {
        names.insert(1, Name::new(Path::new("_CID"), &cid));
    }
    let ecam = Memory32Fixed::new(true, PCIE_ECAM_START as u32, PCIE_ECAM_SIZE as u32);
    let mres_crs = ResourceTemplate::new(vec![&ecam]);
    let mres_hid = EISAName::new("PNP0C02");
    let mres_names = [
        Name::new(Path::new("_HID"), &mres_hid),
        Name::new(Path::new("_UID"), &1u8),
        Name::new(Path::new("_CRS"), &mres_crs),
    ];
    let mres = Device::new(
        Path::new("MRES"),
        mres_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    let osc = super::pcihp::Raw(super::osc::method());
    let mut children: Vec<&dyn Aml> = names.iter().map(|n| n as &dyn Aml).collect();
    if platform.pcie {
        children.push(&mres);
        children.push(&osc);
    }
    let hotplug = super::pcihp::pci0_children();
    children.extend(hotplug.iter().map(|h| h as &dyn Aml));
    let pci0 = Device::new(Path::new("PCI0"), children);
    let mut sb: Vec<&dyn Aml> = vec![&pci0];
    // `Device (PEVT) { _HID "QEMU0001", _CRS IO (port, 1), _STA 0x0F }`.
    let port = platform.pvpanic.unwrap_or_default();
    let pevt_port = IO::new(port, port, 1, 1);
    let pevt_crs = ResourceTemplate::new(vec![&pevt_port]);
    let present: u8 = 0x0f;
    let pevt_names = [
        Name::new(Path::new("_HID"), &"QEMU0001"),
        Name::new(Path::new("_CRS"), &pevt_crs),
        Name::new(Path::new("_STA"), &present),
    ];
    let pevt = Device::new(
        Path::new("PEVT"),
        pevt_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    if platform.pvpanic.is_some() {
        sb.push(&pevt);
    }
    Scope::new(Path::new("\\_SB_"), sb).to_aml_bytes(&mut out);
    out.extend(super::pcihp::gpe_scope());
    out
}
