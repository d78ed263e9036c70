//! The per-connection vhost-user backend: features, config space, one worker thread per queue.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use protocol::daemon::backend_util::{
    self, EventIdx, MemorySlot, RING_FEATURES, ignore_config_write, new_exit_event, notify_used,
    read_config, reenable_notifications,
};
use protocol::daemon::ring::pop_chain;
use protocol::daemon::{BackendMemory, BackendVring};
use protocol::devices::blk::{
    BlkConfig, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::disk::Disk;
use super::io_pool::{self, IoPool};
use super::request;
use super::request::{
    MAX_DISCARD_SECTORS, MAX_SEGMENTS, MAX_WRITE_ZEROES_SECTORS, Mem, RequestOptions,
};

/// I/O threads per connection for large requests. More than this machine's cores on purpose:
/// large transfers are copy bound, and on a busy host CPU time is shared per thread (measured:
/// 1 MiB reads at QD8 went from ~3.5 to ~8 GB/s on 2 loaded cores with 8 threads instead of 2).
const IO_THREADS: usize = 8;

/// Byte offset of `writeback` in the config space: the only field the driver may write.
const WRITEBACK_OFFSET: usize = std::mem::offset_of!(BlkConfig, writeback);

/// What the command line decided about the device (shared by every connection).
#[derive(Clone, Debug)]
pub struct DeviceSettings {
    pub num_queues: u16,
    pub queue_size: u16,
    /// How long a busy queue's worker watches for new requests before sleeping (0: never).
    pub poll: Duration,
}

/// Watches the avail index at `addr` for up to `budget`; true once it moved past `seen`.
fn poll_avail(mem: &Mem, addr: GuestAddress, seen: u16, budget: Duration) -> bool {
    let deadline = Instant::now() + budget;
    loop {
        match mem.load::<u16>(addr, std::sync::atomic::Ordering::Acquire) {
            Ok(idx) if u16::from_le(idx) != seen => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Let a driver thread sharing this core run.
        std::thread::yield_now();
    }
}

/// Virtio features the device offers for `disk`.
pub fn device_features(disk: &Disk) -> u64 {
    let mut f = RING_FEATURES
        | (1 << VIRTIO_BLK_F_SEG_MAX)
        | (1 << VIRTIO_BLK_F_BLK_SIZE)
        | (1 << VIRTIO_BLK_F_FLUSH)
        | (1 << VIRTIO_BLK_F_MQ)
        | (1 << VIRTIO_BLK_F_CONFIG_WCE);
    if disk.read_only() {
        f |= 1 << VIRTIO_BLK_F_RO;
    } else {
        f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
    }
    f
}

/// vhost-user protocol features: only what vhost-user-backend really handles.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    backend_util::protocol_features(true)
}

/// Serves one frontend connection.
pub struct BlkBackend {
    disk: Arc<Disk>,
    settings: DeviceSettings,
    features: u64,
    event_idx: EventIdx,
    /// Config `writeback`: false = write-through (fdatasync after every write).
    writeback: AtomicBool,
    mem: MemorySlot,
    /// I/O threads for large requests (all data requests with O_DIRECT).
    pool: IoPool,
}

impl BlkBackend {
    pub fn new(disk: Arc<Disk>, settings: DeviceSettings) -> Self {
        let features = device_features(&disk);
        BlkBackend {
            disk: disk.clone(),
            settings,
            features,
            event_idx: EventIdx::new(),
            writeback: AtomicBool::new(true),
            mem: MemorySlot::new(),
            pool: IoPool::new(
                disk.clone(),
                IO_THREADS,
                if disk.direct() {
                    io_pool::OFFLOAD_MIN_BYTES_DIRECT
                } else {
                    io_pool::OFFLOAD_MIN_BYTES
                },
            ),
        }
    }

    /// The config space as the driver reads it now.
    pub fn config(&self) -> BlkConfig {
        let max_segments = u32::from(self.settings.queue_size.saturating_sub(2)).max(1);
        BlkConfig {
            capacity: self.disk.sectors().to_le(),
            seg_max: max_segments.to_le(),
            blk_size: 512u32.to_le(),
            writeback: u8::from(self.writeback.load(Ordering::Relaxed)),
            num_queues: self.settings.num_queues.to_le(),
            max_discard_sectors: MAX_DISCARD_SECTORS.to_le(),
            max_discard_seg: MAX_SEGMENTS.to_le(),
            discard_sector_alignment: 1u32.to_le(),
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS.to_le(),
            max_write_zeroes_seg: MAX_SEGMENTS.to_le(),
            write_zeroes_may_unmap: 1,
            ..Default::default()
        }
    }

    /// Completes every available request of `vring`, then notifies the driver once (if it
    /// asked to be). With EVENT_IDX, loops until no request arrived while re-enabling
    /// notifications.
    fn process_queue(&self, vring: &BackendVring) {
        let Some(mem) = self.mem.get() else { return };
        let event_idx = self.event_idx.get();
        let opts = RequestOptions {
            writethrough: !self.writeback.load(Ordering::Relaxed),
        };
        let mut state = vring.get_mut();
        loop {
            if event_idx {
                let _ = state.get_queue_mut().disable_notification(&*mem);
            }
            let mut completed = false;
            while let Some(chain) = pop_chain(state.get_queue_mut(), mem.clone()) {
                let chain = if self.pool.wants(&chain) {
                    match self.pool.submit(chain, opts, vring) {
                        Ok(()) => continue,
                        Err(chain) => chain,
                    }
                } else {
                    chain
                };
                let head = chain.head_index();
                let used = request::handle_chain(chain, &mem, &self.disk, opts);
                if let Err(e) = state.get_queue_mut().add_used(&*mem, head, used) {
                    protocol::log_limited!(
                        log::Level::Error,
                        "cannot complete request {head}: {e}"
                    );
                }
                completed = true;
            }
            if completed {
                notify_used(&mut state, &mem);
            }
            if !event_idx {
                break;
            }
            if completed && !self.settings.poll.is_zero() {
                // The driver is busy with short requests: it will likely submit again soon.
                // (Not after offloading only: the I/O threads need the CPU more.) Watching the avail
                // index for a moment (ring lock released, so I/O threads can complete) saves
                // it a kick and us a wake-up.
                let queue = state.get_queue();
                let (avail_idx, seen) = (GuestAddress(queue.avail_ring() + 2), queue.next_avail());
                drop(state);
                let more = poll_avail(&mem, avail_idx, seen, self.settings.poll);
                state = vring.get_mut();
                if more {
                    continue;
                }
            }
            if !reenable_notifications(&mut state, &mem) {
                break;
            }
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = BackendVring;

    fn num_queues(&self) -> usize {
        usize::from(self.settings.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.settings.queue_size)
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn stop_vring(&self, _queue_index: u32) -> io::Result<()> {
        // Requests still running on the I/O threads complete before the ring state is handed
        // back to the frontend.
        self.pool.drain();
        Ok(())
    }

    fn reset_device(&self) {
        self.pool.drain();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.set(enabled);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        read_config(self.config().as_slice(), offset, size).unwrap_or_default()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        if offset as usize == WRITEBACK_OFFSET && buf.len() == 1 {
            let wb = buf[0] != 0;
            log::info!(
                "cache mode set to {}",
                if wb { "writeback" } else { "writethrough" }
            );
            self.writeback.store(wb, Ordering::Relaxed);
            return Ok(());
        }
        // Writes to read-only fields are ignored, as virtio-blk devices do.
        ignore_config_write(offset, buf, log::Level::Warn)
    }

    fn update_memory(&self, mem: BackendMemory) -> io::Result<()> {
        self.mem.update(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.settings.num_queues).map(|q| 1u64 << q).collect()
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
        // One queue per thread: the thread's only vring is index 0.
        match vrings.get(usize::from(device_event)) {
            Some(vring) => self.process_queue(vring),
            None => log::debug!("event {device_event} is not a queue of this thread"),
        }
        Ok(())
    }
}
