"""Runtime state of one VM: paths under ``RUN_DIR/NAME`` and its ``state.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wlproxy.vm.procs import ProcRef

log = logging.getLogger("hostvm.rundir")

DEFAULT_RUN_DIR = Path("/run/vm")
DEFAULT_PORT = 6000
SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the NUL


@dataclass(frozen=True)
class RunPaths:
    """Where one VM's sockets and state live (Spectrum: ``/run/vm/NAME/{vmm,vsock}``)."""

    run_dir: Path
    name: str
    port: int = DEFAULT_PORT

    @property
    def vm_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def api(self) -> Path:
        """cloud-hypervisor's API socket."""
        return self.vm_dir / "vmm"

    @property
    def vsock(self) -> Path:
        """The hybrid vsock socket; the guest's connections to port N arrive at ``vsock_N``."""
        return self.vm_dir / "vsock"

    @property
    def host_socket(self) -> Path:
        """Where the host half listens for the guest half (``vsock_PORT``)."""
        return self.vm_dir / f"vsock_{self.port}"

    @property
    def state(self) -> Path:
        return self.vm_dir / "state.json"

    @property
    def serial_log(self) -> Path:
        """The guest's serial console; kept beside, not in, the VM's run dir so it outlives it."""
        return self.run_dir / f"{self.name}.log"

    @property
    def supervisor_log(self) -> Path:
        """Output of a detached ``vm start``."""
        return self.run_dir / f"{self.name}.wlproxy.log"

    def socket_problem(self) -> str | None:
        """Why the longest socket path would not fit in a Unix address, or None."""
        longest = max((self.api, self.host_socket, Path(f"{self.vsock}_{(1 << 32) - 1}")),
                      key=lambda p: len(os.fsencode(p)))
        n = len(os.fsencode(longest))
        if n > SUN_PATH_MAX:
            return f"socket path {longest} is {n} bytes, more than {SUN_PATH_MAX}: use a shorter --run-dir or VM name"
        return None


def write_state(paths: RunPaths, state: dict[str, Any]) -> None:
    """Atomically replace ``state.json``."""
    tmp = paths.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, paths.state)


def read_state(paths: RunPaths) -> dict[str, Any] | None:
    try:
        data = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def state_proc(state: dict[str, Any] | None, key: str) -> ProcRef | None:
    """The ProcRef stored under ``state[key]`` (``vmm``, ``host_half``, ``supervisor``)."""
    return ProcRef.from_json(state.get(key)) if state else None


def running_names(run_dir: Path) -> list[str]:
    """Names with a run dir (running, or left stale by a crash)."""
    try:
        return sorted(e.name for e in run_dir.iterdir() if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []


def clean(paths: RunPaths) -> None:
    """Remove the VM's run dir with every socket in it."""
    if paths.vm_dir.is_dir():
        shutil.rmtree(paths.vm_dir, ignore_errors=True)
        log.info("removed %s", paths.vm_dir)
