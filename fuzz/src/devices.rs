//! The real devices of the backend programs, opened the way their `main` opens them, in a
//! per-process scratch directory under `$TMPDIR` (scripts/fuzz.sh points it at a directory it
//! removes afterwards).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use vhost_user_devices::{blk, console, net, rng, vsock};

/// Queue size every device offers (the programs' default).
pub const QUEUE_SIZE: u16 = 256;

/// `$TMPDIR/vu-fuzz-PID`, created on first use.
pub fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("vu-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
}

/// vhost-user-blk on a 1 MiB image, two queues, write-back.
pub fn blk() -> blk::BlkDevice {
    let image = scratch().join("image");
    std::fs::write(&image, vec![0x5au8; 1 << 20]).expect("image");
    blk::BlkDevice::open(&blk::Config {
        image,
        read_only: false,
        num_queues: 2,
        queue_size: QUEUE_SIZE,
        direct_io: false,
        serial: "fuzz".into(),
        poll_us: 0,
    })
    .expect("blk device")
}

/// vhost-user-net in peer mode (a socketpair per queue pair): the device, and its peer.
pub fn net() -> (net::NetDevice, net::NetDevice) {
    net::NetDevice::peer_pair(&net_config()).expect("net devices")
}

pub fn net_config() -> net::Config {
    net::Config {
        link: net::LinkConfig::Peer(scratch().join("peer")),
        queue_pairs: 2,
        mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        queue_size: QUEUE_SIZE,
    }
}

/// vhost-user-vsock, guest CID 3, host sockets in the scratch directory.
pub fn vsock() -> vsock::VsockDevice {
    vsock::VsockDevice::open(&vsock::Config {
        guest_cid: 3,
        uds_path: scratch().join("vsock"),
        queue_size: QUEUE_SIZE,
        half_open_timeout: Duration::from_secs(1),
    })
    .expect("vsock device")
}

/// vhost-user-rng reading /dev/urandom with a rate limit (so the limiter runs too).
pub fn rng() -> rng::RngDevice {
    rng::RngDevice::open(&rng::Config {
        source: "/dev/urandom".into(),
        rate_limit: Some((1 << 20, Duration::from_secs(1))),
        queue_size: QUEUE_SIZE,
    })
    .expect("rng device")
}

/// vhost-user-console writing to /dev/null.
pub fn console() -> console::ConsoleDevice {
    console::ConsoleDevice::open(&console::Config {
        endpoint: console::Endpoint::File("/dev/null".into()),
        queue_size: QUEUE_SIZE,
    })
    .expect("console device")
}
