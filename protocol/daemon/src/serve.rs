//! The serve-again loop: a fresh backend and `VhostUserDaemon` per frontend connection.
//!
//! A backend serves one frontend at a time. Two rules keep a misbehaving peer from holding
//! the listener:
//! - a frontend must send its first complete vhost-user message within
//!   [`FIRST_MESSAGE_TIMEOUT`] of connecting; a silent one (or one that stops halfway through
//!   a header) is dropped and the next connection is served;
//! - while a frontend is being served, a second connection is accepted and closed (the
//!   newcomer's first read sees end-of-file or ECONNRESET, so it fails fast instead of
//!   hanging), unless the served frontend hangs up within [`SUCCESSOR_GRACE`]: then the
//!   newcomer (a frontend reconnecting) is kept and served next.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{
    Error as DaemonLibError, VhostUserBackend, VhostUserDaemon, VringEpollHandler, VringRwLock,
};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::DaemonError;

/// Guest memory as backends see it (no dirty-page log: LOG_SHMFD is never offered).
pub type BackendMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
/// The vring type of every backend served here.
pub type BackendVring = VringRwLock<BackendMemory>;

/// A device program's long-lived state; it makes one backend per frontend connection, so that
/// every connection starts from fresh per-connection state (vrings, features, owner).
pub trait VhostUserDevice {
    type Backend: VhostUserBackend<Bitmap = (), Vring = BackendVring> + 'static;

    /// Name for the daemon's threads and log lines (`vhost-user-blk`).
    fn name(&self) -> &str;

    /// The backend that serves the next frontend.
    fn new_backend(&self) -> std::io::Result<Arc<Self::Backend>>;

    /// Socket files the device created besides the vhost-user socket (e.g. a host-side
    /// listener): [`run`](super::run) removes them too when a signal ends the process.
    fn owned_socket_paths(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// What the device still needs once the process is confined (its image, its output
    /// file, the system calls of its data path); see [`crate::confine`].
    fn confinement(&self) -> crate::confine::DeviceConfinement {
        crate::confine::DeviceConfinement::default()
    }

    /// Called once per connection after its worker threads exist and before the frontend is
    /// accepted: register extra fds (timers, sockets, a tap) with the workers' epoll loops via
    /// [`VringEpollHandler::register_listener`] (ids above `num_queues`); their events reach
    /// the backend's `handle_event`. One handler per `queues_per_thread` entry.
    fn attach_workers(
        &self,
        _backend: &Arc<Self::Backend>,
        _workers: &[Arc<VringEpollHandler<Arc<Self::Backend>>>],
    ) -> std::io::Result<()> {
        Ok(())
    }

    /// Called after each frontend connection ended, once its worker threads are joined (e.g.
    /// to log the device's counters).
    fn connection_ended(&self) {}
}

/// How long a new frontend has to send its first complete message (header and payload)
/// before it is dropped and the next connection is served.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// vhost-user message header: request (u32), flags (u32), payload size (u32).
const HEADER_SIZE: usize = 12;
/// How long a connection that arrives while a frontend is served waits for that frontend's
/// hang-up before it is turned away. A frontend that closes its socket and reconnects at once
/// may still have the old socket open in a process it forked that has not yet executed
/// (close-on-exec fds live until the exec): the hang-up then shows a moment later. Checking
/// at once turned such a reconnect away: a `process.rs` test's connection, made right after
/// it closed the previous one, got ECONNRESET while other tests of the binary spawned
/// backends from parallel threads (the whole binary run 400 times: 77 failures; with the
/// grace period, 0; the test alone, 0 either way).
const SUCCESSOR_GRACE: Duration = Duration::from_secs(1);

/// Largest payload [`first_message_arrives`] waits for (bigger ones: the header is enough).
const MAX_PEEK_PAYLOAD: usize = 4096;

/// How one frontend connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The frontend hung up.
    Disconnected,
    /// The connection was dropped because of a protocol error (malformed message, ...).
    Dropped(String),
}

/// Whether `stream` holds a complete first message within `timeout` (peeked, not consumed).
/// False if the peer stays silent, stops halfway, or hangs up.
pub fn first_message_arrives(stream: &UnixStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; HEADER_SIZE + MAX_PEEK_PAYLOAD];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let revents = match poll_in(stream.as_fd(), i32::from(ms)) {
            Ok(0) => return false,
            Ok(r) => r,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        };
        // Peeking leaves the bytes in the socket, so it stays readable after the peer hangs
        // up: only RDHUP/HUP tell that the rest of a partial message will never come.
        let hung_up = revents & (libc::POLLHUP | libc::POLLRDHUP) != 0;
        let n = match recv(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            &mut buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => 0,
            Err(_) => return false,
        };
        if n >= HEADER_SIZE {
            let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
            // An oversized payload is vhost-user-backend's to reject: the header is enough.
            let payload = if size > MAX_PEEK_PAYLOAD { 0 } else { size };
            if n >= HEADER_SIZE + payload {
                return true;
            }
        }
        if hung_up {
            return false;
        }
        // Part of a message: the socket stays readable, so wait a little before peeking again.
        std::thread::sleep(Duration::from_millis(10).min(left));
    }
}

/// poll(2) for input on one fd, also asking for POLLRDHUP: its raw `revents`, 0 on timeout
/// (nix's `PollFd::revents` cannot carry POLLRDHUP: it returns `None` when that bit is set).
fn poll_in(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> nix::Result<libc::c_short> {
    let mut p = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; `fd` is borrowed, so open.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    nix::errno::Errno::result(n).map(|n| if n == 0 { 0 } else { p.revents })
}

/// The next frontend that talks: `pending` (a connection kept from the previous round) or a
/// newly accepted one, each given [`FIRST_MESSAGE_TIMEOUT`] to send its first message; silent
/// ones are closed (one rate-limited line each).
pub(crate) fn next_frontend(
    listener: &Listener,
    pending: &mut Option<UnixStream>,
) -> Result<UnixStream, DaemonError> {
    loop {
        let stream = match pending.take() {
            Some(s) => s,
            None => accept_blocking(listener)?,
        };
        if first_message_arrives(&stream, FIRST_MESSAGE_TIMEOUT) {
            return Ok(stream);
        }
        crate::log_limited!(
            log::Level::Warn,
            "a frontend sent no complete message within {:?}: dropped",
            FIRST_MESSAGE_TIMEOUT
        );
    }
}

/// Waits for and accepts one connection (the listener may be non-blocking).
fn accept_blocking(listener: &Listener) -> Result<UnixStream, DaemonError> {
    loop {
        let mut fds = [PollFd::new(listener_fd(listener), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(DaemonError::Accept(e.to_string())),
        }
        match listener.accept() {
            Ok(Some(s)) => {
                // Accepted sockets do not inherit O_NONBLOCK on Linux, but be sure.
                s.set_nonblocking(false)
                    .map_err(|e| DaemonError::Accept(e.to_string()))?;
                return Ok(s);
            }
            Ok(None) => continue,
            Err(e) => return Err(DaemonError::Accept(e.to_string())),
        }
    }
}

fn listener_fd(listener: &Listener) -> std::os::fd::BorrowedFd<'_> {
    borrowed(listener)
}

/// The fd of `owner` (a type without `AsFd`), borrowed for as long as `owner`.
fn borrowed<T: std::os::fd::AsRawFd>(owner: &T) -> std::os::fd::BorrowedFd<'_> {
    // SAFETY: the fd belongs to `owner`, which outlives the returned borrow.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(owner.as_raw_fd()) }
}

/// Runs `serve` while turning away other connections on `listener` (see the module
/// documentation); returns its result and the connection to serve next, if one came after
/// `current` hung up.
pub(crate) fn while_busy<R>(
    listener: &Listener,
    current: &UnixStream,
    serve: impl FnOnce() -> R,
) -> Result<(R, Option<UnixStream>), DaemonError> {
    let stop = EventFd::new(EFD_NONBLOCK).map_err(DaemonError::NewBackend)?;
    let current = current.try_clone().map_err(DaemonError::NewBackend)?;
    std::thread::scope(|s| {
        let guard = s.spawn(|| turn_away(listener, &current, &stop));
        let r = serve();
        let _ = stop.write(1);
        let pending = guard.join().unwrap_or(None);
        Ok((r, pending))
    })
}

fn turn_away(listener: &Listener, current: &UnixStream, stop: &EventFd) -> Option<UnixStream> {
    loop {
        let stop_fd = borrowed(stop);
        let mut fds = [
            PollFd::new(listener_fd(listener), PollFlags::POLLIN),
            PollFd::new(stop_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
        if fds[1].any().unwrap_or(true) {
            return None;
        }
        let Ok(Some(newcomer)) = listener.accept() else {
            continue;
        };
        // The served frontend hangs up, or its serving ends, within the grace period.
        let mut cur = [
            PollFd::new(
                current.as_fd(),
                PollFlags::from_bits_retain(libc::POLLRDHUP),
            ),
            PollFd::new(borrowed(stop), PollFlags::POLLIN),
        ];
        let grace = PollTimeout::try_from(SUCCESSOR_GRACE).unwrap_or(PollTimeout::MAX);
        let over = matches!(poll(&mut cur, grace), Ok(n) if n > 0);
        if over {
            let _ = newcomer.set_nonblocking(false);
            return Some(newcomer);
        }
        crate::log_limited!(
            log::Level::Warn,
            "a second frontend connected while one is served: closed"
        );
        drop(newcomer);
    }
}

/// Serves the frontend on `stream` until it disconnects or misbehaves; the backend's worker
/// threads are stopped and joined before this returns.
pub fn serve_stream<D>(device: &D, stream: UnixStream) -> Result<ConnectionEnd, DaemonError>
where
    D: VhostUserDevice,
{
    let backend = device.new_backend().map_err(DaemonError::NewBackend)?;
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(device.name().to_string(), backend.clone(), mem)
        .map_err(|e| DaemonError::NewDaemon(e.to_string()))?;
    device
        .attach_workers(&backend, &daemon.get_epoll_handlers())
        .map_err(DaemonError::NewBackend)?;
    drop(backend);
    crate::log_limited!(log::Level::Info, "{}: frontend connected", device.name());
    // On this thread: the caller has nothing else to do meanwhile.
    let end = match daemon.serve_stream_inline(stream) {
        Ok(())
        | Err(DaemonLibError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => ConnectionEnd::Disconnected,
        Err(e) => ConnectionEnd::Dropped(e.to_string()),
    };
    // Dropping the daemon drops its handler, which signals the backend's exit events and joins
    // the vring worker threads.
    drop(daemon);
    match &end {
        ConnectionEnd::Disconnected => {
            crate::log_limited!(log::Level::Info, "{}: frontend disconnected", device.name())
        }
        ConnectionEnd::Dropped(why) => {
            crate::log_limited!(
                log::Level::Warn,
                "{}: connection dropped: {why}",
                device.name()
            )
        }
    }
    device.connection_ended();
    Ok(end)
}

/// Serves frontends one after another: `max_connections` of them (silent ones, dropped after
/// [`FIRST_MESSAGE_TIMEOUT`], do not count), or forever with `None`.
pub fn serve<D>(
    device: &D,
    listener: &mut Listener,
    max_connections: Option<usize>,
) -> Result<(), DaemonError>
where
    D: VhostUserDevice,
{
    let mut served = 0usize;
    let mut pending = None;
    while max_connections.is_none_or(|max| served < max) {
        let stream = next_frontend(listener, &mut pending)?;
        let current = stream.try_clone().map_err(DaemonError::NewBackend)?;
        let (end, next) = while_busy(listener, &current, || serve_stream(device, stream))?;
        end?;
        pending = next;
        served += 1;
    }
    Ok(())
}

/// How often a client-mode backend tries to connect while nobody listens.
pub const CLIENT_RETRY: Duration = Duration::from_secs(1);

/// Client mode (`--client`): connects to the frontend's listening socket at `path`, serves
/// it until it hangs up, and connects again, forever (QEMU's `server=on` chardevs accept a
/// reconnecting backend). While nobody listens it retries every [`CLIENT_RETRY`], logging the
/// first failure of each outage and one a minute after that.
pub fn serve_client<D>(device: &D, path: &std::path::Path) -> Result<(), DaemonError>
where
    D: VhostUserDevice,
{
    loop {
        let stream = connect_retrying(device.name(), path);
        // A dropped connection is logged by serve_stream; the next one starts afresh.
        serve_stream(device, stream)?;
    }
}

fn connect_retrying(name: &str, path: &std::path::Path) -> UnixStream {
    let mut attempts = 0u64;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                if attempts.is_multiple_of(60) {
                    log::info!(
                        "{name}: no frontend listening on {} yet ({e}); retrying every {:?}",
                        path.display(),
                        CLIENT_RETRY
                    );
                }
                attempts += 1;
                std::thread::sleep(CLIENT_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Regression (found by the 10,000 malformed connections test): a frontend that sent part
    /// of a header and hung up held the listener for the whole FIRST_MESSAGE_TIMEOUT, because
    /// the peeked bytes keep the socket readable; every next frontend waited behind it.
    #[test]
    fn partial_header_then_hang_up_is_dropped_at_once() {
        let (mut peer, ours) = UnixStream::pair().unwrap();
        peer.write_all(&[1, 0, 0, 0, 1]).unwrap();
        drop(peer);
        let t0 = Instant::now();
        assert!(!first_message_arrives(&ours, Duration::from_secs(60)));
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "waited {took:?} for a peer that hung up"
        );
    }

    #[test]
    fn partial_payload_then_hang_up_is_dropped_at_once() {
        let (mut peer, ours) = UnixStream::pair().unwrap();
        // SET_OWNER-like header announcing 8 payload bytes, 4 sent.
        peer.write_all(&[3, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 1, 2, 3, 4])
            .unwrap();
        drop(peer);
        let t0 = Instant::now();
        assert!(!first_message_arrives(&ours, Duration::from_secs(60)));
        assert!(t0.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn complete_message_then_hang_up_still_arrives() {
        let (mut peer, ours) = UnixStream::pair().unwrap();
        peer.write_all(&[3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        drop(peer);
        assert!(first_message_arrives(&ours, Duration::from_secs(60)));
    }

    #[test]
    fn partial_header_of_a_live_peer_waits_for_the_timeout() {
        let (mut peer, ours) = UnixStream::pair().unwrap();
        peer.write_all(&[1, 0, 0]).unwrap();
        let t0 = Instant::now();
        assert!(!first_message_arrives(&ours, Duration::from_millis(300)));
        assert!(t0.elapsed() >= Duration::from_millis(300));
        drop(peer);
    }
}
