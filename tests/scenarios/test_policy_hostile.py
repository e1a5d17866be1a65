"""A hostile guest driving the host half directly over the link (no guest half),
in front of real weston, under a tight policy.

Every case ends in a clean error: a ``wl_display.error`` for the offending
client (its other channels go on), or the link dropped (other links go on).
The host half never crashes, and its peak RSS stays under ``RSS_LIMIT``.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from wlproxy.core import link, wire
from wlproxy.core.codec import default_tables
from wlproxy.tools.weston import Weston, weston_available

from linkpeer import LinkPeer, split
from policy_helpers import PolicyHost

P = default_tables().proto


def msg(obj: int, iface: str, name: str, *args) -> bytes:
    return wire.encode(obj, P[iface].message(0, name), list(args))[0]


MiB = 1 << 20
RSS_LIMIT = 160 * MiB  # the host half's peak RSS in every case here (its baseline is ~40 MiB)

TIGHT = """
[limits]
clients = 4
objects_per_client = 1000
objects_per_vm = 1500
shm_bytes_per_client = "8 MiB"
shm_bytes_per_vm = "12 MiB"
pending_link_bytes = "1 MiB"
messages_per_second = 5000
message_burst = 5000
"""


@pytest.fixture(scope="module")
def weston(tmp_path_factory: pytest.TempPathFactory):
    reason = weston_available()
    if reason:
        pytest.skip(reason)
    w = Weston(width=320, height=240, debug=False, log_path=tmp_path_factory.mktemp("w") / "weston.log").start()
    yield w
    w.stop()


def _host(weston: Weston, tmp_path: Path, text: str = TIGHT) -> PolicyHost:
    pol = tmp_path / "hostile.toml"
    pol.write_text(text)
    return PolicyHost(weston.env(), tmp_path / "run", "hostile", pol)


@pytest.fixture
def host(weston: Weston, tmp_path: Path):
    h = _host(weston, tmp_path).start()
    yield h
    alive = h.proc.poll() is None
    mem = h.memory() if alive else {}
    h.stop()
    assert alive, "the host half died:\n" + h.log_text()[-3000:]
    assert "Traceback" not in h.log_text(), h.log_text()[-3000:]
    assert mem["VmHWM"] < RSS_LIMIT, f"host half peak RSS {mem['VmHWM'] >> 20} MiB"


# -- a scripted guest client -------------------------------------------------------

class Client:
    """One channel of a LinkPeer, with the registry bound: ``self.names``."""

    def __init__(self, peer: LinkPeer, ch: int):
        self.peer, self.ch = peer, ch
        peer.open_client(ch)
        events = peer.roundtrip(ch, cb_id=3, registry_id=2)
        self.names = {}
        for m in events:  # registry globals: (name, interface, version)
            obj, op, _ = wire.header(m)
            if obj == 2 and op == 0:
                name, iface, version = wire.decode(P["wl_registry"].message(1, "global"), m)
                self.names[iface] = (name, version)
        self.next_id = 3  # 2: the registry, 3: the first round trip's callback

    def new(self) -> int:
        self.next_id += 1
        return self.next_id

    def bind(self, iface: str, version: int) -> int:
        oid = self.new()
        self.send(msg(2, "wl_registry", "bind", self.names[iface][0], wire.Untyped((iface, version, oid))))
        return oid

    def send(self, data: bytes) -> None:
        for i in range(0, len(data), 1 << 16):
            self.peer.data(self.ch, data[i:i + (1 << 16)])

    def roundtrip(self) -> None:
        self.peer.roundtrip(self.ch, cb_id=self.new())

    def error(self, timeout: float = 10.0) -> tuple[int, int, str]:
        """Wait for this channel's wl_display.error: (object, code, message)."""
        end = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < end:
            f = self.peer.next_frame(end - time.monotonic())
            if f.type == link.DATA and f.channel == self.ch:
                self.peer.frame(link.CREDIT, self.ch, struct.pack("<I", len(f.payload)))
                buf += f.payload
                for obj, op, m in split(buf):
                    if (obj, op) == (1, 0):
                        o, code, text = wire.decode(P["wl_display"].message(1, "error"), m)
                        return o, code, text
            elif f.type == link.CLOSE and f.channel == self.ch:
                raise AssertionError(f"channel closed without an error: {f.payload!r}")
        raise AssertionError("no wl_display.error")


def _peer(host: PolicyHost, **kw) -> LinkPeer:
    return LinkPeer(host.link_path, **kw)


def _pool(c: Client, shm: int, key: int, size: int) -> int:
    c.peer.send(link.fd_shm_frame(c.ch, key, size))
    pid = c.new()
    c.send(wire.encode(shm, _m("wl_shm", "create_pool"), [pid, None, size & 0x7FFFFFFF if size < 1 << 31 else
                                                         0x7FFFFFFF])[0])
    return pid


def _m(iface: str, name: str):
    return P[iface].message(0, name)


# -- forged object ids --------------------------------------------------------------

FORGED = {
    "request on an id never created": lambda c: msg(77, "wl_surface", "commit"),
    "new id that is not the next free one": lambda c: msg(1, "wl_display", "sync", 500),
    "new id in the server's range": lambda c: msg(1, "wl_display", "sync", 0xFF000005),
    "object argument of the wrong interface": lambda c: (
        msg(c.comp, "wl_compositor", "create_surface", c.new()) + msg(c.next_id, "wl_surface", "attach", 2, 0, 0)),
    "an id only another client has": lambda c: msg(c.other_region, "wl_region", "add", 0, 0, 1, 1),
    "a destroyed object": lambda c: (msg(c.comp, "wl_compositor", "create_region", c.new()) +
                                     msg(c.next_id, "wl_region", "destroy") +
                                     msg(c.next_id, "wl_region", "add", 0, 0, 1, 1)),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_object_ids(host: PolicyHost, case: str) -> None:
    p = _peer(host)
    a, b = Client(p, 1), Client(p, 2)
    a.comp, b.comp = a.bind("wl_compositor", 4), b.bind("wl_compositor", 4)
    b.send(msg(b.comp, "wl_compositor", "create_region", b.new()))
    b.send(msg(b.comp, "wl_compositor", "create_region", b.new()))
    a.other_region = b.next_id  # an id channel 1 never allocated
    a.send(FORGED[case](a))
    obj, code, text = a.error()
    assert code in (0, 1), text  # invalid_object / invalid_method, as libwayland
    b.roundtrip()  # the VM's other client goes on
    p.close()
    assert [e["client"] for e in host.audit("protocol_violation")] == [1]


# -- shm pools and buffers ---------------------------------------------------------

@pytest.mark.parametrize("size", [9 * MiB, (1 << 31) - 4096, (1 << 64) - 1])
def test_pool_past_the_limit(host: PolicyHost, size: int) -> None:
    p = _peer(host)
    a, b = Client(p, 1), Client(p, 2)
    shm = a.bind("wl_shm", 1)
    _pool(a, shm, 1, size)
    obj, code, text = a.error()
    assert code == 2 and "over the shm limit" in text  # no_memory
    b.roundtrip()
    lim = host.audit("limit_hit")
    assert lim and lim[0]["limit"] == "shm_bytes" and lim[0]["vm"] == "hostile"


def test_pools_past_the_vm_limit_and_resize_past_the_client_limit(host: PolicyHost) -> None:
    p = _peer(host)
    a, b, c = Client(p, 1), Client(p, 2), Client(p, 3)
    shm_a, shm_b, shm_c = a.bind("wl_shm", 1), b.bind("wl_shm", 1), c.bind("wl_shm", 1)
    _pool(a, shm_a, 1, 7 * MiB)
    a.roundtrip()  # 7 MiB: fine
    _pool(b, shm_b, 2, 7 * MiB)  # 14 MiB for the VM: over its 12
    assert b.error()[1] == 2
    pool_c = _pool(c, shm_c, 3, 1 * MiB)
    c.roundtrip()
    c.send(msg(pool_c, "wl_shm_pool", "resize", 9 * MiB))  # past the client's 8 MiB
    assert c.error()[1] == 2
    a.roundtrip()
    assert [e["client"] for e in host.audit("limit_hit")] == [2, 3]


@pytest.mark.parametrize("offset, width, height, stride", [
    (0, 100, 200, 400),              # 80000 bytes in a 64 KiB pool
    (65000, 16, 16, 64),             # starts inside, runs past the end
    (-64, 16, 16, 64),               # negative offset
    (0, 16, 16, 32),                 # stride below width x 4
    (0, 16, 3, 0x7FFFFFFF),          # stride x height overflows 32 bits
    (0, 0x7FFFFFFF, 1, 0x7FFFFFFF),  # absurd width
])
def test_buffer_past_its_pool(host: PolicyHost, offset: int, width: int, height: int, stride: int) -> None:
    p = _peer(host)
    a, b = Client(p, 1), Client(p, 2)
    pool = _pool(a, a.bind("wl_shm", 1), 1, 65536)
    a.send(msg(pool, "wl_shm_pool", "create_buffer", a.new(), offset, width, height, stride, 1))
    obj, code, text = a.error()
    assert obj == pool and code == 1 and "runs past the pool" in text
    b.roundtrip()


def test_damage_outside_the_buffer_is_clipped_not_fatal(host: PolicyHost, weston: Weston) -> None:
    """Damage beyond the buffer is legal Wayland (clients send INT32_MAX
    rectangles): weston clips it.  The client goes on; SHM_DATA outside the
    pool, which damage might tempt a guest to send, drops the link."""
    p = _peer(host)
    a = Client(p, 1)
    comp, shm = a.bind("wl_compositor", 4), a.bind("wl_shm", 1)
    pool = _pool(a, shm, 1, 64 * 64 * 4)
    buf, surf = a.new(), a.new()
    big = 0x7FFFFFFF
    a.send(msg(pool, "wl_shm_pool", "create_buffer", buf, 0, 64, 64, 256, 1) +
           msg(comp, "wl_compositor", "create_surface", surf) + msg(surf, "wl_surface", "attach", buf, 0, 0) +
           msg(surf, "wl_surface", "damage_buffer", -big - 1, -big - 1, big, big) +
           msg(surf, "wl_surface", "damage", 1000, 1000, big, big) +
           msg(surf, "wl_surface", "damage_buffer", 10, 10, -5, -5) + msg(surf, "wl_surface", "commit"))
    a.roundtrip()
    assert not host.audit("protocol_violation")
    p.send(link.shm_data_header(1, 1, 64 * 64 * 4 - 8, 64) + b"x" * 64)
    assert p.closed_by_peer()
    assert host.audit("link_dropped")
    assert weston.running


# -- floods ------------------------------------------------------------------------------

def test_flood_of_objects(host: PolicyHost) -> None:
    p = _peer(host)
    a, b = Client(p, 1), Client(p, 2)
    comp = a.bind("wl_compositor", 4)
    a.send(b"".join(msg(comp, "wl_compositor", "create_region", a.new()) for _ in range(1200)))
    obj, code, text = a.error()
    assert code == 2 and "object limit of 1000 reached" in text
    b.roundtrip()
    assert host.audit("limit_hit")[0]["limit"] == "objects_per_client"


def test_flood_of_objects_across_the_vm(host: PolicyHost) -> None:
    p = _peer(host)
    a, b = Client(p, 1), Client(p, 2)
    ca, cb = a.bind("wl_compositor", 4), b.bind("wl_compositor", 4)
    a.send(b"".join(msg(ca, "wl_compositor", "create_region", a.new()) for _ in range(900)))
    a.roundtrip()
    b.send(b"".join(msg(cb, "wl_compositor", "create_region", b.new()) for _ in range(700)))
    obj, code, text = b.error()
    assert code == 2 and "over its limit of 1500 objects" in text
    a.roundtrip()  # the first client, under both limits, goes on


def test_message_rate(host: PolicyHost) -> None:
    p = _peer(host)
    a, b = Client(p, 1), Client(p, 2)
    reg = a.bind("wl_compositor", 4)
    region = a.new()
    a.send(msg(reg, "wl_compositor", "create_region", region) +
           msg(region, "wl_region", "add", 0, 0, 1, 1) * 8000)
    obj, code, text = a.error()
    assert code == 3 and "message rate" in text  # implementation
    b.roundtrip()
    assert host.audit("limit_hit")[0]["limit"] == "messages_per_second"


def test_too_many_clients(host: PolicyHost) -> None:
    p1, p2 = _peer(host), _peer(host)
    first = [Client(p1, 1), Client(p1, 2), Client(p1, 3)]
    Client(p2, 1)  # the VM's fourth client, on a second link
    p2.open_client(2)
    p2.data(2, msg(1, "wl_display", "sync", 2))
    while True:
        f = p2.next_frame()
        if f.type == link.DATA and f.channel == 2:
            obj, op, m = split(f.payload)[0]
            assert (obj, op) == (1, 0) and b"too many clients" in m
        if f.type == link.CLOSE and f.channel == 2:
            break
    for c in first:
        c.roundtrip()
    assert host.audit("limit_hit")[0]["limit"] == "clients"


def test_guest_that_stops_reading_its_link(weston: Weston, tmp_path: Path) -> None:
    """It announces the largest window, never reads, and keeps asking weston
    for replies (registry globals).  The host half does not buffer without
    bound: the link's backpressure stops it reading weston (which then drops
    that client), and its own queue is capped by pending_link_bytes (see the
    next test).  Other links go on."""
    text = TIGHT.replace("objects_per_client = 1000", "objects_per_client = 60000") \
        .replace("objects_per_vm = 1500", "objects_per_vm = 60000") \
        .replace("messages_per_second = 5000", "messages_per_second = 10000000") \
        .replace("message_burst = 5000", "message_burst = 10000000")
    h = _host(weston, tmp_path, text).start()
    try:
        before = h.memory()["VmRSS"]
        p = LinkPeer(h.link_path, window=1 << 26)
        p.open_client(1)
        p.sock.settimeout(10)
        reg = 2
        try:
            for _ in range(150):  # 150 x 80 registries: ~5 MiB of replies nobody reads
                p.data(1, b"".join(msg(1, "wl_display", "get_registry", reg + i) for i in range(80)))
                reg += 80
                time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass
        time.sleep(0.5)
        grown = h.memory()["VmRSS"] - before
        assert grown < MiB + 16 * MiB, f"host half grew by {grown >> 20} MiB for a guest that does not read"
        assert h.memory()["VmHWM"] < RSS_LIMIT
        other = _peer(h)
        Client(other, 1).roundtrip()  # another link is served meanwhile
        assert h.proc.poll() is None
    finally:
        h.stop()


def test_pending_link_bytes_limit_drops_the_link(caplog: pytest.LogCaptureFixture) -> None:
    """The backstop itself, in-process: once more than pending_link_bytes wait
    for a guest that does not read, its link is dropped with an audit line."""
    import socket as _socket

    from wlproxy.halves import host as _host_mod
    from wlproxy.core import policy as _policy
    from wlproxy.io.loop import Loop

    pol = _policy.parse('[limits]\npending_link_bytes = "256 KiB"\n', "slow")
    loop = Loop()
    a, b = _socket.socketpair()
    try:
        b.sendall(link.hello_frame(1 << 26, "peer that never reads"))
        server = _host_mod.HostServer(loop, a, "slow", None, pol)
        (lk,) = server.links
        for _ in range(5):
            loop.run_once(0.01)
        for _ in range(64):  # 4 MiB of output on its way to the guest: the socket takes only part
            lk.writer.send(1, link.frame(link.PIPE_DATA, 1, b"\0" * 4 + b"x" * 65532))
        assert lk.writer.queued_bytes > 256 << 10
        with caplog.at_level("WARNING"):
            lk.check_backlog()
            for _ in range(3):
                loop.run_once(0)
        assert lk.closed and not server.links
        events = [getattr(r, "audit", {}) for r in caplog.records]
        assert {"event": "limit_hit", "vm": "slow", "link": "slow link 1", "limit": "pending_link_bytes",
                "value": 256 << 10} in events
        assert any(e.get("event") == "link_dropped" and "stopped reading" in e["reason"] for e in events)
    finally:
        b.close()
        loop.close()


def test_frame_claiming_4_gib(host: PolicyHost) -> None:
    other = _peer(host)
    keep = Client(other, 1)
    before = host.memory()["VmRSS"]
    for header in (link.HEADER.pack(0xFFFFFFFF, link.DATA, 0, 1),
                   link.HEADER.pack(0xFFFFFFFF, link.SHM_DATA, 0, 1),
                   link.HEADER.pack(0xFFFFFFFF, link.OPEN, 0, 2)):
        p = _peer(host)
        p.open_client(1)
        p.send(header + b"\0" * 4096)
        assert p.closed_by_peer()
        p.close()
    keep.roundtrip()
    assert host.memory()["VmRSS"] - before < 16 * MiB
    dropped = host.audit("link_dropped")
    assert len(dropped) == 3 and all("exceeds the limit" in d["reason"] for d in dropped)
