//! Where the 8250's transmitted bytes go.
//!
//! vm-superio's `Serial` writes (and flushes) every byte the guest puts in THR through a
//! `std::io::Write`, on the vCPU thread. None of these sinks may block that thread for long: the
//! socket sink sends without blocking and, when a client stops reading, waits at most
//! [`STALL_WAIT`] once and then drops bytes until the client drains its socket.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, send};

/// How long a write waits for a full client socket before the client counts as stalled.
pub const STALL_WAIT: Duration = Duration::from_millis(100);

/// The connected client of a `-serial unix:...,server=on` socket (at most one at a time).
struct Client {
    stream: UnixStream,
    /// Set after a write gave up waiting for room: later writes drop bytes without waiting
    /// until a send succeeds again.
    stalled: bool,
}

/// The socket server's current client, shared by the vCPU (writes) and the accept thread.
#[derive(Default)]
pub struct ClientSlot {
    client: Mutex<Option<Client>>,
}

impl ClientSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `stream` the client that receives output.
    pub fn attach(&self, stream: UnixStream) {
        *self.lock() = Some(Client {
            stream,
            stalled: false,
        });
    }

    /// Forgets the current client (its socket is closed when the last clone is dropped).
    pub fn detach(&self) {
        *self.lock() = None;
    }

    /// Shuts the current client's socket down, which also ends its reader.
    pub fn disconnect(&self) {
        if let Some(client) = self.lock().take() {
            // Best effort: the client may already be gone.
            let _ = client.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Sends `buf` to the current client without blocking the caller for long; bytes that
    /// cannot be delivered (no client, stalled client, client gone) are dropped.
    fn send(&self, buf: &[u8]) {
        let mut slot = self.lock();
        let Some(client) = slot.as_mut() else {
            return;
        };
        let fd = client.stream.as_raw_fd();
        let mut sent = 0;
        while sent < buf.len() {
            match send(
                fd,
                &buf[sent..],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => {
                    sent += n;
                    client.stalled = false;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    if client.stalled || !wait_writable(&client.stream) {
                        if !client.stalled {
                            log::warn!("serial: socket client is not reading; dropping output");
                        }
                        client.stalled = true;
                        return;
                    }
                }
                Err(e) => {
                    log::info!("serial: socket client gone ({e}); output dropped until a new one");
                    let _ = client.stream.shutdown(std::net::Shutdown::Both);
                    *slot = None;
                    return;
                }
            }
        }
    }
}

/// Waits up to [`STALL_WAIT`] for room in the socket's send buffer.
fn wait_writable(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
    let timeout = PollTimeout::try_from(STALL_WAIT).unwrap_or(PollTimeout::ZERO);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

/// The serial output sink.
pub enum SerialOutput {
    Stdout(io::Stdout),
    Null,
    File(File),
    Socket(Arc<ClientSlot>),
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOutput::Stdout(out) => out.write(buf),
            SerialOutput::Null => Ok(buf.len()),
            SerialOutput::File(file) => file.write(buf),
            SerialOutput::Socket(slot) => {
                slot.send(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SerialOutput::Stdout(out) => out.flush(),
            SerialOutput::File(file) => file.flush(),
            SerialOutput::Null | SerialOutput::Socket(_) => Ok(()),
        }
    }
}
