"""Keymaps across the link: the host half reads weston's keymap fd and the
guest half recreates it, byte for byte (weston's x11 backend under Xvfb has
the real seat that headless lacks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pywayland")

from wlproxy.tools.pair import ProxyPair  # noqa: E402

from test_policy_clipboard import xweston  # noqa: E402,F401  (the fixture)

KEYMAP_CLIENT = r"""
import hashlib, json, mmap, os, stat
from pywayland.client import Display
from pywayland.protocol.wayland import WlSeat
d = Display(); d.connect()
reg = d.get_registry()
seat = []
reg.dispatcher["global"] = lambda r, n, i, v: seat.append(r.bind(n, WlSeat, min(v, 5))) if i == "wl_seat" else None
d.roundtrip()
kbd = seat[0].get_keyboard()
out = {}
def keymap(_k, fmt, fd, size):
    with mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ) as m:
        data = m[:size]
    out.update(format=fmt, size=size, sha256=hashlib.sha256(data).hexdigest(),
               nul_terminated=data.endswith(b"\0"), regular=stat.S_ISREG(os.fstat(fd).st_mode))
    os.close(fd)
kbd.dispatcher["keymap"] = keymap
for _ in range(20):
    if out:
        break
    d.roundtrip()
print(json.dumps(out))
d.disconnect()
"""


def _keymap(env) -> dict:
    res = subprocess.run([sys.executable, "-c", KEYMAP_CLIENT], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_keymap_arrives_identical_through_the_pair(xweston, tmp_path: Path) -> None:
    direct = _keymap(xweston.env())
    assert direct["format"] == 1 and direct["size"] > 1000, direct  # xkb_v1, a real keymap
    with ProxyPair(xweston.env(), base_dir=tmp_path, vm="kbd") as pair:
        proxied = _keymap(pair.env())
        log = pair.host.log_text()
    assert proxied == direct
    assert "protocol_violation" not in log
