//! QEMU-compatible command-line parsing: turns `qemu-system-x86_64`-style arguments into a
//! validated [`VmConfig`].
//!
//! - [`args`]: argv → options (single-dash long options, `--opt` accepted too).
//! - [`props`]: QEMU's `key=value,...` suboptions (implied first key, `,,` escapes).
//! - [`json`]: QEMU's JSON form of `-object`/`-device`/`-netdev`, as libvirt writes it.
//! - [`values`]: sizes, integers, booleans, ids, MACs, PCI addresses.
//! - [`machine`], [`smp`], [`memory`], [`serial`], [`devices`]: one concern each.
//! - [`help`]: the `--help` text, which documents every difference from QEMU.
//!
//! Nothing here opens files or sockets: the VMM does, and names the file on failure.

mod args;
mod block;
mod builtin;
mod chardev;
mod devices;
mod help;
mod json;
mod machine;
mod memory;
mod monitor;
mod platform;
mod props;
pub mod runtime;
mod serial;
mod smp;
mod topology;
mod values;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::config::{
    BootConfig, ChardevConfig, CpuConfig, LifecycleConfig, MonitorConfig, PlatformConfig,
    RamSource, SerialConfig, VmConfig,
};
use args::Opt;
use props::{Flags, Props};

pub use help::help_text;

/// What the command line asks for.
#[derive(Debug)]
pub enum CliAction {
    Run(Box<VmConfig>),
    Help,
    Version,
}

/// A command-line error. Every variant names the option (as its canonical spelling, e.g.
/// `-machine` for `-M`) and, where there is one, the property and what is supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("unknown option '{option}'; accel supports: {supported}")]
    UnknownOption { option: String, supported: String },
    #[error("option '{option}' is not supported by accel: {reason}")]
    UnsupportedOption { option: String, reason: String },
    #[error("option '{option}' requires an argument")]
    MissingArgument { option: String },
    #[error(
        "unexpected argument '{arg}': accel takes no disk image argument: use -drive \
         file=IMG,if=virtio,format=raw (or -chardev socket + -device vhost-user-blk-pci)"
    )]
    StrayArgument { arg: String },
    #[error("{option}: unknown property '{property}'; supported: {supported}")]
    UnknownProperty {
        option: String,
        property: String,
        supported: String,
    },
    #[error("{option}: missing required property '{property}'")]
    MissingProperty { option: String, property: String },
    #[error("{option}: invalid value '{value}' for '{property}': expected {expected}")]
    InvalidValue {
        option: String,
        property: String,
        value: String,
        expected: String,
    },
    #[error("{option}: '{property}={value}' is not supported by accel: {reason}")]
    UnsupportedValue {
        option: String,
        property: String,
        value: String,
        reason: String,
    },
    #[error("{option}: {message}")]
    Invalid { option: String, message: String },
    #[error(
        "no -kernel given: accel has no firmware and boots Linux directly; pass -kernel PATH \
         (an ELF vmlinux with a PVH note, or a bzImage)"
    )]
    MissingKernel,
}

/// Parses `args` (without argv[0]).
pub fn parse(args: &[String]) -> Result<CliAction, CliError> {
    let mut state = State::default();
    for arg in args::tokenize(args)? {
        match arg.opt {
            Opt::Help => return Ok(CliAction::Help),
            Opt::Version => return Ok(CliAction::Version),
            _ => state.apply(arg)?,
        }
    }
    state.finish().map(|c| CliAction::Run(Box::new(c)))
}

/// Options collected so far; `finish` validates them together.
#[derive(Default)]
struct State {
    name: Option<String>,
    lifecycle: LifecycleConfig,
    qmps: Vec<MonitorConfig>,
    server_chardevs: Vec<monitor::ServerChardev>,
    mons: Vec<monitor::Mon>,
    machine: Option<Props>,
    cpu: Option<CpuConfig>,
    smp: Option<Props>,
    mem: Option<Props>,
    kernel: Option<String>,
    initrd: Option<String>,
    append: Option<String>,
    objects: Vec<memory::Backend>,
    numa: Vec<memory::NumaNode>,
    legacy_mem: memory::Legacy,
    serials: Vec<chardev::CharRef>,
    local_chardevs: Vec<chardev::LocalChardev>,
    isa_devices: Vec<chardev::IsaDevice>,
    platform: PlatformConfig,
    nodefaults: bool,
    no_reboot: bool,
    no_acpi: bool,
    timing: bool,
    chardevs: Vec<ChardevConfig>,
    netdevs: Vec<crate::config::NetdevConfig>,
    devices: Vec<devices::Device>,
    pci_bridges: Vec<crate::config::PciBridgeConfig>,
    builtin: builtin::Builtins,
}

/// Merges a later occurrence into the props collected so far (QEMU merges -machine, -m and
/// -smp occurrences; later keys win).
fn merge(slot: &mut Option<Props>, props: Props) {
    match slot {
        Some(existing) => existing.merge(props),
        None => *slot = Some(props),
    }
}

impl State {
    fn apply(&mut self, arg: args::Arg) -> Result<(), CliError> {
        let option = arg.name;
        let value = arg.value.unwrap_or_default();
        let kv = |implied, flags| Props::parse(option, &value, implied, flags);
        let kv_or_json = |implied| Props::parse_or_json(option, &value, implied, Flags::Allowed);
        match arg.opt {
            Opt::Accel => machine::check_accel(kv(Some("accel"), Flags::Allowed)?)?,
            Opt::EnableKvm => {}
            Opt::Machine => merge(&mut self.machine, kv(Some("type"), Flags::Allowed)?),
            Opt::Cpu => self.cpu = Some(machine::parse_cpu(option, &value)?),
            Opt::Smp => merge(&mut self.smp, kv(Some("cpus"), Flags::Allowed)?),
            Opt::Memory => merge(&mut self.mem, kv(Some("size"), Flags::Allowed)?),
            Opt::Kernel => self.kernel = Some(non_empty(option, value)?),
            Opt::Initrd => self.initrd = Some(non_empty(option, value)?),
            Opt::Append => self.append = Some(value),
            Opt::Object => {
                let props = if json::is_json(&value) {
                    kv_or_json(None)?
                } else {
                    kv(Some("qom-type"), Flags::Rejected)?
                };
                self.apply_object(props)?;
            }
            Opt::MemPath => self.legacy_mem.mem_path = Some(non_empty(option, value)?),
            Opt::MemPrealloc => self.legacy_mem.mem_prealloc = true,
            Opt::Audiodev => parse_audiodev(kv_or_json(Some("driver"))?)?,
            Opt::Sandbox => {
                self.lifecycle.sandbox = parse_sandbox(kv(Some("enable"), Flags::Allowed)?)?;
            }
            Opt::RunWith => {
                if let Some(user) = parse_run_with(kv(None, Flags::Allowed)?)? {
                    self.lifecycle.run_as = Some(user);
                }
            }
            Opt::Runas => self.lifecycle.run_as = Some(non_empty(option, value)?),
            Opt::Numa => self
                .numa
                .push(memory::parse_numa(kv(Some("type"), Flags::Allowed)?)?),
            Opt::Serial => self
                .serials
                .push(chardev::parse_serial_ref(option, &value)?),
            Opt::Rtc => platform::parse_rtc(kv(None, Flags::Allowed)?, &mut self.platform)?,
            Opt::Global => platform::parse_global(option, &value, &mut self.platform)?,
            Opt::Msg => platform::parse_msg(kv(None, Flags::Allowed)?, &mut self.platform)?,
            Opt::Overcommit => platform::parse_overcommit(kv(None, Flags::Allowed)?)?,
            Opt::Boot => platform::parse_boot(kv(Some("order"), Flags::Allowed)?)?,
            Opt::Echr => self.platform.escape_char = platform::parse_echr(option, &value)?,
            // `-net none`: no default NIC, which accel never adds anyway.
            Opt::Net if value == "none" => {}
            Opt::Net => {
                return Err(CliError::UnsupportedOption {
                    option: "-net".into(),
                    reason: format!(
                        "'{value}': accel's only -net is 'none'; networking is vhost-user: use \
                         -netdev vhost-user + -device virtio-net-pci"
                    ),
                });
            }
            // `-monitor unix:PATH,server,nowait` / `tcp:...`: a human monitor on a socket.
            Opt::Monitor if value.starts_with("unix:") || value.starts_with("tcp:") => {
                let label = format!("compat_monitor{}", self.qmps.len());
                self.qmps
                    .push(monitor::parse_qmp(option, &value, label, true)?);
            }
            Opt::Display | Opt::Vga | Opt::Parallel | Opt::Monitor => {
                serial::check_none(option, &value)?
            }
            Opt::Nographic | Opt::NoUserConfig | Opt::NoHpet => {}
            // QEMU 7.2: the same as -machine acpi=off.
            Opt::NoAcpi => self.no_acpi = true,
            Opt::Nodefaults => self.nodefaults = true,
            Opt::NoReboot => self.no_reboot = true,
            Opt::Timing => self.timing = true,
            Opt::Name => {
                let (name, debug_threads) = parse_name(kv(Some("guest"), Flags::Allowed)?)?;
                self.name = name;
                self.lifecycle.debug_threads = debug_threads;
            }
            Opt::Chardev => {
                let props = kv(Some("backend"), Flags::Allowed)?;
                if chardev::is_local(&props) {
                    self.local_chardevs.push(chardev::parse_local(props)?);
                } else if monitor::is_server(&props)? {
                    self.server_chardevs
                        .push(monitor::parse_server_chardev(props)?);
                } else {
                    self.chardevs.push(devices::parse_chardev(props)?);
                }
            }
            Opt::StartPaused => self.lifecycle.start_paused = true,
            Opt::NoShutdown => self.lifecycle.no_shutdown = true,
            Opt::Daemonize => self.lifecycle.daemonize = true,
            Opt::Pidfile => {
                self.lifecycle.pidfile = Some(PathBuf::from(non_empty(option, value)?));
            }
            Opt::Uuid => self.lifecycle.uuid = Some(monitor::parse_uuid(option, &value)?),
            Opt::Qmp => {
                // QEMU numbers the chardevs of -qmp/-monitor compat_monitor0, 1, ...
                let label = format!("compat_monitor{}", self.qmps.len());
                self.qmps
                    .push(monitor::parse_qmp(option, &value, label, false)?);
            }
            Opt::Mon => {
                let props = kv(Some("chardev"), Flags::Allowed)?;
                if self.is_mux_readline_monitor(&props) {
                    log::warn!(
                        "-mon chardev={}: accel has no human monitor (HMP); the chardev \
                         serves the serial port alone",
                        props.get("chardev").unwrap_or_default()
                    );
                } else {
                    self.mons.push(monitor::parse_mon(props)?);
                }
            }
            Opt::Netdev => {
                let props = kv_or_json(Some("type"))?;
                if props.peek("type") == Some("tap") {
                    self.builtin.taps.push(builtin::parse_tap(props)?);
                } else {
                    self.netdevs.push(devices::parse_netdev(props)?);
                }
            }
            Opt::Device => {
                let props = kv_or_json(Some("driver"))?;
                let driver = props.peek("driver").unwrap_or_default().to_string();
                if platform::is_platform(Some(&driver)) {
                    platform::parse(props, &mut self.platform, &mut self.isa_devices)?;
                } else if topology::is_bridge(&driver) {
                    self.pci_bridges.push(topology::parse(props)?);
                } else if builtin::is_serial_bus(&driver) {
                    self.builtin
                        .serial_buses
                        .push(builtin::parse_serial_bus(props)?);
                } else if let Some(row) = crate::backends::builtin_row(&driver) {
                    self.devices.push(builtin::parse_device(props, row)?);
                } else {
                    self.devices.push(devices::parse_device(props)?);
                }
            }
            Opt::Drive => self
                .builtin
                .drives
                .push(block::parse_drive(kv(Some("file"), Flags::Allowed)?)?),
            Opt::Blockdev => self
                .builtin
                .nodes
                .push(block::parse_blockdev(kv_or_json(None)?)?),
            // Handled by `parse` before reaching here.
            Opt::Help | Opt::Version => {}
        }
        Ok(())
    }

    /// A `-mon` in readline mode (HMP) on a `mux=on` stdio-like chardev: QEMU multiplexes its
    /// human monitor with the serial port there; accel has no HMP, so only the serial port
    /// remains (as with `-serial mon:stdio`).
    fn is_mux_readline_monitor(&self, props: &Props) -> bool {
        let readline = matches!(props.get("mode"), None | Some("readline"));
        readline
            && self
                .local_chardevs
                .iter()
                .any(|c| c.mux && Some(c.id.as_str()) == props.get("chardev"))
    }

    /// `-object`: memory backends are kept; `secret` (libvirt passes one on every line) is
    /// accepted and unused, as accel has nothing that consumes secrets.
    fn apply_object(&mut self, mut props: Props) -> Result<(), CliError> {
        match props.peek("qom-type") {
            Some("secret") => {
                props.take("qom-type");
                let id = props.take_id("id")?;
                for key in ["data", "file", "format", "keyid", "iv"] {
                    props.take(key);
                }
                props.finish(&[
                    "qom-type (secret)",
                    "id",
                    "data",
                    "file",
                    "format",
                    "keyid",
                    "iv",
                ])?;
                log::info!(
                    "-object secret,id={}: accepted, unused (no accel device takes a secret)",
                    id.unwrap_or_default()
                );
            }
            Some(t) if builtin::is_rng_object(t) => {
                self.builtin.rngs.push(builtin::parse_rng_object(props)?);
            }
            Some(t) if !memory::is_memory_backend(t) && t != "secret" => {
                let t = t.to_string();
                return Err(props.unsupported(
                    "qom-type",
                    &t,
                    "accel supports memory-backend-memfd, memory-backend-file and secret",
                ));
            }
            _ => self.objects.push(memory::parse_object(props)?),
        }
        Ok(())
    }

    fn finish(self) -> Result<VmConfig, CliError> {
        let machine =
            machine::parse_machine(self.machine.unwrap_or_else(|| Props::empty("-machine")))?;
        let probing = machine.kind == crate::config::MachineType::None;
        // `-machine none` runs no guest (capability probing): no kernel, no devices.
        let kernel = match self.kernel {
            Some(k) => k,
            None if probing => String::new(),
            None => return Err(CliError::MissingKernel),
        };
        if probing
            && !(self.devices.is_empty()
                && self.isa_devices.is_empty()
                && self.platform.pvpanic.is_none()
                && self.builtin.is_empty())
        {
            return Err(CliError::Invalid {
                option: "-machine".into(),
                message: "-machine none has no buses: it takes no -device".into(),
            });
        }
        let smp = smp::parse_smp(self.smp.unwrap_or_else(|| Props::empty("-smp")))?;
        let ram_size = memory::parse_mem(self.mem.unwrap_or_else(|| Props::empty("-m")))?;
        for (i, backend) in self.objects.iter().enumerate() {
            if self.objects[..i].iter().any(|b| b.id == backend.id) {
                return Err(CliError::Invalid {
                    option: "-object".into(),
                    message: format!("duplicate object id '{}'", backend.id),
                });
            }
        }
        let memory = memory::resolve(
            ram_size,
            &self.objects,
            self.numa,
            machine.memory_backend,
            &self.legacy_mem,
        )?;
        let mut memory = memory;
        // One id space for every chardev: the local ones (stdio/file/pipe/null), which the
        // serial port, isa-debugcon and virtconsole share, and the sockets.
        for (i, c) in self.local_chardevs.iter().enumerate() {
            if self.local_chardevs[..i].iter().any(|o| o.id == c.id)
                || self.chardevs.iter().any(|o| o.id == c.id)
                || self.server_chardevs.iter().any(|o| o.id == c.id)
            {
                return Err(CliError::Invalid {
                    option: "-chardev".into(),
                    message: format!("duplicate chardev id '{}'", c.id),
                });
            }
        }
        let mut server_chardevs = self.server_chardevs;
        // Chardev ids taken by a user (each chardev has one).
        let mut used = Vec::new();
        let mut serials = Vec::new();
        for r in self.serials {
            serials.push(chardev::resolve_ref(
                "-serial",
                r,
                &self.local_chardevs,
                &mut server_chardevs,
                &mut used,
            )?);
        }
        let mut platform = self.platform;
        for dev in self.isa_devices {
            platform.isa_devices.push(chardev::resolve_isa(
                dev,
                &self.local_chardevs,
                &mut server_chardevs,
                &mut used,
            )?);
        }
        let serial_stdio =
            (serials.is_empty() && !self.nodefaults) || serials.contains(&SerialConfig::Stdio);
        let mut user_devices = self.devices;
        for d in self.builtin.drives.iter().filter(|d| d.virtio) {
            user_devices.push(builtin::drive_device(d));
        }
        let builtins = builtin::resolve(
            self.builtin,
            &mut user_devices,
            builtin::Chardevs {
                locals: &self.local_chardevs,
                servers: &mut server_chardevs,
                clients: &self.chardevs,
                used: &mut used,
            },
            smp.cpus,
            serial_stdio,
        )?;
        for c in self.local_chardevs.iter().filter(|c| !used.contains(&c.id)) {
            log::warn!("-chardev {}: no device uses it", c.id);
        }
        let mut client_ids: Vec<String> = self.chardevs.iter().map(|c| c.id.clone()).collect();
        client_ids.extend(self.local_chardevs.iter().map(|c| c.id.clone()));
        let mut chardevs = self.chardevs;
        chardevs.extend(builtins.chardevs);
        let mut netdevs = self.netdevs;
        netdevs.extend(builtins.netdevs);
        devices::take_server_chardevs(
            &mut server_chardevs,
            &netdevs,
            &user_devices,
            &mut chardevs,
        )?;
        let mut pci_bridges = self.pci_bridges;
        topology::resolve(machine.kind, &mut pci_bridges, &mut user_devices)?;
        let devices = devices::resolve(&chardevs, &netdevs, user_devices)?;
        platform.pcie = machine.kind == crate::config::MachineType::Q35;
        let mut monitors = self.qmps;
        monitors.extend(monitor::resolve(server_chardevs, self.mons, &client_ids)?);
        if !builtins.spawned.is_empty() {
            // Plain -m RAM is a memfd accel maps shared anyway: the backends accel starts for
            // built-in devices may map it (a QEMU line with built-in devices needs no share=on).
            for b in &mut memory.backends {
                if b.id.is_none() && matches!(b.source, RamSource::Memfd { .. }) {
                    b.share = true;
                }
            }
        }
        if !devices.is_empty() {
            memory::check_shared(&memory)?;
        }
        let serial = match serials.len() {
            0 if self.nodefaults => SerialConfig::Null,
            0 => SerialConfig::Stdio,
            1 => serials.into_iter().next().unwrap_or_default(),
            n => {
                return Err(CliError::Invalid {
                    option: "-serial".into(),
                    message: format!(
                        "given {n} times, but accel has one serial port (COM1 at 0x3f8)"
                    ),
                });
            }
        };
        if self.lifecycle.daemonize && serial == SerialConfig::Stdio {
            return Err(CliError::Invalid {
                option: "-daemonize".into(),
                message: "cannot use stdio with -daemonize: give -serial null|file:PATH|unix:... \
                          or -nodefaults"
                    .into(),
            });
        }
        Ok(VmConfig {
            name: self.name,
            machine: machine.kind,
            acpi: machine.acpi && !self.no_acpi,
            cpu: self.cpu.unwrap_or_else(machine::default_cpu),
            smp,
            memory,
            boot: BootConfig {
                kernel: PathBuf::from(kernel),
                initrd: self.initrd.map(PathBuf::from),
                cmdline: self.append.unwrap_or_default(),
            },
            serial,
            no_reboot: self.no_reboot,
            chardevs,
            netdevs,
            devices,
            pci_bridges,
            spawned: builtins.spawned,
            timing: self.timing,
            monitors,
            lifecycle: self.lifecycle,
            platform,
        })
    }
}

fn non_empty(option: &str, value: String) -> Result<String, CliError> {
    if value.is_empty() {
        return Err(CliError::Invalid {
            option: option.into(),
            message: "empty path".into(),
        });
    }
    Ok(value)
}

/// `-name [guest=]NAME[,debug-threads=on|off]`.
fn parse_name(mut props: Props) -> Result<(Option<String>, bool), CliError> {
    let name = props.take("guest");
    let debug_threads = props.take_bool("debug-threads")?.unwrap_or(false);
    if let Some(v) = props.take("process") {
        return Err(props.unsupported("process", &v, "accel does not rename its process"));
    }
    props.finish(&["guest", "debug-threads"])?;
    Ok((name, debug_threads))
}

/// `-audiodev [driver=]none,id=ID` (libvirt passes one on every line): accel has no sound
/// device, so only the backend that plays nothing is accepted.
fn parse_audiodev(mut props: Props) -> Result<(), CliError> {
    let driver = props.take_required("driver")?;
    if driver != "none" {
        return Err(props.unsupported(
            "driver",
            &driver,
            "accel has no sound devices: only -audiodev none is accepted",
        ));
    }
    props.take_id("id")?;
    // Per-direction tuning of a backend that plays nothing.
    props.take("timer-period");
    let tuning: Vec<String> = props
        .keys()
        .filter(|k| k.starts_with("in.") || k.starts_with("out."))
        .map(str::to_string)
        .collect();
    for k in tuning {
        props.take(&k);
    }
    props.finish(&["driver (none)", "id", "timer-period", "in.*", "out.*"])
}

/// `-sandbox on|off[,obsolete=..,elevateprivileges=..,spawn=..,resourcecontrol=..]`: whether
/// accel confines itself once set up (on by default; `off` for debugging). The QEMU
/// sub-options are accepted as libvirt passes them: accel's confinement denies all four
/// (old system calls, privilege gain, process creation, resource control) whatever they say
/// (the backends for built-in devices are started and restarted by a separate launcher
/// process, see [`crate::backends`]).
fn parse_sandbox(mut props: Props) -> Result<bool, CliError> {
    let on = props
        .take_with("enable", values::parse_bool)?
        .unwrap_or(true);
    for key in ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"] {
        if let Some(v) = props.take(key)
            && !matches!(v.as_str(), "allow" | "deny" | "children")
        {
            return Err(props.invalid(key, &v, "allow, deny or children"));
        }
    }
    props.finish(&[
        "enable",
        "obsolete",
        "elevateprivileges",
        "spawn",
        "resourcecontrol",
    ])?;
    Ok(on)
}

/// `-run-with [user=NAME|UID:GID][,async-teardown=on|off]` (QEMU 9): the user to switch to
/// once set up. `chroot=` is refused; async-teardown is accepted and changes nothing (accel's
/// teardown is synchronous).
fn parse_run_with(mut props: Props) -> Result<Option<String>, CliError> {
    let user = props.take("user");
    if let Some(u) = &user
        && u.is_empty()
    {
        return Err(props.invalid("user", u, "a user name or UID:GID"));
    }
    props.take_with("async-teardown", values::parse_bool)?;
    if let Some(dir) = props.take("chroot") {
        return Err(props.unsupported(
            "chroot",
            &dir,
            "accel does not chroot; confinement uses landlock",
        ));
    }
    props.finish(&["user", "async-teardown"])?;
    Ok(user)
}
