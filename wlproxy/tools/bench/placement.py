"""Where the benchmark's processes run: the appvm's side and the host's side on separate CPUs.

In a deployment the guest half and its clients run on the appvm's vCPUs and the
host half and weston on the host's, so the two halves never queue on one CPU.
On one machine they would: a Unix-socket wake-up is a *sync* wake-up, and the
scheduler puts the woken reader on the writer's CPU, so a large frame's writer
and reader take turns on one core while the other idles.  With placement on,
every configuration gets the same split: the client and the client-side process
(guest half, ``waypipe server``, floor sender, the appvm-side relay) on the
first half of the CPUs, the compositor and the compositor-side process (host
half, ``waypipe client``, floor receiver, the host-side relay) on the second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from wlproxy.tools.bench import procstat


@dataclass(frozen=True)
class Placement:
    vm: frozenset[int]
    host: frozenset[int]

    @classmethod
    def split(cls, cpus: Iterable[int] | None = None) -> "Placement | None":
        """The usable CPUs halved (the appvm's side first); None with fewer than two."""
        ordered = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
        if len(ordered) < 2:
            return None
        half = len(ordered) // 2
        return cls(frozenset(ordered[:half]), frozenset(ordered[half:]))

    def describe(self) -> str:
        return f"appvm side on CPU {_ranges(self.vm)}, host side on CPU {_ranges(self.host)}"

    def pin(self, side: str, pids: Iterable[int]) -> None:
        """Every thread of ``pids`` onto ``side``'s CPUs (threads and children made later inherit it)."""
        cpus = self.vm if side == "vm" else self.host
        for tid in procstat.threads(pids):
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass  # gone meanwhile


def _ranges(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
