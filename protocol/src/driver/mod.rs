//! Userspace virtio driver.
