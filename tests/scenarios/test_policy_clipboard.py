"""Clipboard policy with a weston that has a seat: weston's x11 backend under Xvfb.

weston headless has no wl_seat, so no keyboard focus and no selection.  Here
a host client (straight on weston) and a guest client (through the pair)
hand a selection to each other through weston's wl_data_device, and the data
arrives through a pipe, or not, as the VM's ``clipboard`` policy says.
weston's own clipboard manager copies a text/plain;charset=utf-8 selection as
soon as it is set and serves it after its owner exits, so a blocked transfer
is judged by a per-test stamp, not by an empty clipboard.  weston 10 offers
no primary selection, so that half of the policy runs through the same host
handlers but cannot be exercised here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pywayland")

from wlproxy.tools.weston import Weston, weston_available  # noqa: E402

from policy_helpers import CLIENTS, policy_pair  # noqa: E402


class X11Weston(Weston):
    """weston's x11 backend (a real seat: keyboard and pointer) on an Xvfb display."""

    def __init__(self, x_display: str, **kw):
        super().__init__(debug=False, extra_env={"DISPLAY": x_display}, **kw)

    def command(self) -> list[str]:
        return [a if a != "--backend=headless-backend.so" else "--backend=x11-backend.so" for a in super().command()]


@pytest.fixture(scope="module")
def xweston(tmp_path_factory: pytest.TempPathFactory):
    if weston_available() or not shutil.which("Xvfb"):
        pytest.skip("needs weston and Xvfb (apt-get install weston xvfb)")
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        num = f.readline().strip()
    assert num, "Xvfb did not report its display"
    wst = X11Weston(f":{num}", width=640, height=480,
                    log_path=tmp_path_factory.mktemp("xweston") / "weston.log").start()
    yield wst
    wst.stop()
    xvfb.terminate()
    xvfb.wait(10)


def _transfer(setter_env, getter_env, text: str) -> dict:
    """The setter client sets the selection; then the getter client maps a
    window (taking keyboard focus) and tries to read it."""
    setter = subprocess.Popen([sys.executable, CLIENTS, "clip-set", "--text", text], env=setter_env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:  # weston's clipboard manager may ask for a copy ("sent") at once
            line = setter.stdout.readline()
            assert line, setter.stderr.read()
            if line.startswith("selection-set"):
                break
        got = subprocess.run([sys.executable, CLIENTS, "clip-get", "--timeout", "3", "--any-offer"], env=getter_env,
                             capture_output=True, text=True, timeout=30)
        assert got.returncode == 0, got.stderr
        out = json.loads(got.stdout.strip().splitlines()[-1])
        assert out["focus"], "the getter never got keyboard focus"
        return out
    finally:
        setter.stdin.close()
        setter.wait(10)


@pytest.mark.parametrize("mode, to_host, from_host", [
    ("both", True, True), ("to-host", True, False), ("from-host", False, True), ("none", False, False)])
def test_clipboard_follows_the_policy(xweston: Weston, tmp_path: Path, mode: str, to_host: bool,
                                      from_host: bool) -> None:
    host_env = xweston.env()
    with policy_pair(host_env, tmp_path, "clipvm", f'clipboard = "{mode}"\n') as pair:
        guest_env = pair.env()
        stamp = f"{mode}-{time.monotonic_ns()}"
        # guest -> host
        out = _transfer(guest_env, host_env, f"from the guest {stamp}")
        if to_host:
            assert out["data"] == f"from the guest {stamp}", out
        else:
            # (weston's clipboard manager may still hold an earlier test's text)
            assert stamp not in json.dumps(out), out
        # host -> guest
        out = _transfer(host_env, guest_env, f"from the host {stamp}")
        if from_host:
            assert out["data"] == f"from the host {stamp}", out
        else:
            # the guest sees no selection and no types; asking anyway gives it nothing
            assert out["offer"] and out["mimes"] == [] and out["data"] == "", out
        blocked = {(e["what"], e["direction"]) for e in pair.host.audit("clipboard_blocked")}
        violations = pair.host.audit("protocol_violation")
    assert not violations
    assert (("set_selection", "to-host") in blocked) == (not to_host)
    assert (("receive", "from-host") in blocked) == (not from_host)
