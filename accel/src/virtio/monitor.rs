//! Watches a vhost-user backend's socket while the guest runs: when the backend hangs up,
//! either reconnect (chardev `reconnect=N`) and restore its rings, or mark the device
//! NEEDS_RESET. Sleeps in `poll` otherwise: no wakeups while the device works.
//!
//! Interrupts after a reconnect need no re-routing: each MSI-X vector owns an eventfd that
//! is a KVM irqfd on the vector's own GSI (registered once, at device creation), and the
//! GSI's MSI route follows the guest's MSI-X table writes whatever the backend does. A
//! queue's call fd is a dup of its vector's eventfd; the session resends it (SET_VRING_CALL,
//! before SET_VRING_KICK) when it restores the ring on the new connection, so the new
//! backend's first completion raises the same vector. A vector move made while the backend
//! was away is replayed by the control thread, which then raises every active queue's vector
//! once (a completion the old backend wrote but never signalled) and kicks every queue.
//!
//! The monitor takes the backend lock only to reconnect, never to watch: the device's
//! control thread may hold it for as long as a stopped backend takes to answer. A backend
//! that is killed while stopped hangs up; the control thread's request then fails (releasing
//! the lock) and the monitor reconnects.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::vhost_user::GuestRam;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::VirtioPciDevice;
use super::vhost_user::VhostUserBackend;

/// One connect attempt's patience during reconnection (short: the backend lock is held).
const RECONNECT_ATTEMPT: Duration = Duration::from_millis(200);
/// How long dropping a monitor waits for its thread (it may be in a handshake with a backend
/// that does not answer) before leaving it behind.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// A running monitor thread; stops when dropped.
pub struct BackendMonitor {
    stop: Arc<EventFd>,
    /// Disconnects when the thread ends (a Mutex: the VM's setup must be Sync).
    exited: Mutex<Receiver<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for BackendMonitor {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Err(RecvTimeoutError::Timeout) = self
            .exited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv_timeout(STOP_WAIT)
        {
            log::debug!("backend monitor busy reconnecting; leaving it");
            return;
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

enum Wake {
    Stop,
    /// The watched fd has the event (a hang-up, or a listener's new connection).
    Ready,
    Timeout,
}

/// How a monitor gets a backend back after it hung up.
pub enum Reconnect {
    /// Connect to the backend's socket again (`reconnect=N`), at this interval.
    Dial(Duration),
    /// Wait for the backend to connect to accel's socket again (`server=on`).
    Accept(UnixListener),
}

const HANG_UP: libc::c_short = libc::POLLRDHUP;
const READABLE: libc::c_short = libc::POLLIN;

fn wait(stop: &EventFd, sock: Option<(i32, libc::c_short)>, timeout: PollTimeout) -> Wake {
    // SAFETY: both fds stay open for the duration of the poll: `stop` is borrowed, and the
    // socket fd belongs to the session, which only this thread replaces (by reconnecting).
    let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
    let mut fds = vec![PollFd::new(stop_fd, PollFlags::POLLIN)];
    if let Some((fd, events)) = sock {
        // SAFETY: as above (a listener fd belongs to the monitor's `Reconnect`).
        let sock_fd = unsafe { BorrowedFd::borrow_raw(fd) };
        fds.push(PollFd::new(sock_fd, PollFlags::from_bits_retain(events)));
    }
    loop {
        match poll(&mut fds, timeout) {
            Ok(0) => return Wake::Timeout,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("backend monitor poll: {e}");
                return Wake::Stop;
            }
        }
    }
    if fds[0].revents().is_some_and(|r| !r.is_empty()) {
        return Wake::Stop;
    }
    Wake::Ready
}

/// Starts watching `backend` for `device`. `reconnect`: how to get the backend back, `None`
/// to mark the device NEEDS_RESET instead. Call before the VM runs (reads the socket fd under the
/// backend lock).
pub fn spawn<M: GuestRam>(
    name: String,
    backend: Arc<Mutex<VhostUserBackend<M>>>,
    device: Weak<Mutex<VirtioPciDevice>>,
    reconnect: Option<Reconnect>,
) -> std::io::Result<BackendMonitor> {
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let stop2 = stop.clone();
    let (fd, path) = {
        let mut b = backend.lock().unwrap_or_else(PoisonError::into_inner);
        (b.socket_fd(), b.socket_path().display().to_string())
    };
    let (exit_tx, exited) = channel::<()>();
    let handle = std::thread::Builder::new()
        .name(format!("mon-{name}"))
        .spawn(move || {
            let _exit = exit_tx;
            let watch = Watch {
                name: &name,
                path: &path,
                backend: &backend,
                device: &device,
                stop: &stop2,
            };
            watch.run(fd, reconnect);
        })?;
    Ok(BackendMonitor {
        stop,
        exited: Mutex::new(exited),
        handle: Some(handle),
    })
}

struct Watch<'a, M> {
    name: &'a str,
    path: &'a str,
    backend: &'a Mutex<VhostUserBackend<M>>,
    device: &'a Weak<Mutex<VirtioPciDevice>>,
    stop: &'a EventFd,
}

impl<M: GuestRam> Watch<'_, M> {
    fn with_device(&self, f: impl FnOnce(&mut VirtioPciDevice)) {
        if let Some(dev) = self.device.upgrade() {
            f(&mut dev.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    fn run(&self, mut fd: i32, reconnect: Option<Reconnect>) {
        let (name, path) = (self.name, self.path);
        loop {
            match wait(self.stop, Some((fd, HANG_UP)), PollTimeout::NONE) {
                Wake::Stop => return,
                Wake::Timeout => continue,
                Wake::Ready => {}
            }
            let back = match &reconnect {
                None => {
                    log::error!(
                        "{name}: vhost-user backend {path} hung up; the device needs a reset"
                    );
                    self.with_device(VirtioPciDevice::mark_needs_reset);
                    // Nothing more to watch on a dead connection.
                    let _ = wait(self.stop, None, PollTimeout::NONE);
                    return;
                }
                Some(Reconnect::Dial(interval)) => self.redial(*interval),
                Some(Reconnect::Accept(listener)) => self.accept_again(listener),
            };
            let Some(new_fd) = back else { return };
            fd = new_fd;
            log::warn!("{name}: reconnected to vhost-user backend {path}");
            // The control thread refreshes the config, replays what failed, kicks the queues
            // and raises their vectors.
            self.with_device(|d| d.backend_reconnected());
        }
    }

    /// Connects again every `interval` until it works (the new connection's fd) or the
    /// monitor stops (`None`).
    fn redial(&self, interval: Duration) -> Option<i32> {
        let (name, path) = (self.name, self.path);
        log::warn!("{name}: vhost-user backend {path} hung up; reconnecting every {interval:?}");
        let timeout = PollTimeout::try_from(interval).unwrap_or(PollTimeout::MAX);
        let mut attempts = 0u64;
        loop {
            // Waits for the control thread's request on the dead connection to fail (it
            // has hung up, so it does) and, with no reply timeout, for a new backend that
            // accepted but does not answer: a kill of that one ends the attempt.
            let mut b = self.backend.lock().unwrap_or_else(PoisonError::into_inner);
            attempts += 1;
            match b.reconnect(RECONNECT_ATTEMPT) {
                Ok(()) => return Some(b.socket_fd()),
                Err(e) => {
                    drop(b);
                    // One line per backend outage, then one a minute at most (attempts
                    // come every `interval`).
                    if attempts == 1 || attempts.is_multiple_of(60) {
                        log::info!("{name}: reconnect to {path} (attempt {attempts}): {e}");
                    }
                }
            }
            if let Wake::Stop = wait(self.stop, None, timeout) {
                return None;
            }
        }
    }

    /// `server=on`: waits for the backend to connect to accel's socket again and restores
    /// the session on the new connection (the new connection's fd), or `None` when stopped.
    fn accept_again(&self, listener: &UnixListener) -> Option<i32> {
        let (name, path) = (self.name, self.path);
        log::warn!("{name}: vhost-user backend hung up; waiting for it to connect to {path}");
        let mut failures = 0u64;
        loop {
            match wait(
                self.stop,
                Some((listener.as_raw_fd(), READABLE)),
                PollTimeout::NONE,
            ) {
                Wake::Stop => return None,
                Wake::Timeout | Wake::Ready => {}
            }
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    log::error!("{name}: accept on {path}: {e}");
                    return None;
                }
            };
            let mut b = self.backend.lock().unwrap_or_else(PoisonError::into_inner);
            match stream
                .set_nonblocking(false)
                .map_err(|e| e.to_string())
                .and_then(|()| b.reconnect_stream(stream).map_err(|e| e.to_string()))
            {
                Ok(()) => return Some(b.socket_fd()),
                Err(e) => {
                    drop(b);
                    failures += 1;
                    // A peer that connects and fails the handshake: one line, then one per 60.
                    if failures == 1 || failures.is_multiple_of(60) {
                        log::info!("{name}: backend on {path} (attempt {failures}): {e}");
                    }
                }
            }
        }
    }
}
