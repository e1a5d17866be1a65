"""Mirroring wl_shm pools across the link.

Guest side: the client's pool fd is mapped read-only; a shadow copy holds
exactly what the host has.  On commit the region that may differ from the
host (this commit's damage, plus damage the surface took while this buffer
was not attached, or the whole buffer the first time) becomes byte spans,
diffed against the shadow in C so only changed bytes cross the link.  A
buffer whose content changes wholesale skips the diff (no extra pass over
memory) and compares only a 1/64 sample to find out when diffing pays again
(see :class:`Differ`).

Host side: a memfd per pool, created for weston, written from SHM_DATA.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from wlproxy._codec import ffi, lib

FULL = None  # a region covering the whole buffer
Rects = list[tuple[int, int, int, int]]  # x, y, w, h in buffer pixels
MAX_RECTS = 32


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


def union(a: Rects | None, b: Rects | None) -> Rects | None:
    if a is FULL or b is FULL:
        return FULL
    out = a + b
    if len(out) > MAX_RECTS:  # collapse to the bounding box
        x0 = min(r[0] for r in out)
        y0 = min(r[1] for r in out)
        x1 = max(r[0] + r[2] for r in out)
        y1 = max(r[1] + r[3] for r in out)
        out = [(x0, y0, x1 - x0, y1 - y0)]
    return out


class _Pool:
    fd: int

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GuestPool(_Pool):
    """A client's pool as the guest half sees it."""

    def __init__(self, key: int, fd: int, size: int):
        self.key = key
        self.fd = fd
        self.size = size
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else None
        self.shadow = mmap.mmap(-1, max(size, 1))
        self.refs = 1  # the wl_shm_pool object, plus one per buffer

    def resize(self, size: int) -> None:
        if size <= self.size or self.fd < 0:
            return
        old_shadow = self.shadow
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        self.shadow = mmap.mmap(-1, size)
        self.shadow[: self.size] = old_shadow[: self.size]
        old_shadow.close()
        self.size = size

    def release(self) -> None:
        self.close_fd()
        self.mm = None
        self.shadow.close()


DIFF, DIRECT = 0, 1


@dataclass
class GuestBuffer:
    pool: GuestPool
    offset: int
    width: int
    height: int
    stride: int
    format: int
    mode: int = DIFF
    stale: Rects | None = field(default_factory=list)  # shadow out of date here (after DIRECT frames)

    def bounds_ok(self) -> bool:
        bpp = BYTES_PER_PIXEL.get(self.format, 1)
        return (self.width > 0 and self.height > 0 and self.offset >= 0 and self.stride >= self.width * bpp
                and self.offset + self.stride * (self.height - 1) + self.width * bpp <= self.pool.size)


class Transfer:
    """The spans of one commit: (offset, length) pairs in the pool, plus stats."""

    __slots__ = ("pool", "spans", "changed", "examined", "total")

    def __init__(self, pool: GuestPool, spans: list[tuple[int, int]], changed: int, examined: int):
        self.pool = pool
        self.spans = spans
        self.changed = changed
        self.examined = examined
        self.total = sum(n for _, n in spans)


ROWS_CAP = 8192
RECTS_CAP = 256


class Differ:
    """Turns a buffer and a damage region into the spans to send: two C calls
    per commit (damage rects to row spans; then diff, direct or resync, with
    a large diff or resync split over two cores).

    Adaptive per buffer.  DIFF: send only what differs from the shadow copy
    of what the host has (costs a compare pass; pays when content repeats).
    When most of a large damage changed, the buffer goes DIRECT: damage is
    sent as it is, with no pass of its own over memory except a 1/64 sample
    compared with the shadow; when the sample says most of it repeats, the
    buffer goes back to DIFF, after one RESYNC commit that sends and copies
    into the shadow everything the DIRECT commits left stale."""

    def __init__(self, cap: int = 4096, merge_gap: int = 256, wholesale: float = 0.7, back: float = 0.5,
                 min_direct: int = 1 << 16):
        self.cap = cap
        self.merge_gap = merge_gap
        self.wholesale = wholesale  # DIFF -> DIRECT above this changed fraction
        self.back = back            # DIRECT -> DIFF below this sampled changed fraction
        self.min_direct = min_direct  # smaller damage is always diffed
        self._rows = ffi.new("struct shm_span[]", ROWS_CAP + 1)
        self._out = ffi.new("struct shm_span[]", cap)
        self._scratch = ffi.new("struct shm_span[]", cap)  # the second core's spans (large DIFF/RESYNC)
        self._rects = ffi.new("int32_t[]", 4 * RECTS_CAP)
        self._stats = ffi.new("uint64_t[3]")
        self.enabled = True

    def _collect(self, buf: GuestBuffer, region: Rects | None) -> tuple[int, Rects | None]:
        """Row spans of ``region`` into ``self._rows``: (count, the region they cover)."""
        bpp = BYTES_PER_PIXEL.get(buf.format)
        if bpp is None:  # unknown layout: whole rows of the whole buffer
            self._rects[0:4] = [0, 0, buf.stride, buf.height]
            n = lib.shm_collect_rows(buf.offset, buf.stride, 1, buf.stride, buf.height, self._rects, 1,
                                     self._rows, ROWS_CAP)
            return n, FULL
        if region is FULL or len(region) > RECTS_CAP:
            region = FULL
            flat = [0, 0, buf.width, buf.height]
        else:
            flat = [v for r in region for v in r]
        self._rects[0:len(flat)] = flat
        n = lib.shm_collect_rows(buf.offset, buf.stride, bpp, buf.width, buf.height, self._rects,
                                 len(flat) // 4, self._rows, ROWS_CAP)
        if n > ROWS_CAP:  # too fragmented: whole rows of the bounding box
            y0 = min(r[1] for r in region) if region else 0
            y1 = max(r[1] + r[3] for r in region) if region else buf.height
            region = [(0, y0, buf.width, y1 - y0)]
            self._rects[0:4] = [0, y0, buf.width, y1 - y0]
            n = lib.shm_collect_rows(buf.offset, buf.stride, bpp, buf.width, buf.height, self._rects, 1,
                                     self._rows, ROWS_CAP)
        return n, region

    def transfer(self, buf: GuestBuffer, region: Rects | None) -> Transfer:
        pool = buf.pool
        if pool.mm is None or not buf.bounds_ok():
            return Transfer(pool, [], 0, 0)
        if not self.enabled:
            n, _ = self._collect(buf, region)
            rows = self._rows
            spans = [(rows[i].offset, rows[i].len) for i in range(n)]
            t = Transfer(pool, spans, 0, 0)
            t.changed = t.examined = t.total
            return t
        if buf.mode == DIRECT:
            mode = lib.SHM_DIRECT
        elif buf.stale:
            mode = lib.SHM_RESYNC
            region = union(region, buf.stale)
        else:
            mode = lib.SHM_DIFF
        n, covered = self._collect(buf, region)
        st = self._stats
        k = lib.shm_commit_par(ffi.from_buffer(pool.mm), ffi.from_buffer(pool.shadow), self._rows, n, mode,
                               self.merge_gap, self._out, self.cap, self._scratch, st)
        examined, changed, sampled = st[0], st[1], st[2]
        if mode == lib.SHM_DIFF:
            if examined >= self.min_direct and changed > self.wholesale * examined:
                buf.mode = DIRECT
        elif mode == lib.SHM_RESYNC:
            buf.stale = []
        else:
            buf.stale = union(buf.stale, covered if covered is not FULL else [(0, 0, buf.width, buf.height)])
            if sampled >= 2048 and changed < self.back * sampled:
                buf.mode = DIFF  # the next commit resyncs, then diffs
        out = self._out
        spans = [(out[i].offset, out[i].len) for i in range(k)] if k > 1 else ([(out[0].offset, out[0].len)] if k else [])
        return Transfer(pool, spans, changed if mode != lib.SHM_DIRECT else examined, examined)


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
