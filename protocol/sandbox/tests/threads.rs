//! Threads that exist when `confine` runs are confined too (landlock has no TSYNC here): a
//! thread started before, blocked in a read, gets the landlock rules, the process filter and
//! its kind's filter. Runs in a child process (this test binary again): confinement cannot be
//! undone.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::mpsc;

use vu_sandbox::{Allow, FsAccess, PathRule, Policy, ThreadKind};

fn child(action: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "confined_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SANDBOX_THREADS_ACTION", action)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PROCESS: &[Allow] = &[
    Allow::Any("read"),
    Allow::Any("openat"),
    Allow::Any("close"),
    Allow::Any("futex"),
    Allow::Any("mmap"),
    Allow::Any("munmap"),
    Allow::Any("mprotect"),
    Allow::Any("madvise"),
    Allow::Any("brk"),
    Allow::Any("sigaltstack"),
    Allow::Any("sched_getaffinity"),
    Allow::Any("statx"),
    Allow::Any("fstat"),
    Allow::Any("newfstatat"),
    Allow::Any("clock_gettime"),
    Allow::Any("clock_nanosleep"),
    Allow::Any("nanosleep"),
    Allow::Any("sendto"),
    Allow::Any("sendmsg"),
    Allow::Any("recvfrom"),
    Allow::Any("shutdown"),
    Allow::Any("fcntl"),
    Allow::Any("lseek"),
];

/// The child: a thread named "worker" blocks in a read before `confine`; once released it
/// tries `action`; the exit code says how it went (0 done, else errno).
#[test]
fn confined_child() {
    let Ok(action) = std::env::var("SANDBOX_THREADS_ACTION") else {
        return;
    };
    let (mut ours, mut theirs) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            // Blocked here while the main thread confines the process: the signal that asks
            // this thread to confine itself interrupts the read, which is restarted.
            theirs.read_exact(&mut b).unwrap();
            let r = match action.as_str() {
                "open-allowed" => std::fs::File::open("/proc/self/comm").map(drop),
                "open-denied" => std::fs::File::open("/etc/passwd").map(drop),
                // In the process list, not in the worker kind's list.
                "outside-kind" => std::fs::File::open("/proc/self/comm").map(drop),
                other => panic!("unknown action {other}"),
            };
            tx.send(r.map_err(|e| e.raw_os_error().unwrap_or(99)))
                .unwrap();
        })
        .unwrap();
    // Let the worker block in its read.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let kind_action = std::env::var("SANDBOX_THREADS_ACTION").unwrap();
    let worker_list: Vec<Allow> = if kind_action == "outside-kind" {
        // No openat for workers.
        PROCESS
            .iter()
            .copied()
            .filter(|a| *a != Allow::Any("openat"))
            .collect()
    } else {
        PROCESS.to_vec()
    };
    let policy = Policy {
        program: "sandbox-threads",
        paths: vec![PathRule::new("/proc/self/comm", FsAccess::Read)],
        syscalls: PROCESS.to_vec(),
        threads: vec![ThreadKind {
            name_prefix: "worker",
            syscalls: worker_list,
        }],
    };
    vu_sandbox::confine(&policy).unwrap();
    ours.write_all_byte();
    let code = match rx.recv().unwrap() {
        Ok(()) => 0,
        Err(e) => e,
    };
    let _ = worker.join();
    std::process::exit(code);
}

trait WriteByte {
    fn write_all_byte(&mut self);
}

impl WriteByte for UnixStream {
    fn write_all_byte(&mut self) {
        use std::io::Write;
        self.write_all(b"x").unwrap();
    }
}

#[test]
fn a_thread_started_before_confine_is_landlocked() {
    let (status, stderr) = child("open-allowed");
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (status, stderr) = child("open-denied");
    assert_eq!(status.code(), Some(libc::EACCES), "{stderr}");
}

#[test]
fn a_thread_started_before_confine_gets_its_kind_s_filter() {
    let (status, stderr) = child("outside-kind");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?} {stderr}");
    assert!(
        stderr.contains(
            "sandbox-threads: seccomp: system call 257 (openat) is not in the allow-list"
        ),
        "{stderr}"
    );
}
