//! The device model of a virtio-pci function: a vhost-user backend process, driven through
//! [`vu_frontend::FrontendSession`].

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vu_frontend::VringGeometry;
use vu_frontend::{Error as FrontendError, FrontendOptions, FrontendSession, SharedMemory};

use super::backend::{ActiveQueue, BackendError, Served, VirtioBackend};
use super::net_ctrl::{NetControl, STATUS_ERR, STATUS_OK};
use vu_spec::net::CONTROL_QUEUE_FEATURES;

use super::device::F_RING_PACKED;

/// SET_VRING_BASE of a fresh packed ring: avail index 0, wrap counter 1 (bit 15).
const PACKED_RING_START: u16 = 1 << 15;

/// Guest memory a vhost-user device can share with its backend and read itself (the queue the
/// frontend serves).
pub trait GuestRam: SharedMemory + GuestMemoryBackend + Clone + 'static {}
impl<T: SharedMemory + GuestMemoryBackend + Clone + 'static> GuestRam for T {}

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
    /// net: the control queue, served here; the backend gets the data queues only.
    control: Option<NetControl>,
    /// Data rings set up at the backend in this device life.
    rings: Vec<u16>,
    /// Whether the backend's ring enables match the control queue's pair count (false after
    /// a request failed because the backend was gone).
    pairs_synced: bool,
}

/// Session options during negotiation (replies bounded by [`CONNECT_REPLY_TIMEOUT`]).
fn options(max_queues: usize) -> FrontendOptions {
    FrontendOptions {
        max_queues,
        reply_timeout: Some(CONNECT_REPLY_TIMEOUT),
        ..FrontendOptions::default()
    }
}

impl<M: GuestRam> VhostUserBackend<M> {
    /// Connects to the backend at `socket` (retrying for `connect_timeout` while it does not
    /// exist yet) and negotiates for up to `max_queues` queues.
    pub fn connect(
        socket: &Path,
        max_queues: usize,
        connect_timeout: Duration,
        memory: M,
    ) -> Result<Self, FrontendError> {
        let session = FrontendSession::connect_with(socket, connect_timeout, options(max_queues))?;
        Ok(Self::new(session, memory))
    }

    /// Negotiates for up to `max_queues` queues with a backend that connected to accel's
    /// listening socket `name` (`-chardev socket,server=on`).
    pub fn from_stream(
        stream: UnixStream,
        name: &Path,
        max_queues: usize,
        memory: M,
    ) -> Result<Self, FrontendError> {
        let session = FrontendSession::from_stream(stream, name, options(max_queues))?;
        Ok(Self::new(session, memory))
    }

    fn new(mut session: FrontendSession, memory: M) -> Self {
        session.set_reply_timeout(None);
        VhostUserBackend {
            session,
            memory,
            feature_mask: u64::MAX,
            feature_add: 0,
            local_config: None,
            config_patches: Vec::new(),
            control: None,
            rings: Vec::new(),
            pairs_synced: true,
        }
    }

    /// Serves virtio-net's control queue here, for a device of `pairs` queue pairs.
    pub fn serve_control_queue(&mut self, pairs: u16) {
        self.control = Some(NetControl::new(pairs));
    }

    /// Enables the data rings of the pairs the driver uses and disables the others
    /// (QEMU: `vhost_set_vring_enable` per pair).
    fn sync_pairs(&mut self, pairs: u16) -> Result<(), BackendError> {
        self.pairs_synced = false;
        for &i in &self.rings {
            self.session.enable_vring(usize::from(i), i / 2 < pairs)?;
        }
        self.pairs_synced = true;
        Ok(())
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

    /// [`reconnect`](Self::reconnect) to a backend that connected to accel's listening socket.
    pub fn reconnect_stream(&mut self, stream: UnixStream) -> Result<(), FrontendError> {
        self.session.reconnect_stream(stream)
    }

    pub fn socket_path(&self) -> &Path {
        self.session.socket_path()
    }
}

impl<M: GuestRam> VirtioBackend for VhostUserBackend<M> {
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
        // So are the control queue's bits (QEMU never acks them to a vhost-user-net backend).
        let for_backend = features
            & (self.session.device_features() | !self.feature_add)
            & !self.control.as_ref().map_or(0, |_| CONTROL_QUEUE_FEATURES);
        self.session.set_features(for_backend)?;
        self.session.set_mem_table(&self.memory)?;
        self.rings.clear();
        let control_index = self.control.as_ref().map(|c| c.index(features));
        for q in queues {
            if Some(q.index) == control_index {
                if let Some(c) = &mut self.control {
                    c.start(&self.memory, features, q, resume)?;
                }
                continue;
            }
            let geometry = VringGeometry {
                size: q.size,
                desc: GuestAddress(q.desc),
                avail: GuestAddress(q.driver),
                used: GuestAddress(q.device),
            };
            let i = usize::from(q.index);
            // A resumed activation may follow a backend that processed part of the ring:
            // start where the used ring says (0 for a ring nobody served yet). A packed
            // ring starts at index 0 with the wrap counter (bit 15) set, as QEMU sends it;
            // its position is not in guest memory, so a retried activation starts afresh.
            let base = if features & F_RING_PACKED != 0 {
                PACKED_RING_START
            } else if resume {
                self.memory
                    .load_u16(GuestAddress(q.device + 2))
                    .unwrap_or_default()
            } else {
                0
            };
            self.session
                .setup_vring(i, geometry, base, q.call, q.kick)?;
            // With a control queue only the pairs the driver uses (pair 0 after a reset).
            let enable = self
                .control
                .as_ref()
                .is_none_or(|c| q.index / 2 < c.pairs());
            self.session.enable_vring(i, enable)?;
            self.rings.push(q.index);
        }
        self.pairs_synced = true;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        if let Some(c) = &mut self.control {
            c.reset();
        }
        self.rings.clear();
        self.pairs_synced = true;
        self.session.reset().map_err(BackendError::from)
    }

    fn serve_frontend_queue(&mut self) -> Result<Served, BackendError> {
        let Some(mut control) = self.control.take() else {
            return Ok(Served::default());
        };
        let mut backend_error = None;
        if !self.pairs_synced {
            // A reconnect restored the enables of before the request that failed.
            if let Err(e) = self.sync_pairs(control.pairs()) {
                backend_error = Some(e);
            }
        }
        // Answered once the backend has the new enables (QEMU: the same, synchronously).
        let memory = self.memory.clone();
        let served = control.serve(&memory, |pairs| match self.sync_pairs(pairs) {
            Ok(()) => STATUS_OK,
            Err(e) => {
                let status = if matches!(e, BackendError::Gone(_)) {
                    STATUS_OK
                } else {
                    STATUS_ERR
                };
                backend_error = Some(e);
                status
            }
        });
        self.control = Some(control);
        let served = served?;
        match backend_error {
            // The answer stays OK: the reconnect applies the pair count (the request is
            // served again then).
            Some(e @ BackendError::Gone(_)) => Err(e),
            Some(e) => {
                log::debug!("control queue: enabling queue pairs: {e}");
                Ok(served)
            }
            None => Ok(served),
        }
    }

    fn set_queue_call(&mut self, index: u16, call: &EventFd) -> Result<(), BackendError> {
        if !self.rings.contains(&index)
            && let Some(c) = &mut self.control
        {
            let dup = call
                .try_clone()
                .map_err(|e| BackendError::Failed(FrontendError::EventFd(e)))?;
            c.set_call(dup);
            return Ok(());
        }
        self.session
            .set_vring_call(usize::from(index), call)
            .map_err(BackendError::from)
    }
}
