//! The `vhost-user-net` program: capabilities, clear errors on bad command lines, and a clean
//! exit on SIGTERM with both peer-mode socket files removed.

use nix::sys::signal::Signal;

mod common;
use common::{KillOnDrop, TIMEOUT, TestDir, wait_for};

const EXE: &str = env!("CARGO_BIN_EXE_vhost-user-net");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = common::run(EXE, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_capabilities() {
    let (code, out, _) = run(&["--print-capabilities"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["type"], "net");
    assert!(v["features"].is_array());
    let descriptor: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/vhost-user-net.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(descriptor["type"], "net");
}

#[test]
fn bad_command_lines_fail_with_one_clear_line() {
    for (args, needle) in [
        (&["-s", "/tmp/x.sock"][..], "--tap IFNAME and --peer PATH"),
        (
            &["-s", "/tmp/x.sock", "--tap", "a-name-far-too-long"][..],
            "longer than 15",
        ),
        (
            &["-s", "/tmp/x.sock", "--peer", "/tmp/x.sock"][..],
            "must differ",
        ),
        (
            &["-s", "/tmp/x.sock", "--tap", "t0", "--queues", "0"][..],
            "--queues",
        ),
        (
            &["-s", "/tmp/x.sock", "--tap", "t0", "--mac", "52:54"][..],
            "--mac",
        ),
        (&["--tap", "t0"][..], "--socket-path"),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            err.starts_with("vhost-user-net: error: "),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn peer_mode_exits_cleanly_on_sigterm_removing_both_sockets() {
    let dir = TestDir::new("vun-proc-term");
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    let arg = std::ffi::OsStr::new;
    let mut child = KillOnDrop::spawn_quiet(
        EXE,
        &[arg("-s"), a.as_os_str(), arg("--peer"), b.as_os_str()],
    );
    wait_for(&a);
    wait_for(&b);
    let status = child
        .signal_and_wait(Signal::SIGTERM, TIMEOUT)
        .expect("no exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(!a.exists() && !b.exists(), "socket files left behind");
}
