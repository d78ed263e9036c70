//! virtio-vsock (virtio 1.2 §5.10): device id, queues, config space, packet header, ops.
//!
//! Shared by the `vhost-user-vsock` backend and the userspace driver, so both sides agree on
//! every byte. The backend parses packets in guest memory with the `virtio-vsock` crate; this
//! header type is what a driver writes and reads.

use vm_memory::ByteValued;

/// Virtio device id of a socket device.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// Queue indexes.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Queues the device has (QEMU's vhost-user-vsock only hands rx and tx to the backend).
pub const NUM_QUEUES: usize = 3;

/// Well-known CIDs.
pub const VSOCK_HOST_CID: u64 = 2;
/// Lowest CID a guest may have (0-2 are reserved; u32::MAX is "any").
pub const MIN_GUEST_CID: u64 = 3;
/// Highest CID a guest may have (the kernel's CIDs are 32 bits; u32::MAX is VMADDR_CID_ANY).
pub const MAX_GUEST_CID: u64 = (u32::MAX - 1) as u64;

/// Socket types.
pub const VSOCK_TYPE_STREAM: u16 = 1;
pub const VSOCK_TYPE_SEQPACKET: u16 = 2;

/// Packet operations.
pub const VSOCK_OP_INVALID: u16 = 0;
pub const VSOCK_OP_REQUEST: u16 = 1;
pub const VSOCK_OP_RESPONSE: u16 = 2;
pub const VSOCK_OP_RST: u16 = 3;
pub const VSOCK_OP_SHUTDOWN: u16 = 4;
pub const VSOCK_OP_RW: u16 = 5;
pub const VSOCK_OP_CREDIT_UPDATE: u16 = 6;
pub const VSOCK_OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more data.
pub const VSOCK_FLAGS_SHUTDOWN_RCV: u32 = 1;
pub const VSOCK_FLAGS_SHUTDOWN_SEND: u32 = 2;

/// The packet header at the start of every rx and tx buffer (little endian, 44 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}
// SAFETY: packed plain old data, every bit pattern is valid.
unsafe impl ByteValued for PacketHeader {}

/// Size of [`PacketHeader`] on the wire.
pub const PACKET_HEADER_SIZE: usize = std::mem::size_of::<PacketHeader>();

impl PacketHeader {
    /// The header with every field converted from little endian (as read from memory).
    pub fn from_le(self) -> Self {
        PacketHeader {
            src_cid: u64::from_le(self.src_cid),
            dst_cid: u64::from_le(self.dst_cid),
            src_port: u32::from_le(self.src_port),
            dst_port: u32::from_le(self.dst_port),
            len: u32::from_le(self.len),
            type_: u16::from_le(self.type_),
            op: u16::from_le(self.op),
            flags: u32::from_le(self.flags),
            buf_alloc: u32::from_le(self.buf_alloc),
            fwd_cnt: u32::from_le(self.fwd_cnt),
        }
    }

    /// The header with every field converted to little endian (to write to memory).
    pub fn to_le(self) -> Self {
        // The conversion is its own inverse.
        self.from_le()
    }
}

/// virtio-vsock configuration space: the guest's CID (little endian).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
}
// SAFETY: packed plain old data, every bit pattern is valid.
unsafe impl ByteValued for VsockConfig {}

/// Size of [`VsockConfig`].
pub const VSOCK_CONFIG_SIZE: usize = std::mem::size_of::<VsockConfig>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_virtio_spec() {
        assert_eq!(PACKET_HEADER_SIZE, 44);
        assert_eq!(std::mem::offset_of!(PacketHeader, len), 24);
        assert_eq!(std::mem::offset_of!(PacketHeader, op), 30);
        assert_eq!(std::mem::offset_of!(PacketHeader, fwd_cnt), 40);
        assert_eq!(VSOCK_CONFIG_SIZE, 8);
        let h = PacketHeader {
            src_cid: 3,
            op: VSOCK_OP_RW,
            ..Default::default()
        };
        assert_eq!(h.to_le().as_slice()[0], 3);
        assert_eq!(h.to_le().as_slice()[30], VSOCK_OP_RW as u8);
        assert_eq!(h.to_le().from_le(), h);
    }
}
