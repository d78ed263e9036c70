//! vu_testkit::support: scratch directories, deadlines, markers, paths, signals.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vu_testkit::support::*;

#[test]
fn test_dir_is_fresh_and_removed_on_drop() {
    let a = TestDir::new("support");
    let b = TestDir::new("support");
    assert_ne!(a.path(), b.path());
    std::fs::write(a.join("f"), b"x").unwrap();
    let p = a.path().to_path_buf();
    drop(a);
    assert!(!p.exists());
}

#[test]
fn run_with_timeout_collects_output_and_kills_at_the_deadline() {
    let out = run_with_timeout(
        Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(3), "{}", out.both());
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n")
    );
    let start = Instant::now();
    let out = run_with_timeout(
        Command::new("sh").args(["-c", "echo started; exec sleep 60"]),
        Duration::from_millis(300),
    );
    assert!(out.status.is_none());
    assert_eq!(out.stdout, "started\n");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn spawn_until_waits_for_the_marker() {
    let r = spawn_until(
        Command::new("sh").args(["-c", "echo a; echo READY; exec sleep 60"]),
        "READY",
        Duration::from_secs(30),
    )
    .unwrap_or_else(|o| panic!("no marker: {}", o.both()));
    let out = r.finish();
    assert!(out.status.is_none(), "killed");
    assert_eq!(out.stdout, "a\nREADY\n");
    let err = spawn_until(
        Command::new("sh").args(["-c", "echo nope"]),
        "READY",
        Duration::from_secs(30),
    )
    .err()
    .expect("exits without the marker");
    assert_eq!(err.code(), Some(0));
}

#[test]
fn paths_connections_and_signals() {
    let dir = TestDir::new("support");
    let sock = dir.join("s");
    assert!(!wait_for_path(&sock, Duration::from_millis(50)));
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    expect_path(&sock, Duration::from_secs(1));
    let _c = connect_retry(&sock, Duration::from_secs(1));
    assert!(l.accept().is_ok());
    let mut child = KillOnDrop::spawn_quiet("sleep", &["60"]);
    assert!(wait_exit(&mut child.0, Duration::from_millis(50)).is_none());
    let st = child
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(30))
        .expect("exits on SIGTERM");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(Signal::SIGTERM as i32));
}

#[test]
fn other_processes_through_proc() {
    let me = std::process::id();
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = child.id();
    let stat = proc_stat(pid).expect("the child's stat");
    assert_eq!((stat.comm.as_str(), stat.ppid), ("sleep", me));
    assert!(running(pid));
    assert!(children_of(me).contains(&(pid, "sleep".to_string())));
    assert!(!wait_gone(pid, Duration::from_millis(50)));
    child.kill().unwrap();
    // Exited but not reaped (a zombie) counts as gone; reaped, its stat is gone too.
    assert!(wait_gone(pid, Duration::from_secs(10)));
    assert_eq!(proc_stat(pid).map(|s| s.state), Some('Z'));
    child.wait().unwrap();
    assert_eq!(proc_stat(pid), None);
}
