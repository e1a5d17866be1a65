"""A hand-driven guest end of the link, for tests that talk to the host half
directly (no guest half): it can send any frame, valid or not."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from helpers_wire import encode as msg
from wlproxy.core import link, wire


class LinkPeer:
    def __init__(self, path: Path | str, *, hello: bool = True, window: int = 1 << 18):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(5)
        self.dec = link.LinkDecoder(link.Limits(max_shm_chunk=1 << 24))
        self.frames: list[link.Frame] = []
        if hello:
            self.send(link.hello_frame(window, "test peer"))
            f = self.next_frame()
            assert f.type == link.HELLO

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, ftype: int, ch: int, payload: bytes = b"") -> None:
        self.send(link.frame(ftype, ch, payload))

    def data(self, ch: int, payload: bytes) -> None:
        self.frame(link.DATA, ch, payload)

    def _read(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 16)
        except socket.timeout:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self.frames.extend(e for e in self.dec.feed(chunk) if isinstance(e, link.Frame))
        return True

    def next_frame(self, timeout: float = 5.0) -> link.Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            if time.monotonic() > deadline or not self._read(max(0.01, deadline - time.monotonic())):
                raise TimeoutError("no frame")
        return self.frames.pop(0)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the host half closes the link (frames before that are kept)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._read(0.1):
                return True
        return False

    def open_client(self, ch: int) -> None:
        self.frame(link.OPEN, ch, b"test")

    def roundtrip(self, ch: int, cb_id: int, registry_id: int | None = None, timeout: float = 5.0) -> list[bytes]:
        """Send (get_registry and) sync on channel ``ch``; return event bytes up to the callback's done."""
        out = b""
        if registry_id is not None:
            out += msg(1, "wl_display", "get_registry", registry_id)
        out += msg(1, "wl_display", "sync", cb_id)
        self.data(ch, out)
        events = b""
        deadline = time.monotonic() + timeout
        while True:
            f = self.next_frame(max(0.01, deadline - time.monotonic()))
            if f.type == link.DATA and f.channel == ch:
                events += f.payload
                self.frame(link.CREDIT, ch, struct.pack("<I", len(f.payload)))
                msgs = split(events)
                if any(obj == cb_id and op == 0 for obj, op, _ in msgs):
                    return [m for _, _, m in msgs]
            elif f.type == link.CLOSE and f.channel == ch:
                raise ConnectionError(f"channel closed: {f.payload!r}")

    def close(self) -> None:
        self.sock.close()


def split(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    pos = 0
    while pos + 8 <= len(data):
        obj, op, size = wire.header(data[pos:pos + 8])
        out.append((obj, op, data[pos:pos + size]))
        pos += size
    return out
