"""Processes and readiness: identify pids safely, wait for exit or readiness with a timeout."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("hostvm.procs")

POLL_INTERVAL = 0.02  # between readiness probes; every wait is bounded by its own timeout


class NotReady(Exception):
    """A readiness wait failed: the timeout passed, or the process exited first."""


@dataclass(frozen=True)
class ProcRef:
    """A pid plus its start time (``/proc/PID/stat`` field 22), so a reused pid is not mistaken."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> "ProcRef | None":
        start = start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        """True while the process runs (a zombie counts as dead)."""
        return start_time(self.pid) == self.start and _state(self.pid) not in ("Z", "X", None)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, d: object) -> "ProcRef | None":
        if isinstance(d, dict) and isinstance(d.get("pid"), int) and isinstance(d.get("start"), int):
            return cls(d["pid"], d["start"])
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on; comm may hold spaces


def start_time(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def _state(pid: int) -> str | None:
    f = _stat_fields(pid)
    return f[0] if f else None


def wait_exit(ref: ProcRef, timeout: float) -> bool:
    """Wait up to ``timeout`` s for a process (child or not) to exit; True if it did."""
    if not ref.alive():
        return True
    try:
        fd = os.pidfd_open(ref.pid)
    except ProcessLookupError:
        return True
    try:
        if not ref.alive():  # the pid may have been reused between the check and pidfd_open
            return True
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if poller.poll(max(0, int(left * 1000))):
                return True
            if left <= 0:
                return not ref.alive()
    finally:
        os.close(fd)


def terminate(ref: ProcRef, timeout: float, what: str) -> None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL (and wait for that too)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not ref.alive():
            return
        log.info("sending %s to %s (pid %d)", sig.name, what, ref.pid)
        try:
            os.kill(ref.pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(ref, timeout):
            return
    log.error("%s (pid %d) survived SIGKILL", what, ref.pid)


def stop_child(proc: subprocess.Popen[bytes], timeout: float, what: str) -> int | None:
    """Terminate and reap a child process; return its exit status."""
    if proc.poll() is None:
        log.info("stopping %s (pid %d)", what, proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM for %.1f s: SIGKILL", what, proc.pid, timeout)
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    """Probe ``check`` until it is true; raise :class:`NotReady` on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise NotReady(f"{what}: the process exited with status {proc.returncode} before it was ready")
        if time.monotonic() >= deadline:
            raise NotReady(f"{what}: not ready after {timeout:g} s")
        time.sleep(POLL_INTERVAL)


def unix_accepts(path: Path, timeout: float = 1.0) -> bool:
    """True if a Unix stream socket at ``path`` accepts a connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
