//! Where console bytes go and come from, independent of any frontend connection: the output
//! sink (a file, stdout, or the client of a unix socket) and the input queue filled by a reader
//! thread (stdin or that client). The input queue's eventfd wakes the backend's worker.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Input bytes held for the guest before the reader thread waits (backpressure).
pub const INPUT_CAPACITY: usize = 64 * 1024;
/// Output kept for a socket client that has not connected yet (oldest bytes dropped beyond).
pub const PENDING_OUTPUT: usize = 64 * 1024;
/// How long a write to a socket client may block before the client is dropped.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes on their way to the guest's receiveq.
pub struct InputQueue {
    buf: Mutex<VecDeque<u8>>,
    space: Condvar,
    ready: EventFd,
}

impl InputQueue {
    pub fn new() -> io::Result<Self> {
        Ok(InputQueue {
            buf: Mutex::new(VecDeque::new()),
            space: Condvar::new(),
            ready: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Readable when input arrived (register in the worker's epoll; drain with
    /// [`clear_ready`](Self::clear_ready)).
    pub fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    pub fn clear_ready(&self) {
        // EAGAIN just means nothing was signalled.
        let _ = self.ready.read();
    }

    /// Queues `data`, waiting while the queue is full.
    pub fn push(&self, data: &[u8]) {
        let Ok(mut buf) = self.buf.lock() else {
            return;
        };
        while buf.len() >= INPUT_CAPACITY {
            buf = match self.space.wait(buf) {
                Ok(b) => b,
                Err(_) => return,
            };
        }
        buf.extend(data);
        drop(buf);
        if let Err(e) = self.ready.write(1) {
            vu_daemon::log_limited!(log::Level::Error, "cannot signal console input: {e}");
        }
    }

    /// Takes up to `max` queued bytes.
    pub fn take(&self, max: usize) -> Vec<u8> {
        let Ok(mut buf) = self.buf.lock() else {
            return Vec::new();
        };
        let n = max.min(buf.len());
        let out: Vec<u8> = buf.drain(..n).collect();
        if n > 0 {
            self.space.notify_all();
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.buf.lock().map(|b| b.is_empty()).unwrap_or(true)
    }
}

/// The client of `--socket P`, and output produced while none is connected.
struct SocketPeer {
    client: Mutex<Option<UnixStream>>,
    pending: Mutex<VecDeque<u8>>,
}

impl SocketPeer {
    fn write(&self, data: &[u8]) {
        let Ok(mut client) = self.client.lock() else {
            return;
        };
        if let Some(c) = client.as_mut() {
            match c.write_all(data) {
                Ok(()) => return,
                Err(e) => {
                    vu_daemon::log_limited!(log::Level::Warn, "console client dropped: {e}");
                    let _ = c.shutdown(std::net::Shutdown::Both);
                    *client = None;
                }
            }
        }
        if let Ok(mut p) = self.pending.lock() {
            p.extend(data);
            let excess = p.len().saturating_sub(PENDING_OUTPUT);
            p.drain(..excess);
        }
    }

    /// Makes `stream` the client: sends it the pending output first.
    fn attach(&self, mut stream: UnixStream) {
        let Ok(mut client) = self.client.lock() else {
            return;
        };
        if let Ok(mut p) = self.pending.lock() {
            let (a, b) = p.as_slices();
            if stream
                .write_all(a)
                .and_then(|()| stream.write_all(b))
                .is_err()
            {
                vu_daemon::log_limited!(
                    log::Level::Warn,
                    "console client went away before its first output"
                );
                return;
            }
            p.clear();
        }
        *client = Some(stream);
    }

    fn detach(&self) {
        if let Ok(mut client) = self.client.lock() {
            *client = None;
        }
    }
}

/// Where the guest's output goes.
enum Sink {
    File(Mutex<File>),
    Stdout,
    Socket(Arc<SocketPeer>),
}

/// Output and input of the console.
pub struct ConsoleIo {
    sink: Sink,
    input: Arc<InputQueue>,
}

/// Why the console's endpoints could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("cannot open the output file {path}: {source}")]
    Output { path: PathBuf, source: io::Error },
    #[error("cannot listen on the console socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: vu_spec::unix::BindError,
    },
    #[error("cannot start the console input: {0}")]
    Input(io::Error),
}

impl ConsoleIo {
    /// Output appended to `path` (created, truncated); no input.
    pub fn file(path: &Path) -> Result<Self, IoError> {
        let file = File::create(path).map_err(|source| IoError::Output {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ConsoleIo {
            sink: Sink::File(Mutex::new(file)),
            input: Arc::new(InputQueue::new().map_err(IoError::Input)?),
        })
    }

    /// Output to stdout, input from stdin (read by a thread until end of file).
    pub fn stdio() -> Result<Self, IoError> {
        let input = Arc::new(InputQueue::new().map_err(IoError::Input)?);
        let feed = input.clone();
        spawn_without_exit_signals("console-stdin", move || {
            read_into(&mut io::stdin().lock(), &feed)
        })
        .map_err(IoError::Input)?;
        Ok(ConsoleIo {
            sink: Sink::Stdout,
            input,
        })
    }

    /// Listens on unix socket `path` (a stale socket file is replaced): output goes to the
    /// connected client (kept, up to [`PENDING_OUTPUT`] bytes, while none is), input comes
    /// from it. One client at a time; the next one is accepted when it leaves.
    pub fn socket(path: &Path) -> Result<Self, IoError> {
        let listen_err = |source| IoError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let listener = vu_spec::unix::bind_replacing_socket(path).map_err(listen_err)?;
        let peer = Arc::new(SocketPeer {
            client: Mutex::new(None),
            pending: Mutex::new(VecDeque::new()),
        });
        let input = Arc::new(InputQueue::new().map_err(IoError::Input)?);
        let (p, feed) = (peer.clone(), input.clone());
        spawn_without_exit_signals("console-socket", move || {
            serve_clients(&listener, &p, &feed)
        })
        .map_err(IoError::Input)?;
        Ok(ConsoleIo {
            sink: Sink::Socket(peer),
            input,
        })
    }

    pub fn input(&self) -> &Arc<InputQueue> {
        &self.input
    }

    /// Writes guest output to the sink; failures are logged, never returned to the guest.
    pub fn output(&self, data: &[u8]) {
        match &self.sink {
            Sink::File(f) => {
                if let Ok(mut f) = f.lock()
                    && let Err(e) = f.write_all(data)
                {
                    vu_daemon::log_limited!(log::Level::Warn, "console output file: {e}");
                }
            }
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
                    vu_daemon::log_limited!(log::Level::Warn, "console stdout: {e}");
                }
            }
            Sink::Socket(peer) => peer.write(data),
        }
    }
}

/// Starts a thread with SIGTERM/SIGINT/SIGHUP blocked, so that the daemon's signal thread
/// (installed later, see `vu_daemon::run`) is the one that takes them.
fn spawn_without_exit_signals(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    let old = set.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    let r = std::thread::Builder::new().name(name.into()).spawn(f);
    old.thread_set_mask()?;
    r.map(|_| ())
}

/// Copies `src` into the input queue until end of file or an error.
fn read_into(src: &mut impl Read, input: &InputQueue) {
    let mut buf = [0u8; 4096];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => input.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                vu_daemon::log_limited!(log::Level::Warn, "console input: {e}");
                return;
            }
        }
    }
}

fn serve_clients(listener: &UnixListener, peer: &SocketPeer, input: &InputQueue) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                vu_daemon::log_limited!(log::Level::Warn, "console socket accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        vu_daemon::log_limited!(log::Level::Info, "console client connected");
        let writer = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                vu_daemon::log_limited!(log::Level::Warn, "console client: {e}");
                continue;
            }
        };
        let _ = writer.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        peer.attach(writer);
        read_into(&mut &stream, input);
        peer.detach();
        vu_daemon::log_limited!(log::Level::Info, "console client disconnected");
    }
}
