"""``wlproxy trace``: a transparent one-machine proxy that prints every message.

Clients connect to ``--socket``; each gets its own connection to the
compositor.  Every message is validated by the codec and printed in
libwayland's ``WAYLAND_DEBUG`` format, as the client sees it (requests with
``->``).  Invalid client input gets a ``wl_display.error`` and a disconnect.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import logging
import os
import subprocess
import sys
from typing import TextIO

from wlproxy.core import wire
from wlproxy.cli import UserError
from wlproxy.core.codec import Codec, Record
from wlproxy.io.fdsock import FdSocket
from wlproxy.io.loop import Loop
from wlproxy.core.protocol import EVENT, REQUEST, Interface, Message
from wlproxy.core.relay import display_error, pump
from wlproxy.io.wlsocket import ListeningSocket, SocketError, connect_display

log = logging.getLogger("wlproxy.trace")

CLIENT_EXIT_GRACE = 5.0  # seconds a client command may run on after its connection ended


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", default="wayland-trace", metavar="NAME",
                   help="socket name (in XDG_RUNTIME_DIR) or path clients connect to (default: %(default)s)")
    p.add_argument("--display", metavar="NAME",
                   help="compositor to forward to (default: $WAYLAND_DISPLAY)")
    p.add_argument("--filter", action="append", default=[], metavar="PATTERN",
                   help="print only messages matching PATTERN: an interface (wl_surface), a message "
                   "(wl_surface.commit, *.commit) or a shell-style glob; repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="do not print messages matching PATTERN; repeatable")
    p.add_argument("-o", "--output", metavar="FILE", help="write the trace to FILE (default: stderr)")
    p.add_argument("--summary", action="store_true", help="print message counts when done")
    p.add_argument("--once", action="store_true", help="exit after the first client disconnects")
    p.add_argument("client", nargs=argparse.REMAINDER,
                   help="optional client command to run through the trace (after --); exit when it exits")


def _match(patterns: list[str], iface: str, msg: str) -> bool:
    full = f"{iface}.{msg}"
    return any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(iface, p) for p in patterns)


class Printer:
    """Formats, filters and counts messages."""

    def __init__(self, out: TextIO, include: list[str], exclude: list[str]):
        self.out = out
        self.include = include
        self.exclude = exclude
        self.counts: collections.Counter[str] = collections.Counter()
        self.bytes = [0, 0]

    def wanted(self, iface: str, msg: str) -> bool:
        if self.include and not _match(self.include, iface, msg):
            return False
        return not (self.exclude and _match(self.exclude, iface, msg))

    def message(self, client: int, direction: int, iface: Interface, msg: Message, obj: int, data, fds, codec: Codec) -> None:
        self.counts[f"{iface.name}.{msg.name}"] += 1
        self.bytes[direction] += len(data)
        if not self.wanted(iface.name, msg.name):
            return
        args = wire.decode(msg, data, fds)

        def name_of(oid: int) -> str | None:
            info = codec.lookup(oid)
            return info.iface.name if info else None

        line = wire.debug_line(iface.name, obj, msg, args, name_of, sent=direction == REQUEST)
        self.out.write(line + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def summary(self) -> str:
        lines = [f"{sum(self.counts.values())} messages; {self.bytes[REQUEST]} bytes of requests, "
                 f"{self.bytes[EVENT]} bytes of events"]
        for name, n in self.counts.most_common():
            lines.append(f"  {n:8d}  {name}")
        return "\n".join(lines)


class TraceSession:
    """One client and its own connection to the compositor."""

    def __init__(self, proxy: "TraceProxy", n: int, client, upstream):
        self.proxy = proxy
        self.n = n
        self.codec = Codec()
        self.codec.intercept_all()
        self.down = FdSocket(proxy.loop, client, self._from_client, self._closed, name=f"client {n}")
        self.up = FdSocket(proxy.loop, upstream, self._from_compositor, self._closed, name=f"upstream {n}")
        self._ended = False
        self._sides = (_Side(self, REQUEST, self.up), _Side(self, EVENT, self.down))

    def _from_client(self, s: FdSocket, new_fds: int) -> None:
        side = self._sides[REQUEST]
        pump(self.codec, REQUEST, s, side.forward, side.message, side.error, new_fds)

    def _from_compositor(self, s: FdSocket, new_fds: int) -> None:
        side = self._sides[EVENT]
        pump(self.codec, EVENT, s, side.forward, side.message, side.error, new_fds)

    def fail(self, direction: int, rec: Record, text: str) -> None:
        if direction == REQUEST:
            log.warning("client %d: protocol error: %s", self.n, text)
            self.proxy.printer.note(f"wlproxy: client {self.n} protocol error: {text}")
            self.down.write(display_error(rec.obj, rec.code, text))
            self.up.close("client sent an invalid message")
            self.down.pause_reading()
            self.down.shutdown_after_flush()
        else:
            log.error("client %d: invalid message from the compositor: %s", self.n, text)
            self.up.close("invalid message from the compositor")
            self.down.close("compositor connection failed")

    def _closed(self, s: FdSocket, reason: str) -> None:
        other = self.up if s is self.down else self.down
        if not other.closed:
            other.pause_reading()
            other.shutdown_after_flush()
        if not self._ended and self.up.closed and self.down.closed:
            self._ended = True
            log.info("client %d gone (%s)", self.n, reason)
            self.proxy.session_ended(self)


class _Side:
    """The sink for one direction of a session: print, then forward."""

    __slots__ = ("s", "direction", "dst")

    def __init__(self, s: TraceSession, direction: int, dst: FdSocket):
        self.s, self.direction, self.dst = s, direction, dst

    def forward(self, data, fds) -> None:
        self.dst.write(data, fds)

    def message(self, rec, data, fds) -> None:
        codec = self.s.codec
        iface, msg = codec.tables.message(rec.iface, self.direction, rec.opcode)
        self.s.proxy.printer.message(self.s.n, self.direction, iface, msg, rec.obj, data, fds, codec)
        self.dst.write(data, fds)

    def error(self, rec, text) -> None:
        self.s.fail(self.direction, rec, text)


class TraceProxy:
    def __init__(self, loop: Loop, listen: ListeningSocket, display: str | None, printer: Printer, once: bool):
        self.loop = loop
        self.listen = listen
        self.display = display
        self.printer = printer
        self.once = once
        self.sessions: set[TraceSession] = set()
        self.count = 0
        loop.add_reader(listen.fileno(), self._accept)

    def _accept(self) -> None:
        conn = self.listen.accept()
        if conn is None:
            return
        try:
            up = connect_display(self.display)
        except SocketError as e:
            log.error("%s", e)
            conn.close()
            return
        self.count += 1
        self.sessions.add(TraceSession(self, self.count, conn, up))
        log.info("client %d connected", self.count)

    def session_ended(self, s: TraceSession) -> None:
        self.sessions.discard(s)
        if self.once and not self.sessions:
            self.loop.stop()


def run(args: argparse.Namespace) -> int:
    client = [a for a in args.client if a != "--"] if args.client else []
    out = open(args.output, "w", buffering=1) if args.output else sys.stderr
    loop = Loop()
    try:
        listen = ListeningSocket(args.socket)
    except SocketError as e:
        raise UserError(str(e)) from None
    try:
        connect_display(args.display).close()  # fail early if there is no compositor
    except SocketError as e:
        listen.close()
        raise UserError(str(e)) from None
    printer = Printer(out, args.filter, args.exclude)
    proxy = TraceProxy(loop, listen, args.display, printer, args.once)
    log.info("tracing on %s", listen.path)
    status = 0
    proc = None
    loop.stop_on_signals()
    if client:
        env = dict(os.environ, WAYLAND_DISPLAY=str(listen.path))
        env.pop("WAYLAND_SOCKET", None)
        try:
            proc = subprocess.Popen(client, env=env)
        except OSError as e:
            listen.close()
            raise UserError(f"cannot run {client[0]}: {e.strerror}") from None

        def check_child() -> None:
            if proc.poll() is not None and not proxy.sessions:
                loop.stop()
            else:
                loop.call_later(0.05, check_child)

        loop.call_later(0.05, check_child)
    try:
        loop.run()
    finally:
        for s in list(proxy.sessions):
            s.down.close("trace stopped")
            s.up.close("trace stopped")
        listen.close()
        if proc is not None:
            if proc.poll() is None and not loop.signalled:
                # --once ended the trace with the client's connection: let the
                # client finish on its own (wayland-info prints after it disconnects)
                try:
                    proc.wait(CLIENT_EXIT_GRACE)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.terminate()
            status = proc.wait()
        if args.summary:
            printer.note(printer.summary())
        if out is not sys.stderr:
            out.close()
    return status
