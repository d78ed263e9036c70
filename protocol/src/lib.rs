//! What vhost-user frontends (accel, tests, benchmarks) and backends (vhost-user-devices) share.
//!
//! - [`devices`]: device descriptions: virtio ids, queue counts, config-space layouts.
//! - [`daemon`]: backend process plumbing: CLI conventions, capabilities printing, the
//!   serve-again loop that accepts one frontend after another.
//! - [`frontend`]: the vhost-user frontend session (negotiation, memory table, vrings, reconnect).
//! - [`driver`]: a userspace virtio driver (split virtqueues in a memfd) over a frontend session.

pub mod daemon;
pub mod devices;
pub mod driver;
pub mod frontend;
