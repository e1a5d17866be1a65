"""The floor: the same bytes over the same kind of socket, by the simplest
sender and receiver there are, from a mapped buffer into a mapped buffer.

``python -m wlproxy.tools.bench.floor receive PATH`` listens on a Unix socket and
forks a receiver per connection: read a 16-byte header (payload length), then
``recv_into`` a memfd mapping until the payload is in, then answer one byte.

``python -m wlproxy.tools.bench.floor relay PATH TARGET`` is the floor of any
proxy made of two processes (like wlproxy's two halves): a byte relay that
forks per connection and copies bytes both ways between the client and
TARGET with a blocking ``poll`` loop and nothing else (no fds, so only for
clients that pass none: the roundtrip scenario).  Two of them in a row in
front of the compositor cost what the extra process hops cost.

``python -m wlproxy.tools.bench.floor send PATH`` takes the benchmark client's stdin
commands (see :mod:`wlproxy.tools.bench.client`) and answers the same JSON, timing
for each frame one blocking ``sendmsg`` of header + the damaged rows straight
from its own memfd mapping, until the receiver's byte is back.  Both ends set
the link's socket options (:func:`wlproxy.io.linkio.tune_socket`), so the floor
and wlproxy's link have the same kernel buffers.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import struct
import sys
import time
from typing import Callable

import numpy as np

from wlproxy.tools.bench.client import serve

HDR = struct.Struct("<QQ")  # payload length, 0


def _tune(sock: socket.socket) -> None:
    try:
        from wlproxy.io.linkio import tune_socket
    except ImportError:
        return
    tune_socket(sock.fileno())


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    pos, n = 0, len(view)
    while pos < n:
        k = sock.recv_into(view[pos:], n - pos)
        if k == 0:
            return False
        pos += k
    return True


def _serve(conn: socket.socket) -> None:
    _tune(conn)
    size = 1 << 20
    fd = os.memfd_create("wlproxy-floor", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    mm = mmap.mmap(fd, size)
    view = memoryview(mm)
    hdr = bytearray(HDR.size)
    while _recv_exact(conn, memoryview(hdr)):
        n, _ = HDR.unpack(hdr)
        if n > size:
            view.release()
            mm.close()
            size = n
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
            view = memoryview(mm)
        if n and not _recv_exact(conn, view[:n]):
            break
        conn.sendall(b"k")


def _fork_per_connection(path: str, serve: Callable[[socket.socket], None]) -> int:
    """Listen on ``path`` and serve each connection in a forked child."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # no zombies
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(64)
    while True:
        conn, _ = lst.accept()
        if os.fork() == 0:
            lst.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                serve(conn)
            finally:
                os._exit(0)
        conn.close()


def receive(path: str) -> int:
    return _fork_per_connection(path, _serve)


def _pump(a: socket.socket, b: socket.socket) -> None:
    import select

    p = select.poll()
    p.register(a, select.POLLIN)
    p.register(b, select.POLLIN)
    other = {a.fileno(): b, b.fileno(): a}
    src = {a.fileno(): a, b.fileno(): b}
    while True:
        for fd, _ in p.poll():
            data = src[fd].recv(1 << 16)
            if not data:
                return
            other[fd].sendall(data)


def relay(path: str, target: str) -> int:
    def serve(conn: socket.socket) -> None:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(target)
        _pump(conn, up)

    return _fork_per_connection(path, serve)


class FloorSender:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        _tune(self.sock)
        self.ack = bytearray(1)
        self.t_last = 0.0
        self.cpu_ns = 0
        self.mm: mmap.mmap | None = None
        self.width = self.height = self.stride = 0

    def setup(self, width: int, height: int) -> dict:
        if self.mm is not None:
            self.view.release()
            self.pixels = None
            self.mm.close()
        self.width, self.height, self.stride = width, height, width * 4
        size = self.stride * height
        fd = os.memfd_create("wlproxy-floor-send", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        self.mm = mmap.mmap(fd, size)
        os.close(fd)
        rng = np.random.default_rng(12345)
        self.contents = [rng.integers(0, 1 << 32, size=(height, width), dtype=np.uint32) for _ in range(3)]
        self.pixels = np.frombuffer(self.mm, dtype=np.uint32).reshape(height, width)
        self.pixels[:] = self.contents[0]
        self.seq = 0
        self.view = memoryview(self.mm)
        return {"ok": True}

    def _draw(self, frac: float) -> None:
        """What the client does before a frame (not timed): fresh pixels in
        the damaged rows, then the pause until the next refresh that the
        other configurations spend waiting for wp_presentation."""
        rows = max(1, min(self.height, round(self.height * frac)))
        y0 = (self.height - rows) // 2
        self.seq += 1
        np.copyto(self.pixels[y0:y0 + rows], self.contents[self.seq % 3][y0:y0 + rows])
        delay = self.t_last + 1 / 60 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def _one(self, payload: list) -> float:
        n = sum(len(p) for p in payload)
        c0 = time.thread_time_ns()
        t0 = self.t_last = time.perf_counter()
        self.sock.sendmsg([HDR.pack(n, 0), *payload])
        if self.sock.recv_into(self.ack, 1) != 1:
            raise RuntimeError("floor receiver went away")
        t1 = time.perf_counter()
        self.cpu_ns += time.thread_time_ns() - c0  # the sender's own CPU, drawing left out
        return t1 - t0

    def _band(self, frac: float) -> memoryview:
        rows = max(1, min(self.height, round(self.height * frac)))
        y0 = (self.height - rows) // 2
        return self.view[y0 * self.stride:(y0 + rows) * self.stride]

    def frames(self, frac: float, content: str, n: int, warmup: int, extra: bytes = b"") -> dict:
        """``content`` is the client's; the floor's pixels are always fresh."""
        band = self._band(frac)
        payload = [extra, band] if extra else [band]
        out = []
        for _ in range(warmup + n):
            self._draw(frac)
            out.append(self._one(payload))
        return {"sync": out[warmup:], "presented": [None] * n, "bytes_per_frame": len(band)}

    def storm(self, n: int, warmup: int, requests: int) -> dict:
        out = self.frames(0.0625, "changed", n, warmup, bytes(24 * requests))
        out["request_bytes"] = 24 * requests
        return out

    def roundtrip(self, n: int, interval: float) -> dict:
        msg = [bytes(12)]
        out = []
        for _ in range(n):
            out.append(self._one(msg))
            if interval:
                time.sleep(interval)
        return {"sync": out}

    def stream(self, seconds: float) -> dict:
        """Whole frames at most 60 per second (what weston's frame callbacks allow)."""
        whole = [self.view[:self.stride * self.height]]
        frames = 0
        t_start = time.monotonic()
        t_next = t_start
        while time.monotonic() - t_start < seconds:
            self._one(whole)
            frames += 1
            t_next += 1 / 60
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        el = time.monotonic() - t_start
        return {"frames": frames, "seconds": el, "bytes": frames * self.stride * self.height}


def send(path: str) -> int:
    s = FloorSender(path)

    def sender_cpu(res: dict) -> None:
        if "error" not in res:
            res["sender_cpu_ns"], s.cpu_ns = s.cpu_ns, 0

    return serve(s, False, after=sender_cpu, stop_on_error=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["relay"] and len(argv) == 3:
        return relay(argv[1], argv[2])
    if len(argv) != 2 or argv[0] not in ("send", "receive"):
        print("usage: python -m wlproxy.tools.bench.floor send|receive SOCKET | relay SOCKET TARGET", file=sys.stderr)
        return 2
    return send(argv[1]) if argv[0] == "send" else receive(argv[1])


if __name__ == "__main__":
    sys.exit(main())
