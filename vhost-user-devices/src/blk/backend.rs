//! The per-connection vhost-user backend: features, config space, one worker thread per queue.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost_user_backend::{VhostUserBackend, VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vu_daemon::backend_util::{
    self, EventIdx, MemorySlot, RING_FEATURES, ignore_config_write, new_exit_event, notify_used,
    read_config,
};
use vu_daemon::inflight::{self, Tracker, read_chain};
use vu_daemon::ring::Round;
use vu_daemon::{BackendMemory, BackendVring};
use vu_spec::blk::{
    BlkConfig, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
};

use super::disk::Disk;
use super::io_pool::{self, Completion, IoPool, Request, add_used};
use super::request::{
    MAX_DISCARD_SECTORS, MAX_SEGMENTS, MAX_WRITE_ZEROES_SECTORS, Mem, RequestOptions, handle_descs,
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

/// vhost-user protocol features: what vhost-user-backend handles, plus in-flight tracking
/// (crash recovery) and RESET_DEVICE.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    backend_util::protocol_features(true)
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::RESET_DEVICE
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
    /// The in-flight buffer (SET_INFLIGHT_FD), if the frontend gave one.
    inflight: RwLock<Option<Arc<Tracker>>>,
    /// Per queue: the ring (re)started and the in-flight buffer has not been looked at since.
    ring_started: Vec<AtomicBool>,
}

impl BlkBackend {
    pub fn new(disk: Arc<Disk>, settings: DeviceSettings) -> Self {
        let features = device_features(&disk);
        BlkBackend {
            disk: disk.clone(),
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
            inflight: RwLock::new(None),
            ring_started: (0..settings.num_queues)
                .map(|_| AtomicBool::new(true))
                .collect(),
            settings,
        }
    }

    fn tracker(&self) -> Option<Arc<Tracker>> {
        self.inflight.read().ok().and_then(|t| t.clone())
    }

    /// Runs `req` inline (true: its used entry was added) or hands it to the I/O threads.
    fn run(
        &self,
        req: Request,
        opts: RequestOptions,
        done: &Completion,
        state: &mut VringState<BackendMemory>,
    ) -> bool {
        let req = if self.pool.wants(&req) {
            match self.pool.submit(req, opts, done) {
                Ok(()) => return false,
                Err(req) => req,
            }
        } else {
            req
        };
        let used = handle_descs(req.head, &req.descs, &req.mem, &self.disk, opts);
        add_used(
            state,
            &req.mem,
            req.head,
            used,
            done.queue,
            done.tracker.as_deref(),
        )
    }

    /// First look at a (re)started ring with an in-flight buffer: continue after the requests
    /// taken before a crash and run the unfinished ones again, oldest first. True if any
    /// completed inline.
    fn resume(
        &self,
        tracker: &Tracker,
        done: &Completion,
        opts: RequestOptions,
        mem: &Arc<Mem>,
        state: &mut VringState<BackendMemory>,
    ) -> bool {
        let q = done.queue;
        let queue = state.get_queue();
        let (size, table) = (queue.size(), GuestAddress(queue.desc_table()));
        let indices = queue
            .used_idx(&**mem, Ordering::Acquire)
            .and_then(|u| Ok((u.0, queue.avail_idx(&**mem, Ordering::Acquire)?.0)));
        let (ring_used, ring_avail) = match indices {
            Ok(i) => i,
            Err(e) => {
                log::warn!("queue {q}: cannot read the ring indices ({e}); not tracked");
                return false;
            }
        };
        let recovery = match tracker.start(q, size, ring_used, ring_avail) {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                log::warn!("queue {q}: in-flight tracking off: {e}");
                return false;
            }
        };
        let queue = state.get_queue_mut();
        queue.set_next_avail(recovery.next_avail);
        queue.set_next_used(ring_used);
        // The dead backend may have published used entries without signalling them (killed
        // between the used index and the call fd): the driver would wait for them forever.
        // One spurious interrupt is harmless.
        if let Err(e) = state.signal_used_queue() {
            log::warn!("queue {q}: cannot signal the used queue after resuming: {e}");
        }
        if recovery.resubmit.is_empty() {
            log::info!("queue {q}: resumed at used index {ring_used}, nothing in flight");
            return false;
        }
        log::info!(
            "queue {q}: resubmitting {} in-flight request(s) (heads {:?}), used index {ring_used}",
            recovery.resubmit.len(),
            recovery.resubmit
        );
        let mut completed = false;
        for head in recovery.resubmit {
            let descs = read_chain(&**mem, table, size, head);
            let req = Request {
                head,
                descs,
                mem: mem.clone(),
            };
            completed |= self.run(req, opts, done, state);
        }
        completed
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
    fn process_queue(&self, vring: &BackendVring, queue: u16) {
        let Some(mem) = self.mem.get() else { return };
        let event_idx = self.event_idx.get();
        let opts = RequestOptions {
            writethrough: !self.writeback.load(Ordering::Relaxed),
        };
        let done = Completion {
            vring: vring.clone(),
            queue,
            tracker: self.tracker(),
        };
        let mut state = vring.get_mut();
        let mut resumed = false;
        if let (Some(t), Some(started)) = (&done.tracker, self.ring_started.get(usize::from(queue)))
            && state.get_queue().ready()
            && started.swap(false, Ordering::AcqRel)
        {
            resumed = self.resume(t, &done, opts, &mem, &mut state);
        }
        let mut round = Round::new();
        loop {
            if event_idx {
                let _ = state.get_queue_mut().disable_notification(&*mem);
            }
            let mut completed = std::mem::take(&mut resumed);
            while let Some(chain) = round.pop(state.get_queue_mut(), mem.clone()) {
                let head = chain.head_index();
                if let Some(t) = &done.tracker {
                    t.get(queue, head);
                }
                let req = Request {
                    head,
                    descs: chain.collect(),
                    mem: mem.clone(),
                };
                completed |= self.run(req, opts, &done, &mut state);
            }
            if completed {
                notify_used(&mut state, &mem);
            }
            if event_idx && completed && !round.spent() && !self.settings.poll.is_zero() {
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
            if !round.again(&mut state, &mem, event_idx) {
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

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // Requests still running on the I/O threads complete before the ring state is handed
        // back to the frontend.
        self.pool.drain();
        if let Some(started) = self.ring_started.get(queue_index as usize) {
            started.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn reset_device(&self) {
        self.pool.drain();
        // The frontend gives a new buffer (or none) before the rings start again.
        if let Ok(mut t) = self.inflight.write() {
            *t = None;
        }
        for started in &self.ring_started {
            started.store(true, Ordering::Release);
        }
    }

    fn get_inflight_fd(&self, msg: &VhostUserInflight) -> io::Result<(VhostUserInflight, File)> {
        let (reply, file) =
            inflight::allocate(msg, self.settings.num_queues, self.settings.queue_size)?;
        log::info!(
            "in-flight buffer: {} queue(s) of {}, {} bytes",
            reply.num_queues,
            reply.queue_size,
            reply.mmap_size
        );
        Ok((reply, file))
    }

    fn set_inflight_fd(&self, msg: &VhostUserInflight, file: File) -> io::Result<()> {
        let tracker = Tracker::map(
            msg,
            file,
            self.settings.num_queues,
            self.settings.queue_size,
        )
        .inspect_err(|e| log::warn!("SET_INFLIGHT_FD refused: {e}"))?;
        // Drain first: nothing may complete into the previous buffer once it is replaced.
        self.pool.drain();
        let mut slot = self
            .inflight
            .write()
            .map_err(|_| io::Error::other("in-flight lock poisoned"))?;
        *slot = Some(Arc::new(tracker));
        for started in &self.ring_started {
            started.store(true, Ordering::Release);
        }
        Ok(())
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
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            log::debug!("unexpected event set {evset:?} for event {device_event}");
        }
        // One queue per thread: the thread's only vring is index 0, queue `thread_id`.
        match (
            vrings.get(usize::from(device_event)),
            u16::try_from(thread_id),
        ) {
            (Some(vring), Ok(queue)) => self.process_queue(vring, queue),
            _ => log::debug!("event {device_event} is not a queue of this thread"),
        }
        Ok(())
    }
}
