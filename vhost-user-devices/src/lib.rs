//! vhost-user backend devices: standalone processes serving one virtio device each to a
//! vhost-user frontend (accel, QEMU). Shared plumbing lives in `vu_daemon`.

pub mod blk;
pub mod chain;
pub mod console;
pub mod net;
pub mod rng;
pub mod vsock;
