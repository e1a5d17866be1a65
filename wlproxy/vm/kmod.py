"""Kernel modules without kmod: read ``depends=`` from ``.modinfo`` and order loads.

Debian's kernel package ships no ``modules.dep`` (``depmod`` writes it at install
time), so dependencies are read straight from each module's ELF ``.modinfo``
section. A ``modules.dep`` is used when present.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from dataclasses import dataclass, field
from pathlib import Path

_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")


class ModuleError(Exception):
    """A module is missing or cannot be read."""


def module_name(path: str | Path) -> str:
    """``kernel/fs/9p/9p.ko.xz`` -> ``9p``; dashes become underscores like the kernel does."""
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def read_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed if it is a ``.ko.xz`` or ``.ko.gz``."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def elf_section(data: bytes, wanted: str) -> bytes | None:
    """The contents of the named section of a 64-bit little-endian ELF file, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ModuleError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, stroff, _ = header(shstrndx)
    for i in range(shnum):
        name_off, offset, size = header(i)
        end = data.index(b"\0", stroff + name_off)
        if data[stroff + name_off:end].decode() == wanted:
            return data[offset:offset + size]
    return None


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``key=value`` pairs of a module's ``.modinfo`` section (keys may repeat)."""
    section = elf_section(data, ".modinfo") or b""
    info: dict[str, list[str]] = {}
    for item in section.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


@dataclass
class ModuleIndex:
    """The modules of one kernel: name -> file, and the built-in names."""

    root: Path
    paths: dict[str, Path]
    builtin: set[str] = field(default_factory=set)
    _deps: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> ModuleIndex:
        """Index ``/lib/modules/<version>`` (only file names are read here)."""
        paths = {module_name(p): p for p in root.rglob("*") if p.name.endswith(_SUFFIXES)}
        builtin: set[str] = set()
        if (root / "modules.builtin").exists():
            builtin = {module_name(line) for line in (root / "modules.builtin").read_text().split()}
        index = cls(root, paths, builtin)
        dep_file = root / "modules.dep"
        if dep_file.exists():
            for line in dep_file.read_text().splitlines():
                target, _, deps = line.partition(":")
                index._deps[module_name(target)] = [module_name(d) for d in deps.split()]
        return index

    def depends(self, name: str) -> list[str]:
        """Direct dependencies of a module (from modules.dep, else from its .modinfo)."""
        if name not in self._deps:
            if name not in self.paths:
                raise ModuleError(f"module {name!r} not found under {self.root}")
            info = modinfo(read_module(self.paths[name]))
            self._deps[name] = [module_name(d) for v in info.get("depends", []) for d in v.split(",") if d]
        return self._deps[name]

    def load_order(self, wanted: list[str]) -> list[str]:
        """``wanted`` and their dependencies, each after everything it depends on.

        Built-in modules are left out; a module neither built in nor on disk is an error.
        """
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            name = name.replace("-", "_")
            if state.get(name) == "done" or (name in self.builtin and name not in self.paths):
                return
            if state.get(name) == "visiting":
                raise ModuleError("dependency cycle: " + " -> ".join(chain + (name,)))
            state[name] = "visiting"
            for dep in self.depends(name):
                visit(dep, chain + (name,))
            state[name] = "done"
            order.append(name)

        for name in wanted:
            visit(name, ())
        return order
