"""Guest image tooling: cpio writer, module ordering, vmlinux extraction, init, runner,
virtio port lookup, the s6 guest service, and the image build (fake and real kernel)."""

from __future__ import annotations

import base64
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import time
from io import BytesIO
from pathlib import Path

import pytest

from wlproxy.vm import guestinit, guestrun, image
from wlproxy.vm.cpio import CpioWriter
from wlproxy.vm.kmod import ModuleError, ModuleIndex, modinfo, module_name
from wlproxy.io.virtio_port import PortNotFound, find_virtio_port, wait_virtio_port

BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")
SERVICE_DIR = Path(__file__).resolve().parents[2] / "wlproxy" / "vm" / "guest-services" / "wlproxy-guest"


# -- cpio ------------------------------------------------------------------------------------------

def parse_newc(data: bytes) -> list[dict]:
    """A minimal independent newc reader for checking the writer."""
    entries, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, size = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        assert data[pos + 110 + namesize - 1] == 0
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size + (-size % 4)
        entries.append({"name": name, "ino": f[0], "mode": f[1], "nlink": f[4], "mtime": f[5],
                        "rdev": (f[9], f[10]), "data": body})
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries


def sample_archive() -> bytes:
    buf = BytesIO()
    with CpioWriter(buf) as w:
        w.add_dir("bin")
        w.add_file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
        w.add_file("odd", b"12345")  # size not a multiple of 4
        w.add_symlink("bin/sh", "hello")
        w.add_device("console", "c", 5, 1)
    return buf.getvalue()


def test_cpio_layout_and_alignment():
    data = sample_archive()
    entries = parse_newc(data)
    names = [e["name"] for e in entries]
    assert names == ["bin", "bin/hello", "odd", "bin/sh", "console", "TRAILER!!!"]
    by = {e["name"]: e for e in entries}
    assert stat.S_ISDIR(by["bin"]["mode"]) and by["bin"]["nlink"] == 2
    assert by["bin/hello"]["mode"] == stat.S_IFREG | 0o755 and by["bin/hello"]["data"].startswith(b"#!")
    assert by["odd"]["data"] == b"12345"
    assert stat.S_ISLNK(by["bin/sh"]["mode"]) and by["bin/sh"]["data"] == b"hello"
    assert stat.S_ISCHR(by["console"]["mode"]) and by["console"]["rdev"] == (5, 1)
    assert len({e["ino"] for e in entries[:-1]}) == 5
    assert data == sample_archive(), "same entries must give the same bytes"
    assert len(data) % 4 == 0


def test_cpio_rejects_bad_names_and_writes_after_close():
    w = CpioWriter(BytesIO())
    w.add_file("a", b"")
    for bad in ["a", "/a/", "", "x/../y"]:
        with pytest.raises(ValueError):
            w.add_file(bad, b"")
    w.close()
    with pytest.raises(ValueError):
        w.add_file("b", b"")


@needs_busybox
def test_cpio_extracts_with_busybox(tmp_path):
    (tmp_path / "a.cpio").write_bytes(sample_archive())
    listing = subprocess.run([BUSYBOX, "cpio", "-t"], stdin=open(tmp_path / "a.cpio", "rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == ["bin", "bin/hello", "odd", "bin/sh", "console"]
    out = tmp_path / "x"
    out.mkdir()
    # device nodes need privileges; extract everything else
    subprocess.run([BUSYBOX, "cpio", "-i", "-d", "bin", "bin/hello", "odd", "bin/sh"],
                   stdin=open(tmp_path / "a.cpio", "rb"), cwd=out, check=True, capture_output=True)
    assert (out / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(out / "bin/hello", os.X_OK)
    assert (out / "odd").read_bytes() == b"12345"
    assert os.readlink(out / "bin/sh") == "hello"


# -- kernel modules --------------------------------------------------------------------------------

def fake_elf(sections: dict[str, bytes]) -> bytes:
    """A 64-bit little-endian ELF file holding only the given sections."""
    names = [""] + list(sections) + [".shstrtab"]
    shstrtab = b"".join(n.encode() + b"\0" for n in names)
    bodies = [b""] + list(sections.values()) + [shstrtab]
    blob, offsets, pos = b"", [], 64
    for body in bodies:
        offsets.append(pos)
        blob += body
        pos += len(body)
    pad = -pos % 8
    shoff = pos + pad
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(names), len(names) - 1)
    shdrs, name_off = b"", 0
    for i, (name, body) in enumerate(zip(names, bodies)):
        shdrs += struct.pack("<IIQQQQIIQQ", name_off if i else 0, 0 if i == 0 else 1, 0, 0,
                             offsets[i], len(body), 0, 0, 1, 0)
        name_off += len(name) + 1
    return header + blob + b"\0" * pad + shdrs


def fake_module(name: str, depends: list[str]) -> bytes:
    info = f"license=GPL\0depends={','.join(depends)}\0name={name}\0vermagic=6.1.0 SMP\0".encode()
    return fake_elf({".text": b"\x90" * 16, ".modinfo": info})


def make_module_tree(root: Path, deps: dict[str, list[str]], builtin: list[str] = (),
                     compress: set[str] = frozenset()) -> Path:
    for name, d in deps.items():
        sub = root / "kernel" / ("fs" if "9p" in name else "drivers")
        sub.mkdir(parents=True, exist_ok=True)
        data = fake_module(name, d)
        if name in compress:
            (sub / f"{name.replace('_', '-')}.ko.xz").write_bytes(lzma.compress(data))
        else:
            (sub / f"{name}.ko").write_bytes(data)
    (root / "modules.builtin").write_text("".join(f"kernel/x/{b}.ko\n" for b in builtin))
    return root


FAKE_DEPS = {
    "virtio_ring": [], "virtio": [], "virtio_pci_modern_dev": [],
    "virtio_pci": ["virtio_ring", "virtio", "virtio_pci_modern_dev"],
    "virtio_mmio": ["virtio_ring", "virtio"], "virtio_console": ["virtio_ring", "virtio"],
    "9pnet": [], "9pnet_virtio": ["9pnet", "virtio_ring", "virtio"], "netfs": [],
    "9p": ["9pnet", "netfs", "crc32c_generic"], "button": [], "evdev": [],
}


def assert_dependency_order(order: list[str], deps: dict[str, list[str]]) -> None:
    for mod in order:
        for dep in deps.get(mod, []):
            if dep in order:
                assert order.index(dep) < order.index(mod), f"{dep} must load before {mod}"


def test_modinfo_and_names():
    info = modinfo(fake_module("9p", ["9pnet", "netfs"]))
    assert info["depends"] == ["9pnet,netfs"] and info["name"] == ["9p"]
    assert module_name("kernel/fs/9p/9p.ko") == "9p"
    assert module_name("virtio-pci.ko.xz") == "virtio_pci"


def test_load_order_from_modinfo(tmp_path):
    root = make_module_tree(tmp_path, FAKE_DEPS, builtin=["crc32c_generic"], compress={"virtio_pci"})
    index = ModuleIndex.load(root)
    order = index.load_order(image.MODULES)
    assert set(order) == set(FAKE_DEPS) - {"virtio_pci_legacy_dev"}
    assert len(order) == len(set(order))
    assert_dependency_order(order, FAKE_DEPS)
    assert order[-3:] == ["9p", "button", "evdev"]  # asked for last, needed by nothing


def test_load_order_prefers_modules_dep(tmp_path):
    root = make_module_tree(tmp_path, {"a": [], "b": [], "c": []})
    (root / "modules.dep").write_text("kernel/drivers/c.ko: kernel/drivers/b.ko kernel/drivers/a.ko\n"
                                      "kernel/drivers/b.ko: kernel/drivers/a.ko\nkernel/drivers/a.ko:\n")
    assert ModuleIndex.load(root).load_order(["c"]) == ["a", "b", "c"]


def test_load_order_errors(tmp_path):
    root = make_module_tree(tmp_path, {"a": ["b"], "b": ["a"], "c": ["missing"]})
    index = ModuleIndex.load(root)
    with pytest.raises(ModuleError, match="cycle"):
        index.load_order(["a"])
    with pytest.raises(ModuleError, match="missing"):
        index.load_order(["c"])


# -- vmlinux ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [lambda d: lzma.compress(d, lzma.FORMAT_XZ),
                                      lambda d: lzma.compress(d, lzma.FORMAT_ALONE)], ids=["xz", "lzma"])
def test_extract_vmlinux(compress):
    kernel = fake_elf({".text": os.urandom(5000)})
    decoy = b"\xfd7zXZ\x00garbage"  # a false xz magic before the real stream
    bzimage = b"MZ" + b"\0" * 500 + decoy + compress(kernel) + b"\0" * 100
    assert image.extract_vmlinux(bzimage) == kernel


def test_extract_vmlinux_without_kernel():
    with pytest.raises(image.ImageError, match="no xz"):
        image.extract_vmlinux(b"MZ" + lzma.compress(b"not an elf"))


# -- init script and runner ------------------------------------------------------------------------

@needs_busybox
def test_init_script_is_valid_shell():
    text = guestinit.render_init()
    assert "@" not in text.replace(guestinit.EXIT_MARKER, "")
    assert text.startswith("#!/bin/busybox sh\n")
    assert "mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt" in text
    subprocess.run([BUSYBOX, "sh", "-n", "-c", text], check=True)


def test_exit_marker_parsing():
    log = "boot\nWLPROXY-GUEST-EXIT status=3\n[ 4.6] reboot: Power down\n"
    assert guestinit.parse_exit_status(log) == 3
    assert guestinit.parse_exit_status("booting...\n") is None


def test_spec_round_trip_through_cmdline():
    argv = ["/usr/bin/python3", "-c", "print('a b \"c\" $HOME; rm -rf /')"]
    words = guestinit.guest_cmdline(argv, env={"X": "1 2"}, guest_argv=["/bin/wlproxy", "guest"])
    assert words.startswith("quiet wlproxy.run=")
    assert len(words.split()) == 2, "the spec must be a single word without spaces"
    spec = guestrun.decode_spec("console=ttyS0 " + words + " panic=-1")
    assert spec["argv"] == argv and spec["env"] == {"X": "1 2"}
    assert spec["guest"]["argv"] == ["/bin/wlproxy", "guest"] and spec["guest"]["display"] == "wayland-0"
    assert guestrun.decode_spec("console=ttyS0") is None


@pytest.mark.parametrize("spec", [{}, {"argv": []}, {"argv": "ls"}, {"argv": ["ls", 1]},
                                  {"argv": ["ls"], "env": {"A": 1}},
                                  {"argv": ["ls"], "guest": {"argv": ["g"], "display": "../x"}}])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ValueError):
        guestrun.check_spec(spec)


def test_too_long_command_is_refused():
    with pytest.raises(ValueError, match="too long"):
        guestinit.guest_cmdline(["echo", base64.b64encode(os.urandom(1600)).decode()])


def test_runner_starts_guest_half_first(tmp_path):
    """The runner waits for the guest half's socket, sets WAYLAND_DISPLAY, stops it afterwards."""
    guest = textwrap.dedent("""
        import os, signal, socket, sys, time
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(os.environ["XDG_RUNTIME_DIR"], "wayland-t"))
        time.sleep(0.3)  # bound but not yet listening: the runner must keep waiting
        s.listen(4)
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        c = s.accept()[0]  # the first connection must be the client's, not a readiness probe
        c.sendall(b"first")
        c.recv(1)
    """)
    client = textwrap.dedent("""
        import os, socket, sys
        assert os.environ["WAYLAND_DISPLAY"] == "wayland-t" and os.environ["FOO"] == "bar"
        c = socket.socket(socket.AF_UNIX)
        c.connect(os.path.join(os.environ["XDG_RUNTIME_DIR"], "wayland-t"))
        assert c.recv(5) == b"first"
        sys.exit(5)
    """)
    spec = {"argv": [sys.executable, "-c", client], "env": {"FOO": "bar"},
            "guest": {"argv": [sys.executable, "-c", guest], "display": "wayland-t", "timeout": 10}}
    base = {**guestrun.BASE_ENV, "XDG_RUNTIME_DIR": str(tmp_path / "rt")}
    assert guestrun.run(spec, base, power_button=str(tmp_path / "no-input")) == 5
    assert stat.S_IMODE((tmp_path / "rt").stat().st_mode) == 0o700


def test_runner_reports_guest_half_failure(tmp_path):
    spec = {"argv": ["true"], "guest": {"argv": [sys.executable, "-c", "raise SystemExit(4)"], "timeout": 10}}
    base = {**guestrun.BASE_ENV, "XDG_RUNTIME_DIR": str(tmp_path)}
    assert guestrun.run(spec, base, power_button=str(tmp_path / "no-input")) == 126
    assert guestrun.run({"argv": [str(tmp_path / "nonexistent")]}, base, str(tmp_path / "no-input")) == 127


def test_unix_listening_reads_proc_net_unix(tmp_path):
    table = tmp_path / "unix"
    table.write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/user/0/wayland-0\n"
        "0000000000000000: 00000002 00000000 00000000 0001 01 101 /run/user/0/wayland-1\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 102 wayland-2\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03 103\n")
    assert guestrun.unix_listening("/run/user/0/wayland-0", str(table))
    assert not guestrun.unix_listening("/run/user/0/wayland-1", str(table)), "bound, not listening"
    assert guestrun.unix_listening("/run/user/0/wayland-2", str(table)), "bound by a relative path"
    assert not guestrun.unix_listening("/run/user/0/wayland-3", str(table))
    assert guestrun.unix_listening("/x", str(tmp_path / "absent")) is None


def test_power_button_stops_the_command(tmp_path):
    """KEY_POWER on an input device (here a FIFO) terminates the running command: status 128+15."""
    fifo = tmp_path / "event0"
    os.mkfifo(fifo)
    spec = {"argv": [sys.executable, "-c", "import time; open('%s', 'w').close(); time.sleep(60)"
                     % (tmp_path / "started")]}
    base = {**guestrun.BASE_ENV, "XDG_RUNTIME_DIR": str(tmp_path)}
    import threading

    def press() -> None:
        with open(fifo, "wb") as f:  # opens once the runner has opened the FIFO for reading
            for _ in range(200):
                if (tmp_path / "started").exists():
                    break
                time.sleep(0.05)
            f.write(guestrun.INPUT_EVENT.pack(0, 0, 4, 4, 0))  # EV_MSC noise
            f.write(guestrun.INPUT_EVENT.pack(0, 0, guestrun.EV_KEY, guestrun.KEY_POWER, 1))
    t = threading.Thread(target=press)
    t.start()
    t0 = time.monotonic()
    assert guestrun.run(spec, base, power_button=str(fifo)) == 128 + 15
    assert time.monotonic() - t0 < 30
    t.join()


# -- virtio port lookup ----------------------------------------------------------------------------

def fake_ports(tmp_path: Path, ports: dict[str, str], nodes: list[str] | None = None) -> tuple[Path, Path]:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    sysfs.mkdir()
    dev.mkdir()
    for vport, name in ports.items():
        (sysfs / vport).mkdir()
        (sysfs / vport / "name").write_text(name + "\n" if name else "")
    for node in ports if nodes is None else nodes:
        (dev / node).touch()
    return sysfs, dev


def test_find_virtio_port_by_sysfs_name(tmp_path):
    sysfs, dev = fake_ports(tmp_path, {"vport0p0": "", "vport1p1": "org.qemu.guest_agent.0",
                                       "vport1p2": "wlproxy.0"})
    assert find_virtio_port("wlproxy.0", sys_root=sysfs, dev_root=dev) == dev / "vport1p2"


def test_find_virtio_port_prefers_udev_link(tmp_path):
    sysfs, dev = fake_ports(tmp_path, {"vport1p1": "wlproxy.0"})
    (dev / "virtio-ports").mkdir()
    (dev / "virtio-ports" / "wlproxy.0").symlink_to("../vport1p1")
    assert find_virtio_port("wlproxy.0", sys_root=sysfs, dev_root=dev) == dev / "virtio-ports" / "wlproxy.0"


def test_find_virtio_port_errors(tmp_path):
    sysfs, dev = fake_ports(tmp_path, {"vport1p1": "other.0", "vport1p2": "wlproxy.0"}, nodes=["vport1p1"])
    with pytest.raises(PortNotFound, match="does not exist"):
        find_virtio_port("wlproxy.0", sys_root=sysfs, dev_root=dev)
    with pytest.raises(PortNotFound, match=r"ports found: other\.0, wlproxy\.0"):
        find_virtio_port("nope", sys_root=sysfs, dev_root=dev)
    with pytest.raises(PortNotFound, match="none"):
        find_virtio_port("x", sys_root=tmp_path / "absent", dev_root=dev)
    for bad in ["", "a/b", ".."]:
        with pytest.raises(ValueError):
            find_virtio_port(bad, sys_root=sysfs, dev_root=dev)
    with pytest.raises(PortNotFound):
        wait_virtio_port("nope", 0.05, sys_root=sysfs, dev_root=dev)


# -- the s6 guest service --------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("s6-ipcserver-socketbinder") is None, reason="s6 not installed")
def test_guest_service_passes_listening_socket(tmp_path):
    """The run script binds the Wayland socket and hands it over as fd 3 with LISTEN_FDS."""
    assert (SERVICE_DIR / "type").read_text().strip() == "longrun"
    fake = tmp_path / "fake-wlproxy"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import fcntl, json, os, socket, sys
        s = socket.socket(fileno=3)
        print(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid(), "env": dict(os.environ),
              "name": s.getsockname(), "listening": s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
              "nonblock": bool(fcntl.fcntl(3, fcntl.F_GETFL) & os.O_NONBLOCK)}}))
    """))
    fake.chmod(0o755)
    service = tmp_path / "svc"
    shutil.copytree(SERVICE_DIR, service)
    (service / "env").mkdir()
    (service / "env" / "WLPROXY_LINK").write_text("virtio-port:test.0\n")
    runtime = tmp_path / "rt"
    env = {"PATH": os.environ["PATH"], "XDG_RUNTIME_DIR": str(runtime), "WLPROXY": str(fake),
           "WAYLAND_DISPLAY": "wayland-7"}
    out = subprocess.run(["./run"], cwd=service, env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout)
    assert got["argv"] == ["guest", "--link", "virtio-port:test.0"]
    assert got["env"]["LISTEN_FDS"] == "1" and got["env"]["LISTEN_PID"] == str(got["pid"])
    assert got["env"]["LISTEN_FDNAMES"] == "wayland"
    assert got["name"] == str(runtime / "wayland-7") and got["listening"] == 1
    assert not got["nonblock"]
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700


# -- the image build -------------------------------------------------------------------------------

def make_fake_deb(tmp_path: Path, version: str = "6.1.999-1", extra: bytes = b"") -> tuple[Path, bytes]:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    kver = "6.1.0-99-amd64"
    pkg = tmp_path / f"pkg-{version}"
    kernel = fake_elf({".text": b"kernel" * 100 + extra})
    (pkg / "boot").mkdir(parents=True)
    (pkg / "boot" / f"vmlinuz-{kver}").write_bytes(b"MZ" + b"\0" * 1000 + lzma.compress(kernel))
    make_module_tree(pkg / "lib" / "modules" / kver, FAKE_DEPS, builtin=["crc32c_generic"])
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{kver}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: test <test@example.org>\nDescription: fake kernel\n")
    deb = tmp_path / f"linux-image-{kver}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(pkg), str(deb)],
                   check=True, capture_output=True)
    return deb, kernel


@needs_busybox
def test_build_image_from_fake_package_is_cached(tmp_path):
    deb, kernel = make_fake_deb(tmp_path)
    cache = tmp_path / "cache"
    img = image.build_image(cache, deb=deb)
    assert img.vmlinux.read_bytes() == kernel
    assert img.kernel_version == "6.1.0-99-amd64"
    entries = {e["name"]: e for e in parse_newc(img.initramfs.read_bytes())}
    assert entries["init"]["data"].decode() == guestinit.render_init()
    assert entries["init"]["mode"] & 0o777 == 0o755
    assert entries["bin/busybox"]["data"] == image.find_busybox().read_bytes()
    assert stat.S_ISCHR(entries["dev/console"]["mode"])
    order = entries["lib/modules/load-order"]["data"].decode().split()
    assert order == list(img.modules)
    assert_dependency_order(order, FAKE_DEPS)
    assert all(f"lib/modules/{m}.ko" in entries for m in order)
    assert entries["wlproxy-run.py"]["data"] == Path(guestrun.__file__).read_bytes()

    stamp = (img.directory / "manifest.json").stat().st_mtime_ns
    again = image.build_image(cache, deb=deb)
    assert again == img and (img.directory / "manifest.json").stat().st_mtime_ns == stamp
    forced = image.build_image(cache, deb=deb, force=True)
    assert forced.directory == img.directory
    assert (img.directory / "manifest.json").stat().st_mtime_ns != stamp

    deb2, kernel2 = make_fake_deb(tmp_path, "6.1.1000-1", extra=b"new")
    newer = image.build_image(cache, deb=deb2)
    assert newer.directory != img.directory and newer.vmlinux.read_bytes() == kernel2
    assert not img.directory.exists(), "the outdated image is pruned"
    assert not list((cache / "images").glob(".unpack-*"))


def test_cli_hooks(tmp_path, capsys, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    image.add_image_arguments(parser)
    args = parser.parse_args(["--cache-dir", str(tmp_path), "--kernel-deb", str(tmp_path / "none.deb")])
    assert args.cache_dir == tmp_path and not args.force
    monkeypatch.setattr(image, "build_image", lambda *a, **k: (_ for _ in ()).throw(image.ImageError("boom")))
    assert image.run_image(args) == 1
    assert "boom" in capsys.readouterr().err


def test_real_image():
    """The real kernel package: built once, then reused from the XDG cache."""
    try:
        img = image.build_image()
    except image.KernelDownloadError as e:
        pytest.skip(f"cannot download the kernel package: {e}")
    assert img.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert img.kernel_version.startswith("6.1.") and img.kernel_version.endswith("-amd64")
    assert "-cloud-" not in img.kernel_package
    for needed in image.MODULES:
        assert needed in img.modules
    assert image.build_image().directory == img.directory
