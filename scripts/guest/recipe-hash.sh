#!/bin/sh
# Prints the hash of the test-guest recipe: every file in this folder (fragment, init,
# power-button handler, patches, build scripts; not a build's out/). build.sh writes it to
# OUTDIR/recipe.sha256 and scripts/guest.sh only accepts a guest directory whose stamp matches.
set -e
cd "$(dirname "$0")"
find . -type f ! -path './out/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
