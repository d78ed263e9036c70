//! Watches a vhost-user backend's socket while the guest runs: when the backend hangs up,
//! either reconnect (chardev `reconnect=N`) and restore its rings, or mark the device
//! NEEDS_RESET. Sleeps in `poll` otherwise: no wakeups while the device works.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use protocol::frontend::SharedMemory;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::VirtioPciDevice;
use super::vhost_user::VhostUserBackend;

/// One connect attempt's patience during reconnection (short: the backend lock is held).
const RECONNECT_ATTEMPT: Duration = Duration::from_millis(200);

/// A running monitor thread; stops when dropped.
pub struct BackendMonitor {
    stop: Arc<EventFd>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for BackendMonitor {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

enum Wake {
    Stop,
    HangUp,
    Timeout,
}

fn wait(stop: &EventFd, sock: Option<i32>, timeout: PollTimeout) -> Wake {
    // SAFETY: both fds stay open for the duration of the poll: `stop` is borrowed, and the
    // socket fd belongs to the session, which only this thread replaces (by reconnecting).
    let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
    let mut fds = vec![PollFd::new(stop_fd, PollFlags::POLLIN)];
    if let Some(fd) = sock {
        // SAFETY: as above.
        let sock_fd = unsafe { BorrowedFd::borrow_raw(fd) };
        fds.push(PollFd::new(
            sock_fd,
            PollFlags::from_bits_retain(libc::POLLRDHUP),
        ));
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
    Wake::HangUp
}

/// Starts watching `backend` for `device`. `reconnect`: retry interval, `None` to mark the
/// device NEEDS_RESET instead.
pub fn spawn<M: SharedMemory + Clone + 'static>(
    name: String,
    backend: Arc<Mutex<VhostUserBackend<M>>>,
    device: Weak<Mutex<VirtioPciDevice>>,
    reconnect: Option<Duration>,
) -> std::io::Result<BackendMonitor> {
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let stop2 = stop.clone();
    let handle = std::thread::Builder::new()
        .name(format!("mon-{name}"))
        .spawn(move || run(&name, &backend, &device, reconnect, &stop2))?;
    Ok(BackendMonitor {
        stop,
        handle: Some(handle),
    })
}

fn run<M: SharedMemory + Clone + 'static>(
    name: &str,
    backend: &Mutex<VhostUserBackend<M>>,
    device: &Weak<Mutex<VirtioPciDevice>>,
    reconnect: Option<Duration>,
    stop: &EventFd,
) {
    loop {
        let fd = backend.lock().unwrap().socket_fd();
        match wait(stop, Some(fd), PollTimeout::NONE) {
            Wake::Stop => return,
            Wake::Timeout => continue,
            Wake::HangUp => {}
        }
        let path = backend.lock().unwrap().socket_path().display().to_string();
        let Some(interval) = reconnect else {
            log::error!("{name}: vhost-user backend {path} hung up; the device needs a reset");
            if let Some(dev) = device.upgrade() {
                dev.lock().unwrap().mark_needs_reset();
            }
            // Nothing more to watch on a dead connection.
            let _ = wait(stop, None, PollTimeout::NONE);
            return;
        };
        log::warn!("{name}: vhost-user backend {path} hung up; reconnecting every {interval:?}");
        let timeout = PollTimeout::try_from(interval).unwrap_or(PollTimeout::MAX);
        loop {
            match backend.lock().unwrap().reconnect(RECONNECT_ATTEMPT) {
                Ok(()) => break,
                Err(e) => log::debug!("{name}: reconnect to {path}: {e}"),
            }
            if let Wake::Stop = wait(stop, None, timeout) {
                return;
            }
        }
        log::warn!("{name}: reconnected to vhost-user backend {path}");
        // Requests the guest queued while the backend was away: make the new backend look.
        if let Some(dev) = device.upgrade() {
            dev.lock().unwrap().kick_all();
        }
    }
}
