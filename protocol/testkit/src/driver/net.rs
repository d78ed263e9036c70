//! virtio-net on top of the userspace [`Driver`]: post receive buffers, send frames, receive
//! frames (following `num_buffers` across chains with MRG_RXBUF), read the config space.
//!
//! Queue pair `p` is queues `2p` (receive) and `2p + 1` (transmit). Every packet carries a
//! [`NetHeader`] in front (12 bytes, or 10 for legacy drivers).

use std::collections::HashMap;
use std::time::Duration;

use vm_memory::ByteValued;

use super::{Buffer, Completion, Driver, DriverOptions, Error, Result, Segment};
use vu_spec::net::{
    NET_CONFIG_SIZE, NET_HDR_SIZE, NetConfig, NetHeader, header_size, rx_queue, tx_queue,
};

/// Size of the receive buffers [`NetDriver::post_rx`] uses by default (as Linux without
/// GSO: header + 1514-byte frame).
pub const SMALL_RX_BUFFER: u32 = 1526;

/// A received packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxPacket {
    pub header: NetHeader,
    /// The Ethernet frame (without the virtio header).
    pub frame: Vec<u8>,
    /// Chains it spanned.
    pub buffers: u16,
}

/// A virtio-net driver.
pub struct NetDriver {
    drv: Driver,
    hdr_len: usize,
    /// Receive buffers in flight, by token.
    rx_bufs: HashMap<u64, Buffer>,
    /// Receive completions already popped by [`NetDriver::rx_pending`].
    pending: Vec<(usize, Completion)>,
    next_token: u64,
}

impl NetDriver {
    /// Connects to a vhost-user-net backend and sets up `opts.num_queues` queues (default:
    /// one pair).
    pub fn connect(
        path: impl AsRef<std::path::Path>,
        timeout: Duration,
        mut opts: DriverOptions,
    ) -> Result<Self> {
        if opts.num_queues == 1 {
            opts.num_queues = 2;
        }
        Ok(Self::new(Driver::connect(path, timeout, opts)?))
    }

    /// Wraps a running driver.
    pub fn new(drv: Driver) -> Self {
        let hdr_len = header_size(drv.features());
        NetDriver {
            drv,
            hdr_len,
            rx_bufs: HashMap::new(),
            pending: Vec::new(),
            next_token: 1,
        }
    }

    /// The generic driver (raw chains, memory, queues, session).
    pub fn driver(&mut self) -> &mut Driver {
        &mut self.drv
    }

    /// Header length in use (12, or 10 without VERSION_1 and MRG_RXBUF).
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// The config space through GET_CONFIG.
    pub fn read_config(&mut self) -> Result<NetConfig> {
        let bytes = self.drv.session().get_config(0, NET_CONFIG_SIZE as u32)?;
        NetConfig::from_slice(&bytes)
            .copied()
            .ok_or_else(|| Error::BadReply(format!("{}-byte config", bytes.len())))
    }

    /// Makes `count` device-writable buffers of `size` bytes available on pair `pair`'s
    /// receive queue, and kicks.
    pub fn post_rx(&mut self, pair: u16, size: u32, count: usize) -> Result<()> {
        let q = usize::from(rx_queue(pair));
        for _ in 0..count {
            let buf = self.drv.alloc(u64::from(size), 16)?;
            let token = self.next_token;
            self.next_token += 1;
            if let Err(e) = self
                .drv
                .submit(q, &[Segment::writable(buf.addr, size)], false, token)
            {
                self.drv.free(buf);
                return Err(e);
            }
            self.rx_bufs.insert(token, buf);
        }
        self.drv.notify(q)?;
        Ok(())
    }

    /// Sends `frame` with `header` on pair `pair` and waits for the device to consume it.
    /// The header and frame go in separate descriptors when `split` is set.
    pub fn send_with(
        &mut self,
        pair: u16,
        header: NetHeader,
        frame: &[u8],
        split: bool,
        timeout: Duration,
    ) -> Result<()> {
        let q = usize::from(tx_queue(pair));
        let len = self.hdr_len + frame.len();
        let buf = self.drv.alloc(len as u64, 16)?;
        let res = (|| {
            self.drv
                .write(buf.addr, &header.as_slice()[..self.hdr_len])?;
            self.drv.write(buf.at(self.hdr_len as u64), frame)?;
            let segs = if split {
                vec![
                    Segment::readable(buf.addr, self.hdr_len as u32),
                    Segment::readable(buf.at(self.hdr_len as u64), frame.len() as u32),
                ]
            } else {
                vec![Segment::readable(buf.addr, len as u32)]
            };
            let token = self.next_token;
            self.next_token += 1;
            self.drv.submit(q, &segs, false, token)?;
            self.drv.notify(q)?;
            let done = self.drv.wait(q, timeout)?;
            if done.token != token {
                return Err(Error::BadReply(format!(
                    "transmit completion for token {} instead of {token}",
                    done.token
                )));
            }
            Ok(())
        })();
        self.drv.free(buf);
        res
    }

    /// Sends `frame` with a zeroed header.
    pub fn send(&mut self, pair: u16, frame: &[u8], timeout: Duration) -> Result<()> {
        self.send_with(pair, NetHeader::default(), frame, false, timeout)
    }

    /// Waits for the next packet on pair `pair` (all its chains with MRG_RXBUF) and posts
    /// fresh buffers of the same sizes in place of the used ones.
    pub fn recv(&mut self, pair: u16, timeout: Duration) -> Result<RxPacket> {
        let q = usize::from(rx_queue(pair));
        let mut data = self.take_rx(q, timeout)?;
        if data.len() < self.hdr_len {
            return Err(Error::BadReply(format!(
                "{}-byte receive buffer, shorter than the header",
                data.len()
            )));
        }
        let mut raw = [0u8; NET_HDR_SIZE];
        raw[..self.hdr_len].copy_from_slice(&data[..self.hdr_len]);
        let header = NetHeader::from_slice(&raw).copied().unwrap_or_default();
        let buffers = if self.hdr_len == NET_HDR_SIZE {
            u16::from_le(header.num_buffers).max(1)
        } else {
            1
        };
        for _ in 1..buffers {
            data.extend(self.take_rx(q, timeout)?);
        }
        Ok(RxPacket {
            header,
            frame: data.split_off(self.hdr_len),
            buffers,
        })
    }

    /// Whether a receive completion is waiting on pair `pair` within `timeout`.
    pub fn rx_pending(&mut self, pair: u16, timeout: Duration) -> Result<bool> {
        let q = usize::from(rx_queue(pair));
        match self.drv.wait(q, timeout) {
            Ok(done) => {
                // Kept for the next recv().
                self.pending.push((q, done));
                Ok(true)
            }
            Err(Error::Timeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Pops one receive completion of queue `q`, returns its bytes and re-posts a buffer of
    /// the same size.
    fn take_rx(&mut self, q: usize, timeout: Duration) -> Result<Vec<u8>> {
        let done = match self.pending.iter().position(|(pq, _)| *pq == q) {
            Some(i) => self.pending.remove(i).1,
            None => self.drv.wait(q, timeout)?,
        };
        let buf = self.rx_bufs.remove(&done.token).ok_or_else(|| {
            Error::BadReply(format!(
                "receive completion with unknown token {}",
                done.token
            ))
        })?;
        let used = u64::from(done.len).min(buf.len) as usize;
        let data = self.drv.read(buf.addr, used)?;
        let size = buf.len as u32;
        self.drv.free(buf);
        let pair = u16::try_from(q / 2).unwrap_or(u16::MAX);
        self.post_rx(pair, size, 1)?;
        Ok(data)
    }
}
