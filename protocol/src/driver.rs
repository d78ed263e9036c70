//! Userspace virtio driver (stub).
