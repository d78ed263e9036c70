//! The queue a device's frontend serves itself (virtio-net's control queue): a thread that
//! waits on that queue's notify eventfd and asks the device's control thread to serve it.
//!
//! Every queue's notify address stays a KVM ioeventfd (registered before the VM runs, see
//! [`super::device`]): which queue is the frontend's depends on the negotiated features
//! (net: index 2 without MQ, after every data queue with it), so the thread is told the
//! index at DRIVER_OK ([`FrontendQueueWatch::watch`]) and watches nothing after a reset. The
//! guest can only make it read one eventfd and queue one coalesced request per wake-up.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::control::ControlHandle;

const NONE: u32 = u32::MAX;

struct State {
    /// The queue watched, or [`NONE`].
    index: AtomicU32,
    stop: AtomicBool,
    /// Wakes the thread to re-read `index` / `stop`.
    wake: EventFd,
}

/// The watcher of one device.
pub struct FrontendQueueWatch {
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl FrontendQueueWatch {
    /// Starts the thread; `kicks` are the notify eventfds of the queues that can be the
    /// frontend's (copies).
    pub fn spawn(
        name: &str,
        kicks: Vec<(u16, EventFd)>,
        control: ControlHandle,
    ) -> std::io::Result<Self> {
        let state = Arc::new(State {
            index: AtomicU32::new(NONE),
            stop: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        });
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fq-{name}"))
            .spawn(move || run(&s, &kicks, &control))?;
        Ok(FrontendQueueWatch {
            state,
            thread: Some(thread),
        })
    }

    /// Watches queue `index` from now on (`None`: nothing).
    pub fn watch(&self, index: Option<u16>) {
        self.state
            .index
            .store(index.map_or(NONE, u32::from), Ordering::SeqCst);
        let _ = self.state.wake.write(1);
    }
}

impl Drop for FrontendQueueWatch {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = self.state.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(state: &State, kicks: &[(u16, EventFd)], control: &ControlHandle) {
    while !state.stop.load(Ordering::SeqCst) {
        let index = state.index.load(Ordering::SeqCst);
        let kick = kicks
            .iter()
            .find(|(i, _)| u32::from(*i) == index)
            .map(|(_, k)| k);
        // SAFETY: both eventfds outlive `fds` (owned by `state` and `kicks`).
        let borrow = |e: &EventFd| unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) };
        let mut fds = vec![PollFd::new(borrow(&state.wake), PollFlags::POLLIN)];
        if let Some(k) = kick {
            fds.push(PollFd::new(borrow(k), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("frontend queue watcher: poll: {e}");
                return;
            }
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        let kicked = fds.get(1).is_some_and(ready);
        let woken = ready(&fds[0]);
        drop(fds);
        if woken {
            let _ = state.wake.read();
        }
        if kicked && let Some(k) = kick {
            // EAGAIN: the kick was read already; serving once more is harmless.
            let _ = k.read();
            control.serve_queue();
        }
    }
}
