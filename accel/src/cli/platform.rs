//! `-device` drivers for the in-process platform devices (not virtio, no backend process):
//! `pvpanic` (QEMU's ISA panic notifier).

use super::CliError;
use super::props::Props;
use crate::config::PlatformDevices;

/// QEMU's default pvpanic port.
pub const PVPANIC_DEFAULT_PORT: u16 = 0x505;

/// Whether `-device DRIVER` names a platform device (handled here, not by the device table).
pub(super) fn is_platform(driver: Option<&str>) -> bool {
    matches!(driver, Some("pvpanic"))
}

/// Adds one platform `-device` to `into`.
pub(super) fn parse(mut props: Props, into: &mut PlatformDevices) -> Result<(), CliError> {
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
