"""The ``wlproxy`` command line: one subcommand per module, imported lazily."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
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


# subcommand -> (the extra that provides its dependencies, the modules it needs)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bench": ("bench", ("numpy", "pywayland", "matplotlib")),
    "demo": ("demo", ("numpy", "pywayland", "PIL")),
}

# Exit statuses, the same for every subcommand (wlproxy(1), EXIT STATUS).
EXIT_STATUS: dict[int, str] = {
    0: "success",
    1: "failure: the command ran and found a problem (an invalid VM in vm list)",
    2: "usage or input error: a bad option, policy file or VM definition (the message says which)",
    3: "an optional dependency is missing: the message names the extra to install",
    130: "interrupted (SIGINT)",
    141: "standard output was closed early (as with SIGPIPE); nothing more is printed",
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


def _add_log_options(p: argparse.ArgumentParser, top: bool) -> None:
    """``-v`` and ``--log-format``, accepted before the subcommand and after it."""
    prefix = "" if top else "sub_"
    p.add_argument("-v", "--verbose", action="count", dest=f"{prefix}verbose", default=0 if top else None,
                   help="more logging (-vv for debug)")
    p.add_argument("--log-format", choices=["text", "json"], dest=f"{prefix}log_format",
                   default="text" if top else None,
                   help="log line format: text escapes every value, json is one object a line (default: text)")
    p.add_argument("--audit-log", metavar="FILE", dest=f"{prefix}audit_log", default=None,
                   help="append audit events (security decisions) to FILE instead of stderr")


def _subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``p``, depth first."""
    out = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in dict.fromkeys(a.choices.values()):
                out += [sp, *_subparsers(sp)]
    return out


def missing_extra(command: str) -> str | None:
    """Why ``command`` cannot run in this installation (its extra is not installed), or None."""
    extra, modules = EXTRAS.get(command, ("", ()))
    gone = [m for m in modules if importlib.util.find_spec(m) is None]
    if not gone:
        return None
    names = ", ".join("Pillow" if m == "PIL" else m for m in gone)
    return f"needs {names}, which {'is' if len(gone) == 1 else 'are'} not installed: pip install 'wlproxy[{extra}]'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wlproxy",
        description="Show windows of applications in app VMs on the host's Wayland compositor, "
        "safely: a guest half in the VM, a filtering host half in front of weston.",
    )
    parser.epilog = "exit status: " + "; ".join(f"{k} {v.split(':')[0]}" for k, v in EXIT_STATUS.items())
    parser.add_argument("--version", action="version", version=f"wlproxy {__version__}")
    _add_log_options(parser, top=True)
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
    for p in _subparsers(parser):
        _add_log_options(p, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose += getattr(args, "sub_verbose", None) or 0
    args.log_format = getattr(args, "sub_log_format", None) or args.log_format
    args.audit_log = getattr(args, "sub_audit_log", None) or args.audit_log
    from wlproxy.logs import setup_logging

    try:
        setup_logging(args.verbose, args.log_format, args.audit_log)
    except OSError as e:
        print(f"wlproxy: error: cannot open the audit log {args.audit_log}: {e.strerror}", file=sys.stderr)
        return 2
    if getattr(args, "_missing", False):
        parser.error(f"subcommand {args.command!r} is not available in this installation")
    if (why := missing_extra(args.command)) is not None:
        print(f"wlproxy {args.command}: error: {why}", file=sys.stderr)
        return 3
    try:
        mod = importlib.import_module(args._module)
        rc = int(mod.run(args) or 0)
        sys.stdout.flush()
        return rc
    except UserError as e:
        print(f"wlproxy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass
