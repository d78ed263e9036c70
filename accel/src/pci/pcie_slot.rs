//! PCIe native hot-plug on a root port's slot, as QEMU 7.2's hw/pci/pcie.c does it (the
//! registers themselves are in [`super::bridge`]):
//!
//! - Hot-add ([`PciBridge::hot_added`]): presence detect state and data link layer active
//!   set, then the "presence detect changed" and "attention button pressed" events (Linux's
//!   pciehp enables only the button's interrupt when the slot has one, and handles both).
//! - Unplug request ([`PciBridge::unplug_request`]): the attention button is pressed; the
//!   guest waits 5 s, releases the device and powers the slot off (power controller off,
//!   power indicator off). That write ([`PciBridge::slot_registers_written`]) empties the
//!   slot's registers at once and queues the port's bus on [`SlotEvents`]; the main thread
//!   takes the device off the bus (KVM registrations are not changed from vCPU threads).
//! - Interrupt: the slot's condition (QEMU's `hpev_notified`: HPIE and an enabled event
//!   latched) going from false to true sends the root port's MSI through KVM_SIGNAL_MSI.
//!   Without MSI enabled nothing is sent (accel's functions have no INTx pin); the guest
//!   sees the latched events when it enables interrupts and polls, as pciehp does.
//! - Every slot-control write completes at once: "command completed" is latched after it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::InterruptRouter;
use super::bridge::*;

/// How long QEMU keeps a pressed-but-unanswered unplug request pending before a repeated
/// `device_del` presses the button again (`pending_deleted_expires_ms`, 5 s).
pub const UNPLUG_PENDING: Duration = Duration::from_secs(5);

/// Status events QEMU restores when a guest write tries to clear ones that were not set
/// (guests clear everything during init, which would lose events).
const RACY_EVENTS: u16 = SLTSTA_ABP | SLTSTA_PFD | SLTSTA_MRLSC | SLTSTA_PDC | SLTSTA_CC;

/// Slots the guest powered off while occupied, for the main thread.
pub struct SlotEvents {
    /// Bus indices (behind root ports) whose devices must go.
    powered_off: Mutex<BTreeSet<usize>>,
    /// Readable while `powered_off` is not empty.
    pub evt: EventFd,
}

impl SlotEvents {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(SlotEvents {
            powered_off: Mutex::new(BTreeSet::new()),
            evt: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Queues bus index `bus` for removal and wakes the main thread.
    pub fn push(&self, bus: usize) {
        self.powered_off
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(bus);
        let _ = self.evt.write(1);
    }

    /// Main thread: the buses whose slot was powered off since the last call.
    pub fn take(&self) -> BTreeSet<usize> {
        let _ = self.evt.read();
        std::mem::take(
            &mut *self
                .powered_off
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// What a root port needs for native hot-plug.
pub struct SlotWiring {
    pub router: Arc<dyn InterruptRouter>,
    pub events: Arc<SlotEvents>,
    /// The bus index behind the port.
    pub bus: usize,
    /// An MSI delivery error was logged (guest-triggerable: logged once).
    pub msi_error_logged: bool,
}

/// Why a hot-plug request on a slot is refused (QEMU's texts).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("Hot-unplug failed: guest is busy (power indicator blinking)")]
    GuestBusy,
    #[error("slot is not hot-plug capable")]
    NotHotplug,
}

/// What an unplug request did.
#[derive(Debug, PartialEq, Eq)]
pub enum Unplug {
    /// The attention button was pressed: the guest decides.
    Asked,
    /// The slot was powered off: the device goes now, without asking the guest.
    Now,
}

fn powered_off(ctl: u16) -> bool {
    ctl & SLTCTL_PCC == SLTCTL_PCC && ctl & SLTCTL_PIC == SLTCTL_PIC_OFF
}

impl PciBridge {
    /// Connects the slot to the interrupt router and the main thread (q35 root ports).
    pub fn wire_slot(&mut self, wiring: SlotWiring) {
        if self.slot_cap_offset().is_some() {
            self.wiring = Some(wiring);
        }
    }

    /// Whether the slot does native hot-plug (a wired root port).
    pub fn hotplug_capable(&self) -> bool {
        self.wiring.is_some()
    }

    fn exp(&self) -> Option<usize> {
        self.slot_cap_offset()
    }

    /// Re-evaluates the interrupt condition; a rise sends the MSI (QEMU's
    /// `hotplug_event_notify`).
    fn notify(&mut self) {
        let prev = self.hpev_notified;
        self.hpev_notified = self.hotplug_interrupt_pending();
        if prev || !self.hpev_notified {
            return;
        }
        let message = self
            .msi_cap
            .and_then(|cap| super::msi::msi_message(&self.config, cap));
        let (Some(msg), Some(w)) = (message, self.wiring.as_mut()) else {
            return;
        };
        if let Err(e) = w.router.signal_msi(msg)
            && !std::mem::replace(&mut w.msi_error_logged, true)
        {
            log::error!("root port (bus index {}): hot-plug MSI: {e}", w.bus);
        }
    }

    /// Latches `events` in slot status; interrupts if that changed anything (QEMU's
    /// `pcie_cap_slot_event`).
    pub(super) fn slot_event(&mut self, events: u16) {
        let Some(cap) = self.exp() else {
            return;
        };
        let sta = self.read16(cap + EXP_SLTSTA);
        if sta & events == events {
            return;
        }
        self.write16_device(cap + EXP_SLTSTA, sta | events);
        self.notify();
    }

    fn set_bits16(&mut self, pos: usize, set: u16, clear: u16) {
        let v = (self.read16(pos) & !clear) | set;
        self.write16_device(pos, v);
    }

    /// A device was hot-plugged into the slot: present, link up, PDC and ABP events.
    pub fn hot_added(&mut self) {
        let Some(cap) = self.exp() else {
            return;
        };
        self.set_bits16(cap + EXP_SLTSTA, SLTSTA_PDS, 0);
        self.set_bits16(cap + EXP_LNKSTA, LNKSTA_DLLLA, 0);
        self.slot_event(SLTSTA_PDC | SLTSTA_ABP);
    }

    /// The slot is empty (QEMU's `pcie_cap_slot_do_unplug` after the functions went): no
    /// presence, link down, PDC latched without an interrupt of its own.
    fn emptied(&mut self) {
        let Some(cap) = self.exp() else {
            return;
        };
        self.set_bits16(cap + EXP_SLTSTA, SLTSTA_PDC, SLTSTA_PDS);
        self.set_bits16(cap + EXP_LNKSTA, 0, LNKSTA_DLLLA);
    }

    /// `device_del` of the slot's device (QEMU's `pcie_cap_slot_unplug_request_cb`).
    pub fn unplug_request(&mut self) -> Result<Unplug, SlotError> {
        let cap = self.exp().filter(|_| self.wiring.is_some());
        let Some(cap) = cap else {
            return Err(SlotError::NotHotplug);
        };
        let ctl = self.read16(cap + EXP_SLTCTL);
        if ctl & SLTCTL_PIC == SLTCTL_PIC_BLINK {
            return Err(SlotError::GuestBusy);
        }
        if powered_off(ctl) {
            self.emptied();
            self.notify();
            self.set_bits16(cap + EXP_SLTSTA, 0, SLTSTA_ABP);
            return Ok(Unplug::Now);
        }
        self.slot_event(SLTSTA_ABP);
        Ok(Unplug::Asked)
    }

    /// After a guest write at byte `start` of configuration space (`old_*`: the slot
    /// registers before it): QEMU's `pcie_cap_slot_write_config`.
    pub(super) fn slot_registers_written(
        &mut self,
        start: usize,
        data: &[u8],
        old_ctl: u16,
        old_sta: u16,
    ) {
        let Some(cap) = self.exp() else {
            return;
        };
        let end = start + data.len();
        let overlaps = |pos: usize| start < pos + 2 && pos < end;
        let sta_pos = cap + EXP_SLTSTA;
        if overlaps(sta_pos) {
            // The written status bits: the bytes of `data` that fall on slot status.
            let mut written = 0u16;
            for (i, &b) in data.iter().enumerate() {
                let pos = start + i;
                if (sta_pos..sta_pos + 2).contains(&pos) {
                    written |= u16::from(b) << ((pos - sta_pos) * 8);
                }
            }
            if written & !old_sta & RACY_EVENTS != 0 {
                let sta = self.read16(sta_pos);
                self.write16_device(sta_pos, (sta & !RACY_EVENTS) | (old_sta & RACY_EVENTS));
            }
            // Cleared events lower the condition: the next one raises it again.
            self.hpev_notified = self.hotplug_interrupt_pending();
        }
        let ctl_pos = cap + EXP_SLTCTL;
        if !overlaps(ctl_pos) {
            return;
        }
        // EIC reads 0 (QEMU makes it writable to see the 1 and clears it).
        let mut ctl = self.read16(ctl_pos);
        if ctl & SLTCTL_EIC != 0 {
            ctl &= !SLTCTL_EIC;
            self.write16_device(ctl_pos, ctl);
        }
        // Powered off while occupied: the devices go (QEMU does not act when the slot was
        // already off: guests rewrite the control of off slots before powering them on).
        let sta = self.read16(sta_pos);
        if sta & SLTSTA_PDS != 0 && powered_off(ctl) && !powered_off(old_ctl) {
            self.emptied();
            if let Some(w) = &self.wiring {
                w.events.push(w.bus);
            }
        }
        self.notify();
        self.slot_event(SLTSTA_CC);
    }

    /// Platform reset (QEMU's `pcie_cap_slot_reset`): interrupts and indicators off, power
    /// on if the slot is occupied and off if not, stale events gone.
    pub(super) fn slot_reset(&mut self) {
        let Some(cap) = self.exp() else {
            return;
        };
        let populated = self.read16(cap + EXP_SLTSTA) & SLTSTA_PDS != 0;
        let (pic, pcc) = if populated {
            (SLTCTL_PIC_ON, 0)
        } else {
            (SLTCTL_PIC_OFF, SLTCTL_PCC)
        };
        let clear = SLTCTL_EIC
            | SLTCTL_PIC
            | SLTCTL_AIC
            | SLTCTL_HPIE
            | SLTCTL_CCIE
            | SLTCTL_PDCE
            | SLTCTL_ABPE
            | SLTCTL_PCC;
        self.set_bits16(cap + EXP_SLTCTL, SLTCTL_AIC_OFF | pic | pcc, clear);
        self.set_bits16(
            cap + EXP_SLTSTA,
            0,
            SLTSTA_PFD | SLTSTA_MRLSC | SLTSTA_PDC | SLTSTA_ABP,
        );
        self.hpev_notified = self.hotplug_interrupt_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PciBridgeKind;
    use crate::pci::PciDevice;
    use crate::pci::msix::MsiMessage;
    use crate::pci::{InterruptError, interrupts::InterruptRouter};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Msis(Mutex<Vec<MsiMessage>>);

    impl InterruptRouter for Msis {
        fn allocate_gsi(&self) -> Result<u32, InterruptError> {
            Err(InterruptError::NoGsi)
        }
        fn set_msi_route(&self, _: u32, _: Option<MsiMessage>) -> Result<(), InterruptError> {
            Ok(())
        }
        fn register_irqfd(&self, _: &EventFd, _: u32) -> Result<(), InterruptError> {
            Ok(())
        }
        fn register_ioevent(&self, _: &EventFd, _: u64) -> Result<(), InterruptError> {
            Ok(())
        }
        fn unregister_ioevent(&self, _: &EventFd, _: u64) -> Result<(), InterruptError> {
            Ok(())
        }
        fn signal_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    fn write16(rp: &mut PciBridge, pos: usize, v: u16) {
        rp.write_config(pos / 4, (pos % 4) as u64, &v.to_le_bytes());
    }

    fn write32(rp: &mut PciBridge, pos: usize, v: u32) {
        rp.write_config(pos / 4, (pos % 4) as u64, &v.to_le_bytes());
    }

    /// Linux pciehp's sequence against the slot: MSI on, notifications enabled (with the
    /// attention button: ABPE, not PDCE), a hot-add interrupts, an unplug request presses
    /// the button, the guest powers the slot off, the main thread hears of it.
    #[test]
    fn hot_add_button_and_power_off() {
        let msis = Arc::new(Msis::default());
        let events = SlotEvents::new().unwrap();
        let mut rp = PciBridge::new(PciBridgeKind::RootPort {
            chassis: 1,
            port: 0x10,
            slot: 1,
        });
        rp.wire_slot(SlotWiring {
            router: msis.clone(),
            events: events.clone(),
            bus: 4,
            msi_error_logged: false,
        });
        rp.set_presence(false, false);
        rp.slot_reset();
        let cap = rp.exp().unwrap();
        let sltcap = rp.config.read_reg((cap + EXP_SLTCAP) / 4);
        assert_ne!(sltcap & SLTCAP_PCP, 0, "power controller present");
        let ctl = rp.slot_control().unwrap();
        assert_eq!(
            ctl & (SLTCTL_PCC | SLTCTL_PIC),
            SLTCTL_PCC | SLTCTL_PIC_OFF,
            "empty: off"
        );
        let msi = rp.msi_cap.unwrap();
        write32(&mut rp, msi + 4, 0xfee0_0000);
        write16(&mut rp, msi + 0xc, 0x31);
        write16(&mut rp, msi + 2, 1);
        // pciehp init: clear all events, enable notification.
        write16(&mut rp, cap + EXP_SLTSTA, 0x11f);
        let enable = SLTCTL_ABPE | SLTCTL_HPIE | SLTCTL_CCIE | SLTCTL_PCC | SLTCTL_PIC_OFF;
        write16(&mut rp, cap + EXP_SLTCTL, enable);
        assert_eq!(
            msis.0.lock().unwrap().len(),
            1,
            "command completed interrupts"
        );
        assert_eq!(msis.0.lock().unwrap()[0].data, 0x31);
        write16(&mut rp, cap + EXP_SLTSTA, SLTSTA_CC);
        assert!(!rp.hotplug_interrupt_pending());

        rp.hot_added();
        assert_eq!(msis.0.lock().unwrap().len(), 2, "hot-add interrupts (ABP)");
        let sta = rp.slot_status().unwrap();
        assert_eq!(
            sta & (SLTSTA_PDS | SLTSTA_PDC | SLTSTA_ABP),
            SLTSTA_PDS | SLTSTA_PDC | SLTSTA_ABP
        );
        write16(&mut rp, cap + EXP_SLTSTA, SLTSTA_PDC | SLTSTA_ABP);
        // The guest powers the slot on (PCC 0, indicator on): nothing is removed.
        write16(
            &mut rp,
            cap + EXP_SLTCTL,
            (enable & !SLTCTL_PCC & !SLTCTL_PIC) | SLTCTL_PIC_ON,
        );
        assert!(events.take().is_empty());
        write16(&mut rp, cap + EXP_SLTSTA, SLTSTA_CC);

        // device_del: the button.
        assert_eq!(rp.unplug_request(), Ok(Unplug::Asked));
        let n = msis.0.lock().unwrap().len();
        write16(&mut rp, cap + EXP_SLTSTA, SLTSTA_ABP);
        // Blinking indicator: a second request is refused.
        write16(
            &mut rp,
            cap + EXP_SLTCTL,
            (enable & !SLTCTL_PCC & !SLTCTL_PIC) | SLTCTL_PIC_BLINK,
        );
        assert_eq!(rp.unplug_request(), Err(SlotError::GuestBusy));
        write16(&mut rp, cap + EXP_SLTSTA, SLTSTA_CC);
        // Power off, then indicator off: the second write empties the slot.
        write16(
            &mut rp,
            cap + EXP_SLTCTL,
            (enable & !SLTCTL_PIC) | SLTCTL_PIC_BLINK,
        );
        assert!(events.take().is_empty());
        write16(&mut rp, cap + EXP_SLTCTL, enable);
        assert_eq!(events.take(), BTreeSet::from([4]));
        let sta = rp.slot_status().unwrap();
        assert_eq!(sta & (SLTSTA_PDS | SLTSTA_PDC), SLTSTA_PDC);
        assert!(msis.0.lock().unwrap().len() > n);
        // Writing the same (off) control again does nothing more.
        write16(&mut rp, cap + EXP_SLTCTL, enable);
        assert!(events.take().is_empty());
        // EIC always reads 0.
        write16(&mut rp, cap + EXP_SLTCTL, enable | SLTCTL_EIC);
        assert_eq!(rp.slot_control().unwrap() & SLTCTL_EIC, 0);
    }

    #[test]
    fn unplug_of_a_powered_off_slot_is_immediate() {
        let mut rp = PciBridge::new(PciBridgeKind::RootPort {
            chassis: 1,
            port: 0x10,
            slot: 1,
        });
        assert_eq!(rp.unplug_request(), Err(SlotError::NotHotplug), "not wired");
        rp.wire_slot(SlotWiring {
            router: Arc::new(Msis::default()),
            events: SlotEvents::new().unwrap(),
            bus: 1,
            msi_error_logged: false,
        });
        let cap = rp.exp().unwrap();
        write16(&mut rp, cap + EXP_SLTCTL, SLTCTL_PCC | SLTCTL_PIC_OFF);
        rp.set_presence(true, false);
        assert_eq!(rp.unplug_request(), Ok(Unplug::Now));
        assert_eq!(rp.slot_status().unwrap() & (SLTSTA_PDS | SLTSTA_ABP), 0);
    }
}
