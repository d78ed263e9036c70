//! Guest RAM: one file per memory backend (a memfd by default, or the `mem-path` file of
//! `memory-backend-file` / `-mem-path`), mapped MAP_SHARED (so vhost-user backends can map the
//! same pages through the fd sent in SET_MEM_TABLE), laid out by
//! [`crate::arch::layout::ram_ranges`] and registered with KVM.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use nix::sys::memfd::{MFdFlags, memfd_create};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

use crate::arch::layout::{RamRange, ram_ranges};
use crate::config::{MemoryBackendConfig, MemoryConfig, RamSource};

/// The guest memory type every part of accel shares.
pub type GuestMemMmap = GuestMemoryMmap<AtomicBitmap>;

const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest RAM has no backend")]
    NoBackend,
    #[error("creating memfd for guest RAM: {0}")]
    Memfd(nix::Error),
    #[error(
        "creating hugetlb memfd for {name}: {source} (is a huge page pool configured? see \
         /proc/sys/vm/nr_hugepages)"
    )]
    HugetlbMemfd { name: String, source: nix::Error },
    #[error("{name}: mem-path {path}: {source}")]
    File {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{name}: mem-path {path}: backing store size {len:#x} does not match 'size' option \
         {size:#x} (the file must hold at least 'size' bytes)"
    )]
    FileTooSmall {
        name: String,
        path: PathBuf,
        len: u64,
        size: u64,
    },
    #[error(
        "{name}: {what} {value:#x} is not a multiple of the huge page size {page:#x} of its \
         hugetlbfs memory"
    )]
    HugePageAlign {
        name: String,
        what: &'static str,
        value: u64,
        page: u64,
    },
    #[error("sizing {name} to {size} bytes: {source}")]
    Truncate {
        name: String,
        size: u64,
        source: std::io::Error,
    },
    #[error("duplicating the file of guest RAM: {0}")]
    Dup(std::io::Error),
    #[error("mapping {name}: {source}")]
    Map {
        name: String,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest RAM regions overlap or overflow")]
    Regions,
    #[error(
        "preallocating {name} ({size} bytes): {source} (not enough host memory or huge pages \
         for prealloc=on / -mem-prealloc)"
    )]
    Prealloc {
        name: String,
        size: u64,
        source: std::io::Error,
    },
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

/// One memory backend: its file and size.
#[derive(Debug)]
pub struct RamBackend {
    pub id: Option<String>,
    pub file: Arc<File>,
    pub size: u64,
    /// The host page size behind it (the huge page size on hugetlbfs).
    pub page_size: u64,
    pub readonly: bool,
}

/// Guest RAM: the mapped memory (shared with vhost-user backends through the regions' file
/// offsets, see `vhost::VhostUserMemoryRegionInfo::from_guest_region`) and the files behind it.
pub struct GuestRam {
    pub memory: GuestMemoryAtomic<GuestMemMmap>,
    pub backends: Vec<RamBackend>,
    pub ranges: Vec<RamRange>,
    /// Total RAM in bytes.
    pub size: u64,
}

impl GuestRam {
    /// Opens or creates the backends' files and maps them.
    pub fn new(config: &MemoryConfig) -> Result<Self, MemoryError> {
        if config.backends.is_empty() {
            return Err(MemoryError::NoBackend);
        }
        let mut backends = Vec::new();
        for (i, b) in config.backends.iter().enumerate() {
            backends.push(open_backend(i, b)?);
        }
        let sizes: Vec<u64> = backends.iter().map(|b| b.size).collect();
        let total = sizes.iter().fold(0u64, |a, &b| a.saturating_add(b));
        probe_address_space(total)?;
        let ranges = ram_ranges(&sizes);
        let mut regions = Vec::new();
        for r in &ranges {
            let backend = &backends[r.backend];
            let name = backend_name(r.backend, backend.id.as_deref());
            if r.offset % backend.page_size != 0 {
                // Only a split at the PCI hole makes a non-zero offset: huge pages cannot be
                // mapped from the middle of one.
                return Err(MemoryError::HugePageAlign {
                    name,
                    what: "offset of the part above 4 GiB",
                    value: r.offset,
                    page: backend.page_size,
                });
            }
            let file = backend.file.try_clone().map_err(MemoryError::Dup)?;
            let len = usize::try_from(r.size).map_err(|_| MemoryError::RegionSize(r.size))?;
            let (prot, mut flags) = if backend.readonly {
                (libc::PROT_READ, libc::MAP_SHARED)
            } else {
                (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
            };
            if backend.page_size == PAGE {
                // Huge page mappings keep their reservation: a pool too small for the guest
                // fails here, not with SIGBUS when the guest touches the missing page.
                flags |= libc::MAP_NORESERVE;
            }
            let mapping = MmapRegion::<AtomicBitmap>::build(
                Some(FileOffset::new(file, r.offset)),
                len,
                prot,
                flags,
            )
            .map_err(|source| MemoryError::Map {
                name: name.clone(),
                source,
            })?;
            if config.backends[r.backend].prealloc {
                prealloc(&mapping, backend.readonly).map_err(|source| MemoryError::Prealloc {
                    name,
                    size: r.size,
                    source,
                })?;
            }
            regions.push(
                GuestRegionMmap::new(mapping, GuestAddress(r.gpa)).ok_or(MemoryError::Regions)?,
            );
        }
        let mem = GuestMemMmap::from_regions(regions).map_err(|_| MemoryError::Regions)?;
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
        for (slot, (region, range)) in mem.iter().zip(&self.ranges).enumerate() {
            let slot = slot as u32;
            // A readonly=on file: guest writes exit to the VMM as MMIO (and are dropped there)
            // instead of reaching the read-only mapping.
            let flags = if self.backends[range.backend].readonly {
                KVM_MEM_READONLY
            } else {
                0
            };
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(MemoryError::HostAddress)?;
            let r = kvm_userspace_memory_region {
                slot,
                flags,
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

fn backend_name(index: usize, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("memory backend '{id}'"),
        None if index == 0 => "guest RAM".to_string(),
        None => format!("guest RAM backend {index}"),
    }
}

/// Creates the memfd or opens the file of one backend and checks its size against the host
/// page size behind it.
fn open_backend(index: usize, b: &MemoryBackendConfig) -> Result<RamBackend, MemoryError> {
    let name = backend_name(index, b.id.as_deref());
    let (file, readonly, path) = match &b.source {
        RamSource::Memfd { hugetlb } => (create_memfd(&name, *hugetlb)?, false, None),
        RamSource::File { path, readonly } => (
            open_file(&name, path, *readonly)?,
            *readonly,
            Some(path.as_path()),
        ),
    };
    let io_err = |source| MemoryError::File {
        name: name.clone(),
        path: path.map(Path::to_path_buf).unwrap_or_default(),
        source,
    };
    let page_size = host_page_size(&file).map_err(io_err)?;
    if !b.size.is_multiple_of(page_size) {
        return Err(MemoryError::HugePageAlign {
            name,
            what: "size",
            value: b.size,
            page: page_size,
        });
    }
    let meta = file.metadata().map_err(io_err)?;
    let len = meta.len();
    if meta.file_type().is_file() || path.is_none() {
        if len == 0 && !readonly {
            file.set_len(b.size)
                .map_err(|source| MemoryError::Truncate {
                    name: name.clone(),
                    size: b.size,
                    source,
                })?;
        } else if len < b.size {
            return Err(MemoryError::FileTooSmall {
                name,
                path: path.map(Path::to_path_buf).unwrap_or_default(),
                len,
                size: b.size,
            });
        }
    }
    Ok(RamBackend {
        id: b.id.clone(),
        file: Arc::new(file),
        size: b.size,
        page_size,
        readonly,
    })
}

/// An anonymous memfd; `hugetlb` is the huge page size (0: the host's default).
fn create_memfd(name: &str, hugetlb: Option<u64>) -> Result<File, MemoryError> {
    let mut flags = MFdFlags::MFD_CLOEXEC;
    if let Some(size) = hugetlb {
        flags |= MFdFlags::MFD_HUGETLB;
        if size != 0 {
            // MFD_HUGE_* encode log2(page size) at MFD_HUGE_SHIFT.
            flags |= MFdFlags::from_bits_retain(
                (size.trailing_zeros() as libc::c_uint) << libc::MFD_HUGE_SHIFT,
            );
        }
    }
    let memfd_name = format!("accel-{}", name.replace(' ', "-").replace('\'', ""));
    let fd = memfd_create(memfd_name.as_str(), flags).map_err(|source| match hugetlb {
        Some(_) => MemoryError::HugetlbMemfd {
            name: name.to_string(),
            source,
        },
        None => MemoryError::Memfd(source),
    })?;
    Ok(File::from(fd))
}

/// QEMU's `file_ram_open`: a directory gets a fresh file that is unlinked at once; a missing
/// file is created (and stays, as in QEMU); an existing file is used as it is.
fn open_file(name: &str, path: &Path, readonly: bool) -> Result<File, MemoryError> {
    let err = |source| MemoryError::File {
        name: name.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(!readonly);
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let template = path.join("accel_back_mem.XXXXXX");
            let (fd, file_path) =
                nix::unistd::mkstemp(&template).map_err(|e| err(std::io::Error::from(e)))?;
            // The fd keeps the memory alive; nothing else should find the file.
            std::fs::remove_file(&file_path).map_err(err)?;
            Ok(File::from(fd))
        }
        Ok(_) => options.open(path).map_err(err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !readonly => {
            options.create_new(true).open(path).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// The page size the kernel backs `file` with: the huge page size on hugetlbfs (hugetlb
/// memfds included), 4 KiB otherwise.
fn host_page_size(file: &File) -> std::io::Result<u64> {
    use nix::sys::statfs::{HUGETLBFS_MAGIC, fstatfs};
    let st = fstatfs(file).map_err(std::io::Error::from)?;
    if st.filesystem_type() == HUGETLBFS_MAGIC {
        Ok(st.block_size() as u64)
    } else {
        Ok(PAGE)
    }
}

/// Allocates every page of `mapping` now (QEMU's prealloc=on), so a host short of memory or
/// huge pages fails at startup rather than when the guest touches the page.
fn prealloc(mapping: &MmapRegion<AtomicBitmap>, readonly: bool) -> std::io::Result<()> {
    let advice = if readonly {
        libc::MADV_POPULATE_READ
    } else {
        libc::MADV_POPULATE_WRITE
    };
    // SAFETY: the range is exactly the live mapping owned by `mapping`; MADV_POPULATE_* only
    // faults pages in and never changes their contents.
    let rc = unsafe { libc::madvise(mapping.as_ptr().cast(), mapping.size(), advice) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    /// A fresh directory on tmpfs (/dev/shm), removed on drop.
    struct ShmDir(PathBuf);
    impl ShmDir {
        fn new(tag: &str) -> Self {
            let dir = PathBuf::from(format!(
                "/dev/shm/accel-mem-test-{tag}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            ShmDir(dir)
        }
    }
    impl Drop for ShmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file_config(path: &Path, size: u64, readonly: bool, prealloc: bool) -> MemoryConfig {
        MemoryConfig {
            size,
            backends: vec![MemoryBackendConfig {
                id: Some("mem".into()),
                size,
                share: true,
                source: RamSource::File {
                    path: path.to_path_buf(),
                    readonly,
                },
                prealloc,
            }],
        }
    }

    #[test]
    fn a_directory_gets_an_unlinked_file_shared_with_the_mapping() {
        let dir = ShmDir::new("dir");
        let ram = GuestRam::new(&file_config(&dir.0, 4 * MIB, false, false)).unwrap();
        // The file is gone from the directory but backs the mapping: what the guest writes
        // is what a vhost-user backend reads through the fd.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
        let mem = ram.memory.memory();
        mem.write_obj(0xdead_beef_u32, GuestAddress(MIB)).unwrap();
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        ram.backends[0].file.read_exact_at(&mut buf, MIB).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.backends[0].file.metadata().unwrap().len(), 4 * MIB);
        assert_eq!(ram.backends[0].page_size, PAGE);
        // Not preallocated: the file holds only the page written.
        assert!(ram.backends[0].file.metadata().unwrap().blocks() * 512 < MIB);
    }

    #[test]
    fn a_missing_file_is_created_and_kept_and_prealloc_allocates_every_page() {
        let dir = ShmDir::new("new");
        let path = dir.0.join("guest.ram");
        let ram = GuestRam::new(&file_config(&path, 8 * MIB, false, true)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 8 * MIB);
        // prealloc=on: tmpfs has allocated all 8 MiB before the guest ran.
        assert_eq!(meta.blocks() * 512, 8 * MIB);
        drop(ram);
        assert!(path.exists(), "QEMU keeps a mem-path file it created");
    }

    #[test]
    fn an_existing_file_keeps_its_data_and_must_be_large_enough() {
        let dir = ShmDir::new("existing");
        let path = dir.0.join("image");
        let mut data = vec![0u8; 2 * MIB as usize];
        data[4096..4100].copy_from_slice(b"PMEM");
        std::fs::write(&path, &data).unwrap();
        let ram = GuestRam::new(&file_config(&path, 2 * MIB, true, true)).unwrap();
        let mut buf = [0u8; 4];
        ram.memory
            .memory()
            .read_slice(&mut buf, GuestAddress(4096))
            .unwrap();
        assert_eq!(&buf, b"PMEM");
        assert!(ram.backends[0].readonly);
        drop(ram);
        let err = GuestRam::new(&file_config(&path, 4 * MIB, false, false))
            .err()
            .unwrap();
        assert!(
            matches!(err, MemoryError::FileTooSmall { len, size, .. } if len == 2 * MIB && size == 4 * MIB)
        );
        assert!(err.to_string().contains("does not match 'size'"), "{err}");
        // readonly=on cannot create a missing file.
        let err = GuestRam::new(&file_config(&dir.0.join("nope"), 2 * MIB, true, false))
            .err()
            .unwrap();
        assert!(matches!(err, MemoryError::File { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    /// hugetlbfs (a mount at /dev/hugepages with a pool of at least 2 huge pages): sizes
    /// must be multiples of the huge page size, the mapping reserves its huge pages (a pool too
    /// small fails at startup, not with SIGBUS later) and prealloc takes them. Skipped, saying
    /// so, where no hugetlbfs is mounted (this test host has none by default).
    #[test]
    fn hugetlbfs_backends_use_the_huge_page_size() {
        let dir = Path::new("/dev/hugepages");
        let Ok(st) = nix::sys::statfs::statfs(dir) else {
            eprintln!("skipped: no /dev/hugepages");
            return;
        };
        if st.filesystem_type() != nix::sys::statfs::HUGETLBFS_MAGIC {
            eprintln!("skipped: /dev/hugepages is not hugetlbfs");
            return;
        }
        let page = st.block_size() as u64;
        let err = GuestRam::new(&file_config(dir, page + PAGE, false, false))
            .err()
            .unwrap();
        assert!(
            matches!(err, MemoryError::HugePageAlign { page: p, .. } if p == page),
            "{err}"
        );
        let ram = GuestRam::new(&file_config(dir, 2 * page, false, true)).unwrap();
        assert_eq!(ram.backends[0].page_size, page);
        ram.memory
            .memory()
            .write_obj(7u64, GuestAddress(page))
            .unwrap();
        drop(ram);
        // Far more than any test pool: refused when mapping.
        let err = GuestRam::new(&file_config(dir, 1 << 40, false, false))
            .err()
            .unwrap();
        assert!(matches!(err, MemoryError::Map { .. }), "{err}");
    }

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
