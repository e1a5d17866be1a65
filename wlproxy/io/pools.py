"""Pool memory at the edges: the guest half's mappings of a client's pool
(and the shadow of what the host has), and the host half's memfd mirrors
that weston maps.  What a pool's bytes mean is decided in
:mod:`wlproxy.core.shm`."""

from __future__ import annotations

import mmap
import os

from wlproxy._codec import ffi


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
