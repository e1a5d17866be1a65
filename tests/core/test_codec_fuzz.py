"""Property tests: random and mutated streams through the C codec.

Inputs: recorded real traffic (``bench/traffic/*.bin``, both directions of
real client connections in the order a proxy read them), mutations of it
(bytes flipped, words overwritten with interesting values, bytes cut or
inserted, fd counts changed), and structured random messages.  Each is fed in
random chunkings.  Properties:

* no crash, no hang (a watchdog ends the process if a feed never returns);
* every feed either accepts (its records cover the consumed bytes
  contiguously from the start of the buffer, and what is left is a partial
  message) or ends with exactly one ERROR record, last, at the consumed offset;
* messages the codec accepts decode in Python to arguments that re-encode to
  the same length (the C and Python views of a message agree);
* feeding in random chunks gives the same result as feeding each recorded
  read whole: same messages, same error, same object map.
"""

from __future__ import annotations

import faulthandler
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers_wire import read_traffic, traffic_files
from wlproxy.core import wire
from wlproxy.core.codec import ERROR, MSG, PASS, SERVER_ID_START, Codec, default_tables
from wlproxy.core.protocol import EVENT, REQUEST

RECORDINGS = {f.stem: read_traffic(f) for f in traffic_files()}
TABLES = default_tables()
# WLPROXY_FUZZ_EXAMPLES=5000 for a longer run (e.g. against an ASan build of the codec)
SETTINGS = settings(max_examples=int(os.environ.get("WLPROXY_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    database=None)


@pytest.fixture(autouse=True, scope="module")
def watchdog():
    """A hang inside the C code cannot be interrupted from Python: end the process instead."""
    faulthandler.dump_traceback_later(120 + int(os.environ.get("WLPROXY_FUZZ_EXAMPLES", "0")) // 10, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_recordings_present():
    assert {"simple-shm", "subsurfaces", "flower", "wayland-info"} <= set(RECORDINGS)
    for chunks in RECORDINGS.values():
        assert {d for d, _, _ in chunks} == {REQUEST, EVENT}


class Outcome:
    """What a codec made of a stream: per direction, messages and forwarded ranges."""

    def __init__(self, mask: str):
        self.codec = Codec()
        if mask == "all":
            self.codec.intercept_all()
        elif mask == "some":
            self.codec.intercept("wl_surface", REQUEST, "commit", "attach")
            self.codec.intercept("wl_callback", EVENT)
            self.codec.intercept("wl_registry", REQUEST)
        self.buf = [bytearray(), bytearray()]
        self.base = [0, 0]
        self.fds = [0, 0]
        self.recs: list[list[tuple]] = [[], []]
        self.error: tuple | None = None

    def feed(self, d: int, data: bytes, nfds: int) -> None:
        if self.error is not None:
            return
        b = self.buf[d]
        b += data
        self.fds[d] += nfds
        recs, used = self.codec.feed(d, b, len(b), nfds)
        assert 0 <= used <= len(b)
        pos = 0
        for n, r in enumerate(recs):
            assert r.start == pos, "records must be contiguous from the buffer start"
            if r.kind == ERROR:
                assert n == len(recs) - 1, "an ERROR record is the last one"
                assert r.start == used
                assert r.code in (0, 1, 2, 3) and r.obj == 1
                self.error = (d, self.base[d] + r.start, r.code, self.codec.error_text())
                assert self.error[3], "an error comes with a message"
                return
            assert r.kind in (PASS, MSG) and r.length >= 8 and r.length % 4 == 0
            if r.kind == MSG:
                self._check_message(d, b, r)
            self.fds[d] -= r.nfds
            assert self.fds[d] >= 0, "records claim fds that never arrived"
            self._add(d, (r.kind, self.base[d] + r.start, r.length, r.obj, r.opcode, r.nfds))
            pos += r.length
        assert pos == used, "records cover exactly the consumed bytes"
        rest = len(b) - used
        if rest >= 8:  # what is left must be an incomplete message
            size = struct.unpack_from("=I", b, used + 4)[0] >> 16
            assert 8 <= size <= 4096 and size > rest and size % 4 == 0
        assert self.codec.pending_fds(d) == self.fds[d]
        del b[:used]
        self.base[d] += used

    def _check_message(self, d, b, r) -> None:
        iface, msg = TABLES.message(r.iface, d, r.opcode)
        data = bytes(b[r.start:r.start + r.length])
        assert wire.header(data) == (r.obj, r.opcode, r.length)
        args = wire.decode(msg, data, [-1] * msg.nfds)
        again, _ = wire.encode(r.obj, msg, args)
        assert len(again) == r.length, f"{iface.name}.{msg.name}: C and Python disagree on the layout"

    def _add(self, d: int, rec: tuple) -> None:
        lst = self.recs[d]
        if rec[0] == PASS and lst and lst[-1][0] == PASS and lst[-1][1] + lst[-1][2] == rec[1]:
            k, s, n, o, op, f = lst[-1]
            lst[-1] = (k, s, n + rec[2], o, op, f + rec[5])
        else:
            lst.append(rec)

    def summary(self) -> tuple:
        objects = tuple((i, (o.iface.name, o.version, o.zombie)) for i in range(0, 64)
                        if (o := self.codec.lookup(i)) is not None)
        server = tuple((i, o.iface.name) for i in range(SERVER_ID_START, SERVER_ID_START + 8)
                       if (o := self.codec.lookup(i)) is not None)
        return (self.recs[0], self.recs[1], self.error, objects, server, self.codec.object_count,
                self.codec.pending_fds(0), self.codec.pending_fds(1))


def run(chunks, mask: str = "all") -> Outcome:
    out = Outcome(mask)
    for d, data, nfds in chunks:
        out.feed(d, data, nfds)
    return out


def rechunk(chunks, cuts: list[int]):
    """Split each chunk at the given relative cut points; fds ride on the first piece."""
    out = []
    it = iter(cuts)
    for d, data, nfds in chunks:
        points = sorted({min(len(data), next(it, 0) % (len(data) + 1)) for _ in range(2)} | {0, len(data)})
        first = True
        for a, b in zip(points, points[1:]):
            out.append((d, data[a:b], nfds if first else 0))
            first = False
        if first:
            out.append((d, data, nfds))
    return out


def bytewise(chunks):
    out = []
    for d, data, nfds in chunks:
        for i in range(len(data)):
            out.append((d, data[i:i + 1], nfds if i == 0 else 0))
    return out


# -- real traffic ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_recorded_traffic_is_accepted_whole_and_bytewise(name):
    chunks = RECORDINGS[name]
    whole = run(chunks)
    assert whole.error is None, whole.error
    assert whole.buf == [b"", b""], "a recording ends on a message boundary"
    assert sum(len(r) for r in whole.recs) > 20
    assert bytewise(chunks) and run(bytewise(chunks)).summary() == whole.summary()


@SETTINGS
@given(name=st.sampled_from(sorted(RECORDINGS)), cuts=st.lists(st.integers(0, 1 << 16), max_size=800),
       mask=st.sampled_from(["all", "some", "none"]))
def test_recorded_traffic_any_chunking(name, cuts, mask):
    chunks = RECORDINGS[name]
    assert run(rechunk(chunks, cuts), mask).summary() == run(chunks, mask).summary()


INTERESTING = [0, 1, 2, 3, 4, 7, 8, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               SERVER_ID_START, SERVER_ID_START + 1, 0x00080001, 0x00040000, 0x10000000, 0x0FFC0000]


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(RECORDINGS)))
    chunks = [list(c) for c in RECORDINGS[name]]
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(0, len(chunks) - 1))
        d, data, nfds = chunks[k]
        data = bytearray(data)
        kind = draw(st.sampled_from(["flip", "word", "cut", "insert", "fds", "truncate"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "word" and len(data) >= 4:
            i = draw(st.integers(0, len(data) // 4 - 1)) * 4
            data[i:i + 4] = struct.pack("=I", draw(st.sampled_from(INTERESTING) | st.integers(0, 0xFFFFFFFF)))
        elif kind == "cut" and data:
            i = draw(st.integers(0, len(data) - 1))
            del data[i:i + draw(st.integers(1, 16))]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "fds":
            nfds = draw(st.integers(0, 3))
        elif kind == "truncate":
            chunks = chunks[:k + 1]
        if k < len(chunks):
            chunks[k] = [d, bytes(data), nfds]
    return [tuple(c) for c in chunks]


@SETTINGS
@given(chunks=mutated(), cuts=st.lists(st.integers(0, 1 << 16), max_size=400),
       mask=st.sampled_from(["all", "some"]))
def test_mutated_traffic(chunks, cuts, mask):
    whole = run(chunks, mask)
    assert run(rechunk(chunks, cuts), mask).summary() == whole.summary()


# -- structured random messages -------------------------------------------------------------

@st.composite
def random_stream(draw):
    """Messages with plausible headers and random bodies, after a valid start."""
    start = [(REQUEST, struct.pack("=III", 1, (12 << 16) | 1, 2), 0),  # get_registry(2)
             (REQUEST, struct.pack("=III", 1, (12 << 16) | 0, 3), 0)]  # sync(3)
    out = list(start)
    for _ in range(draw(st.integers(1, 12))):
        d = draw(st.sampled_from([REQUEST, EVENT]))
        obj = draw(st.sampled_from([1, 2, 3, 4, 5, 0, SERVER_ID_START]) | st.integers(0, 0xFFFFFFFF))
        op = draw(st.integers(0, 4) | st.integers(0, 0xFFFF))
        words = draw(st.lists(st.sampled_from(INTERESTING) | st.integers(0, 0xFFFFFFFF), max_size=12))
        body = b"".join(struct.pack("=I", w) for w in words)
        if draw(st.booleans()):
            body += draw(st.binary(max_size=24))
        size = draw(st.sampled_from([8 + len(body)]) | st.integers(0, 0xFFFF))
        out.append((d, struct.pack("=II", obj, (size << 16) | op) + body, draw(st.integers(0, 2))))
    return out


@SETTINGS
@given(chunks=random_stream(), cuts=st.lists(st.integers(0, 1 << 16), max_size=100))
def test_random_messages(chunks, cuts):
    whole = run(chunks)
    assert run(rechunk(chunks, cuts)).summary() == whole.summary()


@SETTINGS
@given(data=st.binary(max_size=600), d=st.sampled_from([REQUEST, EVENT]),
       cuts=st.lists(st.integers(0, 1 << 16), max_size=50))
def test_random_bytes(data, d, cuts):
    chunks = [(d, data, 0)]
    assert run(rechunk(chunks, cuts)).summary() == run(chunks).summary()
