"""The cloud-hypervisor backend: ``cloud-hypervisor --api-socket``, then ``vm.create`` + ``vm.boot``."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Any

from wlproxy.vm.chapi import ApiError, ChClient, ChError
from wlproxy.vm.hypervisor import Hypervisor, HypervisorError, HypervisorUnavailable
from wlproxy.vm.procs import NotReady, wait_until
from wlproxy.vm.rundir import RunPaths
from wlproxy.vm.vmdef import VmDef

log = logging.getLogger("hostvm.cloudhv")

ENV_BINARY = "WLPROXY_CLOUD_HYPERVISOR"
GUEST_CID = 3


def vm_config(vm: VmDef, paths: RunPaths) -> dict[str, Any]:
    """The ``vm.create`` body (a VmConfig) for ``vm``, laid out as Spectrum's launcher does."""
    payload: dict[str, Any] = {"kernel": str(vm.kernel), "cmdline": vm.cmdline}
    if vm.initramfs is not None:
        payload["initramfs"] = str(vm.initramfs)
    return {
        "payload": payload,
        "cpus": {"boot_vcpus": vm.cpus, "max_vcpus": vm.cpus},
        "memory": {"size": vm.memory, "shared": True},
        "disks": [{"path": str(d), "readonly": True} for d in vm.disks],
        "vsock": {"cid": GUEST_CID, "socket": str(paths.vsock)},
        "serial": {"mode": "File", "file": str(paths.serial_log)},
        "console": {"mode": "Pty"},
    }


def find_binary(binary: str | None = None) -> str | None:
    """``binary``, else ``$WLPROXY_CLOUD_HYPERVISOR``, else ``cloud-hypervisor`` on PATH."""
    candidate = binary or os.environ.get(ENV_BINARY) or "cloud-hypervisor"
    return shutil.which(candidate)


class CloudHypervisor(Hypervisor):
    """Drives one ``cloud-hypervisor`` process through its API socket."""

    name = "cloud-hypervisor"

    def __init__(self, binary: str | None = None, api_timeout: float = 10.0) -> None:
        self.binary = binary
        self.api_timeout = api_timeout

    def spawn(self, vm: VmDef, paths: RunPaths) -> subprocess.Popen[bytes]:
        exe = find_binary(self.binary)
        if exe is None:
            raise HypervisorUnavailable(
                f"cloud-hypervisor not found ({self.binary or os.environ.get(ENV_BINARY) or 'cloud-hypervisor'} "
                f"is not an executable on PATH; set --hypervisor-binary or ${ENV_BINARY})")
        argv = [exe, "--api-socket", f"path={paths.api}"]
        log.info("starting %s", " ".join(argv))
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0)

    def boot(self, vm: VmDef, paths: RunPaths, proc: subprocess.Popen[bytes], timeout: float) -> None:
        client = ChClient(paths.api, self.api_timeout)

        def api_up() -> bool:
            try:
                client.ping()
                return True
            except ChError:
                return False

        try:
            wait_until(api_up, timeout, f"cloud-hypervisor API socket {paths.api}", proc)
        except NotReady as e:
            raise HypervisorError(str(e)) from e
        config = vm_config(vm, paths)
        log.info("vm.create for %s: %d vCPU, %d MiB, %d disk(s)", vm.name, vm.cpus, vm.memory >> 20, len(vm.disks))
        log.debug("VmConfig: %s", config)
        try:
            client.create(config)
            client.boot()
        except ChError as e:
            raise HypervisorError(str(e)) from e

        def running() -> bool:
            try:
                return client.info().get("state") == "Running"
            except ChError:
                return False

        try:
            wait_until(running, timeout, f"VM {vm.name} to reach state Running", proc)
        except NotReady as e:
            raise HypervisorError(str(e)) from e

    def shutdown(self, paths: RunPaths, timeout: float) -> None:
        client = ChClient(paths.api, min(timeout, self.api_timeout))
        try:
            client.shutdown()
        except ApiError as e:
            log.warning("vm.shutdown: %s (stopping the VMM anyway)", e)
        client.vmm_shutdown()

    def vm_state(self, paths: RunPaths) -> str:
        try:
            info = ChClient(paths.api, 2.0).info()
        except ApiError as e:
            return "NotCreated" if e.status == 404 else f"error {e.status}"
        except ChError:
            return "unreachable"
        return str(info.get("state", "unknown")) if isinstance(info, dict) else "unknown"


def make_hypervisor(binary: str | None = None) -> Hypervisor:
    return CloudHypervisor(binary)
