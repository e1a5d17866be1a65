"""A guest link in-process for tests: a real GuestLink on one end of a
socketpair, the test playing the host half on the other end."""

from __future__ import annotations

import select
import socket

from wlproxy.core import link
from wlproxy.halves.guest import GuestLink
from wlproxy.io.loop import Loop


class Server:
    """What GuestLink needs of its server."""

    def __init__(self, loop: Loop):
        self.loop = loop
        self.diff = True
        self.ready: list = []
        self.endpoint = None

    def link_ready(self, lk) -> None:
        self.ready.append(lk)

    def link_down(self, reason: str) -> None:
        pass


def readable(s: socket.socket) -> bool:
    return bool(select.select([s], [], [], 0)[0])


def run_until(loop: Loop, cond, turns: int = 200) -> None:
    for _ in range(turns):
        if cond():
            return
        loop.run_once(0.01)
    raise AssertionError("condition not reached")


def linked() -> tuple[Loop, GuestLink, socket.socket]:
    """A loop, a guest link that has had the host's HELLO, and the host's end."""
    loop = Loop()
    host, guest_end = socket.socketpair()
    host.settimeout(2)
    server = Server(loop)
    lk = GuestLink(server, guest_end.detach(), "test link")
    host.sendall(link.hello_frame(1 << 18, "test host"))
    run_until(loop, lambda: server.ready)
    return loop, lk, host


def client(lk: GuestLink, kind: int = socket.SOCK_SEQPACKET, bufsize: int = 0) -> socket.socket:
    """A client of ``lk`` (``bufsize``: small socket buffers, so output to it queues soon)."""
    c, proxy_side = socket.socketpair(socket.AF_UNIX, kind)
    c.settimeout(2)
    if bufsize:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        proxy_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
    lk.add_client(proxy_side)
    return c


def link_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, channel, payload) of each whole frame in ``data``."""
    out, pos = [], 0
    while len(data) - pos >= link.HEADER_SIZE:
        n, ftype, _, ch = link.HEADER.unpack_from(data, pos)
        if len(data) - pos - link.HEADER_SIZE < n:
            break
        out.append((ftype, ch, data[pos + link.HEADER_SIZE:pos + link.HEADER_SIZE + n]))
        pos += link.HEADER_SIZE + n
    return out
