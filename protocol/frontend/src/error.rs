//! Errors of the vhost-user frontend session.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use vhost::vhost_user::Error as VuError;

/// What can go wrong in a [`FrontendSession`](super::FrontendSession).
///
/// The split that matters to callers: [`Error::BackendGone`] means the backend process closed
/// the connection or died (EOF, EPIPE, ECONNRESET); the session is then unusable until
/// [`FrontendSession::reconnect`](super::FrontendSession::reconnect) succeeds. Every other
/// variant is a protocol or usage error on a live connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be connected before the timeout expired.
    #[error("cannot connect to vhost-user backend at {path} within {timeout:?}: {source}")]
    Connect {
        path: PathBuf,
        timeout: Duration,
        #[source]
        source: io::Error,
    },
    /// The backend closed the connection or died (EOF, EPIPE, ECONNRESET).
    #[error("vhost-user backend gone during {op}: {detail}")]
    BackendGone { op: &'static str, detail: String },
    /// The backend answered a request with an error or a malformed reply.
    #[error("vhost-user request {op} failed: {source}")]
    Protocol {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks a virtio or protocol feature this frontend requires.
    #[error("vhost-user backend lacks required {what} features {missing:#x}")]
    MissingFeatures { what: &'static str, missing: u64 },
    /// After a reconnect the backend offers fewer features than were negotiated before.
    #[error("reconnected backend no longer offers negotiated features {missing:#x}")]
    FeaturesShrunk { missing: u64 },
    /// A queue index beyond the negotiated queue count.
    #[error("queue index {index} out of range (device has {num_queues} queues)")]
    QueueIndex { index: usize, num_queues: usize },
    /// A vring operation needs a step that has not happened yet (e.g. no memory table).
    #[error("invalid vring/session state: {0}")]
    State(&'static str),
    /// A guest-physical range is not (entirely) inside one region of the memory table.
    #[error("guest-physical range {gpa:#x}+{len:#x} is not inside the memory table")]
    AddressNotMapped { gpa: u64, len: u64 },
    /// A guest memory region cannot be shared with a backend (not file-backed).
    #[error("guest memory region at {gpa:#x} is not file-backed and cannot be shared")]
    RegionNotShareable { gpa: u64 },
    /// Dup'ing an event fd failed.
    #[error("cannot duplicate event fd: {0}")]
    EventFd(#[source] io::Error),
}

/// Result of session operations.
pub type Result<T> = std::result::Result<T, Error>;

fn io_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ECONNABORTED | libc::ESHUTDOWN
        )
    ) || matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
    )
}

/// Whether a `vhost` crate error means the peer is gone rather than a protocol failure.
pub fn is_disconnect(err: &vhost::Error) -> bool {
    match err {
        vhost::Error::VhostUserProtocol(e) => match e {
            // EOF on a header read is `Disconnected`; EOF while reading a reply body shows up
            // as a short read (`PartialMessage`): the backend hung up mid-conversation.
            VuError::Disconnected | VuError::PartialMessage | VuError::SocketBroken(_) => true,
            VuError::SocketError(io) | VuError::SocketRetry(io) => io_gone(io),
            _ => false,
        },
        vhost::Error::IOError(io) => io_gone(io),
        _ => false,
    }
}

impl Error {
    /// Classifies a `vhost` crate error from request `op`.
    pub(crate) fn from_vhost(op: &'static str, source: vhost::Error) -> Self {
        if is_disconnect(&source) {
            Error::BackendGone {
                op,
                detail: source.to_string(),
            }
        } else {
            Error::Protocol { op, source }
        }
    }

    /// True when the backend closed the connection or died; reconnecting may help.
    pub fn is_backend_gone(&self) -> bool {
        matches!(self, Error::BackendGone { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_disconnects() {
        let gone = [
            VuError::Disconnected,
            VuError::PartialMessage,
            VuError::SocketBroken(io::Error::from_raw_os_error(libc::EPIPE)),
            VuError::SocketError(io::Error::from_raw_os_error(libc::ECONNRESET)),
        ];
        for e in gone {
            let err = Error::from_vhost("TEST", vhost::Error::VhostUserProtocol(e));
            assert!(err.is_backend_gone(), "{err}");
        }
        let proto = [
            VuError::BackendInternalError,
            VuError::InvalidMessage,
            VuError::SocketError(io::Error::from_raw_os_error(libc::EINVAL)),
        ];
        for e in proto {
            let err = Error::from_vhost("TEST", vhost::Error::VhostUserProtocol(e));
            assert!(!err.is_backend_gone(), "{err}");
        }
    }
}
