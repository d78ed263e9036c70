//! Reply timeout for vhost-user requests.
//!
//! The `vhost` crate retries a timed-out `recvmsg` forever, so a socket read timeout cannot
//! bound a request. Instead a watchdog thread shuts the socket down when a request outlives
//! its deadline: the blocked read then sees EOF and the request fails as "backend gone".

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{Shutdown, shutdown};

#[derive(Default)]
struct State {
    /// The socket and deadline of the request in progress.
    armed: Option<(RawFd, Instant)>,
    /// Set when the watchdog shut a socket down; cleared by `disarm`.
    fired: bool,
    stop: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One watchdog thread per session.
pub(super) struct Watchdog {
    shared: Shared,
    timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the thread; `None` if it cannot be spawned (requests are then unbounded).
    pub(super) fn new(timeout: Duration) -> Option<Self> {
        let shared: Shared = Arc::default();
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vu-frontend-watchdog".into())
            .spawn(move || run(&theirs))
            .map_err(|e| log::warn!("no vhost-user reply watchdog: {e}"))
            .ok()?;
        Some(Watchdog {
            shared,
            timeout,
            thread: Some(thread),
        })
    }

    /// Arms the deadline for a request on `fd`.
    pub(super) fn arm(&self, fd: RawFd) {
        lock(&self.shared).armed = Some((fd, Instant::now() + self.timeout));
        self.shared.1.notify_one();
    }

    /// Disarms; returns true if the deadline passed and the socket was shut down.
    pub(super) fn disarm(&self) -> bool {
        let mut st = lock(&self.shared);
        st.armed = None;
        std::mem::take(&mut st.fired)
    }

    /// The configured timeout.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    let mut st = lock(shared);
    loop {
        if st.stop {
            return;
        }
        st = match st.armed {
            None => shared.1.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some((fd, deadline)) => {
                let now = Instant::now();
                if now >= deadline {
                    // The request still holds the fd open (it is blocked on it), so the number
                    // cannot have been reused.
                    let _ = shutdown(fd, Shutdown::Both);
                    st.armed = None;
                    st.fired = true;
                    st
                } else {
                    shared
                        .1
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn unblocks_a_read_that_outlives_the_deadline() {
        let (mut a, _b) = UnixStream::pair().expect("pair");
        let w = Watchdog::new(Duration::from_millis(100)).expect("watchdog");
        let t0 = Instant::now();
        w.arm(a.as_raw_fd());
        let mut buf = [0u8; 1];
        assert_eq!(a.read(&mut buf).expect("EOF after shutdown"), 0);
        assert!(w.disarm(), "fired");
        assert!(t0.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn disarmed_in_time_does_not_fire() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        let w = Watchdog::new(Duration::from_millis(200)).expect("watchdog");
        w.arm(a.as_raw_fd());
        assert!(!w.disarm());
        std::thread::sleep(Duration::from_millis(300));
        use std::io::Write;
        b.write_all(b"x").expect("socket still open");
    }
}
