//! The validated VM description that the command-line parser (`cli`) produces and the VMM
//! (`vmm`) consumes. Nothing in here knows about QEMU's option syntax; nothing in `vmm` parses
//! strings.

use std::path::PathBuf;

use vu_spec::devices::DeviceSpec;

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
    /// `-netdev vhost-user` (their devices already name the chardev; kept for `netdev_del`).
    pub netdevs: Vec<NetdevConfig>,
    /// `-device vhost-user-*-pci` and `-netdev vhost-user` + `-device virtio-net-pci`.
    pub devices: Vec<VhostUserDeviceConfig>,
    /// `-device pcie-root-port|pci-bridge|pcie-pci-bridge`, in command-line order (a bridge's
    /// `bus=` names an earlier one).
    pub pci_bridges: Vec<PciBridgeConfig>,
    /// Backends accel starts itself for QEMU's built-in spellings (`-drive`, `-blockdev`,
    /// `-netdev tap`, `virtio-rng-pci`, `vhost-vsock-pci`, `virtconsole`): each serves one
    /// entry of `devices` through a chardev of `chardevs` whose path accel fills in at start.
    pub spawned: Vec<SpawnedBackendConfig>,
    /// `--timing` (accel extension): report start → first vCPU entry on stderr.
    pub timing: bool,
    /// `-qmp`, `-mon chardev=ID,mode=control`: QMP monitors accel listens on.
    pub monitors: Vec<MonitorConfig>,
    /// `-S`, `-no-shutdown`, `-pidfile`, `-uuid`, `-name ...,debug-threads=on`.
    pub lifecycle: LifecycleConfig,
    /// `-rtc`, `-global kvm-pit.*`, `-msg`, `-echr`, and the in-process platform devices
    /// (`-device pvpanic|isa-debugcon|isa-debug-exit`).
    pub platform: PlatformConfig,
}

/// Small platform and process options that QEMU lines carry, and the in-process platform
/// devices a command line may add (not virtio, no backend process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformConfig {
    /// `-device pvpanic[,ioport=N]`: the I/O port of the ISA panic notifier (QEMU's 0x505).
    pub pvpanic: Option<u16>,
    /// `-rtc base=`: what the CMOS clock counts from.
    pub rtc_base: RtcBase,
    /// `-global kvm-pit.lost_tick_policy=discard`: KVM drops PIT ticks the guest missed
    /// instead of reinjecting them (QEMU's default, `delay`, reinjects).
    pub pit_discard_lost_ticks: bool,
    /// `-msg timestamp=on`: accel's messages on stderr start with an RFC 3339 UTC timestamp.
    pub msg_timestamp: bool,
    /// `-echr N`: the escape key of `-serial stdio` on a terminal (QEMU's default: Ctrl-A).
    pub escape_char: u8,
    /// `-device isa-debugcon` / `-device isa-debug-exit`.
    pub isa_devices: Vec<IsaDeviceConfig>,
    /// `-M q35`: PCIe configuration space through ECAM, announced by an MCFG table and a
    /// PNP0A08 host bridge.
    pub pcie: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            pvpanic: None,
            rtc_base: RtcBase::Utc,
            pit_discard_lost_ticks: false,
            msg_timestamp: false,
            escape_char: 0x01,
            isa_devices: Vec::new(),
            pcie: false,
        }
    }
}

/// `-rtc base=utc|localtime|DATE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RtcBase {
    /// The host's clock in UTC (QEMU's default).
    #[default]
    Utc,
    /// The host's clock in the host's local time zone (what Windows guests expect).
    Localtime,
    /// Starts at this many seconds since the Unix epoch (UTC) and runs from there.
    Fixed(i64),
}

/// A small ISA device on the port-I/O bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsaDeviceConfig {
    /// `isa-debugcon`: bytes written to `iobase` go to `output`; reads return `readback`.
    DebugCon {
        iobase: u16,
        output: SerialConfig,
        readback: u8,
    },
    /// `isa-debug-exit`: a write of V to `iobase..iobase+iosize` ends accel with exit status
    /// `(V << 1) | 1`, as QEMU.
    DebugExit { iobase: u16, iosize: u8 },
}

/// Process and VM-lifecycle options (QEMU's spelling in the field docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// `-S`: create the vCPUs but run them only after QMP `cont`.
    pub start_paused: bool,
    /// `-no-shutdown`: a guest poweroff stops the VM instead of ending the process.
    pub no_shutdown: bool,
    /// `-pidfile PATH`: written at start, removed at exit.
    pub pidfile: Option<PathBuf>,
    /// `-daemonize`: fork; the parent exits once the VM is built and its monitors listen.
    pub daemonize: bool,
    /// `-uuid`: reported by `query-uuid` (canonical lower-case form).
    pub uuid: Option<String>,
    /// `-name ...,debug-threads=on`: name vCPU threads `CPU N/KVM` as QEMU does.
    pub debug_threads: bool,
    /// `-sandbox on|off`: confine the process once set up. On by default (unlike QEMU):
    /// `-sandbox off` is for debugging. See the README, Confinement.
    pub sandbox: bool,
    /// `-run-with user=NAME|UID:GID` or `-runas NAME`: the user to switch to once set up.
    pub run_as: Option<String>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            start_paused: false,
            no_shutdown: false,
            pidfile: None,
            daemonize: false,
            uuid: None,
            debug_threads: false,
            sandbox: true,
            run_as: None,
        }
    }
}

/// One QMP monitor: where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorConfig {
    /// The chardev label `query-chardev` shows (`compat_monitorN` for `-qmp`, else the id).
    pub label: String,
    pub listen: MonitorListen,
    /// `-mon ...,pretty=on`: multi-line JSON replies.
    pub pretty: bool,
    /// `wait=on` (QEMU's default): accel waits for the first client before the VM starts.
    pub wait: bool,
    /// A human monitor (HMP, `-monitor` or `-mon mode=readline`) instead of QMP.
    pub hmp: bool,
}

/// A listening socket for a monitor (QEMU's socket chardev in server mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorListen {
    /// `unix:PATH` / `path=PATH`: accel binds PATH (replacing a stale socket file).
    Unix(PathBuf),
    /// `tcp:HOST:PORT` / `host=,port=`.
    Tcp { host: String, port: u16 },
    /// `fd=N`: an already bound, listening socket inherited from the parent (libvirt).
    Fd(i32),
}

/// A PCI-to-PCI bridge from `-device pcie-root-port|pci-bridge|pcie-pci-bridge`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciBridgeConfig {
    /// `id=`: what devices behind it name in `bus=`.
    pub id: String,
    pub kind: PciBridgeKind,
    /// `bus=`: the bridge it sits behind; `None` = the root bus.
    pub bus: Option<String>,
    /// `addr=SLOT[.FN]`; `None` = next free slot.
    pub slot: Option<u8>,
    pub function: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciBridgeKind {
    /// QEMU's `pcie-root-port` (1b36:000c): `chassis=`, `port=` (link port number), `slot=`
    /// (physical slot number).
    RootPort { chassis: u8, port: u8, slot: u16 },
    /// QEMU's `pci-bridge` (1b36:0001): `chassis_nr=` in its slot id capability.
    PciBridge { chassis_nr: u8 },
    /// QEMU's `pcie-pci-bridge` (1b36:000e).
    PciePciBridge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MachineType {
    #[default]
    Pc,
    Q35,
    Microvm,
    /// `-machine none`: no guest; only the monitors run (capability probing).
    None,
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
    /// `share=on`: required by vhost-user devices (accel always maps guest RAM MAP_SHARED, but
    /// QEMU's semantics are kept: without share=on, vhost-user devices are refused).
    pub share: bool,
    /// Where the pages come from.
    pub source: RamSource,
    /// `prealloc=on` / `-mem-prealloc`: every page is allocated before the guest starts.
    pub prealloc: bool,
}

/// The memory behind one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RamSource {
    /// `memory-backend-memfd` and plain `-m`: an anonymous memfd. `hugetlb` is the huge page
    /// size in bytes when `hugetlb=on` (0: the host's default huge page size).
    Memfd { hugetlb: Option<u64> },
    /// `memory-backend-file,mem-path=PATH` / `-mem-path PATH`: a directory gets a fresh
    /// unlinked file; a missing file is created (and kept, as QEMU does); an existing file is
    /// mapped as it is (it must hold at least `size` bytes).
    File { path: PathBuf, readonly: bool },
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
    /// `-chardev pipe,path=P`: output to `P.out`, input from `P.in` (named pipes), or both on
    /// `P` when those do not exist, as QEMU does.
    Pipe(PathBuf),
}

/// `-netdev vhost-user,id=ID,chardev=CHR[,queues=N]`, or a `netdev_add` of that type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetdevConfig {
    pub id: String,
    pub chardev: String,
    pub queues: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChardevConfig {
    pub id: String,
    pub path: PathBuf,
    /// `reconnect=N` seconds; 0 = no reconnect.
    pub reconnect_secs: u64,
    /// `server=on`: accel listens on `path` and the backend connects (again after it went
    /// away); otherwise accel connects.
    pub server: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostUserDeviceConfig {
    /// The kind of device: its row in the device table (`vu_spec::devices::DEVICES`).
    pub spec: &'static DeviceSpec,
    /// `id=` (optional in QEMU).
    pub id: Option<String>,
    /// The `-chardev` id this device connects through (for net: via the `-netdev`).
    pub chardev: String,
    /// The virtio id the guest sees (the row's, or `virtio-id=`).
    pub virtio_id: u32,
    /// Device config space size the guest sees (the row's, or `config_size=`).
    pub config_size: u32,
    /// `num-queues=` (blk), `queues=` on the netdev ×2 (net), `num_vqs=` (generic);
    /// `None` = device default.
    pub num_queues: Option<u16>,
    /// `queue-size=`; `None` = 128 (QEMU's vhost-user-blk default).
    pub queue_size: Option<u16>,
    /// `addr=SLOT[.FN]` on its bus; `None` = next free slot.
    pub pci_slot: Option<u8>,
    /// The function number of `addr=SLOT.FN`.
    pub pci_function: u8,
    /// `bus=ID`: the id of the `-device pcie-root-port|pci-bridge|pcie-pci-bridge` whose
    /// secondary bus the device sits on; `None` = the root bus (pci.0/pcie.0).
    pub pci_bus: Option<String>,
    /// `mac=` for net.
    pub mac: Option<[u8; 6]>,
    /// `tag=` for virtio-fs.
    pub tag: Option<String>,
    /// `bootindex=`: accepted and ignored (accel boots the kernel directly).
    pub bootindex: Option<u32>,
    /// `tx_queue_size=` (net): size of the odd-numbered queues; `queue_size` (from
    /// `rx_queue_size=`) then sizes the even ones.
    pub tx_queue_size: Option<u16>,
    /// Feature bits hidden from the guest by `FEATURE=off` properties (`mrg_rxbuf=off`, ...).
    pub hidden_features: u64,
    /// `vectors=N`: MSI-X table size; `None` = one per queue plus one for config changes.
    pub msix_vectors: Option<u16>,
    /// `packed=on`: VIRTIO_F_RING_PACKED is offered when the backend offers it, as QEMU does.
    pub packed: bool,
}

/// One backend process accel starts (and restarts) for a built-in device spelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnedBackendConfig {
    /// What the command line said, for log lines (`-device virtio-blk-pci`, `-drive if=virtio`).
    pub label: String,
    /// The id of the chardev accel made for it (in [`VmConfig::chardevs`]; its path is a
    /// socket accel creates at start).
    pub chardev: String,
    pub backend: BuiltinBackend,
}

/// What a spawned backend serves (its program is the device row's name, e.g. `vhost-user-blk`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuiltinBackend {
    /// `-drive`/`-blockdev` + `virtio-blk-pci`: a raw image.
    Blk {
        image: PathBuf,
        read_only: bool,
        /// `cache=none|directsync`, `cache.direct=on`: O_DIRECT.
        direct_io: bool,
        serial: Option<String>,
        /// Most queues the backend accepts.
        num_queues: u16,
    },
    /// `-netdev tap` + `virtio-net-pci`.
    Net { tap: TapSource, queue_pairs: u16 },
    /// `-object rng-random|rng-builtin` + `virtio-rng-pci`.
    Rng {
        source: PathBuf,
        /// `max-bytes=` per `period=` milliseconds.
        rate_limit: Option<(u64, u64)>,
    },
    /// `vhost-vsock-pci,guest-cid=N`: host side on unix sockets at `uds_path` (hybrid vsock).
    Vsock { guest_cid: u64, uds_path: PathBuf },
    /// `virtio-serial-pci` + `virtconsole,chardev=C`.
    Console(ConsoleEndpoint),
}

/// Where a spawned net backend's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// `ifname=`: the backend opens (or creates) the tap.
    Name(String),
    /// `fd=N` / `fds=N:M`: tap queue fds accel inherited (libvirt opened them).
    Fds(Vec<i32>),
}

/// The chardev behind a `virtconsole`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleEndpoint {
    /// `-chardev stdio`.
    Stdio,
    /// `-chardev file,path=P`: output only.
    File(PathBuf),
    /// `-chardev socket,path=P,server=on,wait=off`: the backend listens on P.
    Socket(PathBuf),
}
