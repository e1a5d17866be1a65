"""A small epoll event loop: fd readiness callbacks and timers, nothing more.

It waits in C (``fl_poll``, ``wlproxy/c/fastloop.c``), which handles the
readiness of links and local sockets registered with ``c_watch`` by itself
when nothing of theirs waits in Python, and hands everything else back."""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import math
import os
import select
import signal
import time
from typing import Callable

from wlproxy._codec import ffi, lib

log = logging.getLogger("wlproxy.loop")

Callback = Callable[[], None]
CHandler = Callable[[int, int], None]  # (FL_EV_* kind, arg): what C left for Python on a watched fd
C_EVENTS = 256  # room for one epoll batch and what C adds to it (fl_poll)


class Timer:
    __slots__ = ("when", "cb", "cancelled")

    def __init__(self, when: float, cb: Callback):
        self.when = when
        self.cb = cb
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._soon: list[Callback] = []
        self._running = False
        self.signalled = False
        self.c = ffi.new("struct fl_loop *")
        self.c.epfd = self._ep.fileno()
        self._cev = ffi.new("struct fl_ev[]", C_EVENTS)
        self._c_handlers: dict[int, CHandler] = {}
        self._pre_poll: list[Callback] = []  # bring the flags C reads up to date before it waits

    def _update(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self._readers else 0) | (select.EPOLLOUT if fd in self._writers else 0)
        try:
            if mask:
                try:
                    self._ep.modify(fd, mask)
                except FileNotFoundError:
                    self._ep.register(fd, mask)
            else:
                self._ep.unregister(fd)
        except (FileNotFoundError, ValueError, OSError):
            pass

    def add_reader(self, fd: int, cb: Callback) -> None:
        self._readers[fd] = cb
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, cb: Callback) -> None:
        if fd not in self._writers:
            self._writers[fd] = cb
            self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def forget(self, fd: int) -> None:
        """Drop every callback for ``fd`` (before it is closed)."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self.c_unwatch(fd)
        try:
            self._ep.unregister(fd)
        except (FileNotFoundError, ValueError, OSError):
            pass

    def c_watch(self, fd: int, kind: int, link, slot: int, handler: CHandler) -> None:
        """Let C handle ``fd``'s input (``FL_ENT_LINK``: the link ``link``, a
        ``struct fl_link``; ``FL_ENT_LOCAL``: the local socket of its channel
        slot ``slot``) when the flags allow; ``handler(kind, arg)`` takes what
        C hands back."""
        if lib.fl_watch(self.c, fd, kind, link, slot) < 0:
            raise MemoryError("fl_watch")
        self._c_handlers[fd] = handler

    def c_unwatch(self, fd: int) -> None:
        if self._c_handlers.pop(fd, None) is not None:
            lib.fl_unwatch(self.c, fd)

    def add_pre_poll(self, cb: Callback) -> None:
        self._pre_poll.append(cb)

    def remove_pre_poll(self, cb: Callback) -> None:
        if cb in self._pre_poll:
            self._pre_poll.remove(cb)

    def call_later(self, delay: float, cb: Callback) -> Timer:
        t = Timer(time.monotonic() + delay, cb)
        heapq.heappush(self._timers, (t.when, next(self._seq), t))
        return t

    def call_soon(self, cb: Callback) -> None:
        self._soon.append(cb)

    def stop(self) -> None:
        self._running = False

    def stop_on_signals(self, *signums: int) -> None:
        """Stop the loop on these signals (default SIGINT, SIGTERM), waking it
        from epoll through a pipe (a Python signal handler alone would not)."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._wakeup = (r, w)
        def on_signal(*_: object) -> None:
            self.signalled = True
            self.stop()

        for sig in signums or (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

        def drain() -> None:
            try:
                while os.read(r, 512):
                    pass
            except BlockingIOError:
                pass

        self.add_reader(r, drain)

    def _run_callback(self, cb: Callable[..., None], *args: int) -> None:
        try:
            cb(*args)
        except Exception:  # a bug in one connection must not take down the process
            log.exception("unhandled error in callback %r", cb)

    def run_once(self, timeout: float | None = None) -> None:
        if self._soon:
            timeout = 0
        elif self._timers:
            delay = max(0.0, self._timers[0][0] - time.monotonic())
            timeout = delay if timeout is None else min(timeout, delay)
        for cb in self._pre_poll:
            cb()
        n = lib.fl_poll(self.c, -1 if timeout is None else math.ceil(timeout * 1000), self._cev, C_EVENTS)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        cev = self._cev
        for i in range(n):
            e = cev[i]
            fd, ev, kind = e.fd, e.events, e.kind
            if kind:
                h = self._c_handlers.get(fd)
                if h is not None:
                    self._run_callback(h, kind, e.arg)
                continue
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                cb = self._readers.get(fd)
                if cb is not None:
                    self._run_callback(cb)
            if ev & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR):
                cb = self._writers.get(fd)
                if cb is not None:
                    self._run_callback(cb)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, t = heapq.heappop(self._timers)
            if not t.cancelled:
                self._run_callback(t.cb)
        soon, self._soon = self._soon, []
        for cb in soon:
            self._run_callback(cb)

    def run(self) -> None:
        # what exists before the loop runs (the protocol model, the policy) lives
        # as long as the process: keep the cyclic collector from walking it
        gc.freeze()
        self._running = not self.signalled  # a stop signal before run() is not lost
        while self._running:
            self.run_once()

    def close(self) -> None:
        if getattr(self, "_wakeup", None):
            signal.set_wakeup_fd(-1)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None
        lib.fl_free(self.c)
        self._ep.close()
