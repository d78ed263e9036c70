//! The 8250/16550A UART at 0x3f8 (COM1, IRQ 4), built on vm-superio's `Serial`.
//!
//! Insert one [`SerialDevice`] at [`SERIAL_PORT_BASE`] with length [`SERIAL_PORT_LEN`]; its
//! interrupt is the `EventFd` given to [`SerialDevice::new`] (a KVM irqfd for GSI
//! [`SERIAL_IRQ`]). Where the bytes go and come from follows `-serial`:
//!
//! | config | output | input |
//! |---|---|---|
//! | `Stdio` | stdout | stdin (a terminal is put in raw mode, see [`restore_terminal`]) |
//! | `Null` | discarded | none |
//! | `File(path)` | `path`, created or truncated | none |
//! | `UnixServer { path, wait }` | the connected client, dropped when none | that client |
//! | `Pipe(path)` | `path.out` (or `path`) | `path.in` (or `path`) |
//!
//! The socket server replaces a stale socket file at `path`, serves one client at a time (later
//! ones wait in the listen backlog, as with QEMU), and with `wait` blocks `new` until the first
//! client connects. Output never blocks the vCPU for long: see [`output`]. Input waits for room
//! in the 64-byte receive FIFO rather than dropping bytes.

mod input;
mod output;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::socket::{Shutdown, shutdown};
use vm_superio::serial::Error as UartError;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::config::SerialConfig;
use input::{DrainSignal, InputSink};
use output::{ClientSlot, SerialOutput};

pub use input::restore_terminal;

/// COM1's first port.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// Number of UART registers.
pub const SERIAL_PORT_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const SERIAL_IRQ: u32 = 4;

/// A vm-superio [`Trigger`] that signals an `EventFd` (an irqfd, or a reset event).
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type Uart = Serial<EventFdTrigger, Arc<DrainSignal>, SerialOutput>;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open serial output file {}: {source}", path.display())]
    OpenFile { path: PathBuf, source: io::Error },
    #[error("cannot open serial pipe {p}.in/.out or {p}: {source}", p = path.display())]
    OpenPipe { path: PathBuf, source: io::Error },
    #[error("cannot listen on serial socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: vu_spec::unix::BindError,
    },
    #[error("waiting for a client on serial socket {}: {source}", path.display())]
    Accept { path: PathBuf, source: io::Error },
    #[error("cannot start the serial {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: io::Error,
    },
}

/// The socket server's handles the device keeps to shut it down.
struct SocketServer {
    path: PathBuf,
    /// A clone of the listening socket (the accept thread owns the other one).
    listener: UnixListener,
    slot: Arc<ClientSlot>,
}

/// COM1. See the module documentation.
pub struct SerialDevice {
    uart: Arc<Mutex<Uart>>,
    stop: Arc<AtomicBool>,
    socket: Option<SocketServer>,
    raw_terminal: bool,
    output_error_logged: bool,
}

impl SerialDevice {
    /// Builds COM1 for `cfg`, raising its interrupt through `irq`. With
    /// `SerialConfig::UnixServer { wait: true, .. }` this blocks until a client connects.
    pub fn new(cfg: &SerialConfig, irq: EventFd) -> Result<Self, SerialError> {
        Self::with_escape(cfg, 0x01, irq)
    }

    /// [`SerialDevice::new`] with `escape` as the terminal's escape key (`-echr`).
    pub fn with_escape(cfg: &SerialConfig, escape: u8, irq: EventFd) -> Result<Self, SerialError> {
        let mut pipe_in = None;
        let (out, socket) = match cfg {
            SerialConfig::Pipe(path) => {
                let (input, output) = open_pipe(path)?;
                pipe_in = Some(input);
                (SerialOutput::File(output), None)
            }
            SerialConfig::Stdio => (SerialOutput::Stdout(io::stdout()), None),
            SerialConfig::Null => (SerialOutput::Null, None),
            SerialConfig::File(path) => {
                let file = std::fs::File::create(path).map_err(|source| SerialError::OpenFile {
                    path: path.clone(),
                    source,
                })?;
                (SerialOutput::File(file), None)
            }
            SerialConfig::UnixServer { path, .. } => {
                let listener = vu_spec::unix::bind_replacing_socket(path).map_err(|source| {
                    SerialError::Bind {
                        path: path.clone(),
                        source,
                    }
                })?;
                let slot = Arc::new(ClientSlot::default());
                (SerialOutput::Socket(slot.clone()), Some((listener, slot)))
            }
        };
        let drain = Arc::new(DrainSignal::default());
        let uart = Arc::new(Mutex::new(Serial::with_events(
            EventFdTrigger::new(irq),
            drain.clone(),
            out,
        )));
        let sink = InputSink {
            uart: uart.clone(),
            drain,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let mut device = SerialDevice {
            uart,
            stop: sink.stop.clone(),
            socket: None,
            raw_terminal: false,
            output_error_logged: false,
        };
        let thread_err = |what| move |source| SerialError::Thread { what, source };

        match (cfg, socket) {
            (SerialConfig::UnixServer { path, wait }, Some((listener, slot))) => {
                let keep = listener.try_clone().map_err(thread_err("socket"))?;
                // From here on, dropping `device` shuts the server down and removes the file;
                // so does exiting the process.
                input::remove_socket_at_exit(path);
                device.socket = Some(SocketServer {
                    path: path.clone(),
                    listener: keep,
                    slot: slot.clone(),
                });
                let first = if *wait {
                    log::info!("serial: waiting for a client on {}", path.display());
                    let (stream, _) = listener.accept().map_err(|source| SerialError::Accept {
                        path: path.clone(),
                        source,
                    })?;
                    // Attached before `new` returns: the guest's first byte reaches it.
                    slot.attach(stream.try_clone().map_err(|source| SerialError::Accept {
                        path: path.clone(),
                        source,
                    })?);
                    Some(stream)
                } else {
                    None
                };
                input::spawn_socket_server(listener, first, slot, sink)
                    .map_err(thread_err("socket"))?;
            }
            (SerialConfig::Stdio, _) => {
                device.raw_terminal = true;
                input::spawn_stdin_reader(sink, escape).map_err(thread_err("stdin"))?;
            }
            (SerialConfig::Pipe(_), _) => {
                if let Some(input) = pipe_in {
                    input::spawn_file_reader(input, sink).map_err(thread_err("pipe"))?;
                }
            }
            _ => {}
        }
        Ok(device)
    }

    fn uart(&self) -> std::sync::MutexGuard<'_, Uart> {
        self.uart.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// QEMU's pipe chardev: `PATH.in` and `PATH.out` when both open, else `PATH` for both
/// directions. Opened read-write, so opening a named pipe does not wait for its peer.
pub fn open_pipe(path: &std::path::Path) -> Result<(std::fs::File, std::fs::File), SerialError> {
    let open = |p: &std::path::Path| std::fs::File::options().read(true).write(true).open(p);
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    if let (Ok(i), Ok(o)) = (open(&with(".in")), open(&with(".out"))) {
        return Ok((i, o));
    }
    let err = |source| SerialError::OpenPipe {
        path: path.to_path_buf(),
        source,
    };
    let both = open(path).map_err(err)?;
    let input = both.try_clone().map_err(err)?;
    Ok((input, both))
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(reg), [byte]) if offset < SERIAL_PORT_LEN => *byte = self.uart().read(reg),
            (_, data) => {
                log::debug!(
                    "serial: {}-byte read at offset {offset} ignored",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(reg), &[value]) = (u8::try_from(offset), data) else {
            log::debug!(
                "serial: {}-byte write at offset {offset} ignored",
                data.len()
            );
            return;
        };
        if offset >= SERIAL_PORT_LEN {
            log::debug!("serial: write at offset {offset} ignored");
            return;
        }
        let result = self.uart().write(reg, value);
        match result {
            Ok(()) => {}
            Err(UartError::Trigger(e)) => {
                log::warn!("serial: raising IRQ {SERIAL_IRQ} failed: {e}")
            }
            Err(UartError::IOError(e)) => {
                // Once per device: a closed stdout would otherwise log every byte.
                if !self.output_error_logged {
                    log::warn!("serial: output failed, dropping bytes: {e}");
                    self.output_error_logged = true;
                }
            }
            Err(UartError::FullFifo) => {}
        }
    }
}

impl Drop for SerialDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = &self.socket {
            // Wakes the accept thread (accept fails on a shut-down listener) and the reader.
            let _ = shutdown(server.listener.as_raw_fd(), Shutdown::Both);
            server.slot.disconnect();
            let _ = std::fs::remove_file(&server.path);
            input::forget_socket_at_exit(&server.path);
        }
        if self.raw_terminal {
            restore_terminal();
        }
    }
}

#[cfg(test)]
mod tests;
