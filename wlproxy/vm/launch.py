"""Starting a VM (run dir, host half, VMM, create + boot) with undo, and stopping one.

Every step waits for readiness with a timeout; if a step fails, the steps before it are undone
in reverse order, so a failed start leaves no process and no socket behind.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from wlproxy.vm import hosthalf, rundir
from wlproxy.vm.chapi import ChError
from wlproxy.vm.hosthalf import HostHalf, HostHalfError
from wlproxy.vm.hypervisor import Hypervisor, HypervisorError
from wlproxy.vm.procs import ProcRef, stop_child, terminate, wait_exit
from wlproxy.vm.rundir import RunPaths
from wlproxy.vm.vmdef import VmDef
from wlproxy.logs import audit

log = logging.getLogger("hostvm.launch")


class StartError(Exception):
    """Starting failed at ``step``; everything done before it has been undone."""

    def __init__(self, name: str, step: str, reason: str) -> None:
        self.step = step
        super().__init__(f"starting VM {name!r} failed at step '{step}': {reason}")


class NotRunning(Exception):
    """The VM has no run dir."""


@dataclass
class Running:
    """A started VM: the VMM process and its host half."""

    vm: VmDef
    paths: RunPaths
    hypervisor: Hypervisor
    vmm: subprocess.Popen[bytes]
    host_half: HostHalf
    extra: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """What ``state.json`` records (read by ``vm status`` and ``vm stop``)."""
        me = ProcRef.of(os.getpid())
        vmm = ProcRef.of(self.vmm.pid)
        return {
            "name": self.vm.name, "hypervisor": self.hypervisor.name, "vm_dir": str(self.vm.path),
            "vmm": vmm.to_json() if vmm else None, "host_half": self.host_half.describe(),
            "supervisor": me.to_json() if me else None, "api_socket": str(self.paths.api),
            "vsock_socket": str(self.paths.vsock), "serial_log": str(self.paths.serial_log),
            "net_providers": list(self.vm.net_providers),
            "policy": str(self.vm.policy) if self.vm.policy else None, **self.extra,
        }


def _claim_run_dir(paths: RunPaths) -> None:
    """Create ``RUN_DIR/NAME``; clear it first if a crashed run left it behind."""
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        paths.vm_dir.mkdir(mode=0o750)
        return
    except FileExistsError:
        pass
    state = rundir.read_state(paths)
    live = [k for k in ("supervisor", "vmm", "host_half") if (r := rundir.state_proc(state, k)) and r.alive()]
    if live or (state is None and any(paths.vm_dir.iterdir())):
        raise StartError(paths.name, "run dir", f"{paths.vm_dir} is in use ({', '.join(live) or 'starting'}); "
                         f"is the VM already running? ('wlproxy vm status {paths.name}'; "
                         f"'wlproxy vm stop {paths.name}' clears what a crashed start left)")
    log.warning("removing stale run dir %s left by an earlier run", paths.vm_dir)
    rundir.clean(paths)
    paths.vm_dir.mkdir(mode=0o750)


def start(vm: VmDef, paths: RunPaths, hypervisor: Hypervisor, host_half: HostHalf,
          timeout: float = 10.0) -> Running:
    """Run the start sequence; on failure undo every earlier step and raise :class:`StartError`."""
    if (problem := paths.socket_problem()) is not None:
        raise StartError(vm.name, "run dir", problem)
    undo: list[tuple[str, Callable[[], None]]] = []
    step = "run dir"
    try:
        try:
            _claim_run_dir(paths)
        except OSError as e:
            raise StartError(vm.name, step, f"cannot create {paths.vm_dir}: {e.strerror} (use --run-dir)") from e
        undo.append(("remove run dir", lambda: rundir.clean(paths)))

        step = "host half"
        host_half.start(timeout)
        undo.append(("stop host half", lambda: host_half.stop(timeout)))

        step = "VMM"
        vmm = hypervisor.spawn(vm, paths)

        def stop_vmm() -> None:
            stop_child(vmm, timeout, f"{hypervisor.name} of {vm.name}")
            for sock in (paths.api, paths.vsock):
                sock.unlink(missing_ok=True)

        undo.append(("stop VMM", stop_vmm))

        step = "create and boot"
        hypervisor.boot(vm, paths, vmm, timeout)
    except BaseException as e:  # undo on anything, Ctrl-C included
        expected = isinstance(e, (StartError, HostHalfError, HypervisorError, ChError, OSError))
        log.error("start of %s failed at %s: %s", vm.name, step, e, exc_info=not expected)
        for what, action in reversed(undo):
            log.info("undo: %s", what)
            try:
                action()
            except Exception:  # keep undoing the rest
                log.exception("undo step %r failed", what)
        audit("vm_start_failed", vm=vm.name, step=step, error=str(e))
        if isinstance(e, StartError) or not isinstance(e, Exception):
            raise
        raise StartError(vm.name, step, str(e) or e.__class__.__name__) from e
    running = Running(vm, paths, hypervisor, vmm, host_half)
    rundir.write_state(paths, running.state())
    audit("vm_started", vm=vm.name, hypervisor=hypervisor.name, vmm_pid=vmm.pid,
          host_half=host_half.mode, net_providers=list(vm.net_providers), run_dir=str(paths.vm_dir))
    return running


def stop(paths: RunPaths, hypervisor: Hypervisor, timeout: float = 30.0) -> str:
    """``vm.shutdown``, ``vmm.shutdown``, then wait for the supervisor to stop the host half and clean up.

    Without a live supervisor (it crashed), do its part here. Returns a one-line summary.
    """
    if not paths.vm_dir.is_dir():
        raise NotRunning(f"VM {paths.name!r} is not running (no {paths.vm_dir})")
    state = rundir.read_state(paths)
    vmm = rundir.state_proc(state, "vmm")
    supervisor = rundir.state_proc(state, "supervisor")
    t0 = time.monotonic()
    if vmm is not None and vmm.alive():
        try:
            hypervisor.shutdown(paths, timeout)
        except Exception as e:  # any backend's failure: fall back to signals
            log.warning("shutdown of %s through %s failed (%s): terminating the VMM", paths.name, hypervisor.name, e)
        if not wait_exit(vmm, timeout):
            log.warning("VMM of %s (pid %d) still running after %.0f s", paths.name, vmm.pid, timeout)
        terminate(vmm, 5.0, f"VMM of {paths.name}")
    if supervisor is not None and supervisor.pid != os.getpid() and supervisor.alive():
        if wait_exit(supervisor, timeout):
            how = "stopped"
        else:
            log.warning("supervisor of %s (pid %d) did not finish: cleaning up here", paths.name, supervisor.pid)
            how = "stopped (supervisor did not finish)"
    else:
        how = "stopped (no supervisor: cleaned up here)"
    host = rundir.state_proc(state, "host_half")
    mode = (state or {}).get("host_half", {}).get("mode", "spawn")
    if host is not None and host.alive() and mode == "spawn":
        terminate(host, hosthalf.STOP_GRACE, f"host half of {paths.name}")
    elif mode != "spawn" and paths.vm_dir.is_dir():
        from wlproxy.vm.hosthalf import make_host_half
        try:
            make_host_half(mode, paths.name, paths, None, None, timeout).stop(timeout)
        except HostHalfError as e:
            log.warning("%s", e)
    rundir.clean(paths)
    audit("vm_stopped", vm=paths.name, seconds=round(time.monotonic() - t0, 3))
    return f"{paths.name}: {how}"
