"""Pixel work on a long slice (``wlproxy.io.sched``): a half with a short slice
takes a long one before copying a large frame into the link, so that a client
woken meanwhile preempts the copy, and asks for the short slice again once the
link writer has drained.  The writer yields before a slice of pixels only when
another client was sent something since the last one."""

from __future__ import annotations

import os
import select
import socket
import threading

import pytest

from wlproxy.core import link
from wlproxy.io import sched
from wlproxy._codec import lib
from wlproxy.io.linkio import GATHER_BYTES, LinkWriter
from wlproxy.io.loop import Loop
from wlproxy.core.protocol import EVENT
from helpers_wire import encode
from helpers_guestlink import client as _client, linked as _linked, run_until as _run_until
from test_sched import _kernel_has_custom_slices, _slice_ns

pytestmark = pytest.mark.skipif(not _kernel_has_custom_slices(),
                                reason="kernel older than 6.12: no per-task slice to ask for")

LONG = sched.LONG_SLICE * 1000


@pytest.fixture
def short():
    """This thread on a 100 µs slice for the test, the kernel's default after it."""
    default = _slice_ns(os.getpid())
    sched.short_slice(100)
    assert _slice_ns(os.getpid()) == 100_000
    yield
    sched.pixels_done()
    sched.short_slice(0)
    lib.fl_sched_slice(0)
    assert _slice_ns(os.getpid()) == default


def test_pixel_work_takes_the_long_slice_until_the_pixels_are_done(short, monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_yield", lambda: pytest.fail("pixel work yielded"))
    sched.pixel_work()
    assert _slice_ns(os.getpid()) == LONG
    sched.pixel_work()  # more pixel work meanwhile: still the long slice
    assert _slice_ns(os.getpid()) == LONG
    sched.pixels_done()
    assert _slice_ns(os.getpid()) == 100_000
    sched.pixels_done()
    assert _slice_ns(os.getpid()) == 100_000


def test_without_a_short_slice_pixel_work_leaves_the_slice_alone() -> None:
    before = _slice_ns(os.getpid())
    sched.short_slice(0)
    sched.pixel_work()
    assert _slice_ns(os.getpid()) == before
    sched.pixels_done()
    assert _slice_ns(os.getpid()) == before


def _writer_with_reader() -> tuple[Loop, LinkWriter, bytearray, threading.Thread]:
    """A LinkWriter on a socketpair whose peer a thread reads into the bytearray until EOF."""
    loop = Loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    w = LinkWriter(loop, a.detach(), lambda e: pytest.fail(e))
    got = bytearray()

    def drain() -> None:
        while d := b.recv(1 << 20):
            got.extend(d)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return loop, w, got, reader


def _until_idle(loop: Loop, w: LinkWriter) -> None:
    loop.run_once(0)
    for _ in range(200):
        if w.idle_for_c:  # nothing queued, in flight or waited for
            break
        loop.run_once(0.05)
    assert w.idle_for_c and w.queued_bytes == 0


def _pixel_frames(ch: int) -> list[bytes]:
    chunk = 64 << 10
    return [link.frame(link.DATA, ch, bytes([i % 256]) * chunk) for i in range(3 * GATHER_BYTES // chunk)]


def test_the_link_writer_copies_pixels_on_the_long_slice_and_messages_on_the_short_one(short) -> None:
    loop, w, got, reader = _writer_with_reader()
    small = link.frame(link.DATA, 2, b"hello")
    w.send(2, small)
    loop.run_once(0)
    assert _slice_ns(os.getpid()) == 100_000  # a message is no pixel work

    parts = _pixel_frames(1)
    seen: list[int | None] = []

    def job():
        for p in parts:
            seen.append(_slice_ns(os.getpid()))  # what the writer runs on while it gathers pixels
            yield [p]

    w.send_bulk(1, job(), sum(map(len, parts)))
    _until_idle(loop, w)
    # the first gather found the short slice; the rest of the pixels went out on the long one
    assert seen[0] == 100_000 and LONG in seen[1:]
    assert _slice_ns(os.getpid()) == 100_000  # drained: short again
    os.close(w.fd)
    reader.join(5)
    assert bytes(got) == small + b"".join(parts)
    loop.close()


def test_the_writer_yields_before_pixels_only_when_another_client_was_sent_something(short, monkeypatch) -> None:
    """A client woken with a reply runs before the next slice of someone
    else's pixels; with no such client the pixels go without yielding (a
    CPU-bound neighbour would take every turn offered)."""
    yields: list[int] = []
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(1))
    loop, w, got, reader = _writer_with_reader()
    woken = iter([False, True, False, False, False, False])
    asked: list[int] = []

    def others_woken(ch: int) -> bool:
        asked.append(ch)
        return next(woken)

    w.others_woken = others_woken
    parts = _pixel_frames(7)
    w.send_bulk(7, iter([p] for p in parts), sum(map(len, parts)))
    _until_idle(loop, w)
    assert asked and set(asked) == {7}  # asked about the others of the channel whose pixels go
    assert len(yields) == 1  # only the slice after the one "woken" answer
    os.close(w.fd)
    reader.join(5)
    assert bytes(got) == b"".join(parts)
    loop.close()


def test_the_guest_link_tells_which_clients_were_sent_something() -> None:
    """``LinkSession._others_woken``: a delivery to one client counts for the
    pixels of any other, once; whether C's link scan or Python's socket
    writer sent it."""
    loop, lk, host = _linked()
    c1 = _client(lk, socket.SOCK_STREAM)
    c2 = _client(lk, socket.SOCK_STREAM)
    _run_until(loop, lambda: len(lk.channels) == 2)
    ch1, ch2 = sorted(lk.channels)
    lk._others_woken(0)  # the baseline
    assert not lk._others_woken(ch1) and not lk._others_woken(ch2)
    done = encode(9, "wl_callback", "done", 1, direction=EVENT)
    host.sendall(link.frame(link.DATA, ch1, done))
    _run_until(loop, lambda: _readable(c1))
    assert c1.recv(64) == done
    assert lk._others_woken(ch2)  # client 1 got something: it may be waiting to run
    assert not lk._others_woken(ch2)  # counted once
    host.sendall(link.frame(link.DATA, ch1, done))
    _run_until(loop, lambda: _readable(c1))
    assert not lk._others_woken(ch1)  # its own pixels: no reason to yield
    lk.channels[ch2].local.write(done)  # Python's writer, as for what the C scan leaves to Python
    _run_until(loop, lambda: _readable(c2))
    assert c2.recv(64) == done
    assert lk._others_woken(ch1)
    lk.shutdown("test over", violation=False)
    loop.close()


def _readable(s: socket.socket) -> bool:
    return bool(select.select([s], [], [], 0)[0])
