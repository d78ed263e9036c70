//! virtio-net (virtio 1.2 §5.1): device id, queue layout, config space, the per-packet header.
//!
//! Shared by the `vhost-user-net` backend and the userspace driver's net helpers.

use vm_memory::ByteValued;

use crate::devices::{FrontendConfig, FrontendInput};
use crate::transport::bit;

pub use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_S_LINK_UP,
};

/// Virtio device id of a network card.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_NET;

/// Queue index of queue pair `pair`'s receive queue (transmit is the next one).
pub const fn rx_queue(pair: u16) -> u16 {
    pair * 2
}

/// Queue index of queue pair `pair`'s transmit queue.
pub const fn tx_queue(pair: u16) -> u16 {
    pair * 2 + 1
}

/// What a frontend serving the control queue itself offers with it, as QEMU's virtio-net
/// does in front of vhost-user-net: the queue, receive-mode and MAC-filter commands, VLAN
/// filtering, setting the MAC. The data path is the backend's, so filters are acknowledged
/// and not enforced (QEMU: the same with vhost-user).
pub const CONTROL_QUEUE_FEATURES: u64 = bit(virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ)
    | bit(virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_RX)
    | bit(virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_RX_EXTRA)
    | bit(virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VLAN)
    | bit(virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_MAC_ADDR);

/// Index of the control queue of a device with `max_pairs` queue pairs once `features` are
/// negotiated: after every data queue with MQ, else after the one pair (virtio 1.2 §5.1.2).
pub const fn control_queue_index(max_pairs: u16, features: u64) -> u16 {
    if features & bit(VIRTIO_NET_F_MQ) != 0 {
        max_pairs * 2
    } else {
        2
    }
}

/// Size of the header in front of every packet once VERSION_1 or MRG_RXBUF is negotiated.
pub const NET_HDR_SIZE: usize = std::mem::size_of::<NetHeader>();
/// Size of the legacy header (no `num_buffers`): neither VERSION_1 nor MRG_RXBUF negotiated.
pub const NET_HDR_SIZE_LEGACY: usize = 10;

/// Header length for a set of negotiated features.
pub fn header_size(features: u64) -> usize {
    let version_1 = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    let mrg = 1u64 << VIRTIO_NET_F_MRG_RXBUF;
    if features & (version_1 | mrg) != 0 {
        NET_HDR_SIZE
    } else {
        NET_HDR_SIZE_LEGACY
    }
}

/// Largest Ethernet frame (without the virtio header) the device carries: a 64 KiB GSO
/// packet plus its Ethernet/VLAN header.
pub const MAX_FRAME_SIZE: usize = 65536 + 14 + 4;

/// `struct virtio_net_hdr_v1` (little endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    /// Buffers (descriptor chains) this received packet spans (MRG_RXBUF); 1 otherwise.
    pub num_buffers: u16,
}
// SAFETY: plain old data, no padding (1 + 1 + 5 * 2 bytes), every bit pattern is valid.
unsafe impl ByteValued for NetHeader {}

/// virtio-net configuration space (little endian) up to `mtu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub status: u16,
    pub max_virtqueue_pairs: u16,
    pub mtu: u16,
}
// SAFETY: plain old data, no padding (6 + 3 * 2 bytes, u16 fields at even offsets), every bit
// pattern is valid.
unsafe impl ByteValued for NetConfig {}

/// Size of [`NetConfig`].
pub const NET_CONFIG_SIZE: usize = std::mem::size_of::<NetConfig>();
/// Config space up to `max_virtqueue_pairs`, without `mtu`: what a frontend serving the
/// config itself ([`frontend_config`]) shows the guest.
pub const NET_CONFIG_SIZE_WITHOUT_MTU: usize = std::mem::offset_of!(NetConfig, mtu);

/// The config space a frontend serves itself (the backend's is not used): the MAC when the
/// user gave one, link up, one queue pair per two queues. Offers STATUS, and MAC with a MAC.
pub fn frontend_config(input: &FrontendInput) -> FrontendConfig {
    let config = NetConfig {
        mac: input.mac.unwrap_or_default(),
        status: (VIRTIO_NET_S_LINK_UP as u16).to_le(),
        max_virtqueue_pairs: (input.num_queues / 2).max(1).to_le(),
        mtu: 0,
    };
    let mut features = bit(VIRTIO_NET_F_STATUS);
    if input.mac.is_some() {
        features |= bit(VIRTIO_NET_F_MAC);
    }
    FrontendConfig {
        bytes: config.as_slice()[..NET_CONFIG_SIZE_WITHOUT_MTU].to_vec(),
        features,
    }
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC address the usual way.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(NET_HDR_SIZE, 12);
        assert_eq!(NET_CONFIG_SIZE, 12);
        assert_eq!(std::mem::offset_of!(NetConfig, status), 6);
        assert_eq!(std::mem::offset_of!(NetConfig, max_virtqueue_pairs), 8);
        assert_eq!(header_size(1 << 32), 12);
        assert_eq!(header_size(1 << VIRTIO_NET_F_MRG_RXBUF), 12);
        assert_eq!(header_size(0), 10);
        assert_eq!((rx_queue(1), tx_queue(1)), (2, 3));
    }

    /// The bytes accel wrote by hand before the table: MAC, status 1, pairs, 10 bytes.
    #[test]
    fn frontend_config_bytes() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let c = frontend_config(&FrontendInput {
            num_queues: 8,
            mac: Some(mac),
            tag: None,
        });
        assert_eq!(c.bytes, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 4, 0]);
        assert_eq!(c.features, (1 << 16) | (1 << 5));
        let c = frontend_config(&FrontendInput {
            num_queues: 1,
            mac: None,
            tag: None,
        });
        assert_eq!(c.bytes, [0, 0, 0, 0, 0, 0, 1, 0, 1, 0]);
        assert_eq!(c.features, 1 << 16);
    }

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("52:54:00:ab:cd:EF").unwrap();
        assert_eq!(m, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(format_mac(&m), "52:54:00:ab:cd:ef");
        assert!(parse_mac("52:54:00:ab:cd").is_none());
        assert!(parse_mac("52:54:00:ab:cd:ef:00").is_none());
        assert!(parse_mac("5:54:00:ab:cd:ef").is_none());
        assert!(parse_mac("zz:54:00:ab:cd:ef").is_none());
    }
}
