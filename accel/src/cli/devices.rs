//! `-chardev socket`, `-netdev vhost-user` and `-device` (vhost-user devices only), with the
//! cross-checks between them.

use std::path::PathBuf;

use super::CliError;
use super::props::Props;
use super::values;
use vu_spec::devices::{DEVICES, DeviceSpec, Prop, PropKind, find_driver};
use vu_spec::fs;

use crate::config::{ChardevConfig, NetdevConfig, VhostUserDeviceConfig};

pub(super) const CHARDEV_PROPS: &[&str] = &["backend (socket)", "id", "path", "reconnect"];
pub(super) const NETDEV_PROPS: &[&str] =
    &["type (vhost-user)", "id", "chardev", "queues", "vhostforce"];
pub(super) const COMMON_PROPS: &[&str] = &[
    "id",
    "addr",
    "bus (pci.0/pcie.0 or a bridge's id)",
    "disable-legacy (on/auto)",
    "disable-modern (off)",
    "romfile (empty)",
    "vectors (1..)",
    "packed",
    "page-per-vq",
    "multifunction",
];
/// Most virtqueues a virtio-pci device can have in QEMU (VIRTIO_QUEUE_MAX).
const MAX_QUEUES: u64 = 1024;

/// `-chardev socket,id=ID,path=PATH[,reconnect=SECONDS]`: accel connects as a client.
pub(super) fn parse_chardev(mut props: Props) -> Result<ChardevConfig, CliError> {
    let backend = props.take_required("backend")?;
    if backend != "socket" {
        return Err(props.unsupported(
            "backend",
            &backend,
            "accel's -chardev kinds: socket (vhost-user backends, -mon, -serial) and \
             stdio, file, pipe or null (-serial, isa-debugcon, virtconsole)",
        ));
    }
    let id = required_id(&mut props, "id")?;
    for key in ["host", "port", "fd"] {
        if let Some(v) = props.take(key) {
            return Err(props.unsupported(
                key,
                &v,
                "vhost-user needs a unix socket: use path=PATH",
            ));
        }
    }
    let path = props.take_required("path")?;
    if path.is_empty() {
        return Err(props.invalid("path", &path, "a non-empty socket path"));
    }
    if props.take_bool("server")? == Some(true) {
        return Err(props.unsupported(
            "server",
            "on",
            "accel connects to the vhost-user backend's socket as a client (server=off)",
        ));
    }
    if props.take("wait").is_some() {
        return Err(CliError::Invalid {
            option: props.option().into(),
            message: "'wait' option is incompatible with socket in client connect mode".into(),
        });
    }
    let reconnect_secs = props.take_uint("reconnect")?.unwrap_or(0);
    props.finish(CHARDEV_PROPS)?;
    Ok(ChardevConfig {
        id,
        path: PathBuf::from(path),
        reconnect_secs,
        server: false,
    })
}

/// Moves the `server=on` chardevs that vhost-user devices (or their netdevs) use from
/// `servers` to `chardevs`: accel listens on their path and the backend connects (OVS-DPDK's
/// `dpdkvhostuserclient`, DPDK and SPDK client mode, libvirt's `mode='server'`).
pub(super) fn take_server_chardevs(
    servers: &mut Vec<super::monitor::ServerChardev>,
    netdevs: &[NetdevConfig],
    devices: &[Device],
    chardevs: &mut Vec<ChardevConfig>,
) -> Result<(), CliError> {
    let used = |id: &str| {
        netdevs.iter().any(|n| n.chardev == id) || devices.iter().any(|d| d.config.chardev == id)
    };
    let mut i = 0;
    while i < servers.len() {
        if !used(&servers[i].id) {
            i += 1;
            continue;
        }
        let s = servers.remove(i);
        let crate::config::MonitorListen::Unix(path) = s.listen else {
            return Err(CliError::Invalid {
                option: "-chardev".into(),
                message: format!(
                    "'{}': vhost-user needs a unix socket: use path=PATH with server=on",
                    s.id
                ),
            });
        };
        chardevs.push(ChardevConfig {
            id: s.id,
            path,
            reconnect_secs: 0,
            server: true,
        });
    }
    Ok(())
}

pub(super) fn parse_netdev(mut props: Props) -> Result<NetdevConfig, CliError> {
    let kind = props.take_required("type")?;
    if kind != "vhost-user" {
        return Err(props.unsupported(
            "type",
            &kind,
            "accel networking is vhost-user only: -netdev vhost-user,id=ID,chardev=CHR",
        ));
    }
    let id = required_id(&mut props, "id")?;
    let chardev = required_id(&mut props, "chardev")?;
    let queues = props.take_uint_in("queues", 1, MAX_QUEUES / 2)?;
    // vhost-user is the only net backend accel has: "force vhost" asks for what it does.
    props.take_bool("vhostforce")?;
    props.finish(NETDEV_PROPS)?;
    Ok(NetdevConfig {
        id,
        chardev,
        // In range by the check above.
        queues: queues.and_then(|q| u16::try_from(q).ok()),
    })
}

/// A parsed `-device` before cross-checks (net still names its netdev).
#[derive(Debug)]
pub(super) struct Device {
    pub option: &'static str,
    pub driver: String,
    pub config: VhostUserDeviceConfig,
    /// virtio-net-pci: `netdev=` and `mq=`.
    pub netdev: Option<(String, bool)>,
    pub pci_func: u8,
    /// A built-in spelling's needs (served by a backend accel starts).
    pub builtin: Option<super::builtin::Use>,
}

fn required_id(props: &mut Props, key: &str) -> Result<String, CliError> {
    props
        .take_id(key)?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: key.into(),
        })
}

pub(super) fn u16_in(
    props: &mut Props,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u16>, CliError> {
    Ok(props
        .take_uint_in(key, min, max)?
        .and_then(|v| u16::try_from(v).ok()))
}

pub(super) fn queue_size(props: &mut Props, key: &str) -> Result<Option<u16>, CliError> {
    let Some(raw) = props.take(key) else {
        return Ok(None);
    };
    match values::parse_uint(&raw) {
        Ok(v) if v.is_power_of_two() && (2..=1024).contains(&v) => Ok(u16::try_from(v).ok()),
        _ => Err(props.invalid(key, &raw, "a power of two in 2..=1024")),
    }
}

/// The canonical `-device` driver of every device kind, for error messages and help.
fn drivers() -> Vec<&'static str> {
    DEVICES.iter().map(DeviceSpec::driver).collect()
}

/// The device-specific properties of one `-device`, as its row describes them.
#[derive(Debug, Default)]
struct DeviceValues {
    chardev: Option<String>,
    netdev: Option<String>,
    mq: bool,
    num_queues: Option<u16>,
    queue_size: Option<u16>,
    virtio_id: Option<u32>,
    config_size: Option<u32>,
    mac: Option<[u8; 6]>,
    tag: Option<String>,
    bootindex: Option<u32>,
    rx_queue_size: Option<u16>,
    tx_queue_size: Option<u16>,
    hidden_features: u64,
}

fn take_prop(props: &mut Props, p: &Prop, v: &mut DeviceValues) -> Result<(), CliError> {
    let key = p.name;
    match p.kind {
        PropKind::Chardev => v.chardev = Some(required_id(props, key)?),
        PropKind::Netdev => v.netdev = Some(required_id(props, key)?),
        PropKind::Mq => v.mq = props.take_bool(key)?.unwrap_or(false),
        PropKind::NumQueues => v.num_queues = u16_in(props, key, 1, MAX_QUEUES)?,
        // The high-priority queue comes first.
        PropKind::RequestQueues => {
            v.num_queues = u16_in(props, key, 1, MAX_QUEUES - 1)?.map(|n| n + 1);
        }
        PropKind::Tag => {
            let tag = props.take_required(key)?;
            if tag.is_empty() || tag.len() > fs::FS_TAG_LEN {
                return Err(props.invalid(key, &tag, "a tag of 1 to 36 bytes"));
            }
            v.tag = Some(tag);
        }
        PropKind::QueueSize => v.queue_size = queue_size(props, key)?,
        PropKind::VirtioId => {
            let id = props
                .take_uint_in(key, 1, u64::from(u32::MAX))?
                .ok_or_else(|| CliError::MissingProperty {
                    option: props.option().into(),
                    property: key.into(),
                })?;
            v.virtio_id = u32::try_from(id).ok();
        }
        PropKind::ConfigSize => {
            let size = props.take_uint_in(key, 0, 4096)?;
            v.config_size = size.and_then(|s| u32::try_from(s).ok());
        }
        PropKind::Mac => v.mac = props.take_with(key, values::parse_mac)?,
        PropKind::BootIndex => {
            v.bootindex = props
                .take_uint_in(key, 0, u64::from(u32::MAX))?
                .and_then(|b| u32::try_from(b).ok());
        }
        PropKind::RxQueueSize => v.rx_queue_size = queue_size(props, key)?,
        PropKind::TxQueueSize => v.tx_queue_size = queue_size(props, key)?,
        PropKind::FeatureSwitch(bit) => {
            if props.take_bool(key)? == Some(false) {
                v.hidden_features |= 1 << bit;
            }
        }
    }
    Ok(())
}

/// A driver no row names: one line saying what accel has.
fn unknown_driver(props: &Props, driver: &str) -> CliError {
    let list = drivers().join(", ");
    let reason = if matches!(driver, "help" | "?") {
        format!("accel's -device drivers: {list}")
    } else if ["usb", "xhci", "uhci", "ehci", "ohci"]
        .iter()
        .any(|u| driver.contains(u))
    {
        "accel has no USB controller or USB devices (lines with -machine usb=off need none)"
            .to_string()
    } else if driver.starts_with("virtio-") {
        format!(
            "accel's virtio devices are vhost-user backends in other processes; supported drivers: {list}"
        )
    } else {
        format!("accel emulates no other devices; supported drivers: {list}")
    };
    props.unsupported("driver", driver, &reason)
}

pub(super) fn parse_device(mut props: Props) -> Result<Device, CliError> {
    let option = props.option();
    let driver = props.take_required("driver")?;
    let Some(spec) = find_driver(&driver) else {
        return Err(unknown_driver(&props, &driver));
    };
    let id = props.take_id("id")?;
    let mut v = DeviceValues::default();
    for p in spec.props {
        take_prop(&mut props, p, &mut v)?;
    }
    let pci = take_common_props(&mut props)?;
    let transport = take_transport_props(&mut props)?;
    let mut supported: Vec<&str> = spec.props.iter().map(|p| p.name).collect();
    supported.extend_from_slice(COMMON_PROPS);
    props.finish(&supported)?;
    let config = VhostUserDeviceConfig {
        spec,
        id,
        // A netdev's chardev is filled in by `resolve`.
        chardev: v.chardev.unwrap_or_default(),
        virtio_id: spec.virtio_id(v.virtio_id),
        config_size: spec.config_size(v.config_size),
        num_queues: v.num_queues,
        queue_size: v.rx_queue_size.or(v.queue_size),
        pci_slot: pci.addr.map(|(slot, _)| slot),
        pci_function: pci.addr.map_or(0, |(_, f)| f),
        pci_bus: pci.bus,
        mac: v.mac,
        tag: v.tag,
        bootindex: v.bootindex,
        tx_queue_size: v.tx_queue_size,
        hidden_features: v.hidden_features,
        msix_vectors: transport.vectors,
        packed: transport.packed,
    };
    Ok(Device {
        option,
        driver,
        config,
        netdev: v.netdev.map(|n| (n, v.mq)),
        pci_func: pci.addr.map_or(0, |(_, f)| f),
        builtin: None,
    })
}

/// Where a `-device` goes: `addr=SLOT[.FN]` on `bus=` (`None`: the root bus).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PciPlace {
    pub addr: Option<(u8, u8)>,
    pub bus: Option<String>,
}

/// `addr=` and `bus=` (the root bus `pci.0`/`pcie.0`, or a bridge's id, checked when the
/// whole line is known).
pub(super) fn take_pci_place(props: &mut Props) -> Result<PciPlace, CliError> {
    let addr = props.take_with("addr", values::parse_pci_addr)?;
    let bus = props
        .take("bus")
        .filter(|b| !matches!(b.as_str(), "pci.0" | "pcie.0"));
    if let (Some((0, _)), None) = (addr, &bus) {
        return Err(props.unsupported(
            "addr",
            "0",
            "slot 0 holds the PCI host bridge; use slots 1..1f",
        ));
    }
    Ok(PciPlace { addr, bus })
}

/// The properties every `-device` takes: `addr=` (slot, function), `bus=`, and the
/// transport switches accel only accepts at their modern-only values.
pub(super) fn take_common_props(props: &mut Props) -> Result<PciPlace, CliError> {
    let pci = take_pci_place(props)?;
    if let Some(v) = props.take("disable-legacy") {
        match v.as_str() {
            "auto" => {}
            _ => match values::parse_bool(&v) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(props.unsupported(
                        "disable-legacy",
                        &v,
                        "accel's virtio-pci devices are modern-only (disable-legacy=on/auto)",
                    ));
                }
                Err(_) => return Err(props.invalid("disable-legacy", &v, "on, off or auto")),
            },
        }
    }
    if props.take_bool("disable-modern")? == Some(true) {
        return Err(props.unsupported(
            "disable-modern",
            "on",
            "accel's virtio-pci devices are modern-only",
        ));
    }
    if let Some(rom) = props.take("romfile").filter(|r| !r.is_empty()) {
        return Err(props.unsupported("romfile", &rom, "accel loads no option ROMs"));
    }
    Ok(pci)
}

/// Transport choices QEMU's virtio-pci devices take.
pub(super) struct Transport {
    pub vectors: Option<u16>,
    pub packed: bool,
}

/// `vectors=N` (MSI-X table size; 0 would mean INTx, which accel lacks), `packed=on|off`,
/// `page-per-vq=on|off` (QEMU's notify layout: a guest finds its notify addresses through the
/// capability's multiplier either way, so accel keeps its compact layout), `multifunction=off`.
pub(super) fn take_transport_props(props: &mut Props) -> Result<Transport, CliError> {
    let vectors = match props.take_uint("vectors")? {
        None => None,
        Some(0) => {
            return Err(props.unsupported(
                "vectors",
                "0",
                "accel's virtio-pci devices interrupt through MSI-X only (no INTx)",
            ));
        }
        Some(n) => Some(
            u16::try_from(n)
                .ok()
                .filter(|&n| u64::from(n) <= MAX_QUEUES + 1)
                .ok_or_else(|| props.invalid("vectors", &n.to_string(), "1..=1025"))?,
        ),
    };
    let packed = props.take_bool("packed")?.unwrap_or(false);
    props.take_bool("page-per-vq")?;
    // Function 0 says "multi-function" whenever its slot has other functions.
    props.take_bool("multifunction")?;
    Ok(Transport { vectors, packed })
}

/// Queues of a device on `netdev`: two per pair, all pairs only with `mq=on` (QEMU).
pub(super) fn netdev_queues(netdev: &NetdevConfig, mq: bool) -> Option<u16> {
    match (netdev.queues, mq) {
        (None, _) => None,
        (Some(q), true) => Some(q * 2),
        (Some(q), false) => {
            if q > 1 {
                log::warn!(
                    "-netdev {} has queues={q} but virtio-net-pci has mq=off: \
                     the guest gets one queue pair (add mq=on to use all)",
                    netdev.id
                );
            }
            Some(2)
        }
    }
}

/// Chardev and netdev ids are unique, and every netdev's chardev exists.
fn check_chardevs_and_netdevs(
    chardevs: &[ChardevConfig],
    netdevs: &[NetdevConfig],
) -> Result<(), CliError> {
    for (i, chardev) in chardevs.iter().enumerate() {
        if chardevs[..i].iter().any(|c| c.id == chardev.id) {
            return Err(CliError::Invalid {
                option: "-chardev".into(),
                message: format!("duplicate chardev id '{}'", chardev.id),
            });
        }
    }
    for (i, netdev) in netdevs.iter().enumerate() {
        if netdevs[..i].iter().any(|n| n.id == netdev.id) {
            return Err(CliError::Invalid {
                option: "-netdev".into(),
                message: format!("duplicate netdev id '{}'", netdev.id),
            });
        }
        if !chardevs.iter().any(|c| c.id == netdev.chardev) {
            return Err(CliError::Invalid {
                option: "-netdev".into(),
                message: format!(
                    "{}: chardev '{}' not found (define it with -chardev socket,id={},path=...)",
                    netdev.id, netdev.chardev, netdev.chardev
                ),
            });
        }
    }
    Ok(())
}

/// Resolves netdevs, and checks that every chardev/netdev reference exists and each is used
/// once (PCI placement is checked by `topology::resolve`).
pub(super) fn resolve(
    chardevs: &[ChardevConfig],
    netdevs: &[NetdevConfig],
    devices: Vec<Device>,
) -> Result<Vec<VhostUserDeviceConfig>, CliError> {
    check_chardevs_and_netdevs(chardevs, netdevs)?;
    let mut used_netdevs: Vec<String> = Vec::new();
    let mut used_chardevs: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for dev in devices {
        let err = |message: String| CliError::Invalid {
            option: dev.option.into(),
            message: format!("{}: {message}", dev.driver),
        };
        let mut config = dev.config;
        if let Some((netdev_id, mq)) = &dev.netdev {
            let netdev = netdevs.iter().find(|n| &n.id == netdev_id).ok_or_else(|| {
                err(format!(
                    "netdev '{netdev_id}' not found (define it with -netdev \
                         vhost-user,id={netdev_id},chardev=...)"
                ))
            })?;
            if used_netdevs.contains(netdev_id) {
                return Err(err(format!("netdev '{netdev_id}' is already in use")));
            }
            used_netdevs.push(netdev_id.clone());
            config.chardev = netdev.chardev.clone();
            config.num_queues = netdev_queues(netdev, *mq);
        }
        if !chardevs.iter().any(|c| c.id == config.chardev) {
            return Err(err(format!(
                "chardev '{}' not found (define it with -chardev socket,id={},path=...)",
                config.chardev, config.chardev
            )));
        }
        if used_chardevs.contains(&config.chardev) {
            return Err(err(format!(
                "chardev '{}' is already in use by another device",
                config.chardev
            )));
        }
        used_chardevs.push(config.chardev.clone());
        if let Some(id) = &config.id {
            if ids.contains(id) {
                return Err(err(format!("duplicate device id '{id}'")));
            }
            ids.push(id.clone());
        }
        out.push(config);
    }
    for netdev in netdevs {
        if !used_netdevs.contains(&netdev.id) {
            log::warn!("-netdev {}: no virtio-net-pci device uses it", netdev.id);
        }
    }
    Ok(out)
}
