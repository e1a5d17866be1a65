"""A guest link in-process, driven by a hand-written host end: the DATA
frames that arrive for one client in one read reach the client in one
write (one wake-up of the client), in order; and the C link scan delivers
exactly what the Python path does."""

from __future__ import annotations

import select
import socket
import time

from helpers_wire import encode
from wlproxy import link
from wlproxy.guest import GuestLink
from wlproxy.loop import Loop
from wlproxy.protocol import EVENT


class _Server:
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


def _readable(s: socket.socket) -> bool:
    return bool(select.select([s], [], [], 0)[0])


def _run_until(loop: Loop, cond, turns: int = 200) -> None:
    for _ in range(turns):
        if cond():
            return
        loop.run_once(0.01)
    raise AssertionError("condition not reached")


def _linked() -> tuple[Loop, GuestLink, socket.socket]:
    loop = Loop()
    host, guest_end = socket.socketpair()
    host.settimeout(2)
    server = _Server(loop)
    lk = GuestLink(server, guest_end.detach(), "test link")
    host.sendall(link.hello_frame(1 << 18, "test host"))
    _run_until(loop, lambda: server.ready)
    return loop, lk, host


def _client(lk: GuestLink, kind: int = socket.SOCK_SEQPACKET, bufsize: int = 0) -> socket.socket:
    client, proxy_side = socket.socketpair(socket.AF_UNIX, kind)
    client.settimeout(2)
    if bufsize:  # small socket buffers: the guest half's output to this client queues soon
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        proxy_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
    lk.add_client(proxy_side)
    return client


def test_data_frames_read_together_reach_the_client_in_one_write() -> None:
    loop, lk, host = _linked()
    client = _client(lk)  # seqpacket: every write the guest half makes is one record
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


def test_interleaved_channels_keep_each_clients_order() -> None:
    loop, lk, host = _linked()
    c1, c2 = _client(lk), _client(lk)
    ev = [encode(50 + i, "wl_callback", "done", i, direction=EVENT) for i in range(4)]
    host.sendall(link.frame(link.DATA, 1, ev[0]) + link.frame(link.DATA, 1, ev[1])
                 + link.frame(link.DATA, 2, ev[2]) + link.frame(link.DATA, 1, ev[3]))
    _run_until(loop, lambda: _readable(c1) and _readable(c2))
    assert c2.recv(4096) == ev[2]
    got = c1.recv(4096)
    if got == ev[0] + ev[1]:  # the run ended at channel 2's frame
        _run_until(loop, lambda: _readable(c1))
        got += c1.recv(4096)
    assert got == ev[0] + ev[1] + ev[3]
    lk.shutdown("test over", violation=False)
    loop.close()


def test_a_client_that_does_not_read_gets_everything_later_in_order() -> None:
    loop, lk, host = _linked()
    c = _client(lk, socket.SOCK_STREAM, 4096)
    ev = [encode(50 + i % 200, "wl_callback", "done", i, direction=EVENT) for i in range(3000)]
    sent = b""
    for i in range(0, len(ev), 100):  # within the window; the guest credits as the client reads
        chunk = b"".join(link.frame(link.DATA, 1, e) for e in ev[i:i + 100])
        host.sendall(chunk)
        sent += b"".join(ev[i:i + 100])
        loop.run_once(0)
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < len(sent) and time.monotonic() < deadline:
        loop.run_once(0.01)
        c.setblocking(False)
        try:
            got += c.recv(1 << 16)
        except BlockingIOError:
            pass
    assert bytes(got) == sent
    assert not lk.closed
    lk.shutdown("test over", violation=False)
    loop.close()


def test_data_beyond_the_credit_window_drops_the_link() -> None:
    loop, lk, host = _linked()
    c = _client(lk, socket.SOCK_STREAM, 4096)  # and it does not read: no credit comes back
    ev = encode(50, "wl_callback", "done", 1, direction=EVENT)
    frames = link.frame(link.DATA, 1, ev * 4000)  # 48 KB per frame
    try:
        for _ in range(8):  # 384 KB: over the 256 KiB window
            host.sendall(frames)
            loop.run_once(0)
    except OSError:
        pass
    _run_until(loop, lambda: lk.closed)
    c.close()
    loop.close()


def _deliver(chunks: list[bytes], nclients: int, scan: bool) -> tuple[list[bytes], bool]:
    """Send ``chunks`` as the host's link bytes to a fresh guest link with
    ``nclients`` clients; what each client received, and whether the link dropped."""
    loop, lk, host = _linked()
    if not scan:
        lk.reader.scan = None  # every frame through the Python decoder and channels
    clients = [_client(lk, socket.SOCK_STREAM) for _ in range(nclients)]
    got = [bytearray() for _ in clients]

    def drain() -> None:
        for c, g in zip(clients, got):
            while _readable(c):
                data = c.recv(1 << 16)
                if not data:
                    break
                g += data

    for chunk in chunks:
        host.sendall(chunk)
        for _ in range(3):
            loop.run_once(0)
        drain()
    for _ in range(20):
        loop.run_once(0.005)
        drain()
    dropped = lk.closed
    lk.shutdown("test over", violation=False)
    loop.close()
    return [bytes(g) for g in got], dropped


def test_the_c_link_scan_delivers_exactly_what_the_python_path_does() -> None:
    import random
    for seed in range(40):
        rnd = random.Random(seed)
        stream = b""
        for _ in range(rnd.randrange(5, 40)):
            ch = rnd.randrange(1, 4)
            r = rnd.random()
            if r < 0.15:
                stream += link.credit_frame(ch, 0)
            elif r < 0.2:  # a bad message: that client gets a protocol error and is closed
                stream += link.frame(link.DATA, ch, b"\x01\x00\x00\x00\x00\x00\x04\x00")
            else:
                events = b"".join(encode(rnd.randrange(50, 90), "wl_callback", "done", rnd.randrange(1 << 30),
                                         direction=EVENT) for _ in range(rnd.randrange(1, 6)))
                stream += link.frame(link.DATA, ch, events)
        cuts = sorted(rnd.sample(range(1, len(stream)), min(len(stream) - 1, rnd.randrange(0, 6))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        assert _deliver(chunks, 3, scan=True) == _deliver(chunks, 3, scan=False), f"seed {seed}"
