"""A scripted app VM session, watched from the host.

Used by ``tests/scenarios/test_appvm_e2e.py`` and ``wlproxy demo --vm``. Everything goes
through the ``wlproxy vm`` command line with the qemu backend (TCG unless
``$WLPROXY_QEMU_ACCEL`` says otherwise), in front of a weston the caller started:

1. :meth:`AppVmSession.start`: write the VM definition (:func:`wlproxy.vm.guestdef.write_vm_definition`,
   the cached image of :func:`wlproxy.vm.image.build_image`), then ``wlproxy vm start NAME
   --hypervisor qemu --detach``: the host half, qemu, the guest's init, the guest half
   (``wlproxy guest --link virtio-port:wlproxy.0``) and then :data:`GUEST_SCRIPT`.
2. The guest script runs the pywayland pattern client (``python -m wlproxy.tools.clients.pattern``,
   the host's interpreter and package seen through the 9p root), which draws one frame and
   keeps its window up.
3. :meth:`AppVmSession.release_pattern` lets the guest script go on: it closes the pattern
   client's stdin (the client exits), runs ``weston-simple-shm`` for a few seconds, stops it
   with SIGINT, reports, and waits until the VM is stopped (the power button's SIGTERM).
4. :meth:`AppVmSession.stop`: ``wlproxy vm stop NAME``.

The guest can only be told to go on through the host's file system: the control directory
(:func:`guest_visible_tmpdir`) is outside ``/tmp`` and ``/run``, which the guest covers with
its own tmpfs, and a file created there shows up in the guest at once (9p in ``cache=loose``
mode keeps no negative dentries). The guest script reports on the serial console with lines
starting :data:`SAY`; each step's time is recorded in :attr:`AppVmSession.times` (seconds
since ``vm start`` was run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from wlproxy.vm import guestinit
from wlproxy.vm.guestdef import wlproxy_pythonpath, write_vm_definition
from wlproxy.vm.image import GuestImage
from wlproxy.vm.rundir import RunPaths

SAY = "wlproxy-scenario: "
RELEASE_FILE = "release-pattern"

# Run by the guest's runner as ["/bin/sh", "-c", GUEST_SCRIPT, "scenario", CONTROL_DIR, SECONDS,
# PATTERN_ARGV...] (the host's /bin/sh, through the 9p root); WAYLAND_DISPLAY is the guest half.
# Exit status: 0 once stopped after everything went right; 10-13 name the step that failed.
GUEST_SCRIPT = r"""
go=$1 secs=$2
shift 2
say() { echo "@SAY@$*"; }
alive() { s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [ -n "$s" ] && [ "$s" != Z ]; }
fifo=/tmp/pattern-stdin
mkfifo "$fifo" || { say "cannot create $fifo"; exit 10; }
"$@" < "$fifo" &
pattern=$!
exec 3> "$fifo"
say "pattern client started (pid $pattern)"
while [ ! -e "$go/@RELEASE@" ]; do
    if ! alive "$pattern"; then
        wait "$pattern"; say "pattern client exited early with status $?"; exit 11
    fi
    sleep 0.1
done
exec 3>&-
wait "$pattern"; status=$?
say "pattern client exited with status $status"
[ "$status" = 0 ] || exit 12
weston-simple-shm 2> /tmp/simple-shm.err &
shm=$!
say "weston-simple-shm started (pid $shm)"
sleep "$secs"
if alive "$shm"; then ran=yes; kill -INT "$shm"; else ran=no; fi
wait "$shm"; status=$?
err=$(tr '\n' '|' < /tmp/simple-shm.err | head -c 400)
say "weston-simple-shm ran=$ran status=$status stderr=$err"
[ "$ran" = yes ] && [ "$status" = 0 ] && [ "$err" = "simple-shm exiting|" ] || exit 13
trap 'say "stopping"; exit 0' TERM
say "done; waiting to be stopped"
while :; do sleep 1 & wait $!; done
""".replace("@SAY@", SAY).replace("@RELEASE@", RELEASE_FILE)

SIMPLE_SHM_RE = re.compile(re.escape(SAY) + r"weston-simple-shm ran=(\w+) status=(\d+) stderr=(.*)$", re.M)
GUEST_HIDES = ("/tmp", "/run", "/dev", "/proc", "/sys")  # the guest mounts its own there


class ScenarioError(RuntimeError):
    """A step did not happen; the message carries what the console and logs say."""


def guest_visible_tmpdir(prefix: str = "wlproxy-scenario-") -> Path:
    """A new private directory on the host that the guest sees at the same path (not under /tmp)."""
    from xdg import BaseDirectory

    for parent in (Path("/var/tmp"), Path(BaseDirectory.xdg_cache_home) / "wlproxy"):
        real = str(parent.resolve())
        if any(real == h or real.startswith(h + "/") for h in GUEST_HIDES):
            continue
        try:
            parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError:
            continue
    raise ScenarioError("no writable directory the guest can see (tried /var/tmp and $XDG_CACHE_HOME)")


def pattern_argv(title: str, width: int, height: int, pattern: str) -> list[str]:
    """The pattern client, run by this host's interpreter (the guest sees it at the same path)."""
    return [sys.executable, "-m", "wlproxy.tools.clients.pattern", "--title", title, "--app-id", "wlproxy.pattern",
            "--width", str(width), "--height", str(height), "--pattern", pattern]


def guest_argv(control_dir: Path, shm_seconds: float, pattern: list[str]) -> list[str]:
    return ["/bin/sh", "-c", GUEST_SCRIPT, "scenario", str(control_dir), f"{shm_seconds:g}", *pattern]


def toplevel_titles(weston_log: str) -> list[tuple[str, str]]:
    """``(client, title)`` for each ``xdg_toplevel.set_title`` request weston received.

    Read from weston's ``proto`` log scope (``weston --logger-scopes=log,proto``), which logs
    every request as weston decoded it: ``[time][proto] client 0x.. rq xdg_toplevel@8.set_title("t")``.
    """
    out = []
    for m in re.finditer(r"\[proto\] client (\S+) rq xdg_toplevel@\d+\.set_title\(\"(.*)\"\)\s*$",
                         weston_log, re.M):
        out.append((m.group(1), m.group(2)))
    return out


def weston_requests(weston_log: str, client: str, request: str) -> int:
    """How many ``request`` (``iface.name``) requests weston's proto scope logged for ``client``."""
    iface, name = request.split(".")
    return len(re.findall(r"\[proto\] client %s rq %s@\d+\.%s\(" % (re.escape(client), re.escape(iface),
                                                                    re.escape(name)), weston_log))


@dataclass
class AppVmSession:
    """One app VM running :data:`GUEST_SCRIPT`, driven through ``wlproxy vm``; see the module doc."""

    image: GuestImage
    compositor_env: Mapping[str, str]
    display: str
    base: Path  # holds vms/ (the definition) and run/ (--run-dir); keep it short: sockets live there
    name: str = "e2e"
    title: str = "wlproxy pattern"
    width: int = 240
    height: int = 160
    pattern: str = "noise"
    shm_seconds: float = 4.0
    accel: str | None = "tcg"  # None: $WLPROXY_QEMU_ACCEL, else tcg
    guest_command: list[str] | None = None  # instead of GUEST_SCRIPT; "{control}" is replaced
    with_guest_half: bool = True  # False: the guest command starts its own
    times: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vms_dir = self.base / "vms"
        self.run_dir = self.base / "run"
        self.paths = RunPaths(self.run_dir, self.name)
        self.control = guest_visible_tmpdir()
        self.t0: float | None = None
        self.started = False

    # -- the CLI -----------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(self.compositor_env)
        src = wlproxy_pythonpath()
        pp = env.get("PYTHONPATH", "")
        if src not in pp.split(os.pathsep):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (src, pp) if p)
        if self.accel:
            env["WLPROXY_QEMU_ACCEL"] = self.accel
        if os.geteuid() == 0:  # a demo on this machine, run as root: the host half must be told it may
            env["WLPROXY_ALLOW_ROOT"] = "1"
        return env

    def vm_cli(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """``python -m wlproxy -v vm ARGS --vms-dir ... --run-dir ...``."""
        action, rest = args[0], list(args[1:])
        argv = [sys.executable, "-m", "wlproxy", "-v", "vm", action, "--vms-dir", str(self.vms_dir),
                "--run-dir", str(self.run_dir), *rest]
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def _mark(self, what: str) -> float:
        assert self.t0 is not None
        self.times[what] = t = time.monotonic() - self.t0
        return t

    # -- steps -------------------------------------------------------------------------------------
    def write_definition(self) -> Path:
        if self.guest_command is not None:
            argv = [a.replace("{control}", str(self.control)) for a in self.guest_command]
        else:
            argv = guest_argv(self.control, self.shm_seconds,
                              pattern_argv(self.title, self.width, self.height, self.pattern))
        return write_vm_definition(self.vms_dir / self.name, self.image, argv,
                                   with_guest_half=self.with_guest_half)

    def start(self) -> subprocess.CompletedProcess[str]:
        """``wlproxy vm start NAME --hypervisor qemu --display D --detach``; returns once qemu runs."""
        self.write_definition()
        self.t0 = time.monotonic()
        res = self.vm_cli("start", self.name, "--hypervisor", "qemu", "--display", self.display,
                          "--timeout", "30", "--detach")
        self._mark("vm start returned")
        self.started = res.returncode == 0
        return res

    def console(self) -> str:
        try:
            return self.paths.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def supervisor_log(self) -> str:
        try:
            return self.paths.supervisor_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        return (f"--- guest console ({self.paths.serial_log}) ---\n{self.console()[-3000:]}\n"
                f"--- supervisor and host half ({self.paths.supervisor_log}) ---\n{self.supervisor_log()[-3000:]}")

    def wait_console(self, pattern: str, timeout: float, what: str | None = None) -> re.Match[str]:
        """Wait for a console line matching ``pattern``; record when it showed up under ``what``."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            text = self.console()
            if m := regex.search(text):
                if what:
                    self._mark(what)
                return m
            status = guestinit.parse_exit_status(text)
            if status is not None:
                raise ScenarioError(f"the guest's command ended (status {status}) before the console showed "
                                    f"{pattern!r}\n{self.diagnostics()}")
            if self.started and not self.paths.vm_dir.exists():
                raise ScenarioError(f"the VM is gone (no {self.paths.vm_dir}) before the console showed "
                                    f"{pattern!r}\n{self.diagnostics()}")
            if time.monotonic() >= deadline:
                raise ScenarioError(f"the console did not show {pattern!r} within {timeout:g} s\n{self.diagnostics()}")
            time.sleep(0.02)

    def wait_booted(self, timeout: float = 90.0) -> float:
        """Until the guest half listens and the runner starts the guest script; returns the guest's
        uptime when init had mounted the host root."""
        m = self.wait_console(re.escape(guestinit.READY_MARKER) + r"([\d.]+)", timeout, "guest root mounted")
        self.wait_console(r"^wlproxy-run: running: /bin/sh", timeout, "guest half listening")
        return float(m.group(1))

    def wait_first_frame(self, timeout: float = 120.0) -> None:
        """Until the pattern client reports its first frame committed and shown (frame callback, sync)."""
        self.wait_console(r"^frame 0 committed", timeout, "first frame committed")

    def wait_on_screen(self, shoot: Callable[[], Any], expected: Any, timeout: float = 20.0) -> tuple[Any, list]:
        """Screenshot (``shoot()``) until ``expected`` appears exactly; returns (shot, positions)."""
        from wlproxy.tools.clients.screenshot import locate_all

        deadline = time.monotonic() + timeout
        while True:
            shot = shoot()
            found = locate_all(shot.pixels, expected)
            if found:
                self._mark("first frame on screen")
                return shot, found
            if time.monotonic() >= deadline:
                return shot, []
            time.sleep(0.1)

    def release_pattern(self, timeout: float = 60.0) -> int:
        """Let the guest close the pattern client; returns the client's exit status."""
        (self.control / RELEASE_FILE).touch()
        m = self.wait_console(re.escape(SAY) + r"pattern client exited with status (\d+)", timeout,
                              "pattern client exited")
        return int(m.group(1))

    def wait_simple_shm_started(self, timeout: float = 60.0) -> None:
        self.wait_console(re.escape(SAY) + r"weston-simple-shm started", timeout, "weston-simple-shm started")

    def wait_simple_shm(self, timeout: float = 90.0) -> dict[str, Any]:
        """The guest's report on weston-simple-shm: still running after the seconds it was given
        (``ran``), its exit status after SIGINT, and its stderr (lines joined with ``|``)."""
        m = self.wait_console(SIMPLE_SHM_RE.pattern, timeout, "weston-simple-shm done")
        return {"ran": m.group(1) == "yes", "status": int(m.group(2)), "stderr": m.group(3)}

    def wait_idle(self, timeout: float = 30.0) -> None:
        self.wait_console(re.escape(SAY) + "done; waiting to be stopped", timeout)

    def status(self) -> dict[str, Any]:
        """``wlproxy vm status NAME --json``."""
        res = self.vm_cli("status", self.name, "--json", timeout=30)
        if res.returncode != 0:
            raise ScenarioError(f"wlproxy vm status failed ({res.returncode}): {res.stderr}")
        return json.loads(res.stdout)[0]

    def stop(self, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``wlproxy vm stop NAME``."""
        res = self.vm_cli("stop", self.name, "--timeout", "30", timeout=timeout)
        if res.returncode == 0:
            self.started = False
            if self.t0 is not None:
                self._mark("vm stopped")
        return res

    def close(self) -> None:
        """Stop the VM if it still runs (a failed run) and remove the control directory."""
        try:
            if self.paths.vm_dir.exists():
                self.stop()
        finally:
            shutil.rmtree(self.control, ignore_errors=True)

    def __enter__(self) -> AppVmSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def timing_summary(self) -> str:
        order = ["vm start returned", "guest root mounted", "guest half listening", "first frame committed",
                 "first frame on screen", "weston-simple-shm started", "weston-simple-shm done", "vm stopped"]
        return ", ".join(f"{k} {self.times[k]:.2f} s" for k in order if k in self.times)
