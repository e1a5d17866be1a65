"""Services an OS can rely on: the host half reports readiness (``READY=1`` to ``$NOTIFY_SOCKET``,
a newline on s6's notification-fd), refuses root unless told, the s6 run script drops privileges
(real s6-supervise), and the systemd unit is sandboxed (``systemd-analyze security`` exposure
at most 3.0)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_hostvm_common import ROOT, make_vm, short_tmpdir, wait_for
from wlproxy.cli import main as wlproxy_main
from wlproxy.vm.procs import unix_accepts


SYSTEM_PYTHON = "/usr/bin/python3"


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def test_systemd_unit_is_sandboxed_and_notifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    assert wlproxy_main(["vm", "services", "--vms-dir", str(tmp_path / "vms"), "--run-dir", "/run/vm",
                         "--systemd", str(tmp_path / "sd"), "--socket-group", "wayland"]) == 0
    text = (tmp_path / "sd" / "wlproxy-host@.service").read_text()
    for line in ("Type=notify", "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX AF_VSOCK", "MemoryDenyWriteExecute=yes",
                 "SupplementaryGroups=wayland", "RuntimeDirectory=vm/%i"):
        assert line in text.splitlines(), line
    inst = tmp_path / "sd" / "wlproxy-host@work.service"
    inst.write_text(text)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(inst)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 3.0, r.stdout


def test_host_half_sends_ready_to_notify_socket(tmp_path: Path) -> None:
    d = short_tmpdir("nt")
    try:
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(d / "notify"))
        ns.settimeout(15)
        link = d / "link"
        proc = subprocess.Popen([sys.executable, "-m", "wlproxy", "host", "--listen", f"unix:{link}", "--vm", "n"],
                                env=_env(NOTIFY_SOCKET=str(d / "notify")), stderr=subprocess.PIPE, cwd=ROOT)
        try:
            msg = ns.recv(4096).decode()
            assert unix_accepts(link)  # ready means listening
        finally:
            proc.terminate()
            proc.wait(10)
        fields = dict(line.split("=", 1) for line in msg.splitlines())
        assert fields["READY"] == "1" and fields["MAINPID"] == str(proc.pid)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_host_half_refuses_root_unless_told(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not running as root")
    env = _env()
    env.pop("WLPROXY_ALLOW_ROOT", None)
    r = subprocess.run([sys.executable, "-m", "wlproxy", "host", "--listen", f"unix:{tmp_path / 'l'}"],
                       env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "refusing to run as root" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "l").exists()


def test_s6_service_drops_root_and_reports_ready() -> None:
    if shutil.which("s6-svscan") is None:
        pytest.skip("s6 is not installed (apt-get install s6)")
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    root = short_tmpdir("s6r")
    root.chmod(0o755)  # the host half runs as nobody
    make_vm(root / "vms", "appvm")
    for p in (root / "vms", root / "vms" / "appvm"):
        p.chmod(0o755)
    env = _env(XDG_RUNTIME_DIR=str(root / "xdg"))
    env.pop("WLPROXY_ALLOW_ROOT", None)  # nobody needs no permission
    # The venv's interpreter may live where nobody cannot reach (/root/.pyenv): the system python
    # with only the runtime's two dependencies (python3-cffi, python3-xdg) writes and runs the service.
    py = SYSTEM_PYTHON
    if subprocess.run(["s6-setuidgid", "nobody", py, "-c", "import cffi, xdg"], env=env,
                      capture_output=True).returncode != 0:
        pytest.skip(f"nobody cannot run {py} with cffi and xdg (apt-get install python3-cffi python3-xdg)")
    r = subprocess.run([py, "-m", "wlproxy", "vm", "services", "--vms-dir", str(root / "vms"),
                        "--run-dir", str(root / "run"), "--s6", str(root / "scan"), "--user", "nobody"],
                       env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    svc = root / "scan" / "wlproxy-host-appvm"
    assert "s6-setuidgid nobody" in (svc / "run").read_text()
    assert (svc / "notification-fd").read_text().strip() == "3"
    svscan = subprocess.Popen(["s6-svscan", str(root / "scan")], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: subprocess.run(["s6-svstat", str(svc)], capture_output=True).returncode == 0, 10,
                 "s6-supervise")
        subprocess.run(["s6-svc", "-u", str(svc)], check=True)
        # -U: wait until up *and ready*, which only the host half's newline on fd 3 makes it
        w = subprocess.run(["s6-svwait", "-U", "-t", "20000", str(svc)], capture_output=True, text=True)
        assert w.returncode == 0, w.stderr
        st = subprocess.run(["s6-svstat", "-o", "up,ready,pid", str(svc)], capture_output=True, text=True,
                            check=True).stdout.split()
        assert st[:2] == ["true", "true"]
        uid = next(ln.split()[1] for ln in Path(f"/proc/{st[2]}/status").read_text().splitlines()
                   if ln.startswith("Uid:"))
        assert int(uid) == 65534  # nobody
        assert unix_accepts(root / "run" / "appvm" / "vsock_6000")
    finally:
        subprocess.run(["s6-svscanctl", "-t", str(root / "scan")], check=False)
        try:
            svscan.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(svscan.pid, signal.SIGKILL)
            svscan.wait()
        shutil.rmtree(root, ignore_errors=True)
