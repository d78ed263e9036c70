//! The platform: `-device` drivers for the in-process platform devices (not virtio, no
//! backend process: `pvpanic`, `isa-debugcon`, `isa-debug-exit`), and the process and
//! platform options management tools pass on every line: `-rtc`, `-global`, `-msg`,
//! `-overcommit`, `-boot`, `-echr`.
//!
//! Each option either has its effect in accel or is accepted because QEMU's effect has no
//! counterpart here (documented per option, and in `--help`); anything else is an error naming
//! it.

use super::CliError;
use super::chardev::{self, IsaDevice};
use super::props::Props;
use super::values;
use crate::config::{PlatformConfig, RtcBase};

/// QEMU's default pvpanic port.
pub const PVPANIC_DEFAULT_PORT: u16 = 0x505;

/// Whether `-device DRIVER` names a platform device (handled here, not by the device table).
pub(super) fn is_platform(driver: Option<&str>) -> bool {
    matches!(driver, Some("pvpanic")) || chardev::is_isa_driver(driver)
}

/// Adds one platform `-device` to `into`; an ISA debug device goes to `isa` until its chardev
/// is resolved (then it joins `into.isa_devices`).
pub(super) fn parse(
    props: Props,
    into: &mut PlatformConfig,
    isa: &mut Vec<IsaDevice>,
) -> Result<(), CliError> {
    if chardev::is_isa_driver(props.peek("driver")) {
        isa.push(chardev::parse_isa_device(props)?);
        return Ok(());
    }
    parse_pvpanic(props, into)
}

fn parse_pvpanic(mut props: Props, into: &mut PlatformConfig) -> Result<(), CliError> {
    let driver = props.take_required("driver")?;
    props.take_id("id")?;
    match driver.as_str() {
        "pvpanic" => {
            if into.pvpanic.is_some() {
                return Err(props.unsupported("driver", "pvpanic", "given twice (one is allowed)"));
            }
            let port = props.take_uint_in("ioport", 1, 0xffff)?;
            // QEMU 7.2's `events` bitmask: what the device reports it handles (1 panicked,
            // 2 crash-loaded); accel handles both, so only the full set is meaningful.
            if let Some(raw) = props.take("events")
                && raw != "3"
            {
                return Err(props.invalid("events", &raw, "3 (accel handles both events)"));
            }
            props.finish(&["ioport", "events"])?;
            into.pvpanic = Some(port.map_or(PVPANIC_DEFAULT_PORT, |p| p as u16));
        }
        other => return Err(props.unsupported("driver", other, "not a platform device")),
    }
    Ok(())
}
/// `-rtc [base=utc|localtime|DATE][,clock=host|rt][,driftfix=slew|none]`.
///
/// `clock=host|rt`: the CMOS clock follows the host's real-time clock either way (accel reads
/// it at every guest access). `clock=vm` (a clock that stops with the VM) is refused.
/// `driftfix=slew` makes QEMU reinject lost RTC periodic interrupts: accel's RTC raises none,
/// so there is nothing to slew.
pub(super) fn parse_rtc(mut props: Props, platform: &mut PlatformConfig) -> Result<(), CliError> {
    if let Some(base) = props.take("base") {
        platform.rtc_base = match base.as_str() {
            "utc" => RtcBase::Utc,
            "localtime" => RtcBase::Localtime,
            date => RtcBase::Fixed(parse_date(date).ok_or_else(|| {
                props.invalid(
                    "base",
                    date,
                    "utc, localtime or a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)",
                )
            })?),
        };
    }
    match props.take("clock").as_deref() {
        None | Some("host") | Some("rt") => {}
        Some("vm") => {
            return Err(props.unsupported(
                "clock",
                "vm",
                "accel's RTC always follows the host clock (clock=host)",
            ));
        }
        Some(v) => return Err(props.invalid("clock", v, "host, rt or vm")),
    }
    match props.take("driftfix").as_deref() {
        None | Some("slew") | Some("none") => {}
        Some(v) => return Err(props.invalid("driftfix", v, "slew or none")),
    }
    props.finish(&["base (utc/localtime/DATE)", "clock (host/rt)", "driftfix"])
}

/// Seconds since the Unix epoch of `YYYY-MM-DD[THH:MM:SS]` (UTC), as QEMU's `-rtc base=`.
fn parse_date(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    let valid = (1970..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&h)
        && (0..60).contains(&m)
        && (0..60).contains(&sec);
    if !valid {
        return None;
    }
    // Days from civil (proleptic Gregorian), with March as the first month of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + m * 60 + sec)
}

/// `-global DRIVER.PROP=VALUE`: only the properties of devices accel has, or of devices whose
/// absence makes the property moot.
pub(super) fn parse_global(
    option: &'static str,
    value: &str,
    platform: &mut PlatformConfig,
) -> Result<(), CliError> {
    let (prop, val) = value
        .split_once('=')
        .ok_or_else(|| CliError::InvalidValue {
            option: option.into(),
            property: "global".into(),
            value: value.into(),
            expected: "DRIVER.PROPERTY=VALUE".into(),
        })?;
    match prop {
        "kvm-pit.lost_tick_policy" => match val {
            "discard" => platform.pit_discard_lost_ticks = true,
            "delay" => platform.pit_discard_lost_ticks = false,
            _ => {
                return Err(CliError::InvalidValue {
                    option: option.into(),
                    property: prop.into(),
                    value: val.into(),
                    expected: "discard or delay".into(),
                });
            }
        },
        // libvirt's S3/S4 switches for the ACPI power-management device: accel has no ACPI
        // sleep states to disable.
        "PIIX4_PM.disable_s3"
        | "PIIX4_PM.disable_s4"
        | "ICH9-LPC.disable_s3"
        | "ICH9-LPC.disable_s4" => {
            values::parse_bool(val)
                .or_else(|_| values::parse_uint(val).map(|v| v != 0))
                .map_err(|values::BadValue(e)| CliError::InvalidValue {
                    option: option.into(),
                    property: prop.into(),
                    value: val.into(),
                    expected: e.into(),
                })?;
            log::info!("{option} {value}: accepted (accel has no ACPI sleep states)");
        }
        _ => {
            return Err(CliError::UnsupportedValue {
                option: option.into(),
                property: prop.into(),
                value: val.into(),
                reason: "accel takes -global only for kvm-pit.lost_tick_policy and \
                         PIIX4_PM/ICH9-LPC.disable_s3/disable_s4"
                    .into(),
            });
        }
    }
    Ok(())
}

/// `-msg [timestamp=on|off][,guest-name=on|off]`.
pub(super) fn parse_msg(mut props: Props, platform: &mut PlatformConfig) -> Result<(), CliError> {
    if let Some(on) = props.take_bool("timestamp")? {
        platform.msg_timestamp = on;
    }
    if props.take_bool("guest-name")? == Some(true) {
        return Err(props.unsupported(
            "guest-name",
            "on",
            "accel does not prefix messages with the guest name",
        ));
    }
    props.finish(&["timestamp", "guest-name (off)"])
}

/// `-overcommit mem-lock=off,cpu-pm=off`: what accel does; `on` is refused.
pub(super) fn parse_overcommit(mut props: Props) -> Result<(), CliError> {
    for (key, reason) in [
        ("mem-lock", "accel does not mlock guest memory"),
        (
            "cpu-pm",
            "accel does not let the guest halt the host CPU (no KVM_CAP_X86_DISABLE_EXITS)",
        ),
    ] {
        if props.take_bool(key)? == Some(true) {
            return Err(props.unsupported(key, "on", reason));
        }
    }
    props.finish(&["mem-lock (off)", "cpu-pm (off)"])
}

/// `-boot [order=..][,once=..][,menu=on|off][,strict=on|off][,splash-time=..]
/// [,reboot-timeout=..]`: firmware boot settings. accel has no firmware and boots `-kernel`
/// directly, so they are checked and ignored.
pub(super) fn parse_boot(mut props: Props) -> Result<(), CliError> {
    for key in ["order", "once"] {
        if let Some(v) = props.take(key)
            && !v.chars().all(|c| c.is_ascii_lowercase())
        {
            return Err(props.invalid(key, &v, "drive letters (e.g. cdn)"));
        }
    }
    for key in ["menu", "strict"] {
        props.take_bool(key)?;
    }
    props.take("splash");
    for key in ["splash-time", "reboot-timeout"] {
        if let Some(v) = props.take(key) {
            values::parse_uint(&v)
                .or_else(|e| v.parse::<i64>().map(|_| 0).map_err(|_| e))
                .map_err(|values::BadValue(e)| props.invalid(key, &v, e))?;
        }
    }
    props.finish(&[
        "order",
        "once",
        "menu",
        "strict",
        "splash",
        "splash-time",
        "reboot-timeout",
    ])?;
    log::info!("-boot: accepted and ignored (accel has no firmware; it boots -kernel directly)");
    Ok(())
}

/// `-echr N`: the terminal escape key, as a number (`0x14`) or QEMU's `^t` spelling.
pub(super) fn parse_echr(option: &'static str, value: &str) -> Result<u8, CliError> {
    let caret = value
        .strip_prefix('^')
        .filter(|c| c.len() == 1)
        .and_then(|c| c.bytes().next())
        .filter(u8::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase() - b'a' + 1);
    caret
        .or_else(|| {
            values::parse_uint(value)
                .ok()
                .and_then(|v| u8::try_from(v).ok())
        })
        .ok_or_else(|| CliError::InvalidValue {
            option: option.into(),
            property: "char".into(),
            value: value.into(),
            expected: "a character code 0..255 (e.g. 0x14) or ^X".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_like_qemu() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2006-06-17T16:01:21"), Some(1_150_560_081));
        assert_eq!(parse_date("2000-03-01"), Some(951_868_800));
        assert_eq!(parse_date("2006-13-01"), None);
        assert_eq!(parse_date("now"), None);
        assert_eq!(parse_date("2006-06-17T16:01"), None);
    }

    #[test]
    fn echr_spellings() {
        assert_eq!(parse_echr("-echr", "0x14"), Ok(0x14));
        assert_eq!(parse_echr("-echr", "20"), Ok(20));
        assert_eq!(parse_echr("-echr", "^t"), Ok(0x14));
        assert!(parse_echr("-echr", "256").is_err());
    }
}
