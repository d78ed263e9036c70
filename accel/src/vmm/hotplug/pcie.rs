//! PCIe native hot-plug on `-M q35` root ports (QEMU's hw/pci/pcie.c behaviour; the slot
//! registers are [`crate::pci::pcie_slot`]):
//!
//! - `device_add` with `bus=<pcie-root-port id>` builds the function as startup does
//!   ([`PciSetup::plug`](crate::virtio::PciSetup::plug)), places its BAR in the port's memory
//!   window, then sets the slot's presence and sends the hot-plug interrupt.
//! - `device_del` presses the slot's attention button and returns `{}`. The guest (Linux
//!   pciehp) waits 5 s, releases the device and powers the slot off; that register write
//!   reaches the main thread ([`powered_off`]), which removes the device, closes its
//!   vhost-user session and emits `DEVICE_DELETED`. A guest that ignores the button costs
//!   nothing; as in QEMU a repeated `device_del` within 5 s is refused ("already in the
//!   process of unplug"), later ones press the button again (accel counts host time, QEMU
//!   the guest's virtual clock). A slot the guest already powered off is emptied at once.

use std::sync::PoisonError;
use std::time::Instant;

use vm_memory::GuestAddressSpace;

use super::{Vm, deleted, generic, no_hotplug};
use crate::config::{ChardevConfig, VhostUserDeviceConfig};
use crate::pci::pcie_slot::{UNPLUG_PENDING, Unplug};
use crate::pci::root::devfn;
use crate::qmp::{QmpError, QmpShared};

/// `device_add` on root port `bus_id`.
pub(super) fn device_add(
    vm: &mut Vm,
    driver: &str,
    bus_id: &str,
    config: &VhostUserDeviceConfig,
    chardev: &ChardevConfig,
) -> Result<(), QmpError> {
    let pci = vm.pci.as_ref().ok_or_else(no_hotplug)?;
    let bus = pci
        .bridges
        .bus(bus_id)
        .ok_or_else(|| generic(format!("Bus '{bus_id}' not found")))?;
    let port = pci
        .bridges
        .bridge_of_bus(bus)
        .ok_or_else(|| generic(format!("Bus '{bus_id}' not found")))?;
    if !port
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .hotplug_capable()
    {
        return Err(generic(format!(
            "Bus '{bus_id}' does not support hotplugging"
        )));
    }
    if pci.root.bus_occupied(bus) {
        return Err(generic(format!(
            "PCI: slot 0 function 0 not available for {driver}, in use"
        )));
    }
    let listening = super::listening(&mut vm.hotplug, chardev)?;
    let name = vm.hotplug.name_for(config);
    let memory = (*vm.ram.memory.memory()).clone();
    let cpus = vm.config.smp.cpus;
    let pci = vm.pci.as_mut().ok_or_else(no_hotplug)?;
    let slot = pci
        .plug(name, config, chardev, listening, cpus, memory)
        .map_err(|e| generic(e.to_string()))?;
    pci.place_hotplugged(bus);
    if let Some(id) = &config.id {
        vm.hotplug.ids().insert((bus, devfn(slot, 0)), id.clone());
    }
    port.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .hot_added();
    log::info!("device_add {driver}: on {bus_id}, the guest is told (PCIe hot-plug event)");
    Ok(())
}

/// `device_del` of `id`, on the root port whose bus index is `bus`.
pub(super) fn device_del(vm: &mut Vm, id: &str, bus: usize) -> Result<(), QmpError> {
    let pci = vm.pci.as_ref().ok_or_else(no_hotplug)?;
    let port = pci.bridges.bridge_of_bus(bus).ok_or_else(no_hotplug)?;
    let port_id = pci.bridges.id_of_bus(bus).unwrap_or_default().to_string();
    if !port
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .hotplug_capable()
    {
        return Err(generic(format!(
            "Bus '{port_id}' does not support hotplugging"
        )));
    }
    if let Some(at) = vm.hotplug.pending_native.get(&bus)
        && at.elapsed() < UNPLUG_PENDING
    {
        return Err(generic(format!(
            "Device {id} is already in the process of unplug"
        )));
    }
    let request = port
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .unplug_request();
    match request.map_err(|e| generic(e.to_string()))? {
        Unplug::Asked => {
            vm.hotplug.pending_native.insert(bus, Instant::now());
            log::info!("device_del {id}: attention button of {port_id} pressed");
        }
        Unplug::Now => {
            // The main loop removes it next, as after a guest power-off.
            log::info!("device_del {id}: {port_id} is powered off: removed at once");
            pci.slot_events.push(bus);
        }
    }
    Ok(())
}

/// The guest powered root-port slots off: their devices go, with `DEVICE_DELETED`.
pub(super) fn powered_off(vm: &mut Vm, qmp: &QmpShared) {
    let Some(buses) = vm.pci.as_ref().map(|p| p.slot_events.take()) else {
        return;
    };
    for bus in buses {
        vm.hotplug.pending_native.remove(&bus);
        let slots: Vec<u8> = vm
            .pci
            .as_ref()
            .map(|p| {
                p.plugged
                    .iter()
                    .filter(|d| d.bus == bus && d.function == 0)
                    .map(|d| d.slot)
                    .collect()
            })
            .unwrap_or_default();
        for slot in slots {
            let id = vm.hotplug.ids().remove(&(bus, devfn(slot, 0)));
            let Some(plugged) = vm.pci.as_mut().and_then(|p| p.unplug_at(bus, slot)) else {
                continue;
            };
            log::info!(
                "{}: its slot (bus index {bus}) was powered off by the guest",
                plugged.name
            );
            deleted(qmp, plugged, id);
        }
    }
}
