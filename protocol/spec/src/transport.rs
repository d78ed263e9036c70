//! Device-independent feature bits (virtio 1.2 §6), as virtio-bindings numbers them, and the
//! mask helper every feature word needs.

pub use virtio_bindings::virtio_config::{
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_NOTIFICATION_DATA, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
};
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The mask of feature bit `bit` (virtio-bindings numbers features, feature words mask them).
pub const fn bit(bit: u32) -> u64 {
    1 << bit
}
