"""In-process harness for fuzzing the host half's link and codec input.

``run_one(data)`` starts a real ``HostServer``/``HostLink`` on one end of a
socketpair, writes ``data`` as the guest's link bytes (the fuzzer's input;
the seeds start with a HELLO), closes the guest end and runs the event loop
until the link is gone.  Each guest client gets a tiny fake compositor on a
socketpair: it answers ``get_registry`` with a fixed set of globals and
``sync`` with ``done``, and swallows everything else (closing any fds), so
binds, pools, buffers, titles and the clipboard handlers are all reachable.

Invariants checked after every input (a violation raises ``Finding``):
no exception escapes an event-loop callback, every fd opened is closed,
the VM's shm and object accounting return to zero.

``run_one`` returns what the host half sent: the bytes each fake compositor
received, and the link bytes back to the guest; ``fast=False`` runs it with
every C fast path off (``WLPROXY_FAST_PATHS=off``), for the differential test.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wlproxy.halves import host, session  # noqa: E402
from wlproxy.core import policy, wire  # noqa: E402
from wlproxy.core.codec import default_tables  # noqa: E402
from wlproxy.io.loop import Loop  # noqa: E402

P = default_tables().proto
GLOBALS = [("wl_compositor", 5), ("wl_shm", 1), ("xdg_wm_base", 5), ("wl_seat", 7), ("wl_data_device_manager", 3),
           ("zwp_primary_selection_device_manager_v1", 1), ("wl_output", 4), ("wp_viewporter", 1),
           ("weston_screenshooter", 1), ("zwp_linux_dmabuf_v1", 4), ("wl_subcompositor", 1)]
LIMITS = """
[limits]
clients = 8
objects_per_client = 2000
objects_per_vm = 4000
shm_bytes_per_client = "1 MiB"
shm_bytes_per_vm = "2 MiB"
pending_link_bytes = "1 MiB"
messages_per_second = 100000
message_burst = 100000
"""
# the input's last byte picks the clipboard mode
POLICIES = [policy.parse(f'clipboard = "{mode}"\n' + LIMITS, "fuzz", "<fuzz policy>") for mode in policy.CLIPBOARD_MODES]
MAX_TURNS = 400


class Finding(Exception):
    """An invariant broke: the fuzzer reports this input."""


class StrictLoop(Loop):
    """Callbacks' exceptions propagate (the real loop logs and goes on)."""

    def _run_callback(self, cb, *args) -> None:  # type: ignore[no-untyped-def]
        cb(*args)


def _event(obj: int, iface: str, name: str, *args) -> bytes:
    return wire.encode(obj, P[iface].message(1, name), list(args))[0]


class FakeCompositor:
    def __init__(self, loop: Loop):
        self.loop = loop
        self.mine, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.mine.setblocking(False)
        self.buf = b""
        self.received = bytearray()  # everything the host half sent this compositor
        loop.add_reader(self.mine.fileno(), self._readable)

    def _readable(self) -> None:
        fds = array.array("i")
        try:
            data, anc, _, _ = self.mine.recvmsg(65536, socket.CMSG_SPACE(28 * 4))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
        for fd in fds:
            os.close(fd)
        if not data:
            self.close()
            return
        self.received += data
        self.buf += data
        out = b""
        while len(self.buf) >= 8:
            obj, op, size = wire.header(self.buf)
            if size < 8 or len(self.buf) < size:
                break
            if obj == 1 and op == 1 and size == 12:  # get_registry
                (reg,) = struct.unpack_from("=I", self.buf, 8)
                for n, (iface, v) in enumerate(GLOBALS, 1):
                    out += _event(reg, "wl_registry", "global", n, iface, v)
            elif obj == 1 and op == 0 and size == 12:  # sync
                (cb,) = struct.unpack_from("=I", self.buf, 8)
                out += _event(cb, "wl_callback", "done", 0) + _event(1, "wl_display", "delete_id", cb)
            self.buf = self.buf[size:]
        if out:
            try:
                self.mine.send(out)
            except OSError:
                pass

    def close(self) -> None:
        if self.mine.fileno() >= 0:
            self.loop.forget(self.mine.fileno())
            self.mine.close()


def _pieces(data: bytes):
    """The input cut at link frame boundaries (as far as its headers are sane)."""
    pos = 0
    while pos < len(data):
        if len(data) - pos >= 12:
            length = struct.unpack_from("<I", data, pos)[0]
            end = pos + 12 + length if length <= 1 << 16 else len(data)
        else:
            end = len(data)
        yield data[pos:end]
        pos = end


def _turn(loop: Loop, b: socket.socket, out: bytearray) -> int:
    loop.run_once(0)
    try:  # drain what the host sends the guest
        while chunk := b.recv(1 << 16):
            out += chunk
    except (BlockingIOError, InterruptedError, OSError):
        pass
    return 1


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


class Output(NamedTuple):
    """What the host half sent for one input."""

    compositor: list[bytes]  # to each fake compositor, in the order they were connected
    link: bytes              # to the guest


def run_one(data: bytes, fast: bool = True) -> Output:
    before = _open_fds()
    loop = StrictLoop()
    fakes: list[FakeCompositor] = []
    to_guest = bytearray()

    def connect(display):  # type: ignore[no-untyped-def]
        f = FakeCompositor(loop)
        fakes.append(f)
        return f.theirs

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    saved, saved_fast = host.connect_display, session.FAST_PATHS
    host.connect_display = connect
    session.FAST_PATHS = fast
    try:
        b.setblocking(False)
        server = host.HostServer(loop, a, "fuzz", None, POLICIES[data[-1] % 4 if data else 0])
        turns = 0
        for piece in _pieces(data[:150_000]):
            # one link frame at a time, with loop turns between, so the fake
            # compositor's replies (registry globals) come before later binds
            try:
                b.sendall(piece)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            for _ in range(3):
                turns += _turn(loop, b, to_guest)
            if not server.links or turns > MAX_TURNS:
                break
        b.shutdown(socket.SHUT_RDWR)
        for _ in range(MAX_TURNS):
            if not server.links:
                break
            _turn(loop, b, to_guest)
        for lk in list(server.links):
            lk.shutdown("fuzz input done", violation=False)
        for _ in range(3):
            loop.run_once(0)
        if server.pool_bytes or server.objects:
            raise Finding(f"accounting left over: {server.pool_bytes} shm bytes, {server.objects} objects")
    finally:
        host.connect_display, session.FAST_PATHS = saved, saved_fast
        for f in fakes:
            f.close()
        b.close()
        loop.close()
    leaked = _open_fds() - before
    if leaked:
        targets = {}
        for fd in leaked:
            try:
                targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        for fd in leaked:
            try:
                os.close(fd)
            except OSError:
                pass
        if targets:
            raise Finding(f"fds leaked: {targets}")
    return Output([bytes(f.received) for f in fakes], bytes(to_guest))
