"""Telling a service manager that a daemon is ready, without libsystemd.

* systemd (``Type=notify``): one datagram ``READY=1`` to the AF_UNIX socket named by
  ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace).
* s6 (``notification-fd`` in the service directory): a newline written to that fd, which is
  then closed.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("wlproxy.notify")


def sd_notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; False when there is none."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    elif not addr.startswith("/"):
        log.warning("NOTIFY_SOCKET=%s is neither a path nor @abstract: not notifying", addr)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("cannot notify %s: %s", addr.lstrip("\0"), e)
        return False
    return True


def fd_notify(fd: int) -> bool:
    """Write the newline s6 waits for to ``fd`` and close it; False when that fails."""
    try:
        os.write(fd, b"\n")
    except OSError as e:
        log.warning("cannot write readiness to fd %d: %s", fd, e)
        return False
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return True


def ready(fd: int | None = None, status: str = "") -> list[str]:
    """Report readiness everywhere asked for: ``$NOTIFY_SOCKET`` and ``fd``; what was notified."""
    done = []
    msg = "READY=1" + (f"\nSTATUS={status}" if status else "") + f"\nMAINPID={os.getpid()}"
    if sd_notify(msg):
        done.append("NOTIFY_SOCKET")
        os.environ.pop("NOTIFY_SOCKET", None)  # children are not the service
    if fd is not None and fd_notify(fd):
        done.append(f"fd {fd}")
    return done
