//! In-process platform devices and the port/MMIO bus (stub).
