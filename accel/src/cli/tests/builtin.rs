//! QEMU's built-in device spellings: what each becomes (a vhost-user device on a made-up
//! chardev, and the backend accel starts for it), and the one-line errors.

use super::{argv, fail_with, run};
use crate::cli::{CliAction, parse};
use crate::config::{BuiltinBackend, ConsoleEndpoint, TapSource, VmConfig};
use std::path::PathBuf;

fn spawned(c: &VmConfig) -> Vec<(String, BuiltinBackend)> {
    c.spawned
        .iter()
        .map(|s| (s.label.clone(), s.backend.clone()))
        .collect()
}

/// Every spawned backend's chardev exists, has reconnect, and is the one its device uses.
fn check_wiring(c: &VmConfig) {
    assert_eq!(c.spawned.len(), c.devices.len());
    for s in &c.spawned {
        let ch = c.chardevs.iter().find(|x| x.id == s.chardev).unwrap();
        assert_eq!(ch.reconnect_secs, 1);
        assert!(c.devices.iter().any(|d| d.chardev == s.chardev));
        assert_eq!(
            c.devices
                .iter()
                .find(|d| d.chardev == s.chardev)
                .unwrap()
                .spec
                .name,
            crate::backends::row_for(&s.backend).name
        );
    }
}

#[test]
fn drive_forms_are_raw_images_on_vhost_user_blk() {
    let mut args = argv(
        "-m 256 -smp 2 -kernel vmlinux -drive file=a.img,if=virtio,format=raw,cache=none \
         -drive file=b.img,if=none,id=d1,readonly=on -device virtio-blk-pci,drive=d1,id=disk1,addr=5 \
         -blockdev driver=file,filename=c.img,node-name=n1,read-only=on -device virtio-blk-pci,drive=n1 \
         -blockdev driver=raw,node-name=n2,file.driver=file,file.filename=d.img,cache.direct=on \
         -device virtio-blk-pci,drive=n2,num-queues=4",
    );
    // libvirt's JSON form: a file node under a raw node.
    for (opt, json) in [
        (
            "-blockdev",
            r#"{"driver":"file","filename":"e.img","node-name":"f3"}"#,
        ),
        (
            "-blockdev",
            r#"{"driver":"raw","node-name":"n3","file":"f3","read-only":true}"#,
        ),
        ("-device", r#"{"driver":"virtio-blk-pci","drive":"n3"}"#),
    ] {
        args.extend([opt.to_string(), json.to_string()]);
    }
    let Ok(CliAction::Run(c)) = parse(&args) else {
        panic!("{args:?}");
    };
    check_wiring(&c);
    let blk = |image: &str, read_only, direct_io, num_queues| BuiltinBackend::Blk {
        image: PathBuf::from(image),
        read_only,
        direct_io,
        serial: None,
        num_queues,
    };
    let s = spawned(&c);
    let backends: Vec<_> = s.iter().map(|(_, b)| b.clone()).collect();
    assert!(backends.contains(&blk("a.img", false, true, 2)));
    assert!(backends.contains(&blk("b.img", true, false, 2)));
    assert!(backends.contains(&blk("c.img", true, false, 2)));
    assert!(backends.contains(&blk("d.img", false, true, 4)));
    assert!(backends.contains(&blk("e.img", true, false, 2)));
    assert!(s.iter().any(|(l, _)| l == "-drive file=a.img"));
    assert!(
        s.iter()
            .any(|(l, _)| l == "-device virtio-blk-pci,id=disk1")
    );
    let d1 = c
        .devices
        .iter()
        .find(|d| d.id.as_deref() == Some("disk1"))
        .unwrap();
    assert_eq!(d1.pci_slot, Some(5));
    assert_eq!(d1.spec.name, "vhost-user-blk");
    // Plain -m RAM becomes shareable for the backends.
    assert!(c.memory.backends.iter().all(|b| b.share));
}

#[test]
fn rng_vsock_console_and_tap() {
    let c = run("-nodefaults -object rng-random,id=r0,filename=/dev/random \
         -device virtio-rng-pci,rng=r0,max-bytes=1024,period=1000 \
         -object rng-builtin,id=r1 -device virtio-rng-pci,rng=r1 \
         -device vhost-vsock-pci,guest-cid=7 \
         -device virtio-serial-pci,id=vs0 -chardev file,id=con,path=/tmp/out.txt \
         -device virtconsole,chardev=con,bus=vs0.0 \
         -netdev tap,id=n0,ifname=tap7,script=no,downscript=no,vhost=on,queues=2 \
         -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:07,mq=on \
         -netdev tap,id=n1,fds=5:6 -device virtio-net-pci,netdev=n1");
    check_wiring(&c);
    let b: Vec<_> = spawned(&c).into_iter().map(|(_, b)| b).collect();
    assert!(b.contains(&BuiltinBackend::Rng {
        source: "/dev/random".into(),
        rate_limit: Some((1024, 1000))
    }));
    assert!(b.contains(&BuiltinBackend::Rng {
        source: "/dev/urandom".into(),
        rate_limit: None
    }));
    assert!(b.contains(&BuiltinBackend::Vsock {
        guest_cid: 7,
        uds_path: std::env::temp_dir().join("accel-vsock-7.sock")
    }));
    assert!(b.contains(&BuiltinBackend::Console(ConsoleEndpoint::File(
        "/tmp/out.txt".into()
    ))));
    assert!(b.contains(&BuiltinBackend::Net {
        tap: TapSource::Name("tap7".into()),
        queue_pairs: 2
    }));
    assert!(b.contains(&BuiltinBackend::Net {
        tap: TapSource::Fds(vec![5, 6]),
        queue_pairs: 2
    }));
    let net = c.devices.iter().find(|d| d.mac.is_some()).unwrap();
    assert_eq!(net.num_queues, Some(4));
}

#[test]
fn console_on_a_server_socket_takes_it_from_the_monitors() {
    let c = run(
        "-nodefaults -chardev socket,id=s,path=/tmp/c.sock,server=on,wait=off \
         -device virtio-serial-pci,addr=6 -device virtconsole,chardev=s",
    );
    check_wiring(&c);
    assert!(c.monitors.is_empty());
    assert_eq!(
        spawned(&c)[0].1,
        BuiltinBackend::Console(ConsoleEndpoint::Socket("/tmp/c.sock".into()))
    );
    assert_eq!(c.devices[0].pci_slot, Some(6));
}

#[test]
fn one_line_errors_name_the_option() {
    fail_with(
        "-drive file=a.qcow2,if=virtio,format=qcow2",
        &["-drive", "format", "qcow2", "raw"],
    );
    fail_with("-drive file=a.img", &["-drive", "'if=ide'", "if=virtio"]);
    fail_with("-drive file=a.img,if=virtio,snapshot=on", &["snapshot"]);
    fail_with(
        "-drive file=a.img,if=virtio,cache=bogus",
        &["cache", "bogus"],
    );
    fail_with(
        "-drive file=a.img,if=virtio,werror=stop",
        &["unknown property 'werror'"],
    );
    fail_with(
        "-blockdev driver=qcow2,node-name=q,file=f",
        &["-blockdev", "qcow2", "raw"],
    );
    fail_with("-blockdev driver=nbd,node-name=q,server.host=h", &["nbd"]);
    fail_with(
        "-device virtio-blk-pci,drive=nope",
        &["virtio-blk-pci", "drive 'nope' not found"],
    );
    fail_with(
        "-drive file=a,if=none,id=d -device virtio-blk-pci,drive=d -device virtio-blk-pci,drive=d",
        &["already in use"],
    );
    fail_with("-device virtio-rng-pci,rng=r9", &["rng 'r9' not found"]);
    fail_with("-object rng-egd,id=r,chardev=c", &["rng-egd"]);
    fail_with("-device vhost-vsock-pci", &["guest-cid"]);
    fail_with(
        "-device vhost-vsock-pci,guest-cid=3,vhostfd=4",
        &["vhostfd"],
    );
    fail_with(
        "-netdev tap,id=n,ifname=t,script=/etc/qemu-ifup -device virtio-net-pci,netdev=n",
        &["script", "script=no"],
    );
    fail_with("-netdev tap,id=n", &["ifname"]);
    fail_with(
        "-netdev tap,id=n,ifname=t,fd=3",
        &["one of ifname=, fd=, fds="],
    );
    fail_with(
        "-chardev file,id=c,path=/x -device virtconsole,chardev=c",
        &["virtio-serial-pci"],
    );
    fail_with(
        "-chardev socket,id=c,path=/x -device virtio-serial-pci -device virtconsole,chardev=c",
        &["client socket"],
    );
    fail_with(
        "-chardev stdio,id=c -device virtio-serial-pci -device virtconsole,chardev=c",
        &["stdio", "serial port"],
    );
    fail_with(
        "-nodefaults -chardev socket,id=c,path=/x,server=on -device virtio-serial-pci \
         -device virtconsole,chardev=c",
        &["wait=off"],
    );
    fail_with(
        "-nodefaults -chardev file,id=c,path=/x -chardev file,id=d,path=/y -device virtio-serial-pci \
         -device virtconsole,chardev=c -device virtconsole,chardev=d",
        &["one virtconsole"],
    );
    fail_with(
        "-device virtio-blk-pci,drive=d,logical_block_size=4096",
        &["logical_block_size"],
    );
    // One -chardev parser and one user per chardev, whichever device names it.
    fail_with(
        "-chardev file,id=c,path=/x -serial chardev:c -device virtio-serial-pci \
         -device virtconsole,chardev=c",
        &["chardev 'c' is already in use"],
    );
    fail_with(
        "-nodefaults -chardev pipe,id=c,path=/x -device virtio-serial-pci \
         -device virtconsole,chardev=c",
        &["virtconsole", "not pipe or null"],
    );
    fail_with(
        "-chardev null,id=c -chardev file,id=c,path=/x",
        &["duplicate chardev id 'c'"],
    );
    // A -serial chardev:ID on stdio counts as the serial port using stdio.
    fail_with(
        "-chardev stdio,id=s -serial chardev:s -chardev stdio,id=c -device virtio-serial-pci \
         -device virtconsole,chardev=c",
        &["stdio", "serial port"],
    );
}

#[test]
fn serial_and_console_share_the_chardev_kinds() {
    let c = run(
        "-chardev file,id=s,path=/s -serial chardev:s -chardev file,id=c,path=/c \
         -device virtio-serial-pci -device virtconsole,chardev=c",
    );
    assert_eq!(c.serial, crate::config::SerialConfig::File("/s".into()));
    assert_eq!(
        spawned(&c)[0].1,
        BuiltinBackend::Console(ConsoleEndpoint::File("/c".into()))
    );
}

#[test]
fn stdio_console_with_the_serial_port_elsewhere() {
    let c = run(
        "-serial none -chardev stdio,id=c -device virtio-serial-pci -device virtconsole,chardev=c",
    );
    assert_eq!(
        spawned(&c)[0].1,
        BuiltinBackend::Console(ConsoleEndpoint::Stdio)
    );
}
