"""The qemu backend: boot a VM definition with ``qemu-system-x86_64``.

TCG (software emulation) is the default accelerator, since ``/dev/kvm`` on
this project's machines is a software hypervisor that stock kernels crawl
under; ``accel="kvm"`` is for hosts with hardware KVM. The machine is
``microvm`` (virtio-mmio, fastest to boot); ``q35``/``pc`` use virtio-pci.

Files in the VM's run directory ``<run_dir>/<name>/``:

- ``qmp``: the QMP control socket (qemu listens);
- ``port_<port>``: one Unix socket per virtio-console port. By default the host
  side *listens* there (the wlproxy host half) and qemu connects as a client,
  retrying every second, like cloud-hypervisor's ``<vsock>_<port>`` sockets;
- ``serial.log``: the guest's serial console;
- ``qemu.log``: qemu's own messages.
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
MACHINES = ("microvm", "q35", "pc")
ACCELS = ("tcg", "kvm")
ROOT_TAG = "hostroot"
DEFAULT_PORT = "wlproxy.0"
SUN_PATH_MAX = 107


class QemuError(Exception):
    """qemu cannot be started, did not become ready, or a QMP command failed."""


@dataclass
class VmConfig:
    """What to boot. ``ports`` maps virtio-console port names to host socket modes.

    A port mode is ``"connect"`` (the host side listens on ``port_<name>``,
    qemu connects and reconnects) or ``"listen"`` (qemu listens, ``server=on,wait=off``).
    """

    name: str
    kernel: Path
    initramfs: Path | None = None
    cmdline: str = ""
    memory_mib: int = 512
    cpus: int = 1
    disks: list[Path] = field(default_factory=list)
    share_root: Path | None = Path("/")
    ports: dict[str, str] = field(default_factory=lambda: {DEFAULT_PORT: "connect"})
    machine: str = "microvm"
    accel: str = "tcg"

    def check(self) -> None:
        """Raise QemuError for a definition qemu would reject or misparse."""
        if not self.name or "/" in self.name or ":" in self.name or self.name in (".", ".."):
            raise QemuError(f"bad VM name {self.name!r}")
        if self.machine not in MACHINES:
            raise QemuError(f"machine must be one of {', '.join(MACHINES)}, not {self.machine!r}")
        if self.accel not in ACCELS:
            raise QemuError(f"accelerator must be one of {', '.join(ACCELS)}, not {self.accel!r}")
        for path in [self.kernel, self.initramfs, *self.disks]:
            if path is not None and not Path(path).is_file():
                raise QemuError(f"{path}: no such file")
        for port, mode in self.ports.items():
            if mode not in ("connect", "listen") or not re.fullmatch(r"[A-Za-z0-9._-]+", port):
                raise QemuError(f"bad virtio port {port!r} (mode {mode!r})")
        if self.memory_mib < 64 or self.cpus < 1:
            raise QemuError("a VM needs at least 64 MiB of memory and one CPU")


def port_socket(vm_dir: Path, port: str = DEFAULT_PORT) -> Path:
    """The host socket of a virtio-console port: ``<vm_dir>/port_<port>``."""
    return vm_dir / f"port_{port}"


def _esc(value: object) -> str:
    """Quote a value for qemu's ``key=value,...`` option syntax (commas are doubled)."""
    return str(value).replace(",", ",,")


def full_cmdline(cfg: VmConfig) -> str:
    """The kernel command line: serial console, no reboot loops, then ``cfg.cmdline``."""
    words = ["console=ttyS0", "panic=-1"]
    if cfg.machine == "microvm" and cfg.accel == "tcg":
        words.append("tsc_early_khz=2000000")  # TSC calibration hangs under TCG without it
    return " ".join(words + ([cfg.cmdline] if cfg.cmdline else []))


def build_argv(cfg: VmConfig, vm_dir: Path, qemu: str = QEMU) -> list[str]:
    """The qemu command line for ``cfg``, with its sockets and logs in ``vm_dir``."""
    cfg.check()
    mmio = cfg.machine == "microvm"
    dev = (lambda kind: f"{kind}-device") if mmio else (lambda kind: f"{kind}-pci")
    accel = ["-accel", "kvm", "-cpu", "host"] if cfg.accel == "kvm" else ["-accel", "tcg"]
    argv = [
        qemu, "-name", _esc(cfg.name), "-M", cfg.machine, *accel,
        "-m", str(cfg.memory_mib), "-smp", str(cfg.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", _esc(cfg.kernel), "-append", full_cmdline(cfg),
        "-chardev", f"file,id=serial0,path={_esc(vm_dir / 'serial.log')}", "-serial", "chardev:serial0",
        "-chardev", f"socket,id=qmp,path={_esc(vm_dir / 'qmp')},server=on,wait=off",
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
    for i, (port, mode) in enumerate(sorted(cfg.ports.items())):
        path = port_socket(vm_dir, port)
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise QemuError(f"socket path too long for a Unix socket: {path}")
        how = "server=off,reconnect=1" if mode == "connect" else "server=on,wait=off"
        argv += ["-chardev", f"socket,id=port{i},path={_esc(path)},{how}",
                 "-device", f"virtserialport,name={port},chardev=port{i}"]
    return argv


class Qmp:
    """A minimal QMP client: greeting, ``qmp_capabilities``, then ``execute``."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buf = b""
        try:
            self._sock.connect(str(path))
            greeting = self._read()
            if "QMP" not in greeting:
                raise QemuError(f"not a QMP greeting: {greeting}")
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

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def qmp_command(vm_dir: Path, command: str, timeout: float = 5.0, **arguments: Any) -> Any:
    """Run one QMP command on the VM whose run directory is ``vm_dir``."""
    with Qmp(vm_dir / "qmp", timeout) as qmp:
        return qmp.execute(command, **arguments)


def find_qemu(qemu: str | None = None) -> str:
    """The qemu binary: ``qemu``, ``$WLPROXY_QEMU`` or ``qemu-system-x86_64`` on PATH."""
    name = qemu or os.environ.get("WLPROXY_QEMU") or QEMU
    path = shutil.which(name)
    if not path:
        raise QemuError(f"{name} not found (install qemu-system-x86)")
    return path


class QemuVm:
    """One qemu process. ``start()`` returns once QMP answers and the VM runs.

    ``wait()`` waits for qemu to exit (guest poweroff ends it), ``stop()``
    asks the guest to power down, then quits qemu, then kills it.
    """

    def __init__(self, config: VmConfig, run_dir: Path, *, qemu: str | None = None) -> None:
        self.config = config
        self.vm_dir = Path(run_dir) / config.name
        self.qemu = qemu
        self.proc: subprocess.Popen[bytes] | None = None
        self.accelerator: str | None = None
        self.started_at: float | None = None

    @property
    def serial_log(self) -> Path:
        return self.vm_dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.vm_dir / "qemu.log"

    @property
    def qmp_path(self) -> Path:
        return self.vm_dir / "qmp"

    def port_socket(self, port: str = DEFAULT_PORT) -> Path:
        return port_socket(self.vm_dir, port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _qemu_messages(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def start(self, timeout: float = 10.0) -> None:
        """Start qemu and wait until QMP reports the VM running; undo everything on failure."""
        if self.proc is not None:
            raise QemuError(f"VM {self.config.name} already started")
        if self.config.accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise QemuError("accelerator kvm needs read-write access to /dev/kvm")
        argv = build_argv(self.config, self.vm_dir, find_qemu(self.qemu))
        self.vm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.qmp_path.unlink(missing_ok=True)
        log.debug("starting %s", " ".join(argv))
        with open(self.qemu_log, "wb") as errlog:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                                         start_new_session=True)
        self.started_at = time.monotonic()
        try:
            self._wait_qmp(timeout)
            with Qmp(self.qmp_path) as qmp:
                status = qmp.execute("query-status")
                kvm = qmp.execute("query-kvm")
        except BaseException:
            self.stop(powerdown_timeout=0)
            raise
        self.accelerator = "kvm" if kvm.get("enabled") else "tcg"
        log.info("vm %s: qemu pid %d %s, machine %s, accelerator %s", self.config.name, self.proc.pid,
                 status.get("status"), self.config.machine, self.accelerator)

    def _wait_qmp(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if self.proc.poll() is not None:
                raise QemuError(f"qemu exited with status {self.proc.returncode}: {self._qemu_messages()}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(self.qmp_path))
                    return
                except OSError:
                    pass
            if time.monotonic() >= deadline:
                raise QemuError(f"qemu's QMP socket did not answer within {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def wait(self, timeout: float | None = None) -> int | None:
        """qemu's exit status once it exits, or None if it still runs after ``timeout``."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def console(self) -> str:
        """The serial console log so far."""
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until the console log matches ``pattern`` (a regex); raise if qemu exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.console())
            if match:
                return match
            if not self.running():
                raise QemuError(f"qemu exited before the console showed {pattern!r}")
            if time.monotonic() >= deadline:
                raise QemuError(f"console did not show {pattern!r} within {timeout:g} s")
            time.sleep(0.05)

    def stop(self, powerdown_timeout: float = 5.0, kill_timeout: float = 5.0) -> int | None:
        """Power the VM down (ACPI), then QMP ``quit``, then SIGTERM, then SIGKILL.

        Returns qemu's exit status. Removes the QMP and qemu-listened sockets.
        """
        proc = self.proc
        if proc is not None and proc.poll() is None:
            steps: list[tuple[str, float]] = [("system_powerdown", powerdown_timeout), ("quit", kill_timeout)]
            for command, wait in steps:
                if wait <= 0:
                    continue
                try:
                    qmp_command(self.vm_dir, command, timeout=min(wait, 2.0))
                except (OSError, QemuError):
                    continue
                if self.wait(wait) is not None:
                    break
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                proc.send_signal(sig)
                if self.wait(kill_timeout) is not None:
                    break
        self.qmp_path.unlink(missing_ok=True)
        for port, mode in self.config.ports.items():
            if mode == "listen":
                self.port_socket(port).unlink(missing_ok=True)
        return proc.returncode if proc else None

    def __enter__(self) -> QemuVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
