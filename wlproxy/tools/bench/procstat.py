"""CPU time and peak RSS of process trees, from /proc."""

from __future__ import annotations

import os
from typing import Iterable, Iterator


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        rest = data[data.rfind(b")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def tree(root: int, exclude: Iterable[int] = ()) -> list[int]:
    """``root`` and its descendants, minus the subtrees rooted at ``exclude``."""
    skip = set(exclude)
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in skip:
            continue
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def threads(pids: Iterable[int]) -> Iterator[int]:
    """The thread ids of ``pids`` (those still there)."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        yield from map(int, tids)


def cpu_ns(pids: Iterable[int]) -> int:
    """On-CPU time of every thread of ``pids`` (``/proc/PID/task/*/schedstat``), in ns."""
    total = 0
    for tid in threads(pids):
        try:
            with open(f"/proc/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def reset_peak_rss(pids: Iterable[int]) -> None:
    """Reset VmHWM to the current RSS (``clear_refs`` 5)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_rss_bytes(pids: Iterable[int]) -> int:
    """Sum of VmHWM over ``pids``."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            pass
    return total


def affinity(pids: Iterable[int]) -> set[int]:
    """The CPUs any thread of ``pids`` may run on."""
    out: set[int] = set()
    for tid in threads(pids):
        try:
            out |= os.sched_getaffinity(tid)
        except OSError:
            pass  # gone meanwhile
    return out
