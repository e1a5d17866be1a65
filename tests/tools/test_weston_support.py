"""The test support itself, against a real headless weston (no proxy).

Pixel checks compare screenshots exactly (RGB of every pixel of the window and,
where the scene is known, of the whole output).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pywayland")

from wlproxy.tools.clients import load_protocol  # noqa: E402
from wlproxy.tools.clients.pattern import PATTERNS, default_update_rect, frame_pixels, pattern  # noqa: E402
from wlproxy.tools.clients.screenshot import ScreenshotError, locate, locate_all, screenshot  # noqa: E402
from wlproxy.tools.weston import Weston  # noqa: E402

PATTERN = "wlproxy.tools.clients.pattern"


def _rgb(a: np.ndarray) -> np.ndarray:
    return a & np.uint32(0xFFFFFF)


def _find_window(weston: Weston, expected: np.ndarray) -> tuple[int, int, np.ndarray]:
    """Screenshot and find exactly one exact copy of ``expected``; returns x, y, shot pixels."""
    shot = screenshot(weston.display, weston.runtime_dir)
    assert (shot.width, shot.height) == (weston.width, weston.height)
    found = locate_all(shot.pixels, expected)
    assert len(found) == 1, f"expected window found at {found}"
    x, y = found[0]
    return x, y, shot.pixels


# -- pure functions --------------------------------------------------------------


@pytest.mark.parametrize("name", PATTERNS)
def test_pattern_deterministic_opaque_and_croppable(name: str) -> None:
    a = pattern(name, 37, 23, seed=3)
    assert a.shape == (23, 37) and a.dtype == np.uint32
    assert np.array_equal(a, pattern(name, 37, 23, seed=3))
    assert np.all(a >> 24 == 0xFF)
    assert np.array_equal(pattern(name, 37, 23, seed=3, rect=(5, 7, 11, 13)), a[7:20, 5:16])


def test_noise_is_position_unique_and_seeded() -> None:
    a = pattern("noise", 200, 100)
    assert len(np.unique(_rgb(a))) > 0.99 * a.size
    assert not np.array_equal(a, pattern("noise", 200, 100, seed=1))


def test_frame_pixels_change_only_the_update_rect() -> None:
    f0 = frame_pixels("gradient", 64, 48, 0)
    f1 = frame_pixels("gradient", 64, 48, 1, update_rect=(3, 4, 10, 5))
    diff = np.argwhere(f0 != f1)
    assert diff.size and diff[:, 0].min() >= 4 and diff[:, 0].max() < 9
    assert diff[:, 1].min() >= 3 and diff[:, 1].max() < 13
    assert default_update_rect(64, 48) == (16, 12, 32, 24)


def test_locate() -> None:
    hay = np.full((50, 80), 0xFF000000, dtype=np.uint32)
    ndl = pattern("gradient", 10, 6)  # its (0, 0) pixel is close to the background
    hay[7:13, 30:40] = ndl
    hay[40:46, 3:13] = ndl
    assert locate_all(hay, ndl) == [(30, 7), (3, 40)]
    hay[40, 3] ^= 1
    assert locate(hay, ndl) == (30, 7)
    assert locate(hay, pattern("noise", 10, 6)) is None
    assert locate(hay, pattern("noise", 100, 6)) is None


def test_load_protocol_is_cached() -> None:
    mod = load_protocol("weston-screenshooter")
    assert load_protocol("weston-screenshooter") is mod
    from pywayland.protocol.wayland import WlOutput

    assert mod.WestonScreenshooter.name == "weston_screenshooter"
    assert mod.WlOutput is WlOutput  # shares pywayland's core classes


# -- weston itself -----------------------------------------------------------------


def test_weston_private_runtime_dir_and_clean_stop(weston_factory) -> None:  # type: ignore[no-untyped-def]
    w = weston_factory(width=320, height=200)
    assert stat.S_IMODE(os.stat(w.runtime_dir).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(w.socket_path).st_mode)
    env = w.env()
    assert env["XDG_RUNTIME_DIR"] == w.runtime_dir and env["WAYLAND_DISPLAY"] == w.display
    assert "WAYLAND_SOCKET" not in env
    assert "--debug" in w.command() and "--use-pixman" in w.command()
    assert "Command line: weston" in w.log_text()
    proc, runtime_dir = w.proc, w.runtime_dir
    assert w.stop() == 0
    assert proc is not None and proc.poll() is not None
    assert not os.path.exists(runtime_dir)
    assert w.stop() is None  # idempotent


def test_wayland_info_runs_against_fixture(weston: Weston, run_client) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("wayland-info") is None:
        pytest.skip("wayland-info not installed (Debian: wayland-utils)")
    r = run_client(["wayland-info"], env=weston.env())
    assert r.returncode == 0, r.stderr
    for iface in ("wl_compositor", "wl_shm", "xdg_wm_base", "wl_output", "weston_screenshooter"):
        assert f"'{iface}'" in r.stdout
    assert f"width: {weston.width} px, height: {weston.height} px" in r.stdout


def test_empty_desktop_is_background(weston: Weston) -> None:
    shot = screenshot(weston.display, weston.runtime_dir)
    assert np.all(shot.rgb24 == weston.background_color & 0xFFFFFF)


def test_screenshot_needs_debug(weston_factory) -> None:  # type: ignore[no-untyped-def]
    w = weston_factory(width=64, height=64, debug=False)
    with pytest.raises(ScreenshotError, match="--debug"):
        screenshot(w.display, w.runtime_dir)


# -- the pattern client, seen through screenshots ---------------------------------------


@pytest.mark.parametrize("name,fmt", [("noise", "xrgb8888"), ("gradient", "argb8888"), ("bars", "xrgb8888")])
def test_pattern_window_exact_pixels(weston: Weston, spawn_client, name: str, fmt: str) -> None:  # type: ignore[no-untyped-def]
    w, h = 160, 96
    c = spawn_client(PATTERN, "--width", str(w), "--height", str(h), "--pattern", name,
                     "--format", fmt, env=weston.env())
    c.wait_line("frame 0 ")
    x, y, px = _find_window(weston, frame_pixels(name, w, h, 0))
    assert np.array_equal(_rgb(px[y:y + h, x:x + w]), _rgb(frame_pixels(name, w, h, 0)))
    outside = np.ones(px.shape, dtype=bool)
    outside[y:y + h, x:x + w] = False
    assert np.all(_rgb(px[outside]) == weston.background_color & 0xFFFFFF)
    assert c.stop() == 0


def test_fullscreen_window_is_centred_on_black(weston: Weston, spawn_client) -> None:  # type: ignore[no-untyped-def]
    w, h = 101, 61
    c = spawn_client(PATTERN, "--width", str(w), "--height", str(h), "--pattern", "noise",
                     "--fullscreen", env=weston.env())
    assert c.wait_line("configure ").split()[1:3] == [str(weston.width), str(weston.height)]
    c.wait_line("frame 0 ")
    expected = np.zeros((weston.height, weston.width), dtype=np.uint32)
    x, y = (weston.width - w) // 2, (weston.height - h) // 2
    expected[y:y + h, x:x + w] = frame_pixels("noise", w, h, 0)
    shot = screenshot(weston.display, weston.runtime_dir)
    assert np.array_equal(shot.rgb24, _rgb(expected))


@pytest.mark.parametrize("damage", ["buffer", "surface"])
def test_partial_damage_update(weston: Weston, spawn_client, damage: str) -> None:  # type: ignore[no-untyped-def]
    w, h, rect = 150, 100, (20, 30, 50, 40)
    c = spawn_client(PATTERN, "--width", str(w), "--height", str(h), "--pattern", "noise",
                     "--frames", "3", "--step", "--update", "20,30,50,40", "--damage", damage,
                     env=weston.env())
    c.wait_line("frame 0 ")
    f0 = frame_pixels("noise", w, h, 0)
    x, y, _ = _find_window(weston, f0)
    rx, ry, rw, rh = rect
    for i in (1, 2):
        c.send("next")
        c.wait_line(f"frame {i} ")
        shot = _rgb(screenshot(weston.display, weston.runtime_dir).pixels)
        win = shot[y:y + h, x:x + w]
        fi = _rgb(frame_pixels("noise", w, h, i, update_rect=rect))
        assert np.array_equal(win, fi), f"frame {i}: {np.count_nonzero(win != fi)} pixels differ"
        # new pixels in the rect, the rest of the window untouched
        assert np.array_equal(win[ry:ry + rh, rx:rx + rw], _rgb(pattern("checker", w, h, seed=i, rect=rect)))
        mask = np.ones((h, w), dtype=bool)
        mask[ry:ry + rh, rx:rx + rw] = False
        assert np.array_equal(win[mask], _rgb(f0)[mask])
        assert not np.array_equal(win[ry:ry + rh, rx:rx + rw], _rgb(f0)[ry:ry + rh, rx:rx + rw])
    assert c.stop() == 0


def test_continuous_frames_reuse_released_buffers(weston: Weston, run_client) -> None:  # type: ignore[no-untyped-def]
    r = run_client(PATTERN, "--width", "64", "--height", "48", "--frames", "12", "--no-hold",
                   "--damage", "full", env=weston.env())
    assert r.returncode == 0, r.stderr
    frames = [ln for ln in r.stdout.splitlines() if ln.startswith("frame ")]
    assert [int(ln.split()[1]) for ln in frames] == list(range(12))


def test_client_exits_on_stdin_eof_and_sigterm(weston: Weston, spawn_client) -> None:  # type: ignore[no-untyped-def]
    a = spawn_client(PATTERN, env=weston.env())
    b = spawn_client(PATTERN, env=weston.env())
    a.wait_line("frame 0 ")
    b.wait_line("frame 0 ")
    a.close_stdin()
    assert a.wait(5) == 0
    b.proc.send_signal(signal.SIGTERM)
    assert b.wait(5) == 0


def test_screenshot_cli_writes_png(weston: Weston, spawn_client, run_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    c = spawn_client(PATTERN, "--width", "90", "--height", "70", "--pattern", "checker", env=weston.env())
    c.wait_line("frame 0 ")
    out = tmp_path / "shot.png"
    r = run_client("wlproxy.tools.clients.screenshot", "--out", str(out), env=weston.env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == f"{weston.width}x{weston.height}+0+0"
    img = np.asarray(Image.open(out).convert("RGB"))
    direct = screenshot(weston.display, weston.runtime_dir)
    assert np.array_equal(img, direct.rgb())


def test_spawn_client_runs_a_weston_demo_client(weston: Weston, spawn_client) -> None:  # type: ignore[no-untyped-def]
    import time

    if shutil.which("weston-simple-shm") is None:
        pytest.skip("weston-simple-shm not installed (Debian: weston)")
    c = spawn_client(["weston-simple-shm"], env=weston.env())
    bg = weston.background_color & 0xFFFFFF
    deadline = time.monotonic() + 10
    while np.all(screenshot(weston.display, weston.runtime_dir).rgb24 == bg):
        assert c.proc.poll() is None, c.stderr_text()
        assert time.monotonic() < deadline, "weston-simple-shm drew nothing"
        time.sleep(0.02)
    t = time.monotonic()
    c.stop()
    assert time.monotonic() - t < 2  # SIGTERM at once: it ignores stdin
