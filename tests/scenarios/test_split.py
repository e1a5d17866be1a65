"""The split proxy end to end: guest half and host half as separate processes,
a Unix-socket link named like cloud-hypervisor's (``.../vsock_6000``), real
weston headless (pixman) and real clients."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pywayland")

from wlproxy.core import bridges, policy  # noqa: E402
from wlproxy.tools.clients.pattern import frame_pixels, pattern  # noqa: E402
from wlproxy.tools.clients.screenshot import locate_all, screenshot  # noqa: E402
from wlproxy.tools.pair import ProxyPair  # noqa: E402
from wlproxy.tools.weston import Weston  # noqa: E402

PATTERN = "wlproxy.tools.clients.pattern"


@pytest.fixture
def pair(weston: Weston, tmp_path: Path, request: pytest.FixtureRequest):
    p = ProxyPair(weston.env(), base_dir=tmp_path).start()
    yield p
    p.stop()
    if any(getattr(getattr(request.node, f"_rep_{w}", None), "failed", False) for w in ("setup", "call")):
        print("--- host log ---\n" + p.host.log_text()[-3000:])
        print("--- guest log ---\n" + p.guest.log_text()[-3000:])


def _globals(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"interface: '(\w+)',\s+version:\s+(\d+)", text)}


def test_link_socket_is_named_like_cloud_hypervisor(pair: ProxyPair) -> None:
    assert pair.host.link_path.name == "vsock_6000"
    assert pair.host.link_path.is_socket()
    assert pair.host.proc.pid != pair.guest.proc.pid


def test_wayland_info_lists_the_globals_the_default_policy_allows(pair: ProxyPair, weston: Weston, run_client) -> None:
    direct = _globals(run_client(["wayland-info"], env=weston.env()).stdout)
    proxied = _globals(run_client(["wayland-info"], env=pair.env()).stdout)
    assert direct, "wayland-info printed no globals"
    caps = policy.DEFAULT_GLOBALS  # the host half's default allowlist (see tests/scenarios/test_policy_weston.py)
    expected = {k: min(v, caps[k]) for k, v in direct.items() if k in caps and bridges.bridgeable(k)}
    assert proxied == expected
    # weston 10 headless offers explicit sync, whose fences are fds: never across the link
    assert "zwp_linux_explicit_synchronization_v1" in direct
    assert "zwp_linux_explicit_synchronization_v1" not in proxied


@pytest.mark.parametrize("client", ["weston-simple-shm", "weston-simple-damage", "weston-subsurfaces",
                                    "weston-flower", "weston-presentation-shm"])
def test_real_client_runs_through_the_pair(pair: ProxyPair, weston: Weston, client: str) -> None:
    before = screenshot(weston.display, weston.runtime_dir).pixels
    p = subprocess.Popen([client], env=pair.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        assert p.poll() is None, f"{client} exited early with {p.returncode}: {p.stderr.read()}"
        after = screenshot(weston.display, weston.runtime_dir).pixels
    finally:
        p.terminate()
        _, err = p.communicate(timeout=5)
    assert "error" not in err.lower(), err
    assert np.count_nonzero(before != after) > 1000, "the client's window did not appear on weston"
    host_log = pair.host.log_text()
    assert "protocol_violation" not in host_log and "dropping link" not in host_log


@pytest.mark.parametrize("damage", ["buffer", "surface"])
@pytest.mark.parametrize("fmt", ["xrgb8888", "argb8888"])
def test_pixels_exact_with_partial_damage(pair: ProxyPair, weston: Weston, spawn_client, damage: str, fmt: str) -> None:
    w, h, rect = 150, 100, (20, 30, 50, 40)
    c = spawn_client(PATTERN, "--width", str(w), "--height", str(h), "--pattern", "noise", "--format", fmt,
                     "--frames", "4", "--step", "--update", "20,30,50,40", "--damage", damage, env=pair.env())
    c.wait_line("frame 0 ")
    f0 = frame_pixels("noise", w, h, 0)
    found = locate_all(screenshot(weston.display, weston.runtime_dir).pixels, f0)
    assert len(found) == 1, f"window with the exact pattern found at {found}"
    x, y = found[0]
    rx, ry, rw, rh = rect
    for i in (1, 2, 3):
        c.send("next")
        c.wait_line(f"frame {i} ")
        win = screenshot(weston.display, weston.runtime_dir).pixels[y:y + h, x:x + w] & 0xFFFFFF
        expected = frame_pixels("noise", w, h, i, update_rect=rect) & 0xFFFFFF
        assert np.array_equal(win, expected), f"frame {i}: {np.count_nonzero(win != expected)} pixels differ"
        assert np.array_equal(win[ry:ry + rh, rx:rx + rw], pattern("checker", w, h, seed=i, rect=rect) & 0xFFFFFF)
    assert c.stop() == 0


def test_eight_clients_one_streaming_1080p(pair: ProxyPair, weston: Weston, spawn_client, run_client) -> None:
    env = pair.env()
    stream = spawn_client(PATTERN, "--width", "1920", "--height", "1080", "--pattern", "noise",
                          "--frames", "100000", "--update", "0,0,1920,1080", "--damage", "full", env=env)
    stream.wait_line("frame 2 ", timeout=30)
    idle = [spawn_client(PATTERN, "--width", "64", "--height", "64", "--pattern", "bars", env=env) for _ in range(6)]
    for c in idle:
        c.wait_line("frame 0 ", timeout=30)
    res = run_client("wlproxy.tools.clients.roundtrip", "--count", "200", "--interval", "0.002", env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    print("interactive roundtrip while streaming 1080p:", stats)
    assert stats["count"] == 200
    # the stream kept going while the interactive client measured
    stream.wait_line("frame 6 ", timeout=30)
