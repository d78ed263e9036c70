#!/usr/bin/env bash
# Provides the test guest (vmlinux, bzImage, initramfs.cpio, lean.cpio) and prints its directory.
#
#   scripts/guest.sh            # find or build; prints the directory on stdout
#   scripts/guest.sh --find     # find only: prints the directory, or fails (exit 1) if none matches
#   scripts/guest.sh --build    # rebuild into the cache even if a prebuilt guest exists
#
# Looks in order at: $ACCEL_GUEST_DIR, ../shared/guest next to the checkout, the cache
# ($XDG_CACHE_HOME or ~/.cache)/accel-guest, and accepts the first one that is complete AND was
# built from this checkout's recipe: its recipe.sha256 stamp (written by build.sh) must equal
# scripts/guest/recipe-hash.sh's hash of scripts/guest/. A guest from another recipe (e.g. one
# without ACPI) is skipped with a note on stderr. If none matches, builds one into the cache
# from Debian's linux-source-6.1 with the recipe in scripts/guest/ (tinyconfig + fragment
# + three patches for hosts whose /dev/kvm is kvm_pvm; ~5 min on 2 cores; needs root for apt).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/accel-guest
FILES="vmlinux bzImage initramfs.cpio lean.cpio"
WANT=$("$ROOT/scripts/guest/recipe-hash.sh")

complete() {
  local d=$1 f
  for f in $FILES; do [ -s "$d/$f" ] || return 1; done
}

matches() {
  local d=$1
  complete "$d" || return 1
  if [ "$(cat "$d/recipe.sha256" 2>/dev/null)" != "$WANT" ]; then
    echo "guest.sh: skipping $d: built from another recipe (recipe.sha256 is not $WANT)" >&2
    return 1
  fi
}

if [ "${1:-}" != --build ]; then
  for d in "${ACCEL_GUEST_DIR:-}" "$ROOT/../shared/guest" "$CACHE"; do
    if [ -n "$d" ] && matches "$d"; then
      cd "$d" && pwd
      exit 0
    fi
  done
  if [ "${1:-}" = --find ]; then
    echo "guest.sh: no test guest built from this recipe ($WANT); run scripts/guest.sh" >&2
    exit 1
  fi
fi

echo "guest.sh: building the test guest into $CACHE (about 5 minutes)" >&2
mkdir -p "$CACHE"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$ROOT/scripts/guest/build.sh" "$CACHE" "$WORK" >&2
matches "$CACHE" || { echo "guest.sh: build finished but $CACHE is incomplete" >&2; exit 1; }
echo "$CACHE"
