"""Differential record of the C codec: everything ``wlc_feed`` says about a
fixed, seeded set of streams, to compare a build of the codec against another.

    .venv/bin/python tests/codec_diff.py record OUT.json [--scale N]
    .venv/bin/python tests/codec_diff.py compare OLD.json NEW.json

Streams: the recorded traffic (``bench/traffic/*.bin``) whole, in small
pieces and with tiny record buffers; the Wayland bytes inside the fuzz seeds
(``tests/fuzz/corpus/``: the DATA frames of each channel); mutations of the
recorded traffic; and structured random messages built from the XML
signatures, each argument now and then made wrong in one of the ways the
codec checks.  For every ``wlc_feed`` call the record keeps its return
value, ``consumed``, the raw records, the error text after an ERROR, the
pending fds, the live-object and message counts; at the end of a stream,
what ``wlc_lookup`` says about every id the stream may have touched.  The
file holds one SHA-256 per case (so a difference names its case) and the
number of messages fed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import struct
from collections import Counter
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from helpers_wire import read_traffic, traffic_files  # noqa: E402
from wlproxy._codec import ffi, lib  # noqa: E402
from wlproxy.core.codec import SERVER_ID_START, default_tables  # noqa: E402
from wlproxy.core.protocol import EVENT, REQUEST  # noqa: E402

TABLES = default_tables()
PROTO = TABLES.proto
CORPUS = HERE / "fuzz" / "corpus"
ERRORS: Counter = Counter()  # error texts seen, numbers and names taken out (which checks were reached)
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFEFFFFFF, SERVER_ID_START,
               SERVER_ID_START + 1, 0xFFFFFFFF, 0x00080001, 0x000C0000, 0x10000000]


class Run:
    """One connection; every observable result goes into a running hash."""

    def __init__(self, h, cap: int = 256, max_msg: int = 4096, max_objects: int = 1 << 20, mask: str = "none"):
        self.h = h
        self.conn = ffi.gc(lib.wlc_new(TABLES.c, max_msg, max_objects), lib.wlc_free)
        self.cap = cap
        self.recs = ffi.new("struct wlc_rec[]", cap)
        self.consumed = ffi.new("uint32_t *")
        self.obj = ffi.new("struct wlc_obj *")
        self.nmsgs = 0
        self.failed = False
        m = ffi.buffer(lib.wlc_mask(self.conn), TABLES.n_msgs)
        if mask == "all":
            m[:] = b"\x01" * TABLES.n_msgs
        elif mask == "some":  # every third message
            for i in range(0, TABLES.n_msgs, 3):
                m[i] = b"\x01"
        self.buf = [bytearray(), bytearray()]

    def feed(self, d: int, data: bytes, nfds: int) -> bool:
        """Append ``data`` to direction ``d``'s buffer and feed it; False after an ERROR."""
        b = self.buf[d]
        b += data
        while True:
            n = lib.wlc_feed(self.conn, d, ffi.from_buffer(b), len(b), nfds, self.recs, self.cap, self.consumed)
            nfds = 0
            used = self.consumed[0]
            raw = bytes(ffi.buffer(self.recs, n * ffi.sizeof("struct wlc_rec")))
            err = n and self.recs[n - 1].kind == lib.WLC_REC_ERROR
            self.h.update(struct.pack("<III", d, n, used) + raw)
            if err:
                text = ffi.string(lib.wlc_error(self.conn))
                self.h.update(text + b"\0")
                ERRORS[re.sub(rb"\b[a-z_0-9]+@\d+|'[^']*'|\b\d+\b|(is a|expected|exceeds the limit of) \w+", b"#", text)] += 1
            self.h.update(struct.pack("<IIIQQ", lib.wlc_pending_fds(self.conn, 0), lib.wlc_pending_fds(self.conn, 1),
                                      lib.wlc_object_count(self.conn), lib.wlc_message_count(self.conn, 0),
                                      lib.wlc_message_count(self.conn, 1)))
            self.nmsgs += sum(1 for i in range(n) if self.recs[i].kind != lib.WLC_REC_PASS)
            del b[:used]
            if err:
                self.failed = True
                return False
            if n < self.cap - 1:  # the buffer is done (else the records ran out: go on)
                return True

    def dump(self, ids) -> None:
        for i in ids:
            r = lib.wlc_lookup(self.conn, i, self.obj)
            self.h.update(struct.pack("<iIHBI", r, i, self.obj.iface, self.obj.state, self.obj.version))


def dump_ids(top: int = 400):
    return list(range(0, top)) + list(range(SERVER_ID_START, SERVER_ID_START + 64))


def count_msgs(data: bytes) -> int:
    n, pos = 0, 0
    while len(data) - pos >= 8:
        size = struct.unpack_from("<I", data, pos + 4)[0] >> 16
        if size < 8 or len(data) - pos < size:
            break
        pos += size
        n += 1
    return n


# -- the cases ---------------------------------------------------------------------

def case_recordings(results: dict, counter: list) -> None:
    for f in traffic_files():
        chunks = read_traffic(f)
        for mask in ("none", "all", "some"):
            for cap in (256, 2, 3, 7):
                h = hashlib.sha256()
                run = Run(h, cap=cap, mask=mask)
                for d, data, nfds in chunks:
                    run.feed(d, data, nfds)
                run.dump(dump_ids())
                results[f"traffic/{f.stem}/{mask}/cap{cap}"] = h.hexdigest()
                counter[0] += sum(count_msgs(c[1]) for c in chunks)
        rng = random.Random(f.stem)
        for k in range(20):  # the same bytes in random pieces (messages split across feeds)
            h = hashlib.sha256()
            run = Run(h, mask="some")
            for d, data, nfds in chunks:
                pos = 0
                while pos < len(data):
                    step = rng.choice([1, 3, 4, 8, 13, 64, 4096])
                    run.feed(d, data[pos:pos + step], nfds if pos == 0 else 0)
                    pos += step
            run.dump(dump_ids())
            results[f"traffic/{f.stem}/pieces{k}"] = h.hexdigest()


def corpus_streams(raw: bytes) -> dict[int, list[tuple[bytes, int]]]:
    """The Wayland bytes of each channel of a guest link stream, with its FD_SHM fds."""
    out: dict[int, list[tuple[bytes, int]]] = {}
    pos, fds = 0, {}
    while len(raw) - pos >= 12:
        length, ftype, _, ch = struct.unpack_from("<IHHI", raw, pos)
        payload = raw[pos + 12:pos + 12 + length]
        pos += 12 + length
        if ftype == 7:  # FD_SHM: the channel's next fd
            fds[ch] = fds.get(ch, 0) + 1
        elif ftype == 5:  # DATA
            out.setdefault(ch, []).append((payload, fds.pop(ch, 0)))
    return out


def case_corpus(results: dict, counter: list) -> None:
    for f in sorted(CORPUS.glob("*.bin")):
        raw = f.read_bytes()
        for ch, pieces in sorted(corpus_streams(raw).items()):
            for mask in ("none", "all"):
                h = hashlib.sha256()
                run = Run(h, mask=mask)
                for data, nfds in pieces:
                    run.feed(REQUEST, data, nfds)
                run.dump(dump_ids())
                results[f"corpus/{f.stem}/ch{ch}/{mask}"] = h.hexdigest()
                counter[0] += sum(count_msgs(p[0]) for p in pieces)
        # the whole link stream as if it were Wayland bytes, both ways
        for d in (REQUEST, EVENT):
            h = hashlib.sha256()
            run = Run(h)
            for start in range(0, min(len(raw), 256), 4):
                run = Run(h)
                run.feed(d, raw[start:], 3)
            results[f"corpus/{f.stem}/raw{d}"] = h.hexdigest()


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not b:
            b += rng.randbytes(4)
        op = rng.randrange(6)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and len(b) >= 4:
            i &= ~3
            i = min(i, len(b) - 4)
            b[i:i + 4] = struct.pack("<I", rng.choice(INTERESTING))
        elif op == 2:
            b[i] = rng.randrange(256)
        elif op == 3:
            del b[i:i + rng.choice([1, 4, 8])]
        elif op == 4:
            b[i:i] = rng.randbytes(rng.choice([1, 4, 8]))
        else:  # the size half of a header word
            i &= ~3
            if i + 8 <= len(b):
                b[i + 6:i + 8] = struct.pack("<H", rng.choice([0, 4, 8, 12, 16, 20, 6, 4092, 4096, 4100, 0xFFFC]))
    return bytes(b)


def case_mutations(results: dict, counter: list, n: int) -> None:
    recs = [read_traffic(f) for f in traffic_files()]
    rng = random.Random(14)
    for k in range(n):
        chunks = rng.choice(recs)
        j = rng.randrange(len(chunks))
        h = hashlib.sha256()
        run = Run(h, mask=rng.choice(["none", "all"]))
        for i, (d, data, nfds) in enumerate(chunks):
            if i == j:
                data = mutate(rng, data)
                if rng.random() < 0.2:
                    nfds = rng.choice([0, 1, 2, 5])
            if not run.feed(d, data, nfds):
                break
            counter[0] += count_msgs(data)
            if i > j + 8:
                break
        run.dump(dump_ids(120))
        results[f"mutation/{k}"] = h.hexdigest()


class Gen:
    """Structured messages from the XML signatures, against a known object map."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.ifaces = PROTO.interfaces
        self.objs: dict[int, object] = {1: PROTO["wl_display"]}
        self.next = {REQUEST: 2, EVENT: SERVER_ID_START}

    def populate(self, run: Run, n: int) -> None:
        r = self.rng
        for _ in range(n):
            d = REQUEST if r.random() < 0.7 else EVENT
            iface = r.choice(self.ifaces)
            oid = self.next[d]
            self.next[d] += 1
            if lib.wlc_insert(run.conn, oid, iface.index, r.randint(1, iface.version)) == 0:
                self.objs[oid] = iface

    def obj_of(self, want: str | None) -> int:
        r = self.rng
        pick = r.random()
        if pick < 0.05:
            return r.choice(INTERESTING)
        cands = [i for i, f in self.objs.items() if want is None or f.name == want]
        if cands and pick < 0.9:
            return r.choice(cands)
        return r.choice(list(self.objs))

    def string(self, ok: bool) -> bytes:
        r = self.rng
        s = r.choice([b"", b"x", b"abc", b"wl_surface", b"hello world!", r.randbytes(r.randrange(20))]) + b"\0"
        if ok or r.random() < 0.5:
            return struct.pack("<I", len(s)) + s + b"\0" * (-len(s) % 4)
        mode = r.randrange(5)
        if mode == 0:
            return struct.pack("<I", 0)
        if mode == 1:  # no NUL at the end
            s = s[:-1] + b"z"
            return struct.pack("<I", len(s)) + s + b"\0" * (-len(s) % 4)
        if mode == 2:  # longer than the message
            return struct.pack("<I", r.choice([len(s) + 4, 4096, 0xFFFFFFF0, 0xFFFFFFFF])) + s
        if mode == 3:  # no padding
            return struct.pack("<I", len(s)) + s
        return struct.pack("<I", len(s) + 1) + s + b"\0" * (-len(s) % 4)

    def new_id(self, d: int, ok: bool) -> int:
        r = self.rng
        nxt = self.next[d]
        if ok or r.random() < 0.4:
            self.next[d] += 1
            return nxt
        return r.choice([0, nxt + 1, nxt - 1, 1, self.next[1 - d], r.choice(list(self.objs)), *INTERESTING])

    def message(self, d: int) -> tuple[bytes, int]:
        r = self.rng
        bad = r.random() < 0.2  # then each argument is wrong with some chance
        oid = self.obj_of(None)
        iface = self.objs.get(oid) or r.choice(self.ifaces)
        msgs = iface.messages(d)
        if not msgs or r.random() < 0.02:
            return struct.pack("<II", oid, (8 << 16) | r.randrange(max(1, len(msgs)) + 3)), 0
        m = r.choice(msgs)
        body = bytearray()
        for a in m.args:
            ok = not bad or r.random() < 0.7
            if a.type in ("int", "uint", "fixed"):
                body += struct.pack("<I", r.choice(INTERESTING))
            elif a.type == "fd":
                continue
            elif a.type == "string":
                body += struct.pack("<I", 0) if a.allow_null and r.random() < 0.2 else self.string(ok)
            elif a.type == "array":
                if ok or r.random() < 0.5:
                    n = r.choice([0, 1, 4, 7, 16])
                    body += struct.pack("<I", n) + r.randbytes(n) + b"\0" * (-n % 4)
                else:
                    body += struct.pack("<I", r.choice([1, 5, 4096, 0xFFFFFFFF]))
            elif a.type == "object":
                if a.allow_null and r.random() < 0.2 or (not ok and r.random() < 0.3):
                    body += struct.pack("<I", 0)
                else:
                    body += struct.pack("<I", self.obj_of(a.interface if ok else None))
            elif a.type == "new_id":
                if not a.interface:
                    name = r.choice(self.ifaces).name.encode()
                    if not ok and r.random() < 0.5:
                        name = r.choice([b"", b"nope_v9", name + b"\0x", name[:-1], b"wl_display", b"y" * 600])
                    if not ok and r.random() < 0.1:
                        body += struct.pack("<I", 0)
                    else:
                        s = name + b"\0"
                        body += struct.pack("<I", len(s)) + s + b"\0" * (-len(s) % 4)
                    known = PROTO[name.decode()] if name.decode("latin1") in PROTO else None
                    ver = r.randint(1, known.version) if known else 1
                    if not ok and r.random() < 0.5:
                        ver = r.choice([0, ver + 1, 0xFFFFFFFF])
                    body += struct.pack("<I", ver)
                    if not ok and r.random() < 0.2:
                        continue  # the id itself is missing
                nid = self.new_id(d, ok)
                body += struct.pack("<I", nid)
                target = a.interface or (name.decode("latin1") if name.decode("latin1") in PROTO else None)
                if target:
                    self.objs.setdefault(nid, PROTO[target])
        if bad and r.random() < 0.15:
            body = body[:r.randrange(len(body) + 1) & ~3] if r.random() < 0.5 else body + b"\0" * 4
        size = 8 + len(body)
        if bad and r.random() < 0.03:
            size = r.choice([0, 4, 6, size + 2, 4100, 0xFFFC])
        return struct.pack("<II", oid, ((size & 0xFFFF) << 16) | m.opcode) + body, m.nfds


def case_random(results: dict, counter: list, n_streams: int) -> None:
    rng = random.Random(5)
    for k in range(n_streams):
        h = hashlib.sha256()
        max_objects = rng.choice([1 << 20, 1 << 20, 12, 40])
        max_msg = rng.choice([4096, 4096, 64])
        run = Run(h, max_msg=max_msg, max_objects=max_objects, mask=rng.choice(["none", "all", "some"]),
                  cap=rng.choice([256, 256, 4]))
        gen = Gen(rng)
        gen.populate(run, rng.choice([0, 10, 60]))
        for _ in range(rng.randint(5, 40)):
            d = REQUEST if rng.random() < 0.6 else EVENT
            batch, nfds = b"", 0
            for _ in range(rng.choice([1, 1, 2, 5])):
                msg, f = gen.message(d)
                batch += msg
                nfds += f
                counter[0] += 1
            if rng.random() < 0.3:
                nfds = rng.choice([0, max(0, nfds - 1), nfds + 1])
            if not run.feed(d, batch, nfds):
                break
        run.dump(sorted(i for i in gen.objs if i < SERVER_ID_START + 200)[:400])
        results[f"random/{k}"] = h.hexdigest()


def record(scale: int) -> dict:
    results: dict[str, str] = {}
    counter = [0]
    case_recordings(results, counter)
    case_corpus(results, counter)
    case_mutations(results, counter, 300 * scale)
    case_random(results, counter, 1000 * scale)
    total = hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(results.items())).encode()).hexdigest()
    return {"messages": counter[0], "cases": len(results), "total": total, "results": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out")
    rec.add_argument("--scale", type=int, default=10)
    cmp = sub.add_parser("compare")
    cmp.add_argument("old")
    cmp.add_argument("new")
    a = p.parse_args()
    if a.cmd == "record":
        out = record(a.scale)
        Path(a.out).write_text(json.dumps(out, indent=0, sort_keys=True))
        print(f"{out['cases']} cases, {out['messages']} messages fed, total {out['total']}")
        for text, n in sorted(ERRORS.items()):
            print(f"{n:8d}  {text.decode(errors='replace')}", flush=True)
    else:
        old = json.loads(Path(a.old).read_text())
        new = json.loads(Path(a.new).read_text())
        diff = [k for k in old["results"] if old["results"][k] != new["results"].get(k)]
        print(f"{len(old['results'])} cases, {old['messages']} messages; {len(diff)} differ")
        for k in diff[:20]:
            print("  differs:", k)
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
