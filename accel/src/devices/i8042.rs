//! The i8042 keyboard controller, reduced to what a VMM needs: the CPU-reset command.
//!
//! One [`I8042`] is inserted at [`I8042_PORT_BASE`] (0x60) with length [`I8042_PORT_LEN`] (5),
//! as Firecracker does: offset 0 is the data port 0x60, offset 4 the command/status port 0x64.
//! Ports 0x61-0x63 fall inside the range but are not the controller's (0x61 is the PC speaker /
//! PIT gate port, which KVM's in-kernel PIT handles before it reaches userspace); they read as
//! 0xff and ignore writes. Writing 0xfe (pulse reset line) to port 0x64 fires the reset
//! [`Trigger`] — what Linux does with `reboot=k`. accel's trigger posts the reset request,
//! which also stops every vCPU before it runs another guest instruction. All controller registers read as 0, so the
//! input buffer looks empty and Linux's wait-before-reset loop ends at once; there is no
//! keyboard (a guest i8042 driver fails its self-test and gives up).

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;

/// The data port.
pub const I8042_PORT_BASE: u64 = 0x60;
/// Data port 0x60 through command/status port 0x64.
pub const I8042_PORT_LEN: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// The keyboard controller. See the module documentation.
pub struct I8042<T: Trigger> {
    dev: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// `reset` fires when the guest asks for a CPU reset.
    pub fn new(reset: T) -> Self {
        I8042 {
            dev: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (DATA_OFFSET | COMMAND_OFFSET, [byte]) => *byte = self.dev.read(offset as u8),
            (_, data) => {
                log::debug!("i8042: {}-byte read at offset {offset} ignored", data.len());
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA_OFFSET | COMMAND_OFFSET, &[value]) => {
                if let Err(e) = self.dev.write(offset as u8, value) {
                    log::error!("i8042: signalling the guest reset failed: {e:?}");
                }
            }
            _ => log::debug!(
                "i8042: {}-byte write at offset {offset} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;
    use crate::devices::serial::EventFdTrigger;

    #[test]
    fn reset_command_signals_the_event() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut kbd = I8042::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        // Not a reset: other commands, 0xfe on the data port, other ports.
        kbd.write(COMMAND_OFFSET, &[0xaa]);
        kbd.write(DATA_OFFSET, &[0xfe]);
        kbd.write(1, &[0xfe]);
        kbd.write(COMMAND_OFFSET, &[0xfe, 0x00]);
        assert!(evt.read().is_err(), "no reset yet");
        // Status: input buffer empty, so the guest's wait loop ends.
        let mut status = [0xffu8];
        kbd.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & 0x02, 0);
        let mut other = [0u8];
        kbd.read(1, &mut other);
        assert_eq!(other, [0xff]);
        kbd.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
