"""One Wayland connection carried over the link: the part both halves share.

A channel joins a local socket (a client, in the guest; weston, on the host)
to the link.  Local input is validated by the codec and queued for the link
in order: DATA (limited by the peer's credit window), fd stand-in records
and bulk pixel jobs.  Link input for the channel is validated again and
written to the local socket; the bytes are credited back once the local
socket has taken them.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING, Callable

from wlproxy.core import link, wire
from wlproxy._codec import lib
from wlproxy.core.codec import Codec, Record
from wlproxy.io.fdsock import FdSocket, StreamIn, close_fds
from wlproxy.core.relay import dispatch, pump

if TYPE_CHECKING:
    from wlproxy.io.linkio import Bulk

log = logging.getLogger("wlproxy.channel")

_DATA, _FRAME, _BULK = 0, 1, 2

# (object id, the arguments as the XML declares them, message bytes, fds)
Handler = Callable[[int, list, memoryview, list], None]
_decoders: dict[tuple[str, int, str], Callable] = {}  # (interface, direction, message) -> wire.decoder


class Channel:
    """Subclasses set ``local_dir`` and fill ``handlers[direction]`` with
    ``(interface, message) -> method``; those messages are intercepted."""

    local_dir: int = 0
    sf = None  # the guest's surface model (C), which read_forward applies a frame's requests to
    acct = None  # the host's accounting of the client's requests (C), which the fast loop updates

    def __init__(self, owner, ch: int, sock: socket.socket, *, window: int, peer_window: int,
                 max_message: int = 4096, name: str = ""):
        self.owner = owner
        self.ch = ch
        self.name = name or f"channel {ch}"
        self.remote_dir = 1 - self.local_dir
        self.codec = Codec(max_message=max_message)
        self.handlers: tuple[dict, dict] = ({}, {})
        self._by_index: tuple[dict, dict] = ({}, {})  # the handlers by (interface index, opcode)
        self.window = window          # what we let the peer have outstanding
        self.peer_window = peer_window  # what the peer lets us have outstanding
        self._unacked = 0  # DATA sent the peer has not credited back (in the slot, when there is one)
        self.pending: collections.deque[list] = collections.deque()
        self.remote_in = StreamIn(window + max_message)
        self.remote_new_fds = 0
        self.kinds: collections.deque[tuple] = collections.deque()  # parallel to remote_in.fds
        self.to_credit = 0
        self.closed = False
        self.local = FdSocket(owner.loop, sock, None, self._local_closed, name=self.name,
                              read_hook=self._read_local)
        self.local.on_drain = self._local_drained
        self.local.on_busy = self.sync_fast
        self.slot = None  # this channel's entry in the owner's C link scan table, if it has one

    def intercept(self) -> None:
        """Apply ``handlers`` to the codec's mask (call after filling them)."""
        proto = self.codec.tables.proto
        for direction in (0, 1):
            by_index = self._by_index[direction]
            for (iface, msg), handler in self.handlers[direction].items():
                self.codec.intercept(iface, direction, msg)
                i = proto[iface]
                m = i.message(direction, msg)
                dec = _decoders.get((iface, direction, msg))
                if dec is None:
                    dec = _decoders[(iface, direction, msg)] = wire.decoder(m)
                by_index[(i.index, m.opcode)] = (handler, dec)

    @property
    def unacked(self) -> int:
        sl = self.slot
        return self._unacked if sl is None else sl.unacked

    @unacked.setter
    def unacked(self, n: int) -> None:
        sl = self.slot
        if sl is None:
            self._unacked = n
        else:
            sl.unacked = n

    @property
    def room(self) -> int:
        """DATA bytes this channel may send the peer now: its window less what
        is unacked, at most one frame of the link's limit (as fastloop.c's
        fast loop computes it from the same slot fields)."""
        return max(0, min(self.peer_window - self.unacked, self.owner.limits.max_data))

    def slot_unacked(self, sl) -> None:
        """The count moves into the C slot ``sl`` (None: out of the one it was in)."""
        if sl is None:
            self._unacked = self.slot.unacked
        else:
            sl.unacked = self._unacked

    def c_event(self, kind: int, arg: int) -> None:
        """What C's fast loop left to Python on the local socket."""
        if kind == lib.FL_EV_LOCAL:
            self._read_local(True)

    def sync_lfast(self) -> None:
        """Tell C's fast loop whether it may read the local socket itself: only
        when nothing of the local input is buffered, queued or paused here."""
        sl = self.slot
        if sl is not None:
            s = self.local
            sl.lfast = not (self.closed or self.pending or s.paused or s.filled or s.fds or s.closed)

    # -- local -> link -----------------------------------------------------
    def _read_local(self, c_read: bool = False) -> None:
        """The local socket is readable (``c_read``: C's fast loop read it and
        left the result): one C call reads, validates and, in the common case
        (one run of plain messages, or a frame's wl_surface requests with small
        pixels, nothing queued before it), writes them to the link; anything
        else goes through the records."""
        s = self.local
        if self.closed:
            return
        w = self.owner.writer
        prefix = b""
        if c_read:
            r = self.codec.after_read(s)
            if r.forwarded:
                prefix = w.held()
        elif not self.owner.fast:
            r = self.codec.read_forward(self.local_dir, s.fd, s)
        elif not self.pending and w.direct_ok(self.ch):
            prefix = w.held()
            r = self.codec.read_forward(self.local_dir, s.fd, s, w.fd, self.ch, self.room, prefix, self.sf)
        else:
            r = self.codec.read_forward(self.local_dir, s.fd, s, sf=self.sf)
        try:
            self._after_read(r, prefix)
        finally:
            self.sync_lfast()

    def _after_read(self, r, prefix: bytes) -> None:
        s = self.local
        w = self.owner.writer
        n = r.nread
        if n < 0:
            if -n not in (errno.EAGAIN, errno.EINTR):
                s.close(f"read error: {os.strerror(-n)}")
            return
        if r.truncated:
            s.close("too many fds in one message")
            return
        if n == 0 and not r.nfds:
            s.close("closed by peer")
            return
        used = r.forwarded
        if used:
            self.unacked += used
            w.sent_directly(prefix, r.written, r.total, lambda: self.codec.unsent(s, r))
            s.consume(used)
        elif r.applied:
            self._queue_applied(r)
        else:
            recs, used = self.codec.records_after_read(self.local_dir, s)
            if dispatch(self.codec, self.local_dir, s, recs, used, self.local_forward, self._local_message,
                        self.local_error) < 0:
                return
        self.flush()

    def _queue_applied(self, r) -> None:
        """A read whose requests the C surface model applied, not forwarded: queue it."""
        raise NotImplementedError

    def local_forward(self, data: memoryview, fds: list) -> bool:
        if fds:  # every fd-carrying message is intercepted, so this is a bug
            close_fds(fds)
            log.error("%s: fds on a forwarded range; closing", self.name)
            self.close("internal error", notify=True)
            return True
        self.queue_data(data)
        return False

    def _local_message(self, rec: Record, data: memoryview, fds: list) -> bool:
        handler, args = self._by_index[self.local_dir][(rec.iface, rec.opcode)]
        handler(rec.obj, args(data, fds), data, fds)
        return self.closed  # a protocol error ends the channel: nothing after it is handled

    def local_error(self, rec: Record, text: str) -> None:
        raise NotImplementedError

    def queue_data(self, data) -> None:
        p = self.pending
        if p and p[-1][0] == _DATA:
            p[-1][1] += data
        else:
            p.append([_DATA, bytearray(data)])

    def queue_frame(self, frame: bytes) -> None:
        self.pending.append([_FRAME, frame])

    def queue_bulk(self, job: "Bulk", size: int) -> None:
        self.pending.append([_BULK, (job, size)])

    def flush(self) -> None:
        """Release queued items to the link in order, DATA within the peer's window."""
        w = self.owner.writer
        p = self.pending
        while p:
            kind, item = p[0]
            if kind == _DATA:
                room = self.room
                if room <= 0:
                    break
                n = min(len(item), room)
                w.send(self.ch, link.header(link.DATA, self.ch, n) + item[:n])
                self.unacked += n
                if n < len(item):
                    del item[:n]
                    continue
            elif kind == _FRAME:
                w.send(self.ch, item)
            else:
                w.send_bulk(self.ch, *item)
            p.popleft()
        if p:
            self.local.pause_reading()
        else:
            self.local.resume_reading()
        self.sync_lfast()

    def credit(self, n: int) -> None:
        if n > self.unacked:
            raise link.LinkError(f"channel {self.ch}: credit of {n} bytes for {self.unacked} sent")
        self.unacked -= n
        self.flush()

    # -- link -> local -----------------------------------------------------
    def remote_data(self, payload: bytes) -> None:
        if self.closed:
            return  # in flight when we closed; the peer will see our CLOSE
        n = len(payload)
        if self.to_credit + n > self.window:
            raise link.LinkError(f"channel {self.ch}: peer exceeded the credit window of {self.window} bytes")
        self.to_credit += n
        self.remote_in.append(payload)
        new_fds, self.remote_new_fds = self.remote_new_fds, 0
        used = pump(self.codec, self.remote_dir, self.remote_in, self.remote_forward, self._remote_message,
                    self.remote_error, new_fds)
        if used >= 0 and not self.closed:
            self._maybe_credit()
        self.sync_fast()

    def remote_fed(self, payload, recs: list[Record], used: int) -> None:
        """DATA the link scan validated but could not forward whole: act on its records."""
        self.remote_in.append(payload)
        if dispatch(self.codec, self.remote_dir, self.remote_in, recs, used, self.remote_forward,
                    self._remote_message, self.remote_error) >= 0 and not self.closed:
            self._maybe_credit()

    def remote_done(self) -> None:
        """After link input for this channel (the host accounts for it)."""

    def sync_fast(self) -> None:
        """Tell the C link scan whether DATA for this channel may go straight to
        the local socket: only when nothing of it is buffered, queued or held."""
        sl = self.slot
        if sl is not None:
            rin = self.remote_in
            sl.fast = not (self.closed or rin.filled or rin.fds or self.remote_new_fds or self.local.busy)
            sl.room = max(0, self.window - self.to_credit)

    def remote_fd(self, fd: int, kind: tuple) -> None:
        """An fd made from a link record (``kind`` says what it stands for): it
        belongs to the next remote message needing one."""
        if len(self.remote_in.fds) >= 64:
            close_fds([fd])
            raise link.LinkError(f"channel {self.ch}: too many fds announced ahead of their messages")
        self.remote_in.fds.append(fd)
        self.kinds.append(kind)
        self.remote_new_fds += 1
        self.sync_fast()

    def remote_forward(self, data: memoryview, fds: list) -> None:
        for _ in fds:
            self.kinds.popleft()
        self.local.write(data, fds)

    def _remote_message(self, rec: Record, data: memoryview, fds: list) -> bool:
        handler, args = self._by_index[self.remote_dir][(rec.iface, rec.opcode)]
        handler(rec.obj, args(data, fds), data, fds)
        return self.closed

    def remote_error(self, rec: Record, text: str) -> None:
        raise NotImplementedError

    def _maybe_credit(self) -> None:
        if self.to_credit and self.local.out_bytes < self.window // 2:
            self.owner.writer.send_credit(link.credit_frame(self.ch, self.to_credit), self.to_credit)
            self.to_credit = 0

    def _local_drained(self) -> None:
        if not self.closed:
            self._maybe_credit()
            self.sync_fast()

    # -- closing -----------------------------------------------------------
    def _local_closed(self, s: FdSocket, reason: str) -> None:
        if not self.closed:
            self.close(reason, notify=True)

    def close(self, reason: str, *, notify: bool, flush_local: bool = False, keep_queued: bool = False) -> None:
        """End the channel; ``notify`` tells the peer with CLOSE; ``flush_local``
        lets queued output (an error event) reach the local side first;
        ``keep_queued`` keeps frames already handed to the link writer."""
        if self.closed:
            return
        self.closed = True
        if not keep_queued:
            self.owner.writer.drop_channel(self.ch)
        if notify:
            self.owner.writer.send_urgent(link.close_frame(self.ch, 0, reason))
        close_fds(self.remote_in.fds)
        self.remote_in.fds.clear()
        self.kinds.clear()
        self.pending.clear()
        if flush_local and not self.local.closed:
            self.local.pause_reading()
            self.local.on_drain = None
            self.local.shutdown_after_flush()
        else:
            self.local.close(reason)
        self.release()
        self.owner.channel_closed(self, reason)

    def release(self) -> None:
        """Free per-channel resources (pools, pipes); subclasses extend."""
