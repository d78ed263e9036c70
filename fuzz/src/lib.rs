//! Shared harnesses of the fuzz targets (one file per concern):
//! - [`devices`]: the real backend devices, built once per fuzzing process in a scratch
//!   directory (image file, vsock host socket, console output);
//! - [`ring`]: one guest-memory image with the rings of one worker thread, handed to a
//!   backend's `handle_event` (descriptor-chain parsing and request handling);
//! - [`session`]: a vhost-user connection fed with forged messages and fds, served by
//!   `vu_daemon::serve_stream` (the backend processes' own per-connection path);
//! - [`pci`]: accel's virtio-pci function (common config, MSI-X table and capability, PCI
//!   config space) behind a device model and an interrupt router that only record.
//!
//! Every input format is a byte stream read with [`Reader`]; missing bytes read as zeros, so
//! every input means something. `corpus/gen.py` writes the seed inputs in these formats.

pub mod devices;
pub mod pci;
pub mod ring;
pub mod session;

/// Reads little-endian fields from fuzz input; past the end everything is zero.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        b.iter_mut().for_each(|x| *x = self.u8());
        u64::from_le_bytes(b)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

/// With `FUZZ_HANG_DUMP=SECONDS` set, an input that runs longer than that gets every thread's
/// stack printed (by gdb, attached to this process) before libFuzzer's own timeout kills it:
/// libFuzzer without a sanitizer says only "timeout". Call at the start of each input.
pub fn hang_watch() {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    static STARTED: AtomicU64 = AtomicU64::new(0);
    static EPOCH: OnceLock<Option<(Instant, u64)>> = OnceLock::new();
    let Some((epoch, _)) = *EPOCH.get_or_init(|| {
        let limit: u64 = std::env::var("FUZZ_HANG_DUMP").ok()?.parse().ok()?;
        let epoch = Instant::now();
        std::thread::spawn(move || {
            let mut dumped = 0;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let started = STARTED.load(Ordering::Relaxed);
                let now = epoch.elapsed().as_millis() as u64;
                if started != dumped && now.saturating_sub(started - 1) > limit * 1000 {
                    dumped = started;
                    let pid = std::process::id().to_string();
                    let _ = std::process::Command::new("gdb")
                        .args(["-p", &pid, "-batch", "-ex", "thread apply all bt 30"])
                        .status();
                }
            }
        });
        Some((epoch, limit))
    }) else {
        return;
    };
    // +1: 0 means "no input yet" (an input starting in the first millisecond was never dumped).
    STARTED.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
}
