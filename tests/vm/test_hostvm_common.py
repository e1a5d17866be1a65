"""Shared helpers for the hostvm tests (no tests here): VM definitions, stand-ins, checks.

Stand-ins are only processes: a host half that listens on its socket, and a VMM that exits on
cue (SIGUSR1: status 0, SIGUSR2: status 3). The cloud-hypervisor API is tested against the spec.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from wlproxy.vm import hosthalf
from wlproxy.vm.hypervisor import Hypervisor, HypervisorError
from wlproxy.vm.rundir import RunPaths
from wlproxy.vm.vmdef import VmDef

ROOT = Path(__file__).resolve().parents[2]

HOST_STANDIN = r'''
import os, socket, sys
args = sys.argv[1:]
listen = args[args.index("--listen") + 1]
name = args[args.index("--vm") + 1]
if os.environ.get("STANDIN_PIDS"):
    with open(os.environ["STANDIN_PIDS"], "a") as f:
        f.write(f"{os.getpid()} {' '.join(args)}\n")
if os.environ.get("STANDIN_HOST_IGNORE_TERM"):
    import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("STANDIN_HOST_FAIL"):
    sys.exit(7)
if os.environ.get("STANDIN_HOST_MUTE"):
    import signal; signal.pause()
s = socket.socket(socket.AF_UNIX)
s.bind(listen)
s.listen(16)
while True:
    c, _ = s.accept()
    try:
        c.sendall(f"host half of {name} pid {os.getpid()}\n".encode())
    except OSError:
        pass
    c.close()
'''

VMM_STANDIN = r'''
import os, signal, sys
signal.signal(signal.SIGUSR1, lambda *a: os._exit(0))
signal.signal(signal.SIGUSR2, lambda *a: os._exit(3))
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("STANDIN_PIDS"):
    with open(os.environ["STANDIN_PIDS"], "a") as f:
        f.write(f"{os.getpid()} vmm\n")
print("ready", flush=True)
while True:
    signal.pause()
'''


def short_tmpdir(prefix: str = "hv") -> Path:
    """A short directory under /tmp (Unix socket paths must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def make_vm(vms_dir: Path, name: str = "appvm", *, full: bool = False, disks: int = 1) -> Path:
    """Write a VM definition; ``full`` adds every optional file."""
    d = vms_dir / name
    (d / "blk").mkdir(parents=True)
    (d / "vmlinux").write_bytes(b"\x7fELF not really a kernel\n")
    for i in range(disks):
        (d / "blk" / f"disk{i}.img").write_bytes(b"\0" * 4096)
    if full:
        (d / "initramfs").write_bytes(b"070701 not really an initramfs\n")
        (d / "cmdline").write_text("console=hvc0 quiet\n")
        (d / "memory").write_text("512M\n")
        (d / "cpus").write_text("2\n")
        (d / "providers" / "net").mkdir(parents=True)
        (d / "providers" / "net" / "sys-net").write_text("")
        (d / "wlproxy.toml").write_text("# the VM's wlproxy policy: empty, so the defaults\n")
    return d


def write_script(directory: Path, name: str, text: str) -> Path:
    p = directory / name
    p.write_text(text)
    return p


def standin_host_command(tmp: Path) -> str:
    """A ``WLPROXY_HOST_COMMAND`` value running the stand-in host half."""
    return shlex.join([sys.executable, str(write_script(tmp, "host_standin.py", HOST_STANDIN))])


@functools.lru_cache(maxsize=None)
def real_host_problem() -> str | None:
    """Why the real ``python -m wlproxy host`` cannot be used, or None."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "wlproxy", "host", "--help"], capture_output=True, text=True,
                       env=env, timeout=30)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return f"'python -m wlproxy host --help' fails ({last}): the real host half is not available yet"
    if "--listen" not in r.stdout:
        # the dispatcher prints a bare help for a subcommand whose module is not there yet
        return "'python -m wlproxy host --help' has no --listen option: the real host half is not available yet"
    return None


def weston_args(runtime_dir: Path) -> list[str]:
    """Headless weston that starts no helper clients (they would outlive a killed weston)."""
    ini = runtime_dir.parent / "weston.ini"
    ini.write_text("[core]\nidle-time=0\n[input-method]\npath=\n")
    return ["--backend=headless-backend.so", "--shell=kiosk-shell.so", f"--config={ini}"]


def start_weston(runtime_dir: Path, display: str = "wayland-hv") -> subprocess.Popen[bytes]:
    """A headless weston for the real host half to talk to; ready when its socket exists."""
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    proc = subprocess.Popen(["weston", f"--socket={display}", *weston_args(runtime_dir)],
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for(lambda: (runtime_dir / display).exists() or proc.poll() is not None, 10, "weston's socket")
    if proc.poll() is not None:
        raise RuntimeError(f"weston exited with status {proc.returncode}")
    return proc


def stop_weston(proc: subprocess.Popen[bytes]) -> None:
    """Stop weston and the helper clients it launched (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.fixture
def own_tmp() -> Iterator[Path]:
    """A private temporary directory: pytest's tmp_path can be removed by a concurrent pytest run."""
    d = short_tmpdir("hvt")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["stand-in", "real"])
def host_command(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                 own_tmp: Path) -> Iterator[str]:
    """Run each test with the stand-in host half and with the real one (skipped if unavailable).

    The real one gets a headless weston (``WAYLAND_DISPLAY``, ``XDG_RUNTIME_DIR``) to connect to.
    """
    if request.param == "real":
        problem = real_host_problem()
        if problem:
            pytest.skip(problem)
        if shutil.which("weston") is None:
            pytest.skip("weston is not installed: the real host half needs a compositor")
        monkeypatch.delenv(hosthalf.ENV_COMMAND, raising=False)
        monkeypatch.setenv("PYTHONPATH", str(ROOT))
        runtime = short_tmpdir("xrt") / "xdg"
        weston = start_weston(runtime)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-hv")
        yield "real"
        stop_weston(weston)
        shutil.rmtree(runtime.parent, ignore_errors=True)
        return
    monkeypatch.setenv(hosthalf.ENV_COMMAND, standin_host_command(own_tmp))
    yield "stand-in"


class StandinHypervisor(Hypervisor):
    """A VMM stand-in: a process that exits on cue. ``fail_boot`` makes boot fail like an API error."""

    name = "standin"

    def __init__(self, script_dir: Path, fail_boot: str | None = None, ignore_term: bool = False,
                 exit_at_boot: bool = False) -> None:
        self.script_dir = script_dir
        self.fail_boot, self.ignore_term, self.exit_at_boot = fail_boot, ignore_term, exit_at_boot
        self.shutdowns = 0

    def spawn(self, vm: VmDef, paths: RunPaths) -> subprocess.Popen[bytes]:
        script = write_script(self.script_dir, "vmm_standin.py", VMM_STANDIN)
        argv = [sys.executable, str(script)] + (["--ignore-term"] if self.ignore_term else [])
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, process_group=0)

    def boot(self, vm: VmDef, paths: RunPaths, proc: subprocess.Popen[bytes], timeout: float) -> None:
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            raise HypervisorError("VMM stand-in did not start")
        proc.stdout.close()
        if self.exit_at_boot:
            os.kill(proc.pid, signal.SIGUSR2)
        if self.fail_boot:
            raise HypervisorError(self.fail_boot)

    def shutdown(self, paths: RunPaths, timeout: float) -> None:
        from wlproxy.vm import rundir
        self.shutdowns += 1
        ref = rundir.state_proc(rundir.read_state(paths), "vmm")
        if ref is not None and ref.alive():
            os.kill(ref.pid, signal.SIGUSR1)

    def vm_state(self, paths: RunPaths) -> str:
        return "Running"


def make_hypervisor(binary: str | None = None) -> Hypervisor:
    """Lets ``get_hypervisor("standin")`` find the stand-in (tests register it in HYPERVISORS) to stop it."""
    return StandinHypervisor(Path(binary or "/nonexistent"))


def read_pids(pidfile: Path) -> list[int]:
    try:
        return [int(line.split()[0]) for line in pidfile.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def gone(pid: int) -> bool:
    """True once ``pid`` no longer exists at all (exited and reaped)."""
    return not Path(f"/proc/{pid}").exists()


def wait_for(check, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def standin_vm_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """A short root with the VM ``appvm`` (every optional file) under ``root/vms``; yields the root and
    the file where stand-ins record their pids. Afterwards every recorded pid and every new child of
    this process is killed and the root removed; a new child still there fails the test."""
    root = short_tmpdir()
    make_vm(root / "vms", "appvm", full=True)
    pids = root / "pids"
    monkeypatch.setenv("STANDIN_PIDS", str(pids))
    before = set(children_of(os.getpid()))
    yield root, pids
    strays = set(children_of(os.getpid())) - before
    for pid in read_pids(pids) + list(strays):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(root, ignore_errors=True)
    assert not strays, f"stray child processes: {strays}"


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` that still exist."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


ENV_CH_SPEC = "WLPROXY_CH_SPEC"


def ch_spec_path() -> Path:
    """cloud-hypervisor's OpenAPI spec: ``$WLPROXY_CH_SPEC``, else ``shared/specs/`` beside the clone."""
    env = os.environ.get(ENV_CH_SPEC)
    if env:
        return Path(env)
    return ROOT.parent / "shared" / "specs" / "cloud-hypervisor.yaml"


def require_ch_spec() -> Path:
    """The spec's path, or skip the test saying where it was looked for."""
    p = ch_spec_path()
    if not p.is_file():
        pytest.skip(f"the cloud-hypervisor spec is not at {p} (set ${ENV_CH_SPEC}, or put shared/specs/ "
                    "beside the clone)")
    return p
