//! The serve-again loop: a fresh backend and `VhostUserDaemon` per frontend connection.

use std::sync::Arc;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{
    Error as DaemonLibError, VhostUserBackend, VhostUserDaemon, VringEpollHandler, VringRwLock,
};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::DaemonError;

/// Guest memory as backends see it (no dirty-page log: LOG_SHMFD is never offered).
pub type BackendMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
/// The vring type of every backend served here.
pub type BackendVring = VringRwLock<BackendMemory>;

/// A device program's long-lived state; it makes one backend per frontend connection, so that
/// every connection starts from fresh per-connection state (vrings, features, owner).
pub trait VhostUserDevice {
    type Backend: VhostUserBackend<Bitmap = (), Vring = BackendVring> + 'static;

    /// Name for the daemon's threads and log lines (`vhost-user-blk`).
    fn name(&self) -> &str;

    /// The backend that serves the next frontend.
    fn new_backend(&self) -> std::io::Result<Arc<Self::Backend>>;

    /// Socket files the device created besides the vhost-user socket (e.g. a host-side
    /// listener): [`run`](super::run) removes them too when a signal ends the process.
    fn owned_socket_paths(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// Called once per connection after its worker threads exist and before the frontend is
    /// accepted: register extra fds (timers, sockets, a tap) with the workers' epoll loops via
    /// [`VringEpollHandler::register_listener`] (ids above `num_queues`); their events reach
    /// the backend's `handle_event`. One handler per `queues_per_thread` entry.
    fn attach_workers(
        &self,
        _backend: &Arc<Self::Backend>,
        _workers: &[Arc<VringEpollHandler<Arc<Self::Backend>>>],
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// How one frontend connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The frontend hung up.
    Disconnected,
    /// The connection was dropped because of a protocol error (malformed message, ...).
    Dropped(String),
}

/// Accepts one frontend on `listener` and serves it until it disconnects or misbehaves; the
/// backend's worker threads are stopped and joined before this returns.
pub fn serve_connection<D>(
    device: &D,
    listener: &mut Listener,
) -> Result<ConnectionEnd, DaemonError>
where
    D: VhostUserDevice,
{
    let backend = device.new_backend().map_err(DaemonError::NewBackend)?;
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(device.name().to_string(), backend.clone(), mem)
        .map_err(|e| DaemonError::NewDaemon(e.to_string()))?;
    device
        .attach_workers(&backend, &daemon.get_epoll_handlers())
        .map_err(DaemonError::NewBackend)?;
    drop(backend);
    daemon
        .start(listener)
        .map_err(|e| DaemonError::Accept(e.to_string()))?;
    log::info!("{}: frontend connected", device.name());
    let end = match daemon.wait() {
        Ok(())
        | Err(DaemonLibError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => ConnectionEnd::Disconnected,
        Err(e) => ConnectionEnd::Dropped(e.to_string()),
    };
    // Dropping the daemon drops its handler, which signals the backend's exit events and joins
    // the vring worker threads.
    drop(daemon);
    match &end {
        ConnectionEnd::Disconnected => log::info!("{}: frontend disconnected", device.name()),
        ConnectionEnd::Dropped(why) => {
            log::warn!("{}: connection dropped: {why}", device.name())
        }
    }
    Ok(end)
}

/// Serves frontends one after another: `max_connections` of them, or forever with `None`.
pub fn serve<D>(
    device: &D,
    listener: &mut Listener,
    max_connections: Option<usize>,
) -> Result<(), DaemonError>
where
    D: VhostUserDevice,
{
    let mut served = 0usize;
    while max_connections.is_none_or(|max| served < max) {
        serve_connection(device, listener)?;
        served += 1;
    }
    Ok(())
}
