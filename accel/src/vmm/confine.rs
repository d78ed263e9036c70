//! accel's confinement (`-sandbox on`, the default), applied by [`super::run`] once the VM is
//! built: guest RAM mapped, kernel and initrd loaded, KVM fds open, vhost-user backends
//! connected, QMP sockets bound, pidfile written. Then, in this order:
//!
//! 1. `-run-with user=` / `-runas`: supplementary groups, group and user switched
//!    ([`vu_sandbox::drop_privileges`]); the effective capabilities become empty;
//! 2. no_new_privs, landlock and the seccomp filters ([`vu_sandbox::confine`]), on every
//!    thread: the process list (`process_syscalls`) on all of them, plus a narrower list per kind of
//!    thread: the backend monitors that reconnect (`SESSION_CALLS` + `RECONNECT_CALLS`), the backend control threads
//!    (`SESSION_CALLS`), the vhost-user reply watchdogs (`WATCHDOG_CALLS`), the QMP thread (`QMP_CALLS`),
//!    the serial input threads (`SERIAL_CALLS`), the vCPU threads (`VCPU_CALLS`: the only threads
//!    allowed KVM_RUN; started parked just before). The main thread then narrows itself to
//!    `MAIN_CALLS`.
//!
//! accel never forks or executes once confined: the backends of built-in devices are started
//! and restarted by the launcher process forked at setup ([`crate::backends::launcher`]),
//! which accel only waits for at exit (`wait4`).
//!
//! Landlock leaves accel: reading the kernel and initrd (a guest reboot loads them again),
//! creating and removing sockets in the directories where the command line has accel listen
//! (QMP, `-serial unix:`, `server=on` vhost-user chardevs: accel removes its own at exit, and
//! QMP `chardev-add` with `"server": true` binds one there), removing the pidfile (the right
//! to remove entries of its directory), and `/dev/null` with `-daemonize`. Connecting to the
//! vhost-user sockets again is not a filesystem access landlock (ABI 7) controls; TCP bind and
//! connect are denied (accepting on an already bound QMP TCP socket still works).
//!
//! The lists come from `strace -ff` runs of accel under the tests (boot, guest reboot, backend
//! crash and reconnect, QMP stop/cont/system_reset/quit, SIGTERM), keeping the calls made
//! after setup, each thread kind on its own; a call outside them kills accel with SIGSYS and a
//! line naming it.

use std::mem::size_of;
use std::path::{Path, PathBuf};

use kvm_bindings::{
    kvm_fpu, kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd,
    kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_vcpu_events,
};
use vu_sandbox::{Allow, FsAccess, PathRule, Policy, ThreadKind};

use crate::config::{MonitorListen, SerialConfig, VmConfig};

const KVMIO: u32 = 0xAE;

const fn io(nr: u32) -> u32 {
    (KVMIO << 8) | nr
}
const fn iow(nr: u32, size: usize) -> u32 {
    (1 << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr
}
const fn ior(nr: u32, size: usize) -> u32 {
    (2 << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr
}
const fn iowr(nr: u32, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr
}

const KVM_RUN: u32 = io(0x80);
const KVM_GET_REGS: u32 = ior(0x81, size_of::<kvm_regs>());
const KVM_SET_REGS: u32 = iow(0x82, size_of::<kvm_regs>());
const KVM_GET_SREGS: u32 = ior(0x83, size_of::<kvm_sregs>());
const KVM_SET_SREGS: u32 = iow(0x84, size_of::<kvm_sregs>());
const KVM_GET_MSRS: u32 = iowr(0x88, size_of::<kvm_msrs>());
const KVM_SET_MSRS: u32 = iow(0x89, size_of::<kvm_msrs>());
const KVM_GET_FPU: u32 = ior(0x8c, size_of::<kvm_fpu>());
const KVM_SET_FPU: u32 = iow(0x8d, size_of::<kvm_fpu>());
const KVM_GET_LAPIC: u32 = ior(0x8e, size_of::<kvm_lapic_state>());
const KVM_SET_LAPIC: u32 = iow(0x8f, size_of::<kvm_lapic_state>());
const KVM_GET_MP_STATE: u32 = ior(0x98, size_of::<kvm_mp_state>());
const KVM_SET_MP_STATE: u32 = iow(0x99, size_of::<kvm_mp_state>());
const KVM_GET_VCPU_EVENTS: u32 = ior(0x9f, size_of::<kvm_vcpu_events>());
const KVM_SET_VCPU_EVENTS: u32 = iow(0xa0, size_of::<kvm_vcpu_events>());
const KVM_IRQ_LINE: u32 = iow(0x61, size_of::<kvm_irq_level>());
const KVM_IRQ_LINE_STATUS: u32 = iowr(0x67, size_of::<kvm_irq_level>());
const KVM_GET_IRQCHIP: u32 = iowr(0x62, size_of::<kvm_irqchip>());
// Sic: the kernel declares KVM_SET_IRQCHIP with _IOR.
const KVM_SET_IRQCHIP: u32 = ior(0x63, size_of::<kvm_irqchip>());
const KVM_SET_GSI_ROUTING: u32 = iow(0x6a, size_of::<kvm_irq_routing>());
const KVM_IRQFD: u32 = iow(0x76, size_of::<kvm_irqfd>());
const KVM_IOEVENTFD: u32 = iow(0x79, size_of::<kvm_ioeventfd>());
const KVM_GET_PIT2: u32 = ior(0x9f, size_of::<kvm_pit_state2>());
const KVM_SET_PIT2: u32 = iow(0xa0, size_of::<kvm_pit_state2>());
const KVM_SIGNAL_MSI: u32 = iow(0xa5, size_of::<kvm_msi>());

const TCGETS: u32 = 0x5401;
const TCSETS: u32 = 0x5402;
const TCSETSW: u32 = 0x5403;
const TCSETSF: u32 = 0x5404;
const FIONBIO: u32 = 0x5421;
const FIOCLEX: u32 = 0x5451;
const PR_SET_NAME: u32 = 15;
const AF_UNIX: u32 = 1;

use Allow::{Any, ArgEq};

/// What every thread of accel needs: memory, locks, time, its own start and end, logging.
const THREAD_BASICS: &[Allow] = &[
    Any("futex"),
    Any("mmap"),
    Any("munmap"),
    Any("mprotect"),
    Any("madvise"),
    Any("mremap"),
    Any("brk"),
    Any("sigaltstack"),
    Any("sched_getaffinity"),
    Any("sched_yield"),
    Any("set_robust_list"),
    Any("rseq"),
    Any("clock_gettime"),
    Any("clock_nanosleep"),
    Any("nanosleep"),
    Any("restart_syscall"),
    Any("writev"),
    Any("close"),
    // std's HashMap keys, drawn once per thread.
    Any("getrandom"),
    // Found by tests/tests/backend_stall.rs (the SIGSYS line named it): fd flags on the
    // vCPU/device paths.
    Any("fcntl"),
    ArgEq("prctl", 0, PR_SET_NAME),
];

/// Running a vCPU: KVM_RUN and what its exits need (port/MMIO emulation: the serial port's
/// output, interrupt lines and MSI routes, eventfd kicks, reset requests, BAR moves; the
/// crash report's register reads).
const VCPU_CALLS: &[Allow] = &[
    ArgEq("ioctl", 1, KVM_RUN),
    ArgEq("ioctl", 1, KVM_GET_REGS),
    ArgEq("ioctl", 1, KVM_GET_SREGS),
    ArgEq("ioctl", 1, KVM_IRQ_LINE),
    ArgEq("ioctl", 1, KVM_IRQ_LINE_STATUS),
    ArgEq("ioctl", 1, KVM_SIGNAL_MSI),
    ArgEq("ioctl", 1, KVM_SET_GSI_ROUTING),
    // A BAR moved by the guest: its notify ioeventfds move with it.
    ArgEq("ioctl", 1, KVM_IOEVENTFD),
    ArgEq("ioctl", 1, KVM_IRQFD),
    Any("read"),
    Any("sendmsg"),
    Any("sendto"),
    Any("poll"),
];

/// The main thread once the vCPUs run: the event loop (poll on eventfds and the signalfd),
/// pausing vCPUs (tgkill), guest reboot (the platform's and vCPUs' state set again, kernel and
/// initrd read again), device resets, and the exit (sockets and pidfile removed).
const MAIN_CALLS: &[Allow] = &[
    Any("poll"),
    Any("ppoll"),
    Any("read"),
    Any("openat"),
    Any("lseek"),
    Any("pread64"),
    Any("statx"),
    Any("newfstatat"),
    Any("fstat"),
    Any("fcntl"),
    Any("unlink"),
    Any("unlinkat"),
    // QMP chardev-add with `"server": true`: a unix socket bound (where landlock lets it).
    Any("bind"),
    Any("listen"),
    // At exit: reaping the backend launcher (`crate::backends::launcher`), which it waits for.
    Any("wait4"),
    // -daemonize: /dev/null onto the standard fds once running.
    Any("dup2"),
    Any("dup3"),
    // A device reset may start a new vhost-user session, and with it a reply watchdog: threads,
    // never a process (no fork).
    Allow::NewThreads,
    Any("recvmsg"),
    Any("sendmsg"),
    Any("shutdown"),
    ArgEq("ioctl", 1, KVM_SET_REGS),
    ArgEq("ioctl", 1, KVM_GET_REGS),
    ArgEq("ioctl", 1, KVM_SET_SREGS),
    ArgEq("ioctl", 1, KVM_GET_SREGS),
    ArgEq("ioctl", 1, KVM_SET_MSRS),
    ArgEq("ioctl", 1, KVM_GET_MSRS),
    ArgEq("ioctl", 1, KVM_SET_FPU),
    ArgEq("ioctl", 1, KVM_GET_FPU),
    ArgEq("ioctl", 1, KVM_SET_LAPIC),
    ArgEq("ioctl", 1, KVM_GET_LAPIC),
    ArgEq("ioctl", 1, KVM_SET_MP_STATE),
    ArgEq("ioctl", 1, KVM_GET_MP_STATE),
    ArgEq("ioctl", 1, KVM_SET_VCPU_EVENTS),
    ArgEq("ioctl", 1, KVM_GET_VCPU_EVENTS),
    ArgEq("ioctl", 1, KVM_SET_IRQCHIP),
    ArgEq("ioctl", 1, KVM_GET_IRQCHIP),
    ArgEq("ioctl", 1, KVM_SET_PIT2),
    ArgEq("ioctl", 1, KVM_GET_PIT2),
    ArgEq("ioctl", 1, KVM_SET_GSI_ROUTING),
    ArgEq("ioctl", 1, KVM_IRQ_LINE),
    ArgEq("ioctl", 1, KVM_SIGNAL_MSI),
    ArgEq("ioctl", 1, KVM_IRQFD),
    ArgEq("ioctl", 1, KVM_IOEVENTFD),
    ArgEq("ioctl", 1, TCGETS),
    ArgEq("ioctl", 1, TCSETS),
    ArgEq("ioctl", 1, TCSETSW),
    ArgEq("ioctl", 1, TCSETSF),
    ArgEq("ioctl", 1, FIONBIO),
];

/// A vhost-user session's requests, and the KVM registrations they carry (irqfd, ioeventfd,
/// MSI routes): what the control and monitor threads do with a backend. A session starts a
/// reply watchdog thread.
const SESSION_CALLS: &[Allow] = &[
    Any("sendmsg"),
    Any("recvmsg"),
    Any("recvfrom"),
    Any("read"),
    Any("poll"),
    Any("shutdown"),
    Any("fcntl"),
    Any("eventfd2"),
    Any("memfd_create"),
    Any("ftruncate"),
    Any("fstat"),
    Any("dup"),
    Allow::NewThreads,
    ArgEq("ioctl", 1, KVM_IRQFD),
    ArgEq("ioctl", 1, KVM_IOEVENTFD),
    ArgEq("ioctl", 1, KVM_SET_GSI_ROUTING),
    ArgEq("ioctl", 1, KVM_SIGNAL_MSI),
    ArgEq("ioctl", 1, FIONBIO),
    ArgEq("ioctl", 1, FIOCLEX),
];

/// The backend monitors reconnect: a new socket connected to the backend's path, or (with a
/// `server=on` chardev) the backend's next connection accepted on accel's socket.
const RECONNECT_CALLS: &[Allow] = &[ArgEq("socket", 0, AF_UNIX), Any("connect"), Any("accept4")];

/// The vhost-user reply watchdog: waits, and shuts a silent backend's socket down.
const WATCHDOG_CALLS: &[Allow] = &[Any("shutdown")];

/// The QMP thread: accepts clients on the bound sockets, reads commands, writes replies and
/// events, wakes the main thread (eventfd), removes its sockets at exit.
const QMP_CALLS: &[Allow] = &[
    Any("poll"),
    Any("accept4"),
    Any("read"),
    Any("recvfrom"),
    Any("sendto"),
    Any("sendmsg"),
    Any("fcntl"),
    Any("shutdown"),
    Any("unlink"),
    ArgEq("ioctl", 1, FIONBIO),
];

/// The serial input threads: read stdin or a socket client, accept the next client.
const SERIAL_CALLS: &[Allow] = &[
    Any("read"),
    Any("poll"),
    Any("accept4"),
    Any("recvfrom"),
    Any("sendto"),
    Any("fcntl"),
    Any("shutdown"),
    ArgEq("ioctl", 1, TCGETS),
    ArgEq("ioctl", 1, TCSETS),
    ArgEq("ioctl", 1, TCSETSW),
    ArgEq("ioctl", 1, TCSETSF),
];

fn list(parts: &[&[Allow]]) -> Vec<Allow> {
    let mut v: Vec<Allow> = THREAD_BASICS.to_vec();
    for p in parts {
        for a in *p {
            if !v.contains(a) {
                v.push(*a);
            }
        }
    }
    v
}

/// A vCPU thread's list (the only one with KVM_RUN).
pub fn vcpu_syscalls() -> Vec<Allow> {
    list(&[VCPU_CALLS])
}

/// The main thread's list once the vCPU threads are started. QMP `device_add` runs here:
/// it connects a backend (`RECONNECT_CALLS`), runs a vhost-user session and registers the
/// device with KVM (`SESSION_CALLS`), and starts the device's monitor and control threads,
/// which inherit this thread's filter and need those same calls.
pub fn main_syscalls() -> Vec<Allow> {
    list(&[MAIN_CALLS, SESSION_CALLS, RECONNECT_CALLS])
}

/// The kinds of threads that exist when accel confines itself, by name.
fn thread_kinds() -> Vec<ThreadKind> {
    let kind = |name_prefix, parts: &[&[Allow]]| ThreadKind {
        name_prefix,
        syscalls: list(parts),
    };
    vec![
        kind("vcpu", &[VCPU_CALLS]),
        // -name ...,debug-threads=on: QEMU's names.
        kind("CPU ", &[VCPU_CALLS]),
        kind("mon-", &[SESSION_CALLS, RECONNECT_CALLS]),
        kind("ctl-", &[SESSION_CALLS]),
        // The kernel keeps 15 bytes of a thread's name: "vu-frontend-wat".
        kind("vu-frontend-wat", &[WATCHDOG_CALLS]),
        kind("qmp", &[QMP_CALLS]),
        kind("serial-", &[SERIAL_CALLS]),
    ]
}

/// The process list: every thread kind's calls (each thread narrows it to its kind's).
fn process_syscalls() -> Vec<Allow> {
    list(&[
        VCPU_CALLS,
        MAIN_CALLS,
        SESSION_CALLS,
        RECONNECT_CALLS,
        WATCHDOG_CALLS,
        QMP_CALLS,
        SERIAL_CALLS,
    ])
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The paths accel may still use once confined (see the module documentation).
pub fn paths(config: &VmConfig) -> Vec<PathRule> {
    let mut paths = vec![PathRule::new(&config.boot.kernel, FsAccess::Read)];
    if let Some(initrd) = &config.boot.initrd {
        paths.push(PathRule::new(initrd, FsAccess::Read));
    }
    // The directories where the command line has accel listen: QMP `chardev-add` with
    // `"server": true` may bind more there (a VM's sockets live together: libvirt's domain
    // directory, Kata's sandbox directory), and accel removes its own at exit. Not the
    // directories of the backends' sockets accel connects to: those are the backends' (a
    // directory such as OVS's run directory holds other VMs' sockets).
    let mut sockets: Vec<&Path> = Vec::new();
    for m in &config.monitors {
        if let MonitorListen::Unix(p) = &m.listen {
            sockets.push(p);
        }
    }
    if let SerialConfig::UnixServer { path, .. } = &config.serial {
        sockets.push(path);
    }
    sockets.extend(
        config
            .chardevs
            .iter()
            .filter(|c| c.server)
            .map(|c| c.path.as_path()),
    );
    let mut dirs: Vec<(PathBuf, FsAccess)> = Vec::new();
    for p in sockets {
        let dir = parent_dir(p);
        if !dirs.iter().any(|(d, _)| *d == dir) {
            dirs.push((dir, FsAccess::Sockets));
        }
    }
    if let Some(p) = &config.lifecycle.pidfile {
        let dir = parent_dir(p);
        if !dirs.iter().any(|(d, _)| *d == dir) {
            dirs.push((dir, FsAccess::RemoveEntries));
        }
    }
    paths.extend(dirs.into_iter().map(|(d, a)| PathRule::new(d, a)));
    if config.lifecycle.daemonize {
        paths.push(PathRule::new("/dev/null", FsAccess::ReadWrite));
    }
    // Memory-backend files are open and mapped already; nothing opens them again.
    paths
}

/// Switches user (`-run-with user=`) and confines the process (unless `-sandbox off`).
pub fn apply(config: &VmConfig) -> Result<(), super::VmmError> {
    let user = match &config.lifecycle.run_as {
        Some(u) => Some(vu_sandbox::User::parse(u)?),
        None => None,
    };
    if let Some(u) = &user {
        log::info!("running as uid {} gid {}", u.uid, u.gid);
    }
    if !config.lifecycle.sandbox {
        if let Some(u) = &user {
            vu_sandbox::drop_privileges(u)?;
        }
        log::info!("-sandbox off: accel is not confined");
        return Ok(());
    }
    let enforced = vu_sandbox::confine_as(&policy(config), user.as_ref())?;
    if enforced.landlock {
        log::info!("confined (no_new_privs, landlock, seccomp per thread kind)");
    }
    Ok(())
}

/// accel's whole policy for `config`.
pub fn policy(config: &VmConfig) -> Policy {
    Policy {
        program: "accel",
        paths: paths(config),
        syscalls: process_syscalls(),
        threads: thread_kinds(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From <linux/kvm.h> as strace prints them.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        assert_eq!(KVM_SET_IRQCHIP, 0x8208_ae63);
    }

    #[test]
    fn only_vcpu_threads_may_run_a_vcpu() {
        let run = ArgEq("ioctl", 1, KVM_RUN);
        assert!(vcpu_syscalls().contains(&run));
        assert!(!main_syscalls().contains(&run));
        for k in thread_kinds() {
            let vcpu = k.name_prefix == "vcpu" || k.name_prefix == "CPU ";
            assert_eq!(k.syscalls.contains(&run), vcpu, "{}", k.name_prefix);
            assert!(!k.syscalls.contains(&Any("execve")), "{}", k.name_prefix);
        }
        assert!(!process_syscalls().contains(&Any("socket")));
        // Threads, not processes: clone only with pthread_create's flags.
        for forks in [
            Any("clone"),
            Any("clone3"),
            Any("fork"),
            Any("vfork"),
            Any("execve"),
        ] {
            assert!(!process_syscalls().contains(&forks), "{forks:?}");
        }
    }
}
