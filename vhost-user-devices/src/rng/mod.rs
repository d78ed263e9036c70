//! vhost-user-rng: a virtio entropy device fed from a host source (`/dev/urandom` by default),
//! optionally rate limited.
//!
//! - this file: command line → [`Config`] → [`RngDevice`] (the long-lived state),
//! - [`backend`]: the per-connection `VhostUserBackend` (the request queue, the limit timer),
//! - [`limiter`]: the byte budget per period.

pub mod backend;
pub mod limiter;

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::VringEpollHandler;
use vmm_sys_util::epoll::EventSet;
use vu_daemon::sandbox::{FsAccess, PathRule};
use vu_daemon::{Capabilities, CommonArgs, DeviceConfinement, VhostUserDevice};

use backend::{Entropy, RngBackend, TIMER_EVENT};
use limiter::RateLimiter;

/// `--print-capabilities`: QEMU vhost-user.json type `rng` (no features defined for it).
pub const CAPABILITIES: Capabilities = Capabilities {
    program: "vhost-user-rng",
    device_type: "rng",
    features: &[],
};

/// `vhost-user-rng` command line.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "vhost-user-rng",
    version,
    about = "vhost-user virtio-rng (entropy) backend"
)]
pub struct RngArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where the random bytes come from (a character device, a FIFO or a file).
    #[arg(long, default_value = "/dev/urandom", value_name = "FILE")]
    pub source: PathBuf,
    /// Rate limit: at most this many bytes per `--period` (requests beyond it wait).
    #[arg(long, value_name = "N")]
    pub max_bytes: Option<u64>,
    /// Rate-limit period in milliseconds (with `--max-bytes`).
    #[arg(long, value_name = "MS", requires = "max_bytes")]
    pub period: Option<u64>,
}

/// Bad command-line values or an unusable source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--max-bytes must be at least 1")]
    MaxBytes,
    #[error("--period must be between 1 and 3600000 ms, not {0}")]
    Period(u64),
    #[error("cannot open the entropy source {path}: {source}")]
    Source {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub source: PathBuf,
    /// `(max_bytes, period)`.
    pub rate_limit: Option<(u64, Duration)>,
    pub queue_size: u16,
}

impl TryFrom<&RngArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: &RngArgs) -> Result<Self, ConfigError> {
        let rate_limit = match a.max_bytes {
            None => None,
            Some(0) => return Err(ConfigError::MaxBytes),
            Some(n) => {
                let ms = a.period.unwrap_or(1000);
                if ms == 0 || ms > 3_600_000 {
                    return Err(ConfigError::Period(ms));
                }
                Some((n, Duration::from_millis(ms)))
            }
        };
        Ok(Config {
            source: a.source.clone(),
            rate_limit,
            queue_size: a.common.queue_size,
        })
    }
}

/// The device: the open source and the rate limit every connection shares (a reconnecting
/// frontend does not get a fresh budget).
pub struct RngDevice {
    entropy: Arc<Entropy>,
    /// `--source`: the only path readable once confined.
    source: PathBuf,
}

impl RngDevice {
    /// Opens the source.
    pub fn open(config: &Config) -> Result<Self, ConfigError> {
        let source = File::open(&config.source).map_err(|source| ConfigError::Source {
            path: config.source.clone(),
            source,
        })?;
        match config.rate_limit {
            Some((n, p)) => log::info!(
                "entropy from {}, at most {n} bytes per {} ms",
                config.source.display(),
                p.as_millis()
            ),
            None => log::info!("entropy from {}, no rate limit", config.source.display()),
        }
        let limiter = config.rate_limit.map(|(n, p)| RateLimiter::new(n, p));
        Ok(RngDevice {
            entropy: Arc::new(Entropy::new(source, limiter, config.queue_size)),
            source: config.source.clone(),
        })
    }
}

impl VhostUserDevice for RngDevice {
    type Backend = RngBackend;

    fn name(&self) -> &str {
        CAPABILITIES.program
    }

    fn confinement(&self) -> DeviceConfinement {
        DeviceConfinement {
            paths: vec![PathRule::new(&self.source, FsAccess::Read)],
            syscalls: &[],
        }
    }

    fn new_backend(&self) -> std::io::Result<Arc<RngBackend>> {
        Ok(Arc::new(RngBackend::new(self.entropy.clone())?))
    }

    fn attach_workers(
        &self,
        backend: &Arc<RngBackend>,
        workers: &[Arc<VringEpollHandler<Arc<RngBackend>>>],
    ) -> std::io::Result<()> {
        let worker = workers
            .first()
            .ok_or_else(|| std::io::Error::other("no worker thread"))?;
        worker.register_listener(backend.timer_fd(), EventSet::IN, u64::from(TIMER_EVENT))
    }
}

/// The whole program: `main` of `vhost-user-rng`.
pub fn main_with_args(args: RngArgs) -> ExitCode {
    vu_daemon::run(&args.common, &CAPABILITIES, || {
        Config::try_from(&args).and_then(|c| RngDevice::open(&c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let a = RngArgs::try_parse_from([&["vhost-user-rng", "-s", "/tmp/s"], args].concat())
            .expect("clap");
        Config::try_from(&a)
    }

    #[test]
    fn command_line() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.source, PathBuf::from("/dev/urandom"));
        assert_eq!(c.rate_limit, None);
        let c = parse(&["--source", "/x", "--max-bytes", "64", "--period", "250"]).unwrap();
        assert_eq!(c.source, PathBuf::from("/x"));
        assert_eq!(c.rate_limit, Some((64, Duration::from_millis(250))));
        // The period defaults to a second.
        let c = parse(&["--max-bytes", "64"]).unwrap();
        assert_eq!(c.rate_limit, Some((64, Duration::from_secs(1))));
        assert!(matches!(
            parse(&["--max-bytes", "0"]),
            Err(ConfigError::MaxBytes)
        ));
        assert!(matches!(
            parse(&["--max-bytes", "1", "--period", "0"]),
            Err(ConfigError::Period(0))
        ));
        assert!(RngArgs::try_parse_from(["x", "-s", "/s", "--period", "5"]).is_err());
    }
}
