"""``wlproxy trace`` against libwayland's own ``WAYLAND_DEBUG=1`` output.

Real clients (wayland-info, weston-simple-shm, weston-subsurfaces,
weston-flower) run through ``wlproxy trace --once -- CLIENT`` in front of a
headless weston, with ``WAYLAND_DEBUG=1`` in the client's environment.  What
the trace printed must be what libwayland-client printed on the client side:
same messages, same arguments, same order.  Timestamps and fd numbers are
left out of the comparison (they differ between processes by nature).

What libwayland-client prints is not the wire order in a few documented ways,
and the comparison allows exactly these (``compare`` below), nothing else:

1. Requests are printed when marshalled, before they are flushed.  Requests
   form one total order and must be equal, except that the client may print
   a tail of requests it never flushed before exiting (wayland-info destroys
   objects and disconnects without a flush; a client killed by ``timeout``
   too).  Those unsent requests must all come after the last event the
   client dispatched.
2. Events are printed when dispatched, not when read.  libwayland dispatches
   wl_display events (error, delete_id) from their own queue ahead of the
   other events read in the same batch, so wl_display@1's events are
   compared as their own ordered sequence and all other events as another.
   A client with several event queues (Mesa's EGL in weston-subsurfaces
   keeps its own queues, created through proxy wrappers that the debug log
   cannot show) dispatches each queue in wire order but interleaves queues
   freely: for such a client the order of events must be explainable by at
   most ``queues`` event queues (every pair of events dispatched out of wire
   order must be on objects of different queues); for single-queue clients
   (``queues=1``) it is one total order.
3. Events for objects the client has destroyed, or never attached a
   listener to (toytoolkit's wl_shm), are dropped silently by libwayland,
   and a client that exits leaves events unread.  So per object lifetime (an
   id between two creations) the client's printed events must be a prefix of
   the traced ones, and each traced event the client did not print needs a
   reason: the client printed no event of that object at all; or (one queue)
   the client had sent the object's destructor request before the next
   event it dispatched after this one on the wire, or it dispatched nothing
   later; or (several queues) the client sent the destructor, or the event
   is later on the wire than everything the client dispatched from some
   queue the object can be on.  No traced event may follow a destructor
   event (wl_callback.done) of the same object.
4. An untyped new_id (wl_registry.bind) prints as ``"iface", version, new id
   [unknown]@N`` on both sides: no normalisation, it must simply match.

Anything else (a missing, extra, reordered or altered message) fails;
``test_comparison_detects`` checks that on mutated real traces.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from wlproxy.core.protocol import load
from wlproxy.tools.weston import Weston, weston_available

ROOT = Path(__file__).resolve().parents[2]

LINE = re.compile(r"^\[\s*\d+\.\d{3}\] (?P<sent> -> )?(?P<iface>[\w\[\]]+)@(?P<obj>\d+)\.(?P<name>\w+)\((?P<args>.*)\)$")
FD = re.compile(r"\bfd -?\d+\b")
NEW_ID = re.compile(r"new id [^@,]+@(\d+)")
_P = load()
DESTRUCTORS = {(i.name, m.name) for i in _P.interfaces for m in i.requests if m.destructor}
DESTRUCTOR_EVENTS = {(i.name, m.name) for i in _P.interfaces for m in i.events if m.destructor}


@dataclass(frozen=True)
class Line:
    sent: bool
    iface: str
    obj: int
    name: str
    args: str

    def __str__(self) -> str:
        return f"{'-> ' if self.sent else ''}{self.iface}@{self.obj}.{self.name}({self.args})"


def parse(text: str) -> list[Line]:
    """The WAYLAND_DEBUG lines of ``text``, timestamps dropped and fd numbers blanked."""
    out = []
    for raw_line in text.splitlines():
        m = LINE.match(raw_line)
        if m:
            out.append(Line(bool(m["sent"]), m["iface"], int(m["obj"]), m["name"], FD.sub("fd", m["args"])))
    return out


def _label(lines: list[Line]) -> list[tuple[int, int]]:
    """Each line's object lifetime: (id, how many times that id was created before)."""
    gen: dict[int, int] = {}
    out = []
    for ln in lines:
        out.append((ln.obj, gen.get(ln.obj, 0)))
        for new in NEW_ID.findall(ln.args):
            gen[int(new)] = gen.get(int(new), 0) + 1
    return out


def _colouring(nodes: list, edges: dict, k: int, budget: int = 200_000) -> dict | None:
    """A colouring of the graph with at most k colours, or None (DSatur-ordered backtracking)."""
    colour: dict = {}
    steps = [0]

    def pick():
        best, key = None, None
        for n in nodes:
            if n in colour:
                continue
            cand = (len({colour[m] for m in edges[n] if m in colour}), len(edges[n]))
            if key is None or cand > key:
                best, key = n, cand
        return best

    def bt() -> bool:
        n = pick()
        if n is None:
            return True
        steps[0] += 1
        if steps[0] > budget:
            raise AssertionError("event order check: search budget exhausted")
        used = {colour[m] for m in edges[n] if m in colour}
        for c in range(k):
            if c not in used:
                colour[n] = c
                if bt():
                    return True
                del colour[n]
        return False

    return dict(colour) if bt() else None


def compare(traced: list[Line], client: list[Line], queues: int = 1) -> dict:
    """Assert that ``traced`` is what libwayland printed as ``client``; see the module doc."""
    # 1. requests: one total order; the client may have an unflushed tail
    treq = [ln for ln in traced if ln.sent]
    creq = [ln for ln in client if ln.sent]
    assert treq, "no requests traced"
    for i, (a, b) in enumerate(zip(treq, creq)):
        assert a == b, f"request {i}: traced {a}, client printed {b}"
    assert len(treq) <= len(creq), f"traced request not printed by the client: {treq[len(creq)]}"
    last_event = max((i for i, ln in enumerate(client) if not ln.sent), default=-1)
    if len(creq) > len(treq):
        first_unsent = [i for i, ln in enumerate(client) if ln.sent][len(treq)]
        assert first_unsent > last_event, (
            f"client request {creq[len(treq)]} missing from the trace, and the client dispatched events after it")

    # per object lifetime: the traced events, and where the client destroyed it
    tev: dict[tuple[int, int], list[tuple[int, Line]]] = {}
    for i, (ln, life) in enumerate(zip(traced, _label(traced))):
        if not ln.sent:
            tev.setdefault(life, []).append((i, ln))
    for life, evs in tev.items():
        ends = [n for n, (_, ln) in enumerate(evs) if (ln.iface, ln.name) in DESTRUCTOR_EVENTS]
        assert not ends or ends[0] == len(evs) - 1, f"traced event after destructor event {evs[ends[0]][1]}"
    destroyed: dict[tuple[int, int], int] = {}  # lifetime -> client position of its destructor request
    clabels = _label(client)
    for p, (ln, life) in enumerate(zip(client, clabels)):
        if ln.sent and (ln.iface, ln.name) in DESTRUCTORS:
            destroyed.setdefault(life, p)

    # 3. per object lifetime, the client's events are a prefix of the traced ones
    seen: dict[tuple[int, int], int] = {}
    mapped: list[tuple[int, int, tuple[int, int]]] = []  # (client position, traced index, lifetime)
    for p, (ln, life) in enumerate(zip(client, clabels)):
        if ln.sent:
            continue
        k = seen.get(life, 0)
        seen[life] = k + 1
        cands = tev.get(life, [])
        assert k < len(cands), f"client dispatched {ln} (event {k} of that object) which the trace lacks"
        assert cands[k][1] == ln, f"event {k} of {ln.iface}@{ln.obj}: traced {cands[k][1]}, client printed {ln}"
        mapped.append((p, cands[k][0], life))

    # 2. wl_display@1 events are in order (the prefix rule); all others must be
    #    explainable by at most `queues` event queues
    rest = [(i, life) for _, i, life in mapped if life[0] != 1]
    edges: dict[tuple[int, int], set] = {}
    for a in range(len(rest)):
        ia, la = rest[a]
        for b in range(a + 1, len(rest)):
            ib, lb = rest[b]
            if ib < ia and la != lb:  # dispatched in the opposite order of the wire
                edges.setdefault(la, set()).add(lb)
                edges.setdefault(lb, set()).add(la)
    colour: dict = {}
    if edges:
        assert queues > 1, (
            "events dispatched out of wire order in a single-queue client, e.g. "
            + next(f"{tev[la][0][1]} / {tev[lb][0][1]}" for la, nb in edges.items() for lb in nb))
        found = _colouring(list(edges), edges, queues)
        assert found is not None, f"event order needs more than {queues} event queues"
        colour = found

    # 3b. every traced event the client did not print needs a reason
    dropped = 0
    for life, evs in tev.items():
        for i, ln in evs[seen.get(life, 0):]:
            dropped += 1
            if seen.get(life, 0) == 0:
                continue  # no event of this object printed: no listener, or destroyed/exited first
            if queues == 1 or life[0] == 1:
                # where the client would have dispatched it: before the first event of
                # the same queue that came later on the wire
                same = [p for p, j, lf in mapped if j > i and (lf[0] == 1) == (life[0] == 1)]
                if not same:
                    continue  # the client dispatched nothing later: it had stopped
                assert destroyed.get(life, same[0]) < same[0], (
                    f"traced {ln} not printed by the client, which neither destroyed "
                    f"{ln.iface}@{ln.obj} before nor stopped dispatching")
            else:
                if life in destroyed:
                    continue
                last: dict[int, int] = {}
                for _, j, lf in mapped:
                    if lf in colour:
                        last[colour[lf]] = max(last.get(colour[lf], -1), j)
                banned = {colour[n] for n in edges.get(life, ())}
                assert any(c not in banned and i > last.get(c, -1) for c in range(queues)), (
                    f"traced {ln} not printed by the client, though it dispatched later events of every "
                    "queue it could be on")
    return {"requests": len(treq), "unsent": len(creq) - len(treq), "events": len(mapped),
            "dropped": dropped, "out_of_order_objects": len(edges)}


# -- running clients through the trace ----------------------------------------------

@pytest.fixture(scope="module")
def weston_for_trace():
    reason = weston_available()
    if reason:
        pytest.skip(reason)
    with Weston(debug=False) as w:
        yield w


def _env(w: Weston, **extra: str) -> dict[str, str]:
    env = w.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_traced(w: Weston, tmp: Path, name: str, cmd: list[str], *trace_args: str) -> tuple[str, str, str]:
    """Run ``cmd`` via ``wlproxy trace --once -- cmd`` with WAYLAND_DEBUG=1.

    Returns (trace output, the client's stderr, the client's stdout)."""
    out = tmp / f"{name}.trace"
    err = tmp / f"{name}.client-stderr"
    # the client's stderr goes to its own file, apart from the trace's logging
    wrapped = ["sh", "-c", 'exec "$@" 2>"$0"', str(err), *cmd]
    r = subprocess.run([sys.executable, "-m", "wlproxy", "trace", "--socket", f"trace-{name}", "-o", str(out),
                        "--once", *trace_args, "--", *wrapped],
                       env=_env(w, WAYLAND_DEBUG="1"), capture_output=True, text=True, timeout=30)
    assert "Traceback" not in r.stderr, r.stderr
    return out.read_text(), err.read_text(), r.stdout


CLIENTS = {
    # name: (command, event queues the client uses)
    "wayland-info": (["wayland-info"], 1),
    # --foreground: SIGINT to simple-shm only (its handler is SA_RESETHAND, and a second
    # SIGINT that timeout sends its process group would kill it before its clean exit)
    "simple-shm": (["timeout", "--foreground", "-s", "INT", "2", "weston-simple-shm"], 1),
    # main queue plus Mesa EGL's display queue and its per-surface queue
    "subsurfaces": (["timeout", "2", "weston-subsurfaces"], 3),
    "flower": (["timeout", "1.5", "weston-flower"], 1),
}


@pytest.fixture(scope="module")
def runs(weston_for_trace, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trace")
    cache: dict[str, tuple[str, str, str]] = {}

    def get(name: str) -> tuple[str, str, str]:
        if name not in cache:
            cache[name] = run_traced(weston_for_trace, tmp, name, CLIENTS[name][0])
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CLIENTS))
def test_trace_equals_client_debug_output(runs, name):
    traced_text, client_text, _ = runs(name)
    traced, client = parse(traced_text), parse(client_text)
    assert len(client) > 20, f"client printed too little:\n{client_text[-2000:]}"
    stats = compare(traced, client, queues=CLIENTS[name][1])
    # every message a client prints passed through the trace; the allowances are small
    assert stats["events"] > 20 and stats["requests"] > 5
    # the quirk of rule 4 is actually exercised: binds print untyped new ids
    binds = [str(ln) for ln in traced if ln.name == "bind"]
    assert binds and all(re.search(r'\d+, "\w+", \d+, new id \[unknown\]@\d+$', b[:-1]) for b in binds)


def test_trace_of_animated_client_covers_many_frames(runs):
    traced = parse(runs("simple-shm")[0])
    frames = [ln for ln in traced if ln.iface == "wl_callback" and ln.name == "done" and ln.args != "0"]
    commits = [ln for ln in traced if ln.sent and ln.name == "commit"]
    assert len(frames) > 10 and len(commits) > 10
    # shm buffers carry fds: the trace prints them in libwayland's form
    assert any(ln.name == "create_pool" and ", fd, " in ln.args for ln in traced)


def _info_globals(text: str) -> list[str]:
    return re.findall(r"interface: '(\w+)',\s+version:\s+(\d+),\s+name:\s+(\d+)", text)


def test_wayland_info_same_through_trace(weston_for_trace, runs):
    direct = subprocess.run(["wayland-info"], env=weston_for_trace.env(), capture_output=True, text=True,
                            timeout=20)
    assert direct.returncode == 0, direct.stderr
    _, _, through = runs("wayland-info")
    gl = _info_globals(direct.stdout)
    assert len(gl) > 10 and ("wl_compositor", "4", "1") in [tuple(g) for g in gl]
    assert _info_globals(through) == gl
    assert through == direct.stdout


def test_filter_exclude_and_summary(weston_for_trace, tmp_path):
    text, client_text, _ = run_traced(weston_for_trace, tmp_path, "filtered", ["wayland-info"],
                                      "--filter", "wl_registry", "--filter", "wl_display.*", "--filter", "*.done",
                                      "--exclude", "wl_registry.bind", "--summary")

    def wanted(ln: Line) -> bool:
        if ln.iface == "wl_registry":
            return ln.name != "bind"
        return ln.iface == "wl_display" or ln.name == "done"

    filtered = parse(text)
    client = parse(client_text)
    assert filtered and all(wanted(ln) for ln in filtered)
    assert {ln.iface for ln in filtered} >= {"wl_registry", "wl_display", "wl_callback", "wl_output"}
    # the filtered trace is the client's own debug output, filtered the same way
    compare(filtered, [ln for ln in client if wanted(ln)])
    # the summary counts every message, printed or not
    counts = {name: int(n) for n, name in re.findall(r"^\s+(\d+)\s+(\S+\.\S+)$", text, re.M)}
    for key in ("wl_registry.global", "wl_registry.bind", "wl_display.get_registry", "wl_output.geometry"):
        assert counts[key] == sum(1 for ln in client if f"{ln.iface}.{ln.name}" == key) > 0, key
    total = re.search(r"^(\d+) messages;", text, re.M)
    assert total and int(total.group(1)) == sum(counts.values())
    assert int(total.group(1)) >= len([ln for ln in client if not ln.sent]) + 5


# -- the comparison itself must catch a broken trace -------------------------------------

def _mutations(traced: list[Line], client: list[Line]):
    """(description, mutated trace) pairs, each a bug the comparison must catch."""
    printed = set(client)
    ev_idx = [i for i, ln in enumerate(traced) if not ln.sent and ln.obj != 1 and ln in printed]
    req_idx = [i for i, ln in enumerate(traced) if ln.sent]
    mid_ev = ev_idx[len(ev_idx) // 2]
    mid_req = req_idx[len(req_idx) // 2]
    t = list(traced)
    yield "missing event", t[:mid_ev] + t[mid_ev + 1:]
    t = list(traced)
    yield "extra event", t[:mid_ev] + [t[mid_ev]] + t[mid_ev:]
    t = list(traced)
    ln = t[mid_ev]
    t[mid_ev] = Line(ln.sent, ln.iface, ln.obj, ln.name, ln.args + "1" if ln.args else "1")
    yield "altered event", t
    # two events on different objects, both dispatched by the client, swapped
    for a, b in zip(ev_idx, ev_idx[1:]):
        if b == a + 1 and traced[a].obj != traced[b].obj and a > mid_ev:
            t = list(traced)
            t[a], t[b] = t[b], t[a]
            yield "reordered events", t
            break
    # one more event at the end of an object's life, with later events dispatched
    labels = _label(traced)
    last: dict = {}
    for i, (ln, life) in enumerate(zip(traced, labels)):
        if not ln.sent and ln.obj != 1 and (ln.iface, ln.name) not in DESTRUCTOR_EVENTS:
            last[life] = i
    for life, i in last.items():
        if traced[i] in printed and i < ev_idx[-1] - 5:
            t = list(traced)
            yield "extra event ending an object's life", t[:i + 1] + [t[i]] + t[i + 1:]
            break
    t = list(traced)
    yield "missing request", t[:mid_req] + t[mid_req + 1:]
    t = list(traced)
    yield "extra request", t[:mid_req] + [t[mid_req]] + t[mid_req:]
    t = list(traced)
    ln = t[mid_req]
    t[mid_req] = Line(ln.sent, ln.iface, ln.obj, ln.name + "x", ln.args)
    yield "altered request", t
    for a, b in zip(req_idx, req_idx[1:]):
        if a > mid_req and traced[a] != traced[b]:
            t = list(traced)
            t[a], t[b] = t[b], t[a]
            yield "reordered requests", t
            break
    # a wl_display event moved ahead of its neighbour delete_id
    dels = [i for i, ln in enumerate(traced) if ln.obj == 1 and not ln.sent and ln in printed]
    if len(dels) >= 2 and traced[dels[0]] != traced[dels[1]]:
        t = list(traced)
        t[dels[0]], t[dels[1]] = t[dels[1]], t[dels[0]]
        yield "reordered wl_display events", t


@pytest.mark.parametrize("name", ["simple-shm", "flower"])
def test_comparison_detects(runs, name):
    traced_text, client_text, _ = runs(name)
    traced, client = parse(traced_text), parse(client_text)
    compare(traced, client)  # the unmutated run passes
    kinds = []
    for what, mutated in _mutations(traced, client):
        kinds.append(what)
        with pytest.raises(AssertionError):
            compare(mutated, client)
            pytest.fail(f"comparison accepted a trace with a {what}")
    assert {"missing event", "extra event", "altered event", "reordered events", "missing request",
            "extra event ending an object's life",
            "extra request", "altered request", "reordered requests"} <= set(kinds)
