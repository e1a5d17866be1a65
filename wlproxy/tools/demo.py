"""``wlproxy demo``: the whole path on one machine, for a person to watch.

A headless weston (pixman) stands in for the host's display; the host half
listens on a cloud-hypervisor style socket (``.../vm/demo/vsock_6000``); the
guest half listens where the VM's clients would connect; ``wlproxy trace``
sits in front of the guest half so you see every message the client sent and
received; a real client (weston-simple-shm by default) draws into weston
through all of it.  A screenshot of weston's output is saved at the end.

``--vm`` does it with a real VM instead (:func:`run_vm`): ``wlproxy vm start
--hypervisor qemu`` boots a Linux guest under TCG whose guest half links to the
host half over a virtio-console port; the pywayland pattern client and then
weston-simple-shm run inside the guest (see :mod:`wlproxy.tools.scenario`).
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
    p.add_argument("--vm", action="store_true",
                   help="run the clients in a real VM: 'wlproxy vm start --hypervisor qemu' (TCG) boots a Linux "
                   "guest with the guest half inside; the pywayland pattern client, then weston-simple-shm "
                   "(for --seconds) draw from it; --client and --trace-lines do not apply")


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _default_shot() -> Path:
    from xdg.BaseDirectory import save_cache_path

    return Path(save_cache_path("wlproxy", "demo")) / time.strftime("screenshot-%Y%m%d-%H%M%S.png")


def run(args: argparse.Namespace) -> int:
    if args.vm:
        return run_vm(args)
    import numpy as np

    from wlproxy.tools.clients.screenshot import screenshot
    from wlproxy.tools.pair import ProxyPair, wlproxy_command
    from wlproxy.tools.weston import Weston, weston_available

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



def run_vm(args: argparse.Namespace) -> int:
    """``wlproxy demo --vm``: the same path with a real guest (see :mod:`wlproxy.tools.scenario`)."""
    from wlproxy.vm import image, qemu
    from wlproxy.tools.scenario import AppVmSession, ScenarioError, toplevel_titles, weston_requests
    from wlproxy.tools.clients.pattern import frame_pixels
    from wlproxy.tools.clients.screenshot import screenshot
    from wlproxy.tools.weston import Weston, weston_available

    if reason := weston_available():
        raise UserError(reason)
    try:
        qemu.find_qemu()
    except qemu.QemuError as e:
        raise UserError(str(e)) from None
    shot_path = Path(args.screenshot) if args.screenshot else _default_shot().with_suffix(".vm.png")
    shm_path = shot_path.with_name(shot_path.stem + "-simple-shm" + shot_path.suffix)
    _step("guest image: Debian's generic kernel and a busybox initramfs (built once, then cached)")
    try:
        img = image.build_image()
    except image.ImageError as e:
        raise UserError(f"cannot build the guest image: {e}") from None
    print(f"    {img.vmlinux} ({img.kernel_version})\n    {img.initramfs}")
    vm_name, w, h, pat = "demo", 240, 160, "gradient"
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="wld-") as tmp:  # short: the VM's sockets live there
        _step("starting weston (headless, pixman renderer, 800x600, 'proto' log scope on)")
        with Weston(800, 600, debug=True, extra_args=["--logger-scopes=log,proto"]) as weston, \
                AppVmSession(img, weston.env(), weston.display, Path(tmp), name=vm_name, width=w, height=h,
                             pattern=pat, shm_seconds=args.seconds) as vm:
            try:
                _step(f"wlproxy vm start {vm_name} --hypervisor qemu --detach: host half, then qemu (TCG)")
                res = vm.start()
                if res.returncode != 0:
                    raise ScenarioError(f"vm start failed: {res.stderr.strip()}")
                print(f"    run dir {vm.paths.vm_dir}, guest console {vm.paths.serial_log}")
                uptime = vm.wait_booted()
                t = vm.times
                _step(f"guest booted: host root mounted after {t['guest root mounted']:.1f} s (guest uptime "
                      f"{uptime:.1f} s), guest half listening after {t['guest half listening']:.1f} s")
                _step("the pattern client (pywayland) starts inside the guest; waiting for its first frame")
                vm.wait_first_frame()
                shot, found = vm.wait_on_screen(lambda: screenshot(weston.display, weston.runtime_dir),
                                                frame_pixels(pat, w, h, 0))
                shot.save(shot_path)
                titles = [title for _, title in toplevel_titles(weston.log_text())]
                if found:
                    _step(f"first frame on weston's screen {t['first frame on screen']:.1f} s after vm start: "
                          f"the {w}x{h} pattern at {found[0]}, every pixel as drawn in the guest")
                else:
                    problems.append("the pattern is not on weston's screen")
                _step(f"toplevel titles weston received: {', '.join(repr(x) for x in titles)}")
                if f"[{vm_name}] {vm.title}" not in titles:
                    problems.append(f"weston saw no toplevel titled '[{vm_name}] {vm.title}'")
                if vm.release_pattern() != 0:
                    problems.append("the pattern client failed")
                _step(f"weston-simple-shm inside the guest for {args.seconds:g} s")
                vm.wait_simple_shm_started()
                time.sleep(min(args.seconds / 2, 2.0))
                screenshot(weston.display, weston.runtime_dir).save(shm_path)
                report = vm.wait_simple_shm()
                log = weston.log_text()
                clients = [c for c, title in toplevel_titles(log) if title == f"[{vm_name}] simple-shm"]
                commits = weston_requests(log, clients[0], "wl_surface.commit") if clients else 0
                ok = report["ran"] and report["status"] == 0 and report["stderr"] == "simple-shm exiting|"
                _step(f"weston-simple-shm {'ran without error' if ok else 'FAILED: ' + str(report)}; "
                      f"weston got {commits} frames from it")
                if not ok or not commits:
                    problems.append("weston-simple-shm did not run cleanly")
                vm.wait_idle()
                _step(f"wlproxy vm stop {vm_name}")
                res = vm.stop()
                print("    wlproxy vm stop: " + (res.stdout.strip() or res.stderr.strip()))
                left = vm.paths.vm_dir.exists()
                _step("host half stopped, run dir removed" if res.returncode == 0 and not left
                      else f"stop failed or left {vm.paths.vm_dir} behind")
                if res.returncode != 0 or left:
                    problems.append("vm stop did not clean up")
            except ScenarioError as e:
                problems.append(str(e))
    print()
    if vm.times:
        _step("timeline (seconds after 'vm start'): " + vm.timing_summary())
    for p in problems:
        print(f"    problem: {p}")
    if shot_path.exists():
        _step(f"screenshot of weston's output (the pattern client): {shot_path}")
    if shm_path.exists():
        _step(f"screenshot of weston's output (weston-simple-shm): {shm_path}")
    print("demo: OK" if not problems else "demo: FAILED")
    return 0 if not problems else 1
