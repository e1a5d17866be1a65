"""A pywayland xdg_toplevel client drawing known pixel patterns into wl_shm buffers.

Run: ``python -m wlproxy.tools.clients.pattern --width 200 --height 100 --pattern noise
--frames 2 --step --update 10,10,50,40 --damage buffer``.

Frame 0 is :func:`pattern` over the whole window, fully damaged. Frame ``i >= 1``
is frame 0 with the ``--update`` rect replaced by ``--update-pattern`` (seed
``i``), and only that rect damaged (``damage_buffer``, surface ``damage``, or
``full``); :func:`frame_pixels` computes any frame so a test can compare
screenshots exactly. Two buffers in one memfd pool alternate (reused only after
``wl_buffer.release``); each buffer gets the complete frame, so undamaged
pixels are right whichever buffer the compositor keeps.

Stdout protocol, one line each, flushed:

* ``configure W H states=a,b`` for each xdg_toplevel.configure,
* ``frame I committed t_commit=S t_done=S`` once frame I was committed, its
  frame callback fired and a ``wl_display.sync`` round trip completed (so a
  screenshot taken now shows it),
* ``closed`` if the compositor sent xdg_toplevel.close.

With ``--step`` each frame after the first waits for a line on stdin. After the
last frame the window stays mapped until stdin reaches EOF, SIGTERM or SIGINT
(``--no-hold``: exit at once). Exit status 0 on a clean exit.
"""

from __future__ import annotations

import argparse
import mmap
import os
import selectors
import signal
import sys
import time
from typing import Callable

import numpy as np

Rect = tuple[int, int, int, int]  # x, y, width, height

PATTERNS = ("gradient", "noise", "checker", "bars", "solid")

WL_SHM_FORMAT_ARGB8888 = 0
WL_SHM_FORMAT_XRGB8888 = 1
FORMATS = {"xrgb8888": WL_SHM_FORMAT_XRGB8888, "argb8888": WL_SHM_FORMAT_ARGB8888}

_BAR_COLORS = np.array(
    [0xFFFFFFFF, 0xFFFFFF00, 0xFF00FFFF, 0xFF00FF00, 0xFFFF00FF, 0xFFFF0000, 0xFF0000FF, 0xFF101010],
    dtype=np.uint32,
)


def _hash32(v: np.ndarray) -> np.ndarray:
    """A fixed integer hash (lowbias32) on uint32 arrays."""
    v = v.astype(np.uint32, copy=True)
    v ^= v >> np.uint32(16)
    v *= np.uint32(0x7FEB352D)
    v ^= v >> np.uint32(15)
    v *= np.uint32(0x846CA68B)
    v ^= v >> np.uint32(16)
    return v


def pattern(name: str, width: int, height: int, seed: int = 0, rect: Rect | None = None) -> np.ndarray:
    """Pixels of pattern ``name`` for a ``width`` x ``height`` window, as 0xAARRGGBB.

    Returns a ``(height, width)`` uint32 array (or only ``rect`` of it), always
    opaque (alpha 0xff), so ARGB8888 and XRGB8888 show the same. In memory
    (little endian) a row is B,G,R,A bytes: exactly the wl_shm layout.

    * ``gradient``: red grows left to right, green top to bottom, blue by seed.
    * ``noise``: a per-pixel hash of (x, y, seed): practically unique per position.
    * ``checker``: 16 px squares in two seed-dependent colours.
    * ``bars``: 8 vertical colour bars, rotated by seed.
    * ``solid``: one seed-dependent colour.
    """
    x0, y0, w, h = rect if rect is not None else (0, 0, width, height)
    if w < 0 or h < 0 or x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(f"rect {rect} outside {width}x{height}")
    ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.uint32)
    if name == "gradient":
        r = (xs * 255 // max(width - 1, 1)) & 0xFF
        g = (ys * 255 // max(height - 1, 1)) & 0xFF
        b = np.full_like(xs, (64 + 48 * seed) & 0xFF)
        px = (r << 16) | (g << 8) | b
    elif name == "noise":
        ys ^= np.uint32((int(seed) * 0x85EBCA77) & 0xFFFFFFFF)
        px = _hash32(xs * np.uint32(0x9E3779B1) ^ _hash32(ys))
    elif name == "checker":
        c = _hash32(np.array([(2 * seed + 1) & 0xFFFFFFFF, (2 * seed + 2) & 0xFFFFFFFF], dtype=np.uint32))
        px = np.where(((xs // 16) + (ys // 16)) % 2 == 0, c[0], c[1])
    elif name == "bars":
        idx = (xs * 8 // max(width, 1) + np.uint32(seed % 8)) % 8
        px = _BAR_COLORS[idx]
    elif name == "solid":
        px = np.full_like(xs, _hash32(np.array([(seed + 7) & 0xFFFFFFFF], dtype=np.uint32))[0])
    else:
        raise ValueError(f"unknown pattern {name!r}: one of {PATTERNS}")
    return (px.astype(np.uint32) | np.uint32(0xFF000000)).astype(np.uint32)


def default_update_rect(width: int, height: int) -> Rect:
    """The centred quarter of the window (at least 1x1)."""
    w, h = max(1, width // 2), max(1, height // 2)
    return ((width - w) // 2, (height - h) // 2, w, h)


def frame_pixels(
    name: str,
    width: int,
    height: int,
    frame: int,
    update_rect: Rect | None = None,
    update_pattern: str = "checker",
) -> np.ndarray:
    """The whole window's pixels after frame ``frame`` (see module docstring)."""
    px = pattern(name, width, height, seed=0)
    if frame > 0:
        x, y, w, h = update_rect if update_rect is not None else default_update_rect(width, height)
        px[y:y + h, x:x + w] = pattern(update_pattern, width, height, seed=frame, rect=(x, y, w, h))
    return px


# -- the client ----------------------------------------------------------------


class _Stop(Exception):
    pass


_stop_requested = False  # set by the SIGTERM/SIGINT handler; loops raise _Stop


class PatternClient:
    """One xdg_toplevel with two wl_shm buffers; see the module docstring."""

    def __init__(self, args: argparse.Namespace, out: Callable[[str], None]) -> None:
        from pywayland.client import Display

        self.args = args
        self.out = out
        self.width, self.height = args.width, args.height
        self.stride = self.width * 4
        self.display = Display(args.display)
        self.display.connect()
        self.globals: dict[str, tuple[int, int]] = {}
        self.configured = False
        self.closed = False
        self.frame_done = False
        self.sync_done = False
        self.mm: mmap.mmap | None = None
        self.stdin_buf = b""
        self.stdin_eof = False
        self.wakeup_fd: int | None = None  # read end of the signal wakeup pipe

    # -- setup ----------------------------------------------------------------

    def setup(self) -> None:
        from pywayland.protocol.wayland import WlCompositor, WlShm
        from pywayland.protocol.xdg_shell import XdgWmBase

        registry = self.display.get_registry()
        registry.dispatcher["global"] = lambda _r, name, iface, ver: self.globals.__setitem__(iface, (name, ver))
        self._roundtrip()
        for iface in ("wl_compositor", "wl_shm", "xdg_wm_base"):
            if iface not in self.globals:
                raise RuntimeError(f"compositor lacks {iface}")
        name, ver = self.globals["wl_compositor"]
        self.compositor_version = min(ver, 4)
        if self.args.damage == "buffer" and self.compositor_version < 4:
            raise RuntimeError("damage_buffer needs wl_compositor version 4")
        self.compositor = registry.bind(name, WlCompositor, self.compositor_version)
        self.shm = registry.bind(self.globals["wl_shm"][0], WlShm, 1)
        name, ver = self.globals["xdg_wm_base"]
        self.wm_base = registry.bind(name, XdgWmBase, min(ver, 2))
        self.wm_base.dispatcher["ping"] = lambda wm, serial: wm.pong(serial)

        self.surface = self.compositor.create_surface()
        self.xdg_surface = self.wm_base.get_xdg_surface(self.surface)
        self.xdg_surface.dispatcher["configure"] = self._on_xdg_configure
        self.toplevel = self.xdg_surface.get_toplevel()
        self.toplevel.dispatcher["configure"] = self._on_toplevel_configure
        self.toplevel.dispatcher["close"] = self._on_close
        self.toplevel.set_title(self.args.title)
        self.toplevel.set_app_id(self.args.app_id)
        if self.args.fullscreen:
            self.toplevel.set_fullscreen(None)
        self.surface.commit()
        self._wait(lambda: self.configured, "the first xdg_surface.configure")
        self._make_buffers()

    def _make_buffers(self) -> None:
        size = self.stride * self.height
        fd = os.memfd_create("wlproxy-pattern", os.MFD_CLOEXEC)
        os.ftruncate(fd, 2 * size)
        self.mm = mmap.mmap(fd, 2 * size)
        pool = self.shm.create_pool(fd, 2 * size)
        os.close(fd)
        fmt = FORMATS[self.args.format]
        self.buffers = []
        self.busy = [False, False]
        self.views = []
        for i in range(2):
            buf = pool.create_buffer(i * size, self.width, self.height, self.stride, fmt)
            buf.dispatcher["release"] = lambda _b, i=i: self.busy.__setitem__(i, False)
            self.buffers.append(buf)
            self.views.append(np.frombuffer(self.mm, dtype=np.uint32, count=self.width * self.height,
                                            offset=i * size).reshape(self.height, self.width))
        pool.destroy()

    # -- events -------------------------------------------------------------------

    def _on_xdg_configure(self, xdg_surface, serial: int) -> None:  # type: ignore[no-untyped-def]
        xdg_surface.ack_configure(serial)
        self.configured = True

    def _on_toplevel_configure(self, _t, width: int, height: int, states) -> None:  # type: ignore[no-untyped-def]
        raw = bytes(states)
        codes = np.frombuffer(raw[: len(raw) // 4 * 4], dtype=np.uint32).tolist()
        names = {1: "maximized", 2: "fullscreen", 3: "resizing", 4: "activated",
                 5: "tiled_left", 6: "tiled_right", 7: "tiled_top", 8: "tiled_bottom"}
        self.out(f"configure {width} {height} states={','.join(names.get(c, str(c)) for c in codes)}")

    def _on_close(self, _t) -> None:  # type: ignore[no-untyped-def]
        self.closed = True
        self.out("closed")

    # -- event loop -----------------------------------------------------------

    def _roundtrip(self) -> None:
        if self.display.roundtrip() < 0:
            raise RuntimeError("Wayland connection failed (protocol error? see stderr)")

    def _pump(self, timeout: float, stdin: bool = False) -> bool:
        """Dispatch Wayland events for up to ``timeout`` s. With ``stdin``, also read
        stdin into the line buffer; returns True once stdin has data or EOF."""
        self.display.dispatch(block=False)
        self.display.flush()
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.display.get_fd(), selectors.EVENT_READ, "wl")
            if stdin and not self.stdin_eof:
                sel.register(0, selectors.EVENT_READ, "stdin")
            if self.wakeup_fd is not None:
                sel.register(self.wakeup_fd, selectors.EVENT_READ, "signal")
            got = False
            for key, _ in sel.select(timeout):
                if key.data == "signal":
                    try:
                        os.read(self.wakeup_fd, 512)  # type: ignore[arg-type]
                    except BlockingIOError:
                        pass
                elif key.data == "wl":
                    self.display.read()
                    self.display.dispatch(block=False)
                else:
                    chunk = os.read(0, 4096)
                    self.stdin_buf += chunk
                    self.stdin_eof = not chunk
                    got = True
            if _stop_requested:
                raise _Stop
            return got
        finally:
            sel.close()

    def _wait(self, cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.closed or _stop_requested:
                raise _Stop
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {what}")
            self._pump(min(left, 0.5))

    # -- drawing ------------------------------------------------------------------

    def draw(self, index: int) -> None:
        a = self.args
        self._wait(lambda: not all(self.busy), "a wl_buffer.release")
        slot = self.busy.index(False)
        self.views[slot][:] = frame_pixels(a.pattern, self.width, self.height, index, a.update, a.update_pattern)
        self.busy[slot] = True
        self.surface.attach(self.buffers[slot], 0, 0)
        if index == 0 or a.damage == "full":
            x, y, w, h = 0, 0, self.width, self.height
        else:
            x, y, w, h = a.update or default_update_rect(self.width, self.height)
        if a.damage == "surface" or self.compositor_version < 4:
            self.surface.damage(x, y, w, h)  # buffer scale 1, no transform: same coordinates
        else:
            self.surface.damage_buffer(x, y, w, h)
        self.frame_done = False
        cb = self.surface.frame()
        cb.dispatcher["done"] = lambda _cb, _t: setattr(self, "frame_done", True)
        self.surface.commit()
        t_commit = time.monotonic()
        self._wait(lambda: self.frame_done, f"the frame callback of frame {index}")
        t_done = time.monotonic()
        self._roundtrip()
        self.out(f"frame {index} committed t_commit={t_commit:.6f} t_done={t_done:.6f}")

    def run(self) -> int:
        a = self.args
        self.setup()
        for i in range(a.frames):
            if i > 0 and a.step:
                line = self._read_stdin_line()
                if line == "":
                    return 0
            self.draw(i)
        if a.hold:
            while self._read_stdin_line() != "":
                pass
        return 0

    def _read_stdin_line(self) -> str:
        """The next stdin line (without newline handling), or '' at EOF."""
        while True:
            if b"\n" in self.stdin_buf:
                line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
                return line.decode(errors="replace") + "\n"
            if self.stdin_eof:
                rest, self.stdin_buf = self.stdin_buf, b""
                return rest.decode(errors="replace")
            if self.closed or _stop_requested:
                raise _Stop
            self._pump(1.0, stdin=True)

    def close(self) -> None:
        try:
            self.display.disconnect()
        finally:
            if self.mm is not None:
                self.views = []
                try:
                    self.mm.close()
                except BufferError:
                    pass


def _rect(s: str) -> Rect:
    parts = [int(p) for p in s.replace("x", ",").split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("rect is X,Y,W,H")
    return (parts[0], parts[1], parts[2], parts[3])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wlproxy.tools.clients.pattern", description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--pattern", choices=PATTERNS, default="gradient")
    p.add_argument("--format", choices=sorted(FORMATS), default="xrgb8888")
    p.add_argument("--frames", type=int, default=1, help="frames to commit (default 1)")
    p.add_argument("--step", action="store_true", help="read a stdin line before each frame after the first")
    p.add_argument("--update", type=_rect, default=None, metavar="X,Y,W,H",
                   help="rect changed (and damaged) by frames after the first (default: centred quarter)")
    p.add_argument("--update-pattern", choices=PATTERNS, default="checker")
    p.add_argument("--damage", choices=("buffer", "surface", "full"), default="buffer",
                   help="damage_buffer, surface damage, or whole-surface damage for updates")
    p.add_argument("--fullscreen", action="store_true",
                   help="ask for fullscreen, keeping our size: weston centres the window on black")
    p.add_argument("--title", default="wlproxy pattern")
    p.add_argument("--app-id", default="wlproxy.pattern")
    p.add_argument("--display", default=None, help="Wayland display (default: $WAYLAND_DISPLAY)")
    p.add_argument("--no-hold", dest="hold", action="store_false",
                   help="exit after the last frame instead of waiting for stdin EOF or a signal")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.width < 1 or args.height < 1:
        print("--frames, --width and --height must be at least 1", file=sys.stderr)
        return 2
    if args.update is not None:
        x, y, w, h = args.update
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > args.width or y + h > args.height:
            print(f"--update {args.update} is not inside the window", file=sys.stderr)
            return 2

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    # The handler only sets a flag (an exception raised inside a libwayland callback
    # would be lost); the wakeup pipe makes the event loop's select() return at once.
    def on_signal(_sig: int, _frame: object) -> None:
        global _stop_requested
        _stop_requested = True

    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    client = None
    try:
        client = PatternClient(args, out)
        client.wakeup_fd = rfd
        return client.run()
    except _Stop:
        return 0
    except (RuntimeError, ValueError) as e:
        print(f"pattern client: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
