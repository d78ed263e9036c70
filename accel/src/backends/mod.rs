//! Backend processes accel starts itself for QEMU's built-in device spellings (`-drive`,
//! `-blockdev`, `-netdev tap`, `virtio-rng-pci`, `vhost-vsock-pci`, `virtconsole`): one
//! vhost-user backend of this project per device, so the process split stays as it is when
//! the user starts the backends.
//!
//! - [`argv`]: which device-table row (and so which program) serves a spelling, and the
//!   program's arguments.
//! - [`spawn`]: finding a program (next to accel's executable, then `PATH`) and starting it
//!   with the fds it needs, tied to accel's life (`PR_SET_PDEATHSIG`).
//! - [`supervise`]: the listening sockets, the loop that restarts a backend that dies, and
//!   stopping them all when accel ends.
//! - [`launcher`]: the process accel forks at setup that runs that loop, so that accel itself
//!   never forks or executes (its seccomp filter forbids both).
//!
//! Each backend gets a listening unix socket accel creates (`--fd N`) in a private runtime
//! directory; accel keeps its copy, so a restarted backend serves the same socket and the
//! frontend's reconnect (chardev `reconnect=1`, see [`crate::virtio::monitor`]) finds it.

pub mod argv;
pub mod launcher;
pub mod spawn;
pub mod supervise;

pub use argv::{builtin_row, row_for};
pub use supervise::{Backends, BackendsError};
