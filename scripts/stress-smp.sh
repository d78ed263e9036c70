#!/usr/bin/env bash
# The SMP stress test with more boots than the suite runs (tests/tests/smp_stress.rs: -smp 2
# guests under accel while every host core is kept busy, a TLS/stack/errno checker and
# fork/exec loops on both vCPUs, a reboot between boots).
#
#   scripts/stress-smp.sh [BOOTS]      # default 10 (the suite runs 1)
#
# Needs what scripts/test.sh needs (/dev/kvm, the test guest). Prints the test's verdict.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BOOTS=${1:-10}
ACCEL_GUEST_DIR=$(scripts/guest.sh)
export ACCEL_GUEST_DIR
cargo build --workspace --bins -q
ACCEL_STRESS_BOOTS=$BOOTS cargo test -q -p integration-tests --test smp_stress -- --nocapture
