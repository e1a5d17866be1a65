"""What the shadow compare of an identical frame costs on its own.

    python bench/compare_cost.py                  # 1920x1080 and 3840x2160, XRGB8888
    python bench/compare_cost.py --runs 60
    python bench/compare_cost.py --busy           # no pause before each commit

An identical repaint can only be told apart from a changed one by reading
it: the guest half compares the damaged rows of the client's buffer with its
shadow copy (``shm_commit_par`` in DIFF mode, the call a commit makes), so
two buffers of the frame's size cross the memory bus.  This measures that
call alone, the way a commit meets it: the client has just drawn the buffer
(its rows were written, so they are partly in cache), the shadow was last
touched a frame ago (other work in between evicts it), and a 60 Hz pause
precedes each commit, so the CPU has just woken up when the compare starts
(``--busy`` leaves the pause out, to show what the wake-up itself costs).  It prints the median, p10 and p90 per size, and
the time of one plain pass reading one copy (numpy's max over it) as the
memory bus's own figure: the compare reads two.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time

import numpy as np

from wlproxy._codec import ffi, lib


def measure(width: int, height: int, runs: int, pause: float = 1 / 60) -> dict[str, float]:
    stride = width * 4
    size = stride * height
    fd = os.memfd_create("compare-cost", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    pool = mmap.mmap(fd, size)
    content = os.urandom(size)
    pool[:] = content
    shadow = mmap.mmap(-1, size)
    shadow[:] = content
    rows = ffi.new("struct shm_span[]", height)
    for y in range(height):
        rows[y].offset, rows[y].len = y * stride, stride
    cap = 4096
    out, scratch = ffi.new("struct shm_span[]", cap), ffi.new("struct shm_span[]", cap)
    stats = ffi.new("uint64_t[3]")
    cpool, cshadow = ffi.from_buffer(pool), ffi.from_buffer(shadow)
    evict = bytearray(64 << 20)
    times = []
    for i in range(runs):
        evict[::64] = bytes([i & 0xFF]) * len(evict[::64])  # other work since the last frame
        pool[:] = content  # the client repaints the same pixels
        if pause:
            time.sleep(pause)
        t = time.perf_counter()
        n = lib.shm_commit_par(cpool, cshadow, rows, height, lib.SHM_DIFF, 256, out, cap, scratch, stats)
        times.append(time.perf_counter() - t)
        assert n == 0 and stats[1] == 0, "identical content must give nothing to send"
    reads = []
    words = np.frombuffer(shadow, dtype=np.uint64)
    for i in range(runs):
        evict[::64] = bytes([i & 0xFF]) * len(evict[::64])
        if pause:
            time.sleep(pause)
        t = time.perf_counter()
        words.max()
        reads.append(time.perf_counter() - t)
    del words
    ffi.release(cpool)
    ffi.release(cshadow)
    pool.close()
    shadow.close()
    os.close(fd)
    times.sort()
    return {"bytes": size, "median_ms": statistics.median(times) * 1e3, "p10_ms": times[len(times) // 10] * 1e3,
            "p90_ms": times[len(times) * 9 // 10] * 1e3, "read_one_copy_ms": statistics.median(reads) * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--busy", action="store_true", help="no 60 Hz pause before each commit")
    args = p.parse_args()
    for w, h in ((1920, 1080), (3840, 2160)):
        r = measure(w, h, args.runs, 0 if args.busy else 1 / 60)
        print(f"{w}x{h}: compare {r['median_ms']:.3f} ms median (p10 {r['p10_ms']:.3f}, p90 {r['p90_ms']:.3f}) "
              f"over 2 x {r['bytes'] / 2**20:.1f} MiB; one pass reading one copy: "
              f"{r['read_one_copy_ms']:.3f} ms")


if __name__ == "__main__":
    main()
