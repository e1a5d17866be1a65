"""Lifecycle of the split proxy: disconnects in either direction, the link
lost and regained, weston going away, and no leaks over 1,000 clients."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers_wire import RawClient, display_errors, memfd
from wlproxy.tools.pair import GuestHalf, HostHalf, ProxyPair
from wlproxy.tools.weston import Weston


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _stable_fds(pid: int) -> int:
    """The fd count once it has stopped changing (earlier disconnects are asynchronous)."""
    last = _fds(pid)
    for _ in range(50):
        time.sleep(0.1)
        now = _fds(pid)
        if now == last:
            return now
        last = now
    return last


def _settle(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def pair(weston_factory, tmp_path: Path):
    w = weston_factory(width=320, height=240, debug=False)
    p = ProxyPair(w.env(), base_dir=tmp_path).start()
    p.weston = w
    warm = RawClient(str(p.guest.socket_path))  # the link is up once a roundtrip works
    warm.get_registry()
    warm.close()
    yield p
    p.stop()


def _client_with_a_frame(path: Path) -> RawClient:
    """Registry, a surface with a committed shm buffer (a memfd crosses as a pool)."""
    c = RawClient(str(path))
    c.get_registry()
    comp = c.bind("wl_compositor", 4)
    shm = c.bind("wl_shm", 1)
    surf = c.new_id("wl_surface")
    c.send(c.request(comp, "create_surface", surf))
    pool = c.new_id("wl_shm_pool")
    fd = memfd(64 * 64 * 4)
    c.send(c.request(shm, "create_pool", pool, 0, 64 * 64 * 4), [fd])
    os.close(fd)
    buf = c.new_id("wl_buffer")
    c.send(c.request(pool, "create_buffer", buf, 0, 64, 64, 256, 1))
    c.send(c.request(pool, "destroy"))
    c.send(c.request(surf, "attach", buf, 0, 0) + c.request(surf, "damage", 0, 0, 64, 64) + c.request(surf, "commit"))
    c.roundtrip()
    return c


def test_client_disconnect_closes_its_compositor_connection(pair: ProxyPair) -> None:
    host_pid = pair.host.proc.pid
    base = _stable_fds(host_pid)
    clients = [_client_with_a_frame(pair.guest.socket_path) for _ in range(3)]
    assert _fds(host_pid) >= base + 3  # one weston connection each
    for c in clients:
        c.close()
    assert _settle(lambda: _fds(host_pid) == base), f"host half holds {_fds(host_pid) - base} fds too many"


def test_link_lost_disconnects_clients_and_reconnects(pair: ProxyPair, tmp_path: Path) -> None:
    c = RawClient(str(pair.guest.socket_path))
    c.get_registry()
    pair.host.proc.send_signal(signal.SIGKILL)
    pair.host.proc.wait()
    events = c.read_until_eof()
    errs = display_errors(events)
    assert errs and errs[0][1] == 3 and "link to the host was lost" in errs[0][2]
    assert pair.guest.proc.poll() is None, "the guest half died with the link"
    # the host half comes back: the guest half reconnects, new clients work
    pair.host.link_path.unlink(missing_ok=True)
    pair.host = HostHalf(pair.weston.env(), pair.host.run_dir, "testvm", log_path=tmp_path / "host2.log").start()
    deadline = time.monotonic() + 10
    while True:
        try:
            c2 = RawClient(str(pair.guest.socket_path))
            c2.get_registry()
            break
        except (EOFError, ConnectionError, OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert "wl_compositor" in c2.globals
    c2.close()


def test_guest_half_lost_frees_host_side_and_next_link_works(pair: ProxyPair, tmp_path: Path) -> None:
    host_pid = pair.host.proc.pid
    base = _stable_fds(host_pid)
    c = _client_with_a_frame(pair.guest.socket_path)
    assert _fds(host_pid) > base
    pair.guest.proc.send_signal(signal.SIGKILL)
    pair.guest.proc.wait()
    c.close()
    # the link's fd and the client's weston connection are gone
    assert _settle(lambda: _fds(host_pid) == base - 1), "host half kept fds of the lost link"
    assert pair.host.proc.poll() is None
    pair.guest = GuestHalf(pair.host.link_path, tmp_path / "guest2", log_path=tmp_path / "guest2.log").start()
    c2 = _client_with_a_frame(pair.guest.socket_path)
    c2.close()


def test_weston_going_away_ends_clients_cleanly(pair: ProxyPair) -> None:
    c = RawClient(str(pair.guest.socket_path))
    c.get_registry()
    pair.weston.stop()
    c.read_until_eof()  # the client is disconnected, not left hanging
    assert pair.host.proc.poll() is None and pair.guest.proc.poll() is None


@pytest.mark.slow
def test_no_leaks_over_1000_clients(pair: ProxyPair) -> None:
    host_pid, guest_pid = pair.host.proc.pid, pair.guest.proc.pid

    def cycle(n: int) -> None:
        for _ in range(n):
            _client_with_a_frame(pair.guest.socket_path).close()

    cycle(100)  # warm up allocators and caches
    fds = (_stable_fds(host_pid), _stable_fds(guest_pid))
    rss = (_rss_kib(host_pid), _rss_kib(guest_pid))
    cycle(1000)
    assert _settle(lambda: (_fds(host_pid), _fds(guest_pid)) == fds), \
        f"fds before {fds}, after {(_fds(host_pid), _fds(guest_pid))}"
    grow = (_rss_kib(host_pid) - rss[0], _rss_kib(guest_pid) - rss[1])
    print(f"RSS growth over 1000 clients: host {grow[0]} KiB, guest {grow[1]} KiB")
    assert grow[0] < 6144 and grow[1] < 6144, f"RSS grew by {grow} KiB"

