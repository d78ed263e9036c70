#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run calls):
# formatting, lints, then every unit and integration test, including the ones that boot the
# test guest under accel (KVM) and under QEMU (TCG) against the vhost-user backends.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -- NAME         # extra arguments go to `cargo test` (e.g. a test filter)
#   TEST_LANES=1 scripts/test.sh    # the VM test binaries one after another (default 2 lanes)
#
# Needs /dev/kvm and qemu-system-x86_64 + qemu-storage-daemon (apt-get install qemu-system-x86).
# The test guest comes from scripts/guest.sh ($ACCEL_GUEST_DIR, ../shared/guest, or built).
#
# Time (README, "Test suite time"): nearly all of it is guest boots, whose kernel code this
# kind of host emulates, each VM on one core. `cargo test` runs test binaries one after another
# and two tests of a binary at a time, so one core idled whenever a binary had a single VM
# left (a third of the run). Here the VM test binaries of tests/ run in two lanes, one test at
# a time in each: two VMs at a time, as before, but back to back. smp_stress runs alone at the
# end: it keeps every host core busy on purpose.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[ "${1:-}" = -- ] && shift

fail() { echo "test.sh: $*" >&2; exit 1; }
[ -r /dev/kvm ] && [ -w /dev/kvm ] || fail "/dev/kvm is missing or not accessible to $(id -un)"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not found: apt-get install qemu-system-x86"
command -v qemu-storage-daemon >/dev/null || fail "qemu-storage-daemon not found: apt-get install qemu-system-x86"

ACCEL_GUEST_DIR=$(scripts/guest.sh)
export ACCEL_GUEST_DIR
echo "test.sh: test guest from $ACCEL_GUEST_DIR"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo build --workspace --bins -q
cargo test --workspace -q --no-run

# --no-fail-fast everywhere: every test binary runs even when one fails, so one log shows
# every failure; the status is remembered and returned at the end.
status=0
# Everything that boots no VM: unit tests, the backends' socket/process tests, doc tests.
cargo test --workspace -q --no-fail-fast --exclude integration-tests "$@" || status=1
cargo test -q --no-fail-fast -p integration-tests --lib "$@" || status=1

# The VM test binaries (tests/tests/*.rs), split into lanes of about equal time. Seconds per
# binary with one test at a time on the idle 2-core kvm_pvm CI machine, estimated from its
# last full run (about 60 s per one-vCPU accel boot); only the balance depends on them. A
# binary not listed counts as 120 s.
declare -A COST=(
  [backend_stall]=330 [blk_crash]=170 [blk_qemu]=10 [boot]=270 [console]=120
  [memory_file]=70 [net]=150 [net_crash]=140 [qmp]=210 [qsd_accel]=70 [rng]=70
  [rng_hostile]=160 [vhost_user_accel]=350 [vsock]=95 [vsock_crash]=90
  [qmp_python]=420 [builtin_devices]=150 [dpdk]=180 [confinement]=60
  [corpus]=170 [cmdline_options]=110 [elf32_pvh]=30 [virtiofs]=90 [server_chardev]=200 [pcie_topology]=180 [hotplug]=420
)
ALONE=smp_stress
LANES=${TEST_LANES:-2}
[[ "$LANES" =~ ^[1-9]$ ]] || fail "TEST_LANES must be 1..9, not '$LANES'"
declare -a LOAD LANE
for ((i = 0; i < LANES; i++)); do LOAD[i]=0; LANE[i]=""; done
# Longest first, each onto the least loaded lane.
for t in $(for f in tests/tests/*.rs; do
             n=$(basename "$f" .rs); [ "$n" = "$ALONE" ] || echo "${COST[$n]:-120} $n"
           done | sort -rn | cut -d' ' -f2); do
  min=0
  for ((i = 1; i < LANES; i++)); do ((LOAD[i] < LOAD[min])) && min=$i; done
  LANE[min]+=" --test $t"
  LOAD[min]=$((LOAD[min] + ${COST[$t]:-120}))
done

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/accel-test-lanes.XXXXXX")
trap 'rm -rf "$LOGDIR"' EXIT
# One test at a time in a lane (RUST_TEST_THREADS, not `-- --test-threads`, so that "$@" keeps
# its meaning). `--workspace --test NAME`, not `-p integration-tests`: features resolve as in
# the --no-run build above, so the lanes run the binaries built there (with -p, cargo resolves
# the features of that package alone and would build every tests/ binary a second time).
# (A name both packages use, blk_crash, also reruns vhost-user-devices' socket-level test: seconds.)
pids=()
for ((i = 1; i < LANES; i++)); do
  echo "test.sh: lane $i (output at its end):${LANE[i]}"
  # shellcheck disable=SC2086
  RUST_TEST_THREADS=1 cargo test --workspace -q --no-fail-fast ${LANE[i]} "$@" \
    >"$LOGDIR/lane-$i.log" 2>&1 &
  pids[i]=$!
done
echo "test.sh: lane 0:${LANE[0]}"
# shellcheck disable=SC2086
RUST_TEST_THREADS=1 cargo test --workspace -q --no-fail-fast ${LANE[0]} "$@" || status=1
for ((i = 1; i < LANES; i++)); do
  wait "${pids[i]}" || status=1
  echo "test.sh: --- lane $i:${LANE[i]}"
  cat "$LOGDIR/lane-$i.log"
done
echo "test.sh: $ALONE (alone: it loads every host core)"
cargo test --workspace -q --no-fail-fast --test "$ALONE" "$@" || status=1

[ "$status" = 0 ] || echo "test.sh: FAILED (see the failures above)" >&2
exit "$status"
