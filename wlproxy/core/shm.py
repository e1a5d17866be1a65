"""Mirroring wl_shm pools across the link.

Guest side: the client's pool fd is mapped read-only; a shadow copy holds
exactly what the host has.  On commit the region that may differ from the
host (this commit's damage, plus damage the surface took while this buffer
was not attached, or the whole buffer the first time) becomes byte spans,
diffed against the shadow in C so only changed bytes cross the link.  A
buffer whose content changes wholesale skips the diff (no extra pass over
memory) and compares only a 1/64 sample to find out when diffing pays again
(see :class:`Surfaces`; the model itself is ``wlproxy/c/surface.c``).

Host side: a memfd per pool, created for weston, written from SHM_DATA
(the pools themselves are :mod:`wlproxy.io.pools`).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple, Protocol

from wlproxy._codec import ffi, lib
from wlproxy.core.protocol import load


def _fourcc(s: str) -> int:
    return int.from_bytes(s.encode(), "little")


BYTES_PER_PIXEL: dict[int, int] = {0: 4, 1: 4}
for _code in ("AR24", "XR24", "AB24", "XB24", "RA24", "RX24", "BA24", "BX24",
              "AR30", "XR30", "AB30", "XB30", "RA30", "RX30", "BA30", "BX30"):
    BYTES_PER_PIXEL[_fourcc(_code)] = 4
for _code in ("RG16", "BG16", "XR15", "AR15", "XB15", "AB15", "RX15", "RA15", "BX15", "BA15",
              "XR12", "AR12", "XB12", "AB12", "RX12", "RA12", "BX12", "BA12"):
    BYTES_PER_PIXEL[_fourcc(_code)] = 2
for _code in ("RG24", "BG24"):
    BYTES_PER_PIXEL[_fourcc(_code)] = 3
for _code in ("XR4H", "AR4H", "XB4H", "AB4H"):
    BYTES_PER_PIXEL[_fourcc(_code)] = 8
for _code in ("R8  ", "C8  "):
    BYTES_PER_PIXEL[_fourcc(_code)] = 1


SHM_ERROR: dict[str, int] = load()["wl_shm"].enums["error"]  # wl_shm.error, from the XML


def buffer_error(pool_size: int, offset: int, width: int, height: int, stride: int,
                 fmt: int) -> tuple[int, str] | None:
    """Why ``wl_shm_pool.create_buffer`` with these arguments is refused, as
    (wl_shm.error code, message); None if the buffer is good.  Both halves ask
    this: the format must be one whose bytes per pixel are known, and every row
    of ``stride`` bytes must lie inside the pool."""
    bpp = BYTES_PER_PIXEL.get(fmt)
    if bpp is None:
        return SHM_ERROR["invalid_format"], f"invalid buffer: unknown format {fmt & 0xFFFFFFFF:#x}"
    if width <= 0 or height <= 0 or stride < width * bpp or offset < 0 or offset + stride * height > pool_size:
        return SHM_ERROR["invalid_stride"], (
            f"invalid buffer: offset {offset} + stride {stride} x height {height} "
            f"runs past the pool of {pool_size} bytes (or bad width {width})")
    return None


class MappedPool(Protocol):
    """A client's pool as the model reads it (``wlproxy.io.pools.GuestPool``):
    ``c`` is the C model's view (mapping, shadow, size)."""

    key: int
    c: Any
    mm: Any


class Transfer(NamedTuple):
    """The spans of one commit: (offset, length) pairs in ``pool``, and their total."""

    pool: MappedPool
    spans: list[tuple[int, int]]
    total: int


class Surfaces:
    """One client's wl_surfaces and shm buffers, as the guest half tracks them
    (the state lives in C, ``surface.c``, where the read-and-forward path
    applies a frame's requests too).

    A commit sends the region that may differ from what the host has: its
    damage, plus what the buffer missed while another was attached (all of it
    the first time), diffed against the pool's shadow.  Adaptive per buffer:
    when most of a large damage changed, the buffer goes DIRECT (damage sent as
    it is, with only a 1/64 sample compared, no pass of its own over memory);
    when the sample says most of it repeats, it goes back to diffing after one
    commit that resyncs what the DIRECT commits left stale in the shadow."""

    def __init__(self, codec_proto, diff: bool = True):
        self.c = lib.sf_new()
        if self.c == ffi.NULL:
            raise MemoryError("surface model")
        lib.sf_set_diff(self.c, int(diff))
        surface = codec_proto["wl_surface"]
        lib.sf_set_ops(self.c, surface.index, *(surface.message(0, m).opcode
                                               for m in ("attach", "damage", "damage_buffer", "commit")))
        self._pools: dict[int, MappedPool] = {}  # address of pool.c -> pool, for the spans of a commit
        self._pool_out = ffi.new("struct sf_pool **")

    def _pool_of(self, cpool) -> MappedPool | None:
        return self._pools.get(int(ffi.cast("uintptr_t", cpool)))

    def buffer_add(self, bid: int, pool: MappedPool, offset: int, width: int, height: int, stride: int,
                   fmt: int) -> None:
        self._pools[int(ffi.cast("uintptr_t", pool.c))] = pool
        if lib.sf_buffer_add(self.c, bid, pool.c, offset, width, height, stride, fmt & 0xFFFFFFFF,
                             BYTES_PER_PIXEL.get(fmt, 0)) < 0:  # 0: unknown, never sent
            raise MemoryError("surface model")

    def buffer_remove(self, bid: int) -> None:
        lib.sf_buffer_remove(self.c, bid)

    def pool_gone(self, pool: MappedPool) -> None:
        """No buffer refers to ``pool`` any more."""
        self._pools.pop(int(ffi.cast("uintptr_t", pool.c)), None)

    def buffer_mode(self, bid: int) -> int | None:
        m = lib.sf_buffer_mode(self.c, bid)
        return None if m > 1 else m

    def surface_add(self, sid: int) -> None:
        if lib.sf_surface_add(self.c, sid) < 0:
            raise MemoryError("surface model")

    def surface_remove(self, sid: int) -> None:
        lib.sf_surface_remove(self.c, sid)

    def set_scale(self, sid: int, scale: int) -> None:
        lib.sf_set_scale(self.c, sid, scale)

    def set_transform(self, sid: int, transform: int) -> None:
        lib.sf_set_transform(self.c, sid, transform)

    def set_viewport(self, sid: int) -> None:
        lib.sf_set_viewport(self.c, sid)

    def attach(self, sid: int, bid: int) -> None:
        lib.sf_attach(self.c, sid, bid)

    def damage(self, sid: int, in_buffer: bool, x: int, y: int, w: int, h: int) -> None:
        lib.sf_damage(self.c, sid, int(in_buffer), x, y, w, h)

    def request(self, data) -> Transfer | None:
        """Apply one wl_surface attach, damage, damage_buffer or commit (its
        bytes, decoded in C as the read-and-forward path does); the pixels a
        commit sends, if any."""
        n = lib.sf_request(self.c, ffi.from_buffer(data), len(data), self._pool_out)
        return self.spans(n, self._pool_out[0])

    def commit(self, sid: int) -> Transfer | None:
        """The pixels this commit sends, if any."""
        n = lib.sf_commit(self.c, sid, self._pool_out)
        return self.spans(n, self._pool_out[0])

    def spans(self, n: int, cpool) -> Transfer | None:
        """The ``n`` spans the last commit left (in ``cpool``), as a Transfer."""
        if not n:
            return None
        pool = self._pool_of(cpool)
        if pool is None:
            return None
        buf = ffi.buffer(lib.sf_spans(self.c), n * SPAN.size)
        spans = list(SPAN.iter_unpack(buf))
        return Transfer(pool, spans, sum(k for _, k in spans))

    def close(self) -> None:
        """Free the model; later calls do nothing."""
        if self.c:
            lib.sf_free(self.c)
            self.c = ffi.NULL
        self._pools.clear()


SPAN = struct.Struct("=QI4x")  # struct shm_span: offset, length
