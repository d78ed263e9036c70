//! The per-device control thread: every round trip to a device model (a backend process that
//! may stop answering) runs here, in the order the guest asked for it, never on a vCPU thread.
//!
//! - Guest config reads are served from a cache of the whole config space, fetched once
//!   before the VM runs and again after each reconnect; guest config writes update the cache
//!   at once and are forwarded in the background.
//! - DRIVER_OK, reset and queue vector moves are queued as [`Command`]s; the guest sees them
//!   done at once, except a reset: device_status reads back non-zero until the backend has
//!   stopped the rings (virtio 1.2 §4.1.4.3.2: the driver waits for 0 before reinitializing;
//!   Linux polls with msleep, so no vCPU waits), because until then the backend may still
//!   write to memory the guest is about to reuse. Each activation is followed by a kick of
//!   its queues (a guest kick that came before the backend had the ring is not lost).
//! - A backend that stops answering (SIGSTOP, deadlock) is not declared dead by a timer: this
//!   thread waits in its request and the queue grows, bounded by coalescing (a reset drops
//!   what was queued before it; vector moves and config writes merge), so a guest cannot make
//!   it grow without limit. When the backend answers again the queue drains.
//! - A request that finds the backend gone (it hung up) is kept, coalesced the same way, and
//!   replayed after the monitor ([`super::monitor`]) reconnected; an activation is then
//!   resumed from the used rings' indices. A reset forgets them. Every byte the guest ever
//!   wrote to config space is sent again to each new backend (before the config is fetched
//!   again), so a restarted backend keeps e.g. the guest's cache mode.
//!
//! Locks: the vCPU thread holds the device lock and takes only the queue lock (never held
//! across a request). This thread holds the backend lock during one request and takes the
//! device lock only after releasing it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::backend::{ActiveQueue, BackendError, VirtioBackend};
use super::device::VirtioPciDevice;

/// How long dropping a control (VM exit) waits for its thread before leaving it behind (it
/// may be waiting on a backend that does not answer).
const STOP_WAIT: Duration = Duration::from_secs(1);
/// Log lines a device's control thread writes per [`LOG_WINDOW`] at most (the guest causes
/// them: e.g. config writes while the backend is away).
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// A queue's setup as the driver left it at DRIVER_OK, with its own copies of the event fds.
#[derive(Debug)]
pub(super) struct OwnedQueue {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    pub kick: EventFd,
    pub call: EventFd,
}

/// One request for the device model.
#[derive(Debug)]
pub(super) enum Command {
    Activate {
        features: u64,
        queues: Vec<OwnedQueue>,
        /// Retried after a reconnect: rings start at the used index.
        resume: bool,
    },
    Reset,
    SetQueueCall {
        index: u16,
        call: EventFd,
    },
    /// Guest-written config bytes (`None`: not written), merged in order.
    WriteConfig(Vec<Option<u8>>),
    /// The monitor reconnected the backend: refresh the config cache, replay what failed.
    Reconnected,
    /// Answered when every earlier command is done (or parked for a reconnect).
    Flush(SyncSender<()>),
}

/// Index after the last command that starts a new device life (reset, activation): later
/// commands of the same kind may be merged into the ones after it.
fn merge_start(q: &VecDeque<Command>) -> usize {
    q.iter()
        .rposition(|c| matches!(c, Command::Reset | Command::Activate { .. }))
        .map_or(0, |i| i + 1)
}

/// Appends `cmd`, coalescing so the queue stays bounded whatever the guest does: at most one
/// reset, one activation (the device activates once per reset), one call fd per queue, two
/// config write sets (before and after the reset), one reconnect notice, plus flush waiters.
pub(super) fn push_coalesced(q: &mut VecDeque<Command>, cmd: Command) {
    match cmd {
        Command::Reset => {
            forget_device_life(q);
            q.push_back(Command::Reset);
        }
        Command::Reconnected => {
            if !q.iter().any(|c| matches!(c, Command::Reconnected)) {
                q.push_back(Command::Reconnected);
            }
        }
        Command::SetQueueCall { index, call } => {
            let start = merge_start(q);
            let existing = q.iter_mut().skip(start).find_map(|c| match c {
                Command::SetQueueCall { index: i, call } if *i == index => Some(call),
                _ => None,
            });
            match existing {
                Some(slot) => *slot = call,
                None => q.push_back(Command::SetQueueCall { index, call }),
            }
        }
        Command::WriteConfig(bytes) => {
            let start = merge_start(q);
            let existing = q.iter_mut().skip(start).find_map(|c| match c {
                Command::WriteConfig(b) => Some(b),
                _ => None,
            });
            match existing {
                Some(old) => merge_writes(old, bytes),
                None => q.push_back(Command::WriteConfig(bytes)),
            }
        }
        c => q.push_back(c),
    }
}

/// What a reset makes moot: the activation and call fds of the device life it ends. Config
/// writes stay (merged into one: config space outlives a reset), and so do reconnect notices
/// and flush waiters.
fn forget_device_life(q: &mut VecDeque<Command>) {
    let mut kept = VecDeque::new();
    let mut write_at = None;
    for c in q.drain(..) {
        match c {
            Command::Reconnected | Command::Flush(_) => kept.push_back(c),
            Command::WriteConfig(bytes) => match write_at {
                Some(i) => {
                    if let Some(Command::WriteConfig(old)) = kept.get_mut(i) {
                        merge_writes(old, bytes);
                    }
                }
                None => {
                    write_at = Some(kept.len());
                    kept.push_back(Command::WriteConfig(bytes));
                }
            },
            Command::Activate { .. } | Command::Reset | Command::SetQueueCall { .. } => {}
        }
    }
    *q = kept;
}

fn merge_writes(old: &mut Vec<Option<u8>>, new: Vec<Option<u8>>) {
    if old.len() < new.len() {
        old.resize(new.len(), None);
    }
    for (o, n) in old.iter_mut().zip(new) {
        if n.is_some() {
            *o = n;
        }
    }
}

#[derive(Default)]
struct Queue {
    commands: VecDeque<Command>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Resets asked for (counted under the queue lock) and carried out.
    resets_requested: AtomicU64,
    resets_done: AtomicU64,
    ready: Condvar,
    /// The device-specific config space as the guest reads it.
    cache: Mutex<Vec<u8>>,
    /// The device this control serves (set once it exists).
    device: OnceLock<Weak<Mutex<VirtioPciDevice>>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn push(&self, cmd: Command) {
        let mut q = lock(&self.queue);
        if matches!(cmd, Command::Reset) {
            self.resets_requested.fetch_add(1, Ordering::SeqCst);
        }
        push_coalesced(&mut q.commands, cmd);
        drop(q);
        self.ready.notify_one();
    }

    fn with_device(&self, f: impl FnOnce(&mut VirtioPciDevice)) {
        if let Some(dev) = self.device.get().and_then(Weak::upgrade) {
            f(&mut dev.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }
}

/// A handle that can wait for the control thread (tests, diagnostics).
#[derive(Clone)]
pub struct ControlHandle(Arc<Shared>);

impl ControlHandle {
    /// Waits until every command queued so far has been tried; false after `timeout` (the
    /// backend does not answer). Do not hold the device lock while waiting.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = sync_channel(1);
        self.0.push(Command::Flush(tx));
        rx.recv_timeout(timeout).is_ok()
    }

    /// Commands waiting (not counting the one in progress).
    pub fn queued(&self) -> usize {
        lock(&self.0.queue).commands.len()
    }
}

/// The control side of one device: its thread, queue and config cache.
pub struct BackendControl {
    shared: Arc<Shared>,
    config_size: u32,
    /// Disconnects when the thread ends (a Mutex: the device must be Sync).
    exited: Mutex<Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BackendControl {
    /// Fetches the config space (on this thread: call before the VM runs) and starts the
    /// control thread for `backend`.
    pub fn spawn(
        name: &str,
        backend: Arc<Mutex<dyn VirtioBackend>>,
        config_size: u32,
    ) -> std::io::Result<Self> {
        let cache = fetch(&mut *lock(&backend), config_size).unwrap_or_else(|e| {
            log::warn!("{name}: reading the device config: {e}; the guest sees zeros");
            vec![0; config_size as usize]
        });
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            resets_requested: AtomicU64::new(0),
            resets_done: AtomicU64::new(0),
            ready: Condvar::new(),
            cache: Mutex::new(cache),
            device: OnceLock::new(),
        });
        let (exit_tx, exited) = channel::<()>();
        let worker = Worker {
            name: name.to_string(),
            shared: shared.clone(),
            backend,
            config_size,
            parked: VecDeque::new(),
            written: vec![None; config_size as usize],
            log: LogLimit::default(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("ctl-{name}"))
            .spawn(move || {
                let _exit = exit_tx;
                worker.run();
            })?;
        Ok(BackendControl {
            shared,
            config_size,
            exited: Mutex::new(exited),
            thread: Some(thread),
        })
    }

    /// Tells the control thread which device to report to.
    pub(super) fn bind(&self, device: Weak<Mutex<VirtioPciDevice>>) {
        let _ = self.shared.device.set(device);
    }

    pub fn handle(&self) -> ControlHandle {
        ControlHandle(self.shared.clone())
    }

    pub(super) fn push(&self, cmd: Command) {
        self.shared.push(cmd);
    }

    /// A reset was asked for and the backend has not carried it out yet.
    pub fn reset_pending(&self) -> bool {
        self.shared.resets_requested.load(Ordering::SeqCst)
            != self.shared.resets_done.load(Ordering::SeqCst)
    }

    /// A guest config read: from the cache, never from the backend.
    pub fn read_config(&self, offset: u32, data: &mut [u8]) {
        let cache = lock(&self.shared.cache);
        for (i, b) in data.iter_mut().enumerate() {
            *b = cache.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    /// A guest config write: visible in the cache at once, forwarded in the background.
    pub fn write_config(&self, offset: u32, data: &[u8]) {
        let mut bytes = vec![None; self.config_size as usize];
        {
            let mut cache = lock(&self.shared.cache);
            for (i, &b) in data.iter().enumerate() {
                let at = offset as usize + i;
                if let (Some(c), Some(w)) = (cache.get_mut(at), bytes.get_mut(at)) {
                    *c = b;
                    *w = Some(b);
                }
            }
        }
        self.push(Command::WriteConfig(bytes));
    }
}

impl Drop for BackendControl {
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.ready.notify_one();
        // The thread may be blocked on a backend that never answers: do not hang the VMM's
        // exit on it.
        match lock(&self.exited).recv_timeout(STOP_WAIT) {
            Err(RecvTimeoutError::Timeout) => {
                log::debug!("control thread still waits on its backend; leaving it");
            }
            _ => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

fn fetch(backend: &mut dyn VirtioBackend, size: u32) -> Result<Vec<u8>, BackendError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut bytes = backend.fetch_config(size)?;
    bytes.resize(size as usize, 0);
    Ok(bytes)
}

/// At most [`LOG_BURST`] log lines per [`LOG_WINDOW`], then a count of the dropped ones.
#[derive(Default)]
struct LogLimit {
    window: Option<Instant>,
    lines: u32,
    dropped: u32,
}

impl LogLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= LOG_WINDOW)
        {
            if self.dropped > 0 {
                log::warn!("({} similar lines dropped)", self.dropped);
            }
            self.window = Some(now);
            self.lines = 0;
            self.dropped = 0;
        }
        self.lines += 1;
        if self.lines > LOG_BURST {
            self.dropped += 1;
            return false;
        }
        true
    }
}

/// What one command came to.
enum Outcome {
    Done,
    /// The backend is gone: keep the command for after the reconnect.
    Park(Command),
}

struct Worker {
    name: String,
    shared: Arc<Shared>,
    backend: Arc<Mutex<dyn VirtioBackend>>,
    config_size: u32,
    /// Commands that found the backend gone, coalesced; replayed after a reconnect.
    parked: VecDeque<Command>,
    /// Every config byte the guest wrote: sent again to a reconnected backend.
    written: Vec<Option<u8>>,
    log: LogLimit,
}

impl Worker {
    /// The next command and, for a reset, how many resets it carries out (the queue holds
    /// at most one: the latest).
    fn next(&self) -> Option<(Command, u64)> {
        let mut q = lock(&self.shared.queue);
        loop {
            if q.stop {
                return None;
            }
            if let Some(c) = q.commands.pop_front() {
                let resets = self.shared.resets_requested.load(Ordering::SeqCst);
                return Some((c, resets));
            }
            q = self
                .shared
                .ready
                .wait(q)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn run(mut self) {
        while let Some((cmd, resets)) = self.next() {
            match cmd {
                Command::Flush(done) => {
                    let _ = done.send(());
                }
                Command::Reconnected => self.reconnected(),
                Command::Reset => {
                    forget_device_life(&mut self.parked);
                    self.execute(Command::Reset);
                    self.shared.resets_done.store(resets, Ordering::SeqCst);
                }
                Command::WriteConfig(bytes) => {
                    merge_writes(&mut self.written, bytes.clone());
                    // Gone: the reconnect sends `written` anyway.
                    let _ = self.execute(Command::WriteConfig(bytes));
                }
                cmd => {
                    if let Outcome::Park(c) = self.execute(cmd) {
                        push_coalesced(&mut self.parked, c);
                    }
                }
            }
        }
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.log.allow() {
            log::warn!("{}: {msg}", self.name);
        }
    }

    /// Runs one command against the backend (the backend lock is held only inside).
    fn execute(&mut self, cmd: Command) -> Outcome {
        let result = {
            let mut backend = lock(&self.backend);
            match &cmd {
                Command::Activate {
                    features,
                    queues,
                    resume,
                } => {
                    let active: Vec<ActiveQueue<'_>> = queues
                        .iter()
                        .map(|q| ActiveQueue {
                            index: q.index,
                            size: q.size,
                            desc: q.desc,
                            driver: q.driver,
                            device: q.device,
                            kick: &q.kick,
                            call: &q.call,
                        })
                        .collect();
                    backend.activate(*features, &active, *resume)
                }
                Command::Reset => backend.reset(),
                Command::SetQueueCall { index, call } => backend.set_queue_call(*index, call),
                Command::WriteConfig(bytes) => write_runs(&mut *backend, bytes),
                Command::Reconnected | Command::Flush(_) => Ok(()),
            }
        };
        let what = match &cmd {
            Command::Activate { .. } => "starting the device",
            Command::Reset => "reset",
            Command::SetQueueCall { .. } => "setting a queue's call fd",
            Command::WriteConfig(_) => "config write",
            Command::Reconnected | Command::Flush(_) => "",
        };
        match result {
            Ok(()) => {
                if let Command::Activate { queues, .. } = &cmd {
                    for q in queues {
                        let _ = q.kick.write(1);
                    }
                }
                Outcome::Done
            }
            // Reset when the backend is gone: nothing left to stop; the reconnect starts
            // from a reset device.
            Err(BackendError::Gone(_)) if matches!(cmd, Command::Reset) => Outcome::Done,
            Err(e @ BackendError::Gone(_)) => {
                self.warn(format_args!("{what}: {e}; retried after a reconnect"));
                Outcome::Park(cmd)
            }
            Err(e) => {
                if matches!(cmd, Command::Activate { .. }) {
                    if self.log.allow() {
                        log::error!("{}: {what} failed: {e}", self.name);
                    }
                    self.shared.with_device(VirtioPciDevice::mark_needs_reset);
                } else {
                    self.warn(format_args!("{what}: {e}"));
                }
                Outcome::Done
            }
        }
    }

    /// After a reconnect: the guest's config writes, fresh config (a change interrupts the
    /// guest), then the commands the old connection could not take, then kicks and
    /// interrupts so nothing waits.
    fn reconnected(&mut self) {
        if self.written.iter().any(Option::is_some) {
            let r = write_runs(&mut *lock(&self.backend), &self.written);
            if let Err(e) = r {
                self.warn(format_args!("config writes after reconnect: {e}"));
            }
        }
        let fetched = fetch(&mut *lock(&self.backend), self.config_size);
        match fetched {
            Ok(bytes) => {
                let changed = {
                    let mut cache = lock(&self.shared.cache);
                    let changed = *cache != bytes;
                    *cache = bytes;
                    changed
                };
                if changed {
                    log::info!("{}: device config changed across the reconnect", self.name);
                    self.shared.with_device(VirtioPciDevice::config_changed);
                }
            }
            Err(e) => self.warn(format_args!("config after reconnect: {e}")),
        }
        let parked = std::mem::take(&mut self.parked);
        for mut cmd in parked
            .into_iter()
            .filter(|c| !matches!(c, Command::WriteConfig(_)))
        {
            if let Command::Activate { resume, .. } = &mut cmd {
                *resume = true;
            }
            if let Outcome::Park(c) = self.execute(cmd) {
                push_coalesced(&mut self.parked, c);
            }
        }
        self.shared
            .with_device(VirtioPciDevice::rewire_after_reconnect);
    }
}

/// Sends each contiguous run of written bytes.
fn write_runs(backend: &mut dyn VirtioBackend, bytes: &[Option<u8>]) -> Result<(), BackendError> {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_none() {
            i += 1;
            continue;
        }
        let run: Vec<u8> = bytes[i..].iter().map_while(|b| *b).collect();
        backend.write_config(i as u32, &run)?;
        i += run.len();
    }
    Ok(())
}
