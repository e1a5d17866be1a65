"""One end of a link: hello, channels, credits and pipes (both halves).

Subclasses add their own frame types (``handle_frame``) and decide what a
channel is.  A protocol violation by the peer drops the whole link with a
log line; nothing else in the process is affected.
"""

from __future__ import annotations

import logging
import os

from wlproxy import link
from wlproxy.linkio import LinkReader, LinkWriter
from wlproxy.logs import audit
from wlproxy.loop import Loop
from wlproxy.pipes import Pipes

log = logging.getLogger("wlproxy.session")

DEFAULT_WINDOW = 1 << 18


class LinkSession:
    side = "?"
    accept: frozenset[int] = frozenset()
    pipe_id_base = 1

    def __init__(self, loop: Loop, fd: int, *, name: str, limits: link.Limits | None = None,
                 window: int = DEFAULT_WINDOW, vm: str = ""):
        self.loop = loop
        self.fd = fd
        self.name = name
        self.vm = vm
        self.limits = limits or link.Limits()
        self.window = window
        self.peer_window = 0
        self.channels: dict = {}
        self.closed = False
        self.writer = LinkWriter(loop, fd, self._io_error)
        self.decoder = link.LinkDecoder(self.limits, accept=self.accept)
        self.reader = LinkReader(loop, fd, self.decoder, self._events, self._io_error, self.fail,
                                 resolve=self.resolve_shm)
        self.pipes = Pipes(loop, self._send_pipe, self.pipe_id_base)
        self.writer.send_urgent(link.hello_frame(window, f"wlproxy {self.side}"))

    # -- input ---------------------------------------------------------------
    def _events(self, events: list) -> None:
        corked: list = []  # local sockets holding this batch's output, to send it at once
        batch = len(events) > 1
        try:
            for ev in events:
                if self.closed:
                    return
                try:
                    if type(ev) is link.ShmChunk:
                        self.shm_chunk(ev)
                    elif ev.type == link.DATA:  # the common case first
                        ch = self.channel_for(ev)
                        if ch is not None:
                            if batch and not ch.local.corked:
                                ch.local.cork()
                                corked.append(ch.local)
                            ch.remote_data(ev.payload)
                    else:
                        self._frame(ev)
                except link.LinkError as e:
                    self.fail(str(e))
                    return
        finally:
            for s in corked:
                s.uncork()

    def _frame(self, f: link.Frame) -> None:
        t = f.type
        if t == link.HELLO:
            if self.peer_window:
                raise link.LinkError("second HELLO")
            version, window, peer = link.parse_hello(f.payload)
            if version != link.VERSION:
                raise link.LinkError(f"peer speaks link version {version}, we speak {link.VERSION}")
            if not 4096 <= window <= 1 << 26:
                raise link.LinkError(f"peer's window of {window} bytes is out of range")
            self.peer_window = window
            log.info("%s: link up with %s", self.name, peer)
            self.on_hello()
            return
        if t == link.ERROR:
            raise link.LinkError("peer reported: " + f.payload.decode("utf-8", "replace"))
        if t in (link.PIPE_DATA, link.PIPE_CLOSE, link.PIPE_CREDIT, link.FD_PIPE):
            self._pipe_frame(f)
            return
        ch = self.channel_for(f)
        if ch is None:
            return  # a frame for a channel closed on our side meanwhile
        if t == link.DATA:
            ch.remote_data(f.payload)
        elif t == link.CREDIT:
            ch.credit(link.u32(f.payload, "CREDIT"))
        elif t == link.CLOSE:
            code, reason = link.parse_close(f.payload)
            ch.close(f"closed by peer: {reason}", notify=False, flush_local=True)
        else:
            self.handle_frame(ch, f)

    def _pipe_frame(self, f: link.Frame) -> None:
        t = f.type
        if t == link.FD_PIPE:
            pid = link.u32(f.payload, "FD_PIPE")
            ch = self.channel_for(f)
            if not self.peer_pipe_id_ok(pid):
                raise link.LinkError(f"pipe id {pid:#x} is outside the peer's range")
            if ch is None:
                return
            if len(self.pipes) >= 256:
                raise link.LinkError("too many open pipes")
            ch.remote_fd(self.pipes.import_source(ch.ch, pid), ("pipe", pid))
        elif t == link.PIPE_DATA:
            if len(f.payload) < 4:
                raise link.LinkError("short PIPE_DATA")
            pid = int.from_bytes(f.payload[:4], "little")
            self.pipes.data(pid, memoryview(f.payload)[4:])
        elif t == link.PIPE_CLOSE:
            self.pipes.peer_closed(link.u32(f.payload, "PIPE_CLOSE"))
        else:
            pid, n = link.parse_pipe_credit(f.payload)
            self.pipes.credit(pid, n)

    def peer_pipe_id_ok(self, pid: int) -> bool:
        return True

    def _send_pipe(self, channel: int, frame: bytes) -> None:
        ch = self.channels.get(channel)
        if ch is not None and not ch.closed:
            ch.queue_frame(frame)
            ch.flush()
        elif not self.closed:
            self.writer.send_urgent(frame)

    def channel_for(self, f: link.Frame):
        """The open channel a frame is for; None for one closed meanwhile;
        LinkError for one that never existed."""
        raise NotImplementedError

    # -- hooks ---------------------------------------------------------------
    def on_hello(self) -> None:
        pass

    def handle_frame(self, ch, f: link.Frame) -> None:
        raise link.LinkError(f"unexpected {link.NAMES.get(f.type, f.type)} frame")

    def shm_chunk(self, c: link.ShmChunk) -> None:
        raise link.LinkError("unexpected SHM_DATA")

    def resolve_shm(self, channel: int, key: int, offset: int, length: int) -> memoryview | None:
        return None

    def channel_closed(self, ch, reason: str) -> None:
        self.channels.pop(ch.ch, None)
        self.pipes.close_channel(ch.ch)

    # -- teardown ------------------------------------------------------------
    def _io_error(self, reason: str) -> None:
        self.shutdown(reason, violation=False)

    def fail(self, reason: str) -> None:
        """The peer broke the protocol: drop the link."""
        log.warning("%s: dropping link: %s", self.name, reason)
        audit("link_dropped", vm=self.vm, link=self.name, reason=reason)
        if not self.writer.closed:
            self.writer.send_urgent(link.frame(link.ERROR, 0, reason.encode()[:1000]))
        self.shutdown(reason, violation=True)

    def shutdown(self, reason: str, *, violation: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if not violation:
            log.info("%s: link closed: %s", self.name, reason)
        for ch in list(self.channels.values()):
            self.link_lost(ch, reason)
        self.channels.clear()
        self.pipes.close_all()
        self.reader.closed = True
        self.writer.closed = True
        self.loop.forget(self.fd)
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.on_shutdown(reason)

    def link_lost(self, ch, reason: str) -> None:
        ch.close(f"link lost: {reason}", notify=False)

    def on_shutdown(self, reason: str) -> None:
        pass
