//! The `vhost-user-blk` process: command line, capabilities, exit on signals, the inherited
//! `--fd` listener, and surviving malformed vhost-user messages.

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use nix::sys::signal::Signal;
use vhost::VhostBackend;
use vhost::vhost_user::Frontend;
use vhost::vhost_user::VhostUserFrontend;

mod common;
use common::{KillOnDrop, TIMEOUT, TestDir, capabilities, wait_for};

const EXE: &str = env!("CARGO_BIN_EXE_vhost-user-blk");

fn scratch(tag: &str) -> TestDir {
    let s = TestDir::new(&format!("vub-proc-{}", tag));
    std::fs::write(s.join("img"), vec![0x42u8; 1 << 20]).unwrap();
    s
}

fn run(args: &[&str]) -> Output {
    common::run(EXE, args)
}

fn spawn(args: &[&str]) -> KillOnDrop {
    KillOnDrop::spawn_quiet(EXE, args)
}

/// A frontend handshake: SET_OWNER, GET_FEATURES, GET_QUEUE_NUM.
fn handshake(path: &Path) -> (u64, u64) {
    let mut f = Frontend::connect(path, 8).expect("connect");
    f.set_owner().expect("set_owner");
    let features = f.get_features().expect("get_features");
    f.set_features(features).expect("set_features");
    let pf = f.get_protocol_features().expect("get_protocol_features");
    f.set_protocol_features(pf).expect("set_protocol_features");
    (features, f.get_queue_num().expect("get_queue_num"))
}

#[test]
fn prints_capabilities() {
    let v = capabilities(EXE);
    assert_eq!(v["type"], "block");
    let features: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert_eq!(features, ["read-only-config", "blk-file"]);
}

#[test]
fn descriptor_file_names_the_block_type() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/vhost-user-blk.json"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "block");
    assert!(v["binary"].as_str().unwrap().ends_with("vhost-user-blk"));
}

#[test]
fn bad_options_fail_with_a_clear_message() {
    let s = scratch("badopts");
    let sock = s.join("s").display().to_string();
    let img = s.join("img").display().to_string();
    let missing = s.join("missing").display().to_string();
    let cases: [(&[&str], &str); 7] = [
        (&["--socket-path", &sock], "--image FILE is required"),
        (&["--image", &img], "--socket-path"),
        (
            &["--socket-path", &sock, "--image", &missing],
            "cannot open image",
        ),
        (
            &["--socket-path", &sock, "--image", "/dev/null"],
            "not a regular file or block device",
        ),
        (
            &["--socket-path", &sock, "--image", &img, "--num-queues", "0"],
            "--num-queues",
        ),
        (
            &[
                "--socket-path",
                &sock,
                "--image",
                &img,
                "--queue-size",
                "100",
            ],
            "--queue-size",
        ),
        (&["--fd", "200", "--image", &img], "--fd 200"),
    ];
    for (args, want) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(want),
            "{args:?}: stderr {stderr:?} lacks {want:?}"
        );
        assert!(!s.join("s").exists(), "{args:?} left a socket behind");
    }
    // clap's own errors (unknown option) also exit non-zero.
    assert!(!run(&["--no-such-option"]).status.success());
}

#[test]
fn sigterm_and_sigint_exit_cleanly_and_remove_the_socket() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let s = scratch(&format!("sig{}", sig as i32));
        let sock = s.join("s");
        let mut b = spawn(&[
            "-s",
            sock.to_str().unwrap(),
            "--image",
            s.join("img").to_str().unwrap(),
        ]);
        wait_for(&sock);
        // While a frontend is connected, too.
        let _f = Frontend::connect(&sock, 8).unwrap();
        let status = b.signal_and_wait(sig, TIMEOUT).expect("did not exit");
        assert_eq!(status.code(), Some(0), "{sig}");
        assert!(!sock.exists(), "{sig}: socket not removed");
    }
}

#[test]
fn serves_on_an_inherited_listening_fd_and_again_after_disconnect() {
    let s = scratch("fd");
    let sock = s.join("s");
    let listener = UnixListener::bind(&sock).unwrap();
    let fd = listener.into_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on our own fd so the child inherits it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let _b = spawn(&[
        "--fd",
        &fd.to_string(),
        "--image",
        s.join("img").to_str().unwrap(),
        "--num-queues",
        "3",
    ]);
    // SAFETY: the child has its copy; close ours.
    unsafe { libc::close(fd) };
    for _ in 0..3 {
        let (features, queues) = handshake(&sock);
        assert_ne!(features & (1 << 32), 0, "VERSION_1 missing");
        assert_eq!(queues, 3);
    }
}

#[test]
fn malformed_messages_drop_the_connection_and_the_next_frontend_is_served() {
    let s = scratch("garbage");
    let sock = s.join("s");
    let mut b = spawn(&[
        "-s",
        sock.to_str().unwrap(),
        "--image",
        s.join("img").to_str().unwrap(),
    ]);
    wait_for(&sock);
    let garbage: [&[u8]; 4] = [
        // Unknown request code 0xffff, version 1, no payload.
        &[0xff, 0xff, 0, 0, 0x1, 0, 0, 0, 0, 0, 0, 0],
        // SET_OWNER with a huge payload size.
        &[3, 0, 0, 0, 0x1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f],
        // Bad version bits.
        &[1, 0, 0, 0, 0x7, 0, 0, 0, 0, 0, 0, 0],
        // A truncated header, then hang up.
        &[1, 0, 0],
    ];
    for g in garbage {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(g).unwrap();
        if g.len() < 12 {
            drop(c);
        } else {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 64];
            // The backend closes the connection (EOF), or answers once and then closes.
            let mut total = 0;
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    // A read interrupted by a signal (2 of 600 runs of this binary, whose
                    // other tests signal their children) is no answer from the backend.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("connection not dropped after {g:?}: {e}"),
                }
                assert!(total < 4096, "endless answer");
            }
        }
        let (features, _) = handshake(&sock);
        assert_ne!(features & (1 << 32), 0);
        assert!(
            b.0.try_wait().unwrap().is_none(),
            "backend died after {g:?}"
        );
    }
    // SET_OWNER twice on one connection is a protocol error: dropped, next one served.
    let f = Frontend::connect(&sock, 8).unwrap();
    f.set_owner().unwrap();
    let _ = f.set_owner();
    drop(f);
    handshake(&sock);
    assert!(b.0.try_wait().unwrap().is_none());
}

#[test]
fn blk_file_is_an_alias_of_image() {
    let s = scratch("blkfile");
    let sock = s.join("s");
    let _b = spawn(&[
        "-s",
        sock.to_str().unwrap(),
        "--blk-file",
        s.join("img").to_str().unwrap(),
        "--read-only",
    ]);
    wait_for(&sock);
    let (features, _) = handshake(&sock);
    assert_ne!(
        features & (1 << vu_spec::blk::VIRTIO_BLK_F_RO),
        0,
        "--read-only not applied"
    );
}
