"""Run Debian's weston headless (pixman renderer) for tests, the demo and ``wlproxy bench``.

Each :class:`Weston` gets its own private ``XDG_RUNTIME_DIR`` (mode 0700, made
by ``mkdtemp``), socket, ``weston.ini`` and log file, so instances never
interfere with each other or with a real session. ``--use-pixman`` matters: the
headless backend renders nothing by default.

Shell, for exact pixel comparisons: ``desktop-shell.so`` (default) with the
panel off (``panel-position=none``), no animations, no input-method helper and
a solid ``background_color``. There are no decorations (xdg clients decorate
themselves) and no cursor (the headless backend has no seat). It places a new
toplevel at a *random* spot of the output, so tests either search for the
window (:func:`wlproxy.tools.clients.screenshot.locate`) or make it fullscreen, which
centres a smaller surface on a black backdrop. ``kiosk-shell.so`` is no use
here: weston 10's kiosk-shell only puts a view in a layer while activating it
for a seat, and a headless weston has no seat, so windows never show.

Screenshots: weston 10 lets a client bind ``weston_screenshooter`` only when
the debug protocol is on (``--debug``); otherwise the bind is a protocol error
("permission denied. Debug protocol must be enabled"). The one exception, the
client weston itself launches from its screenshot key binding, can't happen
without a seat. Hence ``debug=True`` by default; pass ``debug=False`` for a
production-like weston (e.g. behind the proxy's host half in a benchmark).
With ``debug=True`` and the desktop shell, :meth:`Weston.start` also waits
until the background colour is on screen (the helper client
``weston-desktop-shell`` draws it asynchronously).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

SHELLS: dict[str, str] = {
    "desktop": "desktop-shell.so",
    "kiosk": "kiosk-shell.so",  # maps nothing without a seat in weston 10: see above
}

_counter = 0


class WestonError(RuntimeError):
    """Weston could not be started or did not become ready."""


@functools.lru_cache(maxsize=None)
def weston_available() -> str | None:
    """Return ``None`` if headless weston can run here, else a reason string."""
    exe = shutil.which("weston")
    if exe is None:
        return "weston is not installed (Debian: apt-get install weston)"
    try:
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"weston --help failed: {e}"
    text = out.stdout + out.stderr
    if "headless-backend.so" not in text:
        return "this weston has no headless-backend.so"
    if "--use-pixman" not in text.split("headless-backend.so", 1)[1]:
        return "this weston's headless backend has no pixman renderer"
    return None


def _wayland_ping(path: str, timeout: float) -> bool:
    """Connect to a Wayland socket and complete a ``wl_display.sync`` round trip.

    Raw wire protocol, no libwayland: proves weston's event loop is running,
    not only that the socket file exists.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        # wl_display(1).sync(new_id=2): header = object id, (size << 16) | opcode
        s.sendall(struct.pack("<III", 1, (12 << 16) | 0, 2))
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = s.recv(4096)
            if not chunk:
                return False
            buf += chunk
            while len(buf) >= 8:
                obj, size_op = struct.unpack_from("<II", buf)
                size = size_op >> 16
                if size < 8 or len(buf) < size:
                    break
                if obj == 2:  # wl_callback.done
                    return True
                buf = buf[size:]
        return False
    except OSError:
        return False
    finally:
        s.close()


class Weston:
    """A headless weston (pixman renderer) in a private runtime dir; a context manager.

    ``with Weston(width=640, height=480) as w: subprocess.run(cmd, env=w.env())``.
    After :meth:`start`: ``display`` (socket name), ``runtime_dir``, ``socket_path``,
    ``log_path`` (weston's ``--log``; its stderr goes to ``log_path + ".stderr"``),
    ``config_path``, ``proc``. :meth:`stop` removes the runtime dir (and the log in
    it) unless ``keep_runtime_dir``; pass ``log_path`` to keep the log elsewhere.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        *,
        shell: str = "desktop",
        debug: bool = True,
        socket_name: str | None = None,
        background_color: int = 0xFF203040,
        log_path: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        ready_timeout: float = 10.0,
        keep_runtime_dir: bool = False,
    ) -> None:
        global _counter
        if shell not in SHELLS and not shell.endswith(".so"):
            raise ValueError(f"unknown shell {shell!r}: one of {sorted(SHELLS)} or a module name")
        self.width = width
        self.height = height
        self.shell = shell
        self.debug = debug
        self.background_color = background_color
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.ready_timeout = ready_timeout
        self.keep_runtime_dir = keep_runtime_dir
        _counter += 1
        self.display: str = socket_name or f"wlproxy-weston-{os.getpid()}-{_counter}"
        self._user_log = Path(log_path) if log_path is not None else None
        self.runtime_dir: str = ""
        self.log_path: str = ""
        self.config_path: str = ""
        self.proc: subprocess.Popen[bytes] | None = None

    # -- paths and environment -------------------------------------------------

    @property
    def socket_path(self) -> str:
        return os.path.join(self.runtime_dir, self.display)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a Wayland client of this weston."""
        env = dict(os.environ if base is None else base)
        env.pop("WAYLAND_SOCKET", None)
        env.pop("DISPLAY", None)
        env["XDG_RUNTIME_DIR"] = self.runtime_dir
        env["WAYLAND_DISPLAY"] = self.display
        return env

    def log_text(self, tail: int | None = None) -> str:
        """Weston's log (the last ``tail`` lines if given)."""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    # -- lifecycle ------------------------------------------------------------

    def _write_config(self) -> None:
        lines = [
            "[core]",
            "idle-time=0",
            "",
            "[shell]",
            f"background-color=0x{self.background_color:08x}",
            "panel-position=none",
            "locking=false",
            "animation=none",
            "close-animation=none",
            "startup-animation=none",
            "focus-animation=none",
            "",
            "[input-method]",
            "path=",
            "",
        ]
        Path(self.config_path).write_text("\n".join(lines))

    def command(self) -> list[str]:
        shell = SHELLS.get(self.shell, self.shell)
        cmd = [
            "weston",
            "--backend=headless-backend.so",
            "--use-pixman",
            f"--shell={shell}",
            f"--socket={self.display}",
            "--idle-time=0",
            f"--width={self.width}",
            f"--height={self.height}",
            f"--config={self.config_path}",
            f"--log={self.log_path}",
        ]
        if self.debug:
            cmd.append("--debug")
        return cmd + self.extra_args

    def start(self) -> "Weston":
        """Start weston and wait until a client round trip succeeds."""
        if self.proc is not None:
            raise WestonError("already started")
        reason = weston_available()
        if reason:
            raise WestonError(reason)
        self.runtime_dir = tempfile.mkdtemp(prefix="wlproxy-weston-")  # mode 0700
        os.chmod(self.runtime_dir, 0o700)
        self.config_path = os.path.join(self.runtime_dir, "weston.ini")
        self.log_path = str(self._user_log) if self._user_log else os.path.join(self.runtime_dir, "weston.log")
        self._write_config()
        env = dict(os.environ)
        for k in ("WAYLAND_DISPLAY", "WAYLAND_SOCKET", "DISPLAY", "WAYLAND_DEBUG"):
            env.pop(k, None)
        env["XDG_RUNTIME_DIR"] = self.runtime_dir
        env.update(self.extra_env)
        with open(self.log_path + ".stderr", "wb") as stderr:
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # no terminal signals; a group for its helpers
            )
        try:
            self._wait_ready()
            if self.debug and SHELLS.get(self.shell, self.shell) == "desktop-shell.so":
                self._wait_background()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        delay = 0.005
        while True:
            if self.proc.poll() is not None:
                raise WestonError(
                    f"weston exited with status {self.proc.returncode} during start-up:\n"
                    f"{self.log_text(tail=30)}\n{self._stderr_text()}"
                )
            if os.path.exists(self.socket_path) and _wayland_ping(self.socket_path, 1.0):
                return
            if time.monotonic() > deadline:
                raise WestonError(
                    f"weston not ready after {self.ready_timeout}s:\n{self.log_text(tail=30)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _wait_background(self) -> None:
        """Poll screenshots until a corner shows the background colour."""
        try:
            from wlproxy.tools.clients.screenshot import screenshot
        except ImportError:  # no pywayland/numpy: can't check, don't need to
            return

        want = self.background_color & 0xFFFFFF
        deadline = time.monotonic() + self.ready_timeout
        while True:
            shot = screenshot(self.display, self.runtime_dir, timeout=self.ready_timeout)
            if int(shot.rgb24[-1, -1]) == want and int(shot.rgb24[0, 0]) == want:
                return
            if time.monotonic() > deadline:
                raise WestonError(f"desktop background 0x{want:06x} not shown after {self.ready_timeout}s")
            time.sleep(0.02)

    def _stderr_text(self) -> str:
        try:
            return Path(self.log_path + ".stderr").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit status."""
        proc, self.proc = self.proc, None
        status = None
        if proc is not None:
            if proc.poll() is None:
                # Only weston gets SIGTERM: its helpers (weston-desktop-shell) exit when
                # their connection closes. weston leads its own process group
                # (start_new_session) holding those helpers, so if it hangs, SIGKILL the
                # group while weston still exists and the group id is certainly ours.
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            status = proc.returncode
        if self.runtime_dir and not self.keep_runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        return status

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "Weston":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Weston(display={self.display!r}, {self.width}x{self.height}, shell={self.shell!r})"
