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
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use vhost_user_backend::VringEpollHandler;
use vmm_sys_util::epoll::EventSet;
use vu_daemon::sandbox::Allow;
use vu_daemon::{Capabilities, CommonArgs, DeviceConfinement, VhostUserDevice};
use vu_spec::vsock::{MAX_GUEST_CID, MIN_GUEST_CID};

use backend::{BACKEND_EVENT, VsockBackend};

/// `--print-capabilities`: QEMU vhost-user.json type `vsock`.
pub const CAPABILITIES: Capabilities = Capabilities {
    program: "vhost-user-vsock",
    device_type: "vsock",
    features: &[],
};

pub use muxer::HALF_OPEN_TIMEOUT;
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
}

/// Bad command-line values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--uds-path PATH is required")]
    NoUdsPath,
    #[error("--guest-cid must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}, not {0}")]
    GuestCid(u64),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: vu_spec::unix::BindError,
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
        Ok(Config {
            guest_cid: a.guest_cid,
            uds_path,
            queue_size: a.common.queue_size,
            half_open_timeout: HALF_OPEN_TIMEOUT,
        })
    }
}

/// The device: the host-side listener, shared by every frontend connection's backend.
pub struct VsockDevice {
    config: Config,
    listener: UnixListener,
}

impl VsockDevice {
    /// Listens on the `--uds-path` socket.
    pub fn open(config: &Config) -> Result<Self, ConfigError> {
        let listener =
            vu_spec::unix::bind_replacing_socket(&config.uds_path).map_err(|source| {
                ConfigError::Bind {
                    path: config.uds_path.clone(),
                    source,
                }
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

    /// Guest → host connections connect to unix sockets `P_X` (socket(AF_UNIX) is in the
    /// daemon's list; landlock does not govern connecting to a path); `--uds-path`'s directory
    /// keeps the right to remove entries via `owned_socket_paths`.
    fn confinement(&self) -> DeviceConfinement {
        DeviceConfinement {
            paths: Vec::new(),
            syscalls: &[Allow::Any("connect")],
        }
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
