//! Splitting argv into options: QEMU's single-dash long options (`--opt` accepted too), each
//! taking zero or one argument (the next argv element).

use super::CliError;

/// Every option accel understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opt {
    Accel,
    EnableKvm,
    Machine,
    Cpu,
    Smp,
    Memory,
    Kernel,
    Initrd,
    Append,
    Object,
    Numa,
    MemPath,
    MemPrealloc,
    Audiodev,
    Sandbox,
    RunWith,
    Runas,
    Serial,
    Nographic,
    Display,
    Vga,
    Nodefaults,
    NoUserConfig,
    Parallel,
    Monitor,
    NoAcpi,
    NoHpet,
    NoReboot,
    Name,
    Chardev,
    Device,
    Netdev,
    Drive,
    Blockdev,
    Timing,
    StartPaused,
    Qmp,
    Mon,
    NoShutdown,
    Pidfile,
    Uuid,
    Daemonize,
    Rtc,
    Global,
    Msg,
    Overcommit,
    Boot,
    Echr,
    Net,
    Help,
    Version,
}

struct Spec {
    /// Canonical spelling, as used in error messages and help.
    canonical: &'static str,
    /// Spellings without the leading dash(es).
    names: &'static [&'static str],
    opt: Opt,
    takes_arg: bool,
}

const fn spec(
    canonical: &'static str,
    names: &'static [&'static str],
    opt: Opt,
    takes_arg: bool,
) -> Spec {
    Spec {
        canonical,
        names,
        opt,
        takes_arg,
    }
}

const SPECS: &[Spec] = &[
    spec("-accel", &["accel"], Opt::Accel, true),
    spec("-enable-kvm", &["enable-kvm"], Opt::EnableKvm, false),
    spec("-machine", &["machine", "M"], Opt::Machine, true),
    spec("-cpu", &["cpu"], Opt::Cpu, true),
    spec("-smp", &["smp"], Opt::Smp, true),
    spec("-m", &["m"], Opt::Memory, true),
    spec("-kernel", &["kernel"], Opt::Kernel, true),
    spec("-initrd", &["initrd"], Opt::Initrd, true),
    spec("-append", &["append"], Opt::Append, true),
    spec("-object", &["object"], Opt::Object, true),
    spec("-numa", &["numa"], Opt::Numa, true),
    spec("-mem-path", &["mem-path"], Opt::MemPath, true),
    spec("-mem-prealloc", &["mem-prealloc"], Opt::MemPrealloc, false),
    spec("-audiodev", &["audiodev"], Opt::Audiodev, true),
    spec("-sandbox", &["sandbox"], Opt::Sandbox, true),
    spec("-run-with", &["run-with"], Opt::RunWith, true),
    spec("-runas", &["runas"], Opt::Runas, true),
    spec("-serial", &["serial"], Opt::Serial, true),
    spec("-nographic", &["nographic"], Opt::Nographic, false),
    spec("-display", &["display"], Opt::Display, true),
    spec("-vga", &["vga"], Opt::Vga, true),
    spec("-nodefaults", &["nodefaults"], Opt::Nodefaults, false),
    spec(
        "-no-user-config",
        &["no-user-config"],
        Opt::NoUserConfig,
        false,
    ),
    spec("-parallel", &["parallel"], Opt::Parallel, true),
    spec("-monitor", &["monitor"], Opt::Monitor, true),
    spec("-no-acpi", &["no-acpi"], Opt::NoAcpi, false),
    spec("-no-hpet", &["no-hpet"], Opt::NoHpet, false),
    spec("-no-reboot", &["no-reboot"], Opt::NoReboot, false),
    spec("-name", &["name"], Opt::Name, true),
    spec("-chardev", &["chardev"], Opt::Chardev, true),
    spec("-device", &["device"], Opt::Device, true),
    spec("-netdev", &["netdev"], Opt::Netdev, true),
    spec("-drive", &["drive"], Opt::Drive, true),
    spec("-blockdev", &["blockdev"], Opt::Blockdev, true),
    spec("--timing", &["timing"], Opt::Timing, false),
    spec("-S", &["S"], Opt::StartPaused, false),
    spec("-qmp", &["qmp"], Opt::Qmp, true),
    spec("-mon", &["mon"], Opt::Mon, true),
    spec("-no-shutdown", &["no-shutdown"], Opt::NoShutdown, false),
    spec("-pidfile", &["pidfile"], Opt::Pidfile, true),
    spec("-uuid", &["uuid"], Opt::Uuid, true),
    spec("-daemonize", &["daemonize"], Opt::Daemonize, false),
    spec("-rtc", &["rtc"], Opt::Rtc, true),
    spec("-global", &["global"], Opt::Global, true),
    spec("-msg", &["msg"], Opt::Msg, true),
    spec("-overcommit", &["overcommit"], Opt::Overcommit, true),
    spec("-boot", &["boot"], Opt::Boot, true),
    spec("-echr", &["echr"], Opt::Echr, true),
    spec("-net", &["net"], Opt::Net, true),
    spec("-help", &["help", "h"], Opt::Help, false),
    spec("-version", &["version"], Opt::Version, false),
];

/// QEMU options accel deliberately does not implement, with the reason given to the user.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "hda",
        "use -drive file=IMG,if=virtio,format=raw (or -device vhost-user-blk-pci)",
    ),
    (
        "hdb",
        "use -drive file=IMG,if=virtio,format=raw (or -device vhost-user-blk-pci)",
    ),
    (
        "cdrom",
        "use -drive file=IMG,if=virtio,format=raw (or -device vhost-user-blk-pci)",
    ),
    (
        "snapshot",
        "disk images are handled by the vhost-user-blk backend",
    ),
    (
        "nic",
        "use -netdev tap|vhost-user,id=ID,... + -device virtio-net-pci,netdev=ID",
    ),
    (
        "net",
        "use -netdev tap|vhost-user,id=ID,... + -device virtio-net-pci,netdev=ID",
    ),
    (
        "bios",
        "accel has no firmware; it boots Linux directly from -kernel",
    ),
    (
        "L",
        "accel has no firmware; it boots Linux directly from -kernel",
    ),
    ("s", "accel has no gdb stub"),
    ("gdb", "accel has no gdb stub"),
    ("vnc", "accel has no display"),
    ("spice", "accel has no display"),
    ("sdl", "accel has no display"),
    ("full-screen", "accel has no display"),
    ("usb", "accel has no USB controller"),
    ("usbdevice", "accel has no USB controller"),
    ("incoming", "accel does not support migration"),
    ("loadvm", "accel does not support snapshots"),
    (
        "D",
        "accel logs to stderr; set RUST_LOG (e.g. RUST_LOG=debug)",
    ),
    (
        "d",
        "accel logs to stderr; set RUST_LOG (e.g. RUST_LOG=debug)",
    ),
    ("trace", "accel logs to stderr; set RUST_LOG"),
    ("readconfig", "not implemented"),
    ("smbios", "accel provides no SMBIOS tables"),
    ("fw_cfg", "accel has no fw_cfg device"),
    ("chroot", "not implemented"),
    ("icount", "accel only supports KVM"),
    ("fsdev", "not implemented"),
    ("virtfs", "not implemented"),
    ("tpmdev", "not implemented"),
    ("add-fd", "not implemented"),
    ("action", "not implemented"),
];

/// One option occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Arg {
    pub opt: Opt,
    /// Canonical spelling with a single dash, for error messages (`-machine` for `-M`).
    pub name: &'static str,
    pub value: Option<String>,
}

/// Canonical option names as shown to users, in table order.
pub(super) fn supported_names() -> String {
    let names: Vec<&str> = SPECS.iter().map(|s| s.canonical).collect();
    names.join(" ")
}

/// Splits `args` into options. Stops early at `-help`/`-version` (returned last), like
/// QEMU, which acts on them as soon as it reaches them.
pub(super) fn tokenize(args: &[String]) -> Result<Vec<Arg>, CliError> {
    let mut out = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(stripped) = arg.strip_prefix('-').filter(|s| !s.is_empty()) else {
            return Err(CliError::StrayArgument { arg: arg.clone() });
        };
        let bare = stripped.strip_prefix('-').unwrap_or(stripped);
        let Some(spec) = SPECS.iter().find(|s| s.names.contains(&bare)) else {
            if let Some((name, reason)) = UNSUPPORTED.iter().find(|(n, _)| *n == bare) {
                return Err(CliError::UnsupportedOption {
                    option: format!("-{name}"),
                    reason: (*reason).to_string(),
                });
            }
            return Err(CliError::UnknownOption {
                option: arg.clone(),
                supported: supported_names(),
            });
        };
        let name = spec.canonical;
        let value = if spec.takes_arg {
            match iter.next() {
                Some(v) => Some(v.clone()),
                None => {
                    return Err(CliError::MissingArgument {
                        option: name.to_string(),
                    });
                }
            }
        } else {
            None
        };
        let stop = matches!(spec.opt, Opt::Help | Opt::Version);
        out.push(Arg {
            opt: spec.opt,
            name,
            value,
        });
        if stop {
            break;
        }
    }
    Ok(out)
}
