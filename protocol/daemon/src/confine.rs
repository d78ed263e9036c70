//! Confinement of a backend process once its setup is done (`vu_sandbox`): the system calls
//! every backend makes while serving (this module), plus what each device adds
//! ([`VhostUserDevice::confinement`]).
//!
//! The list comes from `strace -f` runs of the backends under their process tests, keeping
//! the calls made after the vhost-user socket is listening: the serve loop (poll, accept4,
//! MSG_PEEK recv), vhost-user-backend (recvmsg with fds, epoll worker threads, eventfds, mmap
//! of the frontend's memory fds, the inflight memfd), std/glibc (futex, thread creation and
//! naming, the allocator) and the exit path (SIGTERM: sigtimedwait, unlink, exit_group).

use std::path::{Path, PathBuf};

use vu_sandbox::{Allow, FsAccess, PathRule, Policy};

use crate::VhostUserDevice;

/// What a device needs beyond [`DAEMON_SYSCALLS`] once confined.
#[derive(Clone, Debug, Default)]
pub struct DeviceConfinement {
    /// Paths it may still open or change (its image, its output file, ...).
    pub paths: Vec<PathRule>,
    /// Extra system calls its data path makes.
    pub syscalls: &'static [Allow],
}

const FIONBIO: u32 = 0x5421;
const FIOCLEX: u32 = 0x5451;
const TCGETS: u32 = 0x5401;
const PR_SET_NAME: u32 = 15;
const AF_UNIX: u32 = 1;

/// System calls every backend makes after setup.
pub const DAEMON_SYSCALLS: &[Allow] = &[
    // Sockets: the frontend connection and the listener.
    Allow::Any("accept4"),
    Allow::Any("recvfrom"),
    Allow::Any("recvmsg"),
    Allow::Any("sendmsg"),
    Allow::Any("sendto"),
    Allow::Any("shutdown"),
    Allow::Any("getsockopt"),
    Allow::ArgEq("socket", 0, AF_UNIX),
    // fds and waiting.
    Allow::Any("read"),
    Allow::Any("readv"),
    Allow::Any("writev"),
    Allow::Any("close"),
    Allow::Any("dup"),
    Allow::Any("fcntl"),
    Allow::ArgEq("ioctl", 1, FIONBIO),
    Allow::ArgEq("ioctl", 1, FIOCLEX),
    Allow::ArgEq("ioctl", 1, TCGETS),
    Allow::Any("poll"),
    Allow::Any("ppoll"),
    Allow::Any("epoll_create1"),
    Allow::Any("epoll_ctl"),
    Allow::Any("epoll_wait"),
    Allow::Any("epoll_pwait"),
    Allow::Any("eventfd2"),
    Allow::Any("timerfd_create"),
    Allow::Any("timerfd_settime"),
    Allow::Any("timerfd_gettime"),
    // Guest memory (the frontend's fds) and the inflight region.
    Allow::Any("mmap"),
    Allow::Any("munmap"),
    Allow::Any("mprotect"),
    Allow::Any("madvise"),
    Allow::Any("mremap"),
    Allow::Any("brk"),
    Allow::Any("fstat"),
    Allow::Any("newfstatat"),
    Allow::Any("statx"),
    Allow::Any("memfd_create"),
    Allow::Any("ftruncate"),
    Allow::Any("lseek"),
    // Threads (per-connection vring workers) and time.
    Allow::Any("futex"),
    Allow::Any("clone3"),
    Allow::Any("clone"),
    Allow::Any("set_robust_list"),
    Allow::Any("rseq"),
    Allow::Any("sigaltstack"),
    Allow::ArgEq("prctl", 0, PR_SET_NAME),
    Allow::Any("sched_getaffinity"),
    Allow::Any("sched_yield"),
    Allow::Any("getrandom"),
    Allow::Any("clock_gettime"),
    Allow::Any("clock_nanosleep"),
    Allow::Any("nanosleep"),
    Allow::Any("restart_syscall"),
    // Exit on SIGTERM/SIGINT: the socket files are removed (landlock: their directory only).
    Allow::Any("rt_sigtimedwait"),
    Allow::Any("unlink"),
    Allow::Any("unlinkat"),
    // Opens are left to landlock (glibc reads /sys/devices/system/cpu/online, for example):
    // a path outside the policy fails with EACCES instead of killing the process.
    Allow::Any("openat"),
];

/// What `--client` adds: connecting (again) to the frontend's socket.
pub const CLIENT_SYSCALLS: &[Allow] = &[Allow::Any("connect")];

/// The policy of a backend program serving `devices`, listening on `socket_paths` (removed on
/// exit, so their directories keep the right to remove entries).
pub fn policy<D: VhostUserDevice>(
    program: &'static str,
    devices: &[&D],
    socket_paths: &[PathBuf],
) -> Policy {
    let mut paths: Vec<PathRule> = socket_paths
        .iter()
        .map(|p| PathRule::new(parent_dir(p), FsAccess::RemoveEntries))
        .collect();
    let mut syscalls = DAEMON_SYSCALLS.to_vec();
    for d in devices {
        let c = d.confinement();
        paths.extend(c.paths);
        syscalls.extend_from_slice(c.syscalls);
    }
    paths.dedup();
    Policy {
        program,
        paths,
        syscalls,
        threads: Vec::new(),
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
