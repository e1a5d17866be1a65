"""``wlproxy bench``: frame latency and throughput through direct, wlproxy, waypipe and floor."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wlproxy.tools.bench.runner import add_arguments as add

    add(p)


def run(args: argparse.Namespace) -> int:
    from wlproxy.tools.bench.runner import run as run_bench

    return run_bench(args)
