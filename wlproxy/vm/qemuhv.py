"""The qemu backend behind :mod:`wlproxy.vm.launch`'s :class:`~wlproxy.vm.hypervisor.Hypervisor` interface.

It maps a VM definition (:class:`~wlproxy.vm.vmdef.VmDef`) and its run paths to
:mod:`wlproxy.vm.qemu`: QMP on the run dir's ``vmm`` socket, the serial console to
the run paths' log, and the virtio-console port ``wlproxy.0`` connected to the
host half's listening socket (``vsock_<port>``). Sharing a host directory over
9p is opt-in: the ``share_root`` option, or a ``share-root`` file in the VM's
definition directory holding the path (the guest can read all of it).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from wlproxy.vm import qemu
from wlproxy.vm.hypervisor import Hypervisor, HypervisorError, HypervisorUnavailable
from wlproxy.vm.rundir import RunPaths
from wlproxy.vm.vmdef import VmDef

log = logging.getLogger("hostvm.qemu")

ENV_ACCEL = "WLPROXY_QEMU_ACCEL"
SHARE_ROOT_FILE = "share-root"


def vm_files(paths: RunPaths) -> qemu.VmFiles:
    """qemu's files for a VM's run paths (QMP on ``vmm``, logs beside the run dir)."""
    return qemu.VmFiles(paths.vm_dir, paths.api, paths.serial_log, paths.run_dir / f"{paths.name}.qemu.log")


def share_root_of(vm: VmDef) -> Path | None:
    """The host directory the definition asks to share (``share-root`` file), or None."""
    f = vm.path / SHARE_ROOT_FILE
    if not f.exists():
        return None
    text = f.read_text().strip()
    return Path(text or "/")


class QemuHypervisor(Hypervisor):
    """Boots VM definitions with qemu (TCG unless ``accel="kvm"``)."""

    name = "qemu"

    def __init__(self, binary: str | None = None, *, accel: str | None = None, machine: str = "microvm",
                 share_root: Path | None = None, powerdown_timeout: float = 3.0) -> None:
        self.binary = binary
        self.accel = accel or os.environ.get(ENV_ACCEL) or "tcg"
        self.machine = machine
        self.share_root = share_root
        self.powerdown_timeout = powerdown_timeout
        self.accelerator: str | None = None  # what actually ran, after boot()

    def config(self, vm: VmDef, paths: RunPaths) -> qemu.VmConfig:
        return qemu.VmConfig(
            name=vm.name, kernel=vm.kernel, initramfs=vm.initramfs, cmdline=vm.cmdline,
            memory_mib=vm.memory >> 20, cpus=vm.cpus, disks=list(vm.disks),
            share_root=self.share_root or share_root_of(vm),
            ports=[qemu.Port(qemu.DEFAULT_PORT, paths.host_socket, connect=True)],
            machine=self.machine, accel=self.accel)

    def spawn(self, vm: VmDef, paths: RunPaths) -> subprocess.Popen[bytes]:
        try:
            exe = qemu.find_qemu(self.binary)
        except qemu.QemuError as e:
            raise HypervisorUnavailable(str(e)) from e
        try:
            return qemu.spawn(self.config(vm, paths), vm_files(paths), exe)
        except qemu.QemuError as e:
            raise HypervisorError(str(e)) from e

    def boot(self, vm: VmDef, paths: RunPaths, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """qemu boots as soon as it starts: wait until QMP reports it running."""
        try:
            self.accelerator = qemu.wait_ready(proc, vm_files(paths), timeout, vm.name)
        except qemu.QemuError as e:
            raise HypervisorError(str(e)) from e

    def shutdown(self, paths: RunPaths, timeout: float) -> None:
        files = vm_files(paths)
        if not qemu.shutdown(files, min(self.powerdown_timeout, timeout), min(5.0, timeout)):
            log.warning("qemu of %s did not exit on power-down or quit", paths.name)

    def vm_state(self, paths: RunPaths) -> str:
        return qemu.vm_state(vm_files(paths))
