//! Starting one backend process: finding its program and executing it with the fds it
//! needs, in a state that does not outlive accel.

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A program and how to start it (kept to start it again).
#[derive(Clone, Debug)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<OsString>,
    /// Fds of accel the child gets at the same numbers (the listening socket, inherited taps).
    pub keep_fds: Vec<RawFd>,
    /// Whether the child reads accel's stdin (a stdio console); otherwise /dev/null.
    pub stdin: bool,
}

/// Where a program is looked for: the directory of accel's own executable, then `PATH`.
pub fn find_program(name: &str) -> Result<PathBuf, Vec<PathBuf>> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let mut tried = Vec::new();
    for d in dirs {
        let candidate = d.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        tried.push(candidate);
    }
    Err(tried)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A started child: its pid and a pidfd to wait on.
pub struct Started {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Starts `program`. In the child, before exec: SIGTERM when the thread that started it (the
/// supervisor, or the main thread at setup) ends (`PR_SET_PDEATHSIG`; and exit at once if accel
/// is already gone), every signal unblocked (accel blocks SIGINT/SIGTERM for its signalfd),
/// every fd close-on-exec except `keep_fds`, and its own process group unless it reads the
/// terminal (a Ctrl-C meant for accel's terminal does not kill the backends behind its back).
pub fn start(program: &Program) -> io::Result<Started> {
    let parent = std::process::id() as libc::pid_t;
    let keep = program.keep_fds.clone();
    let own_group = !program.stdin;
    let mut cmd = Command::new(&program.path);
    cmd.args(&program.args);
    cmd.stdin(if program.stdin {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid, syscall(close_range), fcntl, sigprocmask,
    // setpgid, _exit) on values captured before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Fds accel opened without O_CLOEXEC (eventfds, ...) stay out of the backend.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if own_group {
                libc::setpgid(0, 0);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    // The std handle neither kills nor reaps on drop: the supervisor reaps through the pidfd.
    drop(child);
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: plain kill + wait of the child just started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(e);
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: pidfd_open returned a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Started { pid, pidfd })
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(c) => write!(f, "exited with status {c}"),
            Ended::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// Reaps `pid` if it has ended (`block`: wait until it has).
pub fn reap(pid: i32, block: bool) -> Option<Ended> {
    let mut status = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: waitpid on our own child, writing to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            break;
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // 0: still running; -1 ECHILD: someone else reaped it (treated as gone).
        return (r < 0).then_some(Ended::Exited(-1));
    }
    Some(if libc::WIFSIGNALED(status) {
        Ended::Signaled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_and_reports_where_it_looked() {
        assert!(find_program("sh").is_ok());
        let tried = find_program("no-such-backend-xyz").unwrap_err();
        assert!(!tried.is_empty());
        assert!(tried.iter().all(|p| p.ends_with("no-such-backend-xyz")));
    }

    #[test]
    fn starts_keeps_only_the_named_fds_and_reaps() {
        // An fd without O_CLOEXEC that is not kept, and one that is kept.
        let (a, b) = nix::unistd::pipe().unwrap();
        let (ka, kb) = (
            std::os::fd::AsRawFd::as_raw_fd(&a),
            std::os::fd::AsRawFd::as_raw_fd(&b),
        );
        // SAFETY: clearing FD_CLOEXEC on fds this test owns.
        unsafe { libc::fcntl(ka, libc::F_SETFD, 0) };
        let p = Program {
            path: find_program("sh").unwrap(),
            args: vec![
                "-c".into(),
                format!("[ -e /proc/self/fd/{ka} ] && exit 3; [ -e /proc/self/fd/{kb} ] || exit 4; exit 7")
                    .into(),
            ],
            keep_fds: vec![kb],
            stdin: false,
        };
        let s = start(&p).unwrap();
        assert_eq!(reap(s.pid, true), Some(Ended::Exited(7)));
        let p = Program {
            args: vec!["-c".into(), "kill -9 $$".into()],
            ..p
        };
        let s = start(&p).unwrap();
        assert_eq!(reap(s.pid, true), Some(Ended::Signaled(9)));
        assert_eq!(reap(s.pid, false), Some(Ended::Exited(-1)));
    }

    /// PR_SET_PDEATHSIG: the child gets SIGTERM when the thread that started it ends (so a
    /// crashed accel leaves no backend behind; and restarts must come from a thread that
    /// lives as long as accel).
    #[test]
    fn a_child_ends_with_the_thread_that_started_it() {
        let p = Program {
            path: find_program("sh").unwrap(),
            args: vec!["-c".into(), "exec sleep 100".into()],
            keep_fds: Vec::new(),
            stdin: false,
        };
        let pid = std::thread::spawn(move || start(&p).unwrap().pid)
            .join()
            .unwrap();
        assert_eq!(reap(pid, true), Some(Ended::Signaled(libc::SIGTERM)));
    }
}
