//! Process confinement, applied by a program once its setup is done (files open, sockets
//! bound, tap open), in this order:
//! 1. `PR_SET_NO_NEW_PRIVS` (no setuid gain through `execve`, and the precondition of 3.);
//! 2. landlock ([`fs`]): every filesystem access is denied except the [`PathRule`]s of the
//!    [`Policy`]; TCP bind/connect are denied; abstract unix sockets and signals are scoped to
//!    the process. Files opened before keep their rights (landlock checks at open time);
//! 3. seccomp-bpf ([`seccomp`]): system calls outside the policy's allow-list raise SIGSYS,
//!    whose handler writes one line naming the call (`system call 41 (socket)`) to stderr and
//!    then kills the process with SIGSYS.
//!
//! The crate is small and depends on nothing of the project, so that every program can link
//! it: the backends through `vu-daemon`, accel directly (accel must not link `vu-daemon`).
//!
//! Every thread is confined: landlock restricts only the calling thread and the threads it
//! creates afterwards (this kernel has no landlock TSYNC), so [`confine`] asks each thread that
//! already exists to restrict itself ([`threads`]), which also lets each install the filter of
//! its kind ([`Policy::threads`]). Threads started later call [`confine_thread`].
//!
//! [`confine_as`] (`--user`, accel's `-run-with user=`) switches to another user after setup,
//! before restricting anything ([`drop_privileges`] alone with the sandbox off).

mod fs;
mod seccomp;
#[cfg(target_arch = "x86_64")]
mod syscalls_x86_64;
mod threads;
mod user;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

pub use seccomp::{syscall_name, syscall_number};
pub use user::{User, UserError, drop_privileges};

/// Why confinement could not be set up (the program should refuse to run: it was asked for a
/// sandbox and would run without one).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("prctl(PR_SET_NO_NEW_PRIVS): {0}")]
    NoNewPrivs(std::io::Error),
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("landlock: {path}: {source}")]
    LandlockPath {
        path: PathBuf,
        source: landlock::RulesetError,
    },
    #[error("landlock: cannot open {path}: {source}")]
    OpenPath {
        path: PathBuf,
        source: landlock::PathFdError,
    },
    #[error("the seccomp allow-list names {0:?}, not a system call of this architecture")]
    UnknownSyscall(&'static str),
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccompiler::Error),
    #[error("seccomp: {0}")]
    SeccompRule(#[from] seccompiler::BackendError),
    #[error("cannot install the SIGSYS handler: {0}")]
    SigsysHandler(std::io::Error),
    #[error("switching user: {0}")]
    User(#[from] UserError),
    #[error("cannot reach the other threads: {0}")]
    Threads(std::io::Error),
    #[error("thread {name:?} could not confine itself: {source}")]
    Thread {
        name: String,
        source: std::io::Error,
    },
}

/// What the process may still do with a path once confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsAccess {
    /// Open the file (or files beneath the directory) for reading.
    Read,
    /// Open the file (or files beneath the directory) for reading and writing.
    ReadWrite,
    /// Remove entries of this directory (a socket file removed on exit).
    RemoveEntries,
    /// Create sockets in this directory and remove its entries (a socket bound at runtime).
    Sockets,
}

/// One path the confined process may still use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub access: FsAccess,
}

impl PathRule {
    pub fn new(path: impl Into<PathBuf>, access: FsAccess) -> Self {
        PathRule {
            path: path.into(),
            access,
        }
    }
}

/// One allowed system call, by its name (`"read"`), optionally only when one argument has one
/// value (`socket` with `AF_UNIX` as argument 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allow {
    Any(&'static str),
    /// `(name, argument index, value)`: the argument compared as a 32-bit value.
    ArgEq(&'static str, u8, u32),
    /// Starting threads, not processes: `clone` only with the flags glibc's `pthread_create`
    /// passes (`CLONE_THREAD` among them), and `clone3` (whose flags are in memory, out of a
    /// filter's reach) failing with `ENOSYS`, which makes glibc fall back to `clone`. A fork
    /// (`clone` without `CLONE_THREAD`) raises SIGSYS.
    NewThreads,
}

/// Everything a confined process may still do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Name for log lines (`vhost-user-blk`).
    pub program: &'static str,
    pub paths: Vec<PathRule>,
    /// Allowed system calls (the calls [`confine`]'s SIGSYS handler needs are always added).
    pub syscalls: Vec<Allow>,
    /// Narrower lists for threads that exist when [`confine`] runs, by kind: a thread whose
    /// name starts with [`ThreadKind::name_prefix`] gets that kind's filter on top of the
    /// process's (threads of no kind: the process's only).
    pub threads: Vec<ThreadKind>,
}

/// The allow-list of one kind of thread (on top of the process's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadKind {
    /// The start of the thread names (`/proc/PID/task/TID/comm`) of this kind.
    pub name_prefix: &'static str,
    pub syscalls: Vec<Allow>,
}

/// What [`confine`] could enforce on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enforced {
    pub no_new_privs: bool,
    /// Landlock restricted every requested access (false: not at all, or only partly, on an
    /// older kernel; [`confine`] then warned once).
    pub landlock: bool,
    pub seccomp: bool,
}

static WARNED: AtomicBool = AtomicBool::new(false);
static CONFINED: AtomicBool = AtomicBool::new(false);

/// Whether [`confine`] ran in this process.
pub fn is_confined() -> bool {
    CONFINED.load(Ordering::Relaxed)
}

/// Narrows the calling thread to `allow` (a thread kind's list, e.g. an I/O thread), on top
/// of the process's filter; does nothing unless [`confine`] ran (`--sandbox off`). Call it
/// first thing in a thread started after [`confine`].
pub fn confine_thread(allow: &[Allow]) -> Result<(), SandboxError> {
    if !is_confined() {
        return Ok(());
    }
    let program = seccomp::compile(allow)?;
    seccompiler::apply_filter(&program)?;
    Ok(())
}

/// Confines the calling process to `policy` (see the crate documentation). Landlock missing or
/// partial on this kernel is not an error: the process runs and one warning names what is not
/// enforced.
pub fn confine(policy: &Policy) -> Result<Enforced, SandboxError> {
    confine_as(policy, None)
}

/// [`confine`], switching to `user` ([`drop_privileges`]) once the landlock rules hold their
/// paths (opened with the setup's rights: a path the user cannot reach may still be allowed,
/// to the files already open in it) and before anything is restricted.
pub fn confine_as(policy: &Policy, user: Option<&User>) -> Result<Enforced, SandboxError> {
    use std::os::fd::{AsRawFd, OwnedFd};
    // Compile everything before restricting anything: a bad policy fails cleanly.
    let program = seccomp::compile(&policy.syscalls)?;
    let kinds = policy
        .threads
        .iter()
        .map(|k| {
            Ok((
                k.name_prefix,
                threads::Fprog::new(seccomp::compile(&k.syscalls)?),
            ))
        })
        .collect::<Result<Vec<_>, SandboxError>>()?;
    let ruleset = fs::ruleset(&policy.paths)?;
    if let Some(user) = user {
        drop_privileges(user)?;
    }
    seccomp::install_sigsys_handler(policy.program)?;
    // SAFETY: prctl with integer arguments only; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let fd: Option<OwnedFd> = ruleset.try_clone().map_err(SandboxError::Threads)?.into();
    let process = threads::Fprog::new(program.clone());
    let kind_of = |name: &str| {
        kinds
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map(|(_, f)| f.ptr())
    };
    let others =
        threads::confine_other_threads(fd.as_ref().map(|f| f.as_raw_fd()), &process, &kind_of)?;
    drop(fd);
    if others > 0 {
        log::debug!("{}: {others} other thread(s) confined", policy.program);
    }
    let landlock = fs::restrict_self(ruleset)?;
    if let Err(missing) = &landlock
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        log::warn!(
            "{}: landlock is {missing} on this kernel: filesystem access is NOT restricted \
             (seccomp and no_new_privs are enforced)",
            policy.program
        );
    }
    seccompiler::apply_filter(&program)?;
    CONFINED.store(true, Ordering::Relaxed);
    Ok(Enforced {
        no_new_privs: true,
        landlock: landlock.is_ok(),
        seccomp: true,
    })
}
