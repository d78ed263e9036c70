//! Hotplug over QMP on `-M pc` (ACPI PCI hotplug): a vhost-user-blk disk is added to a
//! running guest (chardev-add + device_add), the guest finds it and reads it (md5 of the
//! image's bytes), it is removed (device_del), `DEVICE_DELETED` arrives once the guest has
//! ejected it, the guest no longer has it, and the backend logs that the frontend left. Then
//! a `device_del` the guest cannot answer (the VM is paused) must not hang the VMM: the
//! command returns at once, a repeat returns `{}` too (QEMU 7.2 on pc asks the guest
//! again), no event comes, QMP still answers and `quit` exits 0. The same script runs against QEMU 7.2 (TCG) for the
//! replies' and events' shape.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{
    Backend, KVM_BOOT_TIMEOUT, QmpClient, Streaming, TestDir, VmCommand, bin, md5_hex, qemu,
    xorshift_bytes,
};
use serde_json::{Value, json};

const IMAGE_LEN: usize = 1 << 20;

/// The guest prints the state of /sys/block/vda whenever it changes (and the disk's md5
/// when it appears), once a second, until the host ends the VM.
const GUEST: &str = "p=start; while :; do if [ -e /sys/block/vda ]; then s=vda; else s=none; \
fi; if [ $s != $p ]; then echo STATE $s; [ $s = vda ] && echo MD5 $(md5sum /dev/vda); p=$s; fi; \
sleep 1; done";

fn ok(reply: &Value, what: &str) {
    assert_eq!(reply.get("return"), Some(&json!({})), "{what}: {reply}");
}

fn error(reply: &Value, class: &str, what: &str) -> String {
    let e = reply
        .get("error")
        .unwrap_or_else(|| panic!("{what}: no error: {reply}"));
    assert_eq!(e["class"], class, "{what}: {reply}");
    e["desc"].as_str().unwrap_or_default().to_string()
}

/// Sends `quit` and waits up to 60 s for the VMM to exit; its exit status, if it did.
fn quit(qmp: &mut QmpClient, vm: &mut Streaming) -> Option<std::process::ExitStatus> {
    ok(&qmp.execute("quit", json!({})), "quit");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = vm.child.0.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `vmm` with `vm` and a QMP socket in `dir`: the running VM and its QMP client.
fn start_with_qmp(vmm: &Path, accel: &str, vm: VmCommand, dir: &TestDir) -> (Streaming, QmpClient) {
    let qmp_sock = dir.join("qmp.sock");
    let args = vm
        .accel(accel)
        .arg(
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp_sock.display()),
        )
        .args();
    let mut vm = Streaming::spawn(Command::new(vmm).args(&args));
    let qmp = QmpClient::connect(&qmp_sock, &mut vm.child.0, accel);
    (vm, qmp)
}

fn chardev_add(id: &str, path: &Path) -> Value {
    json!({"id": id, "backend": {"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": path.display().to_string()}},
        "server": false}}})
}

fn qdev_ids(qmp: &mut QmpClient) -> Vec<String> {
    let r = qmp.execute("query-pci", json!({}));
    r["return"][0]["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("query-pci: {r}"))
        .iter()
        .filter_map(|d| d["qdev_id"].as_str().map(str::to_string))
        .filter(|id| !id.is_empty())
        .collect()
}

/// The qdev ids `query-pci` lists behind the bridge whose qdev id is `bridge`.
fn qdev_ids_behind(qmp: &mut QmpClient, bridge: &str) -> Vec<String> {
    let r = qmp.execute("query-pci", json!({}));
    let top = r["return"][0]["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let port = top
        .iter()
        .find(|d| d["qdev_id"] == bridge)
        .unwrap_or_else(|| panic!("query-pci has no {bridge}: {r}"));
    port["pci_bridge"]["devices"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d["qdev_id"].as_str().map(str::to_string))
        .collect()
}

fn wait_log(path: &Path, pat: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(pat)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A vhost-user-blk backend serving an image of [`IMAGE_LEN`] seeded bytes, with its log.
struct HotDisk {
    bytes: Vec<u8>,
    sock: std::path::PathBuf,
    log: std::path::PathBuf,
    _backend: Backend,
}

impl HotDisk {
    fn start(dir: &TestDir, seed: u64) -> HotDisk {
        let image = dir.join("disk.img");
        let bytes = xorshift_bytes(seed, IMAGE_LEN);
        std::fs::write(&image, &bytes).expect("image");
        let sock = dir.join("blk.sock");
        let log = dir.join("blk.log");
        let backend = Backend::spawn_logged(
            "vhost-user-blk",
            &sock,
            &["--image", image.to_str().unwrap(), "--num-queues", "1"],
            &log,
        );
        HotDisk {
            bytes,
            sock,
            log,
            _backend: backend,
        }
    }
}

fn hotplug_disk(vmm: &Path, accel: &str, boot: Duration) {
    let dir = TestDir::new(&format!("hotplug-{accel}"));
    // `_backend` (not `_`) keeps the backend running to the end of the test.
    let HotDisk {
        bytes,
        sock,
        log,
        _backend,
    } = HotDisk::start(&dir, 0x5eed_0fd1_5c00);
    let vm_cmd = VmCommand::new().gcmd(GUEST);
    let (mut vm, mut qmp) = start_with_qmp(vmm, accel, vm_cmd, &dir);
    vm.expect("STATE none", boot);

    // Errors first, with QEMU's classes.
    let r = qmp.execute("device_add", json!({"driver": "no-such-device", "id": "x"}));
    let unknown = error(&r, "GenericError", "unknown driver");
    let r = qmp.execute("device_del", json!({"id": "nothing"}));
    let not_found = error(&r, "DeviceNotFound", "device_del unknown id");
    let r = qmp.execute(
        "device_add",
        json!({"driver": "vhost-user-blk-pci", "chardev": "nochardev", "id": "x"}),
    );
    let no_chardev = error(&r, "GenericError", "unknown chardev");
    assert_eq!(
        no_chardev,
        "Property 'vhost-user-blk.chardev' can't find value 'nochardev'"
    );
    assert_eq!(unknown, "'no-such-device' is not a valid device model name");
    assert_eq!(not_found, "Device 'nothing' not found");

    // Add: the guest sees the disk and reads the image's bytes.
    ok(
        &qmp.execute("chardev-add", chardev_add("c0", &sock)),
        "chardev-add",
    );
    let r = qmp.execute("chardev-add", chardev_add("c0", &sock));
    let dup_chardev = error(&r, "GenericError", "duplicate chardev");
    assert_eq!(dup_chardev, "Chardev with id 'c0' already exists");
    let blk = json!({"driver": "vhost-user-blk-pci", "chardev": "c0", "id": "hd1",
                     "num-queues": 1});
    ok(&qmp.execute("device_add", blk.clone()), "device_add");
    let r = qmp.execute("device_add", blk);
    let dup_id = error(&r, "GenericError", "duplicate id");
    assert_eq!(dup_id, "Duplicate device ID 'hd1'");
    let r = qmp.execute("chardev-remove", json!({"id": "c0"}));
    let busy = error(&r, "GenericError", "chardev in use");
    assert_eq!(busy, "Chardev 'c0' is busy");
    assert!(qdev_ids(&mut qmp).contains(&"hd1".to_string()));
    vm.expect("STATE vda", Duration::from_secs(300));
    let md5 = vm.expect_start("MD5 ", Duration::from_secs(300));
    assert!(
        md5.contains(&md5_hex(&bytes)),
        "guest md5 {md5:?}, image {}",
        md5_hex(&bytes)
    );
    assert!(
        wait_log(&log, "frontend connected", Duration::from_secs(10)),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Remove: {} at once, DEVICE_DELETED once the guest ejected it, the backend sees us go.
    ok(
        &qmp.execute("device_del", json!({"id": "hd1"})),
        "device_del",
    );
    let deleted = qmp
        .wait_event("DEVICE_DELETED", Duration::from_secs(300))
        .unwrap_or_else(|| panic!("no DEVICE_DELETED\n{}", vm.seen.join("\n")));
    let mut events = vec![deleted.clone()];
    if deleted["data"].get("device").is_none() {
        // virtio-pci: the virtio child goes first, then the proxy with the id.
        let proxy = qmp
            .wait_event("DEVICE_DELETED", Duration::from_secs(60))
            .expect("the proxy's DEVICE_DELETED");
        events.push(proxy);
    }
    let last = events.last().unwrap();
    assert_eq!(
        last["data"],
        json!({"device": "hd1", "path": "/machine/peripheral/hd1"}),
        "{events:?}"
    );
    vm.expect("STATE none", Duration::from_secs(120));
    assert!(!qdev_ids(&mut qmp).contains(&"hd1".to_string()));
    // accel closes the connection when the device goes; QEMU keeps the chardev's socket
    // open until chardev-remove. Either way the backend sees the frontend leave.
    let left_at_unplug = wait_log(&log, "frontend disconnected", Duration::from_secs(5));
    ok(
        &qmp.execute("chardev-remove", json!({"id": "c0"})),
        "chardev-remove",
    );
    assert!(
        wait_log(&log, "frontend disconnected", Duration::from_secs(30)),
        "the backend did not see the frontend leave:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // A device_del the guest cannot answer: paused VM.
    ok(
        &qmp.execute("chardev-add", chardev_add("c1", &sock)),
        "chardev-add c1",
    );
    let blk = json!({"driver": "vhost-user-blk-pci", "chardev": "c1", "id": "hd2",
                     "num-queues": 1});
    ok(&qmp.execute("device_add", blk), "device_add hd2");
    vm.expect("STATE vda", Duration::from_secs(300));
    ok(&qmp.execute("stop", json!({})), "stop");
    let t = Instant::now();
    ok(
        &qmp.execute("device_del", json!({"id": "hd2"})),
        "device_del hd2",
    );
    ok(
        &qmp.execute("device_del", json!({"id": "hd2"})),
        "second device_del",
    );
    let took = t.elapsed();
    assert!(
        qmp.wait_event("DEVICE_DELETED", Duration::from_secs(3))
            .is_none(),
        "a paused guest ejected the disk"
    );
    let status = qmp.execute("query-status", json!({}));
    assert_eq!(status["return"]["status"], "paused", "{status}");
    assert!(qdev_ids(&mut qmp).contains(&"hd2".to_string()));
    let exit = quit(&mut qmp, &mut vm);
    assert!(
        exit.is_some_and(|s| s.success()),
        "{accel}: quit: {exit:?}\n{}",
        vm.seen.join("\n")
    );
    eprintln!(
        "{accel}: errors: unknown driver {unknown:?}; device_del unknown {not_found:?}; \
         unknown chardev {no_chardev:?}; duplicate chardev {dup_chardev:?}; duplicate id \
         {dup_id:?}; chardev busy {busy:?}; both device_dels took {took:?}; DEVICE_DELETED events {events:?}; backend left at unplug (before \
         chardev-remove): {left_at_unplug}"
    );
}

/// The guest prints its virtio devices (ids) and network interfaces whenever they change
/// (compared through an md5: no double quotes on the kernel command line).
const GUEST_LIST: &str = "p=start; while :; do s=$(cat /sys/bus/virtio/devices/*/device \
2>/dev/null); n=$(ls /sys/class/net); k=$(echo $s $n | md5sum | head -c 32); \
if [ $k != $p ]; then echo DEVS $s NETS $n; p=$k; fi; sleep 1; done";

/// Every other kind of the device table, added and removed on one running guest: a NIC on a
/// `netdev_add`ed vhost-user netdev, an entropy source and a vsock device. The guest's
/// drivers bind (virtio ids 1, 4 and 19 appear, `eth0` appears), then everything goes.
#[test]
fn accel_hotplugs_net_rng_and_vsock() {
    let dir = TestDir::new("hotplug-kinds");
    let net_sock = dir.join("net.sock");
    let peer = dir.join("peer.sock");
    let _net = Backend::spawn_logged(
        "vhost-user-net",
        &net_sock,
        &["--peer", peer.to_str().unwrap()],
        &dir.join("net.log"),
    );
    let source = dir.join("entropy");
    std::fs::write(&source, vec![b'Z'; 1 << 20]).unwrap();
    let rng_sock = dir.join("rng.sock");
    let _rng = Backend::spawn(
        "vhost-user-rng",
        &rng_sock,
        &["--source", source.to_str().unwrap()],
    );
    let vsock_sock = dir.join("vsock.sock");
    let uds = dir.join("vsock.uds");
    let _vsock = Backend::spawn_logged(
        "vhost-user-vsock",
        &vsock_sock,
        &["--guest-cid", "7", "--uds-path", uds.to_str().unwrap()],
        &dir.join("vsock.log"),
    );
    let vm_cmd = VmCommand::new()
        // A command-line netdev no NIC uses: QMP knows it as well as the ones it added.
        .chardev("c0", &dir.join("unused.sock"))
        .arg("-netdev", "vhost-user,id=n0,chardev=c0")
        .gcmd(GUEST_LIST);
    let (mut vm, mut qmp) = start_with_qmp(&bin("accel"), "kvm", vm_cmd, &dir);
    let first = vm.expect_start("DEVS", 4 * KVM_BOOT_TIMEOUT);
    assert!(!first.contains("0x0001"), "{first}");

    for (id, sock) in [("cn", &net_sock), ("cr", &rng_sock), ("cv", &vsock_sock)] {
        ok(&qmp.execute("chardev-add", chardev_add(id, sock)), id);
    }
    let r = qmp.execute(
        "device_add",
        json!({"driver": "virtio-net-pci", "netdev": "n1", "id": "nic1"}),
    );
    let no_netdev = error(&r, "GenericError", "netdev not added yet");
    assert_eq!(
        no_netdev,
        "Property 'virtio-net-device.netdev' can't find value 'n1'"
    );
    ok(
        &qmp.execute(
            "netdev_add",
            json!({"type": "vhost-user", "id": "n1", "chardev": "cn"}),
        ),
        "netdev_add",
    );
    for dev in [
        json!({"driver": "virtio-net-pci", "netdev": "n1", "id": "nic1",
               "mac": "52:54:00:12:34:99"}),
        json!({"driver": "vhost-user-rng-pci", "chardev": "cr", "id": "rng1"}),
        json!({"driver": "vhost-user-vsock-pci", "chardev": "cv", "id": "vs1"}),
    ] {
        ok(&qmp.execute("device_add", dev.clone()), &dev.to_string());
    }
    let ids = qdev_ids(&mut qmp);
    for id in ["nic1", "rng1", "vs1"] {
        assert!(ids.contains(&id.to_string()), "{ids:?}");
    }
    let all = vm
        .try_expect_by(
            |l| {
                l.trim_start().starts_with("DEVS")
                    && ["0x0001", "0x0004", "0x0013", "eth0"]
                        .iter()
                        .all(|w| l.contains(w))
            },
            Duration::from_secs(300),
        )
        .unwrap_or_else(|| panic!("the guest did not bind all three\n{}", vm.seen.join("\n")));

    for id in ["nic1", "rng1", "vs1"] {
        ok(&qmp.execute("device_del", json!({"id": id})), id);
    }
    let mut gone = Vec::new();
    while gone.len() < 3 {
        let e = qmp
            .wait_event("DEVICE_DELETED", Duration::from_secs(300))
            .unwrap_or_else(|| panic!("DEVICE_DELETED {gone:?}\n{}", vm.seen.join("\n")));
        if let Some(d) = e["data"]["device"].as_str() {
            assert_eq!(e["data"]["path"], format!("/machine/peripheral/{d}"));
            gone.push(d.to_string());
        }
    }
    gone.sort();
    assert_eq!(gone, ["nic1", "rng1", "vs1"]);
    let none = vm
        .try_expect_by(
            |l| l.trim_start().starts_with("DEVS") && !l.contains("0x") && !l.contains("eth0"),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|| panic!("devices left in the guest\n{}", vm.seen.join("\n")));
    assert!(qdev_ids(&mut qmp).is_empty());
    ok(
        &qmp.execute("netdev_del", json!({"id": "n1"})),
        "netdev_del",
    );
    // The command line's netdev: a duplicate id is refused, then it goes like n1.
    let r = qmp.execute(
        "netdev_add",
        json!({"type": "vhost-user", "id": "n0", "chardev": "cn"}),
    );
    assert_eq!(
        error(&r, "GenericError", "netdev_add n0"),
        "Duplicate ID 'n0' for netdev"
    );
    ok(
        &qmp.execute("netdev_del", json!({"id": "n0"})),
        "netdev_del n0",
    );
    let r = qmp.execute("netdev_del", json!({"id": "n0"}));
    assert_eq!(
        error(&r, "DeviceNotFound", "netdev_del n0 again"),
        "Device 'n0' not found"
    );
    for id in ["cn", "cr", "cv"] {
        ok(&qmp.execute("chardev-remove", json!({"id": id})), id);
    }
    let exit = quit(&mut qmp, &mut vm);
    assert!(exit.is_some_and(|s| s.success()), "quit: {exit:?}");
    eprintln!("added: {all}; removed: {none}");
}

/// On q35 the guest first prints what the kernel said about the PCIe port services and
/// `_OSC`, then the state of /sys/block/vda and, when the disk appears, its md5 and its
/// sysfs path under the second root port (00:1c.1, bus 02).
const GUEST_Q35: &str = "dmesg | grep -i -e pciehp -e _OSC -e pcieport; p=start; while :; do \
if [ -e /sys/block/vda ]; then s=vda; else s=none; fi; if [ $s != $p ]; then echo STATE $s; \
[ $s = vda ] && echo MD5 $(md5sum /dev/vda) && ls -d /sys/devices/pci0000:00/0000:00:1c.1/0000:02:00.0; \
p=$s; fi; sleep 1; done";

/// PCIe native hotplug on `-M q35`: two root ports, a vhost-user-blk disk added on the
/// second over QMP; Linux's pciehp brings it up (the guest
/// reads the image's bytes from it, at 02:00.0 under 00:1c.1); `device_del` presses the
/// attention button, the guest powers the slot off after its 5 s, `DEVICE_DELETED` arrives
/// (child, then proxy with the id), the disk is gone in the guest and the backend saw the
/// frontend leave. Then, for a disk on the first port, a `device_del` the guest cannot answer
/// (paused VM): `{}` at once, a
/// repeat within 5 s is refused as QEMU does, no event, QMP answers, `quit` exits 0.
#[test]
fn accel_hotplugs_a_disk_on_a_q35_root_port() {
    let dir = TestDir::new("hotplug-q35");
    // `_backend` (not `_`) keeps the backend running to the end of the test.
    let HotDisk {
        bytes,
        sock,
        log,
        _backend,
    } = HotDisk::start(&dir, 0x9e35_0fd1_5c00);
    let vm_cmd = VmCommand::new()
        .machine("q35")
        .device("pcie-root-port,id=rp1,bus=pcie.0,chassis=1,port=0x10,addr=0x1c.0,multifunction=on")
        .device("pcie-root-port,id=rp2,bus=pcie.0,chassis=2,port=0x11,addr=0x1c.1")
        .gcmd(GUEST_Q35);
    let started = Instant::now();
    let (mut vm, mut qmp) = start_with_qmp(&bin("accel"), "kvm", vm_cmd, &dir);
    vm.expect("STATE none", 4 * KVM_BOOT_TIMEOUT);
    let booted = started.elapsed();
    let dmesg: Vec<String> = vm
        .seen
        .iter()
        .filter(|l| l.contains("pcie"))
        .cloned()
        .collect();
    assert!(
        vm.seen
            .iter()
            .any(|l| l.contains("0000:00:1c.1: pciehp: Slot") && l.contains("AttnBtn+ PwrCtrl+")),
        "pciehp did not bind to the root port's slot\n{}",
        vm.seen.join("\n")
    );
    // The DSDT's _OSC ran (without it: "platform retains control of PCIe features
    // (AE_NOT_FOUND)").
    assert!(vm.seen.iter().any(|l| l.contains("_OSC: OS supports")));
    // ... and granted the OS native hot-plug (Linux's pciehp binds only then).
    assert!(
        vm.seen
            .iter()
            .any(|l| l.contains("_OSC: OS now controls") && l.contains("PCIeHotplug")),
        "_OSC did not hand PCIe hot-plug to the guest\n{}",
        vm.seen.join("\n")
    );
    assert!(
        !vm.seen
            .iter()
            .any(|l| l.contains("_OSC") && (l.contains("retains") || l.contains("failed"))),
        "{}",
        vm.seen.join("\n")
    );

    // An unknown bus and a bus that is not a root port's are refused.
    ok(
        &qmp.execute("chardev-add", chardev_add("c0", &sock)),
        "chardev-add",
    );
    let r = qmp.execute(
        "device_add",
        json!({"driver": "vhost-user-blk-pci", "chardev": "c0", "id": "hd1", "bus": "nope"}),
    );
    assert_eq!(
        error(&r, "GenericError", "unknown bus"),
        "Bus 'nope' not found"
    );

    let t = Instant::now();
    let blk = json!({"driver": "vhost-user-blk-pci", "chardev": "c0", "id": "hd1",
                     "num-queues": 1, "bus": "rp2"});
    ok(&qmp.execute("device_add", blk), "device_add");
    assert_eq!(qdev_ids_behind(&mut qmp, "rp2"), ["hd1"]);
    assert!(qdev_ids_behind(&mut qmp, "rp1").is_empty());
    vm.expect("STATE vda", Duration::from_secs(300));
    let md5 = vm.expect_start("MD5 ", Duration::from_secs(300));
    assert!(
        md5.contains(&md5_hex(&bytes)),
        "guest md5 {md5:?}, image {}",
        md5_hex(&bytes)
    );
    vm.expect(
        "/sys/devices/pci0000:00/0000:00:1c.1/0000:02:00.0",
        Duration::from_secs(30),
    );
    let added = t.elapsed();
    assert!(wait_log(
        &log,
        "frontend connected",
        Duration::from_secs(10)
    ));

    // Remove: the attention button, the guest's 5 s, its power-off, DEVICE_DELETED.
    let t = Instant::now();
    ok(
        &qmp.execute("device_del", json!({"id": "hd1"})),
        "device_del",
    );
    let r = qmp.execute("device_del", json!({"id": "hd1"}));
    assert_eq!(
        error(&r, "GenericError", "repeated device_del"),
        "Device hd1 is already in the process of unplug"
    );
    let child = qmp
        .wait_event("DEVICE_DELETED", Duration::from_secs(300))
        .unwrap_or_else(|| panic!("no DEVICE_DELETED\n{}", vm.seen.join("\n")));
    assert_eq!(
        child["data"],
        json!({"path": "/machine/peripheral/hd1/virtio-backend"})
    );
    let proxy = qmp
        .wait_event("DEVICE_DELETED", Duration::from_secs(10))
        .expect("the proxy's DEVICE_DELETED");
    assert_eq!(
        proxy["data"],
        json!({"device": "hd1", "path": "/machine/peripheral/hd1"})
    );
    let removed = t.elapsed();
    assert!(
        wait_log(&log, "frontend disconnected", Duration::from_secs(10)),
        "the backend did not see the frontend leave:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    vm.expect("STATE none", Duration::from_secs(120));
    assert!(qdev_ids_behind(&mut qmp, "rp2").is_empty());
    ok(
        &qmp.execute("chardev-remove", json!({"id": "c0"})),
        "chardev-remove",
    );

    // A device_del the guest cannot answer: paused VM. The disk goes to the other port, rp1:
    // a device plugged into rp2 right after DEVICE_DELETED can meet the guest still handling
    // that removal, as under QEMU (whose slot model accel follows). The slot's power-off latches
    // Presence Detect Changed; Linux's pciehp reads that event in its interrupt handler but
    // looks at presence only later, in its thread. If the new disk is present by then, pciehp
    // powers it on, takes the disk's own PDC + attention-button event as a removal, and
    // powers it off again: the guest, not `device_del`, deletes it. A CI run saw this:
    // `device_del` then found no hd2. A fresh slot has no stale event.
    ok(
        &qmp.execute("chardev-add", chardev_add("c1", &sock)),
        "chardev-add c1",
    );
    let blk = json!({"driver": "vhost-user-blk-pci", "chardev": "c1", "id": "hd2",
                     "num-queues": 1, "bus": "rp1"});
    ok(&qmp.execute("device_add", blk), "device_add hd2");
    ok(
        &qmp.execute("chardev-add", chardev_add("c2", &sock)),
        "chardev-add c2",
    );
    let r = qmp.execute(
        "device_add",
        json!({"driver": "vhost-user-blk-pci", "chardev": "c2", "id": "hd3", "bus": "rp1"}),
    );
    assert_eq!(
        error(&r, "GenericError", "a second device on rp1"),
        "PCI: slot 0 function 0 not available for vhost-user-blk-pci, in use"
    );
    vm.expect("STATE vda", Duration::from_secs(300));
    // pciehp turns the power indicator on after the driver bound; while it blinks QEMU
    // (and accel) refuse the unplug: stop until the request is taken.
    let since = Instant::now();
    let took = loop {
        ok(&qmp.execute("stop", json!({})), "stop");
        let t = Instant::now();
        let r = qmp.execute("device_del", json!({"id": "hd2"}));
        if r.get("return") == Some(&json!({})) {
            let r = qmp.execute("device_del", json!({"id": "hd2"}));
            assert_eq!(
                error(&r, "GenericError", "second device_del"),
                "Device hd2 is already in the process of unplug"
            );
            break t.elapsed();
        }
        assert_eq!(
            r["error"]["desc"],
            "Hot-unplug failed: guest is busy (power indicator blinking)",
            "device_del hd2: {r}\n{}",
            vm.seen.join("\n")
        );
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "the indicator blinks on"
        );
        ok(&qmp.execute("cont", json!({})), "cont");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        qmp.wait_event("DEVICE_DELETED", Duration::from_secs(3))
            .is_none(),
        "a paused guest released the disk"
    );
    let status = qmp.execute("query-status", json!({}));
    assert_eq!(status["return"]["status"], "paused", "{status}");
    let exit = quit(&mut qmp, &mut vm);
    assert!(
        exit.is_some_and(|s| s.success()),
        "quit: {exit:?}\n{}",
        vm.seen.join("\n")
    );
    eprintln!(
        "q35: boot {booted:?}; device_add to md5 {added:?}; device_del to DEVICE_DELETED \
         {removed:?}; both device_dels on a paused guest took {took:?}\n{}",
        dmesg.join("\n")
    );
}

#[test]
fn accel_hotplugs_a_disk_on_pc() {
    hotplug_disk(&bin("accel"), "kvm", 4 * KVM_BOOT_TIMEOUT);
}

#[test]
fn qemu_hotplugs_a_disk_on_pc() {
    hotplug_disk(&qemu(), "tcg", Duration::from_secs(120));
}

/// The guest waits for a virtio-rng to bind, then prints 1024 bytes' md5 once.
const GUEST_RNG: &str = "echo WAIT-$((1+1)); until ls /sys/bus/virtio/drivers/virtio_rng \
2>/dev/null | grep -q virtio; do sleep 1; done; echo RNG-$((40+2)); head -c 1024 /dev/hwrng | \
md5sum; while :; do sleep 1; done";

/// `chardev-add` with `"server": true`, as libvirt sends for a `mode='server'` vhost-user
/// interface (OVS-DPDK's `dpdkvhostuserclient`): the VMM listens when the command returns,
/// a client-mode backend connects, `device_add` of a vhost-user-rng-pci on the chardev gives
/// the guest the backend's bytes, `device_del` removes it and `chardev-remove` removes the
/// socket file (QEMU 7.2 does). Under accel this runs confined (the default): binding in the
/// directory of the command line's QMP socket is allowed.
fn hotplug_on_server_chardev(vmm: &Path, accel: &str, boot: Duration) {
    let dir = TestDir::new(&format!("hotplug-server-{accel}"));
    let sock = dir.join("rng.sock");
    let source = dir.join("entropy");
    std::fs::write(&source, vec![b'S'; 1 << 20]).unwrap();
    let vm_cmd = VmCommand::new().gcmd(GUEST_RNG);
    let (mut vm, mut qmp) = start_with_qmp(vmm, accel, vm_cmd, &dir);
    vm.expect("WAIT-2", boot);

    let server = json!({"id": "cs", "backend": {"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": sock.display().to_string()}},
        "server": true}}});
    ok(&qmp.execute("chardev-add", server), "chardev-add server");
    assert!(sock.exists(), "chardev-add returned before listening");
    let log = dir.join("rng.log");
    let _backend = Backend::spawn_logged(
        "vhost-user-rng",
        &sock,
        &["--client", "--source", source.to_str().unwrap()],
        &log,
    );
    if accel == "tcg" {
        // QEMU accepts in its main loop and its vhost-user-rng-pci realize does not wait
        // for a connection (7.2 aborts on an unconnected one); the chardev's filename loses
        // its "disconnected:" prefix once it has accepted. accel accepts in device_add.
        let deadline = Instant::now() + Duration::from_secs(30);
        while {
            let r = qmp.execute("query-chardev", json!({}));
            let cs = r["return"].as_array().and_then(|a| {
                a.iter()
                    .find(|c| c["label"] == "cs")
                    .map(|c| c["filename"].to_string())
            });
            cs.is_none_or(|f| f.contains("disconnected:"))
        } {
            assert!(Instant::now() < deadline, "the backend never connected");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    ok(
        &qmp.execute(
            "device_add",
            json!({"driver": "vhost-user-rng-pci", "chardev": "cs", "id": "rng0"}),
        ),
        "device_add",
    );
    let r = qmp.execute("chardev-remove", json!({"id": "cs"}));
    assert_eq!(error(&r, "GenericError", "busy"), "Chardev 'cs' is busy");
    vm.expect("RNG-42", Duration::from_secs(300));
    let want = format!("{}  -", md5_hex(&[b'S'; 1024]));
    let got = vm.expect_start(&want, Duration::from_secs(120));
    assert_eq!(got.trim(), want);

    ok(
        &qmp.execute("device_del", json!({"id": "rng0"})),
        "device_del",
    );
    loop {
        let e = qmp
            .wait_event("DEVICE_DELETED", Duration::from_secs(300))
            .unwrap_or_else(|| panic!("no DEVICE_DELETED\n{}", vm.seen.join("\n")));
        if e["data"]["device"] == "rng0" {
            break;
        }
    }
    ok(
        &qmp.execute("chardev-remove", json!({"id": "cs"})),
        "chardev-remove",
    );
    assert!(!sock.exists(), "chardev-remove left {}", sock.display());
    let exit = quit(&mut qmp, &mut vm);
    assert!(
        exit.is_some_and(|s| s.success()),
        "quit: {exit:?}\n{}",
        vm.seen.join("\n")
    );
}

#[test]
fn accel_hotplugs_on_a_server_chardev() {
    hotplug_on_server_chardev(&bin("accel"), "kvm", 4 * KVM_BOOT_TIMEOUT);
}

#[test]
fn qemu_hotplugs_on_a_server_chardev() {
    hotplug_on_server_chardev(&qemu(), "tcg", Duration::from_secs(120));
}
