"""Mirroring wl_shm pools across the link.

Guest side: the client's pool fd is mapped read-only; a shadow copy holds
exactly what the host has.  On commit the region that may differ from the
host (this commit's damage, plus damage the surface took while this buffer
was not attached, or the whole buffer the first time) becomes byte spans,
diffed against the shadow in C so only changed bytes cross the link.  A
buffer whose content changes wholesale skips the diff (no extra pass over
memory) and is re-synchronised now and then to find out whether diffing pays
again.

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


class GuestPool:
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

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

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
    frames_in_mode: int = 0
    stale: Rects | None = field(default_factory=list)  # shadow out of date here (DIRECT mode)

    def bounds_ok(self) -> bool:
        bpp = BYTES_PER_PIXEL.get(self.format, 1)
        return (self.width > 0 and self.height > 0 and self.offset >= 0 and self.stride >= self.width * bpp
                and self.offset + self.stride * (self.height - 1) + self.width * bpp <= self.pool.size)


class Transfer:
    """The spans of one commit: (offset, length) pairs in the pool, plus stats."""

    __slots__ = ("pool", "spans", "changed", "examined")

    def __init__(self, pool: GuestPool, spans: list[tuple[int, int]], changed: int, examined: int):
        self.pool = pool
        self.spans = spans
        self.changed = changed
        self.examined = examined


class Differ:
    """Turns a buffer and a damage region into the spans to send (C does the work)."""

    def __init__(self, cap: int = 4096, merge_gap: int = 256, wholesale: float = 0.7, probe_every: int = 16):
        self.cap = cap
        self.merge_gap = merge_gap
        self.wholesale = wholesale
        self.probe_every = probe_every
        self._rows = ffi.new("struct shm_span[]", cap + 1)
        self._out = ffi.new("struct shm_span[]", cap)
        self._done = ffi.new("uint32_t *")
        self._changed = ffi.new("uint64_t *")
        self.enabled = True

    def _spans_of(self, buf: GuestBuffer, region: Rects | None) -> tuple[object, int] | None:
        bpp = BYTES_PER_PIXEL.get(buf.format)
        if bpp is None or region is FULL:
            if bpp is None:  # unknown layout: whole rows
                n = lib.shm_collect_rows(buf.offset, buf.stride, 1, buf.stride, buf.height,
                                         ffi.new("int32_t[]", [0, 0, buf.stride, buf.height]), 1, self._rows, self.cap)
                return self._rows, n
            rects = [0, 0, buf.width, buf.height]
        else:
            rects = [v for r in region for v in r]
        crects = ffi.new("int32_t[]", rects)
        n = lib.shm_collect_rows(buf.offset, buf.stride, bpp, buf.width, buf.height, crects,
                                 len(rects) // 4, self._rows, self.cap)
        if n > self.cap:  # too fragmented: whole rows of the bounding box
            ys = [r[1] for r in region] if region else [0]
            ye = [r[1] + r[3] for r in region] if region else [buf.height]
            box = ffi.new("int32_t[]", [0, min(ys), buf.width, max(ye) - min(ys)])
            n = lib.shm_collect_rows(buf.offset, buf.stride, bpp, buf.width, buf.height, box, 1, self._rows, self.cap)
        return self._rows, n

    def transfer(self, buf: GuestBuffer, region: Rects | None) -> Transfer:
        pool = buf.pool
        if pool.mm is None or not buf.bounds_ok():
            return Transfer(pool, [], 0, 0)
        res = self._spans_of(buf, region)
        rows, n = res  # type: ignore[misc]
        examined = sum(rows[i].len for i in range(n))
        src = ffi.from_buffer(pool.mm)
        shadow = ffi.from_buffer(pool.shadow)
        buf.frames_in_mode += 1
        if buf.mode == DIRECT or not self.enabled:
            if self.enabled and buf.frames_in_mode >= self.probe_every:
                # re-sync the shadow (one extra pass, now and then) and diff again next time
                if buf.stale:
                    res2 = self._spans_of(buf, union(region, buf.stale))
                    rows, n = res2  # type: ignore[misc]
                lib.shm_copy_spans(src, shadow, rows, n)
                buf.stale = []
                buf.mode, buf.frames_in_mode = DIFF, 0
            elif self.enabled:
                buf.stale = union(buf.stale, region if region is not FULL else [(0, 0, buf.width, buf.height)])
            spans = [(rows[i].offset, rows[i].len) for i in range(n)]
            return Transfer(pool, spans, examined, examined)
        spans: list[tuple[int, int]] = []
        changed = 0
        done = 0
        while done < n:
            k = lib.shm_diff(src, shadow, rows + done, n - done, self._out, self.cap, self.merge_gap,
                             self._done, self._changed)
            spans.extend((self._out[i].offset, self._out[i].len) for i in range(k))
            changed += self._changed[0]
            done += self._done[0]
        if examined and changed > self.wholesale * examined and examined >= 1 << 16:
            buf.mode, buf.frames_in_mode = DIRECT, 0
        return Transfer(pool, spans, changed, examined)


class HostPool:
    """The host's mirror of one guest pool: a memfd that weston maps too."""

    def __init__(self, key: int, size: int, name: str = "wlproxy-shm"):
        self.key = key
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size) if size else None
        except OSError:
            os.close(self.fd)
            raise
        self.size = size
        self.view = memoryview(self.mm) if self.mm is not None else None

    def resize(self, size: int) -> None:
        if size <= self.size:
            return
        os.ftruncate(self.fd, size)
        if self.view is not None:
            self.view.release()
        if self.mm is not None:
            self.mm.close()
        self.mm = mmap.mmap(self.fd, size)
        self.view = memoryview(self.mm)
        self.size = size

    def region(self, offset: int, length: int) -> memoryview | None:
        if offset < 0 or length < 0 or offset + length > self.size or self.view is None:
            return None
        return self.view[offset:offset + length]

    def dup_fd(self) -> int:
        return os.dup(self.fd)

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self.close_fd()
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.mm is not None:
            self.mm.close()
            self.mm = None
