//! In-process platform devices and the port/MMIO bus they sit on.

pub mod bus;
