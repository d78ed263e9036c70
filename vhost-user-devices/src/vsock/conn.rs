//! One vsock stream connection between a guest port and a host unix stream, with virtio-vsock
//! credit-based flow control both ways (virtio 1.2 §5.10.6.3).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vm_memory::{ReadVolatile, VolatileSlice, WriteVolatile};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent to the guest, waiting for its RESPONSE.
    Connecting,
    /// Data flows both ways.
    Established,
}

/// What became of an attempt to move bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// `n` bytes moved.
    Moved(usize),
    /// Nothing to do now (the stream would block, or there is no credit).
    Blocked,
    /// The host closed its side (read returned 0).
    Eof,
}

/// A connection: the host stream plus both directions' accounting.
#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    /// Host-side port (the guest's `dst_port`).
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    pub state: ConnState,
    /// Our receive buffer for guest data, advertised as `buf_alloc`.
    buf_alloc: u32,
    /// Guest bytes written to the host stream so far.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest bytes the host stream did not take yet (at most `buf_alloc`).
    tx_buf: Vec<u8>,
    /// The guest's receive buffer and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Host bytes sent to the guest so far.
    rx_cnt: Wrapping<u32>,
    /// Host bytes read already (after the `CONNECT` line) and not sent to the guest yet.
    rx_prefix: Vec<u8>,
    /// The host side reached end of file.
    pub host_eof: bool,
    /// The guest said it will send no more data.
    pub peer_shut_send: bool,
    /// Close (RST to the guest) once `tx_buf` is written out.
    pub close_after_flush: bool,
    /// A CREDIT_UPDATE for this connection is queued.
    pub credit_update_queued: bool,
    /// In the muxer's list of connections with host data to forward.
    pub rx_queued: bool,
    /// epoll interest currently registered for `stream` (None: not registered).
    pub registered: Option<vmm_sys_util::epoll::EventSet>,
    /// When a half-open connection (connecting, closing) is given up (set by the muxer).
    pub deadline: Option<std::time::Instant>,
}

impl Conn {
    pub fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
        buf_alloc: u32,
    ) -> Self {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            buf_alloc,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: Vec::new(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            rx_prefix: Vec::new(),
            host_eof: false,
            peer_shut_send: false,
            close_after_flush: false,
            credit_update_queued: false,
            rx_queued: false,
            registered: None,
            deadline: None,
        }
    }

    /// Host bytes to send before reading the stream again.
    pub fn set_rx_prefix(&mut self, bytes: Vec<u8>) {
        self.rx_prefix = bytes;
    }

    /// Whether host bytes read with the handshake wait to be sent.
    pub fn has_rx_prefix(&self) -> bool {
        !self.rx_prefix.is_empty()
    }

    /// Records the guest's credit from any packet header it sent for this connection.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `buf_alloc` and `fwd_cnt` for a header going to the guest; remembers what was told.
    pub fn credit_fields(&mut self) -> (u32, u32) {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        (self.buf_alloc, self.fwd_cnt.0)
    }

    /// Whether the guest should hear about freed buffer space without waiting for it to ask.
    pub fn wants_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= self.buf_alloc / 4
    }

    /// Guest bytes waiting for the host stream.
    pub fn tx_pending(&self) -> usize {
        self.tx_buf.len()
    }

    /// Whether `len` more guest bytes fit in what we advertised.
    pub fn fits(&self, len: u32) -> bool {
        self.tx_buf.len() as u64 + u64::from(len) <= u64::from(self.buf_alloc)
    }

    /// Queues bytes for the host (e.g. the `OK <port>` line) and writes what the stream takes.
    pub fn send_host_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tx_buf.extend_from_slice(bytes);
        self.flush_counted(false)
    }

    /// Forwards guest data to the host stream: straight from guest memory if nothing is
    /// queued, the rest (what the stream would not take) into `tx_buf`.
    pub fn send_guest_data(&mut self, data: &VolatileSlice<'_, ()>) -> io::Result<()> {
        let mut written = 0usize;
        if self.tx_buf.is_empty() {
            loop {
                match self
                    .stream
                    .write_volatile(&data.offset(written).map_err(io_err)?)
                {
                    Ok(0) => break,
                    Ok(n) => {
                        written += n;
                        if written == data.len() {
                            break;
                        }
                    }
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        break;
                    }
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(e)),
                }
            }
            self.fwd_cnt += written as u32;
        }
        if written < data.len() {
            let rest = data.offset(written).map_err(io_err)?;
            let start = self.tx_buf.len();
            self.tx_buf.resize(start + rest.len(), 0);
            rest.copy_to(&mut self.tx_buf[start..]);
        }
        Ok(())
    }

    /// Writes queued guest bytes to the host stream; `Ok(true)` once `tx_buf` is empty.
    pub fn flush(&mut self) -> io::Result<bool> {
        self.flush_counted(true)?;
        Ok(self.tx_buf.is_empty())
    }

    fn flush_counted(&mut self, guest_bytes: bool) -> io::Result<()> {
        let mut done = 0usize;
        let result = loop {
            if done == self.tx_buf.len() {
                break Ok(());
            }
            match self.stream.write(&self.tx_buf[done..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.tx_buf.drain(..done);
        if guest_bytes {
            self.fwd_cnt += done as u32;
        }
        result
    }

    /// Reads host bytes into `buf` (an rx data buffer in guest memory), at most the guest's
    /// credit.
    pub fn read_host(&mut self, buf: &VolatileSlice<'_, ()>) -> io::Result<Progress> {
        let max = (self.peer_credit() as usize).min(buf.len());
        if max == 0 {
            return Ok(Progress::Blocked);
        }
        let n = if !self.rx_prefix.is_empty() {
            let n = max.min(self.rx_prefix.len());
            buf.copy_from(&self.rx_prefix[..n]);
            self.rx_prefix.drain(..n);
            n
        } else {
            let mut dst = buf.subslice(0, max).map_err(io_err)?;
            loop {
                match self.stream.read_volatile(&mut dst) {
                    Ok(0) => return Ok(Progress::Eof),
                    Ok(n) => break n,
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        return Ok(Progress::Blocked);
                    }
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(e)),
                }
            }
        };
        self.rx_cnt += n as u32;
        Ok(Progress::Moved(n))
    }

    /// The guest will send no more: once everything it sent is written, half-close the host
    /// stream so the host reads end of file.
    pub fn shutdown_host_write_if_flushed(&mut self) {
        if self.peer_shut_send && self.tx_buf.is_empty() {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }
}

fn io_err(e: vm_memory::VolatileMemoryError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Longest `CONNECT <port>\n` line a host client may send.
pub const MAX_CONNECT_LINE: usize = 32;

/// Parses the hybrid-vsock handshake line (`CONNECT <port>`, without the newline).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// A host client that has not finished its `CONNECT <port>\n` line yet.
#[derive(Debug)]
pub struct PendingHost {
    pub stream: UnixStream,
    line: Vec<u8>,
    /// When the client is dropped if its `CONNECT` line is still incomplete (set by the muxer).
    pub deadline: Option<std::time::Instant>,
}

/// What reading a pending host client produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Need more bytes.
    Incomplete,
    /// `CONNECT <port>`: and the bytes that followed the line.
    Connect(u32, Vec<u8>),
    /// Bad line, end of file or error: drop the client.
    Failed(String),
}

impl PendingHost {
    pub fn new(stream: UnixStream) -> Self {
        PendingHost {
            stream,
            line: Vec::new(),
            deadline: None,
        }
    }

    /// Reads what the client sent so far.
    pub fn read(&mut self) -> Handshake {
        let mut buf = [0u8; MAX_CONNECT_LINE];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Handshake::Failed("closed before CONNECT".into()),
                Ok(n) => self.line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Handshake::Failed(e.to_string()),
            }
            if self.line.contains(&b'\n') || self.line.len() > MAX_CONNECT_LINE {
                break;
            }
        }
        match self.line.iter().position(|&b| b == b'\n') {
            Some(end) => match parse_connect_line(&self.line[..end]) {
                Some(port) => Handshake::Connect(port, self.line[end + 1..].to_vec()),
                None => Handshake::Failed(format!(
                    "bad handshake line {:?}",
                    String::from_utf8_lossy(&self.line[..end])
                )),
            },
            None if self.line.len() > MAX_CONNECT_LINE => {
                Handshake::Failed("handshake line too long".into())
            }
            None => Handshake::Incomplete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT"), None);
        assert_eq!(parse_connect_line(b"CONNECT -1"), None);
        assert_eq!(parse_connect_line(b"connect 5"), None);
        assert_eq!(parse_connect_line(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect_line(&[0xff, 0xfe]), None);
    }

    #[test]
    fn handshake_keeps_trailing_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = PendingHost::new(a);
        assert_eq!(p.read(), Handshake::Incomplete);
        b.write_all(b"CONNECT 1").unwrap();
        assert_eq!(p.read(), Handshake::Incomplete);
        b.write_all(b"234\nhello").unwrap();
        assert_eq!(p.read(), Handshake::Connect(1234, b"hello".to_vec()));
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = PendingHost::new(a);
        b.write_all(&[b'x'; 40]).unwrap();
        assert!(matches!(p.read(), Handshake::Failed(_)));
    }

    #[test]
    fn credit_accounting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 1, 2, ConnState::Established, 1000);
        assert_eq!(c.peer_credit(), 0);
        c.update_peer_credit(100, 0);
        assert_eq!(c.peer_credit(), 100);
        c.rx_cnt += 60;
        assert_eq!(c.peer_credit(), 40);
        c.update_peer_credit(100, 60);
        assert_eq!(c.peer_credit(), 100);
        // Counters wrap.
        c.rx_cnt = Wrapping(u32::MAX - 9);
        c.update_peer_credit(100, u32::MAX - 9);
        c.rx_cnt += 20;
        assert_eq!(c.peer_credit(), 80);
        assert!(c.fits(1000));
        assert!(!c.fits(1001));
    }
}
