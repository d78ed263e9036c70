//! The hybrid-vsock multiplexer: guest packets to host unix streams and back.
//!
//! - Guest → host (tx queue): [`Muxer::recv_pkt`] handles one packet: REQUEST connects to
//!   `<uds_path>_<port>`, RW writes to the host stream, SHUTDOWN/RST/credit ops update the
//!   connection; anything unknown or out of place is answered with RST.
//! - Host → guest (rx queue): [`Muxer::fill_rx`] writes the next packet into one rx buffer:
//!   queued control packets first, then data from readable host streams within the guest's
//!   credit.
//! - Host sockets (the `--uds-path` listener, clients in their `CONNECT <port>` handshake,
//!   connected streams) live in the muxer's own epoll; [`Muxer::handle_host_events`] runs when
//!   it fires.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;
use vu_spec::vsock::{
    VSOCK_FLAGS_SHUTDOWN_RCV, VSOCK_FLAGS_SHUTDOWN_SEND, VSOCK_HOST_CID, VSOCK_OP_CREDIT_REQUEST,
    VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE, VSOCK_OP_RST, VSOCK_OP_RW,
    VSOCK_OP_SHUTDOWN, VSOCK_TYPE_STREAM,
};

use super::conn::{Conn, ConnState, Handshake, PendingHost, Progress};
use super::control::{ConnKey, Control, ControlQueue};

/// Control packets waiting for rx buffers before the muxer stops taking tx packets.
pub const MAX_PENDING_CONTROL: usize = 512;
/// Most host connections (handshaking or connected) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// First host-side port given to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll data of the listener (stream fds use their fd number).
const LISTENER_TOKEN: u64 = u64::MAX;
/// epoll data of the half-open sweep timer.
const SWEEP_TOKEN: u64 = u64::MAX - 1;
/// How long a connection may stay half-open: a host client that has not finished its
/// `CONNECT <port>` line, a host-initiated connection the guest has not answered (no RESPONSE),
/// a connection closing (both sides shut down) whose host end does not take the last bytes.
/// Then it is closed (RST to the guest if it knows the connection).
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxerStats {
    pub rst_sent: u64,
    pub dropped: u64,
    /// Half-open connections closed by [`HALF_OPEN_TIMEOUT`].
    pub expired: u64,
    pub connections: usize,
}

/// Connection table, host sockets and the queue of packets for the guest.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    buf_alloc: u32,
    epoll: Epoll,
    listener: UnixListener,
    pending: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, Conn>,
    by_fd: HashMap<RawFd, ConnKey>,
    control: ControlQueue,
    half_open_timeout: Duration,
    sweep: TimerFd,
    rx_ready: VecDeque<ConnKey>,
    next_local_port: u32,
    stats: MuxerStats,
}

impl Muxer {
    /// A muxer serving `guest_cid` whose host side is `listener` (bound at `uds_path`);
    /// half-open connections are closed after `half_open_timeout` (see [`HALF_OPEN_TIMEOUT`]).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        listener: UnixListener,
        buf_alloc: u32,
        half_open_timeout: Duration,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        // Sweeps for expired half-open connections a few times per timeout.
        let mut sweep = TimerFd::new()?;
        let period = (half_open_timeout / 4).max(Duration::from_millis(50));
        sweep.reset(period, Some(period))?;
        epoll.ctl(
            ControlOperation::Add,
            sweep.as_raw_fd(),
            EpollEvent::new(EventSet::IN, SWEEP_TOKEN),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            buf_alloc,
            epoll,
            listener,
            pending: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            control: ControlQueue::default(),
            half_open_timeout,
            sweep,
            rx_ready: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            stats: MuxerStats::default(),
        })
    }

    /// The epoll fd to watch (readable when a host socket has an event).
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn stats(&self) -> MuxerStats {
        MuxerStats {
            connections: self.conns.len(),
            ..self.stats
        }
    }

    /// Whether so many control packets wait that tx processing should pause.
    pub fn throttled(&self) -> bool {
        self.control.len() >= MAX_PENDING_CONTROL
    }

    /// Whether [`fill_rx`](Self::fill_rx) may have something for the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    /// Forgets every connection (the guest driver reset): host streams are closed.
    pub fn reset(&mut self) {
        for (_, conn) in self.conns.drain() {
            if conn.registered.is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        self.by_fd.clear();
        self.control.clear();
        self.rx_ready.clear();
    }

    /// Queues a control packet for the guest: never dropped (see [`ControlQueue`]).
    fn push_control(&mut self, local_port: u32, peer_port: u32, op: u16, flags: u32) {
        self.control.push(Control {
            local_port,
            peer_port,
            op,
            flags,
        });
    }

    fn push_rst(&mut self, local_port: u32, peer_port: u32) {
        self.stats.rst_sent += 1;
        self.push_control(local_port, peer_port, VSOCK_OP_RST, 0);
    }

    /// Closes a connection (its host stream too).
    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            if conn.registered.is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.by_fd.remove(&fd);
        }
    }

    /// Closes a connection and tells the guest.
    fn reset_conn(&mut self, key: ConnKey) {
        self.remove(key);
        self.push_rst(key.0, key.1);
    }

    /// Registers the epoll interest `conn` needs now: readable while established and not
    /// already known to be readable, writable while guest data waits.
    fn rearm(epoll: &Epoll, conn: &mut Conn) {
        let mut want = EventSet::empty();
        if conn.state == ConnState::Established
            && !conn.host_eof
            && !conn.rx_queued
            && conn.peer_credit() > 0
        {
            want |= EventSet::IN;
        }
        if conn.tx_pending() > 0 {
            want |= EventSet::OUT;
        }
        let fd = conn.stream.as_raw_fd();
        let event = EpollEvent::new(want, fd as u64);
        let result = match (conn.registered, want.is_empty()) {
            (Some(cur), false) if cur == want => return,
            (Some(_), false) => epoll.ctl(ControlOperation::Modify, fd, event),
            (None, false) => epoll.ctl(ControlOperation::Add, fd, event),
            // Unregistered rather than registered with no events: a hung-up stream would
            // report EPOLLHUP forever.
            (Some(_), true) => epoll.ctl(ControlOperation::Delete, fd, event),
            (None, true) => return,
        };
        match result {
            Ok(()) => conn.registered = (!want.is_empty()).then_some(want),
            Err(e) => vu_daemon::log_limited!(
                log::Level::Error,
                "epoll interest for port {}: {e}",
                conn.local_port
            ),
        }
    }

    fn rearm_key(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            Self::rearm(&self.epoll, conn);
        }
    }

    /// One packet from the guest's tx queue.
    pub fn recv_pkt(&mut self, pkt: &VsockPacket<'_, ()>) {
        if pkt.src_cid() != self.guest_cid {
            vu_daemon::log_limited!(
                log::Level::Warn,
                "packet from CID {} (the guest is {}): dropped",
                pkt.src_cid(),
                self.guest_cid
            );
            self.stats.dropped += 1;
            return;
        }
        let key = (pkt.dst_port(), pkt.src_port());
        let op = pkt.op();
        if op == VSOCK_OP_RST {
            self.remove(key);
            return;
        }
        if pkt.dst_cid() != VSOCK_HOST_CID || pkt.type_() != VSOCK_TYPE_STREAM {
            log::debug!(
                "packet to CID {} type {}: only streams to the host",
                pkt.dst_cid(),
                pkt.type_()
            );
            self.push_rst(key.0, key.1);
            return;
        }
        if op == VSOCK_OP_REQUEST {
            self.guest_connect(pkt, key);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            log::debug!("op {op} for unknown connection {key:?}: RST");
            self.push_rst(key.0, key.1);
            return;
        };
        conn.update_peer_credit(pkt.buf_alloc(), pkt.fwd_cnt());
        match (op, conn.state) {
            (VSOCK_OP_RESPONSE, ConnState::Connecting) => {
                conn.state = ConnState::Established;
                conn.deadline = None;
                let line = format!("OK {}\n", conn.local_port);
                if let Err(e) = conn.send_host_bytes(line.as_bytes()) {
                    log::debug!("host client of port {} gone: {e}", key.0);
                    self.reset_conn(key);
                    return;
                }
                if conn.has_rx_prefix() {
                    conn.rx_queued = true;
                    self.rx_ready.push_back(key);
                }
                Self::rearm(&self.epoll, conn);
            }
            (VSOCK_OP_RW, ConnState::Established) => {
                self.guest_data(pkt, key);
                // The header's credit may let host data flow again.
                self.rearm_key(key);
            }
            (VSOCK_OP_CREDIT_UPDATE, ConnState::Established) => {
                // The new credit may unblock host data parked for lack of it.
                if !conn.rx_queued && !conn.host_eof {
                    conn.rx_queued = true;
                    self.rx_ready.push_back(key);
                    Self::rearm(&self.epoll, conn);
                }
            }
            (VSOCK_OP_CREDIT_REQUEST, ConnState::Established) => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.push_control(key.0, key.1, VSOCK_OP_CREDIT_UPDATE, 0);
                }
            }
            (VSOCK_OP_SHUTDOWN, ConnState::Established) => self.guest_shutdown(pkt.flags(), key),
            (op, state) => {
                log::debug!("op {op} in state {state:?} on {key:?}: RST");
                self.reset_conn(key);
            }
        }
    }

    /// REQUEST: connect to `<uds_path>_<port>` and answer RESPONSE, or RST.
    fn guest_connect(&mut self, pkt: &VsockPacket<'_, ()>, key: ConnKey) {
        if self.conns.contains_key(&key) {
            log::debug!("REQUEST for existing connection {key:?}: RST");
            self.reset_conn(key);
            return;
        }
        if self.conns.len() + self.pending.len() >= MAX_CONNECTIONS {
            vu_daemon::log_limited!(
                log::Level::Warn,
                "too many connections: REQUEST to port {} refused",
                key.0
            );
            self.push_rst(key.0, key.1);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "guest port {} to host port {}: {}: {e}: RST",
                    key.1,
                    key.0,
                    Path::new(&path).display()
                );
                self.push_rst(key.0, key.1);
                return;
            }
        };
        if let Err(e) = stream.set_nonblocking(true) {
            vu_daemon::log_limited!(
                log::Level::Warn,
                "cannot make the host stream non-blocking: {e}"
            );
            self.push_rst(key.0, key.1);
            return;
        }
        let mut conn = Conn::new(stream, key.0, key.1, ConnState::Established, self.buf_alloc);
        conn.update_peer_credit(pkt.buf_alloc(), pkt.fwd_cnt());
        Self::rearm(&self.epoll, &mut conn);
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.push_control(key.0, key.1, VSOCK_OP_RESPONSE, 0);
        log::debug!("guest port {} connected to host port {}", key.1, key.0);
    }

    /// RW: forward the payload to the host stream, within the credit we gave.
    fn guest_data(&mut self, pkt: &VsockPacket<'_, ()>, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(data) = pkt.data_slice() else {
            return;
        };
        if conn.peer_shut_send || !conn.fits(pkt.len()) {
            vu_daemon::log_limited!(
                log::Level::Warn,
                "guest port {} sent {} bytes beyond its credit or after SHUTDOWN: RST",
                key.1,
                pkt.len()
            );
            self.reset_conn(key);
            return;
        }
        if let Err(e) = conn.send_guest_data(data) {
            log::debug!("host stream of port {} failed: {e}: RST", key.0);
            self.reset_conn(key);
            return;
        }
        self.after_forward(key);
    }

    /// After guest bytes reached the host: credit update, half-close, close.
    fn after_forward(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.tx_pending() == 0 && conn.close_after_flush {
            self.reset_conn(key);
            return;
        }
        conn.shutdown_host_write_if_flushed();
        Self::rearm(&self.epoll, conn);
        if conn.wants_credit_update() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            self.push_control(key.0, key.1, VSOCK_OP_CREDIT_UPDATE, 0);
        }
    }

    /// SHUTDOWN from the guest.
    fn guest_shutdown(&mut self, flags: u32, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let both = VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND;
        if flags & VSOCK_FLAGS_SHUTDOWN_SEND != 0 {
            conn.peer_shut_send = true;
        }
        if flags & both == both || (conn.peer_shut_send && conn.host_eof) {
            // Full close: write out what the guest sent, then RST completes the close.
            conn.close_after_flush = true;
            conn.deadline
                .get_or_insert(Instant::now() + self.half_open_timeout);
        }
        self.after_forward(key);
    }

    /// Runs the host sockets' events (non-blocking).
    pub fn handle_host_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    vu_daemon::log_limited!(log::Level::Error, "host socket epoll: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == LISTENER_TOKEN {
                    self.accept_host_clients();
                    continue;
                }
                if token == SWEEP_TOKEN {
                    let _ = self.sweep.wait();
                    self.expire_half_open(Instant::now());
                    continue;
                }
                let fd = token as RawFd;
                if self.pending.contains_key(&fd) {
                    self.host_handshake(fd);
                } else if let Some(&key) = self.by_fd.get(&fd) {
                    self.host_stream_event(key, ev.event_set());
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn accept_host_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    vu_daemon::log_limited!(log::Level::Warn, "accepting a host client: {e}");
                    return;
                }
            };
            if self.conns.len() + self.pending.len() >= MAX_CONNECTIONS {
                vu_daemon::log_limited!(
                    log::Level::Warn,
                    "too many connections: host client refused"
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                vu_daemon::log_limited!(log::Level::Warn, "host client: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            ) {
                vu_daemon::log_limited!(log::Level::Warn, "host client: {e}");
                continue;
            }
            let mut pending = PendingHost::new(stream);
            pending.deadline = Some(Instant::now() + self.half_open_timeout);
            self.pending.insert(fd, pending);
        }
    }

    /// A handshaking host client sent something.
    fn host_handshake(&mut self, fd: RawFd) {
        let Some(pending) = self.pending.get_mut(&fd) else {
            return;
        };
        let (port, rest) = match pending.read() {
            Handshake::Incomplete => return,
            Handshake::Connect(port, rest) => (port, rest),
            Handshake::Failed(why) => {
                log::debug!("host client dropped: {why}");
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                self.pending.remove(&fd);
                return;
            }
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Some(pending) = self.pending.remove(&fd) else {
            return;
        };
        let Some(local_port) = self.allocate_local_port(port) else {
            vu_daemon::log_limited!(
                log::Level::Warn,
                "no free host port for a connection to guest port {port}"
            );
            return;
        };
        let key = (local_port, port);
        let mut conn = Conn::new(
            pending.stream,
            local_port,
            port,
            ConnState::Connecting,
            self.buf_alloc,
        );
        conn.set_rx_prefix(rest);
        conn.deadline = Some(Instant::now() + self.half_open_timeout);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.push_control(local_port, port, VSOCK_OP_REQUEST, 0);
        log::debug!("host client connecting to guest port {port} from host port {local_port}");
    }

    /// Closes every connection that stayed half-open past its deadline (see
    /// [`HALF_OPEN_TIMEOUT`]): handshaking host clients are just closed, connections the guest
    /// knows get an RST.
    pub fn expire_half_open(&mut self, now: Instant) {
        let late = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        let stale: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| late(p.deadline))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            log::debug!("host client sent no CONNECT line in time: closed");
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.pending.remove(&fd);
            self.stats.expired += 1;
        }
        let stale: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| late(c.deadline))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            log::debug!("connection {key:?} half-open for too long: RST");
            self.reset_conn(key);
            self.stats.expired += 1;
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..MAX_CONNECTIONS * 2 {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .filter(|p| *p < u32::MAX)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    /// A connected host stream is readable, writable or hung up.
    fn host_stream_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR)
            && conn.tx_pending() > 0
        {
            match conn.flush() {
                Ok(_) => {}
                Err(e) => {
                    log::debug!("host stream of port {} failed: {e}: RST", key.0);
                    self.reset_conn(key);
                    return;
                }
            }
            self.after_forward(key);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
            && conn.state == ConnState::Established
            && !conn.host_eof
            && !conn.rx_queued
        {
            conn.rx_queued = true;
            self.rx_ready.push_back(key);
        }
        self.rearm_key(key);
    }

    /// Writes the next packet for the guest into `pkt` (an rx buffer); returns the used length,
    /// or None when there is nothing to send. Control packets go first, then data from the
    /// connections in line, in turn.
    pub fn fill_rx(&mut self, pkt: &mut VsockPacket<'_, ()>) -> Option<u32> {
        if let Some(c) = self.control.pop() {
            let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&(c.local_port, c.peer_port)) {
                Some(conn) => {
                    if c.op == VSOCK_OP_CREDIT_UPDATE {
                        conn.credit_update_queued = false;
                    }
                    conn.credit_fields()
                }
                None => (0, 0),
            };
            self.write_header(pkt, &c, 0, buf_alloc, fwd_cnt);
            return Some(PKT_HEADER_SIZE as u32);
        }
        while let Some(key) = self.rx_ready.pop_front() {
            if let Some(len) = self.fill_from_host(key, pkt) {
                return Some(len);
            }
        }
        None
    }

    /// [`fill_rx`](Self::fill_rx) for connection `key`, just taken from the line: a data,
    /// shutdown or reset packet, or None when it has nothing to send (gone, drained, or out of
    /// credit).
    fn fill_from_host(&mut self, key: ConnKey, pkt: &mut VsockPacket<'_, ()>) -> Option<u32> {
        let conn = self.conns.get_mut(&key)?;
        let Some(data) = pkt.data_slice().copied() else {
            // A buffer without room for data (only control packets fit): hand it back
            // empty rather than let it block the queue; the connection keeps its turn.
            log::debug!("rx buffer without a data part returned empty");
            self.rx_ready.push_front(key);
            return Some(0);
        };
        let mut c = Control {
            local_port: key.0,
            peer_port: key.1,
            op: VSOCK_OP_RW,
            flags: 0,
        };
        match conn.read_host(&data) {
            Ok(Progress::Moved(n)) => {
                let (buf_alloc, fwd_cnt) = conn.credit_fields();
                // More may be waiting: stay in line behind the others.
                self.rx_ready.push_back(key);
                self.write_header(pkt, &c, n as u32, buf_alloc, fwd_cnt);
                Some((PKT_HEADER_SIZE + n) as u32)
            }
            Ok(Progress::Blocked) => {
                // Stream drained (watch it again) or no credit (the guest's next credit
                // update requeues the connection).
                conn.rx_queued = false;
                Self::rearm(&self.epoll, conn);
                None
            }
            Ok(Progress::Eof) => {
                conn.rx_queued = false;
                conn.host_eof = true;
                let (buf_alloc, fwd_cnt) = conn.credit_fields();
                c.op = VSOCK_OP_SHUTDOWN;
                c.flags = VSOCK_FLAGS_SHUTDOWN_SEND;
                if conn.peer_shut_send {
                    // Both sides are done.
                    c.flags |= VSOCK_FLAGS_SHUTDOWN_RCV;
                    conn.close_after_flush = true;
                    conn.deadline
                        .get_or_insert(Instant::now() + self.half_open_timeout);
                }
                Self::rearm(&self.epoll, conn);
                self.write_header(pkt, &c, 0, buf_alloc, fwd_cnt);
                self.after_forward(key);
                Some(PKT_HEADER_SIZE as u32)
            }
            Err(e) => {
                log::debug!("host stream of port {} failed: {e}: RST", key.0);
                self.remove(key);
                self.stats.rst_sent += 1;
                c.op = VSOCK_OP_RST;
                self.write_header(pkt, &c, 0, 0, 0);
                Some(PKT_HEADER_SIZE as u32)
            }
        }
    }

    fn write_header(
        &self,
        pkt: &mut VsockPacket<'_, ()>,
        c: &Control,
        len: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
    ) {
        let _ = pkt.header_slice().write_slice(&[0u8; PKT_HEADER_SIZE], 0);
        pkt.set_src_cid(VSOCK_HOST_CID)
            .set_dst_cid(self.guest_cid)
            .set_src_port(c.local_port)
            .set_dst_port(c.peer_port)
            .set_type(VSOCK_TYPE_STREAM)
            .set_op(c.op)
            .set_flags(c.flags)
            .set_len(len)
            .set_buf_alloc(buf_alloc)
            .set_fwd_cnt(fwd_cnt);
    }
}
