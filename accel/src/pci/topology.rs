//! What firmware (SeaBIOS) does to the PCI topology before the OS runs, since accel boots the
//! kernel directly: number the buses behind bridges depth-first in device/function order,
//! give each bridge a memory window sized for what is behind it (at least
//! [`BRIDGE_WINDOW_MIN`], 1 MiB aligned, so a hotplugged device fits), place the memory BARs
//! of the devices behind it inside that window, and enable the bridge's memory decoding and
//! bus mastering. Linux then uses these assignments as they are.
//!
//! Every BAR was placed in the root window when its device was created (so its device's
//! notify ioeventfds have a unique address); bridge windows come from what is left of the
//! window, the BARs behind a bridge move into its window (the device hears of it through
//! `bar_mapped`, before decoding is on) and their creation-time ranges are freed. I/O and prefetchable windows stay closed (accel's devices
//! have neither I/O nor BARs that need a prefetchable window); the guest may open them.

use std::sync::{Arc, Mutex};

use super::bridge::PciBridge;
use super::config::{BarKind, NUM_BARS};
use super::pcie_slot::{SlotEvents, SlotWiring};
use super::root::{FunctionRef, PciRoot};
use super::{InterruptRouter, PciError};
use crate::config::{PciBridgeConfig, PciBridgeKind};

/// The bridges of a VM by `id=`, with the bus index behind each.
#[derive(Clone, Default)]
pub struct Bridges {
    by_id: Vec<(String, usize, Arc<Mutex<PciBridge>>)>,
}

impl Bridges {
    /// Creates `configs` (in order: a bridge's `bus=` names an earlier one) on `root`.
    pub fn create(root: &PciRoot, configs: &[PciBridgeConfig]) -> Result<Self, PciError> {
        let mut out = Bridges::default();
        for c in configs {
            let bus = match &c.bus {
                None => 0,
                Some(id) => out
                    .bus(id)
                    .ok_or_else(|| PciError::UnknownBus(id.clone()))?,
            };
            let slots = match c.kind {
                PciBridgeKind::RootPort { .. } => 0..=0,
                _ => 1..=31,
            };
            let bridge = Arc::new(Mutex::new(PciBridge::new(c.kind)));
            let (slot, secondary) =
                root.add_bridge(bus, c.slot, c.function, bridge.clone(), slots)?;
            log::info!(
                "{}: PCI bridge at bus index {bus} {slot:02x}.{}, bus index {secondary} behind",
                c.id,
                c.function
            );
            out.by_id.push((c.id.clone(), secondary, bridge));
        }
        Ok(out)
    }

    /// The bus index behind the bridge with `id=id`.
    pub fn bus(&self, id: &str) -> Option<usize> {
        self.by_id
            .iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, bus, _)| *bus)
    }

    /// The id of the bridge whose secondary bus is bus index `bus`.
    pub fn id_of_bus(&self, bus: usize) -> Option<&str> {
        self.by_id
            .iter()
            .find(|(_, b, _)| *b == bus)
            .map(|(id, _, _)| id.as_str())
    }

    /// The bridge with `id=id` (root ports: their slot registers, for native hotplug).
    pub fn bridge(&self, id: &str) -> Option<Arc<Mutex<PciBridge>>> {
        self.by_id
            .iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, _, b)| b.clone())
    }

    /// The bridge whose secondary bus is bus index `bus`.
    pub fn bridge_of_bus(&self, bus: usize) -> Option<Arc<Mutex<PciBridge>>> {
        self.by_id
            .iter()
            .find(|(_, b, _)| *b == bus)
            .map(|(_, _, br)| br.clone())
    }

    /// Sets each root port's presence-detect state from whether its bus has a device, then
    /// its slot's power-on state (QEMU's reset: occupied slots powered, empty ones off).
    pub fn update_presence(&self, root: &PciRoot) {
        for (_, bus, bridge) in &self.by_id {
            let present = root.bus_occupied(*bus);
            let mut b = bridge.lock().unwrap();
            b.set_presence(present, false);
            b.slot_reset();
        }
    }

    /// Native hot-plug on every root port (q35): interrupts through `router`, power-offs
    /// reported on `events`.
    pub fn wire_slots(&self, router: &Arc<dyn InterruptRouter>, events: &Arc<SlotEvents>) {
        for (_, bus, bridge) in &self.by_id {
            bridge.lock().unwrap().wire_slot(SlotWiring {
                router: router.clone(),
                events: events.clone(),
                bus: *bus,
                msi_error_logged: false,
            });
        }
    }
}

/// Alignment (and granularity) of a bridge memory window.
pub const BRIDGE_WINDOW_ALIGN: u64 = 1 << 20;
/// Smallest memory window a bridge gets (room for a hotplugged device).
pub const BRIDGE_WINDOW_MIN: u64 = 2 << 20;
const COMMAND_MEMORY_MASTER: u32 = 0x0006;

/// Something that takes address space behind a bridge.
enum Item {
    Bar {
        f: FunctionRef,
        bar: usize,
        kind: BarKind,
        size: u64,
    },
    Window {
        f: FunctionRef,
        child: usize,
        size: u64,
    },
}

impl Item {
    fn size(&self) -> u64 {
        match self {
            Item::Bar { size, .. } | Item::Window { size, .. } => *size,
        }
    }
    fn align(&self) -> u64 {
        match self {
            Item::Bar { size, .. } => *size,
            Item::Window { .. } => BRIDGE_WINDOW_ALIGN,
        }
    }
}

fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

impl PciRoot {
    /// Whether bus index `bus` has any function.
    pub fn bus_occupied(&self, bus: usize) -> bool {
        let topo = self.topology.lock().unwrap();
        topo.buses
            .get(bus)
            .is_some_and(|b| b.functions.iter().any(Option::is_some))
    }

    /// Numbers the buses, then sizes and places every bridge window and the BARs behind it.
    pub fn assign_resources(&self) -> Result<(), PciError> {
        let mut next = 0u8;
        self.number_buses(0, 0, &mut next)?;
        for (f, child) in self.bridges_on(0) {
            let size = self.window_size(child);
            let base = self.allocate_mmio_aligned(size, BRIDGE_WINDOW_ALIGN)?;
            self.place_window(f, child, base, size);
        }
        Ok(())
    }

    /// The bridges on bus index `bus`, in device/function order, with their bus index.
    fn bridges_on(&self, bus: usize) -> Vec<(FunctionRef, usize)> {
        let topo = self.topology.lock().unwrap();
        let Some(b) = topo.buses.get(bus) else {
            return Vec::new();
        };
        b.functions
            .iter()
            .enumerate()
            .filter_map(|(devfn, func)| {
                let child = func.as_ref()?.secondary?;
                Some((
                    FunctionRef {
                        bus,
                        devfn: devfn as u8,
                    },
                    child,
                ))
            })
            .collect()
    }

    /// Writes a whole register as the guest would (masks apply), then remaps BARs.
    fn firmware_write(&self, f: FunctionRef, reg: usize, value: u32) {
        if let Some(dev) = self.function(f) {
            dev.lock()
                .unwrap()
                .write_config(reg, 0, &value.to_le_bytes());
        }
        if reg == 1 || (4..4 + NUM_BARS).contains(&reg) {
            self.sync_bars(f);
        }
    }

    fn number_buses(&self, bus: usize, number: u8, next: &mut u8) -> Result<(), PciError> {
        for (f, child) in self.bridges_on(bus) {
            *next = next.checked_add(1).ok_or(PciError::TooManyBuses)?;
            let secondary = *next;
            let numbers =
                |sub: u8| u32::from(number) | (u32::from(secondary) << 8) | (u32::from(sub) << 16);
            self.firmware_write(f, 6, numbers(0xff));
            self.number_buses(child, secondary, next)?;
            self.firmware_write(f, 6, numbers(*next));
        }
        Ok(())
    }

    /// What is behind bus index `bus`, largest alignment first (so a bump allocator keeps
    /// every BAR naturally aligned).
    fn items(&self, bus: usize) -> Vec<Item> {
        let mut items = Vec::new();
        let functions: Vec<(FunctionRef, Option<usize>)> = {
            let topo = self.topology.lock().unwrap();
            let Some(b) = topo.buses.get(bus) else {
                return items;
            };
            b.functions
                .iter()
                .enumerate()
                .filter_map(|(devfn, func)| {
                    let func = func.as_ref()?;
                    Some((
                        FunctionRef {
                            bus,
                            devfn: devfn as u8,
                        },
                        func.secondary,
                    ))
                })
                .collect()
        };
        for (f, secondary) in functions {
            if let Some(child) = secondary {
                items.push(Item::Window {
                    f,
                    child,
                    size: self.window_size(child),
                });
                continue;
            }
            let Some(dev) = self.function(f) else {
                continue;
            };
            let dev = dev.lock().unwrap();
            for bar in 0..NUM_BARS {
                if let Some(info) = dev.config().bar_info(bar)
                    && info.kind != BarKind::Io
                {
                    items.push(Item::Bar {
                        f,
                        bar,
                        kind: info.kind,
                        size: info.size,
                    });
                }
            }
        }
        items.sort_by_key(|i| std::cmp::Reverse(i.align()));
        items
    }

    /// Offsets of `items` packed from 0, and the end.
    fn layout(items: &[Item]) -> (Vec<u64>, u64) {
        let mut offsets = Vec::with_capacity(items.len());
        let mut end = 0u64;
        for item in items {
            let at = align_up(end, item.align());
            offsets.push(at);
            end = at + item.size();
        }
        (offsets, end)
    }

    /// Memory window bus index `bus`'s bridge needs.
    fn window_size(&self, bus: usize) -> u64 {
        let (_, end) = Self::layout(&self.items(bus));
        align_up(end, BRIDGE_WINDOW_ALIGN).max(BRIDGE_WINDOW_MIN)
    }

    /// Programs bridge `f`'s memory window to `[base, base + size)` and places what is behind
    /// it.
    fn place_window(&self, f: FunctionRef, child: usize, base: u64, size: u64) {
        let limit = base + size - 1;
        let window = ((base >> 16) as u32 & 0xfff0) | (((limit >> 16) as u32 & 0xfff0) << 16);
        self.firmware_write(f, 8, window);
        self.firmware_write(f, 1, COMMAND_MEMORY_MASTER);
        self.place_items(child, base);
    }

    /// A device was hot-plugged on bus index `bus`: its BARs go into the memory window the
    /// bus's bridge forwards now (as firmware placed it, or as the guest reprogrammed it), so
    /// the guest finds them where it can reach them. Returns false (BARs left where they
    /// were created) if the window is closed or too small; the guest may then assign them.
    pub fn place_in_window(&self, bus: usize) -> bool {
        let Some(f) = self.bridge_of(bus) else {
            return false;
        };
        let Some(dev) = self.function(f) else {
            return false;
        };
        let w = dev.lock().unwrap().config().read_reg(8);
        let base = u64::from(w & 0xfff0) << 16;
        let limit = (u64::from(w >> 16 & 0xfff0) << 16) | 0xf_ffff;
        let (_, end) = Self::layout(&self.items(bus));
        if limit < base || end > limit - base + 1 {
            log::warn!(
                "pci: bus index {bus}: the bridge window [{base:#x}, {limit:#x}] cannot hold                  {end:#x} bytes of BARs; the guest has to assign them"
            );
            return false;
        }
        self.place_items(bus, base);
        true
    }

    /// The bridge whose secondary bus is bus index `bus`.
    fn bridge_of(&self, bus: usize) -> Option<FunctionRef> {
        self.all_functions().into_iter().find(|&f| {
            let topo = self.topology.lock().unwrap();
            topo.buses[f.bus].functions[usize::from(f.devfn)]
                .as_ref()
                .is_some_and(|func| func.secondary == Some(bus))
        })
    }

    /// Places what is behind bus index `child` from `base` on (BARs, nested windows).
    fn place_items(&self, child: usize, base: u64) {
        let items = self.items(child);
        let (offsets, _) = Self::layout(&items);
        for (item, off) in items.iter().zip(offsets) {
            let addr = base + off;
            match *item {
                Item::Bar { f, bar, kind, size } => {
                    let Some(dev) = self.function(f) else {
                        continue;
                    };
                    let old = dev.lock().unwrap().config().bar_address(bar);
                    self.firmware_write(f, 4 + bar, addr as u32);
                    if kind == BarKind::Mem64 {
                        self.firmware_write(f, 5 + bar, (addr >> 32) as u32);
                    }
                    // Where the device was created (its notify ioeventfds) follows, and the
                    // creation-time place in the root window is given back.
                    dev.lock().unwrap().bar_mapped(bar, Some(addr));
                    if let Some(old) = old.filter(|&o| o != addr) {
                        self.free_mmio(old, size);
                    }
                }
                Item::Window { f, child, size } => self.place_window(f, child, addr, size),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::{PciBridgeConfig, PciBridgeKind};
    use crate::devices::bus::Bus;
    use crate::devices::bus::BusDevice;
    use crate::pci::bridge::PciBridge;
    use crate::pci::config::{BarInfo, ClassCode, PciConfig, PciHeader};
    use crate::pci::{PciConfigIo, PciDevice};

    struct Dev(PciConfig);
    impl PciDevice for Dev {
        fn config(&self) -> &PciConfig {
            &self.0
        }
        fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
            self.0.write(reg, offset, data);
        }
        fn read_bar(&mut self, _: usize, _: u64, data: &mut [u8]) {
            data.fill(0xab);
        }
        fn write_bar(&mut self, _: usize, _: u64, _: &[u8]) {}
    }

    fn dev(size: u64) -> Arc<Mutex<Dev>> {
        let mut c = PciConfig::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class: ClassCode {
                class: 1,
                subclass: 0,
                prog_if: 0,
            },
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        let info = BarInfo {
            kind: BarKind::Mem32,
            size,
            prefetchable: false,
        };
        c.add_bar(0, info, 0).unwrap();
        Arc::new(Mutex::new(Dev(c)))
    }

    fn read(io: &mut PciConfigIo, bus: u32, slot: u32, func: u32, reg: u32) -> u32 {
        let a = 0x8000_0000 | (bus << 16) | (slot << 11) | (func << 8) | (reg << 2);
        io.write(0, &a.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    /// Two root ports (one with a PCIe-to-PCI bridge behind it), a device behind each: bus
    /// numbers depth-first, windows nested, BARs inside their bridge's window, config reads
    /// routed by the numbers.
    #[test]
    fn numbers_buses_and_places_windows() {
        let mmio = Arc::new(Bus::new());
        let root = Arc::new(PciRoot::new(mmio.clone(), Arc::new(Bus::new())).unwrap());
        let rp = |port| {
            Arc::new(Mutex::new(PciBridge::new(PciBridgeKind::RootPort {
                chassis: 1,
                port,
                slot: 0,
            })))
        };
        let (_, b1) = root.add_bridge(0, Some(0x1c), 0, rp(0x10), 0..=0).unwrap();
        let (_, b2) = root.add_bridge(0, Some(0x1c), 1, rp(0x11), 0..=0).unwrap();
        let ppb = Arc::new(Mutex::new(PciBridge::new(PciBridgeKind::PciePciBridge)));
        let (_, b3) = root.add_bridge(b2, None, 0, ppb, 1..=31).unwrap();
        assert_eq!(root.add_function(b1, None, 0, dev(0x4000)).unwrap(), 0);
        assert_eq!(
            root.add_function(b1, None, 0, dev(0x4000)),
            Err(PciError::NoFreeSlot),
            "a root port has one slot"
        );
        assert_eq!(root.add_function(b3, None, 0, dev(0x1_0000)).unwrap(), 1);
        root.add_function(b3, Some(2), 0, dev(0x10_0000)).unwrap();
        root.assign_resources().unwrap();

        let mut io = PciConfigIo::new(root.clone());
        // 00:1c.0 -> bus 1; 00:1c.1 -> bus 2 -> 02:00.0 -> bus 3.
        assert_eq!(read(&mut io, 0, 0x1c, 0, 6) & 0xff_ffff, 0x01_0100);
        assert_eq!(read(&mut io, 0, 0x1c, 1, 6) & 0xff_ffff, 0x03_0200);
        assert_eq!(read(&mut io, 2, 0, 0, 6) & 0xff_ffff, 0x03_0302);
        assert_ne!(
            read(&mut io, 0, 0x1c, 0, 3) & 0x0080_0000,
            0,
            "multi-function"
        );
        assert_eq!(read(&mut io, 1, 0, 0, 0), 0x1042_1af4);
        assert_eq!(read(&mut io, 3, 1, 0, 0), 0x1042_1af4);
        assert_eq!(read(&mut io, 3, 0, 0, 0), 0xffff_ffff);
        assert_eq!(read(&mut io, 4, 0, 0, 0), 0xffff_ffff);
        let window = |bus, slot, func| {
            let w = read(&mut PciConfigIo::new(root.clone()), bus, slot, func, 8);
            (
                u64::from(w & 0xfff0) << 16,
                (u64::from(w >> 16 & 0xfff0) << 16) | 0xf_ffff,
            )
        };
        let (b1_base, b1_limit) = window(0, 0x1c, 0);
        assert_eq!(b1_limit - b1_base + 1, BRIDGE_WINDOW_MIN);
        let bar = u64::from(read(&mut io, 1, 0, 0, 4) & !0xf);
        assert!((b1_base..b1_limit).contains(&bar));
        let (b2_base, b2_limit) = window(0, 0x1c, 1);
        let (b3_base, b3_limit) = window(2, 0, 0);
        assert!(b2_base <= b3_base && b3_limit <= b2_limit);
        for slot in [1, 2] {
            let bar = u64::from(read(&mut io, 3, slot, 0, 4) & !0xf);
            assert!((b3_base..b3_limit).contains(&bar), "{bar:#x}");
        }
        // Windows do not overlap and are inside the PCI window.
        assert!(b1_limit < b2_base || b2_limit < b1_base);
        assert!(b1_base >= crate::pci::PCI_MMIO_WINDOW_START);
        // The guest can renumber: bus 1 becomes 5, routing follows.
        let a = 0x8000_0000u32 | (0x1c << 11) | (6 << 2);
        io.write(0, &a.to_le_bytes());
        io.write(4, &0x05_0500u32.to_le_bytes());
        assert_eq!(read(&mut io, 5, 0, 0, 0), 0x1042_1af4);
        assert_eq!(read(&mut io, 1, 0, 0, 0), 0xffff_ffff);
        // Enabling the device's memory decode maps its BAR where firmware put it.
        let a = 0x8005_0000u32 | (1 << 2);
        io.write(0, &a.to_le_bytes());
        io.write(4, &[0x02, 0]);
        let mut b = [0u8; 1];
        assert!(mmio.read(bar, &mut b));
        assert_eq!(b, [0xab]);
    }

    /// `query-pci`'s view (what `vmm::info` builds): a device behind a root port is listed
    /// under the port's `pci_bridge`, with the bus numbers and window the port forwards, and
    /// the port carries its `id=` as qdev id.
    #[test]
    fn query_pci_nests_devices_under_their_bridge() {
        let root = Arc::new(PciRoot::new(Arc::new(Bus::new()), Arc::new(Bus::new())).unwrap());
        let config = PciBridgeConfig {
            id: "rp1".into(),
            kind: PciBridgeKind::RootPort {
                chassis: 1,
                port: 0x10,
                slot: 0,
            },
            bus: None,
            slot: Some(0x1c),
            function: 0,
        };
        let bridges = Bridges::create(&root, &[config]).unwrap();
        let bus = bridges.bus("rp1").unwrap();
        root.add_function(bus, None, 0, dev(0x4000)).unwrap();
        root.add_function(0, Some(3), 0, dev(0x4000)).unwrap();
        root.assign_resources().unwrap();
        let ids = Default::default();
        let top = crate::vmm::info::pci_functions(&root, &bridges, &ids);
        let slots: Vec<(u8, u8)> = top.iter().map(|f| (f.bus, f.slot)).collect();
        assert_eq!(slots, [(0, 0), (0, 3), (0, 0x1c)]);
        let port = &top[2];
        assert_eq!(port.qdev_id, "rp1");
        let b = port.bridge.as_ref().expect("pci_bridge");
        assert_eq!((b.primary, b.secondary, b.subordinate), (0, 1, 1));
        assert!(
            b.memory.0 <= b.memory.1,
            "memory window open: {:?}",
            b.memory
        );
        assert_eq!(b.devices.len(), 1);
        let d = &b.devices[0];
        assert_eq!((d.bus, d.slot, d.function, d.vendor), (1, 0, 0, 0x1af4));
        // The guest has not turned decoding on: the BAR is listed, not mapped.
        assert_eq!((d.bars.len(), d.bars[0].address), (1, None));
    }
}
