"""The qemu backend: boot a VM with ``qemu-system-x86_64``.

TCG (software emulation) is the default accelerator, since ``/dev/kvm`` on
this project's machines is a software hypervisor that stock kernels crawl
under; ``accel="kvm"`` is for hosts with hardware KVM. The machine is
``microvm`` (virtio-mmio, fastest to boot); ``q35``/``pc`` use virtio-pci.

Each virtio-console port is wired to a Unix socket. By default the host side
(the wlproxy host half) *listens* there and qemu connects as a client,
retrying every second (``server=off,reconnect=1``), like cloud-hypervisor's
``<vsock>_<port>`` sockets; ``Port(connect=False)`` makes qemu listen instead
(``server=on,wait=off``). qemu is controlled through QMP on a Unix socket.

:class:`QemuVm` is the standalone API (start, wait, console, stop);
:func:`make_hypervisor` returns the backend for :mod:`wlproxy.vm.launch`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("hostvm.qemu")

QEMU = "qemu-system-x86_64"
ENV_BINARY = "WLPROXY_QEMU"
MACHINES = ("microvm", "q35", "pc")
ACCELS = ("tcg", "kvm")
ROOT_TAG = "hostroot"
DEFAULT_PORT = "wlproxy.0"
SUN_PATH_MAX = 107


class QemuError(Exception):
    """qemu cannot be started, did not become ready, or a QMP command failed."""


@dataclass(frozen=True)
class Port:
    """A virtio-console port (``virtserialport``) and the host socket behind it."""

    name: str = DEFAULT_PORT
    socket: Path | None = None  # default: <vm_dir>/port_<name>
    connect: bool = True  # qemu connects to a listening host side; False: qemu listens


@dataclass
class VmConfig:
    """What to boot. ``share_root`` exports a host directory read-only over 9p (tag ``hostroot``)."""

    name: str
    kernel: Path
    initramfs: Path | None = None
    cmdline: str = ""
    memory_mib: int = 512
    cpus: int = 1
    disks: list[Path] = field(default_factory=list)
    share_root: Path | None = None
    ports: list[Port] = field(default_factory=lambda: [Port()])
    machine: str = "microvm"
    accel: str = "tcg"

    def check(self) -> None:
        """Raise QemuError for a definition qemu would reject or misparse."""
        if not self.name or "/" in self.name or ":" in self.name or self.name.startswith("."):
            raise QemuError(f"bad VM name {self.name!r}")
        if self.machine not in MACHINES:
            raise QemuError(f"machine must be one of {', '.join(MACHINES)}, not {self.machine!r}")
        if self.accel not in ACCELS:
            raise QemuError(f"accelerator must be one of {', '.join(ACCELS)}, not {self.accel!r}")
        for path in [self.kernel, self.initramfs, *self.disks]:
            if path is not None and not Path(path).is_file():
                raise QemuError(f"{path}: no such file")
        if self.share_root is not None and not Path(self.share_root).is_dir():
            raise QemuError(f"{self.share_root}: not a directory to share")
        names = [p.name for p in self.ports]
        if len(set(names)) != len(names) or not all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names):
            raise QemuError(f"bad or duplicate virtio port names: {names}")
        if self.memory_mib < 64 or self.cpus < 1:
            raise QemuError("a VM needs at least 64 MiB of memory and one CPU")


@dataclass(frozen=True)
class VmFiles:
    """Where one VM's control socket, port sockets and logs are."""

    vm_dir: Path
    qmp: Path
    serial_log: Path
    qemu_log: Path

    @classmethod
    def under(cls, vm_dir: Path) -> VmFiles:
        """Everything inside ``vm_dir``: ``qmp``, ``serial.log``, ``qemu.log``, ``port_<name>``."""
        return cls(vm_dir, vm_dir / "qmp", vm_dir / "serial.log", vm_dir / "qemu.log")

    def port_socket(self, port: Port) -> Path:
        return Path(port.socket) if port.socket else self.vm_dir / f"port_{port.name}"


def _esc(value: object) -> str:
    """Quote a value for qemu's ``key=value,...`` option syntax (commas are doubled)."""
    return str(value).replace(",", ",,")


def full_cmdline(cfg: VmConfig) -> str:
    """The kernel command line: serial console, no reboot loop on panic, then ``cfg.cmdline``."""
    words = ["console=ttyS0", "panic=-1"]
    if cfg.machine == "microvm" and cfg.accel == "tcg":
        words.append("tsc_early_khz=2000000")  # TSC calibration hangs under TCG without it
    return " ".join(words + ([cfg.cmdline] if cfg.cmdline else []))


def build_argv(cfg: VmConfig, files: VmFiles, qemu: str = QEMU) -> list[str]:
    """The qemu command line for ``cfg``."""
    cfg.check()
    dev = (lambda kind: f"{kind}-device") if cfg.machine == "microvm" else (lambda kind: f"{kind}-pci")
    # TCG's default CPU (qemu64) lacks SSE4.2 and POPCNT (x86-64-v2): programs built for today's
    # baseline, numpy 2 among them, die of SIGILL in the guest. "max" is every feature TCG emulates.
    accel = ["-accel", "kvm", "-cpu", "host"] if cfg.accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    for sock in [files.qmp, *(files.port_socket(p) for p in cfg.ports)]:
        if len(os.fsencode(sock)) > SUN_PATH_MAX:
            raise QemuError(f"socket path too long for a Unix socket: {sock}")
    argv = [
        qemu, "-name", _esc(cfg.name), "-M", cfg.machine, *accel,
        "-m", str(cfg.memory_mib), "-smp", str(cfg.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", _esc(cfg.kernel), "-append", full_cmdline(cfg),
        "-chardev", f"file,id=serial0,path={_esc(files.serial_log)}", "-serial", "chardev:serial0",
        "-chardev", f"socket,id=qmp,path={_esc(files.qmp)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]
    if cfg.initramfs:
        argv += ["-initrd", _esc(cfg.initramfs)]
    for i, disk in enumerate(cfg.disks):
        argv += ["-drive", f"file={_esc(disk)},if=none,id=blk{i},format=raw,readonly=on",
                 "-device", f"{dev('virtio-blk')},drive=blk{i}"]
    if cfg.share_root is not None:
        argv += ["-fsdev", f"local,id=fs0,path={_esc(cfg.share_root)},security_model=none,"
                           "readonly=on,multidevs=remap",
                 "-device", f"{dev('virtio-9p')},fsdev=fs0,mount_tag={ROOT_TAG}"]
    if cfg.ports:
        argv += ["-device", dev("virtio-serial")]
    for i, port in enumerate(cfg.ports):
        how = "server=off,reconnect=1" if port.connect else "server=on,wait=off"
        argv += ["-chardev", f"socket,id=port{i},path={_esc(files.port_socket(port))},{how}",
                 "-device", f"virtserialport,name={port.name},chardev=port{i}"]
    return argv


# -- QMP ---------------------------------------------------------------------------------------------

class Qmp:
    """A minimal QMP client: greeting, ``qmp_capabilities``, then ``execute``."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buf = b""
        try:
            self._sock.connect(str(path))
            if "QMP" not in self._read():
                raise QemuError(f"{path} is not a QMP socket")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QemuError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a command and return its ``return`` value (events are skipped)."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QemuError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")

    def wait_closed(self, timeout: float) -> bool:
        """Wait until qemu closes the connection (it exited); True if it did in time."""
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                self._sock.settimeout(left)
                if not self._sock.recv(65536):
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True
        return False

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def qmp_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


# -- process control ---------------------------------------------------------------------------------

def find_qemu(qemu: str | None = None) -> str:
    """The qemu binary: ``qemu``, ``$WLPROXY_QEMU`` or ``qemu-system-x86_64`` on PATH."""
    name = qemu or os.environ.get(ENV_BINARY) or QEMU
    path = shutil.which(name)
    if not path:
        raise QemuError(f"{name} not found (install qemu-system-x86, or set ${ENV_BINARY})")
    return path


def spawn(cfg: VmConfig, files: VmFiles, qemu: str | None = None) -> subprocess.Popen[bytes]:
    """Start qemu in its own process group; its messages go to ``files.qemu_log``."""
    if cfg.accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise QemuError("accelerator kvm needs read-write access to /dev/kvm")
    argv = build_argv(cfg, files, find_qemu(qemu))
    files.vm_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    files.qmp.unlink(missing_ok=True)
    for port in cfg.ports:
        if not port.connect:
            files.port_socket(port).unlink(missing_ok=True)
    if cfg.share_root is not None:
        log.warning("vm %s: sharing host directory %s read-only with the guest", cfg.name, cfg.share_root)
    log.debug("starting %s", " ".join(argv))
    with open(files.qemu_log, "wb") as errlog:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                                start_new_session=True)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[-2000:]
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen[bytes], files: VmFiles, timeout: float, name: str = "") -> str:
    """Wait until QMP answers and the VM runs; return the accelerator in use (``tcg``/``kvm``)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not qmp_accepts(files.qmp):
        if proc.poll() is not None:
            raise QemuError(f"qemu exited with status {proc.returncode}: {_tail(files.qemu_log)}")
        if time.monotonic() >= deadline:
            raise QemuError(f"qemu's QMP socket {files.qmp} did not answer within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    try:
        with Qmp(files.qmp, max(1.0, deadline - time.monotonic())) as qmp:
            status = qmp.execute("query-status").get("status")
            accel = "kvm" if qmp.execute("query-kvm").get("enabled") else "tcg"
    except (OSError, QemuError) as e:  # qemu opens QMP before loading the kernel, and may die after
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise QemuError(f"QMP on {files.qmp} failed: {e}") from e
        raise QemuError(f"qemu exited with status {proc.returncode}: {_tail(files.qemu_log)}") from e
    if status != "running":
        raise QemuError(f"qemu reports the VM {status!r}, not running")
    log.info("vm %s: qemu pid %d running, accelerator %s", name, proc.pid, accel)
    return accel


def shutdown(files: VmFiles, powerdown_timeout: float = 5.0, quit_timeout: float = 5.0) -> bool:
    """ACPI power-down, then QMP ``quit`` if the guest ignores it; True once qemu has exited.

    Works from any process (only the QMP socket is needed). A guest without an
    ACPI power-button handler (the wlproxy test image's init) ignores the power-down.
    """
    for command, wait in (("system_powerdown", powerdown_timeout), ("quit", quit_timeout)):
        if wait <= 0:
            continue
        try:
            with Qmp(files.qmp, min(wait, 2.0)) as qmp:
                qmp.execute(command)
                if qmp.wait_closed(wait):
                    return True
        except (OSError, QemuError):
            if not qmp_accepts(files.qmp):
                return True
    return False


def vm_state(files: VmFiles) -> str:
    """The VM's state, named like cloud-hypervisor's (``Running``, ``Paused``, ``Shutdown``...)."""
    try:
        with Qmp(files.qmp, 2.0) as qmp:
            status = qmp.execute("query-status").get("status", "unknown")
    except (OSError, QemuError):
        return "unreachable"
    return {"running": "Running", "paused": "Paused", "shutdown": "Shutdown",
            "guest-panicked": "Panicked"}.get(status, str(status))


class QemuVm:
    """One qemu process: ``start()`` returns once QMP answers and the VM runs.

    ``wait()`` waits for qemu to exit (a guest power-off ends it); ``stop()``
    powers down, then quits, then signals. Usable as a context manager.
    """

    def __init__(self, config: VmConfig, files: VmFiles, *, qemu: str | None = None) -> None:
        self.config = config
        self.files = files
        self.qemu = qemu
        self.proc: subprocess.Popen[bytes] | None = None
        self.accelerator: str | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def port_socket(self, name: str = DEFAULT_PORT) -> Path:
        return self.files.port_socket(next(p for p in self.config.ports if p.name == name))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start qemu and wait until it runs the VM; on failure nothing is left running."""
        if self.proc is not None:
            raise QemuError(f"VM {self.config.name} already started")
        self.proc = spawn(self.config, self.files, self.qemu)
        try:
            self.accelerator = wait_ready(self.proc, self.files, timeout, self.config.name)
        except BaseException:
            self.stop(powerdown_timeout=0, quit_timeout=0)
            raise

    def wait(self, timeout: float | None = None) -> int | None:
        """qemu's exit status once it exits, or None if still running after ``timeout``."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def console(self) -> str:
        """The serial console log so far."""
        try:
            return self.files.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until the console log matches the regex ``pattern``; raise if qemu exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while not (match := regex.search(self.console())):
            if not self.running():
                raise QemuError(f"qemu exited before the console showed {pattern!r}")
            if time.monotonic() >= deadline:
                raise QemuError(f"console did not show {pattern!r} within {timeout:g} s")
            time.sleep(0.05)
        return match

    def stop(self, powerdown_timeout: float = 5.0, quit_timeout: float = 5.0,
             kill_timeout: float = 5.0) -> int | None:
        """Stop qemu (see :func:`shutdown`), then SIGTERM, then SIGKILL; remove its sockets.

        Returns qemu's exit status (None if never started).
        """
        proc = self.proc
        if proc is not None and proc.poll() is None:
            shutdown(self.files, powerdown_timeout, quit_timeout)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if self.wait(0 if sig == signal.SIGTERM else kill_timeout) is not None:
                    break
                proc.send_signal(sig)
            self.wait(kill_timeout)
        self.files.qmp.unlink(missing_ok=True)
        for port in self.config.ports:
            if not port.connect:
                self.files.port_socket(port).unlink(missing_ok=True)
        return proc.returncode if proc else None

    def __enter__(self) -> QemuVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_hypervisor(binary: str | None = None, **options: Any) -> Any:
    """The qemu backend for :mod:`wlproxy.vm.launch` (see :class:`wlproxy.vm.qemuhv.QemuHypervisor`)."""
    from wlproxy.vm.qemuhv import QemuHypervisor

    return QemuHypervisor(binary, **options)
