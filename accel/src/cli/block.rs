//! `-drive` and `-blockdev`: raw images, served by a vhost-user-blk backend accel starts.

use std::path::PathBuf;

use super::CliError;
use super::props::Props;

/// A raw image and how to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Image {
    pub path: PathBuf,
    pub read_only: bool,
    pub direct: bool,
}

/// One `-drive`: `if=virtio` makes its own device, `if=none` waits for a `-device ...,drive=ID`.
#[derive(Debug)]
pub(super) struct Drive {
    pub id: Option<String>,
    pub virtio: bool,
    pub image: Image,
    pub serial: Option<String>,
}

/// One `-blockdev` node.
#[derive(Debug)]
pub(super) struct Node {
    pub name: String,
    pub kind: NodeKind,
}

#[derive(Debug)]
pub(super) enum NodeKind {
    /// `driver=file|host_device`.
    File(Image),
    /// `driver=raw` on top of another node (`file=NODE`) or of an inline one (`file.*`).
    Raw { file: String, read_only: bool },
    /// `driver=raw,file.driver=file,file.filename=...`.
    RawInline(Image),
}

const NOT_RAW: &str = "accel serves raw images only (through vhost-user-blk): convert with \
                       'qemu-img convert -O raw' and use format=raw";

fn format_check(props: &Props, key: &str, format: &str) -> Result<(), CliError> {
    match format {
        "raw" => Ok(()),
        other => Err(props.unsupported(key, other, NOT_RAW)),
    }
}

/// `cache=` of `-drive`: whether it bypasses the host page cache.
fn cache_direct(props: &Props, v: &str) -> Result<bool, CliError> {
    match v {
        "none" | "directsync" => Ok(true),
        "writeback" | "writethrough" | "unsafe" => Ok(false),
        _ => Err(props.invalid(
            "cache",
            v,
            "none, writeback, writethrough, directsync or unsafe",
        )),
    }
}

/// Properties that tune what accel's backend does anyway, accepted and ignored.
fn take_ignored(props: &mut Props, keys: &[&str]) {
    for k in keys {
        props.take(k);
    }
}

const DRIVE_PROPS: &[&str] = &[
    "file",
    "if (virtio/none)",
    "format (raw)",
    "readonly",
    "read-only",
    "cache",
    "id",
    "media (disk)",
    "serial",
    "aio",
    "discard",
    "detect-zeroes",
    "index",
];

/// `-drive file=IMG[,if=virtio|none][,format=raw][,readonly=on][,cache=..][,id=..]`.
pub(super) fn parse_drive(mut props: Props) -> Result<Drive, CliError> {
    let file = props.take_required("file")?;
    if file.is_empty() {
        return Err(props.invalid("file", &file, "an image path"));
    }
    let virtio = match props.take("if").as_deref() {
        Some("virtio") => true,
        Some("none") => false,
        other => {
            let v = other.unwrap_or("ide");
            return Err(props.unsupported(
                "if",
                v,
                "accel's disks are virtio: use if=virtio (or if=none with -device virtio-blk-pci,drive=ID)",
            ));
        }
    };
    match props.take("format") {
        Some(f) => format_check(&props, "format", &f)?,
        None => log::warn!(
            "-drive file={file}: no format given; served as raw (accel refuses a qcow2 image but probes no other format)"
        ),
    }
    if let Some(m) = props.take("media").filter(|m| m != "disk") {
        return Err(props.unsupported("media", &m, "accel's virtio disks are media=disk"));
    }
    if props.take_bool("snapshot")? == Some(true) {
        return Err(props.unsupported(
            "snapshot",
            "on",
            "accel writes to the image itself (no temporary overlay)",
        ));
    }
    let read_only = props.take_bool("readonly")?.unwrap_or(false)
        | props.take_bool("read-only")?.unwrap_or(false);
    let direct = match props.take("cache") {
        Some(c) => cache_direct(&props, &c)?,
        None => false,
    };
    let id = props.take_id("id")?;
    let serial = props.take("serial");
    take_ignored(&mut props, &["aio", "discard", "detect-zeroes", "index"]);
    props.finish(DRIVE_PROPS)?;
    Ok(Drive {
        id,
        virtio,
        image: Image {
            path: PathBuf::from(file),
            read_only,
            direct,
        },
        serial,
    })
}

const FILE_IGNORED: &[&str] = &[
    "aio",
    "discard",
    "detect-zeroes",
    "auto-read-only",
    "locking",
    "cache.no-flush",
];

/// The `file`/`host_device` driver's properties under `prefix` (`""` or `"file."`).
fn take_file(props: &mut Props, prefix: &str) -> Result<Image, CliError> {
    let k = |s: &str| format!("{prefix}{s}");
    let filename = props.take_required(&k("filename"))?;
    let read_only = props.take_bool(&k("read-only"))?.unwrap_or(false);
    let direct = props.take_bool(&k("cache.direct"))?.unwrap_or(false);
    for key in FILE_IGNORED {
        props.take(&k(key));
    }
    Ok(Image {
        path: PathBuf::from(filename),
        read_only,
        direct,
    })
}

fn check_file_driver(props: &Props, key: &str, driver: &str) -> Result<(), CliError> {
    match driver {
        "file" | "host_device" => Ok(()),
        "raw" => Err(props.unsupported(key, driver, "a raw node goes on a file node")),
        "qcow2" | "qcow" | "vmdk" | "vdi" | "vhdx" | "vpc" | "qed" | "luks" | "parallels" => {
            Err(props.unsupported(key, driver, NOT_RAW))
        }
        other => Err(props.unsupported(
            key,
            other,
            "accel opens local files only (driver=file or host_device, under driver=raw)",
        )),
    }
}

/// `-blockdev driver=file,filename=IMG,node-name=N[,read-only=on][,cache.direct=on]`,
/// `-blockdev driver=raw,node-name=N,file=NODE` or `...,file.driver=file,file.filename=IMG`.
pub(super) fn parse_blockdev(mut props: Props) -> Result<Node, CliError> {
    let driver = props.take_required("driver")?;
    let name = props
        .take_id("node-name")?
        .ok_or_else(|| CliError::MissingProperty {
            option: props.option().into(),
            property: "node-name".into(),
        })?;
    let kind = if driver == "raw" {
        let read_only = props.take_bool("read-only")?.unwrap_or(false);
        for key in ["discard", "detect-zeroes", "auto-read-only"] {
            props.take(key);
        }
        for key in ["offset", "size"] {
            if let Some(v) = props.take(key) {
                return Err(props.unsupported(key, &v, "accel serves the whole file"));
            }
        }
        if let Some(fd) = props.take("file.driver") {
            check_file_driver(&props, "file.driver", &fd)?;
            let mut image = take_file(&mut props, "file.")?;
            image.read_only |= read_only;
            // A cache.direct on the raw node applies to its file.
            image.direct |= props.take_bool("cache.direct")?.unwrap_or(false);
            props.take("cache.no-flush");
            NodeKind::RawInline(image)
        } else {
            props.take("cache.direct");
            props.take("cache.no-flush");
            let file = props.take_required("file")?;
            NodeKind::Raw { file, read_only }
        }
    } else {
        check_file_driver(&props, "driver", &driver)?;
        NodeKind::File(take_file(&mut props, "")?)
    };
    props.finish(&[
        "driver (file/host_device/raw)",
        "node-name",
        "filename",
        "read-only",
        "cache.direct",
        "file",
        "file.driver",
        "file.filename",
    ])?;
    Ok(Node { name, kind })
}

/// The image behind node `name` (following raw nodes down to their file node).
pub(super) fn node_image(nodes: &[Node], name: &str) -> Option<Image> {
    let mut name = name;
    let mut read_only = false;
    // A chain longer than the node list has a loop.
    for _ in 0..=nodes.len() {
        let node = nodes.iter().find(|n| n.name == name)?;
        match &node.kind {
            NodeKind::File(i) | NodeKind::RawInline(i) => {
                let mut i = i.clone();
                i.read_only |= read_only;
                return Some(i);
            }
            NodeKind::Raw {
                file,
                read_only: ro,
            } => {
                read_only |= ro;
                name = file;
            }
        }
    }
    None
}
