//! QEMU's built-in device spellings, served by backends accel starts itself (one process per
//! device: see [`crate::backends`]): `-drive`/`-blockdev` + `virtio-blk-pci`, `-netdev tap` +
//! `virtio-net-pci`, `-object rng-random|rng-builtin` + `virtio-rng-pci`, `vhost-vsock-pci`,
//! `virtio-serial-pci` + `virtconsole` on `-chardev stdio|file|socket,server=on`.
//!
//! Each such device becomes an ordinary vhost-user device on a chardev accel makes up (its id
//! starts with `#`, which no user id can), plus a [`SpawnedBackendConfig`] saying what the
//! backend serves.

use std::path::PathBuf;

use vu_spec::devices::{DeviceSpec, PropKind};

use super::CliError;
use super::block::{self, Image};
use super::chardev::LocalChardev;
use super::devices::{self, Device};
use super::monitor::ServerChardev;
use super::props::Props;
use crate::config::{
    BuiltinBackend, ChardevConfig, ConsoleEndpoint, MonitorListen, NetdevConfig, SerialConfig,
    SpawnedBackendConfig, TapSource, VhostUserDeviceConfig,
};

/// What a built-in `-device` needs from the rest of the command line.
#[derive(Debug, Clone)]
pub(super) enum Use {
    /// `virtio-blk-pci,drive=ID` (a `-drive if=none` id or a `-blockdev` node name).
    Drive {
        drive: String,
        serial: Option<String>,
    },
    /// `-drive if=virtio` (the drive is its own device).
    Image {
        image: Image,
        serial: Option<String>,
    },
    /// `virtio-rng-pci[,rng=ID][,max-bytes=N,period=MS]`.
    Rng {
        rng: Option<String>,
        rate_limit: Option<(u64, u64)>,
    },
    /// `vhost-vsock-pci,guest-cid=N[,uds-path=P]`.
    Vsock { guest_cid: u64, uds_path: PathBuf },
    /// `virtconsole,chardev=ID[,bus=SERIAL.0]`.
    Console {
        chardev: String,
        bus: Option<String>,
    },
}

/// `-object rng-random|rng-builtin`.
#[derive(Debug)]
pub(super) struct Rng {
    pub id: String,
    pub source: PathBuf,
}

/// `-netdev tap`.
#[derive(Debug)]
pub(super) struct Tap {
    pub id: String,
    pub source: TapSource,
    pub queues: Option<u16>,
}

/// `-device virtio-serial-pci`: the PCI function a `virtconsole` appears on.
#[derive(Debug)]
pub(super) struct SerialBus {
    pub id: Option<String>,
    pub pci: devices::PciPlace,
    used: bool,
}

/// Everything of the command line that built-in devices use.
#[derive(Debug, Default)]
pub(super) struct Builtins {
    pub drives: Vec<block::Drive>,
    pub nodes: Vec<block::Node>,
    pub rngs: Vec<Rng>,
    pub taps: Vec<Tap>,
    pub serial_buses: Vec<SerialBus>,
}

impl Builtins {
    /// Whether the command line has none of these.
    pub fn is_empty(&self) -> bool {
        self.drives.is_empty()
            && self.nodes.is_empty()
            && self.rngs.is_empty()
            && self.taps.is_empty()
            && self.serial_buses.is_empty()
    }
}

/// The chardevs a `virtconsole` may sit on.
pub(super) struct Chardevs<'a> {
    /// `-chardev stdio|file|pipe|null` (shared with the serial port and isa-debugcon).
    pub locals: &'a [LocalChardev],
    /// Socket chardevs with `server=on`; one a console takes is removed.
    pub servers: &'a mut Vec<ServerChardev>,
    /// Client sockets (vhost-user connections): named in errors only.
    pub clients: &'a [ChardevConfig],
    /// Ids already taken by a user (the serial port, isa-debugcon, another console).
    pub used: &'a mut Vec<String>,
}

/// `rng-random`, `rng-builtin` (and the `-object` types accel can tell it has not).
pub(super) fn is_rng_object(qom_type: &str) -> bool {
    qom_type.starts_with("rng-")
}

/// `-object rng-random,id=ID[,filename=PATH]` / `rng-builtin,id=ID`.
pub(super) fn parse_rng_object(mut props: Props) -> Result<Rng, CliError> {
    let kind = props.take_required("qom-type")?;
    let id = required(&mut props, "id")?;
    let source = match kind.as_str() {
        "rng-random" => props
            .take("filename")
            .unwrap_or_else(|| "/dev/urandom".into()),
        "rng-builtin" => "/dev/urandom".into(),
        other => {
            return Err(props.unsupported(
                "qom-type",
                other,
                "accel's entropy sources are rng-random (a file) and rng-builtin",
            ));
        }
    };
    props.finish(&["qom-type (rng-random/rng-builtin)", "id", "filename"])?;
    Ok(Rng {
        id,
        source: PathBuf::from(source),
    })
}

fn required(props: &mut Props, key: &str) -> Result<String, CliError> {
    props
        .take_id(key)?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: key.into(),
        })
}

/// Tap fd numbers: `fd=N` or `fds=N:M:...`.
fn parse_fds(props: &Props, key: &str, v: &str) -> Result<Vec<i32>, CliError> {
    v.split(':')
        .map(|n| n.parse::<i32>().ok().filter(|n| *n >= 0))
        .collect::<Option<Vec<_>>>()
        .filter(|f| !f.is_empty() && f.len() <= 32)
        .ok_or_else(|| props.invalid(key, v, "fd numbers separated by ':' (at most 32)"))
}

/// `-netdev tap,id=ID,(ifname=NAME|fd=N|fds=N:M)[,script=no,downscript=no][,vhost=on|off]
/// [,queues=N]`.
pub(super) fn parse_tap(mut props: Props) -> Result<Tap, CliError> {
    props.take_required("type")?;
    let id = required(&mut props, "id")?;
    for key in ["script", "downscript"] {
        if let Some(v) = props.take(key)
            && !matches!(v.as_str(), "no" | "")
        {
            return Err(props.unsupported(
                key,
                &v,
                "accel runs no network scripts: set the tap up beforehand and pass script=no,downscript=no",
            ));
        }
    }
    for key in ["helper", "br", "vhostfd", "vhostfds"] {
        if let Some(v) = props.take(key) {
            return Err(props.unsupported(
                key,
                &v,
                "accel serves a tap through its vhost-user-net backend: give ifname= or fd=/fds=",
            ));
        }
    }
    // The data path is a vhost-user backend whatever vhost= says (never QEMU's userspace one).
    props.take_bool("vhost")?;
    props.take_bool("vhostforce")?;
    props.take("sndbuf");
    if props.take_bool("vnet_hdr")? == Some(false) {
        return Err(props.unsupported(
            "vnet_hdr",
            "off",
            "accel's net backend needs the tap's virtio-net header",
        ));
    }
    let ifname = props.take("ifname");
    let fd = props.take("fd");
    let fds = props.take("fds");
    let mut queues = props.take_uint_in("queues", 1, 32)?.map(|q| q as u16);
    let source = match (ifname, fd, fds) {
        (Some(n), None, None) if !n.is_empty() => TapSource::Name(n),
        (None, Some(f), None) => TapSource::Fds(parse_fds(&props, "fd", &f)?),
        (None, None, Some(f)) => {
            let fds = parse_fds(&props, "fds", &f)?;
            queues = Some(fds.len() as u16);
            TapSource::Fds(fds)
        }
        (None, None, None) => {
            return Err(CliError::MissingProperty {
                option: props.option().into(),
                property: "ifname".into(),
            });
        }
        _ => {
            return Err(CliError::Invalid {
                option: props.option().into(),
                message: format!("{id}: give one of ifname=, fd=, fds="),
            });
        }
    };
    if let (TapSource::Fds(f), Some(q)) = (&source, queues)
        && f.len() == 1
        && q > 1
    {
        return Err(props.invalid(
            "queues",
            &q.to_string(),
            "1 with fd= (use fds=N:M:.. for more)",
        ));
    }
    props.finish(&[
        "type (tap)",
        "id",
        "ifname",
        "fd",
        "fds",
        "queues",
        "script (no)",
        "downscript (no)",
        "vhost",
        "vhostforce",
        "sndbuf",
        "vnet_hdr (on)",
    ])?;
    Ok(Tap { id, source, queues })
}

/// Whether `-device DRIVER` is `virtio-serial-pci`.
pub(super) fn is_serial_bus(driver: &str) -> bool {
    matches!(
        driver.strip_suffix("-non-transitional").unwrap_or(driver),
        "virtio-serial-pci" | "virtio-serial"
    )
}

/// `-device virtio-serial-pci[,id=ID][,addr=..][,max_ports=N]`.
pub(super) fn parse_serial_bus(mut props: Props) -> Result<SerialBus, CliError> {
    props.take_required("driver")?;
    let id = props.take_id("id")?;
    props.take("max_ports");
    props.take("vectors");
    let pci = devices::take_common_props(&mut props)?;
    props.finish(&["id", "addr", "bus", "max_ports", "vectors"])?;
    Ok(SerialBus {
        id,
        pci,
        used: false,
    })
}

fn new_device(
    option: &'static str,
    driver: String,
    spec: &'static DeviceSpec,
    id: Option<String>,
    pci: devices::PciPlace,
    use_: Use,
) -> Device {
    Device {
        option,
        driver,
        config: VhostUserDeviceConfig {
            spec,
            id,
            chardev: String::new(),
            virtio_id: spec.virtio_id(None),
            config_size: spec.config_size(None),
            num_queues: None,
            queue_size: None,
            pci_slot: pci.addr.map(|(s, _)| s),
            pci_function: pci.addr.map_or(0, |(_, f)| f),
            pci_bus: pci.bus.clone(),
            mac: None,
            tag: None,
            bootindex: None,
            tx_queue_size: None,
            hidden_features: 0,
            msix_vectors: None,
            packed: false,
        },
        netdev: None,
        pci_func: pci.addr.map_or(0, |(_, f)| f),
        builtin: Some(use_),
    }
}

/// A built-in `-device` (`spec`: the row serving it, from [`builtin_row`]).
pub(super) fn parse_device(
    mut props: Props,
    spec: &'static DeviceSpec,
) -> Result<Device, CliError> {
    let option = props.option();
    let driver = props.take_required("driver")?;
    let base = driver
        .strip_suffix("-non-transitional")
        .unwrap_or(&driver)
        .to_string();
    let id = props.take_id("id")?;
    if base == "virtconsole" {
        let chardev = required(&mut props, "chardev")?;
        let bus = props.take("bus");
        props.take("name");
        props.take("nr");
        props.finish(&["chardev", "id", "bus", "name", "nr (0)"])?;
        let bus = bus.map(|b| b.strip_suffix(".0").unwrap_or(&b).to_string());
        return Ok(new_device(
            option,
            driver,
            spec,
            id,
            devices::PciPlace::default(),
            Use::Console { chardev, bus },
        ));
    }
    let (use_, mut extra): (Use, Vec<&str>) = match base.as_str() {
        "virtio-blk-pci" => {
            let drive = required(&mut props, "drive")?;
            let serial = props.take("serial");
            for key in [
                "logical_block_size",
                "physical_block_size",
                "discard_granularity",
            ] {
                if let Some(v) = props.take(key) {
                    return Err(props.unsupported(key, &v, "accel's disks have 512-byte sectors"));
                }
            }
            props.take_bool("write-cache")?;
            props.take_bool("config-wce")?;
            props.take_bool("scsi")?;
            (
                Use::Drive { drive, serial },
                vec!["drive", "serial", "write-cache"],
            )
        }
        "virtio-rng-pci" => {
            let rng = props.take_id("rng")?;
            let max = props.take_uint_in("max-bytes", 1, u64::MAX)?;
            let period = props.take_uint_in("period", 1, 3_600_000)?;
            let rate_limit = max.map(|m| (m, period.unwrap_or(65536)));
            (
                Use::Rng { rng, rate_limit },
                vec!["rng", "max-bytes", "period"],
            )
        }
        _ => {
            // vhost-vsock-pci
            let cid = props
                .take_uint_in("guest-cid", 3, u64::from(u32::MAX) - 1)?
                .ok_or_else(|| CliError::MissingProperty {
                    option: option.into(),
                    property: "guest-cid".into(),
                })?;
            if let Some(v) = props.take("vhostfd") {
                return Err(props.unsupported(
                    "vhostfd",
                    &v,
                    "accel serves vsock with its vhost-user-vsock backend, not /dev/vhost-vsock",
                ));
            }
            let uds_path = props
                .take("uds-path")
                .map(PathBuf::from)
                .unwrap_or_else(|| default_vsock_path(cid));
            (
                Use::Vsock {
                    guest_cid: cid,
                    uds_path,
                },
                vec!["guest-cid", "uds-path (accel extension)"],
            )
        }
    };
    let mut num_queues = None;
    let mut queue_size = None;
    let mut bootindex = None;
    for p in spec.props {
        match p.kind {
            PropKind::NumQueues => num_queues = devices::u16_in(&mut props, p.name, 1, 64)?,
            PropKind::QueueSize => queue_size = devices::queue_size(&mut props, p.name)?,
            PropKind::BootIndex => {
                bootindex = props
                    .take_uint_in(p.name, 0, u64::from(u32::MAX))?
                    .map(|b| b as u32);
            }
            _ => continue,
        }
        extra.push(p.name);
    }
    let pci = devices::take_common_props(&mut props)?;
    let transport = devices::take_transport_props(&mut props)?;
    extra.extend_from_slice(devices::COMMON_PROPS);
    props.finish(&extra)?;
    let mut d = new_device(option, driver, spec, id, pci, use_);
    d.config.msix_vectors = transport.vectors;
    d.config.packed = transport.packed;
    d.config.num_queues = num_queues;
    d.config.queue_size = queue_size;
    d.config.bootindex = bootindex;
    Ok(d)
}

/// Where a `vhost-vsock-pci` without `uds-path=` puts its host side (connections from the
/// guest to host port P go to `<path>_P`, as Firecracker and cloud-hypervisor do).
pub fn default_vsock_path(cid: u64) -> PathBuf {
    std::env::temp_dir().join(format!("accel-vsock-{cid}.sock"))
}

/// The device a `-drive if=virtio` makes.
pub(super) fn drive_device(drive: &block::Drive) -> Device {
    let spec = crate::backends::row_for(&blk(drive.image.clone(), None, None, 1));
    new_device(
        "-drive",
        "virtio-blk-pci".into(),
        spec,
        drive.id.clone(),
        devices::PciPlace::default(),
        Use::Image {
            image: drive.image.clone(),
            serial: drive.serial.clone(),
        },
    )
}

/// What `resolve` adds to the configuration.
pub(super) struct Resolved {
    pub chardevs: Vec<ChardevConfig>,
    pub netdevs: Vec<NetdevConfig>,
    pub spawned: Vec<SpawnedBackendConfig>,
}

/// Turns built-in devices into vhost-user devices on made-up chardevs, and says what each
/// backend serves. `chardevs`: what a `virtconsole` may sit on; `serial_stdio`: accel's serial
/// port already uses stdio.
pub(super) fn resolve(
    mut b: Builtins,
    devices: &mut [Device],
    chardevs: Chardevs<'_>,
    cpus: u8,
    serial_stdio: bool,
) -> Result<Resolved, CliError> {
    let mut out = Resolved {
        chardevs: Vec::new(),
        netdevs: Vec::new(),
        spawned: Vec::new(),
    };
    let mut used_drives: Vec<String> = Vec::new();
    let Chardevs {
        locals,
        servers,
        clients,
        used: used_chardevs,
    } = chardevs;
    for dev in devices.iter_mut() {
        let Some(use_) = dev.builtin.take() else {
            if let Some((netdev, _)) = &dev.netdev
                && let Some(tap) = b.taps.iter().position(|t| &t.id == netdev)
            {
                let tap = b.taps.swap_remove(tap);
                let label = format!("-device {} (-netdev tap,id={})", dev.driver, tap.id);
                let chardev = add_chardev(
                    &mut out,
                    label,
                    BuiltinBackend::Net {
                        queue_pairs: tap.queues.unwrap_or(1),
                        tap: tap.source,
                    },
                );
                out.netdevs.push(NetdevConfig {
                    id: tap.id,
                    chardev,
                    queues: tap.queues,
                });
            }
            continue;
        };
        let err = |message: String| CliError::Invalid {
            option: dev.option.into(),
            message: format!("{}: {message}", dev.driver),
        };
        let mut label = format!("{} {}", dev.option, dev.driver);
        if let Some(id) = &dev.config.id {
            label.push_str(&format!(",id={id}"));
        }
        let backend = match use_ {
            Use::Image { image, serial } => {
                label = format!("-drive file={}", image.path.display());
                blk(image, serial, dev.config.num_queues, cpus)
            }
            Use::Drive { drive, serial } => {
                if used_drives.contains(&drive) {
                    return Err(err(format!("drive '{drive}' is already in use")));
                }
                let image = b
                    .drives
                    .iter()
                    .find(|d| !d.virtio && d.id.as_deref() == Some(drive.as_str()))
                    .map(|d| (d.image.clone(), d.serial.clone()))
                    .or_else(|| block::node_image(&b.nodes, &drive).map(|i| (i, None)))
                    .ok_or_else(|| {
                        err(format!(
                            "drive '{drive}' not found (define it with -drive \
                             file=IMG,if=none,id={drive} or -blockdev ...,node-name={drive})"
                        ))
                    })?;
                used_drives.push(drive);
                blk(image.0, serial.or(image.1), dev.config.num_queues, cpus)
            }
            Use::Rng { rng, rate_limit } => {
                let source = match rng {
                    None => PathBuf::from("/dev/urandom"),
                    Some(id) => b
                        .rngs
                        .iter()
                        .find(|r| r.id == id)
                        .map(|r| r.source.clone())
                        .ok_or_else(|| {
                            err(format!(
                                "rng '{id}' not found (define it with -object rng-random,id={id},filename=/dev/urandom)"
                            ))
                        })?,
                };
                BuiltinBackend::Rng { source, rate_limit }
            }
            Use::Vsock {
                guest_cid,
                uds_path,
            } => BuiltinBackend::Vsock {
                guest_cid,
                uds_path,
            },
            Use::Console { chardev, bus } => {
                let index = match &bus {
                    Some(name) => b
                        .serial_buses
                        .iter()
                        .position(|s| s.id.as_deref() == Some(name.as_str())),
                    // The first free one, else the first (which then says it is taken).
                    None => b
                        .serial_buses
                        .iter()
                        .position(|s| !s.used)
                        .or((!b.serial_buses.is_empty()).then_some(0)),
                };
                let bus = index
                    .and_then(|i| b.serial_buses.get_mut(i))
                    .ok_or_else(|| {
                        err("needs a -device virtio-serial-pci for it to sit on".into())
                    })?;
                if bus.used {
                    return Err(err(
                        "accel's virtio-serial-pci carries one virtconsole (port 0): add \
                         another virtio-serial-pci"
                            .into(),
                    ));
                }
                bus.used = true;
                dev.config.pci_slot = bus.pci.addr.map(|(s, _)| s);
                dev.pci_func = bus.pci.addr.map_or(0, |(_, f)| f);
                dev.config.pci_function = dev.pci_func;
                dev.config.pci_bus = bus.pci.bus.clone();
                if used_chardevs.contains(&chardev) {
                    return Err(err(format!("chardev '{chardev}' is already in use")));
                }
                used_chardevs.push(chardev.clone());
                let endpoint = console_endpoint(locals, servers, clients, &chardev).map_err(err)?;
                if endpoint == ConsoleEndpoint::Stdio && serial_stdio {
                    return Err(err(format!(
                        "chardev '{chardev}' is stdio, which the serial port already uses: \
                         add -serial none (or -nodefaults)"
                    )));
                }
                BuiltinBackend::Console(endpoint)
            }
        };
        dev.config.chardev = add_chardev(&mut out, label, backend);
    }
    for t in &b.taps {
        log::warn!("-netdev tap,id={}: no virtio-net-pci device uses it", t.id);
    }
    for s in b.serial_buses.iter().filter(|s| !s.used) {
        log::warn!(
            "-device virtio-serial-pci{}: no virtconsole on it; accel creates no device for it",
            s.id.as_deref()
                .map(|i| format!(",id={i}"))
                .unwrap_or_default()
        );
    }
    Ok(out)
}

fn blk(image: Image, serial: Option<String>, queues: Option<u16>, cpus: u8) -> BuiltinBackend {
    BuiltinBackend::Blk {
        image: image.path,
        read_only: image.read_only,
        direct_io: image.direct,
        serial,
        // Room for what the device asks (one queue per vCPU by default).
        num_queues: queues.unwrap_or(u16::from(cpus)).clamp(1, 64),
    }
}

fn add_chardev(out: &mut Resolved, label: String, backend: BuiltinBackend) -> String {
    let id = format!("#spawned{}", out.spawned.len());
    out.chardevs.push(ChardevConfig {
        id: id.clone(),
        // Filled in by `backends` when it creates the socket.
        path: PathBuf::new(),
        // A backend that dies is restarted: reconnect within a second.
        reconnect_secs: 1,
        server: false,
    });
    out.spawned.push(SpawnedBackendConfig {
        label,
        chardev: id.clone(),
        backend,
    });
    id
}

/// The endpoint of a `virtconsole`'s chardev.
fn console_endpoint(
    locals: &[LocalChardev],
    servers: &mut Vec<ServerChardev>,
    clients: &[ChardevConfig],
    id: &str,
) -> Result<ConsoleEndpoint, String> {
    if let Some(c) = locals.iter().find(|c| c.id == id) {
        return match &c.backend {
            SerialConfig::Stdio => Ok(ConsoleEndpoint::Stdio),
            SerialConfig::File(path) => Ok(ConsoleEndpoint::File(path.clone())),
            _ => Err(format!(
                "chardev '{id}': accel's console backend serves -chardev stdio, file,path=P or \
                 socket,path=P,server=on,wait=off (not pipe or null)"
            )),
        };
    }
    if let Some(i) = servers.iter().position(|s| s.id == id) {
        let s = &servers[i];
        let MonitorListen::Unix(path) = &s.listen else {
            return Err(format!(
                "chardev '{id}': accel's console backend listens on a unix socket (path=)"
            ));
        };
        if s.wait {
            return Err(format!(
                "chardev '{id}': the console backend does not wait for a client: add wait=off"
            ));
        }
        let path = path.clone();
        servers.remove(i);
        return Ok(ConsoleEndpoint::Socket(path));
    }
    if clients.iter().any(|c| c.id == id) {
        return Err(format!(
            "chardev '{id}' is a client socket: accel serves virtconsole with -chardev stdio, \
             file,path=P or socket,path=P,server=on,wait=off"
        ));
    }
    Err(format!(
        "chardev '{id}' not found (define it with -chardev stdio|file,id={id},...)"
    ))
}
