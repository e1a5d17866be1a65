"""Run the two halves as separate processes, as in a deployment: the host
half in front of a weston, the guest half listening for clients, joined by a
Unix-socket link named like cloud-hypervisor's hybrid vsock socket.

Used by the tests, ``wlproxy bench`` and the README demo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from wlproxy.vm.procs import NotReady, stop_child, unix_accepts, wait_until

PORT = 6000


def wlproxy_command() -> list[str]:
    return [sys.executable, "-m", "wlproxy"]


def _env_with_source(env: Mapping[str, str]) -> dict[str, str]:
    out = dict(env)
    root = str(Path(__file__).resolve().parents[2])  # the source tree
    pp = out.get("PYTHONPATH", "")
    if root not in pp.split(os.pathsep):
        out["PYTHONPATH"] = os.pathsep.join(p for p in (root, pp) if p)
    return out


class _Half:
    """A ``wlproxy`` subprocess logging to a file; ready when ``ready_path`` accepts."""

    what = "wlproxy"
    proc: subprocess.Popen | None = None

    def _spawn(self, args: list[str], env: Mapping[str, str], ready_path: Path, timeout: float) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(wlproxy_command() + ["-v", *args], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: unix_accepts(ready_path), timeout, self.what, self.proc)
        except NotReady as e:
            raise RuntimeError(f"{e}\n{self.log_text()[-2000:]}") from None

    def stop(self) -> int | None:
        rc = stop_child(self.proc, 5.0, self.what) if self.proc is not None else None
        self._log.close()
        return rc

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


class HostHalf(_Half):
    """``wlproxy host`` listening on ``<run_dir>/vsock_<port>``."""

    what = "host half"

    def __init__(self, compositor_env: Mapping[str, str], run_dir: Path, vm: str = "testvm", *,
                 port: int = PORT, extra: Sequence[str] = (), log_path: Path | None = None):
        self.env = _env_with_source(compositor_env)
        self.run_dir = Path(run_dir)
        self.vm = vm
        self.link_path = self.run_dir / f"vsock_{port}"
        self.extra = list(extra)
        self.log_path = log_path or self.run_dir / f"host-{vm}.log"

    def start(self, timeout: float = 10.0) -> "HostHalf":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # both halves on the developer's own machine (demo, bench, tests): as root, say it is meant
        root = ["--allow-root"] if os.geteuid() == 0 else []
        self._spawn(["host", "--listen", str(self.link_path), "--vm", self.vm, *root, *self.extra], self.env,
                    self.link_path, timeout)
        return self


class GuestHalf(_Half):
    """``wlproxy guest`` with its own XDG_RUNTIME_DIR, linked to ``link_path``."""

    what = "guest half"

    def __init__(self, link_path: Path, runtime_dir: Path, display: str = "wayland-0", *,
                 extra: Sequence[str] = (), log_path: Path | None = None, link: str | None = None):
        self.link = link or f"unix:{link_path}"
        self.runtime_dir = Path(runtime_dir)
        self.display = display
        self.extra = list(extra)
        self.log_path = log_path or self.runtime_dir.parent / f"guest-{self.runtime_dir.name}.log"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / self.display

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a client inside the 'guest'."""
        out = dict(os.environ if base is None else base)
        out.update(XDG_RUNTIME_DIR=str(self.runtime_dir), WAYLAND_DISPLAY=self.display)
        out.pop("WAYLAND_SOCKET", None)
        return _env_with_source(out)

    def start(self, timeout: float = 10.0) -> "GuestHalf":
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = self.env()
        env.pop("WAYLAND_DISPLAY", None)
        self._spawn(["guest", "--link", self.link, "--socket", self.display, *self.extra], env,
                    self.socket_path, timeout)
        return self


class ProxyPair:
    """Host half + guest half for one weston; a context manager.

    ``pair.env()`` is the environment for a client 'inside the VM'.
    """

    def __init__(self, compositor_env: Mapping[str, str], base_dir: Path | None = None, vm: str = "testvm",
                 host_extra: Sequence[str] = (), guest_extra: Sequence[str] = ()):
        self._tmp = None
        if base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="wlproxy-pair-")
            base_dir = Path(self._tmp.name)
        self.base = Path(base_dir)
        self.host = HostHalf(compositor_env, self.base / "run" / "vm" / vm, vm, extra=host_extra,
                             log_path=self.base / "host.log")
        self.guest = GuestHalf(self.host.link_path, self.base / "guest-runtime", extra=guest_extra,
                               log_path=self.base / "guest.log")

    def start(self) -> "ProxyPair":
        self.host.start()
        try:
            self.guest.start()
        except Exception:
            self.host.stop()
            raise
        return self

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        return self.guest.env(base)

    def stop(self) -> None:
        self.guest.stop()
        self.host.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "ProxyPair":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
