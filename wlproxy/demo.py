"""``wlproxy demo``: the whole path on one machine, for a person to watch.

A headless weston (pixman) stands in for the host's display; the host half
listens on a cloud-hypervisor style socket (``.../vm/demo/vsock_6000``); the
guest half listens where the VM's clients would connect; ``wlproxy trace``
sits in front of the guest half so you see every message the client sent and
received; a real client (weston-simple-shm by default) draws into weston
through all of it.  A screenshot of weston's output is saved at the end.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from wlproxy.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--client", default="weston-simple-shm",
                   help="client command to run in the 'guest' (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="how long the client runs (default: %(default)s)")
    p.add_argument("--screenshot", metavar="PNG",
                   help="where to save the screenshot (default: $XDG_CACHE_HOME/wlproxy/demo/)")
    p.add_argument("--trace-lines", type=int, default=25, help="trace lines to show (default: %(default)s)")


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _default_shot() -> Path:
    from xdg.BaseDirectory import save_cache_path

    return Path(save_cache_path("wlproxy", "demo")) / time.strftime("screenshot-%Y%m%d-%H%M%S.png")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from wlproxy.clients.screenshot import screenshot
    from wlproxy.pair import ProxyPair, wlproxy_command
    from wlproxy.weston import Weston, weston_available

    client = args.client.split()
    if shutil.which(client[0]) is None:
        raise UserError(f"client {client[0]!r} not found (Debian package weston has the demo clients)")
    reason = weston_available()
    if reason:
        raise UserError(reason)
    shot_path = Path(args.screenshot) if args.screenshot else _default_shot()
    with tempfile.TemporaryDirectory(prefix="wlproxy-demo-") as tmp:
        base = Path(tmp)
        _step("starting weston (headless, pixman renderer, 800x600)")
        with Weston(800, 600, debug=True) as weston:
            background = screenshot(weston.display, weston.runtime_dir).pixels
            _step(f"starting the host half (VM 'demo') and the guest half, linked over "
                  f"{base}/run/vm/demo/vsock_6000")
            with ProxyPair(weston.env(), base_dir=base, vm="demo") as pair:
                trace_file = base / "trace.txt"
                env = pair.env()
                _step(f"wlproxy trace in front of the guest half; running {args.client} for {args.seconds:g} s")
                trace = subprocess.Popen(
                    wlproxy_command() + ["trace", "--socket", "wayland-trace", "--display", pair.guest.display,
                                         "--summary", "--once", "-o", str(trace_file)], env=env)
                trace_sock = pair.guest.runtime_dir / "wayland-trace"
                deadline = time.monotonic() + 10
                while not trace_sock.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                cenv = dict(env, WAYLAND_DISPLAY="wayland-trace")
                proc = subprocess.Popen(client, env=cenv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                time.sleep(args.seconds)
                alive = proc.poll() is None
                shot = screenshot(weston.display, weston.runtime_dir)
                proc.terminate()
                _, err = proc.communicate(timeout=10)
                try:
                    trace.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    trace.terminate()
                    trace.wait()
                trace_file_text = trace_file.read_text() if trace_file.exists() else ""
            changed = int(np.count_nonzero(shot.pixels != background))
    shot_path.parent.mkdir(parents=True, exist_ok=True)
    shot.save(shot_path)
    body = [ln for ln in trace_file_text.splitlines() if ln.startswith("[")]
    at = trace_file_text.find(" messages; ")
    summary = trace_file_text[trace_file_text.rfind("\n", 0, at) + 1:] if at >= 0 else ""
    print()
    _step(f"first {min(args.trace_lines, len(body))} of {len(body)} traced messages (client's view):")
    for line in body[: args.trace_lines]:
        print("    " + line)
    if summary:
        _step("what crossed:")
        print("    " + summary.strip().replace("\n", "\n    "))
    print()
    ok = alive and changed > 1000
    _step(f"{args.client} {'ran' if alive else 'exited early'}; {changed} pixels of weston's output changed")
    if err.strip():
        print("    client stderr: " + err.strip()[:500])
    _step(f"screenshot of weston's output: {shot_path}")
    print("demo: OK" if ok else "demo: FAILED (no window appeared)")
    return 0 if ok else 1

