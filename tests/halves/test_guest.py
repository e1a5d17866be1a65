"""The guest half while its link is down: clients wait for the next link (up to --link-wait),
and a host side that never says HELLO is given up and connected to again."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from wlproxy.core import link
from wlproxy.halves.guest import HELLO_TIMEOUT
from wlproxy.tools.pair import GuestHalf, HostHalf


def _wayland_info(env) -> subprocess.Popen:
    return subprocess.Popen(["wayland-info"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_client_waits_for_the_link_then_reaches_weston(weston_factory, tmp_path: Path) -> None:
    weston = weston_factory(width=320, height=240, debug=False)
    host = HostHalf(weston.env(), tmp_path / "run", "waitvm", log_path=tmp_path / "host.log")
    guest = GuestHalf(host.link_path, tmp_path / "rt", extra=["--reconnect", "0.2", "--link-wait", "20"],
                      log_path=tmp_path / "guest.log").start()
    try:
        client = _wayland_info(guest.env())  # no host half yet: the client waits
        time.sleep(1.5)
        assert client.poll() is None, f"the client did not wait for the link: {client.communicate()}"
        host.start()
        out, err = client.communicate(timeout=20)
        assert client.returncode == 0, err
        assert "interface: 'wl_compositor'" in out
    finally:
        guest.stop()
        if host.proc is not None:
            host.stop()


def test_client_refused_after_link_wait(tmp_path: Path) -> None:
    guest = GuestHalf(tmp_path / "nobody", tmp_path / "rt", extra=["--reconnect", "0.2", "--link-wait", "1"],
                      log_path=tmp_path / "guest.log").start()
    try:
        t0 = time.monotonic()
        client = _wayland_info(guest.env())
        _, err = client.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        guest.stop()
    assert "wl_display@1: error 3: wlproxy: the host half is not reachable" in err, err
    assert 0.9 < took < 10, took


@pytest.mark.slow
def test_host_side_without_hello_is_given_up(tmp_path: Path) -> None:
    """A host side that accepts but never says HELLO: after HELLO_TIMEOUT the guest half closes
    that link and connects again (a unix link: no stale frame to end)."""
    path = tmp_path / "link"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(15)
    guest = GuestHalf(path, tmp_path / "rt", extra=["--reconnect", "0.2"], log_path=tmp_path / "guest.log").start()
    try:
        conn, _ = srv.accept()
        t0 = time.monotonic()
        conn.settimeout(HELLO_TIMEOUT + 10)
        got = b""
        while chunk := conn.recv(4096):
            got += chunk
        waited = time.monotonic() - t0
        assert link.LinkDecoder().feed(got)[0].type == link.HELLO and len(got) < 1000, got
        assert HELLO_TIMEOUT - 0.5 < waited < HELLO_TIMEOUT + 5, waited
        conn2, _ = srv.accept()  # it connects again
        conn2.close()
        conn.close()
    finally:
        guest.stop()
        srv.close()
    assert f"no HELLO from the host half within {HELLO_TIMEOUT:g} s" in guest.log_text()
