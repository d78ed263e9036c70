//! Character devices for accel's own ports: `-chardev stdio|file|pipe|null` (and a
//! `socket,server=on` one, see [`super::monitor`]) used by `-serial chardev:ID`,
//! `-device isa-debugcon,chardev=ID`; and the ISA debug devices themselves.
//!
//! Client `-chardev socket`s are vhost-user connections ([`super::devices`]).

use std::path::PathBuf;

use super::CliError;
use super::monitor::ServerChardev;
use super::props::Props;
use super::values;
use crate::config::{IsaDeviceConfig, MonitorListen, SerialConfig};

/// Backends handled here (the rest of `-chardev` is sockets).
pub(super) fn is_local(props: &Props) -> bool {
    matches!(
        props.get("backend"),
        Some("stdio" | "file" | "pipe" | "null")
    )
}

/// A `-chardev stdio|file|pipe|null` with its id.
#[derive(Debug, Clone)]
pub(super) struct LocalChardev {
    pub id: String,
    pub backend: SerialConfig,
    /// `mux=on`: a `-mon` may share it (accel has no HMP; that monitor is ignored).
    pub mux: bool,
}

/// `-chardev stdio|file|pipe|null,id=ID[,path=PATH][,mux=on][,signal=on|off][,logfile=..]`.
pub(super) fn parse_local(mut props: Props) -> Result<LocalChardev, CliError> {
    let backend = props.take_required("backend")?;
    let id = props
        .take_id("id")?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: "id".into(),
        })?;
    let mux = props.take_bool("mux")?.unwrap_or(false);
    let mut path = || -> Result<PathBuf, CliError> {
        let p = props.take_required("path")?;
        if p.is_empty() {
            return Err(props.invalid("path", &p, "a non-empty path"));
        }
        Ok(PathBuf::from(p))
    };
    let backend = match backend.as_str() {
        "stdio" => SerialConfig::Stdio,
        "null" => SerialConfig::Null,
        "file" => SerialConfig::File(path()?),
        _ => SerialConfig::Pipe(path()?),
    };
    if backend == SerialConfig::Stdio && props.take_bool("signal")? == Some(false) {
        // QEMU then passes Ctrl-C to the guest; accel keeps ISIG (Ctrl-C ends accel cleanly).
        log::warn!("-chardev stdio,signal=off: accepted; Ctrl-C still ends accel");
    }
    if let Some(v) = props.take("append")
        && values::parse_bool(&v) == Ok(true)
    {
        return Err(props.unsupported("append", &v, "accel truncates the file (append=off)"));
    }
    if let Some(log) = props.take("logfile") {
        return Err(props.unsupported("logfile", &log, "accel does not copy chardev output"));
    }
    props.finish(&[
        "backend (stdio/file/pipe/null)",
        "id",
        "path",
        "mux",
        "signal",
        "append (off)",
    ])?;
    Ok(LocalChardev { id, backend, mux })
}

/// Who uses a chardev: a `-serial chardev:ID` or an `isa-debugcon`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CharRef {
    Direct(SerialConfig),
    Chardev(String),
}

/// Resolves one chardev reference against the local chardevs and the server sockets; a
/// server socket used here is taken out of `servers` (it is not a monitor's).
pub(super) fn resolve_ref(
    option: &str,
    r: CharRef,
    locals: &[LocalChardev],
    servers: &mut Vec<ServerChardev>,
    used: &mut Vec<String>,
) -> Result<SerialConfig, CliError> {
    let id = match r {
        CharRef::Direct(c) => return Ok(c),
        CharRef::Chardev(id) => id,
    };
    if used.contains(&id) {
        return Err(CliError::Invalid {
            option: option.into(),
            message: format!("chardev '{id}' is already in use"),
        });
    }
    used.push(id.clone());
    if let Some(c) = locals.iter().find(|c| c.id == id) {
        return Ok(c.backend.clone());
    }
    if let Some(i) = servers.iter().position(|s| s.id == id) {
        let s = servers.remove(i);
        return match s.listen {
            MonitorListen::Unix(path) => Ok(SerialConfig::UnixServer { path, wait: s.wait }),
            _ => Err(CliError::UnsupportedValue {
                option: "-chardev".into(),
                property: "socket".into(),
                value: id,
                reason: "a serial or debug port on a socket must be a unix socket (path=PATH)"
                    .into(),
            }),
        };
    }
    Err(CliError::Invalid {
        option: option.into(),
        message: format!(
            "chardev '{id}' not found (accel's serial port and debug console take \
             -chardev stdio|file|pipe|null or socket,server=on,path=PATH)"
        ),
    })
}

/// `-serial chardev:ID` or one of `-serial`'s own spellings.
pub(super) fn parse_serial_ref(option: &'static str, value: &str) -> Result<CharRef, CliError> {
    if let Some(id) = value.strip_prefix("chardev:") {
        values::check_id(id).map_err(|values::BadValue(e)| CliError::InvalidValue {
            option: option.into(),
            property: "chardev".into(),
            value: id.into(),
            expected: e.into(),
        })?;
        return Ok(CharRef::Chardev(id.into()));
    }
    if let Some(path) = value.strip_prefix("pipe:") {
        if path.is_empty() {
            return Err(CliError::InvalidValue {
                option: option.into(),
                property: "backend".into(),
                value: value.into(),
                expected: "pipe:PATH with a non-empty PATH".into(),
            });
        }
        return Ok(CharRef::Direct(SerialConfig::Pipe(PathBuf::from(path))));
    }
    super::serial::parse_serial(option, value).map(CharRef::Direct)
}

/// An ISA `-device` before its chardev is resolved.
#[derive(Debug)]
pub(super) enum IsaDevice {
    DebugCon {
        iobase: u16,
        chardev: String,
        readback: u8,
    },
    DebugExit {
        iobase: u16,
        iosize: u8,
    },
}

/// Whether `-device DRIVER` is one of the ISA devices here.
pub(super) fn is_isa_driver(driver: Option<&str>) -> bool {
    matches!(driver, Some("isa-debugcon" | "isa-debug-exit"))
}

fn take_u16(props: &mut Props, key: &str, default: u16) -> Result<u16, CliError> {
    Ok(props
        .take_uint_in(key, 0, 0xffff)?
        .and_then(|v| u16::try_from(v).ok())
        .unwrap_or(default))
}

/// `-device isa-debugcon[,iobase=0xe9],chardev=ID[,readback=0xe9]` and
/// `-device isa-debug-exit[,iobase=0x501][,iosize=2]` (QEMU's defaults).
pub(super) fn parse_isa_device(mut props: Props) -> Result<IsaDevice, CliError> {
    let driver = props.take_required("driver")?;
    props.take_id("id")?;
    if let Some(bus) = props.take("bus").filter(|b| b != "isa.0") {
        return Err(props.unsupported("bus", &bus, "accel has one ISA bus (isa.0)"));
    }
    let dev = if driver == "isa-debugcon" {
        let iobase = take_u16(&mut props, "iobase", 0xe9)?;
        let chardev = props
            .take_id("chardev")?
            .ok_or_else(|| CliError::MissingProperty {
                option: props.option().into(),
                property: "chardev".into(),
            })?;
        let readback = props
            .take_uint_in("readback", 0, 0xff)?
            .and_then(|v| u8::try_from(v).ok())
            .unwrap_or(0xe9);
        props.finish(&["id", "bus", "iobase", "chardev", "readback"])?;
        IsaDevice::DebugCon {
            iobase,
            chardev,
            readback,
        }
    } else {
        let iobase = take_u16(&mut props, "iobase", 0x501)?;
        let iosize = match props.take_uint("iosize")? {
            None => 2,
            Some(s @ (1 | 2 | 4)) => s as u8,
            Some(s) => return Err(props.invalid("iosize", &s.to_string(), "1, 2 or 4")),
        };
        props.finish(&["id", "bus", "iobase", "iosize"])?;
        IsaDevice::DebugExit { iobase, iosize }
    };
    Ok(dev)
}

/// The config of a parsed ISA device, its chardev resolved.
pub(super) fn resolve_isa(
    dev: IsaDevice,
    locals: &[LocalChardev],
    servers: &mut Vec<ServerChardev>,
    used: &mut Vec<String>,
) -> Result<IsaDeviceConfig, CliError> {
    Ok(match dev {
        IsaDevice::DebugCon {
            iobase,
            chardev,
            readback,
        } => {
            let output = resolve_ref(
                "-device",
                CharRef::Chardev(chardev.clone()),
                locals,
                servers,
                used,
            )?;
            if matches!(output, SerialConfig::UnixServer { .. }) {
                return Err(CliError::UnsupportedValue {
                    option: "-device".into(),
                    property: "chardev".into(),
                    value: chardev,
                    reason: "isa-debugcon writes to stdio, file, pipe or null chardevs".into(),
                });
            }
            IsaDeviceConfig::DebugCon {
                iobase,
                output,
                readback,
            }
        }
        IsaDevice::DebugExit { iobase, iosize } => IsaDeviceConfig::DebugExit { iobase, iosize },
    })
}
