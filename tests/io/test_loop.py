"""C's fast loop (``wlproxy/c/fastloop.c``): plain round trips through an
in-process guest link never reach Python, the credit they earn rides on the
next write to the link, and whatever needs Python still gets there, in order."""

from __future__ import annotations

import socket

from helpers_wire import encode
from helpers_guestlink import client as _client, link_frames as _link_frames, linked as _linked, run_until as _run_until
from wlproxy.core import link
from wlproxy.io.loop import Loop
from wlproxy.core.protocol import EVENT, REQUEST


def _count_python_callbacks(loop) -> list[int]:
    """Wrap every fd callback and C hand-back handler the loop has; returns the call counter."""
    calls = [0]

    def wrap(cb):
        def counted(*a):
            calls[0] += 1
            return cb(*a)
        return counted

    for table in (loop._readers, loop._writers, loop._c_handlers):
        for fd in list(table):
            table[fd] = wrap(table[fd])
    return calls


def _host_read_open(loop, host: socket.socket) -> None:
    """Read the guest's HELLO and the channel's OPEN (both from Python's path)."""
    data = b""
    while not any(t == link.OPEN for t, _, _ in _link_frames(data)):
        loop.run_once(0.01)
        data += host.recv(1 << 16)


def _turn_and_read(loop, sock: socket.socket, done) -> bytes:
    """Run loop turns and collect what ``sock`` receives until ``done(bytes)``."""
    got = b""
    sock.setblocking(False)
    try:
        for _ in range(100):
            loop.run_once(0.01)
            try:
                got += sock.recv(1 << 16)
            except BlockingIOError:
                pass
            if done(got):
                break
    finally:
        sock.setblocking(True)
    return got


def _data_bytes(got: bytes) -> int:
    return sum(len(p) for t, _, p in _link_frames(got) if t == link.DATA)


def _round_trip(loop, client: socket.socket, host: socket.socket, cb_id: int, ch: int) -> tuple[list, bytes]:
    """client: wl_display.sync; host end: wl_callback.done + wl_display.delete_id back."""
    client.sendall(encode(1, "wl_display", "sync", cb_id, direction=REQUEST))
    frames = _link_frames(_turn_and_read(loop, host, _data_bytes))
    reply = encode(cb_id, "wl_callback", "done", 7, direction=EVENT) + \
        encode(1, "wl_display", "delete_id", cb_id, direction=EVENT)
    host.sendall(link.frame(link.DATA, ch, reply))
    return frames, _turn_and_read(loop, client, lambda b: len(b) >= len(reply))


def test_plain_round_trips_never_reach_python_and_credit_rides_along() -> None:
    loop, lk, host = _linked()
    client = _client(lk, socket.SOCK_STREAM)
    _run_until(loop, lambda: lk.channels)
    ch = next(iter(lk.channels))
    _host_read_open(loop, host)
    _round_trip(loop, client, host, 2, ch)  # the first turn settles the flags
    calls = _count_python_callbacks(loop)
    credited = 0
    for i in range(50):
        cb = 3 + i
        frames, back = _round_trip(loop, client, host, cb, ch)
        sync = encode(1, "wl_display", "sync", cb, direction=REQUEST)
        data = [p for t, c, p in frames if t == link.DATA and c == ch]
        assert data == [sync]
        credited += sum(int.from_bytes(p, "little") for t, c, p in frames if t == link.CREDIT and c == ch)
        assert back == encode(cb, "wl_callback", "done", 7, direction=EVENT) + \
            encode(1, "wl_display", "delete_id", cb, direction=EVENT)
    assert calls[0] == 0, "Python was called for plain traffic"
    # every reply but the last was credited back, in front of the next request
    assert credited >= 49 * 24
    # the host end never credits: C counted every request it sent (51 of 12 bytes)
    assert lk.channels[ch].unacked == 51 * 12
    lk.shutdown("test over", violation=False)
    loop.close()


def test_a_request_python_must_see_goes_through_python_in_order() -> None:
    """wl_compositor.create_surface is intercepted by the guest half (its
    surface model): C hands that read to Python, and the requests around it
    reach the link as the client sent them."""
    loop, lk, host = _linked()
    client = _client(lk, socket.SOCK_STREAM)
    _run_until(loop, lambda: lk.channels)
    ch = next(iter(lk.channels))
    _host_read_open(loop, host)
    _round_trip(loop, client, host, 2, ch)
    calls = _count_python_callbacks(loop)
    sent = (encode(1, "wl_display", "get_registry", 3) + encode(3, "wl_registry", "bind", 1, ("wl_compositor", 4, 4))
            + encode(4, "wl_compositor", "create_surface", 5) + encode(1, "wl_display", "sync", 6))
    client.sendall(sent)
    got = _turn_and_read(loop, host, lambda b: _data_bytes(b) >= len(sent))
    assert b"".join(p for t, c, p in _link_frames(got) if t == link.DATA and c == ch) == sent
    assert calls[0] > 0, "the intercepted request did not reach Python"
    assert lk.channels[ch].surfaces.c  # the surface model exists (the handler ran)
    lk.shutdown("test over", violation=False)
    loop.close()


# -- the host half: SHM_DATA payloads larger than one read --------------------

def _host_link(monkeypatch):
    """A real HostServer on one end of a socketpair, fake compositors for its clients."""
    from fuzz.harness import FakeCompositor
    from wlproxy.halves import host
    from wlproxy.core import policy

    loop = Loop()
    fakes: list = []

    def connect(display):
        f = FakeCompositor(loop)
        fakes.append(f)
        return f.theirs

    monkeypatch.setattr(host, "connect_display", connect)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = host.HostServer(loop, a, "t", None, policy.default("t"))
    return loop, server, b, fakes


def _m(obj: int, iface: str, name: str, *args) -> bytes:
    return encode(obj, iface, name, *args)


def _open_with_pool(loop, b: socket.socket, ch: int, size: int, opened: bool = False) -> None:
    """Open channel ``ch`` (unless ``opened``) and give it a pool of ``size`` bytes (key 1)."""
    b.sendall((b"" if opened else link.frame(link.OPEN, ch, b"t"))
              + link.frame(link.DATA, ch, _m(1, "wl_display", "get_registry", 2)))
    _turns(loop)  # the globals come back before the bind
    b.sendall(link.frame(link.DATA, ch, _m(2, "wl_registry", "bind", 2, ("wl_shm", 1, 3)))
              + link.fd_shm_frame(ch, 1, size) + link.frame(link.DATA, ch, _m(3, "wl_shm", "create_pool", 4, None, size)))
    _turns(loop)


def _send_in_pieces(loop, lk, b: socket.socket, data: bytes, piece: int) -> bool:
    """Write ``data`` a piece at a time with loop turns between; whether C was
    ever caught in the middle of a payload."""
    streamed = False
    for i in range(0, len(data), piece):
        b.sendall(data[i:i + piece])
        loop.run_once(0)
        streamed |= bool(lk._scan_state.shm_left)
        _drain(b)
    return streamed


def _drain(b: socket.socket) -> bytes:
    got = b""
    b.setblocking(False)
    try:
        while data := b.recv(1 << 16):
            got += data
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        b.setblocking(True)
    return got


def _turns(loop, n: int = 20) -> None:
    for _ in range(n):
        loop.run_once(0.005)


def test_a_payload_larger_than_a_read_streams_into_the_pool(monkeypatch) -> None:
    import random

    loop, server, b, fakes = _host_link(monkeypatch)
    b.sendall(link.hello_frame(1 << 18, "test guest"))
    _open_with_pool(loop, b, 1, 1 << 20)
    (lk,) = server.links
    pixels = random.Random(1).randbytes(700_000)  # more than the link's 256 KiB read buffer
    sync = link.frame(link.DATA, 1, _m(1, "wl_display", "sync", 5))
    streamed = _send_in_pieces(loop, lk, b, link.shm_data_header(1, 1, 4096, len(pixels)) + pixels + sync, 50_000)
    _turns(loop)
    assert streamed, "C never streamed the payload"
    pool = lk.channels[1].pools[1]
    assert bytes(pool.view[4096:4096 + len(pixels)]) == pixels
    assert not lk._scan_state.shm_left and lk.channels[1].codec.message_count(REQUEST) >= 4  # the sync after it
    lk.shutdown("test over", violation=False)
    for f in fakes:
        f.close()
    loop.close()


def test_a_pool_that_goes_away_mid_payload_drops_the_rest_and_the_link_goes_on(monkeypatch) -> None:
    loop, server, b, fakes = _host_link(monkeypatch)
    b.sendall(link.hello_frame(1 << 18, "test guest"))
    _open_with_pool(loop, b, 1, 1 << 20)
    (lk,) = server.links
    pixels = b"\x5a" * 900_000
    header = link.shm_data_header(1, 1, 0, len(pixels))
    assert _send_in_pieces(loop, lk, b, header + pixels[:300_000], 50_000)
    fakes[0].close()  # the compositor drops client 1: its pool goes away while C streams into it
    _turns(loop)
    assert 1 not in lk.channels and lk._scan_state.shm_left
    # the rest is dropped; the frames right behind it, in the same reads, still count
    _send_in_pieces(loop, lk, b, pixels[300_000:] + link.frame(link.OPEN, 2, b"t"), 70_000)
    _turns(loop)
    _open_with_pool(loop, b, 2, 4096, opened=True)
    b.sendall(link.frame(link.DATA, 2, _m(1, "wl_display", "sync", 5)))
    _turns(loop)
    assert server.links == {lk} and not lk.closed
    assert lk.channels[2].codec.message_count(REQUEST) >= 4
    lk.shutdown("test over", violation=False)
    for f in fakes:
        f.close()
    loop.close()
