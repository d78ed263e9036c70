//! Direct Linux boot: load the kernel (PVH ELF or bzImage, detected from the file), the initrd
//! and the command line into guest memory and write the boot information (PVH
//! `hvm_start_info` or the Linux zero page), using linux-loader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, E820Entry, HIGH_MEMORY_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START, e820_map, ram_split,
};
use super::regs::BootMode;
use crate::config::BootConfig;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("could not open kernel '{path}': {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not open initrd '{path}': {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not read initrd '{path}': {source}")]
    ReadInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("'{path}' is not a Linux kernel image (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel { path: PathBuf },
    #[error("loading kernel '{path}': {source}")]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error(
        "initrd '{path}' ({size} bytes) does not fit in guest RAM below {max:#x} after the kernel"
    )]
    InitrdTooBig { path: PathBuf, size: u64, max: u64 },
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("writing {what} to guest memory: {msg}")]
    Write { what: &'static str, msg: String },
}

/// Where and how the boot CPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub mode: BootMode,
    /// RIP.
    pub entry: u64,
    /// EBX (PVH start info) or RSI (zero page).
    pub boot_info: u64,
}

/// The kernel file formats accel boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Recognises an ELF (`\x7fELF`) or a bzImage (`HdrS` at 0x202) from the file's first bytes.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

fn write_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> BootError {
    move |e| BootError::Write {
        what,
        msg: e.to_string(),
    }
}

/// Loads kernel, initrd and command line and writes the boot information for `ram_size` bytes
/// of guest RAM. Called at start and again on every guest reboot.
pub fn load_boot<M: GuestMemoryBackend>(
    mem: &M,
    boot: &BootConfig,
    ram_size: u64,
) -> Result<BootEntry, BootError> {
    let kpath = &boot.kernel;
    let mut kernel = File::open(kpath).map_err(|source| BootError::OpenKernel {
        path: kpath.clone(),
        source,
    })?;
    let mut head = vec![0u8; 0x210];
    let n = read_up_to(&mut kernel, &mut head).map_err(|source| BootError::OpenKernel {
        path: kpath.clone(),
        source,
    })?;
    head.truncate(n);
    let format = detect_format(&head).ok_or_else(|| BootError::NotAKernel {
        path: kpath.clone(),
    })?;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|source| BootError::OpenKernel {
            path: kpath.clone(),
            source,
        })?;
    let load_err = |source| BootError::LoadKernel {
        path: kpath.clone(),
        source,
    };
    let highmem = Some(GuestAddress(HIGH_MEMORY_START));
    let loaded = match format {
        // The ELF class byte picks the loader: linux-loader parses ELF64 headers only, 32-bit
        // PVH kernels (QEMU loads both) go to accel's own.
        KernelFormat::Elf if crate::loader::elf32::is_elf32(&head) => {
            crate::loader::elf32::load(mem, &mut kernel, highmem).map_err(load_err)?
        }
        KernelFormat::Elf => Elf::load(mem, None, &mut kernel, highmem).map_err(load_err)?,
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut kernel, highmem).map_err(load_err)?
        }
    };
    log::debug!(
        "kernel {} ({format:?}) loaded at {:#x}..{:#x}, {}",
        kpath.display(),
        loaded.kernel_load.raw_value(),
        loaded.kernel_end,
        loaded.pvh_boot_cap
    );

    let cmdline_max = match (format, loaded.setup_header) {
        (KernelFormat::BzImage, Some(h)) if h.version >= 0x206 => {
            (h.cmdline_size as usize).min(CMDLINE_MAX_SIZE)
        }
        (KernelFormat::BzImage, _) => 255,
        _ => CMDLINE_MAX_SIZE,
    };
    let cmdline_len = write_cmdline(mem, &boot.cmdline, cmdline_max)?;

    let initrd_max = match (format, loaded.setup_header) {
        (KernelFormat::BzImage, Some(h)) if h.version >= 0x203 => u64::from(h.initrd_addr_max),
        (KernelFormat::BzImage, _) => 0x37ff_ffff,
        _ => u64::from(u32::MAX),
    };
    let initrd = match &boot.initrd {
        Some(p) => Some(load_initrd(mem, p, &loaded, ram_size, initrd_max)?),
        None => None,
    };
    let e820 = e820_map(ram_size);

    match (format, loaded.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(entry)) => {
            write_pvh_info(mem, &e820, initrd)?;
            Ok(BootEntry {
                mode: BootMode::Pvh,
                entry: entry.raw_value(),
                boot_info: PVH_INFO_START,
            })
        }
        _ => {
            write_zero_page(mem, &loaded, &e820, initrd, cmdline_len)?;
            // bzImage: the 64-bit entry is 0x200 past the protected-mode kernel start; a
            // vmlinux without a PVH note is entered at its ELF entry point.
            let entry = match format {
                KernelFormat::BzImage => loaded.kernel_load.raw_value() + 0x200,
                KernelFormat::Elf => loaded.kernel_load.raw_value(),
            };
            Ok(BootEntry {
                mode: BootMode::Linux64,
                entry,
                boot_info: ZERO_PAGE_START,
            })
        }
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &str,
    max: usize,
) -> Result<usize, BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(write_err("command line"))?;
    Ok(cmdline.len())
}

/// Places the initrd at the top of low RAM (page aligned, below `initrd_max`), above the kernel.
fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    loaded: &KernelLoaderResult,
    ram_size: u64,
    initrd_max: u64,
) -> Result<(u64, u64), BootError> {
    let mut f = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = f
        .metadata()
        .map_err(|source| BootError::ReadInitrd {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let (low_ram, _) = ram_split(ram_size);
    let top = low_ram.min(initrd_max.saturating_add(1));
    let too_big = || BootError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        max: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < loaded.kernel_end.max(HIGH_MEMORY_START) {
        return Err(too_big());
    }
    let size_usize = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size_usize)
        .map_err(|e| BootError::ReadInitrd {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    log::debug!("initrd {} at {addr:#x}, {size} bytes", path.display());
    Ok((addr, size))
}

fn write_pvh_info<M: GuestMemoryBackend>(
    mem: &M,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut info = hvm_start_info {
        magic: 0x336e_c578, // XEN_HVM_START_MAGIC_VALUE
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: addr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<M>(&params, mem).map_err(|e| BootError::Write {
        what: "PVH start info",
        msg: e.to_string(),
    })
}

/// Builds the Linux zero page (boot_params) for the 64-bit boot protocol.
pub fn build_zero_page(
    loaded: &KernelLoaderResult,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
    cmdline_len: usize,
) -> boot_params {
    let mut params = boot_params::default();
    let mut hdr = loaded.setup_header.unwrap_or_default();
    if loaded.setup_header.is_none() {
        // vmlinux entered at its 64-bit entry: a minimal header.
        hdr.boot_flag = 0xaa55;
        hdr.header = 0x5372_6448;
        hdr.kernel_alignment = 0x0100_0000;
    }
    hdr.type_of_loader = 0xff;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    params.hdr = hdr;
    let n = e820.len().min(params.e820_table.len());
    for (i, e) in e820.iter().take(n).enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = n as u8;
    params
}

fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    loaded: &KernelLoaderResult,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let params = build_zero_page(loaded, e820, initrd, cmdline_len);
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<M>(&bp, mem).map_err(|e| BootError::Write {
        what: "zero page",
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"garbage"), None);
        assert_eq!(detect_format(&[0u8; 0x300]), None);
    }

    #[test]
    fn zero_page_has_e820_cmdline_and_initrd() {
        let loaded = KernelLoaderResult {
            setup_header: Some(Default::default()),
            ..Default::default()
        };
        let e820 = e820_map(128 << 20);
        let p = build_zero_page(&loaded, &e820, Some((0x7f0_0000, 0x1234)), 10);
        let hdr = p.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 11);
        assert_eq!({ hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!(p.e820_entries, 3);
        let e2 = p.e820_table[2];
        assert_eq!(
            ({ e2.addr }, { e2.size }, { e2.r#type }),
            (0x10_0000, (127 << 20), 1)
        );
    }
}
