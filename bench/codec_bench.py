"""Codec micro-benchmark: messages per second through the C codec on recorded
real traffic, next to a pure-Python parse of the same bytes.

    python bench/codec_bench.py                 # run the benchmark on bench/traffic/*.bin
    python bench/codec_bench.py record          # re-record the traffic (needs weston)

The recordings are what a proxy between real clients (weston-simple-shm,
weston-subsurfaces, weston-flower, wayland-info) and a headless weston read,
one chunk per ``recvmsg``: ``WLTRAF01``, a length-prefixed note, then per
chunk ``<u8 direction (0 request, 1 event), u8 fds, u16 0, u32 length>`` and
the bytes.  Replaying the chunks in order rebuilds both directions of each
connection exactly as the proxy saw them.

C codec: one ``Codec.feed`` per chunk, as the proxies do (validation, object
map, fd accounting; no messages intercepted, and again with every message
intercepted, i.e. one record per message).  Python: the same chunks split
into messages, each message's signature looked up through a Python object
map (``wlproxy.core.protocol``) and its arguments decoded with ``wlproxy.core.wire``,
new ids and delete_id tracked.  No validation on the Python side, so the
comparison flatters Python.
"""

from __future__ import annotations

import argparse
import array
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers_wire import read_traffic, traffic_files, write_traffic  # noqa: E402

from wlproxy.core import wire  # noqa: E402
from wlproxy.core.codec import Codec, default_tables  # noqa: E402
from wlproxy.core.protocol import EVENT, load  # noqa: E402

TRAFFIC = ROOT / "bench" / "traffic"

# name -> client command (bounded in time)
CLIENTS = {
    "simple-shm": ["timeout", "--foreground", "-s", "INT", "2", "weston-simple-shm"],
    "subsurfaces": ["timeout", "2", "weston-subsurfaces"],
    "flower": ["timeout", "1", "weston-flower"],
    "wayland-info": ["wayland-info"],
}


# -- recording -------------------------------------------------------------------

def record_one(weston, cmd: list[str], sock_name: str) -> list[tuple[int, bytes, int]]:
    """Run ``cmd`` through a minimal forwarding proxy and return what it read."""
    path = os.path.join(weston.runtime_dir, sock_name)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    env = weston.env()
    env["WAYLAND_DISPLAY"] = sock_name
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks: list[tuple[int, bytes, int]] = []
    try:
        lsock.settimeout(10)
        client, _ = lsock.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(weston.socket_path)
        peers = {client.fileno(): (client, upstream, 0), upstream.fileno(): (upstream, client, 1)}
        open_ = True
        while open_:
            r, _, _ = select.select(list(peers), [], [], 10)
            if not r:
                break
            for fd in r:
                src, dst, direction = peers[fd]
                try:
                    data, anc, _, _ = src.recvmsg(65536, socket.CMSG_SPACE(28 * 4))
                except OSError:  # e.g. reset by a client killed with unread input
                    data, anc = b"", []
                fds = array.array("i")
                for level, typ, cdata in anc:
                    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                        fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                if not data:
                    open_ = False
                    break
                chunks.append((direction, data, len(fds)))
                anc_out = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)] if fds else []
                try:
                    dst.sendmsg([data], anc_out)
                except OSError:
                    open_ = False
                for f in fds:
                    os.close(f)
        client.close()
        upstream.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
        lsock.close()
        os.unlink(path)
    return chunks


def record() -> None:
    from wlproxy.tools.weston import Weston

    TRAFFIC.mkdir(parents=True, exist_ok=True)
    with Weston(debug=False) as w:
        for name, cmd in CLIENTS.items():
            chunks = record_one(w, cmd, f"rec-{name}")
            write_traffic(TRAFFIC / f"{name}.bin", chunks, note=f"{' '.join(cmd)} on weston 10 headless (pixman)")
            nbytes = sum(len(c[1]) for c in chunks)
            print(f"recorded {name}: {len(chunks)} chunks, {nbytes} bytes")


# -- the two parsers ---------------------------------------------------------------

def c_codec_run(recordings, intercept: bool) -> int:
    """Feed every recording through a fresh C codec; returns messages seen."""
    nmsgs = 0
    for chunks in recordings:
        codec = Codec()
        if intercept:
            codec.intercept_all()
        bufs = [bytearray(), bytearray()]
        for d, data, nfds in chunks:
            b = bufs[d]
            b += data
            recs, used = codec.feed(d, b, len(b), nfds)
            del b[:used]
            if recs and recs[-1].kind == 2:
                raise RuntimeError(f"codec rejected recorded traffic: {codec.error_text()}")
            nmsgs += len(recs)
    return nmsgs


def c_core_run(recordings) -> int:
    """``lib.wlc_feed`` called directly: the C work plus the cffi call, no Record objects."""
    from wlproxy._codec import ffi, lib

    tables = default_tables()
    recs = ffi.new("struct wlc_rec[]", 256)
    consumed = ffi.new("uint32_t *")
    nrec = 0
    for chunks in recordings:
        conn = ffi.gc(lib.wlc_new(tables.c, 4096, 1 << 20), lib.wlc_free)
        bufs = [bytearray(), bytearray()]
        for d, data, nfds in chunks:
            b = bufs[d]
            b += data
            nrec += lib.wlc_feed(conn, d, ffi.from_buffer(b), len(b), nfds, recs, 256, consumed)
            del b[:consumed[0]]
    return nrec


def python_run(recordings, proto) -> int:
    """Split, look up each message's signature via a Python object map, decode."""
    display = proto["wl_display"]
    nmsgs = 0
    for chunks in recordings:
        objects = {1: display}
        bufs = [b"", b""]
        for d, data, _ in chunks:
            buf = bufs[d] + data
            pos = 0
            n = len(buf)
            while n - pos >= 8:
                obj, op, size = wire.header(buf[pos:pos + 8])
                if n - pos < size:
                    break
                iface = objects.get(obj)
                if iface is not None:
                    msg = iface.messages(d)[op]
                    args = wire.decode(msg, buf[pos:pos + size], [-1] * msg.nfds)
                    for a, v in zip(msg.args, args):
                        if a.type == "new_id":
                            if a.interface:
                                objects[v] = proto[a.interface]
                            else:
                                objects[v.id] = proto[v.interface]
                    if d == EVENT and obj == 1 and op == 1:
                        objects.pop(args[0], None)
                pos += size
                nmsgs += 1
            bufs[d] = buf[pos:]
    return nmsgs


def count_messages(recordings) -> int:
    n = 0
    for chunks in recordings:
        bufs = [b"", b""]
        for d, data, _ in chunks:
            buf = bufs[d] + data
            pos = 0
            while len(buf) - pos >= 8:
                size = wire.header(buf[pos:pos + 8])[2]
                if len(buf) - pos < size:
                    break
                pos += size
                n += 1
            bufs[d] = buf[pos:]
    return n


def best_rate(fn, nmsgs: int, min_time: float) -> float:
    """Messages per second, best of repeated runs totalling at least ``min_time``."""
    best = float("inf")
    spent = 0.0
    runs = 0
    while spent < min_time or runs < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        runs += 1
    return nmsgs / best


def bench(min_time: float) -> None:
    files = traffic_files()
    if not files:
        sys.exit("no recordings in bench/traffic/: run `python bench/codec_bench.py record` first")
    recordings = [read_traffic(f) for f in files]
    proto = load()
    default_tables()
    nmsgs = count_messages(recordings)
    nbytes = sum(len(c[1]) for r in recordings for c in r)
    nchunks = sum(len(r) for r in recordings)
    print(f"traffic: {', '.join(f.stem for f in files)}: {nmsgs} messages, {nbytes} bytes, {nchunks} chunks")
    # sanity: the parsers see every message
    assert c_codec_run(recordings, intercept=True) == nmsgs
    assert python_run(recordings, proto) == nmsgs

    c_pass = best_rate(lambda: c_codec_run(recordings, False), nmsgs, min_time)
    c_msg = best_rate(lambda: c_codec_run(recordings, True), nmsgs, min_time)
    c_core = best_rate(lambda: c_core_run(recordings), nmsgs, min_time)
    py = best_rate(lambda: python_run(recordings, proto), nmsgs, min_time)
    rows = [
        ("C codec, Codec.feed, forwarded as ranges", c_pass),
        ("C codec, Codec.feed, every message a record", c_msg),
        ("C codec, lib.wlc_feed called directly", c_core),
        ("pure Python: split, look up, decode", py),
    ]
    for label, rate in rows:
        print(f"{label:46s} {rate:12,.0f} msg/s  {rate / py:5.1f}x Python")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", choices=["run", "record"], default="run")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement (default 1)")
    a = p.parse_args()
    if a.command == "record":
        record()
    else:
        bench(a.min_time)


if __name__ == "__main__":
    main()
