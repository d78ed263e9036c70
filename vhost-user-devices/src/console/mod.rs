//! vhost-user-console: a single-port virtio-console (the guest's `hvc0`) whose output goes to
//! a file, stdout, or the client of a unix socket, and whose input comes from stdin or that
//! client.
//!
//! - this file: command line → [`Config`] → [`ConsoleDevice`] (the long-lived state),
//! - [`backend`]: the per-connection `VhostUserBackend` (receiveq, transmitq, config space),
//! - [`io`]: the output sink and the input queue, which outlive frontend connections.

pub mod backend;
pub mod io;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use vhost_user_backend::VringEpollHandler;
use vmm_sys_util::epoll::EventSet;
use vu_daemon::sandbox::{Allow, FsAccess, PathRule};
use vu_daemon::{Capabilities, CommonArgs, DeviceConfinement, VhostUserDevice};

use backend::{ConsoleBackend, INPUT_EVENT};
use io::{ConsoleIo, IoError};

/// `--print-capabilities`: type `console` (no features defined for it).
pub const CAPABILITIES: Capabilities = Capabilities {
    program: "vhost-user-console",
    device_type: "console",
    features: &[],
};

/// `vhost-user-console` command line.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "vhost-user-console",
    version,
    about = "vhost-user virtio-console backend (one port: the guest's hvc0)"
)]
#[command(group(clap::ArgGroup::new("endpoint").args(["output", "socket", "stdio"])))]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Write the guest's output to FILE (created or truncated); no input.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Listen on unix socket P: its client gets the output and sends the input.
    #[arg(long, value_name = "P")]
    pub socket: Option<PathBuf>,
    /// Output to stdout, input from stdin.
    #[arg(long)]
    pub stdio: bool,
}

/// Where the console's bytes go and come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    File(PathBuf),
    Socket(PathBuf),
    Stdio,
}

/// Bad command-line values or unusable endpoints.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("give exactly one of --output FILE, --socket P, --stdio")]
    Endpoint,
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub endpoint: Endpoint,
    pub queue_size: u16,
}

impl TryFrom<&ConsoleArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: &ConsoleArgs) -> Result<Self, ConfigError> {
        let endpoint = match (&a.output, &a.socket, a.stdio) {
            (Some(f), None, false) => Endpoint::File(f.clone()),
            (None, Some(p), false) => Endpoint::Socket(p.clone()),
            (None, None, true) => Endpoint::Stdio,
            _ => return Err(ConfigError::Endpoint),
        };
        Ok(Config {
            endpoint,
            queue_size: a.common.queue_size,
        })
    }
}

/// The device: its endpoints, shared by every connection (input typed while no frontend is
/// connected waits for the next one).
pub struct ConsoleDevice {
    io: Arc<ConsoleIo>,
    queue_size: u16,
    /// `--socket P`, removed on SIGTERM/SIGINT.
    socket: Option<PathBuf>,
    /// `--output FILE`: the only file writable once confined.
    output: Option<PathBuf>,
}

impl ConsoleDevice {
    /// Opens the output file, or starts the stdin reader, or listens on the socket.
    pub fn open(config: &Config) -> Result<Self, ConfigError> {
        let io = match &config.endpoint {
            Endpoint::File(p) => ConsoleIo::file(p)?,
            Endpoint::Socket(p) => ConsoleIo::socket(p)?,
            Endpoint::Stdio => ConsoleIo::stdio()?,
        };
        log::info!("console endpoint: {:?}", config.endpoint);
        let socket = match &config.endpoint {
            Endpoint::Socket(p) => Some(p.clone()),
            _ => None,
        };
        let output = match &config.endpoint {
            Endpoint::File(p) => Some(p.clone()),
            _ => None,
        };
        Ok(ConsoleDevice {
            io: Arc::new(io),
            queue_size: config.queue_size,
            socket,
            output,
        })
    }
}

impl VhostUserDevice for ConsoleDevice {
    type Backend = ConsoleBackend;

    fn name(&self) -> &str {
        CAPABILITIES.program
    }

    fn new_backend(&self) -> std::io::Result<Arc<ConsoleBackend>> {
        Ok(Arc::new(ConsoleBackend::new(
            self.io.clone(),
            self.queue_size,
        )))
    }

    fn owned_socket_paths(&self) -> Vec<PathBuf> {
        self.socket.iter().cloned().collect()
    }

    fn confinement(&self) -> DeviceConfinement {
        // The socket's directory (removal on exit) comes from `owned_socket_paths`.
        DeviceConfinement {
            paths: self
                .output
                .iter()
                .map(|p| PathRule::new(p, FsAccess::ReadWrite))
                .collect(),
            // io.rs bounds how long a stalled socket client can hold the output path
            // (`set_write_timeout` on each accepted client: SO_SNDTIMEO).
            syscalls: &[Allow::ArgEq("setsockopt", 2, libc::SO_SNDTIMEO as u32)],
        }
    }

    fn attach_workers(
        &self,
        _backend: &Arc<ConsoleBackend>,
        workers: &[Arc<VringEpollHandler<Arc<ConsoleBackend>>>],
    ) -> std::io::Result<()> {
        let worker = workers
            .first()
            .ok_or_else(|| std::io::Error::other("no worker thread"))?;
        worker.register_listener(
            self.io.input().ready_fd(),
            EventSet::IN,
            u64::from(INPUT_EVENT),
        )
    }
}

/// The whole program: `main` of `vhost-user-console`.
pub fn main_with_args(args: ConsoleArgs) -> ExitCode {
    vu_daemon::run(&args.common, &CAPABILITIES, || {
        Config::try_from(&args).and_then(|c| ConsoleDevice::open(&c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let a =
            ConsoleArgs::try_parse_from([&["vhost-user-console", "-s", "/tmp/s"], args].concat())
                .expect("clap");
        Config::try_from(&a)
    }

    #[test]
    fn command_line() {
        assert_eq!(
            parse(&["--output", "/o"]).unwrap().endpoint,
            Endpoint::File("/o".into())
        );
        assert_eq!(
            parse(&["--socket", "/p"]).unwrap().endpoint,
            Endpoint::Socket("/p".into())
        );
        assert_eq!(parse(&["--stdio"]).unwrap().endpoint, Endpoint::Stdio);
        assert!(matches!(parse(&[]), Err(ConfigError::Endpoint)));
        assert!(ConsoleArgs::try_parse_from(["x", "--stdio", "--socket", "/p"]).is_err());
    }
}
