//! accel: a QEMU-compatible KVM accelerator whose virtio devices are vhost-user backends in
//! other processes.
//!
//! - [`cli`] turns a QEMU-style command line into a [`config::VmConfig`].
//! - [`vmm`] builds the VM (memfd RAM, KVM irqchip/PIT, vCPUs, direct Linux boot) and runs it.
//! - [`backends`] starts the vhost-user backends of QEMU's built-in device spellings.
//! - [`devices`] holds the in-process platform devices (8250, i8042, CMOS) and the I/O bus.

pub mod arch;
pub mod backends;
pub mod cli;
pub mod config;
pub mod devices;
pub mod loader;
pub mod pci;
pub mod qmp;
pub mod virtio;
pub mod vmm;
