//! What the QMP monitor reports about a built VM ([`VmInfo`]), and `-pidfile`.

use std::path::PathBuf;

use super::Vm;
use crate::config::{SerialConfig, VmConfig};
use crate::pci::topology::Bridges;
use crate::pci::{BarKind, PciRoot};
use crate::qmp::{CpuInfo, PciBarInfo, PciBridgeInfo, PciFunctionInfo, VmInfo};

/// The static facts of `vm` for queries.
pub(super) fn vm_info(vm: &Vm) -> VmInfo {
    let config = &vm.config;
    VmInfo {
        name: config.name.clone(),
        uuid: config.lifecycle.uuid.clone(),
        cpus: cpus(config),
        ram_size: config.memory.size,
        chardevs: chardevs(config),
        pci: vm.pci_root.clone().map(|root| {
            let ids = vm.hotplug.ids.clone();
            let bridges = vm.pci_bridges.clone();
            Box::new(move || pci_functions(&root, &bridges, &ids)) as crate::qmp::PciLister
        }),
    }
}

/// `-machine none`: no vCPUs, no RAM, no PCI; the chardevs as given.
pub(super) fn probe_info(config: &VmConfig) -> VmInfo {
    VmInfo {
        name: config.name.clone(),
        uuid: config.lifecycle.uuid.clone(),
        cpus: Vec::new(),
        ram_size: 0,
        chardevs: chardevs(config),
        pci: None,
    }
}

/// Topology of each vCPU: APIC ids are contiguous, as `apply_vcpu_topology` lays them out.
fn cpus(config: &VmConfig) -> Vec<CpuInfo> {
    let smp = &config.smp;
    let threads = u32::from(smp.threads.max(1));
    let cores = u32::from(smp.cores.max(1));
    (0..u32::from(smp.cpus.max(1)))
        .map(|index| CpuInfo {
            index,
            socket: index / (threads * cores),
            core: (index / threads) % cores,
            thread: index % threads,
        })
        .collect()
}

fn chardevs(config: &VmConfig) -> Vec<(String, String)> {
    let serial = match &config.serial {
        SerialConfig::Stdio => Some("stdio".to_string()),
        SerialConfig::Null => None,
        SerialConfig::File(p) => Some(format!("file:{}", p.display())),
        SerialConfig::UnixServer { path, .. } => Some(format!("unix:{},server=on", path.display())),
        SerialConfig::Pipe(p) => Some(format!("pipe:{}", p.display())),
    };
    let mut out: Vec<(String, String)> =
        serial.map(|f| ("serial0".into(), f)).into_iter().collect();
    out.extend(
        config
            .chardevs
            .iter()
            .map(|c| (c.id.clone(), format!("unix:{}", c.path.display()))),
    );
    out
}

/// qdev ids by (bus index, device/function number).
pub(crate) type QdevIds = std::sync::Mutex<std::collections::BTreeMap<(usize, u8), String>>;

pub(crate) fn pci_functions(
    root: &PciRoot,
    bridges: &Bridges,
    ids: &QdevIds,
) -> Vec<PciFunctionInfo> {
    let ids = ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
    bus_functions(root, bridges, &ids, 0, 0, 0)
}

/// The functions on bus index `bus` (bus number `number` for the guest), bridges with what is
/// behind them; `depth` bounds the walk (buses form a tree, at most 256 deep).
fn bus_functions(
    root: &PciRoot,
    bridges: &Bridges,
    ids: &std::collections::BTreeMap<(usize, u8), String>,
    bus: usize,
    number: u8,
    depth: usize,
) -> Vec<PciFunctionInfo> {
    let mut out = Vec::new();
    let mut behind = Vec::new();
    root.functions_on(bus, |devfn, config, secondary| {
        let reg = |r: usize| config.read_reg(r);
        let (id, class, subsystem, irq) = (reg(0), reg(2), reg(0x2c / 4), reg(0x3c / 4));
        let bars = (0..6)
            .filter_map(|i| {
                let info = config.bar_info(i)?;
                Some(PciBarInfo {
                    index: i as u8,
                    io: info.kind == BarKind::Io,
                    mem64: info.kind == BarKind::Mem64,
                    prefetch: info.prefetchable,
                    size: info.size,
                    address: config.bar_mapping(i),
                })
            })
            .collect();
        let qdev_id = match secondary {
            Some(b) => bridges.id_of_bus(b).map(str::to_string),
            None => ids.get(&(bus, devfn)).cloned(),
        };
        let bridge = secondary.map(|b| {
            behind.push((out.len(), b, (reg(6) >> 8) as u8));
            bridge_windows(&reg)
        });
        out.push(PciFunctionInfo {
            bus: number,
            slot: devfn >> 3,
            function: devfn & 7,
            bridge,
            vendor: id as u16,
            device: (id >> 16) as u16,
            subsystem_vendor: subsystem as u16,
            subsystem: (subsystem >> 16) as u16,
            class: (class >> 16) as u16,
            irq_line: irq as u8,
            irq_pin: (irq >> 8) as u8,
            qdev_id: qdev_id.unwrap_or_default(),
            bars,
        });
    });
    for (i, b, secondary) in behind {
        if depth < 256
            && let Some(info) = out[i].bridge.as_mut()
        {
            info.devices = bus_functions(root, bridges, ids, b, secondary, depth + 1);
        }
    }
    out
}

/// A type-1 header's bus numbers and windows (PCI-to-PCI bridge spec 3.2.5).
fn bridge_windows(reg: &dyn Fn(usize) -> u32) -> PciBridgeInfo {
    let buses = reg(6);
    let io = reg(7);
    let (mem, pref) = (reg(8), reg(9));
    let io_base = u64::from(io & 0xf0) << 8;
    let io_limit = (u64::from((io >> 8) & 0xf0) << 8) | 0xfff;
    let mem_base = u64::from(mem & 0xfff0) << 16;
    let mem_limit = (u64::from((mem >> 16) & 0xfff0) << 16) | 0xf_ffff;
    let pref_base = (u64::from(pref & 0xfff0) << 16) | (u64::from(reg(10)) << 32);
    let pref_limit =
        (u64::from((pref >> 16) & 0xfff0) << 16) | 0xf_ffff | (u64::from(reg(11)) << 32);
    PciBridgeInfo {
        primary: buses as u8,
        secondary: (buses >> 8) as u8,
        subordinate: (buses >> 16) as u8,
        io: (io_base, io_limit),
        memory: (mem_base, mem_limit),
        prefetch: (pref_base, pref_limit),
        devices: Vec::new(),
    }
}

/// `-pidfile PATH`: holds the process id while accel runs; removed when dropped.
pub(super) struct PidFile(PathBuf);

impl PidFile {
    pub(super) fn create(path: &std::path::Path) -> std::io::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
