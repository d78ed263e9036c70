//! `-chardev socket`, `-netdev vhost-user` and `-device` (vhost-user devices only), with the
//! cross-checks between them.

use std::path::PathBuf;

use super::CliError;
use super::props::Props;
use super::values;
use crate::config::{ChardevConfig, VhostUserDeviceConfig, VhostUserKind};

pub(super) const CHARDEV_PROPS: &[&str] = &["backend (socket)", "id", "path", "reconnect"];
pub(super) const NETDEV_PROPS: &[&str] = &["type (vhost-user)", "id", "chardev", "queues"];
/// Drivers `-device` accepts (each also as `<name>-non-transitional`).
pub(super) const DRIVERS: &[&str] = &[
    "vhost-user-blk-pci",
    "vhost-user-vsock-pci",
    "vhost-user-rng-pci",
    "vhost-user-console-pci",
    "vhost-user-device-pci",
    "virtio-net-pci",
];
const COMMON_PROPS: &[&str] = &[
    "id",
    "addr",
    "bus (pci.0/pcie.0)",
    "disable-legacy (on/auto)",
    "disable-modern (off)",
    "romfile (empty)",
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
            "accel's -chardev is only for vhost-user backends: use 'socket,id=ID,path=PATH'",
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
    })
}

/// One `-netdev vhost-user,id=ID,chardev=CHR[,queues=N]`.
#[derive(Debug)]
pub(super) struct Netdev {
    pub id: String,
    pub chardev: String,
    pub queues: Option<u16>,
}

pub(super) fn parse_netdev(mut props: Props) -> Result<Netdev, CliError> {
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
    props.finish(NETDEV_PROPS)?;
    Ok(Netdev {
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
}

fn required_id(props: &mut Props, key: &str) -> Result<String, CliError> {
    props
        .take_id(key)?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: key.into(),
        })
}

fn u16_in(props: &mut Props, key: &str, min: u64, max: u64) -> Result<Option<u16>, CliError> {
    Ok(props
        .take_uint_in(key, min, max)?
        .and_then(|v| u16::try_from(v).ok()))
}

fn queue_size(props: &mut Props, key: &str) -> Result<Option<u16>, CliError> {
    let Some(raw) = props.take(key) else {
        return Ok(None);
    };
    match values::parse_uint(&raw) {
        Ok(v) if v.is_power_of_two() && (2..=1024).contains(&v) => Ok(u16::try_from(v).ok()),
        _ => Err(props.invalid(key, &raw, "a power of two in 2..=1024")),
    }
}

pub(super) fn parse_device(mut props: Props) -> Result<Device, CliError> {
    let option = props.option();
    let driver = props.take_required("driver")?;
    let base = driver.strip_suffix("-non-transitional").unwrap_or(&driver);
    let mut config = VhostUserDeviceConfig {
        kind: VhostUserKind::Blk,
        id: props.take_id("id")?,
        chardev: String::new(),
        num_queues: None,
        queue_size: None,
        pci_slot: None,
        mac: None,
        bootindex: None,
    };
    let mut netdev = None;
    let mut specific: Vec<&str> = vec![];
    match base {
        "vhost-user-blk-pci" => {
            config.chardev = required_id(&mut props, "chardev")?;
            config.num_queues = u16_in(&mut props, "num-queues", 1, MAX_QUEUES)?;
            config.queue_size = queue_size(&mut props, "queue-size")?;
            config.bootindex = bootindex(&mut props)?;
            specific.extend(["chardev", "num-queues", "queue-size", "bootindex"]);
        }
        "vhost-user-vsock-pci" | "vhost-user-rng-pci" | "vhost-user-console-pci" => {
            config.kind = match base {
                "vhost-user-vsock-pci" => VhostUserKind::Vsock,
                "vhost-user-rng-pci" => VhostUserKind::Rng,
                _ => VhostUserKind::Console,
            };
            config.chardev = required_id(&mut props, "chardev")?;
            specific.push("chardev");
        }
        "vhost-user-device-pci" | "vhost-user-test-device-pci" => {
            config.chardev = required_id(&mut props, "chardev")?;
            let virtio_id = props
                .take_uint_in("virtio-id", 1, u64::from(u32::MAX))?
                .ok_or_else(|| CliError::MissingProperty {
                    option: option.into(),
                    property: "virtio-id".into(),
                })?;
            let num_queues = u16_in(&mut props, "num_vqs", 1, MAX_QUEUES)?;
            let config_size = props.take_uint_in("config_size", 0, 4096)?.unwrap_or(0);
            config.queue_size = queue_size(&mut props, "vq_size")?;
            config.num_queues = num_queues;
            config.kind = VhostUserKind::Generic {
                virtio_id: u32::try_from(virtio_id).unwrap_or(u32::MAX),
                num_queues: num_queues.unwrap_or(1),
                config_size: u32::try_from(config_size).unwrap_or(0),
            };
            specific.extend(["chardev", "virtio-id", "num_vqs", "vq_size", "config_size"]);
        }
        "virtio-net-pci" => {
            config.kind = VhostUserKind::Net;
            let id = required_id(&mut props, "netdev")?;
            let mq = props.take_bool("mq")?.unwrap_or(false);
            netdev = Some((id, mq));
            config.mac = props.take_with("mac", values::parse_mac)?;
            config.bootindex = bootindex(&mut props)?;
            specific.extend(["netdev", "mac", "mq", "bootindex"]);
        }
        _ => {
            let hint = if base.starts_with("virtio-") {
                "accel's virtio devices are vhost-user backends in other processes"
            } else {
                "accel emulates no other devices"
            };
            return Err(props.unsupported(
                "driver",
                &driver,
                &format!("{hint}; supported drivers: {}", DRIVERS.join(", ")),
            ));
        }
    }
    let pci = props.take_with("addr", values::parse_pci_addr)?;
    if let Some((slot, _)) = pci {
        if slot == 0 {
            return Err(props.unsupported(
                "addr",
                "0",
                "slot 0 holds the PCI host bridge; use slots 1..1f",
            ));
        }
        config.pci_slot = Some(slot);
    }
    match props.take("bus").as_deref() {
        None | Some("pci.0") | Some("pcie.0") => {}
        Some(other) => {
            return Err(props.unsupported(
                "bus",
                other,
                "accel has a single PCI bus (pci.0, or pcie.0 on q35)",
            ));
        }
    }
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
    let mut supported = specific;
    supported.extend_from_slice(COMMON_PROPS);
    props.finish(&supported)?;
    Ok(Device {
        option,
        driver,
        config,
        netdev,
        pci_func: pci.map_or(0, |(_, f)| f),
    })
}

fn bootindex(props: &mut Props) -> Result<Option<u32>, CliError> {
    Ok(props
        .take_uint_in("bootindex", 0, u64::from(u32::MAX))?
        .and_then(|v| u32::try_from(v).ok()))
}

/// Resolves netdevs, and checks that every chardev/netdev reference exists, each is used
/// once, and PCI slots do not collide.
pub(super) fn resolve(
    chardevs: &[ChardevConfig],
    netdevs: Vec<Netdev>,
    devices: Vec<Device>,
) -> Result<Vec<VhostUserDeviceConfig>, CliError> {
    let mut used_netdevs: Vec<String> = Vec::new();
    let mut used_chardevs: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut slots: Vec<u8> = Vec::new();
    let mut out = Vec::new();
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
            config.num_queues = match (netdev.queues, mq) {
                (None, _) => None,
                (Some(q), true) => Some(q * 2),
                (Some(q), false) => {
                    if q > 1 {
                        log::warn!(
                            "-netdev {netdev_id} has queues={q} but virtio-net-pci has mq=off: \
                             the guest gets one queue pair (add mq=on to use all)"
                        );
                    }
                    Some(2)
                }
            };
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
        if dev.pci_func != 0 {
            return Err(err(
                "multifunction PCI devices are not supported: use function 0 (addr=SLOT.0)".into(),
            ));
        }
        if let Some(slot) = config.pci_slot {
            if slots.contains(&slot) {
                return Err(err(format!("PCI slot 0x{slot:02x} is already in use")));
            }
            slots.push(slot);
        }
        out.push(config);
    }
    for netdev in &netdevs {
        if !used_netdevs.contains(&netdev.id) {
            log::warn!("-netdev {}: no virtio-net-pci device uses it", netdev.id);
        }
    }
    Ok(out)
}
