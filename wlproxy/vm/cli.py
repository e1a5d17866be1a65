"""``wlproxy vm``: start, stop, list and watch app VMs, and write their service files."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("hostvm.cli")

HYPERVISOR_CHOICES = ("cloud-hypervisor", "qemu")

EXAMPLES = """\
examples:
  wlproxy vm list                     # VMs under $XDG_CONFIG_HOME/wlproxy/vms
  wlproxy vm start --detach firefox   # host half, cloud-hypervisor, boot
  wlproxy vm status                   # a table of all VMs
  wlproxy vm stop firefox
  wlproxy vm services --s6 /run/service
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wide option column; descriptions are wrapped by :func:`_d`, epilogs kept as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):  # argparse measures sub-actions 2 columns short
            self._action_max_length += 2


def _d(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 78)


def default_vms_dir() -> Path:
    from xdg import BaseDirectory
    return Path(BaseDirectory.xdg_config_home) / "wlproxy" / "vms"


def _user_error(msg: str) -> Exception:
    from wlproxy.cli import UserError
    return UserError(msg)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vms-dir", type=Path, default=None, metavar="DIR",
                   help="VM definitions, one directory per VM (default: $XDG_CONFIG_HOME/wlproxy/vms)")
    p.add_argument("--run-dir", type=Path, default=Path("/run/vm"), metavar="DIR",
                   help="runtime state, RUN_DIR/NAME per running VM (default: /run/vm)")


def _port(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=6000,
                   help="vsock port the guest half dials; the host half listens on RUN_DIR/NAME/vsock_PORT "
                        "(default: 6000)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``wlproxy vm`` sub-subcommands to ``parser``."""
    parser.formatter_class = _Formatter
    parser.description = _d(
        "Launch app VMs, each with its own wlproxy host half, and supervise them. A VM is a directory "
        "NAME under the VMs directory holding vmlinux, blk/*.img and optionally initramfs, cmdline, "
        "memory, cpus, providers/net/* and wlproxy.toml (its policy).")
    parser.epilog = EXAMPLES
    sub = parser.add_subparsers(dest="vm_command", metavar="ACTION")
    sub.required = True
    add = sub.add_parser

    def add_parser(name: str, func: Callable[[argparse.Namespace], int], *, help: str, description: str) -> argparse.ArgumentParser:
        """The subcommand ``name`` running ``func``, with the common options."""
        p = add(name, help=help, description=_d(description), formatter_class=_Formatter)
        _common(p)
        p.set_defaults(vm_func=func)
        return p

    p = add_parser("start", cmd_start, help="start a VM and supervise it until it stops",
                       description="Create RUN_DIR/NAME, start the VM's host half, start the VMM, create and "
                       "boot the VM; then supervise it: a dead host half is restarted, and when the VMM exits "
                       "the host half is stopped and RUN_DIR/NAME removed. Any failed step undoes the earlier "
                       "ones. Stays in the foreground unless --detach.")
    p.add_argument("name", metavar="NAME", help="the VM (a directory under --vms-dir)")
    p.add_argument("--hypervisor", choices=HYPERVISOR_CHOICES, default="cloud-hypervisor",
                   help="VMM backend (default: cloud-hypervisor)")
    p.add_argument("--hypervisor-binary", metavar="PATH", default=None,
                   help="VMM executable (default: $WLPROXY_CLOUD_HYPERVISOR or cloud-hypervisor on PATH)")
    p.add_argument("--host-half", default="spawn", metavar="HOW",
                   help="how the host half runs: 'spawn' (a child, restarted by this supervisor), "
                        "'s6:SERVICEDIR' (an s6 service from 'vm services --s6') or 'systemd' "
                        "(wlproxy-host@NAME.service) (default: spawn)")
    p.add_argument("--display", metavar="D", default=None,
                   help="the host compositor's Wayland display, passed to the host half")
    _port(p)
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds each readiness wait may take (default: 10)")
    p.add_argument("--stop-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a stop may take before the VMM is killed (default: 30)")
    p.add_argument("--detach", action="store_true",
                   help="return once the VM runs; the supervisor goes on in the background, "
                        "logging to RUN_DIR/NAME.wlproxy.log")
    p.add_argument("--ready-fd", type=int, default=None, metavar="FD",
                   help="write a newline to FD once the VM runs (s6 notification-fd style)")

    p = add_parser("stop", cmd_stop, help="stop a running VM",
                       description="PUT vm.shutdown, then vmm.shutdown; the supervisor then stops the host half "
                       "and removes RUN_DIR/NAME (done here if the supervisor is gone). A VMM that does not "
                       "exit in time is killed.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the VMM and the supervisor (default: 30)")

    p = add_parser("status", cmd_status, help="state of one VM, or a table of all",
                       description="The VM state from the VMM (vm.info), its pids, and whether its host half "
                       "accepts connections.")
    p.add_argument("name", metavar="NAME", nargs="?", help="one VM (default: all defined or running)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = add_parser("list", cmd_list, help="list the defined VMs and whether their definitions are valid",
                       description="Every VM directory under --vms-dir, validated with its policy "
                       "(NAME/wlproxy.toml or NAME.toml: see 'wlproxy policy show --help'); exits 1 when a "
                       "VM is invalid.")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = add_parser("services", cmd_services, help="write s6 service directories or systemd units",
                       description="Write the service definitions: with --s6, DIR/weston and one "
                       "DIR/wlproxy-host-NAME per VM (started down, brought up by 'vm start --host-half "
                       "s6:DIR/wlproxy-host-NAME'); with --systemd, wlproxy-host@.service and weston.service.")
    p.add_argument("--s6", type=Path, metavar="DIR", help="s6 scan directory to write service directories to")
    p.add_argument("--systemd", type=Path, metavar="DIR", help="directory to write systemd units to")
    p.add_argument("--vm", action="append", default=None, metavar="NAME",
                   help="only this VM (repeatable; default: every VM under --vms-dir)")
    p.add_argument("--display", default="wayland-1", metavar="D",
                   help="weston's socket name, also passed to the host halves (default: wayland-1)")
    p.add_argument("--weston-args", default="", metavar="ARGS",
                   help="extra weston arguments, as one string: --weston-args='--backend=drm-backend.so'")
    p.add_argument("--user", default="", metavar="USER",
                   help="s6: the unprivileged user the host halves run as (s6-setuidgid; default: the "
                   "supervisor's user, and a host half refuses root)")
    p.add_argument("--socket-group", default="", metavar="GROUP",
                   help="systemd: a group that may reach weston's socket, given to the host halves' "
                   "transient user (SupplementaryGroups=)")
    _port(p)

    p = add_parser("host-half", cmd_host_half, help="run the host half of one VM (used by the service files)",
                       description="Create RUN_DIR/NAME, remove a stale socket, and exec "
                       "'python -m wlproxy host --listen RUN_DIR/NAME/vsock_PORT --vm NAME' with the VM's policy.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--display", default=None, metavar="D", help="the host compositor's Wayland display")
    p.add_argument("--ready-fd", type=int, default=None, metavar="FD",
                   help="passed on: the host half writes a newline to FD once listening (s6 notification-fd)")
    p.add_argument("--allow-root", action="store_true", help="passed on: let the host half run as root")
    _port(p)

    _add_image(sub)


def _add_image(sub: Any) -> None:
    """``vm image build``, provided by :mod:`wlproxy.vm.image` when it is installed."""
    p = sub.add_parser("image", help="build a guest kernel and initramfs",
                       description="Guest image tooling.")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION")
    isub.required = True
    b = isub.add_parser("build", help="build (or reuse) the cached guest kernel and initramfs")
    try:
        image = importlib.import_module("wlproxy.vm.image")
        add, run = image.add_image_arguments, image.run_image
    except (ImportError, AttributeError) as e:
        reason = str(e)

        def unavailable(args: argparse.Namespace) -> int:
            raise _user_error(f"guest image tooling (wlproxy.vm.image) is not available in this installation: {reason}")
        b.set_defaults(vm_func=unavailable)
        return
    add(b)
    b.set_defaults(vm_func=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``wlproxy vm`` action."""
    if getattr(args, "vms_dir", None) is None and hasattr(args, "vms_dir"):
        args.vms_dir = default_vms_dir()
    func: Callable[[argparse.Namespace], int] = args.vm_func
    return func(args)


def _load(args: argparse.Namespace) -> Any:
    from wlproxy.vm import vmdef
    try:
        return vmdef.load(args.vms_dir, args.name)
    except vmdef.VmDefError as e:
        raise _user_error(str(e)) from e


def _paths(args: argparse.Namespace, name: str | None = None) -> Any:
    from wlproxy.vm.rundir import RunPaths
    from wlproxy.vm.vmdef import name_problem
    name = name or args.name
    if (p := name_problem(name)) is not None:
        raise _user_error(p)
    return RunPaths(args.run_dir.absolute(), name, getattr(args, "port", 6000))


def cmd_start(args: argparse.Namespace) -> int:
    from wlproxy.vm import launch
    from wlproxy.vm.hosthalf import HostHalfError, make_host_half
    from wlproxy.vm.hypervisor import HypervisorError, get_hypervisor
    from wlproxy.vm.supervise import Supervisor

    vm = _load(args)
    paths = _paths(args)
    try:
        hv = get_hypervisor(args.hypervisor, args.hypervisor_binary)
        host = make_host_half(args.host_half, vm.name, paths, vm.policy, args.display, args.timeout)
    except (HypervisorError, HostHalfError) as e:
        raise _user_error(str(e)) from e
    if args.detach:
        return _detach(args, paths)
    try:
        running = launch.start(vm, paths, hv, host, args.timeout)
    except launch.StartError as e:
        raise _user_error(str(e)) from e
    sup = Supervisor(running, args.timeout, args.stop_timeout)
    sup.install_signal_handlers()
    print(f"{vm.name}: running ({hv.name} pid {running.vmm.pid}, host half on {paths.host_socket}); "
          f"supervising until it stops ('wlproxy vm stop {vm.name}' or Ctrl-C)", flush=True)
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"\n")
        os.close(args.ready_fd)
    return sup.run()


def _detach(args: argparse.Namespace, paths: Any) -> int:
    """Re-run ``vm start`` in a new session and wait until it reports the VM running."""
    argv = [sys.executable, "-m", "wlproxy", "-" + "v" * max(1, getattr(args, "verbose", 0) or 0),
            "--log-format", getattr(args, "log_format", "text"), "vm", "start",
            "--vms-dir", str(args.vms_dir), "--run-dir", str(args.run_dir), "--hypervisor", args.hypervisor,
            "--host-half", args.host_half, "--port", str(args.port), "--timeout", str(args.timeout),
            "--stop-timeout", str(args.stop_timeout)]
    if args.hypervisor_binary:
        argv += ["--hypervisor-binary", args.hypervisor_binary]
    if args.display:
        argv += ["--display", args.display]
    r, w = os.pipe()
    argv += ["--ready-fd", str(w), "--", args.name]
    try:
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        logf = open(paths.supervisor_log, "wb")
    except OSError as e:
        raise _user_error(f"cannot write {paths.supervisor_log}: {e.strerror} (use --run-dir)") from e
    with logf:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                 pass_fds=(w,), start_new_session=True)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], args.timeout * 4 + 10)
        got = os.read(r, 1) if ready else b""
    finally:
        os.close(r)
    if got == b"\n":
        print(f"{args.name}: running; supervisor pid {child.pid}, log {paths.supervisor_log}")
        return 0
    try:
        child.wait(args.timeout + args.stop_timeout)
    except subprocess.TimeoutExpired:
        child.terminate()
        child.wait()
    lines = [ln for ln in paths.supervisor_log.read_text(errors="replace").splitlines() if ln.strip()]
    detail = next((ln.split("error: ", 1)[1] for ln in reversed(lines) if "error: " in ln),
                  lines[-1] if lines else "no output")
    raise _user_error(f"{detail} (log: {paths.supervisor_log})")


def cmd_stop(args: argparse.Namespace) -> int:
    from wlproxy.vm import launch, rundir
    from wlproxy.vm.hypervisor import HypervisorError, get_hypervisor

    paths = _paths(args)
    state = rundir.read_state(paths) or {}
    try:
        hv = get_hypervisor(state.get("hypervisor", "cloud-hypervisor"))
    except HypervisorError as e:
        raise _user_error(str(e)) from e
    try:
        print(launch.stop(paths, hv, args.timeout))
    except launch.NotRunning as e:
        raise _user_error(str(e)) from e
    return 0


def vm_status(paths: Any, defined: bool) -> dict[str, Any]:
    """One VM's status: from its run dir, the VMM's ``vm.info`` and a connection to its host half."""
    from wlproxy.vm import rundir
    from wlproxy.vm.hypervisor import HypervisorError, get_hypervisor
    from wlproxy.vm.procs import unix_accepts

    out: dict[str, Any] = {"name": paths.name, "defined": defined, "state": "stopped", "hypervisor": None,
                           "vmm_pid": None, "host_half": None, "host_half_pid": None, "net_providers": []}
    if not paths.vm_dir.is_dir():
        return out
    state = rundir.read_state(paths)
    if state is None:
        out["state"] = "starting"
        return out
    out["hypervisor"] = state.get("hypervisor")
    out["net_providers"] = state.get("net_providers", [])
    vmm = rundir.state_proc(state, "vmm")
    if vmm is None or not vmm.alive():
        out["state"] = "stale (VMM gone)"
    else:
        out["vmm_pid"] = vmm.pid
        try:
            out["state"] = get_hypervisor(state.get("hypervisor", "cloud-hypervisor")).vm_state(paths)
        except HypervisorError:
            out["state"] = "unknown"
    host = rundir.state_proc(state, "host_half")
    hh = state.get("host_half") or {}
    socket = Path(hh.get("socket", paths.host_socket))
    out["host_half"] = "up" if unix_accepts(socket) else "down"
    if host is not None and host.alive():
        out["host_half_pid"] = host.pid
    return out


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_status(args: argparse.Namespace) -> int:
    from wlproxy.vm import rundir, vmdef

    defined = set(vmdef.names(args.vms_dir))
    if args.name:
        _paths(args)
        if args.name not in defined and not (args.run_dir / args.name).is_dir():
            raise _user_error(f"no VM {args.name!r}: not under {args.vms_dir} and not running")
        names = [args.name]
    else:
        names = sorted(defined | set(rundir.running_names(args.run_dir)))
    statuses = [vm_status(_paths(args, n), n in defined) for n in names]
    if args.json:
        print(json.dumps(statuses, indent=2))
        return 0
    if not statuses:
        print(f"no VMs under {args.vms_dir}")
        return 0
    rows = [["NAME", "STATE", "HYPERVISOR", "VMM PID", "HOST HALF", "NET"]]
    for s in statuses:
        hh = s["host_half"] or "-"
        if s["host_half_pid"]:
            hh += f" (pid {s['host_half_pid']})"
        rows.append([s["name"], s["state"], s["hypervisor"] or "-", str(s["vmm_pid"] or "-"), hh,
                     ",".join(s["net_providers"]) or "-"])
    print(_table(rows))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Every VM, validated with its policy; 1 when one is invalid."""
    from wlproxy.core import policy
    from wlproxy.vm import vmdef

    entries: list[dict[str, Any]] = []
    for name in vmdef.names(args.vms_dir):
        try:
            vm = vmdef.load(args.vms_dir, name)
            if vm.policy is not None:
                policy.load_file(vm.policy, name)
        except vmdef.VmDefError as e:
            entries.append({"name": name, "valid": False, "problems": e.problems})
            continue
        except policy.PolicyError as e:
            entries.append({"name": name, "valid": False, "problems": [str(e)]})
            continue
        entries.append({"name": name, "valid": True, "cpus": vm.cpus, "memory": vm.memory,
                        "disks": [str(d) for d in vm.disks], "net_providers": list(vm.net_providers),
                        "policy": str(vm.policy) if vm.policy else None,
                        "running": (args.run_dir / name).is_dir()})
    status = 1 if any(not e["valid"] for e in entries) else 0
    if args.json:
        print(json.dumps(entries, indent=2))
        return status
    if not entries:
        print(f"no VMs under {args.vms_dir}")
        return 0
    rows = [["NAME", "VALID", "CPUS", "MEMORY", "DISKS", "NET", "POLICY", "RUNNING"]]
    for e in entries:
        if e["valid"]:
            rows.append([e["name"], "yes", str(e["cpus"]), f"{e['memory'] >> 20}M", str(len(e["disks"])),
                         ",".join(e["net_providers"]) or "-", "yes" if e["policy"] else "default",
                         "yes" if e["running"] else "no"])
        else:
            rows.append([e["name"], "NO", "-", "-", "-", "-", "-", "-"])
    print(_table(rows))
    for e in entries:
        for problem in e.get("problems", []):
            print(f"{e['name']}: {problem}")
    return status


def cmd_services(args: argparse.Namespace) -> int:
    from wlproxy.vm import servicegen, vmdef

    if not args.s6 and not args.systemd:
        raise _user_error("say where to write: --s6 DIR and/or --systemd DIR")
    params = servicegen.ServiceParams(vms_dir=args.vms_dir, run_dir=args.run_dir, port=args.port,
                                      display=args.display, weston_args=args.weston_args, user=args.user,
                                      socket_group=args.socket_group)
    written: list[Path] = []
    if args.s6:
        names = args.vm if args.vm is not None else vmdef.names(args.vms_dir)
        for n in names:
            if (p := vmdef.name_problem(n)) is not None:
                raise _user_error(p)
        written += servicegen.write_s6(args.s6, params, names)
    if args.systemd:
        written += servicegen.write_systemd(args.systemd, params)
    for f in written:
        print(f)
    return 0


def cmd_host_half(args: argparse.Namespace) -> int:
    from wlproxy.core.policy import PolicyError
    from wlproxy.vm.hosthalf import host_command, prepare_socket_dir
    from wlproxy.vm.vmdef import policy_path

    paths = _paths(args)
    vm_dir = args.vms_dir / args.name
    if not vm_dir.is_dir():
        raise _user_error(f"{vm_dir}: no such VM directory")
    try:
        prepare_socket_dir(paths)
    except OSError as e:
        raise _user_error(f"cannot prepare {paths.vm_dir}: {e}") from e
    try:
        pol = policy_path(vm_dir)
    except PolicyError as e:
        raise _user_error(str(e)) from e
    cmd = host_command(args.name, paths.host_socket, pol, args.display, ready_fd=args.ready_fd,
                       allow_root=args.allow_root, vms_dir=args.vms_dir.absolute())
    log.info("exec %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        raise _user_error(f"cannot run {cmd[0]}: {e.strerror}") from e
    return 1  # not reached
