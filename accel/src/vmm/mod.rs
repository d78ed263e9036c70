//! The VM: memory, KVM, vCPUs, boot, run loop (owned by the VMM work; stub).
use crate::config::VmConfig;

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest reset with `-no-reboot`, or a guest shutdown: exit status 0.
    Shutdown,
    /// SIGINT/SIGTERM: clean teardown.
    Signal(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0}")]
    Other(String),
}

pub fn run(_config: VmConfig) -> Result<ExitReason, VmmError> {
    Err(VmmError::Other("not implemented".into()))
}
