//! vhost-user-vsock: a virtio-vsock device in the hybrid style of Firecracker and Cloud
//! Hypervisor, where the host side is unix sockets:
//!
//! - host → guest: connect to `--uds-path P`, send `CONNECT <port>\n`, read `OK <hostport>\n`;
//!   the stream is then a connection to the guest's listening `<port>`;
//! - guest → host: a guest connection to CID 2 port X is a connection to unix socket `P_X`.
//!
//! Files: this one (command line → [`Config`] → [`VsockDevice`]), [`backend`] (the per-connection
//! `VhostUserBackend`), [`muxer`] (packets ↔ host sockets), [`conn`] (one connection's
//! flow control and the handshake line).

pub mod backend;
pub mod conn;
pub mod control;
pub mod muxer;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use vu_daemon::backend_util::valid_queue_size;
use vu_daemon::{Capabilities, CommonArgs, VhostUserDevice};
use vu_spec::vsock::{MAX_GUEST_CID, MIN_GUEST_CID};
use vhost_user_backend::VringEpollHandler;
use vmm_sys_util::epoll::EventSet;

use backend::{BACKEND_EVENT, VsockBackend};

/// `--print-capabilities`: QEMU vhost-user.json type `vsock`.
pub const CAPABILITIES: Capabilities = Capabilities {
    program: "vhost-user-vsock",
    device_type: "vsock",
    features: &[],
};

pub use muxer::HALF_OPEN_TIMEOUT;
pub use vu_daemon::backend_util::MAX_QUEUE_SIZE;
/// Receive buffer each connection advertises to the guest (`buf_alloc`).
pub const DEFAULT_BUF_ALLOC: u32 = 256 * 1024;

/// `vhost-user-vsock` command line.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "vhost-user-vsock",
    version,
    about = "vhost-user virtio-vsock backend (hybrid vsock over unix sockets)"
)]
pub struct VsockArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The guest's context id (3 or more).
    #[arg(long, value_name = "CID", default_value_t = 3)]
    pub guest_cid: u64,
    /// Host side: clients connect here and send `CONNECT <port>\n`; guest connections to
    /// host port X go to `PATH_X`.
    #[arg(long, value_name = "PATH")]
    pub uds_path: Option<PathBuf>,
    /// Largest queue size a frontend may configure (a power of two).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub queue_size: u16,
}

/// Bad command-line values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--uds-path PATH is required")]
    NoUdsPath,
    #[error("--guest-cid must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}, not {0}")]
    GuestCid(u64),
    #[error("--queue-size must be a power of two between 2 and {MAX_QUEUE_SIZE}, not {0}")]
    QueueSize(u16),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    pub queue_size: u16,
    /// See [`HALF_OPEN_TIMEOUT`] (the program always uses that value).
    pub half_open_timeout: std::time::Duration,
}

impl TryFrom<&VsockArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: &VsockArgs) -> Result<Self, ConfigError> {
        let uds_path = a.uds_path.clone().ok_or(ConfigError::NoUdsPath)?;
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&a.guest_cid) {
            return Err(ConfigError::GuestCid(a.guest_cid));
        }
        if !valid_queue_size(a.queue_size) {
            return Err(ConfigError::QueueSize(a.queue_size));
        }
        Ok(Config {
            guest_cid: a.guest_cid,
            uds_path,
            queue_size: a.queue_size,
            half_open_timeout: HALF_OPEN_TIMEOUT,
        })
    }
}

/// The device: the host-side listener, shared by every frontend connection's backend.
pub struct VsockDevice {
    config: Config,
    listener: UnixListener,
}

/// Binds `path`, replacing a stale socket file (never any other kind of file).
fn bind_replacing_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

impl VsockDevice {
    /// Listens on the `--uds-path` socket.
    pub fn open(config: &Config) -> Result<Self, ConfigError> {
        let listener =
            bind_replacing_socket(&config.uds_path).map_err(|source| ConfigError::Bind {
                path: config.uds_path.clone(),
                source,
            })?;
        log::info!(
            "guest CID {}, host sockets at {}",
            config.guest_cid,
            config.uds_path.display()
        );
        Ok(VsockDevice {
            config: config.clone(),
            listener,
        })
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config.uds_path);
    }
}

impl VhostUserDevice for VsockDevice {
    type Backend = VsockBackend;

    fn name(&self) -> &str {
        CAPABILITIES.program
    }

    fn new_backend(&self) -> std::io::Result<Arc<VsockBackend>> {
        Ok(Arc::new(VsockBackend::new(
            self.config.guest_cid,
            &self.config.uds_path,
            self.listener.try_clone()?,
            DEFAULT_BUF_ALLOC,
            self.config.queue_size,
            self.config.half_open_timeout,
        )?))
    }

    fn owned_socket_paths(&self) -> Vec<PathBuf> {
        vec![self.config.uds_path.clone()]
    }

    fn attach_workers(
        &self,
        backend: &Arc<VsockBackend>,
        workers: &[Arc<VringEpollHandler<Arc<VsockBackend>>>],
    ) -> std::io::Result<()> {
        let worker = workers
            .first()
            .ok_or_else(|| std::io::Error::other("no worker thread"))?;
        worker
            .register_listener(backend.epoll_fd()?, EventSet::IN, u64::from(BACKEND_EVENT))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// The whole program: `main` of `vhost-user-vsock`.
pub fn main_with_args(args: VsockArgs) -> ExitCode {
    vu_daemon::run(&args.common, &CAPABILITIES, || {
        Config::try_from(&args).and_then(|c| VsockDevice::open(&c))
    })
}

impl std::fmt::Debug for VsockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockDevice")
            .field("config", &self.config)
            .field("listener_fd", &self.listener.as_raw_fd())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn command_line() {
        let a = VsockArgs::try_parse_from([
            "x",
            "--socket-path",
            "/tmp/s",
            "--guest-cid",
            "7",
            "--uds-path",
            "/tmp/v",
        ])
        .unwrap();
        let c = Config::try_from(&a).unwrap();
        assert_eq!(c.guest_cid, 7);
        assert_eq!(c.uds_path, PathBuf::from("/tmp/v"));
        let a = VsockArgs::try_parse_from([
            "x",
            "-s",
            "/tmp/s",
            "--guest-cid",
            "2",
            "--uds-path",
            "/v",
        ])
        .unwrap();
        assert!(matches!(
            Config::try_from(&a),
            Err(ConfigError::GuestCid(2))
        ));
        let a = VsockArgs::try_parse_from(["x", "-s", "/tmp/s"]).unwrap();
        assert!(matches!(Config::try_from(&a), Err(ConfigError::NoUdsPath)));
        let a = VsockArgs::try_parse_from([
            "x",
            "-s",
            "/s",
            "--uds-path",
            "/v",
            "--guest-cid",
            "4294967295",
        ])
        .unwrap();
        assert!(Config::try_from(&a).is_err());
    }
}
