//! The confined-child pattern of the sandbox policy tests: a test applies a program's real
//! confinement policy in a child process (the test binary run again, only its
//! `confined_child` test, told what to do through environment variables), which then tries
//! one thing a taken-over process would try and exits with the outcome: [`DONE`], the errno
//! (landlock's [`EACCES`]), or death by SIGSYS from seccomp.
//!
//! Only std and libc: accel's tests include this file by path, as they do `support.rs`.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus};

/// The child's exit status when its attempt succeeded.
pub const DONE: i32 = 0;
/// The child's exit status when landlock refused the attempt.
pub const EACCES: i32 = libc::EACCES;

/// Runs this test binary's `confined_child` test alone, with `env` set; returns its exit
/// status and stderr (where a SIGSYS handler names the refused call).
pub fn run_child<'a>(env: impl IntoIterator<Item = (&'a str, &'a OsStr)>) -> (ExitStatus, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([
            "--exact",
            "confined_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env)
        .output()
        .expect("running the confined child");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What every program's policy must stop, tried in the confined child: `shadow` opens
/// /etc/shadow (landlock), `inet` connects a TCP socket and `exec` runs /bin/sh (seccomp).
/// `None` for any other action (the test's own).
pub fn common_attempt(action: &str) -> Option<io::Result<()>> {
    Some(match action {
        "shadow" => std::fs::File::open(Path::new("/etc/shadow")).map(drop),
        "inet" => std::net::TcpStream::connect("127.0.0.1:9").map(drop),
        "exec" => {
            let sh = c"/bin/sh";
            let argv = [sh.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: execve with NUL-terminated strings and arrays that outlive the call.
            unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            Err(io::Error::last_os_error())
        }
        _ => return None,
    })
}

/// Ends the child with the outcome of its attempt: [`DONE`], or the errno (99 without one).
pub fn exit_with(result: io::Result<()>) -> ! {
    std::process::exit(match result {
        Ok(()) => DONE,
        Err(e) => e.raw_os_error().unwrap_or(99),
    })
}
