//! The per-connection vhost-user-rng backend: one request queue, filled from the entropy
//! source within the rate limit. When the budget is spent the worker arms a timer (registered
//! in its epoll loop) and returns: requests wait in the ring, nothing blocks or spins.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::timerfd::TimerFd;
use vu_daemon::backend_util::{
    EventIdx, MemorySlot, RING_FEATURES, new_exit_event, notify_used, protocol_features,
};
use vu_daemon::ring::Round;
use vu_daemon::{BackendMemory, BackendVring};
use vu_spec::rng::RNG_NUM_QUEUES;

use super::limiter::RateLimiter;

/// Guest memory as the backend maps it.
type Mem = GuestMemoryMmap<()>;

/// Epoll id of the rate-limit timer (ids up to `num_queues` are the library's).
pub const TIMER_EVENT: u16 = RNG_NUM_QUEUES as u16 + 1;
/// Most bytes one request gets (larger buffers are filled partly, as virtio-rng allows).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What every connection shares: the source and the rate limit.
pub struct Entropy {
    source: Mutex<File>,
    limiter: Option<Mutex<RateLimiter>>,
    queue_size: u16,
}

impl Entropy {
    pub fn new(source: File, limiter: Option<RateLimiter>, queue_size: u16) -> Self {
        Entropy {
            source: Mutex::new(source),
            limiter: limiter.map(Mutex::new),
            queue_size,
        }
    }

    /// Reads up to `len` bytes from the source (fewer at end of file).
    fn read(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut src = self
            .source
            .lock()
            .map_err(|_| io::Error::other("source lock poisoned"))?;
        let mut done = 0;
        while done < len {
            match src.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Bytes the rate limit allows now out of `want`, and how long to wait if none.
    fn grant(&self, want: usize) -> (usize, Duration) {
        let Some(l) = &self.limiter else {
            return (want, Duration::ZERO);
        };
        let Ok(mut l) = l.lock() else {
            return (0, Duration::from_millis(100));
        };
        let now = Instant::now();
        let n = l.grant(want as u64, now) as usize;
        (n, l.wait_time(now))
    }
}

/// Serves one frontend connection.
pub struct RngBackend {
    entropy: Arc<Entropy>,
    mem: MemorySlot,
    timer: Mutex<TimerFd>,
    timer_fd: RawFd,
    event_idx: EventIdx,
}

impl RngBackend {
    pub fn new(entropy: Arc<Entropy>) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        let timer_fd = timer.as_raw_fd();
        Ok(RngBackend {
            entropy,
            mem: MemorySlot::new(),
            timer: Mutex::new(timer),
            timer_fd,
            event_idx: EventIdx::new(),
        })
    }

    /// The rate-limit timer, for the worker's epoll loop ([`TIMER_EVENT`]).
    pub fn timer_fd(&self) -> RawFd {
        self.timer_fd
    }

    fn arm_timer(&self, after: Duration) {
        if let Ok(mut t) = self.timer.lock()
            && !t.is_armed().unwrap_or(false)
            && let Err(e) = t.reset(after.max(Duration::from_millis(1)), None)
        {
            vu_daemon::log_limited!(log::Level::Error, "cannot arm the rate-limit timer: {e}");
        }
    }

    /// Fills available requests until the ring is empty or the budget is spent.
    fn process_queue(&self, vring: &BackendVring) {
        let Some(mem) = self.mem.get() else { return };
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return;
        }
        let event_idx = self.event_idx.get();
        let mut completed = false;
        let mut round = Round::new();
        loop {
            if event_idx {
                let _ = state.get_queue_mut().disable_notification(&*mem);
            }
            let limited = self.fill_requests(&mut state, &mem, &mut round, &mut completed);
            // Re-enable notifications; a request that arrived meanwhile is served now.
            if limited || !round.again(&mut state, &mem, event_idx) {
                break;
            }
        }
        if completed {
            notify_used(&mut state, &mem);
        }
    }

    /// Serves requests until the ring is empty (returns false) or the rate limit stops it
    /// (returns true, timer armed).
    fn fill_requests(
        &self,
        state: &mut VringState<BackendMemory>,
        mem: &Arc<Mem>,
        round: &mut Round,
        completed: &mut bool,
    ) -> bool {
        loop {
            let (budget, wait) = self.entropy.grant(MAX_REQUEST_BYTES);
            if budget == 0 {
                // Nothing more this window: leave requests in the ring until the timer fires.
                self.arm_timer(wait);
                return true;
            }
            let Some(chain) = round.pop(state.get_queue_mut(), mem.clone()) else {
                self.entropy.grant_back(budget);
                return false;
            };
            let head = chain.head_index();
            if !crate::chain::is_complete(&chain) {
                self.entropy.grant_back(budget);
                vu_daemon::log_limited!(
                    log::Level::Warn,
                    "request {head}: descriptor chain loops or leaves its table"
                );
                if let Err(e) = state.get_queue_mut().add_used(&**mem, head, 0) {
                    vu_daemon::log_limited!(
                        log::Level::Error,
                        "cannot complete request {head}: {e}"
                    );
                }
                *completed = true;
                continue;
            }
            let readable = chain.clone().readable().count();
            if readable > 0 {
                vu_daemon::log_limited!(
                    log::Level::Warn,
                    "request {head}: {readable} device-readable descriptor(s) ignored"
                );
            }
            let written = match chain.writer(&**mem) {
                Ok(mut w) => {
                    let want = w.available_bytes().min(budget);
                    if want == 0 {
                        vu_daemon::log_limited!(
                            log::Level::Warn,
                            "request {head}: no device-writable buffer"
                        );
                    }
                    self.entropy.grant_back(budget - want);
                    match self.entropy.read(want) {
                        Ok(bytes) => {
                            if bytes.len() < want {
                                vu_daemon::log_limited!(
                                    log::Level::Warn,
                                    "request {head}: entropy source gave {} of {want} bytes",
                                    bytes.len()
                                );
                            }
                            if let Err(e) = w.write_all(&bytes) {
                                vu_daemon::log_limited!(
                                    log::Level::Warn,
                                    "request {head}: cannot write guest buffer: {e}"
                                );
                            }
                            w.bytes_written()
                        }
                        Err(e) => {
                            vu_daemon::log_limited!(
                                log::Level::Error,
                                "request {head}: entropy source: {e}"
                            );
                            0
                        }
                    }
                }
                Err(e) => {
                    self.entropy.grant_back(budget);
                    vu_daemon::log_limited!(
                        log::Level::Warn,
                        "request {head}: bad descriptor chain: {e}"
                    );
                    0
                }
            };
            let used = u32::try_from(written).unwrap_or(u32::MAX);
            if let Err(e) = state.get_queue_mut().add_used(&**mem, head, used) {
                vu_daemon::log_limited!(log::Level::Error, "cannot complete request {head}: {e}");
            }
            *completed = true;
        }
    }
}

impl Entropy {
    /// Returns budget taken by [`grant`](Self::grant) but not used.
    fn grant_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(l) = &self.limiter
            && let Ok(mut l) = l.lock()
        {
            l.give_back(n as u64);
        }
    }
}

impl VhostUserBackend for RngBackend {
    type Bitmap = ();
    type Vring = BackendVring;

    fn num_queues(&self) -> usize {
        RNG_NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.entropy.queue_size)
    }

    fn features(&self) -> u64 {
        RING_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features(false)
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.set(enabled);
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
        _evset: EventSet,
        vrings: &[BackendVring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if device_event == TIMER_EVENT {
            if let Ok(mut t) = self.timer.lock() {
                // Non-blocking in effect: epoll said the timer expired.
                let _ = t.wait();
            }
        } else if usize::from(device_event) >= RNG_NUM_QUEUES {
            log::debug!("unexpected event {device_event}");
            return Ok(());
        }
        if let Some(vring) = vrings.first() {
            self.process_queue(vring);
        }
        Ok(())
    }
}
