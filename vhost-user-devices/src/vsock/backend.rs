//! The per-connection vhost-user backend: features, config space (the guest CID), and the
//! rx/tx queue processing around the [`Muxer`].

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Mutex;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vu_daemon::backend_util::{self, MemorySlot, ignore_config_write, new_exit_event, read_config};
use vu_daemon::ring::Round;
use vu_daemon::{BackendMemory, BackendVring};
use vu_spec::vsock::{NUM_QUEUES, RX_QUEUE, TX_QUEUE, VsockConfig};

use super::muxer::{Muxer, MuxerStats};
use crate::chain::is_complete;

/// `handle_event` id of the muxer's epoll fd (0..=NUM_QUEUES are the library's).
pub const BACKEND_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Largest packet payload taken from or put into one buffer (Linux uses 64 KiB buffers).
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// Virtio features the device offers.
pub fn device_features() -> u64 {
    (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// vhost-user protocol features: only what vhost-user-backend really handles; CONFIG because
/// QEMU's vhost-user-vsock reads the guest CID with GET_CONFIG.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    backend_util::protocol_features(true)
}

/// Serves one frontend connection.
pub struct VsockBackend {
    guest_cid: u64,
    queue_size: u16,
    muxer: Mutex<Muxer>,
    mem: MemorySlot,
}

impl VsockBackend {
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        listener: UnixListener,
        buf_alloc: u32,
        queue_size: u16,
        half_open_timeout: std::time::Duration,
    ) -> io::Result<Self> {
        Ok(VsockBackend {
            guest_cid,
            queue_size,
            muxer: Mutex::new(Muxer::new(
                guest_cid,
                uds_path,
                listener,
                buf_alloc,
                half_open_timeout,
            )?),
            mem: MemorySlot::new(),
        })
    }

    /// The muxer's epoll fd, to register with the worker thread as [`BACKEND_EVENT`].
    pub fn epoll_fd(&self) -> io::Result<std::os::fd::RawFd> {
        self.muxer
            .lock()
            .map(|m| m.epoll_fd())
            .map_err(|_| io::Error::other("muxer lock poisoned"))
    }

    /// Counters (RSTs sent, packets dropped, open connections).
    pub fn stats(&self) -> MuxerStats {
        self.muxer.lock().map(|m| m.stats()).unwrap_or_default()
    }

    /// Takes every packet the guest queued on tx (until too many replies wait for rx buffers).
    fn process_tx(
        &self,
        vring: &BackendVring,
        muxer: &mut Muxer,
        mem: &std::sync::Arc<GuestMemoryMmap>,
    ) {
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return;
        }
        let mut used = false;
        let mut round = Round::new();
        while !muxer.throttled() {
            let Some(mut chain) = round.pop(state.get_queue_mut(), mem.clone()) else {
                round.finish(&state);
                break;
            };
            let head = chain.head_index();
            if !is_complete(&chain) {
                vu_daemon::log_limited!(
                    log::Level::Warn,
                    "tx chain {head} loops or leaves the descriptor table: dropped"
                );
            } else {
                match VsockPacket::from_tx_virtq_chain(&**mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) => muxer.recv_pkt(&pkt),
                    Err(e) => vu_daemon::log_limited!(
                        log::Level::Warn,
                        "malformed tx packet {head}: {e}: dropped"
                    ),
                }
            }
            if let Err(e) = state.get_queue_mut().add_used(&**mem, head, 0) {
                vu_daemon::log_limited!(log::Level::Error, "cannot complete tx packet {head}: {e}");
            }
            used = true;
        }
        if used && let Err(e) = state.signal_used_queue() {
            vu_daemon::log_limited!(log::Level::Error, "cannot signal the tx queue: {e}");
        }
    }

    /// Fills rx buffers while the muxer has packets for the guest; returns how many.
    fn process_rx(
        &self,
        vring: &BackendVring,
        muxer: &mut Muxer,
        mem: &std::sync::Arc<GuestMemoryMmap>,
    ) -> usize {
        let mut state = vring.get_mut();
        let mut sent = 0;
        if !state.get_queue().ready() {
            return sent;
        }
        let mut round = Round::new();
        while muxer.has_rx() {
            let Some(mut chain) = round.pop(state.get_queue_mut(), mem.clone()) else {
                round.finish(&state);
                break;
            };
            let head = chain.head_index();
            if !is_complete(&chain) {
                vu_daemon::log_limited!(
                    log::Level::Warn,
                    "rx chain {head} loops or leaves the descriptor table: returned empty"
                );
                if let Err(e) = state.get_queue_mut().add_used(&**mem, head, 0) {
                    vu_daemon::log_limited!(
                        log::Level::Error,
                        "cannot complete rx buffer {head}: {e}"
                    );
                }
                sent += 1;
                continue;
            }
            let len = match VsockPacket::from_rx_virtq_chain(&**mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match muxer.fill_rx(&mut pkt) {
                    Some(len) => len,
                    None => {
                        // Nothing after all: give the buffer back for later.
                        state.get_queue_mut().go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    vu_daemon::log_limited!(
                        log::Level::Warn,
                        "malformed rx buffer {head}: {e}: returned empty"
                    );
                    0
                }
            };
            if let Err(e) = state.get_queue_mut().add_used(&**mem, head, len) {
                vu_daemon::log_limited!(log::Level::Error, "cannot complete rx buffer {head}: {e}");
            }
            sent += 1;
        }
        if sent > 0
            && let Err(e) = state.signal_used_queue()
        {
            vu_daemon::log_limited!(log::Level::Error, "cannot signal the rx queue: {e}");
        }
        sent
    }

    /// Moves everything that can move: tx packets in, host events, rx packets out.
    fn run(&self, vrings: &[BackendVring], host_events: bool) {
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE), vrings.get(TX_QUEUE)) else {
            return;
        };
        let Some(mem) = self.mem.get() else {
            return;
        };
        let Ok(mut muxer) = self.muxer.lock() else {
            vu_daemon::log_limited!(log::Level::Error, "muxer lock poisoned");
            return;
        };
        if host_events {
            muxer.handle_host_events();
        }
        // Bounded: each round either fills rx buffers or stops.
        for _ in 0..64 {
            self.process_tx(tx, &mut muxer, &mem);
            let sent = self.process_rx(rx, &mut muxer, &mem);
            if !(muxer.throttled() && sent > 0) {
                break;
            }
        }
    }
}

impl Drop for VsockBackend {
    fn drop(&mut self) {
        let s = self.stats();
        log::debug!(
            "connection ends: {} vsock connection(s) closed, {} RST(s) sent, {} packet(s) dropped",
            s.connections,
            s.rst_sent,
            s.dropped
        );
    }
}

impl VhostUserBackend for VsockBackend {
    type Bitmap = ();
    type Vring = BackendVring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        device_features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // The driver stopped (reset, reboot): its sockets are gone, so are ours.
        if queue_index as usize == RX_QUEUE
            && let Ok(mut m) = self.muxer.lock()
        {
            m.reset();
        }
        Ok(())
    }

    fn reset_device(&self) {
        if let Ok(mut m) = self.muxer.lock() {
            m.reset();
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = VsockConfig {
            guest_cid: self.guest_cid.to_le(),
        };
        read_config(config.as_slice(), offset, size).unwrap_or_default()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        ignore_config_write(offset, buf, log::Level::Warn)
    }

    fn update_memory(&self, mem: BackendMemory) -> io::Result<()> {
        self.mem.update(mem)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[BackendVring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            log::debug!("unexpected event set {evset:?} for event {device_event}");
        }
        // Every event may let something move (a kick on rx brings buffers, on tx packets).
        self.run(vrings, device_event == BACKEND_EVENT);
        Ok(())
    }
}
