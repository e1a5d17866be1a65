"""The s6 service directories from ``wlproxy vm services --s6``, run for real under s6-svscan.

weston (headless) and one VM's host half come up, are restarted after ``kill -9``, and
``vm start --host-half s6:DIR`` brings the host half up before the VM and down after it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hostvm_common import (ROOT, StandinHypervisor, gone, make_vm, read_pids,  # noqa: E402
                                real_host_problem, weston_args,
                                short_tmpdir, standin_host_command, wait_for)

from wlproxy.vm import launch, vmdef  # noqa: E402
from wlproxy.vm.hosthalf import make_host_half  # noqa: E402
from wlproxy.vm.procs import unix_accepts  # noqa: E402
from wlproxy.vm.rundir import RunPaths  # noqa: E402
from wlproxy.vm.supervise import Supervisor  # noqa: E402
from wlproxy.cli import main as wlproxy_main  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("s6-svscan") is None, reason="s6 is not installed (apt-get install s6)")

DISPLAY = "wayland-s6"


@dataclass
class Scan:
    root: Path
    scan: Path
    runtime: Path
    pids: Path
    svscan: subprocess.Popen[bytes]
    mode: str

    @property
    def host_service(self) -> Path:
        return self.scan / "wlproxy-host-appvm"

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.root / "run", "appvm")


def svc_pid(service: Path) -> int | None:
    """The pid s6-supervise runs in ``service``, or None while it is down."""
    out = subprocess.run(["s6-svstat", "-o", "up,pid", str(service)], capture_output=True, text=True, check=True)
    up, pid = out.stdout.split()
    return int(pid) if up == "true" and int(pid) > 0 else None


def _supervised(service: Path) -> bool:
    """s6-supervise runs in ``service`` and has written its status (s6-svstat fails until then)."""
    return (subprocess.run(["s6-svok", str(service)]).returncode == 0
            and subprocess.run(["s6-svstat", str(service)], capture_output=True).returncode == 0)


@pytest.fixture(params=["stand-in", "real"])
def scan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scan]:
    if shutil.which("weston") is None:
        pytest.skip("weston is not installed")
    if request.param == "real" and (problem := real_host_problem()) is not None:
        pytest.skip(problem)
    env = dict(os.environ)
    root = short_tmpdir("s6")
    if request.param == "real":
        env.pop("WLPROXY_HOST_COMMAND", None)
    else:
        env["WLPROXY_HOST_COMMAND"] = standin_host_command(root)
    make_vm(root / "vms", "appvm")
    runtime = root / "xdg"
    env.update(XDG_RUNTIME_DIR=str(runtime), STANDIN_PIDS=str(root / "pids"),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    # the files are written through the CLI, as a user would
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    assert wlproxy_main(["vm", "services", "--vms-dir", str(root / "vms"), "--run-dir", str(root / "run"),
                         "--s6", str(root / "scan"), "--display", DISPLAY,
                         "--weston-args", " ".join(weston_args(runtime))]) == 0
    svscan = subprocess.Popen(["s6-svscan", str(root / "scan")], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    s = Scan(root, root / "scan", runtime, root / "pids", svscan, request.param)
    try:
        wait_for(lambda: _supervised(s.host_service) and _supervised(s.scan / "weston"), 10, "s6-supervise")
        yield s
    finally:
        started = [p for svc in (s.host_service, s.scan / "weston") if (p := _pid_or_none(svc))]
        subprocess.run(["s6-svscanctl", "-t", str(s.scan)], check=False)
        try:
            svscan.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(svscan.pid, signal.SIGKILL)
            svscan.wait()
        wait_for(lambda: all(gone(p) or _zombie(p) for p in started + read_pids(s.pids)), 10, "services to stop")
        shutil.rmtree(root, ignore_errors=True)


def _pid_or_none(service: Path) -> int | None:
    try:
        return svc_pid(service)
    except (subprocess.CalledProcessError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _restarted_after_kill9(service: Path, ready: "callable[[], bool]") -> tuple[int, int]:  # type: ignore[valid-type]
    wait_for(lambda: svc_pid(service) is not None and ready(), 15, f"{service.name} up")
    old = svc_pid(service)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: svc_pid(service) not in (None, old) and ready(), 15, f"{service.name} restarted")
    new = svc_pid(service)
    assert new is not None and new != old
    return old, new


def test_weston_service_comes_up_and_is_restarted(scan: Scan) -> None:
    run = (scan.scan / "weston" / "run").read_text()
    assert f"--socket={DISPLAY} --backend=headless-backend.so --shell=kiosk-shell.so --config=" in run
    sock = scan.runtime / DISPLAY
    old, new = _restarted_after_kill9(scan.scan / "weston", lambda: unix_accepts(sock))
    assert Path(f"/proc/{new}/cmdline").read_bytes().split(b"\0")[0].endswith(b"weston")


def test_host_half_service_comes_up_and_is_restarted(scan: Scan) -> None:
    svc = scan.host_service
    assert (svc / "down").exists() and svc_pid(svc) is None  # written down: 'vm start' brings it up
    subprocess.run(["s6-svc", "-u", str(svc)], check=True)
    sock = scan.paths.host_socket
    old, new = _restarted_after_kill9(svc, lambda: unix_accepts(sock))
    argv = Path(f"/proc/{new}/cmdline").read_bytes().split(b"\0")[:-1]
    # the run script execs through 'vm host-half' into the host half itself, so s6 supervises it directly
    i = argv.index(b"--listen")
    assert argv[i:i + 4] == [b"--listen", str(sock).encode(), b"--vm", b"appvm"]
    assert argv[i + 4:i + 6] == [b"--display", DISPLAY.encode()]
    assert argv[-2:] == [b"--ready-fd", b"3"]  # s6's notification-fd, passed through
    if scan.mode == "stand-in":
        assert read_pids(scan.pids) == [old, new]
    assert gone(old) or _zombie(old)


def test_vm_start_with_s6_host_half(scan: Scan) -> None:
    """The s6 mode of 'vm start': host half up before the VM, down and run dir gone after it."""
    vm = vmdef.load(scan.root / "vms", "appvm")
    hh = make_host_half(f"s6:{scan.host_service}", "appvm", scan.paths, vm.policy, None, timeout=10)
    running = launch.start(vm, scan.paths, StandinHypervisor(scan.root), hh, timeout=15)
    host_pid = svc_pid(scan.host_service)
    assert host_pid is not None and unix_accepts(scan.paths.host_socket)
    sup = Supervisor(running, timeout=10)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(sup.run()), daemon=True)
    t.start()
    os.kill(host_pid, signal.SIGKILL)  # s6 restarts it, not the supervisor
    wait_for(lambda: svc_pid(scan.host_service) not in (None, host_pid) and unix_accepts(scan.paths.host_socket),
             15, "s6 to restart the host half")
    assert sup.restarts == 0
    os.kill(running.vmm.pid, signal.SIGUSR1)
    t.join(20)
    assert result == [0]
    assert svc_pid(scan.host_service) is None
    assert not scan.paths.vm_dir.exists()
