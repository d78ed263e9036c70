//! From a built-in spelling to the backend that serves it: the device-table row
//! ([`vu_spec::devices::DEVICES`], whose name is also the program's) and the arguments.

use std::ffi::OsString;
use std::os::fd::RawFd;

use vu_spec::devices::{DEVICES, DeviceSpec};

use crate::config::{BuiltinBackend, ConsoleEndpoint, TapSource};

/// QEMU's built-in `-device` drivers and the row (vhost-user device kind) serving each.
/// `virtio-net-pci` is in the table itself (its netdev decides who serves it); `-drive
/// if=virtio` makes a `virtio-blk-pci`.
const BUILTIN_DRIVERS: &[(&str, &str)] = &[
    ("virtio-blk-pci", "vhost-user-blk"),
    ("virtio-rng-pci", "vhost-user-rng"),
    ("vhost-vsock-pci", "vhost-user-vsock"),
    ("virtconsole", "vhost-user-console"),
];

fn row(name: &str) -> &'static DeviceSpec {
    DEVICES
        .iter()
        .find(|d| d.name == name)
        // Every name used here is a row (see the tests).
        .unwrap_or_else(|| panic!("no device row named {name}"))
}

/// The row a built-in `-device` driver is served by (with or without `-non-transitional`).
pub fn builtin_row(driver: &str) -> Option<&'static DeviceSpec> {
    let base = driver.strip_suffix("-non-transitional").unwrap_or(driver);
    BUILTIN_DRIVERS
        .iter()
        .find(|(d, _)| *d == base)
        .map(|(_, r)| row(r))
}

/// The row (and so the program: its name) serving `backend`.
pub fn row_for(backend: &BuiltinBackend) -> &'static DeviceSpec {
    row(match backend {
        BuiltinBackend::Blk { .. } => "vhost-user-blk",
        BuiltinBackend::Net { .. } => "vhost-user-net",
        BuiltinBackend::Rng { .. } => "vhost-user-rng",
        BuiltinBackend::Vsock { .. } => "vhost-user-vsock",
        BuiltinBackend::Console(_) => "vhost-user-console",
    })
}

/// Inherited fds the backend needs open (besides its listening socket).
pub fn passed_fds(backend: &BuiltinBackend) -> Vec<RawFd> {
    match backend {
        BuiltinBackend::Net {
            tap: TapSource::Fds(fds),
            ..
        } => fds.clone(),
        _ => Vec::new(),
    }
}

/// Whether the backend reads accel's stdin (a `-chardev stdio` console).
pub fn uses_stdin(backend: &BuiltinBackend) -> bool {
    matches!(backend, BuiltinBackend::Console(ConsoleEndpoint::Stdio))
}

/// What accel checks itself before starting the backend, so that a file the backend cannot
/// use is an error naming the option rather than a backend that dies at start: the image opens
/// (read-write unless read-only) and is not a qcow2 image (QEMU would probe the format), the
/// entropy source opens.
pub fn precheck(backend: &BuiltinBackend) -> Result<(), String> {
    use std::io::Read;
    match backend {
        BuiltinBackend::Blk {
            image, read_only, ..
        } => {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(image)
                .map_err(|e| format!("cannot open {}: {e}", image.display()))?;
            let mut magic = [0u8; 4];
            if f.read_exact(&mut magic).is_ok() && &magic == b"QFI\xfb" {
                return Err(format!(
                    "{} is a qcow2 image: accel serves raw images only (convert it with \
                     'qemu-img convert -O raw')",
                    image.display()
                ));
            }
            Ok(())
        }
        BuiltinBackend::Rng { source, .. } => std::fs::File::open(source)
            .map(drop)
            .map_err(|e| format!("cannot open {}: {e}", source.display())),
        _ => Ok(()),
    }
}

/// The program's arguments when it serves the listening socket `listen_fd`.
pub fn args(backend: &BuiltinBackend, listen_fd: RawFd) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--fd".into(), listen_fd.to_string().into()];
    let mut push = |k: &str, v: OsString| {
        a.push(k.into());
        a.push(v);
    };
    match backend {
        BuiltinBackend::Blk {
            image,
            read_only,
            direct_io,
            serial,
            num_queues,
        } => {
            push("--image", image.into());
            push("--num-queues", num_queues.to_string().into());
            if let Some(s) = serial {
                push("--serial", s.into());
            }
            if *read_only {
                a.push("--read-only".into());
            }
            if *direct_io {
                a.push("--direct-io".into());
            }
        }
        BuiltinBackend::Net { tap, queue_pairs } => {
            push("--queues", queue_pairs.to_string().into());
            match tap {
                TapSource::Name(n) => push("--tap", n.into()),
                TapSource::Fds(fds) => {
                    for fd in fds {
                        push("--tap-fd", fd.to_string().into());
                    }
                }
            }
        }
        BuiltinBackend::Rng { source, rate_limit } => {
            push("--source", source.into());
            if let Some((bytes, ms)) = rate_limit {
                push("--max-bytes", bytes.to_string().into());
                push("--period", ms.to_string().into());
            }
        }
        BuiltinBackend::Vsock {
            guest_cid,
            uds_path,
        } => {
            push("--guest-cid", guest_cid.to_string().into());
            push("--uds-path", uds_path.into());
        }
        BuiltinBackend::Console(endpoint) => match endpoint {
            ConsoleEndpoint::Stdio => a.push("--stdio".into()),
            ConsoleEndpoint::File(p) => push("--output", p.into()),
            ConsoleEndpoint::Socket(p) => push("--socket", p.into()),
        },
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use vu_spec::devices::find_driver;

    #[test]
    fn every_builtin_names_a_row_no_vhost_user_driver_names() {
        for (driver, r) in BUILTIN_DRIVERS {
            assert_eq!(builtin_row(driver).unwrap().name, *r);
            let nt = format!("{driver}-non-transitional");
            assert_eq!(builtin_row(&nt).unwrap().name, *r);
            assert!(
                find_driver(driver).is_none(),
                "{driver} is also a vhost-user driver"
            );
        }
        assert!(builtin_row("virtio-net-pci").is_none());
        assert!(builtin_row("virtio-gpu-pci").is_none());
    }

    #[test]
    fn argv_per_kind() {
        let s = |v: Vec<OsString>| {
            v.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let blk = BuiltinBackend::Blk {
            image: "/i.img".into(),
            read_only: true,
            direct_io: true,
            serial: Some("S1".into()),
            num_queues: 2,
        };
        assert_eq!(row_for(&blk).name, "vhost-user-blk");
        assert_eq!(
            s(args(&blk, 7)),
            "--fd 7 --image /i.img --num-queues 2 --serial S1 --read-only --direct-io"
        );
        let net = BuiltinBackend::Net {
            tap: TapSource::Fds(vec![20, 21]),
            queue_pairs: 2,
        };
        assert_eq!(
            s(args(&net, 3)),
            "--fd 3 --queues 2 --tap-fd 20 --tap-fd 21"
        );
        assert_eq!(passed_fds(&net), vec![20, 21]);
        let rng = BuiltinBackend::Rng {
            source: "/dev/urandom".into(),
            rate_limit: Some((1024, 1000)),
        };
        assert_eq!(
            s(args(&rng, 3)),
            "--fd 3 --source /dev/urandom --max-bytes 1024 --period 1000"
        );
        let vsock = BuiltinBackend::Vsock {
            guest_cid: 5,
            uds_path: "/tmp/v".into(),
        };
        assert_eq!(s(args(&vsock, 3)), "--fd 3 --guest-cid 5 --uds-path /tmp/v");
        let missing = BuiltinBackend::Blk {
            image: "/nonexistent/x.img".into(),
            read_only: true,
            direct_io: false,
            serial: None,
            num_queues: 1,
        };
        assert!(
            precheck(&missing)
                .unwrap_err()
                .contains("/nonexistent/x.img")
        );
        let dir = std::env::temp_dir().join(format!("accel-argv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let q = dir.join("q.img");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        let qcow = BuiltinBackend::Blk {
            image: q.clone(),
            read_only: false,
            direct_io: false,
            serial: None,
            num_queues: 1,
        };
        assert!(precheck(&qcow).unwrap_err().contains("qcow2"));
        std::fs::write(&q, [0u8; 512]).unwrap();
        assert_eq!(precheck(&qcow), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(precheck(&rng), Ok(()));
        let con = BuiltinBackend::Console(ConsoleEndpoint::Stdio);
        assert!(uses_stdin(&con));
        assert_eq!(s(args(&con, 3)), "--fd 3 --stdio");
    }
}
