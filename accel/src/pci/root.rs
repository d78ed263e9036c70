//! Bus 0: the host bridge, the legacy configuration mechanism #1 ports, and keeping every
//! device's BARs mapped on the MMIO/PIO buses where the guest programmed them.

use std::sync::{Arc, Mutex};

use vm_allocator::{AddressAllocator, AllocPolicy};

use super::config::{BarKind, ClassCode, NUM_BARS, PCI_VENDOR_ID_INTEL, PciConfig, PciHeader};
use super::{PCI_MMIO_WINDOW_END, PCI_MMIO_WINDOW_START, PciDevice, PciError};
use crate::devices::bus::{Bus, BusDevice};

/// Port of CONFIG_ADDRESS; CONFIG_DATA is at +4.
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
pub const PCI_CONFIG_IO_LEN: u64 = 8;
const NUM_SLOTS: usize = 32;
const DEVFNS: usize = 256;

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The host bridge at 00:00.0: identity only.
struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    fn new() -> Self {
        HostBridge {
            config: PciConfig::new(&PciHeader {
                vendor_id: PCI_VENDOR_ID_INTEL,
                device_id: 0x0d57,
                revision: 0,
                class: ClassCode {
                    class: 0x06,
                    subclass: 0x00,
                    prog_if: 0,
                },
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write(reg, offset, data);
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Routes bus accesses inside one BAR to its device.
struct BarRegion {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device.lock().unwrap().read_bar(self.bar, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap()
            .write_bar(self.bar, offset, data);
    }
}

pub(super) struct Function {
    pub(super) device: SharedPciDevice,
    /// Where each BAR is currently inserted on its bus.
    mapped: [Option<u64>; NUM_BARS],
    /// Bridges: index of the bus behind them in [`Topology::buses`].
    pub(super) secondary: Option<usize>,
}

/// One bus: 256 device/function numbers, and the slots devices may take on it.
pub(super) struct BusSlots {
    pub(super) functions: Vec<Option<Function>>,
    /// Slots that may hold devices (bus 0: 1..=31 after the host bridge; behind a PCIe root
    /// port: slot 0 only; behind a conventional bridge: 1..=31, as QEMU's SHPC wants).
    pub(super) slots: std::ops::RangeInclusive<u8>,
}

impl BusSlots {
    fn new(slots: std::ops::RangeInclusive<u8>) -> Self {
        BusSlots {
            functions: (0..DEVFNS).map(|_| None).collect(),
            slots,
        }
    }
}

/// Every bus: index 0 is the root bus, the others are behind bridges.
pub(super) struct Topology {
    pub(super) buses: Vec<BusSlots>,
}

/// A function's place: bus index in [`Topology::buses`] and device/function number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionRef {
    pub bus: usize,
    pub devfn: u8,
}

/// The PCI buses with their devices and the MMIO window their BARs are allocated from.
pub struct PciRoot {
    pub(super) topology: Mutex<Topology>,
    pub(super) mmio_alloc: Mutex<AddressAllocator>,
    mmio_bus: Arc<Bus>,
    pio_bus: Arc<Bus>,
}

impl PciRoot {
    /// Bus 0 with a host bridge in slot 0; BARs go on `mmio_bus` / `pio_bus`.
    pub fn new(mmio_bus: Arc<Bus>, pio_bus: Arc<Bus>) -> Result<Self, PciError> {
        let alloc = AddressAllocator::new(
            PCI_MMIO_WINDOW_START,
            PCI_MMIO_WINDOW_END - PCI_MMIO_WINDOW_START,
        )
        .map_err(|e| PciError::Allocator(e.to_string()))?;
        let root = PciRoot {
            topology: Mutex::new(Topology {
                buses: vec![BusSlots::new(0..=(NUM_SLOTS as u8 - 1))],
            }),
            mmio_alloc: Mutex::new(alloc),
            mmio_bus,
            pio_bus,
        };
        root.add_function(0, Some(0), 0, Arc::new(Mutex::new(HostBridge::new())))?;
        root.topology.lock().unwrap().buses[0].slots = 1..=(NUM_SLOTS as u8 - 1);
        Ok(root)
    }

    /// Reserves a naturally aligned `size`-byte range in the PCI MMIO window for a BAR.
    pub fn allocate_mmio(&self, size: u64) -> Result<u64, PciError> {
        self.allocate_mmio_aligned(size, size.max(4096))
    }

    pub(super) fn allocate_mmio_aligned(&self, size: u64, align: u64) -> Result<u64, PciError> {
        let range = self
            .mmio_alloc
            .lock()
            .unwrap()
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map_err(|_| PciError::OutOfMmioSpace(size))?;
        Ok(range.start())
    }

    /// Gives back a range [`allocate_mmio`](Self::allocate_mmio) returned (ignored if it did
    /// not come from there).
    pub fn free_mmio(&self, addr: u64, size: u64) {
        if let Ok(range) = vm_allocator::RangeInclusive::new(addr, addr + size - 1) {
            let _ = self.mmio_alloc.lock().unwrap().free(&range);
        }
    }

    /// The first free slot at or after 1 (slot 0 is the host bridge).
    pub fn free_slot(&self) -> Result<u8, PciError> {
        let topo = self.topology.lock().unwrap();
        free_slot_on(&topo.buses[0]).ok_or(PciError::NoFreeSlot)
    }

    /// Whether `slot` of bus 0 holds a device (or cannot hold one).
    pub fn slot_taken(&self, slot: u8) -> bool {
        let topo = self.topology.lock().unwrap();
        let b = &topo.buses[0];
        !b.slots.contains(&slot) || b.functions[usize::from(devfn(slot, 0))].is_some()
    }

    /// Unplugs function 0 of `slot` on bus 0: its BARs leave the buses and the slot is free
    /// again.
    pub fn remove_device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.remove_function(0, slot)
    }

    /// [`Self::remove_device`] of function 0 of `slot` on bus index `bus`.
    pub fn remove_function(&self, bus: usize, slot: u8) -> Option<SharedPciDevice> {
        let entry = self
            .topology
            .lock()
            .unwrap()
            .buses
            .get_mut(bus)?
            .functions
            .get_mut(usize::from(devfn(slot, 0)))?
            .take()?;
        let dev = entry.device.lock().unwrap();
        for (bar, at) in entry.mapped.iter().enumerate() {
            let (Some(addr), Some(info)) = (at, dev.config().bar_info(bar)) else {
                continue;
            };
            let on = if info.kind == BarKind::Io {
                &self.pio_bus
            } else {
                &self.mmio_bus
            };
            if let Err(e) = on.remove(*addr) {
                log::warn!("pci {bus}:{slot:02x}.0: unmapping BAR{bar} at {addr:#x}: {e}");
            }
        }
        drop(dev);
        Some(entry.device)
    }

    /// Plugs `device` as function 0 of `slot` (or the next free slot) on bus 0; returns the
    /// slot.
    pub fn add_device(&self, slot: Option<u8>, device: SharedPciDevice) -> Result<u8, PciError> {
        self.add_function(0, slot, 0, device)
    }

    /// Plugs `device` as `function` of `slot` (or of the next free slot) on bus index `bus`;
    /// returns the slot.
    pub fn add_function(
        &self,
        bus: usize,
        slot: Option<u8>,
        function: u8,
        device: SharedPciDevice,
    ) -> Result<u8, PciError> {
        let slot = self.insert(bus, slot, function, device, None)?;
        self.sync_bars(FunctionRef {
            bus,
            devfn: devfn(slot, function),
        });
        Ok(slot)
    }

    /// Plugs a bridge and creates the (empty) bus behind it, whose devices may use `slots`.
    /// Returns the slot and the new bus index.
    pub fn add_bridge(
        &self,
        bus: usize,
        slot: Option<u8>,
        function: u8,
        device: SharedPciDevice,
        slots: std::ops::RangeInclusive<u8>,
    ) -> Result<(u8, usize), PciError> {
        let mut topo = self.topology.lock().unwrap();
        let secondary = topo.buses.len();
        if secondary >= DEVFNS {
            return Err(PciError::TooManyBuses);
        }
        topo.buses.push(BusSlots::new(slots));
        drop(topo);
        match self.insert(bus, slot, function, device, Some(secondary)) {
            Ok(slot) => Ok((slot, secondary)),
            Err(e) => {
                self.topology.lock().unwrap().buses.pop();
                Err(e)
            }
        }
    }

    fn insert(
        &self,
        bus: usize,
        slot: Option<u8>,
        function: u8,
        device: SharedPciDevice,
        secondary: Option<usize>,
    ) -> Result<u8, PciError> {
        let mut topo = self.topology.lock().unwrap();
        let Some(b) = topo.buses.get_mut(bus) else {
            return Err(PciError::NoSuchBus(bus));
        };
        let slot = match slot {
            Some(s) => s,
            None => free_slot_on(b).ok_or(PciError::NoFreeSlot)?,
        };
        if !b.slots.contains(&slot) || function > 7 {
            return Err(PciError::SlotUnavailable(slot));
        }
        match b.functions.get_mut(usize::from(devfn(slot, function))) {
            Some(entry @ None) => {
                *entry = Some(Function {
                    device,
                    mapped: [None; NUM_BARS],
                    secondary,
                });
                Ok(slot)
            }
            _ => Err(PciError::SlotUnavailable(slot)),
        }
    }

    pub(super) fn function(&self, f: FunctionRef) -> Option<SharedPciDevice> {
        let topo = self.topology.lock().unwrap();
        let func = topo.buses.get(f.bus)?.functions.get(usize::from(f.devfn))?;
        func.as_ref().map(|s| s.device.clone())
    }

    /// Calls `f` with each occupied slot of bus 0 and its function 0's configuration space
    /// (for monitor queries; the guest's view, as last written).
    /// Calls `f` with each function on bus index `bus`: its device/function number, its
    /// configuration space and, for a bridge, the index of the bus behind it (monitor
    /// queries walk the tree with it).
    pub fn functions_on(
        &self,
        bus: usize,
        mut f: impl FnMut(u8, &crate::pci::PciConfig, Option<usize>),
    ) {
        let topo = self.topology.lock().unwrap();
        let Some(b) = topo.buses.get(bus) else {
            return;
        };
        for (devfn, func) in b.functions.iter().enumerate() {
            if let Some(func) = func {
                f(
                    devfn as u8,
                    func.device.lock().unwrap().config(),
                    func.secondary,
                );
            }
        }
    }

    pub fn for_each_function(&self, mut f: impl FnMut(u8, &crate::pci::PciConfig)) {
        for slot in 0..NUM_SLOTS as u8 {
            if let Some(dev) = self.function(FunctionRef {
                bus: 0,
                devfn: devfn(slot, 0),
            }) {
                f(slot, dev.lock().unwrap().config());
            }
        }
    }

    /// The bus index that bus number `number` is, following the bridges' secondary and
    /// subordinate bus numbers from bus 0 as the guest programmed them.
    fn resolve_bus(&self, number: u8) -> Option<usize> {
        if number == 0 {
            return Some(0);
        }
        let topo = self.topology.lock().unwrap();
        let mut bus = 0usize;
        let mut current = 0u8;
        // Each step goes to a strictly higher bus number: at most 255 steps.
        'down: for _ in 0..DEVFNS {
            for func in topo.buses.get(bus)?.functions.iter().flatten() {
                let Some(child) = func.secondary else {
                    continue;
                };
                let numbers = func.device.lock().unwrap().config().read_reg(6);
                let (sec, sub) = ((numbers >> 8) as u8, (numbers >> 16) as u8);
                if sec <= current {
                    continue;
                }
                if sec == number {
                    return Some(child);
                }
                if sec < number && number <= sub {
                    bus = child;
                    current = sec;
                    continue 'down;
                }
            }
            return None;
        }
        None
    }

    /// Config read of register `reg` of bus number `bus`, `slot`, `function`.
    pub fn config_read(&self, bus: u8, slot: usize, function: usize, reg: usize) -> u32 {
        let Some(f) = self.locate(bus, slot, function) else {
            return 0xffff_ffff;
        };
        let Some(dev) = self.function(f) else {
            return 0xffff_ffff;
        };
        let mut value = dev.lock().unwrap().read_config(reg);
        // Header type: function 0 says "multi-function" when the slot has other functions.
        if reg == 3 && function == 0 && self.slot_has_other_functions(f) {
            value |= 0x0080_0000;
        }
        value
    }

    /// Config write; moves BARs on the buses if the write changed where they decode.
    pub fn config_write(
        &self,
        bus: u8,
        slot: usize,
        function: usize,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) {
        let Some(f) = self.locate(bus, slot, function) else {
            return;
        };
        let Some(dev) = self.function(f) else {
            return;
        };
        dev.lock().unwrap().write_config(reg, offset, data);
        // Only the command register and the BARs change decoding.
        if reg == 1 || (4..4 + NUM_BARS).contains(&reg) {
            self.sync_bars(f);
        }
    }

    /// Whether bus number `bus`, `slot`, `function` names a present function.
    pub fn function_present(&self, bus: u8, slot: usize, function: usize) -> bool {
        self.locate(bus, slot, function)
            .and_then(|f| self.function(f))
            .is_some()
    }

    fn locate(&self, bus: u8, slot: usize, function: usize) -> Option<FunctionRef> {
        if slot >= NUM_SLOTS || function > 7 {
            return None;
        }
        Some(FunctionRef {
            bus: self.resolve_bus(bus)?,
            devfn: devfn(slot as u8, function as u8),
        })
    }

    fn slot_has_other_functions(&self, f: FunctionRef) -> bool {
        let topo = self.topology.lock().unwrap();
        let Some(b) = topo.buses.get(f.bus) else {
            return false;
        };
        let first = usize::from(f.devfn & !7);
        b.functions[first + 1..first + 8]
            .iter()
            .any(Option::is_some)
    }

    /// Platform reset: every device back to power-on state (decoding off, so BARs leave the
    /// buses until the guest enables them again).
    pub fn reset(&self) {
        for f in self.all_functions() {
            if let Some(dev) = self.function(f) {
                dev.lock().unwrap().reset();
                self.sync_bars(f);
            }
        }
    }

    pub(super) fn all_functions(&self) -> Vec<FunctionRef> {
        let topo = self.topology.lock().unwrap();
        let mut out = Vec::new();
        for (bus, b) in topo.buses.iter().enumerate() {
            for (i, func) in b.functions.iter().enumerate() {
                if func.is_some() {
                    out.push(FunctionRef {
                        bus,
                        devfn: i as u8,
                    });
                }
            }
        }
        out
    }

    /// Makes the buses match each BAR's current decode address.
    pub(super) fn sync_bars(&self, f: FunctionRef) {
        let mut topo = self.topology.lock().unwrap();
        let Some(Some(entry)) = topo
            .buses
            .get_mut(f.bus)
            .and_then(|b| b.functions.get_mut(usize::from(f.devfn)))
        else {
            return;
        };
        let name = format!("{}:{:02x}.{}", f.bus, f.devfn >> 3, f.devfn & 7);
        let mut moved = Vec::new();
        {
            let dev = entry.device.lock().unwrap();
            let config = dev.config();
            for bar in 0..NUM_BARS {
                let Some(info) = config.bar_info(bar) else {
                    continue;
                };
                let want = config.bar_mapping(bar);
                if want != entry.mapped[bar] {
                    moved.push((bar, info, want));
                }
            }
        }
        for (bar, info, want) in moved {
            let bus = if info.kind == BarKind::Io {
                &self.pio_bus
            } else {
                &self.mmio_bus
            };
            if let Some(old) = entry.mapped[bar].take()
                && let Err(e) = bus.remove(old)
            {
                log::warn!("pci {name}: unmapping BAR{bar} at {old:#x}: {e}");
            }
            if let Some(addr) = want {
                let region = Arc::new(Mutex::new(BarRegion {
                    device: entry.device.clone(),
                    bar,
                }));
                match bus.insert(region, addr, info.size) {
                    Ok(()) => entry.mapped[bar] = Some(addr),
                    Err(e) => log::warn!("pci {name}: BAR{bar} at {addr:#x}: {e}"),
                }
            }
            log::debug!(
                "pci {name}: BAR{bar} now at {:?}",
                entry.mapped[bar].map(|a| format!("{a:#x}"))
            );
            entry
                .device
                .lock()
                .unwrap()
                .bar_mapped(bar, entry.mapped[bar]);
        }
    }
}

/// Device/function number of `slot`.`function`.
pub fn devfn(slot: u8, function: u8) -> u8 {
    (slot << 3) | (function & 7)
}

fn free_slot_on(b: &BusSlots) -> Option<u8> {
    b.slots.clone().find(|&s| {
        let first = usize::from(devfn(s, 0));
        b.functions[first..first + 8].iter().all(Option::is_none)
    })
}

/// The configuration mechanism #1 ports (0xCF8 address, 0xCFC-0xCFF data) as a port-bus
/// device.
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<PciRoot>) -> Self {
        PciConfigIo { root, address: 0 }
    }

    /// `(bus, slot, function, register)` CONFIG_ADDRESS selects, if enabled.
    fn target(&self) -> Option<(u8, usize, usize, usize)> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        enabled.then_some((
            ((a >> 16) & 0xff) as u8,
            ((a >> 11) & 0x1f) as usize,
            ((a >> 8) & 0x7) as usize,
            ((a >> 2) & 0x3f) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => {
                let v = self.address.to_le_bytes();
                let off = offset as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = v.get(off + i).copied().unwrap_or(0xff);
                }
            }
            _ => {
                let value = match self.target() {
                    Some((bus, slot, func, reg)) => self.root.config_read(bus, slot, func, reg),
                    None => 0xffff_ffff,
                };
                let v = value.to_le_bytes();
                let off = (offset - 4) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = v.get(off + i).copied().unwrap_or(0xff);
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & 0x80ff_fffc;
            }
            (4..=7, _) if (offset - 4) as usize + data.len() <= 4 => {
                if let Some((bus, slot, func, reg)) = self.target() {
                    self.root
                        .config_write(bus, slot, func, reg, offset - 4, data);
                }
            }
            _ => log::debug!(
                "pci: ignored config port write at {:#x}+{offset}",
                PCI_CONFIG_IO_BASE
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::BarInfo;

    struct Dummy {
        config: PciConfig,
        last_write: Option<(usize, u64, Vec<u8>)>,
        mapped: Vec<(usize, Option<u64>)>,
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
            self.config.write(reg, offset, data);
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) << 4 | offset as u8);
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((bar, offset, data.to_vec()));
        }
        fn bar_mapped(&mut self, bar: usize, addr: Option<u64>) {
            self.mapped.push((bar, addr));
        }
    }

    fn cf8(slot: u32, reg: u32) -> [u8; 4] {
        (0x8000_0000 | (slot << 11) | (reg << 2)).to_le_bytes()
    }

    fn read_cfg(io: &mut PciConfigIo, slot: u32, reg: u32) -> u32 {
        io.write(0, &cf8(slot, reg));
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn config_ports_bars_and_moves() {
        let mmio = Arc::new(Bus::new());
        let pio = Arc::new(Bus::new());
        let root = Arc::new(PciRoot::new(mmio.clone(), pio.clone()).unwrap());
        let bar_addr = root.allocate_mmio(0x4000).unwrap();
        assert_eq!(bar_addr, PCI_MMIO_WINDOW_START);
        let mut config = PciConfig::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class: ClassCode {
                class: 1,
                subclass: 0x80,
                prog_if: 0,
            },
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        });
        let info = BarInfo {
            kind: BarKind::Mem32,
            size: 0x4000,
            prefetchable: false,
        };
        config.add_bar(0, info, bar_addr).unwrap();
        let dev = Arc::new(Mutex::new(Dummy {
            config,
            last_write: None,
            mapped: Vec::new(),
        }));
        assert_eq!(root.add_device(None, dev.clone()).unwrap(), 1);
        assert_eq!(
            root.add_device(Some(1), dev.clone()),
            Err(PciError::SlotUnavailable(1))
        );
        let mut io = PciConfigIo::new(root.clone());
        // CONFIG_ADDRESS reads back.
        io.write(0, &cf8(1, 0));
        let mut d = [0u8; 4];
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0800);
        assert_eq!(read_cfg(&mut io, 0, 0), 0x0d57_8086);
        assert_eq!(read_cfg(&mut io, 0, 2) >> 8, 0x06_0000);
        assert_eq!(read_cfg(&mut io, 1, 0), 0x1042_1af4);
        assert_eq!(read_cfg(&mut io, 2, 0), 0xffff_ffff, "empty slot");
        // Function 1 and other buses are absent.
        io.write(0, &(0x8000_0000u32 | (1 << 11) | (1 << 8)).to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(0, &(0x8001_0000u32).to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        // A 16-bit read at 0xCFE reads the device id.
        io.write(0, &cf8(1, 0));
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1042);

        // Not decoded yet.
        let mut b = [0u8; 1];
        assert!(!mmio.read(bar_addr + 3, &mut b));
        // Enable memory decoding through the ports.
        io.write(0, &cf8(1, 1));
        io.write(4, &[0x06, 0x00]);
        assert!(mmio.read(bar_addr + 3, &mut b));
        assert_eq!(b, [0x03]);
        assert!(mmio.write(bar_addr + 0x10, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0, 0x10, vec![7])));
        // Sizing with decode on: the BAR reads back the size mask and is unmapped from the
        // old place.
        io.write(0, &cf8(1, 4));
        io.write(4, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read_cfg(&mut io, 1, 4), 0xffff_c000);
        // Move it.
        io.write(0, &cf8(1, 4));
        io.write(4, &0xd000_0000u32.to_le_bytes());
        assert!(!mmio.read(bar_addr + 3, &mut b));
        assert!(mmio.read(0xd000_0001, &mut b));
        assert_eq!(b, [0x01]);
        // Disable decode: gone.
        io.write(0, &cf8(1, 1));
        io.write(4, &[0x00, 0x00]);
        assert!(!mmio.read(0xd000_0001, &mut b));
        let mapped = dev.lock().unwrap().mapped.clone();
        assert_eq!(
            mapped,
            vec![
                (0, Some(bar_addr)),
                (0, Some(0xffff_c000)),
                (0, Some(0xd000_0000)),
                (0, None)
            ]
        );
    }

    #[test]
    fn allocator_stays_in_window_and_aligns() {
        let root = PciRoot::new(Arc::new(Bus::new()), Arc::new(Bus::new())).unwrap();
        let a = root.allocate_mmio(0x1000).unwrap();
        let b = root.allocate_mmio(0x10_0000).unwrap();
        assert!(a >= PCI_MMIO_WINDOW_START && b + 0x10_0000 <= PCI_MMIO_WINDOW_END);
        assert_eq!(b % 0x10_0000, 0);
        assert_ne!(a, b);
        assert!(root.allocate_mmio(0x8000_0000).is_err());
    }
}
