//! vhost-user-net with real guests: QEMU 7.2 (TCG) and accel (KVM) drive our `vhost-user-net`
//! backend. Tap mode: the guest pings the host through a tap and sends it 10 MiB over TCP
//! (byte count checked on the host). Peer mode: two QEMU guests on the two sockets of one
//! backend process ping each other.
//!
//! Needs root (or CAP_NET_ADMIN) for the taps: without it the tap tests fail saying so.
//! Under QEMU TCG the device uses `vectors=0` (INTx): with MSI-X, QEMU 7.2 under TCG segfaults
//! when vhost-user virtio-net starts (gdb: `vhost_net_start` → `msix_set_vector_notifiers` →
//! the vector-unmask irqfd path loads `proxy->vector_irqfd[vector]`, which is NULL without
//! KVM). accel uses MSI-X.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::{
    Backend, GuestOutput, KVM_BOOT_TIMEOUT, RunOutput, Tap, TestDir, VmCommand, bin, byte_sink,
    qemu, run_with_timeout, spawn_until, wait_for_path,
};

const QEMU_TIMEOUT: Duration = Duration::from_secs(120);
/// What the guest sends in the bulk test: dd bs=65536 count=160.
const BULK_BYTES: u64 = 160 * 65536;

fn start_backend(dir: &TestDir, args: &[&str]) -> Backend {
    Backend::spawn_logged(
        "vhost-user-net",
        &dir.join("net.sock"),
        args,
        &dir.join("backend.log"),
    )
}

fn backend_log(dir: &TestDir) -> String {
    std::fs::read_to_string(dir.join("backend.log")).unwrap_or_default()
}

/// A VM (QEMU or accel) with one vhost-user virtio-net device.
fn vm(
    smp: &str,
    sock: &Path,
    netdev_opts: &str,
    device_opts: &str,
    mac: &str,
    gcmd: &str,
) -> VmCommand {
    VmCommand::new()
        .smp(smp)
        .chardev("c1", sock)
        .arg(
            "-netdev",
            &format!("vhost-user,id=n0,chardev=c1{netdev_opts}"),
        )
        .device(&format!(
            "virtio-net-pci,netdev=n0,mac={mac},disable-legacy=on{device_opts}"
        ))
        .gcmd(gcmd)
}

fn run_qemu_tcg(vm: &VmCommand) -> RunOutput {
    vm.clone().accel("tcg").run_qemu(QEMU_TIMEOUT)
}

/// Three single pings (busybox's ping interval needs POSIX timers the test kernel lacks).
fn pings(ip: Ipv4Addr) -> String {
    format!("ping -c 1 {ip} && ping -c 1 {ip} && ping -c 1 {ip}")
}

fn replies(out: &RunOutput, from: Ipv4Addr) -> usize {
    out.stdout
        .lines()
        .filter(|l| l.contains(&format!("bytes from {from}")))
        .count()
}

fn tap_ping_and_bulk(queues: u16) {
    let tap = Tap::create(queues as u8, 200 + queues as u8);
    let dir = TestDir::new("net-qemu-tap");
    let q = queues.to_string();
    let backend = start_backend(
        &dir,
        &[
            "--tap",
            &tap.name,
            "--queues",
            &q,
            "--mac",
            "52:54:00:12:34:56",
        ],
    );
    let (port, sink) = byte_sink(tap.host, QEMU_TIMEOUT);
    let gcmd = format!(
        "echo queues $(ls /sys/class/net/eth0/queues | grep -c rx); \
         ip addr add {}/24 dev eth0 && ip link set eth0 up && {} && \
         dd if=/dev/zero bs=65536 count=160 | nc {} {port}",
        tap.guest,
        pings(tap.host),
        tap.host
    );
    // Linux uses min(vCPUs, queue pairs) pairs.
    let smp = if queues > 1 { "2,sockets=2" } else { "1" };
    let (netdev, device) = if queues > 1 {
        (format!(",queues={queues}"), ",mq=on,vectors=0".to_string())
    } else {
        (String::new(), ",vectors=0".to_string())
    };
    let out = run_qemu_tcg(&vm(
        smp,
        backend.socket(),
        &netdev,
        &device,
        "52:54:00:12:34:56",
        &gcmd,
    ));
    let log = backend_log(&dir);
    assert_eq!(out.guest_rc(), Some(0), "{}\n{log}", out.both());
    assert!(
        out.stdout.contains(&format!("queues {queues}")),
        "the guest must see {queues} queue pair(s)\n{}",
        out.both()
    );
    assert_eq!(replies(&out, tap.host), 3, "{}\n{log}", out.both());
    let got = sink
        .recv_timeout(Duration::from_secs(30))
        .expect("sink thread");
    assert_eq!(got, Ok(BULK_BYTES), "{}\n{log}", out.both());
}

/// QEMU TCG guest ↔ host through a tap: 3 pings and 10 MiB guest → host over TCP.
#[test]
fn qemu_tcg_tap_ping_and_bulk_transfer() {
    tap_ping_and_bulk(1);
}

/// The same with 2 queue pairs (a multi-queue tap, QEMU `queues=2` + `mq=on`).
#[test]
fn qemu_tcg_tap_two_queue_pairs() {
    tap_ping_and_bulk(2);
}

/// Peer mode: two QEMU TCG guests on the two sockets of one backend, no tap; A pings B
/// three times, B stays up meanwhile.
#[test]
fn qemu_tcg_peer_mode_two_guests_ping() {
    let dir = TestDir::new("net-qemu-peer");
    let sock_b = dir.join("b.sock");
    let backend = start_backend(&dir, &["--peer", sock_b.to_str().unwrap()]);
    assert!(wait_for_path(&sock_b, Duration::from_secs(10)));
    let a = Ipv4Addr::new(10, 199, 0, 1);
    let b = Ipv4Addr::new(10, 199, 0, 2);
    // B must be up before A pings it (a ping that gets no reply never returns: the test kernel
    // has no POSIX timers), and must stay up until A is done: wait for B's marker, then run A,
    // then stop B.
    let vm_b = vm(
        "1",
        &sock_b,
        "",
        ",vectors=0",
        "52:54:00:00:00:02",
        &format!(
            "ip addr add {b}/24 dev eth0 && ip link set eth0 up && echo PEER B READY && sleep 600"
        ),
    )
    .accel("tcg");
    let running_b = match spawn_until(
        Command::new(qemu()).args(vm_b.args()),
        "PEER B READY",
        QEMU_TIMEOUT,
    ) {
        Ok(r) => r,
        Err(out) => panic!(
            "guest B never came up:\n{}\n{}",
            out.both(),
            backend_log(&dir)
        ),
    };
    let out_a = run_qemu_tcg(&vm(
        "1",
        backend.socket(),
        "",
        ",vectors=0",
        "52:54:00:00:00:01",
        &format!(
            "ip addr add {a}/24 dev eth0 && ip link set eth0 up && {}",
            pings(b)
        ),
    ));
    let out_b = running_b.finish();
    let log = backend_log(&dir);
    assert_eq!(
        out_a.guest_rc(),
        Some(0),
        "{}\n{}\n{log}",
        out_a.both(),
        out_b.both()
    );
    assert_eq!(replies(&out_a, b), 3, "{}\n{log}", out_a.both());
    assert!(
        out_b.status.is_none(),
        "guest B exited before A was done:\n{}\n{log}",
        out_b.both()
    );
}

/// accel on KVM (one boot): the same command line as QEMU (MSI-X on): ping the host through
/// the tap and send it 512 KiB over TCP (slowly: this host's KVM emulates guest kernel code,
/// ~40 KB/s).
#[test]
fn accel_kvm_tap_ping_and_transfer() {
    let tap = Tap::create(9, 209);
    let dir = TestDir::new("net-accel-tap");
    let backend = start_backend(&dir, &["--tap", &tap.name]);
    let (port, sink) = byte_sink(tap.host, KVM_BOOT_TIMEOUT * 4);
    let gcmd = format!(
        "ip addr add {}/24 dev eth0 && ip link set eth0 up && {} && \
         dd if=/dev/zero bs=65536 count=8 | nc {} {port}",
        tap.guest,
        pings(tap.host),
        tap.host
    );
    let args = vm("1", backend.socket(), "", "", "52:54:00:12:34:59", &gcmd)
        .accel("kvm")
        .args();
    let out = run_with_timeout(Command::new(bin("accel")).args(&args), KVM_BOOT_TIMEOUT * 4);
    let log = backend_log(&dir);
    assert!(
        out.status.is_some(),
        "accel timed out\n{}\n{log}",
        out.both()
    );
    assert_eq!(out.guest_rc(), Some(0), "{}\n{log}", out.both());
    assert_eq!(replies(&out, tap.host), 3, "{}\n{log}", out.both());
    assert_eq!(out.code(), Some(0), "{}", out.both());
    let got = sink
        .recv_timeout(Duration::from_secs(30))
        .expect("sink thread");
    assert_eq!(got, Ok(8 * 65536), "{}\n{log}", out.both());
}

/// The interrupt count of the guest's line naming `queue` (e.g. `virtio0-output.1`) in the
/// `/proc/interrupts` lines it printed (summed over CPUs).
fn interrupts(out: &RunOutput, queue: &str) -> Option<u64> {
    out.stdout.lines().find(|l| l.contains(queue)).map(|l| {
        l.split_whitespace()
            .skip(1)
            .map_while(|w| w.parse::<u64>().ok())
            .sum()
    })
}

/// accel with `queues=2` + `mq=on` and 2 vCPUs: the guest driver asks for 2 queue pairs on
/// the control queue accel serves (VQ_PAIRS_SET at probe), accel enables pair 1 at the
/// backend, and traffic flows on both pairs (pings sent from each vCPU: XPS maps vCPU i to
/// transmit queue i; each transmit queue's interrupt count moves).
#[test]
fn accel_kvm_tap_two_queue_pairs_through_the_control_queue() {
    let tap = Tap::create(8, 208);
    let dir = TestDir::new("net-accel-mq");
    let backend = start_backend(&dir, &["--tap", &tap.name, "--queues", "2"]);
    let h = tap.host;
    let gcmd = format!(
        "echo queues $(ls /sys/class/net/eth0/queues | grep -c rx); \
         ip addr add {}/24 dev eth0 && ip link set eth0 up && \
         taskset 1 ping -c 1 {h} && taskset 2 ping -c 1 {h} && taskset 2 ping -c 1 {h} && \
         grep virtio /proc/interrupts",
        tap.guest
    );
    let args = vm(
        "2",
        backend.socket(),
        ",queues=2",
        ",mq=on",
        "52:54:00:12:34:58",
        &gcmd,
    )
    .accel("kvm")
    .args();
    let out = run_with_timeout(
        Command::new(bin("accel"))
            .args(&args)
            .env("RUST_LOG", "warn,accel::virtio::control=info"),
        KVM_BOOT_TIMEOUT * 4,
    );
    let log = backend_log(&dir);
    assert!(
        out.status.is_some(),
        "accel timed out\n{}\n{log}",
        out.both()
    );
    assert_eq!(out.guest_rc(), Some(0), "{}\n{log}", out.both());
    assert!(
        out.stdout.contains("queues 2"),
        "the guest must use 2 queue pairs\n{}",
        out.both()
    );
    assert!(
        !out.both().contains("Fail to set num of queue pairs"),
        "the guest's VQ_PAIRS_SET was refused\n{}",
        out.both()
    );
    assert!(
        out.stderr.contains("the driver uses 2 queue pair(s)"),
        "accel never saw VQ_PAIRS_SET 2\n{}",
        out.both()
    );
    assert_eq!(replies(&out, h), 3, "{}\n{log}", out.both());
    for q in ["output.0", "output.1", "input.0"] {
        let n = interrupts(&out, q);
        assert!(
            n.is_some_and(|n| n > 0),
            "no interrupts on {q}: {n:?}\n{}",
            out.both()
        );
    }
    assert_eq!(out.code(), Some(0), "{}", out.both());
}
