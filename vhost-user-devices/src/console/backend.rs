//! The per-connection vhost-user-console backend (single port): transmitq bytes go to the
//! output sink; queued input fills receiveq buffers when they and input are both there. One
//! worker thread serves both queues and the input eventfd.

use std::io::{self, Read, Write};
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vu_daemon::backend_util::{
    EventIdx, MemorySlot, RING_FEATURES, ignore_config_write, new_exit_event, notify_used,
    protocol_features, read_config,
};
use vu_daemon::ring::Round;
use vu_daemon::{BackendMemory, BackendVring};
use vu_spec::console::{CONSOLE_NUM_QUEUES, CONSOLE_RX_QUEUE, CONSOLE_TX_QUEUE, ConsoleConfig};

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
    mem: MemorySlot,
    event_idx: EventIdx,
}

impl ConsoleBackend {
    pub fn new(io: Arc<ConsoleIo>, queue_size: u16) -> Self {
        ConsoleBackend {
            io,
            queue_size,
            mem: MemorySlot::new(),
            event_idx: EventIdx::new(),
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
        let Some(mem) = self.mem.get() else { return };
        let event_idx = self.event_idx.get();
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return;
        }
        let mut completed = false;
        let mut round = Round::new();
        loop {
            if event_idx {
                let _ = state.get_queue_mut().disable_notification(&*mem);
            }
            while wanted() {
                let Some(chain) = round.pop(state.get_queue_mut(), mem.clone()) else {
                    break;
                };
                let head = chain.head_index();
                let used = if crate::chain::is_complete(&chain) {
                    handle(chain, &mem)
                } else {
                    vu_daemon::log_limited!(
                        log::Level::Warn,
                        "buffer {head}: descriptor chain loops or leaves its table"
                    );
                    0
                };
                if let Err(e) = state.get_queue_mut().add_used(&*mem, head, used) {
                    vu_daemon::log_limited!(
                        log::Level::Error,
                        "cannot complete buffer {head}: {e}"
                    );
                }
                completed = true;
            }
            if !(round.again(&mut state, &mem, event_idx) && wanted()) {
                break;
            }
        }
        if completed {
            notify_used(&mut state, &mem);
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
                    vu_daemon::log_limited!(
                        log::Level::Warn,
                        "transmit buffer {head}: {writable} device-writable descriptor(s) ignored"
                    );
                }
                let mut reader = match chain.reader(mem) {
                    Ok(r) => r,
                    Err(e) => {
                        vu_daemon::log_limited!(
                            log::Level::Warn,
                            "transmit buffer {head}: bad descriptor chain: {e}"
                        );
                        return 0;
                    }
                };
                let mut buf = vec![0u8; reader.available_bytes().min(CHUNK)];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => self.io.output(&buf[..n]),
                        Err(e) => {
                            vu_daemon::log_limited!(
                                log::Level::Warn,
                                "transmit buffer {head}: {e}"
                            );
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
                    vu_daemon::log_limited!(
                        log::Level::Warn,
                        "receive buffer {head}: {readable} device-readable descriptor(s) ignored"
                    );
                }
                let mut writer = match chain.writer(mem) {
                    Ok(w) => w,
                    Err(e) => {
                        vu_daemon::log_limited!(
                            log::Level::Warn,
                            "receive buffer {head}: bad descriptor chain: {e}"
                        );
                        return 0;
                    }
                };
                let room = writer.available_bytes().min(CHUNK);
                if room == 0 {
                    vu_daemon::log_limited!(
                        log::Level::Warn,
                        "receive buffer {head}: no device-writable space"
                    );
                    return 0;
                }
                let data = input.take(room);
                if let Err(e) = writer.write_all(&data) {
                    vu_daemon::log_limited!(
                        log::Level::Warn,
                        "receive buffer {head}: {e}; input lost"
                    );
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
        RING_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features(true)
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.set(enabled);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        read_config(Self::config().as_slice(), offset, size).unwrap_or_default()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // No field is writable without EMERG_WRITE, which is not offered.
        ignore_config_write(offset, buf, log::Level::Debug)
    }

    fn update_memory(&self, mem: BackendMemory) -> io::Result<()> {
        self.mem.update(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // Both queues and the input on one thread: no locking between them.
        vec![(1 << CONSOLE_NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_exit_event()
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
            vu_daemon::log_limited!(log::Level::Error, "console worker without both queues");
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
