"""Mirroring wl_shm pools across the link.

Guest side: the client's pool fd is mapped read-only; a shadow copy holds
exactly what the host has.  On commit the region that may differ from the
host (this commit's damage, plus damage the surface took while this buffer
was not attached, or the whole buffer the first time) becomes byte spans,
diffed against the shadow in C so only changed bytes cross the link.  A
buffer whose content changes wholesale skips the diff (no extra pass over
memory) and compares only a 1/64 sample to find out when diffing pays again
(see :class:`Surfaces`; the model itself is ``cffi_build/surface.c``).

Host side: a memfd per pool, created for weston, written from SHM_DATA.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import NamedTuple

from wlproxy._codec import ffi, lib
from wlproxy.protocol import load


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


class _Pool:
    fd: int

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GuestPool(_Pool):
    """A client's pool as the guest half sees it; ``c`` is what the C
    surface model reads (the mapping and the shadow)."""

    def __init__(self, key: int, fd: int, size: int):
        self.key = key
        self.fd = fd
        self.size = size
        self.refs = 1  # the wl_shm_pool object, plus one per buffer
        self.c = ffi.new("struct sf_pool *")
        self.c.key = key
        self.mm: mmap.mmap | None = None
        self.shadow: mmap.mmap | None = None
        self._cbufs: tuple = ()
        self._map(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else None,
                  mmap.mmap(-1, max(size, 1)))

    def _map(self, mm: mmap.mmap | None, shadow: mmap.mmap) -> None:
        self._unmap()
        self.mm, self.shadow = mm, shadow
        if mm is not None:
            self._cbufs = (ffi.from_buffer(mm), ffi.from_buffer(shadow))
            self.c.mm, self.c.shadow = self._cbufs
            self.c.size = self.size

    def _unmap(self) -> None:
        """Out of the C model's reach first, then the exports, then the mappings."""
        self.c.mm, self.c.shadow, self.c.size = ffi.NULL, ffi.NULL, 0
        for b in self._cbufs:
            ffi.release(b)
        self._cbufs = ()

    def resize(self, size: int) -> None:
        if size <= self.size or self.fd < 0:
            return
        old_mm, old_shadow = self.mm, self.shadow
        shadow = mmap.mmap(-1, size)
        if old_shadow is not None:
            shadow[: self.size] = old_shadow[: self.size]
        mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        self.size = size
        self._map(mm, shadow)
        if old_shadow is not None:
            old_shadow.close()
        del old_mm  # a pixel job still queued may hold a view of it

    def release(self) -> None:
        self.close_fd()
        self._unmap()
        # pixel jobs still queued hold exports of mm: dropping the reference is enough
        self.mm = None
        if self.shadow is not None:
            self.shadow.close()
            self.shadow = None


class Transfer(NamedTuple):
    """The spans of one commit: (offset, length) pairs in ``pool``, and their total."""

    pool: GuestPool
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
        self._pools: dict[int, GuestPool] = {}  # address of pool.c -> pool, for the spans of a commit
        self._pool_out = ffi.new("struct sf_pool **")

    def _pool_of(self, cpool) -> GuestPool | None:
        return self._pools.get(int(ffi.cast("uintptr_t", cpool)))

    def buffer_add(self, bid: int, pool: GuestPool, offset: int, width: int, height: int, stride: int,
                   fmt: int) -> None:
        self._pools[int(ffi.cast("uintptr_t", pool.c))] = pool
        if lib.sf_buffer_add(self.c, bid, pool.c, offset, width, height, stride, fmt & 0xFFFFFFFF,
                             BYTES_PER_PIXEL.get(fmt, 0)) < 0:  # 0: unknown, never sent
            raise MemoryError("surface model")

    def buffer_remove(self, bid: int) -> None:
        lib.sf_buffer_remove(self.c, bid)

    def pool_gone(self, pool: GuestPool) -> None:
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


class HostPool(_Pool):
    """The host's mirror of one guest pool: a memfd that weston maps too.
    ``c`` tells the C link scan where SHM_DATA for it goes (``channel``, ``key``)."""

    def __init__(self, key: int, size: int, name: str = "wlproxy-shm", channel: int = 0):
        self.key = key
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.c = ffi.new("struct fp_pool *")
        self.c.ch, self.c.key = channel, key
        self.mm = self.view = self._cmap = None
        try:
            os.ftruncate(self.fd, size)
            self._map(size)
        except OSError:
            os.close(self.fd)
            raise

    def _map(self, size: int) -> None:
        self.size = size
        if size:
            self.mm = mmap.mmap(self.fd, size)
            self.view = memoryview(self.mm)
            self._cmap = ffi.from_buffer(self.mm)
            self.c.base, self.c.size = self._cmap, size

    def _unmap(self) -> None:
        """Out of the C scan's reach first, then the exports, then the mapping."""
        self.c.base, self.c.size = ffi.NULL, 0
        if self._cmap is not None:
            ffi.release(self._cmap)
            self._cmap = None
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.mm is not None:
            self.mm.close()
            self.mm = None

    def resize(self, size: int) -> None:
        if size <= self.size:
            return
        os.ftruncate(self.fd, size)
        self._unmap()
        self._map(size)

    def region(self, offset: int, length: int) -> memoryview | None:
        if offset < 0 or length < 0 or offset + length > self.size or self.view is None:
            return None
        return self.view[offset:offset + length]

    def dup_fd(self) -> int:
        return os.dup(self.fd)

    def close(self) -> None:
        self.close_fd()
        self._unmap()
