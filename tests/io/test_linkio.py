"""``LinkWriter``: frames written outside it (the C read-and-forward path)
keep the link's framing and each channel's order."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from wlproxy.core import link
from wlproxy.io.linkio import LinkWriter
from wlproxy.io.loop import Loop


def _writer() -> tuple[Loop, LinkWriter, socket.socket, list]:
    loop = Loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(2)
    errors: list = []
    w = LinkWriter(loop, a.detach(), errors.append)
    return loop, w, b, errors


def test_direct_write_waits_for_queued_frames_of_the_same_channel() -> None:
    loop, w, peer, _ = _writer()
    assert w.direct_ok(1)
    w.send(1, link.frame(link.DATA, 1, b"x" * 8))  # goes out at the end of this loop turn
    assert not w.direct_ok(1)  # a direct frame of channel 1 would overtake it
    assert w.direct_ok(2)      # another channel's may
    loop.run_once(0)
    assert w.direct_ok(1)
    loop.close()


def test_held_credits_go_first_and_a_short_direct_write_is_finished_in_order() -> None:
    loop, w, peer, errors = _writer()
    credit = link.credit_frame(3, 100)
    w.send_credit(credit, 100)  # held back for the next write
    prefix = w.held()
    assert prefix == credit
    header, data = link.header(link.DATA, 3, 8), b"abcdefgh"
    whole = prefix + header + data
    w.sent_directly(prefix, 5, len(whole), lambda: whole[5:])  # only 5 bytes went out
    assert w.held() == b"" and not w.direct_ok(9)  # the frame in flight comes first
    loop.run_once(0.1)
    assert w.direct_ok(9)
    # the peer sees exactly one credit and one frame, the first 5 bytes being
    # the part written directly (the test did not write them: here they are missing)
    rest = peer.recv(4096)
    assert rest == (prefix + header + data)[5:]
    w.sent_directly(b"", -errno.EPIPE, len(header) + len(data), lambda: header + data)
    assert w.closed and errors and "link write failed" in errors[0]
    loop.close()


def test_a_large_frame_leaves_in_slices_so_other_channels_get_in_between() -> None:
    """A frame of pixels bigger than FLUSH_SLICE does not leave in one go: the
    loop gets a turn after each slice, and a small frame of another channel
    queued meanwhile reaches the peer before the rest of the pixels."""
    from wlproxy.io import linkio

    loop, w, peer, errors = _writer()
    chunk = 256 << 10
    pixels = [link.frame(link.DATA, 1, bytes([i]) * chunk) for i in range(12)]  # 3 MiB, > FLUSH_SLICE
    sndbuf = socket.socket(fileno=os.dup(w.fd))
    room = sndbuf.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    sndbuf.close()
    if room < 8 * len(pixels) * chunk // 3:  # Linux counts overhead: ask for well over the frame
        loop.close()
        pytest.skip(f"the link's send buffer is {room} bytes here (net.core.wmem_max): the whole frame "
                    "would not fit, so the kernel, not the writer, would cut it")

    def job():
        for f in pixels:
            yield [f]

    w.send_bulk(1, job(), sum(len(f) for f in pixels))
    loop.run_once(0)  # the end of the turn: the first slice goes out
    got = b""
    peer.settimeout(0.2)
    while len(got) < linkio.FLUSH_SLICE:
        got += peer.recv(1 << 20)
    assert len(got) < len(b"".join(pixels))  # not all of it in one turn
    small = link.frame(link.DATA, 2, b"interactive")
    w.send(2, small)
    while True:
        loop.run_once(0)
        try:
            more = peer.recv(1 << 20)
        except (BlockingIOError, socket.timeout):
            if w.idle:
                break
            continue
        got += more
    stream = b"".join(pixels)
    assert small in got and got.replace(small, b"") == stream  # framing intact, pixels in order
    assert got.index(small) < len(stream) - chunk  # ahead of the rest of the pixels
    assert not errors
    loop.close()
