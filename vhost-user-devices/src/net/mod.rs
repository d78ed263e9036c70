//! vhost-user-net: a virtio-net device whose wire is a host tap interface, or another
//! vhost-user-net socket served by the same process (peer mode: two VMs back to back).
//!
//! - this file: command line → [`Config`] → [`NetDevice`] (the long-lived state), `main`,
//! - [`backend`]: the per-connection `VhostUserBackend` (features, config space, workers),
//! - [`rxtx`]: the data path (transmit chains → frames, frames → receive chains),
//! - [`link`]: where frames go: tap queue fds or peer socketpairs,
//! - [`tap`]: opening a tap and setting its offloads,
//! - [`early_enable`]: the message relay in front of the daemon that makes QEMU's virtio-net
//!   work (it enables rings before it sends `SET_FEATURES`).
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
pub mod early_enable;
pub mod link;
pub mod rxtx;
pub mod tap;

use std::net::Shutdown;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use vu_daemon::backend_util::valid_queue_size;
use vu_daemon::{
    Capabilities, CommonArgs, DaemonError, ListenAddress, VhostUserDevice,
    install_exit_handler_for, next_frontend, serve_connection, while_busy,
};
use vu_spec::net::{format_mac, parse_mac};
use vhost::vhost_user::Listener;
use vhost_user_backend::VringEpollHandler;

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
pub use vu_daemon::backend_util::MAX_QUEUE_SIZE;

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
    /// Largest queue size a frontend may configure (a power of two).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub queue_size: u16,
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
    #[error("--queue-size must be a power of two between 2 and {MAX_QUEUE_SIZE}, not {0}")]
    QueueSize(u16),
    #[error("--mac '{0}' is not a MAC address like 52:54:00:12:34:56")]
    Mac(String),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error("cannot create the peer link: {0}")]
    Peer(std::io::Error),
    #[error(transparent)]
    Daemon(#[from] vu_daemon::DaemonError),
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
        if !valid_queue_size(a.queue_size) {
            return Err(ConfigError::QueueSize(a.queue_size));
        }
        let mac = match &a.mac {
            Some(m) => Some(parse_mac(m).ok_or_else(|| ConfigError::Mac(m.clone()))?),
            None => None,
        };
        Ok(Config {
            link,
            queue_pairs: a.queues,
            mac,
            queue_size: a.queue_size,
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
}

/// Logs a device's counters (at disconnect and exit).
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

/// The daemon side of the [`early_enable`] relay for one connection: a listening socket bound
/// in a fresh mode-0700 directory (so no other user can connect to it), already connected to
/// by the returned stream; socket file and directory are removed before this returns (the
/// queued connection stays acceptable).
fn private_pair() -> std::io::Result<(Listener, UnixStream)> {
    use std::os::unix::fs::DirBuilderExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vhost-user-net-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join("s");
    let result = UnixListener::bind(&path).and_then(|l| {
        let stream = UnixStream::connect(&path)?;
        Ok((l, stream))
    });
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    let (l, stream) = result?;
    // SAFETY: `l` owns a listening unix socket; the Listener takes it over (no path to unlink).
    let listener = unsafe { Listener::from_raw_fd(l.into_raw_fd()) };
    Ok((listener, stream))
}

/// Serves frontends on `listener` one after another (`max_connections`, or forever), each
/// through the [`early_enable`] relay so that QEMU's virtio-net works; logs the counters after
/// every connection.
pub fn serve_net(
    device: &NetDevice,
    listener: &mut Listener,
    max_connections: Option<usize>,
) -> Result<(), DaemonError> {
    let mut served = 0usize;
    let mut pending = None;
    while max_connections.is_none_or(|max| served < max) {
        let front = next_frontend(listener, &mut pending)?;
        let (mut private, back) = private_pair().map_err(DaemonError::NewBackend)?;
        let (end, next) = while_busy(listener, &front, || {
            std::thread::scope(|s| {
                s.spawn(|| {
                    if let Err(e) = early_enable::relay_requests(&front, &back) {
                        log::debug!("{}: frontend relay: {e}", device.name);
                    }
                    let _ = back.shutdown(Shutdown::Both);
                });
                s.spawn(|| {
                    if let Err(e) = early_enable::copy_replies(&back, &front) {
                        log::debug!("{}: reply relay: {e}", device.name);
                    }
                    let _ = front.shutdown(Shutdown::Both);
                });
                let end = serve_connection(device, &mut private);
                let _ = back.shutdown(Shutdown::Both);
                let _ = front.shutdown(Shutdown::Both);
                end
            })
        })?;
        pending = next;
        log_stats(device);
        end?;
        served += 1;
    }
    Ok(())
}

/// Starts the device(s) for `args` and serves until a signal ends the process.
fn run(args: &NetArgs) -> Result<(), ConfigError> {
    let config = Config::try_from(args)?;
    let address = args.common.listen_address()?;
    match &config.link {
        LinkConfig::Tap(name) => {
            let device = NetDevice::tap(&config, name)?;
            let socket = match &address {
                ListenAddress::Path(p) => vec![p.clone()],
                ListenAddress::Fd(_) => Vec::new(),
            };
            install_exit_handler_for(socket)?;
            let mut listener = address.listen()?;
            log::info!("{}: listening on {address}", CAPABILITIES.program);
            serve_net(&device, &mut listener, None)?;
        }
        LinkConfig::Peer(peer) => {
            let (a, b) = NetDevice::peer_pair(&config)?;
            let mut paths = vec![peer.clone()];
            if let ListenAddress::Path(p) = &address {
                paths.push(p.clone());
            }
            install_exit_handler_for(paths)?;
            let la = address.listen()?;
            let lb = ListenAddress::Path(peer.clone()).listen()?;
            log::info!(
                "{}: peer mode, listening on {address} and {}",
                CAPABILITIES.program,
                peer.display()
            );
            // serve_net only returns on error: the first one (from either side) ends the
            // program, whatever the other side is doing.
            let (tx, rx) = std::sync::mpsc::channel();
            for (device, mut listener) in [(a, la), (b, lb)] {
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name(device.name.clone())
                    .spawn(move || {
                        let _ = tx.send(serve_net(&device, &mut listener, None));
                    })
                    .map_err(|e| ConfigError::Daemon(DaemonError::NewBackend(e)))?;
            }
            drop(tx);
            if let Ok(result) = rx.recv() {
                result?;
            }
        }
    }
    Ok(())
}

/// The whole program: `main` of `vhost-user-net`.
pub fn main_with_args(args: NetArgs) -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .try_init();
    if args.common.print_capabilities {
        println!("{}", CAPABILITIES.to_json());
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: error: {e}", CAPABILITIES.program);
            ExitCode::FAILURE
        }
    }
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
            parse(&["-s", "/a", "--tap", "t", "--queue-size", "100"]),
            Err(ConfigError::QueueSize(100))
        ));
        assert!(matches!(
            parse(&["-s", "/a", "--tap", "t", "--mac", "nope"]),
            Err(ConfigError::Mac(_))
        ));
        assert!(NetArgs::try_parse_from(["x", "-s", "/a", "--tap", "t", "--peer", "/b"]).is_err());
    }
}
