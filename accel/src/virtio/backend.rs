//! What the virtio-pci transport needs from a device model, whatever process it lives in.
//!
//! The transport never calls these from a vCPU thread: a device model may be another process
//! that stops answering, so every call goes through the device's control thread
//! ([`super::control`]), and guest config reads are served from a cache.

use vmm_sys_util::eventfd::EventFd;

/// A queue the driver enabled, handed to the device model at DRIVER_OK.
#[derive(Debug)]
pub struct ActiveQueue<'a> {
    pub index: u16,
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, driver (avail) and device (used) rings.
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    /// Signalled by the guest's notify write (a KVM ioeventfd).
    pub kick: &'a EventFd,
    /// Signalling it raises the queue's MSI-X vector (a KVM irqfd).
    pub call: &'a EventFd,
}

/// Why a device model request failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device model's process is gone (hung up): the request can be replayed once it is
    /// back.
    #[error(transparent)]
    Gone(vu_frontend::Error),
    /// The device model refused or failed the request.
    #[error(transparent)]
    Failed(vu_frontend::Error),
}

impl From<vu_frontend::Error> for BackendError {
    fn from(e: vu_frontend::Error) -> Self {
        if e.is_backend_gone() {
            BackendError::Gone(e)
        } else {
            BackendError::Failed(e)
        }
    }
}

/// A virtio device model as the transport drives it.
pub trait VirtioBackend: Send {
    /// Virtio feature bits the device offers (before the transport's mask).
    fn device_features(&self) -> u64;
    /// Reads the whole device-specific configuration space (`size` bytes; shorter answers
    /// are padded with zeros by the caller).
    fn fetch_config(&mut self, size: u32) -> Result<Vec<u8>, BackendError>;
    /// Writes device-specific configuration space.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError>;
    /// DRIVER_OK: start processing `queues` with the negotiated `features`. `resume`: this
    /// activation is retried after the device model came back (it may have run part of it
    /// before it went away): rings start where the used rings say, not at 0.
    fn activate(
        &mut self,
        features: u64,
        queues: &[ActiveQueue<'_>],
        resume: bool,
    ) -> Result<(), BackendError>;
    /// Device reset: stop every queue, forget negotiated state.
    fn reset(&mut self) -> Result<(), BackendError>;
    /// The guest moved a running queue to another vector.
    fn set_queue_call(&mut self, index: u16, call: &EventFd) -> Result<(), BackendError>;
}
