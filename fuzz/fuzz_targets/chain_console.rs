//! Guest rings and memory against vhost-user-console's transmit and receive paths (see
//! `ring.rs`); the input's host bytes are console input waiting for the receive queue.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use vhost_user_devices::console::backend::ConsoleBackend;
use vhost_user_devices::console::io::ConsoleIo;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static IO: OnceLock<Arc<ConsoleIo>> = OnceLock::new();
    let io = IO.get_or_init(|| Arc::new(ConsoleIo::file(Path::new("/dev/null")).expect("io")));
    let input = accel_fuzz::ring::RingInput::parse(data);
    if !input.host.is_empty() {
        io.input().push(input.host);
    }
    let backend = ConsoleBackend::new(io.clone(), accel_fuzz::devices::QUEUE_SIZE);
    accel_fuzz::ring::run(&backend, &input);
    // Input not taken by the guest must not carry over to the next input.
    let _ = io.input().take(usize::MAX);
});
