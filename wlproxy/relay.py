"""Feeding a socket's input through a codec: the shared receive path.

``pump`` runs one codec call over everything buffered on an ``FdSocket`` and
hands the records to a ``Sink``: contiguous ranges to forward, the messages
the sink asked to see, or the error that ends the connection.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from wlproxy import wire
from wlproxy.codec import ERROR, MSG, Codec, Record
from wlproxy.fdsock import FdSocket
from wlproxy.protocol import Interface, Message


class Sink(TypingProtocol):
    def forward(self, data: memoryview, fds: list[int]) -> None:
        """Forward validated bytes (a view valid only during the call) with their fds."""

    def message(self, iface: Interface, msg: Message, obj: int, data: memoryview, fds: list[int]) -> None:
        """An intercepted message; the sink forwards, rewrites or drops it."""

    def error(self, rec: Record, text: str) -> None:
        """Validation failed; the connection is over."""


def pump(codec: Codec, direction: int, src: FdSocket, sink: Sink, new_fds: int) -> bool:
    """Process what ``src`` has buffered; returns False after an error."""
    recs, used = codec.feed(direction, src.rbuf, src.filled, new_fds)
    view = memoryview(src.rbuf)
    ok = True
    try:
        for r in recs:
            if r.kind == ERROR:
                sink.error(r, codec.error_text())
                ok = False
                break
            fds = src.take_fds(r.nfds) if r.nfds else []
            data = view[r.start:r.start + r.length]
            if r.kind == MSG:
                iface, msg = codec.tables.message(r.iface, direction, r.opcode)
                sink.message(iface, msg, r.obj, data, fds)
            else:
                sink.forward(data, fds)
    finally:
        view.release()
    if ok:
        src.consume(used)
    return ok


def display_error(obj: int, code: int, text: str) -> bytes:
    """A ``wl_display.error`` event, as a compositor would send it."""
    from wlproxy.codec import default_tables

    msg = default_tables().proto["wl_display"].message(1, "error")
    data, _ = wire.encode(1, msg, [obj, code, text])
    return data
