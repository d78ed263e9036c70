#!/usr/bin/env bash
# Provides the test guest (vmlinux, bzImage, initramfs.cpio, lean.cpio) and prints its directory.
#
#   scripts/guest.sh            # find or build; prints the directory on stdout
#   scripts/guest.sh --build    # rebuild into the cache even if a prebuilt guest exists
#
# Looks in order at: $ACCEL_GUEST_DIR, ../shared/guest next to the checkout, the cache
# ($XDG_CACHE_HOME or ~/.cache)/accel-guest. If none has a complete guest, builds one into the
# cache from Debian's linux-source-6.1 with the recipe in scripts/guest/ (tinyconfig + fragment
# + three patches for hosts whose /dev/kvm is kvm_pvm; ~5 min on 2 cores; needs root for apt).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/accel-guest
FILES="vmlinux bzImage initramfs.cpio lean.cpio"

complete() {
  local d=$1 f
  for f in $FILES; do [ -s "$d/$f" ] || return 1; done
}

if [ "${1:-}" != --build ]; then
  for d in "${ACCEL_GUEST_DIR:-}" "$ROOT/../shared/guest" "$CACHE"; do
    if [ -n "$d" ] && complete "$d"; then
      cd "$d" && pwd
      exit 0
    fi
  done
fi

echo "guest.sh: no prebuilt test guest found; building one into $CACHE (about 5 minutes)" >&2
mkdir -p "$CACHE"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$ROOT/scripts/guest/build.sh" "$CACHE" "$WORK" >&2
complete "$CACHE" || { echo "guest.sh: build finished but $CACHE is incomplete" >&2; exit 1; }
echo "$CACHE"
