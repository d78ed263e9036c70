//! accel confines itself once the VM is built (by default, no `-sandbox` option): every thread runs
//! with no_new_privs and seccomp (`/proc/PID/task/TID/status`), each kind of thread with its
//! own second filter; `-sandbox off` leaves it unconfined; `-run-with user=` / `-runas` switch
//! to another user with no capability left. The VM is built with a vhost-user-blk device (so
//! the backend monitor and control threads exist) and started with `-S`: no guest code runs,
//! QMP drives it (the boot, crash and QMP tests run it confined through a whole boot).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{Backend, GUEST_CMDLINE, KillOnDrop, TestDir, bin, guest_file};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

/// The fields of a /proc status file.
fn status(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// Every thread of `pid`: (name, status fields).
fn threads(pid: u32) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        out.push((comm.trim().to_string(), status(&t.path().join("status"))));
    }
    out
}

struct Vm {
    accel: KillOnDrop,
    qmp: UnixStream,
    reader: BufReader<UnixStream>,
    _backend: Backend,
}

impl Vm {
    /// accel -S with a vhost-user-blk disk, a QMP socket and a pidfile, plus `extra`; returns
    /// once QMP answers (the VM is built and, unless `-sandbox off`, confined).
    fn start(dir: &TestDir, extra: &[&str]) -> Vm {
        Self::start_with(dir, extra, &guest_file("vmlinux"), &guest_file("lean.cpio"))
    }

    fn start_with(dir: &TestDir, extra: &[&str], kernel: &Path, initrd: &Path) -> Vm {
        let image = dir.join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let backend = Backend::spawn(
            "vhost-user-blk",
            &dir.join("blk.sock"),
            &["--image", image.to_str().unwrap()],
        );
        let qmp_path = dir.join("qmp.sock");
        let chardev = format!("socket,id=blk0,path={}", dir.join("blk.sock").display());
        let child = Command::new(bin("accel"))
            .args([
                "-accel", "kvm", "-cpu", "host", "-m", "128", "-smp", "2", "-S",
            ])
            .args(["-display", "none", "-nodefaults", "-serial", "none"])
            .args(["-object", "memory-backend-memfd,id=mem,size=128M,share=on"])
            .args(["-numa", "node,memdev=mem"])
            .args([
                "-chardev",
                &chardev,
                "-device",
                "vhost-user-blk-pci,chardev=blk0",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-pidfile")
            .arg(dir.join("pid"))
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", GUEST_CMDLINE])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn accel");
        let mut accel = KillOnDrop(child);
        let end = Instant::now() + DEADLINE;
        let qmp = loop {
            match UnixStream::connect(&qmp_path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < end, "no QMP socket: {e}");
                    if let Some(s) = accel.0.try_wait().unwrap() {
                        panic!("accel {extra:?} exited before QMP listened: {s}");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        qmp.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = BufReader::new(qmp.try_clone().unwrap());
        let mut vm = Vm {
            accel,
            qmp,
            reader,
            _backend: backend,
        };
        assert!(vm.read().get("QMP").is_some(), "QMP greeting");
        assert_eq!(vm.execute("qmp_capabilities"), json!({}));
        vm.wait_vcpus(!extra.contains(&"off"));
        vm
    }

    /// QMP answers as soon as its socket is bound, before accel confines itself: waits until
    /// the vCPU threads (started once confined) exist and, when `confined`, the main thread
    /// has narrowed itself (its second filter).
    fn wait_vcpus(&self, confined: bool) {
        let end = Instant::now() + DEADLINE;
        loop {
            let t = threads(self.pid());
            let vcpus = t.iter().filter(|(n, _)| n.starts_with("vcpu")).count();
            let main_done = !confined
                || t.iter()
                    .any(|(n, s)| n == "accel" && s["Seccomp_filters"] == "2");
            if vcpus == 2 && main_done {
                return;
            }
            assert!(Instant::now() < end, "accel did not start its vCPUs: {t:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.accel.0.id()
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.reader.read_line(&mut line).unwrap() > 0, "QMP closed");
        serde_json::from_str(&line).unwrap()
    }

    fn execute(&mut self, command: &str) -> Value {
        // One write: accel acts on a complete JSON object without waiting for the newline,
        // and after `quit` a second write would find the socket closed.
        let line = format!("{}\n", json!({ "execute": command }));
        self.qmp.write_all(line.as_bytes()).unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_none() {
                return v["return"].clone();
            }
        }
    }

    /// QMP `quit`; returns accel's exit code.
    fn quit(mut self) -> Option<i32> {
        assert_eq!(self.execute("quit"), json!({}));
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.accel.0.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < end, "accel did not exit after quit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Started without any -sandbox option: confinement is the default.
#[test]
fn accel_confines_every_thread_each_with_its_kind_s_filter() {
    let dir = TestDir::new("accel-confined");
    let mut vm = Vm::start(&dir, &[]);
    // The QMP thread answers under its filter, and the vCPU threads exist (parked).
    assert_eq!(vm.execute("query-status")["status"], "prelaunch");
    let p = status(Path::new(&format!("/proc/{}/status", vm.pid())));
    assert_eq!(p["Seccomp"], "2");
    assert_eq!(p["NoNewPrivs"], "1");
    let threads = threads(vm.pid());
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    for kind in ["accel", "vcpu0", "vcpu1", "qmp", "mon-", "ctl-"] {
        assert!(
            names.iter().any(|n| n.starts_with(kind)),
            "no {kind} thread in {names:?}"
        );
    }
    for (name, s) in &threads {
        assert_eq!(s["Seccomp"], "2", "{name}");
        assert_eq!(s["NoNewPrivs"], "1", "{name}");
        // The process filter, then the kind's (threads of no kind: the process's only).
        let kinded = ["accel", "vcpu", "qmp", "mon-", "ctl-", "vu-frontend"]
            .iter()
            .any(|k| name.starts_with(k));
        let want = if kinded { "2" } else { "1" };
        assert_eq!(s["Seccomp_filters"], want, "{name}");
    }
    assert_eq!(vm.quit(), Some(0));
    // Landlock leaves the right to remove the pidfile and the QMP socket.
    assert!(!dir.join("pid").exists(), "pidfile removed at exit");
    assert!(!dir.join("qmp.sock").exists(), "QMP socket removed at exit");
}

#[test]
fn sandbox_off_leaves_accel_unconfined() {
    let dir = TestDir::new("accel-unconfined");
    let vm = Vm::start(&dir, &["-sandbox", "off"]);
    for (name, s) in threads(vm.pid()) {
        assert_eq!(s["Seccomp"], "0", "{name}");
        assert_eq!(s["NoNewPrivs"], "0", "{name}");
    }
    assert_eq!(vm.quit(), Some(0));
}

#[test]
fn run_with_user_drops_root_and_every_capability() {
    if !status(Path::new("/proc/self/status"))["Uid"].starts_with("0 ") {
        eprintln!("not root: -run-with user= cannot switch users; skipped");
        return;
    }
    // The user must be able to read the kernel and initrd (loaded again on a guest reboot):
    // copies in a directory everyone may enter.
    let guest = TestDir::new("accel-user-guest");
    let mode = |p: &Path, m| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(&guest.join(""), 0o755);
    for f in ["vmlinux", "lean.cpio"] {
        std::fs::copy(guest_file(f), guest.join(f)).unwrap();
        mode(&guest.join(f), 0o644);
    }
    for spelling in [
        ["-run-with", "user=65534:65534"],
        ["-runas", "nobody"],
        // libvirt's line: both, with the sandbox options.
        [
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ],
    ] {
        let dir = TestDir::new("accel-user");
        let mut extra: Vec<&str> = spelling.to_vec();
        let libvirt = spelling[0] == "-sandbox";
        if libvirt {
            extra.extend(["-run-with", "user=nobody"]);
        }
        let mut vm = Vm::start_with(
            &dir,
            &extra,
            &guest.join("vmlinux"),
            &guest.join("lean.cpio"),
        );
        assert_eq!(vm.execute("query-status")["status"], "prelaunch");
        for (name, s) in threads(vm.pid()) {
            assert_eq!(s["Uid"], "65534 65534 65534 65534", "{spelling:?} {name}");
            assert_eq!(s["Gid"], "65534 65534 65534 65534", "{spelling:?} {name}");
            assert_eq!(s["Groups"], "65534", "{spelling:?} {name}");
            assert_eq!(s["CapEff"], "0000000000000000", "{spelling:?} {name}");
            assert_eq!(s["CapPrm"], "0000000000000000", "{spelling:?} {name}");
            assert_eq!(s["Seccomp"], "2", "{spelling:?} {name}");
        }
        assert_eq!(vm.quit(), Some(0), "{spelling:?}");
    }
}
