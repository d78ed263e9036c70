//! Guest RAM: `-m`, `-object memory-backend-memfd|memory-backend-file`, `-mem-path`,
//! `-mem-prealloc`, `-numa node,memdev=` and `-machine memory-backend=`, resolved the way
//! QEMU 7.2 does.

use super::CliError;
use super::props::Props;
use super::values::{self, BadValue};
use std::path::PathBuf;

use crate::config::{MemoryBackendConfig, MemoryConfig, RamSource};

const MIB: u64 = 1 << 20;
/// QEMU's default RAM size for x86 machines.
pub(super) const DEFAULT_RAM: u64 = 128 * MIB;
/// Backends are mapped into KVM memory slots: page granularity.
const PAGE: u64 = 4096;

pub(super) const MEM_PROPS: &[&str] = &["size", "slots", "maxmem"];
pub(super) const MEMFD_PROPS: &[&str] = &[
    "qom-type (memory-backend-memfd)",
    "id",
    "size",
    "share",
    "hugetlb",
    "hugetlbsize",
    "prealloc",
    "prealloc-threads (ignored)",
    "seal (ignored)",
    "merge (ignored)",
    "dump (ignored)",
];
pub(super) const FILE_PROPS: &[&str] = &[
    "qom-type (memory-backend-file)",
    "id",
    "size",
    "mem-path",
    "share",
    "readonly",
    "prealloc",
    "prealloc-threads (ignored)",
    "align (ignored)",
    "discard-data (ignored)",
    "merge (ignored)",
    "dump (ignored)",
];
pub(super) const NUMA_PROPS: &[&str] = &["type (node)", "memdev", "nodeid"];

/// `-m [size=]SIZE`: a number without suffix is MiB (QEMU's legacy rule), `0` means the
/// default, and the result is rounded up to 8 KiB like QEMU. `None` when no size is given.
pub(super) fn parse_mem(mut props: Props) -> Result<Option<u64>, CliError> {
    let size = match props.take("size") {
        None => None,
        Some(raw) => {
            if raw.is_empty() {
                return Err(props.invalid("size", &raw, values::SIZE_SYNTAX));
            }
            let legacy_mib = raw.ends_with(|c: char| c.is_ascii_digit());
            let bytes = values::parse_size(&raw, 1)
                .and_then(|b| {
                    if legacy_mib {
                        b.checked_mul(MIB).ok_or(BadValue(values::SIZE_SYNTAX))
                    } else {
                        Ok(b)
                    }
                })
                .map_err(|BadValue(e)| props.invalid("size", &raw, e))?;
            let bytes = if bytes == 0 { DEFAULT_RAM } else { bytes };
            Some(
                bytes
                    .checked_next_multiple_of(8192)
                    .ok_or_else(|| props.invalid("size", &raw, "a size below 2^64"))?,
            )
        }
    };
    // Room for memory hotplug, which accel does not do: checked, then only logged (the
    // guest sees `size` bytes, as with QEMU before anything is plugged).
    let slots = props.take_uint_in("slots", 0, 256)?;
    let maxmem = match props.take("maxmem") {
        None => None,
        Some(raw) => Some(
            values::parse_size(&raw, 1).map_err(|BadValue(e)| props.invalid("maxmem", &raw, e))?,
        ),
    };
    if let (Some(max), Some(size)) = (maxmem, size)
        && max < size
    {
        return Err(props.invalid(
            "maxmem",
            &max.to_string(),
            "a size at least -m's (maxmem < size)",
        ));
    }
    if slots.is_some() || maxmem.is_some() {
        log::info!("-m: slots/maxmem accepted; accel has no memory hotplug");
    }
    props.finish(MEM_PROPS)?;
    Ok(size)
}

/// One `-object memory-backend-memfd|memory-backend-file`.
#[derive(Debug)]
pub(super) struct Backend {
    pub id: String,
    pub size: u64,
    pub share: bool,
    pub source: RamSource,
    /// `None`: not given (`-mem-prealloc` decides, as QEMU's global property does).
    pub prealloc: Option<bool>,
}

/// Whether `qom_type` is a memory backend this module parses.
pub(super) fn is_memory_backend(qom_type: &str) -> bool {
    qom_type.starts_with("memory-backend-")
}

/// `-object memory-backend-memfd,id=ID,size=SIZE[,share=on|off][,hugetlb=on|off]
/// [,hugetlbsize=SIZE][,prealloc=on|off]` or `-object memory-backend-file,id=ID,size=SIZE,
/// mem-path=PATH[,share=on|off][,readonly=on|off][,prealloc=on|off]`.
pub(super) fn parse_object(mut props: Props) -> Result<Backend, CliError> {
    let qom_type = props.take_required("qom-type")?;
    let file = match qom_type.as_str() {
        "memory-backend-memfd" => false,
        "memory-backend-file" => true,
        "memory-backend-ram" => {
            return Err(props.unsupported(
                "qom-type",
                &qom_type,
                "accel's guest RAM is always shareable: use memory-backend-memfd (share=on for \
                 vhost-user) or memory-backend-file",
            ));
        }
        _ => {
            return Err(props.unsupported(
                "qom-type",
                &qom_type,
                "accel supports memory-backend-memfd, memory-backend-file and secret",
            ));
        }
    };
    let id = props
        .take_id("id")?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: "id".into(),
        })?;
    let raw_size = props.take_required("size")?;
    let size = values::parse_size(&raw_size, 1)
        .map_err(|BadValue(e)| props.invalid("size", &raw_size, e))?;
    if size == 0 {
        return Err(props.invalid("size", &raw_size, "a non-zero size"));
    }
    if size % PAGE != 0 {
        return Err(props.invalid(
            "size",
            &raw_size,
            "a multiple of 4 KiB (accel maps each backend into KVM memory slots)",
        ));
    }
    // memory-backend-memfd defaults to share=on in QEMU, memory-backend-file to share=off.
    let share = props.take_bool("share")?.unwrap_or(!file);
    let prealloc = props.take_bool("prealloc")?;
    if let Some(v) = props.take("prealloc-threads") {
        // Only the speed of preallocation: one thread does the same work.
        values::parse_uint(&v).map_err(|BadValue(e)| props.invalid("prealloc-threads", &v, e))?;
    }
    // Host-side hints that do not change guest-visible behaviour: accepted, ignored.
    for key in ["merge", "dump"] {
        props.take_bool(key)?;
    }
    for key in [
        "prealloc-context",
        "policy",
        "host-nodes",
        "reserve",
        "x-use-canonical-path-for-ramblock-id",
    ] {
        if let Some(v) = props.take(key) {
            return Err(props.unsupported(key, &v, "not implemented by accel"));
        }
    }
    let source = if file {
        parse_file_props(&mut props)?
    } else {
        parse_memfd_props(&mut props)?
    };
    props.finish(if file { FILE_PROPS } else { MEMFD_PROPS })?;
    Ok(Backend {
        id,
        size,
        share,
        source,
        prealloc,
    })
}

fn parse_memfd_props(props: &mut Props) -> Result<RamSource, CliError> {
    props.take_bool("seal")?;
    let hugetlb = props.take_bool("hugetlb")?.unwrap_or(false);
    let hugetlbsize = match props.take("hugetlbsize") {
        None => 0,
        Some(raw) => {
            let v = values::parse_size(&raw, 1)
                .map_err(|BadValue(e)| props.invalid("hugetlbsize", &raw, e))?;
            if !v.is_power_of_two() || v < PAGE {
                return Err(props.invalid("hugetlbsize", &raw, "a power of two of at least 4K"));
            }
            if !hugetlb {
                // QEMU: "'hugetlbsize' property can't be set without 'hugetlb'".
                return Err(CliError::Invalid {
                    option: props.option().into(),
                    message: "'hugetlbsize' property can't be set without hugetlb=on".into(),
                });
            }
            v
        }
    };
    Ok(RamSource::Memfd {
        hugetlb: hugetlb.then_some(hugetlbsize),
    })
}

fn parse_file_props(props: &mut Props) -> Result<RamSource, CliError> {
    let path = props.take_required("mem-path")?;
    if path.is_empty() {
        return Err(props.invalid("mem-path", &path, "a file or directory path"));
    }
    let readonly = props.take_bool("readonly")?.unwrap_or(false);
    // Host mapping alignment (accel maps at the kernel's choice, huge-page aligned on
    // hugetlbfs) and whether the file's data is dropped at exit: accepted, ignored.
    if let Some(v) = props.take("align") {
        values::parse_size(&v, 1).map_err(|BadValue(e)| props.invalid("align", &v, e))?;
    }
    props.take_bool("discard-data")?;
    for key in ["pmem", "offset", "rom"] {
        if let Some(v) = props.take(key) {
            return Err(props.unsupported(key, &v, "not implemented by accel"));
        }
    }
    Ok(RamSource::File {
        path: PathBuf::from(path),
        readonly,
    })
}

/// One `-numa node,memdev=ID[,nodeid=N]`.
#[derive(Debug)]
pub(super) struct NumaNode {
    pub memdev: String,
    pub nodeid: Option<u64>,
}

pub(super) fn parse_numa(mut props: Props) -> Result<NumaNode, CliError> {
    let kind = props.take("type").unwrap_or_default();
    if kind != "node" {
        return Err(props.unsupported(
            "type",
            &kind,
            "accel supports only '-numa node,memdev=ID' (to compose guest RAM from backends)",
        ));
    }
    if let Some(v) = props.take("mem") {
        return Err(props.unsupported(
            "mem",
            &v,
            "use memdev= with -object memory-backend-memfd (QEMU removed mem= too)",
        ));
    }
    for key in ["cpus", "initiator"] {
        if let Some(v) = props.take(key) {
            return Err(props.unsupported(
                key,
                &v,
                "accel exposes no NUMA topology to the guest (no ACPI SRAT)",
            ));
        }
    }
    let memdev = props
        .take_id("memdev")?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: "memdev".into(),
        })?;
    let nodeid = props.take_uint_in("nodeid", 0, 127)?;
    props.finish(NUMA_PROPS)?;
    Ok(NumaNode { memdev, nodeid })
}

/// `-mem-path PATH` and `-mem-prealloc`.
#[derive(Debug, Default)]
pub(super) struct Legacy {
    pub mem_path: Option<String>,
    pub mem_prealloc: bool,
}

/// Builds the RAM layout. `ram_size` is `-m` (if given), `machine_memdev` is
/// `-machine memory-backend=`.
pub(super) fn resolve(
    ram_size: Option<u64>,
    backends: &[Backend],
    numa: Vec<NumaNode>,
    machine_memdev: Option<String>,
    legacy: &Legacy,
) -> Result<MemoryConfig, CliError> {
    let lookup = |option: &str, id: &str| {
        backends
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| CliError::Invalid {
                option: option.into(),
                message: format!(
                    "memory backend '{id}' not found (define it with -object \
                     memory-backend-memfd,id={id},size=... or memory-backend-file)"
                ),
            })
    };
    let to_config = |b: &Backend| MemoryBackendConfig {
        id: Some(b.id.clone()),
        size: b.size,
        share: b.share,
        source: b.source.clone(),
        // -mem-prealloc is a global default for every memory backend's prealloc property.
        prealloc: b.prealloc.unwrap_or(legacy.mem_prealloc),
    };

    if let Some(id) = machine_memdev {
        if legacy.mem_path.is_some() {
            return Err(CliError::Invalid {
                option: "-mem-path".into(),
                message: "'-mem-path' can't be used together with '-machine memory-backend' \
                          (give the backend mem-path= instead)"
                    .into(),
            });
        }
        if !numa.is_empty() {
            return Err(CliError::Invalid {
                option: "-machine".into(),
                message: "'-machine memory-backend' and '-numa memdev' properties are \
                          mutually exclusive"
                    .into(),
            });
        }
        let backend = lookup("-machine", &id)?;
        if ram_size.is_some_and(|s| s != backend.size) {
            return Err(CliError::Invalid {
                option: "-m".into(),
                message: format!(
                    "Size specified by -m option ({}) must match size of explicitly specified \
                     'memory-backend' property '{id}' ({})",
                    ram_size.unwrap_or_default(),
                    backend.size
                ),
            });
        }
        return Ok(MemoryConfig {
            size: backend.size,
            backends: vec![to_config(backend)],
        });
    }

    let ram_size = ram_size.unwrap_or(DEFAULT_RAM);
    if numa.is_empty() {
        return Ok(MemoryConfig {
            size: ram_size,
            backends: vec![MemoryBackendConfig {
                id: None,
                size: ram_size,
                // Plain -m RAM (and -mem-path RAM) is private in QEMU: vhost-user devices
                // refuse it.
                share: false,
                source: match &legacy.mem_path {
                    Some(path) => RamSource::File {
                        path: PathBuf::from(path),
                        readonly: false,
                    },
                    None => RamSource::Memfd { hugetlb: None },
                },
                prealloc: legacy.mem_prealloc,
            }],
        });
    }

    if legacy.mem_path.is_some() {
        log::warn!("-mem-path: ignored, guest RAM comes from the -numa node memdev= backends");
    }
    // Order nodes by nodeid (QEMU assigns missing ids in order of appearance).
    let mut nodes: Vec<(u64, NumaNode)> = Vec::new();
    for (index, node) in numa.into_iter().enumerate() {
        let id = node.nodeid.unwrap_or(index as u64);
        if nodes.iter().any(|(other, _)| *other == id) {
            return Err(CliError::Invalid {
                option: "-numa".into(),
                message: format!("Duplicate NUMA nodeid: {id}"),
            });
        }
        nodes.push((id, node));
    }
    nodes.sort_by_key(|(id, _)| *id);
    let mut layout = Vec::new();
    let mut total: u64 = 0;
    for (_, node) in &nodes {
        let backend = lookup("-numa", &node.memdev)?;
        if layout
            .iter()
            .any(|b: &MemoryBackendConfig| b.id.as_deref() == Some(node.memdev.as_str()))
        {
            return Err(CliError::Invalid {
                option: "-numa".into(),
                message: format!(
                    "memory backend {} can't be used multiple times.",
                    node.memdev
                ),
            });
        }
        total = total.saturating_add(backend.size);
        layout.push(to_config(backend));
    }
    if total != ram_size {
        return Err(CliError::Invalid {
            option: "-numa".into(),
            message: format!(
                "total memory for NUMA nodes (0x{total:x}) should equal RAM size \
                 (0x{ram_size:x}) given by -m"
            ),
        });
    }
    Ok(MemoryConfig {
        size: ram_size,
        backends: layout,
    })
}

/// vhost-user devices map guest RAM in the backend process: every backend must be
/// `share=on` (QEMU: "Failed initializing vhost-user memory map, consider using -object
/// memory-backend-file share=on") and writable.
pub(super) fn check_shared(memory: &MemoryConfig) -> Result<(), CliError> {
    for b in &memory.backends {
        let name = match (&b.id, &b.source) {
            (Some(id), _) => format!("memory backend '{id}'"),
            (None, RamSource::File { .. }) => "-mem-path RAM".to_string(),
            (None, RamSource::Memfd { .. }) => "plain -m RAM".to_string(),
        };
        if !b.share {
            return Err(CliError::Invalid {
                option: "-device".into(),
                message: format!(
                    "vhost-user devices need guest RAM shared with the backend process, but \
                     {name} is not shared (QEMU: \"Failed initializing vhost-user memory map, \
                     consider using -object memory-backend-file share=on\"): use -object \
                     memory-backend-memfd,id=mem,size=<RAM size>,share=on (or \
                     memory-backend-file,...,mem-path=PATH,share=on) with -numa node,memdev=mem \
                     or -machine memory-backend=mem"
                ),
            });
        }
        if let RamSource::File { readonly: true, .. } = b.source {
            return Err(CliError::Invalid {
                option: "-device".into(),
                message: format!(
                    "vhost-user devices need writable guest RAM, but {name} is readonly=on \
                     (the backend process maps guest RAM read-write)"
                ),
            });
        }
    }
    Ok(())
}
