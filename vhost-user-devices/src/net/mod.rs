//! vhost-user-net: a virtio-net device whose wire is a host tap interface, or another
//! vhost-user-net socket served by the same process (peer mode: two VMs back to back).
//!
//! - this file: command line → [`Config`] → [`NetDevice`] (the long-lived state), `main`,
//! - [`backend`]: the per-connection `VhostUserBackend` (features, config space, workers),
//! - [`rxtx`]: the data path (transmit chains → frames, frames → receive chains),
//! - [`link`]: where frames go: tap queue fds or peer socketpairs,
//! - [`tap`]: opening a tap and setting its offloads.
//!
//! The program runs on the shared daemon (`vu_daemon::run_devices`). QEMU's virtio-net enables
//! its rings before it sends `SET_FEATURES`; the patched vhost crates accept that (PATCH
//! early-enable in patches/README.md).
//!
//! Features: VERSION_1, EVENT_IDX, INDIRECT_DESC, MRG_RXBUF, STATUS, MAC (with `--mac`), MQ
//! (with `--queues` > 1) and, in tap mode, CSUM/GUEST_CSUM, GUEST/HOST TSO4/TSO6/ECN
//! (TUNSETOFFLOAD follows the guest's GUEST_* acks). No control queue: QEMU implements it
//! itself; accel offers neither CTRL_VQ nor MQ, so an accel guest uses one queue pair.
//! Receive never blocks a worker: with no guest buffers the frame in hand waits and the link
//! is not read until the guest's receive kick (frames queue in the tap / peer socket, where the
//! kernel drops the excess); oversized and malformed traffic is dropped and counted
//! ([`NetStats`], logged after every connection).
//!
//! Peer mode: `--socket-path A --peer B` listens on both sockets; each is a complete
//! vhost-user-net device (one frontend at a time, served again after a disconnect) and the
//! two are wired back to back per queue pair through a `SOCK_SEQPACKET` socketpair: a frame
//! the guest on A transmits on queue pair i is received by the guest on B on queue pair i,
//! and vice versa. No tap, no privileges. Peer links carry no checksum/GSO offloads (the
//! device does not offer them), so every frame is complete and valid for the other side.

pub mod backend;
pub mod link;
pub mod rxtx;
pub mod tap;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use vhost_user_backend::VringEpollHandler;
use vu_daemon::sandbox::Allow;
use vu_daemon::{Capabilities, CommonArgs, DeviceConfinement, VhostUserDevice};
use vu_spec::net::{format_mac, parse_mac};

use backend::{NetBackend, Shared};
use link::{Link, LinkKind};
pub use rxtx::{NetStats, NetStatsSnapshot};

/// `--print-capabilities`: QEMU vhost-user.json type `net`.
pub const CAPABILITIES: Capabilities = Capabilities {
    program: "vhost-user-net",
    device_type: "net",
    features: &[],
};

/// Most queue pairs (one worker thread each; queue masks are u64).
pub const MAX_QUEUE_PAIRS: u16 = 32;

/// `vhost-user-net` command line.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "vhost-user-net",
    version,
    about = "vhost-user virtio-net backend: a tap interface, or two sockets wired back to back"
)]
pub struct NetArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Tap interface to use (created if missing and permitted; IFF_MULTI_QUEUE with --queues > 1).
    #[arg(long, value_name = "IFNAME", conflicts_with = "peer")]
    pub tap: Option<String>,
    /// Peer mode: also listen on this socket; frames sent by the VM on one socket are received
    /// by the VM on the other (the first socket may be --socket-path or --fd).
    #[arg(long, value_name = "PATH")]
    pub peer: Option<PathBuf>,
    /// Queue pairs (one receive + one transmit queue each).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub queues: u16,
    /// MAC address the device reports in its config space (52:54:00:12:34:56). In peer mode
    /// the second socket's device gets the same address with the last byte + 1.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
}

/// Bad command-line values or an unusable link.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("give exactly one of --tap IFNAME and --peer PATH")]
    NoLink,
    #[error("--peer must differ from --socket-path")]
    PeerSamePath,
    #[error("--queues must be between 1 and {MAX_QUEUE_PAIRS}, not {0}")]
    Queues(u16),
    #[error("--mac '{0}' is not a MAC address like 52:54:00:12:34:56")]
    Mac(String),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error("cannot create the peer link: {0}")]
    Peer(std::io::Error),
}

/// Where frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkConfig {
    Tap(String),
    /// The second socket of peer mode.
    Peer(PathBuf),
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub link: LinkConfig,
    pub queue_pairs: u16,
    pub mac: Option<[u8; 6]>,
    pub queue_size: u16,
}

impl TryFrom<&NetArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: &NetArgs) -> Result<Self, ConfigError> {
        let link = match (&a.tap, &a.peer) {
            (Some(t), None) => LinkConfig::Tap(t.clone()),
            (None, Some(p)) => {
                if a.common.socket_path.as_ref() == Some(p) {
                    return Err(ConfigError::PeerSamePath);
                }
                LinkConfig::Peer(p.clone())
            }
            _ => return Err(ConfigError::NoLink),
        };
        if a.queues == 0 || a.queues > MAX_QUEUE_PAIRS {
            return Err(ConfigError::Queues(a.queues));
        }
        let mac = match &a.mac {
            Some(m) => Some(parse_mac(m).ok_or_else(|| ConfigError::Mac(m.clone()))?),
            None => None,
        };
        Ok(Config {
            link,
            queue_pairs: a.queues,
            mac,
            queue_size: a.common.queue_size,
        })
    }
}

/// One virtio-net device: its link and counters, shared by every connection's backend.
pub struct NetDevice {
    name: String,
    shared: Arc<Shared>,
}

impl NetDevice {
    fn new(name: String, link: Link, mac: Option<[u8; 6]>, queue_size: u16) -> Self {
        NetDevice {
            name,
            shared: Arc::new(Shared {
                link,
                mac,
                queue_size,
                mtu: 1500,
                stats: NetStats::default(),
            }),
        }
    }

    /// A device on tap `name`.
    pub fn tap(config: &Config, name: &str) -> Result<Self, ConfigError> {
        let link = Link::tap(name, config.queue_pairs)?;
        log::info!(
            "tap {name}: {} queue pair(s){}",
            config.queue_pairs,
            config
                .mac
                .map(|m| format!(", mac {}", format_mac(&m)))
                .unwrap_or_default()
        );
        Ok(Self::new(
            CAPABILITIES.program.into(),
            link,
            config.mac,
            config.queue_size,
        ))
    }

    /// Two devices wired back to back (peer mode). The second one's MAC is the first one's
    /// with the last byte incremented.
    pub fn peer_pair(config: &Config) -> Result<(Self, Self), ConfigError> {
        let (a, b) = Link::peer_pair(config.queue_pairs).map_err(ConfigError::Peer)?;
        let mac_b = config.mac.map(|mut m| {
            m[5] = m[5].wrapping_add(1);
            m
        });
        Ok((
            Self::new(
                format!("{}-a", CAPABILITIES.program),
                a,
                config.mac,
                config.queue_size,
            ),
            Self::new(
                format!("{}-b", CAPABILITIES.program),
                b,
                mac_b,
                config.queue_size,
            ),
        ))
    }

    /// Counters since the device was created.
    pub fn stats(&self) -> NetStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Tap or peer.
    pub fn link_kind(&self) -> LinkKind {
        self.shared.link.kind()
    }
}

impl VhostUserDevice for NetDevice {
    type Backend = NetBackend;

    fn name(&self) -> &str {
        &self.name
    }

    /// No path at all (the tap is open); the tap's offloads follow the guest's features.
    fn confinement(&self) -> DeviceConfinement {
        DeviceConfinement {
            paths: Vec::new(),
            syscalls: &[Allow::ArgEq("ioctl", 1, libc::TUNSETOFFLOAD as u32)],
        }
    }

    fn new_backend(&self) -> std::io::Result<Arc<NetBackend>> {
        // Frames that arrived while no guest was connected are stale (a previous boot's
        // conversations): drop them, counted.
        let mut buf = vec![0u8; rxtx::LINK_BUF_SIZE];
        for pair in 0..self.shared.queue_pairs() {
            if let Some(fd) = self.shared.link.fd(pair) {
                while let Ok(Some(_)) = link::recv_frame(fd, &mut buf) {
                    rxtx::bump(&self.shared.stats.rx_dropped, 1);
                }
            }
        }
        Ok(Arc::new(NetBackend::new(self.shared.clone())))
    }

    fn attach_workers(
        &self,
        backend: &Arc<NetBackend>,
        workers: &[Arc<VringEpollHandler<Arc<NetBackend>>>],
    ) -> std::io::Result<()> {
        backend.attach(workers)
    }

    fn connection_ended(&self) {
        log_stats(self);
    }
}

/// Logs a device's counters (after every connection).
fn log_stats(device: &NetDevice) {
    let s = device.stats();
    log::info!(
        "{}: rx {} frames {} bytes, dropped {} (bad chains {}), link errors {}; tx {} frames {} bytes, dropped {}, malformed {}",
        device.name,
        s.rx_frames,
        s.rx_bytes,
        s.rx_dropped,
        s.rx_bad_chains,
        s.rx_link_errors,
        s.tx_frames,
        s.tx_bytes,
        s.tx_dropped,
        s.tx_malformed
    );
}

/// The devices for `args`: one on a tap, or (peer mode) the pair, the second one served on
/// the `--peer` socket.
fn open(args: &NetArgs) -> Result<(NetDevice, Vec<(NetDevice, PathBuf)>), ConfigError> {
    let config = Config::try_from(args)?;
    match &config.link {
        LinkConfig::Tap(name) => Ok((NetDevice::tap(&config, name)?, Vec::new())),
        LinkConfig::Peer(peer) => {
            let (a, b) = NetDevice::peer_pair(&config)?;
            Ok((a, vec![(b, peer.clone())]))
        }
    }
}

/// The whole program: `main` of `vhost-user-net`.
pub fn main_with_args(args: NetArgs) -> ExitCode {
    vu_daemon::run_devices(&args.common, &CAPABILITIES, || open(&args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["vhost-user-net"];
        v.extend_from_slice(args);
        Config::try_from(&NetArgs::try_parse_from(v).unwrap())
    }

    #[test]
    fn command_lines() {
        let c = parse(&[
            "-s",
            "/a",
            "--tap",
            "tap0",
            "--queues",
            "2",
            "--mac",
            "52:54:00:00:00:01",
        ])
        .unwrap();
        assert_eq!(c.link, LinkConfig::Tap("tap0".into()));
        assert_eq!(c.queue_pairs, 2);
        assert_eq!(c.mac, Some([0x52, 0x54, 0, 0, 0, 1]));
        let c = parse(&["-s", "/a", "--peer", "/b"]).unwrap();
        assert_eq!(c.link, LinkConfig::Peer("/b".into()));
        assert!(matches!(parse(&["-s", "/a"]), Err(ConfigError::NoLink)));
        assert!(matches!(
            parse(&["-s", "/a", "--peer", "/a"]),
            Err(ConfigError::PeerSamePath)
        ));
        assert!(parse(&["--fd", "3", "--peer", "/a"]).is_ok());
        assert!(matches!(
            parse(&["-s", "/a", "--tap", "t", "--queues", "0"]),
            Err(ConfigError::Queues(0))
        ));
        assert!(matches!(
            parse(&["-s", "/a", "--tap", "t", "--mac", "nope"]),
            Err(ConfigError::Mac(_))
        ));
        assert!(NetArgs::try_parse_from(["x", "-s", "/a", "--tap", "t", "--peer", "/b"]).is_err());
    }
}
