//! PCI-to-PCI bridges: QEMU's `pcie-root-port` (1b36:000c), `pci-bridge` (1b36:0001) and
//! `pcie-pci-bridge` (1b36:000e) as type-1 configuration headers.
//!
//! The header's bus numbers and windows are plain registers the guest (or accel, acting as
//! firmware, in [`super::topology`]) programs; [`super::root::PciRoot`] routes configuration
//! accesses by the secondary/subordinate numbers. Memory accesses are not filtered by the
//! windows: BARs decode on the flat MMIO bus wherever they are programmed.
//!
//! Root ports carry a PCIe capability (version 2, root port, slot implemented) whose slot
//! registers follow the PCIe base spec and QEMU's `pcie_cap_slot_init`: slot capabilities
//! (attention button, power controller, power/attention indicators, electromechanical
//! interlock, hot-plug surprise and capable, physical slot number), slot control with
//! "command completed" set after each write (no NCCS), slot status with its
//! write-1-to-clear event bits and the presence-detect state, and an MSI capability for the
//! hot-plug interrupt. Native hot-plug (events, the interrupt, the guest powering the slot
//! off) is in [`super::pcie_slot`].

use super::PciDevice;
use super::config::{ClassCode, PciConfig, PciHeader};
use super::pcie_slot::SlotWiring;
use crate::config::PciBridgeKind;

pub const PCI_VENDOR_ID_REDHAT_QUMRANET: u16 = 0x1b36;
pub const DEVICE_ID_PCI_BRIDGE: u16 = 0x0001;
pub const DEVICE_ID_ROOT_PORT: u16 = 0x000c;
pub const DEVICE_ID_PCIE_PCI_BRIDGE: u16 = 0x000e;

/// Type-1 header registers (dword index).
pub const BUS_NUMBERS_REG: usize = 6;
pub const IO_WINDOW_REG: usize = 7;
pub const MEM_WINDOW_REG: usize = 8;
pub const PREF_WINDOW_REG: usize = 9;
const PREF_BASE_UPPER_REG: usize = 10;
const PREF_LIMIT_UPPER_REG: usize = 11;
const HEADER_TYPE_REG: usize = 3;
const BRIDGE_CONTROL_REG: usize = 15;

const CAP_ID_PCIE: u8 = 0x10;
const CAP_ID_SLOT_ID: u8 = 0x04;
/// PCIe capability size (version 2 layout).
const PCIE_CAP_LEN: usize = 0x3c;
const PCIE_TYPE_ROOT_PORT: u16 = 0x4;
const PCIE_TYPE_PCI_BRIDGE: u16 = 0x7;

// Offsets inside the PCIe capability.
const EXP_FLAGS: usize = 0x02;
const EXP_DEVCAP: usize = 0x04;
const EXP_DEVCTL: usize = 0x08;
const EXP_LNKCAP: usize = 0x0c;
const EXP_LNKCTL: usize = 0x10;
pub const EXP_LNKSTA: usize = 0x12;
pub const EXP_SLTCAP: usize = 0x14;
pub const EXP_SLTCTL: usize = 0x18;
pub const EXP_SLTSTA: usize = 0x1a;
const EXP_RTCTL: usize = 0x1c;
const EXP_DEVCTL2: usize = 0x28;
const EXP_LNKCAP2: usize = 0x2c;
const EXP_LNKCTL2: usize = 0x30;

// Slot capabilities.
pub const SLTCAP_ABP: u32 = 1 << 0;
pub const SLTCAP_PCP: u32 = 1 << 1;
pub const SLTCAP_AIP: u32 = 1 << 3;
pub const SLTCAP_PIP: u32 = 1 << 4;
pub const SLTCAP_HPS: u32 = 1 << 5;
pub const SLTCAP_HPC: u32 = 1 << 6;
pub const SLTCAP_EIP: u32 = 1 << 17;
pub const SLTCAP_PSN_SHIFT: u32 = 19;
// Slot control: the bits software may write.
pub const SLTCTL_ABPE: u16 = 1 << 0;
pub const SLTCTL_PDCE: u16 = 1 << 3;
pub const SLTCTL_CCIE: u16 = 1 << 4;
pub const SLTCTL_HPIE: u16 = 1 << 5;
/// Attention indicator control (2 bits): on 01, blink 10, off 11.
pub const SLTCTL_AIC: u16 = 3 << 6;
pub const SLTCTL_AIC_OFF: u16 = 3 << 6;
/// Power indicator control (2 bits): on 01, blink 10, off 11.
pub const SLTCTL_PIC: u16 = 3 << 8;
pub const SLTCTL_PIC_ON: u16 = 1 << 8;
pub const SLTCTL_PIC_BLINK: u16 = 2 << 8;
pub const SLTCTL_PIC_OFF: u16 = 3 << 8;
/// Power controller control: 1 is off.
pub const SLTCTL_PCC: u16 = 1 << 10;
/// Electromechanical interlock control: writing 1 toggles the lock; reads 0.
pub const SLTCTL_EIC: u16 = 1 << 11;
pub const SLTCTL_DLLSCE: u16 = 1 << 12;
/// What the guest may write: QEMU's set (no power-fault, MRL or link-state-change enables).
const SLTCTL_WRITABLE: u16 = SLTCTL_ABPE
    | SLTCTL_PDCE
    | SLTCTL_CCIE
    | SLTCTL_HPIE
    | SLTCTL_AIC
    | SLTCTL_PIC
    | SLTCTL_PCC
    | SLTCTL_EIC;
// Slot status.
pub const SLTSTA_ABP: u16 = 1 << 0;
pub const SLTSTA_PFD: u16 = 1 << 1;
pub const SLTSTA_MRLSC: u16 = 1 << 2;
pub const SLTSTA_PDC: u16 = 1 << 3;
pub const SLTSTA_CC: u16 = 1 << 4;
pub const SLTSTA_PDS: u16 = 1 << 6;
pub const SLTSTA_DLLSC: u16 = 1 << 8;
/// The hot-plug events the slot reports (QEMU's PCI_EXP_HP_EV_SUPPORTED): attention button,
/// presence detect changed, command completed. They are write-1-to-clear.
pub const SLTSTA_EVENTS: u16 = SLTSTA_ABP | SLTSTA_PDC | SLTSTA_CC;
pub const LNKSTA_DLLLA: u16 = 1 << 13;

/// One bridge function.
pub struct PciBridge {
    pub(super) config: PciConfig,
    /// Offset of the PCIe capability (root ports and the PCIe-to-PCI bridge).
    pcie_cap: Option<usize>,
    /// Offset of the MSI capability (root ports: the hot-plug interrupt).
    pub(super) msi_cap: Option<usize>,
    /// Whether the slot's hot-plug interrupt condition was true when last evaluated (QEMU's
    /// `hpev_notified`): the MSI goes on a change from false to true.
    pub(super) hpev_notified: bool,
    /// Native hot-plug: where the interrupt goes and the main thread hears of power-offs.
    pub(super) wiring: Option<SlotWiring>,
}

impl PciBridge {
    pub fn new(kind: PciBridgeKind) -> Self {
        let device_id = match kind {
            PciBridgeKind::RootPort { .. } => DEVICE_ID_ROOT_PORT,
            PciBridgeKind::PciBridge { .. } => DEVICE_ID_PCI_BRIDGE,
            PciBridgeKind::PciePciBridge => DEVICE_ID_PCIE_PCI_BRIDGE,
        };
        let mut config = PciConfig::new(&PciHeader {
            vendor_id: PCI_VENDOR_ID_REDHAT_QUMRANET,
            device_id,
            revision: 0,
            class: ClassCode {
                class: 0x06,
                subclass: 0x04,
                prog_if: 0,
            },
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        config.set_reg(HEADER_TYPE_REG, 0x0001_0000);
        // Primary, secondary, subordinate bus numbers; the latency timer stays 0.
        config.set_wmask(BUS_NUMBERS_REG, 0x00ff_ffff);
        // I/O base/limit (16-bit decode); closed (base above limit) until programmed.
        config.set_wmask(IO_WINDOW_REG, 0x0000_f0f0);
        config.set_reg(IO_WINDOW_REG, 0x0000_00f0);
        config.set_w1cmask(IO_WINDOW_REG, 0xf900_0000);
        config.set_wmask(MEM_WINDOW_REG, 0xfff0_fff0);
        config.set_reg(MEM_WINDOW_REG, 0x0000_fff0);
        // Prefetchable window: 64-bit capable, closed.
        config.set_wmask(PREF_WINDOW_REG, 0xfff0_fff0);
        config.set_reg(PREF_WINDOW_REG, 0x0001_fff1);
        config.set_wmask(PREF_BASE_UPPER_REG, 0xffff_ffff);
        config.set_reg(PREF_LIMIT_UPPER_REG, 0);
        config.set_wmask(PREF_LIMIT_UPPER_REG, 0xffff_ffff);
        // Interrupt line; bridge control: parity/SERR/ISA/VGA/VGA16/master abort/bus reset.
        config.set_wmask(BRIDGE_CONTROL_REG, 0x007f_00ff);
        let mut bridge = PciBridge {
            config,
            pcie_cap: None,
            msi_cap: None,
            hpev_notified: false,
            wiring: None,
        };
        match kind {
            PciBridgeKind::RootPort {
                chassis: _,
                port,
                slot,
            } => {
                bridge.add_pcie_cap(PCIE_TYPE_ROOT_PORT, port, Some(slot));
                match super::msi::add_msi_capability(&mut bridge.config) {
                    Ok(cap) => bridge.msi_cap = Some(cap),
                    Err(e) => log::error!("pci root port: MSI capability: {e}"),
                }
            }
            PciBridgeKind::PciePciBridge => bridge.add_pcie_cap(PCIE_TYPE_PCI_BRIDGE, 0, None),
            PciBridgeKind::PciBridge { chassis_nr } => {
                // Slot numbering: no expansion slots, first in chassis; the chassis number is
                // writable (as in QEMU's slotid_cap_init).
                let r = bridge
                    .config
                    .add_capability(&[CAP_ID_SLOT_ID, 0, 0x20, chassis_nr], &[0, 0, 0, 0xff]);
                debug_assert!(r.is_ok());
            }
        }
        bridge
    }

    fn add_pcie_cap(&mut self, port_type: u16, port: u8, slot: Option<u16>) {
        let mut body = [0u8; PCIE_CAP_LEN];
        let mut wmask = [0u8; PCIE_CAP_LEN];
        body[0] = CAP_ID_PCIE;
        let flags: u16 = 2 | (port_type << 4) | if slot.is_some() { 1 << 8 } else { 0 };
        body[EXP_FLAGS..EXP_FLAGS + 2].copy_from_slice(&flags.to_le_bytes());
        // Role-based error reporting; 128-byte max payload.
        body[EXP_DEVCAP..EXP_DEVCAP + 4].copy_from_slice(&(1u32 << 15).to_le_bytes());
        wmask[EXP_DEVCTL..EXP_DEVCTL + 2].copy_from_slice(&0x7fffu16.to_le_bytes());
        // 2.5 GT/s x1, data link layer active reporting (root ports), port number.
        let dllarc = if slot.is_some() { 1u32 << 20 } else { 0 };
        let lnkcap = 1 | (1 << 4) | dllarc | (u32::from(port) << 24);
        body[EXP_LNKCAP..EXP_LNKCAP + 4].copy_from_slice(&lnkcap.to_le_bytes());
        wmask[EXP_LNKCTL..EXP_LNKCTL + 2].copy_from_slice(&0x0ffbu16.to_le_bytes());
        let lnksta: u16 = 1 | (1 << 4);
        body[EXP_LNKSTA..EXP_LNKSTA + 2].copy_from_slice(&lnksta.to_le_bytes());
        if let Some(psn) = slot {
            let sltcap = SLTCAP_ABP
                | SLTCAP_PCP
                | SLTCAP_AIP
                | SLTCAP_PIP
                | SLTCAP_HPS
                | SLTCAP_HPC
                | SLTCAP_EIP
                | (u32::from(psn & 0x1fff) << SLTCAP_PSN_SHIFT);
            body[EXP_SLTCAP..EXP_SLTCAP + 4].copy_from_slice(&sltcap.to_le_bytes());
            let sltctl = SLTCTL_AIC_OFF | SLTCTL_PIC_OFF;
            body[EXP_SLTCTL..EXP_SLTCTL + 2].copy_from_slice(&sltctl.to_le_bytes());
            wmask[EXP_SLTCTL..EXP_SLTCTL + 2].copy_from_slice(&SLTCTL_WRITABLE.to_le_bytes());
            wmask[EXP_RTCTL] = 0x1f;
        }
        wmask[EXP_DEVCTL2..EXP_DEVCTL2 + 2].copy_from_slice(&0x07ffu16.to_le_bytes());
        body[EXP_LNKCAP2..EXP_LNKCAP2 + 4].copy_from_slice(&(1u32 << 1).to_le_bytes());
        body[EXP_LNKCTL2] = 1;
        wmask[EXP_LNKCTL2..EXP_LNKCTL2 + 2].copy_from_slice(&0x0fffu16.to_le_bytes());
        match self.config.add_capability(&body, &wmask) {
            Ok(cap) => {
                self.pcie_cap = Some(cap);
                if slot.is_some() {
                    // Slot status shares the slot control dword: its event bits are
                    // write-1-to-clear.
                    let reg = (cap + EXP_SLTCTL) / 4;
                    self.config.set_w1cmask(reg, u32::from(SLTSTA_EVENTS) << 16);
                }
            }
            Err(e) => log::error!("pci bridge: PCIe capability: {e}"),
        }
    }

    /// Offset of the PCIe capability, if the bridge has one.
    pub fn pcie_cap(&self) -> Option<usize> {
        self.pcie_cap
    }

    pub(super) fn read16(&self, pos: usize) -> u16 {
        u16::from_le_bytes([self.config.read_byte(pos), self.config.read_byte(pos + 1)])
    }

    pub(super) fn write16_device(&mut self, pos: usize, value: u16) {
        let reg = pos / 4;
        let shift = (pos % 4) * 8;
        let old = self.config.read_reg(reg);
        let new = (old & !(0xffff << shift)) | (u32::from(value) << shift);
        self.config.set_reg(reg, new);
    }

    /// The slot's status register (root ports).
    pub fn slot_status(&self) -> Option<u16> {
        self.slot_cap_offset().map(|c| self.read16(c + EXP_SLTSTA))
    }

    /// The slot's control register (root ports).
    pub fn slot_control(&self) -> Option<u16> {
        self.slot_cap_offset().map(|c| self.read16(c + EXP_SLTCTL))
    }

    pub(super) fn slot_cap_offset(&self) -> Option<usize> {
        let cap = self.pcie_cap?;
        (self.read16(cap + EXP_FLAGS) & (1 << 8) != 0).then_some(cap)
    }

    /// Presence detect state (and data link layer active) of the slot; `changed` also
    /// latches the presence-detect-changed event (no interrupt: see
    /// [`Self::hot_added`](super::pcie_slot) for the hot-plug path).
    pub fn set_presence(&mut self, present: bool, changed: bool) {
        let Some(cap) = self.slot_cap_offset() else {
            return;
        };
        let mut sta = self.read16(cap + EXP_SLTSTA) & !SLTSTA_PDS;
        let mut lnk = self.read16(cap + EXP_LNKSTA) & !LNKSTA_DLLLA;
        if present {
            sta |= SLTSTA_PDS;
            lnk |= LNKSTA_DLLLA;
        }
        if changed {
            sta |= SLTSTA_PDC;
        }
        self.write16_device(cap + EXP_SLTSTA, sta);
        self.write16_device(cap + EXP_LNKSTA, lnk);
    }

    /// Whether the slot asks for a hot-plug interrupt now (PCIe base spec 6.7.3.4): hot-plug
    /// interrupts enabled (HPIE) and an event latched in slot status whose enable bit in slot
    /// control is set (attention button, presence detect changed; command completed with
    /// CCIE). [`super::pcie_slot`] signals the MSI on a change from false to true.
    pub fn hotplug_interrupt_pending(&self) -> bool {
        let (Some(ctl), Some(sta)) = (self.slot_control(), self.slot_status()) else {
            return false;
        };
        if ctl & SLTCTL_HPIE == 0 {
            return false;
        }
        let pairs = [
            (SLTSTA_ABP, SLTCTL_ABPE),
            (SLTSTA_PDC, SLTCTL_PDCE),
            (SLTSTA_CC, SLTCTL_CCIE),
        ];
        pairs
            .iter()
            .any(|&(event, enable)| sta & event != 0 && ctl & enable != 0)
    }

    /// The attention button was pressed: latches ABP in the slot status (and interrupts,
    /// if enabled).
    pub fn press_attention_button(&mut self) {
        self.slot_event(SLTSTA_ABP);
    }
}

impl PciDevice for PciBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some(cap) = self.slot_cap_offset() else {
            self.config.write(reg, offset, data);
            return;
        };
        let (old_ctl, old_sta) = (self.read16(cap + EXP_SLTCTL), self.read16(cap + EXP_SLTSTA));
        self.config.write(reg, offset, data);
        self.slot_registers_written(reg * 4 + offset as usize, data, old_ctl, old_sta);
    }

    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    fn reset(&mut self) {
        self.config.reset_command();
        if let Some(cap) = self.msi_cap {
            super::msi::reset_msi(&mut self.config, cap);
        }
        self.slot_reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::capabilities;

    #[test]
    fn root_port_header_and_slot_registers() {
        let mut rp = PciBridge::new(PciBridgeKind::RootPort {
            chassis: 1,
            port: 0x10,
            slot: 3,
        });
        let c = rp.config();
        assert_eq!(c.read_reg(0), 0x000c_1b36);
        assert_eq!(c.read_reg(2) >> 8, 0x06_0400);
        assert_eq!((c.read_reg(3) >> 16) & 0x7f, 1, "type-1 header");
        let cap = rp.pcie_cap().unwrap();
        let msi = rp.msi_cap.unwrap();
        assert_eq!(
            capabilities(|p| rp.config().read_byte(p)),
            vec![(cap, 0x10), (msi, super::super::msi::CAP_ID_MSI)]
        );
        assert_eq!(rp.read16(cap + EXP_FLAGS), 0x0142);
        assert_eq!(rp.config().read_byte(cap + EXP_LNKCAP + 3), 0x10);
        let sltcap = rp.config().read_reg((cap + EXP_SLTCAP) / 4);
        assert_eq!(sltcap >> SLTCAP_PSN_SHIFT, 3);
        assert_ne!(sltcap & SLTCAP_HPC, 0);
        // Bus numbers are writable, the vendor id is not.
        rp.write_config(BUS_NUMBERS_REG, 0, &0x0002_0100u32.to_le_bytes());
        assert_eq!(rp.config().read_reg(BUS_NUMBERS_REG), 0x0002_0100);
        rp.write_config(0, 0, &[0, 0]);
        assert_eq!(rp.config().read_reg(0), 0x000c_1b36);
        // Slot control write -> command completed; W1C clears it; PDS follows presence.
        rp.set_presence(true, true);
        let sta = rp.slot_status().unwrap();
        assert_eq!(sta & (SLTSTA_PDS | SLTSTA_PDC), SLTSTA_PDS | SLTSTA_PDC);
        let ctl = (cap + EXP_SLTCTL) as u64;
        rp.write_config(
            (ctl / 4) as usize,
            ctl % 4,
            &(SLTCTL_HPIE | SLTCTL_CCIE | SLTCTL_AIC_OFF).to_le_bytes(),
        );
        assert_eq!(
            rp.slot_control().unwrap(),
            SLTCTL_HPIE | SLTCTL_CCIE | SLTCTL_AIC_OFF
        );
        assert_ne!(rp.slot_status().unwrap() & SLTSTA_CC, 0);
        let sta = (cap + EXP_SLTSTA) as u64;
        rp.write_config(
            (sta / 4) as usize,
            sta % 4,
            &(SLTSTA_CC | SLTSTA_PDC | SLTSTA_PDS).to_le_bytes(),
        );
        let now = rp.slot_status().unwrap();
        assert_eq!(now & (SLTSTA_CC | SLTSTA_PDC), 0);
        assert_ne!(now & SLTSTA_PDS, 0, "presence is read-only");
        assert!(!rp.hotplug_interrupt_pending(), "no event latched");
        rp.press_attention_button();
        assert_ne!(rp.slot_status().unwrap() & SLTSTA_ABP, 0);
        assert!(!rp.hotplug_interrupt_pending(), "ABPE is off");
        rp.write_config(
            (ctl / 4) as usize,
            ctl % 4,
            &(SLTCTL_HPIE | SLTCTL_ABPE | SLTCTL_PDCE).to_le_bytes(),
        );
        // That write completed a command too, but CCIE is now off: only ABP counts.
        assert!(rp.hotplug_interrupt_pending());
        rp.write_config((sta / 4) as usize, sta % 4, &SLTSTA_ABP.to_le_bytes());
        assert!(!rp.hotplug_interrupt_pending());
        rp.set_presence(false, true);
        assert!(rp.hotplug_interrupt_pending(), "presence detect changed");
        assert_eq!(rp.slot_status().unwrap() & SLTSTA_PDS, 0);
    }

    #[test]
    fn pci_bridge_has_slot_id_and_no_pcie() {
        let b = PciBridge::new(PciBridgeKind::PciBridge { chassis_nr: 7 });
        assert_eq!(b.config().read_reg(0), 0x0001_1b36);
        assert!(b.pcie_cap().is_none());
        let caps = capabilities(|p| b.config().read_byte(p));
        assert_eq!(caps.len(), 1);
        assert_eq!(caps[0].1, CAP_ID_SLOT_ID);
        assert_eq!(b.config().read_byte(caps[0].0 + 3), 7);
        assert_eq!(b.slot_status(), None);
        let p = PciBridge::new(PciBridgeKind::PciePciBridge);
        let cap = p.pcie_cap().unwrap();
        assert_eq!(p.read16(cap + EXP_FLAGS), 0x0072);
    }
}
