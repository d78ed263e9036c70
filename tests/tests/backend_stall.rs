//! accel with a backend that stops answering or dies at awkward moments (issue 8): a
//! SIGSTOPped backend freezes no vCPU and never shrinks the disk; a guest reset while a
//! reconnect is pending; an `-smp 2` guest with two devices whose backends are killed (one
//! twice in quick succession) and restarted, with I/O issued while they are down.
//!
//! Each test boots the test guest once under accel (KVM); run them one VM at a time. On the
//! development host (2 cores, kvm_pvm, other VMs queued) they took 1.5-3 minutes each.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::{
    Backend, KVM_BOOT_TIMEOUT, Streaming, TestDir, VmCommand, bin, md5_hex, xorshift_bytes,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const IMAGE_SIZE: usize = 1 << 20;
/// md5 of no bytes at all (what a read of a 0-sector disk hashes to).
const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// The guest hashes its whole disk with O_DIRECT: every byte comes from the backend.
const READ_DISK: &str = "dd if=/dev/vda bs=64k iflag=direct 2>/dev/null | md5sum";

fn image(dir: &TestDir, seed: u64) -> (std::path::PathBuf, String) {
    let path = dir.join("disk.img");
    let data = xorshift_bytes(seed | 1, IMAGE_SIZE);
    std::fs::write(&path, &data).expect("write image");
    (path, md5_hex(&data))
}

fn blk(sock: &Path, image: &Path, log: &Path) -> Backend {
    Backend::spawn_logged(
        "vhost-user-blk",
        sock,
        &["--image", image.to_str().unwrap()],
        log,
    )
}

fn rng(sock: &Path, log: &Path) -> Backend {
    Backend::spawn_logged("vhost-user-rng", sock, &[] as &[&str], log)
}

fn pid(b: &Backend) -> Pid {
    Pid::from_raw(b.pid() as i32)
}

/// The first word after `marker ` on a line the guest printed.
fn word_after(line: &str, marker: &str) -> String {
    line.split_once(marker)
        .map(|(_, rest)| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

/// A SIGSTOPped blk backend while the guest keeps printing on the serial console, reads its
/// disk size (sysfs) and its cache type (a device config read, forwarded to the backend as
/// GET_CONFIG before this fix) every second, starts an O_DIRECT read of the disk, and reads
/// entropy from a second device (rng). The console keeps going, the rng device answers, the
/// size stays 2048 sectors, the device never reports NEEDS_RESET
/// (no `reconnect=`: before the fix the 5 s reply timeout made it NEEDS_RESET for good and
/// the disk 0 sectors), and after SIGCONT the pending read completes with the right bytes.
#[test]
fn stopped_backend_freezes_no_vcpu_and_keeps_the_disk() {
    let dir = TestDir::new("stall-sigstop");
    let (image, md5) = image(&dir, 0x5709);
    let sock = dir.join("blk.sock");
    let backend = blk(&sock, &image, &dir.join("backend.log"));
    let rsock = dir.join("rng.sock");
    let _rng = rng(&rsock, &dir.join("rng.log"));
    let sectors = (IMAGE_SIZE / 512).to_string();
    let gcmd = format!(
        "echo SIZE $(cat /sys/block/vda/size) $(cat /sys/block/vda/cache_type); \
         echo STOP-BACKEND-NOW; sleep 2; \
         ( echo MD5 $({READ_DISK}); echo DD-DONE ) & \
         i=0; while [ $i -lt 10 ]; do \
         echo TICK $i $(cat /sys/block/vda/size) $(cat /sys/block/vda/cache_type); \
         sleep 1; i=$((i+1)); done; \
         echo RNG $(head -c 32 /dev/hwrng | md5sum); \
         echo CONT-BACKEND-NOW; wait; \
         echo STATUS $(cat /sys/bus/virtio/devices/virtio0/status)"
    );
    let args = VmCommand::new()
        .accel("kvm")
        .smp("1")
        .chardev("c0", &sock)
        .device("vhost-user-blk-pci,chardev=c0,num-queues=1")
        .chardev("c1", &rsock)
        .device("vhost-user-rng-pci,chardev=c1")
        .gcmd(&gcmd)
        .args();
    let mut vm = Streaming::spawn(Command::new(bin("accel")).args(&args));
    let size = vm.expect_start("SIZE ", KVM_BOOT_TIMEOUT * 3);
    assert_eq!(word_after(&size, "SIZE "), sectors, "{}", vm.output());
    vm.expect_start("STOP-BACKEND-NOW", Duration::from_secs(60));
    kill(pid(&backend), Signal::SIGSTOP).expect("SIGSTOP");

    // Ten ticks, each with a config read, while the backend is stopped: the single vCPU
    // keeps running and the disk keeps its size.
    for i in 0..10 {
        let tick = vm.expect_start(&format!("TICK {i} "), Duration::from_secs(60));
        let mut words = tick.split_whitespace().skip(2);
        assert_eq!(
            words.next(),
            Some(sectors.as_str()),
            "size while stopped: {tick}\n{}",
            vm.output()
        );
        assert_eq!(
            words.next(),
            Some("write"),
            "cache type while stopped: {tick}\n{}",
            vm.output()
        );
    }
    let line = vm.expect_start("RNG ", Duration::from_secs(60));
    let entropy = word_after(&line, "RNG ");
    assert!(
        entropy.len() == 32 && entropy != EMPTY_MD5,
        "the other device while blk is stopped: {line}\n{}",
        vm.output()
    );
    vm.expect_start("CONT-BACKEND-NOW", Duration::from_secs(60));
    assert!(
        !vm.seen
            .iter()
            .any(|l| l.trim_start().starts_with("DD-DONE")),
        "the read finished while the backend was stopped?\n{}",
        vm.output()
    );
    kill(pid(&backend), Signal::SIGCONT).expect("SIGCONT");
    let line = vm.expect_start("MD5 ", Duration::from_secs(120));
    assert_eq!(word_after(&line, "MD5 "), md5, "{}", vm.output());
    let status = vm.expect_start("STATUS ", Duration::from_secs(60));
    let value = u32::from_str_radix(word_after(&status, "STATUS ").trim_start_matches("0x"), 16)
        .unwrap_or(0);
    assert_eq!(
        value & 0x4f,
        0x0f,
        "no NEEDS_RESET: {status}\n{}",
        vm.output()
    );
    vm.expect("GUEST CMD RC: 0", Duration::from_secs(60));
    let exit = vm.child.0.wait().expect("wait");
    vm.drain(Duration::from_secs(2));
    assert!(exit.success(), "accel exit: {exit:?}\n{}", vm.output());
    assert!(!vm.output().contains("needs reset"), "{}", vm.output());
}

/// The backend is killed and the guest reboots before it is back (`reconnect=1`): the reset
/// and the new boot's probe (config from the cache, DRIVER_OK parked until the reconnect)
/// happen while the reconnect is pending; once a new backend starts, the parked activation
/// runs and the new boot reads the disk with the right bytes.
#[test]
fn guest_reset_while_a_reconnect_is_pending() {
    let dir = TestDir::new("stall-reset");
    let (image, md5) = image(&dir, 0x4e5e7);
    let sock = dir.join("blk.sock");
    let log = dir.join("backend.log");
    let backend = blk(&sock, &image, &log);
    let gcmd = format!(
        "echo SIZE $(cat /sys/block/vda/size); echo MD5 $({READ_DISK}); \
         echo KILL-BACKEND-NOW; sleep 2"
    );
    let args = VmCommand::new()
        .accel("kvm")
        .smp("1")
        .no_reboot(false)
        .chardev_opts("c0", &sock, ",reconnect=1")
        .device("vhost-user-blk-pci,chardev=c0,num-queues=1")
        .gcmd(&gcmd)
        .args();
    let mut vm = Streaming::spawn(Command::new(bin("accel")).args(&args));
    let line = vm.expect_start("MD5 ", KVM_BOOT_TIMEOUT * 3);
    assert_eq!(word_after(&line, "MD5 "), md5, "boot 1\n{}", vm.output());
    vm.expect_start("KILL-BACKEND-NOW", Duration::from_secs(60));
    drop(backend);
    vm.expect("GUEST DONE", Duration::from_secs(60));
    // Boot 2 probes the device with the backend away: its activation waits for it.
    vm.expect("retried after a reconnect", KVM_BOOT_TIMEOUT * 3);
    let _backend2 = blk(&sock, &image, &log);
    let size = vm.expect_start("SIZE ", KVM_BOOT_TIMEOUT * 4);
    assert_eq!(
        word_after(&size, "SIZE "),
        (IMAGE_SIZE / 512).to_string(),
        "boot 2 saw the disk's size\n{}",
        vm.output()
    );
    let line = vm.expect_start("MD5 ", Duration::from_secs(120));
    assert_eq!(word_after(&line, "MD5 "), md5, "boot 2\n{}", vm.output());
    let exit = vm.terminate();
    vm.drain(Duration::from_secs(2));
    assert!(exit.success(), "accel exit: {exit:?}\n{}", vm.output());
    assert!(!vm.output().contains("needs reset"), "{}", vm.output());
}

/// Two vCPUs, two devices (blk, rng). The blk backend is stopped and the rng backend
/// killed while the guest runs; the guest sets the disk's cache mode (a config write the
/// stopped backend cannot take) and reads it back, then issues a disk read and an entropy
/// read. The stopped blk backend is killed (its hang-up ends the request the control thread
/// was waiting on), comes back, is killed again at once (during or right after the
/// reconnect) and comes back again; the rng backend comes back once. Both pending reads
/// complete: the first completions after the reconnect reach the guest through the same
/// irqfds (call fds) and MSI routes as before, and the disk bytes are right. The new blk
/// backend got the guest's cache mode.
#[test]
fn smp2_blk_and_rng_survive_backend_stops_and_kills() {
    let dir = TestDir::new("stall-smp2");
    let (image, md5) = image(&dir, 0x5a52);
    let (bsock, rsock) = (dir.join("blk.sock"), dir.join("rng.sock"));
    let (blog, rlog) = (dir.join("blk.log"), dir.join("rng.log"));
    let b = blk(&bsock, &image, &blog);
    let r = rng(&rsock, &rlog);
    let rng_read = "head -c 32 /dev/hwrng | md5sum";
    let gcmd = format!(
        "echo MD5 $({READ_DISK}); echo RNG $({rng_read}); echo STOP-BLK-KILL-RNG-NOW; sleep 3; \
         echo write through > /sys/block/vda/cache_type; \
         echo CT1 $(cat /sys/block/vda/cache_type); \
         echo IO-WHILE-DOWN; ( echo MD5B $({READ_DISK}) ) & ( echo RNGB $({rng_read}) ) & \
         wait; echo CT2 $(cat /sys/block/vda/cache_type); echo ALL-BACK"
    );
    let args = VmCommand::new()
        .accel("kvm")
        .smp("2,sockets=2")
        .chardev_opts("c0", &bsock, ",reconnect=1")
        .device("vhost-user-blk-pci,chardev=c0,num-queues=2")
        .chardev_opts("c1", &rsock, ",reconnect=1")
        .device("vhost-user-rng-pci,chardev=c1")
        .gcmd(&gcmd)
        .args();
    let mut vm = Streaming::spawn(Command::new(bin("accel")).args(&args));
    let line = vm.expect_start("MD5 ", KVM_BOOT_TIMEOUT * 3);
    assert_eq!(word_after(&line, "MD5 "), md5, "{}", vm.output());
    let line = vm.expect_start("RNG ", Duration::from_secs(60));
    let rng1 = word_after(&line, "RNG ");
    assert!(
        rng1.len() == 32 && rng1 != EMPTY_MD5,
        "{line}\n{}",
        vm.output()
    );
    vm.expect_start("STOP-BLK-KILL-RNG-NOW", Duration::from_secs(60));
    kill(pid(&b), Signal::SIGSTOP).expect("SIGSTOP");
    drop(r);
    let line = vm.expect_start("CT1 ", Duration::from_secs(60));
    assert!(
        line.trim_end().ends_with("CT1 write through"),
        "{line}\n{}",
        vm.output()
    );
    vm.expect_start("IO-WHILE-DOWN", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    // blk: the stopped process killed, back, killed again within the reconnect interval,
    // back again.
    drop(b);
    std::thread::sleep(Duration::from_millis(1500));
    let b = blk(&bsock, &image, &blog);
    std::thread::sleep(Duration::from_millis(700));
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    let _b = blk(&bsock, &image, &blog);
    let _r = rng(&rsock, &rlog);
    // The two reads run in parallel: their lines come in either order, before ALL-BACK.
    vm.expect_start("ALL-BACK", Duration::from_secs(180));
    let printed = |prefix: &str| {
        vm.seen
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| word_after(l, prefix))
            .unwrap_or_default()
    };
    assert_eq!(printed("MD5B "), md5, "{}", vm.output());
    let rng2 = printed("RNGB ");
    assert!(
        rng2.len() == 32 && rng2 != EMPTY_MD5 && rng2 != rng1,
        "{rng2}\n{}",
        vm.output()
    );
    assert!(
        vm.output().contains("CT2 write through"),
        "the cache mode the guest chose, after the reconnects\n{}",
        vm.output()
    );
    vm.expect("GUEST CMD RC: 0", Duration::from_secs(60));
    let exit = vm.child.0.wait().expect("wait");
    vm.drain(Duration::from_secs(2));
    let out = vm.output();
    assert!(exit.success(), "accel exit: {exit:?}\n{out}");
    assert!(!out.contains("needs reset"), "{out}");
    assert!(
        out.matches("reconnected to vhost-user backend").count() >= 2,
        "both devices reconnected\n{out}"
    );
}
