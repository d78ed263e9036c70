//! virtio-vsock on top of the userspace [`Driver`]: it plays the guest's vsock transport.
//!
//! The rx queue is kept full of device-writable buffers (a header descriptor and a data
//! descriptor each, as Linux posts them); [`VsockDriver::recv`] returns the next packet the
//! device put there and posts the buffer again. [`VsockDriver::send`] puts one packet (header,
//! optional data) on the tx queue and waits until the device took it. Malformed packets:
//! [`VsockDriver::send_raw`] or [`Driver::submit_raw`].

use std::time::Duration;

use vm_memory::{ByteValued, GuestAddress};

use super::{Buffer, Driver, DriverOptions, Error, Result, Segment};
use vu_spec::vsock::{
    EVENT_QUEUE, PACKET_HEADER_SIZE, PacketHeader, RX_QUEUE, TX_QUEUE, VSOCK_CONFIG_SIZE,
    VSOCK_HOST_CID, VSOCK_TYPE_STREAM, VsockConfig,
};

/// Data bytes per rx buffer (Linux uses 4 KiB).
pub const RX_DATA_SIZE: u32 = 4096;
/// rx buffers kept posted.
pub const RX_BUFFERS: usize = 32;
/// `buf_alloc` this driver advertises by default.
pub const DEFAULT_BUF_ALLOC: u32 = 64 * 1024;
/// How long [`VsockDriver::send`] waits for the device to take a packet.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A virtio-vsock driver.
pub struct VsockDriver {
    drv: Driver,
    guest_cid: u64,
    /// Posted rx buffers by token.
    rx: Vec<Buffer>,
}

impl VsockDriver {
    /// Connects to a vhost-user-vsock backend, sets up rx, tx and event queues, reads the CID
    /// and fills the rx queue.
    pub fn connect(path: impl AsRef<std::path::Path>, timeout: Duration) -> Result<Self> {
        let opts = DriverOptions {
            num_queues: EVENT_QUEUE + 1,
            ..DriverOptions::default()
        };
        Self::new(Driver::connect(path, timeout, opts)?)
    }

    /// Wraps a running driver (at least rx and tx queues): reads the config and posts rx
    /// buffers.
    pub fn new(mut drv: Driver) -> Result<Self> {
        let bytes = drv.session().get_config(0, VSOCK_CONFIG_SIZE as u32)?;
        let cfg = VsockConfig::from_slice(&bytes)
            .copied()
            .ok_or_else(|| Error::BadReply(format!("config of {} bytes", bytes.len())))?;
        let mut v = VsockDriver {
            drv,
            guest_cid: u64::from_le(cfg.guest_cid),
            rx: Vec::new(),
        };
        for _ in 0..RX_BUFFERS {
            let buf = v
                .drv
                .alloc(PACKET_HEADER_SIZE as u64 + u64::from(RX_DATA_SIZE), 64)?;
            v.rx.push(buf);
            v.post_rx(v.rx.len() - 1)?;
        }
        v.drv.notify(RX_QUEUE)?;
        Ok(v)
    }

    fn post_rx(&mut self, token: usize) -> Result<()> {
        let buf = self.rx[token];
        let segs = [
            Segment::writable(buf.addr, PACKET_HEADER_SIZE as u32),
            Segment::writable(buf.at(PACKET_HEADER_SIZE as u64), RX_DATA_SIZE),
        ];
        self.drv.submit(RX_QUEUE, &segs, false, token as u64)?;
        Ok(())
    }

    /// The generic driver (raw chains, memory, session).
    pub fn driver(&mut self) -> &mut Driver {
        &mut self.drv
    }

    /// The guest CID from the config space.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// A stream packet header from this guest to host port `dst_port`, with the default
    /// credit (`buf_alloc`, `fwd_cnt` 0).
    pub fn header(&self, src_port: u32, dst_port: u32, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: self.guest_cid,
            dst_cid: VSOCK_HOST_CID,
            src_port,
            dst_port,
            type_: VSOCK_TYPE_STREAM,
            op,
            buf_alloc: DEFAULT_BUF_ALLOC,
            ..Default::default()
        }
    }

    /// Sends `hdr` (its `len` set to `data.len()`) and `data` on the tx queue and waits until
    /// the device completed it.
    pub fn send(&mut self, hdr: PacketHeader, data: &[u8]) -> Result<()> {
        let hdr = PacketHeader {
            len: data.len() as u32,
            ..hdr
        };
        self.send_raw(hdr.to_le().as_slice(), data)
    }

    /// Sends raw header bytes (any length, any content) and `data` as a tx chain of one or two
    /// descriptors, and waits until the device completed it.
    pub fn send_raw(&mut self, header: &[u8], data: &[u8]) -> Result<()> {
        let total = header.len() as u64 + data.len() as u64;
        let buf = self.drv.alloc(total.max(1), 64)?;
        self.drv.write(buf.addr, header)?;
        let data_addr = buf.at(header.len() as u64);
        self.drv.write(data_addr, data)?;
        let mut segs = vec![Segment::readable(buf.addr, header.len() as u32)];
        if !data.is_empty() {
            segs.push(Segment::readable(data_addr, data.len() as u32));
        }
        let result = self.submit_and_wait(&segs);
        self.drv.free(buf);
        result
    }

    fn submit_and_wait(&mut self, segs: &[Segment]) -> Result<()> {
        let token = u64::MAX;
        self.drv.submit(TX_QUEUE, segs, false, token)?;
        self.drv.notify(TX_QUEUE)?;
        let done = self.drv.wait(TX_QUEUE, DEFAULT_TIMEOUT)?;
        if done.token != token {
            return Err(Error::BadReply(format!("tx completion {}", done.token)));
        }
        Ok(())
    }

    /// The next packet the device sent (header in host byte order, and its data), waiting up
    /// to `timeout`; the rx buffer is posted again.
    pub fn recv(&mut self, timeout: Duration) -> Result<(PacketHeader, Vec<u8>)> {
        let done = self.drv.wait(RX_QUEUE, timeout)?;
        let token = usize::try_from(done.token).unwrap_or(usize::MAX);
        let buf = *self
            .rx
            .get(token)
            .ok_or_else(|| Error::BadReply(format!("rx completion {}", done.token)))?;
        let raw = self.drv.read(buf.addr, PACKET_HEADER_SIZE)?;
        let hdr = PacketHeader::from_slice(&raw)
            .copied()
            .ok_or_else(|| Error::BadReply("short header".into()))?
            .from_le();
        let used = done.len as usize;
        let data_len = (hdr.len as usize).min(RX_DATA_SIZE as usize);
        let data = if used < PACKET_HEADER_SIZE + data_len {
            self.post_rx(token)?;
            self.drv.notify(RX_QUEUE)?;
            return Err(Error::BadReply(format!(
                "rx used length {used} for a packet of {} data bytes",
                { hdr.len }
            )));
        } else {
            self.drv.read(
                GuestAddress(buf.addr.0 + PACKET_HEADER_SIZE as u64),
                data_len,
            )?
        };
        self.post_rx(token)?;
        self.drv.notify(RX_QUEUE)?;
        Ok((hdr, data))
    }

    /// Like [`recv`](Self::recv), but `None` when nothing arrives within `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Option<(PacketHeader, Vec<u8>)>> {
        match self.recv(timeout) {
            Ok(p) => Ok(Some(p)),
            Err(Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
