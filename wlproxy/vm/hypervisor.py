"""The hypervisor backend interface, and looking a backend up by name.

A backend starts the VMM process (:meth:`Hypervisor.spawn`), configures and boots the VM
(:meth:`Hypervisor.boot`), asks it to stop (:meth:`Hypervisor.shutdown`) and reports its state
(:meth:`Hypervisor.vm_state`). :mod:`wlproxy.vm.launch` owns the process: it kills it if any later
step fails. Backends: ``cloud-hypervisor`` (:mod:`wlproxy.vm.cloudhv`) and ``qemu``, which lives in
:mod:`wlproxy.vm.qemu` and must provide ``make_hypervisor(binary: str | None) -> Hypervisor``.
"""

from __future__ import annotations

import abc
import importlib
import subprocess
from typing import ClassVar

from wlproxy.vm.rundir import RunPaths
from wlproxy.vm.vmdef import VmDef

HYPERVISORS: dict[str, str] = {"cloud-hypervisor": "wlproxy.vm.cloudhv", "qemu": "wlproxy.vm.qemu"}


class HypervisorError(Exception):
    """A backend failed (missing binary, refused configuration, boot failure)."""


class HypervisorUnavailable(HypervisorError):
    """The backend's module or binary is not installed."""


class Hypervisor(abc.ABC):
    """One VMM implementation."""

    name: ClassVar[str]

    @abc.abstractmethod
    def spawn(self, vm: VmDef, paths: RunPaths) -> subprocess.Popen[bytes]:
        """Start the VMM process (in its own process group), not yet booted."""

    @abc.abstractmethod
    def boot(self, vm: VmDef, paths: RunPaths, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Wait until the VMM is ready, configure the VM and boot it; raise on failure or timeout."""

    @abc.abstractmethod
    def shutdown(self, paths: RunPaths, timeout: float) -> None:
        """Ask the VM and then the VMM to stop; the caller waits for (and if need be kills) the process."""

    @abc.abstractmethod
    def vm_state(self, paths: RunPaths) -> str:
        """The VM's state as the VMM reports it (``Running``, ``Created``, ...), or ``unreachable``."""


def get_hypervisor(name: str, binary: str | None = None) -> Hypervisor:
    """The backend called ``name``; :class:`HypervisorUnavailable` if it is not installed."""
    if name not in HYPERVISORS:
        raise HypervisorError(f"unknown hypervisor {name!r} (known: {', '.join(HYPERVISORS)})")
    try:
        mod = importlib.import_module(HYPERVISORS[name])
    except ImportError as e:
        raise HypervisorUnavailable(
            f"the {name} backend ({HYPERVISORS[name]}) is not available in this installation: {e}") from e
    make = getattr(mod, "make_hypervisor", None)
    if make is None:
        raise HypervisorUnavailable(f"{HYPERVISORS[name]} has no make_hypervisor(): the {name} backend is incomplete")
    return make(binary)
