//! QMP hotplug on the main thread: `chardev-add`/`chardev-remove`, `netdev_add`/
//! `netdev_del`, `device_add`/`device_del`, and the guest's ejects, with QEMU 7.2's
//! semantics and error texts.
//!
//! - `device_add` builds the function the way startup does ([`PciSetup::plug`]: backend
//!   connected and negotiated, memory table sent, BAR allocated, slot taken), then sets its
//!   slot in PCIU and raises the hotplug GPE; it returns once the device exists and the
//!   guest has been told.
//! - `device_del` only asks: PCID bit and GPE; it returns `{}` at once. The device goes when
//!   the guest ejects the slot (B0EJ, seen by [`ejected`]), which emits `DEVICE_DELETED`
//!   (the virtio child first, then the proxy with its id, as QEMU's virtio-pci does). A guest
//!   that ignores the request costs nothing: nothing waits for it. A repeated `device_del`
//!   of a device still waiting asks the guest again and returns `{}`, as QEMU 7.2 does on
//!   `pc` (measured: tests/tests/hotplug.rs runs the same script against it).
//! - Client chardevs added here are recorded only: accel connects to the backend's socket
//!   when a device uses the chardev (`device_add`), as it does for `-chardev` at startup. A
//!   `"server": true` one listens at once (as QEMU's does); `device_add` takes the backend's
//!   connection, waiting at most [`ACCEPT_WAIT`], and `chardev-remove` removes the socket file.
//! - On `-M q35`, `device_add` with `bus=` a `pcie-root-port` and `device_del` of a device
//!   on one use PCIe native hot-plug instead ([`pcie`]).

mod pcie;

use crate::pci::root::devfn;
use std::collections::BTreeMap;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value, json};
use vm_memory::GuestAddressSpace;

use super::Vm;
use crate::cli::runtime;
use crate::config::{ChardevConfig, NetdevConfig, VmConfig};
use crate::devices::acpi_pcihp::PCIHP_GPE_BIT;
use crate::qmp::{HotplugCommand, QmpError, QmpShared};
use crate::virtio::setup::{Listening, listen};
use crate::virtio::{PciSetup, SetupError};

/// How long `device_add` of a device on a `server=on` chardev waits for its backend to
/// connect. QEMU waits as long as it takes, with its monitor blocked; accel's main thread
/// answers QMP and must not hang on a peer that never comes.
const ACCEPT_WAIT: Duration = Duration::from_secs(60);

/// What QMP added or asked for, kept by the main thread.
#[derive(Default)]
pub struct HotplugState {
    chardevs: Vec<ChardevConfig>,
    netdevs: Vec<NetdevConfig>,
    /// Slots whose device the guest was asked to release (and how many times).
    pending: BTreeMap<u8, u32>,
    /// Root ports (by bus index behind them) whose attention button was pressed, and when.
    pending_native: BTreeMap<usize, std::time::Instant>,
    /// qdev ids by (bus index, device/function number), for `query-pci`.
    pub ids: Arc<Mutex<BTreeMap<(usize, u8), String>>>,
    /// The sockets `chardev-add` with `"server": true` listens on, by chardev id.
    listeners: BTreeMap<String, UnixListener>,
    added: u32,
}

impl HotplugState {
    /// The state after startup: the command line's chardevs, its devices' ids.
    pub fn new(config: &VmConfig, pci: &PciSetup) -> Self {
        let ids = pci
            .plugged
            .iter()
            .filter_map(|p| Some(((p.bus, devfn(p.slot, p.function)), p.id.clone()?)))
            .collect();
        HotplugState {
            chardevs: config.chardevs.clone(),
            netdevs: config.netdevs.clone(),
            ids: Arc::new(Mutex::new(ids)),
            ..Default::default()
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeMap<(usize, u8), String>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The device's name: its id, or a generated one.
    fn name_for(&mut self, config: &crate::config::VhostUserDeviceConfig) -> String {
        self.added += 1;
        config
            .id
            .clone()
            .unwrap_or_else(|| format!("{}-hot{}", config.spec.name, self.added))
    }
}

fn generic(desc: impl Into<String>) -> QmpError {
    QmpError::generic(desc)
}

fn no_hotplug() -> QmpError {
    generic("Bus 'pci.0' does not support hotplugging")
}

/// Carries out one hotplug command.
pub(super) fn run(vm: &mut Vm, command: HotplugCommand) -> Result<(), QmpError> {
    match command {
        HotplugCommand::ChardevAdd { id, backend } => chardev_add(vm, id, &backend),
        HotplugCommand::ChardevRemove { id } => chardev_remove(vm, &id),
        HotplugCommand::NetdevAdd(args) => netdev_add(vm, &args),
        HotplugCommand::NetdevDel { id } => netdev_del(vm, &id),
        HotplugCommand::DeviceAdd(args) => device_add(vm, &args),
        HotplugCommand::DeviceDel { id } => device_del(vm, &id),
    }
}

fn chardev_add(vm: &mut Vm, id: String, backend: &Value) -> Result<(), QmpError> {
    let state = &mut vm.hotplug;
    if state.chardevs.iter().any(|c| c.id == id) {
        return Err(generic(format!("Chardev with id '{id}' already exists")));
    }
    let chardev = runtime::chardev(&id, backend).map_err(|e| generic(e.to_string()))?;
    if chardev.server {
        // Listening when the command returns, as QEMU's: a client-mode backend that is
        // already retrying connects into the backlog, and device_add takes it from there.
        let listener = bind(&id, &chardev.path)?;
        state.listeners.insert(id.clone(), listener);
        log::info!("chardev-add {id}: listening on {}", chardev.path.display());
    } else {
        log::info!("chardev-add {id}: unix socket {}", chardev.path.display());
    }
    state.chardevs.push(chardev);
    Ok(())
}

/// Listens on `path` for chardev `id`; the error names the chardev.
fn bind(id: &str, path: &std::path::Path) -> Result<UnixListener, QmpError> {
    listen(id, path).map_err(|e| match e {
        SetupError::Listen { path, source, .. } => {
            generic(format!("chardev '{id}': cannot listen on {path}: {source}"))
        }
        other => generic(other.to_string()),
    })
}

/// The listening socket for a device on `chardev` (`server=on`): a duplicate of the one
/// `chardev-add` bound, which stays with the chardev when the device goes; for a command-line
/// chardev whose first device was removed (its socket went with it), a new one.
fn listening(
    state: &mut HotplugState,
    chardev: &ChardevConfig,
) -> Result<Option<Listening>, QmpError> {
    if !chardev.server {
        return Ok(None);
    }
    let id = &chardev.id;
    if !state.listeners.contains_key(id) {
        let listener = bind(id, &chardev.path)?;
        state.listeners.insert(id.clone(), listener);
    }
    let listener = state.listeners[id]
        .try_clone()
        .map_err(|e| generic(format!("chardev '{id}': {e}")))?;
    Ok(Some(Listening {
        listener,
        wait: Some(ACCEPT_WAIT),
    }))
}

/// Whether a device or a netdev uses chardev `id`.
fn chardev_users(vm: &Vm, id: &str) -> (bool, bool) {
    let device = vm
        .pci
        .as_ref()
        .is_some_and(|p| p.plugged.iter().any(|d| d.chardev == id));
    let netdev = vm.hotplug.netdevs.iter().any(|n| n.chardev == id);
    (device, netdev)
}

fn chardev_remove(vm: &mut Vm, id: &str) -> Result<(), QmpError> {
    if !vm.hotplug.chardevs.iter().any(|c| c.id == id) {
        return Err(generic(format!("Chardev '{id}' not found")));
    }
    if chardev_users(vm, id) != (false, false) {
        return Err(generic(format!("Chardev '{id}' is busy")));
    }
    let state = &mut vm.hotplug;
    if state.listeners.remove(id).is_some()
        && let Some(c) = state.chardevs.iter().find(|c| c.id == id)
    {
        // QEMU removes a server socket's file with the chardev.
        let _ = std::fs::remove_file(&c.path);
    }
    state.chardevs.retain(|c| c.id != id);
    Ok(())
}

fn netdev_add(vm: &mut Vm, args: &Map<String, Value>) -> Result<(), QmpError> {
    let netdev = runtime::netdev(args).map_err(|e| generic(e.to_string()))?;
    let state = &mut vm.hotplug;
    if state.netdevs.iter().any(|n| n.id == netdev.id) {
        return Err(generic(format!("Duplicate ID '{}' for netdev", netdev.id)));
    }
    if !state.chardevs.iter().any(|c| c.id == netdev.chardev) {
        return Err(generic(format!("chardev \"{}\" not found", netdev.chardev)));
    }
    state.netdevs.push(netdev);
    Ok(())
}

fn netdev_del(vm: &mut Vm, id: &str) -> Result<(), QmpError> {
    let state = &mut vm.hotplug;
    let Some(i) = state.netdevs.iter().position(|n| n.id == id) else {
        return Err(QmpError::device_not_found(format!(
            "Device '{id}' not found"
        )));
    };
    // As in QEMU the netdev goes even if a NIC uses it; accel's NIC keeps its backend
    // connection until it is removed itself.
    state.netdevs.remove(i);
    Ok(())
}

fn device_add(vm: &mut Vm, args: &Map<String, Value>) -> Result<(), QmpError> {
    let driver = args.get("driver").and_then(Value::as_str).unwrap_or("");
    if vu_spec::devices::find_driver(driver).is_none() {
        return Err(generic(format!(
            "'{driver}' is not a valid device model name"
        )));
    }
    let dev = runtime::device(args).map_err(|e| generic(e.to_string()))?;
    let driver = dev.driver.clone();
    // QEMU names the virtio child in property errors ("vhost-user-blk.chardev").
    let child = match driver.as_str() {
        "virtio-net-pci" => "virtio-net-device".to_string(),
        d => d.strip_suffix("-pci").unwrap_or(d).to_string(),
    };
    let mut config = dev.config;
    if dev.pci_func != 0 {
        return Err(generic(format!(
            "{driver}: multifunction PCI devices are not supported: use function 0"
        )));
    }
    let pci = vm.pci.as_ref().ok_or_else(no_hotplug)?;
    if let Some(id) = &config.id
        && pci.plugged.iter().any(|p| p.id.as_ref() == Some(id))
    {
        return Err(generic(format!("Duplicate device ID '{id}'")));
    }
    if let Some((netdev_id, mq)) = &dev.netdev {
        let netdev = vm
            .hotplug
            .netdevs
            .iter()
            .find(|n| &n.id == netdev_id)
            .ok_or_else(|| {
                generic(format!(
                    "Property '{child}.netdev' can't find value '{netdev_id}'"
                ))
            })?;
        if pci.plugged.iter().any(|p| p.chardev == netdev.chardev) {
            return Err(generic(format!(
                "Property '{child}.netdev' can't take value '{netdev_id}', it's in use"
            )));
        }
        config.chardev = netdev.chardev.clone();
        config.num_queues = runtime::netdev_queues(netdev, *mq);
    } else {
        let c = &config.chardev;
        if !vm.hotplug.chardevs.iter().any(|x| &x.id == c) {
            return Err(generic(format!(
                "Property '{child}.chardev' can't find value '{c}'"
            )));
        }
        if chardev_users(vm, c) != (false, false) {
            return Err(generic(format!(
                "Property '{child}.chardev' can't take value '{c}', it's in use"
            )));
        }
    }
    let chardev = vm
        .hotplug
        .chardevs
        .iter()
        .find(|c| c.id == config.chardev)
        .cloned()
        .ok_or_else(|| generic(format!("chardev '{}' not found", config.chardev)))?;
    if vm.config.memory.backends.iter().any(|b| !b.share) {
        return Err(generic(
            "vhost-user devices need shared guest memory: use -object \
             memory-backend-memfd,share=on",
        ));
    }
    if let Some(bus) = config.pci_bus.clone() {
        return pcie::device_add(vm, &driver, &bus, &config, &chardev);
    }
    let Some(hp) = vm.pci_hotplug.clone() else {
        return Err(no_hotplug());
    };
    let pci = vm.pci.as_mut().ok_or_else(no_hotplug)?;
    match config.pci_slot {
        Some(slot) if pci.root.slot_taken(slot) => {
            return Err(generic(format!(
                "PCI: slot {slot} function 0 not available for {driver}, in use"
            )));
        }
        None if pci.root.free_slot().is_err() => {
            return Err(generic(format!(
                "PCI: no slot/function available for {driver}, all in use or reserved"
            )));
        }
        _ => {}
    }
    let listening = listening(&mut vm.hotplug, &chardev)?;
    let name = vm.hotplug.name_for(&config);
    let memory = (*vm.ram.memory.memory()).clone();
    let slot = pci
        .plug(
            name,
            &config,
            &chardev,
            listening,
            vm.config.smp.cpus,
            memory,
        )
        .map_err(|e| generic(e.to_string()))?;
    if let Some(id) = &config.id {
        vm.hotplug.ids().insert((0, devfn(slot, 0)), id.clone());
    }
    hp.plugged(slot);
    raise_gpe(vm);
    log::info!("device_add {driver}: slot {slot}, the guest is told (GPE)");
    Ok(())
}

fn raise_gpe(vm: &Vm) {
    if let Some(pm) = &vm.acpi_pm {
        pm.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .raise_gpe(PCIHP_GPE_BIT);
    }
}

fn device_del(vm: &mut Vm, id: &str) -> Result<(), QmpError> {
    let (bus, slot) = vm
        .pci
        .as_ref()
        .and_then(|p| p.plugged.iter().find(|d| d.id.as_deref() == Some(id)))
        .map(|d| (d.bus, d.slot))
        .ok_or_else(|| QmpError::device_not_found(format!("Device '{id}' not found")))?;
    if bus != 0 {
        return pcie::device_del(vm, id, bus);
    }
    let Some(hp) = vm.pci_hotplug.clone() else {
        return Err(no_hotplug());
    };
    let asked = vm.hotplug.pending.entry(slot).or_insert(0);
    *asked += 1;
    if *asked <= 3 {
        log::info!("device_del {id}: the guest is asked to release slot {slot} (#{asked})");
    }
    hp.request_unplug(slot);
    raise_gpe(vm);
    Ok(())
}

/// The guest ejected slots (B0EJ): their devices go, with `DEVICE_DELETED`.
pub(super) fn ejected(vm: &mut Vm, qmp: &QmpShared) {
    let Some(hp) = vm.pci_hotplug.clone() else {
        return;
    };
    let slots = hp.take_ejects();
    for slot in 0..32u8 {
        if slots & (1 << slot) == 0 {
            continue;
        }
        vm.hotplug.pending.remove(&slot);
        let id = vm.hotplug.ids().remove(&(0, devfn(slot, 0)));
        let Some(plugged) = vm.pci.as_mut().and_then(|p| p.unplug(slot)) else {
            continue;
        };
        hp.removed(slot);
        log::info!("{}: ejected by the guest from slot {slot}", plugged.name);
        deleted(qmp, plugged, id);
    }
}

/// A device left the bus: its backend connection closes and QMP hears `DEVICE_DELETED`, the
/// virtio child first, then the proxy with its id (as QEMU's virtio-pci does).
fn deleted(qmp: &QmpShared, plugged: crate::virtio::setup::Plugged, id: Option<String>) {
    let name = plugged.name.clone();
    plugged.close();
    let path = match &id {
        Some(id) => format!("/machine/peripheral/{id}"),
        None => format!("/machine/peripheral-anon/{name}"),
    };
    qmp.emit(
        "DEVICE_DELETED",
        Some(json!({"path": format!("{path}/virtio-backend")})),
    );
    let mut data = json!({"path": path});
    if let Some(id) = id {
        data["device"] = json!(id);
    }
    qmp.emit("DEVICE_DELETED", Some(data));
}

/// The guest powered root-port slots off: their devices go, with `DEVICE_DELETED`.
pub(super) fn slots_powered_off(vm: &mut Vm, qmp: &QmpShared) {
    pcie::powered_off(vm, qmp);
}
