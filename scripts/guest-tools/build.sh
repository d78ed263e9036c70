#!/bin/sh
# Builds the guest test tools (static) and an initramfs with them:
#   scripts/guest-tools/build.sh OUTDIR [BASE_CPIO]
# writes OUTDIR/vsock-tool, OUTDIR/smp-stress, OUTDIR/guest-tools.cpio (the tools, at /bin) and
# OUTDIR/initrd.cpio (BASE_CPIO, default ../shared/guest/lean.cpio, followed by the tools).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR [BASE_CPIO]}
base=${2:-$here/../../../shared/guest/lean.cpio}
mkdir -p "$out"
${CC:-gcc} -static -O2 -Wall -Wextra -o "$out/vsock-tool.tmp" "$here/vsock-tool.c"
mv "$out/vsock-tool.tmp" "$out/vsock-tool"
${CC:-gcc} -static -O2 -Wall -Wextra -pthread -o "$out/smp-stress.tmp" "$here/smp-stress.c"
mv "$out/smp-stress.tmp" "$out/smp-stress"
python3 "$here/mkcpio.py" "$out/guest-tools.cpio" "bin/vsock-tool=$out/vsock-tool" \
  "bin/smp-stress=$out/smp-stress"
cat "$base" "$out/guest-tools.cpio" > "$out/initrd.cpio.tmp"
mv "$out/initrd.cpio.tmp" "$out/initrd.cpio"
