//! The device model of a virtio-pci function: a vhost-user backend process, driven through
//! [`vu_frontend::FrontendSession`].

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vu_frontend::VringGeometry;
use vu_frontend::{Error as FrontendError, FrontendOptions, FrontendSession, SharedMemory};

use super::backend::{ActiveQueue, BackendError, VirtioBackend};

/// How long the handshake at VM start may wait for the backend's replies. Once the VM runs
/// there is no reply timeout: requests run on the device's control thread, which waits for a
/// stopped backend instead of declaring it dead (a backend that really dies hangs up, and the
/// monitor sees that).
pub const CONNECT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A vhost-user backend as a [`VirtioBackend`].
pub struct VhostUserBackend<M> {
    session: FrontendSession,
    memory: M,
    /// Device features the guest may see (the backend's, masked) and ones the frontend adds
    /// because it implements them itself (e.g. a net MAC in [`Self::set_local_config`]).
    feature_mask: u64,
    feature_add: u64,
    /// Config space served by the frontend instead of GET_CONFIG (net: MAC, status).
    local_config: Option<Vec<u8>>,
    /// Bytes of the backend's config space the frontend overrides (blk: num_queues).
    config_patches: Vec<(u32, Vec<u8>)>,
}

impl<M: SharedMemory + Clone + 'static> VhostUserBackend<M> {
    /// Connects to the backend at `socket` (retrying for `connect_timeout` while it does not
    /// exist yet) and negotiates for up to `max_queues` queues.
    pub fn connect(
        socket: &Path,
        max_queues: usize,
        connect_timeout: Duration,
        memory: M,
    ) -> Result<Self, FrontendError> {
        let opts = FrontendOptions {
            max_queues,
            reply_timeout: Some(CONNECT_REPLY_TIMEOUT),
            ..FrontendOptions::default()
        };
        let mut session = FrontendSession::connect_with(socket, connect_timeout, opts)?;
        session.set_reply_timeout(None);
        Ok(VhostUserBackend {
            session,
            memory,
            feature_mask: u64::MAX,
            feature_add: 0,
            local_config: None,
            config_patches: Vec::new(),
        })
    }

    /// Offers the guest `(backend features & mask) | add`.
    pub fn set_feature_policy(&mut self, mask: u64, add: u64) {
        self.feature_mask = mask;
        self.feature_add = add;
    }

    /// Serves device config space from `bytes` (guest writes are ignored).
    pub fn set_local_config(&mut self, bytes: Vec<u8>) {
        self.local_config = Some(bytes);
    }

    /// Overrides config bytes at `offset` in what the backend reports.
    pub fn patch_config(&mut self, offset: u32, bytes: Vec<u8>) {
        self.config_patches.push((offset, bytes));
    }

    /// Features the backend itself offers (virtio bits).
    pub fn backend_features(&self) -> u64 {
        self.session.device_features()
    }

    /// Queues the backend can serve.
    pub fn num_queues(&self) -> usize {
        self.session.num_queues()
    }

    /// The connection's fd, to watch for hang-ups.
    pub fn socket_fd(&mut self) -> i32 {
        self.session.raw_frontend().as_raw_fd()
    }

    pub fn is_connected(&self) -> bool {
        self.session.is_connected()
    }

    /// Reconnects and restores negotiated state and running rings.
    pub fn reconnect(&mut self, timeout: Duration) -> Result<(), FrontendError> {
        self.session.reconnect(timeout)
    }

    pub fn socket_path(&self) -> &Path {
        self.session.socket_path()
    }
}

impl<M: SharedMemory + Clone + 'static> VirtioBackend for VhostUserBackend<M> {
    fn device_features(&self) -> u64 {
        (self.session.device_features() & self.feature_mask) | self.feature_add
    }

    fn fetch_config(&mut self, size: u32) -> Result<Vec<u8>, BackendError> {
        let mut data = match &self.local_config {
            Some(local) => local.clone(),
            None => self.session.get_config(0, size)?,
        };
        data.resize(size as usize, 0);
        if self.local_config.is_none() {
            for (poff, pbytes) in &self.config_patches {
                for (j, &b) in pbytes.iter().enumerate() {
                    if let Some(d) = data.get_mut(*poff as usize + j) {
                        *d = b;
                    }
                }
            }
        }
        Ok(data)
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError> {
        if self.local_config.is_some() {
            return Ok(());
        }
        self.session
            .set_config(offset, data)
            .map_err(BackendError::from)
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[ActiveQueue<'_>],
        resume: bool,
    ) -> Result<(), BackendError> {
        // Features the frontend implements itself are not the backend's business.
        let for_backend = features & (self.session.device_features() | !self.feature_add);
        self.session.set_features(for_backend)?;
        self.session.set_mem_table(&self.memory)?;
        for q in queues {
            let geometry = VringGeometry {
                size: q.size,
                desc: GuestAddress(q.desc),
                avail: GuestAddress(q.driver),
                used: GuestAddress(q.device),
            };
            let i = usize::from(q.index);
            // A resumed activation may follow a backend that processed part of the ring:
            // start where the used ring says (0 for a ring nobody served yet).
            let base = if resume {
                self.memory
                    .load_u16(GuestAddress(q.device + 2))
                    .unwrap_or_default()
            } else {
                0
            };
            self.session
                .setup_vring(i, geometry, base, q.call, q.kick)?;
            self.session.enable_vring(i, true)?;
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        self.session.reset().map_err(BackendError::from)
    }

    fn set_queue_call(&mut self, index: u16, call: &EventFd) -> Result<(), BackendError> {
        self.session
            .set_vring_call(usize::from(index), call)
            .map_err(BackendError::from)
    }
}
