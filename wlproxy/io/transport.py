"""Link endpoints named like URLs.

Guest side (connect): ``vsock:PORT`` (AF_VSOCK to the host, CID 2),
``virtio-port:NAME`` (a virtio-console port) and ``unix:PATH``.
Host side (listen): a plain path or ``unix:PATH`` (cloud-hypervisor's hybrid
vsock delivers guest connections to port N at ``<vsock socket>_N``), or
``fd:N`` for an inherited listening or connected stream socket.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass

from wlproxy.io.virtio_port import PortNotFound, wait_host_connected, wait_virtio_port
from wlproxy.io.wlsocket import SocketError, listen_unix

VSOCK_HOST_CID = 2


@dataclass(frozen=True)
class Endpoint:
    kind: str  # vsock | virtio-port | unix | fd
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse(spec: str, *, listening: bool = False) -> Endpoint:
    kind, sep, value = spec.partition(":")
    if not sep:
        if listening or "/" in spec:
            return Endpoint("unix", spec)
        raise ValueError(f"link {spec!r}: expected vsock:PORT, virtio-port:NAME or unix:PATH")
    kinds = ("unix", "fd") if listening else ("vsock", "virtio-port", "unix")
    if kind not in kinds:
        raise ValueError(f"link {spec!r}: unknown kind {kind!r} (expected one of {', '.join(kinds)})")
    if kind in ("vsock", "fd") and not value.isdigit():
        raise ValueError(f"link {spec!r}: {kind} needs a number")
    if not value:
        raise ValueError(f"link {spec!r}: missing value")
    return Endpoint(kind, value)


def connect(ep: Endpoint) -> int:
    """Connect (guest side) and return a non-blocking fd the caller owns."""
    if ep.kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(ep.value)
        except OSError as e:
            s.close()
            raise SocketError(f"cannot connect to {ep}: {e.strerror}") from None
    elif ep.kind == "vsock":
        if not hasattr(socket, "AF_VSOCK"):
            raise SocketError("this system has no AF_VSOCK support")
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect((VSOCK_HOST_CID, int(ep.value)))
        except OSError as e:
            s.close()
            raise SocketError(f"cannot connect to {ep} (host CID {VSOCK_HOST_CID}): {e.strerror}") from None
    elif ep.kind == "virtio-port":
        try:
            path = wait_virtio_port(ep.value, timeout=5.0)
        except (PortNotFound, ValueError) as e:
            raise SocketError(str(e)) from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise SocketError(f"cannot open {path}: {e.strerror}") from None
        # until the host attaches, reads return 0 at once: wait rather than spin
        if not wait_host_connected(fd, timeout=5.0):
            os.close(fd)
            raise SocketError(f"{path}: the host side of the port is not connected")
        return fd
    else:
        raise SocketError(f"cannot connect to {ep}")
    _tune(s)
    s.setblocking(False)
    return s.detach()


def _tune(s: socket.socket) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass


def listen(ep: Endpoint) -> socket.socket:
    """A listening socket (host side), or an already connected one for ``fd:N``
    (check with ``is_listening``)."""
    if ep.kind == "unix":
        return listen_unix(ep.value)
    fd = int(ep.value)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise SocketError(f"{ep}: no such file descriptor") from None
    if not stat.S_ISSOCK(mode):
        raise SocketError(f"{ep}: not a socket")
    os.set_inheritable(fd, False)
    s = socket.socket(fileno=fd)
    s.setblocking(False)
    return s


def is_listening(s: socket.socket) -> bool:
    return bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def accepted(s: socket.socket) -> int:
    _tune(s)
    s.setblocking(False)
    return s.detach()
