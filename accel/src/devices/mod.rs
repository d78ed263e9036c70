//! In-process platform devices and the port/MMIO bus they sit on.

pub mod acpi_pcihp;
pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod debug;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
