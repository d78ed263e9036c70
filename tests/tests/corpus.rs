//! Real QEMU command lines (tests/corpus/*.args, each naming its source) run under accel and
//! under QEMU 7.2.
//!
//! Each file's header says what to expect:
//! - `# expect: devices NAME...`: accel and QEMU both start the line with `-S -qmp ...` (no guest
//!   runs), `query-pci` lists the same virtio devices under both, and they are NAME... (blk,
//!   net, rng, vsock, console). The backends the line needs (`# backend:` lines: this project's
//!   vhost-user-* binaries, or `qsd` for qemu-storage-daemon) are started by the test.
//! - `# expect: error A|B`: accel refuses the line with an error naming A (or B: an option
//!   another part of the project may start accepting). QEMU is not run.
//! - `# boot: yes` (one line): also booted for real under each VMM; the guest lists its virtio
//!   device ids and both lists must match.
//!
//! Placeholders: `@DIR@` (this run's scratch directory), `@KERNEL@`, `@BOOT@` (`-kernel -initrd
//! -append` of the test guest). QEMU runs under TCG (`accel=kvm` -> `tcg`, `-cpu host` -> `max`):
//! with `-S` no guest code runs, and this host's QEMU needs extra CPU flags with KVM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    Backend, KVM_BOOT_TIMEOUT, KillOnDrop, QmpClient, TestDir, bin, guest_append, guest_file, qemu,
    run_with_timeout, wait_for_path, workspace_root,
};
use serde_json::Value;

/// One corpus file.
struct Line {
    name: String,
    backends: Vec<Vec<String>>,
    expect: Expect,
    boot: bool,
    /// Shell words, placeholders not yet substituted.
    words: Vec<String>,
}

enum Expect {
    Devices(Vec<String>),
    Error(Vec<String>),
}

/// Splits `text` into words as a POSIX shell would for these lines: whitespace separates,
/// '...' and "..." quote (no escapes needed), the quotes themselves are dropped.
fn shell_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut any = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn load(path: &Path) -> Line {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let (mut backends, mut expect, mut boot, mut source) = (Vec::new(), None, false, false);
    let mut body = String::new();
    for l in text.lines() {
        let Some(h) = l.strip_prefix('#') else {
            body.push_str(l);
            body.push('\n');
            continue;
        };
        let h = h.trim();
        if let Some(v) = h.strip_prefix("backend:") {
            backends.push(shell_words(v));
        } else if let Some(v) = h.strip_prefix("expect:") {
            let v = v.trim();
            expect = Some(if let Some(d) = v.strip_prefix("devices") {
                Expect::Devices(d.split_whitespace().map(String::from).collect())
            } else if let Some(e) = v.strip_prefix("error") {
                Expect::Error(e.trim().split('|').map(String::from).collect())
            } else {
                panic!("{name}: bad expect line {v}")
            });
        } else if h.starts_with("boot: yes") {
            boot = true;
        } else if h.starts_with("source:") {
            source = h.contains("http");
        }
    }
    assert!(source, "{name}: every corpus line names its source URL");
    Line {
        name,
        backends,
        expect: expect.unwrap_or_else(|| panic!("{}: no expect line", path.display())),
        boot,
        words: shell_words(&body),
    }
}

fn corpus() -> Vec<Line> {
    let dir = workspace_root().join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "args"))
        .collect();
    files.sort();
    files.iter().map(|p| load(p)).collect()
}

/// The line's argv for one run: placeholders substituted, `@BOOT@` as `boot`.
fn argv(line: &Line, dir: &Path, boot: &[String]) -> Vec<String> {
    let d = dir.to_str().unwrap();
    let mut out = Vec::new();
    for w in &line.words {
        if w == "@BOOT@" {
            out.extend(boot.iter().cloned());
        } else {
            out.push(
                w.replace("@DIR@", d)
                    .replace("@KERNEL@", guest_file("vmlinux").to_str().unwrap()),
            );
        }
    }
    out
}

fn boot_args(gcmd: &str) -> Vec<String> {
    vec![
        "-kernel".into(),
        guest_file("vmlinux").display().to_string(),
        "-initrd".into(),
        guest_file("lean.cpio").display().to_string(),
        "-append".into(),
        guest_append(gcmd),
    ]
}

/// The QEMU side: TCG instead of KVM (see the module docs), and a headless display.
fn for_qemu(args: &[String], extra: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter().peekable();
    let mut accel_given = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "-enable-kvm" | "--enable-kvm" => {}
            "-accel" | "--accel" => {
                it.next();
            }
            "-cpu" => {
                it.next();
                out.extend(["-cpu".to_string(), "max".to_string()]);
            }
            "-machine" | "-M" => {
                let v = it.next().cloned().unwrap_or_default();
                accel_given |= v.contains("accel=");
                out.extend([a.clone(), v.replace("accel=kvm", "accel=tcg")]);
            }
            _ => out.push(a.clone()),
        }
    }
    if !accel_given {
        out.extend(["-accel".to_string(), "tcg".to_string()]);
    }
    let has = |o: &str| args.iter().any(|a| a == o);
    if !has("-display") && !has("-nographic") {
        extra.extend(["-display".to_string(), "none".to_string()]);
    }
    out
}

/// Starts what the line's `# backend:` lines ask for.
fn start_backends(line: &Line, dir: &Path) -> (Vec<Backend>, Vec<KillOnDrop>) {
    let d = dir.to_str().unwrap();
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let mut ours = Vec::new();
    let mut others = Vec::new();
    for spec in &line.backends {
        let spec: Vec<String> = spec.iter().map(|w| w.replace("@DIR@", d)).collect();
        let socket = dir.join(&spec[1]);
        if spec[0] == "qsd" {
            let child = Command::new("qemu-storage-daemon")
                .arg("--blockdev")
                .arg(format!(
                    "file,filename={},node-name=d0,cache.direct=off",
                    image.display()
                ))
                .arg("--export")
                .arg(format!(
                    "vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on",
                    socket.display()
                ))
                .stdin(Stdio::null())
                .spawn()
                .expect("qemu-storage-daemon (apt-get install qemu-system-x86)");
            others.push(KillOnDrop(child));
            assert!(
                wait_for_path(&socket, Duration::from_secs(30)),
                "qsd socket"
            );
        } else {
            ours.push(Backend::spawn(&spec[0], &socket, &spec[2..]));
        }
    }
    (ours, others)
}

/// The virtio device kinds `query-pci` lists, sorted.
fn virtio_kinds(reply: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for bus in reply["return"].as_array().into_iter().flatten() {
        for dev in bus["devices"].as_array().into_iter().flatten() {
            let id = &dev["id"];
            if id["vendor"].as_u64() != Some(0x1af4) {
                continue;
            }
            let device = id["device"].as_u64().unwrap_or(0);
            // Modern ids are 0x1040 + virtio id; transitional ones carry it as subsystem id.
            let vid = if device >= 0x1040 {
                device - 0x1040
            } else {
                id["subsystem"].as_u64().unwrap_or(0)
            };
            out.push(kind_name(vid));
        }
    }
    out.sort();
    out
}

fn kind_name(virtio_id: u64) -> String {
    match virtio_id {
        1 => "net".into(),
        2 => "blk".into(),
        3 => "console".into(),
        4 => "rng".into(),
        19 => "vsock".into(),
        n => format!("virtio-{n}"),
    }
}

/// Runs `program args -S -qmp ...`, returns the virtio devices it shows, then quits it.
fn devices_under(program: &Path, args: &[String], dir: &Path, ctx: &str) -> Vec<String> {
    let sock = dir.join(format!(
        "qmp-{}.sock",
        program.file_name().unwrap().to_string_lossy()
    ));
    let log = dir.join(format!(
        "{}.log",
        program.file_name().unwrap().to_string_lossy()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(program)
        .args(args)
        .arg("-S")
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let ctx = format!("{ctx}\n{} {}", program.display(), args.join(" "));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let kinds = {
        let mut q = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            QmpClient::connect(&sock, &mut child, &ctx)
        }))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("{ctx}\n--- log ---\n{}", log_text())
        });
        // A VMM that dies or drops the monitor mid-way: show its log, not only the broken pipe
        // (CI saw EPIPE on `quit`: the client wrote the newline after the object in a second
        // write, after the VMM had already quit; `QmpClient::call` now writes once).
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let kinds = virtio_kinds(&q.call("query-pci"));
            q.call("quit");
            kinds
        }))
        .unwrap_or_else(|_| {
            let status = child.try_wait().ok().flatten();
            let _ = child.kill();
            panic!("{ctx}\nexit status {status:?}\n--- log ---\n{}", log_text())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{ctx}: did not exit after quit\n{}", log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kinds
}

#[test]
fn corpus_lines_run_like_under_qemu_or_fail_naming_an_unsupported_option() {
    let lines = corpus();
    assert!(lines.len() >= 15, "the corpus has {} lines", lines.len());
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let mut failures = Vec::new();
    for line in &lines {
        let tdir = TestDir::new("corpus");
        let dir = tdir.path();
        match &line.expect {
            Expect::Error(names) => {
                let args = argv(line, dir, &boot_args(""));
                let out = run_with_timeout(
                    Command::new(bin("accel")).args(&args),
                    Duration::from_secs(60),
                );
                let named = names.iter().any(|n| out.stderr.contains(n.as_str()));
                let documented = names.iter().any(|n| readme.contains(&format!("`{n}")));
                if out.code() != Some(1) || !named || !documented {
                    failures.push(format!(
                        "{}: expected an error naming one of {names:?} (listed in the README: \
                         {documented}), got status {:?}\n{}",
                        line.name,
                        out.code(),
                        out.stderr
                    ));
                }
            }
            Expect::Devices(expected) => {
                let _backends = start_backends(line, dir);
                let args = argv(line, dir, &boot_args(""));
                let accel = devices_under(&bin("accel"), &args, dir, &line.name);
                let mut extra = Vec::new();
                let mut qargs = for_qemu(&args, &mut extra);
                qargs.extend(extra);
                let q = devices_under(&qemu(), &qargs, dir, &line.name);
                let mut want = expected.clone();
                want.sort();
                if accel != q || accel != want {
                    failures.push(format!(
                        "{}: virtio devices: accel {accel:?}, QEMU {q:?}, expected {want:?}",
                        line.name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The guest's virtio device ids (`/sys/bus/virtio/devices/*/device`), sorted.
fn guest_virtio_ids(stdout: &str) -> Vec<String> {
    let mut ids: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.len() == 6 && l.starts_with("0x"))
        .map(String::from)
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_boot_line_boots_with_the_same_devices_under_both() {
    let lines = corpus();
    let boots: Vec<&Line> = lines.iter().filter(|l| l.boot).collect();
    assert_eq!(boots.len(), 1, "one corpus line is booted");
    let line = boots[0];
    let Expect::Devices(expected) = &line.expect else {
        panic!("the boot line must expect devices")
    };
    let boot = boot_args("cat /sys/bus/virtio/devices/*/device");
    let mut seen = Vec::new();
    for vmm in ["accel", "qemu"] {
        let tdir = TestDir::new("corpus-boot");
        let dir = tdir.path();
        let _backends = start_backends(line, dir);
        let mut args = argv(line, dir, &boot);
        let has = |o: &str| args.iter().any(|a| a == o);
        let mut extra = vec!["-no-reboot".to_string()];
        if !has("-serial") && !has("-nographic") {
            extra.extend(["-serial".to_string(), "stdio".to_string()]);
        }
        let program = if vmm == "accel" {
            bin("accel")
        } else {
            args = for_qemu(&args, &mut extra);
            qemu()
        };
        let out = run_with_timeout(
            Command::new(&program).args(&args).args(&extra),
            KVM_BOOT_TIMEOUT * 4,
        );
        assert_eq!(out.code(), Some(0), "{vmm} {}\n{}", line.name, out.both());
        let ids = guest_virtio_ids(&out.stdout);
        assert_eq!(ids.len(), expected.len(), "{vmm}: {}", out.both());
        seen.push(ids);
    }
    assert_eq!(
        seen[0], seen[1],
        "guest-visible virtio devices: accel vs QEMU"
    );
}
