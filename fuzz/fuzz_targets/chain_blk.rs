//! Guest rings and memory against vhost-user-blk's request path (see `ring.rs`). One backend
//! per process: a new one starts eight I/O threads.
#![no_main]

use std::sync::{Arc, OnceLock};

use vhost_user_backend::VhostUserBackend;
use vhost_user_devices::blk::{BlkDevice, backend::BlkBackend};
use vu_daemon::VhostUserDevice;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static BACKEND: OnceLock<(BlkDevice, Arc<BlkBackend>)> = OnceLock::new();
    let (_, backend) = BACKEND.get_or_init(|| {
        let device = accel_fuzz::devices::blk();
        let backend = device.new_backend().expect("backend");
        (device, backend)
    });
    accel_fuzz::ring::run(&**backend, &accel_fuzz::ring::RingInput::parse(data));
    // Large requests complete on the I/O threads: wait for them (what a ring stop or device
    // reset does), so that none writes into the guest memory of the next input.
    backend.reset_device();
});
