"""Shared fixtures: real headless weston instances and real Wayland clients.

* ``weston``: a fresh :class:`wlproxy.tools.weston.Weston` (640x480, desktop shell,
  ``--debug`` so screenshots work) per test; skips if weston can't run here.
* ``weston_factory``: ``weston_factory(width=..., debug=False, ...)`` for other
  settings; every instance is stopped after the test.
* ``spawn_client``: start a client subprocess (:class:`wlproxy.tools.clients.ClientProcess`)
  that is stopped after the test; ``spawn_client("wlproxy.tools.clients.pattern", "--frames", "2",
  env=weston.env())`` runs a module with this interpreter (stopped by closing
  its stdin), a list runs a command (stopped by SIGTERM).
* ``run_client``: run a client to completion with a timeout, returning the
  ``CompletedProcess`` (fails the test on timeout).

When a test fails, the tail of each weston log is printed in its report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The suite runs as root in CI; the host half refuses root unless told (tests that check
# the refusal unset this for their own child).
os.environ.setdefault("WLPROXY_ALLOW_ROOT", "1")
TESTS = Path(__file__).resolve().parent  # the shared helpers (helpers_wire, linkpeer, ...), for every folder
for _p in (ROOT, TESTS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from wlproxy.tools.clients import ClientProcess  # noqa: E402
from wlproxy.tools.weston import Weston, weston_available  # noqa: E402


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` plus PYTHONPATH reaching this source tree (for ``python -m wlproxy...``)."""
    out = dict(os.environ if env is None else env)
    pp = out.get("PYTHONPATH", "")
    if str(ROOT) not in pp.split(os.pathsep):
        out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pp) if p)
    return out


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"_rep_{w}", None), "failed", False) for w in ("setup", "call"))


@pytest.fixture
def weston_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Weston]]:
    """Make started ``Weston(**kwargs)`` instances, stopped at teardown."""
    reason = weston_available()
    if reason:
        pytest.skip(reason)
    started: list[Weston] = []

    def make(**kwargs: Any) -> Weston:
        w = Weston(**kwargs)
        started.append(w)
        return w.start()

    yield make
    for w in started:
        if _failed(request):
            print(f"--- {w!r} log (tail) ---\n{w.log_text(tail=40)}")
        w.stop()


@pytest.fixture
def weston(weston_factory: Callable[..., Weston]) -> Weston:
    """A fresh 640x480 headless weston (desktop shell, --debug) for one test."""
    return weston_factory(width=640, height=480)


@pytest.fixture
def spawn_client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., ClientProcess]]:
    """Start client subprocesses that are stopped (stdin closed, then signals) at teardown."""
    procs: list[ClientProcess] = []

    def spawn(cmd: str | Sequence[str], *args: str, env: Mapping[str, str] | None = None) -> ClientProcess:
        stderr_path = tmp_path / f"client-{len(procs)}.stderr"
        argv = [sys.executable, "-m", cmd, *args] if isinstance(cmd, str) else [*cmd, *args]
        # our python -m clients exit on stdin EOF; other commands get SIGTERM at once
        p = ClientProcess(argv, _child_env(env), stderr_path=stderr_path, stdin_stop=isinstance(cmd, str))
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.stop()
        if _failed(request):
            print(f"--- {p.argv} stderr ---\n{p.stderr_text()[-3000:]}")


@pytest.fixture
def run_client() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_client(cmd, *args, env=..., timeout=10, input=None)``: run to completion.

    ``cmd`` is a module name (run with this Python) or an argv list.
    """

    def run(cmd: str | Sequence[str], *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 10.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", cmd, *args] if isinstance(cmd, str) else [*cmd, *args]
        try:
            return subprocess.run(argv, env=_child_env(env), capture_output=True, text=True,
                                  timeout=timeout, input=input if input is not None else "")
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{argv} timed out after {timeout}s; stderr: {e.stderr!r}")

    return run
