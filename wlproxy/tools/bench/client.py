"""The benchmark client: one xdg_toplevel, wl_shm buffers, timed commits.

``python -m wlproxy.tools.bench.client`` talks to ``$WAYLAND_DISPLAY`` (through
whatever proxy the bench put in front of weston) and takes commands on stdin,
one per line, answering each with one JSON line on stdout:

* ``setup W H``: a fresh pool of three W x H XRGB8888 buffers, every buffer
  filled with content 0 (a fresh pool means no proxy state carries over from
  the previous variant).
* ``frame FRAC CONTENT N WARMUP``: WARMUP + N frames, each damaging the middle
  FRAC of the rows (``damage_buffer``), CONTENT ``changed`` (every damaged
  pixel differs from what that buffer and the previous frame held) or
  ``identical`` (the same pixels repainted).  Per frame: pick a released
  buffer and draw into it, attach, damage, ask for feedback (not timed; the
  requests wait in libwayland's buffer), then t0, ``commit`` +
  ``wl_display.sync`` + one flush of the frame's requests, t1 at the sync's ``done``, t2 from the ``wp_presentation`` feedback
  (the compositor's presentation timestamp).  The next frame starts once the
  feedback (presented or discarded) arrived.
* ``storm N WARMUP REQUESTS``: like ``frame 0.0625 changed`` on the current
  buffers, but REQUESTS ``wl_region.add`` requests (24 bytes each) are written
  to the socket in one go right after t0, before the commit.
* ``roundtrip N INTERVAL``: N ``wl_display.sync`` round trips, INTERVAL
  seconds apart.
* ``stream SECONDS``: full-damage changed frames paced by frame callbacks
  (like a video player) for SECONDS; answers frames, bytes and seconds.
* ``quit``.

Drawing uses pre-computed numpy contents, so the client's own cost is small
and outside the timed region either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import mmap
import os
import select
import struct
import sys
import time
from typing import Callable

import numpy as np

XRGB8888 = 1
NBUF = 3
NCONTENT = 3


def _percentiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    a = np.sort(np.asarray(xs))
    return {"median": float(np.median(a)), "p90": float(a[min(len(a) - 1, int(0.9 * len(a)))]),
            "p99": float(a[min(len(a) - 1, int(0.99 * len(a)))])}


class _WaylandLib:
    """The two libwayland-client calls pywayland does not expose."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("wayland-client") or "libwayland-client.so.0"
        lib = ctypes.CDLL(name)
        lib.wl_proxy_get_id.argtypes = [ctypes.c_void_p]
        lib.wl_proxy_get_id.restype = ctypes.c_uint32
        self.lib = lib

    def proxy_id(self, proxy) -> int:
        from pywayland import ffi

        return int(self.lib.wl_proxy_get_id(int(ffi.cast("uintptr_t", proxy._ptr))))


class BenchClient:
    def __init__(self) -> None:
        from pywayland.client import Display

        self.display = Display()
        self.display.connect()
        self.fd = self.display.get_fd()
        self.globals: dict[str, tuple[int, int]] = {}
        self.configured = False
        self.clock_id = time.CLOCK_MONOTONIC
        self.pool = None
        self.mm: mmap.mmap | None = None
        self.width = self.height = 0
        self._setup_surface()

    # -- setup -----------------------------------------------------------------
    def _setup_surface(self) -> None:
        from pywayland.protocol.presentation_time import WpPresentation
        from pywayland.protocol.wayland import WlCompositor, WlShm
        from pywayland.protocol.xdg_shell import XdgWmBase

        registry = self.display.get_registry()
        registry.dispatcher["global"] = lambda _r, name, iface, ver: self.globals.__setitem__(iface, (name, ver))
        self.display.roundtrip()
        for need in ("wl_compositor", "wl_shm", "xdg_wm_base"):
            if need not in self.globals:
                raise RuntimeError(f"the compositor lacks {need}")
        self.compositor = registry.bind(self.globals["wl_compositor"][0], WlCompositor,
                                        min(4, self.globals["wl_compositor"][1]))
        self.shm = registry.bind(self.globals["wl_shm"][0], WlShm, 1)
        self.wm = registry.bind(self.globals["xdg_wm_base"][0], XdgWmBase, 1)
        self.wm.dispatcher["ping"] = lambda wm, serial: wm.pong(serial)
        self.presentation = None
        if "wp_presentation" in self.globals:
            self.presentation = registry.bind(self.globals["wp_presentation"][0], WpPresentation, 1)
            self.presentation.dispatcher["clock_id"] = lambda _p, clk: setattr(self, "clock_id", clk)
        self.surface = self.compositor.create_surface()
        xs = self.wm.get_xdg_surface(self.surface)

        def configure(xdg, serial: int) -> None:
            xdg.ack_configure(serial)
            self.configured = True

        xs.dispatcher["configure"] = configure
        self.toplevel = xs.get_toplevel()
        self.toplevel.set_title("wlproxy bench")
        self.surface.commit()
        while not self.configured:
            self._dispatch_blocking()
        self.xdg_surface = xs
        self.region = self.compositor.create_region()
        self.display.roundtrip()
        self.region_id = _WaylandLib().proxy_id(self.region)

    def setup(self, width: int, height: int) -> dict:
        if self.pool is not None:
            self.surface.attach(None, 0, 0)
            self.surface.commit()
            for b in self.buffers:
                b.destroy()
            self.pool.destroy()
            self.display.roundtrip()
            self.views = []
            self.mm.close()
        self.width, self.height = width, height
        self.stride = width * 4
        size = self.stride * height
        rng = np.random.default_rng(12345)
        self.contents = [rng.integers(0, 1 << 32, size=(height, width), dtype=np.uint32) for _ in range(NCONTENT)]
        fd = os.memfd_create("wlproxy-bench", os.MFD_CLOEXEC)
        os.ftruncate(fd, NBUF * size)
        self.mm = mmap.mmap(fd, NBUF * size)
        self.pool = self.shm.create_pool(fd, NBUF * size)
        os.close(fd)
        self.buffers, self.views = [], []
        self.busy = [False] * NBUF
        self.holds = [0] * NBUF  # which content each buffer holds (in the damaged band)
        self.last = 0
        for i in range(NBUF):
            b = self.pool.create_buffer(i * size, width, height, self.stride, XRGB8888)
            b.dispatcher["release"] = lambda _b, i=i: self.busy.__setitem__(i, False)
            self.buffers.append(b)
            v = np.frombuffer(self.mm, dtype=np.uint32, count=width * height, offset=i * size).reshape(height, width)
            v[:] = self.contents[0]
            self.views.append(v)
        self.display.roundtrip()
        return {"ok": True}

    # -- event plumbing ----------------------------------------------------------
    def _dispatch_blocking(self) -> None:
        if self.display.dispatch(block=True) < 0:
            raise RuntimeError("Wayland connection failed")

    def _wait(self, cond) -> None:
        while not cond():
            self._dispatch_blocking()

    def _free_slot(self) -> int:
        self._wait(lambda: not all(self.busy))
        return self.busy.index(False)

    def _write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                select.select([], [self.fd], [])

    # -- one frame -----------------------------------------------------------------
    def _draw(self, frac: float, changed: bool) -> tuple[int, int, int]:
        rows = max(1, min(self.height, round(self.height * frac)))
        y0 = (self.height - rows) // 2
        slot = self._free_slot()
        if changed:  # differs from what this buffer holds and from the last frame shown
            k = next(c for c in range(NCONTENT) if c != self.holds[slot] and c != self.last)
        else:
            k = self.holds[slot]
        # identical content still repaints the same pixels, as a real client would
        np.copyto(self.views[slot][y0:y0 + rows], self.contents[k][y0:y0 + rows])
        self.holds[slot] = k
        self.last = k
        return slot, y0, rows

    def _frame(self, frac: float, changed: bool, raw: bytes = b"") -> tuple[float, float | None]:
        slot, y0, rows = self._draw(frac, changed)
        st = {"sync": False, "fb": None}
        self.surface.attach(self.buffers[slot], 0, 0)
        self.surface.damage_buffer(0, y0, self.width, rows)
        if self.presentation is not None:
            fb = self.presentation.feedback(self.surface)

            def presented(_f, sec_hi, sec_lo, nsec, *rest) -> None:
                st["fb"] = ((sec_hi << 32) | sec_lo) * 1_000_000_000 + nsec

            fb.dispatcher["presented"] = presented
            fb.dispatcher["discarded"] = lambda _f: st.__setitem__("fb", -1)
        self.busy[slot] = True
        # attach, damage and feedback wait in libwayland's buffer and leave
        # with the commit in one write, as in any real client's frame
        clk = self.clock_id
        t0 = time.clock_gettime_ns(clk)
        if raw:
            self._write_raw(raw)
        self.surface.commit()
        cb = self.display.sync()
        cb.dispatcher["done"] = lambda _cb, _d: st.__setitem__("sync", True)
        self.display.flush()
        self._wait(lambda: st["sync"])
        t1 = time.clock_gettime_ns(clk)
        if self.presentation is not None:
            self._wait(lambda: st["fb"] is not None)
        t2 = st["fb"]
        pres = (t2 - t0) / 1e9 if t2 is not None and t2 > 0 else None
        return (t1 - t0) / 1e9, pres

    def frames(self, frac: float, content: str, n: int, warmup: int, raw: bytes = b"") -> dict:
        changed = content == "changed"
        sync, pres = [], []
        for i in range(warmup + n):
            s, p = self._frame(frac, changed, raw)
            if i >= warmup:
                sync.append(s)
                pres.append(p)
        rows = max(1, min(self.height, round(self.height * frac)))
        return {"sync": sync, "presented": pres, "bytes_per_frame": rows * self.stride}

    def storm(self, n: int, warmup: int, requests: int) -> dict:
        one = struct.pack("=IIiiii", self.region_id, (24 << 16) | 1, 0, 0, 16, 16)  # wl_region.add
        out = self.frames(0.0625, "changed", n, warmup, raw=one * requests)
        out["request_bytes"] = len(one) * requests
        return out

    def roundtrip(self, n: int, interval: float) -> dict:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.display.roundtrip()
            out.append(time.perf_counter() - t0)
            if interval:
                time.sleep(interval)
        return {"sync": out}

    def stream(self, seconds: float) -> dict:
        """Full-damage changed frames, each after the previous frame callback."""
        st = {"done": True}
        frames = 0
        t_end = time.monotonic() + seconds
        t_start = time.monotonic()
        while time.monotonic() < t_end:
            self._wait(lambda: st["done"])
            slot, y0, rows = self._draw(1.0, True)
            self.surface.attach(self.buffers[slot], 0, 0)
            self.surface.damage_buffer(0, 0, self.width, self.height)
            st["done"] = False
            cb = self.surface.frame()
            cb.dispatcher["done"] = lambda _cb, _t: st.__setitem__("done", True)
            self.busy[slot] = True
            self.surface.commit()
            self.display.flush()
            frames += 1
        self._wait(lambda: st["done"])
        el = time.monotonic() - t_start
        return {"frames": frames, "seconds": el, "bytes": frames * self.stride * self.height}


def serve(target, presentation: bool, *, after: Callable[[dict], None] | None = None,
          stop_on_error: bool = True) -> int:
    """The stdin/stdout protocol of the module doc for ``target`` (a
    :class:`BenchClient` or the floor's sender): the ready line, then one JSON
    answer per command.  ``after`` may add to each answer before it is
    written; with ``stop_on_error`` a failed command other than ``setup``
    ends the loop (status 1)."""
    out = sys.stdout
    out.write(json.dumps({"ready": True, "presentation": presentation}) + "\n")
    out.flush()
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        cmd, a = parts[0], parts[1:]
        try:
            if cmd == "quit":
                break
            if cmd == "setup":
                res = target.setup(int(a[0]), int(a[1]))
            elif cmd == "frame":
                res = target.frames(float(a[0]), a[1], int(a[2]), int(a[3]))
            elif cmd == "storm":
                res = target.storm(int(a[0]), int(a[1]), int(a[2]))
            elif cmd == "roundtrip":
                res = target.roundtrip(int(a[0]), float(a[1]))
            elif cmd == "stream":
                res = target.stream(float(a[0]))
            else:
                res = {"error": f"unknown command {cmd!r}"}
        except Exception as e:  # noqa: BLE001
            res = {"error": f"{type(e).__name__}: {e}"}
        if after is not None:
            after(res)
        out.write(json.dumps(res) + "\n")
        out.flush()
        if stop_on_error and "error" in res and cmd != "setup":
            return 1
    return 0


def main() -> int:
    try:
        client = BenchClient()
    except Exception as e:  # noqa: BLE001
        sys.stdout.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        sys.stdout.flush()
        return 1
    return serve(client, client.presentation is not None)


if __name__ == "__main__":
    sys.exit(main())
