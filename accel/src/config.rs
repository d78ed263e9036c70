//! The validated VM description that the command-line parser (`cli`) produces and the VMM
//! (`vmm`) consumes. Nothing in here knows about QEMU's option syntax; nothing in `vmm` parses
//! strings.

use std::path::PathBuf;

/// Everything needed to build and run one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// `-name`: used in log lines and the process title only.
    pub name: Option<String>,
    /// `-machine type=`: accepted for compatibility; the platform accel builds is the same
    /// (PC-style: PIC/IOAPIC/PIT, legacy PCI config ports, ACPI or MP tables).
    pub machine: MachineType,
    /// ACPI tables and the ACPI PM device (power button, S5); `-machine acpi=off` or
    /// `-no-acpi`: the MP table only, as before ACPI existed in accel.
    pub acpi: bool,
    /// `-cpu`: model and `+feat`/`-feat` edits applied to KVM_GET_SUPPORTED_CPUID.
    pub cpu: CpuConfig,
    /// `-smp`.
    pub smp: SmpConfig,
    /// Guest RAM: total size and the backends it is made of (at least one).
    pub memory: MemoryConfig,
    /// `-kernel`, `-initrd`, `-append`.
    pub boot: BootConfig,
    /// `-serial`: where the 8250 at 0x3f8 goes.
    pub serial: SerialConfig,
    /// `-no-reboot`: a guest reset ends the VM (exit status 0) instead of rebooting it.
    pub no_reboot: bool,
    /// `-chardev socket,...`: the sockets vhost-user devices connect to.
    pub chardevs: Vec<ChardevConfig>,
    /// `-device vhost-user-*-pci` and `-netdev vhost-user` + `-device virtio-net-pci`.
    pub devices: Vec<VhostUserDeviceConfig>,
    /// `--timing` (accel extension): report start → first vCPU entry on stderr.
    pub timing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MachineType {
    #[default]
    Pc,
    Q35,
    Microvm,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CpuConfig {
    /// Only `host` (and its alias `max`) is supported: what KVM_GET_SUPPORTED_CPUID reports.
    pub model: String,
    /// Feature flags to force on (`+feat` or `feat=on`), by QEMU/Linux flag name (e.g. "x2apic").
    pub enable: Vec<String>,
    /// Feature flags to clear (`-feat` or `feat=off`).
    pub disable: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmpConfig {
    pub cpus: u8,
    pub sockets: u8,
    pub cores: u8,
    pub threads: u8,
    pub maxcpus: u8,
}

impl Default for SmpConfig {
    fn default() -> Self {
        SmpConfig {
            cpus: 1,
            sockets: 1,
            cores: 1,
            threads: 1,
            maxcpus: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Total guest RAM in bytes (`-m`); equals the sum of `backends`.
    pub size: u64,
    /// Guest RAM is laid out from GPA 0 upward in this order (one NUMA node per backend in QEMU
    /// terms); the 32-bit PCI hole is carved out by the VMM, not here.
    pub backends: Vec<MemoryBackendConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBackendConfig {
    /// `-object memory-backend-memfd,id=`; `None` for the implicit backend made from `-m`.
    pub id: Option<String>,
    pub size: u64,
    /// `share=on`: required by vhost-user devices (accel always maps memfd MAP_SHARED, but
    /// QEMU's semantics are kept: without share=on, vhost-user devices are refused).
    pub share: bool,
    /// `hugetlb=on` (accel: refused unless supported).
    pub hugetlb: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BootConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SerialConfig {
    /// `-serial stdio` (the default with `-nographic`): output to stdout, input from stdin.
    #[default]
    Stdio,
    /// `-serial null` / `-serial none` / `-nodefaults` without `-serial`: discarded.
    Null,
    /// `-serial file:PATH`: output appended to (created/truncated) PATH, no input.
    File(PathBuf),
    /// `-serial unix:PATH,server=on,wait=off`: a listening unix socket; output goes to the
    /// connected client (dropped when none), input comes from it.
    UnixServer { path: PathBuf, wait: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChardevConfig {
    pub id: String,
    pub path: PathBuf,
    /// `reconnect=N` seconds; 0 = no reconnect.
    pub reconnect_secs: u64,
}

/// The kind of vhost-user device behind a `-device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VhostUserKind {
    Blk,
    Net,
    Vsock,
    Rng,
    Console,
    /// `vhost-user-device-pci,virtio-id=N,num_vqs=N,config_size=N`.
    Generic {
        virtio_id: u32,
        num_queues: u16,
        config_size: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostUserDeviceConfig {
    pub kind: VhostUserKind,
    /// `id=` (optional in QEMU).
    pub id: Option<String>,
    /// The `-chardev` id this device connects through (for net: via the `-netdev`).
    pub chardev: String,
    /// `num-queues=` (blk), `queues=` on the netdev ×2 (net), `num_vqs=` (generic);
    /// `None` = device default.
    pub num_queues: Option<u16>,
    /// `queue-size=`; `None` = 128 (QEMU's vhost-user-blk default).
    pub queue_size: Option<u16>,
    /// `addr=SLOT[.FN]` on bus 0; `None` = next free slot.
    pub pci_slot: Option<u8>,
    /// `mac=` for net.
    pub mac: Option<[u8; 6]>,
    /// `bootindex=`: accepted and ignored (accel boots the kernel directly).
    pub bootindex: Option<u32>,
}
