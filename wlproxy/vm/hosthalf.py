"""The VM's wlproxy host half: its command line, and starting/stopping it.

Three ways to run it (``--host-half``): ``spawn`` (a child of ``wlproxy vm start``, restarted by
:mod:`wlproxy.vm.supervise`), ``s6:SERVICEDIR`` (an s6 service made by ``wlproxy vm services --s6``;
s6-supervise restarts it) and ``systemd`` (the ``wlproxy-host@NAME`` unit). It is ready when its
socket ``RUN_DIR/NAME/vsock_PORT`` accepts a connection.
"""

from __future__ import annotations

import abc
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from wlproxy.vm.procs import NotReady, ProcRef, stop_child, unix_accepts, wait_until
from wlproxy.vm.rundir import RunPaths

log = logging.getLogger("hostvm.hosthalf")

ENV_COMMAND = "WLPROXY_HOST_COMMAND"  # replaces "python -m wlproxy host"; meant for tests
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL (s6: the service's timeout-kill file)


class HostHalfError(Exception):
    """The host half could not be started or stopped."""


def host_command(name: str, socket: Path, policy: Path | None, display: str | None, *,
                 ready_fd: int | None = None, allow_root: bool = False,
                 vms_dir: Path | None = None) -> list[str]:
    """``python -m wlproxy host --listen SOCKET --vm NAME [--policy P] [--display D] [--ready-fd FD]
    [--allow-root]``."""
    override = os.environ.get(ENV_COMMAND)
    base = shlex.split(override) if override else [sys.executable, "-m", "wlproxy", "host"]
    cmd = base + ["--listen", str(socket), "--vm", name]
    if policy is not None:
        cmd += ["--policy", str(policy)]
    if display:
        cmd += ["--display", display]
    if policy is None and vms_dir is not None:  # no policy file there: the defaults, not another dir's
        cmd += ["--vms-dir", str(vms_dir)]
    if ready_fd is not None:
        cmd += ["--ready-fd", str(ready_fd)]
    if allow_root:
        cmd.append("--allow-root")
    return cmd


def prepare_socket_dir(paths: RunPaths) -> None:
    """Create the run dir and remove a stale socket left by a killed host half."""
    paths.vm_dir.mkdir(parents=True, exist_ok=True)
    try:
        paths.host_socket.unlink()
        log.info("removed stale socket %s", paths.host_socket)
    except FileNotFoundError:
        pass


class HostHalf(abc.ABC):
    """Starts and stops one VM's host half."""

    mode: str
    restarts_itself: bool = False  # True when a service manager restarts it after a crash

    def __init__(self, name: str, paths: RunPaths, policy: Path | None, display: str | None) -> None:
        self.name, self.paths, self.policy, self.display = name, paths, policy, display

    @abc.abstractmethod
    def start(self, timeout: float) -> None:
        """Start it and wait until its socket accepts; on failure leave nothing running."""

    @abc.abstractmethod
    def stop(self, timeout: float) -> None:
        """Stop it and wait for it to be gone."""

    def proc_ref(self) -> ProcRef | None:
        """Its process, when known."""
        return None

    def describe(self) -> dict[str, object]:
        ref = self.proc_ref()
        return {"mode": self.mode, "socket": str(self.paths.host_socket), **(ref.to_json() if ref else {})}

    def wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        wait_until(lambda: unix_accepts(self.paths.host_socket), timeout,
                   f"host half of {self.name} on {self.paths.host_socket}", proc)


class SpawnedHostHalf(HostHalf):
    """A child process of this supervisor."""

    mode = "spawn"

    def __init__(self, name: str, paths: RunPaths, policy: Path | None, display: str | None) -> None:
        super().__init__(name, paths, policy, display)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        prepare_socket_dir(self.paths)
        cmd = host_command(self.name, self.paths.host_socket, self.policy, self.display)
        log.info("starting host half: %s", shlex.join(cmd))
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, process_group=0)
        except OSError as e:
            raise HostHalfError(f"cannot run the host half ({shlex.join(cmd)}): {e}") from e
        try:
            self.wait_ready(timeout, self.proc)
        except NotReady as e:
            self.stop(timeout)
            raise HostHalfError(str(e)) from e
        log.info("host half of %s ready (pid %d)", self.name, self.proc.pid)

    def stop(self, timeout: float) -> None:
        if self.proc is not None:
            stop_child(self.proc, min(timeout, STOP_GRACE), f"host half of {self.name}")
        try:
            self.paths.host_socket.unlink()
        except FileNotFoundError:
            pass

    def proc_ref(self) -> ProcRef | None:
        return ProcRef.of(self.proc.pid) if self.proc is not None and self.proc.poll() is None else None


class ServiceHostHalf(HostHalf):
    """Run by a service manager, which also restarts it."""

    restarts_itself = True

    def __init__(self, name: str, paths: RunPaths, policy: Path | None, display: str | None,
                 mode: str, up: list[str], down: list[str]) -> None:
        super().__init__(name, paths, policy, display)
        self.mode, self.up, self.down = mode, up, down

    def _run(self, argv: list[str], timeout: float) -> None:
        log.info("running %s", shlex.join(argv))
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise HostHalfError(f"{shlex.join(argv)} failed: {e}") from e
        if r.returncode != 0:
            raise HostHalfError(f"{shlex.join(argv)} exited with status {r.returncode}: "
                                f"{(r.stderr or r.stdout).strip()}")

    def start(self, timeout: float) -> None:
        self.paths.vm_dir.mkdir(parents=True, exist_ok=True)
        self._run(self.up, timeout)
        try:
            self.wait_ready(timeout)
        except NotReady as e:
            self.stop(timeout)
            raise HostHalfError(str(e)) from e
        log.info("host half of %s ready (%s)", self.name, self.mode)

    def stop(self, timeout: float) -> None:
        self._run(self.down, timeout + 5)


def make_host_half(spec: str, name: str, paths: RunPaths, policy: Path | None,
                   display: str | None, timeout: float = 10.0) -> HostHalf:
    """``spawn``, ``s6:SERVICEDIR`` or ``systemd``."""
    if spec == "spawn":
        return SpawnedHostHalf(name, paths, policy, display)
    if spec.startswith("s6:") and len(spec) > 3:
        d = str(Path(spec[3:]).absolute())
        ms = str(int(timeout * 1000))
        # -r: a host half still up from earlier listens on a socket that was removed; restart it.
        return ServiceHostHalf(name, paths, policy, display, f"s6:{d}",
                               ["s6-svc", "-r", "-u", d], ["s6-svc", "-wD", "-T", ms, "-d", d])
    if spec == "systemd":
        unit = f"wlproxy-host@{name}.service"
        return ServiceHostHalf(name, paths, policy, display, spec,
                               ["systemctl", "restart", unit], ["systemctl", "stop", unit])
    raise HostHalfError(f"--host-half {spec!r}: expected spawn, s6:SERVICEDIR or systemd")
