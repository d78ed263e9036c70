//! `-daemonize`, as QEMU does it: the process forks before anything starts; the parent waits
//! until the child has built the VM and bound its monitors, then exits 0 (or 1 if the child
//! failed first), so a caller that waits for the parent finds the monitor sockets ready. The
//! child leaves the session and, once ready, points stdin/stdout/stderr at /dev/null.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::unistd::{ForkResult, fork, pipe, setsid};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("-daemonize: {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// The child's end of the start-up pipe.
pub struct ReadyPipe(OwnedFd);

/// Forks. Returns in the child only; the parent exits with the child's start-up status.
/// Must be called while the process has a single thread.
pub fn daemonize() -> Result<ReadyPipe, DaemonError> {
    let sys = |what| move |source| DaemonError::Sys { what, source };
    let (rd, wr) = pipe().map_err(sys("pipe"))?;
    // SAFETY: the process is single-threaded here (the caller's contract: nothing has spawned
    // a thread yet), so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Parent { .. } => {
            drop(wr);
            let mut status = [1u8];
            let mut file = std::fs::File::from(rd);
            let code = match file.read(&mut status) {
                Ok(1) if status[0] == 0 => 0,
                _ => 1,
            };
            std::process::exit(code);
        }
        ForkResult::Child => {
            drop(rd);
            setsid().map_err(sys("setsid"))?;
            Ok(ReadyPipe(wr))
        }
    }
}

impl ReadyPipe {
    /// The VM is built and its monitors listen: release the parent and detach from the
    /// terminal (stdio to /dev/null).
    pub fn ready(self) {
        stdio_to_null();
        let mut file = std::fs::File::from(self.0);
        let _ = file.write_all(&[0]);
    }
}

/// /dev/null onto this process's stdin, stdout and stderr (the daemon once ready; the backend
/// launcher of a daemon from its start).
pub fn stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process; `null` is open.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
