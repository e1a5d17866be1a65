"""The guest half's surface model (``wlproxy/c/surface.c`` through ``Surfaces``),
driven directly: random frames of double-buffering clients, with the spans
each commit gives copied into a stand-in for the host's pool.  After every
commit the host's copy of the committed buffer must equal the client's."""

from __future__ import annotations

import mmap
import os
import random

import pytest

from wlproxy.core.codec import Codec
from wlproxy.core.shm import Surfaces
from wlproxy.io.pools import GuestPool

XRGB = 1
BPP = 4


class Client:
    """One surface, ``nbuf`` buffers in one pool, drawing a scene: each frame
    changes the scene inside its damage and brings the buffer it attaches up
    to date (its own damage since it was last shown, as a real client does)."""

    def __init__(self, rng: random.Random, w: int, h: int, nbuf: int, diff: bool = True, pad: int = 0):
        self.rng, self.w, self.h = rng, w, h
        self.stride = w * BPP + pad
        self.size = self.stride * h * nbuf + 100
        self.fd = os.memfd_create("surface-model")
        os.ftruncate(self.fd, self.size)
        self.mm = mmap.mmap(self.fd, self.size)
        self.pool = GuestPool(7, os.dup(self.fd), self.size)
        self.host = bytearray(self.size)  # what the host half's pool holds
        self.model = Surfaces(Codec().tables.proto, diff=diff)
        self.model.surface_add(3)
        self.scene = bytearray(os.urandom(self.stride * h))
        self.offsets = [10 + i * self.stride * h for i in range(nbuf)]  # not block-aligned on purpose
        for i, off in enumerate(self.offsets):
            self.model.buffer_add(100 + i, self.pool, off, w, h, self.stride, XRGB)
        self.owed = [[(0, 0, w, h)] for _ in self.offsets]  # damage each buffer has not drawn yet
        self.sent = 0

    def close(self) -> None:
        self.model.close()
        self.pool.release()
        self.mm.close()
        os.close(self.fd)

    def _paint_scene(self, rect: tuple[int, int, int, int], identical: bool, old: bytes | None) -> None:
        x, y, w, h = rect
        for row in range(y, y + h):
            a = row * self.stride + x * BPP
            if old is not None:  # back to what it was some frames ago (a blinking cursor, a cycle)
                self.scene[a:a + w * BPP] = old[a:a + w * BPP]
            elif not identical:
                self.scene[a:a + w * BPP] = os.urandom(w * BPP)

    def _draw(self, i: int, rect: tuple[int, int, int, int]) -> None:
        x, y, w, h = rect
        base = self.offsets[i]
        for row in range(y, y + h):
            a = row * self.stride + x * BPP
            self.mm[base + a:base + a + w * BPP] = self.scene[a:a + w * BPP]

    def frame(self, i: int, damage: list[tuple[int, int, int, int]], identical: bool = False,
              surface_coords: bool = False, old: bytes | None = None) -> int:
        for r in damage:
            self._paint_scene(r, identical, old)
        for o in range(len(self.owed)):
            self.owed[o] += damage
        for r in self.owed[i]:
            self._draw(i, r)
        self.owed[i] = []
        self.model.attach(3, 100 + i)
        for r in damage:
            self.model.damage(3, not surface_coords, *r)
        t = self.model.commit(3)
        n = 0
        if t is not None:
            assert t.pool is self.pool
            for off, k in t.spans:
                assert 0 <= off and off + k <= self.size
                self.host[off:off + k] = self.mm[off:off + k]
                n += k
        self.sent += n
        base = self.offsets[i]
        for row in range(self.h):  # the whole buffer, not only this damage
            a = base + row * self.stride
            assert self.host[a:a + self.w * BPP] == self.mm[a:a + self.w * BPP], f"buffer {i} row {row}"
        return n


def _rect(rng: random.Random, w: int, h: int) -> tuple[int, int, int, int]:
    x, y = rng.randrange(w), rng.randrange(h)
    return x, y, rng.randint(1, w - x), rng.randint(1, h - y)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("diff", [True, False])
def test_host_copy_equals_the_buffer_after_every_commit(seed: int, diff: bool) -> None:
    rng = random.Random(seed)
    c = Client(rng, 200, 160, nbuf=rng.choice([1, 2, 3, 10]), diff=diff, pad=rng.choice([0, 12]))  # 10: more than SF_HIST
    scenes = [bytes(c.scene)]
    try:
        for k in range(80):
            i = k % len(c.offsets)
            roll = rng.random()
            if roll < 0.3:  # full damage: large enough to go DIRECT when it keeps changing
                damage = [(0, 0, c.w, c.h)]
            else:
                damage = [_rect(rng, c.w, c.h) for _ in range(rng.randint(0, 40))]  # > 32: a bounding box
            old = rng.choice(scenes) if rng.random() < 0.3 else None
            c.frame(i, damage, identical=rng.random() < 0.3, surface_coords=rng.random() < 0.3, old=old)
            if k % 7 == 0:
                scenes.append(bytes(c.scene))
    finally:
        c.close()


def test_identical_repaint_sends_nothing_and_changing_content_goes_direct_and_back() -> None:
    c = Client(random.Random(1), 256, 256, nbuf=1)
    whole = 256 * 256 * BPP
    try:
        full = [(0, 0, 256, 256)]
        assert c.frame(0, full) == whole  # first commit: all of it, and all of it differed
        assert c.model.buffer_mode(100) == 1  # so the next ones go DIRECT
        assert c.frame(0, full, identical=True) == whole  # DIRECT: sent as it is ...
        assert c.model.buffer_mode(100) == 0  # ... but the sample saw repeats: diff again
        assert c.frame(0, full, identical=True) == whole  # after one resync of what DIRECT left stale
        assert c.frame(0, full, identical=True) == 0  # the same pixels again: nothing
        assert c.frame(0, [(10, 20, 30, 40)]) == 30 * BPP * 40  # a change: only it
        assert c.model.buffer_mode(100) == 0
        assert c.frame(0, full) == whole  # all of it changed ...
        assert c.model.buffer_mode(100) == 1  # ... so DIRECT again
    finally:
        c.close()


def test_hostile_values_neither_crash_nor_reach_outside_the_pool() -> None:
    rng = random.Random(5)
    c = Client(rng, 64, 64, nbuf=2)
    m = c.model
    try:
        extremes = [0, 1, -1, 2**31 - 1, -2**31, 63, 64, 65, 2**30]
        for _ in range(400):
            op = rng.randrange(8)
            sid = rng.choice([3, 4, 0, 2**32 - 1, 2**31])
            if op == 0:
                m.attach(sid, rng.choice([100, 101, 0, 5, 2**32 - 1]))
            elif op == 1:
                m.damage(sid, rng.random() < 0.5, *(rng.choice(extremes) for _ in range(4)))
            elif op == 2:
                m.set_scale(sid, rng.choice(extremes))
            elif op == 3:
                m.set_transform(sid, rng.choice(extremes))
            elif op == 4:  # a buffer that does not fit its pool, or has a silly stride
                m.buffer_add(rng.choice([102, 103]), c.pool, rng.choice(extremes), rng.choice(extremes),
                             rng.choice(extremes), rng.choice(extremes), rng.choice([XRGB, 0x12345678]))
            elif op == 5:
                m.buffer_remove(rng.choice([100, 101, 102, 103, 9]))
            elif op == 6:
                rng.choice([m.surface_add, m.surface_remove])(sid)
            t = m.commit(sid)
            if t is not None:
                assert all(0 <= off and off + k <= c.size for off, k in t.spans)
    finally:
        c.close()
    c.model.commit(3)  # closed: harmless


@pytest.mark.parametrize("diff", [True, False])
@pytest.mark.parametrize("h, pad", [(5000, 4), (9000, 1020)])
def test_tall_buffers_whose_rows_do_not_touch_arrive_whole(diff: bool, h: int, pad: int) -> None:
    """One span per row, more rows than the model keeps spans for: 5000 rows of
    a 1-pixel XRGB buffer with stride 8 (weston accepts it), and 9000 rows 1 KiB
    apart, more than the rows the model collects at once.  Every row arrives."""
    c = Client(random.Random(2), 1, h, nbuf=1, diff=diff, pad=pad)
    try:
        assert c.frame(0, [(0, 0, 1, h)]) >= h * BPP
        c.frame(0, [(0, 0, 1, h // 2)])
    finally:
        c.close()
