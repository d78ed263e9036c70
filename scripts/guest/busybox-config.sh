#!/bin/sh
# usage: busybox-config.sh <Debian's static config> <applet list> <busybox source> > .config
# Debian's busybox-static configuration with every applet that is not in the list turned off.
# The kept applets' options (and the shell's) stay as Debian has them, so they behave as in
# Debian's build; `make oldconfig` afterwards drops the options of the removed applets.
set -e
DEB=$1 LIST=$2 SRC=$3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
sed 's/#.*//' "$LIST" | tr -s ' \t' '\n\n' | grep -v '^$' > "$T/keep"
# Each applet's config symbol, from the sources' "//applet:IF_SYMBOL(APPLET...(name," lines
# (an applet can have several: sh is SH_IS_ASH or SH_IS_HUSH; nested conditions like
# IF_INSMOD(IF_NOT_MODPROBE_SMALL(APPLET(insmod... count for the outer symbol).
grep -rhoE '//applet:IF_[A-Z0-9_]+\( *(IF_[A-Z0-9_]+\( *)*APPLET[A-Z_]*\( *[^ ,]+' --include=*.c "$SRC" |
  sed -E 's#//applet:IF_([A-Z0-9_]+)\( *(IF_[A-Z0-9_]+\( *)*APPLET[A-Z_]*\( *([^ ,]+)#\1 \3#' |
  sort -u > "$T/map"
missing=$(awk 'NR == FNR { have[$2] = 1; next } !($1 in have)' "$T/map" "$T/keep")
[ -z "$missing" ] || { echo "busybox-config.sh: no such applet: $missing" >&2; exit 1; }
# Symbols to keep: those of a listed applet; every other applet symbol goes off.
awk 'NR == FNR { k[$1] = 1; next } ($2 in k) { print $1 }' "$T/keep" "$T/map" | sort -u > "$T/on"
awk '{ print $1 }' "$T/map" | sort -u | comm -23 - "$T/on" > "$T/off"
awk 'NR == FNR { off["CONFIG_" $1] = 1; next }
     { split($0, kv, "=") }
     /^CONFIG_/ && (kv[1] in off) { print "# " kv[1] " is not set"; next }
     { print }' "$T/off" "$DEB"
