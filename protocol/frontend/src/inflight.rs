//! In-flight tracking from the frontend's side (`INFLIGHT_SHMFD`), as QEMU's vhost-user-blk
//! does it: before the first ring starts, GET_INFLIGHT_FD asks the backend for a shared
//! buffer and SET_INFLIGHT_FD gives it back; the session keeps the file for the life of the
//! device and hands it to every reconnected backend before its rings, so the new backend can
//! resubmit what the dead one had taken but not completed. A device reset drops it (the next
//! start gets a fresh one). The frontend never reads the buffer.

use std::fs::File;
use std::os::fd::AsRawFd;

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};

use super::{FrontendSession, Result};

/// The buffer the backend handed out, as the session keeps it.
pub(super) struct InflightBuffer {
    pub(super) desc: VhostUserInflight,
    pub(super) file: File,
}

impl FrontendSession {
    fn inflight_negotiated(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// Before a ring of `queue_size` entries starts: get and set the buffer once per device
    /// life (all queues, this size). A backend that refuses leaves the device untracked.
    pub(super) fn ensure_inflight(&mut self, queue_size: u16) -> Result<()> {
        if !self.inflight_negotiated() || self.inflight.is_some() {
            return Ok(());
        }
        let ask = VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues: u16::try_from(self.num_queues).unwrap_or(u16::MAX),
            queue_size,
        };
        let (desc, file) = match self.call("GET_INFLIGHT_FD", |fe| fe.get_inflight_fd(&ask)) {
            Ok(got) => got,
            Err(e) if e.is_backend_gone() => return Err(e),
            Err(e) => {
                log::warn!("{}: no in-flight tracking: {e}", self.path.display());
                return Ok(());
            }
        };
        self.inflight = Some(InflightBuffer { desc, file });
        self.send_inflight()
    }

    /// SET_INFLIGHT_FD with the buffer the session holds (none: nothing to send).
    pub(super) fn send_inflight(&mut self) -> Result<()> {
        if !self.inflight_negotiated() {
            return Ok(());
        }
        let Some(buf) = &self.inflight else {
            return Ok(());
        };
        let (desc, fd) = (buf.desc, buf.file.as_raw_fd());
        match self.call("SET_INFLIGHT_FD", |fe| fe.set_inflight_fd(&desc, fd)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_backend_gone() => Err(e),
            Err(e) => {
                log::warn!("{}: in-flight buffer refused: {e}", self.path.display());
                Ok(())
            }
        }
    }

    /// The in-flight buffer's description (size, queues, queue size), if the backend gave one.
    pub fn inflight_buffer(&self) -> Option<VhostUserInflight> {
        self.inflight.as_ref().map(|b| b.desc)
    }
}
