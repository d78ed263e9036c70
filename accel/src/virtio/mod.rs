//! virtio-pci (modern, virtio 1.x) transport whose device model is a vhost-user backend.
//!
//! - [`common_cfg`]: the common configuration structure (features, status, queue setup).
//! - [`device`]: the PCI function (capabilities, BAR 0 layout, MSI-X, ioeventfd/irqfd wiring).
//! - [`backend`]: what the transport needs from a device model ([`backend::VirtioBackend`]).
//! - [`vhost_user`]: that device model as a vhost-user backend process.
//! - [`control`]: the per-device thread every backend round trip runs on (never a vCPU),
//!   and the config cache guest config reads are served from.
//! - [`frontend_queue`]: the thread watching the notify eventfd of the queue accel serves
//!   itself; [`net_ctrl`]: that queue for virtio-net (the control queue).
//! - [`monitor`]: backend hang-up handling (reconnect or NEEDS_RESET).
//! - [`setup`]: building the bus and devices from a [`VmConfig`](crate::config::VmConfig).

pub mod backend;
pub mod common_cfg;
pub mod control;
pub mod device;
pub mod frontend_queue;
pub mod monitor;
pub mod net_ctrl;
pub mod packed_ring;
pub mod setup;
pub mod vhost_user;

#[cfg(test)]
mod tests;

pub use setup::{PciSetup, SetupError, setup_pci_devices};
