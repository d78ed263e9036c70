//! virtio-blk (virtio 1.2 §5.2): device id, queues, config-space layout, request format.
//!
//! Shared by the `vhost-user-blk` backend (which serves requests) and the userspace driver
//! (which issues them), so both sides agree on every byte.

use vm_memory::ByteValued;

pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

/// Virtio device id of a block device.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// The unit of `sector` fields and of `capacity`, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// `flags` bit of a WRITE_ZEROES segment: the device may deallocate (unmap) the range.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// The request header the driver puts in the first (device-readable) descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestHeader {
    pub request_type: u32,
    pub reserved: u32,
    pub sector: u64,
}
// SAFETY: plain old data, no padding (4 + 4 + 8 bytes), every bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// One segment of a DISCARD or WRITE_ZEROES request payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardWriteZeroesSegment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}
// SAFETY: plain old data, no padding (8 + 4 + 4 bytes), every bit pattern is valid.
unsafe impl ByteValued for DiscardWriteZeroesSegment {}

/// virtio-blk configuration space (little endian), up to and including the write-zeroes
/// fields: the part QEMU 7.2's vhost-user-blk frontend reads (60 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub geometry_cylinders: u16,
    pub geometry_heads: u8,
    pub geometry_sectors: u8,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub writeback: u8,
    pub unused0: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
    pub unused1: [u8; 3],
}
// SAFETY: packed plain old data, every bit pattern is valid.
unsafe impl ByteValued for BlkConfig {}

/// Size of [`BlkConfig`] as seen on the wire.
pub const BLK_CONFIG_SIZE: usize = std::mem::size_of::<BlkConfig>();
/// Offset of `num_queues` (what a frontend overrides with the queue count it created).
pub const BLK_NUM_QUEUES_OFFSET: u32 = std::mem::offset_of!(BlkConfig, num_queues) as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_virtio_spec() {
        assert_eq!(std::mem::size_of::<RequestHeader>(), 16);
        assert_eq!(std::mem::size_of::<DiscardWriteZeroesSegment>(), 16);
        assert_eq!(BLK_CONFIG_SIZE, 60);
        assert_eq!(std::mem::offset_of!(BlkConfig, blk_size), 20);
        assert_eq!(std::mem::offset_of!(BlkConfig, writeback), 32);
        assert_eq!(std::mem::offset_of!(BlkConfig, num_queues), 34);
        assert_eq!(std::mem::offset_of!(BlkConfig, max_discard_sectors), 36);
        assert_eq!(std::mem::offset_of!(BlkConfig, write_zeroes_may_unmap), 56);
    }
}
