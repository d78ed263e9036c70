#!/usr/bin/env bash
# The demo VM: accel boots the test guest with four virtio devices, each served by its own
# vhost-user backend process (blk, net, rng, console), on a QEMU-style command line.
#
#   scripts/demo.sh [--smp N] [--mem MIB] [--kernel FILE] [--initrd FILE] [--gcmd "CMD"] [--qemu]
#
# Defaults (embedded): -smp 2, -m 256, the test guest from scripts/guest.sh (vmlinux +
# initramfs.cpio), a 64 MiB scratch disk, net on a tap device when run as root (else the net
# backend's peer mode with nobody on the other side), and a guest command that exercises every
# device. --qemu runs the same command line under qemu-system-x86_64 -accel tcg instead (no
# console device there: QEMU 7.2 has no vhost-user console frontend).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SMP=2 MEM=256 KERNEL="" INITRD="" GCMD="" VMM=accel
while [ $# -gt 0 ]; do
  case $1 in
    --smp) SMP=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --kernel) KERNEL=$2; shift 2 ;;
    --initrd) INITRD=$2; shift 2 ;;
    --gcmd) GCMD=$2; shift 2 ;;
    --qemu) VMM=qemu; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done

cargo build --release -q --workspace --bins --manifest-path "$ROOT/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
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

wait_sock() { for _ in $(seq 500); do [ -S "$1" ] && return 0; sleep 0.01; done; echo "demo.sh: $1 never appeared" >&2; exit 1; }
start() { "$@" 2>>"$RUN/backends.log" & PIDS+=($!); }

start "$BIN/vhost-user-blk" --socket-path "$RUN/blk.sock" --image "$RUN/disk.img" --serial demo-disk
start "$BIN/vhost-user-rng" --socket-path "$RUN/rng.sock"
[ "$VMM" = accel ] && start "$BIN/vhost-user-console" --socket-path "$RUN/con.sock" --output "$RUN/console.txt"
NETCMD="ip link set eth0 up; ip link show eth0"
if [ "$(id -u)" = 0 ] && [ -c /dev/net/tun ]; then
  TAP=accdemo$$
  ip tuntap add dev "$TAP" mode tap vnet_hdr
  ip addr add 10.99.0.1/24 dev "$TAP"
  ip link set "$TAP" up
  start "$BIN/vhost-user-net" --socket-path "$RUN/net.sock" --tap "$TAP"
  # One ping per run: busybox's ping interval needs POSIX timers, which the test kernel lacks.
  NETCMD="ip addr add 10.99.0.2/24 dev eth0; ip link set eth0 up; ping -c 1 10.99.0.1 && ping -c 1 10.99.0.1"
else
  start "$BIN/vhost-user-net" --socket-path "$RUN/net.sock" --peer "$RUN/net-peer.sock"
fi
for s in blk rng net; do wait_sock "$RUN/$s.sock"; done
[ "$VMM" = accel ] && wait_sock "$RUN/con.sock"

if [ -z "$GCMD" ]; then
  GCMD="echo disk says: \$(head -n1 /dev/vda); echo written by the guest | dd of=/dev/vda bs=512 seek=2048 conv=fsync 2>/dev/null;"
  GCMD+=" echo rng: \$(cat /sys/class/misc/hw_random/rng_current) \$(head -c 16 /dev/hwrng | md5sum);"
  [ "$VMM" = accel ] && GCMD+=" echo hello through virtio-console > /dev/hvc0;"
  GCMD+=" $NETCMD"
fi
APPEND="console=ttyS0 panic=-1 reboot=k quiet noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm gcmd=\"$GCMD\""

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
  echo "demo.sh: accel -accel kvm ${ARGS[*]}" >&2
  "$BIN/accel" -accel kvm "${ARGS[@]}"
else
  echo "demo.sh: qemu-system-x86_64 -accel tcg ${ARGS[*]}" >&2
  qemu-system-x86_64 -accel tcg "${ARGS[@]}"
fi
echo "--- host side after the guest exited ---"
echo "disk at 1 MiB: $(dd if="$RUN/disk.img" bs=512 skip=2048 count=1 status=none | head -n1)"
[ -f "$RUN/console.txt" ] && echo "console backend received: $(cat "$RUN/console.txt")"
exit 0
