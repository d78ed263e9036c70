//! The process and platform options QEMU lines carry, shown having their effect in one accel
//! boot (a boot costs 15-60 s here, so they share it):
//!
//! - `-chardev file` + `-serial chardev:ID`: the guest's console lands in the file, not stdout.
//! - `-device isa-debugcon,iobase=0x402,chardev=ID`: bytes the guest writes to port 0x402
//!   land in that chardev's file.
//! - `-device isa-debug-exit,iobase=0xf4,iosize=4`: the guest writes 0x10 and accel exits with
//!   QEMU's status `(0x10 << 1) | 1 = 33`.
//! - `-rtc base=localtime` with the host zone at UTC+14 (`TZ=XYZ-14`): the CMOS hour register
//!   the guest reads is the host's UTC hour + 14.
//! - `-msg timestamp=on`: accel's log lines start with an RFC 3339 timestamp.
//! - `-global kvm-pit.lost_tick_policy=discard`: KVM accepted KVM_REINJECT_CONTROL (logged).
//! - `-smp 1,maxcpus=2`: one vCPU runs (no CPU hotplug).
//!
//! The rest of the line (`-no-user-config -overcommit mem-lock=off -boot strict=on -vga none
//! -machine ...,kernel_irqchip=on,usb=off,dump-guest-core=off -cpu host,pmu=off,migratable=on
//! -m 128M,slots=2,maxmem=1G -echr 0x14`) has no guest-visible effect beyond booting.

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::{
    GUEST_CMDLINE, KVM_BOOT_TIMEOUT, QmpClient, TestDir, bin, children_of, guest_append,
    guest_file, run_with_timeout, wait_gone,
};

fn utc_hour() -> u64 {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    s / 3600 % 24
}

/// The byte on the first `hexdump -C` line after `marker` in `text`.
fn hexdump_byte_after(text: &str, marker: &str) -> Option<u8> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let line = rest.lines().find(|l| l.starts_with("00000000"))?;
    u8::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

fn from_bcd(b: u8) -> u64 {
    u64::from(b >> 4) * 10 + u64::from(b & 0xf)
}

#[test]
fn platform_options_have_their_effect_in_one_boot() {
    let dir = TestDir::new("cmdline-options");
    let serial = dir.join("serial.log");
    let debugcon = dir.join("debugcon.log");
    // Port numbers in decimal for dd: 0x402 = 1026, CMOS 0x70/0x71 = 112/113, 0xf4 = 244.
    let gcmd = "for c in d b g o k; do printf $c | dd of=/dev/port bs=1 seek=1026 count=1 \
                2>/dev/null; done; printf '\\x04' | dd of=/dev/port bs=1 seek=112 count=1 \
                2>/dev/null; echo RTC-HOUR; dd if=/dev/port bs=1 skip=113 count=1 2>/dev/null \
                | hexdump -C; printf '\\x10' | dd of=/dev/port bs=1 seek=244 count=1; \
                echo after-exit";
    let before = utc_hour();
    let mut cmd = Command::new(bin("accel"));
    cmd.env("TZ", "XYZ-14")
        .env("RUST_LOG", "info")
        .args([
            "-no-user-config",
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
        ])
        .args([
            "-machine",
            "pc,accel=kvm,kernel_irqchip=on,usb=off,dump-guest-core=off",
        ])
        .args(["-cpu", "host,pmu=off,migratable=on", "-smp", "1,maxcpus=2"])
        .args([
            "-m",
            "128M,slots=2,maxmem=1G",
            "-overcommit",
            "mem-lock=off",
        ])
        .args([
            "-boot",
            "strict=on",
            "-echr",
            "0x14",
            "-msg",
            "timestamp=on",
        ])
        .args(["-rtc", "base=localtime,clock=host,driftfix=slew"])
        .args(["-global", "kvm-pit.lost_tick_policy=discard"])
        .arg("-chardev")
        .arg(format!("file,id=ser,path={}", serial.display()))
        .args(["-serial", "chardev:ser"])
        .arg("-chardev")
        .arg(format!("file,id=dbg,path={}", debugcon.display()))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-kernel")
        .arg(guest_file("vmlinux"))
        .arg("-initrd")
        .arg(guest_file("lean.cpio"))
        .args(["-append", &guest_append(gcmd)]);
    let out = run_with_timeout(&mut cmd, KVM_BOOT_TIMEOUT * 4 + Duration::from_secs(60));
    let after = utc_hour();
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    let ctx = format!("{}\n--- serial.log ---\n{console}", out.both());

    assert_eq!(out.code(), Some(33), "isa-debug-exit status\n{ctx}");
    assert!(console.contains("GUEST UP"), "{ctx}");
    assert!(console.contains(" 1 cpu(s)"), "-smp 1,maxcpus=2\n{ctx}");
    // The command is echoed on the GUEST CMD line; only a line of its own is output.
    assert!(
        !console.lines().any(|l| l.trim() == "after-exit"),
        "the exit write ends the VM\n{ctx}"
    );
    assert!(
        !out.stdout.contains("GUEST UP"),
        "console went to stdout\n{ctx}"
    );
    assert_eq!(
        std::fs::read_to_string(&debugcon).unwrap_or_default(),
        "dbgok",
        "{ctx}"
    );
    // Status B is 24-hour BCD by default.
    let hour = hexdump_byte_after(&console, "RTC-HOUR").map(from_bcd);
    let expect = [(before + 14) % 24, (after + 14) % 24];
    assert!(
        hour.is_some_and(|h| expect.contains(&h)),
        "CMOS hour {hour:?}, expected one of {expect:?}\n{ctx}"
    );
    let log_line = out
        .stderr
        .lines()
        .find(|l| l.contains("KVM_REINJECT_CONTROL"))
        .unwrap_or_else(|| panic!("no kvm-pit line\n{ctx}"));
    // "2026-11-30T08:00:00.123456Z accel: INFO: kvm-pit: ..."
    let stamp = log_line.split(' ').next().unwrap_or_default();
    assert!(
        stamp.len() == 27 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "-msg timestamp=on: {log_line}"
    );
}

/// libvirt's capability probe: `-machine none` with a QMP socket and no kernel. accel starts
/// no guest, answers queries, refuses guest commands, and exits 0 on `quit`.
#[test]
fn machine_none_answers_a_capability_probe_and_quits() {
    let dir = TestDir::new("machine-none");
    let sock = dir.join("qmp.sock");
    let mut child = Command::new(bin("accel"))
        .args(["-S", "-no-user-config", "-nodefaults", "-nographic"])
        .args(["-machine", "none,accel=kvm:tcg", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut q = QmpClient::connect(&sock, &mut child, "accel -machine none");
    let version = q.call("query-version");
    assert_eq!(version["return"]["qemu"]["major"], 7, "{version}");
    let kvm = q.call("query-kvm");
    assert_eq!(kvm["return"]["enabled"], true, "{kvm}");
    let commands = q.call("query-commands");
    let names: Vec<&str> = commands["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"quit") && names.contains(&"query-kvm"),
        "{commands}"
    );
    let cpus = q.call("query-cpus-fast");
    assert_eq!(cpus["return"].as_array().map(Vec::len), Some(0), "{cpus}");
    let cont = q.call("cont");
    assert!(
        cont["error"]["desc"]
            .as_str()
            .unwrap_or_default()
            .contains("no guest"),
        "{cont}"
    );
    assert!(q.call("quit").get("return").is_some());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "accel did not exit on quit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// `-daemonize` with a device accel serves through a backend it starts (QEMU's `rng-builtin`):
/// the command returns 0 once the VM is built and its monitor listens, and the caller's
/// stdout/stderr pipes end then, although the daemon, its backend launcher and the backend run
/// on (none of them keeps the caller's pipes, as with QEMU: a script reading the output to its
/// end is not held up). `quit` over QMP then ends all three. `-S`: no guest code needs to run.
#[test]
fn daemonize_returns_and_lets_go_of_the_callers_output() {
    let dir = TestDir::new("daemonize");
    let sock = dir.join("qmp.sock");
    let pidfile = dir.join("accel.pid");
    let mut cmd = Command::new(bin("accel"));
    cmd.args(["-accel", "kvm", "-m", "128", "-S", "-daemonize"])
        .args(["-display", "none", "-nodefaults", "-serial", "null"])
        .arg("-kernel")
        .arg(guest_file("vmlinux"))
        .arg("-initrd")
        .arg(guest_file("lean.cpio"))
        .args(["-append", GUEST_CMDLINE])
        .args([
            "-object",
            "rng-builtin,id=r0",
            "-device",
            "virtio-rng-pci,rng=r0",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .arg("-pidfile")
        .arg(&pidfile)
        .env("RUST_LOG", "info");
    // run_with_timeout returns once the parent exited AND both pipes reached end-of-file.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(run_with_timeout(&mut cmd, KVM_BOOT_TIMEOUT)));
    let out = rx.recv_timeout(KVM_BOOT_TIMEOUT + Duration::from_secs(60));
    let daemon: Option<u32> = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let Ok(out) = out else {
        if let Some(pid) = daemon {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        panic!("the caller's pipes stayed open while the daemon ran");
    };
    assert_eq!(out.code(), Some(0), "{}", out.both());
    let daemon = daemon.unwrap_or_else(|| panic!("no pidfile\n{}", out.both()));
    let launcher: Vec<u32> = children_of(daemon)
        .into_iter()
        .filter(|(_, comm)| comm == "accel-launcher")
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(launcher.len(), 1, "the daemon's launcher");
    let backends = children_of(launcher[0]);
    assert!(
        backends.iter().any(|(_, comm)| comm == "vhost-user-rng"),
        "the launcher's children: {backends:?}"
    );
    let mut q = QmpClient::connect_listening(&sock, "accel -daemonize");
    let status = q.call("query-status");
    assert_eq!(status["return"]["status"], "prelaunch", "{status}");
    assert!(q.call("quit").get("return").is_some());
    assert!(
        wait_gone(daemon, Duration::from_secs(30)),
        "the daemon ran on after quit"
    );
    for (pid, comm) in backends.iter().chain([&(launcher[0], String::new())]) {
        assert!(
            wait_gone(*pid, Duration::from_secs(10)),
            "{pid} {comm} outlived the daemon"
        );
    }
}
