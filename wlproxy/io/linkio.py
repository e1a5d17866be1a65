"""The link at the IO edge: a fair frame writer and a reader feeding ``LinkDecoder``.

Works on any stream fd: a Unix or vsock socket, or a virtio-console port.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import logging
import os
import struct
import termios
from typing import Callable, Iterator

import socket

from wlproxy.io import sched
from wlproxy._codec import ffi, lib
from wlproxy.core.link import HEADER_SIZE, SHM_HEADER, LinkDecoder, LinkError, ShmChunk
from wlproxy.io.loop import Loop

log = logging.getLogger("wlproxy.link")

GATHER_BYTES = 1 << 20  # per writev
IOV_MAX = 512
LAZY_CREDIT = 1 << 16  # credit held back for a piggyback, at most (the window is 256 KiB)
READ_BUDGET = 1 << 20  # bytes read per readiness callback, at most (then other fds get a turn)
LINK_SNDBUF = 4 << 20  # asked for; Linux doubles it (within net.core.wmem_max)
BULK_INFLIGHT = 2 << 20  # pixels are written only while the peer has less than this left to read
SMALL_BULK = 64 << 10  # pixel jobs up to this size skip that check (and its ioctl)
FLUSH_SLICE = 1 << 20  # bytes written per turn of the loop, at most (then the other fds get a turn)
PIXEL_WORK = 256 << 10  # pixels this large are written on the long slice (wlproxy.sched)
_SHM_HEADERS = HEADER_SIZE + SHM_HEADER.size


def tune_socket(fd: int) -> None:
    """A send buffer that holds a whole 1080p frame: far fewer wake-ups per
    frame between the two halves.  Best effort; not a socket: nothing."""
    dup = os.dup(fd)
    try:
        s = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return
    try:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 2 * LINK_SNDBUF:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LINK_SNDBUF)
    except OSError:
        pass
    finally:
        s.close()

Bulk = Iterator[list]  # yields lists of buffers making up one or more whole frames


class LinkWriter:
    """Queues frames per channel and sends them round-robin, so one client's
    bulk pixels cannot starve another's small messages.  Frames never
    interleave: a partially written frame is finished first."""

    def __init__(self, loop: Loop, fd: int, on_error: Callable[[str], None]):
        self.loop = loop
        self.fd = fd
        self.on_error = on_error
        self._queues: dict[int, collections.deque] = {}
        self._ready: collections.deque[int] = collections.deque()  # channels with queued items
        self._urgent: collections.deque[bytes] = collections.deque()
        self._inflight: list[memoryview] = []
        self.queued_bytes = 0
        self.closed = False
        self._waiting = False
        self._soon = False
        self._held_bulk = False
        self._no_outq = False
        self.on_drain: Callable[[], None] | None = None
        # (channel) -> whether another channel's client was sent something since the
        # last call: before a slice of that channel's pixels the writer then yields
        self.others_woken: Callable[[int], bool] | None = None
        self._bulk_ch = 0
        # the link as C's fast loop sees it; the held CREDIT frames live in it
        self.c = ffi.new("struct fl_link *")
        self.c.fd = fd
        self.c.lazy_max = LAZY_CREDIT
        tune_socket(fd)

    def send_credit(self, data: bytes, value: int) -> None:
        """A CREDIT frame for ``value`` bytes: it waits for the next write to
        the peer (so it costs the peer no wake-up of its own), unless the
        credit held back reaches LAZY_CREDIT, which keeps every peer far
        from its window."""
        c = self.c
        n = c.held_len
        if n + len(data) > lib.FL_HELD:
            self._urgent.append(data)
            self.queued_bytes += len(data)
            self.kick()
            return
        ffi.memmove(c.held + n, data, len(data))
        c.held_len = n + len(data)
        c.lazy += value
        if c.lazy >= LAZY_CREDIT:
            self.kick()

    def send_urgent(self, data: bytes) -> None:
        """Control frames (credits, hello, close) go ahead of channel traffic."""
        self._urgent.append(data)
        self.queued_bytes += len(data)
        self.kick()

    def send(self, channel: int, data: bytes) -> None:
        q = self._queues.get(channel)
        if q is None:
            q = self._queues[channel] = collections.deque()
        if not q:
            self._ready.append(channel)
        q.append(data)
        self.queued_bytes += len(data)
        self._kick_soon()

    def send_bulk(self, channel: int, job: Bulk, size: int) -> None:
        """A lazily produced sequence of frames (e.g. pixels read from a
        mapped buffer only when the link can take them)."""
        q = self._queues.get(channel)
        if q is None:
            q = self._queues[channel] = collections.deque()
        if not q:
            self._ready.append(channel)
        q.append((job, size))
        self.queued_bytes += size
        self._kick_soon()

    def direct_ok(self, channel: int) -> bool:
        """Nothing is half-written and nothing of ``channel`` is queued: a frame
        of it may go out right now, ahead of the other channels' queues."""
        return not (self.closed or self._waiting or self._inflight or self._queues.get(channel))

    def held(self) -> bytes:
        """The control frames waiting for the next write (held-back credits)."""
        n = self.c.held_len
        held = ffi.buffer(self.c.held, n)[:] if n else b""
        return held + b"".join(self._urgent) if self._urgent else held

    def _take_held(self) -> None:
        self.c.held_len = self.c.lazy = 0
        if self._urgent:
            self.queued_bytes -= sum(map(len, self._urgent))
            self._urgent.clear()

    @property
    def idle_for_c(self) -> bool:
        """Nothing queued, in flight or waited for: C's fast loop may write
        frames (and the held credits) to the link itself."""
        return not (self.closed or self._waiting or self._soon or self._inflight or self._urgent or self._ready)

    def sent_directly(self, prefix: bytes, written: int, total: int, unsent: Callable[[], bytes]) -> None:
        """``prefix`` (what ``held`` gave) and link frames, ``total`` bytes in
        all, were written to the link outside the writer (``written`` bytes of
        them, or -errno).  After a short write, ``unsent()`` gives the bytes
        from ``written`` on: they are kept as the frames in flight."""
        if prefix:
            self._take_held()
        if written < 0:
            if -written not in (errno.EAGAIN, errno.EINTR):
                self.closed = True
                self.on_error(f"link write failed: {os.strerror(-written)}")
                return
            written = 0
        if written < total:
            self._inflight = [memoryview(unsent())]
            self._wait()

    def drop_channel(self, channel: int) -> None:
        q = self._queues.pop(channel, None)
        if q:
            for item in q:
                self.queued_bytes -= len(item) if isinstance(item, bytes) else item[1]
            try:
                self._ready.remove(channel)
            except ValueError:
                pass

    def kick(self) -> None:
        """Write what is queued now (the held credit too), unless the link is full."""
        if not self._waiting and not self.closed:
            self._flush()

    def _kick_soon(self) -> None:
        """Channel traffic goes out at the end of this loop turn, so that what
        one batch of input produced leaves in one writev (one wake-up of the
        peer, not one per frame)."""
        if not self._soon and not self._waiting and not self.closed:
            self._soon = True
            self.loop.call_soon(self._soon_flush)

    def _outq(self) -> int:
        """Bytes in the socket the peer has not read yet (0 if unknown)."""
        if self._no_outq:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            self._no_outq = True
            return 0

    def _soon_flush(self) -> None:
        self._soon = False
        self.kick()

    def _gather(self) -> tuple[list, int]:
        bufs: list = self._inflight
        total = sum(len(b) for b in bufs) if bufs else 0
        n = self.c.held_len
        if n:
            bufs.append(memoryview(ffi.buffer(self.c.held, n)[:]))
            total += n
            self.c.held_len = self.c.lazy = 0
        while self._urgent and total < GATHER_BYTES and len(bufs) < IOV_MAX:
            b = self._urgent.popleft()
            self.queued_bytes -= len(b)
            bufs.append(memoryview(b))
            total += len(b)
        ready = self._ready
        bulk_ok = None
        self._held_bulk = False
        skipped = 0
        while ready and total < GATHER_BYTES and len(bufs) < IOV_MAX - 8 and skipped < len(ready):
            ch = ready.popleft()
            q = self._queues[ch]
            item = q[0]
            plain = isinstance(item, bytes)
            if not plain and item[1] > SMALL_BULK:  # a small update goes without asking
                if bulk_ok is None:
                    bulk_ok = self._outq() <= BULK_INFLIGHT
                if not bulk_ok:
                    # pixels wait while the peer has plenty to read: what other
                    # clients send meanwhile queues behind less
                    self._held_bulk = True
                    ready.append(ch)
                    skipped += 1
                    continue
            if plain:
                q.popleft()
                self.queued_bytes -= len(item)
                bufs.append(memoryview(item))
                total += len(item)
            else:
                job, size = item
                self._bulk_ch = ch
                part = next(job, None)
                if part is None:
                    q.popleft()
                    self.queued_bytes -= size
                else:
                    n = sum(len(b) for b in part)
                    item_size = max(0, size - n)
                    q[0] = (job, item_size)
                    self.queued_bytes -= size - item_size
                    bufs.extend(memoryview(b) for b in part)
                    total += n
            if q:
                ready.append(ch)
        return bufs, total

    def _flush(self) -> None:
        written = 0
        while not self.closed:
            if written >= FLUSH_SLICE:
                # a large frame is going out: let the loop read what came meanwhile (another
                # client's request joins the next gather instead of waiting for the whole frame)
                self._kick_soon()
                return
            bufs, total = self._gather()
            if not bufs:
                if self._held_bulk:
                    self._wait()
                    return
                sched.pixels_done()
                break
            if total >= PIXEL_WORK:
                sched.pixel_work()
                if self.others_woken is not None and self.others_woken(self._bulk_ch):
                    os.sched_yield()
            try:
                n = os.writev(self.fd, bufs)
            except (BlockingIOError, InterruptedError):
                self._inflight = bufs
                self._wait()
                return
            except OSError as e:
                self.closed = True
                self.on_error(f"link write failed: {e.strerror}")
                return
            written += n
            if n == total:
                self._inflight = []
                continue
            # keep what was not written, in order
            rest: list[memoryview] = []
            for b in bufs:
                if n >= len(b):
                    n -= len(b)
                    continue
                rest.append(b[n:] if n else b)
                n = 0
            self._inflight = rest
            if rest:
                self._wait()
                return
        if self._waiting:
            self._waiting = False
            self.loop.remove_writer(self.fd)
        if self.on_drain is not None:
            self.on_drain()

    def _wait(self) -> None:
        if not self._waiting:
            self._waiting = True
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        self._waiting = False
        self.loop.remove_writer(self.fd)
        self._flush()

    @property
    def idle(self) -> bool:
        return not (self._inflight or self._urgent or self._ready or self.c.held_len)


class LinkReader:
    """Reads the link fd and feeds the decoder; SHM payloads whose target
    the owner can resolve are received straight into the pool mapping."""

    def __init__(self, loop: Loop, fd: int, decoder: LinkDecoder,
                 on_events: Callable[[list], None], on_error: Callable[[str], None],
                 on_violation: Callable[[str], None],
                 resolve: Callable[[int, int, int, int], memoryview | None] | None = None,
                 bufsize: int = 1 << 18, scan: Callable[[int, bool], int] | None = None):
        self.loop = loop
        self.fd = fd
        self.decoder = decoder
        self.on_events = on_events
        self.on_error = on_error
        self.on_violation = on_violation
        self.resolve = resolve
        # scan(n, done): takes the frames it can handle at the start of view[:n] (done: C's
        # fast loop ran it already); returns their bytes
        self.scan = scan
        self.buf = bytearray(bufsize)
        self.view = memoryview(self.buf)
        self.closed = False
        self._headers_next = False
        self._asked = 0
        self.c_scan = None  # C's fast loop's scan state (the payload it may be streaming), if any
        loop.add_reader(fd, self._readable)

    @property
    def idle_for_c(self) -> bool:
        """The next byte starts a frame: C's fast loop may read into ``buf`` from its start."""
        return not (self.closed or self._headers_next or self.scan is None) and self.decoder.idle()

    def c_read(self, n: int) -> None:
        """C's fast loop read ``n`` bytes into ``buf`` and scanned them: go on from there."""
        self._readable(n)

    def _readable(self, scanned: int = 0) -> None:
        """Read until the fd runs dry or READ_BUDGET bytes came in; with
        ``scanned``, C's fast loop already read that many bytes into ``buf``
        and ran the scan over them (``scan`` applies its results)."""
        got = 0
        while not self.closed and got < READ_BUDGET:
            if self.c_scan is not None and self.c_scan.shm_left:
                return  # C's fast loop is reading a payload straight into its pool: the link is its own
            if scanned:
                n = fresh = scanned
                self._asked = len(self.view)
            else:
                try:
                    n, fresh = self._read_once()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    self.closed = True
                    self.on_error(f"link read failed: {e.strerror}")
                    return
            if n == 0:
                self._eof()
                return
            got += n
            if fresh and self.scan is not None and self.decoder.idle():
                k = self.scan(fresh, bool(scanned))
                scanned = 0
                if self.closed:
                    return
                fresh_view = self.view[k:fresh]
            else:
                fresh_view = self.view[:fresh]
            if len(fresh_view):
                try:
                    events = self.decoder.feed(fresh_view)
                except LinkError as e:
                    self.closed = True
                    self.on_violation(str(e))
                    return
                if events:
                    self.on_events(events)
            if n < self._asked:
                return  # the fd ran dry: no need to hear it from one more readv

    def _read_once(self) -> tuple[int, int]:
        """One readv: (bytes read, bytes of them in ``view`` for the decoder).
        An SHM payload goes straight into its pool, with the next frame's
        headers behind it in the same readv; after a payload that ended
        exactly, only the next headers are read (so the next payload goes
        direct too)."""
        target = self.decoder.direct_target() if self.resolve else None
        if target is not None and target[3] >= 4096:
            dest = self.resolve(*target)  # type: ignore[misc]
            if dest is not None:
                k = len(dest)
                self._asked = k + _SHM_HEADERS
                try:
                    n = os.readv(self.fd, [dest, self.view[:_SHM_HEADERS]])
                finally:
                    dest.release()  # the pool may be unmapped by whatever handles this read
                if n:
                    self.decoder.advance_direct(min(n, k))
                    self._headers_next = n == k
                return n, max(0, n - k)
        if self._headers_next:
            self._headers_next = False
            self._asked = _SHM_HEADERS
            n = os.readv(self.fd, [self.view[:_SHM_HEADERS]])
        else:
            self._asked = len(self.view)
            n = os.readv(self.fd, [self.view])
        return n, n

    def _eof(self) -> None:
        self.closed = True
        self.on_error("link closed by peer")


__all__ = ["LinkWriter", "LinkReader", "ShmChunk"]
