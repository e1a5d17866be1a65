"""Watching a running VM: restart a dead host half; when the VMM exits, stop the host half and clean up.

Waits on pidfds and a wake-up pipe (signals, :meth:`Supervisor.request_stop`), so it reacts at
once and never polls on a fixed sleep.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from types import FrameType

from wlproxy.vm import rundir
from wlproxy.vm.hosthalf import HostHalfError, SpawnedHostHalf
from wlproxy.vm.launch import Running
from wlproxy.vm.procs import stop_child
from wlproxy.logs import audit

log = logging.getLogger("hostvm.supervise")

MIN_BACKOFF = 0.05
MAX_BACKOFF = 5.0
STABLE_AFTER = 10.0  # a host half that lived this long restarts without delay again


class Supervisor:
    """Supervises one :class:`~wlproxy.vm.launch.Running` VM until its VMM exits."""

    def __init__(self, running: Running, timeout: float = 10.0, stop_timeout: float = 30.0,
                 kill_grace: float = 5.0) -> None:
        self.r = running
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.kill_grace = kill_grace  # between SIGTERM and SIGKILL for a VMM that will not stop
        self.restarts = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop_requested = False

    def request_stop(self) -> None:
        """Stop the VM (thread- and signal-safe)."""
        self._stop_requested = True
        try:
            os.write(self._wake_w, b"s")
        except BlockingIOError:
            pass

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP stop the VM cleanly (main thread only)."""
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: stopping %s", signal.Signals(signum).name, self.r.vm.name)
            self.request_stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, handler)

    def run(self) -> int:
        """Supervise; return 0 after a requested stop or a clean poweroff, 1 after a VMM crash."""
        name = self.r.vm.name
        sel = selectors.DefaultSelector()
        vmm_fd = os.pidfd_open(self.r.vmm.pid)
        sel.register(vmm_fd, selectors.EVENT_READ, "vmm")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        host_fd = self._watch_host(sel)
        host_started = time.monotonic()
        backoff = MIN_BACKOFF
        restart_at: float | None = None
        stop_deadline: float | None = None
        stopping = False
        try:
            while True:
                now = time.monotonic()
                waits = [t - now for t in (restart_at, stop_deadline) if t is not None]
                events = sel.select(max(0.0, min(waits)) if waits else None)
                tags = {key.data for key, _ in events}
                if "vmm" in tags:
                    break
                if "host" in tags and host_fd is not None:
                    sel.unregister(host_fd)
                    os.close(host_fd)
                    host_fd = None
                    status = self._reap_host()
                    lived = time.monotonic() - host_started
                    backoff = MIN_BACKOFF if lived >= STABLE_AFTER else min(backoff * 2, MAX_BACKOFF)
                    log.warning("host half of %s exited (status %s) after %.1f s", name, status, lived)
                    audit("host_half_died", vm=name, status=status)
                    if not stopping:
                        restart_at = time.monotonic() + backoff
                if "wake" in tags:
                    _drain(self._wake_r)
                if self._stop_requested and not stopping:
                    stopping = True
                    restart_at = None
                    stop_deadline = time.monotonic() + self.stop_timeout
                    self._ask_vmm_to_stop()
                now = time.monotonic()
                if restart_at is not None and now >= restart_at:
                    restart_at = None
                    try:
                        self.r.host_half.start(self.timeout)
                    except HostHalfError as e:
                        log.error("restarting the host half of %s failed: %s", name, e)
                        backoff = min(backoff * 2, MAX_BACKOFF)
                        restart_at = time.monotonic() + backoff
                    else:
                        self.restarts += 1
                        host_started = time.monotonic()
                        host_fd = self._watch_host(sel)
                        ref = self.r.host_half.proc_ref()
                        audit("host_half_restarted", vm=name, restarts=self.restarts, pid=ref.pid if ref else None)
                        rundir.write_state(self.r.paths, self.r.state())
                if stop_deadline is not None and now >= stop_deadline:
                    log.warning("VMM of %s did not exit %.0f s after the stop request", name, self.stop_timeout)
                    stop_deadline = None
                    stop_child(self.r.vmm, self.kill_grace, f"VMM of {name}")
        finally:
            sel.close()
            os.close(vmm_fd)
            if host_fd is not None:
                os.close(host_fd)
        return self._finish(stopping)

    def _watch_host(self, sel: selectors.BaseSelector) -> int | None:
        hh = self.r.host_half
        if isinstance(hh, SpawnedHostHalf) and hh.proc is not None:
            fd = os.pidfd_open(hh.proc.pid)
            sel.register(fd, selectors.EVENT_READ, "host")
            return fd
        return None

    def _reap_host(self) -> int | None:
        hh = self.r.host_half
        return hh.proc.wait() if isinstance(hh, SpawnedHostHalf) and hh.proc is not None else None

    def _ask_vmm_to_stop(self) -> None:
        log.info("stopping VM %s", self.r.vm.name)
        try:
            self.r.hypervisor.shutdown(self.r.paths, self.stop_timeout)
        except Exception as e:  # any backend's failure: fall back to signals
            log.warning("shutdown of %s through %s failed (%s): terminating the VMM",
                        self.r.vm.name, self.r.hypervisor.name, e)
            stop_child(self.r.vmm, self.kill_grace, f"VMM of {self.r.vm.name}")

    def _finish(self, stopping: bool) -> int:
        name = self.r.vm.name
        status = self.r.vmm.wait()
        reason = "stopped" if stopping else "poweroff" if status == 0 else "crashed"
        log.info("VMM of %s exited with status %d (%s): stopping its host half", name, status, reason)
        try:
            self.r.host_half.stop(self.timeout)
        except HostHalfError as e:
            log.error("%s", e)
        rundir.clean(self.r.paths)
        audit("vm_exited", vm=name, status=status, reason=reason, host_half_restarts=self.restarts)
        os.close(self._wake_r)
        os.close(self._wake_w)
        return 0 if stopping or status == 0 else 1


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
