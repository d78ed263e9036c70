//! The memory table a frontend shares with its backend, and guest-physical → frontend-virtual
//! address translation.
//!
//! vhost-user backends map every region of the memory table from its fd, and translate vring
//! addresses through the `userspace_addr` field: ring addresses in SET_VRING_ADDR are the
//! FRONTEND's virtual addresses. Descriptor buffer addresses, on the other hand, stay
//! guest-physical.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::bitmap::Bitmap;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::error::{Error, Result};

/// One region of the memory table as the backend sees it.
#[derive(Clone, Debug)]
pub struct SharedRegion {
    /// Guest-physical start address.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the region is mapped in this (frontend) process.
    pub frontend_va: u64,
    /// The backing file (memfd) and the region's offset in it; kept open for as long as the
    /// region is in the table (the fd is sent again on reconnect).
    pub file: FileOffset,
}

impl SharedRegion {
    /// The `vhost` crate's description of this region (borrows the fd, does not dup it).
    pub fn to_info(&self) -> VhostUserMemoryRegionInfo {
        use std::os::fd::AsRawFd;
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.gpa,
            memory_size: self.size,
            userspace_addr: self.frontend_va,
            mmap_offset: self.file.start(),
            mmap_handle: self.file.file().as_raw_fd(),
        }
    }

    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= self.gpa + self.size)
    }
}

/// Guest memory the session can share with a backend and read ring indices from.
///
/// Implemented for [`GuestMemoryMmap`] with any bitmap; the session keeps a (cheap,
/// reference-counted) clone so the mappings and fds outlive any reconnect.
pub trait SharedMemory: Send + Sync {
    /// The file-backed regions to put in the memory table.
    fn shared_regions(&self) -> Result<Vec<SharedRegion>>;
    /// Reads a little-endian `u16` at `gpa` (used to recover a ring's used index when the
    /// backend died before it could report its last avail index).
    fn load_u16(&self, gpa: GuestAddress) -> Option<u16>;
}

impl<B> SharedMemory for GuestMemoryMmap<B>
where
    B: Bitmap + Send + Sync + 'static,
{
    fn shared_regions(&self) -> Result<Vec<SharedRegion>> {
        self.iter()
            .map(|r| {
                let not_shareable = Error::RegionNotShareable {
                    gpa: r.start_addr().0,
                };
                let file = r.file_offset().ok_or(not_shareable)?;
                let info = VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| {
                    Error::RegionNotShareable {
                        gpa: r.start_addr().0,
                    }
                })?;
                Ok(SharedRegion {
                    gpa: info.guest_phys_addr,
                    size: info.memory_size,
                    frontend_va: info.userspace_addr,
                    // Keep the file itself (not just its fd number) for resending on reconnect.
                    file: FileOffset::from_arc(Arc::clone(file.arc()), info.mmap_offset),
                })
            })
            .collect()
    }

    fn load_u16(&self, gpa: GuestAddress) -> Option<u16> {
        self.load::<u16>(gpa, Ordering::Acquire)
            .ok()
            .map(u16::from_le)
    }
}

/// Translates the guest-physical range `gpa..gpa+len` into this process's virtual address,
/// requiring the whole range to lie in one region (a vring part must be contiguous in the
/// frontend's address space).
pub fn gpa_to_frontend_va<M: GuestMemoryBackend>(
    mem: &M,
    gpa: GuestAddress,
    len: u64,
) -> Result<u64> {
    let not_mapped = Error::AddressNotMapped { gpa: gpa.0, len };
    let (region, offset) = mem.to_region_addr(gpa).ok_or(not_mapped)?;
    let end = offset.0.checked_add(len);
    if end.is_none_or(|end| end > region.len()) {
        return Err(Error::AddressNotMapped { gpa: gpa.0, len });
    }
    region
        .get_host_address(offset)
        .map(|p| p as u64)
        .map_err(|_| Error::AddressNotMapped { gpa: gpa.0, len })
}

/// Translates through an already-built memory table (what the backend was told).
pub(crate) fn table_gpa_to_va(table: &[SharedRegion], gpa: u64, len: u64) -> Result<u64> {
    table
        .iter()
        .find(|r| r.contains(gpa, len))
        .map(|r| r.frontend_va + (gpa - r.gpa))
        .ok_or(Error::AddressNotMapped { gpa, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd_mem(base: u64, size: usize) -> GuestMemoryMmap {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        let file = std::fs::File::from(fd);
        file.set_len(size as u64).expect("ftruncate");
        GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(base),
            size,
            Some(FileOffset::new(file, 0)),
        )])
        .expect("mmap")
    }

    #[test]
    fn translates_inside_one_region_only() {
        let mem = memfd_mem(0x10_0000, 0x4000);
        let va = gpa_to_frontend_va(&mem, GuestAddress(0x10_1000), 0x100).expect("va");
        let base = mem.get_host_address(GuestAddress(0x10_0000)).expect("base") as u64;
        assert_eq!(va, base + 0x1000);
        assert!(gpa_to_frontend_va(&mem, GuestAddress(0x10_3f00), 0x200).is_err());
        assert!(gpa_to_frontend_va(&mem, GuestAddress(0xf_0000), 0x10).is_err());

        let table = mem.shared_regions().expect("regions");
        assert_eq!(table.len(), 1);
        assert_eq!(table_gpa_to_va(&table, 0x10_1000, 0x100).expect("va"), va);
        assert!(table_gpa_to_va(&table, 0x10_3f00, 0x200).is_err());
        assert_eq!(table[0].to_info().memory_size, 0x4000);
    }

    #[test]
    fn anonymous_memory_is_not_shareable() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).expect("mmap");
        assert!(matches!(
            mem.shared_regions(),
            Err(Error::RegionNotShareable { gpa: 0 })
        ));
    }
}
