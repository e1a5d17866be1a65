"""Screenshots of weston's outputs through the ``weston_screenshooter`` protocol.

The client binds ``wl_shm``, every ``wl_output`` and ``weston_screenshooter``
(bindings generated at run time by :func:`wlproxy.tools.clients.load_protocol`),
creates one XRGB8888 ``wl_shm`` buffer per output of exactly the output's
current mode size (stride = 4 * width: weston 10 copies with the buffer's
stride but reads pixels packed, and answers ``done`` without copying when the
buffer is smaller than the mode), sends ``take_shot`` and waits for ``done``.
Weston copies at its next repaint, so the shot shows everything committed and
repainted before. Note that weston 10 (headless, pixman) shows a surface's whole
current buffer, not only its damaged part: pixels a client changed outside its
damage still appear, so damage bugs show up only as wrong buffer *content*
(e.g. a proxy copying just the damage into a stale buffer). Several outputs are pasted into one image at their
``wl_output.geometry`` positions.

Weston 10 grants the global only with ``--debug`` (see :mod:`wlproxy.tools.weston`):
without it the bind is a protocol error and :class:`ScreenshotError` says so.

CLI: ``python -m wlproxy.tools.clients.screenshot --out shot.png`` (uses
``$WAYLAND_DISPLAY`` and ``$XDG_RUNTIME_DIR`` unless ``--display`` /
``--runtime-dir`` are given).
"""

from __future__ import annotations

import argparse
import mmap
import os
import selectors
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

WL_SHM_FORMAT_XRGB8888 = 1


class ScreenshotError(RuntimeError):
    """The screenshot could not be taken."""


@dataclass
class Screenshot:
    """A screenshot: ``pixels`` is a ``(height, width)`` uint32 array of 0xXXRRGGBB.

    The top byte is whatever weston's renderer leaves there; compare colours with
    :attr:`rgb24` (alpha masked off) or :meth:`rgb`.
    """

    pixels: np.ndarray
    x: int = 0  # position of the top-left pixel in the compositor's global space
    y: int = 0

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rgb24(self) -> np.ndarray:
        """``pixels & 0x00FFFFFF``."""
        return self.pixels & np.uint32(0x00FFFFFF)

    def rgb(self) -> np.ndarray:
        """A ``(height, width, 3)`` uint8 array, R, G, B."""
        p = self.pixels
        return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=-1).astype(np.uint8)

    def crop(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``rgb24`` of a rect (output-local coordinates)."""
        return self.rgb24[y:y + h, x:x + w]

    def to_image(self) -> Any:
        """A Pillow RGB image."""
        from PIL import Image

        return Image.fromarray(self.rgb(), "RGB")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as PNG (or whatever Pillow infers from the suffix)."""
        self.to_image().save(os.fspath(path))

    def locate(self, expected: np.ndarray) -> tuple[int, int] | None:
        """See :func:`locate`."""
        return locate(self.pixels, expected)


def _rgb24(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.uint32) & np.uint32(0x00FFFFFF)


def locate_all(haystack: np.ndarray, needle: np.ndarray, limit: int = 16) -> list[tuple[int, int]]:
    """Every ``(x, y)`` where ``needle`` appears exactly in ``haystack`` (RGB only), up to ``limit``.

    Both are ``(h, w)`` uint32 0xXXRRGGBB arrays. Candidate offsets are narrowed
    with vectorised probes at a few needle pixels, then verified in full, so
    any pattern (even one matching the background at some points) is found
    in milliseconds.
    """
    hay, ndl = _rgb24(haystack), _rgb24(needle)
    H, W = hay.shape
    h, w = ndl.shape
    if h == 0 or w == 0 or h > H or w > W:
        return []
    ch, cw = H - h + 1, W - w + 1
    cand = np.ones((ch, cw), dtype=bool)
    rng = np.random.default_rng(12345)
    probes = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, w // 2)]
    probes += [(int(a), int(b)) for a, b in zip(rng.integers(0, h, 27), rng.integers(0, w, 27))]
    for dy, dx in probes:
        cand &= hay[dy:dy + ch, dx:dx + cw] == ndl[dy, dx]
        if not cand.any():
            return []
    found = []
    for y, x in np.argwhere(cand):
        if np.array_equal(hay[y:y + h, x:x + w], ndl):
            found.append((int(x), int(y)))
            if len(found) >= limit:
                break
    return found


def locate(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, int] | None:
    """Top-left ``(x, y)`` of the first exact (RGB) occurrence of ``needle``, or ``None``."""
    found = locate_all(haystack, needle, limit=1)
    return found[0] if found else None


@dataclass
class _Output:
    proxy: Any
    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0
    done: bool = False


def _connect_name(display: str | None, runtime_dir: str | None) -> str | None:
    if display and runtime_dir and not os.path.isabs(display):
        return os.path.join(runtime_dir, display)  # libwayland accepts absolute socket paths
    return display


def screenshot(display: str | None = None, runtime_dir: str | None = None, timeout: float = 10.0) -> Screenshot:
    """Screenshot all of weston's outputs (``display`` in ``runtime_dir``; default: the environment)."""
    from pywayland.client import Display
    from pywayland.protocol.wayland import WlOutput, WlShm

    shooter_mod = load_screenshooter()
    dpy = Display(_connect_name(display, runtime_dir))
    try:
        dpy.connect()
    except ValueError as e:
        raise ScreenshotError(f"cannot connect to Wayland display {display!r} in {runtime_dir!r}") from e
    try:
        return _shoot(dpy, shooter_mod, WlOutput, WlShm, timeout)
    finally:
        dpy.disconnect()


def load_screenshooter() -> Any:
    from wlproxy.tools.clients import load_protocol

    return load_protocol("weston-screenshooter")


def _roundtrip(dpy: Any, what: str) -> None:
    if dpy.roundtrip() < 0:
        raise ScreenshotError(
            f"Wayland connection failed during {what}; weston 10 refuses weston_screenshooter "
            "unless started with --debug (libwayland printed the protocol error on stderr)"
        )


def _wait(dpy: Any, cond: Any, deadline: float) -> None:
    """Dispatch events until ``cond()`` or the deadline, never blocking inside libwayland."""
    with selectors.DefaultSelector() as sel:
        sel.register(dpy.get_fd(), selectors.EVENT_READ)
        try:
            while not cond():
                dpy.flush()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScreenshotError("no weston_screenshooter.done in time")
                if sel.select(min(left, 0.5)):
                    dpy.read()
                dpy.dispatch(block=False)
        except RuntimeError as e:
            if isinstance(e, ScreenshotError):
                raise
            raise ScreenshotError(f"Wayland connection failed while waiting for the shot: {e}") from e


def _shoot(dpy: Any, shooter_mod: Any, WlOutput: Any, WlShm: Any, timeout: float) -> Screenshot:
    globals_: list[tuple[int, str, int]] = []
    registry = dpy.get_registry()
    registry.dispatcher["global"] = lambda _r, name, iface, ver: globals_.append((name, iface, ver))
    _roundtrip(dpy, "the registry round trip")
    by_iface: dict[str, list[int]] = {}
    for name, iface, _ver in globals_:
        by_iface.setdefault(iface, []).append(name)
    if "weston_screenshooter" not in by_iface:
        raise ScreenshotError("the compositor has no weston_screenshooter global (not weston?)")
    if "wl_output" not in by_iface:
        raise ScreenshotError("the compositor has no wl_output")
    shm = registry.bind(by_iface["wl_shm"][0], WlShm, 1)
    outputs = []
    for name in by_iface["wl_output"]:
        out = _Output(registry.bind(name, WlOutput, 1))

        def on_geometry(_p: Any, x: int, y: int, *_rest: Any, o: _Output = out) -> None:
            o.x, o.y = x, y

        def on_mode(_p: Any, flags: int, w: int, h: int, _refresh: int, o: _Output = out) -> None:
            if flags & 0x1:  # WL_OUTPUT_MODE_CURRENT
                o.width, o.height = w, h

        out.proxy.dispatcher["geometry"] = on_geometry
        out.proxy.dispatcher["mode"] = on_mode
        outputs.append(out)
    shooter = registry.bind(by_iface["weston_screenshooter"][0], shooter_mod.WestonScreenshooter, 1)
    _roundtrip(dpy, "binding weston_screenshooter")

    shots = []
    for out in outputs:
        if out.width <= 0 or out.height <= 0:
            raise ScreenshotError("an output sent no current mode")
        stride = out.width * 4
        size = stride * out.height
        fd = os.memfd_create("wlproxy-screenshot", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
            pool = shm.create_pool(fd, size)
        finally:
            os.close(fd)
        buf = pool.create_buffer(0, out.width, out.height, stride, WL_SHM_FORMAT_XRGB8888)
        pool.destroy()
        done = [False]
        shooter.dispatcher["done"] = lambda _s: done.__setitem__(0, True)
        shooter.take_shot(out.proxy, buf)
        deadline = time.monotonic() + timeout
        _wait(dpy, lambda: done[0], deadline)
        px = np.frombuffer(mm, dtype=np.uint32, count=out.width * out.height).reshape(out.height, out.width).copy()
        buf.destroy()
        mm.close()
        shots.append((out, px))

    if len(shots) == 1:
        out, px = shots[0]
        return Screenshot(px, out.x, out.y)
    x0 = min(o.x for o, _ in shots)
    y0 = min(o.y for o, _ in shots)
    x1 = max(o.x + o.width for o, _ in shots)
    y1 = max(o.y + o.height for o, _ in shots)
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.uint32)
    for o, px in shots:
        canvas[o.y - y0:o.y - y0 + o.height, o.x - x0:o.x - x0 + o.width] = px
    return Screenshot(canvas, x0, y0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wlproxy.tools.clients.screenshot",
                                description="Screenshot weston's outputs (weston_screenshooter).")
    p.add_argument("--out", "-o", required=True, help="output PNG file")
    p.add_argument("--display", default=None, help="Wayland display (default: $WAYLAND_DISPLAY)")
    p.add_argument("--runtime-dir", default=None, help="its directory (default: $XDG_RUNTIME_DIR)")
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    try:
        shot = screenshot(args.display, args.runtime_dir, args.timeout)
    except ScreenshotError as e:
        print(f"screenshot: {e}", file=sys.stderr)
        return 1
    shot.save(args.out)
    print(f"{args.out} {shot.width}x{shot.height}+{shot.x}+{shot.y}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
