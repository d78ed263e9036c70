//! virtio-fs (virtio 1.2 §5.11): one high-priority queue, then `num_request_queues` request
//! queues; the config space is the mount tag and the request queue count. The FUSE messages
//! on the queues are the backend's business (virtiofsd): the frontend only builds the config
//! space from `tag=` and `num-request-queues=`, as QEMU's vhost-user-fs does (virtiofsd
//! serves no config space).

use crate::devices::{FrontendConfig, FrontendInput};

pub use virtio_bindings::virtio_ids::VIRTIO_ID_FS;

/// Bytes of the tag field; a tag of exactly this length has no NUL terminator.
pub const FS_TAG_LEN: usize = 36;
/// `tag[36]` then `le32 num_request_queues`.
pub const FS_CONFIG_SIZE: usize = FS_TAG_LEN + 4;
/// Queues before the request queues (the high-priority queue).
pub const FS_HIPRIO_QUEUES: u16 = 1;

/// The config space: the tag, NUL-padded, and one request queue per queue after the
/// high-priority one. No device-specific feature bits.
pub fn frontend_config(input: &FrontendInput) -> FrontendConfig {
    let mut bytes = vec![0u8; FS_CONFIG_SIZE];
    let tag = input.tag.unwrap_or_default().as_bytes();
    let n = tag.len().min(FS_TAG_LEN);
    bytes[..n].copy_from_slice(&tag[..n]);
    let requests = u32::from(input.num_queues.saturating_sub(FS_HIPRIO_QUEUES));
    bytes[FS_TAG_LEN..].copy_from_slice(&requests.to_le_bytes());
    FrontendConfig { bytes, features: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_padded_tag_and_the_request_queue_count() {
        let c = frontend_config(&FrontendInput {
            num_queues: 3,
            mac: None,
            tag: Some("myfs"),
        });
        assert_eq!(c.bytes.len(), 40);
        assert_eq!(&c.bytes[..5], b"myfs\0");
        assert!(c.bytes[4..36].iter().all(|&b| b == 0));
        assert_eq!(&c.bytes[36..], &2u32.to_le_bytes());
        assert_eq!(c.features, 0);
    }
}
