//! Helpers shared by the integration tests: locating the workspace's binaries and the test
//! guest, running VMs and backends with a deadline, and collecting what they printed.
//!
//! The generic process helpers (scratch directories, children killed on drop, running with a
//! deadline) come from [`vu_testkit::support`]; what is here knows about VMs and the guest.
//!
//! [`bin`] builds accel and the backends (once per test process, for this test's profile) before
//! handing out a path, so a test never runs a stale binary. The guest comes from
//! `$ACCEL_GUEST_DIR`, `../shared/guest` next to the checkout, or the cache `scripts/guest.sh`
//! builds into.

mod backend;
mod qmp_client;
mod streaming;
mod tap;
mod vm;

pub use backend::{BACKEND_SOCKET_TIMEOUT, Backend, md5_hex, xorshift_bytes};
pub use qmp_client::QmpClient;
pub use streaming::Streaming;
pub use tap::{Tap, byte_sink};
pub use vm::VmCommand;
pub use vu_testkit::support::{
    KillOnDrop, ProcStat, RunOutput, Running, TestDir, children_of, proc_stat, run_with_timeout,
    spawn_until, wait_for_path, wait_gone, wait_with_timeout,
};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Kernel command-line options every test guest gets: what this machine's `kvm_pvm` needs
/// (harmless under TCG and on real KVM), see ../shared/guest/README.md.
pub const GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=k quiet noreplace-smp noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm";

/// Deadline for one KVM boot of the test guest on this (emulating) host, idle (about 75 s).
/// With both cores busy (two test lanes, or testpmd polling) a boot takes up to 2.5 min, so a
/// whole guest run (boot, command, shutdown) gets `4 *` this.
pub const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The packages whose binaries the tests run.
const BIN_PACKAGES: [&str; 2] = ["accel", "vhost-user-devices"];

/// Path of a workspace binary (`accel`, `vhost-user-blk`, ...), built first: see
/// [`vu_testkit::support::workspace_bin`] (the first call builds accel and the backends for
/// this test's profile, so a test never runs a stale binary).
pub fn bin(name: &str) -> PathBuf {
    vu_testkit::support::workspace_bin(&BIN_PACKAGES, name)
}

/// The test guest directory (vmlinux, bzImage, initramfs.cpio, lean.cpio).
///
/// `$ACCEL_GUEST_DIR` is used as given (scripts/test.sh sets it from scripts/guest.sh, which
/// checked it; a developer pointing it at a hand-built guest gets that guest). Without it,
/// `scripts/guest.sh --find` chooses with the same rule as the scripts: `../shared/guest` or
/// the cache, only if its `recipe.sha256` stamp matches this checkout's `scripts/guest/`, so a
/// guest from an older recipe (e.g. without ACPI) is never picked up silently.
pub fn guest_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("ACCEL_GUEST_DIR") {
            let d = PathBuf::from(d);
            return d.canonicalize().unwrap_or(d);
        }
        let script = workspace_root().join("scripts/guest.sh");
        let out = Command::new(&script)
            .arg("--find")
            .output()
            .unwrap_or_else(|e| panic!("running {} --find: {e}", script.display()));
        assert!(
            out.status.success(),
            "no test guest built from this checkout's recipe: run scripts/guest.sh (builds one, \
             about 5 minutes) or set ACCEL_GUEST_DIR\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A guest file (`vmlinux`, `bzImage`, `lean.cpio`, `initramfs.cpio`).
pub fn guest_file(name: &str) -> PathBuf {
    guest_dir().join(name)
}

/// The QEMU binary for interop tests. Panics with the fix if it is missing.
pub fn qemu() -> PathBuf {
    let p = PathBuf::from(std::env::var_os("QEMU").unwrap_or_else(|| "qemu-system-x86_64".into()));
    let found = if p.is_absolute() {
        p.exists()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(&p).exists()))
            .unwrap_or(false)
    };
    assert!(
        found,
        "{} not found: apt-get install qemu-system-x86",
        p.display()
    );
    p
}

/// What the test guest's /init reports, read from a VM's output.
pub trait GuestOutput {
    /// The value after `GUEST CMD RC: ` the guest's /init printed, if any.
    fn guest_rc(&self) -> Option<i32>;
}

impl GuestOutput for RunOutput {
    fn guest_rc(&self) -> Option<i32> {
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("GUEST CMD RC: "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// `base` (a guest cpio) followed by an archive with the static test tools of
/// `scripts/guest-tools` (`/bin/vsock-tool`, `/bin/smp-stress`), built into `dir`.
pub fn guest_tools_initrd(dir: &Path, base: &Path) -> PathBuf {
    let out = dir.join("guest-tools");
    let status = Command::new(workspace_root().join("scripts/guest-tools/build.sh"))
        .arg(&out)
        .arg(base)
        .status()
        .expect("run scripts/guest-tools/build.sh");
    assert!(
        status.success(),
        "building the guest tools failed: needs gcc, static glibc and python3 (apt-get install gcc libc6-dev python3)"
    );
    out.join("initrd.cpio")
}

/// The `-append` value for a test guest that runs `gcmd` (empty: just boot and reset).
pub fn guest_append(gcmd: &str) -> String {
    if gcmd.is_empty() {
        GUEST_CMDLINE.to_string()
    } else {
        format!("{GUEST_CMDLINE} gcmd=\"{gcmd}\"")
    }
}
