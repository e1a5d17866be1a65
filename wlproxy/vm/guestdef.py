"""Write a VM definition directory that boots the guest image and runs one command.

The result follows :mod:`wlproxy.vm.vmdef`'s layout, so ``wlproxy vm start NAME
--hypervisor qemu`` can boot it: ``vmlinux`` and ``initramfs`` (symlinks to the
cached image), ``cmdline`` (what the guest runs), ``memory``, ``share-root``
(the host root, read-only over 9p: the guest runs programs from it) and an
empty placeholder disk ``blk/empty.img``, since a definition needs one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from wlproxy.vm.guestinit import guest_cmdline
from wlproxy.vm.image import GuestImage

PLACEHOLDER_DISK_SIZE = 1 << 20


def guest_half_argv(link: str = "virtio-port:wlproxy.0", extra: list[str] | None = None) -> list[str]:
    """``wlproxy guest`` run by this host's Python, which the guest sees at the same path."""
    return [sys.executable, "-m", "wlproxy", "guest", "--link", link, *(extra or [])]


def wlproxy_pythonpath() -> str:
    """The directory holding the ``wlproxy`` package, for the guest's PYTHONPATH."""
    import wlproxy

    return str(Path(wlproxy.__file__).resolve().parent.parent)


def write_vm_definition(vm_dir: Path, image: GuestImage, argv: list[str], *,
                        env: dict[str, str] | None = None, with_guest_half: bool = True,
                        guest_args: list[str] | None = None, memory: str = "512M",
                        share_root: Path = Path("/")) -> Path:
    """Create (or refresh) ``vm_dir`` so that the VM runs ``argv`` and powers off.

    With ``with_guest_half`` the guest half (``wlproxy guest --link
    virtio-port:wlproxy.0``) starts first and ``argv`` gets ``WAYLAND_DISPLAY``.
    """
    vm_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (("vmlinux", image.vmlinux), ("initramfs", image.initramfs)):
        link = vm_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    pypath = {"PYTHONPATH": wlproxy_pythonpath()}
    cmdline = guest_cmdline(argv, env={**pypath, **(env or {})},
                            guest_argv=guest_half_argv(extra=guest_args) if with_guest_half else None,
                            guest_env=pypath)
    (vm_dir / "cmdline").write_text(cmdline + "\n")
    (vm_dir / "memory").write_text(memory + "\n")
    (vm_dir / "share-root").write_text(f"{share_root}\n")
    (vm_dir / "blk").mkdir(exist_ok=True)
    disk = vm_dir / "blk" / "empty.img"
    if not disk.exists():
        with open(disk, "wb") as f:
            os.truncate(f.fileno(), PLACEHOLDER_DISK_SIZE)
    return vm_dir
