//! virtio-blk on top of the userspace [`Driver`]: synchronous helpers (read, write, flush,
//! discard, write-zeroes, get-id), a generic request call, and pre-allocated request slots
//! for keeping many requests in flight (benchmarks).
//!
//! Request chains follow virtio 1.2 §5.2.6: a device-readable [`RequestHeader`], the data
//! (device-writable for IN and GET_ID, device-readable otherwise), and a one-byte
//! device-writable status. The status byte is pre-set to 0xff so a device that never wrote
//! it is detectable. Malformed chains: build them with [`Driver::submit_raw`].

use std::time::Duration;

use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::{Buffer, Completion, Driver, DriverOptions, Error, Result, Segment};
use vu_spec::blk::{
    BLK_CONFIG_SIZE, BlkConfig, DiscardWriteZeroesSegment, RequestHeader, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

/// Status byte value before the device writes it.
pub const STATUS_UNWRITTEN: u8 = 0xff;

/// How long the synchronous helpers wait for a completion.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request for [`BlkDriver::execute`].
#[derive(Clone, Copy, Debug)]
pub struct BlkRequest<'a> {
    /// `VIRTIO_BLK_T_*`.
    pub request_type: u32,
    /// Start sector (512-byte units).
    pub sector: u64,
    /// Device-readable payload (write data, discard segments); may be empty.
    pub out: &'a [u8],
    /// Device-writable payload length (read data, id); 0 for none.
    pub in_len: u32,
}

/// What the device answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkResponse {
    /// The status byte (`VIRTIO_BLK_S_*`, or [`STATUS_UNWRITTEN`]).
    pub status: u8,
    /// The used-ring length the device reported.
    pub used_len: u32,
    /// The device-writable payload after completion (`in_len` bytes).
    pub data: Vec<u8>,
}

/// Data direction a request type implies.
fn device_writes_data(request_type: u32) -> bool {
    matches!(request_type, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID)
}

/// Pre-allocated buffers for one in-flight request: data first (4 KiB aligned), then the
/// header and the status byte.
#[derive(Clone, Copy, Debug)]
pub struct BlkSlot {
    buf: Buffer,
    data_cap: u32,
    meta: u64,
}

impl BlkSlot {
    /// Where the data buffer starts.
    pub fn data_addr(&self) -> GuestAddress {
        self.buf.addr
    }
    /// Data capacity in bytes.
    pub fn data_capacity(&self) -> u32 {
        self.data_cap
    }
    /// Where the request header is.
    pub fn header_addr(&self) -> GuestAddress {
        self.buf.at(self.meta)
    }
    /// Where the status byte is.
    pub fn status_addr(&self) -> GuestAddress {
        self.buf.at(self.meta + 16)
    }
}

/// A virtio-blk driver.
pub struct BlkDriver {
    drv: Driver,
    config: BlkConfig,
}

impl BlkDriver {
    /// Connects to a vhost-user-blk backend, negotiates, sets up queues and reads the config.
    pub fn connect(
        path: impl AsRef<std::path::Path>,
        timeout: Duration,
        opts: DriverOptions,
    ) -> Result<Self> {
        Self::new(Driver::connect(path, timeout, opts)?)
    }

    /// Wraps a running driver and reads the config space.
    pub fn new(drv: Driver) -> Result<Self> {
        let mut b = BlkDriver {
            drv,
            config: BlkConfig::default(),
        };
        b.config = b.read_config()?;
        Ok(b)
    }

    /// The generic driver (raw chains, memory, queues, session).
    pub fn driver(&mut self) -> &mut Driver {
        &mut self.drv
    }

    /// Config space as read at setup (or by the last [`read_config`](Self::read_config)).
    pub fn config(&self) -> BlkConfig {
        self.config
    }

    /// Reads the config space again (GET_CONFIG).
    pub fn read_config(&mut self) -> Result<BlkConfig> {
        let bytes = self.drv.session().get_config(0, BLK_CONFIG_SIZE as u32)?;
        let cfg = BlkConfig::from_slice(&bytes)
            .copied()
            .ok_or_else(|| Error::BadReply(format!("config of {} bytes", bytes.len())))?;
        self.config = cfg;
        Ok(cfg)
    }

    /// Disk size in bytes, from the config's capacity.
    pub fn capacity_bytes(&self) -> u64 {
        let sectors = self.config.capacity;
        sectors.saturating_mul(vu_spec::blk::SECTOR_SIZE)
    }

    /// Allocates buffers for one request with up to `data_cap` bytes of data.
    pub fn alloc_slot(&mut self, data_cap: u32) -> Result<BlkSlot> {
        let meta = u64::from(data_cap).next_multiple_of(64);
        let buf = self.drv.alloc(meta + 64, 4096)?;
        Ok(BlkSlot {
            buf,
            data_cap,
            meta,
        })
    }

    /// Returns a slot's buffers.
    pub fn free_slot(&mut self, slot: BlkSlot) {
        self.drv.free(slot.buf)
    }

    /// Writes the header (and resets the status byte) of `slot`, then makes the standard chain
    /// available on queue `q` (not kicked): header, `data_len` bytes of data in the direction
    /// the type implies (none if 0), status. Returns the head index.
    #[allow(clippy::too_many_arguments)]
    pub fn submit_slot(
        &mut self,
        q: usize,
        slot: &BlkSlot,
        request_type: u32,
        sector: u64,
        data_len: u32,
        indirect: bool,
        token: u64,
    ) -> Result<u16> {
        if data_len > slot.data_cap {
            return Err(Error::InvalidChain("data longer than the slot"));
        }
        let hdr = RequestHeader {
            request_type,
            reserved: 0,
            sector,
        };
        let mem = self.drv.memory();
        mem.write_obj(hdr, slot.header_addr())?;
        mem.write_obj(STATUS_UNWRITTEN, slot.status_addr())?;
        let mut segs = Vec::with_capacity(3);
        segs.push(Segment::readable(slot.header_addr(), 16));
        if data_len > 0 {
            segs.push(Segment {
                addr: slot.data_addr(),
                len: data_len,
                device_writes: device_writes_data(request_type),
            });
        }
        segs.push(Segment::writable(slot.status_addr(), 1));
        self.drv.submit(q, &segs, indirect, token)
    }

    /// The status byte of `slot`.
    pub fn slot_status(&self, slot: &BlkSlot) -> Result<u8> {
        Ok(self.drv.memory().read_obj::<u8>(slot.status_addr())?)
    }

    /// Allocates and writes a request header (for forged chains built with
    /// [`Driver::submit_raw`]).
    pub fn new_header(&mut self, request_type: u32, sector: u64) -> Result<Buffer> {
        let buf = self.drv.alloc(16, 16)?;
        let hdr = RequestHeader {
            request_type,
            reserved: 0,
            sector,
        };
        self.drv.memory().write_obj(hdr, buf.addr)?;
        Ok(buf)
    }

    /// Allocates a status byte preset to [`STATUS_UNWRITTEN`] (for forged chains).
    pub fn new_status(&mut self) -> Result<Buffer> {
        let buf = self.drv.alloc(1, 1)?;
        self.drv.memory().write_obj(STATUS_UNWRITTEN, buf.addr)?;
        Ok(buf)
    }

    /// Sends one request on queue `q`, waits for it, and returns the device's answer (any
    /// status; the helpers below turn non-OK into errors). Synchronous: do not mix with
    /// [`submit_slot`](Self::submit_slot) requests in flight on the same queue (their
    /// completions would be taken for this one's and reported as a bad reply).
    pub fn execute(
        &mut self,
        q: usize,
        req: &BlkRequest<'_>,
        indirect: bool,
    ) -> Result<BlkResponse> {
        let out_len =
            u32::try_from(req.out.len()).map_err(|_| Error::InvalidChain("payload too long"))?;
        if out_len > 0 && req.in_len > 0 {
            return Err(Error::InvalidChain("a blk request has one data direction"));
        }
        let len = out_len.max(req.in_len);
        let slot = self.alloc_slot(len)?;
        let r = self.execute_in(q, &slot, req, len, indirect);
        // A request that never completed may still be read by the device: keep its memory.
        if !matches!(r, Err(Error::Timeout { .. })) {
            self.free_slot(slot);
        }
        r
    }

    fn execute_in(
        &mut self,
        q: usize,
        slot: &BlkSlot,
        req: &BlkRequest<'_>,
        len: u32,
        indirect: bool,
    ) -> Result<BlkResponse> {
        if !req.out.is_empty() {
            self.drv.write(slot.data_addr(), req.out)?;
        }
        let token = slot.buf.addr.0;
        self.submit_slot(q, slot, req.request_type, req.sector, len, indirect, token)?;
        self.drv.notify(q)?;
        let done: Completion = self.drv.wait(q, DEFAULT_TIMEOUT)?;
        if done.token != token {
            return Err(Error::BadReply(format!(
                "completion for token {:#x} while waiting for {token:#x}",
                done.token
            )));
        }
        let data = if req.in_len > 0 {
            self.drv.read(slot.data_addr(), req.in_len as usize)?
        } else {
            Vec::new()
        };
        Ok(BlkResponse {
            status: self.slot_status(slot)?,
            used_len: done.len,
            data,
        })
    }

    fn checked(&mut self, q: usize, req: &BlkRequest<'_>) -> Result<BlkResponse> {
        let r = self.execute(q, req, false)?;
        if r.status != VIRTIO_BLK_S_OK as u8 {
            return Err(Error::DeviceStatus { status: r.status });
        }
        Ok(r)
    }

    /// Reads `len` bytes at `sector`.
    pub fn read(&mut self, q: usize, sector: u64, len: u32) -> Result<Vec<u8>> {
        let req = BlkRequest {
            request_type: VIRTIO_BLK_T_IN,
            sector,
            out: &[],
            in_len: len,
        };
        Ok(self.checked(q, &req)?.data)
    }

    /// Writes `data` at `sector`.
    pub fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> Result<()> {
        let req = BlkRequest {
            request_type: VIRTIO_BLK_T_OUT,
            sector,
            out: data,
            in_len: 0,
        };
        self.checked(q, &req).map(|_| ())
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self, q: usize) -> Result<()> {
        let req = BlkRequest {
            request_type: VIRTIO_BLK_T_FLUSH,
            sector: 0,
            out: &[],
            in_len: 0,
        };
        self.checked(q, &req).map(|_| ())
    }

    fn segments_request(
        &mut self,
        q: usize,
        request_type: u32,
        segs: &[DiscardWriteZeroesSegment],
    ) -> Result<()> {
        let payload: Vec<u8> = segs.iter().flat_map(|s| s.as_slice().to_vec()).collect();
        let req = BlkRequest {
            request_type,
            sector: 0,
            out: &payload,
            in_len: 0,
        };
        self.checked(q, &req).map(|_| ())
    }

    /// Discards the given ranges.
    pub fn discard(&mut self, q: usize, segs: &[DiscardWriteZeroesSegment]) -> Result<()> {
        self.segments_request(q, VIRTIO_BLK_T_DISCARD, segs)
    }

    /// Zeroes the given ranges.
    pub fn write_zeroes(&mut self, q: usize, segs: &[DiscardWriteZeroesSegment]) -> Result<()> {
        self.segments_request(q, VIRTIO_BLK_T_WRITE_ZEROES, segs)
    }

    /// The device id string (up to 20 bytes, NUL padding stripped).
    pub fn get_id(&mut self, q: usize) -> Result<Vec<u8>> {
        let req = BlkRequest {
            request_type: VIRTIO_BLK_T_GET_ID,
            sector: 0,
            out: &[],
            in_len: VIRTIO_BLK_ID_BYTES,
        };
        let mut id = self.checked(q, &req)?.data;
        let end = id.iter().position(|&b| b == 0).unwrap_or(id.len());
        id.truncate(end);
        Ok(id)
    }
}
