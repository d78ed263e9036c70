//! Device descriptions shared by frontends and backends.

pub mod blk;
