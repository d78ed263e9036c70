//! The `vhost-user-vsock` process: command line, capabilities, exit on signals, the
//! `--uds-path` socket (stale sockets replaced, other files never touched).

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vu_testkit::driver::vsock::VsockDriver;

mod common;
use common::{KillOnDrop, TestDir, capabilities, wait_for};

const EXE: &str = env!("CARGO_BIN_EXE_vhost-user-vsock");

fn run(args: &[&str]) -> Output {
    common::run(EXE, args)
}

fn spawn(sock: &Path, uds: &Path) -> KillOnDrop {
    let arg = OsStr::new;
    KillOnDrop::spawn_quiet(
        EXE,
        &[
            arg("--socket-path"),
            sock.as_os_str(),
            arg("--uds-path"),
            uds.as_os_str(),
            arg("--guest-cid"),
            arg("42"),
        ],
    )
}

#[test]
fn print_capabilities_and_descriptor() {
    let v = capabilities(EXE);
    assert_eq!(v["type"], "vsock");
    assert!(v["features"].as_array().unwrap().is_empty());
    let desc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("vhost-user-vsock.json"),
    )
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&desc).unwrap();
    assert_eq!(d["type"], "vsock");
    assert!(d["binary"].as_str().unwrap().ends_with("/vhost-user-vsock"));
}

#[test]
fn bad_command_lines_fail_with_one_clear_line() {
    let s = TestDir::new("vuv-proc-args");
    let sock = s.join("s");
    let sock = sock.to_str().unwrap();
    let out = run(&["--socket-path", sock]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--uds-path"), "{err}");
    let out = run(&[
        "--socket-path",
        sock,
        "--uds-path",
        "/nonexistent-dir/v",
        "--guest-cid",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--guest-cid"));
    // The host socket path names a regular file: refused, the file is left alone.
    let file = s.join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let out = run(&["--socket-path", sock, "--uds-path", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert!(!Path::new(sock).exists());
}

#[test]
fn sigterm_exits_cleanly_and_a_restart_replaces_a_stale_host_socket() {
    let s = TestDir::new("vuv-proc-term");
    let (sock, uds) = (s.join("s"), s.join("v"));
    let mut b = spawn(&sock, &uds);
    wait_for(&sock);
    wait_for(&uds);
    // A host client mid-handshake and a connected frontend do not keep it from exiting.
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 5").unwrap();
    let d = VsockDriver::connect(&sock, Duration::from_secs(10)).unwrap();
    assert_eq!(d.guest_cid(), 42);
    kill(Pid::from_raw(b.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = b.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "vhost-user socket left behind");
    assert!(!uds.exists(), "host socket left behind");
    drop(d);

    // A stale host socket file (a crash) is replaced by the next process.
    drop(std::os::unix::net::UnixListener::bind(&uds).unwrap());
    assert!(uds.exists());
    let _b = spawn(&sock, &uds);
    wait_for(&sock);
    let d = VsockDriver::connect(&sock, Duration::from_secs(10)).unwrap();
    assert_eq!(d.guest_cid(), 42);
    UnixStream::connect(&uds).expect("host socket served again");
}
