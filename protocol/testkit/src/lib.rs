//! Dev-only tooling shared by the tests and benchmarks (never linked into accel or a backend).
//!
//! - [`driver`]: a userspace virtio driver (split virtqueues in a memfd) over a
//!   [`vu_frontend::FrontendSession`]: it plays the guest against a backend, no VM needed.
//! - `vu-blk-bench` (a binary of this crate): the block benchmark client `scripts/bench-blk.sh`
//!   runs against our backend and qemu-storage-daemon.
//! - [`support`]: scratch directories, children killed on drop, waiting for sockets and exits,
//!   running a program with a deadline: what every test suite needs around processes.
//! - [`confined`]: a policy test's confined child process and what it tries.

pub mod confined;
pub mod driver;
pub mod support;
