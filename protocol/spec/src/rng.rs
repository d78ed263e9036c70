//! virtio-rng / entropy device (virtio 1.2 §5.4): one request queue, no config space, no
//! device-specific features. The driver posts device-writable buffers; the device fills each
//! with up to its length of random bytes and reports how many in the used length.

pub use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

/// The request queue.
pub const RNG_QUEUE: usize = 0;
/// Number of queues of an entropy device.
pub const RNG_NUM_QUEUES: usize = 1;
