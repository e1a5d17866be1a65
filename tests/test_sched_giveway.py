"""Pixel work gives way (``wlproxy.sched``): the half leaves its short slice
for the kernel's default and yields before copying a large frame into the
link, and asks for the short slice again once the link writer has drained."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from wlproxy import link, sched
from wlproxy._codec import lib
from wlproxy.linkio import GATHER_BYTES, LinkWriter
from wlproxy.loop import Loop
from tests.test_sched_slice import _kernel_has_custom_slices, _slice_ns

pytestmark = pytest.mark.skipif(not _kernel_has_custom_slices(),
                                reason="kernel older than 6.12: no per-task slice to ask for")


@pytest.fixture
def short() -> int:
    """This thread on a 100 µs slice for the test, the kernel's default after it."""
    default = _slice_ns(os.getpid())
    sched.short_slice(100)
    assert _slice_ns(os.getpid()) == 100_000
    yield default
    sched.short_slice(0)
    lib.fl_sched_slice(0)
    assert _slice_ns(os.getpid()) == default


def test_give_way_takes_the_default_slice_until_the_pixels_are_done(short: int) -> None:
    sched.give_way()
    assert _slice_ns(os.getpid()) == short
    sched.give_way()  # more pixel work meanwhile: still the default
    assert _slice_ns(os.getpid()) == short
    sched.pixels_done()
    assert _slice_ns(os.getpid()) == 100_000
    sched.pixels_done()
    assert _slice_ns(os.getpid()) == 100_000


def test_without_a_short_slice_giving_way_leaves_the_slice_alone() -> None:
    before = _slice_ns(os.getpid())
    sched.short_slice(0)
    sched.give_way()
    sched.pixels_done()
    assert _slice_ns(os.getpid()) == before


def test_the_link_writer_copies_pixels_on_the_default_slice_and_messages_on_the_short_one(short: int) -> None:
    loop = Loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    w = LinkWriter(loop, a.detach(), lambda e: pytest.fail(e))
    got = bytearray()

    def drain() -> None:  # the peer reads everything
        while True:
            d = b.recv(1 << 20)
            if not d:
                return
            got.extend(d)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    small = link.frame(link.DATA, 2, b"hello")
    w.send(2, small)
    loop.run_once(0)
    assert _slice_ns(os.getpid()) == 100_000  # a message is no pixel work

    chunk = 64 << 10
    parts = [link.frame(link.DATA, 1, bytes([i % 256]) * chunk) for i in range(3 * GATHER_BYTES // chunk)]
    seen: list[int | None] = []

    def job():
        for p in parts:
            seen.append(_slice_ns(os.getpid()))  # what the writer runs on while it gathers pixels
            yield [p]

    w.send_bulk(1, job(), sum(map(len, parts)))
    loop.run_once(0)
    for _ in range(200):
        if w.idle_for_c:  # nothing queued, in flight or waited for
            break
        loop.run_once(0.05)
    assert w.idle_for_c and w.queued_bytes == 0
    # after the first gather gave way, the rest of the pixels went out on the default slice
    assert seen[0] == 100_000 and short in seen[1:]
    assert _slice_ns(os.getpid()) == 100_000  # drained: short again
    os.close(w.fd)
    reader.join(5)
    assert bytes(got) == small + b"".join(parts)
    loop.close()
