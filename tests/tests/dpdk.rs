//! A C net backend: DPDK's vhost PMD in Debian's `dpdk-testpmd` (DPDK 22.11, `dpdk-dev`),
//! without hugepages, as the guest's virtio-net backend. testpmd runs in `icmpecho` mode: it
//! answers ARP requests for any address with its port's MAC and turns ICMP echo requests into
//! replies, so the guest pings an address nobody else owns and gets answers only through the
//! backend. Checked: the guest's ping replies, and testpmd's own packet counters. The same
//! testpmd line serves accel and QEMU 7.2 (KVM).
//!
//! Needs `dpdk-testpmd` (`apt-get install dpdk-dev`; `.ci/run` installs it): without it the
//! tests say so and pass without running.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    GuestOutput, KVM_BOOT_TIMEOUT, KillOnDrop, RunOutput, TestDir, VmCommand, wait_for_path,
};
use nix::sys::signal::Signal;
use vu_testkit::driver::DriverOptions;
use vu_testkit::driver::net::{NetDriver, SMALL_RX_BUFFER};

const TESTPMD: &str = "dpdk-testpmd";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 198, 0, 1);
/// Any address: testpmd answers every ARP request and echoes every ping.
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 198, 0, 2);
const PINGS: usize = 3;

fn testpmd() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {TESTPMD}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// The testpmd line (the backend's side of the socket: `client=0`, testpmd listens).
///
/// - `--no-huge -m 512`: DPDK's own memory from ordinary pages; the guest's memory is the
///   VMM's memfd, which the vhost library maps from SET_MEM_TABLE's fds.
/// - `--total-num-mbufs=8192`: the default pool (~155k mbufs, ~340 MB) does not fit in 512 MB.
/// - `--lcores 0@0,1@0`: the main lcore and the forwarding lcore (which busy-polls) share one
///   host CPU, leaving the other one to the guest.
/// - `--stats-period 1`: testpmd runs until a signal (not until stdin closes) and prints its
///   counters; on SIGINT it prints the final forward statistics and exits.
fn testpmd_args(sock: &Path, prefix: &str) -> Vec<String> {
    [
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--file-prefix",
        prefix,
        "--lcores",
        "0@0,1@0",
        "--vdev",
        &format!("net_vhost0,iface={},client=0,queues=1", sock.display()),
        "--",
        "--forward-mode=icmpecho",
        "-a",
        "--stats-period",
        "1",
        "--total-num-mbufs=8192",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Testpmd {
    child: KillOnDrop,
    log: PathBuf,
}

impl Testpmd {
    fn start(exe: &Path, dir: &TestDir, sock: &Path) -> Testpmd {
        let log = dir.join("testpmd.log");
        let file = File::create(&log).expect("testpmd log");
        // One prefix per testpmd (DPDK locks its runtime directory): the test's own directory
        // name is unique, tests of one binary may run at once.
        let prefix = format!(
            "accel-test-{}",
            dir.path().file_name().unwrap_or_default().to_string_lossy()
        );
        // `nice -n 19` (which execs testpmd: the pid stays the one we signal): the forwarding
        // lcore busy-polls, and at normal priority it took a whole core from the VMs of both
        // test lanes (a QEMU guest there reached init after 149 s and missed its deadline in
        // CI). A guest that waits for a reply halts its vCPU, so testpmd still gets that CPU.
        let child = Command::new("nice")
            .args(["-n", "19"])
            .arg(exe)
            .args(testpmd_args(sock, &prefix))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        let t = Testpmd {
            child: KillOnDrop(child),
            log,
        };
        // EAL's start-up (memory, mbuf pools) at nice 19 gets little CPU while both lanes'
        // VMs and another busy process run: in a local CI run beside a fuzzer pinned to one
        // core, testpmd was still at "Selected IOVA mode" after 30 s. A generous deadline.
        assert!(
            wait_for_path(sock, Duration::from_secs(180)),
            "testpmd did not create {}\n{}",
            sock.display(),
            t.output()
        );
        t
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT: testpmd stops forwarding, prints its final statistics and exits.
    fn stop(mut self) -> String {
        let status = self
            .child
            .signal_and_wait(Signal::SIGINT, Duration::from_secs(30));
        let out = self.output();
        assert!(status.is_some(), "testpmd did not exit on SIGINT\n{out}");
        out
    }
}

/// The largest `RX-packets:` / `TX-packets:` value testpmd printed (its counters only grow).
fn packets(log: &str, key: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(key)? + key.len()..];
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

fn replies(out: &RunOutput) -> usize {
    out.stdout
        .lines()
        .filter(|l| l.contains(&format!("bytes from {PEER_IP}")))
        .count()
}

/// The guest: `extra` properties on its virtio-net-pci; it prints `PACKED` and the
/// VIRTIO_F_RING_PACKED bit (34) of the features it negotiated, then pings.
fn guest_vm(sock: &Path, extra: &str) -> VmCommand {
    let ping = format!("ping -c 1 {PEER_IP}");
    let pings = vec![ping; PINGS].join(" && ");
    VmCommand::new()
        .chardev("c1", sock)
        .arg("-netdev", "vhost-user,id=n0,chardev=c1")
        .device(&format!(
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:60,disable-legacy=on{extra}"
        ))
        .gcmd(&format!(
            "echo PACKED $(cut -c35 /sys/class/net/eth0/device/features) && \
             ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up && {pings}"
        ))
}

/// Boots `vm` under `program` against a fresh testpmd; asserts the pings came back through
/// it and that its counters saw them. Returns the VMM's output and testpmd's log.
fn pings_through_testpmd(
    name: &str,
    extra: &str,
    run: impl FnOnce(VmCommand) -> RunOutput,
) -> Option<(RunOutput, String)> {
    let Some(exe) = testpmd() else {
        eprintln!("SKIPPED {name}: {TESTPMD} not found (apt-get install dpdk-dev)");
        return None;
    };
    let dir = TestDir::new(name);
    let sock = dir.join("vhost.sock");
    let pmd = Testpmd::start(&exe, &dir, &sock);
    let out = run(guest_vm(&sock, extra));
    let log = pmd.stop();
    let ctx = format!("{}\ntestpmd:\n{log}", out.both());
    assert_eq!(out.guest_rc(), Some(0), "guest command failed\n{ctx}");
    assert_eq!(replies(&out), PINGS, "ping replies\n{ctx}");
    // At least one ARP request and the echo requests in, as many answers out.
    let (rx, tx) = (packets(&log, "RX-packets:"), packets(&log, "TX-packets:"));
    assert!(rx > PINGS as u64, "testpmd received {rx} packets\n{ctx}");
    assert!(tx > PINGS as u64, "testpmd sent {tx} packets\n{ctx}");
    Some((out, log))
}

/// The PACKED line the guest printed: its VIRTIO_F_RING_PACKED bit.
fn packed_bit(out: &RunOutput) -> Option<&str> {
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("PACKED "))
        .map(str::trim)
}

/// An ARP request for `PEER_IP` from `mac` / `GUEST_IP` (padded to the 60-byte minimum).
fn arp_request(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(mac);
    f.extend(GUEST_IP.octets());
    f.extend([0; 6]);
    f.extend(PEER_IP.octets());
    f.resize(60, 0);
    f
}

/// Without a VM: the frontend session accel uses (vu-frontend, through the test kit's
/// userspace driver), with the feature set accel acks for net (no control-queue bits, no
/// MQ), against testpmd: an ARP request goes out and testpmd's ARP reply comes back.
#[test]
fn frontend_session_gets_an_arp_reply_from_dpdk_testpmd() {
    let Some(exe) = testpmd() else {
        eprintln!("SKIPPED: {TESTPMD} not found (apt-get install dpdk-dev)");
        return;
    };
    let dir = TestDir::new("dpdk-session");
    let sock = dir.join("vhost.sock");
    let pmd = Testpmd::start(&exe, &dir, &sock);
    let t = Duration::from_secs(10);
    let not_acked =
        vu_spec::net::CONTROL_QUEUE_FEATURES | 1 << vu_spec::net::VIRTIO_NET_F_MQ | 1 << 21; // GUEST_ANNOUNCE
    let opts = DriverOptions {
        num_queues: 2,
        features: !not_acked,
        ..DriverOptions::default()
    };
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x61];
    let reply = (|| {
        let mut net = NetDriver::connect(&sock, t, opts)?;
        net.post_rx(0, SMALL_RX_BUFFER, 8)?;
        net.send(0, &arp_request(mac), t)?;
        net.recv(0, t)
    })();
    let log = pmd.stop();
    let reply = reply.unwrap_or_else(|e| panic!("{e}\ntestpmd:\n{log}"));
    let f = &reply.frame;
    assert!(f.len() >= 42, "{f:?}\n{log}");
    assert_eq!(&f[..6], &mac, "to us\n{log}");
    assert_eq!(&f[12..14], &[0x08, 0x06], "ARP\n{log}");
    assert_eq!(&f[20..22], &[0, 2], "an ARP reply\n{log}");
    assert_eq!(
        &f[28..32],
        &PEER_IP.octets(),
        "for the address asked\n{log}"
    );
    assert_eq!(&f[38..42], &GUEST_IP.octets(), "to our address\n{log}");
    assert!(packets(&log, "RX-packets:") >= 1, "{log}");
}

#[test]
fn accel_pings_through_dpdk_testpmd_vhost_pmd() {
    if let Some((out, _)) = pings_through_testpmd("dpdk-accel", "", |vm| {
        vm.accel("kvm").run_accel(KVM_BOOT_TIMEOUT * 4)
    }) {
        assert_eq!(
            packed_bit(&out),
            Some("0"),
            "split rings by default\n{}",
            out.both()
        );
    }
}

/// `packed=on`: testpmd's vhost PMD offers packed rings, so accel offers them (as QEMU does)
/// and the guest's driver takes them: the data queues are DPDK's packed rings, and the control
/// queue, which accel serves itself, is a packed ring too (the guest's `ip link set up` sends
/// its receive-mode commands through it and waits for the answers before the pings).
#[test]
fn accel_negotiates_packed_rings_with_dpdk_on_packed_on() {
    if let Some((out, _)) = pings_through_testpmd("dpdk-accel-packed", ",packed=on", |vm| {
        vm.accel("kvm").run_accel(KVM_BOOT_TIMEOUT * 4)
    }) {
        assert_eq!(
            packed_bit(&out),
            Some("1"),
            "packed ring negotiated\n{}",
            out.both()
        );
    }
}

/// The same testpmd line under QEMU 7.2 on this host's KVM (which needs
/// `arch-capabilities=off`: QEMU would set an MSR the emulating KVM refuses). `acpi=off`
/// (QEMU merges -machine options): with ACPI the guest evaluates QEMU pc's `\_SB.PCI0._PRT`,
/// an AML loop over every slot that runs in KVM's instruction emulator on a kvm_pvm host and
/// hits ACPICA's 30 s loop timeout (`AE_AML_LOOP_TIMEOUT`, seen in CI), so the boot alone
/// could outlast the deadline. This test is about testpmd's data path, not ACPI.
#[test]
fn qemu_pings_through_dpdk_testpmd_vhost_pmd() {
    pings_through_testpmd("dpdk-qemu", "", |vm| {
        vm.accel("kvm")
            .arg("-cpu", "host,arch-capabilities=off")
            .arg("-machine", "acpi=off")
            .run_qemu(KVM_BOOT_TIMEOUT * 4)
    });
}
