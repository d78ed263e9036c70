//! The per-connection vhost-user-console backend (single port): transmitq bytes go to the
//! output sink; queued input fills receiveq buffers when they and input are both there. One
//! worker thread serves both queues and the input eventfd.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use protocol::daemon::{BackendMemory, BackendVring};
use protocol::devices::console::{
    CONSOLE_CONFIG_SIZE, CONSOLE_NUM_QUEUES, CONSOLE_RX_QUEUE, CONSOLE_TX_QUEUE, ConsoleConfig,
};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::io::ConsoleIo;

/// Guest memory as the backend maps it.
type Mem = GuestMemoryMmap<()>;
type Chain = DescriptorChain<Arc<Mem>>;

/// Epoll id of the input eventfd (ids up to `num_queues` are the library's).
pub const INPUT_EVENT: u16 = CONSOLE_NUM_QUEUES as u16 + 1;
/// Most bytes moved per chain in one step.
const CHUNK: usize = 64 * 1024;

/// Serves one frontend connection.
pub struct ConsoleBackend {
    io: Arc<ConsoleIo>,
    queue_size: u16,
    mem: RwLock<BackendMemory>,
    event_idx: AtomicBool,
}

impl ConsoleBackend {
    pub fn new(io: Arc<ConsoleIo>, queue_size: u16) -> Self {
        ConsoleBackend {
            io,
            queue_size,
            mem: RwLock::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
            event_idx: AtomicBool::new(false),
        }
    }

    /// The config space: one port, no size.
    pub fn config() -> ConsoleConfig {
        ConsoleConfig {
            cols: 0,
            rows: 0,
            max_nr_ports: 1u32.to_le(),
            emerg_wr: 0,
        }
    }

    /// Pops chains of `vring` while `wanted()` and completes each with `handle`'s used length;
    /// then notifies the driver if it asked to be. With EVENT_IDX, loops until no chain
    /// arrived while re-enabling notifications.
    fn process(
        &self,
        vring: &BackendVring,
        wanted: impl Fn() -> bool,
        mut handle: impl FnMut(Chain, &Mem) -> u32,
    ) {
        let atomic = match self.mem.read() {
            Ok(m) => m.clone(),
            Err(_) => return,
        };
        let mem = atomic.memory().into_inner();
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return;
        }
        let mut completed = false;
        loop {
            if event_idx {
                let _ = state.get_queue_mut().disable_notification(&*mem);
            }
            while wanted() {
                let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                    break;
                };
                let head = chain.head_index();
                let used = if crate::chain::is_complete(&chain) {
                    handle(chain, &mem)
                } else {
                    log::warn!("buffer {head}: descriptor chain loops or leaves its table");
                    0
                };
                if let Err(e) = state.get_queue_mut().add_used(&*mem, head, used) {
                    log::error!("cannot complete buffer {head}: {e}");
                }
                completed = true;
            }
            if !event_idx {
                break;
            }
            match state.get_queue_mut().enable_notification(&*mem) {
                Ok(true) if wanted() => continue,
                Ok(_) => break,
                Err(e) => {
                    log::warn!("cannot enable notifications: {e}");
                    break;
                }
            }
        }
        if completed {
            let notify = state
                .get_queue_mut()
                .needs_notification(&*mem)
                .unwrap_or(true);
            if notify && let Err(e) = state.signal_used_queue() {
                log::error!("cannot signal the used queue: {e}");
            }
        }
    }

    /// transmitq: everything the driver wrote goes to the output.
    fn transmit(&self, vring: &BackendVring) {
        self.process(
            vring,
            || true,
            |chain, mem| {
                let head = chain.head_index();
                let writable = chain.clone().writable().count();
                if writable > 0 {
                    log::warn!(
                        "transmit buffer {head}: {writable} device-writable descriptor(s) ignored"
                    );
                }
                let mut reader = match chain.reader(mem) {
                    Ok(r) => r,
                    Err(e) => {
                        log::warn!("transmit buffer {head}: bad descriptor chain: {e}");
                        return 0;
                    }
                };
                let mut buf = vec![0u8; reader.available_bytes().min(CHUNK)];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => self.io.output(&buf[..n]),
                        Err(e) => {
                            log::warn!("transmit buffer {head}: {e}");
                            break;
                        }
                    }
                }
                0
            },
        );
    }

    /// receiveq: queued input into the driver's buffers, while there is some.
    fn receive(&self, vring: &BackendVring) {
        let input = self.io.input().clone();
        self.process(
            vring,
            || !input.is_empty(),
            |chain, mem| {
                let head = chain.head_index();
                let readable = chain.clone().readable().count();
                if readable > 0 {
                    log::warn!(
                        "receive buffer {head}: {readable} device-readable descriptor(s) ignored"
                    );
                }
                let mut writer = match chain.writer(mem) {
                    Ok(w) => w,
                    Err(e) => {
                        log::warn!("receive buffer {head}: bad descriptor chain: {e}");
                        return 0;
                    }
                };
                let room = writer.available_bytes().min(CHUNK);
                if room == 0 {
                    log::warn!("receive buffer {head}: no device-writable space");
                    return 0;
                }
                let data = input.take(room);
                if let Err(e) = writer.write_all(&data) {
                    log::warn!("receive buffer {head}: {e}; input lost");
                }
                u32::try_from(writer.bytes_written()).unwrap_or(u32::MAX)
            },
        );
    }
}

impl VhostUserBackend for ConsoleBackend {
    type Bitmap = ();
    type Vring = BackendVring;

    fn num_queues(&self) -> usize {
        CONSOLE_NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = Self::config();
        let bytes = config.as_slice();
        let start = offset as usize;
        if start > CONSOLE_CONFIG_SIZE {
            log::debug!("config read at {offset} beyond the config space");
            return Vec::new();
        }
        let end = start.saturating_add(size as usize).min(CONSOLE_CONFIG_SIZE);
        let mut out = bytes[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // An error would drop the connection: ignore writes (no field is writable without
        // EMERG_WRITE, which is not offered).
        log::debug!("config write at {offset} ({} bytes) ignored", buf.len());
        Ok(())
    }

    fn update_memory(&self, mem: BackendMemory) -> io::Result<()> {
        match self.mem.write() {
            Ok(mut m) => {
                *m = mem;
                Ok(())
            }
            Err(_) => Err(io::Error::other("memory lock poisoned")),
        }
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // Both queues and the input on one thread: no locking between them.
        vec![(1 << CONSOLE_NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                log::error!("cannot create an exit event: {e}");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[BackendVring],
        _thread_id: usize,
    ) -> io::Result<()> {
        let (Some(rx), Some(tx)) = (vrings.get(CONSOLE_RX_QUEUE), vrings.get(CONSOLE_TX_QUEUE))
        else {
            log::error!("console worker without both queues");
            return Ok(());
        };
        match device_event {
            e if usize::from(e) == CONSOLE_TX_QUEUE => self.transmit(tx),
            e if usize::from(e) == CONSOLE_RX_QUEUE => self.receive(rx),
            INPUT_EVENT => {
                self.io.input().clear_ready();
                self.receive(rx);
            }
            other => log::debug!("unexpected event {other}"),
        }
        Ok(())
    }
}
