"""The link protocol between the guest half and the host half (sans-IO).

See ``docs/link-protocol.md``.  Every frame is a 12-byte header (payload
length, type, flags, channel; little-endian) and a payload.  ``LinkDecoder``
turns received bytes into events and enforces the limits that protect the
host half from a hostile VM; the ``*_frame`` functions build frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

MAGIC = b"WLPXLINK"
VERSION = 1
HEADER = struct.Struct("<IHHI")
HEADER_SIZE = HEADER.size

# frame types
HELLO = 1      # ch 0: magic, version, window, name
ERROR = 2      # ch 0: fatal link error, utf-8 text
OPEN = 3       # guest -> host: a new client on this channel; payload: utf-8 description
CLOSE = 4      # either: the channel is closed; payload: u32 code, utf-8 reason
DATA = 5       # Wayland message bytes of this channel
CREDIT = 6     # u32: DATA bytes of this channel the peer may send again
FD_SHM = 7     # guest -> host: the channel's next fd is a new shm pool: u32 key, u64 size
SHM_DATA = 8   # guest -> host: u32 key, u32 0, u64 offset, then bytes for the pool
SHM_FORGET = 9  # guest -> host: u32 key: the pool is gone (no object refers to it)
FD_KEYMAP = 10  # host -> guest: the channel's next fd is a keymap with these bytes
FD_PIPE = 11   # either: the channel's next fd is the write end of a bridged pipe: u32 pipe id
PIPE_DATA = 12  # either: u32 pipe id, then bytes for that pipe
PIPE_CLOSE = 13  # either: u32 pipe id: end of data (or abandoned)
PIPE_CREDIT = 14  # either: u32 pipe id, u32 bytes written out

NAMES = {v: k for k, v in globals().items() if k.isupper() and isinstance(v, int) and 1 <= v <= 14}

SHM_HEADER = struct.Struct("<IIQ")
_U32 = struct.Struct("<I")
_U32U32 = struct.Struct("<II")
_KEYSIZE = struct.Struct("<IQ")
_HELLO = struct.Struct("<8sIII")


@dataclass(frozen=True)
class Limits:
    """What one side accepts from the other."""

    max_data: int = 1 << 16           # DATA payload per frame
    max_shm_chunk: int = 1 << 22      # SHM_DATA payload per frame
    max_control: int = 4096           # other frames (keymaps aside)
    max_keymap: int = 1 << 20
    max_pipe_chunk: int = 1 << 16


class LinkError(Exception):
    """The peer broke the link protocol; the link must be dropped."""


class Frame(NamedTuple):
    type: int
    channel: int
    payload: bytes


@dataclass
class ShmChunk:
    """Part of an SHM_DATA payload: ``data`` goes to ``offset`` in pool ``key``."""

    channel: int
    key: int
    offset: int
    data: memoryview


def frame(ftype: int, channel: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), ftype, 0, channel) + payload


def header(ftype: int, channel: int, length: int) -> bytes:
    return HEADER.pack(length, ftype, 0, channel)


def hello_frame(window: int, name: str) -> bytes:
    return frame(HELLO, 0, _HELLO.pack(MAGIC, VERSION, window, 0) + name.encode()[:200])


def parse_hello(payload: bytes) -> tuple[int, int, str]:
    """(version, window, name) of a HELLO payload."""
    if len(payload) < _HELLO.size:
        raise LinkError("short HELLO")
    magic, version, window, _ = _HELLO.unpack_from(payload)
    if magic != MAGIC:
        raise LinkError("not a wlproxy link (bad magic)")
    return version, window, payload[_HELLO.size:].decode("utf-8", "replace")


def close_frame(channel: int, code: int, reason: str) -> bytes:
    return frame(CLOSE, channel, _U32.pack(code) + reason.encode()[:1000])


def credit_frame(channel: int, n: int) -> bytes:
    return frame(CREDIT, channel, _U32.pack(n))


def fd_shm_frame(channel: int, key: int, size: int) -> bytes:
    return frame(FD_SHM, channel, _KEYSIZE.pack(key, size))


def shm_data_header(channel: int, key: int, offset: int, length: int) -> bytes:
    return HEADER.pack(SHM_HEADER.size + length, SHM_DATA, 0, channel) + SHM_HEADER.pack(key, 0, offset)


def u32_frame(ftype: int, channel: int, value: int) -> bytes:
    return frame(ftype, channel, _U32.pack(value))


def pipe_data_header(channel: int, pipe: int, length: int) -> bytes:
    return HEADER.pack(4 + length, PIPE_DATA, 0, channel) + _U32.pack(pipe)


def pipe_credit_frame(channel: int, pipe: int, n: int) -> bytes:
    return frame(PIPE_CREDIT, channel, _U32U32.pack(pipe, n))


def u32(payload: bytes, what: str) -> int:
    if len(payload) != 4:
        raise LinkError(f"{what}: payload of {len(payload)} bytes, expected 4")
    return _U32.unpack(payload)[0]


def parse_close(payload: bytes) -> tuple[int, str]:
    if len(payload) < 4:
        raise LinkError("short CLOSE")
    return _U32.unpack_from(payload)[0], bytes(payload[4:]).decode("utf-8", "replace")


def parse_fd_shm(payload: bytes) -> tuple[int, int]:
    if len(payload) != _KEYSIZE.size:
        raise LinkError(f"FD_SHM: payload of {len(payload)} bytes, expected {_KEYSIZE.size}")
    return _KEYSIZE.unpack(payload)


def parse_pipe_credit(payload: bytes) -> tuple[int, int]:
    if len(payload) != 8:
        raise LinkError("PIPE_CREDIT: bad payload size")
    return _U32U32.unpack(payload)


class LinkDecoder:
    """Received bytes in, validated events out.

    ``feed(data)`` returns ``Frame`` events, and ``ShmChunk`` events for the
    pieces of SHM_DATA payloads as they arrive (so a 4K frame is never held
    in memory twice).  Limits are checked on the header, before any payload
    is buffered.  Any violation raises ``LinkError``.
    """

    def __init__(self, limits: Limits | None = None, *, accept: frozenset[int] | None = None):
        self.limits = limits or Limits()
        self.accept = accept  # frame types this side may receive (None: all)
        self._buf = bytearray()
        self._shm: list[int] | None = None  # [channel, key, offset, remaining] while streaming
        self.hello_seen = False
        # payload limit of each frame type this side accepts
        self._limits = {t: self._limit(t) for t in NAMES if accept is None or t in accept}

    def _limit(self, ftype: int) -> int:
        lim = self.limits
        if ftype == DATA:
            return lim.max_data
        if ftype == SHM_DATA:
            return lim.max_shm_chunk + SHM_HEADER.size
        if ftype == FD_KEYMAP:
            return lim.max_keymap
        if ftype == PIPE_DATA:
            return lim.max_pipe_chunk + 4
        return lim.max_control

    def direct_target(self) -> tuple[int, int, int, int] | None:
        """While an SHM_DATA payload is streaming with nothing buffered:
        (channel, key, offset, remaining) so the caller may receive the bytes
        straight into the pool and report them with ``advance_direct``."""
        if self._shm is None or self._buf:
            return None
        return self._shm[0], self._shm[1], self._shm[2], self._shm[3]

    def idle(self) -> bool:
        """Past HELLO with nothing buffered or streaming: the next byte starts a frame."""
        return self.hello_seen and self._shm is None and not self._buf

    def advance_direct(self, n: int) -> None:
        s = self._shm
        assert s is not None and 0 < n <= s[3]
        s[2] += n
        s[3] -= n
        if s[3] == 0:
            self._shm = None

    def feed(self, data) -> list[Frame | ShmChunk]:
        """Decode ``data``.  With nothing buffered from earlier calls, SHM
        payload chunks are views of ``data`` itself (no copy): use them
        before ``data`` changes."""
        out: list[Frame | ShmChunk] = []
        held = bool(self._buf)
        if held:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        pos = 0
        n = len(buf)
        while pos < n:
            s = self._shm
            if s is not None:
                take = min(s[3], n - pos)
                piece = memoryview(bytes(buf[pos:pos + take])) if held else memoryview(buf)[pos:pos + take]
                out.append(ShmChunk(s[0], s[1], s[2], piece))
                pos += take
                s[2] += take
                s[3] -= take
                if s[3] == 0:
                    self._shm = None
                continue
            if n - pos < HEADER_SIZE:
                break
            length, ftype, flags, channel = HEADER.unpack_from(buf, pos)
            limit = self._limits.get(ftype)
            if limit is None:
                if ftype not in NAMES:
                    raise LinkError(f"unknown frame type {ftype}")
                raise LinkError(f"frame type {NAMES[ftype]} is not allowed in this direction")
            if flags:
                raise LinkError(f"{NAMES[ftype]} frame with unknown flags {flags:#x}")
            if length > limit:
                raise LinkError(f"{NAMES[ftype]} frame of {length} bytes exceeds the limit of {limit}")
            if not self.hello_seen and ftype != HELLO:
                raise LinkError(f"{NAMES[ftype]} frame before HELLO")
            if (channel == 0) != (ftype <= ERROR):
                raise LinkError(f"{NAMES[ftype]} frame on channel {channel}")
            if ftype == SHM_DATA:
                if length < SHM_HEADER.size:
                    raise LinkError("short SHM_DATA frame")
                if n - pos < HEADER_SIZE + SHM_HEADER.size:
                    break
                key, pad, offset = SHM_HEADER.unpack_from(buf, pos + HEADER_SIZE)
                if pad:
                    raise LinkError("SHM_DATA padding is not zero")
                pos += HEADER_SIZE + SHM_HEADER.size
                remaining = length - SHM_HEADER.size
                if remaining:
                    self._shm = [channel, key, offset, remaining]
                else:
                    out.append(ShmChunk(channel, key, offset, memoryview(b"")))
                continue
            if n - pos < HEADER_SIZE + length:
                break
            payload = bytes(buf[pos + HEADER_SIZE:pos + HEADER_SIZE + length])
            pos += HEADER_SIZE + length
            if ftype == HELLO:
                self.hello_seen = True
            out.append(Frame(ftype, channel, payload))
        if held:
            del buf[:pos]
        elif pos < n:
            self._buf += buf[pos:n]
        return out
