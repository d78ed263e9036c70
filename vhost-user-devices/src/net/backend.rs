//! The per-connection vhost-user backend: features, config space, one worker thread per queue
//! pair (its receive queue, its transmit queue and its link fd in one epoll loop).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringT};
use virtio_queue::QueueT;
use vm_memory::ByteValued;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vu_daemon::backend_util::{
    EventIdx, MemorySlot, RING_FEATURES, ignore_config_write, new_exit_event, notify_used,
    read_config, reenable_notifications,
};
use vu_daemon::ring::Round;
use vu_daemon::{BackendMemory, BackendVring};
use vu_spec::net::{
    NetConfig, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP, header_size,
};

use super::link::{Link, LinkKind, recv_frame, send_frame};
use super::rxtx::{
    Delivery, LINK_BUF_SIZE, NetStats, RxParams, TxError, bump, deliver_rx, gather_tx,
};

#[cfg(test)]
mod tests;

/// Notify the guest at least every this many received frames within one burst.
const RX_NOTIFY_BATCH: u32 = 32;

/// What every connection of a device shares.
#[derive(Debug)]
pub struct Shared {
    pub link: Link,
    pub mac: Option<[u8; 6]>,
    pub queue_size: u16,
    pub mtu: u16,
    pub stats: NetStats,
}

impl Shared {
    pub fn queue_pairs(&self) -> u16 {
        self.link.queue_pairs()
    }
}

/// Virtio features offered for a link kind (and MAC).
pub fn device_features(kind: LinkKind, has_mac: bool, queue_pairs: u16) -> u64 {
    let bit = |b: u32| 1u64 << b;
    let mut f = RING_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_NET_F_STATUS);
    if has_mac {
        f |= bit(VIRTIO_NET_F_MAC);
    }
    if queue_pairs > 1 {
        f |= bit(VIRTIO_NET_F_MQ);
    }
    if kind == LinkKind::Tap {
        // The tap takes partial checksums and GSO frames from us (HOST_*) and, once
        // TUNSETOFFLOAD allows it, hands us such frames for the guest (GUEST_*).
        f |= bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_ECN);
    }
    f
}

/// vhost-user protocol features: only what vhost-user-backend really handles.
///
/// Not CONFIGURE_MEM_SLOTS: QEMU 7.2's multi-queue virtio-net has one vhost device per queue
/// pair on the same connection and each one adds the guest's regions with ADD_MEM_REG again,
/// which vhost-user-backend rejects as overlapping (dropping the connection); SET_MEM_TABLE
/// replaces the whole table and is harmless to repeat.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
}

/// Receive state of one queue pair: a frame read from the link that found no buffer yet.
struct RxState {
    buf: Vec<u8>,
    /// Length of the pending frame in `buf` (0: none).
    pending: usize,
    chains: Vec<(u16, u32)>,
}

/// Serves one frontend connection.
pub struct NetBackend {
    shared: Arc<Shared>,
    features: u64,
    acked: AtomicU64,
    event_idx: EventIdx,
    mem: MemorySlot,
    rx: Vec<Mutex<RxState>>,
    tx_bufs: Vec<Mutex<Vec<u8>>>,
}

impl NetBackend {
    pub fn new(shared: Arc<Shared>) -> Self {
        let pairs = usize::from(shared.queue_pairs());
        let features = device_features(
            shared.link.kind(),
            shared.mac.is_some(),
            shared.queue_pairs(),
        );
        NetBackend {
            features,
            acked: AtomicU64::new(0),
            event_idx: EventIdx::new(),
            mem: MemorySlot::new(),
            rx: (0..pairs)
                .map(|_| {
                    Mutex::new(RxState {
                        buf: Vec::new(),
                        pending: 0,
                        chains: Vec::new(),
                    })
                })
                .collect(),
            tx_bufs: (0..pairs).map(|_| Mutex::new(Vec::new())).collect(),
            shared,
        }
    }

    /// The config space.
    pub fn config(&self) -> NetConfig {
        NetConfig {
            mac: self.shared.mac.unwrap_or_default(),
            status: (VIRTIO_NET_S_LINK_UP as u16).to_le(),
            max_virtqueue_pairs: self.shared.queue_pairs().to_le(),
            mtu: self.shared.mtu.to_le(),
        }
    }

    /// Epoll id of queue pair `pair`'s link fd in its worker (above the queue ids).
    pub fn link_event_id(&self) -> u64 {
        u64::from(self.shared.queue_pairs()) * 2 + 1
    }

    /// Registers every queue pair's link fd with its worker, edge-triggered: the receive path
    /// reads until the link is empty or the guest runs out of buffers (then the guest's
    /// receive-queue kick resumes it).
    pub fn attach(&self, workers: &[Arc<VringEpollHandler<Arc<NetBackend>>>]) -> io::Result<()> {
        for (pair, worker) in workers.iter().enumerate() {
            let pair = u16::try_from(pair).unwrap_or(u16::MAX);
            let fd = self
                .shared
                .link
                .fd(pair)
                .ok_or_else(|| io::Error::other(format!("no link fd for queue pair {pair}")))?;
            worker.register_listener(
                fd.as_raw_fd(),
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                self.link_event_id(),
            )?;
        }
        Ok(())
    }

    /// Sends every available transmit chain of queue pair `pair` to the link.
    fn process_tx(&self, pair: u16, vring: &BackendVring) {
        let Some(mem) = self.mem.get() else { return };
        let Some(fd) = self.shared.link.fd(pair) else {
            return;
        };
        let Some(buf) = self.tx_bufs.get(usize::from(pair)) else {
            return;
        };
        let Ok(mut frame) = buf.lock() else { return };
        let acked = self.acked.load(Ordering::Relaxed);
        let hdr_len = header_size(acked);
        let strip = self.shared.link.kind() == LinkKind::Peer;
        let event_idx = self.event_idx.get();
        let stats = &self.shared.stats;
        let mut state = vring.get_mut();
        let mut round = Round::new();
        loop {
            if event_idx {
                let _ = state.disable_notification();
            }
            let mut completed = false;
            while let Some(chain) = round.pop(state.get_queue_mut(), &*mem) {
                let head = chain.head_index();
                match gather_tx(chain, &mem, hdr_len, strip, &mut frame) {
                    Ok(()) => match send_frame(fd, &frame) {
                        Ok(true) => {
                            bump(&stats.tx_frames, 1);
                            bump(&stats.tx_bytes, (frame.len() - 12) as u64);
                        }
                        Ok(false) => bump(&stats.tx_dropped, 1),
                        Err(e) => {
                            bump(&stats.tx_dropped, 1);
                            vu_daemon::log_limited!(
                                log::Level::Warn,
                                "queue pair {pair}: link write failed: {e}"
                            );
                        }
                    },
                    Err(e) => {
                        bump(&stats.tx_malformed, 1);
                        log::debug!("queue pair {pair}: transmit chain {head} dropped: {e}");
                        if e == TxError::WritableDescriptor {
                            log::debug!("(a transmit chain must be device-readable only)");
                        }
                    }
                }
                if let Err(e) = state.add_used(head, 0) {
                    vu_daemon::log_limited!(
                        log::Level::Error,
                        "cannot complete transmit chain {head}: {e}"
                    );
                }
                completed = true;
            }
            if completed {
                notify_used(&mut state, &mem);
            }
            if !round.again(&mut state, &mem, event_idx) {
                break;
            }
        }
    }

    /// Moves frames from the link into queue pair `pair`'s receive buffers until the link is
    /// empty or the guest has no buffers left (the frame in hand waits for the guest's kick).
    fn process_rx(&self, pair: u16, vring: &BackendVring) {
        let Some(mem) = self.mem.get() else { return };
        let Some(fd) = self.shared.link.fd(pair) else {
            return;
        };
        let Some(rx) = self.rx.get(usize::from(pair)) else {
            return;
        };
        let Ok(mut rx) = rx.lock() else { return };
        let rx = &mut *rx;
        if rx.buf.len() < LINK_BUF_SIZE {
            rx.buf.resize(LINK_BUF_SIZE, 0);
        }
        let acked = self.acked.load(Ordering::Relaxed);
        let params = RxParams {
            hdr_len: header_size(acked),
            mergeable: acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        };
        let stats = &self.shared.stats;
        let mut state = vring.get_mut();
        if !state.get_queue().ready() || !state.is_enabled() {
            // Frames wait in the link until the queue runs.
            return;
        }
        let mut unsignalled = 0u32;
        // Bounded like the guest's side: a peer that keeps the link busy must not keep the
        // worker from its other events (the link is edge-triggered, so the rest is picked up
        // by the receive queue's kick that `finish` signals).
        let mut round = Round::new();
        loop {
            if !round.take() {
                round.finish(&state);
                break;
            }
            if rx.pending == 0 {
                match recv_frame(fd, &mut rx.buf) {
                    Ok(Some(n)) if n < 12 => {
                        bump(&stats.rx_link_errors, 1);
                        continue;
                    }
                    Ok(Some(n)) => rx.pending = n,
                    Ok(None) => break,
                    Err(e) => {
                        vu_daemon::log_limited!(
                            log::Level::Warn,
                            "queue pair {pair}: link read failed: {e}"
                        );
                        break;
                    }
                }
            }
            let frame = &rx.buf[..rx.pending];
            match deliver_rx(state.get_queue_mut(), &mem, frame, params, &mut rx.chains) {
                Delivery::Delivered(_) => {
                    bump(&stats.rx_frames, 1);
                    bump(&stats.rx_bytes, (rx.pending - 12) as u64);
                    rx.pending = 0;
                    unsignalled += 1;
                    if unsignalled >= RX_NOTIFY_BATCH {
                        notify_used(&mut state, &mem);
                        unsignalled = 0;
                    }
                }
                Delivery::TooBig => {
                    bump(&stats.rx_dropped, 1);
                    rx.pending = 0;
                }
                Delivery::BadChain => {
                    bump(&stats.rx_dropped, 1);
                    bump(&stats.rx_bad_chains, 1);
                    rx.pending = 0;
                    unsignalled += 1;
                }
                Delivery::NoBuffers { avail_seen } => {
                    // Ask for a kick when buffers arrive beyond those the frame did not fit
                    // in, and retry if some came meanwhile. Measured from the queue's own
                    // position, the too-few chains just given back would count as new ones
                    // (a guest offering less room than one frame needs made this loop spin
                    // forever, holding the vring lock), and with EVENT_IDX the guest would
                    // not kick for the buffers that complete the frame.
                    let start = state.get_queue().next_avail();
                    state.get_queue_mut().set_next_avail(avail_seen);
                    let more = reenable_notifications(&mut state, &mem);
                    state.get_queue_mut().set_next_avail(start);
                    if more {
                        continue;
                    }
                    break;
                }
            }
        }
        if unsignalled > 0 {
            notify_used(&mut state, &mem);
        }
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = BackendVring;

    fn num_queues(&self) -> usize {
        usize::from(self.shared.queue_pairs()) * 2
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.shared.queue_size)
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
        if let Err(e) = self.shared.link.set_offload(features) {
            vu_daemon::log_limited!(log::Level::Warn, "cannot set tap offloads: {e}");
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.set(enabled);
    }

    fn reset_device(&self) {
        for rx in &self.rx {
            if let Ok(mut rx) = rx.lock() {
                rx.pending = 0;
            }
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        read_config(self.config().as_slice(), offset, size)
            .unwrap_or_else(|| vec![0; size as usize])
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Every virtio-net config field is read-only for the driver.
        ignore_config_write(offset, buf, log::Level::Debug)
    }

    fn update_memory(&self, mem: BackendMemory) -> io::Result<()> {
        self.mem.update(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.shared.queue_pairs())
            .map(|p| 0b11u64 << (2 * u32::from(p)))
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[BackendVring],
        thread_id: usize,
    ) -> io::Result<()> {
        let pair = u16::try_from(thread_id).unwrap_or(u16::MAX);
        // The thread's vrings: [0] = receive, [1] = transmit of its queue pair.
        let (Some(rx), Some(tx)) = (vrings.first(), vrings.get(1)) else {
            log::debug!("worker {thread_id} has no queue pair");
            return Ok(());
        };
        match u64::from(device_event) {
            0 => self.process_rx(pair, rx),
            1 => self.process_tx(pair, tx),
            id if id == self.link_event_id() => self.process_rx(pair, rx),
            other => log::debug!("unexpected event {other} on worker {thread_id}"),
        }
        Ok(())
    }
}
