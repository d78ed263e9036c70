#!/usr/bin/env bash
# Guest mode of scripts/bench-blk.sh: the test guest runs dd on /dev/vda (O_DIRECT reads and
# writes) under accel and under QEMU, both on KVM, against the same vhost-user-blk process;
# prints MiB/s per VMM (median of --runs), the ratio accel/QEMU, and both VMMs' peak RSS.
#
#   scripts/bench-blk.sh --guest [--runs N] [--mib N]
#
# QEMU runs `-cpu host,arch-capabilities=off -M pc` (plain -cpu host fails on kvm_pvm hosts).
# Peak RSS includes the guest pages each VMM touched (same guest, same work for both).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=3 MIB=64
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --mib) MIB=$2; shift 2 ;;
    *) echo "usage: bench-blk.sh --guest [--runs N] [--mib N]" >&2; exit 2 ;;
  esac
done
QEMU=${QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || { echo "bench-blk: $QEMU not found" >&2; exit 1; }
(cd "$ROOT" && cargo build --release -q -p accel -p vhost-user-devices --bin accel --bin vhost-user-blk)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
GUEST=$("$ROOT/scripts/guest.sh")
WORK=$(mktemp -d /tmp/bench-blk-guest.XXXXXX)
BACKEND=""
cleanup() { [ -n "$BACKEND" ] && kill "$BACKEND" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
gcc -O2 -static -o "$WORK/rusage" "$ROOT/scripts/bench/rusage.c"

head -c "$(( (MIB + 8) << 20 ))" /dev/urandom > "$WORK/disk.img"
"$BIN/vhost-user-blk" --socket-path "$WORK/blk.sock" --image "$WORK/disk.img" 2>"$WORK/backend.log" &
BACKEND=$!
for _ in $(seq 500); do [ -S "$WORK/blk.sock" ] && break; sleep 0.01; done

# busybox's dd prints no rate here: the guest times each dd with /proc/uptime (10 ms ticks).
GCMD="read t0 x < /proc/uptime; dd if=/dev/vda of=/dev/null bs=1M count=$MIB iflag=direct; read t1 x < /proc/uptime;"
GCMD+=" dd if=/dev/zero of=/dev/vda bs=1M count=$MIB oflag=direct; read t2 x < /proc/uptime;"
GCMD+=" echo BENCH read \$t0 \$t1 write \$t1 \$t2"
APPEND="console=ttyS0 panic=-1 reboot=k quiet noreplace-smp noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm gcmd=\"$GCMD\""
COMMON=(-m 256 -smp 1 -nodefaults -display none -serial stdio -no-reboot
  -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem
  -chardev socket,id=c0,path="$WORK/blk.sock" -device vhost-user-blk-pci,chardev=c0,num-queues=1,disable-legacy=on
  -kernel "$GUEST/vmlinux" -initrd "$GUEST/lean.cpio" -append "$APPEND")

# One run: prints "read_mibs write_mibs rss_kib" from the guest's BENCH line.
run() {
  local out
  out=$(timeout 600 "$WORK/rusage" "$@" "${COMMON[@]}" 2>&1) || { echo "bench-blk: run failed: $*" >&2; echo "$out" | tail -20 >&2; exit 1; }
  python3 - "$out" "$MIB" <<'PY'
import re, sys
out, mib = sys.argv[1], int(sys.argv[2])
m = re.search(r"BENCH read ([0-9.]+) ([0-9.]+) write ([0-9.]+) ([0-9.]+)", out)
rss = re.search(r"RUSAGE maxrss_kib=(\d+)", out)
if not m or not rss or "GUEST CMD RC: 0" not in out:
    sys.exit("bench-blk: the guest's dd failed or printed no BENCH line:\n" + out[-2000:])
t = [float(x) for x in m.groups()]
if t[1] <= t[0] or t[3] <= t[2]:
    sys.exit("bench-blk: a dd took under one guest clock tick: use a larger --mib")
print(f"{mib / (t[1] - t[0]):.2f} {mib / (t[3] - t[2]):.2f} {rss.group(1)}")
PY
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A R W M
for vmm in accel qemu; do R[$vmm]="" W[$vmm]="" M[$vmm]=""; done
for i in $(seq "$RUNS"); do
  for vmm in accel qemu; do
    if [ "$vmm" = accel ]; then
      line=$(run "$BIN/accel" -accel kvm -machine pc)
    else
      line=$(run "$QEMU" -accel kvm -cpu host,arch-capabilities=off -machine pc)
    fi
    read -r r w m <<<"$line"
    echo "  run $i $vmm: read $r MiB/s, write $w MiB/s, peak RSS $m KiB" >&2
    R[$vmm]+="$r"$'\n' W[$vmm]+="$w"$'\n' M[$vmm]+="$m"$'\n'
  done
done
echo "== guest dd on /dev/vda (${MIB} MiB, O_DIRECT, bs=1M), vhost-user-blk backend, median of $RUNS"
for vmm in accel qemu; do
  printf '%-6s read %8.2f MiB/s  write %8.2f MiB/s  peak RSS %6.1f MiB\n' "$vmm" \
    "$(printf '%s' "${R[$vmm]}" | median)" "$(printf '%s' "${W[$vmm]}" | median)" \
    "$(printf '%s' "${M[$vmm]}" | median | awk '{ print $1 / 1024 }')"
done
awk -v ar="$(printf '%s' "${R[accel]}" | median)" -v qr="$(printf '%s' "${R[qemu]}" | median)" \
    -v aw="$(printf '%s' "${W[accel]}" | median)" -v qw="$(printf '%s' "${W[qemu]}" | median)" \
    'BEGIN { printf "ratio accel/qemu: read %.2f, write %.2f (target >= 1.0)\n", ar / qr, aw / qw }'
