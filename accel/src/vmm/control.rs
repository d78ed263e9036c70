//! How devices and vCPUs ask the main thread to reset or end the VM.
//!
//! A [`VmControl`] is shared (`Arc`) by the main thread, vCPU threads and devices. Requests set
//! `stop` (which every vCPU checks after each exit, so no guest instruction runs after a reset
//! request is seen) and wake the main thread through an eventfd.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// What the main thread is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// A vCPU hit a fatal state (already dumped to stderr): exit non-zero with this message.
    Fatal(String),
    /// `isa-debug-exit`: end the process at once with this status, as QEMU does.
    Exit(i32),
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
        assert_eq!(c.take(), None);
        c.request(VmRequest::Reset);
        assert!(c.should_stop());
        c.request(VmRequest::Shutdown);
        assert_eq!(c.take(), Some(VmRequest::Reset));
        c.request(VmRequest::Reset);
        c.request(VmRequest::Fatal("x".into()));
        assert_eq!(c.take(), Some(VmRequest::Fatal("x".into())));
        c.clear_stop();
        assert!(!c.should_stop());
    }

    #[test]
    fn reset_line_requests_a_reset_and_stops_the_vcpus() {
        use vm_superio::Trigger;
        let c = std::sync::Arc::new(VmControl::new().unwrap());
        ResetLine(c.clone()).trigger().unwrap();
        assert!(c.should_stop());
        assert_eq!(c.take(), Some(VmRequest::Reset));
    }
}
