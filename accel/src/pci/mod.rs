//! Conventional PCI for accel: configuration space, the host bridge and its legacy
//! configuration ports (0xCF8/0xCFC), BAR allocation and mapping, MSI-X.
//!
//! - [`config`]: one function's 256-byte configuration space (masks, BARs, capabilities).
//! - [`msix`]: MSI-X table / PBA state.
//! - [`root`]: the buses with the host bridge on bus 0, config-port decoding (routed by bus
//!   number through bridges), and BAR placement on the MMIO/PIO
//!   [`Bus`](crate::devices::bus::Bus)es.
//! - [`bridge`]: PCI-to-PCI bridges (PCIe root port, PCI bridge, PCIe-to-PCI bridge).
//! - [`pcie_slot`]: PCIe native hot-plug on a root port's slot; [`msi`]: its MSI capability.
//! - [`ecam`]: PCIe enhanced configuration access (MMCONFIG) on `-M q35`.
//! - [`topology`]: what firmware does before the OS: bus numbers, bridge windows, BARs.

pub mod bridge;
pub mod config;
pub mod ecam;
pub mod interrupts;
pub mod msi;
pub mod msix;
pub mod pcie_slot;
pub mod root;
pub mod topology;

pub use config::{BarInfo, BarKind, ClassCode, PciConfig, PciHeader};
pub use interrupts::{InterruptError, InterruptRouter, KvmInterruptRouter};
pub use msix::{MsiMessage, Msix, MsixChange};
pub use root::{PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciConfigIo, PciRoot};

/// Start of the 32-bit PCI MMIO window (kept out of RAM and e820 by the VMM).
pub const PCI_MMIO_WINDOW_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit PCI MMIO window: the PCIe ECAM region follows (on `-M pc`
/// the range up to the IOAPIC stays unused, so both machines place BARs alike).
pub const PCI_MMIO_WINDOW_END: u64 = ecam::PCIE_ECAM_START;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("BAR {0} cannot be declared there")]
    InvalidBar(usize),
    #[error("BAR size {0:#x} is not a valid power of two for its kind")]
    InvalidBarSize(u64),
    #[error("malformed PCI capability")]
    InvalidCapability,
    #[error("no room left for capabilities in configuration space")]
    CapabilitySpaceFull,
    #[error("PCI slot {0} is already used or out of range")]
    SlotUnavailable(u8),
    #[error("no free PCI slot on the bus")]
    NoFreeSlot,
    #[error("no PCI bus with index {0}")]
    NoSuchBus(usize),
    #[error("no PCI bridge with id '{0}'")]
    UnknownBus(String),
    #[error("more than 255 PCI buses")]
    TooManyBuses,
    #[error("out of PCI MMIO space for a {0:#x}-byte BAR")]
    OutOfMmioSpace(u64),
    #[error("PCI address allocator: {0}")]
    Allocator(String),
    #[error("mapping BAR on the bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
}

/// A PCI function (function 0 of a slot on bus 0).
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &PciConfig;

    /// Guest read of 32-bit configuration register `reg`.
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config().read_reg(reg)
    }

    /// Guest write at byte `offset` of register `reg`. Devices with registers that have side
    /// effects (MSI-X control) intercept them here.
    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]);

    /// Guest read at `offset` inside BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// Guest write at `offset` inside BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// BAR `bar` now decodes at `addr` (`None`: not decoded). Called after the bus moved it,
    /// so the device can move what it registered elsewhere (ioeventfds).
    fn bar_mapped(&mut self, _bar: usize, _addr: Option<u64>) {}

    /// Platform reset (guest reboot): back to power-on state, except BAR addresses, which
    /// stay where the VMM (acting as firmware) placed them.
    fn reset(&mut self) {}
}
