"""Differential: every C fast path on, and all of them off
(``WLPROXY_FAST_PATHS=off``), give byte-identical output.

* The host half (the fuzz harness: a real HostServer in front of fake
  compositors) with the fuzz corpus and mutations of it as the guest's link
  input: the same bytes reach each compositor, and the same frames go back
  to the guest.
* The guest half (a real GuestLink in-process) replaying the recorded
  traffic of real clients (``bench/traffic``): the requests come from a
  client socket, with memfds for their pools whose pixels change between
  frames; the events come over the link.  The client gets the same bytes,
  and the link carries the same messages and the same pixels.
* The guest half with random link input for three clients (credits, bad
  messages, cuts anywhere): each client gets the same bytes.

C being off or on is the one thing that differs between the two runs, so
a decision made differently in C and in Python shows up here.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
from pathlib import Path

import pytest

from helpers_guestlink import client, link_frames, linked, readable
from helpers_wire import encode, read_traffic, traffic_files
from wlproxy.core import link
from wlproxy.core.codec import MSG, Codec
from wlproxy.core.protocol import EVENT, REQUEST
from wlproxy.halves import session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import harness  # noqa: E402

SEEDS = sorted((Path(__file__).resolve().parents[1] / "fuzz" / "corpus").glob("*.bin"))


def test_the_switch_turns_the_c_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off means no channel gets a slot of the C link scan or loop, the reader
    scans nothing in C, and the link is not watched by C."""
    for fast in (True, False):
        monkeypatch.setattr(session, "FAST_PATHS", fast)
        loop, lk, host = linked()
        c = client(lk)
        ch = lk.channels[1]
        assert (ch.slot is not None) is fast
        assert (lk.reader.scan is not None) is fast
        assert (lk.fd in loop._c_handlers) is fast
        c.close()
        lk.shutdown("done", violation=False)
        host.close()
        loop.close()


# -- normalising link output ------------------------------------------------------

def normal(data: bytes) -> list[tuple]:
    """Link output as what it means: consecutive DATA of a channel joined,
    consecutive SHM_DATA of a pool joined where they continue each other,
    CREDIT left out (when credit is given back depends on how reads fell)."""
    out: list[list] = []
    for ftype, ch, payload in link_frames(data):
        if ftype == link.CREDIT:
            continue
        last = out[-1] if out else None
        if ftype == link.DATA:
            if last and last[0] == link.DATA and last[1] == ch:
                last[2] += payload
            else:
                out.append([link.DATA, ch, bytearray(payload)])
        elif ftype == link.SHM_DATA:
            key, _, off = link.SHM_HEADER.unpack_from(payload)
            body = payload[link.SHM_HEADER.size:]
            if last and last[0] == link.SHM_DATA and last[1:3] == [ch, key] and last[3] + len(last[4]) == off:
                last[4] += body
            else:
                out.append([link.SHM_DATA, ch, key, off, bytearray(body)])
        else:
            out.append([ftype, ch, payload])
    return [tuple(bytes(x) if isinstance(x, bytearray) else x for x in f) for f in out]


# -- the host half ------------------------------------------------------------------

def _mutants(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            kind = rng.random()
            if kind < 0.5:
                b[i] = rng.randrange(256)
            elif kind < 0.7:
                struct.pack_into("<I", b, i - i % 4 if i + 4 <= len(b) else 0,
                                 rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0xFF000000, 4096, 65536]))
            elif kind < 0.85:
                del b[i:i + rng.randint(1, 16)]
            else:
                b[i:i] = b[max(0, i - 64):i]  # a piece again
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("seed", SEEDS, ids=[p.stem for p in SEEDS])
def test_host_half_output_is_the_same_with_and_without_c(seed: Path) -> None:
    data = seed.read_bytes()
    rng = random.Random(seed.stem)
    for i, case in enumerate([data, *_mutants(data, rng, 6)]):
        on, off = harness.run_one(case, fast=True), harness.run_one(case, fast=False)
        assert on.compositor == off.compositor, f"case {i}: what the compositor got differs"
        assert normal(on.link) == normal(off.link), f"case {i}: what went back to the guest differs"
        if i == 0 and not seed.stem.startswith("regress-"):  # regressions may end before any request
            assert on.compositor and on.compositor[0], "the seed itself reached a compositor"


# -- the guest half -------------------------------------------------------------------

class _Run:
    """One guest link with one client; collects what the client and the host end get."""

    def __init__(self, fast: bool, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setattr(session, "FAST_PATHS", fast)
        self.loop, self.lk, self.host = linked()
        self.client = client(self.lk, socket.SOCK_STREAM)
        self.to_client = bytearray()
        self.to_host = bytearray()

    def pump(self, turns: int = 4) -> None:
        for _ in range(turns):
            self.loop.run_once(0)
            moved = self._drain()
            if not moved and not self.lk.writer.queued_bytes:
                break

    def _drain(self) -> bool:
        moved = False
        while readable(self.client):
            chunk = self.client.recv(1 << 16)
            if not chunk:
                break
            self.to_client += chunk
            moved = True
        while readable(self.host):
            chunk = self.host.recv(1 << 20)
            if not chunk:
                break
            self.to_host += chunk
            moved = True
            # give the DATA back as credit, as the host half would once weston took it
            for ftype, ch, payload in link_frames(bytes(self.to_host[self._credited:])):
                self._credited += link.HEADER_SIZE + len(payload)
                if ftype == link.DATA:
                    self.host.sendall(link.credit_frame(ch, len(payload)))
        return moved

    _credited = 0

    def close(self) -> None:
        self.pump(20)
        self.lk.shutdown("test over", violation=False)
        self.client.close()
        self.host.close()
        self.loop.close()


def _replay(chunks: list[tuple[int, bytes, int]], fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """Replay a recording through a guest link: requests from the client (with
    memfds for their pools, repainted before every chunk with a commit),
    events as DATA from the host end."""
    run = _Run(fast, monkeypatch)
    rng = random.Random(7)
    side = Codec()  # finds the create_pool requests (and their sizes) in the requests
    side.intercept_all()
    pools: list = []  # (fd, size)
    by_id: dict[int, int] = {}  # wl_shm_pool id -> index in pools
    try:
        for direction, data, nfds in chunks:
            if direction == EVENT:
                for _ in range(nfds):  # events carry keymaps only here
                    run.host.sendall(link.frame(link.FD_KEYMAP, 1, b"xkb_keymap {};\0"))
                run.host.sendall(link.frame(link.DATA, 1, data))
                side.feed(EVENT, bytearray(data), len(data), nfds)
                run.pump()
                continue
            recs, _ = side.feed(REQUEST, bytearray(data), len(data), nfds)
            fds = []
            for r in recs:
                iface, msg = side.tables.message(r.iface, REQUEST, r.opcode) if r.kind == MSG else (None, None)
                what = (iface.name, msg.name) if iface is not None else None
                if what == ("wl_shm", "create_pool"):
                    pid, size = struct.unpack_from("=Ii", data, r.start + 8)
                    fd = os.memfd_create("differential")
                    os.write(fd, rng.randbytes(size))
                    pools.append((fd, size))
                    by_id[pid] = len(pools) - 1
                    fds.append(fd)
                elif what == ("wl_shm_pool", "resize") and r.obj in by_id:
                    (size,) = struct.unpack_from("=i", data, r.start + 8)
                    fd, old = pools[by_id[r.obj]]
                    if size > old:
                        os.pwrite(fd, rng.randbytes(size - old), old)
                        pools[by_id[r.obj]] = (fd, size)
                elif r.nfds:
                    fds += [os.open("/dev/null", os.O_RDONLY) for _ in range(r.nfds)]
                if what == ("wl_surface", "commit"):
                    for fd, size in pools:  # a new frame: some pixels change, some do not
                        for _ in range(4):
                            n = rng.randrange(1, max(2, size // 8))
                            os.pwrite(fd, rng.randbytes(n), rng.randrange(max(1, size - n)))
            run.client.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
                               if fds else [])
            for fd in fds:
                if all(fd != p for p, _ in pools):
                    os.close(fd)
            run.pump()
        run.close()
    finally:
        for fd, _ in pools:
            os.close(fd)
    return bytes(run.to_client), normal(bytes(run.to_host))


@pytest.mark.parametrize("recording", traffic_files(), ids=[p.stem for p in traffic_files()])
def test_guest_half_replays_real_traffic_the_same_with_and_without_c(recording: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = read_traffic(recording)
    on = _replay(chunks, True, monkeypatch)
    off = _replay(chunks, False, monkeypatch)
    assert on[0] == off[0], "what the client got differs"
    assert on[1] == off[1], "what the link carried differs"
    data = [f for f in on[1] if f[0] == link.DATA]
    assert data and sum(len(f[2]) for f in data) > 100  # the requests crossed
    if any(d == REQUEST and n for d, _, n in chunks):
        assert any(f[0] == link.SHM_DATA for f in on[1]), "the pixels crossed"


def _random_link_input(rng: random.Random) -> list[bytes]:
    stream = b""
    for _ in range(rng.randrange(5, 40)):
        ch = rng.randrange(1, 4)
        r = rng.random()
        if r < 0.15:
            stream += link.credit_frame(ch, 0)
        elif r < 0.2:  # a bad message: that client gets a protocol error and is closed
            stream += link.frame(link.DATA, ch, b"\x01\x00\x00\x00\x00\x00\x04\x00")
        else:
            events = b"".join(encode(rng.randrange(50, 90), "wl_callback", "done", rng.randrange(1 << 30),
                                     direction=EVENT) for _ in range(rng.randrange(1, 6)))
            stream += link.frame(link.DATA, ch, events)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 6))))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]


def _deliver(chunks: list[bytes], fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], bool]:
    monkeypatch.setattr(session, "FAST_PATHS", fast)
    loop, lk, host = linked()
    clients = [client(lk, socket.SOCK_STREAM) for _ in range(3)]
    got = [bytearray() for _ in clients]

    def drain() -> None:
        for c, g in zip(clients, got):
            while readable(c):
                data = c.recv(1 << 16)
                if not data:
                    break
                g += data

    for chunk in chunks:
        host.sendall(chunk)
        for _ in range(3):
            loop.run_once(0)
        drain()
    for _ in range(20):
        loop.run_once(0.002)
        drain()
    dropped = lk.closed
    lk.shutdown("test over", violation=False)
    for c in clients:
        c.close()
    host.close()
    loop.close()
    return [bytes(g) for g in got], dropped


def test_guest_half_random_link_input_reaches_each_client_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    for seed in range(40):
        chunks = _random_link_input(random.Random(seed))
        assert _deliver(chunks, True, monkeypatch) == _deliver(chunks, False, monkeypatch), f"seed {seed}"
