//! Device descriptions shared by frontends and backends: the [`devices::DEVICES`] table (what
//! a frontend needs to know about each kind) and one layout module per device.

pub mod blk;
pub mod console;
pub mod devices;
pub mod net;
pub mod rng;
pub mod transport;
pub mod vsock;
