//! How devices and vCPUs ask the main thread to reset or end the VM.
//!
//! A [`VmControl`] is shared (`Arc`) by the main thread, vCPU threads and devices. Requests set
//! `stop` (which every vCPU checks after each exit, so no guest instruction runs after a reset
//! request is seen) and wake the main thread through an eventfd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// What the main thread is asked to do.
#[derive(Clone, Debug)]
pub enum VmRequest {
    /// Guest reset (i8042 0xFE, ...): reboot, or exit 0 with `-no-reboot`.
    Reset,
    /// Guest powered off: exit 0.
    Shutdown,
    /// pvpanic: the guest panicked (`GUEST_PANICKED`, then poweroff or with `-no-shutdown`
    /// a stop).
    Panicked,
    /// pvpanic: the guest panicked and handles it itself (`GUEST_CRASHLOADED`; runs on).
    CrashLoaded,
    /// A vCPU hit a fatal state (already dumped to stderr): exit non-zero with this error.
    Fatal(Arc<VcpuFault>),
    /// `isa-debug-exit`: end the process at once with this status, as QEMU does.
    Exit(i32),
}

/// Why a vCPU ended the VM (QEMU's `internal-error` run state).
#[derive(Debug, thiserror::Error)]
pub enum VcpuFault {
    /// The guest reached a state KVM cannot run (its registers are dumped to stderr).
    #[error("vCPU {vcpu}: {exit}")]
    Exit { vcpu: usize, exit: FatalExit },
    #[error("vCPU {vcpu}: cannot narrow its system calls: {source}")]
    Confine {
        vcpu: usize,
        #[source]
        source: vu_sandbox::SandboxError,
    },
    #[error("a vCPU thread panicked")]
    Panicked,
}

/// A `KVM_RUN` outcome that ends the VM.
#[derive(Debug, thiserror::Error)]
pub enum FatalExit {
    #[error("triple fault (KVM_EXIT_SHUTDOWN)")]
    TripleFault,
    #[error("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}")]
    FailEntry { reason: u64, cpu: u32 },
    #[error("KVM_EXIT_INTERNAL_ERROR")]
    InternalError,
    #[error("unexpected exit (KVM exit reason {0})")]
    Unexpected(u32),
    #[error("KVM_RUN failed: {0}")]
    Run(#[source] kvm_ioctls::Error),
}

impl VmRequest {
    /// A fatal request for `fault`.
    pub fn fatal(fault: VcpuFault) -> Self {
        VmRequest::Fatal(Arc::new(fault))
    }
}

pub struct VmControl {
    stop: AtomicBool,
    /// Readable when a request is pending.
    pub request_evt: EventFd,
    pending: Mutex<Option<VmRequest>>,
}

#[derive(Debug, thiserror::Error)]
#[error("creating control eventfd: {0}")]
pub struct ControlError(#[from] std::io::Error);

impl VmControl {
    pub fn new() -> Result<Self, ControlError> {
        Ok(VmControl {
            stop: AtomicBool::new(false),
            request_evt: EventFd::new(EFD_NONBLOCK)?,
            pending: Mutex::new(None),
        })
    }

    /// vCPU hot path: should this vCPU leave its run loop?
    #[inline]
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks every vCPU to stop (they still need a kick if inside KVM_RUN).
    pub fn set_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Clears the stop flag before vCPUs run again (after a reboot).
    pub fn clear_stop(&self) {
        self.stop.store(false, Ordering::Release);
    }

    /// Posts a request; the first one wins (a fatal error replaces a pending reset).
    pub fn request(&self, req: VmRequest) {
        self.set_stop();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match (&*p, &req) {
            (None, _) | (Some(VmRequest::Reset), VmRequest::Fatal(_)) => *p = Some(req),
            _ => {}
        }
        drop(p);
        if let Err(e) = self.request_evt.write(1) {
            log::error!("waking the main thread: {e}");
        }
    }

    /// Takes the pending request, if any (main thread).
    pub fn take(&self) -> Option<VmRequest> {
        let _ = self.request_evt.read();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The reset line a device pulls (the i8042's CPU reset): posts [`VmRequest::Reset`].
pub struct ResetLine(pub std::sync::Arc<VmControl>);

impl vm_superio::Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(VmRequest::Reset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins_but_fatal_overrides_reset() {
        let c = VmControl::new().unwrap();
        assert!(!c.should_stop());
        assert!(c.take().is_none());
        c.request(VmRequest::Reset);
        assert!(c.should_stop());
        c.request(VmRequest::Shutdown);
        assert!(matches!(c.take(), Some(VmRequest::Reset)));
        c.request(VmRequest::Reset);
        c.request(VmRequest::fatal(VcpuFault::Panicked));
        assert!(matches!(
            c.take().as_ref(),
            Some(VmRequest::Fatal(f)) if matches!(**f, VcpuFault::Panicked)
        ));
        c.clear_stop();
        assert!(!c.should_stop());
    }

    #[test]
    fn reset_line_requests_a_reset_and_stops_the_vcpus() {
        use vm_superio::Trigger;
        let c = std::sync::Arc::new(VmControl::new().unwrap());
        ResetLine(c.clone()).trigger().unwrap();
        assert!(c.should_stop());
        assert!(matches!(c.take(), Some(VmRequest::Reset)));
    }
}
