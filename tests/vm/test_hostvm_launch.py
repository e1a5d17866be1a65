"""The start sequence with real processes: state recorded on success, and every failure undone.

After a failed start there must be no process left (each one exited and reaped), no socket and
no run dir. The VMM is a stand-in process; the host half is the stand-in and the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hostvm_common import (StandinHypervisor, gone, host_command, own_tmp, read_pids,  # noqa: E402,F401
                                standin_vm_root)

from wlproxy.vm import launch, rundir, vmdef  # noqa: E402
from wlproxy.vm.cloudhv import CloudHypervisor  # noqa: E402
from wlproxy.vm.hosthalf import SpawnedHostHalf, make_host_half  # noqa: E402
from wlproxy.vm.procs import unix_accepts  # noqa: E402
from wlproxy.vm.rundir import RunPaths  # noqa: E402


@dataclass
class Env:
    root: Path
    vms: Path
    run: Path
    pidfile: Path
    vm: vmdef.VmDef
    paths: RunPaths
    made: list[SpawnedHostHalf] = field(default_factory=list)

    def host_half(self, display: str | None = None) -> SpawnedHostHalf:
        hh = make_host_half("spawn", self.vm.name, self.paths, self.vm.policy, display)
        assert isinstance(hh, SpawnedHostHalf)
        self.made.append(hh)
        return hh

    def pids(self) -> list[int]:
        """Every process started: VMM stand-ins (they record themselves) and host halves."""
        return sorted(set(read_pids(self.pidfile)) | {hh.proc.pid for hh in self.made if hh.proc is not None})


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, host_command: str) -> Iterator[Env]:
    with standin_vm_root(monkeypatch) as (root, pids):
        yield Env(root, root / "vms", root / "run", pids, vmdef.load(root / "vms", "appvm"),
                  RunPaths(root / "run", "appvm"))


def _assert_nothing_left(env: Env) -> None:
    pids = env.pids()
    assert pids, "no process was started: the test did not test anything"
    assert [p for p in pids if not gone(p)] == []
    assert not env.paths.vm_dir.exists()


def _stop(env: Env, running: launch.Running, hh: SpawnedHostHalf) -> None:
    """Undo a successful start: kill the VMM, stop the host half, clean the run dir."""
    running.vmm.kill()
    running.vmm.wait()
    hh.stop(5)
    rundir.clean(env.paths)


def _host_pid(env: Env, hh: SpawnedHostHalf) -> int:
    assert hh.proc is not None
    return hh.proc.pid


def test_start_records_state_and_runs_everything(env: Env, host_command: str) -> None:
    hh = env.host_half()
    hv = StandinHypervisor(env.root)
    running = launch.start(env.vm, env.paths, hv, hh, timeout=10)
    try:
        state = json.loads(env.paths.state.read_text())
        assert state["name"] == "appvm" and state["hypervisor"] == "standin"
        assert state["vmm"]["pid"] == running.vmm.pid and rundir.state_proc(state, "vmm").alive()
        assert state["host_half"]["pid"] == _host_pid(env, hh) and state["host_half"]["mode"] == "spawn"
        assert state["supervisor"]["pid"] == os.getpid()
        assert state["serial_log"] == str(env.root / "run" / "appvm.log")
        assert unix_accepts(env.paths.host_socket)
        argv = Path(f"/proc/{_host_pid(env, hh)}/cmdline").read_bytes().split(b"\0")[:-1]
        listen = argv.index(b"--listen")
        assert argv[listen:listen + 4] == [b"--listen", str(env.paths.host_socket).encode(), b"--vm", b"appvm"]
        assert state["net_providers"] == ["sys-net"]
        assert state["policy"] == str(env.vms / "appvm" / "wlproxy.toml")
        assert argv[-2:] == [b"--policy", str(env.vms / "appvm" / "wlproxy.toml").encode()]
    finally:
        _stop(env, running, hh)
    _assert_nothing_left(env)


def test_failed_boot_undoes_vmm_host_half_and_run_dir(env: Env) -> None:
    msg = "cloud-hypervisor refused PUT vm.create (400 Bad Request): Error from API: Invalid disk"
    hv = StandinHypervisor(env.root, fail_boot=msg)
    with pytest.raises(launch.StartError) as ei:
        launch.start(env.vm, env.paths, hv, env.host_half(), timeout=10)
    assert ei.value.step == "create and boot"
    assert str(ei.value) == f"starting VM 'appvm' failed at step 'create and boot': {msg}"
    assert len(env.pids()) == 2  # host half and VMM were both up
    _assert_nothing_left(env)


class _Interrupted(StandinHypervisor):
    def __init__(self, root: Path, exc: BaseException) -> None:
        super().__init__(root)
        self.exc = exc

    def boot(self, *args: object) -> None:  # type: ignore[override]
        super().boot(*args)  # type: ignore[arg-type]
        raise self.exc


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
@pytest.mark.parametrize("exc,raised", [(KeyboardInterrupt(), KeyboardInterrupt),
                                        (RuntimeError("backend bug"), launch.StartError)])
def test_any_exception_is_undone(env: Env, exc: BaseException, raised: type[BaseException]) -> None:
    """Ctrl-C, or a backend raising something unexpected, still undoes every step."""
    with pytest.raises(raised):
        launch.start(env.vm, env.paths, _Interrupted(env.root, exc), env.host_half(), timeout=10)
    assert len(env.pids()) == 2
    _assert_nothing_left(env)


def test_missing_vmm_binary_undoes_host_half(env: Env) -> None:
    hv = CloudHypervisor(str(env.root / "no-cloud-hypervisor"))
    with pytest.raises(launch.StartError, match="at step 'VMM': cloud-hypervisor not found"):
        launch.start(env.vm, env.paths, hv, env.host_half(), timeout=10)
    _assert_nothing_left(env)


def test_vmm_exiting_before_its_api_is_up_is_undone(env: Env) -> None:
    """``cloud-hypervisor`` replaced by a program that exits at once: no API socket ever appears."""
    hv = CloudHypervisor(shutil.which("false"))
    with pytest.raises(launch.StartError, match=r"step 'create and boot'.*exited with status 1 before it was ready"):
        launch.start(env.vm, env.paths, hv, env.host_half(), timeout=10)
    _assert_nothing_left(env)


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
def test_host_half_exiting_at_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_HOST_FAIL", "1")
    with pytest.raises(launch.StartError, match=r"step 'host half'.*exited with status 7 before it was ready"):
        launch.start(env.vm, env.paths, StandinHypervisor(env.root), env.host_half(), timeout=10)
    _assert_nothing_left(env)


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
def test_host_half_never_listening_times_out(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_HOST_MUTE", "1")
    with pytest.raises(launch.StartError, match=r"step 'host half'.*not ready after 0.5 s"):
        launch.start(env.vm, env.paths, StandinHypervisor(env.root), env.host_half(), timeout=0.5)
    _assert_nothing_left(env)


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
def test_second_start_is_refused_and_first_survives(env: Env) -> None:
    hh = env.host_half()
    running = launch.start(env.vm, env.paths, StandinHypervisor(env.root), hh, timeout=10)
    try:
        with pytest.raises(launch.StartError, match=r"step 'run dir'.*is in use \(supervisor, vmm, host_half\)"):
            launch.start(env.vm, env.paths, StandinHypervisor(env.root), env.host_half(), timeout=10)
        assert running.vmm.poll() is None and unix_accepts(env.paths.host_socket)
        assert len(env.pids()) == 2  # the second start started nothing
    finally:
        _stop(env, running, hh)
    _assert_nothing_left(env)


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
def test_stale_run_dir_is_cleared(env: Env) -> None:
    env.paths.vm_dir.mkdir(parents=True)
    rundir.write_state(env.paths, {"vmm": {"pid": 1, "start": -1}, "supervisor": {"pid": 2, "start": -1}})
    env.paths.host_socket.write_text("stale")
    env.paths.api.write_text("stale")
    hh = env.host_half()
    running = launch.start(env.vm, env.paths, StandinHypervisor(env.root), hh, timeout=10)
    try:
        assert not env.paths.api.exists()
        assert unix_accepts(env.paths.host_socket)
    finally:
        _stop(env, running, hh)
    _assert_nothing_left(env)


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
def test_unusable_run_dir(env: Env) -> None:
    blocker = env.root / "file"
    blocker.write_text("")
    paths = RunPaths(blocker / "vm", "appvm")
    with pytest.raises(launch.StartError, match=r"step 'run dir': cannot create .*use --run-dir"):
        launch.start(env.vm, paths, StandinHypervisor(env.root), env.host_half(), timeout=10)
    assert env.pids() == []


@pytest.mark.parametrize("host_command", ["stand-in"], indirect=True)
def test_socket_path_too_long(env: Env) -> None:
    paths = RunPaths(env.root / ("x" * 90), "appvm")
    with pytest.raises(launch.StartError, match=r"more than 107: use a shorter --run-dir"):
        launch.start(env.vm, paths, StandinHypervisor(env.root), env.host_half(), timeout=10)
    assert not paths.run_dir.exists() and env.pids() == []
