//! accel's confinement policy (`accel::vmm::confine::policy`, what `-sandbox on` applies once
//! the VM is built) applied in a child process (this test binary run again), which then tries
//! what a taken-over accel would try, and reports how it went: files beside the kernel and
//! /etc/shadow (landlock: EACCES), a TCP socket and execve (seccomp: SIGSYS, with the line
//! naming the call), and KVM_RUN from the main thread once it has narrowed itself (SIGSYS: the
//! ioctl is filtered by request number).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use accel::cli::{CliAction, parse};

// The confined-child harness the backends' policy tests share, by path (see backend_stop.rs).
#[path = "../../protocol/testkit/src/confined.rs"]
mod confined;
use confined::{DONE, EACCES, common_attempt, exit_with};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("accel-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("vmlinux"), b"not really a kernel").unwrap();
        std::fs::write(p.join("initrd"), b"not really an initrd").unwrap();
        std::fs::write(p.join("beside"), b"a file next to the kernel").unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn child(dir: &Path, action: &str) -> (std::process::ExitStatus, String) {
    confined::run_child([
        ("ACCEL_CONFINED_ACTION", action.as_ref()),
        ("ACCEL_CONFINED_DIR", dir.as_os_str()),
    ])
}

/// The child side (does nothing in a normal test run).
#[test]
fn confined_child() {
    let Ok(action) = std::env::var("ACCEL_CONFINED_ACTION") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("ACCEL_CONFINED_DIR").unwrap());
    let p = |n: &str| dir.join(n).display().to_string();
    let argv: Vec<String> = [
        "-kernel".into(),
        p("vmlinux"),
        "-initrd".into(),
        p("initrd"),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p("qmp.sock")),
        "-pidfile".into(),
        p("pid"),
    ]
    .into();
    let Ok(CliAction::Run(config)) = parse(&argv) else {
        panic!("the command line parses");
    };
    vu_sandbox::confine(&accel::vmm::confine::policy(&config)).unwrap();
    let open = |p: &Path| std::fs::File::open(p).map(drop);
    if let Some(result) = common_attempt(&action) {
        exit_with(result);
    }
    let result = match action.as_str() {
        "kernel" => open(&dir.join("vmlinux")),
        "initrd" => open(&dir.join("initrd")),
        "beside" => open(&dir.join("beside")),
        "create" => std::fs::write(dir.join("new"), b"x"),
        "remove-pidfile" => std::fs::remove_file(dir.join("beside")),
        "tcgets-main" | "kvm-run-main" => {
            vu_sandbox::confine_thread(&accel::vmm::confine::main_syscalls()).unwrap();
            let request: libc::c_ulong = if action == "tcgets-main" {
                0x5401
            } else {
                0xae80
            };
            let mut buf = [0u8; 64];
            // SAFETY: an ioctl on stdin with a buffer larger than a termios; KVM_RUN on a
            // non-KVM fd fails (if the filter lets it through at all).
            unsafe { libc::ioctl(0, request, buf.as_mut_ptr()) };
            Ok(())
        }
        // What a device reset does on the main thread: start a thread (glibc tries clone3,
        // gets ENOSYS, and clones with pthread_create's flags).
        "thread-main" => {
            vu_sandbox::confine_thread(&accel::vmm::confine::main_syscalls()).unwrap();
            std::thread::spawn(|| 7)
                .join()
                .map(|v| assert_eq!(v, 7))
                .map_err(|_| std::io::Error::other("thread panicked"))
        }
        "fork-main" => {
            vu_sandbox::confine_thread(&accel::vmm::confine::main_syscalls()).unwrap();
            // SAFETY: fork in a single-threaded child process; the child exits at once.
            match unsafe { libc::fork() } {
                // SAFETY: the forked child ends at once without running anything.
                0 => unsafe { libc::_exit(0) },
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            }
        }
        // QMP chardev-add with "server": true, on the main thread: a socket in the QMP
        // socket's directory, then one in its parent (not a directory the line uses).
        "bind-main" | "bind-elsewhere" => {
            vu_sandbox::confine_thread(&accel::vmm::confine::main_syscalls()).unwrap();
            let at = if action == "bind-main" {
                dir.join("chardev.sock")
            } else {
                dir.with_extension("sock")
            };
            std::os::unix::net::UnixListener::bind(&at).map(drop)
        }
        "kvm-run-vcpu" => {
            vu_sandbox::confine_thread(&accel::vmm::confine::vcpu_syscalls()).unwrap();
            // SAFETY: KVM_RUN on stdin, which is not a vCPU: ENOTTY, not SIGSYS.
            unsafe { libc::ioctl(0, 0xae80, 0) };
            Ok(())
        }
        other => panic!("unknown action {other}"),
    };
    exit_with(result);
}

#[test]
fn policy_allows_kernel_and_initrd_and_denies_other_files() {
    let dir = Dir::new("policy-files");
    for (action, want) in [
        ("kernel", DONE),
        ("initrd", DONE),
        ("beside", EACCES),
        ("create", EACCES),
        ("shadow", EACCES),
        // The pidfile's directory: entries may be removed (the pidfile at exit).
        ("remove-pidfile", DONE),
        // Sockets may be created where the command line has sockets (the QMP one), only.
        ("bind-main", DONE),
        ("bind-elsewhere", EACCES),
    ] {
        let (status, stderr) = child(&dir.0, action);
        assert_eq!(status.code(), Some(want), "{action}: {stderr}");
    }
}

#[test]
fn policy_kills_inet_sockets_execve_and_kvm_run_off_vcpu_threads() {
    let dir = Dir::new("policy-kill");
    for (action, call) in [
        ("inet", "41 (socket)"),
        ("exec", "59 (execve)"),
        ("kvm-run-main", "16 (ioctl)"),
        // A fork: clone without CLONE_THREAD.
        ("fork-main", "56 (clone)"),
    ] {
        let (status, stderr) = child(&dir.0, action);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{action}: {status:?} {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "accel: seccomp: system call {call} is not in the allow-list"
            )),
            "{action}: {stderr}"
        );
    }
    // The same ioctl call with an allowed request number, and KVM_RUN on a vCPU thread's list.
    // A new thread on the main thread's list (clone with pthread_create's flags).
    for action in ["tcgets-main", "kvm-run-vcpu", "thread-main"] {
        let (status, stderr) = child(&dir.0, action);
        assert_eq!(status.code(), Some(DONE), "{action}: {status:?} {stderr}");
    }
}
