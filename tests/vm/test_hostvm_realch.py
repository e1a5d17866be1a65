"""Against the real ``cloud-hypervisor`` binary (on PATH or ``$WLPROXY_CLOUD_HYPERVISOR``).

Skipped when there is none. Never faked: these tests only mean something with the real VMM.
A full boot also needs ``$WLPROXY_TEST_KERNEL`` (a vmlinux) and ``$WLPROXY_TEST_DISK``.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_hostvm_common import (children_of, gone, make_vm, read_pids, require_ch_spec, short_tmpdir,  # noqa: E402
                               standin_host_command)

from wlproxy.vm import launch, vmdef  # noqa: E402
from wlproxy.vm.chapi import ApiError, ChClient  # noqa: E402
from wlproxy.vm.cloudhv import ENV_BINARY, CloudHypervisor, find_binary, vm_config  # noqa: E402
from wlproxy.vm.hosthalf import make_host_half  # noqa: E402
from wlproxy.vm.procs import stop_child, wait_until  # noqa: E402
from wlproxy.vm.rundir import RunPaths  # noqa: E402
from wlproxy.vm.supervise import Supervisor  # noqa: E402

CH = os.environ.get(ENV_BINARY) or shutil.which("cloud-hypervisor")
pytestmark = pytest.mark.skipif(
    not CH, reason="cloud-hypervisor is not installed: no cloud-hypervisor on PATH and "
                   f"${ENV_BINARY} is unset")


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    if find_binary() is None:
        pytest.fail(f"${ENV_BINARY}={os.environ.get(ENV_BINARY)} is not an executable")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("cloud-hypervisor needs /dev/kvm, which is missing or not accessible here")
    d = short_tmpdir("ch")
    monkeypatch.setenv("STANDIN_PIDS", str(d / "pids"))
    monkeypatch.setenv("WLPROXY_HOST_COMMAND", standin_host_command(d))
    before = set(children_of(os.getpid()))
    yield d
    strays = set(children_of(os.getpid())) - before
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)
    assert not strays, f"stray processes: {strays}"


def _schema(name: str) -> jsonschema.Draft4Validator:
    spec = yaml.safe_load(require_ch_spec().read_text())
    return jsonschema.Draft4Validator({"$ref": f"#/components/schemas/{name}",
                                       "components": copy.deepcopy(spec["components"])})


def test_real_api_accepts_our_vm_config(root: Path) -> None:
    make_vm(root / "vms", "appvm", full=True)
    vm = vmdef.load(root / "vms", "appvm")
    paths = RunPaths(root / "run", "appvm")
    paths.vm_dir.mkdir(parents=True)
    ch = CloudHypervisor()
    proc = ch.spawn(vm, paths)
    try:
        client = ChClient(paths.api)
        wait_until(lambda: paths.api.exists(), 10, "the API socket", proc)
        _schema("VmmPingResponse").validate(client.ping())
        with pytest.raises(ApiError) as ei:
            client.boot()  # nothing created yet
        assert ei.value.status >= 400 and ei.value.messages
        client.create(vm_config(vm, paths))
        info = client.info()
        _schema("VmInfo").validate(info)
        assert info["state"] == "Created"
        assert info["config"]["vsock"]["socket"] == str(paths.vsock)
        assert info["config"]["memory"]["shared"] is True
        assert all(d["readonly"] for d in info["config"]["disks"])
        with pytest.raises(ApiError) as ei:
            client.boot()  # the "kernel" is a few bytes of text
        assert ei.value.messages, "cloud-hypervisor's error reply had no messages"
        client.vmm_shutdown()
        assert proc.wait(10) == 0
    finally:
        stop_child(proc, 5, "cloud-hypervisor")


def test_failed_boot_with_real_vmm_is_undone(root: Path) -> None:
    make_vm(root / "vms", "appvm")
    vm = vmdef.load(root / "vms", "appvm")
    paths = RunPaths(root / "run", "appvm")
    with pytest.raises(launch.StartError, match="step 'create and boot': cloud-hypervisor refused PUT vm.boot"):
        launch.start(vm, paths, CloudHypervisor(), make_host_half("spawn", "appvm", paths, None, None), timeout=10)
    assert not paths.vm_dir.exists()
    assert all(gone(p) for p in read_pids(root / "pids"))


@pytest.mark.skipif(not (os.environ.get("WLPROXY_TEST_KERNEL") and os.environ.get("WLPROXY_TEST_DISK")),
                    reason="a full boot needs $WLPROXY_TEST_KERNEL and $WLPROXY_TEST_DISK")
def test_full_boot_and_stop(root: Path) -> None:
    d = root / "vms" / "appvm"
    (d / "blk").mkdir(parents=True)
    (d / "vmlinux").symlink_to(os.environ["WLPROXY_TEST_KERNEL"])
    (d / "blk" / "root.img").symlink_to(os.environ["WLPROXY_TEST_DISK"])
    vm = vmdef.load(root / "vms", "appvm")
    paths = RunPaths(root / "run", "appvm")
    running = launch.start(vm, paths, CloudHypervisor(), make_host_half("spawn", "appvm", paths, None, None),
                           timeout=30)
    assert CloudHypervisor().vm_state(paths) == "Running"
    sup = Supervisor(running, timeout=10, stop_timeout=30)
    t = threading.Thread(target=sup.run, daemon=True)
    t.start()
    sup.request_stop()
    t.join(60)
    assert not t.is_alive() and running.vmm.poll() is not None
    assert not paths.vm_dir.exists()
