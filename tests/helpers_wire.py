"""Raw Wayland wire helpers for the codec, trace and malformed-input tests.

Nothing here uses libwayland: messages are built from the protocol model
(``wlproxy.core.protocol``) with ``wlproxy.core.wire.encode``, or byte by byte when a
test needs a message no encoder would produce.  ``RawClient`` is a minimal
blocking client over a Unix socket that keeps just enough of an object map
to decode the events it receives.  ``read_traffic`` reads the recordings in
``bench/traffic/``.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from wlproxy.core import wire
from wlproxy.core.protocol import REQUEST, load

ROOT = Path(__file__).resolve().parent.parent
TRAFFIC_DIR = ROOT / "bench" / "traffic"
PROTO = load()

# -- building messages -------------------------------------------------------


def encode(obj: int, iface: str, name: str, *args: Any, direction: int = REQUEST) -> bytes:
    """One well-formed message (fd arguments are left out of the bytes)."""
    data, _ = wire.encode(obj, PROTO[iface].message(direction, name), list(args))
    return data


def header(obj: int, opcode: int, size: int) -> bytes:
    return struct.pack("=II", obj, (size << 16) | opcode)


def raw(obj: int, opcode: int, body: bytes = b"", size: int | None = None) -> bytes:
    """A message with an arbitrary body; ``size`` overrides the header's size field."""
    return header(obj, opcode, 8 + len(body) if size is None else size) + body


def u32(*vals: int) -> bytes:
    return struct.pack(f"={len(vals)}I", *vals)


def string(s: bytes | str | None) -> bytes:
    """A string argument as libwayland marshals it (length includes the NUL)."""
    if s is None:
        return u32(0)
    b = (s.encode() if isinstance(s, str) else s) + b"\0"
    return u32(len(b)) + b + b"\0" * (-len(b) % 4)


def opcode(iface: str, name: str, direction: int = REQUEST) -> int:
    return PROTO[iface].message(direction, name).opcode


def split(data: bytes) -> list[bytes]:
    """Split a well-formed stream into messages."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        _, _, size = wire.header(data[pos:pos + 8])
        if size < 8 or pos + size > len(data):
            break
        out.append(data[pos:pos + size])
        pos += size
    return out


# -- recorded traffic ----------------------------------------------------------

TRAFFIC_MAGIC = b"WLTRAF01"
CHUNK = struct.Struct("<BBHI")  # direction (0 request, 1 event), fds, reserved, length


def write_traffic(path: Path, chunks: Sequence[tuple[int, bytes, int]], note: str = "") -> None:
    """Write ``(direction, bytes, nfds)`` chunks, one per ``recvmsg`` as the proxy saw them.

    File layout: ``WLTRAF01``, a u32 length and that many bytes of UTF-8 note,
    then per chunk a header ``<u8 direction, u8 nfds, u16 0, u32 length>`` and the bytes.
    """
    n = note.encode()
    with open(path, "wb") as f:
        f.write(TRAFFIC_MAGIC + struct.pack("<I", len(n)) + n)
        for d, data, nfds in chunks:
            f.write(CHUNK.pack(d, nfds, 0, len(data)) + data)


def read_traffic(path: Path) -> list[tuple[int, bytes, int]]:
    raw_ = Path(path).read_bytes()
    if raw_[:8] != TRAFFIC_MAGIC:
        raise ValueError(f"{path}: not a traffic recording")
    (nlen,) = struct.unpack_from("<I", raw_, 8)
    pos = 12 + nlen
    out = []
    while pos < len(raw_):
        d, nfds, _, ln = CHUNK.unpack_from(raw_, pos)
        pos += CHUNK.size
        out.append((d, raw_[pos:pos + ln], nfds))
        pos += ln
    return out


def traffic_files() -> list[Path]:
    return sorted(TRAFFIC_DIR.glob("*.bin"))


# -- a raw client ----------------------------------------------------------------


@dataclass
class Event:
    obj: int
    iface: str | None
    name: str | None
    args: list[Any]
    data: bytes


@dataclass
class RawClient:
    """A blocking Wayland client speaking raw bytes; it tracks ids it creates."""

    path: str
    timeout: float = 5.0
    sock: socket.socket = field(init=False)
    objects: dict[int, str] = field(default_factory=lambda: {1: "wl_display"})
    globals: dict[str, tuple[int, int]] = field(default_factory=dict)
    next_id: int = 2
    buf: bytes = b""
    events: list[Event] = field(default_factory=list)
    eof: bool = False

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # sending
    def new_id(self, iface: str) -> int:
        n = self.next_id
        self.next_id += 1
        self.objects[n] = iface
        return n

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.sendall(data)

    def request(self, obj: int, name: str, *args: Any) -> bytes:
        return encode(obj, self.objects[obj], name, *args)

    # receiving
    def _read(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        while len(self.buf) >= 8:
            obj, op, size = wire.header(self.buf)
            if size < 8 or len(self.buf) < size:
                break
            data, self.buf = self.buf[:size], self.buf[size:]
            iface = self.objects.get(obj)
            if iface is None:
                self.events.append(Event(obj, None, None, [], data))
                continue
            msg = PROTO[iface].events[op]
            args = wire.decode(msg, data, [-1] * msg.nfds)
            self.events.append(Event(obj, iface, msg.name, args, data))
            if iface == "wl_registry" and msg.name == "global":
                self.globals.setdefault(args[1], (args[0], args[2]))
            if iface == "wl_display" and msg.name == "delete_id":
                self.objects.pop(args[0], None)
        return True

    def wait_for(self, pred, timeout: float | None = None) -> Event:
        """Read until an event satisfying ``pred`` arrives (or fail on EOF/timeout)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = 0
        while True:
            for e in self.events[seen:]:
                if pred(e):
                    return e
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise TimeoutError("event not received")
            if not self._read(deadline):
                for e in self.events[seen:]:
                    if pred(e):
                        return e
                raise EOFError("connection closed")

    def read_until_eof(self, timeout: float | None = None) -> list[Event]:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            if time.monotonic() > deadline:
                raise TimeoutError("connection still open")
            self._read(deadline)
        return self.events

    # conveniences
    def sync(self) -> int:
        cb = self.new_id("wl_callback")
        self.send(self.request(1, "sync", cb))
        return cb

    def roundtrip(self) -> None:
        cb = self.sync()
        self.wait_for(lambda e: e.obj == cb and e.name == "done")

    def get_registry(self) -> int:
        reg = self.new_id("wl_registry")
        self.send(self.request(1, "get_registry", reg))
        self.roundtrip()
        self.registry = reg
        return reg

    def bind(self, iface: str, version: int | None = None) -> int:
        name, adv = self.globals[iface]
        oid = self.new_id(iface)
        self.send(self.request(self.registry, "bind", name, wire.Untyped((iface, version or 1, oid))))
        return oid


def display_errors(events: Sequence[Event]) -> list[list[Any]]:
    return [e.args for e in events if e.obj == 1 and e.name == "error"]


def memfd(size: int = 4096) -> int:
    fd = os.memfd_create("wlproxy-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd
