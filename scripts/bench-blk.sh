#!/usr/bin/env bash
# Benchmark our vhost-user-blk backend against qemu-storage-daemon's vhost-user-blk export
# (aio=io_uring and aio=threads; the better qsd result counts), same client for both:
# vu-testkit's userspace driver in `vu-blk-bench`, no VM. The image is a 256 MiB file kept in
# the page cache (buffered I/O on both sides).
#
#   scripts/bench-blk.sh            # 5 s per case
#   BENCH_SECONDS=10 scripts/bench-blk.sh
#
# Cases: 4K randread QD1, 4K randread QD32, 4K randwrite QD32, 1 MiB sequential read QD8.
# Prints IOPS, MiB/s, mean and p99 latency per backend, and the ratio ours/qsd (IOPS).
# Each backend runs each case BENCH_REPS times (default 2), interleaved; the best run counts.
# Guest mode (accel vs QEMU on KVM, dd inside the test guest): scripts/bench-blk.sh --guest
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
[ "${1:-}" = --guest ] && { shift; exec "$root/scripts/bench/blk-guest.sh" "$@"; }
secs=${BENCH_SECONDS:-5}
size_mib=${BENCH_SIZE_MIB:-256}

command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon not found (apt-get install qemu-system-x86 qemu-utils)" >&2; exit 1; }

echo "building release binaries..." >&2
(cd "$root" && cargo build --release -q -p vhost-user-devices --bin vhost-user-blk \
    && cargo build --release -q -p vu-testkit --bin vu-blk-bench)
target=${CARGO_TARGET_DIR:-$root/target}/release
ours_bin=$target/vhost-user-blk
bench_bin=$target/vu-blk-bench

tmp=$(mktemp -d /tmp/bench-blk.XXXXXX)

img=$tmp/disk.img
head -c "$((size_mib << 20))" /dev/urandom > "$img"
cat "$img" > /dev/null   # into the page cache

cases=(
    "randread 4096 1"
    "randread 4096 32"
    "randwrite 4096 32"
    "read 1048576 8"
)

wait_socket() {
    for _ in $(seq 500); do [ -S "$1" ] && return 0; sleep 0.02; done
    echo "socket $1 never appeared" >&2; return 1
}

pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop_all; rm -rf "$tmp"' EXIT

# All three backends run side by side (idle unless benchmarked) so that runs can interleave:
# this machine is shared, and interleaving spreads load changes evenly over the contenders.
RUST_LOG=warn "$ours_bin" --socket-path "$tmp/ours.sock" --image "$img" --num-queues 1 &
pids+=($!)
for aio in io_uring threads; do
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=file0,filename=$img,cache.direct=off,aio=$aio" \
        --export "type=vhost-user-blk,id=e0,node-name=file0,addr.type=unix,addr.path=$tmp/qsd-$aio.sock,writable=on,num-queues=1" &
    pids+=($!)
done
backends=(ours qsd-io_uring qsd-threads)
for b in "${backends[@]}"; do wait_socket "$tmp/$b.sock"; done

reps=${BENCH_REPS:-2}
# best_of NAME CASE# LINE: keep the line with the higher iops in $tmp/NAME.CASE#
keep_best() {
    local f=$tmp/$1.$2 new=$3 old
    if [ -f "$f" ]; then
        old=$(tr ' ' '\n' < "$f" | sed -n 's/^iops=//p')
        awk -v a="$(echo "$new" | tr ' ' '\n' | sed -n 's/^iops=//p')" -v b="$old" 'BEGIN { exit !(a > b) }' || return 0
    fi
    echo "$new" > "$f"
}
i=0
for c in "${cases[@]}"; do
    set -- $c
    for b in "${backends[@]}"; do   # warm-up
        "$bench_bin" --socket "$tmp/$b.sock" --pattern "$1" --bs "$2" --qd "$3" --seconds 1 > /dev/null
    done
    for rep in $(seq "$reps"); do
        for b in "${backends[@]}"; do
            line=$("$bench_bin" --socket "$tmp/$b.sock" --pattern "$1" --bs "$2" --qd "$3" --seconds "$secs")
            echo "  $b: $line" >&2
            keep_best "$b" "$i" "$line"
        done
    done
    i=$((i + 1))
done
stop_all

field() { tr ' ' '\n' < "$1" | sed -n "s/^$2=//p"; }

printf '\n%-24s | %-30s | %-30s | %-8s | %s\n' "case (best of ${reps}x${secs}s)" "ours: IOPS MiB/s lat/p99us" "qsd best: IOPS MiB/s lat" "qsd aio" "ours/qsd"
printf -- '-%.0s' $(seq 110); echo
i=0
for c in "${cases[@]}"; do
    set -- $c
    label="$1 bs=$2 qd=$3"
    o_iops=$(field "$tmp/ours.$i" iops); o_mib=$(field "$tmp/ours.$i" mib_s)
    o_lat=$(field "$tmp/ours.$i" lat_mean_us); o_p99=$(field "$tmp/ours.$i" lat_p99_us)
    best_aio=""; b_iops=0
    for aio in io_uring threads; do
        v=$(field "$tmp/qsd-$aio.$i" iops)
        if awk -v a="$v" -v b="$b_iops" 'BEGIN { exit !(a > b) }'; then b_iops=$v; best_aio=$aio; fi
    done
    b_mib=$(field "$tmp/qsd-$best_aio.$i" mib_s); b_lat=$(field "$tmp/qsd-$best_aio.$i" lat_mean_us)
    b_p99=$(field "$tmp/qsd-$best_aio.$i" lat_p99_us)
    ratio=$(awk -v a="$o_iops" -v b="$b_iops" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }')
    printf '%-24s | %8s %8s %6s/%-6s | %8s %8s %6s/%-6s | %-8s | %s\n' "$label" \
        "$o_iops" "$o_mib" "$o_lat" "$o_p99" "$b_iops" "$b_mib" "$b_lat" "$b_p99" "$best_aio" "$ratio"
    i=$((i + 1))
done
