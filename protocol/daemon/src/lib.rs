//! Backend process plumbing shared by every vhost-user device program (blk, net, vsock, ...).
//!
//! A device program:
//! 1. flattens [`CommonArgs`] into its clap `Parser` (`--socket-path`, `--fd`,
//!    `--print-capabilities`),
//! 2. describes itself with a [`Capabilities`] value (QEMU's vhost-user.json `type`/`features`),
//! 3. implements [`VhostUserDevice`]: long-lived state (an open image, a tap fd, ...) that hands
//!    out a fresh [`vhost_user_backend::VhostUserBackend`] per frontend connection,
//! 4. calls [`run`] from `main`, which prints capabilities or opens the device, listens,
//!    handles SIGTERM/SIGINT (socket removed, exit 0) and serves one frontend after another.
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     let args = MyArgs::parse();
//!     vu_daemon::run(&args.common, &MY_CAPABILITIES, || MyDevice::open(&args))
//! }
//! ```

pub mod backend_util;
mod capabilities;
mod cli;
pub mod confine;
pub mod inflight;
pub mod ratelog;
pub mod ring;
mod serve;
mod signals;

pub use capabilities::Capabilities;
pub use cli::{CommonArgs, ListenAddress, SandboxMode};
pub use confine::DeviceConfinement;
pub use serve::{
    BackendMemory, BackendVring, CLIENT_RETRY, ConnectionEnd, FIRST_MESSAGE_TIMEOUT,
    VhostUserDevice, first_message_arrives, serve, serve_client, serve_stream,
};
use signals::{block_exit_signals, install_exit_handler_for};
/// The confinement mechanism, re-exported for devices' [`VhostUserDevice::confinement`].
pub use vu_sandbox as sandbox;

use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;

use vhost::vhost_user::Listener;

/// Why a backend program could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("give exactly one of --socket-path PATH and --fd N")]
    NoListenAddress,
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: std::path::PathBuf,
        source: vu_spec::unix::BindError,
    },
    #[error("--fd {fd}: {reason}")]
    BadFd { fd: i32, reason: String },
    #[error("cannot create the per-connection backend: {0}")]
    NewBackend(std::io::Error),
    #[error("cannot create the vhost-user daemon: {0}")]
    NewDaemon(String),
    #[error("cannot accept a frontend: {0}")]
    Accept(String),
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot confine the process (--sandbox off runs without): {0}")]
    Sandbox(#[from] vu_sandbox::SandboxError),
    #[error("--user: {0}")]
    User(#[from] vu_sandbox::UserError),
}

/// The whole life of a backend program after argument parsing: logging, `--print-capabilities`,
/// opening the device (`open`), listening (`--socket-path` or `--fd`), exit on SIGTERM/SIGINT,
/// and serving frontends one after another until killed. Returns the process exit code; errors
/// are printed to stderr as one clear line.
pub fn run<D, E, F>(common: &CommonArgs, capabilities: &Capabilities, open: F) -> ExitCode
where
    D: VhostUserDevice + Send + 'static,
    E: Display,
    F: FnOnce() -> Result<D, E>,
{
    run_devices(common, capabilities, || open().map(|d| (d, Vec::new())))
}

/// [`run`] for a program that serves more than one device (vhost-user-net's peer mode: two
/// devices wired back to back): `open` returns the device for the common listen address and
/// the others, each with the socket path it listens on. Every device is served on its own
/// thread, one frontend at a time; the first error ends the program, and a signal removes every
/// socket file.
pub fn run_devices<D, E, F>(common: &CommonArgs, capabilities: &Capabilities, open: F) -> ExitCode
where
    D: VhostUserDevice + Send + 'static,
    E: Display,
    F: FnOnce() -> Result<(D, Vec<(D, PathBuf)>), E>,
{
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .try_init();
    if common.print_capabilities {
        println!("{}", capabilities.to_json());
        return ExitCode::SUCCESS;
    }
    let program = capabilities.program;
    let fail = |msg: &dyn Display| {
        eprintln!("{program}: error: {msg}");
        ExitCode::FAILURE
    };
    let address = match common.listen_address() {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let (device, others) = match open() {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    // Block the exit signals before any thread exists so that only the handler thread sees
    // them (one arriving before the handler starts stays pending).
    if let Err(e) = block_exit_signals() {
        return fail(&e);
    }
    // Socket files this process creates (removed on exit); a client's socket is the
    // frontend's.
    let mut paths: Vec<PathBuf> = match &address {
        ListenAddress::Path(p) if !common.client => vec![p.clone()],
        _ => Vec::new(),
    };
    paths.extend(device.owned_socket_paths());
    for (other, path) in &others {
        paths.push(path.clone());
        paths.extend(other.owned_socket_paths());
    }
    let listen = |address: ListenAddress| -> Result<Endpoint, DaemonError> {
        let listener = address.listen()?;
        log::info!("{program}: listening on {address}");
        Ok(Endpoint::Listen(listener))
    };
    let first = match address {
        ListenAddress::Path(p) if common.client => {
            log::info!(
                "{program}: client of the frontend listening on {}",
                p.display()
            );
            Ok(Endpoint::Connect(p))
        }
        address => listen(address),
    };
    let mut served = Vec::with_capacity(1 + others.len());
    match first {
        Ok(endpoint) => served.push((device, endpoint)),
        Err(e) => return fail(&e),
    }
    for (device, path) in others {
        match listen(ListenAddress::Path(path)) {
            Ok(endpoint) => served.push((device, endpoint)),
            Err(e) => return fail(&e),
        }
    }
    // Setup is done: switch user (--user), then confine before any thread of ours exists.
    if common.sandbox == SandboxMode::Off
        && let Some(user) = &common.user
        && let Err(e) = vu_sandbox::drop_privileges(user)
    {
        return fail(&DaemonError::from(e));
    }
    if let Some(user) = &common.user {
        log::info!("{program}: running as uid {} gid {}", user.uid, user.gid);
    }
    if common.sandbox == SandboxMode::On {
        let devices: Vec<&D> = served.iter().map(|(d, _)| d).collect();
        let mut policy = confine::policy(program, &devices, &paths);
        if common.client {
            policy.syscalls.extend_from_slice(confine::CLIENT_SYSCALLS);
        }
        match vu_sandbox::confine_as(&policy, common.user.as_ref()) {
            Ok(e) => log::info!(
                "{program}: confined (no_new_privs, seccomp, landlock {})",
                if e.landlock { "on" } else { "NOT enforced" }
            ),
            Err(e) => return fail(&DaemonError::from(e)),
        }
    }
    if let Err(e) = install_exit_handler_for(paths) {
        return fail(&e);
    }
    match serve_all(served) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// How a device meets its frontend.
enum Endpoint {
    /// Listens (the default): the frontend connects.
    Listen(Listener),
    /// `--client`: connects to the frontend's listening socket.
    Connect(PathBuf),
}

impl Endpoint {
    fn serve<D: VhostUserDevice>(self, device: &D) -> Result<(), DaemonError> {
        match self {
            Endpoint::Listen(mut listener) => serve(device, &mut listener, None),
            Endpoint::Connect(path) => serve_client(device, &path),
        }
    }
}

/// Serves every device on its endpoint until the first error (the only way [`serve`] without
/// a connection limit returns); one device is served on the calling thread.
fn serve_all<D>(mut served: Vec<(D, Endpoint)>) -> Result<(), DaemonError>
where
    D: VhostUserDevice + Send + 'static,
{
    if served.len() == 1 {
        let (device, endpoint) = served.remove(0);
        return endpoint.serve(&device);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for (device, endpoint) in served {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(device.name().to_string())
            .spawn(move || {
                let _ = tx.send(endpoint.serve(&device));
            })
            .map_err(DaemonError::NewBackend)?;
    }
    drop(tx);
    rx.recv().unwrap_or(Ok(()))
}
