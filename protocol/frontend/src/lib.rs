//! The vhost-user frontend session: one connection to a backend process, with everything
//! needed to negotiate, share guest memory, run vrings, and restore them after the backend
//! restarts.
//!
//! Used by the VMM (`accel`, whose virtio-pci transports forward the guest's choices here) and
//! by the userspace driver (in `vu-testkit`) (tests, benchmarks). Typical life cycle:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use vu_frontend::{FrontendSession, VringGeometry};
//! # use vm_memory::GuestAddress;
//! # fn demo(mem: &vm_memory::GuestMemoryMmap, call: &vmm_sys_util::eventfd::EventFd,
//! #         kick: &vmm_sys_util::eventfd::EventFd) -> vu_frontend::Result<()> {
//! let mut s = FrontendSession::connect("/tmp/blk.sock", Duration::from_secs(5))?;
//! let offered = s.device_features();          // show these to the guest
//! s.set_features(offered)?;                    // what the guest acked
//! s.set_mem_table(mem)?;                       // memfd-backed guest RAM
//! let ring = VringGeometry {
//!     size: 256,
//!     desc: GuestAddress(0x10000),
//!     avail: GuestAddress(0x11000),
//!     used: GuestAddress(0x12000),
//! };
//! s.setup_vring(0, ring, 0, call, kick)?;      // NUM, BASE, ADDR, CALL, KICK
//! s.enable_vring(0, true)?;
//! // ... the backend dies and comes back:
//! s.reconnect(Duration::from_secs(5))?;        // replays features, memory, vrings
//! # Ok(()) }
//! ```
//!
//! Every request is sent with NEED_REPLY once REPLY_ACK is negotiated, so when a call returns
//! the backend has acted on it (e.g. mapped the memory table).
//!
//! Backends without REPLY_ACK (older DPDK, SPDK, some libvhost-user builds) work too: requests
//! go out without NEED_REPLY, and where the caller relies on the backend having acted (memory
//! table, ring start and enable, reset, config writes) the session follows them with a
//! GET_FEATURES round trip, the barrier QEMU uses when REPLY_ACK is absent (`enforce_reply` in
//! hw/virtio/vhost-user.c; QEMU waits that way after SET_VRING_ENABLE, and after SET_FEATURES
//! and SET_VRING_ADDR when dirty logging is on). A backend handles its requests in order, so
//! the reply proves the ones before it were handled; what it cannot prove is that they
//! succeeded (without REPLY_ACK a backend has no way to report a failed request except by
//! hanging up, which the barrier then reports).

mod connect;
mod error;
mod inflight;
mod memory;
mod vring;
mod watchdog;

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{Shutdown, shutdown};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use connect::{Negotiated, open, open_stream, req};
pub use error::{Error, Result, is_disconnect};
pub use memory::{SharedMemory, SharedRegion, gpa_to_frontend_va};
pub use vring::VringGeometry;
use vring::VringState;
use watchdog::Watchdog;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30 of the vhost-user feature word). Not a virtio
/// feature: never show it to a guest driver.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Largest split-ring size (virtio 1.2 §2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Regions sent in one SET_MEM_TABLE (QEMU's and libvhost-user's limit); larger tables go
/// region by region with CONFIGURE_MEM_SLOTS.
pub const SET_MEM_TABLE_MAX_REGIONS: usize = 8;

/// Protocol features this session knows how to use, and asks for by default.
pub fn supported_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// How a session negotiates with its backend.
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// Most queues the frontend will use; the session reports `min(this, GET_QUEUE_NUM)`.
    pub max_queues: usize,
    /// Protocol features to ask for (intersected with what the backend offers).
    pub protocol_features: VhostUserProtocolFeatures,
    /// Protocol features without which connecting fails.
    pub required_protocol_features: VhostUserProtocolFeatures,
    /// How long any request (or the whole handshake) may wait for its reply before the
    /// session hangs up and reports the backend gone (`None`: wait forever). Enforced by a
    /// watchdog thread per session.
    pub reply_timeout: Option<Duration>,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            max_queues: 64,
            protocol_features: supported_protocol_features(),
            required_protocol_features: VhostUserProtocolFeatures::empty(),
            reply_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// A vhost-user frontend connection with replayable state.
///
/// Not internally synchronised beyond what `vhost::vhost_user::Frontend` does: share it
/// behind a `Mutex` if several threads drive it. The kick/call event fds belong to the
/// caller (for a VMM: KVM ioeventfds / irqfds); the session dups them to resend on reconnect.
pub struct FrontendSession {
    path: PathBuf,
    opts: FrontendOptions,
    fe: Frontend,
    gone: bool,
    device_features: u64,
    acked_features: Option<u64>,
    protocol: VhostUserProtocolFeatures,
    num_queues: usize,
    memory: Option<Arc<dyn SharedMemory>>,
    table: Vec<SharedRegion>,
    vrings: Vec<VringState>,
    watchdog: Option<Watchdog>,
    /// In-flight buffer (INFLIGHT_SHMFD), kept across reconnects until a device reset.
    inflight: Option<inflight::InflightBuffer>,
}

impl std::fmt::Debug for FrontendSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendSession")
            .field("path", &self.path)
            .field("gone", &self.gone)
            .field(
                "device_features",
                &format_args!("{:#x}", self.device_features),
            )
            .field("acked_features", &self.acked_features)
            .field("protocol", &self.protocol)
            .field("num_queues", &self.num_queues)
            .finish_non_exhaustive()
    }
}

/// VIRTIO_F_RING_PACKED (virtio 1.2 §6): its rings' positions are not in guest memory.
const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
impl FrontendSession {
    /// Connects to the backend socket at `path` (retrying until `timeout`) and negotiates with
    /// default [`FrontendOptions`]: SET_OWNER, GET_FEATURES, protocol features (REPLY_ACK, MQ,
    /// CONFIG, CONFIGURE_MEM_SLOTS, RESET_DEVICE as offered), GET_QUEUE_NUM.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        Self::connect_with(path, timeout, FrontendOptions::default())
    }

    /// [`connect`](Self::connect) with explicit options.
    pub fn connect_with(
        path: impl AsRef<Path>,
        timeout: Duration,
        opts: FrontendOptions,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let watchdog = opts.reply_timeout.and_then(Watchdog::new);
        let (fe, n) = open(&path, timeout, &opts, watchdog.as_ref())?;
        Ok(Self::new(path, opts, fe, n, watchdog))
    }

    /// Negotiates on a connected stream, for a frontend that listens and lets the backend
    /// connect (QEMU's `-chardev socket,server=on`). `name` is only used in messages (and
    /// by [`reconnect`](Self::reconnect), which connects to it as a path: use
    /// [`reconnect_stream`](Self::reconnect_stream) instead).
    pub fn from_stream(
        stream: UnixStream,
        name: impl AsRef<Path>,
        opts: FrontendOptions,
    ) -> Result<Self> {
        let watchdog = opts.reply_timeout.and_then(Watchdog::new);
        let (fe, n) = open_stream(stream, &opts, watchdog.as_ref())?;
        Ok(Self::new(
            name.as_ref().to_path_buf(),
            opts,
            fe,
            n,
            watchdog,
        ))
    }

    fn new(
        path: PathBuf,
        opts: FrontendOptions,
        fe: Frontend,
        n: Negotiated,
        watchdog: Option<Watchdog>,
    ) -> Self {
        let vrings = (0..n.num_queues).map(|_| VringState::default()).collect();
        FrontendSession {
            path,
            opts,
            fe,
            gone: false,
            device_features: n.device_features,
            acked_features: None,
            protocol: n.protocol,
            num_queues: n.num_queues,
            memory: None,
            table: Vec::new(),
            vrings,
            watchdog,
            inflight: None,
        }
    }

    /// The backend socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Changes the reply timeout of later requests and handshakes (`None`: wait for the
    /// backend as long as it takes; only a hang-up ends a request). A VMM can bound the
    /// handshake at start-up, then let requests on a control thread wait for a backend that
    /// was stopped rather than declare it dead.
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) {
        self.opts.reply_timeout = timeout;
        self.watchdog = timeout.and_then(Watchdog::new);
    }

    /// False once a request found the backend gone (until [`reconnect`](Self::reconnect)).
    pub fn is_connected(&self) -> bool {
        !self.gone
    }

    /// Virtio features the device offers, without `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub fn device_features(&self) -> u64 {
        self.device_features & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    /// Virtio features sent with SET_FEATURES (without `VHOST_USER_F_PROTOCOL_FEATURES`), if any.
    pub fn acked_features(&self) -> Option<u64> {
        self.acked_features
    }

    /// Negotiated protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Number of queues usable on this session.
    pub fn num_queues(&self) -> usize {
        self.num_queues
    }

    /// The connection's socket, for a VMM that wants to notice a dead backend between
    /// requests (poll it for POLLHUP/POLLIN: a backend never writes unsolicited on
    /// this channel, so readable means EOF). See [`check_alive`](Self::check_alive).
    pub fn socket_fd(&self) -> RawFd {
        self.fe.as_raw_fd()
    }

    /// Non-blocking liveness check: false (and the session marked gone) if the backend has
    /// hung up, without sending anything.
    pub fn check_alive(&mut self) -> bool {
        if self.gone {
            return false;
        }
        // SAFETY: the fd is the session's socket, alive for the duration of the call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fe.as_raw_fd()) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN | PollFlags::POLLHUP)];
        let hung_up = match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => false,
            Ok(_) => fds[0].revents().is_some_and(|r| !r.is_empty()),
            Err(_) => false,
        };
        if hung_up {
            log::warn!("vhost-user backend {} hung up", self.path.display());
            self.gone = true;
        }
        !hung_up
    }

    /// The underlying `vhost` frontend, for requests this session does not wrap (tests use it
    /// to send malformed requests). State changes made through it are not replayed.
    pub fn raw_frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }

    /// Runs one request on the live connection; a disconnect marks the session gone.
    fn call<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        if self.gone {
            return Err(Error::BackendGone {
                op,
                detail: "session disconnected earlier; reconnect first".into(),
            });
        }
        if let Some(w) = &self.watchdog {
            w.arm(self.fe.as_raw_fd());
        }
        let raw = f(&mut self.fe);
        let r = match &self.watchdog {
            Some(w) if w.disarm() => {
                // The socket was shut down: even a reply that made it is on a dead session.
                self.gone = true;
                let timeout = w.timeout();
                log::warn!(
                    "vhost-user backend {}: no reply to {op} within {timeout:?}",
                    self.path.display()
                );
                return Err(Error::BackendGone {
                    op,
                    detail: format!("no reply within {timeout:?}"),
                });
            }
            _ => req(op, raw),
        };
        if let Err(e) = &r
            && e.is_backend_gone()
        {
            log::warn!("vhost-user backend {}: {e}", self.path.display());
            self.gone = true;
        }
        r
    }

    fn check_queue(&self, index: usize) -> Result<()> {
        if index >= self.num_queues {
            return Err(Error::QueueIndex {
                index,
                num_queues: self.num_queues,
            });
        }
        Ok(())
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features.is_some() && self.device_features & VHOST_USER_F_PROTOCOL_FEATURES != 0
    }

    /// Without REPLY_ACK: a GET_FEATURES round trip, so that when it returns the backend has
    /// handled every request sent before it (QEMU's `enforce_reply`). With REPLY_ACK each
    /// request was already acknowledged: nothing to do.
    fn barrier(&mut self) -> Result<()> {
        if self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            return Ok(());
        }
        self.call("GET_FEATURES (barrier)", |fe| fe.get_features())
            .map(|_| ())
    }

    /// SET_FEATURES with the virtio features the driver accepted (bits the device does not
    /// offer are dropped); adds `VHOST_USER_F_PROTOCOL_FEATURES` when the backend offers it.
    pub fn set_features(&mut self, features: u64) -> Result<()> {
        let virtio = features & self.device_features();
        if virtio != features {
            log::debug!(
                "dropping features {:#x} the backend does not offer",
                features & !virtio
            );
        }
        let wire = virtio | (self.device_features & VHOST_USER_F_PROTOCOL_FEATURES);
        self.call("SET_FEATURES", |fe| fe.set_features(wire))?;
        self.acked_features = Some(virtio);
        Ok(())
    }

    /// Shares `mem` with the backend (SET_MEM_TABLE). Every region must be file-backed
    /// (memfd, MAP_SHARED). The session keeps a reference-counted clone of `mem`: the fds are
    /// resent on reconnect and ring indices can be read from it.
    pub fn set_mem_table<M: SharedMemory + Clone + 'static>(&mut self, mem: &M) -> Result<()> {
        let memory: Arc<dyn SharedMemory> = Arc::new(mem.clone());
        let table = memory.shared_regions()?;
        if table.is_empty() {
            return Err(Error::State("guest memory has no regions"));
        }
        let previous = std::mem::take(&mut self.table);
        if let Err(e) = self
            .send_mem_table(&table, &previous)
            .and_then(|()| self.barrier())
        {
            self.table = previous;
            return Err(e);
        }
        self.memory = Some(memory);
        self.table = table;
        Ok(())
    }

    /// Sends `table`: SET_MEM_TABLE when it fits in one message (8 regions, what every
    /// backend accepts), otherwise one ADD_MEM_REGION per region (needs
    /// CONFIGURE_MEM_SLOTS), after removing the regions of `previous`.
    fn send_mem_table(&mut self, table: &[SharedRegion], previous: &[SharedRegion]) -> Result<()> {
        let infos: Vec<_> = table.iter().map(SharedRegion::to_info).collect();
        if infos.len() <= SET_MEM_TABLE_MAX_REGIONS {
            return self.call("SET_MEM_TABLE", |fe| fe.set_mem_table(&infos).map(|_| ()));
        }
        if !self
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
        {
            return Err(Error::MissingFeatures {
                what: "protocol (more than 8 memory regions)",
                missing: VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS.bits(),
            });
        }
        let slots = self.call("GET_MAX_MEM_SLOTS", |fe| fe.get_max_mem_slots())?;
        if (infos.len() as u64) > slots {
            return Err(Error::State(
                "more memory regions than the backend has slots",
            ));
        }
        for old in previous {
            let info = old.to_info();
            self.call("REM_MEM_REG", |fe| fe.remove_mem_region(&info))?;
        }
        for info in &infos {
            self.call("ADD_MEM_REG", |fe| fe.add_mem_region(info).map(|_| ()))?;
        }
        Ok(())
    }

    /// The memory table last sent to the backend.
    pub fn mem_table(&self) -> &[SharedRegion] {
        &self.table
    }

    /// Translates a guest-physical range into this process's virtual address through the
    /// memory table sent to the backend (what vring addresses must be expressed in).
    pub fn frontend_va(&self, gpa: GuestAddress, len: u64) -> Result<u64> {
        memory::table_gpa_to_va(&self.table, gpa.0, len)
    }

    fn vring_config(&self, g: &VringGeometry) -> Result<VringConfigData> {
        let (dl, al, ul) = VringGeometry::part_sizes(g.size);
        Ok(VringConfigData {
            queue_max_size: g.size,
            queue_size: g.size,
            flags: 0,
            desc_table_addr: self.frontend_va(g.desc, dl)?,
            used_ring_addr: self.frontend_va(g.used, ul)?,
            avail_ring_addr: self.frontend_va(g.avail, al)?,
            log_addr: None,
        })
    }

    /// Sends NUM, BASE, ADDR, CALL, KICK for one ring without touching the
    /// session's bookkeeping.
    fn send_vring(
        &mut self,
        index: usize,
        g: &VringGeometry,
        base: u16,
        call: &EventFd,
        kick: &EventFd,
    ) -> Result<()> {
        let config = self.vring_config(g)?;
        self.call("SET_VRING_NUM", |fe| fe.set_vring_num(index, g.size))?;
        self.call("SET_VRING_BASE", |fe| fe.set_vring_base(index, base))?;
        self.call("SET_VRING_ADDR", |fe| fe.set_vring_addr(index, &config))?;
        // CALL before KICK: a backend starts the ring on SET_VRING_KICK and may complete a
        // pending request at once (after a reconnect); with no call fd yet libvhost-user
        // writes to fd -1 and marks the device broken.
        self.call("SET_VRING_CALL", |fe| fe.set_vring_call(index, call))?;
        self.call("SET_VRING_KICK", |fe| fe.set_vring_kick(index, kick))
    }

    /// Starts ring `index`: geometry (guest-physical; translated to frontend addresses through
    /// the memory table), the first avail index the backend should process (`base`, 0 for a
    /// fresh ring), and the caller's call/kick event fds (dup'd, to resend on reconnect).
    ///
    /// With `VHOST_USER_F_PROTOCOL_FEATURES` negotiated the ring starts disabled: follow with
    /// [`enable_vring`](Self::enable_vring).
    pub fn setup_vring(
        &mut self,
        index: usize,
        geometry: VringGeometry,
        base: u16,
        call: &EventFd,
        kick: &EventFd,
    ) -> Result<()> {
        self.check_queue(index)?;
        geometry.validate()?;
        if self.memory.is_none() {
            return Err(Error::State(
                "set the memory table before setting up vrings",
            ));
        }
        if self.acked_features.is_none() {
            return Err(Error::State("set features before setting up vrings"));
        }
        let call_dup = call.try_clone().map_err(Error::EventFd)?;
        let kick_dup = kick.try_clone().map_err(Error::EventFd)?;
        self.ensure_inflight(geometry.size)?;
        self.send_vring(index, &geometry, base, call, kick)?;
        // Without protocol features the ring starts on SET_VRING_KICK: like an enable.
        self.barrier()?;
        let starts_enabled = !self.protocol_features_acked();
        let v = &mut self.vrings[index];
        v.geometry = Some(geometry);
        v.call = Some(call_dup);
        v.kick = Some(kick_dup);
        v.running = true;
        v.enabled = starts_enabled;
        v.saved_base = None;
        Ok(())
    }

    /// Replaces ring `index`'s call fd (e.g. the guest moved the queue to another MSI vector).
    pub fn set_vring_call(&mut self, index: usize, call: &EventFd) -> Result<()> {
        self.check_queue(index)?;
        let dup = call.try_clone().map_err(Error::EventFd)?;
        self.call("SET_VRING_CALL", |fe| fe.set_vring_call(index, call))?;
        self.barrier()?;
        self.vrings[index].call = Some(dup);
        Ok(())
    }

    /// Replaces ring `index`'s kick fd.
    pub fn set_vring_kick(&mut self, index: usize, kick: &EventFd) -> Result<()> {
        self.check_queue(index)?;
        let dup = kick.try_clone().map_err(Error::EventFd)?;
        self.call("SET_VRING_KICK", |fe| fe.set_vring_kick(index, kick))?;
        self.barrier()?;
        self.vrings[index].kick = Some(dup);
        Ok(())
    }

    /// SET_VRING_ENABLE. A no-op without `VHOST_USER_F_PROTOCOL_FEATURES` (rings are then
    /// enabled as soon as they get a kick fd).
    pub fn enable_vring(&mut self, index: usize, enable: bool) -> Result<()> {
        self.check_queue(index)?;
        if self.protocol_features_acked() {
            self.call("SET_VRING_ENABLE", |fe| fe.set_vring_enable(index, enable))?;
            // The guest may kick as soon as this returns: the backend's control thread must
            // have seen the enable before its ring thread sees the kick (QEMU: "call
            // VHOST_USER_SET_VRING_ENABLE synchronously").
            self.barrier()?;
        }
        self.vrings[index].enabled = enable;
        Ok(())
    }

    /// Stops ring `index` (GET_VRING_BASE) and returns the next avail index the backend would
    /// have processed; the value is saved and used as the base when the ring is restored.
    pub fn stop_vring(&mut self, index: usize) -> Result<u16> {
        self.check_queue(index)?;
        if !self.vrings[index].running {
            return self.vrings[index]
                .saved_base
                .ok_or(Error::State("vring was never started"));
        }
        let base = self.call("GET_VRING_BASE", |fe| fe.get_vring_base(index))?;
        // The reply's `num` is the 16-bit avail index (packed rings add a wrap bit above).
        let base = (base & 0xffff) as u16;
        let v = &mut self.vrings[index];
        v.running = false;
        v.saved_base = Some(base);
        Ok(base)
    }

    /// Restarts a ring stopped by [`stop_vring`](Self::stop_vring) (possibly on a backend
    /// reconnected since) at its saved base, with the same geometry and fds, enabled as it
    /// was.
    pub fn resume_vring(&mut self, index: usize) -> Result<()> {
        self.check_queue(index)?;
        let v = &self.vrings[index];
        if v.running {
            return Ok(());
        }
        let (Some(g), Some(base), Some(call), Some(kick)) =
            (v.geometry, v.saved_base, &v.call, &v.kick)
        else {
            return Err(Error::State("vring was never started"));
        };
        let call = call.try_clone().map_err(Error::EventFd)?;
        let kick = kick.try_clone().map_err(Error::EventFd)?;
        let enabled = v.enabled;
        self.send_vring(index, &g, base, &call, &kick)?;
        if enabled && self.protocol_features_acked() {
            self.call("SET_VRING_ENABLE", |fe| fe.set_vring_enable(index, true))?;
        }
        self.barrier()?;
        let v = &mut self.vrings[index];
        v.running = true;
        v.saved_base = None;
        Ok(())
    }

    /// The base saved by the last [`stop_vring`](Self::stop_vring), if the ring is stopped.
    pub fn saved_vring_base(&self, index: usize) -> Option<u16> {
        self.vrings
            .get(index)
            .filter(|v| !v.running)
            .and_then(|v| v.saved_base)
    }

    /// Reads `len` bytes of device config space at `offset` (GET_CONFIG; needs CONFIG).
    ///
    /// Config messages carry flags 0 like QEMU's ("front-end message for writable fields"
    /// in the spec; the `vhost` crate's `WRITABLE` bit is the spec's live-migration value).
    pub fn get_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::MissingFeatures {
                what: "protocol",
                missing: VhostUserProtocolFeatures::CONFIG.bits(),
            });
        }
        let buf = vec![0u8; len as usize];
        let (_, data) = self.call("GET_CONFIG", |fe| {
            fe.get_config(offset, len, VhostUserConfigFlags::empty(), &buf)
        })?;
        Ok(data)
    }

    /// Writes device config space at `offset` (SET_CONFIG; needs CONFIG).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::MissingFeatures {
                what: "protocol",
                missing: VhostUserProtocolFeatures::CONFIG.bits(),
            });
        }
        self.call("SET_CONFIG", |fe| {
            fe.set_config(offset, VhostUserConfigFlags::empty(), data)
        })?;
        self.barrier()
    }

    /// Device reset (the guest wrote 0 to device_status): stops every running ring, sends
    /// RESET_DEVICE when negotiated, and forgets ring state and acked features. The memory
    /// table stays. The local state is cleared even if the backend is gone (the error is
    /// still returned), so a later [`reconnect`](Self::reconnect) starts from a reset device.
    pub fn reset(&mut self) -> Result<()> {
        let r = self.reset_backend();
        for v in &mut self.vrings {
            *v = VringState::default();
        }
        self.acked_features = None;
        // Nothing is in flight after a reset; the next start gets a fresh buffer (QEMU frees
        // its buffer on reset too).
        self.inflight = None;
        r
    }

    fn reset_backend(&mut self) -> Result<()> {
        if self.gone {
            return Ok(());
        }
        for index in 0..self.num_queues {
            if self.vrings[index].running {
                self.stop_vring(index)?;
            }
        }
        if self
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            self.call("RESET_DEVICE", |fe| fe.reset_device())?;
        }
        self.barrier()
    }

    /// Reconnects to the same socket path (retrying until `timeout`) and restores the session:
    /// handshake, SET_FEATURES with the previously acked features (the backend must still
    /// offer them), the memory table, and every ring that was running, enabled as before.
    ///
    /// A running ring restarts at the base reported by GET_VRING_BASE if the old backend
    /// answered it, otherwise at the used ring's `idx` read from guest memory: requests the
    /// dead backend had taken but not completed are processed again.
    /// With in-flight tracking (INFLIGHT_SHMFD) the session first hands the new backend the
    /// buffer the old one kept, and the backend resumes each ring from it instead: after the
    /// requests already completed, running the unfinished ones again, oldest first.
    pub fn reconnect(&mut self, timeout: Duration) -> Result<()> {
        self.hang_up();
        let (fe, n) = open(&self.path, timeout, &self.opts, self.watchdog.as_ref())?;
        self.restore(fe, n)
    }

    /// [`reconnect`](Self::reconnect) over a stream the caller connected or accepted.
    pub fn reconnect_stream(&mut self, stream: UnixStream) -> Result<()> {
        self.hang_up();
        let (fe, n) = open_stream(stream, &self.opts, self.watchdog.as_ref())?;
        self.restore(fe, n)
    }

    fn hang_up(&mut self) {
        self.gone = true;
        // A backend serves one frontend at a time and would not accept a new connection
        // while the old one is open.
        let _ = shutdown(self.fe.as_raw_fd(), Shutdown::Both);
    }

    fn restore(&mut self, fe: Frontend, n: Negotiated) -> Result<()> {
        self.fe = fe;
        self.gone = false;
        if let Some(acked) = self.acked_features {
            let missing = acked & !n.device_features;
            if missing != 0 {
                self.gone = true;
                return Err(Error::FeaturesShrunk { missing });
            }
        }
        if n.num_queues
            < self
                .vrings
                .iter()
                .rposition(|v| v.running)
                .map_or(0, |i| i + 1)
        {
            self.gone = true;
            return Err(Error::State("reconnected backend has fewer queues"));
        }
        self.device_features = n.device_features;
        self.protocol = n.protocol;
        self.num_queues = n.num_queues;
        self.vrings
            .resize_with(n.num_queues.max(self.vrings.len()), Default::default);

        if let Some(acked) = self.acked_features {
            self.set_features(acked)?;
        }
        if !self.table.is_empty() {
            let table = self.table.clone();
            self.send_mem_table(&table, &[])?;
        }
        // Before the rings: the new backend resumes them from the buffer.
        self.send_inflight()?;
        for index in 0..self.vrings.len() {
            let v = &self.vrings[index];
            let (Some(g), true) = (v.geometry, v.running) else {
                continue;
            };
            let (Some(call), Some(kick)) = (&v.call, &v.kick) else {
                continue;
            };
            let (call, kick) = (
                call.try_clone().map_err(Error::EventFd)?,
                kick.try_clone().map_err(Error::EventFd)?,
            );
            let enabled = v.enabled;
            let packed = self
                .acked_features
                .is_some_and(|f| f & VIRTIO_F_RING_PACKED != 0);
            let base = match v.saved_base {
                Some(b) => b,
                // A packed ring's position is only known to the backend that died.
                None if packed => {
                    self.gone = true;
                    return Err(Error::State(
                        "a running packed ring cannot be restored without GET_VRING_BASE",
                    ));
                }
                None => self
                    .memory
                    .as_ref()
                    .and_then(|m| m.load_u16(GuestAddress(g.used.0 + 2)))
                    .ok_or(Error::AddressNotMapped {
                        gpa: g.used.0 + 2,
                        len: 2,
                    })?,
            };
            log::info!("vhost-user reconnect: restoring vring {index} at base {base}");
            self.send_vring(index, &g, base, &call, &kick)?;
            if enabled && self.protocol_features_acked() {
                self.call("SET_VRING_ENABLE", |fe| fe.set_vring_enable(index, true))?;
            }
            // The dead backend may have published used entries without signalling them
            // (killed between the used index and the call fd): one interrupt so the driver
            // looks (a spurious one is harmless).
            if let Err(e) = call.write(1) {
                log::warn!("vhost-user reconnect: cannot signal vring {index}: {e}");
            }
        }
        self.barrier()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<FrontendSession>();
    }
}
