"""The guest half asks for a short scheduler slice (``--sched-slice``), as
/proc shows; 0 leaves the kernel's default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wlproxy.tools.pair import GuestHalf


def _slice_ns(pid: int) -> int | None:
    for line in Path(f"/proc/{pid}/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


def _kernel_has_custom_slices() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 12) and _slice_ns(os.getpid()) is not None


@pytest.mark.skipif(not _kernel_has_custom_slices(), reason="kernel older than 6.12: no per-task slice to ask for")
@pytest.mark.parametrize("usec", [100, 0])
def test_guest_half_scheduler_slice(tmp_path: Path, usec: int) -> None:
    default = _slice_ns(os.getpid())
    g = GuestHalf(tmp_path / "no-link", tmp_path / "rt", extra=["--sched-slice", str(usec)])
    g.start()
    try:
        assert _slice_ns(g.proc.pid) == (usec * 1000 if usec else default)
    finally:
        g.stop()
