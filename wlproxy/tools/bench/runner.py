"""``wlproxy bench``: runs the scenarios through every configuration, interleaved.

Configurations (see :data:`CONFIGS`): the client talks to weston itself
(direct), through the split proxy (wlproxy: guest and host halves as separate
processes over a Unix-socket link ``.../vsock_6000``), through waypipe
(``waypipe client`` + ``waypipe server -- CLIENT``), or the floor: the same
bytes over the same kind of socket by the simplest sender and receiver.

Each (scenario variant) runs in rounds; a round runs one batch per
configuration, in the order direct, wlproxy, waypipe, floor, so that machine
noise hits all of them alike.  Clients are started once per variant group and
kept across rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from wlproxy.tools.bench import procstat
from wlproxy.tools.bench.placement import Placement
from wlproxy.cli import UserError

CONFIGS = ("direct", "wlproxy", "waypipe", "floor", "relays")
SCENARIOS = ("frame", "roundtrip", "storm", "clients")
SIZES = ((256, 256), (1920, 1080), (3840, 2160))
DAMAGES = (1.0, 0.25, 0.05)
CONTENTS = ("changed", "identical")
OUTPUT = (320, 240)  # weston's output: small, so that repainting stays cheap
STORM_REQUESTS = 1000
CLIENTS = 8


@dataclass(frozen=True)
class Variant:
    scenario: str
    key: str
    width: int = 0
    height: int = 0
    damage: float = 1.0
    content: str = "changed"


@dataclass
class Plan:
    """How many samples: per batch, rounds, warm-up frames."""

    rounds: int = 4
    frames: int = 25          # frame scenario, per batch
    warmup_first: int = 12    # frames before the first batch of a variant (buffers settle)
    warmup: int = 2           # frames before every later batch
    roundtrips: int = 250
    storm_frames: int = 20
    interactive: int = 250    # clients: interactive round trips per batch
    interval: float = 0.001   # seconds between round trips
    clients_interval: float = 0.004


QUICK = Plan(rounds=2, frames=6, warmup_first=10, warmup=2, roundtrips=60, storm_frames=5, interactive=60)


def frame_key(w: int, h: int, damage: float, content: str) -> str:
    return f"frame {w}x{h} {round(damage * 100)}% {content}"


def variants(scenarios: list[str], quick: bool) -> list[Variant]:
    out: list[Variant] = []
    for sc in scenarios:
        if sc == "frame":
            if quick:
                combos = [(256, 256, 1.0, "changed"), (1920, 1080, 1.0, "changed"), (1920, 1080, 0.05, "identical")]
            else:
                combos = [(w, h, d, c) for (w, h) in SIZES for d in DAMAGES for c in CONTENTS]
            out += [Variant("frame", frame_key(w, h, d, c), w, h, d, c) for (w, h, d, c) in combos]
        elif sc == "roundtrip":
            out.append(Variant("roundtrip", "roundtrip"))
        elif sc == "storm":
            out.append(Variant("storm", f"storm {STORM_REQUESTS} requests", 256, 256, 0.0625, "changed"))
        elif sc == "clients":
            out.append(Variant("clients", f"clients {CLIENTS}, one streaming 1920x1080", 1920, 1080))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"scenarios to run (default: all of {', '.join(SCENARIOS)})")
    p.add_argument("--quick", action="store_true", help="a small set with few samples (for CI)")
    p.add_argument("--configs", default=",".join(CONFIGS), metavar="LIST",
                   help="configurations, comma-separated (default: %(default)s; relays: two minimal byte "
                   "relays in front of the compositor, the floor of a two-process proxy, roundtrip only)")
    p.add_argument("--display", metavar="NAME",
                   help="use this running compositor (socket name or path) instead of a private headless weston")
    p.add_argument("--only", metavar="TEXT", action="append",
                   help="run only the variants whose name contains TEXT (repeatable), e.g. --only 1920x1080")
    p.add_argument("--rounds", type=int, help="rounds of interleaved batches")
    p.add_argument("--frames", type=int, help="frames per batch (frame scenario)")
    p.add_argument("--out", default="bench/results", metavar="DIR",
                   help="where the JSON, PNG and table go (default: %(default)s)")
    p.add_argument("--name", help="file name stem of the outputs (default: bench, or quick with --quick)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-placement", action="store_true",
                   help="let the scheduler place every process (default: the client and the appvm-side "
                   "process on the first half of the CPUs, the compositor and the host-side process on "
                   "the second, as in a deployment; see bench/README.md)")


# -- processes -------------------------------------------------------------------


def _source_env(env: dict[str, str]) -> dict[str, str]:
    from wlproxy.tools.pair import _env_with_source

    return _env_with_source(env)


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Config:
    """One way for a client to reach the compositor."""

    name = "?"
    scenarios = frozenset(SCENARIOS)

    def __init__(self, bench: "Bench"):
        self.bench = bench
        self.work = bench.work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.clients: list = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def client_argv(self) -> list[str]:
        return [sys.executable, "-m", "wlproxy.tools.bench.client"]

    def client_env(self) -> dict[str, str]:
        return _source_env(self.bench.compositor_env)

    def spawn(self):
        from wlproxy.tools.clients import ClientProcess

        n = len(self.clients)
        c = ClientProcess(self.client_argv(), self.client_env(), stderr_path=self.work / f"client-{n}.log")
        self.clients.append(c)
        self.place()
        return c

    def place(self) -> None:
        """The client and the proxy processes onto their side's CPUs (with placement on)."""
        pl = self.bench.placement
        if pl is None:
            return
        sides = self.sides()
        sides["vm"] = sides.get("vm", []) + [p for c in self.clients if c.proc.poll() is None
                                             for p in procstat.tree(c.proc.pid)]
        seen = self.bench.affinity.setdefault(self.name, {})
        for side, pids in sides.items():
            pl.pin(side, pids)
            seen[side] = sorted(set(seen.get(side, [])) | procstat.affinity(pids))

    def sides(self) -> dict[str, list[int]]:
        """Proxy processes, by side: 'vm' (the client's side) and 'host' (the compositor's)."""
        return {}


class Direct(Config):
    name = "direct"


class WlproxyConfig(Config):
    name = "wlproxy"

    def start(self) -> None:
        from wlproxy.tools.pair import ProxyPair

        self.pair = ProxyPair(self.bench.compositor_env, base_dir=self.work).start()

    def stop(self) -> None:
        self.pair.stop()

    def client_env(self) -> dict[str, str]:
        return self.pair.env(self.bench.compositor_env)

    def sides(self) -> dict[str, list[int]]:
        return {"vm": [self.pair.guest.proc.pid], "host": [self.pair.host.proc.pid]}


class Waypipe(Config):
    name = "waypipe"

    def start(self) -> None:
        self.socket = self.work / "waypipe.sock"
        self.runtime = self.work / "runtime"
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        self.log = open(self.work / "waypipe-client.log", "ab")
        self.proc = subprocess.Popen(["waypipe", "--socket", str(self.socket), "client"],
                                     env=self.bench.compositor_env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"waypipe client did not start: {(self.work / 'waypipe-client.log').read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()

    def client_argv(self) -> list[str]:
        return ["waypipe", "--socket", str(self.socket), "server", "--", *super().client_argv()]

    def client_env(self) -> dict[str, str]:
        env = _source_env(self.bench.compositor_env)
        env.pop("WAYLAND_DISPLAY", None)
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        return env

    def sides(self) -> dict[str, list[int]]:
        apps = [p for p in self._all_pids() if _is_bench_client(p)]
        vm: list[int] = []
        for c in self.clients:
            if c.proc.poll() is None:
                vm += procstat.tree(c.proc.pid, exclude=apps)
        return {"vm": vm, "host": procstat.tree(self.proc.pid)}

    def _all_pids(self) -> list[int]:
        out: list[int] = []
        for c in self.clients:
            if c.proc.poll() is None:
                out += procstat.tree(c.proc.pid)
        return out


def _is_bench_client(pid: int) -> bool:
    """The benchmark client itself (not the waypipe server whose argv names it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"waypipe" not in os.path.basename(argv[0]) and b"wlproxy.tools.bench.client" in argv


class Floor(Config):
    name = "floor"

    def start(self) -> None:
        self.socket = self.work / "floor.sock"
        self.log = open(self.work / "floor-receiver.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wlproxy.tools.bench.floor", "receive", str(self.socket)],
                                     env=_source_env(dict(os.environ)), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("floor receiver did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        for pid in procstat.tree(self.proc.pid)[1:]:
            try:
                os.kill(pid, 15)
            except OSError:
                pass
        _stop(self.proc)
        self.log.close()

    def client_argv(self) -> list[str]:
        return [sys.executable, "-m", "wlproxy.tools.bench.floor", "send", str(self.socket)]

    def client_env(self) -> dict[str, str]:
        return _source_env(dict(os.environ))

    def sides(self) -> dict[str, list[int]]:
        return {"vm": [c.proc.pid for c in self.clients if c.proc.poll() is None],
                "host": procstat.tree(self.proc.pid)}


class Relays(Config):
    """Two minimal byte relays in a row in front of the compositor: the floor
    of any two-process proxy's round trip (roundtrip scenario only)."""

    name = "relays"
    scenarios = frozenset({"roundtrip"})

    def start(self) -> None:
        env = self.bench.compositor_env
        display = env.get("WAYLAND_DISPLAY", "wayland-0")
        target = display if os.path.isabs(display) else os.path.join(env.get("XDG_RUNTIME_DIR", ""), display)
        self.log = open(self.work / "relays.log", "ab")
        self.procs = []
        for name in ("host", "vm"):
            sock = self.work / f"relay-{name}.sock"
            self.procs.append(subprocess.Popen([sys.executable, "-m", "wlproxy.tools.bench.floor", "relay", str(sock), target],
                                               env=_source_env(dict(os.environ)), stdout=self.log,
                                               stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 10
            while not sock.exists():
                if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("relay did not start")
                time.sleep(0.02)
            target = str(sock)
        self.socket = target

    def stop(self) -> None:
        for p in self.procs:
            for pid in procstat.tree(p.pid)[1:]:
                try:
                    os.kill(pid, 15)
                except OSError:
                    pass
            _stop(p)
        self.log.close()

    def client_env(self) -> dict[str, str]:
        env = _source_env(self.bench.compositor_env)
        env["WAYLAND_DISPLAY"] = self.socket
        return env

    def sides(self) -> dict[str, list[int]]:
        return {"vm": procstat.tree(self.procs[1].pid), "host": procstat.tree(self.procs[0].pid)}


CONFIG_CLASSES: dict[str, type[Config]] = {"direct": Direct, "wlproxy": WlproxyConfig, "waypipe": Waypipe,
                                           "floor": Floor, "relays": Relays}


# -- the run ------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def _ask(client, line: str, timeout: float = 120.0) -> dict:
    client.send(line)
    return _answer(client, timeout)


def _answer(client, timeout: float = 120.0) -> dict:
    raw = client.wait_line("{", timeout=timeout)
    res = json.loads(raw)
    if "error" in res:
        raise BenchError(res["error"])
    return res


class Progress:
    def __init__(self, total: int, stream=sys.stderr):
        self.total = max(1, total)
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.tty:
            return
        width = 30
        fill = int(width * self.done / self.total)
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done)
        self.stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
                          f"{el:4.0f}s eta {eta:4.0f}s  {label[:60]:<60}")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class Bench:
    def __init__(self, compositor_env: dict[str, str], configs: list[str], plan: Plan, work: Path,
                 placement: Placement | None = None):
        self.compositor_env = compositor_env
        self.plan = plan
        self.work = work
        self.placement = placement
        self.affinity: dict[str, dict[str, list[int]]] = {}  # config -> side -> CPUs its processes got
        self.configs: dict[str, Config] = {}
        self.results: dict[str, dict[str, dict]] = {}
        try:
            for name in configs:
                cfg = CONFIG_CLASSES[name](self)
                cfg.start()
                self.configs[name] = cfg
                cfg.place()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for cfg in self.configs.values():
            for c in cfg.clients:
                c.stop(timeout=5)
            try:
                cfg.stop()
            except Exception as e:  # noqa: BLE001
                print(f"wlproxy bench: stopping {cfg.name}: {type(e).__name__}: {e}", file=sys.stderr)

    def _rec(self, v: Variant, cfg: str) -> dict:
        return self.results.setdefault(v.key, {}).setdefault(
            cfg, {"sync": [], "presented": [], "cpu_ns": {}, "frames": 0, "peak_rss": {}, "stream": [],
                  "bytes_per_frame": 0})

    def _measured(self, v: Variant, name: str, fn: Callable[[], dict], frames_of: Callable[[dict], int]) -> dict:
        cfg = self.configs[name]
        sides = cfg.sides()
        before = {s: procstat.cpu_ns(p) for s, p in sides.items()}
        res = fn()
        after = {s: procstat.cpu_ns(p) for s, p in sides.items()}
        rec = self._rec(v, name)
        for s in sides:
            delta = after[s] - before[s]
            if s == "vm" and "sender_cpu_ns" in res:
                delta = res["sender_cpu_ns"]  # the floor sender draws like a client: only its sending counts
            rec["cpu_ns"][s] = rec["cpu_ns"].get(s, 0) + delta
        rec["frames"] += frames_of(res)
        return res

    def _reset_rss(self, names) -> None:
        for n in names:
            for pids in self.configs[n].sides().values():
                procstat.reset_peak_rss(pids)

    def _read_rss(self, v: Variant, names) -> None:
        for n in names:
            rec = self._rec(v, n)
            for s, pids in self.configs[n].sides().items():
                rec["peak_rss"][s] = max(rec["peak_rss"].get(s, 0), procstat.peak_rss_bytes(pids))

    def _fail(self, v: Variant, name: str, e: Exception) -> None:
        self._rec(v, name)["error"] = f"{type(e).__name__}: {e}"

    def _spawn_ready(self, name: str, n: int = 1) -> list:
        cfg = self.configs[name]
        cs = [cfg.spawn() for _ in range(n)]
        for c in cs:
            _answer(c, timeout=60)
        return cs

    def _retire(self, clients: dict[str, list]) -> None:
        for name, cs in clients.items():
            for c in cs:
                c.stop(timeout=5)
                self.configs[name].clients.remove(c)

    # -- scenarios ---------------------------------------------------------------------
    def names(self, scenario: str) -> list[str]:
        return [n for n, c in self.configs.items() if scenario in c.scenarios]

    def run_frames(self, vs: list[Variant], progress: Progress) -> None:
        p = self.plan
        names = self.names("frame")
        by_size: dict[tuple[int, int], list[Variant]] = {}
        for v in vs:
            by_size.setdefault((v.width, v.height), []).append(v)
        for (w, h), group in by_size.items():
            clients: dict[str, list] = {}
            for n in names:
                try:
                    clients[n] = self._spawn_ready(n)
                except Exception as e:  # noqa: BLE001
                    for v in group:
                        self._fail(v, n, e)
            for v in group:
                live = [n for n in names if n in clients and "error" not in self._rec(v, n)]
                for n in list(live):
                    try:
                        _ask(clients[n][0], f"setup {w} {h}")
                    except Exception as e:  # noqa: BLE001
                        self._fail(v, n, e)
                        live.remove(n)
                self._reset_rss(live)
                for r in range(p.rounds):
                    for n in names:
                        progress.step(f"{v.key}: {n}")
                        if n not in live:
                            continue
                        c = clients[n][0]
                        warm = p.warmup_first if r == 0 else p.warmup
                        try:
                            _ask(c, f"frame {v.damage} {v.content} {warm} 0")
                            res = self._measured(v, n, lambda: _ask(c, f"frame {v.damage} {v.content} {p.frames} 0"),
                                                 lambda res: len(res["sync"]))
                        except Exception as e:  # noqa: BLE001
                            self._fail(v, n, e)
                            live.remove(n)
                            continue
                        rec = self._rec(v, n)
                        rec["sync"] += res["sync"]
                        rec["presented"] += res["presented"]
                        rec["bytes_per_frame"] = res["bytes_per_frame"]
                self._read_rss(v, live)
            self._retire(clients)

    def _rounds(self, v: Variant, progress: Progress, clients: dict[str, list],
                measure: Callable[[int, str, list], dict], record: Callable[[dict, dict], None]) -> None:
        """Every round, every configuration whose clients still run: ``measure(round, name, clients)``
        (an exception is that configuration's error and drops it), then ``record(rec, result)``;
        peak RSS from before the first round, and the clients retired at the end."""
        self._reset_rss(clients)
        for r in range(self.plan.rounds):
            for n in self.names(v.scenario):
                progress.step(f"{v.key}: {n}")
                if n not in clients:
                    continue
                try:
                    res = measure(r, n, clients[n])
                except Exception as e:  # noqa: BLE001
                    self._fail(v, n, e)
                    del clients[n]
                    continue
                record(self._rec(v, n), res)
        self._read_rss(v, clients)
        self._retire(clients)

    def run_roundtrip(self, v: Variant, progress: Progress) -> None:
        p = self.plan

        def measure(r: int, n: str, cs: list) -> dict:
            return self._measured(v, n, lambda: _ask(cs[0], f"roundtrip {p.roundtrips} {p.interval}"),
                                  lambda res: len(res["sync"]))

        def record(rec: dict, res: dict) -> None:
            rec["sync"] += res["sync"]

        self._rounds(v, progress, self._start_all(v, lambda n: self._spawn_ready(n)), measure, record)

    def run_storm(self, v: Variant, progress: Progress) -> None:
        p = self.plan

        def start(n: str) -> list:
            cs = self._spawn_ready(n)
            _ask(cs[0], f"setup {v.width} {v.height}")
            return cs

        def measure(r: int, n: str, cs: list) -> dict:
            c = cs[0]
            _ask(c, f"storm {p.warmup_first if r == 0 else p.warmup} 0 {STORM_REQUESTS}")
            return self._measured(v, n, lambda: _ask(c, f"storm {p.storm_frames} 0 {STORM_REQUESTS}"),
                                  lambda res: len(res["sync"]))

        def record(rec: dict, res: dict) -> None:
            rec["sync"] += res["sync"]
            rec["presented"] += res["presented"]
            rec["bytes_per_frame"] = res["bytes_per_frame"] + res["request_bytes"]

        self._rounds(v, progress, self._start_all(v, start), measure, record)

    def run_clients(self, v: Variant, progress: Progress) -> None:
        """Six idle windows, a 1080p stream paced by frame callbacks, and an
        interactive client measuring round trips meanwhile (the floor: a
        stream sender and a round-trip sender)."""
        p = self.plan

        def start(n: str) -> list:
            idle = 0 if n == "floor" else CLIENTS - 2
            cs = self._spawn_ready(n, idle + 2)
            stream = cs[0]
            _ask(stream, f"setup {v.width} {v.height}")
            if n != "floor":
                _ask(stream, "frame 1.0 changed 3 0")
            for c in cs[2:]:
                _ask(c, "setup 64 64")
                _ask(c, "frame 1.0 changed 1 0")
            return cs

        seconds = p.interactive * (p.clients_interval + 0.0015) + 0.5

        def measure(r: int, n: str, cs: list) -> dict:
            stream, inter = cs[0], cs[1]

            def batch() -> dict:
                stream.send(f"stream {seconds:.3f}")
                time.sleep(0.25)
                res = _ask(inter, f"roundtrip {p.interactive} {p.clients_interval}")
                res["stream"] = _answer(stream, timeout=seconds + 60)
                if "sender_cpu_ns" in res:
                    res["sender_cpu_ns"] += res["stream"].get("sender_cpu_ns", 0)
                return res

            return self._measured(v, n, batch, lambda res: res["stream"]["frames"])

        def record(rec: dict, res: dict) -> None:
            rec["sync"] += res["sync"]
            rec["stream"].append(res["stream"])
            rec["bytes_per_frame"] = v.width * v.height * 4

        self._rounds(v, progress, self._start_all(v, start), measure, record)

    def _start_all(self, v: Variant, start: Callable[[str], list]) -> dict[str, list]:
        clients: dict[str, list] = {}
        for n in self.names(v.scenario):
            try:
                clients[n] = start(n)
            except Exception as e:  # noqa: BLE001
                self._fail(v, n, e)
        return clients

    def steps(self, vs: list[Variant]) -> int:
        return sum(self.plan.rounds * len(self.names(v.scenario)) for v in vs)

    def run(self, vs: list[Variant], progress: Progress) -> None:
        frames = [v for v in vs if v.scenario == "frame"]
        done_frames = False
        for v in vs:
            if v.scenario == "frame":
                if not done_frames:
                    self.run_frames(frames, progress)
                    done_frames = True
            elif v.scenario == "roundtrip":
                self.run_roundtrip(v, progress)
            elif v.scenario == "storm":
                self.run_storm(v, progress)
            elif v.scenario == "clients":
                self.run_clients(v, progress)


# -- machine and versions -------------------------------------------------------------


def _cmd_output(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"hostname": platform.node(), "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_bytes": mem, "python": platform.python_version()}


def versions() -> dict:
    from wlproxy import __version__

    root = Path(__file__).resolve().parents[3]
    commit = ""
    if (root / ".git").exists():
        commit = _cmd_output(["git", "-C", str(root), "describe", "--always", "--dirty"])
    try:
        import pywayland

        pyw = pywayland.__version__
    except ImportError:
        pyw = ""
    return {"wlproxy": __version__, "commit": commit, "weston": _cmd_output(["weston", "--version"]),
            "waypipe": _cmd_output(["waypipe", "--version"]) if shutil.which("waypipe") else "not installed",
            "pywayland": pyw}


# -- entry point -----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from wlproxy.tools.bench import report

    scenarios = args.scenarios or list(SCENARIOS)
    for s in scenarios:
        if s not in SCENARIOS:
            raise UserError(f"unknown scenario {s!r}: one of {', '.join(SCENARIOS)}")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            raise UserError(f"unknown configuration {c!r}: one of {', '.join(CONFIGS)}")
    skipped = {}
    if "waypipe" in configs and shutil.which("waypipe") is None:
        configs.remove("waypipe")
        skipped["waypipe"] = "waypipe is not installed"
    plan = QUICK if args.quick else Plan()
    if args.rounds:
        plan.rounds = args.rounds
    if args.frames:
        plan.frames = args.frames
    vs = variants(scenarios, args.quick)
    if args.only:
        vs = [v for v in vs if any(t in v.key for t in args.only)]
        if not vs:
            raise UserError(f"no variant matches {args.only}")
    out_dir = Path(args.out)
    name = args.name or ("quick" if args.quick else "bench")
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]

    weston = None
    placement = None if args.no_placement else Placement.split()
    compositor_cpus: list[int] = []
    with tempfile.TemporaryDirectory(prefix="wlproxy-bench-") as tmp:
        if args.display:
            env = dict(os.environ)
            if os.path.isabs(args.display):
                env["XDG_RUNTIME_DIR"], env["WAYLAND_DISPLAY"] = os.path.split(args.display)
            else:
                env["WAYLAND_DISPLAY"] = args.display
            compositor = f"--display {args.display}"
        else:
            from wlproxy.tools.weston import Weston, weston_available

            reason = weston_available()
            if reason:
                raise UserError(reason)
            weston = Weston(*OUTPUT, debug=False, log_path=Path(tmp) / "weston.log").start()
            if placement is not None:
                placement.pin("host", procstat.tree(weston.proc.pid))
                compositor_cpus = sorted(procstat.affinity(procstat.tree(weston.proc.pid)))
            env = weston.env()
            compositor = f"weston headless (pixman) {OUTPUT[0]}x{OUTPUT[1]}"
        bench = None
        try:
            bench = Bench(env, configs, plan, Path(tmp), placement)
            progress = Progress(bench.steps(vs))
            try:
                bench.run(vs, progress)
            finally:
                progress.close()
        finally:
            if bench is not None:
                bench.stop()
            if weston is not None:
                weston.stop()
    record = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - t0, 1),
        "load": {"before": load_before, "after": os.getloadavg()[0]},  # 1-minute load average: others' work
        "machine": machine_info(),
        "versions": versions(),
        "compositor": compositor,
        "placement": placement.describe() if placement is not None else "none (the scheduler's)",
        "affinity": {"compositor": compositor_cpus, **(bench.affinity if bench else {})},
        "quick": bool(args.quick),
        "plan": asdict(plan),
        "configs": configs,
        "skipped": skipped,
        "work_dir": tmp,  # removed after the run; every process started in it is stopped
        "variants": [asdict(v) for v in vs],
        "results": bench.results if bench else {},
    }
    report.finish(record)
    text = report.table(record)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (out_dir / f"{name}.txt").write_text(text + "\n")
    if not args.no_plot:
        try:
            report.plot(record, out_dir / f"{name}.png")
        except ImportError as e:
            print(f"no plot: {e}", file=sys.stderr)
    print(f"\nwrote {out_dir / name}.json, .txt" + ("" if args.no_plot else ", .png"))
    errors = [(k, c, r["error"]) for k, rs in record["results"].items() for c, r in rs.items() if "error" in r]
    for k, c, e in errors:
        print(f"error: {k}: {c}: {e}", file=sys.stderr)
    return 1 if errors else 0
