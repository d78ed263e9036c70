//! accel's virtio-pci function: configuration space, common config, MSI-X (see `pci.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| accel_fuzz::pci::run(data));
