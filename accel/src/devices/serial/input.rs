//! Bytes for the guest: the stdin reader, the unix-socket server, and the terminal mode.
//!
//! Both sources feed the UART's 64-byte receive FIFO with `enqueue_raw_bytes`; when it is full
//! they wait until the guest has drained it (vm-superio's `in_buffer_empty` event) instead of
//! dropping input.
//!
//! Terminal: when stdin is a terminal it is switched to the mode QEMU's `-serial stdio` uses
//! (no echo, no line editing, no CR/LF translation on input, 8 bits; ISIG stays on, so Ctrl-C
//! still interrupts accel like QEMU's default `signal=on`). The original mode is restored when
//! the device is dropped, at `exit()` (an `atexit` handler), and by [`restore_terminal`], which
//! a signal-handling path may call. In that mode Ctrl-A x quits (exit status 0), Ctrl-A Ctrl-A
//! sends one Ctrl-A, Ctrl-A h prints the keys; other Ctrl-A sequences are ignored, as in QEMU's
//! multiplexer. When stdin is not a terminal its bytes go to the guest unchanged.

use std::io::{self, IsTerminal, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sys::termios::{
    self, InputFlags, LocalFlags, OutputFlags, SetArg, SpecialCharacterIndices,
};
use vm_superio::serial::{Error as UartError, SerialEvents};

use super::Uart;
use super::output::ClientSlot;

/// Signalled by the UART when the guest has emptied the receive FIFO.
#[derive(Default)]
pub struct DrainSignal {
    drained: Mutex<bool>,
    cv: Condvar,
}

impl DrainSignal {
    fn reset(&self) {
        *self.drained.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// Waits until the FIFO was drained since the last `reset`, or `timeout`.
    fn wait(&self, timeout: Duration) {
        let guard = self.drained.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .cv
            .wait_timeout_while(guard, timeout, |drained| !*drained);
    }
}

impl SerialEvents for DrainSignal {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        *self.drained.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_all();
    }
}

/// What the input threads share with the device.
#[derive(Clone)]
pub struct InputSink {
    pub uart: Arc<Mutex<Uart>>,
    pub drain: Arc<DrainSignal>,
    pub stop: Arc<AtomicBool>,
}

impl InputSink {
    /// Puts all of `bytes` into the receive FIFO, waiting for the guest to drain it as needed.
    /// Returns early only when the device is shutting down.
    fn feed(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            self.drain.reset();
            let taken = {
                let mut uart = self.uart.lock().unwrap_or_else(PoisonError::into_inner);
                let room = uart.fifo_capacity();
                match uart.enqueue_raw_bytes(bytes) {
                    Ok(n) => n,
                    Err(UartError::FullFifo) => 0,
                    Err(UartError::Trigger(e)) => {
                        // The bytes are queued; only the interrupt was lost.
                        log::warn!("serial: raising the receive interrupt failed: {e}");
                        room.min(bytes.len())
                    }
                    Err(UartError::IOError(e)) => {
                        log::warn!("serial: input error: {e}");
                        0
                    }
                }
            };
            bytes = &bytes[taken..];
            if !bytes.is_empty() {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                // The timeout only guards against a missed wake-up (e.g. loopback mode).
                self.drain.wait(Duration::from_millis(100));
            }
        }
    }
}

/// Serves `-serial unix:` clients one at a time: output goes to the attached client, its input
/// to the guest. `first` is a client already accepted (the `wait=on` case).
pub fn spawn_socket_server(
    listener: UnixListener,
    first: Option<UnixStream>,
    slot: Arc<ClientSlot>,
    sink: InputSink,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("serial-socket".into())
        .spawn(move || {
            let mut next = first;
            loop {
                if sink.stop.load(Ordering::Relaxed) {
                    return;
                }
                let stream = match next.take() {
                    Some(s) => s,
                    None => match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) => {
                            if !sink.stop.load(Ordering::Relaxed) {
                                log::error!("serial: accepting a socket client failed: {e}");
                            }
                            return;
                        }
                    },
                };
                if sink.stop.load(Ordering::Relaxed) {
                    return;
                }
                serve_client(stream, &slot, &sink);
            }
        })
}

fn serve_client(stream: UnixStream, slot: &ClientSlot, sink: &InputSink) {
    let mut reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            log::error!("serial: cannot use the socket client: {e}");
            return;
        }
    };
    log::info!("serial: socket client connected");
    slot.attach(stream);
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sink.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::info!("serial: socket client read error: {e}");
                break;
            }
        }
        if sink.stop.load(Ordering::Relaxed) {
            break;
        }
    }
    log::info!("serial: socket client disconnected");
    slot.detach();
}

/// Feeds what `file` (a named pipe's read end) yields to the guest until EOF or shutdown.
pub fn spawn_file_reader(mut file: std::fs::File, sink: InputSink) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("serial-pipe".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => sink.feed(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::warn!("serial: reading the input pipe failed: {e}");
                        return;
                    }
                }
                if sink.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        })
}

/// Reads stdin (switching a terminal to raw mode) and feeds it to the guest until EOF.
/// `escape` is the terminal's escape key (`-echr`, Ctrl-A by default).
pub fn spawn_stdin_reader(sink: InputSink, escape: u8) -> io::Result<JoinHandle<()>> {
    let tty = io::stdin().is_terminal();
    if tty {
        enter_raw_mode();
    }
    thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin();
            let escape_key = escape;
            let mut escape = false;
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("serial: reading stdin failed: {e}");
                        return;
                    }
                };
                if tty {
                    let bytes = filter_escapes(&buf[..n], escape_key, &mut escape);
                    sink.feed(&bytes);
                } else {
                    sink.feed(&buf[..n]);
                }
                if sink.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        })
}

/// Handles QEMU-style escape sequences (`key` is Ctrl-A unless `-echr` changes it); returns
/// the bytes meant for the guest.
fn filter_escapes(input: &[u8], key: u8, escape: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    for &b in input {
        if !*escape {
            if b == key {
                *escape = true;
            } else {
                out.push(b);
            }
            continue;
        }
        *escape = false;
        match b {
            b'x' | b'X' => {
                restore_terminal();
                eprintln!("accel: terminated (Ctrl-A x)");
                std::process::exit(0);
            }
            b if b == key => out.push(key),
            b'h' | b'H' | b'?' => {
                eprint!("\r\nC-a x    exit\r\nC-a C-a  send C-a\r\nC-a h    this help\r\n");
            }
            _ => {}
        }
    }
    out
}

/// The terminal mode stdin had before [`enter_raw_mode`].
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);
/// Socket files to remove when the process exits (QEMU removes its server sockets too).
static SOCKETS_TO_REMOVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

extern "C" fn cleanup_at_exit() {
    restore_terminal();
    let paths = std::mem::take(
        &mut *SOCKETS_TO_REMOVE
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}

fn register_exit_cleanup() {
    ATEXIT.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function without captured state; it only
        // restores stdin's terminal mode and removes files.
        if unsafe { libc::atexit(cleanup_at_exit) } != 0 {
            log::warn!("serial: cannot register the exit cleanup");
        }
    });
}

/// Removes the socket file at `path` when the process calls `exit()`, unless
/// [`forget_socket_at_exit`] is called first.
pub fn remove_socket_at_exit(path: &Path) {
    SOCKETS_TO_REMOVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(path.to_path_buf());
    register_exit_cleanup();
}

/// Undoes [`remove_socket_at_exit`] (the device removed the file itself).
pub fn forget_socket_at_exit(path: &Path) {
    SOCKETS_TO_REMOVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|p| p != path);
}

fn enter_raw_mode() {
    let stdin = io::stdin();
    let original = match termios::tcgetattr(&stdin) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("serial: cannot read the terminal mode of stdin: {e}");
            return;
        }
    };
    let mut raw = original.clone();
    raw.input_flags &= !(InputFlags::IGNBRK
        | InputFlags::BRKINT
        | InputFlags::PARMRK
        | InputFlags::ISTRIP
        | InputFlags::INLCR
        | InputFlags::IGNCR
        | InputFlags::ICRNL
        | InputFlags::IXON);
    raw.output_flags |= OutputFlags::OPOST;
    raw.local_flags &=
        !(LocalFlags::ECHO | LocalFlags::ECHONL | LocalFlags::ICANON | LocalFlags::IEXTEN);
    raw.control_flags &= !(termios::ControlFlags::CSIZE | termios::ControlFlags::PARENB);
    raw.control_flags |= termios::ControlFlags::CS8;
    raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    {
        let mut saved = SAVED_TERMIOS.lock().unwrap_or_else(PoisonError::into_inner);
        if saved.is_none() {
            *saved = Some(original.into());
        }
    }
    register_exit_cleanup();
    if let Err(e) = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw) {
        log::warn!("serial: cannot switch stdin to raw mode: {e}");
    }
}

/// Puts stdin's terminal back in the mode it had before `-serial stdio` changed it. Harmless
/// when nothing was changed; call it from paths that end the process without `exit()`.
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(t) = saved {
        let stdin = io::stdin();
        if let Err(e) = termios::tcsetattr(&stdin, SetArg::TCSANOW, &t.into()) {
            log::warn!(
                "serial: cannot restore the terminal mode (fd {}): {e}",
                stdin.as_raw_fd()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_sequences() {
        let mut esc = false;
        assert_eq!(filter_escapes(b"ab\x01", 1, &mut esc), b"ab");
        assert!(esc);
        // Split across reads: Ctrl-A Ctrl-A sends one Ctrl-A.
        assert_eq!(filter_escapes(b"\x01c", 1, &mut esc), b"\x01c");
        assert!(!esc);
        // Unknown escapes are swallowed.
        assert_eq!(filter_escapes(b"\x01zq", 1, &mut esc), b"q");
    }

    #[test]
    fn echr_moves_the_escape_key() {
        // -echr 0x14: Ctrl-T is the escape key, Ctrl-A reaches the guest unchanged.
        let mut esc = false;
        assert_eq!(filter_escapes(b"\x01a\x14", 0x14, &mut esc), b"\x01a");
        assert!(esc);
        assert_eq!(filter_escapes(b"\x14", 0x14, &mut esc), b"\x14");
        assert!(!esc);
    }
}
