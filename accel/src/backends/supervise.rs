//! The backends accel runs: their listening sockets (created by accel), the supervision loop
//! that restarts one that dies, and their end when accel ends.
//!
//! Starting, restarting and stopping them needs fork/exec, which accel's seccomp filter
//! denies: it all happens in the launcher ([`super::launcher`]), a process accel forks at
//! setup, which runs [`supervise`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::argv;
use super::spawn::{self, Ended, Program};
use crate::config::VmConfig;

/// A backend that lived at least this long before dying is restarted at once.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// First delay before restarting a backend that keeps dying soon after starting; doubled
/// each time up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(50);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// How long backends get to exit after SIGTERM when accel ends, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BackendsError {
    #[error("creating the backends' socket directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{label}: creating the backend socket {path}: {source}")]
    Listen {
        label: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{label}: backend program '{program}' not found next to accel or on PATH (looked at {tried})"
    )]
    NotFound {
        label: String,
        program: String,
        tried: String,
    },
    #[error("{label}: {reason}")]
    Input { label: String, reason: String },
    #[error("{label}: fd {fd} is not open (passed with fd=/fds=)")]
    BadFd { label: String, fd: RawFd },
    #[error("{label}: starting {program}: {source}")]
    Start {
        label: String,
        program: String,
        source: std::io::Error,
    },
    #[error("starting the backend launcher: {0}")]
    Launcher(std::io::Error),
}

/// One backend.
pub(super) struct Managed {
    pub(super) label: String,
    name: &'static str,
    pub(super) program: Program,
    /// Kept open for restarts: connects made while the backend is down wait in its backlog.
    _listener: UnixListener,
    /// The running process, if any.
    running: Option<spawn::Started>,
    started: Instant,
    quick_deaths: u32,
    restart_at: Option<Instant>,
}

impl Managed {
    pub(super) fn start(&mut self) -> std::io::Result<()> {
        let s = spawn::start(&self.program)?;
        log::info!("{}: served by {} (pid {})", self.label, self.name, s.pid);
        self.running = Some(s);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }

    /// Reaps the process if it ended, and schedules its restart.
    fn check(&mut self) {
        let Some(pid) = self.running.as_ref().map(|s| s.pid) else {
            return;
        };
        let Some(ended) = spawn::reap(pid, false) else {
            return;
        };
        self.running = None;
        if self.started.elapsed() >= HEALTHY_RUN {
            self.quick_deaths = 0;
        } else {
            self.quick_deaths = self.quick_deaths.saturating_add(1);
        }
        let delay = if self.quick_deaths == 0 {
            Duration::ZERO
        } else {
            FIRST_RESTART_DELAY
                .saturating_mul(1 << (self.quick_deaths - 1).min(10))
                .min(MAX_RESTART_DELAY)
        };
        // A backend dying in a loop logs at most one line per 10 deaths (>= 5 s apart).
        if self.quick_deaths < 5 || self.quick_deaths.is_multiple_of(10) {
            log::warn!(
                "{}: {} (pid {pid}) {ended}; restarting it in {delay:?}",
                self.label,
                self.name
            );
        }
        self.restart_at = Some(Instant::now() + delay);
    }

    fn restart_if_due(&mut self, now: Instant) {
        if self.restart_at.is_some_and(|t| t <= now)
            && let Err(e) = self.start()
        {
            log::warn!("{}: restarting {}: {e}", self.label, self.name);
            self.restart_at = Some(now + MAX_RESTART_DELAY);
        }
    }
}

/// The backends of one VM. Dropping it stops them (SIGTERM, then SIGKILL) and removes their
/// sockets.
pub struct Backends {
    /// Removed by the launcher when it ends (by accel if it never started).
    dir: Option<PathBuf>,
    launcher: Option<super::launcher::Launcher>,
}

/// A directory only accel's user can enter, for the backends' sockets.
fn runtime_dir() -> Result<PathBuf, BackendsError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let pid = std::process::id();
    let mut last = None;
    // A name never used before in this process (tests create several: a directory one of
    // them removed must not come back under the same name for another).
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = base.join(format!("accel-{pid}-{n}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(source) => return Err(BackendsError::RuntimeDir { path, source }),
        }
    }
    Err(BackendsError::RuntimeDir {
        path: base,
        source: last.unwrap_or_else(|| std::io::Error::other("no free name")),
    })
}

impl Backends {
    /// Starts a backend for each of `config.spawned` (through the launcher, which it forks:
    /// call while accel has a single thread) and points its chardev at the backend's socket.
    /// Call before the devices connect.
    pub fn start(config: &mut VmConfig) -> Result<Backends, BackendsError> {
        let mut backends = Backends {
            dir: None,
            launcher: None,
        };
        if config.spawned.is_empty() {
            return Ok(backends);
        }
        let dir = runtime_dir()?;
        backends.dir = Some(dir.clone());
        let mut managed = Vec::new();
        prepare_all(config, &dir, &mut managed)?;
        // From here on the launcher owns the directory (and removes it when it ends).
        let detach = config.lifecycle.daemonize;
        backends.launcher = Some(super::launcher::start(managed, &dir, detach)?);
        backends.dir = None;
        Ok(backends)
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        // Waits until the launcher has stopped the backends and removed their directory.
        drop(self.launcher.take());
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Prepares every backend of `config.spawned` into `managed`: its program, its listening
/// socket (which its chardev now names), its arguments; the launcher starts them.
fn prepare_all(
    config: &mut VmConfig,
    dir: &std::path::Path,
    managed: &mut Vec<Managed>,
) -> Result<(), BackendsError> {
    for (n, s) in config.spawned.iter().enumerate() {
        let row = argv::row_for(&s.backend);
        argv::precheck(&s.backend).map_err(|reason| BackendsError::Input {
            label: s.label.clone(),
            reason,
        })?;
        let path = spawn::find_program(row.name).map_err(|tried| BackendsError::NotFound {
            label: s.label.clone(),
            program: row.name.into(),
            tried: tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let sock = dir.join(format!("{n}-{}.sock", row.name));
        let listener = UnixListener::bind(&sock).map_err(|source| BackendsError::Listen {
            label: s.label.clone(),
            path: sock.clone(),
            source,
        })?;
        let mut keep = vec![listener.as_raw_fd()];
        for fd in argv::passed_fds(&s.backend) {
            // SAFETY: F_GETFD only reads the fd's flags.
            if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(BackendsError::BadFd {
                    label: s.label.clone(),
                    fd,
                });
            }
            keep.push(fd);
        }
        if let Some(c) = config.chardevs.iter_mut().find(|c| c.id == s.chardev) {
            c.path = sock.clone();
        }
        managed.push(Managed {
            label: s.label.clone(),
            name: row.name,
            program: Program {
                path,
                args: argv::args(&s.backend, listener.as_raw_fd()),
                keep_fds: keep,
                stdin: argv::uses_stdin(&s.backend),
            },
            _listener: listener,
            running: None,
            started: Instant::now(),
            quick_deaths: 0,
            restart_at: None,
        });
    }
    Ok(())
}

/// The supervision loop (the launcher's): restarts backends that die, until one of `stop` is
/// readable or hung up; then stops them all.
pub(super) fn supervise(mut managed: Vec<Managed>, stop: &[BorrowedFd<'_>]) {
    loop {
        let now = Instant::now();
        for m in managed.iter_mut() {
            m.restart_if_due(now);
        }
        let next = managed.iter().filter_map(|m| m.restart_at).min();
        let timeout = next.map_or(PollTimeout::NONE, |t| {
            PollTimeout::try_from(t.saturating_duration_since(now) + Duration::from_millis(1))
                .unwrap_or(PollTimeout::MAX)
        });
        let mut fds: Vec<PollFd> = stop
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        fds.extend(
            managed
                .iter()
                .filter_map(|m| m.running.as_ref())
                .map(|s| PollFd::new(s.pidfd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                log::error!("backend supervisor: poll: {e}; no more restarts");
                break;
            }
        }
        if fds[..stop.len()]
            .iter()
            .any(|f| f.revents().is_some_and(|r| !r.is_empty()))
        {
            break;
        }
        drop(fds);
        for m in managed.iter_mut() {
            m.check();
        }
    }
    stop_all(&mut managed);
}

/// SIGTERM to every backend, SIGKILL to those still there after [`STOP_GRACE`]; all reaped.
pub(super) fn stop_all(managed: &mut [Managed]) {
    let signal = |m: &Managed, sig| {
        if let Some(s) = &m.running {
            // SAFETY: kill(2) of our own, not yet reaped child.
            unsafe { libc::kill(s.pid, sig) };
        }
    };
    for m in managed.iter() {
        signal(m, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        for m in managed.iter_mut() {
            if let Some(s) = &m.running
                && spawn::reap(s.pid, false).is_some()
            {
                m.running = None;
            }
        }
        let left: Vec<PollFd> = managed
            .iter()
            .filter_map(|m| m.running.as_ref())
            .map(|s| PollFd::new(s.pidfd.as_fd(), PollFlags::POLLIN))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        let mut left = left;
        let wait = deadline.saturating_duration_since(Instant::now());
        let _ = poll(
            &mut left,
            PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
        );
    }
    for m in managed.iter_mut() {
        if let Some(s) = m.running.take() {
            log::warn!(
                "{}: {} (pid {}) ignored SIGTERM; killing it",
                m.label,
                m.name,
                s.pid
            );
            // SAFETY: kill(2) of our own, not yet reaped child.
            unsafe { libc::kill(s.pid, libc::SIGKILL) };
            let _: Option<Ended> = spawn::reap(s.pid, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    fn pids(file: &std::path::Path) -> Vec<i32> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn gone(pid: i32) -> bool {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    /// A backend running `sh` that appends its pid to `file` (after checking it got the
    /// listening socket) and then sleeps.
    fn sh_backend(dir: &std::path::Path, file: &std::path::Path) -> Managed {
        let listener = UnixListener::bind(dir.join("s")).unwrap();
        let fd = listener.as_raw_fd();
        let script = format!(
            "[ -e /proc/self/fd/{fd} ] || exit 9; echo $$ >> {}; exec sleep 100",
            file.display()
        );
        Managed {
            label: "-device test".into(),
            name: "sh",
            program: Program {
                path: spawn::find_program("sh").unwrap(),
                args: vec!["-c".into(), script.into()],
                keep_fds: vec![fd],
                stdin: false,
            },
            _listener: listener,
            running: None,
            started: Instant::now(),
            quick_deaths: 0,
            restart_at: None,
        }
    }

    /// A process that dies is restarted on the same listening socket, and stopping the
    /// supervisor ends (and reaps) the current one.
    #[test]
    fn restarts_a_killed_backend_and_stops_it_at_the_end() {
        let dir = runtime_dir().unwrap();
        let file = dir.join("pids");
        let mut m = sh_backend(&dir, &file);
        m.start().unwrap();
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let stop2 = stop.clone();
        let t = std::thread::spawn(move || {
            // SAFETY: the eventfd outlives the loop (the closure owns an Arc of it).
            let fd = unsafe { BorrowedFd::borrow_raw(stop2.as_raw_fd()) };
            supervise(vec![m], &[fd])
        });
        assert!(wait_for(|| pids(&file).len() == 1));
        let first = pids(&file)[0];
        // SAFETY: kill(2) of the child started above.
        unsafe { libc::kill(first, libc::SIGKILL) };
        assert!(wait_for(|| pids(&file).len() == 2), "not restarted");
        let second = pids(&file)[1];
        assert_ne!(first, second);
        assert!(wait_for(|| gone(first)), "the killed one was not reaped");
        stop.write(1).unwrap();
        t.join().unwrap();
        assert!(gone(second), "still running after the supervisor stopped");
        assert_eq!(pids(&file).len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn parent_of(pid: i32) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// The launcher (a forked process, not accel) starts the backend, restarts it when it is
    /// killed, and when accel drops it stops the backend, removes the socket directory and is
    /// reaped.
    #[test]
    fn the_launcher_process_starts_restarts_and_stops_backends() {
        let dir = runtime_dir().unwrap();
        let out = runtime_dir().unwrap();
        let file = out.join("pids");
        let m = sh_backend(&dir, &file);
        let launcher = super::super::launcher::start(vec![m], &dir, false).unwrap();
        assert!(wait_for(|| pids(&file).len() == 1));
        let first = pids(&file)[0];
        let launcher_pid = parent_of(first).unwrap();
        assert_ne!(
            launcher_pid,
            std::process::id() as i32,
            "started by the test itself"
        );
        assert_eq!(parent_of(launcher_pid), Some(std::process::id() as i32));
        let comm = std::fs::read_to_string(format!("/proc/{launcher_pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "accel-launcher");
        // SAFETY: kill(2) of the backend started by the launcher.
        unsafe { libc::kill(first, libc::SIGKILL) };
        assert!(wait_for(|| pids(&file).len() == 2), "not restarted");
        let second = pids(&file)[1];
        assert_ne!(first, second);
        assert_eq!(parent_of(second), Some(launcher_pid));
        drop(launcher);
        assert!(gone(second), "the backend outlived the launcher");
        assert!(gone(launcher_pid), "the launcher was not reaped");
        assert!(!dir.exists(), "the socket directory is left");
        assert_eq!(pids(&file).len(), 2);
        std::fs::remove_dir_all(&out).unwrap();
    }

    /// A backend that cannot be started fails accel's setup, naming it.
    #[test]
    fn a_backend_the_launcher_cannot_start_is_an_error() {
        let dir = runtime_dir().unwrap();
        let mut m = sh_backend(&dir, &dir.join("pids"));
        m.program.path = dir.join("no-such-program");
        let err = match super::super::launcher::start(vec![m], &dir, false) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("started"),
        };
        assert!(err.contains("-device test: starting"), "{err}");
        assert!(err.contains("No such file"), "{err}");
        assert!(!dir.exists(), "the socket directory is left");
    }
}
