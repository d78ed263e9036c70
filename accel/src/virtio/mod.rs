//! virtio-pci (modern, virtio 1.x) transport whose device model is a vhost-user backend.

pub mod common_cfg;
