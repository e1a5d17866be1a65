"""Supervision with real processes: VMM exit, host half killed and restarted, stop requests.

The VMM is a stand-in process that exits on cue (SIGUSR1: poweroff, SIGUSR2: crash). After
each scenario the run dir must be gone and every process exited and reaped.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hostvm_common import (ROOT, StandinHypervisor, gone, host_command, own_tmp,  # noqa: E402,F401
                                read_pids, standin_vm_root, wait_for)

from wlproxy.vm import hosthalf, hypervisor, launch, rundir, vmdef  # noqa: E402
from wlproxy.vm.hosthalf import make_host_half  # noqa: E402
from wlproxy.vm.procs import ProcRef, unix_accepts  # noqa: E402
from wlproxy.vm.rundir import RunPaths  # noqa: E402
from wlproxy.vm.supervise import Supervisor  # noqa: E402
from wlproxy.cli import main as wlproxy_main  # noqa: E402


@dataclass
class Env:
    root: Path
    pids: Path
    vm: vmdef.VmDef
    paths: RunPaths
    host_pids: list[int] = field(default_factory=list)

    def start(self, hv: StandinHypervisor | None = None, **kw: float) -> tuple[Supervisor, threading.Thread,
                                                                              list[int]]:
        hh = make_host_half("spawn", self.vm.name, self.paths, self.vm.policy, None)
        running = launch.start(self.vm, self.paths, hv or StandinHypervisor(self.root), hh, timeout=10)
        self.host_pids.append(running.host_half.proc.pid)  # type: ignore[attr-defined]
        sup = Supervisor(running, timeout=10, **kw)
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(sup.run()), daemon=True)
        t.start()
        return sup, t, result


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, host_command: str) -> Iterator[Env]:
    with standin_vm_root(monkeypatch) as (root, pids):
        yield Env(root, pids, vmdef.load(root / "vms", "appvm"), RunPaths(root / "run", "appvm"))


def _state(env: Env) -> dict:
    return json.loads(env.paths.state.read_text())


def _audits(caplog: pytest.LogCaptureFixture, event: str) -> list[dict]:
    return [r.audit for r in caplog.records if getattr(r, "audit", {}).get("event") == event]


def _finished(t: threading.Thread, result: list[int]) -> int:
    t.join(15)
    assert not t.is_alive(), "the supervisor did not return"
    return result[0]


def _all_gone(env: Env) -> None:
    pids = read_pids(env.pids) + env.host_pids
    assert pids
    assert [p for p in pids if not gone(p)] == []
    assert not env.paths.vm_dir.exists()


@pytest.mark.parametrize("cue,code,reason", [(signal.SIGUSR1, 0, "poweroff"), (signal.SIGUSR2, 1, "crashed")])
def test_vmm_exit_stops_host_half_and_cleans_run_dir(env: Env, caplog: pytest.LogCaptureFixture,
                                                    cue: signal.Signals, code: int, reason: str) -> None:
    caplog.set_level(logging.INFO)
    sup, t, result = env.start()
    host_pid = _state(env)["host_half"]["pid"]
    assert unix_accepts(env.paths.host_socket)
    os.kill(_state(env)["vmm"]["pid"], cue)
    assert _finished(t, result) == code
    assert gone(host_pid)
    _all_gone(env)
    [exited] = _audits(caplog, "vm_exited")
    assert exited["reason"] == reason and exited["status"] == (0 if code == 0 else 3)


def test_killed_host_half_is_restarted(env: Env, host_command: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sup, t, result = env.start()
    seen = [_state(env)["host_half"]["pid"]]
    for _ in range(2):
        os.kill(seen[-1], signal.SIGKILL)
        wait_for(lambda: _state(env)["host_half"].get("pid") not in (None, *seen), 10, "a new host half pid")
        new = _state(env)["host_half"]["pid"]
        assert gone(seen[-1]) and ProcRef.of(new) is not None
        assert unix_accepts(env.paths.host_socket)  # readiness was awaited before state.json was rewritten
        if host_command == "stand-in":
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(str(env.paths.host_socket))
                assert c.makefile().readline() == f"host half of appvm pid {new}\n"
        seen.append(new)
        env.host_pids.append(new)
    assert sup.restarts == 2
    assert [a["restarts"] for a in _audits(caplog, "host_half_restarted")] == [1, 2]
    assert [a["status"] for a in _audits(caplog, "host_half_died")] == [-9, -9]
    os.kill(_state(env)["vmm"]["pid"], signal.SIGUSR1)
    assert _finished(t, result) == 0
    assert all(gone(p) for p in seen)
    _all_gone(env)


def test_stop_request_shuts_the_vm_down(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    hv = StandinHypervisor(env.root)
    sup, t, result = env.start(hv)
    sup.request_stop()
    assert _finished(t, result) == 0
    assert hv.shutdowns == 1
    _all_gone(env)
    assert _audits(caplog, "vm_exited")[0]["reason"] == "stopped"


class _DeafHypervisor(StandinHypervisor):
    def shutdown(self, paths: RunPaths, timeout: float) -> None:
        self.shutdowns += 1  # the VMM never hears it


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
def test_vmm_that_ignores_stop_is_killed(env: Env) -> None:
    hv = _DeafHypervisor(env.root, ignore_term=True)
    sup, t, result = env.start(hv, stop_timeout=0.3, kill_grace=0.3)
    vmm_pid = _state(env)["vmm"]["pid"]
    sup.request_stop()
    assert _finished(t, result) == 0
    assert hv.shutdowns == 1 and gone(vmm_pid)
    _all_gone(env)


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
def test_host_half_that_ignores_sigterm_is_killed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_HOST_IGNORE_TERM", "1")
    monkeypatch.setattr(hosthalf, "STOP_GRACE", 0.3)
    sup, t, result = env.start()
    os.kill(_state(env)["vmm"]["pid"], signal.SIGUSR1)
    assert _finished(t, result) == 0
    _all_gone(env)


# -- a supervisor in its own process, controlled through the CLI ---------------------------------

DRIVER = r'''
import sys
from pathlib import Path
from test_hostvm_common import StandinHypervisor
from wlproxy.vm import launch, vmdef
from wlproxy.vm.hosthalf import make_host_half
from wlproxy.vm.rundir import RunPaths
from wlproxy.vm.supervise import Supervisor
from wlproxy.logs import setup_logging

root = Path(sys.argv[1])
setup_logging(1)
vm = vmdef.load(root / "vms", "appvm")
paths = RunPaths(root / "run", "appvm")
running = launch.start(vm, paths, StandinHypervisor(root), make_host_half("spawn", "appvm", paths, vm.policy, None))
sup = Supervisor(running, timeout=10, stop_timeout=10)
sup.install_signal_handlers()
print("ready", flush=True)
sys.exit(sup.run())
'''


@pytest.fixture
def driver(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen[str]]:
    script = env.root / "driver.py"
    script.write_text(DRIVER)
    monkeypatch.setitem(hypervisor.HYPERVISORS, "standin", "test_hostvm_common")
    pp = os.pathsep.join([str(ROOT), str(Path(__file__).resolve().parent)])
    proc = subprocess.Popen([sys.executable, str(script), str(env.root)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": pp})
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    env.host_pids.append(_state(env)["host_half"]["pid"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _cli(*argv: str) -> int:
    return wlproxy_main(list(argv))


def test_vm_stop_through_running_supervisor(env: Env, driver: subprocess.Popen[str], host_command: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    state = _state(env)
    assert state["supervisor"]["pid"] == driver.pid
    assert _cli("vm", "status", "--vms-dir", str(env.root / "vms"), "--run-dir", str(env.root / "run")) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "STATE", "HYPERVISOR", "VMM", "PID", "HOST", "HALF", "NET"]
    assert table[1].split() == ["appvm", "Running", "standin", str(state["vmm"]["pid"]), "up", "(pid",
                                f"{state['host_half']['pid']})", "sys-net"]
    assert _cli("vm", "stop", "--run-dir", str(env.root / "run"), "appvm") == 0
    assert capsys.readouterr().out == "appvm: stopped\n"
    assert driver.wait(10) == 0
    _all_gone(env)


def test_sigterm_to_supervisor_stops_everything(env: Env, driver: subprocess.Popen[str]) -> None:
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(10) == 0
    _all_gone(env)


def test_vm_stop_after_supervisor_crash_cleans_up(env: Env, driver: subprocess.Popen[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    state = _state(env)
    _subreaper(True)  # adopt the orphans, to reap them below (this sandbox's pid 1 does not)
    try:
        driver.kill()
        driver.wait()
        vmm, host = rundir.state_proc(state, "vmm"), rundir.state_proc(state, "host_half")
        assert vmm is not None and host is not None and vmm.alive() and host.alive()  # orphaned, still running
        assert _cli("vm", "stop", "--run-dir", str(env.root / "run"), "appvm") == 0
        assert capsys.readouterr().out == "appvm: stopped (no supervisor: cleaned up here)\n"
        assert not vmm.alive() and not host.alive()
        assert not env.paths.vm_dir.exists()
    finally:
        for ref in (rundir.state_proc(state, "vmm"), rundir.state_proc(state, "host_half")):
            try:
                os.waitpid(ref.pid, 0)  # type: ignore[union-attr]
            except ChildProcessError:
                pass
        _subreaper(False)


def _subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, int(on), 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
