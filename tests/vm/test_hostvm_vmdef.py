"""VM definition directories: what is accepted, and bad definitions refused naming file and problem."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hostvm_common import make_vm, own_tmp  # noqa: E402,F401

from wlproxy.vm import vmdef  # noqa: E402


def test_minimal_vm_gets_defaults(own_tmp: Path) -> None:
    d = make_vm(own_tmp, "mail")
    vm = vmdef.load(own_tmp, "mail")
    assert vm.name == "mail" and vm.path == d
    assert vm.kernel == d / "vmlinux"
    assert vm.disks == (d / "blk" / "disk0.img",)
    assert (vm.cmdline, vm.memory, vm.cpus) == (vmdef.DEFAULT_CMDLINE, 1 << 30, 1)
    assert vm.initramfs is None and vm.policy is None and vm.net_providers == ()


def test_every_optional_file_is_read(own_tmp: Path) -> None:
    d = make_vm(own_tmp, "firefox", full=True, disks=3)
    (d / "providers" / "net" / "sys-vpn").write_text("")
    vm = vmdef.load(own_tmp, "firefox")
    assert vm.cmdline == "console=hvc0 quiet"
    assert vm.memory == 512 << 20 and vm.cpus == 2
    assert vm.initramfs == d / "initramfs"
    assert vm.policy == d / "wlproxy.toml"
    assert vm.net_providers == ("sys-net", "sys-vpn")
    assert [p.name for p in vm.disks] == ["disk0.img", "disk1.img", "disk2.img"]


@pytest.mark.parametrize("text,expected", [("1073741824", 1 << 30), ("512M", 512 << 20), ("2G", 2 << 30),
                                           ("1GiB", 1 << 30), ("65536K", 64 << 20)])
def test_memory_sizes(text: str, expected: int) -> None:
    assert vmdef.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "1X", "-1G", "1M", "100000001"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        vmdef.parse_memory(text)


def _problems(own_tmp: Path, name: str) -> list[str]:
    with pytest.raises(vmdef.VmDefError) as ei:
        vmdef.load(own_tmp, name)
    assert ei.value.name == name
    assert str(ei.value).startswith(f"VM {name!r} is not valid")
    return ei.value.problems


def test_missing_kernel_names_the_file(own_tmp: Path) -> None:
    d = make_vm(own_tmp, "vm1")
    (d / "vmlinux").unlink()
    assert _problems(own_tmp, "vm1") == [f"{d / 'vmlinux'}: the kernel (vmlinux, required) is missing"]


def test_no_disk(own_tmp: Path) -> None:
    d = make_vm(own_tmp, "vm1", disks=0)
    (d / "blk" / "notes.txt").write_text("not a disk")
    assert _problems(own_tmp, "vm1") == [f"{d / 'blk'}: no disk image (blk/*.img, at least one is required)"]


def test_disk_path_with_comma(own_tmp: Path) -> None:
    d = make_vm(own_tmp, "vm1")
    (d / "blk" / "a,b.img").write_bytes(b"")
    assert _problems(own_tmp, "vm1") == [f"{d / 'blk' / 'a,b.img'}: disk path contains ',' "
                                          "(not allowed in a disk path)"]


def test_dangling_disk_symlink(own_tmp: Path) -> None:
    d = make_vm(own_tmp, "vm1")
    (d / "blk" / "gone.img").symlink_to(own_tmp / "nowhere.img")
    assert _problems(own_tmp, "vm1") == [f"{d / 'blk' / 'gone.img'}: the disk image is missing (dangling symlink)"]


@pytest.mark.parametrize("name", ["a:b", "a/b", ".hidden", ""])
def test_bad_names(own_tmp: Path, name: str) -> None:
    problems = _problems(own_tmp, name)
    assert len(problems) == 1
    assert "the VM name" in problems[0]


def test_colon_name_refused_even_when_directory_exists(own_tmp: Path) -> None:
    make_vm(own_tmp, "web:1")
    assert _problems(own_tmp, "web:1") == [f"{own_tmp / 'web:1'}: the VM name 'web:1' contains ':' or '/'"]


def test_no_such_vm(own_tmp: Path) -> None:
    assert _problems(own_tmp, "ghost") == [f"{own_tmp / 'ghost'}: no such VM directory"]


def test_every_problem_is_reported_at_once(own_tmp: Path) -> None:
    d = make_vm(own_tmp, "vm1", disks=0)
    (d / "vmlinux").unlink()
    (d / "memory").write_text("a lot")
    (d / "cpus").write_text("0")
    (d / "providers" / "net").mkdir(parents=True)
    (d / "providers" / "net" / "bad:provider").write_text("")
    problems = _problems(own_tmp, "vm1")
    assert [p.split(":")[0] for p in problems] == [str(d / f) for f in
                                                    ("vmlinux", "blk", "memory", "cpus", "providers/net/bad")]
    assert "'a lot' is not a size" in problems[2]
    assert "'0' is not a number of vCPUs" in problems[3]


def test_names_lists_directories_only(own_tmp: Path) -> None:
    make_vm(own_tmp, "b")
    make_vm(own_tmp, "a")
    (own_tmp / ".cache").mkdir()
    (own_tmp / "README").write_text("")
    assert vmdef.names(own_tmp) == ["a", "b"]
    assert vmdef.names(own_tmp / "missing") == []
