//! The `vhost-user-rng` and `vhost-user-console` processes: capabilities, command-line
//! errors, exit on SIGTERM, and the console's `--stdio` endpoint both ways.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use protocol::driver::DriverOptions;
use protocol::driver::console::ConsoleDriver;
use protocol::driver::rng::RngDriver;

const CONSOLE: &str = env!("CARGO_BIN_EXE_vhost-user-console");
const RNG: &str = env!("CARGO_BIN_EXE_vhost-user-rng");
const TIMEOUT: Duration = Duration::from_secs(10);

struct Scratch(PathBuf);
impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vucp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Backend(Child);
impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(exe: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn opts() -> DriverOptions {
    DriverOptions {
        queue_size: 64,
        ..DriverOptions::default()
    }
}

#[test]
fn capabilities() {
    for (exe, ty) in [(RNG, "rng"), (CONSOLE, "console")] {
        let out = run(exe, &["--print-capabilities"]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["type"], ty);
        assert!(v["features"].as_array().unwrap().is_empty());
    }
}

#[test]
fn command_line_errors_fail_early() {
    let s = Scratch::new("args");
    let sock = s.path("s");
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
        (RNG, vec!["-s", sock, "--queue-size", "3"], "--queue-size"),
    ] {
        let out = run(exe, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    // clap refuses two endpoints.
    let out = run(CONSOLE, &["-s", sock, "--stdio", "--output", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!Path::new(sock).exists());
}

#[test]
fn rng_serves_then_exits_on_sigterm() {
    let s = Scratch::new("rng-term");
    let sock = s.path("s");
    let mut b = Backend(
        Command::new(RNG)
            .args(["-s", sock.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&sock);
    {
        let mut d = RngDriver::connect(&sock, TIMEOUT, opts()).unwrap();
        assert_eq!(d.request(32, TIMEOUT).unwrap().len(), 32);
    }
    kill(Pid::from_raw(b.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut b.0).expect("no exit after SIGTERM");
    assert!(status.success());
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn console_socket_removed_on_sigterm() {
    let s = Scratch::new("con-term");
    let sock = s.path("s");
    let p = s.path("p");
    let mut b = Backend(
        Command::new(CONSOLE)
            .args([
                "-s",
                sock.to_str().unwrap(),
                "--socket",
                p.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&sock);
    assert!(p.exists());
    kill(Pid::from_raw(b.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut b.0).expect("no exit after SIGTERM");
    assert!(status.success());
    assert!(!sock.exists() && !p.exists(), "socket left behind");
}

#[test]
fn console_stdio_both_ways() {
    let s = Scratch::new("stdio");
    let sock = s.path("s");
    let mut child = Command::new(CONSOLE)
        .args(["-s", sock.to_str().unwrap(), "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let _b = Backend(child);
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
