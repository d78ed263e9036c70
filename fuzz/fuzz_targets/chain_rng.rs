//! Guest rings and memory against vhost-user-rng's request path (see `ring.rs`).
#![no_main]

use std::sync::OnceLock;

use vhost_user_devices::rng::RngDevice;
use vu_daemon::VhostUserDevice;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static DEVICE: OnceLock<RngDevice> = OnceLock::new();
    let backend = DEVICE
        .get_or_init(accel_fuzz::devices::rng)
        .new_backend()
        .expect("backend");
    accel_fuzz::ring::run(&*backend, &accel_fuzz::ring::RingInput::parse(data));
});
