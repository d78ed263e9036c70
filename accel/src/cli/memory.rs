//! Guest RAM: `-m`, `-object memory-backend-memfd`, `-numa node,memdev=` and
//! `-machine memory-backend=`, resolved the way QEMU 7.2 does.

use super::CliError;
use super::props::Props;
use super::values::{self, BadValue};
use crate::config::{MemoryBackendConfig, MemoryConfig};

const MIB: u64 = 1 << 20;
/// QEMU's default RAM size for x86 machines.
pub(super) const DEFAULT_RAM: u64 = 128 * MIB;
/// Backends are mapped into KVM memory slots: page granularity.
const PAGE: u64 = 4096;

pub(super) const MEM_PROPS: &[&str] = &["size"];
pub(super) const OBJECT_PROPS: &[&str] = &[
    "qom-type (memory-backend-memfd)",
    "id",
    "size",
    "share",
    "hugetlb",
    "seal (ignored)",
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
    for key in ["maxmem", "slots"] {
        if let Some(v) = props.take(key) {
            return Err(props.unsupported(key, &v, "accel does not support memory hotplug"));
        }
    }
    props.finish(MEM_PROPS)?;
    Ok(size)
}

/// One `-object memory-backend-memfd`.
#[derive(Debug)]
pub(super) struct Backend {
    pub id: String,
    pub size: u64,
    pub share: bool,
    pub hugetlb: bool,
}

/// `-object memory-backend-memfd,id=ID,size=SIZE[,share=on|off][,hugetlb=on|off]`.
pub(super) fn parse_object(mut props: Props) -> Result<Backend, CliError> {
    let qom_type = props.take_required("qom-type")?;
    if qom_type != "memory-backend-memfd" {
        let hint = match qom_type.as_str() {
            "memory-backend-file" | "memory-backend-ram" => {
                "accel's guest RAM is always a memfd: use memory-backend-memfd (share=on for \
                 vhost-user)"
            }
            _ => "accel supports only -object memory-backend-memfd",
        };
        return Err(props.unsupported("qom-type", &qom_type, hint));
    }
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
    // memory-backend-memfd defaults to share=on in QEMU.
    let share = props.take_bool("share")?.unwrap_or(true);
    let hugetlb = props.take_bool("hugetlb")?.unwrap_or(false);
    // Host-side hints that do not change guest-visible behaviour: accepted, ignored.
    for key in ["seal", "merge", "dump"] {
        props.take_bool(key)?;
    }
    for key in [
        "hugetlbsize",
        "prealloc",
        "prealloc-threads",
        "prealloc-context",
        "policy",
        "host-nodes",
        "reserve",
    ] {
        if let Some(v) = props.take(key) {
            return Err(props.unsupported(key, &v, "not implemented by accel"));
        }
    }
    props.finish(OBJECT_PROPS)?;
    Ok(Backend {
        id,
        size,
        share,
        hugetlb,
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

/// Builds the RAM layout. `ram_size` is `-m` (if given), `machine_memdev` is
/// `-machine memory-backend=`.
pub(super) fn resolve(
    ram_size: Option<u64>,
    backends: &[Backend],
    numa: Vec<NumaNode>,
    machine_memdev: Option<String>,
) -> Result<MemoryConfig, CliError> {
    let lookup = |option: &str, id: &str| {
        backends
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| CliError::Invalid {
                option: option.into(),
                message: format!(
                    "memory backend '{id}' not found (define it with -object \
                     memory-backend-memfd,id={id},size=...)"
                ),
            })
    };
    let to_config = |b: &Backend| MemoryBackendConfig {
        id: Some(b.id.clone()),
        size: b.size,
        share: b.share,
        hugetlb: b.hugetlb,
    };

    if let Some(id) = machine_memdev {
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
                // Plain -m RAM is private in QEMU: vhost-user devices refuse it.
                share: false,
                hugetlb: false,
            }],
        });
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
