"""Shared by the tests that boot a real guest under qemu: whether qemu can run, and the guest image."""

from __future__ import annotations

import functools
import subprocess

import pytest

from wlproxy.vm import image, qemu


@functools.lru_cache(maxsize=None)
def qemu_cannot_run() -> str | None:
    """Why qemu cannot run here, or None."""
    try:
        exe = qemu.find_qemu()
    except qemu.QemuError as e:
        return str(e)
    try:
        subprocess.run([exe, "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{exe} cannot run: {e}"
    return None


@pytest.fixture(scope="module")
def guest_image() -> image.GuestImage:
    """The guest kernel and initramfs; skips when qemu cannot run or the kernel package cannot be downloaded."""
    reason = qemu_cannot_run()
    if reason:
        pytest.skip(f"qemu cannot run: {reason}")
    try:
        return image.build_image()
    except image.KernelDownloadError as e:
        pytest.skip(f"cannot download the guest kernel package: {e}")
