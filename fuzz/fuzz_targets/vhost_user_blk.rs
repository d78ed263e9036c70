//! vhost-user messages (and fds) from a hostile frontend to vhost-user-blk's real backend, on
//! the per-connection path the program runs (see `session.rs`).
#![no_main]

use std::sync::OnceLock;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static DEVICE: OnceLock<vhost_user_devices::blk::BlkDevice> = OnceLock::new();
    accel_fuzz::session::run(DEVICE.get_or_init(accel_fuzz::devices::blk), data);
});
