//! Device descriptions shared by frontends and backends: the [`devices::DEVICES`] table (what
//! a frontend needs to know about each kind), one layout module per device, the virtio
//! [`transport`] bits both sides use, and [`unix`]: how both sides bind their listening sockets.

pub mod blk;
pub mod console;
pub mod devices;
pub mod fs;
pub mod net;
pub mod rng;
pub mod transport;
pub mod unix;
pub mod vsock;
