//! The launcher: a process accel forks at setup, while it is still single-threaded and holds
//! nothing of the VM yet (no guest RAM, no KVM fd), that starts the backends of the built-in
//! devices, restarts them when they die and stops them when accel ends. accel itself then
//! never forks or executes anything, so its seccomp filter denies `execve`, `fork` and `clone`
//! of a new process (its confinement is on by default, see [`crate::vmm::confine`]).
//!
//! accel asks the launcher nothing: the launcher reads no request, so a taken-over accel
//! cannot make it start anything. Two pipes tie them together:
//! - control (accel → launcher): accel holds the write end and never writes; its closing (accel
//!   dropping [`Launcher`] at exit, or accel dying in any way) is the launcher's signal to stop
//!   the backends (SIGTERM, SIGKILL 2 s later, all reaped), remove their socket directory and
//!   exit;
//! - report (launcher → accel): one line once the first start of every backend is done (`ok`,
//!   or which one failed and why), then end of file when the launcher exits, which accel waits
//!   for at exit so that no backend outlives it.
//!
//! The launcher also dies with accel through `PR_SET_PDEATHSIG` (SIGTERM, read from a
//! signalfd: it stops the backends the same way), and keeps only the fds the backends need
//! (their listening sockets, tap fds passed to accel, stdio) plus its two pipes. It runs as
//! the user accel was started as, unconfined (it executes the backends, which confine
//! themselves), so a restarted backend gets the rights of the first one (`-run-with user=`
//! applies to accel only). Its log lines (`served by`, restarts) go to accel's stderr.
//!
//! With `-daemonize` the launcher points its stdin, stdout and stderr at /dev/null before it
//! starts anything, so the backends inherit those: once the daemon is ready and has done the
//! same with its own, no process of the VM holds the caller's terminal or pipes (a caller
//! reading accel's output to its end gets it when the parent exits, as with QEMU). A backend
//! that fails to start is still named by accel (the launcher's report, or the connection).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::{ForkResult, fork, pipe2};

use super::BackendsError;
use super::spawn;
use super::supervise::{Managed, supervise};

/// The name the launcher process gets (`/proc/PID/comm`).
const NAME: &[u8] = b"accel-launcher\0";

/// accel's handle on the launcher. Dropping it stops the launcher and its backends and waits
/// until they are gone.
pub struct Launcher {
    pid: libc::pid_t,
    control: Option<OwnedFd>,
    report: Option<File>,
}

/// What accel knows of each backend, to name a failed first start.
struct Named {
    label: String,
    program: String,
}

/// Forks the launcher, which starts every backend of `managed` and supervises them; returns
/// once each has been started once. `detach` (`-daemonize`): the launcher and the backends
/// get /dev/null as stdio. Call while the process has a single thread (fork).
pub(super) fn start(
    managed: Vec<Managed>,
    dir: &Path,
    detach: bool,
) -> Result<Launcher, BackendsError> {
    let sys = |source: nix::Error| BackendsError::Launcher(std::io::Error::from(source));
    let names: Vec<Named> = managed
        .iter()
        .map(|m| Named {
            label: m.label.clone(),
            program: m.program.path.display().to_string(),
        })
        .collect();
    let (control_rd, control_wr) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys)?;
    let (report_rd, report_wr) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys)?;
    // SAFETY: getpid has no preconditions.
    let accel = unsafe { libc::getpid() };
    // SAFETY: accel calls this at setup, before it starts any thread (see `vmm::run`), so the
    // child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(sys)? {
        ForkResult::Child => {
            drop(control_wr);
            drop(report_rd);
            if detach {
                crate::vmm::daemon::stdio_to_null();
            }
            let code = launcher_main(managed, control_rd, report_wr, dir.to_path_buf(), accel);
            // SAFETY: ends the launcher without running accel's exit handlers or destructors
            // (they belong to accel's state, copied by fork).
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(control_rd);
            drop(report_wr);
            // accel's copies of the listening sockets: the launcher holds them for restarts.
            drop(managed);
            let mut launcher = Launcher {
                pid: child.as_raw(),
                control: Some(control_wr),
                report: Some(File::from(report_rd)),
            };
            launcher.first_report(&names)?;
            log::debug!("backend launcher: pid {}", launcher.pid);
            Ok(launcher)
        }
    }
}

impl Launcher {
    /// Reads the launcher's first line: `ok`, or `failed N ERRNO` for backend N.
    fn first_report(&mut self, names: &[Named]) -> Result<(), BackendsError> {
        let report = self.report.as_mut().expect("report pipe");
        let mut line = Vec::new();
        let mut byte = [0u8];
        while line.len() < 64 {
            match report.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => line.push(byte[0]),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BackendsError::Launcher(e)),
            }
        }
        let line = String::from_utf8_lossy(&line);
        if line == "ok" {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        if let (Some("failed"), Some(Ok(n)), Some(Ok(errno))) = (
            words.next(),
            words.next().map(str::parse::<usize>),
            words.next().map(str::parse::<i32>),
        ) && let Some(named) = names.get(n)
        {
            return Err(BackendsError::Start {
                label: named.label.clone(),
                program: named.program.clone(),
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        Err(BackendsError::Launcher(std::io::Error::other(format!(
            "the backend launcher ended before starting the backends ({line:?})"
        ))))
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Closing the control pipe tells the launcher to stop the backends; its end of the
        // report pipe closes when it exits.
        drop(self.control.take());
        if let Some(mut report) = self.report.take() {
            let mut buf = [0u8; 64];
            loop {
                match report.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = spawn::reap(self.pid, true);
    }
}

/// The launcher process: returns its exit status.
fn launcher_main(
    mut managed: Vec<Managed>,
    control: OwnedFd,
    report: OwnedFd,
    dir: PathBuf,
    accel: libc::pid_t,
) -> i32 {
    // SAFETY: prctl with integer arguments; PR_SET_NAME reads a NUL-terminated static string.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::getppid() != accel {
            return 1;
        }
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr());
    }
    let mut keep: Vec<RawFd> = vec![0, 1, 2, control.as_raw_fd(), report.as_raw_fd()];
    for m in &managed {
        keep.extend(&m.program.keep_fds);
    }
    close_all_but(&keep);
    // accel blocked SIGINT and SIGTERM (its signalfd reads them); the launcher reads SIGTERM
    // (its PR_SET_PDEATHSIG, or a kill) from its own, and leaves SIGINT blocked: a Ctrl-C on
    // accel's terminal reaches accel, which then ends the launcher.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    let _ = mask.thread_block();
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    let sigfd = match SignalFd::new(&term) {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("backend launcher: signalfd: {e}");
            return 1;
        }
    };
    let mut report = File::from(report);
    for n in 0..managed.len() {
        if let Err(e) = managed[n].start() {
            let _ = writeln!(report, "failed {n} {}", e.raw_os_error().unwrap_or(0));
            super::supervise::stop_all(&mut managed);
            let _ = std::fs::remove_dir_all(&dir);
            return 1;
        }
    }
    let _ = report.write_all(b"ok\n");
    supervise(managed, &[control.as_fd(), sigfd.as_fd()]);
    let _ = std::fs::remove_dir_all(&dir);
    0
}

/// Closes every fd of the process except `keep` (accel's other fds: its signalfd, pidfile,
/// logs... are not the launcher's business).
fn close_all_but(keep: &[RawFd]) {
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in open {
        if !keep.contains(&fd) {
            // SAFETY: closes an fd nothing in the launcher uses (the directory listing's own
            // fd is already closed: EBADF, ignored).
            unsafe { libc::close(fd) };
        }
    }
}
