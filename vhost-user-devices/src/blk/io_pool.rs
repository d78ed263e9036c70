//! Where requests run: small ones inline on the queue's worker thread (the 4K fast path, no
//! hand-off at all); large ones on a small pool of persistent I/O threads, which complete them
//! straight into the used ring. Large transfers are memory-copy bound, so two cores copy
//! faster than one, and the worker keeps taking new requests meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;
use virtio_queue::desc::split::Descriptor;
use vu_daemon::backend_util::notify_used;
use vu_daemon::inflight::Tracker;
use vu_daemon::sandbox::Allow;
use vu_daemon::{BackendMemory, BackendVring};

use super::disk::Disk;
use super::request::{Mem, RequestOptions, handle_descs};

/// Requests moving at least this many bytes go to the I/O threads (page-cache I/O: small
/// requests are cheaper inline).
pub const OFFLOAD_MIN_BYTES: u64 = 64 << 10;
/// With O_DIRECT every data request may wait for the device: all of them go to the I/O
/// threads, so that many are in flight at once.
pub const OFFLOAD_MIN_BYTES_DIRECT: u64 = 1;

/// One request: its head, its descriptors (read once, from the avail ring or, when
/// resubmitted after a reconnect, from the in-flight buffer's head) and the guest memory they
/// point into, so it can move between threads.
pub struct Request {
    pub head: u16,
    pub descs: Vec<Descriptor>,
    pub mem: Arc<Mem>,
}

/// Where a request completes: its ring and, with in-flight tracking, the buffer to update.
#[derive(Clone)]
pub struct Completion {
    pub vring: BackendVring,
    /// The queue's index (its slot in the in-flight buffer).
    pub queue: u16,
    pub tracker: Option<Arc<Tracker>>,
}

struct Job {
    req: Request,
    opts: RequestOptions,
    done: Completion,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Jobs queued or running.
    in_flight: usize,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued or shutdown is requested.
    work: Condvar,
    /// Signalled when `in_flight` drops to zero.
    idle: Condvar,
}

/// Persistent I/O threads of one backend (one connection), shared by all its queues, started
/// by the first request that goes to them (a connection that never sends one, such as a
/// probe or a guest that only reads its partition table, costs no thread). Dropping the pool
/// lets the threads finish what is queued and exit.
pub struct IoPool {
    shared: Arc<Shared>,
    disk: Arc<Disk>,
    threads: usize,
    /// How many threads really started (set by the first [`submit`](Self::submit)).
    started: OnceLock<usize>,
    min_bytes: u64,
}

/// Adds the used entry of `head` (in-flight buffer updated around it, in the order that lets a
/// restarted backend tell whether the entry was published); false (logged) if it could not.
pub fn add_used(
    state: &mut VringState<BackendMemory>,
    mem: &Mem,
    head: u16,
    used: u32,
    queue: u16,
    tracker: Option<&Tracker>,
) -> bool {
    if let Some(t) = tracker {
        t.pre_put(queue, head);
    }
    if let Err(e) = state.get_queue_mut().add_used(mem, head, used) {
        vu_daemon::log_limited!(log::Level::Error, "cannot complete request {head}: {e}");
        return false;
    }
    if let Some(t) = tracker {
        t.post_put(queue, head, state.get_queue().next_used());
    }
    true
}

impl Completion {
    /// Adds a used entry and signals the driver if it wants to hear about it.
    pub fn complete(&self, mem: &Mem, head: u16, used: u32) {
        let mut state = self.vring.get_mut();
        if add_used(
            &mut state,
            mem,
            head,
            used,
            self.queue,
            self.tracker.as_deref(),
        ) {
            notify_used(&mut state, mem);
        }
    }
}

impl IoPool {
    /// A pool of up to `threads` threads (0 runs everything inline) for requests of at least
    /// `min_bytes` of data; none starts before the first such request.
    pub fn new(disk: Arc<Disk>, threads: usize, min_bytes: u64) -> Self {
        IoPool {
            shared: Arc::new(Shared::default()),
            disk,
            threads,
            started: OnceLock::new(),
            min_bytes,
        }
    }

    /// Starts the threads on first use (fewer if the system refuses); returns how many run.
    fn start(&self) -> usize {
        *self.started.get_or_init(|| {
            let mut started = 0;
            for _ in 0..self.threads {
                let (shared, disk) = (self.shared.clone(), self.disk.clone());
                let spawned = std::thread::Builder::new()
                    .name("blk-io".into())
                    .spawn(move || io_thread(&shared, &disk));
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => {
                        vu_daemon::log_limited!(
                            log::Level::Warn,
                            "cannot start an I/O thread ({e}); continuing with fewer"
                        );
                        break;
                    }
                }
            }
            started
        })
    }

    /// Whether `req` should run on the pool rather than inline.
    pub fn wants(&self, req: &Request) -> bool {
        if self.threads == 0 {
            return false;
        }
        // Header and status descriptors count too: at most 17 bytes of slack.
        let mut total = 0u64;
        for d in &req.descs {
            total += u64::from(d.len());
            if total >= self.min_bytes.saturating_add(17) {
                return true;
            }
        }
        false
    }

    /// Queues `req`; an I/O thread executes it and completes it through `done`. Gives the
    /// request back if the pool is unusable (no thread could start), for the caller to run
    /// inline.
    pub fn submit(
        &self,
        req: Request,
        opts: RequestOptions,
        done: &Completion,
    ) -> Result<(), Request> {
        if self.start() == 0 {
            return Err(req);
        }
        match self.shared.state.lock() {
            Ok(mut s) if !s.shutdown => {
                s.jobs.push_back(Job {
                    req,
                    opts,
                    done: done.clone(),
                });
                s.in_flight += 1;
            }
            _ => return Err(req),
        }
        self.shared.work.notify_one();
        Ok(())
    }

    /// Waits until every queued or running request has completed (ring stop, reset).
    pub fn drain(&self) {
        let Ok(mut s) = self.shared.state.lock() else {
            return;
        };
        while s.in_flight > 0 {
            s = match self.shared.idle.wait(s) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.shutdown = true;
        }
        self.shared.work.notify_all();
    }
}

/// The I/O threads' kind of the allow-list (on top of the process's): I/O on the open image,
/// signalling the guest (eventfd write), waiting for work; no sockets, no memory-table
/// handling. glibc's malloc opens /sys/devices/system/cpu/online for a new arena.
const IO_THREAD_SYSCALLS: &[Allow] = &[
    Allow::Any("preadv"),
    Allow::Any("pwritev"),
    Allow::Any("pread64"),
    Allow::Any("pwrite64"),
    Allow::Any("fdatasync"),
    Allow::Any("fsync"),
    Allow::Any("fallocate"),
    Allow::ArgEq("ioctl", 1, super::disk::BLKDISCARD as u32),
    Allow::ArgEq("ioctl", 1, super::disk::BLKZEROOUT as u32),
    Allow::Any("read"),
    Allow::Any("futex"),
    Allow::Any("mmap"),
    Allow::Any("munmap"),
    Allow::Any("mprotect"),
    Allow::Any("madvise"),
    Allow::Any("brk"),
    Allow::Any("openat"),
    Allow::Any("close"),
    Allow::Any("sigaltstack"),
    Allow::Any("sched_getaffinity"),
    Allow::Any("sched_yield"),
    Allow::Any("set_robust_list"),
    Allow::Any("rseq"),
    Allow::Any("clock_gettime"),
];

fn io_thread(shared: &Shared, disk: &Disk) {
    if let Err(e) = vu_daemon::sandbox::confine_thread(IO_THREAD_SYSCALLS) {
        vu_daemon::log_limited!(log::Level::Warn, "I/O thread: not narrowed: {e}");
    }
    loop {
        let job = {
            let Ok(mut s) = shared.state.lock() else {
                return;
            };
            loop {
                if let Some(job) = s.jobs.pop_front() {
                    break job;
                }
                if s.shutdown {
                    return;
                }
                s = match shared.work.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        };
        let Request { head, descs, mem } = job.req;
        let used = handle_descs(head, &descs, &mem, disk, job.opts);
        job.done.complete(&mem, head, used);
        if let Ok(mut s) = shared.state.lock() {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                shared.idle.notify_all();
            }
        }
    }
}
