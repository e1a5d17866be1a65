"""VM definition directories, in Spectrum's layout.

One directory per VM under the VMs directory; the directory's name is the VM's name::

    NAME/vmlinux              kernel (required)
    NAME/blk/*.img            read-only disks (at least one)
    NAME/providers/net/VM     VMs that provide this VM's network (optional, recorded)
    NAME/initramfs            initramfs (optional)
    NAME/cmdline              kernel command line (optional)
    NAME/memory               memory size, bytes or with a K/M/G suffix (optional, default 1G)
    NAME/cpus                 number of vCPUs (optional, default 1)
    NAME/wlproxy.toml         the VM's wlproxy policy (optional; or NAME.toml beside the
                              directory: wlproxy.core.policy.LOOKUP_DOC)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CMDLINE = "console=ttyS0 root=/dev/vda ro"
DEFAULT_MEMORY = 1 << 30
DEFAULT_CPUS = 1
MIN_MEMORY = 64 << 20
MAX_CPUS = 254


class VmDefError(Exception):
    """A VM definition is unusable; ``problems`` holds one ``path: problem`` line each."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = problems
        super().__init__(f"VM {name!r} is not valid:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class VmDef:
    """A validated VM definition."""

    name: str
    path: Path
    kernel: Path
    disks: tuple[Path, ...]
    cmdline: str = DEFAULT_CMDLINE
    memory: int = DEFAULT_MEMORY
    cpus: int = DEFAULT_CPUS
    initramfs: Path | None = None
    net_providers: tuple[str, ...] = field(default=())
    policy: Path | None = None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a VM name, or None if it can."""
    if not name:
        return "the VM name is empty"
    if ":" in name or "/" in name:
        return f"the VM name {name!r} contains ':' or '/'"
    if name.startswith("."):
        return f"the VM name {name!r} starts with '.'"
    if any(c.isspace() or not c.isprintable() for c in name):
        return f"the VM name {name!r} contains whitespace or control characters"
    return None


def parse_memory(text: str) -> int:
    """Parse ``1073741824``, ``512M``, ``1G`` or ``1GiB`` into bytes."""
    from wlproxy.core.policy import parse_size

    try:
        size = parse_size(text)
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a size (examples: 1G, 512MiB, 1073741824; "
                         "MB and GB are powers of 1000)") from None
    if size < MIN_MEMORY:
        raise ValueError(f"{size} bytes is less than the minimum of {MIN_MEMORY >> 20} MiB")
    if size % 4096:
        raise ValueError(f"{size} bytes is not a multiple of the 4096-byte page size")
    return size


def _read_small(path: Path, problems: list[str]) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path}: cannot be read ({e})")
        return None


def _check_file(path: Path, what: str, problems: list[str]) -> bool:
    if not path.exists():
        problems.append(f"{path}: {what} is missing" + (" (dangling symlink)" if path.is_symlink() else ""))
        return False
    if not (path.is_file() or path.is_block_device()):
        problems.append(f"{path}: {what} is not a regular file")
        return False
    return True


def policy_path(vm_dir: Path) -> Path | None:
    """The VM's policy file, if it has one (the lookup every subcommand uses:
    ``NAME/wlproxy.toml``, then ``NAME.toml`` beside it)."""
    from wlproxy.core import policy

    return policy.lookup(vm_dir.name, vm_dir.parent)


def load(vms_dir: Path, name: str) -> VmDef:
    """Load and validate ``vms_dir/name``; raise :class:`VmDefError` listing every problem."""
    vm_dir = Path(vms_dir).absolute() / name
    problems: list[str] = []
    if (p := name_problem(name)) is not None:
        raise VmDefError(name, [f"{vm_dir}: {p}"])
    if not vm_dir.is_dir():
        raise VmDefError(name, [f"{vm_dir}: no such VM directory"])

    kernel = vm_dir / "vmlinux"
    _check_file(kernel, "the kernel (vmlinux, required)", problems)

    disks = tuple(sorted((vm_dir / "blk").glob("*.img")))
    if not disks:
        problems.append(f"{vm_dir / 'blk'}: no disk image (blk/*.img, at least one is required)")
    for disk in disks:
        if "," in str(disk):
            problems.append(f"{disk}: disk path contains ',' (not allowed in a disk path)")
        else:
            _check_file(disk, "the disk image", problems)

    initramfs = vm_dir / "initramfs"
    has_initramfs = initramfs.exists() or initramfs.is_symlink()
    if has_initramfs:
        _check_file(initramfs, "the initramfs", problems)

    cmdline = DEFAULT_CMDLINE
    if (vm_dir / "cmdline").exists():
        text = _read_small(vm_dir / "cmdline", problems)
        if text is not None:
            cmdline = " ".join(text.split())
            if not cmdline:
                problems.append(f"{vm_dir / 'cmdline'}: is empty")

    memory = DEFAULT_MEMORY
    if (vm_dir / "memory").exists():
        text = _read_small(vm_dir / "memory", problems)
        if text is not None:
            try:
                memory = parse_memory(text)
            except ValueError as e:
                problems.append(f"{vm_dir / 'memory'}: {e}")

    cpus = DEFAULT_CPUS
    if (vm_dir / "cpus").exists():
        text = _read_small(vm_dir / "cpus", problems)
        if text is not None:
            if not text.isdigit() or not 1 <= int(text) <= MAX_CPUS:
                problems.append(f"{vm_dir / 'cpus'}: {text!r} is not a number of vCPUs from 1 to {MAX_CPUS}")
            else:
                cpus = int(text)

    providers: list[str] = []
    net_dir = vm_dir / "providers" / "net"
    if net_dir.is_dir():
        for entry in sorted(net_dir.iterdir()):
            if (p := name_problem(entry.name)) is not None:
                problems.append(f"{entry}: {p}")
            else:
                providers.append(entry.name)
    elif net_dir.exists():
        problems.append(f"{net_dir}: is not a directory")

    pol: Path | None = None
    try:
        pol = policy_path(vm_dir)
    except ValueError as e:  # policy.PolicyError: two policy files
        problems.append(str(e))
    if problems:
        raise VmDefError(name, problems)
    return VmDef(name=name, path=vm_dir, kernel=kernel, disks=disks, cmdline=cmdline, memory=memory,
                 cpus=cpus, initramfs=initramfs if has_initramfs else None,
                 net_providers=tuple(providers), policy=pol)


def names(vms_dir: Path) -> list[str]:
    """Names of the VM directories under ``vms_dir`` (hidden entries skipped), sorted."""
    try:
        return sorted(e.name for e in Path(vms_dir).iterdir() if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []
