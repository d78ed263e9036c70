//! virtio-console (virtio 1.2 §5.3), single port (no `VIRTIO_CONSOLE_F_MULTIPORT`): receiveq
//! (device → driver, device-writable buffers) and transmitq (driver → device, device-readable
//! buffers) of port 0, and the config-space layout.

use vm_memory::ByteValued;

pub use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;

/// Config `cols`/`rows` are valid.
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
/// Several ports and a control queue pair (not implemented by the backend).
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
/// Config `emerg_wr` works.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;

/// Port 0 receiveq: input for the driver.
pub const CONSOLE_RX_QUEUE: usize = 0;
/// Port 0 transmitq: output from the driver.
pub const CONSOLE_TX_QUEUE: usize = 1;
/// Queues of a single-port console.
pub const CONSOLE_NUM_QUEUES: usize = 2;

/// virtio-console configuration space (little endian).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleConfig {
    pub cols: u16,
    pub rows: u16,
    pub max_nr_ports: u32,
    pub emerg_wr: u32,
}
// SAFETY: packed plain old data, every bit pattern is valid.
unsafe impl ByteValued for ConsoleConfig {}

/// Size of [`ConsoleConfig`] on the wire (12 bytes).
pub const CONSOLE_CONFIG_SIZE: usize = std::mem::size_of::<ConsoleConfig>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(CONSOLE_CONFIG_SIZE, 12);
        assert_eq!(std::mem::offset_of!(ConsoleConfig, max_nr_ports), 4);
        assert_eq!(std::mem::offset_of!(ConsoleConfig, emerg_wr), 8);
    }
}
