//! The backing store: a raw image file or a block device, accessed with positioned vectored
//! system calls straight into guest buffers (no bounce copies).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vu_spec::blk::{SECTOR_SIZE, VIRTIO_BLK_ID_BYTES};

/// `_IO(0x12, 119)`: discard a byte range of a block device.
pub(crate) const BLKDISCARD: libc::c_ulong = 0x1277;
/// `_IO(0x12, 127)`: zero a byte range of a block device.
pub(crate) const BLKZEROOUT: libc::c_ulong = 0x127f;
/// The kernel's limit on iovecs per preadv/pwritev call.
const IOV_MAX: usize = 1024;

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open image {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("image {path}: {source}")]
    Size { path: PathBuf, source: io::Error },
    #[error("image {0}: not a regular file or block device")]
    NotAFileOrBlockDevice(PathBuf),
}

/// An open image shared by every queue of every connection.
#[derive(Debug)]
pub struct Disk {
    file: File,
    sectors: u64,
    read_only: bool,
    direct: bool,
    block_device: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

impl Disk {
    /// Opens `path` (read-only or read-write, with O_DIRECT if `direct`); `serial` is the
    /// GET_ID answer (truncated to 20 bytes).
    pub fn open(
        path: &Path,
        read_only: bool,
        direct: bool,
        serial: &str,
    ) -> Result<Self, DiskError> {
        let mut flags = libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(flags)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| DiskError::Size {
            path: path.to_path_buf(),
            source,
        })?;
        let ft = meta.file_type();
        let block_device = ft.is_block_device();
        let bytes = if block_device {
            file.seek(SeekFrom::End(0))
                .map_err(|source| DiskError::Size {
                    path: path.to_path_buf(),
                    source,
                })?
        } else if ft.is_file() {
            meta.len()
        } else {
            return Err(DiskError::NotAFileOrBlockDevice(path.to_path_buf()));
        };
        if bytes % SECTOR_SIZE != 0 {
            vu_daemon::log_limited!(
                log::Level::Warn,
                "image {}: size {bytes} is not a multiple of {SECTOR_SIZE}; the tail is not visible",
                path.display()
            );
        }
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Disk {
            file,
            sectors: bytes / SECTOR_SIZE,
            read_only,
            direct,
            block_device,
            id,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Opened with O_DIRECT (no host page cache).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The GET_ID answer (serial, zero padded).
    pub fn id(&self) -> &[u8; VIRTIO_BLK_ID_BYTES as usize] {
        &self.id
    }

    /// Whether `[sector, sector + sectors)` lies inside the disk.
    pub fn contains(&self, sector: u64, sectors: u64) -> bool {
        sector
            .checked_add(sectors)
            .is_some_and(|end| end <= self.sectors)
    }

    /// Reads into (`write == false`) or writes from the buffers `iovs` describe, at byte
    /// `offset`, until all of them are done. Consumes `iovs` (partially done entries are
    /// advanced in place).
    ///
    /// # Safety
    /// Every iovec must describe memory that is mapped and (for reads) writable for the whole
    /// call.
    pub unsafe fn transfer(
        &self,
        iovs: &mut [libc::iovec],
        mut offset: u64,
        write: bool,
    ) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let mut start = 0;
        while start < iovs.len() {
            if iovs[start].iov_len == 0 {
                start += 1;
                continue;
            }
            let end = (start + IOV_MAX).min(iovs.len());
            let chunk = &iovs[start..end];
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: the iovecs point at mapped memory (the caller's contract) and the count
            // is at most IOV_MAX.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, chunk.as_ptr(), chunk.len() as libc::c_int, off)
                } else {
                    libc::preadv(fd, chunk.as_ptr(), chunk.len() as libc::c_int, off)
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "image ended early",
                ));
            }
            let mut done = n as usize;
            offset += done as u64;
            while done > 0 {
                let iov = &mut iovs[start];
                if done >= iov.iov_len {
                    done -= iov.iov_len;
                    iov.iov_len = 0;
                    start += 1;
                } else {
                    // SAFETY: advancing inside the same buffer, `done < iov_len`.
                    iov.iov_base =
                        unsafe { (iov.iov_base as *mut u8).add(done) } as *mut libc::c_void;
                    iov.iov_len -= done;
                    done = 0;
                }
            }
        }
        Ok(())
    }

    /// Makes every completed write durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates a byte range (advisory: unsupported by the store is not an error).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let r = if self.block_device {
            self.block_range_ioctl(BLKDISCARD, offset, len)
        } else {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    /// Makes a byte range read back as zeros; `unmap` allows deallocating it.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let r = if self.block_device {
            self.block_range_ioctl(BLKZEROOUT, offset, len)
        } else if unmap {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        } else {
            self.fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zero_buffers(offset, len)
            }
            r => r,
        }
    }

    fn write_zero_buffers(&self, mut offset: u64, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let inval = || io::Error::from_raw_os_error(libc::EINVAL);
        let off = libc::off_t::try_from(offset).map_err(|_| inval())?;
        let len = libc::off_t::try_from(len).map_err(|_| inval())?;
        // SAFETY: fallocate on our own open fd; no memory is passed.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn block_range_ioctl(&self, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD/BLKZEROOUT read a `u64[2]` we own for the duration of the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, range.as_ptr()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
