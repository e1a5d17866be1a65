"""Bridging clipboard pipes across the link (the same code in both halves).

A data-transfer message (``wl_data_offer.receive``, ``wl_data_source.send``,
their primary-selection twins) carries the write end of a pipe for the party
that receives the message.  The half that got that fd keeps it as a *sink*
and announces a pipe id; the other half makes a fresh pipe, hands its write
end on, and streams what it reads from the read end back as PIPE_DATA.
Flow control: a sink acknowledges bytes it has written out; a source stops
reading while too much is unacknowledged.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Callable

from wlproxy.core import link
from wlproxy.io.loop import Loop

log = logging.getLogger("wlproxy.pipes")

CHUNK = 1 << 16
WINDOW = 1 << 18


class _Source:
    """Our read end: data to send to the peer."""

    def __init__(self, channel: int, pid: int, fd: int):
        self.channel, self.pid, self.fd = channel, pid, fd
        self.unacked = 0
        self.reading = False


class _Sink:
    """A write end we hold: data from the peer goes here."""

    def __init__(self, channel: int, pid: int, fd: int):
        self.channel, self.pid, self.fd = channel, pid, fd
        self.queue: collections.deque[memoryview] = collections.deque()
        self.queued = 0
        self.eof = False
        self.waiting = False


class Pipes:
    def __init__(self, loop: Loop, send: Callable[[int, bytes], None], id_base: int):
        self.loop = loop
        self.send = send  # (channel, frame bytes)
        self._next = id_base
        self.sources: dict[int, _Source] = {}
        self.sinks: dict[int, _Sink] = {}

    def __len__(self) -> int:
        return len(self.sources) + len(self.sinks)

    # -- creating ----------------------------------------------------------
    def export_sink(self, channel: int, fd: int) -> int:
        """We got write end ``fd`` from our local peer: register it and return
        the pipe id to announce with FD_PIPE."""
        pid = self._next
        self._next += 1
        os.set_blocking(fd, False)
        self.sinks[pid] = _Sink(channel, pid, fd)
        return pid

    def import_source(self, channel: int, pid: int) -> int:
        """The peer announced pipe ``pid``: make a pipe, start streaming its
        read end to the peer, and return the write end for our local peer."""
        if pid in self.sources:
            raise link.LinkError(f"pipe id {pid} reused")
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(w, True)
        src = self.sources[pid] = _Source(channel, pid, r)
        self._read_on(src)
        return w

    # -- source side -------------------------------------------------------
    def _read_on(self, src: _Source) -> None:
        if not src.reading:
            src.reading = True
            self.loop.add_reader(src.fd, lambda: self._readable(src))

    def _readable(self, src: _Source) -> None:
        try:
            data = os.read(src.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.send(src.channel, link.u32_frame(link.PIPE_CLOSE, src.channel, src.pid))
            self._close_source(src)
            return
        self.send(src.channel, link.pipe_data_header(src.channel, src.pid, len(data)) + data)
        src.unacked += len(data)
        if src.unacked >= WINDOW:
            src.reading = False
            self.loop.remove_reader(src.fd)

    def credit(self, pid: int, n: int) -> None:
        src = self.sources.get(pid)
        if src is None:
            return
        src.unacked = max(0, src.unacked - n)
        if src.unacked < WINDOW:
            self._read_on(src)

    def _close_source(self, src: _Source) -> None:
        self.loop.forget(src.fd)
        os.close(src.fd)
        self.sources.pop(src.pid, None)

    # -- sink side ---------------------------------------------------------
    def data(self, pid: int, payload: memoryview) -> None:
        sink = self.sinks.get(pid)
        if sink is None:
            return  # closed locally already; the bytes are dropped
        if sink.queued + len(payload) > WINDOW + CHUNK:
            raise link.LinkError(f"pipe {pid}: peer ignored flow control")
        sink.queue.append(memoryview(bytes(payload)))
        sink.queued += len(payload)
        self._drain(sink)

    def peer_closed(self, pid: int) -> None:
        sink = self.sinks.get(pid)
        if sink is not None:
            sink.eof = True
            self._drain(sink)
            return
        src = self.sources.get(pid)
        if src is not None:  # the peer gave up on data we were sending
            self._close_source(src)

    def _drain(self, sink: _Sink) -> None:
        written = 0
        while sink.queue:
            head = sink.queue[0]
            try:
                n = os.write(sink.fd, head)
            except BlockingIOError:
                break
            except OSError:  # reader went away: drop everything
                written += sink.queued
                sink.queue.clear()
                sink.queued = 0
                sink.eof = True
                break
            written += n
            sink.queued -= n
            if n == len(head):
                sink.queue.popleft()
            else:
                sink.queue[0] = head[n:]
        if written:
            self.send(sink.channel, link.pipe_credit_frame(sink.channel, sink.pid, written))
        if sink.queue and not sink.waiting:
            sink.waiting = True
            self.loop.add_writer(sink.fd, lambda: self._writable(sink))
        elif not sink.queue and sink.eof:
            self._close_sink(sink)

    def _writable(self, sink: _Sink) -> None:
        sink.waiting = False
        self.loop.remove_writer(sink.fd)
        self._drain(sink)

    def _close_sink(self, sink: _Sink) -> None:
        self.loop.forget(sink.fd)
        os.close(sink.fd)
        self.sinks.pop(sink.pid, None)

    # -- teardown ----------------------------------------------------------
    def close_channel(self, channel: int) -> None:
        for src in [s for s in self.sources.values() if s.channel == channel]:
            self._close_source(src)
        for sink in [s for s in self.sinks.values() if s.channel == channel]:
            self._close_sink(sink)

    def close_all(self) -> None:
        for src in list(self.sources.values()):
            self._close_source(src)
        for sink in list(self.sinks.values()):
            self._close_sink(sink)
