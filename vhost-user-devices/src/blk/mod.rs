//! vhost-user-blk: a virtio-blk device backed by a raw image file or a block device.
//!
//! - this file: command line → [`Config`] → [`BlkDevice`] (the long-lived state),
//! - [`backend`]: the per-connection `VhostUserBackend` (features, config space, queues),
//! - [`request`]: virtio-blk request parsing and execution,
//! - [`disk`]: the image and its I/O engine (preadv/pwritev straight into guest memory),
//! - [`io_pool`]: I/O threads for large (or O_DIRECT) requests; small ones run inline.

pub mod backend;
pub mod disk;
pub mod io_pool;
pub mod request;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use vu_daemon::sandbox::{Allow, FsAccess, PathRule};
use vu_daemon::{Capabilities, CommonArgs, DeviceConfinement, VhostUserDevice};

use backend::{BlkBackend, DeviceSettings};
use disk::{Disk, DiskError};

/// `--print-capabilities`: QEMU vhost-user.json type `block`; `--read-only` and `--blk-file`
/// (an alias of `--image`) are supported.
pub const CAPABILITIES: Capabilities = Capabilities {
    program: "vhost-user-blk",
    device_type: "block",
    features: &["read-only-config", "blk-file"],
};

/// Most queues a frontend may use (one worker thread each; `queues_per_thread` is a u64 mask).
pub const MAX_QUEUES: u16 = 64;

/// Longest `--poll-us`.
pub const MAX_POLL_US: u32 = 1000;

/// `vhost-user-blk` command line.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "vhost-user-blk",
    version,
    about = "vhost-user virtio-blk backend"
)]
pub struct BlkArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Raw image file or block device to serve.
    #[arg(long, visible_alias = "blk-file", value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Refuse writes (the device reports VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub read_only: bool,
    /// Most request queues a frontend may use (one worker thread each). QEMU's default is one
    /// per vCPU, so the default leaves room for that.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub num_queues: u16,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[arg(long)]
    pub direct_io: bool,
    /// Microseconds a busy queue's worker keeps watching the ring for new requests before
    /// sleeping (saves the driver's kick and the wake-up at low queue depth; 0 disables).
    #[arg(long, default_value_t = 50, value_name = "US")]
    pub poll_us: u32,
    /// Serial number returned by GET_ID (at most 20 bytes are used).
    #[arg(long, value_name = "ID", default_value = "")]
    pub serial: String,
}

/// Bad command-line values or an unusable image.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--image FILE is required")]
    NoImage,
    #[error("--num-queues must be between 1 and {MAX_QUEUES}, not {0}")]
    NumQueues(u16),
    #[error("--poll-us must be at most {MAX_POLL_US}, not {0}")]
    PollUs(u32),
    #[error("--serial is longer than 20 bytes")]
    Serial,
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub image: PathBuf,
    pub read_only: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    pub direct_io: bool,
    pub serial: String,
    /// See `BlkArgs::poll_us`.
    pub poll_us: u32,
}

impl TryFrom<&BlkArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: &BlkArgs) -> Result<Self, ConfigError> {
        let image = a.image.clone().ok_or(ConfigError::NoImage)?;
        if a.num_queues == 0 || a.num_queues > MAX_QUEUES {
            return Err(ConfigError::NumQueues(a.num_queues));
        }
        if a.poll_us > MAX_POLL_US {
            return Err(ConfigError::PollUs(a.poll_us));
        }
        if a.serial.len() > 20 {
            return Err(ConfigError::Serial);
        }
        Ok(Config {
            image,
            read_only: a.read_only,
            num_queues: a.num_queues,
            queue_size: a.common.queue_size,
            direct_io: a.direct_io,
            serial: a.serial.clone(),
            poll_us: a.poll_us,
        })
    }
}

/// The device: the open image and the settings every connection's backend gets.
pub struct BlkDevice {
    disk: Arc<Disk>,
    settings: DeviceSettings,
    /// The image path and `--read-only`: all the filesystem access left once confined.
    image: PathBuf,
    read_only: bool,
}

/// The data path's system calls beyond the daemon's: I/O on the open image (inline and in the
/// I/O pool), flush, discard/write-zeroes (fallocate, or BLKDISCARD/BLKZEROOUT on a block
/// device).
const BLK_SYSCALLS: &[Allow] = &[
    Allow::Any("preadv"),
    Allow::Any("pwritev"),
    Allow::Any("pread64"),
    Allow::Any("pwrite64"),
    Allow::Any("fdatasync"),
    Allow::Any("fsync"),
    Allow::Any("fallocate"),
    Allow::ArgEq("ioctl", 1, disk::BLKDISCARD as u32),
    Allow::ArgEq("ioctl", 1, disk::BLKZEROOUT as u32),
];

impl BlkDevice {
    /// Opens the image.
    pub fn open(config: &Config) -> Result<Self, ConfigError> {
        let disk = Disk::open(
            &config.image,
            config.read_only,
            config.direct_io,
            &config.serial,
        )?;
        log::info!(
            "image {}: {} sectors{}{}, {} queue(s) of up to {}",
            config.image.display(),
            disk.sectors(),
            if config.read_only { ", read-only" } else { "" },
            if config.direct_io { ", O_DIRECT" } else { "" },
            config.num_queues,
            config.queue_size
        );
        Ok(BlkDevice {
            disk: Arc::new(disk),
            settings: DeviceSettings {
                num_queues: config.num_queues,
                queue_size: config.queue_size,
                poll: std::time::Duration::from_micros(u64::from(config.poll_us)),
            },
            image: config.image.clone(),
            read_only: config.read_only,
        })
    }

    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }
}

impl VhostUserDevice for BlkDevice {
    type Backend = BlkBackend;

    fn name(&self) -> &str {
        CAPABILITIES.program
    }

    fn confinement(&self) -> DeviceConfinement {
        let access = if self.read_only {
            FsAccess::Read
        } else {
            FsAccess::ReadWrite
        };
        DeviceConfinement {
            // glibc sizes the I/O pool from the online CPUs (read again per connection).
            paths: vec![
                PathRule::new(&self.image, access),
                PathRule::new("/sys/devices/system/cpu/online", FsAccess::Read),
            ],
            syscalls: BLK_SYSCALLS,
        }
    }

    fn new_backend(&self) -> std::io::Result<Arc<BlkBackend>> {
        Ok(Arc::new(BlkBackend::new(
            self.disk.clone(),
            self.settings.clone(),
        )))
    }
}

/// The whole program: `main` of `vhost-user-blk`.
pub fn main_with_args(args: BlkArgs) -> ExitCode {
    vu_daemon::run(&args.common, &CAPABILITIES, || {
        Config::try_from(&args).and_then(|c| BlkDevice::open(&c))
    })
}
