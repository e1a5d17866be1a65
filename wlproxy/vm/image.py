"""Guest image tooling (``wlproxy vm image build``): a kernel and an initramfs.

The kernel is the distribution's generic kernel package, whatever its version
(Debian's ``linux-image-VERSION-ARCH``, Ubuntu's ``linux-image-VERSION-generic``;
Debian's ``-cloud-`` flavour lacks 9p), fetched with ``apt-get download`` and unpacked with
``dpkg -x``, installing nothing. The boot file is the uncompressed ``vmlinux``
taken out of ``vmlinuz``. The initramfs holds busybox-static, the virtio,
9p and virtio-console modules, :mod:`wlproxy.vm.guestinit`'s ``/init`` and
:mod:`wlproxy.vm.guestrun`. Downloads and images are cached under
``$XDG_CACHE_HOME/wlproxy/guest``; an image is rebuilt when an input changes.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Iterator

from wlproxy.vm import guestinit
from wlproxy.vm.cpio import CpioWriter
from wlproxy.vm.kmod import ModuleError, ModuleIndex, read_module

log = logging.getLogger("hostvm.image")

FORMAT = 1  # bump when the image layout changes, to force rebuilds
MODULES = ["virtio_pci", "virtio_mmio", "virtio_console", "9pnet_virtio", "9p",
           "button", "evdev"]  # the ACPI power button, seen by the runner through evdev
# the metapackages that point at a distribution's generic kernel, tried in order ({arch}: dpkg's)
KERNEL_METAPACKAGES = ("linux-image-{arch}", "linux-image-generic")


def deb_arch() -> str:
    """dpkg's name for this machine's architecture (amd64 when dpkg cannot say)."""
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip() or "amd64"
    except (OSError, subprocess.CalledProcessError):
        return "amd64"


def kernel_re(arch: str | None = None) -> re.Pattern[str]:
    """A generic versioned kernel package: 6.1.0-28-amd64, 6.12.12+bpo-amd64, 6.8.0-31-generic
    (not -cloud-, -rt-, -dbg or unsigned ones)."""
    a = re.escape(arch or deb_arch())
    return re.compile(rf"^linux-image-\d+\.\d+(?:\.\d+)*(?:-\d+)?(?:\+\w+)?-(?:{a}|generic)$")
BUSYBOX_CANDIDATES = [Path("/bin/busybox"), Path("/usr/bin/busybox")]
RUNNER_SOURCE = Path(__file__).with_name("guestrun.py")


class ImageError(Exception):
    """The guest image cannot be built; the message says why."""


class KernelDownloadError(ImageError):
    """apt cannot provide the kernel package (no apt, no network, no Debian source)."""


@dataclass(frozen=True)
class GuestImage:
    """A built guest image: boot ``vmlinux`` with ``initramfs``."""

    directory: Path
    vmlinux: Path
    initramfs: Path
    kernel_version: str
    kernel_package: str
    modules: tuple[str, ...]

    @classmethod
    def from_manifest(cls, directory: Path) -> GuestImage:
        m = json.loads((directory / "manifest.json").read_text())
        return cls(directory, directory / "vmlinux", directory / "initramfs.cpio", m["kernel_version"],
                   m["kernel_package"], tuple(m["modules"]))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/wlproxy/guest``."""
    from xdg import BaseDirectory

    return Path(BaseDirectory.xdg_cache_home) / "wlproxy" / "guest"


# -- kernel package ---------------------------------------------------------------------------------

def _run(argv: list[str], **kw: object) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=True, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as e:
        raise ImageError(f"{argv[0]} not found; guest images need a Debian-like host") from e
    except subprocess.CalledProcessError as e:
        raise ImageError(f"{' '.join(argv)} failed: {e.stderr.strip() or e.returncode}") from e
    return res.stdout


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def pick_kernel_package() -> tuple[str, str]:
    """(package, version) of the generic kernel apt offers.

    The dependency of the distribution's kernel metapackage (:data:`KERNEL_METAPACKAGES`)
    is preferred; without one, the newest generic versioned kernel package is taken.
    """
    arch = deb_arch()
    pattern = kernel_re(arch)
    names: list[str] = []
    for meta in KERNEL_METAPACKAGES:
        try:
            out = _run(["apt-cache", "depends", meta.format(arch=arch)])
        except ImageError:
            continue
        names = [n for line in out.splitlines() if line.strip().startswith("Depends:")
                 for n in [line.strip().split(":", 1)[1].strip()] if pattern.match(n)]
        if names:
            break
    if not names:
        found = _run(["apt-cache", "search", "--names-only", r"^linux-image-[0-9]"])
        names = sorted((line.split()[0] for line in found.splitlines() if line.split() and
                        pattern.match(line.split()[0])), key=_version_key, reverse=True)
    for name in names:
        for line in _run(["apt-cache", "policy", name]).splitlines():
            line = line.strip()
            if line.startswith("Candidate:") and line.split()[1] != "(none)":
                return name, line.split()[1]
    raise ImageError(f"apt offers no generic kernel package (linux-image-VERSION-{arch} or "
                     "linux-image-VERSION-generic; is a package source configured?)")


APT_STATE_FILES = [Path("/var/lib/apt/lists"), Path("/var/cache/apt/pkgcache.bin"), Path("/etc/apt/sources.list"),
                   Path("/etc/apt/sources.list.d")]


def _apt_state() -> list[int]:
    """Modification times that change when apt's package index does."""
    return [p.stat().st_mtime_ns if p.exists() else 0 for p in APT_STATE_FILES]


def resolve_kernel_package(deb_dir: Path) -> tuple[str, str]:
    """:func:`pick_kernel_package`, remembered in ``deb_dir`` until apt's index changes."""
    memo = deb_dir / "resolved.json"
    state = _apt_state()
    try:
        saved = json.loads(memo.read_text())
        if saved["apt_state"] == state:
            return saved["package"], saved["version"]
    except (OSError, ValueError, KeyError):
        pass
    name, version = pick_kernel_package()
    memo.write_text(json.dumps({"apt_state": state, "package": name, "version": version}) + "\n")
    return name, version


def fetch_kernel_deb(deb_dir: Path) -> Path:
    """The kernel package's .deb in ``deb_dir``, downloaded with ``apt-get download`` if needed.

    Without apt or network, the newest .deb already cached is used.
    """
    deb_dir.mkdir(parents=True, exist_ok=True)
    arch = deb_arch()
    pattern = kernel_re(arch)
    cached = sorted((p for p in deb_dir.glob("linux-image-*_*.deb") if pattern.match(p.name.split("_")[0])),
                    key=lambda p: _version_key(p.name))
    try:
        name, version = resolve_kernel_package(deb_dir)
    except ImageError as e:
        if cached:
            log.warning("cannot ask apt for the kernel package (%s); using cached %s", e, cached[-1].name)
            return cached[-1]
        raise KernelDownloadError(str(e)) from e
    want = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
    if (deb_dir / want).exists():
        return deb_dir / want
    log.info("downloading %s %s", name, version)
    with tempfile.TemporaryDirectory(dir=deb_dir, prefix=".download-") as tmp:
        try:
            _run(["apt-get", "download", f"{name}={version}"], cwd=tmp)
        except ImageError as e:
            if cached:
                log.warning("cannot download %s; using cached %s", name, cached[-1].name)
                return cached[-1]
            raise KernelDownloadError(str(e)) from e
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise ImageError(f"apt-get download {name} produced {len(got)} files")
        os.replace(got[0], deb_dir / want)
    for old in cached:
        if old.name != want:
            old.unlink(missing_ok=True)
    return deb_dir / want


# -- vmlinux ----------------------------------------------------------------------------------------

_STREAMS = [  # magic, decompressor factory
    (b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
    (b"\x5d\x00\x00", lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE)),
    (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
]


def extract_vmlinux(vmlinuz: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage compressed with xz, lzma or gzip."""
    for magic, make in _STREAMS:
        pos = vmlinuz.find(magic)
        while pos >= 0:
            try:
                out = make().decompress(vmlinuz[pos:])
            except (lzma.LZMAError, zlib.error, EOFError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            pos = vmlinuz.find(magic, pos + 1)
    raise ImageError("no xz, lzma or gzip stream holding an ELF kernel found in vmlinuz")


# -- busybox ----------------------------------------------------------------------------------------

def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    return all(int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little") != 3
               for i in range(phnum))


def find_busybox() -> Path:
    """A statically linked busybox (Debian's ``busybox-static``), or ``$WLPROXY_GUEST_BUSYBOX``."""
    env = os.environ.get("WLPROXY_GUEST_BUSYBOX")
    candidates = [Path(env)] if env else BUSYBOX_CANDIDATES
    for path in candidates:
        if path.is_file() and is_static_elf(path):
            return path
    raise ImageError("no statically linked busybox found (install busybox-static)")


# -- initramfs --------------------------------------------------------------------------------------

def build_initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """The initramfs archive: busybox, ``/init``, the runner and modules in load order."""
    buf = BytesIO()
    with CpioWriter(buf) as cpio:
        for d in ["bin", "dev", "proc", "sys", "mnt", "run", "tmp", "lib", "lib/modules"]:
            cpio.add_dir(d)
        cpio.add_device("dev/console", "c", 5, 1)
        cpio.add_device("dev/null", "c", 1, 3, 0o666)
        cpio.add_file("bin/busybox", busybox, 0o755)
        cpio.add_symlink("bin/sh", "busybox")
        cpio.add_file("init", guestinit.render_init().encode(), 0o755)
        cpio.add_file(guestinit.RUNNER_PATH.lstrip("/"), RUNNER_SOURCE.read_bytes(), 0o644)
        for name, data in modules:
            cpio.add_file(f"lib/modules/{name}.ko", data)
        order = "".join(f"{name}\n" for name, _ in modules)
        cpio.add_file(guestinit.LOAD_ORDER_PATH.lstrip("/"), order.encode())
    return buf.getvalue()


def image_key(deb: Path, busybox: Path) -> str:
    """A digest of every input of the image; a new one means a rebuild."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "deb": deb.name, "deb_size": deb.stat().st_size,
                         "modules": MODULES}).encode())
    for data in (busybox.read_bytes(), guestinit.render_init().encode(), RUNNER_SOURCE.read_bytes(),
                 Path(__file__).read_bytes()):
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(deb: Path, busybox: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".unpack-") as tmp:
        root = Path(tmp)
        log.info("unpacking %s", deb.name)
        _run(["dpkg", "-x", str(deb), str(root / "pkg")])
        vmlinuz = sorted((root / "pkg" / "boot").glob("vmlinuz-*"))
        moddirs = sorted((root / "pkg" / "lib" / "modules").glob("*"))
        if len(vmlinuz) != 1 or len(moddirs) != 1:
            raise ImageError(f"{deb.name} does not hold exactly one vmlinuz and one module tree")
        version = moddirs[0].name
        try:
            index = ModuleIndex.load(moddirs[0])
            order = index.load_order(MODULES)
            modules = [(name, read_module(index.paths[name])) for name in order]
        except ModuleError as e:
            raise ImageError(f"{deb.name}: {e}") from e
        stage = root / "image"
        stage.mkdir()
        (stage / "vmlinux").write_bytes(extract_vmlinux(vmlinuz[0].read_bytes()))
        (stage / "initramfs.cpio").write_bytes(build_initramfs(busybox.read_bytes(), modules))
        manifest = {"kernel_version": version, "kernel_package": deb.name, "modules": order,
                    "busybox": str(busybox), "format": FORMAT}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)


def build_image(cache_dir: Path | None = None, *, force: bool = False, deb: Path | None = None) -> GuestImage:
    """Build (or reuse from the cache) the guest image and return its paths.

    ``deb`` uses that kernel package instead of asking apt. ``force`` rebuilds
    even when a cached image matches. Raises :class:`ImageError`.
    """
    cache_dir = cache_dir or default_cache_dir()
    with _locked(cache_dir):
        deb = deb or fetch_kernel_deb(cache_dir / "debs")
        busybox = find_busybox()
        images = cache_dir / "images"
        images.mkdir(exist_ok=True)
        out = images / image_key(deb, busybox)
        if force or not (out / "manifest.json").exists():
            log.info("building guest image in %s", out)
            _build(deb, busybox, out)
            for old in images.iterdir():
                if old != out and not old.name.startswith("."):
                    shutil.rmtree(old, ignore_errors=True)
        return GuestImage.from_manifest(out)


# -- CLI hooks (wired into ``wlproxy vm image build`` by wlproxy.vm.cli) -------------------------------

def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wlproxy vm image build``."""
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help="where downloads and images are kept (default: $XDG_CACHE_HOME/wlproxy/guest)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached image matches")
    parser.add_argument("--kernel-deb", type=Path, default=None, metavar="DEB",
                        help="use this kernel package (.deb) instead of downloading one")


def run_image(args: argparse.Namespace) -> int:
    """Build the image and print its paths; errors are printed, status 1."""
    try:
        image = build_image(args.cache_dir, force=args.force, deb=args.kernel_deb)
    except ImageError as e:
        print(f"wlproxy vm image build: error: {e}", file=sys.stderr)
        return 1
    print(f"kernel:    {image.vmlinux}  ({image.kernel_version})")
    print(f"initramfs: {image.initramfs}  ({len(image.modules)} modules)")
    return 0
