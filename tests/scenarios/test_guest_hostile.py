"""Hostile clients of a real guest half (in front of a real host half and
weston): the guest half holds every app of the VM, so a client that sends
buffers the surface model cannot hold gets a protocol error, and the other
clients go on.

Each case sends its whole sequence in one write, as an attacker would: the
create_buffer, attach and commit reach the guest half in the same read.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers_wire import RawClient, display_errors, memfd
from wlproxy.tools.pair import ProxyPair
from wlproxy.core.shm import SHM_ERROR, _fourcc
from wlproxy.tools.weston import Weston, weston_available

XRGB = 1


@pytest.fixture(scope="module")
def weston(tmp_path_factory: pytest.TempPathFactory):
    reason = weston_available()
    if reason:
        pytest.skip(reason)
    w = Weston(width=320, height=240, debug=False, log_path=tmp_path_factory.mktemp("w") / "weston.log").start()
    yield w
    w.stop()


def _pair(weston: Weston, base: Path, *guest_extra: str):
    pair = ProxyPair(weston.env(), base_dir=base, guest_extra=guest_extra).start()
    return pair


def _client(pair: ProxyPair) -> RawClient:
    c = RawClient(str(pair.guest.socket_path), timeout=10)
    c.get_registry()
    return c


def _buffer_commit(c: RawClient, pool_size: int, width: int, height: int, stride: int, fmt: int,
                   damage: bool = False) -> int:
    """One write: wl_shm pool and buffer, a surface, attach (+ damage), commit, sync."""
    shm = c.bind("wl_shm")
    comp = c.bind("wl_compositor", 4)
    pool, buf, surf = c.new_id("wl_shm_pool"), c.new_id("wl_buffer"), c.new_id("wl_surface")
    data = (c.request(shm, "create_pool", pool, -1, pool_size)
            + c.request(pool, "create_buffer", buf, 0, width, height, stride, fmt)
            + c.request(comp, "create_surface", surf)
            + c.request(surf, "attach", buf, 0, 0))
    if damage:
        data += c.request(surf, "damage_buffer", 0, 0, width, height)
    data += c.request(surf, "commit")
    cb = c.new_id("wl_callback")
    data += c.request(1, "sync", cb)
    fd = memfd(pool_size)
    try:
        c.send(data, [fd])
    finally:
        os.close(fd)
    return cb


def _others_go_on(pair: ProxyPair, bystander: RawClient) -> None:
    bystander.roundtrip()
    with _client(pair) as late:
        assert "wl_compositor" in late.globals
    assert pair.guest.proc.poll() is None, "the guest half died:\n" + pair.guest.log_text()[-3000:]
    log = pair.guest.log_text()
    assert "Traceback" not in log, log[-4000:]


@pytest.mark.parametrize("fmt, what", [(0x12345678, "unknown"), (_fourcc("NV12"), "planar")])
def test_unknown_format_with_a_huge_stride_is_refused(weston: Weston, tmp_path: Path, fmt: int, what: str) -> None:
    """width 1, height 1, stride 0x7fffffff, a format whose layout the guest
    half does not know, in a 4096-byte pool: once this sent a whole row of
    `stride` bytes from the pool's mapping and killed the guest half."""
    with _pair(weston, tmp_path) as pair, _client(pair) as bystander, _client(pair) as bad:
        _buffer_commit(bad, 4096, 1, 1, 0x7FFFFFFF, fmt)
        errors = display_errors(bad.read_until_eof())
        assert len(errors) == 1, errors
        obj, code, text = errors[0]
        assert code == SHM_ERROR["invalid_format"] and "unknown format" in text
        assert bad.objects.get(obj) == "wl_shm_pool"
        _others_go_on(pair, bystander)
        assert "protocol error" in pair.guest.log_text()


def test_buffer_past_its_pool_is_refused_by_the_guest_half(weston: Weston, tmp_path: Path) -> None:
    with _pair(weston, tmp_path) as pair, _client(pair) as bystander, _client(pair) as bad:
        _buffer_commit(bad, 4096, 1, 2, 0x7FFFFFFF, XRGB)
        errors = display_errors(bad.read_until_eof())
        assert len(errors) == 1 and errors[0][1] == SHM_ERROR["invalid_stride"], errors
        assert "runs past the pool" in errors[0][2]
        _others_go_on(pair, bystander)


@pytest.mark.parametrize("height, stride", [(5000, 8), (9000, 1024)])
def test_no_diff_tall_buffer_is_forwarded(weston: Weston, tmp_path: Path, height: int, stride: int) -> None:
    """A valid XRGB buffer of width 1 with rows that do not touch, more rows
    than the commit's span array holds (``--no-diff`` once copied them all into
    it, past its end).  weston accepts it: the commit goes through, the client
    stays connected and the guest half keeps working."""
    with _pair(weston, tmp_path, "--no-diff") as pair, _client(pair) as bystander, _client(pair) as c:
        cb = _buffer_commit(c, stride * height, 1, height, stride, XRGB, damage=True)
        c.wait_for(lambda e: e.obj == cb and e.name == "done")
        assert not display_errors(c.events)
        c.roundtrip()
        _others_go_on(pair, bystander)
