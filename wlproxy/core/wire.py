"""Pure-Python message arguments: decode, encode, and print as libwayland does.

These are for the few messages Python decides on (and for ``wlproxy trace``);
bulk traffic never comes here, it is validated and forwarded by the C codec.
"""

from __future__ import annotations

import struct
import time
from typing import Any, Callable, Sequence

from wlproxy.core.protocol import Message

_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_HDR = struct.Struct("=II")


class Untyped(tuple):
    """An untyped new_id (as in ``wl_registry.bind``): (interface, version, id)."""

    __slots__ = ()

    @property
    def interface(self) -> str:
        return self[0]

    @property
    def version(self) -> int:
        return self[1]

    @property
    def id(self) -> int:
        return self[2]


def header(data) -> tuple[int, int, int]:
    """(object id, opcode, size) of the message at the start of ``data``."""
    obj, w = _HDR.unpack_from(data, 0)
    return obj, w & 0xFFFF, w >> 16


def _string(data, off: int) -> tuple[str | None, int]:
    n = _U32.unpack_from(data, off)[0]
    off += 4
    if n == 0:
        return None, off
    s = bytes(data[off:off + n - 1]).decode("utf-8", "surrogateescape")
    return s, off + ((n + 3) & ~3)


def decode(msg: Message, data, fds: Sequence[int] = ()) -> list[Any]:
    """Arguments of a complete, already validated message (header included)."""
    out: list[Any] = []
    off = 8
    fd_iter = iter(fds)
    for a in msg.args:
        t = a.type
        if t == "fd":
            out.append(next(fd_iter))
            continue
        if t == "int":
            out.append(_I32.unpack_from(data, off)[0])
            off += 4
        elif t == "fixed":
            out.append(_I32.unpack_from(data, off)[0] / 256.0)
            off += 4
        elif t in ("uint", "object"):
            out.append(_U32.unpack_from(data, off)[0])
            off += 4
        elif t == "string":
            s, off = _string(data, off)
            out.append(s)
        elif t == "array":
            n = _U32.unpack_from(data, off)[0]
            out.append(bytes(data[off + 4:off + 4 + n]))
            off += 4 + ((n + 3) & ~3)
        elif t == "new_id":
            if a.interface:
                out.append(_U32.unpack_from(data, off)[0])
                off += 4
            else:
                name, off = _string(data, off)
                version, nid = struct.unpack_from("=II", data, off)
                off += 8
                out.append(Untyped((name, version, nid)))
    return out


_ONE_WORD = {"int": "i", "uint": "I", "object": "I"}


def decoder(msg: Message) -> Callable[[Any, Sequence[int]], list[Any]]:
    """``decode`` for ``msg``, made once: a message whose arguments are all one
    word (fds aside), as most that the halves intercept, unpacks with one
    precompiled struct; any other goes through :func:`decode`."""
    fmt, fd_at = "=", []
    for i, a in enumerate(msg.args):
        if a.type == "fd":
            fd_at.append(i)
        elif a.type in _ONE_WORD or (a.type == "new_id" and a.interface):
            fmt += _ONE_WORD.get(a.type, "I")
        else:
            return lambda data, fds=(): decode(msg, data, fds)
    unpack = struct.Struct(fmt).unpack_from
    if not fd_at:
        return lambda data, fds=(): list(unpack(data, 8))

    def with_fds(data, fds: Sequence[int] = ()) -> list[Any]:
        out = list(unpack(data, 8))
        for i, fd in zip(fd_at, fds):
            out.insert(i, fd)
        return out
    return with_fds


def _pack_string(s: str | bytes | None) -> bytes:
    if s is None:
        return _U32.pack(0)
    b = (s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s) + b"\0"
    return _U32.pack(len(b)) + b + b"\0" * (-len(b) % 4)


def encode(obj: int, msg: Message, args: Sequence[Any]) -> tuple[bytes, list[int]]:
    """Build one message; returns its bytes and the fds it carries (in order)."""
    parts: list[bytes] = []
    fds: list[int] = []
    for a, v in zip(msg.args, args, strict=True):
        t = a.type
        if t == "fd":
            fds.append(v)
        elif t == "int":
            parts.append(_I32.pack(v))
        elif t == "fixed":
            parts.append(_I32.pack(int(round(v * 256))))
        elif t in ("uint", "object"):
            parts.append(_U32.pack(v or 0))
        elif t == "string":
            parts.append(_pack_string(v))
        elif t == "array":
            parts.append(_U32.pack(len(v)) + bytes(v) + b"\0" * (-len(v) % 4))
        elif t == "new_id":
            if a.interface:
                parts.append(_U32.pack(v))
            else:
                parts.append(_pack_string(v[0]) + struct.pack("=II", v[1], v[2]))
    body = b"".join(parts)
    size = 8 + len(body)
    if size > 0xFFFF:
        raise ValueError(f"message {msg.name} too large ({size} bytes)")
    return _HDR.pack(obj, (size << 16) | msg.opcode) + body, fds


def format_args(msg: Message, args: Sequence[Any], name_of: Callable[[int], str | None]) -> str:
    """Arguments as libwayland's WAYLAND_DEBUG prints them."""
    out = []
    for a, v in zip(msg.args, args):
        t = a.type
        if t in ("int", "uint"):
            out.append(str(v))
        elif t == "fixed":
            out.append(f"{v:f}")
        elif t == "string":
            out.append("nil" if v is None else f'"{v}"')
        elif t == "object":
            out.append("nil" if not v else f"{name_of(v) or '[unknown]'}@{v}")
        elif t == "new_id":
            if isinstance(v, Untyped):
                out.extend([f'"{v.interface}"', str(v.version), f"new id [unknown]@{v.id}"])
            else:
                out.append("nil" if not v else f"new id {a.interface or '[unknown]'}@{v}")
        elif t == "array":
            out.append(f"array[{len(v)}]")
        elif t == "fd":
            out.append(f"fd {v}")
    return ", ".join(out)


def debug_line(iface: str, obj: int, msg: Message, args: Sequence[Any], name_of: Callable[[int], str | None],
               sent: bool, now: float | None = None) -> str:
    """One line in libwayland's ``WAYLAND_DEBUG=1`` format, seen from the client."""
    t = int((time.time() if now is None else now) * 1_000_000)
    ms = (t // 1000) & 0xFFFFFFFF
    arrow = " -> " if sent else ""
    return f"[{ms:7d}.{t % 1000:03d}] {arrow}{iface}@{obj}.{msg.name}({format_args(msg, args, name_of)})"
