"""Non-blocking stream sockets that carry bytes and SCM_RIGHTS fds, with
bounded input buffers and an output queue flushed with ``sendmsg``."""

from __future__ import annotations

import array
import collections
import errno
import itertools
import logging
import os
import socket
from typing import Callable

from wlproxy._codec import ffi
from wlproxy.io.loop import Loop

log = logging.getLogger("wlproxy.fdsock")

MAX_FDS_PER_SEND = 28  # what libwayland accepts per recvmsg
_CMSG_SPACE = socket.CMSG_SPACE(253 * 4)
# plain ints: the socket module's flags are IntFlag members, slow to combine
_SOL_SOCKET, _SCM_RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)
_MSG_CMSG_CLOEXEC, _MSG_CTRUNC = int(socket.MSG_CMSG_CLOEXEC), int(socket.MSG_CTRUNC)


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class StreamIn:
    """A bounded input buffer with queued fds, the input side of ``FdSocket``."""

    def __init__(self, size: int):
        self.rbuf = bytearray(size)
        self.view = memoryview(self.rbuf)  # the buffer never resizes
        self.cbuf = ffi.from_buffer(self.rbuf)  # for the codec
        self.filled = 0
        self.fds: collections.deque = collections.deque()

    def append(self, data) -> bool:
        n = len(data)
        if self.filled + n > len(self.rbuf):
            return False
        self.rbuf[self.filled:self.filled + n] = data
        self.filled += n
        return True

    def take_fds(self, n: int) -> list:
        return [self.fds.popleft() for _ in range(n)]

    def consume(self, n: int) -> None:
        if n:
            rest = self.filled - n
            if rest:
                self.rbuf[:rest] = self.rbuf[n:self.filled]
            self.filled = rest


class FdSocket(StreamIn):
    """One connected stream socket in a ``Loop``.

    Received bytes accumulate in ``rbuf[:filled]`` and received fds in
    ``fds``; ``on_data(self, new_fds)`` is called after each read and the
    owner calls ``consume(n)`` for what it handled.  An owner that reads by
    itself (into the same buffer) gives ``read_hook`` instead, called when
    the socket is readable.  ``write`` queues bytes with fds and sends as
    soon as the socket takes them.
    """

    def __init__(self, loop: Loop, sock: socket.socket, on_data: Callable[["FdSocket", int], None] | None,
                 on_close: Callable[["FdSocket", str], None], *, rbuf_size: int = 65536, name: str = "",
                 read_hook: Callable[[], None] | None = None):
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.on_data = on_data
        self.on_close = on_close
        StreamIn.__init__(self, rbuf_size)
        self._out: collections.deque[list] = collections.deque()  # [memoryview, fds]
        self.out_bytes = 0
        self.sends = 0  # sendmsg calls that took data (wlproxy.sched)
        self.closed = False
        self.paused = False
        self.corked = False
        self.on_drain: Callable[[], None] | None = None
        self.read_hook = read_hook  # does the reading itself, in place of recvmsg + on_data
        self.on_busy: Callable[[], None] | None = None  # output starts to queue (see ``busy``)
        loop.add_reader(self.fd, self._readable)

    # -- reading -----------------------------------------------------------
    def pause_reading(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        if self.closed:
            return
        if self.filled == len(self.rbuf):
            # the owner could not make progress on a full buffer: a message
            # larger than the buffer, which the codec rejects before this
            self.close("input buffer full")
            return
        if self.read_hook is not None:
            self.read_hook()
            return
        try:
            n, anc, flags, _ = self.sock.recvmsg_into([self.view[self.filled:]], _CMSG_SPACE, _MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.close(f"read error: {e.strerror}")
            return
        new_fds = 0
        if anc:
            for level, typ, data in anc:
                if level == _SOL_SOCKET and typ == _SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(data[: len(data) - len(data) % a.itemsize])
                    self.fds.extend(a)
                    new_fds += len(a)
            if flags & _MSG_CTRUNC:
                self.close("too many fds in one message")
                return
        if n == 0 and not new_fds:
            self.close("closed by peer")
            return
        self.filled += n
        self.on_data(self, new_fds)

    # -- writing -----------------------------------------------------------
    def write(self, data, fds: list[int] | tuple = (), *, own_fds: bool = True) -> None:
        """Queue ``data`` (copied if it is a view) with ``fds`` (closed once sent
        when ``own_fds``)."""
        if self.closed:
            if own_fds:
                close_fds(fds)
            return
        if not self._out and not self.corked and len(fds) <= MAX_FDS_PER_SEND:
            # nothing queued: send right away, and queue only what the socket did not take
            anc = [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                sent = self.sock.sendmsg([data], anc)
            except (BlockingIOError, InterruptedError):
                sent = -1
            except OSError as e:
                if own_fds:
                    close_fds(fds)
                self.close(f"write error: {e.strerror}")
                return
            if sent >= 0:
                self.sends += 1
                if fds and own_fds:
                    close_fds(fds)
                fds = ()
                if sent == len(data):
                    if self.on_drain is not None:
                        self.on_drain()
                    return
                data = data[sent:]
            self._queue(data, fds, own_fds, wait=True)  # the socket took less than all
        else:
            self._queue(data, fds, own_fds, wait=False)

    def _queue(self, data, fds, own_fds: bool, *, wait: bool) -> None:
        """Queue output (copied if it is a view); ``wait``: the socket is known
        to be full, so the first send waits until it is writable."""
        if isinstance(data, memoryview):
            data = bytes(data)
        if not self._out and self.on_busy is not None:
            self.on_busy()
        self._out.append([memoryview(data), list(fds), own_fds])
        self.out_bytes += len(data)
        if len(self._out) == 1 and not self.corked:
            if wait:
                self.loop.add_writer(self.fd, self._flush)
            else:
                self._flush()

    def cork(self) -> None:
        """Hold writes until ``uncork``: what several inputs produce leaves in
        one send (one wake-up of the peer)."""
        self.corked = True
        if self.on_busy is not None:
            self.on_busy()

    def uncork(self) -> None:
        if self.corked:
            self.corked = False
            if self._out and not self.closed:
                self._flush()

    @property
    def busy(self) -> bool:
        """Output is queued or held (or the socket is closed): new output must queue behind it."""
        return bool(self._out) or self.corked or self.closed

    def sent_directly(self, data, sent: int) -> None:
        """``data`` went to this socket outside ``write`` (``sent`` bytes of it,
        or -errno): queue the rest, or close on a hard error."""
        if sent < 0:
            if -sent not in (errno.EAGAIN, errno.EINTR):
                self.close(f"write error: {os.strerror(-sent)}")
                return
            sent = 0
        if sent < len(data):
            self._queue(data[sent:], (), True, wait=True)
        elif self.on_drain is not None:
            self.on_drain()

    def _flush(self) -> None:
        out = self._out
        while out:
            view, fds, own = out[0]
            send_fds = fds[:MAX_FDS_PER_SEND]
            if send_fds:
                # fds ride on the first byte sent; more than one batch of them
                # needs one byte of data per batch
                bufs = [view if len(fds) <= MAX_FDS_PER_SEND else view[:1]]
                anc = [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", send_fds))]
            else:
                anc = []
                bufs = [view]
                if len(out) > 1:  # gather fd-less entries, up to the next one with fds
                    for e in itertools.islice(out, 1, 64):
                        if e[1]:
                            break
                        bufs.append(e[0])
            try:
                sent = self.sock.sendmsg(bufs, anc)
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.fd, self._flush)
                return
            except OSError as e:
                self.close(f"write error: {e.strerror}")
                return
            self.sends += 1
            if send_fds:
                if own:
                    close_fds(send_fds)
                del fds[:len(send_fds)]
            self.out_bytes -= sent
            while out:
                head = out[0]
                n = len(head[0])
                if sent >= n and not head[1]:
                    sent -= n
                    out.popleft()
                    continue
                if sent:
                    head[0] = head[0][min(sent, n):]
                    sent = 0
                break
            if sent == 0 and out and len(out[0][0]) == 0 and not out[0][1]:
                out.popleft()
        self.loop.remove_writer(self.fd)
        if self.on_drain is not None:
            self.on_drain()

    # -- closing -----------------------------------------------------------
    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        if self.corked:  # what the cork held leaves first, as it would have without the cork
            self.uncork()
            if self.closed:
                return
        self.closed = True
        self.loop.forget(self.fd)
        for entry in self._out:
            if entry[2]:
                close_fds(entry[1])
        self._out.clear()
        close_fds(self.fds)
        self.fds.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        self.on_close(self, reason)

    def shutdown_after_flush(self) -> None:
        """Close once everything queued has been sent (used after a protocol error)."""
        if not self._out:
            self.close("done")
        else:
            self.on_drain = lambda: self.close("done")
