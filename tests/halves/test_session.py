"""A guest link in-process, driven by a hand-written host end: the DATA
frames that arrive for one client in one read reach the client in one
write (one wake-up of the client), in order.  (That the C paths deliver
exactly what the Python path does is tests/halves/test_fastpaths.py.)"""

from __future__ import annotations

import array
import os
import socket
import time

import pytest

from helpers_guestlink import client as _client, link_frames as _link_frames, linked as _linked, readable as _readable, \
    run_until as _run_until
from helpers_wire import encode
from wlproxy.core import link
from wlproxy.core.protocol import EVENT


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


@pytest.mark.parametrize("sndbuf", [0, 4096])
def test_a_frame_and_its_pixels_leave_in_order_even_when_the_link_takes_part_of_them(sndbuf: int) -> None:
    """attach, damage_buffer and commit in one write: the guest half's C read
    path applies them and writes DATA (before the commit), SHM_DATA (the
    pixels) and DATA (the commit) in one writev; with a small link buffer the
    write comes up short and the rest follows from the writer, in order."""
    loop, lk, host = _linked()
    if sndbuf:
        s = socket.socket(fileno=os.dup(lk.fd))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        s.close()
    client = _client(lk, socket.SOCK_STREAM)
    w, h = 64, 48
    size = w * h * 4
    fd = os.memfd_create("frame")
    os.ftruncate(fd, size)
    setup = (encode(1, "wl_display", "get_registry", 2)
             + encode(2, "wl_registry", "bind", 1, ("wl_compositor", 4, 3))
             + encode(2, "wl_registry", "bind", 2, ("wl_shm", 1, 4))
             + encode(3, "wl_compositor", "create_surface", 5)
             + encode(4, "wl_shm", "create_pool", 6, fd, size))
    client.sendmsg([setup], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    client.sendall(encode(6, "wl_shm_pool", "create_buffer", 7, 0, w, h, w * 4, 1))
    got = bytearray()

    def drain(until) -> None:
        host.setblocking(False)
        for _ in range(500):
            loop.run_once(0.005)
            try:
                got.extend(host.recv(1 << 20))
            except BlockingIOError:
                pass
            if until():
                return
        raise AssertionError("the link did not carry it")

    create_buffer = encode(6, "wl_shm_pool", "create_buffer", 7, 0, w, h, w * 4, 1)
    drain(lambda: any(t == link.DATA and p.endswith(create_buffer) for t, _, p in _link_frames(bytes(got))))
    before = len(_link_frames(bytes(got)))
    pixels = os.urandom(size)
    os.pwrite(fd, pixels, 0)
    msgs = [encode(5, "wl_surface", "attach", 7, 0, 0), encode(5, "wl_surface", "damage_buffer", 0, 0, w, h),
            encode(5, "wl_surface", "commit")]
    client.sendall(b"".join(msgs))

    def frame_done() -> bool:
        return any(t == link.DATA and p.endswith(msgs[2]) for t, _, p in _link_frames(bytes(got))[before:])

    drain(frame_done)
    frames = [(t, p) for t, _, p in _link_frames(bytes(got))[before:] if t != link.CREDIT]
    kinds = [t for t, _ in frames]
    assert kinds[0] == link.DATA and frames[0][1] == msgs[0] + msgs[1]
    assert kinds[-1] == link.DATA and frames[-1][1] == msgs[2]
    shm = bytearray(size)
    for t, p in frames[1:-1]:
        assert t == link.SHM_DATA
        _key, _, off = link.SHM_HEADER.unpack_from(p)
        shm[off:off + len(p) - link.SHM_HEADER.size] = p[link.SHM_HEADER.size:]
    assert bytes(shm) == pixels
    os.close(fd)
    lk.shutdown("test over", violation=False)
    loop.close()
