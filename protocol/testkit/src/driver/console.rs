//! virtio-console (single port) on top of the userspace [`Driver`]: keep device-writable
//! buffers posted on the receiveq and collect what the device puts there; send bytes through
//! the transmitq.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vm_memory::ByteValued;

use super::{Buffer, Driver, DriverOptions, Error, Result, Segment};
use vu_spec::console::{
    CONSOLE_CONFIG_SIZE, CONSOLE_NUM_QUEUES, CONSOLE_RX_QUEUE, CONSOLE_TX_QUEUE, ConsoleConfig,
};

/// A single-port virtio-console driver.
pub struct ConsoleDriver {
    drv: Driver,
    /// Posted receive buffers by token (their address).
    rx: HashMap<u64, Buffer>,
    rx_len: u32,
}

impl ConsoleDriver {
    /// Connects to a vhost-user-console backend and sets up both queues (no buffers posted:
    /// see [`post_receive`](Self::post_receive)).
    pub fn connect(
        path: impl AsRef<std::path::Path>,
        timeout: Duration,
        opts: DriverOptions,
    ) -> Result<Self> {
        let opts = DriverOptions {
            num_queues: CONSOLE_NUM_QUEUES,
            ..opts
        };
        Ok(Self::new(Driver::connect(path, timeout, opts)?))
    }

    /// Wraps a running driver with both queues set up.
    pub fn new(drv: Driver) -> Self {
        ConsoleDriver {
            drv,
            rx: HashMap::new(),
            rx_len: 0,
        }
    }

    /// The generic driver (raw chains, memory, queue stats, session).
    pub fn driver(&mut self) -> &mut Driver {
        &mut self.drv
    }

    /// Reads the config space (GET_CONFIG).
    pub fn read_config(&mut self) -> Result<ConsoleConfig> {
        let bytes = self
            .drv
            .session()
            .get_config(0, CONSOLE_CONFIG_SIZE as u32)?;
        ConsoleConfig::from_slice(&bytes)
            .copied()
            .ok_or_else(|| Error::BadReply(format!("config of {} bytes", bytes.len())))
    }

    /// Posts `count` receive buffers of `len` bytes each (and kicks the receiveq); each one is
    /// posted again after [`receive`](Self::receive) returns its contents.
    pub fn post_receive(&mut self, count: usize, len: u32) -> Result<()> {
        self.rx_len = len;
        for _ in 0..count {
            self.post_one()?;
        }
        self.drv.notify(CONSOLE_RX_QUEUE)?;
        Ok(())
    }

    fn post_one(&mut self) -> Result<()> {
        let buf = self.drv.alloc(u64::from(self.rx_len.max(1)), 8)?;
        let token = buf.addr.0;
        self.drv.submit(
            CONSOLE_RX_QUEUE,
            &[Segment::writable(buf.addr, self.rx_len)],
            false,
            token,
        )?;
        self.rx.insert(token, buf);
        Ok(())
    }

    /// Waits up to `timeout` for the device to fill the next receive buffer; returns its bytes
    /// (the used length of them) and posts the buffer again.
    pub fn receive(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let done = self.drv.wait(CONSOLE_RX_QUEUE, timeout)?;
        let buf = self.rx.remove(&done.token).ok_or_else(|| {
            Error::BadReply(format!(
                "receive completion for unknown token {:#x}",
                done.token
            ))
        })?;
        if done.len > self.rx_len {
            return Err(Error::BadReply(format!(
                "device wrote {} bytes into a {}-byte buffer",
                done.len, self.rx_len
            )));
        }
        let data = self.drv.read(buf.addr, done.len as usize)?;
        self.drv.free(buf);
        self.post_one()?;
        self.drv.notify(CONSOLE_RX_QUEUE)?;
        Ok(data)
    }

    /// Receives until `want` bytes arrived or `timeout` passed; returns what arrived.
    pub fn receive_at_least(&mut self, want: usize, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left) {
                Ok(d) => out.extend_from_slice(&d),
                Err(Error::Timeout { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Sends `data` in one transmit buffer and waits up to `timeout` for the device to take
    /// it; returns the used length the device reported.
    pub fn send(&mut self, data: &[u8], timeout: Duration) -> Result<u32> {
        let len = u32::try_from(data.len()).map_err(|_| Error::InvalidChain("data too long"))?;
        let buf = self.drv.alloc(u64::from(len.max(1)), 8)?;
        let token = buf.addr.0;
        let r = (|| {
            self.drv.write(buf.addr, data)?;
            self.drv.submit(
                CONSOLE_TX_QUEUE,
                &[Segment::readable(buf.addr, len)],
                false,
                token,
            )?;
            self.drv.notify(CONSOLE_TX_QUEUE)?;
            let done = self.drv.wait(CONSOLE_TX_QUEUE, timeout)?;
            if done.token != token {
                return Err(Error::BadReply(format!(
                    "completion for token {:#x} while waiting for {token:#x}",
                    done.token
                )));
            }
            Ok(done.len)
        })();
        if !matches!(r, Err(Error::Timeout { .. })) {
            self.drv.free(buf);
        }
        r
    }
}
