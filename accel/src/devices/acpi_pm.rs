//! ACPI fixed-hardware power management: the PM1a event and control blocks, on I/O ports the
//! way QEMU's PIIX4 PM has them (base 0x600), reduced to what a VM's life needs: the
//! fixed-feature power button and soft-off (S5).
//!
//! ```text
//! 0x600  PM1a_STS (16 bits, write 1 to clear)   bit 8 PWRBTN_STS, bit 15 WAK_STS
//! 0x602  PM1a_EN  (16 bits)                     bit 8 PWRBTN_EN
//! 0x604  PM1a_CNT (16 bits)                     bit 0 SCI_EN (always 1), bits 10-12 SLP_TYP,
//!                                               bit 13 SLP_EN (write-only)
//! ```
//!
//! The SCI is ISA IRQ [`SCI_IRQ`] (9), level-triggered: it is asserted while a status bit is
//! set whose enable bit is set, and deasserted when the guest clears the status (its SCI
//! handler does) or the enable. The FADT (arch/acpi) points the guest here and says the power
//! button is the fixed-feature one, so Linux's ACPI button driver creates `LNXPWRBN` and turns
//! PWRBTN_STS into a KEY_POWER input event. A write of SLP_EN with SLP_TYP = [`S5_SLP_TYP`]
//! (the value of the DSDT's `\_S5` package) powers the VM off.
//!
//! There is no PM timer (FADT PM_TMR_BLK = 0: the guest has kvmclock/TSC).
//!
//! GPE0 ([`GPE0_BLK`], 2 bytes of status (write 1 to clear) then 2 of enable, as QEMU's
//! pc at 0xafe0) carries the PCI hotplug event (bit 1); it shares the SCI with PM1a
//! ([`Gpe0Io`] is its port device).

use super::bus::BusDevice;

/// First port of the PM1a event block (PM1a_STS, then PM1a_EN).
pub const PM1A_EVT_BLK: u16 = 0x600;
/// PM1a control block (PM1a_CNT).
pub const PM1A_CNT_BLK: u16 = 0x604;
/// PM1_EVT_LEN in the FADT: 2 bytes of status and 2 of enable.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1_CNT_LEN in the FADT.
pub const PM1_CNT_LEN: u8 = 2;
/// Ports the device occupies from [`PM1A_EVT_BLK`].
pub const PM_PORT_LEN: u64 = 6;
/// The SCI: ISA IRQ 9 (as on PIIX4), level-triggered active-high (MADT override).
pub const SCI_IRQ: u32 = 9;
/// SLP_TYP value for S5 (soft off); the DSDT's `\_S5` package carries it.
pub const S5_SLP_TYP: u16 = 5;

/// The GPE0 block's first port (status, then enable at +2).
pub const GPE0_BLK: u16 = 0xafe0;
/// GPE0_BLK_LEN in the FADT.
pub const GPE0_BLK_LEN: u8 = 4;

/// PM1_STS / PM1_EN: power button.
const PWRBTN: u16 = 1 << 8;
/// PM1_STS: wake status (the guest clears it before sleeping; never set here).
const WAK_STS: u16 = 1 << 15;
/// PM1_CNT: the platform is in ACPI mode (there is no SMI_CMD to switch it).
const SCI_EN: u16 = 1 << 0;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;
const SLP_EN: u16 = 1 << 13;
/// Sleep requests other than S5 are logged this many times, then dropped silently.
const MAX_SLEEP_LOGS: u32 = 4;

/// Raises or lowers the SCI line (KVM_IRQ_LINE on [`SCI_IRQ`] in accel).
pub type SciLine = Box<dyn FnMut(bool) + Send>;
/// Called once per S5 request (accel: post the guest-shutdown request).
pub type PowerOff = Box<dyn FnMut() + Send>;

/// The PM1a registers. See the module documentation.
pub struct AcpiPm {
    sts: u16,
    en: u16,
    cnt: u16,
    gpe_sts: u16,
    gpe_en: u16,
    sci_level: bool,
    sci: SciLine,
    power_off: PowerOff,
    sleep_logs: u32,
}

impl AcpiPm {
    pub fn new(sci: SciLine, power_off: PowerOff) -> Self {
        AcpiPm {
            sts: 0,
            en: 0,
            cnt: SCI_EN,
            gpe_sts: 0,
            gpe_en: 0,
            sci_level: false,
            sci,
            power_off,
            sleep_logs: 0,
        }
    }

    /// A press of the power button (QMP `system_powerdown`): latches PWRBTN_STS, which raises
    /// the SCI once the guest has enabled the button (PWRBTN_EN).
    pub fn press_power_button(&mut self) {
        log::info!(
            "ACPI power button pressed (guest {} it)",
            if self.en & PWRBTN != 0 {
                "listens to"
            } else {
                "has not enabled"
            }
        );
        self.sts |= PWRBTN;
        self.update_sci();
    }

    /// Platform reset (reboot): power-on register values, SCI low.
    pub fn reset(&mut self) {
        self.sts = 0;
        self.en = 0;
        self.cnt = SCI_EN;
        self.gpe_sts = 0;
        self.gpe_en = 0;
        self.update_sci();
    }

    /// Latches GPE0 status bit `bit`; the SCI rises once the guest enabled it.
    pub fn raise_gpe(&mut self, bit: u8) {
        self.gpe_sts |= 1 << bit;
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let level = self.sts & self.en != 0 || self.gpe_sts & self.gpe_en != 0;
        if level != self.sci_level {
            self.sci_level = level;
            (self.sci)(level);
        }
    }

    /// The six register bytes as the guest sees them.
    fn image(&self) -> [u8; PM_PORT_LEN as usize] {
        let [s0, s1] = self.sts.to_le_bytes();
        let [e0, e1] = self.en.to_le_bytes();
        let [c0, c1] = self.cnt.to_le_bytes();
        [s0, s1, e0, e1, c0, c1]
    }

    fn write_byte(&mut self, index: u64, value: u8) {
        let v = u16::from(value);
        match index {
            0 => self.sts &= !v,
            1 => self.sts &= !(v << 8),
            2 => self.en = (self.en & 0xff00) | v,
            3 => self.en = (self.en & 0x00ff) | (v << 8),
            4 => self.cnt = (self.cnt & 0xff00) | v,
            5 => self.cnt = (self.cnt & 0x00ff) | (v << 8),
            _ => {}
        }
    }

    /// After a PM1_CNT write: SCI_EN stays set, SLP_EN starts the sleep and reads back 0.
    fn control_written(&mut self) {
        self.cnt |= SCI_EN;
        if self.cnt & SLP_EN == 0 {
            return;
        }
        self.cnt &= !SLP_EN;
        let typ = (self.cnt >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if typ == S5_SLP_TYP {
            log::info!("guest powered off (ACPI S5)");
            (self.power_off)();
        } else if self.sleep_logs < MAX_SLEEP_LOGS {
            self.sleep_logs += 1;
            log::warn!(
                "guest asked for ACPI sleep type {typ}: only S5 ({S5_SLP_TYP}) is offered; ignored"
            );
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let image = self.image();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset + i as u64)
                .ok()
                .and_then(|j| image.get(j).copied())
                .unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut control = false;
        for (i, &b) in data.iter().enumerate() {
            let index = offset + i as u64;
            self.write_byte(index, b);
            control |= index == 4 || index == 5;
        }
        if control {
            self.control_written();
        }
        // WAK_STS is never raised here; keep it clear whatever was written.
        self.sts &= !WAK_STS;
        self.update_sci();
    }
}

/// The GPE0 block's ports, on the same [`AcpiPm`] (one SCI for both).
pub struct Gpe0Io(pub std::sync::Arc<std::sync::Mutex<AcpiPm>>);

impl BusDevice for Gpe0Io {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let pm = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let [s0, s1] = pm.gpe_sts.to_le_bytes();
        let [e0, e1] = pm.gpe_en.to_le_bytes();
        let image = [s0, s1, e0, e1];
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset + i as u64)
                .ok()
                .and_then(|j| image.get(j).copied())
                .unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut pm = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, &b) in data.iter().enumerate() {
            let v = u16::from(b);
            match offset + i as u64 {
                0 => pm.gpe_sts &= !v,
                1 => pm.gpe_sts &= !(v << 8),
                2 => pm.gpe_en = (pm.gpe_en & 0xff00) | v,
                3 => pm.gpe_en = (pm.gpe_en & 0x00ff) | (v << 8),
                _ => {}
            }
        }
        pm.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Probe {
        sci: Arc<Mutex<Vec<bool>>>,
        offs: Arc<AtomicU32>,
    }

    fn pm() -> (AcpiPm, Probe) {
        let sci = Arc::new(Mutex::new(Vec::new()));
        let offs = Arc::new(AtomicU32::new(0));
        let (s, o) = (sci.clone(), offs.clone());
        let dev = AcpiPm::new(
            Box::new(move |l| s.lock().unwrap().push(l)),
            Box::new(move || {
                o.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (dev, Probe { sci, offs })
    }

    fn read16(dev: &mut AcpiPm, off: u64) -> u16 {
        let mut b = [0u8; 2];
        dev.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn power_button_raises_sci_until_the_guest_clears_the_status() {
        let (mut dev, p) = pm();
        assert_eq!(read16(&mut dev, 4), SCI_EN, "ACPI mode from power-on");
        // Pressed before the guest enabled the button: latched, no SCI.
        dev.press_power_button();
        assert_eq!(read16(&mut dev, 0), PWRBTN);
        assert!(p.sci.lock().unwrap().is_empty());
        // Guest clears all status and enables the button (as ACPICA does at init).
        dev.write(0, &0xffffu16.to_le_bytes());
        dev.write(2, &PWRBTN.to_le_bytes());
        assert_eq!(read16(&mut dev, 0), 0);
        assert!(p.sci.lock().unwrap().is_empty());
        // Press: SCI up; the handler reads the status and writes it back to clear: SCI down.
        dev.press_power_button();
        assert_eq!(*p.sci.lock().unwrap(), vec![true]);
        let sts = read16(&mut dev, 0);
        assert_eq!(sts, PWRBTN);
        dev.write(0, &sts.to_le_bytes());
        assert_eq!(*p.sci.lock().unwrap(), vec![true, false]);
        // A 32-bit read of the event block sees status and enable.
        let mut b = [0u8; 4];
        dev.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), u32::from(PWRBTN) << 16);
        assert_eq!(p.offs.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn slp_en_with_s5_powers_off_other_types_do_not() {
        let (mut dev, p) = pm();
        // ACPICA writes SLP_TYP first, then SLP_TYP | SLP_EN.
        let s3 = 3 << SLP_TYP_SHIFT;
        dev.write(4, &(s3 | SCI_EN).to_le_bytes());
        dev.write(4, &(s3 | SLP_EN | SCI_EN).to_le_bytes());
        assert_eq!(p.offs.load(Ordering::SeqCst), 0);
        for _ in 0..100 {
            dev.write(4, &(s3 | SLP_EN).to_le_bytes()); // bounded logging
        }
        let s5 = S5_SLP_TYP << SLP_TYP_SHIFT;
        dev.write(4, &s5.to_le_bytes());
        assert_eq!(p.offs.load(Ordering::SeqCst), 0, "no SLP_EN yet");
        assert_eq!(read16(&mut dev, 4), s5 | SCI_EN, "SCI_EN cannot be cleared");
        // The high byte alone carries SLP_TYP and SLP_EN.
        dev.write(5, &[((s5 | SLP_EN) >> 8) as u8]);
        assert_eq!(p.offs.load(Ordering::SeqCst), 1);
        assert_eq!(read16(&mut dev, 4) & SLP_EN, 0, "SLP_EN reads as 0");
    }

    #[test]
    fn gpe_raises_the_sci_while_enabled_and_set() {
        let (dev, p) = pm();
        let dev = std::sync::Arc::new(Mutex::new(dev));
        let mut gpe = Gpe0Io(dev.clone());
        dev.lock().unwrap().raise_gpe(1);
        assert!(p.sci.lock().unwrap().is_empty(), "not enabled yet");
        gpe.write(2, &[0x02]);
        assert_eq!(*p.sci.lock().unwrap(), vec![true]);
        let mut b = [0u8; 4];
        gpe.read(0, &mut b);
        assert_eq!(b, [2, 0, 2, 0]);
        gpe.write(0, &[0x02]);
        assert_eq!(*p.sci.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn reset_lowers_the_sci_and_clears_the_registers() {
        let (mut dev, p) = pm();
        dev.write(2, &PWRBTN.to_le_bytes());
        dev.press_power_button();
        dev.reset();
        assert_eq!(*p.sci.lock().unwrap(), vec![true, false]);
        assert_eq!(read16(&mut dev, 0), 0);
        assert_eq!(read16(&mut dev, 2), 0);
        // Out-of-range bytes read as 0xff and writes there are ignored.
        let mut b = [0u8; 4];
        dev.read(4, &mut b);
        assert_eq!(b, [1, 0, 0xff, 0xff]);
        dev.write(6, &[0xff]);
    }
}
