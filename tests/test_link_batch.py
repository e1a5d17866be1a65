"""A guest link in-process, driven by a hand-written host end: the DATA
frames that arrive for one client in one read reach the client in one
write (one wake-up of the client), in order."""

from __future__ import annotations

import select
import socket

from helpers_wire import encode
from wlproxy import link
from wlproxy.guest import GuestLink
from wlproxy.loop import Loop
from wlproxy.protocol import EVENT
from wlproxy.shm import Differ


class _Server:
    """What GuestLink needs of its server."""

    def __init__(self, loop: Loop):
        self.loop = loop
        self.differ = Differ()
        self.ready: list = []
        self.endpoint = None

    def link_ready(self, lk) -> None:
        self.ready.append(lk)

    def link_down(self, reason: str) -> None:
        pass


def _readable(s: socket.socket) -> bool:
    return bool(select.select([s], [], [], 0)[0])


def _run_until(loop: Loop, cond, turns: int = 200) -> None:
    for _ in range(turns):
        if cond():
            return
        loop.run_once(0.01)
    raise AssertionError("condition not reached")


def test_data_frames_read_together_reach_the_client_in_one_write() -> None:
    loop = Loop()
    host, guest_end = socket.socketpair()
    host.settimeout(2)
    server = _Server(loop)
    lk = GuestLink(server, guest_end.detach(), "test link")
    host.sendall(link.hello_frame(1 << 18, "test host"))
    _run_until(loop, lambda: server.ready)
    # a seqpacket client: every write the guest half makes is one record
    client, proxy_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client.settimeout(2)
    lk.add_client(proxy_side)
    events = [encode(50 + i, "wl_callback", "done", i, direction=EVENT) for i in range(3)]
    host.sendall(b"".join(link.frame(link.DATA, 1, e) for e in events))
    _run_until(loop, lambda: _readable(client))
    assert client.recv(4096) == b"".join(events)
    assert not _readable(client)
    # one frame alone goes out as it is
    host.sendall(link.frame(link.DATA, 1, events[0]))
    _run_until(loop, lambda: _readable(client))
    assert client.recv(4096) == events[0]
    lk.shutdown("test over", violation=False)
    loop.close()
