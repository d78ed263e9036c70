//! virtio-rng on top of the userspace [`Driver`]: post a device-writable buffer, get back the
//! bytes the device wrote (the used length says how many).

use std::time::Duration;

use super::{Driver, DriverOptions, Error, Result, Segment};
use vu_spec::rng::RNG_QUEUE;

/// How long [`RngDriver::request`] waits by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A virtio-rng driver.
pub struct RngDriver {
    drv: Driver,
}

impl RngDriver {
    /// Connects to a vhost-user-rng backend and sets up its one queue.
    pub fn connect(
        path: impl AsRef<std::path::Path>,
        timeout: Duration,
        opts: DriverOptions,
    ) -> Result<Self> {
        let opts = DriverOptions {
            num_queues: 1,
            ..opts
        };
        Ok(Self::new(Driver::connect(path, timeout, opts)?))
    }

    /// Wraps a running driver.
    pub fn new(drv: Driver) -> Self {
        RngDriver { drv }
    }

    /// The generic driver (raw chains, memory, queue stats, session).
    pub fn driver(&mut self) -> &mut Driver {
        &mut self.drv
    }

    /// Asks for `len` random bytes in one buffer and waits up to `timeout`; returns the bytes
    /// the device wrote (fewer than `len` if it reported fewer).
    pub fn request(&mut self, len: u32, timeout: Duration) -> Result<Vec<u8>> {
        let buf = self.drv.alloc(u64::from(len.max(1)), 8)?;
        let token = buf.addr.0;
        let r = (|| {
            self.drv
                .submit(RNG_QUEUE, &[Segment::writable(buf.addr, len)], false, token)?;
            self.drv.notify(RNG_QUEUE)?;
            let done = self.drv.wait(RNG_QUEUE, timeout)?;
            if done.token != token {
                return Err(Error::BadReply(format!(
                    "completion for token {:#x} while waiting for {token:#x}",
                    done.token
                )));
            }
            if done.len > len {
                return Err(Error::BadReply(format!(
                    "device wrote {} bytes into a {len}-byte buffer",
                    done.len
                )));
            }
            self.drv.read(buf.addr, done.len as usize)
        })();
        // A request that never completed may still be written by the device: keep its memory.
        if !matches!(r, Err(Error::Timeout { .. })) {
            self.drv.free(buf);
        }
        r
    }
}
