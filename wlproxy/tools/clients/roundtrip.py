"""Measure ``wl_display.sync`` round trips: the latency an interactive client sees.

``python -m wlproxy.tools.clients.roundtrip --count 200`` prints one JSON line:
``{"count": N, "median_us": ..., "p90_us": ..., "p99_us": ..., "max_us": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pywayland.client import Display


def measure(display: Display, count: int, interval: float = 0.0) -> list[float]:
    """Round-trip times in seconds."""
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        display.roundtrip()
        out.append(time.perf_counter() - t0)
        if interval:
            time.sleep(interval)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1e6

    return {"count": len(s), "median_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "max_us": s[-1] * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between round trips")
    p.add_argument("--display", default=None)
    args = p.parse_args(argv)
    display = Display(args.display)
    display.connect()
    try:
        display.roundtrip()
        samples = measure(display, args.count, args.interval)
    finally:
        display.disconnect()
    print(json.dumps(summary(samples)))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
