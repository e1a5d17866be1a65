"""``FdSocket`` output: sent at once when nothing is queued, queued behind
earlier output, held while corked and then sent in one go."""

from __future__ import annotations

import socket

from wlproxy.io.fdsock import FdSocket
from wlproxy.io.loop import Loop


class CountingSocket(socket.socket):
    sends = 0

    def sendmsg(self, *args):
        self.sends += 1
        return super().sendmsg(*args)


def _pair(loop: Loop) -> tuple[FdSocket, socket.socket]:
    a, b = socket.socketpair()
    s = CountingSocket(fileno=a.detach())
    fs = FdSocket(loop, s, lambda *_: None, lambda *_: None, name="test")
    b.settimeout(2)
    return fs, b


def test_write_goes_out_at_once_when_nothing_is_queued() -> None:
    loop = Loop()
    fs, peer = _pair(loop)
    drained = []
    fs.on_drain = lambda: drained.append(1)
    fs.write(memoryview(b"hello"))
    assert fs.sock.sends == 1 and not fs.busy and drained == [1]
    assert peer.recv(100) == b"hello"
    loop.close()


def test_corked_writes_leave_in_one_send_in_order() -> None:
    loop = Loop()
    fs, peer = _pair(loop)
    fs.cork()
    assert fs.busy
    for part in (b"one ", b"two ", b"three"):
        fs.write(part)
    assert fs.sock.sends == 0
    fs.uncork()
    assert fs.sock.sends == 1 and not fs.busy
    assert peer.recv(100) == b"one two three"
    loop.close()


def test_a_full_socket_queues_the_rest_and_sends_it_when_writable() -> None:
    loop = Loop()
    fs, peer = _pair(loop)
    big = bytes(range(256)) * 8192  # 2 MiB: more than the socket buffer
    fs.write(big)
    assert fs.busy and fs.out_bytes > 0
    got = bytearray()
    while len(got) < len(big):
        got += peer.recv(1 << 20)
        loop.run_once(0)
    assert bytes(got) == big and not fs.busy
    loop.close()


def test_sent_directly_queues_what_the_socket_did_not_take() -> None:
    import errno
    loop = Loop()
    fs, peer = _pair(loop)
    fs.sent_directly(b"abcdef", 2)  # the first two bytes went out elsewhere
    assert fs.busy
    loop.run_once(0.1)
    assert peer.recv(100) == b"cdef" and not fs.busy
    closed = []
    fs.on_close = lambda s, why: closed.append(why)
    fs.sent_directly(b"x", -errno.EPIPE)
    assert fs.closed and "write error" in closed[0]
    loop.close()
