"""A writer for the cpio "newc" format, the format Linux unpacks as an initramfs.

Written in Python because the host has no ``cpio``; it can also create device
nodes (``/dev/console``) without privileges, since they are only archive entries.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Append entries to a newc archive; ``close()`` writes the trailer.

    Entries are written in call order with fixed owner (root) and mtime, so the
    same calls give the same bytes. Parent directories must be added first.
    """

    def __init__(self, out: BinaryIO, mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._ino = 0
        self._names: set[str] = set()
        self._closed = False

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        name = name.strip("/")
        if not name or name in self._names or ".." in name.split("/"):
            raise ValueError(f"bad or duplicate cpio entry name: {name!r}")
        self._names.add(name)
        self._ino += 1
        self._write_header(name, mode, len(data), self._ino, nlink, rdev)
        self._out.write(data + _pad(len(data)))

    def _write_header(self, name: str, mode: int, size: int, ino: int, nlink: int,
                      rdev: tuple[int, int]) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, self._mtime, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + _pad(len(header) + len(encoded)))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_device(self, name: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character (``kind="c"``) or block (``kind="b"``) device node."""
        type_bits = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[kind]
        self._entry(name, type_bits | mode, rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer entry; the archive is complete afterwards."""
        if not self._closed:
            self._write_header(TRAILER, 0, 0, 0, 1, (0, 0))
            self._closed = True

    def __enter__(self) -> CpioWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
