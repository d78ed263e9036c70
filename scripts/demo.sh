#!/usr/bin/env bash
# The demo VM: accel boots the test guest with four virtio devices, each served by its own
# vhost-user backend process (blk, net, rng, console), on a QEMU-style command line.
#
#   scripts/demo.sh [--smp N] [--mem MIB] [--kernel FILE] [--initrd FILE] [--gcmd "CMD"] [--qemu]
#                   [--deadline SECONDS]
#
# Defaults (embedded): -smp 2, -m 256, the test guest from scripts/guest.sh (vmlinux +
# initramfs.cpio), a 64 MiB scratch disk, net on a tap device when run as root (else the net
# backend's peer mode with nobody on the other side), and a guest command that exercises every
# device. --qemu runs the same command line under qemu-system-x86_64 -accel tcg instead (no
# console device there: QEMU 7.2 has no vhost-user console frontend).
#
# Ends with a verdict: "demo.sh: PASS" and exit 0 when every device answered (the guest read
# the disk's greeting and its write landed in the image, read the rng, wrote to the console,
# brought its link up); otherwise one "demo.sh: FAIL: <device>: <what>" line per device that
# did not, and exit 1. The VM gets --deadline seconds (default 900: a boot takes ~20 s on an
# idle kvm_pvm host, minutes on a busy one); past it the VM is stopped and the verdict says
# which device did not answer.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SMP=2 MEM=256 KERNEL="" INITRD="" GCMD="" VMM=accel DEADLINE=900
while [ $# -gt 0 ]; do
  case $1 in
    --smp) SMP=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --kernel) KERNEL=$2; shift 2 ;;
    --initrd) INITRD=$2; shift 2 ;;
    --gcmd) GCMD=$2; shift 2 ;;
    --qemu) VMM=qemu; shift ;;
    --deadline) DEADLINE=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
say() { echo "demo.sh: $*" >&2; }

say "[1/4] building accel and the backends (release; a first build takes a few minutes)"
cargo build --release --workspace --bins --manifest-path "$ROOT/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
say "[2/4] finding the test guest (scripts/guest.sh builds it when there is no prebuilt copy)"
GUEST=$("$ROOT/scripts/guest.sh")
KERNEL=${KERNEL:-$GUEST/vmlinux}
INITRD=${INITRD:-$GUEST/initramfs.cpio}

RUN=$(mktemp -d /tmp/accel-demo.XXXXXX)
PIDS=()
TAP=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$TAP" ] && ip link del "$TAP" 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# The disk: 64 MiB, a greeting at offset 0 for the guest to read.
truncate -s 64M "$RUN/disk.img"
printf 'hello from the host disk\n' | dd of="$RUN/disk.img" conv=notrunc status=none

wait_sock() {
  for _ in $(seq 500); do [ -S "$1" ] && return 0; sleep 0.01; done
  say "FAIL: backend socket $1 never appeared; backend log:"
  cat "$RUN/backends.log" >&2
  exit 1
}
start() { "$@" 2>>"$RUN/backends.log" & PIDS+=($!); }

say "[3/4] starting one vhost-user backend process per device (logs: $RUN/backends.log)"
start "$BIN/vhost-user-blk" --socket-path "$RUN/blk.sock" --image "$RUN/disk.img" --serial demo-disk
start "$BIN/vhost-user-rng" --socket-path "$RUN/rng.sock"
[ "$VMM" = accel ] && start "$BIN/vhost-user-console" --socket-path "$RUN/con.sock" --output "$RUN/console.txt"
NETCMD="ip link set eth0 up; ip link show eth0 | grep -q UP && echo DEMO-NET: link up"
if [ "$(id -u)" = 0 ] && [ -c /dev/net/tun ]; then
  TAP=accdemo$$
  ip tuntap add dev "$TAP" mode tap vnet_hdr
  ip addr add 10.99.0.1/24 dev "$TAP"
  ip link set "$TAP" up
  start "$BIN/vhost-user-net" --socket-path "$RUN/net.sock" --tap "$TAP"
  # One ping per run: busybox's ping interval needs POSIX timers, which the test kernel lacks.
  NETCMD="ip addr add 10.99.0.2/24 dev eth0; ip link set eth0 up; ping -c 1 10.99.0.1 && ping -c 1 10.99.0.1 && echo DEMO-NET: ping ok"
else
  start "$BIN/vhost-user-net" --socket-path "$RUN/net.sock" --peer "$RUN/net-peer.sock"
fi
for s in blk rng net; do wait_sock "$RUN/$s.sock"; done
[ "$VMM" = accel ] && wait_sock "$RUN/con.sock"

GCMD_GIVEN=$GCMD
if [ -z "$GCMD" ]; then
  GCMD="echo DEMO-DISK: \$(head -n1 /dev/vda); echo written by the guest | dd of=/dev/vda bs=512 seek=2048 conv=fsync 2>/dev/null;"
  GCMD+=" echo DEMO-RNG: \$(cat /sys/class/misc/hw_random/rng_current) \$(head -c 16 /dev/hwrng | md5sum);"
  [ "$VMM" = accel ] && GCMD+=" echo hello through virtio-console > /dev/hvc0;"
  GCMD+=" $NETCMD"
fi
APPEND="console=ttyS0 panic=-1 reboot=k quiet noreplace-smp noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm gcmd=\"$GCMD\""

# QEMU 7.2 under TCG crashes starting a vhost-user-net device with MSI-X (NULL vector_irqfd in
# its unmask path): give it no MSI-X vectors there. accel uses MSI-X.
NET_VECTORS=""
[ "$VMM" = qemu ] && NET_VECTORS=",vectors=0"
ARGS=(-machine pc -m "$MEM" -smp "$SMP,sockets=$SMP" -nographic -nodefaults -serial stdio -no-reboot
  -object memory-backend-memfd,id=mem,size="${MEM}M",share=on -numa node,memdev=mem
  -chardev socket,id=blk0,path="$RUN/blk.sock" -device vhost-user-blk-pci,chardev=blk0,disable-legacy=on
  -chardev socket,id=rng0,path="$RUN/rng.sock" -device vhost-user-rng-pci,chardev=rng0
  -chardev socket,id=net0,path="$RUN/net.sock" -netdev vhost-user,id=n0,chardev=net0
  -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,disable-legacy=on,romfile="$NET_VECTORS"
  -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND")
if [ "$VMM" = accel ]; then
  ARGS+=(-chardev socket,id=con0,path="$RUN/con.sock" -device vhost-user-console-pci,chardev=con0)
  CMD=("$BIN/accel" -accel kvm "${ARGS[@]}")
else
  CMD=(qemu-system-x86_64 -accel tcg "${ARGS[@]}")
fi
say "[4/4] booting the guest (deadline ${DEADLINE}s): ${CMD[*]}"
set +e
timeout --kill-after=10 "$DEADLINE" "${CMD[@]}" </dev/null | tee "$RUN/guest.log"
VMM_RC=${PIPESTATUS[0]}
set -e

echo "--- host side after the guest exited ---"
DISK_AT_1M=$(dd if="$RUN/disk.img" bs=512 skip=2048 count=1 status=none | tr -d '\0' | head -n1)
echo "disk at 1 MiB: $DISK_AT_1M"
[ -f "$RUN/console.txt" ] && echo "console backend received: $(cat "$RUN/console.txt")"

# The verdict: one line per device (or stage) that did not answer.
FAILS=()
log_has() { grep -q "$1" "$RUN/guest.log"; }
case $VMM_RC in
  0) ;;
  124|137) FAILS+=("vm: the guest did not finish within ${DEADLINE}s (stopped)") ;;
  *) FAILS+=("vm: $VMM exited with status $VMM_RC") ;;
esac
log_has "GUEST UP" || FAILS+=("boot: the guest never reached its init")
if [ -z "$GCMD_GIVEN" ]; then
  log_has "DEMO-DISK: hello from the host disk" \
    || FAILS+=("vhost-user-blk: the guest did not read the disk's greeting")
  [ "$DISK_AT_1M" = "written by the guest" ] \
    || FAILS+=("vhost-user-blk: the guest's write did not reach the image")
  log_has "DEMO-RNG: virtio_rng" || FAILS+=("vhost-user-rng: the guest got no entropy from /dev/hwrng")
  log_has "DEMO-NET:" || FAILS+=("vhost-user-net: the guest's link did not come up (or no ping reply)")
  if [ "$VMM" = accel ]; then
    grep -q "hello through virtio-console" "$RUN/console.txt" 2>/dev/null \
      || FAILS+=("vhost-user-console: nothing arrived from the guest's /dev/hvc0")
  fi
fi
log_has "GUEST CMD RC: 0" || FAILS+=("guest command: did not finish with status 0")
if [ ${#FAILS[@]} -eq 0 ]; then
  say "PASS: every device answered ($VMM, -smp $SMP)"
  exit 0
fi
for f in "${FAILS[@]}"; do say "FAIL: $f"; done
if [ -s "$RUN/backends.log" ]; then
  say "last backend log lines:"
  tail -n 20 "$RUN/backends.log" >&2
fi
exit 1
