#!/usr/bin/env bash
# Builds every fuzz target of fuzz/ (libFuzzer via the libfuzzer-sys crate, which compiles
# libFuzzer itself: nothing else to install) with coverage instrumentation on stable Rust, and
# runs each for SECONDS from its committed seed corpus. Fails if any target crashes, hangs
# (a single input over 10 s), goes over 2 GB RSS, or does not run.
#
#   scripts/fuzz.sh [SECONDS]            # every target, SECONDS each (default 30)
#   scripts/fuzz.sh SECONDS TARGET...    # only these targets
#   FUZZ_JOBS=N                          # run N targets at once (default 1)
#   FUZZ_RUNS=N                          # stop a target after N executions (SECONDS still
#                                        # bounds it)
#   FUZZ_HANG_DUMP=S                     # an input running over S s gets every thread's stack
#                                        # printed to the log (gdb), before the 10 s timeout
#   FUZZ_PIN=0                           # do not pin each target to one CPU (see below)
#
# Each running target is pinned to one CPU of those this script may use (taskset), one CPU per
# concurrent job. The multi-threaded targets (vhost_user_*: a backend, its daemon and vring
# worker threads per input) spend most of an unpinned run waking and migrating threads across
# CPUs; pinned, vhost_user_blk runs 2.8x faster (8,000 against 2,900 inputs/s on an idle
# 2-core host). The threads still interleave, by preemption, but no longer run truly in
# parallel: the concurrency tests of the backends (tests/hostile.rs, the VM suite) cover that.
#
# Crash inputs are left in fuzz/artifacts/TARGET/; reproduce one with
#   fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-...
# New corpus entries go to a scratch directory, not into fuzz/corpus (keep the seeds small).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT/fuzz"
SECONDS_EACH=${1:-30}
shift || true
ALL=(vhost_user_blk vhost_user_net vhost_user_vsock vhost_user_rng vhost_user_console
     chain_blk chain_net chain_vsock chain_rng chain_console virtio_pci cli)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

fail() { echo "fuzz.sh: $*" >&2; exit 1; }
command -v c++ >/dev/null || fail "a C++ compiler is needed to build libFuzzer: apt-get install g++"

# What cargo-fuzz passes (`--sanitizer none`): SanitizerCoverage counters, value profiles of
# comparisons, `cfg(fuzzing)`, debug assertions and overflow checks in an optimised build.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions \
-Coverflow-checks -Cforce-frame-pointers=yes"
export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (not linked with
# libFuzzer).
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN="target/$TRIPLE/release"
bins=()
for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
# Not --locked: fuzz/Cargo.lock follows the main crates' dependencies (a dependency added to
# accel or a backend would otherwise fail this build until the lock file is refreshed).
cargo build --release -q --target "$TRIPLE" "${bins[@]}"

# The CPUs this process may run on (a list like 0-3,6), one per element.
CPUS=()
for r in $(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status | tr , ' '); do
  for c in $(seq "${r%-*}" "${r#*-}"); do CPUS+=("$c"); done
done
[ ${#CPUS[@]} -gt 0 ] || CPUS=(0)
pinned() { # CPU COMMAND...: COMMAND pinned to CPU unless FUZZ_PIN=0
  local cpu=$1; shift
  if [ "${FUZZ_PIN:-1}" = 0 ] || ! command -v taskset >/dev/null; then "$@"; else taskset -c "$cpu" "$@"; fi
}

SCRATCH=$(mktemp -d /tmp/fuzz.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
failed=()
run_one() { # TARGET CPU
  local t=$1 cpu=$2 log="$SCRATCH/$1.log"
  mkdir -p "$SCRATCH/corpus/$t" "artifacts/$t" "$SCRATCH/tmp/$t"
  local start
  start=$(date +%s)
  # The devices' scratch files (image, sockets) go under TMPDIR.
  if TMPDIR="$SCRATCH/tmp/$t" pinned "$cpu" "$BIN/$t" -max_total_time="$SECONDS_EACH" \
       -timeout=10 -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 -runs="${FUZZ_RUNS:--1}" \
       -artifact_prefix="artifacts/$t/" "$SCRATCH/corpus/$t" "corpus/$t" >"$log" 2>&1; then
    local runs rss
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    local secs=$(( $(date +%s) - start ))
    echo "fuzz.sh: $t: ok, ${runs:-?} executions in ${secs}s, peak RSS ${rss:-?} MB"
  else
    cp "$log" "artifacts/$t/fuzz.log"
    echo "fuzz.sh: $t: FAILED (input and whole log in fuzz/artifacts/$t/); log tail:" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
}
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
  pids=()
  declare -A on_cpu=()   # CPU -> pid of the job pinned there
  for t in "${TARGETS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$FUZZ_JOBS" ]; do sleep 1; done
    # The least busy CPU: one without a running job, else the first.
    cpu=${CPUS[0]}
    for c in "${CPUS[@]}"; do
      if [ -z "${on_cpu[$c]:-}" ] || ! kill -0 "${on_cpu[$c]}" 2>/dev/null; then cpu=$c; break; fi
    done
    run_one "$t" "$cpu" &
    pids+=($!)
    on_cpu[$cpu]=$!
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=("${TARGETS[$i]}"); done
else
  for t in "${TARGETS[@]}"; do run_one "$t" "${CPUS[0]}" || failed+=("$t"); done
fi
[ ${#failed[@]} -eq 0 ] || fail "failed: ${failed[*]}"
echo "fuzz.sh: all ${#TARGETS[@]} targets ran ${SECONDS_EACH}s each without a crash, a hang or RSS over the limit"
