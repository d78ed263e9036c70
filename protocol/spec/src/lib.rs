//! Device descriptions shared by frontends and backends, and [`unix`]: how both sides bind
//! their listening sockets.

pub mod blk;
pub mod console;
pub mod net;
pub mod rng;
pub mod unix;
pub mod vsock;
