//! `-serial` and the display/monitor options that only make sense as "none" for accel.

use std::path::PathBuf;

use super::CliError;
use super::props::{Flags, Props};
use crate::config::SerialConfig;

const SERIAL_SYNTAX: &str = "stdio, mon:stdio, null, none, file:PATH or \
                             unix:PATH,server=on[,wait=off]";

/// Parses one `-serial` value.
pub(super) fn parse_serial(option: &'static str, value: &str) -> Result<SerialConfig, CliError> {
    let invalid = |expected: &str| CliError::InvalidValue {
        option: option.into(),
        property: "backend".into(),
        value: value.into(),
        expected: expected.into(),
    };
    match value {
        "stdio" => return Ok(SerialConfig::Stdio),
        "mon:stdio" => {
            log::warn!(
                "{option} mon:stdio: accel has no monitor; the serial port uses stdio alone \
                 (Ctrl-a sequences are passed to the guest)"
            );
            return Ok(SerialConfig::Stdio);
        }
        "null" | "none" => return Ok(SerialConfig::Null),
        _ => {}
    }
    if let Some(path) = value.strip_prefix("file:") {
        if path.is_empty() {
            return Err(invalid("file:PATH with a non-empty PATH"));
        }
        return Ok(SerialConfig::File(PathBuf::from(path)));
    }
    if let Some(rest) = value.strip_prefix("unix:") {
        return parse_unix(option, rest);
    }
    if value.starts_with("mon:") {
        return Err(CliError::UnsupportedValue {
            option: option.into(),
            property: "backend".into(),
            value: value.into(),
            reason: "accel has no monitor; only mon:stdio is accepted (as plain stdio)".into(),
        });
    }
    Err(invalid(SERIAL_SYNTAX))
}

/// `unix:PATH[,server=on|off][,wait=on|off]` (also QEMU's legacy `,server,nowait`).
fn parse_unix(option: &'static str, spec: &str) -> Result<SerialConfig, CliError> {
    let mut props = Props::parse(option, spec, Some("path"), Flags::Allowed)?;
    let path = props.take("path").unwrap_or_default();
    if path.is_empty() {
        return Err(props.invalid("path", &path, "unix:PATH with a non-empty PATH"));
    }
    let server = props.take_bool("server")?.unwrap_or(false);
    let wait = props.take_bool("wait")?;
    props.finish(&["path", "server (on only)", "wait"])?;
    if !server {
        return Err(props_unsupported(
            option,
            "server",
            "off",
            "accel's unix serial only listens (server=on); client mode is not supported",
        ));
    }
    Ok(SerialConfig::UnixServer {
        path: PathBuf::from(path),
        wait: wait.unwrap_or(true),
    })
}

fn props_unsupported(option: &str, property: &str, value: &str, reason: &str) -> CliError {
    CliError::UnsupportedValue {
        option: option.into(),
        property: property.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// `-display`, `-vga`, `-parallel`, `-monitor`: accel has none of these, so only `none` is
/// accepted (it asks for exactly what accel does).
pub(super) fn check_none(option: &'static str, value: &str) -> Result<(), CliError> {
    if value == "none" {
        return Ok(());
    }
    let what = match option {
        "-display" => "accel has no display",
        "-vga" => "accel has no graphics card",
        "-parallel" => "accel has no parallel port",
        _ => {
            "accel's human monitors listen on sockets: -monitor unix:PATH,server=on,wait=off (or tcp:HOST:PORT,...)"
        }
    };
    Err(CliError::UnsupportedValue {
        option: option.into(),
        property: "type".into(),
        value: value.into(),
        reason: if option == "-monitor" {
            format!("{what}, or '-monitor none'")
        } else {
            format!("{what}; only '{option} none' is accepted")
        },
    })
}
