//! The monitor thread: every QMP socket, one `poll` loop.
//!
//! Like a QEMU socket chardev in server mode, each monitor serves one client at a time;
//! further connections wait in the listen backlog until it leaves (then they are accepted:
//! clients can reconnect). Bounds per client: [`MAX_PENDING_INPUT`] unread request bytes
//! (the socket is not read further until they are handled), requests are not handled while
//! more than [`OUTPUT_HIGH_WATER`] bytes of replies wait to be sent, and a client that lets
//! more than [`MAX_OUTPUT`] bytes of events pile up is disconnected.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::commands::{self, Session};
use super::wire::{self, Piece};
use super::{QmpShared, QmpStartError};
use crate::config::{MonitorConfig, MonitorListen};

/// Unparsed request bytes buffered per client before the socket is left unread.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;
/// Requests wait while more reply bytes than this are queued for the client.
pub const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// A client with more queued output than this (events it does not read) is dropped.
pub const MAX_OUTPUT: usize = 4 << 20;
/// At exit, how long queued replies/events (e.g. `quit`'s) may take to reach clients.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

enum Listener {
    Unix(UnixListener, Option<PathBuf>),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> std::io::Result<OwnedFd> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| s.into()),
            Listener::Tcp(l) => l.accept().map(|(s, _)| s.into()),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l, _) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

struct Client {
    stream: std::fs::File,
    splitter: wire::Splitter,
    out: Vec<u8>,
    negotiated: bool,
    /// A human monitor's unfinished input line (`None`: a QMP client).
    hmp: Option<Vec<u8>>,
}

impl Client {
    /// Input bytes received and not handled yet.
    fn pending(&self) -> usize {
        self.hmp.as_ref().map_or(self.splitter.pending(), Vec::len)
    }
}

/// The human monitor's prompt, after its greeting and after each command's output.
const HMP_PROMPT: &[u8] = b"(qemu) ";

struct Monitor {
    config: MonitorConfig,
    listener: Listener,
    client: Option<Client>,
}

impl Monitor {
    fn filename(&self) -> String {
        match &self.config.listen {
            MonitorListen::Unix(p) => format!("unix:{},server=on", p.display()),
            MonitorListen::Tcp { host, port } => format!("tcp:{host}:{port},server=on"),
            MonitorListen::Fd(fd) => format!("fd:{fd},server=on"),
        }
    }
}

/// The running monitor thread.
pub struct MonitorServer {
    shared: Arc<QmpShared>,
    thread: Option<JoinHandle<()>>,
}

impl MonitorServer {
    /// Binds every monitor socket (errors name it) and starts the thread. With `wait=on` a
    /// monitor first waits here for its client, as QEMU does before starting the VM.
    pub fn start(
        configs: &[MonitorConfig],
        shared: Arc<QmpShared>,
    ) -> Result<Option<MonitorServer>, QmpStartError> {
        if configs.is_empty() {
            return Ok(None);
        }
        let mut monitors = Vec::new();
        for config in configs {
            let listener = bind(&config.listen)?;
            let mut mon = Monitor {
                config: config.clone(),
                listener,
                client: None,
            };
            if config.wait {
                eprintln!(
                    "accel: waiting for connection on: disconnected:{}",
                    mon.filename()
                );
                let fd = mon
                    .listener
                    .accept()
                    .map_err(|source| QmpStartError::Socket {
                        what: "accepting on",
                        addr: mon.filename(),
                        source,
                    })?;
                connect(&mut mon, fd);
            }
            set_nonblocking(mon.listener.fd());
            monitors.push(mon);
        }
        shared.active.store(true, Ordering::Release);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("qmp".into())
            .spawn(move || serve(monitors, &thread_shared))
            .map_err(QmpStartError::Thread)?;
        Ok(Some(MonitorServer {
            shared,
            thread: Some(thread),
        }))
    }

    /// Sends what is queued (within a deadline), closes every socket and ends the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.shared.wake_evt.write(1);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("the QMP monitor thread panicked");
        }
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind(listen: &MonitorListen) -> Result<Listener, QmpStartError> {
    let err = |what, addr: String| move |source| QmpStartError::Socket { what, addr, source };
    match listen {
        MonitorListen::Unix(path) => {
            // QEMU replaces a stale socket file at the path.
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            let l = UnixListener::bind(path).map_err(err("binding", path.display().to_string()))?;
            Ok(Listener::Unix(l, Some(path.clone())))
        }
        MonitorListen::Tcp { host, port } => {
            let addr = format!("{host}:{port}");
            let l = TcpListener::bind(addr.as_str()).map_err(err("binding", addr.clone()))?;
            Ok(Listener::Tcp(l))
        }
        MonitorListen::Fd(fd) => {
            let addr = format!("fd={fd}");
            // fstat first: the number must name an open socket inherited from the parent.
            let st = nix::sys::stat::fstat(
                // SAFETY: only used for this fstat call; validity is what fstat checks.
                unsafe { BorrowedFd::borrow_raw(*fd) },
            )
            .map_err(|e| err("using", addr.clone())(std::io::Error::from(e)))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(err("using", addr)(std::io::Error::other("not a socket")));
            }
            // SAFETY: `-chardev ...,fd=N` hands accel this inherited listening socket; nothing
            // else in the process owns or closes it.
            let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
            let domain = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
                owned.as_raw_fd(),
            )
            .ok()
            .and_then(|a| nix::sys::socket::SockaddrLike::family(&a));
            if domain == Some(nix::sys::socket::AddressFamily::Unix) {
                Ok(Listener::Unix(UnixListener::from(owned), None))
            } else {
                Ok(Listener::Tcp(TcpListener::from(owned)))
            }
        }
    }
}

fn set_nonblocking(fd: BorrowedFd) {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0);
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)) {
        log::warn!("QMP: setting O_NONBLOCK: {e}");
    }
}

fn connect(mon: &mut Monitor, fd: OwnedFd) {
    set_nonblocking(fd.as_fd());
    let mut client = Client {
        stream: std::fs::File::from(fd),
        splitter: wire::Splitter::default(),
        out: Vec::new(),
        negotiated: false,
        hmp: mon.config.hmp.then(Vec::new),
    };
    if mon.config.hmp {
        let (a, b, c) = commands::QEMU_VERSION;
        client.out.extend_from_slice(
            format!("QEMU {a}.{b}.{c} monitor - type 'help' for more information\r\n").as_bytes(),
        );
        client.out.extend_from_slice(HMP_PROMPT);
    } else {
        queue(&mut client, &commands::greeting(mon.config.pretty));
    }
    log::info!("QMP: client connected on {}", mon.config.label);
    mon.client = Some(client);
}

fn queue(client: &mut Client, line: &str) {
    client.out.extend_from_slice(line.as_bytes());
    client.out.extend_from_slice(b"\r\n");
}

fn serve(mut monitors: Vec<Monitor>, shared: &QmpShared) {
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && shared.stopping.load(Ordering::Acquire) {
            deadline = Some(Instant::now() + FLUSH_DEADLINE);
        }
        deliver_events(&mut monitors, shared);
        if let Some(d) = deadline {
            let flushed = monitors
                .iter()
                .all(|m| m.client.as_ref().is_none_or(|c| c.out.is_empty()));
            if flushed || Instant::now() >= d {
                break;
            }
        }
        let timeout = match deadline {
            Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::ZERO),
            None => PollTimeout::NONE,
        };
        let ready = {
            // SAFETY: the eventfd is owned by `shared`, which outlives this borrow.
            let wake = unsafe { BorrowedFd::borrow_raw(shared.wake_evt.as_raw_fd()) };
            let mut fds = vec![PollFd::new(wake, PollFlags::POLLIN)];
            for m in &monitors {
                fds.push(match &m.client {
                    // While exiting, nobody new is accepted.
                    None if deadline.is_some() => PollFd::new(m.listener.fd(), PollFlags::empty()),
                    None => PollFd::new(m.listener.fd(), PollFlags::POLLIN),
                    Some(c) => {
                        let mut ev = PollFlags::empty();
                        if deadline.is_none() && c.pending() < MAX_PENDING_INPUT {
                            ev |= PollFlags::POLLIN;
                        }
                        if !c.out.is_empty() {
                            ev |= PollFlags::POLLOUT;
                        }
                        PollFd::new(c.stream.as_fd(), ev)
                    }
                });
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::error!("QMP: poll: {e}; monitors stop");
                    return;
                }
            }
            fds.iter()
                .skip(1)
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect::<Vec<_>>()
        };
        for i in 0..monitors.len() {
            let revents = ready[i];
            if monitors[i].client.is_none() {
                if deadline.is_none() && revents.contains(PollFlags::POLLIN) {
                    match monitors[i].listener.accept() {
                        Ok(fd) => connect(&mut monitors[i], fd),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => log::warn!("QMP: accept on {}: {e}", monitors[i].config.label),
                    }
                }
                continue;
            }
            if !service_client(&mut monitors, i, revents, shared, deadline.is_some()) {
                log::info!("QMP: client left {}", monitors[i].config.label);
                monitors[i].client = None;
            }
        }
    }
    for m in &monitors {
        if let Listener::Unix(_, Some(path)) = &m.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads, handles and writes for the client of `monitors[i]`; false when it is gone.
fn service_client(
    monitors: &mut [Monitor],
    i: usize,
    revents: PollFlags,
    shared: &QmpShared,
    stopping: bool,
) -> bool {
    let pretty = monitors[i].config.pretty;
    {
        let Some(client) = monitors[i].client.as_mut() else {
            return false;
        };
        if !stopping
            && revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        {
            let mut buf = [0u8; 16 * 1024];
            let room = MAX_PENDING_INPUT
                .saturating_sub(client.pending())
                .min(buf.len());
            // No room means POLLIN was not asked for, so this is HUP/ERR: the client is gone.
            let result = if room == 0 {
                Ok(0)
            } else {
                client.stream.read(&mut buf[..room])
            };
            match result {
                Ok(0) => return false,
                Ok(n) => match client.hmp.as_mut() {
                    Some(line) => line.extend_from_slice(&buf[..n]),
                    None => client.splitter.feed(&buf[..n]),
                },
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
    // While exiting, requests are no longer handled: only queued output goes out.
    if !stopping && !handle_requests(monitors, i, shared, pretty) {
        return false;
    }
    let Some(client) = monitors[i].client.as_mut() else {
        return false;
    };
    if !client.out.is_empty() && revents.contains(PollFlags::POLLOUT) {
        match client.stream.write(&client.out) {
            Ok(n) => {
                client.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Handles the complete requests the client of `monitors[i]` sent, while its output is below
/// the high-water mark; false when the client is gone.
fn handle_requests(monitors: &mut [Monitor], i: usize, shared: &QmpShared, pretty: bool) -> bool {
    if monitors[i].config.hmp {
        return handle_hmp_lines(monitors, i, shared);
    }
    loop {
        let (piece, mut negotiated) = {
            let Some(client) = monitors[i].client.as_mut() else {
                return false;
            };
            if client.out.len() >= OUTPUT_HIGH_WATER {
                break;
            }
            let Some(piece) = client.splitter.next_piece() else {
                break;
            };
            (piece, client.negotiated)
        };
        let line = match piece {
            Piece::Error(desc) => wire::reply_err(&wire::QmpError::generic(desc), None, pretty),
            Piece::Value(bytes) => match wire::parse_request(&bytes) {
                Err((id, err)) => wire::reply_err(&err, id.as_ref(), pretty),
                Ok(req) => {
                    let mut session = session(monitors, shared, &mut negotiated);
                    let result = commands::dispatch(&mut session, &req);
                    // Events the command caused go out before its return, as in QEMU.
                    deliver_events(monitors, shared);
                    match result {
                        Ok(ret) => wire::reply_ok(&ret, req.id.as_ref(), pretty),
                        Err(err) => wire::reply_err(&err, req.id.as_ref(), pretty),
                    }
                }
            },
        };
        let Some(client) = monitors[i].client.as_mut() else {
            return false;
        };
        client.negotiated = negotiated;
        queue(client, &line);
    }
    true
}

/// What a command sees of the monitors (for `query-chardev`) and of its client.
fn session<'a>(
    monitors: &[Monitor],
    shared: &'a QmpShared,
    negotiated: &'a mut bool,
) -> Session<'a> {
    Session {
        shared,
        monitors: monitors
            .iter()
            .map(|m| (m.config.label.clone(), m.filename(), m.client.is_some()))
            .collect(),
        negotiated,
    }
}

/// The human monitor: runs each complete input line, then prints the prompt again. A line
/// longer than [`MAX_PENDING_INPUT`] is dropped with an error (its bytes are not kept).
fn handle_hmp_lines(monitors: &mut [Monitor], i: usize, shared: &QmpShared) -> bool {
    loop {
        let line = {
            let Some(client) = monitors[i].client.as_mut() else {
                return false;
            };
            if client.out.len() >= OUTPUT_HIGH_WATER {
                break;
            }
            let Some(buf) = client.hmp.as_mut() else {
                return false;
            };
            match buf.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    String::from_utf8_lossy(&line).trim().to_string()
                }
                None if buf.len() >= MAX_PENDING_INPUT => {
                    buf.clear();
                    client.out.extend_from_slice(b"Error: line too long\r\n");
                    client.out.extend_from_slice(HMP_PROMPT);
                    continue;
                }
                None => break,
            }
        };
        let mut negotiated = false;
        let mut session = session(monitors, shared, &mut negotiated);
        let text = commands::hmp_line(&mut session, &line);
        deliver_events(monitors, shared);
        let Some(client) = monitors[i].client.as_mut() else {
            return false;
        };
        client.out.extend_from_slice(text.as_bytes());
        client.out.extend_from_slice(HMP_PROMPT);
    }
    true
}

fn push_events(
    client: &mut Client,
    events: &[(String, Option<serde_json::Value>, u64)],
    pretty: bool,
) {
    if !client.negotiated {
        return;
    }
    for (name, data, micros) in events {
        let line = wire::event(name, data.as_ref(), *micros, pretty);
        queue(client, &line);
    }
}

fn deliver_events(monitors: &mut [Monitor], shared: &QmpShared) {
    let events = shared.take_events();
    if events.is_empty() {
        return;
    }
    for m in monitors.iter_mut() {
        let pretty = m.config.pretty;
        let Some(client) = m.client.as_mut() else {
            continue;
        };
        push_events(client, &events, pretty);
        if client.out.len() > MAX_OUTPUT {
            log::warn!(
                "QMP: client on {} does not read its events ({} bytes queued): disconnected",
                m.config.label,
                client.out.len()
            );
            m.client = None;
        }
    }
}
