//! virtio-blk requests (virtio 1.2 §5.2.6): parse one descriptor chain, execute it against the
//! [`Disk`], write the status byte. Every guest mistake ends as a status (IOERR/UNSUPP) and a log
//! line; nothing here panics or touches memory outside guest RAM.

use std::io;

use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vu_spec::blk::{
    RequestHeader, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

use super::disk::Disk;

#[cfg(test)]
mod tests;

/// Guest memory as the backend maps it.
pub type Mem = GuestMemoryMmap<()>;

/// Most segments one DISCARD / WRITE_ZEROES request may carry (config `max_*_seg`).
pub const MAX_SEGMENTS: u32 = 32;
/// Most sectors one DISCARD segment may cover (config `max_discard_sectors`).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most sectors one WRITE_ZEROES segment may cover (config `max_write_zeroes_sectors`).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
/// Size of one DISCARD / WRITE_ZEROES segment on the wire.
const SEGMENT_SIZE: usize = 16;

/// Why a request failed; [`RequestError::status`] is what the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain loops or runs off its table")]
    BrokenChain,
    #[error("descriptor chain too short ({0} descriptors)")]
    TooShort(usize),
    #[error("header descriptor is device-writable or shorter than 16 bytes")]
    BadHeader,
    #[error("buffer at {0:#x} is outside guest memory")]
    OutsideGuestMemory(u64),
    #[error("device-readable buffer where the device must write (or the reverse)")]
    WrongDirection,
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sectors {sector}..+{sectors} beyond the end ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("write to a read-only device")]
    ReadOnly,
    #[error("request type {0} not supported")]
    Unsupported(u32),
    #[error("segment flags {0:#x} not supported")]
    SegmentFlags(u32),
    #[error("bad segment list ({0} bytes)")]
    BadSegments(usize),
    #[error("segment of {0} sectors is larger than the advertised maximum")]
    SegmentTooLarge(u32),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The virtio-blk status byte for this failure.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::SegmentFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// Per-connection knobs a request depends on.
#[derive(Clone, Copy, Debug)]
pub struct RequestOptions {
    /// Write-through cache mode (config `writeback == 0`): every write is followed by fdatasync.
    pub writethrough: bool,
}

/// Executes the request in `chain` and writes its status byte. Returns the number of bytes
/// written into device-writable buffers (the used length), 0 if there was no place for a status.
pub fn handle_chain<M: std::ops::Deref<Target = Mem>>(
    chain: DescriptorChain<M>,
    mem: &Mem,
    disk: &Disk,
    opts: RequestOptions,
) -> u32 {
    let head = chain.head_index();
    handle_descs(head, &chain.collect::<Vec<_>>(), mem, disk, opts)
}

/// [`handle_chain`] for a chain already read (`descs`, starting at descriptor `head`).
pub fn handle_descs(
    head: u16,
    descs: &[Descriptor],
    mem: &Mem,
    disk: &Disk,
    opts: RequestOptions,
) -> u32 {
    let Some(last) = descs.last() else {
        vu_daemon::log_limited!(
            log::Level::Warn,
            "request {head}: empty or unreadable descriptor chain"
        );
        return 0;
    };
    if !last.is_write_only() || last.len() == 0 {
        vu_daemon::log_limited!(
            log::Level::Warn,
            "request {head}: no device-writable status descriptor; dropped without status"
        );
        return 0;
    }
    let status_addr = last.addr();
    let result = if last.has_next() {
        Err(RequestError::BrokenChain)
    } else if descs.len() < 2 {
        Err(RequestError::TooShort(descs.len()))
    } else {
        execute(mem, &descs[0], &descs[1..descs.len() - 1], disk, opts)
    };
    let (status, written) = match result {
        Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
        Err(e) => {
            vu_daemon::log_limited!(log::Level::Warn, "request {head}: {e}");
            (e.status(), 0)
        }
    };
    if mem.write_obj(status, status_addr).is_err() {
        vu_daemon::log_limited!(
            log::Level::Warn,
            "request {head}: status byte at {:#x} is outside guest memory",
            status_addr.0
        );
        return 0;
    }
    written.saturating_add(1)
}

/// Runs one request; returns the data bytes written into guest buffers.
fn execute(
    mem: &Mem,
    header: &Descriptor,
    data: &[Descriptor],
    disk: &Disk,
    opts: RequestOptions,
) -> Result<u32, RequestError> {
    if header.is_write_only() || (header.len() as usize) < std::mem::size_of::<RequestHeader>() {
        return Err(RequestError::BadHeader);
    }
    let hdr: RequestHeader = mem
        .read_obj(header.addr())
        .map_err(|_| RequestError::OutsideGuestMemory(header.addr().0))?;
    let request_type = u32::from_le(hdr.request_type);
    let sector = u64::from_le(hdr.sector);
    match request_type {
        VIRTIO_BLK_T_IN => rw(mem, data, disk, sector, false),
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            rw(mem, data, disk, sector, true)?;
            if opts.writethrough {
                disk.flush()?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            disk.flush()?;
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => get_id(mem, data, disk),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            discard_or_zero(mem, data, disk, request_type == VIRTIO_BLK_T_DISCARD)?;
            if opts.writethrough {
                disk.flush()?;
            }
            Ok(0)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// IN (`write == false`: device writes guest buffers) or OUT, straight between the image and
/// guest memory.
fn rw(
    mem: &Mem,
    data: &[Descriptor],
    disk: &Disk,
    sector: u64,
    write: bool,
) -> Result<u32, RequestError> {
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(data.len());
    let mut total: u64 = 0;
    for d in data {
        // OUT needs device-readable buffers, IN device-writable ones.
        if d.is_write_only() == write {
            return Err(RequestError::WrongDirection);
        }
        for slice in mem.get_slices(d.addr(), d.len() as usize) {
            let slice = slice.map_err(|_| RequestError::OutsideGuestMemory(d.addr().0))?;
            if !write {
                slice.bitmap().mark_dirty(0, slice.len());
            }
            iovs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        total += u64::from(d.len());
    }
    if !total.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned(total));
    }
    let sectors = total / SECTOR_SIZE;
    if !disk.contains(sector, sectors) {
        return Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity: disk.sectors(),
        });
    }
    // SAFETY: every iovec came from a VolatileSlice of `mem`, whose regions stay mapped while
    // `mem` (borrowed for this whole call) is alive; IN buffers were checked device-writable.
    unsafe { disk.transfer(&mut iovs, sector * SECTOR_SIZE, write)? };
    // A chain's total length fits in u32 (virtio-queue stops longer chains).
    Ok(if write {
        0
    } else {
        u32::try_from(total).unwrap_or(u32::MAX)
    })
}

/// GET_ID: the serial, zero padded, up to 20 bytes into the device-writable buffers.
fn get_id(mem: &Mem, data: &[Descriptor], disk: &Disk) -> Result<u32, RequestError> {
    let id = disk.id();
    let mut done = 0usize;
    for d in data {
        if !d.is_write_only() {
            return Err(RequestError::WrongDirection);
        }
        let n = (d.len() as usize).min(id.len() - done);
        if n == 0 {
            continue;
        }
        mem.write_slice(&id[done..done + n], d.addr())
            .map_err(|_| RequestError::OutsideGuestMemory(d.addr().0))?;
        done += n;
    }
    Ok(done as u32)
}

fn discard_or_zero(
    mem: &Mem,
    data: &[Descriptor],
    disk: &Disk,
    discard: bool,
) -> Result<(), RequestError> {
    let max_bytes = MAX_SEGMENTS as usize * SEGMENT_SIZE;
    let mut buf = Vec::new();
    for d in data {
        if d.is_write_only() {
            return Err(RequestError::WrongDirection);
        }
        let len = d.len() as usize;
        if buf.len() + len > max_bytes {
            return Err(RequestError::BadSegments(buf.len() + len));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        mem.read_slice(&mut buf[start..], d.addr())
            .map_err(|_| RequestError::OutsideGuestMemory(d.addr().0))?;
    }
    if buf.is_empty() || !buf.len().is_multiple_of(SEGMENT_SIZE) {
        return Err(RequestError::BadSegments(buf.len()));
    }
    let max_sectors = if discard {
        MAX_DISCARD_SECTORS
    } else {
        MAX_WRITE_ZEROES_SECTORS
    };
    // Validate every segment before touching the disk.
    let segments: Vec<(u64, u32, u32)> = buf
        .chunks_exact(SEGMENT_SIZE)
        .map(|s| {
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&s[0..8]);
            let mut num = [0u8; 4];
            num.copy_from_slice(&s[8..12]);
            let mut flags = [0u8; 4];
            flags.copy_from_slice(&s[12..16]);
            (
                u64::from_le_bytes(sector),
                u32::from_le_bytes(num),
                u32::from_le_bytes(flags),
            )
        })
        .collect();
    for &(sector, sectors, flags) in &segments {
        let allowed = if discard {
            0
        } else {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        };
        if flags & !allowed != 0 {
            return Err(RequestError::SegmentFlags(flags));
        }
        if sectors > max_sectors {
            return Err(RequestError::SegmentTooLarge(sectors));
        }
        if !disk.contains(sector, u64::from(sectors)) {
            return Err(RequestError::OutOfRange {
                sector,
                sectors: u64::from(sectors),
                capacity: disk.sectors(),
            });
        }
    }
    for (sector, sectors, flags) in segments {
        let (off, len) = (sector * SECTOR_SIZE, u64::from(sectors) * SECTOR_SIZE);
        if len == 0 {
            continue;
        }
        if discard {
            disk.discard(off, len)?;
        } else {
            disk.write_zeroes(off, len, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)?;
        }
    }
    Ok(())
}
