#!/usr/bin/env bash
# Benchmark our vhost-user-net backend (tap mode) against QEMU's own virtio-net with a tap
# backend (-netdev tap,vhost=off), same guest, same QEMU, same run, interleaved.
#
#   scripts/bench-net.sh                 # QEMU TCG (default), 2 runs per backend
#   BENCH_ACCEL=kvm scripts/bench-net.sh # QEMU with KVM (each boot takes minutes here)
#   BENCH_REPS=3 BENCH_MIB=40 scripts/bench-net.sh
#
# Per run, one guest boot measures:
#   tcp  guest -> host throughput: `dd bs=64k | nc HOST PORT`, timed by the host receiver
#        from first byte to EOF (MiB/s);
#   pps  host -> guest packet rate: the host blasts 64-byte UDP datagrams at the guest (static
#        ARP entry, no listener) while the guest reads eth0's rx_packets over 5 s (packets/s
#        the driver received).
# The best run per backend counts; the ratio is ours / QEMU's.
# Needs root (taps), qemu-system-x86_64, python3 and the test guest (../shared/guest).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
accel=${BENCH_ACCEL:-tcg}
reps=${BENCH_REPS:-2}
mib=${BENCH_MIB:-20}
guest=${ACCEL_GUEST_DIR:-$root/../shared/guest}
[ -f "$guest/vmlinux" ] || { echo "test guest not found in $guest (set ACCEL_GUEST_DIR)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 not found" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (creates taps)" >&2; exit 1; }

echo "building release vhost-user-net..." >&2
(cd "$root" && cargo build --release -q -p vhost-user-devices --bin vhost-user-net)
ours_bin=${CARGO_TARGET_DIR:-$root/target}/release/vhost-user-net

tmp=$(mktemp -d /tmp/bench-net.XXXXXX)
pids=()
taps=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    for t in "${taps[@]}"; do ip link del "$t" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# The host side of each run: a TCP receiver (bytes, seconds) and a UDP blaster.
cat > "$tmp/host.py" <<'PY'
import socket, sys, threading, time
host, guest, tcp_port, udp_port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
stop = False
def blast():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    payload = b"x" * 64
    while not stop:
        try:
            s.sendto(payload, (guest, udp_port))
        except (BlockingIOError, OSError):
            time.sleep(0.0001)
threading.Thread(target=blast, daemon=True).start()
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((host, tcp_port)); l.listen(1); l.settimeout(600)
c, _ = l.accept()
n, t0 = 0, None
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    if t0 is None:
        t0 = time.monotonic()
    n += len(d)
t1 = time.monotonic()
stop = True
with open(out, "w") as f:
    f.write(f"{n} {t1 - (t0 or t1)}\n")
PY

mktap() { # name host-ip
    ip link del "$1" 2>/dev/null || true
    ip tuntap add dev "$1" mode tap
    ip addr add "$2/24" dev "$1"
    ip link set "$1" up
    taps+=("$1")
}

mac=52:54:00:be:00:02
mktap bnours0 10.231.0.1
mktap bnqemu0 10.232.0.1
ip neigh replace 10.231.0.2 lladdr $mac dev bnours0
ip neigh replace 10.232.0.2 lladdr $mac dev bnqemu0

RUST_LOG=warn "$ours_bin" --socket-path "$tmp/ours.sock" --tap bnours0 &
pids+=($!)
for _ in $(seq 500); do [ -S "$tmp/ours.sock" ] && break; sleep 0.02; done

count=$((mib * 16))
run_one() { # backend rep -> "MiB/s pps"
    local b=$1 net hostip
    if [ "$b" = ours ]; then net=10.231.0; else net=10.232.0; fi
    hostip=$net.1
    local res=$tmp/res-$b-$2
    python3 "$tmp/host.py" "$hostip" "$net.2" 5001 5002 "$res" &
    local hp=$!
    sleep 0.3
    local nic
    if [ "$b" = ours ]; then
        nic=(-chardev "socket,id=c1,path=$tmp/ours.sock" -netdev vhost-user,id=n0,chardev=c1)
        # vectors=0: QEMU 7.2 under TCG crashes starting vhost-user virtio-net with MSI-X
        # (its irqfd unmask path dereferences vector_irqfd, NULL without KVM).
        [ "$accel" = tcg ] && dev=",vectors=0" || dev=""
    else
        nic=(-netdev tap,id=n0,ifname=bnqemu0,script=no,downscript=no,vhost=off)
        [ "$accel" = tcg ] && dev=",vectors=0" || dev=""
    fi
    local cpu=()
    [ "$accel" = kvm ] && cpu=(-cpu host)
    local gcmd="ip addr add $net.2/24 dev eth0; ip link set eth0 up; sleep 1; \
set -- \$(grep eth0 /proc/net/dev | sed 's/.*://'); a=\$2; sleep 5; \
set -- \$(grep eth0 /proc/net/dev | sed 's/.*://'); echo PPS \$(( (\$2 - a) / 5 )); \
dd if=/dev/zero bs=65536 count=$count 2>/dev/null | nc $hostip 5001; echo done"
    timeout 900 qemu-system-x86_64 -accel "$accel" "${cpu[@]}" -M pc -m 256 -smp 2,sockets=2 \
        -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
        "${nic[@]}" -device "virtio-net-pci,netdev=n0,mac=$mac,disable-legacy=on,romfile=$dev" \
        -kernel "$guest/vmlinux" -initrd "$guest/initramfs.cpio" \
        -append "console=ttyS0 panic=-1 reboot=k quiet noreplace-smp noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm gcmd=\"$gcmd\"" \
        -display none -nodefaults -serial stdio -no-reboot > "$tmp/vm-$b-$2.log" 2>&1 || true
    wait "$hp" 2>/dev/null || true
    local bytes secs pps
    read -r bytes secs < "$res" 2>/dev/null || { bytes=0; secs=1; }
    pps=$(grep -a -o 'PPS [0-9]*' "$tmp/vm-$b-$2.log" | awk '{print $2}')
    awk -v b="$bytes" -v s="$secs" -v p="${pps:-0}" -v want=$((count * 65536)) \
        'BEGIN { if (b != want) { printf "0 %d\n", p } else { printf "%.1f %d\n", b / 1048576 / (s > 0 ? s : 1), p } }'
}

declare -A best_tcp best_pps
for b in ours qemu; do best_tcp[$b]=0; best_pps[$b]=0; done
for rep in $(seq "$reps"); do
    for b in ours qemu; do
        read -r t p < <(run_one "$b" "$rep")
        echo "run $rep $b: tcp ${t} MiB/s, rx ${p} pps" >&2
        awk -v a="$t" -v c="${best_tcp[$b]}" 'BEGIN { exit !(a > c) }' && best_tcp[$b]=$t
        [ "$p" -gt "${best_pps[$b]}" ] && best_pps[$b]=$p
    done
done

echo "accel=$accel, $mib MiB guest->host per run, best of $reps"
printf "%-28s %12s %14s\n" backend "tcp MiB/s" "rx pps (64B)"
printf "%-28s %12s %14s\n" "vhost-user-net (ours)" "${best_tcp[ours]}" "${best_pps[ours]}"
printf "%-28s %12s %14s\n" "qemu virtio-net + tap" "${best_tcp[qemu]}" "${best_pps[qemu]}"
awk -v a="${best_tcp[ours]}" -v b="${best_tcp[qemu]}" -v c="${best_pps[ours]}" -v d="${best_pps[qemu]}" \
    'BEGIN { printf "ratio ours/qemu: tcp %.2f, pps %.2f\n", (b > 0 ? a / b : 0), (d > 0 ? c / d : 0) }'
