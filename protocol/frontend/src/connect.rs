//! Connecting to a backend and the negotiation every (re)connection starts with.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::VhostBackend;
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};

use super::error::{Error, Result};
use super::watchdog::Watchdog;
use super::{FrontendOptions, VHOST_USER_F_PROTOCOL_FEATURES};

/// What a handshake learned about the backend.
pub(super) struct Negotiated {
    pub(super) device_features: u64,
    pub(super) protocol: VhostUserProtocolFeatures,
    pub(super) num_queues: usize,
}

/// Connects to `path`, retrying while the socket does not exist yet or refuses connections
/// (the backend is starting), until `timeout` has passed.
fn connect_stream(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) => {
                let retryable = matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
                if !retryable || Instant::now() >= deadline {
                    return Err(Error::Connect {
                        path: path.to_path_buf(),
                        timeout,
                        source: e,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Runs one request, classifying its error.
pub(super) fn req<T>(op: &'static str, r: vhost::Result<T>) -> Result<T> {
    r.map_err(|e| Error::from_vhost(op, e))
}

fn handshake(fe: &mut Frontend, opts: &FrontendOptions) -> Result<Negotiated> {
    req("SET_OWNER", fe.set_owner())?;
    let device_features = req("GET_FEATURES", fe.get_features())?;
    let mut protocol = VhostUserProtocolFeatures::empty();
    let mut num_queues = opts.max_queues;
    if device_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        let offered = req("GET_PROTOCOL_FEATURES", fe.get_protocol_features())?;
        protocol = offered & opts.protocol_features;
        let missing = opts.required_protocol_features - protocol;
        if !missing.is_empty() {
            return Err(Error::MissingFeatures {
                what: "protocol",
                missing: missing.bits(),
            });
        }
        req("SET_PROTOCOL_FEATURES", fe.set_protocol_features(protocol))?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = req("GET_QUEUE_NUM", fe.get_queue_num())?;
            num_queues = num_queues.min(usize::try_from(n).unwrap_or(usize::MAX));
        }
    } else if !opts.required_protocol_features.is_empty() {
        return Err(Error::MissingFeatures {
            what: "virtio (VHOST_USER_F_PROTOCOL_FEATURES)",
            missing: VHOST_USER_F_PROTOCOL_FEATURES,
        });
    }
    log::debug!(
        "vhost-user handshake: features {device_features:#x}, protocol {protocol:?}, {num_queues} queues"
    );
    Ok(Negotiated {
        device_features,
        protocol,
        num_queues,
    })
}

/// Connects and negotiates; the watchdog (if any) bounds the whole handshake.
pub(super) fn open(
    path: &Path,
    timeout: Duration,
    opts: &FrontendOptions,
    watchdog: Option<&Watchdog>,
) -> Result<(Frontend, Negotiated)> {
    let stream = connect_stream(path, timeout)?;
    open_stream(stream, opts, watchdog)
}

/// Negotiates on an already connected stream (e.g. one a listening frontend accepted).
pub(super) fn open_stream(
    stream: UnixStream,
    opts: &FrontendOptions,
    watchdog: Option<&Watchdog>,
) -> Result<(Frontend, Negotiated)> {
    let mut fe = Frontend::from_stream(stream, opts.max_queues as u64);
    if let Some(w) = watchdog {
        w.arm(fe.as_raw_fd());
    }
    let r = handshake(&mut fe, opts);
    if watchdog.is_some_and(Watchdog::disarm) {
        let limit = watchdog.map(Watchdog::timeout).unwrap_or_default();
        return Err(Error::BackendGone {
            op: "handshake",
            detail: format!("no reply within {limit:?}"),
        });
    }
    Ok((fe, r?))
}
