"""A small epoll event loop: fd readiness callbacks and timers, nothing more."""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import os
import select
import signal
import time
from typing import Callable

log = logging.getLogger("wlproxy.loop")

Callback = Callable[[], None]


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
        try:
            self._ep.unregister(fd)
        except (FileNotFoundError, ValueError, OSError):
            pass

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

    def _run_callback(self, cb: Callback) -> None:
        try:
            cb()
        except Exception:  # a bug in one connection must not take down the process
            log.exception("unhandled error in callback %r", cb)

    def run_once(self, timeout: float | None = None) -> None:
        if self._soon:
            timeout = 0
        elif self._timers:
            delay = max(0.0, self._timers[0][0] - time.monotonic())
            timeout = delay if timeout is None else min(timeout, delay)
        events = self._ep.poll(-1 if timeout is None else timeout)
        for fd, ev in events:
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
        self._running = True
        while self._running:
            self.run_once()

    def close(self) -> None:
        if getattr(self, "_wakeup", None):
            signal.set_wakeup_fd(-1)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None
        self._ep.close()
