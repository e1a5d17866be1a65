"""``wlproxy vm`` as a user runs it: help, list, status, errors, services, host-half, detach."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hostvm_common import (ROOT, gone, make_vm, read_pids, short_tmpdir, standin_host_command,  # noqa: E402
                                wait_for)

from wlproxy.vm import rundir  # noqa: E402
from wlproxy.vm.rundir import RunPaths  # noqa: E402
from wlproxy.cli import main  # noqa: E402


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = short_tmpdir("cli")
    monkeypatch.setenv("STANDIN_PIDS", str(d / "pids"))
    monkeypatch.setenv("WLPROXY_HOST_COMMAND", standin_host_command(d))
    monkeypatch.setenv("COLUMNS", "80")
    yield d
    for pid in read_pids(d / "pids"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(d, ignore_errors=True)


def vm(root: Path, *argv: str) -> int:
    return main(["vm", *argv[:1], "--vms-dir", str(root / "vms"), "--run-dir", str(root / "run"), *argv[1:]])


# -- help -----------------------------------------------------------------------------------------

def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as ei:
        main([*argv, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    return out


def test_vm_help_lists_actions_and_examples(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(capsys, "vm")
    for action in ("start", "stop", "status", "list", "services", "host-half", "image"):
        assert f"\n    {action} " in out
    assert "examples:\n  wlproxy vm list" in out


@pytest.mark.parametrize("action,expect", [
    ("start", ["--hypervisor {cloud-hypervisor,qemu}", "--host-half HOW", "--detach", "--timeout S", "NAME"]),
    ("stop", ["vm.shutdown", "vmm.shutdown", "--timeout S"]),
    ("status", ["vm.info", "--json"]),
    ("list", ["--json"]),
    ("services", ["--s6 DIR", "--systemd DIR", "wlproxy-host@.service"]),
    ("host-half", ["--port PORT", "--display D"]),
])
def test_each_action_help(root: Path, capsys: pytest.CaptureFixture[str], action: str, expect: list[str]) -> None:
    out = _help(capsys, "vm", action)
    assert out.startswith(f"usage: wlproxy vm {action} ")
    assert "--vms-dir DIR" in out and "--run-dir DIR" in out
    for text in expect:
        assert text in out, text


# -- list and status ------------------------------------------------------------------------------

def test_list_shows_valid_and_invalid_vms(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_vm(root / "vms", "firefox", full=True)
    bad = make_vm(root / "vms", "broken", disks=0)
    assert vm(root, "list") == 1  # an invalid VM
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "VALID", "CPUS", "MEMORY", "DISKS", "NET", "POLICY", "RUNNING"]
    assert out[1].split() == ["broken", "NO", "-", "-", "-", "-", "-", "-"]
    assert out[2].split() == ["firefox", "yes", "2", "512M", "1", "sys-net", "yes", "no"]
    assert out[3] == f"broken: {bad / 'blk'}: no disk image (blk/*.img, at least one is required)"


def test_list_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    make_vm(root / "vms", "mail")
    assert vm(root, "list", "--json") == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["name"] == "mail" and entry["valid"] and entry["memory"] == 1 << 30 and entry["policy"] is None


def test_status_of_stopped_stale_and_unknown(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vm(root, "status") == 0
    assert capsys.readouterr().out == f"no VMs under {root / 'vms'}\n"
    make_vm(root / "vms", "mail")
    stale = RunPaths(root / "run", "crashed")
    stale.vm_dir.mkdir(parents=True)
    rundir.write_state(stale, {"hypervisor": "cloud-hypervisor", "vmm": {"pid": 1, "start": -1},
                               "host_half": {"mode": "spawn", "socket": str(stale.host_socket)}})
    assert vm(root, "status") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == ["crashed", "stale", "(VMM", "gone)", "cloud-hypervisor", "-", "down", "-"]
    assert rows[2] == ["mail", "stopped", "-", "-", "-", "-"]
    assert vm(root, "status", "ghost") == 2
    assert f"no VM 'ghost': not under {root / 'vms'} and not running" in capsys.readouterr().err


# -- start and stop errors ------------------------------------------------------------------------

def test_start_refuses_bad_definition(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_vm(root / "vms", "web")
    (d / "vmlinux").unlink()
    assert vm(root, "start", "web") == 2
    err = capsys.readouterr().err
    assert err == (f"wlproxy vm: error: VM 'web' is not valid:\n"
                   f"  {d / 'vmlinux'}: the kernel (vmlinux, required) is missing\n")
    assert not (root / "run").exists()


def test_start_refuses_name_with_colon(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_vm(root / "vms", "a:b")
    assert vm(root, "start", "a:b") == 2
    assert "the VM name 'a:b' contains ':' or '/'" in capsys.readouterr().err


def test_start_with_qemu_unavailable(root: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    make_vm(root / "vms", "web")
    monkeypatch.setitem(sys.modules, "wlproxy.vm.qemu", None)  # as if the qemu backend were not installed
    assert vm(root, "start", "web", "--hypervisor", "qemu") == 2
    assert "the qemu backend (wlproxy.vm.qemu) is not available in this installation" in capsys.readouterr().err
    assert read_pids(root / "pids") == []


def test_start_with_bad_host_half_mode(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_vm(root / "vms", "web")
    assert vm(root, "start", "web", "--host-half", "runit") == 2
    assert "expected spawn, s6:SERVICEDIR or systemd" in capsys.readouterr().err


def test_start_without_cloud_hypervisor_undoes_everything(root: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WLPROXY_CLOUD_HYPERVISOR", raising=False)
    make_vm(root / "vms", "web")
    assert vm(root, "start", "web", "--hypervisor-binary", str(root / "missing-ch")) == 2
    assert "failed at step 'VMM': cloud-hypervisor not found" in capsys.readouterr().err
    [host_pid] = read_pids(root / "pids")  # the host half had come up, and was stopped again
    assert gone(host_pid)
    assert list((root / "run").iterdir()) == []


def test_detached_start_reports_the_failure(root: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    make_vm(root / "vms", "web")
    assert vm(root, "start", "web", "--detach", "--hypervisor-binary", shutil.which("false") or "false") == 2
    err = capsys.readouterr().err
    assert "failed at step 'create and boot'" in err and "exited with status 1 before it was ready" in err
    assert f"(log: {root / 'run' / 'web.wlproxy.log'})" in err
    [host_pid] = read_pids(root / "pids")
    assert gone(host_pid) and not (root / "run" / "web").exists()


def test_stop_when_not_running(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vm(root, "stop", "web") == 2
    assert f"VM 'web' is not running (no {root / 'run' / 'web'})" in capsys.readouterr().err


# -- services -------------------------------------------------------------------------------------

def test_services_needs_a_destination(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vm(root, "services") == 2
    assert "--s6 DIR and/or --systemd DIR" in capsys.readouterr().err


def test_services_written(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_vm(root / "vms", "web")
    make_vm(root / "vms", "mail")
    assert vm(root, "services", "--s6", str(root / "s6"), "--systemd", str(root / "sd"), "--port", "6100") == 0
    listed = capsys.readouterr().out.split()
    assert sorted(listed) == sorted(str(root / p) for p in (
        "s6/weston/run", "s6/weston/timeout-kill", "s6/wlproxy-host-mail/run", "s6/wlproxy-host-mail/down",
        "s6/wlproxy-host-mail/timeout-kill", "s6/wlproxy-host-mail/notification-fd", "s6/wlproxy-host-web/run",
        "s6/wlproxy-host-web/down", "s6/wlproxy-host-web/timeout-kill", "s6/wlproxy-host-web/notification-fd",
        "sd/wlproxy-host@.service", "sd/weston.service"))
    for f in map(Path, listed):
        assert not re.search(r"@[A-Z_]+@", f.read_text())  # every placeholder filled
        if f.name == "run":
            assert os.access(f, os.X_OK) and f.read_text().startswith("#!/bin/sh\n")
            assert subprocess.run(["sh", "-n", str(f)]).returncode == 0
    run = (root / "s6/wlproxy-host-web/run").read_text()
    assert f"vm host-half --ready-fd 3 --vms-dir {root / 'vms'} --run-dir {root / 'run'} --port 6100 --display wayland-1" in run
    unit = (root / "sd/wlproxy-host@.service").read_text()
    assert f"ExecStart={sys.executable} -m wlproxy -v vm host-half --vms-dir {root / 'vms'}" in unit
    assert unit.rstrip().endswith("WantedBy=multi-user.target") and "Restart=always" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(root: Path) -> None:
    assert vm(root, "services", "--systemd", str(root / "sd")) == 0
    inst = root / "sd" / "wlproxy-host@web.service"
    shutil.copy(root / "sd" / "wlproxy-host@.service", inst)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(root / "sd" / "weston.service"), str(inst)],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")


def test_systemd_quoting() -> None:
    from wlproxy.vm.servicegen import systemd_quote
    assert systemd_quote("/run/vm") == "/run/vm"
    assert systemd_quote("/my vms/50%") == '"/my vms/50%%"'
    assert systemd_quote('a"b$c') == '"a\\"b$$c"'


# -- host-half (what the service files run) -------------------------------------------------------

def test_host_half_execs_into_host_half(root: Path) -> None:
    make_vm(root / "vms", "web", full=True)
    paths = RunPaths(root / "run", "web", 6100)
    paths.vm_dir.mkdir(parents=True)
    paths.host_socket.write_text("stale socket left by kill -9")
    proc = subprocess.Popen([sys.executable, "-m", "wlproxy", "vm", "host-half", "--vms-dir", str(root / "vms"),
                             "--run-dir", str(root / "run"), "--port", "6100", "--display", "wayland-7", "web"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: paths.host_socket.is_socket(), 10, "the host half socket")
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(paths.host_socket))
            assert c.makefile().readline() == f"host half of web pid {proc.pid}\n"  # exec'd: same pid
        line = (root / "pids").read_text().split(maxsplit=1)[1].split()
        assert line == ["--listen", str(paths.host_socket), "--vm", "web", "--policy",
                        str(root / "vms" / "web" / "wlproxy.toml"), "--display", "wayland-7"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_host_half_unknown_vm(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vm(root, "host-half", "nope") == 2
    assert f"{root / 'vms' / 'nope'}: no such VM directory" in capsys.readouterr().err


# -- image (provided by hostvm.image) ------------------------------------------------------------

def test_image_unavailable_is_a_clear_error(root: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wlproxy.vm.image", None)
    assert main(["vm", "image", "build"]) == 2
    assert "guest image tooling (wlproxy.vm.image) is not available" in capsys.readouterr().err
