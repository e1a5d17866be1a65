"""The qemu backend: command lines, start/stop, and a real guest boot under TCG
that talks both ways with host programs over virtio-console ports."""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from wlproxy.vm import guestinit, qemu
from wlproxy.vm.qemu import Port, QemuError, QemuVm, VmConfig, VmFiles
from qemu_helpers import guest_image, qemu_cannot_run  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


QEMU_SKIP = qemu_cannot_run()
needs_qemu = pytest.mark.skipif(QEMU_SKIP is not None, reason=f"qemu cannot run: {QEMU_SKIP}")


@pytest.fixture
def run_dir():
    # short, so that socket paths stay far below the 107-byte limit
    d = Path(tempfile.mkdtemp(prefix="wlq-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def files_for(tmp_path):
    (tmp_path / "vmlinux").write_bytes(b"k")
    (tmp_path / "initrd").write_bytes(b"i")
    return tmp_path


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


# -- command lines ---------------------------------------------------------------------------------

def test_argv_microvm_tcg(files_for):
    cfg = VmConfig("vm1", files_for / "vmlinux", files_for / "initrd", cmdline="quiet", share_root=Path("/"))
    files = VmFiles.under(Path("/run/vm/vm1"))
    argv = qemu.build_argv(cfg, files, "qemu-system-x86_64")
    assert opt(argv, "-M") == ["microvm"] and opt(argv, "-accel") == ["tcg"] and opt(argv, "-cpu") == ["max"]
    assert opt(argv, "-append") == ["console=ttyS0 panic=-1 tsc_early_khz=2000000 quiet"]
    assert "-no-reboot" in argv and opt(argv, "-initrd") == [str(files_for / "initrd")]
    assert opt(argv, "-fsdev") == ["local,id=fs0,path=/,security_model=none,readonly=on,multidevs=remap"]
    devices = opt(argv, "-device")
    assert "virtio-9p-device,fsdev=fs0,mount_tag=hostroot" in devices
    assert "virtio-serial-device" in devices and "virtserialport,name=wlproxy.0,chardev=port0" in devices
    chardevs = opt(argv, "-chardev")
    assert "socket,id=port0,path=/run/vm/vm1/port_wlproxy.0,server=off,reconnect=1" in chardevs
    assert "socket,id=qmp,path=/run/vm/vm1/qmp,server=on,wait=off" in chardevs
    assert "file,id=serial0,path=/run/vm/vm1/serial.log" in chardevs


def test_argv_q35_kvm_listen_disks(files_for):
    disk = files_for / "a,b.img"
    disk.write_bytes(b"\0" * 512)
    cfg = VmConfig("vm1", files_for / "vmlinux", memory_mib=1024, cpus=2, disks=[disk], machine="q35",
                   accel="kvm", ports=[Port("wlproxy.0", Path("/run/x,y/sock"), connect=False)])
    argv = qemu.build_argv(cfg, VmFiles.under(Path("/run/vm/vm1")))
    assert opt(argv, "-accel") == ["kvm"] and opt(argv, "-cpu") == ["host"]
    assert "tsc_early_khz" not in opt(argv, "-append")[0]
    assert opt(argv, "-m") == ["1024"] and opt(argv, "-smp") == ["2"] and "-initrd" not in argv
    assert opt(argv, "-drive") == [f"file={str(disk).replace(',', ',,')},if=none,id=blk0,format=raw,readonly=on"]
    devices = opt(argv, "-device")
    assert "virtio-blk-pci,drive=blk0" in devices and "virtio-serial-pci" in devices
    assert not any("9p" in d for d in devices), "the host root is shared only on request"
    assert "socket,id=port0,path=/run/x,,y/sock,server=on,wait=off" in opt(argv, "-chardev")


@pytest.mark.parametrize("change, message", [
    ({"name": "a:b"}, "bad VM name"), ({"machine": "virt"}, "machine"), ({"accel": "hvf"}, "accelerator"),
    ({"kernel": Path("/nonexistent/vmlinux")}, "no such file"), ({"memory_mib": 16}, "memory"),
    ({"ports": [Port("a b")]}, "port names"), ({"ports": [Port(), Port()]}, "port names"),
])
def test_bad_configs(files_for, change, message):
    cfg = VmConfig("vm1", files_for / "vmlinux")
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(QemuError, match=message):
        qemu.build_argv(cfg, VmFiles.under(files_for))


def test_long_socket_path_refused(files_for):
    cfg = VmConfig("vm1", files_for / "vmlinux")
    with pytest.raises(QemuError, match="too long"):
        qemu.build_argv(cfg, VmFiles.under(Path("/run/" + "x" * 100)))


# -- starting and stopping -------------------------------------------------------------------------

@needs_qemu
def test_start_failure_leaves_nothing_behind(run_dir, files_for):
    """A file that is no kernel: qemu exits at once; start() says why and leaves no socket."""
    vm = QemuVm(VmConfig("bad", files_for / "vmlinux"), VmFiles.under(run_dir / "bad"))
    with pytest.raises(QemuError, match="qemu exited"):
        vm.start(timeout=20)
    assert not vm.running() and not vm.files.qmp.exists()


@needs_qemu
def test_start_and_stop(run_dir, guest_image):
    """qemu starts without anyone listening on the port; stop() ends it through QMP."""
    cfg = VmConfig("idle", guest_image.vmlinux, guest_image.initramfs,
                   cmdline=guestinit.guest_cmdline(["/bin/sleep", "600"]), share_root=Path("/"))
    vm = QemuVm(cfg, VmFiles.under(run_dir / "idle"))
    t0 = time.monotonic()
    vm.start(timeout=20)
    try:
        assert vm.accelerator == "tcg" and qemu.vm_state(vm.files) == "Running"
    finally:
        status = vm.stop(powerdown_timeout=0.5)
    assert status is not None and not vm.running()
    assert not vm.files.qmp.exists() and qemu.vm_state(vm.files) == "unreachable"
    assert time.monotonic() - t0 < 15


@pytest.mark.slow
@needs_qemu
def test_power_button_stops_guest_command(run_dir, guest_image):
    """stop() powers down through ACPI: the guest's runner terminates the command and the VM powers off."""
    cfg = VmConfig("pwr", guest_image.vmlinux, guest_image.initramfs,
                   cmdline=guestinit.guest_cmdline(["/bin/sleep", "600"]), share_root=Path("/"))
    vm = QemuVm(cfg, VmFiles.under(run_dir / "pwr"))
    vm.start(timeout=20)
    try:
        vm.wait_console(r"wlproxy-run: running: /bin/sleep", 40)
        t0 = time.monotonic()
        assert qemu.shutdown(vm.files, powerdown_timeout=20, quit_timeout=0)
        took = time.monotonic() - t0
    finally:
        status = vm.stop(powerdown_timeout=0)
    assert status == 0
    assert guestinit.parse_exit_status(vm.console()) == 128 + 15, vm.console()[-2000:]
    print(f"\nACPI power-down to qemu exit: {took:.2f} s")


# -- a real boot -----------------------------------------------------------------------------------

GUEST_SCRIPT = textwrap.dedent("""
    import json, os, stat, sys, time
    from wlproxy.io.virtio_port import wait_host_connected, wait_virtio_port

    def facts(path):
        runtime = os.environ["XDG_RUNTIME_DIR"]
        try:
            open("/etc/wlproxy-write-test", "w")
            root_ro = False
        except OSError:
            root_ro = True
        with open("/tmp/probe", "w") as f:
            f.write("x")
        return {"port": str(path), "release": os.uname().release, "runtime": runtime,
                "runtime_mode": oct(stat.S_IMODE(os.stat(runtime).st_mode)), "root_ro": root_ro,
                "python": sys.executable, "uptime": float(open("/proc/uptime").read().split()[0])}

    def talk(name):
        path = wait_virtio_port(name, 30)
        fd = os.open(path, os.O_RDWR)
        if not wait_host_connected(fd, 30):
            sys.exit(90)
        os.write(fd, (json.dumps(facts(path)) + "\\n").encode())
        buf = b""
        while not buf.endswith(b"\\n"):
            chunk = os.read(fd, 4096)
            if not chunk:  # the host side went away
                sys.exit(91)
            buf += chunk
        os.write(fd, buf.decode().strip()[::-1].upper().encode() + b"\\n")
        os.close(fd)

    talk("wlproxy.0")
    talk("aux.0")
    sys.exit(7)
""")


def read_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return buf


@pytest.mark.slow
@needs_qemu
def test_boot_guest_talks_over_virtio_console(run_dir, guest_image):
    """Boot under TCG; the guest mounts the host root and runs /usr/bin/python3, which talks
    over two ports: one where the host listens (qemu connects), one where qemu listens."""
    files = VmFiles.under(run_dir / "vm1")
    cfg = VmConfig("vm1", guest_image.vmlinux, guest_image.initramfs, share_root=Path("/"),
                   ports=[Port("wlproxy.0"), Port("aux.0", connect=False)],
                   cmdline=guestinit.guest_cmdline(["/usr/bin/python3", "-c", GUEST_SCRIPT],
                                                   env={"PYTHONPATH": str(REPO)}))
    vm = QemuVm(cfg, files)
    files.vm_dir.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(vm.port_socket("wlproxy.0")))
    listener.listen(1)
    listener.settimeout(20)
    t0 = time.monotonic()
    try:
        vm.start(timeout=20)
        t_qemu = time.monotonic() - t0
        conn, _ = listener.accept()  # qemu connects as a client
        conn.settimeout(50)
        facts = json.loads(read_line(conn))
        t_first = time.monotonic() - t0
        conn.sendall(b"ping 1234 wlproxy\n")
        assert read_line(conn) == b"YXORPLW 4321 GNIP\n"

        aux = socket.socket(socket.AF_UNIX)  # qemu listens on this one
        aux.settimeout(20)
        aux.connect(str(vm.port_socket("aux.0")))
        aux_facts = json.loads(read_line(aux))
        aux.sendall(b"second port\n")
        assert read_line(aux) == b"TROP DNOCES\n"

        assert vm.wait(30) == 0, "a guest power-off ends qemu with status 0"
        t_exit = time.monotonic() - t0
    finally:
        vm.stop(powerdown_timeout=0)
        listener.close()
    console = vm.console()
    root = re.search(guestinit.READY_MARKER + r"([\d.]+)", console)
    assert guestinit.parse_exit_status(console) == 7, console[-3000:]
    assert facts["port"].startswith("/dev/vport") and aux_facts["port"].startswith("/dev/vport")
    assert facts["port"] != aux_facts["port"]
    assert facts["release"] == guest_image.kernel_version
    assert facts["runtime"] == "/run/user/0" and facts["runtime_mode"] == "0o700"
    assert facts["root_ro"] and facts["python"] == "/usr/bin/python3"
    assert not files.qmp.exists() and not vm.port_socket("aux.0").exists()
    print(f"\nguest boot under {vm.accelerator} ({cfg.machine}): qemu ready {t_qemu:.2f} s, "
          f"host root mounted at guest uptime {root.group(1) if root else '?'} s, "
          f"first message over virtio-console {t_first:.2f} s (guest uptime {facts['uptime']:.2f} s), "
          f"powered off {t_exit:.2f} s")
    assert t_exit < 60


@needs_qemu
def test_hypervisor_backend_for_launcher(run_dir, guest_image, tmp_path):
    """make_hypervisor() fits hostvm.launch: spawn, boot (ready), vm_state, shutdown."""
    pytest.importorskip("wlproxy.vm.hypervisor")
    from wlproxy.vm.hypervisor import get_hypervisor
    from wlproxy.vm.rundir import RunPaths
    from wlproxy.vm.vmdef import VmDef

    (tmp_path / "share-root").write_text("/\n")
    vm = VmDef(name="hv1", path=tmp_path, kernel=guest_image.vmlinux, disks=(),
               cmdline=guestinit.guest_cmdline(["/bin/sleep", "600"]), memory=256 << 20,
               initramfs=guest_image.initramfs)
    paths = RunPaths(run_dir, "hv1")
    paths.vm_dir.mkdir()
    assert get_hypervisor("qemu").name == "qemu"
    hv = qemu.make_hypervisor(None, powerdown_timeout=0.5)  # the guest has not booted: no power button yet
    argv = qemu.build_argv(hv.config(vm, paths), qemu.VmFiles.under(paths.vm_dir))
    assert f"path={paths.host_socket},server=off,reconnect=1" in " ".join(argv)
    assert any("mount_tag=hostroot" in a for a in argv) and "256" in argv
    proc = hv.spawn(vm, paths)
    try:
        hv.boot(vm, paths, proc, 20)
        assert hv.accelerator == "tcg" and hv.vm_state(paths) == "Running"
        assert paths.api.exists()
        hv.shutdown(paths, 5)
        assert proc.wait(10) is not None
        assert hv.vm_state(paths) == "unreachable"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@needs_qemu
def test_vm_definition_boots_through_launcher_backend(run_dir, guest_image, tmp_path):
    """write_vm_definition() gives a directory hostvm.vmdef accepts and the qemu backend boots;
    the guest runs its command (here without the guest half) and powers off."""
    pytest.importorskip("wlproxy.vm.vmdef")
    from wlproxy.vm import vmdef
    from wlproxy.vm.guestdef import write_vm_definition
    from wlproxy.vm.rundir import RunPaths

    script = "import wlproxy.io.virtio_port as v; print('port', v.find_virtio_port('wlproxy.0'))"
    write_vm_definition(tmp_path / "vms" / "app1", guest_image, ["/usr/bin/python3", "-c", script],
                        with_guest_half=False)
    vm = vmdef.load(tmp_path / "vms", "app1")
    assert vm.initramfs is not None and len(vm.disks) == 1 and vm.memory == 512 << 20
    paths = RunPaths(run_dir, "app1")
    paths.vm_dir.mkdir()
    listener = socket.socket(socket.AF_UNIX)  # stands in for the host half
    listener.bind(str(paths.host_socket))
    listener.listen(1)
    hv = qemu.make_hypervisor(None)
    proc = hv.spawn(vm, paths)
    try:
        hv.boot(vm, paths, proc, 20)
        listener.settimeout(10)
        listener.accept()[0].close()
        assert proc.wait(50) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    console = paths.serial_log.read_text()
    assert re.search(r"^port /dev/vport\d+p\d+$", console, re.M), console[-2000:]
    assert guestinit.parse_exit_status(console) == 0


STANDIN_GUEST_HALF = textwrap.dedent("""
    # Stands in for `wlproxy guest`: listens on $XDG_RUNTIME_DIR/wayland-0 and relays
    # one client's bytes to and from the virtio-console port.
    import os, select, socket, stat, sys
    from wlproxy.io.virtio_port import wait_host_connected, wait_virtio_port
    port = os.open(wait_virtio_port("wlproxy.0", 30), os.O_RDWR)
    runtime = os.environ["XDG_RUNTIME_DIR"]
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(os.path.join(runtime, "wayland-0"))
    srv.listen(4)
    client, _ = srv.accept()
    assert wait_host_connected(port, 30)
    while True:
        ready, _, _ = select.select([client, port], [], [])
        if client in ready:
            data = client.recv(4096)
            if not data:
                break
            os.write(port, data)
        if port in ready:
            data = os.read(port, 4096)
            if not data:
                break
            client.sendall(data)
""")

CLIENT = textwrap.dedent("""
    import os, socket, sys
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(os.path.join(os.environ["XDG_RUNTIME_DIR"], os.environ["WAYLAND_DISPLAY"]))
    sock.sendall(b"hello through the guest half\\n")
    reply = sock.makefile("rb").readline()
    print("client got", reply)
    sys.exit(0 if reply == b"HELLO THROUGH THE GUEST HALF\\n" else 1)
""")


@pytest.mark.slow
@needs_qemu
def test_guest_half_starts_before_client(run_dir, guest_image):
    """The init's guest-half mode: the guest half listens first, the client gets WAYLAND_DISPLAY,
    talks to the host through it, and the VM powers off when the client exits."""
    env = {"PYTHONPATH": str(REPO)}
    files = VmFiles.under(run_dir / "gh")
    cfg = VmConfig("gh", guest_image.vmlinux, guest_image.initramfs, share_root=Path("/"),
                   cmdline=guestinit.guest_cmdline(["/usr/bin/python3", "-c", CLIENT], env=env,
                                                   guest_argv=["/usr/bin/python3", "-c", STANDIN_GUEST_HALF],
                                                   guest_env=env))
    vm = QemuVm(cfg, files)
    files.vm_dir.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)  # the host half's place
    listener.bind(str(vm.port_socket()))
    listener.listen(1)
    listener.settimeout(20)
    try:
        vm.start(timeout=20)
        conn, _ = listener.accept()
        conn.settimeout(50)
        try:
            line = read_line(conn)
        except AssertionError:
            vm.wait(20)
            raise AssertionError(vm.console()[-3000:])
        assert line == b"hello through the guest half\n"
        conn.sendall(line.upper())
        assert vm.wait(30) == 0
    finally:
        vm.stop(powerdown_timeout=0)
        listener.close()
    console = vm.console()
    assert guestinit.parse_exit_status(console) == 0, console[-3000:]
    assert "starting guest half" in console and "client got" in console
