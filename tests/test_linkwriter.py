"""``LinkWriter``: frames written outside it (the C read-and-forward path)
keep the link's framing and each channel's order."""

from __future__ import annotations

import errno
import socket

from wlproxy import link
from wlproxy.linkio import LinkWriter
from wlproxy.loop import Loop


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
    w.sent_directly(prefix, header, memoryview(data), 5)  # only 5 bytes went out
    assert w.held() == b"" and not w.direct_ok(9)  # the frame in flight comes first
    loop.run_once(0.1)
    assert w.direct_ok(9)
    # the peer sees exactly one credit and one frame, the first 5 bytes being
    # the part written directly (the test did not write them: here they are missing)
    rest = peer.recv(4096)
    assert rest == (prefix + header + data)[5:]
    w.sent_directly(b"", header, data, -errno.EPIPE)
    assert w.closed and errors and "link write failed" in errors[0]
    loop.close()
