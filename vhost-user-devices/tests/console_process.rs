//! The `vhost-user-rng` and `vhost-user-console` processes: capabilities, command-line
//! errors, exit on SIGTERM, and the console's `--stdio` endpoint both ways.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use vu_testkit::driver::DriverOptions;
use vu_testkit::driver::console::ConsoleDriver;
use vu_testkit::driver::rng::RngDriver;

mod common;
use common::{KillOnDrop, TIMEOUT, TestDir, run, wait_for};

const CONSOLE: &str = env!("CARGO_BIN_EXE_vhost-user-console");
const RNG: &str = env!("CARGO_BIN_EXE_vhost-user-rng");

fn opts() -> DriverOptions {
    DriverOptions {
        queue_size: 64,
        ..DriverOptions::default()
    }
}

#[test]
fn capabilities() {
    for (exe, ty) in [(RNG, "rng"), (CONSOLE, "console")] {
        let v = common::capabilities(exe);
        assert_eq!(v["type"], ty);
        assert!(v["features"].as_array().unwrap().is_empty());
    }
}

#[test]
fn command_line_errors_fail_early() {
    let s = TestDir::new("vucp-args");
    let sock = s.join("s");
    let sock = sock.to_str().unwrap();
    for (exe, args, msg) in [
        (CONSOLE, vec!["-s", sock], "give exactly one of"),
        (
            RNG,
            vec!["-s", sock, "--source", "/nonexistent/x"],
            "entropy source",
        ),
        (RNG, vec!["-s", sock, "--max-bytes", "0"], "--max-bytes"),
        (
            RNG,
            vec!["-s", sock, "--max-bytes", "9", "--period", "0"],
            "--period",
        ),
    ] {
        let out = run(exe, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    // --queue-size is a common option, checked by clap: a usage error (status 2).
    for (exe, args) in [
        (CONSOLE, vec!["-s", sock, "--stdio", "--queue-size", "3"]),
        (RNG, vec!["-s", sock, "--queue-size", "3"]),
    ] {
        let out = run(exe, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{exe}: {err}");
        assert!(err.contains("--queue-size"), "{exe}: {err}");
        assert!(err.contains("power of two"), "{exe}: {err}");
    }
    // clap refuses two endpoints.
    let out = run(CONSOLE, &["-s", sock, "--stdio", "--output", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!Path::new(sock).exists());
}

#[test]
fn rng_serves_then_exits_on_sigterm() {
    let s = TestDir::new("vucp-rng-term");
    let sock = s.join("s");
    let mut b = KillOnDrop::spawn_quiet(RNG, &["-s", sock.to_str().unwrap()]);
    wait_for(&sock);
    {
        let mut d = RngDriver::connect(&sock, TIMEOUT, opts()).unwrap();
        assert_eq!(d.request(32, TIMEOUT).unwrap().len(), 32);
    }
    let status = b
        .signal_and_wait(Signal::SIGTERM, TIMEOUT)
        .expect("no exit after SIGTERM");
    assert!(status.success());
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn console_socket_removed_on_sigterm() {
    let s = TestDir::new("vucp-con-term");
    let sock = s.join("s");
    let p = s.join("p");
    let mut b = KillOnDrop::spawn_quiet(
        CONSOLE,
        &[
            "-s",
            sock.to_str().unwrap(),
            "--socket",
            p.to_str().unwrap(),
        ],
    );
    wait_for(&sock);
    assert!(p.exists());
    let status = b
        .signal_and_wait(Signal::SIGTERM, TIMEOUT)
        .expect("no exit after SIGTERM");
    assert!(status.success());
    assert!(!sock.exists() && !p.exists(), "socket left behind");
}

#[test]
fn console_stdio_both_ways() {
    let s = TestDir::new("vucp-stdio");
    let sock = s.join("s");
    let mut child = Command::new(CONSOLE)
        .args(["-s", sock.to_str().unwrap(), "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let _b = KillOnDrop(child);
    wait_for(&sock);
    let mut d = ConsoleDriver::connect(&sock, TIMEOUT, opts()).unwrap();
    d.send(b"to stdout\n", TIMEOUT).unwrap();
    let mut got = vec![0u8; 10];
    stdout.read_exact(&mut got).unwrap();
    assert_eq!(got, b"to stdout\n");
    d.post_receive(2, 64).unwrap();
    stdin.write_all(b"from stdin\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(d.receive_at_least(11, TIMEOUT).unwrap(), b"from stdin\n");
}
