//! Device descriptions shared by frontends and backends.

pub mod blk;
pub mod console;
pub mod net;
pub mod rng;
pub mod vsock;
