//! pvpanic: QEMU's ISA panic notifier (docs/specs/pvpanic.rst). One I/O port (0x505 by
//! default); a read returns the events the device handles, a write reports one: bit 0 "the
//! guest panicked, the host decides" ([`PanicEvent::Panicked`]), bit 1 "the guest panicked
//! and loads its crash kernel itself" ([`PanicEvent::CrashLoaded`]). The guest finds it
//! through the DSDT (`_HID` QEMU0001), so it needs ACPI.

use super::bus::BusDevice;

const PANICKED: u8 = 1 << 0;
const CRASH_LOADED: u8 = 1 << 1;
/// The events this device handles (what QEMU 7.2 reports: 3).
pub const EVENTS: u8 = PANICKED | CRASH_LOADED;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicEvent {
    Panicked,
    CrashLoaded,
}

/// Where the events go (the VM's request channel).
pub type PanicSink = Box<dyn Fn(PanicEvent) + Send>;

pub struct Pvpanic {
    sink: PanicSink,
}

impl Pvpanic {
    pub fn new(sink: PanicSink) -> Self {
        Pvpanic { sink }
    }
}

impl BusDevice for Pvpanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0
            && let Some(b) = data.first_mut()
        {
            *b = EVENTS;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first().filter(|_| offset == 0) else {
            return;
        };
        // Bits the device does not know are ignored (the spec); "panicked" wins when both
        // are set, as in QEMU.
        if value & PANICKED != 0 {
            (self.sink)(PanicEvent::Panicked);
        } else if value & CRASH_LOADED != 0 {
            (self.sink)(PanicEvent::CrashLoaded);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn device() -> (Pvpanic, Arc<Mutex<Vec<PanicEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let dev = Pvpanic::new(Box::new(move |e| s.lock().unwrap().push(e)));
        (dev, seen)
    }

    #[test]
    fn reads_the_supported_events_and_reports_writes() {
        let (mut dev, seen) = device();
        let mut b = [0xffu8];
        dev.read(0, &mut b);
        assert_eq!(b, [3]);
        dev.write(0, &[0]);
        dev.write(0, &[0x80]);
        assert!(seen.lock().unwrap().is_empty(), "unknown bits are ignored");
        dev.write(0, &[2]);
        dev.write(0, &[3]);
        dev.write(0, &[1]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                PanicEvent::CrashLoaded,
                PanicEvent::Panicked,
                PanicEvent::Panicked
            ]
        );
    }
}
