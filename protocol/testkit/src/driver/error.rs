//! Errors of the userspace virtio driver.

use std::io;
use std::time::Duration;

/// What can go wrong while driving a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vhost-user session failed (see [`vu_frontend::Error::is_backend_gone`]).
    #[error(transparent)]
    Frontend(#[from] vu_frontend::Error),
    /// Creating or accessing the driver's memory failed.
    #[error("driver memory: {0}")]
    Memory(String),
    /// The allocator has no free range of this size and alignment.
    #[error("driver memory exhausted (need {len:#x} bytes aligned to {align:#x})")]
    OutOfMemory { len: u64, align: u64 },
    /// Not enough free descriptors for a chain.
    #[error("queue {queue} full: need {needed} descriptors, {free} free")]
    QueueFull {
        queue: usize,
        needed: usize,
        free: usize,
    },
    /// A queue index beyond the queues this driver set up.
    #[error("queue {index} does not exist ({num_queues} queues)")]
    QueueIndex { index: usize, num_queues: usize },
    /// A chain the driver refuses to build (empty, or with a bad relative `next`).
    #[error("invalid descriptor chain: {0}")]
    InvalidChain(&'static str),
    /// No completion arrived in time.
    #[error("no completion on queue {queue} within {timeout:?}")]
    Timeout { queue: usize, timeout: Duration },
    /// The device does not offer a feature the driver requires.
    #[error("device lacks required virtio features {missing:#x}")]
    MissingFeatures { missing: u64 },
    /// An event fd or poll(2) failure.
    #[error("event fd: {0}")]
    EventFd(#[source] io::Error),
    /// A device-specific request completed with a non-OK status.
    #[error("request failed with device status {status}")]
    DeviceStatus { status: u8 },
    /// A device-specific reply was malformed (e.g. too short).
    #[error("bad device reply: {0}")]
    BadReply(String),
}

impl Error {
    /// True when the vhost-user backend closed the connection or died.
    pub fn is_backend_gone(&self) -> bool {
        matches!(self, Error::Frontend(e) if e.is_backend_gone())
    }
}

impl From<vm_memory::GuestMemoryError> for Error {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        Error::Memory(e.to_string())
    }
}

/// Result of driver operations.
pub type Result<T> = std::result::Result<T, Error>;
