"""Wayland socket conventions: display names, the listening socket with its
``.lock`` file, and sockets handed over by socket activation."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
from pathlib import Path

log = logging.getLogger("wlproxy.wlsocket")


class SocketError(Exception):
    """A display or socket path the user named cannot be used."""


def runtime_dir() -> Path:
    d = os.environ.get("XDG_RUNTIME_DIR")
    if not d:
        raise SocketError("XDG_RUNTIME_DIR is not set")
    return Path(d)


def display_path(display: str | None = None) -> Path:
    """The socket path for a display name (absolute, or relative to XDG_RUNTIME_DIR)."""
    name = display or os.environ.get("WAYLAND_DISPLAY") or "wayland-0"
    p = Path(name)
    return p if p.is_absolute() else runtime_dir() / p


def connect_display(display: str | None = None) -> socket.socket:
    """Connect to a compositor as an ordinary client would."""
    path = display_path(display)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(str(path))
    except OSError as e:
        s.close()
        raise SocketError(f"cannot connect to the compositor at {path}: {e.strerror}") from None
    return s


class ListeningSocket:
    """``<runtime dir>/<name>`` bound and listening, guarded by ``<name>.lock``
    as libwayland's compositors do; a stale socket left behind is replaced."""

    def __init__(self, name: str, backlog: int = 128):
        self.path = display_path(name)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.sock: socket.socket | None = None
        self._lock_fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o660)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SocketError(f"{self.path} is in use by another compositor (lock {self.lock_path} held)") from None
        try:
            if self.path.exists() or self.path.is_symlink():
                self.path.unlink()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.bind(str(self.path))
            s.listen(backlog)
            s.setblocking(False)
            self.sock = s
        except OSError as e:
            self.close()
            raise SocketError(f"cannot listen on {self.path}: {e.strerror}") from None

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def accept(self) -> socket.socket | None:
        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.set_inheritable(False)
        return conn

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        if self._lock_fd >= 0:
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = -1


def listen_unix(path: str | Path, backlog: int = 16) -> socket.socket:
    """A listening Unix socket at a plain path (replacing a stale one)."""
    p = Path(path)
    if p.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(p))
        except OSError:
            p.unlink()  # nobody listens: stale
        else:
            raise SocketError(f"{p} is already in use")
        finally:
            probe.close()
    elif p.exists():
        raise SocketError(f"{p} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.bind(str(p))
        s.listen(backlog)
    except OSError as e:
        s.close()
        raise SocketError(f"cannot listen on {p}: {e.strerror}") from None
    s.setblocking(False)
    return s


def activated_sockets() -> list[socket.socket]:
    """Sockets passed by socket activation (``LISTEN_FDS``/``LISTEN_PID``, as s6 and systemd do)."""
    try:
        n = int(os.environ.get("LISTEN_FDS", "0"))
        pid = int(os.environ.get("LISTEN_PID", str(os.getpid())))
    except ValueError:
        return []
    if n <= 0 or pid != os.getpid():
        return []
    out = []
    for fd in range(3, 3 + n):
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SocketError(f"activation fd {fd} is not a socket")
        os.set_inheritable(fd, False)
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        out.append(s)
    for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(k, None)
    return out
