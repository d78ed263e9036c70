//! Guest rings and memory against vhost-user-vsock's packet path (see `ring.rs`): packets on
//! the tx queue, buffers on rx, the event queue.
#![no_main]

use std::sync::OnceLock;

use vhost_user_devices::vsock::VsockDevice;
use vu_daemon::VhostUserDevice;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static DEVICE: OnceLock<VsockDevice> = OnceLock::new();
    let backend = DEVICE
        .get_or_init(accel_fuzz::devices::vsock)
        .new_backend()
        .expect("backend");
    accel_fuzz::ring::run(&*backend, &accel_fuzz::ring::RingInput::parse(data));
});
