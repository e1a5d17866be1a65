"""Real Wayland clients (pywayland) for tests, the demo and ``wlproxy bench``.

* :mod:`wlproxy.tools.clients.pattern`: an xdg_toplevel showing a known pixel pattern.
* :mod:`wlproxy.tools.clients.screenshot`: weston_screenshooter screenshots.

This module holds the shared pieces: :func:`protocol_xml` and :func:`load_protocol`
(pywayland bindings generated at run time from ``protocols/*.xml``), and
:class:`ClientProcess`, which drives a client as a subprocess.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["protocol_xml", "load_protocol", "ClientProcess", "ClientError"]


def protocol_xml(name: str) -> Path:
    """Path of ``protocols/<name>.xml`` (installed package data, or the source tree)."""
    fname = name if name.endswith(".xml") else f"{name}.xml"
    try:
        from importlib.resources import files

        p = files("wlproxy.protocols") / fname
        if p.is_file():
            return Path(str(p))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    import wlproxy

    p = Path(wlproxy.__file__).resolve().parent.parent / "protocols" / fname
    if not p.is_file():
        raise FileNotFoundError(f"protocol XML {fname} not found")
    return p


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "wlproxy" / "pywayland"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    root = Path(tempfile.gettempdir()) / f"wlproxy-pywayland-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def load_protocol(name: str) -> types.ModuleType:
    """Import pywayland bindings for ``protocols/<name>.xml``, generating them if needed.

    The bindings are written once per (XML, pywayland version) into a package
    under ``$XDG_CACHE_HOME/wlproxy/pywayland/`` (or a private temp dir) whose
    ``wayland`` module re-exports :mod:`pywayland.protocol.wayland`, so generated
    code shares the core interface classes with the rest of pywayland.
    Returns the module, e.g. ``load_protocol("weston-screenshooter").WestonScreenshooter``.
    """
    import pywayland
    from pywayland.scanner.protocol import Protocol

    xml = protocol_xml(name)
    data = xml.read_bytes()
    digest = hashlib.sha256(data + pywayland.__version__.encode()).hexdigest()[:16]
    modname = xml.stem.replace("-", "_")
    pkgname = f"_wlproxy_gen_{modname}_{digest}"
    if pkgname in sys.modules:
        return importlib.import_module(f"{pkgname}.{modname}")

    pkgdir = _cache_root() / pkgname
    if not (pkgdir / f"{modname}.py").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{pkgname}-", dir=pkgdir.parent))
        core = Protocol.parse_file(str(protocol_xml("wayland")))
        proto = Protocol.parse_file(str(xml))
        imports = {i.name: core.name for i in core.interface}
        imports.update({i.name: proto.name for i in proto.interface})
        proto.output(str(tmp), imports)
        (tmp / "wayland.py").write_text("from pywayland.protocol.wayland import *  # noqa: F401,F403\n")
        (tmp / "__init__.py").write_text(f'"""pywayland bindings generated from {xml.name}."""\n')
        try:
            os.rename(tmp, pkgdir)  # atomic; another process may have won the race
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    spec = importlib.util.spec_from_file_location(
        pkgname, pkgdir / "__init__.py", submodule_search_locations=[str(pkgdir)]
    )
    assert spec and spec.loader
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[pkgname] = pkg
    spec.loader.exec_module(pkg)
    return importlib.import_module(f"{pkgname}.{modname}")


class ClientError(RuntimeError):
    """A client subprocess misbehaved: exited early, timed out, printed no expected line."""


class ClientProcess:
    """A client subprocess with line-based stdout, stdin control and a clean stop.

    ``stdin`` and ``stdout`` are pipes; ``stderr`` goes to a file (or is inherited).
    Use :meth:`wait_line` to wait for a line the client prints, :meth:`send` to
    write a line, :meth:`stop` to end it: close stdin and wait (clients that exit
    on stdin EOF, like ours; ``stdin_stop=False`` skips this wait for clients
    that ignore stdin), then SIGTERM, wait, SIGKILL.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stderr_path: str | os.PathLike[str] | None = None,
        cwd: str | None = None,
        stdin_stop: bool = True,
    ) -> None:
        self.argv = list(argv)
        self.stdin_stop = stdin_stop
        self.stderr_path = str(stderr_path) if stderr_path is not None else None
        stderr = open(self.stderr_path, "wb") if self.stderr_path else None
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=dict(env) if env is not None else None,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=cwd,
            )
        finally:
            if stderr:
                stderr.close()
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""
        self.lines: list[str] = []  # every stdout line read so far

    @classmethod
    def python(cls, module: str, *args: str, env: Mapping[str, str] | None = None,
               **kw: object) -> "ClientProcess":
        """Run ``python -m module args...`` with this interpreter."""
        return cls([sys.executable, "-m", module, *args], env, **kw)  # type: ignore[arg-type]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        if not self.stderr_path:
            return ""
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except OSError:
            return ""

    def _read_available(self, timeout: float) -> bool:
        """Read what stdout has within ``timeout``; False on EOF."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return True
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self._buf += chunk
        return True

    def wait_line(self, prefix: str = "", timeout: float = 10.0) -> str:
        """Return the next stdout line starting with ``prefix`` (earlier lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"{self.argv[:4]}: no line starting {prefix!r} within {timeout}s; "
                                  f"stdout so far {self.lines[-5:]!r}; stderr:\n{self.stderr_text()[-2000:]}")
            if not self._read_available(min(left, 0.5)):
                if b"\n" in self._buf:
                    continue
                try:
                    self.proc.wait(timeout=max(0.1, left))
                except subprocess.TimeoutExpired:
                    pass
                raise ClientError(f"{self.argv[:4]}: closed stdout (status {self.proc.returncode}) before printing "
                                  f"{prefix!r}; stdout {self.lines[-5:]!r}; stderr:\n{self.stderr_text()[-2000:]}")

    def send(self, line: str) -> None:
        """Write one line to the client's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClientError(f"{self.argv[:4]}: still running after {timeout}s") from None

    def stop(self, timeout: float = 5.0) -> int:
        """Close stdin and wait; then SIGTERM, wait; then SIGKILL. Returns the exit status."""
        self.close_stdin()
        sigs = (None, signal.SIGTERM, signal.SIGKILL) if self.stdin_stop else (signal.SIGTERM, signal.SIGKILL)
        for sig in sigs:
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> "ClientProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
