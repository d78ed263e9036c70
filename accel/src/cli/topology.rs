//! `-device pcie-root-port|pci-bridge|pcie-pci-bridge` and where every PCI function goes:
//! `bus=` names the root bus (`pci.0`, `pcie.0`) or a bridge's `id=`, `addr=SLOT[.FN]` a slot
//! on it. Checked here, with the device named in each error: the bus exists, the address is
//! free and valid for the bus (a PCIe root port's bus has slot 0 only; a conventional bridge's
//! slots are 1-31 as with QEMU's SHPC), a bus without `addr=` has room, function 0 exists for
//! every other function. Devices without `addr=` behind a bridge get their slot here; on the
//! root bus the VMM picks the next free slot as before.

use super::CliError;
use super::devices::Device;
use super::devices::{PciPlace, take_pci_place};
use super::props::Props;
use crate::config::{MachineType, PciBridgeConfig, PciBridgeKind};

const ROOT_PORT: &str = "pcie-root-port";
const PCI_BRIDGE: &str = "pci-bridge";
const PCIE_PCI_BRIDGE: &str = "pcie-pci-bridge";

/// Whether `driver` is one of the bridges this module parses.
pub(super) fn is_bridge(driver: &str) -> bool {
    matches!(driver, ROOT_PORT | PCI_BRIDGE | PCIE_PCI_BRIDGE)
}

fn u8_prop(props: &mut Props, key: &str) -> Result<Option<u8>, CliError> {
    Ok(props.take_uint_in(key, 0, 255)?.map(|v| v as u8))
}

/// One bridge `-device`.
pub(super) fn parse(mut props: Props) -> Result<PciBridgeConfig, CliError> {
    let driver = props.take_required("driver")?;
    let id = props
        .take_id("id")?
        .ok_or_else(|| CliError::MissingProperty {
            option: format!("{} {driver}", props.option()),
            property: "id (devices name it in bus=)".into(),
        })?;
    let PciPlace { addr, bus } = take_pci_place(&mut props)?;
    props.take_bool("multifunction")?;
    let (kind, supported): (PciBridgeKind, &[&str]) = match driver.as_str() {
        ROOT_PORT => {
            let chassis = u8_prop(&mut props, "chassis")?.unwrap_or(0);
            let port = u8_prop(&mut props, "port")?.unwrap_or(0);
            let slot = props.take_uint_in("slot", 0, 0x1fff)?.unwrap_or(0) as u16;
            // Firmware reservation hints: accel sizes windows itself.
            for key in ["io-reserve", "mem-reserve", "pref64-reserve", "bus-reserve"] {
                props.take(key);
            }
            if props.take_bool("hotplug")? == Some(false) {
                log::warn!(
                    "-device {ROOT_PORT},id={id}: hotplug=off: the slot still reports \
                     hot-plug capable"
                );
            }
            (
                PciBridgeKind::RootPort {
                    chassis,
                    port,
                    slot,
                },
                &[
                    "id",
                    "bus",
                    "addr",
                    "multifunction",
                    "chassis",
                    "port",
                    "slot",
                    "hotplug",
                    "io-reserve",
                    "mem-reserve",
                    "pref64-reserve",
                    "bus-reserve",
                ],
            )
        }
        PCI_BRIDGE => {
            let chassis_nr = match u8_prop(&mut props, "chassis_nr")? {
                Some(n) if n > 0 => n,
                other => {
                    return Err(props.invalid(
                        "chassis_nr",
                        &other.unwrap_or(0).to_string(),
                        "a chassis number 1..255, unique per bridge (QEMU requires one)",
                    ));
                }
            };
            props.take_bool("shpc")?;
            props.take_bool("msi")?;
            (
                PciBridgeKind::PciBridge { chassis_nr },
                &[
                    "id",
                    "bus",
                    "addr",
                    "multifunction",
                    "chassis_nr",
                    "shpc",
                    "msi",
                ],
            )
        }
        _ => {
            props.take_bool("msi")?;
            (
                PciBridgeKind::PciePciBridge,
                &["id", "bus", "addr", "multifunction", "msi"],
            )
        }
    };
    props.finish(supported)?;
    Ok(PciBridgeConfig {
        id,
        kind,
        bus,
        slot: addr.map(|(s, _)| s),
        function: addr.map_or(0, |(_, f)| f),
    })
}

fn driver_of(kind: PciBridgeKind) -> &'static str {
    match kind {
        PciBridgeKind::RootPort { .. } => ROOT_PORT,
        PciBridgeKind::PciBridge { .. } => PCI_BRIDGE,
        PciBridgeKind::PciePciBridge => PCIE_PCI_BRIDGE,
    }
}

/// One bus while placing: its name and the slots devices may use.
struct BusState {
    id: Option<String>,
    /// Root-port buses are PCIe with one slot; the root bus of q35 is PCIe too.
    slots: std::ops::RangeInclusive<u8>,
    used: Vec<(u8, u8)>,
}

/// Checks and completes the placement of `bridges` and `devices` on `machine`.
pub(super) fn resolve(
    machine: MachineType,
    bridges: &mut [PciBridgeConfig],
    devices: &mut [Device],
) -> Result<(), CliError> {
    let q35 = machine == MachineType::Q35;
    let mut buses = vec![BusState {
        id: None,
        slots: 1..=31,
        used: Vec::new(),
    }];
    let invalid = |what: String, message: String| CliError::Invalid {
        option: "-device".into(),
        message: format!("{what}: {message}"),
    };
    let mut root_ports: Vec<(u8, u16, String)> = Vec::new();
    for b in bridges.iter_mut() {
        let what = format!("{},id={}", driver_of(b.kind), b.id);
        if buses.iter().any(|x| x.id.as_deref() == Some(&b.id)) {
            return Err(invalid(what, format!("duplicate bus id '{}'", b.id)));
        }
        match b.kind {
            PciBridgeKind::RootPort { .. } | PciBridgeKind::PciePciBridge if !q35 => {
                return Err(invalid(
                    what,
                    "PCI Express bridges need a PCIe root bus: use -M q35".into(),
                ));
            }
            PciBridgeKind::RootPort { .. } if b.bus.is_some() => {
                return Err(invalid(
                    what,
                    format!(
                        "bus={}: a root port sits on the root bus (bus=pcie.0)",
                        b.bus.as_deref().unwrap_or_default()
                    ),
                ));
            }
            _ => {}
        }
        if let PciBridgeKind::RootPort { chassis, slot, .. } = b.kind
            && let Some(other) = root_ports
                .iter()
                .find(|(c, s, _)| (*c, *s) == (chassis, slot))
        {
            return Err(invalid(
                what,
                format!(
                    "chassis={chassis} slot={slot} is already used by root port '{}' (QEMU \
                     requires each pair once: give each root port its own chassis=)",
                    other.2
                ),
            ));
        }
        if let PciBridgeKind::RootPort { chassis, slot, .. } = b.kind {
            root_ports.push((chassis, slot, b.id.clone()));
        }
        let slot = place(&mut buses, &what, b.bus.as_deref(), b.slot, b.function)?;
        b.slot = slot;
        let slots = match b.kind {
            PciBridgeKind::RootPort { .. } => 0..=0,
            _ => 1..=31,
        };
        buses.push(BusState {
            id: Some(b.id.clone()),
            slots,
            used: Vec::new(),
        });
    }
    for dev in devices.iter_mut() {
        let d = &mut dev.config;
        let what = match &d.id {
            Some(id) => format!("{},id={id}", dev.driver),
            None => dev.driver.clone(),
        };
        let slot = place(
            &mut buses,
            &what,
            d.pci_bus.as_deref(),
            d.pci_slot,
            d.pci_function,
        )?;
        d.pci_slot = slot;
    }
    for bus in &buses {
        for &(slot, func) in &bus.used {
            if func != 0 && !bus.used.contains(&(slot, 0)) {
                return Err(invalid(
                    format!("bus {}", bus.id.as_deref().unwrap_or("pcie.0/pci.0")),
                    format!(
                        "addr={slot:02x}.{func} has no function 0 in its slot (the guest only \
                         scans a slot whose function 0 exists)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Records `slot.function` on bus `bus_id`; a missing slot behind a bridge becomes the first
/// free one. Returns the slot (`None`: automatic on the root bus, chosen by the VMM).
fn place(
    buses: &mut [BusState],
    what: &str,
    bus_id: Option<&str>,
    slot: Option<u8>,
    function: u8,
) -> Result<Option<u8>, CliError> {
    let err = |message: String| CliError::Invalid {
        option: "-device".into(),
        message: format!("{what}: {message}"),
    };
    let Some(bus) = buses.iter_mut().find(|b| b.id.as_deref() == bus_id) else {
        return Err(err(format!(
            "bus={}: no such bus (the root bus is pcie.0 or pci.0; a bridge's bus is its \
             id=, defined by an earlier -device pcie-root-port|pci-bridge|pcie-pci-bridge)",
            bus_id.unwrap_or_default()
        )));
    };
    let name = bus_id.unwrap_or("pcie.0/pci.0");
    let slot = match slot {
        Some(s) => s,
        None if bus_id.is_none() => return Ok(None),
        None => bus
            .slots
            .clone()
            .find(|s| !bus.used.iter().any(|(u, _)| u == s))
            .ok_or_else(|| {
                err(format!(
                    "bus={name} has no free slot (a PCIe root port takes one device: add \
                     another pcie-root-port)"
                ))
            })?,
    };
    if !bus.slots.contains(&slot) {
        return Err(err(format!(
            "addr={slot:02x}: bus={name} takes slots {:02x}..{:02x}",
            bus.slots.start(),
            bus.slots.end()
        )));
    }
    if bus.used.contains(&(slot, function)) {
        return Err(err(format!(
            "addr={slot:02x}.{function}: already in use on bus={name}"
        )));
    }
    bus.used.push((slot, function));
    Ok(Some(slot))
}
