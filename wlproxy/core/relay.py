"""Feeding buffered input through a codec: the shared receive path.

``pump`` runs the codec over everything a ``StreamIn`` has buffered (an
``FdSocket``, or one filled from the link) and hands the records
on: contiguous ranges to forward, the messages the caller asked to see, or
the error that ends the connection.
"""

from __future__ import annotations

from typing import Callable

from wlproxy.core import wire
from wlproxy.core.codec import ERROR, MSG, Codec, Record, default_tables

# Both return a true value once the connection has ended (the rest of the input is dropped).
Forward = Callable[[memoryview, list], object]
OnMessage = Callable[[Record, memoryview, list], object]  # an intercepted message: its record, bytes, fds
OnError = Callable[[Record, str], None]


def pump(codec: Codec, direction: int, src, forward: Forward, message: OnMessage, error: OnError,
         new_fds: int = 0) -> int:
    """Process what ``src`` has buffered; returns the bytes consumed, or -1 after an error."""
    recs, used = codec.feed(direction, src.rbuf, src.filled, new_fds, src.cbuf)
    return dispatch(codec, direction, src, recs, used, forward, message, error)


def dispatch(codec: Codec, direction: int, src, recs: list[Record], used: int, forward: Forward,
             message: OnMessage, error: OnError) -> int:
    """Hand on the records ``codec`` gave for ``src``'s buffer; consume ``used``
    bytes.  Stops (-1) at an error, or when a callback says the connection ended."""
    view = src.view
    for r in recs:
        kind = r.kind
        if kind == ERROR:
            error(r, codec.error_text())
            return -1
        fds = src.take_fds(r.nfds) if r.nfds else []
        data = view[r.start:r.start + r.length]
        if message(r, data, fds) if kind == MSG else forward(data, fds):
            return -1
    src.consume(used)
    return used


def display_error(obj: int, code: int, text: str) -> bytes:
    """A ``wl_display.error`` event, as a compositor would send it."""
    msg = default_tables().proto["wl_display"].message(1, "error")
    data, _ = wire.encode(1, msg, [obj, code, text])
    return data
