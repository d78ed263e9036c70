#!/usr/bin/env python3
"""Writes a newc cpio archive of files for the test guest (no cpio(1) needed).

usage: mkcpio.py OUT.cpio GUEST_PATH=HOST_FILE[:MODE] ...
Every file is owned by root; MODE is octal (default 0755). The archive can be appended to an
initramfs: Linux unpacks concatenated archives.
"""
import os
import sys


def entry(ino, name, mode, data):
    name_b = name.encode() + b"\0"
    hdr = "070701" + "".join(
        "%08X" % v
        for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0)
    )
    out = hdr.encode() + name_b
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out = b""
    ino = 0x7000
    dirs = set()
    for spec in argv[2:]:
        guest, host = spec.split("=", 1)
        mode = 0o755
        if ":" in host:
            host, m = host.rsplit(":", 1)
            mode = int(m, 8)
        guest = guest.lstrip("/")
        parts = guest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                ino += 1
                out += entry(ino, d, 0o040755, b"")
        with open(host, "rb") as f:
            data = f.read()
        ino += 1
        out += entry(ino, guest, 0o100000 | mode, data)
    out += entry(0, "TRAILER!!!", 0, b"")
    out += b"\0" * (-len(out) % 512)
    tmp = argv[1] + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, argv[1])


if __name__ == "__main__":
    main(sys.argv)
