//! QMP monitors and process options: `-qmp`, `-chardev socket,...,server=on` + `-mon`,
//! `-uuid`.

use std::path::PathBuf;

use super::CliError;
use super::props::{Flags, Props};
use super::values;
use crate::config::{MonitorConfig, MonitorListen};

const QMP_SYNTAX: &str = "unix:PATH,server=on[,wait=off] or tcp:HOST:PORT,server=on[,wait=off]";
pub(super) const SERVER_CHARDEV_PROPS: &[&str] = &[
    "backend (socket)",
    "id",
    "path",
    "host",
    "port",
    "fd",
    "server (on)",
    "wait",
];

/// A `-chardev socket,...,server=on`: a listening socket, usable only by a `-mon`.
#[derive(Debug, Clone)]
pub(super) struct ServerChardev {
    pub id: String,
    pub listen: MonitorListen,
    pub wait: bool,
}

/// One `-mon [chardev=]ID[,mode=control|readline][,pretty=on|off]`.
#[derive(Debug, Clone)]
pub(super) struct Mon {
    pub chardev: String,
    pub pretty: bool,
    /// `mode=readline` (QEMU's default): the human monitor.
    pub hmp: bool,
}

/// Whether a `-chardev` occurrence asks for server mode (then [`parse_server_chardev`] takes
/// it; client sockets are the vhost-user chardevs).
pub(super) fn is_server(props: &Props) -> Result<bool, CliError> {
    match props.get("server") {
        None => Ok(false),
        Some(v) => {
            values::parse_bool(v).map_err(|values::BadValue(e)| props.invalid("server", v, e))
        }
    }
}

/// `-chardev socket,id=ID,(path=PATH|host=H,port=P|fd=N),server=on[,wait=off]`.
pub(super) fn parse_server_chardev(mut props: Props) -> Result<ServerChardev, CliError> {
    let backend = props.take_required("backend")?;
    if backend != "socket" {
        return Err(props.unsupported(
            "backend",
            &backend,
            "accel's server chardevs are sockets for -mon: use 'socket,id=ID,path=PATH,server=on'",
        ));
    }
    let id = props
        .take_id("id")?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: "id".into(),
        })?;
    props.take_bool("server")?;
    let wait = props.take_bool("wait")?.unwrap_or(true);
    let listen = take_listen(&mut props)?;
    props.finish(SERVER_CHARDEV_PROPS)?;
    Ok(ServerChardev { id, listen, wait })
}

/// The address part of a server socket: exactly one of path=, host=+port=, fd=.
fn take_listen(props: &mut Props) -> Result<MonitorListen, CliError> {
    let path = props.take("path");
    let host = props.take("host");
    let port = props.take("port");
    let fd = props.take("fd");
    match (path, host, port, fd) {
        (Some(path), None, None, None) if !path.is_empty() => {
            Ok(MonitorListen::Unix(PathBuf::from(path)))
        }
        (None, host, Some(port), None) => {
            let port = parse_port(props, &port)?;
            Ok(MonitorListen::Tcp {
                host: host.unwrap_or_else(|| "0.0.0.0".into()),
                port,
            })
        }
        (None, None, None, Some(fd)) => match values::parse_uint(&fd) {
            Ok(n) if (3..=i32::MAX as u64).contains(&n) => Ok(MonitorListen::Fd(n as i32)),
            _ => Err(props.invalid("fd", &fd, "an inherited file descriptor number (>= 3)")),
        },
        _ => Err(CliError::Invalid {
            option: props.option().into(),
            message: "a server socket needs exactly one of path=PATH, host=HOST,port=PORT or \
                      fd=N"
                .into(),
        }),
    }
}

fn parse_port(props: &Props, port: &str) -> Result<u16, CliError> {
    port.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| props.invalid("port", port, "a TCP port (1-65535)"))
}

/// `-qmp unix:PATH,server=on,wait=off` / `-qmp tcp:HOST:PORT,server,nowait`: a monitor on
/// its own chardev, labelled `label` (QEMU: `compat_monitorN`).
pub(super) fn parse_qmp(
    option: &'static str,
    value: &str,
    label: String,
    hmp: bool,
) -> Result<MonitorConfig, CliError> {
    let invalid = || CliError::InvalidValue {
        option: option.into(),
        property: "backend".into(),
        value: value.into(),
        expected: QMP_SYNTAX.into(),
    };
    let (listen, rest) = if let Some(rest) = value.strip_prefix("unix:") {
        let mut props = Props::parse(option, rest, Some("path"), Flags::Allowed)?;
        let path = props
            .take("path")
            .filter(|p| !p.is_empty())
            .ok_or_else(invalid)?;
        (MonitorListen::Unix(PathBuf::from(path)), props)
    } else if let Some(rest) = value.strip_prefix("tcp:") {
        let mut props = Props::parse(option, rest, Some("addr"), Flags::Allowed)?;
        let addr = props.take("addr").ok_or_else(invalid)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
        let port = parse_port(&props, port)?;
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        (MonitorListen::Tcp { host, port }, props)
    } else {
        return Err(invalid());
    };
    let mut props = rest;
    let server = props.take_bool("server")?.unwrap_or(false);
    let wait = props.take_bool("wait")?.unwrap_or(true);
    let pretty = props.take_bool("pretty")?.unwrap_or(false);
    props.finish(&["server (on)", "wait", "pretty"])?;
    if !server {
        return Err(CliError::UnsupportedValue {
            option: option.into(),
            property: "server".into(),
            value: "off".into(),
            reason: "accel's monitors only listen: add server=on (and usually wait=off)".into(),
        });
    }
    Ok(MonitorConfig {
        label,
        listen,
        pretty,
        wait,
        hmp,
    })
}

/// `-mon [chardev=]ID[,mode=control|readline][,pretty=on|off]`.
pub(super) fn parse_mon(mut props: Props) -> Result<Mon, CliError> {
    let chardev = props
        .take_id("chardev")?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: "chardev".into(),
        })?;
    let mode = props.take("mode").unwrap_or_else(|| "readline".into());
    let hmp = match mode.as_str() {
        "control" => false,
        "readline" => true,
        _ => return Err(props.invalid("mode", &mode, "control or readline")),
    };
    let pretty = props.take_bool("pretty")?.unwrap_or(false);
    // libvirt names its monitor (`id=monitor`); nothing refers to a monitor by id.
    props.take_id("id")?;
    props.finish(&["chardev", "mode (control/readline)", "pretty", "id"])?;
    Ok(Mon {
        chardev,
        pretty,
        hmp,
    })
}

/// `-uuid xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` → its lower-case canonical form.
pub(super) fn parse_uuid(option: &str, value: &str) -> Result<String, CliError> {
    let ok = value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !ok {
        return Err(CliError::InvalidValue {
            option: option.into(),
            property: "uuid".into(),
            value: value.into(),
            expected: "a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, hex digits)".into(),
        });
    }
    Ok(value.to_ascii_lowercase())
}

/// Pairs each `-mon` with its server chardev; every server chardev must be used by one.
pub(super) fn resolve(
    servers: Vec<ServerChardev>,
    mons: Vec<Mon>,
    client_ids: &[String],
) -> Result<Vec<MonitorConfig>, CliError> {
    let mut out = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        if servers[..i].iter().any(|o| o.id == s.id) || client_ids.contains(&s.id) {
            return Err(CliError::Invalid {
                option: "-chardev".into(),
                message: format!("duplicate chardev id '{}'", s.id),
            });
        }
    }
    let mut used = vec![false; servers.len()];
    for mon in mons {
        let Some(i) = servers.iter().position(|s| s.id == mon.chardev) else {
            let message = if client_ids.contains(&mon.chardev) {
                format!(
                    "chardev '{}' is not a server=on socket: accel's monitors listen on one \
                     (-chardev socket,id=ID,path=PATH,server=on,wait=off)",
                    mon.chardev
                )
            } else {
                format!("chardev '{}' not found", mon.chardev)
            };
            return Err(CliError::Invalid {
                option: "-mon".into(),
                message,
            });
        };
        if used[i] {
            return Err(CliError::Invalid {
                option: "-mon".into(),
                message: format!("chardev '{}' is already used by a monitor", mon.chardev),
            });
        }
        used[i] = true;
        let s = &servers[i];
        out.push(MonitorConfig {
            label: s.id.clone(),
            listen: s.listen.clone(),
            pretty: mon.pretty,
            wait: s.wait,
            hmp: mon.hmp,
        });
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(CliError::Invalid {
            option: "-chardev".into(),
            message: format!(
                "'{}': no monitor, serial port or device uses this server=on socket; add -mon chardev={},\
                 mode=control",
                servers[i].id, servers[i].id
            ),
        });
    }
    Ok(out)
}
