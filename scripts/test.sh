#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run calls):
# formatting, lints, then every unit and integration test, including the ones that boot the
# test guest under accel (KVM) and under QEMU (TCG) against the vhost-user backends.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -- NAME         # extra arguments go to `cargo test` (e.g. a test filter)
#
# Needs /dev/kvm and qemu-system-x86_64 + qemu-storage-daemon (apt-get install qemu-system-x86).
# The test guest comes from scripts/guest.sh ($ACCEL_GUEST_DIR, ../shared/guest, or built).
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
# --no-fail-fast: every test binary runs even when one fails, so one log shows every failure.
cargo test --workspace -q --no-fail-fast "$@"
