"""The bench's placement: the appvm's side and the host's side on disjoint CPUs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from wlproxy.tools.bench import procstat
from wlproxy.tools.bench.placement import Placement


def test_split_halves_the_cpus_appvm_side_first() -> None:
    assert Placement.split([0]) is None
    assert Placement.split([3, 1]) == Placement(frozenset({1}), frozenset({3}))
    p = Placement.split(range(5))
    assert p.vm == {0, 1} and p.host == {2, 3, 4}
    assert p.describe() == "appvm side on CPU 0,1, host side on CPU 2,3,4"


def test_pin_moves_every_thread_and_later_children_inherit() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing to split")
    pl = Placement.split(cpus)
    # a process with a second thread, which starts a child after it was pinned
    code = ("import os, subprocess, sys, threading, time; t = threading.Thread(target=time.sleep, args=(30,)); "
            "t.start(); sys.stdin.readline(); c = subprocess.Popen(['sleep', '30']); print(c.pid, flush=True); "
            "sys.stdin.readline(); c.kill()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        threading.Event().wait(0.3)
        assert len(os.listdir(f"/proc/{proc.pid}/task")) >= 2
        pl.pin("host", [proc.pid])
        assert procstat.affinity([proc.pid]) == pl.host
        proc.stdin.write("\n")
        proc.stdin.flush()
        child = int(proc.stdout.readline())
        assert os.sched_getaffinity(child) == pl.host
        pl.pin("vm", [proc.pid])
        assert procstat.affinity([proc.pid]) == pl.vm
        assert os.sched_getaffinity(child) == pl.host  # the tree is pinned by the caller, pid by pid
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait()
