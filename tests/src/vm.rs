//! The command line of a test VM, the same for QEMU and accel: a pc machine whose RAM is a
//! shared memfd (vhost-user backends map it), a serial console on stdio, vhost-user devices on
//! socket chardevs, and the test guest running `gcmd`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{RunOutput, bin, guest_append, guest_file, qemu, run_with_timeout};

/// Builder of a VM's argument list.
#[derive(Clone, Debug)]
pub struct VmCommand {
    accel: Option<String>,
    machine: String,
    vmm_args: Vec<String>,
    mem_mib: u32,
    smp: String,
    no_reboot: bool,
    devices: Vec<String>,
    initrd: PathBuf,
    gcmd: String,
    kernel_args: Vec<String>,
}

impl Default for VmCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl VmCommand {
    /// 128 MiB, one vCPU, `-no-reboot`, the lean initrd, no guest command.
    pub fn new() -> Self {
        VmCommand {
            accel: None,
            machine: "pc".into(),
            vmm_args: Vec::new(),
            mem_mib: 128,
            smp: "1".into(),
            no_reboot: true,
            devices: Vec::new(),
            initrd: guest_file("lean.cpio"),
            gcmd: String::new(),
            kernel_args: Vec::new(),
        }
    }

    /// `-accel NAME` first on the line (`tcg`, `kvm`; none: the VMM's default).
    pub fn accel(mut self, name: &str) -> Self {
        self.accel = Some(name.into());
        self
    }

    /// `-machine NAME` (default `pc`).
    pub fn machine(mut self, name: &str) -> Self {
        self.machine = name.into();
        self
    }

    /// An option only one VMM knows (accel's `--timing`), right after `-accel`.
    pub fn vmm_arg(mut self, arg: &str) -> Self {
        self.vmm_args.push(arg.into());
        self
    }

    /// Guest RAM in MiB (`-m` and the memfd's size).
    pub fn mem(mut self, mib: u32) -> Self {
        self.mem_mib = mib;
        self
    }

    /// The `-smp` value.
    pub fn smp(mut self, smp: &str) -> Self {
        self.smp = smp.into();
        self
    }

    /// Whether a guest reset ends the VM (`-no-reboot`, the default) or reboots it.
    pub fn no_reboot(mut self, on: bool) -> Self {
        self.no_reboot = on;
        self
    }

    /// `-chardev socket,id=ID,path=PATH`.
    pub fn chardev(self, id: &str, path: &Path) -> Self {
        self.chardev_opts(id, path, "")
    }

    /// `-chardev socket,id=ID,path=PATH<extra>` (`extra`: `,reconnect=1`, ...).
    pub fn chardev_opts(self, id: &str, path: &Path, extra: &str) -> Self {
        let value = format!("socket,id={id},path={}{extra}", path.display());
        self.arg("-chardev", &value)
    }

    /// `-device SPEC`.
    pub fn device(self, spec: &str) -> Self {
        self.arg("-device", spec)
    }

    /// Any other option with its value (`-netdev ...`), after the devices added so far.
    pub fn arg(mut self, option: &str, value: &str) -> Self {
        self.devices.push(option.into());
        self.devices.push(value.into());
        self
    }

    /// The initrd (default: the guest's lean.cpio).
    pub fn initrd(mut self, path: &Path) -> Self {
        self.initrd = path.to_path_buf();
        self
    }

    /// The command the guest's /init runs (see [`guest_append`]).
    pub fn gcmd(mut self, gcmd: &str) -> Self {
        self.gcmd = gcmd.into();
        self
    }

    /// One more guest kernel parameter (after the test guest's own).
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.kernel_args.push(arg.into());
        self
    }

    /// The argument list.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if let Some(accel) = &self.accel {
            a.extend(["-accel".into(), accel.clone()]);
        }
        a.extend(self.vmm_args.iter().cloned());
        let mem = self.mem_mib.to_string();
        let memfd = format!("memory-backend-memfd,id=mem,size={mem}M,share=on");
        let common = [
            "-machine",
            &self.machine,
            "-m",
            &mem,
            "-smp",
            &self.smp,
            "-display",
            "none",
            "-nodefaults",
            "-serial",
            "stdio",
        ];
        a.extend(common.iter().map(|s| s.to_string()));
        if self.no_reboot {
            a.push("-no-reboot".into());
        }
        let memory = ["-object", &memfd, "-numa", "node,memdev=mem"];
        a.extend(memory.iter().map(|s| s.to_string()));
        a.extend(self.devices.iter().cloned());
        a.extend([
            "-kernel".into(),
            guest_file("vmlinux").display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            std::iter::once(guest_append(&self.gcmd))
                .chain(self.kernel_args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
        ]);
        a
    }

    /// Runs `program` with these arguments, killed after `timeout`; asserts it finished.
    pub fn run(&self, program: &Path, timeout: Duration) -> RunOutput {
        let out = run_with_timeout(Command::new(program).args(self.args()), timeout);
        let name = program.file_name().unwrap_or_default().to_string_lossy();
        assert!(out.status.is_some(), "{name} timed out\n{}", out.both());
        out
    }

    /// [`run`](Self::run) under QEMU (`qemu-system-x86_64`).
    pub fn run_qemu(&self, timeout: Duration) -> RunOutput {
        self.run(&qemu(), timeout)
    }

    /// [`run`](Self::run) under accel.
    pub fn run_accel(&self, timeout: Duration) -> RunOutput {
        self.run(&bin("accel"), timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_list_has_the_shared_memory_devices_and_guest() {
        let sock = Path::new("/tmp/x.sock");
        let a = VmCommand::new()
            .accel("tcg")
            .mem(256)
            .smp("2,sockets=2")
            .chardev("c0", sock)
            .device("vhost-user-rng-pci,chardev=c0")
            .gcmd("true")
            .args();
        let s = a.join(" ");
        assert!(
            s.starts_with("-accel tcg -machine pc -m 256 -smp 2,sockets=2 "),
            "{s}"
        );
        assert!(
            s.contains(
                "-no-reboot -object memory-backend-memfd,id=mem,size=256M,share=on \
                 -numa node,memdev=mem -chardev socket,id=c0,path=/tmp/x.sock \
                 -device vhost-user-rng-pci,chardev=c0 -kernel "
            ),
            "{s}"
        );
        assert_eq!(
            a.last().map(String::as_str),
            Some(guest_append("true").as_str())
        );
        let no = VmCommand::new().no_reboot(false).args();
        assert!(!no.iter().any(|x| x == "-no-reboot"));
    }
}
