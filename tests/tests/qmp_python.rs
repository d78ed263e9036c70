//! The tools that drive QEMU drive accel: tests/qmp/qmp_lifecycle.py, written on Python's
//! `qemu.qmp` (the library behind qmp-shell and QEMU's own test harness), runs the same VM
//! lives against QEMU 7.2 (TCG) and against accel (KVM) with the same expectations: -S and
//! prelaunch, query-cpus-fast thread ids, cont/stop/RESUME/STOP with the guest clock going
//! on, system_reset and a second boot, system_powerdown through the ACPI power button,
//! guest poweroff with -no-shutdown then quit, malformed JSON, and a pvpanic panic. The
//! script's PASS lines are the assertions' summary; any failed expectation is a traceback
//! and a non-zero exit.

use std::process::Command;
use std::time::Duration;

use integration_tests::{bin, guest_dir, qemu, run_with_timeout};

/// Three VMs (four boots) under accel on this emulating host, or under TCG.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(1800);

fn run_script(vmm: &str) {
    let script = integration_tests::workspace_root().join("tests/qmp/qmp_lifecycle.py");
    let have = Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .expect("python3");
    assert!(
        have.success(),
        "Python's qemu.qmp is missing: python3 -m pip install qemu.qmp (.ci/run installs it)"
    );
    let out = run_with_timeout(
        Command::new("python3")
            .arg(&script)
            .arg(vmm)
            .arg(guest_dir())
            .env("ACCEL", bin("accel"))
            .env("PATH", path_with_qemu()),
        SCRIPT_DEADLINE,
    );
    let stdout = out.stdout.clone();
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{vmm}: qmp_lifecycle.py failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    for scenario in ["life", "poweroff", "panic"] {
        assert!(
            stdout.contains(&format!("{vmm}: {scenario}: PASS")),
            "{vmm}: no PASS for {scenario}:\n{stdout}"
        );
    }
}

/// PATH with the directory of the QEMU the tests use first (the script runs
/// `qemu-system-x86_64`).
fn path_with_qemu() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    match qemu().parent().filter(|d| d.is_absolute()) {
        Some(dir) => format!("{}:{path}", dir.display()),
        None => path,
    }
}

/// One test: the VMs run one at a time.
#[test]
fn qemu_qmp_drives_qemu_and_accel_alike() {
    run_script("qemu");
    run_script("accel");
}
