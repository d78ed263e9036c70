//! Guest RAM: one memfd per memory backend, mapped MAP_SHARED (so vhost-user backends can map
//! the same pages), laid out by [`crate::arch::layout::ram_ranges`] and registered with KVM.

use std::fs::File;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use nix::sys::memfd::{MFdFlags, memfd_create};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::layout::{RamRange, ram_ranges};
use crate::config::MemoryConfig;

/// The guest memory type every part of accel shares.
pub type GuestMemMmap = GuestMemoryMmap<AtomicBitmap>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest RAM has no backend")]
    NoBackend,
    #[error("hugetlb memory backends are not supported")]
    Hugetlb,
    #[error("creating memfd for guest RAM: {0}")]
    Memfd(nix::Error),
    #[error("sizing memfd to {size} bytes: {source}")]
    Truncate { size: u64, source: nix::Error },
    #[error("duplicating memfd: {0}")]
    Dup(std::io::Error),
    #[error("mapping guest RAM: {0}")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("a guest RAM region of {0} bytes does not fit this host's address space")]
    RegionSize(u64),
    #[error("host address of guest RAM: {0}")]
    HostAddress(#[source] vm_memory::GuestMemoryError),
    /// What QEMU says when the host cannot map that much RAM.
    #[error("cannot set up guest memory 'pc.ram': Cannot allocate memory ({size} bytes requested)")]
    TooLarge { size: u64 },
    #[error(
        "guest RAM ends at {end:#x}, beyond the {bits}-bit guest physical address space this \
         host's KVM supports: use a smaller -m"
    )]
    PhysBits { end: u64, bits: u8 },
    #[error("registering guest RAM slot {slot} with KVM: {source}")]
    KvmSlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// One memory backend: its memfd and size.
#[derive(Debug)]
pub struct RamBackend {
    pub id: Option<String>,
    pub file: Arc<File>,
    pub size: u64,
}

/// Guest RAM: the mapped memory (shared with vhost-user backends through the regions' file
/// offsets, see `vhost::VhostUserMemoryRegionInfo::from_guest_region`) and the memfds behind it.
pub struct GuestRam {
    pub memory: GuestMemoryAtomic<GuestMemMmap>,
    pub backends: Vec<RamBackend>,
    pub ranges: Vec<RamRange>,
    /// Total RAM in bytes.
    pub size: u64,
}

impl GuestRam {
    /// Creates the memfds and maps them.
    pub fn new(config: &MemoryConfig) -> Result<Self, MemoryError> {
        if config.backends.is_empty() {
            return Err(MemoryError::NoBackend);
        }
        let mut backends = Vec::new();
        for (i, b) in config.backends.iter().enumerate() {
            if b.hugetlb {
                return Err(MemoryError::Hugetlb);
            }
            let name = format!("accel-ram{i}");
            let fd =
                memfd_create(name.as_str(), MFdFlags::MFD_CLOEXEC).map_err(MemoryError::Memfd)?;
            let len = i64::try_from(b.size).map_err(|_| MemoryError::Truncate {
                size: b.size,
                source: nix::Error::EINVAL,
            })?;
            nix::unistd::ftruncate(&fd, len).map_err(|source| MemoryError::Truncate {
                size: b.size,
                source,
            })?;
            backends.push(RamBackend {
                id: b.id.clone(),
                file: Arc::new(File::from(fd)),
                size: b.size,
            });
        }
        let sizes: Vec<u64> = backends.iter().map(|b| b.size).collect();
        let total = sizes.iter().fold(0u64, |a, &b| a.saturating_add(b));
        probe_address_space(total)?;
        let ranges = ram_ranges(&sizes);
        let mut regions = Vec::new();
        for r in &ranges {
            let file = backends[r.backend]
                .file
                .try_clone()
                .map_err(MemoryError::Dup)?;
            let len = usize::try_from(r.size).map_err(|_| MemoryError::RegionSize(r.size))?;
            regions.push((
                GuestAddress(r.gpa),
                len,
                Some(FileOffset::new(file, r.offset)),
            ));
        }
        let mem = GuestMemMmap::from_ranges_with_files(&regions).map_err(MemoryError::Map)?;
        Ok(GuestRam {
            memory: GuestMemoryAtomic::new(mem),
            backends,
            ranges,
            size: sizes.iter().sum(),
        })
    }

    /// Fails if guest RAM reaches beyond `phys_bits` of guest-physical address space (the
    /// width the vCPUs' CPUID leaf 0x8000_0008 reports).
    pub fn check_phys_bits(&self, phys_bits: u8) -> Result<(), MemoryError> {
        let end = self
            .ranges
            .iter()
            .map(|r| r.gpa + r.size)
            .max()
            .unwrap_or(0);
        if phys_bits < 64 && end > 1u64 << phys_bits {
            return Err(MemoryError::PhysBits {
                end,
                bits: phys_bits,
            });
        }
        Ok(())
    }

    /// Registers every region as a KVM memory slot (slots 0..n).
    pub fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        let mem = self.memory.memory();
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(MemoryError::HostAddress)?;
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `self.memory`, which outlives the VM
            // (it is dropped after the VmFd in `Vm`), and its size is exactly `memory_size`.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|source| MemoryError::KvmSlot { slot, source })?;
        }
        Ok(())
    }
}

/// Refuses a RAM size the host cannot map before anything sized by it is allocated (vm-memory's
/// dirty bitmap alone is 1/32768 of it, and an allocation failure there aborts the process):
/// reserves that much address space without backing and gives it back.
fn probe_address_space(size: u64) -> Result<(), MemoryError> {
    let too_large = || MemoryError::TooLarge { size };
    let len = usize::try_from(size)
        .ok()
        .and_then(std::num::NonZeroUsize::new)
        .ok_or_else(too_large)?;
    use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
    // SAFETY: a fresh PROT_NONE reservation at an address the kernel picks: it aliases nothing
    // and is unmapped right below without ever being accessed.
    let addr = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_NONE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
        )
    }
    .map_err(|_| too_large())?;
    // SAFETY: `addr`/`len` is exactly the reservation made above, used by nothing else.
    if let Err(e) = unsafe { munmap(addr, len.get()) } {
        log::warn!("releasing the guest RAM address-space probe: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_space_probe_refuses_what_cannot_be_mapped() {
        assert!(probe_address_space(1 << 20).is_ok());
        // 16 PiB: more than any x86-64 user address space (128 TiB, or 64 PiB with LA57).
        let huge = 16u64 << 50;
        let err = probe_address_space(huge).unwrap_err();
        assert!(matches!(err, MemoryError::TooLarge { size } if size == huge));
        assert!(err.to_string().starts_with("cannot set up guest memory"));
        assert!(probe_address_space(u64::MAX).is_err());
    }
}
