#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (fuzz/corpus/TARGET/NAME), in the input formats
that fuzz/src/{ring,session,pci}.rs and fuzz_targets/cli.rs document. Valid inputs only: the
fuzzer mutates from there. Run from anywhere: python3 fuzz/corpus/gen.py"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# ---- guest memory images: vring k at k*0x400 (desc), +0x100 (avail), +0x200 (used) ----
NEXT, WRITE, INDIRECT = 1, 2, 4

class Mem:
    def __init__(self):
        self.b = bytearray(0x4000)
    def w(self, addr, data):
        end = addr + len(data)
        if end > len(self.b):
            self.b.extend(bytes(end - len(self.b)))
        self.b[addr:end] = data
    def chain(self, k, descs, heads=None):
        """descs: (addr, len, flags, next); heads: avail ring entries (default [0])."""
        base = k * 0x400
        for i, (a, l, f, n) in enumerate(descs):
            self.w(base + 16 * i, struct.pack("<QIHH", a, l, f, n))
        heads = [0] if heads is None else heads
        self.w(base + 0x100, struct.pack("<HH", 0, len(heads)) +
               b"".join(struct.pack("<H", h) for h in heads))
    def bytes(self):
        return bytes(self.b).rstrip(b"\0") or b"\0"

def ring_input(mem, thread=0, event=0, flags=0, host=b""):
    return struct.pack("<BBBH", thread, event, flags, len(host)) + host + mem.bytes()

# virtio-blk
def blk_req(rtype, data_len=512, data_flags=WRITE, data=b"", sector=0, indirect=False):
    m = Mem()
    m.w(0x1000, struct.pack("<IIQ", rtype, 0, sector))
    m.w(0x1100, data)
    descs = [(0x1000, 16, NEXT, 1)]
    if data_len:
        descs.append((0x1100, data_len, data_flags | NEXT, len(descs) + 1))
    descs.append((0x1800, 1, WRITE, 0))
    if indirect:
        for i, (a, l, f, n) in enumerate(descs):
            m.w(0x2000 + 16 * i, struct.pack("<QIHH", a, l, f, n))
        m.chain(0, [(0x2000, 16 * len(descs), INDIRECT, 0)])
    else:
        m.chain(0, descs)
    return m

BLK = {
    "read": blk_req(0),
    "write": blk_req(1, data_flags=0, data=b"\xab" * 512, sector=8),
    "flush": blk_req(4, data_len=0),
    "get_id": blk_req(8, data_len=20),
    "discard": blk_req(11, data_len=16, data_flags=0, data=struct.pack("<QII", 0, 8, 0)),
    "write_zeroes": blk_req(13, data_len=16, data_flags=0, data=struct.pack("<QII", 8, 8, 1)),
    "read_indirect": blk_req(0, indirect=True),
}

# virtio-net: thread 0 = [rx q0, tx q1]
FRAME = bytes.fromhex("ffffffffffff525400123456" "0806") + bytes(46)
def net_tx():
    m = Mem()
    m.w(0x1000, bytes(12) + FRAME)
    m.chain(1, [(0x1000, 12 + len(FRAME), 0, 0)])
    return m
def net_tx_split():
    m = Mem()
    m.w(0x1000, bytes(12))
    m.w(0x1100, FRAME)
    m.chain(1, [(0x1000, 12, NEXT, 1), (0x1100, len(FRAME), 0, 0)])
    return m
def net_rx(n=1, size=1526):
    m = Mem()
    m.chain(0, [(0x1000 + i * 0x800, size, WRITE, 0) for i in range(n)], list(range(n)))
    return m

# virtio-vsock: thread 0 = [rx q0, tx q1, event q2]
def vsock_hdr(op, src_port=1024, dst_port=1234, length=0, flags=0):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, length, 1, op, flags, 65536, 0)
def vsock_tx(op, payload=b"", flags=0):
    m = Mem()
    m.chain(0, [(0x2000 + i * 0x100, 0x100, WRITE, 0) for i in range(4)], [0, 1, 2, 3])
    m.w(0x1000, vsock_hdr(op, length=len(payload), flags=flags))
    if payload:
        m.w(0x1100, payload)
        m.chain(1, [(0x1000, 44, NEXT, 1), (0x1100, len(payload), 0, 0)])
    else:
        m.chain(1, [(0x1000, 44, 0, 0)])
    return m

# virtio-rng, virtio-console
def writable(k, n=1, size=64):
    m = Mem()
    m.chain(k, [(0x1000 + i * 0x100, size, WRITE, 0) for i in range(n)], list(range(n)))
    return m
def console_tx():
    m = Mem()
    m.w(0x1000, b"hello, console\n")
    m.chain(1, [(0x1000, 15, 0, 0)])
    return m

def chains():
    for name, m in BLK.items():
        put("chain_blk", name, ring_input(m))
    put("chain_blk", "read_event_idx", ring_input(BLK["read"], flags=1))
    put("chain_net", "tx", ring_input(net_tx(), event=1))
    put("chain_net", "tx_split", ring_input(net_tx_split(), event=1, flags=1))
    put("chain_net", "rx", ring_input(net_rx(), event=0, host=FRAME))
    put("chain_net", "rx_small_buffers", ring_input(net_rx(4, 32), event=0, host=FRAME))
    for op, name, payload in [(1, "request", b""), (5, "rw", b"data"), (4, "shutdown", b""),
                              (3, "rst", b""), (7, "credit_request", b""), (2, "response", b"")]:
        put("chain_vsock", name, ring_input(vsock_tx(op, payload, 3 if op == 4 else 0), event=1))
    put("chain_vsock", "rx_kick", ring_input(vsock_tx(1), event=0))
    put("chain_rng", "one", ring_input(writable(0)))
    put("chain_rng", "four_event_idx", ring_input(writable(0, 4, 512), flags=1))
    put("chain_console", "tx", ring_input(console_tx(), event=1))
    put("chain_console", "rx", ring_input(writable(0), event=0, host=b"typed input\n"))

# ---- vhost-user sessions ----
UA = 0x7f0000000000  # the frontend's address of guest RAM (GPA 0)
def msg(req, payload=b"", flags=0x1):
    return struct.pack("<III", req, flags, len(payload)) + payload
def chunk(data, fds=()):
    """fds: 'mem' or 'event' per fd."""
    h = len(fds)
    for i, f in enumerate(fds):
        if f == "event":
            h |= 4 << i
    return struct.pack("<BH", h, len(data)) + data

def u64(v): return struct.pack("<Q", v)
def state(i, n): return struct.pack("<II", i, n)

def handshake(protocol=0x209, features=(1 << 32) | (1 << 30)):
    return [chunk(msg(3)), chunk(msg(1)), chunk(msg(2, u64(features))), chunk(msg(15)),
            chunk(msg(16, u64(protocol))), chunk(msg(17))]

def mem_table():
    return chunk(msg(5, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 0x10000, UA, 0)), ["mem"])

def queues(n, size=16):
    out = []
    for q in range(n):
        d, a, u = q * 0x400, q * 0x400 + 0x100, q * 0x400 + 0x200
        out += [chunk(msg(8, state(q, size))),
                chunk(msg(9, struct.pack("<IIQQQQ", q, 0, UA + d, UA + u, UA + a, 0))),
                chunk(msg(10, state(q, 0))),
                chunk(msg(13, u64(q)), ["event"]),
                chunk(msg(12, u64(q)), ["event"]),
                chunk(msg(18, state(q, 1)))]
    return out

def session(memory, parts):
    mem = memory.bytes() if memory else b""
    return struct.pack("<H", len(mem)) + mem + b"".join(parts)

def get_config(size):
    return chunk(msg(24, struct.pack("<III", 0, size, 0) + bytes(size)))

def sessions():
    devices = {
        "blk": (BLK["read"], 1, 60),
        "net": (net_tx(), 2, 12),
        "vsock": (vsock_tx(1), 3, 8),
        "rng": (writable(0), 1, 0),
        "console": (console_tx(), 2, 12),
    }
    for dev, (memory, nq, cfg) in devices.items():
        t = "vhost_user_" + dev
        put(t, "handshake", session(None, handshake()))
        tail = [chunk(msg(11, state(q, 0))) for q in range(nq)]
        put(t, "request", session(memory, handshake() + [mem_table()] + queues(nq) + tail))
        if cfg:
            put(t, "get_config", session(None, handshake() + [get_config(cfg)]))
        # CONFIGURE_MEM_SLOTS: ADD/REM_MEM_REGION instead of SET_MEM_TABLE.
        region = struct.pack("<QQQQQ", 0, 0, 0x10000, UA, 0)
        put(t, "mem_slots", session(memory, handshake(0x209 | 1 << 15) +
            [chunk(msg(36)), chunk(msg(37, region), ["mem"])] + queues(nq) +
            [chunk(msg(38, region))]))
        put(t, "reset_device", session(memory, handshake(0x209 | 1 << 13) + [mem_table()] +
            queues(nq) + [chunk(msg(34))] + queues(nq)))
    # blk: in-flight buffer (GET_INFLIGHT_FD, then SET_INFLIGHT_FD with a memfd), SET_CONFIG.
    proto = 0x209 | 1 << 12
    infl = struct.pack("<QQHH", 0, 0, 1, 16)
    put("vhost_user_blk", "inflight", session(BLK["write"], handshake(proto) +
        [chunk(msg(31, infl)), chunk(msg(32, struct.pack("<QQHH", 0x10000 - 0x1000, 0x1000, 1, 16)), ["mem"]),
         mem_table()] + queues(1)))
    put("vhost_user_blk", "set_config_wce", session(None, handshake() +
        [chunk(msg(25, struct.pack("<III", 32, 1, 0) + b"\x00"))]))

# ---- accel virtio-pci: op u8, a u16, b u8, data (see fuzz/src/pci.rs) ----
def cfgw(reg, value, size=4, off=0):
    code = {1: 0, 2: 1, 4: 2}[size]
    return struct.pack("<BHB", 0, reg, code | off << 2) + value.to_bytes(size, "little")
def cfgr(reg): return struct.pack("<BHB", 1, reg, 2)
def barw(off, value, size):
    code = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return struct.pack("<BHB", 2, off, code) + value.to_bytes(size, "little")
def barr(off, size):
    return struct.pack("<BHB", 3, off, {1: 0, 2: 1, 4: 2, 8: 3}[size])

def pci():
    driver = [cfgw(1, 0x6), cfgr(0), cfgr(13)]
    # MSI-X on (control word: upper half of the capability's first dword; try the usual spots).
    for reg in range(16, 40):
        driver.append(cfgr(reg))
    driver += [barw(0x14, 0, 1), barw(0x14, 1, 1), barw(0x14, 3, 1)]
    driver += [barw(0x00, 1, 4), barr(0x04, 4), barw(0x08, 1, 4), barw(0x0c, 1, 4),
               barw(0x14, 0xb, 1), barr(0x14, 1), barw(0x10, 0, 2)]
    for q in range(2):
        driver += [barw(0x16, q, 2), barr(0x18, 2), barw(0x18, 16, 2), barw(0x1a, q + 1, 2),
                   barw(0x20, 0x10000 * (q + 1), 8), barw(0x28, 0x10000 * (q + 1) + 0x1000, 8),
                   barw(0x30, 0x10000 * (q + 1) + 0x2000, 8), barw(0x1c, 1, 2)]
    driver += [barw(0x14, 0xf, 1), barr(0x2000, 4), barw(0x2000, 0x1234, 4), barr(0x1000, 1),
               barw(0x3000, 0, 2)]
    # MSI-X table entry 1: address, data, unmask; PBA read.
    driver += [barw(0x8010, 0xfee00000, 4), barw(0x8018, 0x41, 4), barw(0x801c, 0, 4),
               barr(0xc000, 8)]
    put("virtio_pci", "driver_init", b"".join(driver))
    put("virtio_pci", "reset", b"".join(driver) + barw(0x14, 0, 1) + struct.pack("<BHB", 4, 0, 0))
    # pci_cfg capability window: BAR 0 accessed through config space.
    put("virtio_pci", "config_space", b"".join([cfgw(1, 0x6)] + [cfgr(r) for r in range(64)] +
        [cfgw(r, 0xffffffff) for r in range(4, 10)] + [cfgr(r) for r in range(4, 10)]))

# ---- accel command line: argv split at NUL ----
def cli():
    shared = ("-m 256 -object memory-backend-memfd,id=mem,size=256M,share=on "
              "-numa node,memdev=mem -kernel vmlinux -append console=ttyS0 -nographic")
    lines = {
        "minimal": "-kernel vmlinux -m 128M -smp 2 -serial stdio",
        "blk": shared + " -chardev socket,id=c0,path=/tmp/b.sock "
               "-device vhost-user-blk-pci,chardev=c0,num-queues=4,queue-size=256,bootindex=1",
        "net": shared + " -chardev socket,id=n,path=/n -netdev vhost-user,id=net0,chardev=n,queues=2 "
               "-device virtio-net-pci,netdev=net0,mq=on,mac=52:54:00:12:34:56",
        "many": shared + " -chardev socket,id=a,path=/a -chardev socket,id=b,path=/b "
                "-chardev socket,id=c,path=/c -device vhost-user-vsock-pci,chardev=a "
                "-device vhost-user-rng-pci,chardev=b,addr=0x1f -device vhost-user-console-pci,chardev=c",
        "machine": "-machine pc,memory-backend=mem,accel=kvm -cpu host -smp 4,sockets=1,cores=2,threads=2 "
                   "-object memory-backend-memfd,id=mem,size=512M -m 512M -kernel bzImage "
                   "-initrd initrd.img -no-reboot -qmp unix:/tmp/q.sock,server,nowait -name vm1",
        "json": shared + " -chardev socket,id=c0,path=/tmp/b.sock "
                "-device {\"driver\":\"vhost-user-blk-pci\",\"chardev\":\"c0\",\"id\":\"d0\"}",
        "help": "-help",
    }
    for name, line in lines.items():
        put("cli", name, b"\0".join(a.encode() for a in line.split(" ")))

chains()
sessions()
pci()
cli()
