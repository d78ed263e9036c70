//! Command-line conventions every backend shares (vhost-device / virtiofsd style).

use std::fmt;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::sockopt::{AcceptConn, SockType};
use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt};
use vhost::vhost_user::Listener;
use vu_spec::unix::bind_replacing_socket;

use super::DaemonError;
use crate::backend_util::{MAX_QUEUE_SIZE, valid_queue_size};

/// Options every backend program accepts; `#[command(flatten)]` it into the program's Parser.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct CommonArgs {
    /// Listen for the vhost-user frontend on this unix socket (created, removed on exit).
    #[arg(short = 's', long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// Serve on an inherited, already listening unix socket file descriptor.
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,
    /// Connect to --socket-path instead of listening on it: the frontend listens (QEMU's and
    /// accel's `-chardev socket,...,server=on`). After the frontend goes away, connect again
    /// (every second while nobody listens).
    #[arg(long, requires = "socket_path", conflicts_with = "fd")]
    pub client: bool,
    /// Print the capabilities JSON (QEMU's vhost-user.json) and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    /// Largest queue size a frontend may configure (a power of two from 2 to 32768).
    #[arg(long, default_value_t = DEFAULT_QUEUE_SIZE, value_name = "N", value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// Confine the process once set up (no_new_privs, landlock, seccomp); `off` for debugging.
    #[arg(long, value_enum, default_value_t = SandboxMode::On, value_name = "on|off")]
    pub sandbox: SandboxMode,
    /// Switch to this user (and group; default: the user's own) once set up, before the
    /// sandbox: the image, output files and socket directories must stay usable by it.
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<vu_sandbox::User>,
}

/// Parses `--user` (a name is accepted too).
fn parse_user(s: &str) -> Result<vu_sandbox::User, String> {
    vu_sandbox::User::parse(s).map_err(|e| e.to_string())
}

/// `--sandbox on|off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SandboxMode {
    #[default]
    On,
    Off,
}

/// `--queue-size` when not given.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;

impl Default for CommonArgs {
    fn default() -> Self {
        CommonArgs {
            socket_path: None,
            fd: None,
            client: false,
            print_capabilities: false,
            queue_size: DEFAULT_QUEUE_SIZE,
            sandbox: SandboxMode::On,
            user: None,
        }
    }
}

/// Parses `--queue-size`: a usage error (clap's, exit status 2) unless [`valid_queue_size`].
fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    match u16::try_from(n) {
        Ok(n) if valid_queue_size(n) => Ok(n),
        _ => Err(format!(
            "must be a power of two between 2 and {MAX_QUEUE_SIZE}"
        )),
    }
}

/// Where the backend listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    Path(PathBuf),
    Fd(RawFd),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Path(p) => write!(f, "{}", p.display()),
            ListenAddress::Fd(fd) => write!(f, "inherited fd {fd}"),
        }
    }
}

impl CommonArgs {
    /// The one listen address the options name.
    pub fn listen_address(&self) -> Result<ListenAddress, DaemonError> {
        match (&self.socket_path, self.fd) {
            (Some(p), None) => Ok(ListenAddress::Path(p.clone())),
            (None, Some(fd)) => Ok(ListenAddress::Fd(fd)),
            _ => Err(DaemonError::NoListenAddress),
        }
    }
}

impl ListenAddress {
    /// Binds the path (replacing a stale socket file; removed again when the listener drops) or
    /// adopts the inherited fd after checking it is a listening unix stream socket.
    pub fn listen(&self) -> Result<Listener, DaemonError> {
        match self {
            ListenAddress::Path(path) => {
                let bind_err = |source| DaemonError::Bind {
                    path: path.clone(),
                    source,
                };
                // The file appears once listening (a frontend that waits for it can connect at
                // once); the Listener removes it again when it drops.
                let fd = bind_replacing_socket(path).map_err(bind_err)?;
                Ok(Listener::from_bound(fd, path.clone()))
            }
            ListenAddress::Fd(fd) => listener_from_fd(*fd),
        }
    }
}

fn listener_from_fd(fd: RawFd) -> Result<Listener, DaemonError> {
    let bad = |reason: String| DaemonError::BadFd { fd, reason };
    if fd < 0 {
        return Err(bad("not a file descriptor".into()));
    }
    // SAFETY: borrows the fd only for the duration of the checks; fcntl(F_GETFD) tells an open
    // fd from a closed one before anything else touches it.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(bad(format!("{}", std::io::Error::last_os_error())));
    }
    // SAFETY: the fd is open (checked above) and stays open while borrowed here.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, SockType) {
        Ok(nix::sys::socket::SockType::Stream) => {}
        Ok(t) => return Err(bad(format!("socket type {t:?}, want a stream socket"))),
        Err(e) => return Err(bad(format!("not a socket: {e}"))),
    }
    let family = getsockname::<SockaddrStorage>(fd)
        .ok()
        .and_then(|a| a.family());
    if family != Some(AddressFamily::Unix) {
        return Err(bad("not a unix domain socket".into()));
    }
    if !getsockopt(&borrowed, AcceptConn).unwrap_or(false) {
        return Err(bad("socket is not listening".into()));
    }
    // SAFETY: F_SETFD on an fd we checked is open; sets close-on-exec so children don't leak it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the fd was inherited for this purpose and nothing else in this process owns it;
    // the Listener takes ownership (and closes it on drop).
    Ok(unsafe { Listener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::os::fd::IntoRawFd;
    use vu_spec::unix::BindError;

    #[derive(Parser, Debug)]
    struct Prog {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn parses_conventions() {
        let p = Prog::try_parse_from(["x", "--socket-path", "/tmp/s"]).unwrap();
        assert_eq!(
            p.common.listen_address().unwrap(),
            ListenAddress::Path("/tmp/s".into())
        );
        let p = Prog::try_parse_from(["x", "--fd", "3"]).unwrap();
        assert_eq!(p.common.listen_address().unwrap(), ListenAddress::Fd(3));
        assert!(Prog::try_parse_from(["x", "--fd", "3", "-s", "/a"]).is_err());
        let p = Prog::try_parse_from(["x", "--print-capabilities"]).unwrap();
        assert!(p.common.print_capabilities);
        assert!(p.common.listen_address().is_err());
        assert_eq!(
            p.common,
            CommonArgs {
                print_capabilities: true,
                ..CommonArgs::default()
            }
        );
    }

    #[test]
    fn sandbox_is_on_unless_turned_off() {
        let p = Prog::try_parse_from(["x", "-s", "/s"]).unwrap();
        assert_eq!(p.common.sandbox, SandboxMode::On);
        let p = Prog::try_parse_from(["x", "-s", "/s", "--sandbox", "off"]).unwrap();
        assert_eq!(p.common.sandbox, SandboxMode::Off);
        assert!(Prog::try_parse_from(["x", "-s", "/s", "--sandbox", "maybe"]).is_err());
    }

    #[test]
    fn user_is_uid_and_optional_gid() {
        let p = Prog::try_parse_from(["x", "-s", "/s", "--user", "1000:1001"]).unwrap();
        let u = p.common.user.unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        assert!(
            Prog::try_parse_from(["x", "-s", "/s"])
                .unwrap()
                .common
                .user
                .is_none()
        );
        let err = Prog::try_parse_from(["x", "-s", "/s", "--user", "1:x"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--user"), "{err}");
    }

    #[test]
    fn queue_size_is_a_power_of_two_from_2_to_32768() {
        let q = |v: &str| Prog::try_parse_from(["x", "-s", "/s", "--queue-size", v]);
        assert_eq!(
            Prog::try_parse_from(["x", "-s", "/s"])
                .unwrap()
                .common
                .queue_size,
            1024
        );
        for ok in [2u16, 64, 32768] {
            assert_eq!(q(&ok.to_string()).unwrap().common.queue_size, ok);
        }
        for bad in ["0", "1", "3", "100", "65536", "4.0", "x"] {
            let err = q(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.to_string().contains("--queue-size"), "{bad}: {err}");
        }
        assert!(
            q("100")
                .unwrap_err()
                .to_string()
                .contains("must be a power of two between 2 and 32768")
        );
    }

    #[test]
    fn fd_must_be_a_listening_unix_socket() {
        let f = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        assert!(matches!(
            listener_from_fd(f),
            Err(DaemonError::BadFd { .. })
        ));
        // SAFETY: closing the fd this test opened.
        unsafe { libc::close(f) };
        assert!(listener_from_fd(-1).is_err());
        assert!(listener_from_fd(100_000).is_err());
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/daemon-cli-").unwrap();
        let path = dir.as_path().join("s");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = l.into_raw_fd();
        let listener = listener_from_fd(fd).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(listener.accept().unwrap().is_some());
    }

    #[test]
    fn socket_path_replaces_a_stale_socket_never_another_file() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/daemon-cli-").unwrap();
        let path = dir.as_path().join("s");
        // A socket file left by an earlier process.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = ListenAddress::Path(path.clone()).listen().unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(listener.accept().unwrap().is_some());
        drop(listener);
        assert!(!path.exists(), "removed when the listener drops");
        std::fs::write(&path, b"keep").unwrap();
        let err = ListenAddress::Path(path.clone()).listen().err().unwrap();
        assert!(
            matches!(
                err,
                DaemonError::Bind {
                    source: BindError::NotASocket,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
