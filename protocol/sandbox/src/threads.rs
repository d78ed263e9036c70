//! Confining the threads that already exist when [`super::confine`] runs.
//!
//! Landlock restricts only the calling thread (this kernel has no landlock TSYNC), and a
//! per-thread-kind seccomp filter must be installed by the thread itself. A program whose
//! setup starts threads (accel: the backend monitor and control threads, the QMP thread)
//! therefore asks each of them to confine itself: the calling thread sends every other thread
//! a signal ([`BROADCAST_SIGNAL`]) whose handler makes the few async-signal-safe system calls
//! (`prctl`, `landlock_restrict_self`, `seccomp`) with what the calling thread prepared for it,
//! and reports back. The thread list is read again until no unconfined thread is left, so a
//! thread started meanwhile by an unconfined thread is not missed (one started by a confined
//! thread inherits its confinement). glibc's `setuid` reaches every thread the same way.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::SandboxError;

/// The signal the other threads are asked with (only while [`confine_other_threads`] runs;
/// the previous disposition is restored afterwards).
fn broadcast_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

/// Threads confined per round of the broadcast.
const SLOTS: usize = 64;
/// How long a thread may take to run its handler (it is interrupted in whatever it waits in).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

const PENDING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

/// What one thread does in its handler.
struct Slot {
    tid: AtomicI32,
    state: AtomicU8,
    errno: AtomicI32,
    /// The second filter of the thread's kind (null: the process filter only).
    kind: AtomicPtr<libc::sock_fprog>,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the array
const EMPTY: Slot = Slot {
    tid: AtomicI32::new(0),
    state: AtomicU8::new(PENDING),
    errno: AtomicI32::new(0),
    kind: AtomicPtr::new(std::ptr::null_mut()),
};
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// The landlock ruleset every thread restricts itself with (-1: none).
static LANDLOCK_FD: AtomicI32 = AtomicI32::new(-1);
/// The process filter every thread installs.
static PROCESS: AtomicPtr<libc::sock_fprog> = AtomicPtr::new(std::ptr::null_mut());
/// One broadcast at a time.
static BUSY: Mutex<()> = Mutex::new(());

/// One kind's filter, as the kernel takes it.
pub(crate) struct Fprog {
    _filter: Vec<seccompiler::sock_filter>,
    prog: libc::sock_fprog,
}

impl Fprog {
    pub(crate) fn new(filter: seccompiler::BpfProgram) -> Box<Self> {
        let mut b = Box::new(Fprog {
            prog: libc::sock_fprog {
                len: filter.len() as u16,
                filter: std::ptr::null_mut(),
            },
            _filter: filter,
        });
        // seccompiler's sock_filter has the kernel's layout (code, jt, jf, k).
        b.prog.filter = b._filter.as_ptr() as *mut libc::sock_filter;
        b
    }

    pub(crate) fn ptr(&self) -> *mut libc::sock_fprog {
        &self.prog as *const libc::sock_fprog as *mut libc::sock_fprog
    }
}

extern "C" fn on_broadcast(
    _sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let Some(slot) = TABLE.iter().find(|s| s.tid.load(Ordering::Acquire) == tid) else {
        return;
    };
    if slot.state.load(Ordering::Acquire) != PENDING {
        return;
    }
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let fd = LANDLOCK_FD.load(Ordering::Acquire);
    let process = PROCESS.load(Ordering::Acquire);
    let kind = slot.kind.load(Ordering::Acquire);
    // SAFETY: system calls with integer arguments, and filter pointers that the confining
    // thread keeps alive until every slot is answered; all async-signal-safe.
    let failed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || (fd >= 0 && libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) != 0)
            || (!process.is_null()
                && libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, process) != 0)
            || (!kind.is_null()
                && libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, kind) != 0)
    };
    if failed {
        slot.errno.store(errno(), Ordering::Relaxed);
        slot.state.store(FAILED, Ordering::Release);
    } else {
        slot.state.store(DONE, Ordering::Release);
    }
}

/// How long a thread that still has the caller's name may take to name itself (a thread just
/// started names itself first thing; its kind is told by its name).
const NAMING_TIMEOUT: Duration = Duration::from_millis(200);

fn comm(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// `PF_IO_WORKER` and `PF_USER_WORKER` (<linux/sched.h>): kernel threads that belong to the
/// process (io_uring workers, KVM's NX huge page recovery) run no user code and take no
/// signal handler; they are not asked.
const KERNEL_WORKER_FLAGS: u64 = 0x10 | 0x4000;

fn is_kernel_worker(tid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // The fields after the name (which may hold spaces): state, ppid, pgrp, session, tty,
    // tpgid, flags.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & KERNEL_WORKER_FLAGS != 0)
}

/// The ids and names of this process's threads other than the caller.
fn other_threads() -> Result<Vec<(i32, String)>, SandboxError> {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let my_name = comm(me);
    let naming_deadline = Instant::now() + NAMING_TIMEOUT;
    let mut out = Vec::new();
    let dir = std::fs::read_dir("/proc/self/task").map_err(SandboxError::Threads)?;
    for entry in dir {
        let entry = entry.map_err(SandboxError::Threads)?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if tid == me || is_kernel_worker(tid) {
            continue;
        }
        let mut name = comm(tid);
        while name == my_name && Instant::now() < naming_deadline {
            std::thread::sleep(Duration::from_millis(2));
            name = comm(tid);
        }
        out.push((tid, name));
    }
    Ok(out)
}

/// Confines every thread of the process except the caller: landlock with `landlock_fd` (if
/// any), the `process` filter, and the filter `kind_of(thread name)` returns. Returns how many
/// threads were confined.
pub(crate) fn confine_other_threads(
    landlock_fd: Option<i32>,
    process: &Fprog,
    kind_of: &dyn Fn(&str) -> Option<*mut libc::sock_fprog>,
) -> Result<usize, SandboxError> {
    let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
    LANDLOCK_FD.store(landlock_fd.unwrap_or(-1), Ordering::Release);
    PROCESS.store(process.ptr(), Ordering::Release);
    let sig = broadcast_signal();
    // SAFETY: a zeroed sigaction is "no flags, empty mask", completed below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_broadcast as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs a handler that only makes async-signal-safe calls on static data.
    if unsafe { libc::sigaction(sig, &act, &mut old) } != 0 {
        return Err(SandboxError::Threads(std::io::Error::last_os_error()));
    }
    let result = broadcast(kind_of, sig);
    // SAFETY: restores the disposition saved above.
    unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
    LANDLOCK_FD.store(-1, Ordering::Release);
    PROCESS.store(std::ptr::null_mut(), Ordering::Release);
    result
}

fn broadcast(
    kind_of: &dyn Fn(&str) -> Option<*mut libc::sock_fprog>,
    sig: libc::c_int,
) -> Result<usize, SandboxError> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut done: Vec<i32> = Vec::new();
    loop {
        let pending: Vec<(i32, String)> = other_threads()?
            .into_iter()
            .filter(|(tid, _)| !done.contains(tid))
            .collect();
        if pending.is_empty() {
            return Ok(done.len());
        }
        for chunk in pending.chunks(SLOTS) {
            for (slot, (tid, comm)) in TABLE.iter().zip(chunk) {
                slot.state.store(PENDING, Ordering::Relaxed);
                slot.errno.store(0, Ordering::Relaxed);
                let kind = kind_of(comm).unwrap_or(std::ptr::null_mut());
                slot.kind.store(kind, Ordering::Relaxed);
                slot.tid.store(*tid, Ordering::Release);
            }
            for (tid, _) in chunk {
                // SAFETY: tgkill with integer arguments; a thread that has ended meanwhile
                // gives ESRCH (checked when waiting).
                unsafe { libc::syscall(libc::SYS_tgkill, pid, *tid, sig) };
            }
            let result = wait_answers(pid, chunk);
            for slot in &TABLE {
                slot.tid.store(0, Ordering::Release);
            }
            result?;
            done.extend(chunk.iter().map(|(tid, _)| *tid));
        }
    }
}

fn wait_answers(pid: i32, chunk: &[(i32, String)]) -> Result<(), SandboxError> {
    let deadline = Instant::now() + ACK_TIMEOUT;
    for (slot, (tid, comm)) in TABLE.iter().zip(chunk) {
        loop {
            match slot.state.load(Ordering::Acquire) {
                DONE => break,
                FAILED => {
                    return Err(SandboxError::Thread {
                        name: comm.clone(),
                        source: std::io::Error::from_raw_os_error(
                            slot.errno.load(Ordering::Relaxed),
                        ),
                    });
                }
                _ => {}
            }
            // SAFETY: signal 0 only checks that the thread still exists.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, *tid, 0) } != 0 {
                break; // ended: nothing left to confine
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Thread {
                    name: comm.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}
