//! Confinement (`--sandbox`, on by default): every backend process runs with seccomp and
//! no_new_privs once set up, and its policy denies what a taken-over device would try.
//!
//! The policy tests apply the very policy `vu_daemon::run_devices` applies to vhost-user-blk
//! (`vu_daemon::confine::policy` over a real opened `BlkDevice`) in a child process (this test
//! binary run again), then try one thing there and report how it went.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use vu_testkit::confined::{self, DONE, EACCES, common_attempt, exit_with};

mod common;
use common::{KillOnDrop, TestDir, wait_for};

fn status_fields(pid: u32) -> (String, String) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("Seccomp:"), field("NoNewPrivs:"))
}

/// `Seccomp_filters` of the thread of `pid` named `name`, once it exists (generous deadline).
fn thread_filters(pid: u32, name: &str) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let n = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp_filters:"))
                .and_then(|v| v.trim().parse().ok());
            if n == Some(2) {
                return n;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits (generously) until the process is confined, or returns what it last showed.
fn wait_confined(pid: u32) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = status_fields(pid);
        if f.0 == "2" || Instant::now() > deadline {
            return f;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every backend program with the arguments it needs besides `--socket-path`, its files in
/// `dir`.
fn every_backend(dir: &TestDir) -> Vec<(&'static str, Vec<std::ffi::OsString>)> {
    let image = dir.join("img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let s = |n: &str| dir.join(n).into_os_string();
    vec![
        (
            env!("CARGO_BIN_EXE_vhost-user-blk"),
            vec!["--image".into(), image.into_os_string()],
        ),
        (env!("CARGO_BIN_EXE_vhost-user-rng"), vec![]),
        (
            env!("CARGO_BIN_EXE_vhost-user-console"),
            vec!["--output".into(), s("console.out")],
        ),
        (
            env!("CARGO_BIN_EXE_vhost-user-vsock"),
            vec![
                "--uds-path".into(),
                s("vsock"),
                "--guest-cid".into(),
                "3".into(),
            ],
        ),
        (
            env!("CARGO_BIN_EXE_vhost-user-net"),
            vec!["--peer".into(), s("net-b")],
        ),
    ]
}

#[test]
fn every_backend_runs_with_seccomp_and_no_new_privs() {
    let dir = TestDir::new("confined");
    let backends = every_backend(&dir);
    for (i, (exe, extra)) in backends.iter().enumerate() {
        for sandbox in ["on", "off"] {
            let sock = dir.join(&format!("s{i}-{sandbox}"));
            let mut args: Vec<&OsStr> = vec![OsStr::new("--socket-path"), sock.as_os_str()];
            args.extend(extra.iter().map(|a| a.as_os_str()));
            if sandbox == "off" {
                args.extend([OsStr::new("--sandbox"), OsStr::new("off")]);
            }
            let child = KillOnDrop::spawn_quiet(exe, &args);
            wait_for(&sock);
            let (seccomp, nnp) = if sandbox == "on" {
                wait_confined(child.pid())
            } else {
                status_fields(child.pid())
            };
            let want = if sandbox == "on" {
                ("2", "1")
            } else {
                ("0", "0")
            };
            assert_eq!(
                (seccomp.as_str(), nnp.as_str()),
                want,
                "{exe} --sandbox {sandbox}: Seccomp/NoNewPrivs"
            );
            if sandbox == "on" {
                // The signal thread narrows itself to its own list: a second filter.
                assert_eq!(
                    thread_filters(child.pid(), "signals"),
                    Some(2),
                    "{exe}: the signal thread's Seccomp_filters"
                );
            }
            drop(child);
            let _ = std::fs::remove_file(dir.join("vsock"));
            let _ = std::fs::remove_file(dir.join("net-b"));
        }
    }
}

/// `--user`: every backend switches user and group once set up (its image, tap and sockets
/// are open by then) and keeps no capability; still confined.
#[test]
fn every_backend_drops_root_with_user() {
    let uid_line = std::fs::read_to_string("/proc/self/status").unwrap();
    if !uid_line.lines().any(|l| l.starts_with("Uid:\t0\t")) {
        eprintln!("not root: --user cannot switch users; skipped");
        return;
    }
    let dir = TestDir::new("confined-user");
    let backends = every_backend(&dir);
    for (i, (exe, extra)) in backends.iter().enumerate() {
        let sock = dir.join(&format!("u{i}"));
        let mut args: Vec<&OsStr> = vec![OsStr::new("--socket-path"), sock.as_os_str()];
        args.extend(extra.iter().map(|a| a.as_os_str()));
        args.extend([OsStr::new("--user"), OsStr::new("65534:65534")]);
        let child = KillOnDrop::spawn_quiet(exe, &args);
        wait_for(&sock);
        let (seccomp, nnp) = wait_confined(child.pid());
        assert_eq!((seccomp.as_str(), nnp.as_str()), ("2", "1"), "{exe}");
        for t in std::fs::read_dir(format!("/proc/{}/task", child.pid()))
            .unwrap()
            .flatten()
        {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default()
            };
            assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{exe}");
            assert_eq!(field("Gid:"), "65534 65534 65534 65534", "{exe}");
            assert_eq!(field("Groups:"), "65534", "{exe}");
            assert_eq!(field("CapEff:"), "0000000000000000", "{exe}");
            assert_eq!(field("CapPrm:"), "0000000000000000", "{exe}");
        }
        drop(child);
        let _ = std::fs::remove_file(dir.join("vsock"));
        let _ = std::fs::remove_file(dir.join("net-b"));
    }
}

/// Runs `action` in a child confined like vhost-user-blk serving `image`; returns its exit
/// status and stderr.
fn confined_blk_child(
    image: &Path,
    read_only: bool,
    action: &str,
) -> (std::process::ExitStatus, String) {
    confined::run_child([
        ("VU_CONFINED_ACTION", action.as_ref()),
        ("VU_CONFINED_IMAGE", image.as_os_str()),
        ("VU_CONFINED_RO", if read_only { "1" } else { "0" }.as_ref()),
    ])
}

/// The child side of the policy tests (does nothing in a normal test run).
#[test]
fn confined_child() {
    let Ok(action) = std::env::var("VU_CONFINED_ACTION") else {
        return;
    };
    use clap::Parser;
    use vhost_user_devices::blk::{BlkArgs, BlkDevice, Config};
    let image = std::env::var("VU_CONFINED_IMAGE").unwrap();
    let dir = Path::new(&image).parent().unwrap().to_path_buf();
    let sock = dir.join("sock");
    let mut args = vec![
        "vhost-user-blk",
        "-s",
        sock.to_str().unwrap(),
        "--image",
        &image,
    ];
    if std::env::var("VU_CONFINED_RO").as_deref() == Ok("1") {
        args.push("--read-only");
    }
    let config = Config::try_from(&BlkArgs::parse_from(args)).unwrap();
    let device = BlkDevice::open(&config).unwrap();
    let policy = vu_daemon::confine::policy("vhost-user-blk", &[&device], &[sock]);
    vu_daemon::sandbox::confine(&policy).unwrap();
    if let Some(result) = common_attempt(&action) {
        exit_with(result);
    }
    let open = |p: &Path, write: bool| std::fs::OpenOptions::new().read(true).write(write).open(p);
    let result = match action.as_str() {
        "image-rw" => open(Path::new(&image), true).map(drop),
        "image-ro" => open(Path::new(&image), false).map(drop),
        "beside" => open(&dir.join("beside"), false).map(drop),
        "unix" => std::os::unix::net::UnixDatagram::unbound().map(drop),
        other => panic!("unknown action {other}"),
    };
    exit_with(result);
}

fn blk_dir(tag: &str) -> (TestDir, std::path::PathBuf) {
    let dir = TestDir::new(tag);
    let image = dir.join("img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    std::fs::write(dir.join("beside"), b"not the image").unwrap();
    (dir, image)
}

#[test]
fn blk_policy_allows_its_image_and_denies_other_files() {
    let (_dir, image) = blk_dir("confined-blk");
    for (action, ro, want) in [
        ("image-rw", false, DONE),
        ("image-ro", true, DONE),
        ("image-rw", true, EACCES),
        ("beside", false, EACCES),
        ("shadow", false, EACCES),
        ("unix", false, DONE),
    ] {
        let (status, stderr) = confined_blk_child(&image, ro, action);
        assert_eq!(
            status.code(),
            Some(want),
            "{action} (read-only {ro}): {stderr}"
        );
    }
}

#[test]
fn blk_policy_kills_inet_sockets_and_execve_with_sigsys_naming_the_call() {
    let (_dir, image) = blk_dir("confined-kill");
    for (action, call) in [("inet", "41 (socket)"), ("exec", "59 (execve)")] {
        let (status, stderr) = confined_blk_child(&image, false, action);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{action}: {status:?} {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "vhost-user-blk: seccomp: system call {call} is not in the allow-list"
            )),
            "{action}: {stderr}"
        );
    }
}
