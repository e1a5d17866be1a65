"""The ``wlproxy`` command line: one subcommand per module, imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

from wlproxy import __version__

# subcommand -> module providing ``add_arguments(parser)`` and ``run(args) -> int``
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("wlproxy.tools.demo", "run weston, both halves and a real client on this machine, and show what crossed"),
    "trace": ("wlproxy.halves.trace", "transparent proxy that prints every message (WAYLAND_DEBUG format)"),
    "guest": ("wlproxy.halves.guest", "guest half: Wayland compositor inside the appvm, forwarding over a link"),
    "host": ("wlproxy.halves.host", "host half: accepts a VM's link and talks to weston, filtering everything"),
    "policy": ("wlproxy.policycli", "check or show per-VM policies"),
    "bench": ("wlproxy.tools.bench", "frame latency and throughput: direct, wlproxy, waypipe, floor"),
    "vm": ("wlproxy.vm.cli", "launch and supervise appvms (cloud-hypervisor or qemu)"),
}


class UserError(Exception):
    """An error caused by the user's input: printed without a traceback."""


def add_sched_slice(p: argparse.ArgumentParser, where: str, default: int = 0) -> None:
    """The ``--sched-slice`` option of both halves (``wlproxy.io.sched``)."""
    p.add_argument("--sched-slice", type=int, default=default, metavar="USEC",
                   help=f"ask {where} scheduler for a slice this short, so that the proxy runs soon after a "
                   "client wakes it even while other processes keep the CPUs busy; while it copies a large "
                   "frame it takes a 3 ms slice, so that clients woken meanwhile run first (Linux 6.12 or "
                   "later; 0: the kernel's default throughout; default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wlproxy",
        description="Show windows of applications in app VMs on the host's Wayland compositor, "
        "safely: a guest half in the VM, a filtering host half in front of weston.",
    )
    parser.add_argument("--version", action="version", version=f"wlproxy {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="log line format (default: text)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (modname, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=modname)
        p.set_defaults(_lazy_args=True)
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            p.set_defaults(_missing=True)
            continue
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from wlproxy.logs import setup_logging

    setup_logging(args.verbose, args.log_format)
    if getattr(args, "_missing", False):
        parser.error(f"subcommand {args.command!r} is not available in this installation")
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except UserError as e:
        print(f"wlproxy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
