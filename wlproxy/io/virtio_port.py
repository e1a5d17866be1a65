"""Find a named virtio-console port in the guest.

With udev the port is ``/dev/virtio-ports/NAME``. Without it (a minimal
initramfs, busybox) only ``/dev/vportNpM`` exists, and the name the host gave
the port (qemu ``virtserialport,name=NAME``) is in
``/sys/class/virtio-ports/vportNpM/name``.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

SYSFS_PORTS = Path("/sys/class/virtio-ports")
DEV = Path("/dev")


class PortNotFound(LookupError):
    """No virtio-console port has that name."""


def find_virtio_port(name: str, *, sys_root: Path = SYSFS_PORTS, dev_root: Path = DEV) -> Path:
    """The device node of the virtio-console port called ``name``.

    ``sys_root`` and ``dev_root`` stand for ``/sys/class/virtio-ports`` and ``/dev``.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad virtio port name: {name!r}")
    link = dev_root / "virtio-ports" / name
    if link.exists():
        return link
    try:
        entries = sorted(sys_root.iterdir())
    except FileNotFoundError:
        entries = []
    seen = []
    for entry in entries:
        try:
            port_name = (entry / "name").read_text().strip()
        except OSError:
            continue
        seen.append(port_name or "(unnamed)")
        if port_name == name:
            node = dev_root / entry.name
            if node.exists():
                return node
            raise PortNotFound(f"virtio port {name!r} is {entry.name}, but {node} does not exist")
    found = ", ".join(seen) if seen else "none"
    raise PortNotFound(f"no virtio port named {name!r} (ports found: {found})")


def wait_virtio_port(name: str, timeout: float = 10.0, *, sys_root: Path = SYSFS_PORTS,
                     dev_root: Path = DEV) -> Path:
    """Like :func:`find_virtio_port`, but wait up to ``timeout`` seconds for the port.

    Ports appear shortly after the virtio-console driver loads, once the host
    has announced them, so a guest started at boot may have to wait.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return find_virtio_port(name, sys_root=sys_root, dev_root=dev_root)
        except PortNotFound:
            if time.monotonic() >= deadline:
                raise
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.2)


def wait_host_connected(fd: int, timeout: float) -> bool:
    """Wait until the host side of an open port is connected; False after ``timeout`` s.

    While no host program is attached to the port's socket, the guest driver
    reports POLLHUP and ``read()`` returns 0 at once (not end of stream for
    good): a guest must wait for the host rather than treat that as EOF. The
    driver has no event for the host attaching, so this polls.
    """
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        events = poller.poll(0)
        if events and not events[0][1] & select.POLLHUP:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.1)


def stale_frame_limit() -> int:
    """The most bytes a host half can still be waiting for to end one frame, plus a header."""
    from wlproxy.core import link

    lim = link.Limits()
    largest = max(lim.max_data, lim.max_shm_chunk + link.SHM_HEADER.size, lim.max_pipe_chunk + 4,
                  lim.max_control, lim.max_keymap)
    return link.HEADER_SIZE + largest + link.HEADER_SIZE


def end_stale_frame(fd: int, limit: int | None = None, timeout: float = 10.0) -> int:
    """Write zero bytes to the port until the host side disconnects, ``limit`` bytes
    (default :func:`stale_frame_limit`) are written, or ``timeout`` seconds pass; return
    how many were written.

    A virtio-console port is one byte stream for the life of the VM, whoever opens it in the
    guest: a guest program that died in the middle of writing a link frame leaves the host
    half waiting for the rest, and the next program's HELLO disappears into that frame.
    Zeros end the frame, and twelve more are a header the host half refuses (frame type 0),
    so it drops that stale link; qemu then connects a fresh one.
    """
    if limit is None:
        limit = stale_frame_limit()
    zeros = bytes(1 << 16)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + timeout
    sent = 0
    while sent < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        events = poller.poll(int(min(left, 0.1) * 1000))
        if not events:
            continue
        if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            break  # the host side went away: the stale link is gone
        try:
            sent += os.write(fd, zeros[:min(len(zeros), limit - sent)])
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            break
    return sent
