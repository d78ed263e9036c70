//! What the QMP monitor reports about a built VM ([`VmInfo`]), and `-pidfile`.

use std::path::PathBuf;

use super::Vm;
use crate::config::{SerialConfig, VmConfig};
use crate::pci::{BarKind, PciRoot};
use crate::qmp::{CpuInfo, PciBarInfo, PciFunctionInfo, VmInfo};

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
            Box::new(move || pci_functions(&root, &ids)) as crate::qmp::PciLister
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

fn pci_functions(
    root: &PciRoot,
    ids: &std::sync::Mutex<std::collections::BTreeMap<u8, String>>,
) -> Vec<PciFunctionInfo> {
    let ids = ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut out = Vec::new();
    root.for_each_function(|slot, config| {
        let id = config.read_reg(0);
        let class = config.read_reg(2);
        let subsystem = config.read_reg(0x2c / 4);
        let irq = config.read_reg(0x3c / 4);
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
        out.push(PciFunctionInfo {
            slot,
            vendor: id as u16,
            device: (id >> 16) as u16,
            subsystem_vendor: subsystem as u16,
            subsystem: (subsystem >> 16) as u16,
            class: (class >> 16) as u16,
            irq_line: irq as u8,
            irq_pin: (irq >> 8) as u8,
            qdev_id: ids.get(&slot).cloned().unwrap_or_default(),
            bars,
        });
    });
    out
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
