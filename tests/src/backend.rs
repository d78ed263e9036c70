//! Backend processes the tests start, and host-side checks on what guests report.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{KillOnDrop, bin, wait_for_path};

/// How long a backend gets to create its socket.
pub const BACKEND_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A vhost-user backend process listening on its socket; killed (and reaped) on drop.
pub struct Backend {
    _child: KillOnDrop,
    socket: PathBuf,
}

impl Backend {
    /// Starts `bin(name) --socket-path socket args...` (stdout to /dev/null, stderr inherited)
    /// and waits until the socket exists (not with `--client`: then the socket is the
    /// frontend's, and the backend connects once it listens).
    pub fn spawn<S: AsRef<OsStr>>(name: &str, socket: &Path, args: &[S]) -> Backend {
        Self::start(name, socket, args, Stdio::null(), Stdio::inherit(), None)
    }

    /// The same with stdout and stderr appended to `log` (created if missing); the log is in
    /// the message if the socket does not appear.
    pub fn spawn_logged<S: AsRef<OsStr>>(
        name: &str,
        socket: &Path,
        args: &[S],
        log: &Path,
    ) -> Backend {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("backend log");
        let out = file.try_clone().expect("backend log");
        Self::start(name, socket, args, out.into(), file.into(), Some(log))
    }

    fn start<S: AsRef<OsStr>>(
        name: &str,
        socket: &Path,
        args: &[S],
        stdout: Stdio,
        stderr: Stdio,
        log: Option<&Path>,
    ) -> Backend {
        let client = args.iter().any(|a| a.as_ref() == "--client");
        // A socket file left by an earlier process would pass for the new one's.
        if !client {
            let _ = std::fs::remove_file(socket);
        }
        let child = Command::new(bin(name))
            .arg("--socket-path")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let child = KillOnDrop(child);
        assert!(
            client || wait_for_path(socket, BACKEND_SOCKET_TIMEOUT),
            "backend socket {} did not appear: {}",
            socket.display(),
            log.and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default()
        );
        Backend {
            _child: child,
            socket: socket.to_path_buf(),
        }
    }

    /// The backend's process id (for /proc/PID/... measurements).
    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    /// SIGKILL, and reaps it (a crash, as far as its frontend can tell).
    pub fn kill(self) {
        let mut child = self._child;
        let _ = child.0.kill();
        let _ = child.0.wait();
    }

    /// The vhost-user socket the backend listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// `len` deterministic, non-repeating bytes (xorshift64 from `seed`, which must not be 0), so
/// that any misplaced sector shows up.
pub fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

/// The md5 of `data` as `md5sum` prints it (what the guest's `md5sum` is compared with).
pub fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
