#!/usr/bin/env bash
# Startup benchmark: accel against qemu-system-x86_64 -accel kvm -M microvm, measured in one run.
#
#   scripts/bench-startup.sh [--runs N] [--boot-runs N] [--skip-boot]
#
# 1. The smallest PVH guest (scripts/bench/mini-pvh.S: one serial line, then i8042 reset or
#    triple fault): exec -> exit wall time, medians over N runs, ratio accel/QEMU, peak RSS.
#    Targets: accel <= 0.25x QEMU microvm's wall time; accel's peak RSS <= 5 MiB beyond the
#    guest pages it touched (this guest touches a handful of pages).
# 2. The test guest (vmlinux + lean.cpio, -m 128): exec -> "GUEST UP" (boot-to-init), medians
#    over --boot-runs runs. Target: accel <= 0.9x QEMU microvm.
# The same kernel command line and guest for both VMMs. QEMU boots the test guest with
# `-cpu host,arch-capabilities=off` (on kvm_pvm hosts QEMU 7.2's plain `-cpu host` fails setting
# MSR 0x10a and its default model hits an unemulated instruction); the minimal guest needs no
# -cpu. QEMU microvm has no i8042, so its test-guest runs are stopped at "GUEST UP".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=20 BOOT_RUNS=3 SKIP_BOOT=0
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --boot-runs) BOOT_RUNS=$2; shift 2 ;;
    --skip-boot) SKIP_BOOT=1; shift ;;
    *) echo "usage: $0 [--runs N] [--boot-runs N] [--skip-boot]" >&2; exit 2 ;;
  esac
done
QEMU=${QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || { echo "bench-startup: $QEMU not found (apt-get install qemu-system-x86)" >&2; exit 1; }
[ -w /dev/kvm ] || { echo "bench-startup: /dev/kvm is not usable" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && cargo build --release -q -p accel)
ACCEL=${CARGO_TARGET_DIR:-$ROOT/target}/release/accel
gcc -c -o "$WORK/mini.o" "$ROOT/scripts/bench/mini-pvh.S"
ld -m elf_x86_64 -nostdlib -static -T "$ROOT/scripts/bench/mini-pvh.ld" -o "$WORK/mini-pvh.elf" "$WORK/mini.o"
gcc -O2 -static -o "$WORK/rusage" "$ROOT/scripts/bench/rusage.c"
RUNNER="python3 $ROOT/scripts/bench/runner.py --rusage $WORK/rusage"

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

echo "== minimal PVH guest: exec -> exit, $RUNS runs each"
COMMON=(-m 128 -nodefaults -display none -serial stdio -no-reboot -kernel "$WORK/mini-pvh.elf")
a=$($RUNNER --label accel --runs "$RUNS" --marker "hello from the guest" -- "$ACCEL" -accel kvm -M microvm "${COMMON[@]}")
q=$($RUNNER --label qemu-microvm --runs "$RUNS" --marker "hello from the guest" -- "$QEMU" -accel kvm -M microvm,acpi=off "${COMMON[@]}")
echo "$a"; echo "$q"
aw=$(field wall_ms_median "$a") qw=$(field wall_ms_median "$q") ar=$(field rss_kib_median "$a")
echo "wall time ratio accel/qemu-microvm: $(ratio "$aw" "$qw") (target <= 0.25)"
echo "accel peak RSS: $(awk -v k="$ar" 'BEGIN { printf "%.2f", k / 1024 }') MiB, guest RAM touched: a few pages (target <= 5 MiB overhead)"

[ "$SKIP_BOOT" = 1 ] && exit 0
GUEST=$("$ROOT/scripts/guest.sh")
APPEND="console=ttyS0 panic=-1 reboot=k quiet noreplace-smp noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm"
echo "== test guest (vmlinux + lean.cpio, -m 128 -smp 1): exec -> GUEST UP, $BOOT_RUNS runs each"
BOOT=(-m 128 -smp 1 -nodefaults -display none -serial stdio -no-reboot -kernel "$GUEST/vmlinux" -initrd "$GUEST/lean.cpio" -append "$APPEND")
a=$($RUNNER --label accel --runs "$BOOT_RUNS" --marker "GUEST UP" --stop-at-marker --timeout 300 -- "$ACCEL" -accel kvm -M microvm "${BOOT[@]}")
q=$($RUNNER --label qemu-microvm --runs "$BOOT_RUNS" --marker "GUEST UP" --stop-at-marker --timeout 300 -- "$QEMU" -accel kvm -cpu host,arch-capabilities=off -M microvm,acpi=off "${BOOT[@]}")
echo "$a"; echo "$q"
echo "boot-to-init ratio accel/qemu-microvm: $(ratio "$(field marker_ms_median "$a")" "$(field marker_ms_median "$q")") (target <= 0.9)"
